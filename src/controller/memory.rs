//! What this instance remembers about each TokenSource between reconciles, and when it forgets.
//!
//! The cluster is the source of truth (the target Secret's annotations, the status); memory only
//! covers the moments when the watch caches have not caught up with the operator's own writes:
//! a reconcile that sees a cached object from before its last write must neither fetch a second
//! token nor retry before its backoff. After a restart everything is derived from the cluster.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, PoisonError};

use jiff::Timestamp;
use kube::runtime::reflector::ObjectRef;

use crate::crd::TokenSource;
use crate::secret::Stored;

/// The last failed attempt and what produced it.
#[derive(Clone, Debug, PartialEq)]
pub struct FailureRecord {
    /// The fingerprint of the spec and credentials that failed; a change drops the backoff.
    pub fingerprint: String,
    pub retry_at: Timestamp,
    /// Consecutive failures so far.
    pub failures: u32,
}

#[derive(Clone, Debug, Default)]
struct Record {
    /// The last token this instance wrote to the target Secret.
    issued: Option<Stored>,
    failure: Option<FailureRecord>,
}

/// Per-TokenSource records, forgotten when the TokenSource goes.
#[derive(Default)]
pub struct Memory {
    records: Mutex<HashMap<ObjectRef<TokenSource>, Record>>,
}

impl Memory {
    fn lock(&self) -> MutexGuard<'_, HashMap<ObjectRef<TokenSource>, Record>> {
        self.records.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What the target Secret holds: the cached Secret, unless this instance has written a newer
    /// token for the same owner that the cache does not show yet. A deleted Secret (`None`)
    /// stays deleted.
    pub fn newest(&self, ts: &ObjectRef<TokenSource>, cached: Option<Stored>) -> Option<Stored> {
        let mine = self.lock().get(ts).and_then(|r| r.issued.clone());
        match (cached, mine) {
            (Some(c), Some(m)) if c.owner == m.owner && c.refreshed_at < m.refreshed_at => Some(m),
            (c, _) => c,
        }
    }

    /// Records a token written to the Secret; it ends any failure streak.
    pub fn remember_issued(&self, ts: &ObjectRef<TokenSource>, stored: Stored) {
        let mut records = self.lock();
        let r = records.entry(ts.clone()).or_default();
        r.issued = Some(stored);
        r.failure = None;
    }

    pub fn failure(&self, ts: &ObjectRef<TokenSource>) -> Option<FailureRecord> {
        self.lock().get(ts).and_then(|r| r.failure.clone())
    }

    pub fn remember_failure(&self, ts: &ObjectRef<TokenSource>, failure: FailureRecord) {
        self.lock().entry(ts.clone()).or_default().failure = Some(failure);
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

    /// Forgets every TokenSource not in `live`.
    pub fn retain(&self, live: &HashSet<ObjectRef<TokenSource>>) {
        self.lock().retain(|k, _| live.contains(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn stored(owner: &str, refreshed: i64) -> Stored {
        Stored { owner: Some(owner.into()), refreshed_at: Some(at(refreshed)), has_token: true, ..Default::default() }
    }

    #[test]
    fn a_lagging_cache_is_overruled_by_what_was_written() {
        let m = Memory::default();
        let r = ObjectRef::new("a").within("ns");
        assert_eq!(m.newest(&r, Some(stored("a", 0))), Some(stored("a", 0)));
        m.remember_issued(&r, stored("a", 10));
        assert_eq!(m.newest(&r, Some(stored("a", 0))), Some(stored("a", 10)), "the cache lags");
        assert_eq!(m.newest(&r, Some(stored("a", 20))), Some(stored("a", 20)), "the cache caught up");
        assert_eq!(m.newest(&r, None), None, "a deleted Secret is not resurrected from memory");
        assert_eq!(m.newest(&r, Some(stored("b", 0))), Some(stored("b", 0)), "another owner's Secret");
    }

    #[test]
    fn failures_end_with_a_token_and_everything_ends_with_the_source() {
        let m = Memory::default();
        let r = ObjectRef::new("a").within("ns");
        let f = FailureRecord { fingerprint: "fp".into(), retry_at: at(30), failures: 2 };
        m.remember_failure(&r, f.clone());
        assert_eq!(m.failure(&r), Some(f));
        m.remember_issued(&r, stored("a", 40));
        assert_eq!(m.failure(&r), None);
        m.retain(&HashSet::new());
        assert_eq!(m.newest(&r, Some(stored("a", 0))), Some(stored("a", 0)), "forgotten with the source");
    }
}
