//! Issue 17: no event storms from a partial ListVolumes view (DESIGN §3.6). A volume absent
//! from ListVolumes is confirmed with ControllerGetVolume where the driver has GET_VOLUME; a
//! sweep that would newly report most of the driver's volumes missing reports none of them.
//! Thousands of PVs, short intervals, waits on conditions.

use serde_json::{json, Value};
use std::time::Duration;

use crate::kit::csidriver::{Volume, GET_VOLUME, LIST_VOLUMES};
use crate::support::{http_addr, http_get, poll, Env, DRIVER, NS};

const WAIT: Duration = Duration::from_secs(60);
const ABNORMAL: &str = "VolumeConditionAbnormal";
const OMITS: &str = "omits volumes that ControllerGetVolume still knows";
const GUARD: &str = "not reporting them as missing, it looks like a partial view";

fn id(i: usize) -> String {
    format!("v{i:04}")
}

/// `n` Bound PVs `pv-v0000`… with claims `pvc-v0000`… in one store write; the driver knows
/// every volume (healthy) and lists none of them when `hidden`.
fn many(env: &Env, n: usize, hidden: bool) {
    let mut objects: Vec<Value> = Vec::with_capacity(2 * n);
    for i in 0..n {
        let uid = format!("00000000-0000-4000-8000-{i:012}");
        objects.push(json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": format!("pvc-{}", id(i)), "namespace": NS, "uid": uid},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}},
                     "volumeName": format!("pv-{}", id(i))},
            "status": {"phase": "Bound"}
        }));
        objects.push(json!({
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": format!("pv-{}", id(i))},
            "spec": {
                "capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Delete",
                "csi": {"driver": DRIVER, "volumeHandle": id(i)},
                "claimRef": {"kind": "PersistentVolumeClaim", "namespace": NS,
                             "name": format!("pvc-{}", id(i)), "uid": uid, "apiVersion": "v1"}
            },
            "status": {"phase": "Bound"}
        }));
    }
    env.api.create_many(objects);
    env.driver.with(|s| {
        for i in 0..n {
            s.volumes.insert(id(i), Volume::healthy());
            if hidden {
                s.list_volumes_hidden.insert(id(i));
            }
        }
    });
}

