//! Which TokenSources refer to which Secrets and upstream TokenSources, so a Secret event finds
//! the TokenSources it affects without scanning them all; and the resourceVersions of the
//! Secrets they refer to.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;

use crate::crd::TokenSource;

/// What a TokenSource refers to, as index keys.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum RefKey {
    /// A Secret it reads credentials from or writes its token to.
    Secret(String, String),
    /// The TokenSource it takes its bearer token from.
    Upstream(String, String),
    /// The TokenSource itself, by name.
    Source(String, String),
}

/// Which TokenSources refer to which Secrets and upstream TokenSources, so a Secret event finds
/// the TokenSources it affects without scanning them all. Every reconcile records its
/// TokenSource's references; references only change with the spec, and a spec change reconciles.
///
/// Compact, as it holds an entry per reference of every TokenSource: keys are kept as salted
/// 64-bit hashes (a collision, about one in 10^10 at 100,000 keys, only reconciles a TokenSource
/// for nothing), each TokenSource's name is stored once and shared, and lists are allocated to
/// size.
#[derive(Default)]
pub struct References {
    inner: std::sync::Mutex<ReferencesInner>,
    hasher: RandomState,
}

type Shared = Arc<ObjectRef<TokenSource>>;

#[derive(Default)]
struct ReferencesInner {
    by_source: HashMap<Shared, Box<[u64]>>,
    /// Most keys have one or two referrers: a list costs far less than a set per key.
    by_key: HashMap<u64, Vec<Shared>>,
}

impl References {
    fn lock(&self) -> std::sync::MutexGuard<'_, ReferencesInner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn key(&self, k: &RefKey) -> u64 {
        self.hasher.hash_one(k)
    }

    /// Records what `ts` refers to now.
    pub fn record(&self, ts: &TokenSource) {
        let ns = ts.namespace().unwrap_or_default();
        let mut keys: Vec<u64> =
            ts.spec.secret_refs().into_iter().map(|r| self.key(&RefKey::Secret(ns.clone(), r.name))).collect();
        keys.push(self.key(&RefKey::Secret(ns.clone(), ts.spec.target.name.clone())));
        keys.push(self.key(&RefKey::Source(ns.clone(), ts.name_any())));
        if let Some(up) = ts.spec.upstream() {
            keys.push(self.key(&RefKey::Upstream(ns.clone(), up.to_string())));
        }
        keys.sort_unstable();
        keys.dedup();
        // Names only: the resourceVersion and uid are not copied into every entry.
        let r = ObjectRef::new(&ts.name_any()).within(&ns);
        let mut inner = self.lock();
        if inner.by_source.get(&r).is_some_and(|had| **had == *keys) {
            return;
        }
        // Removed from every key it had, so it is in none of the lists below.
        Self::remove(&mut inner, &r);
        let r = Arc::new(r);
        for k in &keys {
            match inner.by_key.entry(*k) {
                Entry::Occupied(mut list) => list.get_mut().push(r.clone()),
                Entry::Vacant(slot) => {
                    slot.insert(vec![r.clone()]);
                }
            }
        }
        inner.by_source.insert(r, keys.into_boxed_slice());
    }

    fn remove(inner: &mut ReferencesInner, r: &ObjectRef<TokenSource>) {
        for k in inner.by_source.remove(r).unwrap_or_default() {
            if let Some(list) = inner.by_key.get_mut(&k) {
                if let Some(i) = list.iter().position(|x| **x == *r) {
                    list.swap_remove(i);
                }
                if list.is_empty() {
                    inner.by_key.remove(&k);
                }
            }
        }
    }

    /// Forgets one TokenSource.
    pub fn forget(&self, r: &ObjectRef<TokenSource>) {
        Self::remove(&mut self.lock(), r);
    }

    /// Forgets TokenSources that no longer exist.
    pub fn retain(&self, live: &HashSet<ObjectRef<TokenSource>>) {
        let mut inner = self.lock();
        let gone: Vec<Shared> = inner.by_source.keys().filter(|r| !live.contains(&***r)).cloned().collect();
        for r in gone {
            Self::remove(&mut inner, &r);
        }
    }

    /// Whether a TokenSource reads or writes the Secret `ns/name`.
    pub fn refers_to_secret(&self, ns: &str, name: &str) -> bool {
        let key = self.key(&RefKey::Secret(ns.into(), name.into()));
        self.lock().by_key.contains_key(&key)
    }

    /// The TokenSources chained to the TokenSource `ns/name`: woken when it is deleted, since the
    /// garbage collector may take its Secret (their other wake-up) long after, or never.
    pub fn chained_to(&self, ns: &str, name: &str) -> Vec<ObjectRef<TokenSource>> {
        let key = self.key(&RefKey::Upstream(ns.into(), name.into()));
        self.lock().by_key.get(&key).map(|list| list.iter().map(|r| (**r).clone()).collect()).unwrap_or_default()
    }

    /// The TokenSources affected by a change to a Secret: those that read or write it, and for a
    /// target Secret its owner and every TokenSource chained to the owner.
    pub fn affected(&self, ns: &str, name: &str, owner: Option<&str>) -> Vec<ObjectRef<TokenSource>> {
        let mut keys = vec![self.key(&RefKey::Secret(ns.into(), name.into()))];
        if let Some(o) = owner {
            keys.push(self.key(&RefKey::Source(ns.into(), o.into())));
            keys.push(self.key(&RefKey::Upstream(ns.into(), o.into())));
        }
        let inner = self.lock();
        let mut out: Vec<ObjectRef<TokenSource>> =
            keys.iter().filter_map(|k| inner.by_key.get(k)).flatten().map(|r| (**r).clone()).collect();
        drop(inner);
        out.sort_unstable_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        out.dedup();
        out
    }
}

