//! The job types this worker serves. A job type is declared once, as a [`JobType`]: its name,
//! description, an example input, limits, whether it takes priorities, and its handler, an
//! async function over a typed input and output:
//!
//! ```ignore
//! #[derive(Deserialize, Serialize, JsonSchema)]
//! #[serde(deny_unknown_fields)]
//! struct MyInput { /* … */ }
//!
//! async fn run(input: MyInput, ctx: JobContext) -> Result<MyOutput, JobFailure> { /* … */ }
//!
//! JobType::new("my-type", "What it does.", MyInput { /* an example */ }, run)
//!     .max_run_seconds(120)
//! ```
//!
//! The input's JSON Schema (draft 2020-12) is derived from `MyInput` (`schemars`), so the
//! rules the facade checks a submission against and the type the handler receives are one
//! thing: whatever the facade accepts deserialises here. `crate::Worker::builder().job_type(..)`
//! adds a type (from a crate of your own too: see `crate::builder`);
//! the worker registers every type it serves with the facades when it starts (see
//! `crate::fleet`), and the facades learn it from there. The built-ins (`echo`, `sleep`,
//! `hash`, `fail`) are declared the same way, in the modules below.

pub mod echo;
pub mod fail;
pub mod hash;
pub mod sleep;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use shared::configuration::{AmqpSettings, JobSettings, Limits};
use shared::job_types::{schema_digest, valid_name, InputSchema, JobTypeRecord};
use shared::{JobError, JobErrorKind};

use crate::context::JobContext;

/// Why a handler did not produce a result.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct JobFailure {
    pub kind: JobErrorKind,
    pub message: String,
    pub retryable: bool,
    /// For a transient failure: how long the thing that failed asked to be left alone (an
    /// HTTP backend's `Retry-After`). The retry waits at least this long, up to
    /// `amqp.retry_max_delay_ms`.
    pub retry_after: Option<std::time::Duration>,
    /// The failing backend's own problem document (RFC 9457), kept in the job's error.
    pub backend: Option<Value>,
}

impl JobFailure {
    pub fn new(kind: JobErrorKind, message: impl Into<String>, retryable: bool) -> Self {
        JobFailure {
            kind,
            message: message.into(),
            retryable,
            retry_after: None,
            backend: None,
        }
    }

    /// The job cannot succeed (retrying would not help).
    pub fn permanent(message: impl Into<String>) -> Self {
        Self::new(JobErrorKind::HandlerFailed, message, false)
    }

    /// A passing failure (a dependency down, a rate limit): the job is retried with back-off,
    /// up to its type's maximum attempts.
    pub fn transient(message: impl Into<String>) -> Self {
        Self::new(JobErrorKind::HandlerFailed, message, true)
    }

    /// The input breaks a rule only the handler could check (the client's fault: 422). The
    /// input's shape (types, ranges, required and unknown fields) is the schema's, checked by
    /// the facade before the job was queued.
    pub fn input_rejected(message: impl Into<String>) -> Self {
        Self::new(JobErrorKind::InputRejected, message, false)
    }

    /// The same failure, retried no sooner than `after` (when it is transient).
    pub fn retry_after(mut self, after: Option<std::time::Duration>) -> Self {
        self.retry_after = after;
        self
    }

    /// The same failure with the backend's problem document.
    pub fn with_backend_problem(mut self, problem: Option<Value>) -> Self {
        self.backend = problem;
        self
    }

    pub fn to_error(&self) -> JobError {
        let mut error = JobError::new(self.kind, self.message.clone(), self.retryable);
        error.backend = self.backend.clone();
        error
    }
}

/// What a handler produced: JSON (every typed handler's), or bytes of a media type (what a
/// declared `http` backend or `command` answered: a PDF, a PNG, text).
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    Json(Value),
    Bytes { media_type: String, body: Vec<u8> },
}

impl Output {
    /// The bytes to store and the media type to serve them with.
    pub fn encode(self) -> Result<(Vec<u8>, String), String> {
        match self {
            Output::Json(value) => serde_json::to_vec(&value)
                .map(|bytes| (bytes, shared::job::JSON_MEDIA_TYPE.to_owned()))
                .map_err(|e| format!("cannot encode the result: {e}")),
            Output::Bytes { media_type, body } => Ok((body, media_type)),
        }
    }
}

impl From<Value> for Output {
    fn from(value: Value) -> Self {
        Output::Json(value)
    }
}

/// A running handler.
pub type BoxFuture = Pin<Box<dyn Future<Output = Result<Output, JobFailure>> + Send>>;
/// A handler over any input (what a typed handler becomes, and what a declared type is).
pub type ErasedHandler = Arc<dyn Fn(Value, JobContext) -> BoxFuture + Send + Sync>;

