//! One Redis connection type for both binaries, whether Redis is a single server (`redis.url`)
//! or a Redis Cluster (`redis.cluster_urls`). [`RedisConn`] implements
//! [`redis::aio::ConnectionLike`], so the stores send the same commands, scripts and pipelines
//! to either.
//!
//! What changes on a cluster:
//!
//! - Every command and script must touch keys of one hash slot. A job's keys carry the job id as
//!   a hash tag (`{<id>}`, see `crate::keys`), so the scripts that change a job's state (job
//!   hash and tombstone) stay atomic.
//! - A plain (non-atomic) pipeline may span slots: it is split into one pipeline per slot, sent
//!   concurrently, and the replies are put back in order. Commands on one key keep their order
//!   (they share a slot); commands on different slots may run in another order, which a
//!   non-atomic pipeline never promised to prevent anyway (other clients' commands interleave).
//! - An atomic pipeline (`MULTI`/`EXEC`) must stay within one slot. The few that span slots on a
//!   single server (a job and the jobs index; a worker's record and the worker registry) ask
//!   [`RedisConn::is_cluster`] and are sent as plain pipelines there; each says what it gives up.
//! - Pub/sub is cluster-wide in Redis (a message published on any node reaches subscribers on
//!   every node), so subscribers take a plain connection to one node: [`pubsub`] tries the
//!   configured nodes in turn.
//!
//! TLS: a `rediss://` URL (every node's, on a cluster) connects through rustls, verified
//! against the system's roots or `redis.tls_ca_file` (see `crate::tls`); [`client`] is where
//! every Redis client of both binaries is made, so none of them can miss the CA file.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::try_join_all;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::Slot;
use redis::{
    Arg, Cmd, ConnectionAddr, IntoConnectionInfo, Pipeline, RedisFuture, RedisResult, Value,
};
use tokio::sync::OnceCell;

use crate::configuration::{redact_url, RedisSettings};

/// How hard a connection retries a command before failing it.
#[derive(Debug, Clone, Copy)]
pub struct Retries {
    pub count: usize,
    /// Longest wait between two reconnection attempts.
    pub max_delay: Duration,
}

/// A connection to a single Redis server or to a Redis Cluster. Cheap to clone; clones share
/// the connection (it multiplexes concurrent commands).
#[derive(Clone)]
pub enum RedisConn {
    Single(ConnectionManager),
    Cluster(Arc<LazyCluster>),
}

/// A cluster connection made on first use (so a binary starts while the cluster is down, like
/// the lazy single-server connection), on the runtime that first uses it. A failed attempt is
/// made again by the next command; once made, the connection follows the cluster's topology
/// and reconnects to nodes by itself.
pub struct LazyCluster {
    client: ClusterClient,
    conn: OnceCell<ClusterConnection>,
}

impl LazyCluster {
    async fn get(&self) -> RedisResult<ClusterConnection> {
        self.conn
            .get_or_try_init(|| self.client.get_async_connection())
            .await
            .cloned()
    }
}

