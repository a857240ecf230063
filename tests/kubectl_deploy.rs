//! The install manifests and examples, applied with the real kubectl (to kubesim, or to the real
//! API server `TOKENSOURCE_E2E_KUBECONFIG` names), read back the way users read them.

#![cfg(test)]

mod common;

use std::process::Command;

/// kubesim, or a real cluster (shared with other tests: the examples go to a namespace of this
/// test's own).
struct Cluster {
    _sim: Option<kubesim::KubeSim>,
    kubeconfig: std::path::PathBuf,
    ns: String,
}

fn kubectl(cluster: &Cluster, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(std::env::var("KUBECTL").unwrap_or_else(|_| "/usr/bin/kubectl".into()))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("KUBECONFIG", &cluster.kubeconfig)
        .env("HOME", std::env::temp_dir())
        .output()
        .expect("kubectl is required for this test");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[tokio::test(flavor = "multi_thread")]
async fn deploy_and_examples_apply_cleanly() {
    let ns = format!("deploy-{:08x}", rand::random::<u32>());
    let sim = match std::env::var("TOKENSOURCE_E2E_KUBECONFIG") {
        Ok(path) if !path.is_empty() => Cluster { _sim: None, kubeconfig: path.into(), ns },
        _ => {
            let sim = kubesim::KubeSim::start().await.unwrap();
            Cluster { kubeconfig: sim.kubeconfig_path().to_path_buf(), _sim: Some(sim), ns }
        }
    };
    tokio::task::block_in_place(|| {
        let (ok, _, err) = kubectl(&sim, &["create", "namespace", &sim.ns]);
        assert!(ok, "{err}");
        let (ok, out, err) = kubectl(&sim, &["apply", "-k", "deploy/"]);
        assert!(ok, "kubectl apply -k deploy/ failed: {err}");
        // Created, or on a cluster where another suite installed it, configured or unchanged.
        let applied =
            |kind: &str| ["created", "configured", "unchanged"].iter().any(|w| out.contains(&format!("{kind} {w}")));
        for kind in [
            "customresourcedefinition.apiextensions.k8s.io/tokensources.tokensource.dev",
            "clusterrole.rbac.authorization.k8s.io/tokensource-operator",
            "deployment.apps/tokensource-operator",
            "poddisruptionbudget.policy/tokensource-operator",
            "role.rbac.authorization.k8s.io/tokensource-operator-leader-election",
            "rolebinding.rbac.authorization.k8s.io/tokensource-operator-leader-election",
        ] {
            assert!(applied(kind), "{out}");
        }
        for file in [
            "podero",
            "interswitch",
            "imburse-tenant-key",
            "imburse-management",
            "imburse-payout-hmac",
            "imburse-payout-from-management",
            "github-app",
            "google-service-account",
            "azure-workload-identity",
            "token-exchange",
        ] {
            let (ok, _, err) = kubectl(&sim, &["apply", "-n", &sim.ns, "-f", &format!("deploy/examples/{file}.yaml")]);
            assert!(ok, "{file}: {err}");
        }
        // Two replicas with leader election, each knowing its pod and namespace.
        let (ok, out, err) = kubectl(
            &sim,
            &[
                "get",
                "deployment",
                "tokensource-operator",
                "-n",
                "tokensource-system",
                "-o",
                "jsonpath={.spec.replicas} {.spec.template.spec.containers[0].args} {.spec.template.spec.containers[0].env[*].name}",
            ],
        );
        assert!(ok, "{err}");
        assert!(
            out.starts_with("2 ") && out.contains("--leader-elect") && out.contains("POD_NAME POD_NAMESPACE"),
            "{out}"
        );
        let (ok, out, err) = kubectl(
            &sim,
            &["get", "pdb", "-n", "tokensource-system", "tokensource-operator", "-o", "jsonpath={.spec.minAvailable}"],
        );
        assert!(ok && out == "1", "{out} {err}");
        let (ok, out, err) = kubectl(&sim, &["get", "tokensources", "-n", &sim.ns]);
        assert!(ok, "{err}");
        let header: Vec<&str> = out.lines().next().unwrap_or_default().split_whitespace().collect();
        assert_eq!(header, ["NAME", "READY", "REASON", "EXPIRES", "RENEWAL", "AGE"], "{out}");
        assert_eq!(out.lines().count(), 10, "{out}");
        let (ok, out, _) = kubectl(&sim, &["get", "tks", "-n", &sim.ns, "-o", "wide"]);
        assert!(ok && out.contains("SECRET") && out.contains("podero-token"), "{out}");
        let (ok, out, err) = kubectl(&sim, &["explain", "tokensource.spec.oauth2.clientAuth.type"]);
        assert!(ok, "{err}");
        let words = out.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            words.contains("`ClientSecretBasic`: `Authorization: Basic base64(id:secret)` (RFC 6749 section 2.3.1)"),
            "{out}"
        );
        let (ok, out, err) =
            kubectl(&sim, &["explain", "tokensource.spec.oauth2.clientAuth.serviceAccountToken.audience"]);
        assert!(ok && out.contains("api://AzureADTokenExchange"), "{out} {err}");
        // A ServiceAccount token for the Kubernetes API itself is refused by the schema.
        let api_audience = "apiVersion: tokensource.dev/v1alpha1\nkind: TokenSource\nmetadata: {name: api}\nspec:\n  type: OAuth2\n  oauth2:\n    tokenURL: https://x.example/token\n    clientID: {value: a}\n    clientAuth: {type: ServiceAccountToken, serviceAccountToken: {serviceAccountName: default, audience: https://kubernetes.default.svc.cluster.local}}\n  target: {name: api}\n";
        let path = std::env::temp_dir().join(format!("api-audience-{}.yaml", std::process::id()));
        std::fs::write(&path, api_audience).unwrap();
        let (ok, _, err) = kubectl(&sim, &["apply", "-n", &sim.ns, "-f", path.to_str().unwrap_or_default()]);
        let _ = std::fs::remove_file(&path);
        assert!(!ok && err.contains("a token for the Kubernetes API itself is not sent to token endpoints"), "{err}");
        // A mistake the schema catches is rejected at apply time with the rule's message.
        let bad = "apiVersion: tokensource.dev/v1alpha1\nkind: TokenSource\nmetadata: {name: bad}\nspec:\n  type: OAuth2\n  oauth2:\n    tokenURL: https://x.example/token\n    clientID: {value: a}\n    clientAuth: {type: Bearer}\n  target: {name: bad}\n";
        let path = std::env::temp_dir().join(format!("bad-tokensource-{}.yaml", std::process::id()));
        std::fs::write(&path, bad).unwrap();
        let (ok, _, err) = kubectl(&sim, &["apply", "-n", &sim.ns, "-f", &path.to_string_lossy()]);
        let _ = std::fs::remove_file(&path);
        assert!(!ok && err.contains("spec.oauth2.clientAuth.type: Unsupported value: \"Bearer\""), "{err}");
        if sim._sim.is_none() {
            let _ = kubectl(&sim, &["delete", "namespace", &sim.ns, "--wait=false"]);
        }
    });
}

