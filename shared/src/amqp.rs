//! Connecting to one of several RabbitMQ nodes. `amqp.url` may list the nodes of a cluster,
//! separated by commas; a connection goes to the first that answers, and a reconnection starts
//! with the node *after* the one last used, so a client whose node died moves on at once (and
//! reconnections spread round the cluster) instead of waiting for the dead node first.
//!
//! With quorum queues (`amqp.queue_type = "quorum"`) any node serves the queue, so it does not
//! matter which one a facade or a worker lands on.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lapin::{Connection, ConnectionProperties};

use crate::configuration::{redact_url, AmqpSettings};

#[derive(Debug, thiserror::Error)]
#[error("no broker node reachable: {0}")]
pub struct ConnectError(String);

/// The broker nodes of the configuration and where the next connection starts. Cheap to
/// clone; clones share the position.
#[derive(Clone)]
pub struct Nodes {
    urls: Arc<Vec<String>>,
    next: Arc<AtomicUsize>,
    timeout: Duration,
}

impl Nodes {
    pub fn new(settings: &AmqpSettings) -> Self {
        Nodes {
            urls: Arc::new(settings.urls()),
            next: Arc::new(AtomicUsize::new(0)),
            timeout: Duration::from_millis(settings.connect_timeout_ms),
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
        let mut failures = Vec::with_capacity(count);
        for offset in 0..count {
            let index = (start + offset) % count;
            let url = &self.urls[index];
            let attempt = Connection::connect(url, ConnectionProperties::default());
            let outcome = match tokio::time::timeout(self.timeout, attempt).await {
                Ok(Ok(connection)) => Ok(connection),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("timed out".to_owned()),
            };
            match outcome {
                Ok(connection) => {
                    // The next reconnection (this one's connection was lost) tries the
                    // following node first.
                    self.next.store((index + 1) % count, Ordering::Relaxed);
                    return Ok((connection, redact_url(url)));
                }
                Err(e) => {
                    if count > 1 {
                        tracing::warn!(node = %redact_url(url), error = %e, "broker node unreachable; trying the next");
                    }
                    failures.push(format!("{}: {e}", redact_url(url)));
                }
            }
        }
        Err(ConnectError(failures.join("; ")))
    }
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
