//! Fault injection and request accounting: failures, latency, a paused API, ended watches.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::error::ApiError;

/// What a request does, as the audit log names it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestInfo {
    pub verb: String,
    /// The plural resource, with `/status` for the status subresource.
    pub resource: String,
    pub namespace: String,
    pub name: String,
    /// The client's `User-Agent` header.
    pub user_agent: String,
}

/// One request as the log keeps it: what it did, who sent it, and how it was answered.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LoggedRequest {
    /// When the answer was sent, in milliseconds since the Unix epoch.
    pub at_unix_millis: u64,
    pub verb: String,
    pub resource: String,
    pub namespace: String,
    pub name: String,
    pub user_agent: String,
    /// The HTTP status of the answer (200 for a watch that started).
    pub code: u16,
}

impl LoggedRequest {
    /// A request that changed (or could have changed) stored state and succeeded.
    pub fn is_successful_write(&self) -> bool {
        matches!(self.verb.as_str(), "create" | "update" | "patch" | "delete" | "deletecollection")
            && (200..300).contains(&self.code)
    }
}

/// How many requests the log keeps (the oldest go first).
const LOG_CAPACITY: usize = 200_000;

/// Selects requests; an unset field matches anything.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Matcher {
    pub verb: Option<String>,
    pub resource: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// Matches requests whose `User-Agent` contains this text: one client's requests, to cut it
    /// off from the API while others go on (a partition).
    pub user_agent: Option<String>,
}

impl Matcher {
    pub fn new(verb: &str, resource: &str) -> Self {
        Self { verb: Some(verb.into()), resource: Some(resource.into()), ..Default::default() }
    }

    pub fn named(mut self, namespace: &str, name: &str) -> Self {
        self.namespace = Some(namespace.into());
        self.name = Some(name.into());
        self
    }

    /// Every request of the clients whose `User-Agent` contains `text`.
    pub fn from_client(text: &str) -> Self {
        Self { user_agent: Some(text.into()), ..Default::default() }
    }

    fn matches(&self, r: &RequestInfo) -> bool {
        let ok = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        ok(&self.verb, &r.verb)
            && ok(&self.resource, &r.resource)
            && ok(&self.namespace, &r.namespace)
            && ok(&self.name, &r.name)
            && self.user_agent.as_deref().is_none_or(|w| r.user_agent.contains(w))
    }
}

/// The next `count` matching requests fail with `code`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Failure {
    #[serde(flatten)]
    pub matcher: Matcher,
    pub count: u32,
    pub code: u16,
    #[serde(default)]
    pub retry_after_seconds: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Latency {
    #[serde(flatten)]
    pub matcher: Matcher,
    pub millis: u64,
}

#[derive(Default)]
struct Rules {
    failures: Vec<Failure>,
    latencies: Vec<Latency>,
    counts: BTreeMap<(String, String), u64>,
    log: std::collections::VecDeque<LoggedRequest>,
}

/// The handle tests hold to break the API on purpose and to count what clients did.
#[derive(Clone)]
pub struct Faults {
    rules: Arc<Mutex<Rules>>,
    paused: Arc<watch::Sender<bool>>,
    watch_epoch: Arc<watch::Sender<u64>>,
    held: Arc<watch::Sender<std::collections::BTreeSet<String>>>,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            rules: Arc::default(),
            paused: Arc::new(watch::channel(false).0),
            watch_epoch: Arc::new(watch::channel(0).0),
            held: Arc::new(watch::channel(Default::default()).0),
        }
    }
}

fn reason_for(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        409 => "Conflict",
        410 => "Expired",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "Unknown",
    }
}

impl Faults {
    fn rules(&self) -> MutexGuard<'_, Rules> {
        self.rules.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Makes the next `count` requests matching `matcher` fail with `code`.
    pub fn fail_next(&self, matcher: Matcher, count: u32, code: u16, retry_after_seconds: Option<u64>) {
        self.rules().failures.push(Failure { matcher, count, code, retry_after_seconds });
    }

