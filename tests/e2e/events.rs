//! Events at full fidelity (upstream §6, §7.3; DESIGN §2.4): the recorder's correlation against
//! the fake API server over real HTTP (library level, with a manual clock so the 300 s spam
//! token and the 600 s aggregation window need no waiting), the binary's repeated event as one
//! PATCHed Event object, and recovery events in both modes, across a restart too.

use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use healthmon::events::{self, EventType, ObjectRef, Recorder, RecorderOptions, RecorderThread};
use healthmon::kube;
use healthmon::shutdown::Shutdown;
use healthmon::timeutil::{rfc3339, Clock};

use crate::kit::apiserver::{FakeApiServer, Fault, FaultRule, RequestRecord};
use crate::kit::csidriver::{temp_dir, GET_VOLUME, LIST_VOLUMES};
use crate::kit::fixtures;
use crate::support::{Env, DRIVER, NS};

const WAIT: Duration = Duration::from_secs(30);
const FLUSH: Duration = Duration::from_secs(20);
const STRATEGIC: &str = "application/strategic-merge-patch+json";
const ABNORMAL: &str = "VolumeConditionAbnormal";
const NORMAL: &str = "VolumeConditionNormal";
const RECOVERED: &str = "The Volume returns to the healthy state";

fn component() -> String {
    format!("csi-pv-monitor-controller-{DRIVER}")
}

struct ManualClock(Mutex<SystemTime>);

impl ManualClock {
    fn new() -> Arc<ManualClock> {
        // A whole second, so the wire's seconds precision shows exact values.
        Arc::new(ManualClock(Mutex::new(
            UNIX_EPOCH + Duration::from_secs(1_767_323_045),
        )))
    }
    fn advance(&self, d: Duration) {
        *self.0.lock().unwrap() += d;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.0.lock().unwrap()
    }
}

/// The recorder thread writing to a fresh fake API server through the real client.
struct Lib {
    api: FakeApiServer,
    clock: Arc<ManualClock>,
    recorder: Recorder,
    thread: Option<RecorderThread>,
    shutdown: Shutdown,
    pvc: ObjectRef,
    _dir: std::path::PathBuf,
}

impl Lib {
    fn start(tune: impl FnOnce(&mut RecorderOptions)) -> Lib {
        let api = FakeApiServer::start();
        fixtures::namespace(&api, NS);
        let (_pv, pvc) =
            fixtures::bound_volume(&api, DRIVER, "pv-lib", "lib", "Bound", NS, Some("pvc-lib"));
        let pvc = pvc.unwrap();
        let dir = temp_dir("e2e-events");
        let path = dir.join("kubeconfig");
        api.write_kubeconfig(&path).unwrap();
        let cfg = kube::load_config(Some(&path)).expect("kubeconfig");
        // Unlimited client-side rate: only the correlator may shape the traffic here.
        let client = kube::Client::new(cfg, -1.0, 0, "events-e2e").expect("client");
        let clock = ManualClock::new();
        let mut opts = RecorderOptions::new(component());
        opts.clock = clock.clone();
        tune(&mut opts);
        let shutdown = Shutdown::new();
        let (recorder, thread) = events::spawn(client, opts, shutdown.clone()).unwrap();
        let s = |k: &str| pvc["metadata"][k].as_str().unwrap().to_string();
        let pvc = ObjectRef {
            kind: "PersistentVolumeClaim".into(),
            api_version: "v1".into(),
            namespace: NS.into(),
            name: s("name"),
            uid: s("uid"),
            resource_version: s("resourceVersion"),
        };
        Lib {
            api,
            clock,
            recorder,
            thread: Some(thread),
            shutdown,
            pvc,
            _dir: dir,
        }
    }

    fn warn(&self, message: &str) {
        self.recorder
            .event(&self.pvc, EventType::Warning, ABNORMAL, message);
    }

    fn flush(&self) {
        assert!(
            self.thread.as_ref().unwrap().flush(FLUSH),
            "recorder did not drain"
        );
    }

