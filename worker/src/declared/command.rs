//! The `command` handler: a script or CLI behind the facade (see README "Your service or
//! script behind it").

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::TypeContext;
use crate::jobs::{ErasedHandler, JobFailure};

/// `[types.<name>.command]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandSpec {
    /// The program and its arguments, run without a shell; an argument that is exactly
    /// `{field}` is that input field's value.
    pub argv: Vec<String>,
    /// What stdout is: `application/json` (the default: it must be JSON) or any media type
    /// (its bytes are the result).
    #[serde(default)]
    pub result_media_type: Option<String>,
    /// The exit code that means "the input is wrong" (default 65, `EX_DATAERR`).
    #[serde(default)]
    pub input_rejected_exit_code: Option<i32>,
    /// The environment variables passed on from the worker's (all others are cleared).
    #[serde(default)]
    pub env: Vec<String>,
    /// Environment variables set for the program; values may name the worker's (`${VAR}`).
    #[serde(default)]
    pub set_env: BTreeMap<String, String>,
    /// Most bytes of stdout kept (default: the type's `max_result_bytes`); more fails the job.
    #[serde(default)]
    pub max_stdout_bytes: Option<u64>,
    /// Most bytes of stderr read (default 1 MiB); more fails the job.
    #[serde(default)]
    pub max_stderr_bytes: Option<u64>,
}

/// The handler of a `command` type, and how long a canceled run may take to stop.
pub fn build(
    spec: CommandSpec,
    context: &TypeContext<'_>,
) -> Result<(ErasedHandler, Duration), String> {
    let _ = (&spec, context);
    let handler: ErasedHandler = std::sync::Arc::new(|_, _| {
        Box::pin(async {
            Err(JobFailure::permanent(
                "the command handler is not built yet",
            ))
        })
    });
    Ok((handler, Duration::ZERO))
}
