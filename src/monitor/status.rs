//! Writes of `PersistentVolumeClaim.status.healthStatus` in the CSI v1.13 health modes
//! (volume-health-v1.13.md §4.1): a JSON merge patch of the `status` subresource, and what the
//! API server's answer means. A server without the field (Kubernetes ≤ 1.36, or the
//! `CSIVolumeHealth` gate off) answers 200 and drops it; a cluster still on upstream v0.18's
//! RBAC answers 403. Both are said once in the log and slow that PVC's writes to one per
//! `backoff`, because nothing will change until the cluster does; Events still go out.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::health::PvcHealth;
use crate::kube::{Client, PatchKind};
use crate::metrics::Metrics;
use crate::watch::PvcRecord;

/// The field manager of every write (as upstream main's sidecar names itself).
pub const FIELD_MANAGER: &str = "csi-external-health-monitor-controller";
/// A dropped or forbidden write is tried again after this many check intervals.
pub const BACKOFF_INTERVALS: u32 = 10;

/// How one write ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// The API holds what was written (`None`: the field is cleared).
    Ok(Option<PvcHealth>),
    /// 200, but the answer lacks the field: the gate is off.
    Dropped,
    /// 403: RBAC lacks `persistentvolumeclaims/status: patch`.
    Forbidden,
    /// 404: the PVC is gone.
    Gone,
    /// Any other failure (logged); the next check tries again.
    Failed,
    /// Not sent: this PVC's writes are slowed after a drop or a refusal.
    Deferred,
}

pub struct StatusWriter {
    client: Client,
    metrics: Arc<Metrics>,
    backoff: Duration,
    /// PVC uid → no write before this instant.
    deferred: Mutex<HashMap<String, Instant>>,
    warned_dropped: AtomicBool,
    warned_forbidden: AtomicBool,
    /// Failed writes are logged at most once per 10 s, with a count.
    failed_log: crate::logging::Throttle,
}

/// The merge patch: a JSON merge patch replaces the condition list whole, which is what we want
/// (a strategic merge would key conditions on `status` alone and fold two reasons into one).
pub fn patch_body(health: Option<&PvcHealth>) -> Value {
    let hs = match health {
        None => Value::Null,
        Some(h) => json!({
            "healthConditions": h.conditions.iter().map(|c| json!({
                "status": c.status,
                "reason": c.reason,
                "message": c.message,
            })).collect::<Vec<_>>(),
            "lastTransitionTime": h.last_transition_time,
        }),
    };
    json!({"status": {"healthStatus": hs}})
}

/// Did the API keep a non-null write? The PATCH answer is the PVC as stored.
pub fn kept(answer: &Value) -> bool {
    answer
        .pointer("/status/healthStatus")
        .is_some_and(|v| !v.is_null())
}

impl StatusWriter {
    /// `interval`: the check interval of the mode; dropped or refused writes of a PVC are
    /// retried no more often than every [`BACKOFF_INTERVALS`] of it.
    pub fn new(client: Client, metrics: Arc<Metrics>, interval: Duration) -> StatusWriter {
        StatusWriter {
            client,
            metrics,
            backoff: interval.saturating_mul(BACKOFF_INTERVALS),
            deferred: Mutex::new(HashMap::new()),
            warned_dropped: AtomicBool::new(false),
            warned_forbidden: AtomicBool::new(false),
            failed_log: crate::logging::Throttle::default(),
        }
    }

    pub fn write(&self, pvc: &PvcRecord, health: Option<&PvcHealth>) -> Written {
        let now = Instant::now();
        {
            let mut deferred = super::lock(&self.deferred);
            match deferred.get(&pvc.uid) {
                Some(until) if now < *until => return Written::Deferred,
                Some(_) => {
                    deferred.remove(&pvc.uid);
                }
                None => {}
            }
        }
        let path = format!(
            "/api/v1/namespaces/{}/persistentvolumeclaims/{}/status?fieldManager={FIELD_MANAGER}",
            pvc.namespace, pvc.name
        );
        let outcome = match self
            .client
            .patch(&path, PatchKind::Merge, &patch_body(health))
        {
            Ok(answer) if health.is_some() && !kept(&answer) => {
                if !self.warned_dropped.swap(true, Ordering::SeqCst) {
                    log::warn!(
                        "The API server dropped status.healthStatus of PVC {}/{}: the CSIVolumeHealth feature gate looks off (Kubernetes 1.36 or older, or the gate disabled). Volume health is still reported as Events and metrics; each PVC's write is retried every {:?}",
                        pvc.namespace,
                        pvc.name,
                        self.backoff
                    );
                }
                Written::Dropped
            }
            Ok(_) => Written::Ok(health.cloned()),
            Err(e) if e.code() == Some(403) => {
                if !self.warned_forbidden.swap(true, Ordering::SeqCst) {
                    log::error!(
                        "Not allowed to write status.healthStatus of PVC {}/{}: the RBAC role lacks the rule apiGroups=[\"\"] resources=[\"persistentvolumeclaims/status\"] verbs=[\"patch\"] (upstream v0.18's role does not have it). Volume health is still reported as Events and metrics; each PVC's write is retried every {:?} err=\"{e}\"",
                        pvc.namespace,
                        pvc.name,
                        self.backoff
                    );
                }
                Written::Forbidden
            }
            Err(e) if e.is_not_found() => {
                crate::vlog!(
                    2,
                    "PVC is gone, its health status is not written pvc=\"{}/{}\"",
                    pvc.namespace,
                    pvc.name
                );
                Written::Gone
            }
            Err(e) => {
                if let Some(n) = self.failed_log.hit(std::time::Instant::now()) {
                    log::error!(
                        "Failed to write status.healthStatus failures_since_last_line={n} pvc=\"{}/{}\" err=\"{e}\"",
                        pvc.namespace,
                        pvc.name
                    );
                }
                Written::Failed
            }
        };
        let result = match &outcome {
            Written::Ok(_) => "ok",
            Written::Dropped => "dropped",
            Written::Forbidden => "forbidden",
            Written::Gone | Written::Failed | Written::Deferred => "error",
        };
        self.metrics.observe_status_write(result);
        if matches!(outcome, Written::Dropped | Written::Forbidden) {
            super::lock(&self.deferred).insert(pvc.uid.clone(), now + self.backoff);
        }
        outcome
    }

    pub fn has_deferred(&self) -> bool {
        !super::lock(&self.deferred).is_empty()
    }

    /// Forget the slowed writes of PVCs that are no longer ours.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        super::lock(&self.deferred).retain(|uid, _| keep(uid));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::PvcCondition;

    #[test]
    fn bodies() {
        assert_eq!(
            patch_body(None).to_string(),
            r#"{"status":{"healthStatus":null}}"#
        );
        let h = PvcHealth {
            conditions: vec![PvcCondition {
                status: "Inaccessible".into(),
                reason: "DiskGone".into(),
                message: "disk gone".into(),
            }],
            last_transition_time: "2026-11-30T10:00:00Z".into(),
        };
        assert_eq!(
            patch_body(Some(&h)),
            json!({"status":{"healthStatus":{"healthConditions":[{"status":"Inaccessible","reason":"DiskGone","message":"disk gone"}],"lastTransitionTime":"2026-11-30T10:00:00Z"}}})
        );
    }

    #[test]
    fn dropped_is_read_from_the_answer() {
        assert!(!kept(&json!({"status": {"phase": "Bound"}})));
        assert!(!kept(&json!({"status": {"healthStatus": null}})));
        assert!(kept(
            &json!({"status": {"healthStatus": {"healthConditions": []}}})
        ));
    }
}
