//! Watch caches: reflector threads that list (in pages) and then watch a resource, feeding lean
//! in-memory stores. The state machine follows kube-rs's watcher and client-go's reflector:
//! a normal end of a watch re-watches from the last resourceVersion, 410 Gone relists, other
//! failures back off (0.8 s doubling to 30 s, with jitter, reset after 2 quiet minutes). A
//! relist swaps the store atomically, so objects deleted during an outage disappear.
//!
//! Stores keep only what the controller needs: this driver's PVs as `PvRecord`s, and the
//! name/namespace/uid/resourceVersion of PVCs bound to those PVs.

use crate::health::{PvcCondition, PvcHealth};
use crate::kube::{encode_query, Client, Error, WatchEvent};
use crate::shutdown::Shutdown;
use crate::timeutil;
use crossbeam_channel::{Receiver, Sender};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
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

// ---------------------------------------------------------------------------------------------
// Records

#[derive(Clone, Debug, PartialEq)]
pub struct ClaimRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// What the monitor needs of one PV of our driver.
#[derive(Clone, Debug, PartialEq)]
pub struct PvRecord {
    pub name: String,
    pub uid: String,
    pub volume_handle: String,
    pub phase: String,
    pub claim: Option<ClaimRef>,
    /// `metadata.deletionTimestamp` is set.
    pub deleting: bool,
}

fn s(v: &Value, ptr: &str) -> String {
    v.pointer(ptr)
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

impl PvRecord {
    /// Bound (upstream checks `status.phase == Bound`) and pointing at a claim.
    pub fn is_bound(&self) -> bool {
        self.phase == "Bound" && self.claim.is_some()
    }

    /// `None` unless this is a CSI PV of `driver` with a name and a volume handle.
    pub fn from_object(obj: &Value, driver: &str) -> Option<PvRecord> {
        let csi = obj.pointer("/spec/csi")?;
        if csi.get("driver").and_then(Value::as_str) != Some(driver) {
            return None;
        }
        let name = s(obj, "/metadata/name");
        let volume_handle = csi
            .get("volumeHandle")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if name.is_empty() || volume_handle.is_empty() {
            return None;
        }
        let claim = obj.pointer("/spec/claimRef").and_then(|c| {
            let name = c
                .get("name")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())?;
            Some(ClaimRef {
                namespace: c
                    .get("namespace")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                name: name.to_string(),
                uid: c
                    .get("uid")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
            })
        });
        Some(PvRecord {
            name,
            uid: s(obj, "/metadata/uid"),
            volume_handle,
            phase: s(obj, "/status/phase"),
            claim,
            deleting: obj
                .pointer("/metadata/deletionTimestamp")
                .is_some_and(|v| !v.is_null()),
        })
    }
}

/// What an Event about a PVC needs (the involved object) and what ties it to its PV.
#[derive(Clone, Debug, PartialEq)]
pub struct PvcRecord {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub resource_version: String,
    pub volume_name: String,
    /// `status.healthStatus` (Kubernetes 1.37, gate `CSIVolumeHealth`): the baseline the
    /// health modes compare against, so a restart or a new leader rewrites nothing unchanged.
    pub health: Option<Box<PvcHealth>>,
}

/// `status.healthStatus` as the API serves it; `None` when absent, null or without conditions.
fn pvc_health(v: &Value) -> Option<PvcHealth> {
    let conditions: Vec<PvcCondition> = v
        .get("healthConditions")?
        .as_array()?
        .iter()
        .map(|c| PvcCondition {
            status: s(c, "/status"),
            reason: s(c, "/reason"),
            message: s(c, "/message"),
        })
        .collect();
    if conditions.is_empty() {
        return None;
    }
    Some(PvcHealth {
        conditions,
        last_transition_time: s(v, "/lastTransitionTime"),
    })
}

impl PvcRecord {
    pub fn from_object(obj: &Value) -> Option<PvcRecord> {
        let name = s(obj, "/metadata/name");
        let namespace = s(obj, "/metadata/namespace");
        if name.is_empty() || namespace.is_empty() {
            return None;
        }
        Some(PvcRecord {
            namespace,
            name,
            uid: s(obj, "/metadata/uid"),
            resource_version: s(obj, "/metadata/resourceVersion"),
            volume_name: s(obj, "/spec/volumeName"),
            health: obj
                .pointer("/status/healthStatus")
                .and_then(pvc_health)
                .map(Box::new),
        })
    }

    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// A type a generic reflector can cache. Keys must follow the store convention: `name` for
/// cluster-scoped objects, `namespace/name` for namespaced ones (the reflector removes an object
/// that stops qualifying by that key).
pub trait Resource: Sized + Clone + Send + Sync + 'static {
    /// `None` = do not cache this object.
    fn key_and_record(obj: &Value) -> Option<(String, Self)>;
}

