//! `csi-hm-testkit`: the test doubles as a program.
//!
//! - `sandbox` (default): starts the fake API server and the mock CSI driver with a few
//!   volumes, runs the real sidecar against them, turns one volume abnormal and prints the
//!   Event the sidecar wrote, then the recovery.
//! - `apiserver [--port N] [--token T] [--tls-cert F --tls-key F] [--pvc-health-status]`: only the fake API server.
//! - `csi-driver --socket PATH [--name NAME] [--generation v1.12|v1.13|both] [--list-healthy] [--no-list] [--volume ID[=abnormal:MESSAGE|=health:STATUS:REASON[:MESSAGE]]]...`:
//!   only the mock driver. `--generation` picks the capabilities it advertises (default v1.12);
//!   `=health:` adds one v1.13 condition to the volume (repeat the flag for more), STATUS being
//!   DEGRADED, INACCESSIBLE, DATA_LOSS (or Degraded, Inaccessible, DataLoss) or a raw number.
//! - `bench [...]`: the footprint and speed benchmark (bench/, split by concern; BENCHMARKS.md has the figures).
//! - `bench-sweep [...]`: one no-change sweep per volume state, in process (sweepbench.rs).
//! - `faulty-sidecar [SIDECAR FLAGS]...`: the sidecar itself (the same `app::main` as the shipped
//!   binary) with a panic at the fault point named by `HM_FAULT_PANIC` (`controller`, `worker`,
//!   `leader`), for the crash-only tests; the panicking code exists only here.
//! - `grpc-floor [...]`: the CPU floor of a blocking gRPC call at a fixed rate, with nothing of
//!   the sidecar around it (grpcfloor.rs, issue #24).

#[allow(dead_code)]
mod apiserver;
// Only in this binary, not in tests/kit/mod.rs: the e2e crate has no use for them.
mod bench;
#[allow(dead_code)]
mod csidriver;
#[allow(dead_code)]
mod fixtures;
mod grpcfloor;
mod sweepbench;

use std::process::{ExitCode, Stdio};
use std::time::Duration;

use apiserver::{FakeApiServer, Options};
use csidriver::{Generation, HealthEntry, MockDriver};

const DRIVER: &str = "demo.csi.example.com";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        None | Some("sandbox") => sandbox(),
        Some("apiserver") => run_apiserver(&args[1..]),
        Some("csi-driver") => run_driver(&args[1..]),
        Some("bench") => bench::run(&args[1..]),
        Some("bench-sweep") => sweepbench::run(&args[1..]),
        Some("grpc-floor") => grpcfloor::run(&args[1..]),
        Some("faulty-sidecar") => faulty_sidecar(&args[1..]),
        Some("-h") | Some("--help") | Some("help") => {
            println!("usage: csi-hm-testkit [sandbox | apiserver [--port N] [--token T] [--tls-cert F --tls-key F] [--pvc-health-status] | csi-driver --socket PATH [--name NAME] [--generation v1.12|v1.13|both] [--list-healthy] [--no-list] [--volume ID[=abnormal:MESSAGE|=health:STATUS:REASON[:MESSAGE]]]... | {} | {} | {}]", bench::usage(), sweepbench::usage(), grpcfloor::usage());
            Ok(())
        }
        Some(other) => Err(format!("unknown command {other:?}; try --help")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("csi-hm-testkit: {e}");
            ExitCode::FAILURE
        }
    }
}

fn value<'a>(args: &'a [String], i: &mut usize, flag: &str) -> Result<&'a str, String> {
    *i += 1;
    args.get(*i)
        .map(String::as_str)
        .ok_or_else(|| format!("{flag} needs a value"))
}

fn run_apiserver(args: &[String]) -> Result<(), String> {
    let mut opts = Options::default();
    let (mut cert, mut key) = (None, None);
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--port" => {
                opts.port = value(args, &mut i, "--port")?
                    .parse()
                    .map_err(|e| format!("--port: {e}"))?
            }
            "--token" => opts.token = Some(value(args, &mut i, "--token")?.to_string()),
            "--tls-cert" => cert = Some(value(args, &mut i, "--tls-cert")?.to_string()),
            "--tls-key" => key = Some(value(args, &mut i, "--tls-key")?.to_string()),
            "--pvc-health-status" => opts.pvc_health_status = true,
            other => return Err(format!("apiserver: unknown flag {other:?}")),
        }
        i += 1;
    }
    match (cert, key) {
        (Some(c), Some(k)) => {
            let cert_pem = std::fs::read(&c).map_err(|e| format!("--tls-cert {c}: {e}"))?;
            let key_pem = std::fs::read(&k).map_err(|e| format!("--tls-key {k}: {e}"))?;
            opts.tls = Some(apiserver::TlsFiles { cert_pem, key_pem });
        }
        (None, None) => {}
        _ => return Err("--tls-cert and --tls-key go together".into()),
    }
    apiserver::serve_forever(opts).map_err(|e| format!("fake API server: {e}"))
}

