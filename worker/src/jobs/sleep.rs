//! `sleep`: waits `seconds`, reporting progress as it goes (the long-running job).

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::{JobFailure, JobType};
use crate::context::JobContext;

/// Longest `sleep` accepted, in seconds.
pub const MAX_SECONDS: f64 = 3600.0;

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SleepInput {
    /// How long to sleep, 0 to 3600.
    #[schemars(range(min = 0.0, max = MAX_SECONDS))]
    pub seconds: f64,
}

/// `sleep`'s declaration.
pub fn job_type() -> JobType {
    JobType::new(
        "sleep",
        "Sleeps for `seconds`, reporting progress as it goes.",
        SleepInput { seconds: 0.5 },
        run,
    )
    .max_attempts(3)
    // The longest sleep and some slack.
    .max_run_seconds(3660)
    .priorities(true)
}

#[derive(Debug, Serialize)]
pub struct SleepOutput {
    pub slept_seconds: f64,
}

pub async fn run(input: SleepInput, ctx: JobContext) -> Result<SleepOutput, JobFailure> {
    // The schema bounds `seconds` to [0, 3600], and JSON has no NaN or infinity; this guards a
    // caller that builds a `SleepInput` in code.
    if !(input.seconds.is_finite() && input.seconds >= 0.0) {
        return Err(JobFailure::input_rejected(
            "seconds must be a finite, non-negative number",
        ));
    }
    let total = Duration::from_secs_f64(input.seconds);
    // Wake often enough for smooth progress, rarely enough to cost nothing.
    let step = Duration::from_secs_f64((input.seconds / 100.0).clamp(0.05, 1.0));
    let start = Instant::now();
    let deadline = start + total;
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        tokio::time::sleep_until((now + step).min(deadline)).await;
        let elapsed = start.elapsed().min(total);
        let percent = if total.is_zero() {
            100.0
        } else {
            100.0 * elapsed.as_secs_f64() / total.as_secs_f64()
        };
        ctx.progress(
            percent,
            format!(
                "slept {:.1} of {:.1} s",
                elapsed.as_secs_f64(),
                input.seconds
            ),
        )
        .await;
    }
    Ok(SleepOutput {
        slept_seconds: input.seconds,
    })
}
