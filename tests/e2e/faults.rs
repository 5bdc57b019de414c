//! The Kubernetes client and watch caches under API server trouble (issue 3), end to end: the
//! real binary against the full fake API server. Paging over many pages, a closed watch resumed
//! from the last resourceVersion without a relist, 410 Gone on a watch and on a continue token
//! leading to a relist that reflects what changed meanwhile, bookmarks moving the resume point,
//! injected faults on lists and watches (each followed by proof that monitoring still works),
//! and the `--kube-api-qps`/`--kube-api-burst` limiter seen from the server's request log.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::kit::apiserver::{FakeApiServer, Fault, FaultRule, Options, RequestRecord};
use crate::kit::csidriver::{GET_VOLUME, LIST_VOLUMES};
use crate::kit::fixtures;
use crate::support::{poll, Env, Sidecar};

const WAIT: Duration = Duration::from_secs(30);
const FAST: &str = "--list-volumes-interval=300ms";
const PVS: &str = "/api/v1/persistentvolumes";
const PVCS: &str = "/api/v1/persistentvolumeclaims";
/// Matches watches of PVs only (not of PVCs, whose path continues with "claims").
const PV_WATCH: &str = "persistentvolumes?watch=true";

/// A volume the driver knows (first, so it is never reported missing) with a PV and PVC.
fn volume(env: &Env, id: &str, abnormal: bool) -> serde_json::Value {
    env.driver
        .set_volume(id, abnormal, if abnormal { "volume is broken" } else { "" });
    env.volume(id).0
}

fn param(r: &RequestRecord, key: &str) -> Option<String> {
    r.query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.to_string())
    })
}

/// GET requests on a collection: its LISTs (`watch == false`) or its watches.
fn gets(api: &FakeApiServer, path: &str, watch: bool) -> Vec<RequestRecord> {
    api.requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path == path && r.is_watch() == watch)
        .collect()
}

fn wait_gets(api: &FakeApiServer, path: &str, watch: bool, n: usize) -> bool {
    api.wait_until(WAIT, |a| gets(a, path, watch).len() >= n)
}

/// The LISTs of `path` once the sidecar has sent at least `n`.
fn lists_of(api: &FakeApiServer, path: &str, n: usize) -> Vec<RequestRecord> {
    wait_gets(api, path, false, n);
    gets(api, path, false)
}

/// Both caches synced and watching, and at least one sweep done: the steady state.
fn wait_steady(env: &Env, sidecar: &Sidecar) {
    assert!(
        wait_gets(&env.api, PVS, true, 1) && wait_gets(&env.api, PVCS, true, 1),
        "{}",
        sidecar.stderr.text()
    );
    let checked = |s: &crate::kit::csidriver::State| {
        s.calls
            .iter()
            .any(|c| (c.method == LIST_VOLUMES || c.method == GET_VOLUME) && c.finished.is_some())
    };
    assert!(
        env.driver.wait_until(WAIT, checked),
        "{}",
        sidecar.stderr.text()
    );
}

fn assert_alive(sidecar: &mut Sidecar) {
    assert!(
        sidecar.still_running_after(Duration::from_millis(100)),
        "{}",
        sidecar.stderr.text()
    );
    assert!(
        !sidecar.stderr.text().contains("panicked"),
        "{}",
        sidecar.stderr.text()
    );
}

fn assert_event(env: &Env, sidecar: &Sidecar, id: &str) {
    assert!(
        env.wait_event(&format!("pvc-{id}"), "VolumeConditionAbnormal", WAIT),
        "no event for {id}; requests {:#?}\n{}",
        summary(&env.api),
        sidecar.stderr.text()
    );
}

/// The request log in short, for failure messages.
fn summary(api: &FakeApiServer) -> Vec<String> {
    api.requests()
        .iter()
        .map(|r| format!("{} {} {}?{}", r.status, r.method, r.path, r.query))
        .collect()
}

