//! End to end: what a tenant who may create TokenSources in its own namespace cannot make the
//! operator do for it. The operator holds create and patch on every Secret and, with workload
//! identity, mints ServiceAccount tokens; none of that is lent to a tenant beyond writing its
//! own token into a Secret of its own namespace. The README's threat model names these tests.
//!
//! Each test runs on kubesim and, with `TOKENSOURCE_E2E_KUBECONFIG`, on a real control plane
//! (`tests/controlplane/run 1.37 -- cargo test --test e2e_tenant_escalation`), where the
//! ServiceAccount token controller would fill a `kubernetes.io/service-account-token` Secret.

#![cfg(test)]

mod common;

use std::time::Duration;

use common::{Env, WAIT, check, eventually, podero, podero_credentials};
use fake_providers::Endpoint;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kubesim::Matcher;
use serde_json::{Value, json};
use tokensource_operator::crd::TokenSource;

/// A Podero TokenSource whose target template is `template`.
fn with_template(env: &Env, name: &str, template: Value) -> Value {
    let mut ts = podero(env, name, &format!("{name}-token"));
    ts["spec"]["target"]["template"] = template;
    ts
}

fn object(ts: &Value) -> TokenSource {
    let mut v = ts.clone();
    v["apiVersion"] = json!("tokensource.dev/v1alpha1");
    v["kind"] = json!("TokenSource");
    serde_json::from_value(v).expect("a TokenSource")
}

/// The templates a tenant could use to make a core controller act on the Secret, or to pass
/// the Secret off as another kind of credential.
fn reserved_templates() -> Vec<(&'static str, Value)> {
    vec![
        (
            "sa-token",
            json!({"type": "kubernetes.io/service-account-token", "mergePolicy": "Replace",
                "metadata": {"annotations": {"kubernetes.io/service-account.name": "deployer"}},
                "data": {"x": "{{ expires_at }}"}}),
        ),
        ("bootstrap", json!({"type": "bootstrap.kubernetes.io/token"})),
        ("sa-annotation", json!({"metadata": {"annotations": {"kubernetes.io/service-account.name": "deployer"}}})),
        ("sa-uid", json!({"metadata": {"annotations": {"kubernetes.io/service-account.uid": "1234"}}})),
        ("sub-label", json!({"metadata": {"labels": {"node-role.kubernetes.io/control-plane": ""}}})),
        ("k8s-label", json!({"metadata": {"labels": {"k8s.io/x": "y"}}})),
        ("own-annotation", json!({"metadata": {"annotations": {"tokensource.dev/fingerprint": "forged"}}})),
    ]
}

