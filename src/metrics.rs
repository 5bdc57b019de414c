//! The sidecar's private Prometheus registry: upstream's two metrics (§10:
//! `csi_sidecar_operations_seconds`, `process_start_time_seconds`) and DESIGN §3.2's per-volume
//! and API-traffic additions, with label sets bounded by this driver's PVs. Rendered as text
//! exposition 0.0.4 by the HTTP server.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use crate::store::{Keyed, Records};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{LabelPair, MetricFamily, MetricType};
use prometheus::{
    CounterVec, Gauge, GaugeVec, HistogramOpts, HistogramVec, Opts, Registry, TextEncoder,
};

/// Driver label before GetPluginInfo answered (csi-lib-utils' value).
pub const UNKNOWN_DRIVER: &str = "unknown-driver";

/// csi-lib-utils' operation-duration buckets, in seconds.
pub const CSI_BUCKETS: [f64; 13] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 25.0, 50.0, 120.0, 300.0, 600.0,
];

/// Clock ticks per second of `/proc/self/stat`'s `starttime` (USER_HZ, fixed at 100 on Linux,
/// as procfs and Go's process collector assume).
const USER_HZ: f64 = 100.0;

/// The last known health of one volume (`status` label of `csi_volume_health_status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeStatus {
    Normal,
    Abnormal,
    NotFound,
}

impl VolumeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            VolumeStatus::Normal => "normal",
            VolumeStatus::Abnormal => "abnormal",
            VolumeStatus::NotFound => "not_found",
        }
    }
}

/// A PV's one `csi_volume_health_status` series: its status and (v1.13) conditions. The other
/// labels are read at scrape time: the driver from the metrics, the claim's namespace and
/// name from the PV store (`ClaimLookup`), so a series costs no copy of them (issue #23).
#[derive(Debug, Clone, PartialEq, Eq)]
struct VolumeSeries {
    /// Shared with the PV's record.
    pv: Arc<str>,
    status: VolumeStatus,
    /// v1.13 health modes: the (status, reason) of each present condition, the series of
    /// `csi_controller_volume_health_status`. Empty when healthy or in the v1.12 modes.
    conditions: Box<[(Box<str>, Box<str>)]>,
}

impl Keyed for VolumeSeries {
    fn key(&self) -> &str {
        &self.pv
    }
}

/// The (namespace, name) of the claim of a PV, by the PV's name; `None` once it has none.
pub type ClaimLookup = Box<dyn Fn(&str) -> Option<(String, String)> + Send + Sync>;

type VolumeMap = Arc<Mutex<Records<VolumeSeries>>>;

const VOLUME_STATUS_NAME: &str = "csi_volume_health_status";
/// The `result` values of `csi_volume_health_status_writes_total`.
pub const STATUS_WRITE_RESULTS: [&str; 4] = ["ok", "dropped", "forbidden", "error"];
const CONDITION_NAME: &str = "csi_controller_volume_health_status";
const CONDITION_HELP: &str = "CSI v1.13 volume health: 1 for each adverse condition the CSI driver reports on the volume bound to a PVC, by Kubernetes status (Degraded, Inaccessible, DataLoss) and reason";
const CONDITION_LABELS: [&str; 5] = [
    "driver_name",
    "namespace",
    "persistentvolumeclaim",
    "reason",
    "status",
];
const VOLUME_STATUS_HELP: &str = "Health of a volume as last reported by the CSI driver: 1 on the current status (normal, abnormal, not_found)";
/// In label-name order, as the registry's own vectors emit them.
const VOLUME_STATUS_LABELS: [&str; 5] = [
    "driver_name",
    "namespace",
    "persistentvolume",
    "persistentvolumeclaim",
    "status",
];

/// `csi_volume_health_status`, rendered from the compact per-PV map at scrape time. A
/// prometheus `GaugeVec` child keeps its own copy of the descriptor (help text, label names)
/// and label pairs: about 1 KiB per PV, a third of the sidecar's memory at 10,000 volumes
/// (BENCHMARKS.md). Scrapes are rare; the map is always there.
struct VolumeStatusCollector {
    descs: [Desc; 2],
    volumes: VolumeMap,
    driver: Arc<RwLock<Arc<str>>>,
    claims: Arc<RwLock<Option<ClaimLookup>>>,
}

/// A gauge of value 1 with these labels (names in order).
fn one(names: &[&str], values: &[&str]) -> prometheus::proto::Metric {
    let labels = names
        .iter()
        .zip(values)
        .map(|(n, v)| {
            let mut p = LabelPair::default();
            p.set_name(n.to_string());
            p.set_value(v.to_string());
            p
        })
        .collect();
    let mut g = prometheus::proto::Gauge::default();
    g.set_value(1.0);
    let mut m = prometheus::proto::Metric::from_gauge(g);
    m.set_label(labels);
    m
}

