//! Job types declared in a file rather than in Rust: an existing HTTP service (`http`) or a
//! program (`command`) behind the facade. `worker.job_types_file` names a TOML file:
//!
//! ```toml
//! [types.render]
//! description = "Renders a report as PDF."
//! example = { title = "Q3", format = "pdf" }
//! schema = { type = "object", required = ["title", "format"], properties = { title = { type = "string" }, format = { enum = ["pdf", "png"] } } }
//! # or: schema_file = "schemas/render.json" (relative to this file)
//! max_run_seconds = 300
//! max_result_bytes = 10485760
//!
//! [types.render.http]
//! url = "http://reports:9000/render/{format}"
//! headers = { Authorization = "Bearer ${REPORTS_TOKEN}" }
//! ```
//!
//! Each type is registered as any other (the facade learns its schema, example and limits from
//! the worker's registration). [`load`] reads and checks the whole file at start: a file that
//! cannot be read, or a type declared wrongly, is an error naming the file, the type and what is
//! wrong, and the worker does not start.
//!
//! URLs and programs come only from the file. Input fields may fill `{name}` placeholders, and
//! only fields the schema declares as required top-level properties of a scalar type: in an
//! `http` URL's path or query (URL-encoded; never in the scheme, host or port), or in a
//! `command` argument (as text, into that one argument; never the program: see
//! [`command`]).

pub mod command;
pub mod http;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;
use shared::Settings;

use crate::jobs::{JobType, Registry};

/// Largest result a declared type keeps unless it says otherwise (bytes).
pub const DEFAULT_MAX_RESULT_BYTES: u64 = 10 * 1024 * 1024;

/// Why a job-types file was refused: the file, the type (when one is to blame) and the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {}{problem}", match .job_type { Some(t) => format!("job type '{t}': "), None => String::new() })]
pub struct FileError {
    pub file: String,
    pub job_type: Option<String>,
    pub problem: String,
}

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TypesFile {
    #[serde(default)]
    types: BTreeMap<String, TypeDecl>,
}

/// One type as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TypeDecl {
    description: String,
    #[serde(default)]
    schema: Option<Value>,
    #[serde(default)]
    schema_file: Option<PathBuf>,
    example: Value,
    #[serde(default)]
    priorities: bool,
    #[serde(default)]
    max_attempts: Option<u32>,
    #[serde(default)]
    max_run_seconds: Option<u64>,
    #[serde(default)]
    max_result_bytes: Option<u64>,
    #[serde(default)]
    http: Option<http::HttpSpec>,
    #[serde(default)]
    command: Option<command::CommandSpec>,
}

/// What a handler's builder gets besides its own table: the type, checked so far.
pub struct TypeContext<'a> {
    /// The type's name.
    pub name: &'a str,
    /// The directory of the file (relative paths in it are from there).
    pub dir: &'a Path,
    /// The type's input schema.
    pub schema: &'a Value,
    /// Largest result kept (bytes).
    pub max_result_bytes: u64,
    /// The type's longest run (seconds).
    pub max_run_seconds: u64,
    /// The worker's settings (`worker.progress_base_url`, the signing keys, …).
    pub settings: &'a Settings,
}

impl TypeContext<'_> {
    /// `path` as written in the file, relative to the file's directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_owned()
        } else {
            self.dir.join(path)
        }
    }

    /// Checks that `field`, named by a `{field}` placeholder, is a required top-level property
    /// of the schema whose values are scalars (a string, number, integer or boolean): what may
    /// fill a URL segment or a whole argument.
    pub fn check_placeholder(&self, field: &str) -> Result<(), String> {
        let required = self
            .schema
            .get("required")
            .and_then(Value::as_array)
            .is_some_and(|r| r.iter().any(|n| n.as_str() == Some(field)));
        let property = self
            .schema
            .get("properties")
            .and_then(|p| p.get(field))
            .ok_or_else(|| {
                format!("the placeholder {{{field}}} names no property of the input schema")
            })?;
        if !required {
            return Err(format!(
                "the placeholder {{{field}}} names a property the input schema does not require (list it in \"required\")"
            ));
        }
        if !scalar_only(property) {
            return Err(format!(
                "the placeholder {{{field}}} names a property that may be an object or an array; give it a type of string, number, integer or boolean, or an enum of those"
            ));
        }
        Ok(())
    }
}

