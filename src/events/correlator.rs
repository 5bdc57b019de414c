//! client-go's `EventCorrelator` as pure state: aggregation of similar events, de-duplication
//! into a rising `count`, and the per source+object+type spam filter, each over an LRU cache.
//! No I/O and no clock of its own: the caller passes `now`.

use super::event::{Event, EventPatch};
use crate::kube::ratelimit::TokenBucket;
use crate::timeutil;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, SystemTime};

/// Entries per cache (client-go `maxLruCacheEntries`).
pub const LRU_CAPACITY: usize = 4096;
/// Distinct messages per aggregate key before events are combined.
pub const AGGREGATE_MAX_EVENTS: usize = 10;
/// Quiet time after which an aggregation record starts over.
pub const AGGREGATE_INTERVAL: Duration = Duration::from_secs(600);
/// Prefix of a combined event's message.
pub const AGGREGATE_PREFIX: &str = "(combined from similar events): ";
/// Spam filter bucket size.
pub const SPAM_BURST: u32 = 25;

/// Spam filter refill rate. client-go stores `1/300` as a float32 and widens it, so one token
/// takes a hair under 300 s; keeping the same number keeps the same boundary.
fn spam_qps() -> f64 {
    f64::from(1.0f32 / 300.0f32)
}

/// What to do with one event after correlation.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// The spam filter has no token for this source+object+type: write nothing.
    Skip,
    /// A new Event object: POST it.
    Create(Event),
    /// A repeat: strategic-merge PATCH `patch` onto `event.name`; on 404 POST `event` instead.
    Patch { event: Event, patch: EventPatch },
}

/// A least-recently-used map with groupcache's semantics: a lookup refreshes an entry, adding a
/// new key beyond capacity evicts the least recently used one.
#[derive(Debug)]
pub struct Lru<V> {
    capacity: usize,
    tick: u64,
    map: HashMap<String, (u64, V)>,
    order: BTreeMap<u64, String>,
}

