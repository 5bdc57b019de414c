//! The sidecar as a measured process: spawning it with the image's environment (and killing
//! it on every path), and what `/proc` says about it: CPU ticks sampled every 10 ms, VmRSS and
//! VmHWM, voluntary context switches by thread; plus the binary's stripped size, the load
//! average and a plain HTTP GET of its metrics.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::Opts;
use crate::csidriver;
use crate::fixtures;

/// The sidecar with the environment the container image gives it (MALLOC_ARENA_MAX, see the
/// Dockerfile), unless `--malloc-arena-max unset`.
pub(super) fn spawn(
    o: &Opts,
    kubeconfig: &Path,
    socket: &Path,
    extra: &[String],
    stderr: Stdio,
) -> Result<ChildGuard, String> {
    spawn_env(o.arena_max.as_deref(), kubeconfig, socket, extra, stderr)
}

/// The sidecar with MALLOC_ARENA_MAX set to `arena`, or removed from the environment, killed
/// when the guard goes.
pub(super) fn spawn_env(
    arena: Option<&str>,
    kubeconfig: &Path,
    socket: &Path,
    extra: &[String],
    stderr: Stdio,
) -> Result<ChildGuard, String> {
    let bin = fixtures::sibling_binary("csi-external-health-monitor-controller");
    let mut cmd = Command::new(&bin);
    cmd.arg(format!("--kubeconfig={}", kubeconfig.display()))
        .arg(format!("--csi-address={}", socket.display()))
        .args(extra)
        .stdout(Stdio::null())
        .stderr(stderr);
    match arena {
        Some(v) => cmd.env("MALLOC_ARENA_MAX", v),
        None => cmd.env_remove("MALLOC_ARENA_MAX"),
    };
    cmd.spawn()
        .map(|child| ChildGuard(Some(child)))
        .map_err(|e| format!("spawn {}: {e}", bin.display()))
}

/// Kills (TERM, then KILL) the sidecar when the benchmark ends, even on an error path.
pub(crate) struct ChildGuard(pub(crate) Option<Child>);

impl ChildGuard {
    pub(crate) fn pid(&self) -> u32 {
        self.0.as_ref().map(Child::id).unwrap_or(0)
    }

