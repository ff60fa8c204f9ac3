//! The job type registry: what a worker tells about each job type it serves, and how the facade
//! checks a submission's input against that type's JSON Schema before anything is queued.
//!
//! A job type is declared once, in the worker that serves it (`worker::JobType`): its input
//! schema is derived from the handler's Rust input type. The worker writes a [`JobTypeRecord`]
//! per type to Redis when it starts and again with every heartbeat; each facade reads the
//! records every second or so ([`KeyLayout::job_types`](crate::KeyLayout::job_types)) and
//! compiles each schema into an [`InputSchema`], which answers a submission with every
//! violation as a [`FieldError`] (field, JSON pointer, detail).
//!
//! Layout: the hash `{prefix}:job-types`, field `<name>@<schema digest>`, value the record as
//! JSON. Two versions of a type (a rolling deploy that changed its schema) are two fields.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::configuration::Limits;

/// One invalid field of a request, reported in the problem's `errors` member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FieldError {
    /// Dotted path, e.g. `input.seconds`.
    pub field: String,
    /// RFC 6901 JSON pointer into the request body, as a URI fragment (`#/input/seconds`).
    pub pointer: String,
    pub detail: String,
}

impl FieldError {
    pub fn new(path: &[&str], detail: impl Into<String>) -> Self {
        FieldError {
            field: path.join("."),
            pointer: format!(
                "#/{}",
                path.iter()
                    .map(|p| p.replace('~', "~0").replace('/', "~1"))
                    .collect::<Vec<_>>()
                    .join("/")
            ),
            detail: detail.into(),
        }
    }
}

/// What a worker registers about a job type it serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobTypeRecord {
    pub name: String,
    pub description: String,
    /// JSON Schema (draft 2020-12) of the job's `input`; self-contained (no remote `$ref`).
    pub input_schema: Value,
    /// An input that meets the schema (the dashboard's form starts with it).
    pub example: Value,
    /// The limits the registering worker applies (its configuration's overrides included).
    pub limits: Limits,
    /// Whether the type's jobs are ordered by `priority` (a type that does not take them
    /// refuses a priority other than 0).
    pub priorities: bool,
    /// [`schema_digest`] of `input_schema`: queue messages carry the digests of the schemas
    /// the facade checked them against.
    pub schema_digest: String,
    /// The work queue the registering worker consumes the type's jobs from (`<queue>.<type>`
    /// unless configured to share one): where the facades publish them. Absent in records of
    /// versions before queues per type, whose workers consume the single queue `<queue>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// Version of the worker binary that registered it.
    pub worker_version: String,
    /// When the registering worker started (unix ms): of two registrations of one type, the
    /// facade uses the newer one.
    pub registered_at_ms: i64,
    /// The registering worker's last heartbeat (unix ms): a record not refreshed within the
    /// registry's retention (`jobs.type_retention_seconds`) is forgotten.
    pub refreshed_at_ms: i64,
}

impl JobTypeRecord {
    /// The record's field in the registry hash: `<name>@<schema digest>`.
    pub fn field(&self) -> String {
        format!("{}@{}", self.name, self.schema_digest)
    }
}

/// SHA-256 (hex) of a schema's JSON text.
pub fn schema_digest(schema: &Value) -> String {
    hex::encode(Sha256::digest(schema.to_string().as_bytes()))
}

/// Whether `name` may name a job type: 1 to 64 of `a-z 0-9 . _ -`, starting with a letter or
/// digit (it appears in Redis fields, metric labels, queue names and OpenAPI component names).
pub fn valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    (1..=64).contains(&bytes.len())
        && bytes[0].is_ascii_alphanumeric()
        && bytes.iter().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
}

/// A job type's input schema, compiled.
pub struct InputSchema {
    schema: Value,
    validator: jsonschema::Validator,
}

impl std::fmt::Debug for InputSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InputSchema")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

impl InputSchema {
    /// Compiles `schema` as draft 2020-12. Remote references are not resolved (an error).
    pub fn compile(schema: &Value) -> Result<Self, String> {
        let validator = jsonschema::draft202012::options()
            .build(schema)
            .map_err(|e| e.to_string())?;
        Ok(InputSchema {
            schema: schema.clone(),
            validator,
        })
    }

    pub fn schema(&self) -> &Value {
        &self.schema
    }

