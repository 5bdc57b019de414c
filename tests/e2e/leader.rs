//! Leader election end to end (upstream §9, DESIGN §1 and §2.6): several replicas of the real
//! binary against one fake API server. Who led when is reconstructed from the Lease writes in
//! the server's request log; which process sent a request is told by its bearer token (one
//! kubeconfig per replica). Each replica runs in its own UTS namespace with its own hostname,
//! because the identity is the kernel hostname, as Go's `os.Hostname` reads it.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::kit::apiserver::{FakeApiServer, Fault, FaultRule, RequestRecord};
use crate::kit::fixtures::sibling_binary;
use crate::support::{http_addr, http_get, Env, Sidecar, NS};

const LEASE: &str = "external-health-monitor-leader-fake-csi-driver-io";
const WAIT: Duration = Duration::from_secs(30);
/// The durations most tests run with: short, yet with room for a loaded machine (a renewal may
/// take four tries before the deadline).
const LEASE_SECS: u64 = 3;
const TIMING: &[&str] = &[
    "--leader-election-lease-duration=3s",
    "--leader-election-renew-deadline=2s",
    "--leader-election-retry-period=500ms",
];

/// One sidecar process with its own hostname (= identity) and its own bearer token.
pub struct Replica {
    pub name: String,
    pub sidecar: Sidecar,
}

impl Replica {
    fn token(&self) -> String {
        format!("Bearer {}", self.name)
    }

    /// Whether this replica sent `r`.
    pub fn sent(&self, r: &RequestRecord) -> bool {
        self.owns(&r.authorization)
    }

    fn owns(&self, authorization: &Option<String>) -> bool {
        authorization.as_deref() == Some(self.token().as_str())
    }

    fn log_has(&self, needle: &str) -> bool {
        self.sidecar.stderr.text().contains(needle)
    }
}

/// Spawns replica `name`: hostname `name`, token `name`, leader election on with `extra`.
pub fn spawn_replica(env: &Env, name: &str, extra: &[&str]) -> Replica {
    spawn_replica_as(env, name, &format!("    token: {name}\n"), extra)
}

/// Spawns replica `name` (hostname `name`) whose kubeconfig user is `user` (indented four
/// spaces), leader election on with `extra`.
pub fn spawn_replica_as(env: &Env, name: &str, user: &str, extra: &[&str]) -> Replica {
    let kubeconfig = env.dir.join(format!("kubeconfig-{name}"));
    let yaml = env.api.kubeconfig_yaml();
    assert!(
        yaml.contains("  user: {}\n"),
        "kubeconfig shape changed:\n{yaml}"
    );
    std::fs::write(
        &kubeconfig,
        yaml.replace("  user: {}\n", &format!("  user:\n{user}")),
    )
    .expect("write kubeconfig");
    let bin: PathBuf = sibling_binary("csi-external-health-monitor-controller");
    // A private UTS namespace gives the process its own kernel hostname, as each pod has.
    let child = Command::new("unshare")
        .args([
            "--uts",
            "--",
            "sh",
            "-c",
            // Straight to the kernel: hostname(1) would refuse names like `a_1`.
            "printf %s \"$1\" > /proc/sys/kernel/hostname && shift && exec \"$@\"",
        ])
        .arg("sh")
        .arg(name)
        .arg(&bin)
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .arg(format!("--csi-address={}", env.driver.socket().display()))
        .args([
            "--leader-election",
            &format!("--leader-election-namespace={NS}"),
        ])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn unshare (util-linux) for {name}: {e}"));
    Replica {
        name: name.to_string(),
        sidecar: Sidecar::adopt(child),
    }
}

fn spawn_all(env: &Env, names: &[&str], extra: &[&str]) -> Vec<Replica> {
    names.iter().map(|n| spawn_replica(env, n, extra)).collect()
}

/// One successful create or update of our Lease, as the server received it.
#[derive(Debug, Clone)]
pub struct LeaseWrite {
    pub at: Instant,
    pub method: String,
    pub holder: String,
    pub duration: Value,
    pub acquire: String,
    pub renew: String,
    pub transitions: i64,
    pub authorization: Option<String>,
}

