//! The node watcher (`--enable-node-watcher`, upstream §8, DESIGN §2.5): compact Node and Pod
//! caches, the pure decisions (is a node failed or recovered, which PVCs of this driver are
//! used by pods on it, the event messages) and the "node-watcher" thread that evaluates them
//! when a Node changes or a NotReady node reaches the timeout (it sleeps otherwise) and emits
//! `NodeFailed` / `NodeRecovered` on the PVCs.
//!
//! Fixed against upstream (§15.1-5): a deleted Node counts as failed instead of crashing the
//! process; pods are tracked through updates and deletes (a pod scheduled after start is seen);
//! the threshold is `--node-not-ready-timeout` and is checked when it is reached, not on the
//! next resync; `NodeFailed` is emitted once per failure episode with sorted pod names;
//! `NodeRecovered` is a Normal event, on the PVCs that got `NodeFailed`.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use serde::de::IgnoredAny;
use serde::Deserialize;
#[cfg(test)]
use serde_json::Value;

use crate::events::{EventType, ObjectRef, Recorder};
use crate::kube::object::Object;
use crate::kube::{self, Client, ObjectMeta};
use crate::shutdown::Shutdown;
use crate::timeutil::parse_rfc3339;
use crate::watch::{self, Keyed, PvRecord, PvStore, PvcRecord, PvcStore, Records, Resource, Store};

pub const REASON_FAILED: &str = "NodeFailed";
pub const REASON_RECOVERED: &str = "NodeRecovered";
/// How often events waiting for their PVC lookup are retried.
pub const DEFAULT_TICK: Duration = Duration::from_secs(1);
/// Ticks an event may wait for its PVC lookup (API errors) before it is given up.
pub const MAX_LOOKUP_TRIES: u32 = 10;
/// With no NotReady node and nothing pending, the watcher still looks again this rarely (a
/// safety net; every Node change wakes it at once).
const IDLE_RECHECK: Duration = Duration::from_secs(3600);
/// How often a still unsynced cache is mentioned in the log.
const SYNC_WAIT_LOG: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Records

/// Status of a Node's `Ready` condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadyState {
    True,
    False,
    /// `Unknown`, or any other non-`True` status: upstream treats all of them as not ready.
    Unknown,
    /// No `Ready` condition at all (a node still registering): neither ready nor failed.
    Missing,
}

/// What the watcher needs of one Node.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeRecord {
    pub name: String,
    pub ready: ReadyState,
    /// `lastTransitionTime` of the `Ready` condition.
    pub ready_transition: Option<SystemTime>,
    /// `metadata.deletionTimestamp` is set.
    pub deleting: bool,
}

/// A Node as decoded: metadata and the `type`, `status` and `lastTransitionTime` of each
/// condition (heartbeats, capacity, images and the rest are skipped unread).
#[derive(Debug, Default, Deserialize)]
pub struct NodeWire {
    #[serde(default)]
    metadata: Option<ObjectMeta>,
    #[serde(default)]
    status: Option<NodeStatusWire>,
}

#[derive(Debug, Default, Deserialize)]
struct NodeStatusWire {
    conditions: Option<Vec<NodeConditionWire>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NodeConditionWire {
    #[serde(rename = "type")]
    kind: Option<String>,
    status: Option<String>,
    last_transition_time: Option<String>,
}

impl Object for NodeWire {
    fn meta(&self) -> &ObjectMeta {
        kube::object::meta_or_empty(&self.metadata)
    }
}

impl NodeRecord {
    pub fn from_wire(w: NodeWire) -> Option<NodeRecord> {
        let meta = w.metadata?;
        let name = meta.name.filter(|n| !n.is_empty())?;
        // Upstream looks at the first `Ready` condition only.
        let ready = w
            .status
            .and_then(|s| s.conditions)
            .and_then(|cs| cs.into_iter().find(|c| c.kind.as_deref() == Some("Ready")));
        let (state, transition) = match ready {
            None => (ReadyState::Missing, None),
            Some(c) => {
                let state = match c.status.as_deref() {
                    Some("True") => ReadyState::True,
                    Some("False") => ReadyState::False,
                    _ => ReadyState::Unknown,
                };
                let t = c.last_transition_time.as_deref().and_then(parse_rfc3339);
                (state, t)
            }
        };
        Some(NodeRecord {
            name,
            ready: state,
            ready_transition: transition,
            deleting: meta.deletion_timestamp.is_some(),
        })
    }

