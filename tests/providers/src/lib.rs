//! In-process token endpoints for end-to-end tests and the sandbox. Each checks a request the
//! way the real provider does (see `shared/seeds/`) and answers in its wire format:
//!
//! - Podero: `POST /oauth2/token/`, HTTP Basic, JSON body `{"grant_type":"client_credentials"}`.
//! - Interswitch: `POST /passport/oauth/token`, HTTP Basic, form body, a JWT without `expires_in`.
//! - Imburse: `POST /identity/v1/hmac/management` and `/identity/v1/hmac/payout` signed with the
//!   Imburse HMAC scheme (nonces never reused, clocks within five minutes), and
//!   `POST /v1/identity/payout` with a currently valid management token as bearer.
//!
//! Tests read what happened through the handle: calls per endpoint, tokens issued, and why the
//! last request was rejected; and they can make the next answers fail.

pub mod examples;
pub mod federation;
pub mod github;
pub mod google;
pub mod tls;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use hmac::{Hmac, Mac};
use jiff::Timestamp;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The token endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Podero,
    Interswitch,
    ImburseManagement,
    ImbursePayoutHmac,
    ImbursePayout,
    /// RFC 8705 mutual TLS client authentication (HTTPS fakes only).
    MtlsToken,
    /// RFC 7523 private_key_jwt client authentication (HTTPS fakes only).
    JwtToken,
    /// A hostile endpoint: answers 401 with everything it received, in the encoding its `as`
    /// query parameter names (`raw`, `form`, `base64`, `base64url`, `authorization`).
    Echo,
    /// GitHub's installation access tokens, for installation 4242 of App `github_app_id`.
    GitHubApp,
    /// Google's OAuth 2.0 token endpoint for service accounts (the JWT-bearer grant).
    GoogleToken,
    /// Microsoft Entra ID's token endpoint, with a federated ServiceAccount token as the client
    /// assertion (tenant `contoso`).
    EntraToken,
    /// An RFC 8693 token exchange of a ServiceAccount token (as Google's STS).
    TokenExchange,
}

impl Endpoint {
    pub fn path(self) -> &'static str {
        match self {
            Self::Podero => "/oauth2/token/",
            Self::Interswitch => "/passport/oauth/token",
            Self::ImburseManagement => "/identity/v1/hmac/management",
            Self::ImbursePayoutHmac => "/identity/v1/hmac/payout",
            Self::ImbursePayout => "/v1/identity/payout",
            Self::MtlsToken => "/mtls/token",
            Self::JwtToken => "/jwt/token",
            Self::Echo => "/echo",
            Self::GitHubApp => "/app/installations/4242/access_tokens",
            Self::GoogleToken => "/google/token",
            Self::EntraToken => "/contoso/oauth2/v2.0/token",
            Self::TokenExchange => "/sts/v1/token",
        }
    }
}

/// A client id and secret.
#[derive(Clone, Debug)]
pub struct Client {
    pub id: String,
    pub secret: String,
}

/// What the fakes accept.
#[derive(Clone, Debug)]
pub struct Config {
    pub podero: Client,
    pub interswitch: Client,
    /// Imburse tenant API key: public key and base64 private key.
    pub imburse_public: String,
    pub imburse_private_b64: String,
    /// The client id registered for the client certificate in `fixtures/client.crt`.
    pub mtls_client_id: String,
    /// The client id whose assertions are signed with `fixtures/jwt-*.key`.
    pub jwt_client_id: String,
    /// The GitHub App's ID, the `iss` of its JWTs.
    pub github_app_id: String,
    /// The PEM private keys whose public keys the GitHub App has registered.
    pub github_keys: Vec<Vec<u8>>,
    /// The service account's e-mail, the `iss` of its assertions.
    pub google_client_email: String,
    /// The service account's keys: (private_key_id, PEM private key).
    pub google_keys: Vec<(String, Vec<u8>)>,
    /// The Entra application (client) ID that has the federated credential.
    pub entra_client_id: String,
    /// Which ServiceAccount tokens Entra accepts for `entra_client_id`; none until set.
    pub entra_federation: Option<federation::Federation>,
    /// The `audience` parameter the token exchange serves (its workload identity provider).
    pub sts_audience: String,
    /// Which ServiceAccount tokens the token exchange accepts; none until set.
    pub sts_federation: Option<federation::Federation>,
    pub lifetime: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            podero: Client { id: "podero-client".into(), secret: "podero-secret-0001".into() },
            interswitch: Client { id: "IKIA-interswitch".into(), secret: "interswitch-secret-0001".into() },
            imburse_public: "imburse-public-key".into(),
            imburse_private_b64: base64::engine::general_purpose::STANDARD.encode(b"imburse-private-key-bytes"),
            mtls_client_id: "mtls-client".into(),
            jwt_client_id: "jwt-client".into(),
            github_app_id: "123456".into(),
            github_keys: vec![tls::fixtures::JWT_RSA_KEY.to_vec()],
            google_client_email: "operator@project.iam.gserviceaccount.com".into(),
            google_keys: vec![("key-1".into(), tls::fixtures::JWT_RSA_KEY.to_vec())],
            entra_client_id: "7f8c2a34-1b6e-4d0a-9c55-0e4f3b2a1d90".into(),
            entra_federation: None,
            sts_audience:
                "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/k8s/providers/kubesim".into(),
            sts_federation: None,
            lifetime: Duration::from_secs(3600),
        }
    }
}