    /// SIGTERM and wait up to 20 s; true when it exited by itself.
    pub(crate) fn terminate(mut self) -> bool {
        let Some(mut child) = self.0.take() else {
            return true;
        };
        fixtures::terminate(&child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The trivial mock driver (`csi-driver --no-list`, every call answered at once, these
/// volumes known and healthy) in a process of its own, so its CPU is not the measured one's;
/// returns once it listens on `socket`.
pub(crate) fn spawn_driver(
    socket: &Path,
    generation: &str,
    volumes: impl IntoIterator<Item = String>,
    extra: &[&str],
) -> Result<ChildGuard, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current exe: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.arg("csi-driver")
        .arg("--socket")
        .arg(socket)
        .arg("--generation")
        .arg(generation)
        .arg("--no-list")
        .args(extra);
    for v in volumes {
        cmd.arg("--volume").arg(v);
    }
    let driver = ChildGuard(Some(
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawn the mock driver: {e}"))?,
    ));
    let up = Instant::now() + Duration::from_secs(30);
    while !socket.exists() {
        if Instant::now() > up {
            return Err("the mock driver did not listen within 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(driver)
}

pub(crate) fn clock_ticks() -> f64 {
    static TCK: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TCK.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// utime + stime of `pid` in clock ticks.
pub(super) fn cpu_ticks(pid: u32) -> Option<u64> {
    stat_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// utime + stime from a `/proc/.../stat` line, in clock ticks.
pub(crate) fn stat_ticks(stat: &str) -> Option<u64> {
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state); utime is field 14, stime field 15.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// (VmRSS, VmHWM) in KiB.
pub(super) fn memory(pid: u32) -> Result<(u64, u64), String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("read /proc/{pid}/status (did the sidecar exit?): {e}"))?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}

/// Samples the sidecar's CPU time every 10 ms so intervals can be cut at any instant.
pub(super) struct Sampler {
    samples: Arc<Mutex<Vec<(Instant, u64)>>>,
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    pub(super) fn start(pid: u32) -> Sampler {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (samples.clone(), stop.clone());
        let handle = std::thread::Builder::new()
            .name("bench-cpu-sampler".into())
            .spawn(move || {
                while !st.load(Ordering::SeqCst) {
                    if let Some(t) = cpu_ticks(pid) {
                        s.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push((Instant::now(), t));
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
            .ok();
        Sampler {
            samples,
            stop,
            handle,
        }
    }

    /// CPU used between the last sample at or before `from` and the first at or after `to`.
    pub(super) fn cpu_between(&self, from: Instant, to: Instant) -> Duration {
        let s = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let before = s.iter().rev().find(|(at, _)| *at <= from).or(s.first());
        let after = s.iter().find(|(at, _)| *at >= to).or(s.last());
        match (before, after) {
            (Some(a), Some(b)) => {
                Duration::from_secs_f64(b.1.saturating_sub(a.1) as f64 / clock_ticks())
            }
            _ => Duration::ZERO,
        }
    }

    pub(super) fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// The end of a burst of work that leaves no mark in the logs (a sweep in which nothing
    /// changed writes nothing): waits until the CPU time has not moved for `quiet` after
    /// `after`, and returns when it last moved (`after` if it never did).
    pub(super) fn settled(&self, after: Instant, quiet: Duration, timeout: Duration) -> Instant {
        let deadline = Instant::now() + timeout;
        loop {
            std::thread::sleep(Duration::from_millis(50));
            let now = Instant::now();
            let last_move = {
                let s = self.samples.lock().unwrap_or_else(|p| p.into_inner());
                s.windows(2)
                    .rev()
                    .take_while(|w| w[1].0 >= after)
                    .find(|w| w[1].1 != w[0].1)
                    .map_or(after, |w| w[1].0)
            };
            if now.saturating_duration_since(last_move) >= quiet || now >= deadline {
                return last_move;
            }
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// (unstripped bytes, stripped bytes) of the sidecar binary; stripped is measured on a copy.
pub(super) fn binary_size(bin: &Path) -> (u64, Option<u64>) {
    let size = std::fs::metadata(bin).map(|m| m.len()).unwrap_or(0);
    let dir = csidriver::temp_dir("bench-strip");
    let copy: PathBuf = dir.join("sidecar");
    let stripped = std::fs::copy(bin, &copy)
        .ok()
        .and_then(|_| Command::new("strip").arg(&copy).status().ok())
        .filter(|s| s.success())
        .and_then(|_| std::fs::metadata(&copy).ok())
        .map(|m| m.len());
    let _ = std::fs::remove_dir_all(&dir);
    (size, stripped)
}

pub(super) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Voluntary context switches of every thread of `pid` (each one is a thread waking up after
/// it blocked or slept), by thread id, with the thread's name.
pub(super) fn voluntary_switches(pid: u32) -> BTreeMap<String, (String, u64)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return BTreeMap::new();
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| {
            let status = std::fs::read_to_string(t.path().join("status")).ok()?;
            let field = |name: &str| {
                status
                    .lines()
                    .find(|l| l.starts_with(name))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .map(str::to_string)
            };
            let n = field("voluntary_ctxt_switches:")?.parse::<u64>().ok()?;
            Some((
                t.file_name().to_string_lossy().into_owned(),
                (field("Name:")?, n),
            ))
        })
        .collect()
}

/// Switches between two snapshots, summed by thread name, busiest first (threads that came
/// and went in between are not counted).
pub(super) fn switches_between(
    a: &BTreeMap<String, (String, u64)>,
    b: &BTreeMap<String, (String, u64)>,
) -> Vec<(String, u64)> {
    let mut by_name: BTreeMap<String, u64> = BTreeMap::new();
    for (tid, (name, n)) in b {
        if let Some((_, before)) = a.get(tid) {
            *by_name.entry(name.clone()).or_default() += n.saturating_sub(*before);
        }
    }
    let mut v: Vec<(String, u64)> = by_name.into_iter().filter(|(_, n)| *n > 0).collect();
    v.sort_by(|x, y| y.1.cmp(&x.1).then(x.0.cmp(&y.0)));
    v
}

/// The body of a plain HTTP/1.1 GET to the sidecar (empty on any error).
pub(super) fn http_get_text(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    );
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    raw.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}
