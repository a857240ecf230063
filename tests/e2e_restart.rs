//! Rollout restarts of the workloads that read a token only at start: not on the first token,
//! at most once per `minInterval` with new tokens folded into one restart at its end, and a clear
//! condition when the operator may not patch them.
#![cfg(test)]

mod common;

use std::time::Duration;

use common::{Env, WAIT, check, eventually, podero, podero_credentials};
use fake_providers::Endpoint;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

fn workload(kind: &str, name: &str, labels: Value) -> Value {
    json!({"metadata": {"name": name, "labels": labels}, "spec": {
        "selector": {"matchLabels": {"app": name}},
        "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "app", "image": "x",
            "env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "api-token", "key": "token"}}}]}]}},
        "serviceName": if kind == "StatefulSet" { json!(name) } else { Value::Null }
    }})
}

async fn restarted_at<K>(api: &Api<K>, name: &str) -> Option<String>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + serde::Serialize,
{
    let v = serde_json::to_value(api.get(name).await.ok()?).ok()?;
    v["spec"]["template"]["metadata"]["annotations"]["tokensource.dev/restartedAt"].as_str().map(String::from)
}

async fn setup(env: &Env) -> (Api<Deployment>, Api<StatefulSet>) {
    podero_credentials(env).await;
    let deployments: Api<Deployment> = Api::namespaced(env.client.clone(), &env.ns);
    let sets: Api<StatefulSet> = Api::namespaced(env.client.clone(), &env.ns);
    let pp = PostParams::default();
    deployments.create(&pp, &serde_json::from_value(workload("Deployment", "api", json!({}))).unwrap()).await.unwrap();
    for (name, tier) in [("db", "data"), ("cache", "data"), ("other", "web")] {
        let w = workload("StatefulSet", name, json!({"tier": tier}));
        sets.create(&pp, &serde_json::from_value(w).unwrap()).await.unwrap();
    }
    let mut ts = podero(env, "api", "api-token");
    ts["spec"]["target"]["rolloutRestart"] = json!({"minInterval": "10s", "workloads": [
        {"kind": "Deployment", "name": "api"},
        {"kind": "StatefulSet", "selector": {"matchLabels": {"tier": "data"}}}
    ]});
    env.create(ts).await;
    (deployments, sets)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_tokens_restart_the_workloads_at_most_once_per_interval() {
    let env = Env::start().await;
    env.grant("components/rollout-restart").await;
    env.fakes.set_lifetime(Endpoint::Podero, Duration::from_secs(6));
    let (deployments, sets) = setup(&env).await;
    let first = env.wait_token("api-token", None).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(restarted_at(&deployments, "api").await, None, "the first token restarts nothing");

    // The second token restarts them at once.
    env.wait_token("api-token", Some(&first)).await;
    let r1 = eventually("the first restart", WAIT, || async {
        let r = restarted_at(&deployments, "api").await;
        check(r.is_some(), r.clone().unwrap_or_default(), r)
    })
    .await;
    let r1_seen = tokio::time::Instant::now();
    // The workloads are patched one after the other: the StatefulSets follow the Deployment.
    eventually("the selected StatefulSets restarted with it", WAIT, || async {
        let (db, cache) = (restarted_at(&sets, "db").await, restarted_at(&sets, "cache").await);
        check(db.as_deref() == Some(r1.as_str()) && cache.as_deref() == Some(r1.as_str()), (), (db, cache))
    })
    .await;
    assert_eq!(restarted_at(&sets, "other").await, None, "not selected");
    let calls_at_r1 = env.fakes.calls(Endpoint::Podero);

    // Tokens inside the interval are folded into one restart at its end.
    let r2 = eventually("the second restart", WAIT, || async {
        let r = restarted_at(&deployments, "api").await;
        check(r.as_deref() != Some(r1.as_str()), r.clone().unwrap_or_default(), r)
    })
    .await;
    let gap = r2.parse::<jiff::Timestamp>().unwrap().duration_since(r1.parse().unwrap());
    let calls_at_r2 = env.fakes.calls(Endpoint::Podero);
    eprintln!(
        "restarts {r1} and {r2} ({gap:?} apart, seen {:?} apart); tokens {calls_at_r1} then {calls_at_r2}",
        r1_seen.elapsed()
    );
    assert!(gap >= jiff::SignedDuration::from_secs(10), "restarts only {gap:?} apart");
    assert!(calls_at_r2 > calls_at_r1, "a restart without a new token");
    let events = env.events("api").await;
    let restarts: Vec<_> = events.iter().filter(|e| e.1 == "RolloutRestarted").collect();
    assert!(!restarts.is_empty(), "{events:?}");
    assert!(
        restarts[0].2.contains("deployment/api")
            && restarts[0].2.contains("statefulset/cache")
            && restarts[0].2.contains("statefulset/db"),
        "{restarts:?}"
    );
    // Counted once every workload of the restart is patched (the test saw the first patch).
    eventually("two restarts counted", WAIT, || async {
        let m = env.metrics.encode();
        let line = m.lines().find(|l| l.starts_with("tokensource_rollout_restarts_total")).map(String::from);
        check(line.as_deref() == Some("tokensource_rollout_restarts_total 2"), (), line)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_the_operator_may_not_make_is_reported_and_retried() {
    let env = Env::start().await;
    env.fakes.set_lifetime(Endpoint::Podero, Duration::from_secs(6));
    // Without the rollout-restart RBAC: the real API server refuses the patch; kubesim, which
    // authorises everything, is made to.
    let sim = env.sim.as_ref().map(|sim| sim.faults().clone());
    if let Some(sim) = &sim {
        sim.fail_next(kubesim::Matcher::new("patch", "deployments"), u32::MAX, 403, None);
    }
    let (deployments, _) = setup(&env).await;
    let first = env.wait_token("api-token", None).await;
    env.wait_token("api-token", Some(&first)).await;
    let message = eventually("RolloutRestartBlocked", WAIT, || async {
        let s = env.status("api").await?;
        let c = s.conditions.iter().find(|c| c.type_ == "RolloutRestartBlocked").cloned();
        check(
            c.as_ref().is_some_and(|c| c.status == "True" && c.reason == "RolloutRestartFailed"),
            c.clone().map(|c| c.message),
            c,
        )
    })
    .await
    .unwrap_or_default();
    assert!(message.contains("deploy/components/rollout-restart"), "{message}");
    env.wait_ready("api", "True", "TokenValid").await;
    // Allowed now: the restart owed happens within the interval.
    match &sim {
        Some(sim) => sim.clear(),
        None => env.grant("components/rollout-restart").await,
    }
    eventually("the restart once allowed", Duration::from_secs(25), || async {
        let r = restarted_at(&deployments, "api").await;
        check(r.is_some(), (), r)
    })
    .await;
    eventually("the condition cleared", WAIT, || async {
        let s = env.status("api").await?;
        let c = s.conditions.iter().find(|c| c.type_ == "RolloutRestartBlocked").cloned();
        check(c.as_ref().is_some_and(|c| c.status == "False"), (), c)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consumer_audit_names_pods_that_never_see_a_renewed_token() {
    use k8s_openapi::api::core::v1::Pod;
    let mut env = Env::start().await;
    env.config.audit_consumers = true;
    env.grant("components/audit-consumers").await;
    env.restart_operator().await;
    podero_credentials(&env).await;
    env.create(podero(&env, "api", "api-token")).await;
    env.wait_token("api-token", None).await;
    let consumers_stale = || async {
        let s = env.status("api").await?;
        Ok::<_, String>(
            s.conditions.iter().find(|c| c.type_ == "ConsumersStale").map(|c| (c.status.clone(), c.message.clone())),
        )
    };
    eventually("ConsumersStale=False", WAIT, || async {
        let c = consumers_stale().await?;
        check(c.as_ref().is_some_and(|c| c.0 == "False"), (), c)
    })
    .await;

    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.ns);
    let pp = PostParams::default();
    let reader = json!({"metadata": {"name": "reader"}, "spec": {"containers": [{"name": "app", "image": "x",
        "env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "api-token", "key": "token"}}}]}]}});
    let mounter = json!({"metadata": {"name": "mounter"}, "spec": {
        "volumes": [{"name": "t", "secret": {"secretName": "api-token"}}],
        "containers": [{"name": "app", "image": "x", "volumeMounts": [{"name": "t", "mountPath": "/t"}]}]}});
    pods.create(&pp, &serde_json::from_value(reader).unwrap()).await.unwrap();
    pods.create(&pp, &serde_json::from_value(mounter).unwrap()).await.unwrap();
    let message = eventually("ConsumersStale=True", WAIT, || async {
        let c = consumers_stale().await?;
        check(c.as_ref().is_some_and(|c| c.0 == "True"), c.clone().map(|c| c.1).unwrap_or_default(), c)
    })
    .await;
    assert!(message.contains("pod/reader (app: env (read once at start))"), "{message}");
    assert!(!message.contains("mounter"), "a volume mount sees renewals: {message}");
    let warnings = eventually("one Warning Event for the Pod", WAIT, || async {
        let ev: Vec<_> = env.events("api").await.into_iter().filter(|e| e.1 == "StaleConsumers").collect();
        check(!ev.is_empty(), ev.clone(), ev)
    })
    .await;
    assert!(warnings.iter().all(|e| e.0 == "Warning" && e.2.contains("Pod reader")), "{warnings:?}");
    assert!(env.metrics.encode().contains("tokensource_audited_pods 2"));

    pods.delete("reader", &Default::default()).await.unwrap();
    eventually("ConsumersStale=False again", WAIT, || async {
        let c = consumers_stale().await?;
        check(c.as_ref().is_some_and(|c| c.0 == "False"), (), c)
    })
    .await;
}
