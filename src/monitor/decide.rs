//! Pure decisions of the monitor: is this PV ours and checkable, and what does one observation
//! of a volume mean for the PVC's event stream given what we reported before.
//!
//! No I/O here; everything is table-tested.

use crate::csi::Generation;
use crate::health::{self, Condition, Mended, PvcCondition, PvcHealth};
use crate::metrics::VolumeStatus;
use crate::watch::{PvPhase, PvRecord};

pub const REASON_ABNORMAL: &str = "VolumeConditionAbnormal";
pub const REASON_NORMAL: &str = "VolumeConditionNormal";
pub const MESSAGE_RECOVERED: &str = "The Volume returns to the healthy state";
/// The reason of the condition a missing volume gets in the v1.13 health modes.
pub const REASON_NOT_FOUND: &str = "VolumeNotFound";

/// What we last told the PVC's readers about its volume. "Told" is the Events (and our word
/// in the PVC's status); what the PVC's status holds right now is tracked apart (`Facts::held`,
/// from the watch cache), so a status write that fails neither repeats nor loses a recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reported {
    /// Nothing abnormal reported (or the recovery reported and the PVC's status clean).
    Healthy,
    /// A `VolumeConditionAbnormal` Warning is the latest word: a recovery is owed.
    Abnormal,
    /// The recovery was told, but the PVC's status still holds the old conditions while their
    /// clear is retried: they are no reason to tell it again (v1.13 modes).
    Recovered,
}

/// What the driver's answers say about one volume, in either generation: its adverse
/// conditions (none: healthy; a v1.12 abnormal `volume_condition` is one condition), or not
/// known to the driver. Named a finding, not an observation: `leader.rs` and the event
/// correlator observe other things, and this is the conclusion drawn from a call or listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    Conditions(Vec<Condition>),
    /// The driver said NOT_FOUND, or the volume was absent from two complete ListVolumes sweeps.
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

/// Everything one decision looks at.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub generation: Generation,
    /// Our own memory (seeded from our Events at start).
    pub previous: Reported,
    /// The PVC's `status.healthStatus` as the API holds it (v1.13 health; `None` on clusters
    /// that drop the field).
    pub held: Option<&'a PvcHealth>,
    pub handle: &'a str,
    pub driver: &'a str,
    pub report_missing: bool,
    /// `--volume-health-events` (the v1.12 modes always emit Events).
    pub events: bool,
}

/// What to do about one observation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub emit: Option<Emit>,
    pub next: Reported,
    /// The v1.13 conditions in API form the PVC's `status.healthStatus` should hold (empty:
    /// none); `None` leaves the status alone (v1.12 modes, or nothing known).
    pub desired: Option<Vec<PvcCondition>>,
    /// `csi_volume_health_status`.
    pub status: VolumeStatus,
    /// What the mapping had to mend in the driver's answer.
    pub mended: Mended,
}

