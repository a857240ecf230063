//! A status that is true at every moment: `Ready` turns `False` when the token in the Secret
//! expires, to the second, whatever is in flight (a floor between renewals, a request to an
//! endpoint that hangs, a shared request); every TokenSource has a status while it waits; an
//! absurd lifetime is refused, never shortened.

#![cfg(test)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Env, WAIT, check, eventually, podero, podero_credentials};
use fake_providers::Endpoint;
use serde_json::json;

/// Every 100ms until `for_`: the longest time any of `names` said Ready=True past its own
/// expirationTime.
async fn longest_ready_past_expiry(env: &Env, for_: Duration) -> Duration {
    let until = tokio::time::Instant::now() + for_;
    let mut worst = Duration::ZERO;
    while tokio::time::Instant::now() < until {
        for ts in env.sources().list(&Default::default()).await.map(|l| l.items).unwrap_or_default() {
            let Some(st) = ts.status else { continue };
            let ready = st.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True");
            if let (true, Some(exp)) = (ready, st.expiration_time) {
                let past = jiff::Timestamp::now().duration_since(exp.0);
                worst = worst.max(Duration::try_from(past).unwrap_or_default());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    worst
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_shorter_than_the_renewal_floor_is_reported_expired_when_it_expires() {
    let env = Env::start().await;
    env.fakes.set_lifetime(Endpoint::Podero, Duration::from_secs(1));
    podero_credentials(&env).await;
    for i in 0..5 {
        let mut ts = podero(&env, &format!("short{i}"), &format!("short{i}-token"));
        ts["spec"]["renewal"] = json!({"shareIdenticalRequests": false});
        env.create(ts).await;
    }
    env.wait_token("short0-token", None).await;
    let worst = longest_ready_past_expiry(&env, Duration::from_secs(15)).await;
    let calls = env.fakes.calls(Endpoint::Podero);
    eprintln!("1-second tokens: longest Ready=True past expiry {worst:?}; {calls} provider calls");
    assert!(worst <= Duration::from_secs(1), "Ready=True {worst:?} past expiry");
    assert!(calls <= 5 * 5, "renewals at most every 5 seconds: {calls} calls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_hangs_does_not_keep_an_expired_token_ready() {
    let env = Env::start().await;
    env.fakes.set_lifetime(Endpoint::Podero, Duration::from_secs(8));
    podero_credentials(&env).await;
    env.create(podero(&env, "hang", "hang-token")).await;
    env.wait_token("hang-token", None).await;
    // The renewal goes out and is never answered.
    env.fakes.set_delay(Endpoint::Podero, Duration::from_secs(120));
    // The status follows the Secret (a real API server shows the gap).
    let expiry = eventually("the token's expiry in status", WAIT, || async {
        let status = env.status("hang").await?;
        let expiry = status.expiration_time.clone().map(|t| t.0);
        check(expiry.is_some(), expiry, status.expiration_time)
    })
    .await
    .unwrap();
    let worst = longest_ready_past_expiry(&env, Duration::from_secs(12)).await;
    let ready = env.ready("hang").await;
    eprintln!("hung endpoint: expiry {expiry}; longest Ready=True past it {worst:?}; now {ready:?}");
    assert!(worst <= Duration::from_secs(1), "Ready=True {worst:?} past expiry while the renewal hung");
    let (st, reason, _) = ready.expect("a Ready condition");
    assert_eq!((st.as_str(), reason.as_str()), ("False", "Expired"));
}

/// A request sent for new credentials (the token in hand was issued for the old ones) still
/// ends by the expiry of the token the Secret holds, not at the request timeout: the failure is
/// known, and retried, while it matters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_for_rotated_credentials_ends_by_the_stored_token_s_expiry() {
    let env = Env::start().await;
    env.fakes.set_lifetime(Endpoint::Podero, Duration::from_secs(12));
    podero_credentials(&env).await;
    env.create(podero(&env, "rotated", "rotated-token")).await;
    env.wait_token("rotated-token", None).await;
    let expiry = eventually("the token's expiry in status", WAIT, || async {
        let status = env.status("rotated").await?;
        status.expiration_time.map(|t| t.0).ok_or_else(|| "no expirationTime yet".to_string())
    })
    .await;
    env.fakes.set_delay(Endpoint::Podero, Duration::from_secs(120));
    // The client secret is rotated at the provider and in the credentials Secret.
    let mut c = env.fakes.config().podero;
    c.secret = format!("{}-next", c.secret);
    env.fakes.set_podero_client(c.clone());
    env.put_secret("podero-credentials", &[("client_id", &c.id), ("client_secret", &c.secret)]).await;
    // The request for the new credentials hangs; the default request timeout is 30 s.
    let failed_at = eventually("the hung request's failure in status", Duration::from_secs(45), || async {
        let status = env.status("rotated").await?;
        let degraded = status.conditions.iter().any(|c| c.type_ == "Degraded" && c.status == "True");
        check(degraded, jiff::Timestamp::now(), status.conditions)
    })
    .await;
    let after = failed_at.duration_since(expiry);
    eprintln!(
        "stored token's expiry {expiry}; the hung request failed {after:?} after it: {:?}",
        env.status("rotated").await.map(|s| s.conditions)
    );
    assert!(after <= jiff::SignedDuration::from_secs(4), "the request outlived the stored token by {after:?}");
}

/// A TokenSource whose deletion waits for another controller's finalizer is not renewed any
/// more, and says so when its token expires instead of staying Ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tokensource_held_by_a_finalizer_turns_unready_when_its_token_expires() {
    let env = Env::start().await;
    env.fakes.set_lifetime(Endpoint::Podero, Duration::from_secs(6));
    podero_credentials(&env).await;
    env.create(podero(&env, "held", "held-token")).await;
    env.wait_token("held-token", None).await;
    env.wait_ready("held", "True", "TokenValid").await;
    let hold = json!({"metadata": {"finalizers": ["backup.example.com/hold"]}});
    let pp = kube::api::PatchParams::default();
    env.sources().patch("held", &pp, &kube::api::Patch::Merge(&hold)).await.unwrap();
    env.sources().delete("held", &Default::default()).await.unwrap();
    let calls = env.fakes.calls(Endpoint::Podero);
    let worst = longest_ready_past_expiry(&env, Duration::from_secs(9)).await;
    let ready = env.ready("held").await;
    eprintln!("held by a finalizer: longest Ready=True past expiry {worst:?}; now {ready:?}");
    let release = json!({"metadata": {"finalizers": null}});
    env.sources().patch("held", &pp, &kube::api::Patch::Merge(&release)).await.unwrap();
    assert!(worst <= Duration::from_secs(1), "Ready=True {worst:?} past expiry while being deleted");
    let (st, reason, message) = ready.expect("a Ready condition");
    assert_eq!((st.as_str(), reason.as_str()), ("False", "Expired"));
    assert!(message.contains("being deleted") && message.contains("backup.example.com/hold"), "{message}");
    assert_eq!(env.fakes.calls(Endpoint::Podero), calls, "a TokenSource being deleted was renewed");
}

/// With every status write taking 1.5 s, Ready=True outlives the token by that write's own
/// length only: the expiry is looked at when it comes, not one status write later.
/// A lifetime (`expires_in`) counts from when the provider issued the token, which is before
/// the reply arrives: the expiry the operator records is never later than the provider's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lifetime_counts_from_the_request_not_from_the_slow_reply() {
    let env = Env::start().await;
    env.fakes.set_lifetime(Endpoint::Podero, Duration::from_secs(30));
    env.fakes.set_reply_delay(Endpoint::Podero, Duration::from_secs(3));
    podero_credentials(&env).await;
    env.create(podero(&env, "late", "late-token")).await;
    let token = env.wait_token("late-token", None).await;
    let real = env.fakes.expiry_of(&token).expect("the fake issued the token");
    let recorded = eventually("the status's expiry", WAIT, || async {
        let st = env.sources().get_status("late").await.map_err(|e| e.to_string())?.status;
        st.and_then(|s| s.expiration_time).map(|t| t.0).ok_or_else(|| "no expirationTime yet".to_string())
    })
    .await;
    let late = recorded.duration_since(real);
    eprintln!("provider's expiry {real}, recorded {recorded} ({late:?} later)");
    assert!(recorded <= real, "the recorded expiry is {late:?} after the provider's: Ready=True over an expired token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_status_write_does_not_postpone_the_expiry() {
    let env = Env::start().await;
    if env.kubesim_only("slows down status writes (kubesim's latency injection)") {
        return;
    }
    let sim = env.sim.as_ref().expect("kubesim");
    env.fakes.set_lifetime(Endpoint::Podero, Duration::from_secs(8));
    podero_credentials(&env).await;
    env.create(podero(&env, "slow", "slow-token")).await;
    env.wait_token("slow-token", None).await;
    env.fakes.set_delay(Endpoint::Podero, Duration::from_secs(120));
    let write = Duration::from_millis(1500);
    sim.faults().add_latency(kubesim::Matcher::new("patch", "tokensources/status").named(&env.ns, "slow"), write);
    let worst = longest_ready_past_expiry(&env, Duration::from_secs(14)).await;
    let ready = env.ready("slow").await;
    eprintln!("status writes taking {write:?}: longest Ready=True past expiry {worst:?}; now {ready:?}");
    assert!(worst <= write + Duration::from_millis(600), "Ready=True {worst:?} past expiry");
    let (st, reason, _) = ready.expect("a Ready condition");
    assert_eq!((st.as_str(), reason.as_str()), ("False", "Expired"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokensources_waiting_for_a_hung_host_have_a_status() {
    let env = Env::start().await;
    podero_credentials(&env).await;
    env.fakes.set_delay(Endpoint::Podero, Duration::from_secs(120));
    // Twenty sharing one request, and twenty asking on their own (four in flight, sixteen
    // waiting for a request slot of the host).
    for i in 0..20 {
        env.create(podero(&env, &format!("shared{i}"), &format!("shared{i}-token"))).await;
        let mut own = podero(&env, &format!("own{i}"), &format!("own{i}-token"));
        own["spec"]["renewal"] = json!({"shareIdenticalRequests": false});
        env.create(own).await;
    }
    let pending = eventually("every TokenSource with a Ready condition", Duration::from_secs(10), || async {
        let items = env.sources().list(&Default::default()).await.map(|l| l.items).unwrap_or_default();
        let blank: Vec<String> = items
            .iter()
            .filter(|ts| !ts.status.as_ref().is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready")))
            .map(|ts| ts.metadata.name.clone().unwrap_or_default())
            .collect();
        let reasons: Vec<(String, String)> = items
            .iter()
            .filter_map(|ts| {
                let c = ts.status.as_ref()?.conditions.iter().find(|c| c.type_ == "Ready")?;
                Some((c.reason.clone(), c.message.clone()))
            })
            .collect();
        check(items.len() == 40 && blank.is_empty(), reasons, blank)
    })
    .await;
    assert!(pending.iter().all(|(r, _)| r == "Pending"), "{pending:?}");
    assert!(
        pending.iter().any(|(_, m)| m.contains("waiting for a free request slot of host 127.0.0.1")),
        "{pending:?}"
    );
    assert!(pending.iter().any(|(_, m)| m.contains("a token request to 127.0.0.1 is in flight")), "{pending:?}");
}

/// An unsigned JWT whose `exp` claim is `exp` (the operator decodes, does not verify).
fn jwt_expiring(exp: i64) -> String {
    use base64::Engine;
    let part = |v: serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    format!("{}.{}.c2ln", part(json!({"alg": "RS256", "typ": "JWT"})), part(json!({"exp": exp, "sub": "s"})))
}

/// A token endpoint on loopback that answers every request with `reply`.
async fn answering(reply: serde_json::Value) -> String {
    answering_with(200, reply, Duration::ZERO, Arc::new(AtomicUsize::new(0))).await
}

/// A token endpoint on loopback that answers every request with `status` and `reply` after
/// `delay`, counting the requests in `calls`.
async fn answering_with(status: u16, reply: serde_json::Value, delay: Duration, calls: Arc<AtomicUsize>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let body = reply.to_string();
    let status = axum::http::StatusCode::from_u16(status).unwrap();
    let app = axum::Router::new().route(
        "/token",
        axum::routing::post(move || {
            let body = body.clone();
            calls.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(delay).await;
                (status, [(axum::http::header::CONTENT_TYPE, "application/json")], body)
            }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}/token")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absurd_lifetime_is_refused_with_its_value() {
    let env = Env::start().await;
    podero_credentials(&env).await;
    let cases = [
        ("inseconds", json!({"access_token": "t", "expires_in": 1e300}), json!(null), "1e300"),
        ("tooyears", json!({"access_token": "t", "expires_in": 315_360_000}), json!(null), "315360000"),
        (
            "absolute",
            json!({"access_token": "t", "expires": 4_102_444_800i64 * 10}),
            json!({"type": "ExpiresAt", "jsonPath": "$.expires", "format": "UnixSeconds"}),
            "more than five years",
        ),
        (
            "inttl",
            json!({"access_token": "t", "ttl": "99999999999"}),
            json!({"type": "ExpiresIn", "jsonPath": "$.ttl"}),
            "99999999999",
        ),
        (
            "millis",
            json!({"access_token": "t", "expires": "41024448000000"}),
            json!({"type": "ExpiresAt", "jsonPath": "$.expires", "format": "UnixMilliseconds"}),
            "more than five years",
        ),
        (
            "rfc3339",
            json!({"access_token": "t", "expires": "9999-12-31T23:59:59Z"}),
            json!({"type": "ExpiresAt", "jsonPath": "$.expires", "format": "RFC3339"}),
            "more than five years",
        ),
        ("jwt", json!({"access_token": jwt_expiring(253_402_300_799)}), json!({"type": "JWT"}), "more than five years"),
        ("autojwt", json!({"access_token": jwt_expiring(253_402_300_799)}), json!(null), "more than five years"),
    ];
    for (name, reply, expiry, _) in &cases {
        let mut ts = podero(&env, name, &format!("{name}-token"));
        ts["spec"]["oauth2"]["tokenURL"] = json!(answering(reply.clone()).await);
        if !expiry.is_null() {
            ts["spec"]["response"] = json!({"expiry": expiry});
        }
        env.create(ts).await;
    }
    for (name, _, _, shown) in &cases {
        let message = env.wait_ready(name, "False", "BadProviderResponse").await;
        eprintln!("{name}: {message}");
        assert!(message.contains(shown), "{name}: {message}");
        assert!(env.secret_data(&format!("{name}-token")).await.is_none(), "{name}: a Secret was written");
    }
}

/// A token endpoint on loopback that answers after `delay` with a token of `lifetime` seconds.
async fn slow_endpoint(delay: Duration, lifetime: u64) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/token",
        axum::routing::post(move || async move {
            tokio::time::sleep(delay).await;
            let token: String = (0..24).map(|_| char::from(b'a' + rand::random::<u8>() % 26)).collect();
            let body = json!({"access_token": token, "expires_in": lifetime}).to_string();
            ([(axum::http::header::CONTENT_TYPE, "application/json")], body)
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}/token")
}

/// Values of the refresh annotation a tenant may type: none, not a time, too long for the status
/// field, and a time with an RFC 9557 suffix longer than 64 characters.
const ANNOTATIONS: [Option<&str>; 4] = [
    None,
    Some("yesterday"),
    Some("xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"),
    Some("2026-01-02T03:04:05Z[u-ca=gregory][!Etc/UTC][x-tokensource=xxxxxxxxxxxxxxxxxxxxxxxxxxx]"),
];

/// Over lifetimes shorter and longer than the 5-second renewal floor, endpoints that answer at
/// once, slowly or never, request timeouts shorter and longer than the lifetime, and refresh
/// annotations of every kind: no status is ever Ready=True more than a second past the expiry
/// of its token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_status_says_ready_past_expiry_whatever_the_lifetime_latency_and_timeout() {
    let env = Env::start().await;
    podero_credentials(&env).await;
    let mut n = 0;
    for lifetime in [1u64, 3, 7] {
        for delay in [Duration::ZERO, Duration::from_millis(1500), Duration::from_secs(600)] {
            for timeout in [Some("2s"), None] {
                let name = format!("grid{n}");
                n += 1;
                let mut ts = podero(&env, &name, &format!("{name}-token"));
                ts["spec"]["oauth2"]["tokenURL"] = json!(slow_endpoint(delay, lifetime).await);
                ts["spec"]["renewal"] = json!({"shareIdenticalRequests": false});
                if let Some(t) = timeout {
                    ts["spec"]["timeout"] = json!(t);
                }
                // And whatever a tenant types into the refresh annotation.
                if let Some(value) = ANNOTATIONS[n % ANNOTATIONS.len()] {
                    ts["metadata"]["annotations"] = json!({"tokensource.dev/refresh-requested-at": value});
                }
                env.create(ts).await;
            }
        }
    }
    let worst = longest_ready_past_expiry(&env, Duration::from_secs(25)).await;
    let ready = env
        .sources()
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter(|t| t.status.as_ref().is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready")))
        .count();
    eprintln!(
        "{n} TokenSources over lifetime x latency x timeout: longest Ready=True past expiry {worst:?}; {ready} with a Ready condition"
    );
    assert!(worst <= Duration::from_secs(1), "Ready=True {worst:?} past expiry");
    assert_eq!(ready, n, "every TokenSource has a status");
}

/// Sharers of one request record its failure as their own: the same reason and message on each,
/// from one provider call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharers_record_the_shared_request_s_failure_as_their_own() {
    let env = Env::start().await;
    podero_credentials(&env).await;
    let calls = Arc::new(AtomicUsize::new(0));
    // The refusal takes 3 s, so every sharer is waiting for it (creating five TokenSources takes
    // longer on a real API server than on kubesim).
    let url = answering_with(
        401,
        json!({"error": "invalid_client", "error_description": "client authentication failed"}),
        Duration::from_secs(3),
        calls.clone(),
    )
    .await;
    let names: Vec<String> = (0..5).map(|i| format!("sharer-{i}")).collect();
    for name in &names {
        let mut ts = podero(&env, name, &format!("{name}-token"));
        ts["spec"]["oauth2"]["tokenURL"] = json!(url);
        env.create(ts).await;
    }
    let mut seen = vec![];
    for name in &names {
        let message = eventually(&format!("{name} Ready=False with the provider's refusal"), WAIT, || async {
            let ready = env.ready(name).await;
            check(
                ready.as_ref().is_some_and(|(status, _, m)| status == "False" && m.contains("invalid_client")),
                ready.clone(),
                ready,
            )
        })
        .await
        .unwrap();
        seen.push((message.1, message.2));
    }
    assert!(seen.windows(2).all(|w| w[0] == w[1]), "sharers said different things: {seen:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one request for five identical TokenSources");
    eprintln!("5 sharers: {} ({}), from 1 provider call", seen[0].0, seen[0].1);
}

/// The target Secret deleted while a renewal hangs: the token in hand (still valid) is written
/// back at once, not after the request ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_deleted_while_a_renewal_hangs_gets_its_token_back() {
    let env = Env::start().await;
    podero_credentials(&env).await;
    env.create(podero(&env, "hang", "hang-token")).await;
    let token = env.wait_token("hang-token", None).await;
    env.wait_ready("hang", "True", "TokenValid").await;
    env.fakes.set_delay(Endpoint::Podero, Duration::from_secs(600));
    let ask = json!({"metadata": {"annotations": {"tokensource.dev/refresh-requested-at": "2026-01-02T03:04:05Z"}}});
    env.sources().patch("hang", &Default::default(), &kube::api::Patch::Merge(&ask)).await.unwrap();
    // The renewal is on its way (after the 5-second floor since the first token) and hangs.
    eventually("the renewal in flight", Duration::from_secs(15), || async {
        let n = env.fakes.calls(Endpoint::Podero);
        check(n >= 2, (), n)
    })
    .await;
    env.secrets().delete("hang-token", &Default::default()).await.unwrap();
    let back = env.wait_token("hang-token", None).await;
    assert_eq!(back, token, "the token in hand, not a new one");
    env.wait_ready("hang", "True", "TokenValid").await;
    assert_eq!(env.fakes.calls(Endpoint::Podero), 2);
}
