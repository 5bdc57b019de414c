//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go's LeaderElector does it
//! (upstream §9): lease name, namespace and identity resolution, the acquire/renew/release loop
//! on its own thread, the `LeaderElection` event, and the state behind
//! `/healthz/leader-election`.
//!
//! Expiry is judged by local observation, never by comparing clocks: a lease held by someone
//! else is free once its record has not changed for `leaseDurationSeconds` (the holder's value)
//! of our own monotonic time. That keeps a Rust replica and a Go replica sharing one Lease from
//! leading at the same time.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::Sender;
use serde::{Deserialize, Serialize};

use crate::events::{Event, EventBody, EventSink, EventType, ObjectRef};
use crate::kube;
use crate::shutdown::Shutdown;
use crate::timeutil::{jitter, rfc3339_micros};

/// client-go's `JitterFactor` for the acquire loop.
const JITTER_FACTOR: f64 = 1.2;
/// client-go's HealthzAdaptor tolerance on top of the lease duration (csi-lib-utils' value).
pub const HEALTHZ_TOLERANCE: Duration = Duration::from_secs(20);
const SERVICE_ACCOUNT_NAMESPACE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";
const LEASE_API_VERSION: &str = "coordination.k8s.io/v1";

/// A `coordination.k8s.io/v1` Lease as the lease loop reads it and writes it back.
///
/// client-go's LeaseLock does Get → typed Lease → change spec and labels → Update, so its PUT
/// carries what its typed Lease knows and nothing else; this does the same with the fields below.
/// A PUT replaces the object, so everything of `metadata` a PUT would otherwise remove is carried
/// (see [`LeaseMeta`]); the spec keeps the two fields newer than the election record.
///
/// Fields are declared in alphabetical order, the order the JSON bodies had when they were built
/// as a `serde_json::Value` map, so the bytes on the wire did not change with the types.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Lease {
    /// Never read: every body we send sets it to [`LEASE_API_VERSION`].
    #[serde(default, skip_deserializing)]
    pub api_version: String,
    /// Never read: every body we send sets it to `Lease`.
    #[serde(default, skip_deserializing)]
    pub kind: String,
    /// Strict: a metadata field of the wrong type makes the Lease malformed (an error naming it),
    /// since a PUT built on a guessed resourceVersion or uid would not be the conditional write
    /// it must be.
    #[serde(default)]
    pub metadata: LeaseMeta,
    /// Lenient: see [`zero_if_malformed`].
    #[serde(default, deserialize_with = "kube::object::zero_if_malformed")]
    pub spec: LeaseSpec,
}

/// `metadata` of a Lease: what client-go's typed `ObjectMeta` would send back on its Update,
/// less `managedFields` and `selfLink`.
///
/// - `resourceVersion` makes the PUT conditional (409 when someone wrote first), `uid` makes it
///   fail on a Lease deleted and re-created meanwhile; the event names the Lease by them too.
/// - `labels`, `annotations`, `ownerReferences` and `finalizers` are user data a PUT without them
///   would delete (an admin's annotation, a garbage-collection owner, a finalizer).
/// - `generateName`, `generation`, `creationTimestamp`, `deletionTimestamp` and
///   `deletionGracePeriodSeconds` are carried as read, as client-go does, although the server
///   keeps its own values of them on an update.
/// - `managedFields` is left out: an update that does not mention it keeps the server's (only an
///   explicit single empty entry clears it; Kubernetes docs, Server-Side Apply, "Clearing
///   managedFields"), and it is the largest part of most objects, which we never read.
/// - `selfLink` is deprecated and no longer set by the server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseMeta {
    #[serde(
        default,
        deserialize_with = "kube::object::null_as_empty",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_grace_period_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_timestamp: Option<String>,
    #[serde(
        default,
        deserialize_with = "kube::object::null_as_empty",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub finalizers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generate_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    #[serde(
        default,
        deserialize_with = "kube::object::null_as_empty",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(
        default,
        deserialize_with = "kube::object::null_as_empty",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub owner_references: Vec<OwnerReference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

/// A metav1 `OwnerReference`, every field of it: carried back whole so a PUT keeps the owner.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnerReference {
    #[serde(default)]
    pub api_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_owner_deletion: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller: Option<bool>,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub uid: String,
}

/// `spec` of a Lease. The five fields of client-go's `LeaderElectionRecord` are always written
/// (`null` for a time we do not have, as before); `preferredHolder` and `strategy` (coordinated
/// leader election, Kubernetes 1.31+) are not ours, so they are written back as read and left out
/// when absent. MicroTimes stay the strings read (see [`LeaseRecord`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseSpec {
    #[serde(default, deserialize_with = "kube::object::zero_if_malformed")]
    pub acquire_time: Option<String>,
    #[serde(default, deserialize_with = "kube::object::zero_if_malformed")]
    pub holder_identity: Option<String>,
    #[serde(default, deserialize_with = "kube::object::zero_if_malformed")]
    pub lease_duration_seconds: Option<i64>,
    #[serde(default, deserialize_with = "kube::object::zero_if_malformed")]
    pub lease_transitions: Option<i64>,
    #[serde(
        default,
        deserialize_with = "kube::object::zero_if_malformed",
        skip_serializing_if = "Option::is_none"
    )]
    pub preferred_holder: Option<String>,
    #[serde(default, deserialize_with = "kube::object::zero_if_malformed")]
    pub renew_time: Option<String>,
    #[serde(
        default,
        deserialize_with = "kube::object::zero_if_malformed",
        skip_serializing_if = "Option::is_none"
    )]
    pub strategy: Option<String>,
}

/// A Lease the server sent that does not decode (not an object, metadata of the wrong shape):
/// the error names the Lease, since a POST's path does not.
fn malformed(namespace: &str, name: &str, e: kube::Error) -> kube::Error {
    match e {
        kube::Error::Decode { what, message } => kube::Error::Decode {
            what: format!("{what} (lease {namespace}/{name})"),
            message,
        },
        e => e,
    }
}

/// The Kubernetes calls the lease loop makes; a seam so the loop is tested without a server.
pub trait LeaseApi: Send + 'static {
    /// `None` when the Lease does not exist (404).
    fn get(&self, namespace: &str, name: &str) -> Result<Option<Lease>, kube::Error>;
    fn create(&self, namespace: &str, lease: &Lease) -> Result<Lease, kube::Error>;
    /// PUT; 409 when `metadata.resourceVersion` is stale.
    fn update(&self, namespace: &str, name: &str, lease: &Lease) -> Result<Lease, kube::Error>;
    fn create_event(&self, namespace: &str, event: &EventBody<'_>) -> Result<(), kube::Error>;
    /// Bounds the calls that follow by `deadline` (None lifts it), as client-go's renew context
    /// does: a hanging request must not keep a leader leading past its renew deadline.
    fn set_deadline(&mut self, _deadline: Option<Instant>) {}
}

fn leases_path(namespace: &str) -> String {
    format!("/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases")
}

impl LeaseApi for kube::Client {
    fn get(&self, namespace: &str, name: &str) -> Result<Option<Lease>, kube::Error> {
        match self.get_as(&format!("{}/{name}", leases_path(namespace))) {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(malformed(namespace, name, e)),
        }
    }
    fn create(&self, namespace: &str, lease: &Lease) -> Result<Lease, kube::Error> {
        let name = lease.metadata.name.as_deref().unwrap_or_default();
        self.send_as("POST", &leases_path(namespace), lease)
            .map_err(|e| malformed(namespace, name, e))
    }
    fn update(&self, namespace: &str, name: &str, lease: &Lease) -> Result<Lease, kube::Error> {
        let path = format!("{}/{name}", leases_path(namespace));
        self.send_as("PUT", &path, lease)
            .map_err(|e| malformed(namespace, name, e))
    }
    fn create_event(&self, namespace: &str, event: &EventBody<'_>) -> Result<(), kube::Error> {
        EventSink::create(self, namespace, event).map(drop)
    }
    fn set_deadline(&mut self, deadline: Option<Instant>) {
        kube::Client::set_deadline(self, deadline)
    }
}

/// What the lease loop tells the rest of the program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaderEvent {
    /// We hold the lease: start the controller.
    StartedLeading,
    /// We could not renew within renewDeadline: leadership is lost (upstream exits 1). Not sent
    /// on a shutdown-triggered release.
    StoppedLeading,
    /// Another replica (this sanitized identity) holds the lease.
    NewLeader(String),
}

