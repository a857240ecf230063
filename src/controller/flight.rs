//! Token requests in flight, each on a task of its own. A reconcile that needs a new token takes a
//! request slot of the endpoint's host, starts the request and ends; the end of the request
//! reconciles every TokenSource waiting for it, and the one that asked takes the result. No
//! reconcile worker ever waits on a token endpoint, so endpoints that hang — however many a
//! tenant points its TokenSources at — cannot delay the renewals of anyone else.
//!
//! One request at a time per key: a TokenSource's own request, or the request shared by
//! TokenSources that send identical requests (whose token also goes to the shared entry). Each
//! TokenSource that waited for a request takes its result once: the token, or the failure, which
//! each sharer records as its own.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use kube::runtime::reflector::ObjectRef;

use crate::crd::TokenSource;
use crate::error::Error;
use crate::response::Token;

/// Which request: one TokenSource's own, or the shared one of a request key.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum FlightKey {
    Own(ObjectRef<TokenSource>),
    Shared(String),
}

enum State {
    Running {
        waiters: Vec<ObjectRef<TokenSource>>,
    },
    Done {
        result: Result<std::sync::Arc<Token>, Error>,
        /// The TokenSources that waited for it and have not taken it yet.
        undelivered: Vec<ObjectRef<TokenSource>>,
        at: Instant,
    },
}

struct Flight {
    /// Tells a request's end from that of an earlier one for the same key.
    id: u64,
    /// What the request was made for (the TokenSource's fingerprint, or the shared key): a
    /// result for another spec or credentials is not taken.
    made_for: String,
    state: State,
}

/// What became of the request a reconcile waits for.
pub enum Poll {
    /// It ended: the token, or why there is none.
    Ready(Result<std::sync::Arc<Token>, Error>),
    /// It is in flight; its end reconciles this TokenSource.
    Waiting,
    /// There is none for this TokenSource: start one.
    Absent,
}

/// How long a result nobody came for is kept.
const UNCLAIMED: Duration = Duration::from_secs(600);

#[derive(Default)]
pub struct Flights {
    map: Mutex<HashMap<FlightKey, Flight>>,
    next_id: std::sync::atomic::AtomicU64,
}

impl Flights {
    fn lock(&self) -> MutexGuard<'_, HashMap<FlightKey, Flight>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What became of the request for `key` that `me` waits for, made for `made_for`.
    pub fn poll(&self, key: &FlightKey, me: &ObjectRef<TokenSource>, made_for: &str) -> Poll {
        let mut map = self.lock();
        let Some(flight) = map.get_mut(key) else { return Poll::Absent };
        match &mut flight.state {
            State::Running { waiters } => {
                // Also for a request made for an earlier spec: one request at a time per key.
                if !waiters.contains(me) {
                    waiters.push(me.clone());
                }
                Poll::Waiting
            }
            State::Done { result, undelivered, .. } => {
                let Some(i) = undelivered.iter().position(|w| w == me) else { return Poll::Absent };
                if flight.made_for != made_for {
                    undelivered.swap_remove(i);
                    if undelivered.is_empty() {
                        map.remove(key);
                    }
                    return Poll::Absent;
                }
                undelivered.swap_remove(i);
                if undelivered.is_empty() {
                    let taken = map.remove(key).map(|f| f.state);
                    if let Some(State::Done { result, .. }) = taken {
                        return Poll::Ready(result);
                    }
                    return Poll::Absent;
                }
                Poll::Ready(result.as_ref().map(std::sync::Arc::clone).map_err(Error::duplicate))
            }
        }
    }

    /// Starts the request for `key` unless one is in flight: its id when `me` is to send it;
    /// otherwise `me` waits for the one in flight.
    pub fn start(&self, key: &FlightKey, me: &ObjectRef<TokenSource>, made_for: &str) -> Option<u64> {
        let mut map = self.lock();
        let mut waiters = vec![me.clone()];
        match map.get_mut(key).map(|f| &mut f.state) {
            Some(State::Running { waiters }) => {
                if !waiters.contains(me) {
                    waiters.push(me.clone());
                }
                return None;
            }
            // Whoever has not taken an earlier result waits for this one instead.
            Some(State::Done { undelivered, .. }) => {
                waiters.extend(undelivered.drain(..).filter(|w| w != me));
            }
            None => {}
        }
        let id = self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        map.insert(key.clone(), Flight { id, made_for: made_for.to_string(), state: State::Running { waiters } });
        Some(id)
    }

