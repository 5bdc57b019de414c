//! Fake Kubernetes API server for tests, the sandbox and benchmarks: a hand-written HTTP/1.1
//! server (optionally TLS with a bearer token) on 127.0.0.1 over one in-memory store with one
//! resourceVersion counter. It keeps kube-apiserver's observable semantics (Status bodies, list
//! pagination snapshots, chunked watches with bookmarks and 410, finalizers, status
//! subresources, merge/strategic/JSON patches, field and label selectors) and adds fault
//! injection, a request log and direct store access for assertions.
//!
//! Every expectation in `/work/shared/tools/kube-api-conformance.py` was observed on a real
//! kube-apiserver; this fake passes it without special cases.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown as NetShutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender};
use serde_json::{json, Map, Value};

use healthmon::kube::config::{base64_decode, base64_encode};
use healthmon::timeutil::{parse_rfc3339, rfc3339, rfc3339_micros};

// ---------------------------------------------------------------------------------------------
// public API

/// PEM files for serving HTTPS. `cert_pem` may hold a chain (leaf first); its last certificate
/// is what the kubeconfig written by [`FakeApiServer::write_kubeconfig`] trusts.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

#[derive(Clone, Debug)]
pub struct Options {
    /// 0 picks a free port.
    pub port: u16,
    pub tls: Option<TlsFiles>,
    /// When set, every request needs `Authorization: Bearer <token>` (else 401).
    pub token: Option<String>,
    /// Bookmarks every this often on watches that allow them (besides the one the real server
    /// sends 2 s before a watch's `timeoutSeconds` deadline).
    pub bookmark_interval: Option<Duration>,
    /// How many changes are kept for watch replay; older resourceVersions get 410.
    pub history: usize,
    /// Kubernetes 1.37 with the `CSIVolumeHealth` feature gate on: PVCs keep
    /// `status.healthStatus` (validated as the real API validates it). Off, the default, is a
    /// 1.36 server (or the gate off): the unknown field is dropped from every write, answer 200.
    pub pvc_health_status: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            port: 0,
            tls: None,
            token: None,
            bookmark_interval: None,
            history: 10_000,
            pvc_health_status: false,
        }
    }
}

/// One answered (or dropped) HTTP request.
#[derive(Clone, Debug)]
pub struct RequestRecord {
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: Option<String>,
    /// 0 when the connection was dropped without an answer.
    pub status: u16,
    pub request_bytes: usize,
    pub response_bytes: usize,
    pub at: Instant,
    pub user_agent: Option<String>,
    /// The `Authorization` header as sent: tells apart processes that share a user agent.
    pub authorization: Option<String>,
    /// The parsed JSON body of writes (POST, PUT, PATCH, DELETE with a body).
    pub body: Option<Value>,
}

impl RequestRecord {
    pub fn is_watch(&self) -> bool {
        query_pairs(&self.query)
            .iter()
            .any(|(k, v)| k == "watch" && (v == "true" || v == "1"))
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// Answer with this code and a proper Status body (429 adds `Retry-After: 1`).
    Status(u16),
    /// Wait this long, then answer normally.
    Delay(Duration),
    /// Close the connection without an answer.
    DropConnection,
    /// 200 with a body that is not valid JSON.
    MalformedBody,
    /// This code with exactly these bytes as the body (hostile content: invalid UTF-8, deep
    /// nesting, a Status with absurd fields).
    Body(u16, Vec<u8>),
    /// A watch answers 200, sends half an event line and closes (applies to watches only).
    TruncatedWatch,
    /// A watch answers 200, sends an ERROR event carrying a Status with this code, and ends
    /// cleanly, as the real server does when its watch cache fails (applies to watches only).
    WatchError(u16),
    /// A watch answers 200 and ends at once without an event (applies to watches only).
    EmptyWatch,
    /// Hostile (issue #16): a 429 whose `Retry-After` header and Status `retryAfterSeconds`
    /// both say this many seconds.
    Throttle(u64),
    /// Hostile: a watch answers 200 and sends this many bytes of one event line, never a
    /// newline, then closes (applies to watches only).
    EndlessWatchLine(usize),
    /// Hostile: a list answers 200, no items, and the same `continue` token every time
    /// (applies to lists only).
    RepeatContinue,
}

#[derive(Clone, Debug)]
pub struct FaultRule {
    pub method: Option<String>,
    /// Matched against `path?query`.
    pub path_contains: Option<String>,
    /// How many requests it hits; 0 = forever.
    pub times: usize,
    pub fault: Fault,
}

impl FaultRule {
    pub fn new(fault: Fault) -> FaultRule {
        FaultRule {
            method: None,
            path_contains: None,
            times: 0,
            fault,
        }
    }
    pub fn method(mut self, m: &str) -> FaultRule {
        self.method = Some(m.to_string());
        self
    }
    pub fn path(mut self, p: &str) -> FaultRule {
        self.path_contains = Some(p.to_string());
        self
    }
    pub fn times(mut self, n: usize) -> FaultRule {
        self.times = n;
        self
    }
}

pub struct FakeApiServer {
    inner: Arc<Inner>,
    addr: SocketAddr,
    url: String,
    ca_pem: Option<Vec<u8>>,
    accept: Option<JoinHandle<()>>,
}

impl FakeApiServer {
    /// Plain HTTP on a free 127.0.0.1 port with default options.
    pub fn start() -> FakeApiServer {
        match FakeApiServer::start_with(Options::default()) {
            Ok(s) => s,
            Err(e) => panic!("cannot start the fake api server: {e}"),
        }
    }

    pub fn start_with(opts: Options) -> io::Result<FakeApiServer> {
        let tls = match &opts.tls {
            Some(files) => Some(tls_config(files)?),
            None => None,
        };
        let ca_pem = opts.tls.as_ref().map(|f| last_pem_cert(&f.cert_pem));
        let listener = TcpListener::bind(("127.0.0.1", opts.port))?;
        let addr = listener.local_addr()?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://127.0.0.1:{}", addr.port());
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
        let inner = Arc::new(Inner {
            store: Mutex::new(Store::new(opts.history, opts.pvc_health_status)),
            changes: Mutex::new(0),
            changed: Condvar::new(),
            requests: Mutex::new(Vec::new()),
            faults: Mutex::new(Vec::new()),
            unavailable: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            stop_tx: Mutex::new(Some(stop_tx)),
            stop_rx,
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            token: Mutex::new(opts.token.clone()),
            bookmarks: Mutex::new(HashMap::new()),
            bookmark_interval: opts.bookmark_interval,
            tls,
        });
        let accept_inner = inner.clone();
        let accept = std::thread::Builder::new()
            .name("fake-apiserver-accept".into())
            .spawn(move || accept_loop(accept_inner, listener))?;
        Ok(FakeApiServer {
            inner,
            addr,
            url,
            ca_pem,
            accept: Some(accept),
        })
    }

    pub fn url(&self) -> String {
        self.url.clone()
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// A kubeconfig (YAML) with one cluster, user and context pointing at this server.
    pub fn write_kubeconfig(&self, path: &Path) -> io::Result<()> {
        std::fs::write(path, self.kubeconfig_yaml())
    }

    pub fn kubeconfig_yaml(&self) -> String {
        let mut s =
            String::from("apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n");
        s += &format!("    server: {}\n", self.url);
        if let Some(ca) = &self.ca_pem {
            s += &format!("    certificate-authority-data: {}\n", base64_encode(ca));
        }
        s += "users:\n- name: fake\n";
        match &*lock(&self.inner.token) {
            Some(t) => s += &format!("  user:\n    token: {}\n", yaml_quote(t)),
            None => s += "  user: {}\n",
        }
        s += "contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\n";
        s += "current-context: fake\n";
        s
    }

    /// Stores an object as given (status included; defaults only where absent). Routes by
    /// apiVersion/kind; a namespaced object without a namespace goes to "default".
    /// Panics on objects the server would reject (a test-kit programming error).
    pub fn create(&self, obj: Value) -> Value {
        let def = match def_for_object(&obj) {
            Some(d) => d,
            None => panic!("fake api server: unknown apiVersion/kind in {obj}"),
        };
        let ns = namespace_for(def, &obj);
        let res = self
            .inner
            .store()
            .create(def, ns.as_deref(), obj, Mode::Direct);
        self.inner.bump();
        match res {
            Ok((_, o)) => (*o).clone(),
            Err(f) => panic!("fake api server: create failed: {}", f.message),
        }
    }

    /// `create` for many objects under one store lock, without copying each one back: the
    /// benchmarks fill the store with hundreds of thousands of objects.
    pub fn create_many(&self, objs: Vec<Value>) {
        let mut store = self.inner.store();
        for obj in objs {
            let def = match def_for_object(&obj) {
                Some(d) => d,
                None => panic!("fake api server: unknown apiVersion/kind in {obj}"),
            };
            let ns = namespace_for(def, &obj);
            if let Err(f) = store.create(def, ns.as_deref(), obj, Mode::Direct) {
                panic!("fake api server: create failed: {}", f.message);
            }
        }
        drop(store);
        self.inner.bump();
    }

    /// Replaces an object (status included, no resourceVersion precondition); creates it when
    /// missing.
    pub fn update(&self, obj: Value) -> Value {
        let def = match def_for_object(&obj) {
            Some(d) => d,
            None => panic!("fake api server: unknown apiVersion/kind in {obj}"),
        };
        let ns = namespace_for(def, &obj);
        let name = obj_name(&obj).to_string();
        let mut store = self.inner.store();
        let res = if store.get(def, ns.as_deref(), &name).is_some() {
            store
                .update(def, ns.as_deref(), &name, obj, Mode::Direct)
                .map(|(_, o)| o)
        } else {
            store
                .create(def, ns.as_deref(), obj, Mode::Direct)
                .map(|(_, o)| o)
        };
        drop(store);
        self.inner.bump();
        match res {
            Ok(o) => (*o).clone(),
            Err(f) => panic!("fake api server: update failed: {}", f.message),
        }
    }

    /// Removes an object now, finalizers or not. `resource` is the plural ("persistentvolumes").
    pub fn delete(&self, resource: &str, namespace: Option<&str>, name: &str) -> bool {
        let Some(def) = def_for_plural(resource) else {
            return false;
        };
        let removed = self.inner.store().remove(def, namespace, name).is_some();
        self.inner.bump();
        removed
    }

    pub fn get(&self, resource: &str, namespace: Option<&str>, name: &str) -> Option<Value> {
        let def = def_for_plural(resource)?;
        self.inner
            .store()
            .get(def, namespace, name)
            .map(|e| (*e.obj).clone())
    }

    /// Objects in key order; `namespace` None = all namespaces.
    pub fn list(&self, resource: &str, namespace: Option<&str>) -> Vec<Value> {
        let Some(def) = def_for_plural(resource) else {
            return Vec::new();
        };
        let store = self.inner.store();
        store
            .entries(def, namespace)
            .map(|(_, e)| (*e.obj).clone())
            .collect()
    }

    /// All core/v1 Events in creation order.
    pub fn events(&self) -> Vec<Value> {
        let store = self.inner.store();
        let mut v: Vec<(u64, Value)> = store
            .entries(&RESOURCES[EVENTS], None)
            .map(|(_, e)| (e.seq, (*e.obj).clone()))
            .collect();
        drop(store);
        v.sort_by_key(|(s, _)| *s);
        v.into_iter().map(|(_, o)| o).collect()
    }

    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.inner.requests).clone()
    }

    pub fn clear_requests(&self) {
        lock(&self.inner.requests).clear();
    }

    /// Evaluates `pred` after every store change or request until it holds or `timeout` passes.
    pub fn wait_until(&self, timeout: Duration, pred: impl Fn(&FakeApiServer) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = *lock(&self.inner.changes);
            if pred(self) {
                return true;
            }
            let mut n = lock(&self.inner.changes);
            while *n == seen {
                let now = Instant::now();
                if now >= deadline {
                    drop(n);
                    return pred(self);
                }
                n = match self.inner.changed.wait_timeout(n, deadline - now) {
                    Ok((g, _)) => g,
                    Err(p) => p.into_inner().0,
                };
            }
        }
    }

    pub fn inject(&self, rule: FaultRule) {
        lock(&self.inner.faults).push(rule);
    }

    pub fn clear_faults(&self) {
        lock(&self.inner.faults).clear();
    }

    /// While down, every connection is closed without an answer and open watches end.
    pub fn set_unavailable(&self, down: bool) {
        self.inner.unavailable.store(down, Ordering::SeqCst);
        if down {
            self.close_watches();
            for s in lock(&self.inner.conns).values() {
                let _ = s.shutdown(NetShutdown::Both);
            }
        }
    }

    /// Ends every open watch stream now, cleanly (terminating chunk).
    pub fn close_watches(&self) {
        self.inner.store().close_watches();
    }

    /// Forgets the change history: watches from an older resourceVersion and continue tokens
    /// issued before now get 410 Expired.
    pub fn compact(&self) {
        self.inner.store().compact();
    }

    /// Requires this bearer token from now on (`None`: no authentication), as when a cluster
    /// rotates a service-account token; kubeconfigs written earlier keep the old one.
    pub fn set_token(&self, token: Option<&str>) {
        *lock(&self.inner.token) = token.map(str::to_string);
    }

    /// The resourceVersion carried by the last BOOKMARK sent on a watch of `resource` (plural),
    /// so a test can wait for a bookmark instead of sleeping.
    pub fn last_bookmark(&self, resource: &str) -> Option<u64> {
        lock(&self.inner.bookmarks).get(resource).copied()
    }

    pub fn resource_version(&self) -> u64 {
        self.inner.store().rv
    }

    /// Turns the `CSIVolumeHealth` feature gate on or off from now on, as an API server
    /// upgrade would; objects already stored keep what they hold.
    pub fn set_pvc_health_status(&self, on: bool) {
        self.inner.store().health_gate = on;
    }

    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if self.inner.stopped.swap(true, Ordering::SeqCst) {
            return;
        }
        lock(&self.inner.stop_tx).take();
        // wake the blocking accept()
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(500));
        for s in lock(&self.inner.conns).values() {
            let _ = s.shutdown(NetShutdown::Both);
        }
        self.inner.store().close_watches();
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// For the standalone binary: serves until the process ends.
pub fn serve_forever(opts: Options) -> io::Result<()> {
    let server = FakeApiServer::start_with(opts)?;
    println!("fake-apiserver listening on {}", server.url());
    let _ = io::stdout().flush();
    loop {
        std::thread::park();
    }
}