/// Where `--http-endpoint=127.0.0.1:0` ended up listening.
fn metrics_addr(sidecar: &Sidecar) -> String {
    assert!(
        sidecar.stderr.wait_for("ServeMux listening", WAIT),
        "{}",
        sidecar.stderr.text()
    );
    let text = sidecar.stderr.text();
    let line = text
        .lines()
        .find(|l| l.contains("ServeMux listening"))
        .unwrap();
    let rest = &line[line.find("address=\"").expect("address in log line") + 9..];
    rest[..rest.find('"').unwrap()].to_string()
}

/// `persistentvolume` → `status` of every `csi_volume_health_status` series at 1.
fn volume_series(addr: &str) -> BTreeMap<String, String> {
    let mut s = std::net::TcpStream::connect(addr).expect("connect to metrics");
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let label = |line: &str, name: &str| -> String {
        let start = line.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
        line[start..start + line[start..].find('"').unwrap()].to_string()
    };
    text.lines()
        .filter(|l| l.starts_with("csi_volume_health_status{") && l.ends_with(" 1"))
        .map(|l| (label(l, "persistentvolume"), label(l, "status")))
        .collect()
}

fn wait_series(addr: &str, pred: impl Fn(&BTreeMap<String, String>) -> bool) -> bool {
    poll(WAIT, || pred(&volume_series(addr)).then_some(())).is_some()
}

// ---------------------------------------------------------------------------------------------
// Paging

#[test]
fn many_pages_are_listed_with_limit_and_continue_and_every_volume_is_monitored() {
    let env = Env::new();
    let ids: Vec<String> = (0..1200).map(|i| format!("p{i:04}")).collect();
    // One abnormal volume on each of the three pages of 500.
    let abnormal = ["p0000", "p0700", "p1199"];
    for id in &ids {
        volume(&env, id, abnormal.contains(&id.as_str()));
    }
    // Nothing changes until the sidecar writes events, after both caches synced.
    let listed_at = env.api.resource_version().to_string();
    let sidecar = env.spawn(&["--list-volumes-interval=1s", "--http-endpoint=127.0.0.1:0"]);
    for id in abnormal {
        assert_event(&env, &sidecar, id);
    }
    let addr = metrics_addr(&sidecar);
    assert!(
        wait_series(&addr, |s| s.len() == 1200),
        "{} volumes have a health series",
        volume_series(&addr).len()
    );
    let series = volume_series(&addr);
    assert!(ids
        .iter()
        .all(|id| series.contains_key(&format!("pv-{id}"))));
    assert_eq!(
        series.values().filter(|s| *s == "abnormal").count(),
        3,
        "{series:?}"
    );

    for path in [PVS, PVCS] {
        let lists = lists_of(&env.api, path, 3);
        assert_eq!(lists.len(), 3, "{path}: {:#?}", summary(&env.api));
        assert!(lists
            .iter()
            .all(|r| r.status == 200 && param(r, "limit").as_deref() == Some("500")));
        assert_eq!(param(&lists[0], "continue"), None);
        assert!(param(&lists[1], "continue").is_some_and(|c| !c.is_empty()));
        assert!(param(&lists[2], "continue").is_some_and(|c| !c.is_empty()));
        assert_ne!(param(&lists[1], "continue"), param(&lists[2], "continue"));
        // The watch starts after the last page, from the list's resourceVersion.
        let watch = &gets(&env.api, path, true)[0];
        assert!(watch.at >= lists[2].at);
        assert_eq!(param(watch, "resourceVersion"), Some(listed_at.clone()));
    }
}

// ---------------------------------------------------------------------------------------------
// Watch endings

