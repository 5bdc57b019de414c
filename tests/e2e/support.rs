//! The harness of the end-to-end tests: the fake API server, the mock driver, a kubeconfig,
//! and the real sidecar binary as a child process whose stderr is collected line by line so
//! tests can wait for a log line instead of sleeping.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::kit::apiserver::{FakeApiServer, Options};
use crate::kit::csidriver::{temp_dir, Generation, MockDriver};
use crate::kit::fixtures;

pub const DRIVER: &str = "fake.csi.driver.io";
pub const NS: &str = "test";

/// Collected output of a child process.
#[derive(Clone, Default)]
pub struct Output {
    inner: Arc<(Mutex<Collected>, Condvar)>,
}

#[derive(Default)]
struct Collected {
    lines: Vec<String>,
    /// The stream reached its end: every line the process wrote is in `lines`.
    closed: bool,
}

impl Output {
    pub fn collect(stream: impl std::io::Read + Send + 'static) -> Output {
        let out = Output::default();
        let o = out.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("E2E_ECHO").is_some() {
                    eprintln!("sidecar| {line}");
                }
                o.inner.0.lock().unwrap().lines.push(line);
                o.inner.1.notify_all();
            }
            o.inner.0.lock().unwrap().closed = true;
            o.inner.1.notify_all();
        });
        out
    }

    pub fn lines(&self) -> Vec<String> {
        self.inner.0.lock().unwrap().lines.clone()
    }

    pub fn text(&self) -> String {
        self.lines().join("\n")
    }

    /// Wait until the stream has ended (the process exited and its last lines are read): a
    /// process's exit is seen before the reader has drained the pipe.
    pub fn wait_closed(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut guard = self.inner.0.lock().unwrap();
        while !guard.closed {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            guard = self.inner.1.wait_timeout(guard, deadline - now).unwrap().0;
        }
        true
    }

    /// Wait until a line contains `needle`.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> bool {
        self.wait_for_n(needle, 1, timeout)
    }

    /// Wait until `n` lines contain `needle`.
    pub fn wait_for_n(&self, needle: &str, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut guard = self.inner.0.lock().unwrap();
        loop {
            if guard.lines.iter().filter(|l| l.contains(needle)).count() >= n {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            guard = self.inner.1.wait_timeout(guard, deadline - now).unwrap().0;
        }
    }
}

pub struct Sidecar {
    pub pid: u32,
    exit: crossbeam_channel::Receiver<ExitStatus>,
    exited: Option<ExitStatus>,
    pub stderr: Output,
}

impl Sidecar {
    /// Take over a spawned child: its stderr is collected and a thread waits for its exit.
    pub fn adopt(mut child: Child) -> Sidecar {
        let stderr = Output::collect(child.stderr.take().expect("stderr piped"));
        let pid = child.id();
        let (tx, exit) = crossbeam_channel::bounded(1);
        std::thread::spawn(move || {
            if let Ok(status) = child.wait() {
                let _ = tx.send(status);
            }
        });
        Sidecar {
            pid,
            exit,
            exited: None,
            stderr,
        }
    }

    pub fn signal(&self, sig: &str) {
        let _ = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid.to_string())
            .status();
    }

    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Wait for the process to exit, up to `timeout` (then kill it and fail).
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(s) = self.exited {
            return s;
        }
        match self.exit.recv_timeout(timeout) {
            Ok(status) => {
                self.exited = Some(status);
                assert!(
                    self.stderr.wait_closed(Duration::from_secs(10)),
                    "the sidecar exited but its stderr stayed open"
                );
                status
            }
            Err(_) => {
                self.signal("KILL");
                panic!(
                    "sidecar did not exit within {timeout:?}; stderr:\n{}",
                    self.stderr.text()
                );
            }
        }
    }

    /// Wait for the process to exit with code 1 (within `timeout`) and return its log.
    pub fn exit_1_log(&mut self, timeout: Duration) -> String {
        let status = self.wait_exit(timeout);
        let text = self.stderr.text();
        assert_eq!(status.code(), Some(1), "{text}");
        text
    }

    /// True if the process has not exited within `d` (it keeps running).
    pub fn still_running_after(&mut self, d: Duration) -> bool {
        match self.exit.recv_timeout(d) {
            Ok(status) => {
                self.exited = Some(status);
                // So the caller's failure message shows the last lines.
                self.stderr.wait_closed(Duration::from_secs(10));
                false
            }
            Err(_) => true,
        }
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if self.exited.is_none() {
            self.signal("KILL");
            let _ = self.exit.recv_timeout(Duration::from_secs(5));
        }
    }
}

pub struct Env {
    pub api: FakeApiServer,
    pub driver: MockDriver,
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
}

impl Env {
    pub fn new() -> Env {
        Env::with_api(FakeApiServer::start(), None)
    }

    /// A driver without LIST_VOLUMES: the sidecar runs in ControllerGetVolume mode.
    pub fn get_mode() -> Env {
        let env = Env::new();
        env.driver.with(|s| s.list_volumes = false);
        env
    }

    /// A CSI v1.13 driver (GET_VOLUME_HEALTH, LIST_VOLUME_HEALTH, no VOLUME_CONDITION) and an
    /// API server with the `CSIVolumeHealth` field (`gate_on`) or without it (Kubernetes 1.36).
    pub fn health(gate_on: bool) -> Env {
        let api = FakeApiServer::start_with(Options {
            pvc_health_status: gate_on,
            ..Options::default()
        })
        .expect("start the fake api server");
        let env = Env::with_api(api, None);
        env.driver.set_generation(Generation::V113);
        env
    }

