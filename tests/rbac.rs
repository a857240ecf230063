//! The operator on the RBAC it ships: `deploy/` (and its components) rendered by kustomize and
//! applied with the real kubectl, then the operator binary started with the rendered Deployment's
//! arguments and environment and a token of its own ServiceAccount (TokenRequest), so it can do
//! only what the install grants. Run against the real API server (`tests/controlplane/run 1.37 --
//! cargo test --test rbac`), this is the proof that no verb or resource is missing from
//! `deploy/rbac.yaml`, the leader-election Role, the namespaced Role or an opt-in component:
//! any request the API server refuses (403) fails the test. kubesim authorises every request, so
//! there the test checks the wiring only, and says so.
//!
//! One test runs the variants one after another, each with only its own RBAC installed (the
//! objects labelled `app.kubernetes.io/name: tokensource-operator` are deleted in between):
//! otherwise the ClusterRole of one variant would grant what another must prove it does not need.

#![cfg(test)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::installed::{self, Operator};
use common::{WAIT, check, eventually};
use fake_providers::{Config as FakeConfig, Endpoint, Fakes};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret};
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use tokensource_operator::crd::TokenSource;

const SYSTEM: &str = "tokensource-system";

struct Cluster {
    _sim: Option<kubesim::KubeSim>,
    kubeconfig: PathBuf,
    client: Client,
    fakes: Fakes,
    work: PathBuf,
}

