//! The OpenAPI 3.1 document of the HTTP contract (`GET /openapi.json`, shown by Swagger UI at
//! `/docs`).
//!
//! Where each part comes from:
//! - operations: the `#[utoipa::path]` attribute on each handler (`routes/*.rs`), next to the
//!   code that answers them;
//! - the served types (status document, job error, worker record, field error): `ToSchema`
//!   derived on the `shared` types themselves (feature `openapi`);
//! - the request body of `POST /v1/jobs`: one alternative per job type the workers registered
//!   (`crate::job_types`), with that type's input schema, and the settings, so it says exactly
//!   what the facade accepts (a schemathesis run in CI holds the facade to it, in both
//!   directions). The document follows the registry: it is rebuilt when a type comes, goes or
//!   changes;
//! - reusable responses, parameters and problem schemas: written once below as JSON, because
//!   utoipa's `Header` type cannot say that a header is always present (`required`).

use std::borrow::Cow;

use actix_web::{web, HttpResponse};
use serde_json::{json, Map, Value};
use std::sync::{Arc, Mutex};

use shared::Settings;
use utoipa::openapi::path::{Parameter, ParameterIn};
use utoipa::openapi::{RefOr, Response, Schema};
use utoipa::{IntoParams, OpenApi, PartialSchema, ToResponse, ToSchema};

use crate::job_types::{Catalog, JobTypes};
use crate::routes;

/// The document as served: built from the settings and the job type registry, again whenever
/// the registry's generation changes.
pub struct OpenApiDocument {
    settings: Settings,
    job_types: JobTypes,
    built: Mutex<Option<(u64, Arc<Vec<u8>>)>>,
}

impl OpenApiDocument {
    pub fn new(settings: &Settings, job_types: JobTypes) -> Self {
        OpenApiDocument {
            settings: settings.clone(),
            job_types,
            built: Mutex::new(None),
        }
    }

    /// The document for the registry as it is now.
    pub fn bytes(&self) -> Arc<Vec<u8>> {
        let catalog = self.job_types.current();
        let mut built = match self.built.lock() {
            Ok(built) => built,
            Err(poisoned) => poisoned.into_inner(),
        };
        match &*built {
            Some((generation, bytes)) if *generation == catalog.generation => bytes.clone(),
            _ => {
                let bytes = Arc::new(document(&self.settings, &catalog));
                *built = Some((catalog.generation, bytes.clone()));
                bytes
            }
        }
    }
}

/// `GET /openapi.json`.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    operation_id = "getOpenApiDocument",
    responses((status = 200, response = OpenApiJson))
)]
pub async fn openapi_json(doc: web::Data<OpenApiDocument>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(doc.bytes().to_vec())
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "async-request-reply",
        description = "Asynchronous Request-Reply: `POST /v1/jobs` answers `202 Accepted` at once \
with a `Location` to poll; the status monitor answers `202` while the job is pending, `303 See \
Other` to the result once it succeeded, and the job's own failure as a `4xx` problem. Every 4xx \
and 5xx body is `application/problem+json` (RFC 9457). Swagger UI: `/docs`.",
        license(name = "MIT OR Apache-2.0")
    ),
    paths(
        routes::submit::submit,
        routes::list::list,
        routes::jobs::status,
        routes::cancel::cancel,
        routes::progress::progress,
        routes::jobs::result,
        routes::events::events,
        routes::job_types::list,
        routes::workers::list,
        routes::overview::overview,
        routes::health::healthz,
        routes::health::readyz,
        routes::metrics::metrics,
        openapi_json,
    ),
    components(
        schemas(
            shared::StatusDocument,
            shared::JobStatus,
            shared::Progress,
            shared::JobError,
            shared::JobErrorKind,
            shared::job::Links,
            shared::webhooks::Callback,
            shared::webhooks::CallbackState,
            shared::fleet::WorkerRecord,
            shared::job_types::FieldError,
            JobRequest,
        )
    ),
    modifiers(&SecurityScheme),
    tags(
        (name = "jobs", description = "Submit jobs, poll their status, read results, cancel, \
follow their events."),
        (name = "operations", description = "Health, readiness, metrics, the worker fleet and \
this document."),
    )
)]
struct ApiDoc;

/// The `bearer` scheme: an API key sent as `Authorization: Bearer <key>`.
struct SecurityScheme;

impl utoipa::Modify for SecurityScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API key as a bearer token (`Authorization: Bearer <key>`). Optional \
                         while the deployment runs without authentication; when it is on, a \
                         missing or unknown key is a 401 and a key of another tenant sees 404.",
                    ))
                    .build(),
            ),
        );
    }
}

/// The document for these settings and job types, as JSON bytes.
pub fn document(settings: &Settings, catalog: &Catalog) -> Vec<u8> {
    // Serialising the derived document and JSON values cannot fail.
    serde_json::to_vec(&document_value(settings, catalog)).unwrap_or_default()
}

/// The document for these settings and job types.
pub fn document_value(settings: &Settings, catalog: &Catalog) -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or(Value::Null);
    let components = &mut doc["components"];
    // Every response component, as written below (with `required` headers, which utoipa's
    // types drop); the operations refer to them by name.
    let responses: serde_json::Map<String, Value> = RESPONSES
        .iter()
        .filter_map(|name| Some(((*name).to_owned(), response_json(name)?)))
        .collect();
    components["responses"] = Value::Object(responses);
    if let Some(schemas) = components["schemas"].as_object_mut() {
        for (name, schema) in problem_schemas() {
            schemas.insert(name.into(), schema);
        }
        let request = job_request_schema(settings, catalog, schemas);
        schemas.insert("JobRequest".into(), request);
    }
    list_types_follow(&mut doc, catalog);
    if settings.auth.enabled {
        require_bearer(&mut doc);
    }
    doc
}

