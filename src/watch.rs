//! Watch caches: reflector threads that list (in pages) and then watch a resource, feeding lean
//! in-memory stores. Objects are decoded straight off the response into typed records that keep
//! only what the controller uses (`kube::object`); a malformed one is logged and skipped. The state machine follows kube-rs's watcher and client-go's reflector:
//! a normal end of a watch re-watches from the last resourceVersion, 410 Gone relists, other
//! failures back off (0.8 s doubling to 30 s, with jitter, reset after 2 quiet minutes). A
//! relist swaps the store atomically, so objects deleted during an outage disappear.
//!
//! Stores keep only what the controller needs: this driver's PVs as `PvRecord`s, and the
//! name/namespace/uid/resourceVersion of PVCs bound to those PVs.

use crate::kube::object::{self, Object};
#[cfg(test)]
use crate::kube::ObjectMeta;
use crate::kube::{Client, Error, Pager, WatchEvent};
use crate::shutdown::Shutdown;
use crate::timeutil;
use serde::de::DeserializeOwned;
#[cfg(test)]
use serde::Deserialize;
use serde_json::value::RawValue;
#[cfg(test)]
use serde_json::Value;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// client-go's reflector page size (`defaultPageSize` / kube-rs `page_size`).
pub const PAGE_SIZE: u32 = 500;
/// Watch `timeoutSeconds` base: client-go picks 5-10 min at random, kube-rs a fixed 290 s. We
/// ask for 300-360 s (jittered so replicas do not re-watch in step).
pub const WATCH_TIMEOUT: Duration = Duration::from_secs(300);
/// Backoff parameters from client-go's reflector (`NewExponentialBackoffManager(800ms, 30s,
/// 2m, 2.0, 1.0)`), which kube-rs copies.
pub const BACKOFF_INITIAL: Duration = Duration::from_millis(800);
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
pub const BACKOFF_RESET: Duration = Duration::from_secs(120);
/// A watch that ends this fast without any event counts as a failure, so a server that closes
/// every watch at once does not make us spin.
const QUICK_WATCH: Duration = Duration::from_secs(1);
/// The most records a list's `remainingItemCount` reserves room for at once: a server that
/// claims billions must not make us allocate for them (more still fit, by growing).
const MAX_RESERVE: usize = 10_000_000;

pub use crate::records::{Claim, PvPhase, PvRecord, PvWire, PvcRecord, PvcWire, Token};
pub use crate::store::{Change, Keyed, Records, Store};

/// A type a generic reflector can cache. Store keys follow the object's metadata: `name` for
/// cluster-scoped objects, `namespace/name` for namespaced ones (the reflector removes an object
/// that stops qualifying by that key).
pub trait Resource: Keyed + Sized + Clone + Send + Sync + 'static {
    /// What is decoded of each object: only the fields the record needs.
    type Wire: DeserializeOwned + Object;
    /// The object kind, for the log line about a malformed object.
    const KIND: &'static str;
    /// `None` = do not cache this object.
    fn from_wire(wire: Self::Wire) -> Option<Self>;
}

/// The store key of any object: `namespace/name` or `name` (tests only).
#[cfg(test)]
pub fn object_key(obj: &Value) -> Option<String> {
    ObjectMeta::deserialize(obj.get("metadata")?).ok()?.key()
}

// ---------------------------------------------------------------------------------------------
// The volume stores

pub type PvStore = Store<PvRecord>;

/// PVCs bound to our PVs, keyed `namespace/name`.
#[derive(Clone)]
pub struct PvcStore {
    store: Store<PvcRecord>,
    pvs: PvStore,
}

impl PvcStore {
    pub fn new(pvs: PvStore) -> PvcStore {
        PvcStore {
            store: Store::new(),
            pvs,
        }
    }

    /// Looked up without building `namespace/name`.
    pub fn get(&self, namespace: &str, name: &str) -> Option<PvcRecord> {
        self.store.get_parts(&[namespace, "/", name])
    }

