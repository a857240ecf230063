//! The operator measured from outside, side by side with what it is weighed against: kubesim and
//! the operator run as their own processes (the operator is this package's release binary), a
//! fast Podero-format token endpoint runs in this process, and every figure of one table comes
//! from one run on one machine, so the ratios mean something where absolute numbers do not.
//!
//!     cargo bench --bench scale
//!
//! Environment (defaults in brackets): `SCALE_N` [1000,10000] TokenSources per cold start,
//! `SCALE_UNRELATED` [50000] unrelated 1 KiB Secrets (plus a fifth as many ConfigMaps) for the
//! second pass, `SCALE_STEADY_SECONDS` [120] and `SCALE_LIFETIME` [60] for the steady state at the
//! largest N, `SCALE_ROTATION_K` [500] TokenSources sharing the rotated credentials,
//! `SCALE_CRON_SAMPLE` [20] tokens done the CronJob way, `SCALE_CONCURRENCY` [16] (the operator's
//! `--concurrency` and the floor's workers), `SCALE_OPERATOR_LOG` [warn] (its `--log-level`),
//! `SCALE_OPERATOR_WRAPPER` (a profiler to run it under, such as `heaptrack`),
//! `SCALE_OPERATOR_BINARY` (another build of it, such as the musl binary the image ships),
//! `SCALE_QUICK=1`
//! (cold starts and restarts only), `SCALE_ONLY=steady` (the steady state only; with
//! `SCALE_HISTOGRAM=1` it prints the provider calls of each second), `SCALE_IDENTICAL=1` (every
//! TokenSource sends the same request; with `SCALE_QUICK=1 SCALE_N=1000` the figure for identical
//! requests).
//!
//! With `--kubesim KUBECONFIG` the binary is kubesim itself (how the benchmark starts it as its
//! own process).

use std::collections::{BTreeMap, HashMap};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use futures::{StreamExt, TryStreamExt};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tokensource_operator::crd::TokenSource;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// jemalloc, as in the operator: this binary is also kubesim (`--kubesim`), which under glibc's
/// malloc spent about half its CPU in the allocator and in the kernel zeroing the pages the
/// allocator had given back and took again, so every figure measured the emulator's allocator.
#[cfg(target_os = "linux")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const NS: &str = "bench";
const CLIENT_ID: &str = "bench-client";
const SECRET_A: &str = "bench-secret-a";
const SECRET_B: &str = "bench-secret-b";

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

// ---------------------------------------------------------------------------------------------
// Processes

/// CPU seconds (user + system) and peak/current resident MiB of a process, from /proc.
#[derive(Clone, Copy, Debug, Default)]
struct Usage {
    cpu: f64,
    hwm_mib: f64,
    rss_mib: f64,
}

