//! ControllerGetVolume mode end to end: the upstream §14 abnormal row for this mode, NOT_FOUND,
//! and the scheduling fix (one check per interval per volume, never concurrent on one volume).
//! The normal and recovery rows of both modes are in `events.rs`.

use std::time::Duration;

use crate::kit::csidriver::{GET_VOLUME, LIST_VOLUMES};
use crate::support::{Env, DRIVER};

const WAIT: Duration = Duration::from_secs(30);
const FAST: &[&str] = &[
    "--monitor-interval=300ms",
    "--volume-list-add-interval=300ms",
];

#[test]
fn abnormal_volume_without_list_volumes() {
    let env = Env::get_mode();
    env.volume("abnormal-volume-1");
    env.driver
        .set_volume("abnormal-volume-1", true, "Volume not found");
    let sidecar = env.spawn(FAST);
    assert!(
        env.wait_event("pvc-abnormal-volume-1", "VolumeConditionAbnormal", WAIT),
        "{}",
        sidecar.stderr.text()
    );
    let e = &env.events("pvc-abnormal-volume-1", "VolumeConditionAbnormal")[0];
    assert_eq!(e["type"], "Warning");
    assert_eq!(e["message"], "Volume not found");
    assert_eq!(
        e["source"]["component"],
        format!("csi-pv-monitor-controller-{DRIVER}").as_str()
    );
    assert_eq!(env.driver.call_count(LIST_VOLUMES), 0);
}

#[test]
fn one_volume_ten_workers_is_never_checked_concurrently() {
    let env = Env::get_mode();
    env.volume("single");
    env.driver.set_volume("single", false, "");
    env.driver.with(|s| s.latency = Duration::from_millis(50));
    let sidecar = env.spawn(&["--monitor-interval=200ms", "--worker-threads=10"]);
    assert!(
        env.wait_calls(GET_VOLUME, 5, WAIT),
        "{}",
        sidecar.stderr.text()
    );
    assert_eq!(env.driver.max_in_flight_per_volume(), 1);
    assert_eq!(env.driver.max_in_flight(), 1);
    // One check per interval, not one per worker: checks are due at t0 + k*interval, so over
    // the span of the calls there are at most span/interval + 2 (the first may start late);
    // ten workers hammering one volume would give about ten per interval.
    let calls = env.driver.calls(GET_VOLUME);
    let span = calls.last().unwrap().started - calls[0].started;
    let allowed = (span.as_millis() / 200) as usize + 2;
    assert!(calls.len() <= allowed, "{} checks in {span:?}", calls.len());
}

#[test]
fn not_found_volume_is_reported_missing() {
    let env = Env::get_mode();
    env.volume("gone");
    let sidecar = env.spawn(FAST);
    assert!(
        env.wait_event("pvc-gone", "VolumeConditionAbnormal", WAIT),
        "{}",
        sidecar.stderr.text()
    );
    let e = &env.events("pvc-gone", "VolumeConditionAbnormal")[0];
    assert_eq!(
        e["message"],
        format!("Volume gone was not found by CSI driver {DRIVER}").as_str()
    );
}
