//! The client-side token bucket behind `--kube-api-qps` / `--kube-api-burst`, with client-go's
//! semantics (`flowcontrol.NewTokenBucketRateLimiter` over `x/time/rate`): the bucket starts
//! full with `burst` tokens, refills at `qps` per second, and a caller that finds it empty
//! reserves the next token and sleeps until it is due (callers queue, none is refused). The
//! sleep ends early on shutdown, so a long queue cannot hold the process after SIGTERM.
//! The bucket itself (`TokenBucket`) is the only one in the process: the Event spam filter
//! (`events::correlator`) uses it too.

use crate::shutdown::Shutdown;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// client-go's defaults when `QPS`/`Burst` are zero (`rest.DefaultQPS`, `rest.DefaultBurst`).
pub const DEFAULT_QPS: f64 = 5.0;
pub const DEFAULT_BURST: u32 = 10;

/// The one token bucket, `x/time/rate`'s arithmetic: `burst` tokens, refilled at `qps` per
/// second, starting full. Two users with client-go's semantics each: the API client's limiter
/// reserves (`ReserveN`: the token count may go negative, later callers queue behind earlier
/// reservations) and the Event spam filter tries (`AllowN`: a token or nothing, a refusal
/// changes nothing). Time is a [`Duration`] since any fixed origin, so the arithmetic is
/// testable without a clock.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenBucket {
    qps: f64,
    burst: f64,
    tokens: f64,
    last: Duration,
}

impl TokenBucket {
    /// A full bucket, as `rate.NewLimiter` makes it (the spam filter's).
    pub fn new(burst: u32, qps: f64) -> TokenBucket {
        TokenBucket {
            qps,
            burst: f64::from(burst),
            tokens: f64::from(burst),
            last: Duration::ZERO,
        }
    }

    /// The API client's bucket, full. `qps < 0` (or infinite) means unlimited, as in
    /// client-go; zeroes take client-go's defaults.
    pub fn for_client(qps: f64, burst: u32) -> TokenBucket {
        let qps = if qps == 0.0 || qps.is_nan() {
            DEFAULT_QPS
        } else {
            qps
        };
        TokenBucket::new(if burst == 0 { DEFAULT_BURST } else { burst }, qps)
    }

    pub fn unlimited(&self) -> bool {
        self.qps < 0.0 || self.qps.is_infinite()
    }

    /// The tokens there would be at `now`, before taking one. A clock that went backwards
    /// refills nothing.
    fn tokens_at(&self, now: Duration) -> f64 {
        let elapsed = now.saturating_sub(self.last);
        // Go's Duration.Seconds(): whole seconds plus the fraction, as float64.
        let secs = elapsed.as_secs() as f64 + f64::from(elapsed.subsec_nanos()) / 1e9;
        (self.tokens + secs * self.qps).min(self.burst)
    }

    /// Take one token at `now` (seconds since the origin); returns how long the caller must
    /// wait for it. The token count may go negative: later callers queue behind earlier
    /// reservations.
    pub fn reserve(&mut self, now: f64) -> Duration {
        if self.unlimited() {
            return Duration::ZERO;
        }
        let now = Duration::try_from_secs_f64(now).unwrap_or(self.last);
        self.tokens = self.tokens_at(now) - 1.0;
        // The limiter's clock is monotonic: `last` never moves back here.
        self.last = self.last.max(now);
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            // `--kube-api-qps` is validated to at least `flags::MIN_KUBE_API_QPS`; saturate
            // anyway, since `from_secs_f64` panics on a wait past `Duration::MAX` (a qps of
            // 1e-20 did that on the first caller after the burst).
            Duration::try_from_secs_f64(-self.tokens / self.qps).unwrap_or(Duration::MAX)
        }
    }

    /// Take one token at wall-clock `now` if there is one (client-go's spam filter:
    /// `TryAccept` = `AllowN(now, 1)`); a refusal leaves the bucket as it was.
    pub fn try_accept(&mut self, now: SystemTime) -> bool {
        let now = now.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        let tokens = self.tokens_at(now) - 1.0;
        // x/time/rate accepts when the wait for the deficit truncates to zero nanoseconds.
        let ok = tokens >= 0.0 || ((-tokens / self.qps) * 1e9) as i64 <= 0;
        if ok {
            self.tokens = tokens;
            self.last = now;
        }
        ok
    }
}

/// A shared limiter; clones share the bucket.
#[derive(Clone)]
pub struct RateLimiter {
    bucket: Arc<Mutex<TokenBucket>>,
    origin: Instant,
}

impl RateLimiter {
    pub fn new(qps: f64, burst: u32) -> RateLimiter {
        RateLimiter {
            bucket: Arc::new(Mutex::new(TokenBucket::for_client(qps, burst))),
            origin: Instant::now(),
        }
    }

    /// Block until a token is available or `stop` is triggered while waiting for one; returns
    /// true in the second case (the token stays spent: the process is stopping anyway).
    pub fn acquire(&self, stop: Option<&Shutdown>) -> bool {
        let wait = {
            let mut b = crate::sync::lock(&self.bucket);
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
        let mut b = TokenBucket::for_client(5.0, 10);
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
        let mut b = TokenBucket::for_client(1.0, 2);
        b.reserve(0.0);
        b.reserve(0.0);
        // An hour idle refills to 2, not 3600.
        assert_eq!(b.reserve(3600.0), Duration::ZERO);
        assert_eq!(b.reserve(3600.0), Duration::ZERO);
        assert_eq!(ms(b.reserve(3600.0)), 1000);
    }

    #[test]
    fn defaults_and_unlimited() {
        let mut d = TokenBucket::for_client(0.0, 0);
        for _ in 0..10 {
            assert_eq!(d.reserve(0.0), Duration::ZERO);
        }
        assert_eq!(ms(d.reserve(0.0)), 200);
        let mut u = TokenBucket::for_client(-1.0, 1);
        for _ in 0..1000 {
            assert_eq!(u.reserve(0.0), Duration::ZERO);
        }
    }

    #[test]
    fn a_tiny_qps_saturates_instead_of_panicking() {
        let mut b = TokenBucket::for_client(1e-20, 10);
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
