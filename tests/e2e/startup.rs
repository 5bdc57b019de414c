//! Startup failures an operator must be able to diagnose from the log alone.

use std::time::Duration;

use crate::kit::csidriver::{temp_dir, MockDriver};
use crate::support::{Env, Sidecar, DRIVER};

#[test]
fn no_socket_times_out_with_a_clear_message_and_exit_1() {
    let env = Env::new();
    let dir = temp_dir("nosock");
    let missing = dir.join("absent.sock");
    let child = crate::kit::fixtures::spawn_sidecar(
        &env.kubeconfig,
        &missing,
        &[],
        std::process::Stdio::piped(),
    );
    let mut sidecar = Sidecar::adopt(child);
    assert!(
        sidecar
            .stderr
            .wait_for("Still connecting", Duration::from_secs(15)),
        "{}",
        sidecar.stderr.text()
    );
    let text = sidecar.exit_1_log(Duration::from_secs(45));
    assert!(
        text.contains("Failed to connect to the CSI driver"),
        "{text}"
    );
    assert!(text.contains(&missing.display().to_string()), "{text}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn driver_without_volume_condition_is_an_error_and_exit_1() {
    let env = Env::new();
    env.driver.with(|s| s.volume_condition = false);
    let mut sidecar = env.spawn(&[]);
    let text = sidecar.exit_1_log(Duration::from_secs(20));
    let line = text
        .lines()
        .find(|l| l.contains("does not implement VolumeCondition"))
        .unwrap_or_else(|| panic!("no capability message at default verbosity:\n{text}"));
    assert!(
        line.starts_with('E') || line.contains("\"error\"") || line.contains("ERROR"),
        "not error level: {line}"
    );
}

#[test]
fn driver_without_controller_service_is_an_error_and_exit_1() {
    let env = Env::new();
    env.driver.with(|s| s.controller_service = false);
    let mut sidecar = env.spawn(&[]);
    let text = sidecar.exit_1_log(Duration::from_secs(20));
    assert!(
        text.contains("does not support Plugin Controller Service"),
        "{text}"
    );
}

#[test]
fn probe_not_ready_then_ready_continues() {
    let env = Env::new();
    env.driver
        .with(|s| s.probe_script.extend([Some(false), Some(false), None]));
    env.volume("v1");
    env.driver.set_volume("v1", true, "bad");
    let sidecar = env.spawn(&[]);
    assert!(
        env.wait_event("pvc-v1", "VolumeConditionAbnormal", Duration::from_secs(30)),
        "{}",
        sidecar.stderr.text()
    );
    assert!(sidecar.stderr.text().contains("CSI driver is not ready"));
    // Two not-ready answers, then the ready one; nothing probes after startup.
    assert_eq!(env.driver.call_count(crate::kit::csidriver::PROBE), 3);
}

#[test]
fn probe_failure_is_fatal() {
    let env = Env::new();
    env.driver.fail_next(
        crate::kit::csidriver::PROBE,
        grpcio::RpcStatusCode::INTERNAL,
        1,
    );
    let mut sidecar = env.spawn(&[]);
    let text = sidecar.exit_1_log(Duration::from_secs(20));
    assert!(text.contains("Failed to probe the CSI driver"), "{text}");
}

#[test]
fn empty_driver_name_is_fatal() {
    let env = Env::new();
    env.driver.with(|s| s.name.clear());
    let mut sidecar = env.spawn(&[]);
    let text = sidecar.exit_1_log(Duration::from_secs(20));
    assert!(text.contains("driver name is empty"), "{text}");
}

#[test]
fn unreachable_api_server_is_reported_clearly() {
    let driver = MockDriver::start(DRIVER);
    let dir = temp_dir("unreachable");
    // A port nothing listens on: bind, note it, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://127.0.0.1:{port}\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\ncurrent-context: x\nusers:\n- name: u\n  user:\n    token: t\n"
        ),
    )
    .unwrap();
    let child = crate::kit::fixtures::spawn_sidecar(
        &kubeconfig,
        driver.socket(),
        &[],
        std::process::Stdio::piped(),
    );
    let mut sidecar = Sidecar::adopt(child);
    let needle = format!("127.0.0.1:{port}");
    assert!(
        sidecar.stderr.wait_for(&needle, Duration::from_secs(20)),
        "{}",
        sidecar.stderr.text()
    );
    // It keeps trying (the API server may come back) rather than crashing.
    assert!(
        sidecar.still_running_after(Duration::from_millis(500)),
        "{}",
        sidecar.stderr.text()
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn sigterm_exits_0() {
    let env = Env::new();
    env.volume("v1");
    env.driver.set_volume("v1", false, "");
    let mut sidecar = env.spawn(&[]);
    assert!(
        env.wait_calls(
            crate::kit::csidriver::LIST_VOLUMES,
            1,
            Duration::from_secs(30)
        ),
        "{}",
        sidecar.stderr.text()
    );
    sidecar.terminate();
    assert_eq!(
        sidecar.wait_exit(Duration::from_secs(20)).code(),
        Some(0),
        "{}",
        sidecar.stderr.text()
    );
}
