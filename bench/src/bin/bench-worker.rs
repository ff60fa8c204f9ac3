//! The benchmark's worker: the built-in types, and `plain`, a no-op like `echo` but declared
//! without priorities, so its queue is a plain classic queue (issue 17: the end-to-end figure of
//! a type that does not pay for the broker's priority queue).

use serde_json::Value;
use worker::{JobContext, JobFailure, JobType};

fn main() -> std::process::ExitCode {
    let plain = JobType::new(
        "plain",
        "Returns its input (a no-op without priorities).",
        Value::Null,
        |input: Value, _ctx: JobContext| async move { Ok::<_, JobFailure>(input) },
    );
    worker::Worker::builder()
        .name("bench-worker")
        .with_builtins()
        .job_type(plain)
        .run_from_args()
}