/// With authentication on, every `/v1` operation needs the bearer key, except the three that
/// read one job, which a signed URL (its query parameters) also authorizes.
fn require_bearer(doc: &mut Value) {
    let Some(paths) = doc["paths"].as_object_mut() else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        if !path.starts_with("/v1/") {
            continue;
        }
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for (method, operation) in item.iter_mut() {
            let reads_a_job = method == "get"
                && (path == "/v1/jobs/{id}"
                    || path == "/v1/jobs/{id}/result"
                    || path == "/v1/jobs/{id}/events");
            if !reads_a_job && operation.get("security").is_some() {
                operation["security"] = json!([{"bearer": []}]);
            }
        }
    }
}

/// `GET /v1/jobs?type=` takes the registered types' names (any string while none is: the
/// facade answers 422 to each).
fn list_types_follow(doc: &mut Value, catalog: &Catalog) {
    let Some(parameters) = doc["paths"]["/v1/jobs"]["get"]["parameters"].as_array_mut() else {
        return;
    };
    for parameter in parameters {
        if parameter["name"] == "type" && parameter["in"] == "query" {
            let names: Vec<&str> = catalog.types().map(|t| t.name()).collect();
            parameter["schema"] = if names.is_empty() {
                json!({"type": "string"})
            } else {
                json!({"type": "string", "enum": names})
            };
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The request body of `POST /v1/jobs`, from the registry.

/// Marker for the `JobRequest` schema (the real one depends on the settings; see
/// [`job_request_schema`]).
pub struct JobRequest;

impl PartialSchema for JobRequest {
    fn schema() -> RefOr<Schema> {
        from_json(json!({"type": "object"}))
    }
}

impl ToSchema for JobRequest {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("JobRequest")
    }
}

/// One alternative per registered job type, discriminated by `type`: its `input` schema (as
/// the worker registered it), `priority`, `callback_url`. Input schemas keep any `$defs` of
/// their own as components named `JobInput.<type>.<def>`, added to `schemas`.
fn job_request_schema(
    settings: &Settings,
    catalog: &Catalog,
    schemas: &mut Map<String, Value>,
) -> Value {
    let webhooks_on = !settings.webhooks.allowed_hosts.is_empty();
    let callback_url = if webhooks_on {
        json!({
            "type": ["string", "null"],
            "format": "uri",
            "description": format!(
                "Where to POST the final status document (signed, see the README). Only \
                 http(s) URLs without credentials whose host is allowed by the deployment: {}.",
                settings.webhooks.allowed_hosts.join(", ")
            ),
        })
    } else {
        json!({
            "type": "null",
            "description": "Webhooks are off in this deployment: any URL is refused with a 422.",
        })
    };
    let alternatives: Vec<Value> = catalog
        .types()
        .map(|t| {
            let r = &t.record;
            let input = embedded_input_schema(&r.name, &r.input_schema, schemas);
            let mut required = vec!["type"];
            if !t.input_optional() {
                required.push("input");
            }
            let priority = if r.priorities {
                json!({
                    "type": ["integer", "null"], "minimum": 0, "maximum": 9, "default": 0,
                    "description": "Among queued jobs, higher runs first.",
                })
            } else {
                json!({
                    "type": ["integer", "null"], "minimum": 0, "maximum": 0, "default": 0,
                    "description": "This type does not take priorities: only 0.",
                })
            };
            json!({
                "title": r.name,
                "description": r.description,
                "examples": [{"type": r.name, "input": r.example}],
                "type": "object",
                "properties": {
                    "type": {"type": "string", "const": r.name},
                    "input": input,
                    "priority": priority,
                    "callback_url": callback_url,
                },
                "required": required,
                "additionalProperties": false,
            })
        })
        .collect();
    let limits = &settings.limits;
    let description = format!(
        "A job request. `type` names a registered job type (`GET /v1/job-types`); `input` must \
         meet that type's schema (else 422 naming each bad field). Any JSON in the body may nest \
         at most {} levels deep, hold strings of at most {} bytes and arrays of at most {} items \
         (else 422); no string may hold U+0000 (else 422); the whole body is at most {} bytes \
         (else 413).",
        limits.max_json_depth,
        limits.max_string_bytes,
        limits.max_array_items,
        settings.http.body_limit_bytes
    );
    if alternatives.is_empty() {
        // `oneOf` may not be empty: no request is valid while no type is registered.
        return json!({
            "description": format!("{description} No job type is registered yet (no worker has started): every request is a 422."),
            "not": {},
        });
    }
    // Each alternative's `type` is a `const`: exactly one matches a request's `type`.
    json!({
        "description": description,
        "oneOf": alternatives,
    })
}

/// A registered input schema as a part of this document: `$schema` dropped (a subschema's
/// dialect is the document's), and `$defs` moved to components with their references
/// rewritten, since `#/$defs/…` would point at this document's root.
fn embedded_input_schema(
    type_name: &str,
    schema: &Value,
    schemas: &mut Map<String, Value>,
) -> Value {
    let mut schema = schema.clone();
    let defs = match schema.as_object_mut() {
        Some(object) => {
            object.remove("$schema");
            object.remove("$defs")
        }
        None => None,
    };
    let component = |def: &str| format!("JobInput.{type_name}.{def}");
    let Some(Value::Object(defs)) = defs else {
        return schema;
    };
    fn rewrite(value: &mut Value, component: &dyn Fn(&str) -> String) {
        match value {
            Value::Object(object) => {
                if let Some(Value::String(reference)) = object.get_mut("$ref") {
                    if let Some(def) = reference.strip_prefix("#/$defs/") {
                        *reference = format!("#/components/schemas/{}", component(def));
                    }
                }
                object.values_mut().for_each(|v| rewrite(v, component));
            }
            Value::Array(items) => items.iter_mut().for_each(|v| rewrite(v, component)),
            _ => {}
        }
    }
    rewrite(&mut schema, &component);
    for (name, mut def) in defs {
        rewrite(&mut def, &component);
        schemas.insert(component(&name), def);
    }
    schema
}

// ---------------------------------------------------------------------------------------------
// Problem details (RFC 9457).

fn problem_schemas() -> Vec<(&'static str, Value)> {
    vec![
        (
            "Problem",
            json!({
                "description": "RFC 9457 problem details; more members may follow.",
                "type": "object",
                "properties": {
                    "type": {"type": "string", "description": "A URI reference naming the problem, `/problems/<slug>` (or `about:blank`)."},
                    "title": {"type": "string"},
                    "status": {"type": "integer", "minimum": 400, "maximum": 599},
                    "detail": {"type": "string"},
                    "instance": {"type": "string"},
                },
                "required": ["type", "title", "status"],
            }),
        ),
        (
            "ValidationProblem",
            json!({
                "description": "A request that breaks the rules: every bad field is named in `errors`.",
                "allOf": [
                    {"$ref": "#/components/schemas/Problem"},
                    {
                        "type": "object",
                        "properties": {
                            "errors": {"type": "array", "items": {"$ref": "#/components/schemas/FieldError"}},
                        },
                        "required": ["errors"],
                    },
                ],
            }),
        ),
        (
            "HeaderProblem",
            json!({
                "description": "A request header that is not valid; `header` names it.",
                "allOf": [
                    {"$ref": "#/components/schemas/Problem"},
                    {"type": "object", "properties": {"header": {"type": "string"}}, "required": ["header"]},
                ],
            }),
        ),
        (
            "ParameterProblem",
            json!({
                "description": "A query parameter that is unknown, repeated or not valid; `parameter` names it.",
                "allOf": [
                    {"$ref": "#/components/schemas/Problem"},
                    {"type": "object", "properties": {"parameter": {"type": "string"}}, "required": ["parameter"]},
                ],
            }),
        ),
        (
            "JobProblem",
            json!({
                "description": "A job that failed or was canceled: the error is written to the \
                                status location. `instance` is the job's status monitor and `job` \
                                its status document (with the job's own error inside).",
                "allOf": [
                    {"$ref": "#/components/schemas/Problem"},
                    {
                        "type": "object",
                        "properties": {"job": {"$ref": "#/components/schemas/StatusDocument"}},
                        "required": ["instance", "job"],
                    },
                ],
            }),
        ),
        (
            "NotReadyProblem",
            json!({
                "allOf": [
                    {"$ref": "#/components/schemas/Problem"},
                    {
                        "type": "object",
                        "properties": {"checks": {"$ref": "#/components/schemas/Checks"}},
                        "required": ["checks"],
                    },
                ],
            }),
        ),
        (
            "JobTypeState",
            json!({
                "type": "string",
                "enum": ["served", "no-live-worker"],
                "description": "`served` while a live worker serves the type; `no-live-worker` \
                                when none does: its jobs are still accepted and wait in the \
                                queue for one.",
            }),
        ),
        (
            "JobTypeInfo",
            json!({
                "description": "A job type as its workers registered it.",
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "description": {"type": "string"},
                    "input_schema": {"description": "JSON Schema (draft 2020-12) of the job's `input`."},
                    "example": {"description": "An input that meets the schema."},
                    "limits": {
                        "type": "object",
                        "properties": {
                            "max_attempts": {"type": "integer", "minimum": 1},
                            "max_run_seconds": {"type": "integer", "minimum": 1},
                        },
                        "required": ["max_attempts", "max_run_seconds"],
                    },
                    "priorities": {"type": "boolean", "description": "Whether `priority` orders its jobs (else only 0 is taken)."},
                    "schema_digest": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                    "worker_version": {"type": "string"},
                    "workers": {"type": "integer", "minimum": 0, "description": "Live workers serving it."},
                    "state": {"$ref": "#/components/schemas/JobTypeState"},
                    "queue": {
                        "type": "object",
                        "properties": {
                            "name": {"type": "string"},
                            "depth": {"type": ["integer", "null"], "minimum": 0, "description": "Messages ready; null when the broker could not be asked."},
                        },
                        "required": ["name", "depth"],
                    },
                    "versions": {
                        "description": "Every registered version of the type, newest first (two during a rolling deploy that changed its schema). A submission is accepted when its input meets the schema of any version a live worker serves.",
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "schema_digest": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                                "worker_version": {"type": "string"},
                                "workers": {"type": "integer", "minimum": 0, "description": "Live workers serving this version."},
                            },
                            "required": ["schema_digest", "worker_version", "workers"],
                        },
                    },
                },
                "required": ["name", "description", "input_schema", "example", "limits", "priorities", "schema_digest", "worker_version", "workers", "state", "queue", "versions"],
            }),
        ),
        (
            "Checks",
            json!({
                "type": "object",
                "properties": {
                    "redis": {"$ref": "#/components/schemas/Check"},
                    "rabbitmq": {"$ref": "#/components/schemas/Check"},
                },
                "required": ["redis", "rabbitmq"],
            }),
        ),
        (
            "Check",
            json!({
                "type": "object",
                "properties": {
                    "status": {"type": "string", "enum": ["up", "down"]},
                    "error": {"type": "string"},
                },
                "required": ["status"],
            }),
        ),
    ]
}

