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

use common::{Env, podero, podero_credentials};
use fake_providers::Endpoint;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
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
