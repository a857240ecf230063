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

/// The longest duration a spec may give (renewBefore, defaultLifetime, timeout): a year.
pub const MAX_DURATION: SignedDuration = SignedDuration::from_hours(24 * 366);

/// The shortest time between two renewals of one token, however short its lifetime: a provider
/// answering `expires_in: 1` gets a request every few seconds, not ten a second.
pub const MIN_RENEWAL_INTERVAL: SignedDuration = SignedDuration::from_secs(5);

/// The shortest time between two attempts after a failure.
pub const RETRY_FLOOR: SignedDuration = SignedDuration::from_secs(1);

/// The longest time between two attempts after failures (and the most a `Retry-After` delays
/// one): five minutes, so a fix on the provider's side is noticed soon without hammering it.
pub const RETRY_CAP: SignedDuration = SignedDuration::from_mins(5);

/// `t + d`, saturating at the ends of time instead of panicking.
pub fn add(t: Timestamp, d: SignedDuration) -> Timestamp {
    t.checked_add(d).unwrap_or(if d.is_negative() { Timestamp::MIN } else { Timestamp::MAX })
}

/// `d * f` for a finite, non-negative `f`, saturating instead of panicking.
fn scale(d: SignedDuration, f: f64) -> SignedDuration {
    let f = if f.is_finite() { f.max(0.0) } else { 0.0 };
    SignedDuration::try_from_secs_f64(d.as_secs_f64() * f).unwrap_or(SignedDuration::MAX)
}

/// Drops the fraction of a second: every time the operator writes is whole seconds (RFC 3339
/// without fractions, as Kubernetes writes them), and rounding down never makes a token look
/// valid for longer than it is.
pub fn whole_second(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second()).unwrap_or(t)
}

/// The first whole second at or after `t`.
pub fn ceil_second(t: Timestamp) -> Timestamp {
    let down = whole_second(t);
    if down < t { add(down, SignedDuration::from_secs(1)) } else { down }
}

/// Drops the fraction of a millisecond.
fn whole_millisecond(t: Timestamp) -> Timestamp {
    Timestamp::from_millisecond(t.as_millisecond()).unwrap_or(t)
}

/// Parses a duration such as `90s`, `10m`, `1h30m` or `500ms` (whole numbers, as Gateway API's
/// GEP-2257 durations), of at most [`MAX_DURATION`].
pub fn parse_duration(s: &str) -> Result<SignedDuration, Error> {
    let bad = || Error::InvalidSpec(format!("{s:?} is not a duration such as 90s, 10m or 1h30m"));
    let mut total_ms: i64 = 0;
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let n: i64 = rest[..num_end].parse().map_err(|_| bad())?;
        rest = &rest[num_end..];
        let unit_end = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit_ms: i64 = match &rest[..unit_end] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => return Err(bad()),
        };
        total_ms = n.checked_mul(unit_ms).and_then(|v| total_ms.checked_add(v)).ok_or_else(bad)?;
        rest = &rest[unit_end..];
    }
    let d = SignedDuration::from_millis(total_ms);
    if d > MAX_DURATION {
        return Err(Error::InvalidSpec(format!("{s:?} is longer than a year (8784h)")));
    }
    Ok(d)
}