// ---------------------------------------------------------------------------------------------
// Reusable responses.

fn header(schema: Value, description: &str, required: bool) -> Value {
    let mut h = json!({"schema": schema, "description": description});
    if required {
        h["required"] = json!(true);
    }
    h
}

fn location(description: &str) -> Value {
    header(
        json!({"type": "string", "format": "uri-reference"}),
        description,
        true,
    )
}

fn retry_after(required: bool, description: &str) -> Value {
    header(
        json!({"type": "integer", "minimum": 0}),
        description,
        required,
    )
}

fn etag(required: bool) -> Value {
    header(
        json!({"type": "string", "pattern": "^\"[0-9a-f]{16}\"$"}),
        "A strong validator of this representation; send it back in `If-None-Match`.",
        required,
    )
}

fn cache_control() -> Value {
    header(
        json!({"type": "string"}),
        "`private, no-cache`: cacheable only if revalidated.",
        true,
    )
}

fn preference_applied() -> Value {
    header(
        json!({"type": "string", "pattern": "^wait=[0-9]+$"}),
        "`wait=N` when a `Prefer: wait` was honoured (N: the seconds it could wait, capped).",
        false,
    )
}

fn json_content(schema_ref: &str) -> Value {
    json!({"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema_ref}")}}})
}

