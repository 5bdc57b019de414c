//! `bench --storms` (issue #17): the event storms a sweep can cause (a ListVolumes view that
//! lists none of the volumes, every volume abnormal at once), measured as Events written and
//! dropped, log lines, CPU per sweep and memory.

use std::fs::File;
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::cluster::populate;
use super::logs::{finished, is_event_write, print_failure, wait_driver};
use super::process::{clock_ticks, cpu_ticks, http_get_text, loadavg, memory, spawn};
use super::{Opts, DRIVER};
use crate::apiserver::FakeApiServer;
use crate::csidriver::{self, MockDriver};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Storm {
    /// ListVolumes lists none of the volumes; ControllerGetVolume knows them all (1% abnormal).
    PartialView,
    /// Every volume abnormal: far more Events per sweep than the write budget.
    MassAbnormal,
}

#[derive(Debug)]
pub(super) struct StormRow {
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

pub(super) const STORM_INTERVAL: Duration = Duration::from_secs(10);
pub(super) const STORM_SWEEPS: usize = 3;

pub(super) fn storms(o: &Opts) -> Result<(), String> {
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

pub(super) fn storm_run(o: &Opts, n: usize, storm: Storm) -> Result<StormRow, String> {
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
