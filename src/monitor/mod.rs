//! The monitor: turns what the driver says about volumes into Events on the bound PVCs and, for
//! CSI v1.13 drivers, into the PVCs' `status.healthStatus`.
//!
//! `Monitor` holds what every mode shares (stores, recorder, the per-PVC reported state and the
//! per-volume metrics); `list` runs the listing sweeps (ListVolumes, ControllerListVolumeHealth),
//! `get` keeps the per-volume modes' volumes (ControllerGetVolume, ControllerGetVolumeHealth)
//! in line with the store; `engine` makes every per-volume call of both, on one worker pool;
//! `decide` holds the pure decisions and `status` the PVC status writes. Which RPCs answer is
//! fixed by the `HealthSource` the loops are given; the generation is the mode's, given to
//! `Monitor::new` once (nothing here infers it).

pub mod decide;
pub mod engine;
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
use crate::sync::lock;
use crate::timeutil::{parse_rfc3339, rfc3339};
use crate::watch::{PvRecord, PvStore, PvcRecord, PvcStore, Token};
use decide::{decide, Emit, Facts, Finding, Reported};
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
    /// The mode's generation (`Mode::generation`), the one place it is known here.
    generation: Generation,
    pub pvs: PvStore,
    pub pvcs: PvcStore,
    client: Client,
    recorder: Recorder,
    metrics: Arc<Metrics>,
    report_missing: bool,
    /// `Some` in the v1.13 health modes.
    health: Option<HealthOutput>,
    /// PVC uid → what we last reported. Seeded from existing Events at start.
    reported: Mutex<HashMap<Token, Reported>>,
    /// PV name → what was last mended in the driver's answer, so a driver that keeps sending
    /// the same malformed answer is named once, not on every check.
    mended: Mutex<HashMap<Arc<str>, Mended>>,
    /// PV name → the last malformed driver answer said about it (logged once per volume).
    malformed: Mutex<HashMap<Arc<str>, String>>,
    /// The PV store's count of removals at the last `forget_gone` (`u64::MAX`: never).
    forgotten_at: AtomicU64,
    /// Per-volume errors that can repeat for every volume of a sweep are logged at most once
    /// per 10 s with a count (DESIGN §2.9): PVC lookups, driver calls.
    pvc_errors: Throttle,
    pub(crate) rpc_errors: Throttle,
}