impl RedisConn {
    /// Opens (lazily) the connection `settings` describe: the cluster of `cluster_urls` when
    /// it lists any node, else the server at `url`.
    pub fn open(settings: &RedisSettings, retries: Retries) -> RedisResult<RedisConn> {
        let response_timeout = Duration::from_millis(settings.response_timeout_ms);
        let connection_timeout = Duration::from_millis(settings.connection_timeout_ms);
        if settings.is_cluster() {
            let mut builder = ClusterClientBuilder::new(settings.cluster_urls.clone());
            if let Some(certificates) = settings.tls.redis() {
                crate::tls::install_crypto_provider();
                builder = builder.certs(certificates);
            }
            let client = builder
                .connection_timeout(connection_timeout)
                .response_timeout(response_timeout)
                .retries(retries.count as u32)
                .max_retry_wait(retries.max_delay.as_millis() as u64)
                .build()?;
            return Ok(RedisConn::Cluster(Arc::new(LazyCluster {
                client,
                conn: OnceCell::new(),
            })));
        }
        let client = client(settings.url.as_str(), settings)?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(response_timeout))
            .set_connection_timeout(Some(connection_timeout))
            .set_number_of_retries(retries.count)
            .set_max_delay(retries.max_delay);
        Ok(RedisConn::Single(ConnectionManager::new_lazy_with_config(
            client, config,
        )?))
    }

    /// Whether this is a cluster connection (where an atomic pipeline must stay in one slot).
    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisConn::Cluster(_))
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(conn) => conn.req_packed_command(cmd),
            RedisConn::Cluster(lazy) => Box::pin(async move {
                let mut conn = lazy.get().await?;
                conn.req_packed_command(cmd).await
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(lazy) => Box::pin(async move {
                let conn = lazy.get().await?;
                cluster_pipeline(conn, pipeline, offset, count).await
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(conn) => conn.get_db(),
            // A cluster has database 0 only.
            RedisConn::Cluster(_) => 0,
        }
    }
}

/// A client for `info` (`url`, or a node of `cluster_urls`, maybe with settings changed) with
/// the TLS files of `settings` when it is a `rediss://` one.
pub fn client(
    info: impl IntoConnectionInfo,
    settings: &RedisSettings,
) -> RedisResult<redis::Client> {
    let info = info.into_connection_info()?;
    if !matches!(info.addr(), ConnectionAddr::TcpTls { .. }) {
        return redis::Client::open(info);
    }
    crate::tls::install_crypto_provider();
    match settings.tls.redis() {
        Some(certificates) => redis::Client::build_with_tls(info, certificates),
        None => redis::Client::open(info),
    }
}

/// Where `settings` connect (`host:port`, several on a cluster), for messages.
pub fn endpoints(settings: &RedisSettings) -> String {
    let endpoint = |url: &str| match url.into_connection_info().map(|info| info.addr().clone()) {
        Ok(ConnectionAddr::Tcp(host, port)) | Ok(ConnectionAddr::TcpTls { host, port, .. }) => {
            format!("{host}:{port}")
        }
        _ => redact_url(url),
    };
    let all: Vec<String> = settings.urls().into_iter().map(endpoint).collect();
    all.join(", ")
}

/// `error`, met on a connection `settings` describe, as an operator should read it ("TLS
/// handshake with 127.0.0.1:6390 failed: invalid peer certificate: UnknownIssuer"), and
/// whether TLS is what failed (a certificate or a name to fix, not a server still starting).
pub fn describe(
    settings: &RedisSettings,
    error: &(dyn std::error::Error + 'static),
) -> (String, bool) {
    let tls = crate::tls::tls_cause(error).is_some();
    (crate::tls::describe(error, &endpoints(settings)), tls)
}

/// Logs whether Redis answers now, for a binary that starts: an error when TLS is why it does
/// not (that will not heal by itself), a warning otherwise. Connections keep being retried
/// either way; this only says early what the first requests or jobs would meet.
pub async fn log_reachability(settings: &RedisSettings) {
    let retries = Retries {
        count: 0,
        max_delay: Duration::from_millis(100),
    };
    let ping = async {
        let mut conn = RedisConn::open(settings, retries)?;
        redis::cmd("PING").query_async::<()>(&mut conn).await
    };
    let wait = Duration::from_millis(settings.connection_timeout_ms + settings.response_timeout_ms);
    match tokio::time::timeout(wait, ping).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => match describe(settings, &e) {
            (message, true) => tracing::error!("redis: {message}; retrying"),
            (message, false) => {
                tracing::warn!(error = %message, "redis not reachable at start; will retry")
            }
        },
        Err(_) => {
            tracing::warn!(endpoint = %endpoints(settings), "redis did not answer at start; will retry")
        }
    }
}

/// Sends `pipeline` on a cluster: as it is if it is atomic or stays in one slot, else split by
/// slot (see the module comment).
async fn cluster_pipeline(
    mut conn: ClusterConnection,
    pipeline: &Pipeline,
    offset: usize,
    count: usize,
) -> RedisResult<Vec<Value>> {
    if pipeline.is_transaction() {
        return conn.req_packed_commands(pipeline, offset, count).await;
    }
    let commands: Vec<&Cmd> = pipeline.cmd_iter().collect();
    let mut groups: Vec<(Option<Slot>, Vec<usize>)> = Vec::new();
    for (i, cmd) in commands.iter().enumerate() {
        let slot = key_of(cmd).map(Slot::for_key);
        match groups.iter_mut().find(|(s, _)| *s == slot) {
            Some((_, members)) => members.push(i),
            None => groups.push((slot, vec![i])),
        }
    }
    if groups.len() <= 1 {
        return conn.req_packed_commands(pipeline, offset, count).await;
    }
    let sends = groups.iter().map(|(_, members)| {
        let mut part = Pipeline::with_capacity(members.len());
        for &i in members {
            part.add_command(commands[i].clone());
        }
        let mut conn = conn.clone();
        async move {
            let n = part.len();
            conn.req_packed_commands(&part, 0, n).await
        }
    });
    let replies = try_join_all(sends).await?;
    let mut ordered = vec![Value::Nil; commands.len()];
    for ((_, members), values) in groups.iter().zip(replies) {
        for (&i, value) in members.iter().zip(values) {
            ordered[i] = value;
        }
    }
    Ok(ordered.into_iter().skip(offset).take(count).collect())
}

/// The key that decides where `cmd` goes: the first argument after the command name for the
/// key-value commands this service pipelines, the first key of a script, none for commands
/// without a key.
fn key_of(cmd: &Cmd) -> Option<Vec<u8>> {
    let args: Vec<&[u8]> = cmd
        .args_iter()
        .filter_map(|a| match a {
            Arg::Simple(bytes) => Some(bytes),
            _ => None,
        })
        .collect();
    let name = args.first()?.to_ascii_uppercase();
    match name.as_slice() {
        b"ECHO" | b"PING" | b"PUBLISH" => None,
        b"EVAL" | b"EVALSHA" => {
            let keys = std::str::from_utf8(args.get(2)?)
                .ok()?
                .parse::<u32>()
                .ok()?;
            (keys > 0)
                .then(|| args.get(3).map(|k| k.to_vec()))
                .flatten()
        }
        _ => args.get(1).map(|k| k.to_vec()),
    }
}

/// A pub/sub connection: to `url`, or on a cluster to the first of `cluster_urls` that
/// answers (classic pub/sub reaches every node of a cluster).
pub async fn pubsub(settings: &RedisSettings) -> RedisResult<redis::aio::PubSub> {
    if !settings.is_cluster() {
        return client(settings.url.as_str(), settings)?
            .get_async_pubsub()
            .await;
    }
    let mut last = None;
    for url in &settings.cluster_urls {
        match client(url.as_str(), settings) {
            Ok(client) => match client.get_async_pubsub().await {
                Ok(pubsub) => return Ok(pubsub),
                Err(e) => {
                    tracing::warn!(node = %redact_url(url), error = %e, "Redis node unreachable for pub/sub; trying the next");
                    last = Some(e);
                }
            },
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "no cluster node"))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_routing_key_of_a_command() {
        let mut hset = redis::cmd("HSET");
        hset.arg("arr:job:{x}").arg("f").arg("v");
        assert_eq!(key_of(&hset).as_deref(), Some(&b"arr:job:{x}"[..]));
        let mut eval = redis::cmd("EVALSHA");
        eval.arg("abc").arg(2).arg("k1").arg("k2").arg("a");
        assert_eq!(key_of(&eval).as_deref(), Some(&b"k1"[..]));
        let mut keyless = redis::cmd("EVAL");
        keyless.arg("return 1").arg(0);
        assert_eq!(key_of(&keyless), None);
        assert_eq!(key_of(redis::cmd("ECHO").arg("")), None);
        // A job's keys share the job's slot; the index is elsewhere.
        assert_eq!(
            Slot::for_key("arr:job:{42}"),
            Slot::for_key("arr:tomb:{42}")
        );
    }
}
