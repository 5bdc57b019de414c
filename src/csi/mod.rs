//! The CSI side: connecting to the driver's unix socket, probing it, reading its name and
//! capabilities, choosing the monitoring mode, and the health source the monitor asks about
//! volume conditions. Every RPC carries a deadline and is reported to the metrics observer.

pub mod proto;

use grpcio::{
    CallOption, ChannelBuilder, ConnectivityState, EnvBuilder, ResourceQuota, RpcStatusCode,
};
use proto::csi;
use proto::csi_grpc::{ControllerClient, IdentityClient};
use std::ffi::CString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::HealthApi;
pub use crate::health::Condition;
use crate::shutdown::Shutdown;

/// How long the initial connection may take before we give up (upstream csi-lib-utils).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How often "Still connecting" is logged while waiting.
pub const CONNECT_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The largest reply accepted from the driver; a larger one fails its call with
/// RESOURCE_EXHAUSTED. gRPC-Go's default is 4 MiB; ours must hold a whole ListVolumes page, and
/// the CSI spec's size limits (strings 128 bytes, node IDs 256, each map 4 KiB) put a full entry
/// (volume context and topology maps, a condition message, some published node IDs) at about
/// 16 KiB; 1,000 of them are 16 MiB. 32 MiB leaves twice that, where the former `i32::MAX` let
/// a driver hand us 2 GiB.
pub const MAX_REPLY: usize = 32 << 20;
/// The memory gRPC core may hold for the driver connection (its resource quota). gRPC checks
/// [`MAX_REPLY`] only once a whole message is in, and opens its flow-control window to the
/// length the message announces, so the cap alone let a 100 MB reply be read in full first.
/// Past this quota gRPC cancels the stream ("Buffers full") instead of reading on. The 8 MiB
/// over one full reply is for its read buffers and call arenas, and for the small replies of
/// other calls in flight (per-volume checks, a few KiB each).
pub const REPLY_MEMORY: usize = MAX_REPLY + (8 << 20);
pub const METHOD_PROBE: &str = "/csi.v1.Identity/Probe";
pub const METHOD_PLUGIN_INFO: &str = "/csi.v1.Identity/GetPluginInfo";
pub const METHOD_PLUGIN_CAPABILITIES: &str = "/csi.v1.Identity/GetPluginCapabilities";
pub const METHOD_CONTROLLER_CAPABILITIES: &str = "/csi.v1.Controller/ControllerGetCapabilities";
pub const METHOD_LIST_VOLUMES: &str = "/csi.v1.Controller/ListVolumes";
pub const METHOD_GET_VOLUME: &str = "/csi.v1.Controller/ControllerGetVolume";
pub const METHOD_LIST_VOLUME_HEALTH: &str = "/csi.v1.Controller/ControllerListVolumeHealth";
pub const METHOD_GET_VOLUME_HEALTH: &str = "/csi.v1.Controller/ControllerGetVolumeHealth";

/// Called after every RPC with (method, gRPC code name as Go prints it, seconds).
pub type CallObserver = Arc<dyn Fn(&str, &str, f64) + Send + Sync>;

/// Everything that can go wrong talking to the CSI driver.
#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// The socket never became connectable within the connect timeout.
    Connect { address: String, waited: Duration },
    /// An RPC failed with a gRPC status (code is the Go name: `DeadlineExceeded`, `NotFound`...).
    Rpc {
        method: &'static str,
        code: String,
        message: String,
    },
    /// A non-gRPC failure (codec, call setup).
    Call {
        method: &'static str,
        message: String,
    },
    /// The driver answered, but not what the CSI spec requires: a required field is missing,
    /// or the answer is about another volume than the one asked. Never read as healthy.
    Malformed {
        method: &'static str,
        volume: String,
        problem: String,
    },
    /// GetPluginInfo answered an empty name.
    EmptyDriverName,
    /// Startup was interrupted by shutdown.
    Interrupted,
}