struct Injected {
    status: u16,
    body: Value,
    retry_after: Option<u64>,
}

#[derive(Default)]
pub(crate) struct Inner {
    calls: HashMap<Endpoint, usize>,
    call_times: HashMap<Endpoint, Vec<std::time::Instant>>,
    issued: HashMap<Endpoint, usize>,
    /// When each token was issued, per endpoint.
    issue_times: HashMap<Endpoint, Vec<std::time::Instant>>,
    /// How long the endpoint takes before it issues a token (a slow provider).
    delays: HashMap<Endpoint, Duration>,
    lifetimes: HashMap<Endpoint, Duration>,
    failures: HashMap<Endpoint, VecDeque<Injected>>,
    pub(crate) nonces: HashSet<String>,
    /// Token -> (endpoint, expiry).
    tokens: HashMap<String, (Endpoint, Timestamp)>,
    rejections: Vec<(Endpoint, String)>,
    payout_bodies: Vec<Value>,
    /// Endpoints whose new token revokes every earlier one (providers that keep one valid token
    /// per client).
    revoking: HashSet<Endpoint>,
    /// How long each path holds its reply after the handler made it (by then the token's
    /// lifetime runs): a slow network or a reply read slowly.
    reply_delays: HashMap<&'static str, Duration>,
}

pub(crate) struct Shared {
    pub(crate) config: Mutex<Config>,
    pub(crate) inner: Mutex<Inner>,
    pub(crate) port: Mutex<u16>,
    /// `http://127.0.0.1:PORT` or `https://localhost:PORT`: what clients call this server.
    pub(crate) base_url: Mutex<String>,
    /// The client the federation fakes fetch discovery documents with.
    pub(crate) http: std::sync::OnceLock<reqwest::Client>,
}

