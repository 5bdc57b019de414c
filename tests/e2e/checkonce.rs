//! `--check-once` (issue #22): the real binary asks the mock driver once about every volume, in
//! the mode the daemon would choose, prints a line per volume and a summary (or JSON), exits 0,
//! 1 or 2, and only ever reads from the fake API server.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use grpcio::RpcStatusCode;
use serde_json::Value;

use crate::kit::csidriver::{
    Generation, HealthEntry, GET_VOLUME, GET_VOLUME_HEALTH, LIST_VOLUMES, LIST_VOLUME_HEALTH,
};
use crate::support::{bin, Env, DRIVER};

const WAIT: Duration = Duration::from_secs(30);

/// One finished run.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    /// The line of `volume` (lines start with the volume id and two spaces).
    fn line(&self, volume: &str) -> &str {
        let lines: Vec<&str> = self
            .stdout
            .lines()
            .filter(|l| l.starts_with(&format!("{volume} ")))
            .collect();
        assert_eq!(lines.len(), 1, "one line for {volume}:\n{self}");
        lines[0]
    }

    fn summary(&self) -> &str {
        let last = self.stdout.lines().last().unwrap_or_default();
        assert!(last.starts_with("summary: "), "no summary last:\n{self}");
        last
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}):\n{self}"))
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// `--check-once` on `env`'s driver, with `--kubeconfig` when `kubeconfig` is given, out of any
/// cluster (no in-cluster configuration to fall back to).
fn run_with(env: &Env, kubeconfig: Option<&Path>, extra: &[&str]) -> Run {
    let mut cmd = Command::new(bin());
    cmd.arg("--check-once")
        .arg(format!("--csi-address={}", env.driver.socket().display()))
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT");
    if let Some(k) = kubeconfig {
        cmd.arg(format!("--kubeconfig={}", k.display()));
    }
    // Last, so that a flag missing its value is the last argument.
    let out = cmd.args(extra).output().expect("run the binary");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn check_once(env: &Env, extra: &[&str]) -> Run {
    run_with(env, Some(&env.kubeconfig), extra)
}

/// The fake API server saw reads only: no write of any kind, no watch.
fn assert_read_only(env: &Env) {
    let requests = env.api.requests();
    let writes: Vec<String> = requests
        .iter()
        .filter(|r| r.method != "GET" || r.is_watch())
        .map(|r| format!("{} {}?{}", r.method, r.path, r.query))
        .collect();
    assert!(
        writes.is_empty(),
        "--check-once wrote or watched: {writes:#?}"
    );
    assert!(env.api.events().is_empty(), "{:#?}", env.api.events());
}

fn calls(env: &Env, method: &str) -> Vec<String> {
    env.driver
        .calls(method)
        .into_iter()
        .map(|c| c.arg)
        .collect()
}

#[test]
fn v112_listing_names_every_volume_and_exits_1_on_an_abnormal_one() {
    let env = Env::new();
    for id in ["v1", "v2", "v3"] {
        env.volume(id);
    }
    env.driver
        .set_volume("v1", true, "disk on fire\nsecond line");
    env.driver.set_volume("v2", false, "");
    // v3's PV is Bound, but the driver does not know its volume; "stray" has no PV.
    env.driver.set_volume("stray", false, "");

    let r = check_once(&env, &[]);
    assert_eq!(r.code, 1, "{r}");
    assert_eq!(
        r.line("v1"),
        "v1     pv=pv-v1  pvc=test/pvc-v1  abnormal: disk on fire\\nsecond line"
    );
    assert_eq!(r.line("v2"), "v2     pv=pv-v2  pvc=test/pvc-v2  healthy");
    assert_eq!(
        r.line("v3"),
        format!("v3     pv=pv-v3  pvc=test/pvc-v3  not_found: Volume v3 was not found by CSI driver {DRIVER} (not in ListVolumes; answered by ControllerGetVolume)")
    );
    assert!(
        r.line("stray")
            .ends_with("healthy (no Bound PersistentVolume of this driver has this volume)"),
        "{r}"
    );
    assert_eq!(
        r.summary(),
        format!("summary: 4 volumes, 2 healthy, 1 abnormal, 1 not found, 0 errors; driver {DRIVER}, mode ListVolumes")
    );
    assert_eq!(r.stdout.lines().count(), 5, "{r}");
    // One listing; the one volume it lacks asked about as the daemon would confirm it.
    assert_eq!(env.driver.call_count(LIST_VOLUMES), 1);
    assert_eq!(calls(&env, GET_VOLUME), ["v3"]);
    // The same startup lines as the daemon (the same code path).
    assert!(
        r.stderr.contains(
            "Monitoring mode selected driver=\"fake.csi.driver.io\" mode=\"ListVolumes\""
        ),
        "{r}"
    );

    // All healthy: exit 0.
    env.driver.set_volume("v1", false, "");
    assert!(env.api.delete("persistentvolumes", None, "pv-v3"));
    let r = check_once(&env, &[]);
    assert_eq!(r.code, 0, "{r}");
    assert!(
        r.summary()
            .starts_with("summary: 3 volumes, 3 healthy, 0 abnormal, 0 not found, 0 errors;"),
        "{r}"
    );
    assert_read_only(&env);
}

#[test]
fn v112_per_volume_mode_asks_about_each_pv_of_the_driver() {
    let env = Env::get_mode();
    for id in ["v1", "v2", "v3", "v4"] {
        env.volume(id);
    }
    env.driver.set_volume("v1", true, "disk on fire");
    env.driver.set_volume("v2", false, "");
    env.driver.set_volume("v4", false, "");
    env.driver
        .fail_next_for(GET_VOLUME, "v4", RpcStatusCode::INTERNAL, 1);
    // A PV of another driver is none of our business.
    crate::kit::fixtures::bound_volume(
        &env.api,
        "other.csi.io",
        "pv-other",
        "other",
        "Bound",
        crate::support::NS,
        Some("pvc-other"),
    );

    let r = check_once(&env, &[]);
    assert_eq!(r.code, 1, "{r}");
    assert!(r.line("v1").ends_with("abnormal: disk on fire"), "{r}");
    assert!(r.line("v2").ends_with("healthy"), "{r}");
    assert!(
        r.line("v3").contains("not_found: Volume v3 was not found"),
        "{r}"
    );
    assert!(
        r.line("v4")
            .contains("error: /csi.v1.Controller/ControllerGetVolume: rpc error: code = Internal"),
        "{r}"
    );
    assert!(!r.stdout.contains("other"), "{r}");
    assert_eq!(
        r.summary(),
        format!("summary: 4 volumes, 1 healthy, 1 abnormal, 1 not found, 1 errors; driver {DRIVER}, mode ControllerGetVolume")
    );
    let mut asked = calls(&env, GET_VOLUME);
    asked.sort();
    assert_eq!(asked, ["v1", "v2", "v3", "v4"]);
    assert_eq!(env.driver.call_count(LIST_VOLUMES), 0);
    assert_read_only(&env);
}

#[test]
fn v113_health_listing_and_per_volume_health() {
    let env = Env::health(true);
    env.volume("v1");
    env.volume("v2");
    env.driver.set_health(
        "v1",
        vec![
            HealthEntry::inaccessible("DiskGone", "gone"),
            HealthEntry::degraded("Slow", "slow"),
        ],
    );
    // Healthy, and left out of the listing as the spec says drivers should.
    env.driver.set_health("v2", vec![]);

    let r = check_once(&env, &[]);
    assert_eq!(r.code, 1, "{r}");
    assert!(
        r.line("v1")
            .ends_with("abnormal: Inaccessible: DiskGone: gone; Degraded: Slow: slow"),
        "{r}"
    );
    assert!(
        r.line("v2").ends_with(
            "healthy (not in ControllerListVolumeHealth, which leaves healthy volumes out)"
        ),
        "{r}"
    );
    assert!(
        r.summary().ends_with("mode ControllerListVolumeHealth"),
        "{r}"
    );
    assert_eq!(env.driver.call_count(LIST_VOLUME_HEALTH), 1);
    assert_eq!(env.driver.call_count(GET_VOLUME_HEALTH), 0);

    // The same as JSON.
    let j = check_once(&env, &["-o", "json"]).json();
    assert_eq!(j["mode"], "ControllerListVolumeHealth");
    assert_eq!(j["driver"], DRIVER);
    assert_eq!(j["pvs_known"], true);
    let v1 = &j["volumes"][0];
    assert_eq!(v1["volume"], "v1");
    assert_eq!(v1["pv"], "pv-v1");
    assert_eq!(v1["pvc"]["namespace"], "test");
    assert_eq!(v1["pvc"]["name"], "pvc-v1");
    assert_eq!(v1["result"], "abnormal");
    assert_eq!(
        v1["conditions"],
        serde_json::json!([
            {"status": "Inaccessible", "reason": "DiskGone", "message": "gone"},
            {"status": "Degraded", "reason": "Slow", "message": "slow"}
        ])
    );
    assert_eq!(j["volumes"][1]["result"], "healthy");
    assert_eq!(
        j["summary"],
        serde_json::json!({"volumes": 2, "healthy": 1, "abnormal": 1, "not_found": 0, "error": 0})
    );

    // Without LIST_VOLUME_HEALTH: one ControllerGetVolumeHealth per PV.
    env.driver.with(|s| s.list_volume_health = false);
    let r = check_once(&env, &["--output=json"]);
    assert_eq!(r.code, 1, "{r}");
    let j = r.json();
    assert_eq!(j["mode"], "ControllerGetVolumeHealth");
    assert_eq!(j["volumes"][0]["result"], "abnormal");
    assert_eq!(j["volumes"][1]["result"], "healthy");
    assert!(j["volumes"][1].get("note").is_none(), "{j}");
    let mut asked = calls(&env, GET_VOLUME_HEALTH);
    asked.sort();
    assert_eq!(asked, ["v1", "v2"]);
    // Not a write to the PVCs' status either.
    assert_read_only(&env);
    for pvc in ["pvc-v1", "pvc-v2"] {
        let p = env
            .api
            .get("persistentvolumeclaims", Some("test"), pvc)
            .unwrap();
        assert!(p["status"].get("healthStatus").is_none(), "{p}");
    }
}

#[test]
fn a_driver_of_both_generations_is_checked_in_the_mode_the_daemon_chooses() {
    let env = Env::new();
    env.driver.set_generation(Generation::Both);
    env.volume("v1");
    // v1.12 says abnormal, v1.13 says healthy: the answer shows which API was asked.
    env.driver.set_volume("v1", true, "legacy says bad");
    env.driver.set_health("v1", vec![]);
    let mode_line =
        |mode: &str| format!("Monitoring mode selected driver=\"{DRIVER}\" mode=\"{mode}\"");

    for (flags, mode, code) in [
        (&[][..], "ControllerListVolumeHealth", 0),
        (
            &["--volume-health-api=health"],
            "ControllerListVolumeHealth",
            0,
        ),
        (&["--volume-health-api=condition"], "ListVolumes", 1),
    ] {
        let r = check_once(&env, flags);
        assert_eq!(r.code, code, "{flags:?}: {r}");
        assert!(r.summary().ends_with(&format!("mode {mode}")), "{r}");
        assert!(r.stderr.contains(&mode_line(mode)), "{r}");
        // The daemon, given the same flags, says the same.
        let daemon = env.spawn(flags);
        assert!(
            daemon.stderr.wait_for(&mode_line(mode), WAIT),
            "{}",
            daemon.stderr.text()
        );
    }
}

#[test]
fn a_failing_driver_is_an_error_not_a_recovery() {
    let env = Env::new();
    env.volume("v1");
    env.driver.set_volume("v1", false, "");
    env.driver
        .fail_next(LIST_VOLUMES, RpcStatusCode::UNAVAILABLE, 1);
    let r = check_once(&env, &[]);
    assert_eq!(r.code, 1, "{r}");
    assert_eq!(
        r.stdout,
        format!(
            "ListVolumes failed: failed to list volumes: /csi.v1.Controller/ListVolumes: rpc error: code = Unavailable desc = injected failure of ListVolumes\n\
             summary: 0 volumes, 0 healthy, 0 abnormal, 0 not found, 0 errors, listing failed; driver {DRIVER}, mode ListVolumes\n"
        ),
        "{r}"
    );
    env.driver
        .fail_next(LIST_VOLUMES, RpcStatusCode::UNAVAILABLE, 1);
    let j = check_once(&env, &["-o=json"]);
    assert_eq!(j.code, 1, "{j}");
    let j = j.json();
    assert!(
        j["listing_error"]
            .as_str()
            .is_some_and(|e| e.contains("code = Unavailable")),
        "{j}"
    );
    assert_eq!(j["volumes"], serde_json::json!([]));
    // The driver answers again: healthy, exit 0.
    assert_eq!(check_once(&env, &[]).code, 0);
    assert_read_only(&env);
}

#[test]
fn a_driver_without_the_capabilities_gets_the_daemons_message() {
    use healthmon::csi::Unsupported;
    let env = Env::new();
    // (controller service, VOLUME_CONDITION): a v1.12 driver that lacks one of them.
    for ((controller, condition), message) in [
        ((true, false), Unsupported::Neither.to_string()),
        ((false, true), Unsupported::NoControllerService.to_string()),
    ] {
        env.driver.with(|s| {
            s.controller_service = controller;
            s.volume_condition = condition;
        });
        let r = check_once(&env, &[]);
        assert_eq!(r.code, 1, "{r}");
        assert!(r.stderr.contains(&message), "{message}\n{r}");
        assert_eq!(r.stdout, "", "{r}");
        let j = check_once(&env, &["-o", "json"]);
        assert_eq!(j.code, 1, "{j}");
        assert_eq!(j.json(), serde_json::json!({ "error": message }));
        let mut daemon = env.spawn(&[]);
        let log = daemon.exit_1_log(WAIT);
        assert!(log.contains(&message), "{log}");
    }
    assert_read_only(&env);
}

#[test]
fn without_an_api_server_the_listing_is_shown_alone() {
    let env = Env::new();
    env.volume("v1");
    env.driver.set_volume("v1", true, "disk on fire");
    let r = run_with(&env, None, &[]);
    assert_eq!(r.code, 1, "{r}");
    assert_eq!(r.line("v1"), "v1  pv=-  pvc=-  abnormal: disk on fire");
    assert!(
        r.summary()
            .ends_with("mode ListVolumes; PV and PVC names unknown (no API server)"),
        "{r}"
    );
    assert!(env.api.requests().is_empty());
    env.driver.set_volume("v1", false, "");
    assert_eq!(run_with(&env, None, &[]).code, 0);

    // A kubeconfig whose server does not answer: the same, with a warning.
    let dead = env.dir.join("dead-kubeconfig");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        &dead,
        env.api
            .kubeconfig_yaml()
            .replace(&env.api.port().to_string(), &port.to_string()),
    )
    .unwrap();
    let r = run_with(&env, Some(&dead), &[]);
    assert_eq!(r.code, 0, "{r}");
    assert!(r.line("v1").contains("pv=-"), "{r}");
    assert!(
        r.stderr
            .contains("Volumes are shown without their PV and PVC names"),
        "{r}"
    );
    // A kubeconfig that is not there is an error, as for the daemon.
    let r = run_with(&env, Some(&env.dir.join("missing")), &[]);
    assert_eq!(r.code, 1, "{r}");
    assert!(
        r.stderr.contains("Failed to build a Kubernetes config"),
        "{r}"
    );
    assert!(env.api.requests().is_empty());
}

