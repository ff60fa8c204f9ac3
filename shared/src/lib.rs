//! What the facade (`api`) and the workers (`worker`) agree on: the job and its status
//! document, the job type registry (what workers register, how an input is checked against
//! a type's schema), the queue message, the Redis key layout and the configuration. Neither side depends on the other; they meet only here.

pub mod access;
pub mod amqp;
pub mod configuration;
pub mod fleet;
pub mod hex;
pub mod job;
pub mod job_types;
pub mod keys;
pub mod message;
pub mod publish;
pub mod redis_conn;
pub mod signing;
pub mod telemetry;
pub mod tenant;
pub mod timestamp;
pub mod tls;
pub mod topology;
pub mod trace;
pub mod webhooks;

pub use configuration::Settings;
pub use job::{
    BackendCancel, JobError, JobErrorKind, JobId, JobStatus, Progress, ResultInfo, StatusDocument,
    StatusHead,
};
pub use keys::KeyLayout;
pub use message::JobMessage;
pub use tenant::Tenant;