/// A running set of fake token endpoints.
pub struct Fakes {
    addr: SocketAddr,
    https: bool,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Fakes {
    pub async fn start(config: Config) -> std::io::Result<Self> {
        Self::start_on(config, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    pub async fn start_on(config: Config, addr: SocketAddr) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            config: Mutex::new(config),
            inner: Mutex::default(),
            port: Mutex::new(0),
            base_url: Mutex::default(),
            http: std::sync::OnceLock::new(),
        });
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        *lock(&shared.base_url) = format!("http://{addr}");
        let app = Self::router(&shared);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, https: false, shared, task })
    }

    /// The same endpoints over HTTPS (a certificate for `localhost` from the fixtures' test CA),
    /// plus the mutual-TLS and private_key_jwt endpoints. Use `https://localhost:PORT`.
    pub async fn start_tls(config: Config) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            config: Mutex::new(config),
            inner: Mutex::default(),
            port: Mutex::new(0),
            base_url: Mutex::default(),
            http: std::sync::OnceLock::new(),
        });
        let listener = tls::listener(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = axum::serve::Listener::local_addr(&listener)?.addr;
        *lock(&shared.port) = addr.port();
        *lock(&shared.base_url) = format!("https://localhost:{}", addr.port());
        let app = Self::router(&shared)
            .merge(
                Router::new()
                    .route(Endpoint::MtlsToken.path(), post(tls::mtls_token))
                    .route(Endpoint::JwtToken.path(), post(tls::jwt_token))
                    .with_state(shared.clone()),
            )
            .into_make_service_with_connect_info::<tls::Peer>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, https: true, shared, task })
    }

    fn router(shared: &Arc<Shared>) -> Router {
        Router::new()
            .route(Endpoint::Podero.path(), post(podero))
            .route(Endpoint::Interswitch.path(), post(interswitch))
            .route(Endpoint::ImburseManagement.path(), post(imburse_management))
            .route(Endpoint::ImbursePayoutHmac.path(), post(imburse_payout_hmac))
            .route(Endpoint::ImbursePayout.path(), post(imburse_payout))
            .route(Endpoint::Echo.path(), post(echo))
            .route(Endpoint::GitHubApp.path(), post(github::access_token))
            .route(Endpoint::GoogleToken.path(), post(google::token))
            .route(Endpoint::EntraToken.path(), post(federation::entra_token))
            .route(Endpoint::TokenExchange.path(), post(federation::token_exchange))
            .with_state(shared.clone())
            .layer(axum::middleware::from_fn_with_state(shared.clone(), hold_reply))
    }

    pub fn url(&self) -> String {
        if self.https { format!("https://localhost:{}", self.addr.port()) } else { format!("http://{}", self.addr) }
    }

    pub fn endpoint_url(&self, e: Endpoint) -> String {
        format!("{}{}", self.url(), e.path())
    }

    pub fn config(&self) -> Config {
        lock(&self.shared.config).clone()
    }

    /// Requests that reached the endpoint, answered or not.
    pub fn calls(&self, e: Endpoint) -> usize {
        lock(&self.shared.inner).calls.get(&e).copied().unwrap_or(0)
    }

    /// Tokens the endpoint issued.
    /// When each call to `e` arrived.
    pub fn call_times(&self, e: Endpoint) -> Vec<std::time::Instant> {
        lock(&self.shared.inner).call_times.get(&e).cloned().unwrap_or_default()
    }

    pub fn issued(&self, e: Endpoint) -> usize {
        lock(&self.shared.inner).issued.get(&e).copied().unwrap_or(0)
    }

    /// Why requests were rejected, in order.
    pub fn rejections(&self) -> Vec<(Endpoint, String)> {
        lock(&self.shared.inner).rejections.clone()
    }

    /// The bodies payout requests carried.
    pub fn payout_bodies(&self) -> Vec<Value> {
        lock(&self.shared.inner).payout_bodies.clone()
    }

    /// Whether `token` was issued here and has not expired.
    /// When the fake said `token` expires.
    pub fn expiry_of(&self, token: &str) -> Option<Timestamp> {
        lock(&self.shared.inner).tokens.get(token).map(|(_, exp)| *exp)
    }

    pub fn is_valid(&self, token: &str) -> bool {
        lock(&self.shared.inner).tokens.get(token).is_some_and(|(_, exp)| *exp > Timestamp::now())
    }

    /// When each token of `e` was issued.
    pub fn issue_times(&self, e: Endpoint) -> Vec<std::time::Instant> {
        lock(&self.shared.inner).issue_times.get(&e).cloned().unwrap_or_default()
    }

    /// `e` takes `delay` to answer a valid request, and issues its token only at the end, as a
    /// slow provider does: a client that gives up before (closing the connection) gets none.
    pub fn set_delay(&self, e: Endpoint, delay: Duration) {
        lock(&self.shared.inner).delays.insert(e, delay);
    }

    /// Makes the federation fakes trust `ca_pem` (with the system's roots) when they fetch an
    /// issuer's discovery documents over HTTPS: a real cluster's issuer serves them with its own
    /// CA. Call before the first token request that fetches them.
    pub fn trust_issuer_ca(&self, ca_pem: &[u8]) -> Result<(), String> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca = reqwest::Certificate::from_pem(ca_pem).map_err(|e| e.to_string())?;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .add_root_certificate(ca)
            .build()
            .map_err(|e| e.to_string())?;
        self.shared.http.set(client).map_err(|_| "the fakes fetched a discovery document already".to_string())
    }

    /// Holds each reply of `e` for `delay` after it is made: the token was issued (its lifetime
    /// counts) `delay` before the client has the reply.
    pub fn set_reply_delay(&self, e: Endpoint, delay: Duration) {
        lock(&self.shared.inner).reply_delays.insert(e.path(), delay);
    }

    /// Makes each new token of `e` revoke the ones it issued before, as providers that keep one
    /// valid token per client do: a request carrying an older one is refused.
    pub fn revoke_previous(&self, e: Endpoint) {
        lock(&self.shared.inner).revoking.insert(e);
    }

    pub fn set_lifetime(&self, e: Endpoint, lifetime: Duration) {
        lock(&self.shared.inner).lifetimes.insert(e, lifetime);
    }

    /// The next `n` requests to `e` get `status` with `body`, before any check.
    pub fn fail_next(&self, e: Endpoint, n: usize, status: u16, body: Value, retry_after: Option<u64>) {
        let mut inner = lock(&self.shared.inner);
        let q = inner.failures.entry(e).or_default();
        for _ in 0..n {
            q.push_back(Injected { status, body: body.clone(), retry_after });
        }
    }

    /// Registers another public key for the GitHub App (a key rotation on GitHub's side).
    pub fn register_github_key(&self, pem: &[u8]) {
        lock(&self.shared.config).github_keys.push(pem.to_vec());
    }

    /// Adds a key to the Google service account (a key rotation on Google's side).
    pub fn add_google_key(&self, key_id: &str, pem: &[u8]) {
        lock(&self.shared.config).google_keys.push((key_id.into(), pem.to_vec()));
    }

    /// A service-account JSON key file for key `key_id`, as Google's console downloads it.
    pub fn google_key_file(&self, key_id: &str, pem: &[u8]) -> String {
        serde_json::json!({
            "type": "service_account",
            "project_id": "project",
            "private_key_id": key_id,
            "private_key": String::from_utf8_lossy(pem),
            "client_email": lock(&self.shared.config).google_client_email,
            "client_id": "109876543210",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": self.endpoint_url(Endpoint::GoogleToken),
        })
        .to_string()
    }

    /// Trusts ServiceAccount tokens for Entra (`Some`), or withdraws the trust.
    pub fn set_entra_federation(&self, federation: Option<federation::Federation>) {
        lock(&self.shared.config).entra_federation = federation;
    }

    /// Trusts ServiceAccount tokens for the token exchange (`Some`), or withdraws the trust.
    pub fn set_sts_federation(&self, federation: Option<federation::Federation>) {
        lock(&self.shared.config).sts_federation = federation;
    }

    /// Changes the credentials Podero accepts (a rotation on the provider side).
    pub fn set_podero_client(&self, client: Client) {
        lock(&self.shared.config).podero = client;
    }
}

