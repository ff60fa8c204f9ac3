//! The job types this facade accepts, learned from the workers: each worker registers the types
//! it serves in Redis (`{prefix}:job-types`, see `shared::job_types`), and a background task
//! here reads that registry and the live workers every [`REFRESH`], compiles each new schema
//! once and swaps in a new [`Catalog`]. A submission reads the catalog in memory: no Redis
//! round trip per request, and a new type is accepted within a second or two of its worker's
//! start, with no restart of the facade.
//!
//! **Versions.** During a rolling deploy two versions of a worker may register one type with
//! different schemas (two records, `<name>@<digest>`). The newest registration is the one
//! described (`/v1/job-types`, OpenAPI) and gives the type's queue and limits; a submission is
//! accepted when its input meets the schema of *any* live version (one a live worker
//! serves; the newest alone when none is live), and its message lists every digest whose
//! schema it met. A worker runs a job listed for its own schema as it is, and one that is
//! not (accepted by the other version only) only if its own schema accepts it too; otherwise
//! it hands the job on to a worker of that version (`worker::versions`). So an old client's
//! input is not refused while old workers still run, a new client's is accepted as soon as
//! a new worker runs, and no job fails because the two versions disagree on its shape.
//!
//! A type stays in the catalog while its registration is younger than
//! `jobs.type_retention_seconds`, whether or not a live worker serves it now: its jobs are
//! accepted and wait in the queue (durable) for a worker, as every job does while all workers
//! are down. `/v1/job-types` and `/readyz` show such a type as `no-live-worker`. A type never
//! registered, or forgotten since, is an unknown type (422).

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde_json::{json, Value};
use shared::job_types::{valid_name, FieldError, InputSchema, JobTypeRecord};

use crate::io::Io;
use crate::status_store::{StatusStore, StoreError};

/// How often the registry is read.
pub const REFRESH: Duration = Duration::from_secs(1);
/// How long the facade's start waits for the first read (Redis may be down: it serves anyway,
/// and the refresher goes on trying).
const FIRST_LOAD_PATIENCE: Duration = Duration::from_secs(2);

/// A registered type, its schema compiled.
#[derive(Debug)]
pub struct KnownType {
    /// The newest registration (the one described to clients).
    pub record: JobTypeRecord,
    pub schema: Arc<InputSchema>,
    /// Live workers that serve it (any version).
    pub workers: usize,
    /// Every registered version, newest first (the first is `record`'s).
    pub versions: Vec<Version>,
}

/// One registered version of a type (one schema).
#[derive(Debug)]
pub struct Version {
    pub schema_digest: String,
    pub worker_version: String,
    pub schema: Arc<InputSchema>,
    /// Live workers that serve this version (by the schema digests in their fleet records).
    pub workers: usize,
}

/// What a live worker's fleet record says it serves.
#[derive(Debug, Clone, Default)]
pub struct LiveWorker {
    pub types: Vec<String>,
    pub schema_digests: Vec<String>,
}

/// An input checked against a type's live versions.
#[derive(Debug)]
pub struct Checked {
    /// The digest of the newest schema the input met, then the others' it met.
    pub digest: String,
    pub also: Vec<String>,
}

impl KnownType {
    pub fn name(&self) -> &str {
        &self.record.name
    }

    /// `served`, or `no-live-worker` (its jobs wait in the queue).
    pub fn state(&self) -> &'static str {
        if self.workers > 0 {
            "served"
        } else {
            "no-live-worker"
        }
    }

    /// Whether a submission may leave `input` out (the schema takes null).
    pub fn input_optional(&self) -> bool {
        self.schema.validate(&Value::Null).is_empty()
    }

    /// The queue the type's jobs are published to: the newest registration's, or for a record
    /// of a version before queues per type, the single queue `legacy` its workers consume.
    pub fn queue<'a>(&'a self, legacy: &'a str) -> &'a str {
        self.record.queue.as_deref().unwrap_or(legacy)
    }

    /// Where the broker publishes the type's jobs (see [`KnownType::queue`]).
    pub fn queue_target(&self, legacy: &str) -> crate::broker::QueueTarget {
        crate::broker::QueueTarget {
            name: self.queue(legacy).to_owned(),
            // The single queue of older versions was declared with priorities.
            priorities: self.record.priorities || self.record.queue.is_none(),
        }
    }

    /// Checks `input` against the versions a job can run on now: the live ones (a live
    /// worker serves them), or the newest alone when none is live. Valid: the digests it met
    /// (and `input` normalised by the newest of them); invalid: the newest schema's errors.
    pub fn check(&self, input: &mut Value) -> Result<Checked, Vec<FieldError>> {
        let live: Vec<&Version> = self.versions.iter().filter(|v| v.workers > 0).collect();
        let candidates: Vec<&Version> = if live.is_empty() {
            self.versions.iter().take(1).collect()
        } else {
            live
        };
        let mut met = candidates
            .iter()
            .filter(|v| v.schema.validate(input).is_empty());
        let Some(first) = met.next() else {
            // The schema clients are shown, unless no live worker serves it.
            let shown = candidates.first().map_or(&self.schema, |v| &v.schema);
            return Err(shown.validate(input));
        };
        let also = met.map(|v| v.schema_digest.clone()).collect();
        first.schema.normalize(input);
        Ok(Checked {
            digest: first.schema_digest.clone(),
            also,
        })
    }
}

