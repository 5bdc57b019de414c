//! Hostile input end to end (issue #16): a driver or API server that sends what no sane one
//! would. Each case: a log line naming the source, the sidecar keeps working, no panic.

use std::time::Duration;

use crate::support::Env;

const WAIT: Duration = Duration::from_secs(30);

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
