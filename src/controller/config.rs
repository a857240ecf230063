//! How the controller runs.

use std::time::Duration;

/// How the controller runs.
#[derive(Clone, Debug)]
pub struct Config {
    /// Watch only this namespace; all namespaces when unset.
    pub namespace: Option<String>,
    /// How long before expiry a new token must be in the Secret at the latest.
    pub propagation_margin: Duration,
    /// Allow `http://` token endpoints (tests and local sandboxes only).
    pub allow_http: bool,
    /// How many TokenSources are reconciled at once.
    pub concurrency: u16,
    /// Watch Pods and report those that never see a renewed token (`ConsumersStale`).
    pub audit_consumers: bool,
    pub transport: crate::transport::Options,
    /// Whether this instance may call providers and write: always, unless it runs with leader
    /// election.
    pub leadership: std::sync::Arc<crate::leader::Leadership>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            namespace: None,
            propagation_margin: Duration::from_secs(120),
            allow_http: false,
            concurrency: 16,
            audit_consumers: false,
            transport: crate::transport::Options::default(),
            leadership: Default::default(),
        }
    }
}