    /// Every violation of the schema by `input` (empty when it is valid). Paths start with
    /// `input`; an unknown property is named itself (`input.colour`), a missing one too.
    pub fn validate(&self, input: &Value) -> Vec<FieldError> {
        let mut errors = Vec::new();
        for error in self.validator.iter_errors(input) {
            let mut path: Vec<String> = vec!["input".to_owned()];
            path.extend(error.instance_path().segments().map(|s| s.to_string()));
            let at = |path: &[String], extra: Option<&str>, detail: String| {
                let mut segments: Vec<&str> = path.iter().map(String::as_str).collect();
                segments.extend(extra);
                FieldError::new(&segments, detail)
            };
            use jsonschema::error::ValidationErrorKind as Kind;
            match error.kind() {
                Kind::AdditionalProperties { unexpected }
                | Kind::UnevaluatedProperties { unexpected } => {
                    for name in unexpected {
                        errors.push(at(&path, Some(name), "unknown field".to_owned()));
                    }
                }
                Kind::Required { property } => {
                    let name = property.as_str().map(Cow::Borrowed);
                    let name = name.unwrap_or_else(|| Cow::Owned(property.to_string()));
                    errors.push(at(&path, Some(&name), "is required".to_owned()));
                }
                kind => errors.push(at(&path, None, describe(kind, &error.to_string()))),
            }
        }
        errors
    }

    /// Rewrites numbers the schema wants as integers but that are written as floats (`8.0`,
    /// `1e3`) as integers, so the worker's typed input (`u64`) reads them: JSON Schema counts
    /// `8.0` as the integer 8, serde does not. Call after [`validate`](Self::validate) found
    /// no error.
    pub fn normalize(&self, input: &mut Value) {
        normalize(&self.schema, input);
    }
}