    /// From the cache, else a GET (a PVC event may have been filtered out because it arrived
    /// before its PV). The fetched record is cached when its `spec.volumeName` is one of our
    /// PVs. `Ok(None)` = the PVC does not exist.
    pub fn get_or_fetch(
        &self,
        client: &Client,
        namespace: &str,
        name: &str,
    ) -> Result<Option<PvcRecord>, Error> {
        if let Some(r) = self.get(namespace, name) {
            return Ok(Some(r));
        }
        let path = format!("/api/v1/namespaces/{namespace}/persistentvolumeclaims/{name}");
        let wire: PvcWire = match client.get_as(&path) {
            Ok(w) => w,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        let Some(rec) = PvcRecord::from_wire(wire) else {
            return Err(Error::Decode {
                what: format!("GET {path}"),
                message: "PVC without name or namespace".into(),
            });
        };
        if !rec.volume_name().is_empty() && self.pvs.contains_key(rec.volume_name()) {
            self.store.insert_if_absent(rec.clone());
        }
        Ok(Some(rec))
    }

    pub fn is_synced(&self) -> bool {
        self.store.is_synced()
    }

    /// After a status write: the PVC as the PATCH answered it replaces the cached record, so
    /// the next check compares against it even before the watch delivers the change. Only
    /// while the cache still holds `before`, the record the write was based on: a newer one
    /// the reflector applied meanwhile is never replaced by an older answer (the watch brings
    /// the write's own change anyway). True when replaced.
    pub fn record_write(&self, before: &PvcRecord, answer: PvcRecord) -> bool {
        self.store.replace_if(answer, |cached| {
            cached.key() == before.key() && cached.resource_version() == before.resource_version()
        })
    }

    pub fn wait_synced(&self, timeout: Duration, shutdown: &Shutdown) -> bool {
        self.store.wait_synced(timeout, shutdown)
    }

    pub fn len(&self) -> usize {
        self.store.len()
    }

    pub fn is_empty(&self) -> bool {
        self.store.is_empty()
    }

    /// The underlying store (snapshots, subscriptions).
    pub fn store(&self) -> &Store<PvcRecord> {
        &self.store
    }
}

// ---------------------------------------------------------------------------------------------
// The reflector state machine (pure)

/// What the reflector does next.
#[derive(Debug, Clone, PartialEq)]
pub enum Phase {
    /// List from scratch (all pages), then swap the store.
    List,
    /// Watch from this resourceVersion.
    Watch { resource_version: String },
}

/// How the last list or watch ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Listed {
        resource_version: String,
    },
    /// `gone`: a continue token expired (410): relist from scratch at once.
    ListFailed {
        gone: bool,
        retry_after: Option<Duration>,
    },
    /// The server ended the watch normally.
    WatchClosed {
        resource_version: String,
        events: usize,
        elapsed: Duration,
    },
    /// HTTP 410 or an ERROR event with code 410.
    WatchGone,
    /// An ERROR event with another code.
    WatchErrorEvent {
        code: u16,
    },
    /// Transport error, 5xx, 429, 403, malformed or truncated stream.
    WatchFailed {
        resource_version: String,
        retry_after: Option<Duration>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub next: Phase,
    /// Sleep the backoff delay first.
    pub backoff: bool,
    /// A server-requested minimum delay (Retry-After).
    pub min_delay: Option<Duration>,
}

pub fn next_step(outcome: &Outcome) -> Step {
    let step = |next, backoff, min_delay| Step {
        next,
        backoff,
        min_delay,
    };
    let watch = |rv: &str| Phase::Watch {
        resource_version: rv.to_string(),
    };
    match outcome {
        Outcome::Listed { resource_version } => step(watch(resource_version), false, None),
        Outcome::ListFailed { gone: true, .. } => step(Phase::List, false, None),
        Outcome::ListFailed {
            gone: false,
            retry_after,
        } => step(Phase::List, true, *retry_after),
        Outcome::WatchClosed {
            resource_version,
            events,
            elapsed,
        } => {
            let quick = *events == 0 && *elapsed < QUICK_WATCH;
            step(watch(resource_version), quick, None)
        }
        Outcome::WatchGone => step(Phase::List, false, None),
        Outcome::WatchErrorEvent { .. } => step(Phase::List, true, None),
        Outcome::WatchFailed {
            resource_version,
            retry_after,
        } => step(watch(resource_version), true, *retry_after),
    }
}

/// Exponential backoff with jitter, reset after a quiet period.
#[derive(Debug, Clone)]
pub struct Backoff {
    current: Duration,
    last_failure: Option<Instant>,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            current: BACKOFF_INITIAL,
            last_failure: None,
        }
    }
}

impl Backoff {
    /// The delay before the next attempt; `rand` is uniform in [0, 1).
    pub fn next_delay(&mut self, now: Instant, rand: f64) -> Duration {
        if self
            .last_failure
            .is_some_and(|t| now.saturating_duration_since(t) >= BACKOFF_RESET)
        {
            self.current = BACKOFF_INITIAL;
        }
        self.last_failure = Some(now);
        let d = self
            .current
            .mul_f64(1.0 + 0.25 * rand.clamp(0.0, 1.0))
            .min(BACKOFF_MAX);
        self.current = (self.current * 2).min(BACKOFF_MAX);
        d
    }
}

