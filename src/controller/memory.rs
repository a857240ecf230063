//! What this instance remembers about each TokenSource between reconciles, and when it forgets.
//!
//! The cluster is the source of truth (the target Secret and its annotations, the status);
//! memory adds what the cluster cannot say: the token this instance fetched (with the reply it
//! came in), so the Secret can be re-rendered after a template edit, written again after a failed
//! write, or restored after someone deleted or edited it — all without asking the provider
//! again; the resourceVersion of its last write, to tell a cache that has not caught up from a
//! Secret someone else changed; and the last failure, for the backoff. Everything about a
//! TokenSource is forgotten when it is deleted. After a restart everything comes from the
//! cluster.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use jiff::Timestamp;
use kube::runtime::reflector::ObjectRef;

use crate::crd::{TokenSource, TokenSourceStatus};
use crate::response::Token;

/// The last failed attempt and what produced it.
#[derive(Clone, Debug, PartialEq)]
pub struct FailureRecord {
    /// The fingerprint of the spec and credentials that failed; a change drops the backoff.
    pub fingerprint: String,
    pub retry_at: Timestamp,
    /// Consecutive failures so far.
    pub failures: u32,
    /// The token endpoint failed or refused: a new token is still owed, and is asked for after
    /// this time (the provider's backoff, its `Retry-After`) even while the one in hand is
    /// valid (after a failed manual refresh). A later failure of another kind for the same
    /// request (a refused write) keeps it.
    pub owed_from: Option<Timestamp>,
    /// A digest of the upstream token the failed request carried (chained TokenSources): the
    /// upstream's next token ends the backoff.
    pub upstream: Option<u64>,
    /// The Secret write the API server refused (today's shape over the version of the Secret
    /// it was written over): the same write is not tried again before `retry_at`, while another
    /// template or a changed Secret is tried at once.
    pub refused_write: Option<String>,
}

/// A token this instance fetched, and the fingerprint of the request that produced it. The
/// token is shared with the entry of identical requests, if any: one copy of each token.
#[derive(Clone, Debug)]
pub struct Held {
    pub fingerprint: String,
    pub token: Arc<Token>,
}

/// What is kept of one TokenSource: one per TokenSource, so the parts most of them never need
/// (a failure, a status not yet in the cache, warnings given) are boxed and cost a pointer.
#[derive(Clone, Debug, Default)]
struct Record {
    held: Option<Held>,
    /// The resourceVersion the target Secret had after this instance last wrote it.
    written: Option<String>,
    /// The version the cache showed just before that write (`None`: none), and when it was made.
    written_over: Option<(Option<String>, std::time::Instant)>,
    /// The status this instance last wrote, and the versions of the object it is newer than.
    status: Option<Box<StatusCopy>>,
    failure: Option<Box<FailureRecord>>,
    /// Warnings already given (a stale consuming Pod, an inline secret of a spec generation).
    warned: Vec<String>,
    /// The manual refresh pending (the annotation's value) and when this instance first saw it:
    /// a token requested since then answers it.
    manual: Option<Box<(String, std::time::Instant)>>,
    /// A target name the API said no Secret has, while the cache of managed Secrets showed none
    /// either: not asked again until a write of it fails.
    absent: Option<Box<str>>,
}

/// The status this instance last wrote: a hash of it, and the resourceVersions of the object
/// that do not show it yet — the one it was computed from, and those of this instance's own
/// earlier writes since (two writes in a row from one cached object: the cache showing the first
/// is still behind the second). The version the write produced is not among them.
#[derive(Clone, Debug)]
struct StatusCopy {
    older: Vec<String>,
    written: Option<String>,
    hash: u64,
    status: TokenSourceStatus,
}

/// How many versions older than a status copy are kept.
const OLDER_VERSIONS: usize = 4;

/// Per-TokenSource records, forgotten when the TokenSource goes.
#[derive(Default)]
pub struct Memory {
    records: Mutex<HashMap<ObjectRef<TokenSource>, Record>>,
}

impl Memory {
    fn lock(&self) -> MutexGuard<'_, HashMap<ObjectRef<TokenSource>, Record>> {
        self.records.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The token this instance holds for `ts`, if it was fetched for `fingerprint` and has not
    /// expired at `now`.
    pub fn held(&self, ts: &ObjectRef<TokenSource>, fingerprint: &str, now: Timestamp) -> Option<Arc<Token>> {
        self.lock()
            .get(ts)
            .and_then(|r| r.held.as_ref())
            .filter(|h| h.fingerprint == fingerprint && h.token.expires_at > now)
            .map(|h| h.token.clone())
    }

