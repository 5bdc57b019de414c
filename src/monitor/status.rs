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

use serde::Serialize;

use crate::health::{PvcCondition, PvcHealth};
use crate::kube::{Client, PatchKind};
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::watch::{PvcRecord, PvcWire, Token};

/// The field manager of every write (as upstream main's sidecar names itself).
pub const FIELD_MANAGER: &str = "csi-external-health-monitor-controller";
/// A dropped or forbidden write is tried again after this many check intervals.
pub const BACKOFF_INTERVALS: u32 = 10;
/// A write that failed on the way or with 409, 429 or 5xx is sent again after each of these
/// waits (3.5 s in all, cut short by shutdown): a passing API server error should not leave a
/// stale status until the next check, which is five minutes away at the listing default. After
/// the last one the next check tries again.
pub const RETRY_WAITS: [Duration; 3] = [
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
];

/// How one write ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Written {
    /// The API holds what was written: the PVC as the PATCH answered it.
    Ok(Box<PvcRecord>),
    /// 200, but the answer lacks the field: the gate is off.
    Dropped,
    /// 403: RBAC lacks `persistentvolumeclaims/status: patch`.
    Forbidden,
    /// 404: the PVC is gone.
    Gone,
    /// Any other failure (logged), after the retries; the next check tries again.
    Failed,
    /// Not sent: this PVC's writes are slowed after a drop or a refusal.
    Deferred,
}

pub struct StatusWriter {
    client: Client,
    metrics: Arc<Metrics>,
    backoff: Duration,
    /// Cuts the waits between retries short.
    shutdown: Shutdown,
    /// [`RETRY_WAITS`] (tests: none).
    retry_waits: &'static [Duration],
    /// PVC uid → no write before this instant.
    deferred: Mutex<HashMap<Token, Instant>>,
    warned_dropped: AtomicBool,
    warned_forbidden: AtomicBool,
    /// Failed writes are logged at most once per 10 s, with a count.
    failed_log: crate::logging::Throttle,
}

/// The merge patch `{"status":{"healthStatus":...}}`: a JSON merge patch replaces the condition
/// list whole, which is what we want (a strategic merge would key conditions on `status` alone
/// and fold two reasons into one); `None` is `null`, which clears the field.
#[derive(Serialize)]
pub struct StatusPatch<'a> {
    status: StatusPatchStatus<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusPatchStatus<'a> {
    health_status: Option<HealthStatusPatch<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HealthStatusPatch<'a> {
    health_conditions: &'a [PvcCondition],
    last_transition_time: &'a str,
}

pub fn patch_body(health: Option<&PvcHealth>) -> StatusPatch<'_> {
    StatusPatch {
        status: StatusPatchStatus {
            health_status: health.map(|h| HealthStatusPatch {
                health_conditions: &h.conditions,
                last_transition_time: &h.last_transition_time,
            }),
        },
    }
}

/// Is this answer worth sending again after a wait?
fn transient(e: &crate::kube::Error) -> bool {
    e.is_retryable() || e.is_conflict()
}

