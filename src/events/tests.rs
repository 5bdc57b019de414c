//! Recorder and writer tests against a recording fake sink and a manual clock.

use super::*;
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::time::{SystemTime, UNIX_EPOCH};

struct ManualClock(Mutex<SystemTime>);

impl ManualClock {
    fn at(secs: u64) -> Arc<ManualClock> {
        Arc::new(ManualClock(Mutex::new(
            UNIX_EPOCH + Duration::from_secs(1_767_323_045 + secs),
        )))
    }
    fn advance(&self, d: Duration) {
        let mut t = self.0.lock().unwrap();
        *t += d;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.0.lock().unwrap()
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Call {
    Create {
        namespace: String,
        body: Value,
    },
    Patch {
        namespace: String,
        name: String,
        body: Value,
    },
}

#[derive(Default)]
struct FakeState {
    calls: Vec<Call>,
    /// Answers for the next calls, before the in-memory store is consulted.
    script: VecDeque<kube::Error>,
    store: HashMap<(String, String), Value>,
    rv: u64,
}

/// A tiny API server for events: create (409 if the name exists), strategic-merge patch of
/// top-level fields (404 if missing), resourceVersion counter; scripted errors first.
#[derive(Clone, Default)]
struct FakeSink(Arc<(Mutex<FakeState>, Condvar)>);

impl FakeSink {
    fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.0 .0.lock().unwrap()
    }
    fn calls(&self) -> Vec<Call> {
        self.state().calls.clone()
    }
    fn fail_next(&self, errors: impl IntoIterator<Item = kube::Error>) {
        self.state().script.extend(errors);
    }
    fn wait_calls(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut s = self.0 .0.lock().unwrap();
        while s.calls.len() < n {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {n} calls, have {:?}",
                s.calls
            );
            s = self
                .0
                 .1
                .wait_timeout(s, Duration::from_millis(100))
                .unwrap()
                .0;
        }
    }
    fn call(&self, call: Call) -> Result<Value, kube::Error> {
        let mut s = self.state();
        s.calls.push(call.clone());
        self.0 .1.notify_all();
        if let Some(err) = s.script.pop_front() {
            return Err(err);
        }
        s.rv += 1;
        let rv = s.rv.to_string();
        match call {
            Call::Create {
                namespace,
                mut body,
            } => {
                let name = body["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let key = (namespace, name);
                if s.store.contains_key(&key) {
                    return Err(api_error(409, "AlreadyExists", "events exists"));
                }
                body["metadata"]["resourceVersion"] = json!(rv);
                s.store.insert(key, body.clone());
                Ok(body)
            }
            Call::Patch {
                namespace,
                name,
                body,
            } => {
                let Some(stored) = s.store.get_mut(&(namespace, name)) else {
                    return Err(api_error(404, "NotFound", "events not found"));
                };
                for (k, v) in body.as_object().unwrap() {
                    stored[k] = v.clone();
                }
                stored["metadata"]["resourceVersion"] = json!(rv);
                Ok(stored.clone())
            }
        }
    }
}

impl EventSink for FakeSink {
    fn create(&self, namespace: &str, event: &EventBody<'_>) -> Result<Event, kube::Error> {
        self.call(Call::Create {
            namespace: namespace.into(),
            body: serde_json::to_value(event).unwrap(),
        })
        .map(|answer| Event::from_server(&answer))
    }
    fn patch(&self, namespace: &str, name: &str, patch: &EventPatch) -> Result<Event, kube::Error> {
        self.call(Call::Patch {
            namespace: namespace.into(),
            name: name.into(),
            body: serde_json::to_value(patch).unwrap(),
        })
        .map(|answer| Event::from_server(&answer))
    }
}

fn api_error(code: u16, reason: &str, message: &str) -> kube::Error {
    kube::Error::Api {
        what: "events".into(),
        status: kube::Status {
            code,
            reason: reason.into(),
            message: message.into(),
            retry_after: None,
        },
    }
}

fn transport_error() -> kube::Error {
    kube::Error::Transport {
        what: "POST https://10.0.0.1/api/v1/namespaces/ns/events".into(),
        message: "connection refused".into(),
    }
}

fn pvc() -> ObjectRef {
    ObjectRef {
        kind: "PersistentVolumeClaim".into(),
        api_version: "v1".into(),
        namespace: "ns".into(),
        name: "claim".into(),
        uid: "uid-1".into(),
        resource_version: "42".into(),
    }
}

type Sleeps = Arc<Mutex<Vec<Duration>>>;

/// Options with a manual clock and a sleep that records its durations and returns at once
/// (`interrupt` = answer "shutdown").
fn options(clock: Arc<ManualClock>, interrupt: bool) -> (RecorderOptions, Sleeps) {
    let sleeps: Sleeps = Arc::default();
    let recorded = sleeps.clone();
    let mut opts = RecorderOptions::new("csi-pv-monitor-controller-fake.csi.driver.io".into());
    opts.clock = clock;
    opts.sleep = Arc::new(move |d, _: &Shutdown| {
        recorded.lock().unwrap().push(d);
        interrupt
    });
    (opts, sleeps)
}

fn abnormal(clock: &ManualClock, msg: &str) -> Event {
    Event::new(
        "csi-pv-monitor-controller-fake.csi.driver.io",
        &pvc(),
        EventType::Warning,
        "VolumeConditionAbnormal",
        msg,
        clock.now(),
    )
}

#[test]
fn first_event_is_created_with_the_exact_body() {
    let clock = ManualClock::at(0);
    let (opts, sleeps) = options(clock.clone(), false);
    let sink = FakeSink::default();
    let mut w = Writer::new(sink.clone(), &opts, Shutdown::new());
    assert_eq!(
        w.record(abnormal(&clock, "Volume not found")),
        Outcome::Written
    );
    let calls = sink.calls();
    assert_eq!(
        calls,
        vec![Call::Create {
            namespace: "ns".into(),
            body: json!({
                "kind": "Event", "apiVersion": "v1",
                "metadata": {"name": "claim.1886caf21c963200", "namespace": "ns"},
                "involvedObject": {"kind": "PersistentVolumeClaim", "namespace": "ns", "name": "claim", "uid": "uid-1", "apiVersion": "v1", "resourceVersion": "42"},
                "reason": "VolumeConditionAbnormal", "message": "Volume not found",
                "source": {"component": "csi-pv-monitor-controller-fake.csi.driver.io"},
                "firstTimestamp": "2026-01-02T03:04:05Z", "lastTimestamp": "2026-01-02T03:04:05Z",
                "count": 1, "type": "Warning", "eventTime": null,
                "reportingComponent": "csi-pv-monitor-controller-fake.csi.driver.io", "reportingInstance": ""
            }),
        }]
    );
    assert!(sleeps.lock().unwrap().is_empty());
}

#[test]
fn repeats_patch_with_server_state_and_fall_back_to_create_on_404() {
    let clock = ManualClock::at(0);
    let (opts, _) = options(clock.clone(), false);
    let sink = FakeSink::default();
    let mut w = Writer::new(sink.clone(), &opts, Shutdown::new());
    w.record(abnormal(&clock, "bad"));
    clock.advance(Duration::from_secs(60));
    assert_eq!(w.record(abnormal(&clock, "bad")), Outcome::Written);
    let name = "claim.1886caf21c963200".to_string();
    assert_eq!(
        sink.calls()[1],
        Call::Patch {
            namespace: "ns".into(),
            name: name.clone(),
            body: json!({"count": 2, "lastTimestamp": "2026-01-02T03:05:05Z", "message": "bad"})
        }
    );

    // Someone deletes the Event: the next repeat's PATCH gets 404 and becomes a CREATE with
    // the same name, count 3 and the original firstTimestamp, and no resourceVersion.
    sink.state().store.clear();
    clock.advance(Duration::from_secs(60));
    assert_eq!(w.record(abnormal(&clock, "bad")), Outcome::Written);
    let calls = sink.calls();
    assert!(
        matches!(&calls[2], Call::Patch { name: n, body, .. } if *n == name && body["count"] == 3)
    );
    let Call::Create { body, .. } = &calls[3] else {
        panic!("{:?}", calls[3])
    };
    assert_eq!(body["metadata"], json!({"name": name, "namespace": "ns"}));
    assert_eq!(body["count"], 3);
    assert_eq!(body["firstTimestamp"], "2026-01-02T03:04:05Z");
    assert_eq!(body["lastTimestamp"], "2026-01-02T03:06:05Z");

    // The server state (resourceVersion of the re-created object) is remembered: next is a PATCH.
    clock.advance(Duration::from_secs(60));
    w.record(abnormal(&clock, "bad"));
    assert!(matches!(&sink.calls()[4], Call::Patch { body, .. } if body["count"] == 4));
    assert_eq!(sink.calls().len(), 5);
}

#[test]
fn transport_errors_are_retried_after_sleeping() {
    let clock = ManualClock::at(0);
    let (opts, sleeps) = options(clock.clone(), false);
    let sink = FakeSink::default();
    sink.fail_next([
        transport_error(),
        transport_error(),
        kube::Error::Decode {
            what: "events".into(),
            message: "eof".into(),
        },
    ]);
    let mut w = Writer::new(sink.clone(), &opts, Shutdown::new());
    assert_eq!(w.record(abnormal(&clock, "bad")), Outcome::Written);
    let calls = sink.calls();
    assert_eq!(calls.len(), 4);
    assert!(
        calls.iter().all(|c| c == &calls[0]),
        "every try sends the same create"
    );
    let sleeps = sleeps.lock().unwrap().clone();
    assert_eq!(sleeps.len(), 3);
    assert!(sleeps[0] < RETRY_INTERVAL);
    assert_eq!(&sleeps[1..], &[RETRY_INTERVAL, RETRY_INTERVAL]);
}

#[test]
fn first_retry_sleep_is_spread_over_the_interval() {
    let clock = ManualClock::at(0);
    let (opts, sleeps) = options(clock.clone(), false);
    let sink = FakeSink::default();
    let mut w = Writer::new(sink.clone(), &opts, Shutdown::new());
    // 25 events: the spam filter's burst for one object and type.
    for i in 0..25 {
        sink.fail_next([transport_error()]);
        // Distinct times give distinct names to the five distinct events.
        clock.advance(Duration::from_secs(1));
        assert_eq!(
            w.record(abnormal(&clock, &format!("m{}", i % 5))),
            Outcome::Written
        );
    }
    let sleeps = sleeps.lock().unwrap().clone();
    assert_eq!(sleeps.len(), 25);
    assert!(sleeps.iter().all(|d| *d < RETRY_INTERVAL));
    let distinct: std::collections::BTreeSet<_> = sleeps.iter().collect();
    assert!(distinct.len() > 20, "{sleeps:?}");
}

#[test]
fn twelve_transport_failures_give_up() {
    let clock = ManualClock::at(0);
    let (opts, sleeps) = options(clock.clone(), false);
    let sink = FakeSink::default();
    sink.fail_next((0..12).map(|_| transport_error()));
    let mut w = Writer::new(sink.clone(), &opts, Shutdown::new());
    assert_eq!(w.record(abnormal(&clock, "bad")), Outcome::GaveUp);
    assert_eq!(sink.calls().len(), 12);
    assert_eq!(sleeps.lock().unwrap().len(), 11);
    // The dedup cache counted the lost event: the next one is a PATCH (404 → CREATE, count 2).
    assert_eq!(w.record(abnormal(&clock, "bad")), Outcome::Written);
    let calls = sink.calls();
    assert!(matches!(&calls[12], Call::Patch { body, .. } if body["count"] == 2));
    assert!(matches!(&calls[13], Call::Create { body, .. } if body["count"] == 2));
}

#[test]
fn api_rejections_are_not_retried() {
    let cases = [
        api_error(422, "Invalid", "events \"x\" is invalid"),
        api_error(403, "Forbidden", "events is forbidden: unable to create new content in namespace ns because it is being terminated"),
        api_error(409, "AlreadyExists", "exists"),
        // client-go gives up on any status error, 5xx included.
        api_error(500, "InternalError", "etcd"),
        kube::Error::Config { source: "kubeconfig".into(), field: "user".into(), message: "no credentials".into() },
    ];
    for err in cases {
        let clock = ManualClock::at(0);
        let (opts, sleeps) = options(clock.clone(), false);
        let sink = FakeSink::default();
        let shown = err.to_string();
        sink.fail_next([err]);
        let mut w = Writer::new(sink.clone(), &opts, Shutdown::new());
        assert_eq!(
            w.record(abnormal(&clock, "bad")),
            Outcome::Rejected,
            "{shown}"
        );
        assert_eq!(sink.calls().len(), 1, "{shown}");
        assert!(sleeps.lock().unwrap().is_empty(), "{shown}");
    }
}

#[test]
fn shutdown_during_retry_sleep_abandons_the_event() {
    let clock = ManualClock::at(0);
    let (opts, sleeps) = options(clock.clone(), true);
    let sink = FakeSink::default();
    sink.fail_next((0..12).map(|_| transport_error()));
    let mut w = Writer::new(sink.clone(), &opts, Shutdown::new());
    assert_eq!(w.record(abnormal(&clock, "bad")), Outcome::ShutDown);
    assert_eq!(sink.calls().len(), 1);
    assert_eq!(sleeps.lock().unwrap().len(), 1);
}

#[test]
fn spam_filtered_events_are_not_written() {
    let clock = ManualClock::at(0);
    let (opts, _) = options(clock.clone(), false);
    let sink = FakeSink::default();
    let mut w = Writer::new(sink.clone(), &opts, Shutdown::new());
    let outcomes: Vec<_> = (0..30).map(|_| w.record(abnormal(&clock, "bad"))).collect();
    assert!(outcomes[..25].iter().all(|o| *o == Outcome::Written));
    assert!(outcomes[25..].iter().all(|o| *o == Outcome::Skipped));
    clock.advance(Duration::from_secs(300));
    assert_eq!(w.record(abnormal(&clock, "bad")), Outcome::Written);
    assert!(matches!(sink.calls().last(), Some(Call::Patch { body, .. }) if body["count"] == 31));
}

#[test]
fn full_queue_drops_and_counts() {
    let clock = ManualClock::at(0);
    let (opts, _) = options(clock.clone(), false);
    let (recorder, rx) = queue(&opts, QUEUE_CAPACITY);
    for i in 0..QUEUE_CAPACITY {
        assert!(recorder.enqueue(abnormal(&clock, &i.to_string())), "{i}");
    }
    assert_eq!(recorder.dropped(), 0);
    assert!(!recorder.enqueue(abnormal(&clock, "one too many")));
    recorder.event(&pvc(), EventType::Normal, "R", "also dropped");
    assert_eq!(recorder.dropped(), 2);
    assert_eq!(rx.len(), QUEUE_CAPACITY);
    assert_eq!(
        crate::sync::lock(&recorder.pending.state).count,
        QUEUE_CAPACITY
    );
    // Taking one frees one slot.
    assert!(rx.try_recv().is_some());
    recorder.pending.done(1);
    assert!(recorder.enqueue(abnormal(&clock, "fits again")));
    assert_eq!(
        DROPPED_MESSAGE,
        "Unable to record event: too many queued events, dropped event"
    );
}

#[test]
fn thread_writes_in_order_and_flush_waits_for_it() {
    let clock = ManualClock::at(0);
    let (opts, _) = options(clock.clone(), false);
    let sink = FakeSink::default();
    let shutdown = Shutdown::new();
    let (recorder, thread) = spawn(sink.clone(), opts, shutdown.clone()).unwrap();
    let handles: Vec<_> = (0..3).map(|_| recorder.clone()).collect();
    for _ in 0..10 {
        for h in &handles {
            h.event(&pvc(), EventType::Warning, "VolumeConditionAbnormal", "bad");
        }
    }
    assert!(thread.flush(Duration::from_secs(10)));
    let calls = sink.calls();
    assert_eq!(calls.len(), 25);
    assert!(matches!(&calls[0], Call::Create { namespace, .. } if namespace == "ns"));
    for (i, c) in calls.iter().enumerate().skip(1) {
        assert!(
            matches!(c, Call::Patch { body, .. } if body["count"] == i + 1),
            "{i}: {c:?}"
        );
    }
    shutdown.trigger();
    thread.join();
    // After the thread stopped, events are dropped quietly and never counted as queue overflow.
    recorder.event(
        &pvc(),
        EventType::Warning,
        "VolumeConditionAbnormal",
        "late",
    );
    assert_eq!(recorder.dropped(), 0);
    assert_eq!(sink.calls().len(), 25);
}

#[test]
fn shutdown_wakes_the_retry_sleep_and_discards_the_queue() {
    let sink = FakeSink::default();
    sink.fail_next((0..12).map(|_| transport_error()));
    let mut opts = RecorderOptions::new("comp".into());
    // Real interruptible sleep; an hour-long interval proves the wake-up comes from shutdown.
    opts.retry_interval = Duration::from_secs(3600);
    let shutdown = Shutdown::new();
    let (recorder, thread) = spawn(sink.clone(), opts, shutdown.clone()).unwrap();
    recorder.event(&pvc(), EventType::Warning, "R", "first");
    // After the first failed try the thread sleeps (at most one try later, should the
    // randomised first sleep be near zero) for up to an hour.
    sink.wait_calls(1);
    recorder.event(&pvc(), EventType::Warning, "R", "second");
    assert!(!thread.flush(Duration::from_millis(50)));
    let started = Instant::now();
    shutdown.trigger();
    thread.join();
    assert!(started.elapsed() < Duration::from_secs(60));
    let calls = sink.calls();
    assert!(!calls.is_empty() && calls.len() <= 2, "{calls:?}");
    assert!(
        calls
            .iter()
            .all(|c| matches!(c, Call::Create { body, .. } if body["message"] == "first")),
        "the queued event is discarded, not written: {calls:?}"
    );
}

#[test]
fn flush_reports_discarded_events() {
    let pending = Pending::new();
    assert!(pending.begin());
    assert!(!pending.wait_empty(Duration::from_millis(1)));
    pending.close(true);
    assert!(!pending.wait_empty(Duration::from_millis(1)));
    assert!(!pending.begin());
    let clean = Pending::new();
    assert!(clean.begin());
    clean.done(1);
    assert!(clean.wait_empty(Duration::ZERO));
}

#[test]
fn a_full_queue_drops_repeats_before_transitions() {
    let clock = ManualClock::at(0);
    let (opts, _) = options(clock.clone(), false);
    let (recorder, rx) = queue(&opts, 4);
    let send = |msg: &str, p: Priority| recorder.enqueue_with(abnormal(&clock, msg), p);
    assert!(send("r1", Priority::Repeat));
    assert!(send("r2", Priority::Repeat));
    assert!(send("t1", Priority::Transition));
    assert!(send("r3", Priority::Repeat));
    // Full: a repeat is dropped; a transition takes the place of the oldest repeat.
    assert!(!send("r4", Priority::Repeat));
    assert!(send("t2", Priority::Transition));
    assert!(send("t3", Priority::Transition));
    assert!(send("t4", Priority::Transition));
    // No repeat left to displace: now a transition is dropped too.
    assert!(!send("t5", Priority::Transition));
    assert_eq!(
        recorder.dropped_by_reason(),
        [("queue_full", 2), ("repeat_displaced", 3)]
    );
    assert_eq!(recorder.dropped(), 5);
    assert_eq!(crate::sync::lock(&recorder.pending.state).count, 4);
    // Transitions are written first, in order.
    let order: Vec<String> = std::iter::from_fn(|| rx.try_recv())
        .map(|e| e.message)
        .collect();
    assert_eq!(order, ["t1", "t2", "t3", "t4"]);
}

#[test]
fn transitions_are_written_before_queued_repeats() {
    let clock = ManualClock::at(0);
    let (opts, _) = options(clock.clone(), false);
    let (recorder, rx) = queue(&opts, 10);
    for (msg, p) in [
        ("r1", Priority::Repeat),
        ("t1", Priority::Transition),
        ("r2", Priority::Repeat),
        ("t2", Priority::Transition),
    ] {
        assert!(recorder.enqueue_with(abnormal(&clock, msg), p));
    }
    let order: Vec<String> = std::iter::from_fn(|| rx.try_recv())
        .map(|e| e.message)
        .collect();
    assert_eq!(order, ["t1", "t2", "r1", "r2"]);
}
