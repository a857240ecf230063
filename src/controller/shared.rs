//! Tokens shared by TokenSources that send identical requests in one namespace
//! (`renewal.shareIdenticalRequests`): one provider call per lifetime for all of them. One
//! request at a time per shared request (single flight); a new token is offered to every sharer
//! at once, so none keeps an older one a provider may have revoked.
//!
//! Sharers converge on the newest token even when this instance did not fetch it (after a
//! restart or a failover, the tokens come from the sharers' Secrets): each sharer offers the
//! token it holds, the entry keeps the newest, and a sharer holding another takes it. A token
//! this instance fetched is the newest there is (fetches of one request are serialised, and an
//! old leader has nothing in flight once this one leads); among tokens read back, the later
//! issue time wins, then the later expiry, then the token itself (any fixed order converges).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use jiff::Timestamp;
use kube::runtime::reflector::ObjectRef;

use crate::crd::TokenSource;
use crate::response::Token;

/// One shared request: every TokenSource keeps one (sharing is on by default), most of them
/// alone, so it is small: the token is the one the sharer holds (an `Arc`), the sharers a list
/// allocated to size.
#[derive(Default)]
struct Entry {
    token: Option<Arc<Token>>,
    /// This instance fetched the token (its request went out then): no token read back
    /// replaces it.
    fetched: Option<std::time::Instant>,
    sharers: Vec<ObjectRef<TokenSource>>,
    flight: Arc<tokio::sync::Mutex<()>>,
    /// A sharer's template reads the reply: tokens for this request keep it.
    needs_reply: bool,
}

/// The shared tokens, by request key, and the key each sharer uses today.
#[derive(Default)]
pub struct SharedTokens {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    /// A sharer is in the entry of its current key only: an edit or a credential rotation moves
    /// it, and an entry left without sharers goes with its token.
    keys: HashMap<ObjectRef<TokenSource>, String>,
}

impl Inner {
    /// Takes `ts` out of the entry of the key it used before, if any other than `key`.
    fn leave_other(&mut self, ts: &ObjectRef<TokenSource>, key: Option<&str>) {
        let Some(old) = self.keys.get(ts).filter(|old| Some(old.as_str()) != key).cloned() else { return };
        self.keys.remove(ts);
        if let Some(e) = self.entries.get_mut(&old) {
            e.sharers.retain(|s| s != ts);
            if e.sharers.is_empty() {
                self.entries.remove(&old);
            }
        }
    }
}

/// The order of tokens none of which this instance fetched: the later issue, the later expiry,
/// then the token itself.
fn rank(t: &Token) -> (jiff::Timestamp, jiff::Timestamp, &str) {
    (t.issued_at, t.expires_at, t.access_token.as_str())
}

impl SharedTokens {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Joins `ts` (whose template reads the reply, or not) to the sharers of `key`, leaving the
    /// entry of any key it used before; returns the lock that keeps one request in flight.
    pub fn join(&self, key: &str, ts: &ObjectRef<TokenSource>, reads_reply: bool) -> Arc<tokio::sync::Mutex<()>> {
        let mut inner = self.lock();
        inner.leave_other(ts, Some(key));
        if !inner.keys.contains_key(ts) {
            inner.keys.insert(ts.clone(), key.to_string());
        }
        let e = inner.entries.entry(key.to_string()).or_default();
        e.needs_reply |= reads_reply;
        if !e.sharers.contains(ts) {
            e.sharers.reserve_exact(1);
            e.sharers.push(ts.clone());
        }
        e.flight.clone()
    }

    /// `ts` shares no request any more (sharing turned off).
    pub fn leave(&self, ts: &ObjectRef<TokenSource>) {
        self.lock().leave_other(ts, None);
    }

    /// Offers the token `ts` holds but this instance did not fetch (read back from its Secret,
    /// or fetched before a change of leadership): it becomes the shared one if it is newer than
    /// the entry's. Returns the other sharers when it did, to reconcile now.
    pub fn offer_held(
        &self,
        key: &str,
        token: &Arc<Token>,
        ts: &ObjectRef<TokenSource>,
    ) -> Vec<ObjectRef<TokenSource>> {
        let mut inner = self.lock();
        // Alone, there is nobody to converge with: nothing is kept.
        let Some(e) = inner.entries.get_mut(key).filter(|e| e.sharers.len() > 1) else { return vec![] };
        let newer = match &e.token {
            None => true,
            Some(t) => e.fetched.is_none() && rank(token) > rank(t),
        };
        if !newer {
            return vec![];
        }
        e.token = Some(token.clone());
        e.sharers.iter().filter(|s| *s != ts).cloned().collect()
    }

    /// Whether a sharer of `key` reads the reply.
    pub fn needs_reply(&self, key: &str) -> bool {
        self.lock().entries.get(key).is_some_and(|e| e.needs_reply)
    }

