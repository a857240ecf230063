//! High availability with two real operator binaries (`--leader-elect`) against kubesim and the
//! strict fake providers: failover after `kill -9`, handover on SIGTERM, fencing of a leader cut
//! off from its Lease, an API outage for both, and a restart of both with valid tokens.
//!
//! Short lease settings keep it fast: lease 3s, renew deadline 2s, retry period 500ms. Tests 3
//! and 4 need kubesim's fault injection; tests 1, 2 and 5 also run against a real cluster when
//! `TOKENSOURCE_E2E_KUBECONFIG` names a kubeconfig (the operators run on this machine).

#![cfg(test)]

mod common;

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{WAIT, check, eventually, free_port, http_get};
use fake_providers::{Config as FakeConfig, Endpoint, Fakes};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::json;
use tokensource_operator::crd::TokenSource;

const BIN: &str = env!("CARGO_BIN_EXE_tokensource-operator");
const LEASE: Duration = Duration::from_secs(3);
const RENEW: Duration = Duration::from_secs(2);
const RETRY: Duration = Duration::from_millis(500);

fn unix_millis() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// One operator process.
struct Operator {
    name: &'static str,
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Operator {
    fn admin(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn signal(&self, signal: &str) {
        let _ = Command::new("kill").args([signal, &self.child.id().to_string()]).status();
    }

    fn logs(&self) -> String {
        let mut s = String::new();
        let _ = std::fs::File::open(&self.log).and_then(|mut f| f.read_to_string(&mut s));
        s
    }

    async fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(tokio::time::Instant::now() < deadline, "{} did not exit; log {:?}", self.name, self.log);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_ready(&self) {
        let url = self.admin("/readyz");
        eventually(&format!("{} ready", self.name), WAIT, || async {
            let seen = http_get(&url).await;
            check(matches!(seen, Some((200, _))), (), seen)
        })
        .await;
    }

    /// The `tokensource_leader` gauge.
    async fn leader_gauge(&self) -> Option<u8> {
        let (_, text) = http_get(&self.admin("/metrics")).await?;
        text.lines().find_map(|l| l.strip_prefix("tokensource_leader ")).and_then(|v| v.trim().parse().ok())
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The API, the fake providers, a namespace and credentials.
struct Ha {
    sim: Option<kubesim::KubeSim>,
    kubeconfig: PathBuf,
    client: Client,
    fakes: Fakes,
    ns: String,
}

impl Ha {
    async fn start(lifetime: Duration, needs_faults: bool) -> Option<Self> {
        let (sim, client, kubeconfig) = match std::env::var("TOKENSOURCE_E2E_KUBECONFIG") {
            Ok(path) if !path.is_empty() => {
                if needs_faults {
                    common::say(
                        "kubesim only: this test injects API faults or reads kubesim's request log; not run against a real cluster",
                    );
                    return None;
                }
                let kc = kube::config::Kubeconfig::read_from(&path).unwrap();
                let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.unwrap();
                (None, Client::try_from(cfg).unwrap(), PathBuf::from(path))
            }
            _ => {
                let sim = kubesim::KubeSim::start().await.unwrap();
                let (client, path) = (sim.client(), sim.kubeconfig_path().to_path_buf());
                (Some(sim), client, path)
            }
        };
        let ns = common::install(&client, "ha").await;
        // On a real API server the operators run as their ServiceAccount, with the
        // leader-election Role in the namespace that holds their Lease.
        let kubeconfig = common::operator_kubeconfig(&client, &kubeconfig, sim.is_none()).await;
        if sim.is_none() {
            common::grant(&client, &ns, "leader-election-rbac.yaml").await;
        }
        let fakes = Fakes::start(FakeConfig { lifetime, ..Default::default() }).await.unwrap();
        let c = fakes.config().podero;
        let creds = json!({"metadata": {"name": "podero-credentials"}, "stringData": {"client_id": c.id, "client_secret": c.secret}});
        Api::<Secret>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &serde_json::from_value(creds).unwrap())
            .await
            .unwrap();
        Some(Self { sim, kubeconfig, client, fakes, ns })
    }

    /// An operator with the short lease settings.
    fn operator(&self, name: &'static str) -> Operator {
        self.spawn(name, true)
    }

    /// An operator with `deploy/`'s lease settings (15s, 10s, 2s): the flags' defaults.
    fn operator_with_default_timings(&self, name: &'static str) -> Operator {
        self.spawn(name, false)
    }

    fn spawn(&self, name: &'static str, short: bool) -> Operator {
        let port = free_port();
        let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{}-{name}.log", self.ns));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(BIN)
            .args(["run", "--namespace", &self.ns, "--allow-insecure-http", "--allow-endpoint-cidrs", "127.0.0.1/32"])
            .args(["--propagation-margin", "1s", "--log-level", "info,tokensource_operator=debug"])
            .args(["--leader-elect", "--leader-election-namespace", &self.ns])
            .args(if short {
                &["--leader-election-lease-duration", "3s", "--leader-election-renew-deadline", "2s"][..]
            } else {
                &[]
            })
            .args(if short { &["--leader-election-retry-period", "500ms"][..] } else { &[] })
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["--admin-addr", &format!("127.0.0.1:{port}")])
            .env("POD_NAME", name)
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        Operator { name, child, port, log }
    }

    async fn holder(&self) -> Option<String> {
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), &self.ns);
        leases.get_opt("tokensource-operator").await.ok()??.spec?.holder_identity.filter(|h| !h.is_empty())
    }

