//! The mock CSI driver of the test kit: a real grpcio server on a temporary unix socket that
//! answers Identity, Controller and Node calls from a scripted, inspectable state.
//!
//! Tests set plugin info, capabilities, volumes and their conditions, page size, latency and
//! failures; they read back every call (with its timing) and the peak number of calls in
//! flight. `stop` kills the server and removes the socket: the driver dying mid-run.

use grpcio::{
    EnvBuilder, RpcContext, RpcStatus, RpcStatusCode, Server, ServerBuilder, ServerCredentials,
    UnarySink,
};
use healthmon::csi::proto::csi;
use healthmon::csi::proto::csi_grpc;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub const PROBE: &str = "Probe";
pub const PLUGIN_INFO: &str = "GetPluginInfo";
pub const PLUGIN_CAPABILITIES: &str = "GetPluginCapabilities";
pub const CONTROLLER_CAPABILITIES: &str = "ControllerGetCapabilities";
pub const LIST_VOLUMES: &str = "ListVolumes";
pub const GET_VOLUME: &str = "ControllerGetVolume";
pub const NODE_STATS: &str = "NodeGetVolumeStats";

/// One recorded call.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: &'static str,
    /// Volume id (GetVolume, NodeGetVolumeStats) or starting token (ListVolumes).
    pub arg: String,
    /// ListVolumes max_entries.
    pub max_entries: i32,
    pub started: Instant,
    pub finished: Option<Instant>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Volume {
    pub abnormal: bool,
    pub message: String,
    /// Send the entry without its `volume` field (a broken driver).
    pub omit_volume: bool,
    /// Send the entry without a status/condition.
    pub omit_condition: bool,
}

pub struct State {
    pub name: String,
    pub controller_service: bool,
    pub list_volumes: bool,
    pub get_volume: bool,
    pub volume_condition: bool,
    pub volumes: BTreeMap<String, Volume>,
    /// Entries per ListVolumes page when the request has no max_entries (0 = all in one page).
    pub page_size: usize,
    pub latency: Duration,
    /// Answers for the next Probe calls (then `ready: true`); `None` = leave `ready` unset.
    pub probe_script: VecDeque<Option<bool>>,
    /// Next failures per method: each call pops one.
    pub failures: HashMap<&'static str, VecDeque<RpcStatusCode>>,
    /// Next failures per method and argument (e.g. one ListVolumes page token); consulted
    /// before `failures`.
    pub arg_failures: HashMap<(&'static str, String), VecDeque<RpcStatusCode>>,
    /// Volume ids ControllerGetVolume answers NOT_FOUND for.
    pub not_found: HashSet<String>,
    /// Answer every ListVolumes page with this next_token (a driver that never finishes).
    pub stuck_token: Option<String>,
    pub calls: Vec<Call>,
    pub in_flight: usize,
    pub max_in_flight: usize,
    /// Per volume id: calls in flight right now and the maximum ever seen.
    pub in_flight_per_volume: HashMap<String, usize>,
    pub max_in_flight_per_volume: usize,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Clone)]
struct Service {
    shared: Arc<Shared>,
}

