//! Secretless workload identity: the operator requests a ServiceAccount token (TokenRequest API)
//! for every token request and sends it as Entra ID's federated client assertion or as the
//! `subject_token` of an RFC 8693 exchange. The fakes trust the cluster's issuer and verify the
//! token against the keys its OIDC discovery publishes, as the real federations do; nothing
//! long-lived is stored anywhere.
//!
//! On kubesim and on the real API server: there the issuer is the API server's own address,
//! its discovery is open to anyone (`tests/controlplane/run`), and the fakes trust its CA.
#![cfg(test)]

mod common;

use std::time::Duration;

use common::{Env, WAIT, check, eventually};
use fake_providers::Endpoint;
use fake_providers::federation::Federation;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};

const ENTRA_AUDIENCE: &str = "api://AzureADTokenExchange";
/// How kubesim's ServiceAccount tokens begin: `{"alg":"RS256","kid":"` in base64url.
const SA_TOKEN_PREFIX: &str = "eyJhbGciOiJSUzI1NiIsImtpZCI6";

/// The Env with what federation needs: on a real API server, the workload-identity component's
/// RBAC for the operator, the fakes trusting the cluster's CA, and the issuer as its discovery
/// names it; on kubesim, kubesim's issuer.
async fn identity_env() -> (Env, String) {
    let env = Env::start().await;
    if env.sim.is_none() {
        env.grant("components/workload-identity").await;
    }
    let issuer = common::federation_issuer(env.sim.as_ref(), &env.fakes);
    (env, issuer)
}

async fn service_account(env: &Env, name: &str) {
    let api: Api<ServiceAccount> = Api::namespaced(env.client.clone(), &env.ns);
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    api.create(&PostParams::default(), &sa).await.unwrap();
}

fn federation(env: &Env, issuer: &str, service_account: &str, audience: &str) -> Federation {
    Federation {
        issuer: issuer.into(),
        subject: format!("system:serviceaccount:{}:{service_account}", env.ns),
        audience: audience.into(),
    }
}

fn entra(env: &Env, name: &str, service_account: &str) -> Value {
    json!({"metadata": {"name": name}, "spec": {
        "type": "OAuth2",
        "oauth2": {
            "tokenURL": env.fakes.endpoint_url(Endpoint::EntraToken),
            "clientID": {"value": env.fakes.config().entra_client_id},
            "clientAuth": {"type": "ServiceAccountToken", "serviceAccountToken": {
                "serviceAccountName": service_account, "audience": ENTRA_AUDIENCE
            }},
            "scopes": ["https://vault.azure.net/.default"]
        },
        "target": {"name": format!("{name}-token")}
    }})
}

/// TokenRequests the API server answered for one ServiceAccount (kubesim's request log; `None`
/// on a real API server).
fn token_requests(env: &Env, service_account: &str) -> Option<usize> {
    let sim = env.sim.as_ref()?;
    let log = sim.faults().requests();
    Some(
        log.iter()
            .filter(|r| r.resource == "serviceaccounts/token" && r.name == service_account && r.code == 201)
            .count(),
    )
}