fn missing_events(env: &Env) -> Vec<String> {
    let mut names: Vec<String> = env
        .api
        .events()
        .iter()
        .filter(|e| {
            e["reason"] == ABNORMAL
                && e["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("was not found by CSI driver"))
        })
        .map(|e| {
            e["involvedObject"]["name"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    names.sort();
    names
}

fn gets(env: &Env) -> usize {
    env.driver.with(|s| {
        s.calls
            .iter()
            .filter(|c| c.method == GET_VOLUME && c.finished.is_some())
            .count()
    })
}

#[test]
fn a_partial_list_view_is_confirmed_with_get_volume() {
    const N: usize = 2000;
    let env = Env::new();
    many(&env, N, true);
    // Two volumes the driver knows are abnormal, three it does not know at all.
    env.driver.set_volume(&id(10), true, "disk 10 is failing");
    env.driver.set_volume(&id(20), true, "disk 20 is failing");
    env.driver.with(|s| {
        for i in [5, 500, 1999] {
            s.not_found.insert(id(i));
        }
    });
    let sidecar = env.spawn(&["--list-volumes-interval=1s", "--worker-threads=4"]);
    // Conditions of volumes ListVolumes leaves out are still checked, with ControllerGetVolume.
    for i in [10, 20] {
        assert!(
            env.wait_event(&format!("pvc-{}", id(i)), ABNORMAL, WAIT),
            "{}",
            sidecar.stderr.text()
        );
        let e = env.events(&format!("pvc-{}", id(i)), ABNORMAL);
        assert_eq!(e[0]["message"], format!("disk {i} is failing").as_str());
    }
    assert!(env
        .api
        .wait_until(WAIT, |_| missing_events(&env).len() >= 3));
    // Two more complete rounds of confirmation: still exactly those three.
    let seen = gets(&env);
    assert!(env.driver.wait_until(WAIT, |s| s
        .calls
        .iter()
        .filter(|c| c.method == GET_VOLUME)
        .count()
        >= seen + 2 * N));
    assert_eq!(
        missing_events(&env),
        ["pvc-v0005", "pvc-v0500", "pvc-v1999"],
        "{}",
        sidecar.stderr.text()
    );
    let events = env.api.events();
    assert_eq!(events.len(), 5, "{events:#?}");
    // One line about the partial view, with the count, however many sweeps.
    let lines: Vec<String> = sidecar
        .stderr
        .lines()
        .into_iter()
        .filter(|l| l.contains(OMITS))
        .collect();
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
        lines[0].contains(&format!("count={}", N - 3)),
        "{}",
        lines[0]
    );
    // Confirmation obeys the worker pool.
    assert!(
        env.driver.max_in_flight() <= 4 + 1,
        "{}",
        env.driver.max_in_flight()
    );
    assert!(env.driver.call_count(LIST_VOLUMES) >= 3);
}

#[test]
fn a_mass_absence_without_get_volume_is_held_back_then_a_few_are_reported() {
    const N: usize = 2000;
    let env = Env::new();
    env.driver.with(|s| s.get_volume = false);
    many(&env, N, true);
    let sidecar = env.spawn(&[
        "--list-volumes-interval=300ms",
        "--http-endpoint=127.0.0.1:0",
    ]);
    let addr = http_addr(&sidecar.stderr);
    let gauge = || {
        let (_, body) = http_get(&addr, "/metrics");
        body.lines()
            .find(|l| l.starts_with("csi_volume_health_missing_suppressed{"))
            .and_then(|l| l.rsplit(' ').next())
            .map(str::to_string)
    };
    assert_eq!(
        poll(WAIT, || gauge().filter(|v| v == "2000")).as_deref(),
        Some("2000"),
        "{}",
        sidecar.stderr.text()
    );
    // A few more sweeps: nothing written, one warning.
    let seen = env.driver.call_count(LIST_VOLUMES);
    assert!(env.wait_calls(LIST_VOLUMES, seen + 3, WAIT));
    assert!(env.api.events().is_empty(), "{:#?}", env.api.events());
    let warnings: Vec<String> = sidecar
        .stderr
        .lines()
        .into_iter()
        .filter(|l| l.contains(GUARD))
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(
        warnings[0].contains("absent=2000 bound=2000"),
        "{}",
        warnings[0]
    );

    // The view comes back but for three volumes: those three are reported, the gauge clears.
    env.driver.with(|s| {
        s.list_volumes_hidden.clear();
        for i in [7, 700, 1700] {
            s.list_volumes_hidden.insert(id(i));
        }
    });
    assert!(
        env.api
            .wait_until(WAIT, |_| missing_events(&env).len() >= 3),
        "{}",
        sidecar.stderr.text()
    );
    assert_eq!(
        poll(WAIT, || gauge().filter(|v| v == "0")).as_deref(),
        Some("0")
    );
    let seen = env.driver.call_count(LIST_VOLUMES);
    assert!(env.wait_calls(LIST_VOLUMES, seen + 3, WAIT));
    assert_eq!(
        missing_events(&env),
        ["pvc-v0007", "pvc-v0700", "pvc-v1700"]
    );
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn told(env: &Env, reason: &str) -> std::collections::HashSet<String> {
    env.api
        .events()
        .iter()
        .filter(|e| e["reason"] == reason)
        .filter_map(|e| e["involvedObject"]["name"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn a_full_queue_tells_every_pvc_and_never_drops_a_recovery_for_a_repeat() {
    const N: usize = 3000;
    let env = Env::new();
    many(&env, N, false);
    env.driver.with(|s| {
        for v in s.volumes.values_mut() {
            v.abnormal = true;
            v.message = "disk is failing".into();
        }
    });
    let started = std::time::Instant::now();
    // Every sweep queues 3000 Events against a queue of 1000 and about 200 writes a second.
    let sidecar = env.spawn(&[
        "--list-volumes-interval=500ms",
        "--kube-api-qps=200",
        "--kube-api-burst=200",
        "--http-endpoint=127.0.0.1:0",
    ]);
    let addr = http_addr(&sidecar.stderr);
    // No PVC starved: over several sweeps every one gets its first Event.
    assert!(
        env.api
            .wait_until(Duration::from_secs(120), |_| told(&env, ABNORMAL).len()
                >= N),
        "{} of {N} PVCs told; {}",
        told(&env, ABNORMAL).len(),
        sidecar.stderr.text()
    );
    // Recoveries while every sweep still queues thousands of repeats: none is dropped.
    env.driver.with(|s| {
        for i in 0..100 {
            let v = s.volumes.get_mut(&id(i * 30)).unwrap();
            v.abnormal = false;
            v.message.clear();
        }
    });
    assert!(
        env.api
            .wait_until(WAIT, |_| told(&env, "VolumeConditionNormal").len() >= 100),
        "{} of 100 recoveries; {}",
        told(&env, "VolumeConditionNormal").len(),
        sidecar.stderr.text()
    );
    let elapsed = started.elapsed();
    let dropped: Vec<(String, u64)> = {
        let (_, body) = http_get(&addr, "/metrics");
        body.lines()
            .filter(|l| l.starts_with("csi_volume_health_events_dropped_total{"))
            .filter_map(|l| {
                let reason = l.split('"').nth(1)?.to_string();
                Some((reason, l.rsplit(' ').next()?.parse().ok()?))
            })
            .collect()
    };
    let total: u64 = dropped.iter().map(|(_, n)| n).sum();
    assert!(
        dropped
            .iter()
            .any(|(r, n)| r == "repeat_displaced" && *n > 0),
        "{dropped:?}"
    );
    // At most one drop line per 10 s (plus the first), each saying how many it stands for.
    let lines: Vec<String> = sidecar
        .stderr
        .lines()
        .into_iter()
        .filter(|l| l.contains("too many queued events"))
        .collect();
    assert!(!lines.is_empty());
    assert!(
        lines.len() as u64 <= elapsed.as_secs() / 10 + 1,
        "{} drop lines in {elapsed:?}",
        lines.len()
    );
    let logged: u64 = lines
        .iter()
        .filter_map(|l| {
            l.split("dropped_since_last_line=")
                .nth(1)?
                .split(' ')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    assert!(
        logged <= total && logged > 0,
        "lines say {logged}, counter says {total}"
    );
    // The queue bound holds memory: 3000 volumes and a full queue stay well under 100 MiB.
    let rss = rss_kib(sidecar.pid);
    assert!(rss > 0 && rss < 100 * 1024, "RSS {rss} KiB");
}

#[test]
fn a_write_budget_that_cannot_be_met_is_logged_once_at_v2() {
    let env = Env::new();
    many(&env, 50, false);
    env.driver.with(|s| {
        for v in s.volumes.values_mut() {
            v.abnormal = true;
            v.message = "disk is failing".into();
        }
    });
    // 1 write a second after a burst of 2: 6 Events per 4 s interval, 50 abnormal.
    let sidecar = env.spawn(&[
        "--list-volumes-interval=4s",
        "--kube-api-qps=1",
        "--kube-api-burst=2",
        "--v=2",
        "--http-endpoint=127.0.0.1:0",
    ]);
    let addr = http_addr(&sidecar.stderr);
    // When the latest sweep ended, as the sidecar exports it.
    let last_sweep = || {
        let (_, body) = http_get(&addr, "/metrics");
        body.lines()
            .find(|l| l.starts_with("csi_volume_health_last_sweep_timestamp_seconds{"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    };
    assert!(
        sidecar.stderr.wait_for("Event write budget exceeded", WAIT),
        "{}",
        sidecar.stderr.text()
    );
    let text = sidecar.stderr.text();
    let line = text
        .lines()
        .find(|l| l.contains("Event write budget exceeded"))
        .unwrap();
    for want in ["abnormal=50", "bound=50", "writable_per_sweep=6"] {
        assert!(line.contains(want), "{want} not in {line}");
    }
    // Once, not per sweep: counted only after a later sweep than the one that logged it has
    // ended (the line comes before its sweep's end time is exported).
    let first = poll(WAIT, last_sweep).expect("a sweep's end time");
    assert!(
        poll(WAIT, || last_sweep().filter(|t| *t > first)).is_some(),
        "no later sweep:\n{}",
        sidecar.stderr.text()
    );
    assert_eq!(
        sidecar.stderr.text().matches("Event write budget").count(),
        1,
        "{}",
        sidecar.stderr.text()
    );
}

#[test]
fn a_write_budget_that_is_met_says_nothing_at_v2() {
    let env = Env::new();
    many(&env, 5, false);
    env.driver.with(|s| {
        for v in s.volumes.values_mut() {
            v.abnormal = true;
            v.message = "disk is failing".into();
        }
    });
    let sidecar = env.spawn(&["--list-volumes-interval=10s", "--v=2"]);
    assert!(env
        .api
        .wait_until(WAIT, |_| told(&env, ABNORMAL).len() >= 5));
    assert!(
        !sidecar.stderr.text().contains("Event write budget"),
        "{}",
        sidecar.stderr.text()
    );
}
