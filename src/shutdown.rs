//! The one shutdown signal every thread of the daemon watches.
//!
//! A `Shutdown` is cheap to clone. `trigger` is idempotent. Loops either poll `is_triggered`,
//! sleep through `wait_timeout` (which wakes early when shutdown is triggered), or put
//! `receiver()` into a crossbeam `select!`: the channel never carries a message, it is
//! disconnected on shutdown, so a `recv` arm fires with `Err` exactly then.

use crossbeam_channel::{Receiver, Sender};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone)]
pub struct Shutdown {
    inner: Arc<Inner>,
}

struct Inner {
    flag: AtomicBool,
    lock: Mutex<Option<Sender<()>>>,
    cond: Condvar,
    rx: Receiver<()>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    pub fn new() -> Shutdown {
        let (tx, rx) = crossbeam_channel::bounded(0);
        Shutdown {
            inner: Arc::new(Inner {
                flag: AtomicBool::new(false),
                lock: Mutex::new(Some(tx)),
                cond: Condvar::new(),
                rx,
            }),
        }
    }

    /// Ask every thread to stop. Safe to call more than once and from any thread.
    pub fn trigger(&self) {
        self.inner.flag.store(true, Ordering::SeqCst);
        let mut guard = crate::sync::lock(&self.inner.lock);
        guard.take();
        self.inner.cond.notify_all();
    }

    pub fn is_triggered(&self) -> bool {
        self.inner.flag.load(Ordering::SeqCst)
    }

    /// Sleep for `d` or until shutdown, whichever comes first. Returns true when shutdown was
    /// triggered.
    pub fn wait_timeout(&self, d: Duration) -> bool {
        // `d` may come from a server (Retry-After): saturate rather than overflow.
        let deadline = crate::timeutil::saturating_deadline(Instant::now(), d);
        let mut guard = crate::sync::lock(&self.inner.lock);
        loop {
            if self.is_triggered() {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            guard = crate::sync::wait_timeout(&self.inner.cond, guard, deadline - now);
        }
    }

    /// A receiver that is disconnected when shutdown is triggered; use it in `select!`.
    pub fn receiver(&self) -> Receiver<()> {
        self.inner.rx.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How long a woken wait may take to return: far below the waits it cuts short, so a
    /// broken wake-up fails the test instead of passing late.
    const WAKE_BOUND: Duration = Duration::from_secs(5);

    /// Runs `wait_timeout(d)` on a thread; the receiver gets its result.
    fn waiting(s: &Shutdown, d: Duration) -> crossbeam_channel::Receiver<bool> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let s2 = s.clone();
        std::thread::spawn(move || {
            let _ = tx.send(s2.wait_timeout(d));
        });
        // Still waiting: nothing but a trigger ends a wait this long.
        assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
        rx
    }

    #[test]
    fn wait_returns_early_on_trigger() {
        let s = Shutdown::new();
        let rx = waiting(&s, Duration::from_secs(3600));
        let asked = Instant::now();
        s.trigger();
        let woken = rx
            .recv_timeout(WAKE_BOUND)
            .expect("the trigger wakes the wait at once");
        assert!(woken);
        assert!(asked.elapsed() < WAKE_BOUND);
    }

    #[test]
    fn an_endless_wait_does_not_overflow_and_still_ends_on_trigger() {
        let s = Shutdown::new();
        let rx = waiting(&s, Duration::MAX);
        s.trigger();
        let woken = rx
            .recv_timeout(WAKE_BOUND)
            .expect("the trigger wakes an endless wait at once");
        assert!(woken);
        // Once triggered, a wait returns without waiting at all.
        let started = Instant::now();
        assert!(s.wait_timeout(Duration::MAX));
        assert!(started.elapsed() < WAKE_BOUND);
    }

    #[test]
    fn wait_times_out_without_trigger() {
        let s = Shutdown::new();
        assert!(!s.wait_timeout(Duration::from_millis(10)));
    }

    #[test]
    fn receiver_disconnects_on_trigger() {
        let s = Shutdown::new();
        let rx = s.receiver();
        assert!(rx.try_recv().is_err());
        s.trigger();
        assert!(matches!(
            rx.recv_timeout(Duration::from_secs(5)),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected)
        ));
    }
}
