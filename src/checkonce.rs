//! `--check-once` (DESIGN §3.7): what the driver says about every volume right now, asked once
//! in the mode the daemon would monitor in, printed as one line per volume and a summary (or one
//! JSON document), with an exit code a script can act on: 0 all healthy, 1 anything else.
//!
//! The CSI side is the daemon's own: the same connection, probe, capability check and mode
//! choice (`app::connect_driver`, `app::choose_mode`), so a driver the daemon refuses is refused
//! here with the same message. The API server is only read: this driver's PVs, for their PV and
//! PVC names and, in the per-volume modes, for the volumes to ask about. Nothing is written.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde::Serialize;

use crate::app;
use crate::config::{CheckOutput, Config};
use crate::csi::{self, Condition, HealthSource, Mode};
use crate::health::{self, Severity};
use crate::kube::{self, Client, Pager};
use crate::monitor::{decide, list};
use crate::shutdown::Shutdown;
use crate::watch::{PvRecord, PvWire, PAGE_SIZE};

/// Every volume is healthy.
pub const EXIT_HEALTHY: i32 = 0;
/// A volume is abnormal or missing, the driver answered an error, or it could not be asked.
pub const EXIT_UNHEALTHY: i32 = 1;
/// The command line cannot work (Go's `flag` exit code, as for a bad flag).
pub const EXIT_USAGE: i32 = 2;

/// Why no report could be made.
#[derive(Debug)]
pub enum Error {
    /// Connecting to, probing or naming the driver failed, or it cannot be monitored: the
    /// daemon's own message.
    Driver(app::Fatal),
    /// `--kubeconfig` was given and cannot be used.
    KubeConfig(kube::Error),
    /// A per-volume mode needs this driver's PVs and no API server is configured (no
    /// `--kubeconfig`, not in a cluster): a usage error.
    NeedsApiServer {
        mode: &'static str,
        why: kube::Error,
    },
    /// A per-volume mode needs this driver's PVs and listing them failed.
    ListPvs {
        mode: &'static str,
        err: kube::Error,
    },
}

impl Error {
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::NeedsApiServer { .. } => EXIT_USAGE,
            _ => EXIT_UNHEALTHY,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Driver(m) => m.fmt(f),
            // The daemon's words for the same failure.
            Error::KubeConfig(e) => write!(f, "Failed to build a Kubernetes config err=\"{e}\""),
            Error::NeedsApiServer { mode, why } => write!(
                f,
                "--check-once in {mode} mode asks the driver about each PersistentVolume of this driver, which needs the API server: pass --kubeconfig, or run it in the cluster (in-cluster config: {why})"
            ),
            Error::ListPvs { mode, err } => write!(
                f,
                "--check-once in {mode} mode cannot list the PersistentVolumes of this driver to ask about: {err}"
            ),
        }
    }
}

impl std::error::Error for Error {}

/// One adverse condition as the driver said it: v1.12 has only a message (status `Abnormal`,
/// no reason); v1.13 a status (Kubernetes' name for it), a reason and a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Shown {
    pub status: String,
    pub reason: String,
    pub message: String,
}

/// What one volume's check found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Outcome {
    Healthy,
    Abnormal {
        conditions: Vec<Shown>,
    },
    /// The driver does not know the volume (NOT_FOUND, or absent from a v1.12 listing it could
    /// not be asked about otherwise); the message is the Event the daemon would write.
    NotFound {
        message: String,
    },
    /// The driver's call about this volume failed.
    Error {
        error: String,
    },
}

