//! The README's browser client, as printed there, run by a real headless Chromium in a page of
//! another origin: CORS must let it read `Location` and `Retry-After`, and follow the `303` to
//! the result. The snippet is read from README.md, so the README cannot drift from what works.

use std::time::{Duration, Instant};

use e2e::browser::Browser;
use e2e::{free_port, Stack, StackOptions};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// The JavaScript of the README's "A browser client" section.
fn readme_snippet() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let section = readme
        .split("### A browser client")
        .nth(1)
        .expect("the README has a browser client section");
    let code = section
        .split("```js\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a js block in that section");
    code.to_owned()
}

/// Serves `page` to every request on `port` (the other origin), until the test ends.
async fn serve_page(port: u16, page: String) {
    let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let page = page.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let _ = socket.read(&mut buf).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    page.len()
                );
                let _ = socket.write_all(head.as_bytes()).await;
                let _ = socket.write_all(page.as_bytes()).await;
            });
        }
    });
}

async fn run_snippet(allowed: bool) -> Value {
    let page_port = free_port();
    let page_origin = format!("http://127.0.0.1:{page_port}");
    let allowed_origin = if allowed {
        page_origin.clone()
    } else {
        "http://127.0.0.1:1".to_owned()
    };
    let options = StackOptions::default().api_env("APP__CORS__ALLOWED_ORIGINS", allowed_origin);
    let stack = Stack::start_with("browser-client", options).await;
    // The snippet as printed, pointed at this stack, with a short job.
    let snippet = readme_snippet()
        .replace("http://localhost:8080", &stack.base)
        .replace("seconds: 3", "seconds: 1");
    // console.log is captured into window.__logs; errors into window.__error.
    let page = format!(
        "<!doctype html><html><head><title>client</title></head><body>\n\
         <script>window.__logs = []; const log = console.log;\n\
         console.log = (...a) => {{ window.__logs.push(a); log(...a); }};</script>\n\
         <script type=\"module\">\ntry {{\n{snippet}\n}} catch (e) {{ window.__error = String(e); }}\n\
         window.__done = true;\n</script></body></html>"
    );
    serve_page(page_port, page).await;
    let browser = Browser::start(800, 600).await;
    browser.goto(&format!("{page_origin}/")).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let outcome = loop {
        let state = browser
            .execute(
                "return {done: !!window.__done, logs: window.__logs, error: window.__error || null};",
                json!([]),
            )
            .await;
        if state["done"] == true {
            break state;
        }
        assert!(
            Instant::now() < deadline,
            "the snippet never finished: {state}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    browser.quit().await;
    outcome
}

#[tokio::test]
async fn the_readme_browser_client_works_from_another_origin() {
    let outcome = run_snippet(true).await;
    assert_eq!(outcome["error"], Value::Null, "{outcome}");
    // console.log(res.status, await res.json()): 200 and the sleep job's result.
    let logged = &outcome["logs"][0];
    assert_eq!(logged[0], 200, "{outcome}");
    assert_eq!(logged[1]["slept_seconds"].as_f64(), Some(1.0), "{outcome}");
}

#[tokio::test]
async fn an_origin_that_is_not_allowed_cannot_read_the_answers() {
    let outcome = run_snippet(false).await;
    // The browser refuses the page the POST's answer: fetch rejects (a TypeError).
    let error = outcome["error"].as_str().unwrap_or_default();
    assert!(error.contains("TypeError"), "{outcome}");
    assert_eq!(outcome["logs"], json!([]), "{outcome}");
}