/// The CRD as it was before the reserved types and keys were refused (an operator upgraded
/// before its CRD): the rules that name them are left out.
async fn install_crd_without_reservations(env: &Env) {
    fn strip(v: &mut Value) {
        match v {
            Value::Object(m) => {
                if let Some(Value::Array(rules)) = m.get_mut("x-kubernetes-validations") {
                    rules.retain(|r| !r["message"].as_str().is_some_and(|s| s.contains("reserved")));
                    if rules.is_empty() {
                        m.remove("x-kubernetes-validations");
                    }
                }
                m.values_mut().for_each(strip);
            }
            Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut crd = serde_json::to_value(tokensource_operator::crd::crd()).unwrap();
    strip(&mut crd);
    let crds: Api<CustomResourceDefinition> = Api::all(env.client.clone());
    crds.patch("tokensources.tokensource.dev", &PatchParams::apply("e2e").force(), &Patch::Apply(&crd)).await.unwrap();
}

/// Creates `ts` under the CRD without the reservations. On a real cluster another test of this
/// file may install the whole CRD meanwhile: then it is put back and the create tried again.
async fn create_under_old_crd(env: &Env, ts: &Value) {
    let obj = object(ts);
    let mut last = String::new();
    for _ in 0..20 {
        install_crd_without_reservations(env).await;
        match env.sources().create(&PostParams::default(), &obj).await {
            Ok(_) => return,
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("the TokenSource was refused even without the reservations: {last}");
}

/// Case 1 of issue 30: the CRD refuses a Secret type or a template key that would make a core
/// controller act on the Secret (the ServiceAccount token controller fills a
/// `kubernetes.io/service-account-token` Secret with a token that never expires), and keys the
/// operator writes itself; ordinary types and keys are still accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_crd_refuses_reserved_secret_types_and_metadata() {
    let env = Env::start().await;
    for (name, template) in reserved_templates() {
        let refused = env.sources().create(&PostParams::default(), &object(&with_template(&env, name, template))).await;
        match refused {
            Err(kube::Error::Api(s)) => assert!(s.code == 422 && s.message.contains("reserved"), "{name}: {s:?}"),
            other => panic!("{name}: the API server accepted a reserved template: {other:?}"),
        }
    }
    for (name, template) in [
        (
            "opaque",
            json!({"type": "Opaque", "metadata": {"labels": {"team": "energy"}, "annotations": {"example.com/note": "x"}}}),
        ),
        ("docker", json!({"type": "kubernetes.io/dockerconfigjson", "data": {".dockerconfigjson": "{}"}})),
        ("basic", json!({"type": "kubernetes.io/basic-auth", "data": {"password": "{{ token }}"}})),
        ("custom", json!({"type": "example.com/bearer-token"})),
        ("lookalike", json!({"type": "notkubernetes.io/x", "metadata": {"labels": {"kubernetes.iox/y": "z"}}})),
    ] {
        env.sources()
            .create(&PostParams::default(), &object(&with_template(&env, name, template)))
            .await
            .unwrap_or_else(|e| panic!("{name}: refused: {e}"));
    }
}

/// Case 1 of issue 30, for TokenSources that predate the CRD's rules: the operator refuses them
/// itself, before any request, and writes no Secret (on a real cluster the token controller
/// would otherwise fill `sa-token-token` with a non-expiring token of `deployer`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_refuses_reserved_types_and_metadata_the_crd_let_through() {
    let env = Env::start().await;
    if env.needs_the_cluster_alone(
        "it replaces the cluster-wide CRD with one without the reservation rules, under every other test",
    ) {
        return;
    }
    podero_credentials(&env).await;
    // The ServiceAccount the tenant would like a permanent token of.
    let accounts: Api<ServiceAccount> = Api::namespaced(env.client.clone(), &env.ns);
    accounts
        .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "deployer"}})).unwrap())
        .await
        .unwrap();
    for (name, template) in reserved_templates() {
        create_under_old_crd(&env, &with_template(&env, name, template)).await;
    }
    for (name, _) in reserved_templates() {
        let m = env.wait_ready(name, "False", "InvalidSpec").await;
        assert!(m.contains("reserved") && m.contains("target.template"), "{name}: {m}");
    }
    for (name, _) in reserved_templates() {
        let secret = env.secrets().get_opt(&format!("{name}-token")).await.unwrap();
        assert!(secret.is_none(), "{name}: the operator wrote {secret:?}");
    }
    assert_eq!(env.fakes.calls(Endpoint::Podero), 0, "refused before any request");
}

