//! Pure timing decisions: when a token should be renewed, and when a failed attempt is retried.
//! Nothing here reads a clock or a random source; callers pass `now` and a jitter in `[0, 1)`.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use sha2::{Digest, Sha256};

use crate::crd::RenewalSpec;
use crate::error::{Error, RetryClass};

/// How the renewal time of a token is chosen.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// Renew this long before expiry.
    pub renew_before: Option<SignedDuration>,
    /// Renew when this fraction of the lifetime is left, unless `renew_before` is set.
    pub renew_before_fraction: f64,
    /// Finish this long before expiry at the latest, so the kubelet can propagate the new token
    /// into mounted volumes (it syncs them about once a minute).
    pub propagation_margin: SignedDuration,
}

/// Drops the fraction of a second: every time the operator writes is whole seconds (RFC 3339
/// without fractions, as Kubernetes writes them), and rounding down never makes a token look
/// valid for longer than it is.
pub fn whole_second(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second()).unwrap_or(t)
}

/// Parses a duration such as `90s`, `10m` or `1h30m`.
pub fn parse_duration(s: &str) -> Result<SignedDuration, Error> {
    let bad = || Error::InvalidSpec(format!("{s:?} is not a duration such as 90s, 10m or 1h30m"));
    let mut total = 0f64;
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
        let n: f64 = rest[..num_end].parse().map_err(|_| bad())?;
        rest = &rest[num_end..];
        let unit_end = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit = match &rest[..unit_end] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += n * unit;
        rest = &rest[unit_end..];
    }
    Ok(SignedDuration::from_secs_f64(total))
}

impl Policy {
    pub fn new(spec: &RenewalSpec, propagation_margin: Duration) -> Result<Self, Error> {
        let margin = SignedDuration::try_from(propagation_margin).unwrap_or(SignedDuration::from_mins(2));
        let renew_before = spec.renew_before.as_deref().map(parse_duration).transpose()?;
        if renew_before.is_some_and(|d| d <= SignedDuration::ZERO) {
            return Err(Error::InvalidSpec("renewal.renewBefore must be positive".into()));
        }
        if !(1..=99).contains(&spec.renew_before_percentage) {
            return Err(Error::InvalidSpec("renewal.renewBeforePercentage must be between 1 and 99".into()));
        }
        let fraction = f64::from(spec.renew_before_percentage) / 100.0;
        Ok(Self { renew_before, renew_before_fraction: fraction, propagation_margin: margin })
    }

    /// When to renew a token issued at `issued` that expires at `expires`. `jitter` in `[0, 1)`
    /// moves the time earlier by up to a tenth of the renewal window, so tokens issued together
    /// do not all renew together. The result is never later than expiry minus the propagation
    /// margin (shrunk to a quarter of the lifetime for short-lived tokens) and never earlier than
    /// a small fraction of the lifetime after issue.
    pub fn refresh_at(&self, issued: Timestamp, expires: Timestamp, jitter: f64) -> Timestamp {
        let lifetime = expires.duration_since(issued);
        if lifetime <= SignedDuration::ZERO {
            return issued;
        }
        let mut before = match self.renew_before {
            Some(d) => d,
            None => lifetime.mul_f64(self.renew_before_fraction),
        };
        if before >= lifetime {
            before = lifetime.mul_f64(self.renew_before_fraction);
        }
        let margin = self.propagation_margin.min(lifetime / 4);
        let before = before.max(margin);
        let jittered = before + before.mul_f64(0.1 * jitter.clamp(0.0, 1.0));
        let floor = SignedDuration::from_secs(1).max(lifetime / 100).min(lifetime / 2);
        let at = expires - jittered.min(lifetime - floor);
        whole_second(at.max(issued + floor))
    }
}

/// A jitter in `[0, 1)` fixed for one token of one TokenSource, so every reconcile computes the
/// same renewal time for it while tokens issued together still spread out.
pub fn jitter_for(uid: &str, issued: Timestamp) -> f64 {
    let mut h = Sha256::new();
    h.update(uid.as_bytes());
    h.update(issued.as_millisecond().to_be_bytes());
    let d = h.finalize();
    let n = u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]);
    (n >> 11) as f64 / (1u64 << 53) as f64
}