pub struct LeaderSettings {
    pub lease_name: String,
    pub namespace: String,
    /// The hostname as is; the lease holder is its sanitized form.
    pub identity: String,
    pub labels: BTreeMap<String, String>,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

/// Replaces every character outside `[a-zA-Z0-9-]` with `-` and appends `X` to a trailing `-`
/// (csi-lib-utils; no lowercasing, no truncation).
pub fn sanitize(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if out.ends_with('-') {
        out.push('X');
    }
    out
}

pub fn lease_name(driver: &str) -> String {
    sanitize(&format!("external-health-monitor-leader-{driver}"))
}

/// The flag, else `$POD_NAMESPACE`, else the service-account namespace file, else `default`.
pub fn resolve_namespace(flag: &str) -> String {
    resolve_namespace_with(flag, &|k| std::env::var(k).ok(), &|p| {
        std::fs::read_to_string(p).ok()
    })
}

pub fn resolve_namespace_with(
    flag: &str,
    env: &dyn Fn(&str) -> Option<String>,
    read_file: &dyn Fn(&Path) -> Option<String>,
) -> String {
    if !flag.is_empty() {
        return flag.to_string();
    }
    if let Some(ns) = env("POD_NAMESPACE").filter(|s| !s.is_empty()) {
        return ns;
    }
    if let Some(ns) = read_file(Path::new(SERVICE_ACCOUNT_NAMESPACE)) {
        let ns = ns.trim();
        if !ns.is_empty() {
            return ns.to_string();
        }
    }
    "default".to_string()
}

/// The hostname (the pod name in Kubernetes), unsanitized, as Go's `os.Hostname` reads it.
pub fn identity() -> String {
    identity_with(&|k| std::env::var(k).ok(), &|p| {
        std::fs::read_to_string(p).ok()
    })
}

pub fn identity_with(
    env: &dyn Fn(&str) -> Option<String>,
    read_file: &dyn Fn(&Path) -> Option<String>,
) -> String {
    let from_proc = read_file(Path::new("/proc/sys/kernel/hostname")).map(|s| s.trim().to_string());
    if let Some(h) = from_proc.filter(|h| !h.is_empty()) {
        return h;
    }
    if let Some(h) = env("HOSTNAME")
        .map(|s| s.trim().to_string())
        .filter(|h| !h.is_empty())
    {
        return h;
    }
    log::warn!(
        "Cannot determine the hostname, using \"localhost\" as the leader election identity"
    );
    "localhost".to_string()
}

/// The `spec` of a Lease as client-go's `LeaderElectionRecord` sees it. Times are kept as the
/// strings read, so "has the record changed" is an exact comparison, like client-go's raw bytes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LeaseRecord {
    pub holder: String,
    pub lease_duration_seconds: i64,
    pub acquire_time: Option<String>,
    pub renew_time: Option<String>,
    pub lease_transitions: i64,
}

impl LeaseRecord {
    /// Missing (or, see [`zero_if_malformed`], malformed) fields read as their zero value.
    pub fn from_lease(lease: &Lease) -> LeaseRecord {
        let spec = &lease.spec;
        LeaseRecord {
            holder: spec.holder_identity.clone().unwrap_or_default(),
            lease_duration_seconds: spec.lease_duration_seconds.unwrap_or(0),
            acquire_time: spec.acquire_time.clone(),
            renew_time: spec.renew_time.clone(),
            lease_transitions: spec.lease_transitions.unwrap_or(0),
        }
    }

    /// Writes the record into `spec`, leaving the fields that are not the record's as they are.
    fn write_to(&self, spec: &mut LeaseSpec) {
        spec.holder_identity = Some(self.holder.clone());
        spec.lease_duration_seconds = Some(self.lease_duration_seconds);
        spec.acquire_time = self.acquire_time.clone();
        spec.renew_time = self.renew_time.clone();
        spec.lease_transitions = Some(self.lease_transitions);
    }

    /// The holder's duration, at most [`MAX_LEASE_DURATION`].
    fn lease_duration(&self) -> Duration {
        Duration::from_secs(self.lease_duration_seconds.max(0) as u64).min(MAX_LEASE_DURATION)
    }

    fn claims_more_than_honoured(&self) -> bool {
        self.lease_duration_seconds > MAX_LEASE_DURATION.as_secs() as i64
    }
}

/// The longest lease a holder's record is honoured for. `leaseDurationSeconds` is whatever the
/// holder wrote: `i64::MAX` would keep every other replica waiting for ever (client-go's
/// `Duration * time.Second` wraps it to a negative, "expired", which is no saner). One hour is
/// 240 times the default 15 s, far above the durations in common use (seconds to a few
/// minutes); our own
/// `--leader-election-lease-duration` is held to the same bound, so no replica of ours takes a
/// lease over early.
pub const MAX_LEASE_DURATION: Duration = Duration::from_secs(3600);

/// The record we last saw and when (our monotonic clock) we first saw it in that form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedLease {
    pub record: LeaseRecord,
    pub at: Instant,
}

/// Folds a freshly read record into what we had: the observation time only moves when the
/// record changed, so a holder that stopped renewing ages out.
pub fn observe(prev: Option<&ObservedLease>, fresh: LeaseRecord, now: Instant) -> ObservedLease {
    match prev {
        Some(p) if p.record == fresh => p.clone(),
        _ => ObservedLease {
            record: fresh,
            at: now,
        },
    }
}

/// client-go's `isLeaseValid`: the holder's own duration (at most [`MAX_LEASE_DURATION`]),
/// counted from our observation. Written as "time since observed < duration" so no holder's
/// value can overflow `Instant`.
pub fn lease_valid(obs: &ObservedLease, now: Instant) -> bool {
    now.saturating_duration_since(obs.at) < obs.record.lease_duration()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// No Lease exists.
    Create,
    /// Held by someone else and not expired.
    Wait,
    /// We hold it: write a new renewTime, keeping acquireTime and leaseTransitions.
    Renew,
    /// Free, released or expired: write ourselves as holder, leaseTransitions + 1.
    TakeOver,
}

/// The heart of client-go's `tryAcquireOrRenew` after the GET: `observed` already includes
/// the record just read (`None` when the Lease does not exist).
pub fn decide(observed: Option<&ObservedLease>, now: Instant, me: &str) -> Decision {
    let Some(obs) = observed else {
        return Decision::Create;
    };
    let leader = obs.record.holder == me;
    if !obs.record.holder.is_empty() && lease_valid(obs, now) && !leader {
        Decision::Wait
    } else if leader {
        Decision::Renew
    } else {
        Decision::TakeOver
    }
}

/// The record to write for `decision`; `None` for `Wait`.
pub fn next_record(
    decision: Decision,
    observed: Option<&LeaseRecord>,
    me: &str,
    lease_duration: Duration,
    now: SystemTime,
) -> Option<LeaseRecord> {
    let now_s = rfc3339_micros(now);
    let mut rec = LeaseRecord {
        holder: me.to_string(),
        // client-go: int(LeaseDuration / time.Second), truncating.
        lease_duration_seconds: lease_duration.as_secs() as i64,
        acquire_time: Some(now_s.clone()),
        renew_time: Some(now_s),
        lease_transitions: 0,
    };
    match decision {
        Decision::Wait => return None,
        Decision::Create => {}
        Decision::Renew => {
            if let Some(o) = observed {
                rec.acquire_time = o.acquire_time.clone();
                rec.lease_transitions = o.lease_transitions;
            }
        }
        Decision::TakeOver => {
            // The count is the holder's to write: one at i64::MAX stays there rather than
            // wrapping to a negative count (or panicking in a checked build).
            rec.lease_transitions = observed
                .map_or(0, |o| o.lease_transitions)
                .saturating_add(1)
        }
    }
    Some(rec)
}

/// The record client-go's `release` writes: empty holder, 1 s, transitions kept.
pub fn release_record(observed: &LeaseRecord, now: SystemTime) -> LeaseRecord {
    let now_s = rfc3339_micros(now);
    LeaseRecord {
        holder: String::new(),
        lease_duration_seconds: 1,
        acquire_time: Some(now_s.clone()),
        renew_time: Some(now_s),
        lease_transitions: observed.lease_transitions,
    }
}

/// A new Lease (POST body).
pub fn lease_for_create(
    name: &str,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    rec: &LeaseRecord,
) -> Lease {
    let mut lease = Lease {
        api_version: LEASE_API_VERSION.to_string(),
        kind: "Lease".to_string(),
        metadata: LeaseMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: labels.clone(),
            ..LeaseMeta::default()
        },
        spec: LeaseSpec::default(),
    };
    rec.write_to(&mut lease.spec);
    lease
}

