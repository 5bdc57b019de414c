//! The volume-count bench (issue #8, with the v1.13 modes of issue #13): one run of the real
//! sidecar per volume count, mode and noise setting, measured from spawn to the first completed
//! sweep, over one full sweep (or round of checks) and over an idle window.

use std::fs::File;
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::cluster::{api_server, populate, set_mode};
use super::logs::{
    finished, last_finished, nth_sweep_start, print_failure, starts, traffic, wait_driver,
    wait_event_writes,
};
use super::process::{memory, spawn, Sampler};
use super::{ModeArg, Opts, Row, Traffic, DRIVER, LEASE_NS};
use crate::apiserver::FakeApiServer;
use crate::csidriver::{self, MockDriver};

pub(super) fn run_one(o: &Opts, n: usize, mode: ModeArg, noise: bool) -> Result<Row, String> {
    let api = api_server(mode)?;
    let driver = MockDriver::start(DRIVER);
    let t = Instant::now();
    populate(
        &api,
        &driver,
        n,
        if noise { o.noise_objects } else { 0 },
        o.page_size,
    );
    set_mode(&driver, mode, o.healthy);
    let populate_time = t.elapsed();
    eprintln!("   populated in {:.1} s", populate_time.as_secs_f64());
    let abnormal = if o.healthy { 0 } else { n.div_ceil(100) };
    // The health listing leaves healthy volumes out.
    let listed = if mode == ModeArg::HealthList {
        abnormal
    } else {
        n
    };
    // An empty listing is still one (empty) page.
    let pages = if o.page_size == 0 {
        1
    } else {
        listed.div_ceil(o.page_size).max(1)
    };

    let dir = csidriver::temp_dir("bench");
    let kubeconfig = dir.join("kubeconfig");
    api.write_kubeconfig(&kubeconfig)
        .map_err(|e| format!("write kubeconfig: {e}"))?;
    let log_path = dir.join("sidecar.log");
    let log = File::create(&log_path).map_err(|e| format!("create {}: {e}", log_path.display()))?;

    // List mode: the second sweep comes one interval after the first one ends, which leaves
    // room for the event drain and the idle window in between. Get mode: checks spread over
    // the interval at --get-rate per second.
    let interval = if mode.is_list() {
        o.idle + Duration::from_secs(6) + Duration::from_secs_f64(n as f64 / 20_000.0)
    } else {
        Duration::from_secs_f64((n as f64 / o.get_rate as f64).max(2.0))
    };
    let interval_flag = format!("{}ms", interval.as_millis());
    let mut flags = vec![
        "--leader-election".to_string(),
        format!("--leader-election-namespace={LEASE_NS}"),
        format!("--kube-api-qps={}", o.qps),
        format!("--kube-api-burst={}", o.burst),
    ];
    if mode.is_list() {
        flags.push(format!("--list-volumes-interval={interval_flag}"));
    } else {
        flags.push(format!("--monitor-interval={interval_flag}"));
    }
    let spawned = Instant::now();
    let guard = spawn(o, &kubeconfig, driver.socket(), &flags, Stdio::from(log))?;
    let pid = guard.pid();
    let sampler = Sampler::start(pid);

    let result = measure(
        o, &api, &driver, mode, n, abnormal, pages, spawned, &sampler, pid, interval,
    );
    sampler.stop();
    let exited = guard.terminate();
    if !exited {
        eprintln!("   warning: the sidecar did not exit within 20 s of SIGTERM");
    }
    let result = result.map(|mut r| {
        r.populate = populate_time;
        r.noise = noise;
        r
    });
    if let Err(e) = &result {
        print_failure(e, &log_path);
    }
    let _ = std::fs::remove_dir_all(&dir);
    result
}