// ---------------------------------------------------------------------------------------------
// resources

struct ResDef {
    plural: &'static str,
    kind: &'static str,
    group: &'static str,
    namespaced: bool,
    has_status: bool,
}

impl ResDef {
    fn api_version(&self) -> String {
        if self.group.is_empty() {
            "v1".to_string()
        } else {
            format!("{}/v1", self.group)
        }
    }
    /// As kube-apiserver names it in messages: `leases.coordination.k8s.io`.
    fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
    fn extra_fields(&self) -> &'static [&'static str] {
        match self.plural {
            "events" => &[
                "involvedObject.kind",
                "involvedObject.namespace",
                "involvedObject.name",
                "involvedObject.uid",
                "involvedObject.apiVersion",
                "involvedObject.resourceVersion",
                "involvedObject.fieldPath",
                "reason",
                "reportingComponent",
                "source",
                "type",
            ],
            "pods" => &[
                "spec.nodeName",
                "spec.restartPolicy",
                "spec.schedulerName",
                "spec.serviceAccountName",
                "spec.hostNetwork",
                "status.phase",
                "status.podIP",
                "status.nominatedNodeName",
            ],
            "nodes" => &["spec.unschedulable"],
            "namespaces" => &["status.phase"],
            "persistentvolumeclaims" => &[],
            _ => &[],
        }
    }
}

const EVENTS: usize = 3;
static RESOURCES: [ResDef; 8] = [
    ResDef {
        plural: "persistentvolumes",
        kind: "PersistentVolume",
        group: "",
        namespaced: false,
        has_status: true,
    },
    ResDef {
        plural: "persistentvolumeclaims",
        kind: "PersistentVolumeClaim",
        group: "",
        namespaced: true,
        has_status: true,
    },
    ResDef {
        plural: "pods",
        kind: "Pod",
        group: "",
        namespaced: true,
        has_status: true,
    },
    ResDef {
        plural: "events",
        kind: "Event",
        group: "",
        namespaced: true,
        has_status: false,
    },
    ResDef {
        plural: "namespaces",
        kind: "Namespace",
        group: "",
        namespaced: false,
        has_status: true,
    },
    ResDef {
        plural: "serviceaccounts",
        kind: "ServiceAccount",
        group: "",
        namespaced: true,
        has_status: false,
    },
    ResDef {
        plural: "nodes",
        kind: "Node",
        group: "",
        namespaced: false,
        has_status: true,
    },
    ResDef {
        plural: "leases",
        kind: "Lease",
        group: "coordination.k8s.io",
        namespaced: true,
        has_status: false,
    },
];

fn def_for_plural(plural: &str) -> Option<&'static ResDef> {
    RESOURCES.iter().find(|d| d.plural == plural)
}

fn def_for(group: &str, plural: &str) -> Option<&'static ResDef> {
    RESOURCES
        .iter()
        .find(|d| d.plural == plural && d.group == group)
}

fn def_for_object(obj: &Value) -> Option<&'static ResDef> {
    let kind = obj.get("kind")?.as_str()?;
    let av = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let group = av.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
    RESOURCES
        .iter()
        .find(|d| d.kind == kind && d.group == group)
}

fn namespace_for(def: &ResDef, obj: &Value) -> Option<String> {
    if !def.namespaced {
        return None;
    }
    let ns = obj
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or("default");
    Some(ns.to_string())
}

fn obj_name(obj: &Value) -> &str {
    obj.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
}

// ---------------------------------------------------------------------------------------------
// failures (metav1.Status)

#[derive(Debug, Clone)]
struct Failure {
    code: u16,
    reason: &'static str,
    message: String,
    details: Option<Value>,
    retry_after: Option<u32>,
}

impl Failure {
    fn new(code: u16, message: impl Into<String>) -> Failure {
        Failure {
            code,
            // The client's table is apimachinery's; "Unknown" is what the server says otherwise.
            reason: match healthmon::kube::error::reason_for(code) {
                "" => "Unknown",
                r => r,
            },
            message: message.into(),
            details: None,
            retry_after: None,
        }
    }
    fn with_reason(mut self, reason: &'static str) -> Failure {
        self.reason = reason;
        self
    }
    fn about(mut self, def: &ResDef, name: &str) -> Failure {
        let mut d = Map::new();
        d.insert("name".into(), json!(name));
        if !def.group.is_empty() {
            d.insert("group".into(), json!(def.group));
        }
        d.insert("kind".into(), json!(def.plural));
        self.details = Some(Value::Object(d));
        self
    }
    fn bad_request(message: impl Into<String>) -> Failure {
        Failure::new(400, message)
    }
    fn not_found(def: &ResDef, name: &str) -> Failure {
        Failure::new(404, format!("{} \"{name}\" not found", def.qualified())).about(def, name)
    }
    fn already_exists(def: &ResDef, name: &str) -> Failure {
        Failure::new(
            409,
            format!("{} \"{name}\" already exists", def.qualified()),
        )
        .with_reason("AlreadyExists")
        .about(def, name)
    }
    fn conflict(def: &ResDef, name: &str, why: &str) -> Failure {
        Failure::new(
            409,
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {why}",
                def.qualified()
            ),
        )
        .about(def, name)
    }
    fn invalid(def: &ResDef, name: &str, why: &str) -> Failure {
        Failure::new(422, format!("{} \"{name}\" is invalid: {why}", def.kind)).about(def, name)
    }
    fn expired(message: impl Into<String>) -> Failure {
        Failure::new(410, message).with_reason("Expired")
    }
    fn path_not_found() -> Failure {
        let mut f = Failure::new(404, "the server could not find the requested resource");
        f.details = Some(json!({}));
        f
    }
    fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("kind".into(), json!("Status"));
        m.insert("apiVersion".into(), json!("v1"));
        m.insert("metadata".into(), json!({}));
        m.insert("status".into(), json!("Failure"));
        m.insert("message".into(), json!(self.message));
        m.insert("reason".into(), json!(self.reason));
        if let Some(d) = &self.details {
            m.insert("details".into(), d.clone());
        }
        m.insert("code".into(), json!(self.code));
        Value::Object(m)
    }
}

fn fault_failure(code: u16) -> Failure {
    let mut f = match code {
        429 => {
            let mut f = Failure::new(429, "Too many requests, please try again later.");
            f.details = Some(json!({"retryAfterSeconds": 1}));
            f.retry_after = Some(1);
            f
        }
        500 => Failure::new(500, "Internal error occurred: injected fault"),
        503 => Failure::new(503, "the server is currently unable to handle the request"),
        504 => Failure::new(
            504,
            "the server was unable to return a response in the time allotted",
        ),
        410 => Failure::expired("too old resource version: injected fault"),
        c => Failure::new(c, format!("injected fault (HTTP {c})")),
    };
    if f.code == 503 {
        f.retry_after = Some(1);
    }
    f
}

// ---------------------------------------------------------------------------------------------
// store

type Key = (String, String);

struct Entry {
    obj: Arc<Value>,
    /// creation order, for `events()`
    seq: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum EventType {
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

struct Change {
    rv: u64,
    res: &'static str,
    ns: String,
    ty: EventType,
    obj: Arc<Value>,
    prev: Option<Arc<Value>>,
    /// the serialized event line, shared by every watcher that sends it unchanged
    line: OnceLock<Vec<u8>>,
}

impl Change {
    fn line(&self) -> &[u8] {
        self.line
            .get_or_init(|| event_line(self.ty.as_str(), &self.obj))
    }
}

enum WatchMsg {
    Change(Arc<Change>),
    Close,
}

struct Sub {
    id: u64,
    res: &'static str,
    ns: Option<String>,
    tx: Sender<WatchMsg>,
}

struct Snapshot {
    id: u64,
    rv: u64,
    items: Arc<Vec<Arc<Value>>>,
}

/// Snapshots kept for continue tokens; older tokens get 410 unless nothing changed since.
const MAX_SNAPSHOTS: usize = 64;
/// The first resourceVersion: everything below it counts as compacted, as on a real cluster
/// where resourceVersion 1 is long gone.
const FIRST_RV: u64 = 1000;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// HTTP write of the main resource: status ignored, defaults applied.
    Main,
    /// HTTP write of /status: only status taken.
    Status,
    /// PUT /api/v1/namespaces/<ns>/finalize: only spec.finalizers taken.
    Finalize,
    /// Rust API: taken as given, no preconditions.
    Direct,
}

struct Store {
    rv: u64,
    floor: u64,
    seq: u64,
    tables: HashMap<&'static str, BTreeMap<Key, Entry>>,
    history: VecDeque<Arc<Change>>,
    history_cap: usize,
    subs: Vec<Sub>,
    next_sub: u64,
    snapshots: VecDeque<Snapshot>,
    next_snap: u64,
    /// [`Options::pvc_health_status`]
    health_gate: bool,
}

struct ListResult {
    rv: u64,
    items: Arc<Vec<Arc<Value>>>,
    start: usize,
    end: usize,
    cont: Option<String>,
}

struct WatchStart {
    rx: Receiver<WatchMsg>,
    sub: u64,
    rv: u64,
    /// ADDED events for existing objects (watch from "now")
    initial: Vec<Arc<Value>>,
    replay: Vec<Arc<Change>>,
}

impl Store {
    fn new(history: usize, health_gate: bool) -> Store {
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
        }
    }

    fn key(ns: Option<&str>, name: &str) -> Key {
        (ns.unwrap_or("").to_string(), name.to_string())
    }

    fn get(&self, def: &ResDef, ns: Option<&str>, name: &str) -> Option<&Entry> {
        self.tables.get(def.plural)?.get(&Store::key(ns, name))
    }