/// Case 1 of issue 30: a template edited to a reserved key (under a CRD without the rule) is
/// refused with a clear error, and the Secret that worked stays as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reserved_key_added_later_leaves_the_working_secret_alone() {
    let env = Env::start().await;
    if env.needs_the_cluster_alone(
        "it replaces the cluster-wide CRD with one without the reservation rules, under every other test",
    ) {
        return;
    }
    podero_credentials(&env).await;
    env.create(podero(&env, "working", "working-token")).await;
    let token = env.wait_token("working-token", None).await;
    env.wait_ready("working", "True", "TokenValid").await;
    let before: Secret = env.secrets().get("working-token").await.unwrap();

    let patch = json!({"spec": {"target": {"template": {"metadata": {"annotations": {
        "kubernetes.io/service-account.name": "deployer"}}}}}});
    let mut patched = false;
    for _ in 0..20 {
        install_crd_without_reservations(&env).await;
        if env.sources().patch("working", &PatchParams::default(), &Patch::Merge(&patch)).await.is_ok() {
            patched = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(patched, "the edit was refused even without the reservations");
    let m = env.wait_ready("working", "False", "InvalidSpec").await;
    assert!(m.contains("kubernetes.io/service-account.name") && m.contains("reserved"), "{m}");
    // Given time to write, the operator wrote nothing: same version, same token, no annotation.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after: Secret = env.secrets().get("working-token").await.unwrap();
    assert_eq!(after.metadata.resource_version, before.metadata.resource_version, "the Secret was written");
    assert_eq!(env.secret_data("working-token").await.and_then(|d| d.get("token").cloned()), Some(token));
    let annotations = after.metadata.annotations.unwrap_or_default();
    assert!(!annotations.contains_key("kubernetes.io/service-account.name"), "{annotations:?}");
    assert_eq!(env.fakes.calls(Endpoint::Podero), 1);
}

/// A Secret of the tenant's namespace that the operator did not write (created with the
/// tenant's own rights, or by someone else).
async fn foreign_secret(env: &Env, name: &str, labels: Value) {
    let secret = json!({"metadata": {"name": name, "labels": labels}, "stringData": {"token": "hand-made"}});
    env.secrets().create(&PostParams::default(), &serde_json::from_value(secret).unwrap()).await.unwrap();
}

/// The foreign Secret is as it was made: its one key, no owner reference, no operator annotation.
async fn assert_untouched(env: &Env, name: &str) {
    let s: Secret = env.secrets().get(name).await.unwrap();
    let keys: Vec<String> = s.data.clone().unwrap_or_default().into_keys().collect();
    assert_eq!(keys, ["token"], "the operator wrote into {name}");
    assert_eq!(env.secret_data(name).await.and_then(|d| d.get("token").cloned()).as_deref(), Some("hand-made"));
    assert!(s.metadata.owner_references.unwrap_or_default().is_empty(), "{name} got an owner reference");
    let annotations = s.metadata.annotations.unwrap_or_default();
    assert!(!annotations.keys().any(|k| k.starts_with("tokensource.dev/")), "{annotations:?}");
}

fn sim_or_skip(env: &Env) -> Option<&kubesim::KubeSim> {
    if env.sim.is_none() {
        common::say("kubesim only: the race is made with kubesim's latency injection");
    }
    env.sim.as_ref()
}

/// Case 6 of issue 30: the first write creates the Secret only if no Secret of that name exists
/// when the write arrives, not when the operator last looked. Here the write is slowed down and
/// the name taken meanwhile: the operator reports `SecretConflict` and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_created_while_the_first_write_is_on_its_way_is_not_taken_over() {
    let env = Env::start().await;
    let Some(sim) = sim_or_skip(&env) else { return };
    podero_credentials(&env).await;
    sim.faults().add_latency(Matcher::new("patch", "secrets").named(&env.ns, "racer-token"), Duration::from_secs(3));
    let before = sim.faults().count("patch", "secrets");
    env.create(podero(&env, "racer", "racer-token")).await;
    eventually("the operator's write on its way", WAIT, || async {
        let n = sim.faults().count("patch", "secrets");
        check(n > before, (), n)
    })
    .await;
    foreign_secret(&env, "racer-token", json!({})).await;
    let m = env.wait_ready("racer", "False", "SecretConflict").await;
    assert!(m.contains("racer-token"), "{m}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_untouched(&env, "racer-token").await;
    env.wait_ready("racer", "False", "SecretConflict").await;
}

/// Case 6 of issue 30: a later write goes only to the Secret the operator wrote before (the same
/// object, by uid). Replaced by another Secret of the same name while the write is on its way,
/// the new one is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_replaced_while_a_renewal_is_on_its_way_is_not_taken_over() {
    let env = Env::start().await;
    let Some(sim) = sim_or_skip(&env) else { return };
    env.fakes.set_lifetime(Endpoint::Podero, Duration::from_secs(6));
    podero_credentials(&env).await;
    env.create(podero(&env, "renewed", "renewed-token")).await;
    env.wait_token("renewed-token", None).await;
    env.wait_ready("renewed", "True", "TokenValid").await;
    let before = sim.faults().count("patch", "secrets");
    sim.faults().add_latency(Matcher::new("patch", "secrets").named(&env.ns, "renewed-token"), Duration::from_secs(3));
    eventually("the renewal's write on its way", WAIT, || async {
        let n = sim.faults().count("patch", "secrets");
        check(n > before, (), n)
    })
    .await;
    env.secrets().delete("renewed-token", &Default::default()).await.unwrap();
    foreign_secret(&env, "renewed-token", json!({})).await;
    env.wait_ready("renewed", "False", "SecretConflict").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_untouched(&env, "renewed-token").await;
}