fn problem_content(schema_ref: &str) -> Value {
    json!({"application/problem+json": {"schema": {"$ref": format!("#/components/schemas/{schema_ref}")}}})
}

fn problem(description: &str, schema_ref: &str) -> Value {
    json!({"description": description, "content": problem_content(schema_ref)})
}

/// The full JSON of each response component named in [`ApiDoc`].
fn response_json(name: &str) -> Option<Value> {
    let status_doc_pending = || {
        json!({
            "Location": location("The status monitor (itself): poll it."),
            "Retry-After": retry_after(true, "Seconds to wait before the next poll (an estimate from the job type's observed durations and the job's place in the queue, clamped to the configured bounds)."),
            "ETag": etag(true),
            "Cache-Control": cache_control(),
            "Preference-Applied": preference_applied(),
        })
    };
    let job_problem = |description: &str| {
        json!({
            "description": description,
            "headers": {"ETag": etag(true), "Cache-Control": cache_control()},
            "content": problem_content("JobProblem"),
        })
    };
    Some(match name {
        "OpenApiJson" => json!({
            "description": "This OpenAPI 3.1 document.",
            "content": {"application/json": {"schema": {"type": "object"}}},
        }),
        "JobAccepted" => json!({
            "description": "Accepted: the job is recorded and the broker confirmed its publish. \
                            Also the answer to a repeat with the same `Idempotency-Key` and body \
                            (the first job, as it is now), and to `Prefer: wait=N` when the job \
                            did not end in time.",
            "headers": {
                "Location": location("The job's status monitor, `/v1/jobs/{id}`."),
                "Retry-After": retry_after(true, "Seconds to wait before the first poll (an estimate)."),
                "ETag": etag(true),
                "Idempotent-Replayed": header(json!({"type": "string", "enum": ["true"]}), "`true` when this answer replays an earlier request's job.", false),
                "Preference-Applied": preference_applied(),
            },
            "content": json_content("StatusDocument"),
            "links": {
                "status": {"operationId": "getJobStatus", "parameters": {"id": "$response.body#/id"}},
                "result": {"operationId": "getJobResult", "parameters": {"id": "$response.body#/id"}},
                "events": {"operationId": "getJobEvents", "parameters": {"id": "$response.body#/id"}},
                "cancel": {"operationId": "cancelJob", "parameters": {"id": "$response.body#/id"}},
            },
        }),
        "JobPending" => json!({
            "description": "The job is queued or running: poll again after `Retry-After`.",
            "headers": status_doc_pending(),
            "content": json_content("StatusDocument"),
        }),
        "JobSucceeded" => json!({
            "description": "The job succeeded: its result is at `Location`.",
            "headers": {
                "Location": location("The result, `/v1/jobs/{id}/result`."),
                "ETag": etag(true),
                "Cache-Control": cache_control(),
                "Preference-Applied": preference_applied(),
            },
            "content": json_content("StatusDocument"),
        }),
        "JobResult" => json!({
            "description": "The job's result: whatever JSON its handler returned, or, for a type \
                            declared in front of an HTTP service or a program, what that answered \
                            (a PDF, a PNG, text) with its `Content-Type`. The status document's \
                            `result` gives the media type and size beforehand.",
            "headers": {
                "ETag": etag(true),
                "Cache-Control": header(json!({"type": "string"}), "`private, max-age=0`.", true),
                "Content-Type": header(json!({"type": "string"}), "The result's media type (`application/json` for every handler written in Rust).", true),
            },
            "content": {
                "application/json": {"schema": {}},
                "*/*": {"schema": {"type": "string", "format": "binary"}},
            },
        }),
        "NotModified" => json!({
            "description": "Not modified: the representation still has the ETag given in \
                            `If-None-Match` (or the request said `*`). No body.",
            "headers": {
                "ETag": etag(true),
                "Cache-Control": header(json!({"type": "string"}), "`private, no-cache` (status monitor).", false),
                "Retry-After": retry_after(false, "While the job is pending: seconds to wait before the next poll."),
            },
        }),
        "JobCanceledConflict" => job_problem("The job was canceled (`job` holds its status document)."),
        "JobFailedInput" => job_problem(
            "The job failed because its handler rejected the input (a business rule only the \
             worker could check); `job.error` says why.",
        ),
        "JobFailed" => job_problem(
            "Failed Dependency: the job failed (handler error, crash, timeout, retries \
             exhausted); `job.error` says how. Never a 5xx: the poll itself succeeded.",
        ),
        "JobFinishedConflict" => json!({
            "description": "The job had already finished (succeeded or failed) and can no longer be canceled.",
            "headers": {},
            "content": problem_content("JobProblem"),
        }),
        "JobCanceledAlready" => json!({
            "description": "The job was canceled already.",
            "headers": {"Location": location("The job's status monitor.")},
            "content": json_content("StatusDocument"),
        }),
        "JobCancelAccepted" => json!({
            "description": "Cancel accepted: a queued job is canceled now (it never starts); a \
                            running job's handler is told to stop and the job ends `canceled`.",
            "headers": {"Location": location("The job's status monitor.")},
            "content": json_content("StatusDocument"),
        }),
        "JobList" => json!({
            "description": "A page of jobs, newest first.",
            "headers": {
                "Link": header(json!({"type": "string"}), "`<…>; rel=\"next\"`: the next page, when there is one.", false),
                "Cache-Control": cache_control(),
            },
            "content": {"application/json": {"schema": {
                "type": "object",
                "properties": {
                    "jobs": {"type": "array", "items": {"$ref": "#/components/schemas/StatusDocument"}},
                    "next_cursor": {"type": ["string", "null"], "description": "Pass as `cursor` for the next page; null on the last page."},
                },
                "required": ["jobs", "next_cursor"],
            }}},
        }),
        "JobEvents" => json!({
            "description": "Server-sent events: one `status` or `progress` event per change (its \
                            `data` the status document, its `id` the document's ETag), a \
                            `: keepalive` comment when quiet, closed after the terminal event. \
                            Reconnect with `Last-Event-ID`.",
            "headers": {"Cache-Control": header(json!({"type": "string"}), "`no-cache`.", true)},
            // Before OpenAPI 3.2 (`itemSchema`), the schema of an event stream describes each
            // event.
            "content": {"text/event-stream": {"schema": {
                "type": "object",
                "properties": {
                    "event": {"type": "string", "enum": ["status", "progress"], "description": "`status` when the status changed, `progress` when only the progress did."},
                    "id": {"type": "string", "pattern": "^[0-9a-f]{16}$", "description": "The document's ETag (without quotes): send it back as `Last-Event-ID`."},
                    "data": {
                        "type": "string",
                        "contentMediaType": "application/json",
                        "contentSchema": {"$ref": "#/components/schemas/StatusDocument"},
                        "description": "The status document.",
                    },
                },
                "required": ["event", "id", "data"],
            }}},
        }),
        "JobTypeList" => json!({
            "description": "The registered job types, sorted by name.",
            "headers": {"Cache-Control": cache_control()},
            "content": {"application/json": {"schema": {
                "type": "object",
                "properties": {"job_types": {"type": "array", "items": {"$ref": "#/components/schemas/JobTypeInfo"}}},
                "required": ["job_types"],
            }}},
        }),
        "WorkerList" => json!({
            "description": "The live workers, sorted by id.",
            "headers": {"Cache-Control": cache_control()},
            "content": {"application/json": {"schema": {
                "type": "object",
                "properties": {"workers": {"type": "array", "items": {"$ref": "#/components/schemas/WorkerRecord"}}},
                "required": ["workers"],
            }}},
        }),
        "Overview" => json!({
            "description": "The deployment at a glance: the work queue, the live workers, and the \
                            caller's tenant's newest jobs by state.",
            "headers": {"Cache-Control": cache_control()},
            "content": {"application/json": {"schema": {
                "type": "object",
                "properties": {
                    "queue": {
                        "type": "object",
                        "properties": {
                            "name": {"type": "string"},
                            "depth": {"type": "integer", "minimum": 0},
                            "consumers": {"type": "integer", "minimum": 0},
                            "error": {"type": "string"},
                        },
                        "required": ["name"],
                    },
                    "workers": {
                        "type": "object",
                        "properties": {
                            "live": {"type": "integer", "minimum": 0},
                            "in_flight": {"type": "integer", "minimum": 0},
                            "capacity": {"type": "integer", "minimum": 0},
                            "draining": {"type": "integer", "minimum": 0},
                        },
                        "required": ["live", "in_flight", "capacity", "draining"],
                    },
                    "jobs_by_state": {
                        "type": "object",
                        "additionalProperties": {"type": "integer", "minimum": 0},
                    },
                    "jobs": {
                        "type": "object",
                        "properties": {
                            "indexed": {"type": "integer", "minimum": 0},
                            "counted": {"type": "integer", "minimum": 0},
                            "complete": {"type": "boolean"},
                        },
                        "required": ["indexed", "counted", "complete"],
                    },
                    "generated_at": {"type": "string", "format": "date-time"},
                },
                "required": ["queue", "workers", "jobs_by_state", "jobs", "generated_at"],
            }}},
        }),
        "Health" => json!({
            "description": "The process is alive.",
            "content": {"application/json": {"schema": {
                "type": "object", "properties": {"status": {"type": "string", "enum": ["ok"]}}, "required": ["status"],
            }}},
        }),
        "Ready" => json!({
            "description": "RabbitMQ and Redis are reachable.",
            "content": {"application/json": {"schema": {
                "type": "object",
                "properties": {
                    "status": {"type": "string", "enum": ["ready"]},
                    "checks": {"$ref": "#/components/schemas/Checks"},
                    "job_types": {
                        "description": "Information, not readiness: the registered job types and \
                                        the live workers serving each (a type without one still \
                                        takes jobs; they wait in the queue).",
                        "type": "object",
                        "properties": {
                            "registry": {"type": "string", "enum": ["unread", "empty", "loaded"]},
                            "types": {"type": "object", "additionalProperties": {
                                "type": "object",
                                "properties": {
                                    "workers": {"type": "integer", "minimum": 0},
                                    "state": {"$ref": "#/components/schemas/JobTypeState"},
                                },
                                "required": ["workers", "state"],
                            }},
                        },
                        "required": ["registry", "types"],
                    },
                },
                "required": ["status", "checks"],
            }}},
        }),
        "NotReady" => json!({
            "description": "Not ready: `checks` names what is down.",
            "headers": {"Retry-After": retry_after(true, "Seconds to wait before asking again.")},
            "content": problem_content("NotReadyProblem"),
        }),
        "Metrics" => json!({
            "description": "Prometheus text exposition format 0.0.4.",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }),
        "BadRequest" => json!({
            "description": "The body is not JSON (or not UTF-8, or empty) or could not be read \
                            (`/problems/malformed-json`, `/problems/bad-request`), or a request \
                            header is not valid (`/problems/invalid-header`, `header` names it: \
                            `Idempotency-Key` must be 1 to 255 visible ASCII characters, given \
                            once).",
            "content": {"application/problem+json": {"schema": {"anyOf": [
                {"$ref": "#/components/schemas/HeaderProblem"},
                {"$ref": "#/components/schemas/Problem"},
            ]}}},
        }),
        "Unauthorized" => json!({
            "description": "Missing or unknown API key (only when the deployment turns authentication on).",
            "headers": {"WWW-Authenticate": header(json!({"type": "string"}), "`Bearer`, with the reason.", true)},
            "content": problem_content("Problem"),
        }),
        "Forbidden" => problem(
            "A signed URL whose signature is wrong or expired, or a key that is not an \
             operator's asking for an operator resource.",
            "Problem",
        ),
        "NotFound" => problem(
            "No such job: unknown, someone else's, malformed id, or past its tombstone.",
            "Problem",
        ),
        "Gone" => problem("The job's record expired (retention period); a small tombstone answers 410 for a while, then 404.", "Problem"),
        "SubmitConflict" => json!({
            "description": "The `Idempotency-Key` was used with a different body, or a request \
                            with it is still in progress (then with `Retry-After`); or, with \
                            `Prefer: wait`, the job was canceled meanwhile.",
            "headers": {"Retry-After": retry_after(false, "When a request with the same key is in progress.")},
            "content": problem_content("Problem"),
        }),
        "RequestTimeout" => problem(
            "The body did not arrive within the deployment's `limits.max_body_read_seconds` \
             (a client that declares more than it sends, or trickles it).",
            "Problem",
        ),
        "PayloadTooLarge" => problem("The body is larger than the configured limit.", "Problem"),
        "UnsupportedMediaType" => problem("The body must be `application/json` (or `application/*+json`).", "Problem"),
        "SubmitUnprocessable" => json!({
            "description": "The request is valid JSON but breaks the rules: unknown `type`, \
                            input that fails its type's rules, a bad `priority` or \
                            `callback_url`, an unknown member, JSON nested too deep, a string or \
                            array over the limits, a string holding U+0000 (`errors` names \
                            each). With `Prefer: wait`, \
                            also a job that rejected its input within the wait (a `JobProblem`).",
            "content": {"application/problem+json": {"schema": {"anyOf": [
                {"$ref": "#/components/schemas/ValidationProblem"},
                {"$ref": "#/components/schemas/JobProblem"},
            ]}}},
        }),
        "ProgressConflict" => problem(
            "The job is not running (queued, or finished): progress is recorded only while it runs.",
            "Problem",
        ),
        "ProgressUnprocessable" => problem(
            "The body is not a progress report `{\"percent\": 0-100, \"message\": \"…\"}` \
             (`errors` names the field).",
            "ValidationProblem",
        ),
        "InvalidParameter" => problem(
            "A query parameter is unknown, repeated or not valid (`parameter` names it).",
            "ParameterProblem",
        ),
        "TooManyRequests" => json!({
            "description": "Rate limit reached for this API key (when rate limits are configured).",
            "headers": {"Retry-After": retry_after(true, "Seconds until a request may succeed.")},
            "content": problem_content("Problem"),
        }),
        "Unavailable" => json!({
            "description": "A dependency is unavailable (Redis or RabbitMQ unreachable, publish \
                            not confirmed or unroutable), or on submit the admission limit is \
                            reached (queue too deep). Nothing was queued. Retry later.",
            "headers": {"Retry-After": retry_after(true, "Seconds to wait before retrying.")},
            "content": problem_content("Problem"),
        }),
        _ => return None,
    })
}

