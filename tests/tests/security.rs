//! Who may see what, with real keys against the real stack: tenants never see each other's
//! jobs (404, the same answer as an unknown id), operators only for the fleet, signed status
//! URLs (tampering, expiry, rotation), per-key rate limits, open-wait caps and admission
//! control (429/503 with Retry-After), and CORS for an allowed and a disallowed origin.

use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use e2e::{Stack, StackOptions};
use hmac::{Hmac, Mac};
use reqwest::{RequestBuilder, Response, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const ALICE: &str = "alice-key-0123456789abcdef"; // tenant acme
const OPS: &str = "ops-key-0123456789abcdef"; // tenant acme, operator
const BOB: &str = "bob-key-0123456789abcdef"; // tenant globex

const K2: &str = "k2-secret-that-is-long-enough-000000";
const K1: &str = "k1-secret-that-is-long-enough-111111";
const K0: &str = "k0-secret-that-is-long-enough-222222";

fn digest(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

fn with_auth(options: StackOptions) -> StackOptions {
    let keys = format!(
        "alice:acme:{},ops:acme:{}:operator,bob:globex:{}",
        digest(ALICE),
        digest(OPS),
        digest(BOB)
    );
    options
        .api_env("APP__AUTH__ENABLED", "true")
        .api_env("APP__AUTH__KEYS", keys)
}

fn with_signing(options: StackOptions) -> StackOptions {
    let hour = chrono::Duration::hours(1);
    let later = (chrono::Utc::now() + hour).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let earlier = (chrono::Utc::now() - hour).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    // k2 signs; k1 was rotated out but verifies for another hour; k0 is retired.
    options.api_env(
        "APP__SIGNING__KEYS",
        format!("k2:{K2},k1:{K1}@{later},k0:{K0}@{earlier}"),
    )
}

/// GET `path` with `key`.
async fn get_as(stack: &Stack, path: &str, key: &str) -> Response {
    bearer(stack.http.get(stack.url(path)), key)
        .send()
        .await
        .unwrap()
}

fn bearer(request: RequestBuilder, key: &str) -> RequestBuilder {
    request.header("authorization", format!("Bearer {key}"))
}

async fn problem(response: Response, status: StatusCode) -> Value {
    assert_eq!(response.status(), status);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("application/problem+json"),
        "{content_type}"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], status.as_u16(), "{body}");
    assert!(
        body["type"].is_string() && body["title"].is_string(),
        "{body}"
    );
    body
}

async fn submit_as(stack: &Stack, key: &str, body: &Value) -> Response {
    bearer(stack.http_no_redirect.post(stack.url("/v1/jobs")), key)
        .json(body)
        .send()
        .await
        .unwrap()
}

fn location(response: &Response) -> String {
    response.headers()["location"].to_str().unwrap().to_owned()
}