pub fn lease_writes(api: &FakeApiServer) -> Vec<LeaseWrite> {
    api.requests()
        .into_iter()
        .filter(|r| {
            (r.method == "PUT" || r.method == "POST")
                && r.path.contains("/leases")
                && (200..300).contains(&r.status)
        })
        .filter_map(|r| {
            let spec = r.body.as_ref()?.get("spec")?.clone();
            Some(LeaseWrite {
                at: r.at,
                method: r.method.clone(),
                holder: spec["holderIdentity"].as_str().unwrap_or_default().into(),
                duration: spec["leaseDurationSeconds"].clone(),
                acquire: spec["acquireTime"].as_str().unwrap_or_default().into(),
                renew: spec["renewTime"].as_str().unwrap_or_default().into(),
                transitions: spec["leaseTransitions"].as_i64().unwrap_or(-1),
                authorization: r.authorization.clone(),
            })
        })
        .collect()
}

fn holder(api: &FakeApiServer) -> Option<String> {
    api.get("leases", Some(NS), LEASE)
        .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string))
        .filter(|h| !h.is_empty())
}

/// Waits until someone holds the Lease and returns the index of that replica.
fn wait_leader(env: &Env, replicas: &[Replica]) -> usize {
    let ok = env.api.wait_until(WAIT, |a| holder(a).is_some());
    let logs: Vec<String> = replicas.iter().map(|r| r.sidecar.stderr.text()).collect();
    assert!(ok, "nobody acquired the lease:\n{}", logs.join("\n----\n"));
    let h = holder(&env.api).unwrap_or_default();
    replicas
        .iter()
        .position(|r| r.name == h)
        .unwrap_or_else(|| panic!("unknown holder {h:?}"))
}

/// Waits until `name` has written the Lease `n` times in total. (The request log, not the
/// store: a request is logged after its answer, so the store may be ahead.)
fn wait_writes_by(env: &Env, name: &str, n: usize) -> bool {
    env.api.wait_until(WAIT, |a| {
        lease_writes(a).iter().filter(|w| w.holder == name).count() >= n
    })
}

/// Requests that only a leader makes: event writes and PV/PVC lists and watches.
fn is_controller_traffic(r: &RequestRecord) -> bool {
    r.path.contains("/events")
        || r.path.contains("/persistentvolumes")
        || r.path.contains("/persistentvolumeclaims")
}

fn is_event_write(r: &RequestRecord) -> bool {
    r.path.contains("/events")
        && matches!(r.method.as_str(), "POST" | "PATCH")
        && (200..300).contains(&r.status)
}

/// client-go's MicroTime format `2006-01-02T15:04:05.000000Z07:00` in UTC: exactly six
/// fractional digits and `Z`, i.e. unchanged by a parse and a MicroTime rendering.
fn is_micro_time(s: &str) -> bool {
    healthmon::timeutil::parse_rfc3339(s)
        .is_some_and(|t| healthmon::timeutil::rfc3339_micros(t) == s)
}

fn abnormal_volume(env: &Env, id: &str) {
    env.volume(id);
    env.driver.set_volume(id, true, "disk on fire");
}

fn all_logs(replicas: &[Replica]) -> String {
    replicas
        .iter()
        .map(|r| format!("==== {}\n{}", r.name, r.sidecar.stderr.text()))
        .collect::<Vec<_>>()
        .join("\n")
}

fn flags<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut v: Vec<&str> = TIMING.to_vec();
    v.push("--list-volumes-interval=300ms");
    v.extend_from_slice(extra);
    v
}

