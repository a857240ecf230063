//! `tokensource-operator`: run the controller, or print the CRD.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tokensource_operator::admin::{self, Health};
use tokensource_operator::controller::{self, Config};
use tokensource_operator::endpoint::EndpointPolicy;
use tokensource_operator::limit;
use tokensource_operator::metrics::Metrics;
use tokensource_operator::telemetry::{self, LogFormat};
use tokensource_operator::{crd, leader, schedule, transport};

/// jemalloc on Linux (see BENCHMARKS.md): musl's allocator is slow under many threads, and
/// glibc's per-thread arenas keep memory a restart's listings freed.
#[cfg(target_os = "linux")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(version, about = "Keeps short-lived API bearer tokens fresh in Kubernetes Secrets")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start: the size of `RunArgs` does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the controller.
    // A flag given twice takes its last value (an install's extra arguments override its own).
    #[command(args_override_self = true)]
    Run(RunArgs),
    /// Print the TokenSource CustomResourceDefinition as YAML.
    Crd,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Kubeconfig to use; in-cluster config or $KUBECONFIG when unset.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Watch only this namespace (all namespaces when unset).
    #[arg(long, env = "WATCH_NAMESPACE")]
    namespace: Option<String>,
    /// Address of the probe and metrics endpoint.
    #[arg(long, default_value = "0.0.0.0:8080", env = "ADMIN_ADDR")]
    admin_addr: SocketAddr,
    /// Log filter, such as `info` or `tokensource_operator=debug` (RUST_LOG wins when set).
    #[arg(long, default_value = "info", env = "LOG_LEVEL")]
    log_level: String,
    /// Log line format.
    #[arg(long, value_enum, default_value = "text", env = "LOG_FORMAT")]
    log_format: LogFormat,
    /// The latest a new token may land before the old one expires, so the kubelet can update
    /// mounted Secrets (shrunk to a quarter of the lifetime for short-lived tokens).
    #[arg(long, default_value = "2m", value_parser = parse_duration, env = "PROPAGATION_MARGIN")]
    propagation_margin: Duration,
    /// How many TokenSources are reconciled at once.
    #[arg(long, default_value_t = 16, env = "CONCURRENCY")]
    concurrency: u16,
    /// Where the limit of requests in flight to one token endpoint host starts, and the least
    /// it falls to when the host throttles, fails or slows down.
    #[arg(long, default_value_t = 4, env = "MIN_REQUESTS_PER_HOST")]
    min_requests_per_host: usize,
    /// The most requests in flight to one token endpoint host, which the limit grows to while
    /// the host answers quickly: a number for every host, and HOST=N or HOST:PORT=N for one,
    /// comma-separated (`16,login.example.com=64`). Equal to --min-requests-per-host, the limit
    /// is fixed.
    #[arg(long, default_value = "32", value_parser = limit::Ceilings::parse, env = "MAX_REQUESTS_PER_HOST")]
    max_requests_per_host: limit::Ceilings,
    /// Total timeout for one token request.
    #[arg(long, default_value = "30s", value_parser = parse_duration, env = "REQUEST_TIMEOUT")]
    request_timeout: Duration,
    /// Allow http:// token endpoints. Credentials then travel unencrypted: local testing only.
    #[arg(long, env = "ALLOW_INSECURE_HTTP")]
    allow_insecure_http: bool,
    /// Networks token endpoints may be in although they are internal (loopback, link-local,
    /// private, shared, ...), comma-separated CIDRs such as 10.96.0.0/12 for an in-cluster
    /// identity provider. Internal addresses are refused otherwise.
    #[arg(long, default_value = "", env = "ALLOW_ENDPOINT_CIDRS")]
    allow_endpoint_cidrs: String,
    /// If set, the only token endpoint hosts allowed: comma-separated exact names, `*.suffix`
    /// patterns or addresses (an address in a URL is then allowed only if it is listed).
    #[arg(long, default_value = "", env = "ALLOW_ENDPOINT_HOSTS")]
    allow_endpoint_hosts: String,
    /// Send token requests through this HTTP proxy (`http://host:port`, credentials as
    /// `http://user:password@host:port`); the endpoint policy still applies to each destination.
    /// HTTPS_PROXY, HTTP_PROXY, ALL_PROXY and NO_PROXY are never used for token requests.
    // Checked in `run`, not by clap, whose error would repeat the value and any password in it.
    #[arg(long, env = "ENDPOINT_PROXY", hide_env_values = true)]
    endpoint_proxy: Option<String>,
    /// Watch Pods and report, on each TokenSource, those that read its Secret in a way that never
    /// sees a renewed token (env, envFrom, subPath). Needs list/watch on Pods.
    #[arg(long, env = "AUDIT_CONSUMERS")]
    audit_consumers: bool,
    /// Run as one of several replicas: only the holder of the Lease `tokensource-operator` calls
    /// providers and writes; the others keep their caches warm and take over when it goes.
    #[arg(long, env = "LEADER_ELECT")]
    leader_elect: bool,
    /// Namespace of the Lease (default: $POD_NAMESPACE, else `default`).
    #[arg(long, env = "LEADER_ELECTION_NAMESPACE")]
    leader_election_namespace: Option<String>,
    /// How long a standby waits after the last renewal it saw before it takes over.
    #[arg(long, default_value = "15s", value_parser = parse_duration, env = "LEADER_ELECTION_LEASE_DURATION")]
    leader_election_lease_duration: Duration,
    /// How long the leader may go without a successful renewal before it stops writing.
    #[arg(long, default_value = "10s", value_parser = parse_duration, env = "LEADER_ELECTION_RENEW_DEADLINE")]
    leader_election_renew_deadline: Duration,
    /// How often the leader renews the Lease and a standby tries to take it.
    #[arg(long, default_value = "2s", value_parser = parse_duration, env = "LEADER_ELECTION_RETRY_PERIOD")]
    leader_election_retry_period: Duration,
}