/// The id in a status path (with or without a query).
fn id_of(location: &str) -> String {
    let path = location.split('?').next().unwrap();
    path.trim_start_matches("/v1/jobs/")
        .split('/')
        .next()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn tenants_never_see_each_others_jobs() {
    let stack =
        Stack::start_with("sec-tenants", with_auth(StackOptions::default().workers(0))).await;
    let job = json!({"type": "sleep", "input": {"seconds": 30}});

    // No key, a malformed header, an unknown key: 401 with a Bearer challenge, nothing queued.
    let none = stack.submit(&job).await;
    assert_eq!(none.headers()["www-authenticate"], "Bearer realm=\"arr\"");
    problem(none, StatusCode::UNAUTHORIZED).await;
    let basic = stack
        .http
        .post(stack.url("/v1/jobs"))
        .header("authorization", "Basic YWxpY2U6eA==")
        .json(&job)
        .send()
        .await
        .unwrap();
    problem(basic, StatusCode::UNAUTHORIZED).await;
    problem(
        submit_as(&stack, "not-a-key", &job).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    problem(
        stack.http.get(stack.url("/v1/jobs")).send().await.unwrap(),
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_eq!(stack.queue_len(&stack.work_queue()).await, 0);

    let accepted = submit_as(&stack, ALICE, &job).await;
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    let loc = location(&accepted);
    let id = id_of(&loc);

    // Its keys carry the tenant.
    let keys = stack.redis_keys().await;
    assert!(
        keys.contains(&format!("{}:acme:job:{{{id}}}", stack.prefix)),
        "{keys:?}"
    );
    assert!(!keys.iter().any(|k| k.contains(":globex:")), "{keys:?}");

    // The owner's tenant reads it (either key), Bob's does not: the same 404 as an unknown id.
    for key in [ALICE, OPS] {
        let r = get_as(&stack, &loc, key).await;
        assert_eq!(r.status(), StatusCode::ACCEPTED);
    }
    let unknown = uuid::Uuid::new_v4().to_string();
    let unknown_body = problem(
        get_as(&stack, &format!("/v1/jobs/{unknown}"), BOB).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    let same_as_unknown = |body: Value| {
        let text = body.to_string().replace(&id, &unknown);
        assert_eq!(text, unknown_body.to_string());
    };
    for path in [
        format!("/v1/jobs/{id}"),
        format!("/v1/jobs/{id}/result"),
        format!("/v1/jobs/{id}/events"),
    ] {
        let r = get_as(&stack, &path, BOB).await;
        same_as_unknown(problem(r, StatusCode::NOT_FOUND).await);
    }
    let cancel = bearer(stack.http.delete(stack.url(&format!("/v1/jobs/{id}"))), BOB)
        .send()
        .await
        .unwrap();
    same_as_unknown(problem(cancel, StatusCode::NOT_FOUND).await);
    // A long-poll by Bob does not wait on Alice's job either.
    let started = Instant::now();
    let poll = bearer(stack.http.get(stack.url(&loc)), BOB)
        .header("prefer", "wait=5")
        .send()
        .await
        .unwrap();
    problem(poll, StatusCode::NOT_FOUND).await;
    assert!(started.elapsed() < Duration::from_secs(4));

    // Lists: each tenant sees its own jobs only.
    let list = |key: &'static str| {
        let request = bearer(stack.http.get(stack.url("/v1/jobs")), key);
        async move {
            let body: Value = request.send().await.unwrap().json().await.unwrap();
            body["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|j| j["id"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(list(ALICE).await, vec![id.clone()]);
    assert!(list(BOB).await.is_empty());

    // The same Idempotency-Key in another tenant is another record: Bob gets his own job.
    let idem = |key: &str| {
        bearer(stack.http_no_redirect.post(stack.url("/v1/jobs")), key)
            .header("idempotency-key", "order-1")
            .json(&job)
    };
    let alice_first = location(&idem(ALICE).send().await.unwrap());
    let alice_again = location(&idem(ALICE).send().await.unwrap());
    let bob_first = location(&idem(BOB).send().await.unwrap());
    assert_eq!(id_of(&alice_first), id_of(&alice_again));
    assert_ne!(id_of(&alice_first), id_of(&bob_first));

    // Bob can cancel his own job, and Alice cannot see it.
    let bob_id = id_of(&bob_first);
    let r = get_as(&stack, &format!("/v1/jobs/{bob_id}"), ALICE).await;
    problem(r, StatusCode::NOT_FOUND).await;
    let r = bearer(
        stack.http.delete(stack.url(&format!("/v1/jobs/{bob_id}"))),
        BOB,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    // Alice's job is still queued: Bob's cancel never touched it.
    let r = get_as(&stack, &loc, ALICE).await;
    let doc: Value = r.json().await.unwrap();
    assert_eq!(doc["status"], "queued");

    // The fleet is for operators.
    let workers = |key: &str| bearer(stack.http.get(stack.url("/v1/workers")), key).send();
    problem(workers(ALICE).await.unwrap(), StatusCode::FORBIDDEN).await;
    assert_eq!(workers(OPS).await.unwrap().status(), StatusCode::OK);
    // So is the overview behind the dashboard; its counts are the operator's tenant's.
    let overview = |key: &str| bearer(stack.http.get(stack.url("/v1/overview")), key).send();
    problem(overview(ALICE).await.unwrap(), StatusCode::FORBIDDEN).await;
    let figures: Value = overview(OPS).await.unwrap().json().await.unwrap();
    assert_eq!(figures["jobs_by_state"]["queued"], 2, "{figures}");
    let anonymous = stack
        .http
        .get(stack.url("/v1/overview"))
        .send()
        .await
        .unwrap();
    problem(anonymous, StatusCode::UNAUTHORIZED).await;

    // The key itself never reaches the logs.
    let log = std::fs::read_to_string(stack.log_file("api")).unwrap();
    for key in [ALICE, OPS, BOB] {
        assert!(!log.contains(key), "an API key was logged");
    }
}

fn sign(secret: &str, id: &str, tenant: &str, exp: i64) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("arr-v1\n{id}\n{tenant}\n{exp}").as_bytes());
    URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
}

#[tokio::test]
async fn signed_urls_grant_reading_one_job_until_they_expire() {
    let options = with_signing(with_auth(StackOptions::default()));
    let stack = Stack::start_with("sec-signed", options).await;
    let accepted = submit_as(&stack, ALICE, &json!({"type": "echo", "input": {"n": 7}})).await;
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    let loc = location(&accepted);
    assert!(
        loc.contains("?tenant=acme&exp=") && loc.contains("&kid=k2&sig="),
        "{loc}"
    );
    let id = id_of(&loc);

    // Without any key: the signed Location polls through to the result (303 → signed result).
    let done = stack.wait(&loc, Duration::from_secs(30)).await;
    assert_eq!(done.status(), StatusCode::OK);
    assert_eq!(done.json::<Value>().await.unwrap(), json!({"n": 7}));
    let see_other = stack
        .http_no_redirect
        .get(stack.url(&loc))
        .send()
        .await
        .unwrap();
    assert_eq!(see_other.status(), StatusCode::SEE_OTHER);
    let result_loc = location(&see_other);
    assert!(
        result_loc.starts_with(&format!("/v1/jobs/{id}/result?tenant=acme")),
        "{result_loc}"
    );
    let events = stack
        .http
        .get(stack.url(&loc.replacen('?', "/events?", 1)))
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), StatusCode::OK);

    // The plain path needs a key.
    let plain = stack
        .http
        .get(stack.url(&format!("/v1/jobs/{id}")))
        .send()
        .await
        .unwrap();
    problem(plain, StatusCode::UNAUTHORIZED).await;

    let query = loc.split_once('?').unwrap().1.to_owned();
    let get = |path: String| stack.http_no_redirect.get(stack.url(&path)).send();
    // Tampered: another tenant, another expiry, another key id, a flipped signature byte,
    // another job, a parameter given twice, one missing.
    let exp: i64 = query
        .split("exp=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let sig = query.split("sig=").nth(1).unwrap().to_owned();
    let mut flipped = sig.clone().into_bytes();
    flipped[3] = if flipped[3] == b'A' { b'B' } else { b'A' };
    let other = submit_as(&stack, ALICE, &json!({"type": "echo", "input": 1})).await;
    let other_id = id_of(&location(&other));
    for bad in [
        format!(
            "/v1/jobs/{id}?{}",
            query.replace("tenant=acme", "tenant=globex")
        ),
        format!(
            "/v1/jobs/{id}?{}",
            query.replace(&format!("exp={exp}"), &format!("exp={}", exp + 60))
        ),
        format!("/v1/jobs/{id}?{}", query.replace("kid=k2", "kid=k1")),
        format!(
            "/v1/jobs/{id}?{}",
            query.replace(&sig, std::str::from_utf8(&flipped).unwrap())
        ),
        format!("/v1/jobs/{other_id}?{query}"),
        format!("/v1/jobs/{id}?{query}&sig={sig}"),
        format!(
            "/v1/jobs/{id}?{}",
            query.replace(&format!("&sig={sig}"), "")
        ),
        format!(
            "/v1/jobs/{id}/result?{}",
            query.replace("kid=k2", "kid=nope")
        ),
    ] {
        let body = problem(get(bad.clone()).await.unwrap(), StatusCode::FORBIDDEN).await;
        assert!(
            body["detail"].as_str().unwrap().contains("signed URL"),
            "{bad}: {body}"
        );
    }
    // A signed URL reads; it does not cancel or list.
    let delete = stack.http.delete(stack.url(&loc)).send().await.unwrap();
    problem(delete, StatusCode::FORBIDDEN).await;
    let list = stack
        .http
        .get(stack.url(&format!("/v1/jobs?{query}")))
        .send()
        .await
        .unwrap();
    problem(list, StatusCode::FORBIDDEN).await;

    // Expired: a correct signature whose time has passed.
    let past = chrono::Utc::now().timestamp() - 10;
    let expired = format!(
        "/v1/jobs/{id}?tenant=acme&exp={past}&kid=k2&sig={}",
        sign(K2, &id, "acme", past)
    );
    let body = problem(get(expired).await.unwrap(), StatusCode::FORBIDDEN).await;
    assert!(
        body["detail"].as_str().unwrap().contains("expired"),
        "{body}"
    );

    // Rotation: k1 (rotated out, still within its end) verifies; k0 (past its end) does not.
    let future = chrono::Utc::now().timestamp() + 600;
    let by = |kid: &str, secret: &str| {
        format!(
            "/v1/jobs/{id}?tenant=acme&exp={future}&kid={kid}&sig={}",
            sign(secret, &id, "acme", future)
        )
    };
    assert_eq!(
        get(by("k1", K1)).await.unwrap().status(),
        StatusCode::SEE_OTHER
    );
    let body = problem(get(by("k0", K0)).await.unwrap(), StatusCode::FORBIDDEN).await;
    assert!(
        body["detail"].as_str().unwrap().contains("retired"),
        "{body}"
    );
    // The OpenAPI document says so: with auth on, the key is required except to read a job,
    // which the four signed-URL parameters also allow.
    let doc: Value = stack.get_json("/openapi.json").await;
    assert_eq!(
        doc["paths"]["/v1/jobs"]["post"]["security"],
        json!([{"bearer": []}])
    );
    let read = &doc["paths"]["/v1/jobs/{id}"]["get"];
    assert!(read["security"].as_array().unwrap().contains(&json!({})));
    let params: Vec<&str> = read["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    for name in ["tenant", "exp", "kid", "sig"] {
        assert!(params.contains(&name), "{name} not documented: {params:?}");
    }
    // A key's secret does not sign for another key id.
    problem(get(by("k2", K1)).await.unwrap(), StatusCode::FORBIDDEN).await;

    // The refused reads are in the access log, by path alone: no signature reaches the log.
    let log = std::fs::read_to_string(stack.log_file("api")).unwrap();
    assert!(
        log.contains(&format!("GET /v1/jobs/{id} 403 ")),
        "refused reads are logged at info"
    );
    assert!(!log.contains("sig="), "a signed URL's signature was logged");
}

#[tokio::test]
async fn rate_limits_and_wait_caps_answer_429_with_retry_after() {
    let options = with_auth(StackOptions::default().workers(0))
        .api_env("APP__LIMITS__SUBMIT_PER_SECOND", "1")
        .api_env("APP__LIMITS__SUBMIT_BURST", "2")
        .api_env("APP__LIMITS__POLL_PER_SECOND", "1")
        .api_env("APP__LIMITS__POLL_BURST", "3")
        .api_env("APP__LIMITS__MAX_WAITS_PER_KEY", "1")
        .api_env("APP__LIMITS__MAX_QUEUE_DEPTH", "0")
        // A closed event stream is noticed (and its slot freed) at its next write.
        .api_env("APP__HTTP__SSE_KEEPALIVE_SECONDS", "1");
    let stack = Stack::start_with("sec-rate", options).await;
    let job = json!({"type": "echo", "input": 1});
    let first = submit_as(&stack, ALICE, &job).await;
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let loc = location(&first);
    assert_eq!(
        submit_as(&stack, ALICE, &job).await.status(),
        StatusCode::ACCEPTED
    );
    let limited = submit_as(&stack, ALICE, &job).await;
    let retry: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    problem(limited, StatusCode::TOO_MANY_REQUESTS).await;
    assert_eq!(
        stack.queue_len(&stack.work_queue()).await,
        2,
        "a limited submit queued a job"
    );
    // Another key has its own budget.
    assert_eq!(
        submit_as(&stack, BOB, &job).await.status(),
        StatusCode::ACCEPTED
    );
    // After the advertised wait, Alice gets through again.
    tokio::time::sleep(Duration::from_secs(retry)).await;
    assert_eq!(
        submit_as(&stack, ALICE, &job).await.status(),
        StatusCode::ACCEPTED
    );

    // Polls: a burst of 3, then 429.
    let poll = || bearer(stack.http.get(stack.url(&loc)), OPS).send();
    for _ in 0..3 {
        assert_eq!(poll().await.unwrap().status(), StatusCode::ACCEPTED);
    }
    let limited = poll().await.unwrap();
    assert!(limited.headers().contains_key("retry-after"));
    problem(limited, StatusCode::TOO_MANY_REQUESTS).await;

    // One open wait per key: an event stream holds it; a second stream or a long-poll is 429.
    let events = format!("{loc}/events");
    let stream = get_as(&stack, &events, ALICE).await;
    assert_eq!(stream.status(), StatusCode::OK);
    let second = get_as(&stack, &events, ALICE).await;
    assert_eq!(second.headers()["retry-after"], "1");
    let body = problem(second, StatusCode::TOO_MANY_REQUESTS).await;
    assert_eq!(
        body["type"].as_str().unwrap().rsplit('/').next(),
        Some("too-many-waits")
    );
    // A long-poll needs a slot too.
    let long_poll = bearer(stack.http.get(stack.url(&loc)), ALICE)
        .header("prefer", "wait=2")
        .send()
        .await
        .unwrap();
    problem(long_poll, StatusCode::TOO_MANY_REQUESTS).await;
    // Closing the stream frees the slot.
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        tokio::time::sleep(Duration::from_millis(1100)).await; // the poll budget refills
        let again = get_as(&stack, &events, ALICE).await;
        if again.status() == StatusCode::OK {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the slot was never freed: {}",
            again.status()
        );
    }

    // The refusals are visible in /readyz.
    let ready: Value = stack.get_json("/readyz").await;
    let limits = &ready["limits"];
    assert!(
        limits["rate_limits"]["submit_limited_total"]
            .as_u64()
            .unwrap()
            >= 1,
        "{ready}"
    );
    assert!(
        limits["rate_limits"]["poll_limited_total"]
            .as_u64()
            .unwrap()
            >= 1,
        "{ready}"
    );
    assert!(
        limits["waits"]["refused_total"].as_u64().unwrap() >= 1,
        "{ready}"
    );
}

#[tokio::test]
async fn a_deep_queue_sheds_submits_with_503() {
    let options = StackOptions::default()
        .workers(0)
        .api_env("APP__LIMITS__MAX_QUEUE_DEPTH", "3");
    let stack = Stack::start_with("sec-admission", options).await;
    let job = json!({"type": "echo", "input": 1});
    for _ in 0..4 {
        assert_eq!(stack.submit(&job).await.status(), StatusCode::ACCEPTED);
    }
    // The depth is measured at most once a second: within a few, submits are shed.
    let deadline = Instant::now() + Duration::from_secs(10);
    let shed = loop {
        let response = stack.submit(&job).await;
        if response.status() == StatusCode::SERVICE_UNAVAILABLE {
            break response;
        }
        assert!(Instant::now() < deadline, "never shed");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(shed.headers().contains_key("retry-after"));
    let body = problem(shed, StatusCode::SERVICE_UNAVAILABLE).await;
    assert!(
        body["type"].as_str().unwrap().ends_with("overloaded"),
        "{body}"
    );
    // Once shedding, the backlog stops growing: more submits queue nothing.
    let queued = stack.queue_len(&stack.work_queue()).await;
    for _ in 0..5 {
        let response = stack.submit(&job).await;
        problem(response, StatusCode::SERVICE_UNAVAILABLE).await;
    }
    assert_eq!(stack.queue_len(&stack.work_queue()).await, queued);
    let ready: Value = stack.get_json("/readyz").await;
    let admission = &ready["limits"]["admission"];
    assert_eq!(admission["shedding"], true, "{ready}");
    assert_eq!(admission["max_queue_depth"], 3);
    assert!(admission["shed_total"].as_u64().unwrap() >= 1);
    let log = std::fs::read_to_string(stack.log_file("api")).unwrap();
    assert!(log.contains("shedding submits"));
}

#[tokio::test]
async fn cors_lets_allowed_origins_read_the_protocol_headers() {
    let options = StackOptions::default().workers(0).api_env(
        "APP__CORS__ALLOWED_ORIGINS",
        "http://allowed.example,http://localhost:8000",
    );
    let stack = Stack::start_with("sec-cors", options).await;
    let preflight = |origin: &str| {
        stack
            .http
            .request(reqwest::Method::OPTIONS, stack.url("/v1/jobs"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type, idempotency-key",
            )
            .send()
    };
    let allowed = preflight("http://allowed.example").await.unwrap();
    assert!(allowed.status().is_success(), "{}", allowed.status());
    let h = allowed.headers();
    assert_eq!(h["access-control-allow-origin"], "http://allowed.example");
    let methods = h["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .to_uppercase();
    assert!(
        methods.contains("POST") && methods.contains("DELETE"),
        "{methods}"
    );
    let headers = h["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_lowercase();
    assert!(
        headers.contains("authorization") && headers.contains("idempotency-key"),
        "{headers}"
    );

    let denied = preflight("http://evil.example").await.unwrap();
    assert!(!denied.headers().contains_key("access-control-allow-origin"));

    // The real request from an allowed origin may read Location and Retry-After.
    let response = stack
        .http
        .post(stack.url("/v1/jobs"))
        .header("origin", "http://localhost:8000")
        .json(&json!({"type": "echo", "input": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let h = response.headers();
    assert_eq!(h["access-control-allow-origin"], "http://localhost:8000");
    let exposed = h["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_lowercase();
    for name in ["location", "retry-after", "preference-applied", "etag"] {
        assert!(exposed.contains(name), "{name} not exposed: {exposed}");
    }
    // From a disallowed origin the request is served (CORS is the browser's check), but the
    // browser gets no permission to hand it to the page.
    let response = stack
        .http
        .post(stack.url("/v1/jobs"))
        .header("origin", "http://evil.example")
        .json(&json!({"type": "echo", "input": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert!(!response
        .headers()
        .contains_key("access-control-allow-origin"));
}

#[tokio::test]
async fn oversized_headers_are_431_problems_and_queue_nothing() {
    let stack = Stack::start_with("sec-headers", StackOptions::default().workers(0)).await;
    let response = stack
        .http
        .post(stack.url("/v1/jobs"))
        .header("x-padding", "a".repeat(20_000))
        .json(&json!({"type": "echo", "input": 1}))
        .send()
        .await
        .unwrap();
    let body = problem(response, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE).await;
    assert!(body["detail"].as_str().unwrap().contains("16384"), "{body}");
    assert_eq!(stack.queue_len(&stack.work_queue()).await, 0);
    // Just under the limit is fine.
    let response = stack
        .http
        .post(stack.url("/v1/jobs"))
        .header("x-padding", "a".repeat(10_000))
        .json(&json!({"type": "echo", "input": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
}

#[tokio::test]
async fn the_client_library_uses_keys_and_hands_out_signed_urls() {
    let options = with_signing(with_auth(StackOptions::default()));
    let stack = Stack::start_with("sec-client", options).await;
    let alice = client::Client::builder(&stack.base)
        .api_key(ALICE)
        .build()
        .unwrap();
    let job = alice
        .submit("echo", json!({"hello": "valet"}))
        .await
        .unwrap();
    assert!(
        job.location.query().unwrap_or("").contains("sig="),
        "{}",
        job.location
    );

    // Someone with only the signed URL (no key) waits for the result, following the 303.
    let anonymous = client::Client::new(&stack.base).unwrap();
    let valet = client::JobHandle::from_url(&anonymous, job.location.as_str())
        .unwrap()
        .without_api_key();
    let done = valet.wait(Duration::from_secs(30)).await.unwrap();
    assert_eq!(done.result, json!({"hello": "valet"}));
    // But cannot cancel with it.
    assert!(valet.cancel().await.is_err());

    // Without a key the client gets the 401 as a typed error; Bob's key does not see the job.
    let nobody = client::Client::new(&stack.base).unwrap();
    assert!(nobody.submit("echo", json!(1)).await.is_err());
    let bob = client::Client::builder(&stack.base)
        .api_key(BOB)
        .build()
        .unwrap();
    assert!(bob.job(&job.id).status().await.is_err());
    assert_eq!(alice.job(&job.id).status().await.unwrap().id, job.id);
}