/// Limits of a type whose declaration does not set them.
pub const DEFAULT_LIMITS: Limits = Limits {
    max_attempts: 3,
    max_run_seconds: 30,
};

/// The JSON Schema (draft 2020-12) of `I`, every subschema inlined so the schema stands alone
/// (the facade embeds it in its OpenAPI document, where `#/$defs/…` would point nowhere). A
/// recursive type keeps its `$defs`.
pub fn input_schema<I: JsonSchema>() -> Value {
    let mut schema = schemars::generate::SchemaSettings::draft2020_12()
        .with(|s| s.inline_subschemas = true)
        .into_generator()
        .into_root_schema_for::<I>();
    // The Rust type's name says nothing to a client.
    schema.remove("title");
    let mut schema = schema.to_value();
    bound_integers(&mut schema);
    schema
}

/// Gives every integer of a fixed-width Rust type (`"format": "uint64"`, …) the bounds of its
/// type, where the declaration set none: schemars writes `minimum: 0` for an unsigned type but
/// no maximum, so without this `2e19` would pass the schema and fail to deserialise.
fn bound_integers(schema: &mut Value) {
    match schema {
        Value::Object(object) => {
            let bounds: Option<(Value, Value)> = match object.get("format").and_then(Value::as_str)
            {
                Some("uint8") => Some((0.into(), u8::MAX.into())),
                Some("uint16") => Some((0.into(), u16::MAX.into())),
                Some("uint32") => Some((0.into(), u32::MAX.into())),
                Some("uint64" | "uint") => Some((0.into(), u64::MAX.into())),
                Some("int8") => Some((i8::MIN.into(), i8::MAX.into())),
                Some("int16") => Some((i16::MIN.into(), i16::MAX.into())),
                Some("int32") => Some((i32::MIN.into(), i32::MAX.into())),
                Some("int64" | "int") => Some((i64::MIN.into(), i64::MAX.into())),
                _ => None,
            };
            if let Some((min, max)) = bounds {
                object.entry("minimum").or_insert(min);
                object.entry("maximum").or_insert(max);
            }
            object.values_mut().for_each(bound_integers);
        }
        Value::Array(items) => items.iter_mut().for_each(bound_integers),
        _ => {}
    }
}

/// One job type: what the facade learns about it, and the handler.
pub struct JobType {
    name: String,
    description: String,
    input_schema: Value,
    example: Value,
    limits: Limits,
    priorities: bool,
    handler: ErasedHandler,
    /// Deserialises an input into the handler's input type, without running anything.
    decode: fn(Value) -> Result<(), String>,
    /// How long a canceled run may take to pass the cancel on (see
    /// [`cancel_grace`](Self::cancel_grace)); zero: it is stopped at once.
    cancel_grace: std::time::Duration,
    /// [`schema_digest`] of `input_schema`.
    digest: String,
    /// `input_schema` compiled, to check the input of a job that the facade checked against
    /// another version's schema only (see `crate::versions`); `None` if it does not compile
    /// (the facades refuse such a version as well).
    compiled: Option<Arc<InputSchema>>,
}

impl std::fmt::Debug for JobType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobType")
            .field("name", &self.name)
            .field("limits", &self.limits)
            .field("priorities", &self.priorities)
            .finish_non_exhaustive()
    }
}

fn decode<I: DeserializeOwned>(input: Value) -> Result<(), String> {
    serde_json::from_value::<I>(input)
        .map(drop)
        .map_err(|e| e.to_string())
}

