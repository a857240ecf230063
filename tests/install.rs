//! The CRD, `deploy/`, every component, every example and the monitoring objects installed with
//! the real kubectl, server-side, the way users install them — against the real API server when
//! `TOKENSOURCE_E2E_KUBECONFIG` names one (`tests/controlplane/run 1.37 -- cargo test --test
//! install`: CEL cost budgets, admission, RBAC objects as a real cluster judges them), else
//! against kubesim. Objects whose CRDs are absent (ServiceMonitor, PrometheusRule) are reported
//! as skipped, by name, never silently dropped.

#![cfg(test)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

/// The cluster: a kubeconfig, and kubesim when no real one is given.
struct Cluster {
    kubeconfig: PathBuf,
    _sim: Option<kubesim::KubeSim>,
}

impl Cluster {
    async fn start() -> Self {
        match std::env::var("TOKENSOURCE_E2E_KUBECONFIG") {
            Ok(path) if !path.is_empty() => Self { kubeconfig: path.into(), _sim: None },
            _ => {
                let sim = kubesim::KubeSim::start().await.unwrap();
                Self { kubeconfig: sim.kubeconfig_path().to_path_buf(), _sim: Some(sim) }
            }
        }
    }

    fn kubectl(&self, args: &[&str]) -> (bool, String, String) {
        common::kubectl_at(&self.kubeconfig, args)
    }

    /// The CRD, server-side, and established: the real API server checks its CEL rules' cost and
    /// compiles them here.
    fn install_crd(&self) {
        self.apply("the CRD", &["-f", "crds/tokensource.dev_tokensources.yaml"]);
        common::wait_crd_established(&self.kubeconfig);
    }

    /// `kubectl apply --server-side` of a file or a directory (`-k`); fails the test with what the
    /// server said.
    fn apply(&self, what: &str, args: &[&str]) -> String {
        let mut all = vec!["apply", "--server-side", "--force-conflicts", "--field-manager", "install-test"];
        all.extend_from_slice(args);
        let (ok, out, err) = self.kubectl(&all);
        assert!(ok, "{what} was refused:\n{err}\n{out}");
        out
    }
}

/// `deploy/` with `component`, rendered by kustomize the way a user's overlay does it.
fn rendered_with(component: &str) -> PathBuf {
    let work = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("install-{component}"));
    let _ = std::fs::remove_dir_all(&work);
    for part in ["deploy", "crds"] {
        common::copy_tree(&Path::new(env!("CARGO_MANIFEST_DIR")).join(part), &work.join(part));
    }
    let dir = work.join("overlay");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("kustomization.yaml"),
        format!("resources: [../deploy]\ncomponents: [../deploy/components/{component}]\n"),
    )
    .unwrap();
    let out = Command::new(std::env::var("KUBECTL").unwrap_or_else(|_| "/usr/bin/kubectl".into()))
        .args(["kustomize", "--load-restrictor", "LoadRestrictionsNone"])
        .arg(&dir)
        .output()
        .expect("kubectl is required for this test");
    assert!(out.status.success(), "{component}: {}", String::from_utf8_lossy(&out.stderr));
    let file = work.join("rendered.yaml");
    std::fs::write(&file, &out.stdout).unwrap();
    file
}