    /// Event writes seen by the server, in order (after `flush`, all of them: the server logs
    /// a request before answering it).
    fn writes(&self) -> Vec<RequestRecord> {
        self.api
            .requests()
            .into_iter()
            .filter(|r| r.path.contains("/events") && (r.method == "POST" || r.method == "PATCH"))
            .collect()
    }

    fn events(&self) -> Vec<Value> {
        self.api.events()
    }
}

impl Drop for Lib {
    fn drop(&mut self) {
        self.shutdown.trigger();
        if let Some(t) = self.thread.take() {
            t.join();
        }
    }
}

fn summary(writes: &[RequestRecord]) -> Vec<String> {
    writes
        .iter()
        .map(|r| format!("{} {} {}", r.method, r.status, r.path))
        .collect()
}

#[test]
fn identical_reports_patch_one_event_and_the_spam_filter_holds_back_the_rest() {
    let lib = Lib::start(|_| {});
    let first = rfc3339(lib.clock.now());
    for _ in 0..30 {
        lib.warn("Volume not found");
    }
    lib.flush();

    // Burst 25: one POST, 24 PATCHes; reports 26-30 are not written at all.
    let writes = lib.writes();
    assert_eq!(writes.len(), 25, "{:#?}", summary(&writes));
    assert_eq!(writes[0].method, "POST");
    assert_eq!(writes[0].path, format!("/api/v1/namespaces/{NS}/events"));
    assert_eq!(writes[0].status, 201);
    let events = lib.events();
    assert_eq!(events.len(), 1, "{events:#?}");
    let name = events[0]["metadata"]["name"].as_str().unwrap().to_string();
    for (i, w) in writes.iter().enumerate().skip(1) {
        assert_eq!(w.method, "PATCH", "{i}");
        assert_eq!(w.path, format!("/api/v1/namespaces/{NS}/events/{name}"));
        assert_eq!(w.content_type.as_deref(), Some(STRATEGIC));
        assert_eq!(w.status, 200);
        let body = w.body.as_ref().unwrap();
        let mut keys: Vec<&str> = body
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        keys.sort();
        assert_eq!(keys, ["count", "lastTimestamp", "message"], "{body}");
        assert_eq!(body["count"], i + 1);
    }
    assert_eq!(events[0]["count"], 25);

    // 299 s later there is still no token.
    lib.clock.advance(Duration::from_secs(299));
    lib.warn("Volume not found");
    lib.flush();
    assert_eq!(lib.events()[0]["count"], 25);
    // At 300 s one is back: the next report is written and its count includes the six that
    // were held back.
    lib.clock.advance(Duration::from_secs(1));
    lib.warn("Volume not found");
    lib.flush();
    let writes = lib.writes();
    assert_eq!(writes.len(), 26, "{:#?}", summary(&writes));
    let last = writes.last().unwrap();
    assert_eq!(last.method, "PATCH");
    assert_eq!(last.body.as_ref().unwrap()["count"], 32);
    let events = lib.events();
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(e["count"], 32);
    assert_eq!(e["firstTimestamp"], first.as_str());
    assert_eq!(
        e["lastTimestamp"],
        rfc3339(lib.clock.now()).as_str(),
        "{e:#}"
    );
    assert_ne!(e["firstTimestamp"], e["lastTimestamp"]);
}

#[test]
fn an_empty_driver_message_is_kept_empty() {
    // Drivers may flag a volume abnormal without a message; upstream passes it on verbatim.
    let lib = Lib::start(|_| {});
    for _ in 0..3 {
        lib.clock.advance(Duration::from_secs(1));
        lib.warn("");
    }
    lib.flush();
    let writes = lib.writes();
    // client-go's two-way merge patch leaves out a message equal to its empty base.
    for w in &writes[1..] {
        assert_eq!(w.method, "PATCH");
        assert!(
            w.body.as_ref().unwrap().get("message").is_none(),
            "{:?}",
            w.body
        );
    }
    // core/v1 Event's message is `omitempty`: absent on the wire, as client-go sends it.
    assert_eq!(writes[0].method, "POST");
    assert!(writes[0].body.as_ref().unwrap().get("message").is_none());
    let events = lib.events();
    assert_eq!(events.len(), 1);
    assert!(events[0].get("message").is_none(), "{:#}", events[0]);
    assert_eq!(events[0]["count"], 3);
}

