//! A job request as the client sent it, parsed into something that is known to be valid
//! (the job type is registered and the input meets its schema) or into every reason it is not.

use std::sync::Arc;

use serde_json::Value;
use shared::job_types::{self, FieldError};
use shared::webhooks::WebhookSettings;

use crate::error::ApiError;
use crate::job_types::{Catalog, Checked, KnownType};

/// Members a submission may have.
const MEMBERS: &[&str] = &["type", "input", "priority", "callback_url"];

#[derive(Debug)]
pub struct Submission {
    pub job_type: Arc<KnownType>,
    /// Checked against the type's schema (and normalised: integers written as floats are
    /// integers).
    pub input: Value,
    pub priority: u8,
    /// Checked against the webhook allow-list.
    pub callback_url: Option<String>,
    /// The schema versions the input met.
    pub checked: Checked,
}

impl Submission {
    /// Parses a submission on a server without webhooks (every `callback_url` is refused).
    pub fn parse(body: Value, types: &Catalog) -> Result<Self, ApiError> {
        Self::parse_with(body, types, &NO_WEBHOOKS)
    }

    /// Parses a submission of one of `types`, checking a `callback_url` against `webhooks`.
    pub fn parse_with(
        body: Value,
        types: &Catalog,
        webhooks: &WebhookSettings,
    ) -> Result<Self, ApiError> {
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
                let spec = types.get(name).cloned();
                if spec.is_none() && !types.loaded {
                    return Err(ApiError::RegistryUnread);
                }
                if spec.is_none() {
                    let detail = if types.is_empty() {
                        "unknown job type; no job type is registered (no worker has started)"
                            .to_owned()
                    } else {
                        format!("unknown job type; known types: {}", types.names())
                    };
                    errors.push(FieldError::new(&["type"], detail));
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
            Some(v) => match job_types::as_integer(v).and_then(|p| p.as_u64()) {
                Some(p) if p > 0 && spec.as_ref().is_some_and(|s| !s.record.priorities) => {
                    errors.push(FieldError::new(
                        &["priority"],
                        "this job type does not take priorities: only 0",
                    ));
                    0
                }
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
        let checked = spec.as_ref().and_then(|spec| match spec.check(&mut input) {
            Ok(checked) => Some(checked),
            Err(invalid) => {
                errors.extend(invalid);
                None
            }
        });
        match (spec, checked) {
            (Some(job_type), Some(checked)) if errors.is_empty() => Ok(Submission {
                job_type,
                input,
                priority,
                callback_url,
                checked,
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

    /// A catalog of the built-in types' schemas as the workers register them.
    fn catalog() -> Catalog {
        let schemas = [
            ("echo", json!(true), true),
            (
                "sleep",
                json!({"type": "object", "properties": {"seconds": {"type": "number", "minimum": 0, "maximum": 3600}}, "required": ["seconds"], "additionalProperties": false}),
                true,
            ),
            (
                "hash",
                json!({"type": "object", "properties": {"bytes": {"type": "integer", "minimum": 0, "maximum": 1024}, "seed": {"type": ["integer", "null"], "minimum": 0}}, "required": ["bytes"], "additionalProperties": false}),
                true,
            ),
            ("plain", json!(true), false),
        ];
        Catalog::for_tests(schemas.iter().map(|(n, s, p)| (*n, s.clone(), *p)))
    }

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
        let types = catalog();
        let s = Submission::parse(
            json!({"type": "sleep", "input": {"seconds": 1}, "priority": 3}),
            &types,
        )
        .unwrap();
        assert_eq!(s.job_type.name(), "sleep");
        assert_eq!(s.priority, 3);
        // An integer written as a float reaches the worker as an integer.
        let s = Submission::parse(
            json!({"type": "hash", "input": {"bytes": 8.0, "seed": null}}),
            &types,
        )
        .unwrap();
        assert_eq!(s.input, json!({"bytes": 8, "seed": null}));
        assert!(s.input["bytes"].is_u64());
    }

    #[test]
    fn names_every_bad_member() {
        let types = catalog();
        assert_eq!(
            fields(Submission::parse(
                json!({"type": "hash", "input": {"bytes": "x"}, "priority": 10, "x": 1}),
                &types
            )),
            ["x", "priority", "input.bytes"]
        );
        assert_eq!(
            fields(Submission::parse(json!({"type": "nope"}), &types)),
            ["type"]
        );
        assert_eq!(fields(Submission::parse(json!({}), &types)), ["type"]);
        assert_eq!(fields(Submission::parse(json!([1]), &types)), [""]);
        assert_eq!(
            fields(Submission::parse(json!({"type": 5}), &types)),
            ["type"]
        );
        assert_eq!(
            fields(Submission::parse(json!({"type": "sleep"}), &types)),
            ["input"]
        );
        // A type without priorities takes only 0.
        assert_eq!(
            fields(Submission::parse(
                json!({"type": "plain", "priority": 1}),
                &types
            )),
            ["priority"]
        );
        assert!(Submission::parse(json!({"type": "plain", "priority": 0}), &types).is_ok());
    }

    #[test]
    fn without_a_registry_every_type_is_unknown() {
        // Never read (Redis down since the start): not known to be unknown.
        assert!(matches!(
            Submission::parse(json!({"type": "echo"}), &Catalog::default()),
            Err(ApiError::RegistryUnread)
        ));
        let empty = Catalog::for_tests([]);
        match Submission::parse(json!({"type": "echo"}), &empty) {
            Err(ApiError::Validation { errors, .. }) => {
                assert_eq!(errors[0].field, "type");
                assert!(errors[0].detail.contains("no job type is registered"));
            }
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn callback_urls_must_be_allowed() {
        let types = catalog();
        let webhooks = WebhookSettings {
            allowed_hosts: vec!["hooks.example.com".into()],
            secret: "k".into(),
            ..NO_WEBHOOKS.clone()
        };
        let s = Submission::parse_with(
            json!({"type": "echo", "callback_url": "https://hooks.example.com/done"}),
            &types,
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
                    &types,
                    &webhooks
                )),
                ["callback_url"]
            );
        }
        // Without webhooks configured, every callback is refused.
        assert_eq!(
            fields(Submission::parse(
                json!({"type": "echo", "callback_url": "https://hooks.example.com/done"}),
                &types
            )),
            ["callback_url"]
        );
    }
}
