//! The worker: consumes job messages from RabbitMQ (manual acks, bounded prefetch), runs each
//! job's handler, and writes running, progress, and the outcome to Redis before acknowledging.
//! Run as many worker processes as you like against the same queue.
//!
//! It is a library as well as the `worker` binary: a crate of your own depends on it, declares
//! its job types, and runs a complete worker with them ([`Worker::builder`]; the workspace's
//! `examples` crate is one). No file of this project changes to add a type.
//!
//! # Map
//!
//! - Declaring and running: [`builder`] (a worker from its job types), [`cli`] (the command
//!   line every worker binary shares), [`jobs`] (a [`JobType`]: name, typed input whose JSON
//!   Schema is derived, handler, limits; the built-ins `echo`, `sleep`, `hash`, `fail`),
//!   [`context`] (what a running handler gets: progress, cancellation).
//! - A delivery's path: [`startup`] wires the parts; [`consumer`] takes deliveries from the
//!   work queue (and reaps lapsed leases); [`process`] decodes one, starts its job, runs the
//!   handler, stores the outcome and settles the delivery ([`acks`] batches the acks);
//!   [`handoff`] passes on a job of a type another worker serves; [`cancel`] turns cancel
//!   requests into the running handler's token; [`job_store`] is the job's state in Redis.
//! - After the job: [`webhook`] delivers callbacks from their queue; [`dead_letters`] lists and
//!   replays what could not be handled.
//! - Around it: [`fleet`] (the heartbeat in the fleet registry, and the job type registration
//!   the facades learn types from), [`metrics`] (Prometheus).
//!
//! A handler needs only what this crate re-exports: [`JobType`], [`JobContext`],
//! [`JobFailure`], and [`schemars`] for its input's `#[derive(JsonSchema)]`
//! (`use worker::schemars::{self, JsonSchema};`); `serde` is the one other dependency.

pub mod acks;
pub mod builder;
pub mod cancel;
pub mod cli;
pub mod consumer;
pub mod context;
pub mod dead_letters;
pub mod declared;
pub mod fleet;
pub mod handoff;
pub mod job_store;
pub mod jobs;
pub mod legacy;
pub mod metrics;
pub mod process;
pub mod startup;
pub mod versions;
pub mod webhook;

pub use builder::{RunError, Worker, WorkerBuilder};
pub use context::JobContext;
pub use jobs::{JobFailure, JobType, Output, Registry};
/// The JSON Schema derive a job type's input uses (the version this crate is built with).
pub use schemars;
/// The settings a worker runs with (see `config/default.toml`).
pub use shared::Settings;
/// What tests hand [`JobContext::detached_for`] to cancel a job.
pub use tokio_util::sync::CancellationToken;
