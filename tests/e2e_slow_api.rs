//! A slow API server and slow providers, with the leader's fence in the way: under a Lease whose
//! round trips take most of the renew deadline, provider calls and writes longer than the time
//! the fence stays valid must still go through; a standby must still be able to take over; and
//! rollout restarts must be neither lost (a failed status write after the token's) nor brought
//! closer than `minInterval`.
#![cfg(test)]

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Env, WAIT, check, eventually, free_port, http_get};
use fake_providers::{Config as FakeConfig, Endpoint, Fakes};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::json;
use tokensource_operator::crd::TokenSource;

const BIN: &str = env!("CARGO_BIN_EXE_tokensource-operator");

struct Operator {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Operator {
    fn signal(&self, signal: &str) {
        let _ = Command::new("kill").args([signal, &self.child.id().to_string()]).status();
    }

    async fn wait_ready(&self) {
        let url = format!("http://127.0.0.1:{}/readyz", self.port);
        eventually("ready", WAIT, || async {
            let seen = http_get(&url).await;
            check(matches!(seen, Some((200, _))), (), seen)
        })
        .await;
    }

    async fn leader_gauge(&self) -> Option<u8> {
        let (_, text) = http_get(&format!("http://127.0.0.1:{}/metrics", self.port)).await?;
        text.lines().find_map(|l| l.strip_prefix("tokensource_leader ")).and_then(|v| v.trim().parse().ok())
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Ha {
    sim: kubesim::KubeSim,
    client: Client,
    fakes: Fakes,
    ns: String,
}

impl Ha {
    async fn start(lifetime: Duration) -> Self {
        let sim = kubesim::KubeSim::start().await.unwrap();
        let client = sim.client();
        let ns = common::install(&client, "slow").await;
        let fakes = Fakes::start(FakeConfig { lifetime, ..Default::default() }).await.unwrap();
        let c = fakes.config().podero;
        let creds = json!({"metadata": {"name": "podero-credentials"}, "stringData": {"client_id": c.id, "client_secret": c.secret}});
        Api::<Secret>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &serde_json::from_value(creds).unwrap())
            .await
            .unwrap();
        Self { sim, client, fakes, ns }
    }

    /// An operator with deploy/'s lease timings (15s, 10s, 2s).
    fn operator(&self, name: &'static str) -> Operator {
        let port = free_port();
        let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{}-{name}.log", self.ns));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(BIN)
            .args(["run", "--namespace", &self.ns, "--allow-insecure-http", "--allow-endpoint-cidrs", "127.0.0.1/32"])
            .args(["--propagation-margin", "1s", "--log-level", "info,tokensource_operator=debug"])
            .args(["--leader-elect", "--leader-election-namespace", &self.ns])
            .arg("--kubeconfig")
            .arg(self.sim.kubeconfig_path())
            .args(["--admin-addr", &format!("127.0.0.1:{port}")])
            .env("POD_NAME", name)
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        Operator { child, port, log }
    }

    async fn holder(&self) -> Option<String> {
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), &self.ns);
        leases.get_opt("tokensource-operator").await.ok()??.spec?.holder_identity.filter(|h| !h.is_empty())
    }

    async fn wait_holder(&self, name: &str) -> String {
        let prefix = format!("{name}_");
        eventually(&format!("{name} to hold the Lease"), WAIT, || async {
            let h = self.holder().await;
            check(h.as_deref().is_some_and(|h| h.starts_with(&prefix)), h.clone().unwrap_or_default(), h)
        })
        .await
    }

    async fn create(&self, name: &str) {
        let ts = json!({"apiVersion": "tokensource.dev/v1alpha1", "kind": "TokenSource", "metadata": {"name": name}, "spec": {
            "type": "OAuth2",
            "oauth2": {"tokenURL": self.fakes.endpoint_url(Endpoint::Podero), "bodyType": "JSON",
                       "clientID": {"valueFrom": {"secretKeyRef": {"name": "podero-credentials", "key": "client_id"}}},
                       "clientAuth": {"type": "ClientSecretBasic", "clientSecretRef": {"name": "podero-credentials", "key": "client_secret"}}},
            "renewal": {"shareIdenticalRequests": false},
            "target": {"name": format!("{name}-token")}}});
        Api::<TokenSource>::namespaced(self.client.clone(), &self.ns)
            .create(&PostParams::default(), &serde_json::from_value(ts).unwrap())
            .await
            .unwrap();
    }