impl Monitor {
    // Each argument is a separate piece of the controller's context; the generation comes
    // first and is required, so that nothing infers it later.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        generation: Generation,
        driver: String,
        pvs: PvStore,
        pvcs: PvcStore,
        client: Client,
        recorder: Recorder,
        metrics: Arc<Metrics>,
        seed: HashMap<String, Reported>,
    ) -> Monitor {
        let claims = pvs.clone();
        metrics.label_volumes(Box::new(move |pv| {
            claims.with(pv, |r| {
                let c = r?.claim()?;
                Some((c.namespace.to_string(), c.name.to_string()))
            })
        }));
        Monitor {
            generation,
            driver,
            pvs,
            pvcs,
            client,
            recorder,
            metrics,
            report_missing: true,
            health: None,
            reported: Mutex::new(
                seed.into_iter()
                    .map(|(uid, r)| (Token::new(&uid), r))
                    .collect(),
            ),
            mended: Mutex::new(HashMap::new()),
            malformed: Mutex::new(HashMap::new()),
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
        debug_assert_eq!(self.generation, Generation::Health);
        self.health = Some(out);
        self
    }

    pub fn generation(&self) -> Generation {
        self.generation
    }

    /// A repeated Warning the event queue has no room for, refused without building it
    /// (`Recorder::refuse_repeat`): for a volume standing reported with the same finding, an
    /// observation would do nothing else.
    pub(crate) fn refuse_repeat(&self) -> bool {
        self.recorder.refuse_repeat()
    }

    /// `--report-missing-volumes`.
    pub fn reports_missing(&self) -> bool {
        self.report_missing
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The PVC `pv` is bound to, from the cache or the API; errors are logged.
    fn claim_of(&self, pv: &PvRecord) -> Option<PvcRecord> {
        let claim = pv.claim()?;
        match self
            .pvcs
            .get_or_fetch(&self.client, claim.namespace, claim.name)
        {
            Ok(Some(pvc)) => Some(pvc),
            Ok(None) => {
                if let Some(n) = self.pvc_errors.hit(Instant::now()) {
                    log::error!(
                        errors_since_last_line = n, pv:% = pv.name(),
                        pvc:% = format_args!("{}/{}", claim.namespace, claim.name),
                        err:% = "persistentvolumeclaim not found";
                        "Get PVC error"
                    );
                }
                None
            }
            Err(e) => {
                if let Some(n) = self.pvc_errors.hit(Instant::now()) {
                    log::error!(
                        errors_since_last_line = n, pv:% = pv.name(),
                        pvc:% = format_args!("{}/{}", claim.namespace, claim.name),
                        err:% = e;
                        "Get PVC error"
                    );
                }
                None
            }
        }
    }

    /// Whether `pv`'s volume stands reported abnormal: by us, or (v1.13) in its PVC's status
    /// with its recovery not told yet. The health listing uses it to tell an absent volume
    /// that needs confirming from one that was never abnormal (or whose recovery was told and
    /// only its status clear is left to retry).
    pub fn stands_abnormal(&self, pv: &PvRecord) -> bool {
        let Some(claim) = pv.claim() else {
            return false;
        };
        let pvc = self.pvcs.get(claim.namespace, claim.name);
        let uid = pvc.as_ref().map_or(claim.uid, |p| p.uid());
        match lock(&self.reported).get(&uid) {
            Some(Reported::Abnormal) => true,
            Some(Reported::Recovered) => false,
            Some(Reported::Healthy) | None => pvc.as_ref().is_some_and(|p| p.health().is_some()),
        }
    }

    /// Act on one observation of `pv`'s volume: find its PVC, decide, report, remember. Returns
    /// the volume's state afterwards (`None`: nothing could be done, e.g. no PVC).
    ///
    /// What was told (Events) and what the PVC holds (status) are kept apart: a recovery is
    /// told once, when the volume is judged healthy, whatever its status write does; a status
    /// write that fails is retried (by the writer, then at every check) until it lands or the
    /// PVC is gone; an Event the queue refuses stays owed.
    pub fn observe(&self, pv: &PvRecord, observation: &Finding) -> Option<Reported> {
        let pvc = self.claim_of(pv)?;
        let (decision, previous) = {
            let mut reported = lock(&self.reported);
            let previous = reported
                .get(&pvc.uid())
                .copied()
                .unwrap_or(Reported::Healthy);
            let d = decide(
                &Facts {
                    generation: self.generation(),
                    previous,
                    held: pvc.health(),
                    handle: pv.volume_handle(),
                    driver: &self.driver,
                    report_missing: self.report_missing,
                    events: self.health.as_ref().is_none_or(|h| h.events),
                },
                observation,
            );
            remember(&mut reported, &pvc.uid(), d.next);
            (d, previous)
        };
        self.metrics
            .set_volume_status(pv.name_arc(), decision.status);
        if let Some(desired) = &decision.desired {
            self.metrics.set_volume_conditions(
                pv.name(),
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
                // Not told, so still news: a refused first report leaves the volume as it was
                // (the next check tries it again as news, not as a repeat); a refused recovery
                // stays owed, whatever the status write below does.
                next = match kind {
                    EventType::Warning => previous,
                    EventType::Normal => Reported::Abnormal,
                };
                remember(&mut lock(&self.reported), &pvc.uid(), next);
            }
        }
        if let (Some(out), Some(desired)) = (&self.health, &decision.desired) {
            let now = rfc3339(SystemTime::now());
            if let Some(write) = health::status_write(pvc.health(), desired, &now) {
                match out.writer.write(&pvc, write.as_ref()) {
                    Written::Ok(answer) => {
                        let clean = answer.health().is_none();
                        self.pvcs.record_write(&pvc, *answer);
                        // The clear landed: the recovery is complete.
                        if clean && next == Reported::Recovered {
                            next = Reported::Healthy;
                            remember(&mut lock(&self.reported), &pvc.uid(), next);
                        }
                    }
                    Written::Gone => {
                        // 404: the PVC is gone, and with it this volume's state.
                        lock(&self.reported).remove(&pvc.uid());
                        next = Reported::Healthy;
                    }
                    Written::Dropped | Written::Forbidden | Written::Failed | Written::Deferred => {
                    }
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
            seen.remove(pv.name());
            return;
        }
        if seen.get(pv.name()) != Some(mended) {
            log::warn!(
                pv:% = pv.name(), volume:% = pv.volume_handle(), mended:% = mended;
                "CSI driver sent a volume health answer that breaks the CSI spec or the Kubernetes API's limits; mended it"
            );
            seen.insert(pv.name_arc().clone(), mended.clone());
        }
    }

    /// The driver broke the spec answering about `pv` (csi::Error::Malformed): an error line
    /// once per volume, and again when the problem changes.
    pub(crate) fn answer_malformed(&self, pv: &PvRecord, e: &crate::csi::Error) {
        let text = e.to_string();
        let mut said = lock(&self.malformed);
        if said.get(pv.name()) != Some(&text) {
            log::error!(
                pv:% = pv.name(), err:% = text;
                "Check controller volume status error"
            );
            said.insert(pv.name_arc().clone(), text);
        }
    }

    /// A well-formed answer about `pv`: a later malformed one is said again.
    pub(crate) fn answer_well_formed(&self, pv: &PvRecord) {
        let mut said = lock(&self.malformed);
        if !said.is_empty() {
            said.remove(pv.name());
        }
    }

    /// Drop state and metric series of PVs that left the store (deleted, or no longer ours).
    /// Everything kept is keyed by live PVs, so nothing is done until a PV is removed (an
    /// update removes none: the state of a claim a PV was re-bound away from waits for the
    /// next removal); then the snapshot is read as it is, with no copy of its keys or records.
    pub fn forget_gone(&self) {
        let removals = self.pvs.removals();
        if self.forgotten_at.swap(removals, Ordering::SeqCst) == removals {
            return;
        }
        let pvs = self.pvs.snapshot();
        self.metrics.retain_volumes(|pv| pvs.contains_key(pv));
        lock(&self.mended).retain(|pv, _| pvs.contains_key(pv));
        lock(&self.malformed).retain(|pv, _| pvs.contains_key(pv));
        let mut reported = lock(&self.reported);
        let deferred = self
            .health
            .as_ref()
            .is_some_and(|h| h.writer.has_deferred());
        if reported.is_empty() && !deferred {
            return;
        }
        // Borrowed from the snapshot: one set of references, no copies.
        let live: HashSet<Token> = pvs
            .iter()
            .filter_map(|pv| pv.claim().map(|c| c.uid))
            .collect();
        reported.retain(|uid, _| live.contains(uid));
        if let Some(out) = &self.health {
            out.writer.retain(|uid| live.contains(uid));
        }
    }
}

/// Keep `state` for `uid`; Healthy is kept as absence, so the map holds only what needs it.
fn remember(reported: &mut HashMap<Token, Reported>, uid: &Token, state: Reported) {
    match state {
        Reported::Healthy => {
            reported.remove(uid);
        }
        Reported::Abnormal | Reported::Recovered => {
            reported.insert(uid.clone(), state);
        }
    }
}

/// Rebuild "which PVCs are currently reported abnormal" from the Events we wrote before (a
/// restart, a new leader): a PVC whose latest `VolumeConditionAbnormal` Warning from our
/// component is newer than its latest `VolumeConditionNormal` still needs its recovery event;
/// one whose Normal is newer had its recovery told (a status clear that was still failing
/// then must not tell it again).
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
        let state = if recovered_later {
            Reported::Recovered
        } else {
            Reported::Abnormal
        };
        // Several Warnings of one PVC: Abnormal if any of them is not followed by a Normal.
        let e = out.entry(uid.clone()).or_insert(state);
        if state == Reported::Abnormal {
            *e = state;
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
            Some(&Reported::Recovered),
            "recovered after its last abnormal event: told, not owed"
        );
        assert_eq!(
            seeded.get("c"),
            Some(&Reported::Abnormal),
            "abnormal again after recovering"
        );
        assert_eq!(seeded.get("d"), None);
    }

    pub(crate) mod observe {
        //! `Monitor::observe` against a canned API server and an unattended event queue
        //! (issue #25): what was told and what the PVC holds are apart. The rig serves the
        //! list loop's tests too.
        use super::super::*;
        use crate::events::{unattended, Unattended};
        use crate::health::Condition;
        use crate::kube::client::tests::{client, http, Canned};
        use crate::watch::PvPhase;
        use serde_json::json;
        use std::time::Duration;

        const HELD: &str = r#"{"healthConditions":[{"status":"Inaccessible","reason":"DiskGone","message":"gone"}],"lastTransitionTime":"2026-12-01T00:00:00Z"}"#;

        pub(crate) fn pv() -> PvRecord {
            PvRecord::new(
                "pv-v1",
                "v1",
                PvPhase::Bound,
                Some(("ns", "pvc-v1", "u1")),
                false,
            )
            .unwrap()
        }

        /// PVC `ns/pvc-v1` at `rv`, holding the DiskGone condition or nothing, as JSON.
        fn pvc_json(rv: &str, holds: bool) -> String {
            let status = if holds {
                format!(r#","status":{{"healthStatus":{HELD}}}"#)
            } else {
                String::new()
            };
            format!(
                r#"{{"metadata":{{"name":"pvc-v1","namespace":"ns","uid":"u1","resourceVersion":"{rv}"}},"spec":{{"volumeName":"pv-v1"}}{status}}}"#
            )
        }

        pub(crate) struct Rig {
            pub(crate) monitor: Monitor,
            pub(crate) api: Canned,
            pub(crate) events: Unattended,
        }

        /// A monitor of `generation` whose PVC is cached at rv 1 (holding conditions when
        /// `holds`), `seed` as its memory, event queue of `capacity`, and the API answering
        /// `responses` in order.
        pub(crate) fn rig(
            generation: Generation,
            holds: bool,
            seed: Option<Reported>,
            capacity: usize,
            responses: Vec<Vec<u8>>,
        ) -> Rig {
            let api = Canned::start(responses);
            let c = client(&api.addr);
            let pvs = PvStore::new();
            pvs.apply(pv());
            let pvcs = PvcStore::new(pvs.clone());
            let rec = PvcRecord::from_object(&serde_json::from_str(&pvc_json("1", holds)).unwrap())
                .unwrap();
            pvcs.store().apply(rec);
            let (recorder, events) = unattended(capacity);
            let metrics = Arc::new(Metrics::new());
            let seed = seed.map(|r| ("u1".to_string(), r)).into_iter().collect();
            let mut monitor = Monitor::new(
                generation,
                "d.example.com".into(),
                pvs,
                pvcs,
                c.clone(),
                recorder,
                metrics.clone(),
                seed,
            );
            if generation == Generation::Health {
                monitor = monitor.health_output(HealthOutput {
                    writer: StatusWriter::new(
                        c,
                        metrics,
                        Duration::ZERO,
                        crate::shutdown::Shutdown::new(),
                    )
                    .without_waits(),
                    events: true,
                });
            }
            Rig {
                monitor,
                api,
                events,
            }
        }

        fn healthy() -> Finding {
            Finding::Conditions(vec![])
        }

        fn normal() -> (String, String, String) {
            (
                "Normal".into(),
                decide::REASON_NORMAL.into(),
                decide::MESSAGE_RECOVERED.into(),
            )
        }

        fn patches(api: &Canned) -> Vec<String> {
            api.requests()
                .into_iter()
                .filter(|r| r.starts_with("PATCH /api/v1/namespaces/ns/persistentvolumeclaims/pvc-v1/status?fieldManager="))
                .collect()
        }

        fn held(r: &Rig) -> bool {
            r.monitor
                .pvcs
                .get("ns", "pvc-v1")
                .unwrap()
                .health()
                .is_some()
        }

        #[test]
        fn a_recovery_is_told_once_while_its_status_clear_fails_then_lands() {
            let err500 = http(500, "", r#"{"kind":"Status","code":500,"message":"etcd"}"#);
            let mut answers = vec![err500; 4];
            answers.push(http(
                403,
                "",
                r#"{"kind":"Status","code":403,"reason":"Forbidden"}"#,
            ));
            answers.push(http(200, "", &pvc_json("2", false)));
            let r = rig(
                Generation::Health,
                true,
                Some(Reported::Abnormal),
                100,
                answers,
            );
            // Judged healthy: told at once, the clear fails (500 and its three retries).
            assert_eq!(
                r.monitor.observe(&pv(), &healthy()),
                Some(Reported::Recovered)
            );
            assert_eq!(r.events.take(), vec![normal()]);
            assert_eq!(patches(&r.api).len(), 4);
            assert!(held(&r));
            // Still held: the clear again (403), no second Normal.
            assert_eq!(
                r.monitor.observe(&pv(), &healthy()),
                Some(Reported::Recovered)
            );
            assert_eq!(r.events.take(), vec![]);
            assert_eq!(patches(&r.api).len(), 5);
            // It lands: the cache holds the answer, the volume is done.
            assert_eq!(
                r.monitor.observe(&pv(), &healthy()),
                Some(Reported::Healthy)
            );
            assert_eq!(r.events.take(), vec![]);
            assert!(!held(&r));
            assert_eq!(
                r.monitor
                    .pvcs
                    .get("ns", "pvc-v1")
                    .unwrap()
                    .resource_version()
                    .to_string(),
                "2"
            );
            let all = patches(&r.api);
            assert_eq!(all.len(), 6);
            assert!(all
                .iter()
                .all(|p| p.ends_with(r#"{"status":{"healthStatus":null}}"#)));
            // Nothing left: no Event, no write.
            assert_eq!(
                r.monitor.observe(&pv(), &healthy()),
                Some(Reported::Healthy)
            );
            assert_eq!(r.events.take(), vec![]);
            assert_eq!(r.api.requests().len(), 6);
            assert!(!r.monitor.stands_abnormal(&pv()));
        }

        #[test]
        fn a_recovery_the_queue_refuses_stays_owed_though_the_clear_lands() {
            // After a restart only the PVC's status says abnormal; the queue is full of news.
            let r = rig(
                Generation::Health,
                true,
                None,
                1,
                vec![http(200, "", &pvc_json("2", false))],
            );
            let other = crate::events::ObjectRef::pvc(&r.monitor.pvcs.get("ns", "pvc-v1").unwrap());
            assert!(r.monitor.recorder.event(
                &other,
                EventType::Warning,
                "Other",
                "fills the queue"
            ));
            assert_eq!(
                r.monitor.observe(&pv(), &healthy()),
                Some(Reported::Abnormal)
            );
            assert!(!held(&r), "the clear went out and landed");
            assert!(r.monitor.stands_abnormal(&pv()), "the recovery is owed");
            // The queue has room again: the owed recovery is told, once.
            assert_eq!(r.events.take().len(), 1);
            assert_eq!(
                r.monitor.observe(&pv(), &healthy()),
                Some(Reported::Healthy)
            );
            assert_eq!(r.events.take(), vec![normal()]);
            assert_eq!(
                r.monitor.observe(&pv(), &healthy()),
                Some(Reported::Healthy)
            );
            assert_eq!(r.events.take(), vec![]);
            assert_eq!(patches(&r.api).len(), 1);
        }

        #[test]
        fn a_refused_first_report_is_news_again_next_time() {
            let r = rig(Generation::Condition, false, None, 0, vec![]);
            let bad = Finding::Conditions(vec![Condition::legacy("broken")]);
            assert_eq!(r.monitor.observe(&pv(), &bad), Some(Reported::Healthy));
            assert_eq!(r.monitor.recorder.dropped(), 1);
            assert!(!r.monitor.stands_abnormal(&pv()));
            // A healthy check then owes nothing: nothing was told.
            assert_eq!(
                r.monitor.observe(&pv(), &healthy()),
                Some(Reported::Healthy)
            );
            assert_eq!(r.monitor.recorder.dropped(), 1);
        }

        #[test]
        fn legacy_abnormal_repeats_and_one_recovery() {
            let r = rig(Generation::Condition, false, None, 100, vec![]);
            let bad = Finding::Conditions(vec![Condition::legacy("broken")]);
            let warning = (
                "Warning".to_string(),
                decide::REASON_ABNORMAL.to_string(),
                "broken".to_string(),
            );
            assert_eq!(r.monitor.observe(&pv(), &bad), Some(Reported::Abnormal));
            assert_eq!(r.monitor.observe(&pv(), &bad), Some(Reported::Abnormal));
            assert_eq!(r.events.take(), vec![warning.clone(), warning]);
            assert_eq!(
                r.monitor.observe(&pv(), &healthy()),
                Some(Reported::Healthy)
            );
            assert_eq!(
                r.monitor.observe(&pv(), &healthy()),
                Some(Reported::Healthy)
            );
            assert_eq!(r.events.take(), vec![normal()]);
            // Missing: the missing-volume Warning.
            assert_eq!(
                r.monitor.observe(&pv(), &Finding::Missing),
                Some(Reported::Abnormal)
            );
            assert_eq!(
                r.events.take()[0].2,
                "Volume v1 was not found by CSI driver d.example.com"
            );
            assert!(r.api.requests().is_empty(), "v1.12 never writes status");
        }

        #[test]
        fn a_gone_pvc_ends_the_volume_state_and_a_dropped_write_keeps_it() {
            let bad = Finding::Conditions(vec![Condition::typed(1, "Slow", "slow")]);
            let r = rig(
                Generation::Health,
                true,
                Some(Reported::Abnormal),
                100,
                vec![http(
                    404,
                    "",
                    r#"{"kind":"Status","code":404,"reason":"NotFound"}"#,
                )],
            );
            assert_eq!(r.monitor.observe(&pv(), &bad), Some(Reported::Healthy));
            assert!(!lock(&r.monitor.reported).contains_key(&Token::new("u1")));
            // Gate off: the answer lacks the field; the volume stays reported abnormal.
            let r = rig(
                Generation::Health,
                false,
                None,
                100,
                vec![http(200, "", &pvc_json("2", false))],
            );
            assert_eq!(r.monitor.observe(&pv(), &bad), Some(Reported::Abnormal));
            assert_eq!(r.events.take().len(), 1);
            assert!(!held(&r));
            let sent = patches(&r.api);
            assert_eq!(sent.len(), 1);
            let body: serde_json::Value =
                serde_json::from_str(sent[0].split("\r\n\r\n").nth(1).unwrap()).unwrap();
            assert_eq!(
                body["status"]["healthStatus"]["healthConditions"],
                json!([{"status": "Degraded", "reason": "Slow", "message": "slow"}])
            );
        }
    }

    #[test]
    fn component_name() {
        assert_eq!(
            event_component("hostpath.csi.k8s.io"),
            "csi-pv-monitor-controller-hostpath.csi.k8s.io"
        );
    }
}