pub struct MockDriver {
    shared: Arc<Shared>,
    server: Option<Server>,
    socket: PathBuf,
    dir: Option<PathBuf>,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh private directory under the system temp dir (the kit has no tempfile crate).
pub fn temp_dir(prefix: &str) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("{prefix}-{}-{n}-{nanos:x}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

impl MockDriver {
    /// A driver named `name` with every capability the monitor uses, on a socket in a new temp dir.
    pub fn start(name: &str) -> MockDriver {
        let dir = temp_dir("mock-csi");
        let mut d =
            MockDriver::start_at(&dir.join("csi.sock"), name).expect("start mock CSI driver");
        d.dir = Some(dir);
        d
    }

    pub fn start_at(socket: &Path, name: &str) -> std::io::Result<MockDriver> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                name: name.to_string(),
                controller_service: true,
                list_volumes: true,
                get_volume: true,
                volume_condition: true,
                volumes: BTreeMap::new(),
                page_size: 0,
                latency: Duration::ZERO,
                probe_script: VecDeque::new(),
                failures: HashMap::new(),
                arg_failures: HashMap::new(),
                not_found: HashSet::new(),
                stuck_token: None,
                calls: Vec::new(),
                in_flight: 0,
                max_in_flight: 0,
                in_flight_per_volume: HashMap::new(),
                max_in_flight_per_volume: 0,
            }),
            changed: Condvar::new(),
        });
        let _ = std::fs::remove_file(socket);
        let svc = Service {
            shared: shared.clone(),
        };
        let env = Arc::new(
            EnvBuilder::new()
                .cq_count(2)
                .name_prefix("mock-csi")
                .build(),
        );
        let mut server = ServerBuilder::new(env)
            .register_service(csi_grpc::create_identity(svc.clone()))
            .register_service(csi_grpc::create_controller(svc.clone()))
            .register_service(csi_grpc::create_node(svc))
            .build()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        server
            .add_listening_port(
                format!("unix:{}", socket.display()),
                ServerCredentials::insecure(),
            )
            .map_err(|e| std::io::Error::other(format!("bind unix:{}: {e}", socket.display())))?;
        server.start();
        Ok(MockDriver {
            shared,
            server: Some(server),
            socket: socket.to_path_buf(),
            dir: None,
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Change the state under the lock (and wake waiters).
    pub fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let r = f(&mut lock(&self.shared.state));
        self.shared.changed.notify_all();
        r
    }

    pub fn set_volume(&self, id: &str, abnormal: bool, message: &str) {
        self.with(|s| {
            s.volumes.insert(
                id.to_string(),
                Volume {
                    abnormal,
                    message: message.to_string(),
                    omit_volume: false,
                    omit_condition: false,
                },
            )
        });
    }

    pub fn remove_volume(&self, id: &str) {
        self.with(|s| s.volumes.remove(id));
    }

    pub fn fail_next(&self, method: &'static str, code: RpcStatusCode, times: usize) {
        self.with(|s| {
            let q = s.failures.entry(method).or_default();
            for _ in 0..times {
                q.push_back(code);
            }
        });
    }

    /// Fail the next `times` calls of `method` whose argument (volume id, page token) is `arg`.
    pub fn fail_next_for(
        &self,
        method: &'static str,
        arg: &str,
        code: RpcStatusCode,
        times: usize,
    ) {
        self.with(|s| {
            let q = s.arg_failures.entry((method, arg.to_string())).or_default();
            for _ in 0..times {
                q.push_back(code);
            }
        });
    }

    pub fn calls(&self, method: &str) -> Vec<Call> {
        lock(&self.shared.state)
            .calls
            .iter()
            .filter(|c| c.method == method)
            .cloned()
            .collect()
    }

    pub fn call_count(&self, method: &str) -> usize {
        lock(&self.shared.state)
            .calls
            .iter()
            .filter(|c| c.method == method)
            .count()
    }

    pub fn max_in_flight(&self) -> usize {
        lock(&self.shared.state).max_in_flight
    }

    pub fn max_in_flight_per_volume(&self) -> usize {
        lock(&self.shared.state).max_in_flight_per_volume
    }

    /// Block until `pred` holds on the state or `timeout` passes; woken by every call and change.
    pub fn wait_until(&self, timeout: Duration, pred: impl Fn(&State) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut guard = lock(&self.shared.state);
        loop {
            if pred(&guard) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            guard = match self.shared.changed.wait_timeout(guard, deadline - now) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }

    /// Kill the server and remove the socket, as a crashing driver would.
    pub fn stop(&mut self) {
        if let Some(mut server) = self.server.take() {
            server.cancel_all_calls();
            drop(server.shutdown());
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl Drop for MockDriver {
    fn drop(&mut self) {
        self.stop();
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Service {
    /// Record the call, apply scripted failures and latency, and answer on a separate thread
    /// so a slow driver does not block grpcio's completion queue (and concurrency is real).
    fn serve<T: Send + 'static>(
        &self,
        method: &'static str,
        arg: String,
        max_entries: i32,
        sink: UnarySink<T>,
        answer: impl FnOnce(&mut State) -> Result<T, RpcStatus> + Send + 'static,
    ) {
        let (idx, latency, failure) = {
            let mut s = lock(&self.shared.state);
            s.calls.push(Call {
                method,
                arg: arg.clone(),
                max_entries,
                started: Instant::now(),
                finished: None,
            });
            let idx = s.calls.len() - 1;
            s.in_flight += 1;
            s.max_in_flight = s.max_in_flight.max(s.in_flight);
            if method == GET_VOLUME || method == NODE_STATS {
                let n = {
                    let e = s.in_flight_per_volume.entry(arg.clone()).or_insert(0);
                    *e += 1;
                    *e
                };
                s.max_in_flight_per_volume = s.max_in_flight_per_volume.max(n);
            }
            let failure = s
                .arg_failures
                .get_mut(&(method, arg.clone()))
                .and_then(|q| q.pop_front())
                .or_else(|| s.failures.get_mut(method).and_then(|q| q.pop_front()));
            (idx, s.latency, failure)
        };
        self.shared.changed.notify_all();
        let shared = self.shared.clone();
        let work = move || {
            if !latency.is_zero() {
                std::thread::sleep(latency);
            }
            let result = {
                let mut s = lock(&shared.state);
                let r = match failure {
                    Some(code) => Err(RpcStatus::with_message(
                        code,
                        format!("injected failure of {method}"),
                    )),
                    None => answer(&mut s),
                };
                s.in_flight -= 1;
                if let Some(n) = s.in_flight_per_volume.get_mut(&arg) {
                    *n -= 1;
                }
                s.calls[idx].finished = Some(Instant::now());
                r
            };
            shared.changed.notify_all();
            // The reply is queued on the call right here. The returned future holds the last
            // reference to the call, and dropping it unrefs the call before the reply is on the
            // wire, which gRPC core turns into CANCELLED. Nothing here can poll it (no executor
            // on this thread), so it is leaked: a few bytes per call in a test double.
            std::mem::forget(match result {
                Ok(v) => sink.success(v),
                Err(status) => sink.fail(status),
            });
        };
        if latency.is_zero() {
            work();
        } else {
            let _ = std::thread::Builder::new()
                .name("mock-csi-call".into())
                .spawn(work);
        }
    }
}

fn condition(v: &Volume) -> csi::VolumeCondition {
    let mut c = csi::VolumeCondition::new();
    c.abnormal = v.abnormal;
    c.message = v.message.clone();
    c
}

impl csi_grpc::Identity for Service {
    fn get_plugin_info(
        &mut self,
        _ctx: RpcContext,
        _req: csi::GetPluginInfoRequest,
        sink: UnarySink<csi::GetPluginInfoResponse>,
    ) {
        self.serve(PLUGIN_INFO, String::new(), 0, sink, |s| {
            let mut r = csi::GetPluginInfoResponse::new();
            r.name = s.name.clone();
            r.vendor_version = "mock".into();
            Ok(r)
        });
    }

    fn get_plugin_capabilities(
        &mut self,
        _ctx: RpcContext,
        _req: csi::GetPluginCapabilitiesRequest,
        sink: UnarySink<csi::GetPluginCapabilitiesResponse>,
    ) {
        self.serve(PLUGIN_CAPABILITIES, String::new(), 0, sink, |s| {
            let mut r = csi::GetPluginCapabilitiesResponse::new();
            if s.controller_service {
                let mut cap = csi::PluginCapability::new();
                let mut svc = csi::plugin_capability::Service::new();
                svc.type_ = csi::plugin_capability::service::Type::CONTROLLER_SERVICE.into();
                cap.set_service(svc);
                r.capabilities.push(cap);
            }
            Ok(r)
        });
    }

    fn probe(
        &mut self,
        _ctx: RpcContext,
        _req: csi::ProbeRequest,
        sink: UnarySink<csi::ProbeResponse>,
    ) {
        self.serve(PROBE, String::new(), 0, sink, |s| {
            let mut r = csi::ProbeResponse::new();
            match s.probe_script.pop_front() {
                Some(Some(ready)) => {
                    let mut b = protobuf::well_known_types::wrappers::BoolValue::new();
                    b.value = ready;
                    r.ready = protobuf::MessageField::some(b);
                }
                Some(None) => {}
                None => {
                    let mut b = protobuf::well_known_types::wrappers::BoolValue::new();
                    b.value = true;
                    r.ready = protobuf::MessageField::some(b);
                }
            }
            Ok(r)
        });
    }
}

impl csi_grpc::Controller for Service {
    fn list_volumes(
        &mut self,
        _ctx: RpcContext,
        req: csi::ListVolumesRequest,
        sink: UnarySink<csi::ListVolumesResponse>,
    ) {
        let token = req.starting_token.clone();
        let max = req.max_entries;
        self.serve(LIST_VOLUMES, token.clone(), max, sink, move |s| {
            if !s.list_volumes {
                return Err(RpcStatus::with_message(
                    RpcStatusCode::UNIMPLEMENTED,
                    "ListVolumes".into(),
                ));
            }
            let start: usize = if token.is_empty() {
                0
            } else {
                match token.parse() {
                    Ok(n) => n,
                    Err(_) => {
                        return Err(RpcStatus::with_message(
                            RpcStatusCode::ABORTED,
                            format!("bad starting_token {token}"),
                        ))
                    }
                }
            };
            let size = if max > 0 {
                max as usize
            } else if s.page_size > 0 {
                s.page_size
            } else {
                usize::MAX
            };
            let mut r = csi::ListVolumesResponse::new();
            let total = s.volumes.len();
            for (id, v) in s.volumes.iter().skip(start).take(size) {
                let mut e = csi::list_volumes_response::Entry::new();
                if !v.omit_volume {
                    let mut vol = csi::Volume::new();
                    vol.volume_id = id.clone();
                    e.volume = protobuf::MessageField::some(vol);
                }
                if !v.omit_condition {
                    let mut st = csi::list_volumes_response::VolumeStatus::new();
                    st.volume_condition = protobuf::MessageField::some(condition(v));
                    e.status = protobuf::MessageField::some(st);
                }
                r.entries.push(e);
            }
            let next = start.saturating_add(size);
            if next < total {
                r.next_token = next.to_string();
            }
            if let Some(t) = &s.stuck_token {
                r.next_token = t.clone();
            }
            Ok(r)
        });
    }

    fn controller_get_capabilities(
        &mut self,
        _ctx: RpcContext,
        _req: csi::ControllerGetCapabilitiesRequest,
        sink: UnarySink<csi::ControllerGetCapabilitiesResponse>,
    ) {
        self.serve(CONTROLLER_CAPABILITIES, String::new(), 0, sink, |s| {
            use csi::controller_service_capability::rpc::Type;
            let mut r = csi::ControllerGetCapabilitiesResponse::new();
            let mut add = |t: Type| {
                let mut cap = csi::ControllerServiceCapability::new();
                let mut rpc = csi::controller_service_capability::RPC::new();
                rpc.type_ = t.into();
                cap.set_rpc(rpc);
                r.capabilities.push(cap);
            };
            add(Type::CREATE_DELETE_VOLUME);
            if s.list_volumes {
                add(Type::LIST_VOLUMES);
            }
            if s.get_volume {
                add(Type::GET_VOLUME);
            }
            if s.volume_condition {
                add(Type::VOLUME_CONDITION);
            }
            Ok(r)
        });
    }

    fn controller_get_volume(
        &mut self,
        _ctx: RpcContext,
        req: csi::ControllerGetVolumeRequest,
        sink: UnarySink<csi::ControllerGetVolumeResponse>,
    ) {
        let id = req.volume_id.clone();
        self.serve(GET_VOLUME, id.clone(), 0, sink, move |s| {
            if !s.get_volume {
                return Err(RpcStatus::with_message(
                    RpcStatusCode::UNIMPLEMENTED,
                    "ControllerGetVolume".into(),
                ));
            }
            let v = match s.volumes.get(&id) {
                Some(v) if !s.not_found.contains(&id) => v.clone(),
                _ => {
                    return Err(RpcStatus::with_message(
                        RpcStatusCode::NOT_FOUND,
                        format!("volume {id} not found"),
                    ))
                }
            };
            let mut r = csi::ControllerGetVolumeResponse::new();
            let mut vol = csi::Volume::new();
            vol.volume_id = id.clone();
            r.volume = protobuf::MessageField::some(vol);
            if !v.omit_condition {
                let mut st = csi::controller_get_volume_response::VolumeStatus::new();
                st.volume_condition = protobuf::MessageField::some(condition(&v));
                r.status = protobuf::MessageField::some(st);
            }
            Ok(r)
        });
    }
}

impl csi_grpc::Node for Service {
    fn node_get_volume_stats(
        &mut self,
        _ctx: RpcContext,
        req: csi::NodeGetVolumeStatsRequest,
        sink: UnarySink<csi::NodeGetVolumeStatsResponse>,
    ) {
        let id = req.volume_id.clone();
        self.serve(NODE_STATS, id.clone(), 0, sink, move |s| {
            let Some(v) = s.volumes.get(&id).cloned() else {
                return Err(RpcStatus::with_message(
                    RpcStatusCode::NOT_FOUND,
                    format!("volume {id} not found"),
                ));
            };
            let mut r = csi::NodeGetVolumeStatsResponse::new();
            r.volume_condition = protobuf::MessageField::some(condition(&v));
            Ok(r)
        });
    }

    fn node_get_capabilities(
        &mut self,
        _ctx: RpcContext,
        _req: csi::NodeGetCapabilitiesRequest,
        sink: UnarySink<csi::NodeGetCapabilitiesResponse>,
    ) {
        self.serve("NodeGetCapabilities", String::new(), 0, sink, |_s| {
            use csi::node_service_capability::rpc::Type;
            let mut r = csi::NodeGetCapabilitiesResponse::new();
            for t in [Type::GET_VOLUME_STATS, Type::VOLUME_CONDITION] {
                let mut cap = csi::NodeServiceCapability::new();
                let mut rpc = csi::node_service_capability::RPC::new();
                rpc.type_ = t.into();
                cap.set_rpc(rpc);
                r.capabilities.push(cap);
            }
            Ok(r)
        });
    }
}
