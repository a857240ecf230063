//! `kubectl tokensource`: a TokenSource's story in one command, and manual refresh.
//!
//! kubectl runs any `kubectl-<name>` binary on PATH as `kubectl <name>`; put this one there.

use std::collections::BTreeMap;

use clap::{Parser, Subcommand};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::{ConfigMap, Event, Pod, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokensource_operator::controller::Config;
use tokensource_operator::controller::service_account_token;
use tokensource_operator::crd::{REFRESH_REQUESTED_AT_ANNOTATION, TokenSource};
use tokensource_operator::credentials::Credentials;
use tokensource_operator::endpoint::EndpointPolicy;
use tokensource_operator::{consumers, dry_run};

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
    /// A dry run from this machine: send the token request of a TokenSource manifest and show
    /// what the operator would do with the answer. Reads the referenced credentials from the
    /// cluster (or --from-literal); writes nothing anywhere; never prints a secret or the token.
    Check {
        /// The TokenSource manifest.
        #[arg(short = 'f', long)]
        filename: std::path::PathBuf,
        /// A credential instead of the cluster's: SECRET/KEY=VALUE (or KEY=VALUE for any Secret).
        #[arg(long = "from-literal")]
        literals: Vec<String>,
        /// Allow an http:// token endpoint.
        #[arg(long)]
        allow_insecure_http: bool,
        /// Internal networks the endpoint may be in, as the operator's flag of the same name.
        #[arg(long, default_value = "")]
        allow_endpoint_cidrs: String,
        /// The only endpoint host names allowed, as the operator's flag of the same name.
        #[arg(long, default_value = "")]
        allow_endpoint_hosts: String,
    },
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
    if let Command::Check { filename, literals, allow_insecure_http, allow_endpoint_cidrs, allow_endpoint_hosts } =
        &cli.command
    {
        let policy = EndpointPolicy::parse(allow_endpoint_cidrs, allow_endpoint_hosts)?;
        let config = tokensource_operator::dry_run::config(*allow_insecure_http, policy);
        return check(&cli, filename, literals, &config).await;
    }
    let (client, ns) = connect(&cli).await?;
    match cli.command {
        Command::Status { name } => status(&client, &ns, &name).await,
        Command::Refresh { names, all, selector } => refresh(&client, &ns, names, all, selector).await,
        Command::Check { .. } => Ok(()),
    }
}

/// A client from the kubeconfig, and the namespace to work in.
async fn connect(cli: &Cli) -> Result<(Client, String), Failure> {
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
    Ok((Client::try_from(config)?, ns))
}

