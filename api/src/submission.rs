//! A job request as the client sent it, parsed into something that is known to be valid
//! (the job type exists and the input meets its rules) or into every reason it is not.

use serde_json::Value;
use shared::job_types::{self, FieldError, JobTypeSpec};
use shared::webhooks::WebhookSettings;

use crate::error::ApiError;

/// Members a submission may have.
const MEMBERS: &[&str] = &["type", "input", "priority", "callback_url"];

#[derive(Debug)]
pub struct Submission {
    pub spec: &'static JobTypeSpec,
    pub input: Value,
    pub priority: u8,
    /// Checked against the webhook allow-list.
    pub callback_url: Option<String>,
}

impl Submission {
    /// Parses a submission on a server without webhooks (every `callback_url` is refused).
    pub fn parse(body: Value) -> Result<Self, ApiError> {
        Self::parse_with(body, &NO_WEBHOOKS)
    }

    /// Parses a submission, checking a `callback_url` against `webhooks`.
    pub fn parse_with(body: Value, webhooks: &WebhookSettings) -> Result<Self, ApiError> {
        let Value::Object(mut body) = body else {
            return Err(invalid(vec![FieldError {
                field: String::new(),
                pointer: "#".into(),
                detail: "the body must be a JSON object".into(),
            }]));
        };
        let mut errors: Vec<FieldError> = body
            .keys()
            .filter(|k| !MEMBERS.contains(&k.as_str()))
            .map(|k| FieldError::new(&[k], "unknown member"))
            .collect();

        let spec = match body.get("type") {
            None | Some(Value::Null) => {
                errors.push(FieldError::new(&["type"], "is required"));
                None
            }
            Some(Value::String(name)) => {
                let spec = job_types::spec(name);
                if spec.is_none() {
                    errors.push(FieldError::new(
                        &["type"],
                        format!("unknown job type; known types: {}", known_types()),
                    ));
                }
                spec
            }
            Some(_) => {
                errors.push(FieldError::new(&["type"], "must be a string"));
                None
            }
        };

        let priority = match body.get("priority") {
            None | Some(Value::Null) => 0,
            Some(v) => match job_types::as_integer(v) {
                Some(p) if p <= 9 => p as u8,
                _ => {
                    errors.push(FieldError::new(
                        &["priority"],
                        "must be an integer from 0 to 9",
                    ));
                    0
                }
            },
        };

        let callback_url = match body.get("callback_url") {
            None | Some(Value::Null) => None,
            Some(Value::String(url)) => match webhooks.validate_url(url) {
                Ok(url) => Some(url),
                Err(detail) => {
                    errors.push(FieldError::new(&["callback_url"], detail));
                    None
                }
            },
            Some(_) => {
                errors.push(FieldError::new(&["callback_url"], "must be a string"));
                None
            }
        };

        let mut input = body.remove("input").unwrap_or(Value::Null);
        if let Some(spec) = spec {
            errors.extend(spec.validate(&input));
            spec.normalize(&mut input);
        }
        match spec {
            Some(spec) if errors.is_empty() => Ok(Submission {
                spec,
                input,
                priority,
                callback_url,
            }),
            _ => Err(invalid(errors)),
        }
    }
}

/// Webhooks off: no host is allowed.
static NO_WEBHOOKS: WebhookSettings = WebhookSettings {
    allowed_hosts: Vec::new(),
    secret: String::new(),
    max_attempts: 1,
    base_delay_ms: 1,
    max_delay_ms: 1,
    request_timeout_ms: 1,
    concurrency: 1,
};

fn known_types() -> String {
    job_types::CATALOG
        .iter()
        .map(|s| s.name)
        .collect::<Vec<_>>()
        .join(", ")
}

fn invalid(errors: Vec<FieldError>) -> ApiError {
    let detail = match errors.as_slice() {
        [one] if one.field.is_empty() => one.detail.clone(),
        [one] => format!("{}: {}", one.field, one.detail),
        many => format!("{} fields are invalid", many.len()),
    };
    ApiError::Validation { detail, errors }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(result: Result<Submission, ApiError>) -> Vec<String> {
        match result {
            Err(ApiError::Validation { errors, .. }) => {
                errors.into_iter().map(|e| e.field).collect()
            }
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn valid_submission() {
        let s = Submission::parse(json!({"type": "sleep", "input": {"seconds": 1}, "priority": 3}))
            .unwrap();
        assert_eq!(s.spec.name, "sleep");
        assert_eq!(s.priority, 3);
    }

    #[test]
    fn names_every_bad_member() {
        assert_eq!(
            fields(Submission::parse(
                json!({"type": "hash", "input": {"bytes": "x"}, "priority": 10, "x": 1})
            )),
            ["x", "priority", "input.bytes"]
        );
        assert_eq!(fields(Submission::parse(json!({"type": "nope"}))), ["type"]);
        assert_eq!(fields(Submission::parse(json!({}))), ["type"]);
        assert_eq!(fields(Submission::parse(json!([1]))), [""]);
        assert_eq!(fields(Submission::parse(json!({"type": 5}))), ["type"]);
    }

    #[test]
    fn callback_urls_must_be_allowed() {
        let webhooks = WebhookSettings {
            allowed_hosts: vec!["hooks.example.com".into()],
            secret: "k".into(),
            ..NO_WEBHOOKS.clone()
        };
        let s = Submission::parse_with(
            json!({"type": "echo", "callback_url": "https://hooks.example.com/done"}),
            &webhooks,
        )
        .unwrap();
        assert_eq!(
            s.callback_url.as_deref(),
            Some("https://hooks.example.com/done")
        );
        for bad in [
            json!("https://other.example.com/"),
            json!("https://u:p@hooks.example.com/"),
            json!("hooks.example.com"),
            json!(5),
        ] {
            assert_eq!(
                fields(Submission::parse_with(
                    json!({"type": "echo", "callback_url": bad}),
                    &webhooks
                )),
                ["callback_url"]
            );
        }
        // Without webhooks configured, every callback is refused.
        assert_eq!(
            fields(Submission::parse(
                json!({"type": "echo", "callback_url": "https://hooks.example.com/done"})
            )),
            ["callback_url"]
        );
    }
}
