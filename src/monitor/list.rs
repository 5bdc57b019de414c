//! The listing modes: v1.12 ListVolumes sweeps and v1.13 ControllerListVolumeHealth cycles,
//! one paginated listing right away and then every `--list-volumes-interval` (measured from the
//! end of the previous one, as upstream), on one named thread. The two generations differ only
//! in what an absent volume means (volume-health-v1.13.md §3.3): for ListVolumes, missing after
//! two complete sweeps; for the health listing, which leaves healthy volumes out, recovered
//! once a `ControllerGetVolumeHealth` confirms it (or after two cycles without that RPC).
//! Every per-volume call that confirms an absence runs on the check engine (`engine.rs`): the
//! loop hands it the names and reads the answers, so the health listing's confirmations of a
//! mass recovery run in parallel, not one by one on this thread.
//!
//! A sweep in which nothing changed costs a hash lookup per PV: volumes last seen healthy are
//! remembered ("quiet") and not reported again while they stay so.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::decide::{absent_after, checkable, mass_absence, Finding, Reported};
use super::engine::{Engine, Name};
use super::Monitor;
use crate::csi::{Condition, Error as CsiError, Generation, HealthSource};
use crate::paging::{PageGuard, PageLoop};
use crate::shutdown::Shutdown;
use crate::store::{Keyed, Records};
use crate::watch::PvRecord;

/// A volume whose last observation left nothing to do, for as long as its PV record is the
/// one it was observed with: every update of a PV brings a new record with a new name
/// allocation, so `Arc::ptr_eq` on the name tells "same record" without comparing fields.
#[derive(Clone, Debug)]
struct Settled {
    pv: Name,
    how: Settle,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Settle {
    /// Observed healthy and reported so.
    Healthy,
    /// Absent from ListVolumes with the missing-volume report off: nothing is told, the
    /// metric says `not_found`.
    Unreported,
    /// v1.12: reported abnormal with these conditions (a fingerprint): observing the same
    /// again only repeats the Warning, which a full event queue refuses.
    Abnormal(u32),
    /// v1.12: reported missing; likewise only a repeat.
    Missing,
}

/// A fingerprint of a volume's conditions: equal conditions, equal fingerprints (a collision
/// costs nothing worse than a refused repeat carrying a changed message).
fn fingerprint(conditions: &[Condition]) -> u32 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    conditions.hash(&mut h);
    h.finish() as u32
}

impl Keyed for Settled {
    fn key(&self) -> &str {
        &self.pv
    }
}

/// A PV's count of consecutive complete listings without its volume.
#[derive(Clone, Debug)]
struct Absence {
    pv: Name,
    count: u32,
}

impl Keyed for Absence {
    fn key(&self) -> &str {
        &self.pv
    }
}

/// Upper bound on pages in one sweep: a driver that keeps returning tokens is cut off rather
/// than looping forever (upstream relied on one 15 s deadline for the whole sweep).
const MAX_PAGES: usize = 1_000_000;
/// How long the confirmations' last answers are waited for after the last call went out
/// (each call is bounded by `--timeout` anyway).
const CONFIRM_DRAIN: Duration = Duration::from_secs(60);

/// A whole listing may take this many `--timeout`s (or the listing interval, when longer):
/// 15 minutes at the default 15 s. Upstream gave the whole sweep one `--timeout`; ours bounds
/// each call by it, and this bounds the sum, so a driver that hands out pages slowly for ever
/// cannot stall the loop.
pub const LISTING_TIMEOUTS: u32 = 60;
/// A listing may hold at most this many entries per Bound PV of the driver, and never fewer
/// than [`LISTING_MIN_ENTRIES`]: a driver's listing covers its whole backend, possibly shared
/// by other clusters, but a listing far beyond that is a driver that never stops.
pub const LISTING_ENTRIES_PER_PV: usize = 4;
pub const LISTING_MIN_ENTRIES: usize = 100_000;

/// How far one listing may go before it is given up (as an error: no absence or recovery is
/// decided from it).
#[derive(Debug, Clone, Copy)]
pub struct ListingBound {
    pub deadline: Instant,
    pub entries: usize,
}

impl ListingBound {
    /// The bound of a listing starting `now` for a driver with `pvs` PVs in the cache.
    pub fn new(now: Instant, interval: Duration, timeout: Duration, pvs: usize) -> ListingBound {
        let time = timeout.saturating_mul(LISTING_TIMEOUTS).max(interval);
        ListingBound {
            deadline: crate::timeutil::saturating_deadline(now, time),
            entries: pvs
                .saturating_mul(LISTING_ENTRIES_PER_PV)
                .max(LISTING_MIN_ENTRIES),
        }
    }
}

#[derive(Debug)]
pub enum SweepError {
    Rpc(CsiError),
    /// The driver repeated a token of this sweep, or never stopped handing them out.
    Paging(PageLoop),
    /// The listing went on past its time bound (after this many pages).
    TooLong {
        pages: usize,
    },
    /// The listing held more entries than its bound.
    TooMany {
        entries: usize,
    },
}

impl std::fmt::Display for SweepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SweepError::Rpc(e) => write!(f, "failed to list volumes: {e}"),
            SweepError::Paging(e) => write!(f, "failed to list volumes: the driver {e}"),
            SweepError::TooLong { pages } => write!(
                f,
                "failed to list volumes: the listing was still going after {pages} pages at its time bound ({LISTING_TIMEOUTS} times --timeout, or --list-volumes-interval when longer)"
            ),
            SweepError::TooMany { entries } => write!(
                f,
                "failed to list volumes: the driver listed more than {entries} volumes ({LISTING_ENTRIES_PER_PV} per Bound PV of this driver, at least {LISTING_MIN_ENTRIES})"
            ),
        }
    }
}

/// The volumes of one listing with their conditions (none: healthy). A sweep asks only "is
/// this handle listed, and with what": entries are keyed by a keyed hash of the handle, 64
/// bits as the key and 32 more as a check (two SipHashes with secret keys: two handles of a
/// million-volume listing collide with a chance of about 2^-57, and cannot be made to), 16
/// bytes each, with the conditions of the few abnormal volumes aside. A ListVolumes listing
/// of 1,000,000 volumes held as many handle strings and condition vectors, the largest
/// transient of a sweep (issue #23). Check-once, which prints every listed volume, keeps the
/// handles (`Listed::named`).
#[derive(Debug)]
pub enum Listed {
    Hashed {
        keys: (RandomState, RandomState),
        /// Key hash -> (check hash, index into `abnormal`, or `HEALTHY`).
        entries: HashMap<u64, (u32, u32)>,
        abnormal: Vec<Box<[Condition]>>,
    },
    Named(HashMap<String, Vec<Condition>>),
}

/// The index of a listed volume without conditions.
const HEALTHY: u32 = u32::MAX;

impl Listed {
    /// Room for `expected` volumes (the PVs of the driver): no doubling while pages come in.
    pub fn hashed(expected: usize) -> Listed {
        Listed::Hashed {
            keys: (RandomState::new(), RandomState::new()),
            entries: HashMap::with_capacity(expected),
            abnormal: Vec::new(),
        }
    }

    pub fn named() -> Listed {
        Listed::Named(HashMap::new())
    }

    fn key(keys: &(RandomState, RandomState), id: &str) -> (u64, u32) {
        (keys.0.hash_one(id), keys.1.hash_one(id) as u32)
    }