#[test]
fn two_and_three_replicas_exactly_one_leads() {
    for names in [&["rep-a", "rep-b"][..], &["rep-a", "rep-b", "rep-c"][..]] {
        let env = Env::new();
        abnormal_volume(&env, "v1");
        let replicas = spawn_all(
            &env,
            names,
            &flags(&["--http-endpoint=127.0.0.1:0", "-v=3"]),
        );
        let l = wait_leader(&env, &replicas);
        let leader = &replicas[l];
        assert!(
            env.wait_event("pvc-v1", "VolumeConditionAbnormal", WAIT),
            "{}",
            all_logs(&replicas)
        );
        // Several renewal rounds, during which every follower tried to acquire.
        assert!(
            wait_writes_by(&env, &leader.name, 5),
            "{}",
            all_logs(&replicas)
        );
        for r in &replicas {
            assert!(
                r.sidecar
                    .stderr
                    .wait_for("Attempting to acquire leader lease", WAIT),
                "{}",
                all_logs(&replicas)
            );
        }

        let writes = lease_writes(&env.api);
        let reqs = env.api.requests();
        for w in &writes {
            assert_eq!(w.holder, leader.name, "a second holder: {writes:#?}");
            assert!(leader.owns(&w.authorization));
        }
        assert_eq!(writes[0].method, "POST", "{writes:#?}");
        assert!(writes[1..].iter().all(|w| w.method == "PUT"));
        for (i, r) in replicas.iter().enumerate() {
            let controller = r.log_has("Starting CSI External PV Health Monitor Controller");
            let acquired = r.log_has("Successfully acquired lease");
            let traffic = reqs
                .iter()
                .filter(|q| r.sent(q) && is_controller_traffic(q))
                .count();
            let lease_reads = reqs
                .iter()
                .filter(|q| r.sent(q) && q.path.contains("/leases") && q.method == "GET")
                .count();
            if i == l {
                assert!(
                    controller && acquired && traffic > 0,
                    "{}",
                    all_logs(&replicas)
                );
            } else {
                assert!(!controller && !acquired, "{}", all_logs(&replicas));
                assert_eq!(traffic, 0, "follower {} sent controller traffic", r.name);
                assert!(
                    lease_reads >= 2,
                    "follower {} does not poll the lease",
                    r.name
                );
                // Upstream's V(3) line names the leader.
                assert!(
                    r.log_has(&format!("New leader detected leader=\"{}\"", leader.name)),
                    "{}",
                    all_logs(&replicas)
                );
            }
            // Every replica serves the leader-election health check; all are healthy, and
            // all are ready (followers stand by; a rollout must not wait for them to lead).
            let addr = http_addr(&r.sidecar.stderr);
            for path in ["/healthz/leader-election", "/readyz"] {
                assert_eq!(
                    http_get(&addr, path),
                    (200, "ok".to_string()),
                    "{} {path}",
                    r.name
                );
            }
        }
        // Every event on the PVC came from the leader.
        let event_writers: Vec<&RequestRecord> =
            reqs.iter().filter(|q| is_event_write(q)).collect();
        assert!(!event_writers.is_empty());
        assert!(event_writers.iter().all(|q| leader.sent(q)));
    }
}

