//! The HTTP facade: accepts jobs (`POST /v1/jobs`), answers status polls from Redis and hands
//! out results. It never runs jobs; workers do.

pub mod auth;
pub mod body;
pub mod broker;
pub mod cancel;
pub mod cors;
pub mod error;
pub mod estimates;
pub mod idempotency;
pub mod io;
pub mod job_response;
pub mod job_types;
pub mod limits;
pub mod long_poll;
pub mod metrics;
pub mod notifier;
pub mod openapi;
pub mod problem;
pub mod progress;
pub mod routes;
pub mod signing;
pub mod startup;
pub mod status_store;
pub mod submission;