fn gauge_family(name: &str, help: &str, metrics: Vec<prometheus::proto::Metric>) -> MetricFamily {
    let mut family = MetricFamily::default();
    family.set_name(name.to_string());
    family.set_help(help.to_string());
    family.set_field_type(MetricType::GAUGE);
    family.set_metric(metrics);
    family
}

impl Collector for VolumeStatusCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let driver = crate::sync::read(&self.driver).clone();
        let claims = crate::sync::read(&self.claims);
        let volumes = crate::sync::lock(&self.volumes);
        let mut status = Vec::with_capacity(volumes.len());
        let mut conditions = Vec::new();
        for s in volumes.iter() {
            // A series whose PV has no claim any more is about to be dropped or re-set.
            let Some((namespace, pvc)) = claims.as_ref().and_then(|claim| claim(&s.pv)) else {
                continue;
            };
            let values = [&*driver, &namespace, &s.pv, &pvc, s.status.as_str()];
            status.push(one(&VOLUME_STATUS_LABELS, &values));
            for (st, reason) in s.conditions.iter() {
                conditions.push(one(
                    &CONDITION_LABELS,
                    &[&*driver, &namespace, &pvc, reason, st],
                ));
            }
        }
        let mut out = vec![gauge_family(VOLUME_STATUS_NAME, VOLUME_STATUS_HELP, status)];
        // Prometheus' text format has no empty families; leave it out until a condition exists.
        if !conditions.is_empty() {
            out.push(gauge_family(CONDITION_NAME, CONDITION_HELP, conditions));
        }
        out
    }
}

pub struct Metrics {
    registry: Registry,
    driver: Arc<RwLock<Arc<str>>>,
    csi_ops: HistogramVec,
    probe_total: CounterVec,
    probe_duration: HistogramVec,
    last_sweep: GaugeVec,
    missing_suppressed: GaugeVec,
    rest_requests: CounterVec,
    /// `leader_election_master_status{name}`: a series only once leader election starts.
    leader: GaugeVec,
    status_writes: CounterVec,
    /// No labels; a vector so it only appears once the health modes start it.
    status_writes_dropped: CounterVec,
    unknown_conditions: CounterVec,
    volumes: VolumeMap,
    claims: Arc<RwLock<Option<ClaimLookup>>>,
    events_dropped: Arc<OnceLock<DroppedEvents>>,
}

