//! The volume health model both CSI generations are turned into: a volume's list of conditions
//! as the driver said them (`Condition`), and the Kubernetes form they are written in
//! (`PvcCondition`, `PvcHealth`: `PersistentVolumeClaim.status.healthStatus`, Kubernetes 1.37).
//! The mapping between the two is pure and lives here (volume-health-v1.13.md §2).

use std::collections::BTreeMap;

/// What a driver says of a volume's state in one condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Severity {
    /// v1.12 `volume_condition` with `abnormal: true`: no status, no reason, only a message.
    Abnormal,
    /// v1.13 `VolumeHealthErrorType` as sent; numbers this build does not know are kept so
    /// they can be surfaced (the spec says a CO must never take them as healthy).
    Typed(i32),
}

/// One adverse condition of a volume, as the driver reported it. A volume with none is healthy.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Condition {
    pub severity: Severity,
    pub reason: String,
    pub message: String,
}

impl Condition {
    /// A v1.12 abnormal `volume_condition`.
    pub fn legacy(message: impl Into<String>) -> Condition {
        Condition {
            severity: Severity::Abnormal,
            reason: String::new(),
            message: message.into(),
        }
    }

    pub fn typed(status: i32, reason: impl Into<String>, message: impl Into<String>) -> Condition {
        Condition {
            severity: Severity::Typed(status),
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// Kubernetes `VolumeHealthCondition.status` values.
pub const DEGRADED: &str = "Degraded";
pub const INACCESSIBLE: &str = "Inaccessible";
pub const DATA_LOSS: &str = "DataLoss";

/// The API's limits (`k8s.io/api` `VolumeHealthCondition` / `VolumeHealthStatus`).
pub const MAX_REASON_BYTES: usize = 256;
pub const MAX_MESSAGE_BYTES: usize = 1024;
pub const MAX_CONDITIONS: usize = 16;

/// One entry of `status.healthStatus.healthConditions` (also its wire form in a status write).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct PvcCondition {
    pub status: String,
    pub reason: String,
    pub message: String,
}

/// `PersistentVolumeClaim.status.healthStatus` as the API holds it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PvcHealth {
    pub conditions: Vec<PvcCondition>,
    pub last_transition_time: String,
}

impl PvcCondition {
    pub fn new(status: &str, reason: &str, message: &str) -> PvcCondition {
        PvcCondition {
            status: status.to_string(),
            reason: reason.to_string(),
            message: message.to_string(),
        }
    }
}

impl PvcHealth {
    /// The (status, reason) pairs whose change moves `lastTransitionTime`.
    pub fn keys(&self) -> Vec<(&str, &str)> {
        keys(&self.conditions)
    }
}

fn keys(c: &[PvcCondition]) -> Vec<(&str, &str)> {
    let mut k: Vec<(&str, &str)> = c
        .iter()
        .map(|c| (c.status.as_str(), c.reason.as_str()))
        .collect();
    k.sort_unstable();
    k
}

/// The Kubernetes status for a v1.13 `VolumeHealthErrorType`; `None` for values this build does
/// not know (mapped to Degraded by [`to_pvc`], never to healthy).
pub fn status_name(t: i32) -> Option<&'static str> {
    match t {
        1 => Some(DEGRADED),
        2 => Some(INACCESSIBLE),
        3 => Some(DATA_LOSS),
        _ => None,
    }
}

fn severity_rank(status: &str) -> u8 {
    match status {
        DATA_LOSS => 0,
        INACCESSIBLE => 1,
        _ => 2,
    }
}

/// What the mapping had to mend in a driver's answer, for one clear log line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mended {
    /// Status numbers outside the known enum (each also counted in a metric).
    pub unknown: Vec<i32>,
    pub empty_reasons: usize,
    pub duplicates: usize,
    pub truncated: usize,
    /// Conditions beyond the API's 16, left out (the least severe).
    pub dropped: usize,
}

impl Mended {
    pub fn is_clean(&self) -> bool {
        *self == Mended::default()
    }
}

impl std::fmt::Display for Mended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if !self.unknown.is_empty() {
            parts.push(format!(
                "unknown status values {:?} taken as {DEGRADED}",
                self.unknown
            ));
        }
        if self.empty_reasons > 0 {
            parts.push(format!(
                "{} empty reasons replaced by the status name",
                self.empty_reasons
            ));
        }
        if self.duplicates > 0 {
            parts.push(format!(
                "{} repeated (status, reason) pairs, the last kept",
                self.duplicates
            ));
        }
        if self.truncated > 0 {
            parts.push(format!(
                "{} reasons or messages cut to the API's limits ({MAX_REASON_BYTES}/{MAX_MESSAGE_BYTES} bytes)",
                self.truncated
            ));
        }
        if self.dropped > 0 {
            parts.push(format!(
                "{} least severe conditions left out (the API holds {MAX_CONDITIONS})",
                self.dropped
            ));
        }
        write!(f, "{}", parts.join("; "))
    }
}