impl StatusWriter {
    /// `interval`: the check interval of the mode; dropped or refused writes of a PVC are
    /// retried no more often than every [`BACKOFF_INTERVALS`] of it.
    pub fn new(
        client: Client,
        metrics: Arc<Metrics>,
        interval: Duration,
        shutdown: Shutdown,
    ) -> StatusWriter {
        StatusWriter {
            client,
            metrics,
            backoff: interval.saturating_mul(BACKOFF_INTERVALS),
            shutdown,
            retry_waits: &RETRY_WAITS,
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
            match deferred.get(&pvc.uid()) {
                Some(until) if now < *until => return Written::Deferred,
                Some(_) => {
                    deferred.remove(&pvc.uid());
                }
                None => {}
            }
        }
        let path = format!(
            "/api/v1/namespaces/{}/persistentvolumeclaims/{}/status?fieldManager={FIELD_MANAGER}",
            pvc.namespace(),
            pvc.name()
        );
        let body = patch_body(health);
        let mut waits = self.retry_waits.iter();
        let answer = loop {
            let answer = self
                .client
                .patch_as::<_, PvcWire>(&path, PatchKind::Merge, &body);
            match (&answer, waits.next()) {
                (Err(e), Some(wait)) if transient(e) => {
                    crate::vlog!(
                        2,
                        pvc:% = format_args!("{}/{}", pvc.namespace(), pvc.name()),
                        wait:? = wait, err:% = e;
                        "Status write failed, sending it again"
                    );
                    if self.shutdown.wait_timeout(*wait) {
                        break answer;
                    }
                }
                _ => break answer,
            }
        };
        let outcome = match answer.map(PvcRecord::from_wire) {
            Ok(Some(answer)) if health.is_some() && answer.health().is_none() => {
                if !self.warned_dropped.swap(true, Ordering::SeqCst) {
                    log::warn!(
                        "The API server dropped status.healthStatus of PVC {}/{}: the CSIVolumeHealth feature gate looks off (Kubernetes 1.36 or older, or the gate disabled). Volume health is still reported as Events and metrics; each PVC's write is retried every {:?}",
                        pvc.namespace(),
                        pvc.name(),
                        self.backoff
                    );
                }
                Written::Dropped
            }
            Ok(Some(answer)) => Written::Ok(Box::new(answer)),
            Ok(None) => {
                self.failed(
                    pvc,
                    &"the answer is not a PersistentVolumeClaim with a name and namespace",
                );
                Written::Failed
            }
            Err(e) if e.code() == Some(403) => {
                if !self.warned_forbidden.swap(true, Ordering::SeqCst) {
                    log::error!(
                        err:% = e; "Not allowed to write status.healthStatus of PVC {}/{}: the RBAC role lacks the rule apiGroups=[\"\"] resources=[\"persistentvolumeclaims/status\"] verbs=[\"patch\"] (upstream v0.18's role does not have it). Volume health is still reported as Events and metrics; each PVC's write is retried every {:?}",
                        pvc.namespace(),
                        pvc.name(),
                        self.backoff
                    );
                }
                Written::Forbidden
            }
            Err(e) if e.is_not_found() => {
                crate::vlog!(
                    2,
                    pvc:% = format_args!("{}/{}", pvc.namespace(), pvc.name());
                    "PVC is gone, its health status is not written"
                );
                Written::Gone
            }
            Err(e) => {
                self.failed(pvc, &e);
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
            super::lock(&self.deferred).insert(pvc.uid(), now + self.backoff);
        }
        outcome
    }

    /// The same retries, sent without waiting (unit tests).
    #[cfg(test)]
    pub(crate) fn without_waits(mut self) -> StatusWriter {
        self.retry_waits = &[Duration::ZERO; RETRY_WAITS.len()];
        self
    }

    fn failed(&self, pvc: &PvcRecord, err: &dyn std::fmt::Display) {
        if let Some(n) = self.failed_log.hit(Instant::now()) {
            log::error!(
                failures_since_last_line = n,
                pvc:% = format_args!("{}/{}", pvc.namespace(), pvc.name()), err:% = err;
                "Failed to write status.healthStatus"
            );
        }
    }

    pub fn has_deferred(&self) -> bool {
        !super::lock(&self.deferred).is_empty()
    }

    /// Forget the slowed writes of PVCs that are no longer ours.
    pub fn retain(&self, keep: impl Fn(&Token) -> bool) {
        super::lock(&self.deferred).retain(|uid, _| keep(uid));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bodies() {
        assert_eq!(
            serde_json::to_string(&patch_body(None)).unwrap(),
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
            serde_json::to_value(patch_body(Some(&h))).unwrap(),
            json!({"status":{"healthStatus":{"healthConditions":[{"status":"Inaccessible","reason":"DiskGone","message":"disk gone"}],"lastTransitionTime":"2026-11-30T10:00:00Z"}}})
        );
    }
}
