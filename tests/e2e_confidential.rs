//! End to end: what a tenant may not read or lose. A token endpoint that echoes what it received
//! must not get a secret, in any encoding, into status, Events, metrics or logs.

#![cfg(test)]

mod common;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use common::{Env, WAIT, check, eventually, podero, podero_credentials};
use fake_providers::Endpoint;
use kube::api::ListParams;
use serde_json::json;

/// A client secret with characters that every encoding changes.
const SECRET: &str = "s3cr3t+/= \"quoted\" & ünïcode";
const CLIENT_ID: &str = "echo-client";
const STATIC_TOKEN: &str = "static-bearer-token-0042";

/// The secrets' textual forms: as is, form- and percent-encoded, JSON-escaped, and the Basic pair.
fn needles() -> Vec<String> {
    let mut out = vec![format!("{CLIENT_ID}:{SECRET}")];
    for s in [SECRET, STATIC_TOKEN] {
        out.push(s.to_string());
        out.push(url::form_urlencoded::byte_serialize(s.as_bytes()).collect());
        out.push(serde_json::to_string(s).unwrap().trim_matches('"').to_string());
    }
    out
}

/// `text` and what every base64-looking run in it decodes to, in each alphabet and at each
/// alignment: a secret hidden in any base64 shows up in one of these.
fn views(text: &str) -> Vec<String> {
    let mut out = vec![text.to_string()];
    let alphabet = |c: char| c.is_ascii_alphanumeric() || "+/=-_".contains(c);
    for run in text.split(|c: char| !alphabet(c)).filter(|r| r.len() >= 8) {
        let run = run.trim_end_matches('=');
        for start in 0..4.min(run.len()) {
            for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
                let part = &run[start..];
                let usable = part.len() - part.len() % 4;
                for candidate in [part, &part[..usable]] {
                    if let Ok(bytes) = engine.decode(candidate) {
                        out.push(String::from_utf8_lossy(&bytes).to_string());
                    }
                }
            }
        }
    }
    out
}

fn assert_no_secret(haystack: &str, what: &str) {
    let views = views(haystack);
    for needle in needles() {
        for v in &views {
            if let Some(at) = v.find(&needle) {
                let around: String = v[at.saturating_sub(60)..].chars().take(160).collect();
                panic!("a secret reached {what} as {needle:?}: …{around}…");
            }
        }
    }
}

