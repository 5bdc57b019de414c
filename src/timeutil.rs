//! Wall-clock formatting and parsing in the two shapes the Kubernetes API uses (`Time`, whole
//! seconds, and `MicroTime`, six fractional digits), a clock seam for tests, and a small
//! non-cryptographic random source for jitter.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// `now + d` without overflowing `Instant` (which panics): waits are capped at a century, which
/// is "never" for any process. For durations a server or a file supplied.
pub fn saturating_deadline(now: Instant, d: Duration) -> Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 86_400);
    // A century always fits (Instant is seconds in an i64 on every platform we build for);
    // `now` is only the unreachable fallback.
    now.checked_add(d.min(CENTURY)).unwrap_or(now)
}

/// Source of wall-clock time and sleeps; tests substitute a manual clock.
pub trait Clock: Send + Sync {
    fn now(&self) -> SystemTime;
}

/// The real clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

fn split(t: SystemTime) -> (i64, u32) {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            let secs = -(d.as_secs() as i64);
            if d.subsec_nanos() == 0 {
                (secs, 0)
            } else {
                (secs - 1, 1_000_000_000 - d.subsec_nanos())
            }
        }
    }
}

// Howard Hinnant's days-from-civil algorithms: exact for the proleptic Gregorian calendar.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn fields(t: SystemTime) -> (i64, u32, u32, u32, u32, u32, u32) {
    let (secs, nanos) = split(t);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400) as u32;
    let (y, mo, d) = civil_from_days(days);
    (y, mo, d, rem / 3600, rem / 60 % 60, rem % 60, nanos)
}

/// `metav1.Time`: `2026-01-02T03:04:05Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let (y, mo, d, h, mi, s, _) = fields(t);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

/// `metav1.MicroTime`: `2026-01-02T03:04:05.123456Z` (always six digits; the API server rejects
/// a MicroTime without a fraction).
pub fn rfc3339_micros(t: SystemTime) -> String {
    let (y, mo, d, h, mi, s, n) = fields(t);
    format!(
        "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{:06}Z",
        n / 1000
    )
}

/// Parse RFC 3339 as the API server writes it (`Z` or a numeric offset, optional fraction).
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !(b[10] == b'T' || b[10] == b't') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> { s.get(r)?.parse().ok() };
    let (y, mo, d) = (num(0..4)? as i64, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if b[13] != b':' || b[16] != b':' || !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return None;
    }
    if h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut nanos: u32 = 0;
    if b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let frac = &s[start..i];
        if frac.is_empty() {
            return None;
        }
        let digits: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
        nanos = digits.parse().ok()?;
    }
    let offset: i64 = match s.get(i..)? {
        "Z" | "z" => 0,
        rest if rest.len() == 6 && (rest.starts_with('+') || rest.starts_with('-')) => {
            let oh: i64 = rest.get(1..3)?.parse().ok()?;
            let om: i64 = rest.get(4..6)?.parse().ok()?;
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            sign * (oh * 3600 + om * 60)
        }
        _ => return None,
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + (h * 3600 + mi * 60 + sec) as i64 - offset;
    if secs >= 0 {
        Some(UNIX_EPOCH + Duration::new(secs as u64, nanos))
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_secs((-secs) as u64))?
            .checked_add(Duration::from_nanos(nanos as u64))
    }
}

/// Nanoseconds since the Unix epoch (event names use its lowercase hex).
pub fn unix_nanos(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

static SEED: AtomicU64 = AtomicU64::new(0);

/// A uniformly distributed u64 from a splitmix64 stream seeded from the clock. Only for jitter:
/// not for anything that needs to be unpredictable.
pub fn random_u64() -> u64 {
    let mut s = SEED.load(Ordering::Relaxed);
    if s == 0 {
        s = (unix_nanos(SystemTime::now()) as u64) ^ ((std::process::id() as u64) << 32) | 1;
    }
    let next = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
    SEED.store(next, Ordering::Relaxed);
    let mut z = next;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Uniform in [0, 1).
pub fn random_f64() -> f64 {
    (random_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// `d` scaled by a uniform factor in [1, 1 + factor): client-go's `wait.Jitter`.
pub fn jitter(d: Duration, factor: f64) -> Duration {
    d.mul_f64(1.0 + factor * random_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses_round_trip() {
        let t = UNIX_EPOCH + Duration::new(1_767_323_045, 123_456_789);
        assert_eq!(rfc3339(t), "2026-01-02T03:04:05Z");
        assert_eq!(rfc3339_micros(t), "2026-01-02T03:04:05.123456Z");
        assert_eq!(
            parse_rfc3339("2026-01-02T03:04:05.123456Z"),
            Some(UNIX_EPOCH + Duration::new(1_767_323_045, 123_456_000))
        );
        assert_eq!(
            parse_rfc3339("2026-01-02T03:04:05Z"),
            Some(UNIX_EPOCH + Duration::from_secs(1_767_323_045))
        );
        assert_eq!(
            parse_rfc3339("2026-01-02T04:04:05+01:00"),
            Some(UNIX_EPOCH + Duration::from_secs(1_767_323_045))
        );
    }

    #[test]
    fn rejects_garbage() {
        for s in [
            "",
            "2026-01-02",
            "2026-13-02T03:04:05Z",
            "2026-01-02T03:04:05",
            "2026-01-02T03:04:05.Z",
            "x026-01-02T03:04:05Z",
        ] {
            assert_eq!(parse_rfc3339(s), None, "{s}");
        }
    }

    #[test]
    fn leap_day_and_epoch() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = parse_rfc3339("2024-02-29T23:59:59Z").unwrap();
        assert_eq!(rfc3339(t), "2024-02-29T23:59:59Z");
    }

    #[test]
    fn jitter_stays_in_range() {
        for _ in 0..1000 {
            let j = jitter(Duration::from_secs(10), 0.2);
            assert!(j >= Duration::from_secs(10) && j < Duration::from_secs(12));
        }
    }
}