    /// The token held for `fingerprint`, expired or not (to render the Secret it is in again).
    pub fn held_any(&self, ts: &ObjectRef<TokenSource>, fingerprint: &str) -> Option<Arc<Token>> {
        self.lock()
            .get(ts)
            .and_then(|r| r.held.as_ref())
            .filter(|h| h.fingerprint == fingerprint)
            .map(|h| h.token.clone())
    }

    /// The token this instance holds for `ts`, whatever request it was fetched for.
    pub fn held_latest(&self, ts: &ObjectRef<TokenSource>) -> Option<Arc<Token>> {
        self.lock().get(ts).and_then(|r| r.held.as_ref()).map(|h| h.token.clone())
    }

    /// Keeps a token just fetched, before it is written.
    pub fn hold(&self, ts: &ObjectRef<TokenSource>, held: Held) {
        self.lock().entry(ts.clone()).or_default().held = Some(held);
    }

    /// The resourceVersion of this instance's last write of the Secret.
    /// Whether the API said no Secret is named `target` (the last time it was asked, for `ts`).
    pub fn known_absent(&self, ts: &ObjectRef<TokenSource>, target: &str) -> bool {
        self.lock().get(ts).is_some_and(|r| r.absent.as_deref() == Some(target))
    }

    /// Remembers that no Secret is named `target`; `None` forgets it (a write of the Secret
    /// failed: what is there is asked again).
    pub fn remember_absent(&self, ts: &ObjectRef<TokenSource>, target: Option<&str>) {
        let mut records = self.lock();
        match target {
            Some(t) => records.entry(ts.clone()).or_default().absent = Some(t.into()),
            None => {
                if let Some(r) = records.get_mut(ts) {
                    r.absent = None;
                }
            }
        }
    }

    pub fn written(&self, ts: &ObjectRef<TokenSource>) -> Option<String> {
        self.lock().get(ts).and_then(|r| r.written.clone())
    }

    /// Records a successful write of the Secret over the version `over` the cache showed.
    pub fn remember_written(
        &self,
        ts: &ObjectRef<TokenSource>,
        resource_version: Option<String>,
        over: Option<String>,
    ) {
        let mut records = self.lock();
        let r = records.entry(ts.clone()).or_default();
        r.written = resource_version;
        r.written_over = Some((over, std::time::Instant::now()));
    }

    /// Ends the backoff of a refused Secret write, once a write succeeded. A failed token
    /// request stays remembered: a write of the token in hand does not pay what it owes.
    pub fn forget_refused_write(&self, ts: &ObjectRef<TokenSource>) {
        if let Some(r) = self.lock().get_mut(ts)
            && r.failure.as_ref().is_some_and(|f| f.refused_write.is_some())
        {
            // A token the provider still owes stays owed, after its own backoff.
            r.failure = r.failure.take().and_then(|f| {
                let owed_from = f.owed_from?;
                Some(Box::new(FailureRecord { retry_at: owed_from, refused_write: None, ..*f }))
            });
        }
    }

    /// Whether a cache showing `cached` of the target Secret has not yet seen this instance's
    /// write of it, made less than `within` ago: it still shows what the write replaced. Its own
    /// watch event is on the way and reconciles again; an older write may have been undone by
    /// a deletion the cache shows the same way, so it is not waited for.
    pub fn cache_behind_write(
        &self,
        ts: &ObjectRef<TokenSource>,
        cached: Option<&str>,
        within: std::time::Duration,
    ) -> bool {
        self.lock().get(ts).is_some_and(|r| {
            r.written.as_deref() != cached
                && r.written_over.as_ref().is_some_and(|(over, at)| over.as_deref() == cached && at.elapsed() < within)
        })
    }

    /// Whether this instance already wrote the status hashed `status` for the object at
    /// `resource_version`: a cache that has not caught up with that write shows the old status.
    pub fn wrote_status(&self, ts: &ObjectRef<TokenSource>, resource_version: &str, status: u64) -> bool {
        self.lock()
            .get(ts)
            .and_then(|r| r.status.as_deref())
            .is_some_and(|c| c.hash == status && c.older.iter().any(|v| v == resource_version))
    }