/// One `--volume` of `csi-driver`.
#[derive(Debug, PartialEq)]
enum VolumeFlag {
    /// `ID`: known and healthy.
    Healthy(String),
    /// `ID=abnormal:MESSAGE`: the v1.12 condition.
    Abnormal(String, String),
    /// `ID=health:STATUS:REASON[:MESSAGE]`: one more v1.13 condition.
    Health(String, HealthEntry),
}

fn parse_generation(s: &str) -> Result<Generation, String> {
    match s {
        "v1.12" | "1.12" => Ok(Generation::V112),
        "v1.13" | "1.13" => Ok(Generation::V113),
        "both" => Ok(Generation::Both),
        other => Err(format!(
            "--generation: {other:?} is not one of v1.12, v1.13, both"
        )),
    }
}

fn parse_volume(v: &str) -> Result<VolumeFlag, String> {
    if let Some((id, msg)) = v.split_once("=abnormal:") {
        return Ok(VolumeFlag::Abnormal(id.to_string(), msg.to_string()));
    }
    let Some((id, health)) = v.split_once("=health:") else {
        return Ok(VolumeFlag::Healthy(v.to_string()));
    };
    let mut parts = health.splitn(3, ':');
    let status = match parts.next().unwrap_or("") {
        "DEGRADED" | "Degraded" => HealthEntry::DEGRADED,
        "INACCESSIBLE" | "Inaccessible" => HealthEntry::INACCESSIBLE,
        "DATA_LOSS" | "DataLoss" => HealthEntry::DATA_LOSS,
        n => n.parse().map_err(|_| {
            format!(
                "--volume {v}: status {n:?} is not DEGRADED, INACCESSIBLE, DATA_LOSS or a number"
            )
        })?,
    };
    let Some(reason) = parts.next() else {
        return Err(format!(
            "--volume {v}: expected ID=health:STATUS:REASON[:MESSAGE]"
        ));
    };
    let message = parts.next().unwrap_or("");
    Ok(VolumeFlag::Health(
        id.to_string(),
        HealthEntry::new(status, reason, message),
    ))
}

fn run_driver(args: &[String]) -> Result<(), String> {
    let mut socket = None;
    let mut name = DRIVER.to_string();
    let mut generation = Generation::V112;
    let mut list_healthy = false;
    let mut no_list = false;
    let mut volumes = Vec::new();
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--socket" => socket = Some(value(args, &mut i, "--socket")?.to_string()),
            "--name" => name = value(args, &mut i, "--name")?.to_string(),
            "--generation" => generation = parse_generation(value(args, &mut i, "--generation")?)?,
            "--list-healthy" => list_healthy = true,
            "--no-list" => no_list = true,
            "--volume" => volumes.push(parse_volume(value(args, &mut i, "--volume")?)?),
            other => return Err(format!("csi-driver: unknown flag {other:?}")),
        }
        i += 1;
    }
    let socket = socket.ok_or("csi-driver: --socket is required")?;
    let driver = MockDriver::start_at(std::path::Path::new(&socket), &name)
        .map_err(|e| format!("mock CSI driver: {e}"))?;
    driver.set_generation(generation);
    driver.set_list_healthy(list_healthy);
    if no_list {
        // Neither listing advertised: the sidecar runs a per-volume mode.
        driver.with(|s| {
            s.list_volumes = false;
            s.list_volume_health = false;
        });
    }
    for v in volumes {
        match v {
            VolumeFlag::Healthy(id) => driver.set_volume(&id, false, ""),
            VolumeFlag::Abnormal(id, msg) => driver.set_volume(&id, true, &msg),
            VolumeFlag::Health(id, entry) => driver.add_health(&id, entry),
        }
    }
    println!("mock CSI driver {name} listening on unix:{socket}");
    loop {
        std::thread::park();
    }
}

fn sandbox() -> Result<(), String> {
    println!("== sandbox: fake Kubernetes API server + mock CSI driver + the real sidecar");
    let api = FakeApiServer::start();
    let driver = MockDriver::start(DRIVER);
    println!("fake API server: {}", api.url());
    println!(
        "mock CSI driver: {DRIVER} on unix:{}",
        driver.socket().display()
    );

    fixtures::namespace(&api, "demo");
    fixtures::bound_volume(
        &api,
        DRIVER,
        "pv-web",
        "vol-web",
        "Bound",
        "demo",
        Some("data-web"),
    );
    fixtures::bound_volume(
        &api,
        DRIVER,
        "pv-db",
        "vol-db",
        "Bound",
        "demo",
        Some("data-db"),
    );
    fixtures::bound_volume(
        &api,
        "other.csi.example.com",
        "pv-other",
        "vol-other",
        "Bound",
        "demo",
        Some("data-other"),
    );
    driver.set_volume("vol-web", false, "");
    driver.set_volume("vol-db", false, "");
    driver.set_volume("vol-other", true, "not ours: must never be reported");
    println!("cluster: PVCs demo/data-web and demo/data-db on {DRIVER}, demo/data-other on another driver");

    with_sidecar(&api, &driver, demo)?;
    sandbox_v113()
}