// ---------------------------------------------------------------------------------------------
// The reflector thread

/// One object off the wire, as the reflector uses it.
struct Decoded<T> {
    /// The store key, from the metadata (`None` without a name).
    key: Option<String>,
    resource_version: String,
    record: Verdict<T>,
}

enum Verdict<T> {
    /// Cache this record.
    Keep(T),
    /// The object does not qualify (another driver, a pod without PVCs): not cached, and
    /// dropped from the cache when an update makes it stop qualifying.
    Drop,
    /// Not decodable (already logged): a list skips it; a watch event about it changes
    /// nothing, as client-go's informers never see an object their decoder refused.
    Malformed,
}

type Decoder<T> = Box<dyn Fn(&RawValue) -> Decoded<T> + Send>;

/// Raw object → wire form `W` → record. A malformed object is logged (kind, name); its key and
/// version still come from its metadata when that much is sound, so the watch moves past it.
fn decoder<W, T>(
    context: String,
    kind: &'static str,
    select: impl Fn(W) -> Option<T> + Send + 'static,
) -> Decoder<T>
where
    W: DeserializeOwned + Object,
{
    Box::new(move |raw| match object::decode::<W>(raw, kind, &context) {
        Some(w) => {
            let meta = w.meta();
            let (key, resource_version) = (meta.key(), meta.resource_version().to_string());
            Decoded {
                key,
                resource_version,
                record: match select(w) {
                    Some(r) => Verdict::Keep(r),
                    None => Verdict::Drop,
                },
            }
        }
        None => {
            let m: object::MetaOnly = serde_json::from_str(raw.get()).unwrap_or_default();
            Decoded {
                key: m.meta().key(),
                resource_version: m.meta().resource_version().to_string(),
                record: Verdict::Malformed,
            }
        }
    })
}

struct Reflector<T> {
    name: String,
    client: Client,
    list_path: String,
    query: Vec<(String, String)>,
    decode: Decoder<T>,
    store: Store<T>,
    shutdown: Shutdown,
}

