//! CSI v1.13 volume health end to end (volume-health-v1.13.md): the real binary against a mock
//! driver that speaks ControllerListVolumeHealth / ControllerGetVolumeHealth and a fake API
//! server with (gate on) or without (Kubernetes 1.36) `PersistentVolumeClaim.status.healthStatus`.
//! Both health modes share one lifecycle test; the rest covers paging, recovery evidence,
//! malformed answers, the gate-off and RBAC fallbacks, and the generation choice.

use std::time::Duration;

use serde_json::Value;

use crate::kit::apiserver::{FakeApiServer, Fault, FaultRule, RequestRecord};
use crate::kit::csidriver::{
    Generation, HealthEntry, Malformed, GET_VOLUME_HEALTH, LIST_VOLUMES, LIST_VOLUME_HEALTH,
};
use crate::observability::{scrape, scrape_until};
use crate::support::{http_addr, Env, Sidecar, DRIVER, NS};

const WAIT: Duration = Duration::from_secs(30);
const LIST_FAST: &[&str] = &["--list-volumes-interval=300ms"];
const GET_FAST: &[&str] = &[
    "--monitor-interval=300ms",
    "--volume-list-add-interval=300ms",
];

#[derive(Clone, Copy, Debug, PartialEq)]
enum HealthMode {
    List,
    Get,
}

impl HealthMode {
    fn env(self, gate_on: bool) -> Env {
        let env = Env::health(gate_on);
        if self == HealthMode::Get {
            env.driver.with(|s| s.list_volume_health = false);
        }
        env
    }

    fn flags(self) -> &'static [&'static str] {
        match self {
            HealthMode::List => LIST_FAST,
            HealthMode::Get => GET_FAST,
        }
    }

    /// The RPC that checks volumes in this mode.
    fn method(self) -> &'static str {
        match self {
            HealthMode::List => LIST_VOLUME_HEALTH,
            HealthMode::Get => GET_VOLUME_HEALTH,
        }
    }
}

fn spawn(env: &Env, flags: &[&str], extra: &[&str]) -> Sidecar {
    let all: Vec<&str> = flags.iter().chain(extra).copied().collect();
    env.spawn(&all)
}

/// `status.healthStatus` of PVC `pvc` as stored (Null when absent).
fn held_in(api: &FakeApiServer, pvc: &str) -> Value {
    api.get("persistentvolumeclaims", Some(NS), pvc)
        .and_then(|p| p.pointer("/status/healthStatus").cloned())
        .unwrap_or(Value::Null)
}

fn held(env: &Env, pvc: &str) -> Value {
    held_in(&env.api, pvc)
}

fn wait_held(env: &Env, pvc: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    assert!(
        env.api.wait_until(WAIT, |a| pred(&held_in(a, pvc))),
        "timed out waiting for {pvc} to hold {what}; it holds {}",
        held(env, pvc)
    );
    held(env, pvc)
}

/// (status, reason, message) of each held condition, in order.
fn conditions(h: &Value) -> Vec<(String, String, String)> {
    h["healthConditions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
            (s("status"), s("reason"), s("message"))
        })
        .collect()
}

fn cond(status: &str, reason: &str, message: &str) -> (String, String, String) {
    (status.into(), reason.into(), message.into())
}

/// The PATCHes of PVC `pvc`'s status subresource.
fn status_patches(env: &Env, pvc: &str) -> Vec<RequestRecord> {
    let path = format!("/api/v1/namespaces/{NS}/persistentvolumeclaims/{pvc}/status");
    env.api
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH" && r.path == path)
        .collect()
}

/// How often `reason` was reported on `pvc`: the counts of all its Events (a restarted
/// process starts a new Event, as client-go's in-memory correlation does).
fn count_of(env: &Env, pvc: &str, reason: &str) -> u64 {
    env.events(pvc, reason)
        .iter()
        .filter_map(|e| e["count"].as_u64())
        .sum()
}

/// The request log is written just after the store changes: wait for the `n`th PATCH.
fn wait_patches(env: &Env, pvc: &str, n: usize) -> Vec<RequestRecord> {
    assert!(
        env.api
            .wait_until(WAIT, |_| status_patches(env, pvc).len() >= n),
        "fewer than {n} status PATCHes of {pvc}"
    );
    status_patches(env, pvc)
}

/// Dropped or refused writes are retried no sooner than 10 check intervals (300 ms here) apart,
/// however many checks ran in between.
fn assert_slowed(env: &Env, pvc: &str, checks: usize) {
    let p = status_patches(env, pvc);
    assert!(
        !p.is_empty() && p.len() < checks,
        "{pvc}: {} writes in {checks} checks",
        p.len()
    );
    for w in p.windows(2) {
        let gap = w[1].at - w[0].at;
        assert!(
            gap >= Duration::from_millis(2900),
            "{pvc}: written again after {gap:?}"
        );
    }
}

/// Wait until the driver answered `more` further calls of `method` after now.
fn wait_more_calls(env: &Env, method: &str, more: usize) {
    let now = env.driver.call_count(method);
    assert!(
        env.wait_calls(method, now + more, WAIT),
        "the driver was not asked {more} more times"
    );
}