#[allow(clippy::too_many_arguments)]
pub(super) fn measure(
    o: &Opts,
    api: &FakeApiServer,
    driver: &MockDriver,
    mode: ModeArg,
    n: usize,
    abnormal: usize,
    pages: usize,
    spawned: Instant,
    sampler: &Sampler,
    pid: u32,
    interval: Duration,
) -> Result<Row, String> {
    // A million volumes take minutes to list at start-up.
    let long = Duration::from_secs(600).max(Duration::from_millis(n as u64));
    // sweep/round 1, ends with its last event accepted (or, when there is none, when the
    // sidecar's CPU time stops moving after the last call)
    let method = mode.method();
    if mode.is_list() {
        wait_driver(driver, long, "the first sweep", |s| {
            finished(s, method) >= pages
        })?;
    } else {
        wait_driver(driver, long, "the first round of checks", |s| {
            finished(s, method) >= n
        })?;
    }
    let first_done = done(api, driver, sampler, method, abnormal, long)?;
    let startup = first_done.saturating_duration_since(spawned);
    let (rss_after_first_kib, _) = memory(pid)?;

    let mut row = Row {
        volumes: n,
        mode,
        noise: false,
        populate: Duration::ZERO,
        startup,
        rss_kib: 0,
        hwm_kib: 0,
        rss_after_first_kib,
        sweep_wall: Duration::ZERO,
        sweep_cpu: Duration::ZERO,
        sweep_traffic: Traffic::default(),
        pages,
        abnormal,
        idle_window: Duration::ZERO,
        idle_cpu: Duration::ZERO,
        idle_traffic: Traffic::default(),
        interval,
    };

    if mode.is_list() {
        // Idle: after the first sweep's events, before the second sweep starts.
        let idle_start = Instant::now() + Duration::from_millis(500);
        let planned_end = idle_start + o.idle;
        let sweep2 = driver
            .wait_until(planned_end.saturating_duration_since(Instant::now()), |s| {
                starts(s, method) >= 2
            });
        let end = if sweep2 {
            let at = nth_sweep_start(driver, method, 2).unwrap_or_else(Instant::now);
            eprintln!(
                "   warning: the second sweep began inside the idle window; window cut short"
            );
            at
        } else {
            planned_end
        };
        std::thread::sleep(Duration::from_millis(50));
        row.idle_window = end.saturating_duration_since(idle_start);
        row.idle_cpu = sampler.cpu_between(idle_start, end);
        row.idle_traffic = traffic(&api.requests(), idle_start, end);

        // The measured sweep: the second one.
        wait_driver(driver, long, "the second sweep", |s| {
            finished(s, method) >= 2 * pages
        })?;
        let start = nth_sweep_start(driver, method, 2).ok_or("no second sweep start")?;
        let end = done(api, driver, sampler, method, 2 * abnormal, long)?;
        row.sweep_wall = end.saturating_duration_since(start);
        row.sweep_cpu = sampler.cpu_between(start, end);
        row.sweep_traffic = traffic(&api.requests(), start, end);
    } else {
        // The measured round: checks N+1..2N.
        wait_driver(driver, long, "the second round of checks", |s| {
            finished(s, method) >= 2 * n
        })?;
        let (start, last) = {
            let calls = driver.calls(method);
            let start = calls[n].started;
            let mut fin: Vec<Instant> = calls.iter().filter_map(|c| c.finished).collect();
            fin.sort();
            (start, fin[2 * n - 1])
        };
        let end = done(api, driver, sampler, method, 2 * abnormal, long)?.max(last);
        row.sweep_wall = end.saturating_duration_since(start);
        row.sweep_cpu = sampler.cpu_between(start, end);
        row.sweep_traffic = traffic(&api.requests(), start, end);

        // No idle in this mode: checks never stop. The window shows steady checking.
        let idle_start = Instant::now() + Duration::from_millis(200);
        std::thread::sleep(o.idle + Duration::from_millis(250));
        let end = idle_start + o.idle;
        row.idle_window = o.idle;
        row.idle_cpu = sampler.cpu_between(idle_start, end);
        row.idle_traffic = traffic(&api.requests(), idle_start, end);
    }
    let (rss, hwm) = memory(pid)?;
    row.rss_kib = rss;
    row.hwm_kib = hwm;
    Ok(row)
}

/// How long the CPU time must stand still after a sweep that leaves no mark in the logs.
const SETTLE: Duration = Duration::from_millis(500);

/// When the work of a sweep (or round) was done: its `events`-th event write accepted and its
/// last driver call finished; with no event to wait for, when the sidecar's CPU time stopped
/// moving after that call.
fn done(
    api: &FakeApiServer,
    driver: &MockDriver,
    sampler: &Sampler,
    method: &str,
    events: usize,
    timeout: Duration,
) -> Result<Instant, String> {
    let last = last_finished(driver, method);
    if events == 0 {
        return Ok(sampler.settled(last, SETTLE, timeout));
    }
    Ok(wait_event_writes(api, events, timeout)?.max(last))
}

/// The same binary in the same mode in an empty cluster (no PV, no PVC): the fixed part of
/// its memory, read after its first two sweeps (or a few seconds of the per-volume modes).
/// Returns (VmRSS, VmHWM) in KiB.
pub(super) fn empty_cluster(o: &Opts, mode: ModeArg) -> Result<(u64, u64), String> {
    let api = api_server(mode)?;
    let driver = MockDriver::start(DRIVER);
    populate(&api, &driver, 0, 0, o.page_size);
    set_mode(&driver, mode, o.healthy);
    let dir = csidriver::temp_dir("bench-empty");
    let kubeconfig = dir.join("kubeconfig");
    api.write_kubeconfig(&kubeconfig)
        .map_err(|e| format!("write kubeconfig: {e}"))?;
    let flags = vec![
        "--leader-election".to_string(),
        format!("--leader-election-namespace={LEASE_NS}"),
        format!("--kube-api-qps={}", o.qps),
        format!("--kube-api-burst={}", o.burst),
        if mode.is_list() {
            "--list-volumes-interval=2s".to_string()
        } else {
            "--monitor-interval=2s".to_string()
        },
    ];
    let guard = spawn(o, &kubeconfig, driver.socket(), &flags, Stdio::null())?;
    let pid = guard.pid();
    let method = mode.method();
    let measured = if mode.is_list() {
        wait_driver(&driver, Duration::from_secs(60), "two empty sweeps", |s| {
            finished(s, method) >= 2
        })
    } else {
        Ok(())
    }
    .and_then(|()| {
        std::thread::sleep(Duration::from_secs(3));
        memory(pid)
    });
    guard.terminate();
    let _ = std::fs::remove_dir_all(&dir);
    measured
}
