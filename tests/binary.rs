//! The real `tokensource-operator` binary: `run` against kubesim with its flags, the probe and
//! metrics endpoint, and a clean shutdown on SIGTERM; `crd` prints what `crds/` holds.

#![cfg(test)]

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, http_get};
use fake_providers::{Endpoint, Fakes};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use tokensource_operator::crd::TokenSource;

const BIN: &str = env!("CARGO_BIN_EXE_tokensource-operator");

#[test]
fn crd_subcommand_prints_the_committed_crd() {
    let out = Command::new(BIN).arg("crd").output().unwrap();
    assert!(out.status.success());
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/crds/tokensource.dev_tokensources.yaml"))
            .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), committed);
}

#[test]
fn crd_subcommand_ends_quietly_when_its_reader_goes_away() {
    // `tokensource-operator crd | head`: the reader closes the pipe before the CRD is written.
    let mut child = Command::new(BIN).arg("crd").stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !stderr.contains("panicked"), "{:?}: {stderr}", out.status);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_stops_with_a_clear_message_when_the_admin_address_is_taken() {
    let sim = kubesim::KubeSim::start().await.unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(BIN)
        .args(["run", "--kubeconfig"])
        .arg(sim.kubeconfig_path())
        .args(["--admin-addr", &addr])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("cannot listen on {addr} for probes and metrics")), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_probes_and_metrics_issues_tokens_and_stops_on_sigterm() {
    let sim = kubesim::KubeSim::start().await.unwrap();
    let client = sim.client();
    let fakes = Fakes::start(Default::default()).await.unwrap();

    // Before the CRD exists the operator refuses to start, and says why.
    let out = Command::new(BIN)
        .args(["run", "--kubeconfig"])
        .arg(sim.kubeconfig_path())
        .args(["--admin-addr", &format!("127.0.0.1:{}", free_port())])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is the CRD installed?"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        "tokensources.tokensource.dev",
        &PatchParams::apply("test"),
        &Patch::Apply(tokensource_operator::crd::crd()),
    )
    .await
    .unwrap();
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "team"}})).unwrap_or_default(),
    )
    .await
    .unwrap();
    let port = free_port();
    let mut child = Command::new(BIN)
        .args([
            "run",
            "--namespace",
            "team",
            "--allow-insecure-http",
            "--allow-endpoint-cidrs",
            "127.0.0.1/32",
            "--log-format",
            "json",
            "--propagation-margin",
            "1s",
        ])
        .args(["--kubeconfig"])
        .arg(sim.kubeconfig_path())
        .args(["--admin-addr", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let seen = http_get(&format!("{base}/readyz")).await;
        if let Some((200, _)) = seen {
            break;
        }
        assert!(Instant::now() < deadline, "the operator never became ready; /readyz last answered {seen:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(http_get(&format!("{base}/healthz")).await.map(|r| r.0), Some(200));

    let secrets: Api<Secret> = Api::namespaced(client.clone(), "team");
    let c = fakes.config().podero;
    let creds = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "podero-credentials"}, "stringData": {"client_id": c.id, "client_secret": c.secret}});
    secrets.create(&PostParams::default(), &serde_json::from_value(creds).unwrap_or_default()).await.unwrap();
    let sources: Api<TokenSource> = Api::namespaced(client.clone(), "team");
    let ts = json!({"apiVersion": "tokensource.dev/v1alpha1", "kind": "TokenSource", "metadata": {"name": "podero"}, "spec": {
        "type": "OAuth2",
        "oauth2": {"tokenURL": fakes.endpoint_url(Endpoint::Podero), "bodyType": "JSON",
                   "clientID": {"valueFrom": {"secretKeyRef": {"name": "podero-credentials", "key": "client_id"}}},
                   "clientAuth": {"type": "ClientSecretBasic", "clientSecretRef": {"name": "podero-credentials", "key": "client_secret"}}},
        "target": {"name": "podero-token"}}});
    sources.create(&PostParams::default(), &serde_json::from_value(ts).unwrap()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while secrets.get_opt("podero-token").await.ok().flatten().is_none() {
        assert!(
            Instant::now() < deadline,
            "no token from the binary; status: {:?}",
            sources.get("podero").await.ok().and_then(|t| t.status)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The per-TokenSource series follow the status write, which follows the Secret write.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (code, metrics) = loop {
        let (code, metrics) = http_get(&format!("{base}/metrics")).await.unwrap_or_default();
        if metrics.contains("condition=\"True\"} 1") || Instant::now() > deadline {
            break (code, metrics);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(code, 200);
    assert!(metrics.contains("tokensource_secret_writes_total 1"), "{metrics}");
    assert!(metrics.contains("tokensource_token_requests_total{host=\"127.0.0.1\",result=\"Success\"} 1"), "{metrics}");
    for series in [
        "tokensource_expiration_timestamp_seconds{namespace=\"team\",name=\"podero\"} 1",
        "tokensource_renewal_timestamp_seconds{namespace=\"team\",name=\"podero\"} 1",
        "tokensource_ready_status{namespace=\"team\",name=\"podero\",condition=\"True\"} 1",
        "tokensource_refreshes_total{result=\"success\",reason=\"NoToken\"} 1",
        "tokensource_token_request_duration_seconds_count{host=\"127.0.0.1\",status_class=\"2xx\"} 1",
        "tokensource_reconcile_duration_seconds_count ",
        "tokensource_leader 1",
    ] {
        assert!(metrics.contains(series), "{series} missing from\n{metrics}");
    }

    let pid = child.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the operator did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut logs = String::new();
    child.stderr.take().map(|mut e| e.read_to_string(&mut logs));
    assert!(status.success(), "exit {status:?}: {logs}");
    // JSON logs, and never the secret or the token.
    let token = secrets
        .get("podero-token")
        .await
        .ok()
        .and_then(|s| s.data)
        .and_then(|d| d.get("token").map(|t| String::from_utf8_lossy(&t.0).to_string()))
        .unwrap_or_default();
    assert!(
        logs.lines().filter(|l| !l.is_empty()).all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()),
        "{logs}"
    );
    assert!(logs.contains("requesting a token"), "{logs}");
    assert!(
        !logs.contains(&c.secret) && !token.is_empty() && !logs.contains(&token),
        "a credential or token reached the logs"
    );
}