fn lifecycle(mode: HealthMode) {
    let env = mode.env(true);
    env.volume("v1");
    env.volume("ok");
    env.driver.set_health("ok", vec![]);
    env.driver.set_health(
        "v1",
        vec![
            HealthEntry::inaccessible("DiskGone", "disk gone"),
            HealthEntry::degraded("Slow", "slow io"),
        ],
    );
    let sidecar = spawn(&env, mode.flags(), &[]);
    let context = || format!("{mode:?}\n{}", sidecar.stderr.text());

    // Abnormal: the sorted conditions written, one Warning Event.
    let h = wait_held(&env, "pvc-v1", "two conditions", |h| {
        conditions(h).len() == 2
    });
    assert_eq!(
        conditions(&h),
        vec![
            cond("Degraded", "Slow", "slow io"),
            cond("Inaccessible", "DiskGone", "disk gone")
        ],
        "{}",
        context()
    );
    let ltt = h["lastTransitionTime"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        healthmon::timeutil::parse_rfc3339(&ltt).is_some(),
        "lastTransitionTime {ltt:?}"
    );
    let first = &wait_patches(&env, "pvc-v1", 1)[0];
    assert_eq!(
        first.content_type.as_deref(),
        Some("application/merge-patch+json")
    );
    assert!(
        first
            .query
            .contains("fieldManager=csi-external-health-monitor-controller"),
        "{}",
        first.query
    );
    assert!(
        env.wait_event("pvc-v1", "VolumeConditionAbnormal", WAIT),
        "{}",
        context()
    );
    let events = env.events("pvc-v1", "VolumeConditionAbnormal");
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["type"], "Warning");
    assert_eq!(
        events[0]["message"],
        "Degraded: Slow: slow io; Inaccessible: DiskGone: disk gone"
    );

    // Unchanged on the next checks: no PATCH, the Event's count rises.
    assert!(
        env.api.wait_until(WAIT, |_| count_of(
            &env,
            "pvc-v1",
            "VolumeConditionAbnormal"
        ) >= 3),
        "{}",
        context()
    );
    assert_eq!(status_patches(&env, "pvc-v1").len(), 1, "{}", context());
    assert!(
        status_patches(&env, "pvc-ok").is_empty(),
        "a healthy volume is never written"
    );
    assert_eq!(held(&env, "pvc-ok"), Value::Null);

    // A message-only change: written, keeping lastTransitionTime.
    env.driver.set_health(
        "v1",
        vec![
            HealthEntry::inaccessible("DiskGone", "disk still gone"),
            HealthEntry::degraded("Slow", "slow io"),
        ],
    );
    let h = wait_held(&env, "pvc-v1", "the new message", |h| {
        conditions(h).contains(&cond("Inaccessible", "DiskGone", "disk still gone"))
    });
    assert_eq!(h["lastTransitionTime"], ltt.as_str());
    assert_eq!(wait_patches(&env, "pvc-v1", 2).len(), 2);

    // A new (status, reason) set moves lastTransitionTime.
    env.driver
        .set_health("v1", vec![HealthEntry::data_loss("Lost", "data lost")]);
    let h = wait_held(&env, "pvc-v1", "DataLoss", |h| {
        conditions(h) == vec![cond("DataLoss", "Lost", "data lost")]
    });
    assert_ne!(h["lastTransitionTime"], ltt.as_str());

    // Recovery: null written, one Normal Event, and nothing more on later checks.
    env.driver.clear_health("v1");
    wait_held(&env, "pvc-v1", "nothing", Value::is_null);
    assert!(
        env.wait_event("pvc-v1", "VolumeConditionNormal", WAIT),
        "{}",
        context()
    );
    let last = wait_patches(&env, "pvc-v1", 4).last().cloned().unwrap();
    assert_eq!(
        last.body,
        Some(serde_json::json!({"status": {"healthStatus": null}}))
    );
    let patches = status_patches(&env, "pvc-v1").len();
    wait_more_calls(&env, mode.method(), 4);
    let normal = env.events("pvc-v1", "VolumeConditionNormal");
    assert_eq!(normal.len(), 1, "{normal:#?}");
    assert_eq!(normal[0]["type"], "Normal");
    assert_eq!(
        normal[0]["message"],
        "The Volume returns to the healthy state"
    );
    assert_eq!(normal[0]["count"], 1, "recovery is reported once");
    assert_eq!(status_patches(&env, "pvc-v1").len(), patches);
    if mode == HealthMode::List {
        // The absent volume was confirmed healthy by exactly one ControllerGetVolumeHealth.
        let gets = env.driver.calls(GET_VOLUME_HEALTH);
        assert_eq!(gets.len(), 1, "{gets:#?}");
        assert_eq!(gets[0].arg, "v1");
    } else {
        assert_eq!(env.driver.call_count(LIST_VOLUME_HEALTH), 0);
    }
    assert!(
        sidecar
            .stderr
            .text()
            .contains(&format!("mode=\"{}\"", mode.method())),
        "{}",
        context()
    );
}