#[tokio::test(flavor = "multi_thread")]
async fn the_crd_deploy_every_component_and_every_example_install() {
    let cluster = Cluster::start().await;
    let real = cluster._sim.is_none();
    tokio::task::block_in_place(|| {
        let (_, version, _) = cluster.kubectl(&["version", "-o", "json"]);
        let server: serde_json::Value = serde_json::from_str(&version).unwrap_or_default();
        eprintln!("installing on {}", server["serverVersion"]["gitVersion"].as_str().unwrap_or("kubesim"));

        cluster.install_crd();
        cluster.apply("deploy/", &["-k", "deploy/"]);
        // The namespaced mode serves the namespace its Role names.
        let (_, _, _) = cluster.kubectl(&["create", "namespace", "apps"]);
        let components: Vec<String> =
            std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/components"))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
        assert!(components.len() >= 5, "{components:?}");
        for component in &components {
            let file = rendered_with(component);
            cluster.apply(&format!("deploy/ with components/{component}"), &["-f", file.to_str().unwrap()]);
        }
        let mut examples: Vec<PathBuf> =
            std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/examples"))
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
        examples.sort();
        assert!(examples.len() >= 10, "{examples:?}");
        for example in &examples {
            cluster.apply(&format!("{}", example.display()), &["-f", example.to_str().unwrap()]);
        }

        // Monitoring: the Service always; the ServiceMonitor and PrometheusRule only where the
        // Prometheus operator's CRDs are installed, else each is reported skipped.
        let (have_monitors, _, _) = cluster.kubectl(&["get", "crd", "servicemonitors.monitoring.coreos.com"]);
        let (have_rules, _, _) = cluster.kubectl(&["get", "crd", "prometheusrules.monitoring.coreos.com"]);
        cluster.apply("deploy/monitoring/service.yaml", &["-f", "deploy/monitoring/service.yaml"]);
        for (have, file) in [
            (have_monitors, "deploy/monitoring/servicemonitor.yaml"),
            (have_rules, "deploy/monitoring/prometheusrule.yaml"),
        ] {
            if have {
                cluster.apply(file, &["-f", file]);
            } else {
                let (ok, _, err) = cluster.kubectl(&["apply", "--server-side", "-f", file]);
                assert!(!ok && err.contains("no matches for kind"), "{file}: {err}");
                // Shown in the output of a passing run too (eprintln! is captured).
                common::say(&format!("{file}: skipped, its CRD is not installed"));
            }
        }

        // What was installed reads back.
        let (ok, out, err) = cluster.kubectl(&["get", "tokensources", "-A", "-o", "name"]);
        assert!(ok, "{err}");
        let count = out.lines().count();
        eprintln!(
            "installed on the {} server: the CRD, deploy/, {} components, {} examples ({count} TokenSources)",
            if real { "real" } else { "kubesim" },
            components.len(),
            examples.len()
        );
        assert!(count >= 9, "{out}");

        // A real cluster outlives this test: the examples and the RBAC of every component go
        // (the CRD stays for the suites that follow), so no later operator holds more than the
        // install it tests grants, or finds the examples' TokenSources.
        for example in &examples {
            let (ok, _, err) =
                cluster.kubectl(&["delete", "-f", example.to_str().unwrap(), "--ignore-not-found", "--wait=false"]);
            assert!(ok, "{err}");
        }
        common::remove_operator_rbac(&cluster.kubeconfig);
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn the_crd_refuses_broken_tokensources_with_its_messages() {
    let cluster = Cluster::start().await;
    tokio::task::block_in_place(|| {
        cluster.install_crd();
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("install-broken");
        std::fs::create_dir_all(&dir).unwrap();
        let cases = [
            (
                "type OAuth2 without oauth2",
                "spec: {type: OAuth2, target: {name: t}}",
                "type OAuth2 needs oauth2 and no http",
            ),
            (
                "a JSONPath without $",
                "spec: {type: OAuth2, oauth2: {tokenURL: 'https://login.example.com/token'}, response: {token: {jsonPath: a.b}}, target: {name: t}}",
                "a JSONPath starts with $",
            ),
        ];
        for (what, spec, message) in cases {
            let file = dir.join("broken.yaml");
            std::fs::write(
                &file,
                format!("apiVersion: tokensource.dev/v1alpha1\nkind: TokenSource\nmetadata: {{name: broken, namespace: default}}\n{spec}\n"),
            )
            .unwrap();
            let (ok, _, err) = cluster.kubectl(&["apply", "--server-side", "-f", file.to_str().unwrap()]);
            assert!(!ok, "{what}: accepted");
            assert!(err.contains(message), "{what}: {err}");
        }
    });
}