/// Case 6 of issue 30, the other side: the operator's own Secret deleted (not replaced) while a
/// write to it is on its way is created again by that write, with no new token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_deleted_while_a_write_is_on_its_way_is_created_again() {
    let env = Env::start().await;
    let Some(sim) = sim_or_skip(&env) else { return };
    podero_credentials(&env).await;
    env.create(podero(&env, "again", "again-token")).await;
    let token = env.wait_token("again-token", None).await;
    env.wait_ready("again", "True", "TokenValid").await;
    let before = sim.faults().count("patch", "secrets");
    sim.faults().add_latency(Matcher::new("patch", "secrets").named(&env.ns, "again-token"), Duration::from_secs(2));
    // A template edit re-renders the Secret from the token in hand: a write with no request.
    let edit = json!({"spec": {"target": {"template": {"metadata": {"labels": {"team": "energy"}}}}}});
    env.sources().patch("again", &PatchParams::default(), &Patch::Merge(&edit)).await.unwrap();
    eventually("the write on its way", WAIT, || async {
        let n = sim.faults().count("patch", "secrets");
        check(n > before, (), n)
    })
    .await;
    env.secrets().delete("again-token", &Default::default()).await.unwrap();
    eventually("the Secret created again, with the label", WAIT, || async {
        let s = env.secrets().get_opt("again-token").await.map_err(|e| e.to_string())?;
        let labelled = s.as_ref().is_some_and(|s| s.labels().get("team").is_some_and(|t| t == "energy"));
        check(labelled, (), s.map(|s| s.metadata.labels))
    })
    .await;
    assert_eq!(env.secret_data("again-token").await.and_then(|d| d.get("token").cloned()), Some(token));
    env.wait_ready("again", "True", "TokenValid").await;
    assert_eq!(env.fakes.calls(Endpoint::Podero), 1);
    // The write for the deleted Secret was refused (its uid is gone) and the next one created it.
    let codes: Vec<u16> = sim
        .faults()
        .requests()
        .iter()
        .filter(|r| r.verb == "patch" && r.resource == "secrets" && r.name == "again-token")
        .map(|r| r.code)
        .collect();
    assert!(codes.windows(2).any(|w| w == [409, 201]), "{codes:?}");
}