    fn entries<'a>(
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
        obj: Arc<Value>,
        prev: Option<Arc<Value>>,
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
    fn put(&mut self, def: &'static ResDef, key: Key, mut obj: Value, ty: EventType) -> Arc<Value> {
        self.rv += 1;
        set_meta(&mut obj, "resourceVersion", json!(self.rv.to_string()));
        let obj = Arc::new(obj);
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
    fn remove(&mut self, def: &'static ResDef, ns: Option<&str>, name: &str) -> Option<Arc<Value>> {
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
        let mut obj = (*entry.obj).clone();
        set_meta(&mut obj, "resourceVersion", json!(self.rv.to_string()));
        let obj = Arc::new(obj);
        self.record(
            def,
            &key.0,
            EventType::Deleted,
            obj.clone(),
            Some(entry.obj),
        );
        Some(obj)
    }

    fn create(
        &mut self,
        def: &'static ResDef,
        ns: Option<&str>,
        body: Value,
        mode: Mode,
    ) -> Result<(u16, Arc<Value>), Failure> {
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

    fn update(
        &mut self,
        def: &'static ResDef,
        ns: Option<&str>,
        name: &str,
        body: Value,
        mode: Mode,
    ) -> Result<(u16, Arc<Value>), Failure> {
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
        if new == *old {
            // a no-op write keeps the resourceVersion, as etcd3's store does
            return Ok((200, old));
        }
        let key = Store::key(ns, name);
        Ok((200, self.put(def, key, new, EventType::Modified)))
    }

    fn delete(
        &mut self,
        def: &'static ResDef,
        ns: Option<&str>,
        name: &str,
        opts: &Value,
    ) -> Result<Arc<Value>, Failure> {
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

    fn list(
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

    fn filtered(&self, def: &ResDef, ns: Option<&str>, filter: &Filter) -> Vec<Arc<Value>> {
        self.entries(def, ns)
            .filter(|(_, e)| filter.matches(&e.obj))
            .map(|(_, e)| e.obj.clone())
            .collect()
    }

    fn watch(
        &mut self,
        def: &'static ResDef,
        ns: Option<&str>,
        from: Option<u64>,
        filter: &Filter,
    ) -> Result<WatchStart, u64> {
        let mut initial = Vec::new();
        let mut replay = Vec::new();
        match from {
            None => initial = self.filtered(def, ns, filter),
            Some(rv) if rv < self.floor => return Err(self.floor + 1),
            Some(rv) => {
                replay = self
                    .history
                    .iter()
                    .filter(|c| c.rv > rv && c.res == def.plural && ns.is_none_or(|n| n == c.ns))
                    .cloned()
                    .collect();
            }
        }
        let (tx, rx) = crossbeam_channel::unbounded();
        let id = self.next_sub;
        self.next_sub += 1;
        self.subs.push(Sub {
            id,
            res: def.plural,
            ns: ns.map(str::to_string),
            tx,
        });
        Ok(WatchStart {
            rx,
            sub: id,
            rv: self.rv,
            initial,
            replay,
        })
    }

    fn unsubscribe(&mut self, id: u64) {
        self.subs.retain(|s| s.id != id);
    }

    fn close_watches(&mut self) {
        for s in self.subs.drain(..) {
            let _ = s.tx.send(WatchMsg::Close);
        }
    }

    fn compact(&mut self) {
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

/// Checks kind/apiVersion against the URL and fills them in.
fn check_body(def: &ResDef, body: Value) -> Result<Value, Failure> {
    let Value::Object(mut m) = body else {
        return Err(Failure::bad_request(format!(
            "{} in version \"v1\" cannot be handled as a {}: the body is not a JSON object",
            def.kind, def.kind
        )));
    };
    let av = def.api_version();
    if let Some(k) = m.get("kind").and_then(Value::as_str) {
        if !k.is_empty() && k != def.kind {
            return Err(Failure::bad_request(format!(
                "the body of the request was in an unknown format - accepted media types include: application/json (kind {k} is not {})",
                def.kind
            )));
        }
    }
    if let Some(a) = m.get("apiVersion").and_then(Value::as_str) {
        if !a.is_empty() && a != av {
            return Err(Failure::bad_request(format!(
                "the API version in the data ({a}) does not match the expected API version ({av})"
            )));
        }
    }
    if !m.get("metadata").is_some_and(Value::is_object) {
        m.insert("metadata".into(), json!({}));
    }
    // kind and apiVersion first, as the real server serializes them
    let mut out = Map::new();
    out.insert("kind".into(), json!(def.kind));
    out.insert("apiVersion".into(), json!(av));
    for (k, v) in m {
        if k != "kind" && k != "apiVersion" {
            out.insert(k, v);
        }
    }
    Ok(Value::Object(out))
}

/// Type-level checks the real decoder does: Lease MicroTimes need exactly 6 fractional digits;
/// Event metav1.Time fields are RFC 3339 and kept to the second.
fn normalize(def: &ResDef, name: &str, obj: &mut Value) -> Result<(), Failure> {
    match def.plural {
        "leases" => {
            for f in ["acquireTime", "renewTime"] {
                let Some(v) = obj.pointer_mut(&format!("/spec/{f}")) else {
                    continue;
                };
                let Some(s) = v.as_str() else {
                    if v.is_null() {
                        continue;
                    }
                    return Err(Failure::bad_request(format!(
                        "Lease in version \"v1\" cannot be handled as a Lease: spec.{f}: expected a string"
                    )));
                };
                match parse_rfc3339(s).filter(|_| fraction_digits(s) == 6) {
                    Some(t) => *v = json!(rfc3339_micros(t)),
                    _ => {
                        return Err(Failure::bad_request(format!(
                            "Lease in version \"v1\" cannot be handled as a Lease: parsing time \"{s}\" as \"2006-01-02T15:04:05.000000Z07:00\": cannot parse \"{s}\" as \".000000\""
                        )))
                    }
                }
            }
        }
        "events" => {
            for f in ["firstTimestamp", "lastTimestamp"] {
                let Some(v) = obj.get_mut(f) else { continue };
                let Some(s) = v.as_str() else { continue };
                match parse_rfc3339(s) {
                    Some(t) => *v = json!(rfc3339(t)),
                    None => {
                        return Err(Failure::bad_request(format!(
                            "Event in version \"v1\" cannot be handled as a Event: parsing time \"{s}\" as \"2006-01-02T15:04:05Z07:00\""
                        )))
                    }
                }
            }
        }
        _ => {}
    }
    let _ = name;
    Ok(())
}

/// `status.healthStatus` of a PVC (Kubernetes 1.37, gate `CSIVolumeHealth`). Gate off: the
/// field is unknown to the schema and dropped silently (observed on 1.36.2: 200, field gone).
/// Gate on: validated as `k8s.io/api` `VolumeHealthStatus` is, 422 naming the field path.
/// Direct writes (test setup) are dropped or kept the same way but never refused.
fn pvc_health_status(
    def: &ResDef,
    name: &str,
    obj: &mut Value,
    gate_on: bool,
    mode: Mode,
) -> Result<(), Failure> {
    if def.plural != "persistentvolumeclaims" {
        return Ok(());
    }
    let Some(status) = obj.get_mut("status").and_then(Value::as_object_mut) else {
        return Ok(());
    };
    if !gate_on {
        status.remove("healthStatus");
        return Ok(());
    }
    if status.get("healthStatus").is_some_and(Value::is_null) {
        status.remove("healthStatus");
    }
    let Some(hs) = status.get("healthStatus") else {
        return Ok(());
    };
    if mode == Mode::Direct {
        return Ok(());
    }
    validate_health_status(hs).map_err(|why| Failure::invalid(def, name, &why))
}

/// The limits of `VolumeHealthStatus`: at most 16 conditions, status one of the three names,
/// reason 1..=256 bytes, message at most 1024 bytes, (status, reason) unique.
fn validate_health_status(hs: &Value) -> Result<(), String> {
    const STATUSES: [&str; 3] = ["DataLoss", "Degraded", "Inaccessible"];
    let Some(m) = hs.as_object() else {
        return Err("status.healthStatus: Invalid value: must be an object".into());
    };
    if let Some(t) = m.get("lastTransitionTime") {
        if t.as_str().and_then(parse_rfc3339).is_none() {
            return Err(format!(
                "status.healthStatus.lastTransitionTime: Invalid value: {t}: must be an RFC 3339 time"
            ));
        }
    }
    let conds = match m.get("healthConditions") {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Array(a)) => a,
        Some(other) => {
            return Err(format!(
                "status.healthStatus.healthConditions: Invalid value: {other}: must be a list"
            ))
        }
    };
    if conds.len() > 16 {
        return Err(format!(
            "status.healthStatus.healthConditions: Too many: {}: must have at most 16 items",
            conds.len()
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, c) in conds.iter().enumerate() {
        let at = format!("status.healthStatus.healthConditions[{i}]");
        let st = c.get("status").and_then(Value::as_str).unwrap_or("");
        if !STATUSES.contains(&st) {
            return Err(format!(
                "{at}.status: Unsupported value: {:?}: supported values: \"DataLoss\", \"Degraded\", \"Inaccessible\"",
                st
            ));
        }
        let reason = c.get("reason").and_then(Value::as_str).unwrap_or("");
        if reason.is_empty() {
            return Err(format!("{at}.reason: Required value"));
        }
        if reason.len() > 256 {
            return Err(format!(
                "{at}.reason: Too long: may not be more than 256 bytes"
            ));
        }
        let message = c.get("message").and_then(Value::as_str).unwrap_or("");
        if message.len() > 1024 {
            return Err(format!(
                "{at}.message: Too long: may not be more than 1024 bytes"
            ));
        }
        if !seen.insert((st, reason)) {
            return Err(format!(
                "{at}: Duplicate value: {{\"reason\":{reason:?},\"status\":{st:?}}}"
            ));
        }
    }
    Ok(())
}

fn validate_name(name: &str) -> Result<(), &'static str> {
    if name.len() > 253 {
        return Err("must be no more than 253 characters");
    }
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    let ends_ok = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .last()
            .is_some_and(|b| b.is_ascii_alphanumeric());
    if ok_chars && ends_ok {
        Ok(())
    } else {
        Err("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character")
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

fn set_meta(obj: &mut Value, key: &str, v: Value) {
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

// ---------------------------------------------------------------------------------------------
// selectors

#[derive(Debug, Clone, PartialEq)]
enum LabelReq {
    Eq(String, String),
    NotEq(String, String),
    Exists(String),
    NotExists(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

#[derive(Debug, Clone, PartialEq)]
struct FieldReq {
    field: String,
    value: String,
    equal: bool,
}

#[derive(Debug, Clone, Default)]
struct Filter {
    labels: Vec<LabelReq>,
    fields: Vec<FieldReq>,
}

impl Filter {
    fn parse(def: &ResDef, label: Option<&str>, field: Option<&str>) -> Result<Filter, Failure> {
        let labels = match label {
            Some(s) => parse_label_selector(s).map_err(Failure::bad_request)?,
            None => Vec::new(),
        };
        let fields = match field {
            Some(s) => parse_field_selector(def, s).map_err(Failure::bad_request)?,
            None => Vec::new(),
        };
        Ok(Filter { labels, fields })
    }

    fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
    }

    fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels").and_then(Value::as_object);
        let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        let labels_ok = self.labels.iter().all(|r| match r {
            LabelReq::Eq(k, v) => label(k) == Some(v.as_str()),
            LabelReq::NotEq(k, v) => label(k) != Some(v.as_str()),
            LabelReq::Exists(k) => label(k).is_some(),
            LabelReq::NotExists(k) => label(k).is_none(),
            LabelReq::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            LabelReq::NotIn(k, vs) => label(k).is_none_or(|l| vs.iter().all(|v| v != l)),
        });
        labels_ok
            && self
                .fields
                .iter()
                .all(|f| (field_value(obj, &f.field) == f.value) == f.equal)
    }
}

fn field_value(obj: &Value, field: &str) -> String {
    let path = match field {
        "source" => "/source/component".to_string(),
        f => format!("/{}", f.replace('.', "/")),
    };
    match obj.pointer(&path) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}

fn split_top_level(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    out.push(cur);
    out
}

fn valid_label_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 317
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
}

fn parse_label_selector(s: &str) -> Result<Vec<LabelReq>, String> {
    let mut out = Vec::new();
    if s.trim().is_empty() {
        return Ok(out);
    }
    for term in split_top_level(s) {
        let t = term.trim();
        let bad = || {
            format!("unable to parse requirement: found '{t}', expected: a valid label selector")
        };
        let req = if let Some(k) = t.strip_prefix('!') {
            LabelReq::NotExists(k.trim().to_string())
        } else if let Some((k, v)) = t.split_once("!=") {
            LabelReq::NotEq(k.trim().to_string(), v.trim().to_string())
        } else if let Some((k, v)) = t.split_once("==") {
            LabelReq::Eq(k.trim().to_string(), v.trim().to_string())
        } else if let Some((k, v)) = t.split_once('=') {
            LabelReq::Eq(k.trim().to_string(), v.trim().to_string())
        } else if let Some(open) = t.find('(') {
            let head = t[..open].trim();
            let Some(inner) = t[open + 1..].strip_suffix(')') else {
                return Err(bad());
            };
            let vals: Vec<String> = inner.split(',').map(|v| v.trim().to_string()).collect();
            if let Some(k) = head.strip_suffix(" notin") {
                LabelReq::NotIn(k.trim().to_string(), vals)
            } else if let Some(k) = head.strip_suffix(" in") {
                LabelReq::In(k.trim().to_string(), vals)
            } else {
                return Err(bad());
            }
        } else {
            LabelReq::Exists(t.to_string())
        };
        let key = match &req {
            LabelReq::Eq(k, _)
            | LabelReq::NotEq(k, _)
            | LabelReq::Exists(k)
            | LabelReq::NotExists(k)
            | LabelReq::In(k, _)
            | LabelReq::NotIn(k, _) => k,
        };
        if !valid_label_key(key) {
            return Err(bad());
        }
        out.push(req);
    }
    Ok(out)
}

fn parse_field_selector(def: &ResDef, s: &str) -> Result<Vec<FieldReq>, String> {
    let mut out = Vec::new();
    if s.trim().is_empty() {
        return Ok(out);
    }
    for term in s.split(',') {
        let t = term.trim();
        let (field, value, equal) = if let Some((f, v)) = t.split_once("!=") {
            (f, v, false)
        } else if let Some((f, v)) = t.split_once("==") {
            (f, v, true)
        } else if let Some((f, v)) = t.split_once('=') {
            (f, v, true)
        } else {
            return Err(format!("invalid selector: '{s}'; can't understand '{t}'"));
        };
        let field = field.trim();
        let known = field == "metadata.name"
            || field == "metadata.namespace"
            || def.extra_fields().contains(&field);
        if !known {
            return Err(format!("field label not supported: {field}"));
        }
        out.push(FieldReq {
            field: field.to_string(),
            value: value.trim().to_string(),
            equal,
        });
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// patches

fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// Strategic merge as far as this fake needs: a merge patch where lists are replaced, `null`
/// deletes, `$patch: delete|replace` on maps is honoured and other `$` directives are dropped.
fn strategic_merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    match p.get("$patch").and_then(Value::as_str) {
        Some("delete") => {
            *target = Value::Null;
            return;
        }
        Some("replace") => {
            let mut m = p.clone();
            m.remove("$patch");
            *target = Value::Object(m);
            return;
        }
        _ => {}
    }
    if !target.is_object() {
        *target = json!({});
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if k.starts_with('$') {
                continue;
            }
            if v.is_null() {
                t.remove(k);
                continue;
            }
            let slot = t.entry(k.clone()).or_insert(Value::Null);
            strategic_merge_patch(slot, v);
            if slot.is_null() {
                t.remove(k);
            }
        }
    }
}

fn pointer_tokens(p: &str) -> Result<Vec<String>, String> {
    if p.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = p.strip_prefix('/') else {
        return Err(format!("invalid json pointer {p:?}"));
    };
    Ok(rest
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect())
}

fn json_patch(doc: &mut Value, ops: &Value) -> Result<(), String> {
    let Some(ops) = ops.as_array() else {
        return Err("a json patch must be an array of operations".into());
    };
    for op in ops {
        let kind = op.get("op").and_then(Value::as_str).unwrap_or("");
        let path = op
            .get("path")
            .and_then(Value::as_str)
            .ok_or("an operation without a path")?;
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| format!("{kind} operation on {path} without a value"))
        };
        match kind {
            "add" => jp_add(doc, path, value()?)?,
            "remove" => {
                jp_remove(doc, path)?;
            }
            "replace" => {
                jp_remove(doc, path)?;
                jp_add(doc, path, value()?)?;
            }
            "move" => {
                let from = op
                    .get("from")
                    .and_then(Value::as_str)
                    .ok_or("move without from")?;
                let v = jp_remove(doc, from)?;
                jp_add(doc, path, v)?;
            }
            "copy" => {
                let from = op
                    .get("from")
                    .and_then(Value::as_str)
                    .ok_or("copy without from")?;
                let v = doc
                    .pointer(from)
                    .cloned()
                    .ok_or_else(|| format!("copy from missing {from}"))?;
                jp_add(doc, path, v)?;
            }
            "test" => {
                let want = value()?;
                if doc.pointer(path) != Some(&want) {
                    return Err(format!("testing value {path} failed"));
                }
            }
            other => return Err(format!("unknown json patch operation {other:?}")),
        }
    }
    Ok(())
}

fn jp_parent<'a>(doc: &'a mut Value, path: &str) -> Result<(&'a mut Value, String), String> {
    let mut toks = pointer_tokens(path)?;
    let last = toks.pop().ok_or("the whole document cannot be patched")?;
    let mut cur = doc;
    for t in toks {
        cur = match cur {
            Value::Object(m) => m.get_mut(&t),
            Value::Array(a) => t.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
            _ => None,
        }
        .ok_or_else(|| format!("missing path element {t:?} in {path}"))?;
    }
    Ok((cur, last))
}

fn jp_add(doc: &mut Value, path: &str, v: Value) -> Result<(), String> {
    if path.is_empty() {
        *doc = v;
        return Ok(());
    }
    let (parent, last) = jp_parent(doc, path)?;
    match parent {
        Value::Object(m) => {
            m.insert(last, v);
            Ok(())
        }
        Value::Array(a) => {
            let i = if last == "-" {
                a.len()
            } else {
                last.parse::<usize>()
                    .map_err(|_| format!("bad index in {path}"))?
            };
            if i > a.len() {
                return Err(format!("index out of range in {path}"));
            }
            a.insert(i, v);
            Ok(())
        }
        _ => Err(format!("cannot add at {path}")),
    }
}

fn jp_remove(doc: &mut Value, path: &str) -> Result<Value, String> {
    let (parent, last) = jp_parent(doc, path)?;
    let missing = || format!("no value at {path}");
    match parent {
        Value::Object(m) => m.remove(&last).ok_or_else(missing),
        Value::Array(a) => {
            let i = last.parse::<usize>().map_err(|_| missing())?;
            if i < a.len() {
                Ok(a.remove(i))
            } else {
                Err(missing())
            }
        }
        _ => Err(missing()),
    }
}

// ---------------------------------------------------------------------------------------------
// server internals

struct Inner {
    store: Mutex<Store>,
    /// bumped on every store change and request; `wait_until` sleeps on it
    changes: Mutex<u64>,
    changed: Condvar,
    requests: Mutex<Vec<RequestRecord>>,
    faults: Mutex<Vec<FaultRule>>,
    unavailable: AtomicBool,
    stopped: AtomicBool,
    /// dropped on stop, which wakes every `stop_rx` waiter
    stop_tx: Mutex<Option<Sender<()>>>,
    stop_rx: Receiver<()>,
    conns: Mutex<HashMap<u64, TcpStream>>,
    next_conn: AtomicU64,
    /// Replaceable at run time (`set_token`) to test credential rotation.
    token: Mutex<Option<String>>,
    /// The resourceVersion of the last BOOKMARK sent, per resource plural.
    bookmarks: Mutex<HashMap<&'static str, u64>>,
    bookmark_interval: Option<Duration>,
    tls: Option<Arc<rustls::ServerConfig>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl Inner {
    fn store(&self) -> MutexGuard<'_, Store> {
        lock(&self.store)
    }

    fn bump(&self) {
        *lock(&self.changes) += 1;
        self.changed.notify_all();
    }

    fn record(&self, r: RequestRecord) {
        lock(&self.requests).push(r);
        self.bump();
    }

    fn take_fault(&self, method: &str, target: &str, is_watch: bool) -> Option<Fault> {
        let mut faults = lock(&self.faults);
        let idx = faults.iter().position(|r| {
            r.method
                .as_deref()
                .is_none_or(|m| m.eq_ignore_ascii_case(method))
                && r.path_contains
                    .as_deref()
                    .is_none_or(|p| target.contains(p))
                && (!matches!(
                    r.fault,
                    Fault::TruncatedWatch
                        | Fault::WatchError(_)
                        | Fault::EmptyWatch
                        | Fault::EndlessWatchLine(_)
                ) || is_watch)
                && (!matches!(r.fault, Fault::RepeatContinue) || !is_watch)
        })?;
        let fault = faults[idx].fault.clone();
        if faults[idx].times > 0 {
            faults[idx].times -= 1;
            if faults[idx].times == 0 {
                faults.remove(idx);
            }
        }
        Some(fault)
    }
}

fn accept_loop(inner: Arc<Inner>, listener: TcpListener) {
    for stream in listener.incoming() {
        if inner.stopped.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = stream else { continue };
        if inner.unavailable.load(Ordering::SeqCst) {
            let _ = stream.shutdown(NetShutdown::Both);
            continue;
        }
        let id = inner.next_conn.fetch_add(1, Ordering::SeqCst);
        if let Ok(clone) = stream.try_clone() {
            lock(&inner.conns).insert(id, clone);
        }
        let conn_inner = inner.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("fake-apiserver-conn-{id}"))
            .spawn(move || {
                let _ = stream.set_nodelay(true);
                let conn = match &conn_inner.tls {
                    Some(cfg) => match rustls::ServerConnection::new(cfg.clone()) {
                        Ok(c) => Conn::Tls(Box::new(rustls::StreamOwned::new(c, stream))),
                        Err(_) => return,
                    },
                    None => Conn::Plain(stream),
                };
                serve_connection(&conn_inner, conn);
                lock(&conn_inner.conns).remove(&id);
            });
        if spawned.is_err() {
            lock(&inner.conns).remove(&id);
        }
    }
}

enum Conn {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ServerConnection, TcpStream>>),
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
        }
    }
}

struct Request {
    method: String,
    path: String,
    query: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    raw_len: usize,
    http10: bool,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn wants_close(&self) -> bool {
        let c = self.header("connection").map(str::to_ascii_lowercase);
        if self.http10 {
            c.as_deref() != Some("keep-alive")
        } else {
            c.as_deref() == Some("close")
        }
    }
}

enum ReadError {
    /// clean end or broken connection: just close
    Closed,
    /// garbage: answer 400 and close
    Bad(String),
}

const MAX_HEADER_BYTES: usize = 1 << 20;
const MAX_BODY_BYTES: usize = 256 << 20;

fn read_line_limited(
    r: &mut BufReader<Conn>,
    out: &mut Vec<u8>,
    budget: &mut usize,
) -> Result<usize, ReadError> {
    out.clear();
    let n = r
        .by_ref()
        .take(*budget as u64 + 1)
        .read_until(b'\n', out)
        .map_err(|_| ReadError::Closed)?;
    if n > *budget {
        return Err(ReadError::Bad("request header too large".into()));
    }
    *budget -= n;
    Ok(n)
}

fn read_request(r: &mut BufReader<Conn>) -> Result<Request, ReadError> {
    let mut budget = MAX_HEADER_BYTES;
    let mut line = Vec::new();
    // tolerate blank lines between requests
    loop {
        if read_line_limited(r, &mut line, &mut budget)? == 0 {
            return Err(ReadError::Closed);
        }
        if !line.iter().all(|b| b.is_ascii_whitespace()) {
            break;
        }
    }
    let text = String::from_utf8(line.clone())
        .map_err(|_| ReadError::Bad("request line is not UTF-8".into()))?;
    let mut parts = text.split_whitespace();
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(ReadError::Bad(format!(
            "malformed request line {:?}",
            text.trim()
        )));
    };
    if !version.starts_with("HTTP/1.")
        || !method.bytes().all(|b| b.is_ascii_uppercase())
        || !target.starts_with('/')
    {
        return Err(ReadError::Bad(format!(
            "malformed request line {:?}",
            text.trim()
        )));
    }
    let http10 = version == "HTTP/1.0";
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (target.to_string(), String::new()),
    };
    let mut headers = Vec::new();
    loop {
        if read_line_limited(r, &mut line, &mut budget)? == 0 {
            return Err(ReadError::Closed);
        }
        let l = String::from_utf8_lossy(&line);
        let l = l.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            break;
        }
        let Some((k, v)) = l.split_once(':') else {
            return Err(ReadError::Bad(format!("malformed header line {l:?}")));
        };
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let mut req = Request {
        method: method.to_string(),
        path,
        query,
        headers,
        body: Vec::new(),
        raw_len: MAX_HEADER_BYTES - budget,
        http10,
    };
    let chunked = req
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        loop {
            read_line_limited(r, &mut line, &mut budget)?;
            let l = String::from_utf8_lossy(&line);
            let size_s = l.trim().split(';').next().unwrap_or("");
            let size = usize::from_str_radix(size_s, 16)
                .map_err(|_| ReadError::Bad("bad chunk size".into()))?;
            if req.body.len() + size > MAX_BODY_BYTES {
                return Err(ReadError::Bad("request body too large".into()));
            }
            if size == 0 {
                // trailers until the blank line
                loop {
                    if read_line_limited(r, &mut line, &mut budget)? == 0 {
                        return Err(ReadError::Closed);
                    }
                    if line == b"\r\n" || line == b"\n" {
                        break;
                    }
                }
                break;
            }
            let start = req.body.len();
            req.body.resize(start + size, 0);
            r.read_exact(&mut req.body[start..])
                .map_err(|_| ReadError::Closed)?;
            read_line_limited(r, &mut line, &mut budget)?;
            req.raw_len += size;
        }
    } else if let Some(cl) = req.header("content-length") {
        let n: usize = cl
            .trim()
            .parse()
            .map_err(|_| ReadError::Bad("bad Content-Length".into()))?;
        if n > MAX_BODY_BYTES {
            return Err(ReadError::Bad("request body too large".into()));
        }
        req.body = vec![0; n];
        r.read_exact(&mut req.body).map_err(|_| ReadError::Closed)?;
        req.raw_len += n;
    }
    Ok(req)
}