#[test]
fn ten_distinct_messages_are_combined() {
    let lib = Lib::start(|_| {});
    for i in 0..10 {
        // Distinct times give distinct names; all well within the 600 s window.
        lib.clock.advance(Duration::from_secs(1));
        lib.warn(&format!("disk {i} is failing"));
    }
    lib.flush();
    let events = lib.events();
    assert_eq!(events.len(), 10, "{events:#?}");
    let messages: Vec<&str> = events
        .iter()
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    for (i, m) in messages.iter().take(9).enumerate() {
        assert_eq!(*m, format!("disk {i} is failing"));
    }
    let combined = &events[9];
    assert_eq!(
        combined["message"],
        "(combined from similar events): disk 9 is failing"
    );
    assert_eq!(combined["count"], 1);
    assert_eq!(combined["reason"], ABNORMAL);
    assert_eq!(combined["type"], "Warning");
    assert!(combined["metadata"]["name"]
        .as_str()
        .unwrap()
        .starts_with("pvc-lib."));

    // An eleventh distinct message PATCHes the combined event instead of creating another.
    lib.clock.advance(Duration::from_secs(1));
    lib.warn("disk 10 is failing");
    lib.flush();
    let events = lib.events();
    assert_eq!(events.len(), 10, "{events:#?}");
    assert_eq!(events[9]["metadata"]["name"], combined["metadata"]["name"]);
    assert_eq!(events[9]["count"], 2);
    assert_eq!(
        events[9]["message"],
        "(combined from similar events): disk 10 is failing"
    );
    let last = lib.writes().pop().unwrap();
    assert_eq!(last.method, "PATCH");
    assert_eq!(last.content_type.as_deref(), Some(STRATEGIC));
}

#[test]
fn messages_spread_over_more_than_600_s_are_not_combined() {
    let lib = Lib::start(|_| {});
    for i in 0..10 {
        // 601 s apart: every report starts a new aggregation record. The correlator reads
        // the clock when it takes the event (as client-go's), so let it take each one first.
        lib.clock.advance(Duration::from_secs(601));
        lib.warn(&format!("disk {i} is failing"));
        lib.flush();
    }
    let events = lib.events();
    assert_eq!(events.len(), 10);
    assert!(events
        .iter()
        .all(|e| !e["message"].as_str().unwrap().starts_with("(combined")));
}

#[test]
fn patch_of_a_deleted_event_falls_back_to_create_keeping_count_and_first_timestamp() {
    let lib = Lib::start(|_| {});
    let first = rfc3339(lib.clock.now());
    lib.warn("bad");
    lib.clock.advance(Duration::from_secs(10));
    lib.warn("bad");
    lib.flush();
    let events = lib.events();
    assert_eq!(events.len(), 1);
    let name = events[0]["metadata"]["name"].as_str().unwrap().to_string();
    assert_eq!(events[0]["count"], 2);

    // Someone (the API server's TTL, an admin) deletes the Event.
    assert!(lib.api.delete("events", Some(NS), &name));
    lib.clock.advance(Duration::from_secs(10));
    lib.warn("bad");
    lib.flush();
    let writes = lib.writes();
    assert_eq!(
        summary(&writes[2..]),
        [
            format!("PATCH 404 /api/v1/namespaces/{NS}/events/{name}"),
            format!("POST 201 /api/v1/namespaces/{NS}/events"),
        ]
    );
    let created = writes[3].body.as_ref().unwrap();
    assert_eq!(created["metadata"]["name"], name.as_str());
    assert!(
        created["metadata"].get("resourceVersion").is_none(),
        "{created}"
    );
    let events = lib.events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["count"], 3);
    assert_eq!(events[0]["firstTimestamp"], first.as_str());
    assert_eq!(
        events[0]["lastTimestamp"],
        rfc3339(lib.clock.now()).as_str()
    );

    // The re-created object is remembered: the next repeat PATCHes it.
    lib.clock.advance(Duration::from_secs(10));
    lib.warn("bad");
    lib.flush();
    let last = lib.writes().pop().unwrap();
    assert_eq!((last.method.as_str(), last.status), ("PATCH", 200));
    assert_eq!(lib.events()[0]["count"], 4);
}

