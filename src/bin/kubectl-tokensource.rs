//! `kubectl tokensource`: a TokenSource's story in one command, and manual refresh.
//!
//! kubectl runs any `kubectl-<name>` binary on PATH as `kubectl <name>`; put this one there.

use std::collections::BTreeMap;

use clap::{Parser, Subcommand};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::{Event, Pod, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokensource_operator::consumers;
use tokensource_operator::crd::{REFRESH_REQUESTED_AT_ANNOTATION, TokenSource};

#[derive(Parser)]
#[command(name = "kubectl tokensource", version, about = "Inspect and refresh TokenSources")]
struct Cli {
    /// Kubeconfig to use (else $KUBECONFIG or ~/.kube/config).
    #[arg(long, global = true)]
    kubeconfig: Option<std::path::PathBuf>,
    /// Kubeconfig context to use.
    #[arg(long, global = true)]
    context: Option<String>,
    /// Namespace (else the context's).
    #[arg(short, long, global = true)]
    namespace: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Conditions, expiry, next refresh, failures, recent Events, the target Secret's keys (never
    /// values) and the Pods that consume it.
    Status { name: String },
    /// Ask for a new token now (sets the tokensource.dev/refresh-requested-at annotation).
    Refresh {
        /// TokenSources to refresh.
        names: Vec<String>,
        /// Every TokenSource in the namespace.
        #[arg(long, conflicts_with_all = ["names", "selector"])]
        all: bool,
        /// TokenSources matching this label selector.
        #[arg(short = 'l', long, conflicts_with = "names")]
        selector: Option<String>,
    },
}

type Failure = Box<dyn std::error::Error>;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tokensource_operator::transport::install_crypto_provider();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let options = kube::config::KubeConfigOptions { context: cli.context.clone(), ..Default::default() };
    let config = match &cli.kubeconfig {
        Some(path) => {
            kube::Config::from_custom_kubeconfig(kube::config::Kubeconfig::read_from(path)?, &options).await?
        }
        None => match kube::Config::from_kubeconfig(&options).await {
            Ok(c) => c,
            Err(_) => kube::Config::infer().await?,
        },
    };
    let ns = cli.namespace.clone().unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config)?;
    match cli.command {
        Command::Status { name } => status(&client, &ns, &name).await,
        Command::Refresh { names, all, selector } => refresh(&client, &ns, names, all, selector).await,
    }
}

async fn refresh(
    client: &Client,
    ns: &str,
    names: Vec<String>,
    all: bool,
    selector: Option<String>,
) -> Result<(), Failure> {
    let api: Api<TokenSource> = Api::namespaced(client.clone(), ns);
    let names = if all || selector.is_some() {
        let params = selector.as_deref().map_or_else(ListParams::default, |s| ListParams::default().labels(s));
        api.list(&params).await?.items.iter().map(ResourceExt::name_any).collect()
    } else {
        names
    };
    if names.is_empty() {
        return Err("name TokenSources to refresh, or use --all or -l SELECTOR".into());
    }
    let now = Timestamp::now().round(jiff::Unit::Second)?.to_string();
    let patch = json!({"metadata": {"annotations": {REFRESH_REQUESTED_AT_ANNOTATION: now}}});
    for name in names {
        api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
        println!("tokensource.tokensource.dev/{name} refresh requested at {now}");
    }
    Ok(())
}

/// A time and how far it is from now, as `2026-01-02T03:04:05Z (in 59m)`.
fn when(t: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>, now: Timestamp) -> String {
    let Some(t) = t.map(|t| t.0) else { return "-".into() };
    let d = t.duration_since(now);
    let span = human(d.abs());
    if d.is_negative() { format!("{t} ({span} ago)") } else { format!("{t} (in {span})") }
}

fn human(d: SignedDuration) -> String {
    let s = d.as_secs();
    match s {
        0..120 => format!("{s}s"),
        120..7200 => format!("{}m", s / 60),
        7200..172_800 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d", s / 86_400),
    }
}

