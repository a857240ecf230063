//! End to end: every flow in `deploy/examples/` (Podero, Interswitch, Imburse HMAC, the Imburse
//! chain) against the strict fakes, plus chains, templates and the Imburse fake's own strictness.

#![cfg(test)]

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{Env, WAIT, check, eventually};
use fake_providers::{Endpoint, examples};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde_json::{Value, json};

/// Applies example files (retargeted at the fakes) into the test namespace.
async fn apply_examples(env: &Env, files: &[&str]) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/examples");
    for file in files {
        for doc in examples::load(&dir.join(file), &env.fakes).unwrap() {
            apply(env, doc).await;
        }
    }
}

async fn apply(env: &Env, doc: Value) {
    let api_version = doc["apiVersion"].as_str().unwrap_or_default().to_string();
    let kind = doc["kind"].as_str().unwrap_or_default().to_string();
    let (group, version) = api_version.split_once('/').unwrap_or(("", &api_version));
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(group, version, &kind),
        &format!("{}s", kind.to_lowercase()),
    );
    let api: Api<DynamicObject> = Api::namespaced_with(env.client.clone(), &env.ns, &ar);
    let name = doc["metadata"]["name"].as_str().unwrap_or_default().to_string();
    api.patch(&name, &PatchParams::apply("e2e").force(), &Patch::Apply(&doc))
        .await
        .unwrap_or_else(|e| panic!("applying {kind} {name}: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_example_flow_gets_a_valid_token() {
    let env = Env::start().await;
    apply_examples(&env, examples::FILES).await;
    let targets = [
        ("podero", "podero-token", Endpoint::Podero),
        ("interswitch", "interswitch-token", Endpoint::Interswitch),
        ("imburse-management", "imburse-management-token", Endpoint::ImburseManagement),
        ("imburse-payout-hmac", "imburse-payout-hmac-token", Endpoint::ImbursePayoutHmac),
        ("imburse-payout", "imburse-payout-token", Endpoint::ImbursePayout),
    ];
    for (source, secret, endpoint) in targets {
        let token = env.wait_token(secret, None).await;
        assert!(env.fakes.is_valid(&token), "{secret} holds a token {endpoint:?} issued");
        env.wait_ready(source, "True", "TokenValid").await;
    }
    assert_eq!(env.fakes.rejections(), vec![], "every request passed the fakes' checks");
    // Podero's template and Imburse's millisecond string expiry.
    let podero = env.secret_data("podero-token").await.unwrap_or_default();
    assert_eq!(podero.get("authorization"), Some(&format!("Bearer {}", podero["token"])));
    let mgmt = env.secret_data("imburse-management-token").await.unwrap_or_default();
    let expires: jiff::Timestamp =
        mgmt.get("expires_at").and_then(|e| e.parse().ok()).unwrap_or_else(|| panic!("{mgmt:?}"));
    let left = expires.duration_since(jiff::Timestamp::now()).as_secs();
    assert!((3500..=3600).contains(&left), "Imburse expiry read from milliseconds: {left}s left");
    // The payout request carried the body from the example, with the value from the Secret.
    assert_eq!(
        env.fakes.payout_bodies(),
        vec![json!({"customerRef": "my-customer-ref", "orderRef": "1", "instructionRef": "1"})]
    );
    let tenant = env.fakes.config();
    let tokens: Vec<String> = futures::future::join_all(targets.iter().map(|(_, s, _)| env.secret_data(s)))
        .await
        .into_iter()
        .filter_map(|d| d.and_then(|d| d.get("token").cloned()))
        .collect();
    let mut needles: Vec<&str> = tokens.iter().map(String::as_str).collect();
    needles.extend([
        tenant.imburse_private_b64.as_str(),
        tenant.podero.secret.as_str(),
        tenant.interswitch.secret.as_str(),
    ]);
    env.assert_nothing_leaks(&needles, &targets.map(|t| t.1)).await;
}

/// A chained TokenSource whose upstream has no token yet sends nothing and takes none of the
/// host's request slots: a request started without the upstream token failed only once it had a
/// slot, which could be after the upstream's Secret event had come and gone, and the chain then
/// waited for the next event, the upstream's renewal an hour later (seen as a payout Secret
/// never written).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_whose_upstream_has_no_token_yet_takes_no_request_slot() {
    let mut env = Env::start().await;
    // One request at a time to the fakes' host, and the management token takes two seconds.
    env.stop_operator().await;
    env.config.transport.per_host_floor = 1;
    env.config.transport.per_host_ceilings =
        std::sync::Arc::new(tokensource_operator::limit::Ceilings { default: 1, ..Default::default() });
    env.start_operator();
    env.fakes.set_reply_delay(Endpoint::ImburseManagement, Duration::from_secs(2));
    apply_examples(&env, &["imburse-tenant-key.yaml", "imburse-management.yaml"]).await;
    eventually("the management request under way", WAIT, || async {
        let calls = env.fakes.calls(Endpoint::ImburseManagement);
        check(calls >= 1, (), calls)
    })
    .await;
    apply_examples(&env, &["imburse-payout-from-management.yaml"]).await;
    let m = env.wait_ready("imburse-payout", "False", "WaitingForUpstream").await;
    assert!(m.contains("no valid token yet"), "{m}");
    let waiting = env
        .metrics
        .encode()
        .lines()
        .filter(|l| l.starts_with("tokensource_host_requests_waiting{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>();
    assert_eq!(waiting, 0.0, "nothing waits for the host's slot while the chain has no upstream token");
    assert!(env.fakes.calls(Endpoint::ImburseManagement) == 1 && env.fakes.calls(Endpoint::ImbursePayout) == 0);
    // The upstream's token arrives, and with it the chain's request.
    let token = env.wait_token("imburse-payout-token", None).await;
    assert!(env.fakes.is_valid(&token));
    assert_eq!(env.fakes.calls(Endpoint::ImbursePayout), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chain_survives_upstream_refreshes_and_reports_its_loss() {
    let env = Env::start().await;
    env.fakes.set_lifetime(Endpoint::ImburseManagement, Duration::from_secs(6));
    env.fakes.set_lifetime(Endpoint::ImbursePayout, Duration::from_secs(120));
    // The payout source first: it waits, calling nothing, until its upstream exists.
    apply_examples(&env, &["imburse-tenant-key.yaml", "imburse-payout-from-management.yaml"]).await;
    let m = env.wait_ready("imburse-payout", "False", "WaitingForUpstream").await;
    assert!(m.contains("imburse-management") && m.contains("not found"), "{m}");
    assert_eq!(env.fakes.calls(Endpoint::ImbursePayout), 0);

    apply_examples(&env, &["imburse-management.yaml"]).await;
    let payout = env.wait_token("imburse-payout-token", None).await;
    let first_mgmt = env.wait_token("imburse-management-token", None).await;
    // The management token renews (6s lifetime); the payout token keeps working untouched.
    let second_mgmt = env.wait_token("imburse-management-token", Some(&first_mgmt)).await;
    env.wait_token("imburse-management-token", Some(&second_mgmt)).await;
    assert_eq!(
        env.secret_data("imburse-payout-token").await.and_then(|d| d.get("token").cloned()),
        Some(payout.clone())
    );
    assert_eq!(env.fakes.calls(Endpoint::ImbursePayout), 1);
    assert!(env.fakes.is_valid(&payout));
    env.wait_ready("imburse-payout", "True", "TokenValid").await;

    // Deleting the management source turns the payout source not-Ready; its Secret stays.
    env.sources().delete("imburse-management", &DeleteParams::default()).await.unwrap();
    let m = env.wait_ready("imburse-payout", "False", "WaitingForUpstream").await;
    assert!(m.contains("not found"), "{m}");
    assert_eq!(env.secret_data("imburse-payout-token").await.and_then(|d| d.get("token").cloned()), Some(payout));
    assert_eq!(env.fakes.rejections(), vec![]);
}

/// The garbage collector is what deletes an upstream's Secret, and only when the Secret is owned:
/// a chained TokenSource learns that its upstream is gone from the deletion itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_learns_its_upstream_is_gone_when_the_upstream_secret_stays() {
    let env = Env::start().await;
    env.fakes.set_lifetime(Endpoint::ImbursePayout, Duration::from_secs(3600));
    apply_examples(&env, &["imburse-tenant-key.yaml", "imburse-payout-from-management.yaml"]).await;
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/examples");
    for mut doc in examples::load(&dir.join("imburse-management.yaml"), &env.fakes).unwrap() {
        doc["spec"]["target"]["creationPolicy"] = json!("Orphan");
        apply(&env, doc).await;
    }
    let payout = env.wait_token("imburse-payout-token", None).await;
    env.wait_ready("imburse-payout", "True", "TokenValid").await;

    env.sources().delete("imburse-management", &DeleteParams::default()).await.unwrap();
    let m = env.wait_ready("imburse-payout", "False", "WaitingForUpstream").await;
    assert!(m.contains("imburse-management") && m.contains("not found"), "{m}");
    // Both Secrets stay: the upstream's by its policy, the payout token as it was.
    assert!(env.secret_data("imburse-management-token").await.is_some());
    assert_eq!(env.secret_data("imburse-payout-token").await.and_then(|d| d.get("token").cloned()), Some(payout));
    assert_eq!(env.fakes.calls(Endpoint::ImbursePayout), 1);
    assert_eq!(env.fakes.rejections(), vec![]);
}

/// Case 8 of the reconcile-correctness issue: a chained request the provider refused (the
/// upstream token it carried was not accepted) backs off, but the upstream's next token ends
/// the backoff: it is tried with that token at once, not when the 15–30 s backoff runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_s_next_token_ends_a_chained_backoff() {
    let env = Env::start().await;
    env.fakes.set_lifetime(Endpoint::ImburseManagement, Duration::from_secs(6));
    env.fakes.set_lifetime(Endpoint::ImbursePayout, Duration::from_secs(3600));
    apply_examples(
        &env,
        &["imburse-tenant-key.yaml", "imburse-management.yaml", "imburse-payout-from-management.yaml"],
    )
    .await;
    let payout = env.wait_token("imburse-payout-token", None).await;
    env.wait_ready("imburse-payout", "True", "TokenValid").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(env.fakes.calls(Endpoint::ImbursePayout), 1, "{:?}", env.fakes.rejections());
    env.fakes.fail_next(Endpoint::ImbursePayout, 1, 401, json!({"error": "invalid_token"}), None);
    let ask = json!({"metadata": {"annotations": {"tokensource.dev/refresh-requested-at": "2026-01-02T03:04:05Z"}}});
    env.sources().patch("imburse-payout", &PatchParams::default(), &Patch::Merge(&ask)).await.unwrap();
    let next = env.wait_token("imburse-payout-token", Some(&payout)).await;
    // The calls: the first token, the refused renewal, the renewal with the upstream's next token.
    let times = env.fakes.call_times(Endpoint::ImbursePayout);
    assert_eq!(times.len(), 3, "{:?}", env.fakes.rejections());
    let took = times[2] - times[1];
    eprintln!("chained renewal {took:?} after the refusal (the upstream renews every ~4 s)");
    assert!(took < Duration::from_secs(12), "the chained TokenSource waited out its backoff: {took:?}");
    assert!(env.fakes.is_valid(&next));
    assert_eq!(env.fakes.calls(Endpoint::ImbursePayout), 3);
}

/// Case 8(a) of the reconcile-correctness issue: a chained request made while the operator's
/// cache has not yet seen the upstream token it just wrote carries that token, not the one it
/// replaced — which a provider that keeps one valid token per client has revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chained_renewal_carries_the_upstream_token_just_written_not_the_cached_one() {
    let env = Env::start().await;
    if env.kubesim_only("holds back the watch events of Secrets (kubesim's fault injection)") {
        return;
    }
    let sim = env.sim.as_ref().expect("kubesim");
    env.fakes.set_lifetime(Endpoint::ImburseManagement, Duration::from_secs(3600));
    env.fakes.set_lifetime(Endpoint::ImbursePayout, Duration::from_secs(3600));
    env.fakes.revoke_previous(Endpoint::ImburseManagement);
    apply_examples(
        &env,
        &["imburse-tenant-key.yaml", "imburse-management.yaml", "imburse-payout-from-management.yaml"],
    )
    .await;
    let first_mgmt = env.wait_token("imburse-management-token", None).await;
    let payout = env.wait_token("imburse-payout-token", None).await;
    env.wait_ready("imburse-payout", "True", "TokenValid").await;
    // Manual refreshes are taken at most once per 5 s per TokenSource.
    tokio::time::sleep(Duration::from_secs(6)).await;

    // The operator's cache of Secrets stops moving; its requests are answered as usual.
    sim.faults().hold_watch_events("secrets");
    let ask = |at: &str| json!({"metadata": {"annotations": {"tokensource.dev/refresh-requested-at": at}}});
    let pp = PatchParams::default();
    env.sources().patch("imburse-management", &pp, &Patch::Merge(&ask("2026-01-02T03:04:05Z"))).await.unwrap();
    let second_mgmt = env.wait_token("imburse-management-token", Some(&first_mgmt)).await;
    assert!(!env.fakes.is_valid(&first_mgmt), "the provider revoked the management token it replaced");
    // Longer than the operator waits for its cache to show its own write of a Secret.
    tokio::time::sleep(Duration::from_secs(6)).await;
    env.sources().patch("imburse-payout", &pp, &Patch::Merge(&ask("2026-01-02T03:04:06Z"))).await.unwrap();
    let next = env.wait_token("imburse-payout-token", Some(&payout)).await;
    sim.faults().release_watch_events();

    assert!(env.fakes.is_valid(&second_mgmt));
    assert!(env.fakes.is_valid(&next));
    assert_eq!(env.fakes.rejections(), vec![], "a chained request carried a revoked upstream token");
    assert_eq!(env.fakes.calls(Endpoint::ImbursePayout), 2);
    env.wait_ready("imburse-payout", "True", "TokenValid").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chains_that_loop_are_invalid() {
    let env = Env::start().await;
    let chained = |name: &str, upstream: &str| {
        json!({
            "metadata": {"name": name},
            "spec": {
                "type": "HTTP",
                "http": {"url": env.fakes.endpoint_url(Endpoint::ImbursePayout), "auth": {"type": "Bearer", "bearer": {"tokenSourceRef": {"name": upstream}}}},
                "target": {"name": format!("{name}-token")}
            }
        })
    };
    env.create(chained("a", "b")).await;
    env.create(chained("b", "a")).await;
    env.create(chained("self", "self")).await;
    for name in ["a", "b", "self"] {
        let m = env.wait_ready(name, "False", "InvalidSpec").await;
        assert!(m.contains("loops") || m.contains("itself"), "{m}");
    }
    assert_eq!(env.fakes.calls(Endpoint::ImbursePayout), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_shape_the_secret_and_template_errors_write_nothing() {
    let env = Env::start().await;
    common::podero_credentials(&env).await;
    let mut docker = common::podero(&env, "registry", "registry-pull");
    docker["spec"]["target"]["template"] = json!({"type": "kubernetes.io/dockerconfigjson", "data": {
        ".dockerconfigjson": "{\"auths\":{\"registry.example.com\":{\"auth\":\"{{ ('oauth2accesstoken:' ~ token) | b64encode }}\"}}}",
        "settings.ini": "[api]\ntoken = {{ token }}\nexpires = {{ expires_at }}\n"
    }});
    env.create(docker).await;
    let token = env.wait_token("registry-pull", None).await;
    let secret = env.secrets().get("registry-pull").await.unwrap();
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/dockerconfigjson"));
    let data = env.secret_data("registry-pull").await.unwrap_or_default();
    let cfg: Value = serde_json::from_str(&data[".dockerconfigjson"]).expect("not JSON");
    let auth = cfg["auths"]["registry.example.com"]["auth"].as_str().unwrap_or_default();
    let decoded = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, auth).unwrap_or_default();
    assert_eq!(String::from_utf8_lossy(&decoded), format!("oauth2accesstoken:{token}"));
    assert!(data["settings.ini"].contains(&format!("token = {token}")));

    let mut broken = common::podero(&env, "broken", "broken-token");
    broken["spec"]["target"]["template"] = json!({"data": {"x": "{{ token | nosuchfilter }}"}});
    env.create(broken).await;
    let m = env.wait_ready("broken", "False", "InvalidSpec").await;
    assert!(m.contains("target.template.data.x"), "{m}");
    let mut undefined = common::podero(&env, "undefined", "undefined-token");
    undefined["spec"]["target"]["template"] = json!({"data": {"x": "{{ response.nope.deeper }}"}});
    env.create(undefined).await;
    let m = env.wait_ready("undefined", "False", "InvalidSpec").await;
    assert!(m.contains("target.template.data.x"), "{m}");
    assert!(env.secret_data("broken-token").await.is_none() && env.secret_data("undefined-token").await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_imburse_fake_rejects_replays_stale_clocks_and_bad_signatures() {
    use tokensource_operator::crd::KeyEncoding;
    use tokensource_operator::providers::hmac::ImburseKey;
    let fakes = fake_providers::Fakes::start(Default::default()).await.unwrap();
    let config = fakes.config();
    let key = ImburseKey::new(config.imburse_public.clone(), &config.imburse_private_b64, KeyEncoding::Base64).unwrap();
    let http = reqwest::Client::new();
    tokensource_operator::transport::install_crypto_provider();
    let url = fakes.endpoint_url(Endpoint::ImburseManagement);
    let send = |auth: String| {
        let http = http.clone();
        let url = url.clone();
        async move { http.post(url).header("Authorization", auth).send().await.map(|r| r.status().as_u16()).unwrap_or(0) }
    };
    let now = jiff::Timestamp::now().as_second();
    assert_eq!(send(key.authorization("nonce-1", now, b"")).await, 200);
    assert_eq!(send(key.authorization("nonce-1", now, b"")).await, 401, "a replayed nonce");
    assert_eq!(send(key.authorization("nonce-2", now - 301, b"")).await, 401, "a timestamp over five minutes old");
    assert_eq!(send(key.authorization("nonce-3", now, b"{}")).await, 401, "signed over a body that was not sent");
    let other = ImburseKey::new(config.imburse_public.clone(), "b3RoZXIta2V5", KeyEncoding::Base64).unwrap();
    assert_eq!(send(other.authorization("nonce-4", now, b"")).await, 401, "signed with another key");
    let reasons: Vec<String> = fakes.rejections().into_iter().map(|(_, r)| r).collect();
    assert_eq!(
        reasons,
        vec![
            "nonce reused",
            "request timestamp is more than five minutes off",
            "signature does not match",
            "signature does not match"
        ]
    );
    // A payout request needs a currently valid management token.
    let payout = http
        .post(fakes.endpoint_url(Endpoint::ImbursePayout))
        .header("Authorization", "Bearer forged")
        .json(&json!({"customerRef": "c", "orderRef": "1", "instructionRef": "1"}))
        .send()
        .await;
    assert_eq!(payout.map(|r| r.status().as_u16()).unwrap_or(0), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auth_type_from_a_newer_version_is_refused_not_sent_unauthenticated() {
    let env = Env::start().await;
    if env.needs_the_cluster_alone("it replaces the cluster-wide CRD with a newer one, under every other test") {
        return;
    }
    // After a rollback of the operator, the newer CRD (with an auth type this operator does not
    // know) is still installed and TokenSources use it.
    let mut crd = serde_json::to_value(tokensource_operator::crd::crd()).unwrap();
    let auth = &mut crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["http"]
        ["properties"]["auth"];
    auth["properties"]["type"]["enum"].as_array_mut().unwrap().push(json!("SigV4"));
    auth["properties"]["sigv4"] = json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true});
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(env.client.clone());
    crds.patch("tokensources.tokensource.dev", &PatchParams::apply("e2e").force(), &Patch::Apply(&crd)).await.unwrap();
    // Written as the newer client wrote it (the typed struct of this version cannot hold it),
    // once the API server serves the newer schema.
    let ar = ApiResource::erase::<tokensource_operator::crd::TokenSource>(&());
    let newer_api: Api<DynamicObject> = Api::namespaced_with(env.client.clone(), &env.ns, &ar);
    let doc = json!({
        "apiVersion": "tokensource.dev/v1alpha1", "kind": "TokenSource",
        "metadata": {"name": "newer"},
        "spec": {
            "type": "HTTP",
            "http": {"url": env.fakes.endpoint_url(Endpoint::ImburseManagement), "auth": {"type": "SigV4", "sigv4": {"region": "eu-west-1"}}},
            "target": {"name": "newer-token"}
        }
    });
    common::eventually("the newer TokenSource accepted", common::WAIT, || async {
        newer_api
            .patch("newer", &PatchParams::apply("e2e").force(), &Patch::Apply(&doc))
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    let m = env.wait_ready("newer", "False", "InvalidSpec").await;
    assert!(m.contains("http.auth.type") && m.contains("does not support"), "{m}");
    // Other TokenSources are still served: the operator did not choke on the unknown value.
    common::podero_credentials(&env).await;
    env.create(common::podero(&env, "podero", "podero-token")).await;
    env.wait_token("podero-token", None).await;
    assert_eq!(env.fakes.calls(Endpoint::ImburseManagement), 0, "nothing was sent without its authentication");
    assert!(env.secret_data("newer-token").await.is_none());
}

/// Case 8(b) of the reconcile-correctness issue, the other way round: a chained TokenSource
/// whose own endpoint is down backs off as any other. Its upstream's next token ends only a
/// backoff that a refusal started (which the upstream token may have caused), not one of an
/// endpoint that is down or throttling: with short upstream tokens that would be a request per
/// upstream renewal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chained_tokensource_backs_off_from_its_own_endpoint_whatever_its_upstream_renews() {
    let env = Env::start().await;
    env.fakes.set_lifetime(Endpoint::ImburseManagement, Duration::from_secs(8));
    env.fakes.set_lifetime(Endpoint::ImbursePayout, Duration::from_secs(3600));
    apply_examples(
        &env,
        &["imburse-tenant-key.yaml", "imburse-management.yaml", "imburse-payout-from-management.yaml"],
    )
    .await;
    env.wait_token("imburse-payout-token", None).await;
    env.wait_ready("imburse-payout", "True", "TokenValid").await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    // The payout endpoint is down for a while and says to come back in a minute.
    env.fakes.fail_next(Endpoint::ImbursePayout, 100, 503, json!({"error": "maintenance"}), Some(60));
    let ask = json!({"metadata": {"annotations": {"tokensource.dev/refresh-requested-at": "2026-01-02T03:04:05Z"}}});
    env.sources().patch("imburse-payout", &PatchParams::default(), &Patch::Merge(&ask)).await.unwrap();
    eventually("the payout's failure", WAIT, || async {
        check(env.fakes.calls(Endpoint::ImbursePayout) == 2, (), env.fakes.calls(Endpoint::ImbursePayout))
    })
    .await;
    let management = env.fakes.calls(Endpoint::ImburseManagement);
    tokio::time::sleep(Duration::from_secs(20)).await;
    let renewed = env.fakes.calls(Endpoint::ImburseManagement) - management;
    let payout = env.fakes.calls(Endpoint::ImbursePayout) - 2;
    eprintln!("in 20 s: {renewed} management renewals, {payout} payout requests during its backoff");
    assert!(renewed >= 2, "the upstream renewed {renewed} times");
    assert_eq!(payout, 0, "the upstream's renewals ended the payout's backoff");
    env.wait_ready("imburse-payout", "True", "TokenValid").await;
}