impl Error {
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Rpc { code, .. } => Some(code),
            _ => None,
        }
    }
    pub fn is_not_found(&self) -> bool {
        self.code() == Some("NotFound")
    }
    /// A ListVolumes entry about `volume` without the `status.volume_condition` a driver with
    /// VOLUME_CONDITION must send ([`ListPage::unjudged`]).
    pub fn unjudged(volume: &str) -> Error {
        Error::Malformed {
            method: METHOD_LIST_VOLUMES,
            volume: volume.to_string(),
            problem:
                "the entry's status.volume_condition is missing (required with VOLUME_CONDITION)"
                    .into(),
        }
    }
    pub fn is_deadline_exceeded(&self) -> bool {
        self.code() == Some("DeadlineExceeded")
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Connect { address, waited } => write!(
                f,
                "could not connect to the CSI driver at unix://{address} within {}s: is the driver running and is --csi-address right?",
                waited.as_secs()
            ),
            Error::Rpc { method, code, message } => write!(f, "{method}: rpc error: code = {code} desc = {message}"),
            Error::Call { method, message } => write!(f, "{method}: {message}"),
            Error::Malformed { method, volume, problem } => write!(
                f,
                "{method}: the driver's answer about volume '{volume}' breaks the CSI spec: {problem}; it is not taken as the volume's condition"
            ),
            Error::EmptyDriverName => write!(f, "driver name is empty"),
            Error::Interrupted => write!(f, "interrupted by shutdown"),
        }
    }
}

impl std::error::Error for Error {}

/// Go's `codes.Code.String()` for a grpcio status code (the metrics label and log text).
pub fn code_name(code: RpcStatusCode) -> &'static str {
    match code {
        RpcStatusCode::OK => "OK",
        RpcStatusCode::CANCELLED => "Canceled",
        RpcStatusCode::UNKNOWN => "Unknown",
        RpcStatusCode::INVALID_ARGUMENT => "InvalidArgument",
        RpcStatusCode::DEADLINE_EXCEEDED => "DeadlineExceeded",
        RpcStatusCode::NOT_FOUND => "NotFound",
        RpcStatusCode::ALREADY_EXISTS => "AlreadyExists",
        RpcStatusCode::PERMISSION_DENIED => "PermissionDenied",
        RpcStatusCode::RESOURCE_EXHAUSTED => "ResourceExhausted",
        RpcStatusCode::FAILED_PRECONDITION => "FailedPrecondition",
        RpcStatusCode::ABORTED => "Aborted",
        RpcStatusCode::OUT_OF_RANGE => "OutOfRange",
        RpcStatusCode::UNIMPLEMENTED => "Unimplemented",
        RpcStatusCode::INTERNAL => "Internal",
        RpcStatusCode::UNAVAILABLE => "Unavailable",
        RpcStatusCode::DATA_LOSS => "DataLoss",
        RpcStatusCode::UNAUTHENTICATED => "Unauthenticated",
        _ => "Unknown",
    }
}

/// gRPC core's words for a call cancelled at [`REPLY_MEMORY`] name no cause; the operator
/// reading the log needs the limit and what crossed it.
fn explain_status(code: &str, message: &str) -> String {
    if code == "ResourceExhausted" && message == "Buffers full" {
        format!(
            "{message} (the driver's reply passed the {} MiB gRPC may hold for it; replies are capped at {} MiB)",
            REPLY_MEMORY >> 20,
            MAX_REPLY >> 20
        )
    } else {
        message.to_string()
    }
}

/// One page of a listing (ListVolumes or ControllerListVolumeHealth).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ListPage {
    /// (volume id, its adverse conditions), in the driver's order. An empty list is healthy.
    pub entries: Vec<(String, Vec<Condition>)>,
    /// Entries without a volume (ListVolumes' `volume`, or an empty `volume_id`): skipped
    /// (upstream dereferences nil and crashes).
    pub skipped: usize,
    /// Volume ids listed without the condition the spec requires (a ListVolumes entry without
    /// `status.volume_condition` from a driver with VOLUME_CONDITION): the volume exists, but
    /// nothing is known of its health. Upstream read them as healthy.
    pub unjudged: Vec<String>,
    pub next_token: String,
}

/// The seam between "ask the driver" and "decide and report" (upstream's csi-handler
/// interface): a listing page by page, or one volume. Which generation's RPCs answer is fixed
/// when the source is made ([`Rpcs`]); everything above sees conditions.
pub trait HealthSource: Send + Sync {
    /// The listing RPC's name, for metrics and logs (`ListVolumes`, `ControllerListVolumeHealth`).
    fn list_method(&self) -> &'static str;
    /// The per-volume RPC's name (`ControllerGetVolume`, `ControllerGetVolumeHealth`).
    fn get_method(&self) -> &'static str;
    fn list_page(&self, max_entries: i32, starting_token: &str) -> Result<ListPage, Error>;
    /// A volume's conditions (empty: healthy); `NotFound` when the driver does not know it.
    fn get(&self, volume_id: &str) -> Result<Vec<Condition>, Error>;
}

/// What the driver can do, as far as the monitor cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    pub controller_service: bool,
    pub list_volumes: bool,
    pub get_volume: bool,
    pub volume_condition: bool,
    /// v1.13 `GET_VOLUME_HEALTH` (16).
    pub get_volume_health: bool,
    /// v1.13 `LIST_VOLUME_HEALTH` (17).
    pub list_volume_health: bool,
}