#[test]
fn closed_watch_resumes_from_the_last_resource_version_without_relisting() {
    let env = Env::new();
    volume(&env, "a", false);
    let sidecar = env.spawn(&[FAST]);
    wait_steady(&env, &sidecar);
    // Delivered by the first watch: the resume point moves past the list.
    let pv_b = volume(&env, "b", true);
    assert_event(&env, &sidecar, "b");
    let first = gets(&env.api, PVS, true)[0].clone();

    env.api.close_watches();
    assert!(wait_gets(&env.api, PVS, true, 2) && wait_gets(&env.api, PVCS, true, 2));
    let second = &gets(&env.api, PVS, true)[1];
    assert_eq!(
        param(second, "resourceVersion").as_deref(),
        pv_b["metadata"]["resourceVersion"].as_str(),
        "{:#?}",
        summary(&env.api)
    );
    assert_ne!(
        param(&first, "resourceVersion"),
        param(second, "resourceVersion")
    );

    // The new watches work, and neither cache was listed again.
    volume(&env, "c", true);
    assert_event(&env, &sidecar, "c");
    assert_eq!(
        gets(&env.api, PVS, false).len(),
        1,
        "{:#?}",
        summary(&env.api)
    );
    assert_eq!(
        gets(&env.api, PVCS, false).len(),
        1,
        "{:#?}",
        summary(&env.api)
    );
}

/// The PV watch is down while a PV is deleted and another created, and the history is
/// compacted: the resumed watch gets 410, the relist drops the deleted PV (no more checks, no
/// metric series, no event) and picks up the new one.
fn watch_expired_during_an_outage(get_mode: bool) {
    let env = Env::new();
    let mut flags = vec!["--http-endpoint=127.0.0.1:0"];
    let method = if get_mode {
        env.driver.with(|s| s.list_volumes = false);
        flags.extend([
            "--monitor-interval=300ms",
            "--volume-list-add-interval=300ms",
        ]);
        GET_VOLUME
    } else {
        flags.push(FAST);
        LIST_VOLUMES
    };
    volume(&env, "kept", false);
    volume(&env, "gone", false);
    let sidecar = env.spawn(&flags);
    wait_steady(&env, &sidecar);
    let addr = metrics_addr(&sidecar);
    assert!(wait_series(&addr, |s| s.contains_key("pv-gone")));

    // The PV watch goes down and stays down while the cluster changes and compacts.
    env.api
        .inject(FaultRule::new(Fault::Status(500)).path(PV_WATCH));
    env.api.close_watches();
    assert!(env
        .api
        .wait_until(WAIT, |a| gets(a, PVS, true).iter().any(|r| r.status == 500)));
    assert!(env.api.delete("persistentvolumes", None, "pv-gone"));
    volume(&env, "new", true);
    env.api.compact();
    env.api.clear_faults();

    assert_event(&env, &sidecar, "new");
    let recovered = Instant::now();
    assert!(
        wait_series(&addr, |s| !s.contains_key("pv-gone")),
        "the deleted PV is still monitored: {:?}",
        volume_series(&addr)
    );
    let lists = lists_of(&env.api, PVS, 2);
    assert_eq!(lists.len(), 2, "one relist: {:#?}", summary(&env.api));
    let last_failed = gets(&env.api, PVS, true)
        .into_iter()
        .rfind(|r| r.status == 500)
        .unwrap();
    assert!(lists[1].at > last_failed.at);

    // Its volume turning abnormal now goes unreported; the surviving one is reported.
    env.driver.set_volume("gone", true, "volume is broken");
    env.driver.set_volume("kept", true, "volume is broken");
    assert_event(&env, &sidecar, "kept");
    let checks = env.driver.call_count(method);
    assert!(env.wait_calls(method, checks + 4, WAIT));
    assert!(env.events("pvc-gone", "VolumeConditionAbnormal").is_empty());
    if get_mode {
        let late: Vec<_> = env
            .driver
            .calls(GET_VOLUME)
            .into_iter()
            .filter(|c| c.arg == "gone" && c.started > recovered)
            .collect();
        assert!(
            late.is_empty(),
            "the deleted PV's volume is still checked: {late:?}"
        );
    }
}

#[test]
fn watch_expired_during_an_outage_relists_and_reflects_the_gap() {
    watch_expired_during_an_outage(false);
}

