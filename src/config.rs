//! The validated configuration the daemon runs on, built from parsed flags.
//!
//! Everything downstream reads `Config`; nothing reads raw flags. There is no `Default`: a
//! `Config` only comes out of `flags::parse` (or a test that spells every field).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// Output format of log lines (`--logging-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    /// `-v`: 0 info, 1-3 more info, 4 debug, 5+ trace.
    pub verbosity: u8,
    pub format: LogFormat,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LeaderElectionConfig {
    /// `--leader-election-namespace` as given (empty = resolve from POD_NAMESPACE, the
    /// service-account namespace file, then `default`; done by the leader module).
    pub namespace: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HttpConfig {
    /// Listen address as given (`:8080`, `0.0.0.0:8080`, `[::]:8080`, `127.0.0.1:0`).
    pub address: String,
    pub metrics_path: String,
    /// True when the address came from the deprecated `--metrics-address`.
    pub deprecated_metrics_address: bool,
}

/// `--volume-health-api`: which CSI volume health generation may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthApi {
    /// v1.13 health RPCs when the driver has them, else v1.12 `VOLUME_CONDITION`.
    Auto,
    /// v1.13 only.
    Health,
    /// v1.12 only.
    Condition,
}

/// `--output`: how `--check-once` prints its report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckOutput {
    /// One line per volume, then a summary line.
    Text,
    /// One JSON document.
    Json,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Filesystem path of the CSI driver's unix socket (`/p`, `unix:///p` and `unix:/p` all
    /// become `/p`).
    pub csi_address: PathBuf,
    /// `--kubeconfig`; `None` means in-cluster configuration.
    pub kubeconfig: Option<PathBuf>,
    pub monitor_interval: Duration,
    pub resync: Duration,
    /// Deadline of every single CSI RPC.
    pub timeout: Duration,
    pub list_volumes_interval: Duration,
    /// `--list-volumes-max-entries`; 0 = unset (upstream behaviour).
    pub list_volumes_max_entries: i32,
    pub volume_list_add_interval: Duration,
    pub node_list_add_interval: Duration,
    pub node_not_ready_timeout: Duration,
    /// Size of the worker pool for per-volume RPCs; at least 1.
    pub worker_threads: usize,
    pub enable_node_watcher: bool,
    pub report_missing_volumes: bool,
    /// `--missing-volumes-max-fraction`, in 0..=1 (1: the mass-absence guard is off).
    pub missing_volumes_max_fraction: f64,
    pub volume_health_api: HealthApi,
    /// Events beside `status.healthStatus` in the v1.13 health modes.
    pub volume_health_events: bool,
    /// `Some` when `--leader-election` is on.
    pub leader_election: Option<LeaderElectionConfig>,
    pub kube_api_qps: f64,
    pub kube_api_burst: u32,
    /// `Some` when `--http-endpoint` or `--metrics-address` is set.
    pub http: Option<HttpConfig>,
    /// Where the connection-loss message is written (`--termination-log-path`).
    pub termination_log_path: PathBuf,
    pub log: LogConfig,
}
