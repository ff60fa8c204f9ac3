//! Connecting to one of several RabbitMQ nodes. `amqp.url` may list the nodes of a cluster,
//! separated by commas; a connection goes to the first that answers, and a reconnection starts
//! with the node *after* the one last used, so a client whose node died moves on at once (and
//! reconnections spread round the cluster) instead of waiting for the dead node first.
//!
//! With quorum queues (`amqp.queue_type = "quorum"`) any node serves the queue, so it does not
//! matter which one a facade or a worker lands on.
//!
//! `amqps://` nodes are reached through rustls with the roots and client certificate of
//! `crate::tls` (lapin's own connector would trust a CA file in addition to the system's
//! roots); a handshake that fails says so, with the node and rustls's reason.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lapin::tcp::RustlsConnector;
use lapin::uri::AMQPUri;
use lapin::{AsyncTcpStream, Connection, ConnectionProperties};

use crate::configuration::{redact_url, AmqpSettings};

#[derive(Debug, thiserror::Error)]
#[error("no broker node reachable: {message}")]
pub struct ConnectError {
    message: String,
    tls: bool,
}

impl ConnectError {
    /// Whether a TLS handshake (a certificate, a host name) is what failed, on some node: a
    /// configuration to fix rather than a broker that is not up yet.
    pub fn is_tls(&self) -> bool {
        self.tls
    }
}

/// Why one node could not be reached.
struct Failure {
    message: String,
    tls: bool,
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Failure {
            message,
            tls: false,
        }
    }
}

/// The broker nodes of the configuration and where the next connection starts. Cheap to
/// clone; clones share the position.
#[derive(Clone)]
pub struct Nodes {
    urls: Arc<Vec<String>>,
    next: Arc<AtomicUsize>,
    timeout: Duration,
    /// For `amqps://` nodes: the connector, or why there is none (no system roots).
    tls: Option<Result<RustlsConnector, String>>,
}

impl Nodes {
    pub fn new(settings: &AmqpSettings) -> Self {
        let urls = settings.urls();
        let tls = urls
            .iter()
            .any(|u| is_tls(u))
            .then(|| settings.tls.amqp_client_config().map(RustlsConnector::from));
        Nodes {
            urls: Arc::new(urls),
            next: Arc::new(AtomicUsize::new(0)),
            timeout: Duration::from_millis(settings.connect_timeout_ms),
            tls,
        }
    }

    /// How many nodes are configured.
    pub fn len(&self) -> usize {
        self.urls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.urls.is_empty()
    }

    /// Connects to the first node that answers, trying each once, starting where the last
    /// successful connection left off; each attempt is bounded by `amqp.connect_timeout_ms`.
    /// Returns the connection and the (redacted) URL of the node.
    pub async fn connect(&self) -> Result<(Connection, String), ConnectError> {
        let count = self.urls.len();
        let start = self.next.load(Ordering::Relaxed);
        let mut failures: Vec<String> = Vec::with_capacity(count);
        let mut tls = false;
        for offset in 0..count {
            let index = (start + offset) % count;
            let url = &self.urls[index];
            let attempt = async {
                match (&self.tls, is_tls(url)) {
                    (Some(Ok(connector)), true) => connect_tls(url, connector.clone()).await,
                    // No roots to verify with: as much a TLS setup to fix as a bad CA.
                    (Some(Err(e)), true) => Err(Failure {
                        message: e.clone(),
                        tls: true,
                    }),
                    _ => Connection::connect(url, ConnectionProperties::default())
                        .await
                        .map_err(|e| Failure::from(e.to_string())),
                }
            };
            let outcome = match tokio::time::timeout(self.timeout, attempt).await {
                Ok(outcome) => outcome,
                Err(_) => Err(Failure::from("timed out".to_owned())),
            };
            match outcome {
                Ok(connection) => {
                    // The next reconnection (this one's connection was lost) tries the
                    // following node first.
                    self.next.store((index + 1) % count, Ordering::Relaxed);
                    return Ok((connection, redact_url(url)));
                }
                Err(Failure {
                    message,
                    tls: tls_failed,
                }) => {
                    if count > 1 {
                        tracing::warn!(node = %redact_url(url), error = %message, "broker node unreachable; trying the next");
                    }
                    tls |= tls_failed;
                    failures.push(format!("{}: {message}", redact_url(url)));
                }
            }
        }
        Err(ConnectError {
            message: failures.join("; "),
            tls,
        })
    }
}

fn is_tls(url: &str) -> bool {
    url.starts_with("amqps://")
}

/// An `amqps://` connection through `connector`, verified against the URL's host.
async fn connect_tls(url: &str, connector: RustlsConnector) -> Result<Connection, Failure> {
    let uri: AMQPUri = url.parse().map_err(Failure::from)?;
    let endpoint = format!("{}:{}", uri.authority.host, uri.authority.port);
    let runtime = lapin::runtime::default_runtime().map_err(|e| Failure::from(e.to_string()))?;
    let handshake_failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let failed = handshake_failed.clone();
    Connection::connector(
        uri,
        runtime,
        async move |uri: AMQPUri, runtime| {
            let (host, port) = (uri.authority.host.clone(), uri.authority.port);
            let addrs = runtime.to_socket_addrs((host.clone(), port));
            let stream = AsyncTcpStream::connect(&runtime, addrs).await?;
            stream.into_rustls(&connector, &host).await.map_err(|e| {
                // Said here, so the message names TLS and the node whichever layer shows it.
                let what = match crate::tls::tls_cause(&e) {
                    Some(tls) => {
                        failed.store(true, Ordering::Relaxed);
                        format!("TLS handshake with {host}:{port} failed: {tls}")
                    }
                    None => format!("TLS connection to {host}:{port} failed: {e}"),
                };
                lapin::Error::from(std::io::Error::new(e.kind(), what))
            })
        },
        ConnectionProperties::default(),
    )
    .await
    .map_err(|e| {
        let text = e.to_string();
        Failure {
            message: if text.contains(&endpoint) {
                text
            } else {
                format!("{endpoint}: {text}")
            },
            tls: handshake_failed.load(Ordering::Relaxed),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Settings;

    #[test]
    fn a_list_of_urls_is_split_and_trimmed() {
        let mut amqp = Settings::load(None).unwrap().amqp;
        amqp.url = " amqp://a:1/%2f , amqp://b:2/%2f,,".into();
        assert_eq!(amqp.urls(), ["amqp://a:1/%2f", "amqp://b:2/%2f"]);
        assert_eq!(Nodes::new(&amqp).len(), 2);
    }

    #[tokio::test]
    async fn falls_over_to_the_next_node_and_reports_all_failures() {
        // Two ports nobody listens on: both attempts fail, both are named.
        let dead = |p: u16| format!("amqp://guest:guest@127.0.0.1:{p}/%2f");
        let ports: Vec<u16> = (0..2)
            .map(|_| {
                std::net::TcpListener::bind("127.0.0.1:0")
                    .and_then(|l| l.local_addr())
                    .map(|a| a.port())
                    .unwrap()
            })
            .collect();
        let mut amqp = Settings::load(None).unwrap().amqp;
        amqp.url = format!("{},{}", dead(ports[0]), dead(ports[1]));
        amqp.connect_timeout_ms = 2000;
        let Err(error) = Nodes::new(&amqp).connect().await else {
            panic!("no node is up, yet a connection succeeded");
        };
        let text = error.to_string();
        assert!(text.contains(&ports[0].to_string()), "{text}");
        assert!(text.contains(&ports[1].to_string()), "{text}");
        assert!(!text.contains("guest:guest"), "password leaked: {text}");
    }
}