/// Runs the real sidecar against `api` and `driver` while `demo` drives the scenario, then
/// stops it with SIGTERM.
fn with_sidecar(
    api: &FakeApiServer,
    driver: &MockDriver,
    demo: impl FnOnce(&FakeApiServer, &MockDriver) -> Result<(), String>,
) -> Result<(), String> {
    let dir = csidriver::temp_dir("sandbox");
    let kubeconfig = dir.join("kubeconfig");
    api.write_kubeconfig(&kubeconfig)
        .map_err(|e| format!("write {}: {e}", kubeconfig.display()))?;
    let mut child = fixtures::spawn_sidecar(
        &kubeconfig,
        driver.socket(),
        &["--list-volumes-interval=1s"],
        Stdio::inherit(),
    );
    let outcome = demo(api, driver);
    fixtures::terminate(&child);
    let status = child
        .wait()
        .map_err(|e| format!("wait for the sidecar: {e}"))?;
    println!("sidecar stopped on SIGTERM: {status}");
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}

/// The same sidecar binary beside a CSI v1.13 driver (ControllerListVolumeHealth) on a
/// Kubernetes 1.37 API server with the `CSIVolumeHealth` field: the conditions land in the
/// PVC's `status.healthStatus`, and the Event operators alert on still comes.
fn sandbox_v113() -> Result<(), String> {
    println!("\n== sandbox, CSI v1.13: a driver with ControllerListVolumeHealth, an API server with PVC status.healthStatus");
    let api = FakeApiServer::start_with(Options {
        pvc_health_status: true,
        ..Options::default()
    })
    .map_err(|e| format!("start the fake API server: {e}"))?;
    let driver = MockDriver::start_v113(DRIVER);
    fixtures::namespace(&api, "demo");
    fixtures::bound_volume(
        &api,
        DRIVER,
        "pv-logs",
        "vol-logs",
        "Bound",
        "demo",
        Some("data-logs"),
    );
    driver.set_health("vol-logs", Vec::new());
    with_sidecar(&api, &driver, demo_v113)
}

fn demo_v113(api: &FakeApiServer, driver: &MockDriver) -> Result<(), String> {
    let health = |a: &FakeApiServer| {
        a.get("persistentvolumeclaims", Some("demo"), "data-logs")
            .and_then(|p| p.pointer("/status/healthStatus").cloned())
            .filter(|h| !h.is_null())
    };
    println!("\n== the driver now reports vol-logs INACCESSIBLE (reason DiskGone)");
    driver.set_health(
        "vol-logs",
        vec![HealthEntry::inaccessible(
            "DiskGone",
            "the backend lost the disk holding vol-logs",
        )],
    );
    if !api.wait_until(Duration::from_secs(60), |a| health(a).is_some()) {
        return Err("no status.healthStatus on demo/data-logs within 60 s".into());
    }
    println!(
        "PVC demo/data-logs status.healthStatus: {}",
        health(api).unwrap_or_default()
    );
    if !api.wait_until(Duration::from_secs(30), |a| {
        !fixtures::events_for(a, "data-logs", "VolumeConditionAbnormal").is_empty()
    }) {
        return Err("no VolumeConditionAbnormal event within 30 s".into());
    }
    print_events(api, "data-logs", "VolumeConditionAbnormal");
    println!("\n== the driver reports vol-logs healthy again");
    driver.clear_health("vol-logs");
    if !api.wait_until(Duration::from_secs(30), |a| health(a).is_none()) {
        return Err("status.healthStatus was not cleared within 30 s".into());
    }
    println!("PVC demo/data-logs status.healthStatus: cleared");
    if !api.wait_until(Duration::from_secs(30), |a| {
        !fixtures::events_for(a, "data-logs", "VolumeConditionNormal").is_empty()
    }) {
        return Err("no VolumeConditionNormal event within 30 s".into());
    }
    print_events(api, "data-logs", "VolumeConditionNormal");
    Ok(())
}

