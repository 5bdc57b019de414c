//! The mock CSI driver of the test kit: a real grpcio server on a temporary unix socket that
//! answers Identity, Controller and Node calls from a scripted, inspectable state.
//!
//! Tests set plugin info, capabilities, volumes and their conditions, page size, latency and
//! failures; they read back every call (with its timing) and the peak number of calls in
//! flight. `stop` kills the server and removes the socket: the driver dying mid-run.
//!
//! The driver speaks either generation of CSI volume health, or both ([`Generation`]): v1.12's
//! `VOLUME_CONDITION` (one abnormal flag and message per volume, [`Volume`], through ListVolumes
//! and ControllerGetVolume) and v1.13's ControllerListVolumeHealth / ControllerGetVolumeHealth
//! (a list of typed conditions per volume, [`HealthEntry`], in `State::health`). The two are
//! scripted separately; a volume the driver knows is a key of `State::volumes` in both.

use grpcio::{
    EnvBuilder, RpcContext, RpcStatus, RpcStatusCode, Server, ServerBuilder, ServerCredentials,
    UnarySink,
};
use healthmon::csi::proto::csi;
use healthmon::csi::proto::csi_grpc;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
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
pub const LIST_VOLUME_HEALTH: &str = "ControllerListVolumeHealth";
pub const GET_VOLUME_HEALTH: &str = "ControllerGetVolumeHealth";

/// One recorded call.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: &'static str,
    /// Volume id (ControllerGetVolume, ControllerGetVolumeHealth, NodeGetVolumeStats) or
    /// starting token (ListVolumes, ControllerListVolumeHealth).
    pub arg: String,
    /// max_entries of ListVolumes and ControllerListVolumeHealth.
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

impl Volume {
    /// Known, not abnormal, sent whole.
    pub fn healthy() -> Volume {
        Volume {
            abnormal: false,
            message: String::new(),
            omit_volume: false,
            omit_condition: false,
        }
    }
}

/// One v1.13 health condition as the driver sends it (`VolumeHealth.VolumeHealthEntry`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthEntry {
    /// `VolumeHealthErrorType` as the number on the wire, so values the spec does not define
    /// (0, 9) can be sent: see [`HealthEntry::DEGRADED`] and its neighbours.
    pub status: i32,
    pub reason: String,
    pub message: String,
}

impl HealthEntry {
    pub const UNKNOWN: i32 = 0;
    pub const DEGRADED: i32 = 1;
    pub const INACCESSIBLE: i32 = 2;
    pub const DATA_LOSS: i32 = 3;

    pub fn new(status: i32, reason: &str, message: &str) -> HealthEntry {
        HealthEntry {
            status,
            reason: reason.to_string(),
            message: message.to_string(),
        }
    }

    pub fn degraded(reason: &str, message: &str) -> HealthEntry {
        HealthEntry::new(HealthEntry::DEGRADED, reason, message)
    }

    pub fn inaccessible(reason: &str, message: &str) -> HealthEntry {
        HealthEntry::new(HealthEntry::INACCESSIBLE, reason, message)
    }

    pub fn data_loss(reason: &str, message: &str) -> HealthEntry {
        HealthEntry::new(HealthEntry::DATA_LOSS, reason, message)
    }
}

/// A per-volume answer that breaks the CSI spec (issue #25: never to be read as healthy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Malformed {
    /// Leave out the required part: `volume_health` (v1.13), `volume` (v1.12).
    Omit,
    /// Answer about this other volume id.
    OtherVolume(String),
}

/// Which generation of volume health the driver advertises in ControllerGetCapabilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generation {
    /// CSI v1.12: LIST_VOLUMES, GET_VOLUME, VOLUME_CONDITION (what `MockDriver::start` gives).
    V112,
    /// CSI v1.13: LIST_VOLUMES, GET_VOLUME, GET_VOLUME_HEALTH, LIST_VOLUME_HEALTH; no
    /// VOLUME_CONDITION, so ListVolumes and ControllerGetVolume carry no condition.
    V113,
    /// Both sets of capabilities, each set of RPCs answering from its own state.
    Both,
}

