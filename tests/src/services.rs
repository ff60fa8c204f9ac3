//! Private RabbitMQ and Redis instances for chaos tests that stop, restart or kill a broker or
//! Redis, or that need a TLS listener with certificates a test made ([`TestCa`]). Each fixture starts its own instance on spare loopback ports, with a data folder of
//! its own, and removes both on drop (also when the test panics). They never talk to the shared
//! instances on 5672 and 6379: every `rabbitmqctl` call names the private node, every
//! `redis-cli` call names the private port.
//!
//! RabbitMQ: the Debian wrappers (`rabbitmq-server`, `rabbitmqctl`) run the real scripts as user
//! `rabbitmq` through `su` when called by root, so the node and the CLI both get
//! `HOME=/var/lib/rabbitmq` and the same Erlang cookie (`/var/lib/rabbitmq/.erlang.cookie`); the
//! tests must therefore run as root (or as `rabbitmq`). The node gets a config file of its own
//! (the system one binds 5672).

use std::fs::{self, File};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lapin::types::ShortString;
use lapin::{Connection, ConnectionProperties};

/// Ports a private instance must never use: the shared services, epmd, and the ports the
/// RabbitMQ CLI takes for its own distribution (35672-35682).
fn reserved(port: u16) -> bool {
    matches!(port, 4369 | 5672 | 6379 | 15672 | 25672) || (35600..=35700).contains(&port)
}

/// A free loopback port, not reserved and not in `taken`.
fn spare_port(taken: &[u16]) -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        if !reserved(port) && !taken.contains(&port) {
            return port;
        }
    }
}

/// A fresh folder for one instance.
fn fresh_dir(kind: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("e2e-{kind}-{}", uuid::Uuid::new_v4().simple()));
    fs::create_dir_all(&dir).expect("instance dir");
    dir
}

// ---------------------------------------------------------------------------------------------
// TCP ports
// ---------------------------------------------------------------------------------------------

/// Whether 127.0.0.1:`port` accepts a TCP connection (within 1 s).
pub async fn port_accepts(port: u16) -> bool {
    matches!(
        tokio::time::timeout(
            Duration::from_secs(1),
            tokio::net::TcpStream::connect(("127.0.0.1", port)),
        )
        .await,
        Ok(Ok(_))
    )
}

/// Waits until 127.0.0.1:`port` accepts connections; false if it still does not after
/// `timeout`.
pub async fn wait_port_open(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if port_accepts(port).await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until 127.0.0.1:`port` refuses connections; false if it still accepts after `timeout`.
pub async fn wait_port_closed(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if !port_accepts(port).await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

/// Whether process `pid` exists and is not a zombie. A multi-threaded process killed with
/// SIGKILL can show its main thread as a zombie while other threads still exit (and still hold
/// its sockets), so every thread counts.
fn pid_alive(pid: u32) -> bool {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|task| {
        fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| {
            // "tid (comm) S ...": the state follows the last ')'.
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next())
                .is_some_and(|state| state != 'Z' && state != 'X')
        })
    })
}

/// Whether 127.0.0.1:`port` accepts a TCP connection (blocking, within 1 s).
fn port_accepts_blocking(port: u16) -> bool {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
}

