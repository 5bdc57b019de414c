//! The one check engine (volume-health-v1.13.md §7, DESIGN §4): a pool of `--worker-threads`
//! named threads (`csi-worker-N`) makes every per-volume RPC of the process, whatever asks
//! for it: the periodic checks of the per-volume modes (ControllerGetVolume,
//! ControllerGetVolumeHealth) and the one-shot confirmations of the listing modes (a volume
//! absent from ListVolumes, an abnormal volume absent from the health listing).
//!
//! What the engine owns, once for every kind of call:
//! - one in-flight set: never two concurrent calls about one volume;
//! - the spread: periodic checks are due one interval apart, new volumes spread evenly over the
//!   interval; a batch of confirmations is spread over the time it is given;
//! - one deadline: every call is bounded by `--timeout` in the CSI client; a batch's answers
//!   are waited for a bounded time after its last call went out;
//! - one drain at shutdown, bounded.
//!
//! Workers take due work from the shared [`Schedule`] themselves (a mutex and a condvar): a
//! check costs no hand-off to a scheduler thread and back. Only one idle worker waits for the
//! next due time (the "timer"); the others sleep until handed the timer, so a due check wakes
//! one thread, not the whole pool.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::decide::{checkable, Finding};
use super::Monitor;
use crate::csi::{Error as CsiError, HealthSource};
use crate::shutdown::Shutdown;
#[cfg(test)]
use crate::watch::PvPhase;
use crate::watch::PvRecord;

/// A volume's name as the engine keeps it: shared, so queueing and finishing a check copy no
/// string.
pub type Name = Arc<str>;

/// One unit of work a worker took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Job {
    /// A periodic check (per-volume modes): its answer is acted on at once.
    Check(Name),
    /// A confirmation asked by a listing, in batch number `.0`: its answer goes back to it.
    Confirm(u64, Name),
}

impl Job {
    fn name(&self) -> &Name {
        match self {
            Job::Check(n) | Job::Confirm(_, n) => n,
        }
    }
}

/// The engine's pure state: when each volume is due, which confirmations wait, what is in
/// flight, and the current batch's answers. Every decision about what runs next is here,
/// tested without threads.
#[derive(Debug, Default)]
pub struct Schedule {
    interval: Duration,
    /// Periodic checks: name → when due, and the same ordered by time.
    due: HashMap<Name, Instant>,
    queue: BTreeSet<(Instant, Name)>,
    /// Confirmations not started yet, in the order (and at the times) they go out.
    confirms: VecDeque<(Instant, u64, Name)>,
    /// Every volume a call is running about, whatever its kind.
    in_flight: HashSet<Name>,
    /// The current confirmation batch: its number, its answers, and how many are still owed.
    batch: u64,
    answers: Vec<(Name, Finding)>,
    owed: usize,
    /// The worker that waits for the next due time: its ticket and until when (`None`: no
    /// time, nothing queued). A worker whose work is due earlier takes the timer over.
    timer: Option<(u64, Option<Instant>)>,
    tickets: u64,
    /// How long a call takes, smoothed: a worker starting a call hands the clock to an idle
    /// one only when the next job is due before this call is likely to end.
    call_time: Duration,
    stopping: bool,
    /// Where the grid of due times starts (the first time anything was scheduled).
    origin: Option<Instant>,
}

/// Until calls were timed, assume they are slow: hand the clock over at every call.
const FIRST_CALL_TIME: Duration = Duration::from_secs(1);

/// Calls are due on a grid of this step: the checks that fall due within one step leave
/// together, so one wake-up from idle serves them all (issue #24: at 500 checks a second a
/// wake-up per call cost more CPU than the call; in steps of 100 ms a check costs less than
/// half). The spread over the interval stays even at this grain; short intervals get a
/// finer one (at most 1/100 of the interval).
const GRAIN: Duration = Duration::from_millis(100);

impl Schedule {
    pub fn new(interval: Duration) -> Schedule {
        Schedule {
            interval,
            call_time: FIRST_CALL_TIME,
            ..Schedule::default()
        }
    }

