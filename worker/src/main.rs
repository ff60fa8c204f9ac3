//! The `worker` binary: the built-in job types, run with the command line's settings. A binary
//! of your own with your own types is the same two lines (see `worker::Worker` and the
//! `examples` crate).

fn main() -> std::process::ExitCode {
    worker::Worker::builder().with_builtins().run_from_args()
}