/// `s` cut to at most `max` bytes at a character boundary, ending in `…` when cut.
pub fn truncate(s: &str, max: usize) -> (String, bool) {
    if s.len() <= max {
        return (s.to_string(), false);
    }
    let ell = '…';
    let mut end = max.saturating_sub(ell.len_utf8());
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = String::with_capacity(end + ell.len_utf8());
    out.push_str(&s[..end]);
    out.push(ell);
    (out, true)
}

/// A driver's v1.13 conditions in the form the API accepts: known status names (unknown →
/// Degraded), a reason always set, one entry per (status, reason) (the last wins), strings
/// within the API's limits, at most 16 (the most severe), sorted by (status, reason).
/// v1.12 conditions have no Kubernetes form and are left out.
pub fn to_pvc(conditions: &[Condition]) -> (Vec<PvcCondition>, Mended) {
    let mut mended = Mended::default();
    let mut by_key: BTreeMap<(String, String), PvcCondition> = BTreeMap::new();
    for c in conditions {
        let Severity::Typed(t) = c.severity else {
            continue;
        };
        let status = match status_name(t) {
            Some(s) => s,
            None => {
                mended.unknown.push(t);
                DEGRADED
            }
        };
        let reason = if c.reason.is_empty() {
            mended.empty_reasons += 1;
            status
        } else {
            c.reason.as_str()
        };
        let (reason, cut_r) = truncate(reason, MAX_REASON_BYTES);
        let (message, cut_m) = truncate(&c.message, MAX_MESSAGE_BYTES);
        mended.truncated += usize::from(cut_r) + usize::from(cut_m);
        let cond = PvcCondition {
            status: status.to_string(),
            reason,
            message,
        };
        if by_key
            .insert((cond.status.clone(), cond.reason.clone()), cond)
            .is_some()
        {
            mended.duplicates += 1;
        }
    }
    let mut out: Vec<PvcCondition> = by_key.into_values().collect();
    if out.len() > MAX_CONDITIONS {
        out.sort_by(|a, b| {
            (severity_rank(&a.status), &a.reason).cmp(&(severity_rank(&b.status), &b.reason))
        });
        mended.dropped = out.len() - MAX_CONDITIONS;
        out.truncate(MAX_CONDITIONS);
        out.sort();
    }
    (out, mended)
}

