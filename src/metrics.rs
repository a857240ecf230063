//! Prometheus metrics.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use kube::ResourceExt;
use kube::runtime::reflector::Store;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::crd::TokenSource;
use crate::leader::Leadership;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `Success` or the error reason, such as `ProviderRejected`.
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HostLabels {
    pub host: String,
    pub result: String,
}

/// The operator's metrics.
pub struct Metrics {
    /// The label sets of `token_requests` in use, so those of hosts no TokenSource uses any more
    /// can be removed.
    host_labels: std::sync::Mutex<std::collections::HashSet<HostLabels>>,
    pub registry: Registry,
    pub reconciles: Family<ResultLabels, Counter>,
    pub token_requests: Family<HostLabels, Counter>,
    /// Token request latency by host and status class.
    pub token_request_seconds: Family<LatencyLabels, Histogram, fn() -> Histogram>,
    /// Refreshes (token requests made for a TokenSource) by result and reason.
    pub refreshes: Family<RefreshLabels, Counter>,
    pub reconcile_seconds: Histogram,
    /// The per-TokenSource series, read from the controller's cache at each scrape.
    pub sources: Arc<SourceSeries>,
    /// The per-host series of request limits, read at each scrape.
    pub hosts: Arc<HostSeries>,
    pub secret_writes: Counter,
    pub status_writes: Counter,
    pub rollout_restarts: Counter,
    /// With `--audit-consumers`: Pods that read a Secret, as the audit keeps them.
    pub audited_pods: Gauge,
    pub ready_sources: Gauge,
    pub reconcile_panics: Counter,
    pub watch_errors: Family<WatchLabels, Counter>,
    /// 1 while this instance leads (always, without leader election), else 0.
    pub leader: Gauge,
    /// Token requests on their way (each on a task of its own, holding a request slot).
    pub requests_in_flight: Gauge,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LatencyLabels {
    pub host: String,
    /// `2xx`, `4xx`, `5xx` (the HTTP status class of the answer), or `error` when there was none
    /// (connection, TLS, timeout, policy).
    pub status_class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefreshLabels {
    /// `success` or `failure`.
    pub result: String,
    /// Why a token was requested (`NoToken`, `Renewal`, `SpecChanged`, `ManualRefresh`, ...) on
    /// success; the failure's reason (`ProviderRejected`, ...) on failure.
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ObjectLabels {
    namespace: String,
    name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConditionLabels {
    namespace: String,
    name: String,
    condition: &'static str,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 12))
}

/// The per-TokenSource series, in cert-manager's style: computed from the TokenSource cache at
/// each scrape, so a deleted TokenSource's series are gone at once and nothing is kept between
/// scrapes. Only the leader exports them (a standby's cache is as good, but two instances
/// exporting the same series would double every alert).
#[derive(Default)]
pub struct SourceSeries {
    view: std::sync::RwLock<Option<(Store<TokenSource>, Arc<Leadership>)>>,
}

impl std::fmt::Debug for SourceSeries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SourceSeries")
    }
}

impl SourceSeries {
    /// Exports the TokenSources in `store` while `leadership` leads.
    pub fn attach(&self, store: Store<TokenSource>, leadership: Arc<Leadership>) {
        *self.view.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some((store, leadership));
    }
}

fn seconds(t: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>) -> Option<f64> {
    t.as_ref().map(|t| t.0.as_millisecond() as f64 / 1000.0)
}

impl Collector for SourceSeries {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let view = self.view.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some((store, _)) = view.as_ref().filter(|(_, l)| l.is_leading()) else { return Ok(()) };
        let expiration = Family::<ObjectLabels, Gauge<f64, AtomicU64>>::default();
        let renewal = Family::<ObjectLabels, Gauge<f64, AtomicU64>>::default();
        let ready = Family::<ConditionLabels, Gauge>::default();
        let failing = Family::<ObjectLabels, Gauge>::default();
        for ts in store.state() {
            let object = ObjectLabels { namespace: ts.namespace().unwrap_or_default(), name: ts.name_any() };
            let status = ts.status.as_ref();
            if let Some(t) = status.and_then(|s| seconds(&s.expiration_time)) {
                expiration.get_or_create(&object).set(t);
            }
            if let Some(t) = status.and_then(|s| seconds(&s.renewal_time)) {
                renewal.get_or_create(&object).set(t);
            }
            failing.get_or_create(&object).set(status.map_or(0, |s| i64::from(s.failed_renewal_attempts)));
            let current = status
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
                .map_or("Unknown", |c| c.status.as_str());
            for condition in ["True", "False", "Unknown"] {
                let labels =
                    ConditionLabels { namespace: object.namespace.clone(), name: object.name.clone(), condition };
                ready.get_or_create(&labels).set(i64::from(condition == current));
            }
        }
        let series: [(&str, &str, &dyn EncodeMetric); 4] = [
            (
                "expiration_timestamp_seconds",
                "When the token in the TokenSource's Secret expires (Unix time)",
                &expiration,
            ),
            (
                "renewal_timestamp_seconds",
                "When the operator next asks for a token for the TokenSource: the scheduled renewal or the next retry (Unix time)",
                &renewal,
            ),
            ("ready_status", "The TokenSource's Ready condition: 1 for its current status, 0 for the others", &ready),
            (
                "failed_renewal_attempts",
                "Consecutive failed attempts to get a token for the TokenSource since its last success",
                &failing,
            ),
        ];
        for (name, help, metric) in series {
            metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)?;
        }
        Ok(())
    }
}

