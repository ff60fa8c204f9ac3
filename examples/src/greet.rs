//! `greet`, in two versions whose input schemas disagree: what a rolling deploy that changes a
//! type's input looks like. Version 1 takes `{"name"}`; version 2 takes `{"name", "greeting"}`
//! (a new required field), and each refuses the other's shape (`deny_unknown_fields`). Both
//! are served by `greet-worker`, the version chosen by `GREET_VERSION` (1 or 2): in a real
//! deploy they are two builds of your crate. While both run, the facade accepts either shape
//! and every job runs on a worker whose schema it meets (see `worker::versions`).

use serde::{Deserialize, Serialize};
use worker::schemars::{self, JsonSchema};
use worker::{JobContext, JobFailure, JobType};

/// Version 1's input.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GreetV1 {
    /// Who to greet.
    #[schemars(length(min = 1, max = 100))]
    pub name: String,
}

/// Version 2's input: the greeting is the client's to choose now.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GreetV2 {
    #[schemars(length(min = 1, max = 100))]
    pub name: String,
    /// `Hello`, `Bonjour`, …
    #[schemars(length(min = 1, max = 40))]
    pub greeting: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Greeting {
    pub text: String,
    /// The version of the worker that ran the job.
    pub version: u8,
}

/// `greet` as version `version` (1 or 2; anything else is 2) declares it.
pub fn job_type(version: u8) -> JobType {
    if version == 1 {
        JobType::new(
            "greet",
            "Greets `name` (version 1).",
            GreetV1 { name: "Ada".into() },
            |input: GreetV1, _ctx: JobContext| async move {
                Ok::<_, JobFailure>(Greeting {
                    text: format!("Hello, {}", input.name),
                    version: 1,
                })
            },
        )
    } else {
        JobType::new(
            "greet",
            "Greets `name` with `greeting` (version 2).",
            GreetV2 {
                name: "Ada".into(),
                greeting: "Bonjour".into(),
            },
            |input: GreetV2, _ctx: JobContext| async move {
                Ok::<_, JobFailure>(Greeting {
                    text: format!("{}, {}", input.greeting, input.name),
                    version: 2,
                })
            },
        )
    }
}