#[test]
fn sigkill_of_the_leader_hands_over_only_after_the_lease_expired() {
    let env = Env::new();
    abnormal_volume(&env, "v1");
    let mut replicas = spawn_all(&env, &["rep-a", "rep-b"], &flags(&[]));
    let l = wait_leader(&env, &replicas);
    let f = 1 - l;
    let (old, new) = (replicas[l].name.clone(), replicas[f].name.clone());
    assert!(wait_writes_by(&env, &old, 3), "{}", all_logs(&replicas));
    assert!(
        env.wait_event("pvc-v1", "VolumeConditionAbnormal", WAIT),
        "{}",
        all_logs(&replicas)
    );
    replicas[l].sidecar.signal("KILL");
    let killed_at = Instant::now();
    replicas[l].sidecar.wait_exit(Duration::from_secs(10));
    assert!(wait_writes_by(&env, &new, 1), "{}", all_logs(&replicas));

    let writes = lease_writes(&env.api);
    let last_old = writes.iter().rfind(|w| w.holder == old).unwrap().clone();
    let first_new = writes.iter().find(|w| w.holder == new).unwrap().clone();
    assert!(last_old.at <= killed_at);
    let gap = first_new.at.duration_since(last_old.at);
    // The follower saw the last renewal no earlier than it was written and waits a full lease
    // duration of unchanged record after that; the slack is timer granularity only.
    assert!(
        gap + Duration::from_millis(10) >= Duration::from_secs(LEASE_SECS),
        "took over {gap:?} after the last renewal"
    );
    assert!(
        gap < Duration::from_secs(LEASE_SECS + 8),
        "took over only {gap:?} after the last renewal"
    );
    assert_eq!(first_new.method, "PUT");
    assert_eq!(first_new.transitions, last_old.transitions + 1);
    assert_ne!(first_new.acquire, last_old.acquire);
    assert_eq!(first_new.acquire, first_new.renew);

    // The new leader runs the controller; nothing it wrote to events predates its lease.
    assert!(
        replicas[f]
            .sidecar
            .stderr
            .wait_for("Starting CSI External PV Health Monitor Controller", WAIT),
        "{}",
        all_logs(&replicas)
    );
    assert!(
        env.api.wait_until(WAIT, |a| a
            .requests()
            .iter()
            .any(|q| replicas[f].sent(q) && is_event_write(q))),
        "{}",
        all_logs(&replicas)
    );
    let reqs = env.api.requests();
    for q in reqs
        .iter()
        .filter(|q| replicas[f].sent(q) && is_controller_traffic(q))
    {
        assert!(
            q.at >= first_new.at,
            "{} {} before leading",
            q.method,
            q.path
        );
    }
}

#[test]
fn sigterm_of_the_leader_releases_the_lease_and_a_peer_leads_at_once() {
    let env = Env::new();
    abnormal_volume(&env, "v1");
    // A long lease: a takeover by expiry could not happen within the bound asserted below.
    let extra = [
        "--leader-election-lease-duration=15s",
        "--leader-election-renew-deadline=2s",
        "--leader-election-retry-period=500ms",
        "--list-volumes-interval=300ms",
    ];
    let mut replicas = spawn_all(&env, &["rep-a", "rep-b"], &extra);
    let l = wait_leader(&env, &replicas);
    let f = 1 - l;
    let (old, new) = (replicas[l].name.clone(), replicas[f].name.clone());
    assert!(wait_writes_by(&env, &old, 2), "{}", all_logs(&replicas));
    assert!(
        env.wait_event("pvc-v1", "VolumeConditionAbnormal", WAIT),
        "{}",
        all_logs(&replicas)
    );
    replicas[l].sidecar.terminate();
    let status = replicas[l].sidecar.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{}", all_logs(&replicas));
    assert!(
        replicas[l].log_has("Released lease"),
        "{}",
        all_logs(&replicas)
    );
    assert!(wait_writes_by(&env, &new, 1), "{}", all_logs(&replicas));

    let writes = lease_writes(&env.api);
    let release = writes
        .iter()
        .find(|w| w.holder.is_empty())
        .unwrap_or_else(|| panic!("no release write: {writes:#?}"))
        .clone();
    let last_renew = writes.iter().rfind(|w| w.holder == old).unwrap();
    assert_eq!(release.duration, json!(1), "client-go's release record");
    assert_eq!(release.transitions, last_renew.transitions);
    assert!(replicas[l].owns(&release.authorization));
    let first_new = writes.iter().find(|w| w.holder == new).unwrap();
    assert!(first_new.at > release.at);
    let gap = first_new.at.duration_since(release.at);
    // One jittered retry period (at most 2.2 × 500 ms) plus slack for a loaded machine; far
    // below the 15 s an expiry would take.
    assert!(
        gap < Duration::from_secs(5),
        "peer took {gap:?} after the release"
    );
    assert_eq!(first_new.transitions, release.transitions + 1);

    // The leader's events: became leader, then stopped leading.
    let lease_events: Vec<Value> = env
        .api
        .events()
        .into_iter()
        .filter(|e| e["involvedObject"]["kind"] == "Lease" && e["reason"] == "LeaderElection")
        .collect();
    let messages: Vec<&str> = lease_events
        .iter()
        .filter_map(|e| e["message"].as_str())
        .collect();
    assert!(
        messages.contains(&format!("{old} became leader").as_str()),
        "{messages:?}"
    );
    assert!(
        messages.contains(&format!("{old} stopped leading").as_str()),
        "{messages:?}"
    );
    assert!(
        env.api.wait_until(WAIT, |a| a
            .events()
            .iter()
            .any(|e| e["reason"] == "LeaderElection"
                && e["message"] == format!("{new} became leader").as_str())),
        "{}",
        all_logs(&replicas)
    );
}

