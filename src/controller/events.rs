//! Events (`events.k8s.io/v1`) about TokenSources, with series for repeats.
//!
//! kube's `Recorder` keeps a full copy of every Event it published, with its key, for six
//! minutes and scans all of them on every publish: at 10,000 TokenSources created together that
//! is tens of MiB held for the one `TokenIssued` each gets, and a quadratic scan. This recorder
//! keeps, per recent Event, a 64-bit key, its name and count (about 100 bytes), and expires them
//! in the order they were seen. A repeat within [`SERIES_WINDOW`] (same object, type, reason,
//! action and note) updates the first Event's `series` instead of creating another, as
//! client-go's recorder does.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::sync::Mutex;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::error::Error;
use crate::leader::Leadership;

/// How long after its last occurrence a repeat still counts in the same series (client-go's
/// and kube's six minutes).
pub const SERIES_WINDOW: SignedDuration = SignedDuration::from_mins(6);

/// One Event to publish.
pub struct Occurrence<'a> {
    pub warning: bool,
    pub reason: &'a str,
    pub action: &'a str,
    pub note: &'a str,
}

/// Publishes Events and remembers recent ones compactly.
pub struct Recorder {
    client: kube::Client,
    controller: String,
    instance: String,
    hasher: RandomState,
    recent: Mutex<Recent>,
}

#[derive(Default)]
struct Recent {
    by_key: HashMap<u64, Seen>,
    /// Keys in the order they were last seen (a key seen again appears again; the older entry
    /// is skipped when it comes up).
    order: VecDeque<(Timestamp, u64)>,
}

struct Seen {
    /// The Event's name, in the object's namespace.
    name: String,
    count: i32,
    last: Timestamp,
}

/// What a publish does.
#[derive(Debug, PartialEq)]
enum Write {
    /// Creates an Event of this name.
    Create(String),
    /// Patches the series of the named Event.
    Series { name: String, count: i32 },
}

impl Recent {
    /// Forgets what is older than the window, then records an occurrence of `key` at `now`.
    fn record(&mut self, key: u64, now: Timestamp, new_name: impl FnOnce() -> String) -> Write {
        while let Some(&(seen, oldest)) = self.order.front() {
            if seen + SERIES_WINDOW > now {
                break;
            }
            self.order.pop_front();
            if self.by_key.get(&oldest).is_some_and(|s| s.last + SERIES_WINDOW <= now) {
                self.by_key.remove(&oldest);
            }
        }
        self.order.push_back((now, key));
        match self.by_key.get_mut(&key) {
            Some(seen) => {
                seen.count = seen.count.saturating_add(1);
                seen.last = now;
                Write::Series { name: seen.name.clone(), count: seen.count }
            }
            None => {
                let name = new_name();
                self.by_key.insert(key, Seen { name: name.clone(), count: 1, last: now });
                Write::Create(name)
            }
        }
    }

    /// Forgets a key whose Event could not be created (a repeat creates it again).
    fn forget(&mut self, key: u64) {
        self.by_key.remove(&key);
    }
}

impl Recorder {
    pub fn new(client: kube::Client, controller: &str, instance: Option<String>) -> Self {
        Self {
            client,
            controller: controller.to_string(),
            instance: instance.unwrap_or_else(|| controller.to_string()),
            hasher: RandomState::new(),
            recent: Mutex::default(),
        }
    }

    fn key(&self, regarding: &ObjectReference, ev: &Occurrence<'_>) -> u64 {
        let mut h = self.hasher.build_hasher();
        (&regarding.namespace, &regarding.name, &regarding.uid).hash(&mut h);
        (ev.warning, ev.reason, ev.action, ev.note).hash(&mut h);
        h.finish()
    }

    /// Creates the Event, or counts a repeat in the series of the first one; the request is
    /// fenced like every write.
    pub async fn publish(
        &self,
        regarding: &ObjectReference,
        ev: Occurrence<'_>,
        leadership: &Leadership,
    ) -> Result<(), Error> {
        let now = Timestamp::now();
        let key = self.key(regarding, &ev);
        let new_name =
            || format!("{}.{:x}", regarding.name.as_deref().unwrap_or(&self.controller), now.as_nanosecond());
        let plan = self.recent.lock().unwrap_or_else(|p| p.into_inner()).record(key, now, new_name);
        let api: Api<Event> = Api::namespaced(self.client.clone(), regarding.namespace.as_deref().unwrap_or("default"));
        let result = match &plan {
            Write::Create(name) => {
                let event = Event {
                    metadata: ObjectMeta { name: Some(name.clone()), ..Default::default() },
                    action: Some(ev.action.into()),
                    reason: Some(ev.reason.into()),
                    note: Some(ev.note.into()),
                    type_: Some(if ev.warning { "Warning" } else { "Normal" }.into()),
                    event_time: Some(MicroTime(now)),
                    regarding: Some(regarding.clone()),
                    reporting_controller: Some(self.controller.clone()),
                    reporting_instance: Some(self.instance.clone()),
                    ..Default::default()
                };
                leadership
                    .fenced(async { api.create(&PostParams::default(), &event).await.map_err(Error::Kube) })
                    .await
                    .map(drop)
            }
            Write::Series { name, count } => {
                let patch = json!({ "series": { "count": count, "lastObservedTime": MicroTime(now) } });
                let write = async {
                    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.map_err(Error::Kube)
                };
                leadership.fenced(write).await.map(drop)
            }
        };
        if result.is_err() && matches!(plan, Write::Create(_)) {
            self.recent.lock().unwrap_or_else(|p| p.into_inner()).forget(key);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    #[test]
    fn a_repeat_within_the_window_joins_the_series_and_one_after_it_starts_anew() {
        let mut r = Recent::default();
        assert_eq!(r.record(1, at(0), || "a.1".into()), Write::Create("a.1".into()));
        assert_eq!(r.record(2, at(1), || "b.1".into()), Write::Create("b.1".into()));
        assert_eq!(r.record(1, at(60), || "a.2".into()), Write::Series { name: "a.1".into(), count: 2 });
        // Key 2 was last seen at 1 s: gone six minutes later, while key 1 (seen at 60 s) stays.
        assert_eq!(r.record(3, at(362), || "c.1".into()), Write::Create("c.1".into()));
        assert!(!r.by_key.contains_key(&2) && r.by_key.contains_key(&1));
        assert_eq!(r.record(1, at(400), || "a.3".into()), Write::Series { name: "a.1".into(), count: 3 });
        assert_eq!(r.record(1, at(759), || "a.4".into()), Write::Series { name: "a.1".into(), count: 4 });
        // Six minutes after its last occurrence a repeat starts a new Event.
        assert_eq!(r.record(1, at(1119), || "a.5".into()), Write::Create("a.5".into()));
    }

    #[test]
    fn memory_is_bounded_by_the_window_not_by_history() {
        let mut r = Recent::default();
        for i in 0..10_000u64 {
            r.record(i, at(i as i64), || format!("ts-{i}"));
        }
        // Six minutes of one Event a second.
        assert_eq!(r.by_key.len(), 360);
        assert!(r.order.len() <= 361);
    }
}
