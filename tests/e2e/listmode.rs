//! ListVolumes mode end to end: the upstream §14 abnormal row for this mode and the walking
//! skeleton's acceptance cases (exact event, foreign/unbound/unknown volumes, pagination,
//! recovery from existing events). The normal and recovery rows of both modes are in
//! `events.rs`.

use serde_json::json;
use std::time::Duration;

use crate::kit::csidriver::LIST_VOLUMES;
use crate::kit::fixtures;
use crate::support::{Env, DRIVER, NS};

const FAST: &[&str] = &["--list-volumes-interval=300ms"];
const WAIT: Duration = Duration::from_secs(30);

#[test]
fn abnormal_volume_yields_exactly_the_upstream_event() {
    let env = Env::new();
    let (_pv, pvc) = env.volume("abnormal-volume-1");
    env.driver
        .set_volume("abnormal-volume-1", true, "Volume not found");
    let sidecar = env.spawn(FAST);
    assert!(
        env.wait_event("pvc-abnormal-volume-1", "VolumeConditionAbnormal", WAIT),
        "{}",
        sidecar.stderr.text()
    );
    let events = env.events("pvc-abnormal-volume-1", "VolumeConditionAbnormal");
    assert_eq!(events.len(), 1, "{events:#?}");
    let e = &events[0];
    assert_eq!(e["type"], "Warning");
    assert_eq!(e["reason"], "VolumeConditionAbnormal");
    assert_eq!(e["message"], "Volume not found");
    assert_eq!(e["metadata"]["namespace"], NS);
    let name = e["metadata"]["name"].as_str().unwrap();
    let (prefix, hex) = name.rsplit_once('.').unwrap();
    assert_eq!(prefix, "pvc-abnormal-volume-1");
    assert!(
        hex.len() >= 15
            && hex
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()),
        "{name}"
    );
    let io = &e["involvedObject"];
    assert_eq!(io["kind"], "PersistentVolumeClaim");
    assert_eq!(io["apiVersion"], "v1");
    assert_eq!(io["name"], "pvc-abnormal-volume-1");
    assert_eq!(io["namespace"], NS);
    assert_eq!(io["uid"], pvc["metadata"]["uid"]);
    assert_eq!(io["resourceVersion"], pvc["metadata"]["resourceVersion"]);
    let component = format!("csi-pv-monitor-controller-{DRIVER}");
    assert_eq!(e["source"]["component"], component.as_str());
    assert_eq!(e["reportingComponent"], component.as_str());
    assert_eq!(e["count"], 1);
    assert_eq!(e["firstTimestamp"], e["lastTimestamp"]);
}

#[test]
fn abnormal_volume_with_node_watcher_flag() {
    let env = Env::new();
    env.api
        .create(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node1"}}));
    env.volume("abnormal-volume-1");
    env.driver
        .set_volume("abnormal-volume-1", true, "Volume not found");
    let sidecar = env.spawn(&["--list-volumes-interval=300ms", "--enable-node-watcher"]);
    assert!(
        env.wait_event("pvc-abnormal-volume-1", "VolumeConditionAbnormal", WAIT),
        "{}",
        sidecar.stderr.text()
    );
}

#[test]
fn foreign_unbound_and_unknown_volumes_yield_nothing() {
    let env = Env::new();
    fixtures::bound_volume(
        &env.api,
        "other.csi.example.com",
        "pv-foreign",
        "foreign",
        "Bound",
        NS,
        Some("pvc-foreign"),
    );
    fixtures::bound_volume(
        &env.api,
        DRIVER,
        "pv-pending",
        "pending",
        "Pending",
        NS,
        Some("pvc-pending"),
    );
    fixtures::bound_volume(
        &env.api,
        DRIVER,
        "pv-released",
        "released",
        "Released",
        NS,
        None,
    );
    // A PV without a CSI source at all.
    env.api.create(json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "pv-hostpath"},
        "spec": {"hostPath": {"path": "/tmp"}, "capacity": {"storage": "1Gi"}}, "status": {"phase": "Bound"}}));
    for id in ["foreign", "pending", "released", "unknown-to-kubernetes"] {
        env.driver.set_volume(id, true, "broken");
    }
    // One real abnormal volume proves the sweep ran over the others.
    env.volume("real");
    env.driver.set_volume("real", true, "real problem");
    let sidecar = env.spawn(&[
        "--list-volumes-interval=300ms",
        "--report-missing-volumes=false",
    ]);
    assert!(
        env.wait_event("pvc-real", "VolumeConditionAbnormal", WAIT),
        "{}",
        sidecar.stderr.text()
    );
    assert!(env.wait_calls(LIST_VOLUMES, 3, WAIT));
    let reasons: Vec<String> = env
        .api
        .events()
        .iter()
        .map(|e| format!("{} {}", e["involvedObject"]["name"], e["reason"]))
        .collect();
    assert_eq!(reasons, vec!["\"pvc-real\" \"VolumeConditionAbnormal\""]);
}

