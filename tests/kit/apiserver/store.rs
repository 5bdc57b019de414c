//! The in-memory store: objects per resource, the one resourceVersion counter, creation,
//! update (main resource, status and finalize), deletion with finalizers, paginated lists over
//! snapshots with continue tokens, and the change history that watches replay from and that
//! compaction forgets.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::{json, Value};

use healthmon::kube::config::{base64_decode, base64_encode};
use healthmon::timeutil::rfc3339;

use super::resources::{obj_name, Failure, ResDef, RESOURCES};
use super::selectors::Filter;
use super::validation::{check_body, normalize, pvc_health_status, validate_name};
use super::watch::{event_line, Sub, WatchMsg};

pub(super) type Key = (String, String);

/// A stored object, read as a JSON tree. Objects stored by a bulk load
/// ([`Store::compact_writes`]) keep only their serialized text until a reader needs the tree
/// (a GET, a write, a selector, a watch event) and are listed by copying that text: a million
/// PVs as trees take ~7 KB each (a `BTreeMap` node per nested object), as text ~1 KB.
pub(super) struct Obj {
    tree: OnceLock<Value>,
    text: Option<Box<RawValue>>,
}

impl Obj {
    pub(super) fn tree(v: Value) -> Obj {
        Obj {
            tree: OnceLock::from(v),
            text: None,
        }
    }

    fn text(v: &Value) -> Obj {
        Obj {
            tree: OnceLock::new(),
            text: Some(serde_json::value::to_raw_value(v).expect("a JSON tree serializes")),
        }
    }
}

impl Deref for Obj {
    type Target = Value;

    fn deref(&self) -> &Value {
        self.tree.get_or_init(|| {
            let text = self.text.as_ref().map_or("null", |t| t.get());
            serde_json::from_str(text).expect("stored JSON text parses")
        })
    }
}

impl Serialize for Obj {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.text {
            Some(t) => t.serialize(s),
            None => (**self).serialize(s),
        }
    }
}

pub(super) struct Entry {
    pub(super) obj: Arc<Obj>,
    /// creation order, for `events()`
    pub(super) seq: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

pub(super) struct Change {
    pub(super) rv: u64,
    pub(super) res: &'static str,
    pub(super) ns: String,
    pub(super) ty: EventType,
    pub(super) obj: Arc<Obj>,
    pub(super) prev: Option<Arc<Obj>>,
    /// the serialized event line, shared by every watcher that sends it unchanged
    line: OnceLock<Vec<u8>>,
}

impl Change {
    pub(super) fn line(&self) -> &[u8] {
        self.line
            .get_or_init(|| event_line(self.ty.as_str(), &self.obj))
    }
}

struct Snapshot {
    id: u64,
    rv: u64,
    items: Arc<Vec<Arc<Obj>>>,
}

/// Snapshots kept for continue tokens; older tokens get 410 unless nothing changed since.
const MAX_SNAPSHOTS: usize = 64;
/// The first resourceVersion: everything below it counts as compacted, as on a real cluster
/// where resourceVersion 1 is long gone.
const FIRST_RV: u64 = 1000;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Mode {
    /// HTTP write of the main resource: status ignored, defaults applied.
    Main,
    /// HTTP write of /status: only status taken.
    Status,
    /// PUT /api/v1/namespaces/<ns>/finalize: only spec.finalizers taken.
    Finalize,
    /// Rust API: taken as given, no preconditions.
    Direct,
}

pub(super) struct Store {
    pub(super) rv: u64,
    pub(super) floor: u64,
    seq: u64,
    tables: HashMap<&'static str, BTreeMap<Key, Entry>>,
    pub(super) history: VecDeque<Arc<Change>>,
    history_cap: usize,
    pub(super) subs: Vec<Sub>,
    pub(super) next_sub: u64,
    snapshots: VecDeque<Snapshot>,
    next_snap: u64,
    /// [`Options::pvc_health_status`]
    pub(super) health_gate: bool,
    /// Store what is written from now on as text ([`Obj`]): set for a bulk load only.
    pub(super) compact_writes: bool,
}

pub(super) struct ListResult {
    pub(super) rv: u64,
    pub(super) items: Arc<Vec<Arc<Obj>>>,
    pub(super) start: usize,
    pub(super) end: usize,
    pub(super) cont: Option<String>,
}

impl Store {
    pub(super) fn new(history: usize, health_gate: bool) -> Store {
        Store {
            rv: FIRST_RV,
            floor: FIRST_RV,
            seq: 0,
            tables: HashMap::new(),
            history: VecDeque::new(),
            history_cap: history,
            subs: Vec::new(),
            next_sub: 1,
            snapshots: VecDeque::new(),
            next_snap: 1,
            health_gate,
            compact_writes: false,
        }
    }