pub struct State {
    pub name: String,
    pub controller_service: bool,
    pub list_volumes: bool,
    pub get_volume: bool,
    /// Advertise VOLUME_CONDITION. Off, ListVolumes and ControllerGetVolume answer without the
    /// `volume_condition` field, as a v1.13 driver does (the field is reserved there).
    pub volume_condition: bool,
    /// Advertise GET_VOLUME_HEALTH (16) and answer ControllerGetVolumeHealth; off, UNIMPLEMENTED.
    pub get_volume_health: bool,
    /// Advertise LIST_VOLUME_HEALTH (17) and answer ControllerListVolumeHealth; off,
    /// UNIMPLEMENTED.
    pub list_volume_health: bool,
    /// The volumes the driver knows, with their v1.12 condition. An id missing here is NOT_FOUND
    /// for every RPC that takes a volume id.
    pub volumes: BTreeMap<String, Volume>,
    /// The v1.13 conditions per volume id. No entry, or an empty list: healthy.
    pub health: BTreeMap<String, Vec<HealthEntry>>,
    /// ControllerListVolumeHealth lists every known volume, the healthy ones with an empty list;
    /// off (the default), only volumes with conditions (the spec's SHOULD).
    pub list_healthy: bool,
    /// Ids ControllerListVolumeHealth leaves out although they have conditions (a driver
    /// without a consistent view). ControllerGetVolumeHealth still answers for them.
    pub list_drop: BTreeSet<String>,
    /// Ids ListVolumes leaves out although the driver knows them (a partial view: another
    /// zone or array). ControllerGetVolume still answers for them.
    pub list_volumes_hidden: BTreeSet<String>,
    /// Ids ControllerListVolumeHealth sends a second time, after every other entry (so on a
    /// later page when the id's own place is on an earlier one): with these conditions, or
    /// `None` for the same ones again.
    pub list_repeat: BTreeMap<String, Option<Vec<HealthEntry>>>,
    /// Entries per ListVolumes and ControllerListVolumeHealth page when the request has no
    /// max_entries (0 = all in one page).
    pub page_size: usize,
    pub latency: Duration,
    /// Answers for the next Probe calls (then `ready: true`); `None` = leave `ready` unset.
    pub probe_script: VecDeque<Option<bool>>,
    /// Next failures per method: each call pops one.
    pub failures: HashMap<&'static str, VecDeque<RpcStatusCode>>,
    /// Next failures per method and argument (e.g. one ListVolumes page token); consulted
    /// before `failures`.
    pub arg_failures: HashMap<(&'static str, String), VecDeque<RpcStatusCode>>,
    /// Volume ids ControllerGetVolume and ControllerGetVolumeHealth answer NOT_FOUND for.
    pub not_found: HashSet<String>,
    /// Answer every ListVolumes and ControllerListVolumeHealth page with this next_token (a
    /// driver that never finishes).
    pub stuck_token: Option<String>,
    /// Volume ids whose ControllerGetVolume and ControllerGetVolumeHealth answers break the
    /// spec this way.
    pub malformed: HashMap<String, Malformed>,
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
    /// A CSI v1.12 driver named `name` with every capability the legacy monitor uses, on a
    /// socket in a new temp dir.
    pub fn start(name: &str) -> MockDriver {
        let dir = temp_dir("mock-csi");
        let mut d =
            MockDriver::start_at(&dir.join("csi.sock"), name).expect("start mock CSI driver");
        d.dir = Some(dir);
        d
    }

    /// `start`, then advertising `generation`.
    pub fn start_generation(name: &str, generation: Generation) -> MockDriver {
        let d = MockDriver::start(name);
        d.set_generation(generation);
        d
    }

    /// A CSI v1.13 driver: GET_VOLUME_HEALTH and LIST_VOLUME_HEALTH, no VOLUME_CONDITION.
    pub fn start_v113(name: &str) -> MockDriver {
        MockDriver::start_generation(name, Generation::V113)
    }

    pub fn start_at(socket: &Path, name: &str) -> std::io::Result<MockDriver> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                name: name.to_string(),
                controller_service: true,
                list_volumes: true,
                get_volume: true,
                volume_condition: true,
                get_volume_health: false,
                list_volume_health: false,
                volumes: BTreeMap::new(),
                health: BTreeMap::new(),
                list_healthy: false,
                list_drop: BTreeSet::new(),
                list_volumes_hidden: BTreeSet::new(),
                list_repeat: BTreeMap::new(),
                page_size: 0,
                latency: Duration::ZERO,
                probe_script: VecDeque::new(),
                failures: HashMap::new(),
                arg_failures: HashMap::new(),
                not_found: HashSet::new(),
                stuck_token: None,
                malformed: HashMap::new(),
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
                    ..Volume::healthy()
                },
            )
        });
    }

    /// Forget the volume: both its v1.12 condition and its v1.13 conditions.
    pub fn remove_volume(&self, id: &str) {
        self.with(|s| {
            s.volumes.remove(id);
            s.health.remove(id);
        });
    }

    /// The capabilities of `generation` (the other capability flags are left as they are).
    pub fn set_generation(&self, generation: Generation) {
        let (legacy, health) = match generation {
            Generation::V112 => (true, false),
            Generation::V113 => (false, true),
            Generation::Both => (true, true),
        };
        self.with(|s| {
            s.list_volumes = true;
            s.get_volume = true;
            s.volume_condition = legacy;
            s.get_volume_health = health;
            s.list_volume_health = health;
        });
    }

    /// The v1.13 conditions of `id`, sent as they are (an empty list: healthy). A volume the
    /// driver did not know yet becomes known, with a healthy v1.12 condition.
    pub fn set_health(&self, id: &str, entries: Vec<HealthEntry>) {
        self.with(|s| {
            s.volumes
                .entry(id.to_string())
                .or_insert_with(Volume::healthy);
            s.health.insert(id.to_string(), entries);
        });
    }

    /// One more v1.13 condition for `id` (known from now on, as with `set_health`).
    pub fn add_health(&self, id: &str, entry: HealthEntry) {
        self.with(|s| {
            s.volumes
                .entry(id.to_string())
                .or_insert_with(Volume::healthy);
            s.health.entry(id.to_string()).or_default().push(entry);
        });
    }

    /// `id` healthy in v1.13 terms (no conditions); the driver still knows it.
    pub fn clear_health(&self, id: &str) {
        self.with(|s| s.health.remove(id));
    }

    /// ControllerListVolumeHealth lists healthy volumes too (with an empty list), or not.
    pub fn set_list_healthy(&self, on: bool) {
        self.with(|s| s.list_healthy = on);
    }

    /// Leave `id` out of ControllerListVolumeHealth although it has conditions.
    pub fn drop_from_health_list(&self, id: &str) {
        self.with(|s| s.list_drop.insert(id.to_string()));
    }

    /// Send `id` a second time at the end of ControllerListVolumeHealth's listing, with
    /// `entries` (or its own conditions again when `None`).
    pub fn repeat_in_health_list(&self, id: &str, entries: Option<Vec<HealthEntry>>) {
        self.with(|s| s.list_repeat.insert(id.to_string(), entries));
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
            if method == GET_VOLUME || method == GET_VOLUME_HEALTH || method == NODE_STATS {
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

fn volume_health(id: &str, entries: &[HealthEntry]) -> csi::VolumeHealth {
    let mut h = csi::VolumeHealth::new();
    h.volume_id = id.to_string();
    h.health_statuses = entries
        .iter()
        .map(|e| {
            let mut w = csi::volume_health::VolumeHealthEntry::new();
            w.status = protobuf::EnumOrUnknown::from_i32(e.status);
            w.reason = e.reason.clone();
            w.message = e.message.clone();
            w
        })
        .collect();
    h
}

/// The first entry of the page a starting token names: "" is 0, else the decimal offset
/// ListVolumes and ControllerListVolumeHealth hand out as next_token.
fn page_start(method: &str, token: &str) -> Result<usize, RpcStatus> {
    if token.is_empty() {
        return Ok(0);
    }
    token.parse().map_err(|_| {
        RpcStatus::with_message(
            RpcStatusCode::ABORTED,
            format!("{method}: bad starting_token {token}"),
        )
    })
}

/// Entries per page: max_entries when given, else the scripted page size, else all.
fn page_len(max_entries: i32, page_size: usize) -> usize {
    if max_entries > 0 {
        max_entries as usize
    } else if page_size > 0 {
        page_size
    } else {
        usize::MAX
    }
}

/// Everything ControllerListVolumeHealth would send in one unpaged answer, in order: the
/// volumes with conditions (all known volumes with `list_healthy`) by id, less `list_drop`,
/// then the `list_repeat` entries.
fn health_listing(s: &State) -> Vec<(&str, &[HealthEntry])> {
    let mut out: Vec<(&str, &[HealthEntry])> = if s.list_healthy {
        s.volumes
            .keys()
            .map(|id| (id.as_str(), s.health.get(id).map_or(&[][..], Vec::as_slice)))
            .collect()
    } else {
        s.health
            .iter()
            .filter(|(id, e)| !e.is_empty() && s.volumes.contains_key(*id))
            .map(|(id, e)| (id.as_str(), e.as_slice()))
            .collect()
    };
    out.retain(|(id, _)| !s.list_drop.contains(*id));
    for (id, entries) in &s.list_repeat {
        let entries = match entries {
            Some(e) => e.as_slice(),
            None => s.health.get(id).map_or(&[][..], Vec::as_slice),
        };
        out.push((id.as_str(), entries));
    }
    out
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
            let start = page_start(LIST_VOLUMES, &token)?;
            let size = page_len(max, s.page_size);
            let mut r = csi::ListVolumesResponse::new();
            let listed = || {
                s.volumes
                    .iter()
                    .filter(|(id, _)| !s.list_volumes_hidden.contains(*id))
            };
            let total = listed().count();
            for (id, v) in listed().skip(start).take(size) {
                let mut e = csi::list_volumes_response::Entry::new();
                if !v.omit_volume {
                    let mut vol = csi::Volume::new();
                    vol.volume_id = id.clone();
                    e.volume = protobuf::MessageField::some(vol);
                }
                if !v.omit_condition && s.volume_condition {
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
            if s.get_volume_health {
                add(Type::GET_VOLUME_HEALTH);
            }
            if s.list_volume_health {
                add(Type::LIST_VOLUME_HEALTH);
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
            match s.malformed.get(&id) {
                Some(Malformed::Omit) => {}
                Some(Malformed::OtherVolume(other)) => {
                    vol.volume_id = other.clone();
                    r.volume = protobuf::MessageField::some(vol);
                }
                None => r.volume = protobuf::MessageField::some(vol),
            }
            if !v.omit_condition && s.volume_condition {
                let mut st = csi::controller_get_volume_response::VolumeStatus::new();
                st.volume_condition = protobuf::MessageField::some(condition(&v));
                r.status = protobuf::MessageField::some(st);
            }
            Ok(r)
        });
    }

    fn controller_list_volume_health(
        &mut self,
        _ctx: RpcContext,
        req: csi::ControllerListVolumeHealthRequest,
        sink: UnarySink<csi::ControllerListVolumeHealthResponse>,
    ) {
        let token = req.starting_token.clone();
        let max = req.max_entries;
        self.serve(LIST_VOLUME_HEALTH, token.clone(), max, sink, move |s| {
            if !s.list_volume_health {
                return Err(RpcStatus::with_message(
                    RpcStatusCode::UNIMPLEMENTED,
                    LIST_VOLUME_HEALTH.into(),
                ));
            }
            if max < 0 {
                return Err(RpcStatus::with_message(
                    RpcStatusCode::INVALID_ARGUMENT,
                    format!("{LIST_VOLUME_HEALTH}: negative max_entries {max}"),
                ));
            }
            let start = page_start(LIST_VOLUME_HEALTH, &token)?;
            let size = page_len(max, s.page_size);
            let listing = health_listing(s);
            let mut r = csi::ControllerListVolumeHealthResponse::new();
            r.entries = listing
                .iter()
                .skip(start)
                .take(size)
                .map(|(id, entries)| volume_health(id, entries))
                .collect();
            let next = start.saturating_add(size);
            if next < listing.len() {
                r.next_token = next.to_string();
            }
            if let Some(t) = &s.stuck_token {
                r.next_token = t.clone();
            }
            Ok(r)
        });
    }

    fn controller_get_volume_health(
        &mut self,
        _ctx: RpcContext,
        req: csi::ControllerGetVolumeHealthRequest,
        sink: UnarySink<csi::ControllerGetVolumeHealthResponse>,
    ) {
        let id = req.volume_id.clone();
        self.serve(GET_VOLUME_HEALTH, id.clone(), 0, sink, move |s| {
            if !s.get_volume_health {
                return Err(RpcStatus::with_message(
                    RpcStatusCode::UNIMPLEMENTED,
                    GET_VOLUME_HEALTH.into(),
                ));
            }
            if !s.volumes.contains_key(&id) || s.not_found.contains(&id) {
                return Err(RpcStatus::with_message(
                    RpcStatusCode::NOT_FOUND,
                    format!("volume {id} not found"),
                ));
            }
            let entries = s.health.get(&id).map_or(&[][..], Vec::as_slice);
            let mut r = csi::ControllerGetVolumeHealthResponse::new();
            match s.malformed.get(&id) {
                Some(Malformed::Omit) => {}
                Some(Malformed::OtherVolume(other)) => {
                    r.volume_health = protobuf::MessageField::some(volume_health(other, &[]));
                }
                None => r.volume_health = protobuf::MessageField::some(volume_health(&id, entries)),
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

#[cfg(test)]
mod tests {
    use super::*;
    use grpcio::{CallOption, ChannelBuilder};

    /// A real grpcio client on the mock's unix socket.
    fn client(d: &MockDriver) -> csi_grpc::ControllerClient {
        let env = Arc::new(
            EnvBuilder::new()
                .cq_count(1)
                .name_prefix("mock-csi-test")
                .build(),
        );
        let channel = ChannelBuilder::new(env).connect(&format!("unix:{}", d.socket().display()));
        csi_grpc::ControllerClient::new(channel)
    }

    fn opt() -> CallOption {
        CallOption::default().timeout(Duration::from_secs(10))
    }

    fn code<T>(r: grpcio::Result<T>) -> Result<T, RpcStatusCode> {
        r.map_err(|e| match e {
            grpcio::Error::RpcFailure(s) => s.code(),
            other => panic!("not an RPC failure: {other}"),
        })
    }

    type Conditions = Vec<(i32, String, String)>;

    fn conditions(h: &csi::VolumeHealth) -> Conditions {
        h.health_statuses
            .iter()
            .map(|e| (e.status.value(), e.reason.clone(), e.message.clone()))
            .collect()
    }

    fn cond(status: i32, reason: &str, message: &str) -> (i32, String, String) {
        (status, reason.to_string(), message.to_string())
    }

    /// One ControllerListVolumeHealth page: (volume id, conditions) per entry, and next_token.
    fn page(
        c: &csi_grpc::ControllerClient,
        token: &str,
        max_entries: i32,
    ) -> Result<(Vec<(String, Conditions)>, String), RpcStatusCode> {
        let mut req = csi::ControllerListVolumeHealthRequest::new();
        req.starting_token = token.to_string();
        req.max_entries = max_entries;
        let r = code(c.controller_list_volume_health_opt(&req, opt()))?;
        let entries = r
            .entries
            .iter()
            .map(|h| (h.volume_id.clone(), conditions(h)))
            .collect();
        Ok((entries, r.next_token))
    }

    /// The volume ids of every page, following next_token (at most 20 pages).
    fn page_ids(c: &csi_grpc::ControllerClient, max_entries: i32) -> Vec<Vec<String>> {
        let mut pages = Vec::new();
        let mut token = String::new();
        for _ in 0..20 {
            let (entries, next) = page(c, &token, max_entries).expect("a page");
            pages.push(entries.into_iter().map(|(id, _)| id).collect());
            if next.is_empty() {
                return pages;
            }
            token = next;
        }
        panic!("more than 20 pages: {pages:?}");
    }

    fn get(c: &csi_grpc::ControllerClient, id: &str) -> Result<Conditions, RpcStatusCode> {
        let mut req = csi::ControllerGetVolumeHealthRequest::new();
        req.volume_id = id.to_string();
        let r = code(c.controller_get_volume_health_opt(&req, opt()))?;
        assert_eq!(r.volume_health.volume_id, id);
        Ok(conditions(&r.volume_health))
    }

    fn ids(pages: &[&[&str]]) -> Vec<Vec<String>> {
        pages
            .iter()
            .map(|p| p.iter().map(|s| s.to_string()).collect())
            .collect()
    }

    /// Five volumes: a, c and e with one condition each, b and d healthy.
    fn five(d: &MockDriver) {
        for id in ["a", "b", "c", "d", "e"] {
            d.set_volume(id, false, "");
        }
        d.set_health("a", vec![HealthEntry::degraded("SlowDisk", "a is slow")]);
        d.set_health(
            "c",
            vec![HealthEntry::inaccessible("DiskGone", "c is gone")],
        );
        d.set_health(
            "e",
            vec![HealthEntry::data_loss("Corrupt", "e lost blocks")],
        );
    }

    #[test]
    fn capabilities_per_generation() {
        let d = MockDriver::start("caps.csi.example.com");
        let c = client(&d);
        for (generation, want) in [
            (Generation::V112, vec![1, 3, 11, 12]),
            (Generation::V113, vec![1, 3, 12, 16, 17]),
            (Generation::Both, vec![1, 3, 11, 12, 16, 17]),
        ] {
            d.set_generation(generation);
            let r = c
                .controller_get_capabilities_opt(
                    &csi::ControllerGetCapabilitiesRequest::new(),
                    opt(),
                )
                .expect("ControllerGetCapabilities");
            let mut got: Vec<i32> = r
                .capabilities
                .iter()
                .map(|cap| cap.rpc().type_.value())
                .collect();
            got.sort();
            assert_eq!(got, want, "{generation:?}");
        }
        assert_eq!(d.call_count(CONTROLLER_CAPABILITIES), 3);
    }

    #[test]
    fn each_generation_answers_only_its_own_rpcs() {
        let d = MockDriver::start("gen.csi.example.com");
        let c = client(&d);
        d.set_volume("v", true, "legacy says broken");
        d.set_health("v", vec![HealthEntry::degraded("Slow", "v13 says slow")]);

        // v1.12 (the default): no health RPCs, ListVolumes carries the condition
        assert_eq!(page(&c, "", 0), Err(RpcStatusCode::UNIMPLEMENTED));
        assert_eq!(get(&c, "v"), Err(RpcStatusCode::UNIMPLEMENTED));
        let lv = c
            .list_volumes_opt(&csi::ListVolumesRequest::new(), opt())
            .expect("ListVolumes");
        assert_eq!(
            lv.entries[0].status.volume_condition.message,
            "legacy says broken"
        );

        // v1.13: health RPCs, ListVolumes and ControllerGetVolume without a condition
        d.set_generation(Generation::V113);
        assert_eq!(
            get(&c, "v"),
            Ok(vec![cond(HealthEntry::DEGRADED, "Slow", "v13 says slow")])
        );
        let lv = c
            .list_volumes_opt(&csi::ListVolumesRequest::new(), opt())
            .expect("ListVolumes");
        assert_eq!(lv.entries.len(), 1);
        assert!(lv.entries[0].status.is_none());
        let mut req = csi::ControllerGetVolumeRequest::new();
        req.volume_id = "v".into();
        let gv = c
            .controller_get_volume_opt(&req, opt())
            .expect("ControllerGetVolume");
        assert!(gv.status.is_none());

        // both: each answers from its own state
        d.set_generation(Generation::Both);
        let lv = c
            .list_volumes_opt(&csi::ListVolumesRequest::new(), opt())
            .expect("ListVolumes");
        assert!(lv.entries[0].status.volume_condition.abnormal);
        let (entries, _) = page(&c, "", 0).expect("a page");
        assert_eq!(
            entries,
            vec![(
                "v".to_string(),
                vec![cond(HealthEntry::DEGRADED, "Slow", "v13 says slow")]
            )]
        );
    }

    #[test]
    fn health_list_pages_by_max_entries_or_page_size() {
        let d = MockDriver::start_v113("page.csi.example.com");
        let c = client(&d);
        five(&d);
        // only the volumes with conditions, in id order
        let (entries, next) = page(&c, "", 0).expect("one page");
        assert_eq!(next, "");
        assert_eq!(
            entries,
            vec![
                ("a".into(), vec![cond(1, "SlowDisk", "a is slow")]),
                ("c".into(), vec![cond(2, "DiskGone", "c is gone")]),
                ("e".into(), vec![cond(3, "Corrupt", "e lost blocks")]),
            ]
        );
        assert_eq!(page_ids(&c, 2), ids(&[&["a", "c"], &["e"]]));
        assert_eq!(page_ids(&c, 1), ids(&[&["a"], &["c"], &["e"]]));
        // max_entries 0 falls back to the page size; max_entries wins over it
        d.with(|s| s.page_size = 2);
        assert_eq!(page_ids(&c, 0), ids(&[&["a", "c"], &["e"]]));
        assert_eq!(page_ids(&c, 3), ids(&[&["a", "c", "e"]]));
        // the healthy ones too, with empty lists, when asked
        d.set_list_healthy(true);
        let (entries, next) = page(&c, "2", 2).expect("second page");
        assert_eq!(next, "4");
        assert_eq!(
            entries,
            vec![
                ("c".into(), vec![cond(2, "DiskGone", "c is gone")]),
                ("d".into(), vec![]),
            ]
        );
        // a cleared volume, or one with an empty list, leaves the default listing
        d.set_list_healthy(false);
        d.clear_health("c");
        d.set_health("e", vec![]);
        assert_eq!(page_ids(&c, 0), ids(&[&["a"]]));
        // the calls are recorded with their token and max_entries
        let calls = d.calls(LIST_VOLUME_HEALTH);
        let last: Vec<(String, i32)> = calls
            .iter()
            .rev()
            .take(2)
            .map(|c| (c.arg.clone(), c.max_entries))
            .collect();
        assert_eq!(last, vec![(String::new(), 0), ("2".to_string(), 2)]);
        assert!(calls.iter().all(|c| c.finished.is_some()));
    }

    #[test]
    fn health_list_bad_tokens_negative_max_entries_and_a_stuck_token() {
        let d = MockDriver::start_v113("token.csi.example.com");
        let c = client(&d);
        five(&d);
        assert_eq!(page(&c, "nope", 0), Err(RpcStatusCode::ABORTED));
        assert_eq!(page(&c, "", -1), Err(RpcStatusCode::INVALID_ARGUMENT));
        // past the end: an empty last page
        assert_eq!(page(&c, "7", 0), Ok((vec![], String::new())));
        d.with(|s| s.stuck_token = Some("1".into()));
        let (entries, next) = page(&c, "1", 1).expect("a page");
        assert_eq!((entries.len(), next.as_str()), (1, "1"));
    }

    #[test]
    fn health_list_repeats_and_drops_entries_across_pages() {
        let d = MockDriver::start_v113("fault.csi.example.com");
        let c = client(&d);
        five(&d);
        d.set_health("b", vec![HealthEntry::degraded("Slow", "b")]);
        // a, b, c, e; b dropped, a again at the end with other conditions, c again as it is
        d.drop_from_health_list("b");
        d.repeat_in_health_list("a", Some(vec![]));
        d.repeat_in_health_list("c", None);
        assert_eq!(page_ids(&c, 2), ids(&[&["a", "c"], &["e", "a"], &["c"]]));
        let (second, _) = page(&c, "2", 2).expect("second page");
        assert_eq!(second[1], ("a".to_string(), vec![]));
        let (third, _) = page(&c, "4", 2).expect("third page");
        assert_eq!(
            third[0],
            ("c".to_string(), vec![cond(2, "DiskGone", "c is gone")])
        );
        // the dropped volume is still known to ControllerGetVolumeHealth
        assert_eq!(get(&c, "b"), Ok(vec![cond(1, "Slow", "b")]));
    }

    #[test]
    fn a_failed_page_fails_once_by_its_token() {
        let d = MockDriver::start_v113("fail.csi.example.com");
        let c = client(&d);
        five(&d);
        d.fail_next_for(LIST_VOLUME_HEALTH, "2", RpcStatusCode::UNAVAILABLE, 1);
        assert_eq!(page(&c, "", 2).map(|(_, next)| next), Ok("2".to_string()));
        assert_eq!(page(&c, "2", 2), Err(RpcStatusCode::UNAVAILABLE));
        assert_eq!(page_ids(&c, 2), ids(&[&["a", "c"], &["e"]]));
        d.fail_next(GET_VOLUME_HEALTH, RpcStatusCode::DEADLINE_EXCEEDED, 1);
        assert_eq!(get(&c, "a"), Err(RpcStatusCode::DEADLINE_EXCEEDED));
        assert_eq!(get(&c, "a").map(|c| c.len()), Ok(1));
    }

    #[test]
    fn get_volume_health_not_found_healthy_and_abnormal() {
        let d = MockDriver::start_v113("get.csi.example.com");
        let c = client(&d);
        five(&d);
        assert_eq!(get(&c, "zz"), Err(RpcStatusCode::NOT_FOUND));
        assert_eq!(get(&c, "b"), Ok(vec![]));
        assert_eq!(get(&c, "c"), Ok(vec![cond(2, "DiskGone", "c is gone")]));
        d.with(|s| s.not_found.insert("c".into()));
        assert_eq!(get(&c, "c"), Err(RpcStatusCode::NOT_FOUND));
        d.remove_volume("e");
        assert_eq!(get(&c, "e"), Err(RpcStatusCode::NOT_FOUND));
        // the listing does not consult not_found; a removed volume is gone from it
        assert_eq!(page_ids(&c, 0), ids(&[&["a", "c"]]));
        let args: Vec<String> = d
            .calls(GET_VOLUME_HEALTH)
            .into_iter()
            .map(|c| c.arg)
            .collect();
        assert_eq!(args, ["zz", "b", "c", "c", "e"]);
        // add_health appends, and makes an unknown volume known
        d.add_health("new", HealthEntry::degraded("One", "1"));
        d.add_health("new", HealthEntry::data_loss("Two", "2"));
        assert_eq!(
            get(&c, "new"),
            Ok(vec![cond(1, "One", "1"), cond(3, "Two", "2")])
        );
    }

    #[test]
    fn malformed_conditions_go_out_as_they_are() {
        let d = MockDriver::start_v113("odd.csi.example.com");
        let c = client(&d);
        let long = "m".repeat(5000);
        let odd = vec![
            HealthEntry::new(HealthEntry::UNKNOWN, "Zero", ""),
            HealthEntry::new(9, "Nine", "from a newer spec"),
            HealthEntry::degraded("", "no reason"),
            HealthEntry::degraded("Twice", "first"),
            HealthEntry::degraded("Twice", "second"),
            HealthEntry::data_loss("Long", &long),
        ];
        d.set_health("odd", odd.clone());
        let want: Conditions = odd
            .iter()
            .map(|e| (e.status, e.reason.clone(), e.message.clone()))
            .collect();
        assert_eq!(get(&c, "odd"), Ok(want.clone()));
        let (entries, _) = page(&c, "", 0).expect("a page");
        assert_eq!(entries, vec![("odd".to_string(), want)]);
    }

    #[test]
    fn get_volume_health_counts_calls_in_flight_per_volume() {
        let d = MockDriver::start_v113("slow.csi.example.com");
        d.set_health("v", vec![]);
        d.with(|s| s.latency = Duration::from_secs(2));
        let c = client(&d);
        let c2 = c.clone();
        let other = std::thread::spawn(move || get(&c2, "v"));
        assert!(d.wait_until(Duration::from_secs(10), |s| s.in_flight == 1));
        assert_eq!(get(&c, "v"), Ok(vec![]));
        assert_eq!(other.join().expect("no panic"), Ok(vec![]));
        assert_eq!(d.max_in_flight_per_volume(), 2);
        assert_eq!(d.max_in_flight(), 2);
    }
}
