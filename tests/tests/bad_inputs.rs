//! A hand-made corpus of hostile and broken requests against the real facade: bodies that are
//! not UTF-8, not JSON, too deep, too big, full of NULs or huge numbers; job ids that try path
//! traversal or Redis glob patterns; header injection; wrong methods and content types. Each
//! gets its exact status and an `application/problem+json` body (`type`, `title`, `status`),
//! and none of them queues a job or writes a Redis key.
//!
//! Requests go over a raw TCP connection (not reqwest), so they reach the server byte for byte:
//! an HTTP client library would normalise `../`, refuse CR in a header or fix a content length.
//!
//! Two answers are the HTTP parser's own (actix-http answers them before any application code
//! runs, so they cannot carry a problem body): a header value holding a bare CR or LF, and an
//! unparseable or conflicting `Content-Length`, get a `400` with an empty body and the
//! connection closed; headers over the parser's buffer get a `431`, also empty. They are
//! asserted as such below.

use std::time::Duration;

use e2e::{Stack, StackOptions};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What came back on a raw connection.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Asserts the status and a problem+json body with `type`, `title` and that status.
    fn problem(&self, status: u16, what: &str) -> Value {
        assert_eq!(self.status, status, "{what}: {}", self.text());
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "{what}: content type"
        );
        let body: Value = serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{what}: problem body is not JSON ({e}): {}", self.text()));
        assert_eq!(body["status"], status, "{what}: {body}");
        assert!(body["type"].is_string(), "{what}: {body}");
        assert!(body["title"].is_string(), "{what}: {body}");
        body
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `request` as is and reads the answer until the server closes (every request says
/// `Connection: close`). Bounded: a server that hangs fails the test.
async fn raw(stack: &Stack, request: &[u8]) -> Answer {
    let address = stack.base.trim_start_matches("http://").to_owned();
    let exchange = async {
        let mut stream = TcpStream::connect(&address).await.expect("connect");
        // The server may answer and close before it has read everything (a body over the
        // limit): what it said is still there to read.
        let _ = stream.write_all(request).await;
        let mut bytes = Vec::new();
        // Whatever arrived before a reset is kept.
        let _ = stream.read_to_end(&mut bytes).await;
        bytes
    };
    let bytes = tokio::time::timeout(Duration::from_secs(20), exchange)
        .await
        .expect("the facade did not answer within 20 s");
    parse(&bytes)
}

fn parse(bytes: &[u8]) -> Answer {
    let split = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {:?}", String::from_utf8_lossy(bytes)));
    let head = String::from_utf8_lossy(&bytes[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect::<Vec<_>>();
    let mut body = bytes[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Answer {
        status,
        headers,
        body,
    }
}

fn dechunk(mut bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = bytes.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&bytes[..end]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = end + 2;
        out.extend_from_slice(&bytes[start..(start + size).min(bytes.len())]);
        bytes = &bytes[(start + size + 2).min(bytes.len())..];
    }
    out
}

/// A POST with a body, `Content-Length` set to its length.
fn post(path: &str, content_type: Option<&str>, extra: &[u8], body: &[u8]) -> Vec<u8> {
    request("POST", path, content_type, extra, body)
}

/// A request with a body, `Content-Length` set to its length, and `extra` header lines.
fn request(
    method: &str,
    path: &str,
    content_type: Option<&str>,
    extra: &[u8],
    body: &[u8],
) -> Vec<u8> {
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    if let Some(ct) = content_type {
        request.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(extra);
    bytes.extend_from_slice(b"\r\n");
    bytes.extend_from_slice(body);
    bytes
}

fn json_post(body: &[u8]) -> Vec<u8> {
    post("/v1/jobs", Some("application/json"), b"", body)
}

fn get(method: &str, path: &str) -> Vec<u8> {
    format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").into_bytes()
}

/// Nothing was queued and nothing recorded.
async fn assert_nothing_left(stack: &Stack, after: &str) {
    let (ready, _) = stack.queue_info().await.expect("queue exists");
    assert_eq!(ready, 0, "{after}: a refused request queued a message");
    assert_eq!(
        stack.redis_keys().await,
        Vec::<String>::new(),
        "{after}: a refused request left a Redis key"
    );
}

/// The pointers named in a validation problem's `errors`.
fn pointers(problem: &Value) -> Vec<String> {
    problem["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .map(|e| e["pointer"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// One stack for the whole corpus, with small limits so that each is cheap to break; no worker,
/// so anything published would stay in the queue for us to see.
async fn stack() -> Stack {
    Stack::start_with(
        "bad-inputs",
        StackOptions::default()
            .workers(0)
            .env("APP__HTTP__BODY_LIMIT_BYTES", 65_536)
            .env("APP__LIMITS__MAX_STRING_BYTES", 1024)
            .env("APP__LIMITS__MAX_ARRAY_ITEMS", 100)
            .env("APP__LIMITS__MAX_BODY_READ_SECONDS", 2),
    )
    .await
}

#[tokio::test]
async fn bodies_that_are_not_json_or_not_utf8() {
    let stack = stack().await;
    for (what, body) in [
        (
            "invalid UTF-8 in a string",
            &b"{\"type\":\"echo\",\"input\":\"\xff\xfe\"}"[..],
        ),
        ("invalid UTF-8 outside strings", b"\xff\xfe{}"),
        (
            "a lone surrogate escape",
            br#"{"type":"echo","input":"\ud800"}"#,
        ),
        (
            "a raw NUL byte inside a string",
            b"{\"type\":\"echo\",\"input\":\"a\x00b\"}",
        ),
        ("a raw NUL byte between tokens", b"{\"type\":\x00\"echo\"}"),
        ("truncated JSON", br#"{"type":"echo","input":{"#),
        ("two documents", br#"{"type":"echo"}{"type":"echo"}"#),
        (
            "a number too big for a double",
            br#"{"type":"hash","input":{"bytes":1e400}}"#,
        ),
        ("empty body", b""),
        ("whitespace only", b"  \r\n "),
    ] {
        let p = raw(&stack, &json_post(body)).await.problem(400, what);
        assert_eq!(p["type"], "/problems/malformed-json", "{what}: {p}");
    }
    assert_nothing_left(&stack, "malformed bodies").await;
}

#[tokio::test]
async fn bodies_that_break_the_rules_get_422_naming_where() {
    let stack = stack().await;
    let cases: Vec<(&str, Vec<u8>, Vec<&str>)> = vec![
        (
            "an integer beyond u64",
            br#"{"type":"hash","input":{"bytes":123456789012345678901234567890}}"#.to_vec(),
            vec!["#/input/bytes"],
        ),
        (
            "a fractional integer",
            br#"{"type":"hash","input":{"bytes":1.5}}"#.to_vec(),
            vec!["#/input/bytes"],
        ),
        (
            "a huge priority",
            br#"{"type":"echo","priority":18446744073709551616}"#.to_vec(),
            vec!["#/priority"],
        ),
        (
            "a negative priority",
            br#"{"type":"echo","priority":-1}"#.to_vec(),
            vec!["#/priority"],
        ),
        (
            "a huge float for a bounded number",
            br#"{"type":"sleep","input":{"seconds":1.7976931348623157e308}}"#.to_vec(),
            vec!["#/input/seconds"],
        ),
        (
            "NUL in the type",
            br#"{"type":"echo\u0000"}"#.to_vec(),
            vec!["#/type"],
        ),
        (
            "NUL in an input string",
            br#"{"type":"fail","input":{"message":"disk\u0000on fire"}}"#.to_vec(),
            vec!["#/input/message"],
        ),
        (
            "NUL in a member name",
            br#"{"type":"echo","input":{"a\u0000b":1}}"#.to_vec(),
            vec!["#/input/a\u{0}b"],
        ),
        (
            "a string over max_string_bytes",
            format!(r#"{{"type":"echo","input":"{}"}}"#, "x".repeat(1025)).into_bytes(),
            vec!["#/input"],
        ),
        (
            "a member name over max_string_bytes",
            format!(r#"{{"type":"echo","input":{{"{}":1}}}}"#, "k".repeat(1025)).into_bytes(),
            vec![],
        ),
        (
            "an array over max_array_items",
            format!(
                r#"{{"type":"echo","input":[{}]}}"#,
                vec!["0"; 101].join(",")
            )
            .into_bytes(),
            vec!["#/input"],
        ),
        (
            "nesting 10,000 levels deep",
            format!(
                r#"{{"type":"echo","input":{}{}}}"#,
                "[".repeat(10_000),
                "]".repeat(10_000)
            )
            .into_bytes(),
            vec!["#"],
        ),
        (
            "nesting 65 levels deep (the body's object is level 1)",
            format!(
                r#"{{"type":"echo","input":{}{}}}"#,
                "[".repeat(64),
                "]".repeat(64)
            )
            .into_bytes(),
            vec!["#"],
        ),
        (
            "10,000 open brackets, never closed",
            format!(r#"{{"type":"echo","input":{}"#, "{\"a\":".repeat(10_000)).into_bytes(),
            vec!["#"],
        ),
        (
            "an unknown type",
            br#"{"type":"../../etc/passwd"}"#.to_vec(),
            vec!["#/type"],
        ),
        ("not an object", b"[1,2,3]".to_vec(), vec!["#"]),
        ("null", b"null".to_vec(), vec!["#"]),
    ];
    for (what, body, expected) in cases {
        let p = raw(&stack, &json_post(&body)).await.problem(422, what);
        assert_eq!(p["type"], "/problems/validation", "{what}: {p}");
        if !expected.is_empty() {
            assert_eq!(pointers(&p), expected, "{what}: {p}");
        }
    }
    assert_nothing_left(&stack, "rule-breaking bodies").await;
}

#[tokio::test]
async fn wrong_content_types_sizes_and_slow_bodies() {
    let stack = stack().await;
    let body = br#"{"type":"echo"}"#;
    for (what, content_type) in [
        ("no content type", None),
        ("text/plain", Some("text/plain")),
        ("a form", Some("application/x-www-form-urlencoded")),
        ("multipart", Some("multipart/form-data; boundary=x")),
        ("a look-alike", Some("application/jsonx")),
        ("an empty content type", Some("")),
    ] {
        let p = raw(&stack, &post("/v1/jobs", content_type, b"", body))
            .await
            .problem(415, what);
        assert_eq!(p["type"], "/problems/unsupported-media-type", "{what}");
    }

    // Over the 64 KiB limit: declared up front, and chunked (no length).
    let big = format!(r#"{{"type":"echo","input":"{}"}}"#, "x".repeat(70_000));
    raw(&stack, &json_post(big.as_bytes()))
        .await
        .problem(413, "a declared body over the limit");
    let mut chunked = b"POST /v1/jobs HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for chunk in big.as_bytes().chunks(8192) {
        chunked.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        chunked.extend_from_slice(chunk);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    raw(&stack, &chunked)
        .await
        .problem(413, "a chunked body over the limit");

    // Declares 100 bytes, sends 2, then waits: 408 once max_body_read_seconds (2 s) pass,
    // rather than a connection held forever.
    let slow =
        b"POST /v1/jobs HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{}";
    let p = raw(&stack, slow)
        .await
        .problem(408, "a body that never arrives");
    assert_eq!(p["type"], "/problems/request-timeout");
    assert_nothing_left(&stack, "content types and sizes").await;
}

#[tokio::test]
async fn hostile_job_ids_are_404_and_touch_no_key() {
    let stack = stack().await;
    let ids = [
        "*",
        "%2A",
        "%3F",
        "[a-z]*",
        "%5Ba-z%5D%2A",
        "e2e-*",
        "00000000-0000-0000-0000-00000000000*",
        "00000000-0000-0000-0000-00000000000%3F",
        "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "..%2F..%2Fetc%2Fpasswd",
        "%2e%2e",
        "..",
        "%00",
        "%FF%FE",
        "%0d%0aSet-Cookie:%20x=1",
        "0A93AA6D-1528-4739-9438-EBF536F6757C",
        "{0a93aa6d-1528-4739-9438-ebf536f6757c}",
        "0a93aa6d15284739943",
    ];
    for id in ids {
        for (method, suffix) in [
            ("GET", ""),
            ("GET", "/result"),
            ("GET", "/events"),
            ("DELETE", ""),
        ] {
            let what = format!("{method} /v1/jobs/{id}{suffix}");
            let answer = raw(&stack, &get(method, &format!("/v1/jobs/{id}{suffix}"))).await;
            answer.problem(404, &what);
            assert!(
                answer.header("set-cookie").is_none(),
                "{what}: a header was injected"
            );
        }
    }
    // Traversal that leaves the route altogether: still a problem+json 404.
    for path in [
        "/v1/jobs/../../etc/passwd",
        "/v1/jobs/%2e%2e/%2e%2e/etc/passwd",
        "/v1/jobs/a/b/c",
        "/v1/../v1/jobs/x/../../../",
    ] {
        raw(&stack, &get("GET", path)).await.problem(404, path);
    }
    assert_nothing_left(&stack, "hostile ids").await;
}

#[tokio::test]
async fn header_injection_and_overlong_headers() {
    let stack = stack().await;
    let body = br#"{"type":"echo"}"#;
    let submit = |extra: &[u8]| post("/v1/jobs", Some("application/json"), extra, body);

    for (what, header) in [
        (
            "an over-long key",
            format!("Idempotency-Key: {}\r\n", "k".repeat(256)),
        ),
        ("a key with a space", "Idempotency-Key: a b\r\n".to_owned()),
        ("a key with a tab", "Idempotency-Key: a\tb\r\n".to_owned()),
        ("an empty key", "Idempotency-Key: \r\n".to_owned()),
        (
            "a key given twice",
            "Idempotency-Key: a\r\nIdempotency-Key: b\r\n".to_owned(),
        ),
        (
            "a key with UTF-8",
            "Idempotency-Key: caf\u{e9}\r\n".to_owned(),
        ),
    ] {
        let p = raw(&stack, &submit(header.as_bytes()))
            .await
            .problem(400, what);
        assert_eq!(p["type"], "/problems/invalid-header", "{what}: {p}");
        assert_eq!(p["header"], "Idempotency-Key", "{what}: {p}");
    }
    // A header section over http.max_header_bytes (16 KiB): 431, before any handler.
    let p = raw(
        &stack,
        &submit(format!("Idempotency-Key: {}\r\n", "k".repeat(16_384)).as_bytes()),
    )
    .await
    .problem(431, "a 16 KiB key");
    assert_eq!(p["type"], "/problems/headers-too-large", "{p}");
    // Obsolete text (bytes 0x80-0xFF) is legal on the wire and refused by the key's rules.
    let p = raw(&stack, &submit(b"Idempotency-Key: caf\xe9\r\n"))
        .await
        .problem(400, "a key with a Latin-1 byte");
    assert_eq!(p["header"], "Idempotency-Key");

    // A bare CR or LF inside a value: the HTTP parser refuses the request before the
    // application sees it (400, empty body, connection closed); nothing is injected.
    for (what, header) in [
        (
            "CR inside a value",
            &b"Idempotency-Key: ab\rX-Injected: 1\r\n"[..],
        ),
        // (A bare LF before a well-formed line is a line end, RFC 9112 2.2: two headers.)
        ("LF inside a value", b"Idempotency-Key: ab\ncd\r\n"),
        ("a NUL inside a value", b"Idempotency-Key: ab\x00cd\r\n"),
        ("CR LF inside the request line", b"X-A: 1\r\n"),
    ] {
        let request = if what.contains("request line") {
            b"POST /v1/jobs\r\nX: y HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".to_vec()
        } else {
            submit(header)
        };
        let answer = raw(&stack, &request).await;
        assert_eq!(answer.status, 400, "{what}: {}", answer.text());
        assert!(answer.header("x-injected").is_none(), "{what}");
        assert!(answer.body.is_empty(), "{what}: {}", answer.text());
    }
    for (what, header) in [
        (
            "a Content-Length that does not parse",
            &b"Content-Length: 1x\r\n"[..],
        ),
        ("two different Content-Lengths", b"Content-Length: 3\r\n"),
    ] {
        let answer = raw(&stack, &submit(header)).await;
        assert_eq!(answer.status, 400, "{what}: {}", answer.text());
        assert!(answer.body.is_empty(), "{what}");
    }
    // Headers past the parser's buffer: 431, from the HTTP parser too.
    let huge = format!(
        "GET /v1/jobs HTTP/1.1\r\nHost: test\r\nConnection: close\r\nX-Filler: {}\r\n\r\n",
        "f".repeat(200_000)
    );
    let answer = raw(&stack, huge.as_bytes()).await;
    assert_eq!(answer.status, 431, "{}", answer.text());

    // A traceparent that does not parse is ignored (the job would start a new trace): it
    // cannot inject anything either; here the body is refused first.
    let p = raw(
        &stack,
        &post(
            "/v1/jobs",
            Some("application/json"),
            b"traceparent: 00-zz\xff-\r\n",
            b"{",
        ),
    )
    .await
    .problem(400, "garbage traceparent with a bad body");
    assert_eq!(p["type"], "/problems/malformed-json");
    assert_nothing_left(&stack, "header injection").await;
}

#[tokio::test]
async fn wrong_methods_get_405_with_allow() {
    let stack = stack().await;
    let id = "0a93aa6d-1528-4739-9438-ebf536f6757c";
    for (method, path, allow) in [
        ("PUT", "/v1/jobs".to_owned(), "GET, HEAD, POST"),
        ("PATCH", "/v1/jobs".to_owned(), "GET, HEAD, POST"),
        ("DELETE", "/v1/jobs".to_owned(), "GET, HEAD, POST"),
        ("TRACE", "/v1/jobs".to_owned(), "GET, HEAD, POST"),
        ("FOO", "/v1/jobs".to_owned(), "GET, HEAD, POST"),
        ("POST", format!("/v1/jobs/{id}"), "GET, HEAD, DELETE"),
        ("PUT", format!("/v1/jobs/{id}"), "GET, HEAD, DELETE"),
        ("POST", format!("/v1/jobs/{id}/result"), "GET, HEAD"),
        ("DELETE", format!("/v1/jobs/{id}/events"), "GET, HEAD"),
        ("POST", "/v1/workers".to_owned(), "GET, HEAD"),
        ("POST", "/healthz".to_owned(), "GET, HEAD"),
        ("DELETE", "/readyz".to_owned(), "GET, HEAD"),
        ("POST", "/metrics".to_owned(), "GET, HEAD"),
        ("POST", "/openapi.json".to_owned(), "GET, HEAD"),
    ] {
        let what = format!("{method} {path}");
        let body = br#"{"type":"echo"}"#;
        let answer = raw(
            &stack,
            &request(method, &path, Some("application/json"), b"", body),
        )
        .await;
        let p = answer.problem(405, &what);
        assert_eq!(p["type"], "/problems/method-not-allowed", "{what}");
        assert_eq!(answer.header("allow"), Some(allow), "{what}");
    }
    // HEAD is a GET without a body, wherever GET is allowed.
    let answer = raw(&stack, &get("HEAD", "/healthz")).await;
    assert_eq!(answer.status, 200);
    assert!(answer.body.is_empty());
    let answer = raw(&stack, &get("HEAD", &format!("/v1/jobs/{id}"))).await;
    assert_eq!(answer.status, 404);
    assert_eq!(
        answer.header("content-type"),
        Some("application/problem+json")
    );
    assert!(answer.body.is_empty());
    assert_nothing_left(&stack, "wrong methods").await;
}
