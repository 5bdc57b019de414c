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

//!
//! The parts: `cluster` (what the fake server and driver hold), `process` (spawning the sidecar
//! and reading `/proc`), `logs` (the doubles' call and request logs), `volumes` (one run of the
//! volume-count table), `report` (its tables), `concurrency`, `footprint`, `storms`, `percheck`,
//! `hold` (one sidecar kept running for a profiler).

pub(crate) mod cluster;
mod concurrency;
mod footprint;
mod hold;
mod logs;
mod percheck;
pub(crate) mod process;
mod report;
mod storms;
mod volumes;

use std::time::{Duration, Instant};

use crate::csidriver;
use crate::fixtures;
use process::loadavg;

pub(crate) const DRIVER: &str = "bench.csi.example.com";
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
    /// No volume abnormal: a sweep after the first changes nothing (and the v1.13 health
    /// listing is empty).
    healthy: bool,
    /// `--hold SECS`: keep one sidecar running that long for a profiler instead.
    hold: Option<Duration>,
    /// `--interval`: the listing interval in `--hold` (10 s unless given).
    interval: Option<Duration>,
    /// `--churn`: PVs modified a second in `--hold`.
    churn: f64,
    /// `--relist-every`: in `--hold`, compact and end the watches this often (410, relist).
    relist_every: Option<Duration>,
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
        healthy: false,
        hold: None,
        interval: None,
        churn: 0.0,
        relist_every: None,
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
            "--healthy" => o.healthy = true,
            "--hold" => {
                o.hold = Some(Duration::from_secs_f64(
                    val()?.parse().map_err(|e| format!("--hold: {e}"))?,
                ))
            }
            "--churn" => o.churn = val()?.parse().map_err(|e| format!("--churn: {e}"))?,
            "--relist-every" => {
                o.relist_every = Some(Duration::from_secs_f64(
                    val()?.parse().map_err(|e| format!("--relist-every: {e}"))?,
                ))
            }
            "--interval" => {
                o.interval = Some(Duration::from_secs_f64(
                    val()?.parse().map_err(|e| format!("--interval: {e}"))?,
                ))
            }
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
    "bench [--volumes 1000,10000,100000] [--modes list,get,health-list,health-get] [--noise off|on|both] [--noise-objects 50000] [--idle-secs 60] [--qps 1000 --burst 2000] [--page-size 1000] [--get-rate 1000] [--malloc-arena-max 1|unset] [--healthy] [--no-concurrency] [--quick] | bench --footprint [--idle-secs 60] | bench --storms [--volumes 10000] [--qps 5 --burst 10] | bench --per-check [--volumes 5000] [--idle-secs 30] | bench --hold SECS --volumes N --modes list|health-list [--healthy] [--interval SECS] [--churn PER_SEC] [--relist-every SECS]"
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
        return footprint::footprint(&o, &bin);
    }
    if o.storms {
        return storms::storms(&o);
    }
    if o.per_check {
        return percheck::per_check(&o);
    }
    if let Some(secs) = o.hold {
        return hold::hold(&o, secs);
    }
    let started = Instant::now();
    // The fixed part of the process, per mode, for the figures per volume.
    let mut empty = Vec::new();
    for &mode in &o.modes {
        eprintln!("== empty cluster, {}", mode.name());
        let m = volumes::empty_cluster(&o, mode)?;
        eprintln!("   VmRSS, VmHWM KiB: {m:?}");
        empty.push((mode, m));
    }
    let mut rows = Vec::new();
    for &n in &o.volumes {
        for &mode in &o.modes {
            for &noise in &o.noise {
                eprintln!("== {n} volumes, {}, noise {noise}", mode.name());
                let row = volumes::run_one(&o, n, mode, noise)?;
                eprintln!("   {row:?}");
                rows.push(row);
            }
        }
    }
    let concurrency = if o.concurrency {
        eprintln!("== GetVolume concurrency with a slow driver");
        Some(concurrency::concurrency(&o)?)
    } else {
        None
    };
    let size = process::binary_size(&bin);
    println!("load average at end: {}", loadavg());
    println!(
        "total benchmark time: {:.0} s\n",
        started.elapsed().as_secs_f64()
    );
    report::print_report(&o, &rows, &empty, concurrency.as_ref(), size);

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

/// API requests in a window, by kind (from the fake server's request log).
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

/// One line of the volume-count tables: one volume count, mode and noise setting.
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