/// The PUT body: the Lease as last read (so its resourceVersion makes the write conditional),
/// with the record's fields replaced, other spec fields kept and our labels merged in.
pub fn lease_for_update(
    current: &Lease,
    labels: &BTreeMap<String, String>,
    rec: &LeaseRecord,
) -> Lease {
    let mut lease = current.clone();
    lease.api_version = LEASE_API_VERSION.to_string();
    lease.kind = "Lease".to_string();
    lease
        .metadata
        .labels
        .extend(labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    rec.write_to(&mut lease.spec);
    lease
}

/// The `LeaderElection` event client-go's recorder writes on the Lease, built by the events
/// module as every other event is (name generation with its DNS-subdomain fallback included).
pub fn leader_event(
    lease: &Lease,
    lease_name: &str,
    namespace: &str,
    identity: &str,
    message: &str,
    now: SystemTime,
) -> Event {
    let meta = &lease.metadata;
    let object = ObjectRef {
        kind: "Lease".to_string(),
        api_version: LEASE_API_VERSION.to_string(),
        namespace: meta.namespace.as_deref().unwrap_or(namespace).to_string(),
        name: meta.name.as_deref().unwrap_or(lease_name).to_string(),
        uid: meta.uid.clone().unwrap_or_default(),
        resource_version: meta.resource_version.clone().unwrap_or_default(),
    };
    let component = format!("{lease_name}/{identity}");
    Event::new(
        &component,
        &object,
        EventType::Normal,
        "LeaderElection",
        message,
        now,
    )
}

/// Leadership state shared with the HTTP server's `/healthz/leader-election`, and mirrored in
/// `leader_election_master_status` when given that gauge.
#[derive(Debug, Default)]
pub struct LeaderStatus {
    leader: AtomicBool,
    last_renew: Mutex<Option<Instant>>,
    /// client-go's leader metric: 1 from acquiring until losing or releasing the lease, else 0.
    gauge: Option<prometheus::Gauge>,
}

impl LeaderStatus {
    pub fn new() -> LeaderStatus {
        LeaderStatus::default()
    }

    /// A status whose changes also set `gauge` (client-go's `leaderOn` / `leaderOff`).
    pub fn with_gauge(gauge: prometheus::Gauge) -> LeaderStatus {
        LeaderStatus {
            gauge: Some(gauge),
            ..LeaderStatus::default()
        }
    }

    fn set_gauge(&self, leading: bool) {
        if let Some(g) = &self.gauge {
            g.set(if leading { 1.0 } else { 0.0 });
        }
    }

    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::SeqCst)
    }

    /// Our monotonic time of the last successful acquire or renew.
    pub fn last_renew(&self) -> Option<Instant> {
        *crate::sync::lock(&self.last_renew)
    }

    pub fn mark_leading(&self, at: Instant) {
        self.mark_renewed(at);
        self.leader.store(true, Ordering::SeqCst);
        self.set_gauge(true);
    }

    pub fn mark_renewed(&self, at: Instant) {
        *crate::sync::lock(&self.last_renew) = Some(at);
    }

    /// Lost (renewal failed) or released (shutdown): the gauge says so as well.
    pub fn mark_stopped(&self) {
        self.leader.store(false, Ordering::SeqCst);
        self.set_gauge(false);
    }

    /// client-go's `LeaderElector.Check` with csi-lib-utils' 20 s tolerance. The lease name in
    /// the message is empty upstream (the elector's config has no name), and so it is here.
    pub fn healthz(&self, now: Instant, lease_duration: Duration) -> Result<(), String> {
        if !self.is_leader() {
            return Ok(());
        }
        match self.last_renew() {
            Some(t) if now.saturating_duration_since(t) > lease_duration + HEALTHZ_TOLERANCE => {
                Err("failed election to renew leadership on lease ".to_string())
            }
            _ => Ok(()),
        }
    }
}

/// Starts the lease loop on thread `leader-election`. When `shutdown` triggers while leading,
/// the lease is released (DESIGN §2.6) before the thread ends.
pub fn spawn(
    api: impl LeaseApi,
    settings: LeaderSettings,
    status: Arc<LeaderStatus>,
    events: Sender<LeaderEvent>,
    shutdown: Shutdown,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("leader-election".into())
        .spawn(move || {
            let mut el = Elector::new(api, settings, status, events);
            el.run(&shutdown);
        })
}

struct Elector<A: LeaseApi> {
    api: A,
    me: String,
    s: LeaderSettings,
    status: Arc<LeaderStatus>,
    events: Sender<LeaderEvent>,
    observed: Option<ObservedLease>,
    /// The Lease object as last read or written: the base of the next PUT.
    lease: Option<Lease>,
    reported_leader: String,
}

impl<A: LeaseApi> Elector<A> {
    fn new(
        api: A,
        s: LeaderSettings,
        status: Arc<LeaderStatus>,
        events: Sender<LeaderEvent>,
    ) -> Self {
        Elector {
            me: sanitize(&s.identity),
            api,
            s,
            status,
            events,
            observed: None,
            lease: None,
            reported_leader: String::new(),
        }
    }

    fn describe(&self) -> String {
        format!("{}/{}", self.s.namespace, self.s.lease_name)
    }

    fn is_leader(&self) -> bool {
        self.observed
            .as_ref()
            .is_some_and(|o| o.record.holder == self.me)
    }

    fn run(&mut self, shutdown: &Shutdown) {
        if !self.acquire(shutdown) {
            return;
        }
        if self.renew(shutdown) {
            self.release();
        }
        self.status.mark_stopped();
    }

    /// client-go's `acquire`: returns false when shutdown came first.
    fn acquire(&mut self, shutdown: &Shutdown) -> bool {
        let desc = self.describe();
        log::info!(lease:% = desc; "Attempting to acquire leader lease...");
        loop {
            if shutdown.is_triggered() {
                return false;
            }
            let ok = self.try_acquire_or_renew();
            self.maybe_report_transition();
            if ok {
                break;
            }
            crate::vlog!(4, lease:% = desc; "Failed to acquire lease");
            if shutdown.wait_timeout(jitter(self.s.retry_period, JITTER_FACTOR)) {
                return false;
            }
        }
        self.status.mark_leading(Instant::now());
        log::info!(lease:% = desc; "Successfully acquired lease");
        let _ = self.events.send(LeaderEvent::StartedLeading);
        self.record_event("became leader");
        true
    }

    /// client-go's `renew`: returns true when shutdown ended it (release wanted), false when
    /// leadership was lost.
    fn renew(&mut self, shutdown: &Shutdown) -> bool {
        let desc = self.describe();
        loop {
            if shutdown.wait_timeout(self.s.retry_period) {
                return true;
            }
            crate::crash::fault_point("leader");
            let deadline = Instant::now() + self.s.renew_deadline;
            self.api.set_deadline(Some(deadline));
            let renewed = loop {
                let ok = self.try_acquire_or_renew();
                self.maybe_report_transition();
                if ok {
                    break true;
                }
                let now = Instant::now();
                if now >= deadline {
                    break false;
                }
                // Poll every retryPeriod, giving up when renewDeadline passes (client-go's
                // PollUntilContextTimeout): no try at or after the deadline.
                let wait = self.s.retry_period.min(deadline - now);
                if shutdown.wait_timeout(wait) {
                    return true;
                }
                if Instant::now() >= deadline {
                    break false;
                }
            };
            self.api.set_deadline(None);
            if renewed {
                self.status.mark_renewed(Instant::now());
                crate::vlog!(5, lease:% = desc; "Successfully renewed lease");
                continue;
            }
            log::info!(
                lease:% = desc, err:% = "timed out waiting for the condition";
                "Failed to renew lease"
            );
            self.status.mark_stopped();
            let _ = self.events.send(LeaderEvent::StoppedLeading);
            return false;
        }
    }

