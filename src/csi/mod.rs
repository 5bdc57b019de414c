//! The CSI side: connecting to the driver's unix socket, probing it, reading its name and
//! capabilities, choosing the monitoring mode, and the health source the monitor asks about
//! volume conditions. Every RPC carries a deadline and is reported to the metrics observer.

pub mod proto;

use grpcio::{CallOption, ChannelBuilder, ConnectivityState, EnvBuilder, RpcStatusCode};
use proto::csi;
use proto::csi_grpc::{ControllerClient, IdentityClient};
use std::ffi::CString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::shutdown::Shutdown;

/// How long the initial connection may take before we give up (upstream csi-lib-utils).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How often "Still connecting" is logged while waiting.
pub const CONNECT_LOG_INTERVAL: Duration = Duration::from_secs(10);

pub const METHOD_PROBE: &str = "/csi.v1.Identity/Probe";
pub const METHOD_PLUGIN_INFO: &str = "/csi.v1.Identity/GetPluginInfo";
pub const METHOD_PLUGIN_CAPABILITIES: &str = "/csi.v1.Identity/GetPluginCapabilities";
pub const METHOD_CONTROLLER_CAPABILITIES: &str = "/csi.v1.Controller/ControllerGetCapabilities";
pub const METHOD_LIST_VOLUMES: &str = "/csi.v1.Controller/ListVolumes";
pub const METHOD_GET_VOLUME: &str = "/csi.v1.Controller/ControllerGetVolume";

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

/// A volume's condition as the driver reports it (missing condition = normal, as upstream).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub abnormal: bool,
    pub message: String,
}

/// One page of ListVolumes.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ListPage {
    /// (volume id, condition), in the driver's order.
    pub entries: Vec<(String, Condition)>,
    /// Entries without a `volume` field: skipped (upstream dereferences nil and crashes).
    pub skipped: usize,
    pub next_token: String,
}

/// The seam between "ask the driver" and "decide and report" (upstream's csi-handler
/// interface). A second source (CSI 1.13 health RPCs) can implement it later.
pub trait HealthSource: Send + Sync {
    fn list_volumes(&self, max_entries: i32, starting_token: &str) -> Result<ListPage, Error>;
    fn get_volume(&self, volume_id: &str) -> Result<Condition, Error>;
}

/// What the driver can do, as far as the monitor cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    pub controller_service: bool,
    pub list_volumes: bool,
    pub get_volume: bool,
    pub volume_condition: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    ListVolumes,
    GetVolume,
}

/// Why a driver cannot be monitored (upstream exits 1, silently below -v=2; we say why).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unsupported {
    NoControllerService,
    NoListOrGetOrCondition,
}

impl fmt::Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unsupported::NoControllerService => {
                write!(f, "CSI driver does not support Plugin Controller Service, exiting")
            }
            Unsupported::NoListOrGetOrCondition => write!(
                f,
                "CSI driver does not support Controller ListVolumes and GetVolume service or does not implement VolumeCondition, exiting"
            ),
        }
    }
}

/// ListVolumes whenever it is supported (upstream, PR #3 review), else per-volume GetVolume.
pub fn select_mode(caps: &Capabilities) -> Result<Mode, Unsupported> {
    if !caps.controller_service {
        return Err(Unsupported::NoControllerService);
    }
    if (!caps.list_volumes && !caps.get_volume) || !caps.volume_condition {
        return Err(Unsupported::NoListOrGetOrCondition);
    }
    Ok(if caps.list_volumes {
        Mode::ListVolumes
    } else {
        Mode::GetVolume
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
            .max_receive_message_len(i32::MAX);
        if let Ok(key) = CString::new("grpc.client_idle_timeout_ms") {
            builder = builder.raw_cfg_int(key, i32::MAX);
        }
        let target = format!("unix:{}", address.display());
        log::debug!("Connecting address=\"{}\"", address.display());
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
                log::info!("Still connecting address=\"unix://{}\"", address.display());
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
        log::trace!("GRPC call method=\"{method}\"");
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
                    message: status.message().to_string(),
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
            log::trace!("GRPC response method=\"{method}\" err=\"{e}\"");
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

fn condition(c: Option<&csi::VolumeCondition>) -> Condition {
    match c {
        Some(c) => Condition {
            abnormal: c.abnormal,
            message: c.message.clone(),
        },
        None => Condition {
            abnormal: false,
            message: String::new(),
        },
    }
}

impl HealthSource for Connection {
    fn list_volumes(&self, max_entries: i32, starting_token: &str) -> Result<ListPage, Error> {
        let mut req = csi::ListVolumesRequest::new();
        req.max_entries = max_entries;
        req.starting_token = starting_token.to_string();
        let resp = self.call(METHOD_LIST_VOLUMES, || {
            self.controller.list_volumes_opt(&req, self.opt())
        })?;
        let mut page = ListPage {
            entries: Vec::with_capacity(resp.entries.len()),
            skipped: 0,
            next_token: resp.next_token,
        };
        for entry in resp.entries {
            let Some(volume) = entry.volume.into_option() else {
                page.skipped += 1;
                continue;
            };
            let cond = condition(
                entry
                    .status
                    .as_ref()
                    .and_then(|s| s.volume_condition.as_ref()),
            );
            page.entries.push((volume.volume_id, cond));
        }
        Ok(page)
    }

    fn get_volume(&self, volume_id: &str) -> Result<Condition, Error> {
        let mut req = csi::ControllerGetVolumeRequest::new();
        req.volume_id = volume_id.to_string();
        let resp = self.call(METHOD_GET_VOLUME, || {
            self.controller.controller_get_volume_opt(&req, self.opt())
        })?;
        Ok(condition(
            resp.status
                .as_ref()
                .and_then(|s| s.volume_condition.as_ref()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn mode_selection() {
        let all = Capabilities {
            controller_service: true,
            list_volumes: true,
            get_volume: true,
            volume_condition: true,
        };
        assert_eq!(select_mode(&all), Ok(Mode::ListVolumes));
        assert_eq!(
            select_mode(&Capabilities {
                list_volumes: false,
                ..all
            }),
            Ok(Mode::GetVolume)
        );
        assert_eq!(
            select_mode(&Capabilities {
                get_volume: false,
                ..all
            }),
            Ok(Mode::ListVolumes)
        );
        assert_eq!(
            select_mode(&Capabilities {
                list_volumes: false,
                get_volume: false,
                ..all
            }),
            Err(Unsupported::NoListOrGetOrCondition)
        );
        assert_eq!(
            select_mode(&Capabilities {
                volume_condition: false,
                ..all
            }),
            Err(Unsupported::NoListOrGetOrCondition)
        );
        assert_eq!(
            select_mode(&Capabilities {
                controller_service: false,
                ..all
            }),
            Err(Unsupported::NoControllerService)
        );
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
