//! Crash-only (DESIGN §2 fix 10, issue #25): a panic on the controller thread, on a check
//! worker or on the lease thread ends the whole process at once, with an error line naming
//! the thread, the message and the place, the termination log kubelet shows, and exit code 1.
//! Before, each of these left a process that answered its health checks and checked nothing.
//! The panics are injected by the test kit's `faulty-sidecar`, which runs the shipped
//! `app::main` with a fault hook.

use std::time::Duration;

use crate::kit::csidriver::{GET_VOLUME, LIST_VOLUMES};
use crate::support::{Env, Sidecar, NS};

const WAIT: Duration = Duration::from_secs(30);

/// The process ended with 1 after a panic on `thread` (a name or its prefix) at fault point
/// `site`, said so in one error line and in the termination log.
fn ended_by_panic(sidecar: &mut Sidecar, term: &std::path::Path, thread: &str, site: &str) {
    let text = sidecar.exit_1_log(WAIT);
    let injected = format!("injected panic at fault point {site}");
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("A thread panicked"))
        .collect();
    assert_eq!(lines.len(), 1, "one panic line:\n{text}");
    let line = lines[0];
    assert!(line.starts_with('E'), "not an error line: {line}");
    assert!(line.contains(&format!("thread=\"{thread}")), "{line}");
    assert!(line.contains(&injected), "{line}");
    assert!(line.contains("location=\"tests/kit/main.rs:"), "{line}");
    let message = std::fs::read_to_string(term).expect("termination log written");
    assert!(
        message.starts_with(&format!("Thread {thread}")) && message.contains(&injected),
        "{message}"
    );
}

#[test]
fn a_panic_on_the_controller_thread_ends_the_process() {
    let env = Env::new();
    env.volume("v1");
    env.driver.set_volume("v1", false, "");
    let term = env.dir.join("termination-log");
    let mut sidecar = env.spawn_faulty(
        "controller",
        &[
            "--list-volumes-interval=300ms",
            &format!("--termination-log-path={}", term.display()),
        ],
    );
    ended_by_panic(&mut sidecar, &term, "controller", "controller");
    // It panicked after a complete sweep, not before it could work.
    assert!(env.wait_calls(LIST_VOLUMES, 1, WAIT));
}

#[test]
fn a_panic_on_a_check_worker_ends_the_process() {
    let env = Env::get_mode();
    env.volume("v1");
    env.driver.set_volume("v1", false, "");
    let term = env.dir.join("termination-log");
    let mut sidecar = env.spawn_faulty(
        "worker",
        &[
            "--monitor-interval=300ms",
            "--worker-threads=3",
            &format!("--termination-log-path={}", term.display()),
        ],
    );
    ended_by_panic(&mut sidecar, &term, "csi-worker-", "worker");
    // The worker panicked before asking the driver: no check was ever made.
    assert!(env.driver.calls(GET_VOLUME).is_empty());
}

#[test]
fn a_panic_on_the_lease_thread_ends_the_process() {
    let env = Env::new();
    env.volume("v1");
    let term = env.dir.join("termination-log");
    let mut sidecar = env.spawn_faulty(
        "leader",
        &[
            "--leader-election",
            &format!("--leader-election-namespace={NS}"),
            "--leader-election-lease-duration=3s",
            "--leader-election-renew-deadline=2s",
            "--leader-election-retry-period=300ms",
            "--list-volumes-interval=300ms",
            &format!("--termination-log-path={}", term.display()),
        ],
    );
    // It led (the Lease names it) and then died on its first renewal.
    ended_by_panic(&mut sidecar, &term, "leader-election", "leader");
    assert!(sidecar
        .stderr
        .text()
        .contains("Successfully acquired lease"));
}

#[test]
fn a_fault_point_without_a_panic_changes_nothing() {
    // The control: the test kit's runner is the sidecar as shipped when no fault fires.
    let env = Env::new();
    env.volume("v1");
    env.driver.set_volume("v1", true, "bad");
    let mut sidecar = env.spawn_faulty("nowhere", &["--list-volumes-interval=300ms"]);
    assert!(
        env.wait_event("pvc-v1", "VolumeConditionAbnormal", WAIT),
        "{}",
        sidecar.stderr.text()
    );
    assert!(env.wait_calls(LIST_VOLUMES, 3, WAIT));
    assert!(sidecar.still_running_after(Duration::from_millis(10)));
}