/// Which CSI volume health surface a mode speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generation {
    /// v1.12 `VOLUME_CONDITION` in ListVolumes / ControllerGetVolume.
    Condition,
    /// v1.13 ControllerListVolumeHealth / ControllerGetVolumeHealth.
    Health,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// v1.12 ListVolumes sweeps.
    ListVolumes,
    /// v1.12 ControllerGetVolume per volume.
    GetVolume,
    /// v1.13 ControllerListVolumeHealth cycles; `confirm`: the driver has GET_VOLUME_HEALTH to
    /// confirm that a volume absent from a cycle recovered.
    HealthList { confirm: bool },
    /// v1.13 ControllerGetVolumeHealth per volume.
    HealthGet,
}

impl Mode {
    pub fn generation(self) -> Generation {
        match self {
            Mode::ListVolumes | Mode::GetVolume => Generation::Condition,
            Mode::HealthList { .. } | Mode::HealthGet => Generation::Health,
        }
    }

    /// One paginated listing per interval (else per-volume calls on the worker pool).
    pub fn is_list(self) -> bool {
        matches!(self, Mode::ListVolumes | Mode::HealthList { .. })
    }

    /// The name logged at start.
    pub fn name(self) -> &'static str {
        match self {
            Mode::ListVolumes => "ListVolumes",
            Mode::GetVolume => "ControllerGetVolume",
            Mode::HealthList { .. } => "ControllerListVolumeHealth",
            Mode::HealthGet => "ControllerGetVolumeHealth",
        }
    }
}

/// Why a driver cannot be monitored (upstream exits 1, silently below -v=2; we say why).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unsupported {
    NoControllerService,
    /// `--volume-health-api=condition` on a driver without a usable v1.12 surface (upstream's
    /// own message).
    NoListOrGetOrCondition,
    /// `--volume-health-api=health` on a driver without the v1.13 health RPCs.
    NoVolumeHealth,
    /// Neither generation (the `auto` case).
    Neither,
}

impl fmt::Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UPSTREAM: &str = "CSI driver does not support Controller ListVolumes and GetVolume service or does not implement VolumeCondition, exiting";
        match self {
            Unsupported::NoControllerService => {
                write!(f, "CSI driver does not support Plugin Controller Service, exiting")
            }
            Unsupported::NoListOrGetOrCondition => write!(f, "{UPSTREAM} (--volume-health-api=condition)"),
            Unsupported::NoVolumeHealth => write!(
                f,
                "CSI driver advertises neither LIST_VOLUME_HEALTH nor GET_VOLUME_HEALTH (CSI v1.13 volume health), which --volume-health-api=health requires, exiting"
            ),
            // Upstream's sentence first: operators search logs for it.
            Unsupported::Neither => write!(
                f,
                "{UPSTREAM}: the driver advertises none of LIST_VOLUME_HEALTH, GET_VOLUME_HEALTH (CSI v1.13), VOLUME_CONDITION with LIST_VOLUMES, VOLUME_CONDITION with GET_VOLUME (CSI v1.12)"
            ),
        }
    }
}

/// The mode chosen at start, and a warning to log when the driver breaks the spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selected {
    pub mode: Mode,
    pub warning: Option<String>,
}

/// The one place the generation is chosen (volume-health-v1.13.md §1): v1.13 health RPCs when
/// the driver has them (and `--volume-health-api` allows), else v1.12 `VOLUME_CONDITION`, in
/// each generation the listing when there is one (upstream, PR #3 review).
pub fn select_mode(caps: &Capabilities, api: HealthApi) -> Result<Selected, Unsupported> {
    if !caps.controller_service {
        return Err(Unsupported::NoControllerService);
    }
    let health = caps.list_volume_health || caps.get_volume_health;
    let condition = caps.volume_condition && (caps.list_volumes || caps.get_volume);
    let use_health = match api {
        HealthApi::Auto if health => true,
        HealthApi::Auto if condition => false,
        HealthApi::Auto => return Err(Unsupported::Neither),
        HealthApi::Health if health => true,
        HealthApi::Health => return Err(Unsupported::NoVolumeHealth),
        HealthApi::Condition if condition => false,
        HealthApi::Condition => return Err(Unsupported::NoListOrGetOrCondition),
    };
    let selected = |mode| Selected {
        mode,
        warning: None,
    };
    Ok(match (use_health, caps.list_volume_health, caps.list_volumes) {
        (true, true, _) => Selected {
            mode: Mode::HealthList {
                confirm: caps.get_volume_health,
            },
            warning: (!caps.get_volume_health).then(|| {
                "CSI driver advertises LIST_VOLUME_HEALTH without GET_VOLUME_HEALTH, which the CSI spec requires with it: a volume absent from the listing counts as recovered only after two complete cycles".to_string()
            }),
        },
        (true, false, _) => selected(Mode::HealthGet),
        (false, _, true) => selected(Mode::ListVolumes),
        (false, _, false) => selected(Mode::GetVolume),
    })
}