impl Outcome {
    fn word(&self) -> &'static str {
        match self {
            Outcome::Healthy => "healthy",
            Outcome::Abnormal { .. } => "abnormal",
            Outcome::NotFound { .. } => "not_found",
            Outcome::Error { .. } => "error",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClaimName {
    pub namespace: String,
    pub name: String,
}

/// One volume of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VolumeLine {
    /// The CSI volume id (the PV's `spec.csi.volumeHandle`).
    pub volume: String,
    pub pv: Option<String>,
    pub pvc: Option<ClaimName>,
    #[serde(flatten)]
    pub outcome: Outcome,
    /// How the answer came about, when not simply from the mode's RPC.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub volumes: usize,
    pub healthy: usize,
    pub abnormal: usize,
    pub not_found: usize,
    pub error: usize,
}

/// The whole answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub driver: String,
    /// The mode's RPC (`ListVolumes`, `ControllerGetVolume`, `ControllerListVolumeHealth`,
    /// `ControllerGetVolumeHealth`).
    pub mode: &'static str,
    /// The driver's PVs were read from the API server: PV and PVC names are known.
    pub pvs_known: bool,
    /// The listing failed, so nothing is known of any volume.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listing_error: Option<String>,
    pub volumes: Vec<VolumeLine>,
    pub summary: Summary,
}

impl Report {
    pub fn new(
        driver: &str,
        mode: Mode,
        pvs_known: bool,
        listing_error: Option<String>,
        mut volumes: Vec<VolumeLine>,
    ) -> Report {
        volumes.sort_by(|a, b| a.volume.cmp(&b.volume).then_with(|| a.pv.cmp(&b.pv)));
        let mut summary = Summary {
            volumes: volumes.len(),
            ..Summary::default()
        };
        for v in &volumes {
            match v.outcome {
                Outcome::Healthy => summary.healthy += 1,
                Outcome::Abnormal { .. } => summary.abnormal += 1,
                Outcome::NotFound { .. } => summary.not_found += 1,
                Outcome::Error { .. } => summary.error += 1,
            }
        }
        Report {
            driver: driver.to_string(),
            mode: mode.name(),
            pvs_known,
            listing_error,
            volumes,
            summary,
        }
    }

    pub fn exit_code(&self) -> i32 {
        if self.listing_error.is_none() && self.summary.healthy == self.summary.volumes {
            EXIT_HEALTHY
        } else {
            EXIT_UNHEALTHY
        }
    }
}

/// The conditions as the driver sent them: known v1.13 statuses by their Kubernetes name, an
/// unknown one by its number (the daemon takes it as Degraded; here the driver's own value is
/// the point).
pub fn shown(conditions: &[Condition]) -> Vec<Shown> {
    conditions
        .iter()
        .map(|c| Shown {
            status: match c.severity {
                Severity::Abnormal => "Abnormal".to_string(),
                Severity::Typed(t) => health::status_name(t)
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("unknown status {t}")),
            },
            reason: c.reason.clone(),
            message: c.message.clone(),
        })
        .collect()
}

/// One answer about `volume`: no condition is healthy, NOT_FOUND is missing (with the message
/// the daemon's Event would carry), any other error is that error.
pub fn outcome(answer: Result<Vec<Condition>, csi::Error>, volume: &str, driver: &str) -> Outcome {
    match answer {
        Ok(c) if c.is_empty() => Outcome::Healthy,
        Ok(c) => Outcome::Abnormal {
            conditions: shown(&c),
        },
        Err(e) if e.is_not_found() => Outcome::NotFound {
            message: decide::missing_message(volume, driver),
        },
        Err(e) => Outcome::Error {
            error: e.to_string(),
        },
    }
}

fn line(volume: &str, pv: Option<&PvRecord>, outcome: Outcome, note: Option<String>) -> VolumeLine {
    VolumeLine {
        volume: volume.to_string(),
        pv: pv.map(|p| p.name().to_string()),
        pvc: pv.and_then(|p| p.claim()).map(|c| ClaimName {
            namespace: c.namespace.to_string(),
            name: c.name.to_string(),
        }),
        outcome,
        note,
    }
}

/// The PVs the daemon would check (Bound, live, with a claim and a handle).
pub fn checkable(pvs: Vec<PvRecord>) -> Vec<PvRecord> {
    pvs.into_iter()
        .filter(|pv| decide::checkable(pv).is_ok())
        .collect()
}