    pub fn get(&self, id: &str) -> Option<&[Condition]> {
        match self {
            Listed::Hashed {
                keys,
                entries,
                abnormal,
            } => {
                let (key, check) = Self::key(keys, id);
                match entries.get(&key) {
                    Some((c, HEALTHY)) if *c == check => Some(&[]),
                    Some((c, i)) if *c == check => abnormal.get(*i as usize).map(|c| &**c),
                    _ => None,
                }
            }
            Listed::Named(m) => m.get(id).map(|c| c.as_slice()),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Listed::Hashed { entries, .. } => entries.len(),
            Listed::Named(m) => m.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn reserve(&mut self, n: usize) {
        match self {
            Listed::Hashed { entries, .. } => entries.reserve(n),
            Listed::Named(m) => m.reserve(n),
        }
    }

    /// The later entry of a volume listed twice wins.
    fn insert(&mut self, id: String, conditions: Vec<Condition>) {
        match self {
            Listed::Hashed {
                keys,
                entries,
                abnormal,
            } => {
                let (key, check) = Self::key(keys, &id);
                let index = if conditions.is_empty() {
                    HEALTHY
                } else {
                    // Past 4 billion abnormal entries the listing is long over its bound.
                    let i = u32::try_from(abnormal.len()).unwrap_or(HEALTHY - 1);
                    abnormal.push(conditions.into_boxed_slice());
                    i
                };
                entries.insert(key, (check, index));
            }
            Listed::Named(m) => {
                m.insert(id, conditions);
            }
        }
    }

    fn remove(&mut self, id: &str) {
        match self {
            Listed::Hashed { keys, entries, .. } => {
                entries.remove(&Self::key(keys, id).0);
            }
            Listed::Named(m) => {
                m.remove(id);
            }
        }
    }

    /// The handles and their conditions, when kept (`named`).
    pub fn into_named(self) -> Option<HashMap<String, Vec<Condition>>> {
        match self {
            Listed::Named(m) => Some(m),
            Listed::Hashed { .. } => None,
        }
    }
}

/// One complete listing.
#[derive(Debug)]
pub struct Listing {
    /// Every volume listed with its conditions (none: healthy).
    pub volumes: Listed,
    /// Volumes listed without the condition the spec requires: present, health unknown.
    pub unjudged: HashSet<String>,
    pub pages: usize,
}

/// Every volume the driver returned in one complete listing, into `out` (`Listed::hashed` for
/// a sweep, `Listed::named` to keep the handles); a volume listed twice (pages are no
/// consistent view) takes its later entry. Past `bound` the listing is an error.
pub fn collect(
    source: &dyn HealthSource,
    max_entries: i32,
    bound: ListingBound,
    mut out: Listed,
) -> Result<Listing, SweepError> {
    let mut unjudged = HashSet::new();
    let mut guard = PageGuard::new(MAX_PAGES);
    let mut token = String::new();
    let mut pages = 0;
    loop {
        if pages > 0 && Instant::now() >= bound.deadline {
            return Err(SweepError::TooLong { pages });
        }
        let page = source
            .list_page(max_entries, &token)
            .map_err(SweepError::Rpc)?;
        pages += 1;
        let listed = page.entries.len() + page.unjudged.len();
        if (out.len() + unjudged.len()).saturating_add(listed) > bound.entries {
            return Err(SweepError::TooMany {
                entries: bound.entries,
            });
        }
        if page.skipped > 0 {
            log::warn!(
                starting_token:% = token;
                "{} returned {} entries without a volume; skipping them",
                source.list_method(),
                page.skipped
            );
        }
        out.reserve(page.entries.len());
        for (id, conds) in page.entries {
            if !unjudged.is_empty() {
                unjudged.remove(&id);
            }
            out.insert(id, conds);
        }
        for id in page.unjudged {
            out.remove(&id);
            unjudged.insert(id);
        }
        guard.page(&page.next_token).map_err(SweepError::Paging)?;
        if page.next_token.is_empty() {
            return Ok(Listing {
                volumes: out,
                unjudged,
                pages,
            });
        }
        token = page.next_token;
    }
}

pub struct ListLoop {
    pub monitor: Arc<Monitor>,
    pub source: Arc<dyn HealthSource>,
    pub interval: Duration,
    pub max_entries: i32,
    /// v1.13: the driver has `GET_VOLUME_HEALTH` to confirm recoveries.
    confirm: bool,
    /// The one absence counter: consecutive complete listings each PV's volume was absent
    /// from (written only by `absent_again`).
    absences: Records<Absence>,
    /// Volumes with nothing to do while they stay as they are ("quiet"): a sweep in which
    /// nothing changed costs a lookup here per PV.
    quiet: Records<Settled>,
    /// The PV store's count of removals when `absences` and `quiet` were last pruned: only a
    /// removal (or a relist) can leave entries of PVs that are gone.
    pruned_at: Option<u64>,
    /// v1.12 ListVolumes with `GET_VOLUME`: a volume absent from two sweeps is asked about with
    /// `ControllerGetVolume` before it is called missing.
    confirm_missing: bool,
    /// `--worker-threads`: the size of the check engine the confirmations run on.
    workers: usize,
    /// The check engine, started at the first confirmation.
    engine: Option<Engine>,
    /// The daemon's shutdown (set by `run`): a confirmation batch gives up on it.
    shutdown: Shutdown,
    /// PVs absent long enough to be missing, to be asked about during the wait after the sweep.
    to_confirm: Vec<Name>,
    /// `--missing-volumes-max-fraction`.
    max_fraction: f64,
    /// Newly missing volumes the guard held back last time (the warning is logged on change).
    suppressed: usize,
    /// The driver's ListVolumes was seen to omit volumes it knows (logged once).
    omits_logged: bool,
    /// Sweeps done; rotates where each sweep starts in the PV list.
    sweeps: usize,
    /// `--kube-api-qps` and `--kube-api-burst`, until the first complete sweep has been held
    /// against them (the write budget, logged once).
    write_budget: Option<(f64, u32)>,
    /// Abnormal or missing observations in the current sweep.
    abnormal_seen: usize,
    /// `--timeout`: with the interval, the time bound of one listing.
    call_timeout: Duration,
}

impl ListLoop {
    pub fn new(
        monitor: Arc<Monitor>,
        source: Arc<dyn HealthSource>,
        interval: Duration,
        max_entries: i32,
    ) -> Self {
        ListLoop {
            monitor,
            source,
            interval,
            max_entries,
            confirm: false,
            absences: Records::new(),
            quiet: Records::new(),
            pruned_at: None,
            confirm_missing: false,
            workers: 1,
            engine: None,
            shutdown: Shutdown::new(),
            to_confirm: Vec::new(),
            max_fraction: 1.0,
            suppressed: 0,
            omits_logged: false,
            sweeps: 0,
            write_budget: None,
            abnormal_seen: 0,
            // `--timeout`'s default, until `call_timeout` says otherwise.
            call_timeout: Duration::from_secs(15),
        }
    }

    /// `--timeout`: each call's deadline, and with the interval the bound of a whole listing.
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// `--kube-api-qps` / `--kube-api-burst`: after the first complete sweep, say once (-v=2)
    /// when its abnormal volumes cannot all be written as Events within one interval.
    pub fn write_budget(mut self, qps: f64, burst: u32) -> Self {
        self.write_budget = Some((qps, burst));
        self
    }

    /// v1.12 ListVolumes, driver with `GET_VOLUME`: confirm each volume absent from two
    /// complete sweeps with `ControllerGetVolume` (NOT_FOUND: missing; an answer: its
    /// condition), the calls spread over the interval (DESIGN §3.6).
    pub fn confirm_missing_with_get(mut self, on: bool) -> Self {
        self.confirm_missing = on;
        self
    }

    /// `--worker-threads`: how many confirmations may run at once (the engine's size).
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers.max(1);
        self
    }

    /// `--missing-volumes-max-fraction` (1: the mass-absence guard is off).
    pub fn missing_max_fraction(mut self, fraction: f64) -> Self {
        self.max_fraction = fraction;
        self
    }

    /// v1.13 health listing: confirm an absent abnormal volume with one
    /// `ControllerGetVolumeHealth` (the driver advertises `GET_VOLUME_HEALTH`).
    pub fn confirm_with_get(mut self, on: bool) -> Self {
        self.confirm = on;
        self
    }

    pub fn run(mut self, shutdown: Shutdown) {
        self.shutdown = shutdown.clone();
        loop {
            self.sweep();
            let next = Instant::now() + self.interval;
            let batch = std::mem::take(&mut self.to_confirm);
            if !batch.is_empty() {
                let interval = self.interval;
                let answers = self
                    .engine()
                    .map(|e| e.confirm(&batch, interval, CONFIRM_DRAIN, &shutdown));
                match answers {
                    Some(Some(answers)) => self.confirmed(answers),
                    Some(None) => break,
                    None => {}
                }
            }
            if shutdown.wait_timeout(next.saturating_duration_since(Instant::now())) {
                break;
            }
        }
        if let Some(engine) = self.engine.take() {
            engine.drain(CONFIRM_DRAIN);
        }
    }

    /// The check engine, started on first use (an error is logged; the confirmations wait
    /// for a later sweep).
    fn engine(&mut self) -> Option<&Engine> {
        if self.engine.is_none() {
            match Engine::start(
                self.workers,
                self.interval,
                self.monitor.clone(),
                self.source.clone(),
            ) {
                Ok(engine) => self.engine = Some(engine),
                Err(e) => {
                    log::error!(
                        err:% = e; "Cannot start the check engine, absent volumes are not confirmed"
                    );
                    return None;
                }
            }
        }
        self.engine.as_ref()
    }

    fn is_settled(&self, pv: &PvRecord, how: Settle) -> bool {
        self.quiet
            .get(pv.name())
            .is_some_and(|q| q.how == how && Arc::ptr_eq(&q.pv, pv.name_arc()))
    }

    fn is_quiet(&self, pv: &PvRecord) -> bool {
        self.is_settled(pv, Settle::Healthy)
    }

    /// A volume standing reported (abnormal or missing) with the same finding, whose repeated
    /// Warning the full event queue refuses: nothing else to do (the refusal is counted).
    fn repeat_refused(&mut self, pv: &PvRecord, how: Settle) -> bool {
        if self.is_settled(pv, how) && self.monitor.refuse_repeat() {
            self.abnormal_seen += 1;
            return true;
        }
        false
    }

    /// What settles a volume after `observation` if it is reported as expected.
    fn settles(&self, observation: &Finding) -> Option<Settle> {
        let v12 = self.monitor.generation() == Generation::Condition;
        match observation {
            Finding::Conditions(c) if c.is_empty() => Some(Settle::Healthy),
            Finding::Missing if !self.monitor.reports_missing() => Some(Settle::Unreported),
            // v1.13 may owe a status write; a confirmed-missing volume is asked about again.
            Finding::Conditions(c) if v12 => Some(Settle::Abnormal(fingerprint(c))),
            Finding::Missing if v12 && !self.confirm_missing => Some(Settle::Missing),
            _ => None,
        }
    }

    /// Report, and remember whether the volume is now settled.
    fn observe(&mut self, pv: &PvRecord, observation: Finding) {
        let settle = self.settles(&observation);
        if settle != Some(Settle::Healthy) {
            self.abnormal_seen += 1;
        }
        let after = self.monitor.observe(pv, &observation);
        let settled = match (settle, after) {
            (Some(Settle::Healthy), Some(Reported::Healthy)) => Some(Settle::Healthy),
            // Nothing was told and nothing changed: the same answer changes nothing again.
            (Some(Settle::Unreported), Some(_)) => Some(Settle::Unreported),
            // Told (or owed): the same finding again is a repeat.
            (Some(s @ (Settle::Abnormal(_) | Settle::Missing)), Some(Reported::Abnormal)) => {
                Some(s)
            }
            _ => None,
        };
        match settled {
            Some(how) => {
                self.quiet.insert(Settled {
                    pv: pv.name_arc().clone(),
                    how,
                });
            }
            None => {
                self.quiet.remove(pv.name());
            }
        }
    }

    /// One sweep: list everything, then judge every checkable PV of this driver.
    pub fn sweep(&mut self) {
        let started = Instant::now();
        let bound = ListingBound::new(
            started,
            self.interval,
            self.call_timeout,
            self.monitor.pvs.len(),
        );
        let result = collect(
            self.source.as_ref(),
            self.max_entries,
            bound,
            Listed::hashed(self.monitor.pvs.len()),
        );
        // In this mode the probe is the whole (paged) listing: one observation per sweep.
        self.monitor.metrics().observe_probe(
            self.source.list_method(),
            if result.is_ok() { "ok" } else { "error" },
            started.elapsed().as_secs_f64(),
        );
        // Read before the snapshot: a removal made after it shows as a new count next time.
        let pv_removals = self.monitor.pvs.removals();
        let snapshot = self.monitor.pvs.snapshot();
        let Listing {
            volumes,
            unjudged,
            pages,
        } = match result {
            Ok(v) => v,
            Err(e) => {
                // An incomplete sweep says nothing about absence or recovery: keep the counters.
                log::error!(err:% = e; "Check controller volume status error");
                self.monitor.forget_gone();
                return;
            }
        };
        if self.quiet.is_empty() {
            // The first sweep settles most volumes: room for all of them at once, not by
            // doubling (a third of it spare at 100,000).
            self.quiet.reserve(snapshot.len());
            self.monitor.metrics().reserve_volumes(snapshot.len());
        }
        let generation = self.monitor.generation();
        let mut checked = 0usize;
        self.abnormal_seen = 0;
        let mut missing = Vec::new();
        // v1.13: abnormal volumes absent from the listing, to confirm on the engine.
        let mut to_ask: Vec<Name> = Vec::new();
        // Start each sweep at a different PV: with a full event queue, a fixed order would let
        // the same PVCs take the free places sweep after sweep.
        let skip = if snapshot.is_empty() {
            0
        } else {
            self.sweeps.wrapping_mul(7919) % snapshot.len()
        };
        self.sweeps = self.sweeps.wrapping_add(1);
        for pv in snapshot.iter().skip(skip).chain(snapshot.iter().take(skip)) {
            if checkable(pv).is_err() {
                if !self.absences.is_empty() {
                    self.absences.remove(pv.name());
                }
                self.quiet.remove(pv.name());
                continue;
            }
            checked += 1;
            // The health listing is mostly empty: no need to hash every handle then.
            let listed = if volumes.is_empty() {
                None
            } else {
                volumes.get(pv.volume_handle())
            };
            match listed {
                Some(conds) => {
                    if !self.absences.is_empty() {
                        self.absences.remove(pv.name());
                    }
                    self.monitor.answer_well_formed(pv);
                    if conds.is_empty() && self.is_quiet(pv) {
                        continue;
                    }
                    if !conds.is_empty()
                        && self.repeat_refused(pv, Settle::Abnormal(fingerprint(conds)))
                    {
                        continue;
                    }
                    self.observe(pv, Finding::Conditions(conds.to_vec()));
                }
                // Listed without a condition: it exists, its health is unknown. A driver
                // error (said once per volume), never a recovery, never missing.
                None if !unjudged.is_empty() && unjudged.contains(pv.volume_handle()) => {
                    self.absences.remove(pv.name());
                    self.monitor
                        .answer_malformed(pv, &CsiError::unjudged(pv.volume_handle()));
                }
                None => match generation {
                    Generation::Condition if self.is_settled(pv, Settle::Unreported) => {}
                    Generation::Condition if self.repeat_refused(pv, Settle::Missing) => {}
                    Generation::Condition => {
                        if self.absent_from_list_volumes(pv) {
                            missing.push(pv);
                        }
                    }
                    Generation::Health => {
                        if self.absent_from_health_list(pv) {
                            to_ask.push(pv.name_arc().clone());
                        }
                    }
                },
            }
        }
        if !to_ask.is_empty() {
            // All at once (no spread): a mass recovery costs one call's time per
            // `--worker-threads` volumes, before the next cycle.
            let shutdown = self.shutdown.clone();
            let answers = self
                .engine()
                .and_then(|e| e.confirm(&to_ask, Duration::ZERO, CONFIRM_DRAIN, &shutdown));
            for (name, finding) in answers.into_iter().flatten() {
                if let Some(pv) = snapshot.get(&name).filter(|pv| checkable(pv).is_ok()) {
                    self.observe(pv, finding);
                }
            }
        }
        if self.confirm_missing {
            self.to_confirm = missing.iter().map(|pv| pv.name_arc().clone()).collect();
        } else {
            self.report_missing(missing, checked);
        }
        if self.pruned_at != Some(pv_removals) {
            self.absences.retain(|a| snapshot.contains_key(&a.pv));
            self.quiet.retain(|q| snapshot.contains_key(&q.pv));
            self.pruned_at = Some(pv_removals);
        }
        self.monitor.forget_gone();
        if let Some((qps, burst)) = self.write_budget.take() {
            let secs = self.interval.as_secs_f64();
            if !over_budget(self.abnormal_seen, secs, qps, burst) {
                crate::vlog!(
                    4,
                    abnormal = self.abnormal_seen, bound = checked;
                    "Event write budget suffices: at --kube-api-qps={qps} and --kube-api-burst={burst}, {} Events per sweep can be written within --list-volumes-interval={:?}",
                    writable(secs, qps, burst),
                    self.interval
                );
            } else {
                crate::vlog!(
                    2,
                    abnormal = self.abnormal_seen, bound = checked,
                    writable_per_sweep = writable(secs, qps, burst);
                    "Event write budget exceeded: the first sweep found more abnormal volumes than --kube-api-qps={qps} and --kube-api-burst={burst} can write as Events within --list-volumes-interval={:?}; repeats are dropped first, first reports and recoveries still go out",
                    self.interval
                );
            }
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        self.monitor.metrics().set_last_sweep(now);
        crate::crash::fault_point("controller");
        log::debug!(
            pages = pages, volumes = volumes.len(), checked = checked,
            duration:? = started.elapsed();
            "{} sweep done",
            self.source.list_method()
        );
    }

    /// ListVolumes lists every volume: absent from two complete sweeps is missing (true), to be
    /// confirmed or reported once the sweep is done.
    fn absent_from_list_volumes(&mut self, pv: &PvRecord) -> bool {
        self.absent_again(pv)
    }

    /// One more complete listing without `pv`'s volume: true once that makes two in a row.
    fn absent_again(&mut self, pv: &PvRecord) -> bool {
        let prev = self.absences.get(pv.name()).map_or(0, |a| a.count);
        let (count, reached) = absent_after(prev, false);
        self.absences.insert(Absence {
            pv: pv.name_arc().clone(),
            count,
        });
        reached
    }

    /// Report the volumes found missing in one sweep, unless the mass-absence guard holds back
    /// the newly missing ones (those already standing reported are reported again).
    fn report_missing(&mut self, missing: Vec<&PvRecord>, total: usize) {
        let (standing, newly): (Vec<&PvRecord>, Vec<&PvRecord>) = missing
            .into_iter()
            .partition(|pv| self.monitor.stands_abnormal(pv));
        let held = mass_absence(newly.len(), total, self.max_fraction);
        if held {
            if newly.len() != self.suppressed {
                log::warn!(
                    absent = newly.len(), bound = total;
                    "{} omits more than {}% of this driver's Bound PVs at once; not reporting them as missing, it looks like a partial view (--missing-volumes-max-fraction)",
                    self.source.list_method(),
                    self.max_fraction * 100.0,
                );
            }
            self.suppressed = newly.len();
        } else {
            if self.suppressed > 0 {
                log::info!(
                    absent = newly.len(), bound = total;
                    "{} no longer omits most volumes; missing volumes are reported again",
                    self.source.list_method(),
                );
            }
            self.suppressed = 0;
        }
        self.monitor
            .metrics()
            .set_missing_suppressed(self.suppressed);
        for pv in standing {
            self.observe(pv, Finding::Missing);
        }
        if !held {
            for pv in newly {
                self.observe(pv, Finding::Missing);
            }
        }
    }

    /// Act on the `ControllerGetVolume` answers about volumes absent from ListVolumes.
    fn confirmed(&mut self, answers: Vec<(Name, Finding)>) {
        let snapshot = self.monitor.pvs.snapshot();
        let total = snapshot.iter().filter(|pv| checkable(pv).is_ok()).count();
        let mut missing = Vec::new();
        let mut known = 0usize;
        for (name, observation) in answers {
            let Some(pv) = snapshot.get(&name).filter(|pv| checkable(pv).is_ok()) else {
                continue;
            };
            match observation {
                Finding::Missing => missing.push(pv),
                conditions => {
                    known += 1;
                    self.observe(pv, conditions);
                }
            }
        }
        if known > 0 && !self.omits_logged {
            self.omits_logged = true;
            log::warn!(
                count = known; "{} omits volumes that {} still knows; they are not reported missing and their condition is checked with {} on every sweep",
                self.source.list_method(),
                self.source.get_method(),
                self.source.get_method(),
            );
        }
        self.report_missing(missing, total);
    }

    /// The health listing leaves healthy volumes out: absence is healthy, but a volume that
    /// stands reported abnormal recovers only on firmer evidence. True: ask the driver about
    /// it (on the engine, once the sweep is done).
    fn absent_from_health_list(&mut self, pv: &PvRecord) -> bool {
        if self.is_quiet(pv) {
            return false;
        }
        if !self.monitor.stands_abnormal(pv) {
            self.observe(pv, Finding::Conditions(Vec::new()));
            return false;
        }
        if self.confirm {
            return true;
        }
        if self.absent_again(pv) {
            self.absences.remove(pv.name());
            self.observe(pv, Finding::Conditions(Vec::new()));
        }
        false
    }
}

/// Events the API client can write in `secs` at `qps` after a full burst (README "Write
/// budget"): one write per Event, every other request of the sweep ignored.
fn writable(secs: f64, qps: f64, burst: u32) -> u64 {
    if !qps.is_finite() {
        return u64::MAX;
    }
    (qps * secs + f64::from(burst)).floor() as u64
}

/// True when `abnormal` Events per sweep exceed what one interval can write.
fn over_budget(abnormal: usize, secs: f64, qps: f64, burst: u32) -> bool {
    abnormal as u64 > writable(secs, qps, burst)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csi::ListPage;
    use std::sync::Mutex;

    struct Pages(Mutex<Vec<Result<ListPage, CsiError>>>, Mutex<Vec<String>>);

    impl HealthSource for Pages {
        fn list_method(&self) -> &'static str {
            "ListVolumes"
        }
        fn get_method(&self) -> &'static str {
            "ControllerGetVolume"
        }
        fn list_page(&self, _max: i32, token: &str) -> Result<ListPage, CsiError> {
            self.1.lock().unwrap().push(token.to_string());
            self.0.lock().unwrap().remove(0)
        }
        fn get(&self, _id: &str) -> Result<Vec<Condition>, CsiError> {
            unreachable!()
        }
    }

