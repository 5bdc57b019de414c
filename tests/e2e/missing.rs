//! Missing volumes in ListVolumes mode (DESIGN §3.1): a Bound PV whose volume the driver does
//! not list is reported once it is absent from two consecutive complete sweeps; a sweep cut
//! short by a failing page proves nothing; `--report-missing-volumes=false` turns it off.

use grpcio::RpcStatusCode;
use std::time::Duration;

use crate::kit::csidriver::{State, LIST_VOLUMES};
use crate::support::{Env, DRIVER};

const WAIT: Duration = Duration::from_secs(30);
const ABNORMAL: &str = "VolumeConditionAbnormal";

fn finished_lists(s: &State) -> usize {
    s.calls
        .iter()
        .filter(|c| c.method == LIST_VOLUMES && c.finished.is_some())
        .count()
}

/// ListVolumes calls made so far, answered or not.
fn list_calls(s: &State) -> usize {
    s.calls.iter().filter(|c| c.method == LIST_VOLUMES).count()
}

/// v0 and v1 are listed one per page ("" then "1"); "gone" has a Bound PV but the driver does
/// not know it.
fn env_with_missing_volume() -> Env {
    let env = Env::new();
    for id in ["v0", "v1"] {
        env.volume(id);
        env.driver.set_volume(id, false, "");
    }
    env.volume("gone");
    env.driver.with(|s| s.page_size = 1);
    env
}

#[test]
fn missing_after_two_complete_sweeps_not_after_an_incomplete_one() {
    let env = env_with_missing_volume();
    // The first sweep's second page fails: that sweep is incomplete.
    env.driver
        .fail_next_for(LIST_VOLUMES, "1", RpcStatusCode::UNAVAILABLE, 1);
    let sidecar = env.spawn(&["--list-volumes-interval=300ms"]);
    assert!(
        env.wait_event("pvc-gone", ABNORMAL, WAIT),
        "{}",
        sidecar.stderr.text()
    );
    // Read right after the event appeared: an incomplete sweep (2 calls) plus two complete
    // ones (2 calls each) must be behind it. Counting the failed sweep, or judging after one
    // complete sweep, would have written the event after 4 calls, 300 ms before the 5th.
    let calls = env.driver.with(|s| finished_lists(s));
    assert!(calls >= 6, "event after only {calls} ListVolumes calls");
    let tokens: Vec<String> = env
        .driver
        .calls(LIST_VOLUMES)
        .iter()
        .take(6)
        .map(|c| c.arg.clone())
        .collect();
    assert_eq!(tokens, ["", "1", "", "1", "", "1"]);
    assert!(sidecar
        .stderr
        .text()
        .contains("Check controller volume status error"));

    // More sweeps: still one Event object (its count rises), and only for "gone".
    let seen = env.driver.call_count(LIST_VOLUMES);
    assert!(env.wait_calls(LIST_VOLUMES, seen + 4, WAIT));
    let events = env.api.events();
    assert_eq!(events.len(), 1, "{events:#?}");
    let e = &events[0];
    assert_eq!(e["involvedObject"]["name"], "pvc-gone");
    assert_eq!(e["type"], "Warning");
    assert_eq!(e["reason"], ABNORMAL);
    assert_eq!(
        e["message"],
        format!("Volume gone was not found by CSI driver {DRIVER}").as_str()
    );
    assert_eq!(
        e["source"]["component"],
        format!("csi-pv-monitor-controller-{DRIVER}").as_str()
    );

    // The volume turns up again, healthy: that is a recovery like any other.
    env.driver.set_volume("gone", false, "");
    assert!(
        env.wait_event("pvc-gone", "VolumeConditionNormal", WAIT),
        "{}",
        sidecar.stderr.text()
    );
    let normal = env.events("pvc-gone", "VolumeConditionNormal");
    assert_eq!(normal.len(), 1);
    assert_eq!(
        normal[0]["message"],
        "The Volume returns to the healthy state"
    );
}

#[test]
fn a_volume_back_after_one_absence_is_not_missing() {
    let env = env_with_missing_volume();
    env.driver.set_volume("gone", false, "");
    env.driver.with(|s| s.page_size = 0);
    let sidecar = env.spawn(&["--list-volumes-interval=1s"]);
    assert!(
        env.wait_calls(LIST_VOLUMES, 1, WAIT),
        "{}",
        sidecar.stderr.text()
    );
    // Gone for one sweep (one page each now), then back for good. Stamped under the driver's
    // lock: calls answered before the removal saw it, calls started after the return see it,
    // so at most `back_at - removed_at` sweeps missed it.
    let removed_at = env.driver.with(|s| {
        s.volumes.remove("gone");
        finished_lists(s)
    });
    assert!(env.wait_calls(LIST_VOLUMES, removed_at + 1, WAIT));
    let back_at = env.driver.with(|s| {
        s.volumes.insert("gone".into(), s.volumes["v0"].clone());
        list_calls(s)
    });
    assert!(env.wait_calls(LIST_VOLUMES, back_at + 3, WAIT));
    assert_eq!(
        back_at - removed_at,
        1,
        "the test thread was too slow to put the volume back within one interval"
    );
    assert!(
        env.events("pvc-gone", ABNORMAL).is_empty(),
        "{:#?}",
        env.api.events()
    );
}

#[test]
fn report_missing_volumes_false_reports_nothing() {
    let env = env_with_missing_volume();
    let sidecar = env.spawn(&[
        "--list-volumes-interval=200ms",
        "--report-missing-volumes=false",
    ]);
    // Four complete sweeps of two pages each: twice what reporting needs.
    assert!(
        env.driver.wait_until(WAIT, |s| finished_lists(s) >= 8),
        "{}",
        sidecar.stderr.text()
    );
    assert!(env.api.events().is_empty(), "{:#?}", env.api.events());
}