    fn key(ns: Option<&str>, name: &str) -> Key {
        (ns.unwrap_or("").to_string(), name.to_string())
    }

    pub(super) fn get(&self, def: &ResDef, ns: Option<&str>, name: &str) -> Option<&Entry> {
        self.tables.get(def.plural)?.get(&Store::key(ns, name))
    }

    pub(super) fn entries<'a>(
        &'a self,
        def: &ResDef,
        ns: Option<&'a str>,
    ) -> Box<dyn Iterator<Item = (&'a Key, &'a Entry)> + 'a> {
        let Some(t) = self.tables.get(def.plural) else {
            return Box::new(std::iter::empty());
        };
        match ns {
            None => Box::new(t.iter()),
            Some(ns) => Box::new(
                t.range((ns.to_string(), String::new())..)
                    .take_while(move |(k, _)| k.0 == ns),
            ),
        }
    }

    fn record(
        &mut self,
        def: &'static ResDef,
        ns: &str,
        ty: EventType,
        obj: Arc<Obj>,
        prev: Option<Arc<Obj>>,
    ) {
        let change = Arc::new(Change {
            rv: self.rv,
            res: def.plural,
            ns: ns.to_string(),
            ty,
            obj,
            prev,
            line: OnceLock::new(),
        });
        if self.history_cap == 0 {
            self.floor = self.rv;
        } else {
            self.history.push_back(change.clone());
            while self.history.len() > self.history_cap {
                if let Some(old) = self.history.pop_front() {
                    self.floor = old.rv;
                }
            }
        }
        self.subs.retain(|s| {
            if s.res != def.plural || s.ns.as_deref().is_some_and(|n| n != ns) {
                return true;
            }
            s.tx.send(WatchMsg::Change(change.clone())).is_ok()
        });
    }

    /// Stores `obj` with a new resourceVersion and tells watchers.
    fn put(&mut self, def: &'static ResDef, key: Key, mut obj: Value, ty: EventType) -> Arc<Obj> {
        self.rv += 1;
        set_meta(&mut obj, "resourceVersion", json!(self.rv.to_string()));
        let obj = Arc::new(if self.compact_writes {
            Obj::text(&obj)
        } else {
            Obj::tree(obj)
        });
        let seq = match self.tables.get(def.plural).and_then(|t| t.get(&key)) {
            Some(e) => e.seq,
            None => {
                self.seq += 1;
                self.seq
            }
        };
        let prev = self
            .tables
            .entry(def.plural)
            .or_default()
            .insert(
                key.clone(),
                Entry {
                    obj: obj.clone(),
                    seq,
                },
            )
            .map(|e| e.obj);
        self.record(def, &key.0, ty, obj.clone(), prev);
        obj
    }

    /// Removes an object now (finalizers ignored); namespaces take their contents along.
    pub(super) fn remove(
        &mut self,
        def: &'static ResDef,
        ns: Option<&str>,
        name: &str,
    ) -> Option<Arc<Obj>> {
        let key = Store::key(ns, name);
        let entry = self.tables.get_mut(def.plural)?.remove(&key)?;
        if def.plural == "namespaces" {
            for d in RESOURCES.iter().filter(|d| d.namespaced) {
                let keys: Vec<Key> = self
                    .entries(d, Some(name))
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in keys {
                    self.remove(d, Some(&k.0), &k.1);
                }
            }
        }
        self.rv += 1;
        let mut obj = Value::clone(&entry.obj);
        set_meta(&mut obj, "resourceVersion", json!(self.rv.to_string()));
        let obj = Arc::new(Obj::tree(obj));
        self.record(
            def,
            &key.0,
            EventType::Deleted,
            obj.clone(),
            Some(entry.obj),
        );
        Some(obj)
    }

    pub(super) fn create(
        &mut self,
        def: &'static ResDef,
        ns: Option<&str>,
        body: Value,
        mode: Mode,
    ) -> Result<(u16, Arc<Obj>), Failure> {
        let mut obj = check_body(def, body)?;
        let meta = obj.get_mut("metadata").and_then(Value::as_object_mut);
        let Some(meta) = meta else {
            return Err(Failure::bad_request("metadata is required"));
        };
        let mut name = meta
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if name.is_empty() {
            let gen = meta
                .get("generateName")
                .and_then(Value::as_str)
                .unwrap_or("");
            if gen.is_empty() {
                return Err(Failure::invalid(
                    def,
                    "",
                    "metadata.name: Required value: name or generateName is required",
                ));
            }
            loop {
                name = format!("{gen}{}", random_suffix());
                if self.get(def, ns, &name).is_none() {
                    break;
                }
            }
            meta.insert("name".into(), json!(name));
        }
        if let Err(why) = validate_name(&name) {
            return Err(Failure::invalid(
                def,
                &name,
                &format!("metadata.name: Invalid value: \"{name}\": {why}"),
            ));
        }
        match ns {
            Some(ns) => {
                if let Some(b) = meta.get("namespace").and_then(Value::as_str) {
                    if !b.is_empty() && b != ns {
                        return Err(Failure::bad_request(
                            "the namespace of the provided object does not match the namespace sent on the request",
                        ));
                    }
                }
                meta.insert("namespace".into(), json!(ns));
            }
            None => {
                meta.remove("namespace");
            }
        }
        if self.get(def, ns, &name).is_some() {
            return Err(Failure::already_exists(def, &name));
        }
        if mode != Mode::Direct || !meta.contains_key("uid") {
            meta.insert("uid".into(), json!(uuid()));
        }
        if mode != Mode::Direct || !meta.contains_key("creationTimestamp") {
            meta.insert(
                "creationTimestamp".into(),
                json!(rfc3339(SystemTime::now())),
            );
        }
        if mode != Mode::Direct {
            meta.remove("deletionTimestamp");
            meta.remove("deletionGracePeriodSeconds");
        }
        let protect = match def.plural {
            "persistentvolumes" => Some("kubernetes.io/pv-protection"),
            "persistentvolumeclaims" => Some("kubernetes.io/pvc-protection"),
            _ => None,
        };
        if let Some(f) = protect {
            let list = meta.entry("finalizers").or_insert_with(|| json!([]));
            if !list.is_array() {
                *list = json!([]);
            }
            if let Some(a) = list.as_array_mut() {
                if !a.iter().any(|x| x == f) {
                    a.push(json!(f));
                }
            }
        }
        if mode != Mode::Direct && def.plural == "pods" {
            let ok = obj
                .pointer("/spec/containers")
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty());
            if !ok {
                return Err(Failure::invalid(
                    def,
                    &name,
                    "spec.containers: Required value",
                ));
            }
        }
        let given_status = obj
            .get("status")
            .is_some_and(|s| s.as_object().is_some_and(|m| !m.is_empty()));
        if def.has_status && (mode != Mode::Direct || !given_status) && def.plural != "nodes" {
            let status = match def.plural {
                "persistentvolumes" => {
                    json!({"phase": "Pending", "lastPhaseTransitionTime": rfc3339(SystemTime::now())})
                }
                "persistentvolumeclaims" | "pods" => json!({"phase": "Pending"}),
                "namespaces" => json!({"phase": "Active"}),
                _ => json!({}),
            };
            set_obj(&mut obj, "status", status);
        }
        normalize(def, &name, &mut obj)?;
        pvc_health_status(def, &name, &mut obj, self.health_gate, mode)?;
        let key = Store::key(ns, &name);
        Ok((201, self.put(def, key, obj, EventType::Added)))
    }

    pub(super) fn update(
        &mut self,
        def: &'static ResDef,
        ns: Option<&str>,
        name: &str,
        body: Value,
        mode: Mode,
    ) -> Result<(u16, Arc<Obj>), Failure> {
        let Some(old) = self.get(def, ns, name).map(|e| e.obj.clone()) else {
            // observed on real servers: events are created by PUT (AllowCreateOnUpdate)
            if def.plural == "events" && mode == Mode::Main {
                return self.create(def, ns, body, mode);
            }
            return Err(Failure::not_found(def, name));
        };
        let body = check_body(def, body)?;
        let body_name = obj_name(&body).to_string();
        if !body_name.is_empty() && body_name != name {
            return Err(Failure::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        if let (Some(ns), Some(b)) = (
            ns,
            body.pointer("/metadata/namespace").and_then(Value::as_str),
        ) {
            if !b.is_empty() && b != ns {
                return Err(Failure::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
        }
        let old_rv = old
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let body_rv = body
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if mode != Mode::Direct && !body_rv.is_empty() && body_rv != old_rv {
            return Err(Failure::conflict(
                def,
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            ));
        }
        let mut new = match mode {
            Mode::Main | Mode::Direct => body,
            Mode::Status => {
                let mut n = (*old).clone();
                match body.get("status") {
                    Some(s) => set_obj(&mut n, "status", s.clone()),
                    None => remove_key(&mut n, "status"),
                }
                n
            }
            Mode::Finalize => {
                let mut n = (*old).clone();
                let f = body
                    .pointer("/spec/finalizers")
                    .cloned()
                    .unwrap_or(json!([]));
                if let Some(spec) = n.get_mut("spec").and_then(Value::as_object_mut) {
                    spec.insert("finalizers".into(), f);
                } else {
                    set_obj(&mut n, "spec", json!({"finalizers": f}));
                }
                n
            }
        };
        // fields the server owns
        for k in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ] {
            if mode == Mode::Direct && new.pointer(&format!("/metadata/{k}")).is_some() {
                continue;
            }
            match old.pointer(&format!("/metadata/{k}")) {
                Some(v) => set_meta(&mut new, k, v.clone()),
                None => remove_meta(&mut new, k),
            }
        }
        set_meta(&mut new, "name", json!(name));
        match ns {
            Some(ns) => set_meta(&mut new, "namespace", json!(ns)),
            None => remove_meta(&mut new, "namespace"),
        }
        if mode == Mode::Main && def.has_status {
            match old.get("status") {
                Some(s) => set_obj(&mut new, "status", s.clone()),
                None => remove_key(&mut new, "status"),
            }
        }
        normalize(def, name, &mut new)?;
        pvc_health_status(def, name, &mut new, self.health_gate, mode)?;
        set_meta(&mut new, "resourceVersion", json!(old_rv));
        let terminating = new.pointer("/metadata/deletionTimestamp").is_some();
        if terminating && finalizers_empty(def, &new) {
            let gone = self.remove(def, ns, name);
            return Ok((200, gone.unwrap_or(old)));
        }
        if new == **old {
            // a no-op write keeps the resourceVersion, as etcd3's store does
            return Ok((200, old));
        }
        let key = Store::key(ns, name);
        Ok((200, self.put(def, key, new, EventType::Modified)))
    }

    pub(super) fn delete(
        &mut self,
        def: &'static ResDef,
        ns: Option<&str>,
        name: &str,
        opts: &Value,
    ) -> Result<Arc<Obj>, Failure> {
        let Some(old) = self.get(def, ns, name).map(|e| e.obj.clone()) else {
            return Err(Failure::not_found(def, name));
        };
        if let Some(uid) = opts.pointer("/preconditions/uid").and_then(Value::as_str) {
            let have = old
                .pointer("/metadata/uid")
                .and_then(Value::as_str)
                .unwrap_or("");
            if uid != have {
                return Err(Failure::conflict(
                    def,
                    name,
                    &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {have}"
                ),
                ));
            }
        }
        if let Some(rv) = opts
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
        {
            let have = old
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .unwrap_or("");
            if rv != have {
                return Err(Failure::conflict(def, name, &format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {have}"
                )));
            }
        }
        if def.plural == "namespaces" {
            // no namespace controller here: the contents go at once
            for d in RESOURCES.iter().filter(|d| d.namespaced) {
                let keys: Vec<Key> = self
                    .entries(d, Some(name))
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in keys {
                    self.remove(d, Some(&k.0), &k.1);
                }
            }
        }
        if finalizers_empty(def, &old) {
            return Ok(self.remove(def, ns, name).unwrap_or(old));
        }
        if old.pointer("/metadata/deletionTimestamp").is_some() {
            return Ok(old);
        }
        let mut new = (*old).clone();
        set_meta(
            &mut new,
            "deletionTimestamp",
            json!(rfc3339(SystemTime::now())),
        );
        set_meta(&mut new, "deletionGracePeriodSeconds", json!(0));
        if def.plural == "namespaces" {
            if let Some(st) = new.get_mut("status").and_then(Value::as_object_mut) {
                st.insert("phase".into(), json!("Terminating"));
            }
        }
        let key = Store::key(ns, name);
        Ok(self.put(def, key, new, EventType::Modified))
    }

    pub(super) fn list(
        &mut self,
        def: &ResDef,
        ns: Option<&str>,
        filter: &Filter,
        limit: usize,
        cont: Option<&str>,
    ) -> Result<ListResult, Failure> {
        let (snap_id, rv, items, start) = match cont {
            Some(token) => {
                let t = ContinueToken::decode(token)?;
                if t.rv < self.floor {
                    return Err(expired_continue());
                }
                match self
                    .snapshots
                    .iter()
                    .find(|s| s.id == t.snap && s.rv == t.rv)
                {
                    Some(s) => (s.id, s.rv, s.items.clone(), t.pos),
                    // nothing written since: the live store is that snapshot
                    None if t.rv == self.rv => {
                        let items = Arc::new(self.filtered(def, ns, filter));
                        (0, self.rv, items, t.pos)
                    }
                    None => return Err(expired_continue()),
                }
            }
            None => (0, self.rv, Arc::new(self.filtered(def, ns, filter)), 0),
        };
        let start = start.min(items.len());
        let end = if limit == 0 {
            items.len()
        } else {
            (start + limit).min(items.len())
        };
        let mut cont_token = None;
        if end < items.len() {
            let id = if snap_id != 0 {
                snap_id
            } else {
                let id = self.next_snap;
                self.next_snap += 1;
                self.snapshots.push_back(Snapshot {
                    id,
                    rv,
                    items: items.clone(),
                });
                while self.snapshots.len() > MAX_SNAPSHOTS {
                    self.snapshots.pop_front();
                }
                id
            };
            cont_token = Some(
                ContinueToken {
                    rv,
                    snap: id,
                    pos: end,
                }
                .encode(),
            );
        }
        Ok(ListResult {
            rv,
            items,
            start,
            end,
            cont: cont_token,
        })
    }

    pub(super) fn filtered(
        &self,
        def: &ResDef,
        ns: Option<&str>,
        filter: &Filter,
    ) -> Vec<Arc<Obj>> {
        self.entries(def, ns)
            // No selector: the objects are not read (a bulk-loaded one stays text).
            .filter(|(_, e)| filter.is_empty() || filter.matches(&e.obj))
            .map(|(_, e)| e.obj.clone())
            .collect()
    }

    pub(super) fn compact(&mut self) {
        self.floor = self.rv;
        self.history.clear();
        self.snapshots.clear();
    }
}

