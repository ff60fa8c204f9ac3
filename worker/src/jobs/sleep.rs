//! `sleep`: waits `seconds`, reporting progress as it goes (the long-running job).

use std::time::Duration;

use serde::Serialize;
use shared::job_types::SleepInput;
use tokio::time::Instant;

use super::JobFailure;
use crate::context::JobContext;

#[derive(Debug, Serialize)]
pub struct SleepOutput {
    pub slept_seconds: f64,
}

pub async fn run(input: SleepInput, ctx: JobContext) -> Result<SleepOutput, JobFailure> {
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
