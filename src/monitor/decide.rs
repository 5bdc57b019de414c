//! Pure decisions of the monitor: is this PV ours and checkable, and what does one observation
//! of a volume mean for the PVC's event stream given what we reported before.
//!
//! No I/O here; everything is table-tested.

use crate::csi::Condition;
use crate::watch::PvRecord;

pub const REASON_ABNORMAL: &str = "VolumeConditionAbnormal";
pub const REASON_NORMAL: &str = "VolumeConditionNormal";
pub const MESSAGE_RECOVERED: &str = "The Volume returns to the healthy state";

/// What we last told the PVC's readers about its volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reported {
    /// Nothing abnormal reported (or recovery already reported).
    Healthy,
    /// A `VolumeConditionAbnormal` Warning is the latest word.
    Abnormal,
}

/// One look at a volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    Condition(Condition),
    /// ControllerGetVolume said NOT_FOUND, or the volume was absent from two complete sweeps.
    Missing,
}

/// The event to emit, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Emit {
    Warning {
        reason: &'static str,
        message: String,
    },
    Normal {
        reason: &'static str,
        message: String,
    },
}

/// Message of the missing-volume Warning (DESIGN §3.1).
pub fn missing_message(handle: &str, driver: &str) -> String {
    format!("Volume {handle} was not found by CSI driver {driver}")
}

/// Abnormal is reported on every check (the recorder's correlation folds repeats into one
/// Event with a rising count, as upstream). Recovery is reported once per abnormal→normal
/// transition (DESIGN §2.4; upstream repeats it for up to an hour).
pub fn decide(
    previous: Reported,
    observation: &Observation,
    handle: &str,
    driver: &str,
    report_missing: bool,
) -> (Option<Emit>, Reported) {
    match observation {
        Observation::Condition(c) if c.abnormal => (
            Some(Emit::Warning {
                reason: REASON_ABNORMAL,
                message: c.message.clone(),
            }),
            Reported::Abnormal,
        ),
        Observation::Condition(_) => match previous {
            Reported::Abnormal => (
                Some(Emit::Normal {
                    reason: REASON_NORMAL,
                    message: MESSAGE_RECOVERED.to_string(),
                }),
                Reported::Healthy,
            ),
            Reported::Healthy => (None, Reported::Healthy),
        },
        Observation::Missing if report_missing => (
            Some(Emit::Warning {
                reason: REASON_ABNORMAL,
                message: missing_message(handle, driver),
            }),
            Reported::Abnormal,
        ),
        Observation::Missing => (None, previous),
    }
}

/// Why a PV of this driver is not checked right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    NotBound,
    Deleting,
    NoClaim,
    EmptyHandle,
}

/// PVs in the store are already this driver's; check only Bound, live ones with a claim and a
/// handle.
pub fn checkable(pv: &PvRecord) -> Result<(), Skip> {
    if pv.deleting {
        return Err(Skip::Deleting);
    }
    // is_bound() also requires a claim; check the claim first to say which one is missing.
    if pv.phase == "Bound" && pv.claim.is_none() {
        return Err(Skip::NoClaim);
    }
    if !pv.is_bound() {
        return Err(Skip::NotBound);
    }
    if pv.volume_handle.is_empty() {
        return Err(Skip::EmptyHandle);
    }
    Ok(())
}

/// Tracks, per PV, how many consecutive complete ListVolumes sweeps did not return its volume.
/// A volume is missing only after two: one absence can be a listing race with a volume that
/// was just created (DESIGN §3.1).
pub fn absent_after(previous_absences: u32, present: bool) -> (u32, bool) {
    if present {
        (0, false)
    } else {
        let n = previous_absences.saturating_add(1);
        (n, n >= 2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watch::ClaimRef;

    fn cond(abnormal: bool, msg: &str) -> Observation {
        Observation::Condition(Condition {
            abnormal,
            message: msg.into(),
        })
    }

    #[test]
    fn decisions() {
        let cases: Vec<(Reported, Observation, bool, Option<Emit>, Reported)> = vec![
            (
                Reported::Healthy,
                cond(true, "Volume not found"),
                true,
                Some(Emit::Warning {
                    reason: REASON_ABNORMAL,
                    message: "Volume not found".into(),
                }),
                Reported::Abnormal,
            ),
            (
                Reported::Abnormal,
                cond(true, "still bad"),
                true,
                Some(Emit::Warning {
                    reason: REASON_ABNORMAL,
                    message: "still bad".into(),
                }),
                Reported::Abnormal,
            ),
            (
                Reported::Abnormal,
                cond(false, ""),
                true,
                Some(Emit::Normal {
                    reason: REASON_NORMAL,
                    message: MESSAGE_RECOVERED.into(),
                }),
                Reported::Healthy,
            ),
            (
                Reported::Healthy,
                cond(false, "whatever"),
                true,
                None,
                Reported::Healthy,
            ),
            (
                Reported::Healthy,
                Observation::Missing,
                true,
                Some(Emit::Warning {
                    reason: REASON_ABNORMAL,
                    message: "Volume h1 was not found by CSI driver d.example.com".into(),
                }),
                Reported::Abnormal,
            ),
            (
                Reported::Healthy,
                Observation::Missing,
                false,
                None,
                Reported::Healthy,
            ),
            (
                Reported::Abnormal,
                Observation::Missing,
                false,
                None,
                Reported::Abnormal,
            ),
            // An empty abnormal message is passed through verbatim, as upstream.
            (
                Reported::Healthy,
                cond(true, ""),
                true,
                Some(Emit::Warning {
                    reason: REASON_ABNORMAL,
                    message: String::new(),
                }),
                Reported::Abnormal,
            ),
        ];
        for (prev, obs, missing, want_emit, want_state) in cases {
            let (emit, state) = decide(prev, &obs, "h1", "d.example.com", missing);
            assert_eq!(emit, want_emit, "{prev:?} {obs:?}");
            assert_eq!(state, want_state, "{prev:?} {obs:?}");
        }
    }

    fn pv(phase: &str, deleting: bool, claim: bool, handle: &str) -> PvRecord {
        PvRecord {
            name: "pv".into(),
            uid: "u".into(),
            volume_handle: handle.into(),
            phase: phase.into(),
            claim: claim.then(|| ClaimRef {
                namespace: "ns".into(),
                name: "pvc".into(),
                uid: "cu".into(),
            }),
            deleting,
        }
    }

    #[test]
    fn checkability() {
        assert_eq!(checkable(&pv("Bound", false, true, "h")), Ok(()));
        assert_eq!(
            checkable(&pv("Pending", false, true, "h")),
            Err(Skip::NotBound)
        );
        assert_eq!(
            checkable(&pv("Released", false, true, "h")),
            Err(Skip::NotBound)
        );
        assert_eq!(
            checkable(&pv("Bound", true, true, "h")),
            Err(Skip::Deleting)
        );
        assert_eq!(
            checkable(&pv("Bound", false, false, "h")),
            Err(Skip::NoClaim)
        );
        assert_eq!(
            checkable(&pv("Bound", false, true, "")),
            Err(Skip::EmptyHandle)
        );
    }

    #[test]
    fn absence_needs_two_sweeps() {
        assert_eq!(absent_after(0, false), (1, false));
        assert_eq!(absent_after(1, false), (2, true));
        assert_eq!(absent_after(2, false), (3, true));
        assert_eq!(absent_after(1, true), (0, false));
    }
}
