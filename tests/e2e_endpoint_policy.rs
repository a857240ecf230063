//! End to end: the endpoint policy holds on every path a token request can take — an address
//! written in the URL when a host list is set, a proxy named in the environment, and the
//! operator's own proxy (`--endpoint-proxy`). Every listener here is on loopback.

#![cfg(test)]

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Env, free_port, http_get, podero, podero_credentials};
use fake_providers::tls::fixtures;
use fake_providers::{Endpoint, Fakes};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use tokensource_operator::crd::TokenSource;
use tokensource_operator::endpoint::EndpointPolicy;
use tokensource_operator::transport::ProxyUrl;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_tokensource-operator");

/// A forward proxy on 127.0.0.1 that records what each connection asks for (the authority of a
/// CONNECT, or of an absolute-form request) and carries the connection to `upstream` whatever
/// was asked, as a real proxy would after resolving the name itself.
struct RecordingProxy {
    addr: SocketAddr,
    asked: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RecordingProxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let asked = Arc::new(Mutex::new(vec![]));
        let record = asked.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(Self::serve(client, upstream, record.clone()));
            }
        });
        Self { addr, asked, task }
    }

    async fn serve(mut client: tokio::net::TcpStream, upstream: SocketAddr, record: Arc<Mutex<Vec<String>>>) {
        let mut head = vec![];
        let mut buf = [0u8; 4096];
        let end = loop {
            if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match client.read(&mut buf).await {
                Ok(n) if n > 0 && head.len() < 65_536 => head.extend_from_slice(&buf[..n]),
                _ => return,
            }
        };
        let line = String::from_utf8_lossy(&head[..end]).lines().next().unwrap_or_default().to_string();
        let mut parts = line.split(' ');
        let (method, target) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
        let connect = method == "CONNECT";
        let authority = if connect {
            target.to_string()
        } else {
            match url::Url::parse(target) {
                Ok(u) => format!("{}:{}", u.host_str().unwrap_or_default(), u.port_or_known_default().unwrap_or(0)),
                Err(_) => format!("origin-form {target}"),
            }
        };
        record.lock().unwrap().push(authority);
        let Ok(mut up) = tokio::net::TcpStream::connect(upstream).await else { return };
        let forwarded = if connect {
            if client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await.is_err() {
                return;
            }
            &head[end..]
        } else {
            // An absolute-form request goes on as it came; servers accept that form.
            &head[..]
        };
        if up.write_all(forwarded).await.is_ok() {
            let _ = tokio::io::copy_bidirectional(&mut client, &mut up).await;
        }
    }

    fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }
}