impl Policy {
    pub fn new(spec: &RenewalSpec, propagation_margin: Duration) -> Result<Self, Error> {
        let margin =
            SignedDuration::try_from(propagation_margin).unwrap_or(SignedDuration::from_mins(2)).min(MAX_DURATION);
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
    /// margin (shrunk to a quarter of the lifetime for short-lived tokens), never earlier than a
    /// hundredth of the lifetime after issue, and never sooner than [`MIN_RENEWAL_INTERVAL`]
    /// after it, whatever the lifetime.
    ///
    /// The time keeps its milliseconds: tokens that fall due in the same second are renewed
    /// spread over it, not all at its start (status announces [`ceil_second`] of it).
    pub fn refresh_at(&self, issued: Timestamp, expires: Timestamp, jitter: f64) -> Timestamp {
        let lifetime = expires.duration_since(issued);
        let earliest = add(issued, MIN_RENEWAL_INTERVAL);
        if lifetime <= SignedDuration::ZERO {
            return whole_second(earliest);
        }
        let mut before = match self.renew_before {
            Some(d) => d,
            None => scale(lifetime, self.renew_before_fraction),
        };
        if before >= lifetime {
            before = scale(lifetime, self.renew_before_fraction);
        }
        let margin = self.propagation_margin.min(lifetime / 4);
        let before = before.max(margin);
        let jittered = before.saturating_add(scale(before, 0.1 * jitter.clamp(0.0, 1.0)));
        let floor = SignedDuration::from_secs(1).max(lifetime / 100).min(lifetime / 2);
        let at = add(expires, -jittered.min(lifetime.saturating_sub(floor)));
        whole_millisecond(at.max(add(issued, floor)).max(earliest))
    }
}

impl Policy {
    /// The renewal of a token that was not itself a scheduled renewal (the first token, one
    /// after a spec or credential change, a manual refresh, recovery from failures): anywhere in
    /// the last three quarters of the time [`Policy::refresh_at`] would keep it, by `jitter`. Tokens
    /// obtained together (a thousand TokenSources created at once, or all of them recovering
    /// from an outage) would otherwise renew together for ever, each cycle one burst; spread
    /// once, they stay spread. It costs at most one earlier renewal per such token.
    pub fn first_refresh_at(&self, issued: Timestamp, expires: Timestamp, jitter: f64) -> Timestamp {
        let (earliest, regular) = self.first_window(issued, expires);
        let span = regular.duration_since(earliest);
        whole_millisecond(add(earliest, scale(span, jitter.clamp(0.0, 1.0))).min(regular))
    }

    /// When to renew a token planned for `planned` (as [`Policy::first_refresh_at`] chose and
    /// the Secret recorded): that time, if it lies in the window that function chooses from,
    /// else the regular time. A planned time from elsewhere can make a renewal neither earlier
    /// nor later than the policy allows.
    pub fn planned_refresh_at(
        &self,
        issued: Timestamp,
        expires: Timestamp,
        jitter: f64,
        planned: Option<Timestamp>,
    ) -> Timestamp {
        let regular = self.refresh_at(issued, expires, jitter);
        let (earliest, latest) = self.first_window(issued, expires);
        match planned {
            Some(p) if p >= earliest && p <= latest => p,
            _ => regular,
        }
    }

