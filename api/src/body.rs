//! Reading a JSON request body: content type, size limit and syntax, each with its own 4xx;
//! then its shape (nesting depth, string and array sizes, no NUL characters), a 422 naming
//! where it breaks a limit.

use actix_web::http::header;
use actix_web::{web, HttpRequest};
use futures_util::StreamExt;
use serde_json::Value;
use shared::configuration::LimitSettings;
use shared::job_types::FieldError;

use crate::error::ApiError;

/// serde_json refuses nesting deeper than 128 on its own (a 400 then); a configured depth limit
/// above this one would never be reached.
const PARSER_MAX_DEPTH: usize = 127;

/// `application/json` or any `application/*+json`, parameters (charset) allowed.
fn is_json(req: &HttpRequest) -> bool {
    let Some(value) = req.headers().get(header::CONTENT_TYPE) else {
        return false;
    };
    let Ok(value) = value.to_str() else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Reads the whole body as JSON, refusing it as soon as it passes `limit` bytes.
pub async fn read_json(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
    shape: &LimitSettings,
) -> Result<Value, ApiError> {
    if !is_json(req) {
        return Err(ApiError::UnsupportedMediaType);
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let read = async {
        let mut body = web::BytesMut::with_capacity(declared.unwrap_or(1024).min(limit));
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|e| ApiError::BodyRead(e.to_string()))?;
            if body.len() + chunk.len() > limit {
                return Err(ApiError::PayloadTooLarge { limit });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    };
    let seconds = shape.max_body_read_seconds.max(1);
    let body = tokio::time::timeout(std::time::Duration::from_secs(seconds), read)
        .await
        .map_err(|_| ApiError::BodyTimeout { seconds })??;
    if body.is_empty() {
        return Err(ApiError::MalformedJson("the body is empty".into()));
    }
    // Depth first, on the bytes: a body nested 10,000 levels deep never reaches the parser.
    let max_depth = shape.max_json_depth.clamp(1, PARSER_MAX_DEPTH);
    if nesting_exceeds(&body, max_depth) {
        return Err(shape_error(
            FieldError {
                field: String::new(),
                pointer: "#".into(),
                detail: format!("the body nests arrays and objects deeper than {max_depth} levels"),
            },
            1,
        ));
    }
    let value: Value =
        serde_json::from_slice(&body).map_err(|e| ApiError::MalformedJson(e.to_string()))?;
    let mut errors = Vec::new();
    check_shape(&value, &mut String::from("#"), shape, &mut errors);
    if errors.is_empty() {
        Ok(value)
    } else {
        let n = errors.len();
        errors.truncate(MAX_REPORTED);
        Err(shape_error_many(errors, n))
    }
}

/// Shape errors reported at most (a body can hold thousands).
const MAX_REPORTED: usize = 20;

fn shape_error(error: FieldError, n: usize) -> ApiError {
    shape_error_many(vec![error], n)
}

fn shape_error_many(errors: Vec<FieldError>, n: usize) -> ApiError {
    let detail = match errors.as_slice() {
        [one] if n == 1 && one.field.is_empty() => one.detail.clone(),
        [one] if n == 1 => format!("{}: {}", one.field, one.detail),
        _ => format!("{n} values break the request limits"),
    };
    ApiError::Validation { detail, errors }
}

/// Whether `bytes` (JSON, or not) opens more than `max` arrays or objects at once. Brackets
/// inside strings do not count.
fn nesting_exceeds(bytes: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Collects every string over the size limit or holding U+0000, and every array over the item
/// limit, with its JSON pointer. NUL is refused because job input travels on through Redis,
/// AMQP, logs and webhooks to handlers where it truncates or breaks C strings and text columns.
fn check_shape(
    value: &Value,
    pointer: &mut String,
    limits: &LimitSettings,
    errors: &mut Vec<FieldError>,
) {
    let check_string = |s: &str, pointer: &str, what: &str, errors: &mut Vec<FieldError>| {
        if s.len() > limits.max_string_bytes {
            errors.push(error_at(
                pointer,
                format!("{what} is longer than {} bytes", limits.max_string_bytes),
            ));
        } else if s.contains('\0') {
            errors.push(error_at(pointer, format!("{what} contains U+0000 (NUL)")));
        }
    };
    match value {
        Value::String(s) => check_string(s, pointer, "the string", errors),
        Value::Array(items) => {
            if items.len() > limits.max_array_items {
                errors.push(error_at(
                    pointer,
                    format!("the array has more than {} items", limits.max_array_items),
                ));
                return;
            }
            for (i, item) in items.iter().enumerate() {
                let len = pointer.len();
                pointer.push_str(&format!("/{i}"));
                check_shape(item, pointer, limits, errors);
                pointer.truncate(len);
            }
        }
        Value::Object(members) => {
            for (key, item) in members {
                let len = pointer.len();
                pointer.push('/');
                pointer.push_str(&key.replace('~', "~0").replace('/', "~1"));
                check_string(key, pointer, "the member name", errors);
                check_shape(item, pointer, limits, errors);
                pointer.truncate(len);
            }
        }
        _ => {}
    }
}

fn error_at(pointer: &str, detail: String) -> FieldError {
    // The dotted field path of `#/input/a/0`: `input.a.0`.
    let field = pointer
        .trim_start_matches('#')
        .trim_start_matches('/')
        .split('/')
        .map(|p| p.replace("~1", "/").replace("~0", "~"))
        .collect::<Vec<_>>()
        .join(".");
    FieldError {
        field,
        pointer: pointer.to_owned(),
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn limits() -> LimitSettings {
        LimitSettings {
            max_json_depth: 4,
            max_string_bytes: 8,
            max_array_items: 3,
            max_body_read_seconds: 1,
            submit_per_second: 0,
            submit_burst: 0,
            poll_per_second: 0,
            poll_burst: 0,
            max_waits_per_key: 0,
            max_queue_depth: 0,
        }
    }

    #[test]
    fn depth_counts_brackets_outside_strings() {
        assert!(!nesting_exceeds(br#"[[["[[[[[[[["]]]"#, 3));
        assert!(nesting_exceeds(b"[[[[]]]]", 3));
        assert!(!nesting_exceeds(br#"{"a":"\\"}"#, 1));
        assert!(nesting_exceeds(br#"{"a":"\"[","b":[]}"#, 1));
        assert!(nesting_exceeds("[".repeat(10_000).as_bytes(), 64));
    }

    #[test]
    fn shape_errors_name_where() {
        let mut errors = Vec::new();
        let body =
            json!({"input": {"a/b": ["123456789", 1, 2], "c": [1, 2, 3, 4], "d\u{0}": "x\u{0}"}});
        check_shape(&body, &mut String::from("#"), &limits(), &mut errors);
        let pointers: Vec<&str> = errors.iter().map(|e| e.pointer.as_str()).collect();
        assert_eq!(
            pointers,
            [
                "#/input/a~1b/0",
                "#/input/c",
                "#/input/d\u{0}",
                "#/input/d\u{0}"
            ]
        );
        assert_eq!(errors[0].field, "input.a/b.0");
    }
}
