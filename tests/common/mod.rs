//! The end-to-end harness: a Kubernetes API (kubesim, or a real cluster when
//! `TOKENSOURCE_E2E_KUBECONFIG` names a kubeconfig), the fake providers, and the real controller
//! running in-process, scoped to a fresh namespace.
#![allow(dead_code)]
#![cfg(test)]

pub mod installed;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use fake_providers::{Config as FakeConfig, Fakes};
use k8s_openapi::api::core::v1::{Event as CoreEvent, Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tokensource_operator::admin::Health;
use tokensource_operator::controller::{self, Config};
use tokensource_operator::crd::TokenSource;
use tokensource_operator::metrics::{Metrics, ResultLabels};

pub struct Env {
    pub sim: Option<kubesim::KubeSim>,
    /// The admin: the tests' own reads and writes.
    pub client: Client,
    /// The operator's: the admin on kubesim; on a real API server a token of the
    /// `tokensource-operator` ServiceAccount with the RBAC `deploy/` grants (see [`Env::grant`]).
    pub operator_client: Client,
    pub fakes: Fakes,
    pub ns: String,
    pub config: Config,
    operator: Option<(tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>)>,
    pub metrics: Arc<Metrics>,
}

pub const WAIT: Duration = Duration::from_secs(20);

/// The transport settings of the tests: the fakes listen on 127.0.0.1, which the operator
/// refuses unless it is allowed, as users of in-cluster endpoints allow theirs.
pub fn local_endpoints() -> tokensource_operator::transport::Options {
    let endpoints = tokensource_operator::endpoint::EndpointPolicy::parse("127.0.0.1/32", "").unwrap();
    tokensource_operator::transport::Options { endpoints: Arc::new(endpoints), ..Default::default() }
}

/// A port free on loopback now (for a process started next).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// GETs `url`: the status and the body, or `None` when nothing answered.
pub async fn http_get(url: &str) -> Option<(u16, String)> {
    tokensource_operator::transport::install_crypto_provider();
    let r = reqwest::get(url).await.ok()?;
    let code = r.status().as_u16();
    Some((code, r.text().await.unwrap_or_default()))
}

/// Polls `f` every 50ms until it yields `Ok`, or fails the test after `timeout` with the last
/// state `f` described in its `Err`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let last = match f().await {
            Ok(v) => return v,
            Err(seen) => seen,
        };
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}; last seen: {last}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `Ok(v)` when `cond` holds, else the state seen, for [`eventually`].
pub fn check<T, S: std::fmt::Debug>(cond: bool, v: T, seen: S) -> Result<T, String> {
    if cond { Ok(v) } else { Err(format!("{seen:?}")) }
}