/// Waits (blocking) until none of `ports` accepts connections; false on timeout.
fn wait_ports_closed_blocking(ports: &[u16], timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while ports.iter().any(|&port| port_accepts_blocking(port)) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

fn signal_kill(pid: u32) {
    signal(pid, "-KILL");
}

/// Sends `signal` (`-KILL`, `-STOP`, …) to `pid`.
fn signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([signal, &pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Waits (blocking) until `pid` is gone; false on timeout.
fn wait_pid_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while pid_alive(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// `kill -9 pid`, then waits (up to 10 s) until it is gone.
fn hard_kill(pid: u32) -> bool {
    signal_kill(pid);
    wait_pid_gone(pid, Duration::from_secs(10))
}

fn read_pid(path: &Path) -> Option<u32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Runs `cmd` in a process group of its own with stdout and stderr in `out` (a file, so a
/// daemon that inherits them cannot block us); kills the group after `timeout`. Returns what
/// it printed, as `Err` if it failed or timed out.
fn run_bounded(mut cmd: Command, timeout: Duration, out: &Path) -> Result<String, String> {
    let file = File::create(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let err = file.try_clone().map_err(|e| e.to_string())?;
    cmd.stdin(Stdio::null())
        .stdout(file)
        .stderr(err)
        .process_group(0);
    let mut child = cmd.spawn().map_err(|e| format!("spawn {cmd:?}: {e}"))?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = Command::new("kill")
                    .args(["-9", "--", &format!("-{}", child.id())])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let text = fs::read_to_string(out).unwrap_or_default();
    match status {
        Some(s) if s.success() => Ok(text),
        Some(s) => Err(format!("{cmd:?} failed ({s}): {text}")),
        None => Err(format!("{cmd:?} timed out after {timeout:?}: {text}")),
    }
}

async fn run_bounded_async(
    cmd: Command,
    timeout: Duration,
    out: PathBuf,
) -> Result<String, String> {
    tokio::task::spawn_blocking(move || run_bounded(cmd, timeout, &out))
        .await
        .expect("command thread")
}

/// The last `n` lines of a file (for failure messages).
fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// RabbitMQ
// ---------------------------------------------------------------------------------------------

/// How long `start`, `start_app` and `restart` wait for AMQP to work.
const RABBIT_BOOT: Duration = Duration::from_secs(60);

/// A private RabbitMQ node (`e2e-<random>@localhost`) on spare ports, with its own folder for
/// mnesia, logs, config and pid file. Stopped and removed on drop.
pub struct PrivateRabbit {
    dir: PathBuf,
    node: String,
    port: u16,
    dist_port: u16,
    /// The TLS listener's port, when the node has one.
    tls_port: Option<u16>,
    /// The node's OS process while it is (believed to be) running.
    pid: Option<u32>,
}

impl PrivateRabbit {
    /// Starts a node and waits until an AMQP connection succeeds (up to 60 s). Tries again
    /// with other ports (up to 3 times) if the node dies while booting, e.g. because another
    /// process took a port in between.
    pub async fn start() -> PrivateRabbit {
        Self::start_with_advanced_config(None).await
    }

    /// Like [`start`](Self::start), with an `advanced.config` (Erlang terms), e.g.
    /// `[{rabbit, [{consumer_timeout, 3000}]}].`
    pub async fn start_with_advanced_config(advanced: Option<&str>) -> PrivateRabbit {
        Self::start_with(advanced, None).await
    }

    /// Like [`start`](Self::start), with a TLS listener besides the plain one (which the
    /// boot check uses), serving `tls`'s certificate; clients are not asked for one unless
    /// `tls.verify_clients`.
    pub async fn start_tls(tls: &TlsServerFiles) -> PrivateRabbit {
        Self::start_with(None, Some(tls)).await
    }

    async fn start_with(advanced: Option<&str>, tls: Option<&TlsServerFiles>) -> PrivateRabbit {
        let mut failures = Vec::new();
        for _ in 0..3 {
            let mut rabbit = PrivateRabbit::prepare(tls);
            if let Some(terms) = advanced {
                fs::write(rabbit.dir.join("advanced.config"), terms).expect("advanced.config");
            }
            match rabbit.boot().await {
                Ok(()) => return rabbit,
                Err(e) => failures.push(e), // `rabbit` is dropped: stopped and removed
            }
        }
        panic!(
            "private RabbitMQ did not start:\n{}",
            failures.join("\n----\n")
        );
    }

    fn prepare(tls: Option<&TlsServerFiles>) -> PrivateRabbit {
        let dir = fresh_dir("rabbit");
        let port = spare_port(&[]);
        let dist_port = spare_port(&[port]);
        let tls_port = tls.map(|_| spare_port(&[port, dist_port]));
        let node = format!(
            "e2e-{}@localhost",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        fs::create_dir_all(dir.join("mnesia")).expect("mnesia dir");
        fs::create_dir_all(dir.join("log")).expect("log dir");
        fs::write(dir.join("enabled_plugins"), "[].\n").expect("enabled_plugins");
        // The system config binds 5672: this node gets its own.
        let mut conf = format!("listeners.tcp.local = 127.0.0.1:{port}\n");
        if let (Some(tls), Some(tls_port)) = (tls, tls_port) {
            // Copied into the node's folder, which user rabbitmq owns (it must read them).
            let files = dir.join("tls");
            fs::create_dir_all(&files).expect("tls dir");
            for (from, to) in [
                (&tls.cert, "server.pem"),
                (&tls.key, "server.key"),
                (&tls.ca, "ca.pem"),
            ] {
                fs::copy(from, files.join(to)).expect("copy a TLS file");
            }
            let (verify, require) = if tls.verify_clients {
                ("verify_peer", "true")
            } else {
                ("verify_none", "false")
            };
            conf.push_str(&format!(
                "listeners.ssl.local = 127.0.0.1:{tls_port}\n\
                 ssl_options.cacertfile = {ca}\n\
                 ssl_options.certfile = {cert}\n\
                 ssl_options.keyfile = {key}\n\
                 ssl_options.verify = {verify}\n\
                 ssl_options.fail_if_no_peer_cert = {require}\n",
                ca = files.join("ca.pem").display(),
                cert = files.join("server.pem").display(),
                key = files.join("server.key").display(),
            ));
        }
        fs::write(dir.join("rabbitmq.conf"), conf).expect("rabbitmq.conf");
        let rabbit = PrivateRabbit {
            dir,
            node,
            port,
            dist_port,
            tls_port,
            pid: None,
        };
        // The server runs as user rabbitmq and must own its folders (else it exits silently).
        let chown = Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq"])
            .arg(&rabbit.dir)
            .status()
            .expect("run chown");
        assert!(chown.success(), "chown rabbitmq {}", rabbit.dir.display());
        rabbit
    }

    /// The AMQP URL of this node.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// The AMQP port of this node.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The `amqps://` URL of this node's TLS listener, naming it `host` (`localhost`, or
    /// `127.0.0.1` for a certificate that does not cover that name).
    pub fn tls_url(&self, host: &str) -> String {
        let port = self.tls_port.expect("the node has no TLS listener");
        format!("amqps://guest:guest@{host}:{port}/%2f")
    }

    /// The Erlang node name (for `rabbitmqctl -n`).
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The node's folder (mnesia, logs, config).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.join("pid")
    }

    fn log_file(&self) -> PathBuf {
        self.dir.join("log").join(format!("{}.log", self.node))
    }

    /// Starts the node (`rabbitmq-server -detached`) and waits until AMQP works.
    async fn boot(&mut self) -> Result<(), String> {
        // A stale pid file (after a kill) would look like a node that died while booting.
        let _ = fs::remove_file(self.pid_file());
        let _ = fs::remove_file(self.dir.join("log").join("erl_crash.dump"));
        let mut cmd = Command::new("rabbitmq-server");
        cmd.arg("-detached")
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_CONFIG_FILE", self.dir.join("rabbitmq.conf"))
            .env(
                "RABBITMQ_ADVANCED_CONFIG_FILE",
                self.dir.join("advanced.config"),
            )
            .env("RABBITMQ_MNESIA_BASE", self.dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", self.dir.join("log"))
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                self.dir.join("enabled_plugins"),
            )
            .env("RABBITMQ_PID_FILE", self.pid_file());
        let out = self.dir.join("server.out");
        run_bounded_async(cmd, Duration::from_secs(30), out.clone()).await?;

        let deadline = Instant::now() + RABBIT_BOOT;
        loop {
            if self.pid.is_none() {
                self.pid = read_pid(&self.pid_file());
            }
            if self.pid.is_some_and(|pid| !pid_alive(pid)) {
                self.pid = None;
                return Err(self.boot_failure("the node exited while booting"));
            }
            if self.dir.join("log").join("erl_crash.dump").exists() {
                return Err(self.boot_failure("the node crashed while booting"));
            }
            if self.pid.is_some() && amqp_works(&self.url()).await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(self.boot_failure("AMQP did not work in time"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn boot_failure(&self, what: &str) -> String {
        format!(
            "{} (node {}, port {}, dist port {}): {what}\nserver output:\n{}\nlog:\n{}",
            self.dir.display(),
            self.node,
            self.port,
            self.dist_port,
            tail(&self.dir.join("server.out"), 20),
            tail(&self.log_file(), 30)
        )
    }

    fn ctl(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("rabbitmqctl");
        cmd.arg("-n").arg(&self.node).args(args);
        cmd
    }

    async fn ctl_async(&self, args: &[&str], timeout: Duration) -> Result<String, String> {
        run_bounded_async(self.ctl(args), timeout, self.dir.join("ctl.out")).await
    }

    /// Stops the broker application (the node stays up): the AMQP port is closed on return.
    pub async fn stop_app(&self) {
        self.ctl_async(&["stop_app"], Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| panic!("rabbitmqctl stop_app: {e}"));
        assert!(
            wait_port_closed(self.port, Duration::from_secs(30)).await,
            "port {} still open after stop_app",
            self.port
        );
    }

    /// Starts the broker application again and waits until AMQP works.
    pub async fn start_app(&self) {
        self.ctl_async(&["start_app"], RABBIT_BOOT)
            .await
            .unwrap_or_else(|e| panic!("rabbitmqctl start_app: {e}"));
        let deadline = Instant::now() + RABBIT_BOOT;
        while !amqp_works(&self.url()).await {
            assert!(
                Instant::now() < deadline,
                "AMQP does not work after start_app:\n{}",
                tail(&self.log_file(), 30)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Makes this node a member of `other`'s cluster (`stop_app`, `reset`, `join_cluster`,
    /// `start_app`) and waits until AMQP works again. Both nodes share the Erlang cookie of user
    /// `rabbitmq` (see the module comment).
    pub async fn join(&self, other: &PrivateRabbit) {
        for args in [
            &["stop_app"][..],
            &["reset"][..],
            &["join_cluster", other.node()][..],
            &["start_app"][..],
        ] {
            self.ctl_async(args, RABBIT_BOOT)
                .await
                .unwrap_or_else(|e| panic!("rabbitmqctl {args:?}: {e}"));
        }
        let deadline = Instant::now() + RABBIT_BOOT;
        while !amqp_works(&self.url()).await {
            assert!(
                Instant::now() < deadline,
                "AMQP does not work after joining the cluster:\n{}",
                tail(&self.log_file(), 30)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Runs `rabbitmqctl -n <this node> <args>` (bounded to 60 s) and returns what it printed.
    pub async fn ctl_run(&self, args: &[&str]) -> Result<String, String> {
        self.ctl_async(args, Duration::from_secs(60)).await
    }

    /// Kills the node with SIGKILL (no clean shutdown) and waits until it is gone.
    pub fn kill9(&mut self) {
        let pid = self
            .pid
            .take()
            .or_else(|| read_pid(&self.pid_file()))
            .expect("the node is not running");
        assert!(hard_kill(pid), "node process {pid} survived kill -9");
        assert!(
            wait_ports_closed_blocking(&[self.port, self.dist_port], Duration::from_secs(10)),
            "ports {} and {} still open after kill -9",
            self.port,
            self.dist_port
        );
    }

    /// Starts the node again with the same name, folders and ports (durable queues and
    /// persistent messages come back) and waits until AMQP works. Kills it first if it is
    /// still running.
    pub async fn restart(&mut self) {
        if let Some(pid) = self.pid.take().filter(|&pid| pid_alive(pid)) {
            assert!(hard_kill(pid), "node process {pid} survived kill -9");
        }
        // Make sure the killed node released its ports.
        for port in [self.port, self.dist_port] {
            assert!(
                wait_port_closed(port, Duration::from_secs(10)).await,
                "port {port} still open before restart"
            );
        }
        if let Err(e) = self.boot().await {
            panic!("private RabbitMQ did not restart: {e}");
        }
    }

    /// The node's OS process id, if it is running.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }
}

impl Drop for PrivateRabbit {
    fn drop(&mut self) {
        let pid = self.pid.take().or_else(|| read_pid(&self.pid_file()));
        if pid.is_none_or(pid_alive) {
            let out = self.dir.join("ctl.out");
            let _ = run_bounded(self.ctl(&["stop"]), Duration::from_secs(15), &out);
            if let Some(pid) = pid {
                if !wait_pid_gone(pid, Duration::from_secs(10)) {
                    hard_kill(pid);
                }
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Whether an AMQP connection to `url` succeeds (within 5 s).
pub async fn amqp_works(url: &str) -> bool {
    match tokio::time::timeout(
        Duration::from_secs(5),
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await
    {
        Ok(Ok(connection)) => {
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                connection.close(200, ShortString::from("bye")),
            )
            .await;
            true
        }
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------------------------

/// A private `redis-server` on a spare port, with its data (AOF, fsync on every write) in a
/// folder of its own. Shut down and removed on drop.
pub struct PrivateRedis {
    dir: PathBuf,
    port: u16,
    /// The TLS port, when the server has one.
    tls_port: Option<u16>,
    pid: Option<u32>,
    /// More `redis-server` arguments (e.g. cluster mode).
    extra_args: Vec<String>,
}

impl PrivateRedis {
    /// Starts a server and waits until it answers PING (up to 30 s); tries again on another
    /// port (up to 3 times) if it does not come up.
    pub async fn start() -> PrivateRedis {
        Self::start_with_args(&[], &[]).await
    }

    /// Like [`start`](Self::start), with more `redis-server` arguments, on a port not in
    /// `taken` (nor `taken` + 10000: a cluster node also listens on its port + 10000).
    pub async fn start_with_args(args: &[&str], taken: &[u16]) -> PrivateRedis {
        Self::start_with(args, taken, None).await
    }

    /// A server with a TLS port besides the plain one (which the start-up check uses), serving
    /// `tls`'s certificate; clients must show one signed by `tls.ca` if `tls.verify_clients`.
    pub async fn start_tls(tls: &TlsServerFiles) -> PrivateRedis {
        Self::start_with(&[], &[], Some(tls)).await
    }

    async fn start_with(
        args: &[&str],
        taken: &[u16],
        tls: Option<&TlsServerFiles>,
    ) -> PrivateRedis {
        let mut failures = Vec::new();
        for _ in 0..3 {
            let port = loop {
                let port = spare_port(taken);
                if port < 55535 && !reserved(port + 10000) && !taken.contains(&(port + 10000)) {
                    break port;
                }
            };
            let mut extra_args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
            let tls_port = tls.map(|tls| {
                let tls_port = spare_port(&[taken, &[port, port + 10000]].concat());
                let path = |p: &Path| p.to_str().expect("a UTF-8 path").to_owned();
                extra_args.extend([
                    "--tls-port".into(),
                    tls_port.to_string(),
                    "--tls-cert-file".into(),
                    path(&tls.cert),
                    "--tls-key-file".into(),
                    path(&tls.key),
                    "--tls-ca-cert-file".into(),
                    path(&tls.ca),
                    "--tls-auth-clients".into(),
                    if tls.verify_clients { "yes" } else { "no" }.into(),
                ]);
                tls_port
            });
            let mut redis = PrivateRedis {
                dir: fresh_dir("redis"),
                port,
                tls_port,
                pid: None,
                extra_args,
            };
            match redis.launch().await {
                Ok(()) => return redis,
                Err(e) => failures.push(e),
            }
        }
        panic!(
            "private Redis did not start:\n{}",
            failures.join("\n----\n")
        );
    }

    /// The Redis URL of this server.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The `rediss://` URL of this server's TLS port, naming it `host`.
    pub fn tls_url(&self, host: &str) -> String {
        let port = self.tls_port.expect("the server has no TLS port");
        format!("rediss://{host}:{port}/0")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.join("redis.pid")
    }

    async fn launch(&mut self) -> Result<(), String> {
        let _ = fs::remove_file(self.pid_file());
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--daemonize", "yes"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--pidfile")
            .arg(self.pid_file())
            .arg("--logfile")
            .arg(self.dir.join("redis.log"))
            .args(["--appendonly", "yes"])
            .args(["--appendfsync", "always"])
            .args(["--save", ""])
            .args(&self.extra_args);
        run_bounded_async(cmd, Duration::from_secs(15), self.dir.join("server.out")).await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.pid.is_none() {
                self.pid = read_pid(&self.pid_file());
            }
            if self.pid.is_some() && redis_pings(&self.url()).await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "redis-server on {} did not answer PING:\n{}",
                    self.port,
                    tail(&self.dir.join("redis.log"), 20)
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn cli(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args);
        cmd
    }

    /// `SHUTDOWN` (the AOF keeps the data); waits until the process is gone and the port closed.
    pub async fn stop(&mut self) {
        let pid = self.pid.take().expect("redis is not running");
        let out = self.dir.join("cli.out");
        run_bounded_async(self.cli(&["shutdown"]), Duration::from_secs(15), out)
            .await
            .unwrap_or_else(|e| panic!("redis-cli shutdown: {e}"));
        assert!(
            tokio::task::spawn_blocking(move || wait_pid_gone(pid, Duration::from_secs(15)))
                .await
                .expect("wait thread"),
            "redis-server {pid} still running after SHUTDOWN"
        );
        assert!(
            wait_port_closed(self.port, Duration::from_secs(5)).await,
            "port {} still open after SHUTDOWN",
            self.port
        );
    }

    /// Starts the server again with the same port and folder (the AOF brings the data back);
    /// waits until it answers PING.
    pub async fn start_again(&mut self) {
        assert!(self.pid.is_none(), "redis is still running");
        if let Err(e) = self.launch().await {
            panic!("private Redis did not start again: {e}");
        }
    }

    /// Stops the server with SIGSTOP: its connections stay open, nothing answers on them (a
    /// server that hangs, or a peer gone without a reset). [`thaw`](Self::thaw) resumes it.
    pub fn freeze(&self) {
        signal(self.pid.expect("redis is not running"), "-STOP");
    }

    /// Resumes a server stopped by [`freeze`](Self::freeze).
    pub fn thaw(&self) {
        signal(self.pid.expect("redis is not running"), "-CONT");
    }

    /// Kills the server with SIGKILL and waits until it is gone.
    pub fn kill9(&mut self) {
        let pid = self.pid.take().expect("redis is not running");
        assert!(hard_kill(pid), "redis-server {pid} survived kill -9");
        assert!(
            wait_ports_closed_blocking(&[self.port], Duration::from_secs(10)),
            "port {} still open after kill -9",
            self.port
        );
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let pid = self.pid.take().or_else(|| read_pid(&self.pid_file()));
        if let Some(pid) = pid.filter(|&pid| pid_alive(pid)) {
            // A frozen server would not answer the shutdown.
            signal(pid, "-CONT");
            let out = self.dir.join("cli.out");
            let _ = run_bounded(
                self.cli(&["shutdown", "nosave"]),
                Duration::from_secs(5),
                &out,
            );
            if !wait_pid_gone(pid, Duration::from_secs(5)) {
                hard_kill(pid);
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Whether the Redis server at `url` answers PING (within 2 s).
pub async fn redis_pings(url: &str) -> bool {
    let attempt = async {
        let client = redis::Client::open(url).ok()?;
        let mut conn = client.get_multiplexed_async_connection().await.ok()?;
        let pong: String = redis::cmd("PING").query_async(&mut conn).await.ok()?;
        Some(pong == "PONG")
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), attempt).await,
        Ok(Some(true))
    )
}

/// A private Redis Cluster: three masters (no replicas) on spare ports, slots spread by
/// `redis-cli --cluster create`. Every node is shut down and removed on drop.
pub struct PrivateRedisCluster {
    pub nodes: Vec<PrivateRedis>,
}

impl PrivateRedisCluster {
    /// Starts three cluster-enabled servers, joins them and waits (up to 30 s) until every
    /// node reports `cluster_state:ok`.
    pub async fn start() -> PrivateRedisCluster {
        Self::start_with(None).await
    }

    /// Like [`start`](Self::start), each node with a TLS port as well (see
    /// [`PrivateRedis::start_tls`]) and TLS on the cluster bus, so that the nodes tell TLS
    /// clients their TLS ports.
    pub async fn start_tls(tls: &TlsServerFiles) -> PrivateRedisCluster {
        Self::start_with(Some(tls)).await
    }

    async fn start_with(tls: Option<&TlsServerFiles>) -> PrivateRedisCluster {
        let mut args = vec![
            "--cluster-enabled",
            "yes",
            "--cluster-node-timeout",
            "2000",
            // Speed over durability: this cluster lives for one test.
            "--appendonly",
            "no",
        ];
        if tls.is_some() {
            args.extend(["--tls-cluster", "yes", "--tls-replication", "yes"]);
        }
        let mut nodes: Vec<PrivateRedis> = Vec::new();
        for _ in 0..3 {
            let taken: Vec<u16> = nodes
                .iter()
                .flat_map(|n| [Some(n.port), n.tls_port])
                .flatten()
                .collect();
            nodes.push(PrivateRedis::start_with(&args, &taken, tls).await);
        }
        let cluster = PrivateRedisCluster { nodes };
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for node in &cluster.nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        create.args(["--cluster-replicas", "0", "--cluster-yes"]);
        let out = cluster.nodes[0].dir.join("cluster-create.out");
        run_bounded_async(create, Duration::from_secs(30), out)
            .await
            .unwrap_or_else(|e| panic!("redis-cli --cluster create: {e}"));
        let deadline = Instant::now() + Duration::from_secs(30);
        for node in &cluster.nodes {
            loop {
                let info = async {
                    let client = redis::Client::open(node.url()).ok()?;
                    let mut conn = client.get_multiplexed_async_connection().await.ok()?;
                    redis::cmd("CLUSTER")
                        .arg("INFO")
                        .query_async::<String>(&mut conn)
                        .await
                        .ok()
                };
                if info.await.is_some_and(|i| i.contains("cluster_state:ok")) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the private Redis Cluster never reported cluster_state:ok"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        cluster
    }

    /// The nodes' `rediss://` URLs, comma-separated.
    pub fn tls_urls(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("rediss://127.0.0.1:{}", n.tls_port.expect("a TLS port")))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The nodes' URLs, comma-separated (the form of `APP__REDIS__CLUSTER_URLS`).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }
}

// ---------------------------------------------------------------------------------------------
// TLS certificates
// ---------------------------------------------------------------------------------------------

/// A certificate authority made for one test, with the certificates it signs, as PEM files in
/// a folder of its own (removed on drop).
pub struct TestCa {
    dir: PathBuf,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

/// The files of a TLS server: its certificate and key, and the CA whose certificates it
/// trusts from clients.
#[derive(Clone, Debug)]
pub struct TlsServerFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    /// Whether the server asks clients for a certificate signed by `ca` (mutual TLS).
    pub verify_clients: bool,
}

/// A certificate and its key, as files.
#[derive(Clone, Debug)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    /// A new CA called `name` (its certificate: [`ca_file`](Self::ca_file)).
    pub fn new(name: &str) -> TestCa {
        let dir = fresh_dir(&format!("ca-{name}"));
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("e2e test CA {name}"));
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        fs::write(dir.join("ca.pem"), cert.pem()).expect("write the CA certificate");
        TestCa {
            dir,
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// The CA's certificate (PEM).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A certificate signed by this CA for `names` (DNS names or IP addresses), written as
    /// `<label>.pem` and `<label>.key`; a client certificate when `client`.
    pub fn issue(&self, label: &str, names: &[&str], client: bool) -> CertFiles {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names).expect("certificate params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, label);
        // A server certificate is a client one too: a Redis Cluster node presents it to the
        // other nodes on the TLS cluster bus, and they check that it may.
        params.extended_key_usages = if client {
            vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth]
        } else {
            vec![
                rcgen::ExtendedKeyUsagePurpose::ServerAuth,
                rcgen::ExtendedKeyUsagePurpose::ClientAuth,
            ]
        };
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("certificate");
        let files = CertFiles {
            cert: self.dir.join(format!("{label}.pem")),
            key: self.dir.join(format!("{label}.key")),
        };
        fs::write(&files.cert, cert.pem()).expect("write the certificate");
        fs::write(&files.key, key.serialize_pem()).expect("write the key");
        files
    }

    /// A server certificate for `names` and the files a server needs with it.
    pub fn server(&self, label: &str, names: &[&str], verify_clients: bool) -> TlsServerFiles {
        let CertFiles { cert, key } = self.issue(label, names, false);
        TlsServerFiles {
            cert,
            key,
            ca: self.ca_file(),
            verify_clients,
        }
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}