    fn page(ids: &[&str], next: &str) -> Result<ListPage, CsiError> {
        Ok(ListPage {
            entries: ids
                .iter()
                .map(|i| (i.to_string(), vec![Condition::typed(1, *i, "")]))
                .collect(),
            next_token: next.to_string(),
            ..ListPage::default()
        })
    }

    fn unbounded() -> ListingBound {
        ListingBound::new(
            Instant::now(),
            Duration::from_secs(3600),
            Duration::from_secs(15),
            0,
        )
    }

    /// Issue #25: a listing is bounded in time and in entries, not only in pages.
    #[test]
    fn a_listing_is_bounded_in_time_and_entries() {
        let t0 = Instant::now();
        // Defaults: 15 s x 60 = 15 min beats a 5 min interval; a long interval wins.
        let b = ListingBound::new(t0, Duration::from_secs(300), Duration::from_secs(15), 10);
        assert_eq!(b.deadline - t0, Duration::from_secs(900));
        assert_eq!(b.entries, LISTING_MIN_ENTRIES);
        let b = ListingBound::new(
            t0,
            Duration::from_secs(3600),
            Duration::from_secs(15),
            1_000_000,
        );
        assert_eq!(b.deadline - t0, Duration::from_secs(3600));
        assert_eq!(b.entries, 4_000_000);

        // Past the deadline after the first page: an error naming the pages done.
        let src = Pages(
            Mutex::new(vec![page(&["a"], "t1"), page(&["b"], "")]),
            Mutex::new(vec![]),
        );
        let late = ListingBound {
            deadline: t0,
            entries: 10,
        };
        let err = collect(&src, 0, late, Listed::named()).unwrap_err();
        assert!(matches!(err, SweepError::TooLong { pages: 1 }), "{err:?}");
        assert!(err.to_string().contains("after 1 pages"), "{err}");
        assert_eq!(
            *src.1.lock().unwrap(),
            vec![""],
            "no page asked after the deadline"
        );

        // More entries than the bound: an error, whatever the pages.
        let src = Pages(
            Mutex::new(vec![page(&["a", "b"], "t1"), page(&["c", "d"], "")]),
            Mutex::new(vec![]),
        );
        let small = ListingBound {
            deadline: t0 + Duration::from_secs(60),
            entries: 3,
        };
        let err = collect(&src, 0, small, Listed::named()).unwrap_err();
        assert!(matches!(err, SweepError::TooMany { entries: 3 }), "{err:?}");
        // Exactly at the bound is fine.
        let src = Pages(
            Mutex::new(vec![page(&["a", "b"], "t1"), page(&["c"], "")]),
            Mutex::new(vec![]),
        );
        assert_eq!(
            collect(&src, 0, small, Listed::named())
                .unwrap()
                .volumes
                .len(),
            3
        );
    }