    /// client-go's `tryAcquireOrRenew`.
    fn try_acquire_or_renew(&mut self) -> bool {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let (ns, name) = (self.s.namespace.clone(), self.s.lease_name.clone());

        // Fast path: we are the leader and our last write is presumably the current version.
        if let (true, Some(obs), Some(lease)) = (self.is_leader(), &self.observed, &self.lease) {
            if lease_valid(obs, now) {
                let rec = next_record(
                    Decision::Renew,
                    Some(&obs.record),
                    &self.me,
                    self.s.lease_duration,
                    wall,
                );
                if let Some(rec) = rec {
                    match self.api.update(
                        &ns,
                        &name,
                        &lease_for_update(lease, &self.s.labels, &rec),
                    ) {
                        Ok(v) => {
                            self.wrote(v, rec, now);
                            return true;
                        }
                        Err(e) => crate::vlog!(
                            2,
                            lease:% = self.describe(), err:% = e;
                            "Failed to update lease optimistically, falling back to slow path"
                        ),
                    }
                }
            }
        }

        let current = match self.api.get(&ns, &name) {
            Ok(c) => c,
            Err(e) => {
                log::error!(
                    lease:% = self.describe(), err:% = e;
                    "Error retrieving lease lock"
                );
                return false;
            }
        };
        let Some(current) = current else {
            let Some(rec) = next_record(
                Decision::Create,
                None,
                &self.me,
                self.s.lease_duration,
                wall,
            ) else {
                return false;
            };
            return match self
                .api
                .create(&ns, &lease_for_create(&name, &ns, &self.s.labels, &rec))
            {
                Ok(v) => {
                    self.wrote(v, rec, now);
                    true
                }
                Err(e) => {
                    log::error!(
                        lease:% = self.describe(), err:% = e;
                        "Error initially creating lease lock"
                    );
                    false
                }
            };
        };
        let fresh = LeaseRecord::from_lease(&current);
        let was_over = self
            .observed
            .as_ref()
            .is_some_and(|o| o.record.claims_more_than_honoured());
        if fresh.claims_more_than_honoured() && !was_over {
            log::warn!(
                lease:% = self.describe(),
                holder:% = fresh.holder,
                leaseDurationSeconds = fresh.lease_duration_seconds;
                "Lease holder claims a longer lease than is honoured, counting {}s",
                MAX_LEASE_DURATION.as_secs()
            );
        }
        self.observed = Some(observe(self.observed.as_ref(), fresh, now));
        self.lease = Some(current);
        let observed = self.observed.as_ref().map(|o| &o.record);
        let decision = decide(self.observed.as_ref(), now, &self.me);
        let Some(rec) = next_record(decision, observed, &self.me, self.s.lease_duration, wall)
        else {
            let holder = observed.map(|o| o.holder.as_str()).unwrap_or_default();
            crate::vlog!(
                4,
                holder:% = holder, lease:% = self.describe();
                "Lease is held by and has not yet expired"
            );
            return false;
        };
        let body = match &self.lease {
            Some(l) => lease_for_update(l, &self.s.labels, &rec),
            None => return false,
        };
        match self.api.update(&ns, &name, &body) {
            Ok(v) => {
                self.wrote(v, rec, now);
                true
            }
            Err(e) if e.is_conflict() => {
                // Someone wrote first; the next round re-reads.
                crate::vlog!(
                    4,
                    lease:% = self.describe(), err:% = e;
                    "Failed to update lease, it changed since it was read"
                );
                false
            }
            Err(e) => {
                log::error!(
                    lease:% = self.describe(), err:% = e;
                    "Failed to update lease"
                );
                false
            }
        }
    }

    /// After a successful create or update: we observe what we wrote, now.
    fn wrote(&mut self, response: Lease, rec: LeaseRecord, now: Instant) {
        self.lease = Some(response);
        self.observed = Some(ObservedLease {
            record: rec,
            at: now,
        });
    }

    fn maybe_report_transition(&mut self) {
        let Some(holder) = self.observed.as_ref().map(|o| o.record.holder.clone()) else {
            return;
        };
        if holder == self.reported_leader {
            return;
        }
        self.reported_leader = holder.clone();
        // csi-lib-utils ignores its own identity; a released (empty) holder is nobody.
        if holder != self.me && !holder.is_empty() {
            let _ = self.events.send(LeaderEvent::NewLeader(holder));
        }
    }

    /// client-go's `RecordEvent`: best effort, a failure is only logged.
    fn record_event(&self, what: &str) {
        let Some(lease) = &self.lease else { return };
        let ev = leader_event(
            lease,
            &self.s.lease_name,
            &self.s.namespace,
            &self.s.identity,
            &format!("{} {what}", self.me),
            SystemTime::now(),
        );
        if let Err(e) = self.api.create_event(&self.s.namespace, &ev.create_body()) {
            log::error!(
                reason:% = "LeaderElection", lease:% = self.describe(), err:% = e;
                "Server rejected event (will not retry!)"
            );
        }
    }

    /// client-go's `release` (ReleaseOnCancel): hand the lease back so another replica can take
    /// it at once instead of waiting for expiry. Re-reads first so the write is conditional on
    /// the current version and never clobbers a lease someone else holds.
    fn release(&mut self) {
        // Shutdown may have interrupted a renewal: its deadline is not the release's.
        self.api.set_deadline(None);
        if !self.is_leader() {
            return;
        }
        let (ns, name) = (self.s.namespace.clone(), self.s.lease_name.clone());
        match self.api.get(&ns, &name) {
            Ok(Some(current)) => {
                if LeaseRecord::from_lease(&current).holder != self.me {
                    return;
                }
                self.lease = Some(current);
            }
            Ok(None) => return,
            Err(e) => {
                log::error!(
                    lease:% = self.describe(), err:% = e;
                    "Error retrieving lease lock"
                );
                return;
            }
        }
        let (Some(obs), Some(lease)) = (&self.observed, &self.lease) else {
            return;
        };
        let rec = release_record(&obs.record, SystemTime::now());
        match self
            .api
            .update(&ns, &name, &lease_for_update(lease, &self.s.labels, &rec))
        {
            Ok(v) => {
                self.wrote(v, rec, Instant::now());
                log::info!(lease:% = self.describe(); "Released lease");
                self.record_event("stopped leading");
            }
            Err(e) => log::error!(
                lease:% = self.describe(), err:% = e;
                "Failed to release lease"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::Receiver;
    use serde_json::{json, Value};
    use std::collections::HashMap;
    use std::sync::atomic::AtomicUsize;
    use std::time::UNIX_EPOCH;

    // ---- pure parts ----

    #[test]
    fn sanitize_like_csi_lib_utils() {
        for (input, want) in [
            ("hostpath.csi.k8s.io", "hostpath-csi-k8s-io"),
            ("my_pod-0", "my-pod-0"),
            ("Upper.Case", "Upper-Case"),
            ("ends.", "ends-X"),
            ("ends-", "ends-X"),
            ("a/b:c", "a-b-c"),
            ("ünï", "-n-X"),
            ("", ""),
        ] {
            assert_eq!(sanitize(input), want, "{input}");
        }
        assert_eq!(
            lease_name("hostpath.csi.k8s.io"),
            "external-health-monitor-leader-hostpath-csi-k8s-io"
        );
    }

    #[test]
    fn namespace_resolution_order() {
        let env_with = |v: Option<&'static str>| {
            move |k: &str| {
                if k == "POD_NAMESPACE" {
                    v.map(String::from)
                } else {
                    None
                }
            }
        };
        let file_with = |v: Option<&'static str>| {
            move |p: &Path| {
                if p == Path::new(SERVICE_ACCOUNT_NAMESPACE) {
                    v.map(String::from)
                } else {
                    None
                }
            }
        };
        let cases = [
            ("flag-ns", Some("pod-ns"), Some("sa-ns\n"), "flag-ns"),
            ("", Some("pod-ns"), Some("sa-ns\n"), "pod-ns"),
            ("", Some(""), Some(" sa-ns\n"), "sa-ns"),
            ("", None, Some("sa-ns"), "sa-ns"),
            ("", None, Some("  \n"), "default"),
            ("", None, None, "default"),
        ];
        for (flag, env, file, want) in cases {
            assert_eq!(
                resolve_namespace_with(flag, &env_with(env), &file_with(file)),
                want,
                "{flag:?} {env:?} {file:?}"
            );
        }
    }

    #[test]
    fn identity_prefers_kernel_hostname() {
        let env = |k: &str| (k == "HOSTNAME").then(|| "env-host".to_string());
        let none = |_: &str| None;
        let file = |_: &Path| Some("pod-abc.x\n".to_string());
        let no_file = |_: &Path| None;
        assert_eq!(identity_with(&env, &file), "pod-abc.x");
        assert_eq!(identity_with(&env, &no_file), "env-host");
        assert_eq!(identity_with(&none, &no_file), "localhost");
    }

    fn rec(holder: &str, secs: i64, renew: &str, transitions: i64) -> LeaseRecord {
        LeaseRecord {
            holder: holder.into(),
            lease_duration_seconds: secs,
            acquire_time: Some("2026-01-01T00:00:00.000000Z".into()),
            renew_time: Some(renew.into()),
            lease_transitions: transitions,
        }
    }

    #[test]
    fn decide_table() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let obs = |holder: &str, secs: i64, at: Instant| ObservedLease {
            record: rec(holder, secs, "r", 3),
            at,
        };
        let cases: Vec<(Option<ObservedLease>, Instant, &str, Decision)> = vec![
            (None, t0, "me", Decision::Create),
            (Some(obs("other", 15, t0)), t0 + s(14), "me", Decision::Wait),
            (
                Some(obs("other", 15, t0)),
                t0 + s(15),
                "me",
                Decision::TakeOver,
            ),
            (
                Some(obs("other", 15, t0)),
                t0 + s(100),
                "me",
                Decision::TakeOver,
            ),
            // A released lease is free at once, whatever its duration says.
            (Some(obs("", 15, t0)), t0, "me", Decision::TakeOver),
            (Some(obs("me", 15, t0)), t0 + s(1), "me", Decision::Renew),
            // Our own expired record: still ours to renew (client-go IsLeader).
            (Some(obs("me", 15, t0)), t0 + s(100), "me", Decision::Renew),
            // The holder's duration counts, not ours: a 0 s record is expired at once.
            (Some(obs("other", 0, t0)), t0, "me", Decision::TakeOver),
        ];
        for (i, (o, now, me, want)) in cases.into_iter().enumerate() {
            assert_eq!(decide(o.as_ref(), now, me), want, "case {i}");
        }
    }