    fn grain(&self) -> Duration {
        (self.interval / 100).min(GRAIN)
    }

    /// `t` moved to the grid: the first grid point at or after it (`up`) or at or before it,
    /// but never before the grid's origin.
    fn on_grid(&mut self, t: Instant, up: bool) -> Instant {
        let origin = *self.origin.get_or_insert(t);
        let g = self.grain().as_nanos();
        let off = t.saturating_duration_since(origin).as_nanos();
        if g == 0 {
            return t;
        }
        let steps = if up { off.div_ceil(g) } else { off / g };
        let nanos = u64::try_from(steps.saturating_mul(g)).unwrap_or(u64::MAX);
        origin + Duration::from_nanos(nanos)
    }

    /// A call took `took`: a smoothed mean (weight 1/8), so one outlier moves it little.
    pub fn timed(&mut self, took: Duration) {
        self.call_time = (self.call_time * 7 + took) / 8;
    }

    /// Whether a worker starting a call at `now` must wake another to watch the clock: the
    /// next job is due before that call is likely to end. Otherwise the worker itself comes
    /// back in time, and a wake-up (two context switches per check) is saved.
    pub fn needs_watcher(&self, now: Instant) -> bool {
        let in_flight = &self.in_flight;
        let check = self
            .queue
            .iter()
            .find(|(_, n)| !in_flight.contains(n))
            .map(|(at, _)| *at);
        let confirm = self
            .confirms
            .iter()
            .find(|(_, _, n)| !in_flight.contains(n))
            .map(|(at, _, _)| *at);
        match check.into_iter().chain(confirm).min() {
            Some(at) => at < now + self.call_time,
            None => false,
        }
    }