fn from_json<T: serde::de::DeserializeOwned + Default>(value: Value) -> T {
    serde_json::from_value(value).unwrap_or_default()
}

/// Declares the response components whose full JSON is in [`response_json`], and
/// [`RESPONSES`], their names: the one list the document's components are made from.
macro_rules! responses {
    ($($name:ident),* $(,)?) => {
        $(
            pub struct $name;
            impl<'r> ToResponse<'r> for $name {
                fn response() -> (&'r str, RefOr<Response>) {
                    let json = response_json(stringify!($name)).unwrap_or(Value::Null);
                    (stringify!($name), RefOr::T(from_json::<Response>(json)))
                }
            }
        )*
        /// Names of every response component.
        const RESPONSES: &[&str] = &[$(stringify!($name)),*];
    };
}

responses!(
    OpenApiJson,
    JobAccepted,
    JobPending,
    JobSucceeded,
    JobResult,
    NotModified,
    JobCanceledConflict,
    JobFailedInput,
    JobFailed,
    JobFinishedConflict,
    JobCanceledAlready,
    JobCancelAccepted,
    JobList,
    JobEvents,
    JobTypeList,
    WorkerList,
    Overview,
    Health,
    Ready,
    NotReady,
    Metrics,
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    Gone,
    SubmitConflict,
    RequestTimeout,
    PayloadTooLarge,
    UnsupportedMediaType,
    SubmitUnprocessable,
    InvalidParameter,
    ProgressConflict,
    ProgressUnprocessable,
    TooManyRequests,
    Unavailable,
);

