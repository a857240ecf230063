//! Prometheus metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

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
    pub token_request_seconds: Histogram,
    pub secret_writes: Counter,
    pub status_writes: Counter,
    pub ready_sources: Gauge,
    pub reconcile_panics: Counter,
    pub watch_errors: Family<WatchLabels, Counter>,
    /// 1 while this instance leads (always, without leader election), else 0.
    pub leader: Gauge,
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
        let token_request_seconds = Histogram::new(exponential_buckets(0.01, 2.0, 12));
        let secret_writes = Counter::default();
        let status_writes = Counter::default();
        let ready_sources = Gauge::default();
        let reconcile_panics = Counter::default();
        let watch_errors = Family::<WatchLabels, Counter>::default();
        let leader = Gauge::default();
        registry.register("reconciles", "Reconciliations by result", reconciles.clone());
        registry.register("token_requests", "Requests to token endpoints by host and result", token_requests.clone());
        registry.register("token_request_duration_seconds", "Token endpoint latency", token_request_seconds.clone());
        registry.register("secret_writes", "Writes of target Secrets", secret_writes.clone());
        registry.register("status_writes", "Writes of TokenSource status", status_writes.clone());
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
        Self {
            host_labels: Default::default(),
            registry,
            reconciles,
            token_requests,
            token_request_seconds,
            secret_writes,
            status_writes,
            ready_sources,
            reconcile_panics,
            watch_errors,
            leader,
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
