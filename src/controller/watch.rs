//! The watch wiring: the TokenSource controller, the caches of managed Secrets and of every
//! Secret's metadata, and the triggers that turn a Secret event into reconciles of the
//! TokenSources it affects.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, PartialObjectMeta};
use kube::runtime::controller::{self, Controller};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio::sync::mpsc;

use super::index::References;
use super::memory::Memory;
use super::{Config, Context, MANAGER, reconcile, scoped};
use crate::admin::Health;
use crate::crd::TokenSource;
use crate::metrics::{Metrics, WatchLabels};
use crate::secret;
use crate::transport::Transport;

/// Why the controller could not start.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartError(pub String);

/// Logs a watch error at warn, with what it says (a `Forbidden` names the missing permission),
/// and counts it.
fn watch_error(metrics: &Metrics, watch: &str, e: &dyn std::fmt::Display) {
    tracing::warn!(watch, error = %e, "watch error; retrying with backoff");
    metrics.watch_errors.get_or_create(&WatchLabels { watch: watch.into() }).inc();
}

/// Forwards the objects a watch touches into the trigger channel.
fn forward<K, S>(
    stream: S,
    tx: mpsc::Sender<ObjectRef<TokenSource>>,
    (metrics, watch): (Arc<Metrics>, &'static str),
    map: impl Fn(&K) -> Vec<ObjectRef<TokenSource>> + Send + 'static,
) where
    K: Send + 'static,
    S: Stream<Item = Result<K, watcher::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(item) = stream.next().await {
            match item {
                Ok(obj) => {
                    for r in map(&obj) {
                        if tx.send(r).await.is_err() {
                            return;
                        }
                    }
                }
                Err(e) => watch_error(&metrics, watch, &e),
            }
        }
    });
}

