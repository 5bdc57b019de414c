//! The monitor: turns what the driver says about volumes into Events on the bound PVCs and, for
//! CSI v1.13 drivers, into the PVCs' `status.healthStatus`.
//!
//! `Monitor` holds what every mode shares (stores, recorder, the per-PVC reported state and the
//! per-volume metrics); `list` runs the listing sweeps (ListVolumes, ControllerListVolumeHealth),
//! `get` schedules per-volume checks (ControllerGetVolume, ControllerGetVolumeHealth) on a worker
//! pool; `decide` holds the pure decisions and `status` the PVC status writes. Which RPCs answer
//! is fixed by the `HealthSource` the loops are given; nothing here chooses a generation.

pub mod decide;
pub mod get;
pub mod list;
pub mod nodes;
pub mod status;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use crate::csi::Generation;
use crate::events::{EventType, ObjectRef, Priority, Recorder};
use crate::health::{self, Mended};
use crate::kube::{self, Client};
use crate::logging::Throttle;
use crate::metrics::Metrics;
use crate::timeutil::{parse_rfc3339, rfc3339};
use crate::watch::{PvRecord, PvStore, PvcRecord, PvcStore};
use decide::{decide, Emit, Facts, Observation, Reported};
use status::{StatusWriter, Written};

/// Source component of every volume event: `csi-pv-monitor-controller-<driver>` (upstream §7.1).
pub fn event_component(driver: &str) -> String {
    format!("csi-pv-monitor-controller-{driver}")
}

/// The v1.13 health modes' extras: the status writer and whether Events go out too.
pub struct HealthOutput {
    pub writer: StatusWriter,
    /// `--volume-health-events`.
    pub events: bool,
}

pub struct Monitor {
    pub driver: String,
    pub pvs: PvStore,
    pub pvcs: PvcStore,
    client: Client,
    recorder: Recorder,
    metrics: Arc<Metrics>,
    report_missing: bool,
    /// `Some` in the v1.13 health modes.
    health: Option<HealthOutput>,
    /// PVC uid → what we last reported. Seeded from existing Events at start.
    reported: Mutex<HashMap<String, Reported>>,
    /// PV name → what was last mended in the driver's answer, so a driver that keeps sending
    /// the same malformed answer is named once, not on every check.
    mended: Mutex<HashMap<String, Mended>>,
    /// The PV store's generation at the last `forget_gone` (`u64::MAX`: never).
    forgotten_at: AtomicU64,
    /// Per-volume errors that can repeat for every volume of a sweep are logged at most once
    /// per 10 s with a count (DESIGN §2.9): PVC lookups, driver calls.
    pvc_errors: Throttle,
    pub(crate) rpc_errors: Throttle,
}

impl Monitor {
    pub fn new(
        driver: String,
        pvs: PvStore,
        pvcs: PvcStore,
        client: Client,
        recorder: Recorder,
        metrics: Arc<Metrics>,
        seed: HashMap<String, Reported>,
    ) -> Monitor {
        Monitor {
            driver,
            pvs,
            pvcs,
            client,
            recorder,
            metrics,
            report_missing: true,
            health: None,
            reported: Mutex::new(seed),
            mended: Mutex::new(HashMap::new()),
            forgotten_at: AtomicU64::new(u64::MAX),
            pvc_errors: Throttle::default(),
            rpc_errors: Throttle::default(),
        }
    }

    /// `--report-missing-volumes` (default true, DESIGN §3.1).
    pub fn report_missing(mut self, on: bool) -> Monitor {
        self.report_missing = on;
        self
    }

    /// The v1.13 health modes: conditions also go to the PVC's `status.healthStatus`.
    pub fn health_output(mut self, out: HealthOutput) -> Monitor {
        self.health = Some(out);
        self
    }

