//! How many token requests one host is sent at once: a limit that adapts to how the host
//! answers, between a floor and a ceiling, as TCP's congestion control does. It starts at the
//! floor and doubles every round trip (slow start) until the host first throttles, fails, times
//! out or answers slower than when idle; from then on it grows by one request a second while the
//! host answers in about its idle time (additive increase, paced by the clock rather than by
//! round trips: rate limits count requests per second, and a host answering in 20 ms would
//! otherwise be pushed past its limit fifty times a second), shrinks by a tenth
//! when answers queue, and halves when the host throttles, fails or times out (multiplicative
//! decrease). A `Retry-After` in a throttling answer holds back every new
//! request to the host for that long (at most [`MAX_HOLD`]). With the floor equal to the ceiling
//! the limit is fixed.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The longest a host's `Retry-After` holds back every request to it: one client's rate limit
/// (the provider's reply is about the request's client) must not stop the host's other
/// clients, of other tenants, for long. The TokenSource that was told waits the whole time; a
/// host that keeps throttling is held again by the next answer, and its limit stays at the floor.
pub const MAX_HOLD: Duration = Duration::from_secs(10);

/// The floor and ceiling of one host's limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    pub floor: usize,
    pub ceiling: usize,
}

impl Bounds {
    /// Bounds with `ceiling` at least 1 and `floor` between 1 and `ceiling` (a ceiling under the
    /// floor makes a fixed limit of that ceiling).
    pub fn new(floor: usize, ceiling: usize) -> Self {
        let ceiling = ceiling.max(1);
        Self { floor: floor.clamp(1, ceiling), ceiling }
    }
}

/// The ceilings of hosts' limits: one for every host, and any given for a host by name
/// (`auth.example.com=32`) or by name and port (`auth.example.com:8443=32`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ceilings {
    pub default: usize,
    pub hosts: std::collections::HashMap<String, usize>,
}

impl Default for Ceilings {
    fn default() -> Self {
        Self { default: DEFAULT_CEILING, hosts: Default::default() }
    }
}

/// The ceiling of a host's limit unless a flag says otherwise.
pub const DEFAULT_CEILING: usize = 32;

impl Ceilings {
    /// Parses a comma-separated list of `N` (every host) and `HOST=N` or `HOST:PORT=N`.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let mut out = Self::default();
        for item in raw.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let number = |n: &str| {
                n.trim()
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("{item:?}: the number of requests must be a whole number of at least 1"))
            };
            match item.split_once('=') {
                None => out.default = number(item)?,
                Some((host, n)) => {
                    let host = host.trim().to_ascii_lowercase();
                    if host.is_empty() || host.contains('/') {
                        return Err(format!("{item:?}: expected HOST=N or HOST:PORT=N"));
                    }
                    out.hosts.insert(host, number(n)?);
                }
            }
        }
        Ok(out)
    }

    /// The ceiling for the host `name` at `port`.
    pub fn of(&self, name: &str, port: u16) -> usize {
        let name = name.to_ascii_lowercase();
        self.hosts.get(&format!("{name}:{port}")).or_else(|| self.hosts.get(&name)).copied().unwrap_or(self.default)
    }
}

/// How a host answered one request, as far as its limit cares.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Answer {
    /// A 2xx answer, after this long.
    Fine(Duration),
    /// Throttled (429), unavailable (503 and other 5xx), timed out or unreachable: too much, or
    /// a host in trouble. `Retry-After`, if it said.
    Overloaded(Option<Duration>),
    /// Anything else (a refusal of the request itself): says nothing about the host's load.
    Neutral,
}

/// One host's limit and what is in flight to it.
#[derive(Debug)]
pub struct HostLimit {
    bounds: Bounds,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    limit: f64,
    in_flight: usize,
    /// The shortest answer time seen lately: what the host takes when it is not queueing.
    best: Option<Duration>,
    /// No new request before this (the host's `Retry-After`).
    hold_until: Option<Instant>,
    throttled: u64,
    /// A request found the limit reached since there was last room to spare: the limit is what
    /// holds requests back, so it may grow.
    wanted: bool,
    /// No sign of the host's capacity yet: the limit doubles every round trip.
    slow_start: bool,
    /// When the limit last grew after slow start.
    last_step: Option<Instant>,
}

/// How often the limit may grow by one after slow start.
const STEP_EVERY: Duration = Duration::from_secs(1);

/// What a host's limit shows, for metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub limit: usize,
    pub in_flight: usize,
    pub throttled: u64,
    pub held: bool,
}

