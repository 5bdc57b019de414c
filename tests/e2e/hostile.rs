//! Hostile input end to end (issue #16): a driver or API server that sends what no sane one
//! would. Each case: a log line naming the source, the sidecar keeps working, no panic.

use std::time::Duration;

use crate::kit::apiserver::{Fault, FaultRule};
use crate::kit::csidriver::{HealthEntry, GET_VOLUME};
use crate::support::Env;
use healthmon::csi;

const WAIT: Duration = Duration::from_secs(30);
const FAST: &[&str] = &["--list-volumes-interval=300ms"];
/// The PV list and watch (not the PVC ones: `persistentvolumeclaims`).
const PV_REQUESTS: &str = "/api/v1/persistentvolumes?";

/// An abnormal volume reported by the driver, and the sidecar's Event for it: the proof that
/// the sidecar still works after the hostile answer.
fn reports_an_abnormal_volume(env: &Env, sidecar: &crate::support::Sidecar, id: &str) {
    env.volume(id);
    env.driver.set_volume(id, true, "still reported");
    assert!(
        env.wait_event(&format!("pvc-{id}"), "VolumeConditionAbnormal", WAIT),
        "{}",
        sidecar.stderr.text()
    );
}

/// The sidecar's peak resident memory (VmHWM) in MiB: a hostile 100 MB answer must not have
/// been buffered (a few tens of MiB is the process with its caches).
fn peak_mib(sidecar: &crate::support::Sidecar) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", sidecar.pid))
        .unwrap_or_else(|e| panic!("read /proc/{}/status: {e}", sidecar.pid));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| kib / 1024)
        .unwrap_or_else(|| panic!("no VmHWM in {status}"))
}

/// Bound for [`peak_mib`]: well under the 100 MB a hostile answer carries.
const PEAK_LIMIT_MIB: u64 = 64;

fn no_panic(sidecar: &crate::support::Sidecar) {
    let text = sidecar.stderr.text();
    assert!(!text.contains("panicked"), "{text}");
}

/// `Retry-After: 18446744073709551615` used to overflow `Instant` (a panic in the reflector
/// thread). Now the wait is cut to a minute, logged naming the request, and shutdown still
/// ends it at once.
#[test]
fn an_absurd_retry_after_is_cut_to_a_minute_and_shutdown_still_ends_it() {
    let env = Env::new();
    env.api.inject(
        FaultRule::new(Fault::Throttle(u64::MAX))
            .path(PV_REQUESTS)
            .times(1),
    );
    let mut sidecar = env.spawn(FAST);
    assert!(
        sidecar.stderr.wait_for(
            "GET /api/v1/persistentvolumes?limit=500: the API server answered 429 with Retry-After \"18446744073709551615\"; waiting 60 s, the most this client waits",
            WAIT
        ),
        "{}",
        sidecar.stderr.text()
    );
    assert!(sidecar.still_running_after(Duration::from_millis(500)));
    sidecar.terminate();
    let status = sidecar.wait_exit(Duration::from_secs(15));
    assert_eq!(status.code(), Some(0), "{}", sidecar.stderr.text());
    no_panic(&sidecar);
}

/// A server that repeats a `continue` token used to be followed forever. Now each list fails,
/// logged naming the request and the token, the reflector backs off and lists again, and once
/// the server pages properly the sidecar works.
#[test]
fn a_repeating_continue_token_fails_the_list_and_the_sidecar_relists() {
    let env = Env::new();
    env.api
        .inject(FaultRule::new(Fault::RepeatContinue).path(PV_REQUESTS));
    let sidecar = env.spawn(FAST);
    assert!(
        sidecar.stderr.wait_for_n(
            "continue=same-token: malformed response: the API server repeated the continuation token \"same-token\"",
            2,
            WAIT
        ),
        "{}",
        sidecar.stderr.text()
    );
    env.api.clear_faults();
    reports_an_abnormal_volume(&env, &sidecar, "after-loop");
    no_panic(&sidecar);
}