/// Abnormal is reported on every check (the recorder's correlation folds repeats into one
/// Event with a rising count, as upstream). Recovery is reported once per abnormal→normal
/// transition (DESIGN §2.4; upstream repeats it for up to an hour): in the v1.13 modes a volume
/// was abnormal when we said so or the PVC's `status.healthStatus` says so.
pub fn decide(f: &Facts<'_>, observation: &Finding) -> Decision {
    let missing;
    let (conditions, status) = match observation {
        Finding::Missing if !f.report_missing => {
            return Decision {
                emit: None,
                next: f.previous,
                desired: None,
                status: VolumeStatus::NotFound,
                mended: Mended::default(),
            }
        }
        Finding::Missing => {
            let message = missing_message(f.handle, f.driver);
            missing = match f.generation {
                Generation::Condition => [Condition::legacy(message)],
                // INACCESSIBLE: the volume cannot be reached from anywhere.
                Generation::Health => [Condition::typed(2, REASON_NOT_FOUND, message)],
            };
            (&missing[..], VolumeStatus::NotFound)
        }
        Finding::Conditions(c) if c.is_empty() => (&c[..], VolumeStatus::Normal),
        Finding::Conditions(c) => (&c[..], VolumeStatus::Abnormal),
    };
    let (mapped, mended) = match f.generation {
        Generation::Condition => (Vec::new(), Mended::default()),
        Generation::Health => health::to_pvc(conditions),
    };
    let events = f.events || f.generation == Generation::Condition;
    let desired = (f.generation == Generation::Health).then(|| mapped.clone());
    if conditions.is_empty() {
        // Owed: we said abnormal, or (a restart, a new leader, Events off) the PVC's status
        // says so and its recovery was not told yet.
        let owed = match f.previous {
            Reported::Abnormal => true,
            Reported::Healthy => f.held.is_some(),
            Reported::Recovered => false,
        };
        return Decision {
            emit: (owed && events).then(|| Emit::Normal {
                reason: REASON_NORMAL,
                message: MESSAGE_RECOVERED.to_string(),
            }),
            // Until the clear lands the held conditions must not look like news.
            next: if f.held.is_some() {
                Reported::Recovered
            } else {
                Reported::Healthy
            },
            desired,
            status,
            mended,
        };
    }
    Decision {
        emit: events.then(|| Emit::Warning {
            reason: REASON_ABNORMAL,
            message: health::event_message(conditions, &mapped),
        }),
        next: Reported::Abnormal,
        desired,
        status,
        mended,
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
    if pv.deleting() {
        return Err(Skip::Deleting);
    }
    // is_bound() also requires a claim; check the claim first to say which one is missing.
    if pv.phase() == PvPhase::Bound && pv.claim().is_none() {
        return Err(Skip::NoClaim);
    }
    if !pv.is_bound() {
        return Err(Skip::NotBound);
    }
    if pv.volume_handle().is_empty() {
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

/// Fewest newly missing volumes in one sweep that can trip the mass-absence guard: a handful of
/// absent volumes is what the report is for, whatever the fraction.
pub const MASS_ABSENCE_MIN: usize = 10;

/// The mass-absence guard (DESIGN §3.6): true when `newly` missing volumes out of `total` Bound
/// PVs of this driver are more than `max_fraction` of them (and at least
/// [`MASS_ABSENCE_MIN`]); then none of the `newly` is reported in that sweep. A partial
/// ListVolumes view (a zone, an array mid-failover, a paging bug) must not become thousands
/// of false reports. `max_fraction` 1 turns the guard off.
pub fn mass_absence(newly: usize, total: usize, max_fraction: f64) -> bool {
    max_fraction < 1.0 && newly >= MASS_ABSENCE_MIN && newly as f64 > max_fraction * total as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cond(abnormal: bool, msg: &str) -> Finding {
        Finding::Conditions(if abnormal {
            vec![Condition::legacy(msg)]
        } else {
            Vec::new()
        })
    }

    fn facts(generation: Generation, previous: Reported, report_missing: bool) -> Facts<'static> {
        Facts {
            generation,
            previous,
            held: None,
            handle: "h1",
            driver: "d.example.com",
            report_missing,
            events: true,
        }
    }

    #[test]
    fn legacy_decisions() {
        let cases: Vec<(Reported, Finding, bool, Option<Emit>, Reported)> = vec![
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
                Finding::Missing,
                true,
                Some(Emit::Warning {
                    reason: REASON_ABNORMAL,
                    message: "Volume h1 was not found by CSI driver d.example.com".into(),
                }),
                Reported::Abnormal,
            ),
            (
                Reported::Healthy,
                Finding::Missing,
                false,
                None,
                Reported::Healthy,
            ),
            (
                Reported::Abnormal,
                Finding::Missing,
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
            let d = decide(&facts(Generation::Condition, prev, missing), &obs);
            assert_eq!(d.emit, want_emit, "{prev:?} {obs:?}");
            assert_eq!(d.next, want_state, "{prev:?} {obs:?}");
            assert_eq!(d.desired, None, "v1.12 modes never write status");
        }
        // --volume-health-events does not apply to the v1.12 modes.
        let mut f = facts(Generation::Condition, Reported::Healthy, true);
        f.events = false;
        assert!(decide(&f, &cond(true, "x")).emit.is_some());
    }

    fn typed(status: i32, reason: &str, message: &str) -> Condition {
        Condition::typed(status, reason, message)
    }

    fn pc(status: &str, reason: &str, message: &str) -> PvcCondition {
        PvcCondition::new(status, reason, message)
    }

    #[test]
    fn health_decisions() {
        let h = |prev| facts(Generation::Health, prev, true);
        let bad = Finding::Conditions(vec![
            typed(2, "DiskGone", "disk gone"),
            typed(1, "Slow", "slow"),
        ]);
        let d = decide(&h(Reported::Healthy), &bad);
        assert_eq!(
            d.emit,
            Some(Emit::Warning {
                reason: REASON_ABNORMAL,
                message: "Degraded: Slow: slow; Inaccessible: DiskGone: disk gone".into()
            })
        );
        assert_eq!(
            d.desired,
            Some(vec![
                pc("Degraded", "Slow", "slow"),
                pc("Inaccessible", "DiskGone", "disk gone")
            ])
        );
        assert_eq!(
            (d.next, d.status),
            (Reported::Abnormal, VolumeStatus::Abnormal)
        );

        // recovery: once, whether our memory or the PVC's status says it was abnormal
        let healthy = Finding::Conditions(vec![]);
        let recovered = Some(Emit::Normal {
            reason: REASON_NORMAL,
            message: MESSAGE_RECOVERED.into(),
        });
        assert_eq!(decide(&h(Reported::Abnormal), &healthy).emit, recovered);
        let held = PvcHealth {
            conditions: vec![pc("Inaccessible", "DiskGone", "disk gone")],
            last_transition_time: "2026-12-01T00:00:00Z".into(),
        };
        let mut f = h(Reported::Healthy);
        f.held = Some(&held);
        let d = decide(&f, &healthy);
        assert_eq!(d.emit, recovered);
        assert_eq!(d.desired, Some(vec![]));
        assert_eq!(decide(&h(Reported::Healthy), &healthy).emit, None);

        // missing: an Inaccessible/VolumeNotFound condition
        let d = decide(&h(Reported::Healthy), &Finding::Missing);
        assert_eq!(
            d.desired,
            Some(vec![pc(
                "Inaccessible",
                REASON_NOT_FOUND,
                "Volume h1 was not found by CSI driver d.example.com"
            )])
        );
        assert_eq!(d.status, VolumeStatus::NotFound);
        let d = decide(
            &facts(Generation::Health, Reported::Healthy, false),
            &Finding::Missing,
        );
        assert_eq!((d.emit, d.desired), (None, None));

        // events off: status only
        let mut f = h(Reported::Abnormal);
        f.events = false;
        assert_eq!(decide(&f, &bad).emit, None);
        assert_eq!(decide(&f, &healthy).emit, None);
        assert_eq!(
            decide(&f, &bad).desired,
            Some(vec![
                pc("Degraded", "Slow", "slow"),
                pc("Inaccessible", "DiskGone", "disk gone")
            ])
        );

        // an unknown status value is never healthy
        let d = decide(
            &h(Reported::Healthy),
            &Finding::Conditions(vec![typed(7, "New", "")]),
        );
        assert_eq!(d.status, VolumeStatus::Abnormal);
        assert_eq!(d.mended.unknown, vec![7]);
        assert_eq!(d.desired, Some(vec![pc("Degraded", "New", "")]));
    }

    /// Issue #25: what was told and what the PVC holds are apart. A recovery is told once,
    /// whether the status clear lands or not; stale held conditions after it are no news.
    #[test]
    fn a_recovery_is_told_once_while_the_status_clear_is_retried() {
        let held = PvcHealth {
            conditions: vec![pc("Inaccessible", "DiskGone", "disk gone")],
            last_transition_time: "2026-12-01T00:00:00Z".into(),
        };
        let healthy = Finding::Conditions(vec![]);
        let normal = Some(Emit::Normal {
            reason: REASON_NORMAL,
            message: MESSAGE_RECOVERED.into(),
        });
        // (previous, PVC holds conditions) → (emit, next); the clear is wanted in every row.
        let cases = [
            (
                Reported::Abnormal,
                true,
                normal.clone(),
                Reported::Recovered,
            ),
            (Reported::Abnormal, false, normal.clone(), Reported::Healthy),
            // A restart or a new leader: only the PVC's status says it was abnormal.
            (Reported::Healthy, true, normal.clone(), Reported::Recovered),
            (Reported::Healthy, false, None, Reported::Healthy),
            // The clear failed last time: told already, keep retrying the clear quietly.
            (Reported::Recovered, true, None, Reported::Recovered),
            // The clear landed (the cache shows none): nothing left to do.
            (Reported::Recovered, false, None, Reported::Healthy),
        ];
        for (previous, holds, emit, next) in cases {
            let mut f = facts(Generation::Health, previous, true);
            f.held = holds.then_some(&held);
            let d = decide(&f, &healthy);
            assert_eq!(
                (&d.emit, d.next),
                (&emit, next),
                "{previous:?} holds={holds}"
            );
            assert_eq!(d.desired, Some(vec![]), "{previous:?} holds={holds}");
            assert_eq!(d.status, VolumeStatus::Normal);
        }
        // Abnormal again after a recovery (clear pending or not) is news again.
        let bad = Finding::Conditions(vec![typed(2, "DiskGone", "gone again")]);
        for holds in [true, false] {
            let mut f = facts(Generation::Health, Reported::Recovered, true);
            f.held = holds.then_some(&held);
            let d = decide(&f, &bad);
            assert_eq!(
                d.emit,
                Some(Emit::Warning {
                    reason: REASON_ABNORMAL,
                    message: "Inaccessible: DiskGone: gone again".into()
                })
            );
            assert_eq!(d.next, Reported::Abnormal);
        }
    }

    fn pv(phase: &str, deleting: bool, claim: bool, handle: &str) -> PvRecord {
        PvRecord::new(
            "pv",
            handle,
            PvPhase::parse(phase),
            claim.then_some(("ns", "pvc", "cu")),
            deleting,
        )
        .unwrap()
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

    #[test]
    fn mass_absence_guard() {
        for (newly, total, fraction, trips) in [
            (2000, 2000, 0.5, true),
            (1001, 2000, 0.5, true),
            (1000, 2000, 0.5, false),
            (3, 2000, 0.5, false),
            // Fewer than ten never trips, even when it is all of them.
            (9, 9, 0.5, false),
            (10, 10, 0.5, true),
            (0, 0, 0.5, false),
            (2000, 2000, 1.0, false),
            (10, 2000, 0.0, true),
            (9, 2000, 0.0, false),
        ] {
            assert_eq!(
                mass_absence(newly, total, fraction),
                trips,
                "{newly} of {total} at {fraction}"
            );
        }
    }
}