/// A request in flight to a host: holds one unit of its limit until it is dropped.
#[derive(Debug)]
pub struct Permit {
    host: Arc<HostLimit>,
}

impl HostLimit {
    pub fn new(bounds: Bounds) -> Arc<Self> {
        Arc::new(Self {
            bounds,
            state: Mutex::new(State {
                limit: bounds.floor as f64,
                in_flight: 0,
                best: None,
                hold_until: None,
                throttled: 0,
                wanted: false,
                slow_start: true,
                last_step: None,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A permit if the host may be sent another request now.
    pub fn try_acquire(self: &Arc<Self>, now: Instant) -> Option<Permit> {
        let mut s = self.lock();
        if s.hold_until.is_some_and(|until| now < until) {
            return None;
        }
        s.hold_until = None;
        let limit = s.limit.floor() as usize;
        if s.in_flight >= limit {
            s.wanted = true;
            return None;
        }
        s.in_flight += 1;
        if s.in_flight < limit {
            s.wanted = false;
        }
        Some(Permit { host: self.clone() })
    }

    /// How many more requests may be sent now (0 while held), and until when it is held.
    pub fn free(&self, now: Instant) -> (usize, Option<Instant>) {
        let s = self.lock();
        match s.hold_until.filter(|until| now < *until) {
            Some(until) => (0, Some(until)),
            None => ((s.limit.floor() as usize).saturating_sub(s.in_flight), None),
        }
    }

    pub fn snapshot(&self, now: Instant) -> Snapshot {
        let s = self.lock();
        Snapshot {
            limit: s.limit.floor() as usize,
            in_flight: s.in_flight,
            throttled: s.throttled,
            held: s.hold_until.is_some_and(|until| now < until),
        }
    }

    /// Nothing in flight: the entry may be forgotten.
    pub fn idle(&self) -> bool {
        self.lock().in_flight == 0
    }

    fn learn(&self, answer: Answer, now: Instant) {
        let (floor, ceiling) = (self.bounds.floor as f64, self.bounds.ceiling as f64);
        let mut s = self.lock();
        match answer {
            Answer::Fine(took) => {
                let best = s.best.map_or(took, |b| b.min(took));
                // The baseline creeps up slowly, so a host that got slower for good is not taken
                // for a host that queues forever.
                s.best = Some(best + best / 64);
                // Answered about as fast as when idle, while the limit was in use: one more.
                let queueing = took > best * 2 + Duration::from_millis(50);
                if queueing {
                    s.slow_start = false;
                    s.last_step = Some(now);
                    s.limit = (s.limit * 0.9).max(floor);
                } else if s.wanted || s.in_flight >= s.limit.floor() as usize {
                    if s.slow_start {
                        s.limit = (s.limit + 1.0).min(ceiling);
                    } else if s.last_step.is_none_or(|at| now.duration_since(at) >= STEP_EVERY) {
                        s.limit = (s.limit.floor() + 1.0).min(ceiling);
                        s.last_step = Some(now);
                    }
                }
            }
            Answer::Overloaded(retry_after) => {
                s.slow_start = false;
                s.last_step = Some(now);
                s.throttled += 1;
                s.limit = (s.limit / 2.0).max(floor);
                if let Some(wait) = retry_after {
                    let until = now + wait.min(MAX_HOLD);
                    s.hold_until = Some(s.hold_until.map_or(until, |h| h.max(until)));
                }
            }
            Answer::Neutral => {}
        }
    }
}

impl Permit {
    /// Ends the request with how the host answered, and gives the permit back.
    pub fn finish(self, answer: Answer, now: Instant) {
        self.host.learn(answer, now);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut s = self.host.lock();
        s.in_flight = s.in_flight.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Sends requests as fast as the limit lets, each answered with `answer`, `rounds` times;
    /// returns the limit after.
    fn run(host: &Arc<HostLimit>, rounds: usize, answer: Answer, now: Instant) -> usize {
        for _ in 0..rounds {
            let mut permits = vec![];
            while let Some(p) = host.try_acquire(now) {
                permits.push(p);
            }
            for p in permits {
                p.finish(answer, now);
            }
        }
        host.snapshot(now).limit
    }

    #[test]
    fn the_limit_starts_at_the_floor_and_doubles_per_round_trip_to_the_ceiling() {
        let now = Instant::now();
        let host = HostLimit::new(Bounds::new(4, 64));
        assert_eq!(host.snapshot(now).limit, 4);
        assert_eq!(run(&host, 1, Answer::Fine(100 * MS), now), 8);
        assert_eq!(run(&host, 2, Answer::Fine(100 * MS), now), 32);
        assert_eq!(run(&host, 2, Answer::Fine(100 * MS), now), 64, "the ceiling");
    }

    #[test]
    fn after_the_first_sign_of_trouble_the_limit_grows_by_one_a_second() {
        let now = Instant::now();
        let host = HostLimit::new(Bounds::new(4, 64));
        run(&host, 2, Answer::Fine(100 * MS), now);
        host.try_acquire(now).unwrap().finish(Answer::Overloaded(None), now);
        assert_eq!(host.snapshot(now).limit, 8, "halved");
        assert_eq!(run(&host, 10, Answer::Fine(100 * MS), now), 8, "not within the second");
        let mut at = now;
        for _ in 0..10 {
            at += Duration::from_millis(500);
            run(&host, 5, Answer::Fine(100 * MS), at);
        }
        assert_eq!(host.snapshot(at).limit, 13, "five seconds: five more");
    }

    #[test]
    fn throttling_halves_the_limit_down_to_the_floor_and_holds_the_host() {
        let now = Instant::now();
        let host = HostLimit::new(Bounds::new(4, 64));
        run(&host, 200, Answer::Fine(100 * MS), now);
        let p = host.try_acquire(now).unwrap();
        p.finish(Answer::Overloaded(None), now);
        assert_eq!(host.snapshot(now).limit, 32);
        for _ in 0..10 {
            host.try_acquire(now).unwrap().finish(Answer::Overloaded(None), now);
        }
        assert_eq!(host.snapshot(now).limit, 4, "never below the floor");
        host.try_acquire(now).unwrap().finish(Answer::Overloaded(Some(Duration::from_secs(10))), now);
        assert!(host.try_acquire(now).is_none(), "held by Retry-After");
        assert_eq!(host.free(now), (0, Some(now + Duration::from_secs(10))));
        assert!(host.try_acquire(now + Duration::from_secs(10)).is_some(), "until then");
        host.try_acquire(now).unwrap().finish(Answer::Overloaded(Some(Duration::from_secs(3))), now);
        assert_eq!(host.free(now).1, Some(now + Duration::from_secs(3)));
        let later = now + Duration::from_secs(20);
        host.try_acquire(later).unwrap().finish(Answer::Overloaded(Some(Duration::from_secs(86_400))), later);
        assert_eq!(host.free(later).1, Some(later + MAX_HOLD), "a day's Retry-After holds the host ten seconds");
        assert_eq!(host.snapshot(later).throttled, 14);
    }

    #[test]
    fn answers_that_queue_shrink_the_limit_and_refusals_change_nothing() {
        let now = Instant::now();
        let host = HostLimit::new(Bounds::new(2, 64));
        run(&host, 30, Answer::Fine(20 * MS), now);
        let grown = host.snapshot(now).limit;
        assert!(grown > 8, "{grown}");
        let after = run(&host, 5, Answer::Fine(500 * MS), now);
        assert!(after < grown, "{after} after slow answers, from {grown}");
        assert_eq!(run(&host, 5, Answer::Neutral, now), after);
    }

    #[test]
    fn a_fixed_limit_stays_and_permits_come_back_when_dropped() {
        let now = Instant::now();
        let host = HostLimit::new(Bounds::new(8, 8));
        assert_eq!(run(&host, 20, Answer::Fine(MS), now), 8);
        assert_eq!(run(&host, 20, Answer::Overloaded(None), now), 8);
        let held: Vec<_> = std::iter::from_fn(|| host.try_acquire(now)).collect();
        assert_eq!((held.len(), host.free(now)), (8, (0, None)));
        drop(held);
        assert!(host.idle());
        assert_eq!(host.free(now), (8, None));
        assert_eq!(Bounds::new(0, 0), Bounds { floor: 1, ceiling: 1 });
        assert_eq!(Bounds::new(4, 2), Bounds { floor: 2, ceiling: 2 }, "a ceiling under the floor fixes the limit");
    }

    #[test]
    fn ceilings_are_one_number_and_any_per_host() {
        let c = Ceilings::parse("16, auth.example.com=64,Vault.internal:8200=8").unwrap();
        assert_eq!(c.of("other.example.com", 443), 16);
        assert_eq!(c.of("AUTH.example.com", 443), 64);
        assert_eq!(c.of("vault.internal", 8200), 8);
        assert_eq!(c.of("vault.internal", 443), 16);
        assert_eq!(Ceilings::parse("").unwrap(), Ceilings::default());
        for bad in ["0", "x", "a=0", "=3", "https://a/b=3", "a=b"] {
            assert!(Ceilings::parse(bad).is_err(), "{bad}");
        }
    }
}