/// Case 6 of issue 30: a Secret left behind by a deleted TokenSource (`creationPolicy: Orphan`)
/// is not adopted by a new TokenSource that happens to have the same name; the Secret's owner
/// hands it over by annotating it with the new TokenSource's uid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orphaned_secret_is_adopted_only_when_it_names_the_new_tokensource() {
    let env = Env::start().await;
    podero_credentials(&env).await;
    let mut ts = podero(&env, "keeper", "keeper-token");
    ts["spec"]["target"]["creationPolicy"] = json!("Orphan");
    env.create(ts.clone()).await;
    let first = env.wait_token("keeper-token", None).await;
    env.wait_ready("keeper", "True", "TokenValid").await;
    env.sources().delete("keeper", &Default::default()).await.unwrap();
    eventually("the TokenSource gone", WAIT, || async {
        let gone = env.sources().get_opt("keeper").await.map_err(|e| e.to_string())?.is_none();
        check(gone, (), "still there")
    })
    .await;

    env.create(ts).await;
    let m = env.wait_ready("keeper", "False", "SecretConflict").await;
    assert!(m.contains("keeper-token"), "{m}");
    assert_eq!(env.secret_data("keeper-token").await.and_then(|d| d.get("token").cloned()), Some(first.clone()));
    assert_eq!(env.fakes.calls(Endpoint::Podero), 1, "no request for a Secret that cannot be written");

    let uid = env.source("keeper").await.metadata.uid.unwrap();
    let old_hash = env
        .secrets()
        .get("keeper-token")
        .await
        .unwrap()
        .metadata
        .annotations
        .unwrap_or_default()
        .remove("tokensource.dev/data-hash");
    let handover = json!({"metadata": {"annotations": {"tokensource.dev/owner-uid": uid}}});
    env.secrets().patch("keeper-token", &PatchParams::default(), &Patch::Merge(&handover)).await.unwrap();
    // Adopted: written for the new TokenSource (its data hash salted with the new uid), which is
    // Ready. (Its token may be the one the Secret holds: identical requests share a token.)
    eventually("the Secret written for the new TokenSource", WAIT, || async {
        let s = env.secrets().get("keeper-token").await.map_err(|e| e.to_string())?;
        let ready = env.ready("keeper").await;
        let annotations = s.metadata.annotations.unwrap_or_default();
        let written = annotations.get("tokensource.dev/data-hash").is_some_and(|h| Some(h) != old_hash.as_ref());
        check(written && ready.as_ref().is_some_and(|r| r.0 == "True"), (), (annotations, ready))
    })
    .await;
}

/// Case 6 of issue 30: the operator's labels alone (which anyone who may write the Secret can
/// set) do not make a Secret the operator's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_with_only_the_operator_s_labels_is_not_adopted() {
    let env = Env::start().await;
    podero_credentials(&env).await;
    let labels = json!({"app.kubernetes.io/managed-by": "tokensource-operator", "tokensource.dev/name": "mimic"});
    foreign_secret(&env, "mimic-token", labels).await;
    env.create(podero(&env, "mimic", "mimic-token")).await;
    env.wait_ready("mimic", "False", "SecretConflict").await;
    assert_untouched(&env, "mimic-token").await;
    assert_eq!(env.fakes.calls(Endpoint::Podero), 0);
}

/// Case 6 of issue 30: the conditional writes cost nothing on the normal path: one Secret write
/// and one status write per renewal, measured with kubesim's request counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_is_one_secret_write_and_one_status_write() {
    let env = Env::start().await;
    let Some(sim) = sim_or_skip(&env) else { return };
    env.fakes.set_lifetime(Endpoint::Podero, Duration::from_secs(6));
    podero_credentials(&env).await;
    let secret_writes = || sim.faults().count("patch", "secrets") + sim.faults().count("create", "secrets");
    let before = secret_writes();
    env.create(podero(&env, "counted", "counted-token")).await;
    eventually("three tokens", Duration::from_secs(30), || async {
        let n = env.fakes.calls(Endpoint::Podero);
        check(n >= 3, (), n)
    })
    .await;
    // Settle: no request between two looks.
    let calls = loop {
        let calls = env.fakes.calls(Endpoint::Podero);
        tokio::time::sleep(Duration::from_millis(700)).await;
        if env.fakes.calls(Endpoint::Podero) == calls && env.ready("counted").await.is_some_and(|r| r.0 == "True") {
            break calls as u64;
        }
    };
    let secret_writes = secret_writes() - before;
    let status_writes = sim.faults().count("patch", "tokensources/status");
    eprintln!("{calls} tokens: {secret_writes} Secret writes, {status_writes} status writes");
    assert_eq!(secret_writes, calls, "{secret_writes} Secret writes for {calls} tokens");
    assert!(status_writes <= calls + 1, "{status_writes} status writes for {calls} tokens");
}