#[test]
fn usage_errors_exit_2() {
    let env = Env::get_mode();
    env.volume("v1");
    env.driver.set_volume("v1", false, "");
    for (args, says) in [
        (&["-o", "yaml"][..], "unsupported output format \"yaml\""),
        (&["extra"], "unexpected argument \"extra\""),
        (&["--output"], "flag needs an argument: -output"),
    ] {
        let r = check_once(&env, args);
        assert_eq!(r.code, 2, "{args:?}: {r}");
        assert!(r.stderr.contains(says), "{args:?}: {r}");
        assert!(r.stderr.contains("Usage of "), "{r}");
        assert_eq!(r.stdout, "");
    }
    // A report format without the report.
    let (code, _, stderr) = crate::support::run_binary(&["-o", "json"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("flag -output is only used with -check-once"),
        "{stderr}"
    );
    // The per-volume modes need the PVs: without an API server that is a missing flag.
    let r = run_with(&env, None, &[]);
    assert_eq!(r.code, 2, "{r}");
    assert!(
        r.stderr
            .contains("--check-once in ControllerGetVolume mode asks the driver about each PersistentVolume of this driver, which needs the API server: pass --kubeconfig"),
        "{r}"
    );
    assert_eq!(env.driver.call_count(GET_VOLUME), 0);
    // With it, all is well.
    let r = check_once(&env, &[]);
    assert_eq!(r.code, 0, "{r}");
    assert_read_only(&env);
}
