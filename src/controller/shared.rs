//! Tokens shared by TokenSources that send identical requests in one namespace
//! (`renewal.shareIdenticalRequests`): one provider call per lifetime for all of them. One
//! request at a time per shared request (single flight); a new token is offered to every sharer
//! at once, so none keeps an older one a provider may have revoked.

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
    sharers: Vec<ObjectRef<TokenSource>>,
    flight: Arc<tokio::sync::Mutex<()>>,
    /// A sharer's template reads the reply: tokens for this request keep it.
    needs_reply: bool,
}

/// The shared tokens, by request key.
#[derive(Default)]
pub struct SharedTokens {
    entries: Mutex<HashMap<String, Entry>>,
}

impl SharedTokens {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Joins `ts` (whose template reads the reply, or not) to the sharers of `key`; returns the
    /// lock that keeps one request in flight.
    pub fn join(&self, key: &str, ts: &ObjectRef<TokenSource>, reads_reply: bool) -> Arc<tokio::sync::Mutex<()>> {
        let mut entries = self.lock();
        let e = entries.entry(key.to_string()).or_default();
        e.needs_reply |= reads_reply;
        if !e.sharers.contains(ts) {
            e.sharers.reserve_exact(1);
            e.sharers.push(ts.clone());
        }
        e.flight.clone()
    }

    /// Whether a sharer of `key` reads the reply.
    pub fn needs_reply(&self, key: &str) -> bool {
        self.lock().get(key).is_some_and(|e| e.needs_reply)
    }

    /// The token shared for `key`, if it is still valid at `now`.
    pub fn token(&self, key: &str, now: Timestamp) -> Option<Arc<Token>> {
        self.lock().get(key).and_then(|e| e.token.clone()).filter(|t| t.expires_at > now)
    }

    /// Offers a new token; returns the other sharers, to reconcile now.
    pub fn offer(&self, key: &str, token: Arc<Token>, from: &ObjectRef<TokenSource>) -> Vec<ObjectRef<TokenSource>> {
        let mut entries = self.lock();
        let e = entries.entry(key.to_string()).or_default();
        e.token = Some(token);
        e.sharers.iter().filter(|s| *s != from).cloned().collect()
    }

    /// Forgets TokenSources that are gone, and tokens that expired.
    pub fn retain(&self, live: &HashSet<ObjectRef<TokenSource>>, now: Timestamp) {
        self.lock().retain(|_, e| {
            e.sharers.retain(|s| live.contains(s));
            e.sharers.shrink_to_fit();
            if e.token.as_ref().is_some_and(|t| t.expires_at <= now) {
                e.token = None;
            }
            !e.sharers.is_empty()
        });
    }

    pub fn clear(&self) {
        self.lock().clear();
    }
}