    #[test]
    fn write_budget() {
        // Defaults: 5 QPS, burst 10, 5 min: 1510 Events per sweep.
        assert_eq!(writable(300.0, 5.0, 10), 1510);
        assert!(!over_budget(1510, 300.0, 5.0, 10));
        assert!(over_budget(1511, 300.0, 5.0, 10));
        assert!(over_budget(5000, 10.0, 5.0, 10));
        assert!(!over_budget(5000, 10.0, f64::INFINITY, 10));
    }

    #[test]
    fn follows_tokens_until_empty() {
        let src = Pages(
            Mutex::new(vec![
                page(&["a"], "t1"),
                page(&["b"], "t2"),
                page(&["c"], ""),
            ]),
            Mutex::new(vec![]),
        );
        let Listing {
            volumes: vols,
            pages,
            ..
        } = collect(&src, 0, unbounded(), Listed::named()).unwrap();
        assert_eq!(pages, 3);
        assert_eq!(vols.len(), 3);
        assert_eq!(*src.1.lock().unwrap(), vec!["", "t1", "t2"]);
    }

    #[test]
    fn a_repeated_volume_takes_its_later_entry() {
        let mut second = page(&["b"], "").unwrap();
        second.entries.push(("a".into(), vec![]));
        let src = Pages(Mutex::new(vec![]), Mutex::new(vec![]));
        for out in [Listed::named(), Listed::hashed(0)] {
            src.0
                .lock()
                .unwrap()
                .extend([page(&["a"], "t1"), Ok(second.clone())]);
            let vols = collect(&src, 0, unbounded(), out).unwrap().volumes;
            assert_eq!(
                vols.get("a"),
                Some(&[][..]),
                "the later (healthy) entry wins"
            );
            assert_eq!(vols.get("b").map(<[_]>::len), Some(1));
            assert_eq!(vols.get("c"), None);
            assert_eq!(vols.len(), 2);
        }
        assert_eq!(*src.1.lock().unwrap(), vec!["", "t1", "", "t1"]);
    }

