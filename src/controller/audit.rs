//! The consumer audit (`--audit-consumers`): Pods that read a target Secret in a way that never
//! sees a renewed token (`env`, `envFrom`, a `subPath` mount) are named on the TokenSource
//! (`ConsumersStale`) with a Warning Event per Pod.
//!
//! Pods are watched, not cached: each event is reduced at once to the Secrets the Pod reads and
//! how, and only that is kept (a few dozen bytes per consuming Pod; nothing for the others).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use super::Context;
use super::status::{Note, Outcome, condition, set_condition};
use crate::conditions::{ConditionType, Reason};
use crate::consumers::{self, How};
use crate::crd::TokenSource;

/// How many Pods a condition message names.
const NAMED: usize = 5;

/// One Pod's reading of one Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reader {
    pub pod: String,
    pub container: String,
    pub how: How,
}

/// A Secret in its namespace.
type SecretKey = (String, String);
/// How the containers of one Pod read a Secret: (container, how).
type Readings = Vec<(String, How)>;

/// Which Pods read which Secrets, and how.
#[derive(Default)]
pub struct Consumers {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// (namespace, Secret) → Pod → how its containers read it.
    by_secret: HashMap<SecretKey, BTreeMap<String, Readings>>,
    /// (namespace, Pod) → the Secrets it reads.
    by_pod: HashMap<(String, String), Vec<String>>,
    /// Pods seen since the watch began a re-list.
    relisted: Option<HashSet<(String, String)>>,
}

impl Consumers {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records a Pod as it is now; returns the Secrets whose readers changed.
    pub fn apply(&self, pod: &Pod) -> Vec<(String, String)> {
        let ns = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        let mut now: BTreeMap<String, Vec<(String, How)>> = BTreeMap::new();
        if let Some(spec) = &pod.spec {
            for secret in secrets_of(spec) {
                let found = consumers::consumptions(spec, &secret);
                if !found.is_empty() {
                    now.insert(secret, found.into_iter().map(|c| (c.container, c.how)).collect());
                }
            }
        }
        let mut inner = self.lock();
        if let Some(seen) = inner.relisted.as_mut() {
            seen.insert((ns.clone(), name.clone()));
        }
        let pod_key = (ns.clone(), name.clone());
        let before = inner.by_pod.remove(&pod_key).unwrap_or_default();
        let mut changed = vec![];
        for secret in before.iter().filter(|s| !now.contains_key(*s)) {
            let key = (ns.clone(), secret.clone());
            if let Some(pods) = inner.by_secret.get_mut(&key) {
                pods.remove(&name);
                if pods.is_empty() {
                    inner.by_secret.remove(&key);
                }
            }
            changed.push(key);
        }
        for (secret, how) in &now {
            let entry = inner.by_secret.entry((ns.clone(), secret.clone())).or_default();
            if entry.get(&name) != Some(how) {
                changed.push((ns.clone(), secret.clone()));
                entry.insert(name.clone(), how.clone());
            }
        }
        if !now.is_empty() {
            inner.by_pod.insert(pod_key, now.into_keys().collect());
        }
        changed.sort();
        changed.dedup();
        changed
    }

    /// Forgets a deleted Pod; returns the Secrets it read.
    pub fn delete(&self, pod: &Pod) -> Vec<(String, String)> {
        Self::remove_pod(&mut self.lock(), &pod.namespace().unwrap_or_default(), &pod.name_any())
    }

    fn remove_pod(inner: &mut Inner, ns: &str, name: &str) -> Vec<(String, String)> {
        let Some(secrets) = inner.by_pod.remove(&(ns.to_string(), name.to_string())) else { return vec![] };
        let mut changed = vec![];
        for s in secrets {
            let key = (ns.to_string(), s);
            if let Some(pods) = inner.by_secret.get_mut(&key) {
                pods.remove(name);
                if pods.is_empty() {
                    inner.by_secret.remove(&key);
                }
            }
            changed.push(key);
        }
        changed
    }

    /// A re-list begins: Pods not seen again before it ends are gone.
    pub fn relist_started(&self) {
        self.lock().relisted = Some(HashSet::new());
    }

    /// A re-list ended: forgets the Pods it did not list; returns the Secrets they read.
    pub fn relist_done(&self) -> Vec<(String, String)> {
        let mut inner = self.lock();
        let Some(seen) = inner.relisted.take() else { return vec![] };
        let gone: Vec<(String, String)> = inner.by_pod.keys().filter(|k| !seen.contains(*k)).cloned().collect();
        gone.iter().flat_map(|(ns, pod)| Self::remove_pod(&mut inner, ns, pod)).collect()
    }

    /// The Pods that read `secret` in `ns` and never see a renewed token.
    pub fn stale(&self, ns: &str, secret: &str) -> Vec<Reader> {
        let inner = self.lock();
        let Some(pods) = inner.by_secret.get(&(ns.to_string(), secret.to_string())) else { return vec![] };
        pods.iter()
            .flat_map(|(pod, hows)| {
                hows.iter().filter(|(_, how)| !how.sees_renewals()).map(|(container, how)| Reader {
                    pod: pod.clone(),
                    container: container.clone(),
                    how: *how,
                })
            })
            .collect()
    }

