//! ListVolumes mode: one paginated sweep right away and then every `--list-volumes-interval`
//! (measured from the end of the previous sweep, as upstream), on one named thread.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::decide::{absent_after, checkable, Observation};
use super::Monitor;
use crate::csi::{Condition, Error as CsiError, HealthSource};
use crate::shutdown::Shutdown;

/// Upper bound on pages in one sweep: a driver that keeps returning tokens is cut off rather
/// than looping forever (upstream relied on one 15 s deadline for the whole sweep).
const MAX_PAGES: usize = 1_000_000;

#[derive(Debug)]
pub enum SweepError {
    Rpc(CsiError),
    /// The driver handed back a token it had already given in this sweep.
    TokenLoop(String),
    TooManyPages,
}

impl std::fmt::Display for SweepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SweepError::Rpc(e) => write!(f, "failed to list volumes: {e}"),
            SweepError::TokenLoop(t) => write!(
                f,
                "failed to list volumes: the driver repeated next_token {t:?}"
            ),
            SweepError::TooManyPages => {
                write!(f, "failed to list volumes: more than {MAX_PAGES} pages")
            }
        }
    }
}

/// Every volume the driver returned in one complete sweep.
pub fn collect(
    source: &dyn HealthSource,
    max_entries: i32,
) -> Result<(HashMap<String, Condition>, usize), SweepError> {
    let mut out = HashMap::new();
    let mut seen_tokens = HashSet::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = source
            .list_volumes(max_entries, &token)
            .map_err(SweepError::Rpc)?;
        pages += 1;
        if page.skipped > 0 {
            log::warn!(
                "ListVolumes returned {} entries without a volume; skipping them starting_token=\"{token}\"",
                page.skipped
            );
        }
        for (id, cond) in page.entries {
            out.insert(id, cond);
        }
        if page.next_token.is_empty() {
            return Ok((out, pages));
        }
        if !seen_tokens.insert(page.next_token.clone()) {
            return Err(SweepError::TokenLoop(page.next_token));
        }
        if pages >= MAX_PAGES {
            return Err(SweepError::TooManyPages);
        }
        token = page.next_token;
    }
}

pub struct ListLoop {
    pub monitor: Arc<Monitor>,
    pub source: Arc<dyn HealthSource>,
    pub interval: Duration,
    pub max_entries: i32,
    /// Consecutive complete sweeps each PV's volume was absent from.
    absences: HashMap<String, u32>,
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
            absences: HashMap::new(),
        }
    }

    pub fn run(mut self, shutdown: Shutdown) {
        loop {
            self.sweep();
            if shutdown.wait_timeout(self.interval) {
                return;
            }
        }
    }

    /// One sweep: list everything, then judge every checkable PV of this driver.
    pub fn sweep(&mut self) {
        let started = Instant::now();
        let result = collect(self.source.as_ref(), self.max_entries);
        // In this mode the probe is the whole (paged) listing: one observation per sweep.
        self.monitor.metrics().observe_probe(
            "ListVolumes",
            if result.is_ok() { "ok" } else { "error" },
            started.elapsed().as_secs_f64(),
        );
        let snapshot = self.monitor.pvs.snapshot();
        let current: HashSet<String> = snapshot.keys().cloned().collect();
        let (volumes, pages) = match result {
            Ok(v) => v,
            Err(e) => {
                // An incomplete sweep says nothing about absence: keep the counters as they are.
                log::error!("Check controller volume status error err=\"{e}\"");
                self.monitor.forget_gone(&current);
                return;
            }
        };
        let mut checked = 0usize;
        for pv in snapshot.values() {
            if checkable(pv).is_err() {
                self.absences.remove(&pv.name);
                continue;
            }
            checked += 1;
            match volumes.get(&pv.volume_handle) {
                Some(cond) => {
                    self.absences.remove(&pv.name);
                    self.monitor
                        .observe(pv, &Observation::Condition(cond.clone()));
                }
                None => {
                    let prev = self.absences.get(&pv.name).copied().unwrap_or(0);
                    let (n, missing) = absent_after(prev, false);
                    self.absences.insert(pv.name.clone(), n);
                    if missing {
                        self.monitor.observe(pv, &Observation::Missing);
                    }
                }
            }
        }
        self.absences.retain(|name, _| current.contains(name));
        self.monitor.forget_gone(&current);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        self.monitor.metrics().set_last_sweep(now);
        log::debug!(
            "ListVolumes sweep done pages={pages} volumes={} checked={checked} duration=\"{:?}\"",
            volumes.len(),
            started.elapsed()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csi::ListPage;
    use std::sync::Mutex;

    struct Pages(Mutex<Vec<Result<ListPage, CsiError>>>, Mutex<Vec<String>>);

    impl HealthSource for Pages {
        fn list_volumes(&self, _max: i32, token: &str) -> Result<ListPage, CsiError> {
            self.1.lock().unwrap().push(token.to_string());
            self.0.lock().unwrap().remove(0)
        }
        fn get_volume(&self, _id: &str) -> Result<Condition, CsiError> {
            unreachable!()
        }
    }

    fn page(ids: &[&str], next: &str) -> Result<ListPage, CsiError> {
        Ok(ListPage {
            entries: ids
                .iter()
                .map(|i| {
                    (
                        i.to_string(),
                        Condition {
                            abnormal: false,
                            message: String::new(),
                        },
                    )
                })
                .collect(),
            skipped: 0,
            next_token: next.to_string(),
        })
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
        let (vols, pages) = collect(&src, 0).unwrap();
        assert_eq!(pages, 3);
        assert_eq!(vols.len(), 3);
        assert_eq!(*src.1.lock().unwrap(), vec!["", "t1", "t2"]);
    }

    #[test]
    fn repeated_token_is_an_error() {
        let src = Pages(
            Mutex::new(vec![page(&["a"], "t1"), page(&["b"], "t1")]),
            Mutex::new(vec![]),
        );
        assert!(matches!(collect(&src, 0), Err(SweepError::TokenLoop(t)) if t == "t1"));
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
        assert!(matches!(collect(&src, 0), Err(SweepError::Rpc(_))));
    }
}
