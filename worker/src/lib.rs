//! The worker: consumes job messages from RabbitMQ (manual acks, bounded prefetch), runs each
//! job's handler, and writes running, progress, and the outcome to Redis before acknowledging
//! (`consumer`, `process`, `job_store`). A job's callback is queued in the broker before that
//! ack, and every worker delivers callbacks from that queue (`webhook`). Run as many worker
//! processes as you like against the same queue.

pub mod acks;
pub mod cancel;
pub mod consumer;
pub mod context;
pub mod dead_letters;
pub mod fleet;
pub mod job_store;
pub mod jobs;
pub mod metrics;
pub mod process;
pub mod startup;
pub mod webhook;

pub use context::JobContext;
pub use jobs::{JobFailure, JobType, Registry};