/// Issue #25: the recovery is told once when the volume is judged healthy, whatever its
/// status clear does; the clear is retried (by the writer, then at every check) until it
/// lands: 500 on every try of two checks, then 403 (slowed to ten intervals), then 200.
fn a_failing_clear(mode: HealthMode) {
    let env = mode.env(true);
    env.volume("v1");
    env.driver.set_health(
        "v1",
        vec![HealthEntry::inaccessible("DiskGone", "disk gone")],
    );
    let sidecar = spawn(&env, mode.flags(), &[]);
    let context = || sidecar.stderr.text();
    wait_held(&env, "pvc-v1", "the condition", |h| !h.is_null());
    assert!(
        env.wait_event("pvc-v1", "VolumeConditionAbnormal", WAIT),
        "{}",
        context()
    );
    let path = "persistentvolumeclaims/pvc-v1/status";
    env.api.inject(
        FaultRule::new(Fault::Status(500))
            .method("PATCH")
            .path(path)
            .times(8),
    );
    env.api.inject(
        FaultRule::new(Fault::Status(403))
            .method("PATCH")
            .path(path)
            .times(1),
    );
    env.driver.clear_health("v1");
    wait_held(&env, "pvc-v1", "nothing", Value::is_null);
    wait_more_calls(&env, mode.method(), 3);
    let normal = env.events("pvc-v1", "VolumeConditionNormal");
    assert_eq!(normal.len(), 1, "{normal:#?}\n{}", context());
    assert_eq!(normal[0]["count"], 1, "the recovery is told once");
    let answers: Vec<u16> = status_patches(&env, "pvc-v1")
        .iter()
        .map(|r| r.status)
        .collect();
    let mut want = vec![200];
    want.extend([500; 8]);
    want.extend([403, 200]);
    assert_eq!(answers, want, "{}", context());
    assert!(
        context().contains("Not allowed to write status.healthStatus"),
        "{}",
        context()
    );
}

#[test]
fn health_list_tells_a_recovery_once_while_its_status_clear_fails() {
    a_failing_clear(HealthMode::List);
}

#[test]
fn health_get_tells_a_recovery_once_while_its_status_clear_fails() {
    a_failing_clear(HealthMode::Get);
}

/// Issue #25: a per-volume answer without its required part, or about another volume, is a
/// driver error (logged once per volume and problem, counted), never a recovery.
#[test]
fn a_malformed_answer_is_never_a_recovery() {
    let env = HealthMode::Get.env(true);
    env.volume("v1");
    env.driver.set_health(
        "v1",
        vec![HealthEntry::inaccessible("DiskGone", "disk gone")],
    );
    let mut sidecar = spawn(&env, GET_FAST, &["--http-endpoint=127.0.0.1:0"]);
    let addr = http_addr(&sidecar.stderr);
    wait_held(&env, "pvc-v1", "the condition", |h| !h.is_null());
    assert!(env.wait_event("pvc-v1", "VolumeConditionAbnormal", WAIT));
    for (broken, said) in [
        (Malformed::Omit, "the required volume_health is missing"),
        (
            Malformed::OtherVolume("v9".into()),
            "volume_health is about volume 'v9'",
        ),
    ] {
        env.driver.with(|s| {
            s.malformed.insert("v1".into(), broken.clone());
        });
        wait_more_calls(&env, GET_VOLUME_HEALTH, 4);
        let lines: Vec<String> = sidecar
            .stderr
            .lines()
            .into_iter()
            .filter(|l| l.contains(said))
            .collect();
        assert_eq!(
            lines.len(),
            1,
            "said once: {lines:#?}\n{}",
            sidecar.stderr.text()
        );
        assert!(
            lines[0].starts_with('E') && lines[0].contains("pv=\"pv-v1\""),
            "{}",
            lines[0]
        );
        assert!(env.events("pvc-v1", "VolumeConditionNormal").is_empty());
        assert_eq!(
            conditions(&held(&env, "pvc-v1")),
            vec![cond("Inaccessible", "DiskGone", "disk gone")]
        );
    }
    let s = scrape(&addr);
    let errors = s.find(
        "csi_volume_health_probe_total",
        &[("method", "ControllerGetVolumeHealth"), ("result", "error")],
    );
    // Four more calls in each phase, one of which may have been answered before the switch.
    assert!(
        errors.iter().any(|s| s.value >= 6.0),
        "malformed answers counted as errors: {errors:?}"
    );
    // Mended and really recovered: one recovery.
    env.driver.with(|s| s.malformed.clear());
    env.driver.clear_health("v1");
    wait_held(&env, "pvc-v1", "nothing", Value::is_null);
    assert!(env.wait_event("pvc-v1", "VolumeConditionNormal", WAIT));
    assert!(sidecar.still_running_after(Duration::from_millis(10)));

    // v1.12 ControllerGetVolume: an answer without its volume is no recovery either.
    v112_malformed_is_no_recovery(
        Env::get_mode(),
        GET_FAST,
        crate::kit::csidriver::GET_VOLUME,
        "the required volume is missing",
        |s, broken| {
            if broken {
                s.malformed.insert("v1".into(), Malformed::Omit);
            } else {
                s.malformed.clear();
            }
        },
    );
    // v1.12 ListVolumes: an entry with its volume but without the condition the spec requires
    // is no recovery, and the volume, being listed, is not missing either.
    v112_malformed_is_no_recovery(
        Env::new(),
        LIST_FAST,
        LIST_VOLUMES,
        "the entry's status.volume_condition is missing",
        |s, broken| s.volumes.get_mut("v1").unwrap().omit_condition = broken,
    );
}