#[test]
fn api_server_unavailable_beyond_the_renew_deadline_exits_1() {
    let env = Env::new();
    abnormal_volume(&env, "v1");
    let mut replicas = spawn_all(&env, &["rep-a"], &flags(&[]));
    wait_leader(&env, &replicas);
    assert!(
        env.wait_event("pvc-v1", "VolumeConditionAbnormal", WAIT),
        "{}",
        all_logs(&replicas)
    );
    assert!(wait_writes_by(&env, "rep-a", 2));
    env.api.set_unavailable(true);
    let down_at = Instant::now();
    let status = replicas[0].sidecar.wait_exit(Duration::from_secs(20));
    let exited_after = down_at.elapsed();
    assert_eq!(status.code(), Some(1), "{}", all_logs(&replicas));
    // Not before the renew deadline (2 s) has passed without a renewal.
    assert!(
        exited_after >= Duration::from_millis(1950),
        "{exited_after:?}"
    );
    let text = replicas[0].sidecar.stderr.text();
    assert!(text.contains("Failed to renew lease"), "{text}");
    assert!(text.contains("Stopped leading"), "{text}");
    // That it writes nothing once leadership is lost cannot be seen here (the API is down, and
    // then the process is gone); the next test shows it with only the Lease unreachable.
}

#[test]
fn failing_lease_writes_stop_the_event_writes_before_the_lease_could_pass_on() {
    // Only the Lease is unreachable: the rest of the API still works, so this shows the monitor
    // stops writing by itself once leadership is lost, before a peer could lead.
    let env = Env::new();
    for id in ["v1", "v2", "v3"] {
        abnormal_volume(&env, id);
    }
    // A lease well beyond retry + renew deadline, so a loaded machine's scheduling delays do
    // not eat the margin client-go's algorithm has by design.
    let lease_secs = 5;
    let mut replicas = spawn_all(
        &env,
        &["rep-a"],
        &[
            "--leader-election-lease-duration=5s",
            "--leader-election-renew-deadline=2s",
            "--leader-election-retry-period=500ms",
            "--list-volumes-interval=300ms",
        ],
    );
    wait_leader(&env, &replicas);
    // Events keep flowing (each sweep repeats the abnormal condition).
    assert!(
        env.api.wait_until(WAIT, |a| a
            .requests()
            .iter()
            .filter(|q| is_event_write(q))
            .count()
            >= 6),
        "{}",
        all_logs(&replicas)
    );
    env.api
        .inject(FaultRule::new(Fault::Status(500)).path("/leases/"));
    let status = replicas[0].sidecar.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(1), "{}", all_logs(&replicas));
    let writes = lease_writes(&env.api);
    let last_ok = writes.last().unwrap().at;
    let reqs = env.api.requests();
    let event_writes: Vec<&RequestRecord> = reqs.iter().filter(|q| is_event_write(q)).collect();
    let last_event = event_writes.last().unwrap().at;
    // A peer could take over at last_ok + lease duration.
    assert!(
        last_event < last_ok + Duration::from_secs(lease_secs),
        "event written {:?} after the last renewal",
        last_event.duration_since(last_ok)
    );
    // Not vacuous: the monitor was writing events right up to the last renewal.
    assert!(
        event_writes
            .iter()
            .any(|q| q.at + Duration::from_secs(1) >= last_ok),
        "no event writes near the last renewal"
    );
}

