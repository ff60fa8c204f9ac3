//! Builds a worker from its settings and runs it until a shutdown signal.

use std::sync::Arc;
use std::time::Duration;

use shared::Settings;
use tokio::sync::watch;

use crate::cancel::Cancels;
use crate::consumer::Consumer;
use crate::job_store::{JobStore, StoreError};
use crate::jobs::Registry;
use crate::process::Processor;

/// A name for this worker process: host, pid and a random suffix.
pub fn worker_id() -> String {
    let host = crate::fleet::host_name();
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..6];
    format!("{host}-{}-{suffix}", std::process::id())
}

/// Runs the worker with `registry` until `shutdown` turns true.
pub async fn run(
    settings: Settings,
    registry: Registry,
    shutdown: watch::Receiver<bool>,
) -> Result<(), StoreError> {
    let id = worker_id();
    tracing::info!(
        job_types = %registry.names().collect::<Vec<_>>().join(","),
        "serving these job types"
    );
    let store = JobStore::new(&settings.redis, &settings.jobs, id.clone())?;
    // Says at once when Redis cannot be reached (a TLS failure as an error); jobs would only
    // meet it when they run.
    tokio::spawn({
        let redis = settings.redis.clone();
        async move { shared::redis_conn::log_reachability(&redis).await }
    });
    let webhooks = crate::webhook::Webhooks::new(&settings);
    let processor = Processor {
        store,
        registry,
        amqp: Arc::new(settings.amqp.clone()),
        jobs: Arc::new(settings.jobs.clone()),
        progress_interval: Duration::from_millis(settings.worker.progress_interval_ms),
        lease: Duration::from_secs(settings.worker.lease_seconds),
        leased: Default::default(),
        cancels: Cancels::default(),
        webhooks,
        live_types: crate::handoff::LiveTypes::new(&settings),
    };
    tokio::spawn(processor.cancels.clone().listen(
        settings.redis.clone(),
        processor.store.cancel_channel(),
        shutdown.clone(),
    ));
    crate::metrics::init();
    if settings.worker.metrics_port != 0 {
        let address = format!(
            "{}:{}",
            settings.worker.metrics_host, settings.worker.metrics_port
        );
        tokio::spawn(crate::metrics::serve(address, shutdown.clone()));
    }
    // Registers the job types with the facades, then keeps the registration fresh.
    let fleet = crate::fleet::Fleet::start(&settings, &id, &processor.registry, shutdown.clone());
    tracing::info!(worker_id = %id, "worker starting");
    Consumer {
        nodes: shared::amqp::Nodes::new(&settings.amqp),
        amqp: settings.amqp,
        worker: settings.worker,
        webhooks: settings.webhooks,
        processor,
        consumer_tag: id,
    }
    .run(shutdown)
    .await;
    // The drain may have ended with runs still going (or left some running in the background
    // after a connection loss); the process exits without dropping them, so the programs of
    // `command` jobs would outlive it.
    crate::declared::command::kill_all();
    // Leave the fleet registry before exiting (its jobs and deliveries are drained, or back in
    // their queues, by now).
    fleet.stop().await;
    tracing::info!("worker stopped");
    Ok(())
}

/// Turns SIGINT or SIGTERM into a `true` on the returned channel.
pub fn shutdown_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received");
        let _ = tx.send(true);
    });
    rx
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}