/// A v1.12 volume reported abnormal; then the driver says it is healthy in a broken answer
/// (`set_broken(state, true)`): the problem is named once, no recovery and no missing report
/// follow, until the answer is mended (`set_broken(state, false)`) and the recovery is told.
fn v112_malformed_is_no_recovery(
    env: Env,
    flags: &[&str],
    method: &str,
    said: &str,
    set_broken: impl Fn(&mut crate::kit::csidriver::State, bool),
) {
    env.volume("v1");
    env.driver.set_volume("v1", true, "broken");
    let sidecar = env.spawn(flags);
    assert!(
        env.wait_event("pvc-v1", "VolumeConditionAbnormal", WAIT),
        "{}",
        sidecar.stderr.text()
    );
    env.driver.with(|s| {
        set_broken(s, true);
        s.volumes.get_mut("v1").unwrap().abnormal = false;
    });
    assert!(
        sidecar.stderr.wait_for(said, WAIT),
        "{}",
        sidecar.stderr.text()
    );
    wait_more_calls(&env, method, 4);
    let lines = sidecar
        .stderr
        .lines()
        .into_iter()
        .filter(|l| l.contains(said))
        .count();
    assert_eq!(lines, 1, "said once per volume:\n{}", sidecar.stderr.text());
    assert!(env.events("pvc-v1", "VolumeConditionNormal").is_empty());
    assert!(env
        .events("pvc-v1", "VolumeConditionAbnormal")
        .iter()
        .all(|e| e["message"] == "broken"));
    env.driver.with(|s| set_broken(s, false));
    assert!(env.wait_event("pvc-v1", "VolumeConditionNormal", WAIT));
}

#[test]
fn health_list_lifecycle() {
    lifecycle(HealthMode::List);
}

#[test]
fn health_get_lifecycle() {
    lifecycle(HealthMode::Get);
}

#[test]
fn restart_while_abnormal_writes_nothing_and_reports_the_recovery_once() {
    for mode in [HealthMode::List, HealthMode::Get] {
        let env = mode.env(true);
        env.volume("v1");
        env.driver.set_health(
            "v1",
            vec![HealthEntry::inaccessible("DiskGone", "disk gone")],
        );
        let first = spawn(&env, mode.flags(), &[]);
        wait_held(&env, "pvc-v1", "the condition", |h| !h.is_null());
        assert!(env.wait_event("pvc-v1", "VolumeConditionAbnormal", WAIT));
        drop(first); // SIGKILL
        let patches = wait_patches(&env, "pvc-v1", 1).len();
        let count = count_of(&env, "pvc-v1", "VolumeConditionAbnormal");

        let second = spawn(&env, mode.flags(), &[]);
        assert!(
            env.api.wait_until(WAIT, |_| count_of(
                &env,
                "pvc-v1",
                "VolumeConditionAbnormal"
            ) >= count + 2),
            "{mode:?}: the restarted sidecar still reports the volume\n{}",
            second.stderr.text()
        );
        assert_eq!(
            status_patches(&env, "pvc-v1").len(),
            patches,
            "{mode:?}: unchanged conditions are not written again after a restart"
        );
        env.driver.clear_health("v1");
        wait_held(&env, "pvc-v1", "nothing", Value::is_null);
        assert!(env.wait_event("pvc-v1", "VolumeConditionNormal", WAIT));
        wait_more_calls(&env, mode.method(), 3);
        assert_eq!(env.events("pvc-v1", "VolumeConditionNormal").len(), 1);
        assert_eq!(
            count_of(&env, "pvc-v1", "VolumeConditionNormal"),
            1,
            "{mode:?}"
        );
    }
}

#[test]
fn gate_off_warns_once_counts_slows_writes_and_keeps_events() {
    let env = HealthMode::List.env(false);
    for id in ["a", "b"] {
        env.volume(id);
        env.driver
            .set_health(id, vec![HealthEntry::inaccessible("DiskGone", id)]);
    }
    // 300 ms interval: dropped writes are retried every 10 intervals, 3 s.
    let sidecar = spawn(&env, LIST_FAST, &["--http-endpoint=127.0.0.1:0"]);
    let addr = http_addr(&sidecar.stderr);
    for pvc in ["pvc-a", "pvc-b"] {
        assert!(
            env.wait_event(pvc, "VolumeConditionAbnormal", WAIT),
            "{}",
            sidecar.stderr.text()
        );
    }
    assert!(sidecar.stderr.wait_for("CSIVolumeHealth", WAIT));
    // Several cycles later: one write per PVC, one warning line.
    wait_more_calls(&env, LIST_VOLUME_HEALTH, 4);
    let cycles = env.driver.call_count(LIST_VOLUME_HEALTH);
    for pvc in ["pvc-a", "pvc-b"] {
        assert_slowed(&env, pvc, cycles);
        assert_eq!(
            held(&env, pvc),
            Value::Null,
            "the 1.36 server dropped the field"
        );
        assert!(
            count_of(&env, pvc, "VolumeConditionAbnormal") >= 3,
            "Events still go out"
        );
    }
    let warnings = sidecar
        .stderr
        .lines()
        .iter()
        .filter(|l| l.contains("feature gate looks off"))
        .count();
    assert_eq!(warnings, 1, "{}", sidecar.stderr.text());
    let s = scrape_until(&addr, "the dropped-writes counter", |s| {
        s.series("csi_volume_health_status_writes_dropped_total")
            .first()
            .is_some_and(|x| x.value >= 2.0)
    });
    assert!(s
        .find(
            "csi_volume_health_status_writes_total",
            &[("result", "dropped")]
        )
        .first()
        .is_some_and(|x| x.value >= 2.0));
    // The retry comes, no sooner than 10 intervals after the first write.
    assert!(
        env.api
            .wait_until(WAIT, |_| status_patches(&env, "pvc-a").len() >= 2),
        "{}",
        sidecar.stderr.text()
    );
    assert_slowed(&env, "pvc-a", env.driver.call_count(LIST_VOLUME_HEALTH));

    // Once the cluster gains the field, the next retry sticks.
    env.api.set_pvc_health_status(true);
    wait_held(&env, "pvc-a", "the condition", |h| {
        conditions(h) == vec![cond("Inaccessible", "DiskGone", "a")]
    });
}

