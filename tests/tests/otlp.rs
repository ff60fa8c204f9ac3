//! OpenTelemetry export: with `[telemetry] otlp_endpoint` set, the facade and the worker send
//! their spans over OTLP/HTTP, and a job is one trace: the client's `traceparent` → the
//! facade's `POST /v1/jobs` span (with its Redis and publish spans) → the worker's job span →
//! its Redis writes. A fake collector here decodes what arrives.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e::{Stack, StackOptions};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A span as the collector received it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
}

/// A minimal OTLP/HTTP collector: accepts `POST /v1/traces` (protobuf), answers 200.
struct Collector {
    port: u16,
    spans: Arc<Mutex<Vec<Received>>>,
}

impl Collector {
    async fn start() -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let store = spans.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(serve(socket, store.clone()));
            }
        });
        Collector { port, spans }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn spans(&self) -> Vec<Received> {
        self.spans.lock().unwrap().clone()
    }

    /// Waits (up to `within`) until `check` finds what it looks for in the spans received.
    async fn wait_for<T>(&self, within: Duration, check: impl Fn(&[Received]) -> Option<T>) -> T {
        let deadline = Instant::now() + within;
        loop {
            let spans = self.spans();
            if let Some(found) = check(&spans) {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "not received within {within:?}; spans: {spans:#?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// One keep-alive connection: requests one after another, each answered with an empty 200.
async fn serve(mut socket: TcpStream, spans: Arc<Mutex<Vec<Received>>>) {
    let mut buffer = Vec::new();
    loop {
        let head_end = loop {
            if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break at;
            }
            let mut chunk = [0u8; 8192];
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .unwrap_or(0);
        let end = head_end + 4 + length;
        while buffer.len() < end {
            let mut chunk = [0u8; 8192];
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        }
        let body: Vec<u8> = buffer.drain(..end).skip(head_end + 4).collect();
        if head.starts_with("POST /v1/traces ") {
            let request = ExportTraceServiceRequest::decode(body.as_slice()).expect("protobuf");
            let mut received = spans.lock().unwrap();
            for resource in request.resource_spans {
                let service = resource
                    .resource
                    .iter()
                    .flat_map(|r| &r.attributes)
                    .find(|a| a.key == "service.name")
                    .and_then(|a| a.value.as_ref()?.value.as_ref())
                    .map(|v| match v {
                        AnyValue::StringValue(s) => s.clone(),
                        other => format!("{other:?}"),
                    })
                    .unwrap_or_default();
                for scope in resource.scope_spans {
                    for span in scope.spans {
                        received.push(Received {
                            service: service.clone(),
                            name: span.name,
                            trace_id: hex::encode(span.trace_id),
                            span_id: hex::encode(span.span_id),
                            parent: hex::encode(span.parent_span_id),
                        });
                    }
                }
            }
        }
        let answer =
            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
        if socket.write_all(answer).await.is_err() {
            return;
        }
    }
}

#[tokio::test]
async fn a_job_is_one_trace_from_the_post_to_the_workers_redis_writes() {
    let collector = Collector::start().await;
    let mut stack = Stack::start_with(
        "otlp",
        StackOptions::default()
            .env("APP__TELEMETRY__OTLP_ENDPOINT", collector.url())
            // The worker sends its spans within 200 ms…
            .env("OTEL_BSP_SCHEDULE_DELAY", 200)
            // …the facade only when it exits: what arrives from it was flushed at shutdown.
            .api_env("OTEL_BSP_SCHEDULE_DELAY", 600_000),
    )
    .await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let response = stack
        .http
        .post(stack.url("/v1/jobs"))
        .header("traceparent", format!("00-{trace}-{client_span}-01"))
        .json(&json!({"type": "sleep", "input": {"seconds": 0.2}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::ACCEPTED);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let done = stack.wait(&location, Duration::from_secs(60)).await;
    assert_eq!(done.status(), reqwest::StatusCode::OK);

    // The worker's job span, in the client's trace, and its Redis writes as its children.
    let (job_span, job_parent) = collector
        .wait_for(Duration::from_secs(15), |spans| {
            let job = spans
                .iter()
                .find(|s| s.service == "worker" && s.name == "job sleep" && s.trace_id == trace)?;
            let writes = spans
                .iter()
                .filter(|s| s.name == "redis transition" && s.parent == job.span_id)
                .count();
            // queued → running, progress, running → succeeded: at least two writes.
            (writes >= 2).then(|| (job.span_id.clone(), job.parent.clone()))
        })
        .await;
    assert!(
        collector.spans().iter().all(|s| s.service != "api"),
        "the facade exported before its shutdown"
    );

    // SIGTERM: the facade flushes its spans as it exits.
    stack.terminate_api();
    let exited = tokio::task::spawn_blocking(move || {
        let status = stack.terminate_api_wait().wait();
        (stack, status)
    })
    .await
    .unwrap();
    assert!(exited.1.unwrap().success());
    let post = collector
        .wait_for(Duration::from_secs(10), |spans| {
            spans
                .iter()
                .find(|s| s.service == "api" && s.name == "POST /v1/jobs")
                .cloned()
        })
        .await;
    assert_eq!(
        post.trace_id, trace,
        "the POST span left the client's trace"
    );
    assert_eq!(
        post.parent, client_span,
        "the POST span is not the client's child"
    );
    assert_eq!(
        job_parent, post.span_id,
        "the worker's job span is not a child of the POST span"
    );
    let spans = collector.spans();
    for name in ["redis", "amqp publish"] {
        assert!(
            spans
                .iter()
                .any(|s| s.service == "api" && s.name == name && s.parent == post.span_id),
            "no {name} span under the POST span: {spans:#?}"
        );
    }
    println!(
        "one trace {trace}: {} spans (POST {}, job {job_span})",
        spans.iter().filter(|s| s.trace_id == trace).count(),
        post.span_id
    );
}
