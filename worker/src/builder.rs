//! A worker built from the job types it serves: the `worker` binary is
//! `Worker::builder().with_builtins().run_from_args()`, and a crate of your own that depends
//! on this one runs its own types the same way:
//!
//! ```no_run
//! use worker::{JobContext, JobFailure, JobType, Worker};
//! use worker::schemars::{self, JsonSchema};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize, JsonSchema)]
//! #[serde(deny_unknown_fields)]
//! struct Input {
//!     /// Who to greet.
//!     #[schemars(length(min = 1, max = 100))]
//!     name: String,
//! }
//!
//! #[derive(Serialize)]
//! struct Output {
//!     greeting: String,
//! }
//!
//! async fn greet(input: Input, _ctx: JobContext) -> Result<Output, JobFailure> {
//!     Ok(Output { greeting: format!("hello, {}", input.name) })
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     let example = Input { name: "world".into() };
//!     Worker::builder()
//!         .name("greeter")
//!         .job_type(JobType::new("greet", "Greets `name`.", example, greet))
//!         .run_from_args()
//! }
//! ```
//!
//! That binary is a whole worker: the same settings (`config/default.toml` compiled in, a
//! `--config` file, `APP__…` variables), the same shutdown, metrics, fleet and job type
//! registration, and the same tools (`job-types list|register`, `dead-letters list|replay`).

use std::process::ExitCode;

use shared::Settings;
use tokio::sync::watch;

use crate::job_store::StoreError;
use crate::jobs::{JobType, Registry};

/// Why a worker did not run, or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The job types and the settings do not fit together (`worker.types` names a type
    /// this worker does not have, or it would serve none).
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Collects the job types of a worker; [`Worker::builder`] makes one.
#[must_use]
pub struct WorkerBuilder {
    name: String,
    registry: Registry,
}

impl WorkerBuilder {
    /// Adds the built-in types (`echo`, `sleep`, `hash`, `fail`). Without this call the worker
    /// serves only the types given to [`job_type`](Self::job_type).
    pub fn with_builtins(mut self) -> Self {
        for job_type in Registry::builtin().types() {
            // The built-ins are shared values; the registry takes each one as it is.
            self.registry.register_shared(job_type.clone());
        }
        self
    }

    /// Adds `job_type`. A type of the same name given earlier (a built-in too) is replaced.
    pub fn job_type(mut self, job_type: JobType) -> Self {
        self.registry.register(job_type);
        self
    }

    /// The name the worker reports its logs and traces under (`service.name`); `worker` if
    /// not set.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    pub fn build(self) -> Worker {
        Worker {
            name: self.name,
            registry: self.registry,
        }
    }

    /// Builds the worker and hands it the process's command line: see
    /// [`Worker::run_from_args`].
    pub fn run_from_args(self) -> ExitCode {
        self.build().run_from_args()
    }
}

/// A worker with its job types, ready to run.
pub struct Worker {
    name: String,
    registry: Registry,
}

impl Worker {
    pub fn builder() -> WorkerBuilder {
        WorkerBuilder {
            name: "worker".to_owned(),
            registry: Registry::new(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Every type this worker has, before `worker.types` narrows them.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The types it serves with `settings`: its own and those declared in
    /// `worker.job_types_file`, narrowed to those named in `worker.types` if any.
    pub fn registry_for(&self, settings: &Settings) -> Result<Registry, RunError> {
        let mut registry = self.registry.clone();
        crate::declared::add_file_types(&mut registry, settings)
            .map_err(|e| RunError::Config(e.to_string()))?;
        let registry = registry
            .only(&settings.worker.types)
            .map_err(RunError::Config)?;
        if registry.names().next().is_none() {
            return Err(RunError::Config(
                "this worker has no job types to serve".to_owned(),
            ));
        }
        registry.queues(&settings.amqp).map_err(RunError::Config)?;
        Ok(registry)
    }

    /// What a worker binary's `main` does: parses the command line (`--config`, and a
    /// command: `run` by default, `job-types …`, `dead-letters …`), loads the settings, and
    /// runs it on a runtime of `worker.runtime_threads` threads; SIGTERM or SIGINT drains and
    /// stops it. The exit code says how it went (2: invalid configuration).
    pub fn run_from_args(self) -> ExitCode {
        crate::cli::main(self)
    }

    /// Runs the worker inside your own runtime until `shutdown` turns true (logging and
    /// tracing are yours to set up; [`crate::startup::shutdown_signal`] turns SIGTERM/SIGINT
    /// into such a channel).
    pub async fn run(
        self,
        settings: Settings,
        shutdown: watch::Receiver<bool>,
    ) -> Result<(), RunError> {
        let registry = self.registry_for(&settings)?;
        crate::startup::run(settings, registry, shutdown).await?;
        Ok(())
    }
}
