//! Rolling deploys: two versions of a worker that serve one job type with different input
//! schemas run side by side, both registered (`<name>@<digest>`, see `shared::job_types`).
//!
//! The facade accepts an input that meets the schema of any live version and lists, in the
//! queue message, the digest of every schema it met (`schema_digest`, `also_valid_for`). Both
//! versions consume the type's one queue, so either may receive it:
//!
//! - listed for this worker's schema, or from a facade that lists none (an older version):
//!   it runs here, as always;
//! - not listed, but this worker's schema accepts it too (most changes add optional fields):
//!   it runs here;
//! - not listed, and this worker's schema rejects it: it is not run, and not failed. It goes
//!   back to the queue through a delay queue for a worker of a version it was checked against
//!   (`crate::handoff`): after the first retry step while such a worker is live, after the
//!   longest while that version is still registered (its workers may come back: a deploy
//!   rolled back). Only when no version it was checked against is registered any more (none
//!   served it for `jobs.type_retention_seconds`) does the job fail, `input-rejected`, naming
//!   both schemas: no worker is left that could run it.
//!
//! The check costs nothing in the common case: a job listed for this worker's schema is not
//! validated again.

use shared::{JobErrorKind, JobMessage};

use crate::handoff::{Destination, LiveTypes};
use crate::jobs::{JobFailure, JobType};

/// Why this worker's version of `spec` cannot run `message`'s job: empty when it can (the
/// facade checked the input against this version's schema, or this schema accepts it too).
pub fn problems(spec: &JobType, message: &JobMessage) -> Vec<String> {
    if message.schema_digest.is_none() || message.checked_against_digest(spec.schema_digest()) {
        return Vec::new();
    }
    spec.check_input(&message.input)
}

/// Where a job goes that only other versions can run: the best place among the versions the
/// facade checked it against.
pub async fn destination(live: &LiveTypes, message: &JobMessage) -> Destination {
    let mut best = Destination::Nowhere;
    for digest in message.schema_digest.iter().chain(&message.also_valid_for) {
        match live.version_destination(digest).await {
            Destination::Served => return Destination::Served,
            Destination::Waiting => best = Destination::Waiting,
            Destination::Nowhere => {}
        }
    }
    best
}

/// The failure of a job that only versions no longer registered could run.
pub fn gone(own_digest: &str, message: &JobMessage, problems: &[String]) -> JobFailure {
    let short = |d: &str| d.get(..12).unwrap_or(d).to_owned();
    let accepted: Vec<String> = message
        .schema_digest
        .iter()
        .chain(&message.also_valid_for)
        .map(|d| short(d))
        .collect();
    JobFailure::new(
        JobErrorKind::InputRejected,
        format!(
        "the job was accepted against input schema {} of job type '{}', which no worker serves any more; the version now serving it (schema {}) rejects the input: {}",
        accepted.join(", "),
        message.job_type,
        short(own_digest),
        problems.join("; ")
    ),
        false,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use schemars::JsonSchema;
    use serde::{Deserialize, Serialize};
    use serde_json::json;
    use shared::JobId;

    #[derive(Serialize, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct V2 {
        name: String,
        greeting: String,
    }

    fn v2() -> JobType {
        let example = V2 {
            name: "a".into(),
            greeting: "hi".into(),
        };
        JobType::new("greet", "Greets.", example, |input: V2, _ctx| async move {
            Ok(input.greeting)
        })
    }

    #[test]
    fn a_job_checked_against_another_schema_runs_if_this_one_takes_it() {
        let spec = v2();
        let message = |input| JobMessage::new(JobId::new(), "greet", input, Utc::now());
        // Listed for this schema: not checked again (even if it would not pass).
        let own = message(json!({})).checked_against(spec.schema_digest(), &[]);
        assert!(problems(&spec, &own).is_empty());
        let also = message(json!({})).checked_against("v1", &[spec.schema_digest().to_owned()]);
        assert!(problems(&spec, &also).is_empty());
        // From an older facade (no digest): as before.
        assert!(problems(&spec, &message(json!({}))).is_empty());
        // Checked against v1 only: runs if this schema accepts it too...
        let fits = message(json!({"name": "a", "greeting": "yo"})).checked_against("v1", &[]);
        assert!(problems(&spec, &fits).is_empty());
        // ...not if it does not.
        let old = message(json!({"name": "a"})).checked_against("v1", &[]);
        let found = problems(&spec, &old);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("greeting"), "{found:?}");
        let failure = gone(spec.schema_digest(), &old, &found);
        assert_eq!(failure.kind, JobErrorKind::InputRejected);
        assert!(failure.message.contains("v1"), "{}", failure.message);
    }
}