impl<T: Keyed + Clone + Send + Sync + 'static> Reflector<T> {
    fn query(&self) -> Vec<(&str, &str)> {
        self.query
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    fn run(self) {
        let mut phase = Phase::List;
        let mut backoff = Backoff::default();
        while !self.shutdown.is_triggered() {
            let outcome = match &phase {
                Phase::List => self.list(),
                Phase::Watch { resource_version } => self.watch(resource_version),
            };
            if self.shutdown.is_triggered() {
                break;
            }
            let step = next_step(&outcome);
            if step.backoff {
                let delay = backoff
                    .next_delay(Instant::now(), timeutil::random_f64())
                    .max(step.min_delay.unwrap_or_default());
                log::debug!("{}: retrying in {delay:?}", self.name);
                if self.shutdown.wait_timeout(delay) {
                    break;
                }
            }
            phase = step.next;
        }
        log::debug!("{}: reflector stopped", self.name);
    }

    /// All pages, each item decoded into its record as the page streams in.
    fn list(&self) -> Outcome {
        let mut map = Records::new();
        let mut pager = Pager::new(&self.client, &self.list_path, &self.query(), PAGE_SIZE);
        loop {
            let path = pager.next_path();
            let continuing = pager.continuing();
            let mut keep = |raw: &RawValue| {
                if let Verdict::Keep(r) = (self.decode)(raw).record {
                    map.insert(r);
                }
            };
            let meta = match pager.next_page(&mut keep) {
                Ok(m) => m,
                Err(e) => {
                    let gone = e.is_gone() && continuing;
                    if gone {
                        log::info!(
                            "{}: list continue token expired, listing again from the start",
                            self.name
                        );
                    } else {
                        log::warn!(
                            "{}: list failed: API server {}: {e}",
                            self.name,
                            self.client.server()
                        );
                    }
                    return Outcome::ListFailed {
                        gone,
                        retry_after: e.retry_after(),
                    };
                }
            };
            if !continuing {
                // Sized once, from the first page's count of what is left: the store does
                // not double (and copy itself) while the rest of the list comes in.
                if let Some(n) = meta.remaining_item_count {
                    map.reserve(usize::try_from(n).unwrap_or(0).min(MAX_RESERVE));
                }
            }
            if meta.continue_token.is_empty() {
                let rv = meta.resource_version;
                if rv.is_empty() {
                    log::warn!(
                        "{}: malformed list response from GET {path}: no resourceVersion",
                        self.name
                    );
                    return Outcome::ListFailed {
                        gone: false,
                        retry_after: None,
                    };
                }
                log::debug!(
                    "{}: listed {} objects at resourceVersion {rv}",
                    self.name,
                    map.len()
                );
                self.store.replace(map);
                return Outcome::Listed {
                    resource_version: rv,
                };
            }
            if self.shutdown.is_triggered() {
                return Outcome::ListFailed {
                    gone: false,
                    retry_after: None,
                };
            }
        }
    }

    fn watch(&self, rv: &str) -> Outcome {
        let timeout = timeutil::jitter(WATCH_TIMEOUT, 0.2).as_secs().to_string();
        let mut pairs = self.query();
        pairs.extend_from_slice(&[
            ("watch", "true"),
            ("allowWatchBookmarks", "true"),
            ("resourceVersion", rv),
            ("timeoutSeconds", &timeout),
        ]);
        let path = format!("{}?{}", self.list_path, crate::kube::encode_query(&pairs));
        let start = Instant::now();
        let mut last = rv.to_string();
        let mut events = 0usize;
        let stream = match self.client.watch(&path) {
            Ok(s) => s,
            Err(e) if e.is_gone() => {
                log::info!("{}: resourceVersion {rv} is too old, relisting", self.name);
                return Outcome::WatchGone;
            }
            Err(e) => {
                log::warn!(
                    "{}: watch failed: API server {}: {e}",
                    self.name,
                    self.client.server()
                );
                return Outcome::WatchFailed {
                    resource_version: last,
                    retry_after: e.retry_after(),
                };
            }
        };
        for ev in stream {
            match ev {
                Ok(WatchEvent::Added(o)) | Ok(WatchEvent::Modified(o)) => {
                    events += 1;
                    let d = (self.decode)(&o);
                    bump(&mut last, d.resource_version);
                    match (d.key, d.record) {
                        (_, Verdict::Keep(r)) => self.store.apply(r),
                        (Some(k), Verdict::Drop) => self.store.remove(&k),
                        _ => {}
                    }
                }
                Ok(WatchEvent::Deleted(o)) => {
                    events += 1;
                    // A deletion needs only the key, even of an object that is otherwise bad.
                    let d = (self.decode)(&o);
                    bump(&mut last, d.resource_version);
                    if let Some(k) = d.key {
                        self.store.remove(&k);
                    }
                }
                Ok(WatchEvent::Bookmark { resource_version }) => {
                    if !resource_version.is_empty() {
                        last = resource_version;
                    }
                }
                Ok(WatchEvent::Error(st)) if st.code == 410 => {
                    log::info!("{}: watch expired ({}), relisting", self.name, st.message);
                    return Outcome::WatchGone;
                }
                Ok(WatchEvent::Error(st)) => {
                    log::warn!(
                        "{}: watch error event {} {}: {}",
                        self.name,
                        st.code,
                        st.reason,
                        st.message
                    );
                    return Outcome::WatchErrorEvent { code: st.code };
                }
                Err(e) => {
                    log::warn!("{}: watch stream broke: {e}", self.name);
                    return Outcome::WatchFailed {
                        resource_version: last,
                        retry_after: e.retry_after(),
                    };
                }
            }
            if self.shutdown.is_triggered() {
                break;
            }
        }
        Outcome::WatchClosed {
            resource_version: last,
            events,
            elapsed: start.elapsed(),
        }
    }
}

fn bump(last: &mut String, rv: String) {
    if !rv.is_empty() {
        *last = rv;
    }
}

fn spawn_with<T: Keyed + Clone + Send + Sync + 'static>(
    r: Reflector<T>,
    wait_for: Option<PvStore>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(r.name.clone())
        .spawn(move || {
            if let Some(pvs) = wait_for {
                // The PVC filter needs the PV store; an unsynced one would drop every PVC.
                while !pvs.wait_synced(Duration::from_secs(3600), &r.shutdown) {
                    if r.shutdown.is_triggered() {
                        return;
                    }
                }
            }
            r.run()
        })
}

fn reflector<T>(
    name: &str,
    client: Client,
    list_path: &str,
    query: Vec<(String, String)>,
    decode: Decoder<T>,
    store: Store<T>,
    shutdown: Shutdown,
) -> Reflector<T> {
    Reflector {
        name: format!("reflector-{name}"),
        client,
        list_path: list_path.to_string(),
        query,
        decode,
        store,
        shutdown,
    }
}

