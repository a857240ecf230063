//! The operator binary run the way an install runs it: with a Deployment's arguments and
//! environment (the downward API filled in as the kubelet would) and a token of the Deployment's
//! ServiceAccount from the TokenRequest API, so it can do only what the install's RBAC grants.
//! Only its listen address is loopback, and the tests' plain-HTTP endpoints on 127.0.0.1 are
//! allowed.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::Value;

use super::{WAIT, eventually, free_port};

const BIN: &str = env!("CARGO_BIN_EXE_tokensource-operator");

/// A running operator process; SIGTERM when dropped.
pub struct Operator {
    child: Child,
    log: PathBuf,
}

impl Operator {
    pub fn logs(&self) -> String {
        let mut s = String::new();
        let _ = std::fs::File::open(&self.log).and_then(|mut f| f.read_to_string(&mut s));
        s
    }

    /// Every line where the API server refused the operator something, but for TokenSources of
    /// namespaces other than `ours` (another suite's examples may be left in the cluster, and
    /// some of them rightly fail without an opt-in component).
    pub fn refusals(&self, ours: &[&str]) -> Vec<String> {
        self.logs()
            .lines()
            .filter(|l| {
                let lower = l.to_ascii_lowercase();
                let elsewhere = serde_json::from_str::<Value>(l)
                    .ok()
                    .and_then(|v| v["namespace"].as_str().map(|ns| !ours.contains(&ns)))
                    .unwrap_or(false);
                // A namespace being deleted refuses new objects with 403 too; that is no RBAC gap.
                lower.contains("forbidden") && !lower.contains("namespaceterminating") && !elsewhere
            })
            .map(String::from)
            .collect()
    }
}

impl Drop for Operator {
    /// SIGTERM, as the kubelet stops a pod: the operator hands its Lease over at once, so the next
    /// operator leads without waiting for it to expire.
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A kubeconfig (beside `admin`'s server, written into `work`) for the ServiceAccount the
/// Deployment in `namespace` runs as: a token from the TokenRequest API, as the kubelet mounts
/// one into the pod.
pub async fn service_account_kubeconfig(
    client: &Client,
    admin: &Path,
    work: &Path,
    namespace: &str,
    deployment: &Deployment,
) -> PathBuf {
    let spec = deployment.spec.as_ref().and_then(|s| s.template.spec.as_ref()).expect("a pod template");
    let account = spec.service_account_name.clone().expect("the Deployment names its ServiceAccount");
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let request = TokenRequest {
        spec: TokenRequestSpec { audiences: vec![], expiration_seconds: Some(3600), ..Default::default() },
        ..Default::default()
    };
    let minted = eventually("a token of the operator's ServiceAccount", WAIT, || async {
        accounts.create_token_request(&account, &PostParams::default(), &request).await.map_err(|e| e.to_string())
    })
    .await;
    let token = minted.status.expect("TokenRequest status").token;
    let mut kc = kube::config::Kubeconfig::read_from(admin).unwrap();
    for user in &mut kc.auth_infos {
        user.auth_info = Some(kube::config::AuthInfo { token: Some(token.clone().into()), ..Default::default() });
    }
    let path = work.join(format!("{namespace}-{account}.kubeconfig"));
    std::fs::write(&path, serde_json::to_string(&kc).unwrap()).unwrap();
    path
}

/// The operator binary as `deployment` (in `namespace`) runs it, named `name` (its pod name),
/// with the ServiceAccount's `kubeconfig`; its log goes to `work/<name>.log`.
pub fn run(deployment: &Deployment, namespace: &str, name: &str, kubeconfig: &Path, work: &Path) -> Operator {
    let spec = deployment.spec.as_ref().and_then(|s| s.template.spec.as_ref()).expect("a pod template");
    let container = &spec.containers[0];
    let mut args: Vec<String> =
        container.args.clone().unwrap_or_default().into_iter().filter(|a| !a.starts_with("--admin-addr")).collect();
    args.extend(["--admin-addr".into(), format!("127.0.0.1:{}", free_port())]);
    args.extend(
        ["--allow-insecure-http", "--allow-endpoint-cidrs", "127.0.0.1/32", "--propagation-margin", "1s"]
            .map(String::from),
    );
    args.extend(["--kubeconfig".into(), kubeconfig.display().to_string()]);
    let mut command = Command::new(BIN);
    command.args(&args).env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    for var in container.env.clone().unwrap_or_default() {
        let value = match (var.value, var.value_from) {
            (Some(v), _) => v,
            // The downward API, as the kubelet fills it in.
            (None, Some(from)) => match from.field_ref.map(|f| f.field_path).as_deref() {
                Some("metadata.namespace") => namespace.into(),
                Some("metadata.name") => name.into(),
                other => panic!("{}: no value for {other:?} outside a pod", var.name),
            },
            (None, None) => String::new(),
        };
        command.env(var.name, value);
    }
    let log = work.join(format!("{name}.log"));
    let child = command.stdout(Stdio::null()).stderr(std::fs::File::create(&log).unwrap()).spawn().unwrap();
    eprintln!("{name}: {} {}", BIN, args.join(" "));
    Operator { child, log }
}
