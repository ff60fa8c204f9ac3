//! `fail`: always fails with the given message (the failure path, end to end).

use shared::job_types::FailInput;

use super::JobFailure;
use crate::context::JobContext;

pub async fn run(input: FailInput, _ctx: JobContext) -> Result<(), JobFailure> {
    match input.kind.as_deref() {
        Some("input-rejected") => Err(JobFailure::input_rejected(input.message)),
        _ => Err(JobFailure::permanent(input.message)),
    }
}
