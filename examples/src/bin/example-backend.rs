//! `example-backend`: a small HTTP service of the kind a declared `http` job type puts behind
//! the facade (see examples/job-types.toml and README "Your service or script behind it"). It
//! knows nothing of queues or jobs: it is "your existing service".
//!
//! ```text
//! example-backend [--listen 127.0.0.1:9000]     (or EXAMPLE_BACKEND_LISTEN)
//!
//! POST   /render/{format}      synchronous: works ~2 s, then answers the rendering
//!                              (svg: image/svg+xml, json: application/json)
//! POST   /reports              asynchronous: 202 + Location /reports/{id} + Retry-After
//! GET    /reports/{id}         200 {"status":"running","progress":{…}} while it works,
//!                              then 303 -> /reports/{id}/result
//! GET    /reports/{id}/result  the report (text/csv)
//! DELETE /reports/{id}         204: the report stops
//! POST   /echo-delay?ms=50     answers the JSON body unchanged after `ms` milliseconds
//! GET    /healthz              200 ok
//! ```
//!
//! A bad input is a 400 `application/problem+json` (the worker fails such a job as "input
//! rejected", not retried). While rendering, a request that carries a `Progress-Url` header
//! (the worker adds one when the facade is configured for it) gets `{"percent", "message"}`
//! POSTed there, best effort: a progress report that fails is only logged.
//!
//! State (the reports) lives in memory: a restart forgets them, which is fine for an example.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::http::header;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use clap::Parser;
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Parser)]
#[command(about = "An example HTTP backend for declared `http` job types")]
struct Args {
    /// Address to listen on (host:port).
    #[arg(long, env = "EXAMPLE_BACKEND_LISTEN", default_value = "127.0.0.1:9000")]
    listen: String,
}

/// Longest delay an input may ask for (so a typo cannot park a request for hours).
const MAX_DELAY_MS: u64 = 60_000;

// ---------------------------------------------------------------------------------------------
// Problems (RFC 9457): what a bad input gets.

fn problem(status: actix_web::http::StatusCode, detail: impl Into<String>) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("application/problem+json")
        .json(json!({
            "type": "about:blank",
            "title": status.canonical_reason().unwrap_or("Error"),
            "status": status.as_u16(),
            "detail": detail.into(),
        }))
}

fn bad_request(detail: impl Into<String>) -> HttpResponse {
    problem(actix_web::http::StatusCode::BAD_REQUEST, detail)
}

fn not_found(what: &str) -> HttpResponse {
    problem(
        actix_web::http::StatusCode::NOT_FOUND,
        format!("no {what} of that id"),
    )
}

/// The body as `T`, or why not (for a 400).
fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("the body is not valid: {e}"))
}

/// A header's value as text, for the log.
fn header_text<'a>(req: &'a HttpRequest, name: &str) -> &'a str {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
}

/// One log line per job-carrying request: the headers the worker adds tell which job it is.
fn log_request(req: &HttpRequest) {
    eprintln!(
        "example-backend: {} {} job-id={} idempotency-key={} progress-url={}",
        req.method(),
        req.path(),
        header_text(req, "job-id"),
        header_text(req, "idempotency-key"),
        if req.headers().contains_key("progress-url") {
            "yes"
        } else {
            "no"
        },
    );
}

// ---------------------------------------------------------------------------------------------
// Progress reports to the facade: a plain HTTP/1.1 POST (no client library needed; the facade
// is reached over http:// in the quick starts). Best effort: an error is logged, never fatal.

async fn post_progress(url: &str, percent: u8, message: &str) {
    if let Err(e) = try_post_progress(url, percent, message).await {
        eprintln!("example-backend: progress report to {url} failed: {e}");
    }
}

async fn try_post_progress(url: &str, percent: u8, message: &str) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let rest = url
        .strip_prefix("http://")
        .ok_or("only http:// progress URLs are supported by this example")?;
    let (authority, path) = match rest.find('/') {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, "/"),
    };
    let body = json!({ "percent": percent, "message": message }).to_string();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(authority)
            .await
            .map_err(|e| e.to_string())?;
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut answer = Vec::new();
        stream
            .read_to_end(&mut answer)
            .await
            .map_err(|e| e.to_string())?;
        let status_line = String::from_utf8_lossy(&answer)
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned();
        if status_line
            .split(' ')
            .nth(1)
            .is_some_and(|c| c.starts_with('2'))
        {
            Ok(())
        } else {
            Err(format!("answered '{status_line}'"))
        }
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| "no answer within 5 s".to_owned())?
}