fn usage(pid: u32) -> Usage {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat: 12 and 13 after the name.
    let cpu = (ticks(11) + ticks(12)) / clock_ticks();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Usage { cpu, hwm_mib: kib("VmHWM:") / 1024.0, rss_mib: kib("VmRSS:") / 1024.0 }
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// kubesim in its own process.
struct Sim {
    child: Child,
    kubeconfig: PathBuf,
    client: Client,
    /// The bench's own watches of this cluster, ended with it.
    watches: Mutex<Vec<tokio::task::AbortHandle>>,
}

impl Sim {
    async fn start(tag: &str) -> Result<Self, BoxError> {
        let kubeconfig = std::env::temp_dir().join(format!("scale-{}-{tag}.kubeconfig", std::process::id()));
        let mut child = Command::new(std::env::current_exe()?)
            .args(["--kubesim", &kubeconfig.to_string_lossy()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("kubesim: no stdout")?;
        let url = tokio::task::spawn_blocking(move || {
            use std::io::BufRead;
            let mut line = String::new();
            std::io::BufReader::new(stdout).read_line(&mut line).map(|_| line)
        })
        .await??;
        let url = url.trim().strip_prefix("kubesim listening on ").ok_or("kubesim did not start")?.to_string();
        let mut config = kube::Config::new(url.parse()?);
        config.read_timeout = None;
        config.default_namespace = NS.into();
        let client = Client::try_from(config)?;
        Ok(Self { child, kubeconfig, client, watches: Mutex::default() })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    async fn admin(&self, method: &str, path: &str) -> Result<Value, BoxError> {
        let req = axum::http::Request::builder().method(method).uri(format!("/kubesim/{path}")).body(vec![])?;
        Ok(serde_json::from_str(&self.client.request_text(req).await?)?)
    }

    async fn reset(&self) -> Result<(), BoxError> {
        self.admin("DELETE", "counts").await?;
        self.admin("DELETE", "requests").await?;
        Ok(())
    }

    /// Requests by `verb resource` since the last reset.
    async fn counts(&self) -> Result<BTreeMap<String, u64>, BoxError> {
        Ok(serde_json::from_value(self.admin("GET", "counts").await?)?)
    }

    /// GETs of one Secret since the last reset (the request log keeps the last 200,000).
    async fn gets_of(&self, secret: &str) -> Result<usize, BoxError> {
        let log = self.admin("GET", "requests").await?;
        Ok(log
            .as_array()
            .map(|a| {
                a.iter().filter(|r| r["verb"] == "get" && r["resource"] == "secrets" && r["name"] == secret).count()
            })
            .unwrap_or(0))
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        lock(&self.watches).iter().for_each(tokio::task::AbortHandle::abort);
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.kubeconfig);
    }
}

/// The operator's binary: this package's release build, or SCALE_OPERATOR_BINARY (another build,
/// such as the static musl binary the image ships:
/// `cargo build --release --target x86_64-unknown-linux-musl --bin tokensource-operator`).
fn operator_binary() -> String {
    std::env::var("SCALE_OPERATOR_BINARY")
        .ok()
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_tokensource-operator").to_owned())
}

/// The operator's release binary in its own process.
struct Operator {
    child: Child,
    admin: String,
}

impl Operator {
    fn start(sim: &Sim, concurrency: usize, log: &Path) -> Result<Self, BoxError> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let admin = format!("127.0.0.1:{port}");
        // SCALE_OPERATOR_WRAPPER: a profiler to run the operator under, such as `heaptrack`.
        let wrapper = std::env::var("SCALE_OPERATOR_WRAPPER").ok().filter(|w| !w.is_empty());
        let binary = operator_binary();
        let mut command = match &wrapper {
            Some(w) => {
                let mut c = Command::new(w);
                c.arg(&binary);
                c
            }
            None => Command::new(&binary),
        };
        let child = command
            .args(["run", "--kubeconfig", &sim.kubeconfig.to_string_lossy(), "--admin-addr", &admin])
            .args(["--allow-insecure-http", "--allow-endpoint-cidrs", "127.0.0.1/32"])
            .args(["--log-level", &std::env::var("SCALE_OPERATOR_LOG").unwrap_or_else(|_| "warn".into())])
            .args(["--concurrency", &concurrency.to_string()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log)?)
            // Its own process group, so `stop` reaches the operator under a wrapper too.
            .process_group(0)
            .spawn()?;
        Ok(Self { child, admin })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    async fn wait_ready(&self, http: &reqwest::Client) -> Result<Duration, BoxError> {
        let started = Instant::now();
        loop {
            let ok =
                http.get(format!("http://{}/readyz", self.admin)).send().await.is_ok_and(|r| r.status().is_success());
            if ok {
                return Ok(started.elapsed());
            }
            if started.elapsed() > Duration::from_secs(300) {
                return Err("the operator did not become ready".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, and the wait for it to end.
    fn stop(mut self) {
        let _ = Command::new("kill").args(["-TERM", "--", &format!("-{}", self.child.id())]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }

    /// SIGKILL to the whole group: a profiler's wrapper may outlive its operator, or the reverse.
    fn kill(&mut self) {
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", self.child.id())]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The token endpoint

/// A Podero-format endpoint: `POST /oauth2/token/` with Basic client credentials and a JSON body
/// naming the client credentials grant; each TokenSource sends its name as `audience`.
#[derive(Default)]
struct Endpoint {
    url: String,
    lifetime: AtomicU64,
    calls: AtomicU64,
    refused: AtomicU64,
    /// Call times, and which TokenSource called, for the steady state.
    log: Mutex<Vec<(Instant, String)>>,
    accepted: Mutex<Vec<String>>,
    /// The bench's view of the TokenSources: at a call, it still shows the renewal time the
    /// call fulfils (the status announcing the next one is written after it).
    view: std::sync::OnceLock<Arc<View>>,
    /// Each call's lateness against that renewal time, in seconds.
    lateness: Mutex<Vec<f64>>,
    /// How a real provider behaves ([`providers`]): each answer after this long...
    delay: Mutex<Duration>,
    /// ...and at most this many tokens a second (a bucket of one second's worth), beyond which
    /// it answers 429 with `Retry-After: 1`.
    rate: Mutex<Option<(f64, f64, Instant)>>,
    /// Answers of 429, with the time of each.
    throttled: Mutex<Vec<Instant>>,
    /// The time of each token issued.
    issued: Mutex<Vec<Instant>>,
}

async fn token(State(e): State<Arc<Endpoint>>, headers: HeaderMap, body: Bytes) -> Response {
    e.calls.fetch_add(1, Ordering::Relaxed);
    // A rate limit answers at once, before any work.
    let allowed = lock(&e.rate).as_mut().is_none_or(|(per_second, bucket, at)| {
        let now = Instant::now();
        *bucket = (*bucket + now.duration_since(*at).as_secs_f64() * *per_second).min(*per_second);
        *at = now;
        let take = *bucket >= 1.0;
        if take {
            *bucket -= 1.0;
        }
        take
    });
    if !allowed {
        lock(&e.throttled).push(Instant::now());
        let mut answer = (StatusCode::TOO_MANY_REQUESTS, axum::Json(json!({"error": "slow_down"}))).into_response();
        answer.headers_mut().insert("retry-after", axum::http::HeaderValue::from_static("1"));
        return answer;
    }
    let delay = *lock(&e.delay);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let ok_auth = lock(&e.accepted).iter().any(|a| auth == a);
    let body: Value = serde_json::from_slice(&body).unwrap_or_default();
    if !ok_auth || body["grant_type"] != "client_credentials" {
        e.refused.fetch_add(1, Ordering::Relaxed);
        return (StatusCode::UNAUTHORIZED, axum::Json(json!({"error": "invalid_client"}))).into_response();
    }
    let who = body["audience"].as_str().unwrap_or_default().to_string();
    if let Some(plan) = e.view.get().and_then(|v| lock(&v.renewal_at).get(&who).copied()) {
        lock(&e.lateness).push(Timestamp::now().duration_since(plan).as_secs_f64());
    }
    lock(&e.log).push((Instant::now(), who));
    lock(&e.issued).push(Instant::now());
    let n = e.calls.load(Ordering::Relaxed);
    axum::Json(json!({
        "access_token": format!("tok-{n}-{}", rand_suffix()),
        "expires_in": e.lifetime.load(Ordering::Relaxed),
        "token_type": "Bearer",
    }))
    .into_response()
}

fn rand_suffix() -> u64 {
    use rand::Rng;
    rand::rng().random()
}

fn basic(secret: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{CLIENT_ID}:{secret}")))
}

async fn start_endpoint(lifetime: u64) -> Result<Arc<Endpoint>, BoxError> {
    Ok(start_endpoints(lifetime, 1).await?.0)
}

/// One endpoint answering on `hosts` ports (each a host to the operator, as `host:port` keys
/// its request limits); their URLs.
async fn start_endpoints(lifetime: u64, hosts: usize) -> Result<(Arc<Endpoint>, Vec<String>), BoxError> {
    let mut listeners = vec![];
    for _ in 0..hosts.max(1) {
        listeners.push(tokio::net::TcpListener::bind("127.0.0.1:0").await?);
    }
    let urls: Vec<String> = listeners
        .iter()
        .map(|l| Ok::<_, std::io::Error>(format!("http://{}/oauth2/token/", l.local_addr()?)))
        .collect::<Result<_, _>>()?;
    let e = Arc::new(Endpoint { url: urls[0].clone(), lifetime: AtomicU64::new(lifetime), ..Default::default() });
    lock(&e.accepted).push(basic(SECRET_A));
    let app = axum::Router::new().route("/oauth2/token/", axum::routing::post(token)).with_state(e.clone());
    for listener in listeners {
        let app = app.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
    }
    Ok((e, urls))
}

// ---------------------------------------------------------------------------------------------
// The cluster's contents

fn name(i: usize) -> String {
    format!("ts-{i:05}")
}

/// Each TokenSource's own `audience`, so each sends its own request; with `SCALE_IDENTICAL=1`
/// they all send the same one (and share one token).
fn audience(i: usize) -> String {
    if env("SCALE_IDENTICAL", 0) == 1 { "shared".into() } else { name(i) }
}

fn token_source(i: usize, url: &str, creds: &str) -> Result<TokenSource, BoxError> {
    let from = |key: &str| json!({"valueFrom": {"secretKeyRef": {"name": creds, "key": key}}});
    Ok(serde_json::from_value(json!({
        "apiVersion": "tokensource.dev/v1alpha1", "kind": "TokenSource",
        "metadata": {"name": name(i), "namespace": NS},
        "spec": {
            "type": "OAuth2",
            "oauth2": {
                "tokenURL": url, "bodyType": "JSON",
                "clientID": from("client_id"),
                "clientAuth": {"type": "ClientSecretBasic", "clientSecretRef": {"name": creds, "key": "client_secret"}},
                "headers": [{"name": "Cache-Control", "value": "no-cache"}],
                "parameters": [{"name": "audience", "value": audience(i)}]
            },
            "target": {"name": format!("{}-token", name(i))}
        }
    }))?)
}

fn credentials(name: &str, secret: &str) -> Result<Secret, BoxError> {
    Ok(serde_json::from_value(
        json!({"metadata": {"name": name, "namespace": NS}, "stringData": {"client_id": CLIENT_ID, "client_secret": secret}}),
    )?)
}

/// Runs `f` over `0..n` with `width` in flight.
async fn each<F, Fut>(n: usize, width: usize, f: F) -> Result<(), BoxError>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<(), BoxError>>,
{
    futures::stream::iter(0..n).map(f).buffer_unordered(width).try_collect::<Vec<()>>().await?;
    Ok(())
}

async fn install(sim: &Sim) -> Result<(), BoxError> {
    let crds: Api<CustomResourceDefinition> = Api::all(sim.client.clone());
    crds.patch(
        "tokensources.tokensource.dev",
        &PatchParams::apply("bench"),
        &Patch::Apply(tokensource_operator::crd::crd()),
    )
    .await?;
    let namespaces: Api<Namespace> = Api::all(sim.client.clone());
    for ns in [NS, "unrelated"] {
        namespaces.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": ns}}))?).await?;
    }
    Ok(())
}

/// M unrelated Secrets of 1 KiB and M/5 ConfigMaps, in another namespace.
async fn unrelated(sim: &Sim, m: usize) -> Result<(), BoxError> {
    let payload = "x".repeat(1024);
    let secrets: Api<Secret> = Api::namespaced(sim.client.clone(), "unrelated");
    let config_maps: Api<ConfigMap> = Api::namespaced(sim.client.clone(), "unrelated");
    each(m, 64, |i| {
        let (secrets, payload) = (secrets.clone(), payload.clone());
        async move {
            let s: Secret = serde_json::from_value(json!({"metadata": {"name": format!("noise-{i:06}"), "labels": {"app": "noise"}}, "stringData": {"blob": payload}}))?;
            secrets.create(&PostParams::default(), &s).await?;
            Ok(())
        }
    })
    .await?;
    each(m / 5, 64, |i| {
        let (config_maps, payload) = (config_maps.clone(), payload.clone());
        async move {
            let c: ConfigMap = serde_json::from_value(
                json!({"metadata": {"name": format!("noise-{i:06}")}, "data": {"blob": payload}}),
            )?;
            config_maps.create(&PostParams::default(), &c).await?;
            Ok(())
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// What the benchmark watches

/// The bench's view of the cluster: when each target Secret first held a token and when its
/// token last changed, and each TokenSource's planned renewal.
#[derive(Default)]
struct View {
    tokens: Mutex<HashMap<String, (String, Instant)>>,
    first_token: Mutex<HashMap<String, Instant>>,
    renewal_at: Mutex<HashMap<String, Timestamp>>,
}

impl View {
    fn holding(&self) -> usize {
        lock(&self.first_token).len()
    }
}

/// Watches the target Secrets and TokenSources of `sim` into `view`, until `sim` is dropped.
fn watch(sim: &Sim, view: &Arc<View>) {
    let secrets: Api<Secret> = Api::namespaced(sim.client.clone(), NS);
    let sources: Api<TokenSource> = Api::namespaced(sim.client.clone(), NS);
    let v = view.clone();
    let s = tokio::spawn(async move {
        let config = watcher::Config::default().labels("app.kubernetes.io/managed-by=tokensource-operator");
        let mut stream = watcher(secrets, config).default_backoff().boxed();
        while let Some(event) = stream.next().await {
            let Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s)) = event else { continue };
            let Some(token) = s.data.as_ref().and_then(|d| d.get("token")) else { continue };
            let token = String::from_utf8_lossy(&token.0).into_owned();
            let now = Instant::now();
            let name = s.name_any();
            let mut tokens = lock(&v.tokens);
            if tokens.get(&name).is_none_or(|(t, _)| *t != token) {
                tokens.insert(name.clone(), (token, now));
            }
            lock(&v.first_token).entry(name).or_insert(now);
        }
    });
    let v = view.clone();
    let t = tokio::spawn(async move {
        let mut stream = watcher(sources, watcher::Config::default()).default_backoff().boxed();
        while let Some(event) = stream.next().await {
            if let Ok(watcher::Event::Apply(ts) | watcher::Event::InitApply(ts)) = event
                && let Some(at) = ts.status.as_ref().and_then(|s| s.renewal_time.as_ref())
            {
                lock(&v.renewal_at).insert(ts.name_any(), at.0);
            }
        }
    });
    lock(&sim.watches).extend([s.abort_handle(), t.abort_handle()]);
}

async fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> Result<Duration, BoxError> {
    let started = Instant::now();
    while !done() {
        if started.elapsed() > limit {
            return Err(format!("timed out waiting for {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Ok(started.elapsed())
}

fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let i = ((values.len() as f64 - 1.0) * p).round() as usize;
    values[i.min(values.len() - 1)]
}

// ---------------------------------------------------------------------------------------------
// Scenarios

/// One cold start, and what follows it.
#[derive(Default, Debug)]
struct ColdStart {
    n: usize,
    m: usize,
    idle_rss: f64,
    seconds: f64,
    peak_rss: f64,
    operator_cpu: f64,
    kubesim_cpu: f64,
    bench_cpu: f64,
    calls: u64,
    counts: BTreeMap<String, u64>,
    credential_gets: usize,
    restart: Option<Restart>,
}

#[derive(Default, Debug)]
struct Restart {
    ready: f64,
    /// The new process's memory once settled, and its peak.
    rss: f64,
    hwm: f64,
    calls: u64,
    writes: u64,
    credential_gets: usize,
}

fn writes(counts: &BTreeMap<String, u64>) -> u64 {
    counts
        .iter()
        .filter(|(k, _)| ["create ", "update ", "patch ", "delete "].iter().any(|v| k.starts_with(v)))
        .filter(|(k, _)| !k.ends_with(" leases"))
        .map(|(_, n)| n)
        .sum()
}

struct Bench {
    http: reqwest::Client,
    concurrency: usize,
    logs: PathBuf,
}

impl Bench {
    /// A fresh kubesim with `n` TokenSources (the first `k` reading `rotation-credentials`, the
    /// rest `bench-credentials`) and `m` unrelated Secrets; the operator's idle memory measured
    /// before any TokenSource exists; then the cold start.
    async fn cold_start(
        &self,
        n: usize,
        m: usize,
        k: usize,
        lifetime: u64,
    ) -> Result<(ColdStart, Sim, Arc<Endpoint>, Arc<View>, Operator), BoxError> {
        let tag = format!("{n}-{m}");
        let sim = Sim::start(&tag).await?;
        install(&sim).await?;
        unrelated(&sim, m).await?;
        let endpoint = start_endpoint(lifetime).await?;
        let url = endpoint.url.clone();
        let secrets: Api<Secret> = Api::namespaced(sim.client.clone(), NS);
        secrets.create(&PostParams::default(), &credentials("bench-credentials", SECRET_A)?).await?;
        secrets.create(&PostParams::default(), &credentials("rotation-credentials", SECRET_A)?).await?;

        let log = self.logs.join(format!("operator-{tag}-idle.log"));
        let idle = Operator::start(&sim, self.concurrency, &log)?;
        idle.wait_ready(&self.http).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let idle_rss = usage(idle.pid()).rss_mib;
        idle.stop();

        let sources: Api<TokenSource> = Api::namespaced(sim.client.clone(), NS);
        each(n, 32, |i| {
            let (sources, url) = (sources.clone(), url.clone());
            async move {
                let creds = if i < k { "rotation-credentials" } else { "bench-credentials" };
                sources.create(&PostParams::default(), &token_source(i, &url, creds)?).await?;
                Ok(())
            }
        })
        .await?;
        let view = Arc::new(View::default());
        watch(&sim, &view);
        let _ = endpoint.view.set(view.clone());
        sim.reset().await?;
        let (sim_cpu, bench_cpu) = (usage(sim.pid()).cpu, usage(std::process::id()).cpu);
        let log = self.logs.join(format!("operator-{tag}.log"));
        let operator = Operator::start(&sim, self.concurrency, &log)?;
        let took = wait_for("every token", Duration::from_secs(1800), || view.holding() >= n).await?;
        let calls = endpoint.calls.load(Ordering::Relaxed);
        // Status writes that follow the last Secret write are part of the work.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let op = usage(operator.pid());
        let result = ColdStart {
            n,
            m,
            idle_rss,
            seconds: took.as_secs_f64(),
            peak_rss: op.hwm_mib,
            operator_cpu: op.cpu,
            kubesim_cpu: usage(sim.pid()).cpu - sim_cpu,
            bench_cpu: usage(std::process::id()).cpu - bench_cpu,
            calls,
            counts: sim.counts().await?,
            credential_gets: sim.gets_of("bench-credentials").await? + sim.gets_of("rotation-credentials").await?,
            restart: None,
        };
        Ok((result, sim, endpoint, view, operator))
    }

    /// SIGTERM and a new operator process with every token valid: what it costs.
    async fn restart(
        &self,
        sim: &Sim,
        endpoint: &Endpoint,
        operator: Operator,
        tag: &str,
    ) -> Result<(Restart, Operator), BoxError> {
        operator.stop();
        sim.reset().await?;
        let before = endpoint.calls.load(Ordering::Relaxed);
        let operator = Operator::start(sim, self.concurrency, &self.logs.join(format!("operator-{tag}-restart.log")))?;
        let ready = operator.wait_ready(&self.http).await?;
        tokio::time::sleep(Duration::from_secs(10)).await;
        let counts = sim.counts().await?;
        let mem = usage(operator.pid());
        let restart = Restart {
            ready: ready.as_secs_f64(),
            rss: mem.rss_mib,
            hwm: mem.hwm_mib,
            calls: endpoint.calls.load(Ordering::Relaxed) - before,
            writes: writes(&counts),
            credential_gets: sim.gets_of("bench-credentials").await? + sim.gets_of("rotation-credentials").await?,
        };
        Ok((restart, operator))
    }
}

/// Credential rotation: the Secret shared by the first `k` TokenSources gets a new client secret.
async fn rotation(sim: &Sim, endpoint: &Endpoint, view: &View, k: usize) -> Result<(Vec<f64>, usize), BoxError> {
    lock(&endpoint.accepted).push(basic(SECRET_B));
    sim.reset().await?;
    let before: HashMap<String, String> = lock(&view.tokens).iter().map(|(k, (t, _))| (k.clone(), t.clone())).collect();
    let secrets: Api<Secret> = Api::namespaced(sim.client.clone(), NS);
    let patch = json!({"stringData": {"client_secret": SECRET_B}});
    let edited = Instant::now();
    secrets.patch("rotation-credentials", &PatchParams::default(), &Patch::Merge(&patch)).await?;
    let targets: Vec<String> = (0..k).map(|i| format!("{}-token", name(i))).collect();
    let changed = |tokens: &HashMap<String, (String, Instant)>| {
        targets.iter().filter(|t| tokens.get(*t).is_some_and(|(tok, _)| before.get(*t) != Some(tok))).count()
    };
    wait_for("rotated tokens", Duration::from_secs(300), || changed(&lock(&view.tokens)) >= k).await?;
    let latencies = {
        let tokens = lock(&view.tokens);
        targets.iter().filter_map(|t| tokens.get(t).map(|(_, at)| at.duration_since(edited).as_secs_f64())).collect()
    };
    Ok((latencies, sim.gets_of("rotation-credentials").await?))
}

/// The steady state: renewals against their planned time, and how they spread.
struct Steady {
    seconds: f64,
    renewals: usize,
    lateness: Vec<f64>,
    peak_rate: f64,
    mean_rate: f64,
    counts: BTreeMap<String, u64>,
    operator_cpu: f64,
    kubesim_cpu: f64,
    peak_rss: f64,
}

async fn steady(sim: &Sim, endpoint: &Endpoint, operator: &Operator, seconds: u64) -> Result<Steady, BoxError> {
    sim.reset().await?;
    let from = lock(&endpoint.log).len();
    let (op_cpu, sim_cpu) = (usage(operator.pid()).cpu, usage(sim.pid()).cpu);
    lock(&endpoint.lateness).clear();
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let lateness = std::mem::take(&mut *lock(&endpoint.lateness));
    let calls: Vec<Instant> = lock(&endpoint.log)[from..].iter().map(|(at, _)| *at).filter(|at| *at >= start).collect();
    let mut per_second: BTreeMap<u64, usize> = BTreeMap::new();
    for at in &calls {
        *per_second.entry(at.duration_since(start).as_secs()).or_default() += 1;
    }
    let peak = per_second.values().copied().max().unwrap_or(0) as f64;
    if std::env::var("SCALE_HISTOGRAM").is_ok() {
        eprintln!("provider calls per second: {:?}", per_second.values().collect::<Vec<_>>());
    }
    let op = usage(operator.pid());
    Ok(Steady {
        seconds: seconds as f64,
        renewals: calls.len(),
        lateness,
        peak_rate: peak,
        mean_rate: calls.len() as f64 / seconds as f64,
        counts: sim.counts().await?,
        operator_cpu: op.cpu - op_cpu,
        kubesim_cpu: usage(sim.pid()).cpu - sim_cpu,
        peak_rss: op.hwm_mib,
    })
}

/// The floor: a tight kube-rs client doing exactly a refresh's API work (one Secret apply, one
/// status apply) for `n` TokenSources with `width` in flight.
async fn floor(sim: &Sim, n: usize, width: usize) -> Result<f64, BoxError> {
    let secrets: Api<Secret> = Api::namespaced(sim.client.clone(), NS);
    let sources: Api<TokenSource> = Api::namespaced(sim.client.clone(), NS);
    let started = Instant::now();
    let now = Timestamp::now().to_string();
    each(n, width, |i| {
        let (secrets, sources, now) = (secrets.clone(), sources.clone(), now.clone());
        async move {
            let apply = PatchParams::apply("floor").force();
            let s = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": format!("floor-{i:05}")},
                "stringData": {"token": format!("floor-token-{i}"), "expires_at": now}});
            secrets.patch(&format!("floor-{i:05}"), &apply, &Patch::Apply(&s)).await?;
            let st = json!({"apiVersion": "tokensource.dev/v1alpha1", "kind": "TokenSource",
                "status": {"expirationTime": now, "conditions": [{"type": "Floor", "status": "True", "reason": "Floor",
                "message": "", "lastTransitionTime": now}]}});
            sources.patch_status(&name(i), &apply, &Patch::Apply(&st)).await?;
            Ok(())
        }
    })
    .await?;
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// The CronJob way, on a sample: curl for a token, then `kubectl apply` of the Secret.
fn cronjob(sim: &Sim, url: &str, sample: usize) -> Result<f64, BoxError> {
    let started = Instant::now();
    for i in 0..sample {
        let out = Command::new("curl")
            .args(["-sS", "--fail", "-u", &format!("{CLIENT_ID}:{SECRET_A}"), "-H", "Content-Type: application/json"])
            .args([
                "-d",
                &json!({"grant_type": "client_credentials", "audience": format!("cron-{i}")}).to_string(),
                url,
            ])
            .output()?;
        let reply: Value = serde_json::from_slice(&out.stdout)?;
        let token = reply["access_token"].as_str().ok_or("curl: no token")?;
        let manifest = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": format!("cron-{i}"), "namespace": NS},
            "stringData": {"token": token}});
        let mut child = Command::new("kubectl")
            .args(["apply", "-f", "-", "--kubeconfig", &sim.kubeconfig.to_string_lossy()])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()?;
        use std::io::Write;
        child.stdin.take().ok_or("kubectl: no stdin")?.write_all(manifest.to_string().as_bytes())?;
        if !child.wait()?.success() {
            return Err("kubectl apply failed".into());
        }
    }
    Ok(sample as f64 / started.elapsed().as_secs_f64())
}

// ---------------------------------------------------------------------------------------------
// Real providers' latency and rate limits

/// One cold start against token endpoints as real providers behave.
struct ProviderCase {
    what: String,
    hosts: usize,
    delay: Duration,
    /// The provider's rate limit, tokens a second.
    rate: Option<f64>,
}

/// `SCALE_ONLY=providers`: `SCALE_PROVIDER_N` [2000] TokenSources, each its own request, cold
/// started against an endpoint answering in 20, 100 and 500 ms on one host, in 100 ms on 100
/// hosts, and in 20 ms on one host that allows `SCALE_PROVIDER_RATE` [200] tokens a second
/// (429 with `Retry-After: 1` beyond). The operator runs with its default per-host limits.
async fn providers(bench: &Bench) -> Result<(), BoxError> {
    let n = env("SCALE_PROVIDER_N", 2000);
    let rate = env("SCALE_PROVIDER_RATE", 200) as f64;
    let ms = Duration::from_millis;
    let cases = [
        ProviderCase { what: "1 host, 20 ms".into(), hosts: 1, delay: ms(20), rate: None },
        ProviderCase { what: "1 host, 100 ms".into(), hosts: 1, delay: ms(100), rate: None },
        ProviderCase { what: "1 host, 500 ms".into(), hosts: 1, delay: ms(500), rate: None },
        ProviderCase { what: "100 hosts, 100 ms".into(), hosts: 100, delay: ms(100), rate: None },
        ProviderCase { what: format!("1 host, 20 ms, {rate}/s limit"), hosts: 1, delay: ms(20), rate: Some(rate) },
    ];
    // The operator's default ceiling per host.
    let ceiling = tokensource_operator::limit::DEFAULT_CEILING as f64;
    // What the API server allows: the two writes per token done by a tight client, on a
    // cluster like the cases' (measured on the first case's, once its operator has stopped).
    let mut api_floor = f64::INFINITY;
    println!(
        "bound: the smallest of the hosts' ceilings divided by the latency, the rate limit, and the API floor (the two writes per token by a tight client, measured after the first case)"
    );
    println!(
        "| endpoint | TokenSources | all tokens | tokens/s | bound | of the bound | 429s (after the first half) | API requests per TokenSource | operator peak RSS |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for case in cases {
        eprintln!("providers: {}", case.what);
        let sim = Sim::start(&format!("providers-{}", case.hosts)).await?;
        install(&sim).await?;
        let (endpoint, urls) = start_endpoints(3600, case.hosts).await?;
        *lock(&endpoint.delay) = case.delay;
        *lock(&endpoint.rate) = case.rate.map(|r| (r, r, Instant::now()));
        let secrets: Api<Secret> = Api::namespaced(sim.client.clone(), NS);
        secrets.create(&PostParams::default(), &credentials("bench-credentials", SECRET_A)?).await?;
        let sources: Api<TokenSource> = Api::namespaced(sim.client.clone(), NS);
        each(n, 32, |i| {
            let (sources, url) = (sources.clone(), urls[i % urls.len()].clone());
            async move {
                sources.create(&PostParams::default(), &token_source(i, &url, "bench-credentials")?).await?;
                Ok(())
            }
        })
        .await?;
        let view = Arc::new(View::default());
        watch(&sim, &view);
        sim.reset().await?;
        let log = bench.logs.join(format!("operator-providers-{}.log", case.what.replace([' ', ',', '/'], "-")));
        let started = Instant::now();
        let operator = Operator::start(&sim, bench.concurrency, &log)?;
        let took = wait_for("every token", Duration::from_secs(3600), || view.holding() >= n).await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let peak = usage(operator.pid()).hwm_mib;
        operator.stop();
        let counts = sim.counts().await?;
        if api_floor.is_infinite() {
            api_floor = floor(&sim, n, bench.concurrency).await?;
            eprintln!("the floor: {api_floor:.0} tokens/s");
        }
        // The bench's own watches (a list and a watch of each resource) are not the operator's.
        let requests: u64 = counts.iter().filter(|(k, _)| !k.ends_with(" leases")).map(|(_, v)| *v).sum::<u64>()
            - count(&counts, "list secrets").min(1)
            - count(&counts, "watch secrets").min(1)
            - count(&counts, "list tokensources").min(1)
            - count(&counts, "watch tokensources").min(1);
        let throttled = lock(&endpoint.throttled).clone();
        let half = started + took / 2;
        let late_429 = throttled.iter().filter(|t| **t >= half).count();
        let late_all = endpoint.calls.load(Ordering::Relaxed) as usize
            - lock(&endpoint.issued).iter().filter(|t| **t < half).count()
            - throttled.iter().filter(|t| **t < half).count();
        let tokens_per_second = n as f64 / took.as_secs_f64();
        let by_limit = case.hosts as f64 * ceiling / case.delay.as_secs_f64();
        let bound = case.rate.map_or(by_limit, |r| r.min(by_limit)).min(api_floor);
        println!(
            "| {} | {n} | {:.1} s | {tokens_per_second:.0} | {bound:.0}/s | {:.0} % | {} ({late_429} of {late_all}: {:.2} %) | {:.2} ({}) | {peak:.1} MiB |",
            case.what,
            took.as_secs_f64(),
            100.0 * tokens_per_second / bound,
            throttled.len(),
            100.0 * late_429 as f64 / late_all.max(1) as f64,
            requests as f64 / n as f64,
            per(&counts, n),
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The report

fn per(counts: &BTreeMap<String, u64>, n: usize) -> String {
    counts
        .iter()
        .filter(|(k, _)| !k.ends_with(" leases"))
        .map(|(k, v)| format!("{k} {:.2}", *v as f64 / n.max(1) as f64))
        .collect::<Vec<_>>()
        .join(", ")
}

fn count(counts: &BTreeMap<String, u64>, key: &str) -> u64 {
    counts.get(key).copied().unwrap_or(0)
}

async fn kubesim_main(kubeconfig: &str) -> Result<(), BoxError> {
    let opts = kubesim::Options { kubeconfig: Some(kubeconfig.into()), ..Default::default() };
    let sim = kubesim::KubeSim::start_with(opts).await?;
    println!("kubesim listening on {}", sim.url());
    std::future::pending::<()>().await;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--kubesim") {
        return kubesim_main(args.get(i + 1).ok_or("--kubesim KUBECONFIG")?).await;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ns: Vec<usize> = std::env::var("SCALE_N")
        .unwrap_or_else(|_| "1000,10000".into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    let m = env("SCALE_UNRELATED", 50_000);
    let steady_seconds = env("SCALE_STEADY_SECONDS", 120) as u64;
    let lifetime = env("SCALE_LIFETIME", 60) as u64;
    let k = env("SCALE_ROTATION_K", 500);
    let sample = env("SCALE_CRON_SAMPLE", 20);
    let concurrency = env("SCALE_CONCURRENCY", 16);
    let largest = ns.iter().copied().max().unwrap_or(1000);
    let logs = std::env::temp_dir().join(format!("scale-bench-{}", std::process::id()));
    std::fs::create_dir_all(&logs)?;
    let bench = Bench { http: reqwest::Client::new(), concurrency, logs: logs.clone() };
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!(
        "scale benchmark: kubesim and the operator ({}) as their own processes, the token endpoint in the bench process; {cores} cores; operator --concurrency {concurrency}; operator logs in {}",
        operator_binary(),
        logs.display()
    );

    // SCALE_ONLY=providers: cold starts against token endpoints as real providers behave.
    if std::env::var("SCALE_ONLY").is_ok_and(|v| v == "providers") {
        return providers(&bench).await;
    }
    // SCALE_QUICK=1: the cold starts and restarts only (for profiling).
    let quick = env("SCALE_QUICK", 0) == 1;
    // SCALE_ONLY=steady: the steady state alone (for profiling).
    let only_steady = std::env::var("SCALE_ONLY").is_ok_and(|v| v == "steady");
    let mut colds = vec![];
    let mut floor_rate = f64::NAN;
    let mut cron_rate = f64::NAN;
    let mut rotation_result = None;
    let passes = if only_steady { vec![] } else { vec![0, m] };
    for &unrelated_m in &passes {
        for &n in &ns {
            eprintln!("cold start: N={n}, M={unrelated_m}");
            let (mut cold, sim, endpoint, view, operator) = bench.cold_start(n, unrelated_m, k.min(n), 3600).await?;
            let (restart, operator) = bench.restart(&sim, &endpoint, operator, &format!("{n}-{unrelated_m}")).await?;
            cold.restart = Some(restart);
            if quick {
                colds.push(cold);
                continue;
            }
            if n == largest && unrelated_m == m {
                eprintln!("rotation: K={}", k.min(n));
                rotation_result = Some((k.min(n), rotation(&sim, &endpoint, &view, k.min(n)).await?));
            }
            operator.stop();
            if n == largest && unrelated_m == 0 {
                eprintln!("floor and CronJob baselines");
                floor_rate = floor(&sim, n, concurrency).await?;
                cron_rate = cronjob(&sim, &endpoint.url, sample)?;
            }
            colds.push(cold);
        }
    }
    if quick {
        for c in &colds {
            let r = c.restart.as_ref();
            println!(
                "N={} M={}: cold start {:.2}s, provider calls {}, Secret writes {}, status writes {}, peak RSS {:.1} MiB; restart RSS {:.1} MiB (peak {:.1})",
                c.n,
                c.m,
                c.seconds,
                c.calls,
                count(&c.counts, "patch secrets"),
                count(&c.counts, "patch tokensources/status"),
                c.peak_rss,
                r.map_or(0.0, |r| r.rss),
                r.map_or(0.0, |r| r.hwm)
            );
        }
        return Ok(());
    }
    eprintln!("steady state: N={largest}, {lifetime}s tokens, {steady_seconds}s");
    let (warm, sim, endpoint, _view, operator) = bench.cold_start(largest, 0, 0, lifetime).await?;
    // One lifetime to let the first renewals spread, then the measurement.
    tokio::time::sleep(Duration::from_secs(lifetime)).await;
    let st = steady(&sim, &endpoint, &operator, steady_seconds).await?;
    operator.stop();
    if only_steady {
        println!("{}", steady_line(&st, largest, lifetime));
        return Ok(());
    }
    // The floor a second time, on this kubesim in the state the first one met (the operator's
    // tokens written, the operator stopped): both rates move from run to run, so the ratio is
    // taken over two of each.
    eprintln!("floor, second measurement");
    let floor_rates = [floor_rate, floor(&sim, largest, concurrency).await?];
    drop(sim);

    let setup = Setup { largest, m, concurrency, lifetime };
    report(&colds, &warm, &st, (floor_rates, cron_rate), rotation_result, &setup);
    Ok(())
}

/// What the run was asked to do.
#[derive(Clone, Copy)]
struct Setup {
    largest: usize,
    m: usize,
    concurrency: usize,
    lifetime: u64,
}

/// Lateness of the steady state's renewals against their announced time: p50 and p99.
fn lateness(st: &Steady) -> (f64, f64) {
    let mut late = st.lateness.clone();
    (percentile(&mut late, 0.5), percentile(&mut late, 0.99))
}

/// The steady state's figures on one line.
fn steady_line(st: &Steady, largest: usize, lifetime: u64) -> String {
    let (p50, p99) = lateness(st);
    let steady_writes = count(&st.counts, "patch secrets") + count(&st.counts, "patch tokensources/status");
    format!(
        "steady state: N={largest}, {}s tokens, {:.0}s observed: {} renewals, lateness against renewalTime p50 {:.3}s p99 {:.3}s, provider rate peak {:.0}/s mean {:.1}/s (peak/mean {:.2}), API writes per renewal {:.2}, operator CPU {:.1}s, kubesim CPU {:.1}s, peak RSS {:.1} MiB",
        lifetime,
        st.seconds,
        st.renewals,
        p50,
        p99,
        st.peak_rate,
        st.mean_rate,
        st.peak_rate / st.mean_rate,
        steady_writes as f64 / st.renewals.max(1) as f64,
        st.operator_cpu,
        st.kubesim_cpu,
        st.peak_rss
    )
}

fn report(
    colds: &[ColdStart],
    warm: &ColdStart,
    st: &Steady,
    (floor_rates, cron_rate): ([f64; 2], f64),
    rotation: Option<(usize, (Vec<f64>, usize))>,
    setup: &Setup,
) {
    let Setup { largest, m, concurrency, lifetime } = *setup;
    println!();
    println!("cold start (every TokenSource's Secret holds a token)");
    println!(
        "{:>6} {:>6} | {:>8} {:>8} | {:>9} {:>9} {:>7} | {:>10} {:>8} | {:>6} {:>11} {:>11}",
        "N",
        "M",
        "seconds",
        "TS/s",
        "idle MiB",
        "peak MiB",
        "op CPU",
        "kubesim CPU",
        "bench CPU",
        "calls",
        "writes/call",
        "cred reads"
    );
    for c in colds.iter().chain([warm]) {
        let refresh_writes = count(&c.counts, "patch secrets") + count(&c.counts, "patch tokensources/status");
        println!(
            "{:>6} {:>6} | {:>8.2} {:>8.0} | {:>9.1} {:>9.1} {:>7.2} | {:>10.2} {:>8.2} | {:>6} {:>11.2} {:>11}",
            c.n,
            c.m,
            c.seconds,
            c.n as f64 / c.seconds,
            c.idle_rss,
            c.peak_rss,
            c.operator_cpu,
            c.kubesim_cpu,
            c.bench_cpu,
            c.calls,
            refresh_writes as f64 / c.calls.max(1) as f64,
            c.credential_gets
        );
    }
    println!();
    println!("API requests per TokenSource during the cold start (verb resource: per TS)");
    for c in colds {
        println!("  N={} M={}: {}", c.n, c.m, per(&c.counts, c.n));
    }
    println!();
    println!("restart with valid tokens (SIGTERM, new process, 10 s observed after ready)");
    for c in colds {
        if let Some(r) = &c.restart {
            println!(
                "  N={} M={}: ready after {:.2}s, provider calls {}, API writes {}, credential reads {}, RSS {:.1} MiB (peak {:.1})",
                c.n, c.m, r.ready, r.calls, r.writes, r.credential_gets, r.rss, r.hwm
            );
        }
    }
    let big = colds.iter().find(|c| c.n == largest && c.m == 0);
    let big_m = colds.iter().find(|c| c.n == largest && c.m == m);
    // Two cold starts of the largest N without unrelated Secrets (the first pass's and the
    // steady state's) against two measurements of the floor: the ratio of the means.
    let op_rates = [big.map(|c| c.n as f64 / c.seconds).unwrap_or(f64::NAN), warm.n as f64 / warm.seconds];
    let op_rate = (op_rates[0] + op_rates[1]) / 2.0;
    let floor_rate = (floor_rates[0] + floor_rates[1]) / 2.0;
    println!();
    println!("baselines at N={largest}, concurrency {concurrency}");
    println!(
        "  operator cold start  {op_rate:>8.0} TokenSources/s (mean of {:.0} and {:.0})",
        op_rates[0], op_rates[1]
    );
    println!(
        "  floor (kube-rs: Secret apply + status apply) {floor_rate:>8.0} /s (mean of {:.0} and {:.0})   operator/floor {:.2} (the two pairs: {:.2}, {:.2})",
        floor_rates[0],
        floor_rates[1],
        op_rate / floor_rate,
        op_rates[0] / floor_rates[0],
        op_rates[1] / floor_rates[1]
    );
    println!(
        "  CronJob way (curl + kubectl apply, sequential sample) {cron_rate:>8.1} /s   operator/CronJob {:.0}",
        op_rate / cron_rate
    );

    let (_, p99) = lateness(st);
    println!();
    println!("{}", steady_line(st, largest, lifetime));
    println!("  API requests per renewal: {}", per(&st.counts, st.renewals));
    let mut rot_p99 = f64::NAN;
    if let Some((k, (mut lat, reads))) = rotation {
        let p50 = percentile(&mut lat, 0.5);
        rot_p99 = percentile(&mut lat, 0.99);
        println!();
        println!(
            "credential rotation: K={k} TokenSources share the edited Secret: all hold new tokens, p50 {p50:.2}s p99 {rot_p99:.2}s after the edit; reads of that Secret {reads}"
        );
    }

    println!();
    println!("goals");
    let mark = |ok: bool| if ok { "met    " } else { "NOT met" };
    let calls_ok = colds.iter().all(|c| c.calls as usize == c.n);
    let writes_ok = colds.iter().all(|c| {
        count(&c.counts, "patch secrets") as usize == c.n
            && count(&c.counts, "patch tokensources/status") as usize == c.n
    });
    let restart_ok = colds.iter().all(|c| c.restart.as_ref().is_some_and(|r| r.calls == 0 && r.writes == 0));
    let reads_ok = colds.iter().all(|c| c.credential_gets <= 2);
    println!(
        "  {} operator >= 70% of the floor's rate at N={largest} (means of two runs each): {:.0}%",
        mark(op_rate >= 0.7 * floor_rate),
        100.0 * op_rate / floor_rate
    );
    println!(
        "  {} one provider call per TokenSource at cold start: {}",
        mark(calls_ok),
        colds.iter().map(|c| format!("{}/{}", c.calls, c.n)).collect::<Vec<_>>().join(" ")
    );
    println!(
        "  {} two writes (one Secret, one status) per refresh: {}",
        mark(writes_ok),
        colds
            .iter()
            .map(|c| format!(
                "{}+{}/{}",
                count(&c.counts, "patch secrets"),
                count(&c.counts, "patch tokensources/status"),
                c.n
            ))
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!("  {} nothing between renewals (restart: no call, no write)", mark(restart_ok));
    println!(
        "  {} at most one read of a credential Secret per change: {}",
        mark(reads_ok),
        colds.iter().map(|c| format!("{}", c.credential_gets)).collect::<Vec<_>>().join(" ")
    );
    // The operator's peak in either life: the cold start, and the restart with every token valid.
    let rss = big_m.map(|c| c.peak_rss).unwrap_or(f64::NAN);
    let restart_rss = big_m.and_then(|c| c.restart.as_ref()).map(|r| r.hwm).unwrap_or(f64::NAN);
    println!(
        "  {} peak RSS <= 100 MiB at N={largest}, M={m}: cold start {rss:.1} MiB, restart {restart_rss:.1} MiB",
        mark(rss.max(restart_rss) <= 100.0)
    );
    let growth = match (big, big_m) {
        (Some(a), Some(b)) => b.peak_rss - a.peak_rss,
        _ => f64::NAN,
    };
    let idle_growth = match (big, big_m) {
        (Some(a), Some(b)) => b.idle_rss - a.idle_rss,
        _ => f64::NAN,
    };
    println!(
        "  {} growth with {m} unrelated Secrets near zero: peak {growth:+.1} MiB, idle {idle_growth:+.1} MiB",
        mark(growth.abs() <= 10.0)
    );
    println!("  {} renewal lateness p99 <= 1 s: {p99:.3}s", mark(p99 <= 1.0));
    println!("  {} rotation p99 <= 2 s: {rot_p99:.2}s", mark(rot_p99 <= 2.0));
}