#[test]
fn old_rbac_without_status_patch_is_named_once_and_events_continue() {
    let env = HealthMode::Get.env(true);
    env.api.inject(
        FaultRule::new(Fault::Status(403))
            .method("PATCH")
            .path("/status"),
    );
    env.volume("v1");
    env.driver
        .set_health("v1", vec![HealthEntry::degraded("Slow", "slow")]);
    let sidecar = spawn(&env, GET_FAST, &["--http-endpoint=127.0.0.1:0"]);
    let addr = http_addr(&sidecar.stderr);
    assert!(sidecar
        .stderr
        .wait_for("persistentvolumeclaims/status", WAIT));
    assert!(
        env.api.wait_until(WAIT, |_| count_of(
            &env,
            "pvc-v1",
            "VolumeConditionAbnormal"
        ) >= 3),
        "{}",
        sidecar.stderr.text()
    );
    assert_slowed(&env, "pvc-v1", env.driver.call_count(GET_VOLUME_HEALTH));
    let lines = sidecar
        .stderr
        .lines()
        .iter()
        .filter(|l| l.contains("persistentvolumeclaims/status"))
        .count();
    assert_eq!(lines, 1);
    scrape_until(&addr, "forbidden writes", |s| {
        !s.find(
            "csi_volume_health_status_writes_total",
            &[("result", "forbidden")],
        )
        .is_empty()
    });
}

#[test]
fn paging_with_repeats_and_omissions() {
    let env = HealthMode::List.env(true);
    for id in ["a", "b", "c", "d", "e"] {
        env.volume(id);
        env.driver
            .set_health(id, vec![HealthEntry::degraded("Slow", id)]);
    }
    // `a` comes again on the last page with other conditions: the later entry wins.
    env.driver.repeat_in_health_list(
        "a",
        Some(vec![HealthEntry::data_loss("Lost", "gone for good")]),
    );
    let sidecar = spawn(&env, LIST_FAST, &["--list-volumes-max-entries=2"]);
    wait_held(&env, "pvc-a", "the later entry", |h| {
        conditions(h) == vec![cond("DataLoss", "Lost", "gone for good")]
    });
    for id in ["b", "c", "d", "e"] {
        wait_held(&env, &format!("pvc-{id}"), "Degraded", |h| {
            conditions(h) == vec![cond("Degraded", "Slow", id)]
        });
    }
    let calls = env.driver.calls(LIST_VOLUME_HEALTH);
    assert!(calls.iter().all(|c| c.max_entries == 2), "{calls:#?}");
    let tokens: Vec<&str> = calls.iter().map(|c| c.arg.as_str()).collect();
    assert!(tokens.contains(&"") && tokens.len() >= 3, "{tokens:?}");

    // `c` is left out of the listing while it is still abnormal: its Get says so, nothing
    // recovers, nothing is rewritten.
    let before = wait_patches(&env, "pvc-c", 1).len();
    env.driver.drop_from_health_list("c");
    wait_more_calls(&env, GET_VOLUME_HEALTH, 3);
    assert!(env
        .driver
        .calls(GET_VOLUME_HEALTH)
        .iter()
        .all(|c| c.arg == "c"));
    assert_eq!(
        conditions(&held(&env, "pvc-c")),
        vec![cond("Degraded", "Slow", "c")]
    );
    assert_eq!(status_patches(&env, "pvc-c").len(), before);
    assert!(
        env.events("pvc-c", "VolumeConditionNormal").is_empty(),
        "{}",
        sidecar.stderr.text()
    );
}

#[test]
fn a_failed_page_recovers_nothing() {
    let env = HealthMode::List.env(true);
    for id in ["x", "y", "v1"] {
        env.volume(id);
        env.driver
            .set_health(id, vec![HealthEntry::inaccessible("DiskGone", id)]);
    }
    env.driver.with(|s| s.page_size = 1);
    let sidecar = spawn(&env, LIST_FAST, &[]);
    wait_held(&env, "pvc-v1", "the condition", |h| !h.is_null());
    // v1 recovers at the driver while every listing fails on its second page.
    let failed = env.driver.call_count(LIST_VOLUME_HEALTH);
    env.driver.with(|s| {
        s.health.remove("v1");
        s.arg_failures.insert(
            (LIST_VOLUME_HEALTH, "1".to_string()),
            vec![grpcio::RpcStatusCode::UNAVAILABLE; 3].into(),
        );
    });
    assert!(env.driver.wait_until(WAIT, |s| {
        s.calls
            .iter()
            .skip(failed)
            .filter(|c| c.method == LIST_VOLUME_HEALTH && c.arg == "1" && c.finished.is_some())
            .count()
            >= 3
    }));
    let failed_cycles_done = env.driver.call_count(LIST_VOLUME_HEALTH);
    assert_eq!(
        env.driver.call_count(GET_VOLUME_HEALTH),
        0,
        "an incomplete cycle confirms nothing"
    );
    assert!(!held(&env, "pvc-v1").is_null());
    assert!(env.events("pvc-v1", "VolumeConditionNormal").is_empty());
    // The first complete cycle after that recovers it.
    wait_held(&env, "pvc-v1", "nothing", Value::is_null);
    assert!(env.driver.call_count(LIST_VOLUME_HEALTH) > failed_cycles_done);
    assert!(
        env.wait_event("pvc-v1", "VolumeConditionNormal", WAIT),
        "{}",
        sidecar.stderr.text()
    );
}