impl Drop for Fakes {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(crate) fn json_response(status: StatusCode, v: Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}

pub(crate) fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    json_response(status, json!({"error": error, "error_description": description}))
}

impl Shared {
    /// Counts the call and returns an injected failure, if one is queued.
    pub(crate) fn enter(&self, e: Endpoint) -> Option<Response> {
        let mut inner = lock(&self.inner);
        *inner.calls.entry(e).or_default() += 1;
        inner.call_times.entry(e).or_default().push(std::time::Instant::now());
        let injected = inner.failures.get_mut(&e).and_then(VecDeque::pop_front)?;
        let mut resp = json_response(
            StatusCode::from_u16(injected.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            injected.body,
        );
        if let Some(secs) = injected.retry_after
            && let Ok(v) = secs.to_string().parse()
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        Some(resp)
    }

    pub(crate) fn reject(&self, e: Endpoint, why: impl Into<String>, resp: Response) -> Response {
        let why = why.into();
        tracing::debug!(endpoint = ?e, %why, "fake provider rejected a request");
        lock(&self.inner).rejections.push((e, why));
        resp
    }

    pub(crate) fn lifetime(&self, e: Endpoint) -> Duration {
        let default = lock(&self.config).lifetime;
        lock(&self.inner).lifetimes.get(&e).copied().unwrap_or(default)
    }

    /// Waits as long as `e` is set to take ([`Fakes::set_delay`]).
    pub(crate) async fn delay(&self, e: Endpoint) {
        let delay = lock(&self.inner).delays.get(&e).copied().unwrap_or_default();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }

    pub(crate) fn issue(&self, e: Endpoint, token: String, lifetime: Duration) -> Timestamp {
        let exp = Timestamp::now() + lifetime;
        let mut inner = lock(&self.inner);
        *inner.issued.entry(e).or_default() += 1;
        inner.issue_times.entry(e).or_default().push(std::time::Instant::now());
        if inner.revoking.contains(&e) {
            inner.tokens.retain(|_, (issuer, _)| *issuer != e);
        }
        inner.tokens.insert(token, (e, exp));
        exp
    }
}

async fn hold_reply(
    State(s): State<Arc<Shared>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let hold = lock(&s.inner).reply_delays.get(request.uri().path()).copied();
    let response = next.run(request).await;
    if let Some(hold) = hold {
        tokio::time::sleep(hold).await;
    }
    response
}

pub(crate) fn random_token(len: usize) -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..len).map(|_| CHARS[rng.random_range(0..CHARS.len())] as char).collect()
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Checks `Authorization: Basic base64(id:secret)`.
fn check_basic(headers: &HeaderMap, client: &Client) -> Result<(), &'static str> {
    let auth = header_str(headers, header::AUTHORIZATION).ok_or("missing Authorization header")?;
    let encoded = auth.strip_prefix("Basic ").ok_or("Authorization is not Basic")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| "Basic credentials are not base64")?;
    let expected = format!("{}:{}", client.id, client.secret);
    if decoded != expected.as_bytes() {
        return Err("wrong client id or secret");
    }
    Ok(())
}

