//! Bad input never stops renewals, and a change reported done is done: annotations a tenant
//! types wrong, values too long for the status, manual refreshes in a loop.

#![cfg(test)]

mod common;

use std::time::Duration;

use common::{Env, WAIT, check, eventually, podero, podero_credentials};
use fake_providers::Endpoint;
use kube::api::{Patch, PatchParams};
use serde_json::json;

async fn annotate(env: &Env, name: &str, value: &str) {
    let patch = json!({"metadata": {"annotations": {"tokensource.dev/refresh-requested-at": value}}});
    env.sources().patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
}

/// Every 200ms until `for_`, the longest time `name` said Ready=True past its expirationTime.
async fn longest_ready_past_expiry(env: &Env, name: &str, for_: Duration) -> Duration {
    let until = tokio::time::Instant::now() + for_;
    let mut worst = Duration::ZERO;
    while tokio::time::Instant::now() < until {
        if let Ok(st) = env.status(name).await {
            let ready = st.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True");
            if let (true, Some(exp)) = (ready, st.expiration_time) {
                let past = jiff::Timestamp::now().duration_since(exp.0);
                worst = worst.max(Duration::try_from(past).unwrap_or_default());
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    worst
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_refresh_annotation_costs_a_warning_never_the_token() {
    let env = Env::start().await;
    env.fakes.set_lifetime(Endpoint::Podero, Duration::from_secs(8));
    podero_credentials(&env).await;
    env.create(podero(&env, "typo", "typo-token")).await;
    let first = env.wait_token("typo-token", None).await;
    annotate(&env, "typo", &"not-a-time-".repeat(8)).await;
    // Renewals go on: two more tokens within two lifetimes, none of them late.
    let worst = longest_ready_past_expiry(&env, "typo", Duration::from_secs(14)).await;
    let calls = env.fakes.calls(Endpoint::Podero);
    let status = env.status("typo").await.unwrap();
    eprintln!("invalid annotation: {calls} provider calls in 14s after it; longest Ready=True past expiry {worst:?}");
    assert!(calls >= 3, "renewals stopped after the annotation: {calls} calls");
    assert!(env.fakes.is_valid(&env.wait_token("typo-token", Some(&first)).await));
    assert!(worst <= Duration::from_secs(1), "Ready=True {worst:?} past expiry");
    let recorded = status.last_refresh_request.unwrap_or_default();
    assert!(recorded.starts_with("sha256:"), "the value is recorded within the field: {recorded}");
    let events = env.events("typo").await;
    let warnings: Vec<_> = events.iter().filter(|e| e.0 == "Warning" && e.1 == "RefreshRequestInvalid").collect();
    assert_eq!(warnings.len(), 1, "{events:?}");
    assert!(warnings[0].2.contains("not an RFC 3339 time"), "{warnings:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_refresh_annotation_that_parses_asks_once() {
    let env = Env::start().await;
    podero_credentials(&env).await;
    env.create(podero(&env, "long", "long-token")).await;
    let first = env.wait_token("long-token", None).await;
    // RFC 9557 allows a time zone and calendar suffix: more than the status field's 64 characters.
    let now = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.9f");
    let value = [
        format!("{now}-03:00[America/Argentina/Buenos_Aires][u-ca=gregory]"),
        format!("{now}-03:00[America/Argentina/Buenos_Aires]"),
        format!("{now}+00:00[u-ca=gregory][x-vendor-annotation=some-long-value]"),
    ]
    .into_iter()
    .find(|v| v.len() > 64 && v.parse::<jiff::Timestamp>().is_ok())
    .expect("an RFC 9557 time over 64 characters that parses");
    annotate(&env, "long", &value).await;
    env.wait_token("long-token", Some(&first)).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(env.fakes.calls(Endpoint::Podero), 2, "one request for the value, not one per reconcile");
    let st = env.status("long").await.unwrap();
    assert!(st.last_refresh_request.is_some_and(|r| r.starts_with("sha256:")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_refreshes_in_a_loop_make_one_request_per_renewal_floor() {
    let env = Env::start().await;
    podero_credentials(&env).await;
    env.create(podero(&env, "loop", "loop-token")).await;
    env.wait_token("loop-token", None).await;
    let started = tokio::time::Instant::now();
    let mut n = 0;
    while started.elapsed() < Duration::from_secs(10) {
        annotate(&env, "loop", &jiff::Timestamp::now().to_string()).await;
        n += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let calls = env.fakes.calls(Endpoint::Podero) - 1;
    eprintln!("{n} refresh requests in 10s: {calls} provider calls");
    assert!((1..=3).contains(&calls), "{calls} provider calls for {n} requests in 10s");
    eventually("the last request handled", WAIT, || async {
        let st = env.status("loop").await?;
        let src = env.source("loop").await;
        check(st.last_refresh_request.as_deref() == src.refresh_requested(), (), st.last_refresh_request)
    })
    .await;
}

/// A backoff the status records holds for the generation that failed only: after a restart (no
/// failure remembered in memory), a spec fixed meanwhile is tried at once, not when the backoff
/// the provider asked for ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spec_fixed_during_a_backoff_is_tried_at_once_after_a_restart() {
    let mut env = Env::start().await;
    podero_credentials(&env).await;
    env.fakes.fail_next(Endpoint::Podero, 1, 503, json!({"error": "temporarily_unavailable"}), Some(60));
    env.create(podero(&env, "api", "api-token")).await;
    let retry_at = eventually("the failure and its backoff in status", WAIT, || async {
        let status = env.status("api").await?;
        let retry = status.renewal_time.clone().map(|t| t.0);
        check(status.failed_renewal_attempts >= 1 && retry.is_some(), retry, status)
    })
    .await
    .unwrap();
    env.stop_operator().await;
    // The fix, while no operator runs: a new generation of the spec.
    let fix = json!({"spec": {"timeout": "25s"}});
    env.sources().patch("api", &PatchParams::default(), &Patch::Merge(&fix)).await.unwrap();
    let started = std::time::Instant::now();
    env.start_operator();
    env.wait_token("api-token", None).await;
    let took = started.elapsed();
    eprintln!("token {took:?} after the restart; the backoff ran until {retry_at}");
    assert!(took < Duration::from_secs(10), "the fixed spec waited for the backoff: {took:?}");
    assert_eq!(env.fakes.calls(Endpoint::Podero), 2);
}

/// A key another writer adds beside the operator's in the target Secret is no edit of what the
/// operator wrote: no restore is reported, and a restart reads the token back instead of minting
/// one (a chained TokenSource reading it would otherwise find no upstream token).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_another_writer_adds_leaves_the_secret_intact() {
    let mut env = Env::start().await;
    podero_credentials(&env).await;
    env.create(podero(&env, "api", "api-token")).await;
    let token = env.wait_token("api-token", None).await;
    let extra =
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "api-token"}, "data": {"ca.crt": "cGVt"}});
    env.secrets().patch("api-token", &PatchParams::apply("someone-else"), &Patch::Apply(&extra)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let restored: Vec<_> = env.events("api").await.into_iter().filter(|e| e.1 == "SecretRestored").collect();
    assert!(restored.is_empty(), "another writer's key reported as an edit: {restored:?}");
    env.restart_operator().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(env.fakes.calls(Endpoint::Podero), 1, "the restart minted a token");
    let data = env.secret_data("api-token").await.unwrap();
    assert_eq!(data.get("token"), Some(&token));
    assert_eq!(data.get("ca.crt").map(String::as_str), Some("pem"), "the other writer's key stays");
}

/// Case 1 of the reconcile-correctness issue: an owner policy or template edit needs no token.
/// Made while every renewal fails, it is in the Secret all the same (over the token it holds),
/// so deleting the TokenSource keeps the Secret the user asked to keep.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_policy_and_template_edits_are_applied_while_renewals_fail() {
    let env = Env::start().await;
    podero_credentials(&env).await;
    let mut ts = podero(&env, "api", "api-token");
    ts["spec"]["target"]["template"] =
        json!({"metadata": {"labels": {"team": "payments"}}, "data": {"header": "Bearer {{ token }}"}});
    env.create(ts).await;
    let token = env.wait_token("api-token", None).await;
    let secret = env.secrets().get("api-token").await.unwrap();
    assert_eq!(secret.metadata.owner_references.as_ref().map(Vec::len), Some(1));
    // From now on the provider refuses; the edit also changes the request, so a new token is due.
    env.fakes.fail_next(Endpoint::Podero, 1000, 503, json!({"error": "temporarily_unavailable"}), Some(60));
    let edit = json!({"spec": {
        "oauth2": {"headers": [{"name": "Cache-Control", "value": "no-store"}]},
        "target": {"creationPolicy": "Orphan", "template": null}
    }});
    let edited = env.sources().patch("api", &PatchParams::default(), &Patch::Merge(&edit)).await.unwrap();
    let generation = edited.metadata.generation;
    eventually("the failed renewal of the edited spec in status", WAIT, || async {
        let status = env.status("api").await?;
        check(status.failed_renewal_attempts >= 1 && status.observed_generation == generation, (), status)
    })
    .await;
    let secret = env.secrets().get("api-token").await.unwrap();
    let labels = secret.metadata.labels.clone().unwrap_or_default();
    let data = env.secret_data("api-token").await.unwrap();
    assert!(secret.metadata.owner_references.as_ref().is_none_or(Vec::is_empty), "{:?}", secret.metadata);
    assert!(!labels.contains_key("team"), "a removed template label stays: {labels:?}");
    assert!(!data.contains_key("header"), "a removed template key stays: {:?}", data.keys());
    assert_eq!(data.get("token"), Some(&token), "the token in the Secret is the one it had");

    env.sources().delete("api", &Default::default()).await.unwrap();
    // The garbage collector of a real API server acts within a moment; kubesim's at once.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(env.secret_data("api-token").await.is_some(), "the Secret to keep was deleted with its TokenSource");
}

/// Case 1 again, where the token cannot be rendered again: a `Replace` template after a
/// restart (the token is neither held nor readable from the Secret). The template waits for the
/// next token, but `creationPolicy: Orphan` needs none: the owner reference goes at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphan_is_applied_while_renewals_fail_even_when_the_token_cannot_be_rendered_again() {
    let mut env = Env::start().await;
    podero_credentials(&env).await;
    let mut ts = podero(&env, "api", "api-token");
    ts["spec"]["target"]["template"] =
        json!({"mergePolicy": "Replace", "data": {"Authorization": "Bearer {{ token }}"}});
    env.create(ts).await;
    env.wait_ready("api", "True", "TokenValid").await;
    let before = env.secret_data("api-token").await.unwrap();
    env.restart_operator().await;
    env.fakes.fail_next(Endpoint::Podero, 1000, 503, json!({"error": "temporarily_unavailable"}), Some(60));
    let edit = json!({"spec": {
        "oauth2": {"headers": [{"name": "Cache-Control", "value": "no-store"}]},
        "target": {"creationPolicy": "Orphan"}
    }});
    env.sources().patch("api", &PatchParams::default(), &Patch::Merge(&edit)).await.unwrap();
    eventually("the failed renewal of the edited spec in status", WAIT, || async {
        let status = env.status("api").await?;
        check(status.failed_renewal_attempts >= 1, (), status)
    })
    .await;
    let owners = || async {
        let secret = env.secrets().get("api-token").await.map_err(|e| e.to_string())?;
        let claim = kube::ResourceExt::annotations(&secret).get("tokensource.dev/owner-uid").cloned();
        let owners: Vec<String> = kube::ResourceExt::owner_references(&secret).iter().map(|r| r.name.clone()).collect();
        Ok::<_, String>((owners, claim))
    };
    let uid = env.sources().get("api").await.unwrap().metadata.uid;
    let policy = |p: &str| json!({"spec": {"target": {"creationPolicy": p}}});
    eventually("the owner reference gone", WAIT, || async {
        let (owners, claim) = owners().await?;
        check(owners.is_empty() && claim == uid, (), (owners, claim))
    })
    .await;
    assert_eq!(env.secret_data("api-token").await.unwrap(), before, "the Secret's token is the one it had");
    // Back to Owner before any token could be rendered: the reference comes back the same way.
    env.sources().patch("api", &PatchParams::default(), &Patch::Merge(&policy("Owner"))).await.unwrap();
    eventually("the owner reference back", WAIT, || async {
        let (owners, claim) = owners().await?;
        check(owners == ["api"] && claim == uid, (), (owners, claim))
    })
    .await;
    env.sources().patch("api", &PatchParams::default(), &Patch::Merge(&policy("Orphan"))).await.unwrap();
    eventually("the owner reference gone again", WAIT, || async {
        let (owners, _) = owners().await?;
        check(owners.is_empty(), (), owners)
    })
    .await;
    assert_eq!(env.secret_data("api-token").await.unwrap(), before, "the Secret's token is the one it had");
    env.sources().delete("api", &Default::default()).await.unwrap();
    // The garbage collector of a real API server acts within a moment; kubesim's at once.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(env.secret_data("api-token").await.is_some(), "the Secret to keep was deleted with its TokenSource");
}

/// Case 6 of the reconcile-correctness issue: a restart mints nothing for a `Replace` template
/// or one that reads the provider's reply, though neither Secret holds the token where it can be
/// read back: what the Secret records of its token (written for today's request, intact, expiry)
/// is enough to keep it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mints_nothing_for_replace_and_reply_templates() {
    let mut env = Env::start().await;
    podero_credentials(&env).await;
    let mut replace = podero(&env, "replace", "replace-token");
    replace["spec"]["target"]["template"] =
        json!({"mergePolicy": "Replace", "data": {"Authorization": "Bearer {{ token }}"}});
    let mut reply = podero(&env, "reply", "reply-token");
    reply["spec"]["target"]["template"] = json!({"data": {"kind": "{{ response.token_type }}"}});
    for (name, ts) in [("replace", replace), ("reply", reply)] {
        let mut ts = ts;
        ts["spec"]["renewal"] = json!({"shareIdenticalRequests": false});
        env.create(ts).await;
        env.wait_ready(name, "True", "TokenValid").await;
    }
    let before = (env.secret_data("replace-token").await.unwrap(), env.secret_data("reply-token").await.unwrap());
    assert_eq!(env.fakes.calls(Endpoint::Podero), 2);
    env.restart_operator().await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(env.fakes.calls(Endpoint::Podero), 2, "the restart minted tokens");
    let after = (env.secret_data("replace-token").await.unwrap(), env.secret_data("reply-token").await.unwrap());
    assert_eq!(before, after);
    for name in ["replace", "reply"] {
        env.wait_ready(name, "True", "TokenValid").await;
    }
}

/// Case 5 of the reconcile-correctness issue: ConfigMaps are not watched, so a TokenSource whose
/// ConfigMap appears after it looks again after a while, not waiting for an event that never
/// comes, and without counting a failure per look.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_map_created_after_its_tokensource_is_found() {
    let env = Env::start().await;
    podero_credentials(&env).await;
    let mut ts = podero(&env, "api", "api-token");
    ts["spec"]["oauth2"]["clientID"] =
        json!({"valueFrom": {"configMapKeyRef": {"name": "podero-settings", "key": "client_id"}}});
    let writes_before = env.metrics.status_writes.get();
    env.create(ts).await;
    let m = env.wait_ready("api", "False", "CredentialsNotFound").await;
    assert!(m.contains("podero-settings"), "{m}");
    // One failure, not one per reconcile, and when it is looked at again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let status = env.status("api").await.unwrap();
    assert_eq!(status.failed_renewal_attempts, 1, "{status:?}");
    assert!(status.renewal_time.is_some(), "{status:?}");
    // And the status settles: waiting writes it once (each write is an event that reconciles
    // again: a status that differed every time would write until two happened to agree).
    let (writes, reconciles) = (env.metrics.status_writes.get() - writes_before, env.reconciles("CredentialsNotFound"));
    eprintln!("the first 3 s of waiting for the ConfigMap: {writes} status writes, {reconciles} reconciles");
    assert!(writes <= 2 && reconciles <= 3, "{writes} status writes and {reconciles} reconciles in 3 s");
    let cm: k8s_openapi::api::core::v1::ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "podero-settings"},
        "data": {"client_id": env.fakes.config().podero.id}
    }))
    .unwrap();
    let api: kube::Api<k8s_openapi::api::core::v1::ConfigMap> = kube::Api::namespaced(env.client.clone(), &env.ns);
    api.create(&Default::default(), &cm).await.unwrap();
    let started = std::time::Instant::now();
    // Looked at again within 15–30 s of the failure.
    eventually("a token once the ConfigMap exists", Duration::from_secs(40), || async {
        let data = env.secret_data("api-token").await;
        check(data.as_ref().is_some_and(|d| d.contains_key("token")), (), data.map(|d| d.len()))
    })
    .await;
    eprintln!("token {:?} after the ConfigMap was created", started.elapsed());
    env.wait_ready("api", "True", "TokenValid").await;
    assert_eq!(env.fakes.calls(Endpoint::Podero), 1);
}