/// The lines of a complete listing: every listed volume (with its PV and PVC when one of
/// `pvs` has its handle), and, when the PVs are known, each PV absent from the listing as
/// `absent` decides (it may ask the driver).
pub fn listing_lines(
    listed: HashMap<String, Vec<Condition>>,
    pvs: Option<&[PvRecord]>,
    driver: &str,
    mut absent: impl FnMut(&PvRecord) -> (Outcome, String),
) -> Vec<VolumeLine> {
    let by_handle: HashMap<&str, &PvRecord> = pvs
        .unwrap_or_default()
        .iter()
        .map(|pv| (pv.volume_handle(), pv))
        .collect();
    let mut out = Vec::with_capacity(listed.len());
    for pv in pvs.unwrap_or_default() {
        if !listed.contains_key(pv.volume_handle()) {
            let (o, note) = absent(pv);
            out.push(line(pv.volume_handle(), Some(pv), o, Some(note)));
        }
    }
    for (volume, conditions) in listed {
        let pv = by_handle.get(volume.as_str()).copied();
        let note = (pvs.is_some() && pv.is_none())
            .then(|| "no Bound PersistentVolume of this driver has this volume".to_string());
        let o = outcome(Ok(conditions), &volume, driver);
        out.push(line(&volume, pv, o, note));
    }
    out
}

/// Control characters as escapes, so that every volume stays on one line whatever a driver
/// puts in a message.
pub fn one_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&c.escape_unicode().to_string()),
            c => out.push(c),
        }
    }
    out
}