/// A reflector for any `Resource`, in a thread named `reflector-<name>`. It stops on shutdown;
/// a watch blocked in a read notices only when the read returns, which takes at most the
/// watch's `timeoutSeconds` (≤ 360 s) plus the client's 30 s slack, usually far less because
/// every event and bookmark wakes it. Callers need not wait for that: the thread holds nothing
/// that must be flushed.
pub fn spawn_reflector<T: Resource>(
    name: &str,
    client: Client,
    list_path: &str,
    extra_query: Vec<(String, String)>,
    shutdown: Shutdown,
) -> std::io::Result<(Store<T>, JoinHandle<()>)> {
    let store = Store::new();
    let decode = decoder::<T::Wire, T>(format!("reflector-{name}"), T::KIND, T::from_wire);
    let h = spawn_with(
        reflector(
            name,
            client,
            list_path,
            extra_query,
            decode,
            store.clone(),
            shutdown,
        ),
        None,
    )?;
    Ok((store, h))
}

/// PVs of `driver`, keyed by name.
pub fn spawn_pv_reflector(
    client: Client,
    driver: String,
    shutdown: Shutdown,
) -> std::io::Result<(PvStore, JoinHandle<()>)> {
    let store = Store::new();
    let decode = decoder(
        "reflector-pv".into(),
        "PersistentVolume",
        move |w: PvWire| PvRecord::from_wire(w, &driver),
    );
    let h = spawn_with(
        reflector(
            "pv",
            client,
            "/api/v1/persistentvolumes",
            Vec::new(),
            decode,
            store.clone(),
            shutdown,
        ),
        None,
    )?;
    Ok((store, h))
}

