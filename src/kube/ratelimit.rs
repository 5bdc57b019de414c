//! The client-side token bucket behind `--kube-api-qps` / `--kube-api-burst`, with client-go's
//! semantics (`flowcontrol.NewTokenBucketRateLimiter` over `x/time/rate`): the bucket starts
//! full with `burst` tokens, refills at `qps` per second, and a caller that finds it empty
//! reserves the next token and sleeps until it is due (callers queue, none is refused). The
//! sleep ends early on shutdown, so a long queue cannot hold the process after SIGTERM.

use crate::shutdown::Shutdown;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// client-go's defaults when `QPS`/`Burst` are zero (`rest.DefaultQPS`, `rest.DefaultBurst`).
pub const DEFAULT_QPS: f64 = 5.0;
pub const DEFAULT_BURST: u32 = 10;

/// Bucket arithmetic with time as "seconds since the limiter was made", so it is testable
/// without a clock.
#[derive(Debug, Clone, PartialEq)]
pub struct Bucket {
    qps: f64,
    burst: f64,
    tokens: f64,
    last: f64,
}

impl Bucket {
    /// A full bucket. `qps < 0` (or infinite) means unlimited, as in client-go; zeroes take
    /// client-go's defaults.
    pub fn new(qps: f64, burst: u32) -> Bucket {
        let qps = if qps == 0.0 || qps.is_nan() {
            DEFAULT_QPS
        } else {
            qps
        };
        let burst = if burst == 0 { DEFAULT_BURST } else { burst } as f64;
        Bucket {
            qps,
            burst,
            tokens: burst,
            last: 0.0,
        }
    }

    pub fn unlimited(&self) -> bool {
        self.qps < 0.0 || self.qps.is_infinite()
    }

    /// Take one token at time `now` (seconds); returns how long the caller must wait for it.
    /// The token count may go negative: later callers queue behind earlier reservations.
    pub fn reserve(&mut self, now: f64) -> Duration {
        if self.unlimited() {
            return Duration::ZERO;
        }
        if now > self.last {
            self.tokens = (self.tokens + (now - self.last) * self.qps).min(self.burst);
            self.last = now;
        }
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            // `--kube-api-qps` is validated to at least `flags::MIN_KUBE_API_QPS`; saturate
            // anyway, since `from_secs_f64` panics on a wait past `Duration::MAX` (a qps of
            // 1e-20 did that on the first caller after the burst).
            Duration::try_from_secs_f64(-self.tokens / self.qps).unwrap_or(Duration::MAX)
        }
    }
}

/// A shared limiter; clones share the bucket.
#[derive(Clone)]
pub struct RateLimiter {
    bucket: Arc<Mutex<Bucket>>,
    origin: Instant,
}

impl RateLimiter {
    pub fn new(qps: f64, burst: u32) -> RateLimiter {
        RateLimiter {
            bucket: Arc::new(Mutex::new(Bucket::new(qps, burst))),
            origin: Instant::now(),
        }
    }

    /// Block until a token is available or `stop` is triggered while waiting for one; returns
    /// true in the second case (the token stays spent: the process is stopping anyway).
    pub fn acquire(&self, stop: Option<&Shutdown>) -> bool {
        let wait = {
            let mut b = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
            b.reserve(self.origin.elapsed().as_secs_f64())
        };
        if wait.is_zero() {
            // A free token is handed out even during shutdown: the Lease release and the
            // in-flight event still go out.
            return false;
        }
        match stop {
            Some(s) => s.wait_timeout(wait),
            None => {
                std::thread::sleep(wait);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(d: Duration) -> u128 {
        d.as_millis()
    }

    #[test]
    fn burst_then_refill_at_qps() {
        let mut b = Bucket::new(5.0, 10);
        for i in 0..10 {
            assert_eq!(
                b.reserve(0.0),
                Duration::ZERO,
                "token {i} is part of the burst"
            );
        }
        // The 11th..13th callers queue 200 ms apart.
        assert_eq!(ms(b.reserve(0.0)), 200);
        assert_eq!(ms(b.reserve(0.0)), 400);
        assert_eq!(ms(b.reserve(0.0)), 600);
        // One second later five tokens were added but three were already promised.
        assert_eq!(ms(b.reserve(1.0)), 0);
        assert_eq!(ms(b.reserve(1.0)), 0);
        assert_eq!(ms(b.reserve(1.0)), 200);
    }

    #[test]
    fn refill_is_capped_at_burst() {
        let mut b = Bucket::new(1.0, 2);
        b.reserve(0.0);
        b.reserve(0.0);
        // An hour idle refills to 2, not 3600.
        assert_eq!(b.reserve(3600.0), Duration::ZERO);
        assert_eq!(b.reserve(3600.0), Duration::ZERO);
        assert_eq!(ms(b.reserve(3600.0)), 1000);
    }

    #[test]
    fn defaults_and_unlimited() {
        let mut d = Bucket::new(0.0, 0);
        for _ in 0..10 {
            assert_eq!(d.reserve(0.0), Duration::ZERO);
        }
        assert_eq!(ms(d.reserve(0.0)), 200);
        let mut u = Bucket::new(-1.0, 1);
        for _ in 0..1000 {
            assert_eq!(u.reserve(0.0), Duration::ZERO);
        }
    }

    #[test]
    fn a_tiny_qps_saturates_instead_of_panicking() {
        let mut b = Bucket::new(1e-20, 10);
        for _ in 0..10 {
            assert_eq!(b.reserve(0.0), Duration::ZERO);
        }
        assert_eq!(b.reserve(0.0), Duration::MAX);
    }

    #[test]
    fn real_limiter_blocks() {
        let l = RateLimiter::new(20.0, 1);
        let start = Instant::now();
        assert!(!l.acquire(None));
        assert!(!l.acquire(None));
        let stop = Shutdown::new();
        assert!(!l.acquire(Some(&stop)));
        assert!(
            start.elapsed() >= Duration::from_millis(95),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn shutdown_ends_a_queued_acquire() {
        // One token, then one per 1000 s: the second caller would sleep for a quarter hour.
        let l = RateLimiter::new(0.001, 1);
        let stop = Shutdown::new();
        assert!(!l.acquire(Some(&stop)), "the burst token is free");
        let (tx, rx) = crossbeam_channel::bounded(1);
        let (l2, stop2) = (l.clone(), stop.clone());
        std::thread::spawn(move || {
            let _ = tx.send(l2.acquire(Some(&stop2)));
        });
        // Still queued: it does not return by itself.
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
        stop.trigger();
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(5)),
            Ok(true),
            "a queued acquire must end on shutdown, saying so"
        );
        // A free token is still handed out after shutdown (the Lease release needs one).
        let free = RateLimiter::new(-1.0, 1);
        assert!(!free.acquire(Some(&stop)));
    }
}