/// The detail of one violation, in the words the facade has always used where it can.
fn describe(kind: &jsonschema::error::ValidationErrorKind, fallback: &str) -> String {
    use jsonschema::error::{TypeKind, ValidationErrorKind as Kind};
    let article = |t: &str| match t.chars().next() {
        Some('a' | 'e' | 'i' | 'o' | 'u') => format!("an {t}"),
        _ => format!("a {t}"),
    };
    match kind {
        Kind::Type {
            kind: TypeKind::Single(t),
        } => format!("must be {}", article(&t.to_string())),
        Kind::Type {
            kind: TypeKind::Multiple(set),
        } => {
            // `null` last and bare: "must be an integer or null".
            let names: Vec<String> = set.iter().map(|t| t.to_string()).collect();
            let mut words: Vec<String> = names
                .iter()
                .filter(|t| *t != "null")
                .map(|t| article(t))
                .collect();
            if names.iter().any(|t| t == "null") {
                words.push("null".to_owned());
            }
            format!("must be {}", words.join(" or "))
        }
        Kind::Minimum { limit } => format!("must be at least {limit}"),
        Kind::Maximum { limit } => format!("must be at most {limit}"),
        Kind::ExclusiveMinimum { limit } => format!("must be more than {limit}"),
        Kind::ExclusiveMaximum { limit } => format!("must be less than {limit}"),
        Kind::MinLength { limit: 1 } => "must not be empty".to_owned(),
        Kind::MinLength { limit } => format!("must be at least {limit} characters long"),
        Kind::MaxLength { limit: 1 } => "must be at most 1 character long".to_owned(),
        Kind::MaxLength { limit } => format!("must be at most {limit} characters long"),
        Kind::Enum { options } => match options.as_array() {
            Some(options) => format!(
                "must be one of: {}",
                options
                    .iter()
                    .map(|o| o.as_str().map_or_else(|| o.to_string(), str::to_owned))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None => fallback.to_owned(),
        },
        Kind::Constant { expected_value } => format!("must be {expected_value}"),
        _ => fallback.to_owned(),
    }
}

/// A JSON number that is an integer, however it is written: `8`, `8.0` and `8e0` are all the
/// integer 8 (JSON Schema's `integer` counts them so, and clients write them so).
pub fn as_integer(value: &Value) -> Option<Value> {
    if value.is_i64() || value.is_u64() {
        return Some(value.clone());
    }
    let f = value.as_f64()?;
    if f.fract() != 0.0 {
        return None;
    }
    // 2^63 and 2^64 are exactly representable; everything inside fits exactly.
    if (-9_223_372_036_854_775_808.0..0.0).contains(&f) {
        Some(Value::from(f as i64))
    } else if (0.0..18_446_744_073_709_551_616.0).contains(&f) {
        Some(Value::from(f as u64))
    } else {
        None
    }
}

/// Whether a schema node allows integers but not other numbers.
fn wants_integer(schema: &serde_json::Map<String, Value>) -> bool {
    match schema.get("type") {
        Some(Value::String(t)) => t == "integer",
        Some(Value::Array(types)) => {
            types.iter().any(|t| t == "integer") && !types.iter().any(|t| t == "number")
        }
        _ => false,
    }
}

fn normalize(schema: &Value, value: &mut Value) {
    let Value::Object(schema) = schema else {
        return;
    };
    match value {
        Value::Number(n) if n.is_f64() && wants_integer(schema) => {
            if let Some(integer) = as_integer(value) {
                *value = integer;
            }
        }
        Value::Object(object) => {
            let properties = schema.get("properties").and_then(Value::as_object);
            let others = schema.get("additionalProperties");
            for (key, member) in object.iter_mut() {
                if let Some(sub) = properties.and_then(|p| p.get(key)).or(others) {
                    normalize(sub, member);
                }
            }
        }
        Value::Array(items) => {
            let prefix = schema.get("prefixItems").and_then(Value::as_array);
            let rest = schema.get("items");
            for (i, item) in items.iter_mut().enumerate() {
                if let Some(sub) = prefix.and_then(|p| p.get(i)).or(rest) {
                    normalize(sub, item);
                }
            }
        }
        _ => {}
    }
    // A value the schema describes in alternatives: an integer-only branch that it meets
    // (validation passed) makes it an integer.
    for key in ["allOf", "anyOf", "oneOf"] {
        if let Some(Value::Array(branches)) = schema.get(key) {
            for branch in branches {
                normalize(branch, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn hash_schema() -> InputSchema {
        InputSchema::compile(&json!({
            "type": "object",
            "properties": {
                "bytes": {"type": "integer", "minimum": 0, "maximum": 1024},
                "seed": {"type": ["integer", "null"], "minimum": 0},
                "kind": {"type": ["string", "null"], "enum": ["a", "b", null]},
                "message": {"type": "string", "minLength": 1, "maxLength": 3},
            },
            "required": ["bytes"],
            "additionalProperties": false,
        }))
        .unwrap()
    }

    fn fields(errors: &[FieldError]) -> Vec<&str> {
        let mut fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        fields.sort();
        fields
    }

    #[test]
    fn every_bad_field_is_named_with_its_pointer() {
        let schema = hash_schema();
        let errors = schema.validate(&json!({"bytes": -1, "seed": "x", "extra": 1, "a/b": 2}));
        assert_eq!(
            fields(&errors),
            ["input.a/b", "input.bytes", "input.extra", "input.seed"]
        );
        let extra = errors.iter().find(|e| e.field == "input.extra").unwrap();
        assert_eq!(
            (extra.pointer.as_str(), extra.detail.as_str()),
            ("#/input/extra", "unknown field")
        );
        let slash = errors.iter().find(|e| e.field == "input.a/b").unwrap();
        assert_eq!(slash.pointer, "#/input/a~1b");
        let bytes = errors.iter().find(|e| e.field == "input.bytes").unwrap();
        assert_eq!(bytes.detail, "must be at least 0");
        let seed = errors.iter().find(|e| e.field == "input.seed").unwrap();
        assert_eq!(seed.detail, "must be an integer or null");

        let errors = schema.validate(&json!({}));
        assert_eq!(fields(&errors), ["input.bytes"]);
        assert_eq!(errors[0].detail, "is required");
        let errors = schema.validate(&Value::Null);
        assert_eq!(fields(&errors), ["input"]);
        assert_eq!(errors[0].pointer, "#/input");
        assert_eq!(errors[0].detail, "must be an object");
        let errors = schema.validate(&json!({"bytes": 1, "kind": "c", "message": "long"}));
        assert_eq!(fields(&errors), ["input.kind", "input.message"]);
        assert_eq!(errors[0].detail, "must be one of: a, b, null");
        assert_eq!(errors[1].detail, "must be at most 3 characters long");
        assert!(schema
            .validate(&json!({"bytes": 1, "seed": null, "kind": null}))
            .is_empty());
    }

    #[test]
    fn integers_written_as_floats_become_integers() {
        let schema = hash_schema();
        let mut input = json!({"bytes": 8.0, "seed": 1e3});
        assert!(schema.validate(&input).is_empty());
        schema.normalize(&mut input);
        assert_eq!(input, json!({"bytes": 8, "seed": 1000}));
        assert!(input["bytes"].is_u64());
        assert_eq!(
            fields(&schema.validate(&json!({"bytes": 8.5}))),
            ["input.bytes"]
        );
        assert_eq!(as_integer(&json!(1.8446744073709552e19)), None);
        assert_eq!(as_integer(&json!(-2.0)), Some(json!(-2)));
        // A number the schema takes as a number stays as written.
        let any = InputSchema::compile(&json!(true)).unwrap();
        let mut input = json!({"x": 1.0});
        any.normalize(&mut input);
        assert!(input["x"].is_f64());
    }

    #[test]
    fn remote_references_are_not_fetched() {
        assert!(InputSchema::compile(&json!({"$ref": "https://example.com/s.json"})).is_err());
    }

    #[test]
    fn names() {
        for good in ["echo", "render-pdf", "a.b_c", "9"] {
            assert!(valid_name(good), "{good}");
        }
        for bad in ["", "Echo", "-x", "a b", "a@b", "a:b", &"x".repeat(65)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
