//! GitHub App installation tokens: a JWT the operator signs with the App's key (RS256, iss = App
//! ID, at most 10 minutes) traded at a strict fake of GitHub's access-token endpoint, renewed
//! before the hour is up; a rotated key takes effect within seconds; a key GitHub does not know
//! is refused with GitHub's words.
#![cfg(test)]

mod common;

use std::time::Duration;

use common::{Env, WAIT, check, eventually};
use fake_providers::Endpoint;
use fake_providers::tls::fixtures;
use serde_json::{Value, json};

fn github_app(env: &Env, name: &str) -> Value {
    json!({"metadata": {"name": name}, "spec": {
        "type": "HTTP",
        "http": {
            "url": env.fakes.endpoint_url(Endpoint::GitHubApp),
            "method": "POST",
            "headers": [{"name": "Accept", "value": "application/vnd.github+json"}, {"name": "X-GitHub-Api-Version", "value": "2022-11-28"}],
            "auth": {"type": "JWT", "jwt": {"privateKeySecretRef": {"name": "github-app", "key": "private-key.pem"}, "issuer": {"value": "123456"}}},
            "body": {"type": "JSON", "json": {"permissions": {"contents": "read"}}}
        },
        "response": {"token": {"jsonPath": "$.token"}, "expiry": {"type": "ExpiresAt", "jsonPath": "$.expires_at", "format": "RFC3339"}},
        "target": {"name": format!("{name}-token"), "template": {"data": {
            "GITHUB_TOKEN": "{{ token }}",
            ".git-credentials": "https://x-access-token:{{ token }}@github.com"
        }}}
    }})
}

async fn key(env: &Env, pem: &[u8]) {
    env.put_secret("github-app", &[("private-key.pem", std::str::from_utf8(pem).unwrap())]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_installation_token_is_issued_renewed_and_follows_a_rotated_key() {
    let env = Env::start().await;
    env.fakes.set_lifetime(Endpoint::GitHubApp, Duration::from_secs(8));
    key(&env, fixtures::JWT_RSA_KEY).await;
    env.create(github_app(&env, "gh")).await;
    let first = env.wait_token("gh-token", None).await;
    assert!(first.starts_with("ghs_") && env.fakes.is_valid(&first), "{first}");
    let data = env.secret_data("gh-token").await.unwrap_or_default();
    assert_eq!(data.get("GITHUB_TOKEN"), Some(&first));
    assert_eq!(data.get(".git-credentials"), Some(&format!("https://x-access-token:{first}@github.com")));
    let status = env.status("gh").await.unwrap();
    let lifetime = status.expiration_time.unwrap().0.duration_since(status.last_renewal_time.unwrap().0);
    assert!(lifetime <= jiff::SignedDuration::from_secs(8), "the expiry is GitHub's expires_at: {lifetime:?}");

    // Renewed before it expires.
    let second = env.wait_token("gh-token", Some(&first)).await;
    assert!(env.fakes.is_valid(&second));

    // The App's key is rotated: GitHub knows the new one, the Secret gets it; a token signed
    // with it follows within seconds.
    env.fakes.register_github_key(fixtures::JWT_RSA_KEY_2);
    let calls = env.fakes.calls(Endpoint::GitHubApp);
    key(&env, fixtures::JWT_RSA_KEY_2).await;
    let rotated = env.wait_token("gh-token", Some(&second)).await;
    assert!(env.fakes.calls(Endpoint::GitHubApp) > calls);
    assert!(env.fakes.is_valid(&rotated));
    assert!(env.fakes.rejections().is_empty(), "{:?}", env.fakes.rejections());
    env.assert_nothing_leaks(&[], &["gh-token"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_github_does_not_know_is_refused_with_its_words() {
    let env = Env::start().await;
    key(&env, fixtures::JWT_RSA_KEY_2).await;
    env.create(github_app(&env, "stranger")).await;
    let message = env.wait_ready("stranger", "False", "ProviderRejected").await;
    assert!(message.contains("401") && message.contains("A JSON web token could not be decoded"), "{message}");
    assert!(env.secret_data("stranger-token").await.is_none());
    let events = eventually("a Warning Event", WAIT, || async {
        let ev = env.events("stranger").await;
        check(ev.iter().any(|e| e.0 == "Warning" && e.1 == "ProviderRejected"), ev.clone(), ev)
    })
    .await;
    assert!(!events.is_empty());
}

/// A Google service-account TokenSource: the JSON key file as is, the JWT-bearer grant.
fn google(env: &Env, name: &str) -> Value {
    json!({"metadata": {"name": name}, "spec": {
        "type": "HTTP",
        "http": {
            "url": env.fakes.endpoint_url(Endpoint::GoogleToken),
            "method": "POST",
            "auth": {"type": "JWT", "jwt": {
                "serviceAccountKeySecretRef": {"name": "gsa", "key": "key.json"},
                "sendAs": "AssertionParameter",
                "lifetime": "1h",
                "claims": {"scope": "https://www.googleapis.com/auth/cloud-platform"}
            }},
            "body": {"type": "Form", "form": [{"name": "grant_type", "value": "urn:ietf:params:oauth:grant-type:jwt-bearer"}]}
        },
        "target": {"name": format!("{name}-token")}
    }})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_google_service_account_key_file_gets_access_tokens_through_the_jwt_bearer_grant() {
    let env = Env::start().await;
    env.fakes.set_lifetime(Endpoint::GoogleToken, Duration::from_secs(8));
    let file = env.fakes.google_key_file("key-1", fixtures::JWT_RSA_KEY);
    env.put_secret("gsa", &[("key.json", &file)]).await;
    env.create(google(&env, "gcp")).await;
    let first = env.wait_token("gcp-token", None).await;
    assert!(first.starts_with("ya29.") && env.fakes.is_valid(&first), "{first}");
    let second = env.wait_token("gcp-token", Some(&first)).await;
    assert!(env.fakes.is_valid(&second), "renewed before it expired");
    assert!(env.fakes.rejections().is_empty(), "{:?}", env.fakes.rejections());

    // A new key of the account, downloaded into the Secret: used within seconds.
    env.fakes.add_google_key("key-2", fixtures::JWT_RSA_KEY_2);
    env.put_secret("gsa", &[("key.json", &env.fakes.google_key_file("key-2", fixtures::JWT_RSA_KEY_2))]).await;
    let rotated = env.wait_token("gcp-token", Some(&second)).await;
    assert!(env.fakes.is_valid(&rotated));

    // A key file whose key Google does not know: Google's words, nothing leaks.
    env.put_secret("gsa-bad", &[("key.json", &env.fakes.google_key_file("key-9", fixtures::JWT_RSA_KEY_2))]).await;
    let mut bad = google(&env, "gcp-bad");
    bad["spec"]["http"]["auth"]["jwt"]["serviceAccountKeySecretRef"]["name"] = json!("gsa-bad");
    env.create(bad).await;
    let message = env.wait_ready("gcp-bad", "False", "ProviderRejected").await;
    assert!(message.contains("invalid_grant: Invalid JWT Signature."), "{message}");
    let pem = std::str::from_utf8(fixtures::JWT_RSA_KEY_2).unwrap();
    let body = pem.lines().nth(1).unwrap_or_default();
    env.assert_nothing_leaks(&[body], &["gcp-token"]).await;
}