#[test]
fn injected_404_on_patch_also_falls_back_to_create() {
    let lib = Lib::start(|_| {});
    lib.warn("bad");
    lib.flush();
    lib.api
        .inject(FaultRule::new(Fault::Status(404)).method("PATCH").times(1));
    lib.clock.advance(Duration::from_secs(5));
    lib.warn("bad");
    lib.flush();
    let writes = lib.writes();
    let methods: Vec<(String, u16)> = writes
        .iter()
        .map(|w| (w.method.clone(), w.status))
        .collect();
    // The object still exists, so the fallback CREATE meets 409 AlreadyExists, which client-go
    // gives up on quietly; the next repeat's PATCH succeeds and carries the full count.
    assert_eq!(
        methods,
        [
            ("POST".to_string(), 201),
            ("PATCH".to_string(), 404),
            ("POST".to_string(), 409)
        ]
    );
    lib.clock.advance(Duration::from_secs(5));
    lib.warn("bad");
    lib.flush();
    let last = lib.writes().pop().unwrap();
    assert_eq!((last.method.as_str(), last.status), ("PATCH", 200));
    assert_eq!(lib.events().len(), 1);
    assert_eq!(lib.events()[0]["count"], 3);
}

#[test]
fn events_reported_while_the_api_is_down_arrive_when_it_returns() {
    let (tx, sleeps) = crossbeam_channel::unbounded::<Duration>();
    let lib = Lib::start(move |opts| {
        opts.retry_interval = Duration::from_millis(200);
        opts.sleep = Arc::new(move |d, shutdown: &Shutdown| {
            let _ = tx.send(d);
            shutdown.wait_timeout(d)
        });
    });
    lib.api.set_unavailable(true);
    lib.warn("first");
    // Two failed tries (a sleep follows each), then a second event queues behind the first.
    for _ in 0..2 {
        sleeps
            .recv_timeout(WAIT)
            .expect("the recorder retries after a transport error");
    }
    // A later instant: events made in the same nanosecond would share a name.
    lib.clock.advance(Duration::from_secs(1));
    lib.recorder
        .event(&lib.pvc, EventType::Normal, NORMAL, RECOVERED);
    // Both are still held, neither written nor given up: the queue cannot drain while the API
    // is down.
    assert!(!lib
        .thread
        .as_ref()
        .unwrap()
        .flush(Duration::from_millis(300)));
    assert_eq!(lib.recorder.dropped(), 0);
    lib.api.set_unavailable(false);
    lib.flush();
    let events = lib.events();
    let got: Vec<(&str, &str, i64)> = events
        .iter()
        .map(|e| {
            (
                e["reason"].as_str().unwrap(),
                e["message"].as_str().unwrap(),
                e["count"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, [(ABNORMAL, "first", 1), (NORMAL, RECOVERED, 1)]);
    // Each written once: the failed tries never reached the server.
    let writes = lib.writes();
    assert_eq!(writes.len(), 2, "{:#?}", summary(&writes));
}

// ---- the binary ----------------------------------------------------------------------------

#[test]
fn repeated_abnormal_reports_are_one_patched_event() {
    let env = Env::get_mode();
    let (_pv, pvc) = env.volume("sick");
    env.driver.set_volume("sick", true, "I/O errors on sick");
    let sidecar = env.spawn(&["--monitor-interval=200ms"]);
    assert!(
        env.api.wait_until(WAIT, |a| {
            fixtures::events_for(a, "pvc-sick", ABNORMAL)
                .iter()
                .any(|e| e["count"].as_i64().unwrap_or(0) >= 3)
        }),
        "{}",
        sidecar.stderr.text()
    );
    let events = env.api.events();
    assert_eq!(events.len(), 1, "{events:#?}");
    let e = &events[0];
    assert_eq!(e["type"], "Warning");
    assert_eq!(e["reason"], ABNORMAL);
    assert_eq!(e["message"], "I/O errors on sick");
    assert_eq!(e["source"]["component"], component().as_str());
    assert_eq!(e["reportingComponent"], component().as_str());
    let io = &e["involvedObject"];
    assert_eq!(io["kind"], "PersistentVolumeClaim");
    assert_eq!(io["name"], "pvc-sick");
    assert_eq!(io["namespace"], NS);
    assert_eq!(io["uid"], pvc["metadata"]["uid"]);
    let writes: Vec<RequestRecord> = env
        .api
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("/events") && (r.method == "POST" || r.method == "PATCH"))
        .collect();
    assert_eq!(writes[0].method, "POST");
    let name = e["metadata"]["name"].as_str().unwrap();
    assert!(writes[1..].iter().all(|w| w.method == "PATCH"
        && w.path.ends_with(&format!("/events/{name}"))
        && w.content_type.as_deref() == Some(STRATEGIC)
        && w.status == 200));
}

#[test]
fn the_spam_filter_caps_a_fast_reporting_binary_at_25_writes() {
    let env = Env::get_mode();
    env.volume("sick");
    env.driver.set_volume("sick", true, "I/O errors on sick");
    // A generous client rate so the writes keep pace with the checks.
    let sidecar = env.spawn(&[
        "--monitor-interval=50ms",
        "--kube-api-qps=1000",
        "--kube-api-burst=1000",
    ]);
    let written = |a: &FakeApiServer| {
        fixtures::events_for(a, "pvc-sick", ABNORMAL)
            .first()
            .and_then(|e| e["count"].as_i64())
            .unwrap_or(0)
    };
    assert!(
        env.api.wait_until(WAIT, |a| written(a) == 25),
        "{}",
        sidecar.stderr.text()
    );
    // Ten more checks after the 25th write (writes may trail the checks): the Event still
    // says 25, the next token being 300 s
    // away.
    let seen = env.driver.call_count(GET_VOLUME);
    assert!(env.wait_calls(GET_VOLUME, seen + 10, WAIT));
    assert_eq!(written(&env.api), 25);
    let writes: Vec<String> = env
        .api
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("/events") && (r.method == "POST" || r.method == "PATCH"))
        .map(|r| {
            format!(
                "{} {} {}",
                r.method,
                r.status,
                r.body.unwrap_or_default()["count"]
            )
        })
        .collect();
    assert_eq!(writes.len(), 25, "{writes:#?}\n{}", sidecar.stderr.text());
}

// ---- recovery ------------------------------------------------------------------------------

#[derive(Clone, Copy)]
enum Mode {
    List,
    Get,
}

impl Mode {
    fn env(self) -> Env {
        match self {
            Mode::List => Env::new(),
            Mode::Get => Env::get_mode(),
        }
    }
    fn flags(self) -> &'static [&'static str] {
        match self {
            Mode::List => &["--list-volumes-interval=200ms"],
            Mode::Get => &[
                "--monitor-interval=200ms",
                "--volume-list-add-interval=200ms",
            ],
        }
    }
    fn method(self) -> &'static str {
        match self {
            Mode::List => LIST_VOLUMES,
            Mode::Get => GET_VOLUME,
        }
    }
}

