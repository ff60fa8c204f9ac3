//! TLS to RabbitMQ (`amqps://`) and Redis (`rediss://`), end to end against a real TLS Redis
//! (`redis-server --tls-port`) and a real TLS listener on a private RabbitMQ node, with a CA and
//! certificates each test makes. The servers' certificates name `localhost` only, so a URL that
//! says `127.0.0.1` is a host name the certificate does not cover.
//!
//! - With the CA file configured, the facade and a worker run a job through both TLS links;
//!   the facade's RESP3 tracking connection (the poll cache) is one of them.
//! - With no CA file, the system's roots are used: the test CA is not among them, so both
//!   servers are refused; pointed at the test CA through `SSL_CERT_FILE` (where the OS store
//!   is read from), the same configuration works, which shows that store is what is read.
//! - A wrong CA or a wrong host name: `/readyz` is a 503 naming redis and rabbitmq and rustls's
//!   reason, both processes log it as an error, and a submit gets a 503.
//! - Mutual TLS: servers that require a client certificate accept the configured one.
//! - A CA file that cannot be read stops a binary at start, naming the key and the path.

use std::path::Path;
use std::time::{Duration, Instant};

use e2e::services::{PrivateRabbit, PrivateRedis, PrivateRedisCluster, TestCa};
use e2e::{Stack, StackOptions};
use reqwest::StatusCode;
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(60);

/// Both binaries pointed at `redis` and `rabbit` over TLS, as `host`.
fn tls_options(redis: &PrivateRedis, rabbit: &PrivateRabbit, host: &str) -> StackOptions {
    StackOptions::default()
        .env("APP__REDIS__URL", redis.tls_url(host))
        .env("APP__AMQP__URL", rabbit.tls_url(host))
}

/// The same CA file for both backends.
fn with_ca(options: StackOptions, ca: &Path) -> StackOptions {
    let ca = ca.display().to_string();
    options
        .env("APP__REDIS__TLS_CA_FILE", &ca)
        .env("APP__AMQP__TLS_CA_FILE", &ca)
}

/// Submits an echo job, follows the 303 and checks the result; returns the status monitor.
async fn run_a_job(stack: &Stack) -> String {
    let input = json!({"through": "tls", "n": [1, 2, 3]});
    let location = stack
        .submit_ok(&json!({"type": "echo", "input": input}))
        .await;
    let done = stack.wait(&location, LONG).await;
    assert_eq!(done.status(), StatusCode::OK);
    assert_eq!(done.url().path(), format!("{location}/result"));
    assert_eq!(done.json::<Value>().await.unwrap(), input);
    let monitor = stack
        .http_no_redirect
        .get(stack.url(&location))
        .send()
        .await
        .unwrap();
    assert_eq!(monitor.status(), StatusCode::SEE_OTHER);
    location
}

