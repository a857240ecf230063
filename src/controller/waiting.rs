//! TokenSources waiting: for a request slot of a busy token endpoint host (each is called back,
//! in the order it came, as soon as a request to that host ends, instead of polling for a slot),
//! and for the fence of this instance's leadership to be renewed ([`Refused`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;

use kube::runtime::reflector::ObjectRef;

use crate::crd::TokenSource;

#[derive(Default)]
pub struct Waiting {
    hosts: Mutex<HashMap<String, Queue>>,
    /// Hosts whose `Retry-After` holds every request back, with a call-back planned for its end.
    held: Mutex<HashSet<String>>,
}

#[derive(Default)]
struct Queue {
    order: VecDeque<ObjectRef<TokenSource>>,
    queued: HashSet<ObjectRef<TokenSource>>,
}

impl Waiting {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Queue>> {
        self.hosts.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `ts` waits for a slot of `host` (once, however often it asks).
    pub fn wait(&self, host: &str, ts: ObjectRef<TokenSource>) {
        let mut hosts = self.lock();
        let q = hosts.entry(host.to_string()).or_default();
        if q.queued.insert(ts.clone()) {
            q.order.push_back(ts);
        }
    }

    /// Plans the call-back of `host`'s waiters when its hold ends: `false` if one is planned.
    pub fn hold(&self, host: &str) -> bool {
        self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(host.to_string())
    }

    /// The hold of `host` ended (its call-back is being made).
    pub fn held_over(&self, host: &str) {
        self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(host);
    }

    /// How many TokenSources wait for each host.
    pub fn lengths(&self) -> Vec<(String, usize)> {
        self.lock().iter().map(|(h, q)| (h.clone(), q.order.len())).collect()
    }

    /// The TokenSource that has waited longest for `host`, if any.
    pub fn next(&self, host: &str) -> Option<ObjectRef<TokenSource>> {
        let mut hosts = self.lock();
        let q = hosts.get_mut(host)?;
        let next = q.order.pop_front();
        if let Some(n) = &next {
            q.queued.remove(n);
        }
        if q.order.is_empty() {
            hosts.remove(host);
        }
        next
    }
}

/// TokenSources whose reconcile was refused while the leader's fence had lapsed under a slow
/// Lease renewal: reconciled again when the renewal succeeds.
#[derive(Default)]
pub struct Refused {
    set: Mutex<HashSet<ObjectRef<TokenSource>>>,
}

impl Refused {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<ObjectRef<TokenSource>>> {
        self.set.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn insert(&self, ts: ObjectRef<TokenSource>) {
        self.lock().insert(ts);
    }

    /// Whether `ts` was there.
    pub fn remove(&self, ts: &ObjectRef<TokenSource>) -> bool {
        self.lock().remove(ts)
    }

    /// Every TokenSource refused so far, leaving none.
    pub fn take(&self) -> Vec<ObjectRef<TokenSource>> {
        self.lock().drain().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiters_come_back_once_in_order_per_host() {
        let w = Waiting::default();
        let r = |n: &str| ObjectRef::<TokenSource>::new(n).within("ns");
        w.wait("a:443", r("one"));
        w.wait("a:443", r("two"));
        w.wait("a:443", r("one"));
        w.wait("b:443", r("three"));
        assert_eq!(w.next("a:443"), Some(r("one")));
        assert_eq!(w.next("a:443"), Some(r("two")));
        assert_eq!(w.next("a:443"), None);
        assert_eq!(w.next("b:443"), Some(r("three")));
        assert!(w.lock().is_empty(), "no empty queues are kept");
    }
}