/// Reads how many Events the recorder dropped so far, per reason.
pub type DroppedEvents = Box<dyn Fn() -> Vec<(&'static str, u64)> + Send + Sync>;

const EVENTS_DROPPED_NAME: &str = "csi_volume_health_events_dropped_total";
const EVENTS_DROPPED_HELP: &str = "Events the sidecar could not queue for the API server, by reason (queue_full: 1000 Events were already waiting; repeat_displaced: a queued repeat of an existing Event gave its place to a first report or a recovery)";

/// `csi_volume_health_events_dropped_total`, read from the recorder's own count at scrape time
/// (the recorder knows nothing of metrics; its counter is the one truth).
struct EventsDroppedCollector {
    desc: Desc,
    source: Arc<OnceLock<DroppedEvents>>,
}

impl Collector for EventsDroppedCollector {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let Some(read) = self.source.get() else {
            return Vec::new();
        };
        let metrics = read()
            .into_iter()
            .map(|(why, n)| {
                let mut c = prometheus::proto::Counter::default();
                c.set_value(n as f64);
                let mut m = prometheus::proto::Metric::default();
                m.set_counter(c);
                let mut reason = LabelPair::default();
                reason.set_name("reason".to_string());
                reason.set_value(why.to_string());
                m.set_label(vec![reason]);
                m
            })
            .collect();
        let mut family = MetricFamily::default();
        family.set_name(EVENTS_DROPPED_NAME.to_string());
        family.set_help(EVENTS_DROPPED_HELP.to_string());
        family.set_field_type(MetricType::COUNTER);
        family.set_metric(metrics);
        vec![family]
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The `status` label of `csi_volume_health_unknown_condition_total`: the numbers of the
/// v1.13 enum as themselves, anything else as `other`.
pub fn unknown_condition_label(status: i32) -> &'static str {
    match status {
        0 => "0",
        1 => "1",
        2 => "2",
        3 => "3",
        _ => "other",
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        Self::with_start_time(process_start_time())
    }

    /// Everything but the process start time, which tests fix.
    pub fn with_start_time(start_unix_seconds: f64) -> Metrics {
        let registry = Registry::new();
        let start = Gauge::new(
            "process_start_time_seconds",
            "[ALPHA] Start time of the process since unix epoch in seconds.",
        )
        .unwrap_or_else(unreachable_metric);
        start.set(start_unix_seconds);
        let csi_ops = HistogramVec::new(
            HistogramOpts::new(
                "csi_sidecar_operations_seconds",
                "[ALPHA] Container Storage Interface operation duration with gRPC error code status total",
            )
            .buckets(CSI_BUCKETS.to_vec()),
            &["driver_name", "method_name", "grpc_status_code"],
        )
        .unwrap_or_else(unreachable_metric);
        let volumes: VolumeMap = Arc::new(Mutex::new(Records::new()));
        let claims: Arc<RwLock<Option<ClaimLookup>>> = Arc::new(RwLock::new(None));
        let driver: Arc<RwLock<Arc<str>>> = Arc::new(RwLock::new(Arc::from(UNKNOWN_DRIVER)));
        let events_dropped: Arc<OnceLock<DroppedEvents>> = Arc::new(OnceLock::new());
        let desc = |name: &str, help: &str, labels: &[&str]| {
            Desc::new(
                name.to_string(),
                help.to_string(),
                labels.iter().map(|l| l.to_string()).collect(),
                HashMap::new(),
            )
            .unwrap_or_else(unreachable_metric)
        };
        let volume_status = VolumeStatusCollector {
            descs: [
                desc(
                    VOLUME_STATUS_NAME,
                    VOLUME_STATUS_HELP,
                    &VOLUME_STATUS_LABELS,
                ),
                desc(CONDITION_NAME, CONDITION_HELP, &CONDITION_LABELS),
            ],
            volumes: volumes.clone(),
            driver: driver.clone(),
            claims: claims.clone(),
        };
        let status_writes = CounterVec::new(
            Opts::new(
                "csi_volume_health_status_writes_total",
                "Writes of PersistentVolumeClaim status.healthStatus (CSI v1.13 health modes), by result: ok, dropped (the API server lacks the CSIVolumeHealth field), forbidden (RBAC lacks persistentvolumeclaims/status patch), error",
            ),
            &["result"],
        )
        .unwrap_or_else(unreachable_metric);
        let status_writes_dropped = CounterVec::new(
            Opts::new(
                "csi_volume_health_status_writes_dropped_total",
                "Writes of PersistentVolumeClaim status.healthStatus the API server accepted but dropped: the CSIVolumeHealth feature gate is off or the cluster is older than Kubernetes 1.37",
            ),
            &[],
        )
        .unwrap_or_else(unreachable_metric);
        let unknown_conditions = CounterVec::new(
            Opts::new(
                "csi_volume_health_unknown_condition_total",
                "Volume health conditions with a status value this sidecar does not know (reported as Degraded), by the value sent",
            ),
            &["status"],
        )
        .unwrap_or_else(unreachable_metric);
        let probe_total = CounterVec::new(
            Opts::new(
                "csi_volume_health_probe_total",
                "Volume health checks made against the CSI driver, by method and result",
            ),
            &["driver_name", "method", "result"],
        )
        .unwrap_or_else(unreachable_metric);
        let probe_duration = HistogramVec::new(
            HistogramOpts::new(
                "csi_volume_health_probe_duration_seconds",
                "Duration of volume health checks against the CSI driver",
            )
            .buckets(CSI_BUCKETS.to_vec()),
            &["driver_name", "method"],
        )
        .unwrap_or_else(unreachable_metric);
        let last_sweep = GaugeVec::new(
            Opts::new(
                "csi_volume_health_last_sweep_timestamp_seconds",
                "Unix time at which the last complete health sweep over the driver's volumes finished",
            ),
            &["driver_name"],
        )
        .unwrap_or_else(unreachable_metric);
        let missing_suppressed = GaugeVec::new(
            Opts::new(
                "csi_volume_health_missing_suppressed",
                "Volumes that the last ListVolumes sweep would newly have reported missing but did not, because more than --missing-volumes-max-fraction of the driver's Bound PVs were absent at once (a partial ListVolumes view)",
            ),
            &["driver_name"],
        )
        .unwrap_or_else(unreachable_metric);
        let rest_requests = CounterVec::new(
            Opts::new("rest_client_requests_total", "Number of HTTP requests to the Kubernetes API server, partitioned by status code, method, and host"),
            &["code", "method", "host"],
        )
        .unwrap_or_else(unreachable_metric);
        // component-base's leader-election gauge, name, help (with its stability prefix) and
        // label as client-go registers it, so existing dashboards and alerts find it.
        let leader = GaugeVec::new(
            Opts::new(
                "leader_election_master_status",
                "[ALPHA] Gauge of if the reporting system is master of the relevant lease, 0 indicates backup, 1 indicates master. 'name' is the string used to identify the lease. Please make sure to group by name.",
            ),
            &["name"],
        )
        .unwrap_or_else(unreachable_metric);

        // Registration only fails on a duplicate or inconsistent descriptor, which the fixed set
        // above cannot produce; a failure would merely drop one metric from the output.
        for c in [
            Box::new(start) as Box<dyn prometheus::core::Collector>,
            Box::new(csi_ops.clone()),
            Box::new(volume_status),
            Box::new(EventsDroppedCollector {
                desc: desc(EVENTS_DROPPED_NAME, EVENTS_DROPPED_HELP, &["reason"]),
                source: events_dropped.clone(),
            }),
            Box::new(probe_total.clone()),
            Box::new(probe_duration.clone()),
            Box::new(last_sweep.clone()),
            Box::new(missing_suppressed.clone()),
            Box::new(rest_requests.clone()),
            Box::new(leader.clone()),
            Box::new(status_writes.clone()),
            Box::new(status_writes_dropped.clone()),
            Box::new(unknown_conditions.clone()),
        ] {
            if let Err(e) = registry.register(c) {
                log::error!(err:% = e; "Failed to register a metric");
            }
        }
        Metrics {
            registry,
            driver,
            csi_ops,
            probe_total,
            probe_duration,
            last_sweep,
            missing_suppressed,
            rest_requests,
            leader,
            status_writes,
            status_writes_dropped,
            unknown_conditions,
            volumes,
            claims,
            events_dropped,
        }
    }

    /// The driver label of every later observation; earlier ones keep `unknown-driver`, as
    /// csi-lib-utils does.
    pub fn set_driver_name(&self, name: &str) {
        let mut d = crate::sync::write(&self.driver);
        *d = Arc::from(name);
    }

    fn driver(&self) -> Arc<str> {
        crate::sync::read(&self.driver).clone()
    }

    /// One CSI RPC: `method` is the full gRPC method (`/csi.v1.Identity/Probe`), `grpc_code` the
    /// code name (`OK`, `DeadlineExceeded`, ..., `unknown-non-grpc`).
    pub fn observe_csi_call(&self, method: &str, grpc_code: &str, seconds: f64) {
        let driver = self.driver();
        self.csi_ops
            .with_label_values(&[&*driver, method, grpc_code])
            .observe(seconds);
    }

    /// Where the volume series find their claims at scrape time: the PV store of the monitor
    /// that sets their statuses.
    pub fn label_volumes(&self, claims: ClaimLookup) {
        *crate::sync::write(&self.claims) = Some(claims);
    }

    /// Makes `status` the one series of `pv`, replacing the series of its previous status.
    /// Its claim labels are the PV's claim at scrape time.
    pub fn set_volume_status(&self, pv: &Arc<str>, status: VolumeStatus) {
        let mut volumes = crate::sync::lock(&self.volumes);
        let conditions = match volumes.get(pv) {
            Some(s) if s.status == status && Arc::ptr_eq(&s.pv, pv) => return,
            Some(s) => s.conditions.clone(),
            None => Box::default(),
        };
        volumes.insert(VolumeSeries {
            pv: pv.clone(),
            status,
            conditions,
        });
    }

    /// The `csi_controller_volume_health_status` series of `pv` (after [`set_volume_status`]):
    /// exactly these (status, reason) pairs; empty removes them all.
    ///
    /// [`set_volume_status`]: Metrics::set_volume_status
    pub fn set_volume_conditions(&self, pv: &str, conditions: Vec<(String, String)>) {
        let mut volumes = crate::sync::lock(&self.volumes);
        if let Some(s) = volumes.get(pv) {
            let mut s = s.clone();
            s.conditions = conditions
                .into_iter()
                .map(|(st, r)| (st.into_boxed_str(), r.into_boxed_str()))
                .collect();
            volumes.insert(s);
        }
    }

    /// The v1.13 health modes' write counters, at zero from the start so that `increase()`
    /// sees their first step (the v1.12 modes never show them).
    pub fn start_status_writes(&self) {
        for result in STATUS_WRITE_RESULTS {
            self.status_writes.with_label_values(&[result]);
        }
        self.status_writes_dropped.with_label_values::<&str>(&[]);
    }

    /// Where `csi_volume_health_events_dropped_total` reads from (the recorder, once it runs);
    /// set once, later calls are ignored.
    pub fn set_events_dropped(&self, read: DroppedEvents) {
        let _ = self.events_dropped.set(read);
    }

    /// One write of a PVC's `status.healthStatus`: `ok`, `dropped`, `forbidden` or `error`.
    pub fn observe_status_write(&self, result: &str) {
        self.status_writes.with_label_values(&[result]).inc();
        if result == "dropped" {
            self.status_writes_dropped
                .with_label_values::<&str>(&[])
                .inc();
        }
    }

    /// A condition whose status number this sidecar does not know: `0` (the enum's
    /// UNKNOWN_VOLUME_HEALTH_TYPE) by its number, and every number outside the enum under
    /// one label value, `other`, so a driver cannot grow the series without bound.
    pub fn observe_unknown_condition(&self, status: i32) {
        self.unknown_conditions
            .with_label_values(&[unknown_condition_label(status)])
            .inc();
    }

    /// Room for `n` volume series, taken while there are none yet (the first sweep knows how
    /// many PVs it will report), so the series do not grow by doubling into spare room.
    pub fn reserve_volumes(&self, n: usize) {
        let mut volumes = crate::sync::lock(&self.volumes);
        if volumes.is_empty() {
            volumes.reserve(n);
        }
    }

    /// Keeps the series of the PVs `keep` accepts and drops the rest (deleted, or no longer
    /// ours), so a volume's series disappears with its PV.
    pub fn retain_volumes(&self, keep: impl Fn(&str) -> bool) {
        crate::sync::lock(&self.volumes).retain(|s| keep(&s.pv));
    }

    /// One health check: `method` is a listing (`ListVolumes`, `ControllerListVolumeHealth`:
    /// one per sweep, `result` `ok` or `error`) or a per-volume call (`ControllerGetVolume`,
    /// `ControllerGetVolumeHealth`: `normal`, `abnormal`, `not_found`, `error`).
    pub fn observe_probe(&self, method: &str, result: &str, seconds: f64) {
        let driver = self.driver();
        self.probe_total
            .with_label_values(&[&*driver, method, result])
            .inc();
        self.probe_duration
            .with_label_values(&[&*driver, method])
            .observe(seconds);
    }

    pub fn set_last_sweep(&self, unix_seconds: f64) {
        let driver = self.driver();
        self.last_sweep
            .with_label_values(&[&*driver])
            .set(unix_seconds);
    }

    /// `csi_volume_health_missing_suppressed`: how many volumes the mass-absence guard held
    /// back in the last ListVolumes sweep (0 when it did not trip).
    pub fn set_missing_suppressed(&self, count: usize) {
        let driver = self.driver();
        self.missing_suppressed
            .with_label_values(&[&*driver])
            .set(count as f64);
    }

    /// One Kubernetes API request: `code` is the HTTP status (or `<error>` when none came back),
    /// `method` the HTTP verb.
    pub fn observe_rest_request(&self, code: &str, method: &str, host: &str) {
        self.rest_requests
            .with_label_values(&[code, method, host])
            .inc();
    }

    /// `leader_election_master_status{name="<lease>"}` at 0 (standing by) from now on, and the
    /// gauge the lease loop sets to 1 while it leads. Only called with `--leader-election`:
    /// without it the series does not exist, as in client-go.
    pub fn leader_gauge(&self, lease_name: &str) -> Gauge {
        let g = self.leader.with_label_values(&[lease_name]);
        g.set(0.0);
        g
    }

    /// Text exposition format 0.0.4. An encoding error leaves what was written so far, as
    /// promhttp serves partial output.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out) {
            log::error!(err:% = e; "Failed to encode metrics");
        }
        out
    }
}

