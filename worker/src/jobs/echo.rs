//! `echo`: returns its input (the no-op job, for trying the system and measuring its overhead).

use serde_json::Value;

use super::JobFailure;
use crate::context::JobContext;

pub async fn run(input: Value, _ctx: JobContext) -> Result<Value, JobFailure> {
    Ok(input)
}
