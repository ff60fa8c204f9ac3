//! The job types this facade accepts, learned from the workers: each worker registers the types
//! it serves in Redis (`{prefix}:job-types`, see `shared::job_types`), and a background task
//! here reads that registry and the live workers every [`REFRESH`], compiles each new schema
//! once and swaps in a new [`Catalog`]. A submission reads the catalog in memory: no Redis
//! round trip per request, and a new type is accepted within a second or two of its worker's
//! start, with no restart of the facade.
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
use shared::job_types::{valid_name, InputSchema, JobTypeRecord};

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
    pub record: JobTypeRecord,
    pub schema: Arc<InputSchema>,
    /// Live workers that serve it.
    pub workers: usize,
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
                let about = json!({"workers": t.workers, "state": t.state()});
                (t.name().to_owned(), about)
            })
            .collect();
        json!({
            "registry": if !self.loaded { "unread" } else if self.is_empty() { "empty" } else { "loaded" },
            "types": types,
        })
    }

    /// Builds the catalog from the registry's records and the live workers' type lists.
    /// `previous` lends its compiled schemas (by digest); `cutoff_ms` drops records not
    /// refreshed since.
    fn build(
        records: Vec<(String, String)>,
        live: &[Vec<String>],
        cutoff_ms: i64,
        previous: &Catalog,
        compiled: &mut HashMap<String, Option<Arc<InputSchema>>>,
    ) -> Catalog {
        // Of two registrations of one type (two versions during a deploy), the newer worker's.
        let mut chosen: BTreeMap<String, JobTypeRecord> = BTreeMap::new();
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
            let newer = chosen.get(&record.name).is_none_or(|c| {
                (record.registered_at_ms, record.refreshed_at_ms)
                    > (c.registered_at_ms, c.refreshed_at_ms)
            });
            if newer {
                chosen.insert(record.name.clone(), record);
            }
        }
        let mut types = BTreeMap::new();
        for (name, record) in chosen {
            let schema = compiled
                .entry(record.schema_digest.clone())
                .or_insert_with(|| match InputSchema::compile(&record.input_schema) {
                    Ok(schema) => Some(Arc::new(schema)),
                    Err(e) => {
                        tracing::warn!(job_type = %name, error = %e, "a registered input schema does not compile; the type is not accepted");
                        None
                    }
                })
                .clone();
            let Some(schema) = schema else { continue };
            let workers = live.iter().filter(|types| types.contains(&name)).count();
            types.insert(
                name,
                Arc::new(KnownType {
                    record,
                    schema,
                    workers,
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
        let live: Vec<Vec<String>> = store
            .live_workers()
            .await?
            .into_iter()
            .map(|w| w.job_types)
            .collect();
        let cutoff_ms = chrono::Utc::now().timestamp_millis()
            - (retention_seconds.saturating_mul(1000)).min(i64::MAX as u64) as i64;
        let previous = self.current();
        let catalog = Catalog::build(records, &live, cutoff_ms, &previous, compiled);
        // Schemas of types gone from the registry need not stay compiled.
        compiled.retain(|digest, _| catalog.types().any(|t| &t.record.schema_digest == digest));
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
        let live = vec![types.iter().map(|(name, ..)| name.to_string()).collect()];
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
        let live = vec![vec!["a".to_owned()], vec!["a".to_owned(), "b".to_owned()]];
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
}
