//! A worker that serves `wordcount` only: the service's configuration, shutdown, metrics and
//! fleet registration, and its tools (`wordcount-worker job-types list`, …), with one job
//! type of its own. `.with_builtins()` would add `echo`, `sleep`, `hash` and `fail`.

fn main() -> std::process::ExitCode {
    worker::Worker::builder()
        .name("wordcount-worker")
        .job_type(arr_examples::wordcount::job_type())
        .run_from_args()
}
