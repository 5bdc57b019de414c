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