impl JobType {
    /// A job type named `name` (1 to 64 of `a-z 0-9 . _ -`) whose handler takes an `I`;
    /// `example` is shown to clients as a valid input. Limits default to
    /// [`DEFAULT_LIMITS`]; priorities are off unless [`priorities`](Self::priorities) turns
    /// them on.
    ///
    /// # Panics
    /// If `name` is not a valid job type name (a mistake in the declaring code).
    pub fn new<I, O, F, Fut>(name: &str, description: &str, example: I, handler: F) -> Self
    where
        I: JsonSchema + DeserializeOwned + Serialize + Send + 'static,
        O: Serialize + Send + 'static,
        F: Fn(I, JobContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, JobFailure>> + Send + 'static,
    {
        assert!(valid_name(name), "invalid job type name {name:?}");
        let handler = Arc::new(handler);
        let erased: ErasedHandler = Arc::new(move |input: Value, ctx: JobContext| {
            let handler = handler.clone();
            Box::pin(async move {
                // The facade checked the input against this type's schema, which is derived
                // from `I`: this fails only for a job checked against another version's.
                let input: I = serde_json::from_value(input)
                    .map_err(|e| JobFailure::input_rejected(format!("invalid input: {e}")))?;
                let output = handler(input, ctx).await?;
                serde_json::to_value(output)
                    .map(Output::Json)
                    .map_err(|e| JobFailure::permanent(format!("cannot encode the result: {e}")))
            }) as BoxFuture
        });
        let input_schema = input_schema::<I>();
        JobType {
            name: name.to_owned(),
            description: description.to_owned(),
            digest: schema_digest(&input_schema),
            compiled: InputSchema::compile(&input_schema).ok().map(Arc::new),
            input_schema,
            // An example that does not serialise is a bug of the declaration; null is
            // still a document.
            example: serde_json::to_value(&example).unwrap_or(Value::Null),
            limits: DEFAULT_LIMITS,
            priorities: false,
            handler: erased,
            decode: decode::<I>,
            cancel_grace: std::time::Duration::ZERO,
        }
    }

    /// A job type whose input is any JSON that meets `input_schema` (draft 2020-12), run by
    /// `handler`: what a declared type (`crate::declared`) is. `example` must meet the
    /// schema. An error says what is wrong with the schema or the example.
    pub fn dynamic(
        name: &str,
        description: &str,
        input_schema: Value,
        example: Value,
        handler: ErasedHandler,
    ) -> Result<Self, String> {
        if !valid_name(name) {
            return Err(format!(
                "'{name}' is not a job type name (1 to 64 of a-z 0-9 . _ -, starting with a letter or digit)"
            ));
        }
        let compiled = InputSchema::compile(&input_schema)
            .map_err(|e| format!("the input schema is not a valid JSON Schema: {e}"))?;
        let problems: Vec<String> = compiled
            .validate(&example)
            .into_iter()
            .map(|e| format!("{}: {}", e.field, e.detail))
            .collect();
        if !problems.is_empty() {
            return Err(format!(
                "the example does not meet the input schema: {}",
                problems.join("; ")
            ));
        }
        Ok(JobType {
            name: name.to_owned(),
            description: description.to_owned(),
            digest: schema_digest(&input_schema),
            compiled: Some(Arc::new(compiled)),
            input_schema,
            example,
            limits: DEFAULT_LIMITS,
            priorities: false,
            handler,
            decode: |_| Ok(()),
            cancel_grace: std::time::Duration::ZERO,
        })
    }

    /// Lets a canceled run finish on its own for up to `grace` (it watches
    /// [`JobContext::cancelled`]) so that it can pass the cancel on, to a backend say, and
    /// record how that went ([`JobContext::backend_canceled`]); past it, it is stopped.
    pub fn cancel_grace(mut self, grace: std::time::Duration) -> Self {
        self.cancel_grace = grace;
        self
    }

    /// How long a canceled run may take to stop on its own.
    pub fn cancel_grace_period(&self) -> std::time::Duration {
        self.cancel_grace
    }

    /// Most runs of one job: a transient failure is retried until this many attempts were
    /// made, and a job whose worker keeps dying is given up after this many starts.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.limits.max_attempts = attempts.max(1);
        self
    }

    /// Longest one run may take before it is stopped and the job fails with a timeout.
    pub fn max_run_seconds(mut self, seconds: u64) -> Self {
        self.limits.max_run_seconds = seconds.max(1);
        self
    }

    /// Whether the type's jobs are ordered by the submission's `priority` (0-9).
    pub fn priorities(mut self, on: bool) -> Self {
        self.priorities = on;
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn input_schema(&self) -> &Value {
        &self.input_schema
    }

    /// The digest of the input schema (what registrations and queue messages carry).
    pub fn schema_digest(&self) -> &str {
        &self.digest
    }

    /// Whether the type's jobs are ordered by priority.
    pub fn takes_priorities(&self) -> bool {
        self.priorities
    }

    /// Every way `input` breaks this type's schema (empty: it meets it).
    pub fn check_input(&self, input: &Value) -> Vec<String> {
        match &self.compiled {
            Some(schema) => schema
                .validate(input)
                .into_iter()
                .map(|e| format!("{}: {}", e.field, e.detail))
                .collect(),
            None => vec!["the input schema does not compile".to_owned()],
        }
    }

    pub fn example(&self) -> &Value {
        &self.example
    }

    /// The declared limits with the configuration's overrides (`jobs.limits.<name>`).
    pub fn limits_in(&self, jobs: &JobSettings) -> Limits {
        jobs.limits_for(&self.name, self.limits)
    }

    /// Whether `input` deserialises into the handler's input type (the error if not).
    pub fn decode(&self, input: Value) -> Result<(), String> {
        (self.decode)(input)
    }

    /// What the worker registers about this type, whose jobs it consumes from `queue`.
    pub fn record(
        &self,
        jobs: &JobSettings,
        queue: String,
        registered_at_ms: i64,
        now_ms: i64,
    ) -> JobTypeRecord {
        JobTypeRecord {
            queue: Some(queue),
            name: self.name.clone(),
            description: self.description.clone(),
            input_schema: self.input_schema.clone(),
            example: self.example.clone(),
            limits: self.limits_in(jobs),
            priorities: self.priorities,
            schema_digest: self.digest.clone(),
            worker_version: env!("CARGO_PKG_VERSION").to_owned(),
            registered_at_ms,
            refreshed_at_ms: now_ms,
        }
    }
}

/// The job types of a worker, by name. Shared: every job's processor holds the registry.
#[derive(Clone, Default)]
pub struct Registry {
    types: Arc<BTreeMap<String, Arc<JobType>>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// The built-in types: `echo`, `sleep`, `hash`, `fail`.
    pub fn builtin() -> Self {
        let mut registry = Self::new();
        registry
            .register(echo::job_type())
            .register(sleep::job_type())
            .register(hash::job_type())
            .register(fail::job_type());
        registry
    }

