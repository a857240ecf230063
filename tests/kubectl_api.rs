//! The TokenSource API as users meet it through the real kubectl: every CEL rule of the CRD (and
//! the schema checks that stand in for the controller's) refuses a broken TokenSource at apply
//! time, with its message at its field path; defaults are visible in what `kubectl get` shows.

#![cfg(test)]

use std::process::{Command, Stdio};

use serde_json::{Value, json};

mod cel_cases;
use cel_cases::{cases, http, oauth2, set};

/// kubesim, or the real API server `TOKENSOURCE_E2E_KUBECONFIG` names, with a namespace of the
/// test's own (a real cluster is shared by the tests that run at once).
struct Cluster {
    _sim: Option<kubesim::KubeSim>,
    kubeconfig: std::path::PathBuf,
    ns: String,
}

impl Cluster {
    async fn start() -> Self {
        let ns = format!("api-{:08x}", rand::random::<u32>());
        let cluster = match std::env::var("TOKENSOURCE_E2E_KUBECONFIG") {
            Ok(path) if !path.is_empty() => Self { _sim: None, kubeconfig: path.into(), ns },
            _ => {
                let sim = kubesim::KubeSim::start().await.expect("kubesim");
                Self { kubeconfig: sim.kubeconfig_path().to_path_buf(), _sim: Some(sim), ns }
            }
        };
        tokio::task::block_in_place(|| {
            let (ok, _, err) = kubectl(&cluster, &["create", "namespace", &cluster.ns], None);
            assert!(ok, "{err}");
        });
        cluster
    }

    /// The CRD, server-side, and established.
    fn install_crd(&self) {
        let crd = tokensource_operator::crd::crd_yaml().expect("CRD");
        let (ok, _, err) = kubectl(
            self,
            &["apply", "--server-side", "--force-conflicts", "--field-manager", "kubectl-api-test", "-f", "-"],
            Some(&crd),
        );
        assert!(ok, "{err}");
        let (ok, _, err) = kubectl(
            self,
            &["wait", "--for", "condition=Established", "--timeout", "60s", "crd/tokensources.tokensource.dev"],
            None,
        );
        assert!(ok, "{err}");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self._sim.is_none() {
            let _ = kubectl(self, &["delete", "namespace", &self.ns, "--wait=false"], None);
        }
    }
}