// ---------------------------------------------------------------------------------------------
// POST /render/{format}: the synchronous endpoint.

/// The job's whole input arrives as the body: other members (the job's `format`) are ignored.
#[derive(Deserialize)]
struct RenderInput {
    title: String,
    /// How long the rendering "works" (default 2000 ms).
    #[serde(default)]
    delay_ms: Option<u64>,
}

async fn render(req: HttpRequest, format: web::Path<String>, body: web::Bytes) -> HttpResponse {
    log_request(&req);
    let format = format.into_inner();
    if format != "svg" && format != "json" {
        return bad_request(format!("unknown format '{format}' (svg or json)"));
    }
    let input: RenderInput = match parse(&body) {
        Ok(input) => input,
        Err(why) => return bad_request(why),
    };
    let title = input.title.trim();
    if title.is_empty() || title.chars().count() > 200 {
        return bad_request("title must have 1 to 200 characters");
    }
    let delay = input.delay_ms.unwrap_or(2000);
    if delay > MAX_DELAY_MS {
        return bad_request(format!("delay_ms must be at most {MAX_DELAY_MS}"));
    }

    // "Work" in four steps, reporting progress after each but the last.
    let progress_url = req
        .headers()
        .get("progress-url")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let started = Instant::now();
    for step in 1..=4u8 {
        tokio::time::sleep(Duration::from_millis(delay / 4)).await;
        if let (Some(url), true) = (&progress_url, step < 4) {
            post_progress(url, step * 25, &format!("rendering, step {step} of 4")).await;
        }
    }
    let took_ms = started.elapsed().as_millis() as u64;

    if format == "svg" {
        let svg = format!(
            r##"<svg xmlns="http://www.w3.org/2000/svg" width="480" height="120" viewBox="0 0 480 120">
  <rect width="480" height="120" rx="12" fill="#1f6feb"/>
  <text x="240" y="70" font-family="sans-serif" font-size="28" fill="#ffffff" text-anchor="middle">{}</text>
</svg>
"##,
            xml_escape(title)
        );
        HttpResponse::Ok().content_type("image/svg+xml").body(svg)
    } else {
        HttpResponse::Ok().json(json!({
            "title": title,
            "words": title.split_whitespace().count(),
            "characters": title.chars().count(),
            "upper": title.to_uppercase(),
            "took_ms": took_ms,
        }))
    }
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

// ---------------------------------------------------------------------------------------------
// /reports: the asynchronous endpoint. A report is "made" over `seconds`; its state follows
// from the time since it started, so no background task is needed.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportInput {
    #[serde(default = "default_rows")]
    rows: u32,
    #[serde(default = "default_seconds")]
    seconds: u64,
}

fn default_rows() -> u32 {
    10
}

fn default_seconds() -> u64 {
    5
}

struct Report {
    started: Instant,
    duration: Duration,
    rows: u32,
}

impl Report {
    /// Rows done so far.
    fn rows_done(&self) -> u32 {
        let fraction = self.started.elapsed().as_secs_f64() / self.duration.as_secs_f64();
        ((fraction.min(1.0)) * f64::from(self.rows)) as u32
    }
}

#[derive(Default)]
struct Reports {
    by_id: HashMap<String, Report>,
    /// Idempotency-Key -> report id: a POST the worker repeats (after a timeout or a restart)
    /// gets the report it started the first time, not a second one.
    by_key: HashMap<String, String>,
}

type State = web::Data<Mutex<Reports>>;