/// The resourceVersion of each Secret a TokenSource refers to, kept from a metadata watch of
/// every Secret: a cached credential is fresh while its version has not moved. Secrets nothing
/// refers to are passed over, so memory does not grow with the cluster's other Secrets; a Secret
/// that comes to be referred to is read once and remembered from then on.
#[derive(Default)]
pub struct SecretVersions {
    inner: std::sync::Mutex<Versions>,
    synced: AtomicBool,
    notify: tokio::sync::Notify,
}

#[derive(Default)]
struct Versions {
    current: HashMap<(String, String), String>,
    /// Built during a re-list, then taken as the whole truth.
    relist: Option<HashMap<(String, String), String>>,
}

impl SecretVersions {
    fn lock(&self) -> std::sync::MutexGuard<'_, Versions> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes one event of the metadata watch.
    pub fn observe(&self, event: &watcher::Event<PartialObjectMeta<Secret>>, refs: &References) {
        let key = |m: &PartialObjectMeta<Secret>| (m.namespace().unwrap_or_default(), m.name_any());
        let version = |m: &PartialObjectMeta<Secret>| m.metadata.resource_version.clone().unwrap_or_default();
        let mut v = self.lock();
        match event {
            watcher::Event::Init => v.relist = Some(HashMap::new()),
            watcher::Event::InitApply(m) => {
                let k = key(m);
                if refs.refers_to_secret(&k.0, &k.1) || v.current.contains_key(&k) {
                    v.relist.get_or_insert_default().insert(k, version(m));
                }
            }
            watcher::Event::InitDone => {
                if let Some(all) = v.relist.take() {
                    v.current = all;
                }
                drop(v);
                self.synced.store(true, Ordering::Release);
                self.notify.notify_waiters();
            }
            watcher::Event::Apply(m) => {
                let k = key(m);
                if refs.refers_to_secret(&k.0, &k.1) || v.current.contains_key(&k) {
                    v.current.insert(k, version(m));
                }
            }
            watcher::Event::Delete(m) => {
                v.current.remove(&key(m));
            }
        }
    }

    /// The version the watch last reported for `ns/name`, if it is one a TokenSource refers to.
    pub fn get(&self, ns: &str, name: &str) -> Option<String> {
        self.lock().current.get(&(ns.to_string(), name.to_string())).cloned()
    }

    /// A version read from the API, for a Secret the watch passed over before anything referred
    /// to it; what the watch reports wins.
    pub fn remember(&self, ns: &str, name: &str, version: &str) {
        self.lock().current.entry((ns.to_string(), name.to_string())).or_insert_with(|| version.to_string());
    }