#[test]
fn list_without_get_recovers_after_two_complete_cycles() {
    let env = HealthMode::List.env(true);
    env.driver.with(|s| s.get_volume_health = false);
    env.volume("v1");
    env.driver.set_health(
        "v1",
        vec![HealthEntry::inaccessible("DiskGone", "disk gone")],
    );
    let sidecar = spawn(&env, &["--list-volumes-interval=500ms"], &[]);
    assert!(sidecar.stderr.wait_for("without GET_VOLUME_HEALTH", WAIT));
    wait_held(&env, "pvc-v1", "the condition", |h| !h.is_null());
    let before = env.driver.with(|s| {
        s.health.remove("v1");
        s.calls
            .iter()
            .filter(|c| c.method == LIST_VOLUME_HEALTH)
            .count()
    });
    wait_held(&env, "pvc-v1", "nothing", Value::is_null);
    // Absent from the listing that was under way, then from two complete cycles.
    let cycles = env.driver.call_count(LIST_VOLUME_HEALTH) - before;
    assert!(
        (2..=3).contains(&cycles),
        "recovered after {cycles} listings"
    );
    assert_eq!(env.driver.call_count(GET_VOLUME_HEALTH), 0);
}

#[test]
fn not_found_becomes_volume_not_found() {
    for mode in [HealthMode::Get, HealthMode::List] {
        let env = mode.env(true);
        env.volume("gone");
        if mode == HealthMode::List {
            // The listing never says NOT_FOUND: a volume reported abnormal, then unknown to
            // the driver, is confirmed missing by its Get.
            env.driver
                .set_health("gone", vec![HealthEntry::degraded("Slow", "slow")]);
        }
        let sidecar = spawn(&env, mode.flags(), &[]);
        if mode == HealthMode::List {
            wait_held(&env, "pvc-gone", "Degraded", |h| !h.is_null());
            env.driver.remove_volume("gone");
        }
        let message = format!("Volume gone was not found by CSI driver {DRIVER}");
        wait_held(&env, "pvc-gone", "VolumeNotFound", |h| {
            conditions(h) == vec![cond("Inaccessible", "VolumeNotFound", &message)]
        });
        assert!(
            env.api.wait_until(WAIT, |_| {
                env.events("pvc-gone", "VolumeConditionAbnormal")
                    .iter()
                    .any(|e| {
                        e["message"] == format!("Inaccessible: VolumeNotFound: {message}").as_str()
                    })
            }),
            "{mode:?}\n{}",
            sidecar.stderr.text()
        );
    }
}

#[test]
fn malformed_answers_are_mended_logged_and_never_refused() {
    let env = HealthMode::List.env(true);
    let long = "x".repeat(5000);
    let twenty: Vec<HealthEntry> = (0..20)
        .map(|i| HealthEntry::degraded(&format!("R{i:02}"), "many"))
        .collect();
    let cases: Vec<(&str, Vec<HealthEntry>)> = vec![
        ("unknown", vec![HealthEntry::new(9, "FromTheFuture", "new")]),
        (
            "zero",
            vec![HealthEntry::new(HealthEntry::UNKNOWN, "Unset", "zero")],
        ),
        ("noreason", vec![HealthEntry::inaccessible("", "no reason")]),
        (
            "dup",
            vec![
                HealthEntry::degraded("Slow", "first"),
                HealthEntry::degraded("Slow", "second"),
            ],
        ),
        ("long", vec![HealthEntry::degraded("Long", &long)]),
        ("many", twenty),
    ];
    for (id, entries) in &cases {
        env.volume(id);
        env.driver.set_health(id, entries.clone());
    }
    let mut sidecar = spawn(&env, LIST_FAST, &["--http-endpoint=127.0.0.1:0"]);
    let addr = http_addr(&sidecar.stderr);
    let h = wait_held(&env, "pvc-unknown", "Degraded", |h| !h.is_null());
    assert_eq!(
        conditions(&h),
        vec![cond("Degraded", "FromTheFuture", "new")]
    );
    let h = wait_held(&env, "pvc-zero", "Degraded", |h| !h.is_null());
    assert_eq!(conditions(&h), vec![cond("Degraded", "Unset", "zero")]);
    let h = wait_held(&env, "pvc-noreason", "a reason", |h| !h.is_null());
    assert_eq!(
        conditions(&h),
        vec![cond("Inaccessible", "Inaccessible", "no reason")]
    );
    let h = wait_held(&env, "pvc-dup", "one condition", |h| !h.is_null());
    assert_eq!(conditions(&h), vec![cond("Degraded", "Slow", "second")]);
    let h = wait_held(&env, "pvc-long", "a cut message", |h| !h.is_null());
    let message = &conditions(&h)[0].2;
    assert!(
        message.len() <= 1024 && message.ends_with('…'),
        "{} bytes",
        message.len()
    );
    let h = wait_held(&env, "pvc-many", "16 conditions", |h| !h.is_null());
    assert_eq!(conditions(&h).len(), 16);
    // Nothing the API server refused.
    let refused: Vec<String> = env
        .api
        .requests()
        .iter()
        .filter(|r| r.status == 422)
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert!(refused.is_empty(), "{refused:?}");
    // One clear line per malformed volume, not one per check.
    wait_more_calls(&env, LIST_VOLUME_HEALTH, 3);
    for (id, _) in &cases {
        let n = sidecar
            .stderr
            .lines()
            .iter()
            .filter(|l| l.contains("mended") && l.contains(&format!("volume=\"{id}\"")))
            .count();
        assert_eq!(n, 1, "{id}:\n{}", sidecar.stderr.text());
    }
    let s = scrape(&addr);
    // 9 is outside the enum: counted under `other` (one series whatever the driver sends).
    for status in ["other", "0"] {
        assert!(
            s.find(
                "csi_volume_health_unknown_condition_total",
                &[("status", status)]
            )
            .first()
            .is_some_and(|x| x.value >= 1.0),
            "status {status}"
        );
    }
    assert!(sidecar.still_running_after(Duration::from_millis(100)));
}

