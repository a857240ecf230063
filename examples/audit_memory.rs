//! What the consumer audit (`--audit-consumers`) costs in memory: the release operator binary,
//! as its own process, against kubesim holding N Pods (half of them reading a Secret), with and
//! without the audit. Prints the operator's resident memory (VmHWM and VmRSS) once it is ready
//! and the audit has seen every Pod.
//!
//! ```sh
//! cargo build --release --bin tokensource-operator
//! cargo run --release --example audit_memory -- 10000
//! ```

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

async fn metric(port: u16, name: &str) -> Option<f64> {
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await.ok()?.text().await.ok()?;
    text.lines().find_map(|l| l.strip_prefix(&format!("{name} "))).and_then(|v| v.trim().parse().ok())
}

type Failure = Box<dyn std::error::Error>;

async fn measure(
    sim: &kubesim::KubeSim,
    binary: &std::path::Path,
    audit: bool,
    pods: usize,
) -> Result<(u64, u64, Duration), Failure> {
    let port =
        std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(18080);
    let mut cmd = Command::new(binary);
    cmd.args(["run", "--admin-addr", &format!("127.0.0.1:{port}"), "--kubeconfig"])
        .arg(sim.kubeconfig_path())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if audit {
        cmd.arg("--audit-consumers");
    }
    let mut child = cmd.spawn()?;
    let started = Instant::now();
    loop {
        let ready =
            reqwest::get(format!("http://127.0.0.1:{port}/readyz")).await.is_ok_and(|r| r.status().is_success());
        let seen = !audit || metric(port, "tokensource_audited_pods").await.is_some_and(|n| n as usize >= pods / 2);
        if ready && seen {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = child.id();
    let (hwm, rss) = (status_kib(pid, "VmHWM:"), status_kib(pid, "VmRSS:"));
    let _ = child.kill();
    let _ = child.wait();
    Ok((hwm, rss, took))
}

#[tokio::main]
async fn main() -> Result<(), Failure> {
    tokensource_operator::transport::install_crypto_provider();
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let exe = std::env::current_exe()?;
    let binary =
        exe.parent().and_then(|p| p.parent()).map(|p| p.join("tokensource-operator")).ok_or("no target dir")?;
    if !binary.exists() {
        return Err(
            format!("build it first: cargo build --release --bin tokensource-operator ({})", binary.display()).into()
        );
    }
    let sim = kubesim::KubeSim::start().await?;
    let client = sim.client();
    Api::<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>::all(
        client.clone(),
    )
    .patch(
        "tokensources.tokensource.dev",
        &PatchParams::apply("bench"),
        &Patch::Apply(tokensource_operator::crd::crd()),
    )
    .await?;
    let baseline = measure(&sim, &binary, true, 0).await?;
    let nss: Api<Namespace> = Api::all(client.clone());
    for i in 0..10 {
        let ns = json!({"metadata": {"name": format!("team-{i}")}});
        nss.create(&PostParams::default(), &serde_json::from_value(ns)?).await?;
    }
    // Pods as a Deployment makes them: labels, a few env vars, probes, resources; half of them
    // read a Secret through env, the other half do not read one.
    let t = Instant::now();
    for i in 0..n {
        let ns = format!("team-{}", i % 10);
        let env = if i % 2 == 0 {
            json!([{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": format!("token-{}", i % 50), "key": "token"}}}, {"name": "MODE", "value": "prod"}])
        } else {
            json!([{"name": "MODE", "value": "prod"}, {"name": "LOG", "value": "info"}])
        };
        let pod = json!({"metadata": {"name": format!("app-{i}"), "labels": {"app": "web", "pod-template-hash": "5d8f7c9b6"}},
            "spec": {"containers": [{"name": "web", "image": "registry.example.com/team/web:1.2.3", "env": env,
                "ports": [{"containerPort": 8080}], "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
                "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}}}]}});
        Api::<Pod>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &serde_json::from_value(pod)?)
            .await?;
    }
    eprintln!("created {n} Pods in {:?}", t.elapsed());
    let without = measure(&sim, &binary, false, n).await?;
    let with = measure(&sim, &binary, true, n).await?;
    println!("| operator (release), {n} Pods in the cluster | VmHWM | VmRSS | ready after |");
    println!("|---|---|---|---|");
    println!(
        "| audit on, no Pods | {:.1} MiB | {:.1} MiB | {:?} |",
        baseline.0 as f64 / 1024.0,
        baseline.1 as f64 / 1024.0,
        baseline.2
    );
    println!(
        "| audit off | {:.1} MiB | {:.1} MiB | {:?} |",
        without.0 as f64 / 1024.0,
        without.1 as f64 / 1024.0,
        without.2
    );
    println!("| audit on | {:.1} MiB | {:.1} MiB | {:?} |", with.0 as f64 / 1024.0, with.1 as f64 / 1024.0, with.2);
    println!(
        "audit cost at {n} Pods: {:+.1} MiB resident ({:+.1} MiB peak) over audit off",
        (with.1 as f64 - without.1 as f64) / 1024.0,
        (with.0 as f64 - without.0 as f64) / 1024.0
    );
    Ok(())
}