    /// The window a first renewal is chosen from: the last three quarters of the time the token
    /// would be kept, never sooner than [`MIN_RENEWAL_INTERVAL`] after issue. Wide, because
    /// TokenSources created together are created over as long as the API server takes to write
    /// them (20 s for 10,000 on a small cluster): a window narrower than that burst leaves the
    /// burst's rate in every later cycle.
    pub fn first_window(&self, issued: Timestamp, expires: Timestamp) -> (Timestamp, Timestamp) {
        let regular = self.refresh_at(issued, expires, 0.0);
        let quarter = add(issued, regular.duration_since(issued) / 4);
        let earliest = quarter.max(add(issued, MIN_RENEWAL_INTERVAL)).min(regular);
        (earliest, regular)
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

/// When to try again after `failures` consecutive failures (this one included). The delay
/// doubles from a base (2 s for transient failures, 30 s for rejections) up to [`RETRY_CAP`],
/// with jitter in `[0, 1)` spreading it over its upper half, and is never shorter than a
/// server's `Retry-After` (itself capped at [`RETRY_CAP`]). While a still-valid token exists the
/// retry comes at the latest halfway to its expiry, so attempts grow closer smoothly as expiry
/// nears instead of bunching up; and no two attempts are closer than [`RETRY_FLOOR`].
pub fn retry_at(
    now: Timestamp,
    failures: u32,
    class: RetryClass,
    retry_after: Option<Duration>,
    valid_until: Option<Timestamp>,
    jitter: f64,
) -> Timestamp {
    let base = match class {
        RetryClass::Transient => SignedDuration::from_secs(2),
        RetryClass::Rejected => SignedDuration::from_secs(30),
    };
    let doublings = failures.saturating_sub(1).min(16);
    let exp = base.checked_mul(1 << doublings).unwrap_or(RETRY_CAP).min(RETRY_CAP);
    let mut delay = scale(exp, 0.5 + 0.5 * jitter.clamp(0.0, 1.0));
    if let Some(ra) = retry_after {
        let ra = SignedDuration::try_from(ra).unwrap_or(RETRY_CAP).min(RETRY_CAP);
        delay = delay.max(ra);
    }
    let mut at = add(now, delay);
    if let Some(until) = valid_until.filter(|u| *u > now) {
        at = at.min(add(now, until.duration_since(now) / 2));
    }
    let at = at.max(add(now, RETRY_FLOOR));
    // Whole seconds, rounded up so the floor holds.
    ceil_second(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    fn policy(renew_before: Option<&str>, percentage: i32) -> Policy {
        let spec = RenewalSpec {
            renew_before: renew_before.map(String::from),
            renew_before_percentage: percentage,
            share_identical_requests: true,
        };
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
        assert!(parse_duration("1.5h").is_err(), "whole numbers, as the CRD's pattern says");
        assert!(parse_duration("8784h").is_ok());
        assert!(parse_duration("8785h").is_err(), "at most a year");
        assert!(parse_duration("99999999999999999999h").is_err(), "no overflow");
        assert!(parse_duration("99999h99999h99999h99999h").is_err());
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
    fn a_first_renewal_is_spread_over_the_second_half_and_kept_within_it() {
        let p = Policy::new(&RenewalSpec::default(), Duration::from_secs(120)).unwrap();
        // A 10-hour token is kept until 6h42m at most; a first renewal falls from 1h40m30s on.
        assert_eq!(p.first_refresh_at(ts(0), ts(36_000), 0.0), ts(6_030));
        assert_eq!(p.first_refresh_at(ts(0), ts(36_000), 0.5), ts(15_075));
        assert!(p.first_refresh_at(ts(0), ts(36_000), 0.999_999) <= ts(24_120));
        // A planned time inside that window holds; one outside it (an edited annotation) does not.
        let regular = p.refresh_at(ts(0), ts(36_000), 0.3);
        assert_eq!(p.planned_refresh_at(ts(0), ts(36_000), 0.3, Some(ts(15_000))), ts(15_000));
        assert_eq!(p.planned_refresh_at(ts(0), ts(36_000), 0.3, Some(ts(6_000))), regular, "too early");
        assert_eq!(p.planned_refresh_at(ts(0), ts(36_000), 0.3, Some(ts(30_000))), regular, "too late");
        assert_eq!(p.planned_refresh_at(ts(0), ts(36_000), 0.3, None), regular);
        // Short tokens: never sooner than the minimum interval after issue.
        assert_eq!(p.first_refresh_at(ts(0), ts(8), 0.0), ts(5));
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
    fn a_token_of_a_second_is_renewed_every_five_seconds_at_most() {
        let p = policy(None, 33);
        assert_eq!(p.refresh_at(ts(0), ts(1), 0.5), ts(5));
        assert_eq!(p.refresh_at(ts(0), ts(0), 0.5), ts(5));
        assert_eq!(p.refresh_at(ts(0), ts(-100), 0.5), ts(5), "an expiry before issue is not a reason to hurry");
    }

    #[test]
    fn extreme_inputs_do_not_panic() {
        let p = policy(Some("8784h"), 99);
        let _ = p.refresh_at(Timestamp::MIN, Timestamp::MAX, 1.0);
        let _ = p.refresh_at(Timestamp::MAX, Timestamp::MIN, 1.0);
        let _ = p.refresh_at(Timestamp::MAX, Timestamp::MAX, f64::NAN);
        let _ =
            retry_at(Timestamp::MAX, u32::MAX, RetryClass::Rejected, Some(Duration::MAX), Some(Timestamp::MAX), 1.0);
        let _ = retry_at(Timestamp::MIN, 0, RetryClass::Transient, None, Some(Timestamp::MIN), f64::INFINITY);
    }

    #[test]
    fn never_renews_immediately() {
        let p = policy(None, 99);
        let at = p.refresh_at(ts(0), ts(100), 0.9);
        assert!(at >= ts(5), "{at}");
    }

    #[test]
    fn rejects_bad_settings() {
        let spec = RenewalSpec {
            renew_before: Some("soon".into()),
            renew_before_percentage: 33,
            share_identical_requests: true,
        };
        assert!(Policy::new(&spec, Duration::from_secs(1)).is_err());
        let spec = RenewalSpec { renew_before: None, renew_before_percentage: 100, share_identical_requests: true };
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
        // With 10s of validity left, a 300s backoff is cut to halfway to expiry.
        assert_eq!(retry_at(now, 30, RetryClass::Transient, None, Some(ts(10)), 1.0), ts(5));
        // Just before expiry the floor holds: the next attempt comes a second later, not at once.
        let just_before = Timestamp::from_millisecond(ts(0).as_millisecond() + 200).unwrap();
        assert_eq!(retry_at(ts(0), 5, RetryClass::Rejected, None, Some(just_before), 0.0), ts(1));
        // A Retry-After of 31,000 years is capped at five minutes instead of overflowing.
        let huge = Some(Duration::from_secs(999_999_999_999));
        assert_eq!(retry_at(now, 1, RetryClass::Transient, huge, None, 0.0), ts(300));
        assert_eq!(retry_at(now, 1, RetryClass::Rejected, Some(Duration::MAX), Some(ts(100)), 0.0), ts(50));
        // Rejections back off to five minutes, not more: a fix at the provider is noticed soon.
        assert_eq!(retry_at(now, 40, RetryClass::Rejected, None, None, 1.0), ts(300));
    }
}

/// Properties of the schedule over any lifetime, failure sequence, `Retry-After` and jitter.
#[cfg(test)]
mod properties_256_cases {
    use proptest::prelude::*;

    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn class() -> impl Strategy<Value = RetryClass> {
        prop_oneof![Just(RetryClass::Transient), Just(RetryClass::Rejected)]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Attempts after failures: never two closer than a second, never one past the expiry of a
        /// valid token (unless expiry is under two seconds away), never more than five minutes
        /// apart once the token is gone, whatever the provider says.
        #[test]
        fn failed_attempts_are_spaced_and_bounded(
            lifetime in 1i64..400_000,
            retry_afters in proptest::collection::vec(proptest::option::of(0u64..u64::MAX), 1..40),
            classes in proptest::collection::vec(class(), 1..40),
            jitters in proptest::collection::vec(0.0f64..1.0, 1..40),
        ) {
            let expires = t(lifetime);
            let mut now = t(0);
            for (i, ((ra, class), jitter)) in retry_afters.iter().zip(&classes).zip(&jitters).enumerate() {
                let valid = (now < expires).then_some(expires);
                let next = retry_at(now, i as u32 + 1, *class, ra.map(Duration::from_secs), valid, *jitter);
                let gap = next.duration_since(now);
                prop_assert!(gap >= RETRY_FLOOR, "attempts {gap} apart");
                prop_assert!(gap <= RETRY_CAP + SignedDuration::from_secs(1), "attempts {gap} apart");
                if let Some(e) = valid && e.duration_since(now) >= SignedDuration::from_secs(2) {
                    prop_assert!(next <= e, "a retry at {next} after the token's expiry at {e}");
                }
                now = next;
            }
        }

        /// Renewal times: never before the minimum interval, never after expiry for lifetimes
        /// long enough to allow it, and no panic for any input.
        #[test]
        fn renewals_are_before_expiry_and_not_too_often(
            lifetime in -10i64..(366 * 86_400 * 5),
            percentage in 1i32..100,
            renew_before in proptest::option::of(1i64..(366 * 86_400)),
            margin in 0u64..10_000,
            jitter in proptest::num::f64::ANY,
        ) {
            let spec = RenewalSpec { renew_before: renew_before.map(|s| format!("{s}s")), renew_before_percentage: percentage, share_identical_requests: true };
            let policy = Policy::new(&spec, Duration::from_secs(margin)).unwrap();
            let at = policy.refresh_at(t(0), t(lifetime), jitter);
            prop_assert!(at >= t(5), "renewal at {at}");
            if lifetime >= 10 {
                prop_assert!(at < t(lifetime), "renewal at {at}, expiry at {}", t(lifetime));
            }
        }

        /// Durations: any text parses or is refused, never panics; what parses is at most a year.
        #[test]
        fn durations_parse_or_are_refused(s in "\\PC{0,40}", n in 0u64..u64::MAX, unit in "(ms|s|m|h)") {
            for input in [s, format!("{n}{unit}"), format!("{n}{unit}{n}{unit}")] {
                if let Ok(d) = parse_duration(&input) {
                    prop_assert!(d <= MAX_DURATION && d >= SignedDuration::ZERO);
                }
            }
        }
    }
}