/// The store key of any object: `namespace/name` or `name`.
pub fn object_key(obj: &Value) -> Option<String> {
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())?;
    match obj
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
    {
        Some(ns) => Some(format!("{ns}/{name}")),
        None => Some(name.to_string()),
    }
}

// ---------------------------------------------------------------------------------------------
// Store

/// A change delivered to `Store::subscribe` receivers.
#[derive(Clone, Debug, PartialEq)]
pub enum Change<T> {
    Applied {
        key: String,
        old: Option<T>,
        new: T,
    },
    Deleted {
        key: String,
        old: T,
    },
    /// A relist completed; every surviving object was sent as `Applied` just before.
    Resynced,
}

struct StoreInner<T> {
    map: RwLock<Arc<HashMap<String, T>>>,
    /// Bumped on every change, so readers can skip work when nothing changed.
    generation: AtomicU64,
    synced: AtomicBool,
    /// Dropped (disconnecting `synced_rx`) at the first successful list.
    synced_tx: Mutex<Option<Sender<()>>>,
    synced_rx: Receiver<()>,
    subscribers: Mutex<Vec<Sender<Change<T>>>>,
}

/// A cache with one writer (its reflector) and cheap readers. Readers get the current map as an
/// `Arc` snapshot (O(1)); the writer copies the map only when it changes it while a snapshot is
/// held (`Arc::make_mut`), so a long-lived snapshot never blocks the writer.
pub struct Store<T> {
    inner: Arc<StoreInner<T>>,
}

impl<T> Clone for Store<T> {
    fn clone(&self) -> Self {
        Store {
            inner: self.inner.clone(),
        }
    }
}

impl<T: Clone> Default for Store<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Clone> Store<T> {
    /// An empty, unsynced store (reflectors make their own; public for tests elsewhere).
    pub fn new() -> Store<T> {
        let (tx, rx) = crossbeam_channel::bounded(0);
        Store {
            inner: Arc::new(StoreInner {
                map: RwLock::new(Arc::new(HashMap::new())),
                generation: AtomicU64::new(0),
                synced: AtomicBool::new(false),
                synced_tx: Mutex::new(Some(tx)),
                synced_rx: rx,
                subscribers: Mutex::new(Vec::new()),
            }),
        }
    }

