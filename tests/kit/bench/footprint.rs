//! `bench --footprint` (issue #18): memory and idle cost in a cluster shaped like the issue's
//! side-by-side comparison with the Go sidecar (5,000 volumes, 20,000 Pods using them on 500
//! nodes, 20,000 unrelated Events, node watcher on), with and without MALLOC_ARENA_MAX=1.

use std::fs::File;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::json;

use super::cluster::populate;
use super::logs::{print_failure, wait_event_writes};
use super::process::{
    binary_size, loadavg, memory, spawn_env, switches_between, voluntary_switches, Sampler,
};
use super::report::print_binary_size;
use super::report::{mib, secs};
use super::{Opts, DRIVER, LEASE_NS, NOISE_NS, VOL_NS};
use crate::apiserver::FakeApiServer;
use crate::csidriver::{self, MockDriver};
use crate::fixtures;

pub(super) const FP_VOLUMES: usize = 5_000;
pub(super) const FP_PODS: usize = 20_000;
pub(super) const FP_EVENTS: usize = 20_000;
pub(super) const FP_NODES: usize = 500;
/// Peak and steady memory are read this long after the sidecar starts, as in the issue.
pub(super) const FP_LOAD_WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub(super) struct FootprintRow {
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

/// 5,000 Bound PVs + PVCs of the driver, 500 Ready nodes, 20,000 Pods on them using those PVCs
/// (four per PVC), 20,000 Events about unrelated Pods.
pub(super) fn populate_footprint(api: &FakeApiServer, driver: &MockDriver, page_size: usize) {
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
pub(super) fn footprint_run(
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
pub(super) fn footprint(o: &Opts, bin: &Path) -> Result<(), String> {
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
    print_binary_size(size);
    Ok(())
}