/// A token exchange sending a ServiceAccount token of `payments` minted for `audience`.
fn exchange(env: &Env, name: &str, audience: &str) -> Value {
    json!({"metadata": {"name": name}, "spec": {
        "type": "OAuth2",
        "oauth2": {
            "tokenURL": env.fakes.endpoint_url(Endpoint::TokenExchange),
            "grantType": "TokenExchange",
            "tokenExchange": {
                "serviceAccountToken": {"serviceAccountName": "payments", "audience": audience},
                "requestedTokenType": "urn:ietf:params:oauth:token-type:access_token"
            },
            "parameters": [{"name": "audience", "value": env.fakes.config().sts_audience}]
        },
        "target": {"name": format!("{name}-token")}
    }})
}

async fn payments_account(env: &Env) {
    let accounts: Api<ServiceAccount> = Api::namespaced(env.client.clone(), &env.ns);
    let sa = serde_json::from_value(json!({"metadata": {"name": "payments"}})).unwrap();
    accounts.create(&PostParams::default(), &sa).await.unwrap();
}

/// Whether the API server accepts `audience` as its own: on kubesim it is made to (as k3s's
/// does `k3s`); a real one must have been started with it in `--api-audiences`
/// (`TOKENSOURCE_CONTROLPLANE_API_AUDIENCES` for `tests/controlplane/run`).
async fn api_server_accepts(env: &Env, audience: &str) -> bool {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec, TokenReview, TokenReviewSpec};
    if let Some(sim) = &env.sim {
        let mut own = sim.api_audiences();
        own.push(audience.to_string());
        sim.set_api_audiences(&own.iter().map(String::as_str).collect::<Vec<_>>());
        return true;
    }
    let accounts: Api<ServiceAccount> = Api::namespaced(env.client.clone(), &env.ns);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![audience.into()],
            expiration_seconds: Some(600),
            bound_object_ref: None,
        },
        ..Default::default()
    };
    let Ok(minted) = accounts.create_token_request("payments", &PostParams::default(), &request).await else {
        return false;
    };
    let review = TokenReview {
        spec: TokenReviewSpec { token: minted.status.map(|s| s.token), audiences: None },
        ..Default::default()
    };
    let reviews: Api<TokenReview> = Api::all(env.client.clone());
    let accepted = reviews.create(&PostParams::default(), &review).await.ok().and_then(|r| r.status?.authenticated);
    if accepted != Some(true) {
        common::say(&format!(
            "skipped: this API server does not accept {audience:?} as its own; start it with it (TOKENSOURCE_CONTROLPLANE_API_AUDIENCES=https://kubernetes.default.svc.cluster.local,{audience})"
        ));
    }
    accepted == Some(true)
}

/// Case 4 of issue 30: a ServiceAccount token for an audience the API server itself accepts is
/// a credential for the cluster's API. The prefix rule (`https://kubernetes.default.svc...`)
/// misses k3s's and RKE2's `k3s` and `rke2` and whatever a cluster configures; the operator asks
/// the API server (a TokenReview without audiences) after minting, and sends nothing if it
/// accepts the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_account_token_the_api_server_accepts_is_never_sent() {
    let env = Env::start().await;
    env.grant("components/workload-identity").await;
    payments_account(&env).await;
    if !api_server_accepts(&env, "k3s").await {
        return;
    }
    let reviews = || env.sim.as_ref().map(|s| s.faults().count("create", "tokenreviews"));
    let before = reviews();
    env.create(exchange(&env, "k3s", "k3s")).await;
    let m = env.wait_ready("k3s", "False", "InvalidSpec").await;
    assert!(m.contains("\"k3s\"") && m.contains("Kubernetes API"), "{m}");
    assert_eq!(env.fakes.calls(Endpoint::TokenExchange), 0, "the token left the operator");
    assert!(env.secrets().get_opt("k3s-token").await.unwrap().is_none());
    if let (Some(before), Some(after)) = (before, reviews()) {
        assert!(after > before, "no TokenReview was made");
    }
}