/// A watch line of 100 MB without a newline used to grow the read buffer to 100 MB. Now the
/// watch ends at 16 MiB with an error naming it, and the reflector watches again.
#[test]
fn an_endless_watch_line_ends_the_watch_and_the_sidecar_rewatches() {
    let env = Env::new();
    env.api.inject(
        FaultRule::new(Fault::EndlessWatchLine(100 << 20))
            .path(PV_REQUESTS)
            .times(1),
    );
    let sidecar = env.spawn(FAST);
    assert!(
        sidecar.stderr.wait_for(
            "a watch event line longer than 16 MiB, the most one object takes",
            WAIT
        ),
        "{}",
        sidecar.stderr.text()
    );
    reports_an_abnormal_volume(&env, &sidecar, "after-long-line");
    let peak = peak_mib(&sidecar);
    assert!(peak < PEAK_LIMIT_MIB, "peak {peak} MiB");
    no_panic(&sidecar);
}

/// After a hostile 100 MB reply: still running on the same driver connection (a lost one
/// would end the sidecar), memory never near the reply's size, no panic.
fn survived_a_huge_reply(sidecar: &mut crate::support::Sidecar) {
    assert!(sidecar.still_running_after(Duration::from_millis(10)));
    let peak = peak_mib(sidecar);
    assert!(peak < PEAK_LIMIT_MIB, "peak {peak} MiB");
    let text = sidecar.stderr.text();
    assert!(!text.contains("Lost connection"), "{text}");
    no_panic(sidecar);
}

/// A ListVolumes reply of over 100 MB is cancelled once gRPC holds `csi::REPLY_MEMORY` for
/// it, not read in full (before, the peak was about 117 MiB: gRPC core opened its window to the
/// announced length and checked the size cap only on the whole message). The failure is logged
/// naming the RPC and the limits, the sidecar keeps sweeping on the same connection, and
/// reports as soon as the replies are sane again.
#[test]
fn a_huge_driver_reply_is_refused_and_the_sidecar_keeps_working() {
    let env = Env::new();
    env.volume("good");
    env.driver.set_volume("good", true, "still reported");
    env.driver.set_volume("huge", true, &"x".repeat(100 << 20));
    let mut sidecar = env.spawn(&["--list-volumes-interval=500ms"]);
    let refused = format!(
        "/csi.v1.Controller/ListVolumes: rpc error: code = ResourceExhausted desc = Buffers full (the driver's reply passed the {} MiB gRPC may hold for it; replies are capped at {} MiB)",
        csi::REPLY_MEMORY >> 20,
        csi::MAX_REPLY >> 20
    );
    // Twice: the first refusal does not stop the sweeps.
    assert!(
        sidecar.stderr.wait_for_n(&refused, 2, WAIT),
        "{}",
        sidecar.stderr.text()
    );
    assert!(env.events("pvc-good", "VolumeConditionAbnormal").is_empty());
    env.driver.remove_volume("huge");
    assert!(
        env.wait_event("pvc-good", "VolumeConditionAbnormal", WAIT),
        "{}",
        sidecar.stderr.text()
    );
    survived_a_huge_reply(&mut sidecar);
}