    /// The token shared for `key`, if it is still valid at `now`.
    pub fn token(&self, key: &str, now: Timestamp) -> Option<Arc<Token>> {
        self.lock().entries.get(key).and_then(|e| e.token.clone()).filter(|t| t.expires_at > now)
    }

    /// The token shared for `key` if this instance requested it at or after `since` (and it is
    /// still valid at `now`): what answers a manual refresh noticed at `since`.
    pub fn token_requested_since(&self, key: &str, since: std::time::Instant, now: Timestamp) -> Option<Arc<Token>> {
        let inner = self.lock();
        let e = inner.entries.get(key)?;
        e.fetched.filter(|sent| *sent >= since).and(e.token.clone()).filter(|t| t.expires_at > now)
    }

    /// Offers a token this instance just fetched with a request sent at `sent`; returns the
    /// other sharers, to reconcile now.
    pub fn offer(
        &self,
        key: &str,
        token: Arc<Token>,
        from: &ObjectRef<TokenSource>,
        sent: std::time::Instant,
    ) -> Vec<ObjectRef<TokenSource>> {
        let mut inner = self.lock();
        let e = inner.entries.entry(key.to_string()).or_default();
        e.token = Some(token);
        e.fetched = Some(sent);
        e.sharers.iter().filter(|s| *s != from).cloned().collect()
    }

    /// Forgets TokenSources that are gone, and tokens that expired.
    pub fn retain(&self, live: &HashSet<ObjectRef<TokenSource>>, now: Timestamp) {
        let mut inner = self.lock();
        inner.keys.retain(|ts, _| live.contains(ts));
        inner.entries.retain(|_, e| {
            e.sharers.retain(|s| live.contains(s));
            e.sharers.shrink_to_fit();
            if e.token.as_ref().is_some_and(|t| t.expires_at <= now) {
                e.token = None;
                e.fetched = None;
            }
            !e.sharers.is_empty()
        });
    }

    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.entries.clear();
        inner.keys.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(value: &str, issued: i64, expires: i64) -> Arc<Token> {
        let t = |s: i64| Timestamp::from_second(1_800_000_000 + s).unwrap();
        Arc::new(Token {
            access_token: value.into(),
            token_type: None,
            scope: None,
            issued_at: t(issued),
            expires_at: t(expires),
            lifetime_source: crate::response::LifetimeSource::Stored,
            fields: Default::default(),
            raw: serde_json::Value::Null,
            renew_at: None,
        })
    }

    fn r(name: &str) -> ObjectRef<TokenSource> {
        ObjectRef::new(name).within("ns")
    }

    #[test]
    fn sharers_converge_on_the_newest_token_read_back() {
        let shared = SharedTokens::default();
        let (a, b) = (r("a"), r("b"));
        shared.join("k", &a, false);
        shared.join("k", &b, false);
        // After a failover, b is reconciled first with the older token, then a with the newer.
        assert_eq!(shared.offer_held("k", &token("old", 0, 60), &b), vec![a.clone()]);
        assert_eq!(shared.offer_held("k", &token("new", 30, 90), &a), vec![b.clone()], "b must take it");
        assert!(shared.offer_held("k", &token("old", 0, 60), &b).is_empty(), "an older token is not taken");
        assert_eq!(shared.token("k", Timestamp::from_second(1_800_000_001).unwrap()).unwrap().access_token, "new");
        // Issued in the same second: a fixed order decides, whoever offers first.
        assert_eq!(shared.offer_held("k", &token("zzz", 30, 90), &b), vec![a.clone()]);
        assert!(shared.offer_held("k", &token("new", 30, 90), &a).is_empty());
        // A token this instance fetched is never replaced by one read back.
        shared.offer("k", token("fetched", 30, 90), &a, std::time::Instant::now());
        assert!(shared.offer_held("k", &token("zzzz", 31, 91), &b).is_empty());
    }

    #[test]
    fn a_lone_sharer_keeps_nothing_read_back() {
        let shared = SharedTokens::default();
        let a = r("a");
        shared.join("k", &a, false);
        assert!(shared.offer_held("k", &token("t", 0, 60), &a).is_empty());
        assert!(shared.token("k", Timestamp::from_second(1_800_000_001).unwrap()).is_none());
    }

    #[test]
    fn a_sharer_is_in_the_entry_of_its_current_key_only() {
        let shared = SharedTokens::default();
        let a = r("a");
        shared.join("before", &a, false);
        shared.offer("before", token("t", 0, 60), &a, std::time::Instant::now());
        // Credentials rotated: the old entry and its token go with its last sharer.
        shared.join("after", &a, false);
        assert_eq!(shared.lock().entries.len(), 1);
        // Rotated back within the token's lifetime: the old token is not reused.
        shared.join("before", &a, false);
        assert!(shared.token("before", Timestamp::from_second(1_800_000_001).unwrap()).is_none());
        shared.leave(&a);
        let inner = shared.lock();
        assert!(inner.entries.is_empty() && inner.keys.is_empty());
    }
}