/// `/p`, `unix:///p` and `unix:/p` all name the socket `/p`.
pub fn socket_path(address: &str) -> Option<PathBuf> {
    let p = address
        .strip_prefix("unix://")
        .or_else(|| address.strip_prefix("unix:"))
        .unwrap_or(address);
    if p.starts_with('/') {
        Some(PathBuf::from(p))
    } else {
        None
    }
}

/// A connected CSI driver.
pub struct Connection {
    channel: grpcio::Channel,
    identity: IdentityClient,
    controller: ControllerClient,
    timeout: Duration,
    observer: CallObserver,
}

impl Connection {
    /// Dial the socket and wait until the channel is ready, up to `CONNECT_TIMEOUT`, logging
    /// "Still connecting" every 10 s. The socket file may appear while we wait.
    pub fn connect(
        address: &Path,
        timeout: Duration,
        observer: CallObserver,
        shutdown: &Shutdown,
    ) -> Result<Connection, Error> {
        Self::connect_within(address, timeout, observer, shutdown, CONNECT_TIMEOUT)
    }

    pub fn connect_within(
        address: &Path,
        timeout: Duration,
        observer: CallObserver,
        shutdown: &Shutdown,
        connect_timeout: Duration,
    ) -> Result<Connection, Error> {
        let env = Arc::new(EnvBuilder::new().cq_count(1).name_prefix("grpc").build());
        let mut builder = ChannelBuilder::new(env)
            // csi-lib-utils: retry about once a second, never drop the connection for idleness.
            .initial_reconnect_backoff(Duration::from_millis(200))
            .max_reconnect_backoff(Duration::from_secs(1))
            .max_receive_message_len(MAX_REPLY as i32)
            .set_resource_quota(ResourceQuota::new(Some("csi")).resize_memory(REPLY_MEMORY));
        if let Ok(key) = CString::new("grpc.client_idle_timeout_ms") {
            builder = builder.raw_cfg_int(key, i32::MAX);
        }
        let target = format!("unix:{}", address.display());
        log::debug!(address:% = address.display(); "Connecting");
        let channel = builder.connect(&target);
        let started = Instant::now();
        let mut next_log = started + CONNECT_LOG_INTERVAL;
        loop {
            if channel.check_connectivity_state(true) == ConnectivityState::GRPC_CHANNEL_READY {
                break;
            }
            let now = Instant::now();
            if now >= started + connect_timeout {
                return Err(Error::Connect {
                    address: address.display().to_string(),
                    waited: connect_timeout,
                });
            }
            if now >= next_log {
                log::info!(
                    address:% = format_args!("unix://{}", address.display());
                    "Still connecting"
                );
                next_log += CONNECT_LOG_INTERVAL;
            }
            // grpcio's state-change wait is a future; polling keeps us free of an executor.
            if shutdown.wait_timeout(Duration::from_millis(50)) {
                return Err(Error::Interrupted);
            }
        }
        Ok(Connection {
            identity: IdentityClient::new(channel.clone()),
            controller: ControllerClient::new(channel.clone()),
            channel,
            timeout,
            observer,
        })
    }

    fn opt(&self) -> CallOption {
        CallOption::default().timeout(self.timeout)
    }

    fn call<T>(
        &self,
        method: &'static str,
        f: impl FnOnce() -> grpcio::Result<T>,
    ) -> Result<T, Error> {
        log::trace!(method:% = method; "GRPC call");
        let start = Instant::now();
        let result = f();
        let secs = start.elapsed().as_secs_f64();
        let outcome = match result {
            Ok(v) => {
                (self.observer)(method, "OK", secs);
                Ok(v)
            }
            Err(grpcio::Error::RpcFailure(status)) => {
                let code = code_name(status.code());
                (self.observer)(method, code, secs);
                Err(Error::Rpc {
                    method,
                    code: code.to_string(),
                    message: explain_status(code, status.message()),
                })
            }
            Err(e) => {
                (self.observer)(method, "unknown-non-grpc", secs);
                Err(Error::Call {
                    method,
                    message: e.to_string(),
                })
            }
        };
        if let Err(e) = &outcome {
            log::trace!(method:% = method, err:% = e; "GRPC response");
        }
        outcome
    }