// ---------------------------------------------------------------------------------------------
// Parameters.

fn params(list: Value) -> Vec<Parameter> {
    serde_json::from_value(list).unwrap_or_default()
}

/// The `{id}` of a job path.
pub struct JobIdPath;

impl IntoParams for JobIdPath {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        params(json!([{
            "name": "id",
            "in": "path",
            "required": true,
            "description": "The job id: a UUID in its canonical lower-case hyphenated form. Anything \
                            else names no job (404).",
            "schema": {
                "type": "string",
                "pattern": "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$",
            },
        }]))
    }
}

/// `If-None-Match` on a conditional GET.
pub struct IfNoneMatch;

impl IntoParams for IfNoneMatch {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        params(json!([{
            "name": "If-None-Match",
            "in": "header",
            "required": false,
            "description": "ETags (or `*`) the client has: an unchanged representation gives 304.",
            "schema": {"type": "string"},
        }]))
    }
}

/// `Prefer: wait=N` (RFC 7240).
pub struct PreferWait;

impl IntoParams for PreferWait {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        params(json!([{
            "name": "Prefer",
            "in": "header",
            "required": false,
            "description": "`wait=N`: hold the answer up to N seconds (capped by the \
                            deployment's `http.max_wait_seconds`) until the status changes \
                            (status monitor) or the job ends (submit); `Preference-Applied` says \
                            when it was honoured. Preferences not understood are ignored \
                            (RFC 7240).",
            "schema": {"type": "string"},
        }]))
    }
}