/// The types known at one moment.
#[derive(Debug, Default)]
pub struct Catalog {
    types: BTreeMap<String, Arc<KnownType>>,
    /// Changes whenever what clients see of the types changes (names, schemas, descriptions,
    /// examples, priorities), not with worker counts: the OpenAPI document follows it.
    pub generation: u64,
    /// Whether the registry was read at least once.
    pub loaded: bool,
}

impl Catalog {
    pub fn get(&self, name: &str) -> Option<&Arc<KnownType>> {
        self.types.get(name)
    }

    pub fn types(&self) -> impl Iterator<Item = &Arc<KnownType>> {
        self.types.values()
    }

    pub fn is_empty(&self) -> bool {
        self.types.is_empty()
    }

    /// The work queues of the known types, each once, sorted (`legacy`: the single queue of
    /// registrations from before queues per type).
    pub fn queues(&self, legacy: &str) -> Vec<String> {
        let mut queues: Vec<String> = self.types().map(|t| t.queue(legacy).to_owned()).collect();
        queues.sort();
        queues.dedup();
        queues
    }

    /// `echo, hash, …`, for error details.
    pub fn names(&self) -> String {
        self.types.keys().cloned().collect::<Vec<_>>().join(", ")
    }

    /// What `/readyz` says about the types (informational: a type without a live worker does
    /// not make the facade unready, its jobs wait in the queue).
    pub fn readiness(&self) -> Value {
        let types: serde_json::Map<String, Value> = self
            .types()
            .map(|t| {
                let about = json!({
                    "workers": t.workers,
                    "state": t.state(),
                    "versions": t.versions.len(),
                });
                (t.name().to_owned(), about)
            })
            .collect();
        json!({
            "registry": if !self.loaded { "unread" } else if self.is_empty() { "empty" } else { "loaded" },
            "types": types,
        })
    }

    /// Builds the catalog from the registry's records and the live workers' fleet records.
    /// `previous` lends its compiled schemas (by digest); `cutoff_ms` drops records not
    /// refreshed since.
    fn build(
        records: Vec<(String, String)>,
        live: &[LiveWorker],
        cutoff_ms: i64,
        previous: &Catalog,
        compiled: &mut HashMap<String, Option<Arc<InputSchema>>>,
    ) -> Catalog {
        // Every registration of a type, newest first (two versions during a deploy).
        let mut by_name: BTreeMap<String, Vec<JobTypeRecord>> = BTreeMap::new();
        for (field, json) in records {
            let Ok(record) = serde_json::from_str::<JobTypeRecord>(&json) else {
                continue;
            };
            if record.field() != field || !valid_name(&record.name) {
                continue;
            }
            if record.refreshed_at_ms < cutoff_ms {
                continue;
            }
            by_name.entry(record.name.clone()).or_default().push(record);
        }
        let mut types = BTreeMap::new();
        for (name, mut records) in by_name {
            records.sort_by_key(|r| std::cmp::Reverse((r.registered_at_ms, r.refreshed_at_ms)));
            let mut versions = Vec::new();
            let mut newest = None;
            for record in records {
                let schema = compiled
                    .entry(record.schema_digest.clone())
                    .or_insert_with(|| match InputSchema::compile(&record.input_schema) {
                        Ok(schema) => Some(Arc::new(schema)),
                        Err(e) => {
                            tracing::warn!(job_type = %name, error = %e, "a registered input schema does not compile; that version is not accepted");
                            None
                        }
                    })
                    .clone();
                let Some(schema) = schema else { continue };
                let workers = live
                    .iter()
                    .filter(|w| w.schema_digests.contains(&record.schema_digest))
                    .count();
                versions.push(Version {
                    schema_digest: record.schema_digest.clone(),
                    worker_version: record.worker_version.clone(),
                    schema: schema.clone(),
                    workers,
                });
                if newest.is_none() {
                    newest = Some((record, schema));
                }
            }
            let Some((record, schema)) = newest else {
                continue;
            };
            let workers = live.iter().filter(|w| w.types.contains(&name)).count();
            types.insert(
                name,
                Arc::new(KnownType {
                    record,
                    schema,
                    workers,
                    versions,
                }),
            );
        }
        let mut catalog = Catalog {
            types,
            generation: previous.generation,
            loaded: true,
        };
        if catalog.signature() != previous.signature() || !previous.loaded {
            catalog.generation = previous.generation + 1;
        }
        catalog
    }