/// Installs the CRD and creates a fresh namespace named after `prefix`; returns its name.
pub async fn install(client: &Client, prefix: &str) -> String {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        "tokensources.tokensource.dev",
        &PatchParams::apply("e2e").force(),
        &Patch::Apply(tokensource_operator::crd::crd()),
    )
    .await
    .expect("installing the CRD");
    // A real API server serves the resource only once the CRD is established.
    let sources: Api<TokenSource> = Api::all(client.clone());
    eventually("the CRD established", WAIT, || async {
        match sources.list(&ListParams::default().limit(1)).await {
            Ok(_) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
    let ns = unique(prefix);
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap_or_default())
        .await
        .unwrap_or_else(|e| panic!("creating namespace {ns}: {e}"));
    ns
}

/// `kubectl <args>` as the admin of `TOKENSOURCE_E2E_KUBECONFIG`; its output, or the test fails
/// with what kubectl said.
fn kubectl(args: &[&str]) -> String {
    let admin = std::path::PathBuf::from(std::env::var("TOKENSOURCE_E2E_KUBECONFIG").unwrap_or_default());
    let (ok, out, err) = kubectl_at(&admin, args);
    assert!(ok, "kubectl {args:?}: {err}");
    out
}

/// The real `kubectl <args>` (`$KUBECTL`, else `/usr/bin/kubectl`) with `kubeconfig`, run in the
/// project's directory: whether it succeeded, its stdout and its stderr.
pub fn kubectl_at(kubeconfig: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let home = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kubectl-home");
    let out = std::process::Command::new(std::env::var("KUBECTL").unwrap_or_else(|_| "/usr/bin/kubectl".into()))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("KUBECONFIG", kubeconfig)
        .env("HOME", home)
        .output()
        .expect("kubectl is required for this test");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// Waits until the TokenSource CRD is established (a real API server serves it only then).
pub fn wait_crd_established(kubeconfig: &std::path::Path) {
    let crd = "crd/tokensources.tokensource.dev";
    let (ok, _, err) = kubectl_at(kubeconfig, &["wait", "--for", "condition=Established", "--timeout", "60s", crd]);
    assert!(ok, "the CRD was not established: {err}");
}

/// Deletes every RBAC object of the install (labelled `app.kubernetes.io/name:
/// tokensource-operator`), cluster-wide and in every namespace.
pub fn remove_operator_rbac(kubeconfig: &std::path::Path) {
    for (kinds, scope) in [("clusterrole,clusterrolebinding", None), ("role,rolebinding", Some("-A"))] {
        let mut args = vec!["delete", kinds, "-l", "app.kubernetes.io/name=tokensource-operator", "--wait"];
        args.extend(scope);
        let (ok, _, err) = kubectl_at(kubeconfig, &args);
        assert!(ok, "removing the install's RBAC: {err}");
    }
}

/// `kubectl apply --server-side` of files, as the admin.
fn kubectl_apply(files: &[std::path::PathBuf]) {
    let mut args = vec!["apply", "--server-side", "--force-conflicts", "--field-manager", "e2e-install"];
    for f in files {
        args.extend(["-f", f.to_str().unwrap()]);
    }
    kubectl(&args);
}

/// A client for the operator on a real API server: the ServiceAccount's token, never the admin's.
/// A permission the install lacks fails the test with the API server's Forbidden.
async fn as_operator(admin: &Client, mut config: kube::Config) -> Client {
    config.auth_info = kube::config::AuthInfo { token: Some(operator_token(admin).await.into()), ..Default::default() };
    Client::try_from(config).unwrap()
}

/// Grants the operator's ServiceAccount, in namespace `ns` only, what `part` of `deploy/` grants
/// (a file, or every file of a directory): its ClusterRoles bound by a RoleBinding in `ns`, its
/// Roles and RoleBindings moved to `ns`. A cluster-wide binding would grant it to every other
/// test of the cluster too, among them those that check what the operator does without it.
/// TokenReviews are not namespaced: `token-review.yaml` is applied as it is.
pub async fn grant(admin: &Client, ns: &str, part: &str) {
    use k8s_openapi::api::rbac::v1::RoleBinding;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy").join(part);
    let mut files: Vec<_> =
        if path.is_dir() { std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()).collect() } else { vec![path] };
    files.retain(|p| p.file_name().is_some_and(|n| n != "kustomization.yaml"));
    files.sort();
    let bindings: Api<RoleBinding> = Api::namespaced(admin.clone(), ns);
    let work = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("grant-{ns}"));
    std::fs::create_dir_all(&work).unwrap();
    for file in files {
        if file.file_name().is_some_and(|n| n == "token-review.yaml") {
            kubectl_apply(&[file]);
            continue;
        }
        let out = kubectl(&["create", "--dry-run=client", "-o", "json", "-f", file.to_str().unwrap()]);
        // One JSON document per object of the file.
        let objects: Vec<Value> = serde_json::Deserializer::from_str(&out).into_iter().map(|o| o.unwrap()).collect();
        for mut object in objects {
            let name = object["metadata"]["name"].as_str().unwrap().to_string();
            let kind = object["kind"].as_str().unwrap_or_default().to_string();
            match kind.as_str() {
                "ClusterRole" => {
                    let binding = json!({
                        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                        "metadata": {"name": name},
                        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
                        "subjects": [{"kind": "ServiceAccount", "name": "tokensource-operator", "namespace": "tokensource-system"}]
                    });
                    let file = work.join(format!("{name}.json"));
                    std::fs::write(&file, object.to_string()).unwrap();
                    kubectl_apply(&[file]);
                    bindings
                        .patch(&name, &PatchParams::apply("e2e").force(), &Patch::Apply(&binding))
                        .await
                        .unwrap_or_else(|e| panic!("binding {name} in {ns}: {e}"));
                }
                "Role" | "RoleBinding" => {
                    object["metadata"]["namespace"] = json!(ns);
                    let file = work.join(format!("{kind}-{name}.json"));
                    std::fs::write(&file, object.to_string()).unwrap();
                    kubectl_apply(&[file]);
                }
                _ => {}
            }
        }
    }
}

