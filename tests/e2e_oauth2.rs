//! End to end: OAuth 2.0 client credentials against the Podero and Interswitch fakes.

#![cfg(test)]

mod common;

use std::time::Duration;

use common::{Env, WAIT, check, eventually, podero, podero_credentials};
use fake_providers::{Client as FakeClient, Endpoint};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podero_token_lands_in_the_secret_with_status_and_event() {
    let env = Env::start().await;
    podero_credentials(&env).await;
    env.create(podero(&env, "podero", "podero-token")).await;
    let token = env.wait_token("podero-token", None).await;
    assert!(env.fakes.is_valid(&token), "the Secret holds the token the provider issued");
    let data = env.secret_data("podero-token").await.unwrap_or_default();
    assert_eq!(data.get("token_type").map(String::as_str), Some("Bearer"));
    assert_eq!(data.get("scope").map(String::as_str), Some("read write"));
    let expires: jiff::Timestamp =
        data.get("expires_at").and_then(|e| e.parse().ok()).unwrap_or_else(|| panic!("expires_at missing: {data:?}"));
    let lifetime = expires.duration_since(jiff::Timestamp::now()).as_secs();
    assert!((3500..=3600).contains(&lifetime), "expires_at follows expires_in: {lifetime}s");

    env.wait_ready("podero", "True", "TokenValid").await;
    let status = env.source("podero").await.status.unwrap_or_default();
    assert_eq!(status.expiration_time.as_ref().map(|t| t.0), Some(expires));
    let next = status.renewal_time.as_ref().expect("no renewalTime").0;
    assert!(next < expires && next > jiff::Timestamp::now(), "next refresh {next} is before expiry {expires}");
    assert_eq!(status.token_type.as_deref(), Some("Bearer"));
    assert_eq!(status.observed_generation, Some(1));

    let secret = env.secrets().get("podero-token").await.unwrap();
    let owners = secret.metadata.owner_references.clone().unwrap_or_default();
    assert_eq!(owners.first().map(|o| o.kind.as_str()), Some("TokenSource"));
    assert_eq!(
        secret.metadata.labels.as_ref().and_then(|l| l.get("tokensource.dev/name")).map(String::as_str),
        Some("podero")
    );

    let events = eventually("a TokenIssued event", WAIT, || async {
        let ev = env.events("podero").await;
        check(ev.iter().any(|(t, r, _)| t == "Normal" && r == "TokenIssued"), ev.clone(), ev)
    })
    .await;
    assert!(events.iter().all(|(t, _, _)| t == "Normal"), "{events:?}");
    assert_eq!(env.fakes.calls(Endpoint::Podero), 1);
    let creds = env.fakes.config().podero;
    env.assert_nothing_leaks(&[&creds.secret, &token], &["podero-token"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_tokens_are_renewed_before_they_expire() {
    let env = Env::start().await;
    env.fakes.set_lifetime(Endpoint::Podero, Duration::from_secs(6));
    podero_credentials(&env).await;
    if let Some(sim) = &env.sim {
        sim.faults().reset_counts();
    }
    env.create(podero(&env, "short", "short-token")).await;
    let mut current = env.wait_token("short-token", None).await;
    let mut seen = vec![current.clone()];
    let started = tokio::time::Instant::now();
    // Watch for 14 seconds: the Secret must never hold an expired token.
    while started.elapsed() < Duration::from_secs(14) {
        let data = env.secret_data("short-token").await.unwrap_or_default();
        let token = data.get("token").cloned().unwrap_or_default();
        assert!(
            env.fakes.is_valid(&token),
            "the Secret held an expired or unknown token after {:?}",
            started.elapsed()
        );
        if token != current {
            current = token.clone();
            seen.push(token);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A renewal may be in flight as the watch ends: settle until no call is made between two
    // looks at the Secret.
    let calls = loop {
        let calls = env.fakes.calls(Endpoint::Podero);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let token = env.secret_data("short-token").await.unwrap_or_default().get("token").cloned().unwrap_or_default();
        if token != current {
            current = token.clone();
            seen.push(token);
        }
        if env.fakes.calls(Endpoint::Podero) == calls {
            break calls;
        }
    };
    // A 6s token renews when about a third of it is left; within 14s it was renewed at least
    // twice (how often exactly depends on the machine's speed, and is not what is tested here).
    assert!(seen.len() >= 3, "only {} tokens in 14s", seen.len());
    assert_eq!(seen.len(), calls, "every token fetched reached the Secret, and none was fetched twice");
    if let Some(sim) = &env.sim {
        // One Secret write per token, and one status write per token (a reconcile of a cached
        // object that has not caught up with the last status write does not write it again).
        let secret_writes = sim.faults().count("patch", "secrets");
        let status_writes = sim.faults().count("patch", "tokensources/status");
        eprintln!("{calls} tokens: {secret_writes} Secret writes, {status_writes} status writes");
        assert_eq!(secret_writes, calls as u64);
        assert!(status_writes <= calls as u64 + 1, "{status_writes} status writes for {calls} tokens");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_and_unrelated_edits_fetch_nothing() {
    let mut env = Env::start().await;
    podero_credentials(&env).await;
    env.create(podero(&env, "stable", "stable-token")).await;
    let token = env.wait_token("stable-token", None).await;
    env.wait_ready("stable", "True", "TokenValid").await;
    let sim_writes = env.sim.as_ref().map(|s| s.faults().count("patch", "secrets"));

    let before = env.reconciles("Success");
    env.restart_operator().await;
    env.wait_reconciles("Success", before, 1).await;
    let p = json!({"metadata": {"labels": {"team": "energy"}, "annotations": {"note": "unrelated"}}});
    env.sources().patch("stable", &PatchParams::default(), &Patch::Merge(&p)).await.unwrap();
    // The restart and the edit each reconciled; neither fetched.
    env.wait_reconciles("Success", before, 2).await;
    assert_eq!(env.fakes.calls(Endpoint::Podero), 1, "a restart or a metadata edit fetched a token");
    assert_eq!(env.secret_data("stable-token").await.and_then(|d| d.get("token").cloned()), Some(token.clone()));
    if let (Some(sim), Some(before)) = (&env.sim, sim_writes) {
        assert_eq!(sim.faults().count("patch", "secrets"), before, "the Secret was rewritten without a new token");
    }

    // The restarted operator is alive: a spec change fetches at once.
    let p = json!({"spec": {"oauth2": {"scopes": ["read"]}}});
    env.sources().patch("stable", &PatchParams::default(), &Patch::Merge(&p)).await.unwrap();
    env.wait_token("stable-token", Some(&token)).await;
    assert_eq!(env.fakes.calls(Endpoint::Podero), 2);
    eventually("the status to describe generation 2", WAIT, || async {
        let st = env.status("stable").await?;
        check(st.observed_generation == Some(2), (), st.observed_generation)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_credentials_fetch_a_new_token_within_seconds() {
    let env = Env::start().await;
    podero_credentials(&env).await;
    env.create(podero(&env, "rotate", "rotate-token")).await;
    let first = env.wait_token("rotate-token", None).await;
    let rotated = FakeClient { id: "podero-client".into(), secret: "rotated-secret-0002".into() };
    env.fakes.set_podero_client(rotated.clone());
    // The token lives an hour and nothing polls: only the watch of the credentials Secret can
    // bring the new token within the wait.
    env.put_secret("podero-credentials", &[("client_id", &rotated.id), ("client_secret", &rotated.secret)]).await;
    let second = env.wait_token("rotate-token", Some(&first)).await;
    assert!(env.fakes.is_valid(&second));
    assert_eq!(env.fakes.calls(Endpoint::Podero), 2);
    env.assert_nothing_leaks(&[&rotated.secret, "podero-secret-0001"], &["rotate-token"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_credentials_explain_themselves_without_leaking() {
    let env = Env::start().await;
    env.put_secret("podero-credentials", &[("client_id", "podero-client"), ("client_secret", "wrong-secret-9999")])
        .await;
    env.create(podero(&env, "denied", "denied-token")).await;
    let message = env.wait_ready("denied", "False", "ProviderRejected").await;
    assert!(message.contains("401") && message.contains("invalid_client"), "{message}");
    assert!(message.contains("try clientAuth.type ClientSecretPost"), "the message says how to fix it: {message}");
    assert!(env.secret_data("denied-token").await.is_none(), "no Secret without a token");
    let status = env.source("denied").await.status.unwrap_or_default();
    assert!(status.failed_renewal_attempts >= 1);
    assert!(status.last_failure_time.is_some());
    let degraded = status.conditions.iter().find(|c| c.type_ == "Degraded").expect("a Degraded condition");
    assert_eq!((degraded.status.as_str(), degraded.reason.as_str()), ("True", "ProviderRejected"));
    let events = eventually("a Warning event", WAIT, || async {
        let ev = env.events("denied").await;
        check(ev.iter().any(|(t, r, _)| t == "Warning" && r == "ProviderRejected"), ev.clone(), ev)
    })
    .await;
    assert!(events.iter().any(|(_, _, m)| m.contains("invalid_client")), "{events:?}");
    // Rejected credentials back off slowly: reconciles that an edit triggers call nobody.
    for i in 0..3 {
        let before = env.reconciles("ProviderRejected");
        let p = json!({"metadata": {"annotations": {"poke": i.to_string()}}});
        env.sources().patch("denied", &PatchParams::default(), &Patch::Merge(&p)).await.unwrap();
        env.wait_reconciles("ProviderRejected", before, 1).await;
    }
    assert_eq!(env.fakes.calls(Endpoint::Podero), 1, "the backoff did not hold");
    env.assert_nothing_leaks(&["wrong-secret-9999"], &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outages_keep_a_valid_token_ready_and_retry() {
    let env = Env::start().await;
    env.fakes.set_lifetime(Endpoint::Podero, Duration::from_secs(12));
    podero_credentials(&env).await;
    env.create(podero(&env, "outage", "outage-token")).await;
    let first = env.wait_token("outage-token", None).await;
    env.wait_ready("outage", "True", "TokenValid").await;
    // The next two renewals fail: 503, then 400 invalid_scope.
    env.fakes.fail_next(Endpoint::Podero, 1, 503, json!({"message": "maintenance"}), None);
    env.fakes.fail_next(
        Endpoint::Podero,
        1,
        400,
        json!({"error": "invalid_scope", "error_description": "scope not allowed"}),
        None,
    );
    let degraded = eventually("the failed renewal to show", WAIT, || async {
        let st = env.status("outage").await?;
        let d = st.conditions.iter().find(|c| c.type_ == "Degraded" && c.status == "True").cloned();
        let ready = st.conditions.iter().find(|c| c.type_ == "Ready").map(|c| c.status.clone());
        match (d, ready, st.last_failure_time.clone()) {
            (Some(d), Some(r), Some(_)) => Ok((d, r)),
            _ => Err(format!("{:?}", st.conditions)),
        }
    })
    .await;
    assert_eq!(degraded.1, "True", "a valid token keeps Ready true during an outage");
    // The second failure may already have replaced the first in the condition; each has its Event.
    assert!(["ProviderUnavailable", "ProviderRejected"].contains(&degraded.0.reason.as_str()), "{:?}", degraded.0);
    assert_eq!(
        env.secret_data("outage-token").await.and_then(|d| d.get("token").cloned()),
        Some(first.clone()),
        "the Secret is untouched"
    );
    // The retries go on and reach a new token before the old one expires.
    let second = env.wait_token("outage-token", Some(&first)).await;
    assert!(env.fakes.is_valid(&second));
    assert_eq!(env.fakes.calls(Endpoint::Podero), 4);
    let rejected = env.fakes.rejections();
    assert!(rejected.is_empty(), "{rejected:?}");
    let ev = env.events("outage").await;
    assert!(
        ev.iter().any(|(t, r, m)| t == "Warning"
            && r == "ProviderUnavailable"
            && m.contains("503")
            && m.contains("maintenance")),
        "{ev:?}"
    );
    assert!(
        ev.iter().any(|(t, r, m)| t == "Warning" && r == "ProviderRejected" && m.contains("invalid_scope")),
        "{ev:?}"
    );
    eventually("the failures to clear after the renewal", WAIT, || async {
        let st = env.status("outage").await?;
        let degraded = st.conditions.iter().any(|c| c.type_ == "Degraded" && c.status == "True");
        check(st.failed_renewal_attempts == 0 && st.last_failure_time.is_none() && !degraded, (), st)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_policies() {
    let env = Env::start().await;
    podero_credentials(&env).await;
    env.create(podero(&env, "gone", "gone-token")).await;
    let mut retained = podero(&env, "kept", "kept-token");
    retained["spec"]["target"]["creationPolicy"] = json!("Orphan");
    env.create(retained).await;
    env.wait_token("gone-token", None).await;
    let kept = env.wait_token("kept-token", None).await;
    env.sources().delete("gone", &DeleteParams::default()).await.unwrap();
    env.sources().delete("kept", &DeleteParams::default()).await.unwrap();
    let kept_secret = env.secrets().get("kept-token").await.unwrap();
    assert!(kept_secret.metadata.owner_references.is_none(), "a retained Secret has no owner to be collected with");
    eventually("the owned Secret to be garbage-collected", WAIT, || async {
        let gone = env.secret_data("gone-token").await;
        check(gone.is_none(), (), gone.map(|d| d.into_keys().collect::<Vec<_>>()))
    })
    .await;
    assert_eq!(env.secret_data("kept-token").await.and_then(|d| d.get("token").cloned()), Some(kept));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_input_is_reported_without_provider_calls() {
    let env = Env::start().await;
    // Caught by the CRD schema at apply time.
    let api: kube::Api<kube::api::DynamicObject> = kube::Api::namespaced_with(
        env.client.clone(),
        &env.ns,
        &kube::api::ApiResource::erase::<tokensource_operator::crd::TokenSource>(&()),
    );
    let rejected = |mut doc: serde_json::Value| {
        let api = api.clone();
        doc["apiVersion"] = json!("tokensource.dev/v1alpha1");
        doc["kind"] = json!("TokenSource");
        async move {
            let obj: kube::api::DynamicObject = serde_json::from_value(doc).unwrap();
            match api.create(&PostParams::default(), &obj).await {
                Err(kube::Error::Api(s)) if s.code == 422 => s.message,
                other => panic!("expected 422 Invalid, got {other:?}"),
            }
        }
    };
    let mut no_target = podero(&env, "schema", "x");
    no_target["spec"].as_object_mut().map(|s| s.remove("target"));
    assert!(rejected(no_target).await.contains("spec.target"));
    let mut both = podero(&env, "both", "x");
    both["spec"]["http"] = json!({"url": "https://example.com/token"});
    assert!(rejected(both).await.contains("type OAuth2 needs oauth2 and no http"));
    let mut both_values = podero(&env, "values", "x");
    both_values["spec"]["oauth2"]["clientID"]["value"] = json!("literal");
    let m = rejected(both_values).await;
    assert!(m.contains("spec.oauth2.clientID") && m.contains("set exactly one of value and valueFrom"), "{m}");

    // Caught by the operator: a missing Secret, a missing key, a bad JSONPath.
    env.create(podero(&env, "nocreds", "nocreds-token")).await;
    let m = env.wait_ready("nocreds", "False", "CredentialsNotFound").await;
    assert!(m.contains("podero-credentials") && m.contains("not found"), "{m}");
    env.put_secret("podero-credentials", &[("client_id", "podero-client")]).await;
    eventually("the missing key to be reported", WAIT, || async {
        let ready = env.ready("nocreds").await.ok_or("no Ready condition")?;
        check(ready.1 == "CredentialsNotFound" && ready.2.contains("has no key \"client_secret\""), (), ready)
    })
    .await;
    let mut bad_path = podero(&env, "badpath", "badpath-token");
    bad_path["spec"]["response"] = json!({"token": {"jsonPath": "$[oops"}});
    env.create(bad_path).await;
    let m = env.wait_ready("badpath", "False", "InvalidSpec").await;
    assert!(m.contains("response.token.jsonPath"), "{m}");
    assert_eq!(env.fakes.calls(Endpoint::Podero), 0);

    // Fixing the Secret fetches at once.
    podero_credentials(&env).await;
    env.wait_token("nocreds-token", None).await;
    env.wait_ready("nocreds", "True", "TokenValid").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_the_operator_did_not_create_is_left_alone() {
    let env = Env::start().await;
    podero_credentials(&env).await;
    env.put_secret("precious", &[("token", "hand-made")]).await;
    env.create(podero(&env, "grabby", "precious")).await;
    let m = env.wait_ready("grabby", "False", "SecretConflict").await;
    assert!(m.contains("precious"), "{m}");
    assert_eq!(env.secret_data("precious").await.and_then(|d| d.get("token").cloned()), Some("hand-made".into()));
    assert_eq!(env.fakes.calls(Endpoint::Podero), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interswitch_expiry_comes_from_the_jwt() {
    let env = Env::start().await;
    let c = env.fakes.config().interswitch;
    env.put_secret("interswitch-credentials", &[("client_id", &c.id), ("secret_key", &c.secret)]).await;
    env.create(json!({
        "metadata": {"name": "interswitch"},
        "spec": {
            "type": "OAuth2",
            "oauth2": {
                "tokenURL": env.fakes.endpoint_url(Endpoint::Interswitch),
                "clientID": {"valueFrom": {"secretKeyRef": {"name": "interswitch-credentials", "key": "client_id"}}},
                "clientAuth": {"type": "ClientSecretBasic", "clientSecretRef": {"name": "interswitch-credentials", "key": "secret_key"}}
            },
            "response": {"fields": [{"key": "merchant_code", "jsonPath": "$.merchant_code"}, {"key": "requestor_id", "jsonPath": "$.requestor_id"}]},
            "target": {"name": "interswitch-token"}
        }
    }))
    .await;
    let token = env.wait_token("interswitch-token", None).await;
    assert!(env.fakes.is_valid(&token));
    let data = env.secret_data("interswitch-token").await.unwrap_or_default();
    assert_eq!(data.get("merchant_code").map(String::as_str), Some("MX6072"));
    assert_eq!(data.get("requestor_id").map(String::as_str), Some("12345678901"));
    let exp = tokensource_operator::response::jwt_exp(&token).expect("fake issued no JWT");
    assert_eq!(data.get("expires_at").cloned(), Some(exp.to_string()));
    env.wait_ready("interswitch", "True", "TokenValid").await;

    // The same endpoint refuses JSON: a misconfigured bodyType is reported, not hidden.
    env.create(json!({
        "metadata": {"name": "interswitch-json"},
        "spec": {
            "type": "OAuth2",
            "oauth2": {
                "tokenURL": env.fakes.endpoint_url(Endpoint::Interswitch),
                "clientID": {"valueFrom": {"secretKeyRef": {"name": "interswitch-credentials", "key": "client_id"}}},
                "clientAuth": {"type": "ClientSecretBasic", "clientSecretRef": {"name": "interswitch-credentials", "key": "secret_key"}},
                "bodyType": "JSON"
            },
            "target": {"name": "interswitch-json-token"}
        }
    }))
    .await;
    let m = env.wait_ready("interswitch-json", "False", "ProviderRejected").await;
    assert!(m.contains("400") && m.contains("invalid_request"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_faults_are_survived() {
    let env = Env::start().await;
    let Some(sim) = env.sim.as_ref() else {
        eprintln!("api_server_faults_are_survived needs kubesim's fault injection; skipped against a real cluster");
        return;
    };
    podero_credentials(&env).await;
    // The first two Secret writes and the first status write fail with 500.
    sim.faults().fail_next(kubesim::Matcher::new("patch", "secrets").named(&env.ns, "faulty-token"), 2, 500, None);
    sim.faults().fail_next(kubesim::Matcher::new("patch", "tokensources/status"), 1, 500, None);
    env.create(podero(&env, "faulty", "faulty-token")).await;
    let token = env.wait_token("faulty-token", None).await;
    assert!(env.fakes.is_valid(&token));
    env.wait_ready("faulty", "True", "TokenValid").await;
    // The lost Secret writes were retried with the token already fetched: one request.
    assert_eq!(env.fakes.calls(Endpoint::Podero), 1);

    // Dropped watches and a compacted history (410 on resume): the operator re-lists and still
    // notices a credential rotation.
    sim.compact();
    sim.faults().end_watches();
    let rotated = FakeClient { id: "podero-client".into(), secret: "rotated-after-faults".into() };
    env.fakes.set_podero_client(rotated.clone());
    env.put_secret("podero-credentials", &[("client_id", &rotated.id), ("client_secret", &rotated.secret)]).await;
    let second = env.wait_token("faulty-token", Some(&token)).await;
    assert!(env.fakes.is_valid(&second));
    assert_eq!(env.fakes.calls(Endpoint::Podero), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_requests_share_one_token_per_lifetime_within_a_namespace() {
    let env = Env::start().await;
    env.fakes.set_lifetime(Endpoint::Podero, Duration::from_secs(6));
    podero_credentials(&env).await;
    let names: Vec<String> = (0..8).map(|i| format!("same-{i}")).collect();
    for n in &names {
        env.create(podero(&env, n, &format!("{n}-token"))).await;
    }
    let mut first = vec![];
    for n in &names {
        first.push(env.wait_token(&format!("{n}-token"), None).await);
    }
    assert_eq!(env.fakes.calls(Endpoint::Podero), 1, "eight identical requests, one call");
    assert!(first.iter().all(|t| *t == first[0]), "every Secret got the one token");
    // Renewed together: one call per lifetime, and every Secret follows the new token.
    let mut second = vec![];
    for n in &names {
        second.push(env.wait_token(&format!("{n}-token"), Some(&first[0])).await);
    }
    assert!(second.iter().all(|t| *t == second[0]), "{second:?}");
    assert_eq!(env.fakes.calls(Endpoint::Podero), 2, "one call per lifetime for all eight");
    // Opting out gets a token of its own.
    let mut own = podero(&env, "own", "own-token");
    own["spec"]["renewal"] = json!({"shareIdenticalRequests": false});
    env.create(own).await;
    let mine = env.wait_token("own-token", None).await;
    assert!(!first.contains(&mine) && !second.contains(&mine));
    assert_eq!(env.fakes.calls(Endpoint::Podero), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_rotated_and_rotated_back_get_a_new_token_each_time() {
    let env = Env::start().await;
    podero_credentials(&env).await;
    env.create(podero(&env, "rot", "rot-token")).await;
    let first = env.wait_token("rot-token", None).await;
    let original = env.fakes.config().podero;
    // The client secret is rotated at the provider and in the cluster...
    env.fakes.set_podero_client(FakeClient { id: original.id.clone(), secret: "rotated-secret-0002".into() });
    env.put_secret("podero-credentials", &[("client_id", &original.id), ("client_secret", "rotated-secret-0002")])
        .await;
    let second = env.wait_token("rot-token", Some(&first)).await;
    // ...and rolled back within the first token's lifetime: the token from before the rotation
    // (which a provider may have revoked with it) is not brought back.
    env.fakes.set_podero_client(original);
    podero_credentials(&env).await;
    let third = env.wait_token("rot-token", Some(&second)).await;
    assert_ne!(third, first, "the pre-rotation token came back without a provider call");
    assert_eq!(env.fakes.calls(Endpoint::Podero), 3);
}