async fn check(cli: &Cli, file: &std::path::Path, literals: &[String], config: &Config) -> Result<(), Failure> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("reading {}: {e}", file.display()))?;
    let mut ts: TokenSource =
        serde_saphyr::from_str(&text).map_err(|e| format!("{} is not a TokenSource: {e}", file.display()))?;
    let given: Vec<(String, String)> = literals
        .iter()
        .map(|l| l.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect::<Option<_>>()
        .ok_or("--from-literal takes SECRET/KEY=VALUE or KEY=VALUE")?;
    // The cluster is asked only for what was not given.
    let mut cluster: Option<(Client, String)> = None;
    let mut creds = Credentials::default();
    for r in ts.spec.secret_refs() {
        let literal = given.iter().find(|(k, _)| *k == format!("{}/{}", r.name, r.key) || *k == r.key);
        let value = match literal {
            Some((_, v)) => v.clone().into_bytes(),
            None => {
                let (client, ns) = connected(cli, &mut cluster).await?;
                let secret =
                    Api::<Secret>::namespaced(client.clone(), ns).get_opt(&r.name).await?.ok_or_else(|| {
                        format!(
                            "Secret {ns}/{} not found (or give the value with --from-literal {}/{}=...)",
                            r.name, r.name, r.key
                        )
                    })?;
                secret
                    .data
                    .unwrap_or_default()
                    .remove(&r.key)
                    .map(|v| v.0)
                    .ok_or_else(|| format!("Secret {ns}/{} has no key {:?}", r.name, r.key))?
            }
        };
        creds.insert(r, value);
    }
    for r in ts.spec.config_map_refs() {
        let (client, ns) = connected(cli, &mut cluster).await?;
        let cm = Api::<ConfigMap>::namespaced(client.clone(), ns).get_opt(&r.name).await?;
        let value = cm
            .and_then(|c| c.data?.remove(&r.key))
            .ok_or_else(|| format!("ConfigMap {ns}/{} has no key {:?}", r.name, r.key))?;
        creds.insert_config(r, value);
    }
    // A chained request uses the upstream TokenSource's current token, from its Secret.
    let upstream = match ts.spec.upstream() {
        Some(name) => {
            let (client, ns) = connected(cli, &mut cluster).await?;
            let up = Api::<TokenSource>::namespaced(client.clone(), ns).get(name).await?;
            let secret = Api::<Secret>::namespaced(client.clone(), ns).get_opt(&up.spec.target.name).await?;
            let token =
                secret.and_then(|s| s.data?.remove("token")).map(|t| String::from_utf8_lossy(&t.0).into_owned());
            Some(token.ok_or_else(|| format!("the upstream TokenSource {name:?} has no token in its Secret yet"))?)
        }
        None => None,
    };
    // A workload identity flow sends a ServiceAccount token, requested with the user's rights.
    if let Some(spec) = ts.spec.service_account_token() {
        let (client, ns) = connected(cli, &mut cluster).await?;
        let token = service_account_token(client, ns, spec).await.map_err(|e| e.to_string())?;
        creds.set_service_account_token(token);
    }
    if ts.metadata.namespace.is_none() {
        ts.metadata.namespace = cli.namespace.clone();
    }
    let now = Timestamp::now();
    match dry_run::dry_run(&ts, &creds, upstream.as_deref(), config).await {
        Ok(r) => {
            let t = &r.token;
            let jwt = t.access_token.split('.').count() == 3;
            println!("Request:  {}", r.request);
            println!(
                "Answer:   a token ({}, {} bytes{})",
                t.token_type.as_deref().unwrap_or("no token_type"),
                t.access_token.len(),
                if jwt { ", a JWT" } else { "" }
            );
            println!(
                "Expires:  {} (in {}), from {}",
                t.expires_at,
                human(t.expires_at.duration_since(now).abs()),
                dry_run::lifetime_source(t.lifetime_source)
            );
            if t.expires_at.duration_since(now) > jiff::SignedDuration::from_hours(7 * 24) {
                println!(
                    "Note:     a lifetime of {} is unusual for an API token: if the provider counts milliseconds, this was read as seconds (response.expiry.type ExpiresAt with format UnixMilliseconds, or check the provider's documentation)",
                    human(t.expires_at.duration_since(now).abs())
                );
            }
            if t.lifetime_source == tokensource_operator::response::LifetimeSource::Default {
                println!(
                    "Note:     the reply gave no expiry; the operator would assume response.expiry.defaultLifetime"
                );
            }
            println!("Scopes:   {}", t.scope.as_deref().unwrap_or("(none given)"));
            println!("Renewal:  {} (in {})", r.renew_at, human(r.renew_at.duration_since(now).abs()));
            let (from, to) = r.first_renewal;
            println!(
                "First:    a new TokenSource's first token, or one after a change, renews at a time spread from {from} (in {}) to {to} (in {}), so tokens obtained together do not renew together",
                human(from.duration_since(now).abs()),
                human(to.duration_since(now).abs())
            );
            println!("Secret:   {:?} ({}) would hold: {}", ts.spec.target.name, r.secret_type, r.keys.join(", "));
            println!("Nothing was written to the cluster.");
            Ok(())
        }
        Err(f) => {
            if let Some(request) = &f.request {
                println!("Request:  {request}");
            }
            println!("Failed:   {}", f.message);
            if let Some(hint) = f.hint {
                println!("Fix:      {hint}");
            }
            println!("Nothing was written to the cluster.");
            Err("the dry run failed".into())
        }
    }
}

/// The cluster connection, made on first use.
async fn connected<'a>(cli: &Cli, cluster: &'a mut Option<(Client, String)>) -> Result<&'a (Client, String), Failure> {
    if cluster.is_none() {
        *cluster = Some(connect(cli).await?);
    }
    cluster.as_ref().ok_or_else(|| "no cluster".into())
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