    pub fn generation(&self) -> Generation {
        if self.health.is_some() {
            Generation::Health
        } else {
            Generation::Condition
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The PVC `pv` is bound to, from the cache or the API; errors are logged.
    fn claim_of(&self, pv: &PvRecord) -> Option<PvcRecord> {
        let claim = pv.claim.as_ref()?;
        match self
            .pvcs
            .get_or_fetch(&self.client, &claim.namespace, &claim.name)
        {
            Ok(Some(pvc)) => Some(pvc),
            Ok(None) => {
                if let Some(n) = self.pvc_errors.hit(Instant::now()) {
                    log::error!(
                        "Get PVC error errors_since_last_line={n} pv=\"{}\" pvc=\"{}/{}\" err=\"persistentvolumeclaim not found\"",
                        pv.name,
                        claim.namespace,
                        claim.name
                    );
                }
                None
            }
            Err(e) => {
                if let Some(n) = self.pvc_errors.hit(Instant::now()) {
                    log::error!(
                        "Get PVC error errors_since_last_line={n} pv=\"{}\" pvc=\"{}/{}\" err=\"{e}\"",
                        pv.name,
                        claim.namespace,
                        claim.name
                    );
                }
                None
            }
        }
    }

    /// Whether `pv`'s volume stands reported abnormal: by us, or (v1.13) in its PVC's status.
    /// The health listing uses it to tell an absent volume that needs confirming from one
    /// that was never abnormal.
    pub fn stands_abnormal(&self, pv: &PvRecord) -> bool {
        let Some(claim) = &pv.claim else { return false };
        let pvc = self.pvcs.get(&claim.namespace, &claim.name);
        let uid = pvc.as_ref().map_or(claim.uid.as_str(), |p| p.uid.as_str());
        if lock(&self.reported).get(uid) == Some(&Reported::Abnormal) {
            return true;
        }
        pvc.is_some_and(|p| p.health.is_some())
    }

    /// Act on one observation of `pv`'s volume: find its PVC, decide, report, remember. Returns
    /// the volume's state afterwards (`None`: nothing could be done, e.g. no PVC).
    pub fn observe(&self, pv: &PvRecord, observation: &Observation) -> Option<Reported> {
        let pvc = self.claim_of(pv)?;
        let (decision, previous) = {
            let mut reported = lock(&self.reported);
            let previous = reported.get(&pvc.uid).copied().unwrap_or(Reported::Healthy);
            let d = decide(
                &Facts {
                    generation: self.generation(),
                    previous,
                    held: pvc.health.as_deref(),
                    handle: &pv.volume_handle,
                    driver: &self.driver,
                    report_missing: self.report_missing,
                    events: self.health.as_ref().is_none_or(|h| h.events),
                },
                observation,
            );
            match d.next {
                Reported::Healthy => reported.remove(&pvc.uid),
                Reported::Abnormal => reported.insert(pvc.uid.clone(), d.next),
            };
            (d, previous)
        };
        self.metrics
            .set_volume_status(&pvc.namespace, &pvc.name, &pv.name, decision.status);
        if let Some(desired) = &decision.desired {
            self.metrics.set_volume_conditions(
                &pv.name,
                desired
                    .iter()
                    .map(|c| (c.status.clone(), c.reason.clone()))
                    .collect(),
            );
        }
        self.note_mended(pv, &decision.mended);
        let mut next = decision.next;
        if let Some(emit) = decision.emit {
            let object = ObjectRef::pvc(&pvc);
            // A Warning while already abnormal repeats an Event that exists (a count bump); a
            // first report or a recovery is news and wins a full queue (DESIGN §2.9).
            let (kind, reason, message) = match emit {
                Emit::Warning { reason, message } => (EventType::Warning, reason, message),
                Emit::Normal { reason, message } => (EventType::Normal, reason, message),
            };
            let repeat = kind == EventType::Warning && previous == Reported::Abnormal;
            let priority = if repeat {
                Priority::Repeat
            } else {
                Priority::Transition
            };
            let queued = self
                .recorder
                .event_with(&object, kind, reason, &message, priority);
            if !queued && !repeat {
                // Not told: keep the previous state, so the next check tries this news again
                // instead of taking it for a repeat (or for nothing) and starving this PVC.
                let mut reported = lock(&self.reported);
                match previous {
                    Reported::Healthy => reported.remove(&pvc.uid),
                    Reported::Abnormal => reported.insert(pvc.uid.clone(), previous),
                };
                next = previous;
            }
        }
        if let (Some(out), Some(desired)) = (&self.health, &decision.desired) {
            let now = rfc3339(SystemTime::now());
            if let Some(write) = health::status_write(pvc.health.as_deref(), desired, &now) {
                match out.writer.write(&pvc, write.as_ref()) {
                    Written::Ok(held) => self.pvcs.set_health(&pvc.namespace, &pvc.name, held),
                    Written::Gone => {
                        lock(&self.reported).remove(&pvc.uid);
                    }
                    _ => {}
                }
            }
        }
        Some(next)
    }

    /// Say once what had to be mended in a driver's answer about `pv` (and again when it
    /// changes); unknown status values are counted on every answer.
    fn note_mended(&self, pv: &PvRecord, mended: &Mended) {
        for status in &mended.unknown {
            self.metrics.observe_unknown_condition(*status);
        }
        let mut seen = lock(&self.mended);
        if mended.is_clean() {
            seen.remove(&pv.name);
            return;
        }
        if seen.get(&pv.name) != Some(mended) {
            log::warn!(
                "CSI driver sent a volume health answer that breaks the CSI spec or the Kubernetes API's limits; mended it pv=\"{}\" volume=\"{}\" mended=\"{mended}\"",
                pv.name,
                pv.volume_handle
            );
            seen.insert(pv.name.clone(), mended.clone());
        }
    }

    /// Drop state and metric series of PVs that left the store (deleted, or no longer ours).
    /// Everything kept is keyed by live PVs, so nothing is done while the PV store is unchanged;
    /// otherwise its snapshot is read as it is, with no copy of its keys or records.
    pub fn forget_gone(&self) {
        let generation = self.pvs.generation();
        if self.forgotten_at.swap(generation, Ordering::SeqCst) == generation {
            return;
        }
        let pvs = self.pvs.snapshot();
        self.metrics.retain_volumes(|pv| pvs.contains_key(pv));
        lock(&self.mended).retain(|pv, _| pvs.contains_key(pv));
        let mut reported = lock(&self.reported);
        let deferred = self
            .health
            .as_ref()
            .is_some_and(|h| h.writer.has_deferred());
        if reported.is_empty() && !deferred {
            return;
        }
        // Borrowed from the snapshot: one set of &str, no string copies.
        let live: HashSet<&str> = pvs
            .values()
            .filter_map(|pv| pv.claim.as_ref().map(|c| c.uid.as_str()))
            .collect();
        reported.retain(|uid, _| live.contains(uid.as_str()));
        if let Some(out) = &self.health {
            out.writer.retain(|uid| live.contains(uid));
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Rebuild "which PVCs are currently reported abnormal" from the Events we wrote before (a
/// restart, a new leader): a PVC whose latest `VolumeConditionAbnormal` Warning from our
/// component is newer than its latest `VolumeConditionNormal` still needs its recovery event.
/// Two field-selected LISTs instead of upstream's cluster-wide Event watch (DESIGN §2.4, §2.8).
pub fn seed_reported(
    client: &Client,
    component: &str,
) -> Result<HashMap<String, Reported>, kube::Error> {
    let abnormal = list_events(client, component, decide::REASON_ABNORMAL, "Warning")?;
    let normal = list_events(client, component, decide::REASON_NORMAL, "Normal")?;
    Ok(seed_from(&abnormal, &normal))
}

/// Pure part of seeding: (uid, last timestamp) of abnormal and normal events.
pub fn seed_from(
    abnormal: &[(String, SystemTime)],
    normal: &[(String, SystemTime)],
) -> HashMap<String, Reported> {
    let mut latest_normal: HashMap<&str, SystemTime> = HashMap::new();
    for (uid, t) in normal {
        let e = latest_normal.entry(uid.as_str()).or_insert(*t);
        if *t > *e {
            *e = *t;
        }
    }
    let mut out = HashMap::new();
    for (uid, t) in abnormal {
        let recovered_later = latest_normal.get(uid.as_str()).is_some_and(|n| n >= t);
        if !recovered_later {
            out.insert(uid.clone(), Reported::Abnormal);
        }
    }
    out
}

/// Of each Event, what seeding needs: the involved object's uid and the last time it happened.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct SeedEventWire {
    involved_object: Option<InvolvedWire>,
    last_timestamp: Option<String>,
    event_time: Option<String>,
}

#[derive(serde::Deserialize)]
struct InvolvedWire {
    uid: Option<String>,
}

fn list_events(
    client: &Client,
    component: &str,
    reason: &str,
    event_type: &str,
) -> Result<Vec<(String, SystemTime)>, kube::Error> {
    let selector =
        format!("source={component},reason={reason},type={event_type},involvedObject.kind=PersistentVolumeClaim");
    let mut out = Vec::new();
    let query = [("fieldSelector", selector.as_str())];
    kube::Pager::new(client, "/api/v1/events", &query, crate::watch::PAGE_SIZE).for_each(
        &mut |raw| {
            let Some(e) = kube::object::decode::<SeedEventWire>(raw, "Event", "seeding") else {
                return;
            };
            let uid = e.involved_object.and_then(|o| o.uid).unwrap_or_default();
            let ts = e
                .last_timestamp
                .as_deref()
                .or(e.event_time.as_deref())
                .and_then(parse_rfc3339);
            if let (false, Some(ts)) = (uid.is_empty(), ts) {
                out.push((uid, ts));
            }
        },
    )?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn t(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(s)
    }

    #[test]
    fn seeding_keeps_only_unrecovered() {
        let abnormal = vec![
            ("a".to_string(), t(10)),
            ("b".to_string(), t(10)),
            ("c".to_string(), t(30)),
        ];
        let normal = vec![
            ("b".to_string(), t(20)),
            ("c".to_string(), t(20)),
            ("d".to_string(), t(5)),
        ];
        let seeded = seed_from(&abnormal, &normal);
        assert_eq!(seeded.get("a"), Some(&Reported::Abnormal));
        assert_eq!(
            seeded.get("b"),
            None,
            "recovered after its last abnormal event"
        );
        assert_eq!(
            seeded.get("c"),
            Some(&Reported::Abnormal),
            "abnormal again after recovering"
        );
        assert_eq!(seeded.get("d"), None);
    }

    #[test]
    fn component_name() {
        assert_eq!(
            event_component("hostpath.csi.k8s.io"),
            "csi-pv-monitor-controller-hostpath.csi.k8s.io"
        );
    }
}