/// A Secret write the API server keeps refusing (an admission policy, a quota) is tried again
/// after a backoff, not on every reconcile: each refusal is a status write, which is an event
/// that would reconcile, and write, again at the API's speed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_write_refused_for_good_is_retried_after_a_backoff_not_in_a_loop() {
    let env = Env::start().await;
    let Some(sim) = env.sim.as_ref() else {
        env.kubesim_only("the API server must refuse the Secret's writes");
        return;
    };
    podero_credentials(&env).await;
    env.create(podero(&env, "api", "api-token")).await;
    env.wait_token("api-token", None).await;
    env.wait_ready("api", "True", "TokenValid").await;
    let refused = kubesim::Matcher::new("patch", "secrets").named(&env.ns, "api-token");
    sim.faults().fail_next(refused, 1000, 422, None);
    let before = sim.faults().count("patch", "secrets");
    // Today's template needs a write of the token in hand, which is refused.
    let patch = json!({"spec": {"target": {"template": {"metadata": {"labels": {"team": "payments"}}}}}});
    env.sources().patch("api", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    env.wait_ready("api", "True", "TokenValid").await;
    eventually("the refusal in Degraded", WAIT, || async {
        let st = env.status("api").await?;
        let degraded = st.conditions.iter().find(|c| c.type_ == "Degraded").map(|c| c.status.clone());
        check(degraded.as_deref() == Some("True"), (), degraded)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let writes = sim.faults().count("patch", "secrets") - before;
    let status = env.status("api").await.unwrap();
    eprintln!("6 s after a refused write: {writes} Secret writes, {} failures", status.failed_renewal_attempts);
    // 2 s, 4 s, 8 s between attempts: four at most in the first 7 s.
    assert!(writes <= 4, "{writes} Secret writes in 7 s");
    assert_eq!(env.fakes.calls(Endpoint::Podero), 1, "no token was fetched to write");
    // Once the API server takes it, the label arrives without a new token.
    sim.faults().clear();
    eventually("the label in the Secret", Duration::from_secs(30), || async {
        let s = env.secrets().get("api-token").await.map_err(|e| e.to_string())?;
        let label = s.metadata.labels.unwrap_or_default().get("team").cloned();
        check(label.as_deref() == Some("payments"), (), label)
    })
    .await;
    env.wait_ready("api", "True", "TokenValid").await;
    assert_eq!(env.fakes.calls(Endpoint::Podero), 1);
}

/// A manual refresh the provider failed is still owed after its backoff, even when the Secret
/// was deleted meanwhile and got the token in hand back: that write is no new token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_manual_refresh_is_still_owed_after_the_secret_got_its_token_back() {
    failed_manual_refresh_is_still_owed(&Env::start().await, false).await;
}

/// The same, when the write-back of the token in hand is itself refused once: that failure
/// does not make the operator forget the token it still owes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_manual_refresh_is_still_owed_after_its_write_back_failed_once() {
    let env = Env::start().await;
    if env.sim.is_none() {
        env.kubesim_only("the API server must refuse one Secret write");
        return;
    }
    failed_manual_refresh_is_still_owed(&env, true).await;
}