#[cold]
fn unreachable_metric<T>(e: prometheus::Error) -> T {
    // Only reachable through an invalid metric or label name in this file: a programming error
    // that every test run would hit first.
    panic!("invalid metric definition: {e}")
}

/// Unix start time of this process from procfs; now when procfs is unreadable.
pub fn process_start_time() -> f64 {
    let from_proc = || -> Option<f64> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let proc_stat = std::fs::read_to_string("/proc/stat").ok()?;
        start_time_from_proc(&stat, &proc_stat)
    };
    from_proc().unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0)
    })
}

/// `btime` (boot time, from `/proc/stat`) plus `starttime` (field 22 of `/proc/self/stat`, in
/// clock ticks since boot). The command name (field 2) may contain spaces and parentheses, so
/// fields are counted from the last `)`.
pub fn start_time_from_proc(self_stat: &str, proc_stat: &str) -> Option<f64> {
    let after_comm = &self_stat[self_stat.rfind(')')? + 1..];
    // After the comm come fields 3 (state), 4, ...; starttime is field 22.
    let ticks: u64 = after_comm.split_whitespace().nth(22 - 3)?.parse().ok()?;
    let btime: u64 = proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())?;
    Some(btime as f64 + ticks as f64 / USER_HZ)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The PV store's side of the volume series: claims by PV.
    #[derive(Clone, Default)]
    struct Claims(Arc<Mutex<HashMap<String, (String, String)>>>);

    impl Claims {
        fn of(m: &Metrics) -> Claims {
            let c = Claims::default();
            let map = c.0.clone();
            m.label_volumes(Box::new(move |pv| map.lock().unwrap().get(pv).cloned()));
            c
        }
    }

    impl Claims {
        /// `status` for `pv`, bound to `namespace/pvc`.
        fn set(&self, m: &Metrics, namespace: &str, pvc: &str, pv: &str, status: VolumeStatus) {
            self.0
                .lock()
                .unwrap()
                .insert(pv.into(), (namespace.into(), pvc.into()));
            m.set_volume_status(&Arc::from(pv), status);
        }
    }

    /// One sample line of the text format: name, labels in output order, value.
    #[derive(Debug, Clone, PartialEq)]
    struct Sample {
        name: String,
        labels: Vec<(String, String)>,
        value: String,
    }

    fn parse_samples(text: &str) -> Vec<Sample> {
        let mut out = Vec::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (series, value) = line.rsplit_once(' ').expect("sample line has a value");
            let (name, labels) = match series.find('{') {
                Some(i) => {
                    let inner = series[i + 1..]
                        .strip_suffix('}')
                        .expect("labels end with }");
                    let labels = inner
                        .split("\",")
                        .filter(|p| !p.is_empty())
                        .map(|p| {
                            let (k, v) = p.split_once("=\"").expect("label is k=\"v\"");
                            (k.to_string(), v.trim_end_matches('"').to_string())
                        })
                        .collect();
                    (&series[..i], labels)
                }
                None => (series, Vec::new()),
            };
            out.push(Sample {
                name: name.to_string(),
                labels,
                value: value.to_string(),
            });
        }
        out
    }

    fn label<'a>(s: &'a Sample, k: &str) -> Option<&'a str> {
        s.labels
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }

    fn series<'a>(samples: &'a [Sample], name: &str) -> Vec<&'a Sample> {
        samples.iter().filter(|s| s.name == name).collect()
    }

    #[test]
    fn upstream_metrics_help_type_and_buckets() {
        let m = Metrics::with_start_time(1234.5);
        m.observe_csi_call("/csi.v1.Identity/Probe", "OK", 0.3);
        let text = m.encode();
        assert!(text.contains(
            "# HELP csi_sidecar_operations_seconds [ALPHA] Container Storage Interface operation duration with gRPC error code status total\n# TYPE csi_sidecar_operations_seconds histogram\n"
        ));
        assert!(text.contains(
            "# HELP process_start_time_seconds [ALPHA] Start time of the process since unix epoch in seconds.\n# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds 1234.5\n"
        ));
        let samples = parse_samples(&text);
        let buckets: Vec<&str> = series(&samples, "csi_sidecar_operations_seconds_bucket")
            .iter()
            .map(|s| label(s, "le").unwrap())
            .collect();
        assert_eq!(
            buckets,
            [
                "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "15", "25", "50", "120", "300", "600",
                "+Inf"
            ]
        );
        let counts: Vec<&str> = series(&samples, "csi_sidecar_operations_seconds_bucket")
            .iter()
            .map(|s| s.value.as_str())
            .collect();
        assert_eq!(
            counts,
            ["0", "0", "1", "1", "1", "1", "1", "1", "1", "1", "1", "1", "1", "1"]
        );
        let count = series(&samples, "csi_sidecar_operations_seconds_count");
        // Exposition sorts label names, as Go's client does: same bytes as upstream.
        let names: Vec<&str> = count[0].labels.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["driver_name", "grpc_status_code", "method_name"]);
        assert_eq!(label(count[0], "driver_name"), Some(UNKNOWN_DRIVER));
        assert_eq!(
            label(count[0], "method_name"),
            Some("/csi.v1.Identity/Probe")
        );
        assert_eq!(label(count[0], "grpc_status_code"), Some("OK"));
    }

    #[test]
    fn driver_name_applies_to_later_observations_only() {
        let m = Metrics::with_start_time(0.0);
        m.observe_csi_call("/csi.v1.Identity/Probe", "OK", 0.01);
        m.set_driver_name("hostpath.csi.k8s.io");
        m.observe_csi_call("/csi.v1.Identity/GetPluginInfo", "DeadlineExceeded", 0.01);
        let samples = parse_samples(&m.encode());
        let counts = series(&samples, "csi_sidecar_operations_seconds_count");
        let pairs: Vec<(Option<&str>, Option<&str>)> = counts
            .iter()
            .map(|s| (label(s, "driver_name"), label(s, "method_name")))
            .collect();
        assert_eq!(pairs.len(), 2);
        assert!(pairs.contains(&(Some(UNKNOWN_DRIVER), Some("/csi.v1.Identity/Probe"))));
        assert!(pairs.contains(&(
            Some("hostpath.csi.k8s.io"),
            Some("/csi.v1.Identity/GetPluginInfo")
        )));
    }

    #[test]
    fn nothing_but_start_time_before_any_observation() {
        let m = Metrics::with_start_time(1.0);
        let names: Vec<String> = parse_samples(&m.encode())
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names, ["process_start_time_seconds"]);
    }

    #[test]
    fn dropped_events_are_read_from_the_recorder_at_scrape_time() {
        let m = Metrics::with_start_time(0.0);
        let n = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let seen = n.clone();
        m.set_events_dropped(Box::new(move || {
            vec![
                (
                    "queue_full",
                    seen.load(std::sync::atomic::Ordering::Relaxed),
                ),
                ("repeat_displaced", 1),
            ]
        }));
        let text = m.encode();
        assert!(
            text.contains("# TYPE csi_volume_health_events_dropped_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("csi_volume_health_events_dropped_total{reason=\"queue_full\"} 0\n"),
            "{text}"
        );
        n.store(3, std::sync::atomic::Ordering::Relaxed);
        let text = m.encode();
        assert!(text.contains("csi_volume_health_events_dropped_total{reason=\"queue_full\"} 3\n"));
        assert!(
            text.contains(
                "csi_volume_health_events_dropped_total{reason=\"repeat_displaced\"} 1\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn health_mode_series() {
        let m = Metrics::with_start_time(0.0);
        let claims = Claims::of(&m);
        m.set_driver_name("d");
        m.start_status_writes();
        let samples = parse_samples(&m.encode());
        assert_eq!(
            series(&samples, "csi_volume_health_status_writes_total").len(),
            4
        );
        assert_eq!(
            series(&samples, "csi_volume_health_status_writes_dropped_total")[0].value,
            "0"
        );
        m.observe_status_write("dropped");
        m.observe_unknown_condition(9);
        claims.set(&m, "ns", "claim-a", "pv-a", VolumeStatus::Abnormal);
        m.set_volume_conditions(
            "pv-a",
            vec![
                ("Inaccessible".into(), "DiskGone".into()),
                ("Degraded".into(), "Slow".into()),
            ],
        );
        let text = m.encode();
        let samples = parse_samples(&text);
        assert_eq!(
            series(&samples, "csi_volume_health_status_writes_dropped_total")[0].value,
            "1"
        );
        let unknown = series(&samples, "csi_volume_health_unknown_condition_total");
        assert_eq!(
            (label(unknown[0], "status"), unknown[0].value.as_str()),
            (Some("other"), "1")
        );
        // Issue #25: every number outside the enum shares one series.
        for n in [4, 9, 1000, i32::MAX, -1, i32::MIN] {
            m.observe_unknown_condition(n);
        }
        m.observe_unknown_condition(0);
        let samples = parse_samples(&m.encode());
        let unknown = series(&samples, "csi_volume_health_unknown_condition_total");
        let mut got: Vec<(Option<&str>, &str)> = unknown
            .iter()
            .map(|s| (label(s, "status"), s.value.as_str()))
            .collect();
        got.sort();
        assert_eq!(got, vec![(Some("0"), "1"), (Some("other"), "7")]);
        let conds = series(&samples, "csi_controller_volume_health_status");
        assert_eq!(conds.len(), 2, "{text}");
        let c = conds
            .iter()
            .find(|s| label(s, "reason") == Some("DiskGone"))
            .unwrap();
        for (k, v) in [
            ("driver_name", "d"),
            ("namespace", "ns"),
            ("persistentvolumeclaim", "claim-a"),
            ("status", "Inaccessible"),
        ] {
            assert_eq!(label(c, k), Some(v), "{k}");
        }
        assert!(text.contains("# TYPE csi_controller_volume_health_status gauge\n"));
        // recovery, then the PV gone
        m.set_volume_conditions("pv-a", Vec::new());
        assert!(series(
            &parse_samples(&m.encode()),
            "csi_controller_volume_health_status"
        )
        .is_empty());
        m.set_volume_conditions("pv-a", vec![("Degraded".into(), "Slow".into())]);
        m.retain_volumes(|_| false);
        assert!(series(
            &parse_samples(&m.encode()),
            "csi_controller_volume_health_status"
        )
        .is_empty());
    }

    #[test]
    fn volume_status_keeps_one_series_per_pv_and_disappears_with_it() {
        let m = Metrics::with_start_time(0.0);
        let claims = Claims::of(&m);
        m.set_driver_name("d");
        claims.set(&m, "ns", "claim-a", "pv-a", VolumeStatus::Normal);
        claims.set(&m, "ns", "claim-b", "pv-b", VolumeStatus::Abnormal);
        claims.set(&m, "ns", "claim-a", "pv-a", VolumeStatus::NotFound);
        let text = m.encode();
        assert!(text.contains("# TYPE csi_volume_health_status gauge\n"));
        let samples = parse_samples(&text);
        let st = series(&samples, "csi_volume_health_status");
        assert_eq!(st.len(), 2, "{text}");
        let a = st
            .iter()
            .find(|s| label(s, "persistentvolume") == Some("pv-a"))
            .unwrap();
        assert_eq!(
            a.labels,
            [
                ("driver_name", "d"),
                ("namespace", "ns"),
                ("persistentvolume", "pv-a"),
                ("persistentvolumeclaim", "claim-a"),
                ("status", "not_found")
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        );
        assert_eq!(a.value, "1");

        m.retain_volumes(|pv| pv != "pv-a");
        let samples = parse_samples(&m.encode());
        let st = series(&samples, "csi_volume_health_status");
        assert_eq!(st.len(), 1);
        assert_eq!(label(st[0], "persistentvolume"), Some("pv-b"));
        assert_eq!(label(st[0], "status"), Some("abnormal"));
        m.retain_volumes(|pv| pv == "never-seen");
        assert!(series(&parse_samples(&m.encode()), "csi_volume_health_status").is_empty());
    }

    #[test]
    fn rebinding_a_pv_moves_its_series() {
        let m = Metrics::with_start_time(0.0);
        let claims = Claims::of(&m);
        claims.set(&m, "ns1", "c1", "pv", VolumeStatus::Normal);
        claims.set(&m, "ns2", "c2", "pv", VolumeStatus::Normal);
        let samples = parse_samples(&m.encode());
        let st = series(&samples, "csi_volume_health_status");
        assert_eq!(st.len(), 1);
        assert_eq!(label(st[0], "namespace"), Some("ns2"));
    }

    #[test]
    fn probes_sweeps_and_rest_requests() {
        let m = Metrics::with_start_time(0.0);
        m.set_driver_name("d");
        m.observe_probe("ControllerGetVolume", "abnormal", 0.2);
        m.observe_probe("ControllerGetVolume", "abnormal", 0.3);
        m.observe_probe("ListVolumes", "error", 0.3);
        m.set_last_sweep(1700000000.5);
        m.set_missing_suppressed(2000);
        m.observe_rest_request("200", "GET", "10.0.0.1:6443");
        m.observe_rest_request("200", "GET", "10.0.0.1:6443");
        m.observe_rest_request("409", "PUT", "10.0.0.1:6443");
        let text = m.encode();
        for t in [
            "# TYPE csi_volume_health_probe_total counter",
            "# TYPE csi_volume_health_probe_duration_seconds histogram",
            "# TYPE csi_volume_health_last_sweep_timestamp_seconds gauge",
            "# TYPE rest_client_requests_total counter",
        ] {
            assert!(text.contains(t), "{t} missing in {text}");
        }
        let samples = parse_samples(&text);
        let probe = series(&samples, "csi_volume_health_probe_total");
        let cgv = probe
            .iter()
            .find(|s| label(s, "method") == Some("ControllerGetVolume"))
            .unwrap();
        assert_eq!(
            (
                label(cgv, "result"),
                label(cgv, "driver_name"),
                cgv.value.as_str()
            ),
            (Some("abnormal"), Some("d"), "2")
        );
        let dur = series(&samples, "csi_volume_health_probe_duration_seconds_count");
        assert_eq!(dur.len(), 2);
        let sweep = series(&samples, "csi_volume_health_last_sweep_timestamp_seconds");
        assert_eq!(sweep[0].value, "1700000000.5");
        let suppressed = series(&samples, "csi_volume_health_missing_suppressed");
        assert_eq!(
            (
                label(suppressed[0], "driver_name"),
                suppressed[0].value.as_str()
            ),
            (Some("d"), "2000")
        );
        let rest = series(&samples, "rest_client_requests_total");
        let names: Vec<&str> = rest[0].labels.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["code", "host", "method"]);
        let get = rest
            .iter()
            .find(|s| label(s, "method") == Some("GET"))
            .unwrap();
        assert_eq!(get.value, "2");
    }

    #[test]
    fn leader_gauge_exists_only_when_asked_for_and_follows_the_lease() {
        let m = Metrics::with_start_time(0.0);
        assert!(!m.encode().contains("leader_election_master_status"));
        let status = crate::leader::LeaderStatus::with_gauge(m.leader_gauge("lease-a"));
        let value = |m: &Metrics| {
            let samples = parse_samples(&m.encode());
            let g = series(&samples, "leader_election_master_status");
            assert_eq!(g.len(), 1, "{g:?}");
            assert_eq!(g[0].labels, [("name".to_string(), "lease-a".to_string())]);
            g[0].value.clone()
        };
        // Standing by from the start, leading once acquired, and back at 0 when lost or
        // released (both end in mark_stopped).
        assert_eq!(value(&m), "0");
        let t = std::time::Instant::now();
        status.mark_leading(t);
        assert_eq!(value(&m), "1");
        status.mark_renewed(t);
        assert_eq!(value(&m), "1");
        status.mark_stopped();
        assert_eq!(value(&m), "0");
        assert!(!status.is_leader());
        assert!(m.encode().contains("# HELP leader_election_master_status [ALPHA] Gauge of if the reporting system is master of the relevant lease, 0 indicates backup, 1 indicates master. 'name' is the string used to identify the lease. Please make sure to group by name.\n# TYPE leader_election_master_status gauge\n"));
        // A status without a gauge (the leader module's own tests) changes nothing here.
        crate::leader::LeaderStatus::new().mark_leading(t);
        assert_eq!(value(&m), "0");
    }

    #[test]
    fn start_time_from_procfs() {
        // comm with a space and a parenthesis; starttime (field 22) = 12345 ticks.
        let stat = "4242 (my (proc) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 12345 1000 200 18446744073709551615";
        let proc_stat = "cpu  1 2 3\nbtime 1700000000\nprocesses 10\n";
        assert_eq!(start_time_from_proc(stat, proc_stat), Some(1700000123.45));
        assert_eq!(start_time_from_proc(stat, "cpu 1\n"), None);
        assert_eq!(start_time_from_proc("garbage", proc_stat), None);
        assert_eq!(start_time_from_proc("1 (x) S 1", proc_stat), None);
    }

    #[test]
    fn real_process_start_time_is_in_the_past() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let t = process_start_time();
        assert!(t > 1.0e9 && t <= now + 1.0, "{t} vs {now}");
    }
}