/// One token endpoint host's request limit, as [`HostSeries`] exports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostRow {
    /// `host:port`.
    pub host: String,
    pub limit: usize,
    pub in_flight: usize,
    /// TokenSources waiting for a request slot of the host.
    pub waiting: usize,
    /// Answers that throttled, failed or timed out, since the host was last idle and unused.
    pub throttled: u64,
}

type HostView = Arc<dyn Fn() -> Vec<HostRow> + Send + Sync>;

/// The per-host series: each token endpoint host's current request limit, requests in flight,
/// TokenSources waiting and throttling answers, read at each scrape (a host no TokenSource uses
/// any more is gone with its limit).
#[derive(Default)]
pub struct HostSeries {
    view: std::sync::RwLock<Option<HostView>>,
}

impl std::fmt::Debug for HostSeries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HostSeries")
    }
}

impl HostSeries {
    /// Exports what `view` returns at each scrape.
    pub fn attach(&self, view: HostView) {
        *self.view.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(view);
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HostOnly {
    host: String,
}

impl Collector for HostSeries {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let view = self.view.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let Some(view) = view else { return Ok(()) };
        let (limit, in_flight, waiting) = (
            Family::<HostOnly, Gauge>::default(),
            Family::<HostOnly, Gauge>::default(),
            Family::<HostOnly, Gauge>::default(),
        );
        let throttled = Family::<HostOnly, Counter>::default();
        let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        for row in view() {
            let labels = HostOnly { host: row.host };
            limit.get_or_create(&labels).set(gauge(row.limit));
            in_flight.get_or_create(&labels).set(gauge(row.in_flight));
            waiting.get_or_create(&labels).set(gauge(row.waiting));
            throttled.get_or_create(&labels).inc_by(row.throttled);
        }
        let series: [(&str, &str, &dyn EncodeMetric); 4] = [
            (
                "host_request_limit",
                "How many token requests the host may be sent at once now (it adapts between --min-requests-per-host and --max-requests-per-host)",
                &limit,
            ),
            ("host_requests_in_flight", "Token requests in flight to the host", &in_flight),
            ("host_requests_waiting", "TokenSources waiting for a request slot of the host", &waiting),
            (
                "host_throttled",
                "Answers of the host that throttled (429), failed (5xx) or timed out, which shrink its limit",
                &throttled,
            ),
        ];
        for (name, help, metric) in series {
            metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WatchLabels {
    /// Which watch: `tokensources`, `managed-secrets`, `secret-metadata`.
    pub watch: String,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("tokensource");
        let reconciles = Family::<ResultLabels, Counter>::default();
        let token_requests = Family::<HostLabels, Counter>::default();
        let token_request_seconds =
            Family::<LatencyLabels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        let refreshes = Family::<RefreshLabels, Counter>::default();
        let reconcile_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        let sources = Arc::new(SourceSeries::default());
        let hosts = Arc::new(HostSeries::default());
        let secret_writes = Counter::default();
        let status_writes = Counter::default();
        let rollout_restarts = Counter::default();
        let audited_pods = Gauge::default();
        let ready_sources = Gauge::default();
        let reconcile_panics = Counter::default();
        let watch_errors = Family::<WatchLabels, Counter>::default();
        let leader = Gauge::default();
        let requests_in_flight = Gauge::default();
        registry.register("reconciles", "Reconciliations by result", reconciles.clone());
        registry.register("token_requests", "Requests to token endpoints by host and result", token_requests.clone());
        registry.register(
            "token_request_duration_seconds",
            "Token endpoint latency by host and status class",
            token_request_seconds.clone(),
        );
        registry.register("refreshes", "Token requests made for TokenSources, by result and reason", refreshes.clone());
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile of a TokenSource takes",
            reconcile_seconds.clone(),
        );
        registry.register_collector(Box::new(sources.clone()));
        registry.register_collector(Box::new(hosts.clone()));
        registry.register("secret_writes", "Writes of target Secrets", secret_writes.clone());
        registry.register("status_writes", "Writes of TokenSource status", status_writes.clone());
        registry.register(
            "audited_pods",
            "With --audit-consumers: Pods that read a Secret, as the audit keeps them",
            audited_pods.clone(),
        );
        registry.register(
            "rollout_restarts",
            "Restarts of target.rolloutRestart workloads for new tokens",
            rollout_restarts.clone(),
        );
        registry.register("ready", "TokenSources whose Secret holds a valid token", ready_sources.clone());
        registry.register(
            "reconcile_panics",
            "Reconciles that panicked (each is reported on its TokenSource as InternalError)",
            reconcile_panics.clone(),
        );
        registry.register("watch_errors", "Errors of the operator's watches, by watch", watch_errors.clone());
        registry.register(
            "leader",
            "1 while this instance leads (holds the Lease, or runs without leader election), else 0",
            leader.clone(),
        );
        registry.register(
            "token_requests_in_flight",
            "Token requests on their way to token endpoints (no reconcile waits for one)",
            requests_in_flight.clone(),
        );
        Self {
            host_labels: Default::default(),
            registry,
            reconciles,
            token_requests,
            token_request_seconds,
            refreshes,
            reconcile_seconds,
            sources,
            hosts,
            secret_writes,
            status_writes,
            rollout_restarts,
            audited_pods,
            ready_sources,
            reconcile_panics,
            watch_errors,
            leader,
            requests_in_flight,
        }
    }
}

impl Metrics {
    /// Counts one token request to `host` with `result`.
    pub fn token_request(&self, host: &str, result: &str) {
        let labels = HostLabels { host: host.into(), result: result.into() };
        self.token_requests.get_or_create(&labels).inc();
        self.host_labels.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(labels);
    }

    /// Drops the series of hosts not in `live`.
    pub fn retain_hosts(&self, live: &std::collections::HashSet<String>) {
        let mut labels = self.host_labels.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        labels.retain(|l| {
            let keep = live.contains(&l.host);
            if !keep {
                self.token_requests.remove(l);
                for status_class in ["2xx", "3xx", "4xx", "5xx", "error"] {
                    let labels = LatencyLabels { host: l.host.clone(), status_class: status_class.into() };
                    self.token_request_seconds.remove(&labels);
                }
            }
            keep
        });
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::reflector;
    use kube::runtime::watcher::Event;

    fn source(name: &str, ready: &str) -> TokenSource {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "tokensource.dev/v1alpha1", "kind": "TokenSource",
            "metadata": {"name": name, "namespace": "team"},
            "spec": {"type": "OAuth2", "oauth2": {"tokenURL": "https://idp.example/token", "clientID": {"value": "a"},
                     "clientAuth": {"type": "ClientSecretBasic", "clientSecretRef": {"name": "c", "key": "k"}}},
                     "target": {"name": format!("{name}-token")}},
            "status": {"expirationTime": "2026-01-01T01:00:00Z", "renewalTime": "2026-01-01T00:40:00Z",
                       "conditions": [{"type": "Ready", "status": ready, "reason": "TokenValid", "message": "",
                                       "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
        }))
        .unwrap()
    }

    #[test]
    fn per_source_series_come_from_the_cache_and_only_from_the_leader() {
        let metrics = Metrics::default();
        let (store, mut writer) = reflector::store::<TokenSource>();
        writer.apply_watcher_event(&Event::Apply(source("a", "True")));
        writer.apply_watcher_event(&Event::Apply(source("b", "False")));
        let leadership = Arc::new(Leadership::elected());
        metrics.sources.attach(store, leadership.clone());
        assert!(!metrics.encode().contains("expiration_timestamp_seconds{"), "a standby exports no per-source series");

        let leadership = Arc::new(Leadership::single());
        let (store, mut writer) = reflector::store::<TokenSource>();
        writer.apply_watcher_event(&Event::Apply(source("a", "True")));
        writer.apply_watcher_event(&Event::Apply(source("b", "False")));
        metrics.sources.attach(store, leadership);
        let text = metrics.encode();
        for line in [
            "tokensource_expiration_timestamp_seconds{namespace=\"team\",name=\"a\"} 1767229200.0",
            "tokensource_renewal_timestamp_seconds{namespace=\"team\",name=\"a\"} 1767228000.0",
            "tokensource_ready_status{namespace=\"team\",name=\"a\",condition=\"True\"} 1",
            "tokensource_ready_status{namespace=\"team\",name=\"a\",condition=\"False\"} 0",
            "tokensource_ready_status{namespace=\"team\",name=\"b\",condition=\"False\"} 1",
            "# TYPE tokensource_ready_status gauge",
            "tokensource_failed_renewal_attempts{namespace=\"team\",name=\"a\"} 0",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        // Deleted: gone at the next scrape.
        writer.apply_watcher_event(&Event::Delete(source("b", "False")));
        let text = metrics.encode();
        assert!(!text.contains("name=\"b\"") && text.contains("name=\"a\""), "{text}");
    }
}