/// Wait for `n` more answered calls of the mode's method: that many more checks happened.
fn more_checks(env: &Env, mode: Mode, n: usize) {
    let seen = env.driver.call_count(mode.method());
    assert!(
        env.wait_calls(mode.method(), seen + n, WAIT),
        "the sidecar stopped checking"
    );
}

fn assert_one_recovery(env: &Env, pvc: &str) {
    let normal = env.events(pvc, NORMAL);
    assert_eq!(normal.len(), 1, "{normal:#?}");
    let e = &normal[0];
    assert_eq!(e["type"], "Normal");
    assert_eq!(e["message"], RECOVERED);
    assert_eq!(e["involvedObject"]["namespace"], NS);
    assert_eq!(
        e["count"], 1,
        "recovery is reported once, not on every check"
    );
    assert_eq!(e["source"]["component"], component().as_str());
}

fn recovery_is_reported_once(mode: Mode) {
    let env = mode.env();
    env.volume("flaky");
    env.volume("steady");
    env.driver.set_volume("flaky", true, "Volume not found");
    env.driver.set_volume("steady", false, "");
    let sidecar = env.spawn(mode.flags());
    assert!(
        env.wait_event("pvc-flaky", ABNORMAL, WAIT),
        "{}",
        sidecar.stderr.text()
    );
    env.driver.set_volume("flaky", false, "");
    assert!(
        env.wait_event("pvc-flaky", NORMAL, WAIT),
        "{}",
        sidecar.stderr.text()
    );
    // Several more healthy checks of both volumes.
    more_checks(&env, mode, 6);
    assert_one_recovery(&env, "pvc-flaky");
    // normal → normal never says anything.
    let steady: Vec<Value> = env
        .api
        .events()
        .into_iter()
        .filter(|e| e["involvedObject"]["name"] == "pvc-steady")
        .collect();
    assert!(steady.is_empty(), "{steady:#?}");
    assert_eq!(env.api.events().len(), 2);

    // A second episode: sick again, then well again, is a second recovery (the same Event
    // object, now with count 2), and again only one.
    env.driver.set_volume("flaky", true, "Volume not found");
    let warned = env.events("pvc-flaky", ABNORMAL)[0]["count"].clone();
    assert!(
        env.api
            .wait_until(WAIT, |a| fixtures::events_for(a, "pvc-flaky", ABNORMAL)[0]
                ["count"]
                != warned),
        "{}",
        sidecar.stderr.text()
    );
    env.driver.set_volume("flaky", false, "");
    assert!(
        env.api
            .wait_until(WAIT, |a| fixtures::events_for(a, "pvc-flaky", NORMAL)
                .iter()
                .any(|e| e["count"] == 2)),
        "{}",
        sidecar.stderr.text()
    );
    more_checks(&env, mode, 6);
    let normal = env.events("pvc-flaky", NORMAL);
    assert_eq!(normal.len(), 1);
    assert_eq!(normal[0]["count"], 2);
}