    /// From a tree (tests only: production decodes the wire struct straight from the response);
    /// a malformed object is `None`.
    #[cfg(test)]
    pub fn from_object(obj: &Value) -> Option<NodeRecord> {
        NodeWire::deserialize(obj)
            .ok()
            .and_then(NodeRecord::from_wire)
    }
}

impl Keyed for NodeRecord {
    fn key(&self) -> &str {
        &self.name
    }
}

impl Resource for NodeRecord {
    type Wire = NodeWire;
    const KIND: &'static str = "Node";
    fn from_wire(w: NodeWire) -> Option<Self> {
        NodeRecord::from_wire(w)
    }
}

/// What the watcher needs of one Pod that uses at least one PVC: its key, node and claim
/// names, as boxed strs (tens of thousands of pods are cached: four words and four small
/// allocations each).
#[derive(Clone, Debug, PartialEq)]
pub struct PodRecord {
    /// `namespace/name`, the store key.
    pub key: Box<str>,
    /// `spec.nodeName`; empty while unscheduled.
    pub node_name: Box<str>,
    /// Names of the PVCs the pod uses, in its namespace: `persistentVolumeClaim.claimName`, and
    /// `<pod>-<volume>` for generic ephemeral volumes (the name Kubernetes gives their claim).
    pub claims: Box<[Box<str>]>,
    /// `metadata.deletionTimestamp` is set.
    pub deleting: bool,
}

/// A Pod as decoded: metadata, `spec.nodeName` and, of each volume, its name and whether it is
/// a PVC (its claim name) or generic ephemeral. Containers, status and the rest are skipped.
#[derive(Debug, Default, Deserialize)]
pub struct PodWire {
    #[serde(default)]
    metadata: Option<ObjectMeta>,
    #[serde(default)]
    spec: Option<PodSpecWire>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodSpecWire {
    node_name: Option<String>,
    volumes: Option<Vec<PodVolumeWire>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodVolumeWire {
    name: Option<String>,
    persistent_volume_claim: Option<ClaimSourceWire>,
    /// Only whether it is set matters.
    ephemeral: Option<IgnoredAny>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ClaimSourceWire {
    claim_name: Option<String>,
}

impl Object for PodWire {
    fn meta(&self) -> &ObjectMeta {
        kube::object::meta_or_empty(&self.metadata)
    }
}

impl PodRecord {
    /// `None` for pods without PVCs: they can never matter, and most pods have none.
    pub fn from_wire(w: PodWire) -> Option<PodRecord> {
        let meta = w.metadata?;
        let name = meta.name.filter(|n| !n.is_empty())?;
        // The namespace is in the store key; a pod without one is not a pod we can act on.
        meta.namespace.as_deref().filter(|n| !n.is_empty())?;
        let spec = w.spec?;
        let mut claims: Vec<Box<str>> = Vec::new();
        for v in spec.volumes.into_iter().flatten() {
            if let Some(claim) = v
                .persistent_volume_claim
                .and_then(|c| c.claim_name)
                .filter(|c| !c.is_empty())
            {
                claims.push(claim.into());
            } else if v.ephemeral.is_some() {
                if let Some(vol) = v.name.filter(|n| !n.is_empty()) {
                    claims.push(format!("{name}-{vol}").into());
                }
            }
        }
        if claims.is_empty() {
            return None;
        }
        claims.sort();
        claims.dedup();
        Some(PodRecord {
            key: format!("{}/{name}", meta.namespace.as_deref().unwrap_or_default()).into(),
            node_name: spec.node_name.unwrap_or_default().into(),
            claims: claims.into(),
            deleting: meta.deletion_timestamp.is_some(),
        })
    }

    /// From a tree (tests only: production decodes the wire struct straight from the response);
    /// a malformed object is `None`.
    #[cfg(test)]
    pub fn from_object(obj: &Value) -> Option<PodRecord> {
        PodWire::deserialize(obj)
            .ok()
            .and_then(PodRecord::from_wire)
    }
}

impl Keyed for PodRecord {
    fn key(&self) -> &str {
        &self.key
    }
}

impl Resource for PodRecord {
    type Wire = PodWire;
    const KIND: &'static str = "Pod";
    fn from_wire(w: PodWire) -> Option<Self> {
        PodRecord::from_wire(w)
    }
}

// ---------------------------------------------------------------------------------------------
// The tracker (pure)

/// A change of a node's failure state found by `NodeTracker::tick`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transition {
    /// A failure episode starts: NotReady past the timeout, or deleted (`deleted`).
    Failed { node: String, deleted: bool },
    /// A node that had `Failed` is Ready again.
    Recovered { node: String },
}

#[derive(Default)]
struct NodeState {
    /// Start of the current not-Ready stretch as we measure it; `None` while Ready.
    not_ready_since: Option<SystemTime>,
    /// In a failure episode (`Failed` was returned, `Recovered` not yet).
    failed: bool,
}

/// Remembers, per node, since when it has been not Ready and whether it is in a failure
/// episode, so that each episode yields exactly one `Failed` and at most one `Recovered`.
#[derive(Default)]
pub struct NodeTracker {
    /// Every node of the previous tick: one that vanishes from the cache was deleted.
    nodes: HashMap<String, NodeState>,
    /// The first tick: a node already not Ready then is measured from here, since we cannot
    /// know whether its `lastTransitionTime` reflects what happened while we were away.
    started: Option<SystemTime>,
}

impl NodeTracker {
    pub fn new() -> NodeTracker {
        NodeTracker::default()
    }

    /// Evaluate every node at `now`. A not-Ready stretch starts at the Ready condition's
    /// `lastTransitionTime` or the tracker's first tick, whichever is later (a transition time
    /// in the future, i.e. clock skew, or none at all: at `now`), and is fixed for the stretch,
    /// so a False → Unknown change (which moves `lastTransitionTime`) does not restart it.
    /// The node fails once the stretch has lasted `timeout`.
    pub fn tick(
        &mut self,
        now: SystemTime,
        nodes: &Records<NodeRecord>,
        timeout: Duration,
    ) -> Vec<Transition> {
        let started = *self.started.get_or_insert(now);
        let mut out = Vec::new();
        let mut recs: Vec<&NodeRecord> = nodes.iter().collect();
        recs.sort_by(|a, b| a.name.cmp(&b.name));
        for rec in recs {
            let name = &rec.name;
            if !self.nodes.contains_key(name) {
                // A node deleted before its first evaluation can never be reported; this line
                // tells an operator (and the end-to-end tests) from when a node is covered.
                crate::vlog!(
                    4,
                    node:% = name, ready:? = rec.ready;
                    "Node watcher tracking node"
                );
            }
            let st = self.nodes.entry(name.clone()).or_default();
            if rec.deleting {
                // Being deleted: it will not come back as this object, so never "recovers".
                if !st.failed {
                    st.failed = true;
                    out.push(Transition::Failed {
                        node: name.clone(),
                        deleted: true,
                    });
                }
                continue;
            }
            match rec.ready {
                ReadyState::True => {
                    st.not_ready_since = None;
                    if st.failed {
                        st.failed = false;
                        out.push(Transition::Recovered { node: name.clone() });
                    }
                }
                ReadyState::False | ReadyState::Unknown => {
                    let since =
                        *st.not_ready_since
                            .get_or_insert_with(|| match rec.ready_transition {
                                Some(t) if t <= now => t.max(started),
                                _ => now,
                            });
                    let elapsed = now.duration_since(since).unwrap_or(Duration::ZERO);
                    if !st.failed && elapsed >= timeout {
                        st.failed = true;
                        out.push(Transition::Failed {
                            node: name.clone(),
                            deleted: false,
                        });
                    }
                }
                // Upstream: neither ready nor broken. The stretch restarts when a condition
                // shows up again; an episode in progress stays open.
                ReadyState::Missing => st.not_ready_since = None,
            }
        }
        let mut gone: Vec<String> = self
            .nodes
            .keys()
            .filter(|n| !nodes.contains_key(n))
            .cloned()
            .collect();
        gone.sort();
        for name in gone {
            if let Some(st) = self.nodes.remove(&name) {
                if !st.failed {
                    out.push(Transition::Failed {
                        node: name,
                        deleted: true,
                    });
                }
            }
        }
        out
    }

    /// The earliest moment a node's verdict can change without any Node update: when a
    /// not-Ready stretch still short of `timeout` reaches it. `None`: only an update can.
    pub fn next_deadline(&self, timeout: Duration) -> Option<SystemTime> {
        self.nodes
            .values()
            .filter(|st| !st.failed)
            .filter_map(|st| st.not_ready_since)
            .map(|since| since + timeout)
            .min()
    }
}

// ---------------------------------------------------------------------------------------------
// Selection and messages (pure)

/// `(namespace, pvc name)` → sorted names of the pods using it.
pub type AffectedClaims = BTreeMap<(String, String), Vec<String>>;

/// The PVCs bound to Bound PVs of this driver (`pvs` holds only ours) that pods on `node` use,
/// with those pods. Any pod phase counts, as upstream. Pods already being deleted count too:
/// the taint manager marks pods on a NotReady node for deletion after 300 s by default (the
/// same as our default timeout), and they stay Terminating with the volume still attached
/// until the node comes back, which is exactly the situation this event is for.
pub fn affected_claims(
    node: &str,
    pods: &Records<PodRecord>,
    pvs: &Records<PvRecord>,
) -> AffectedClaims {
    let ours: HashSet<(&str, &str)> = pvs
        .iter()
        .filter(|pv| pv.is_bound())
        .filter_map(|pv| pv.claim())
        .map(|c| (c.namespace, c.name))
        .collect();
    let mut out = AffectedClaims::new();
    for pod in pods.iter().filter(|p| &*p.node_name == node) {
        let Some((namespace, name)) = pod.key.split_once('/') else {
            continue;
        };
        for claim in pod.claims.iter() {
            if ours.contains(&(namespace, &**claim)) {
                out.entry((namespace.to_string(), claim.to_string()))
                    .or_default()
                    .push(name.to_string());
            }
        }
    }
    for names in out.values_mut() {
        names.sort();
        names.dedup();
    }
    out
}

/// Upstream's `NodeFailed` message: literally `Pods: [ `, each pod followed by one space, `]`.
pub fn node_failed_message(pods: &[String], pvc: &str, namespace: &str, node: &str) -> String {
    let list: String = pods.iter().map(|p| format!("{p} ")).collect();
    format!(
        "Pods: [ {list}] consuming PVC: {pvc} in namespace: {namespace} are now on a failed node: {node}"
    )
}

pub fn node_recovered_message(node: &str) -> String {
    format!("Node: {node} recovered")
}

/// One event to emit on a PVC.
#[derive(Clone, Debug, PartialEq)]
pub struct Emission {
    pub namespace: String,
    pub pvc: String,
    pub kind: EventType,
    pub reason: &'static str,
    pub message: String,
}

// ---------------------------------------------------------------------------------------------
// The watcher

/// Finds a PVC by namespace and name (`PvcStore::get_or_fetch` outside tests).
pub type PvcLookup<'a> = dyn Fn(&str, &str) -> Result<Option<PvcRecord>, kube::Error> + 'a;

struct Pending {
    emission: Emission,
    tries: u32,
}

/// The node watcher's state: the tracker, the PVCs each open episode reported `NodeFailed` on
/// (recovery goes to the same PVCs, even if the pods were evicted meanwhile) and events waiting
/// for their PVC lookup.
pub struct NodeWatcher {
    timeout: Duration,
    tracker: NodeTracker,
    episodes: HashMap<String, AffectedClaims>,
    pending: VecDeque<Pending>,
}

impl NodeWatcher {
    pub fn new(timeout: Duration) -> NodeWatcher {
        NodeWatcher {
            timeout,
            tracker: NodeTracker::new(),
            episodes: HashMap::new(),
            pending: VecDeque::new(),
        }
    }

    /// What to emit at `now` (no I/O): tracker transitions turned into events.
    pub fn plan(
        &mut self,
        now: SystemTime,
        nodes: &Records<NodeRecord>,
        pods: &Records<PodRecord>,
        pvs: &Records<PvRecord>,
    ) -> Vec<Emission> {
        let mut out = Vec::new();
        for t in self.tracker.tick(now, nodes, self.timeout) {
            match t {
                Transition::Failed { node, deleted } => {
                    if deleted {
                        log::info!(node:% = node; "Node is deleted, so mark the PVs on the node");
                    } else {
                        log::info!(node:% = node; "Node is broken");
                    }
                    let claims = affected_claims(&node, pods, pvs);
                    if claims.is_empty() {
                        log::debug!(node:% = node; "No PVCs of this driver on the failed node");
                    }
                    for ((namespace, pvc), pod_names) in &claims {
                        out.push(Emission {
                            namespace: namespace.clone(),
                            pvc: pvc.clone(),
                            kind: EventType::Warning,
                            reason: REASON_FAILED,
                            message: node_failed_message(pod_names, pvc, namespace, &node),
                        });
                    }
                    // A deleted node never recovers; nothing to remember.
                    if !deleted {
                        self.episodes.insert(node, claims);
                    }
                }
                Transition::Recovered { node } => {
                    log::info!(node:% = node; "Node recovered");
                    for (namespace, pvc) in
                        self.episodes.remove(&node).unwrap_or_default().into_keys()
                    {
                        out.push(Emission {
                            namespace,
                            pvc,
                            kind: EventType::Normal,
                            reason: REASON_RECOVERED,
                            message: node_recovered_message(&node),
                        });
                    }
                }
            }
        }
        // Episodes of nodes that vanished while failed: their recovery can never come.
        self.episodes.retain(|n, _| nodes.contains_key(n));
        out
    }

    /// How long the watcher may sleep at `now` if no Node changes: until the next failure
    /// deadline, or `retry` while events wait for their PVC lookup. `None`: until a change.
    pub fn next_wakeup(&self, now: SystemTime, retry: Duration) -> Option<Duration> {
        let deadline = self
            .tracker
            .next_deadline(self.timeout)
            .map(|d| d.duration_since(now).unwrap_or(Duration::ZERO));
        let retry = (!self.pending.is_empty()).then_some(retry);
        deadline.into_iter().chain(retry).min()
    }

    /// Emit `new` after whatever is still waiting, in order. An event whose PVC lookup fails
    /// waits for the next call (at most `MAX_LOOKUP_TRIES` calls), and so do later events of the
    /// same PVC, so a PVC never sees its recovery before its failure.
    pub fn deliver(
        &mut self,
        new: Vec<Emission>,
        lookup: &PvcLookup,
        emit: &mut dyn FnMut(&ObjectRef, EventType, &str, &str),
    ) {
        self.pending.extend(
            new.into_iter()
                .map(|emission| Pending { emission, tries: 0 }),
        );
        let mut blocked: HashSet<(String, String)> = HashSet::new();
        let mut keep = VecDeque::new();
        while let Some(mut p) = self.pending.pop_front() {
            let e = &p.emission;
            let key = (e.namespace.clone(), e.pvc.clone());
            if blocked.contains(&key) {
                keep.push_back(p);
                continue;
            }
            match lookup(&e.namespace, &e.pvc) {
                Ok(Some(pvc)) => {
                    emit(&ObjectRef::pvc(&pvc), e.kind, e.reason, &e.message);
                }
                Ok(None) => log::info!(
                    reason:% = e.reason,
                    pvc:% = format_args!("{}/{}", e.namespace, e.pvc);
                    "PVC is gone, not reporting"
                ),
                Err(err) => {
                    p.tries += 1;
                    if p.tries >= MAX_LOOKUP_TRIES {
                        log::error!(
                            reason:% = e.reason,
                            pvc:% = format_args!("{}/{}", e.namespace, e.pvc),
                            err:% = err;
                            "Get PVC error, event dropped"
                        );
                    } else {
                        log::warn!(
                            reason:% = e.reason,
                            pvc:% = format_args!("{}/{}", e.namespace, e.pvc),
                            err:% = err;
                            "Get PVC error, will retry"
                        );
                        blocked.insert(key);
                        keep.push_back(p);
                    }
                }
            }
        }
        self.pending = keep;
    }

    /// Start the Node and Pod reflectors and the "node-watcher" thread, which waits for both
    /// caches and then evaluates whenever a Node changes, when a NotReady node reaches the
    /// timeout, and every `tick` while events wait for a PVC lookup; otherwise it sleeps. `pvs` and `pvcs` are the
    /// controller's (synced) stores. Returns the watcher thread and the two reflector threads,
    /// in that order.
    pub fn spawn(
        client: Client,
        pvs: PvStore,
        pvcs: PvcStore,
        recorder: Recorder,
        timeout: Duration,
        tick: Duration,
        shutdown: Shutdown,
    ) -> std::io::Result<Vec<JoinHandle<()>>> {
        let (nodes, node_thread) = watch::spawn_reflector::<NodeRecord>(
            "node",
            client.clone(),
            "/api/v1/nodes",
            Vec::new(),
            shutdown.clone(),
        )?;
        let (pods, pod_thread) = watch::spawn_reflector::<PodRecord>(
            "pod",
            client.clone(),
            "/api/v1/pods",
            Vec::new(),
            shutdown.clone(),
        )?;
        let watcher = std::thread::Builder::new()
            .name("node-watcher".into())
            .spawn(move || {
                let caches = Caches {
                    nodes,
                    pods,
                    pvs,
                    pvcs,
                };
                NodeWatcher::new(timeout).run(&caches, &client, &recorder, tick, &shutdown);
            })?;
        Ok(vec![watcher, node_thread, pod_thread])
    }

    fn run(
        mut self,
        caches: &Caches,
        client: &Client,
        recorder: &Recorder,
        tick: Duration,
        shutdown: &Shutdown,
    ) {
        if !wait_synced(&caches.nodes, "Nodes", shutdown)
            || !wait_synced(&caches.pods, "Pods", shutdown)
        {
            return;
        }
        log::info!(
            timeout:? = self.timeout,
            tick:? = tick;
            "Node watcher started"
        );
        let lookup = |ns: &str, name: &str| caches.pvcs.get_or_fetch(client, ns, name);
        let mut emit = |o: &ObjectRef, kind: EventType, reason: &str, message: &str| {
            recorder.event(o, kind, reason, message);
        };
        // Subscribed before the first evaluation, so no change can fall between the two.
        let changes = caches.nodes.subscribe();
        let stop = shutdown.receiver();
        loop {
            let now = SystemTime::now();
            let planned = self.plan(
                now,
                &caches.nodes.snapshot(),
                &caches.pods.snapshot(),
                &caches.pvs.snapshot(),
            );
            self.deliver(planned, &lookup, &mut emit);
            // Nothing to do until a Node changes or a deadline comes: sleep, do not tick.
            let wait = self.next_wakeup(now, tick).unwrap_or(IDLE_RECHECK);
            crossbeam_channel::select! {
                recv(changes) -> c => {
                    if c.is_err() {
                        return;
                    }
                    // One evaluation covers every change that has queued up.
                    while changes.try_recv().is_ok() {}
                }
                recv(stop) -> _ => return,
                default(wait) => {}
            }
            if shutdown.is_triggered() {
                return;
            }
        }
    }
}

struct Caches {
    nodes: Store<NodeRecord>,
    pods: Store<PodRecord>,
    pvs: PvStore,
    pvcs: PvcStore,
}

/// Block until `store` has synced; false when shutdown came first.
fn wait_synced<T: Keyed + Clone>(store: &Store<T>, what: &str, shutdown: &Shutdown) -> bool {
    loop {
        if store.wait_synced(SYNC_WAIT_LOG, shutdown) {
            return true;
        }
        if shutdown.is_triggered() {
            return false;
        }
        log::warn!("Node watcher still waiting for the {what} cache to sync");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watch::PvPhase;
    use serde_json::json;
    use std::cell::RefCell;
    use std::time::UNIX_EPOCH;

    const T5M: Duration = Duration::from_secs(300);

    fn t(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_000_000 + s)
    }

    fn node(name: &str, ready: ReadyState, transition: Option<u64>) -> NodeRecord {
        NodeRecord {
            name: name.into(),
            ready,
            ready_transition: transition.map(t),
            deleting: false,
        }
    }

    fn nodes(list: &[NodeRecord]) -> Records<NodeRecord> {
        list.iter().cloned().collect()
    }

    fn failed(n: &str) -> Transition {
        Transition::Failed {
            node: n.into(),
            deleted: false,
        }
    }

    fn deleted(n: &str) -> Transition {
        Transition::Failed {
            node: n.into(),
            deleted: true,
        }
    }

    fn recovered(n: &str) -> Transition {
        Transition::Recovered { node: n.into() }
    }

    use ReadyState::{False, Missing, Unknown};
    const READY: ReadyState = ReadyState::True;

    /// Each case: ticks of (time, nodes, expected transitions).
    #[allow(clippy::type_complexity)]
    #[test]
    fn tracker_table() {
        let cases: Vec<(&str, Vec<(u64, Vec<NodeRecord>, Vec<Transition>)>)> = vec![
            (
                "goes NotReady while watched: measured from lastTransitionTime",
                vec![
                    (0, vec![node("n", READY, Some(0))], vec![]),
                    (100, vec![node("n", False, Some(98))], vec![]),
                    (397, vec![node("n", False, Some(98))], vec![]),
                    (398, vec![node("n", False, Some(98))], vec![failed("n")]),
                ],
            ),
            (
                "already NotReady at start: measured from the first tick",
                vec![
                    (0, vec![node("n", False, None)], vec![]),
                    (10, vec![node("n", Unknown, Some(0))], vec![]),
                    (299, vec![node("n", Unknown, Some(0))], vec![]),
                    (300, vec![node("n", Unknown, Some(0))], vec![failed("n")]),
                ],
            ),
            (
                "old transition time at start does not fail at once",
                vec![
                    (3600, vec![node("n", False, Some(0))], vec![]),
                    (3899, vec![node("n", False, Some(0))], vec![]),
                    (3900, vec![node("n", False, Some(0))], vec![failed("n")]),
                ],
            ),
            (
                "False then Unknown (new transition time) does not restart the stretch",
                vec![
                    (0, vec![node("n", READY, Some(0))], vec![]),
                    (10, vec![node("n", False, Some(10))], vec![]),
                    (60, vec![node("n", Unknown, Some(60))], vec![]),
                    (310, vec![node("n", Unknown, Some(60))], vec![failed("n")]),
                ],
            ),
            (
                "transition time in the future (clock skew): measured from first sight",
                vec![
                    (0, vec![node("n", READY, Some(0))], vec![]),
                    (10, vec![node("n", False, Some(500))], vec![]),
                    (309, vec![node("n", False, Some(500))], vec![]),
                    (310, vec![node("n", False, Some(500))], vec![failed("n")]),
                ],
            ),
            (
                "three timeouts NotReady: one Failed; Ready again: Recovered once",
                vec![
                    (0, vec![node("n", False, Some(0))], vec![]),
                    (300, vec![node("n", False, Some(0))], vec![failed("n")]),
                    (600, vec![node("n", False, Some(0))], vec![]),
                    (900, vec![node("n", Unknown, Some(700))], vec![]),
                    (901, vec![node("n", READY, Some(901))], vec![recovered("n")]),
                    (902, vec![node("n", READY, Some(901))], vec![]),
                ],
            ),
            (
                "Ready before the timeout: nothing, and the next stretch starts over",
                vec![
                    (0, vec![node("n", False, Some(0))], vec![]),
                    (200, vec![node("n", READY, Some(200))], vec![]),
                    (250, vec![node("n", False, Some(250))], vec![]),
                    (549, vec![node("n", False, Some(250))], vec![]),
                    (550, vec![node("n", False, Some(250))], vec![failed("n")]),
                ],
            ),
            (
                "no Ready condition: nothing, ever",
                vec![
                    (0, vec![node("n", Missing, None)], vec![]),
                    (10_000, vec![node("n", Missing, None)], vec![]),
                ],
            ),
            (
                "deleted while Ready: Failed once, then forgotten",
                vec![
                    (
                        0,
                        vec![node("a", READY, Some(0)), node("n", READY, Some(0))],
                        vec![],
                    ),
                    (5, vec![node("a", READY, Some(0))], vec![deleted("n")]),
                    (6, vec![node("a", READY, Some(0))], vec![]),
                ],
            ),
            (
                "deleted during an episode: no second Failed, no Recovered",
                vec![
                    (0, vec![node("n", False, Some(0))], vec![]),
                    (300, vec![node("n", False, Some(0))], vec![failed("n")]),
                    (301, vec![], vec![]),
                    (302, vec![], vec![]),
                ],
            ),
            (
                "deletionTimestamp set: Failed once, no Recovered though Ready",
                vec![
                    (0, vec![node("n", READY, Some(0))], vec![]),
                    (
                        1,
                        vec![NodeRecord {
                            deleting: true,
                            ..node("n", READY, Some(0))
                        }],
                        vec![deleted("n")],
                    ),
                    (
                        2,
                        vec![NodeRecord {
                            deleting: true,
                            ..node("n", READY, Some(0))
                        }],
                        vec![],
                    ),
                    (3, vec![], vec![]),
                ],
            ),
            (
                "re-created after deletion: a fresh node",
                vec![
                    (0, vec![node("n", READY, Some(0))], vec![]),
                    (1, vec![], vec![deleted("n")]),
                    (2, vec![node("n", False, Some(2))], vec![]),
                    (302, vec![node("n", False, Some(2))], vec![failed("n")]),
                ],
            ),
            (
                "Recovered only after Failed",
                vec![
                    (0, vec![node("n", Unknown, Some(0))], vec![]),
                    (100, vec![node("n", READY, Some(100))], vec![]),
                ],
            ),
            (
                "several nodes, sorted output",
                vec![
                    (
                        0,
                        vec![node("b", False, Some(0)), node("a", False, Some(0))],
                        vec![],
                    ),
                    (
                        300,
                        vec![node("b", False, Some(0)), node("a", False, Some(0))],
                        vec![failed("a"), failed("b")],
                    ),
                ],
            ),
        ];
        for (name, ticks) in cases {
            let mut tracker = NodeTracker::new();
            for (i, (at, list, want)) in ticks.into_iter().enumerate() {
                let got = tracker.tick(t(at), &nodes(&list), T5M);
                assert_eq!(got, want, "case {name:?}, tick {i} at {at}");
            }
        }
    }

    #[test]
    fn zero_timeout_fails_on_first_sight() {
        let mut tracker = NodeTracker::new();
        let got = tracker.tick(t(0), &nodes(&[node("n", False, Some(0))]), Duration::ZERO);
        assert_eq!(got, vec![failed("n")]);
    }

    fn pod(ns: &str, name: &str, node: &str, claims: &[&str]) -> PodRecord {
        PodRecord {
            key: format!("{ns}/{name}").into(),
            node_name: node.into(),
            claims: claims.iter().map(|&c| c.into()).collect(),
            deleting: false,
        }
    }

    fn pv(name: &str, phase: &str, ns: &str, claim: &str) -> PvRecord {
        PvRecord::new(
            name,
            &format!("h-{name}"),
            PvPhase::parse(phase),
            Some((ns, claim, &format!("uid-{claim}"))),
            false,
        )
        .unwrap()
    }

    fn key(ns: &str, pvc: &str) -> (String, String) {
        (ns.into(), pvc.into())
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn selector_picks_bound_claims_of_ours_on_the_node() {
        // `pvs` holds only this driver's PVs, so "other" (another driver's PVC) has none.
        let pvs: Records<_> = [
            pv("pv1", "Bound", "ns", "data1"),
            pv("pv2", "Bound", "ns", "data2"),
            pv("pv3", "Bound", "ns", "web-0-scratch"),
            pv("pv4", "Released", "ns", "old"),
            pv("pv5", "Bound", "other-ns", "data1"),
        ]
        .into_iter()
        .collect();
        let pods: Records<_> = [
            pod("ns", "p2", "n1", &["data1", "other"]),
            pod("ns", "p1", "n1", &["data1"]),
            pod("ns", "p3", "n1", &["data2"]),
            pod("ns", "web-0", "n1", &["web-0-scratch"]),
            pod("ns", "p4", "n2", &["data2"]),
            pod("ns", "p5", "", &["data2"]),
            pod("ns", "p6", "n1", &["old"]),
            PodRecord {
                deleting: true,
                ..pod("ns", "p7", "n1", &["data2"])
            },
        ]
        .into_iter()
        .collect();
        let got = affected_claims("n1", &pods, &pvs);
        let want: AffectedClaims = [
            (key("ns", "data1"), names(&["p1", "p2"])),
            (key("ns", "data2"), names(&["p3", "p7"])),
            (key("ns", "web-0-scratch"), names(&["web-0"])),
        ]
        .into();
        assert_eq!(got, want);
        assert!(affected_claims("n3", &pods, &pvs).is_empty());
    }

    #[test]
    fn messages_are_upstreams() {
        assert_eq!(
            node_failed_message(&names(&["p1", "p2"]), "pvc", "ns", "node1"),
            "Pods: [ p1 p2 ] consuming PVC: pvc in namespace: ns are now on a failed node: node1"
        );
        assert_eq!(
            node_failed_message(&names(&["p1"]), "c", "default", "n"),
            "Pods: [ p1 ] consuming PVC: c in namespace: default are now on a failed node: n"
        );
        assert_eq!(node_recovered_message("node1"), "Node: node1 recovered");
    }

    #[test]
    fn node_records_from_json() {
        let cases = vec![
            (
                json!({"metadata": {"name": "n1", "resourceVersion": "5"},
                       "status": {"conditions": [
                           {"type": "MemoryPressure", "status": "False",
                            "lastTransitionTime": "2026-01-01T00:00:00Z"},
                           {"type": "Ready", "status": "True",
                            "lastTransitionTime": "2026-01-02T03:04:05Z",
                            "lastHeartbeatTime": "2026-01-02T09:00:00Z"}]}}),
                Some((ReadyState::True, Some("2026-01-02T03:04:05Z"), false)),
            ),
            (
                json!({"metadata": {"name": "n1"}, "status": {"conditions": [
                    {"type": "Ready", "status": "False", "lastTransitionTime": "2026-01-02T03:04:05Z"}]}}),
                Some((ReadyState::False, Some("2026-01-02T03:04:05Z"), false)),
            ),
            (
                json!({"metadata": {"name": "n1"}, "status": {"conditions": [
                    {"type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown"}]}}),
                Some((ReadyState::Unknown, None, false)),
            ),
            (
                json!({"metadata": {"name": "n1"}, "status": {"conditions": [
                    {"type": "Ready", "status": "Weird", "lastTransitionTime": "garbage"}]}}),
                Some((ReadyState::Unknown, None, false)),
            ),
            // Malformed (a field of the wrong type): not a record; the reflector logs it.
            (
                json!({"metadata": {"name": "n1"}, "status": {"conditions": [
                    {"type": "Ready", "status": 7}]}}),
                None,
            ),
            (
                json!({"metadata": {"name": "n1", "deletionTimestamp": "2026-01-02T03:04:05Z"},
                       "status": {"conditions": [{"type": "MemoryPressure", "status": "False"}]}}),
                Some((ReadyState::Missing, None, true)),
            ),
            (
                json!({"metadata": {"name": "n1"}}),
                Some((ReadyState::Missing, None, false)),
            ),
            (
                json!({"metadata": {"name": "n1"}, "status": {"conditions": null}}),
                Some((ReadyState::Missing, None, false)),
            ),
            (
                json!({"metadata": {"name": "n1"}, "status": {"conditions": "nope"}}),
                None,
            ),
            (json!({"metadata": {}}), None),
            (json!({"metadata": {"name": ""}}), None),
            (json!([1, 2]), None),
        ];
        for (obj, want) in cases {
            let got = NodeRecord::from_object(&obj).map(|r| (r.name.clone(), r));
            let want = want.map(|(ready, ts, deleting)| {
                (
                    "n1".to_string(),
                    NodeRecord {
                        name: "n1".into(),
                        ready,
                        ready_transition: ts.and_then(parse_rfc3339),
                        deleting,
                    },
                )
            });
            assert_eq!(got, want, "{obj}");
        }
    }

    #[test]
    fn pod_records_from_json() {
        let full = json!({
            "metadata": {"name": "web-0", "namespace": "ns", "uid": "u",
                         "deletionTimestamp": "2026-01-02T03:04:05Z"},
            "spec": {"nodeName": "n1", "volumes": [
                {"name": "config", "configMap": {"name": "cfg"}},
                {"name": "data", "persistentVolumeClaim": {"claimName": "data-web-0"}},
                {"name": "scratch", "ephemeral": {"volumeClaimTemplate": {"spec": {}}}},
                {"name": "again", "persistentVolumeClaim": {"claimName": "data-web-0", "readOnly": true}},
                {"name": "bad", "persistentVolumeClaim": {}}
            ]},
            "status": {"phase": "Running"}
        });
        let key_and_record =
            |o: &Value| PodRecord::from_object(o).map(|r| (watch::object_key(o).unwrap(), r));
        assert_eq!(
            key_and_record(&full),
            Some((
                "ns/web-0".to_string(),
                PodRecord {
                    key: "ns/web-0".into(),
                    node_name: "n1".into(),
                    claims: ["data-web-0".into(), "web-0-scratch".into()].into(),
                    deleting: true,
                }
            ))
        );
        let unscheduled = json!({"metadata": {"name": "p", "namespace": "ns"},
            "spec": {"volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "c"}}]}});
        assert_eq!(
            PodRecord::from_object(&unscheduled)
                .map(|p| (p.node_name.to_string(), p.claims.to_vec())),
            Some((String::new(), vec!["c".into()]))
        );
        for lean in [
            json!({"metadata": {"name": "p", "namespace": "ns"},
                   "spec": {"nodeName": "n1", "volumes": [{"name": "t", "emptyDir": {}}]}}),
            json!({"metadata": {"name": "p", "namespace": "ns"}, "spec": {"nodeName": "n1"}}),
            json!({"metadata": {"name": "p"},
                   "spec": {"volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "c"}}]}}),
            json!({"metadata": {"name": "p", "namespace": "ns"},
                   "spec": {"volumes": [{"name": "e", "ephemeral": null}]}}),
            json!("pod"),
        ] {
            assert_eq!(key_and_record(&lean), None, "{lean}");
        }
    }

    /// The watcher sleeps until a NotReady node's deadline, or a retry while an event waits
    /// for its PVC; with every node Ready and nothing pending, only a change wakes it.
    #[test]
    fn sleeps_until_the_next_deadline() {
        let tick = Duration::from_secs(1);
        let (pods, pvs) = (Records::new(), Records::new());
        let mut w = NodeWatcher::new(T5M);
        w.plan(t(0), &nodes(&[node("a", READY, Some(0))]), &pods, &pvs);
        assert_eq!(w.next_wakeup(t(0), tick), None);
        let two = nodes(&[node("a", False, Some(100)), node("b", Unknown, Some(105))]);
        w.plan(t(110), &two, &pods, &pvs);
        assert_eq!(
            w.next_wakeup(t(110), tick),
            Some(Duration::from_secs(290)),
            "a's stretch began at 100: it fails at 400"
        );
        let out = w.plan(t(400), &two, &pods, &pvs);
        assert!(out.is_empty(), "no PVCs, no events: {out:?}");
        assert_eq!(w.next_wakeup(t(400), tick), Some(Duration::from_secs(5)));
        w.plan(t(500), &two, &pods, &pvs);
        assert_eq!(
            w.next_wakeup(t(500), tick),
            None,
            "both failed: nothing to time"
        );
        // An event waiting for its PVC lookup is retried on the tick.
        let emission = Emission {
            namespace: "ns".into(),
            pvc: "c".into(),
            kind: EventType::Warning,
            reason: REASON_FAILED,
            message: "m".into(),
        };
        let failing = |_: &str, _: &str| -> Result<Option<PvcRecord>, kube::Error> {
            Err(kube::Error::Transport {
                what: "GET c".into(),
                message: "refused".into(),
            })
        };
        w.deliver(vec![emission], &failing, &mut |_, _, _, _| {});
        assert_eq!(w.next_wakeup(t(500), tick), Some(tick));
    }

    fn pvc_record(ns: &str, name: &str) -> PvcRecord {
        PvcRecord::new(ns, name, &format!("uid-{name}"), "7", "", None).unwrap()
    }

    type Recorded = Vec<(String, EventType, String, String)>;

    /// One tick through plan + deliver with every PVC found; returns (pvc, type, reason, msg).
    fn step(
        w: &mut NodeWatcher,
        at: u64,
        nodes_now: &[NodeRecord],
        pods: &Records<PodRecord>,
        pvs: &Records<PvRecord>,
    ) -> Recorded {
        let planned = w.plan(t(at), &nodes(nodes_now), pods, pvs);
        let out = RefCell::new(Vec::new());
        let lookup = |ns: &str, name: &str| Ok(Some(pvc_record(ns, name)));
        let mut emit = |o: &ObjectRef, kind: EventType, reason: &str, msg: &str| {
            assert_eq!(
                (
                    o.kind.as_str(),
                    o.api_version.as_str(),
                    o.uid.clone(),
                    o.resource_version.as_str()
                ),
                (
                    "PersistentVolumeClaim",
                    "v1",
                    format!("uid-{}", o.name),
                    "7"
                )
            );
            out.borrow_mut().push((
                format!("{}/{}", o.namespace, o.name),
                kind,
                reason.to_string(),
                msg.to_string(),
            ));
        };
        w.deliver(planned, &lookup, &mut emit);
        out.into_inner()
    }

    fn ev(
        pvc: &str,
        kind: EventType,
        reason: &str,
        msg: &str,
    ) -> (String, EventType, String, String) {
        (pvc.into(), kind, reason.into(), msg.into())
    }

    #[test]
    fn episode_from_failure_to_recovery() {
        let pvs: Records<_> = [
            pv("pv1", "Bound", "ns", "c1"),
            pv("pv2", "Bound", "ns", "c2"),
        ]
        .into_iter()
        .collect();
        // "foreign" is another driver's claim: its PV is not in our store.
        let mut pods: Records<_> = [
            pod("ns", "b", "n1", &["c1"]),
            pod("ns", "a", "n1", &["c1", "foreign"]),
            pod("ns", "gone", "n1", &["c2"]),
            pod("ns", "late", "", &["c2"]),
        ]
        .into_iter()
        .collect();
        let mut w = NodeWatcher::new(T5M);
        let ready = [node("n1", READY, Some(0))];
        let down = [node("n1", Unknown, Some(10))];
        assert!(step(&mut w, 0, &ready, &pods, &pvs).is_empty());
        assert!(step(&mut w, 11, &down, &pods, &pvs).is_empty());
        // Scheduled after start, while the node was up; another deleted while it is down.
        pods.insert(pod("ns", "late", "n1", &["c2"]));
        pods.remove("ns/gone");
        assert!(
            step(&mut w, 309, &down, &pods, &pvs).is_empty(),
            "before the timeout"
        );
        let failed = step(&mut w, 310, &down, &pods, &pvs);
        assert_eq!(
            failed,
            vec![
                ev(
                    "ns/c1",
                    EventType::Warning,
                    "NodeFailed",
                    "Pods: [ a b ] consuming PVC: c1 in namespace: ns are now on a failed node: n1"
                ),
                ev(
                    "ns/c2",
                    EventType::Warning,
                    "NodeFailed",
                    "Pods: [ late ] consuming PVC: c2 in namespace: ns are now on a failed node: n1"
                ),
            ]
        );
        for at in [311, 610, 910, 1210] {
            assert!(
                step(&mut w, at, &down, &pods, &pvs).is_empty(),
                "repeat at {at}"
            );
        }
        // Evicted meanwhile: recovery still goes to the PVCs that got NodeFailed.
        pods = Records::new();
        let back = step(&mut w, 1300, &[node("n1", READY, Some(1300))], &pods, &pvs);
        assert_eq!(
            back,
            vec![
                ev(
                    "ns/c1",
                    EventType::Normal,
                    "NodeRecovered",
                    "Node: n1 recovered"
                ),
                ev(
                    "ns/c2",
                    EventType::Normal,
                    "NodeRecovered",
                    "Node: n1 recovered"
                ),
            ]
        );
        assert!(step(&mut w, 1301, &[node("n1", READY, Some(1300))], &pods, &pvs).is_empty());
    }

    #[test]
    fn deleted_node_fails_once_and_never_recovers() {
        let pvs: Records<_> = [pv("pv1", "Bound", "ns", "c1")].into_iter().collect();
        let pods: Records<_> = [pod("ns", "a", "n1", &["c1"])].into_iter().collect();
        let mut w = NodeWatcher::new(T5M);
        assert!(step(&mut w, 0, &[node("n1", READY, Some(0))], &pods, &pvs).is_empty());
        assert_eq!(
            step(&mut w, 1, &[], &pods, &pvs),
            vec![ev(
                "ns/c1",
                EventType::Warning,
                "NodeFailed",
                "Pods: [ a ] consuming PVC: c1 in namespace: ns are now on a failed node: n1"
            )]
        );
        assert!(step(&mut w, 2, &[], &pods, &pvs).is_empty());
        // Same name registers again: a new node, no recovery of the old one.
        assert!(step(&mut w, 3, &[node("n1", READY, Some(3))], &pods, &pvs).is_empty());
    }

    #[test]
    fn failed_lookups_are_retried_in_order_then_dropped() {
        let mut w = NodeWatcher::new(T5M);
        let e = |pvc: &str, reason: &'static str| Emission {
            namespace: "ns".into(),
            pvc: pvc.into(),
            kind: EventType::Warning,
            reason,
            message: format!("{reason} {pvc}"),
        };
        let down = RefCell::new(HashSet::from(["c1".to_string()]));
        let lookup = |ns: &str, name: &str| {
            if down.borrow().contains(name) {
                Err(kube::Error::Transport {
                    what: format!("GET {name}"),
                    message: "connection refused".into(),
                })
            } else if name == "missing" {
                Ok(None)
            } else {
                Ok(Some(pvc_record(ns, name)))
            }
        };
        let got = RefCell::new(Vec::new());
        let mut emit = |o: &ObjectRef, _: EventType, reason: &str, _: &str| {
            got.borrow_mut().push(format!("{} {}", o.name, reason))
        };
        w.deliver(
            vec![
                e("c1", "NodeFailed"),
                e("missing", "NodeFailed"),
                e("c2", "NodeFailed"),
            ],
            &lookup,
            &mut emit,
        );
        assert_eq!(*got.borrow(), vec!["c2 NodeFailed"]);
        // The recovery of c1 must wait behind its failure.
        w.deliver(vec![e("c1", "NodeRecovered")], &lookup, &mut emit);
        assert_eq!(got.borrow().len(), 1);
        down.borrow_mut().clear();
        w.deliver(Vec::new(), &lookup, &mut emit);
        assert_eq!(
            *got.borrow(),
            vec!["c2 NodeFailed", "c1 NodeFailed", "c1 NodeRecovered"]
        );

        down.borrow_mut().insert("c3".into());
        w.deliver(vec![e("c3", "NodeFailed")], &lookup, &mut emit);
        for _ in 1..MAX_LOOKUP_TRIES {
            w.deliver(Vec::new(), &lookup, &mut emit);
        }
        assert!(
            w.pending.is_empty(),
            "given up after {MAX_LOOKUP_TRIES} tries"
        );
        down.borrow_mut().clear();
        w.deliver(Vec::new(), &lookup, &mut emit);
        assert_eq!(got.borrow().len(), 3);
    }
}
