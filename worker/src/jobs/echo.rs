//! `echo`: returns its input (the no-op job, for trying the system and measuring its overhead).

use serde_json::{json, Value};

use super::{JobFailure, JobType};
use crate::context::JobContext;

/// `echo`'s declaration: any JSON input (absent means null), returned as the result.
pub fn job_type() -> JobType {
    JobType::new(
        "echo",
        "Returns its input unchanged (the no-op job).",
        json!({"hello": "world"}),
        run,
    )
    .max_attempts(3)
    .max_run_seconds(30)
    .priorities(true)
}

pub async fn run(input: Value, _ctx: JobContext) -> Result<Value, JobFailure> {
    Ok(input)
}
