//! A stuck exec credential plugin (issue #25), through the real binary: the plugin is a shell
//! script whose behaviour a file switches. At first it prints an `ExecCredential` valid for two
//! seconds; once the file `hang` exists it starts a background process that holds its stdout
//! and never exits. The Lease renewal's deadline covers getting the credential, so a leader
//! whose plugin hangs gives up leading before a peer can take over, logs it and exits 1; and
//! SIGTERM stops a process whose plugin hangs as fast as any other, killing the plugin.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::kit::csidriver::temp_dir;
use crate::leader::{lease_writes, spawn_replica, spawn_replica_as, Replica};
use crate::support::{poll, Env};

const WAIT: Duration = Duration::from_secs(30);

/// The switchable plugin in `dir`: prints a credential for `token` expiring two seconds later,
/// or, once `dir/hang` exists, hangs with a grandchild holding its stdout (pids written to
/// `dir/plugin.pid` and `dir/grandchild.pid`).
fn write_plugin(dir: &Path) -> PathBuf {
    let plugin = dir.join("plugin.sh");
    let script = format!(
        r#"#!/bin/sh
D={dir}
if [ -e "$D/hang" ]; then
  echo $$ > "$D/plugin.pid"
  sleep 600 &
  echo $! > "$D/grandchild.pid"
  wait
fi
exp=$(date -u -d "@$(( $(date +%s) + 2 ))" +%Y-%m-%dT%H:%M:%SZ)
printf '{{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","status":{{"token":"%s","expirationTimestamp":"%s"}}}}\n' "$TOKEN" "$exp"
"#,
        dir = dir.display()
    );
    std::fs::write(&plugin, script).unwrap();
    std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).unwrap();
    plugin
}

/// The kubeconfig `user:` body running `plugin` with `TOKEN=token`.
fn exec_user(plugin: &Path, token: &str) -> String {
    format!(
        "    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: {}\n      env:\n      - name: TOKEN\n        value: {token}\n      interactiveMode: Never\n",
        plugin.display()
    )
}

/// A pid the plugin wrote to `dir/name`, once the line is complete.
fn pid_file(dir: &Path, name: &str) -> Option<u32> {
    std::fs::read_to_string(dir.join(name))
        .ok()
        .filter(|s| s.ends_with('\n'))
        .and_then(|s| s.trim().parse().ok())
}

/// Not running: gone, or a zombie nobody reaps.
fn dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
    }
}

fn wait_until(within: Duration, cond: impl Fn() -> bool) -> bool {
    poll(within, || cond().then_some(())).is_some()
}

/// The plugin's hung processes, once it has started hanging.
fn hung_pids(dir: &Path) -> [u32; 2] {
    assert!(
        wait_until(WAIT, || pid_file(dir, "grandchild.pid").is_some()),
        "the plugin never ran in its hanging mode"
    );
    [
        pid_file(dir, "plugin.pid").unwrap(),
        pid_file(dir, "grandchild.pid").unwrap(),
    ]
}

