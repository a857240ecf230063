//! Operator scale probe: N TokenSources (default 1,000; `TOKENSOURCES=10000` for the full run)
//! against kubesim and the Podero fake, in one process on this machine. Prints the time until
//! every target Secret holds a token, the API writes and provider calls it took, memory, and what
//! a restart costs (it should mint nothing).
//!
//!     cargo bench --bench operator_scale

use std::sync::Arc;
use std::time::{Duration, Instant};

use fake_providers::{Endpoint, Fakes};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use tokensource_operator::admin::Health;
use tokensource_operator::controller::{self, Config};
use tokensource_operator::crd::TokenSource;
use tokensource_operator::metrics::Metrics;

fn start_operator(client: kube::Client) -> (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let endpoints = tokensource_operator::endpoint::EndpointPolicy::parse("127.0.0.1/32", "").unwrap_or_default();
    let transport = tokensource_operator::transport::Options { endpoints: Arc::new(endpoints), ..Default::default() };
    let config = Config { allow_http: true, transport, ..Default::default() };
    let handle = tokio::spawn(async move {
        let shutdown = async move {
            let _ = rx.await;
        };
        if let Err(e) =
            controller::run(client, config, Arc::new(Metrics::default()), Arc::new(Health::default()), shutdown).await
        {
            eprintln!("operator failed: {e}");
        }
    });
    (tx, handle)
}

async fn managed(secrets: &Api<Secret>) -> usize {
    secrets
        .list(&ListParams::default().labels("app.kubernetes.io/managed-by=tokensource-operator"))
        .await
        .map(|l| l.items.len())
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::var("TOKENSOURCES").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let sim = kubesim::KubeSim::start().await?;
    let client = sim.client();
    let fakes = Fakes::start(Default::default()).await?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        "tokensources.tokensource.dev",
        &PatchParams::apply("bench"),
        &Patch::Apply(tokensource_operator::crd::crd()),
    )
    .await?;
    let secrets: Api<Secret> = Api::default_namespaced(client.clone());
    let c = fakes.config().podero;
    let creds = json!({"metadata": {"name": "podero-credentials"}, "stringData": {"client_id": c.id, "client_secret": c.secret}});
    secrets.create(&PostParams::default(), &serde_json::from_value(creds).unwrap_or_default()).await?;
    let sources: Api<TokenSource> = Api::default_namespaced(client.clone());
    println!(
        "operator scale probe: {n} TokenSources, one credentials Secret, Podero fake with 1h tokens, 2 cores, all in one process"
    );
    let created = Instant::now();
    for i in 0..n {
        let ts = json!({"apiVersion": "tokensource.dev/v1alpha1", "kind": "TokenSource", "metadata": {"name": format!("ts-{i:05}")}, "spec": {
            "type": "OAuth2",
            "oauth2": {"tokenURL": fakes.endpoint_url(Endpoint::Podero), "bodyType": "JSON",
                       "clientID": {"valueFrom": {"secretKeyRef": {"name": "podero-credentials", "key": "client_id"}}},
                       "clientAuth": {"type": "ClientSecretBasic", "clientSecretRef": {"name": "podero-credentials", "key": "client_secret"}}},
            "target": {"name": format!("ts-{i:05}-token")}}});
        sources.create(&PostParams::default(), &serde_json::from_value(ts)?).await?;
    }
    println!("created {n} TokenSources in {:.2}s", created.elapsed().as_secs_f64());
    sim.faults().reset_counts();
    let started = Instant::now();
    let (stop, handle) = start_operator(client.clone());
    while managed(&secrets).await < n {
        assert!(started.elapsed() < Duration::from_secs(1800), "timed out");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let first = started.elapsed().as_secs_f64();
    // Let status writes settle before counting.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let f = sim.faults();
    println!(
        "all {n} Secrets hold a token {first:.2}s after the operator started ({:.0} TokenSources/s)",
        n as f64 / first
    );
    println!(
        "provider calls {}, Secret writes {}, status writes {}, events created {}, credential Secret reads {}",
        fakes.calls(Endpoint::Podero),
        f.count("patch", "secrets"),
        f.count("patch", "tokensources/status"),
        f.count("create", "events"),
        f.count("get", "secrets"),
    );
    println!("rss: {:.1} MiB (kubesim, the fake, the operator and its caches)", kubesim::resident_mib());

    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), handle).await;
    f.reset_counts();
    let calls_before = fakes.calls(Endpoint::Podero);
    let (stop, handle) = start_operator(client.clone());
    tokio::time::sleep(Duration::from_secs(10)).await;
    println!(
        "restart: over 10s, provider calls {}, Secret writes {}, status writes {}, Secret GETs {}, lists {}",
        fakes.calls(Endpoint::Podero) - calls_before,
        f.count("patch", "secrets"),
        f.count("patch", "tokensources/status"),
        f.count("get", "secrets"),
        f.count("list", "secrets") + f.count("list", "tokensources"),
    );
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), handle).await;
    Ok(())
}