    /// How many Pods are kept (those that read a Secret at all).
    pub fn pods(&self) -> usize {
        self.lock().by_pod.len()
    }
}

/// The Secrets a Pod spec names anywhere.
fn secrets_of(spec: &k8s_openapi::api::core::v1::PodSpec) -> HashSet<String> {
    let mut names = HashSet::new();
    for v in spec.volumes.iter().flatten() {
        if let Some(n) = v.secret.as_ref().and_then(|s| s.secret_name.clone()) {
            names.insert(n);
        }
        for s in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(sec) = &s.secret {
                names.insert(sec.name.clone());
            }
        }
    }
    for c in spec.init_containers.iter().flatten().chain(spec.containers.iter()) {
        for e in c.env.iter().flatten() {
            if let Some(r) = e.value_from.as_ref().and_then(|f| f.secret_key_ref.as_ref()) {
                names.insert(r.name.clone());
            }
        }
        for e in c.env_from.iter().flatten() {
            if let Some(r) = &e.secret_ref {
                names.insert(r.name.clone());
            }
        }
    }
    names
}

impl Context {
    /// Sets `ConsumersStale` from the Pods that read the target Secret, and warns once per Pod.
    pub(super) async fn audit_consumers(&self, ts: &TokenSource, outcome: &mut Outcome, now: Timestamp) {
        let Some(consumers) = &self.consumers else { return };
        let ns = ts.namespace().unwrap_or_default();
        let target = &ts.spec.target.name;
        let stale = consumers.stale(&ns, target);
        let generation = ts.metadata.generation;
        let c = if stale.is_empty() {
            condition(ConditionType::ConsumersStale, false, Reason::AsExpected, String::new(), generation, now)
        } else {
            let mut pods: Vec<&str> = stale.iter().map(|r| r.pod.as_str()).collect();
            pods.dedup();
            let named: Vec<String> = stale
                .iter()
                .filter(|r| pods.iter().take(NAMED).any(|p| *p == r.pod))
                .map(|r| format!("pod/{} ({}: {})", r.pod, r.container, r.how.describe()))
                .collect();
            let more =
                if pods.len() > NAMED { format!(" and {} more Pods", pods.len() - NAMED) } else { String::new() };
            let message = format!(
                "{}{more} read Secret {target:?} in a way that never sees a renewed token; mount it as a volume without subPath, or list the workloads in target.rolloutRestart",
                named.join(", ")
            );
            condition(ConditionType::ConsumersStale, true, Reason::StaleConsumers, message, generation, now)
        };
        set_condition(&mut outcome.status.conditions, c);
        let me = kube::runtime::reflector::ObjectRef::from_obj(ts);
        for r in &stale {
            if self.memory.warn_once(&me, &format!("pod/{}", r.pod)) {
                let message = format!(
                    "Pod {} (container {}) reads Secret {target:?} through {}: it keeps the token it started with",
                    r.pod,
                    r.container,
                    r.how.describe()
                );
                self.publish(ts, Note { warning: true, reason: Reason::StaleConsumers, message }).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, spec: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({"metadata": {"name": name, "namespace": "team"}, "spec": spec}))
            .unwrap()
    }

    #[test]
    fn pods_are_reduced_to_who_reads_what_and_forgotten_when_gone() {
        let c = Consumers::default();
        let env = pod(
            "a",
            serde_json::json!({"containers": [{"name": "app", "env": [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "tok", "key": "token"}}}]}]}),
        );
        let mounted = pod(
            "b",
            serde_json::json!({"volumes": [{"name": "v", "secret": {"secretName": "tok"}}], "containers": [{"name": "app", "volumeMounts": [{"name": "v", "mountPath": "/t"}]}]}),
        );
        let unrelated = pod("c", serde_json::json!({"containers": [{"name": "app"}]}));
        assert_eq!(c.apply(&env), [("team".to_string(), "tok".to_string())]);
        c.apply(&mounted);
        c.apply(&unrelated);
        assert_eq!(c.pods(), 2, "a Pod that reads no Secret is not kept");
        let stale = c.stale("team", "tok");
        assert_eq!(stale, [Reader { pod: "a".into(), container: "app".into(), how: How::Env }]);
        assert!(c.apply(&env).is_empty(), "no change, nothing to reconcile");
        // A re-list that no longer lists `a`.
        c.relist_started();
        c.apply(&mounted);
        assert_eq!(c.relist_done(), [("team".to_string(), "tok".to_string())]);
        assert!(c.stale("team", "tok").is_empty());
        assert_eq!(c.delete(&mounted), [("team".to_string(), "tok".to_string())]);
        assert_eq!(c.pods(), 0);
    }
}
