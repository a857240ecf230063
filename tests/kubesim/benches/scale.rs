//! Scale benchmark for kubesim: 10,000 Secrets created, listed in pages of 500, and watched by
//! 100 concurrent watchers. Prints numbers; asserts only that every watcher saw every event.
//!
//!     cargo bench -p kubesim --bench scale
//!
//! Environment: SECRETS (default 10000), WATCHERS (default 100), CREATORS (default 8).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let secrets = env("SECRETS", 10_000);
    let watchers = env("WATCHERS", 100);
    let creators = env("CREATORS", 8);
    let sim = kubesim::KubeSim::start().await?;
    let api: Api<Secret> = Api::default_namespaced(sim.client());
    let start_rv = sim.resource_version().to_string();
    println!("kubesim scale benchmark: {secrets} Secrets, {watchers} watchers, {creators} concurrent creators");
    println!("rss at start: {:.1} MiB", kubesim::resident_mib());

    // Watchers first, from the current resourceVersion, each on its own client connection.
    let seen = Arc::new(AtomicUsize::new(0));
    let mut tasks = vec![];
    for _ in 0..watchers {
        let api: Api<Secret> = Api::default_namespaced(sim.client());
        let rv = start_rv.clone();
        let seen = seen.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0usize;
            let mut rv = rv;
            while n < secrets {
                let stream = api.watch(&WatchParams::default().timeout(290), &rv).await?;
                futures::pin_mut!(stream);
                while let Ok(Some(ev)) = stream.try_next().await {
                    match ev {
                        WatchEvent::Added(s) => {
                            n += 1;
                            rv = s.metadata.resource_version.unwrap_or_default();
                            seen.fetch_add(1, Ordering::Relaxed);
                            if n == secrets {
                                break;
                            }
                        }
                        WatchEvent::Bookmark(b) => rv = b.metadata.resource_version,
                        WatchEvent::Error(e) => return Err(format!("watch error: {e:?}").into()),
                        _ => {}
                    }
                }
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(n)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let created = Instant::now();
    let per = secrets.div_ceil(creators);
    let mut makers = vec![];
    for c in 0..creators {
        let api = api.clone();
        makers.push(tokio::spawn(async move {
            for i in (c * per)..((c + 1) * per).min(secrets) {
                let s: Secret = serde_json::from_value(json!({
                    "metadata": {"name": format!("s-{i:05}"), "labels": {"bench": "scale", "shard": (i % 10).to_string()}},
                    "data": {"token": "dG9rZW4tdmFsdWUtZm9yLWJlbmNobWFyaw==", "expires_at": "MjAyNi0xMS0yMlQwMDowMDowMFo="}
                }))
                .unwrap_or_default();
                api.create(&PostParams::default(), &s).await?;
            }
            Ok::<_, kube::Error>(())
        }));
    }
    for m in makers {
        m.await??;
    }
    let create_secs = created.elapsed().as_secs_f64();
    println!("create: {secrets} in {create_secs:.2}s = {:.0} creates/s", secrets as f64 / create_secs);

    let fanout = Instant::now();
    for t in tasks {
        let n = t.await??;
        assert_eq!(n, secrets, "a watcher missed events");
    }
    let total_events = seen.load(Ordering::Relaxed);
    let watch_secs = created.elapsed().as_secs_f64();
    println!(
        "watch: {watchers} watchers saw all {total_events} events {:.2}s after the first create ({:.2}s after the last) = {:.0} events/s delivered",
        watch_secs,
        fanout.elapsed().as_secs_f64(),
        total_events as f64 / watch_secs
    );

    let listed = Instant::now();
    let mut token: Option<String> = None;
    let mut pages = 0;
    let mut items = 0;
    loop {
        let mut lp = ListParams::default().limit(500);
        if let Some(t) = &token {
            lp = lp.continue_token(t);
        }
        let page = api.list(&lp).await?;
        pages += 1;
        items += page.items.len();
        token = page.metadata.continue_.filter(|c| !c.is_empty());
        if token.is_none() {
            break;
        }
    }
    let list_secs = listed.elapsed().as_secs_f64();
    assert_eq!(items, secrets);
    println!(
        "list: {items} Secrets in {pages} pages of 500 in {list_secs:.3}s = {:.1} ms/page",
        list_secs * 1000.0 / pages as f64
    );

    let selected = Instant::now();
    let shard = api.list(&ListParams::default().labels("shard=3")).await?;
    println!(
        "list with labelSelector (1 in 10): {} items in {:.3}s",
        shard.items.len(),
        selected.elapsed().as_secs_f64()
    );
    println!(
        "rss at end: {:.1} MiB (the emulator, 100 client connections and the benchmark in one process)",
        kubesim::resident_mib()
    );
    Ok(())
}
