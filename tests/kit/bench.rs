//! `csi-hm-testkit bench`: the footprint and speed benchmark of issue #8 (and the figures
//! issues #3 and #4 ask for). It runs the real release binary as a process against the
//! in-process fake API server and mock CSI driver, for each volume count and mode, and prints
//! one Markdown table: resident memory, one full sweep (wall and CPU from sweep start to the
//! last event accepted), API requests and bytes per sweep and per idle hour, start-up time,
//! idle CPU, plus the stripped binary size and GetVolume concurrency with a slow driver.
//!
//! CPU is user+sys of the sidecar process from `/proc/<pid>/stat` (clock ticks, 10 ms), sampled
//! by a thread every 10 ms so a sweep's start and end can be matched to the samples around
//! them. Sweep boundaries come from the driver's call log (ListVolumes calls without a token,
//! the N-th ControllerGetVolume call) and the fake server's request log (event writes).
//!
//! `--footprint` runs issue #18's scenario instead (5,000 volumes, 20,000 Pods using them on
//! 500 nodes, 20,000 unrelated Events, node watcher on), with and without MALLOC_ARENA_MAX=1:
//! peak and steady memory, idle CPU and wakeups per second.
//!
//! `--quick` (1,000 volumes, short idle window, bare binary without MALLOC_ARENA_MAX) is what CI
//! runs: it fails only on gross regressions (RSS above 64 MiB, a sweep above 10 s). Performance goals are reported, never
//! asserted anywhere else.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::apiserver::{FakeApiServer, RequestRecord};
use crate::csidriver::{self, MockDriver};
use crate::fixtures;

const DRIVER: &str = "bench.csi.example.com";
/// Namespace of the PVCs: event writes about volumes are the writes under it.
const VOL_NS: &str = "vols";
const NOISE_NS: &str = "noise";
const LEASE_NS: &str = "bench";
const QUICK_MAX_RSS_KIB: u64 = 64 * 1024;
const QUICK_MAX_SWEEP: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq)]
enum ModeArg {
    List,
    Get,
    /// CSI v1.13 ControllerListVolumeHealth, API server with the CSIVolumeHealth field.
    HealthList,
    /// CSI v1.13 ControllerGetVolumeHealth, API server with the CSIVolumeHealth field.
    HealthGet,
}

impl ModeArg {
    fn name(self) -> &'static str {
        match self {
            ModeArg::List => "ListVolumes",
            ModeArg::Get => "GetVolume",
            ModeArg::HealthList => "HealthList",
            ModeArg::HealthGet => "HealthGet",
        }
    }

    fn is_list(self) -> bool {
        matches!(self, ModeArg::List | ModeArg::HealthList)
    }

    fn is_health(self) -> bool {
        matches!(self, ModeArg::HealthList | ModeArg::HealthGet)
    }

    /// The RPC of one sweep's pages, or of one check.
    fn method(self) -> &'static str {
        match self {
            ModeArg::List => csidriver::LIST_VOLUMES,
            ModeArg::Get => csidriver::GET_VOLUME,
            ModeArg::HealthList => csidriver::LIST_VOLUME_HEALTH,
            ModeArg::HealthGet => csidriver::GET_VOLUME_HEALTH,
        }
    }
}

struct Opts {
    volumes: Vec<usize>,
    modes: Vec<ModeArg>,
    /// Which noise settings to run: false = no unrelated objects, true = 50k Pods + 50k Events.
    noise: Vec<bool>,
    noise_objects: usize,
    idle: Duration,
    quick: bool,
    qps: String,
    burst: String,
    page_size: usize,
    /// ControllerGetVolume checks per second asked of the scheduler (sets --monitor-interval).
    get_rate: usize,
    concurrency: bool,
    /// MALLOC_ARENA_MAX for the sidecar (None = leave the environment alone). The image sets 1.
    arena_max: Option<String>,
    /// Run the footprint scenario of issue #18 instead of the volume-count table.
    footprint: bool,
    /// Run the event-storm scenarios of issue #17 (partial ListVolumes view, mass abnormal).
    storms: bool,
    /// Run issue #24's CPU-per-check rows instead (both per-volume modes at a fixed rate).
    per_check: bool,
}

fn parse(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        volumes: vec![1_000, 10_000, 100_000],
        modes: vec![ModeArg::List, ModeArg::Get],
        noise: vec![false, true],
        noise_objects: 50_000,
        idle: Duration::from_secs(60),
        quick: false,
        qps: "1000".into(),
        burst: "2000".into(),
        page_size: 1000,
        get_rate: 1000,
        concurrency: true,
        arena_max: Some("1".into()),
        footprint: false,
        storms: false,
        per_check: false,
    };
    let mut idle_given = false;
    let mut volumes_given = false;
    let mut noise_given = false;
    let mut modes_given = false;
    let mut arena_given = false;
    let mut i = 0;
    while i < args.len() {
        let flag = args[i].as_str();
        let mut val = || -> Result<String, String> {
            i += 1;
            args.get(i)
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag {
            "--volumes" => {
                o.volumes = val()?
                    .split(',')
                    .map(|s| s.trim().replace('_', "").parse::<usize>())
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("--volumes: {e}"))?;
                volumes_given = true;
            }
            "--modes" => {
                o.modes = val()?
                    .split(',')
                    .map(|s| match s.trim() {
                        "list" => Ok(ModeArg::List),
                        "get" => Ok(ModeArg::Get),
                        "health-list" => Ok(ModeArg::HealthList),
                        "health-get" => Ok(ModeArg::HealthGet),
                        other => Err(format!(
                            "--modes: unknown mode {other:?} (list, get, health-list, health-get)"
                        )),
                    })
                    .collect::<Result<_, _>>()?;
                modes_given = true;
            }
            "--noise" => {
                o.noise = match val()?.as_str() {
                    "off" => vec![false],
                    "on" => vec![true],
                    "both" => vec![false, true],
                    other => return Err(format!("--noise: {other:?} is not off, on or both")),
                };
                noise_given = true;
            }
            "--noise-objects" => {
                o.noise_objects = val()?
                    .parse()
                    .map_err(|e| format!("--noise-objects: {e}"))?
            }
            "--idle-secs" => {
                o.idle = Duration::from_secs_f64(
                    val()?.parse().map_err(|e| format!("--idle-secs: {e}"))?,
                );
                idle_given = true;
            }
            "--qps" => o.qps = val()?,
            "--burst" => o.burst = val()?,
            "--page-size" => {
                o.page_size = val()?.parse().map_err(|e| format!("--page-size: {e}"))?
            }
            "--get-rate" => o.get_rate = val()?.parse().map_err(|e| format!("--get-rate: {e}"))?,
            "--no-concurrency" => o.concurrency = false,
            "--malloc-arena-max" => {
                o.arena_max = match val()?.as_str() {
                    "unset" => None,
                    v => Some(v.to_string()),
                };
                arena_given = true;
            }
            "--quick" => o.quick = true,
            "--footprint" => o.footprint = true,
            "--storms" => o.storms = true,
            "--per-check" => o.per_check = true,
            other => return Err(format!("bench: unknown flag {other:?}")),
        }
        i += 1;
    }
    if o.quick {
        if !volumes_given {
            o.volumes = vec![1_000];
        }
        if !idle_given {
            o.idle = Duration::from_secs(5);
        }
        if !noise_given {
            o.noise = vec![false];
        }
        if !modes_given {
            o.modes = vec![
                ModeArg::List,
                ModeArg::Get,
                ModeArg::HealthList,
                ModeArg::HealthGet,
            ];
        }
        // The guard is on the bare binary: the image's MALLOC_ARENA_MAX must not hide a
        // regression in what the program itself allocates (issue #18).
        if !arena_given {
            o.arena_max = None;
        }
    }
    if o.volumes.iter().any(|&n| n < 100) || o.get_rate == 0 {
        return Err("bench: at least 100 volumes (1% abnormal) and a positive --get-rate".into());
    }
    Ok(o)
}

