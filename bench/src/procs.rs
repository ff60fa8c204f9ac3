//! Processes: starting and stopping the ones the benchmark owns, and reading what every
//! component spent (CPU seconds from `/proc/<pid>/stat`, resident memory from
//! `/proc/<pid>/status`), including the shared RabbitMQ and Redis, found by the port they
//! listen on (they are only read, never touched).

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{msg, Result};

/// A process this benchmark started; stopped (SIGTERM, then SIGKILL) on drop.
pub struct Owned {
    pub name: String,
    child: Child,
}

impl Owned {
    /// Starts `command` with its output going to `log`.
    pub fn spawn(name: &str, mut command: Command, log: &Path) -> Result<Owned> {
        let out = fs::File::create(log)?;
        let err = out.try_clone()?;
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .map_err(|e| msg(format!("cannot start {name}: {e}")))?;
        Ok(Owned {
            name: name.to_owned(),
            child,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, up to `grace` to exit, then SIGKILL.
    pub fn stop(&mut self, grace: Duration) {
        if !self.alive() {
            return;
        }
        // SAFETY: kill(2) on the pid of a child we have not reaped yet (so not reused).
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let until = Instant::now() + grace;
        while Instant::now() < until {
            if !self.alive() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// User + system CPU seconds of `pid` (its threads included), or 0 if it is gone.
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name, which is in parentheses and may hold spaces.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name and state.
    let ticks: f64 = [11usize, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<f64>().ok())
        .sum();
    ticks / clock_ticks()
}

/// Resident memory of `pid` in MiB, or 0 if it is gone.
pub fn rss_mib(pid: u32) -> f64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| {
                let kb = line.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?;
                kb.trim().parse::<f64>().ok()
            })
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// Every process whose parent chain leads to `pid` (not `pid` itself).
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(child) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            let Ok(stat) = fs::read_to_string(format!("/proc/{child}/stat")) else {
                continue;
            };
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok());
            if let Some(ppid) = ppid {
                parents.push((child, ppid));
            }
        }
    }
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let p = found[i];
        found.extend(parents.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    found.remove(0);
    found
}

/// The process listening on TCP `port` (IPv4 or IPv6), found through its socket's inode.
pub fn pid_listening_on(port: u16) -> Option<u32> {
    let port_hex = format!(":{port:04X}");
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // local_address, state (0A = LISTEN), inode
            if cols.len() > 9 && cols[1].ends_with(&port_hex) && cols[3] == "0A" {
                inodes.push(format!("socket:[{}]", cols[9]));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = fs::read_link(fd.path()) {
                if inodes.iter().any(|i| target.as_os_str() == i.as_str()) {
                    return Some(pid);
                }
            }
        }
    }
    None
}

/// A free loopback port.
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// The components whose CPU time a scenario reports, by name, each a set of pids (a Celery
/// worker is its main process and its pool's children).
#[derive(Debug, Default, Clone)]
pub struct Components(BTreeMap<String, Vec<u32>>);

/// CPU seconds by component.
pub type CpuSeconds = BTreeMap<String, f64>;

impl Components {
    pub fn set(&mut self, name: &str, pids: Vec<u32>) {
        self.0.insert(name.to_owned(), pids);
    }

    pub fn snapshot(&self) -> CpuSeconds {
        self.0
            .iter()
            .map(|(name, pids)| (name.clone(), pids.iter().map(|&p| cpu_seconds(p)).sum()))
            .collect()
    }
}

/// CPU seconds spent between two snapshots, per component (rounded to 10 ms).
pub fn cpu_delta(before: &CpuSeconds, after: &CpuSeconds) -> CpuSeconds {
    after
        .iter()
        .map(|(name, a)| {
            let b = before.get(name).copied().unwrap_or(0.0);
            (name.clone(), ((a - b).max(0.0) * 100.0).round() / 100.0)
        })
        .collect()
}
