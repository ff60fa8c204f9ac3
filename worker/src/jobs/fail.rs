//! `fail`: fails with the given message (the failure paths, end to end): permanently, as
//! rejected input, transiently (so it is retried), or by panicking; with `until_attempt`, only
//! on the attempts before that one, after which it succeeds.

use serde::Serialize;
use shared::job_types::FailInput;

use super::JobFailure;
use crate::context::JobContext;

#[derive(Debug, Serialize)]
pub struct FailOutput {
    /// The attempt that finally succeeded.
    pub succeeded_on_attempt: u32,
}

pub async fn run(input: FailInput, ctx: JobContext) -> Result<FailOutput, JobFailure> {
    if input.until_attempt.is_some_and(|n| ctx.attempt() >= n) {
        return Ok(FailOutput {
            succeeded_on_attempt: ctx.attempt(),
        });
    }
    match input.kind.as_deref() {
        Some("input-rejected") => Err(JobFailure::input_rejected(input.message)),
        Some("transient") => Err(JobFailure::transient(input.message)),
        Some("panic") => panic!("{}", input.message),
        _ => Err(JobFailure::permanent(input.message)),
    }
}