#[test]
fn watch_expired_during_an_outage_relists_and_reflects_the_gap_get_mode() {
    watch_expired_during_an_outage(true);
}

#[test]
fn expired_continue_token_restarts_the_list_and_drops_what_was_deleted() {
    let env = Env::new();
    // "a-*" sort before "bulk-*": page one of two.
    volume(&env, "a-gone", true);
    volume(&env, "a-kept", true);
    for i in 0..520 {
        volume(&env, &format!("bulk-{i:03}"), false);
    }
    // Time to change the cluster between the first and the second page.
    env.api.inject(
        FaultRule::new(Fault::Delay(Duration::from_secs(3)))
            .path("persistentvolumes?limit=500&continue=")
            .times(1),
    );
    let sidecar = env.spawn(&[FAST]);
    assert!(
        wait_gets(&env.api, PVS, false, 1),
        "{}",
        sidecar.stderr.text()
    );
    assert!(env.api.delete("persistentvolumes", None, "pv-a-gone"));
    volume(&env, "a-new", true);
    env.api.compact();

    assert_event(&env, &sidecar, "a-kept");
    assert_event(&env, &sidecar, "a-new");
    let lists: Vec<(u16, bool)> = lists_of(&env.api, PVS, 4)
        .iter()
        .map(|r| (r.status, param(r, "continue").is_some()))
        .collect();
    assert_eq!(
        lists,
        vec![(200, false), (410, true), (200, false), (200, true)],
        "{:#?}",
        summary(&env.api)
    );
    let sweeps = env.driver.call_count(LIST_VOLUMES);
    assert!(env.wait_calls(LIST_VOLUMES, sweeps + 2, WAIT));
    assert!(
        env.events("pvc-a-gone", "VolumeConditionAbnormal")
            .is_empty(),
        "a page of the expired list leaked into the cache"
    );
}

#[test]
fn bookmarks_move_the_resume_point() {
    let env = Env::with_api(
        FakeApiServer::start_with(Options {
            bookmark_interval: Some(Duration::from_millis(200)),
            ..Options::default()
        })
        .expect("start fake api server"),
        None,
    );
    volume(&env, "a", false);
    let sidecar = env.spawn(&[FAST]);
    wait_steady(&env, &sidecar);
    // Changes the PV watch never sees: only a bookmark can tell it the version moved on.
    fixtures::namespace(&env.api, "elsewhere");
    let moved = env.api.resource_version();
    assert!(env
        .api
        .wait_until(WAIT, |a| a.last_bookmark("persistentvolumes")
            >= Some(moved)));
    env.api.close_watches();
    assert!(
        wait_gets(&env.api, PVS, true, 2),
        "{}",
        sidecar.stderr.text()
    );
    let watches = gets(&env.api, PVS, true);
    let rv = |r: &RequestRecord| {
        param(r, "resourceVersion")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap()
    };
    assert!(rv(&watches[0]) < moved);
    assert!(
        rv(&watches[1]) >= moved,
        "re-watch from {} ignores the bookmark at {moved}",
        rv(&watches[1])
    );
    assert_eq!(gets(&env.api, PVS, false).len(), 1);
    volume(&env, "late", true);
    assert_event(&env, &sidecar, "late");
}

// ---------------------------------------------------------------------------------------------
// Injected faults: each is logged, retried and survived, and monitoring goes on.