impl Drop for RecordingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The fakes' listening address (they listen on 127.0.0.1).
fn fakes_addr(fakes: &Fakes) -> SocketAddr {
    let port = url::Url::parse(&fakes.url()).unwrap().port().unwrap();
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A child process that is killed when the test ends, however it ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Restarts the operator of `env` with the policy of these flags' values.
async fn restart_with_policy(env: &mut Env, cidrs: &str, hosts: &str) {
    env.stop_operator().await;
    env.config.transport.endpoints = Arc::new(EndpointPolicy::parse(cidrs, hosts).unwrap());
    env.start_operator();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_host_list_an_address_in_the_url_is_refused_unless_listed() {
    let mut env = Env::start().await;
    // The fakes are at 127.0.0.1, inside the allowed network but not a listed host.
    restart_with_policy(&mut env, "127.0.0.1/32", "login.example.com").await;
    podero_credentials(&env).await;
    env.create(podero(&env, "literal", "literal-token")).await;
    let m = env.wait_ready("literal", "False", "EndpointNotAllowed").await;
    assert!(m.contains("127.0.0.1 is not listed in --allow-endpoint-hosts"), "{m}");
    assert_eq!(env.fakes.calls(Endpoint::Podero), 0, "nothing was sent");
    // Listed as a host itself, the address is allowed.
    restart_with_policy(&mut env, "127.0.0.1/32", "login.example.com,127.0.0.1").await;
    env.create(podero(&env, "listed", "listed-token")).await;
    env.wait_token("listed-token", None).await;
}

/// Starts the operator binary against `sim` for namespace `team`, with the environment's proxy
/// variables (all but HTTPS_PROXY) naming `env_proxy` and `ENDPOINT_PROXY` set to `own_proxy`
/// if given; returns it once it is ready. HTTPS_PROXY is left out: kube's kubeconfig loader
/// reads it for the API server, and this build of kube has no proxy support, so the operator
/// would not start; ALL_PROXY covers https:// endpoints for the token client.
async fn start_binary(sim: &kubesim::KubeSim, env_proxy: &RecordingProxy, own_proxy: Option<&RecordingProxy>) -> Child {
    let port = free_port();
    let env_proxy = format!("http://{}", env_proxy.addr);
    let mut command = Command::new(BIN);
    command
        .args(["run", "--namespace", "team", "--allow-insecure-http", "--allow-endpoint-cidrs", "127.0.0.1/32"])
        .args(["--propagation-margin", "1s", "--kubeconfig"])
        .arg(sim.kubeconfig_path())
        .args(["--admin-addr", &format!("127.0.0.1:{port}")])
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy")
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .env_remove("ENDPOINT_PROXY")
        .env("HTTP_PROXY", &env_proxy)
        .env("http_proxy", &env_proxy)
        .env("ALL_PROXY", &env_proxy)
        .env("all_proxy", &env_proxy)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(own) = own_proxy {
        command.env("ENDPOINT_PROXY", format!("http://{}", own.addr));
    }
    let child = Child(command.spawn().unwrap());
    let deadline = Instant::now() + common::WAIT;
    while !matches!(http_get(&format!("http://127.0.0.1:{port}/readyz")).await, Some((200, _))) {
        assert!(Instant::now() < deadline, "the operator never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    child
}

/// Creates a Podero TokenSource `name` in `team` and waits for its token.
async fn token_from(client: &kube::Client, fakes: &Fakes, name: &str) {
    let sources: Api<TokenSource> = Api::namespaced(client.clone(), "team");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "team");
    let ts = json!({"apiVersion": "tokensource.dev/v1alpha1", "kind": "TokenSource", "metadata": {"name": name}, "spec": {
        "type": "OAuth2",
        // A header of its own, so that requests are not identical (those share one token).
        "oauth2": {"tokenURL": fakes.endpoint_url(Endpoint::Podero), "bodyType": "JSON", "headers": [{"name": "X-Source", "value": name}],
                   "clientID": {"valueFrom": {"secretKeyRef": {"name": "podero-credentials", "key": "client_id"}}},
                   "clientAuth": {"type": "ClientSecretBasic", "clientSecretRef": {"name": "podero-credentials", "key": "client_secret"}}},
        "target": {"name": format!("{name}-token")}}});
    sources.create(&PostParams::default(), &serde_json::from_value(ts).unwrap()).await.unwrap();
    let deadline = Instant::now() + common::WAIT;
    while secrets.get_opt(&format!("{name}-token")).await.ok().flatten().is_none() {
        let status = sources.get(name).await.ok().and_then(|t| t.status);
        assert!(Instant::now() < deadline, "no token for {name}; status: {status:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_in_the_environment_is_not_used_and_endpoint_proxy_is() {
    if std::env::var("TOKENSOURCE_E2E_KUBECONFIG").is_ok_and(|k| !k.is_empty()) {
        common::say("kubesim only: the operator binary's own proxy settings, checked against kubesim above");
        return;
    }
    let sim = kubesim::KubeSim::start().await.unwrap();
    let client = sim.client();
    let fakes = Fakes::start(Default::default()).await.unwrap();
    let env_proxy = RecordingProxy::start(fakes_addr(&fakes)).await;
    let own_proxy = RecordingProxy::start(fakes_addr(&fakes)).await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        "tokensources.tokensource.dev",
        &PatchParams::apply("test"),
        &Patch::Apply(tokensource_operator::crd::crd()),
    )
    .await
    .unwrap();
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "team"}})).unwrap())
        .await
        .unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "team");
    let c = fakes.config().podero;
    let creds = json!({"metadata": {"name": "podero-credentials"}, "stringData": {"client_id": c.id, "client_secret": c.secret}});
    secrets.create(&PostParams::default(), &serde_json::from_value(creds).unwrap()).await.unwrap();
    // The environment names a proxy: the token comes straight from the endpoint.
    let operator = start_binary(&sim, &env_proxy, None).await;
    token_from(&client, &fakes, "direct").await;
    assert_eq!(fakes.calls(Endpoint::Podero), 1);
    assert_eq!(env_proxy.asked(), Vec::<String>::new(), "the token request went through the environment's proxy");
    drop(operator);

    // ENDPOINT_PROXY names another: that one is used, the environment's still is not.
    let _operator = start_binary(&sim, &env_proxy, Some(&own_proxy)).await;
    token_from(&client, &fakes, "proxied").await;
    assert_eq!(fakes.calls(Endpoint::Podero), 2);
    assert_eq!(own_proxy.asked(), vec![format!("127.0.0.1:{}", fakes_addr(&fakes).port())]);
    assert_eq!(env_proxy.asked(), Vec::<String>::new(), "the token request went through the environment's proxy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_operators_proxy_each_destination_is_still_vetted() {
    let mut env = Env::start().await;
    let upstream = fakes_addr(&env.fakes);
    let proxy = RecordingProxy::start(upstream).await;
    env.stop_operator().await;
    // Only ::1 may be a destination. The proxy, on 127.0.0.1 and given by name, is the
    // operator's own choice and needs no allowance; the proxy carries [::1] to the fakes.
    env.config.transport.endpoints = Arc::new(EndpointPolicy::parse("::1/128", "").unwrap());
    env.config.transport.proxy = Some(ProxyUrl::parse(&format!("http://localhost:{}", proxy.addr.port())).unwrap());
    env.start_operator();
    podero_credentials(&env).await;
    let source = |name: &str, host: &str| {
        let mut ts = podero(&env, name, &format!("{name}-token"));
        ts["spec"]["oauth2"]["tokenURL"] =
            json!(format!("http://{host}:{}{}", upstream.port(), Endpoint::Podero.path()));
        ts
    };
    // Refused before anything goes to the proxy: an address outside the policy, and a name the
    // operator resolves to one.
    for (name, host, says) in [
        ("literal", "127.0.0.2", "127.0.0.2 is a loopback address"),
        ("named", "localhost", "localhost resolves to 127.0.0.1, a loopback address"),
    ] {
        env.create(source(name, host)).await;
        let m = env.wait_ready(name, "False", "EndpointNotAllowed").await;
        assert!(m.contains(says), "{name}: {m}");
    }
    env.create(source("allowed", "[::1]")).await;
    env.wait_token("allowed-token", None).await;
    assert_eq!(proxy.asked(), vec![format!("[::1]:{}", upstream.port())]);
    assert_eq!(env.fakes.calls(Endpoint::Podero), 1, "only the allowed request reached the endpoint");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_goes_through_the_operators_proxy_in_a_tunnel_with_the_tenants_ca() {
    let mut env = Env::start_tls().await;
    let upstream = fakes_addr(&env.fakes);
    let proxy = RecordingProxy::start(upstream).await;
    env.stop_operator().await;
    env.config.transport.endpoints = Arc::new(EndpointPolicy::parse("127.0.0.1/32,::1/128", "").unwrap());
    env.config.transport.proxy = Some(ProxyUrl::parse(&format!("http://{}", proxy.addr)).unwrap());
    env.start_operator();
    podero_credentials(&env).await;
    let mut ts = podero(&env, "tunnelled", "tunnelled-token");
    ts["spec"]["tls"] = json!({"caBundle": {"type": "PEM", "pem": String::from_utf8_lossy(fixtures::CA_CERT)}});
    env.create(ts).await;
    env.wait_token("tunnelled-token", None).await;
    assert_eq!(proxy.asked(), vec![format!("localhost:{}", upstream.port())]);
}