    /// Bring the periodic checks in line with `names` (the checkable PVs now, sorted): new
    /// ones are spread evenly over the interval starting at `now`; vanished ones are dropped.
    pub fn reconcile<'a>(&mut self, names: impl ExactSizeIterator<Item = &'a Name>, now: Instant) {
        let names: Vec<&Name> = names.collect();
        let wanted: HashSet<&str> = names.iter().map(|n| &***n).collect();
        let queue = &mut self.queue;
        self.due.retain(|name, at| {
            let keep = wanted.contains(&**name);
            if !keep {
                queue.remove(&(*at, name.clone()));
            }
            keep
        });
        let new: Vec<&Name> = names
            .into_iter()
            .filter(|n| !self.due.contains_key(&***n))
            .collect();
        let step = self
            .interval
            .checked_div(new.len().max(1) as u32)
            .unwrap_or_default();
        for (i, name) in new.into_iter().enumerate() {
            // Shared with the PV record: no copy of the name per tracked volume.
            let name: Name = name.clone();
            let at = self.on_grid(now + step * i as u32, false);
            self.due.insert(name.clone(), at);
            // A volume whose call is running is queued when that call ends.
            if !self.in_flight.contains(&name) {
                self.queue.insert((at, name));
            }
        }
    }

    /// Start a new batch of confirmations, the calls spread evenly over `spread` from `now`;
    /// its number. The previous batch's queued calls and answers are dropped; a late answer
    /// of it is not counted against this one.
    pub fn confirm(&mut self, names: &[Name], now: Instant, spread: Duration) -> u64 {
        self.batch = self.batch.wrapping_add(1);
        self.confirms.clear();
        self.answers.clear();
        self.owed = names.len();
        let step = spread
            .checked_div(names.len().max(1) as u32)
            .unwrap_or_default();
        for (i, name) in names.iter().enumerate() {
            let at = self.on_grid(now + step * i as u32, false);
            self.confirms.push_back((at, self.batch, name.clone()));
        }
        self.batch
    }

    /// Give up batch `batch`: its calls not started yet are dropped, its late answers too.
    pub fn give_up(&mut self, batch: u64) {
        if self.batch == batch {
            self.confirms.clear();
            self.owed = 0;
        }
    }

    /// The next job due at `now` about a volume not in flight, marked in flight; otherwise
    /// when to look again (`None`: nothing queued).
    pub fn take(&mut self, now: Instant) -> Result<Job, Option<Instant>> {
        let in_flight = &self.in_flight;
        let check = self.queue.iter().find(|(_, n)| !in_flight.contains(n));
        let confirm = self
            .confirms
            .iter()
            .position(|(_, _, n)| !in_flight.contains(n));
        let confirm_at = confirm.map(|i| self.confirms[i].0);
        let job = match (check, confirm_at) {
            (Some((at, _)), Some(c)) if c < *at => (c, None),
            (Some((at, n)), _) => (*at, Some((*at, n.clone()))),
            (None, Some(c)) => (c, None),
            (None, None) => return Err(None),
        };
        if job.0 > now {
            return Err(Some(job.0));
        }
        let job = match job.1 {
            Some(key) => {
                self.queue.remove(&key);
                Job::Check(key.1)
            }
            None => {
                let (_, batch, name) = self.confirms.remove(confirm.unwrap_or(0)).ok_or(None)?;
                Job::Confirm(batch, name)
            }
        };
        self.in_flight.insert(job.name().clone());
        Ok(job)
    }

    /// `job` ended at `now` with `answer` (`None`: no answer, e.g. an error). A periodic check
    /// is due again one interval after it was due (not after it ended, so the spread holds),
    /// never in the past; a confirmation's answer goes to its batch if that is still current.
    pub fn finished(&mut self, job: Job, answer: Option<Finding>, now: Instant) {
        self.in_flight.remove(job.name());
        match job {
            Job::Check(name) => {
                if let Some(&prev) = self.due.get(&name) {
                    // A check that ended late rejoins the grid, not a time of its own.
                    let next = self.on_grid((prev + self.interval).max(now), true);
                    self.due.insert(name.clone(), next);
                    self.queue.insert((next, name));
                }
            }
            Job::Confirm(batch, name) => {
                if batch == self.batch && self.owed > 0 {
                    self.owed -= 1;
                    self.answers.extend(answer.map(|a| (name, a)));
                }
            }
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    pub fn tracked(&self) -> usize {
        self.due.len()
    }
}

/// What the workers share.
struct Core {
    monitor: Arc<Monitor>,
    source: Arc<dyn HealthSource>,
    schedule: Mutex<Schedule>,
    /// Workers wait here for work (the timer holder with a timeout).
    work: Condvar,
    /// A call ended: batch waits and the drain wait here.
    ended: Condvar,
}

/// The pool. Dropping it stops the workers without waiting; [`Engine::drain`] waits.
pub struct Engine {
    core: Arc<Core>,
    threads: Vec<JoinHandle<()>>,
}

impl Engine {
    /// Start `workers` threads (at least one). `interval`: the periodic checks' interval.
    pub fn start(
        workers: usize,
        interval: Duration,
        monitor: Arc<Monitor>,
        source: Arc<dyn HealthSource>,
    ) -> std::io::Result<Engine> {
        let core = Arc::new(Core {
            monitor,
            source,
            schedule: Mutex::new(Schedule::new(interval)),
            work: Condvar::new(),
            ended: Condvar::new(),
        });
        let mut engine = Engine {
            core,
            threads: Vec::new(),
        };
        for i in 0..workers.max(1) {
            let core = engine.core.clone();
            engine.threads.push(
                std::thread::Builder::new()
                    .name(format!("csi-worker-{i}"))
                    .spawn(move || core.work())?,
            );
        }
        Ok(engine)
    }

    fn lock(&self) -> MutexGuard<'_, Schedule> {
        super::lock(&self.core.schedule)
    }

    /// The per-volume modes: check exactly the checkable PVs of the store now (a rescan).
    pub fn track_store(&self) {
        let snapshot = self.core.monitor.pvs.snapshot();
        let mut names: Vec<&Name> = snapshot
            .iter()
            .filter(|pv| checkable(pv).is_ok())
            .map(|pv| pv.name_arc())
            .collect();
        names.sort_unstable();
        let mut s = self.lock();
        s.reconcile(names.into_iter(), Instant::now());
        log::debug!(
            tracked = s.tracked(),
            in_flight = s.in_flight();
            "Reconciled volumes"
        );
        drop(s);
        self.core.work.notify_all();
    }

    /// Ask about every PV in `names`, the calls spread evenly over `spread`, and return the
    /// answers (a call that failed has none). The wait for the last answers after the last
    /// call went out is bounded by `drain`. `None`: shutdown came before the last call went out
    /// (the rest are not made).
    pub fn confirm(
        &self,
        names: &[Name],
        spread: Duration,
        drain: Duration,
        shutdown: &Shutdown,
    ) -> Option<Vec<(Name, Finding)>> {
        let start = Instant::now();
        let batch = self.lock().confirm(names, start, spread);
        self.core.work.notify_all();
        let step = spread
            .checked_div(names.len().max(1) as u32)
            .unwrap_or_default();
        let last = start + step * names.len().saturating_sub(1) as u32;
        let spreading = last.saturating_duration_since(Instant::now());
        if !spreading.is_zero() && shutdown.wait_timeout(spreading) || shutdown.is_triggered() {
            self.lock().give_up(batch);
            return None;
        }
        let deadline = Instant::now() + drain;
        let mut s = self.lock();
        while s.owed > 0 && s.batch == batch {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            s = crate::sync::wait_timeout(&self.core.ended, s, deadline - now);
        }
        let answers = std::mem::take(&mut s.answers);
        s.give_up(batch);
        Some(answers)
    }

    /// Stop: no new call starts; the calls in flight (each bounded by `--timeout`) are waited
    /// for at most `bound`, so no Event is half made.
    pub fn drain(self, bound: Duration) {
        let deadline = Instant::now() + bound;
        let mut s = self.lock();
        s.stopping = true;
        self.core.work.notify_all();
        while s.in_flight() > 0 {
            let now = Instant::now();
            if now >= deadline {
                log::warn!(
                    in_flight = s.in_flight();
                    "Checks still running at shutdown; not waiting for them"
                );
                break;
            }
            s = crate::sync::wait_timeout(&self.core.ended, s, deadline - now);
        }
    }

    /// How many calls are running now.
    pub fn in_flight(&self) -> usize {
        self.lock().in_flight()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.lock().stopping = true;
        self.core.work.notify_all();
        // Detached: a worker in a call ends when it returns (bounded by --timeout).
        self.threads.clear();
    }
}

