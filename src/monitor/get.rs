//! The per-volume modes, ControllerGetVolume (v1.12) and ControllerGetVolumeHealth (v1.13)
//! (DESIGN §2.2): every checkable PV of this driver is checked once
//! per `--monitor-interval`, spread evenly over the interval, with at most `--worker-threads`
//! calls in flight on a worker pool of that size and never two concurrent checks of one
//! volume. The store is rescanned every `--volume-list-add-interval`: PVs that became Bound are
//! picked up, deleted ones dropped. Upstream instead slept after every single check, so with
//! few PVs all workers hammered the same volume (issues #56, #385).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, Sender};

use super::decide::{checkable, Observation};
use super::Monitor;
use crate::csi::{Error as CsiError, HealthSource};
use crate::shutdown::Shutdown;
use crate::watch::PvRecord;

/// The pure scheduling state: when each PV is due and which are in flight.
#[derive(Debug, Default)]
pub struct Schedule {
    due: HashMap<String, Instant>,
    queue: BTreeSet<(Instant, String)>,
    in_flight: HashSet<String>,
}

impl Schedule {
    /// Bring the tracked set in line with `names` (the checkable PVs now). New names are spread
    /// evenly over `interval` starting at `now`; vanished names are dropped.
    pub fn reconcile(&mut self, names: &[String], now: Instant, interval: Duration) {
        let wanted: HashSet<&String> = names.iter().collect();
        let gone: Vec<String> = self
            .due
            .keys()
            .filter(|n| !wanted.contains(n))
            .cloned()
            .collect();
        for name in gone {
            if let Some(at) = self.due.remove(&name) {
                self.queue.remove(&(at, name));
            }
        }
        let new: Vec<&String> = names
            .iter()
            .filter(|n| !self.due.contains_key(*n) && !self.in_flight.contains(*n))
            .collect();
        let k = new.len() as u32;
        for (i, name) in new.into_iter().enumerate() {
            let at = now + interval.checked_div(k.max(1)).unwrap_or_default() * i as u32;
            self.due.insert(name.clone(), at);
            self.queue.insert((at, name.clone()));
        }
    }

    /// Take the next due PV if a worker is free.
    pub fn next_ready(&mut self, now: Instant, workers: usize) -> Option<String> {
        if self.in_flight.len() >= workers {
            return None;
        }
        let first = self.queue.iter().next().cloned()?;
        if first.0 > now {
            return None;
        }
        self.queue.remove(&first);
        self.in_flight.insert(first.1.clone());
        Some(first.1)
    }

    /// A check finished: due again one interval after it was due (not after it finished, so
    /// the spread holds), but never in the past.
    pub fn finished(&mut self, name: &str, now: Instant, interval: Duration) {
        self.in_flight.remove(name);
        if let Some(prev) = self.due.get(name).copied() {
            let next = (prev + interval).max(now);
            self.due.insert(name.to_string(), next);
            self.queue.insert((next, name.to_string()));
        }
    }

    /// When the scheduler should look again (None: nothing queued or all workers busy).
    pub fn next_wakeup(&self, workers: usize) -> Option<Instant> {
        if self.in_flight.len() >= workers {
            return None;
        }
        self.queue.iter().next().map(|(at, _)| *at)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    pub fn tracked(&self) -> usize {
        self.due.len()
    }
}

pub struct GetLoop {
    pub monitor: Arc<Monitor>,
    pub source: Arc<dyn HealthSource>,
    pub interval: Duration,
    pub add_interval: Duration,
    pub workers: usize,
}

impl GetLoop {
    pub fn run(self, shutdown: Shutdown) -> std::io::Result<()> {
        let (done_tx, done_rx): (Sender<String>, Receiver<String>) = crossbeam_channel::unbounded();
        // Plain threads blocked on a channel, not a rayon pool: rayon's idle workers spin with
        // sched_yield before they sleep, which cost about 0.4 ms of CPU per check at a few
        // hundred checks a second (BENCHMARKS.md). The schedule never hands out more than
        // `workers` names at once, so the queue stays empty.
        let (job_tx, job_rx) = crossbeam_channel::unbounded::<String>();
        for i in 0..self.workers {
            let jobs = job_rx.clone();
            let done = done_tx.clone();
            let monitor = self.monitor.clone();
            let source = self.source.clone();
            // Detached: a worker ends when the job channel closes at shutdown.
            std::thread::Builder::new()
                .name(format!("csi-worker-{i}"))
                .spawn(move || {
                    for name in jobs {
                        check(&monitor, source.as_ref(), &name);
                        let _ = done.send(name);
                    }
                })?;
        }
        drop(job_rx);
        let stop = shutdown.receiver();
        let mut schedule = Schedule::default();
        let mut next_rescan = Instant::now();
        loop {
            let now = Instant::now();
            if now >= next_rescan {
                self.rescan(&mut schedule, now);
                next_rescan = now + self.add_interval;
            }
            while let Some(name) = schedule.next_ready(Instant::now(), self.workers) {
                let _ = job_tx.send(name);
            }
            let wake = schedule
                .next_wakeup(self.workers)
                .map_or(next_rescan, |w| w.min(next_rescan));
            crate::crash::fault_point("controller");
            let timeout = wake.saturating_duration_since(Instant::now());
            select! {
                recv(done_rx) -> msg => {
                    if let Ok(name) = msg {
                        schedule.finished(&name, Instant::now(), self.interval);
                    }
                }
                recv(stop) -> _ => break,
                default(timeout) => {}
            }
        }
        // Let in-flight checks finish (each is bounded by --timeout) so no event is half-made.
        while schedule.in_flight() > 0 {
            match done_rx.recv_timeout(Duration::from_secs(60)) {
                Ok(name) => schedule.finished(&name, Instant::now(), self.interval),
                Err(_) => break,
            }
        }
        Ok(())
    }