    /// Issue #25: an entry listed without its condition is set aside, not read as healthy;
    /// a later entry of the same volume wins either way.
    #[test]
    fn unjudged_entries_are_kept_apart_and_the_later_entry_wins() {
        let mut first = page(&["a", "b"], "t1").unwrap();
        first.unjudged = vec!["c".into()];
        let mut second = page(&["c"], "").unwrap();
        second.unjudged = vec!["a".into()];
        let src = Pages(Mutex::new(vec![Ok(first), Ok(second)]), Mutex::new(vec![]));
        let l = collect(&src, 0, unbounded(), Listed::named()).unwrap();
        let named = l.volumes.into_named().unwrap();
        let mut listed: Vec<&String> = named.keys().collect();
        listed.sort();
        assert_eq!(listed, ["b", "c"]);
        assert_eq!(l.unjudged, HashSet::from(["a".to_string()]));
        // Unjudged entries count against the entry bound too.
        let mut only = page(&[], "").unwrap();
        only.unjudged = vec!["x".into(), "y".into()];
        let src = Pages(Mutex::new(vec![Ok(only)]), Mutex::new(vec![]));
        let small = ListingBound {
            deadline: Instant::now() + Duration::from_secs(60),
            entries: 1,
        };
        assert!(matches!(
            collect(&src, 0, small, Listed::named()),
            Err(SweepError::TooMany { entries: 1 })
        ));
    }