/// Per-volume checks share the connection's memory: a 100 MB ControllerGetVolume reply among
/// checks running side by side is cancelled at the same bound (gRPC may cancel a neighbour
/// first; that volume is asked again next interval), every other volume is still reported, and
/// the connection is kept.
#[test]
fn a_huge_reply_among_parallel_checks_is_refused_and_the_others_are_reported() {
    let env = Env::get_mode();
    env.driver.with(|s| s.latency = Duration::from_millis(20));
    let good = ["good-1", "good-2", "good-3", "good-4"];
    for id in good {
        env.volume(id);
        env.driver.set_volume(id, true, "still reported");
    }
    env.volume("huge");
    env.driver.set_volume("huge", true, &"x".repeat(100 << 20));
    let mut sidecar = env.spawn(&[
        "--monitor-interval=300ms",
        "--volume-list-add-interval=300ms",
        "--worker-threads=5",
    ]);
    assert!(
        sidecar.stderr.wait_for(
            "/csi.v1.Controller/ControllerGetVolume: rpc error: code = ResourceExhausted desc = Buffers full (",
            WAIT
        ),
        "{}",
        sidecar.stderr.text()
    );
    // The error line is rate-limited per volume; the driver's log shows the checks go on.
    assert!(
        env.driver.wait_until(WAIT, |s| {
            s.calls
                .iter()
                .filter(|c| c.method == GET_VOLUME && c.arg == "huge" && c.finished.is_some())
                .count()
                >= 3
        }),
        "{}",
        sidecar.stderr.text()
    );
    for id in good {
        assert!(
            env.wait_event(&format!("pvc-{id}"), "VolumeConditionAbnormal", WAIT),
            "{id}: {}",
            sidecar.stderr.text()
        );
    }
    assert!(env.events("pvc-huge", "VolumeConditionAbnormal").is_empty());
    survived_a_huge_reply(&mut sidecar);
}

/// The size cap's edges: a reply a little under `csi::MAX_REPLY` (a page of long entries) is
/// read and judged; one a little over it, still within the memory gRPC may hold, fails with
/// gRPC's own size message, and the sweeps go on.
#[test]
fn a_reply_under_the_cap_is_read_and_one_over_it_is_refused() {
    let env = Env::new();
    env.volume("good");
    env.driver.set_volume("good", true, "still reported");
    // Not a PV of the cluster: only its size matters.
    let under = csi::MAX_REPLY - (1 << 20);
    env.driver.set_volume("long", true, &"x".repeat(under));
    let mut sidecar = env.spawn(&["--list-volumes-interval=500ms"]);
    assert!(
        env.wait_event("pvc-good", "VolumeConditionAbnormal", WAIT),
        "{}",
        sidecar.stderr.text()
    );
    let over = csi::MAX_REPLY + (1 << 20);
    env.driver.set_volume("long", true, &"x".repeat(over));
    assert!(
        sidecar.stderr.wait_for_n(
            "/csi.v1.Controller/ListVolumes: rpc error: code = ResourceExhausted desc = Received message larger than max",
            2,
            WAIT
        ),
        "{}",
        sidecar.stderr.text()
    );
    assert!(sidecar.still_running_after(Duration::from_millis(10)));
    no_panic(&sidecar);
}