    /// One Probe. `Ok(true)` ready (absent `ready` counts as ready), `Ok(false)` not ready.
    pub fn probe(&self) -> Result<bool, Error> {
        let resp = self.call(METHOD_PROBE, || {
            self.identity
                .probe_opt(&csi::ProbeRequest::new(), self.opt())
        })?;
        Ok(resp.ready.as_ref().map(|b| b.value).unwrap_or(true))
    }

    /// Probe until the driver says it is ready (upstream ProbeForever): not-ready and timeouts
    /// are retried every second, any other error is fatal.
    pub fn probe_until_ready(&self, shutdown: &Shutdown) -> Result<(), Error> {
        loop {
            log::info!("Probing CSI driver for readiness");
            match self.probe() {
                Ok(true) => return Ok(()),
                Ok(false) => log::info!("CSI driver is not ready"),
                Err(e) if e.is_deadline_exceeded() => log::info!("CSI driver probe timed out"),
                Err(e) => return Err(e),
            }
            if shutdown.wait_timeout(Duration::from_secs(1)) {
                return Err(Error::Interrupted);
            }
        }
    }

    pub fn driver_name(&self) -> Result<String, Error> {
        let resp = self.call(METHOD_PLUGIN_INFO, || {
            self.identity
                .get_plugin_info_opt(&csi::GetPluginInfoRequest::new(), self.opt())
        })?;
        if resp.name.is_empty() {
            return Err(Error::EmptyDriverName);
        }
        Ok(resp.name)
    }

    /// Plugin and controller capabilities (one RPC each; upstream asks the controller three times).
    pub fn capabilities(&self) -> Result<Capabilities, Error> {
        let plugin = self.call(METHOD_PLUGIN_CAPABILITIES, || {
            self.identity
                .get_plugin_capabilities_opt(&csi::GetPluginCapabilitiesRequest::new(), self.opt())
        })?;
        let mut caps = Capabilities::default();
        use csi::plugin_capability::service::Type as ServiceType;
        for cap in &plugin.capabilities {
            if let Some(csi::plugin_capability::Type::Service(s)) = &cap.type_ {
                if s.type_.enum_value() == Ok(ServiceType::CONTROLLER_SERVICE) {
                    caps.controller_service = true;
                }
            }
        }
        if !caps.controller_service {
            return Ok(caps);
        }
        let ctrl = self.call(METHOD_CONTROLLER_CAPABILITIES, || {
            self.controller.controller_get_capabilities_opt(
                &csi::ControllerGetCapabilitiesRequest::new(),
                self.opt(),
            )
        })?;
        use csi::controller_service_capability::rpc::Type as RpcType;
        for cap in &ctrl.capabilities {
            if let Some(csi::controller_service_capability::Type::Rpc(r)) = &cap.type_ {
                match r.type_.enum_value() {
                    Ok(RpcType::LIST_VOLUMES) => caps.list_volumes = true,
                    Ok(RpcType::GET_VOLUME) => caps.get_volume = true,
                    Ok(RpcType::VOLUME_CONDITION) => caps.volume_condition = true,
                    Ok(RpcType::GET_VOLUME_HEALTH) => caps.get_volume_health = true,
                    Ok(RpcType::LIST_VOLUME_HEALTH) => caps.list_volume_health = true,
                    _ => {}
                }
            }
        }
        Ok(caps)
    }

    /// Watch the channel and return when the connection to the driver is lost (any state other
    /// than READY after start: gRPC only leaves READY when the socket went away) or on shutdown.
    /// Returns true when the connection was lost.
    pub fn wait_for_loss(&self, shutdown: &Shutdown, poll: Duration) -> bool {
        loop {
            if self.channel.check_connectivity_state(false) != ConnectivityState::GRPC_CHANNEL_READY
            {
                return true;
            }
            if shutdown.wait_timeout(poll) {
                return false;
            }
        }
    }
}

/// A v1.12 `volume_condition`: a one-element list when abnormal, else empty. A missing one is
/// never read as healthy: callers refuse the answer (`check_get_volume`) or set the entry
/// aside (`ListPage::unjudged`).
fn legacy_conditions(c: Option<&csi::VolumeCondition>) -> Vec<Condition> {
    match c {
        Some(c) if c.abnormal => vec![Condition::legacy(c.message.clone())],
        _ => Vec::new(),
    }
}

/// v1.13 `health_statuses`, the status number kept as sent (unknown values included).
fn health_conditions(entries: Vec<csi::volume_health::VolumeHealthEntry>) -> Vec<Condition> {
    entries
        .into_iter()
        .map(|e| Condition::typed(e.status.value(), e.reason, e.message))
        .collect()
}