    /// Waits until `name` holds the Lease; returns its full identity.
    async fn wait_holder(&self, name: &str, within: Duration) -> String {
        let prefix = format!("{name}_");
        eventually(&format!("{name} to hold the Lease"), within, || async {
            let h = self.holder().await;
            check(h.as_deref().is_some_and(|h| h.starts_with(&prefix)), h.clone().unwrap_or_default(), h)
        })
        .await
    }

    async fn create(&self, name: &str) {
        self.create_sharing(name, true).await;
    }

    /// A TokenSource for the Podero fake; `share: false` makes it ask for its own token.
    async fn create_sharing(&self, name: &str, share: bool) {
        let ts = json!({"apiVersion": "tokensource.dev/v1alpha1", "kind": "TokenSource", "metadata": {"name": name}, "spec": {
            "type": "OAuth2",
            "oauth2": {"tokenURL": self.fakes.endpoint_url(Endpoint::Podero), "bodyType": "JSON",
                       "clientID": {"valueFrom": {"secretKeyRef": {"name": "podero-credentials", "key": "client_id"}}},
                       "clientAuth": {"type": "ClientSecretBasic", "clientSecretRef": {"name": "podero-credentials", "key": "client_secret"}}},
            "renewal": {"shareIdenticalRequests": share},
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

    async fn wait_token(&self, source: &str, not: Option<&str>) -> String {
        eventually(&format!("a token for {source}"), WAIT, || async {
            let t = self.token(source).await;
            check(t.is_some() && t.as_deref() != not, t.clone().unwrap_or_default(), t)
        })
        .await
    }

    async fn renewal_time(&self, source: &str) -> jiff::Timestamp {
        let ts = Api::<TokenSource>::namespaced(self.client.clone(), &self.ns).get(source).await.unwrap();
        ts.status.and_then(|s| s.renewal_time).map(|t| t.0).expect("a renewal time in status")
    }

    /// Requests kubesim logged from the client whose identity is `who`.
    fn requests_of(&self, who: &str) -> Vec<kubesim::LoggedRequest> {
        let sim = self.sim.as_ref().expect("kubesim");
        sim.faults().requests().into_iter().filter(|r| r.user_agent.contains(&format!("({who})"))).collect()
    }
}

/// Starts `a`, waits until it leads, then starts `b` and waits until it is a ready standby.
async fn leader_and_standby(ha: &Ha) -> (Operator, Operator, String) {
    let a = ha.operator("op-a");
    let a_id = ha.wait_holder("op-a", WAIT).await;
    let b = ha.operator("op-b");
    a.wait_ready().await;
    b.wait_ready().await;
    (a, b, a_id)
}

/// Watches the target Secrets of `sources` every 100ms: every token seen, and any moment one
/// held a token the provider no longer accepts.
/// Every token seen, and the Secrets seen holding an expired one.
type Seen = (Vec<String>, Vec<String>);

fn monitor(ha: &Arc<Ha>, sources: &[&str]) -> (Arc<AtomicBool>, tokio::task::JoinHandle<Seen>) {
    let secrets: Api<Secret> = Api::namespaced(ha.client.clone(), &ha.ns);
    let ha = ha.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let names: Vec<String> = sources.iter().map(|s| format!("{s}-token")).collect();
    let task = tokio::spawn(async move {
        let (mut seen, mut expired) = (Vec::<String>::new(), Vec::<String>::new());
        loop {
            for n in &names {
                let token = secrets
                    .get_opt(n)
                    .await
                    .ok()
                    .flatten()
                    .and_then(|s| s.data?.get("token").map(|t| String::from_utf8_lossy(&t.0).into_owned()));
                let Some(token) = token else { continue };
                if !ha.fakes.is_valid(&token) {
                    expired.push(n.clone());
                }
                if !seen.contains(&token) {
                    seen.push(token);
                }
            }
            if stopped.load(Ordering::Relaxed) {
                return (seen, expired);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    (stop, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_takes_over_after_kill_9_and_renews_what_fell_due() {
    let Some(ha) = Ha::start(Duration::from_secs(12), false).await else { return };
    let ha = Arc::new(ha);
    let (mut a, b, a_id) = leader_and_standby(&ha).await;
    let sources = ["alpha", "beta"];
    for s in sources {
        ha.create(s).await;
    }
    let first: Vec<String> = futures::future::join_all(sources.iter().map(|s| ha.wait_token(s, None))).await;
    assert_eq!((a.leader_gauge().await, b.leader_gauge().await), (Some(1), Some(0)));
    let (stop, watch) = monitor(&ha, &sources);

    // Kill the leader two seconds before the first renewal falls due.
    let due = ha.renewal_time("alpha").await.min(ha.renewal_time("beta").await);
    let wait = due.duration_since(jiff::Timestamp::now()) - jiff::SignedDuration::from_secs(2);
    tokio::time::sleep(Duration::try_from(wait).unwrap_or_default()).await;
    let killed = tokio::time::Instant::now();
    let killed_ms = unix_millis();
    a.signal("-KILL");
    a.wait_exit(Duration::from_secs(5)).await;
    let b_id = ha.wait_holder("op-b", LEASE + RETRY + Duration::from_secs(5)).await;
    let takeover = killed.elapsed();
    let renewed: Vec<String> =
        futures::future::join_all(sources.iter().zip(&first).map(|(s, t)| ha.wait_token(s, Some(t)))).await;
    let renewal = killed.elapsed();
    eprintln!("kill -9: the standby led after {takeover:?}; both due renewals done {renewal:?} after the kill");
    assert!(takeover <= LEASE + RETRY + Duration::from_millis(500), "takeover took {takeover:?}");
    assert!(renewal <= LEASE + RETRY + Duration::from_secs(2), "renewals were done {renewal:?} after the kill");
    assert_eq!(b.leader_gauge().await, Some(1));

    // A few seconds more: no expired token, one provider call per token.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let (seen, expired) = watch.await.unwrap();
    assert!(expired.is_empty(), "a Secret held an expired token: {expired:?}");
    let calls = ha.fakes.calls(Endpoint::Podero);
    // The two TokenSources send identical requests: they share one token per lifetime.
    assert_eq!(calls, 2, "one token per lifetime, shared by both TokenSources; renewed {renewed:?}");
    assert_eq!(seen.len(), calls, "every token fetched reached a Secret");
    if let Some(sim) = &ha.sim {
        // The standby wrote nothing before it led; afterwards it wrote each Secret once.
        let (before, after): (Vec<_>, Vec<_>) = ha
            .requests_of(&b_id)
            .into_iter()
            .filter(|r| r.is_successful_write() && r.resource != "leases")
            .partition(|r| r.at_unix_millis < killed_ms);
        assert!(before.is_empty(), "the standby wrote before it led: {before:?}");
        assert_eq!(after.iter().filter(|r| r.resource == "secrets").count(), 2, "{after:?}");
        assert!(sim.faults().requests().iter().any(|r| r.user_agent.contains(&a_id)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_the_lease_over_at_once() {
    let Some(ha) = Ha::start(Duration::from_secs(3600), false).await else { return };
    let (mut a, b, _) = leader_and_standby(&ha).await;
    ha.create("gamma").await;
    let token = ha.wait_token("gamma", None).await;
    let stopped = tokio::time::Instant::now();
    a.signal("-TERM");
    ha.wait_holder("op-b", Duration::from_secs(5)).await;
    let handover = stopped.elapsed();
    let status = a.wait_exit(Duration::from_secs(10)).await;
    eprintln!("SIGTERM: the standby led after {handover:?}");
    assert!(status.success(), "{}", a.logs());
    assert!(a.logs().contains("released the Lease"), "{}", a.logs());
    assert!(handover <= Duration::from_secs(2), "handover took {handover:?}");
    // The new leader keeps the valid token: no provider call, nothing rewritten.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(b.leader_gauge().await, Some(1));
    assert_eq!(ha.token("gamma").await.as_deref(), Some(token.as_str()));
    assert_eq!(ha.fakes.calls(Endpoint::Podero), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_its_lease_stops_writing_before_the_standby_leads() {
    let Some(ha) = Ha::start(Duration::from_secs(3600), true).await else { return };
    let sim = ha.sim.as_ref().expect("kubesim");
    let (a, b, a_id) = leader_and_standby(&ha).await;
    ha.create("s0").await;
    ha.wait_token("s0", None).await;

    // The leader's Lease requests fail; everything else it sends still goes through, so only
    // the fence can stop its writes.
    let cut = kubesim::Matcher { resource: Some("leases".into()), ..kubesim::Matcher::from_client(&a_id) };
    let cut_ms = unix_millis();
    let cut_at = tokio::time::Instant::now();
    sim.faults().fail_next(cut, u32::MAX, 500, None);
    // Work for whoever leads: a new TokenSource every 250ms.
    let mut n = 1;
    let b_id = loop {
        ha.create(&format!("s{n}")).await;
        n += 1;
        if let Some(h) = ha.holder().await.filter(|h| h.starts_with("op-b_")) {
            break h;
        }
        assert!(cut_at.elapsed() < Duration::from_secs(15), "the standby never took over");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let takeover = cut_at.elapsed();
    for i in n..n + 4 {
        ha.create(&format!("s{i}")).await;
    }
    for i in 0..n + 4 {
        ha.wait_token(&format!("s{i}"), None).await;
    }
    sim.faults().clear();

    let takeover_ms = sim
        .faults()
        .requests()
        .iter()
        .find(|r| r.user_agent.contains(&b_id) && r.resource == "leases" && r.is_successful_write())
        .map(|r| r.at_unix_millis)
        .expect("the standby's winning Lease write");
    let old = ha.requests_of(&a_id);
    let last_renewal = old
        .iter()
        .filter(|r| r.resource == "leases" && r.is_successful_write())
        .map(|r| r.at_unix_millis)
        .max()
        .unwrap_or(0);
    let writes: Vec<_> = old.iter().filter(|r| r.is_successful_write() && r.resource != "leases").collect();
    let last_write = writes.iter().map(|r| r.at_unix_millis).max().unwrap_or(0);
    let after_cut = writes.iter().filter(|r| r.at_unix_millis >= cut_ms).count();
    let tokens = n + 4;
    eprintln!(
        "partition: the standby led {takeover:?} after the cut; the old leader made {after_cut} writes after the cut, the last {} ms after it and {} ms before the takeover (its last renewal was {} ms before the cut); {} provider calls for {tokens} TokenSources",
        last_write as i64 - cut_ms as i64,
        takeover_ms as i64 - last_write as i64,
        cut_ms as i64 - last_renewal as i64,
        ha.fakes.calls(Endpoint::Podero),
    );
    assert!(last_write < takeover_ms, "the old leader wrote after the standby took over");
    assert!(
        last_write < last_renewal + RENEW.as_millis() as u64 + 100,
        "the old leader wrote {} ms after its last renewal (renew deadline {RENEW:?})",
        last_write - last_renewal
    );
    assert!(a.logs().contains("lost the Lease"), "{}", a.logs());
    assert!(takeover <= LEASE + RETRY + Duration::from_secs(1), "takeover took {takeover:?}");

    // Healed, the old leader stays a standby and writes nothing.
    let healed_ms = unix_millis();
    ha.create("late").await;
    ha.wait_token("late", None).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let late: Vec<_> = ha
        .requests_of(&a_id)
        .into_iter()
        .filter(|r| r.at_unix_millis >= healed_ms && r.is_successful_write())
        .collect();
    assert!(late.is_empty(), "the old leader wrote after the partition healed: {late:?}");
    assert_eq!((a.leader_gauge().await, b.leader_gauge().await), (Some(0), Some(1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_outage_of_thirty_seconds_loses_nothing() {
    let Some(ha) = Ha::start(Duration::from_secs(45), true).await else { return };
    let sim = ha.sim.as_ref().expect("kubesim");
    let (a, b, _) = leader_and_standby(&ha).await;
    for s in ["o1", "o2"] {
        ha.create(s).await;
    }
    let first = [ha.wait_token("o1", None).await, ha.wait_token("o2", None).await];
    // Renewals fall due about 30s after issue, inside the outage.
    sim.faults().pause();
    tokio::time::sleep(Duration::from_secs(30)).await;
    sim.faults().resume();
    let resumed = tokio::time::Instant::now();
    for t in &first {
        assert!(ha.fakes.is_valid(t), "a token expired during the outage");
    }
    let renewed = [ha.wait_token("o1", Some(&first[0])).await, ha.wait_token("o2", Some(&first[1])).await];
    eprintln!("outage: renewals that fell due were done {:?} after the API came back", resumed.elapsed());
    for t in &renewed {
        assert!(ha.fakes.is_valid(t));
    }
    assert!(ha.holder().await.is_some());
    let gauges = (a.leader_gauge().await, b.leader_gauge().await);
    assert!(matches!(gauges, (Some(1), Some(0)) | (Some(0), Some(1))), "leader gauges {gauges:?}");
    // Two TokenSources with identical requests: one token per lifetime, shared.
    assert_eq!(ha.fakes.calls(Endpoint::Podero), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_restarted_with_valid_tokens_call_no_provider_and_write_nothing() {
    let Some(ha) = Ha::start(Duration::from_secs(3600), false).await else { return };
    let (mut a, mut b, _) = leader_and_standby(&ha).await;
    let sources = ["r1", "r2", "r3"];
    for s in sources {
        ha.create(s).await;
    }
    for s in sources {
        ha.wait_token(s, None).await;
    }
    // Let the last status writes land before stopping.
    tokio::time::sleep(Duration::from_secs(1)).await;
    a.signal("-TERM");
    b.signal("-TERM");
    a.wait_exit(Duration::from_secs(10)).await;
    b.wait_exit(Duration::from_secs(10)).await;
    let calls = ha.fakes.calls(Endpoint::Podero);
    if let Some(sim) = &ha.sim {
        sim.faults().reset_counts();
    }
    let (a, b) = (ha.operator("op-a"), ha.operator("op-b"));
    a.wait_ready().await;
    b.wait_ready().await;
    eventually("a leader", WAIT, || async { check(ha.holder().await.is_some(), (), "no holder") }).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(ha.fakes.calls(Endpoint::Podero), calls, "a restart called the provider");
    if let Some(sim) = &ha.sim {
        let (secrets, status) =
            (sim.faults().count("patch", "secrets"), sim.faults().count("patch", "tokensources/status"));
        eprintln!("restart of both: {secrets} Secret writes, {status} status writes, 0 provider calls");
        assert_eq!((secrets, status), (0, 0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backoff_recorded_in_status_is_honoured_by_the_new_leader() {
    let Some(ha) = Ha::start(Duration::from_secs(3600), false).await else { return };
    let (mut a, b, _) = leader_and_standby(&ha).await;
    // The provider is down and asks for 30 seconds.
    ha.fakes.fail_next(Endpoint::Podero, 1, 503, json!({"error": "temporarily_unavailable"}), Some(30));
    ha.create("backoff").await;
    let sources: Api<TokenSource> = Api::namespaced(ha.client.clone(), &ha.ns);
    let retry_at = eventually("a failure recorded in status", WAIT, || async {
        let status = sources.get("backoff").await.ok().and_then(|t| t.status);
        let failed = status.as_ref().is_some_and(|s| s.failed_renewal_attempts >= 1);
        check(failed, status.as_ref().and_then(|s| s.renewal_time.clone()), status)
    })
    .await
    .expect("the retry time in status");
    assert!(retry_at.0 > jiff::Timestamp::now() + jiff::SignedDuration::from_secs(20), "{retry_at:?}");
    a.signal("-TERM");
    a.wait_exit(Duration::from_secs(10)).await;
    ha.wait_holder("op-b", Duration::from_secs(5)).await;
    b.wait_ready().await;
    // The new leader reconciles it at takeover and keeps to the retry time the old one set.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(ha.fakes.calls(Endpoint::Podero), 1, "the new leader did not wait for the backoff");
    assert!(ha.token("backoff").await.is_none());
}

/// Every 200ms, the TokenSources' statuses: the longest time one said `Ready=True` past its own
/// `expirationTime`, in milliseconds.
fn watch_statuses(ha: &Arc<Ha>) -> (Arc<AtomicBool>, tokio::task::JoinHandle<i64>) {
    let sources: Api<TokenSource> = Api::namespaced(ha.client.clone(), &ha.ns);
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let task = tokio::spawn(async move {
        let mut worst = 0i64;
        while !stopped.load(Ordering::Relaxed) {
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
        worst
    });
    (stop, task)
}

/// Every Lease request takes six seconds for forty seconds, with `deploy/`'s timings (renew
/// deadline 10s, retry period 2s): each renewal succeeds, but the fence lapses for a few seconds
/// between them. Renewals of tokens must go on throughout and after, and no status may say
/// Ready over an expired token.
async fn slow_lease_renewals_go_on(replicas: usize) {
    let Some(ha) = Ha::start(Duration::from_secs(20), true).await else { return };
    let ha = Arc::new(ha);
    let sim = ha.sim.as_ref().expect("kubesim");
    let first = ha.operator_with_default_timings("slow-a");
    ha.wait_holder("slow-a", WAIT).await;
    let second = (replicas > 1).then(|| ha.operator_with_default_timings("slow-b"));
    first.wait_ready().await;
    if let Some(b) = &second {
        b.wait_ready().await;
    }
    let names: Vec<String> = (0..20).map(|i| format!("slow{i:02}")).collect();
    for n in &names {
        ha.create_sharing(n, false).await;
    }
    for n in &names {
        ha.wait_token(n, None).await;
    }
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let (stop_secrets, secrets) = monitor(&ha, &refs);
    let (stop_statuses, statuses) = watch_statuses(&ha);

    let leases = kubesim::Matcher { resource: Some("leases".into()), ..Default::default() };
    sim.faults().add_latency(leases, Duration::from_secs(6));
    let mut calls = vec![ha.fakes.calls(Endpoint::Podero)];
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_secs(10)).await;
        calls.push(ha.fakes.calls(Endpoint::Podero));
    }
    sim.faults().clear();
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_secs(10)).await;
        calls.push(ha.fakes.calls(Endpoint::Podero));
    }
    stop_secrets.store(true, Ordering::Relaxed);
    stop_statuses.store(true, Ordering::Relaxed);
    let ((seen, expired), worst) = (secrets.await.unwrap(), statuses.await.unwrap());
    let during = calls[4] - calls[0];
    let after = calls[8] - calls[4];
    eprintln!(
        "slow Lease, {replicas} replica(s): provider calls every 10s {calls:?} ({during} during the 40s slowdown, {after} in the 40s after); {} tokens seen; longest Ready=True past expiry {worst} ms",
        seen.len()
    );
    let log = first.logs();
    assert!(!log.contains("lost the Lease"), "a slow but successful renewal is not a lost Lease:\n{log}");
    // 20-second tokens renew about every 13s: each TokenSource renews at least twice in 40s.
    assert!(during >= 40, "renewals stalled while the Lease was slow: {calls:?}");
    assert!(after >= 40, "renewals stalled after the Lease was fast again: {calls:?}");
    for w in calls.windows(2) {
        assert!(w[1] > w[0], "no renewal for 10 seconds: {calls:?}");
    }
    assert!(expired.is_empty(), "Secrets held expired tokens: {expired:?}");
    assert!(worst <= 1000, "a status said Ready=True {worst} ms after its token expired");
    if let Some(b) = &second {
        assert_eq!(b.leader_gauge().await, Some(0), "the standby took over from a leader that kept renewing");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_lease_never_stops_renewals_with_one_replica() {
    slow_lease_renewals_go_on(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_lease_never_stops_renewals_with_two_replicas() {
    slow_lease_renewals_go_on(2).await;
}

/// Creates a TokenSource every 100ms for `count` times (work for whoever leads).
fn keep_creating(ha: &Arc<Ha>, prefix: &'static str, count: usize) -> tokio::task::JoinHandle<Vec<String>> {
    let ha = ha.clone();
    tokio::spawn(async move {
        let mut names = vec![];
        for i in 0..count {
            let name = format!("{prefix}{i}");
            ha.create(&name).await;
            names.push(name);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        names
    })
}

/// The first successful write of the Lease by `who` at or after `since`, in Unix milliseconds.
fn lease_write_of(ha: &Ha, who: &str, verb: &str, since: u64) -> Option<u64> {
    ha.requests_of(who)
        .into_iter()
        .find(|r| r.resource == "leases" && r.verb == verb && r.is_successful_write() && r.at_unix_millis >= since)
        .map(|r| r.at_unix_millis)
}

/// Successful writes by `who` other than of the Lease, answered at or after `since`.
fn writes_since(ha: &Ha, who: &str, since: u64) -> Vec<kubesim::LoggedRequest> {
    ha.requests_of(who)
        .into_iter()
        .filter(|r| r.resource != "leases" && r.is_successful_write() && r.at_unix_millis >= since)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_lease_is_deleted_stops_writing_before_the_standby_creates_it() {
    let Some(ha) = Ha::start(Duration::from_secs(3600), true).await else { return };
    let ha = Arc::new(ha);
    let sim = ha.sim.as_ref().expect("kubesim");
    let (a, b, a_id) = leader_and_standby(&ha).await;
    ha.create("d").await;
    ha.wait_token("d", None).await;
    // The old leader cannot win the race to create the Lease again: the standby does.
    let create = kubesim::Matcher {
        verb: Some("create".into()),
        resource: Some("leases".into()),
        ..kubesim::Matcher::from_client(&a_id)
    };
    sim.faults().fail_next(create, u32::MAX, 500, None);
    let work = keep_creating(&ha, "d", 30);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let deleted_ms = unix_millis();
    Api::<Lease>::namespaced(ha.client.clone(), &ha.ns)
        .delete("tokensource-operator", &Default::default())
        .await
        .unwrap();
    let b_id = ha.wait_holder("op-b", Duration::from_secs(10)).await;
    let names = work.await.unwrap();
    for n in &names {
        ha.wait_token(n, None).await;
    }
    let created_ms = lease_write_of(&ha, &b_id, "create", deleted_ms).expect("the standby created the Lease");
    let late = writes_since(&ha, &a_id, created_ms);
    let last = writes_since(&ha, &a_id, deleted_ms).iter().map(|r| r.at_unix_millis).max();
    eprintln!(
        "Lease deleted: the standby created it {} ms later; the old leader's last write {:?} ms after the deletion",
        created_ms - deleted_ms,
        last.map(|l| l as i64 - deleted_ms as i64)
    );
    assert!(
        late.is_empty(),
        "the old leader made {} writes after the standby created the Lease: {:?}",
        late.len(),
        &late[..late.len().min(3)]
    );
    assert!(a.logs().contains("lost the Lease"), "{}", a.logs());
    assert_eq!((a.leader_gauge().await, b.leader_gauge().await), (Some(0), Some(1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_stops_writing_at_once_when_the_lease_names_another_holder() {
    let Some(ha) = Ha::start(Duration::from_secs(3600), true).await else { return };
    let ha = Arc::new(ha);
    let (a, b, a_id) = leader_and_standby(&ha).await;
    ha.create("h").await;
    ha.wait_token("h", None).await;
    let work = keep_creating(&ha, "h", 40);
    tokio::time::sleep(Duration::from_millis(700)).await;
    // Somebody else's holder written into the Lease, as another elector would.
    let leases: Api<Lease> = Api::namespaced(ha.client.clone(), &ha.ns);
    let mut lease = leases.get("tokensource-operator").await.unwrap();
    if let Some(spec) = lease.spec.as_mut() {
        spec.holder_identity = Some("intruder".into());
    }
    leases.replace("tokensource-operator", &PostParams::default(), &lease).await.unwrap();
    let edited_ms = unix_millis();
    // Nobody renews for the intruder: after the lease duration one of the two takes over (the
    // old leader too may win, in a new term).
    let next = eventually("a new holder", Duration::from_secs(10), || async {
        let h = ha.holder().await;
        check(h.as_deref().is_some_and(|h| h != "intruder"), h.clone().unwrap_or_default(), h)
    })
    .await;
    let names = work.await.unwrap();
    for n in &names {
        ha.wait_token(n, None).await;
    }
    let acquired_ms = lease_write_of(&ha, &next, "update", edited_ms).expect("the new holder's acquisition");
    let last = writes_since(&ha, &a_id, edited_ms.saturating_sub(1000)).iter().map(|r| r.at_unix_millis).max();
    let late: Vec<_> =
        writes_since(&ha, &a_id, edited_ms + 250).into_iter().filter(|r| r.at_unix_millis < acquired_ms).collect();
    eprintln!(
        "holder edited: the old leader's last write {:?} ms after the edit; {next} acquired the Lease {} ms after it",
        last.map(|l| l as i64 - edited_ms as i64),
        acquired_ms - edited_ms
    );
    assert!(
        late.is_empty(),
        "the old leader made {} writes after the Lease named another holder: {:?}",
        late.len(),
        &late[..late.len().min(3)]
    );
    assert!(a.logs().contains("lost the Lease"), "{}", a.logs());
    let gauges = (a.leader_gauge().await, b.leader_gauge().await);
    assert!(matches!(gauges, (Some(1), Some(0)) | (Some(0), Some(1))), "leader gauges {gauges:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_leader_never_mints_after_a_takeover() {
    let Some(ha) = Ha::start(Duration::from_secs(3600), true).await else { return };
    let sim = ha.sim.as_ref().expect("kubesim");
    let (a, b, a_id) = leader_and_standby(&ha).await;
    // A provider that takes four seconds, longer than the lease: the old leader's request is in
    // flight when it is cut off from its Lease.
    ha.fakes.set_delay(Endpoint::Podero, Duration::from_secs(4));
    ha.create("m").await;
    eventually("the leader's request", WAIT, || async {
        let calls = ha.fakes.calls(Endpoint::Podero);
        check(calls == 1, (), calls)
    })
    .await;
    let cut = kubesim::Matcher { resource: Some("leases".into()), ..kubesim::Matcher::from_client(&a_id) };
    sim.faults().fail_next(cut, u32::MAX, 500, None);
    let b_id = ha.wait_holder("op-b", Duration::from_secs(10)).await;
    let takeover = tokio::time::Instant::now();
    let token = eventually("a token", Duration::from_secs(20), || async {
        let t = ha.token("m").await;
        check(t.is_some(), t.clone().unwrap_or_default(), t)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let minted: Vec<Duration> = ha
        .fakes
        .issue_times(Endpoint::Podero)
        .iter()
        .map(|t| t.saturating_duration_since(takeover.into_std()))
        .collect();
    eprintln!(
        "slow provider across a takeover: {} calls, tokens issued {minted:?} after the takeover by {b_id}",
        ha.fakes.calls(Endpoint::Podero)
    );
    assert_eq!(minted.len(), 1, "the old leader's request was still in flight after the takeover and minted");
    assert!(ha.fakes.is_valid(&token));
    assert_eq!((a.leader_gauge().await, b.leader_gauge().await), (Some(0), Some(1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharers_split_by_a_failover_converge_on_the_newest_token() {
    let Some(ha) = Ha::start(Duration::from_secs(3600), true).await else { return };
    let sim = ha.sim.as_ref().expect("kubesim");
    let (a, b, a_id) = leader_and_standby(&ha).await;
    for s in ["s1", "s2"] {
        ha.create(s).await;
    }
    let first = ha.wait_token("s1", None).await;
    eventually("both sharers on the first token", WAIT, || async {
        let t = ha.token("s2").await;
        check(t.as_deref() == Some(first.as_str()), (), t)
    })
    .await;
    // The leader gets a new token for s1 and writes s1's Secret, but never s2's before it loses
    // the Lease: the two Secrets hold different tokens when the standby takes over.
    let s2 = kubesim::Matcher {
        verb: Some("patch".into()),
        resource: Some("secrets".into()),
        name: Some("s2-token".into()),
        ..kubesim::Matcher::from_client(&a_id)
    };
    sim.faults().fail_next(s2, u32::MAX, 500, None);
    let annotation = json!({"metadata": {"annotations": {"tokensource.dev/refresh-requested-at": jiff::Timestamp::now().to_string()}}});
    Api::<TokenSource>::namespaced(ha.client.clone(), &ha.ns)
        .patch("s1", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&annotation))
        .await
        .unwrap();
    let second = ha.wait_token("s1", Some(&first)).await;
    let cut = kubesim::Matcher { resource: Some("leases".into()), ..kubesim::Matcher::from_client(&a_id) };
    sim.faults().fail_next(cut, u32::MAX, 500, None);
    assert_eq!(ha.token("s2").await.as_deref(), Some(first.as_str()), "the split did not happen");
    ha.wait_holder("op-b", Duration::from_secs(10)).await;
    let takeover = tokio::time::Instant::now();
    eventually("s2 on the newest token", Duration::from_secs(5), || async {
        let t = ha.token("s2").await;
        check(t.as_deref() == Some(second.as_str()), (), t)
    })
    .await;
    eprintln!(
        "sharers split by a failover: equal {:?} after the takeover; {} provider calls",
        takeover.elapsed(),
        ha.fakes.calls(Endpoint::Podero)
    );
    assert_eq!(ha.fakes.calls(Endpoint::Podero), 2, "the new leader asked the provider instead of sharing");
    assert!(ha.fakes.is_valid(&second));
    assert_eq!((a.leader_gauge().await, b.leader_gauge().await), (Some(0), Some(1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_cut_off_by_a_failover_is_finished_not_repeated() {
    use k8s_openapi::api::apps::v1::Deployment;
    let Some(ha) = Ha::start(Duration::from_secs(3600), true).await else { return };
    let sim = ha.sim.as_ref().expect("kubesim");
    let deployments: Api<Deployment> = Api::namespaced(ha.client.clone(), &ha.ns);
    for name in ["w1", "w2"] {
        let d = json!({"metadata": {"name": name}, "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "app", "image": "x"}]}}}});
        deployments.create(&PostParams::default(), &serde_json::from_value(d).unwrap()).await.unwrap();
    }
    let (a, b, a_id) = leader_and_standby(&ha).await;
    ha.create("rr").await;
    let restart = json!({"spec": {"target": {"rolloutRestart": {"minInterval": "10s", "workloads": [
        {"kind": "Deployment", "name": "w1"}, {"kind": "Deployment", "name": "w2"}]}}}});
    let sources: Api<TokenSource> = Api::namespaced(ha.client.clone(), &ha.ns);
    sources.patch("rr", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&restart)).await.unwrap();
    let first = ha.wait_token("rr", None).await;
    // The old leader's restart of w2 hangs; it is cut off from its Lease as soon as it
    // restarted w1, so its fence ends the restart halfway.
    let slow = kubesim::Matcher {
        verb: Some("patch".into()),
        resource: Some("deployments".into()),
        name: Some("w2".into()),
        ..kubesim::Matcher::from_client(&a_id)
    };
    sim.faults().add_latency(slow, Duration::from_secs(5));
    let annotation = json!({"metadata": {"annotations": {"tokensource.dev/refresh-requested-at": jiff::Timestamp::now().to_string()}}});
    sources.patch("rr", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&annotation)).await.unwrap();
    let restarted_at = |name: &'static str| {
        let deployments = deployments.clone();
        async move {
            let d = deployments.get(name).await.ok()?;
            let generation = d.metadata.generation.unwrap_or_default();
            let at = d.spec?.template.metadata?.annotations?.get("tokensource.dev/restartedAt").cloned();
            Some((at, generation))
        }
    };
    let (r1, _) = eventually("w1 restarted by the old leader", WAIT, || async {
        let seen = restarted_at("w1").await;
        check(seen.as_ref().is_some_and(|s| s.0.is_some()), seen.clone().unwrap_or_default(), seen)
    })
    .await;
    let cut = kubesim::Matcher { resource: Some("leases".into()), ..kubesim::Matcher::from_client(&a_id) };
    sim.faults().fail_next(cut, u32::MAX, 500, None);
    ha.wait_holder("op-b", Duration::from_secs(10)).await;
    // The new leader finishes the restart: w2 with the same time; w1 is not restarted again.
    eventually("w2 restarted by the new leader", WAIT, || async {
        let seen = restarted_at("w2").await;
        check(seen.as_ref().is_some_and(|s| s.0 == r1), (), seen)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (w1, w2) = (restarted_at("w1").await.unwrap(), restarted_at("w2").await.unwrap());
    eprintln!("restart across a failover: w1 {w1:?}, w2 {w2:?}");
    assert_eq!(w1, (r1.clone(), 2), "w1 was restarted twice");
    assert_eq!(w2, (r1, 2), "w2 was restarted other than once");
    assert_ne!(ha.token("rr").await.as_deref(), Some(first.as_str()));
    assert_eq!((a.leader_gauge().await, b.leader_gauge().await), (Some(0), Some(1)));
}
