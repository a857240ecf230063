//! Which TokenSources refer to which Secrets and upstream TokenSources, so a Secret event finds
//! the TokenSources it affects without scanning them all.

use std::collections::{HashMap, HashSet};

use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;

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
#[derive(Default)]
pub struct References {
    inner: std::sync::Mutex<ReferencesInner>,
}

#[derive(Default)]
struct ReferencesInner {
    by_source: HashMap<ObjectRef<TokenSource>, Vec<RefKey>>,
    by_key: HashMap<RefKey, HashSet<ObjectRef<TokenSource>>>,
}

impl References {
    fn lock(&self) -> std::sync::MutexGuard<'_, ReferencesInner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records what `ts` refers to now.
    pub fn record(&self, ts: &TokenSource) {
        let ns = ts.namespace().unwrap_or_default();
        let mut keys: Vec<RefKey> =
            ts.spec.secret_refs().into_iter().map(|r| RefKey::Secret(ns.clone(), r.name)).collect();
        keys.push(RefKey::Secret(ns.clone(), ts.spec.target.name.clone()));
        keys.push(RefKey::Source(ns.clone(), ts.name_any()));
        if let Some(up) = ts.spec.upstream() {
            keys.push(RefKey::Upstream(ns.clone(), up.to_string()));
        }
        keys.sort_by_key(|k| format!("{k:?}"));
        keys.dedup();
        let r = ObjectRef::from_obj(ts);
        let mut inner = self.lock();
        if inner.by_source.get(&r) == Some(&keys) {
            return;
        }
        Self::remove(&mut inner, &r);
        for k in &keys {
            inner.by_key.entry(k.clone()).or_default().insert(r.clone());
        }
        inner.by_source.insert(r, keys);
    }

    fn remove(inner: &mut ReferencesInner, r: &ObjectRef<TokenSource>) {
        for k in inner.by_source.remove(r).unwrap_or_default() {
            if let Some(set) = inner.by_key.get_mut(&k) {
                set.remove(r);
                if set.is_empty() {
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
        let gone: Vec<ObjectRef<TokenSource>> =
            inner.by_source.keys().filter(|r| !live.contains(*r)).cloned().collect();
        for r in gone {
            Self::remove(&mut inner, &r);
        }
    }

    /// The TokenSources affected by a change to a Secret: those that read or write it, and for a
    /// target Secret its owner and every TokenSource chained to the owner.
    pub fn affected(&self, ns: &str, name: &str, owner: Option<&str>) -> Vec<ObjectRef<TokenSource>> {
        let inner = self.lock();
        let mut keys = vec![RefKey::Secret(ns.into(), name.into())];
        if let Some(o) = owner {
            keys.push(RefKey::Source(ns.into(), o.into()));
            keys.push(RefKey::Upstream(ns.into(), o.into()));
        }
        let mut out: Vec<ObjectRef<TokenSource>> =
            keys.iter().filter_map(|k| inner.by_key.get(k)).flat_map(|set| set.iter().cloned()).collect();
        out.sort_by_key(|r| r.to_string());
        out.dedup();
        out
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
}