#[test]
fn a_hanging_lease_update_loses_leadership_at_the_renew_deadline() {
    // client-go bounds each renewal's requests by the renew deadline; a lease write that hangs
    // must not keep a leader leading after a peer may have taken over.
    let env = Env::new();
    abnormal_volume(&env, "v1");
    let mut replicas = spawn_all(&env, &["rep-a"], &flags(&["--http-endpoint=127.0.0.1:0"]));
    wait_leader(&env, &replicas);
    assert!(wait_writes_by(&env, "rep-a", 2));
    env.api.inject(
        FaultRule::new(Fault::Delay(Duration::from_secs(40)))
            .method("PUT")
            .path("/leases/"),
    );
    let hung_at = Instant::now();
    let status = replicas[0].sidecar.wait_exit(Duration::from_secs(25));
    let after = hung_at.elapsed();
    assert_eq!(status.code(), Some(1), "{}", all_logs(&replicas));
    assert!(
        after < Duration::from_secs(LEASE_SECS + 5),
        "still leading {after:?} after the lease writes started hanging"
    );
    assert!(
        replicas[0].log_has("Stopped leading"),
        "{}",
        all_logs(&replicas)
    );
}

#[test]
fn lease_wire_format_labels_and_leader_event() {
    let env = Env::new();
    let mut extra = flags(&[]);
    extra.push("--leader-election-labels=team:storage,tier:gold");
    let replicas = spawn_all(&env, &["rep.a_1"], &extra);
    let sanitized = "rep-a-1";
    assert!(
        wait_writes_by(&env, sanitized, 1),
        "{}",
        all_logs(&replicas)
    );
    assert!(
        wait_writes_by(&env, sanitized, 4),
        "{}",
        all_logs(&replicas)
    );
    let lease = env.api.get("leases", Some(NS), LEASE).unwrap();
    assert_eq!(lease["apiVersion"], "coordination.k8s.io/v1");
    assert_eq!(lease["kind"], "Lease");
    assert_eq!(lease["metadata"]["namespace"], NS);
    assert_eq!(lease["metadata"]["labels"]["team"], "storage");
    assert_eq!(lease["metadata"]["labels"]["tier"], "gold");
    let spec = &lease["spec"];
    assert_eq!(spec["holderIdentity"], sanitized);
    // An integer, as Go's int32 field decodes it.
    assert!(spec["leaseDurationSeconds"].is_u64(), "{spec}");
    assert_eq!(spec["leaseDurationSeconds"], LEASE_SECS);
    assert_eq!(spec["leaseTransitions"], 0);
    for k in ["acquireTime", "renewTime"] {
        let t = spec[k].as_str().unwrap_or_default();
        assert!(is_micro_time(t), "{k}={t:?}");
    }
    // Renewals move renewTime only.
    let writes = lease_writes(&env.api);
    assert!(writes
        .iter()
        .all(|w| w.acquire == writes[0].acquire && w.transitions == 0));
    assert!(writes.windows(2).all(|p| p[0].renew <= p[1].renew));
    assert!(writes.first().unwrap().renew < writes.last().unwrap().renew);
    assert!(writes.iter().all(|w| is_micro_time(&w.renew)));

    let ev = env
        .api
        .events()
        .into_iter()
        .find(|e| e["reason"] == "LeaderElection")
        .unwrap_or_else(|| panic!("no LeaderElection event:\n{}", all_logs(&replicas)));
    assert_eq!(ev["type"], "Normal");
    assert_eq!(ev["message"], format!("{sanitized} became leader"));
    assert_eq!(ev["metadata"]["namespace"], NS);
    let io = &ev["involvedObject"];
    assert_eq!(io["kind"], "Lease");
    assert_eq!(io["apiVersion"], "coordination.k8s.io/v1");
    assert_eq!(io["name"], LEASE);
    assert_eq!(io["namespace"], NS);
    assert_eq!(io["uid"], lease["metadata"]["uid"]);
    assert_eq!(ev["source"]["component"], format!("{LEASE}/rep.a_1"));
}

