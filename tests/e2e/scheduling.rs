//! ControllerGetVolume scheduling at scale (DESIGN §2.2): many PVs, few workers, a slow driver:
//! every PV once per interval, bounded concurrency, never two checks of one volume at once;
//! PVs that become Bound later are picked up, deleted ones are no longer checked.

use serde_json::json;
use std::collections::HashMap;
use std::time::Duration;

use crate::kit::csidriver::{State, GET_VOLUME};
use crate::kit::fixtures;
use crate::support::{Env, DRIVER, NS};

const WAIT: Duration = Duration::from_secs(30);

/// Answered ControllerGetVolume calls per volume id.
fn checks(s: &State) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for c in &s.calls {
        if c.method == GET_VOLUME && c.finished.is_some() {
            *out.entry(c.arg.clone()).or_insert(0) += 1;
        }
    }
    out
}

#[test]
fn two_hundred_volumes_four_workers_slow_driver() {
    const N: usize = 200;
    // 200 checks × 50 ms / 4 workers = 2.5 s of work per sweep; a 3 s interval leaves room.
    const INTERVAL: Duration = Duration::from_secs(3);
    let env = Env::get_mode();
    for i in 0..N {
        let id = format!("v{i:03}");
        env.volume(&id);
        env.driver.set_volume(&id, false, "");
    }
    env.driver.with(|s| s.latency = Duration::from_millis(50));
    let sidecar = env.spawn(&[
        "--monitor-interval=3s",
        "--worker-threads=4",
        "--volume-list-add-interval=1m",
    ]);
    // Two sweeps done: every volume checked at least twice.
    let done = env.driver.wait_until(WAIT, |s| {
        let c = checks(s);
        c.len() == N && c.values().all(|n| *n >= 2)
    });
    assert!(done, "{}", sidecar.stderr.text());
    let calls = env.driver.calls(GET_VOLUME);
    let per_volume = env.driver.with(|s| checks(s));
    // At the moment the slowest volume got its second check, no volume had more than three:
    // once per interval, not as fast as the workers can go.
    let most = per_volume.values().max().copied().unwrap_or(0);
    assert!(most <= 3, "a volume was checked {most} times in two sweeps");
    // Consecutive checks of one volume are about one interval apart (a late check may be
    // followed by an early one, but never by one right away).
    let mut by_volume: HashMap<&str, Vec<std::time::Instant>> = HashMap::new();
    for c in &calls {
        by_volume.entry(c.arg.as_str()).or_default().push(c.started);
    }
    for (id, starts) in &by_volume {
        for w in starts.windows(2) {
            let gap = w[1] - w[0];
            assert!(gap >= INTERVAL / 2, "{id}: checks {gap:?} apart");
        }
    }
    assert!(
        env.driver.max_in_flight() <= 4,
        "{} calls in flight with 4 workers",
        env.driver.max_in_flight()
    );
    // 50 ms calls due every 15 ms: the pool is used to its limit at some point.
    assert_eq!(env.driver.max_in_flight(), 4);
    assert_eq!(env.driver.max_in_flight_per_volume(), 1);
}

#[test]
fn a_volume_bound_later_is_picked_up_by_the_rescan() {
    let env = Env::get_mode();
    env.volume("early");
    env.driver.set_volume("early", false, "");
    env.driver.set_volume("late", true, "late trouble");
    let (pv, _) = fixtures::bound_volume(
        &env.api,
        DRIVER,
        "pv-late",
        "late",
        "Pending",
        NS,
        Some("pvc-late"),
    );
    // An hour between checks of a volume: only the rescan every second can bring "late" in.
    let sidecar = env.spawn(&["--monitor-interval=1h", "--volume-list-add-interval=1s"]);
    assert!(
        env.wait_calls(GET_VOLUME, 1, WAIT),
        "{}",
        sidecar.stderr.text()
    );
    assert!(env
        .driver
        .calls(GET_VOLUME)
        .iter()
        .all(|c| c.arg == "early"));
    let mut bound = pv.clone();
    bound["status"] = json!({"phase": "Bound"});
    env.api.update(bound);
    let mut pvc = env
        .api
        .get("persistentvolumeclaims", Some(NS), "pvc-late")
        .unwrap();
    pvc["status"] = json!({"phase": "Bound"});
    env.api.update(pvc);
    assert!(
        env.driver
            .wait_until(WAIT, |s| s.calls.iter().any(|c| c.arg == "late")),
        "{}",
        sidecar.stderr.text()
    );
    assert!(
        env.wait_event("pvc-late", "VolumeConditionAbnormal", WAIT),
        "{}",
        sidecar.stderr.text()
    );
    // A PV created (already Bound) while the sidecar runs comes in the same way.
    env.driver.set_volume("newer", false, "");
    env.volume("newer");
    assert!(
        env.driver
            .wait_until(WAIT, |s| s.calls.iter().any(|c| c.arg == "newer")),
        "{}",
        sidecar.stderr.text()
    );
    // "early" was not checked again: the hour-long interval holds.
    let early = env
        .driver
        .calls(GET_VOLUME)
        .iter()
        .filter(|c| c.arg == "early")
        .count();
    assert_eq!(early, 1);
}

#[test]
fn a_deleted_volume_is_no_longer_checked() {
    let env = Env::get_mode();
    for id in ["keep", "drop"] {
        env.volume(id);
        env.driver.set_volume(id, false, "");
    }
    let sidecar = env.spawn(&[
        "--monitor-interval=200ms",
        "--volume-list-add-interval=200ms",
    ]);
    let count = |id: &str| {
        env.driver
            .calls(GET_VOLUME)
            .iter()
            .filter(|c| c.arg == id)
            .count()
    };
    let keep_checks = |n: usize| {
        env.driver.wait_until(WAIT, |s| {
            s.calls
                .iter()
                .filter(|c| c.method == GET_VOLUME && c.arg == "keep" && c.finished.is_some())
                .count()
                >= n
        })
    };
    assert!(keep_checks(2), "{}", sidecar.stderr.text());
    assert!(count("drop") >= 1);
    assert!(env.api.delete("persistentvolumes", None, "pv-drop"));
    // Give the watch and a rescan time to see it (three more checks of the other volume), then
    // three more: "drop" must not be checked during those.
    assert!(keep_checks(count("keep") + 3));
    let dropped = count("drop");
    assert!(keep_checks(count("keep") + 3));
    assert_eq!(count("drop"), dropped, "the deleted PV is still checked");
    assert!(
        sidecar.stderr.text().lines().all(|l| !l.contains("panic")),
        "{}",
        sidecar.stderr.text()
    );
}