    /// The request `id` for `key` ended with `result`; returns the TokenSources that waited for
    /// it, to reconcile now (each takes the result once).
    pub fn finish(
        &self,
        key: &FlightKey,
        id: u64,
        result: Result<std::sync::Arc<Token>, Error>,
    ) -> Vec<ObjectRef<TokenSource>> {
        let mut map = self.lock();
        let Some(flight) = map.get_mut(key).filter(|f| f.id == id) else { return vec![] };
        let waiters = match &mut flight.state {
            State::Running { waiters } => std::mem::take(waiters),
            State::Done { .. } => return vec![],
        };
        flight.state = State::Done { result, undelivered: waiters.clone(), at: Instant::now() };
        waiters
    }

    /// Forgets the results of TokenSources that are gone and results nobody came for.
    pub fn retain(&self, live: &std::collections::HashSet<ObjectRef<TokenSource>>) {
        self.lock().retain(|key, f| {
            if let FlightKey::Own(ts) = key
                && !live.contains(ts)
                && !matches!(f.state, State::Running { .. })
            {
                return false;
            }
            match &mut f.state {
                State::Running { waiters } => {
                    waiters.retain(|w| live.contains(w));
                    true
                }
                State::Done { undelivered, at, .. } => {
                    undelivered.retain(|w| live.contains(w));
                    !undelivered.is_empty() && at.elapsed() < UNCLAIMED
                }
            }
        });
    }

    /// Forgets every result (leadership changed: they belong to another term). Requests in
    /// flight end on their own: they are cut off at the fence.
    pub fn clear_results(&self) {
        self.lock().retain(|_, f| matches!(f.state, State::Running { .. }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn r(name: &str) -> ObjectRef<TokenSource> {
        ObjectRef::new(name).within("ns")
    }

    fn token() -> Arc<Token> {
        let t = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        Arc::new(Token {
            access_token: "t".into(),
            token_type: None,
            scope: None,
            issued_at: t,
            expires_at: t,
            lifetime_source: crate::response::LifetimeSource::Stored,
            fields: Default::default(),
            raw: serde_json::Value::Null,
            renew_at: None,
        })
    }

    #[test]
    fn one_request_per_key_and_every_waiter_gets_its_end() {
        let f = Flights::default();
        let (a, b) = (r("a"), r("b"));
        let key = FlightKey::Shared("k".into());
        assert!(matches!(f.poll(&key, &a, "k"), Poll::Absent));
        let id = f.start(&key, &a, "k").unwrap();
        assert_eq!(f.start(&key, &b, "k"), None, "one request at a time");
        assert!(matches!(f.poll(&key, &b, "k"), Poll::Waiting));
        // A failure of a shared request reaches each sharer once.
        let failed = Err(Error::ServiceAccountToken("denied".into()));
        assert_eq!(f.finish(&key, id, failed), vec![a.clone(), b.clone()]);
        assert!(matches!(f.poll(&key, &a, "k"), Poll::Ready(Err(_))));
        assert!(matches!(f.poll(&key, &a, "k"), Poll::Absent), "taken once");
        assert!(matches!(f.poll(&key, &b, "k"), Poll::Ready(Err(_))));
        assert!(f.lock().is_empty());
        // A result nobody comes for goes with the waiters that are gone.
        let id = f.start(&key, &a, "k").unwrap();
        f.finish(&key, id, Ok(token()));
        f.retain(&Default::default());
        assert!(f.lock().is_empty());
    }

    #[test]
    fn a_stale_end_and_a_result_for_another_spec_are_not_taken() {
        let f = Flights::default();
        let a = r("a");
        let key = FlightKey::Own(a.clone());
        let old = f.start(&key, &a, "fp1").unwrap();
        // Results are dropped on a change of leadership; a new request starts.
        f.finish(&key, old, Ok(token()));
        f.clear_results();
        let new = f.start(&key, &a, "fp1").unwrap();
        assert!(f.finish(&key, old, Ok(token())).is_empty(), "the old request's end is ignored");
        assert!(matches!(f.poll(&key, &a, "fp1"), Poll::Waiting));
        f.finish(&key, new, Ok(token()));
        // The spec changed while it was in flight: its token is not taken.
        assert!(matches!(f.poll(&key, &a, "fp2"), Poll::Absent));
        assert!(f.lock().is_empty());
    }
}