/// The query of a signed status or result URL (a valet key: see `signing.rs`).
pub struct SignedUrl;

impl IntoParams for SignedUrl {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        params(json!([
            {
                "name": "tenant", "in": "query", "required": false,
                "description": "Signed URL: the tenant the job belongs to. The four signed-URL \
                                parameters come together, as the `Location` of a 202 carries \
                                them when URL signing is configured; they grant reading this \
                                job's status, result and events without an API key until `exp`. \
                                Any of them given alone, twice, changed or expired: 403.",
                "schema": {"type": "string"},
            },
            {
                "name": "exp", "in": "query", "required": false,
                "description": "Signed URL: expiry, unix seconds.",
                "schema": {"type": "string"},
            },
            {
                "name": "kid", "in": "query", "required": false,
                "description": "Signed URL: id of the signing key.",
                "schema": {"type": "string"},
            },
            {
                "name": "sig", "in": "query", "required": false,
                "description": "Signed URL: base64url HMAC-SHA256, under key `kid`, over the job \
                                id, `tenant` and `exp`.",
                "schema": {"type": "string"},
            },
        ]))
    }
}

/// Headers of `POST /v1/jobs`.
pub struct SubmitHeaders;

impl IntoParams for SubmitHeaders {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        params(json!([
            {
                "name": "Idempotency-Key", "in": "header", "required": false,
                "description": "A repeat with the same key and the same body (in canonical JSON) \
                                answers with the first job (202, `Idempotent-Replayed: true`); \
                                the same key with another body is a 409. 1 to 255 visible ASCII \
                                characters; anything else is a 400.",
                "schema": {"type": "string", "pattern": "^[!-~]{1,255}$"},
            },
            {
                "name": "traceparent", "in": "header", "required": false,
                "description": "W3C trace context: the job's processing continues this trace. \
                                A value that does not parse is ignored (a new trace starts).",
                "schema": {"type": "string"},
            },
        ]))
    }
}

/// `Last-Event-ID` of a reconnecting event stream.
pub struct LastEventId;

impl IntoParams for LastEventId {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        params(json!([{
            "name": "Last-Event-ID", "in": "header", "required": false,
            "description": "The id of the last event received: the stream starts with the \
                            current document unless it is that one.",
            "schema": {"type": "string"},
        }]))
    }
}

/// The query of `GET /v1/jobs`.
pub struct ListParams;

