//! `kubectl tokensource`, run through the real kubectl (which finds the plugin on PATH) against
//! kubesim, with the controller running: manual refresh, its guards, and `status`.
#![cfg(test)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Env, WAIT, check, eventually, podero, podero_credentials};
use fake_providers::Endpoint;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use serde_json::json;

const PLUGIN: &str = env!("CARGO_BIN_EXE_kubectl-tokensource");

/// Runs `kubectl <args>` with the plugin's directory first on PATH.
fn kubectl(env: &Env, args: &[&str]) -> (bool, String, String) {
    let dir = std::path::Path::new(PLUGIN).parent().unwrap();
    let path = format!("{}:{}", dir.display(), std::env::var("PATH").unwrap_or_default());
    let kubectl = std::env::var("KUBECTL").unwrap_or_else(|_| "/usr/bin/kubectl".into());
    let out = Command::new(kubectl)
        .args(args)
        .env("PATH", path)
        .env("KUBECONFIG", env.kubeconfig_path())
        .output()
        .expect("kubectl is required for this test");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_fetches_once_per_request_even_during_a_backoff_and_status_tells_the_story() {
    let env = Env::start().await;
    podero_credentials(&env).await;
    env.create(podero(&env, "api", "api-token")).await;
    let first = env.wait_token("api-token", None).await;
    assert_eq!(env.fakes.calls(Endpoint::Podero), 1);

    // A manual refresh while the token is valid: one new token, recorded in status.
    let (ok, out, err) =
        tokio::task::block_in_place(|| kubectl(&env, &["tokensource", "refresh", "api", "-n", &env.ns]));
    assert!(ok, "{err}");
    assert!(out.contains("tokensource.tokensource.dev/api refresh requested at 20"), "{out}");
    let second = env.wait_token("api-token", Some(&first)).await;
    let handled = eventually("the request recorded in status", WAIT, || async {
        let s = env.status("api").await?;
        check(s.last_refresh_request.is_some(), s.last_refresh_request.clone(), s)
    })
    .await;
    let source = env.source("api").await;
    assert_eq!(handled.as_deref(), source.refresh_requested());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(env.fakes.calls(Endpoint::Podero), 2, "one request per value, not one per reconcile");
    assert!(env.events("api").await.iter().any(|e| e.1 == "ManualRefresh" && e.0 == "Normal"));

    // During a backoff: the provider is down and asks for a minute; a refresh goes through now.
    env.fakes.fail_next(Endpoint::Podero, 1, 503, json!({"error": "temporarily_unavailable"}), Some(60));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    tokio::task::block_in_place(|| kubectl(&env, &["tokensource", "refresh", "--all", "-n", &env.ns]));
    env.wait_ready("api", "True", "TokenValid").await;
    eventually("the failed attempt in status", WAIT, || async {
        let s = env.status("api").await?;
        check(s.failed_renewal_attempts == 1, (), s)
    })
    .await;
    assert_eq!(env.fakes.calls(Endpoint::Podero), 3);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    tokio::task::block_in_place(|| kubectl(&env, &["tokensource", "refresh", "api", "-n", &env.ns]));
    let third = env.wait_token("api-token", Some(&second)).await;
    assert_eq!(env.fakes.calls(Endpoint::Podero), 4, "the refresh did not wait for the backoff");
    eventually("the recovery", WAIT, || async {
        let s = env.status("api").await?;
        check(s.failed_renewal_attempts == 0, (), s)
    })
    .await;

    // A value that is not a time is refused with a Warning Event, and asks for nothing.
    let (ok, _, err) = tokio::task::block_in_place(|| {
        kubectl(
            &env,
            &[
                "annotate",
                "--overwrite",
                "tokensource",
                "api",
                "tokensource.dev/refresh-requested-at=yesterday",
                "-n",
                &env.ns,
            ],
        )
    });
    assert!(ok, "{err}");
    eventually("the warning", WAIT, || async {
        let events = env.events("api").await;
        check(events.iter().any(|e| e.1 == "RefreshRequestInvalid" && e.2.contains("\"yesterday\"")), (), events)
    })
    .await;
    assert_eq!(env.fakes.calls(Endpoint::Podero), 4);

    // Two consumers: one reads the token once at start, one through a volume.
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.ns);
    let pod = json!({"metadata": {"name": "app"}, "spec": {
    "volumes": [{"name": "tok", "secret": {"secretName": "api-token"}}],
    "containers": [
        {"name": "reader", "image": "x", "env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "api-token", "key": "token"}}}]},
        {"name": "mounter", "image": "x", "volumeMounts": [{"name": "tok", "mountPath": "/var/run/token"}]}
    ]}});
    pods.create(&PostParams::default(), &serde_json::from_value(pod).unwrap()).await.unwrap();

    let (ok, out, err) =
        tokio::task::block_in_place(|| kubectl(&env, &["tokensource", "status", "api", "-n", &env.ns]));
    assert!(ok, "{err}");
    eprintln!("{out}");
    for line in [
        &format!("TokenSource {}/api", env.ns),
        "Ready     True   TokenValid",
        "Degraded  False  AsExpected",
        "Token expires:     20",
        "(in 59m)",
        "Next refresh:      20",
        "keys: expires_at (",
        "token (",
        "pod/app container reader: env (read once at start)  ! never sees a renewed token",
        "pod/app container mounter: volume mount (updated in place)\n",
        "ManualRefresh",
        "RefreshRequestInvalid",
    ] {
        assert!(out.contains(line), "{line:?} missing from:\n{out}");
    }
    for token in [&first, &second, &third] {
        assert!(!out.contains(token.as_str()), "a token reached the output");
    }
    let (ok, _, err) = tokio::task::block_in_place(|| kubectl(&env, &["tokensource", "status", "nope", "-n", &env.ns]));
    assert!(!ok && err.contains("not found"), "{err}");
    let (ok, _, err) = tokio::task::block_in_place(|| kubectl(&env, &["tokensource", "refresh", "-n", &env.ns]));
    assert!(!ok && err.contains("--all or -l SELECTOR"), "{err}");
}

/// Writes `ts` to a file and returns it with the `kubectl tokensource check` arguments for it
/// (the fakes are on loopback, over http).
fn check_args(env: &Env, name: &str, ts: &serde_json::Value) -> (std::path::PathBuf, Vec<String>) {
    let file = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{}-{name}.yaml", env.ns));
    std::fs::write(&file, ts.to_string()).unwrap();
    let path = file.to_string_lossy().to_string();
    let args = ["tokensource", "check", "-f", &path, "-n", &env.ns]
        .into_iter()
        .chain(["--allow-insecure-http", "--allow-endpoint-cidrs", "127.0.0.1/32"])
        .map(String::from)
        .collect();
    (file, args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_sends_the_request_explains_the_answer_and_writes_nothing() {
    let env = Env::start().await;
    if env.kubesim_only("kubesim's request log proves the check writes nothing") {
        return;
    }
    podero_credentials(&env).await;
    let sim = env.sim.as_ref().expect("kubesim").faults().clone();
    let mut ts = podero(&env, "dry", "dry-token");
    ts["apiVersion"] = json!("tokensource.dev/v1alpha1");
    ts["kind"] = json!("TokenSource");
    let (file, base) = check_args(&env, "dry", &ts);
    let base: Vec<&str> = base.iter().map(String::as_str).collect();
    sim.clear_requests();

    let (ok, out, err) = tokio::task::block_in_place(|| kubectl(&env, &base));
    assert!(ok, "{out}{err}");
    eprintln!("{out}");
    for line in [
        "Request:  POST http://127.0.0.1:",
        "Answer:   a token (Bearer, ",
        "from the reply's expires_in (seconds from now)",
        "Scopes:   read write",
        "Renewal:  20",
        "First:    a new TokenSource's first token, or one after a change, renews at a time spread from 20",
        "Secret:   \"dry-token\" (Opaque) would hold: expires_at, scope, token, token_type",
        "Nothing was written to the cluster.",
    ] {
        assert!(out.contains(line), "{line:?} missing from:\n{out}");
    }
    // The first renewal's window: from a quarter of the keep time to the regular renewal.
    let first = out.lines().find(|l| l.starts_with("First:")).expect("a First: line");
    let times: Vec<jiff::Timestamp> = first.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    assert_eq!(times.len(), 2, "{first}");
    let renewal: jiff::Timestamp = out
        .lines()
        .find_map(|l| l.strip_prefix("Renewal:  ")?.split_whitespace().next()?.parse().ok())
        .expect("a Renewal: time");
    // The regular renewal (its jitter makes it no later) ends the window, a quarter of the keep
    // time after issue starts it.
    assert!(times[0] < renewal && renewal <= times[1], "{renewal} outside {first}");
    assert_eq!(env.fakes.calls(Endpoint::Podero), 1, "one real request");

    // A wrong secret given on the command line: the refusal, and how to fix it; never the secret.
    let mut wrong = base.to_vec();
    wrong.extend(["--from-literal", "podero-credentials/client_secret=wrong-secret-4242"]);
    let (ok, out, err) = tokio::task::block_in_place(|| kubectl(&env, &wrong));
    assert!(!ok, "{out}");
    assert!(out.contains("Failed:   token endpoint answered 401"), "{out}");
    assert!(out.contains("Fix:      check the client id and secret") && out.contains("ClientSecretPost"), "{out}");
    assert!(!out.contains("wrong-secret-4242") && !err.contains("wrong-secret-4242"), "a secret was printed");

    // The form body Podero does not take.
    let mut form = ts.clone();
    form["spec"]["oauth2"]["bodyType"] = json!("Form");
    std::fs::write(&file, form.to_string()).unwrap();
    let (ok, out, _) = tokio::task::block_in_place(|| kubectl(&env, &base));
    eprintln!("{out}");
    assert!(!ok && out.contains("Failed:   token endpoint answered 400"), "{out}");
    assert!(out.contains("Fix:      the provider may expect a JSON body: try oauth2.bodyType JSON"), "{out}");

    // A provider that counts milliseconds in expires_in: the lifetime is named as suspicious.
    env.fakes.set_lifetime(Endpoint::Podero, Duration::from_secs(3_600_000));
    std::fs::write(&file, ts.to_string()).unwrap();
    let (ok, out, _) = tokio::task::block_in_place(|| kubectl(&env, &base));
    assert!(ok && out.contains("Note:     a lifetime of 41d is unusual") && out.contains("milliseconds"), "{out}");

    // Nothing was written by any of it.
    let writes: Vec<_> = sim.requests().into_iter().filter(|r| r.is_successful_write()).collect();
    assert!(writes.is_empty(), "{writes:?}");
    assert!(env.secret_data("dry-token").await.is_none());
}

/// `check` of a workload identity TokenSource requests the ServiceAccount token with the user's
/// own rights, sends it, and prints neither it nor the issued token's secret parts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_requests_the_service_account_token_of_a_workload_identity_flow() {
    let env = Env::start().await;
    if env.kubesim_only("kubesim's request log counts the TokenRequests the check makes") {
        return;
    }
    let sim = env.sim.as_ref().expect("kubesim");
    let sa: k8s_openapi::api::core::v1::ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "payments"}})).unwrap();
    kube::Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(env.client.clone(), &env.ns)
        .create(&Default::default(), &sa)
        .await
        .unwrap();
    env.fakes.set_entra_federation(Some(fake_providers::federation::Federation {
        issuer: sim.service_account_issuer().to_string(),
        subject: format!("system:serviceaccount:{}:payments", env.ns),
        audience: "api://AzureADTokenExchange".into(),
    }));
    let ts = json!({"apiVersion": "tokensource.dev/v1alpha1", "kind": "TokenSource", "metadata": {"name": "wi"},
        "spec": {"type": "OAuth2", "oauth2": {
            "tokenURL": env.fakes.endpoint_url(Endpoint::EntraToken),
            "clientID": {"value": env.fakes.config().entra_client_id},
            "clientAuth": {"type": "ServiceAccountToken", "serviceAccountToken": {"serviceAccountName": "payments", "audience": "api://AzureADTokenExchange"}},
            "scopes": ["https://vault.azure.net/.default"]},
        "target": {"name": "wi-token"}}});
    let (_, args) = check_args(&env, "wi", &ts);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, out, err) = tokio::task::block_in_place(|| kubectl(&env, &args));
    assert!(ok && out.contains("Answer:   a token (Bearer, "), "{out}{err}");
    assert_eq!(env.fakes.calls(Endpoint::EntraToken), 1);
    assert!(env.fakes.rejections().is_empty(), "{:?}", env.fakes.rejections());
    let requested = sim.faults().requests().iter().filter(|r| r.resource == "serviceaccounts/token").count();
    assert_eq!(requested, 1, "one ServiceAccount token, requested by the plugin");
    // kubesim's tokens begin with {"alg":"RS256","kid":" in base64url.
    assert!(!out.contains("eyJhbGciOiJSUzI1NiIsImtpZCI6") && !err.contains("eyJhbGciOiJSUzI1NiIsImtpZCI6"));
}
