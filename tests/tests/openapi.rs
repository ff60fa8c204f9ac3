//! The OpenAPI document served by a running facade (`GET /openapi.json`) is a well-formed
//! OpenAPI 3.1 document that describes every route, status, header and problem body of the
//! contract; Swagger UI at `/docs` serves it with assets compiled into the binary.
//! (`scripts/fuzz-api.sh` then holds the facade to the document with schemathesis.)

use std::collections::BTreeSet;

use e2e::{Stack, StackOptions};
use reqwest::StatusCode;
use serde_json::Value;

/// Every `$ref` in `node` points into `doc`.
fn check_refs(doc: &Value, node: &Value, path: &str, broken: &mut Vec<String>) {
    match node {
        Value::Object(map) => {
            for (key, value) in map {
                if key == "$ref" {
                    let target = value
                        .as_str()
                        .and_then(|r| r.strip_prefix('#'))
                        .and_then(|pointer| doc.pointer(pointer));
                    if target.is_none() {
                        broken.push(format!("{path}: {value}"));
                    }
                } else {
                    check_refs(doc, value, &format!("{path}/{key}"), broken);
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                check_refs(doc, item, &format!("{path}/{i}"), broken);
            }
        }
        _ => {}
    }
}

/// The response object of `operation` for `status`, with its `$ref` followed.
fn response<'a>(doc: &'a Value, operation: &'a Value, status: &str) -> &'a Value {
    let response = &operation["responses"][status];
    match response["$ref"].as_str() {
        Some(r) => doc
            .pointer(r.trim_start_matches('#'))
            .unwrap_or(&Value::Null),
        None => response,
    }
}

fn statuses(operation: &Value) -> BTreeSet<String> {
    operation["responses"]
        .as_object()
        .map(|r| r.keys().cloned().collect())
        .unwrap_or_default()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn the_document_describes_the_contract() {
    let stack = Stack::start_with("openapi", StackOptions::default().workers(0)).await;
    let served = stack
        .http
        .get(stack.url("/openapi.json"))
        .send()
        .await
        .expect("GET /openapi.json");
    assert_eq!(served.status(), StatusCode::OK);
    assert_eq!(served.headers()["content-type"], "application/json");
    let doc: Value = served.json().await.expect("JSON");

    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    let mut broken = Vec::new();
    check_refs(&doc, &doc, "#", &mut broken);
    assert!(broken.is_empty(), "unresolved $refs: {broken:?}");

    // Every route, with the methods it serves.
    let paths = doc["paths"].as_object().expect("paths");
    let routes: Vec<(&str, &[&str])> = vec![
        ("/v1/jobs", &["get", "post"]),
        ("/v1/jobs/{id}", &["get", "delete"]),
        ("/v1/jobs/{id}/result", &["get"]),
        ("/v1/jobs/{id}/events", &["get"]),
        ("/v1/jobs/{id}/progress", &["post"]),
        ("/v1/job-types", &["get"]),
        ("/v1/workers", &["get"]),
        ("/v1/overview", &["get"]),
        ("/healthz", &["get"]),
        ("/readyz", &["get"]),
        ("/metrics", &["get"]),
        ("/openapi.json", &["get"]),
    ];
    assert_eq!(
        paths.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        routes.iter().map(|(p, _)| *p).collect::<BTreeSet<_>>()
    );
    let mut operation_ids = BTreeSet::new();
    for (path, methods) in &routes {
        let item = paths[*path].as_object().expect("path item");
        let documented: BTreeSet<&str> = item
            .keys()
            .map(String::as_str)
            .filter(|k| *k != "parameters")
            .collect();
        assert_eq!(documented, methods.iter().copied().collect(), "{path}");
        for method in *methods {
            let operation = &item[*method];
            let id = operation["operationId"].as_str().expect("operationId");
            assert!(operation_ids.insert(id.to_owned()), "duplicate {id}");
            for status in statuses(operation) {
                let r = response(&doc, operation, &status);
                assert!(r["description"].is_string(), "{method} {path} {status}");
                // Every 4xx/5xx body is problem+json.
                if status.starts_with('4') || status.starts_with('5') {
                    assert!(
                        r["content"]["application/problem+json"]["schema"].is_object(),
                        "{method} {path} {status}: not problem+json"
                    );
                }
            }
            // The API is behind optional bearer authentication: 401 on every /v1 operation,
            // but a backend's progress report, which its signed URL alone authorises.
            if *path == "/v1/jobs/{id}/progress" {
                assert_eq!(operation["security"], serde_json::json!([{}]));
                assert!(statuses(operation).contains("403"), "{method} {path}");
            } else if path.starts_with("/v1/") {
                let security = operation["security"].as_array().expect("security");
                assert!(security.contains(&serde_json::json!({"bearer": []})));
                assert!(security.contains(&serde_json::json!({})), "auth can be off");
                assert!(statuses(operation).contains("401"), "{method} {path}");
                let unauthorized = response(&doc, operation, "401");
                assert_eq!(
                    unauthorized["headers"]["WWW-Authenticate"]["required"],
                    true
                );
                assert!(statuses(operation).contains("429"), "{method} {path}");
            }
        }
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );

    // The statuses of the contract, operation by operation.
    let op = |path: &str, method: &str| doc["paths"][path][method].clone();
    let submit = op("/v1/jobs", "post");
    assert_eq!(
        statuses(&submit),
        set(&["202", "303", "400", "401", "408", "409", "413", "415", "422", "424", "429", "503"])
    );
    let status = op("/v1/jobs/{id}", "get");
    assert_eq!(
        statuses(&status),
        set(&["202", "303", "304", "401", "403", "404", "409", "410", "422", "424", "429", "503"])
    );
    let result = op("/v1/jobs/{id}/result", "get");
    assert!(statuses(&result).is_superset(&set(&["200", "202", "304", "404", "410", "424"])));
    let cancel = op("/v1/jobs/{id}", "delete");
    assert_eq!(
        statuses(&cancel),
        set(&["200", "202", "401", "404", "409", "429", "503"])
    );
    assert_eq!(
        statuses(&op("/v1/jobs/{id}/events", "get")),
        set(&["200", "401", "403", "404", "410", "429", "503"])
    );
    assert!(statuses(&op("/v1/workers", "get")).contains("403"));
    assert_eq!(statuses(&op("/readyz", "get")), set(&["200", "503"]));

    // Headers: the 202 of a submit and of a poll always carry Location, Retry-After, ETag.
    for (operation, code) in [(&submit, "202"), (&status, "202")] {
        let headers = &response(&doc, operation, code)["headers"];
        for name in ["Location", "Retry-After", "ETag"] {
            assert_eq!(headers[name]["required"], true, "{name}");
        }
        assert!(headers["Preference-Applied"].is_object());
    }
    assert_eq!(
        response(&doc, &status, "303")["headers"]["Location"]["required"],
        true
    );
    assert_eq!(
        response(&doc, &status, "304")["headers"]["ETag"]["required"],
        true
    );
    for code in ["429", "503"] {
        assert_eq!(
            response(&doc, &submit, code)["headers"]["Retry-After"]["required"],
            true,
            "{code}"
        );
    }
    // A failed job's problem carries the status document in `job`.
    let failed = response(&doc, &status, "424");
    assert_eq!(
        failed["content"]["application/problem+json"]["schema"]["$ref"],
        "#/components/schemas/JobProblem"
    );
    // Server-sent events.
    assert!(
        response(&doc, &op("/v1/jobs/{id}/events", "get"), "200")["content"]["text/event-stream"]
            .is_object()
    );

    // Request headers and query parameters.
    let names = |operation: &Value| -> BTreeSet<String> {
        operation["parameters"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .map(|p| {
                        format!(
                            "{}:{}",
                            p["in"].as_str().unwrap(),
                            p["name"].as_str().unwrap()
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    assert!(names(&submit).is_superset(&set(&[
        "header:Idempotency-Key",
        "header:Prefer",
        "header:traceparent"
    ])));
    assert!(names(&status).is_superset(&set(&[
        "path:id",
        "header:If-None-Match",
        "header:Prefer",
        "query:exp",
        "query:kid",
        "query:sig"
    ])));
    assert!(names(&result).is_superset(&set(&["query:exp", "query:kid", "query:sig"])));
    assert!(names(&op("/v1/jobs/{id}/events", "get"))
        .is_superset(&set(&["query:sig", "header:Last-Event-ID"])));
    assert_eq!(
        names(&op("/v1/jobs", "get")),
        set(&["query:status", "query:type", "query:limit", "query:cursor"])
    );

    // The request body: one alternative per registered job type, unknown members refused.
    let request = &doc["components"]["schemas"]["JobRequest"];
    let types: BTreeSet<&str> = request["oneOf"]
        .as_array()
        .expect("oneOf")
        .iter()
        .map(|alt| {
            assert_eq!(alt["additionalProperties"], false);
            alt["properties"]["type"]["const"].as_str().expect("const")
        })
        .collect();
    assert_eq!(
        types,
        ["echo", "fail", "hash", "sleep"].into_iter().collect()
    );
    // Webhooks are off by default: the document says any callback_url is refused.
    assert_eq!(
        request["oneOf"][0]["properties"]["callback_url"]["type"],
        "null"
    );
}

#[tokio::test]
async fn swagger_ui_serves_the_document_with_its_own_assets() {
    let stack = Stack::start_with("docs", StackOptions::default().workers(0)).await;
    let redirect = stack
        .http_no_redirect
        .get(stack.url("/docs"))
        .send()
        .await
        .expect("GET /docs");
    assert_eq!(redirect.status(), StatusCode::MOVED_PERMANENTLY);
    assert_eq!(redirect.headers()["location"], "/docs/");

    let page = stack
        .http
        .get(stack.url("/docs/"))
        .send()
        .await
        .expect("GET /docs/");
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = page.text().await.unwrap();
    assert!(html.contains("swagger-ui"), "{html}");

    // Every asset the page loads is served by the facade itself (nothing from a CDN).
    let assets: Vec<String> = html
        .split(['"', '\''])
        .filter(|s| s.ends_with(".js") || s.ends_with(".css"))
        .map(|s| s.trim_start_matches("./").to_owned())
        .collect();
    assert!(
        assets.iter().any(|a| a.ends_with("swagger-ui-bundle.js")),
        "{assets:?}"
    );
    for asset in &assets {
        assert!(!asset.contains("://"), "external asset {asset}");
        let response = stack
            .http
            .get(stack.url(&format!("/docs/{asset}")))
            .send()
            .await
            .expect("asset");
        assert_eq!(response.status(), StatusCode::OK, "{asset}");
        assert!(
            !response.bytes().await.unwrap().is_empty(),
            "{asset} is empty"
        );
    }
    // The initializer points Swagger UI at this facade's document.
    let init = stack
        .http
        .get(stack.url("/docs/swagger-initializer.js"))
        .send()
        .await
        .expect("initializer")
        .text()
        .await
        .unwrap();
    assert!(init.contains("\"/openapi.json\""), "{init}");
}
