//! `fail`: fails with the given message (the failure paths, end to end): permanently, as
//! rejected input, transiently (so it is retried), or by panicking; with `until_attempt`, only
//! on the attempts before that one, after which it succeeds.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{JobFailure, JobType};
use crate::context::JobContext;

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FailInput {
    /// The error's detail.
    #[schemars(length(min = 1, max = 1000))]
    pub message: String,
    /// Which failure (default handler-failed); transient is retried with back-off.
    pub kind: Option<FailKind>,
    /// Fail only on attempts before this one, then succeed.
    #[schemars(range(min = 1, max = 100))]
    pub until_attempt: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum FailKind {
    HandlerFailed,
    InputRejected,
    Transient,
    Panic,
}

/// `fail`'s declaration.
pub fn job_type() -> JobType {
    JobType::new(
        "fail",
        "Fails with `message` (the failure path), always or until an attempt.",
        FailInput {
            message: "disk on fire".into(),
            kind: None,
            until_attempt: None,
        },
        run,
    )
    .max_attempts(3)
    .max_run_seconds(30)
    .priorities(true)
}

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
    match input.kind.unwrap_or(FailKind::HandlerFailed) {
        FailKind::InputRejected => Err(JobFailure::input_rejected(input.message)),
        FailKind::Transient => Err(JobFailure::transient(input.message)),
        FailKind::Panic => panic!("{}", input.message),
        FailKind::HandlerFailed => Err(JobFailure::permanent(input.message)),
    }
}