/// Case 4 of issue 30: the check fails closed. Without the right to review tokens (or with the
/// API server failing), nothing is sent; once the review can be made, a token for the
/// provider's audience is reviewed, found not to be the API server's, and exchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_cannot_be_reviewed_is_not_sent() {
    let env = Env::start().await;
    let Some(sim) = &env.sim else {
        common::say(
            "kubesim only: the fake token service must reach the cluster's OIDC issuer, which only kubesim serves here",
        );
        return;
    };
    payments_account(&env).await;
    let audience = env.fakes.config().sts_audience;
    env.fakes.set_sts_federation(Some(fake_providers::federation::Federation {
        issuer: sim.service_account_issuer().to_string(),
        subject: format!("system:serviceaccount:{}:payments", env.ns),
        audience: audience.clone(),
    }));
    sim.faults().fail_next(Matcher::new("create", "tokenreviews"), 1, 403, None);
    env.create(exchange(&env, "gcp", &audience)).await;
    let m = env.wait_ready("gcp", "False", "ServiceAccountTokenFailed").await;
    assert!(m.contains("tokenreviews"), "{m}");
    assert_eq!(env.fakes.calls(Endpoint::TokenExchange), 0, "an unreviewed token was sent");
    // Retried: reviewed, not the API server's, sent.
    let token = env.wait_token("gcp-token", None).await;
    assert!(env.fakes.is_valid(&token));
    assert!(sim.faults().count("create", "tokenreviews") >= 2);
}

/// A ServiceAccount token the namespace already stores (a Secret of type
/// `kubernetes.io/service-account-token`, which the token controller fills with a token that
/// never expires) is never read as a credential: a tenant who may create TokenSources but not
/// read Secrets cannot send it to an endpoint of their choosing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_service_account_token_is_never_sent() {
    let env = Env::start().await;
    podero_credentials(&env).await;
    let stored: Secret = serde_json::from_value(json!({
        "metadata": {"name": "deployer-token", "annotations": {"kubernetes.io/service-account.name": "default"}},
        "type": "kubernetes.io/service-account-token",
    }))
    .unwrap();
    // On a real API server the token controller fills the token in, and deletes a Secret whose
    // ServiceAccount it has not seen yet (the namespace's `default` is created moments after
    // the namespace): create it again until it holds a token.
    let real = env.sim.is_none();
    eventually("a stored ServiceAccount token Secret", WAIT, || async {
        match env.secrets().get_opt("deployer-token").await.map_err(|e| e.to_string())? {
            None => {
                let _ = env.secrets().create(&PostParams::default(), &stored).await;
                Err("created it (again)".to_string())
            }
            Some(s) => {
                let filled = s.data.as_ref().is_some_and(|d| d.contains_key("token"));
                check(filled || !real, (), "no token filled in yet")
            }
        }
    })
    .await;
    let mut ts = podero(&env, "steal", "steal-token");
    ts["spec"]["oauth2"]["clientAuth"]["clientSecretRef"] = json!({"name": "deployer-token", "key": "token"});
    env.create(ts).await;
    let m = env.wait_ready("steal", "False", "CredentialsInvalid").await;
    assert!(m.contains("deployer-token") && m.contains("Kubernetes API"), "{m}");
    assert_eq!(env.fakes.calls(Endpoint::Podero), 0, "the stored token left the operator");
}