/// Whether every value `schema` admits is a scalar (its `type`, or every member of its `enum`
/// or its `const`).
fn scalar_only(schema: &Value) -> bool {
    let scalar_type = |t: &Value| {
        matches!(
            t.as_str(),
            Some("string" | "number" | "integer" | "boolean")
        )
    };
    let scalar_value = |v: &Value| !(v.is_object() || v.is_array() || v.is_null());
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        return values.iter().all(scalar_value);
    }
    if let Some(value) = schema.get("const") {
        return scalar_value(value);
    }
    match schema.get("type") {
        Some(Value::Array(types)) => !types.is_empty() && types.iter().all(scalar_type),
        Some(t) => scalar_type(t),
        None => false,
    }
}

/// The `{name}` placeholders of `text` (a name is 1 or more of `A-Za-z0-9_-`); an error for a
/// `{` or `}` that opens or closes none. `{{` and `}}` are a literal brace.
pub fn placeholders(text: &str) -> Result<Vec<Segment>, String> {
    let mut segments = Vec::new();
    let mut literal = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                literal.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                literal.push('}');
            }
            '{' => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(c) if c.is_ascii_alphanumeric() || c == '_' || c == '-' => {
                            name.push(c)
                        }
                        _ => {
                            return Err(format!(
                                "'{text}' has a '{{' that opens no placeholder ({{name}}, with a name of letters, digits, _ and -; {{{{ for a brace)"
                            ))
                        }
                    }
                }
                if name.is_empty() {
                    return Err(format!("'{text}' has an empty placeholder {{}}"));
                }
                if !literal.is_empty() {
                    segments.push(Segment::Literal(std::mem::take(&mut literal)));
                }
                segments.push(Segment::Field(name));
            }
            '}' => return Err(format!("'{text}' has a '}}' that closes no placeholder")),
            c => literal.push(c),
        }
    }
    if !literal.is_empty() {
        segments.push(Segment::Literal(literal));
    }
    Ok(segments)
}

/// A piece of a text with placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    Field(String),
}

/// The text of a scalar input field (a string as it is, a number or boolean as JSON writes
/// it); `None` when `input` has no such scalar field.
pub fn field_text(input: &Value, field: &str) -> Option<String> {
    match input.get(field)? {
        Value::String(s) => Some(s.clone()),
        v @ (Value::Number(_) | Value::Bool(_)) => Some(v.to_string()),
        _ => None,
    }
}