#[test]
fn pagination_is_followed_to_the_last_page() {
    let env = Env::new();
    for i in 0..7 {
        let id = format!("vol{i}");
        env.volume(&id);
        env.driver
            .set_volume(&id, i == 6, if i == 6 { "last page problem" } else { "" });
    }
    env.driver.with(|s| s.page_size = 2);
    let sidecar = env.spawn(&["--list-volumes-interval=1s"]);
    assert!(
        env.wait_event("pvc-vol6", "VolumeConditionAbnormal", WAIT),
        "{}",
        sidecar.stderr.text()
    );
    let calls = env.driver.calls(LIST_VOLUMES);
    let tokens: Vec<&str> = calls.iter().map(|c| c.arg.as_str()).collect();
    // A complete sweep walks every page in order (a sweep cut short by a transient driver
    // error is retried at the next interval).
    assert!(
        tokens.windows(4).any(|w| w == ["", "2", "4", "6"]),
        "{tokens:?}"
    );
    assert!(
        calls.iter().all(|c| c.max_entries == 0),
        "max_entries must stay unset by default"
    );
}

#[test]
fn max_entries_flag_is_sent() {
    let env = Env::new();
    for i in 0..3 {
        let id = format!("m{i}");
        env.volume(&id);
        env.driver.set_volume(&id, false, "");
    }
    let sidecar = env.spawn(&["--list-volumes-interval=1h", "--list-volumes-max-entries=2"]);
    assert!(
        env.wait_calls(LIST_VOLUMES, 2, WAIT),
        "{}",
        sidecar.stderr.text()
    );
    let calls = env.driver.calls(LIST_VOLUMES);
    assert_eq!(calls[0].max_entries, 2);
    assert_eq!(calls[1].arg, "2");
}

#[test]
fn recovery_after_restart_uses_existing_events() {
    // Test_RecoveryEventWithListVolume: a Warning event from before (another process) exists.
    let env = Env::new();
    let (_pv, pvc) = env.volume("recovered");
    env.driver.set_volume(
        "recovered",
        false,
        "The Volume returns to the healthy state",
    );
    let component = format!("csi-pv-monitor-controller-{DRIVER}");
    env.api.create(json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": "pvc-recovered.1", "namespace": NS},
        "involvedObject": {"kind": "PersistentVolumeClaim", "apiVersion": "v1", "name": "pvc-recovered", "namespace": NS, "uid": pvc["metadata"]["uid"]},
        "reason": "VolumeConditionAbnormal", "message": "Volume not found", "type": "Warning",
        "source": {"component": component}, "count": 1,
        "firstTimestamp": "2026-01-01T00:00:00Z", "lastTimestamp": "2026-01-01T00:00:00Z"
    }));
    let sidecar = env.spawn(FAST);
    assert!(
        env.wait_event("pvc-recovered", "VolumeConditionNormal", WAIT),
        "{}",
        sidecar.stderr.text()
    );
    let e = &env.events("pvc-recovered", "VolumeConditionNormal")[0];
    assert_eq!(e["type"], "Normal");
    assert_eq!(e["message"], "The Volume returns to the healthy state");
}

#[test]
fn entries_without_volume_are_skipped_not_fatal() {
    let env = Env::new();
    env.volume("good");
    env.driver.set_volume("good", true, "still reported");
    env.driver.set_volume("broken-entry", true, "x");
    env.driver
        .with(|s| s.volumes.get_mut("broken-entry").unwrap().omit_volume = true);
    let mut sidecar = env.spawn(FAST);
    assert!(
        env.wait_event("pvc-good", "VolumeConditionAbnormal", WAIT),
        "{}",
        sidecar.stderr.text()
    );
    assert!(sidecar.stderr.wait_for("without a volume", WAIT));
    assert!(sidecar.still_running_after(Duration::from_millis(200)));
}