/// Runs the controller until `shutdown` resolves: it finishes the reconciles under way. Stopped
/// before its TokenSource cache synced (at start, against a slow API server), it stops at once:
/// nothing has been reconciled yet, and the controller would wait for a cache no longer fed.
pub async fn run(
    client: Client,
    config: Config,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), StartError> {
    let shutdown = futures::FutureExt::shared(shutdown);
    let (stop, synced) = (shutdown.clone(), health.clone());
    let stopped_unsynced = async move {
        stop.await;
        if synced.ready.load(Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        served = serve(client, config, metrics, health, shutdown) => served,
        () = stopped_unsynced => {
            tracing::info!("stopped before the caches synced");
            Ok(())
        }
    }
}

async fn serve(
    client: Client,
    config: Config,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), StartError> {
    let ns = config.namespace.clone();
    let sources_api: Api<TokenSource> = scoped(&client, ns.as_deref());
    // Fail fast with a clear message when the CRD is not installed.
    sources_api.list(&ListParams::default().limit(1)).await.map_err(|e| {
        StartError(format!(
            "cannot list TokenSources ({e}); is the CRD installed? (tokensource-operator crd | kubectl apply -f -)"
        ))
    })?;
    // What this instance remembers about a TokenSource is forgotten the moment it is deleted.
    let memory = Arc::new(Memory::default());
    let references = Arc::new(References::default());
    let (sources, sources_writer) = reflector::store();
    // TokenSources to reconcile besides those the TokenSource watch names: Secret events, pods,
    // leadership changes and deleted upstreams send them here.
    let (tx, rx) = mpsc::channel::<ObjectRef<TokenSource>>(4096);
    let forget = (memory.clone(), references.clone(), tx.clone());
    // Ready once the TokenSource cache has synced (its watch starts with the controller, after the
    // Secret caches below have synced). The store's own readiness wakes only its last waiter, and
    // the controller waits on it: a second waiter could steal its wake-up, so the watch's InitDone
    // is observed here instead.
    let synced = health.clone();
    let source_events = reflector::reflector(
        sources_writer,
        watcher(sources_api, watcher::Config::default().any_semantic()).modify(slim),
    )
    .inspect_ok(move |event| match event {
        watcher::Event::Delete(ts) => {
            let gone = ObjectRef::from_obj(ts);
            forget.0.forget(&gone);
            forget.1.forget(&gone);
            // Its chained TokenSources learn at once that it is gone (the store already says so).
            let chained = forget.1.chained_to(gone.namespace.as_deref().unwrap_or_default(), &gone.name);
            if !chained.is_empty() {
                let tx = forget.2.clone();
                tokio::spawn(async move {
                    for r in chained {
                        if tx.send(r).await.is_err() {
                            return;
                        }
                    }
                });
            }
        }
        watcher::Event::InitDone if !synced.ready.swap(true, Ordering::Relaxed) => {
            tracing::info!("caches synced; ready");
        }
        _ => {}
    })
    .applied_objects();
    let controller = Controller::for_stream(source_events, sources.clone());

    // Managed Secrets, what the operator reads of them (`secret::Managed`): their tokens drive
    // chains and their deletion or tampering is noticed.
    let (targets, targets_writer) = reflector::store::<secret::Managed>();
    let selector = format!("{}={}", secret::MANAGED_BY_LABEL, secret::MANAGED_BY);
    let managed =
        watcher(scoped::<Secret>(&client, ns.as_deref()), watcher::Config::default().labels(&selector)).map_ok(project);
    let targets_stream = reflector::reflector(targets_writer, managed).default_backoff().touched_objects();
    // Every Secret, metadata only, kept for none but the referenced ones: credential changes are
    // noticed without caching any other Secret.
    let versions = Arc::new(super::index::SecretVersions::default());
    let (seen, refs) = (versions.clone(), references.clone());
    let meta_stream = watcher(scoped::<PartialObjectMeta<Secret>>(&client, ns.as_deref()), watcher::Config::default())
        .default_backoff()
        .inspect_ok(move |event| seen.observe(event, &refs))
        .touched_objects();

    let by_target = references.clone();
    forward(targets_stream, tx.clone(), (metrics.clone(), "managed-secrets"), move |s: &secret::Managed| {
        use reflector::Lookup;
        let (ns, name) = (s.namespace().unwrap_or_default(), s.name().unwrap_or_default());
        by_target.affected(&ns, &name, s.owner())
    });
    let by_secret = references.clone();
    forward(meta_stream, tx.clone(), (metrics.clone(), "secret-metadata"), move |m: &PartialObjectMeta<Secret>| {
        by_secret.affected(&m.namespace().unwrap_or_default(), &m.name_any(), None)
    });
    targets.wait_until_ready().await.map_err(|e| StartError(e.to_string()))?;
    versions.wait_synced().await;

    let transport = Transport::new(config.transport.clone()).map_err(|e| StartError(e.to_string()))?;
    let consumers = config.audit_consumers.then(|| {
        let consumers = Arc::new(super::audit::Consumers::default());
        watch_pods(&client, ns.as_deref(), consumers.clone(), references.clone(), tx.clone(), metrics.clone());
        consumers
    });
    let ctx = Arc::new(Context {
        consumers,
        shared: Default::default(),
        retrigger: tx.clone(),
        recorder: super::events::Recorder::new(client.clone(), MANAGER, std::env::var("POD_NAME").ok()),
        client,
        transport,
        sources,
        targets,
        versions,
        credentials: Default::default(),
        waiting: Default::default(),
        refused: Default::default(),
        flights: Default::default(),
        memory,
        references,
        ticks: Default::default(),
        metrics: metrics.clone(),
        config: config.clone(),
    });
    follow_leadership(&ctx, tx.clone(), health.clone());
    metrics.sources.attach(ctx.sources.clone(), config.leadership.clone());
    let hosts = Arc::downgrade(&ctx);
    metrics.hosts.attach(Arc::new(move || hosts.upgrade().map(|ctx| ctx.host_rows()).unwrap_or_default()));
    tracing::info!(namespace = ns.as_deref().unwrap_or("<all>"), "controller running");
    controller
        .with_config(controller::Config::default().concurrency(config.concurrency))
        .reconcile_on(tokio_stream::wrappers::ReceiverStream::new(rx))
        .graceful_shutdown_on(shutdown)
        .run(reconcile::reconcile, reconcile::error_policy, ctx.clone())
        .for_each(|res| {
            ctx.tick();
            match res {
                // A requeue of a TokenSource deleted since: forget what was kept about it.
                Err(controller::Error::ObjectNotFound(r)) => {
                    let gone =
                        ObjectRef::<TokenSource>::new(&r.name).within(r.namespace.as_deref().unwrap_or_default());
                    ctx.memory.forget(&gone);
                    ctx.references.forget(&gone);
                }
                Err(controller::Error::QueueError(e)) => watch_error(&ctx.metrics, "tokensources", &e),
                Err(e) => tracing::debug!(error = %e, "controller event"),
                Ok(_) => {}
            }
            futures::future::ready(())
        })
        .await;
    Ok(())
}

/// A managed Secret's watch event, with the Secret reduced to what the cache keeps.
fn project(event: watcher::Event<Secret>) -> watcher::Event<secret::Managed> {
    match event {
        watcher::Event::Apply(s) => watcher::Event::Apply(secret::Managed::of(s)),
        watcher::Event::Delete(s) => watcher::Event::Delete(secret::Managed::of(s)),
        watcher::Event::InitApply(s) => watcher::Event::InitApply(secret::Managed::of(s)),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitDone => watcher::Event::InitDone,
    }
}

/// Drops what the caches never read and what costs most of an object's memory: the managed
/// fields (a tree of every field each writer set) and kubectl's last-applied copy of the object.
fn slim<K: ResourceExt>(obj: &mut K) {
    obj.managed_fields_mut().clear();
    if let Some(a) = obj.meta_mut().annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// Watches Pods for the consumer audit: each event is reduced to who reads which Secret, and
/// the TokenSources of the Secrets whose readers changed are reconciled.
fn watch_pods(
    client: &Client,
    ns: Option<&str>,
    consumers: Arc<super::audit::Consumers>,
    references: Arc<References>,
    tx: mpsc::Sender<ObjectRef<TokenSource>>,
    metrics: Arc<Metrics>,
) {
    use k8s_openapi::api::core::v1::Pod;
    // Small list pages: a page of full Pods is the only thing held at once (measured in
    // examples/audit_memory.rs).
    let stream = watcher(scoped::<Pod>(client, ns), watcher::Config::default().page_size(100)).default_backoff();
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            let changed = match event {
                Ok(watcher::Event::Init) => {
                    consumers.relist_started();
                    vec![]
                }
                Ok(watcher::Event::InitApply(p) | watcher::Event::Apply(p)) => consumers.apply(&p),
                Ok(watcher::Event::Delete(p)) => consumers.delete(&p),
                Ok(watcher::Event::InitDone) => consumers.relist_done(),
                Err(e) => {
                    watch_error(&metrics, "pods", &e);
                    vec![]
                }
            };
            metrics.audited_pods.set(consumers.pods() as i64);
            for (ns, secret) in changed {
                for r in references.affected(&ns, &secret, None) {
                    if tx.send(r).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
}

/// Acts on changes of leadership: what this instance remembers is dropped either way (another
/// instance may have written meanwhile), and on taking over every TokenSource is reconciled, so
/// renewals that fell due in the gap happen at once. A renewal after the fence lapsed (a slow
/// API, the Lease still held) reconciles what was refused in the gap.
fn follow_leadership(ctx: &Arc<Context>, tx: mpsc::Sender<ObjectRef<TokenSource>>, health: Arc<Health>) {
    let mut changes = ctx.config.leadership.changes();
    let mut resumptions = ctx.config.leadership.resumptions();
    let ctx = ctx.clone();
    tokio::spawn(async move {
        // Leading at start (always, for a single instance) needs nothing here: the controller's
        // first listing reconciles every TokenSource.
        let mut first = true;
        loop {
            let leading = *changes.borrow_and_update();
            ctx.metrics.leader.set(i64::from(leading));
            if !std::mem::take(&mut first) {
                ctx.memory.clear();
                ctx.shared.clear();
                ctx.flights.clear_results();
                // Everything is reconciled on taking over; nothing refused before is kept.
                ctx.refused.take();
                if leading {
                    while !health.ready.load(Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    let all: Vec<_> = ctx.sources.state().iter().map(|ts| ObjectRef::from_obj(&**ts)).collect();
                    tracing::info!(tokensources = all.len(), "leading: reconciling every TokenSource");
                    for r in all {
                        if tx.send(r).await.is_err() {
                            return;
                        }
                    }
                }
            }
            loop {
                tokio::select! {
                    changed = changes.changed() => match changed {
                        Ok(()) => break,
                        Err(_) => return,
                    },
                    resumed = resumptions.changed() => {
                        if resumed.is_err() {
                            return;
                        }
                        let refused = ctx.refused.take();
                        tracing::info!(
                            tokensources = refused.len(),
                            "leader election: the Lease was renewed after the fence lapsed; reconciling what was refused meanwhile"
                        );
                        for r in refused {
                            if tx.send(r).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        }
    });
}

/// When the periodic work last ran.
#[derive(Default)]
pub(super) struct Ticks {
    ready_counted: Option<Instant>,
    swept: Option<Instant>,
}

impl Context {
    /// Periodic work, done as reconciles finish: the Ready gauge every five seconds (counting
    /// walks every TokenSource), and every thirty a sweep of what is kept per host or per
    /// TokenSource for ones that no longer exist.
    fn tick(&self) {
        let (count, sweep) = {
            let mut ticks = self.ticks.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let due = |last: &mut Option<Instant>, every: Duration| {
                let due = last.is_none_or(|l| l.elapsed() >= every);
                if due {
                    *last = Some(Instant::now());
                }
                due
            };
            (due(&mut ticks.ready_counted, Duration::from_secs(5)), due(&mut ticks.swept, Duration::from_secs(30)))
        };
        let sources = if count || sweep { self.sources.state() } else { return };
        if count {
            let ready = sources.iter().filter(|t| t.status.as_ref().is_some_and(super::status::is_ready)).count();
            self.metrics.ready_sources.set(ready as i64);
        }
        if sweep {
            let live: HashSet<ObjectRef<TokenSource>> = sources.iter().map(|ts| ObjectRef::from_obj(&**ts)).collect();
            self.memory.retain(&live);
            self.flights.retain(&live);
            self.shared.retain(&live, jiff::Timestamp::now());
            self.references.retain(&live);
            let urls: Vec<url::Url> = sources.iter().filter_map(|ts| endpoint(ts)).collect();
            self.transport.retain_hosts(&urls.iter().map(crate::transport::host_key).collect());
            self.metrics.retain_hosts(&urls.iter().filter_map(|u| u.host_str().map(String::from)).collect());
        }
    }
}

/// The token endpoint of a TokenSource, if its URL parses.
fn endpoint(ts: &TokenSource) -> Option<url::Url> {
    let raw = ts.spec.oauth2.as_ref().map(|o| &o.token_url).or(ts.spec.http.as_ref().map(|h| &h.url))?;
    url::Url::parse(raw).ok()
}
