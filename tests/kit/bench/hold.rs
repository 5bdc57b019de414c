//! `bench --hold SECS`: the bench cluster and the real sidecar, held running for a profiler.
//! One volume count and one mode; the sidecar lists every `--interval` (10 s unless given).
//! Prints the sidecar's pid once its first sweep is done, then, after SECS, the CPU it used
//! in that window and per listing cycle, so a profile (`perf record -g -p PID`) taken in the
//! window can be read per cycle and per PV.
//!
//! What a real cluster adds to a quiet fake one can be switched on: `--churn N` modifies N PVs
//! a second (an annotation, as a controller's write would; each one a MODIFIED watch event),
//! `--relist-every SECS` compacts the history and ends the watches that often, so the
//! reflectors re-watch from a forgotten resourceVersion, get 410 and list everything again.

use std::fs::File;
use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::cluster::{api_server, populate, set_mode};
use super::logs::{finished, print_failure, starts, wait_driver};
use super::process::{clock_ticks, cpu_ticks, memory, spawn};
use super::{Opts, DRIVER, LEASE_NS};
use crate::apiserver::FakeApiServer;
use crate::csidriver::{self, MockDriver};

pub(super) fn hold(o: &Opts, secs: Duration) -> Result<(), String> {
    let n = o.volumes[0];
    let mode = o.modes[0];
    if !mode.is_list() {
        return Err("bench --hold: a listing mode (list or health-list)".into());
    }
    let api = api_server(mode)?;
    let driver = MockDriver::start(DRIVER);
    let t = Instant::now();
    populate(&api, &driver, n, 0, o.page_size);
    set_mode(&driver, mode, o.healthy);
    eprintln!("   populated in {:.1} s", t.elapsed().as_secs_f64());
    let dir = csidriver::temp_dir("bench-hold");
    let kubeconfig = dir.join("kubeconfig");
    api.write_kubeconfig(&kubeconfig)
        .map_err(|e| format!("write kubeconfig: {e}"))?;
    let log_path = dir.join("sidecar.log");
    let log = File::create(&log_path).map_err(|e| format!("create {}: {e}", log_path.display()))?;
    let interval = o.interval.unwrap_or(Duration::from_secs(10));
    let flags = [
        "--leader-election".to_string(),
        format!("--leader-election-namespace={LEASE_NS}"),
        format!("--kube-api-qps={}", o.qps),
        format!("--kube-api-burst={}", o.burst),
        format!("--list-volumes-interval={}ms", interval.as_millis()),
    ];
    let guard = spawn(o, &kubeconfig, driver.socket(), &flags, Stdio::from(log))?;
    let pid = guard.pid();
    let method = mode.method();
    let measured = (|| -> Result<(), String> {
        wait_driver(&driver, Duration::from_secs(900), "the first sweep", |s| {
            starts(s, method) >= 1 && finished(s, method) >= 1
        })?;
        // Let the first sweep's tail (first reports, event drain) pass.
        std::thread::sleep(Duration::from_secs(3));
        let sweeps0 = driver.with(|s| starts(s, method));
        let c0 = cpu_ticks(pid).ok_or("the sidecar exited")?;
        println!(
            "sidecar pid {pid}: {n} volumes, {}, {}, --list-volumes-interval={}s, {} PV updates/s, relist every {:?}; holding {} s",
            mode.name(),
            if o.healthy {
                "all healthy"
            } else {
                "1% abnormal"
            },
            interval.as_secs_f64(),
            o.churn,
            o.relist_every,
            secs.as_secs()
        );
        let _ = std::io::stdout().flush();
        let from = Instant::now();
        std::thread::scope(|scope| {
            if o.churn > 0.0 {
                scope.spawn(|| churn(&api, n, o.churn, from + secs));
            }
            if let Some(every) = o.relist_every {
                let api = &api;
                scope.spawn(move || {
                    let mut next = from + every;
                    while next < from + secs {
                        std::thread::sleep(next.saturating_duration_since(Instant::now()));
                        api.compact();
                        api.close_watches();
                        next += every;
                    }
                });
            }
            std::thread::sleep(secs);
        });
        let c1 = cpu_ticks(pid).ok_or("the sidecar exited")?;
        let lists = api
            .requests()
            .iter()
            .filter(|r| r.at >= from && r.method == "GET" && !r.is_watch())
            .filter(|r| {
                r.path.ends_with("/persistentvolumes")
                    || r.path.ends_with("/persistentvolumeclaims")
            })
            .count();
        let sweeps = driver.with(|s| starts(s, method)) - sweeps0;
        let cpu = (c1 - c0) as f64 / clock_ticks();
        let (rss, hwm) = memory(pid)?;
        println!(
            "window {:.1} s: {sweeps} sweeps started, CPU {cpu:.2} s, {:.3} s per sweep, {:.2} µs per PV per sweep; {lists} PV/PVC list pages; VmRSS {} KiB, VmHWM {} KiB",
            from.elapsed().as_secs_f64(),
            cpu / sweeps.max(1) as f64,
            cpu * 1e6 / sweeps.max(1) as f64 / n as f64,
            rss,
            hwm
        );
        Ok(())
    })();
    guard.terminate();
    if let Err(e) = &measured {
        print_failure(e, &log_path);
    }
    let _ = std::fs::remove_dir_all(&dir);
    measured
}

/// Modifies `per_sec` PVs a second, one after another, until `until`.
fn churn(api: &FakeApiServer, n: usize, per_sec: f64, until: Instant) {
    let step = Duration::from_secs_f64(1.0 / per_sec);
    let mut next = Instant::now();
    let mut k = 0usize;
    while next < until {
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        let name = format!("pv-{:06}", k % n);
        if let Some(mut pv) = api.get("persistentvolumes", None, &name) {
            pv["metadata"]["annotations"]["bench.example.com/touched"] =
                serde_json::Value::String(k.to_string());
            api.update(pv);
        }
        k += 1;
        next += step;
    }
}