async fn failed_manual_refresh_is_still_owed(env: &Env, fail_write_back: bool) {
    podero_credentials(env).await;
    env.create(podero(env, "api", "api-token")).await;
    let first = env.wait_token("api-token", None).await;
    env.wait_ready("api", "True", "TokenValid").await;
    // Past the renewal floor, so the refresh is made at once.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let unavailable = json!({"error": "temporarily_unavailable"});
    env.fakes.fail_next(Endpoint::Podero, 1, 503, unavailable, Some(8));
    annotate(env, "api", &jiff::Timestamp::now().to_string()).await;
    eventually("the refresh's failure in Degraded", WAIT, || async {
        let st = env.status("api").await?;
        let degraded =
            st.conditions.iter().find(|c| c.type_ == "Degraded").map(|c| (c.status.clone(), c.reason.clone()));
        check(degraded.as_ref().is_some_and(|(s, r)| s == "True" && r == "ProviderUnavailable"), (), degraded)
    })
    .await;
    assert_eq!(env.fakes.calls(Endpoint::Podero), 2);
    if let (true, Some(sim)) = (fail_write_back, env.sim.as_ref()) {
        let write = kubesim::Matcher::new("patch", "secrets").named(&env.ns, "api-token");
        sim.faults().fail_next(write, 1, 500, None);
    }
    env.secrets().delete("api-token", &Default::default()).await.unwrap();
    let restored = env.wait_token("api-token", None).await;
    assert_eq!(restored, first, "the token in hand came back at once, without a request");
    // Retry-After: 8 s; then the refresh is made.
    let renewed = eventually("the requested token", Duration::from_secs(30), || async {
        let data = env.secret_data("api-token").await.unwrap_or_default();
        let token = data.get("token").cloned().unwrap_or_default();
        check(!token.is_empty() && token != first, token.clone(), env.fakes.calls(Endpoint::Podero))
    })
    .await;
    assert!(env.fakes.is_valid(&renewed));
    assert_eq!(env.fakes.calls(Endpoint::Podero), 3);
    let at = env.fakes.call_times(Endpoint::Podero);
    let waited = at[2].duration_since(at[1]);
    assert!(waited >= Duration::from_millis(7900), "the provider's Retry-After (8 s) was kept: {waited:?}");
}