fn expired_continue() -> Failure {
    Failure::expired(
        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.",
    )
}

fn finalizers_empty(def: &ResDef, obj: &Value) -> bool {
    let empty = |v: Option<&Value>| v.and_then(Value::as_array).is_none_or(|a| a.is_empty());
    let meta = empty(obj.pointer("/metadata/finalizers"));
    if def.plural == "namespaces" {
        meta && empty(obj.pointer("/spec/finalizers"))
    } else {
        meta
    }
}

fn set_obj(obj: &mut Value, key: &str, v: Value) {
    if let Some(m) = obj.as_object_mut() {
        m.insert(key.to_string(), v);
    }
}

fn remove_key(obj: &mut Value, key: &str) {
    if let Some(m) = obj.as_object_mut() {
        m.remove(key);
    }
}

pub(super) fn set_meta(obj: &mut Value, key: &str, v: Value) {
    let Some(m) = obj.as_object_mut() else { return };
    let meta = m.entry("metadata").or_insert_with(|| json!({}));
    if !meta.is_object() {
        *meta = json!({});
    }
    if let Some(meta) = meta.as_object_mut() {
        meta.insert(key.to_string(), v);
    }
}

fn remove_meta(obj: &mut Value, key: &str) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove(key);
    }
}

// ---------------------------------------------------------------------------------------------
// continue tokens