    async fn token(&self, source: &str) -> Option<String> {
        let s = Api::<Secret>::namespaced(self.client.clone(), &self.ns)
            .get_opt(&format!("{source}-token"))
            .await
            .ok()??;
        s.data?.get("token").map(|t| String::from_utf8_lossy(&t.0).into_owned())
    }

    async fn wait_token(&self, source: &str) -> String {
        eventually(&format!("a token for {source}"), WAIT, || async {
            let t = self.token(source).await;
            check(t.is_some(), t.clone().unwrap_or_default(), t)
        })
        .await
    }
}

/// Every 200ms: the Secrets seen holding an expired token, and the longest a status said
/// Ready=True past its own expirationTime (ms).
fn watch(ha: &Arc<Ha>, names: Vec<String>) -> (Arc<AtomicBool>, tokio::task::JoinHandle<(Vec<String>, i64)>) {
    let ha = ha.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let task = tokio::spawn(async move {
        let (mut expired, mut worst) = (Vec::<String>::new(), 0i64);
        let sources: Api<TokenSource> = Api::namespaced(ha.client.clone(), &ha.ns);
        while !stopped.load(Ordering::Relaxed) {
            for n in &names {
                if let Some(t) = ha.token(n).await
                    && !ha.fakes.is_valid(&t)
                    && !expired.contains(n)
                {
                    expired.push(n.clone());
                }
            }
            let now = jiff::Timestamp::now();
            for ts in sources.list(&Default::default()).await.map(|l| l.items).unwrap_or_default() {
                let Some(status) = ts.status else { continue };
                let ready = status.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True");
                if let (true, Some(exp)) = (ready, status.expiration_time) {
                    worst = worst.max(now.duration_since(exp.0).as_millis() as i64);
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        (expired, worst)
    });
    (stop, task)
}

/// One operator, 4 TokenSources with tokens of `lifetime`; then for 40 seconds the Lease is slow
/// (6s, as in issue 29's run) and `slow` is applied too. Returns tokens issued during the
/// slowdown, the Secrets that held expired tokens, and the worst Ready=True past expiry.
async fn slow_run(lifetime: Duration, slow: impl FnOnce(&Ha, &str)) -> (usize, usize, Vec<String>, i64, String) {
    let ha = Arc::new(Ha::start(lifetime).await);
    let op = ha.operator("slow-a");
    let id = ha.wait_holder("slow-a").await;
    op.wait_ready().await;
    let names: Vec<String> = (0..4).map(|i| format!("p{i}")).collect();
    for n in &names {
        ha.create(n).await;
    }
    for n in &names {
        ha.wait_token(n).await;
    }
    let (stop, task) = watch(&ha, names.clone());
    let leases = kubesim::Matcher { resource: Some("leases".into()), ..Default::default() };
    ha.sim.faults().add_latency(leases, Duration::from_secs(6));
    slow(&ha, &id);
    let (calls0, issued0) = (ha.fakes.calls(Endpoint::Podero), ha.fakes.issued(Endpoint::Podero));
    tokio::time::sleep(Duration::from_secs(40)).await;
    let (calls, issued) = (ha.fakes.calls(Endpoint::Podero) - calls0, ha.fakes.issued(Endpoint::Podero) - issued0);
    ha.sim.faults().clear();
    ha.fakes.set_delay(Endpoint::Podero, Duration::ZERO);
    stop.store(true, Ordering::Relaxed);
    let (expired, worst) = task.await.unwrap();
    (calls, issued, expired, worst, op.logs())
}

/// The slow-Lease run (6s for 40s) with a provider that takes 4.5s to answer (well inside the 30s
/// request timeout): the fence lets work start only 4s of every 6s, and a call started late in
/// that window must not be cut off while renewals succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_lease_and_a_provider_slower_than_the_fence_window_still_renew() {
    let (calls, issued, expired, worst, log) =
        slow_run(Duration::from_secs(30), |ha, _| ha.fakes.set_delay(Endpoint::Podero, Duration::from_millis(4500)))
            .await;
    eprintln!(
        "slow Lease 6s + provider 4.5s for 40s: {calls} provider calls, {issued} tokens issued; Secrets with expired tokens {expired:?}; Ready=True up to {worst} ms past expiry; lost the Lease logged: {}",
        log.contains("lost the Lease")
    );
    // 4 TokenSources with 30s tokens renew about every 20s: at least 4 renewals in 40s, and no
    // call cut off at the fence.
    assert!(issued >= 4, "only {issued} tokens issued in 40s");
    // (A call per TokenSource may still be on its way when the window closes.)
    assert!(calls <= issued + 4, "{} calls cut off at the fence", calls - issued);
    assert!(expired.is_empty(), "Secrets held expired tokens: {expired:?}");
    assert!(worst <= 1000, "a status said Ready=True {worst} ms after its token expired");
}

/// The slow-API variant: every request of the operator (not only the Lease) takes 6s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_slow_still_renews() {
    // 30-second tokens: a renewal then needs a Secret write and a status write of 6 seconds
    // each, and still lands well before expiry.
    let (calls, issued, expired, worst, log) = slow_run(Duration::from_secs(30), |ha, id| {
        // The Lease has 6s already; the operator's other writes and reads get 6s as well.
        for resource in ["secrets", "tokensources", "tokensources/status", "events"] {
            let m = kubesim::Matcher {
                resource: Some(resource.into()),
                ..kubesim::Matcher::from_client(&format!("({id})"))
            };
            ha.sim.faults().add_latency(m, Duration::from_secs(6));
        }
    })
    .await;
    eprintln!(
        "every request of the operator 6s for 40s: {calls} provider calls, {issued} tokens issued; Secrets with expired tokens {expired:?}; Ready=True up to {worst} ms past expiry; lost the Lease logged: {}",
        log.contains("lost the Lease")
    );
    assert!(issued >= 4, "only {issued} tokens issued in 40s");
    assert!(expired.is_empty(), "Secrets held expired tokens: {expired:?}");
    // The status trails the Secret by one status write, here 6 seconds.
    assert!(worst <= 7000, "a status said Ready=True {worst} ms after its token expired");
}

/// kill -9 of the leader while every Lease request takes 6s (inside the 10s renew deadline):
/// the standby must take over (after the 15s lease plus a read and a write), and renew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_while_the_lease_is_slow() {
    let ha = Arc::new(Ha::start(Duration::from_secs(30)).await);
    let a = ha.operator("slow-a");
    ha.wait_holder("slow-a").await;
    let b = ha.operator("slow-b");
    a.wait_ready().await;
    b.wait_ready().await;
    for n in ["k0", "k1"] {
        ha.create(n).await;
    }
    for n in ["k0", "k1"] {
        ha.wait_token(n).await;
    }
    let leases = kubesim::Matcher { resource: Some("leases".into()), ..Default::default() };
    ha.sim.faults().add_latency(leases, Duration::from_secs(6));
    tokio::time::sleep(Duration::from_secs(8)).await;
    let killed = tokio::time::Instant::now();
    a.signal("-KILL");
    let calls = ha.fakes.calls(Endpoint::Podero);
    // 15s of lease, then a GET and a replace of 6s each: a takeover within 45s is generous.
    let mut led = None;
    while killed.elapsed() < Duration::from_secs(45) {
        if b.leader_gauge().await == Some(1) {
            led = Some(killed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let log = b.logs();
    let timeouts = log.matches("no answer within the renew deadline").count();
    eprintln!(
        "kill -9 under a 6s Lease: the standby led after {led:?}; holder now {:?}; {} provider calls since; {timeouts} rounds timed out in the standby's log",
        ha.holder().await,
        ha.fakes.calls(Endpoint::Podero) - calls
    );
    assert!(led.is_some(), "the standby never took over in 45s ({timeouts} rounds timed out)");
}

/// A new token owes the workloads a restart; the status write of the reconcile that fetched it
/// fails once (a 500 from the API). The restart must still happen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_owed_survives_a_failed_status_write() {
    use k8s_openapi::api::apps::v1::Deployment;
    let env = Env::start().await;
    if env.kubesim_only("it makes kubesim fail chosen writes") {
        return;
    }
    common::podero_credentials(&env).await;
    env.fakes.set_lifetime(Endpoint::Podero, Duration::from_secs(8));
    let deployments: Api<Deployment> = Api::namespaced(env.client.clone(), &env.ns);
    let d = json!({"metadata": {"name": "w"}, "spec": {
        "selector": {"matchLabels": {"app": "w"}},
        "template": {"metadata": {"labels": {"app": "w"}}, "spec": {"containers": [{"name": "app", "image": "x"}]}}}});
    deployments.create(&PostParams::default(), &serde_json::from_value(d).unwrap()).await.unwrap();
    let mut ts = common::podero(&env, "rr", "rr-token");
    ts["spec"]["target"]["rolloutRestart"] =
        json!({"minInterval": "10s", "workloads": [{"kind": "Deployment", "name": "w"}]});
    env.create(ts).await;
    let first = env.wait_token("rr-token", None).await;
    // The next token lives an hour: only the renewal of the first one owes a restart.
    env.fakes.set_lifetime(Endpoint::Podero, Duration::from_secs(3600));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let faults = env.sim.as_ref().expect("kubesim").faults().clone();
    let status_writes = faults.count("patch", "tokensources/status");
    faults.fail_next(kubesim::Matcher::new("patch", "tokensources/status"), 1, 500, None);
    let second = env.wait_token("rr-token", Some(&first)).await;
    let restarted = |deployments: Api<Deployment>| async move {
        let v = serde_json::to_value(deployments.get("w").await.ok()?).ok()?;
        v["spec"]["template"]["metadata"]["annotations"]["tokensource.dev/restartedAt"].as_str().map(String::from)
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut seen = None;
    while tokio::time::Instant::now() < deadline {
        seen = restarted(deployments.clone()).await;
        if seen.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let status = env.status("rr").await.ok();
    eprintln!(
        "restart after a failed status write: restartedAt {seen:?}; {} status writes since the fault; pending since {:?}, last restart {:?}; {} provider calls; second token valid {}; deployment patches {}",
        faults.count("patch", "tokensources/status") - status_writes,
        status.as_ref().and_then(|s| s.rollout_restart_pending_since.clone()),
        status.as_ref().and_then(|s| s.last_rollout_restart_time.clone()),
        env.fakes.calls(Endpoint::Podero),
        env.fakes.is_valid(&second),
        faults.count("patch", "deployments"),
    );
    assert!(seen.is_some(), "the workload was never restarted for the new token");
}

/// A restart that could not be made at once (the API refused the patch twice) is recorded as
/// made at its debt's time, not when it was made: the next restart follows well inside
/// `minInterval` in real time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_keep_min_interval_after_a_delayed_restart() {
    use k8s_openapi::api::apps::v1::Deployment;
    let env = Env::start().await;
    if env.kubesim_only("it makes kubesim fail chosen writes") {
        return;
    }
    common::podero_credentials(&env).await;
    env.fakes.set_lifetime(Endpoint::Podero, Duration::from_secs(6));
    let faults = env.sim.as_ref().expect("kubesim").faults().clone();
    // The first two restart attempts are refused (retried every minInterval, 10s).
    faults.fail_next(kubesim::Matcher::new("patch", "deployments"), 2, 403, None);
    let deployments: Api<Deployment> = Api::namespaced(env.client.clone(), &env.ns);
    let d = json!({"metadata": {"name": "w"}, "spec": {
        "selector": {"matchLabels": {"app": "w"}},
        "template": {"metadata": {"labels": {"app": "w"}}, "spec": {"containers": [{"name": "app", "image": "x"}]}}}});
    deployments.create(&PostParams::default(), &serde_json::from_value(d).unwrap()).await.unwrap();
    let mut ts = common::podero(&env, "mi", "mi-token");
    ts["spec"]["target"]["rolloutRestart"] =
        json!({"minInterval": "10s", "workloads": [{"kind": "Deployment", "name": "w"}]});
    env.create(ts).await;
    let started = tokio::time::Instant::now();
    let mut changes: Vec<(Duration, String)> = vec![];
    while started.elapsed() < Duration::from_secs(45) && changes.len() < 3 {
        let v = serde_json::to_value(deployments.get("w").await.unwrap()).unwrap();
        let at =
            v["spec"]["template"]["metadata"]["annotations"]["tokensource.dev/restartedAt"].as_str().map(String::from);
        if let Some(at) = at
            && changes.last().is_none_or(|(_, last)| *last != at)
        {
            changes.push((started.elapsed(), at));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("restarts seen (time since start, restartedAt): {changes:?}");
    assert!(changes.len() >= 2, "fewer than two restarts: {changes:?}");
    for w in changes.windows(2) {
        let gap = w[1].0 - w[0].0;
        assert!(gap >= Duration::from_secs(9), "two restarts {gap:?} apart with minInterval 10s: {changes:?}");
    }
}

/// Stopped while it starts against a slow API server (its TokenSource cache not synced yet), the
/// operator stops at once: it has reconciled nothing. It waited for that cache, no longer read,
/// until it was killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_stopped_while_its_cache_syncs_stops_at_once() {
    let mut env = Env::start().await;
    assert!(env.stop_operator().await);
    let lists = kubesim::Matcher::new("list", "tokensources");
    env.sim.as_ref().expect("kubesim").faults().add_latency(lists, Duration::from_secs(3));
    for _ in 0..2 {
        env.start_operator();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let started = std::time::Instant::now();
        let stopped = env.stop_operator().await;
        assert!(stopped, "still running 10 s after it was told to stop");
        eprintln!("stopped {:?} after it was told to", started.elapsed());
    }
}
