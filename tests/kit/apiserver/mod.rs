//! Fake Kubernetes API server for tests, the sandbox and benchmarks: a hand-written HTTP/1.1
//! server (optionally TLS with a bearer token) on 127.0.0.1 over one in-memory store with one
//! resourceVersion counter. It keeps kube-apiserver's observable semantics (Status bodies, list
//! pagination snapshots, chunked watches with bookmarks and 410, finalizers, status
//! subresources, merge/strategic/JSON patches, field and label selectors) and adds fault
//! injection, a request log and direct store access for assertions.
//!
//! Every expectation in `/work/shared/tools/kube-api-conformance.py` was observed on a real
//! kube-apiserver; this fake passes it without special cases.
//!
//! Split by concern: `store` (objects, the resourceVersion counter, lists and continue tokens,
//! change history and compaction), `watch` (watch streams, bookmarks, 410), `patch` (merge,
//! strategic-merge and JSON patch), `validation` (what the real API refuses or drops, the PVC
//! `healthStatus` gate), `selectors`, `faults` (injection rules and their answers),
//! `resources` (the served kinds and Status bodies), `routes` (URL to resource and verb) and
//! `http` (the HTTP/1.1 server, TLS, authentication, request log). This file holds the public
//! face the tests use and the state shared by the serving threads.

mod faults;
mod http;
mod patch;
mod resources;
mod routes;
mod selectors;
mod store;
#[cfg(test)]
mod testclient;
mod validation;
mod watch;

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::{Shutdown as NetShutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use serde_json::Value;

use healthmon::kube::config::base64_encode;

use http::{accept_loop, last_pem_cert, query_pairs, tls_config};
use resources::{def_for_object, def_for_plural, namespace_for, obj_name, EVENTS, RESOURCES};
use store::{Mode, Store};

// The public path the tests name (`apiserver::Fault`); the testkit binary uses only part of it.
#[allow(unused_imports)]
pub use faults::{Fault, FaultRule};

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

    /// `create_many` for a bulk load that may not fit in memory as JSON trees (the benchmark's
    /// million PVs and PVCs): objects are taken one at a time from `objs` and stored as their
    /// JSON text, parsed again only if something reads one as a tree later (a GET, an update,
    /// a selector, a watch). Lists copy the text; what a client reads is byte for byte the same.
    pub fn create_many_compact(&self, objs: impl IntoIterator<Item = Value>) {
        let mut store = self.inner.store();
        store.compact_writes = true;
        for obj in objs {
            let def = match def_for_object(&obj) {
                Some(d) => d,
                None => panic!("fake api server: unknown apiVersion/kind in {obj}"),
            };
            let ns = namespace_for(def, &obj);
            if let Err(f) = store.create(def, ns.as_deref(), obj, Mode::Direct) {
                store.compact_writes = false;
                panic!("fake api server: create failed: {}", f.message);
            }
        }
        store.compact_writes = false;
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
// state shared by `FakeApiServer` and the serving threads

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
}

fn yaml_quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::testclient::*;
    use super::*;

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
}