async fn echo_sources(env: &Env) -> Vec<String> {
    env.put_secret("echo-credentials", &[("client_secret", SECRET), ("token", STATIC_TOKEN)]).await;
    let url = |how: &str| format!("{}?as={how}", env.fakes.endpoint_url(Endpoint::Echo));
    let mut names = vec![];
    for how in ["raw", "form", "base64", "base64url", "authorization"] {
        for (auth, client_auth) in [
            (
                "basic",
                json!({"type": "ClientSecretBasic", "clientSecretRef": {"name": "echo-credentials", "key": "client_secret"}}),
            ),
            (
                "post",
                json!({"type": "ClientSecretPost", "clientSecretRef": {"name": "echo-credentials", "key": "client_secret"}}),
            ),
        ] {
            let name = format!("echo-{how}-{auth}");
            env.create(json!({
                "metadata": {"name": name},
                "spec": {
                    "type": "OAuth2",
                    "oauth2": {"tokenURL": url(how), "clientID": {"value": CLIENT_ID}, "clientAuth": client_auth},
                    "target": {"name": format!("{name}-token")}
                }
            }))
            .await;
            names.push(name);
        }
        let name = format!("echo-{how}-bearer");
        env.create(json!({
            "metadata": {"name": name},
            "spec": {
                "type": "HTTP",
                "http": {
                    "url": url(how),
                    "auth": {"type": "Bearer", "bearer": {"tokenSecretRef": {"name": "echo-credentials", "key": "token"}}},
                    "body": {"type": "JSON", "json": {"secret": "{{ s }}"}, "values": [{"name": "s", "valueFrom": {"secretKeyRef": {"name": "echo-credentials", "key": "client_secret"}}}]}
                },
                "target": {"name": format!("{name}-token")}
            }
        }))
        .await;
        names.push(name);
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_echoing_endpoint_gets_no_secret_into_status_events_or_metrics() {
    let env = Env::start().await;
    let names = echo_sources(&env).await;
    for name in &names {
        let m = env.wait_ready(name, "False", "ProviderRejected").await;
        assert!(m.contains("401") && m.contains("invalid_client"), "{name}: {m}");
    }
    let raw = env.status("echo-raw-basic").await.unwrap();
    let degraded = raw.conditions.iter().find(|c| c.type_ == "Degraded").unwrap();
    assert!(degraded.message.contains("[redacted]"), "the echo was there, and masked: {}", degraded.message);

    let mut haystack = String::new();
    for ts in env.sources().list(&ListParams::default()).await.unwrap().items {
        haystack.push_str(&serde_json::to_string(&ts.status).unwrap());
    }
    for name in &names {
        for (_, reason, note) in env.events(name).await {
            haystack.push_str(&reason);
            haystack.push_str(&note);
        }
    }
    haystack.push_str(&env.metrics.encode());
    assert_no_secret(&haystack, "status, Events or metrics");
    assert!(env.fakes.calls(Endpoint::Echo) >= names.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_level_logs_of_the_real_binary_hold_no_secret_and_no_token() {
    let mut env = Env::start().await;
    env.stop_operator().await;
    let kubeconfig = common::operator_kubeconfig(&env.client, &env.kubeconfig_path(), env.sim.is_none()).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut operator = std::process::Command::new(env!("CARGO_BIN_EXE_tokensource-operator"))
        .args(["run", "--namespace", &env.ns, "--allow-insecure-http", "--allow-endpoint-cidrs", "127.0.0.1/32"])
        .args(["--log-format", "json"])
        .args(["--log-level", "trace", "--admin-addr", &format!("127.0.0.1:{port}")])
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let logs = operator.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::BufReader::new(logs), &mut text).map(|_| text)
    });
    let names = echo_sources(&env).await;
    for name in &names {
        env.wait_ready(name, "False", "ProviderRejected").await;
    }
    common::podero_credentials(&env).await;
    env.create(common::podero(&env, "issued", "issued-token")).await;
    let token = env.wait_token("issued-token", None).await;
    env.wait_ready("issued", "True", "TokenValid").await;
    let _ = std::process::Command::new("kill").args(["-TERM", &operator.id().to_string()]).status();
    let _ = operator.wait();
    let logs = reader.join().unwrap().unwrap();
    assert!(
        logs.lines().count() > 100 && logs.contains("TRACE"),
        "trace logging was on: {} lines",
        logs.lines().count()
    );
    assert_no_secret(&logs, "the operator's trace logs");
    let podero_secret = env.fakes.config().podero.secret;
    for needle in [token.as_str(), podero_secret.as_str()] {
        assert!(!views(&logs).iter().any(|v| v.contains(needle)), "a token or the Podero secret reached the logs");
    }
}

/// A listener that counts the connections it gets.
async fn counting_listener(
    addr: &str,
) -> Option<(std::net::SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>)> {
    let listener = tokio::net::TcpListener::bind(addr).await.ok()?;
    let local = listener.local_addr().ok()?;
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((_socket, _)) = listener.accept().await {
            seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    });
    Some((local, count))
}

