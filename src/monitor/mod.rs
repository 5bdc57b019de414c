//! The monitor: turns what the driver says about volumes into Events on the bound PVCs.
//!
//! `Monitor` holds what both modes share (stores, recorder, the per-PVC reported state and the
//! per-volume metrics); `list` runs ListVolumes sweeps, `get` schedules ControllerGetVolume
//! checks on a worker pool; `decide` holds the pure decisions.

pub mod decide;
pub mod get;
pub mod list;
pub mod nodes;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::events::{EventType, ObjectRef, Recorder};
use crate::kube::{self, Client};
use crate::metrics::{Metrics, VolumeStatus};
use crate::timeutil::parse_rfc3339;
use crate::watch::{PvRecord, PvStore, PvcStore};
use decide::{decide, Emit, Observation, Reported};

/// Source component of every volume event: `csi-pv-monitor-controller-<driver>` (upstream §7.1).
pub fn event_component(driver: &str) -> String {
    format!("csi-pv-monitor-controller-{driver}")
}

pub struct Monitor {
    pub driver: String,
    pub pvs: PvStore,
    pub pvcs: PvcStore,
    client: Client,
    recorder: Recorder,
    metrics: Arc<Metrics>,
    report_missing: bool,
    /// PVC uid → what we last reported. Seeded from existing Events at start.
    reported: Mutex<HashMap<String, Reported>>,
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
            reported: Mutex::new(seed),
        }
    }

    /// `--report-missing-volumes` (default true, DESIGN §3.1).
    pub fn report_missing(mut self, on: bool) -> Monitor {
        self.report_missing = on;
        self
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Act on one observation of `pv`'s volume: find its PVC, decide, emit, remember.
    pub fn observe(&self, pv: &PvRecord, observation: &Observation) {
        let Some(claim) = &pv.claim else { return };
        let pvc = match self
            .pvcs
            .get_or_fetch(&self.client, &claim.namespace, &claim.name)
        {
            Ok(Some(pvc)) => pvc,
            Ok(None) => {
                log::error!(
                    "Get PVC error pv=\"{}\" pvc=\"{}/{}\" err=\"persistentvolumeclaim not found\"",
                    pv.name,
                    claim.namespace,
                    claim.name
                );
                return;
            }
            Err(e) => {
                log::error!(
                    "Get PVC error pv=\"{}\" pvc=\"{}/{}\" err=\"{e}\"",
                    pv.name,
                    claim.namespace,
                    claim.name
                );
                return;
            }
        };
        let status = match observation {
            Observation::Condition(c) if c.abnormal => VolumeStatus::Abnormal,
            Observation::Condition(_) => VolumeStatus::Normal,
            Observation::Missing => VolumeStatus::NotFound,
        };
        self.metrics
            .set_volume_status(&pvc.namespace, &pvc.name, &pv.name, status);

        let emit = {
            let mut reported = lock(&self.reported);
            let previous = reported.get(&pvc.uid).copied().unwrap_or(Reported::Healthy);
            let (emit, next) = decide(
                previous,
                observation,
                &pv.volume_handle,
                &self.driver,
                self.report_missing,
            );
            match next {
                Reported::Healthy => reported.remove(&pvc.uid),
                Reported::Abnormal => reported.insert(pvc.uid.clone(), next),
            };
            emit
        };
        let Some(emit) = emit else { return };
        let object = ObjectRef {
            kind: "PersistentVolumeClaim".into(),
            api_version: "v1".into(),
            namespace: pvc.namespace.clone(),
            name: pvc.name.clone(),
            uid: pvc.uid.clone(),
            resource_version: pvc.resource_version.clone(),
        };
        match emit {
            Emit::Warning { reason, message } => {
                self.recorder
                    .event(&object, EventType::Warning, reason, &message)
            }
            Emit::Normal { reason, message } => {
                self.recorder
                    .event(&object, EventType::Normal, reason, &message)
            }
        }
    }

    /// Drop state and metric series of PVs that left the store (deleted, or no longer ours).
    pub fn forget_gone(&self, current: &HashSet<String>) {
        self.metrics.retain_volumes(|pv| current.contains(pv));
        let live_claims: HashSet<String> = self
            .pvs
            .snapshot()
            .values()
            .filter_map(|pv| pv.claim.as_ref())
            .filter_map(|c| self.pvcs.get(&c.namespace, &c.name).map(|p| p.uid))
            .collect();
        lock(&self.reported).retain(|uid, _| live_claims.contains(uid));
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
