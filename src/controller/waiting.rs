//! TokenSources waiting: for a request slot of a busy token endpoint host (each is called back as
//! soon as a request to that host ends, instead of polling for a slot: namespaces take turns, and
//! within a namespace in the order they came, so a tenant with many TokenSources on a shared host
//! does not make another wait behind all of them), and for the fence of this instance's
//! leadership to be renewed ([`Refused`]).

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

/// One host's waiters: a queue per namespace, and the namespaces in turn.
#[derive(Default)]
struct Queue {
    by_namespace: HashMap<String, VecDeque<ObjectRef<TokenSource>>>,
    turns: VecDeque<String>,
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
            let ns = ts.namespace.clone().unwrap_or_default();
            let queue = q.by_namespace.entry(ns.clone()).or_default();
            if queue.is_empty() {
                q.turns.push_back(ns);
            }
            queue.push_back(ts);
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
        self.lock().iter().map(|(h, q)| (h.clone(), q.queued.len())).collect()
    }

    /// The next TokenSource to take a slot of `host`, if any waits: the one that has waited
    /// longest in the namespace whose turn it is.
    pub fn next(&self, host: &str) -> Option<ObjectRef<TokenSource>> {
        let mut hosts = self.lock();
        let q = hosts.get_mut(host)?;
        let next = q.turns.pop_front().and_then(|ns| {
            let queue = q.by_namespace.get_mut(&ns)?;
            let next = queue.pop_front();
            if queue.is_empty() {
                q.by_namespace.remove(&ns);
            } else {
                q.turns.push_back(ns);
            }
            next
        });
        if let Some(n) = &next {
            q.queued.remove(n);
        }
        if q.turns.is_empty() {
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

    #[test]
    fn namespaces_take_turns() {
        let w = Waiting::default();
        let r = |ns: &str, n: &str| ObjectRef::<TokenSource>::new(n).within(ns);
        for i in 0..3 {
            w.wait("idp:443", r("busy", &format!("a{i}")));
        }
        w.wait("idp:443", r("quiet", "b0"));
        w.wait("idp:443", r("other", "c0"));
        let order: Vec<_> = std::iter::from_fn(|| w.next("idp:443")).map(|r| r.name).collect();
        assert_eq!(order, ["a0", "b0", "c0", "a1", "a2"]);
        assert_eq!(w.lengths(), vec![]);
        assert!(w.lock().is_empty());
    }
}