/// Waits (up to 30 s) until /readyz is a 503 whose problem names both backends and `reason`
/// (the same reason for both, here); returns the body.
async fn wait_not_ready_because(stack: &Stack, reason: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let response = stack.http.get(stack.url("/readyz")).send().await;
        if let Ok(response) = response {
            let status = response.status();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            let detail = body["detail"].as_str().unwrap_or_default();
            if status == StatusCode::SERVICE_UNAVAILABLE
                && detail.contains("redis (")
                && detail.contains("rabbitmq (")
                && detail.matches(reason).count() >= 2
            {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "{}: /readyz never named {reason:?} for both backends: {status} {body}",
                stack.name
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits (up to 30 s) until `label`'s log has an ERROR line naming `backend`, a TLS handshake
/// and `reason`.
async fn wait_logged(stack: &Stack, label: &str, backend: &str, reason: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = std::fs::read_to_string(stack.log_file(label)).unwrap_or_default();
        let found = log.lines().any(|line| {
            let Ok(entry) = serde_json::from_str::<Value>(line) else {
                return false;
            };
            let message = entry["message"].as_str().unwrap_or_default();
            entry["level"] == "ERROR"
                && message.starts_with(&format!("{backend}: "))
                && message.contains("TLS handshake with")
                && message.contains(reason)
        });
        if found {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{label} never logged a TLS error for {backend} with {reason:?}:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A stack that must not become ready for `reason`: /readyz names it, both processes log it,
/// a submit is refused.
async fn assert_refused(stack: &Stack, reason: &str) {
    let body = wait_not_ready_because(stack, reason).await;
    for backend in ["redis", "rabbitmq"] {
        let check = &body["checks"][backend];
        assert_eq!(check["status"], "down", "{body}");
        let error = check["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("TLS handshake with") && error.contains(reason),
            "{backend}: {error}"
        );
    }
    for backend in ["redis", "rabbitmq"] {
        wait_logged(stack, "api", backend, reason).await;
    }
    for backend in ["redis", "rabbitmq"] {
        wait_logged(stack, "worker1", backend, reason).await;
    }
    let submit = stack.submit(&json!({"type": "echo", "input": 1})).await;
    assert_eq!(submit.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(submit.headers().contains_key("retry-after"));
}

#[tokio::test]
async fn jobs_run_through_tls_with_the_configured_ca_or_the_system_roots() {
    let ca = TestCa::new("good");
    let server = ca.server("server", &["localhost"], false);
    let redis = PrivateRedis::start_tls(&server).await;
    let rabbit = PrivateRabbit::start_tls(&server).await;

    // The CA file configured for both backends.
    let stack = Stack::start_with(
        "tls-ca",
        with_ca(tls_options(&redis, &rabbit, "localhost"), &ca.ca_file()),
    )
    .await;
    let ready = stack.get_json("/readyz").await;
    assert_eq!(ready["status"], "ready");
    let location = run_a_job(&stack).await;
    // Polls of an unchanged job are served by the poll cache, whose RESP3 tracking connection
    // is a TLS one too (a poll falls back to a plain read when it fails): a hit means it
    // connected and tracks.
    for _ in 0..5 {
        let response = stack
            .http_no_redirect
            .get(stack.url(&location))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::SEE_OTHER);
    }
    assert!(
        stack.poll_cache_count("hit").await > 0,
        "no poll was served by the tracking connection"
    );
    drop(stack);

    // No CA file: the system's roots, read from where SSL_CERT_FILE says (the test CA).
    let stack = Stack::start_with(
        "tls-roots",
        tls_options(&redis, &rabbit, "localhost").env("SSL_CERT_FILE", ca.ca_file().display()),
    )
    .await;
    run_a_job(&stack).await;
}

#[tokio::test]
async fn a_wrong_ca_a_wrong_host_name_or_an_unknown_issuer_is_a_clear_503() {
    let ca = TestCa::new("right");
    let other = TestCa::new("other");
    let server = ca.server("server", &["localhost"], false);
    let redis = PrivateRedis::start_tls(&server).await;
    let rabbit = PrivateRabbit::start_tls(&server).await;

    let cases = [
        // A CA file of another CA.
        (
            "tls-wrong-ca",
            with_ca(tls_options(&redis, &rabbit, "localhost"), &other.ca_file()),
            "UnknownIssuer",
        ),
        // The right CA, but a host name the certificate does not cover.
        (
            "tls-wrong-name",
            with_ca(tls_options(&redis, &rabbit, "127.0.0.1"), &ca.ca_file()),
            "not valid for name",
        ),
        // No CA file: the system's roots, which do not hold the test CA (verification is on).
        (
            "tls-no-ca",
            tls_options(&redis, &rabbit, "localhost"),
            "UnknownIssuer",
        ),
    ];
    for (name, options, reason) in cases {
        let stack = Stack::start_with(name, options.no_wait()).await;
        assert_refused(&stack, reason).await;
    }
}

#[tokio::test]
async fn a_redis_cluster_is_reached_through_tls() {
    let ca = TestCa::new("cluster");
    // The nodes announce themselves by IP address: the certificate must name it.
    let server = ca.server("server", &["localhost", "127.0.0.1"], false);
    let cluster = PrivateRedisCluster::start_tls(&server).await;
    let stack = Stack::start_with(
        "tls-cluster",
        StackOptions::default()
            .env("APP__REDIS__CLUSTER_URLS", cluster.tls_urls())
            .env("APP__REDIS__TLS_CA_FILE", ca.ca_file().display())
            // Only the harness reads this (to clean up): never the shared Redis.
            .env("APP__REDIS__URL", cluster.nodes[0].url()),
    )
    .await;
    run_a_job(&stack).await;
}

#[tokio::test]
async fn mutual_tls_offers_the_configured_client_certificate() {
    let ca = TestCa::new("mtls");
    let server = ca.server("server", &["localhost"], true);
    let client = ca.issue("client", &["arr-client"], true);
    let redis = PrivateRedis::start_tls(&server).await;
    let rabbit = PrivateRabbit::start_tls(&server).await;

    let (cert, key) = (client.cert.display(), client.key.display());
    let stack = Stack::start_with(
        "tls-mutual",
        with_ca(tls_options(&redis, &rabbit, "localhost"), &ca.ca_file())
            .env("APP__REDIS__TLS_CERT_FILE", &cert)
            .env("APP__REDIS__TLS_KEY_FILE", &key)
            .env("APP__AMQP__TLS_CERT_FILE", &cert)
            .env("APP__AMQP__TLS_KEY_FILE", &key),
    )
    .await;
    run_a_job(&stack).await;
    drop(stack);

    // Without it, neither server lets the facade in.
    let stack = Stack::start_with(
        "tls-no-client-cert",
        with_ca(tls_options(&redis, &rabbit, "localhost"), &ca.ca_file()).no_wait(),
    )
    .await;
    stack.wait_alive().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let response = stack.http.get(stack.url("/readyz")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body: Value = response.json().await.unwrap();
        // Redis says why in the handshake; RabbitMQ closes the connection after it.
        let redis_error = body["checks"]["redis"]["error"]
            .as_str()
            .unwrap_or_default();
        if redis_error.contains("CertificateRequired")
            && body["checks"]["rabbitmq"]["status"] == "down"
        {
            break;
        }
        assert!(Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs `binary` with `env`; asserts it stops at start with exit code 2 and that its stderr
/// says `message`.
fn assert_refused_at_start(binary: &str, env: &[(&str, &str)], message: &str) {
    let output = std::process::Command::new(e2e::bin(binary))
        .envs(env.iter().copied())
        .output()
        .expect("run the binary");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{binary}: {stderr}");
    assert!(stderr.contains(message), "{binary}: {stderr}");
}

#[tokio::test]
async fn an_unreadable_tls_file_stops_both_binaries_at_start_naming_it() {
    let ca = TestCa::new("config");
    let ca_file = ca.ca_file().display().to_string();
    for binary in ["api", "worker"] {
        assert_refused_at_start(
            binary,
            &[
                ("APP__REDIS__URL", "rediss://localhost:6380/0"),
                ("APP__REDIS__TLS_CA_FILE", "/nonexistent/ca.pem"),
            ],
            "redis.tls_ca_file: cannot read /nonexistent/ca.pem",
        );
        // A file that holds no certificate.
        assert_refused_at_start(
            binary,
            &[
                ("APP__AMQP__URL", "amqps://guest:guest@localhost:5671/%2f"),
                ("APP__AMQP__TLS_CA_FILE", "/etc/hostname"),
            ],
            "amqp.tls_ca_file: /etc/hostname holds no PEM certificate",
        );
        // A certificate without its key.
        assert_refused_at_start(
            binary,
            &[
                ("APP__AMQP__URL", "amqps://guest:guest@localhost:5671/%2f"),
                ("APP__AMQP__TLS_CERT_FILE", &ca_file),
            ],
            "amqp.tls_cert_file and amqp.tls_key_file must be set together",
        );
        // TLS files for a backend whose URL is not a TLS one would be ignored, and the
        // connection left in clear: refused.
        assert_refused_at_start(
            binary,
            &[("APP__REDIS__TLS_CA_FILE", &ca_file)],
            "redis.tls_* files are set, but redis.url redis://127.0.0.1:6379/0 is not rediss://",
        );
    }
}