/// The PV watch hits `fault` once when it is re-established; a PV created meanwhile must still
/// be reported. `relist`: the fault must cause a full LIST (410), not a plain re-watch.
fn watch_fault(fault: Fault, relist: bool, logged: &str) -> Env {
    let env = Env::new();
    volume(&env, "a", false);
    let mut sidecar = env.spawn(&[FAST]);
    wait_steady(&env, &sidecar);
    env.api
        .inject(FaultRule::new(fault.clone()).path(PV_WATCH).times(1));
    env.api.close_watches();
    volume(&env, "late", true);

    assert_event(&env, &sidecar, "late");
    let watches = gets(&env.api, PVS, true);
    // A slow answer is still an answer: no retry follows it.
    let retried = !matches!(fault, Fault::Delay(_));
    assert!(
        watches.len() >= if retried { 3 } else { 2 },
        "{:#?}",
        summary(&env.api)
    );
    let want = match fault {
        Fault::Status(c) => c,
        Fault::DropConnection => 0,
        _ => 200,
    };
    assert_eq!(watches[1].status, want, "{:#?}", summary(&env.api));
    assert_eq!(
        lists_of(&env.api, PVS, if relist { 2 } else { 1 }).len(),
        if relist { 2 } else { 1 },
        "{:#?}",
        summary(&env.api)
    );
    if retried && !relist {
        // Resumed where the first watch stopped, after a backoff (and Retry-After: 1 on 429).
        assert_eq!(
            param(&watches[2], "resourceVersion"),
            param(&watches[1], "resourceVersion")
        );
        assert_retry_gap(&fault, &watches[1], &watches[2]);
    }
    if !logged.is_empty() {
        assert!(
            sidecar.stderr.wait_for(logged, WAIT),
            "{logged:?} not logged:\n{}",
            sidecar.stderr.text()
        );
    }
    assert_alive(&mut sidecar);
    drop(sidecar);
    env
}

#[test]
fn watch_fault_500() {
    watch_fault(Fault::Status(500), false, "reflector-pv: watch failed");
}

#[test]
fn watch_fault_429_retry_after() {
    // Waited out inside the client, as client-go does: nothing for the reflector to log.
    watch_fault(Fault::Status(429), false, "");
}

#[test]
fn watch_fault_connection_reset() {
    watch_fault(Fault::DropConnection, false, "reflector-pv: watch failed");
}

#[test]
fn watch_fault_slow_response() {
    watch_fault(Fault::Delay(Duration::from_millis(1500)), false, "");
}

#[test]
fn watch_fault_malformed_json() {
    watch_fault(
        Fault::MalformedBody,
        false,
        "reflector-pv: watch stream broke",
    );
}

#[test]
fn watch_fault_truncated_chunk() {
    watch_fault(
        Fault::TruncatedWatch,
        false,
        "reflector-pv: watch stream broke",
    );
}

#[test]
fn watch_fault_410_gone() {
    watch_fault(Fault::Status(410), true, "too old, relisting");
}

#[test]
fn watch_fault_410_error_event() {
    watch_fault(Fault::WatchError(410), true, "watch expired");
}

#[test]
fn watch_fault_500_error_event_relists_after_a_backoff() {
    let env = watch_fault(
        Fault::WatchError(500),
        true,
        "reflector-pv: watch error event 500",
    );
    let failed = gets(&env.api, PVS, true)[1].clone();
    let relist = gets(&env.api, PVS, false)[1].clone();
    assert_retry_gap(&Fault::WatchError(500), &failed, &relist);
}

/// A failed request is retried after the first backoff step (0.8-1 s) at the earliest, and
/// not before the server's Retry-After (1 s from the fake's 429).
fn assert_retry_gap(fault: &Fault, failed: &RequestRecord, retry: &RequestRecord) {
    let min = if *fault == Fault::Status(429) {
        Duration::from_secs(1)
    } else {
        Duration::from_millis(800)
    };
    let gap = retry.at.saturating_duration_since(failed.at);
    assert!(
        gap >= min,
        "retried after {gap:?} (at least {min:?} expected)"
    );
}