/// A token of the operator's ServiceAccount from the TokenRequest API, as the kubelet mounts one
/// into the operator's pod, after `deploy/`'s namespace, ServiceAccount, ClusterRole and
/// leader-election Role are applied.
async fn operator_token(admin: &Client) -> String {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    use k8s_openapi::api::core::v1::ServiceAccount;
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let files: Vec<_> = ["namespace.yaml", "serviceaccount.yaml", "rbac.yaml", "leader-election-rbac.yaml"]
        .map(|f| deploy.join(f))
        .into();
    kubectl_apply(&files);
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), "tokensource-system");
    let request = TokenRequest {
        spec: TokenRequestSpec { audiences: vec![], expiration_seconds: Some(3600), ..Default::default() },
        ..Default::default()
    };
    let minted = eventually("a token of the operator's ServiceAccount", WAIT, || async {
        accounts
            .create_token_request("tokensource-operator", &PostParams::default(), &request)
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    minted.status.expect("TokenRequest status").token
}

/// For an operator binary: on a real API server, a kubeconfig of the operator's ServiceAccount
/// (the admin's cluster, the ServiceAccount's token); on kubesim, `admin_kubeconfig` itself.
pub async fn operator_kubeconfig(admin: &Client, admin_kubeconfig: &std::path::Path, real: bool) -> std::path::PathBuf {
    if !real {
        return admin_kubeconfig.to_path_buf();
    }
    let token = operator_token(admin).await;
    let mut kc = kube::config::Kubeconfig::read_from(admin_kubeconfig).unwrap();
    for user in &mut kc.auth_infos {
        user.auth_info = Some(kube::config::AuthInfo { token: Some(token.clone().into()), ..Default::default() });
    }
    let path =
        std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("operator-{}.kubeconfig", unique("sa")));
    std::fs::write(&path, serde_json::to_string(&kc).unwrap()).unwrap();
    path
}

fn unique(prefix: &str) -> String {
    use rand::Rng;
    let n: u32 = rand::rng().random();
    format!("{prefix}-{n:08x}")
}

impl Env {
    pub async fn start() -> Self {
        Self::start_with(FakeConfig::default()).await
    }

    /// The fakes over HTTPS (certificate from the fixtures' test CA); the operator allows no http.
    pub async fn start_tls() -> Self {
        Self::start_inner(FakeConfig::default(), true).await
    }

    pub async fn start_with(fake_config: FakeConfig) -> Self {
        Self::start_inner(fake_config, false).await
    }

    /// The operator serving every namespace, as `deploy/` installs it (tests with several
    /// tenants); `ns` is the first tenant's namespace, [`Env::namespace`] makes more.
    /// An operator watching every namespace. On a real API server, where the tests that run at
    /// once share the cluster, it would serve their TokenSources too: `None` there (and says
    /// so) unless the test has the cluster to itself.
    pub async fn start_all_namespaces() -> Option<Self> {
        let mut env = Self::start_inner(FakeConfig::default(), false).await;
        if env.needs_the_cluster_alone("its operator watches every namespace, other tests' TokenSources too") {
            return None;
        }
        env.stop_operator().await;
        env.config.namespace = None;
        env.start_operator();
        Some(env)
    }