impl RunArgs {
    /// The election settings, when it runs with `--leader-elect`.
    fn election(&self) -> Result<Option<leader::Settings>, String> {
        if !self.leader_elect {
            return Ok(None);
        }
        let namespace = self
            .leader_election_namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".into());
        let settings = leader::Settings {
            namespace,
            lease_name: leader::LEASE_NAME.into(),
            identity: leader::identity(),
            lease_duration: self.leader_election_lease_duration,
            renew_deadline: self.leader_election_renew_deadline,
            retry_period: self.leader_election_retry_period,
        };
        settings.check()?;
        Ok(Some(settings))
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    schedule::parse_duration(s)
        .map_err(|e| e.to_string())
        .and_then(|d| Duration::try_from(d).map_err(|e| e.to_string()))
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    transport::install_crypto_provider();
    match cli.command {
        Command::Crd => match crd::crd_yaml() {
            Ok(y) => print_quietly(&y),
            Err(e) => {
                eprintln!("cannot render the CRD: {e}");
                std::process::ExitCode::FAILURE
            }
        },
        Command::Run(args) => {
            telemetry::init(&args.log_level, args.log_format);
            telemetry::install_panic_hook();
            match run(args).await {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "tokensource-operator stopped");
                    std::process::ExitCode::FAILURE
                }
            }
        }
    }
}

/// Writes to standard output; a reader that went away (`| head`) ends the command quietly.
fn print_quietly(text: &str) -> std::process::ExitCode {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cannot write to standard output: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: RunArgs) -> Result<(), Box<dyn std::error::Error>> {
    let election = args.election()?;
    let proxy = args
        .endpoint_proxy
        .as_deref()
        .map(transport::ProxyUrl::parse)
        .transpose()
        .map_err(|e| format!("--endpoint-proxy: {e}"))?;
    let mut config = match &args.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default()).await?
        }
        None => kube::Config::infer().await?,
    };
    // Who sent a request, in the API server's audit log: the version and, with leader election,
    // the instance.
    let agent = match &election {
        Some(e) => format!("tokensource-operator/{} ({})", env!("CARGO_PKG_VERSION"), e.identity),
        None => format!("tokensource-operator/{}", env!("CARGO_PKG_VERSION")),
    };
    config.headers.push((axum::http::header::USER_AGENT, axum::http::HeaderValue::from_str(&agent)?));
    let client = kube::Client::try_from(config)?;
    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(Health::default());
    let listener = tokio::net::TcpListener::bind(args.admin_addr)
        .await
        .map_err(|e| format!("cannot listen on {} for probes and metrics (--admin-addr): {e}", args.admin_addr))?;
    let admin = tokio::spawn(admin::serve(listener, health.clone(), metrics.clone()));
    let leadership = Arc::new(match election {
        Some(_) => leader::Leadership::elected(),
        None => leader::Leadership::single(),
    });
    let config = Config {
        leadership: leadership.clone(),
        namespace: args.namespace,
        propagation_margin: args.propagation_margin,
        allow_http: args.allow_insecure_http,
        concurrency: args.concurrency,
        audit_consumers: args.audit_consumers,
        transport: transport::Options {
            timeout: args.request_timeout,
            per_host_floor: args.min_requests_per_host,
            per_host_ceilings: Arc::new(args.max_requests_per_host),
            endpoints: Arc::new(EndpointPolicy::parse(&args.allow_endpoint_cidrs, &args.allow_endpoint_hosts)?),
            proxy,
            ..Default::default()
        },
    };
    // The election runs beside the controller and outlives it: on shutdown the controller ends
    // its reconciles first, then the Lease is released.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let elector = election.map(|settings| {
        let elector = leader::Elector::new(client.clone(), settings, leadership);
        tokio::spawn(elector.run(stopped))
    });
    let result = controller::run(client, config, metrics, health, shutdown_signal()).await;
    let _ = stop.send(true);
    if let Some(elector) = elector {
        let _ = elector.await;
    }
    admin.abort();
    Ok(result?)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(_) => {
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flag_given_twice_takes_its_last_value() {
        let cli = Cli::try_parse_from([
            "tokensource-operator",
            "run",
            "--concurrency=8",
            "--leader-elect",
            "--concurrency=32",
            "--leader-elect",
        ])
        .map_err(|e| e.to_string());
        match cli.map(|c| c.command) {
            Ok(Command::Run(args)) => assert!(args.concurrency == 32 && args.leader_elect),
            Ok(Command::Crd) => panic!("parsed as crd"),
            Err(e) => panic!("{e}"),
        }
    }
}