impl Connection {
    fn list_volumes(&self, max_entries: i32, starting_token: &str) -> Result<ListPage, Error> {
        let mut req = csi::ListVolumesRequest::new();
        req.max_entries = max_entries;
        req.starting_token = starting_token.to_string();
        let resp = self.call(METHOD_LIST_VOLUMES, || {
            self.controller.list_volumes_opt(&req, self.opt())
        })?;
        let mut page = ListPage {
            entries: Vec::with_capacity(resp.entries.len()),
            next_token: resp.next_token,
            ..ListPage::default()
        };
        for entry in resp.entries {
            let Some(volume) = entry.volume.into_option() else {
                page.skipped += 1;
                continue;
            };
            // This mode runs only for drivers with VOLUME_CONDITION, which MUST set it.
            match entry
                .status
                .as_ref()
                .and_then(|s| s.volume_condition.as_ref())
            {
                Some(c) => page
                    .entries
                    .push((volume.volume_id, legacy_conditions(Some(c)))),
                None => page.unjudged.push(volume.volume_id),
            }
        }
        Ok(page)
    }

    fn get_volume(&self, volume_id: &str) -> Result<Vec<Condition>, Error> {
        let mut req = csi::ControllerGetVolumeRequest::new();
        req.volume_id = volume_id.to_string();
        let resp = self.call(METHOD_GET_VOLUME, || {
            self.controller.controller_get_volume_opt(&req, self.opt())
        })?;
        check_get_volume(volume_id, &resp)?;
        Ok(legacy_conditions(
            resp.status
                .as_ref()
                .and_then(|s| s.volume_condition.as_ref()),
        ))
    }

    fn list_volume_health(
        &self,
        max_entries: i32,
        starting_token: &str,
    ) -> Result<ListPage, Error> {
        let mut req = csi::ControllerListVolumeHealthRequest::new();
        req.max_entries = max_entries;
        req.starting_token = starting_token.to_string();
        let resp = self.call(METHOD_LIST_VOLUME_HEALTH, || {
            self.controller
                .controller_list_volume_health_opt(&req, self.opt())
        })?;
        let mut page = ListPage {
            entries: Vec::with_capacity(resp.entries.len()),
            next_token: resp.next_token,
            ..ListPage::default()
        };
        for entry in resp.entries {
            if entry.volume_id.is_empty() {
                page.skipped += 1;
                continue;
            }
            page.entries
                .push((entry.volume_id, health_conditions(entry.health_statuses)));
        }
        Ok(page)
    }

    fn get_volume_health(&self, volume_id: &str) -> Result<Vec<Condition>, Error> {
        let mut req = csi::ControllerGetVolumeHealthRequest::new();
        req.volume_id = volume_id.to_string();
        let resp = self.call(METHOD_GET_VOLUME_HEALTH, || {
            self.controller
                .controller_get_volume_health_opt(&req, self.opt())
        })?;
        let health = check_get_volume_health(volume_id, resp)?;
        Ok(health_conditions(health.health_statuses))
    }
}

/// `ControllerGetVolume` (v1.12, with `VOLUME_CONDITION`): `volume` and `status` are
/// REQUIRED, `status.volume_condition` MUST be set by a driver with the capability, and the
/// volume must be the one asked about. Upstream read a missing condition as healthy, so a
/// broken answer told a recovery.
fn check_get_volume(asked: &str, resp: &csi::ControllerGetVolumeResponse) -> Result<(), Error> {
    let problem = match (resp.volume.as_ref(), resp.status.as_ref()) {
        (None, _) => "the required volume is missing".to_string(),
        (Some(v), _) if v.volume_id != asked => {
            format!("it is about volume '{}'", v.volume_id)
        }
        (Some(_), None) => "the required status is missing".to_string(),
        (Some(_), Some(s)) if s.volume_condition.is_none() => {
            "status.volume_condition is missing (required with VOLUME_CONDITION)".to_string()
        }
        _ => return Ok(()),
    };
    Err(Error::Malformed {
        method: METHOD_GET_VOLUME,
        volume: asked.to_string(),
        problem,
    })
}

/// `ControllerGetVolumeHealth` (v1.13): `volume_health` is REQUIRED and must be about the
/// volume asked. Before, a reply without it read as "no adverse condition": a recovery.
fn check_get_volume_health(
    asked: &str,
    resp: csi::ControllerGetVolumeHealthResponse,
) -> Result<csi::VolumeHealth, Error> {
    let malformed = |problem: String| Error::Malformed {
        method: METHOD_GET_VOLUME_HEALTH,
        volume: asked.to_string(),
        problem,
    };
    let health = resp
        .volume_health
        .into_option()
        .ok_or_else(|| malformed("the required volume_health is missing".to_string()))?;
    if health.volume_id != asked {
        return Err(malformed(format!(
            "volume_health is about volume '{}'",
            health.volume_id
        )));
    }
    Ok(health)
}

