//! The controller. Each reconcile of a TokenSource is one pipeline, one file per step:
//!
//! ```text
//!  load.rs          validate.rs        decide.rs                                    status.rs
//!  target Secret ─▶ spec checks   ─▶  keep or fetch? ── keep ──────────────────────▶ Ready, requeue
//!  credentials      (pure)            backoff pending?  (pure)                       at renewal
//!  upstream                                  │ fetch
//!                                            ▼
//!                                  fetch.rs ──▶ secret.rs ──▶ apply.rs ──▶ status.rs
//!                                  provider     render the    write the     Ready, TokenIssued
//!                                  request      Secret        Secret (SSA)
//!
//!  any error ──▶ failure.rs (pure policy: Ready?, count, retry time, Event) ──▶ status.rs
//! ```
//!
//! `reconcile.rs` runs the pipeline; `memory.rs` is what this instance remembers between
//! reconciles (issued tokens and failures, until the TokenSource goes); `index.rs` maps Secrets
//! to the TokenSources that use them; `watch.rs` wires the watches and starts the controller.

mod apply;
mod audit;
mod config;
mod decide;
mod events;
mod failure;
mod fetch;
mod flight;
mod index;
mod load;
mod memory;
mod reconcile;
mod restart;
mod shared;
mod status;
mod validate;
mod waiting;
mod watch;

use std::sync::Arc;

use kube::api::Api;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource};

pub use config::Config;
pub use decide::{Decision, decide};
pub use failure::hint;
pub use fetch::build_request;
pub use load::service_account_token;
pub use validate::{Plan, validate};
pub use watch::{StartError, run};

use crate::crd::TokenSource;
use crate::metrics::Metrics;
use crate::transport::Transport;

/// The field manager for everything the operator writes.
pub const MANAGER: &str = "tokensource-operator";

/// What every reconcile shares: the client, the caches, the memory and the token transport.
pub struct Context {
    client: Client,
    config: Config,
    transport: Transport,
    sources: Store<TokenSource>,
    targets: Store<crate::secret::Managed>,
    /// The versions of the Secrets TokenSources refer to.
    versions: Arc<index::SecretVersions>,
    credentials: load::CredentialCache,
    /// TokenSources waiting for a request slot of a busy host.
    waiting: waiting::Waiting,
    /// TokenSources refused while the fence had lapsed, for when it is renewed.
    refused: waiting::Refused,
    /// Token requests in flight, each on a task of its own, and their results.
    flights: flight::Flights,
    memory: Arc<memory::Memory>,
    references: Arc<index::References>,
    /// When the periodic work last ran.
    ticks: std::sync::Mutex<watch::Ticks>,
    recorder: events::Recorder,
    metrics: Arc<Metrics>,
    /// Who reads which Secret, with `--audit-consumers`.
    consumers: Option<Arc<audit::Consumers>>,
    /// Tokens shared by TokenSources that send identical requests.
    shared: shared::SharedTokens,
    /// Reconciles TokenSources from inside a reconcile (sharers of a new token).
    retrigger: tokio::sync::mpsc::Sender<ObjectRef<TokenSource>>,
}

impl Context {
    /// The API for `K` in one namespace.
    fn api<K>(&self, ns: &str) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        scoped(&self.client, Some(ns))
    }
}

/// The API for `K` in one namespace, or across all of them.
fn scoped<K>(client: &Client, ns: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}