fn reason_phrase(code: u16) -> &'static str {
    match code {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        410 => "Gone",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

struct Reply {
    code: u16,
    body: Vec<u8>,
    content_type: &'static str,
    retry_after: Option<u32>,
}

impl Reply {
    fn json(code: u16, v: &Value) -> Reply {
        Reply {
            code,
            body: serde_json::to_vec(v).unwrap_or_default(),
            content_type: "application/json",
            retry_after: None,
        }
    }
    fn failure(f: &Failure) -> Reply {
        let mut r = Reply::json(f.code, &f.to_json());
        r.retry_after = f.retry_after;
        r
    }
    fn text(code: u16, s: &str) -> Reply {
        Reply {
            code,
            body: s.as_bytes().to_vec(),
            content_type: "text/plain; charset=utf-8",
            retry_after: None,
        }
    }
}

fn reply_len(reply: &Reply, close: bool) -> usize {
    reply_head(reply, close).len() + reply.body.len()
}

fn write_reply(w: &mut Conn, reply: &Reply, close: bool) -> io::Result<usize> {
    let head = reply_head(reply, close);
    w.write_all(head.as_bytes())?;
    w.write_all(&reply.body)?;
    w.flush()?;
    Ok(head.len() + reply.body.len())
}

fn reply_head(reply: &Reply, close: bool) -> String {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-cache, private\r\n",
        reply.code,
        reason_phrase(reply.code),
        reply.content_type,
        reply.body.len()
    );
    if let Some(s) = reply.retry_after {
        head += &format!("Retry-After: {s}\r\n");
    }
    if close {
        head += "Connection: close\r\n";
    }
    head += "\r\n";
    head
}

fn serve_connection(inner: &Arc<Inner>, conn: Conn) {
    let mut reader = BufReader::with_capacity(64 * 1024, conn);
    loop {
        if inner.stopped.load(Ordering::SeqCst) {
            return;
        }
        let req = match read_request(&mut reader) {
            Ok(r) => r,
            Err(ReadError::Closed) => return,
            Err(ReadError::Bad(msg)) => {
                let _ = write_reply(
                    reader.get_mut(),
                    &Reply::failure(&Failure::bad_request(msg)),
                    true,
                );
                return;
            }
        };
        if inner.unavailable.load(Ordering::SeqCst) || inner.stopped.load(Ordering::SeqCst) {
            return;
        }
        let close = req.wants_close();
        match handle(inner, &req, reader.get_mut()) {
            Ok(Next::KeepAlive) if !close => {}
            _ => return,
        }
    }
}

enum Next {
    KeepAlive,
    Close,
}