pub fn usage() -> &'static str {
    "bench [--volumes 1000,10000,100000] [--modes list,get,health-list,health-get] [--noise off|on|both] [--noise-objects 50000] [--idle-secs 60] [--qps 1000 --burst 2000] [--page-size 1000] [--get-rate 1000] [--malloc-arena-max 1|unset] [--no-concurrency] [--quick] | bench --footprint [--idle-secs 60] | bench --storms [--volumes 10000] [--qps 5 --burst 10] | bench --per-check [--volumes 5000] [--idle-secs 30]"
}

pub fn run(args: &[String]) -> Result<(), String> {
    let o = parse(args)?;
    let bin = fixtures::sibling_binary("csi-external-health-monitor-controller");
    if !bin.exists() {
        return Err(format!(
            "{} not found: cargo build --release --bins",
            bin.display()
        ));
    }
    println!("# csi-hm-testkit bench {}", args.join(" "));
    println!("binary: {}", bin.display());
    println!("load average at start: {}", loadavg());
    if o.footprint {
        return footprint(&o, &bin);
    }
    if o.storms {
        return storms(&o);
    }
    if o.per_check {
        return per_check(&o);
    }
    let started = Instant::now();
    let mut rows = Vec::new();
    for &n in &o.volumes {
        for &mode in &o.modes {
            for &noise in &o.noise {
                eprintln!("== {n} volumes, {}, noise {noise}", mode.name());
                let row = run_one(&o, n, mode, noise)?;
                eprintln!("   {row:?}");
                rows.push(row);
            }
        }
    }
    let concurrency = if o.concurrency {
        eprintln!("== GetVolume concurrency with a slow driver");
        Some(concurrency(&o)?)
    } else {
        None
    };
    let size = binary_size(&bin);
    println!("load average at end: {}", loadavg());
    println!(
        "total benchmark time: {:.0} s\n",
        started.elapsed().as_secs_f64()
    );
    print_report(&o, &rows, concurrency.as_ref(), size);

    if o.quick {
        let mut bad = Vec::new();
        for r in &rows {
            if r.rss_kib.max(r.hwm_kib) > QUICK_MAX_RSS_KIB {
                bad.push(format!(
                    "{} volumes {}: memory {} KiB (VmHWM) above {} KiB",
                    r.volumes,
                    r.mode.name(),
                    r.hwm_kib,
                    QUICK_MAX_RSS_KIB
                ));
            }
            if r.sweep_wall > QUICK_MAX_SWEEP {
                bad.push(format!(
                    "{} volumes {}: sweep took {:.2} s, above {} s",
                    r.volumes,
                    r.mode.name(),
                    r.sweep_wall.as_secs_f64(),
                    QUICK_MAX_SWEEP.as_secs()
                ));
            }
        }
        if !bad.is_empty() {
            return Err(format!("gross regression: {}", bad.join("; ")));
        }
        println!("bench-quick: within the gross-regression limits (RSS ≤ 64 MiB, sweep ≤ 10 s)");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// one configuration

#[derive(Debug, Default, Clone, Copy)]
struct Traffic {
    requests: usize,
    bytes: usize,
    event_writes: usize,
    lease: usize,
    watch: usize,
    /// PATCHes of a PVC's status (v1.13 health modes).
    status_writes: usize,
    /// None of the above.
    other: usize,
}

#[derive(Debug)]
struct Row {
    volumes: usize,
    mode: ModeArg,
    noise: bool,
    populate: Duration,
    startup: Duration,
    rss_kib: u64,
    hwm_kib: u64,
    rss_after_first_kib: u64,
    sweep_wall: Duration,
    sweep_cpu: Duration,
    sweep_traffic: Traffic,
    pages: usize,
    abnormal: usize,
    idle_window: Duration,
    idle_cpu: Duration,
    idle_traffic: Traffic,
    /// --monitor-interval (get mode) or --list-volumes-interval (list mode).
    interval: Duration,
}

fn run_one(o: &Opts, n: usize, mode: ModeArg, noise: bool) -> Result<Row, String> {
    let api = FakeApiServer::start_with(crate::apiserver::Options {
        pvc_health_status: mode.is_health(),
        ..Default::default()
    })
    .map_err(|e| format!("start the fake API server: {e}"))?;
    let driver = MockDriver::start(DRIVER);
    let t = Instant::now();
    populate(
        &api,
        &driver,
        n,
        if noise { o.noise_objects } else { 0 },
        o.page_size,
    );
    match mode {
        ModeArg::List => {}
        ModeArg::Get => driver.with(|s| s.list_volumes = false),
        ModeArg::HealthList | ModeArg::HealthGet => {
            driver.set_generation(csidriver::Generation::V113);
            driver.with(|s| {
                s.list_volume_health = mode == ModeArg::HealthList;
                // The same 1% abnormal, as v1.13 conditions.
                for (id, v) in &s.volumes {
                    if v.abnormal {
                        s.health.insert(
                            id.clone(),
                            vec![csidriver::HealthEntry::degraded("BadBlocks", &v.message)],
                        );
                    }
                }
            });
        }
    }
    let populate_time = t.elapsed();
    eprintln!("   populated in {:.1} s", populate_time.as_secs_f64());
    let abnormal = n.div_ceil(100);
    // The health listing leaves healthy volumes out.
    let listed = if mode == ModeArg::HealthList {
        abnormal
    } else {
        n
    };
    let pages = if o.page_size == 0 {
        1
    } else {
        listed.div_ceil(o.page_size)
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
fn measure(
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
    let long = Duration::from_secs(600);
    // sweep/round 1, ends with its last event accepted
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
    let first_done = wait_event_writes(api, abnormal, long)?;
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
        let end = wait_event_writes(api, 2 * abnormal, long)?;
        let end = end.max(last_finished(driver, method));
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
        let end = wait_event_writes(api, 2 * abnormal, long)?.max(last);
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

/// A failed measurement: the error and the last lines the sidecar logged.
fn print_failure(e: &str, log_path: &Path) {
    let text = std::fs::read_to_string(log_path).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(30).collect();
    eprintln!("   failed: {e}\n   sidecar log (last lines):");
    for l in tail.into_iter().rev() {
        eprintln!("   | {l}");
    }
}

fn finished(s: &csidriver::State, method: &str) -> usize {
    s.calls
        .iter()
        .filter(|c| c.method == method && c.finished.is_some())
        .count()
}

/// Listing calls (`method`) without a starting token: one per sweep.
fn starts(s: &csidriver::State, method: &str) -> usize {
    s.calls
        .iter()
        .filter(|c| c.method == method && c.arg.is_empty())
        .count()
}

fn nth_sweep_start(driver: &MockDriver, method: &str, k: usize) -> Option<Instant> {
    driver
        .calls(method)
        .into_iter()
        .filter(|c| c.arg.is_empty())
        .nth(k - 1)
        .map(|c| c.started)
}

fn last_finished(driver: &MockDriver, method: &str) -> Instant {
    driver
        .calls(method)
        .iter()
        .filter_map(|c| c.finished)
        .max()
        .unwrap_or_else(Instant::now)
}

fn wait_driver(
    driver: &MockDriver,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&csidriver::State) -> bool,
) -> Result<(), String> {
    if driver.wait_until(timeout, pred) {
        Ok(())
    } else {
        Err(format!("timed out after {timeout:?} waiting for {what}"))
    }
}

fn is_event_write(r: &RequestRecord) -> bool {
    r.method != "GET"
        && (200..300).contains(&r.status)
        && r.path
            .starts_with(&format!("/api/v1/namespaces/{VOL_NS}/events"))
}

fn is_lease(r: &RequestRecord) -> bool {
    r.path.contains("/leases")
}

/// Waits for the `k`-th accepted event write about a volume; returns when it was accepted.
fn wait_event_writes(api: &FakeApiServer, k: usize, timeout: Duration) -> Result<Instant, String> {
    let count = |a: &FakeApiServer| a.requests().iter().filter(|r| is_event_write(r)).count();
    if !api.wait_until(timeout, |a| count(a) >= k) {
        return Err(format!(
            "timed out waiting for {k} event writes (saw {})",
            count(api)
        ));
    }
    api.requests()
        .iter()
        .filter(|r| is_event_write(r))
        .nth(k - 1)
        .map(|r| r.at)
        .ok_or_else(|| "event write vanished".to_string())
}

fn traffic(log: &[RequestRecord], from: Instant, to: Instant) -> Traffic {
    let mut t = Traffic::default();
    for r in log.iter().filter(|r| r.at >= from && r.at <= to) {
        t.requests += 1;
        t.bytes += r.request_bytes + r.response_bytes;
        if r.is_watch() {
            t.watch += 1;
        } else if is_lease(r) {
            t.lease += 1;
        } else if is_event_write(r) {
            t.event_writes += 1;
        } else if r.method == "PATCH" && r.path.ends_with("/status") {
            t.status_writes += 1;
        } else {
            t.other += 1;
        }
    }
    t
}

// ---------------------------------------------------------------------------------------------
// cluster contents

/// `n` Bound PVs of the driver with their PVCs (1% abnormal in the driver), and `noise` Pods
/// plus `noise` Events that have nothing to do with the driver.
fn populate(api: &FakeApiServer, driver: &MockDriver, n: usize, noise: usize, page_size: usize) {
    for ns in [VOL_NS, NOISE_NS, LEASE_NS] {
        fixtures::namespace(api, ns);
    }
    let mut objects = Vec::with_capacity(2 * n + 2 * noise);
    for i in 0..n {
        let pvc_uid = format!("00000000-0000-4000-8000-{i:012}");
        objects.push(json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": format!("pvc-{i:06}"), "namespace": VOL_NS, "uid": pvc_uid},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}},
                     "storageClassName": "bench", "volumeMode": "Filesystem",
                     "volumeName": format!("pv-{i:06}")},
            "status": {"phase": "Bound", "accessModes": ["ReadWriteOnce"], "capacity": {"storage": "1Gi"}}
        }));
        objects.push(json!({
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": format!("pv-{i:06}"),
                         "annotations": {"pv.kubernetes.io/provisioned-by": DRIVER}},
            "spec": {
                "capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Delete", "storageClassName": "bench",
                "volumeMode": "Filesystem",
                "csi": {"driver": DRIVER, "volumeHandle": format!("vol-{i:06}"),
                        "fsType": "ext4",
                        "volumeAttributes": {"storage.kubernetes.io/csiProvisionerIdentity": "1700000000000-1234-bench.csi.example.com"}},
                "claimRef": {"kind": "PersistentVolumeClaim", "namespace": VOL_NS,
                             "name": format!("pvc-{i:06}"), "uid": pvc_uid, "apiVersion": "v1"}
            },
            "status": {"phase": "Bound"}
        }));
    }
    for i in 0..noise {
        objects.push(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("app-{i:06}"), "namespace": NOISE_NS,
                         "labels": {"app": "noise", "pod-template-hash": "5d8f7c9b6d"}},
            "spec": {"nodeName": format!("node-{:03}", i % 500),
                     "containers": [{"name": "app", "image": "registry.example.com/app:1.2.3",
                                     "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}],
                     "restartPolicy": "Always", "serviceAccountName": "default"},
            "status": {"phase": "Running", "podIP": format!("10.{}.{}.{}", i / 65536 % 256, i / 256 % 256, i % 256)}
        }));
        objects.push(json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": format!("app-{i:06}.17a3c0d2e4f5a6b7"), "namespace": NOISE_NS},
            "involvedObject": {"kind": "Pod", "namespace": NOISE_NS, "name": format!("app-{i:06}"),
                               "apiVersion": "v1", "uid": format!("10000000-0000-4000-8000-{i:012}")},
            "reason": "Scheduled", "type": "Normal",
            "message": format!("Successfully assigned {NOISE_NS}/app-{i:06} to node-{:03}", i % 500),
            "source": {"component": "default-scheduler"}, "count": 1,
            "firstTimestamp": "2026-11-27T10:00:00Z", "lastTimestamp": "2026-11-27T10:00:00Z"
        }));
    }
    api.create_many(objects);
    driver.with(|s| {
        s.page_size = page_size;
        for i in 0..n {
            let abnormal = i % 100 == 0;
            s.volumes.insert(
                format!("vol-{i:06}"),
                csidriver::Volume {
                    abnormal,
                    message: if abnormal {
                        format!("Volume vol-{i:06}: 3 unreadable blocks on the backend")
                    } else {
                        String::new()
                    },
                    omit_volume: false,
                    omit_condition: false,
                },
            );
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Event storms (issue #17)

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Storm {
    /// ListVolumes lists none of the volumes; ControllerGetVolume knows them all (1% abnormal).
    PartialView,
    /// Every volume abnormal: far more Events per sweep than the write budget.
    MassAbnormal,
}

#[derive(Debug)]
struct StormRow {
    storm: Storm,
    volumes: usize,
    window: Duration,
    sweeps: usize,
    events_written: usize,
    missing_events: usize,
    dropped: u64,
    log_lines: usize,
    drop_lines: usize,
    cpu_per_sweep: Duration,
    rss_kib: u64,
    hwm_kib: u64,
}

const STORM_INTERVAL: Duration = Duration::from_secs(10);
const STORM_SWEEPS: usize = 3;

fn storms(o: &Opts) -> Result<(), String> {
    // --volumes defaults to the table's list; the storms are run at its largest value up to
    // 10,000 unless one value is given.
    let n = if o.volumes.len() == 1 {
        o.volumes[0]
    } else {
        10_000
    };
    let mut rows = Vec::new();
    for storm in [Storm::PartialView, Storm::MassAbnormal] {
        eprintln!("== storm {storm:?}, {n} volumes");
        let row = storm_run(o, n, storm)?;
        eprintln!("   {row:?}");
        rows.push(row);
    }
    println!("load average at end: {}", loadavg());
    println!(
        "\nStorms: ListVolumes mode, --list-volumes-interval={}s, --kube-api-qps={} --kube-api-burst={}, {} sweeps measured\n",
        STORM_INTERVAL.as_secs(),
        o.qps,
        o.burst,
        STORM_SWEEPS
    );
    println!("| scenario | volumes | sweeps | Events written | missing Events | dropped | log lines | drop lines | CPU per sweep | RSS | VmHWM |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {:?} | {} | {} in {:.0} s | {} | {} | {} | {} | {} | {:.0} ms | {:.1} MiB | {:.1} MiB |",
            r.storm,
            r.volumes,
            r.sweeps,
            r.window.as_secs_f64(),
            r.events_written,
            r.missing_events,
            r.dropped,
            r.log_lines,
            r.drop_lines,
            r.cpu_per_sweep.as_secs_f64() * 1000.0,
            r.rss_kib as f64 / 1024.0,
            r.hwm_kib as f64 / 1024.0
        );
    }
    Ok(())
}

fn storm_run(o: &Opts, n: usize, storm: Storm) -> Result<StormRow, String> {
    let api = FakeApiServer::start();
    let driver = MockDriver::start(DRIVER);
    populate(&api, &driver, n, 0, o.page_size);
    driver.with(|s| {
        let ids: Vec<String> = s.volumes.keys().cloned().collect();
        for id in ids {
            match storm {
                Storm::PartialView => {
                    s.list_volumes_hidden.insert(id);
                }
                Storm::MassAbnormal => {
                    let v = s.volumes.get_mut(&id).expect("listed");
                    v.abnormal = true;
                    v.message = format!("Volume {id}: 3 unreadable blocks on the backend");
                }
            }
        }
    });
    let dir = csidriver::temp_dir("bench-storm");
    let kubeconfig = dir.join("kubeconfig");
    api.write_kubeconfig(&kubeconfig)
        .map_err(|e| format!("write kubeconfig: {e}"))?;
    let log_path = dir.join("sidecar.log");
    let log = File::create(&log_path).map_err(|e| format!("create {}: {e}", log_path.display()))?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("pick a port: {e}"))?
        .port();
    let flags = [
        format!("--list-volumes-interval={}s", STORM_INTERVAL.as_secs()),
        format!("--kube-api-qps={}", o.qps),
        format!("--kube-api-burst={}", o.burst),
        format!("--http-endpoint=127.0.0.1:{port}"),
    ];
    let guard = spawn(o, &kubeconfig, driver.socket(), &flags, Stdio::from(log))?;
    let pid = guard.pid();
    // The partial view lists nothing: one empty page per sweep.
    let pages = if o.page_size == 0 || storm == Storm::PartialView {
        1
    } else {
        n.div_ceil(o.page_size)
    };
    // From the end of the first sweep to the end of STORM_SWEEPS more.
    let first = wait_driver(&driver, Duration::from_secs(120), "the first sweep", |s| {
        finished(s, csidriver::LIST_VOLUMES) >= pages
    });
    if first.is_err() {
        print_failure("no first sweep", &log_path);
        return Err("no first sweep within 120 s".into());
    }
    let t0 = Instant::now();
    let cpu0 = cpu_ticks(pid).unwrap_or(0);
    wait_driver(
        &driver,
        Duration::from_secs(300),
        "the measured sweeps",
        |s| finished(s, csidriver::LIST_VOLUMES) >= pages * (STORM_SWEEPS + 1),
    )
    .inspect_err(|e| print_failure(e, &log_path))?;
    let window = t0.elapsed();
    let cpu1 = cpu_ticks(pid).unwrap_or(0);
    let (rss_kib, hwm_kib) = memory(pid)?;
    let metrics = http_get_text(port, "/metrics");
    let dropped: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("csi_volume_health_events_dropped_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum();
    guard.terminate();
    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    let events = api.events();
    let row = StormRow {
        storm,
        volumes: n,
        window,
        sweeps: STORM_SWEEPS,
        events_written: api.requests().iter().filter(|r| is_event_write(r)).count(),
        missing_events: events
            .iter()
            .filter(|e| {
                e["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("was not found by CSI driver"))
            })
            .count(),
        dropped,
        log_lines: text.lines().count(),
        drop_lines: text
            .lines()
            .filter(|l| l.contains("too many queued events"))
            .count(),
        cpu_per_sweep: Duration::from_secs_f64(
            (cpu1.saturating_sub(cpu0)) as f64 / clock_ticks() / STORM_SWEEPS as f64,
        ),
        rss_kib,
        hwm_kib,
    };
    let _ = std::fs::remove_dir_all(&dir);
    Ok(row)
}

/// The body of a plain HTTP/1.1 GET to the sidecar (empty on any error).
fn http_get_text(port: u16, path: &str) -> String {
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

// ---------------------------------------------------------------------------------------------
// GetVolume concurrency with a slow driver

#[derive(Debug)]
struct Concurrency {
    workers: usize,
    latency: Duration,
    volumes: usize,
    window: Duration,
    max_in_flight: usize,
    mean_in_flight: f64,
    calls: usize,
}

fn concurrency(o: &Opts) -> Result<Concurrency, String> {
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

// ---------------------------------------------------------------------------------------------
// process measurements

/// The sidecar with the environment the container image gives it (MALLOC_ARENA_MAX, see the
/// Dockerfile), unless `--malloc-arena-max unset`.
fn spawn(
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
fn spawn_env(
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
struct ChildGuard(Option<Child>);

impl ChildGuard {
    fn pid(&self) -> u32 {
        self.0.as_ref().map(Child::id).unwrap_or(0)
    }

    /// SIGTERM and wait up to 20 s; true when it exited by itself.
    fn terminate(mut self) -> bool {
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

fn clock_ticks() -> f64 {
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
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state); utime is field 14, stime field 15.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// (VmRSS, VmHWM) in KiB.
fn memory(pid: u32) -> Result<(u64, u64), String> {
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
struct Sampler {
    samples: Arc<Mutex<Vec<(Instant, u64)>>>,
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
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
    fn cpu_between(&self, from: Instant, to: Instant) -> Duration {
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

    fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
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
fn binary_size(bin: &Path) -> (u64, Option<u64>) {
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

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// footprint (issue #18): memory and idle cost in a cluster shaped like the side-by-side
// comparison with the Go sidecar

const FP_VOLUMES: usize = 5_000;
const FP_PODS: usize = 20_000;
const FP_EVENTS: usize = 20_000;
const FP_NODES: usize = 500;
/// Peak and steady memory are read this long after the sidecar starts, as in the issue.
const FP_LOAD_WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct FootprintRow {
    arena: Option<String>,
    cluster: &'static str,
    hwm_kib: u64,
    rss_kib: u64,
    /// CPU over the first minute (start-up, caches, sweeps every 10 s).
    load_cpu: Duration,
    idle_window: Duration,
    idle_cpu: Duration,
    /// Voluntary context switches of all threads over the idle window.
    idle_switches: u64,
    /// The same by thread name, busiest first.
    idle_by_thread: Vec<(String, u64)>,
}

/// Voluntary context switches of every thread of `pid` (each one is a thread waking up after
/// it blocked or slept), by thread id, with the thread's name.
fn voluntary_switches(pid: u32) -> BTreeMap<String, (String, u64)> {
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
fn switches_between(
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

/// 5,000 Bound PVs + PVCs of the driver, 500 Ready nodes, 20,000 Pods on them using those PVCs
/// (four per PVC), 20,000 Events about unrelated Pods.
fn populate_footprint(api: &FakeApiServer, driver: &MockDriver, page_size: usize) {
    populate(api, driver, FP_VOLUMES, 0, page_size);
    let mut objects = Vec::with_capacity(FP_NODES + FP_PODS + FP_EVENTS);
    for i in 0..FP_NODES {
        objects.push(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": format!("node-{i:03}"),
                         "labels": {"kubernetes.io/hostname": format!("node-{i:03}"), "kubernetes.io/os": "linux",
                                    "topology.kubernetes.io/zone": format!("zone-{}", i % 3)}},
            "spec": {"podCIDR": format!("10.{}.{}.0/24", 100 + i / 256, i % 256)},
            "status": {
                "capacity": {"cpu": "16", "memory": "65843896Ki", "pods": "110"},
                "allocatable": {"cpu": "15800m", "memory": "64692920Ki", "pods": "110"},
                "conditions": [
                    {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory",
                     "lastHeartbeatTime": "2026-11-27T10:00:00Z", "lastTransitionTime": "2026-11-20T10:00:00Z"},
                    {"type": "DiskPressure", "status": "False", "reason": "KubeletHasNoDiskPressure",
                     "lastHeartbeatTime": "2026-11-27T10:00:00Z", "lastTransitionTime": "2026-11-20T10:00:00Z"},
                    {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status",
                     "lastHeartbeatTime": "2026-11-27T10:00:00Z", "lastTransitionTime": "2026-11-20T10:00:00Z"}
                ],
                "nodeInfo": {"kubeletVersion": "v1.36.2", "containerRuntimeVersion": "containerd://2.1.0",
                             "osImage": "Debian GNU/Linux 12 (bookworm)", "architecture": "amd64"}
            }
        }));
    }
    for i in 0..FP_PODS {
        let pvc = format!("pvc-{:06}", i % FP_VOLUMES);
        objects.push(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("db-{i:06}"), "namespace": VOL_NS,
                         "labels": {"app": "db", "pod-template-hash": "5d8f7c9b6d", "shard": format!("{}", i % FP_VOLUMES)},
                         "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-11-27T09:00:00Z"},
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "db-5d8f7c9b6d",
                                              "uid": "20000000-0000-4000-8000-000000000001", "controller": true}]},
            "spec": {
                "nodeName": format!("node-{:03}", i % FP_NODES),
                "containers": [{"name": "db", "image": "registry.example.com/db:16.4",
                                "args": ["--data-dir=/data", "--listen=0.0.0.0:5432"],
                                "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                                "resources": {"requests": {"cpu": "250m", "memory": "512Mi"}},
                                "volumeMounts": [{"name": "data", "mountPath": "/data"},
                                                 {"name": "kube-api-access-x7k2p", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}]}],
                "volumes": [
                    {"name": "data", "persistentVolumeClaim": {"claimName": pvc}},
                    {"name": "kube-api-access-x7k2p", "projected": {"defaultMode": 420, "sources": [
                        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}}]}}
                ],
                "restartPolicy": "Always", "serviceAccountName": "default", "schedulerName": "default-scheduler"
            },
            "status": {"phase": "Running", "podIP": format!("10.{}.{}.{}", i / 65536 % 256, i / 256 % 256, i % 256),
                       "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-11-27T10:00:05Z"}],
                       "containerStatuses": [{"name": "db", "ready": true, "restartCount": 0,
                                              "image": "registry.example.com/db:16.4",
                                              "state": {"running": {"startedAt": "2026-11-27T10:00:04Z"}}}]}
        }));
    }
    for i in 0..FP_EVENTS {
        objects.push(json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": format!("app-{i:06}.17a3c0d2e4f5a6b7"), "namespace": NOISE_NS},
            "involvedObject": {"kind": "Pod", "namespace": NOISE_NS, "name": format!("app-{i:06}"),
                               "apiVersion": "v1", "uid": format!("10000000-0000-4000-8000-{i:012}")},
            "reason": "Scheduled", "type": "Normal",
            "message": format!("Successfully assigned {NOISE_NS}/app-{i:06} to node-{:03}", i % FP_NODES),
            "source": {"component": "default-scheduler"}, "count": 1,
            "firstTimestamp": "2026-11-27T10:00:00Z", "lastTimestamp": "2026-11-27T10:00:00Z"
        }));
    }
    api.create_many(objects);
}

/// One sidecar run of the footprint scenario: `idle` = sweeps an hour apart and a quiet window
/// measured after the first one; otherwise sweeps every 10 s and memory read at one minute.
fn footprint_run(
    o: &Opts,
    arena: Option<&str>,
    populated: bool,
    idle: bool,
) -> Result<FootprintRow, String> {
    let api = FakeApiServer::start();
    let driver = MockDriver::start(DRIVER);
    if populated {
        populate_footprint(&api, &driver, o.page_size);
    } else {
        for ns in [VOL_NS, NOISE_NS, LEASE_NS] {
            fixtures::namespace(&api, ns);
        }
    }
    let dir = csidriver::temp_dir("bench-fp");
    let kubeconfig = dir.join("kubeconfig");
    api.write_kubeconfig(&kubeconfig)
        .map_err(|e| format!("write kubeconfig: {e}"))?;
    let log_path = dir.join("sidecar.log");
    let log = File::create(&log_path).map_err(|e| format!("create {}: {e}", log_path.display()))?;
    let flags = [
        "--leader-election".to_string(),
        format!("--leader-election-namespace={LEASE_NS}"),
        format!("--kube-api-qps={}", o.qps),
        format!("--kube-api-burst={}", o.burst),
        "--enable-node-watcher".to_string(),
        "--report-missing-volumes=false".to_string(),
        "--monitor-interval=10s".to_string(),
        // Metrics and health endpoints on, as a deployment has them.
        "--http-endpoint=127.0.0.1:0".to_string(),
        format!(
            "--list-volumes-interval={}",
            if idle { "1h" } else { "10s" }
        ),
    ];
    let spawned = Instant::now();
    let guard = spawn_env(
        arena,
        &kubeconfig,
        driver.socket(),
        &flags,
        Stdio::from(log),
    )?;
    let pid = guard.pid();
    let sampler = Sampler::start(pid);
    let measured = (|| -> Result<FootprintRow, String> {
        let long = Duration::from_secs(600);
        let abnormal = if populated {
            FP_VOLUMES.div_ceil(100)
        } else {
            0
        };
        // An empty cluster has no event to wait for: its figures are read at one minute.
        if populated {
            wait_event_writes(&api, abnormal, long)?;
        }
        let mut row = FootprintRow {
            arena: arena.map(str::to_string),
            cluster: if populated { "issue #18" } else { "empty" },
            hwm_kib: 0,
            rss_kib: 0,
            load_cpu: Duration::ZERO,
            idle_window: Duration::ZERO,
            idle_cpu: Duration::ZERO,
            idle_switches: 0,
            idle_by_thread: Vec::new(),
        };
        if idle {
            // Let the first sweep's tail (event drain, metric updates) settle first.
            std::thread::sleep(Duration::from_secs(2));
            let from = Instant::now();
            let before = voluntary_switches(pid);
            std::thread::sleep(o.idle);
            let to = Instant::now();
            row.idle_by_thread = switches_between(&before, &voluntary_switches(pid));
            row.idle_switches = row.idle_by_thread.iter().map(|(_, n)| n).sum();
            std::thread::sleep(Duration::from_millis(50));
            row.idle_window = to - from;
            row.idle_cpu = sampler.cpu_between(from, to);
        } else {
            let at = spawned + FP_LOAD_WINDOW;
            std::thread::sleep(at.saturating_duration_since(Instant::now()));
            std::thread::sleep(Duration::from_millis(50));
            row.load_cpu = sampler.cpu_between(spawned, at);
        }
        let (rss, hwm) = memory(pid)?;
        row.rss_kib = rss;
        row.hwm_kib = hwm;
        Ok(row)
    })();
    sampler.stop();
    guard.terminate();
    if let Err(e) = &measured {
        print_failure(e, &log_path);
    }
    let _ = std::fs::remove_dir_all(&dir);
    measured
}

/// The footprint scenario, with and without MALLOC_ARENA_MAX=1: peak and steady memory at one
/// minute with sweeps every 10 s, then idle CPU and wakeups with sweeps an hour apart, and the
/// same memory figures in an empty cluster.
fn footprint(o: &Opts, bin: &Path) -> Result<(), String> {
    let started = Instant::now();
    let mut load = Vec::new();
    let mut idle = Vec::new();
    for arena in [None, Some("1")] {
        let label = arena.unwrap_or("(unset)");
        eprintln!("== footprint, MALLOC_ARENA_MAX={label}: sweeps every 10 s, memory at 60 s");
        load.push(footprint_run(o, arena, true, false)?);
        eprintln!("   {:?}", load.last());
        eprintln!("== footprint, MALLOC_ARENA_MAX={label}: idle window");
        idle.push(footprint_run(o, arena, true, true)?);
        eprintln!("   {:?}", idle.last());
        eprintln!("== footprint, MALLOC_ARENA_MAX={label}: empty cluster");
        load.push(footprint_run(o, arena, false, false)?);
        eprintln!("   {:?}", load.last());
    }
    let size = binary_size(bin);
    println!("load average at end: {}", loadavg());
    println!(
        "total benchmark time: {:.0} s\n",
        started.elapsed().as_secs_f64()
    );
    println!(
        "Cluster: {FP_VOLUMES} Bound PVs + PVCs of the driver (1% abnormal), {FP_NODES} Ready Nodes, {FP_PODS} Pods on them using those PVCs, {FP_EVENTS} unrelated Events. Flags: --leader-election --enable-node-watcher --report-missing-volumes=false --monitor-interval=10s --http-endpoint=127.0.0.1:0 --kube-api-qps={} --kube-api-burst={}; driver page size {}.\n",
        o.qps, o.burst, o.page_size
    );
    println!("| MALLOC_ARENA_MAX | cluster | VmHWM MiB | VmRSS at 60 s MiB | CPU s in the first minute |");
    println!("|---|---|---:|---:|---:|");
    for r in &load {
        println!(
            "| {} | {} | {} | {} | {} |",
            r.arena.as_deref().unwrap_or("unset"),
            r.cluster,
            mib(r.hwm_kib),
            mib(r.rss_kib),
            secs(r.load_cpu)
        );
    }
    println!("\nIdle (--list-volumes-interval=1h, a window of {:.0} s starting 2 s after the first sweep's last event):\n", o.idle.as_secs_f64());
    println!("| MALLOC_ARENA_MAX | VmHWM MiB | VmRSS MiB | CPU s per minute | wakeups per second (voluntary context switches, all threads) |");
    println!("|---|---:|---:|---:|---:|");
    for r in &idle {
        let minutes = r.idle_window.as_secs_f64() / 60.0;
        println!(
            "| {} | {} | {} | {:.3} | {:.1} |",
            r.arena.as_deref().unwrap_or("unset"),
            mib(r.hwm_kib),
            mib(r.rss_kib),
            r.idle_cpu.as_secs_f64() / minutes.max(f64::EPSILON),
            r.idle_switches as f64 / r.idle_window.as_secs_f64().max(f64::EPSILON)
        );
    }
    for r in &idle {
        let per_sec = |n: u64| n as f64 / r.idle_window.as_secs_f64().max(f64::EPSILON);
        let threads: Vec<String> = r
            .idle_by_thread
            .iter()
            .map(|(name, n)| format!("{name} {:.2}", per_sec(*n)))
            .collect();
        println!(
            "\nWakeups per second by thread, MALLOC_ARENA_MAX={}: {}",
            r.arena.as_deref().unwrap_or("unset"),
            threads.join(", ")
        );
    }
    println!(
        "\nBinary: {} bytes as built ({:.1} MiB); stripped copy: {}",
        size.0,
        size.0 as f64 / 1048576.0,
        match size.1 {
            Some(s) => format!("{s} bytes ({:.1} MiB)", s as f64 / 1048576.0),
            None => "strip failed".into(),
        }
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// report

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

fn secs(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64())
}

fn per_hour(count: usize, window: Duration) -> String {
    if window.is_zero() {
        return "-".into();
    }
    format!("{:.0}", count as f64 * 3600.0 / window.as_secs_f64())
}

fn print_report(o: &Opts, rows: &[Row], conc: Option<&Concurrency>, size: (u64, Option<u64>)) {
    println!(
        "Sidecar flags: --leader-election, --kube-api-qps={} --kube-api-burst={}; environment MALLOC_ARENA_MAX={}; driver page size {}; 1% of volumes abnormal; GetVolume mode at {} checks/s (--monitor-interval = volumes / rate, at least 2 s).",
        o.qps,
        o.burst,
        o.arena_max.as_deref().unwrap_or("(unset)"),
        if o.page_size == 0 { "unlimited".to_string() } else { o.page_size.to_string() },
        o.get_rate
    );
    println!(
        "Noise = {} unrelated Pods + {} unrelated Events in the API server.\n",
        o.noise_objects, o.noise_objects
    );
    println!("### Memory and start-up\n");
    println!("| volumes | mode | noise | VmRSS after 1st sweep MiB | VmRSS steady MiB | VmHWM MiB | start-up to 1st completed sweep s | cluster populate s |");
    println!("|---:|---|---|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {:.1} |",
            r.volumes,
            r.mode.name(),
            if r.noise { "yes" } else { "no" },
            mib(r.rss_after_first_kib),
            mib(r.rss_kib),
            mib(r.hwm_kib),
            secs(r.startup),
            r.populate.as_secs_f64(),
        );
    }
    println!("\n### One full sweep (second sweep / second round of checks)\n");
    println!("| volumes | mode | noise | interval s | abnormal | driver pages | wall s | CPU s (user+sys) | API requests | of which event writes | PVC status writes | lease, watch, other | bytes |");
    println!("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let t = &r.sweep_traffic;
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.volumes,
            r.mode.name(),
            if r.noise { "yes" } else { "no" },
            secs(r.interval),
            r.abnormal,
            if r.mode.is_list() {
                r.pages.to_string()
            } else {
                "-".into()
            },
            secs(r.sweep_wall),
            secs(r.sweep_cpu),
            t.requests,
            t.event_writes,
            t.status_writes,
            t.other + t.lease + t.watch,
            t.bytes
        );
    }
    println!("\n### Idle (ListVolumes: between two sweeps; GetVolume: checks never stop, so this is steady checking)\n");
    println!("| volumes | mode | noise | window s | CPU s in window | requests in window (lease / watch / event writes / other) | bytes in window | requests per hour | bytes per hour | other requests per hour |");
    println!("|---:|---|---|---:|---:|---|---:|---:|---:|---:|");
    for r in rows {
        let t = &r.idle_traffic;
        println!(
            "| {} | {} | {} | {} | {} | {} / {} / {} / {} | {} | {} | {} | {} |",
            r.volumes,
            r.mode.name(),
            if r.noise { "yes" } else { "no" },
            secs(r.idle_window),
            secs(r.idle_cpu),
            t.lease,
            t.watch,
            t.event_writes,
            t.other,
            t.bytes,
            per_hour(t.requests, r.idle_window),
            per_hour(t.bytes, r.idle_window),
            per_hour(t.other, r.idle_window),
        );
    }
    // Bytes per volume: the slope of steady RSS between the smallest and the largest count
    // (ListVolumes mode, no noise), so the fixed cost of the process cancels out.
    let mut by_n: BTreeMap<usize, u64> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.mode == ModeArg::List && !r.noise) {
        by_n.insert(r.volumes, r.rss_kib);
    }
    if let (Some((&n0, &r0)), Some((&n1, &r1))) = (by_n.iter().next(), by_n.iter().next_back()) {
        if n1 > n0 {
            let per = (r1 as f64 - r0 as f64) * 1024.0 / (n1 - n0) as f64;
            println!(
                "\nMemory per volume (PV + PVC + state + metric series), ListVolumes mode: {per:.0} bytes (VmRSS slope between {n0} and {n1} volumes)"
            );
        }
    }
    if let Some(c) = conc {
        println!(
            "\nGetVolume concurrency: {} volumes, --worker-threads={}, driver latency {:?}, --monitor-interval=1s (demand above capacity): max in flight {}, mean in flight {:.2} over {:?} ({} calls)",
            c.volumes, c.workers, c.latency, c.max_in_flight, c.mean_in_flight, c.window, c.calls
        );
    }
    println!(
        "\nBinary: {} bytes as built ({:.1} MiB); stripped copy: {}",
        size.0,
        size.0 as f64 / 1048576.0,
        match size.1 {
            Some(s) => format!("{s} bytes ({:.1} MiB)", s as f64 / 1048576.0),
            None => "strip failed".into(),
        }
    );
}