    /// Another namespace, with the Podero credentials in it.
    pub async fn namespace(&self, prefix: &str) -> String {
        let ns = install(&self.client, prefix).await;
        let c = self.fakes.config().podero;
        let creds = json!({"metadata": {"name": "podero-credentials"}, "stringData": {"client_id": c.id, "client_secret": c.secret}});
        Api::<Secret>::namespaced(self.client.clone(), &ns)
            .create(&PostParams::default(), &serde_json::from_value(creds).unwrap())
            .await
            .unwrap_or_else(|e| panic!("credentials in {ns}: {e}"));
        ns
    }

    async fn start_inner(fake_config: FakeConfig, tls: bool) -> Self {
        if let Ok(level) = std::env::var("TEST_LOG") {
            tokensource_operator::telemetry::init(&level, tokensource_operator::telemetry::LogFormat::Text);
        }
        let (sim, client, operator_client) = match std::env::var("TOKENSOURCE_E2E_KUBECONFIG") {
            Ok(path) if !path.is_empty() => {
                let kc = kube::config::Kubeconfig::read_from(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
                let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.unwrap();
                let client = Client::try_from(cfg.clone()).unwrap();
                let operator = as_operator(&client, cfg).await;
                (None, client, operator)
            }
            _ => {
                let sim = kubesim::KubeSim::start().await.expect("kubesim");
                let client = sim.client();
                (Some(sim), client.clone(), client)
            }
        };
        let ns = install(&client, "e2e").await;
        let (fakes, allow_http) = if tls {
            (Fakes::start_tls(fake_config).await.expect("fakes"), false)
        } else {
            (Fakes::start(fake_config).await.expect("fakes"), true)
        };
        let config = Config {
            namespace: Some(ns.clone()),
            propagation_margin: Duration::from_secs(1),
            allow_http,
            transport: local_endpoints(),
            ..Default::default()
        };
        let mut env = Self {
            sim,
            client,
            operator_client,
            fakes,
            ns,
            config,
            operator: None,
            metrics: Arc::new(Metrics::default()),
        };
        env.start_operator();
        env
    }

    pub fn start_operator(&mut self) {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let client = self.operator_client.clone();
        let config = self.config.clone();
        let metrics = self.metrics.clone();
        let handle = tokio::spawn(async move {
            let shutdown = async move {
                let _ = rx.await;
            };
            if let Err(e) = controller::run(client, config, metrics, Arc::new(Health::default()), shutdown).await {
                panic!("operator failed: {e}");
            }
        });
        self.operator = Some((tx, handle));
    }

    /// Stops the operator; whether it stopped within 10 s.
    pub async fn stop_operator(&mut self) -> bool {
        match self.operator.take() {
            Some((tx, handle)) => {
                let _ = tx.send(());
                tokio::time::timeout(Duration::from_secs(10), handle).await.is_ok()
            }
            None => true,
        }
    }

    pub async fn restart_operator(&mut self) {
        self.stop_operator().await;
        self.start_operator();
    }

    /// The admin kubeconfig: kubesim's, or the real cluster's (`TOKENSOURCE_E2E_KUBECONFIG`).
    pub fn kubeconfig_path(&self) -> std::path::PathBuf {
        match &self.sim {
            Some(sim) => sim.kubeconfig_path().to_path_buf(),
            None => std::env::var("TOKENSOURCE_E2E_KUBECONFIG").unwrap_or_default().into(),
        }
    }

    /// Whether this test must stop here because it runs on a real API server and needs
    /// kubesim (`why`: its fault injection, its request log, ...); says so in one line.
    pub fn kubesim_only(&self, why: &str) -> bool {
        if self.sim.is_none() {
            say(&format!("kubesim only: {why}; not run against a real API server"));
        }
        self.sim.is_none()
    }

    /// Whether this test must not run here: it replaces the cluster-wide CRD, which on a shared
    /// real API server would change it under every other test. It runs where nothing else does:
    /// on kubesim (each test has its own), or on a real server when the caller runs it alone
    /// (`TOKENSOURCE_E2E_EXCLUSIVE=1`, one test at a time; `./test` does). Says so when skipped.
    pub fn needs_the_cluster_alone(&self, why: &str) -> bool {
        let alone = self.sim.is_some() || std::env::var_os("TOKENSOURCE_E2E_EXCLUSIVE").is_some();
        if !alone {
            say(&format!("run alone later: {why}; ./test runs it with the cluster to itself"));
        }
        !alone
    }

    /// On a real API server, grants the operator's ServiceAccount, in this test's namespace, what
    /// `part` of `deploy/` grants: an opt-in component (`components/rollout-restart`, ...) or
    /// `leader-election-rbac.yaml`. See [`grant`]. kubesim authorises everything.
    pub async fn grant(&self, part: &str) {
        if self.sim.is_none() {
            grant(&self.client, &self.ns, part).await;
        }
    }

    pub fn sources(&self) -> Api<TokenSource> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    pub fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// Creates or replaces a credentials Secret.
    pub async fn put_secret(&self, name: &str, data: &[(&str, &str)]) {
        let data: serde_json::Map<String, Value> = data
            .iter()
            .map(|(k, v)| (k.to_string(), json!(base64::Engine::encode(&base64::engine::general_purpose::STANDARD, v))))
            .collect();
        let applied = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "data": data});
        self.secrets()
            .patch(name, &PatchParams::apply("e2e").force(), &Patch::Apply(&applied))
            .await
            .unwrap_or_else(|e| panic!("writing Secret {name}: {e}"));
    }

    /// Creates a TokenSource from JSON (`metadata.name` and `spec`).
    pub async fn create(&self, ts: Value) -> TokenSource {
        let mut v = ts;
        v["apiVersion"] = json!("tokensource.dev/v1alpha1");
        v["kind"] = json!("TokenSource");
        let obj: TokenSource = serde_json::from_value(v).expect("bad TokenSource in test");
        self.sources().create(&PostParams::default(), &obj).await.expect("creating TokenSource")
    }

    /// Creates a TokenSource right after the CRD was replaced: a real API server takes a moment
    /// to serve the new schema, so a refusal is tried again for a while.
    pub async fn create_under_new_crd(&self, ts: Value) -> TokenSource {
        let mut v = ts;
        v["apiVersion"] = json!("tokensource.dev/v1alpha1");
        v["kind"] = json!("TokenSource");
        let obj: TokenSource = serde_json::from_value(v).expect("bad TokenSource in test");
        eventually("the TokenSource accepted under the replaced CRD", WAIT, || async {
            self.sources().create(&PostParams::default(), &obj).await.map_err(|e| e.to_string())
        })
        .await
    }

    pub async fn source(&self, name: &str) -> TokenSource {
        self.sources().get(name).await.unwrap()
    }

    /// The Secret's data as text.
    pub async fn secret_data(&self, name: &str) -> Option<std::collections::BTreeMap<String, String>> {
        let s = self.secrets().get_opt(name).await.unwrap()?;
        Some(
            s.data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).to_string()))
                .collect(),
        )
    }

    /// Waits until the Secret holds a token different from `not`.
    pub async fn wait_token(&self, secret: &str, not: Option<&str>) -> String {
        eventually(&format!("a new token in Secret {secret}"), WAIT, || async {
            let Some(data) = self.secret_data(secret).await else { return Err("no Secret".into()) };
            match data.get("token") {
                Some(t) if Some(t.as_str()) != not => Ok(t.clone()),
                Some(_) => Err("the same token as before".into()),
                None => Err(format!("a Secret with keys {:?}", data.keys().collect::<Vec<_>>())),
            }
        })
        .await
    }

    /// The Ready condition's (status, reason, message).
    pub async fn ready(&self, name: &str) -> Option<(String, String, String)> {
        let ts = self.sources().get_opt(name).await.ok()??;
        let c = ts.status?.conditions.into_iter().find(|c| c.type_ == "Ready")?;
        Some((c.status, c.reason, c.message))
    }

    /// Waits for Ready to have `status` and `reason`; returns the message.
    pub async fn wait_ready(&self, name: &str, status: &str, reason: &str) -> String {
        eventually(&format!("{name} Ready={status} ({reason})"), WAIT, || async {
            match self.ready(name).await {
                Some((s, r, m)) if s == status && r == reason => Ok(m),
                Some(seen) => Err(format!("Ready={seen:?}")),
                None => Err("no Ready condition".into()),
            }
        })
        .await
    }

    /// The status of `name`, once it has one; the last state seen otherwise.
    pub async fn status(&self, name: &str) -> Result<tokensource_operator::crd::TokenSourceStatus, String> {
        match self.sources().get_opt(name).await {
            Ok(Some(ts)) => ts.status.ok_or_else(|| "no status".to_string()),
            Ok(None) => Err(format!("no TokenSource {name}")),
            Err(e) => Err(e.to_string()),
        }
    }

    /// How many reconciles this operator (across restarts) finished with `result` (`Success` or
    /// a failure reason).
    pub fn reconciles(&self, result: &str) -> u64 {
        self.metrics.reconciles.get_or_create(&ResultLabels { result: result.into() }).get()
    }

    /// Waits until `more` reconciles with `result` have finished since `before` was read.
    pub async fn wait_reconciles(&self, result: &str, before: u64, more: u64) {
        eventually(&format!("{more} more {result} reconciles"), WAIT, || async {
            let now = self.reconciles(result);
            check(now >= before + more, (), format!("{} of them", now - before))
        })
        .await
    }

    /// Events in the namespace about `name`: (type, reason, message).
    pub async fn events(&self, name: &str) -> Vec<(String, String, String)> {
        let api: Api<CoreEvent> = Api::namespaced(self.client.clone(), &self.ns);
        api.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.involved_object.name.as_deref() == Some(name))
            .map(|e| (e.type_.unwrap_or_default(), e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
            .collect()
    }

    /// Fails the test if any of `needles` appears in an Event, a TokenSource (spec, status,
    /// metadata) or a Secret other than the target Secrets named in `targets`.
    pub async fn assert_nothing_leaks(&self, needles: &[&str], targets: &[&str]) {
        let mut haystack = String::new();
        let events: Api<CoreEvent> = Api::namespaced(self.client.clone(), &self.ns);
        for e in events.list(&ListParams::default()).await.unwrap().items {
            haystack.push_str(&serde_json::to_string(&e).unwrap_or_default());
        }
        for t in self.sources().list(&ListParams::default()).await.unwrap().items {
            haystack.push_str(&serde_json::to_string(&t.status).unwrap_or_default());
            haystack.push_str(&serde_json::to_string(&t.metadata).unwrap_or_default());
        }
        for s in self.secrets().list(&ListParams::default()).await.unwrap().items {
            if targets.contains(&s.name_any().as_str()) {
                haystack.push_str(&serde_json::to_string(&s.metadata.annotations).unwrap_or_default());
                haystack.push_str(&serde_json::to_string(&s.metadata.labels).unwrap_or_default());
            }
        }
        for n in needles {
            assert!(!n.is_empty() && !haystack.contains(n), "a secret value leaked into events, status or annotations");
            let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, n);
            assert!(!haystack.contains(&b64), "a secret value leaked (base64) into events, status or annotations");
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some((tx, handle)) = self.operator.take() {
            let _ = tx.send(());
            handle.abort();
        }
        // A real cluster outlives the test: its namespace goes, so that an operator of a later
        // test serving every namespace does not find this test's TokenSources.
        if self.sim.is_none() {
            let home = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("e2e-kubectl-home");
            let _ = std::process::Command::new(std::env::var("KUBECTL").unwrap_or_else(|_| "/usr/bin/kubectl".into()))
                .args(["delete", "namespace", &self.ns, "--wait=false"])
                .env("KUBECONFIG", std::env::var("TOKENSOURCE_E2E_KUBECONFIG").unwrap_or_default())
                .env("HOME", home)
                .output();
        }
    }
}

