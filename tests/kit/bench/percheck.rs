//! `bench --per-check` (issue #24): CPU per check of the real sidecar in both per-volume modes
//! at a fixed rate, against a trivial mock driver in its own process so its CPU is not counted.

use std::process::Stdio;
use std::time::{Duration, Instant};

use super::cluster::api_server;
use super::cluster::populate;
use super::process::{self, clock_ticks, cpu_ticks, http_get_text, loadavg, spawn};
use super::{ModeArg, Opts, DRIVER};
use crate::csidriver::{self, MockDriver};

/// Checks a second asked of the sidecar in `--per-check`: about the Go sidecar's pace in
/// issue #24's comparison.
pub(super) const PER_CHECK_RATE: f64 = 500.0;
/// Warm-up before the window: start-up, the caches, the first round's spread.
pub(super) const PER_CHECK_WARMUP: Duration = Duration::from_secs(15);

/// `--per-check`: the real sidecar in ControllerGetVolume and in ControllerGetVolumeHealth
/// mode, `--volumes` healthy volumes (5,000 unless given) checked at 500 a second, against a
/// trivial mock driver in its own process (`csi-driver`, so its CPU is not the sidecar's).
/// CPU per check is the sidecar's user+sys from `/proc/<pid>/stat` over the window
/// (`--idle-secs`, 30 unless given) divided by the checks its metrics counted in it.
pub(super) fn per_check(o: &Opts) -> Result<(), String> {
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

pub(super) fn csidriver_method_name(mode: ModeArg) -> &'static str {
    match mode {
        ModeArg::HealthGet => "ControllerGetVolumeHealth (v1.13)",
        _ => "ControllerGetVolume (v1.12)",
    }
}

/// One mode: (checks per second, CPU seconds per check, CPU seconds) over the window.
pub(super) fn per_check_run(
    o: &Opts,
    n: usize,
    mode: ModeArg,
    interval: Duration,
    workers: usize,
    window: Duration,
) -> Result<(f64, f64, f64), String> {
    let api = api_server(mode)?;
    // The PVs and PVCs; this in-process driver only takes populate's volumes and is not used.
    let unused = MockDriver::start(DRIVER);
    populate(&api, &unused, n, 0, o.page_size);
    let dir = csidriver::temp_dir("bench-per-check");
    let kubeconfig = dir.join("kubeconfig");
    api.write_kubeconfig(&kubeconfig)
        .map_err(|e| format!("write kubeconfig: {e}"))?;
    let socket = dir.join("driver.sock");
    // Every volume known and healthy.
    let driver = process::spawn_driver(
        &socket,
        if mode.is_health() { "v1.13" } else { "v1.12" },
        (0..n).map(|i| format!("vol-{i:06}")),
        &["--name", DRIVER],
    )?;
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