/// `Status: reason: message` per condition, joined by `; ` (the v1.13 Event message's form); a
/// v1.12 condition is its message.
fn conditions_text(conditions: &[Shown]) -> String {
    conditions
        .iter()
        .map(|c| {
            if c.status == "Abnormal" && c.reason.is_empty() {
                return one_line(&c.message);
            }
            let mut parts = vec![c.status.as_str()];
            if !c.reason.is_empty() {
                parts.push(&c.reason);
            }
            if !c.message.is_empty() {
                parts.push(&c.message);
            }
            one_line(&parts.join(": "))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The text form: one line per volume (`<volume>  pv=<pv>  pvc=<namespace>/<name>  <result>
/// [details] [(note)]`, `-` for a name not known), columns aligned, then the listing's error if
/// it failed, then the summary line.
pub fn render_text(r: &Report) -> String {
    let cells: Vec<[String; 3]> = r
        .volumes
        .iter()
        .map(|v| {
            [
                one_line(&v.volume),
                format!("pv={}", v.pv.as_deref().map(one_line).unwrap_or("-".into())),
                format!(
                    "pvc={}",
                    v.pvc
                        .as_ref()
                        .map(|c| one_line(&format!("{}/{}", c.namespace, c.name)))
                        .unwrap_or("-".into())
                ),
            ]
        })
        .collect();
    let width = |i: usize| {
        cells
            .iter()
            .map(|c| c[i].chars().count())
            .max()
            .unwrap_or(0)
    };
    let widths = [width(0), width(1), width(2)];
    let mut out = String::new();
    for (v, c) in r.volumes.iter().zip(&cells) {
        for (cell, w) in c.iter().zip(widths) {
            out.push_str(cell);
            out.push_str(&" ".repeat(w - cell.chars().count() + 2));
        }
        out.push_str(v.outcome.word());
        match &v.outcome {
            Outcome::Healthy => {}
            Outcome::Abnormal { conditions } => {
                out.push_str(": ");
                out.push_str(&conditions_text(conditions));
            }
            Outcome::NotFound { message } => {
                out.push_str(": ");
                out.push_str(&one_line(message));
            }
            Outcome::Error { error } => {
                out.push_str(": ");
                out.push_str(&one_line(error));
            }
        }
        if let Some(n) = &v.note {
            out.push_str(&format!(" ({})", one_line(n)));
        }
        out.push('\n');
    }
    if let Some(e) = &r.listing_error {
        out.push_str(&format!("{} failed: {}\n", r.mode, one_line(e)));
    }
    let s = &r.summary;
    out.push_str(&format!(
        "summary: {} volumes, {} healthy, {} abnormal, {} not found, {} errors{}; driver {}, mode {}{}\n",
        s.volumes,
        s.healthy,
        s.abnormal,
        s.not_found,
        s.error,
        if r.listing_error.is_some() {
            ", listing failed"
        } else {
            ""
        },
        one_line(&r.driver),
        r.mode,
        if r.pvs_known {
            ""
        } else {
            "; PV and PVC names unknown (no API server)"
        }
    ));
    out
}

/// The JSON form: one document, the [`Report`] as it is.
pub fn render_json(r: &Report) -> String {
    let mut s = serde_json::to_string_pretty(r).unwrap_or_else(|e| {
        // Plain structs of strings and numbers always serialize; still no panic.
        serde_json::json!({ "error": format!("cannot encode the report: {e}") }).to_string()
    });
    s.push('\n');
    s
}

/// The JSON form of a failure: `{"error": "<message>"}`.
pub fn render_json_error(e: &Error) -> String {
    let mut s = serde_json::json!({ "error": e.to_string() }).to_string();
    s.push('\n');
    s
}

/// Runs the check and prints the report to stdout (failures are also logged, as the daemon
/// logs them); returns the exit code.
pub fn run(cfg: &Config, output: CheckOutput) -> i32 {
    match check(cfg) {
        Ok(report) => {
            print!(
                "{}",
                match output {
                    CheckOutput::Text => render_text(&report),
                    CheckOutput::Json => render_json(&report),
                }
            );
            report.exit_code()
        }
        Err(e) => {
            match &e {
                Error::Driver(fatal) => fatal.log(log::Level::Error),
                Error::KubeConfig(err) => {
                    log::error!(err:% = err; "Failed to build a Kubernetes config")
                }
                _ => log::error!("{e}"),
            }
            log::logger().flush();
            if output == CheckOutput::Json {
                print!("{}", render_json_error(&e));
            }
            e.exit_code()
        }
    }
}

/// Why this driver's PVs are not known.
enum NoPvs {
    /// No `--kubeconfig` and no in-cluster configuration.
    Unconfigured(kube::Error),
    Failed(Error),
}

fn read_pvs(cfg: &Config, driver: &str, mode: Mode) -> Result<Vec<PvRecord>, NoPvs> {
    let kube_cfg = kube::load_config(cfg.kubeconfig.as_deref()).map_err(|e| {
        if cfg.kubeconfig.is_some() {
            NoPvs::Failed(Error::KubeConfig(e))
        } else {
            NoPvs::Unconfigured(e)
        }
    })?;
    let client = Client::new(
        kube_cfg,
        cfg.kube_api_qps,
        cfg.kube_api_burst,
        &app::user_agent(),
    )
    .map_err(|e| NoPvs::Failed(Error::KubeConfig(e)))?;
    let mut pvs = Vec::new();
    Pager::new(&client, "/api/v1/persistentvolumes", &[], PAGE_SIZE)
        .for_each(&mut |raw| {
            if let Some(w) = kube::object::decode::<PvWire>(raw, "PersistentVolume", "check-once") {
                pvs.extend(PvRecord::from_wire(w, driver));
            }
        })
        .map_err(|err| {
            NoPvs::Failed(Error::ListPvs {
                mode: mode.name(),
                err,
            })
        })?;
    Ok(checkable(pvs))
}

fn check(cfg: &Config) -> Result<Report, Error> {
    let shutdown = Shutdown::new();
    // No metrics here: nobody scrapes a one-shot process.
    let observer: csi::CallObserver = Arc::new(|_: &str, _: &str, _: f64| {});
    let (conn, driver) = app::connect_driver(cfg, observer, &shutdown).map_err(Error::Driver)?;
    let (caps, mode) = app::choose_mode(&conn, &driver, cfg).map_err(Error::Driver)?;
    let source = csi::Rpcs {
        conn: Arc::new(conn),
        generation: mode.generation(),
    };
    let pvs = match read_pvs(cfg, &driver, mode) {
        Ok(pvs) => Some(pvs),
        // A listing needs nothing from the API server; the names are a help, not a must.
        Err(NoPvs::Unconfigured(e)) if mode.is_list() => {
            log::info!(err:% = e; "No API server configured, volumes are shown without their PV and PVC names");
            None
        }
        Err(NoPvs::Failed(e @ Error::ListPvs { .. })) if mode.is_list() => {
            log::warn!("Volumes are shown without their PV and PVC names: {e}");
            None
        }
        Err(NoPvs::Unconfigured(why)) => {
            return Err(Error::NeedsApiServer {
                mode: mode.name(),
                why,
            })
        }
        Err(NoPvs::Failed(e)) => return Err(e),
    };
    let pvs_known = pvs.is_some();
    if !mode.is_list() {
        let lines = pvs
            .unwrap_or_default()
            .iter()
            .map(|pv| {
                let o = outcome(source.get(pv.volume_handle()), pv.volume_handle(), &driver);
                line(pv.volume_handle(), Some(pv), o, None)
            })
            .collect();
        return Ok(Report::new(&driver, mode, pvs_known, None, lines));
    }
    let bound = list::ListingBound::new(
        std::time::Instant::now(),
        cfg.list_volumes_interval,
        cfg.timeout,
        pvs.as_ref().map_or(0, Vec::len),
    );
    let listed = match list::collect(
        &source,
        cfg.list_volumes_max_entries,
        bound,
        list::Listed::named(),
    ) {
        Ok(listing) => listing,
        Err(e) => {
            return Ok(Report::new(
                &driver,
                mode,
                pvs_known,
                Some(e.to_string()),
                Vec::new(),
            ))
        }
    };
    // A PV absent from the listing: what the daemon would conclude, asked now where the
    // daemon would ask.
    let unjudged = &listed.unjudged;
    let absent = |pv: &PvRecord| -> (Outcome, String) {
        let h = pv.volume_handle();
        if unjudged.contains(h) {
            return (
                Outcome::Error {
                    error: csi::Error::unjudged(h).to_string(),
                },
                "listed without a condition".to_string(),
            );
        }
        match mode {
            Mode::ListVolumes if caps.get_volume => (
                outcome(source.get(h), h, &driver),
                "not in ListVolumes; answered by ControllerGetVolume".to_string(),
            ),
            Mode::ListVolumes => (
                Outcome::NotFound {
                    message: decide::missing_message(h, &driver),
                },
                "not in ListVolumes, and the driver has no GET_VOLUME to ask".to_string(),
            ),
            // Drivers leave healthy volumes out of this listing (volume-health-v1.13.md §3.3).
            _ => (
                Outcome::Healthy,
                "not in ControllerListVolumeHealth, which leaves healthy volumes out".to_string(),
            ),
        }
    };
    let lines = listing_lines(
        listed.volumes.into_named().unwrap_or_default(),
        pvs.as_deref(),
        &driver,
        absent,
    );
    Ok(Report::new(&driver, mode, pvs_known, None, lines))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watch::PvPhase;

    fn pv(name: &str, handle: &str, claim: &str) -> PvRecord {
        PvRecord::new(
            name,
            handle,
            PvPhase::Bound,
            Some(("ns", claim, &format!("uid-{claim}"))),
            false,
        )
        .unwrap()
    }

    fn rpc_error(code: &str) -> csi::Error {
        csi::Error::Rpc {
            method: csi::METHOD_GET_VOLUME,
            code: code.into(),
            message: "boom".into(),
        }
    }

    #[test]
    fn outcomes_of_one_answer() {
        assert_eq!(outcome(Ok(vec![]), "v", "d"), Outcome::Healthy);
        assert_eq!(
            outcome(Ok(vec![Condition::legacy("disk on fire")]), "v", "d"),
            Outcome::Abnormal {
                conditions: vec![Shown {
                    status: "Abnormal".into(),
                    reason: String::new(),
                    message: "disk on fire".into()
                }]
            }
        );
        assert_eq!(
            outcome(
                Ok(vec![
                    Condition::typed(2, "DiskGone", "gone"),
                    Condition::typed(9, "Future", "?")
                ]),
                "v",
                "d"
            ),
            Outcome::Abnormal {
                conditions: vec![
                    Shown {
                        status: "Inaccessible".into(),
                        reason: "DiskGone".into(),
                        message: "gone".into()
                    },
                    Shown {
                        status: "unknown status 9".into(),
                        reason: "Future".into(),
                        message: "?".into()
                    }
                ]
            }
        );
        assert_eq!(
            outcome(Err(rpc_error("NotFound")), "v", "d"),
            Outcome::NotFound {
                message: "Volume v was not found by CSI driver d".into()
            }
        );
        assert_eq!(
            outcome(Err(rpc_error("Unavailable")), "v", "d"),
            Outcome::Error {
                error: "/csi.v1.Controller/ControllerGetVolume: rpc error: code = Unavailable desc = boom"
                    .into()
            }
        );
    }

    #[test]
    fn only_what_the_daemon_checks() {
        let unbound = pv("pv-u", "u", "c").with_phase(PvPhase::Released);
        let deleting = pv("pv-d", "d", "c").with_deleting(true);
        let kept = checkable(vec![pv("pv-a", "a", "c"), unbound, deleting]);
        assert_eq!(kept.iter().map(|p| p.name()).collect::<Vec<_>>(), ["pv-a"]);
    }

    #[test]
    fn a_listing_with_and_without_the_pvs() {
        let listed: HashMap<String, Vec<Condition>> = [
            ("a".to_string(), vec![Condition::legacy("bad")]),
            ("stray".to_string(), vec![]),
        ]
        .into();
        let pvs = [pv("pv-a", "a", "claim-a"), pv("pv-b", "b", "claim-b")];
        let mut asked = Vec::new();
        let lines = listing_lines(listed.clone(), Some(&pvs), "d", |pv| {
            asked.push(pv.name().to_string());
            (Outcome::Healthy, "asked".into())
        });
        assert_eq!(asked, ["pv-b"], "only the absent PV is asked about");
        let r = Report::new("d", Mode::ListVolumes, true, None, lines);
        let got: Vec<(&str, Option<&str>, &str, Option<&str>)> = r
            .volumes
            .iter()
            .map(|v| {
                (
                    v.volume.as_str(),
                    v.pvc.as_ref().map(|c| c.name.as_str()),
                    v.outcome.word(),
                    v.note.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("a", Some("claim-a"), "abnormal", None),
                ("b", Some("claim-b"), "healthy", Some("asked")),
                (
                    "stray",
                    None,
                    "healthy",
                    Some("no Bound PersistentVolume of this driver has this volume")
                ),
            ]
        );
        assert_eq!(
            r.summary,
            Summary {
                volumes: 3,
                healthy: 2,
                abnormal: 1,
                not_found: 0,
                error: 0
            }
        );
        assert_eq!(r.exit_code(), EXIT_UNHEALTHY);

        // Without the PVs: the listing alone, no notes, nothing asked.
        let lines = listing_lines(listed, None, "d", |_| unreachable!());
        assert_eq!(lines.len(), 2);
        assert!(lines.iter().all(|l| l.pv.is_none() && l.note.is_none()));
    }

    #[test]
    fn exit_codes() {
        let healthy = |v: &str| line(v, None, Outcome::Healthy, None);
        let r = |lines, err| Report::new("d", Mode::GetVolume, true, err, lines);
        assert_eq!(r(vec![], None).exit_code(), EXIT_HEALTHY);
        assert_eq!(
            r(vec![healthy("a"), healthy("b")], None).exit_code(),
            EXIT_HEALTHY
        );
        for bad in [
            Outcome::Abnormal { conditions: vec![] },
            Outcome::NotFound {
                message: "m".into(),
            },
            Outcome::Error { error: "e".into() },
        ] {
            assert_eq!(
                r(vec![healthy("a"), line("b", None, bad.clone(), None)], None).exit_code(),
                EXIT_UNHEALTHY,
                "{bad:?}"
            );
        }
        assert_eq!(
            r(vec![], Some("listing failed".into())).exit_code(),
            EXIT_UNHEALTHY
        );
        let needs = Error::NeedsApiServer {
            mode: "ControllerGetVolume",
            why: kube::Error::Config {
                source: "in-cluster config".into(),
                field: "KUBERNETES_SERVICE_HOST".into(),
                message: "unset".into(),
            },
        };
        assert_eq!(needs.exit_code(), EXIT_USAGE);
        assert!(needs.to_string().contains("--kubeconfig"));
        assert_eq!(Error::Driver("x".into()).exit_code(), EXIT_UNHEALTHY);
    }

    #[test]
    fn text_form_aligns_names_and_keeps_each_volume_on_one_line() {
        let pvs = [pv("pv-a", "a", "claim-a"), pv("pv-long-name", "b", "c")];
        let lines = vec![
            line(
                "a",
                Some(&pvs[0]),
                Outcome::Abnormal {
                    conditions: vec![
                        Shown {
                            status: "Inaccessible".into(),
                            reason: "DiskGone".into(),
                            message: "gone\nfor good".into(),
                        },
                        Shown {
                            status: "Degraded".into(),
                            reason: "Slow".into(),
                            message: String::new(),
                        },
                    ],
                },
                None,
            ),
            line("b", Some(&pvs[1]), Outcome::Healthy, Some("asked".into())),
            line(
                "c-stray",
                None,
                Outcome::Abnormal {
                    conditions: shown(&[Condition::legacy("disk on fire")]),
                },
                None,
            ),
            line(
                "d",
                None,
                Outcome::Error {
                    error: "rpc error: code = Internal desc = x".into(),
                },
                None,
            ),
        ];
        let text = render_text(&Report::new(
            "hostpath.csi.k8s.io",
            Mode::HealthList { confirm: true },
            true,
            None,
            lines,
        ));
        assert_eq!(
            text,
            "\
a        pv=pv-a          pvc=ns/claim-a  abnormal: Inaccessible: DiskGone: gone\\nfor good; Degraded: Slow
b        pv=pv-long-name  pvc=ns/c        healthy (asked)
c-stray  pv=-             pvc=-           abnormal: disk on fire
d        pv=-             pvc=-           error: rpc error: code = Internal desc = x
summary: 4 volumes, 1 healthy, 2 abnormal, 0 not found, 1 errors; driver hostpath.csi.k8s.io, mode ControllerListVolumeHealth
"
        );
        let failed = render_text(&Report::new(
            "d",
            Mode::ListVolumes,
            false,
            Some("failed to list volumes: rpc error".into()),
            vec![],
        ));
        assert_eq!(
            failed,
            "ListVolumes failed: failed to list volumes: rpc error\n\
             summary: 0 volumes, 0 healthy, 0 abnormal, 0 not found, 0 errors, listing failed; driver d, mode ListVolumes; PV and PVC names unknown (no API server)\n"
        );
    }

    #[test]
    fn one_line_escapes_control_characters_only() {
        assert_eq!(one_line("a\nb\r\tc\u{7}ü"), "a\\nb\\r\\tc\\u{7}ü");
        assert_eq!(one_line("plain: text"), "plain: text");
    }

    #[test]
    fn json_form() {
        let pvs = [pv("pv-a", "a", "claim-a")];
        let r = Report::new(
            "d",
            Mode::HealthGet,
            true,
            None,
            vec![
                line(
                    "a",
                    Some(&pvs[0]),
                    Outcome::Abnormal {
                        conditions: shown(&[Condition::typed(3, "Lost", "bits gone")]),
                    },
                    None,
                ),
                line(
                    "b",
                    None,
                    Outcome::NotFound {
                        message: "Volume b was not found by CSI driver d".into(),
                    },
                    Some("n".into()),
                ),
            ],
        );
        let v: serde_json::Value = serde_json::from_str(&render_json(&r)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "driver": "d",
                "mode": "ControllerGetVolumeHealth",
                "pvs_known": true,
                "volumes": [
                    {"volume": "a", "pv": "pv-a", "pvc": {"namespace": "ns", "name": "claim-a"},
                     "result": "abnormal",
                     "conditions": [{"status": "DataLoss", "reason": "Lost", "message": "bits gone"}]},
                    {"volume": "b", "pv": null, "pvc": null, "result": "not_found",
                     "message": "Volume b was not found by CSI driver d", "note": "n"}
                ],
                "summary": {"volumes": 2, "healthy": 0, "abnormal": 1, "not_found": 1, "error": 0}
            })
        );
        let e: serde_json::Value =
            serde_json::from_str(&render_json_error(&Error::Driver("no driver".into()))).unwrap();
        assert_eq!(e, serde_json::json!({"error": "no driver"}));
    }
}