/// The `VolumeConditionAbnormal` Event message: a v1.12 condition's message verbatim (as
/// upstream), v1.13 conditions as `<Status>: <reason>: <message>` joined by `; `.
pub fn event_message(conditions: &[Condition], mapped: &[PvcCondition]) -> String {
    if let Some(c) = conditions.iter().find(|c| c.severity == Severity::Abnormal) {
        return c.message.clone();
    }
    mapped
        .iter()
        .map(|c| {
            if c.message.is_empty() {
                format!("{}: {}", c.status, c.reason)
            } else {
                format!("{}: {}: {}", c.status, c.reason, c.message)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// What to write to a PVC's `status.healthStatus`, if anything, given what the API holds
/// (`current`, from the PVC watch cache) and what the driver says now (`desired`, already in
/// API form). `Some(None)` clears the field; `Some(Some(h))` sets it. The transition time moves
/// only when the set of (status, reason) pairs changes (the Kubernetes condition convention).
pub fn status_write(
    current: Option<&PvcHealth>,
    desired: &[PvcCondition],
    now_rfc3339: &str,
) -> Option<Option<PvcHealth>> {
    match current {
        None if desired.is_empty() => None,
        Some(_) if desired.is_empty() => Some(None),
        Some(cur) if cur.conditions == desired => None,
        cur => {
            let keep = cur.filter(|c| c.keys() == keys(desired));
            Some(Some(PvcHealth {
                conditions: desired.to_vec(),
                last_transition_time: keep
                    .map(|c| c.last_transition_time.clone())
                    .filter(|t| !t.is_empty())
                    .unwrap_or_else(|| now_rfc3339.to_string()),
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pc(status: &str, reason: &str, message: &str) -> PvcCondition {
        PvcCondition::new(status, reason, message)
    }

    #[test]
    fn mapping_of_status_values() {
        let (out, m) = to_pvc(&[
            Condition::typed(1, "Slow", "a"),
            Condition::typed(2, "Gone", "b"),
            Condition::typed(3, "Lost", "c"),
            Condition::typed(0, "Zero", "d"),
            Condition::typed(9, "Future", "e"),
        ]);
        assert_eq!(
            out,
            vec![
                pc(DATA_LOSS, "Lost", "c"),
                pc(DEGRADED, "Future", "e"),
                pc(DEGRADED, "Slow", "a"),
                pc(DEGRADED, "Zero", "d"),
                pc(INACCESSIBLE, "Gone", "b"),
            ]
        );
        assert_eq!(m.unknown, vec![0, 9]);
        assert!(!m.is_clean());
        assert!(m.to_string().contains("unknown status values [0, 9]"));
    }

    #[test]
    fn empty_reason_duplicates_and_legacy() {
        let (out, m) = to_pvc(&[
            Condition::typed(2, "", "first"),
            Condition::typed(2, "Inaccessible", "second"),
            Condition::legacy("legacy is left out"),
            Condition::typed(1, "R", "x"),
            Condition::typed(1, "R", "y"),
        ]);
        assert_eq!(
            out,
            vec![
                pc(DEGRADED, "R", "y"),
                pc(INACCESSIBLE, INACCESSIBLE, "second")
            ]
        );
        assert_eq!((m.empty_reasons, m.duplicates), (1, 2));
    }

    #[test]
    fn limits() {
        let long = "é".repeat(3000);
        let (out, m) = to_pvc(&[Condition::typed(1, "r".repeat(300), long.clone())]);
        assert!(out[0].message.len() <= MAX_MESSAGE_BYTES);
        assert!(out[0].message.ends_with('…'));
        assert!(out[0].reason.len() <= MAX_REASON_BYTES);
        assert_eq!(m.truncated, 2);
        assert_eq!(truncate("short", 10), ("short".to_string(), false));
        // a cut never splits a character: 6 bytes less the ellipsis' 3 falls inside the second é
        assert_eq!(truncate("éééé", 6), ("é…".to_string(), true));

        let many: Vec<Condition> = (0..20)
            .map(|i| Condition::typed(if i < 2 { 3 } else { 1 }, format!("R{i:02}"), ""))
            .collect();
        let (out, m) = to_pvc(&many);
        assert_eq!(out.len(), MAX_CONDITIONS);
        assert_eq!(m.dropped, 4);
        assert!(out.iter().filter(|c| c.status == DATA_LOSS).count() == 2);
        assert!(
            !out.iter().any(|c| c.reason == "R19"),
            "least severe, last reason dropped"
        );
    }

    #[test]
    fn event_messages() {
        let typed = [
            Condition::typed(2, "DiskGone", "disk gone"),
            Condition::typed(1, "Slow", ""),
        ];
        let (mapped, _) = to_pvc(&typed);
        assert_eq!(
            event_message(&typed, &mapped),
            "Degraded: Slow; Inaccessible: DiskGone: disk gone"
        );
        let legacy = [Condition::legacy("Volume not found")];
        assert_eq!(event_message(&legacy, &[]), "Volume not found");
    }

    #[test]
    fn status_writes() {
        let now = "2026-12-01T00:00:00Z";
        let a = vec![pc(INACCESSIBLE, "DiskGone", "disk gone")];
        let held = PvcHealth {
            conditions: a.clone(),
            last_transition_time: "2026-11-30T00:00:00Z".into(),
        };
        // nothing held, nothing to say
        assert_eq!(status_write(None, &[], now), None);
        // first report
        assert_eq!(
            status_write(None, &a, now),
            Some(Some(PvcHealth {
                conditions: a.clone(),
                last_transition_time: now.into()
            }))
        );
        // unchanged: no write
        assert_eq!(status_write(Some(&held), &a, now), None);
        // message-only change keeps the transition time
        let b = vec![pc(INACCESSIBLE, "DiskGone", "still gone")];
        assert_eq!(
            status_write(Some(&held), &b, now),
            Some(Some(PvcHealth {
                conditions: b,
                last_transition_time: held.last_transition_time.clone()
            }))
        );
        // a new (status, reason) moves it
        let c = vec![pc(DATA_LOSS, "Lost", "")];
        assert_eq!(
            status_write(Some(&held), &c, now)
                .unwrap()
                .unwrap()
                .last_transition_time,
            now
        );
        // recovery clears
        assert_eq!(status_write(Some(&held), &[], now), Some(None));
    }
}