#[test]
fn a_lease_held_by_another_implementation_is_respected_until_it_expires() {
    // A Go replica of a mixed rollout holds the Lease and renews it; its own duration (4 s)
    // counts, not ours (3 s).
    let env = Env::new();
    let now = || healthmon::timeutil::rfc3339_micros(std::time::SystemTime::now());
    let t0 = now();
    env.api.create(json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": LEASE, "namespace": NS},
        "spec": {"holderIdentity": "go-replica", "leaseDurationSeconds": 4,
                 "acquireTime": t0, "renewTime": t0, "leaseTransitions": 7}
    }));
    let renew = |api: &FakeApiServer| {
        let mut l = api.get("leases", Some(NS), LEASE).unwrap();
        l["spec"]["renewTime"] = json!(now());
        api.update(l);
        Instant::now()
    };
    let replicas = spawn_all(&env, &["rep-a"], &flags(&[]));
    assert!(
        replicas[0]
            .sidecar
            .stderr
            .wait_for("Attempting to acquire leader lease", WAIT),
        "{}",
        all_logs(&replicas)
    );
    // Renew for longer than both durations: the replica must keep waiting.
    let mut last = renew(&env.api);
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(500));
        last = renew(&env.api);
    }
    assert!(
        lease_writes(&env.api).is_empty(),
        "wrote a lease held by someone else"
    );
    assert!(!replicas[0].log_has("Successfully acquired lease"));
    // The Go replica dies.
    assert!(wait_writes_by(&env, "rep-a", 1), "{}", all_logs(&replicas));
    let take = lease_writes(&env.api)[0].clone();
    let gap = take.at.duration_since(last);
    assert!(
        gap + Duration::from_millis(10) >= Duration::from_secs(4),
        "{gap:?}"
    );
    assert_eq!(take.transitions, 8);
    assert_eq!(take.duration, json!(LEASE_SECS));
}

/// A Lease whose holder claims an absurd duration (issue #16): the deadline it implies used to
/// overflow `Instant` and panic the lease loop. Now the replica says once that it counts an hour
/// (`leader::MAX_LEASE_DURATION`; the hour itself is the unit test's), keeps reading the Lease
/// as held, never writes it, and stays up.
#[test]
fn a_lease_with_an_absurd_duration_is_held_and_nothing_panics() {
    let env = Env::new();
    let t0 = healthmon::timeutil::rfc3339_micros(std::time::SystemTime::now());
    env.api.create(json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": LEASE, "namespace": NS},
        "spec": {"holderIdentity": "go-replica", "leaseDurationSeconds": i64::MAX,
                 "acquireTime": t0, "renewTime": t0, "leaseTransitions": 1}
    }));
    let mut replicas = spawn_all(&env, &["rep-a"], &flags(&[]));
    let lease_reads = |api: &FakeApiServer| {
        api.requests()
            .iter()
            .filter(|r| r.method == "GET" && r.path.ends_with(&format!("/leases/{LEASE}")))
            .count()
    };
    // Several tries, one per retry period, each finding the Lease held.
    assert!(
        env.api.wait_until(WAIT, |a| lease_reads(a) >= 4),
        "{}",
        all_logs(&replicas)
    );
    assert!(
        lease_writes(&env.api).is_empty(),
        "wrote a lease held by someone else"
    );
    assert!(replicas[0]
        .sidecar
        .still_running_after(Duration::from_millis(10)));
    let text = replicas[0].sidecar.stderr.text();
    let warning = format!(
        "Lease holder claims a longer lease than is honoured, counting 3600s lease=\"{NS}/{LEASE}\" holder=\"go-replica\" leaseDurationSeconds={}",
        i64::MAX
    );
    assert_eq!(text.matches(&warning).count(), 1, "{text}");
    assert!(!text.contains("panicked"), "{text}");
}