/// A Secret deleted while its renewal is in flight gets the token in hand back, and the new
/// token, arriving in the same reconcile, is written over that Secret: not refused as someone
/// else's because the reconcile still knew the deleted one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_arriving_after_a_write_back_is_written_over_the_secret_written_back() {
    let env = Env::start().await;
    let Some(sim) = env.sim.as_ref() else {
        env.kubesim_only("the API server must be slow to write one Secret");
        return;
    };
    env.fakes.set_lifetime(Endpoint::Podero, Duration::from_secs(8));
    podero_credentials(&env).await;
    env.create(podero(&env, "api", "api-token")).await;
    let first = env.wait_token("api-token", None).await;
    // The renewal is in flight for 2 s; the write-back of the Secret takes 3 s, so the renewal
    // has ended by the time the write-back has.
    env.fakes.set_reply_delay(Endpoint::Podero, Duration::from_secs(2));
    eventually("the renewal in flight", WAIT, || async {
        check(env.fakes.calls(Endpoint::Podero) >= 2, (), env.fakes.calls(Endpoint::Podero))
    })
    .await;
    let slow = kubesim::Matcher::new("patch", "secrets").named(&env.ns, "api-token");
    sim.faults().add_latency(slow, Duration::from_secs(3));
    env.secrets().delete("api-token", &Default::default()).await.unwrap();
    let renewed = env.wait_token("api-token", Some(&first)).await;
    assert!(env.fakes.is_valid(&renewed));
    sim.faults().clear();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let events = env.events("api").await;
    let conflicts: Vec<_> = events.iter().filter(|(_, reason, _)| reason == "SecretConflict").collect();
    assert!(conflicts.is_empty(), "{conflicts:?}");
    env.wait_ready("api", "True", "TokenValid").await;
}