    /// Delays every matching request.
    pub fn add_latency(&self, matcher: Matcher, delay: Duration) {
        self.rules().latencies.push(Latency { matcher, millis: delay.as_millis() as u64 });
    }

    pub fn clear(&self) {
        let mut r = self.rules();
        r.failures.clear();
        r.latencies.clear();
    }

    /// Requests hang until [`Faults::resume`].
    pub fn pause(&self) {
        self.paused.send_replace(true);
    }

    pub fn resume(&self) {
        self.paused.send_replace(false);
    }

    /// Ends every open watch now; clients reconnect from their last resourceVersion.
    pub fn end_watches(&self) {
        self.watch_epoch.send_modify(|e| *e += 1);
    }

    pub fn watch_epoch(&self) -> watch::Receiver<u64> {
        self.watch_epoch.subscribe()
    }

    /// Holds back the watch events of `resource` (`secrets`): open and new watches deliver them,
    /// in order, only after [`Faults::release_watch_events`] — a client's cache lagging behind the
    /// store (an overloaded API server's watch cache), while requests are answered as usual.
    pub fn hold_watch_events(&self, resource: &str) {
        self.held.send_modify(|h| {
            h.insert(resource.to_string());
        });
    }

    /// Delivers every held watch event and holds none any more.
    pub fn release_watch_events(&self) {
        self.held.send_modify(std::collections::BTreeSet::clear);
    }

    pub fn held_watch_events(&self) -> watch::Receiver<std::collections::BTreeSet<String>> {
        self.held.subscribe()
    }

    /// How many requests with this verb reached this resource (`secrets`, `tokensources/status`).
    pub fn count(&self, verb: &str, resource: &str) -> u64 {
        self.rules().counts.get(&(verb.to_string(), resource.to_string())).copied().unwrap_or(0)
    }

    pub fn counts(&self) -> BTreeMap<String, u64> {
        self.rules().counts.iter().map(|((v, r), n)| (format!("{v} {r}"), *n)).collect()
    }

    pub fn reset_counts(&self) {
        self.rules().counts.clear();
    }

    /// Logs the answer to one request (the last 200,000 are kept).
    pub fn record(&self, info: &RequestInfo, code: u16) {
        let at_unix_millis =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let mut r = self.rules();
        if r.log.len() >= LOG_CAPACITY {
            r.log.pop_front();
        }
        r.log.push_back(LoggedRequest {
            at_unix_millis,
            verb: info.verb.clone(),
            resource: info.resource.clone(),
            namespace: info.namespace.clone(),
            name: info.name.clone(),
            user_agent: info.user_agent.clone(),
            code,
        });
    }

    /// The logged requests, oldest first.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.rules().log.iter().cloned().collect()
    }

    pub fn clear_requests(&self) {
        self.rules().log.clear();
    }

    /// Runs the rules for one request: counts it, waits while paused, adds latency, and fails it
    /// when a failure rule says so.
    pub async fn admit(&self, info: &RequestInfo) -> Result<(), ApiError> {
        let (delay, failure) = {
            let mut r = self.rules();
            *r.counts.entry((info.verb.clone(), info.resource.clone())).or_default() += 1;
            let delay: u64 = r.latencies.iter().filter(|l| l.matcher.matches(info)).map(|l| l.millis).sum();
            let mut failure = None;
            if let Some(f) = r.failures.iter_mut().find(|f| f.count > 0 && f.matcher.matches(info)) {
                f.count -= 1;
                failure = Some((f.code, f.retry_after_seconds));
            }
            r.failures.retain(|f| f.count > 0);
            (delay, failure)
        };
        let mut paused = self.paused.subscribe();
        while *paused.borrow_and_update() {
            if paused.changed().await.is_err() {
                break;
            }
        }
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if let Some((code, retry_after)) = failure {
            let mut e = ApiError::new(
                code,
                reason_for(code),
                format!("kubesim: injected failure for {} {}", info.verb, info.resource),
            );
            e.retry_after = retry_after;
            return Err(e);
        }
        Ok(())
    }
}
