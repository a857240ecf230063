//! `kubesim --addr 127.0.0.1:0 --kubeconfig PATH`: serves the emulated API until SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

#[derive(Parser)]
#[command(version, about = "An in-memory Kubernetes API server for tests and local sandboxes")]
struct Args {
    /// Address to listen on (loopback only is recommended; there is no authentication).
    #[arg(long, default_value = "127.0.0.1:0")]
    addr: SocketAddr,
    /// Where to write a kubeconfig for the server.
    #[arg(long)]
    kubeconfig: PathBuf,
    /// How many changes the watch history keeps.
    #[arg(long, default_value_t = 200_000)]
    history: usize,
    /// The audiences the API server accepts as its own (the issuer's URL when none).
    #[arg(long, value_delimiter = ',')]
    api_audiences: Vec<String>,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let opts = kubesim::Options {
        addr: args.addr,
        history_limit: args.history,
        kubeconfig: Some(args.kubeconfig.clone()),
        api_audiences: args.api_audiences.clone(),
        ..Default::default()
    };
    let sim = kubesim::KubeSim::start_with(opts).await?;
    println!("kubesim listening on {}", sim.url());
    println!("export KUBECONFIG={}", args.kubeconfig.display());
    shutdown_signal().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