pub(crate) fn media_type(headers: &HeaderMap) -> String {
    header_str(headers, header::CONTENT_TYPE).unwrap_or("").split(';').next().unwrap_or("").trim().to_ascii_lowercase()
}

/// Answers 401 `invalid_client` with an `error_description` that repeats the request, as a
/// server in a debug mode (or one that wants the credentials shown) does.
async fn echo(
    State(s): State<Arc<Shared>>,
    axum::extract::Query(q): axum::extract::Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    s.enter(Endpoint::Echo);
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let body_text = String::from_utf8_lossy(&body).to_string();
    let all = format!("Authorization: {authorization}; body: {body_text}");
    let description = match q.get("as").map(String::as_str) {
        Some("form") => url_decoded(&body),
        Some("base64") => base64::engine::general_purpose::STANDARD.encode(&all),
        Some("base64url") => base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&all),
        Some("authorization") => authorization.to_string(),
        _ => all,
    };
    oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", &description)
}

fn url_decoded(body: &[u8]) -> String {
    url::form_urlencoded::parse(body).map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ")
}

async fn podero(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let e = Endpoint::Podero;
    if let Some(r) = s.enter(e) {
        return r;
    }
    let client = lock(&s.config).podero.clone();
    if let Err(why) = check_basic(&headers, &client) {
        return s.reject(e, why, oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "Invalid client credentials"));
    }
    if media_type(&headers) != "application/json" {
        return s.reject(
            e,
            "Content-Type is not application/json",
            oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "Expected a JSON body"),
        );
    }
    let parsed: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => {
            return s.reject(
                e,
                "body is not JSON",
                oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "Malformed JSON body"),
            );
        }
    };
    if parsed["grant_type"] != "client_credentials" {
        return s.reject(
            e,
            "grant_type is not client_credentials",
            oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type", "Only client_credentials is supported"),
        );
    }
    s.delay(e).await;
    let lifetime = s.lifetime(e);
    let token = random_token(30);
    s.issue(e, token.clone(), lifetime);
    json_response(
        StatusCode::OK,
        json!({"access_token": token, "expires_in": lifetime.as_secs(), "token_type": "Bearer", "scope": "read write"}),
    )
}

/// An unsigned JWT-shaped token carrying `exp`, as Interswitch's Passport issues.
fn jwt(exp: Timestamp, claims: Value) -> String {
    let b = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let mut c = claims;
    c["exp"] = json!(exp.as_second());
    c["jti"] = json!(random_token(12));
    format!("{}.{}.{}", b(&json!({"alg": "RS256", "typ": "JWT"})), b(&c), random_token(43))
}

async fn interswitch(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let e = Endpoint::Interswitch;
    if let Some(r) = s.enter(e) {
        return r;
    }
    let client = lock(&s.config).interswitch.clone();
    if let Err(why) = check_basic(&headers, &client) {
        return s.reject(e, why, oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "Bad client credentials"));
    }
    if media_type(&headers) != "application/x-www-form-urlencoded" {
        return s.reject(
            e,
            "Content-Type is not form",
            oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "Content-Type must be application/x-www-form-urlencoded",
            ),
        );
    }
    let text = String::from_utf8_lossy(&body);
    let grant = text.split('&').filter_map(|kv| kv.split_once('=')).find(|(k, _)| *k == "grant_type").map(|(_, v)| v);
    if grant != Some("client_credentials") {
        return s.reject(
            e,
            "grant_type is not client_credentials",
            oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "Missing grant type"),
        );
    }
    let lifetime = s.lifetime(e);
    let exp = Timestamp::now() + lifetime;
    let token = jwt(exp, json!({"client_id": client.id, "merchant_code": "MX6072", "requestor_id": "12345678901"}));
    s.issue(e, token.clone(), lifetime);
    json_response(
        StatusCode::OK,
        json!({"access_token": token, "token_type": "bearer", "scope": "profile", "merchant_code": "MX6072",
               "production_payment_code": "051457", "requestor_id": "12345678901"}),
    )
}