fn handle(inner: &Arc<Inner>, req: &Request, w: &mut Conn) -> io::Result<Next> {
    let close = req.wants_close();
    let params = Params(query_pairs(&req.query));
    let param = |k: &str| params.get(k);
    let is_watch = matches!(param("watch"), Some("true") | Some("1"));
    let content_type = req.header("content-type").map(str::to_string);
    let body_json = if req.body.is_empty() {
        None
    } else {
        serde_json::from_slice::<Value>(&req.body).ok()
    };
    let mut rec = RequestRecord {
        method: req.method.clone(),
        path: req.path.clone(),
        query: req.query.clone(),
        content_type: content_type.clone(),
        status: 0,
        request_bytes: req.raw_len,
        response_bytes: 0,
        at: Instant::now(),
        user_agent: req.header("user-agent").map(str::to_string),
        authorization: req.header("authorization").map(str::to_string),
        body: if req.method == "GET" {
            None
        } else {
            body_json.clone()
        },
    };
    let target = if req.query.is_empty() {
        req.path.clone()
    } else {
        format!("{}?{}", req.path, req.query)
    };
    let fault = inner.take_fault(&req.method, &target, is_watch);
    match fault {
        Some(Fault::DropConnection) => {
            inner.record(rec);
            return Ok(Next::Close);
        }
        Some(Fault::Status(code)) => {
            let reply = Reply::failure(&fault_failure(code));
            let n = write_reply(w, &reply, close);
            rec.status = code;
            rec.response_bytes = *n.as_ref().unwrap_or(&0);
            inner.record(rec);
            return n.map(|_| Next::KeepAlive);
        }
        Some(fault @ (Fault::MalformedBody | Fault::Body(..))) => {
            let (code, body) = match fault {
                Fault::Body(code, b) => (code, b),
                _ => (200, b"{\"kind\": \"Status\", \"apiVersion\": ".to_vec()),
            };
            let reply = Reply {
                code,
                body,
                content_type: "application/json",
                retry_after: None,
            };
            let n = write_reply(w, &reply, close);
            rec.status = 200;
            rec.response_bytes = *n.as_ref().unwrap_or(&0);
            inner.record(rec);
            return n.map(|_| Next::KeepAlive);
        }
        Some(Fault::Delay(d))
            if inner.stop_rx.recv_timeout(d).is_err() && inner.stopped.load(Ordering::SeqCst) =>
        {
            return Ok(Next::Close);
        }
        Some(Fault::TruncatedWatch) => {
            let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
            let half = b"{\"type\":\"ADDED\",\"object\":{\"kind\":";
            let _ = w.write_all(head.as_bytes());
            let _ = write_chunk(w, half);
            rec.status = 200;
            rec.response_bytes = head.len() + half.len();
            inner.record(rec);
            return Ok(Next::Close);
        }
        Some(Fault::WatchError(code)) => {
            let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
            let line = event_line("ERROR", &fault_failure(code).to_json());
            let n = w
                .write_all(head.as_bytes())
                .and_then(|_| write_chunk(w, &line))
                .and_then(|_| write_chunk(w, b""));
            rec.status = 200;
            rec.response_bytes = head.len() + line.len();
            inner.record(rec);
            return n.map(|_| Next::KeepAlive);
        }
        Some(Fault::EmptyWatch) => {
            let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
            let n = w
                .write_all(head.as_bytes())
                .and_then(|_| write_chunk(w, b""));
            rec.status = 200;
            rec.response_bytes = head.len();
            inner.record(rec);
            return n.map(|_| Next::KeepAlive);
        }
        Some(Fault::Throttle(secs)) => {
            let body = format!(
                r#"{{"kind":"Status","apiVersion":"v1","metadata":{{}},"status":"Failure","message":"throttled","reason":"TooManyRequests","details":{{"retryAfterSeconds":{secs}}},"code":429}}"#
            );
            let head = format!(
                "HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\nContent-Length: {}\r\nRetry-After: {secs}\r\n\r\n",
                body.len()
            );
            let n = w
                .write_all(head.as_bytes())
                .and_then(|_| w.write_all(body.as_bytes()))
                .and_then(|_| w.flush());
            rec.status = 429;
            rec.response_bytes = head.len() + body.len();
            inner.record(rec);
            return n.map(|_| Next::KeepAlive);
        }
        Some(Fault::EndlessWatchLine(len)) => {
            let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
            let start = br#"{"type":"ADDED","object":{"kind":"PersistentVolume","pad":""#;
            let mut sent = head.len();
            let mut n = w
                .write_all(head.as_bytes())
                .and_then(|_| write_chunk(w, start));
            let block = vec![b'x'; 1 << 20];
            let mut left = len.saturating_sub(start.len());
            while n.is_ok() && left > 0 {
                let k = left.min(block.len());
                n = write_chunk(w, &block[..k]);
                left -= k;
                sent += k;
            }
            rec.status = 200;
            rec.response_bytes = sent;
            inner.record(rec);
            return Ok(Next::Close);
        }
        Some(Fault::RepeatContinue) => {
            let reply = Reply::json(
                200,
                &json!({"kind": "List", "apiVersion": "v1",
                        "metadata": {"resourceVersion": "1", "continue": "same-token"},
                        "items": []}),
            );
            let n = write_reply(w, &reply, close);
            rec.status = 200;
            rec.response_bytes = *n.as_ref().unwrap_or(&0);
            inner.record(rec);
            return n.map(|_| Next::KeepAlive);
        }
        Some(Fault::Delay(_)) | None => {}
    }
    let required = lock(&inner.token).clone();
    if let Some(token) = &required {
        let ok = req
            .header("authorization")
            .and_then(|a| a.strip_prefix("Bearer "))
            .is_some_and(|t| t.trim() == token);
        if !ok {
            let f = Failure::new(401, "Unauthorized");
            let n = write_reply(w, &Reply::failure(&f), close);
            rec.status = 401;
            rec.response_bytes = *n.as_ref().unwrap_or(&0);
            inner.record(rec);
            return n.map(|_| Next::KeepAlive);
        }
    }
    let reply = match route(&req.path) {
        Err(reply) => reply,
        Ok(Route::Resource(t)) => {
            if req.method == "GET" && t.name.is_none() && is_watch {
                return serve_watch(inner, &t, &params, w, rec);
            }
            match handle_resource(inner, req, &t, &params, body_json) {
                Ok(r) => r,
                Err(f) => Reply::failure(&f),
            }
        }
    };
    // Logged before the answer goes out, so a test that saw the answer's effect also sees
    // the request in the log (clearing the log after a wait must not leave a straggler).
    rec.status = reply.code;
    rec.response_bytes = reply_len(&reply, close);
    inner.record(rec);
    write_reply(w, &reply, close).map(|_| Next::KeepAlive)
}

struct Target {
    def: &'static ResDef,
    ns: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

enum Route {
    Resource(Target),
}

fn route(path: &str) -> Result<Route, Reply> {
    let segs: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let (group, rest) = match segs.as_slice() {
        ["healthz"] | ["livez"] | ["readyz"] => return Err(Reply::text(200, "ok")),
        ["version"] => {
            return Err(Reply::json(
                200,
                &json!({"major": "1", "minor": "36", "gitVersion": "v1.36.2-fake", "platform": "linux/amd64"}),
            ))
        }
        ["api"] => {
            return Err(Reply::json(
                200,
                &json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}),
            ))
        }
        ["api", "v1", rest @ ..] => ("", rest),
        ["apis", group, "v1", rest @ ..] => (*group, rest),
        _ => return Err(Reply::failure(&Failure::path_not_found())),
    };
    let nf = || Reply::failure(&Failure::path_not_found());
    let lookup = |plural: &str| def_for(group, plural).ok_or_else(nf);
    let t = |def, ns: Option<&str>, name: Option<&str>, sub: Option<&str>| {
        Ok(Route::Resource(Target {
            def,
            ns: ns.map(str::to_string),
            name: name.map(str::to_string),
            sub: sub.map(str::to_string),
        }))
    };
    match rest {
        [] => Err(nf()),
        ["namespaces", ns, res, more @ ..]
            if !group.is_empty() || !matches!(*res, "status" | "finalize") || !more.is_empty() =>
        {
            let def = lookup(res)?;
            if !def.namespaced {
                return Err(nf());
            }
            match more {
                [] => t(def, Some(ns), None, None),
                [name] => t(def, Some(ns), Some(name), None),
                [name, sub] => t(def, Some(ns), Some(name), Some(sub)),
                _ => Err(nf()),
            }
        }
        [res] => t(lookup(res)?, None, None, None),
        [res, name] => {
            let def = lookup(res)?;
            if def.namespaced {
                return Err(nf());
            }
            t(def, None, Some(name), None)
        }
        [res, name, sub] => {
            let def = lookup(res)?;
            if def.namespaced {
                return Err(nf());
            }
            t(def, None, Some(name), Some(sub))
        }
        _ => Err(nf()),
    }
}

fn handle_resource(
    inner: &Arc<Inner>,
    req: &Request,
    t: &Target,
    params: &Params,
    body: Option<Value>,
) -> Result<Reply, Failure> {
    let param = |k: &str| params.get(k);
    let def = t.def;
    let ns = t.ns.as_deref();
    let mode = match t.sub.as_deref() {
        None => Mode::Main,
        Some("status") if def.has_status => Mode::Status,
        Some("finalize") if def.plural == "namespaces" => Mode::Finalize,
        Some(_) => return Err(Failure::path_not_found()),
    };
    let need_body = || -> Result<Value, Failure> {
        if req.body.is_empty() {
            return Err(Failure::bad_request("the request body is empty"));
        }
        body.clone().ok_or_else(|| {
            Failure::bad_request(format!(
                "{} in version \"v1\" cannot be handled as a {}: the body is not valid JSON",
                def.kind, def.kind
            ))
        })
    };
    let method = req.method.as_str();
    let result = match (method, t.name.as_deref()) {
        ("GET", None) => {
            let filter = Filter::parse(def, param("labelSelector"), param("fieldSelector"))?;
            let limit = match param("limit") {
                Some(l) => l
                    .parse::<usize>()
                    .map_err(|_| Failure::bad_request(format!("invalid limit {l:?}")))?,
                None => 0,
            };
            let res = inner.store().list(
                def,
                ns,
                &filter,
                limit,
                param("continue").filter(|c| !c.is_empty()),
            )?;
            return Ok(list_reply(def, &res, filter.is_empty()));
        }
        ("GET", Some(name)) => {
            if mode == Mode::Finalize {
                return Err(Failure::new(
                    405,
                    "the server does not allow this method on the requested resource",
                ));
            }
            let store = inner.store();
            let e = store
                .get(def, ns, name)
                .ok_or_else(|| Failure::not_found(def, name))?;
            return Ok(Reply::json(200, &e.obj));
        }
        ("POST", None) => {
            let Some(ns) = ns.or(if def.namespaced { None } else { Some("") }) else {
                return Err(Failure::new(
                    405,
                    "the server does not allow this method on the requested resource",
                ));
            };
            let ns = if def.namespaced { Some(ns) } else { None };
            let b = need_body()?;
            let r = inner.store().create(def, ns, b, Mode::Main);
            inner.bump();
            r
        }
        ("PUT", Some(name)) => {
            let b = need_body()?;
            let r = inner.store().update(def, ns, name, b, mode);
            inner.bump();
            r
        }
        ("PATCH", Some(name)) => {
            if mode == Mode::Finalize {
                return Err(Failure::new(
                    405,
                    "the server does not allow this method on the requested resource",
                ));
            }
            let ct = req
                .header("content-type")
                .unwrap_or("")
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            let kind = match ct.as_str() {
                "application/merge-patch+json" => 0,
                "application/strategic-merge-patch+json" => 1,
                "application/json-patch+json" => 2,
                _ => {
                    return Err(Failure::new(
                        415,
                        format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {ct:?})"),
                    ))
                }
            };
            let patch = need_body()?;
            let mut store = inner.store();
            let current = store
                .get(def, ns, name)
                .map(|e| e.obj.clone())
                .ok_or_else(|| Failure::not_found(def, name))?;
            let mut doc = (*current).clone();
            match kind {
                0 => merge_patch(&mut doc, &patch),
                1 => strategic_merge_patch(&mut doc, &patch),
                _ => json_patch(&mut doc, &patch).map_err(|e| Failure::invalid(def, name, &e))?,
            }
            let r = store.update(def, ns, name, doc, mode);
            drop(store);
            inner.bump();
            r
        }
        ("DELETE", Some(name)) => {
            if mode != Mode::Main {
                return Err(Failure::new(
                    405,
                    "the server does not allow this method on the requested resource",
                ));
            }
            let opts = body.clone().unwrap_or(json!({}));
            let r = inner.store().delete(def, ns, name, &opts);
            inner.bump();
            r.map(|o| (200, o))
        }
        ("DELETE", None) => {
            let filter = Filter::parse(def, param("labelSelector"), param("fieldSelector"))?;
            let mut store = inner.store();
            let items = store.filtered(def, ns, &filter);
            for o in &items {
                let n = obj_name(o).to_string();
                let o_ns = o
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                let _ = store.delete(def, o_ns.as_deref(), &n, &json!({}));
            }
            let rv = store.rv;
            drop(store);
            inner.bump();
            let res = ListResult {
                rv,
                start: 0,
                end: items.len(),
                items: Arc::new(items),
                cont: None,
            };
            return Ok(list_reply(def, &res, true));
        }
        _ => Err(Failure::new(
            405,
            "the server does not allow this method on the requested resource",
        )),
    };
    let (code, obj) = result?;
    Ok(Reply::json(code, &obj))
}

fn list_reply(def: &ResDef, res: &ListResult, no_selectors: bool) -> Reply {
    let mut meta = Map::new();
    meta.insert("resourceVersion".into(), json!(res.rv.to_string()));
    if let Some(c) = &res.cont {
        meta.insert("continue".into(), json!(c));
        // observed: no remainingItemCount with a label selector
        if no_selectors {
            meta.insert(
                "remainingItemCount".into(),
                json!(res.items.len() - res.end),
            );
        }
    }
    let head = format!(
        "{{\"kind\":\"{}List\",\"apiVersion\":\"{}\",\"metadata\":{},\"items\":[",
        def.kind,
        def.api_version(),
        Value::Object(meta)
    );
    let mut body = Vec::with_capacity(head.len() + 64 + (res.end - res.start) * 512);
    body.extend_from_slice(head.as_bytes());
    for (i, o) in res.items[res.start..res.end].iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        let _ = serde_json::to_writer(&mut body, &**o);
    }
    body.extend_from_slice(b"]}");
    Reply {
        code: 200,
        body,
        content_type: "application/json",
        retry_after: None,
    }
}

fn event_line(ty: &str, obj: &Value) -> Vec<u8> {
    let mut v = Vec::with_capacity(256);
    v.extend_from_slice(b"{\"type\":\"");
    v.extend_from_slice(ty.as_bytes());
    v.extend_from_slice(b"\",\"object\":");
    let _ = serde_json::to_writer(&mut v, obj);
    v.extend_from_slice(b"}\n");
    v
}

fn write_chunk(w: &mut Conn, data: &[u8]) -> io::Result<()> {
    w.write_all(format!("{:x}\r\n", data.len()).as_bytes())?;
    w.write_all(data)?;
    w.write_all(b"\r\n")?;
    w.flush()
}