    #[test]
    fn repeated_token_is_an_error() {
        let src = Pages(
            Mutex::new(vec![page(&["a"], "t1"), page(&["b"], "t1")]),
            Mutex::new(vec![]),
        );
        assert!(
            matches!(collect(&src, 0, unbounded(), Listed::named()), Err(SweepError::Paging(PageLoop::Repeated(t))) if t == "t1")
        );
    }

    #[test]
    fn rpc_error_aborts_the_sweep() {
        let err = CsiError::Rpc {
            method: "m",
            code: "Unavailable".into(),
            message: "x".into(),
        };
        let src = Pages(
            Mutex::new(vec![page(&["a"], "t1"), Err(err)]),
            Mutex::new(vec![]),
        );
        assert!(matches!(
            collect(&src, 0, unbounded(), Listed::named()),
            Err(SweepError::Rpc(_))
        ));
    }

    /// The list loop itself, sweep by sweep: a fake driver behind `HealthSource`, the stores
    /// filled by hand, Events caught by a fake API (nothing here reaches a server: every PVC is
    /// cached, and no case makes a status write).
    mod sweeps {
        use super::*;
        use crate::events::{
            Event, EventBody, EventPatch, EventSink, RecorderOptions, RecorderThread,
        };
        use crate::kube;
        use crate::metrics::Metrics;
        use crate::monitor::decide::{missing_message, Reported, REASON_ABNORMAL, REASON_NORMAL};
        use crate::monitor::status::StatusWriter;
        use crate::monitor::HealthOutput;
        use crate::watch::{PvPhase, PvStore, PvcRecord, PvcStore};
        use serde_json::Value;

        const DRIVER: &str = "d";
        const INTERVAL: Duration = Duration::from_secs(300);

        /// The API server's Events by name: what the monitor told.
        #[derive(Clone, Default)]
        struct Told(Arc<Mutex<HashMap<String, Value>>>);

        impl EventSink for Told {
            fn create(&self, _ns: &str, event: &EventBody<'_>) -> Result<Event, kube::Error> {
                let event = serde_json::to_value(event).unwrap();
                let name = event["metadata"]["name"].as_str().unwrap_or_default();
                let mut all = self.0.lock().unwrap();
                all.insert(name.to_string(), event.clone());
                Ok(Event::from_server(&event))
            }
            fn patch(
                &self,
                _ns: &str,
                name: &str,
                patch: &EventPatch,
            ) -> Result<Event, kube::Error> {
                let patch = serde_json::to_value(patch).unwrap();
                let mut all = self.0.lock().unwrap();
                let stored = all
                    .get_mut(name)
                    .expect("a patch of an Event created before");
                for (k, v) in patch.as_object().into_iter().flatten() {
                    stored[k] = v.clone();
                }
                Ok(Event::from_server(stored))
            }
        }

        /// What the fake driver's per-volume call answers about a volume.
        #[derive(Clone)]
        enum Answer {
            Conditions(Vec<Condition>),
            NotFound,
            Fails,
        }

        #[derive(Default)]
        struct Driver {
            /// Volume id → its conditions, as listed; a volume not here is absent.
            listed: Mutex<HashMap<String, Vec<Condition>>>,
            /// The listing fails (an incomplete sweep).
            list_fails: Mutex<bool>,
            /// Volume id → what the per-volume call answers (missing: NOT_FOUND).
            answers: Mutex<HashMap<String, Answer>>,
            /// Volume ids the per-volume call was asked about, in order.
            asked: Mutex<Vec<String>>,
            /// Each per-volume call waits (20 s at most) until this many ran at once.
            meet: usize,
            /// Per-volume calls running now, and the most seen at once.
            running: Mutex<(usize, usize)>,
            changed: std::sync::Condvar,
        }