/// PVCs whose `spec.volumeName` is in `pvs`, keyed `namespace/name`. Starts listing once `pvs`
/// is synced.
pub fn spawn_pvc_reflector(
    client: Client,
    pvs: PvStore,
    shutdown: Shutdown,
) -> std::io::Result<(PvcStore, JoinHandle<()>)> {
    let pvcs = PvcStore::new(pvs.clone());
    let filter = pvs.clone();
    let decode = decoder(
        "reflector-pvc".into(),
        "PersistentVolumeClaim",
        move |w: PvcWire| {
            let r = PvcRecord::from_wire(w)?;
            if r.volume_name().is_empty() || !filter.contains_key(r.volume_name()) {
                return None;
            }
            Some(r)
        },
    );
    let r = reflector(
        "pvc",
        client,
        "/api/v1/persistentvolumeclaims",
        Vec::new(),
        decode,
        pvcs.store.clone(),
        shutdown,
    );
    let h = spawn_with(r, Some(pvs))?;
    Ok((pvcs, h))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::client::tests::{chunked, client, http, Canned};
    use serde_json::json;

    fn pv(name: &str, driver: &str, phase: &str, rv: &str) -> Value {
        json!({
            "metadata": {"name": name, "uid": format!("uid-{name}"), "resourceVersion": rv},
            "spec": {"csi": {"driver": driver, "volumeHandle": format!("h-{name}")},
                     "claimRef": {"namespace": "ns", "name": format!("c-{name}"), "uid": "cu"}},
            "status": {"phase": phase}
        })
    }

    /// Issue #25: the cache update after a status write cannot replace a newer record.
    #[test]
    fn a_status_write_answer_never_replaces_a_newer_cached_record() {
        let rec = |rv: &str, health: bool| {
            let mut o = json!({"metadata": {"name": "c", "namespace": "ns", "uid": "u", "resourceVersion": rv}});
            if health {
                o["status"] = json!({"healthStatus": {"healthConditions": [{"status": "Degraded", "reason": "Slow", "message": ""}], "lastTransitionTime": "2026-12-01T00:00:00Z"}});
            }
            PvcRecord::from_object(&o).unwrap()
        };
        let pvcs = PvcStore::new(PvStore::new());
        let before = rec("5", true);
        pvcs.store().apply(before.clone());
        // The reflector applied rv 6 while the write (based on rv 5) was on its way.
        pvcs.store().apply(rec("6", true));
        assert!(!pvcs.record_write(&before, rec("7", false)));
        assert_eq!(
            pvcs.get("ns", "c").unwrap().resource_version().to_string(),
            "6"
        );
        // Based on what the cache holds: the answer goes in.
        let current = pvcs.get("ns", "c").unwrap();
        assert!(pvcs.record_write(&current, rec("8", false)));
        let cached = pvcs.get("ns", "c").unwrap();
        assert_eq!(
            (
                cached.resource_version().to_string().as_str(),
                cached.health()
            ),
            ("8", None)
        );
        // A PVC that left the cache is not brought back by a late answer.
        pvcs.store().remove("ns/c");
        assert!(!pvcs.record_write(&cached, rec("9", false)));
        assert!(pvcs.get("ns", "c").is_none());
    }

    #[test]
    fn state_machine() {
        let w = |rv: &str| Phase::Watch {
            resource_version: rv.into(),
        };
        let ra = Some(Duration::from_secs(5));
        let long = Duration::from_secs(300);
        let cases = vec![
            (
                Outcome::Listed {
                    resource_version: "10".into(),
                },
                w("10"),
                false,
                None,
            ),
            (
                Outcome::ListFailed {
                    gone: true,
                    retry_after: None,
                },
                Phase::List,
                false,
                None,
            ),
            (
                Outcome::ListFailed {
                    gone: false,
                    retry_after: ra,
                },
                Phase::List,
                true,
                ra,
            ),
            (
                Outcome::WatchClosed {
                    resource_version: "12".into(),
                    events: 3,
                    elapsed: long,
                },
                w("12"),
                false,
                None,
            ),
            (
                Outcome::WatchClosed {
                    resource_version: "12".into(),
                    events: 0,
                    elapsed: long,
                },
                w("12"),
                false,
                None,
            ),
            (
                Outcome::WatchClosed {
                    resource_version: "12".into(),
                    events: 0,
                    elapsed: Duration::ZERO,
                },
                w("12"),
                true,
                None,
            ),
            (Outcome::WatchGone, Phase::List, false, None),
            (
                Outcome::WatchErrorEvent { code: 500 },
                Phase::List,
                true,
                None,
            ),
            (
                Outcome::WatchFailed {
                    resource_version: "15".into(),
                    retry_after: ra,
                },
                w("15"),
                true,
                ra,
            ),
            (
                Outcome::WatchFailed {
                    resource_version: "15".into(),
                    retry_after: None,
                },
                w("15"),
                true,
                None,
            ),
        ];
        for (outcome, next, backoff, min_delay) in cases {
            assert_eq!(
                next_step(&outcome),
                Step {
                    next,
                    backoff,
                    min_delay
                },
                "{outcome:?}"
            );
        }
    }

    #[test]
    fn backoff_doubles_caps_and_resets() {
        let mut b = Backoff::default();
        let t0 = Instant::now();
        let got: Vec<u128> = (0..8)
            .map(|i| b.next_delay(t0 + Duration::from_secs(i), 0.0).as_millis())
            .collect();
        assert_eq!(got, vec![800, 1600, 3200, 6400, 12800, 25600, 30000, 30000]);
        // Jitter adds at most a quarter, never beyond the cap.
        let mut j = Backoff::default();
        assert_eq!(j.next_delay(t0, 0.999_999).as_millis(), 999);
        // Two quiet minutes after the last failure reset it.
        assert_eq!(
            b.next_delay(t0 + Duration::from_secs(7 + 120), 0.0)
                .as_millis(),
            800
        );
        assert_eq!(
            b.next_delay(t0 + Duration::from_secs(7 + 121), 0.0)
                .as_millis(),
            1600
        );
    }

    fn list_body(items: &[Value], rv: &str, cont: &str) -> String {
        json!({"kind": "PersistentVolumeList", "metadata": {"resourceVersion": rv, "continue": cont}, "items": items}).to_string()
    }

    fn line(ty: &str, obj: &Value) -> String {
        format!("{}\n", json!({"type": ty, "object": obj}))
    }

    /// Pagination, re-watch from the last bookmark after a normal end, 410 → relist with the
    /// deletion that happened meanwhile reflected.
    #[test]
    fn pv_reflector_lists_watches_and_relists() {
        let bookmark = json!({"kind": "PersistentVolume", "metadata": {"resourceVersion": "20"}});
        let gone =
            json!({"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"});
        let srv = Canned::start(vec![
            http(
                200,
                "",
                &list_body(
                    &[
                        pv("a", "d", "Available", "3"),
                        pv("x", "other", "Bound", "4"),
                    ],
                    "10",
                    "c1",
                ),
            ),
            http(200, "", &list_body(&[pv("b", "d", "Bound", "5")], "11", "")),
            chunked(
                &[
                    &line("MODIFIED", &pv("a", "d", "Bound", "12")),
                    &line("ADDED", &pv("y", "other", "Bound", "13")),
                    &line("BOOKMARK", &bookmark),
                ],
                true,
            ),
            chunked(&[&line("ERROR", &gone)], true),
            http(
                200,
                "",
                &list_body(&[pv("b", "d", "Bound", "25")], "30", ""),
            ),
        ]);
        let sd = Shutdown::new();
        let (store, handle) =
            spawn_pv_reflector(client(&srv.addr), "d".into(), sd.clone()).unwrap();
        let rx = store.subscribe();
        assert!(store.wait_synced(Duration::from_secs(10), &sd));
        // Second Resynced = the relist after 410 (the first may have happened before subscribe).
        let mut seen = Vec::new();
        while let Ok(c) = rx.recv_timeout(Duration::from_secs(10)) {
            let done = c
                == Change::Deleted {
                    key: "a".into(),
                    old: PvRecord::from_object(&pv("a", "d", "Bound", "12"), "d").unwrap(),
                };
            seen.push(c);
            if done {
                break;
            }
        }
        assert_eq!(
            store.get("a"),
            None,
            "deleted during the outage: gone after relist ({seen:?})"
        );
        assert!(store.get("b").is_some());
        assert_eq!(store.get("x"), None);
        sd.trigger();
        handle.join().unwrap();
        let reqs = srv.requests();
        assert!(
            reqs[0].starts_with("GET /api/v1/persistentvolumes?limit=500 "),
            "{}",
            reqs[0]
        );
        assert!(
            reqs[1].starts_with("GET /api/v1/persistentvolumes?limit=500&continue=c1 "),
            "{}",
            reqs[1]
        );
        assert!(reqs[2].starts_with("GET /api/v1/persistentvolumes?watch=true&allowWatchBookmarks=true&resourceVersion=11&timeoutSeconds="), "{}", reqs[2]);
        assert!(
            reqs[3].contains("resourceVersion=20&"),
            "re-watch from the bookmark: {}",
            reqs[3]
        );
        assert!(
            reqs[4].starts_with("GET /api/v1/persistentvolumes?limit=500 "),
            "{}",
            reqs[4]
        );
    }

    /// A malformed object is skipped (list) or ignored (watch) and everything around it kept:
    /// the page, the watch and the cached record it would have replaced.
    #[test]
    fn malformed_objects_are_skipped_not_fatal() {
        let mut bad = pv("bad", "d", "Bound", "4");
        bad["spec"]["csi"]["volumeHandle"] = json!(42);
        let mut bad_update = pv("a", "d", "Bound", "12");
        bad_update["status"]["phase"] = json!(["Bound"]);
        let srv = Canned::start(vec![
            http(
                200,
                "",
                &list_body(
                    &[
                        pv("a", "d", "Bound", "3"),
                        bad,
                        json!("garbage"),
                        pv("b", "d", "Bound", "5"),
                    ],
                    "10",
                    "",
                ),
            ),
            chunked(
                &[
                    &line("MODIFIED", &bad_update),
                    &line("ADDED", &pv("c", "d", "Bound", "13")),
                ],
                true,
            ),
        ]);
        let sd = Shutdown::new();
        let (store, handle) =
            spawn_pv_reflector(client(&srv.addr), "d".into(), sd.clone()).unwrap();
        let rx = store.subscribe();
        assert!(store.wait_synced(Duration::from_secs(10), &sd));
        loop {
            match rx.recv_timeout(Duration::from_secs(10)) {
                Ok(Change::Applied { key, .. }) if key == "c" => break,
                Ok(_) => {}
                Err(e) => panic!("the watch after the malformed event was lost: {e}"),
            }
        }
        let mut keys: Vec<String> = store
            .snapshot()
            .iter()
            .map(|r| r.name().to_string())
            .collect();
        keys.sort();
        assert_eq!(keys, ["a", "b", "c"]);
        assert_eq!(
            store.get("a").map(|r| r.phase()),
            Some(PvPhase::Bound),
            "the malformed update left the cached record alone"
        );
        sd.trigger();
        handle.join().unwrap();
        let reqs = srv.requests();
        assert!(
            reqs[1].contains("resourceVersion=10&"),
            "one list, then the watch: {reqs:?}"
        );
    }

    /// A 410 on a continue token restarts the list from the first page without backoff.
    #[test]
    fn expired_continue_token_restarts_the_list() {
        let expired =
            r#"{"kind":"Status","code":410,"reason":"Expired","message":"continue too old"}"#;
        let srv = Canned::start(vec![
            http(
                200,
                "",
                &list_body(&[pv("a", "d", "Bound", "3")], "10", "c1"),
            ),
            http(410, "", expired),
            http(200, "", &list_body(&[pv("b", "d", "Bound", "5")], "11", "")),
        ]);
        let sd = Shutdown::new();
        let (store, handle) =
            spawn_pv_reflector(client(&srv.addr), "d".into(), sd.clone()).unwrap();
        assert!(store.wait_synced(Duration::from_secs(10), &sd));
        assert_eq!(
            (store.get("a"), store.len()),
            (None, 1),
            "a page from the expired list must not leak in"
        );
        sd.trigger();
        handle.join().unwrap();
        assert!(srv.requests()[2].starts_with("GET /api/v1/persistentvolumes?limit=500 "));
    }

    #[test]
    fn pvc_store_filters_and_fetches() {
        let pvc = |name: &str, vol: &str| json!({"metadata": {"name": name, "namespace": "ns", "uid": "u", "resourceVersion": "1"}, "spec": {"volumeName": vol}});
        // Separate servers: the PV reflector's watch must not take the PVC list response.
        let pv_srv = Canned::start(vec![http(
            200,
            "",
            &list_body(&[pv("a", "d", "Bound", "3")], "10", ""),
        )]);
        let pvc_srv = Canned::start(vec![http(
            200,
            "",
            &list_body(&[pvc("c-a", "a"), pvc("foreign", "zzz")], "10", ""),
        )]);
        let sd = Shutdown::new();
        let (pvs, h1) = spawn_pv_reflector(client(&pv_srv.addr), "d".into(), sd.clone()).unwrap();
        let (pvcs, h2) =
            spawn_pvc_reflector(client(&pvc_srv.addr), pvs.clone(), sd.clone()).unwrap();
        assert!(pvcs.wait_synced(Duration::from_secs(10), &sd));
        assert_eq!(
            pvcs.get("ns", "c-a").map(|r| r.volume_name().to_string()),
            Some("a".to_string())
        );
        assert_eq!(pvcs.get("ns", "foreign"), None);
        assert_eq!(pvcs.len(), 1);
        sd.trigger();
        h1.join().unwrap();
        h2.join().unwrap();

        // The GET fallback caches a PVC bound to one of our PVs; a cached one costs no request.
        let srv2 = Canned::start(vec![
            http(200, "", &pvc("late", "a").to_string()),
            http(404, "", r#"{"kind":"Status","code":404}"#),
        ]);
        let c2 = client(&srv2.addr);
        let got = pvcs.get_or_fetch(&c2, "ns", "late").unwrap().unwrap();
        assert_eq!(got.name(), "late");
        assert_eq!(pvcs.get("ns", "late"), Some(got));
        assert!(pvcs.get_or_fetch(&c2, "ns", "c-a").unwrap().is_some());
        assert_eq!(pvcs.get_or_fetch(&c2, "ns", "missing").unwrap(), None);
        assert_eq!(srv2.requests().len(), 2);
    }

    #[derive(Clone, Debug, PartialEq)]
    struct NodeName(String);
    impl Keyed for NodeName {
        fn key(&self) -> &str {
            &self.0
        }
    }
    impl Resource for NodeName {
        type Wire = object::MetaOnly;
        const KIND: &'static str = "Node";
        fn from_wire(w: object::MetaOnly) -> Option<Self> {
            w.meta().key().map(NodeName)
        }
    }

    /// Malformed JSON mid-watch: backoff, then re-watch from the last resourceVersion (no relist).
    #[test]
    fn generic_reflector_rewatches_after_malformed_event() {
        let node = |n: &str, rv: &str| json!({"metadata": {"name": n, "resourceVersion": rv}});
        let srv = Canned::start(vec![
            http(200, "", &list_body(&[node("n1", "1")], "5", "")),
            chunked(&[&line("ADDED", &node("n2", "6")), "{oops\n"], true),
            chunked(&[&line("DELETED", &node("n1", "7"))], true),
        ]);
        let sd = Shutdown::new();
        let (store, h) = spawn_reflector::<NodeName>(
            "node",
            client(&srv.addr),
            "/api/v1/nodes",
            vec![("labelSelector".into(), "a=b".into())],
            sd.clone(),
        )
        .unwrap();
        let rx = store.subscribe();
        assert!(store.wait_synced(Duration::from_secs(10), &sd));
        loop {
            match rx.recv_timeout(Duration::from_secs(10)) {
                Ok(Change::Deleted { key, .. }) if key == "n1" => break,
                Ok(_) => {}
                Err(e) => panic!("no deletion seen: {e}"),
            }
        }
        assert_eq!(store.get("n2"), Some(NodeName("n2".into())));
        sd.trigger();
        h.join().unwrap();
        let reqs = srv.requests();
        assert!(
            reqs[0].starts_with("GET /api/v1/nodes?labelSelector=a%3Db&limit=500 "),
            "{}",
            reqs[0]
        );
        assert!(
            reqs[2].contains("watch=true") && reqs[2].contains("resourceVersion=6&"),
            "{}",
            reqs[2]
        );
    }
}
