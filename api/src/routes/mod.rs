//! The HTTP routes, one module per resource.

pub mod cancel;
pub mod dashboard;
pub mod events;
pub mod fallback;
pub mod health;
pub mod job_types;
pub mod jobs;
pub mod list;
pub mod metrics;
pub mod overview;
pub mod progress;
pub mod submit;
pub mod workers;
