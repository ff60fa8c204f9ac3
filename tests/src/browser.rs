//! A headless Chromium driven over WebDriver (chromedriver), for tests that look at the
//! dashboard as a person would. The few WebDriver commands the tests need are spoken directly
//! with reqwest (already a dependency), rather than through a WebDriver client crate.
//!
//! Chromium and chromedriver are Debian's `chromium` and `chromium-driver` packages, installed
//! by `scripts/install-browser.sh` (which `.ci/run` calls). A missing browser fails the test
//! with that advice: it is never skipped silently. `CHROMIUM` and `CHROMEDRIVER` name other
//! binaries.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::{client_builder, free_port};

/// The key under which WebDriver returns an element reference (W3C).
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Finds an executable: the environment variable if set, else the first name on `PATH`.
fn find_binary(env: &str, names: &[&str]) -> PathBuf {
    if let Ok(path) = std::env::var(env) {
        let path = PathBuf::from(path);
        assert!(path.is_file(), "{env}={} is not a file", path.display());
        return path;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in names {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "{} not found on PATH (set {env} to use another): the browser tests need Debian's \
         `chromium` and `chromium-driver` packages; install them with \
         `scripts/install-browser.sh` (as root), which .ci/run runs before the tests",
        names.join(" or ")
    );
}

/// Chromium and chromedriver, or a panic that says how to install them. Call it first in a
/// test, so that a missing browser fails the test at once.
pub fn require() -> (PathBuf, PathBuf) {
    (
        find_binary("CHROMIUM", &["chromium", "chromium-browser"]),
        find_binary("CHROMEDRIVER", &["chromedriver"]),
    )
}

/// One element of the page.
#[derive(Debug, Clone)]
pub struct Element(String);

/// A browser session: chromedriver and the Chromium it started, in a process group of their
/// own that is killed when this is dropped, with a fresh profile directory.
pub struct Browser {
    driver: Child,
    http: reqwest::Client,
    session: String,
    base: String,
    profile: PathBuf,
}

impl Browser {
    /// Starts chromedriver on a free port and opens a headless Chromium session with a
    /// window of `width` × `height` and the browser's console log recorded.
    pub async fn start(width: u32, height: u32) -> Browser {
        let (chromium, chromedriver) = require();
        let port = free_port();
        let profile =
            std::env::temp_dir().join(format!("e2e-chromium-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&profile).expect("profile dir");
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own group, so that Drop can kill chromedriver and every Chromium process.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromedriver.display()));
        let http = client_builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("client");
        let base = format!("http://127.0.0.1:{port}");
        let mut browser = Browser {
            driver,
            http,
            session: String::new(),
            base,
            profile,
        };
        browser.wait_driver().await;
        let args = vec![
            "--headless".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            format!("--user-data-dir={}", browser.profile.display()),
            format!("--window-size={width},{height}"),
        ];
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": chromium, "args": args },
            "goog:loggingPrefs": { "browser": "ALL" },
        }}});
        let answer = browser.raw("POST", "/session", Some(caps)).await;
        browser.session = answer["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session from chromedriver: {answer}"))
            .to_owned();
        browser
    }

    async fn wait_driver(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = self.http.get(format!("{}/status", self.base)).send().await {
                if let Ok(v) = r.json::<Value>().await {
                    if v["value"]["ready"] == json!(true) {
                        return;
                    }
                }
            }
            assert!(Instant::now() < deadline, "chromedriver never became ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// One WebDriver command; returns its `value`, panicking on a WebDriver error.
    async fn raw(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        match self.try_raw(method, path, body).await {
            Ok(v) => v,
            Err(e) => panic!("WebDriver {method} {path}: {e}"),
        }
    }

    async fn try_raw(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, Value> {
        let url = format!("{}{path}", self.base);
        let request = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            _ => self.http.post(url).json(&body.unwrap_or_else(|| json!({}))),
        };
        let response = request.send().await.map_err(|e| json!(e.to_string()))?;
        let ok = response.status().is_success();
        let v: Value = response.json().await.map_err(|e| json!(e.to_string()))?;
        if ok {
            Ok(v["value"].clone())
        } else {
            Err(v["value"].clone())
        }
    }

    fn at(&self, path: &str) -> String {
        format!("/session/{}{path}", self.session)
    }

    pub async fn goto(&self, url: &str) {
        self.raw("POST", &self.at("/url"), Some(json!({ "url": url })))
            .await;
    }

    /// The first element matching `css`, if there is one now.
    pub async fn find(&self, css: &str) -> Option<Element> {
        let body = json!({ "using": "css selector", "value": css });
        let v = self
            .try_raw("POST", &self.at("/element"), Some(body))
            .await
            .ok()?;
        v[ELEMENT_KEY].as_str().map(|id| Element(id.to_owned()))
    }

    /// Waits (up to `timeout`) for an element matching `css`.
    pub async fn wait_for(&self, css: &str, timeout: Duration) -> Element {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.find(css).await {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "no element {css} within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The visible text of the element matching `css` ("" if there is none).
    pub async fn text(&self, css: &str) -> String {
        let Some(e) = self.find(css).await else {
            return String::new();
        };
        self.try_raw("GET", &self.at(&format!("/element/{}/text", e.0)), None)
            .await
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    /// Waits (up to `timeout`) until `check` holds for the text of `css`; returns that text.
    pub async fn wait_text(
        &self,
        css: &str,
        timeout: Duration,
        what: &str,
        check: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.text(css).await;
            if check(&text) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: {css} still reads {text:?} after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn click(&self, css: &str) {
        let e = self.wait_for(css, Duration::from_secs(10)).await;
        self.raw("POST", &self.at(&format!("/element/{}/click", e.0)), None)
            .await;
    }

    /// Replaces the value of an input or text area with `text`, typed as keys.
    pub async fn fill(&self, css: &str, text: &str) {
        let e = self.wait_for(css, Duration::from_secs(10)).await;
        self.raw("POST", &self.at(&format!("/element/{}/clear", e.0)), None)
            .await;
        self.raw(
            "POST",
            &self.at(&format!("/element/{}/value", e.0)),
            Some(json!({ "text": text })),
        )
        .await;
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page; returns what it
    /// returns.
    pub async fn execute(&self, script: &str, args: Value) -> Value {
        self.raw(
            "POST",
            &self.at("/execute/sync"),
            Some(json!({ "script": script, "args": args })),
        )
        .await
    }

    /// Saves a PNG of the viewport to `path`.
    pub async fn screenshot(&self, path: &Path) {
        let v = self.raw("GET", &self.at("/screenshot"), None).await;
        let png = base64_decode(v.as_str().expect("screenshot data")).expect("base64 PNG");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("screenshot dir");
        }
        std::fs::write(path, png).expect("write screenshot");
    }

    /// The browser console's entries since the last call (`level`, `message`, `source`):
    /// console calls, uncaught errors, failed loads and Content-Security-Policy violations.
    pub async fn console_log(&self) -> Vec<Value> {
        let v = self
            .raw(
                "POST",
                &self.at("/se/log"),
                Some(json!({ "type": "browser" })),
            )
            .await;
        v.as_array().cloned().unwrap_or_default()
    }

    /// Ends the session (Chromium exits); Drop still kills whatever is left.
    pub async fn quit(mut self) {
        let _ = self.try_raw("DELETE", &self.at(""), None).await;
        self.session.clear();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // chromedriver's group (its own: `process_group(0)`) holds the Chromium processes it
        // started. The `--` matters: procps `kill -KILL -1234` reads `-1234` as options and
        // signals every process there is.
        let pgid = self.driver.id();
        if pgid > 1 {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{pgid}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Standard base64 (with padding), as WebDriver sends screenshots.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
    {
        acc = (acc << 6) | ALPHABET.iter().position(|&a| a == c)? as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_decodes() {
        assert_eq!(super::base64_decode("Zm9vYmFy").unwrap(), b"foobar");
        assert_eq!(super::base64_decode("Zm9vYg==").unwrap(), b"foob");
        assert!(super::base64_decode("Zm9v!").is_none());
    }
}