    fn rescan(&self, schedule: &mut Schedule, now: Instant) {
        let snapshot = self.monitor.pvs.snapshot();
        let mut names: Vec<String> = snapshot
            .values()
            .filter(|pv| checkable(pv).is_ok())
            .map(|pv| pv.name.clone())
            .collect();
        names.sort();
        schedule.reconcile(&names, now, self.interval);
        self.monitor.forget_gone();
        log::debug!(
            "Reconciled volumes tracked={} in_flight={}",
            schedule.tracked(),
            schedule.in_flight()
        );
    }
}

/// One check of one PV on a worker thread.
fn check(monitor: &Monitor, source: &dyn HealthSource, name: &str) {
    // Re-read the PV: it may have been deleted or unbound since it was scheduled.
    let Some(pv) = monitor.pvs.get(name).filter(|pv| checkable(pv).is_ok()) else {
        return;
    };
    log::trace!("Started PV processing pv=\"{}\"", pv.name);
    crate::crash::fault_point("worker");
    if let Some(observation) = ask(monitor, source, &pv) {
        monitor.observe(&pv, &observation);
    }
}

/// Ask the driver about one volume (ControllerGetVolume or ControllerGetVolumeHealth) and
/// count the probe. `None`: the call failed (logged): an error is never a recovery.
pub fn ask(monitor: &Monitor, source: &dyn HealthSource, pv: &PvRecord) -> Option<Observation> {
    let started = Instant::now();
    let result = source.get(&pv.volume_handle);
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
            Some(Observation::Conditions(conds))
        }
        Err(e) if e.is_not_found() => {
            monitor.metrics().observe_probe(method, "not_found", secs);
            Some(Observation::Missing)
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
                    "Check controller volume status error errors_since_last_line={n} pv=\"{}\" err=\"{e}\"",
                    pv.name
                );
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("pv-{i:03}")).collect()
    }

    #[test]
    fn spreads_new_volumes_over_the_interval() {
        let t0 = Instant::now();
        let mut s = Schedule::default();
        s.reconcile(&names(4), t0, Duration::from_secs(60));
        let mut due: Vec<Duration> = s.due.values().map(|at| *at - t0).collect();
        due.sort();
        assert_eq!(
            due,
            vec![
                Duration::ZERO,
                Duration::from_secs(15),
                Duration::from_secs(30),
                Duration::from_secs(45)
            ]
        );
    }

    #[test]
    fn one_volume_many_workers_one_check_per_interval() {
        let t0 = Instant::now();
        let iv = Duration::from_secs(60);
        let mut s = Schedule::default();
        s.reconcile(&names(1), t0, iv);
        assert_eq!(s.next_ready(t0, 10).as_deref(), Some("pv-000"));
        // The same volume is never handed out twice while in flight.
        assert_eq!(s.next_ready(t0, 10), None);
        s.finished("pv-000", t0 + Duration::from_millis(5), iv);
        assert_eq!(s.next_ready(t0 + Duration::from_secs(59), 10), None);
        assert_eq!(s.next_ready(t0 + iv, 10).as_deref(), Some("pv-000"));
    }

    #[test]
    fn never_more_than_workers_in_flight() {
        let t0 = Instant::now();
        let mut s = Schedule::default();
        s.reconcile(&names(10), t0, Duration::ZERO);
        let mut got = vec![];
        while let Some(n) = s.next_ready(t0, 4) {
            got.push(n);
        }
        assert_eq!(got.len(), 4);
        assert_eq!(s.next_wakeup(4), None);
        s.finished(&got[0], t0, Duration::from_secs(1));
        assert!(s.next_ready(t0, 4).is_some());
    }

    #[test]
    fn vanished_volumes_are_dropped_and_late_checks_do_not_go_to_the_past() {
        let t0 = Instant::now();
        let iv = Duration::from_secs(10);
        let mut s = Schedule::default();
        s.reconcile(&names(2), t0, iv);
        s.reconcile(&names(1), t0, iv);
        assert_eq!(s.tracked(), 1);
        let n = s.next_ready(t0, 1).unwrap();
        let late = t0 + Duration::from_secs(25);
        s.finished(&n, late, iv);
        assert_eq!(s.due[&n], late);
    }

    #[test]
    fn in_flight_volume_removed_is_not_requeued() {
        let t0 = Instant::now();
        let iv = Duration::from_secs(10);
        let mut s = Schedule::default();
        s.reconcile(&names(1), t0, iv);
        let n = s.next_ready(t0, 1).unwrap();
        s.reconcile(&[], t0, iv);
        s.finished(&n, t0, iv);
        assert_eq!(s.tracked(), 0);
        assert_eq!(s.next_wakeup(1), None);
    }
}