/// No ServiceAccount token in any Secret, Event, status or annotation of the namespace.
async fn assert_no_service_account_token_kept(env: &Env) {
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.ns);
    for s in secrets.list(&ListParams::default()).await.unwrap().items {
        let text = serde_json::to_string(&s.data).unwrap_or_default()
            + &serde_json::to_string(&s.string_data).unwrap_or_default();
        let decoded: String =
            s.data.iter().flat_map(|d| d.values()).map(|v| String::from_utf8_lossy(&v.0).into_owned()).collect();
        assert!(
            !text.contains(SA_TOKEN_PREFIX) && !decoded.contains(SA_TOKEN_PREFIX),
            "Secret {} holds a ServiceAccount token",
            s.name_any()
        );
    }
    env.assert_nothing_leaks(&[SA_TOKEN_PREFIX], &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entra_issues_a_token_for_a_service_account_token_and_it_is_renewed() {
    let (env, issuer) = identity_env().await;
    env.fakes.set_lifetime(Endpoint::EntraToken, Duration::from_secs(8));
    service_account(&env, "payments").await;
    env.fakes.set_entra_federation(Some(federation(&env, &issuer, "payments", ENTRA_AUDIENCE)));
    env.create(entra(&env, "vault", "payments")).await;
    let first = env.wait_token("vault-token", None).await;
    assert!(env.fakes.is_valid(&first));
    let second = env.wait_token("vault-token", Some(&first)).await;
    assert!(env.fakes.is_valid(&second), "renewed before it expired");
    assert!(env.fakes.rejections().is_empty(), "{:?}", env.fakes.rejections());
    // One fresh ServiceAccount token per provider call, none kept.
    let calls = env.fakes.calls(Endpoint::EntraToken);
    assert!(calls >= 2, "{calls} calls");
    if let Some(requested) = token_requests(&env, "payments") {
        assert_eq!(requested, calls, "{requested} ServiceAccount tokens for {calls} calls");
    }
    assert_no_service_account_token_kept(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_account_the_federation_does_not_trust_is_refused_with_its_words() {
    let (env, issuer) = identity_env().await;
    service_account(&env, "payments").await;
    service_account(&env, "intruder").await;
    env.fakes.set_entra_federation(Some(federation(&env, &issuer, "payments", ENTRA_AUDIENCE)));
    env.create(entra(&env, "stranger", "intruder")).await;
    let message = env.wait_ready("stranger", "False", "ProviderRejected").await;
    let subject = format!("system:serviceaccount:{}:intruder", env.ns);
    assert!(message.contains("AADSTS700213") && message.contains(&subject), "{message}");
    assert!(message.contains("service-account issuer"), "the hint says what to check: {message}");
    assert!(env.secret_data("stranger-token").await.is_none());
    assert_no_service_account_token_kept(&env).await;

    // The federation learns to trust it; a manual refresh skips the backoff of a refusal.
    env.fakes.set_entra_federation(Some(federation(&env, &issuer, "intruder", ENTRA_AUDIENCE)));
    let now = jiff::Timestamp::now().to_string();
    let patch = json!({"metadata": {"annotations": {"tokensource.dev/refresh-requested-at": now}}});
    env.sources().patch("stranger", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let token = env.wait_token("stranger-token", None).await;
    assert!(env.fakes.is_valid(&token));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_service_account_is_named_and_its_creation_is_picked_up() {
    let (env, issuer) = identity_env().await;
    env.fakes.set_entra_federation(Some(federation(&env, &issuer, "late", ENTRA_AUDIENCE)));
    env.create(entra(&env, "early", "late")).await;
    let message = env.wait_ready("early", "False", "ServiceAccountTokenFailed").await;
    assert!(message.contains("ServiceAccount \"late\" not found"), "{message}");
    assert_eq!(env.fakes.calls(Endpoint::EntraToken), 0, "nothing is sent without a ServiceAccount token");
    service_account(&env, "late").await;
    let token = env.wait_token("early-token", None).await;
    assert!(env.fakes.is_valid(&token));
    let events = eventually("a Warning Event", WAIT, || async {
        let ev = env.events("early").await;
        check(ev.iter().any(|e| e.0 == "Warning" && e.1 == "ServiceAccountTokenFailed"), ev.clone(), ev)
    })
    .await;
    assert!(events.iter().any(|e| e.2.contains("not found")), "{events:?}");
}

fn exchange(env: &Env, name: &str, service_account: &str, token_audience: &str) -> Value {
    json!({"metadata": {"name": name}, "spec": {
        "type": "OAuth2",
        "oauth2": {
            "tokenURL": env.fakes.endpoint_url(Endpoint::TokenExchange),
            "grantType": "TokenExchange",
            "tokenExchange": {
                "serviceAccountToken": {"serviceAccountName": service_account, "audience": token_audience},
                "requestedTokenType": "urn:ietf:params:oauth:token-type:access_token"
            },
            "scopes": ["https://www.googleapis.com/auth/cloud-platform"],
            "parameters": [{"name": "audience", "value": env.fakes.config().sts_audience}]
        },
        "target": {"name": format!("{name}-token")}
    }})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_exchange_trades_the_service_account_token_and_checks_its_audience() {
    let (env, issuer) = identity_env().await;
    env.fakes.set_lifetime(Endpoint::TokenExchange, Duration::from_secs(8));
    service_account(&env, "reporting").await;
    let audience = env.fakes.config().sts_audience;
    env.fakes.set_sts_federation(Some(federation(&env, &issuer, "reporting", &audience)));
    env.create(exchange(&env, "gcp", "reporting", &audience)).await;
    let first = env.wait_token("gcp-token", None).await;
    assert!(first.starts_with("ya29.sts.") && env.fakes.is_valid(&first), "{first}");
    let second = env.wait_token("gcp-token", Some(&first)).await;
    assert!(env.fakes.is_valid(&second));
    assert!(env.fakes.rejections().is_empty(), "{:?}", env.fakes.rejections());

    // A ServiceAccount token minted for another audience is refused, in the service's words.
    env.create(exchange(&env, "elsewhere", "reporting", "https://other.example.com")).await;
    let message = env.wait_ready("elsewhere", "False", "ProviderRejected").await;
    assert!(message.contains("invalid_grant") && message.contains("does not match this provider"), "{message}");
    assert_no_service_account_token_kept(&env).await;
}