/// When to try again after `failures` consecutive failures. The delay doubles from a base to a
/// cap, with jitter in `[0, 1)` spreading it over its upper half; a server's `Retry-After` is a
/// floor; and while a still-valid token exists, the retry never sleeps past its expiry.
pub fn retry_at(
    now: Timestamp,
    failures: u32,
    class: RetryClass,
    retry_after: Option<Duration>,
    valid_until: Option<Timestamp>,
    jitter: f64,
) -> Timestamp {
    let (base, cap) = match class {
        RetryClass::Transient => (2.0, 300.0),
        RetryClass::Rejected => (30.0, 1800.0),
    };
    let exp = base * 2f64.powi(failures.saturating_sub(1).min(20) as i32);
    let delay = exp.min(cap);
    let delay = delay * (0.5 + 0.5 * jitter.clamp(0.0, 1.0));
    let mut delay = SignedDuration::from_secs_f64(delay);
    if let Some(ra) = retry_after.and_then(|d| SignedDuration::try_from(d).ok()) {
        delay = delay.max(ra);
    }
    let mut at = now + delay;
    if let Some(until) = valid_until.filter(|u| *u > now) {
        // Spend the remaining validity on retries: never sleep past expiry.
        let remaining = until.duration_since(now);
        let latest = now + (remaining - SignedDuration::from_secs(1)).max(remaining / 2);
        at = at.min(latest);
    }
    whole_second(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    fn policy(renew_before: Option<&str>, percentage: i32) -> Policy {
        let spec = RenewalSpec { renew_before: renew_before.map(String::from), renew_before_percentage: percentage };
        Policy::new(&spec, Duration::from_secs(120)).unwrap()
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").ok(), Some(SignedDuration::from_secs(90)));
        assert_eq!(parse_duration("1h30m").ok(), Some(SignedDuration::from_mins(90)));
        assert_eq!(parse_duration("250ms").ok(), Some(SignedDuration::from_millis(250)));
        assert!(parse_duration("10 minutes").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("5").is_err());
    }

    #[test]
    fn default_renews_with_a_third_left() {
        let p = Policy::new(&RenewalSpec::default(), Duration::from_secs(120)).unwrap();
        // A 10-hour Podero token renews with 33 % left (at 6h42m), a tenth of that window
        // earlier at most.
        assert_eq!(p.refresh_at(ts(0), ts(36_000), 0.0), ts(24_120));
        assert_eq!(p.refresh_at(ts(0), ts(36_000), 0.5), ts(23_526));
    }

    #[test]
    fn renew_before_and_percentage() {
        assert_eq!(policy(Some("10m"), 33).refresh_at(ts(0), ts(3600), 0.0), ts(3000), "renewBefore wins");
        assert_eq!(policy(None, 50).refresh_at(ts(0), ts(3600), 0.0), ts(1800));
        // renewBefore longer than the lifetime falls back to the percentage.
        assert_eq!(policy(Some("2h"), 25).refresh_at(ts(0), ts(3600), 0.0), ts(2700));
    }

    #[test]
    fn propagation_margin_bounds_the_refresh() {
        // renewBefore of 30s is less than the 2-minute propagation margin: the margin wins.
        assert_eq!(policy(Some("30s"), 33).refresh_at(ts(0), ts(3600), 0.0), ts(3480));
        // For a 10-second token the margin shrinks to a quarter of the lifetime.
        let at = policy(Some("1s"), 33).refresh_at(ts(0), ts(10), 0.0);
        assert!(at <= ts(10) - SignedDuration::from_millis(2500), "{at}");
        assert!(at > ts(0));
    }

    #[test]
    fn never_renews_immediately() {
        let p = policy(None, 99);
        let at = p.refresh_at(ts(0), ts(100), 0.9);
        assert!(at >= ts(1), "{at}");
        assert!(p.refresh_at(ts(0), ts(0), 0.0) == ts(0));
    }

    #[test]
    fn rejects_bad_settings() {
        let spec = RenewalSpec { renew_before: Some("soon".into()), renew_before_percentage: 33 };
        assert!(Policy::new(&spec, Duration::from_secs(1)).is_err());
        let spec = RenewalSpec { renew_before: None, renew_before_percentage: 100 };
        assert!(Policy::new(&spec, Duration::from_secs(1)).is_err());
    }

    #[test]
    fn retries_back_off_and_respect_expiry() {
        let now = ts(0);
        assert_eq!(retry_at(now, 1, RetryClass::Transient, None, None, 1.0), ts(2));
        assert_eq!(retry_at(now, 3, RetryClass::Transient, None, None, 1.0), ts(8));
        assert_eq!(retry_at(now, 30, RetryClass::Transient, None, None, 1.0), ts(300));
        assert_eq!(retry_at(now, 1, RetryClass::Transient, None, None, 0.0), ts(1));
        assert_eq!(retry_at(now, 1, RetryClass::Rejected, None, None, 1.0), ts(30));
        assert_eq!(retry_at(now, 1, RetryClass::Transient, Some(Duration::from_secs(20)), None, 1.0), ts(20));
        // With 10s of validity left, a 300s backoff is cut to just before expiry.
        assert_eq!(retry_at(now, 30, RetryClass::Transient, None, Some(ts(10)), 1.0), ts(9));
    }
}