fn kubectl(cluster: &Cluster, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    use std::io::Write;
    let mut child = Command::new(std::env::var("KUBECTL").unwrap_or_else(|_| "/usr/bin/kubectl".into()))
        .args(args)
        .args(["--namespace", &cluster.ns])
        .env("KUBECONFIG", &cluster.kubeconfig)
        .env("HOME", std::env::temp_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl is required for this test");
    if let Some(input) = stdin {
        child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("writing to kubectl");
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().expect("kubectl");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[tokio::test(flavor = "multi_thread")]
async fn every_rule_refuses_its_mistake_with_its_message_at_its_field() {
    let cluster = Cluster::start().await;
    tokio::task::block_in_place(|| {
        cluster.install_crd();
        for (kind, base) in [("oauth2", oauth2()), ("http", http())] {
            let (ok, _, err) = kubectl(&cluster, &["create", "--dry-run=server", "-f", "-"], Some(&base.to_string()));
            assert!(ok, "the valid {kind} base is accepted: {err}");
        }
        let cases = cases();
        for (i, c) in cases.iter().enumerate() {
            let (ok, _, err) = kubectl(&cluster, &["create", "-f", "-"], Some(&c.doc.to_string()));
            assert!(!ok, "case {i} ({}) was accepted", c.message);
            let want = format!("{}: Invalid value: ", c.field);
            assert!(
                err.contains(&want) && err.contains(c.message),
                "case {i}: want {want:?} and {:?} in:\n{err}",
                c.message
            );
        }
        eprintln!("{} CEL rules refused their mistakes", cases.len());
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn schema_checks_names_urls_paths_and_durations() {
    let cluster = Cluster::start().await;
    tokio::task::block_in_place(|| {
        cluster.install_crd();
        let refused = |doc: Value, field: &str, what: &str| {
            let (ok, _, err) = kubectl(&cluster, &["create", "-f", "-"], Some(&doc.to_string()));
            assert!(!ok && err.contains(field) && err.contains(what), "want {field} {what:?} in:\n{err}");
        };
        refused(
            set(oauth2(), "spec/oauth2/tokenURL", json!("https://user:pw@idp.example/token")),
            "spec.oauth2.tokenURL",
            "no user:password@",
        );
        refused(set(http(), "spec/http/url", json!("ftp://x.example")), "spec.http.url", "absolute http(s) URL");
        refused(set(http(), "spec/http/url", json!("https://x.example/a b")), "spec.http.url", "absolute http(s) URL");
        refused(set(http(), "spec/http/url", json!("idp.example/token")), "spec.http.url", "absolute http(s) URL");
        refused(set(http(), "spec/timeout", json!("1.5h")), "spec.timeout", "should match");
        refused(
            set(http(), "spec/renewal", json!({"renewBefore": "999999h"})),
            "spec.renewal.renewBefore",
            "should match",
        );
        refused(
            set(http(), "spec/renewal", json!({"renewBeforePercentage": 100})),
            "spec.renewal.renewBeforePercentage",
            "less than or equal to 99",
        );
        refused(
            set(http(), "spec/response", json!({"token": {"jsonPath": "access_token"}})),
            "spec.response.token.jsonPath",
            "starts with $",
        );
        refused(
            set(oauth2(), "spec/oauth2/clientAuth/clientSecretRef", json!({"name": "../other/secrets/x", "key": "k"})),
            "spec.oauth2.clientAuth.clientSecretRef.name",
            "should match",
        );
        refused(
            set(oauth2(), "spec/oauth2/clientAuth/clientSecretRef", json!({"name": "c", "key": "a/b"})),
            "spec.oauth2.clientAuth.clientSecretRef.key",
            "should match",
        );
        refused(
            set(http(), "spec/http/auth", json!({"type": "SigV4"})),
            "spec.http.auth.type",
            "Unsupported value: \"SigV4\"",
        );
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn defaults_are_stored_and_name_and_type_cannot_change() {
    let cluster = Cluster::start().await;
    tokio::task::block_in_place(|| {
        cluster.install_crd();
        let (ok, _, err) = kubectl(&cluster, &["apply", "-f", "-"], Some(&http().to_string()));
        assert!(ok, "{err}");
        let (ok, out, err) = kubectl(&cluster, &["get", "tokensource", "t", "-o", "json"], None);
        assert!(ok, "{err}");
        let spec = serde_json::from_str::<Value>(&out).expect("JSON")["spec"].clone();
        assert_eq!(spec["http"]["method"], "POST");
        assert_eq!(spec["http"]["auth"], json!({"type": "None"}), "no authentication is spelled out");
        assert_eq!(spec["response"]["token"], json!({"jsonPath": "$.access_token"}));
        assert_eq!(spec["response"]["expiry"], json!({"type": "Auto"}));
        assert_eq!(spec["renewal"], json!({"renewBeforePercentage": 33, "shareIdenticalRequests": true}));
        assert_eq!(
            spec["target"],
            json!({"name": "t-token", "creationPolicy": "Owner", "template": {"type": "Opaque", "engineVersion": "v1", "mergePolicy": "Merge"}})
        );
        for (path, value, field, message) in [
            ("spec/target/name", json!("other-token"), "spec.target.name", "target.name cannot be changed"),
            (
                "spec/target/template/type",
                json!("kubernetes.io/dockerconfigjson"),
                "spec.target.template.type",
                "the Secret type cannot be changed",
            ),
        ] {
            let (ok, _, err) = kubectl(&cluster, &["apply", "-f", "-"], Some(&set(http(), path, value).to_string()));
            assert!(!ok && err.contains(field) && err.contains(message), "{err}");
        }
    });
}