impl IntoParams for ListParams {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        params(json!([
            {
                "name": "status", "in": "query", "required": false,
                "schema": {"type": "string", "enum": ["queued", "running", "succeeded", "failed", "canceled"]},
            },
            {
                "name": "type", "in": "query", "required": false,
                "description": "A registered job type (`GET /v1/job-types`).",
                // The registered names: see `list_types_follow`.
                "schema": {"type": "string"},
            },
            {
                "name": "limit", "in": "query", "required": false,
                "description": "Jobs per page.",
                "schema": {"type": "integer", "minimum": 1, "maximum": crate::routes::list::MAX_LIMIT, "default": crate::routes::list::DEFAULT_LIMIT},
            },
            {
                "name": "cursor", "in": "query", "required": false,
                "description": "`next_cursor` of the previous page (opaque). One this service \
                                could not have issued is a 422.",
                // base64url of 25 bytes: version 1, a non-negative i64, 16 bytes of id. The
                // pattern is exactly the set the facade accepts (see `list::decode_cursor`).
                "schema": {"type": "string", "pattern": "^A[Q-X][A-Za-z0-9_-]{31}[AQgw]$"},
            },
        ]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        Catalog::for_tests([
            (
                "hash",
                json!({
                    "$schema": "https://json-schema.org/draft/2020-12/schema",
                    "type": "object",
                    "properties": {
                        "bytes": {"type": "integer", "minimum": 0, "maximum": 1u64 << 30},
                        "seed": {"type": ["integer", "null"], "minimum": 0},
                    },
                    "required": ["bytes"],
                    "additionalProperties": false,
                }),
                true,
            ),
            (
                "tree",
                json!({
                    "$ref": "#/$defs/Node",
                    "$defs": {"Node": {"type": "object", "properties": {"children": {"type": "array", "items": {"$ref": "#/$defs/Node"}}}}},
                }),
                false,
            ),
            ("echo", json!(true), true),
        ])
    }

    #[test]
    fn the_job_request_follows_the_registry_and_the_webhook_settings() {
        let mut settings = Settings::load(None).expect("default settings");
        settings.webhooks.allowed_hosts.clear();
        let doc = document_value(&settings, &catalog());
        let request = &doc["components"]["schemas"]["JobRequest"];
        let alternatives = request["oneOf"].as_array().unwrap();
        assert_eq!(alternatives.len(), 3);
        let hash = alternatives
            .iter()
            .find(|alt| alt["properties"]["type"]["const"] == "hash")
            .expect("hash");
        let input = &hash["properties"]["input"];
        assert_eq!(input["required"], json!(["bytes"]));
        assert_eq!(input["properties"]["bytes"]["maximum"], json!(1u64 << 30));
        assert!(input.get("$schema").is_none());
        assert_eq!(
            input["properties"]["seed"]["type"],
            json!(["integer", "null"])
        );
        assert_eq!(hash["required"], json!(["type", "input"]));
        assert_eq!(hash["properties"]["priority"]["maximum"], 9);
        assert_eq!(hash["properties"]["callback_url"]["type"], "null");
        // A schema's own definitions become components, its references rewritten.
        let tree = alternatives
            .iter()
            .find(|alt| alt["properties"]["type"]["const"] == "tree")
            .expect("tree");
        assert_eq!(
            tree["properties"]["input"]["$ref"],
            "#/components/schemas/JobInput.tree.Node"
        );
        assert_eq!(tree["properties"]["priority"]["maximum"], 0);
        let node = &doc["components"]["schemas"]["JobInput.tree.Node"];
        assert_eq!(
            node["properties"]["children"]["items"]["$ref"],
            "#/components/schemas/JobInput.tree.Node"
        );
        // Input that may be null may be left out.
        let echo = alternatives
            .iter()
            .find(|alt| alt["properties"]["type"]["const"] == "echo")
            .expect("echo");
        assert_eq!(echo["required"], json!(["type"]));
        // The list's type filter names the registered types.
        let list = doc["paths"]["/v1/jobs"]["get"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "type")
            .unwrap()
            .clone();
        assert_eq!(list["schema"]["enum"], json!(["echo", "hash", "tree"]));

        settings.webhooks.allowed_hosts = vec!["hooks.example.com".into()];
        let doc = document_value(&settings, &catalog());
        let callback =
            &doc["components"]["schemas"]["JobRequest"]["oneOf"][0]["properties"]["callback_url"];
        assert_eq!(callback["type"], json!(["string", "null"]));
        assert!(callback["description"]
            .as_str()
            .unwrap()
            .contains("hooks.example.com"));
    }

    #[test]
    fn without_a_registry_no_request_is_valid() {
        let settings = Settings::load(None).expect("default settings");
        let doc = document_value(&settings, &Catalog::default());
        let request = &doc["components"]["schemas"]["JobRequest"];
        assert_eq!(request["not"], json!({}));
        assert!(request.get("oneOf").is_none());
    }

    #[test]
    fn the_served_document_follows_the_generation() {
        let settings = Settings::load(None).expect("default settings");
        let served = OpenApiDocument::new(&settings, JobTypes::default());
        let first = served.bytes();
        assert!(
            Arc::ptr_eq(&first, &served.bytes()),
            "built once per generation"
        );
    }

    #[test]
    fn every_response_component_has_its_json() {
        for name in RESPONSES {
            assert!(response_json(name).is_some(), "{name}");
        }
        let settings = Settings::load(None).expect("default settings");
        let doc = document_value(&settings, &catalog());
        let served = doc["components"]["responses"].as_object().unwrap();
        assert_eq!(served.len(), RESPONSES.len());
    }
}