#[test]
fn list_mode_recovery_is_reported_once() {
    recovery_is_reported_once(Mode::List);
}

#[test]
fn get_mode_recovery_is_reported_once() {
    recovery_is_reported_once(Mode::Get);
}

/// The sidecar dies while a volume is abnormal; the driver then says it is fine; a new sidecar
/// must still announce the recovery, knowing of the abnormal state only from the Event the
/// first one wrote.
fn recovery_survives_a_restart(mode: Mode, signal: &str, extra: &[&str]) {
    let env = mode.env();
    let flags: Vec<&str> = mode.flags().iter().chain(extra).copied().collect();
    env.volume("flaky");
    env.volume("steady");
    env.driver.set_volume("flaky", true, "Volume not found");
    env.driver.set_volume("steady", false, "");
    let mut first = env.spawn(&flags);
    assert!(
        env.wait_event("pvc-flaky", ABNORMAL, WAIT),
        "{}",
        first.stderr.text()
    );
    first.signal(signal);
    first.wait_exit(WAIT);
    assert!(env.events("pvc-flaky", NORMAL).is_empty());

    env.driver.set_volume("flaky", false, "");
    let second = env.spawn(&flags);
    assert!(
        env.wait_event("pvc-flaky", NORMAL, WAIT),
        "{}",
        second.stderr.text()
    );
    more_checks(&env, mode, 6);
    assert_one_recovery(&env, "pvc-flaky");
    assert_eq!(env.events("pvc-flaky", ABNORMAL).len(), 1);
    assert!(env.events("pvc-steady", NORMAL).is_empty());
    assert!(env.events("pvc-steady", ABNORMAL).is_empty());
}

#[test]
fn list_mode_recovery_survives_sigkill() {
    recovery_survives_a_restart(Mode::List, "KILL", &[]);
}

#[test]
fn get_mode_recovery_survives_sigterm() {
    recovery_survives_a_restart(Mode::Get, "TERM", &[]);
}

#[test]
fn list_mode_recovery_survives_sigterm() {
    recovery_survives_a_restart(Mode::List, "TERM", &[]);
}