    /// Forgets Secrets nothing refers to any more.
    pub fn retain(&self, refs: &References) {
        self.lock().current.retain(|(ns, name), _| refs.refers_to_secret(ns, name));
    }

    pub fn len(&self) -> usize {
        self.lock().current.len()
    }

    /// Returns once the first listing of Secrets has been seen.
    pub async fn wait_synced(&self) {
        loop {
            let notified = self.notify.notified();
            if self.synced.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn source(name: &str, creds: &str, target: &str, upstream: Option<&str>) -> TokenSource {
        let auth = match upstream {
            Some(u) => json!({"type": "Bearer", "bearer": {"tokenSourceRef": {"name": u}}}),
            None => {
                json!({"type": "Basic", "basic": {"username": {"value": "u"}, "passwordSecretRef": {"name": creds, "key": "p"}}})
            }
        };
        serde_json::from_value(json!({
            "apiVersion": "tokensource.dev/v1alpha1", "kind": "TokenSource",
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"type": "HTTP", "http": {"url": "https://x.example/t", "auth": auth}, "target": {"name": target}}
        }))
        .unwrap()
    }

    #[test]
    fn references_find_affected_sources_without_a_scan() {
        let refs = References::default();
        let a = source("a", "creds", "a-token", None);
        let b = source("b", "other", "b-token", Some("a"));
        refs.record(&a);
        refs.record(&b);
        let names = |v: Vec<ObjectRef<TokenSource>>| v.into_iter().map(|r| r.name).collect::<Vec<_>>();
        assert_eq!(names(refs.affected("ns", "creds", None)), vec!["a"]);
        assert_eq!(names(refs.affected("other-ns", "creds", None)), Vec::<String>::new());
        // a's target Secret changed: a itself and b, which is chained to a.
        assert_eq!(names(refs.affected("ns", "a-token", Some("a"))), vec!["a", "b"]);
        // A spec change moves a's credentials to another Secret.
        refs.record(&source("a", "rotated", "a-token", None));
        assert!(refs.affected("ns", "creds", None).is_empty());
        assert_eq!(names(refs.affected("ns", "rotated", None)), vec!["a"]);
        refs.retain(&[ObjectRef::from_obj(&b)].into_iter().collect());
        assert!(refs.affected("ns", "rotated", None).is_empty());
        refs.forget(&ObjectRef::from_obj(&b));
        assert!(refs.affected("ns", "a-token", Some("a")).is_empty());
    }

    fn meta(name: &str, rv: &str) -> PartialObjectMeta<Secret> {
        serde_json::from_value(json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": "ns", "resourceVersion": rv}}))
        .unwrap()
    }

    #[test]
    fn versions_keep_only_referenced_secrets() {
        let refs = References::default();
        refs.record(&source("a", "creds", "a-token", None));
        let v = SecretVersions::default();
        v.observe(&watcher::Event::Init, &refs);
        v.observe(&watcher::Event::InitApply(meta("creds", "1")), &refs);
        v.observe(&watcher::Event::InitApply(meta("unrelated", "2")), &refs);
        v.observe(&watcher::Event::InitDone, &refs);
        assert_eq!(v.get("ns", "creds").as_deref(), Some("1"));
        assert_eq!(v.get("ns", "unrelated"), None, "an unrelated Secret is not kept");
        v.observe(&watcher::Event::Apply(meta("creds", "3")), &refs);
        v.observe(&watcher::Event::Apply(meta("other", "4")), &refs);
        assert_eq!((v.get("ns", "creds").as_deref(), v.len()), (Some("3"), 1));
        // Read from the API before the watch reported it: remembered, and the watch then wins.
        v.remember("ns", "late", "5");
        v.observe(&watcher::Event::Apply(meta("late", "6")), &refs);
        assert_eq!(v.get("ns", "late").as_deref(), Some("6"));
        v.remember("ns", "late", "5");
        assert_eq!(v.get("ns", "late").as_deref(), Some("6"), "an older read does not win");
        v.observe(&watcher::Event::Delete(meta("creds", "7")), &refs);
        assert_eq!(v.get("ns", "creds"), None);
        v.retain(&refs);
        assert_eq!(v.len(), 0, "\"late\" is referred to by nothing");
    }
}
