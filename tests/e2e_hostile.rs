//! End to end: hostile input from tenants and token endpoints. None of it may stop or stall the
//! operator for anyone else: each test ends by showing that an ordinary TokenSource still gets
//! its token from the same operator.

#![cfg(test)]

mod common;

use std::time::{Duration, Instant};

use common::{Env, WAIT, check, eventually, podero, podero_credentials};
use fake_providers::{Client as FakeClient, Endpoint};
use serde_json::{Value, json};

/// An ordinary TokenSource gets its token: the operator is alive and not stalled.
async fn still_serving(env: &Env, name: &str) {
    podero_credentials(env).await;
    env.create(podero(env, name, &format!("{name}-token"))).await;
    env.wait_token(&format!("{name}-token"), None).await;
}

fn with(mut doc: Value, path: &[&str], value: Value) -> Value {
    let mut cur = &mut doc;
    for p in &path[..path.len() - 1] {
        cur = &mut cur[*p];
    }
    cur[path[path.len() - 1]] = value;
    doc
}

/// Removes the CEL rules that bound durations, as a CRD from before them would lack them.
fn drop_duration_rules(v: &mut Value) {
    match v {
        Value::Object(m) => {
            if m.get("x-kubernetes-validations").is_some_and(|r| r.to_string().contains("duration(self)")) {
                m.remove("x-kubernetes-validations");
            }
            m.values_mut().for_each(drop_duration_rules);
        }
        Value::Array(a) => a.iter_mut().for_each(drop_duration_rules),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durations_past_a_year_are_refused_not_overflowed() {
    let env = Env::start().await;
    if env.needs_the_cluster_alone("it replaces the cluster-wide CRD with an older one, under every other test") {
        return;
    }
    podero_credentials(&env).await;
    // The CRD refuses these (tests/kubectl_api.rs); an older CRD without its duration rules
    // accepts them, and then the operator must refuse them itself.
    let mut crd = serde_json::to_value(tokensource_operator::crd::crd()).unwrap();
    drop_duration_rules(&mut crd);
    let crds: kube::Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        kube::Api::all(env.client.clone());
    crds.patch(
        "tokensources.tokensource.dev",
        &kube::api::PatchParams::apply("e2e").force(),
        &kube::api::Patch::Apply(&crd),
    )
    .await
    .unwrap();
    // Each passes the pattern (five digits a part); the operator refuses what is too long.
    for (name, path, value) in [
        ("renew", vec!["spec", "renewal"], json!({"renewBefore": "99999h99999h99999h99999h"})),
        ("lifetime", vec!["spec", "response"], json!({"expiry": {"type": "Auto", "defaultLifetime": "99999h"}})),
        ("timeout", vec!["spec", "timeout"], json!("99999h")),
    ] {
        env.create_under_new_crd(with(podero(&env, name, &format!("{name}-token")), &path, value)).await;
        let m = env.wait_ready(name, "False", "InvalidSpec").await;
        assert!(m.contains("longer than a year"), "{m}");
    }
    assert_eq!(env.fakes.calls(Endpoint::Podero), 0);
    still_serving(&env, "ordinary").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_of_thirty_thousand_years_is_capped() {
    let env = Env::start().await;
    podero_credentials(&env).await;
    env.fakes.fail_next(Endpoint::Podero, 1, 503, json!({"message": "come back later"}), Some(999_999_999_999));
    let before = jiff::Timestamp::now();
    env.create(podero(&env, "throttled", "throttled-token")).await;
    env.wait_ready("throttled", "False", "ProviderUnavailable").await;
    let next = env.status("throttled").await.unwrap().renewal_time.expect("a retry time").0;
    let wait = next.duration_since(before).as_secs();
    assert!((1..=302).contains(&wait), "the next attempt is {wait}s away, not more than five minutes");
    still_serving(&env, "ordinary").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_rejected_near_expiry_are_spaced_and_counted_once_and_expiry_shows() {
    let env = Env::start().await;
    env.fakes.set_lifetime(Endpoint::Podero, Duration::from_secs(8));
    podero_credentials(&env).await;
    env.create(podero(&env, "rotated", "rotated-token")).await;
    env.wait_token("rotated-token", None).await;
    // The provider rotates the client secret; the cluster still has the old one.
    env.fakes.set_podero_client(FakeClient { id: "podero-client".into(), secret: "rotated-elsewhere".into() });
    let m = eventually("the token to expire while renewals fail", WAIT, || async {
        let ready = env.ready("rotated").await.ok_or("no Ready condition")?;
        check(ready.1 == "Expired", ready.2.clone(), ready)
    })
    .await;
    assert!(m.contains("expired at"), "{m}");
    let status = env.status("rotated").await.unwrap();
    let degraded = status.conditions.iter().find(|c| c.type_ == "Degraded").unwrap();
    assert_eq!(degraded.reason, "ProviderRejected", "Degraded says why the token ran out");
    let times = env.fakes.call_times(Endpoint::Podero);
    assert!(times.len() >= 2, "{} calls", times.len());
    for pair in times.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(gap >= Duration::from_millis(900), "two attempts {gap:?} apart");
    }
    assert!(times.len() <= 6, "{} calls for one 8-second token", times.len());
    // Every failed attempt counts once.
    eventually("the count of failed attempts", WAIT, || async {
        let st = env.status("rotated").await?;
        let failed = env.fakes.calls(Endpoint::Podero) - 1;
        check(st.failed_renewal_attempts as usize == failed, (), (st.failed_renewal_attempts, failed))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_second_token_is_renewed_every_five_seconds_at_most() {
    let env = Env::start().await;
    env.fakes.set_lifetime(Endpoint::Podero, Duration::from_secs(1));
    podero_credentials(&env).await;
    env.create(podero(&env, "flicker", "flicker-token")).await;
    eventually("three tokens", Duration::from_secs(30), || async {
        let n = env.fakes.calls(Endpoint::Podero);
        check(n >= 3, (), n)
    })
    .await;
    // Five seconds from the token's issue time, which status and the Secret give in whole
    // seconds: the requests themselves are at least four seconds apart.
    let times = env.fakes.call_times(Endpoint::Podero);
    for pair in times.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(gap >= Duration::from_millis(3900), "renewals {gap:?} apart");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_without_bound_is_refused_with_a_reason_naming_the_limit() {
    let env = Env::start().await;
    podero_credentials(&env).await;
    // A template that would build 100 MB, and a query whose cost multiplies.
    let mut template = podero(&env, "template", "template-token");
    template["spec"]["target"]["template"] = json!({"data": {"big": "{{ 'a' * 100000000 }}"}});
    env.create(template).await;
    let m = env.wait_ready("template", "False", "InvalidSpec").await;
    assert!(m.contains("repetition"), "{m}");
    let mut query = podero(&env, "query", "query-token");
    query["spec"]["response"] = json!({"token": {"jsonPath": "$..*..*..access_token"}});
    env.create(query).await;
    let m = env.wait_ready("query", "False", "InvalidSpec").await;
    assert!(m.contains("descendant segment"), "{m}");
    assert_eq!(env.fakes.calls(Endpoint::Podero), 0, "refused before any request");

    // A reply whose copied fields would overflow the Secret.
    let big = "x".repeat(600_000);
    env.fakes.fail_next(Endpoint::Podero, 1, 200, json!({"access_token": "t", "expires_in": 3600, "big": big}), None);
    let mut copies = podero(&env, "copies", "copies-token");
    copies["spec"]["response"] =
        json!({"fields": [{"key": "a", "jsonPath": "$.big"}, {"key": "b", "jsonPath": "$.big"}]});
    env.create(copies).await;
    let m = env.wait_ready("copies", "False", "LimitExceeded").await;
    assert!(m.contains("1048576 bytes"), "{m}");
    assert!(env.secret_data("copies-token").await.is_none());

    // A reply with thousands of fields and no token: the error stays short.
    let wide: serde_json::Map<String, Value> =
        (0..5000).map(|i| (format!("field-{i}"), json!("v".repeat(100)))).collect();
    env.fakes.fail_next(Endpoint::Podero, 1, 200, Value::Object(wide), None);
    env.create(podero(&env, "wide", "wide-token")).await;
    let m = env.wait_ready("wide", "False", "BadProviderResponse").await;
    assert!(m.len() < 600 && m.contains("and 4990 more"), "{} bytes: {m}", m.len());
    let events = env.events("wide").await;
    assert!(events.iter().all(|(_, _, note)| note.len() <= 1024), "{events:?}");
    still_serving(&env, "ordinary").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_host_delays_only_its_own_tokensources() {
    let env = Env::start().await;
    // An endpoint that accepts connections and never answers (the operator's request timeout is
    // 30 s, longer than this test waits for the healthy token).
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/token", hung.local_addr().unwrap());
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    let held = tokio::spawn(async move {
        let mut open = vec![];
        while let Ok((socket, _)) = hung.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            open.push(socket);
        }
    });
    for i in 0..20 {
        env.create(json!({
            "metadata": {"name": format!("hung-{i}")},
            // Twenty different requests (identical ones would share one request in flight).
            "spec": {"type": "HTTP", "http": {"url": format!("{url}?n={i}")}, "target": {"name": format!("hung-{i}-token")}}
        }))
        .await;
    }
    // The hung host holds all its request slots (four) before the healthy TokenSource exists;
    // sixteen more TokenSources want one.
    eventually("the hung host's request slots to fill", WAIT, || async {
        let n = accepted.load(std::sync::atomic::Ordering::Relaxed);
        check(n >= 4, (), n)
    })
    .await;
    let started = Instant::now();
    still_serving(&env, "healthy").await;
    eprintln!("the healthy TokenSource got its token {:?} after it was created", started.elapsed());
    held.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_errors_are_counted_and_survived() {
    let env = Env::start().await;
    let Some(sim) = env.sim.as_ref() else {
        eprintln!(
            "watch_errors_are_counted_and_survived needs kubesim's fault injection; skipped against a real cluster"
        );
        return;
    };
    // The watches of Secrets end and their next attempts are refused, as a missing permission is.
    sim.faults().fail_next(kubesim::Matcher::new("watch", "secrets"), 3, 403, None);
    sim.faults().fail_next(kubesim::Matcher::new("list", "secrets"), 3, 403, None);
    sim.faults().end_watches();
    let errors = eventually("watch errors to be counted", WAIT, || async {
        let text = env.metrics.encode();
        let n: u64 = text
            .lines()
            .filter(|l| l.starts_with("tokensource_watch_errors_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        check(n > 0, n, text.lines().filter(|l| l.contains("watch_errors")).collect::<Vec<_>>())
    })
    .await;
    eprintln!("{errors} watch errors counted");
    still_serving(&env, "after-errors").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_echoed_as_a_long_field_name_is_not_shown_in_part() {
    let env = Env::start().await;
    // Longer than the 40 characters of a name errors used to show; short enough to show whole.
    let secret = format!("s3cr3t-{}", "0123456789abcdef".repeat(3));
    env.fakes.set_podero_client(FakeClient { id: "podero-client".into(), secret: secret.clone() });
    podero_credentials(&env).await;
    // The endpoint answers with the client secret as a field name, and no token.
    env.fakes.fail_next(Endpoint::Podero, 1, 200, json!({ secret.as_str(): true, "expires_in": 60 }), None);
    env.create(podero(&env, "echo", "echo-token")).await;
    let m = env.wait_ready("echo", "False", "BadProviderResponse").await;
    assert!(m.contains("reply fields: expires_in, [redacted]"), "{m}");
    env.assert_nothing_leaks(&[&secret, &secret[..40], &secret[..20], &secret[20..]], &[]).await;
    still_serving(&env, "ordinary").await;
}