/// Verifies an Imburse HMAC `Authorization` header over `body`.
fn check_hmac(s: &Shared, headers: &HeaderMap, body: &[u8]) -> Result<(), String> {
    let (public, private_b64) = {
        let c = lock(&s.config);
        (c.imburse_public.clone(), c.imburse_private_b64.clone())
    };
    let auth = header_str(headers, header::AUTHORIZATION).ok_or("missing Authorization header")?;
    let token = auth.strip_prefix("Hmac ").ok_or("Authorization is not Hmac")?;
    let parts: Vec<&str> = token.split(':').collect();
    let [key, nonce, epoch, signature] = parts.as_slice() else {
        return Err("Hmac token is not key:nonce:epoch:signature".into());
    };
    if *key != public {
        return Err("unknown public key".into());
    }
    let epoch: i64 = epoch.parse().map_err(|_| "epoch is not a number")?;
    if (Timestamp::now().as_second() - epoch).abs() > 300 {
        return Err("request timestamp is more than five minutes off".into());
    }
    let body_hash = if body.is_empty() {
        String::new()
    } else {
        base64::engine::general_purpose::STANDARD.encode(Sha256::digest(body))
    };
    let message = format!("{public}:{nonce}:{epoch}:{body_hash}");
    let secret = base64::engine::general_purpose::STANDARD.decode(private_b64).map_err(|_| "bad fake configuration")?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&secret).map_err(|_| "bad key")?;
    mac.update(message.as_bytes());
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    if expected != *signature {
        return Err("signature does not match".into());
    }
    if !lock(&s.inner).nonces.insert(nonce.to_string()) {
        return Err("nonce reused".into());
    }
    Ok(())
}

fn imburse_token(s: &Shared, e: Endpoint) -> Response {
    let lifetime = s.lifetime(e);
    let token = jwt(
        Timestamp::now() + lifetime,
        json!({"aud": if e == Endpoint::ImburseManagement { "management-api" } else { "payout-api" }}),
    );
    let exp = s.issue(e, token.clone(), lifetime);
    json_response(StatusCode::OK, json!({"accessToken": token, "expires": exp.as_millisecond().to_string()}))
}

async fn imburse_hmac(s: Arc<Shared>, e: Endpoint, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(r) = s.enter(e) {
        return r;
    }
    if let Err(why) = check_hmac(&s, &headers, &body) {
        return s.reject(e, why, json_response(StatusCode::UNAUTHORIZED, json!({"message": "Unauthorized"})));
    }
    imburse_token(&s, e)
}

async fn imburse_management(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    imburse_hmac(s, Endpoint::ImburseManagement, headers, body).await
}

async fn imburse_payout_hmac(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    imburse_hmac(s, Endpoint::ImbursePayoutHmac, headers, body).await
}

async fn imburse_payout(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let e = Endpoint::ImbursePayout;
    if let Some(r) = s.enter(e) {
        return r;
    }
    let unauthorized = || json_response(StatusCode::UNAUTHORIZED, json!({"message": "Unauthorized"}));
    let Some(token) = header_str(&headers, header::AUTHORIZATION).and_then(|a| a.strip_prefix("Bearer ")) else {
        return s.reject(e, "missing bearer token", unauthorized());
    };
    let valid = lock(&s.inner)
        .tokens
        .get(token)
        .is_some_and(|(issuer, exp)| *issuer == Endpoint::ImburseManagement && *exp > Timestamp::now());
    if !valid {
        return s.reject(e, "bearer is not a currently valid management token", unauthorized());
    }
    if media_type(&headers) != "application/json" {
        return s.reject(
            e,
            "Content-Type is not application/json",
            json_response(StatusCode::UNSUPPORTED_MEDIA_TYPE, json!({"message": "Unsupported media type"})),
        );
    }
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    for field in ["customerRef", "orderRef", "instructionRef"] {
        if !parsed[field].is_string() {
            return s.reject(
                e,
                format!("{field} missing"),
                json_response(StatusCode::BAD_REQUEST, json!({"message": format!("{field} is required")})),
            );
        }
    }
    lock(&s.inner).payout_bodies.push(parsed);
    imburse_token(&s, e)
}