#[test]
fn the_network_policy_component_renders() {
    let (docs, _) = common::kustomize("network-policy", &["components/network-policy"]);
    let policy = docs.iter().find(|d| d["kind"] == "NetworkPolicy").expect("a NetworkPolicy");
    assert_eq!(policy["spec"]["ingress"][0]["ports"][0]["port"], 8080);
    let egress: Vec<i64> = policy["spec"]["egress"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["ports"].as_array().unwrap().iter().map(|p| p["port"].as_i64().unwrap()))
        .collect();
    assert_eq!(egress, [53, 53, 443, 6443]);
    assert!(docs.iter().any(|d| d["kind"] == "Deployment"), "the component adds to the install");
}

#[test]
fn the_namespaced_component_has_no_cluster_wide_secret_access() {
    let (docs, _) = common::kustomize("namespaced", &["components/namespaced"]);
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert!(!kinds.contains(&"ClusterRole") && !kinds.contains(&"ClusterRoleBinding"), "{kinds:?}");
    let role = docs.iter().find(|d| d["kind"] == "Role" && d["metadata"]["name"] == "tokensource-operator").unwrap();
    assert_eq!(role["metadata"]["namespace"], "apps");
    assert!(role["rules"].as_array().unwrap().iter().any(|r| r["resources"][0] == "secrets"));
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let env = deployment["spec"]["template"]["spec"]["containers"][0]["env"].as_array().unwrap();
    assert!(env.iter().any(|e| e["name"] == "WATCH_NAMESPACE" && e["value"] == "apps"), "{env:?}");
}

#[test]
fn the_monitoring_component_scrapes_the_admin_port() {
    let (docs, _) = common::kustomize("monitoring", &["monitoring"]);
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    for kind in ["Service", "ServiceMonitor", "PrometheusRule", "Deployment"] {
        assert!(kinds.contains(&kind), "{kind} missing: {kinds:?}");
    }
    let monitor = docs.iter().find(|d| d["kind"] == "ServiceMonitor").unwrap();
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "admin");
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let ports = &deployment["spec"]["template"]["spec"]["containers"][0]["ports"];
    assert_eq!(ports[0]["name"], "admin", "the Service's targetPort names the container port");
}

/// Every install variant renders and passes the Kubernetes 1.33 schemas (strict: no unknown
/// field), checked offline by the Python package `kubernetes-validate` (`.ci/run` installs it;
/// the test fails, not skips, without it). The Prometheus Operator's kinds have no schema there.
#[test]
fn every_install_variant_passes_the_kubernetes_schemas() {
    for (variant, components) in [
        ("base", &[][..]),
        ("monitoring", &["monitoring"][..]),
        ("network-policy", &["components/network-policy"][..]),
        ("rollout-restart", &["components/rollout-restart"][..]),
        ("namespaced", &["components/namespaced"][..]),
        ("audit-consumers", &["components/audit-consumers"][..]),
        ("workload-identity", &["components/workload-identity"][..]),
        (
            "everything",
            &[
                "monitoring",
                "components/network-policy",
                "components/rollout-restart",
                "components/audit-consumers",
                "components/workload-identity",
            ][..],
        ),
    ] {
        let (docs, file) = common::kustomize(&format!("validate-{variant}"), components);
        assert!(docs.len() >= 9, "{variant}: {} documents", docs.len());
        common::validate_strict(&file, variant);
    }
}