#[test]
fn condition_series_follow_the_volume() {
    let env = HealthMode::List.env(true);
    env.volume("v1");
    env.driver.set_health(
        "v1",
        vec![
            HealthEntry::inaccessible("DiskGone", "disk gone"),
            HealthEntry::degraded("Slow", "slow"),
        ],
    );
    let sidecar = spawn(&env, LIST_FAST, &["--http-endpoint=127.0.0.1:0"]);
    let addr = http_addr(&sidecar.stderr);
    fn series<'a>(status: &'a str, reason: &'a str) -> Vec<(&'a str, &'a str)> {
        vec![
            ("driver_name", DRIVER),
            ("namespace", NS),
            ("persistentvolumeclaim", "pvc-v1"),
            ("status", status),
            ("reason", reason),
        ]
    }
    let s = scrape_until(&addr, "two condition series", |s| {
        s.series("csi_controller_volume_health_status").len() == 2
    });
    for (st, r) in [("Inaccessible", "DiskGone"), ("Degraded", "Slow")] {
        let found = s.find("csi_controller_volume_health_status", &series(st, r));
        assert_eq!(found.len(), 1, "{st} {r}");
        assert_eq!(found[0].value, 1.0);
    }
    assert!(!s
        .find(
            "csi_volume_health_status",
            &[("persistentvolume", "pv-v1"), ("status", "abnormal")]
        )
        .is_empty());
    assert!(!s
        .find(
            "csi_volume_health_probe_total",
            &[("method", "ControllerListVolumeHealth"), ("result", "ok")]
        )
        .is_empty());
    env.driver.clear_health("v1");
    scrape_until(&addr, "the series gone on recovery", |s| {
        s.series("csi_controller_volume_health_status").is_empty()
            && !s
                .find(
                    "csi_volume_health_status",
                    &[("persistentvolume", "pv-v1"), ("status", "normal")],
                )
                .is_empty()
    });
    env.driver
        .set_health("v1", vec![HealthEntry::degraded("Slow", "slow")]);
    scrape_until(&addr, "the series back", |s| {
        s.series("csi_controller_volume_health_status").len() == 1
    });
    env.api.delete("persistentvolumes", None, "pv-v1");
    scrape_until(&addr, "the series gone with the PV", |s| {
        s.series("csi_controller_volume_health_status").is_empty()
            && s.find("csi_volume_health_status", &[("persistentvolume", "pv-v1")])
                .is_empty()
    });
}

#[test]
fn events_can_be_turned_off_in_the_health_modes() {
    let env = HealthMode::Get.env(true);
    env.volume("v1");
    env.driver
        .set_health("v1", vec![HealthEntry::degraded("Slow", "slow")]);
    let _sidecar = spawn(&env, GET_FAST, &["--volume-health-events=false"]);
    wait_held(&env, "pvc-v1", "the condition", |h| !h.is_null());
    env.driver.clear_health("v1");
    wait_held(&env, "pvc-v1", "nothing", Value::is_null);
    wait_more_calls(&env, GET_VOLUME_HEALTH, 2);
    assert!(env.api.events().is_empty(), "{:#?}", env.api.events());
}