fn serve_watch(
    inner: &Arc<Inner>,
    t: &Target,
    params: &Params,
    w: &mut Conn,
    mut rec: RequestRecord,
) -> io::Result<Next> {
    let param = |k: &str| params.get(k);
    let def = t.def;
    let setup = (|| -> Result<(Filter, Option<u64>, Option<Duration>, bool), Failure> {
        let filter = Filter::parse(def, param("labelSelector"), param("fieldSelector"))?;
        let from = match param("resourceVersion") {
            None | Some("") | Some("0") => None,
            Some(s) => Some(
                s.parse::<u64>()
                    .map_err(|_| Failure::bad_request(format!("invalid resource version {s:?}")))?,
            ),
        };
        let timeout = match param("timeoutSeconds") {
            None | Some("") => None,
            Some(s) => Some(Duration::from_secs(s.parse::<u64>().map_err(|_| {
                Failure::bad_request(format!("invalid timeoutSeconds {s:?}"))
            })?)),
        };
        let bookmarks = matches!(param("allowWatchBookmarks"), Some("true") | Some("1"));
        Ok((filter, from, timeout, bookmarks))
    })();
    let (filter, from, timeout, bookmarks) = match setup {
        Ok(s) => s,
        Err(f) => {
            let reply = Reply::failure(&f);
            let n = write_reply(w, &reply, false);
            rec.status = reply.code;
            rec.response_bytes = *n.as_ref().unwrap_or(&0);
            inner.record(rec);
            return n.map(|_| Next::KeepAlive);
        }
    };
    let started = Instant::now();
    let start = inner.store().watch(def, t.ns.as_deref(), from, &filter);
    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: no-cache, private\r\nTransfer-Encoding: chunked\r\n\r\n";
    rec.status = 200;
    rec.response_bytes = head.len();
    inner.record(rec);
    let start = match start {
        Ok(s) => s,
        Err(oldest) => {
            let f = Failure::expired(format!(
                "too old resource version: {} ({oldest})",
                from.unwrap_or(0)
            ));
            w.write_all(head.as_bytes())?;
            write_chunk(w, &event_line("ERROR", &f.to_json()))?;
            write_chunk(w, b"")?;
            return Ok(Next::KeepAlive);
        }
    };
    let sub = start.sub;
    let result = watch_stream(
        inner, def, &filter, start, head, w, started, timeout, bookmarks,
    );
    inner.store().unsubscribe(sub);
    result
}

#[allow(clippy::too_many_arguments)]
fn watch_stream(
    inner: &Arc<Inner>,
    def: &'static ResDef,
    filter: &Filter,
    start: WatchStart,
    head: &str,
    w: &mut Conn,
    started: Instant,
    timeout: Option<Duration>,
    bookmarks: bool,
) -> io::Result<Next> {
    w.write_all(head.as_bytes())?;
    w.flush()?;
    let mut last_rv = start.rv;
    for o in &start.initial {
        write_chunk(w, &event_line("ADDED", o))?;
    }
    for c in &start.replay {
        send_change(w, filter, c)?;
    }
    let deadline = timeout.map(|t| started + t);
    // the real server sends one bookmark 2 s before the deadline
    let mut deadline_bookmark = match (bookmarks, deadline, timeout) {
        (true, Some(d), Some(t)) if t > Duration::from_secs(2) => Some(d - Duration::from_secs(2)),
        _ => None,
    };
    let interval = if bookmarks {
        inner.bookmark_interval
    } else {
        None
    };
    let mut next_interval = interval.map(|i| started + i);
    loop {
        let mut wake = deadline;
        for t in [deadline_bookmark, next_interval].into_iter().flatten() {
            wake = Some(wake.map_or(t, |w| w.min(t)));
        }
        let wait = wake.map(|t| t.saturating_duration_since(Instant::now()));
        let msg = match wait {
            Some(d) => crossbeam_channel::select! {
                recv(start.rx) -> m => Some(m),
                recv(inner.stop_rx) -> _ => return Ok(Next::Close),
                default(d) => None,
            },
            None => crossbeam_channel::select! {
                recv(start.rx) -> m => Some(m),
                recv(inner.stop_rx) -> _ => return Ok(Next::Close),
            },
        };
        match msg {
            Some(Ok(WatchMsg::Change(c))) => {
                last_rv = last_rv.max(c.rv);
                send_change(w, filter, &c)?;
            }
            Some(Ok(WatchMsg::Close)) | Some(Err(_)) => {
                write_chunk(w, b"")?;
                return Ok(Next::KeepAlive);
            }
            None => {
                let now = Instant::now();
                if deadline.is_some_and(|d| now >= d) {
                    write_chunk(w, b"")?;
                    return Ok(Next::KeepAlive);
                }
                let due_deadline = deadline_bookmark.is_some_and(|t| now >= t);
                let due_interval = next_interval.is_some_and(|t| now >= t);
                if due_deadline {
                    deadline_bookmark = None;
                }
                if due_interval {
                    next_interval = interval.map(|i| now + i);
                }
                if due_deadline || due_interval {
                    // every change up to the store's resourceVersion is in our channel once we
                    // read it under the lock: send those first so the bookmark never runs ahead
                    let rv = inner.store().rv;
                    while let Ok(m) = start.rx.try_recv() {
                        match m {
                            WatchMsg::Change(c) => {
                                last_rv = last_rv.max(c.rv);
                                send_change(w, filter, &c)?;
                            }
                            WatchMsg::Close => {
                                write_chunk(w, b"")?;
                                return Ok(Next::KeepAlive);
                            }
                        }
                    }
                    last_rv = last_rv.max(rv);
                    let bm = json!({
                        "kind": def.kind,
                        "apiVersion": def.api_version(),
                        "metadata": {"resourceVersion": last_rv.to_string()},
                    });
                    write_chunk(w, &event_line("BOOKMARK", &bm))?;
                    lock(&inner.bookmarks).insert(def.plural, last_rv);
                    inner.bump();
                }
            }
        }
    }
}

/// Sends a change as the real watch cache does for a filtered watch: an object that starts
/// matching is ADDED, one that stops matching is DELETED.
fn send_change(w: &mut Conn, filter: &Filter, c: &Change) -> io::Result<()> {
    let now = filter.matches(&c.obj);
    if filter.is_empty() {
        return write_chunk(w, c.line());
    }
    let before = c.prev.as_deref().is_some_and(|p| filter.matches(p));
    match c.ty {
        EventType::Added | EventType::Deleted => {
            let m = if c.ty == EventType::Deleted {
                before || now
            } else {
                now
            };
            if m {
                write_chunk(w, c.line())?;
            }
        }
        EventType::Modified => match (before, now) {
            (true, true) => write_chunk(w, c.line())?,
            (false, true) => write_chunk(w, &event_line("ADDED", &c.obj))?,
            (true, false) => {
                let mut gone = c.prev.as_deref().cloned().unwrap_or(Value::Null);
                set_meta(&mut gone, "resourceVersion", json!(c.rv.to_string()));
                write_chunk(w, &event_line("DELETED", &gone))?
            }
            (false, false) => {}
        },
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// TLS

fn tls_config(files: &TlsFiles) -> io::Result<Arc<rustls::ServerConfig>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |what: &str, e: &dyn std::fmt::Display| {
        io::Error::new(io::ErrorKind::InvalidInput, format!("{what}: {e}"))
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&files.cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| bad("invalid certificate pem", &e))?;
    if certs.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "no certificate in cert pem",
        ));
    }
    let key =
        PrivateKeyDer::from_pem_slice(&files.key_pem).map_err(|e| bad("invalid key pem", &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("tls protocol versions", &e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| bad("tls certificate", &e))?;
    Ok(Arc::new(cfg))
}

/// The last certificate of a PEM chain: the CA when the chain is leaf-first.
fn last_pem_cert(pem: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(pem);
    let begin = "-----BEGIN CERTIFICATE-----";
    match text.rfind(begin) {
        Some(i) => {
            let rest = &text[i..];
            let end = "-----END CERTIFICATE-----";
            match rest.find(end) {
                Some(j) => format!("{}\n", &rest[..j + end.len()]).into_bytes(),
                None => pem.to_vec(),
            }
        }
        None => pem.to_vec(),
    }
}

// ---------------------------------------------------------------------------------------------
// small helpers: query strings, base64, time, randomness

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

struct Params(Vec<(String, String)>);

impl Params {
    fn get(&self, k: &str) -> Option<&str> {
        self.0.iter().find(|(a, _)| a == k).map(|(_, v)| v.as_str())
    }
}

fn query_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                percent_decode(&k.replace('+', " ")),
                percent_decode(&v.replace('+', " ")),
            )
        })
        .collect()
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Digits after the seconds' decimal point: a metav1.MicroTime needs exactly six.
fn fraction_digits(s: &str) -> usize {
    s.get(19..)
        .and_then(|r| r.strip_prefix('.'))
        .map_or(0, |r| r.bytes().take_while(u8::is_ascii_digit).count())
}