    /// A hash of what clients see of the types.
    fn signature(&self) -> u64 {
        let mut hasher = DefaultHasher::new();
        for t in self.types() {
            let r = &t.record;
            (&r.name, &r.schema_digest, &r.description, r.priorities).hash(&mut hasher);
            r.example.to_string().hash(&mut hasher);
        }
        hasher.finish()
    }
}

/// The facade's handle on the catalog (cheap to clone).
#[derive(Clone, Default)]
pub struct JobTypes {
    current: Arc<RwLock<Arc<Catalog>>>,
}

impl JobTypes {
    /// The catalog now.
    pub fn current(&self) -> Arc<Catalog> {
        match self.current.read() {
            Ok(current) => current.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set(&self, catalog: Catalog) {
        let catalog = Arc::new(catalog);
        match self.current.write() {
            Ok(mut current) => *current = catalog,
            Err(poisoned) => *poisoned.into_inner() = catalog,
        }
    }

    /// Reads the registry once (waiting up to [`FIRST_LOAD_PATIENCE`], so a facade that
    /// starts beside running workers accepts their types from its first request), then keeps
    /// it fresh on the I/O runtime every [`REFRESH`].
    pub fn start(store: StatusStore, io: &Io, retention_seconds: u64) -> JobTypes {
        let job_types = JobTypes::default();
        let (first, loaded) = std::sync::mpsc::channel();
        let refresher = job_types.clone();
        io.spawn(async move {
            let mut compiled = HashMap::new();
            let mut ticks = tokio::time::interval(REFRESH);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut failing = false;
            loop {
                ticks.tick().await;
                match refresher.refresh(&store, retention_seconds, &mut compiled).await {
                    Ok(()) => failing = false,
                    // Logged once per outage: the last catalog stays in force meanwhile.
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!(error = %e, "cannot read the job type registry; keeping the last one read");
                    }
                    Err(_) => {}
                }
                let _ = first.send(());
            }
        });
        let _ = loaded.recv_timeout(FIRST_LOAD_PATIENCE);
        job_types
    }

    async fn refresh(
        &self,
        store: &StatusStore,
        retention_seconds: u64,
        compiled: &mut HashMap<String, Option<Arc<InputSchema>>>,
    ) -> Result<(), StoreError> {
        let records = store.job_type_records().await?;
        let live: Vec<LiveWorker> = store
            .live_workers()
            .await?
            .into_iter()
            .map(|w| LiveWorker {
                types: w.job_types,
                schema_digests: w.schema_digests,
            })
            .collect();
        let cutoff_ms = chrono::Utc::now().timestamp_millis()
            - (retention_seconds.saturating_mul(1000)).min(i64::MAX as u64) as i64;
        let previous = self.current();
        let catalog = Catalog::build(records, &live, cutoff_ms, &previous, compiled);
        // Schemas of types gone from the registry need not stay compiled.
        compiled.retain(|digest, _| {
            catalog
                .types()
                .any(|t| t.versions.iter().any(|v| &v.schema_digest == digest))
        });
        self.set(catalog);
        Ok(())
    }
}

/// A registry record as a worker writes it: (field, JSON).
#[cfg(test)]
pub(crate) fn test_record(
    name: &str,
    schema: Value,
    priorities: bool,
    registered_at_ms: i64,
    refreshed_at_ms: i64,
) -> (String, String) {
    let record = JobTypeRecord {
        name: name.into(),
        description: format!("The {name} type."),
        schema_digest: shared::job_types::schema_digest(&schema),
        input_schema: schema,
        example: Value::Null,
        limits: shared::configuration::Limits {
            max_attempts: 3,
            max_run_seconds: 30,
        },
        priorities,
        queue: Some(format!("jobs.{name}")),
        worker_version: "test".into(),
        registered_at_ms,
        refreshed_at_ms,
    };
    (
        record.field(),
        serde_json::to_string(&record).unwrap_or_default(),
    )
}

#[cfg(test)]
impl Catalog {
    /// A catalog of `(name, schema, priorities)`, each served by one live worker.
    pub(crate) fn for_tests(
        types: impl IntoIterator<Item = (&'static str, Value, bool)>,
    ) -> Catalog {
        let types: Vec<_> = types.into_iter().collect();
        let live = vec![LiveWorker {
            types: types.iter().map(|(name, ..)| name.to_string()).collect(),
            schema_digests: types
                .iter()
                .map(|(_, schema, _)| shared::job_types::schema_digest(schema))
                .collect(),
        }];
        let records = types
            .into_iter()
            .map(|(name, schema, priorities)| test_record(name, schema, priorities, 1, 1))
            .collect();
        Catalog::build(records, &live, 0, &Catalog::default(), &mut HashMap::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, schema: Value, registered: i64, refreshed: i64) -> (String, String) {
        test_record(name, schema, false, registered, refreshed)
    }

    #[test]
    fn the_newest_registration_within_retention_wins() {
        let old = json!({"type": "integer"});
        let new = json!({"type": "string"});
        let records = vec![
            record("a", old, 1, 100),
            record("a", new.clone(), 2, 100),
            record("gone", json!(true), 1, 5),
            record("bad", json!({"type": 5}), 1, 100),
            ("x@y".into(), "not json".into()),
        ];
        let worker = |types: &[&str]| LiveWorker {
            types: types.iter().map(|t| t.to_string()).collect(),
            schema_digests: vec![],
        };
        let live = vec![worker(&["a"]), worker(&["a", "b"])];
        let mut compiled = HashMap::new();
        let empty = Catalog::default();
        let catalog = Catalog::build(records.clone(), &live, 50, &empty, &mut compiled);
        assert_eq!(catalog.names(), "a");
        let a = catalog.get("a").unwrap();
        assert_eq!(a.schema.schema(), &new);
        assert_eq!((a.workers, a.state()), (2, "served"));
        assert_eq!(catalog.generation, 1);
        // Same types again (worker counts aside): same generation, schemas reused.
        let again = Catalog::build(records, &[], 50, &catalog, &mut compiled);
        assert_eq!(again.generation, 1);
        assert_eq!(again.get("a").unwrap().state(), "no-live-worker");
        assert!(Arc::ptr_eq(&again.get("a").unwrap().schema, &a.schema));
        assert_eq!(again.readiness()["types"]["a"]["workers"], 0);
        // A new type: a new generation.
        let more = Catalog::build(
            vec![
                record("a", json!({"type": "string"}), 2, 100),
                record("c", json!(true), 1, 100),
            ],
            &[],
            50,
            &again,
            &mut compiled,
        );
        assert_eq!((more.names().as_str(), more.generation), ("a, c", 2));
        assert!(more.get("c").unwrap().input_optional());
        assert!(!more.get("a").unwrap().input_optional());
    }

    #[test]
    fn an_input_is_accepted_by_any_live_version() {
        // v1 wants a name; v2 (newer) wants a name and a greeting.
        let v1 = json!({"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"], "additionalProperties": false});
        let v2 = json!({"type": "object", "properties": {"name": {"type": "string"}, "greeting": {"type": "string"}}, "required": ["name", "greeting"], "additionalProperties": false});
        let (d1, d2) = (
            shared::job_types::schema_digest(&v1),
            shared::job_types::schema_digest(&v2),
        );
        let records = vec![record("g", v1, 1, 100), record("g", v2, 2, 100)];
        let worker = |digest: &str| LiveWorker {
            types: vec!["g".into()],
            schema_digests: vec![digest.to_owned()],
        };
        let both = [worker(&d1), worker(&d2)];
        let catalog = Catalog::build(
            records.clone(),
            &both,
            0,
            &Catalog::default(),
            &mut HashMap::new(),
        );
        let g = catalog.get("g").unwrap();
        assert_eq!(g.record.schema_digest, d2, "the newest is described");
        assert_eq!(g.versions.len(), 2);
        let old_shape = g.check(&mut json!({"name": "a"})).unwrap();
        assert_eq!(
            (old_shape.digest.as_str(), old_shape.also.len()),
            (d1.as_str(), 0)
        );
        let new_shape = g
            .check(&mut json!({"name": "a", "greeting": "hi"}))
            .unwrap();
        assert_eq!(new_shape.digest, d2);
        let errors = g.check(&mut json!({"nope": 1})).unwrap_err();
        assert!(
            errors.iter().any(|e| e.field == "input.greeting"),
            "{errors:?}"
        );

        // Only v2 live: the old shape is refused (no worker could run it).
        let catalog = Catalog::build(
            records.clone(),
            &[worker(&d2)],
            0,
            &Catalog::default(),
            &mut HashMap::new(),
        );
        assert!(catalog
            .get("g")
            .unwrap()
            .check(&mut json!({"name": "a"}))
            .is_err());
        // None live: the newest decides (its jobs wait for a worker).
        let catalog = Catalog::build(records, &[], 0, &Catalog::default(), &mut HashMap::new());
        let g = catalog.get("g").unwrap();
        assert!(g.check(&mut json!({"name": "a"})).is_err());
        assert!(g.check(&mut json!({"name": "a", "greeting": "x"})).is_ok());
    }
}
