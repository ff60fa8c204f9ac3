//! Prometheus metrics of a worker, served in the text format on `worker.metrics_port`
//! (`GET /metrics`; 0 turns it off). Names follow Prometheus conventions (base units, `_total`
//! counters, `_seconds` histograms); labels are job types (a fixed set) and outcome kinds.

use std::sync::LazyLock;

use prometheus::{
    register_histogram, register_histogram_vec, register_int_counter_vec, register_int_gauge,
    Encoder, Histogram, HistogramVec, IntCounterVec, IntGauge, TextEncoder,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0, 1800.0,
];

fn jobs(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register_int_counter_vec!(name, help, labels).expect("metric names are unique and valid")
}

pub static STARTED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    jobs(
        "arr_jobs_started_total",
        "Job runs started, by type.",
        &["type"],
    )
});
pub static SUCCEEDED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    jobs(
        "arr_jobs_succeeded_total",
        "Jobs that succeeded, by type.",
        &["type"],
    )
});
pub static FAILED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    jobs(
        "arr_jobs_failed_total",
        "Jobs that failed, by type and error kind.",
        &["type", "kind"],
    )
});
pub static CANCELED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    jobs(
        "arr_jobs_canceled_total",
        "Running jobs canceled, by type.",
        &["type"],
    )
});
pub static RETRIED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    jobs(
        "arr_jobs_retried_total",
        "Failed attempts scheduled for a retry, by type.",
        &["type"],
    )
});
pub static DEAD_LETTERED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    jobs(
        "arr_jobs_dead_lettered_total",
        "Messages sent to the dead-letter queue, by type (`unknown` when unreadable).",
        &["type"],
    )
});
pub static HANDED_OFF: LazyLock<IntCounterVec> = LazyLock::new(|| {
    jobs(
        "arr_jobs_handed_off_total",
        "Jobs of a type another worker serves, passed back to the queue, by type.",
        &["type"],
    )
});
pub static RUN_TIME: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "arr_job_run_duration_seconds",
        "Run time of one attempt of a job, by type.",
        &["type"],
        BUCKETS.to_vec()
    )
    .expect("metric names are unique and valid")
});
pub static IN_FLIGHT: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!("arr_jobs_in_flight", "Jobs running in this worker now.")
        .expect("metric names are unique and valid")
});
pub static REDIS_DURATION: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "arr_redis_request_duration_seconds",
        "Time of one state write of the worker (a Redis script).",
        BUCKETS.to_vec()
    )
    .expect("metric names are unique and valid")
});

/// Registers every metric so each shows from the first scrape.
pub fn init() {
    LazyLock::force(&STARTED);
    LazyLock::force(&SUCCEEDED);
    LazyLock::force(&FAILED);
    LazyLock::force(&CANCELED);
    LazyLock::force(&RETRIED);
    LazyLock::force(&DEAD_LETTERED);
    LazyLock::force(&HANDED_OFF);
    LazyLock::force(&RUN_TIME);
    LazyLock::force(&IN_FLIGHT);
    LazyLock::force(&REDIS_DURATION);
}

fn render() -> Vec<u8> {
    let mut out = Vec::new();
    let _ = TextEncoder::new().encode(&prometheus::gather(), &mut out);
    out
}

/// Serves `GET /metrics` on `address` until `shutdown`. A port that cannot be bound is logged,
/// not fatal: a worker without metrics still works.
pub async fn serve(address: String, mut shutdown: watch::Receiver<bool>) {
    let listener = match TcpListener::bind(&address).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(%address, error = %e, "cannot serve metrics");
            return;
        }
    };
    tracing::info!(%address, "serving metrics");
    loop {
        let (mut socket, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(_) => continue,
            },
            _ = shutdown.changed() => return,
        };
        tokio::spawn(async move {
            // One small request per connection: read its head, answer, close.
            let mut head = [0u8; 2048];
            let n = match tokio::time::timeout(
                std::time::Duration::from_secs(5),
                socket.read(&mut head),
            )
            .await
            {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let request = String::from_utf8_lossy(&head[..n]);
            let response = if request.starts_with("GET /metrics ") {
                let body = render();
                let mut r = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                )
                .into_bytes();
                r.extend_from_slice(&body);
                r
            } else {
                b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_vec()
            };
            let _ = socket.write_all(&response).await;
            let _ = socket.shutdown().await;
        });
    }
}