/// An owner reference the operator's apply does not own (added by another write: a tenant's
/// patch, or the operator's own owner-reference patch) is removed on its own under `Orphan`:
/// the apply of the token could not remove it, and was tried again every second while no
/// renewal was made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_reference_added_by_another_write_is_removed_and_renewals_go_on() {
    let env = Env::start().await;
    podero_credentials(&env).await;
    let mut ts = podero(&env, "api", "api-token");
    ts["spec"]["target"]["creationPolicy"] = json!("Orphan");
    env.create(ts).await;
    let first = env.wait_token("api-token", None).await;
    env.wait_ready("api", "True", "TokenValid").await;
    let uid = env.sources().get("api").await.unwrap().metadata.uid;
    let reference = json!({"metadata": {"ownerReferences": [{
        "apiVersion": "tokensource.dev/v1alpha1", "kind": "TokenSource", "name": "api", "uid": uid}]}});
    env.secrets().patch("api-token", &PatchParams::default(), &Patch::Merge(&reference)).await.unwrap();
    // Past the renewal floor, so the refresh is made at once.
    tokio::time::sleep(Duration::from_secs(5)).await;
    annotate(&env, "api", &jiff::Timestamp::now().to_string()).await;
    let renewed = env.wait_token("api-token", Some(&first)).await;
    assert!(env.fakes.is_valid(&renewed));
    eventually("no owner reference", WAIT, || async {
        let secret = env.secrets().get("api-token").await.map_err(|e| e.to_string())?;
        let owners = secret.metadata.owner_references.unwrap_or_default();
        check(owners.is_empty(), (), owners)
    })
    .await;
    assert_eq!(env.fakes.calls(Endpoint::Podero), 2);
}

