//! A webhook receiver for the tests: a tiny HTTP/1.1 server on 127.0.0.1 that records every
//! request and answers with a status the test chooses (per request, or per `Webhook-Id`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// How long [`Receiver::next`] waits.
const NEXT_WAIT: Duration = Duration::from_secs(60);

/// One request the receiver got.
#[derive(Debug)]
pub struct Received {
    pub request_line: String,
    /// Header names in lower case.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    /// The status it was answered with.
    pub answered: u16,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("webhook body is JSON")
    }
}

/// Chooses the answer to a request: given the request and how many requests with its
/// `Webhook-Id` came before it.
pub type Answer = dyn Fn(&Received, usize) -> u16 + Send + Sync;

pub struct Receiver {
    pub port: u16,
    requests: mpsc::UnboundedReceiver<Received>,
    count: Arc<AtomicUsize>,
}

impl Receiver {
    /// Answers the given statuses in the order requests arrive, then 200.
    pub async fn start(statuses: &[u16]) -> Receiver {
        let statuses = statuses.to_vec();
        let n = AtomicUsize::new(0);
        Self::start_with(Duration::ZERO, move |_, _| {
            let i = n.fetch_add(1, Ordering::SeqCst);
            statuses.get(i).copied().unwrap_or(200)
        })
        .await
    }

    /// Answers what `answer` says, each after `delay`.
    pub async fn start_with(
        delay: Duration,
        answer: impl Fn(&Received, usize) -> u16 + Send + Sync + 'static,
    ) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().unwrap().port();
        let (tx, requests) = mpsc::unbounded_channel();
        let count = Arc::new(AtomicUsize::new(0));
        let answer: Arc<Answer> = Arc::new(answer);
        let seen: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let counter = count.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let (tx, answer, seen, counter) =
                    (tx.clone(), answer.clone(), seen.clone(), counter.clone());
                tokio::spawn(async move {
                    let Some(mut request) = read_request(&mut socket).await else {
                        return;
                    };
                    counter.fetch_add(1, Ordering::SeqCst);
                    let id = request
                        .headers
                        .get("webhook-id")
                        .cloned()
                        .unwrap_or_default();
                    let before = {
                        let mut seen = seen.lock().unwrap();
                        let n = seen.entry(id).or_default();
                        *n += 1;
                        *n - 1
                    };
                    let status = answer(&request, before);
                    request.answered = status;
                    tokio::time::sleep(delay).await;
                    let mut head = format!(
                        "HTTP/1.1 {status} Whatever\r\ncontent-length: 0\r\nconnection: close\r\n"
                    );
                    if (300..400).contains(&status) {
                        // Following it would land on this receiver again, within one attempt.
                        head.push_str("location: /redirected\r\n");
                    }
                    head.push_str("\r\n");
                    // Recorded only once the answer is out: a request whose sender died first
                    // was never answered.
                    if socket.write_all(head.as_bytes()).await.is_ok() {
                        let _ = tx.send(request);
                    }
                    let _ = socket.shutdown().await;
                });
            }
        });
        Receiver {
            port,
            requests,
            count,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook?x=1", self.port)
    }

    /// The next request answered (waits up to a minute).
    pub async fn next(&mut self) -> Received {
        tokio::time::timeout(NEXT_WAIT, self.requests.recv())
            .await
            .expect("no webhook arrived in time")
            .expect("receiver stopped")
    }

    /// The requests answered so far, without waiting.
    pub fn drain(&mut self) -> Vec<Received> {
        let mut all = Vec::new();
        while let Ok(request) = self.requests.try_recv() {
            all.push(request);
        }
        all
    }

    /// Requests read so far (answered or not).
    pub fn received(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
}

async fn read_request(socket: &mut TcpStream) -> Option<Received> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next()?.to_owned();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some(Received {
        request_line,
        headers,
        body,
        answered: 0,
    })
}
