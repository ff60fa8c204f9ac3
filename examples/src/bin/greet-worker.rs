//! A worker that serves `greet` in the version `GREET_VERSION` names (1 or 2, default 2): two
//! versions of one crate, side by side, as in a rolling deploy.

fn main() -> std::process::ExitCode {
    let version = std::env::var("GREET_VERSION")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    worker::Worker::builder()
        .name("greet-worker")
        .job_type(arr_examples::greet::job_type(version))
        .run_from_args()
}