/// The first PV LIST hits `fault`; the list is retried and the abnormal volume reported.
fn list_fault(fault: Fault, logged: &str) {
    let env = Env::new();
    volume(&env, "a", true);
    env.api.inject(
        FaultRule::new(fault.clone())
            .path("persistentvolumes?limit=")
            .times(1),
    );
    let mut sidecar = env.spawn(&[FAST]);
    assert_event(&env, &sidecar, "a");
    let lists = lists_of(&env.api, PVS, 2);
    let want = match fault {
        Fault::Status(c) => c,
        Fault::DropConnection => 0,
        _ => 200,
    };
    assert_eq!(lists.len(), 2, "{:#?}", summary(&env.api));
    assert_eq!(
        (lists[0].status, lists[1].status),
        (want, 200),
        "{:#?}",
        summary(&env.api)
    );
    assert_retry_gap(&fault, &lists[0], &lists[1]);
    if !logged.is_empty() {
        assert!(
            sidecar.stderr.wait_for(logged, WAIT),
            "{logged:?} not logged:\n{}",
            sidecar.stderr.text()
        );
    }
    // And the watch that follows keeps the cache current.
    volume(&env, "late", true);
    assert_event(&env, &sidecar, "late");
    assert_alive(&mut sidecar);
}

#[test]
fn list_fault_500() {
    list_fault(Fault::Status(500), "reflector-pv: list failed");
}

#[test]
fn list_fault_429_retry_after() {
    list_fault(Fault::Status(429), "");
}

#[test]
fn list_fault_connection_reset() {
    list_fault(Fault::DropConnection, "reflector-pv: list failed");
}

#[test]
fn list_fault_malformed_json() {
    list_fault(Fault::MalformedBody, "malformed response");
}

#[test]
fn list_fault_slow_response() {
    let env = Env::new();
    volume(&env, "a", true);
    env.api.inject(
        FaultRule::new(Fault::Delay(Duration::from_millis(1500)))
            .path("persistentvolumes?limit=")
            .times(1),
    );
    let mut sidecar = env.spawn(&[FAST]);
    assert_event(&env, &sidecar, "a");
    // Slow is not broken: one list, no retry.
    assert_eq!(lists_of(&env.api, PVS, 1).len(), 1);
    assert_alive(&mut sidecar);
}

#[test]
fn api_server_outage_is_survived() {
    let env = Env::new();
    volume(&env, "a", false);
    let mut sidecar = env.spawn(&[FAST]);
    wait_steady(&env, &sidecar);
    env.api.set_unavailable(true);
    assert!(sidecar.stderr.wait_for("reflector-pv: watch failed", WAIT));
    volume(&env, "late", true);
    env.api.set_unavailable(false);
    assert_event(&env, &sidecar, "late");
    assert_alive(&mut sidecar);
}

/// A server (or a proxy) that ends every watch at once must not get a tight re-watch loop.
#[test]
fn watches_ended_at_once_are_retried_with_backoff() {
    let env = Env::new();
    volume(&env, "a", false);
    let mut sidecar = env.spawn(&[FAST]);
    wait_steady(&env, &sidecar);
    env.api
        .inject(FaultRule::new(Fault::EmptyWatch).path(PV_WATCH));
    env.api.close_watches();
    let before = gets(&env.api, PVS, true).len();
    // Proving an absence: a fixed observation window. Backoff allows about 3 tries in 3 s
    // (0.8 s, 1.6 s, ...); without it only the client's QPS limit (5/s) would hold the loop.
    std::thread::sleep(Duration::from_secs(3));
    let tries = gets(&env.api, PVS, true).len() - before;
    assert!((1..=5).contains(&tries), "{tries} watches in 3 s");
    env.api.clear_faults();
    volume(&env, "late", true);
    assert_event(&env, &sidecar, "late");
    assert_eq!(gets(&env.api, PVS, false).len(), 1, "no relist needed");
    assert_alive(&mut sidecar);
}