// ---------------------------------------------------------------------------------------------
// CPU per check (issue #24)

/// Checks a second asked of the sidecar in `--per-check`: about the Go sidecar's pace in
/// issue #24's comparison.
const PER_CHECK_RATE: f64 = 500.0;
/// Warm-up before the window: start-up, the caches, the first round's spread.
const PER_CHECK_WARMUP: Duration = Duration::from_secs(15);

/// `--per-check`: the real sidecar in ControllerGetVolume and in ControllerGetVolumeHealth
/// mode, `--volumes` healthy volumes (5,000 unless given) checked at 500 a second, against a
/// trivial mock driver in its own process (`csi-driver`, so its CPU is not the sidecar's).
/// CPU per check is the sidecar's user+sys from `/proc/<pid>/stat` over the window
/// (`--idle-secs`, 30 unless given) divided by the checks its metrics counted in it.
fn per_check(o: &Opts) -> Result<(), String> {
    let n = if o.volumes == [1_000, 10_000, 100_000] {
        5_000
    } else {
        o.volumes[0]
    };
    let window = if o.idle == Duration::from_secs(60) {
        Duration::from_secs(30)
    } else {
        o.idle
    };
    let interval = Duration::from_secs_f64(n as f64 / PER_CHECK_RATE);
    // Enough workers that the pool never limits the pace (each call takes well under 1 ms).
    let workers = 50;
    println!(
        "CPU per check: {n} healthy Bound PVs, --monitor-interval={}ms --worker-threads={workers}, mock driver in its own process, {}s warm-up, {}s window\n",
        interval.as_millis(),
        PER_CHECK_WARMUP.as_secs(),
        window.as_secs()
    );
    println!("| mode | checks/s | CPU ms per check | sidecar CPU s in window |");
    println!("|---|---:|---:|---:|");
    for mode in [ModeArg::Get, ModeArg::HealthGet] {
        let (rate, per_check, cpu) = per_check_run(o, n, mode, interval, workers, window)?;
        println!(
            "| {} | {rate:.0} | {:.3} | {cpu:.2} |",
            csidriver_method_name(mode),
            per_check * 1000.0
        );
    }
    println!("\nload average at end: {}", loadavg());
    Ok(())
}