    /// Remembers the status this instance wrote, computed from the object at
    /// `resource_version`; `written` is the version the write produced.
    pub fn remember_status(
        &self,
        ts: &ObjectRef<TokenSource>,
        resource_version: String,
        written: Option<String>,
        hash: u64,
        status: TokenSourceStatus,
    ) {
        let mut records = self.lock();
        let record = records.entry(ts.clone()).or_default();
        // Computed from a version that does not show the previous write either: the versions
        // older than that write are older than this one too, and so is that write's own.
        let mut older = match record.status.take() {
            Some(prev) if prev.older.contains(&resource_version) => {
                let mut older = prev.older;
                older.extend(prev.written);
                older
            }
            _ => vec![],
        };
        if !older.contains(&resource_version) {
            older.push(resource_version);
        }
        let excess = older.len().saturating_sub(OLDER_VERSIONS);
        older.drain(..excess);
        record.status = Some(Box::new(StatusCopy { older, written, hash, status }));
    }

    /// The status this instance last wrote, if the cached object at `resource_version` has not
    /// caught up with that write yet: a reconcile must build on it, not on the older status the
    /// cache shows (which would drop what the write added, such as the Ready condition).
    /// Once the cache shows another version, the copy is dropped: it is of no further use.
    pub fn newer_status(&self, ts: &ObjectRef<TokenSource>, resource_version: &str) -> Option<TokenSourceStatus> {
        let mut records = self.lock();
        let record = records.get_mut(ts)?;
        match record.status.as_deref() {
            Some(c) if c.older.iter().any(|v| v == resource_version) => Some(c.status.clone()),
            Some(_) => {
                record.status = None;
                None
            }
            None => None,
        }
    }

    pub fn failure(&self, ts: &ObjectRef<TokenSource>) -> Option<FailureRecord> {
        self.lock().get(ts).and_then(|r| r.failure.as_deref().cloned())
    }

    pub fn remember_failure(&self, ts: &ObjectRef<TokenSource>, failure: FailureRecord) {
        self.lock().entry(ts.clone()).or_default().failure = Some(Box::new(failure));
    }

    /// The provider gave a token: none is owed any more (the backoff of a failure since, a
    /// refused write of that token, stays).
    pub fn token_given(&self, ts: &ObjectRef<TokenSource>) {
        if let Some(f) = self.lock().get_mut(ts).and_then(|r| r.failure.as_mut()) {
            f.owed_from = None;
        }
    }

    pub fn forget_failure(&self, ts: &ObjectRef<TokenSource>) {
        if let Some(r) = self.lock().get_mut(ts) {
            r.failure = None;
        }
    }

    /// Forgets a TokenSource that no longer exists.
    pub fn forget(&self, ts: &ObjectRef<TokenSource>) {
        self.lock().remove(ts);
    }

    /// Whether the warning `what` is yet to be given for the TokenSource; remembers that it now
    /// is.
    /// When this instance first saw the manual refresh `value` of `ts` pending.
    pub fn manual_noticed(&self, ts: &ObjectRef<TokenSource>, value: &str) -> std::time::Instant {
        let mut records = self.lock();
        let manual = &mut records.entry(ts.clone()).or_default().manual;
        match manual.as_deref() {
            Some((v, at)) if v == value => *at,
            _ => {
                let now = std::time::Instant::now();
                *manual = Some(Box::new((value.to_string(), now)));
                now
            }
        }
    }

    pub fn warn_once(&self, ts: &ObjectRef<TokenSource>, what: &str) -> bool {
        let mut records = self.lock();
        let warned = &mut records.entry(ts.clone()).or_default().warned;
        let first = !warned.iter().any(|w| w == what);
        if first {
            warned.push(what.to_string());
        }
        first
    }