/// A token fetched after the provider failed, whose write the API server refuses once, is
/// written on the next try: the provider owes nothing any more, so no other token is fetched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_whose_write_was_refused_is_written_not_fetched_again() {
    let env = Env::start().await;
    let Some(sim) = env.sim.as_ref() else {
        env.kubesim_only("the API server must refuse one Secret write");
        return;
    };
    podero_credentials(&env).await;
    env.create(podero(&env, "api", "api-token")).await;
    let first = env.wait_token("api-token", None).await;
    env.wait_ready("api", "True", "TokenValid").await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    env.fakes.fail_next(Endpoint::Podero, 1, 503, json!({"error": "temporarily_unavailable"}), Some(2));
    annotate(&env, "api", &jiff::Timestamp::now().to_string()).await;
    eventually("the refresh's failure", WAIT, || async {
        let st = env.status("api").await?;
        check(st.failed_renewal_attempts >= 1, (), st.failed_renewal_attempts)
    })
    .await;
    // The retry's token: its first write is refused.
    let write = kubesim::Matcher::new("patch", "secrets").named(&env.ns, "api-token");
    sim.faults().fail_next(write, 1, 500, None);
    let renewed = env.wait_token("api-token", Some(&first)).await;
    assert!(env.fakes.is_valid(&renewed));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(env.fakes.calls(Endpoint::Podero), 3, "the token whose write was refused was fetched again");
    assert_eq!(env.secret_data("api-token").await.unwrap_or_default().get("token"), Some(&renewed));
}