/// The driver's RPCs of one generation behind the [`HealthSource`] seam.
pub struct Rpcs {
    pub conn: Arc<Connection>,
    pub generation: Generation,
}

impl HealthSource for Rpcs {
    fn list_method(&self) -> &'static str {
        match self.generation {
            Generation::Condition => "ListVolumes",
            Generation::Health => "ControllerListVolumeHealth",
        }
    }

    fn get_method(&self) -> &'static str {
        match self.generation {
            Generation::Condition => "ControllerGetVolume",
            Generation::Health => "ControllerGetVolumeHealth",
        }
    }

    fn list_page(&self, max_entries: i32, starting_token: &str) -> Result<ListPage, Error> {
        match self.generation {
            Generation::Condition => self.conn.list_volumes(max_entries, starting_token),
            Generation::Health => self.conn.list_volume_health(max_entries, starting_token),
        }
    }

    fn get(&self, volume_id: &str) -> Result<Vec<Condition>, Error> {
        match self.generation {
            Generation::Condition => self.conn.get_volume(volume_id),
            Generation::Health => self.conn.get_volume_health(volume_id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue #25: an answer without a required field, or about another volume, is an error,
    /// never "no adverse condition".
    #[test]
    fn get_answers_are_checked() {
        use csi::controller_get_volume_response::VolumeStatus;
        let legacy = |id: Option<&str>, status: bool, condition: bool| {
            let mut r = csi::ControllerGetVolumeResponse::new();
            if let Some(id) = id {
                let mut v = csi::Volume::new();
                v.volume_id = id.to_string();
                r.volume = protobuf::MessageField::some(v);
            }
            if status {
                let mut st = VolumeStatus::new();
                if condition {
                    st.volume_condition = protobuf::MessageField::some(csi::VolumeCondition::new());
                }
                r.status = protobuf::MessageField::some(st);
            }
            r
        };
        assert_eq!(
            check_get_volume("v1", &legacy(Some("v1"), true, true)),
            Ok(())
        );
        for (resp, problem) in [
            (legacy(None, true, true), "the required volume is missing"),
            (legacy(Some("v2"), true, true), "it is about volume 'v2'"),
            (legacy(Some(""), true, true), "it is about volume ''"),
            (
                legacy(Some("v1"), false, false),
                "the required status is missing",
            ),
            (
                legacy(Some("v1"), true, false),
                "status.volume_condition is missing (required with VOLUME_CONDITION)",
            ),
        ] {
            assert_eq!(
                check_get_volume("v1", &resp),
                Err(Error::Malformed {
                    method: METHOD_GET_VOLUME,
                    volume: "v1".into(),
                    problem: problem.into()
                })
            );
        }

        let health = |id: Option<&str>| {
            let mut r = csi::ControllerGetVolumeHealthResponse::new();
            if let Some(id) = id {
                let mut h = csi::VolumeHealth::new();
                h.volume_id = id.to_string();
                r.volume_health = protobuf::MessageField::some(h);
            }
            r
        };
        assert_eq!(
            check_get_volume_health("v1", health(Some("v1"))).map(|h| h.volume_id),
            Ok("v1".to_string())
        );
        for (resp, problem) in [
            (health(None), "the required volume_health is missing"),
            (health(Some("v2")), "volume_health is about volume 'v2'"),
            (health(Some("")), "volume_health is about volume ''"),
        ] {
            let err = check_get_volume_health("v1", resp).unwrap_err();
            assert_eq!(
                err,
                Error::Malformed {
                    method: METHOD_GET_VOLUME_HEALTH,
                    volume: "v1".into(),
                    problem: problem.into()
                }
            );
            assert!(!err.is_not_found());
            assert_eq!(
                err.to_string(),
                format!("/csi.v1.Controller/ControllerGetVolumeHealth: the driver's answer about volume 'v1' breaks the CSI spec: {problem}; it is not taken as the volume's condition")
            );
        }
    }

    #[test]
    fn socket_paths() {
        assert_eq!(
            socket_path("/run/csi/socket"),
            Some(PathBuf::from("/run/csi/socket"))
        );
        assert_eq!(
            socket_path("unix:///run/csi/socket"),
            Some(PathBuf::from("/run/csi/socket"))
        );
        assert_eq!(
            socket_path("unix:/run/csi/socket"),
            Some(PathBuf::from("/run/csi/socket"))
        );
        assert_eq!(socket_path("tcp://127.0.0.1:10000"), None);
        assert_eq!(socket_path("relative/socket"), None);
    }

    #[test]
    fn a_cancel_at_the_memory_quota_names_the_limits() {
        assert_eq!(
            explain_status("ResourceExhausted", "Buffers full"),
            "Buffers full (the driver's reply passed the 40 MiB gRPC may hold for it; replies are capped at 32 MiB)"
        );
        // A driver's own words, or the size check's, stay as sent.
        assert_eq!(
            explain_status("Unavailable", "Buffers full"),
            "Buffers full"
        );
        assert_eq!(
            explain_status("ResourceExhausted", "quota of the backend exceeded"),
            "quota of the backend exceeded"
        );
    }

    #[test]
    fn mode_selection() {
        let none = Capabilities {
            controller_service: true,
            ..Capabilities::default()
        };
        let legacy = Capabilities {
            list_volumes: true,
            get_volume: true,
            volume_condition: true,
            ..none
        };
        let v113 = Capabilities {
            list_volume_health: true,
            get_volume_health: true,
            list_volumes: true,
            get_volume: true,
            ..none
        };
        let both = Capabilities {
            volume_condition: true,
            ..v113
        };
        let mode = |c: Capabilities, api| select_mode(&c, api).map(|s| s.mode);
        use HealthApi::*;
        let list_confirm = Ok(Mode::HealthList { confirm: true });
        let cases: Vec<(Capabilities, HealthApi, Result<Mode, Unsupported>)> = vec![
            (legacy, Auto, Ok(Mode::ListVolumes)),
            (
                Capabilities {
                    list_volumes: false,
                    ..legacy
                },
                Auto,
                Ok(Mode::GetVolume),
            ),
            (
                Capabilities {
                    get_volume: false,
                    ..legacy
                },
                Auto,
                Ok(Mode::ListVolumes),
            ),
            (
                Capabilities {
                    list_volumes: false,
                    get_volume: false,
                    ..legacy
                },
                Auto,
                Err(Unsupported::Neither),
            ),
            (
                Capabilities {
                    volume_condition: false,
                    ..legacy
                },
                Auto,
                Err(Unsupported::Neither),
            ),
            (
                Capabilities {
                    controller_service: false,
                    ..both
                },
                Auto,
                Err(Unsupported::NoControllerService),
            ),
            (v113, Auto, list_confirm.clone()),
            (
                Capabilities {
                    list_volume_health: false,
                    ..v113
                },
                Auto,
                Ok(Mode::HealthGet),
            ),
            (
                Capabilities {
                    get_volume_health: false,
                    ..v113
                },
                Auto,
                Ok(Mode::HealthList { confirm: false }),
            ),
            (both, Auto, list_confirm.clone()),
            (both, Health, list_confirm),
            (both, Condition, Ok(Mode::ListVolumes)),
            (v113, Condition, Err(Unsupported::NoListOrGetOrCondition)),
            (legacy, Health, Err(Unsupported::NoVolumeHealth)),
            (none, Auto, Err(Unsupported::Neither)),
        ];
        for (caps, api, want) in cases {
            assert_eq!(mode(caps, api), want, "{caps:?} {api:?}");
        }
        let warned = select_mode(
            &Capabilities {
                get_volume_health: false,
                ..v113
            },
            Auto,
        )
        .unwrap();
        assert!(warned
            .warning
            .unwrap()
            .contains("without GET_VOLUME_HEALTH"));
        assert_eq!(select_mode(&both, Auto).unwrap().warning, None);
    }

    #[test]
    fn unsupported_messages_keep_upstream_words_and_name_the_capabilities() {
        let neither = Unsupported::Neither.to_string();
        assert!(neither.contains("does not implement VolumeCondition"));
        for cap in [
            "LIST_VOLUME_HEALTH",
            "GET_VOLUME_HEALTH",
            "VOLUME_CONDITION with LIST_VOLUMES",
            "VOLUME_CONDITION with GET_VOLUME",
        ] {
            assert!(neither.contains(cap), "{neither}");
        }
        assert!(Unsupported::NoVolumeHealth
            .to_string()
            .contains("--volume-health-api=health"));
    }

    #[test]
    fn code_names_match_go() {
        assert_eq!(
            code_name(RpcStatusCode::DEADLINE_EXCEEDED),
            "DeadlineExceeded"
        );
        assert_eq!(code_name(RpcStatusCode::NOT_FOUND), "NotFound");
        assert_eq!(code_name(RpcStatusCode::CANCELLED), "Canceled");
        assert_eq!(code_name(RpcStatusCode::OK), "OK");
    }
}
