//! Logging and tracing set-up shared by both binaries: `tracing` to stdout (JSON or
//! human-readable) and, when an OTLP endpoint is configured, the spans exported to an
//! OpenTelemetry collector over OTLP/HTTP (protobuf).
//!
//! One trace per job: the facade's `POST /v1/jobs` span continues the client's `traceparent`
//! (or starts a trace), its Redis and publish spans are its children, the `traceparent` in the
//! AMQP message names the POST span, and the worker's `job` span (and its Redis writes) is a
//! child of that. [`continue_trace`] is the one place both sides join a span to the trace.
//!
//! Configuration: `[telemetry] otlp_endpoint` (the collector's base URL, e.g.
//! `http://otel-collector:4318`; `/v1/traces` is appended); when empty, the standard
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT` variables turn export on.
//! The SDK's own variables apply too (`OTEL_BSP_SCHEDULE_DELAY`, `OTEL_EXPORTER_OTLP_HEADERS`,
//! `OTEL_RESOURCE_ATTRIBUTES`, …).

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry::Context;
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_otlp::{SpanExporter, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use serde::Deserialize;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::configuration::{LogFormat, LogSettings};
use crate::trace::TraceContext;

/// `[telemetry]`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TelemetrySettings {
    /// Base URL of an OTLP/HTTP collector; empty: the OTEL_* variables decide.
    #[serde(default)]
    pub otlp_endpoint: String,
}

/// Whether spans are exported (so [`continue_trace`] can take ids from them).
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported to a collector. Spans that exist only for the exported trace
/// (the submit's server span, client spans around a Redis command or a publish) are made only
/// then ([`export_span!`](crate::export_span)): without a collector nothing shows them, and
/// each one costs a slab entry and a formatted copy of its fields in the log layer on every
/// job.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// `tracing::info_span!(...)` when spans are exported ([`exporting`]), `Span::none()`
/// otherwise: for spans that exist for the exported trace alone.
#[macro_export]
macro_rules! export_span {
    ($($arg:tt)+) => {
        if $crate::telemetry::exporting() {
            ::tracing::info_span!($($arg)+)
        } else {
            ::tracing::Span::none()
        }
    };
}

/// Keeps the exporter alive; [`Telemetry::shutdown`] (or dropping it) flushes the spans not yet
/// sent.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    /// Where the exporter's HTTP requests run (the SDK's batch thread has no runtime).
    runtime: Option<tokio::runtime::Runtime>,
}

impl Telemetry {
    /// Sends the spans still buffered (bounded by the SDK's export timeout) and stops export.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(provider) = self.provider.take() {
            EXPORTING.store(false, Ordering::Relaxed);
            if let Err(e) = provider.shutdown() {
                eprintln!("could not flush the trace exporter: {e}");
            }
        }
        if let Some(runtime) = self.runtime.take() {
            // May run inside another runtime (at the end of main): don't block there.
            runtime.shutdown_background();
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Installs the global subscriber (logs only, as before; kept for tools and tests).
pub fn init(settings: &LogSettings) {
    let _ = install(settings, None);
}

/// Installs the global subscriber for `service` (`api`, `worker`): logs, and span export when
/// `telemetry` (or the environment) names a collector. `RUST_LOG`, when set, wins over the
/// configured level. Keep the returned value until the end of `main`.
pub fn init_for(service: &str, log: &LogSettings, telemetry: &TelemetrySettings) -> Telemetry {
    let (provider, runtime) = match exporter(service, telemetry) {
        Ok(Some((provider, runtime))) => (Some(provider), Some(runtime)),
        Ok(None) => (None, None),
        Err(e) => {
            eprintln!("OpenTelemetry export disabled: {e}");
            (None, None)
        }
    };
    let installed = install(log, provider.as_ref().map(|p| p.tracer(service.to_owned())));
    if provider.is_some() && installed {
        EXPORTING.store(true, Ordering::Relaxed);
        tracing::info!(service, "exporting traces over OTLP/HTTP");
    }
    Telemetry { provider, runtime }
}

/// Builds the subscriber; false if one was installed already (as in tests: the first stays).
fn install(settings: &LogSettings, tracer: Option<opentelemetry_sdk::trace::Tracer>) -> bool {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = match settings.format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .boxed(),
        // Colours only on a terminal: in a file or a log collector escape codes are noise (and
        // cost a few per cent of the facade's CPU per request).
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::stdout().is_terminal())
            .boxed(),
    };
    let otel = tracer.map(|t| tracing_opentelemetry::layer().with_tracer(t));
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init()
        .is_ok()
}

#[derive(Debug, thiserror::Error)]
enum ExporterError {
    #[error("{0}")]
    Build(#[from] opentelemetry_otlp::ExporterBuildError),
    #[error("cannot start the exporter's runtime: {0}")]
    Runtime(#[from] std::io::Error),
    #[error("cannot build the exporter's HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// The endpoint to export to, if any: the configured base URL (with `/v1/traces` appended), or
/// `Some("")` when only the OTEL_* variables name one (the exporter reads them itself).
fn endpoint(settings: &TelemetrySettings) -> Option<String> {
    let configured = settings.otlp_endpoint.trim().trim_end_matches('/');
    if !configured.is_empty() {
        return Some(if configured.ends_with("/v1/traces") {
            configured.to_owned()
        } else {
            format!("{configured}/v1/traces")
        });
    }
    let from_env = [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .iter()
    .any(|v| std::env::var(v).is_ok_and(|s| !s.trim().is_empty()));
    from_env.then(String::new)
}

fn exporter(
    service: &str,
    settings: &TelemetrySettings,
) -> Result<Option<(SdkTracerProvider, tokio::runtime::Runtime)>, ExporterError> {
    let Some(endpoint) = endpoint(settings) else {
        return Ok(None);
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("otlp")
        .enable_all()
        .build()?;
    // reqwest is built without a default crypto provider (https collectors): use ring, as lapin
    // does. An error means a provider is installed already, which is as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = Sender {
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?,
        runtime: runtime.handle().clone(),
    };
    let mut builder = SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_http_client(client);
    if !endpoint.is_empty() {
        builder = builder.with_endpoint(endpoint);
    }
    let exporter = builder.build()?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name(service.to_owned())
                .build(),
        )
        .build();
    Ok(Some((provider, runtime)))
}

/// The exporter's HTTP client: reqwest, run on the telemetry runtime (the SDK's batch thread
/// polls the export with a plain executor, where reqwest cannot run itself).
#[derive(Debug)]
struct Sender {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl HttpClient for Sender {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, HttpError> {
        let client = self.client.clone();
        self.runtime
            .spawn(async move {
                let request = reqwest::Request::try_from(request)?;
                let response = client.execute(request).await?.error_for_status()?;
                let status = response.status();
                let body = response.bytes().await?;
                Ok::<_, HttpError>(http::Response::builder().status(status).body(body)?)
            })
            .await?
    }
}

/// Joins `span` to the trace `parent` (a `traceparent` received from a client or in a message;
/// none: a new trace) and returns the context to hand on to what follows. When spans are
/// exported that is the span's own context, so the next hop's spans become its children;
/// otherwise a new span id in the same trace (log lines still share the trace id).
///
/// Call it right after creating the span, before entering it.
pub fn continue_trace(span: &tracing::Span, parent: Option<TraceContext>) -> TraceContext {
    if exporting() {
        if let Some(parent) = &parent {
            let (trace_id, span_id, flags) = parent.ids();
            let remote = SpanContext::new(
                TraceId::from_bytes(trace_id.to_be_bytes()),
                SpanId::from_bytes(span_id.to_be_bytes()),
                TraceFlags::new(flags),
                true,
                TraceState::default(),
            );
            let _ = span.set_parent(Context::new().with_remote_span_context(remote));
        }
        let context = span.context();
        let own = context.span().span_context().clone();
        if own.is_valid() {
            let ids = TraceContext::from_ids(
                u128::from_be_bytes(own.trace_id().to_bytes()),
                u64::from_be_bytes(own.span_id().to_bytes()),
                own.trace_flags().to_u8(),
            );
            if let Some(ids) = ids {
                return ids;
            }
        }
    }
    parent
        .map(|p| p.child())
        .unwrap_or_else(TraceContext::new_root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_gets_the_traces_path_once() {
        let with = |e: &str| {
            endpoint(&TelemetrySettings {
                otlp_endpoint: e.into(),
            })
        };
        assert_eq!(
            with("http://c:4318").as_deref(),
            Some("http://c:4318/v1/traces")
        );
        assert_eq!(
            with("http://c:4318/").as_deref(),
            Some("http://c:4318/v1/traces")
        );
        assert_eq!(
            with("http://c:4318/v1/traces").as_deref(),
            Some("http://c:4318/v1/traces")
        );
    }

    #[test]
    fn without_export_the_trace_goes_on_with_a_new_span() {
        let parent =
            TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        let next = continue_trace(&tracing::Span::none(), Some(parent));
        assert_eq!(next.trace_id(), parent.trace_id());
        assert_ne!(next, parent);
    }
}