fn yaml_quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn random_u64() -> u64 {
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

// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    type Response = (u16, Vec<(String, String)>, Vec<u8>);

    /// One request on its own connection: (status, headers lowercased, body).
    fn call(
        s: &FakeApiServer,
        method: &str,
        path: &str,
        body: Option<&Value>,
        ct: &str,
    ) -> Response {
        let mut c = TcpStream::connect(s.addr).expect("connect");
        let data = body.map(|b| b.to_string()).unwrap_or_default();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nUser-Agent: unit/1\r\n"
        );
        if body.is_some() {
            head += &format!("Content-Type: {ct}\r\nContent-Length: {}\r\n", data.len());
        }
        head += "\r\n";
        c.write_all(head.as_bytes()).expect("write");
        c.write_all(data.as_bytes()).expect("write");
        let mut r = BufReader::new(c);
        read_response(&mut r).expect("a response")
    }

    fn read_response(r: &mut BufReader<TcpStream>) -> Option<Response> {
        let mut line = String::new();
        r.read_line(&mut line).ok()?;
        let code: u16 = line.split_whitespace().nth(1)?.parse().ok()?;
        let mut headers = Vec::new();
        loop {
            line.clear();
            r.read_line(&mut line).ok()?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':')?;
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
        let h = |k: &str| headers.iter().find(|(a, _)| a == k).map(|(_, v)| v.clone());
        let mut body = Vec::new();
        if let Some(n) = h("content-length") {
            body = vec![0; n.parse().ok()?];
            r.read_exact(&mut body).ok()?;
        } else if h("transfer-encoding").is_some() {
            while let Some(c) = read_chunk(r) {
                if c.is_empty() {
                    break;
                }
                body.extend(c);
            }
        }
        Some((code, headers, body))
    }

    fn read_chunk(r: &mut BufReader<TcpStream>) -> Option<Vec<u8>> {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let n = usize::from_str_radix(line.trim(), 16).ok()?;
        let mut data = vec![0; n];
        r.read_exact(&mut data).ok()?;
        line.clear();
        r.read_line(&mut line).ok()?;
        Some(data)
    }

    fn get_json(s: &FakeApiServer, path: &str) -> (u16, Value) {
        let (c, _, b) = call(s, "GET", path, None, "");
        (c, serde_json::from_slice(&b).unwrap_or(Value::Null))
    }

    fn send(s: &FakeApiServer, method: &str, path: &str, body: Value, ct: &str) -> (u16, Value) {
        let (c, _, b) = call(s, method, path, Some(&body), ct);
        (c, serde_json::from_slice(&b).unwrap_or(Value::Null))
    }

    const JSON: &str = "application/json";
    const MERGE: &str = "application/merge-patch+json";

    fn pv(name: &str, labels: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "PersistentVolume",
               "metadata": {"name": name, "labels": labels},
               "spec": {"csi": {"driver": "d", "volumeHandle": name}}})
    }

    /// An open watch: events, then None once the server ended the stream.
    struct WatchConn {
        r: BufReader<TcpStream>,
        code: u16,
        pending: Vec<u8>,
    }

    impl WatchConn {
        fn open(s: &FakeApiServer, path: &str) -> WatchConn {
            let mut c = TcpStream::connect(s.addr).expect("connect");
            c.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            c.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .expect("write");
            let mut r = BufReader::new(c);
            let mut line = String::new();
            r.read_line(&mut line).expect("status line");
            let code = line
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            loop {
                line.clear();
                r.read_line(&mut line).expect("header");
                if line.trim().is_empty() {
                    break;
                }
            }
            WatchConn {
                r,
                code,
                pending: Vec::new(),
            }
        }
        fn next(&mut self) -> Option<Value> {
            loop {
                if let Some(i) = self.pending.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = self.pending.drain(..=i).collect();
                    return serde_json::from_slice(&line).ok();
                }
                let c = read_chunk(&mut self.r)?;
                if c.is_empty() {
                    return None;
                }
                self.pending.extend(c);
            }
        }
        fn next_typed(&mut self) -> Option<(String, Value)> {
            self.next().map(|e| {
                (
                    e["type"].as_str().unwrap_or("").to_string(),
                    e["object"].clone(),
                )
            })
        }
    }

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
    fn watch_replays_from_resource_version_and_ends_at_timeout() {
        let s = FakeApiServer::start();
        s.create(pv("before", json!({})));
        let rv = s.resource_version();
        s.create(pv("a", json!({})));
        let mut a = s.get("persistentvolumes", None, "a").expect("a");
        a["spec"]["x"] = json!(1);
        s.update(a);
        s.delete("persistentvolumes", None, "a");
        let started = Instant::now();
        let mut w = WatchConn::open(
            &s,
            &format!("/api/v1/persistentvolumes?watch=true&resourceVersion={rv}&timeoutSeconds=1"),
        );
        assert_eq!(w.code, 200);
        let evs: Vec<(String, Value)> = std::iter::from_fn(|| w.next_typed()).collect();
        let types: Vec<&str> = evs.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(types, ["ADDED", "MODIFIED", "DELETED"]);
        assert!(evs.iter().all(|(_, o)| obj_name(o) == "a"));
        let rvs: Vec<u64> = evs
            .iter()
            .filter_map(|(_, o)| o["metadata"]["resourceVersion"].as_str()?.parse().ok())
            .collect();
        assert!(rvs.windows(2).all(|p| p[0] < p[1]) && rvs[2] == s.resource_version());
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(3),
            "{took:?}"
        );
    }

    #[test]
    fn watch_without_resource_version_lists_first_then_streams() {
        let s = FakeApiServer::start();
        s.create(pv("old", json!({"k": "v"})));
        s.create(pv("other", json!({"k": "w"})));
        let mut w = WatchConn::open(
            &s,
            "/api/v1/persistentvolumes?watch=true&labelSelector=k%3Dv",
        );
        let (t, o) = w.next_typed().expect("initial");
        assert_eq!((t.as_str(), obj_name(&o)), ("ADDED", "old"));
        s.create(pv("new", json!({"k": "v"})));
        let (t, o) = w.next_typed().expect("live");
        assert_eq!((t.as_str(), obj_name(&o)), ("ADDED", "new"));
        // leaving the selector reads as DELETED, entering it as ADDED
        let mut other = s.get("persistentvolumes", None, "other").expect("other");
        other["metadata"]["labels"]["k"] = json!("v");
        s.update(other);
        let mut old = s.get("persistentvolumes", None, "old").expect("old");
        old["metadata"]["labels"]["k"] = json!("z");
        s.update(old);
        let (t, o) = w.next_typed().expect("enter");
        assert_eq!((t.as_str(), obj_name(&o)), ("ADDED", "other"));
        let (t, o) = w.next_typed().expect("leave");
        assert_eq!((t.as_str(), obj_name(&o)), ("DELETED", "old"));
        s.close_watches();
        assert!(w.next().is_none());
    }

    #[test]
    fn bookmarks_carry_only_the_resource_version() {
        let s = FakeApiServer::start_with(Options {
            bookmark_interval: Some(Duration::from_millis(50)),
            ..Options::default()
        })
        .expect("start");
        s.create(pv("a", json!({})));
        let rv = s.resource_version();
        let mut w = WatchConn::open(
            &s,
            &format!(
                "/api/v1/persistentvolumes?watch=1&allowWatchBookmarks=true&resourceVersion={rv}"
            ),
        );
        let (t, o) = w.next_typed().expect("bookmark");
        assert_eq!(t, "BOOKMARK");
        assert_eq!(
            o,
            json!({"kind": "PersistentVolume", "apiVersion": "v1", "metadata": {"resourceVersion": rv.to_string()}})
        );
        // without allowWatchBookmarks none arrive: the stream ends at its timeout with nothing
        let mut w = WatchConn::open(
            &s,
            &format!("/api/v1/persistentvolumes?watch=1&resourceVersion={rv}&timeoutSeconds=1"),
        );
        assert!(w.next().is_none());
    }

    #[test]
    fn too_old_resource_version_is_an_error_event() {
        let s = FakeApiServer::start();
        s.create(pv("a", json!({})));
        let rv = s.resource_version();
        s.create(pv("b", json!({})));
        s.compact();
        let mut w = WatchConn::open(
            &s,
            &format!("/api/v1/persistentvolumes?watch=1&resourceVersion={rv}"),
        );
        assert_eq!(w.code, 200);
        let (t, o) = w.next_typed().expect("error event");
        assert_eq!(t, "ERROR");
        assert_eq!(
            (o["code"].as_u64(), o["reason"].as_str()),
            (Some(410), Some("Expired"))
        );
        assert!(w.next().is_none());
        // from the compaction point itself the watch works
        let now = s.resource_version();
        let mut w = WatchConn::open(
            &s,
            &format!("/api/v1/persistentvolumes?watch=1&resourceVersion={now}"),
        );
        s.create(pv("c", json!({})));
        assert_eq!(
            w.next_typed().map(|(t, o)| (t, obj_name(&o).to_string())),
            Some(("ADDED".into(), "c".into()))
        );
    }

    #[test]
    fn history_bound_makes_old_versions_too_old() {
        let s = FakeApiServer::start_with(Options {
            history: 2,
            ..Options::default()
        })
        .expect("start");
        let rv = s.resource_version();
        for i in 0..3 {
            s.create(pv(&format!("p{i}"), json!({})));
        }
        let mut w = WatchConn::open(
            &s,
            &format!("/api/v1/persistentvolumes?watch=1&resourceVersion={rv}"),
        );
        assert_eq!(w.next_typed().map(|(t, _)| t).as_deref(), Some("ERROR"));
    }

    #[test]
    fn patches_over_http() {
        let s = FakeApiServer::start();
        let ev = json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "e1", "namespace": "ns"},
                        "involvedObject": {"kind": "Pod", "name": "p"}, "reason": "R", "count": 1,
                        "firstTimestamp": "2026-01-02T03:04:05.5Z", "lastTimestamp": "2026-01-02T03:04:05Z"});
        let (c, created) = send(&s, "POST", "/api/v1/namespaces/ns/events", ev, JSON);
        assert_eq!(c, 201);
        assert_eq!(created["firstTimestamp"], "2026-01-02T03:04:05Z");
        let (c, b) = send(
            &s,
            "PATCH",
            "/api/v1/namespaces/ns/events/e1",
            json!({"count": 2, "message": "m"}),
            "application/strategic-merge-patch+json",
        );
        assert_eq!(
            (c, b["count"].as_u64(), b["reason"].as_str()),
            (200, Some(2), Some("R"))
        );
        let ops = json!([{"op": "test", "path": "/count", "value": 2}, {"op": "replace", "path": "/count", "value": 3}]);
        let (c, b) = send(
            &s,
            "PATCH",
            "/api/v1/namespaces/ns/events/e1",
            ops,
            "application/json-patch+json",
        );
        assert_eq!((c, b["count"].as_u64()), (200, Some(3)));
        let ops = json!([{"op": "test", "path": "/count", "value": 2}]);
        let (c, _) = send(
            &s,
            "PATCH",
            "/api/v1/namespaces/ns/events/e1",
            ops,
            "application/json-patch+json",
        );
        assert_eq!(c, 422);
        let (c, b) = send(
            &s,
            "PATCH",
            "/api/v1/namespaces/ns/events/e1",
            json!({}),
            "text/plain",
        );
        assert_eq!(
            (c, b["reason"].as_str()),
            (415, Some("UnsupportedMediaType"))
        );
        let (c, b) = send(
            &s,
            "PATCH",
            "/api/v1/namespaces/ns/events/nope",
            json!({}),
            MERGE,
        );
        assert_eq!((c, b["details"]["kind"].as_str()), (404, Some("events")));
        // a patch carrying a stale resourceVersion is a conflict
        let (c, _) = send(
            &s,
            "PATCH",
            "/api/v1/namespaces/ns/events/e1",
            json!({"metadata": {"resourceVersion": "1"}}),
            MERGE,
        );
        assert_eq!(c, 409);
        // a no-op patch keeps the resourceVersion
        let rv = s.resource_version();
        let (c, _) = send(
            &s,
            "PATCH",
            "/api/v1/namespaces/ns/events/e1",
            json!({"count": 3}),
            MERGE,
        );
        assert_eq!((c, s.resource_version()), (200, rv));
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
    fn field_and_label_selectors_over_http() {
        let s = FakeApiServer::start();
        for (name, node, phase) in [
            ("p1", "n1", "Running"),
            ("p2", "n2", "Running"),
            ("p3", "n1", "Failed"),
        ] {
            s.create(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "ns", "labels": {"app": name}},
                            "spec": {"nodeName": node}, "status": {"phase": phase}}));
        }
        let names = |path: &str| -> Vec<String> {
            let (c, b) = get_json(&s, path);
            assert_eq!(c, 200, "{path}: {b}");
            b["items"]
                .as_array()
                .expect("items")
                .iter()
                .map(|o| obj_name(o).to_string())
                .collect()
        };
        assert_eq!(
            names("/api/v1/pods?fieldSelector=spec.nodeName%3Dn1"),
            ["p1", "p3"]
        );
        assert_eq!(
            names(
                "/api/v1/namespaces/ns/pods?fieldSelector=spec.nodeName==n1,status.phase!=Failed"
            ),
            ["p1"]
        );
        assert_eq!(
            names("/api/v1/namespaces/other/pods?fieldSelector=spec.nodeName%3Dn1"),
            Vec::<String>::new()
        );
        assert_eq!(
            names("/api/v1/pods?labelSelector=app+in+(p1,p2),app!=p2"),
            ["p1"]
        );
        let (c, b) = get_json(&s, "/api/v1/pods?fieldSelector=spec.bogus%3D1");
        assert_eq!((c, b["reason"].as_str()), (400, Some("BadRequest")));
        let (c, _) = get_json(
            &s,
            "/api/v1/persistentvolumes?fieldSelector=spec.nodeName%3Dn1",
        );
        assert_eq!(c, 400);
    }

    #[test]
    fn selector_parsing_table() {
        let cases: &[(&str, Option<Vec<LabelReq>>)] = &[
            ("", Some(vec![])),
            ("a=b", Some(vec![LabelReq::Eq("a".into(), "b".into())])),
            (
                "a==b,c!=d",
                Some(vec![
                    LabelReq::Eq("a".into(), "b".into()),
                    LabelReq::NotEq("c".into(), "d".into()),
                ]),
            ),
            (
                "x.io/k,!y",
                Some(vec![
                    LabelReq::Exists("x.io/k".into()),
                    LabelReq::NotExists("y".into()),
                ]),
            ),
            (
                "k in (a, b),j notin (c)",
                Some(vec![
                    LabelReq::In("k".into(), vec!["a".into(), "b".into()]),
                    LabelReq::NotIn("j".into(), vec!["c".into()]),
                ]),
            ),
            ("k in (a", None),
            ("=x", None),
        ];
        for (input, want) in cases {
            assert_eq!(parse_label_selector(input).ok(), *want, "{input}");
        }
        let ev = &RESOURCES[EVENTS];
        assert!(parse_field_selector(ev, "source=x,involvedObject.uid!=y,metadata.name=z").is_ok());
        assert!(parse_field_selector(ev, "spec.nodeName=x").is_err());
        assert!(parse_field_selector(ev, "reason").is_err());
        let obj = json!({"source": {"component": "c"}, "spec": {"unschedulable": true}});
        assert_eq!(field_value(&obj, "source"), "c");
        assert_eq!(field_value(&obj, "spec.unschedulable"), "true");
        assert_eq!(field_value(&obj, "reason"), "");
    }

    #[test]
    fn patch_functions_table() {
        let merge_cases = [
            (
                json!({"a": 1, "b": {"c": 2}}),
                json!({"b": {"c": null, "d": 3}, "e": [1]}),
                json!({"a": 1, "b": {"d": 3}, "e": [1]}),
            ),
            (json!({"a": [1, 2]}), json!({"a": [3]}), json!({"a": [3]})),
            (json!({"a": 1}), json!({"a": {"x": null}}), json!({"a": {}})),
        ];
        for (doc, patch, want) in merge_cases {
            let mut d = doc.clone();
            merge_patch(&mut d, &patch);
            assert_eq!(d, want, "merge {doc} + {patch}");
            let mut d = doc.clone();
            strategic_merge_patch(&mut d, &patch);
            assert_eq!(d, want, "strategic {doc} + {patch}");
        }
        let mut d = json!({"m": {"a": 1, "b": 2}, "n": 1});
        strategic_merge_patch(
            &mut d,
            &json!({"m": {"$patch": "replace", "c": 3}, "$setElementOrder/x": [], "n": {"$patch": "delete"}}),
        );
        assert_eq!(d, json!({"m": {"c": 3}}));
        let json_cases = [
            (
                json!([{"op": "add", "path": "/a/-", "value": 3}]),
                Some(json!({"a": [1, 2, 3], "b": {"c~/": 1}})),
            ),
            (
                json!([{"op": "remove", "path": "/b/c~0~1"}]),
                Some(json!({"a": [1, 2], "b": {}})),
            ),
            (
                json!([{"op": "move", "from": "/a/0", "path": "/z"}]),
                Some(json!({"a": [2], "b": {"c~/": 1}, "z": 1})),
            ),
            (
                json!([{"op": "copy", "from": "/a", "path": "/b/x"}]),
                Some(json!({"a": [1, 2], "b": {"c~/": 1, "x": [1, 2]}})),
            ),
            (
                json!([{"op": "replace", "path": "/missing", "value": 1}]),
                None,
            ),
            (json!([{"op": "test", "path": "/a/1", "value": 3}]), None),
            (json!([{"op": "frob", "path": "/a"}]), None),
            (json!({"op": "add"}), None),
        ];
        for (ops, want) in json_cases {
            let mut d = json!({"a": [1, 2], "b": {"c~/": 1}});
            let r = json_patch(&mut d, &ops);
            assert_eq!(r.ok().map(|_| d), want, "{ops}");
        }
    }

    #[test]
    fn lease_micro_time_needs_six_digits() {
        let s = FakeApiServer::start();
        let lease = |t: &str| {
            json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "l"},
                                     "spec": {"holderIdentity": "h", "renewTime": t}})
        };
        let (c, b) = send(
            &s,
            "POST",
            "/apis/coordination.k8s.io/v1/namespaces/ns/leases",
            lease("2026-01-02T03:04:05Z"),
            JSON,
        );
        assert_eq!((c, b["reason"].as_str()), (400, Some("BadRequest")));
        let (c, b) = send(
            &s,
            "POST",
            "/apis/coordination.k8s.io/v1/namespaces/ns/leases",
            lease("2026-01-02T04:04:05.000001+01:00"),
            JSON,
        );
        assert_eq!(
            (c, b["spec"]["renewTime"].as_str()),
            (201, Some("2026-01-02T03:04:05.000001Z"))
        );
    }

    #[test]
    fn only_micro_times_have_six_fraction_digits() {
        assert_eq!(fraction_digits("2026-01-02T03:04:05.123456Z"), 6);
        assert_eq!(fraction_digits("2026-01-02T03:04:05.5Z"), 1);
        assert_eq!(fraction_digits("2026-01-02T03:04:05Z"), 0);
        assert_eq!(fraction_digits("2026"), 0);
    }

    #[test]
    fn injected_faults() {
        let s = FakeApiServer::start();
        s.inject(
            FaultRule::new(Fault::Status(500))
                .method("GET")
                .path("persistentvolumes")
                .times(1),
        );
        assert_eq!(
            get_json(&s, "/api/v1/persistentvolumes").1["reason"],
            "InternalError"
        );
        assert_eq!(get_json(&s, "/api/v1/persistentvolumes").0, 200);
        s.inject(FaultRule::new(Fault::Status(429)).times(1));
        let (c, h, _) = call(&s, "GET", "/api/v1/nodes", None, "");
        assert_eq!(c, 429);
        assert!(h.contains(&("retry-after".into(), "1".into())));
        s.inject(FaultRule::new(Fault::MalformedBody).times(1));
        let (c, _, b) = call(&s, "GET", "/api/v1/nodes", None, "");
        assert!(c == 200 && serde_json::from_slice::<Value>(&b).is_err());
        s.inject(FaultRule::new(Fault::DropConnection).times(1));
        let mut conn = TcpStream::connect(s.addr).expect("connect");
        conn.write_all(b"GET /api/v1/nodes HTTP/1.1\r\n\r\n")
            .expect("write");
        let mut buf = Vec::new();
        assert_eq!(conn.read_to_end(&mut buf).ok(), Some(0));
        s.inject(FaultRule::new(Fault::Delay(Duration::from_millis(300))).times(1));
        let t = Instant::now();
        assert_eq!(get_json(&s, "/api/v1/nodes").0, 200);
        assert!(t.elapsed() >= Duration::from_millis(300));
        // a TruncatedWatch rule leaves plain GETs alone and cuts the next watch
        s.inject(FaultRule::new(Fault::TruncatedWatch).times(1));
        assert_eq!(get_json(&s, "/api/v1/nodes").0, 200);
        let mut w = WatchConn::open(&s, "/api/v1/nodes?watch=1");
        assert!(w.next().is_none() && !w.pending.is_empty());
        // so does a WatchError rule, which ends the watch with one ERROR event
        s.inject(FaultRule::new(Fault::WatchError(500)).times(1));
        assert_eq!(get_json(&s, "/api/v1/nodes").0, 200);
        let mut w = WatchConn::open(&s, "/api/v1/nodes?watch=1");
        let (t, o) = w.next_typed().expect("error event");
        assert_eq!((t.as_str(), &o["code"]), ("ERROR", &json!(500)));
        assert!(w.next().is_none());
        s.inject(FaultRule::new(Fault::EmptyWatch).times(1));
        assert_eq!(get_json(&s, "/api/v1/nodes").0, 200);
        let mut w = WatchConn::open(&s, "/api/v1/nodes?watch=1");
        assert!(w.next().is_none() && w.pending.is_empty());
        s.inject(FaultRule::new(Fault::Status(503)));
        assert_eq!(get_json(&s, "/api/v1/nodes").0, 503);
        s.clear_faults();
        assert_eq!(get_json(&s, "/api/v1/nodes").0, 200);
        let recs = s.requests();
        assert!(recs.iter().any(|r| r.status == 0));
        assert!(recs.iter().any(|r| r.is_watch() && r.status == 200));
        s.clear_requests();
        assert!(s.requests().is_empty());
    }

    #[test]
    fn unavailable_server_closes_connections() {
        let s = FakeApiServer::start();
        s.set_unavailable(true);
        let mut conn = TcpStream::connect(s.addr).expect("connect");
        let _ = conn.write_all(b"GET /api/v1/nodes HTTP/1.1\r\n\r\n");
        let mut buf = Vec::new();
        assert!(conn.read_to_end(&mut buf).map(|n| n == 0).unwrap_or(true));
        s.set_unavailable(false);
        assert_eq!(get_json(&s, "/api/v1/nodes").0, 200);
    }

    #[test]
    fn keep_alive_chunked_bodies_garbage_and_auth() {
        let s = FakeApiServer::start_with(Options {
            token: Some("t".into()),
            ..Options::default()
        })
        .expect("start");
        let c = TcpStream::connect(s.addr).expect("connect");
        let mut w = c.try_clone().expect("clone");
        let mut r = BufReader::new(c);
        w.write_all(b"GET /api/v1/nodes HTTP/1.1\r\n\r\n")
            .expect("write");
        let (code, _, b) = read_response(&mut r).expect("401");
        assert_eq!(code, 401);
        assert_eq!(
            serde_json::from_slice::<Value>(&b)
                .ok()
                .and_then(|v| v["reason"].as_str().map(String::from))
                .as_deref(),
            Some("Unauthorized")
        );
        let body = br#"{"metadata":{"name":"n1"}}"#;
        let req = format!("POST /api/v1/nodes HTTP/1.1\r\nAuthorization: Bearer t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n", body.len());
        w.write_all(req.as_bytes()).expect("write");
        w.write_all(body).expect("write");
        w.write_all(b"\r\n0\r\n\r\n").expect("write");
        assert_eq!(read_response(&mut r).map(|x| x.0), Some(201));
        w.write_all(b"GET /api/v1/nodes/n1 HTTP/1.1\r\nAuthorization: Bearer t\r\n\r\n")
            .expect("write");
        assert_eq!(read_response(&mut r).map(|x| x.0), Some(200));
        w.write_all(b"\x00\x01garbage\r\n\r\n").expect("write");
        assert_eq!(read_response(&mut r).map(|x| x.0), Some(400));
        let mut k = tempdir_file("kubeconfig");
        s.write_kubeconfig(&k).expect("kubeconfig");
        let text = std::fs::read_to_string(&k).expect("read");
        assert!(
            text.contains(&format!("server: {}", s.url()))
                && text.contains("token: \"t\"")
                && text.contains("current-context: fake")
        );
        let _ = std::fs::remove_file(&mut k);
    }

    fn tempdir_file(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!(
            "fake-apiserver-{}-{}-{name}",
            std::process::id(),
            random_u64()
        ))
    }

    #[test]
    fn wait_until_wakes_on_changes() {
        let s = Arc::new(FakeApiServer::start());
        let s2 = s.clone();
        let writer = std::thread::spawn(move || {
            for i in 0..5 {
                s2.create(pv(&format!("w{i}"), json!({})));
            }
        });
        assert!(s.wait_until(Duration::from_secs(10), |s| s
            .list("persistentvolumes", None)
            .len()
            == 5));
        let _ = writer.join();
        let t = Instant::now();
        assert!(!s.wait_until(Duration::from_millis(200), |s| s
            .get("persistentvolumes", None, "never")
            .is_some()));
        assert!(t.elapsed() >= Duration::from_millis(200));
        let events_before = s.events().len();
        s.create(json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "z", "namespace": "a"}}));
        s.create(json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "a", "namespace": "b"}}));
        let names: Vec<String> = s
            .events()
            .iter()
            .skip(events_before)
            .map(|e| obj_name(e).to_string())
            .collect();
        assert_eq!(names, ["z", "a"]);
    }

    #[test]
    fn drop_ends_open_watches_promptly() {
        let s = FakeApiServer::start();
        let mut w = WatchConn::open(&s, "/api/v1/pods?watch=1");
        let t = Instant::now();
        drop(s);
        assert!(w.next().is_none());
        assert!(t.elapsed() < Duration::from_secs(2));
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

    const PVC_STATUS: &str = "/api/v1/namespaces/ns/persistentvolumeclaims/c/status?fieldManager=csi-external-health-monitor-controller";

    /// A fake API server with the `CSIVolumeHealth` gate on or off and one Bound PVC, ns/c.
    fn health_server(gate: bool) -> FakeApiServer {
        let s = FakeApiServer::start_with(Options {
            pvc_health_status: gate,
            ..Options::default()
        })
        .expect("start");
        s.create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ns"}}));
        s.create(json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "c", "namespace": "ns"},
            "spec": {"accessModes": ["ReadWriteOnce"], "volumeName": "pv"},
            "status": {"phase": "Bound"}}));
        s
    }

    fn health_status(conditions: Value) -> Value {
        json!({"healthConditions": conditions, "lastTransitionTime": "2026-11-30T10:00:00Z"})
    }

    fn patch_health(s: &FakeApiServer, hs: Value) -> (u16, Value) {
        send(
            s,
            "PATCH",
            PVC_STATUS,
            json!({"status": {"healthStatus": hs}}),
            MERGE,
        )
    }

    fn stored_pvc(s: &FakeApiServer) -> Value {
        let (code, b) = get_json(s, "/api/v1/namespaces/ns/persistentvolumeclaims/c");
        assert_eq!(code, 200, "{b}");
        b
    }

    #[test]
    fn pvc_health_status_is_dropped_with_the_gate_off() {
        let s = health_server(false);
        let hs = health_status(
            json!([{"status": "Inaccessible", "reason": "DiskGone", "message": "disk gone"}]),
        );
        let (code, b) = patch_health(&s, hs.clone());
        assert_eq!(code, 200, "{b}");
        assert_eq!(b["status"], json!({"phase": "Bound"}));
        assert_eq!(stored_pvc(&s)["status"], json!({"phase": "Bound"}));
        // not validated either: the field is unknown
        let (code, _) = patch_health(&s, health_status(json!([{"status": "Bogus"}])));
        assert_eq!(code, 200);
        let (code, b) = patch_health(&s, Value::Null);
        assert_eq!(
            (code, &b["status"]),
            (200, &json!({"phase": "Bound"})),
            "{b}"
        );
        // the gate turned on (an upgrade): the same write is kept from now on
        s.set_pvc_health_status(true);
        let (code, b) = patch_health(&s, hs.clone());
        assert_eq!((code, &b["status"]["healthStatus"]), (200, &hs), "{b}");
    }

    #[test]
    fn pvc_health_status_is_kept_replaced_and_cleared_with_the_gate_on() {
        let s = health_server(true);
        let two = health_status(json!([
            {"status": "Inaccessible", "reason": "DiskGone", "message": "disk gone"},
            {"status": "Degraded", "reason": "Slow", "message": "slow"}
        ]));
        let (code, b) = patch_health(&s, two.clone());
        assert_eq!(code, 200, "{b}");
        assert_eq!(b["status"], json!({"phase": "Bound", "healthStatus": two}));
        assert_eq!(stored_pvc(&s)["status"]["healthStatus"], two);
        // a merge patch replaces the list whole
        let one = health_status(json!([{"status": "DataLoss", "reason": "Lost"}]));
        let (code, b) = patch_health(&s, one.clone());
        assert_eq!((code, &b["status"]["healthStatus"]), (200, &one), "{b}");
        // a write to the main resource keeps the status as it is
        let (code, b) = send(
            &s,
            "PATCH",
            "/api/v1/namespaces/ns/persistentvolumeclaims/c",
            json!({"metadata": {"labels": {"l": "1"}}, "status": {"healthStatus": null}}),
            MERGE,
        );
        assert_eq!((code, &b["status"]["healthStatus"]), (200, &one), "{b}");
        // null clears it, and only it
        let (code, b) = patch_health(&s, Value::Null);
        assert_eq!(code, 200, "{b}");
        assert_eq!(b["status"], json!({"phase": "Bound"}));
        assert_eq!(stored_pvc(&s)["status"], json!({"phase": "Bound"}));
    }

    #[test]
    fn pvc_health_status_validation_with_the_gate_on() {
        let s = health_server(true);
        let c = |status: &str, reason: &str| json!({"status": status, "reason": reason, "message": "m"});
        let many = |n: usize| {
            Value::Array(
                (0..n)
                    .map(|i| c("Degraded", &format!("Reason{i}")))
                    .collect(),
            )
        };
        // 128 two-byte characters are 256 bytes: the limits count bytes
        let reason_256 = "é".repeat(128);
        let reason_258 = "é".repeat(129);
        let with_message = |m: String| json!([{"status": "Degraded", "reason": "R", "message": m}]);
        let ok = [
            json!([]),
            json!([
                c("Inaccessible", "R"),
                c("DataLoss", "R"),
                c("Degraded", "R")
            ]),
            json!([c("Degraded", "A"), c("Degraded", "B")]),
            json!([c("Degraded", &reason_256)]),
            with_message("m".repeat(1024)),
            many(16),
        ];
        for conditions in ok {
            let hs = health_status(conditions);
            let (code, b) = patch_health(&s, hs.clone());
            assert_eq!((code, &b["status"]["healthStatus"]), (200, &hs), "{b}");
        }
        let kept = stored_pvc(&s)["status"].clone();
        let refused = [
            (
                json!([c("Unknown", "R")]),
                "healthConditions[0].status: Unsupported value",
            ),
            (
                json!([c("degraded", "R")]),
                "healthConditions[0].status: Unsupported value",
            ),
            (
                json!([{"reason": "R"}]),
                "healthConditions[0].status: Unsupported value",
            ),
            (
                json!([c("Degraded", "R"), c("Degraded", "")]),
                "healthConditions[1].reason: Required value",
            ),
            (
                json!([{"status": "Degraded"}]),
                "healthConditions[0].reason: Required value",
            ),
            (
                json!([c("Degraded", &reason_258)]),
                "healthConditions[0].reason: Too long",
            ),
            (
                json!([c("Degraded", &"r".repeat(257))]),
                "healthConditions[0].reason: Too long",
            ),
            (
                with_message("m".repeat(1025)),
                "healthConditions[0].message: Too long",
            ),
            (
                with_message("é".repeat(513)),
                "healthConditions[0].message: Too long",
            ),
            (many(17), "healthConditions: Too many: 17"),
            (
                json!([c("Degraded", "R"), c("DataLoss", "R"), c("Degraded", "R")]),
                "healthConditions[2]: Duplicate value",
            ),
        ];
        for (conditions, why) in refused {
            let (code, b) = patch_health(&s, health_status(conditions.clone()));
            assert_eq!(code, 422, "{conditions}: {b}");
            assert_eq!(b["reason"], "Invalid", "{b}");
            let message = b["message"].as_str().unwrap_or("");
            assert!(
                message.starts_with("PersistentVolumeClaim \"c\" is invalid: status.healthStatus.")
                    && message.contains(why),
                "{conditions}: {message}"
            );
            assert_eq!(
                stored_pvc(&s)["status"],
                kept,
                "a refused write changed nothing"
            );
        }
        let (code, b) = patch_health(
            &s,
            json!({"healthConditions": [], "lastTransitionTime": "yesterday"}),
        );
        assert_eq!(code, 422, "{b}");
        assert!(
            b["message"]
                .as_str()
                .is_some_and(|m| m.contains("status.healthStatus.lastTransitionTime")),
            "{b}"
        );
    }
}