async fn start_report(req: HttpRequest, state: State, body: web::Bytes) -> HttpResponse {
    log_request(&req);
    let input: ReportInput = match parse(&body) {
        Ok(input) => input,
        Err(why) => return bad_request(why),
    };
    if !(1..=100_000).contains(&input.rows) {
        return bad_request("rows must be from 1 to 100000");
    }
    if !(1..=600).contains(&input.seconds) {
        return bad_request("seconds must be from 1 to 600");
    }
    let key = req
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut reports = state.lock().expect("reports lock");
    let known = key
        .as_ref()
        .and_then(|k| reports.by_key.get(k))
        .filter(|id| reports.by_id.contains_key(*id))
        .cloned();
    let id = known.unwrap_or_else(|| {
        let id = uuid::Uuid::new_v4().simple().to_string();
        reports.by_id.insert(
            id.clone(),
            Report {
                started: Instant::now(),
                duration: Duration::from_secs(input.seconds),
                rows: input.rows,
            },
        );
        if let Some(key) = key {
            reports.by_key.insert(key, id.clone());
        }
        id
    });
    HttpResponse::Accepted()
        .insert_header((header::LOCATION, format!("/reports/{id}")))
        .insert_header((header::RETRY_AFTER, "1"))
        .json(json!({ "status": "queued", "id": id }))
}

async fn report_status(state: State, id: web::Path<String>) -> HttpResponse {
    let reports = state.lock().expect("reports lock");
    let Some(report) = reports.by_id.get(id.as_str()) else {
        return not_found("report");
    };
    let done = report.rows_done();
    if done >= report.rows {
        return HttpResponse::SeeOther()
            .insert_header((header::LOCATION, format!("/reports/{id}/result")))
            .finish();
    }
    HttpResponse::Ok()
        .insert_header((header::RETRY_AFTER, "1"))
        .json(json!({
            "status": "running",
            "progress": {
                "percent": (u64::from(done) * 100 / u64::from(report.rows)) as u8,
                "message": format!("{done} of {} rows", report.rows),
            },
        }))
}

async fn report_result(state: State, id: web::Path<String>) -> HttpResponse {
    let reports = state.lock().expect("reports lock");
    let Some(report) = reports.by_id.get(id.as_str()) else {
        return not_found("report");
    };
    if report.rows_done() < report.rows {
        return problem(
            actix_web::http::StatusCode::CONFLICT,
            "the report is not finished yet",
        );
    }
    let mut csv = String::from("row,square\n");
    for row in 1..=u64::from(report.rows) {
        csv.push_str(&format!("{row},{}\n", row * row));
    }
    HttpResponse::Ok()
        .content_type("text/csv; charset=utf-8")
        .body(csv)
}

async fn cancel_report(req: HttpRequest, state: State, id: web::Path<String>) -> HttpResponse {
    log_request(&req);
    let mut reports = state.lock().expect("reports lock");
    if reports.by_id.remove(id.as_str()).is_none() {
        return not_found("report");
    }
    reports.by_key.retain(|_, v| v != id.as_str());
    HttpResponse::NoContent().finish()
}

// ---------------------------------------------------------------------------------------------
// POST /echo-delay?ms=N: a backend of known cost (for benchmarks of the http handler).

#[derive(Deserialize)]
struct DelayQuery {
    #[serde(default)]
    ms: u64,
}

async fn echo_delay(query: web::Query<DelayQuery>, body: web::Bytes) -> HttpResponse {
    if query.ms > MAX_DELAY_MS {
        return bad_request(format!("ms must be at most {MAX_DELAY_MS}"));
    }
    let value: Value = if body.is_empty() {
        json!({})
    } else {
        match parse(&body) {
            Ok(value) => value,
            Err(why) => return bad_request(why),
        }
    };
    tokio::time::sleep(Duration::from_millis(query.ms)).await;
    HttpResponse::Ok().json(value)
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let state: State = web::Data::new(Mutex::new(Reports::default()));
    eprintln!("example-backend: listening on http://{}", args.listen);
    HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .route("/healthz", web::get().to(healthz))
            .route("/render/{format}", web::post().to(render))
            .route("/reports", web::post().to(start_report))
            .route("/reports/{id}", web::get().to(report_status))
            .route("/reports/{id}", web::delete().to(cancel_report))
            .route("/reports/{id}/result", web::get().to(report_result))
            .route("/echo-delay", web::post().to(echo_delay))
    })
    // SIGTERM/SIGINT stop it gracefully (actix's own signal handling), within 5 s.
    .shutdown_timeout(5)
    .bind(&args.listen)?
    .run()
    .await
}
