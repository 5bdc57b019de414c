//! Reading what happened out of the logs the doubles keep: the mock driver's call log (sweep
//! starts and ends, rounds of checks), the fake server's request log (event writes, leases,
//! watches, status writes, bytes) and, on failure, the sidecar's own log.

use std::path::Path;
use std::time::{Duration, Instant};

use super::{Traffic, VOL_NS};
use crate::apiserver::{FakeApiServer, RequestRecord};
use crate::csidriver::{self, MockDriver};

/// A failed measurement: the error and the last lines the sidecar logged.
pub(super) fn print_failure(e: &str, log_path: &Path) {
    let text = std::fs::read_to_string(log_path).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(30).collect();
    eprintln!("   failed: {e}\n   sidecar log (last lines):");
    for l in tail.into_iter().rev() {
        eprintln!("   | {l}");
    }
}

pub(super) fn finished(s: &csidriver::State, method: &str) -> usize {
    s.calls
        .iter()
        .filter(|c| c.method == method && c.finished.is_some())
        .count()
}

/// Listing calls (`method`) without a starting token: one per sweep.
pub(super) fn starts(s: &csidriver::State, method: &str) -> usize {
    s.calls
        .iter()
        .filter(|c| c.method == method && c.arg.is_empty())
        .count()
}

pub(super) fn nth_sweep_start(driver: &MockDriver, method: &str, k: usize) -> Option<Instant> {
    driver
        .calls(method)
        .into_iter()
        .filter(|c| c.arg.is_empty())
        .nth(k - 1)
        .map(|c| c.started)
}

pub(super) fn last_finished(driver: &MockDriver, method: &str) -> Instant {
    driver
        .calls(method)
        .iter()
        .filter_map(|c| c.finished)
        .max()
        .unwrap_or_else(Instant::now)
}

pub(super) fn wait_driver(
    driver: &MockDriver,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&csidriver::State) -> bool,
) -> Result<(), String> {
    if driver.wait_until(timeout, pred) {
        Ok(())
    } else {
        Err(format!("timed out after {timeout:?} waiting for {what}"))
    }
}

pub(super) fn is_event_write(r: &RequestRecord) -> bool {
    r.method != "GET"
        && (200..300).contains(&r.status)
        && r.path
            .starts_with(&format!("/api/v1/namespaces/{VOL_NS}/events"))
}

pub(super) fn is_lease(r: &RequestRecord) -> bool {
    r.path.contains("/leases")
}

/// Waits for the `k`-th accepted event write about a volume; returns when it was accepted.
pub(super) fn wait_event_writes(
    api: &FakeApiServer,
    k: usize,
    timeout: Duration,
) -> Result<Instant, String> {
    let count = |a: &FakeApiServer| a.requests().iter().filter(|r| is_event_write(r)).count();
    if !api.wait_until(timeout, |a| count(a) >= k) {
        return Err(format!(
            "timed out waiting for {k} event writes (saw {})",
            count(api)
        ));
    }
    api.requests()
        .iter()
        .filter(|r| is_event_write(r))
        .nth(k - 1)
        .map(|r| r.at)
        .ok_or_else(|| "event write vanished".to_string())
}

pub(super) fn traffic(log: &[RequestRecord], from: Instant, to: Instant) -> Traffic {
    let mut t = Traffic::default();
    for r in log.iter().filter(|r| r.at >= from && r.at <= to) {
        t.requests += 1;
        t.bytes += r.request_bytes + r.response_bytes;
        if r.is_watch() {
            t.watch += 1;
        } else if is_lease(r) {
            t.lease += 1;
        } else if is_event_write(r) {
            t.event_writes += 1;
        } else if r.method == "PATCH" && r.path.ends_with("/status") {
            t.status_writes += 1;
        } else {
            t.other += 1;
        }
    }
    t
}