fn logs(replicas: &[&Replica]) -> String {
    replicas
        .iter()
        .map(|r| format!("==== {}\n{}", r.name, r.sidecar.stderr.text()))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn a_leader_whose_credential_plugin_hangs_stops_leading_before_a_peer_takes_over() {
    let env = Env::new();
    env.volume("v1");
    env.driver.set_volume("v1", true, "disk on fire");
    let dir = temp_dir("hung-plugin");
    let plugin = write_plugin(&dir);
    // A lease well beyond retry period + renew deadline, so the margin between A giving up
    // (at most 2.5 s after its last renewal) and B taking over (4 s after it saw that renewal)
    // survives a loaded machine.
    let timing = [
        "--leader-election-lease-duration=4s",
        "--leader-election-renew-deadline=2s",
        "--leader-election-retry-period=500ms",
        "--list-volumes-interval=300ms",
    ];
    let mut a = spawn_replica_as(&env, "rep-a", &exec_user(&plugin, "rep-a"), &timing);
    let a_writes = |n: usize| {
        move |api: &crate::kit::apiserver::FakeApiServer| {
            lease_writes(api)
                .iter()
                .filter(|w| w.holder == "rep-a")
                .count()
                >= n
        }
    };
    // A leads and renews through several credential expiries (one plugin run every 2 s).
    assert!(env.api.wait_until(WAIT, a_writes(6)), "{}", logs(&[&a]));
    let b = spawn_replica(&env, "rep-b", &timing);
    assert!(
        env.api.wait_until(WAIT, |api| api
            .requests()
            .iter()
            .any(|r| b.sent(r) && r.path.contains("/leases/"))),
        "{}",
        logs(&[&a, &b])
    );

    std::fs::write(dir.join("hang"), "").unwrap();
    let status = a.sidecar.wait_exit(WAIT);
    let a_gone = Instant::now();
    assert_eq!(status.code(), Some(1), "{}", logs(&[&a, &b]));
    let text = a.sidecar.stderr.text();
    assert!(text.contains("Failed to renew lease"), "{text}");
    assert!(text.contains("Stopped leading"), "{text}");
    assert!(
        text.contains("has not answered within the request's deadline"),
        "the lost renewal should say why: {text}"
    );
    let [p, g] = hung_pids(&dir);

    assert!(
        env.api.wait_until(WAIT, |api| lease_writes(api)
            .iter()
            .any(|w| w.holder == "rep-b")),
        "{}",
        logs(&[&a, &b])
    );
    let writes = lease_writes(&env.api);
    let takeover = writes.iter().find(|w| w.holder == "rep-b").unwrap();
    // A was gone (so it wrote nothing more) before B took over.
    assert!(
        takeover.at > a_gone,
        "B took over {:?} before A exited",
        a_gone.duration_since(takeover.at)
    );
    assert_eq!(takeover.transitions, 1);
    // The plugin and the process holding its output were killed, not left behind.
    assert!(
        wait_until(Duration::from_secs(5), || dead(p) && dead(g)),
        "plugin {p} or its child {g} still runs"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn sigterm_stops_a_process_whose_credential_plugin_hangs() {
    let env = Env::new();
    env.volume("v1");
    env.driver.set_volume("v1", true, "disk on fire");
    let dir = temp_dir("hung-plugin-term");
    let plugin = write_plugin(&dir);
    // A renew deadline long enough that losing the lease cannot end the process first.
    let timing = [
        "--leader-election-lease-duration=30s",
        "--leader-election-renew-deadline=20s",
        "--leader-election-retry-period=500ms",
        "--list-volumes-interval=300ms",
    ];
    let mut a = spawn_replica_as(&env, "rep-a", &exec_user(&plugin, "rep-a"), &timing);
    assert!(
        env.wait_event("pvc-v1", "VolumeConditionAbnormal", WAIT),
        "{}",
        logs(&[&a])
    );
    std::fs::write(dir.join("hang"), "").unwrap();
    let [p, g] = hung_pids(&dir);

    a.sidecar.terminate();
    // The shutdown path's own waits end at once; five seconds is what a process manager
    // would wait before it gives up on a graceful stop.
    let status = a.sidecar.wait_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(0), "{}", logs(&[&a]));
    let text = a.sidecar.stderr.text();
    assert!(text.contains("Received SIGTERM"), "{text}");
    assert!(
        wait_until(Duration::from_secs(5), || dead(p) && dead(g)),
        "plugin {p} or its child {g} still runs"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// The same during start-up: the first credential is fetched while the client is built,
/// before the event loop reads signals; SIGTERM still ends the plugin and the process.
#[test]
fn sigterm_during_start_up_stops_a_process_whose_credential_plugin_hangs() {
    let env = Env::new();
    let dir = temp_dir("hung-plugin-start");
    let plugin = write_plugin(&dir);
    std::fs::write(dir.join("hang"), "").unwrap();
    let mut a = spawn_replica_as(&env, "rep-a", &exec_user(&plugin, "rep-a"), &[]);
    let [p, g] = hung_pids(&dir);
    a.sidecar.terminate();
    let status = a.sidecar.wait_exit(Duration::from_secs(5));
    let text = a.sidecar.stderr.text();
    assert_eq!(status.code(), Some(0), "{text}");
    assert!(
        text.contains("Received SIGTERM or SIGINT signal during start-up"),
        "{text}"
    );
    assert!(
        wait_until(Duration::from_secs(5), || dead(p) && dead(g)),
        "plugin {p} or its child {g} still runs"
    );
    let sent: Vec<String> = env
        .api
        .requests()
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert!(
        sent.is_empty(),
        "nothing is sent without a credential: {sent:?}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
