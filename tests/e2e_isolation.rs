//! Tenants cannot slow each other down: one operator serves every namespace, and no token
//! endpoint a tenant points its TokenSources at — however many, however slow — may delay the
//! renewals of another namespace. Token requests run on tasks of their own; no reconcile worker
//! waits on an endpoint.

#![cfg(test)]

mod common;

use std::time::{Duration, Instant};

use common::{Env, WAIT, check, eventually, podero, podero_credentials};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use tokensource_operator::crd::TokenSource;

/// Endpoints that accept connections and never answer; returns their URLs and the count of
/// connections each accepted.
async fn hung_endpoints(n: usize) -> (Vec<String>, Vec<std::sync::Arc<std::sync::atomic::AtomicUsize>>) {
    let mut urls = vec![];
    let mut counts = vec![];
    for _ in 0..n {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        urls.push(format!("http://{}/oauth/token", listener.local_addr().unwrap()));
        let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        counts.push(count.clone());
        tokio::spawn(async move {
            let mut held = vec![];
            while let Ok((socket, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                held.push(socket);
            }
        });
    }
    (urls, counts)
}

/// Creates `ts` (as [`podero`] builds it) in another tenant's namespace `ns`; returns when.
async fn create_in(env: &Env, ns: &str, mut ts: serde_json::Value) -> Instant {
    ts["apiVersion"] = json!("tokensource.dev/v1alpha1");
    ts["kind"] = json!("TokenSource");
    let created = Instant::now();
    Api::<TokenSource>::namespaced(env.client.clone(), ns)
        .create(&PostParams::default(), &serde_json::from_value(ts).unwrap())
        .await
        .unwrap();
    created
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_that_never_answer_in_one_namespace_do_not_delay_another() {
    let Some(env) = Env::start_all_namespaces().await else { return };
    podero_credentials(&env).await;
    // Four hosts that hang, four request slots each: sixteen requests in flight, as many as the
    // operator has reconcile workers, and four more TokenSources waiting for a slot.
    let (urls, accepted) = hung_endpoints(4).await;
    for i in 0..20 {
        let mut ts = podero(&env, &format!("hung{i}"), &format!("hung{i}-token"));
        ts["spec"]["oauth2"]["tokenURL"] = json!(urls[i % urls.len()]);
        ts["spec"]["renewal"] = json!({"shareIdenticalRequests": false});
        env.create(ts).await;
    }
    eventually("every request slot of the hung hosts taken", WAIT, || async {
        let n: usize = accepted.iter().map(|c| c.load(std::sync::atomic::Ordering::Relaxed)).sum();
        check(n >= 16, (), n)
    })
    .await;
    // Manual refreshes of the hung TokenSources while another tenant waits.
    let sources = env.sources();
    let hammer = tokio::spawn(async move {
        for round in 0..20 {
            for i in 0..20 {
                let at = format!("2026-01-01T00:00:{:02}Z", round % 60);
                let patch = json!({"metadata": {"annotations": {"tokensource.dev/refresh-requested-at": at}}});
                let _ = sources.patch(&format!("hung{i}"), &PatchParams::default(), &Patch::Merge(&patch)).await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });

    let other = env.namespace("tenant-b").await;
    let created = create_in(&env, &other, podero(&env, "healthy", "healthy-token")).await;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(env.client.clone(), &other);
    eventually("the other tenant's token", WAIT, || async {
        let s = secrets.get_opt("healthy-token").await.ok().flatten();
        let token = s.and_then(|s| s.data).and_then(|d| d.get("token").cloned());
        check(token.is_some(), (), "no token yet")
    })
    .await;
    let took = created.elapsed();
    let healthy = Api::<TokenSource>::namespaced(env.client.clone(), &other);
    let ready = eventually("the other tenant's TokenSource Ready", WAIT, || async {
        let st = healthy.get("healthy").await.ok().and_then(|t| t.status);
        let ready = st.as_ref().is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        check(ready, created.elapsed(), st)
    })
    .await;
    hammer.abort();
    let in_flight: usize = accepted.iter().map(|c| c.load(std::sync::atomic::Ordering::Relaxed)).sum();
    eprintln!(
        "another namespace's token written {took:?} and Ready {ready:?} after its creation, with {in_flight} requests to hung hosts accepted"
    );
    assert!(took < Duration::from_secs(1), "another tenant's hung endpoints delayed this one's token by {took:?}");
    assert!(ready < Duration::from_secs(2), "Ready only after {ready:?}");
}

/// Waiting costs nothing: TokenSources waiting for a request slot of a busy host make no API
/// request until their turn, so a cold start behind a slow provider costs the API server the
/// same per TokenSource whatever the provider's latency and however many wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_a_busy_host_costs_no_api_request() {
    let env = Env::start().await;
    let Some(sim) = env.sim.as_ref() else {
        env.kubesim_only("it counts the operator's requests");
        return;
    };
    podero_credentials(&env).await;
    // Four request slots per host, one second per request: 24 TokenSources take six seconds.
    env.fakes.set_reply_delay(fake_providers::Endpoint::Podero, Duration::from_secs(1));
    tokio::time::sleep(Duration::from_secs(1)).await;
    sim.faults().reset_counts();
    let n = 24;
    for i in 0..n {
        let mut ts = podero(&env, &format!("busy{i}"), &format!("busy{i}-token"));
        ts["spec"]["renewal"] = json!({"shareIdenticalRequests": false});
        env.create(ts).await;
    }
    // Watched through one list of the TokenSources: the test reads no Secret meanwhile.
    eventually("every TokenSource ready", Duration::from_secs(30), || async {
        let list = env.sources().list(&Default::default()).await.map_err(|e| e.to_string())?;
        let ready = list
            .items
            .iter()
            .filter(|ts| {
                let conditions = ts.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
                conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True")
            })
            .count();
        check(ready == n, (), format!("{ready} of {n} ready"))
    })
    .await;
    // The operator's requests: the test only created the TokenSources and listed them.
    let counts = sim.faults().counts();
    let operator = |key: &str| counts.get(key).copied().unwrap_or(0);
    let (gets, secret_writes, status_writes, events) = (
        operator("get secrets"),
        operator("patch secrets"),
        operator("patch tokensources/status"),
        operator("create events") + operator("patch events"),
    );
    eprintln!(
        "{n} TokenSources behind a busy host: {gets} Secret GETs, {secret_writes} Secret writes, {status_writes} status writes, {events} Event writes; all: {counts:?}"
    );
    assert_eq!(secret_writes, n as u64, "one Secret write per token");
    assert!(status_writes <= 2 * n as u64, "{status_writes} status writes for {n} tokens");
    // One look per TokenSource at a target name no Secret has yet, whatever the wait (and one
    // read of the credentials they share).
    assert!(gets <= n as u64 + 1, "{gets} Secret GETs for {n} TokenSources");
    for i in 0..n {
        assert!(env.secret_data(&format!("busy{i}-token")).await.is_some_and(|d| d.contains_key("token")));
    }
}

/// The value of the per-host series `name` in the operator's metrics, for the fakes' host.
fn host_series(env: &Env, name: &str) -> Option<f64> {
    let text = env.metrics.encode();
    text.lines()
        .filter(|l| l.starts_with(&format!("tokensource_{name}{{")) && l.contains("127.0.0.1:"))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

/// A host that answers quickly is sent more requests at once than the floor it starts at, up
/// to the ceiling, without a flag: a cold start is not capped at four divided by its latency.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_answers_quickly_is_sent_more_requests_at_once() {
    let env = Env::start().await;
    podero_credentials(&env).await;
    env.fakes.set_reply_delay(fake_providers::Endpoint::Podero, Duration::from_millis(200));
    let n = 40;
    for i in 0..n {
        let mut ts = podero(&env, &format!("quick{i}"), &format!("quick{i}-token"));
        ts["spec"]["renewal"] = json!({"shareIdenticalRequests": false});
        env.create(ts).await;
    }
    eventually("every TokenSource ready", Duration::from_secs(40), || async {
        let list = env.sources().list(&Default::default()).await.map_err(|e| e.to_string())?;
        let ready = list
            .items
            .iter()
            .filter(|ts| {
                let conditions = ts.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
                conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True")
            })
            .count();
        check(ready == n, (), format!("{ready} of {n} ready"))
    })
    .await;
    let limit = host_series(&env, "host_request_limit");
    let throttled = host_series(&env, "host_throttled_total");
    eprintln!("after {n} tokens at 200 ms each: limit {limit:?}, throttled {throttled:?}");
    assert!(limit.is_some_and(|l| l > 4.0), "the limit stayed at the floor: {limit:?}");
    assert_eq!(throttled, Some(0.0));
    assert_eq!(env.fakes.calls(fake_providers::Endpoint::Podero), n);
}

/// A host that says `Retry-After` is sent nothing until then, by any TokenSource, and the
/// TokenSources that waited for it are called back when the wait ends (not minutes later).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_holds_back_every_request_to_the_host_until_it_ends() {
    let env = Env::start().await;
    podero_credentials(&env).await;
    let throttled = json!({"error": "slow_down"});
    // 7 s: a TokenSource says Pending once it has waited 3 s, so it is seen waiting for 3 s or so.
    env.fakes.fail_next(fake_providers::Endpoint::Podero, 1, 429, throttled, Some(7));
    env.create(podero(&env, "first", "first-token")).await;
    eventually("the throttling answer", WAIT, || async {
        check(
            env.fakes.calls(fake_providers::Endpoint::Podero) == 1,
            (),
            env.fakes.calls(fake_providers::Endpoint::Podero),
        )
    })
    .await;
    let held_from = Instant::now();
    let mut other = podero(&env, "other", "other-token");
    other["spec"]["oauth2"]["scopes"] = json!(["other"]);
    env.create(other).await;
    env.wait_ready("other", "False", "Pending").await;
    let ready = eventually("the other TokenSource's token", WAIT, || async {
        let data = env.secret_data("other-token").await;
        check(data.is_some_and(|d| d.contains_key("token")), held_from.elapsed(), ())
    })
    .await;
    let times = env.fakes.call_times(fake_providers::Endpoint::Podero);
    let after_429: Vec<_> = times.iter().skip(1).map(|t| t.duration_since(times[0])).collect();
    eprintln!("requests after the 429: {after_429:?}; the other's token {ready:?} after it was created");
    assert!(after_429.iter().all(|d| *d >= Duration::from_millis(6900)), "{after_429:?}");
    assert!(ready < Duration::from_secs(11), "called back {ready:?} after, for a 7 s Retry-After");
    assert_eq!(host_series(&env, "host_throttled_total"), Some(1.0));
}

/// A tenant with many TokenSources on a shared host does not make another tenant wait behind all
/// of them: namespaces take turns at the host's request slots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_take_turns_at_a_busy_shared_host() {
    let Some(mut env) = Env::start_all_namespaces().await else { return };
    // A fixed two requests at a time, one second each: the busy tenant's 40 take twenty seconds.
    env.stop_operator().await;
    env.config.transport.per_host_floor = 2;
    env.config.transport.per_host_ceilings =
        std::sync::Arc::new(tokensource_operator::limit::Ceilings { default: 2, ..Default::default() });
    env.start_operator();
    podero_credentials(&env).await;
    env.fakes.set_reply_delay(fake_providers::Endpoint::Podero, Duration::from_secs(1));
    for i in 0..40 {
        let mut ts = podero(&env, &format!("many{i}"), &format!("many{i}-token"));
        ts["spec"]["renewal"] = json!({"shareIdenticalRequests": false});
        env.create(ts).await;
    }
    eventually("the busy tenant's requests under way", WAIT, || async {
        check(
            env.fakes.calls(fake_providers::Endpoint::Podero) >= 2,
            (),
            env.fakes.calls(fake_providers::Endpoint::Podero),
        )
    })
    .await;
    let other = env.namespace("tenant-b").await;
    let mut ts = podero(&env, "one", "one-token");
    ts["spec"]["oauth2"]["scopes"] = json!(["b"]);
    let created = create_in(&env, &other, ts).await;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(env.client.clone(), &other);
    eventually("the other tenant's token", Duration::from_secs(30), || async {
        let s = secrets.get_opt("one-token").await.ok().flatten();
        check(s.and_then(|s| s.data).is_some_and(|d| d.contains_key("token")), (), "no token yet")
    })
    .await;
    let took = created.elapsed();
    let calls: Vec<_> = env
        .fakes
        .call_times(fake_providers::Endpoint::Podero)
        .iter()
        .map(|t| {
            t.checked_duration_since(created).map_or(-(created.duration_since(*t).as_secs_f64()), |d| d.as_secs_f64())
        })
        .collect();
    eprintln!(
        "the other tenant's token {took:?} after its creation, behind 40 of the busy tenant's; requests at {calls:.2?}"
    );
    // Its turn comes at one of the next free slots (a busy TokenSource reconciled for another
    // reason may take a slot first): a few rounds of one second, not the twenty behind all of them.
    // Measured: 2–5 s; 18 s when waiters were served in the order they came.
    assert!(took < Duration::from_secs(10), "waited {took:?} behind the busy tenant");
}
