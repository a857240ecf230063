//! kubesim: an in-memory Kubernetes API server for end-to-end tests and the local sandbox.
//!
//! Start one with [`KubeSim::start`]; it serves the API over HTTP on loopback, writes a
//! kubeconfig for kubectl, hands out [`kube::Client`]s and a [`Faults`] handle for breaking the
//! API on purpose. Dropping it stops the server.

mod error;
mod events;
mod faults;
mod fields;
mod kinds;
mod openapi;
mod patch;
mod proto;
mod registry;
mod schema;
mod selector;
mod server;
mod store;
mod table;
mod tokens;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use faults::{Faults, LoggedRequest, Matcher};

/// How to start the emulator.
#[derive(Clone, Debug)]
pub struct Options {
    pub addr: SocketAddr,
    /// How many changes the watch history keeps; older resumes get 410 Gone.
    pub history_limit: usize,
    /// How often watches that allow bookmarks get one.
    pub bookmark_interval: Duration,
    /// Where to write the kubeconfig; a temporary file when unset.
    pub kubeconfig: Option<PathBuf>,
    /// The `iss` of the ServiceAccount tokens it issues and of its OIDC discovery document; the
    /// server's own URL when unset.
    pub service_account_issuer: Option<String>,
    /// The audiences the API server accepts as its own (`--api-audiences`: what a TokenRequest
    /// without audiences gets, what a TokenReview without audiences checks); the issuer when
    /// empty. k3s and RKE2 add `k3s` and `rke2`.
    pub api_audiences: Vec<String>,
    /// The Kubernetes minor version it answers as, where answers differ between minors (the
    /// message of a CEL rule's cause: 1.37 no longer names the type of the value): 34 or 37,
    /// the versions the project tests; 34 by default.
    pub minor: u32,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            history_limit: 200_000,
            bookmark_interval: Duration::from_secs(1),
            kubeconfig: None,
            service_account_issuer: None,
            api_audiences: vec![],
            minor: 34,
        }
    }
}

/// A running emulator.
pub struct KubeSim {
    addr: SocketAddr,
    shared: Arc<server::Shared>,
    kubeconfig: PathBuf,
    temp_kubeconfig: bool,
    task: tokio::task::JoinHandle<()>,
}

impl KubeSim {
    pub async fn start() -> std::io::Result<Self> {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(opts: Options) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(opts.addr).await?;
        let addr = listener.local_addr()?;
        let (mut state, _tx) = store::State::new(opts.history_limit);
        state.minor = opts.minor;
        let issuer_url = opts.service_account_issuer.clone().unwrap_or_else(|| format!("http://{addr}"));
        let shared = Arc::new(server::Shared {
            state: Mutex::new(state),
            faults: Faults::default(),
            bookmark_interval: opts.bookmark_interval,
            issuer: tokens::Issuer::new(issuer_url, opts.api_audiences.clone())?,
            minor: opts.minor,
        });
        let app = server::router(shared.clone());
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "kubesim server stopped");
            }
        });
        let temp_kubeconfig = opts.kubeconfig.is_none();
        let kubeconfig = opts.kubeconfig.unwrap_or_else(|| {
            std::env::temp_dir().join(format!("kubesim-{}-{}.kubeconfig", std::process::id(), addr.port()))
        });
        let sim = Self { addr, shared, kubeconfig, temp_kubeconfig, task };
        std::fs::write(&sim.kubeconfig, sim.kubeconfig_yaml())?;
        Ok(sim)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// A kubeconfig whose current context points at this server, namespace `default`.
    pub fn kubeconfig_yaml(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: kubesim\n  cluster:\n    server: {}\ncontexts:\n- name: kubesim\n  context:\n    cluster: kubesim\n    user: kubesim\n    namespace: default\ncurrent-context: kubesim\nusers:\n- name: kubesim\n  user: {{}}\npreferences: {{}}\n",
            self.url()
        )
    }

    /// A client for this server, default namespace `default`.
    pub fn client(&self) -> kube::Client {
        let uri: http::Uri = self.url().parse().unwrap_or_default();
        let mut config = kube::Config::new(uri);
        config.default_namespace = "default".into();
        config.read_timeout = None;
        kube::Client::try_from(config).unwrap_or_else(|e| panic!("kubesim: cannot build a client: {e}"))
    }

    /// The `iss` of the ServiceAccount tokens this server issues.
    pub fn service_account_issuer(&self) -> &str {
        &self.shared.issuer.url
    }

    /// The audiences the API server accepts as its own.
    pub fn api_audiences(&self) -> Vec<String> {
        self.shared.issuer.api_audiences()
    }

    /// Changes them, as a restart with another `--api-audiences` would (the issuer when empty).
    pub fn set_api_audiences(&self, audiences: &[&str]) {
        self.shared.issuer.set_api_audiences(audiences.iter().map(|a| a.to_string()).collect());
    }

    pub fn faults(&self) -> &Faults {
        &self.shared.faults
    }

    /// Forgets the watch history, so watchers that resume get 410 Gone and re-list.
    pub fn compact(&self) {
        self.shared.state().compact();
    }

    /// The current cluster-wide resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.state().rv
    }

    pub fn object_count(&self) -> usize {
        self.shared.state().object_count()
    }
}

/// This process's resident memory in MiB (from /proc; 0 where there is none), for the benchmarks.
pub fn resident_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

impl Drop for KubeSim {
    fn drop(&mut self) {
        self.task.abort();
        if self.temp_kubeconfig {
            let _ = std::fs::remove_file(&self.kubeconfig);
        }
    }
}