    /// Forgets everything: on a change of leadership, when another instance may have written
    /// since, what counts is the cluster (Secret annotations and status).
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// Forgets every TokenSource not in `live`.
    pub fn retain(&self, live: &HashSet<ObjectRef<TokenSource>>) {
        self.lock().retain(|k, _| live.contains(k));
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::response::LifetimeSource;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn token(expires: i64) -> Token {
        Token {
            access_token: "t".into(),
            token_type: None,
            scope: None,
            issued_at: at(0),
            expires_at: at(expires),
            lifetime_source: LifetimeSource::ExpiresIn,
            fields: Default::default(),
            raw: json!({}),
            renew_at: None,
        }
    }

    #[test]
    fn a_held_token_serves_only_its_own_request_and_only_while_valid() {
        let m = Memory::default();
        let r = ObjectRef::new("a").within("ns");
        m.hold(&r, Held { fingerprint: "fp".into(), token: Arc::new(token(100)) });
        assert!(m.held(&r, "fp", at(10)).is_some());
        assert!(m.held(&r, "other", at(10)).is_none(), "the spec or credentials changed");
        assert!(m.held(&r, "fp", at(100)).is_none(), "expired");
    }

    #[test]
    fn only_a_refused_write_ends_with_a_write_and_everything_ends_with_the_source() {
        let m = Memory::default();
        let r = ObjectRef::new("a").within("ns");
        let f = FailureRecord {
            fingerprint: "fp".into(),
            retry_at: at(30),
            failures: 2,
            owed_from: Some(at(30)),
            upstream: None,
            refused_write: None,
        };
        m.remember_failure(&r, f.clone());
        assert_eq!(m.failure(&r), Some(f.clone()));
        m.remember_written(&r, Some("42".into()), None);
        m.forget_refused_write(&r);
        assert_eq!(m.failure(&r), Some(f.clone()), "a failed token request is still owed");
        let write = Some("shape@1".to_string());
        m.remember_failure(&r, FailureRecord { retry_at: at(5), refused_write: write.clone(), ..f.clone() });
        m.forget_refused_write(&r);
        assert_eq!(m.failure(&r), Some(f.clone()), "the write went through: the token is still owed from its time");
        m.remember_failure(&r, FailureRecord { owed_from: None, refused_write: write, ..f });
        m.forget_refused_write(&r);
        assert!(m.cache_behind_write(&r, None, std::time::Duration::from_secs(5)), "the cache has not seen it");
        assert!(!m.cache_behind_write(&r, Some("42"), std::time::Duration::from_secs(5)), "the cache has it");
        assert!(!m.cache_behind_write(&r, Some("43"), std::time::Duration::from_secs(5)), "changed since");
        assert!(!m.cache_behind_write(&r, None, std::time::Duration::ZERO), "not waited for long");
        assert_eq!(m.failure(&r), None);
        assert_eq!(m.written(&r).as_deref(), Some("42"));
        m.hold(&r, Held { fingerprint: "fp".into(), token: Arc::new(token(100)) });
        m.retain(&HashSet::new());
        assert!(m.held(&r, "fp", at(10)).is_none() && m.written(&r).is_none(), "forgotten with the source");
    }

    #[test]
    fn a_status_written_is_skipped_only_for_the_object_it_was_computed_from() {
        let m = Memory::default();
        let r = ObjectRef::new("a").within("ns");
        assert!(!m.wrote_status(&r, "7", 1));
        let written = TokenSourceStatus { failed_renewal_attempts: 1, ..Default::default() };
        m.remember_status(&r, "7".into(), Some("8".into()), 1, written.clone());
        assert!(m.wrote_status(&r, "7", 1), "the cache has not caught up with the write");
        assert!(!m.wrote_status(&r, "7", 2), "another status for the same object");
        assert!(!m.wrote_status(&r, "9", 1), "someone changed the object since");
        // A reconcile of the stale object builds on what was written, not on what it shows.
        assert_eq!(m.newer_status(&r, "7"), Some(written.clone()));
        assert_eq!(m.newer_status(&r, "9"), None, "the cache has caught up (or someone else wrote)");
        assert_eq!(m.newer_status(&r, "7"), None, "the copy is dropped once the cache moved on");
        m.remember_status(&r, "7".into(), Some("8".into()), 1, written.clone());
        m.clear();
        assert_eq!(m.newer_status(&r, "7"), None);
    }

    #[test]
    fn two_status_writes_from_one_cached_object_are_both_ahead_of_the_cache() {
        let m = Memory::default();
        let r = ObjectRef::new("a").within("ns");
        let first = TokenSourceStatus { failed_renewal_attempts: 1, ..Default::default() };
        let second = TokenSourceStatus { failed_renewal_attempts: 2, ..Default::default() };
        // Both computed from version 7: the first write made 8, the second 9.
        m.remember_status(&r, "7".into(), Some("8".into()), 1, first);
        m.remember_status(&r, "7".into(), Some("9".into()), 2, second.clone());
        assert_eq!(m.newer_status(&r, "8"), Some(second.clone()), "the cache showing the first write is still behind");
        assert_eq!(m.newer_status(&r, "7"), Some(second));
        assert_eq!(m.newer_status(&r, "9"), None, "caught up");
    }
}
