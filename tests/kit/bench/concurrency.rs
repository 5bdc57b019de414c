//! GetVolume concurrency with a slow driver: the pool keeps exactly `--worker-threads` calls in
//! flight when the wanted rate is above what it can do.

use std::process::Stdio;
use std::time::{Duration, Instant};

use super::cluster::populate;
use super::logs::finished;
use super::process::spawn;
use super::{Opts, DRIVER};
use crate::apiserver::FakeApiServer;
use crate::csidriver::{self, MockDriver};

#[derive(Debug)]
pub(super) struct Concurrency {
    pub(super) workers: usize,
    pub(super) latency: Duration,
    pub(super) volumes: usize,
    pub(super) window: Duration,
    pub(super) max_in_flight: usize,
    pub(super) mean_in_flight: f64,
    pub(super) calls: usize,
}

pub(super) fn concurrency(o: &Opts) -> Result<Concurrency, String> {
    let workers = 10;
    let latency = Duration::from_millis(50);
    let volumes = 1000;
    let api = FakeApiServer::start();
    let driver = MockDriver::start(DRIVER);
    populate(&api, &driver, volumes, 0, o.page_size);
    driver.with(|s| {
        s.list_volumes = false;
        s.latency = latency;
    });
    let dir = csidriver::temp_dir("bench-conc");
    let kubeconfig = dir.join("kubeconfig");
    api.write_kubeconfig(&kubeconfig)
        .map_err(|e| format!("write kubeconfig: {e}"))?;
    // 1,000 checks a second wanted, 200 a second possible: the pool is the bottleneck.
    let flags = [
        "--monitor-interval=1s".to_string(),
        format!("--worker-threads={workers}"),
        format!("--kube-api-qps={}", o.qps),
        format!("--kube-api-burst={}", o.burst),
    ];
    let guard = spawn(o, &kubeconfig, driver.socket(), &flags, Stdio::null())?;
    let ok = driver.wait_until(Duration::from_secs(60), |s| {
        finished(s, csidriver::GET_VOLUME) >= 100
    });
    if !ok {
        guard.terminate();
        return Err("the sidecar made no 100 ControllerGetVolume calls within 60 s".into());
    }
    let from = Instant::now();
    let window = Duration::from_secs(5);
    std::thread::sleep(window);
    let to = from + window;
    let calls = driver.calls(csidriver::GET_VOLUME);
    let max_in_flight = driver.max_in_flight();
    guard.terminate();
    let _ = std::fs::remove_dir_all(&dir);
    // Time-weighted number of calls in flight within [from, to].
    let mut busy = 0.0;
    let mut count = 0;
    for c in &calls {
        let end = c.finished.unwrap_or(to).min(to);
        let start = c.started.max(from);
        if end > start {
            busy += (end - start).as_secs_f64();
            count += 1;
        }
    }
    Ok(Concurrency {
        workers,
        latency,
        volumes,
        window,
        max_in_flight,
        mean_in_flight: busy / window.as_secs_f64(),
        calls: count,
    })
}