async fn status(client: &Client, ns: &str, name: &str) -> Result<(), Failure> {
    let ts = Api::<TokenSource>::namespaced(client.clone(), ns).get(name).await?;
    let now = Timestamp::now();
    let st = ts.status.clone().unwrap_or_default();
    let target = ts.spec.target.name.clone();
    let mut out = format!("TokenSource {ns}/{name} ({:?}, target Secret {target:?})\n", ts.spec.type_);
    out.push_str("Conditions:\n");
    if st.conditions.is_empty() {
        out.push_str("  none yet: the operator has not reconciled it (is it running and watching this namespace?)\n");
    }
    for c in &st.conditions {
        let message = if c.message.is_empty() { String::new() } else { format!(": {}", c.message) };
        out.push_str(&format!("  {:<9} {:<6} {}{message}\n", c.type_, c.status, c.reason));
    }
    out.push_str(&format!("Token expires:     {}\n", when(st.expiration_time.as_ref(), now)));
    out.push_str(&format!("Next refresh:      {}\n", when(st.renewal_time.as_ref(), now)));
    out.push_str(&format!("Last renewal:      {}\n", when(st.last_renewal_time.as_ref(), now)));
    if let Some(t) = &st.token_type {
        out.push_str(&format!("Token type:        {t}\n"));
    }
    if !st.scopes.is_empty() {
        out.push_str(&format!("Scopes:            {}\n", st.scopes.join(" ")));
    }
    if st.failed_renewal_attempts > 0 {
        out.push_str(&format!(
            "Failed attempts:   {} (last {})\n",
            st.failed_renewal_attempts,
            when(st.last_failure_time.as_ref(), now)
        ));
    }
    if let Some(r) = &st.last_refresh_request {
        out.push_str(&format!("Manual refresh:    {r} (handled)\n"));
    }
    if let Some(pending) = ts.refresh_requested().filter(|r| st.last_refresh_request.as_deref() != Some(*r)) {
        out.push_str(&format!("Manual refresh:    {pending} (pending)\n"));
    }

    // The Secret's keys and sizes; never a value.
    let secret = Api::<Secret>::namespaced(client.clone(), ns).get_opt(&target).await;
    match secret {
        Ok(Some(s)) => {
            let keys: BTreeMap<String, usize> =
                s.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0.len())).collect();
            let keys: Vec<String> = keys.into_iter().map(|(k, n)| format!("{k} ({n} bytes)")).collect();
            out.push_str(&format!(
                "Secret {target}:  type {}, keys: {}\n",
                s.type_.unwrap_or_default(),
                keys.join(", ")
            ));
        }
        Ok(None) => out.push_str(&format!("Secret {target}:  does not exist (yet)\n")),
        Err(e) => out.push_str(&format!("Secret {target}:  cannot read it: {e}\n")),
    }

    // The Pods that consume it, and whether they ever see a renewed token.
    out.push_str("Consumers:\n");
    match Api::<Pod>::namespaced(client.clone(), ns).list(&ListParams::default()).await {
        Ok(pods) => {
            let mut any = false;
            for pod in &pods.items {
                let Some(spec) = &pod.spec else { continue };
                for c in consumers::consumptions(spec, &target) {
                    any = true;
                    let warning = if c.how.sees_renewals() {
                        ""
                    } else {
                        "  ! never sees a renewed token; restart it or mount the Secret as a volume without subPath"
                    };
                    out.push_str(&format!(
                        "  pod/{} container {}: {}{warning}\n",
                        pod.name_any(),
                        c.container,
                        c.how.describe()
                    ));
                }
            }
            if !any {
                out.push_str("  no Pod in the namespace reads the Secret\n");
            }
        }
        Err(e) => out.push_str(&format!("  cannot list Pods: {e}\n")),
    }

    // Recent Events, newest last.
    out.push_str("Events:\n");
    let params = ListParams::default().fields(&format!("involvedObject.name={name},involvedObject.kind=TokenSource"));
    match Api::<Event>::namespaced(client.clone(), ns).list(&params).await {
        Ok(list) => {
            let mut events: Vec<(Timestamp, Event)> = list
                .items
                .into_iter()
                .map(|e| {
                    let at = e
                        .last_timestamp
                        .as_ref()
                        .map(|t| t.0)
                        .or(e.event_time.as_ref().map(|t| t.0))
                        .or(e.metadata.creation_timestamp.as_ref().map(|t| t.0))
                        .unwrap_or_default();
                    (at, e)
                })
                .collect();
            events.sort_by_key(|(at, _)| *at);
            if events.is_empty() {
                out.push_str("  none\n");
            }
            for (at, e) in events.iter().rev().take(10).rev() {
                let span = human(now.duration_since(*at).abs());
                out.push_str(&format!(
                    "  {span:>6} ago  {:<8} {:<22} {}\n",
                    e.type_.as_deref().unwrap_or(""),
                    e.reason.as_deref().unwrap_or(""),
                    e.message.as_deref().unwrap_or("")
                ));
            }
        }
        Err(e) => out.push_str(&format!("  cannot list Events: {e}\n")),
    }
    print!("{out}");
    Ok(())
}