#[test]
fn get_mode_recovery_survives_sigkill() {
    recovery_survives_a_restart(Mode::Get, "KILL", &[]);
}

#[test]
fn recovery_survives_a_restart_with_leader_election() {
    // The new process seeds its state when it becomes leader (the old one released the Lease
    // on SIGTERM, so that is at once).
    recovery_survives_a_restart(
        Mode::Get,
        "TERM",
        &[
            "--leader-election",
            &format!("--leader-election-namespace={NS}"),
        ],
    );
}

#[test]
fn a_restart_after_recovery_does_not_repeat_it() {
    // Recovered before the restart: the seed finds a Normal event no older than the Warning
    // (lastTimestamp has one-second precision, so "no older" includes the same second).
    let env = Env::new();
    env.volume("flaky");
    env.driver.set_volume("flaky", true, "Volume not found");
    let mut first = env.spawn(Mode::List.flags());
    assert!(
        env.wait_event("pvc-flaky", ABNORMAL, WAIT),
        "{}",
        first.stderr.text()
    );
    env.driver.set_volume("flaky", false, "");
    assert!(env.wait_event("pvc-flaky", NORMAL, WAIT));
    first.terminate();
    first.wait_exit(WAIT);
    let _second = env.spawn(Mode::List.flags());
    more_checks(&env, Mode::List, 4);
    assert_one_recovery(&env, "pvc-flaky");
}

fn warning_event(env: &Env, name: &str, pvc_name: &str, uid: &Value, source: &str) {
    env.api.create(serde_json::json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": name, "namespace": NS},
        "involvedObject": {"kind": "PersistentVolumeClaim", "apiVersion": "v1", "name": pvc_name, "namespace": NS, "uid": uid},
        "reason": ABNORMAL, "message": "Volume not found", "type": "Warning",
        "source": {"component": source}, "count": 1,
        "firstTimestamp": "2026-01-01T00:00:00Z", "lastTimestamp": "2026-01-01T00:00:00Z"
    }));
}

#[test]
fn seeding_reads_every_page_of_existing_events() {
    // More Warning events of ours than one page of the seeding LIST (500): the one that
    // matters sorts last.
    let env = Env::new();
    let (_pv, pvc) = env.volume("flaky");
    env.driver.set_volume("flaky", false, "");
    for i in 0..520 {
        let uid = Value::String(format!("uid-of-a-deleted-claim-{i}"));
        warning_event(&env, &format!("old-{i:04}"), "pvc-old", &uid, &component());
    }
    warning_event(
        &env,
        "zzz-flaky",
        "pvc-flaky",
        &pvc["metadata"]["uid"],
        &component(),
    );
    let sidecar = env.spawn(Mode::List.flags());
    assert!(
        env.wait_event("pvc-flaky", NORMAL, WAIT),
        "{}",
        sidecar.stderr.text()
    );
    let lists: Vec<String> = env
        .api
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path == "/api/v1/events")
        .map(|r| r.query)
        .collect();
    assert!(
        lists.iter().any(|q| q.contains("continue=")),
        "the seed never asked for a second page: {lists:#?}"
    );
    more_checks(&env, Mode::List, 3);
    assert_one_recovery(&env, "pvc-flaky");
}

#[test]
fn warnings_from_other_components_are_not_ours_to_recover() {
    // DESIGN §2.4: only our own VolumeConditionAbnormal Warnings seed the recovery state
    // (upstream answers any source's).
    let env = Env::new();
    let (_pv, pvc) = env.volume("flaky");
    env.driver.set_volume("flaky", false, "");
    warning_event(
        &env,
        "foreign",
        "pvc-flaky",
        &pvc["metadata"]["uid"],
        "some-other-monitor",
    );
    let sidecar = env.spawn(Mode::List.flags());
    assert!(
        env.wait_calls(LIST_VOLUMES, 4, WAIT),
        "{}",
        sidecar.stderr.text()
    );
    assert!(
        env.events("pvc-flaky", NORMAL).is_empty(),
        "{:#?}",
        env.api.events()
    );
}