fn csidriver_method_name(mode: ModeArg) -> &'static str {
    match mode {
        ModeArg::HealthGet => "ControllerGetVolumeHealth (v1.13)",
        _ => "ControllerGetVolume (v1.12)",
    }
}

/// One mode: (checks per second, CPU seconds per check, CPU seconds) over the window.
fn per_check_run(
    o: &Opts,
    n: usize,
    mode: ModeArg,
    interval: Duration,
    workers: usize,
    window: Duration,
) -> Result<(f64, f64, f64), String> {
    let api = FakeApiServer::start_with(crate::apiserver::Options {
        pvc_health_status: mode.is_health(),
        ..Default::default()
    })
    .map_err(|e| format!("start the fake API server: {e}"))?;
    // The PVs and PVCs; this in-process driver only takes populate's volumes and is not used.
    let unused = MockDriver::start(DRIVER);
    populate(&api, &unused, n, 0, o.page_size);
    let dir = csidriver::temp_dir("bench-per-check");
    let kubeconfig = dir.join("kubeconfig");
    api.write_kubeconfig(&kubeconfig)
        .map_err(|e| format!("write kubeconfig: {e}"))?;
    let socket = dir.join("driver.sock");
    let mut cmd = Command::new(std::env::current_exe().map_err(|e| format!("current exe: {e}"))?);
    cmd.arg("csi-driver")
        .arg("--name")
        .arg(DRIVER)
        .arg("--socket")
        .arg(&socket)
        .arg("--generation")
        .arg(if mode.is_health() { "v1.13" } else { "v1.12" })
        .arg("--no-list");
    // Every volume known and healthy.
    for i in 0..n {
        cmd.arg("--volume").arg(format!("vol-{i:06}"));
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
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("pick a port: {e}"))?
        .port();
    let flags = [
        format!("--monitor-interval={}ms", interval.as_millis()),
        format!("--worker-threads={workers}"),
        format!("--kube-api-qps={}", o.qps),
        format!("--kube-api-burst={}", o.burst),
        format!("--http-endpoint=127.0.0.1:{port}"),
    ];
    let guard = spawn(o, &kubeconfig, &socket, &flags, Stdio::null())?;
    let pid = guard.pid();
    std::thread::sleep(PER_CHECK_WARMUP);
    let method = mode.method();
    let probes = || -> f64 {
        http_get_text(port, "/metrics")
            .lines()
            .filter(|l| l.starts_with("csi_volume_health_probe_total{") && l.contains(method))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let (p0, c0, t0) = (probes(), cpu_ticks(pid), Instant::now());
    std::thread::sleep(window);
    let (p1, c1, t1) = (probes(), cpu_ticks(pid), Instant::now());
    guard.terminate();
    driver.terminate();
    drop(unused);
    let _ = std::fs::remove_dir_all(&dir);
    let (Some(c0), Some(c1)) = (c0, c1) else {
        return Err("the sidecar exited during the window".into());
    };
    let checks = p1 - p0;
    if checks <= 0.0 {
        return Err(format!("{}: no checks counted in the window", mode.name()));
    }
    let cpu = (c1 - c0) as f64 / clock_ticks();
    Ok((checks / (t1 - t0).as_secs_f64(), cpu / checks, cpu))
}