#[test]
fn api_server_down_at_startup_then_back() {
    let env = Env::new();
    volume(&env, "a", true);
    env.api.set_unavailable(true);
    let mut sidecar = env.spawn(&[FAST]);
    assert!(
        sidecar.stderr.wait_for("reflector-pv: list failed", WAIT),
        "{}",
        sidecar.stderr.text()
    );
    // It keeps trying (after its backoff) instead of giving up while the API is down.
    assert!(
        sidecar
            .stderr
            .wait_for_n("reflector-pv: list failed", 2, WAIT),
        "{}",
        sidecar.stderr.text()
    );
    assert!(sidecar.still_running_after(Duration::from_millis(10)));
    env.api.set_unavailable(false);
    assert_event(&env, &sidecar, "a");
    assert_alive(&mut sidecar);
}

// ---------------------------------------------------------------------------------------------
// Client-side rate limit

#[test]
fn kube_api_qps_and_burst_bound_the_request_rate() {
    const QPS: f64 = 5.0;
    const BURST: f64 = 5.0;
    const VOLUMES: usize = 20;
    let env = Env::new();
    for i in 0..VOLUMES {
        volume(&env, &format!("r{i:02}"), true);
    }
    let sidecar = env.spawn(&[FAST, "--kube-api-qps=5", "--kube-api-burst=5"]);
    assert!(
        env.api.wait_until(WAIT, |a| a.events().len() >= VOLUMES),
        "{} of {VOLUMES} events; {}",
        env.api.events().len(),
        sidecar.stderr.text()
    );
    // Logged just after their answers: wait for the last writes to show up.
    env.api.wait_until(WAIT, |a| {
        a.requests()
            .iter()
            .filter(|r| r.method == "POST" && r.status == 201)
            .count()
            >= VOLUMES
    });
    let mut times: Vec<Instant> = env.api.requests().iter().map(|r| r.at).collect();
    times.sort();
    // Every request: lists, watches, the event seeding and the event writes.
    assert!(times.len() > VOLUMES + 4, "{:#?}", summary(&env.api));
    // A token is taken before the request is sent; its arrival may lag (more under load).
    let slack = 0.5;
    for i in 0..times.len() {
        for j in i + 1..times.len() {
            let window = times[j].saturating_duration_since(times[i]).as_secs_f64();
            let count = (j - i + 1) as f64;
            assert!(
                count <= BURST + QPS * (window + slack) + 1.0,
                "{count} requests within {window:.3}s (qps {QPS}, burst {BURST}): {:#?}",
                summary(&env.api)
            );
        }
    }
    // And, robust to any bunching on arrival: all of them took at least what the bucket allows.
    let total = times[times.len() - 1]
        .saturating_duration_since(times[0])
        .as_secs_f64();
    let least = (times.len() as f64 - BURST) / QPS;
    assert!(
        total >= least - slack,
        "{} requests in {total:.3}s",
        times.len()
    );
}

// ---------------------------------------------------------------------------------------------
// Server-side throttling of writes

/// API priority and fairness answers 429 with `Retry-After`; client-go's REST client waits and
/// sends the request again (up to 10 times), so upstream's Event still gets written.
#[test]
fn event_write_throttled_with_retry_after_is_sent_again() {
    let env = Env::new();
    env.api.inject(
        FaultRule::new(Fault::Status(429))
            .method("POST")
            .path("/events")
            .times(2),
    );
    volume(&env, "a", true);
    let mut sidecar = env.spawn(&[FAST]);
    assert_event(&env, &sidecar, "a");
    let posts_of = |a: &FakeApiServer| -> Vec<RequestRecord> {
        a.requests()
            .into_iter()
            .filter(|r| r.method == "POST" && r.path.ends_with("/events"))
            .collect()
    };
    env.api.wait_until(WAIT, |a| posts_of(a).len() >= 3);
    let posts = posts_of(&env.api);
    let codes: Vec<u16> = posts.iter().map(|r| r.status).collect();
    assert_eq!(codes, vec![429, 429, 201], "{:#?}", summary(&env.api));
    assert_retry_gap(&Fault::Status(429), &posts[0], &posts[1]);
    assert_retry_gap(&Fault::Status(429), &posts[1], &posts[2]);
    assert!(!sidecar.stderr.text().contains("will not retry"));
    assert_alive(&mut sidecar);
}