    /// Only the types named in `names` (all of them when `names` is empty); an unknown name
    /// is an error (a typo in `worker.types` must not leave a type unserved silently).
    pub fn only(self, names: &[String]) -> Result<Self, String> {
        if names.is_empty() {
            return Ok(self);
        }
        if let Some(unknown) = names.iter().find(|n| !self.types.contains_key(n.as_str())) {
            return Err(format!(
                "worker.types names '{unknown}', which this worker does not have; it has: {}",
                self.names().collect::<Vec<_>>().join(", ")
            ));
        }
        let types = self
            .types
            .iter()
            .filter(|(name, _)| names.contains(name))
            .map(|(name, t)| (name.clone(), t.clone()))
            .collect();
        Ok(Registry {
            types: Arc::new(types),
        })
    }

    /// Adds `job_type`, replacing any type of that name.
    pub fn register(&mut self, job_type: JobType) -> &mut Self {
        Arc::make_mut(&mut self.types).insert(job_type.name.clone(), Arc::new(job_type));
        self
    }

    /// Adds a type declared elsewhere (another registry's), replacing any type of that name.
    pub fn register_shared(&mut self, job_type: Arc<JobType>) -> &mut Self {
        Arc::make_mut(&mut self.types).insert(job_type.name.clone(), job_type);
        self
    }

    /// Runs the handler of `name`; `None` if there is none.
    pub fn run(&self, name: &str, input: Value, ctx: JobContext) -> Option<BoxFuture> {
        self.types.get(name).map(|t| (t.handler)(input, ctx))
    }

    pub fn get(&self, name: &str) -> Option<&Arc<JobType>> {
        self.types.get(name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.types.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.types.keys().map(String::as_str)
    }

    pub fn types(&self) -> impl Iterator<Item = &Arc<JobType>> {
        self.types.values()
    }

    /// The records this worker registers, one per type.
    pub fn records(
        &self,
        jobs: &JobSettings,
        amqp: &AmqpSettings,
        registered_at_ms: i64,
        now_ms: i64,
    ) -> Vec<JobTypeRecord> {
        self.types()
            .map(|t| t.record(jobs, amqp.queue_of(t.name()), registered_at_ms, now_ms))
            .collect()
    }

    /// The work queues of these types (`amqp.queue_of`), each with whether it takes
    /// priorities; an error when a type's queue name would collide with another kind of
    /// queue, or types sharing a queue disagree on priorities (its declaration has one set of
    /// arguments).
    pub fn queues(&self, amqp: &AmqpSettings) -> Result<BTreeMap<String, bool>, String> {
        let mut queues: BTreeMap<String, (bool, &str)> = BTreeMap::new();
        for t in self.types() {
            let suffix = amqp
                .type_queues
                .get(t.name())
                .map_or(t.name(), String::as_str);
            shared::topology::check_queue_suffix(suffix)
                .map_err(|e| format!("the queue of job type '{}': {e}", t.name()))?;
            let queue = amqp.queue_of(t.name());
            match queues.get(&queue) {
                Some((priorities, other)) if *priorities != t.priorities => {
                    return Err(format!(
                        "job types '{other}' and '{}' share the queue {queue} (amqp.type_queues) but only one takes priorities",
                        t.name()
                    ));
                }
                Some(_) => {}
                None => {
                    queues.insert(queue, (t.priorities, t.name()));
                }
            }
        }
        Ok(queues.into_iter().map(|(q, (p, _))| (q, p)).collect())
    }
}