/// `${NAME}` in `value` replaced by the environment variable `NAME` (for secrets: a header's
/// or key's value need not be in the file); `$${` is a literal `${`. An unset variable is an
/// error naming it.
pub fn expand_env(value: &str) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(after) = tail.strip_prefix("${") {
            let end = after
                .find('}')
                .ok_or_else(|| format!("'{value}' has a '${{' without its '}}'"))?;
            let name = &after[..end];
            let found = std::env::var(name).map_err(|_| {
                format!("the environment variable {name} (named by ${{{name}}}) is not set")
            })?;
            out.push_str(&found);
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Reads `path` and builds its types, every one checked; the first problem found is the error.
pub fn load(path: &Path, settings: &Settings) -> Result<Vec<JobType>, FileError> {
    let file = path.display().to_string();
    let error = |job_type: Option<&str>, problem: String| FileError {
        file: file.clone(),
        job_type: job_type.map(str::to_owned),
        problem,
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| error(None, format!("cannot read the file: {e}")))?;
    let parsed: TypesFile = toml::from_str(&text).map_err(|e| error(None, e.to_string()))?;
    if parsed.types.is_empty() {
        return Err(error(
            None,
            "declares no job types (a [types.<name>] table each)".to_owned(),
        ));
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    parsed
        .types
        .into_iter()
        .map(|(name, decl)| build(&name, decl, dir, settings).map_err(|p| error(Some(&name), p)))
        .collect()
}

fn build(name: &str, decl: TypeDecl, dir: &Path, settings: &Settings) -> Result<JobType, String> {
    let schema = match (decl.schema, decl.schema_file) {
        (Some(schema), None) => schema,
        (None, Some(file)) => {
            let file = if file.is_absolute() {
                file
            } else {
                dir.join(file)
            };
            let text = std::fs::read_to_string(&file)
                .map_err(|e| format!("cannot read schema_file {}: {e}", file.display()))?;
            serde_json::from_str(&text)
                .map_err(|e| format!("schema_file {} is not JSON: {e}", file.display()))?
        }
        (Some(_), Some(_)) => {
            return Err("gives both schema and schema_file; give one".to_owned());
        }
        (None, None) => {
            return Err(
                "has no input schema (schema = {…} or schema_file = \"….json\")".to_owned(),
            );
        }
    };
    if schema.get("type").and_then(Value::as_str) != Some("object") {
        return Err(
            "the input schema must describe an object (\"type\": \"object\"): an input is a JSON object"
                .to_owned(),
        );
    }
    let limits = crate::jobs::DEFAULT_LIMITS;
    let max_run_seconds = decl.max_run_seconds.unwrap_or(limits.max_run_seconds);
    if max_run_seconds == 0 {
        return Err("max_run_seconds must be at least 1".to_owned());
    }
    if decl.max_attempts == Some(0) {
        return Err("max_attempts must be at least 1".to_owned());
    }
    let max_result_bytes = decl.max_result_bytes.unwrap_or(DEFAULT_MAX_RESULT_BYTES);
    if max_result_bytes == 0 {
        return Err("max_result_bytes must be at least 1".to_owned());
    }
    let context = TypeContext {
        name,
        dir,
        schema: &schema,
        max_result_bytes,
        max_run_seconds,
        settings,
    };
    let (handler, cancel_grace) = match (decl.http, decl.command) {
        (Some(spec), None) => http::build(spec, &context)?,
        (None, Some(spec)) => command::build(spec, &context)?,
        (Some(_), Some(_)) => {
            return Err("has both an http and a command handler; give one".to_owned());
        }
        (None, None) => {
            return Err(
                "has no handler: add a [types.<name>.http] or [types.<name>.command] table"
                    .to_owned(),
            );
        }
    };
    let mut job_type = JobType::dynamic(name, &decl.description, schema, decl.example, handler)?
        .max_run_seconds(max_run_seconds)
        .priorities(decl.priorities)
        .cancel_grace(cancel_grace);
    if let Some(attempts) = decl.max_attempts {
        job_type = job_type.max_attempts(attempts);
    }
    Ok(job_type)
}

/// Adds the types of `settings.worker.job_types_file` (if it names one) to `registry`; a type
/// the binary already has is an error (a file must not silently replace code).
pub fn add_file_types(registry: &mut Registry, settings: &Settings) -> Result<(), FileError> {
    let path = settings.worker.job_types_file.trim();
    if path.is_empty() {
        return Ok(());
    }
    for job_type in load(Path::new(path), settings)? {
        if registry.contains(job_type.name()) {
            return Err(FileError {
                file: path.to_owned(),
                job_type: Some(job_type.name().to_owned()),
                problem: "this worker's binary has a job type of that name already; give the declared one another name".to_owned(),
            });
        }
        registry.register(job_type);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_found_and_braces_escape() {
        assert_eq!(
            placeholders("/a/{x}/b?q={y_1}").unwrap(),
            vec![
                Segment::Literal("/a/".into()),
                Segment::Field("x".into()),
                Segment::Literal("/b?q=".into()),
                Segment::Field("y_1".into()),
            ]
        );
        assert_eq!(
            placeholders("{{x}}").unwrap(),
            vec![Segment::Literal("{x}".into())]
        );
        assert!(placeholders("{").is_err());
        assert!(placeholders("{}").is_err());
        assert!(placeholders("}").is_err());
        assert!(placeholders("{a b}").is_err());
    }

    #[test]
    fn env_values_expand_and_a_missing_one_is_named() {
        std::env::set_var("ARR_DECLARED_TEST_TOKEN", "s3cret");
        assert_eq!(
            expand_env("Bearer ${ARR_DECLARED_TEST_TOKEN}").unwrap(),
            "Bearer s3cret"
        );
        assert_eq!(expand_env("a $b $${c}").unwrap(), "a $b ${c}");
        let e = expand_env("${ARR_DECLARED_TEST_UNSET}").unwrap_err();
        assert!(e.contains("ARR_DECLARED_TEST_UNSET"), "{e}");
        assert!(expand_env("${OPEN").is_err());
    }

    #[test]
    fn placeholder_fields_must_be_required_scalars() {
        let schema = serde_json::json!({
            "type": "object",
            "required": ["s", "e", "o"],
            "properties": {
                "s": {"type": "string"},
                "e": {"enum": ["a", 1]},
                "o": {"type": "object"},
                "opt": {"type": "string"}
            }
        });
        let settings = Settings::load(None).unwrap();
        let context = TypeContext {
            name: "t",
            dir: Path::new("."),
            schema: &schema,
            max_result_bytes: 1,
            max_run_seconds: 1,
            settings: &settings,
        };
        assert!(context.check_placeholder("s").is_ok());
        assert!(context.check_placeholder("e").is_ok());
        assert!(context
            .check_placeholder("o")
            .unwrap_err()
            .contains("object"));
        assert!(context
            .check_placeholder("opt")
            .unwrap_err()
            .contains("require"));
        assert!(context
            .check_placeholder("nope")
            .unwrap_err()
            .contains("no property"));
    }

    fn load_text(text: &str) -> Result<Vec<JobType>, FileError> {
        let dir = std::env::temp_dir().join(format!("arr-declared-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("job-types.toml");
        std::fs::write(&path, text).unwrap();
        let result = load(&path, &Settings::load(None).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
        result
    }

    #[test]
    fn a_bad_file_names_the_file_the_type_and_the_problem() {
        let e = load_text("[types.x\n").unwrap_err();
        assert!(
            e.file.ends_with("job-types.toml") && e.job_type.is_none(),
            "{e}"
        );
        let e = load_text("").unwrap_err();
        assert!(e.problem.contains("no job types"), "{e}");
        let e = load_text(
            r#"
[types.bad]
description = "d"
example = {}
schema = { type = "object" }
"#,
        )
        .unwrap_err();
        assert_eq!(e.job_type.as_deref(), Some("bad"));
        assert!(e.problem.contains("no handler"), "{e}");
        assert!(
            e.to_string().contains("job type 'bad': has no handler"),
            "{e}"
        );
        let e = load_text(
            r#"
[types.nosch]
description = "d"
example = {}
[types.nosch.command]
argv = ["true"]
"#,
        )
        .unwrap_err();
        assert!(e.problem.contains("no input schema"), "{e}");
        let e = load_text(
            r#"
[types.ex]
description = "d"
example = { n = "x" }
schema = { type = "object", properties = { n = { type = "integer" } } }
[types.ex.command]
argv = ["true"]
"#,
        )
        .unwrap_err();
        assert!(e.problem.contains("example does not meet"), "{e}");
        let e = load_text(
            r#"
[types.Upper]
description = "d"
example = {}
schema = { type = "object" }
[types.Upper.command]
argv = ["true"]
"#,
        )
        .unwrap_err();
        assert!(e.problem.contains("not a job type name"), "{e}");
        let e = load_text(
            r#"
[types.typo]
description = "d"
example = {}
schema = { type = "object" }
max_run_secs = 3
[types.typo.command]
argv = ["true"]
"#,
        )
        .unwrap_err();
        assert!(e.problem.contains("max_run_secs"), "{e}");
    }

    #[test]
    fn a_schema_file_is_read_relative_to_the_file() {
        let dir = std::env::temp_dir().join(format!("arr-declared-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(dir.join("schemas")).unwrap();
        std::fs::write(
            dir.join("schemas/t.json"),
            r#"{"type":"object","properties":{"n":{"type":"integer"}},"required":["n"]}"#,
        )
        .unwrap();
        let path = dir.join("job-types.toml");
        std::fs::write(
            &path,
            r#"
[types.t]
description = "From a file."
example = { n = 3 }
schema_file = "schemas/t.json"
max_run_seconds = 7
max_attempts = 2
[types.t.command]
argv = ["true"]
"#,
        )
        .unwrap();
        let types = load(&path, &Settings::load(None).unwrap()).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(types.len(), 1);
        let t = &types[0];
        assert_eq!(t.name(), "t");
        assert_eq!(t.input_schema()["required"][0], "n");
        assert!(t.check_input(&serde_json::json!({"n": 1})).is_empty());
        assert!(!t.check_input(&serde_json::json!({"n": "x"})).is_empty());
        let settings = Settings::load(None).unwrap();
        let limits = t.limits_in(&settings.jobs);
        assert_eq!((limits.max_attempts, limits.max_run_seconds), (2, 7));
    }
}
