//! Prometheus metrics of the facade, served at `GET /metrics` in the text format. Names follow
//! Prometheus conventions (base units, `_total` counters, `_seconds` histograms); route labels
//! are the route *patterns* (`/v1/jobs/{id}`), never raw paths, so cardinality stays bounded.

use std::sync::LazyLock;

use prometheus::{
    register_histogram, register_histogram_vec, register_int_counter_vec, register_int_gauge,
    Encoder, Histogram, HistogramVec, IntCounterVec, IntGauge, TextEncoder,
};

/// Latency buckets from 0.5 ms to 10 s.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register_int_counter_vec!(name, help, labels).expect("metric names are unique and valid")
}

fn histogram(name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    register_histogram_vec!(name, help, labels, BUCKETS.to_vec())
        .expect("metric names are unique and valid")
}

fn gauge(name: &str, help: &str) -> IntGauge {
    register_int_gauge!(name, help).expect("metric names are unique and valid")
}

pub static HTTP_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "arr_http_requests_total",
        "HTTP requests answered, by route pattern, method and status code.",
        &["route", "method", "status"],
    )
});

pub static POLL_CACHE: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "arr_poll_cache_total",
        "Status polls answered from the facade's poll cache (hit) or read from Redis (miss).",
        &["result"],
    )
});

pub static HTTP_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram(
        "arr_http_request_duration_seconds",
        "Time to answer an HTTP request (long-polls included), by route pattern and method.",
        &["route", "method"],
    )
});

pub static JOBS_SUBMITTED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "arr_jobs_submitted_total",
        "Jobs accepted (202) by job type.",
        &["type"],
    )
});

pub static PUBLISH_CONFIRM: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "arr_publish_confirm_duration_seconds",
        "Time from publishing a job to the broker's confirm.",
        BUCKETS.to_vec()
    )
    .expect("metric names are unique and valid")
});

pub static REDIS_DURATION: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "arr_redis_request_duration_seconds",
        "Time of one Redis operation of the facade (a command, pipeline or script).",
        BUCKETS.to_vec()
    )
    .expect("metric names are unique and valid")
});

pub static QUEUE_MESSAGES: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "arr_queue_messages",
        "Messages ready in the job types' work queues, summed (read at scrape time).",
    )
});

pub static QUEUE_CONSUMERS: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "arr_queue_consumers",
        "Consumers (worker connections) on the job types' work queues, summed (read at scrape time).",
    )
});

pub static OPEN_WAITS: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "arr_open_waits",
        "Long-polls and event streams waiting for a job's changes right now.",
    )
});

/// Every metric of the facade, so that all of them are registered (and shown at 0) from the
/// first scrape.
pub fn init() {
    LazyLock::force(&HTTP_REQUESTS);
    LazyLock::force(&HTTP_DURATION);
    LazyLock::force(&JOBS_SUBMITTED);
    LazyLock::force(&PUBLISH_CONFIRM);
    LazyLock::force(&REDIS_DURATION);
    LazyLock::force(&QUEUE_MESSAGES);
    LazyLock::force(&QUEUE_CONSUMERS);
    LazyLock::force(&OPEN_WAITS);
}

/// The text exposition of every registered metric.
pub fn render() -> Vec<u8> {
    let mut out = Vec::new();
    // Encoding into a Vec cannot fail for the text format.
    let _ = TextEncoder::new().encode(&prometheus::gather(), &mut out);
    out
}
