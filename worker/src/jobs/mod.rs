//! The job handlers this worker runs, registered by name. A handler is an async function over
//! a typed input and output:
//!
//! ```ignore
//! async fn run(input: MyInput, ctx: JobContext) -> Result<MyOutput, JobFailure>
//! ```
//!
//! and `Registry::register("my-type", run)` makes it available. The name must also be in the
//! shared catalog (`shared::job_types::CATALOG`), where the facade finds its input rules.

pub mod echo;
pub mod fail;
pub mod hash;
pub mod sleep;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use shared::{JobError, JobErrorKind};

use crate::context::JobContext;

/// Why a handler did not produce a result.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct JobFailure {
    pub kind: JobErrorKind,
    pub message: String,
    pub retryable: bool,
}

impl JobFailure {
    /// The job cannot succeed (retrying would not help).
    pub fn permanent(message: impl Into<String>) -> Self {
        JobFailure {
            kind: JobErrorKind::HandlerFailed,
            message: message.into(),
            retryable: false,
        }
    }

    /// A passing failure (a dependency down, a rate limit): the job is retried with back-off,
    /// up to its type's maximum attempts.
    pub fn transient(message: impl Into<String>) -> Self {
        JobFailure {
            kind: JobErrorKind::HandlerFailed,
            message: message.into(),
            retryable: true,
        }
    }

    /// The input breaks a rule only the handler could check (the client's fault: 422).
    pub fn input_rejected(message: impl Into<String>) -> Self {
        JobFailure {
            kind: JobErrorKind::InputRejected,
            message: message.into(),
            retryable: false,
        }
    }

    pub fn to_error(&self) -> JobError {
        JobError::new(self.kind, self.message.clone(), self.retryable)
    }
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Value, JobFailure>> + Send>>;
type ErasedHandler = Arc<dyn Fn(Value, JobContext) -> BoxFuture + Send + Sync>;

/// Shared: every job's processor holds the registry.
#[derive(Clone, Default)]
pub struct Registry {
    handlers: Arc<HashMap<String, ErasedHandler>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// The built-in types: `echo`, `sleep`, `hash`, `fail`.
    pub fn builtin() -> Self {
        use shared::job_types::{ECHO, FAIL, HASH, SLEEP};
        let mut registry = Self::new();
        registry.register(ECHO, echo::run);
        registry.register(SLEEP, sleep::run);
        registry.register(HASH, hash::run);
        registry.register(FAIL, fail::run);
        registry
    }

    /// Registers `handler` under `name`, replacing any handler of that name.
    pub fn register<I, O, F, Fut>(&mut self, name: &str, handler: F) -> &mut Self
    where
        I: DeserializeOwned + Send + 'static,
        O: Serialize + Send + 'static,
        F: Fn(I, JobContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, JobFailure>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let erased: ErasedHandler = Arc::new(move |input: Value, ctx: JobContext| {
            let handler = handler.clone();
            Box::pin(async move {
                // The facade checked the input's shape; this catches a worker whose types
                // disagree with the catalog.
                let input: I = serde_json::from_value(input)
                    .map_err(|e| JobFailure::input_rejected(format!("invalid input: {e}")))?;
                let output = handler(input, ctx).await?;
                serde_json::to_value(output)
                    .map_err(|e| JobFailure::permanent(format!("cannot encode the result: {e}")))
            }) as BoxFuture
        });
        Arc::make_mut(&mut self.handlers).insert(name.to_owned(), erased);
        self
    }

    /// Runs the handler of `name`; `None` if there is none.
    pub fn run(&self, name: &str, input: Value, ctx: JobContext) -> Option<BoxFuture> {
        self.handlers.get(name).map(|h| h(input, ctx))
    }

    pub fn contains(&self, name: &str) -> bool {
        self.handlers.contains_key(name)
    }
}