impl<V> Lru<V> {
    pub fn new(capacity: usize) -> Lru<V> {
        Lru {
            capacity,
            tick: 0,
            map: HashMap::new(),
            order: BTreeMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Presence check that does not refresh the entry.
    pub fn contains(&self, key: &str) -> bool {
        self.map.contains_key(key)
    }

    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    pub fn get(&mut self, key: &str) -> Option<&mut V> {
        let tick = self.next_tick();
        let entry = self.map.get_mut(key)?;
        self.order.remove(&entry.0);
        entry.0 = tick;
        self.order.insert(tick, key.to_string());
        Some(&mut entry.1)
    }

    pub fn put(&mut self, key: String, value: V) {
        let tick = self.next_tick();
        if let Some((old, _)) = self.map.insert(key.clone(), (tick, value)) {
            self.order.remove(&old);
        }
        self.order.insert(tick, key);
        while self.map.len() > self.capacity {
            match self.order.pop_first() {
                Some((_, oldest)) => {
                    self.map.remove(&oldest);
                }
                None => break,
            }
        }
    }
}

#[derive(Debug, Default)]
struct AggregateRecord {
    messages: BTreeSet<String>,
    last: Option<SystemTime>,
}

/// What the dedup cache remembers of the last write of an event key.
#[derive(Clone, Debug)]
struct LastWrite {
    count: i32,
    first_timestamp: String,
    name: String,
    resource_version: String,
}

/// The three caches of client-go's `EventCorrelator`, one per process (per recorder thread).
#[derive(Debug)]
pub struct Correlator {
    aggregates: Lru<AggregateRecord>,
    last_writes: Lru<LastWrite>,
    spam: Lru<TokenBucket>,
}

impl Default for Correlator {
    fn default() -> Self {
        Self::new()
    }
}

impl Correlator {
    pub fn new() -> Correlator {
        Correlator {
            aggregates: Lru::new(LRU_CAPACITY),
            last_writes: Lru::new(LRU_CAPACITY),
            spam: Lru::new(LRU_CAPACITY),
        }
    }

    /// Aggregate, then de-duplicate, then spam-filter one event, in client-go's order. The dedup
    /// count advances even when the spam filter then skips the event.
    pub fn correlate(&mut self, event: Event, now: SystemTime) -> Decision {
        let (event, key) = self.aggregate(event, now);
        let (event, is_repeat) = self.observe(event, key);
        if !self.allow(&event, now) {
            return Decision::Skip;
        }
        if is_repeat {
            let patch = event.patch_body();
            Decision::Patch { event, patch }
        } else {
            Decision::Create(event)
        }
    }

    /// Remember what the server stored. Keyed by the answer's own event key, as client-go does:
    /// for a combined event that is not the aggregate key its repeats are looked up under, so
    /// those keep the locally recorded name and count.
    pub fn update_state(&mut self, server: &Event) {
        self.last_writes.put(
            server.event_key(),
            LastWrite {
                count: server.count,
                first_timestamp: server.first_timestamp.clone(),
                name: server.name.clone(),
                resource_version: server.resource_version.clone(),
            },
        );
    }

    fn aggregate(&mut self, event: Event, now: SystemTime) -> (Event, String) {
        let event_key = event.event_key();
        let aggregate_key = event.aggregate_key();
        let mut record = self
            .aggregates
            .get(&aggregate_key)
            .map(std::mem::take)
            .unwrap_or_default();
        let expired = match record.last {
            Some(last) => now
                .duration_since(last)
                .map(|d| d > AGGREGATE_INTERVAL)
                .unwrap_or(false),
            None => true,
        };
        if expired {
            record = AggregateRecord::default();
        }
        record.messages.insert(event.message.clone());
        record.last = Some(now);
        let combine = record.messages.len() >= AGGREGATE_MAX_EVENTS;
        if combine {
            // Go drops an arbitrary member (map order); the smallest is as arbitrary and testable.
            record.messages.pop_first();
        }
        self.aggregates.put(aggregate_key.clone(), record);
        if !combine {
            return (event, event_key);
        }
        let stamp = timeutil::rfc3339(now);
        // The combined event is built from scratch: no reportingComponent/Instance, no name check.
        let combined = Event {
            name: format!("{}.{:x}", event.involved.name, timeutil::unix_nanos(now)),
            namespace: event.namespace.clone(),
            resource_version: String::new(),
            message: format!("{AGGREGATE_PREFIX}{}", event.message),
            first_timestamp: stamp.clone(),
            last_timestamp: stamp,
            count: 1,
            reporting_controller: String::new(),
            reporting_instance: String::new(),
            ..event
        };
        (combined, aggregate_key)
    }

    fn observe(&mut self, mut event: Event, key: String) -> (Event, bool) {
        let last = self.last_writes.get(&key).cloned();
        let is_repeat = matches!(&last, Some(o) if o.count > 0);
        if let (true, Some(o)) = (is_repeat, last) {
            event.name = o.name;
            event.resource_version = o.resource_version;
            event.first_timestamp = o.first_timestamp;
            event.count = o.count.saturating_add(1);
        }
        self.last_writes.put(
            key,
            LastWrite {
                count: event.count,
                first_timestamp: event.first_timestamp.clone(),
                name: event.name.clone(),
                resource_version: event.resource_version.clone(),
            },
        );
        (event, is_repeat)
    }

    fn allow(&mut self, event: &Event, now: SystemTime) -> bool {
        let key = event.spam_key();
        match self.spam.get(&key) {
            Some(bucket) => bucket.try_accept(now),
            None => {
                let mut bucket = TokenBucket::new(SPAM_BURST, spam_qps());
                let ok = bucket.try_accept(now);
                self.spam.put(key, bucket);
                ok
            }
        }
    }

    #[cfg(test)]
    fn cache_sizes(&self) -> (usize, usize, usize) {
        (
            self.aggregates.len(),
            self.last_writes.len(),
            self.spam.len(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::{EventType, ObjectRef};
    use super::*;
    use serde_json::json;
    use std::time::UNIX_EPOCH;

    const T0: u64 = 1_767_323_045;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(T0 + secs)
    }

    fn pvc(name: &str) -> ObjectRef {
        ObjectRef {
            kind: "PersistentVolumeClaim".into(),
            api_version: "v1".into(),
            namespace: "ns".into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            resource_version: "1".into(),
        }
    }

    fn ev(obj: &str, t: EventType, reason: &str, msg: &str, now: SystemTime) -> Event {
        Event::new("comp", &pvc(obj), t, reason, msg, now)
    }

    /// Writes succeed and the server echoes the event with a resourceVersion, as the recorder
    /// thread would report back.
    fn written(c: &mut Correlator, d: &Decision, rv: u32) {
        let e = match d {
            Decision::Create(e) | Decision::Patch { event: e, .. } => e,
            Decision::Skip => return,
        };
        let mut answer = e.clone();
        answer.resource_version = rv.to_string();
        c.update_state(&answer);
    }

    #[test]
    fn thirty_identical_reports_create_then_patch_then_go_silent() {
        let mut c = Correlator::new();
        let mut decisions = Vec::new();
        for i in 0..30 {
            let d = c.correlate(
                ev(
                    "a",
                    EventType::Warning,
                    "VolumeConditionAbnormal",
                    "bad",
                    at(0),
                ),
                at(0),
            );
            written(&mut c, &d, i);
            decisions.push(d);
        }
        let Decision::Create(first) = &decisions[0] else {
            panic!("first is {:?}", decisions[0])
        };
        assert_eq!(first.count, 1);
        for (i, d) in decisions.iter().enumerate().take(25).skip(1) {
            match d {
                Decision::Patch { event, patch } => {
                    assert_eq!(event.name, first.name);
                    assert_eq!(event.count, i as i32 + 1);
                    assert_eq!(event.first_timestamp, first.first_timestamp);
                    assert_eq!(
                        serde_json::to_value(patch).unwrap(),
                        json!({"count": i + 1, "lastTimestamp": "2026-01-02T03:04:05Z", "message": "bad"})
                    );
                }
                other => panic!("event {i}: {other:?}"),
            }
        }
        assert!(decisions[25..].iter().all(|d| *d == Decision::Skip));

        // 299 s later still no token; at 300 s one token, and the skipped repeats show in count.
        let d = c.correlate(
            ev(
                "a",
                EventType::Warning,
                "VolumeConditionAbnormal",
                "bad",
                at(299),
            ),
            at(299),
        );
        assert_eq!(d, Decision::Skip);
        let d = c.correlate(
            ev(
                "a",
                EventType::Warning,
                "VolumeConditionAbnormal",
                "bad",
                at(300),
            ),
            at(300),
        );
        match &d {
            Decision::Patch { event, patch } => {
                assert_eq!(event.count, 32);
                assert_eq!(event.name, first.name);
                let patch = serde_json::to_value(patch).unwrap();
                assert_eq!(patch["lastTimestamp"], "2026-01-02T03:09:05Z");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            c.correlate(
                ev(
                    "a",
                    EventType::Warning,
                    "VolumeConditionAbnormal",
                    "bad",
                    at(301)
                ),
                at(301)
            ),
            Decision::Skip
        );
    }

    #[test]
    fn spam_filter_is_per_object_and_type_not_reason() {
        let mut c = Correlator::new();
        for i in 0..25 {
            assert_ne!(
                c.correlate(
                    ev("a", EventType::Warning, "R1", &format!("m{}", i % 5), at(0)),
                    at(0)
                ),
                Decision::Skip
            );
        }
        // Another reason on the same object and type shares the exhausted bucket...
        assert_eq!(
            c.correlate(ev("a", EventType::Warning, "R2", "x", at(0)), at(0)),
            Decision::Skip
        );
        // ...while another type or another object has its own.
        assert!(matches!(
            c.correlate(ev("a", EventType::Normal, "R1", "x", at(0)), at(0)),
            Decision::Create(_)
        ));
        assert!(matches!(
            c.correlate(ev("b", EventType::Warning, "R1", "x", at(0)), at(0)),
            Decision::Create(_)
        ));
    }

    #[test]
    fn ten_distinct_messages_are_combined_and_repeats_patch_the_aggregate() {
        let mut c = Correlator::new();
        let mut decisions = Vec::new();
        for i in 0..9 {
            let d = c.correlate(
                ev(
                    "a",
                    EventType::Warning,
                    "NodeFailed",
                    &format!("msg {i}"),
                    at(i),
                ),
                at(i),
            );
            assert!(
                matches!(d, Decision::Create(ref e) if e.message == format!("msg {i}")),
                "{i}: {d:?}"
            );
            written(&mut c, &d, i as u32);
            decisions.push(d);
        }
        let d = c.correlate(
            ev("a", EventType::Warning, "NodeFailed", "msg 9", at(9)),
            at(9),
        );
        let Decision::Create(combined) = &d else {
            panic!("{d:?}")
        };
        assert_eq!(combined.message, "(combined from similar events): msg 9");
        assert_eq!(combined.count, 1);
        assert_eq!(
            combined.name,
            format!("a.{:x}", timeutil::unix_nanos(at(9)))
        );
        assert_eq!(combined.reason, "NodeFailed");
        assert_eq!(combined.event_type, "Warning");
        assert_eq!(combined.involved, decisions[0].clone().event().involved);
        let body = serde_json::to_value(combined.create_body()).unwrap();
        assert_eq!(body["reportingComponent"], "");
        assert_eq!(body["source"]["component"], "comp");
        written(&mut c, &d, 100);

        // A later new message is folded into the aggregate: a PATCH of the combined event.
        let d = c.correlate(
            ev("a", EventType::Warning, "NodeFailed", "msg 10", at(20)),
            at(20),
        );
        match &d {
            Decision::Patch { event, patch } => {
                assert_eq!(event.name, combined.name);
                assert_eq!(event.count, 2);
                assert_eq!(event.first_timestamp, combined.first_timestamp);
                let patch = serde_json::to_value(patch).unwrap();
                assert_eq!(patch["message"], "(combined from similar events): msg 10");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn aggregation_restarts_after_600_quiet_seconds() {
        let mut c = Correlator::new();
        for i in 0..9 {
            c.correlate(
                ev("a", EventType::Warning, "R", &format!("m{i}"), at(i)),
                at(i),
            );
        }
        // 601 s after the last similar event the record starts over: no combining.
        let d = c.correlate(
            ev("a", EventType::Warning, "R", "m9", at(8 + 601)),
            at(8 + 601),
        );
        assert!(
            matches!(&d, Decision::Create(e) if e.message == "m9"),
            "{d:?}"
        );
        // Exactly 600 s is not "more than" 600 s: the record (now 1 message) keeps growing.
        let base = 8 + 601;
        for i in 10..18 {
            let d = c.correlate(
                ev(
                    "a",
                    EventType::Warning,
                    "R",
                    &format!("m{i}"),
                    at(base + 600 * (i - 9)),
                ),
                at(base + 600 * (i - 9)),
            );
            assert!(
                matches!(&d, Decision::Create(e) if !e.message.starts_with(AGGREGATE_PREFIX)),
                "{i}: {d:?}"
            );
        }
        let now = at(base + 600 * 9);
        let d = c.correlate(ev("a", EventType::Warning, "R", "m18", now), now);
        assert!(
            matches!(&d, Decision::Create(e) if e.message == "(combined from similar events): m18"),
            "{d:?}"
        );
    }

    #[test]
    fn failed_write_still_counts_and_404_fallback_keeps_first_timestamp() {
        let mut c = Correlator::new();
        // First event never reaches the server (no update_state): the next one is still a PATCH
        // with count 2 and the original name, which the writer turns into a CREATE on 404.
        let d1 = c.correlate(ev("a", EventType::Warning, "R", "m", at(0)), at(0));
        let d2 = c.correlate(ev("a", EventType::Warning, "R", "m", at(5)), at(5));
        let (Decision::Create(e1), Decision::Patch { event: e2, .. }) = (&d1, &d2) else {
            panic!("{d1:?} {d2:?}")
        };
        assert_eq!(e2.name, e1.name);
        assert_eq!(e2.count, 2);
        assert_eq!(e2.first_timestamp, "2026-01-02T03:04:05Z");
        assert_eq!(e2.last_timestamp, "2026-01-02T03:04:10Z");
    }

    #[test]
    fn server_state_replaces_local_observation() {
        let mut c = Correlator::new();
        let d = c.correlate(ev("a", EventType::Warning, "R", "m", at(0)), at(0));
        let mut answer = d.event();
        answer.name = "server-name".into();
        answer.count = 41;
        answer.first_timestamp = "2020-01-01T00:00:00Z".into();
        answer.resource_version = "77".into();
        c.update_state(&answer);
        let Decision::Patch { event, .. } =
            c.correlate(ev("a", EventType::Warning, "R", "m", at(1)), at(1))
        else {
            panic!()
        };
        assert_eq!(
            (
                event.name.as_str(),
                event.count,
                event.first_timestamp.as_str(),
                event.resource_version.as_str()
            ),
            ("server-name", 42, "2020-01-01T00:00:00Z", "77")
        );
        // A server count of 0 means "not seen": back to CREATE.
        answer.count = 0;
        c.update_state(&answer);
        assert!(matches!(
            c.correlate(ev("a", EventType::Warning, "R", "m", at(2)), at(2)),
            Decision::Create(_)
        ));
    }

    #[test]
    fn lru_evicts_least_recently_used_at_capacity() {
        let mut lru: Lru<u32> = Lru::new(LRU_CAPACITY);
        for i in 0..LRU_CAPACITY as u32 {
            lru.put(format!("k{i}"), i);
        }
        assert_eq!(lru.len(), 4096);
        // Touch k0 so k1 is now the oldest.
        assert_eq!(lru.get("k0").copied(), Some(0));
        lru.put("new".into(), 1);
        assert_eq!(lru.len(), 4096);
        assert!(lru.contains("k0"));
        assert!(!lru.contains("k1"));
        assert!(lru.contains("k2"));
        // Overwriting an existing key neither grows nor evicts.
        lru.put("k2".into(), 9);
        assert_eq!(lru.len(), 4096);
        assert!(lru.contains("k3"));
    }

    #[test]
    fn correlator_caches_are_bounded_and_forget_old_objects() {
        let mut c = Correlator::new();
        let first = ev("obj-0", EventType::Warning, "R", "m", at(0));
        for i in 0..=LRU_CAPACITY {
            c.correlate(
                ev(&format!("obj-{i}"), EventType::Warning, "R", "m", at(0)),
                at(0),
            );
        }
        assert_eq!(c.cache_sizes(), (LRU_CAPACITY, LRU_CAPACITY, LRU_CAPACITY));
        // obj-0 was evicted from the dedup cache: a fresh CREATE, not a PATCH.
        assert!(matches!(c.correlate(first, at(1)), Decision::Create(_)));
    }

    #[test]
    fn token_bucket_boundaries() {
        let mut b = TokenBucket::new(SPAM_BURST, spam_qps());
        assert!((0..25).all(|_| b.try_accept(at(0))));
        assert!(!b.try_accept(at(0)));
        assert!(!b.try_accept(at(299)));
        assert!(b.try_accept(at(300)));
        assert!(!b.try_accept(at(300)));
        // A long quiet period refills to the burst, not beyond.
        assert!((0..25).all(|_| b.try_accept(at(1_000_000))));
        assert!(!b.try_accept(at(1_000_000)));
        // A clock jumping backwards neither panics nor refills.
        assert!(!b.try_accept(at(0)));
    }

    impl Decision {
        fn event(self) -> Event {
            match self {
                Decision::Create(e) | Decision::Patch { event: e, .. } => e,
                Decision::Skip => panic!("skip has no event"),
            }
        }
    }
}