struct ContinueToken {
    rv: u64,
    snap: u64,
    pos: usize,
}

impl ContinueToken {
    fn encode(&self) -> String {
        let j = json!({"v": "meta.k8s.io/v1", "rv": self.rv, "snap": self.snap, "pos": self.pos});
        base64_encode(j.to_string().as_bytes())
    }
    fn decode(s: &str) -> Result<ContinueToken, Failure> {
        let bad = || Failure::bad_request(format!("continue key is not valid: {s}"));
        let raw = base64_decode(s).map_err(|_| bad())?;
        let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
        if v.get("v").and_then(Value::as_str) != Some("meta.k8s.io/v1") {
            return Err(bad());
        }
        let n = |k: &str| v.get(k).and_then(Value::as_u64).ok_or_else(bad);
        Ok(ContinueToken {
            rv: n("rv")?,
            snap: n("snap")?,
            pos: n("pos")? as usize,
        })
    }
}

pub(super) fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

fn uuid() -> String {
    let a = random_u64();
    let b = random_u64();
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        0x8000 | (b >> 48) & 0x3fff,
        b & 0xffff_ffff_ffff
    )
}

/// As apiserver's generateName suffix: 5 characters without vowels.
fn random_suffix() -> String {
    const ALPHA: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut r = random_u64();
    (0..5)
        .map(|_| {
            let c = ALPHA[(r % ALPHA.len() as u64) as usize] as char;
            r /= ALPHA.len() as u64;
            c
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::testclient::*;
    use super::super::*;
    use super::*;

    #[test]
    fn pagination_serves_one_snapshot() {
        let s = FakeApiServer::start();
        for i in 0..7 {
            s.create(pv(&format!("pv-{i}"), json!({"app": "a"})));
        }
        let (c, p1) = get_json(&s, "/api/v1/persistentvolumes?limit=3");
        assert_eq!(c, 200);
        assert_eq!(p1["kind"], "PersistentVolumeList");
        assert_eq!(p1["items"].as_array().map(Vec::len), Some(3));
        assert_eq!(p1["metadata"]["remainingItemCount"], 4);
        let rv = p1["metadata"]["resourceVersion"].clone();
        // a write between pages is not visible in the continued list
        s.create(pv("pv-0a", json!({})));
        let tok = p1["metadata"]["continue"]
            .as_str()
            .expect("continue")
            .to_string();
        let (_, p2) = get_json(
            &s,
            &format!("/api/v1/persistentvolumes?limit=3&continue={tok}"),
        );
        let names: Vec<&str> = p2["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(obj_name)
            .collect();
        assert_eq!(names, ["pv-3", "pv-4", "pv-5"]);
        assert_eq!(p2["metadata"]["resourceVersion"], rv);
        let tok = p2["metadata"]["continue"]
            .as_str()
            .expect("continue")
            .to_string();
        let (_, p3) = get_json(
            &s,
            &format!("/api/v1/persistentvolumes?limit=3&continue={tok}"),
        );
        assert_eq!(p3["items"].as_array().map(Vec::len), Some(1));
        assert!(p3["metadata"].get("continue").is_none());
        // with a label selector: filtered, no remainingItemCount
        let (_, f) = get_json(
            &s,
            "/api/v1/persistentvolumes?limit=2&labelSelector=app%3Da",
        );
        assert_eq!(f["items"].as_array().map(Vec::len), Some(2));
        assert!(f["metadata"].get("remainingItemCount").is_none());
        assert!(f["metadata"]["continue"].is_string());
    }

    #[test]
    fn continue_token_expires_with_compaction_and_rejects_garbage() {
        let s = FakeApiServer::start();
        for i in 0..3 {
            s.create(pv(&format!("pv-{i}"), json!({})));
        }
        let (_, p1) = get_json(&s, "/api/v1/persistentvolumes?limit=1");
        let tok = p1["metadata"]["continue"]
            .as_str()
            .expect("continue")
            .to_string();
        s.create(pv("later", json!({})));
        s.compact();
        let (c, b) = get_json(
            &s,
            &format!("/api/v1/persistentvolumes?limit=1&continue={tok}"),
        );
        assert_eq!((c, b["reason"].as_str()), (410, Some("Expired")));
        let (c, b) = get_json(&s, "/api/v1/persistentvolumes?limit=1&continue=bm9wZQ");
        assert_eq!((c, b["reason"].as_str()), (400, Some("BadRequest")));
    }

    #[test]
    fn not_found_and_conflict_bodies() {
        let s = FakeApiServer::start();
        let (c, b) = get_json(&s, "/apis/coordination.k8s.io/v1/namespaces/ns/leases/x");
        assert_eq!(c, 404);
        assert_eq!(b["message"], "leases.coordination.k8s.io \"x\" not found");
        assert_eq!(
            b["details"],
            json!({"name": "x", "group": "coordination.k8s.io", "kind": "leases"})
        );
        assert_eq!(b["status"], "Failure");
        let (c, b) = get_json(&s, "/api/v1/nodes/n1");
        assert_eq!(c, 404);
        assert_eq!(b["details"], json!({"name": "n1", "kind": "nodes"}));
        let (c, _) = get_json(&s, "/api/v1/widgets");
        assert_eq!(c, 404);

        let (c, created) = send(
            &s,
            "POST",
            "/api/v1/persistentvolumes",
            pv("a", json!({})),
            JSON,
        );
        assert_eq!(c, 201);
        assert_eq!(created["status"]["phase"], "Pending");
        assert_eq!(
            created["metadata"]["finalizers"],
            json!(["kubernetes.io/pv-protection"])
        );
        assert_eq!(created["metadata"]["uid"].as_str().map(str::len), Some(36));
        let (c, b) = send(
            &s,
            "POST",
            "/api/v1/persistentvolumes",
            pv("a", json!({})),
            JSON,
        );
        assert_eq!((c, b["reason"].as_str()), (409, Some("AlreadyExists")));
        assert_eq!(b["message"], "persistentvolumes \"a\" already exists");

        let mut fresh = created.clone();
        fresh["metadata"]["labels"] = json!({"x": "1"});
        let (c, _) = send(&s, "PUT", "/api/v1/persistentvolumes/a", fresh, JSON);
        assert_eq!(c, 200);
        let (c, b) = send(&s, "PUT", "/api/v1/persistentvolumes/a", created, JSON);
        assert_eq!((c, b["reason"].as_str()), (409, Some("Conflict")));
        assert_eq!(
            b["message"],
            "Operation cannot be fulfilled on persistentvolumes \"a\": the object has been modified; please apply your changes to the latest version and try again"
        );
        let (c, b) = send(
            &s,
            "POST",
            "/api/v1/persistentvolumes",
            json!({"metadata": {}}),
            JSON,
        );
        assert_eq!((c, b["reason"].as_str()), (422, Some("Invalid")));
        let (c, b) = send(
            &s,
            "POST",
            "/api/v1/persistentvolumes",
            json!({"metadata": {"generateName": "gen-"}}),
            JSON,
        );
        assert_eq!(c, 201);
        assert!(obj_name(&b).starts_with("gen-") && obj_name(&b).len() == 9);
    }

    #[test]
    fn finalizers_delay_deletion_until_removed() {
        let s = FakeApiServer::start();
        send(
            &s,
            "POST",
            "/api/v1/persistentvolumes",
            pv("a", json!({})),
            JSON,
        );
        let rv = s.resource_version();
        let (c, _, b) = call(&s, "DELETE", "/api/v1/persistentvolumes/a", None, "");
        assert_eq!(c, 200, "{}", String::from_utf8_lossy(&b));
        let kept = s.get("persistentvolumes", None, "a").expect("still there");
        assert!(kept["metadata"]["deletionTimestamp"].is_string());
        let (c, _) = send(
            &s,
            "PATCH",
            "/api/v1/persistentvolumes/a",
            json!({"metadata": {"finalizers": null}}),
            MERGE,
        );
        assert_eq!(c, 200);
        assert!(s.get("persistentvolumes", None, "a").is_none());
        let mut w = WatchConn::open(
            &s,
            &format!("/api/v1/persistentvolumes?watch=1&resourceVersion={rv}&timeoutSeconds=1"),
        );
        let types: Vec<String> = std::iter::from_fn(|| w.next_typed())
            .map(|(t, _)| t)
            .collect();
        assert_eq!(types, ["MODIFIED", "DELETED"]);
    }

    #[test]
    fn namespace_delete_takes_contents() {
        let s = FakeApiServer::start();
        send(
            &s,
            "POST",
            "/api/v1/namespaces",
            json!({"metadata": {"name": "ns1"}}),
            JSON,
        );
        let (c, _) = send(
            &s,
            "POST",
            "/api/v1/namespaces/ns1/persistentvolumeclaims",
            json!({"metadata": {"name": "c"}, "spec": {}}),
            JSON,
        );
        assert_eq!(c, 201);
        let (c, _, _) = call(&s, "DELETE", "/api/v1/namespaces/ns1", None, "");
        assert_eq!(c, 200);
        assert!(s.list("persistentvolumeclaims", None).is_empty());
        assert_eq!(get_json(&s, "/api/v1/namespaces/ns1").0, 404);
    }

    #[test]
    fn status_is_a_subresource() {
        let s = FakeApiServer::start();
        let mut bound = pv("b", json!({}));
        bound["status"] = json!({"phase": "Bound"});
        assert_eq!(s.create(bound)["status"]["phase"], "Bound");
        let (_, b) = send(
            &s,
            "PATCH",
            "/api/v1/persistentvolumes/b",
            json!({"status": {"phase": "Failed"}, "metadata": {"labels": {"l": "1"}}}),
            MERGE,
        );
        assert_eq!(
            (
                b["status"]["phase"].as_str(),
                b["metadata"]["labels"]["l"].as_str()
            ),
            (Some("Bound"), Some("1"))
        );
        let (_, b) = send(
            &s,
            "PATCH",
            "/api/v1/persistentvolumes/b/status",
            json!({"status": {"phase": "Released"}, "metadata": {"labels": {"l": "2"}}}),
            MERGE,
        );
        assert_eq!(
            (
                b["status"]["phase"].as_str(),
                b["metadata"]["labels"]["l"].as_str()
            ),
            (Some("Released"), Some("1"))
        );
        let (c, _) = send(
            &s,
            "PATCH",
            "/api/v1/namespaces/ns/events/e/status",
            json!({}),
            MERGE,
        );
        assert_eq!(c, 404);
    }

    #[test]
    fn bulk_loaded_objects_read_as_created_ones() {
        let trees = FakeApiServer::start();
        let texts = FakeApiServer::start();
        let objs: Vec<Value> = (0..5)
            .map(|i| pv(&format!("pv-{i}"), json!({"app": format!("a{i}")})))
            .collect();
        trees.create_many(objs.clone());
        texts.create_many_compact(objs);
        // Same bodies, byte for byte, in a list (uids and timestamps aside).
        let strip = |mut b: Value| {
            for o in b["items"].as_array_mut().expect("items") {
                let m = o["metadata"].as_object_mut().expect("metadata");
                m.remove("uid");
                m.remove("creationTimestamp");
            }
            b
        };
        let (_, a) = get_json(&trees, "/api/v1/persistentvolumes?limit=3");
        let (_, b) = get_json(&texts, "/api/v1/persistentvolumes?limit=3");
        assert_eq!(strip(a), strip(b));
        // A selector, a GET and an update read the stored text as a tree.
        let (_, f) = get_json(&texts, "/api/v1/persistentvolumes?labelSelector=app%3Da3");
        assert_eq!(f["items"].as_array().map(Vec::len), Some(1));
        let got = texts.get("persistentvolumes", None, "pv-2").expect("pv-2");
        assert_eq!(got["metadata"]["labels"]["app"], "a2");
        let mut changed = got.clone();
        changed["metadata"]["labels"]["app"] = json!("b2");
        texts.update(changed);
        let (_, g) = get_json(&texts, "/api/v1/persistentvolumes/pv-2");
        assert_eq!(g["metadata"]["labels"]["app"], "b2");
        assert_ne!(
            g["metadata"]["resourceVersion"],
            got["metadata"]["resourceVersion"]
        );
    }

    #[test]
    fn many_objects_list_quickly() {
        let s = FakeApiServer::start();
        for i in 0..20_000 {
            s.create(pv(&format!("pv-{i:06}"), json!({})));
        }
        let t = Instant::now();
        let mut token: Option<String> = None;
        let mut seen = 0;
        loop {
            let path = match &token {
                Some(c) => format!("/api/v1/persistentvolumes?limit=500&continue={c}"),
                None => "/api/v1/persistentvolumes?limit=500".to_string(),
            };
            let (c, b) = get_json(&s, &path);
            assert_eq!(c, 200);
            seen += b["items"].as_array().map(Vec::len).unwrap_or(0);
            token = b["metadata"]["continue"].as_str().map(String::from);
            if token.is_none() {
                break;
            }
        }
        assert_eq!(seen, 20_000);
        assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    }
}