#[test]
fn a_deleted_pvc_causes_no_error_storm() {
    let env = HealthMode::List.env(true);
    env.volume("v1");
    env.volume("v2");
    for id in ["v1", "v2"] {
        env.driver
            .set_health(id, vec![HealthEntry::degraded("Slow", id)]);
    }
    // v2's PVC vanishes between the cache and the write: every status PATCH answers 404.
    env.api.inject(
        FaultRule::new(Fault::Status(404))
            .method("PATCH")
            .path("persistentvolumeclaims/pvc-v2/status"),
    );
    let mut sidecar = spawn(&env, LIST_FAST, &[]);
    wait_held(&env, "pvc-v1", "the condition", |h| !h.is_null());
    // v1's PVC is deleted for real (the PV controller then releases the PV).
    env.api.delete("persistentvolumeclaims", Some(NS), "pvc-v1");
    let mut pv = env.api.get("persistentvolumes", None, "pv-v1").unwrap();
    pv["status"]["phase"] = "Released".into();
    env.api.update(pv);
    wait_more_calls(&env, LIST_VOLUME_HEALTH, 6);
    let errors: Vec<String> = sidecar
        .stderr
        .lines()
        .into_iter()
        .filter(|l| l.starts_with('E') && (l.contains("pvc-v1") || l.contains("pvc-v2")))
        .collect();
    assert!(errors.len() <= 1, "{errors:#?}");
    // One write per cycle for v2: a 404 is not retried (the status writer retries only
    // passing errors), and the next cycle tries again. Counted over five cycles, give or
    // take the one in progress at either end.
    let (c1, p1) = (
        env.driver.call_count(LIST_VOLUME_HEALTH),
        status_patches(&env, "pvc-v2").len(),
    );
    wait_more_calls(&env, LIST_VOLUME_HEALTH, 5);
    let (c2, p2) = (
        env.driver.call_count(LIST_VOLUME_HEALTH),
        status_patches(&env, "pvc-v2").len(),
    );
    let (cycles, writes) = (c2 - c1, p2 - p1);
    assert!(
        writes + 1 >= cycles && writes <= cycles + 1,
        "{writes} writes of pvc-v2 in {cycles} cycles"
    );
    assert!(
        status_patches(&env, "pvc-v2")
            .iter()
            .all(|r| r.status == 404),
        "every write of pvc-v2 answered 404"
    );
    assert!(sidecar.still_running_after(Duration::from_millis(100)));
}

#[test]
fn generation_choice() {
    // Both generations: the health mode.
    let env = Env::health(true);
    env.driver.set_generation(Generation::Both);
    env.volume("v1");
    env.driver.set_volume("v1", true, "legacy says broken");
    env.driver
        .set_health("v1", vec![HealthEntry::degraded("Slow", "v113 says slow")]);
    let sidecar = env.spawn(LIST_FAST);
    wait_held(&env, "pvc-v1", "the v1.13 condition", |h| !h.is_null());
    assert!(sidecar
        .stderr
        .text()
        .contains("mode=\"ControllerListVolumeHealth\""));
    assert_eq!(env.driver.call_count(LIST_VOLUMES), 0);
    drop(sidecar);

    // The same driver forced to v1.12: the legacy mode, the driver's message verbatim.
    let env = Env::health(true);
    env.driver.set_generation(Generation::Both);
    env.volume("v1");
    env.driver.set_volume("v1", true, "legacy says broken");
    env.driver
        .set_health("v1", vec![HealthEntry::degraded("Slow", "v113 says slow")]);
    let sidecar = spawn(&env, LIST_FAST, &["--volume-health-api=condition"]);
    assert!(
        env.wait_event("pvc-v1", "VolumeConditionAbnormal", WAIT),
        "{}",
        sidecar.stderr.text()
    );
    assert_eq!(
        env.events("pvc-v1", "VolumeConditionAbnormal")[0]["message"],
        "legacy says broken"
    );
    assert!(sidecar.stderr.text().contains("mode=\"ListVolumes\""));
    assert_eq!(env.driver.call_count(LIST_VOLUME_HEALTH), 0);
    assert!(status_patches(&env, "pvc-v1").is_empty());
    drop(sidecar);

    // Neither generation: exit 1 naming the four capabilities.
    let env = Env::health(true);
    env.driver.with(|s| {
        s.list_volume_health = false;
        s.get_volume_health = false;
    });
    let mut sidecar = env.spawn(LIST_FAST);
    let text = sidecar.exit_1_log(WAIT);
    for cap in [
        "LIST_VOLUME_HEALTH",
        "GET_VOLUME_HEALTH",
        "VOLUME_CONDITION with LIST_VOLUMES",
        "VOLUME_CONDITION with GET_VOLUME",
    ] {
        assert!(text.contains(cap), "{cap}: {text}");
    }

    // Forcing v1.13 on a v1.12 driver: exit 1.
    let env = Env::new();
    let mut sidecar = env.spawn(&["--volume-health-api=health"]);
    let text = sidecar.exit_1_log(WAIT);
    assert!(text.contains("--volume-health-api=health"), "{text}");
}

#[test]
fn v112_modes_never_touch_the_pvc_status() {
    // Gate on, legacy driver: nothing is written to status, as upstream v0.18.
    let api = fixtures_api_with_gate();
    let env = Env::with_api(api, None);
    env.volume("v1");
    env.driver.set_volume("v1", true, "broken");
    let sidecar = env.spawn(LIST_FAST);
    assert!(
        env.wait_event("pvc-v1", "VolumeConditionAbnormal", WAIT),
        "{}",
        sidecar.stderr.text()
    );
    wait_more_calls(&env, LIST_VOLUMES, 2);
    assert!(status_patches(&env, "pvc-v1").is_empty());
}

fn fixtures_api_with_gate() -> FakeApiServer {
    FakeApiServer::start_with(crate::kit::apiserver::Options {
        pvc_health_status: true,
        ..Default::default()
    })
    .expect("start the fake api server")
}