fn demo(api: &FakeApiServer, driver: &MockDriver) -> Result<(), String> {
    let first_sweep = driver.wait_until(Duration::from_secs(60), |s| {
        s.calls
            .iter()
            .filter(|c| c.method == csidriver::LIST_VOLUMES && c.finished.is_some())
            .count()
            >= 1
    });
    if !first_sweep {
        return Err("the sidecar made no ListVolumes call within 60 s".into());
    }
    let message = "Volume vol-db: the storage backend reports 3 unreadable blocks";
    println!("\n== the driver now reports vol-db abnormal: {message:?}");
    driver.set_volume("vol-db", true, message);
    let got = api.wait_until(Duration::from_secs(30), |a| {
        !fixtures::events_for(a, "data-db", "VolumeConditionAbnormal").is_empty()
    });
    if !got {
        return Err("no VolumeConditionAbnormal event within 30 s".into());
    }
    print_events(api, "data-db", "VolumeConditionAbnormal");

    println!("\n== the driver reports vol-db healthy again");
    driver.set_volume("vol-db", false, "");
    let got = api.wait_until(Duration::from_secs(30), |a| {
        !fixtures::events_for(a, "data-db", "VolumeConditionNormal").is_empty()
    });
    if !got {
        return Err("no VolumeConditionNormal event within 30 s".into());
    }
    print_events(api, "data-db", "VolumeConditionNormal");
    let foreign = fixtures::events_for(api, "data-other", "VolumeConditionAbnormal");
    if !foreign.is_empty() {
        return Err("an event was written for another driver's volume".into());
    }
    println!("\nno event for demo/data-other (another driver's volume), as expected");
    Ok(())
}

fn print_events(api: &FakeApiServer, pvc: &str, reason: &str) {
    for e in fixtures::events_for(api, pvc, reason) {
        println!(
            "Event {}/{} on {} {}/{} (uid {}):\n  Type     Reason                   Count  From\n  {:<8} {:<24} {:<6} {}\n  Message: {}",
            e["metadata"]["namespace"].as_str().unwrap_or(""),
            e["metadata"]["name"].as_str().unwrap_or(""),
            e["involvedObject"]["kind"].as_str().unwrap_or(""),
            e["involvedObject"]["namespace"].as_str().unwrap_or(""),
            e["involvedObject"]["name"].as_str().unwrap_or(""),
            e["involvedObject"]["uid"].as_str().unwrap_or(""),
            e["type"].as_str().unwrap_or(""),
            e["reason"].as_str().unwrap_or(""),
            e["count"],
            e["source"]["component"].as_str().unwrap_or(""),
            e["message"].as_str().unwrap_or(""),
        );
        println!("  JSON: {}", serde_json::to_string(&e).unwrap_or_default());
    }
}

/// The shipped sidecar's `app::main`, with the test kit's fault hook: a panic at the fault
/// point `HM_FAULT_PANIC` names. Exits with the sidecar's code.
fn faulty_sidecar(args: &[String]) -> Result<(), String> {
    healthmon::crash::set_fault_hook(|site| {
        if std::env::var("HM_FAULT_PANIC").is_ok_and(|want| want == site) {
            panic!("injected panic at fault point {site}");
        }
    });
    let mut argv = vec!["csi-external-health-monitor-controller".to_string()];
    argv.extend(args.iter().cloned());
    std::process::exit(healthmon::app::main(&argv));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_flag() {
        assert_eq!(parse_generation("v1.12"), Ok(Generation::V112));
        assert_eq!(parse_generation("1.13"), Ok(Generation::V113));
        assert_eq!(parse_generation("v1.13"), Ok(Generation::V113));
        assert_eq!(parse_generation("both"), Ok(Generation::Both));
        assert!(parse_generation("v1.14").is_err());
    }

    #[test]
    fn volume_flag() {
        let health = |id: &str, status, reason: &str, message: &str| {
            Ok(VolumeFlag::Health(
                id.into(),
                HealthEntry::new(status, reason, message),
            ))
        };
        for (flag, want) in [
            ("v", Ok(VolumeFlag::Healthy("v".into()))),
            (
                "v=abnormal:disk: gone",
                Ok(VolumeFlag::Abnormal("v".into(), "disk: gone".into())),
            ),
            (
                "v=health:DEGRADED:Slow:a: b",
                health("v", HealthEntry::DEGRADED, "Slow", "a: b"),
            ),
            (
                "v=health:Inaccessible:Gone",
                health("v", HealthEntry::INACCESSIBLE, "Gone", ""),
            ),
            (
                "v=health:DataLoss:Lost:x",
                health("v", HealthEntry::DATA_LOSS, "Lost", "x"),
            ),
            ("v=health:9:New:", health("v", 9, "New", "")),
            ("v=health:0::", health("v", 0, "", "")),
        ] {
            assert_eq!(parse_volume(flag), want, "{flag}");
        }
        assert!(parse_volume("v=health:Broken:R").is_err());
        assert!(parse_volume("v=health:DEGRADED").is_err());
    }
}
