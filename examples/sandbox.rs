//! The sandbox: the real controller against the embedded Kubernetes API emulator (kubesim) and
//! built-in demo token endpoints that behave like Podero, Interswitch and Imburse, with short
//! token lifetimes so renewals happen while you watch. No cluster needed.
//!
//!     cargo run --release --example sandbox
//!
//! It applies the manifests in `deploy/examples/` (pointed at the demo endpoints), prints a
//! KUBECONFIG for `kubectl` in another terminal, and logs every token as it is issued.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use fake_providers::{Config as FakeConfig, Endpoint, Fakes, examples};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::ResourceExt;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use tokensource_operator::admin::Health;
use tokensource_operator::controller::{self, Config};
use tokensource_operator::endpoint::EndpointPolicy;
use tokensource_operator::metrics::Metrics;
use tokensource_operator::{schedule, telemetry};

#[derive(Parser)]
#[command(about = "Run tokensource-operator against an embedded API server and demo token endpoints")]
struct Args {
    /// Lifetime of the demo tokens.
    #[arg(long, default_value = "30s", value_parser = duration)]
    lifetime: Duration,
    /// Stop after this long (runs until Ctrl-C when unset).
    #[arg(long = "for", value_parser = duration)]
    run_for: Option<Duration>,
    /// Where to write the kubeconfig for kubectl.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Operator log filter.
    #[arg(long, default_value = "warn")]
    log_level: String,
}

fn duration(s: &str) -> Result<Duration, String> {
    schedule::parse_duration(s)
        .map_err(|e| e.to_string())
        .and_then(|d| Duration::try_from(d).map_err(|e| e.to_string()))
}

fn now() -> String {
    jiff::Zoned::now().strftime("%H:%M:%S").to_string()
}

fn short(token: &str) -> String {
    let n = token.chars().count();
    if n <= 12 {
        token.to_string()
    } else {
        format!("{}…{}", token.chars().take(6).collect::<String>(), token.chars().skip(n - 4).collect::<String>())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    telemetry::init(&args.log_level, telemetry::LogFormat::Text);
    let kubeconfig =
        args.kubeconfig.clone().unwrap_or_else(|| std::env::temp_dir().join("tokensource-sandbox.kubeconfig"));
    let sim =
        kubesim::KubeSim::start_with(kubesim::Options { kubeconfig: Some(kubeconfig.clone()), ..Default::default() })
            .await?;
    let client = sim.client();
    let fakes = Fakes::start(FakeConfig { lifetime: args.lifetime, ..Default::default() }).await?;

    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        "tokensources.tokensource.dev",
        &PatchParams::apply("sandbox"),
        &Patch::Apply(tokensource_operator::crd::crd()),
    )
    .await?;
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/examples");
    for file in examples::FILES {
        for doc in examples::load(&dir.join(file), &fakes)? {
            let (api_version, kind) =
                (doc["apiVersion"].as_str().unwrap_or_default(), doc["kind"].as_str().unwrap_or_default());
            let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
            let plural = format!("{}s", kind.to_lowercase());
            let ar = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), &plural);
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);
            let name = doc["metadata"]["name"].as_str().unwrap_or_default().to_string();
            api.patch(&name, &PatchParams::apply("sandbox"), &Patch::Apply(&doc)).await?;
        }
    }

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    // The demo endpoints listen on 127.0.0.1, an address the operator refuses unless allowed.
    let endpoints = EndpointPolicy::parse("127.0.0.1/32", "")?;
    let transport = tokensource_operator::transport::Options { endpoints: Arc::new(endpoints), ..Default::default() };
    let config =
        Config { allow_http: true, propagation_margin: Duration::from_secs(5), transport, ..Default::default() };
    let operator = tokio::spawn(controller::run(
        client.clone(),
        config,
        Arc::new(Metrics::default()),
        Arc::new(Health::default()),
        async {
            let _ = stop_rx.await;
        },
    ));

    println!("tokensource-operator sandbox");
    println!("  Kubernetes API (kubesim): {}", sim.url());
    println!("  demo token endpoints:     {} (tokens live {:?})", fakes.url(), args.lifetime);
    println!("  TokenSources from deploy/examples/ in namespace default");
    println!();
    println!("In another terminal:");
    println!("  export KUBECONFIG={}", kubeconfig.display());
    println!("  kubectl get tokensources");
    println!("  kubectl get secret podero-token -o yaml");
    println!("  kubectl describe tokensource imburse-payout");
    println!();
    println!("Press Ctrl-C to stop.");
    println!();

    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let wc = watcher::Config::default().labels("app.kubernetes.io/managed-by=tokensource-operator");
    let mut seen = std::collections::HashMap::<String, String>::new();
    let log = watcher(secrets, wc).default_backoff().applied_objects();
    futures::pin_mut!(log);
    let deadline = async {
        match args.run_for {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = &mut deadline => break,
            next = log.next() => {
                let Some(Ok(secret)) = next else { continue };
                let data = secret.data.clone().unwrap_or_default();
                let text = |k: &str| data.get(k).map(|b| String::from_utf8_lossy(&b.0).to_string()).unwrap_or_default();
                let token = text("token");
                let name = secret.name_any();
                if seen.get(&name) == Some(&token) {
                    continue;
                }
                let verb = if seen.insert(name.clone(), token.clone()).is_some() { "refreshed" } else { "issued   " };
                let expires = text("expires_at").parse::<jiff::Timestamp>().map(|t| t.to_zoned(jiff::tz::TimeZone::system()).strftime("%H:%M:%S").to_string()).unwrap_or_default();
                println!("[{}] {verb} {name:<28} token {:<14} expires {expires}", now(), short(&token));
            }
        }
    }
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), operator).await;
    println!();
    println!(
        "Tokens issued: podero {}, interswitch {}, imburse management {}, payout (hmac) {}, payout (from management) {}",
        fakes.issued(Endpoint::Podero),
        fakes.issued(Endpoint::Interswitch),
        fakes.issued(Endpoint::ImburseManagement),
        fakes.issued(Endpoint::ImbursePayoutHmac),
        fakes.issued(Endpoint::ImbursePayout),
    );
    let rejected = fakes.rejections();
    if !rejected.is_empty() {
        println!("Requests the demo endpoints rejected: {rejected:?}");
    }
    Ok(())
}