    pub fn snapshot(&self) -> Arc<HashMap<String, T>> {
        self.inner
            .map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn get(&self, key: &str) -> Option<T> {
        self.inner
            .map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    pub fn len(&self) -> usize {
        self.inner
            .map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Changes with every insert, replace or removal (a relist counts as one change).
    pub fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::SeqCst)
    }

    fn changed(&self) {
        self.inner.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// True once the first complete list has been stored.
    pub fn is_synced(&self) -> bool {
        self.inner.synced.load(Ordering::SeqCst)
    }

    /// Block until synced (true), `timeout` passes or shutdown is triggered (false unless
    /// synced meanwhile). Woken by channel disconnection, not by polling.
    pub fn wait_synced(&self, timeout: Duration, shutdown: &Shutdown) -> bool {
        if self.is_synced() {
            return true;
        }
        let stop = shutdown.receiver();
        crossbeam_channel::select! {
            recv(self.inner.synced_rx) -> _ => {}
            recv(stop) -> _ => {}
            default(timeout) => {}
        }
        self.is_synced()
    }

    /// Changes from now on. Unbounded: a receiver that is not drained keeps growing, so drop it
    /// when done (the store then forgets it).
    pub fn subscribe(&self) -> Receiver<Change<T>> {
        let (tx, rx) = crossbeam_channel::unbounded();
        self.inner
            .subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(tx);
        rx
    }

    fn has_subscribers(&self) -> bool {
        !self
            .inner
            .subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    fn notify(&self, changes: Vec<Change<T>>) {
        if changes.is_empty() {
            return;
        }
        let mut subs = self
            .inner
            .subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        subs.retain(|tx| changes.iter().all(|c| tx.send(c.clone()).is_ok()));
    }

    /// Insert or replace one object. Writers: the reflector (and tests that fill a store
    /// directly, as Go tests fill informer stores).
    pub fn apply(&self, key: String, rec: T) {
        let old = {
            let mut m = self.inner.map.write().unwrap_or_else(|p| p.into_inner());
            Arc::make_mut(&mut m).insert(key.clone(), rec.clone())
        };
        self.changed();
        if self.has_subscribers() {
            self.notify(vec![Change::Applied { key, old, new: rec }]);
        }
    }

    /// Insert only when absent (a GET fallback must not overwrite a newer watch update).
    pub fn insert_if_absent(&self, key: String, rec: T) -> bool {
        {
            let mut m = self.inner.map.write().unwrap_or_else(|p| p.into_inner());
            if m.contains_key(&key) {
                return false;
            }
            Arc::make_mut(&mut m).insert(key.clone(), rec.clone());
        }
        self.changed();
        if self.has_subscribers() {
            self.notify(vec![Change::Applied {
                key,
                old: None,
                new: rec,
            }]);
        }
        true
    }

    pub fn remove(&self, key: &str) {
        let old = {
            let mut m = self.inner.map.write().unwrap_or_else(|p| p.into_inner());
            if !m.contains_key(key) {
                return;
            }
            Arc::make_mut(&mut m).remove(key)
        };
        self.changed();
        if let Some(old) = old {
            if self.has_subscribers() {
                self.notify(vec![Change::Deleted {
                    key: key.to_string(),
                    old,
                }]);
            }
        }
    }

    /// Swap in the result of a complete list and mark the store synced.
    pub fn replace(&self, new: HashMap<String, T>) {
        let new = Arc::new(new);
        let old = std::mem::replace(
            &mut *self.inner.map.write().unwrap_or_else(|p| p.into_inner()),
            new.clone(),
        );
        self.changed();
        self.inner.synced.store(true, Ordering::SeqCst);
        self.inner
            .synced_tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if self.has_subscribers() {
            let mut changes: Vec<Change<T>> = old
                .iter()
                .filter(|(k, _)| !new.contains_key(*k))
                .map(|(k, v)| Change::Deleted {
                    key: k.clone(),
                    old: v.clone(),
                })
                .collect();
            changes.extend(new.iter().map(|(k, v)| Change::Applied {
                key: k.clone(),
                old: old.get(k).cloned(),
                new: v.clone(),
            }));
            changes.push(Change::Resynced);
            self.notify(changes);
        }
    }
}

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

    pub fn get(&self, namespace: &str, name: &str) -> Option<PvcRecord> {
        self.store.get(&format!("{namespace}/{name}"))
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
        let obj = match client.get(&path) {
            Ok(v) => v,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        let Some(rec) = PvcRecord::from_object(&obj) else {
            return Err(Error::Decode {
                what: format!("GET {path}"),
                message: "PVC without name or namespace".into(),
            });
        };
        if !rec.volume_name.is_empty() && self.pvs.get(&rec.volume_name).is_some() {
            self.store.insert_if_absent(rec.key(), rec.clone());
        }
        Ok(Some(rec))
    }

    pub fn is_synced(&self) -> bool {
        self.store.is_synced()
    }

    /// After a status write the API kept: the cached PVC holds it at once, so the next check
    /// compares against it even before the watch delivers the change (which then overwrites
    /// the record with the server's own).
    pub fn set_health(&self, namespace: &str, name: &str, health: Option<PvcHealth>) {
        let key = format!("{namespace}/{name}");
        if let Some(mut rec) = self.store.get(&key) {
            rec.health = health.map(Box::new);
            self.store.apply(key, rec);
        }
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

type Decoder<T> = Arc<dyn Fn(&Value) -> Option<(String, T)> + Send + Sync>;

struct Reflector<T> {
    name: String,
    client: Client,
    list_path: String,
    query: Vec<(String, String)>,
    decode: Decoder<T>,
    store: Store<T>,
    shutdown: Shutdown,
}

impl<T: Clone + Send + Sync + 'static> Reflector<T> {
    fn path(&self, extra: &[(&str, &str)]) -> String {
        let mut pairs: Vec<(&str, &str)> = self
            .query
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        pairs.extend_from_slice(extra);
        if pairs.is_empty() {
            self.list_path.clone()
        } else {
            format!("{}?{}", self.list_path, encode_query(&pairs))
        }
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

    fn list(&self) -> Outcome {
        let limit = PAGE_SIZE.to_string();
        let mut map = HashMap::new();
        let mut cont: Option<String> = None;
        loop {
            let mut extra = vec![("limit", limit.as_str())];
            if let Some(c) = &cont {
                extra.push(("continue", c.as_str()));
            }
            let path = self.path(&extra);
            let page = match self.client.get(&path) {
                Ok(v) => v,
                Err(e) => {
                    let gone = e.is_gone() && cont.is_some();
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
            let Some(items) = page.get("items").and_then(Value::as_array) else {
                log::warn!(
                    "{}: malformed list response from GET {path}: no items",
                    self.name
                );
                return Outcome::ListFailed {
                    gone: false,
                    retry_after: None,
                };
            };
            for item in items {
                if let Some((k, r)) = (self.decode)(item) {
                    map.insert(k, r);
                }
            }
            let next = page
                .pointer("/metadata/continue")
                .and_then(Value::as_str)
                .filter(|c| !c.is_empty());
            match next {
                Some(c) => cont = Some(c.to_string()),
                None => {
                    let rv = page
                        .pointer("/metadata/resourceVersion")
                        .and_then(Value::as_str)
                        .unwrap_or("");
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
                        resource_version: rv.to_string(),
                    };
                }
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
        let path = self.path(&[
            ("watch", "true"),
            ("allowWatchBookmarks", "true"),
            ("resourceVersion", rv),
            ("timeoutSeconds", &timeout),
        ]);
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
                    bump(&mut last, &o);
                    match (self.decode)(&o) {
                        Some((k, r)) => self.store.apply(k, r),
                        None => {
                            if let Some(k) = object_key(&o) {
                                self.store.remove(&k);
                            }
                        }
                    }
                }
                Ok(WatchEvent::Deleted(o)) => {
                    events += 1;
                    bump(&mut last, &o);
                    if let Some(k) = (self.decode)(&o).map(|(k, _)| k).or_else(|| object_key(&o)) {
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

fn bump(last: &mut String, obj: &Value) {
    if let Some(rv) = obj
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .filter(|r| !r.is_empty())
    {
        *last = rv.to_string();
    }
}

fn spawn_with<T: Clone + Send + Sync + 'static>(
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
    let h = spawn_with(
        reflector(
            name,
            client,
            list_path,
            extra_query,
            Arc::new(T::key_and_record),
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
    let decode: Decoder<PvRecord> =
        Arc::new(move |o| PvRecord::from_object(o, &driver).map(|r| (r.name.clone(), r)));
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
    let decode: Decoder<PvcRecord> = Arc::new(move |o| {
        let r = PvcRecord::from_object(o)?;
        if r.volume_name.is_empty() || filter.get(&r.volume_name).is_none() {
            return None;
        }
        Some((r.key(), r))
    });
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

    #[test]
    fn pv_record_from_object() {
        let ours = PvRecord::from_object(&pv("a", "d", "Bound", "1"), "d").unwrap();
        assert_eq!(
            ours,
            PvRecord {
                name: "a".into(),
                uid: "uid-a".into(),
                volume_handle: "h-a".into(),
                phase: "Bound".into(),
                claim: Some(ClaimRef {
                    namespace: "ns".into(),
                    name: "c-a".into(),
                    uid: "cu".into()
                }),
                deleting: false,
            }
        );
        assert!(ours.is_bound());
        let cases: Vec<(Value, Option<bool>)> = vec![
            (pv("a", "other", "Bound", "1"), None),
            (
                json!({"metadata": {"name": "nfs"}, "spec": {"nfs": {}}}),
                None,
            ),
            (
                json!({"metadata": {"name": "x"}, "spec": {"csi": {"driver": "d"}}}),
                None,
            ),
            (json!("garbage"), None),
            (
                json!({"metadata": {"name": "x"}, "spec": {"csi": {"driver": "d", "volumeHandle": "h"}}}),
                Some(false),
            ),
            (pv("a", "d", "Available", "1"), Some(false)),
            (pv("a", "d", "Released", "1"), Some(false)),
        ];
        for (obj, bound) in cases {
            assert_eq!(
                PvRecord::from_object(&obj, "d").map(|r| r.is_bound()),
                bound,
                "{obj}"
            );
        }
        let mut deleting = pv("a", "d", "Bound", "1");
        deleting["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        assert!(PvRecord::from_object(&deleting, "d").unwrap().deleting);
    }

    #[test]
    fn pvc_record_and_keys() {
        let o = json!({"metadata": {"name": "c", "namespace": "ns", "uid": "u", "resourceVersion": "7"}, "spec": {"volumeName": "pv1"}});
        let r = PvcRecord::from_object(&o).unwrap();
        assert_eq!(
            (r.key(), r.resource_version.as_str(), r.volume_name.as_str()),
            ("ns/c".to_string(), "7", "pv1")
        );
        assert_eq!(object_key(&o).as_deref(), Some("ns/c"));
        assert_eq!(
            object_key(&json!({"metadata": {"name": "n"}})).as_deref(),
            Some("n")
        );
        assert_eq!(
            PvcRecord::from_object(&json!({"metadata": {"name": "c"}})),
            None
        );
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

    #[test]
    fn store_generation_moves_with_every_change_and_only_then() {
        let s: Store<u32> = Store::new();
        let g0 = s.generation();
        s.apply("a".into(), 1);
        let g1 = s.generation();
        assert_ne!(g0, g1);
        let _ = s.snapshot();
        let _ = s.get("a");
        assert_eq!(s.generation(), g1, "reads change nothing");
        assert!(!s.insert_if_absent("a".into(), 2));
        assert_eq!(s.generation(), g1, "a refused insert changes nothing");
        s.remove("missing");
        assert_eq!(s.generation(), g1, "removing nothing changes nothing");
        s.remove("a");
        let g2 = s.generation();
        assert_ne!(g1, g2);
        s.replace(HashMap::new());
        assert_ne!(s.generation(), g2);
    }

    #[test]
    fn store_snapshots_are_isolated_and_replace_notifies() {
        let s: Store<u32> = Store::new();
        let rx = s.subscribe();
        s.apply("a".into(), 1);
        let snap = s.snapshot();
        s.apply("b".into(), 2);
        s.remove("a");
        s.remove("missing");
        assert_eq!(snap.len(), 1, "a snapshot does not see later writes");
        assert_eq!((s.get("b"), s.get("a"), s.len()), (Some(2), None, 1));
        assert!(!s.is_synced());
        s.replace(HashMap::from([("c".to_string(), 3), ("b".to_string(), 4)]));
        assert!(s.is_synced());
        let got: Vec<Change<u32>> = rx.try_iter().collect();
        assert_eq!(
            got[0],
            Change::Applied {
                key: "a".into(),
                old: None,
                new: 1
            }
        );
        assert_eq!(
            got[2],
            Change::Deleted {
                key: "a".into(),
                old: 1
            }
        );
        assert!(got.contains(&Change::Applied {
            key: "b".into(),
            old: Some(2),
            new: 4
        }));
        assert!(got.contains(&Change::Applied {
            key: "c".into(),
            old: None,
            new: 3
        }));
        assert_eq!(got.last(), Some(&Change::Resynced));
        assert!(!got
            .iter()
            .any(|c| matches!(c, Change::Deleted { key, .. } if key == "b")));
    }

    #[test]
    fn wait_synced_wakes_on_sync_and_on_shutdown() {
        let s: Store<u32> = Store::new();
        let sd = Shutdown::new();
        let s2 = s.clone();
        let sd2 = sd.clone();
        let t = std::thread::spawn(move || s2.wait_synced(Duration::from_secs(60), &sd2));
        s.replace(HashMap::new());
        assert!(t.join().unwrap());

        let unsynced: Store<u32> = Store::new();
        let sd3 = sd.clone();
        let u2 = unsynced.clone();
        let t = std::thread::spawn(move || u2.wait_synced(Duration::from_secs(60), &sd3));
        sd.trigger();
        assert!(!t.join().unwrap());
        assert!(!Store::<u32>::new().wait_synced(Duration::from_millis(10), &Shutdown::new()));
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
            pvcs.get("ns", "c-a").map(|r| r.volume_name),
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
        assert_eq!(got.name, "late");
        assert_eq!(pvcs.get("ns", "late"), Some(got));
        assert!(pvcs.get_or_fetch(&c2, "ns", "c-a").unwrap().is_some());
        assert_eq!(pvcs.get_or_fetch(&c2, "ns", "missing").unwrap(), None);
        assert_eq!(srv2.requests().len(), 2);
    }

    #[derive(Clone, Debug, PartialEq)]
    struct NodeName(String);
    impl Resource for NodeName {
        fn key_and_record(obj: &Value) -> Option<(String, Self)> {
            let k = object_key(obj)?;
            Some((k.clone(), NodeName(k)))
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