impl Cluster {
    async fn start() -> Self {
        let (sim, client, kubeconfig) = match std::env::var("TOKENSOURCE_E2E_KUBECONFIG") {
            Ok(path) if !path.is_empty() => {
                let kc = kube::config::Kubeconfig::read_from(&path).unwrap();
                let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.unwrap();
                (None, Client::try_from(cfg).unwrap(), PathBuf::from(path))
            }
            _ => {
                let sim = kubesim::KubeSim::start().await.unwrap();
                let (client, path) = (sim.client(), sim.kubeconfig_path().to_path_buf());
                (Some(sim), client, path)
            }
        };
        let fakes = Fakes::start(FakeConfig::default()).await.unwrap();
        let work = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("rbac-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).unwrap();
        Self { _sim: sim, kubeconfig, client, fakes, work }
    }

    fn real(&self) -> bool {
        self._sim.is_none()
    }

    fn kubectl(&self, args: &[&str]) -> (bool, String, String) {
        common::kubectl_at(&self.kubeconfig, args)
    }

    fn remove_rbac(&self) {
        common::remove_operator_rbac(&self.kubeconfig);
    }

    /// Removes the previous variant's RBAC, then renders `deploy/` with `components` the way a
    /// user's overlay does and applies it server-side; returns the Deployment as applied.
    fn install(&self, components: &[&str]) -> Deployment {
        self.remove_rbac();
        // kustomize takes relative paths only: a copy of deploy/ and crds/ beside the overlay.
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        for part in ["deploy", "crds"] {
            let _ = std::fs::remove_dir_all(self.work.join(part));
            common::copy_tree(&root.join(part), &self.work.join(part));
        }
        let overlay = self.work.join(format!("overlay-{}", components.join("-")));
        std::fs::create_dir_all(&overlay).unwrap();
        let components: Vec<String> = components.iter().map(|c| format!("../deploy/components/{c}")).collect();
        std::fs::write(
            overlay.join("kustomization.yaml"),
            format!("resources: [../deploy]\ncomponents: [{}]\n", components.join(", ")),
        )
        .unwrap();
        let (ok, rendered, err) =
            self.kubectl(&["kustomize", "--load-restrictor", "LoadRestrictionsNone", overlay.to_str().unwrap()]);
        assert!(ok, "rendering {overlay:?}: {err}");
        let file = overlay.join("rendered.yaml");
        std::fs::write(&file, rendered).unwrap();
        let (ok, out, err) = self.kubectl(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager",
            "rbac-test",
            "-o",
            "json",
            "-f",
            file.to_str().unwrap(),
        ]);
        assert!(ok, "applying deploy/ with {components:?}: {err}\n{out}");
        let applied: Value = serde_json::from_str(&out).unwrap();
        let deployment = applied["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["kind"] == "Deployment")
            .cloned()
            .expect("the install has a Deployment");
        common::wait_crd_established(&self.kubeconfig);
        serde_json::from_value(deployment).unwrap()
    }

    /// The operator binary as the applied Deployment runs it, as its ServiceAccount.
    async fn run(&self, deployment: &Deployment, name: &str) -> Operator {
        let kubeconfig =
            installed::service_account_kubeconfig(&self.client, &self.kubeconfig, &self.work, SYSTEM, deployment).await;
        installed::run(deployment, SYSTEM, name, &kubeconfig, &self.work)
    }

    async fn namespace(&self, name: &str) {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let ns = json!({"metadata": {"name": name}});
        let _ = namespaces.create(&PostParams::default(), &serde_json::from_value(ns).unwrap()).await;
        let c = self.fakes.config().podero;
        let creds = json!({"metadata": {"name": "podero-credentials"}, "stringData": {"client_id": c.id, "client_secret": c.secret}});
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), name);
        let _ = secrets.delete("podero-credentials", &Default::default()).await;
        secrets.create(&PostParams::default(), &serde_json::from_value(creds).unwrap()).await.unwrap();
        // The client ID from a ConfigMap, as users keep what is not secret: the install's
        // `get configmaps` is needed too.
        let client = json!({"metadata": {"name": "podero-client"}, "data": {"client_id": c.id}});
        let maps: Api<ConfigMap> = Api::namespaced(self.client.clone(), name);
        let _ = maps.delete("podero-client", &Default::default()).await;
        maps.create(&PostParams::default(), &serde_json::from_value(client).unwrap()).await.unwrap();
    }

    /// A Podero TokenSource, created by the admin (a tenant).
    async fn token_source(&self, ns: &str, name: &str, target: Value) {
        let ts = json!({
            "apiVersion": "tokensource.dev/v1alpha1", "kind": "TokenSource",
            "metadata": {"name": name},
            "spec": {
                "type": "OAuth2",
                "oauth2": {
                    "tokenURL": self.fakes.endpoint_url(Endpoint::Podero),
                    "clientID": {"valueFrom": {"configMapKeyRef": {"name": "podero-client", "key": "client_id"}}},
                    "clientAuth": {"type": "ClientSecretBasic", "clientSecretRef": {"name": "podero-credentials", "key": "client_secret"}},
                    "bodyType": "JSON",
                    "headers": [{"name": "Cache-Control", "value": "no-cache"}]
                },
                "target": target
            }
        });
        let sources: Api<TokenSource> = Api::namespaced(self.client.clone(), ns);
        sources.create(&PostParams::default(), &serde_json::from_value(ts).unwrap()).await.unwrap();
    }

    /// Waits for a valid token in the target Secret and `Ready=True`; returns the token.
    async fn wait_working(&self, ns: &str, name: &str, secret: &str, not: Option<&str>) -> String {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        let token = eventually(&format!("a token in {ns}/{secret}"), WAIT, || async {
            let s = secrets.get_opt(secret).await.map_err(|e| e.to_string())?;
            let token = s
                .and_then(|s| s.data)
                .and_then(|d| d.get("token").map(|t| String::from_utf8_lossy(&t.0).into_owned()))
                .filter(|t| self.fakes.is_valid(t) && Some(t.as_str()) != not);
            token.ok_or_else(|| "no valid new token yet".to_string())
        })
        .await;
        let sources: Api<TokenSource> = Api::namespaced(self.client.clone(), ns);
        eventually(&format!("{ns}/{name} Ready=True"), WAIT, || async {
            let ts = sources.get(name).await.map_err(|e| e.to_string())?;
            let ready = ts.status.and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "Ready"));
            check(
                ready.as_ref().is_some_and(|c| c.status == "True"),
                (),
                ready.map(|c| (c.status, c.reason, c.message)),
            )
        })
        .await;
        token
    }

    /// Events recorded for a TokenSource (events.k8s.io, as the operator writes them).
    async fn events_for(&self, ns: &str, name: &str) -> usize {
        let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(self.client.clone(), ns);
        let list = events.list(&Default::default()).await.unwrap();
        list.items.iter().filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)).count()
    }

    fn assert_nothing_refused(&self, operator: &Operator, variant: &str, ours: &[&str]) {
        let refused = operator.refusals(ours);
        assert!(refused.is_empty(), "{variant}: the API server refused the operator:\n{}", refused.join("\n"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_does_its_work_on_the_rbac_it_ships() {
    let cluster = Cluster::start().await;
    if cluster.real() {
        eprintln!("the real API server: RBAC is enforced");
    } else {
        eprintln!("kubesim authorises every request: this run checks the wiring, not the RBAC");
    }

    // The operator serves every namespace: other suites' TokenSources (the examples, the
    // rollout restarts of a test without the component) would be its work too.
    let (ok, _, err) = cluster.kubectl(&["delete", "tokensources", "--all", "--all-namespaces", "--wait=false"]);
    assert!(ok || err.contains("doesn't have a resource type"), "{err}");

    // 1. deploy/ as shipped: every namespace, leader election, the ClusterRole.
    let deployment = cluster.install(&[]);
    let tenant = "rbac-tenant";
    cluster.namespace(tenant).await;
    let operator = cluster.run(&deployment, "shipped").await;
    cluster.token_source(tenant, "api", json!({"name": "api-token"})).await;
    cluster.wait_working(tenant, "api", "api-token", None).await;
    let leases: Api<Lease> = Api::namespaced(cluster.client.clone(), SYSTEM);
    let holder = eventually("the operator holds the Lease", WAIT, || async {
        let lease = leases.get_opt("tokensource-operator").await.map_err(|e| e.to_string())?;
        let holder = lease.and_then(|l| l.spec?.holder_identity).unwrap_or_default();
        check(holder.starts_with("shipped"), holder.clone(), holder)
    })
    .await;
    eventually("an Event for the TokenSource", WAIT, || async {
        let n = cluster.events_for(tenant, "api").await;
        check(n > 0, (), n)
    })
    .await;
    cluster.assert_nothing_refused(&operator, "deploy/", &[tenant]);
    eprintln!("deploy/: token, Ready, Event and Lease ({holder}) with the shipped RBAC");
    drop(operator);

    let shipped_secret =
        |secrets: Api<Secret>| async move { secrets.get("api-token").await.unwrap().metadata.resource_version };
    let before = shipped_secret(Api::namespaced(cluster.client.clone(), tenant)).await;

    // 2. The namespaced mode: a Role in `apps` instead of the ClusterRole.
    // Its Role lives in the watched namespace, which exists before the install.
    cluster.namespace("apps").await;
    let deployment = cluster.install(&["namespaced"]);
    let operator = cluster.run(&deployment, "namespaced").await;
    cluster.token_source("apps", "api", json!({"name": "api-token"})).await;
    cluster.wait_working("apps", "api", "api-token", None).await;
    eventually("an Event for the TokenSource in apps", WAIT, || async {
        let n = cluster.events_for("apps", "api").await;
        check(n > 0, (), n)
    })
    .await;
    // The namespaced operator leaves other namespaces alone: the rbac-tenant Secret stays as the
    // first operator wrote it.
    let after = shipped_secret(Api::namespaced(cluster.client.clone(), "rbac-tenant")).await;
    assert_eq!(before, after, "the namespaced operator wrote outside its namespace");
    cluster.assert_nothing_refused(&operator, "components/namespaced", &["apps"]);
    eprintln!("components/namespaced: token, Ready and Event in apps with the Role only");
    drop(operator);

    // 3. The opt-in components: rollout restarts, the consumer audit and workload identity.
    cluster.fakes.set_lifetime(Endpoint::Podero, Duration::from_secs(8));
    let deployment = cluster.install(&["rollout-restart", "audit-consumers", "workload-identity"]);
    let tenant = "rbac-components";
    cluster.namespace(tenant).await;
    let operator = cluster.run(&deployment, "components").await;
    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), tenant);
    let workload = json!({"metadata": {"name": "api"}, "spec": {
        "selector": {"matchLabels": {"app": "api"}},
        "template": {"metadata": {"labels": {"app": "api"}}, "spec": {"containers": [{"name": "app", "image": "registry.example/app:1",
            "env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "api-token", "key": "token"}}}]}]}}}});
    deployments.create(&PostParams::default(), &serde_json::from_value(workload).unwrap()).await.unwrap();
    cluster
        .token_source(
            tenant,
            "api",
            json!({"name": "api-token", "rolloutRestart": {"workloads": [{"kind": "Deployment", "name": "api"}]}}),
        )
        .await;
    let first = cluster.wait_working(tenant, "api", "api-token", None).await;
    // A Pod that reads the token once, at start: the audit names it.
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), tenant);
    let reader = json!({"metadata": {"name": "reader"}, "spec": {"containers": [{"name": "app", "image": "registry.example/app:1",
        "env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "api-token", "key": "token"}}}]}]}});
    eventually("the reader Pod created", WAIT, || async {
        // Admission needs the namespace's default ServiceAccount, which the controller-manager makes.
        pods.create(&PostParams::default(), &serde_json::from_value(reader.clone()).unwrap())
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    let sources: Api<TokenSource> = Api::namespaced(cluster.client.clone(), tenant);
    eventually("ConsumersStale=True naming the reader", WAIT, || async {
        let ts = sources.get("api").await.map_err(|e| e.to_string())?;
        let c = ts.status.and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "ConsumersStale"));
        check(
            c.as_ref().is_some_and(|c| c.status == "True" && c.message.contains("pod/reader")),
            (),
            c.map(|c| c.message),
        )
    })
    .await;
    cluster.wait_working(tenant, "api", "api-token", Some(&first)).await;
    let restarted = eventually("the Deployment restarted after the renewal", WAIT, || async {
        let d = deployments.get("api").await.map_err(|e| e.to_string())?;
        let at = d.spec.and_then(|s| s.template.metadata?.annotations?.get("tokensource.dev/restartedAt").cloned());
        check(at.is_some(), at.clone().unwrap_or_default(), (d.metadata.name, at))
    })
    .await;
    // Workload identity: a ServiceAccount token (TokenRequest, then TokenReview) as Entra's
    // federated client assertion, verified by the fake against the cluster's published keys.
    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(cluster.client.clone(), tenant);
    accounts
        .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "payments"}})).unwrap())
        .await
        .unwrap();
    let audience = "api://AzureADTokenExchange";
    cluster.fakes.set_entra_federation(Some(fake_providers::federation::Federation {
        issuer: common::federation_issuer(cluster._sim.as_ref(), &cluster.fakes),
        subject: format!("system:serviceaccount:{tenant}:payments"),
        audience: audience.into(),
    }));
    let entra = json!({
        "apiVersion": "tokensource.dev/v1alpha1", "kind": "TokenSource",
        "metadata": {"name": "vault"},
        "spec": {
            "type": "OAuth2",
            "oauth2": {
                "tokenURL": cluster.fakes.endpoint_url(Endpoint::EntraToken),
                "clientID": {"value": cluster.fakes.config().entra_client_id},
                "clientAuth": {"type": "ServiceAccountToken", "serviceAccountToken": {"serviceAccountName": "payments", "audience": audience}},
                "scopes": ["https://vault.azure.net/.default"]
            },
            "target": {"name": "vault-token"}
        }
    });
    let sources: Api<TokenSource> = Api::namespaced(cluster.client.clone(), tenant);
    sources.create(&PostParams::default(), &serde_json::from_value(entra).unwrap()).await.unwrap();
    cluster.wait_working(tenant, "vault", "vault-token", None).await;
    cluster.assert_nothing_refused(
        &operator,
        "components/rollout-restart, audit-consumers, workload-identity",
        &[tenant],
    );
    eprintln!(
        "components: the audit named the reader Pod; the Deployment restarted at {restarted}; a ServiceAccount token federated"
    );
    drop(operator);
    // The cluster may serve more suites: no operator RBAC beyond what they install is left.
    cluster.remove_rbac();
}