    #[test]
    fn observation_time_moves_only_when_the_record_changes() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(5);
        let first = observe(None, rec("other", 15, "a", 0), t0);
        assert_eq!(first.at, t0);
        let same = observe(Some(&first), rec("other", 15, "a", 0), t1);
        assert_eq!(same.at, t0, "an unchanged record must keep ageing");
        let renewed = observe(Some(&first), rec("other", 15, "b", 0), t1);
        assert_eq!(renewed.at, t1);
        assert!(!lease_valid(&same, t0 + Duration::from_secs(15)));
        assert!(lease_valid(&renewed, t0 + Duration::from_secs(15)));
    }

    #[test]
    fn an_absurd_lease_duration_is_held_for_an_hour_not_an_overflow() {
        // A holder's leaseDurationSeconds near i64::MAX used to overflow `Instant` here, and
        // then counted as held for ever.
        let t0 = Instant::now();
        let o = observe(None, rec("other", i64::MAX, "a", 0), t0);
        assert!(o.record.claims_more_than_honoured());
        let hour = Duration::from_secs(3600);
        assert!(lease_valid(&o, t0 + hour - Duration::from_millis(1)));
        assert!(!lease_valid(&o, t0 + hour));
        assert_eq!(
            decide(Some(&o), t0 + Duration::from_secs(1000), "me"),
            Decision::Wait
        );
        assert_eq!(decide(Some(&o), t0 + hour, "me"), Decision::TakeOver);
        // At the bound it is the holder's own value.
        let o = observe(None, rec("other", 3600, "a", 0), t0);
        assert!(!o.record.claims_more_than_honoured());
        assert!(lease_valid(&o, t0 + hour - Duration::from_millis(1)));
        let o = observe(None, rec("other", i64::MIN, "a", 0), t0);
        assert!(!lease_valid(&o, t0));
    }

    fn is_micro_time(s: &str) -> bool {
        let b = s.as_bytes();
        b.len() == 27
            && b.iter().enumerate().all(|(i, c)| match i {
                4 | 7 => *c == b'-',
                10 => *c == b'T',
                13 | 16 => *c == b':',
                19 => *c == b'.',
                26 => *c == b'Z',
                _ => c.is_ascii_digit(),
            })
    }

    #[test]
    fn next_record_per_decision() {
        let now = UNIX_EPOCH + Duration::new(1_767_323_045, 120_000_999);
        let old = rec("x", 15, "r", 4);
        let d = Duration::from_millis(15_900);
        assert_eq!(next_record(Decision::Wait, Some(&old), "me", d, now), None);
        let c = next_record(Decision::Create, None, "me", d, now).unwrap();
        assert_eq!(
            c,
            LeaseRecord {
                holder: "me".into(),
                lease_duration_seconds: 15,
                acquire_time: Some("2026-01-02T03:04:05.120000Z".into()),
                renew_time: Some("2026-01-02T03:04:05.120000Z".into()),
                lease_transitions: 0
            }
        );
        let t = next_record(Decision::TakeOver, Some(&old), "me", d, now).unwrap();
        assert_eq!(
            (t.lease_transitions, t.acquire_time.as_deref()),
            (5, Some("2026-01-02T03:04:05.120000Z"))
        );
        let r = next_record(Decision::Renew, Some(&old), "me", d, now).unwrap();
        assert_eq!(r.lease_transitions, 4);
        assert_eq!(r.acquire_time, old.acquire_time);
        assert_eq!(r.renew_time.as_deref(), Some("2026-01-02T03:04:05.120000Z"));
        let rel = release_record(&old, now);
        assert_eq!(
            (
                rel.holder.as_str(),
                rel.lease_duration_seconds,
                rel.lease_transitions
            ),
            ("", 1, 4)
        );
    }

    #[test]
    fn lease_transitions_saturate_at_the_top() {
        // Another writer may leave any count; taking over from i64::MAX keeps i64::MAX
        // (it wrapped to i64::MIN in a release build and panicked in a checked one).
        let now = UNIX_EPOCH + Duration::from_secs(1_767_323_045);
        let d = Duration::from_secs(15);
        for (had, want) in [(i64::MAX, i64::MAX), (i64::MAX - 1, i64::MAX)] {
            let t = next_record(
                Decision::TakeOver,
                Some(&rec("x", 15, "r", had)),
                "me",
                d,
                now,
            )
            .unwrap();
            assert_eq!(t.lease_transitions, want, "taking over from {had}");
        }
        let r = next_record(
            Decision::Renew,
            Some(&rec("me", 15, "r", i64::MAX)),
            "me",
            d,
            now,
        );
        assert_eq!(r.unwrap().lease_transitions, i64::MAX);
    }

    #[test]
    fn lease_bodies() {
        let labels: BTreeMap<String, String> = [("app".to_string(), "hm".to_string())].into();
        let r = next_record(
            Decision::Create,
            None,
            "me",
            Duration::from_secs(15),
            SystemTime::now(),
        )
        .unwrap();
        let created = body(&lease_for_create("l", "ns", &labels, &r));
        assert_eq!(created["apiVersion"], "coordination.k8s.io/v1");
        assert_eq!(created["kind"], "Lease");
        assert_eq!(
            created["metadata"],
            json!({"name": "l", "namespace": "ns", "labels": {"app": "hm"}})
        );
        assert_eq!(created["spec"]["holderIdentity"], "me");
        assert_eq!(created["spec"]["leaseDurationSeconds"], 15);
        assert_eq!(created["spec"]["leaseTransitions"], 0);
        for k in ["acquireTime", "renewTime"] {
            let v = created["spec"][k].as_str().unwrap();
            assert!(is_micro_time(v), "{k}={v}");
        }
        assert!(
            body(&lease_for_create("l", "ns", &BTreeMap::new(), &r))["metadata"]
                .get("labels")
                .is_none()
        );

        let current = json!({
            "metadata": {"name": "l", "namespace": "ns", "resourceVersion": "42", "uid": "u1", "labels": {"keep": "1", "app": "old"}},
            "spec": {"holderIdentity": "other", "leaseDurationSeconds": 15, "strategy": "OldestEmulationVersion"}
        });
        let updated = body(&lease_for_update(&lease(current), &labels, &r));
        assert_eq!(updated["metadata"]["resourceVersion"], "42");
        assert_eq!(
            updated["metadata"]["labels"],
            json!({"keep": "1", "app": "hm"})
        );
        assert_eq!(updated["spec"]["strategy"], "OldestEmulationVersion");
        assert_eq!(updated["spec"]["holderIdentity"], "me");
        assert_eq!(LeaseRecord::from_lease(&lease(updated)), r);
        // Garbage is refused when it is read, naming the Lease; an empty Lease still makes a
        // well-formed body.
        let garbage = decode_lease("ns", "l", json!("garbage")).unwrap_err();
        assert!(garbage.to_string().contains("lease ns/l"), "{garbage}");
        let g = body(&lease_for_update(&Lease::default(), &labels, &r));
        assert_eq!(g["spec"]["holderIdentity"], "me");
        assert_eq!(
            LeaseRecord::from_lease(&lease(json!({"spec": {"holderIdentity": 7}}))),
            LeaseRecord::default()
        );
    }

    #[test]
    fn create_body_bytes_are_those_of_the_value_tree_it_replaced() {
        let labels: BTreeMap<String, String> = [("app".to_string(), "hm".to_string())].into();
        let t = "2026-01-02T03:04:05.120000Z";
        let r = LeaseRecord {
            holder: "me".into(),
            lease_duration_seconds: 15,
            acquire_time: Some(t.into()),
            renew_time: Some(t.into()),
            lease_transitions: 0,
        };
        assert_eq!(
            serde_json::to_string(&lease_for_create("l", "ns", &labels, &r)).unwrap(),
            format!(
                r#"{{"apiVersion":"coordination.k8s.io/v1","kind":"Lease","metadata":{{"labels":{{"app":"hm"}},"name":"l","namespace":"ns"}},"spec":{{"acquireTime":"{t}","holderIdentity":"me","leaseDurationSeconds":15,"leaseTransitions":0,"renewTime":"{t}"}}}}"#
            )
        );
    }

    #[test]
    fn update_body_keeps_what_a_put_would_lose_and_leaves_managed_fields_out() {
        let owner = json!([{"apiVersion": "apps/v1", "kind": "Deployment", "name": "hm", "uid": "d1", "controller": true, "blockOwnerDeletion": true}]);
        let current = lease(json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {
                "name": "l", "namespace": "ns", "uid": "u1", "resourceVersion": "42",
                "generation": 3, "creationTimestamp": "2026-01-01T00:00:00Z",
                "labels": {"keep": "1"}, "annotations": {"note": "admin"},
                "ownerReferences": owner, "finalizers": ["example.com/keep"],
                "managedFields": [{"manager": "kubectl", "operation": "Update", "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}}]
            },
            "spec": {"holderIdentity": "other", "leaseDurationSeconds": 15, "leaseTransitions": 2,
                     "strategy": "OldestEmulationVersion", "preferredHolder": "other"}
        }));
        let r = next_record(
            Decision::TakeOver,
            Some(&LeaseRecord::from_lease(&current)),
            "me",
            Duration::from_secs(15),
            SystemTime::now(),
        )
        .unwrap();
        let labels: BTreeMap<String, String> = [("app".to_string(), "hm".to_string())].into();
        let b = body(&lease_for_update(&current, &labels, &r));
        let m = &b["metadata"];
        assert_eq!(
            (&m["uid"], &m["resourceVersion"], &m["generation"]),
            (&json!("u1"), &json!("42"), &json!(3))
        );
        assert_eq!(m["creationTimestamp"], "2026-01-01T00:00:00Z");
        assert_eq!(m["labels"], json!({"keep": "1", "app": "hm"}));
        assert_eq!(m["annotations"], json!({"note": "admin"}));
        assert_eq!(m["ownerReferences"], owner);
        assert_eq!(m["finalizers"], json!(["example.com/keep"]));
        assert!(m.get("managedFields").is_none(), "{m}");
        assert_eq!(b["spec"]["strategy"], "OldestEmulationVersion");
        assert_eq!(b["spec"]["preferredHolder"], "other");
        assert_eq!(
            (&b["spec"]["holderIdentity"], &b["spec"]["leaseTransitions"]),
            (&json!("me"), &json!(3))
        );
        // null collections read as empty ones, as Go's decoder reads them.
        let nulls = lease(
            json!({"metadata": {"labels": null, "annotations": null, "finalizers": null, "ownerReferences": null}}),
        );
        assert_eq!(nulls.metadata, LeaseMeta::default());
    }

    #[test]
    fn leader_event_shape() {
        let lease = lease(
            json!({"metadata": {"name": "lease-a", "namespace": "ns", "uid": "u1", "resourceVersion": "7"}}),
        );
        let now = UNIX_EPOCH + Duration::new(1_767_323_045, 5);
        let ev = leader_event(&lease, "lease-a", "ns", "pod.a", "pod-a became leader", now);
        let ev = serde_json::to_value(ev.create_body()).unwrap();
        assert_eq!(
            ev["involvedObject"],
            json!({"kind": "Lease", "namespace": "ns", "name": "lease-a", "uid": "u1", "apiVersion": "coordination.k8s.io/v1", "resourceVersion": "7"})
        );
        assert_eq!(
            ev["metadata"]["name"],
            format!("lease-a.{:x}", 1_767_323_045_000_000_005u128)
        );
        assert_eq!(ev["metadata"]["namespace"], "ns");
        assert_eq!(ev["source"], json!({"component": "lease-a/pod.a"}));
        assert_eq!(ev["reportingComponent"], "lease-a/pod.a");
        assert_eq!(
            (ev["type"].as_str(), ev["reason"].as_str()),
            (Some("Normal"), Some("LeaderElection"))
        );
        assert_eq!(ev["message"], "pod-a became leader");
        assert_eq!(
            (ev["firstTimestamp"].as_str(), ev["lastTimestamp"].as_str()),
            (Some("2026-01-02T03:04:05Z"), Some("2026-01-02T03:04:05Z"))
        );
        assert_eq!(ev["count"], 1);
    }

    #[test]
    fn leader_event_name_falls_back_like_every_other_event() {
        // Not a DNS subdomain (uppercase): client-go's GenerateEventName gives a random UUID.
        let lease = lease(json!({"metadata": {"name": "Lease-A", "namespace": "ns"}}));
        let ev = leader_event(&lease, "Lease-A", "ns", "pod", "m", SystemTime::now());
        let ev = serde_json::to_value(ev.create_body()).unwrap();
        let name = ev["metadata"]["name"].as_str().unwrap();
        assert!(!name.starts_with("Lease-A."), "{name}");
        assert_eq!(name.len(), 36, "{name}");
    }

    #[test]
    fn healthz_rule() {
        let s = LeaderStatus::new();
        let t0 = Instant::now();
        let d = Duration::from_secs(15);
        assert_eq!(
            s.healthz(t0 + Duration::from_secs(1000), d),
            Ok(()),
            "not leader is healthy"
        );
        s.mark_leading(t0);
        assert_eq!(s.healthz(t0 + Duration::from_secs(35), d), Ok(()));
        assert_eq!(
            s.healthz(t0 + Duration::from_secs(36), d),
            Err("failed election to renew leadership on lease ".to_string())
        );
        s.mark_renewed(t0 + Duration::from_secs(30));
        assert_eq!(s.healthz(t0 + Duration::from_secs(36), d), Ok(()));
        s.mark_stopped();
        assert_eq!(s.healthz(t0 + Duration::from_secs(1000), d), Ok(()));
    }

    /// A Lease as the client decodes it, from the JSON a server would send.
    fn decode_lease(ns: &str, name: &str, v: Value) -> Result<Lease, kube::Error> {
        serde_json::from_value(v).map_err(|e| {
            malformed(
                ns,
                name,
                kube::Error::Decode {
                    what: "GET lease".into(),
                    message: e.to_string(),
                },
            )
        })
    }

    fn lease(v: Value) -> Lease {
        decode_lease("ns", "l", v).unwrap()
    }

    /// A Lease as it goes on the wire.
    fn body(l: &Lease) -> Value {
        serde_json::to_value(l).unwrap()
    }

    // ---- the loop against an in-memory API server ----

    #[derive(Default)]
    struct State {
        lease: Option<Value>,
        rv: u64,
        events: Vec<Value>,
        /// (caller, operation, outcome) for assertions on the request sequence.
        log: Vec<(String, &'static str, u16)>,
        conflicts_to_inject: usize,
        /// Time of each successful write, by holder.
        writes: Vec<(String, Instant)>,
    }

    #[derive(Clone)]
    struct Fake {
        state: Arc<Mutex<State>>,
    }

    struct FakeClient {
        who: String,
        state: Arc<Mutex<State>>,
        failing: Arc<AtomicBool>,
        calls: Arc<AtomicUsize>,
    }

    fn api_error(code: u16, reason: &str) -> kube::Error {
        kube::Error::Api {
            what: "lease".into(),
            status: kube::Status {
                code,
                reason: reason.into(),
                message: String::new(),
                retry_after: None,
            },
        }
    }

    impl Fake {
        fn new() -> Fake {
            Fake {
                state: Arc::new(Mutex::new(State::default())),
            }
        }
        fn client(&self, who: &str) -> (FakeClient, Arc<AtomicBool>) {
            let failing = Arc::new(AtomicBool::new(false));
            let c = FakeClient {
                who: who.into(),
                state: self.state.clone(),
                failing: failing.clone(),
                calls: Arc::default(),
            };
            (c, failing)
        }
        fn record(&self) -> Option<LeaseRecord> {
            self.state
                .lock()
                .unwrap()
                .lease
                .clone()
                .map(|l| LeaseRecord::from_lease(&lease(l)))
        }
        fn last_write_by(&self, holder: &str) -> Option<Instant> {
            self.state
                .lock()
                .unwrap()
                .writes
                .iter()
                .rev()
                .find(|(h, _)| h == holder)
                .map(|(_, t)| *t)
        }
    }

    impl FakeClient {
        fn check(&self, op: &'static str) -> Result<(), kube::Error> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.failing.load(Ordering::SeqCst) {
                self.state
                    .lock()
                    .unwrap()
                    .log
                    .push((self.who.clone(), op, 503));
                return Err(kube::Error::Transport {
                    what: op.into(),
                    message: "connection refused".into(),
                });
            }
            Ok(())
        }

        fn store(
            &self,
            st: &mut State,
            mut stored: Value,
            op: &'static str,
        ) -> Result<Lease, kube::Error> {
            st.rv += 1;
            stored["metadata"]["resourceVersion"] = json!(st.rv.to_string());
            if stored["metadata"]["uid"].is_null() {
                stored["metadata"]["uid"] = json!("uid-1");
            }
            let holder = LeaseRecord::from_lease(&lease(stored.clone())).holder;
            st.writes.push((holder, Instant::now()));
            st.log.push((self.who.clone(), op, 200));
            st.lease = Some(stored.clone());
            decode_lease("ns", "l", stored)
        }
    }

    impl LeaseApi for FakeClient {
        fn get(&self, ns: &str, name: &str) -> Result<Option<Lease>, kube::Error> {
            self.check("get")?;
            let mut st = self.state.lock().unwrap();
            let code = if st.lease.is_some() { 200 } else { 404 };
            st.log.push((self.who.clone(), "get", code));
            st.lease
                .clone()
                .map(|l| decode_lease(ns, name, l))
                .transpose()
        }
        fn create(&self, _ns: &str, lease: &Lease) -> Result<Lease, kube::Error> {
            self.check("create")?;
            let mut st = self.state.lock().unwrap();
            if st.lease.is_some() {
                st.log.push((self.who.clone(), "create", 409));
                return Err(api_error(409, "AlreadyExists"));
            }
            self.store(&mut st, body(lease), "create")
        }
        fn update(&self, _ns: &str, _name: &str, lease: &Lease) -> Result<Lease, kube::Error> {
            let lease = body(lease);
            self.check("update")?;
            let mut st = self.state.lock().unwrap();
            let current_rv = st
                .lease
                .as_ref()
                .map(|l| l["metadata"]["resourceVersion"].clone());
            if st.lease.is_none() {
                st.log.push((self.who.clone(), "update", 404));
                return Err(api_error(404, "NotFound"));
            }
            if st.conflicts_to_inject > 0
                || current_rv.as_ref() != Some(&lease["metadata"]["resourceVersion"])
            {
                st.conflicts_to_inject = st.conflicts_to_inject.saturating_sub(1);
                st.log.push((self.who.clone(), "update", 409));
                return Err(api_error(409, "Conflict"));
            }
            self.store(&mut st, lease, "update")
        }
        fn create_event(&self, _ns: &str, event: &EventBody<'_>) -> Result<(), kube::Error> {
            self.check("event")?;
            let mut st = self.state.lock().unwrap();
            st.events.push(serde_json::to_value(event).unwrap());
            Ok(())
        }
    }

    const LEASE: Duration = Duration::from_secs(1);
    const RENEW: Duration = Duration::from_millis(600);
    const RETRY: Duration = Duration::from_millis(100);
    const PATIENCE: Duration = Duration::from_secs(10);

    fn settings(identity: &str) -> LeaderSettings {
        LeaderSettings {
            lease_name: "external-health-monitor-leader-d".into(),
            namespace: "ns".into(),
            identity: identity.into(),
            labels: [("app".to_string(), "hm".to_string())].into(),
            lease_duration: LEASE,
            renew_deadline: RENEW,
            retry_period: RETRY,
        }
    }

    fn wait_until(within: Duration, cond: impl Fn() -> bool) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if cond() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        cond()
    }

    struct Replica {
        rx: Receiver<LeaderEvent>,
        status: Arc<LeaderStatus>,
        shutdown: Shutdown,
        failing: Arc<AtomicBool>,
        thread: Option<JoinHandle<()>>,
    }

    impl Replica {
        fn start(fake: &Fake, identity: &str) -> Replica {
            let (api, failing) = fake.client(identity);
            let (tx, rx) = crossbeam_channel::unbounded();
            let status = Arc::new(LeaderStatus::new());
            let shutdown = Shutdown::new();
            let thread = spawn(
                api,
                settings(identity),
                status.clone(),
                tx,
                shutdown.clone(),
            )
            .unwrap();
            Replica {
                rx,
                status,
                shutdown,
                failing,
                thread: Some(thread),
            }
        }

        /// Waits for an event matching `want`, skipping others.
        fn wait_for(&self, want: &LeaderEvent, within: Duration) -> bool {
            let deadline = Instant::now() + within;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match self.rx.recv_timeout(left) {
                    Ok(ev) if &ev == want => return true,
                    Ok(_) => continue,
                    Err(_) => return false,
                }
            }
        }

        fn stop(&mut self) {
            self.shutdown.trigger();
            if let Some(t) = self.thread.take() {
                t.join().unwrap();
            }
        }
    }

    impl Drop for Replica {
        fn drop(&mut self) {
            self.shutdown.trigger();
        }
    }

    #[test]
    fn one_of_two_leads_and_announces_it() {
        let fake = Fake::new();
        let a = Replica::start(&fake, "pod.a");
        let b = Replica::start(&fake, "pod.b");
        // Keep what the wait consumes: the follower's NewLeader may arrive before the
        // leader's StartedLeading is seen.
        let (mut seen_a, mut seen_b) = (Vec::new(), Vec::new());
        let (first, second, seen_second) = loop {
            crossbeam_channel::select! {
                recv(a.rx) -> ev => {
                    let ev = ev.expect("replica a stopped");
                    if ev == LeaderEvent::StartedLeading {
                        break (&a, &b, seen_b);
                    }
                    seen_a.push(ev);
                }
                recv(b.rx) -> ev => {
                    let ev = ev.expect("replica b stopped");
                    if ev == LeaderEvent::StartedLeading {
                        break (&b, &a, seen_a);
                    }
                    seen_b.push(ev);
                }
                default(PATIENCE) => panic!("nobody started leading within {PATIENCE:?}"),
            }
        };
        let leader_id = if std::ptr::eq(first, &a) {
            "pod-a"
        } else {
            "pod-b"
        };
        let announced = LeaderEvent::NewLeader(leader_id.into());
        assert!(seen_second.contains(&announced) || second.wait_for(&announced, PATIENCE));
        // The follower keeps trying for longer than a lease duration and never leads while the
        // leader renews.
        assert!(!second.wait_for(&LeaderEvent::StartedLeading, LEASE * 2));
        assert!(first.status.is_leader() && !second.status.is_leader());
        let rec = fake.record().unwrap();
        assert_eq!(
            (
                rec.holder.as_str(),
                rec.lease_duration_seconds,
                rec.lease_transitions
            ),
            (leader_id, 1, 0)
        );
        assert!(is_micro_time(rec.renew_time.as_deref().unwrap()));

        assert!(wait_until(PATIENCE, || !fake
            .state
            .lock()
            .unwrap()
            .events
            .is_empty()));
        let st = fake.state.lock().unwrap();
        let lease = st.lease.as_ref().unwrap();
        assert_eq!(lease["metadata"]["labels"]["app"], "hm");
        assert_eq!(st.events.len(), 1);
        let ev = &st.events[0];
        assert_eq!(ev["message"], format!("{leader_id} became leader"));
        assert_eq!(
            ev["source"]["component"],
            format!(
                "external-health-monitor-leader-d/{}",
                leader_id.replace('-', ".")
            )
        );
        assert_eq!(ev["involvedObject"]["uid"], "uid-1");
    }

    #[test]
    fn a_silent_leader_is_taken_over_only_after_the_lease_duration() {
        let fake = Fake::new();
        let mut a = Replica::start(&fake, "a");
        assert!(a.wait_for(&LeaderEvent::StartedLeading, PATIENCE));
        let b = Replica::start(&fake, "b");
        assert!(b.wait_for(&LeaderEvent::NewLeader("a".into()), PATIENCE));
        // `a` goes dark: every call fails, so it can neither renew nor release.
        a.failing.store(true, Ordering::SeqCst);
        assert!(a.wait_for(&LeaderEvent::StoppedLeading, PATIENCE));
        assert!(!a.status.is_leader());
        assert!(b.wait_for(&LeaderEvent::StartedLeading, PATIENCE));
        let took_over = Instant::now();
        let last_a = fake.last_write_by("a").unwrap();
        assert!(
            took_over.duration_since(last_a) >= LEASE,
            "took over {:?} after a's last renewal",
            took_over.duration_since(last_a)
        );
        let rec = fake.record().unwrap();
        assert_eq!((rec.holder.as_str(), rec.lease_transitions), ("b", 1));
        a.stop();
        // a was not leading any more: its shutdown released nothing.
        assert_eq!(fake.record().unwrap().holder, "b");
    }

    #[test]
    fn renew_failures_past_the_deadline_stop_leading() {
        let fake = Fake::new();
        let a = Replica::start(&fake, "a");
        assert!(a.wait_for(&LeaderEvent::StartedLeading, PATIENCE));
        assert!(a.status.is_leader());
        let failing_since = Instant::now();
        a.failing.store(true, Ordering::SeqCst);
        assert!(a.wait_for(&LeaderEvent::StoppedLeading, PATIENCE));
        let after = failing_since.elapsed();
        // The renewal round that first failed began at most one retry period after the fault.
        assert!(after >= RENEW - RETRY, "stopped leading after {after:?}");
        assert!(!a.status.is_leader());
    }

    #[test]
    fn release_on_shutdown_lets_the_other_acquire_at_once() {
        let fake = Fake::new();
        let mut a = Replica::start(&fake, "a");
        assert!(a.wait_for(&LeaderEvent::StartedLeading, PATIENCE));
        let b = Replica::start(&fake, "b");
        assert!(b.wait_for(&LeaderEvent::NewLeader("a".into()), PATIENCE));
        a.stop();
        let released = Instant::now();
        assert!(!a.status.is_leader());
        assert!(b.wait_for(&LeaderEvent::StartedLeading, PATIENCE));
        // Acquire retries every 100-220 ms; waiting for expiry would take 1 s.
        assert!(
            released.elapsed() < Duration::from_millis(700),
            "{:?}",
            released.elapsed()
        );
        let st = fake.state.lock().unwrap();
        let release = st
            .writes
            .iter()
            .find(|(h, _)| h.is_empty())
            .expect("a released the lease");
        assert!(release.1 <= released);
        drop(st);
        // Transitions: a created (0), b took over a released lease (1).
        assert_eq!(fake.record().unwrap().lease_transitions, 1);
        // StartedLeading goes out before the event is written.
        assert!(wait_until(PATIENCE, || fake
            .state
            .lock()
            .unwrap()
            .events
            .len()
            >= 3));
        let st = fake.state.lock().unwrap();
        let msgs: Vec<&str> = st
            .events
            .iter()
            .filter_map(|e| e["message"].as_str())
            .collect();
        // b may take over between a's release and a's "stopped leading" event.
        assert_eq!(msgs.len(), 3, "{msgs:?}");
        assert_eq!(msgs[0], "a became leader");
        assert!(
            msgs.contains(&"a stopped leading") && msgs.contains(&"b became leader"),
            "{msgs:?}"
        );
    }

    fn elector(fake: &Fake, who: &str) -> (Elector<FakeClient>, Receiver<LeaderEvent>) {
        let (api, _) = fake.client(who);
        let (tx, rx) = crossbeam_channel::unbounded();
        (
            Elector::new(api, settings(who), Arc::new(LeaderStatus::new()), tx),
            rx,
        )
    }

    #[test]
    fn conflict_on_update_rereads_next_round() {
        let fake = Fake::new();
        let (mut a, _rx) = elector(&fake, "a");
        assert!(a.try_acquire_or_renew());
        // b sees a's lease, a releases it, then b's takeover loses a race once.
        let (mut b, _rxb) = elector(&fake, "b");
        assert!(!b.try_acquire_or_renew());
        a.release();
        fake.state.lock().unwrap().conflicts_to_inject = 1;
        fake.state.lock().unwrap().log.clear();
        assert!(!b.try_acquire_or_renew());
        assert!(b.try_acquire_or_renew());
        let log: Vec<(String, &str, u16)> = fake.state.lock().unwrap().log.clone();
        let want = [
            ("b", "get", 200),
            ("b", "update", 409),
            ("b", "get", 200),
            ("b", "update", 200),
        ];
        assert_eq!(log, want.map(|(w, o, c)| (w.to_string(), o, c)));
        assert_eq!(fake.record().unwrap().holder, "b");
    }

    #[test]
    fn stale_fast_path_falls_back_to_get() {
        let fake = Fake::new();
        let (mut a, _rx) = elector(&fake, "a");
        assert!(a.try_acquire_or_renew());
        // Someone (an admin, say) edited the Lease: our cached resourceVersion is stale.
        {
            let mut st = fake.state.lock().unwrap();
            st.rv += 1;
            let rv = st.rv.to_string();
            st.lease.as_mut().unwrap()["metadata"]["resourceVersion"] = json!(rv);
            st.log.clear();
        }
        assert!(a.try_acquire_or_renew());
        let ops: Vec<(&str, u16)> = fake
            .state
            .lock()
            .unwrap()
            .log
            .iter()
            .map(|(_, o, c)| (*o, *c))
            .collect::<Vec<_>>();
        assert_eq!(ops, [("update", 409), ("get", 200), ("update", 200)]);
        assert_eq!(
            fake.record().unwrap().lease_transitions,
            0,
            "a renewal is not a transition"
        );
    }

    #[test]
    fn transitions_count_holder_changes() {
        let fake = Fake::new();
        let (mut a, _ra) = elector(&fake, "a");
        let (mut b, _rb) = elector(&fake, "b");
        assert!(a.try_acquire_or_renew());
        assert_eq!(fake.record().unwrap().lease_transitions, 0);
        a.release();
        let released = fake.record().unwrap();
        assert_eq!(
            (
                released.holder.as_str(),
                released.lease_duration_seconds,
                released.lease_transitions
            ),
            ("", 1, 0)
        );
        assert!(b.try_acquire_or_renew());
        assert_eq!(fake.record().unwrap().lease_transitions, 1);
        assert!(b.try_acquire_or_renew());
        assert_eq!(fake.record().unwrap().lease_transitions, 1);
        b.release();
        assert!(a.try_acquire_or_renew());
        let r = fake.record().unwrap();
        assert_eq!((r.holder.as_str(), r.lease_transitions), ("a", 2));
    }

    #[test]
    fn a_lease_that_does_not_decode_is_an_error_naming_it_and_is_not_written() {
        for bad in [
            json!("garbage"),
            json!({"metadata": {"name": "l", "resourceVersion": 5}}),
            json!({"metadata": "nonsense"}),
        ] {
            let fake = Fake::new();
            fake.state.lock().unwrap().lease = Some(bad.clone());
            let (mut a, _ra) = elector(&fake, "a");
            let err = a.api.get("ns", "lease-x").unwrap_err();
            assert!(err.to_string().contains("lease ns/lease-x"), "{err}");
            fake.state.lock().unwrap().log.clear();
            assert!(!a.try_acquire_or_renew(), "{bad}");
            let ops: Vec<&str> = fake
                .state
                .lock()
                .unwrap()
                .log
                .iter()
                .map(|(_, o, _)| *o)
                .collect();
            assert_eq!(ops, ["get"], "{bad}");
            assert_eq!(fake.state.lock().unwrap().lease.as_ref(), Some(&bad));
            assert!(!a.is_leader());
        }
    }

    #[test]
    fn malformed_lease_never_panics() {
        let fake = Fake::new();
        fake.state.lock().unwrap().lease =
            Some(json!({"metadata": {"resourceVersion": "0"}, "spec": "nonsense"}));
        let (mut a, _ra) = elector(&fake, "a");
        // No holder: free to take.
        assert!(a.try_acquire_or_renew());
        assert_eq!(fake.record().unwrap().holder, "a");
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for (_, op, _) in fake.state.lock().unwrap().log.iter() {
            *counts.entry(op).or_default() += 1;
        }
        assert_eq!(counts.get("update"), Some(&1));
    }
}