fn http_source(name: &str, url: &str) -> serde_json::Value {
    json!({"metadata": {"name": name}, "spec": {"type": "HTTP", "http": {"url": url}, "target": {"name": format!("{name}-token")}}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_endpoints_are_refused_without_a_connection() {
    let mut env = Env::start().await;
    // The operator allows 127.0.0.1/32 only; every other loopback form is refused.
    let (v4, v4_count) = counting_listener("127.0.0.2:0").await.expect("127.0.0.2 is a loopback address");
    let port = v4.port();
    let mut cases = vec![
        ("dotted", format!("http://127.0.0.2:{port}/token"), "127.0.0.2"),
        ("mapped", format!("http://[::ffff:127.0.0.2]:{port}/token"), "127.0.0.2"),
        ("decimal", format!("http://2130706434:{port}/token"), "127.0.0.2"),
        ("hex", format!("http://0x7f000002:{port}/token"), "127.0.0.2"),
    ];
    let v6 = counting_listener("[::1]:0").await;
    match &v6 {
        Some((addr, _)) => cases.push(("ipv6", format!("http://[::1]:{}/token", addr.port()), "::1")),
        None => eprintln!("no IPv6 loopback here; the [::1] case is covered by the unit tests only"),
    }
    for (name, url, address) in &cases {
        env.create(http_source(name, url)).await;
        let m = env.wait_ready(name, "False", "EndpointNotAllowed").await;
        assert!(m.contains(address) && m.contains("loopback"), "{name}: {m}");
    }
    // A name is resolved and every address vetted: with no network allowed, localhost is refused.
    let (local, local_count) = counting_listener("127.0.0.1:0").await.unwrap();
    env.stop_operator().await;
    env.config.transport = Default::default();
    env.start_operator();
    env.create(http_source("named", &format!("http://localhost:{}/token", local.port()))).await;
    let m = env.wait_ready("named", "False", "EndpointNotAllowed").await;
    assert!(m.contains("localhost resolves to 127.0.0.1, a loopback address"), "{m}");
    let counts = (
        v4_count.load(std::sync::atomic::Ordering::Relaxed),
        v6.map(|(_, c)| c.load(std::sync::atomic::Ordering::Relaxed)),
        local_count.load(std::sync::atomic::Ordering::Relaxed),
    );
    assert_eq!(counts, (0, counts.1.map(|_| 0), 0), "no connection was attempted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_or_edited_secret_is_restored_without_a_new_token() {
    let mut env = Env::start().await;
    common::podero_credentials(&env).await;
    env.create(common::podero(&env, "kept", "kept-token")).await;
    let token = env.wait_token("kept-token", None).await;
    env.wait_ready("kept", "True", "TokenValid").await;

    // Deleted: written back with the same token.
    env.secrets().delete("kept-token", &Default::default()).await.unwrap();
    common::eventually("the Secret to be restored", common::WAIT, || async {
        let data = env.secret_data("kept-token").await;
        common::check(
            data.as_ref().and_then(|d| d.get("token")) == Some(&token),
            (),
            data.map(|d| d.into_keys().collect::<Vec<_>>()),
        )
    })
    .await;
    // Edited: written back too.
    let edit = json!({"data": {"token": base64::engine::general_purpose::STANDARD.encode("tampered")}});
    env.secrets()
        .patch("kept-token", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&edit))
        .await
        .unwrap();
    common::eventually("the edit to be undone", common::WAIT, || async {
        let t = env.secret_data("kept-token").await.and_then(|d| d.get("token").cloned());
        common::check(t.as_deref() == Some(token.as_str()), (), t.map(|t| t.len()))
    })
    .await;
    assert_eq!(env.fakes.calls(Endpoint::Podero), 1, "no new token was requested");
    // (Repeats of an Event are folded into one series by the recorder.)
    let events = env.events("kept").await;
    assert!(
        events.iter().any(|(t, r, m)| t == "Normal" && r == "SecretRestored" && m.contains("without a new request")),
        "{events:?}"
    );

    // After a restart the operator no longer holds the token: an edited Secret is not trusted,
    // and a new token replaces it.
    env.restart_operator().await;
    env.secrets()
        .patch("kept-token", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&edit))
        .await
        .unwrap();
    let fresh = env.wait_token("kept-token", Some("tampered")).await;
    assert!(fresh != token && env.fakes.is_valid(&fresh));
    assert_eq!(env.fakes.calls(Endpoint::Podero), 2);
    env.wait_ready("kept", "True", "TokenValid").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_of_the_secret_s_shape_apply_at_once_without_a_new_token() {
    let mut env = Env::start().await;
    common::podero_credentials(&env).await;
    env.create(common::podero(&env, "shaped", "shaped-token")).await;
    let token = env.wait_token("shaped-token", None).await;
    env.wait_ready("shaped", "True", "TokenValid").await;
    let edit = |patch: serde_json::Value| {
        let sources = env.sources();
        async move {
            sources.patch("shaped", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch)).await.unwrap()
        }
    };
    // Orphan: the owner reference goes at once, so deleting the TokenSource keeps the Secret.
    edit(json!({"spec": {"target": {"creationPolicy": "Orphan", "template": {
        "metadata": {"labels": {"team": "energy"}},
        "data": {"authorization": "Bearer {{ token }}"}
    }}, "renewal": {"renewBeforePercentage": 50}}}))
    .await;
    let secret = common::eventually("the new shape", common::WAIT, || async {
        let s = env.secrets().get("shaped-token").await.map_err(|e| e.to_string())?;
        let labelled = s.metadata.labels.as_ref().and_then(|l| l.get("team")).is_some();
        let owned = s.metadata.owner_references.as_ref().is_some_and(|o| !o.is_empty());
        let templated = s.data.as_ref().and_then(|d| d.get("authorization")).is_some();
        common::check(labelled && !owned && templated, s.clone(), (labelled, owned, templated))
    })
    .await;
    let auth =
        secret.data.as_ref().and_then(|d| d.get("authorization")).map(|v| String::from_utf8_lossy(&v.0).to_string());
    assert_eq!(auth, Some(format!("Bearer {token}")));
    common::eventually("the status of generation 2", common::WAIT, || async {
        let st = env.status("shaped").await?;
        common::check(st.observed_generation == Some(2), (), st.observed_generation)
    })
    .await;
    assert_eq!(env.fakes.calls(Endpoint::Podero), 1, "the template, labels, policy and renewal edits needed no token");
    env.sources().delete("shaped", &Default::default()).await.unwrap();
    common::eventually("the TokenSource to be gone", common::WAIT, || async {
        let gone = env.sources().get_opt("shaped").await.map_err(|e| e.to_string())?.is_none();
        common::check(gone, (), gone)
    })
    .await;
    assert!(env.secret_data("shaped-token").await.is_some(), "an orphaned Secret stays");
    // A restarted operator reads the token back from the Secret to apply a template edit.
    env.create(common::podero(&env, "again", "again-token")).await;
    let token = env.wait_token("again-token", None).await;
    env.wait_ready("again", "True", "TokenValid").await;
    env.restart_operator().await;
    let patch = json!({"spec": {"target": {"template": {"data": {"header": "X-Token: {{ token }}"}}}}});
    env.sources().patch("again", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch)).await.unwrap();
    common::eventually("the edit after a restart", common::WAIT, || async {
        let h = env.secret_data("again-token").await.and_then(|d| d.get("header").cloned());
        common::check(h.as_deref() == Some(format!("X-Token: {token}").as_str()), (), h.is_some())
    })
    .await;
    // The second TokenSource sends the same request as the first: it takes the shared token.
    assert_eq!(env.fakes.calls(Endpoint::Podero), 1, "one shared token, none for the edits");
}

/// The reply is kept with a held token only for templates that read it: a template that starts
/// reading it costs one new token, and a sharer that reads it gets a token with the reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_that_read_the_reply_get_it_though_others_do_not_keep_it() {
    let env = Env::start().await;
    common::podero_credentials(&env).await;
    let mut plain = common::podero(&env, "plain", "plain-token");
    plain["spec"]["renewal"] = json!({"shareIdenticalRequests": false});
    env.create(plain).await;
    env.wait_token("plain-token", None).await;
    env.wait_ready("plain", "True", "TokenValid").await;
    assert_eq!(env.fakes.calls(Endpoint::Podero), 1);
    let patch = json!({"spec": {"target": {"template": {"data": {"granted": "scope={{ response.scope }}"}}}}});
    env.sources().patch("plain", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch)).await.unwrap();
    let granted = |secret: &'static str| {
        let env = &env;
        async move { env.secret_data(secret).await.and_then(|d| d.get("granted").cloned()) }
    };
    common::eventually("the reply rendered", common::WAIT, || async {
        let g = granted("plain-token").await;
        common::check(g.as_deref() == Some("scope=read write"), (), g)
    })
    .await;
    assert_eq!(env.fakes.calls(Endpoint::Podero), 2, "the reply was not kept: one new token");
    // Now it is kept: a label edit re-renders from the token in hand.
    let patch = json!({"spec": {"target": {"template": {"metadata": {"labels": {"team": "energy"}}}}}});
    env.sources().patch("plain", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch)).await.unwrap();
    common::eventually("the label", common::WAIT, || async {
        let s = env.secrets().get("plain-token").await.map_err(|e| e.to_string())?;
        let labelled = s.metadata.labels.as_ref().and_then(|l| l.get("team")).is_some();
        common::check(labelled, (), labelled)
    })
    .await;
    assert_eq!(granted("plain-token").await.as_deref(), Some("scope=read write"));
    assert_eq!(env.fakes.calls(Endpoint::Podero), 2, "no call for the label");

    // Identical requests: the first sharer does not read the reply; the second does.
    env.create(common::podero(&env, "first", "first-token")).await;
    env.wait_ready("first", "True", "TokenValid").await;
    let mut second = common::podero(&env, "second", "second-token");
    second["spec"]["target"]["template"] = json!({"data": {"granted": "scope={{ response.scope }}"}});
    env.create(second).await;
    common::eventually("the sharer that reads the reply", common::WAIT, || async {
        let g = granted("second-token").await;
        common::check(g.as_deref() == Some("scope=read write"), (), g)
    })
    .await;
    env.wait_ready("second", "True", "TokenValid").await;
    common::eventually("one token for both", common::WAIT, || async {
        let token = |secret: &'static str| {
            let env = &env;
            async move { env.secret_data(secret).await.and_then(|d| d.get("token").cloned()) }
        };
        let (first, second) = (token("first-token").await, token("second-token").await);
        common::check(first.is_some() && first == second, (), (first.is_some(), second.is_some()))
    })
    .await;
    assert_eq!(env.fakes.calls(Endpoint::Podero), 4, "one token for the first, one with the reply for both");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_the_api_server_would_refuse_is_reported_before_any_write() {
    let env = Env::start().await;
    common::podero_credentials(&env).await;
    let writes = env.sim.as_ref().map(|sim| sim.faults().count("patch", "secrets"));
    // No .dockerconfigjson: refused before any request.
    let mut missing = common::podero(&env, "pull", "pull-token");
    missing["spec"]["target"]["template"] = json!({"type": "kubernetes.io/dockerconfigjson"});
    env.create(missing).await;
    let m = env.wait_ready("pull", "False", "InvalidSpec").await;
    assert!(m.contains("\".dockerconfigjson\""), "{m}");
    assert_eq!(env.fakes.calls(Endpoint::Podero), 0);
    // A .dockerconfigjson that does not render to JSON: refused before the write.
    let mut not_json = common::podero(&env, "badpull", "badpull-token");
    not_json["spec"]["target"]["template"] =
        json!({"type": "kubernetes.io/dockerconfigjson", "data": {".dockerconfigjson": "Bearer {{ token }}"}});
    env.create(not_json).await;
    let m = env.wait_ready("badpull", "False", "InvalidSpec").await;
    assert!(m.contains("does not render to JSON"), "{m}");
    assert!(env.secret_data("badpull-token").await.is_none(), "nothing was written");
    if let (Some(sim), Some(before)) = (&env.sim, writes) {
        assert_eq!(sim.faults().count("patch", "secrets"), before, "no write was even tried");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_given_inline_is_warned_about() {
    let env = Env::start().await;
    podero_credentials(&env).await;
    let mut ts = podero(&env, "inline", "inline-token");
    ts["spec"]["oauth2"]["headers"] =
        json!([{"name": "Cache-Control", "value": "no-cache"}, {"name": "X-Api-Key", "value": "k-123456"}]);
    env.create(ts).await;
    env.wait_token("inline-token", None).await;
    let warning = eventually("the InlineSecret warning", WAIT, || async {
        let ev: Vec<_> = env.events("inline").await.into_iter().filter(|e| e.1 == "InlineSecret").collect();
        check(!ev.is_empty(), ev.first().cloned(), ev)
    })
    .await
    .expect("an event");
    assert_eq!(warning.0, "Warning");
    assert!(
        warning.2.contains("oauth2.headers \"X-Api-Key\" given inline") && warning.2.contains("valueFrom.secretKeyRef"),
        "{warning:?}"
    );
    assert!(!warning.2.contains("k-123456"), "the value itself is never repeated");
    assert!(!env.events("inline").await.iter().any(|e| e.2.contains("Cache-Control")));
}