/// A line on the test's stderr that the test harness does not capture: what a test skipped
/// shows in the output of a passing run too.
pub fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// A Podero TokenSource reading `podero-credentials`.
pub fn podero(env: &Env, name: &str, secret: &str) -> Value {
    json!({
        "metadata": {"name": name},
        "spec": {
            "type": "OAuth2",
            "oauth2": {
                "tokenURL": env.fakes.endpoint_url(fake_providers::Endpoint::Podero),
                "clientID": {"valueFrom": {"secretKeyRef": {"name": "podero-credentials", "key": "client_id"}}},
                "clientAuth": {"type": "ClientSecretBasic", "clientSecretRef": {"name": "podero-credentials", "key": "client_secret"}},
                "bodyType": "JSON",
                "headers": [{"name": "Cache-Control", "value": "no-cache"}]
            },
            "target": {"name": secret}
        }
    })
}

pub async fn podero_credentials(env: &Env) {
    let c = env.fakes.config().podero;
    env.put_secret("podero-credentials", &[("client_id", &c.id), ("client_secret", &c.secret)]).await;
}

/// A copy of a directory tree (kustomize takes relative paths only: `deploy/` beside an overlay).
pub fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Renders the install with `components` the way a user's overlay would (kustomize takes only
/// relative paths, so the install is copied beside the overlay); returns the documents and the
/// rendered file.
pub fn kustomize(variant: &str, components: &[&str]) -> (Vec<Value>, std::path::PathBuf) {
    let work = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("overlay-{variant}"));
    let _ = std::fs::remove_dir_all(&work);
    for part in ["deploy", "crds"] {
        copy_tree(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(part), &work.join(part));
    }
    let dir = work.join("overlay");
    std::fs::create_dir_all(&dir).unwrap();
    let components: Vec<String> = components.iter().map(|c| format!("../deploy/{c}")).collect();
    std::fs::write(
        dir.join("kustomization.yaml"),
        format!("resources: [../deploy]\ncomponents: [{}]\n", components.join(", ")),
    )
    .unwrap();
    let out = std::process::Command::new(std::env::var("KUBECTL").unwrap_or_else(|_| "/usr/bin/kubectl".into()))
        .args(["kustomize", "--load-restrictor", "LoadRestrictionsNone"])
        .arg(&dir)
        .output()
        .expect("kubectl is required for this test");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let file = work.join("rendered.yaml");
    std::fs::write(&file, &text).unwrap();
    (serde_saphyr::from_multiple(&text).unwrap(), file)
}