impl Core {
    /// A worker's life: take due work, run it, put it back, until the engine stops.
    fn work(&self) {
        let mut s = super::lock(&self.schedule);
        // This worker's timer ticket, while it may hold the timer.
        let mut mine: Option<u64> = None;
        loop {
            if s.stopping {
                return;
            }
            let holder = mine.is_some() && s.timer.map(|t| t.0) == mine;
            match s.take(Instant::now()) {
                Ok(job) => {
                    if holder {
                        s.timer = None;
                    }
                    mine = None;
                    let started = Instant::now();
                    if s.timer.is_none() && s.needs_watcher(started) {
                        // Someone else watches for the next due time.
                        self.work.notify_one();
                    }
                    drop(s);
                    let answer = self.run(&job);
                    s = super::lock(&self.schedule);
                    s.timed(started.elapsed());
                    // This worker looks for work next itself: whatever the call freed (a
                    // confirmation waiting for this volume, the check queued again) is seen.
                    s.finished(job, answer, Instant::now());
                    self.ended.notify_all();
                }
                Err(next) => {
                    // Watch the clock if nobody does, or for work due before the watcher wakes.
                    let sooner = match (s.timer, next) {
                        (None, _) => true,
                        (Some((_, None)), Some(_)) => true,
                        (Some((_, Some(until))), Some(at)) => at < until,
                        (Some(_), None) => false,
                    };
                    if holder || sooner {
                        s.tickets = s.tickets.wrapping_add(1);
                        s.timer = Some((s.tickets, next));
                        mine = Some(s.tickets);
                    } else {
                        mine = None;
                    }
                    s = match (mine, next) {
                        (Some(_), Some(at)) => {
                            let wait = at.saturating_duration_since(Instant::now());
                            crate::sync::wait_timeout(&self.work, s, wait)
                        }
                        _ => crate::sync::wait(&self.work, s),
                    };
                }
            }
        }
    }