    /// An environment around a fake API server started with special options, reached with
    /// `kubeconfig_yaml` (default: the server's own kubeconfig).
    pub fn with_api(api: FakeApiServer, kubeconfig_yaml: Option<String>) -> Env {
        let driver = MockDriver::start(DRIVER);
        let dir = temp_dir("e2e");
        let kubeconfig = dir.join("kubeconfig");
        let yaml = kubeconfig_yaml.unwrap_or_else(|| api.kubeconfig_yaml());
        std::fs::write(&kubeconfig, yaml).expect("write kubeconfig");
        fixtures::namespace(&api, NS);
        Env {
            api,
            driver,
            dir,
            kubeconfig,
        }
    }

    pub fn spawn(&self, extra: &[&str]) -> Sidecar {
        Sidecar::adopt(fixtures::spawn_sidecar(
            &self.kubeconfig,
            self.driver.socket(),
            extra,
            Stdio::piped(),
        ))
    }

    /// The sidecar (the shipped `app::main`, run by the test kit) with a panic injected at the
    /// fault point `site` (`crash::fault_point`: `controller`, `worker`, `leader`).
    pub fn spawn_faulty(&self, site: &str, extra: &[&str]) -> Sidecar {
        let kit = fixtures::sibling_binary("csi-hm-testkit");
        let child = std::process::Command::new(&kit)
            .arg("faulty-sidecar")
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .arg(format!("--csi-address={}", self.driver.socket().display()))
            .args(extra)
            .env("HM_FAULT_PANIC", site)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", kit.display()));
        Sidecar::adopt(child)
    }

    /// PV `pv-<id>` with handle `<id>` bound to PVC `pvc-<id>` in the test namespace.
    pub fn volume(&self, id: &str) -> (serde_json::Value, serde_json::Value) {
        let (pv, pvc) = fixtures::bound_volume(
            &self.api,
            DRIVER,
            &format!("pv-{id}"),
            id,
            "Bound",
            NS,
            Some(&format!("pvc-{id}")),
        );
        (pv, pvc.expect("pvc"))
    }

    pub fn events(&self, pvc: &str, reason: &str) -> Vec<serde_json::Value> {
        fixtures::events_for(&self.api, pvc, reason)
    }

    pub fn wait_event(&self, pvc: &str, reason: &str, timeout: Duration) -> bool {
        self.api.wait_until(timeout, |a| {
            !fixtures::events_for(a, pvc, reason).is_empty()
        })
    }

    /// Wait until the driver has answered `n` calls of `method` in total.
    pub fn wait_calls(&self, method: &str, n: usize, timeout: Duration) -> bool {
        self.driver.wait_until(timeout, |s| {
            s.calls
                .iter()
                .filter(|c| c.method == method && c.finished.is_some())
                .count()
                >= n
        })
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        // Every test doubles as an RBAC check: whatever the sidecar asked of the API server
        // must be allowed by the shipped manifest (issue 7).
        if !std::thread::panicking() {
            let requests = self.api.requests();
            let refused = crate::rbac::refused(&requests);
            assert!(
                refused.is_empty(),
                "deploy/kubernetes/rbac.yaml does not allow requests the sidecar made: {refused:#?}"
            );
            // Operators find our traffic in audit logs by this User-Agent.
            let ua = format!(
                "csi-external-health-monitor-controller/{}",
                healthmon::flags::VERSION
            );
            let strangers: Vec<String> = requests
                .iter()
                .filter(|r| r.user_agent.as_deref() != Some(ua.as_str()))
                .map(|r| format!("{} {} {:?}", r.method, r.path, r.user_agent))
                .collect();
            assert!(
                strangers.is_empty(),
                "requests without User-Agent {ua}: {strangers:#?}"
            );
        }
    }
}

pub fn bin() -> PathBuf {
    fixtures::sibling_binary("csi-external-health-monitor-controller")
}

/// Run the binary with `args` to completion (for flag tests).
pub fn run_binary(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(bin())
        .args(args)
        .output()
        .expect("run binary");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Calls `probe` every 100 ms until it yields a value, for state only reachable by asking
/// (HTTP endpoints of the sidecar); None after `timeout`.
pub fn poll<T>(timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A plain HTTP/1.0 GET: status and body. 1.0, so that a Go server (Prometheus) answers
/// unchunked, and every server closes the connection after the answer.
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s =
        std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw)
        .unwrap_or_else(|e| panic!("read {addr}{path}: {e}"));
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw.as_str(), ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad response from {addr}{path}: {raw:?}"));
    (status, body.to_string())
}

/// The `host:port` the sidecar's HTTP server listens on, from its "ServeMux listening" line
/// (so tests can pass port 0 and never race for a free port).
pub fn http_addr(stderr: &Output) -> String {
    assert!(
        stderr.wait_for("ServeMux listening", Duration::from_secs(30)),
        "no HTTP server:\n{}",
        stderr.text()
    );
    let text = stderr.text();
    let line = text
        .lines()
        .find(|l| l.contains("ServeMux listening"))
        .unwrap_or_default();
    let start = line
        .find("127.0.0.1:")
        .unwrap_or_else(|| panic!("no address in {line}"));
    line[start..]
        .split(|c: char| !(c.is_ascii_digit() || c == '.' || c == ':'))
        .next()
        .unwrap_or_default()
        .to_string()
}
