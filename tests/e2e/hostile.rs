//! Hostile input end to end (issue #16): a driver or API server that sends what no sane one
//! would. Each case: a log line naming the source, the sidecar keeps working, no panic.

use std::time::Duration;

use crate::kit::apiserver::{Fault, FaultRule};
use crate::support::Env;

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
    no_panic(&sidecar);
}

/// A ListVolumes reply of over 100 MB fails that call with RESOURCE_EXHAUSTED before it is
/// read (the channel's receive cap, `csi::MAX_REPLY`); the failure is logged naming the RPC,
/// the sidecar keeps sweeping, and reports as soon as the replies are sane again.
#[test]
fn a_huge_driver_reply_is_refused_and_the_sidecar_keeps_working() {
    let env = Env::new();
    env.volume("good");
    env.driver.set_volume("good", true, "still reported");
    env.driver.set_volume("huge", true, &"x".repeat(100 << 20));
    let mut sidecar = env.spawn(&["--list-volumes-interval=500ms"]);
    // Twice: the first refusal does not stop the sweeps.
    assert!(
        sidecar.stderr.wait_for_n(
            "/csi.v1.Controller/ListVolumes: rpc error: code = ResourceExhausted desc = Received message larger than max",
            2,
            WAIT
        ),
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
    assert!(sidecar.still_running_after(Duration::from_millis(200)));
    let text = sidecar.stderr.text();
    assert!(!text.contains("panicked"), "{text}");
}