    /// One call, on a worker thread. The PV record is copied out of the store (a snapshot held
    /// through the call would make every write of the reflector meanwhile copy the whole
    /// store); it may have been deleted or unbound since the job was queued.
    fn run(&self, job: &Job) -> Option<Finding> {
        let pv = self.monitor.pvs.get(job.name())?;
        let pv = &pv;
        checkable(pv).ok()?;
        if log::log_enabled!(log::Level::Trace) {
            log::trace!(pv:% = pv.name(); "Started PV processing");
        }
        crate::crash::fault_point("worker");
        let finding = ask(&self.monitor, self.source.as_ref(), pv)?;
        match job {
            Job::Check(_) => {
                self.monitor.observe(pv, &finding);
                None
            }
            Job::Confirm(..) => Some(finding),
        }
    }
}

/// Ask the driver about one volume (ControllerGetVolume or ControllerGetVolumeHealth) and
/// count the probe. `None`: the call failed (logged): an error is never a recovery.
pub fn ask(monitor: &Monitor, source: &dyn HealthSource, pv: &PvRecord) -> Option<Finding> {
    let started = Instant::now();
    let result = source.get(pv.volume_handle());
    let secs = started.elapsed().as_secs_f64();
    let method = source.get_method();
    match result {
        Ok(conds) => {
            monitor.answer_well_formed(pv);
            let label = if conds.is_empty() {
                "normal"
            } else {
                "abnormal"
            };
            monitor.metrics().observe_probe(method, label, secs);
            Some(Finding::Conditions(conds))
        }
        Err(e) if e.is_not_found() => {
            monitor.metrics().observe_probe(method, "not_found", secs);
            Some(Finding::Missing)
        }
        Err(e @ CsiError::Malformed { .. }) => {
            // A driver error, never a recovery: no state changes. Said once per volume (and
            // again when the problem changes), not on every check.
            monitor.metrics().observe_probe(method, "error", secs);
            monitor.answer_malformed(pv, &e);
            None
        }
        Err(e) => {
            monitor.metrics().observe_probe(method, "error", secs);
            if let Some(n) = monitor.rpc_errors.hit(Instant::now()) {
                log::error!(
                    errors_since_last_line = n, pv:% = pv.name(), err:% = e;
                    "Check controller volume status error"
                );
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csi::{Condition, Generation, ListPage};
    use crate::monitor::tests::observe::rig;

    fn names(n: usize) -> Vec<Name> {
        (0..n).map(|i| Name::from(format!("pv-{i:03}"))).collect()
    }

    fn schedule(n: usize, t0: Instant, interval: Duration) -> Schedule {
        let mut s = Schedule::new(interval);
        let names = names(n);
        s.reconcile(names.iter(), t0);
        s
    }

    fn name(job: &Job) -> &str {
        job.name()
    }

    #[test]
    fn spreads_new_volumes_over_the_interval() {
        let t0 = Instant::now();
        let s = schedule(4, t0, Duration::from_secs(60));
        let mut due: Vec<Duration> = s.due.values().map(|at| *at - t0).collect();
        due.sort();
        assert_eq!(
            due,
            [0, 15, 30, 45].map(Duration::from_secs).to_vec(),
            "new volumes are spread evenly"
        );
        // A batch of confirmations is spread over the time it is given.
        let mut s = Schedule::new(Duration::from_secs(60));
        s.confirm(&names(3), t0, Duration::from_secs(30));
        let at: Vec<Duration> = s.confirms.iter().map(|(at, _, _)| *at - t0).collect();
        assert_eq!(at, [0, 10, 20].map(Duration::from_secs).to_vec());
        assert!(s.take(t0).is_ok());
        assert_eq!(
            s.take(t0),
            Err(Some(t0 + Duration::from_secs(10))),
            "the next call waits for its time"
        );
    }

    /// Issue #24: due times sit on a grid (100 ms, or 1/100 of a short interval), so the
    /// checks falling due within one step leave on one wake-up; a check that ended late
    /// rejoins the grid.
    #[test]
    fn due_times_sit_on_a_grid() {
        let t0 = Instant::now();
        let iv = Duration::from_secs(60);
        // 1,000 volumes over 60 s: one every 60 ms, on a 100 ms grid.
        let s = schedule(1000, t0, iv);
        let mut offsets: Vec<u128> = s.due.values().map(|at| (*at - t0).as_millis()).collect();
        offsets.sort();
        assert!(offsets.iter().all(|ms| ms % 100 == 0), "{offsets:?}");
        offsets.dedup();
        assert_eq!(
            offsets.len(),
            600,
            "every grid step of the interval is used"
        );
        // A short interval keeps a finer grain: 4 volumes over 2 s stay 500 ms apart.
        let s = schedule(4, t0, Duration::from_secs(2));
        let mut due: Vec<Duration> = s.due.values().map(|at| *at - t0).collect();
        due.sort();
        assert_eq!(
            due,
            [0, 500, 1000, 1500].map(Duration::from_millis).to_vec()
        );
        // Late: it ended 1,234 ms after its next due time; it is due on the next grid point.
        let mut s = schedule(1, t0, iv);
        let job = s.take(t0).unwrap();
        s.finished(job, None, t0 + iv + Duration::from_millis(1234));
        assert_eq!(
            s.due.values().next(),
            Some(&(t0 + iv + Duration::from_millis(1300)))
        );
    }

    #[test]
    fn never_two_calls_about_one_volume_whatever_their_kind() {
        let t0 = Instant::now();
        let iv = Duration::from_secs(60);
        let mut s = schedule(1, t0, iv);
        let check = s.take(t0).unwrap();
        assert_eq!(name(&check), "pv-000");
        assert_eq!(s.take(t0), Err(None), "one volume, one call in flight");
        // A confirmation about the volume being checked waits for the check to end.
        s.confirm(&[Name::from("pv-000")], t0, Duration::ZERO);
        assert_eq!(s.take(t0), Err(None));
        s.finished(check, None, t0 + Duration::from_millis(5));
        let confirm = s.take(t0 + Duration::from_millis(5)).unwrap();
        assert!(matches!(&confirm, Job::Confirm(_, n) if &**n == "pv-000"));
        // ...and the next periodic check waits for the confirmation, then for its time.
        let later = t0 + iv + Duration::from_secs(1);
        assert_eq!(s.take(later), Err(None));
        s.finished(confirm, Some(Finding::Missing), later);
        assert_eq!(s.answers, vec![(Arc::from("pv-000"), Finding::Missing)]);
        assert!(s.take(t0 + Duration::from_secs(59)).is_err());
        assert_eq!(name(&s.take(later).unwrap()), "pv-000");
    }

    #[test]
    fn vanished_volumes_are_dropped_and_late_checks_do_not_go_to_the_past() {
        let t0 = Instant::now();
        let iv = Duration::from_secs(10);
        let mut s = schedule(2, t0, iv);
        s.reconcile([Name::from("pv-000")].iter(), t0);
        assert_eq!(s.tracked(), 1);
        let job = s.take(t0).unwrap();
        let late = t0 + Duration::from_secs(25);
        s.finished(job, None, late);
        assert_eq!(s.due[&Arc::from("pv-000")], late);
        // A volume removed while in flight is not queued again.
        let job = s.take(late).unwrap();
        s.reconcile(std::iter::empty(), late);
        s.finished(job, None, late);
        assert_eq!(s.tracked(), 0);
        assert_eq!(s.take(late + iv), Err(None));
    }

    /// The clock is handed to an idle worker only when the next job is due before the call
    /// just started is likely to end (slow calls: always; fast calls, sparse jobs: never).
    #[test]
    fn an_idle_worker_watches_the_clock_only_when_a_call_may_outlast_the_next_due_time() {
        let t0 = Instant::now();
        let mut s = schedule(10, t0, Duration::from_millis(100));
        assert!(s.take(t0).is_ok());
        assert!(s.needs_watcher(t0), "calls not timed yet: assumed slow");
        for _ in 0..64 {
            s.timed(Duration::from_micros(200));
        }
        assert!(!s.needs_watcher(t0), "next due in 10 ms, calls take 0.2 ms");
        assert!(s.needs_watcher(t0 + Duration::from_millis(10)));
        for _ in 0..64 {
            s.timed(Duration::from_millis(50));
        }
        assert!(
            s.needs_watcher(t0),
            "calls of 50 ms outlast the next due time"
        );
    }

    #[test]
    fn a_given_up_batch_neither_calls_nor_counts() {
        let t0 = Instant::now();
        let mut s = Schedule::new(Duration::ZERO);
        let first = s.confirm(&names(2), t0, Duration::ZERO);
        let running = s.take(t0).unwrap();
        s.give_up(first);
        assert_eq!(s.take(t0), Err(None), "its queued calls are dropped");
        let second = s.confirm(&[Name::from("pv-009")], t0, Duration::ZERO);
        s.finished(running, Some(Finding::Missing), t0);
        assert_eq!(
            s.owed, 1,
            "the late answer is not counted against the next batch"
        );
        assert!(s.answers.is_empty());
        let job = s.take(t0).unwrap();
        assert_eq!(job, Job::Confirm(second, Arc::from("pv-009")));
    }

    /// A driver whose per-volume call answers healthy, counts how many calls run at once, and
    /// holds each call until `meet` calls run together (or `hold` is released).
    #[derive(Default)]
    struct Probe {
        state: Mutex<ProbeState>,
        changed: Condvar,
        meet: usize,
        /// Calls about this volume wait until `release`.
        slow: Option<&'static str>,
    }

    #[derive(Default)]
    struct ProbeState {
        running: usize,
        max: usize,
        calls: usize,
        released: bool,
    }

    impl Probe {
        fn release(&self) {
            super::super::lock(&self.state).released = true;
            self.changed.notify_all();
        }
        fn max(&self) -> usize {
            super::super::lock(&self.state).max
        }
        fn calls(&self) -> usize {
            super::super::lock(&self.state).calls
        }
        /// Wait (at most 20 s) until `n` calls were made; how many were.
        fn wait_calls(&self, n: usize) -> usize {
            let until = Instant::now() + Duration::from_secs(20);
            let mut s = super::super::lock(&self.state);
            while s.calls < n && Instant::now() < until {
                s = self
                    .changed
                    .wait_timeout(s, Duration::from_millis(100))
                    .unwrap()
                    .0;
            }
            s.calls
        }
    }

    impl HealthSource for Probe {
        fn list_method(&self) -> &'static str {
            "ControllerListVolumeHealth"
        }
        fn get_method(&self) -> &'static str {
            "ControllerGetVolumeHealth"
        }
        fn list_page(&self, _max: i32, _token: &str) -> Result<ListPage, CsiError> {
            unreachable!()
        }
        fn get(&self, id: &str) -> Result<Vec<Condition>, CsiError> {
            let mut s = super::super::lock(&self.state);
            s.running += 1;
            s.calls += 1;
            s.max = s.max.max(s.running);
            self.changed.notify_all();
            // Bounded: a broken engine fails the assertions below instead of hanging.
            let until = Instant::now() + Duration::from_secs(20);
            let held = |s: &ProbeState| (s.max < self.meet || self.slow == Some(id)) && !s.released;
            while held(&s) && Instant::now() < until {
                s = self
                    .changed
                    .wait_timeout(s, Duration::from_millis(100))
                    .unwrap()
                    .0;
            }
            s.running -= 1;
            Ok(Vec::new())
        }
    }

    /// A monitor with PVs `pv-v1`..`pv-v<n>` (handles `v1`..).
    fn monitor(n: usize) -> Arc<Monitor> {
        let r = rig(Generation::Condition, false, None, 100, vec![]);
        for i in 2..=n {
            let other = PvRecord::new(
                &format!("pv-v{i}"),
                &format!("v{i}"),
                PvPhase::Bound,
                Some(("ns", "pvc-v1", "u1")),
                false,
            )
            .unwrap();
            r.monitor.pvs.apply(other);
        }
        Arc::new(r.monitor)
    }

    fn pv_names(n: usize) -> Vec<Name> {
        (1..=n).map(|i| Name::from(format!("pv-v{i}"))).collect()
    }

    /// The v1.13 listing's case: several abnormal volumes absent at once are confirmed in
    /// parallel, one call's time for the lot (each call waits until all four run together).
    #[test]
    fn confirmations_run_in_parallel_on_the_workers() {
        let probe = Arc::new(Probe {
            meet: 4,
            ..Probe::default()
        });
        let engine = Engine::start(4, Duration::ZERO, monitor(4), probe.clone()).unwrap();
        let answers = engine
            .confirm(
                &pv_names(4),
                Duration::ZERO,
                Duration::from_secs(60),
                &Shutdown::new(),
            )
            .unwrap();
        assert_eq!(answers.len(), 4);
        assert_eq!(probe.max(), 4, "all four calls ran at once");
    }

    /// Issue #25: an answer that arrives after its batch's wait gave up belongs to that batch;
    /// it is dropped, not counted against the next one.
    #[test]
    fn a_late_answer_is_dropped_not_counted_against_the_next_batch() {
        let probe = Arc::new(Probe {
            slow: Some("v1"),
            ..Probe::default()
        });
        let engine = Engine::start(1, Duration::ZERO, monitor(2), probe.clone()).unwrap();
        let shutdown = Shutdown::new();
        // pv-v1's call outlasts the wait: the batch gives up without its answer.
        let first = engine
            .confirm(
                &["pv-v1".into()],
                Duration::ZERO,
                Duration::from_millis(50),
                &shutdown,
            )
            .unwrap();
        assert!(first.is_empty());
        probe.release();
        // pv-v1's answer arrives during the next batch; only pv-v2's belongs to it.
        let started = Instant::now();
        let second = engine
            .confirm(
                &["pv-v2".into()],
                Duration::ZERO,
                Duration::from_secs(20),
                &shutdown,
            )
            .unwrap();
        assert_eq!(
            second,
            vec![(Arc::from("pv-v2"), Finding::Conditions(vec![]))]
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the batch waited for an answer it had already counted: {:?}",
            started.elapsed()
        );
    }

    /// Periodic checks of one volume with many workers: one call at a time, and again when
    /// due (the idle workers wait for the next due time; one of them must watch it).
    #[test]
    fn one_volume_many_workers_one_call_at_a_time() {
        let probe = Arc::new(Probe::default());
        let engine = Engine::start(4, Duration::from_millis(5), monitor(1), probe.clone()).unwrap();
        engine.track_store();
        assert!(probe.wait_calls(30) >= 30, "checked again and again");
        assert_eq!(probe.max(), 1, "never two calls about one volume");
        engine.drain(Duration::from_secs(20));
    }

    /// The drain at shutdown waits for the calls in flight, but only so long; a shutdown
    /// during a batch's spread gives the rest of the batch up.
    #[test]
    fn the_drain_and_the_batch_wait_are_bounded() {
        let probe = Arc::new(Probe {
            slow: Some("v1"),
            ..Probe::default()
        });
        let engine = Engine::start(2, Duration::ZERO, monitor(3), probe.clone()).unwrap();
        let shutdown = Shutdown::new();
        let stop = shutdown.clone();
        let first = probe.clone();
        let stopper = std::thread::spawn(move || {
            first.wait_calls(1);
            stop.trigger();
        });
        // Spread over an hour: shutdown cuts the batch short after its first call went out.
        let answers = engine.confirm(
            &pv_names(3),
            Duration::from_secs(3600),
            Duration::ZERO,
            &shutdown,
        );
        stopper.join().unwrap();
        assert_eq!(answers, None);
        assert_eq!(probe.calls(), 1, "the calls not due yet were never made");
        assert_eq!(engine.in_flight(), 1, "pv-v1's call is held");
        let started = Instant::now();
        engine.drain(Duration::from_millis(200));
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert!(started.elapsed() < Duration::from_secs(10), "bounded");
        probe.release();
    }
}
