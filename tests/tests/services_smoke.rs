//! The private RabbitMQ and Redis fixtures used by chaos tests really stop, kill and restart
//! their own instance, and the data that should survive does.

use std::future::Future;
use std::time::Duration;

use e2e::services::{port_accepts, PrivateRabbit, PrivateRedis};
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

/// Fails the test instead of hanging; the fixtures are dropped (and cleaned up) either way.
async fn bounded<F: Future<Output = ()>>(secs: u64, test: F) {
    tokio::time::timeout(Duration::from_secs(secs), test)
        .await
        .unwrap_or_else(|_| panic!("test did not finish within {secs} s"));
}

async fn try_connect(url: &str) -> Result<Connection, String> {
    match tokio::time::timeout(
        Duration::from_secs(5),
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await
    {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

async fn connect(url: &str) -> (Connection, Channel) {
    let connection = try_connect(url).await.expect("amqp connection");
    let channel = connection.create_channel().await.expect("channel");
    (connection, channel)
}

async fn close(connection: Connection) {
    let _ = connection.close(200, ShortString::from("bye")).await;
}

async fn declare(
    channel: &Channel,
    queue: &str,
    durable: bool,
    passive: bool,
) -> lapin::Result<u32> {
    channel
        .queue_declare(
            ShortString::from(queue),
            QueueDeclareOptions {
                durable,
                passive,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map(|q| q.message_count())
}

/// Publishes a persistent message to `queue` and waits for the broker's confirm.
async fn publish_persistent(channel: &Channel, queue: &str, payload: &[u8]) {
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm mode");
    let confirm = channel
        .basic_publish(
            ShortString::from(""),
            ShortString::from(queue),
            BasicPublishOptions::default(),
            payload,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    assert!(confirm.is_ack(), "publish not confirmed");
}

/// Number of messages in a durable `queue` (passive declare), then takes one and checks it.
async fn assert_one_message(url: &str, queue: &str, payload: &[u8]) {
    let (connection, channel) = connect(url).await;
    let count = declare(&channel, queue, true, true)
        .await
        .expect("the durable queue exists");
    assert_eq!(count, 1, "messages in {queue}");
    let message = channel
        .basic_get(ShortString::from(queue), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
        .expect("a message");
    assert_eq!(message.delivery.data, payload);
    close(connection).await;
}

#[tokio::test]
async fn rabbit_stop_app_and_start_app_keep_persistent_messages() {
    bounded(150, async {
        let rabbit = PrivateRabbit::start().await;
        assert_ne!(rabbit.port(), 5672);
        let url = rabbit.url();

        let (connection, channel) = connect(&url).await;
        declare(&channel, "smoke", true, false)
            .await
            .expect("declare");
        publish_persistent(&channel, "smoke", b"kept across stop_app").await;
        assert_eq!(declare(&channel, "smoke", true, true).await.unwrap(), 1);
        close(connection).await;

        rabbit.stop_app().await;
        assert!(
            !port_accepts(rabbit.port()).await,
            "port open after stop_app"
        );
        assert!(
            try_connect(&url).await.is_err(),
            "AMQP connection succeeded while the broker is stopped"
        );

        rabbit.start_app().await;
        assert!(port_accepts(rabbit.port()).await);
        assert_one_message(&url, "smoke", b"kept across stop_app").await;
    })
    .await;
}

#[tokio::test]
async fn rabbit_kill9_and_restart_keep_durable_queues_and_persistent_messages() {
    bounded(150, async {
        let mut rabbit = PrivateRabbit::start().await;
        assert_ne!(rabbit.port(), 5672);
        let url = rabbit.url();
        let first_pid = rabbit.pid().expect("pid of the running node");

        let (connection, channel) = connect(&url).await;
        declare(&channel, "durable", true, false)
            .await
            .expect("declare durable");
        declare(&channel, "transient", false, false)
            .await
            .expect("declare transient");
        publish_persistent(&channel, "durable", b"kept across kill -9").await;
        close(connection).await;
        // A confirmed persistent message is on disk, but the queue's definition goes through
        // Mnesia's transaction log, which Erlang's disk_log writes with a delayed-write cache:
        // a kill -9 within a moment of the declare can lose the queue itself (seen once in CI:
        // NOT_FOUND after the restart). Flush the log first; what is then tested is that what
        // the node had written survives.
        rabbit
            .ctl_run(&["eval", "mnesia:sync_log()."])
            .await
            .expect("flush Mnesia's log");

        rabbit.kill9();
        assert!(rabbit.pid().is_none());
        assert!(
            !port_accepts(rabbit.port()).await,
            "port open after kill -9"
        );
        assert!(
            try_connect(&url).await.is_err(),
            "AMQP connection succeeded to a killed node"
        );

        rabbit.restart().await;
        let second_pid = rabbit.pid().expect("pid of the restarted node");
        assert_ne!(first_pid, second_pid, "the node was not restarted");
        assert_one_message(&url, "durable", b"kept across kill -9").await;

        // A non-durable queue does not survive a restart: proof the node really went down.
        let (connection, channel) = connect(&url).await;
        assert!(
            declare(&channel, "transient", false, true).await.is_err(),
            "the transient queue survived the restart"
        );
        close(connection).await;
    })
    .await;
}

async fn redis_conn(url: &str) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    match tokio::time::timeout(
        Duration::from_secs(5),
        redis::Client::open(url)?.get_multiplexed_async_connection(),
    )
    .await
    {
        Ok(result) => result,
        Err(_) => Err(redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "connect timed out",
        ))),
    }
}

async fn set(url: &str, key: &str, value: &str) {
    let mut conn = redis_conn(url).await.expect("redis connection");
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg(value)
        .query_async(&mut conn)
        .await
        .expect("SET");
}

async fn get(url: &str, key: &str) -> Option<String> {
    let mut conn = redis_conn(url).await.expect("redis connection");
    redis::cmd("GET")
        .arg(key)
        .query_async(&mut conn)
        .await
        .expect("GET")
}

#[tokio::test]
async fn redis_stop_and_start_again_keep_data() {
    bounded(60, async {
        let mut redis = PrivateRedis::start().await;
        assert_ne!(redis.port(), 6379);
        let url = redis.url();
        set(&url, "smoke", "kept across shutdown").await;
        assert_eq!(get(&url, "missing").await, None);

        redis.stop().await;
        assert!(
            redis_conn(&url).await.is_err(),
            "connected to a stopped Redis"
        );

        redis.start_again().await;
        assert_eq!(
            get(&url, "smoke").await.as_deref(),
            Some("kept across shutdown")
        );
    })
    .await;
}

#[tokio::test]
async fn redis_kill9_and_start_again_keep_fsynced_data() {
    bounded(60, async {
        let mut redis = PrivateRedis::start().await;
        let url = redis.url();
        let first_pid = redis.pid().expect("pid");
        set(&url, "smoke", "kept across kill -9").await;

        redis.kill9();
        assert!(!port_accepts(redis.port()).await, "port open after kill -9");
        assert!(
            redis_conn(&url).await.is_err(),
            "connected to a killed Redis"
        );

        redis.start_again().await;
        assert_ne!(redis.pid(), Some(first_pid), "redis was not restarted");
        assert_eq!(
            get(&url, "smoke").await.as_deref(),
            Some("kept across kill -9")
        );
    })
    .await;
}

#[tokio::test]
async fn fixtures_are_removed_when_the_test_panics() {
    bounded(120, async {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let (rabbit, redis) = tokio::join!(PrivateRabbit::start(), PrivateRedis::start());
            let _ = tx.send((
                rabbit.port(),
                rabbit.dir().to_path_buf(),
                redis.port(),
                redis.dir().to_path_buf(),
            ));
            panic!("deliberate panic: the fixtures must clean up after it");
        });
        let error = task.await.expect_err("the task panicked");
        assert!(error.is_panic());
        let (rabbit_port, rabbit_dir, redis_port, redis_dir) = rx.await.expect("fixtures started");
        assert!(
            !port_accepts(rabbit_port).await,
            "rabbit still up after drop"
        );
        assert!(!port_accepts(redis_port).await, "redis still up after drop");
        assert!(!rabbit_dir.exists(), "{} left behind", rabbit_dir.display());
        assert!(!redis_dir.exists(), "{} left behind", redis_dir.display());
    })
    .await;
}