        impl HealthSource for Driver {
            fn list_method(&self) -> &'static str {
                "ListVolumes"
            }
            fn get_method(&self) -> &'static str {
                "ControllerGetVolume"
            }
            fn list_page(&self, _max: i32, _token: &str) -> Result<ListPage, CsiError> {
                if *self.list_fails.lock().unwrap() {
                    return Err(rpc_error("Unavailable"));
                }
                Ok(ListPage {
                    entries: self.listed.lock().unwrap().clone().into_iter().collect(),
                    ..ListPage::default()
                })
            }
            fn get(&self, id: &str) -> Result<Vec<Condition>, CsiError> {
                self.asked.lock().unwrap().push(id.to_string());
                let mut running = self.running.lock().unwrap();
                running.0 += 1;
                running.1 = running.1.max(running.0);
                self.changed.notify_all();
                let until = Instant::now() + Duration::from_secs(20);
                while running.1 < self.meet && Instant::now() < until {
                    running = self
                        .changed
                        .wait_timeout(running, Duration::from_millis(100))
                        .unwrap()
                        .0;
                }
                running.0 -= 1;
                drop(running);
                match self.answers.lock().unwrap().get(id).cloned() {
                    Some(Answer::Conditions(c)) => Ok(c),
                    Some(Answer::Fails) => Err(rpc_error("Unavailable")),
                    Some(Answer::NotFound) | None => Err(rpc_error("NotFound")),
                }
            }
        }

        fn rpc_error(code: &str) -> CsiError {
            CsiError::Rpc {
                method: "m",
                code: code.into(),
                message: "x".into(),
            }
        }

        fn abnormal(message: &str) -> Vec<Condition> {
            vec![Condition::legacy(message)]
        }

        struct Harness {
            monitor: Arc<Monitor>,
            driver: Arc<Driver>,
            told: Told,
            recorder: RecorderThread,
            shutdown: Shutdown,
        }

        impl Drop for Harness {
            fn drop(&mut self) {
                self.shutdown.trigger();
            }
        }

        /// PVs `pv-<id>` (handle `<id>`) bound to cached PVCs `ns/pvc-<id>`, all listed
        /// healthy; `standing` stand reported abnormal from earlier Events. `health`: the v1.13
        /// health listing (the status writer is there but never has anything to write).
        fn harness(health: bool, ids: &[&str], standing: &[&str]) -> Harness {
            harness_meeting(health, ids, standing, 0)
        }

        /// `harness`, with a driver whose per-volume calls wait until `meet` run at once.
        fn harness_meeting(health: bool, ids: &[&str], standing: &[&str], meet: usize) -> Harness {
            let pvs = PvStore::new();
            let pvcs = PvcStore::new(pvs.clone());
            let driver = Arc::new(Driver {
                meet,
                ..Driver::default()
            });
            for id in ids {
                pvs.apply(
                    PvRecord::new(
                        &format!("pv-{id}"),
                        id,
                        PvPhase::Bound,
                        Some(("ns", &format!("pvc-{id}"), &format!("uid-{id}"))),
                        false,
                    )
                    .unwrap(),
                );
                pvcs.store().apply(
                    PvcRecord::new(
                        "ns",
                        &format!("pvc-{id}"),
                        &format!("uid-{id}"),
                        "1",
                        &format!("pv-{id}"),
                        None,
                    )
                    .unwrap(),
                );
                driver.listed.lock().unwrap().insert(id.to_string(), vec![]);
            }
            let seed = standing
                .iter()
                .map(|id| (format!("uid-{id}"), Reported::Abnormal))
                .collect();
            let shutdown = Shutdown::new();
            let told = Told::default();
            let (recorder, thread) = crate::events::spawn(
                told.clone(),
                RecorderOptions::new(crate::monitor::event_component(DRIVER)),
                shutdown.clone(),
            )
            .unwrap();
            let metrics = Arc::new(Metrics::new());
            metrics.set_driver_name(DRIVER);
            // Never reached: every PVC is cached and no case writes a status.
            let client = crate::kube::client::tests::client("http://127.0.0.1:9");
            let mut monitor = Monitor::new(
                if health {
                    Generation::Health
                } else {
                    Generation::Condition
                },
                DRIVER.into(),
                pvs,
                pvcs,
                client.clone(),
                recorder,
                metrics.clone(),
                seed,
            );
            if health {
                monitor = monitor.health_output(HealthOutput {
                    writer: StatusWriter::new(client, metrics, INTERVAL, shutdown.clone()),
                    events: true,
                });
            }
            Harness {
                monitor: Arc::new(monitor),
                driver,
                told,
                recorder: thread,
                shutdown,
            }
        }

        impl Harness {
            fn list_loop(&self) -> ListLoop {
                ListLoop::new(self.monitor.clone(), self.driver.clone(), INTERVAL, 0)
            }

            fn unlist(&self, ids: &[&str]) {
                let mut listed = self.driver.listed.lock().unwrap();
                for id in ids {
                    listed.remove(*id);
                }
            }

            fn list(&self, id: &str, conditions: Vec<Condition>) {
                let mut listed = self.driver.listed.lock().unwrap();
                listed.insert(id.to_string(), conditions);
            }

            fn answer(&self, id: &str, answer: Answer) {
                let mut answers = self.driver.answers.lock().unwrap();
                answers.insert(id.to_string(), answer);
            }

            fn asked(&self) -> Vec<String> {
                self.driver.asked.lock().unwrap().clone()
            }

            /// (PVC, message, count) of every Event with `reason`, once all queued are written.
            fn told(&self, reason: &str) -> Vec<(String, String, i64)> {
                assert!(self.recorder.flush(Duration::from_secs(10)));
                let all = self.told.0.lock().unwrap();
                let mut out: Vec<(String, String, i64)> = all
                    .values()
                    .filter(|e| e["reason"] == reason)
                    .map(|e| {
                        (
                            e["involvedObject"]["name"].as_str().unwrap().to_string(),
                            e["message"].as_str().unwrap().to_string(),
                            e["count"].as_i64().unwrap(),
                        )
                    })
                    .collect();
                out.sort();
                out
            }

            /// PVCs told their volume is missing (each with its count).
            fn missing(&self) -> Vec<(String, i64)> {
                self.told(REASON_ABNORMAL)
                    .into_iter()
                    .filter(|(pvc, message, _)| {
                        *message == missing_message(pvc.trim_start_matches("pvc-"), DRIVER)
                    })
                    .map(|(pvc, _, n)| (pvc, n))
                    .collect()
            }

            fn suppressed(&self) -> String {
                let text = self.monitor.metrics().encode();
                text.lines()
                    .find(|l| l.starts_with("csi_volume_health_missing_suppressed{"))
                    .and_then(|l| l.rsplit(' ').next())
                    .unwrap_or("unset")
                    .to_string()
            }
        }

        fn pvcs(ids: &[&str]) -> Vec<(String, i64)> {
            ids.iter().map(|id| (format!("pvc-{id}"), 1)).collect()
        }

        #[test]
        fn a_volume_is_missing_after_two_complete_sweeps_without_it() {
            let h = harness(false, &["a", "b"], &[]);
            let mut lp = h.list_loop();
            lp.sweep();
            h.unlist(&["a"]);
            lp.sweep();
            assert_eq!(h.missing(), vec![], "one absence can be a listing race");
            lp.sweep();
            assert_eq!(h.missing(), pvcs(&["a"]));
            lp.sweep();
            assert_eq!(
                h.missing(),
                vec![("pvc-a".to_string(), 2)],
                "still missing: reported again (one Event, counted)"
            );
            assert!(h.asked().is_empty(), "no per-volume call in this mode");
        }

        #[test]
        fn a_volume_listed_again_or_an_incomplete_sweep_does_not_make_it_missing() {
            let h = harness(false, &["a"], &[]);
            let mut lp = h.list_loop();
            lp.sweep();
            h.unlist(&["a"]);
            lp.sweep();
            h.list("a", vec![]);
            lp.sweep();
            h.unlist(&["a"]);
            lp.sweep();
            assert_eq!(
                h.missing(),
                vec![],
                "listed in between: the count starts over"
            );
            // A failed listing says nothing: neither an absence nor a presence.
            *h.driver.list_fails.lock().unwrap() = true;
            lp.sweep();
            lp.sweep();
            assert_eq!(h.missing(), vec![]);
            *h.driver.list_fails.lock().unwrap() = false;
            lp.sweep();
            assert_eq!(
                h.missing(),
                pvcs(&["a"]),
                "second complete sweep without it"
            );
        }

        #[test]
        fn the_mass_absence_guard_holds_back_newly_missing_volumes_only() {
            let ids: Vec<String> = (0..20).map(|i| format!("v{i:02}")).collect();
            let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
            let h = harness(false, &ids, &[]);
            let mut lp = h.list_loop().missing_max_fraction(0.5);
            // v00 stands abnormal before the listing loses anything.
            h.list("v00", abnormal("disk slow"));
            lp.sweep();
            assert_eq!(h.told(REASON_ABNORMAL).len(), 1);
            assert_eq!(h.suppressed(), "0");
            // 12 of 20 absent (more than half): v00 is reported, the 11 newly missing are not.
            h.unlist(&ids[..12]);
            lp.sweep();
            lp.sweep();
            assert_eq!(h.missing(), pvcs(&["v00"]));
            assert_eq!(h.suppressed(), "11");
            lp.sweep();
            assert_eq!(h.missing(), vec![("pvc-v00".to_string(), 2)]);
            assert_eq!(h.suppressed(), "11");
            // Most come back; the 3 still absent are too few to look like a partial view.
            for id in &ids[3..12] {
                h.list(id, vec![]);
            }
            lp.sweep();
            assert_eq!(
                h.missing(),
                vec![
                    ("pvc-v00".to_string(), 3),
                    ("pvc-v01".to_string(), 1),
                    ("pvc-v02".to_string(), 1),
                ]
            );
            assert_eq!(h.suppressed(), "0");
        }

        #[test]
        fn without_the_guard_a_mass_absence_is_reported() {
            let ids: Vec<String> = (0..20).map(|i| format!("v{i:02}")).collect();
            let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
            let h = harness(false, &ids, &[]);
            let mut lp = h.list_loop();
            lp.sweep();
            h.unlist(&ids[..12]);
            lp.sweep();
            lp.sweep();
            assert_eq!(h.missing(), pvcs(&ids[..12]));
            assert_eq!(h.suppressed(), "0");
        }

        #[test]
        fn absent_volumes_are_confirmed_with_the_per_volume_call_before_being_missing() {
            let h = harness(false, &["gone", "known", "back", "flaky", "stays"], &[]);
            let mut lp = h.list_loop().confirm_missing_with_get(true).workers(2);
            h.answer("gone", Answer::NotFound);
            h.answer("known", Answer::Conditions(abnormal("disk slow")));
            h.answer("back", Answer::Conditions(vec![]));
            h.answer("flaky", Answer::Fails);
            lp.sweep();
            h.unlist(&["gone", "known", "back", "flaky"]);
            lp.sweep();
            assert!(lp.to_confirm.is_empty(), "one absence is not asked about");
            lp.sweep();
            assert_eq!(
                h.told(REASON_ABNORMAL),
                vec![],
                "nothing told before the answers"
            );
            let mut batch = std::mem::take(&mut lp.to_confirm);
            batch.sort();
            let names: Vec<&str> = batch.iter().map(|n| &**n).collect();
            assert_eq!(names, ["pv-back", "pv-flaky", "pv-gone", "pv-known"]);
            let answers = lp
                .engine()
                .unwrap()
                .confirm(&batch, Duration::ZERO, CONFIRM_DRAIN, &h.shutdown)
                .unwrap();
            lp.confirmed(answers);
            let mut asked = h.asked();
            asked.sort();
            assert_eq!(asked, ["back", "flaky", "gone", "known"]);
            // NOT_FOUND: missing. An answer: the volume's own condition. An error: nothing.
            assert_eq!(
                h.told(REASON_ABNORMAL),
                vec![
                    ("pvc-gone".to_string(), missing_message("gone", DRIVER), 1),
                    ("pvc-known".to_string(), "disk slow".to_string(), 1),
                ]
            );
        }

        #[test]
        fn the_guard_also_holds_back_confirmed_missing_volumes() {
            let ids: Vec<String> = (0..20).map(|i| format!("v{i:02}")).collect();
            let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
            let h = harness(false, &ids, &[]);
            let mut lp = h
                .list_loop()
                .confirm_missing_with_get(true)
                .missing_max_fraction(0.5);
            lp.sweep();
            h.unlist(&ids[..12]);
            lp.sweep();
            lp.sweep();
            let batch = std::mem::take(&mut lp.to_confirm);
            assert_eq!(batch.len(), 12);
            let answers = lp
                .engine()
                .unwrap()
                .confirm(&batch, Duration::ZERO, CONFIRM_DRAIN, &h.shutdown)
                .unwrap();
            assert_eq!(answers.len(), 12);
            lp.confirmed(answers);
            assert_eq!(h.missing(), vec![]);
            assert_eq!(h.suppressed(), "12");
        }

        #[test]
        fn health_listing_an_absent_abnormal_volume_recovers_after_two_cycles() {
            let h = harness(true, &["a", "h"], &["a"]);
            // The health listing leaves healthy volumes out.
            h.unlist(&["a", "h"]);
            let mut lp = h.list_loop();
            lp.sweep();
            assert_eq!(
                h.told(REASON_NORMAL),
                vec![],
                "one absence is not a recovery"
            );
            lp.sweep();
            let recovered = vec![(
                "pvc-a".to_string(),
                crate::monitor::decide::MESSAGE_RECOVERED.to_string(),
                1,
            )];
            assert_eq!(h.told(REASON_NORMAL), recovered);
            lp.sweep();
            lp.sweep();
            assert_eq!(h.told(REASON_NORMAL), recovered, "told once");
            assert_eq!(h.told(REASON_ABNORMAL), vec![]);
            assert!(h.asked().is_empty());
        }

        #[test]
        fn health_listing_an_absent_abnormal_volume_recovers_when_the_driver_confirms() {
            let h = harness(true, &["a", "h"], &["a"]);
            h.unlist(&["a", "h"]);
            h.answer("a", Answer::Fails);
            let mut lp = h.list_loop().confirm_with_get(true);
            lp.sweep();
            lp.sweep();
            assert_eq!(
                h.asked(),
                ["a", "a"],
                "only the abnormal one, on every cycle"
            );
            assert_eq!(
                h.told(REASON_NORMAL),
                vec![],
                "an error is never a recovery"
            );
            h.answer("a", Answer::Conditions(vec![]));
            lp.sweep();
            assert_eq!(h.told(REASON_NORMAL).len(), 1);
            lp.sweep();
            assert_eq!(h.asked().len(), 3, "recovered: quiet, not asked again");
            assert_eq!(h.told(REASON_NORMAL).len(), 1);
        }

        /// Issue #23: a volume standing reported (abnormal, then missing) with the same
        /// finding, whose repeat the full event queue refuses, costs no Event: the refusal is
        /// counted and nothing of the repeat is built (here: its PVC is not even looked up).
        /// Once the queue has room, the repeat goes out again.
        #[test]
        fn a_repeat_the_full_queue_refuses_is_not_built() {
            use crate::monitor::tests::observe::rig;
            let r = rig(Generation::Condition, false, None, 1, vec![]);
            let monitor = Arc::new(r.monitor);
            let driver = Arc::new(Driver::default());
            driver
                .listed
                .lock()
                .unwrap()
                .insert("v1".into(), abnormal("broken"));
            let mut lp = ListLoop::new(monitor.clone(), driver.clone(), INTERVAL, 0);
            lp.sweep();
            assert_eq!(
                monitor.recorder.dropped(),
                0,
                "the first report fills the queue"
            );
            // The first refusal is logged, naming its Event: built the usual way.
            lp.sweep();
            assert_eq!(monitor.recorder.dropped(), 1);
            // Without its PVC in the cache, building the repeat would need a GET.
            let pvc = monitor.pvcs.get("ns", "pvc-v1").unwrap();
            monitor.pvcs.store().remove(pvc.key());
            lp.sweep();
            lp.sweep();
            assert_eq!(monitor.recorder.dropped(), 3);
            assert!(r.api.requests().is_empty(), "{:?}", r.api.requests());
            // Room again: the repeat is sent.
            monitor.pvcs.store().apply(pvc.clone());
            let warning = |m: &str| {
                (
                    "Warning".to_string(),
                    crate::monitor::decide::REASON_ABNORMAL.to_string(),
                    m.to_string(),
                )
            };
            assert_eq!(r.events.take(), vec![warning("broken")]);
            lp.sweep();
            assert_eq!(r.events.take(), vec![warning("broken")]);
            // Missing after two sweeps without it; then its repeats are refused alike.
            driver.listed.lock().unwrap().clear();
            lp.sweep();
            lp.sweep();
            let missing = missing_message("v1", "d.example.com");
            assert_eq!(r.events.take(), vec![warning(&missing)]);
            lp.sweep();
            let before = monitor.recorder.dropped();
            monitor.pvcs.store().remove(pvc.key());
            lp.sweep();
            lp.sweep();
            assert_eq!(monitor.recorder.dropped(), before + 2);
            assert!(r.api.requests().is_empty(), "{:?}", r.api.requests());
        }

        /// A mass recovery in the health listing: the abnormal volumes absent from it are
        /// confirmed in parallel on the engine (each call waits until all four run at once),
        /// not one by one on the sweep thread.
        #[test]
        fn health_listing_confirms_absent_abnormal_volumes_in_parallel() {
            let ids = ["a", "b", "c", "d"];
            let h = harness_meeting(true, &ids, &ids, 4);
            h.unlist(&ids);
            for id in ids {
                h.answer(id, Answer::Conditions(vec![]));
            }
            let mut lp = h.list_loop().confirm_with_get(true).workers(4);
            lp.sweep();
            assert_eq!(h.driver.running.lock().unwrap().1, 4, "all four at once");
            assert_eq!(h.told(REASON_NORMAL).len(), 4, "each recovery told");
        }
    }
}