/// A list page whose object holds invalid UTF-8, then one with an object nested 100,000 levels
/// deep: the first page is refused as malformed (backoff, relist), the deep object is skipped
/// and named (no stack overflow), and the sidecar works once the pages are sane.
#[test]
fn invalid_utf8_and_deep_nesting_in_a_list_are_refused_and_the_sidecar_relists() {
    let env = Env::new();
    let head = br#"{"kind":"PersistentVolumeList","apiVersion":"v1","metadata":{"resourceVersion":"5"},"items":[{"metadata":{"name":"#;
    let mut utf8 = head.to_vec();
    utf8.extend_from_slice(b"\"bad-\xff\xfe\"}}]}");
    let mut deep = head.to_vec();
    deep.extend_from_slice(br#""deep"},"spec":"#);
    deep.extend(std::iter::repeat_n(b'[', 100_000));
    deep.extend(std::iter::repeat_n(b']', 100_000));
    deep.extend_from_slice(b"}]}");
    for body in [utf8, deep] {
        env.api.inject(
            FaultRule::new(Fault::Body(200, body))
                .method("GET")
                .path(PV_REQUESTS)
                .times(1),
        );
    }
    let mut sidecar = env.spawn(FAST);
    for line in [
        "reflector-pv: list failed: API server",
        "skipping a malformed PersistentVolume deep",
    ] {
        assert!(
            sidecar.stderr.wait_for(line, WAIT),
            "{line}:\n{}",
            sidecar.stderr.text()
        );
    }
    reports_an_abnormal_volume(&env, &sidecar, "v1");
    assert!(sidecar.still_running_after(Duration::from_millis(10)));
    no_panic(&sidecar);
}

/// A 429 whose Status asks for `retryAfterSeconds` of u64::MAX: the reflector's wait before
/// listing again is cut to the client's bound, a minute (it used to overflow `Instant`), the
/// sidecar stays up, and SIGTERM still ends it at once.
#[test]
fn an_absurd_retry_after_seconds_in_a_status_is_bounded() {
    let env = Env::new();
    let body = br#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"slow down","reason":"TooManyRequests","details":{"retryAfterSeconds":18446744073709551615},"code":429}"#;
    env.api.inject(
        FaultRule::new(Fault::Body(429, body.to_vec()))
            .method("GET")
            .path(PV_REQUESTS)
            .times(1),
    );
    // -v=4: the reflector says how long it waits before listing again.
    let mut sidecar = env.spawn(&["--list-volumes-interval=300ms", "-v=4"]);
    assert!(
        sidecar
            .stderr
            .wait_for("reflector-pv: list failed: API server", WAIT),
        "{}",
        sidecar.stderr.text()
    );
    let bound = healthmon::kube::client::MAX_SERVER_WAIT;
    let retry = format!("reflector-pv: retrying in {bound:?}");
    assert!(
        sidecar.stderr.wait_for("reflector-pv: retrying in ", WAIT),
        "{}",
        sidecar.stderr.text()
    );
    let text = sidecar.stderr.text();
    let waits: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("reflector-pv: retrying in "))
        .collect();
    assert!(
        waits.len() == 1 && waits[0].ends_with(&retry),
        "the wait the server asked for is cut to {bound:?}: {waits:#?}"
    );
    assert!(sidecar.still_running_after(Duration::from_millis(500)));
    let asked = std::time::Instant::now();
    sidecar.terminate();
    let status = sidecar.wait_exit(Duration::from_secs(15));
    assert_eq!(status.code(), Some(0), "{}", sidecar.stderr.text());
    assert!(asked.elapsed() < Duration::from_secs(12));
    no_panic(&sidecar);
}

/// Driver entries with every field empty: a v1.13 listing entry without a volume id and a v1.12
/// ListVolumes entry without volume or status. Each is skipped with a line naming the RPC; the
/// real volumes beside them are still reported.
#[test]
fn driver_entries_with_every_field_empty_are_skipped() {
    // v1.13: an entry with an empty volume_id (and a condition that names nothing).
    let env = Env::health(true);
    env.volume("v1");
    env.driver
        .set_health("v1", vec![HealthEntry::degraded("Slow", "slow")]);
    env.driver.set_health("", vec![HealthEntry::new(0, "", "")]);
    let mut sidecar = env.spawn(FAST);
    assert!(
        sidecar.stderr.wait_for(
            "ControllerListVolumeHealth returned 1 entries without a volume",
            WAIT
        ),
        "{}",
        sidecar.stderr.text()
    );
    assert!(env.wait_event("pvc-v1", "VolumeConditionAbnormal", WAIT));
    assert!(sidecar.still_running_after(Duration::from_millis(10)));
    no_panic(&sidecar);

    // v1.12: an entry without volume and without status.
    let env = Env::new();
    env.driver.set_volume("empty", true, "x");
    env.driver.with(|s| {
        let v = s.volumes.get_mut("empty").unwrap();
        v.omit_volume = true;
        v.omit_condition = true;
    });
    let mut sidecar = env.spawn(FAST);
    assert!(
        sidecar
            .stderr
            .wait_for("ListVolumes returned 1 entries without a volume", WAIT),
        "{}",
        sidecar.stderr.text()
    );
    reports_an_abnormal_volume(&env, &sidecar, "v2");
    assert!(sidecar.still_running_after(Duration::from_millis(10)));
    no_panic(&sidecar);
}