/// Checks rendered manifests against the Kubernetes 1.33 schemas (strict: no unknown field),
/// offline, with the Python package `kubernetes-validate` (`./test` installs it; the test fails,
/// not skips, without it). The Prometheus Operator's kinds have no schema there.
pub fn validate_strict(file: &std::path::Path, what: &str) {
    let bin = std::env::var("KUBERNETES_VALIDATE").unwrap_or_else(|_| "kubernetes-validate".into());
    let out = std::process::Command::new(&bin)
        .args(["-k", "1.33.0", "--strict", "--quiet"])
        .arg(file)
        .output()
        .unwrap_or_else(|e| panic!("{bin} is required for this test (pip install kubernetes-validate): {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && !text.contains("ERROR"), "{what}:\n{text}");
}

/// The issuer a federation fake must trust for this cluster's ServiceAccount tokens: kubesim's,
/// or on a real API server (`TOKENSOURCE_E2E_KUBECONFIG`) the one its OIDC discovery names —
/// and then the fakes trust the cluster's CA, which serves the discovery.
pub fn federation_issuer(sim: Option<&kubesim::KubeSim>, fakes: &Fakes) -> String {
    if let Some(sim) = sim {
        return sim.service_account_issuer().to_string();
    }
    let admin = std::path::PathBuf::from(std::env::var("TOKENSOURCE_E2E_KUBECONFIG").unwrap());
    let kc = kube::config::Kubeconfig::read_from(&admin).unwrap();
    let ca = kc.clusters[0].cluster.as_ref().and_then(|c| c.certificate_authority_data.clone()).expect("the CA");
    let ca = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, ca).unwrap();
    fakes.trust_issuer_ca(&ca).unwrap();
    let (ok, discovery, err) = kubectl_at(&admin, &["get", "--raw", "/.well-known/openid-configuration"]);
    assert!(ok, "the issuer's discovery: {err}");
    serde_json::from_str::<Value>(&discovery).unwrap()["issuer"].as_str().unwrap().to_string()
}
