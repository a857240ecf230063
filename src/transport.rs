//! The HTTP client for token endpoints: rustls, explicit connect and total timeouts, no
//! redirects, a bounded reply size and a bounded number of requests in flight per host. The
//! environment's proxy settings are never read; a proxy is used only when the operator is given
//! one (`--endpoint-proxy`), and the endpoint policy is then applied to each destination before
//! the request goes to the proxy.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::endpoint::{EndpointPolicy, Refusal, VettingResolver};
use crate::error::ProviderError;
use crate::limit::{Answer, Bounds, Ceilings, HostLimit, Permit, Snapshot};
use sha2::{Digest, Sha256};

use crate::providers::{Method, Request, Tls, hmac};

/// Limits for talking to token endpoints.
#[derive(Clone, Debug)]
pub struct Options {
    pub connect_timeout: Duration,
    pub timeout: Duration,
    pub max_body: usize,
    /// Where each host's limit of requests in flight starts and the least it falls to.
    pub per_host_floor: usize,
    /// The most requests in flight to each host.
    pub per_host_ceilings: Arc<Ceilings>,
    /// Which token endpoints may be reached.
    pub endpoints: Arc<EndpointPolicy>,
    /// The proxy every token request goes through, if any.
    pub proxy: Option<ProxyUrl>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(30),
            max_body: 1 << 20,
            per_host_floor: 4,
            per_host_ceilings: Arc::default(),
            endpoints: Arc::default(),
            proxy: None,
        }
    }
}

/// The proxy token requests go through (`--endpoint-proxy`): `http://host:port`, with any
/// credentials as `http://user:password@host:port`. Requests to `https://` endpoints are
/// tunnelled through it with CONNECT, so TLS still ends at the endpoint. Shown without its
/// credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyUrl(url::Url);

impl ProxyUrl {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let shown = crate::providers::without_userinfo(raw);
        let url = url::Url::parse(raw).map_err(|e| format!("{shown:?} is not a URL: {e}"))?;
        if url.scheme() != "http" {
            return Err(format!(
                "{shown:?}: the proxy must be an http:// URL (https:// endpoints are tunnelled through it)"
            ));
        }
        if url.host().is_none() || url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
            return Err(format!("{shown:?}: a proxy URL is http://host:port, with no path"));
        }
        Ok(Self(url))
    }

    /// The proxy's host when it is a name, as the resolver is asked for it.
    fn host_name(&self) -> Option<String> {
        match self.0.host() {
            Some(url::Host::Domain(name)) => Some(name.to_string()),
            _ => None,
        }
    }
}

impl fmt::Display for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::providers::without_userinfo(self.0.as_str()))
    }
}

impl fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProxyUrl({self})")
    }
}

/// A request slot of one host, held while a request is in flight.
pub struct Slot {
    permit: Permit,
}

pub struct Transport {
    client: reqwest::Client,
    options: Options,
    /// Each host's limit of requests in flight, by [`host_key`].
    hosts: Mutex<HashMap<String, Arc<HostLimit>>>,
    /// Clients for requests with their own TLS material, by a hash of it.
    tls_clients: Mutex<HashMap<[u8; 32], reqwest::Client>>,
}

/// How many distinct TLS setups are kept before the cache starts over.
const MAX_TLS_CLIENTS: usize = 1024;

/// Checks TLS material before it is used, so mistakes read as credential errors.
pub fn check_tls(tls: &Tls) -> Result<(), String> {
    if let Some(ca) = &tls.ca_pem {
        let certs = reqwest::Certificate::from_pem_bundle(ca)
            .map_err(|_| "the CA bundle is not PEM certificates".to_string())?;
        if certs.is_empty() {
            return Err("the CA bundle holds no certificate".into());
        }
    }
    if let Some(id) = &tls.identity_pem {
        reqwest::Identity::from_pem(id).map_err(|_| "the client certificate or key is not valid PEM".to_string())?;
    }
    Ok(())
}

impl Transport {
    pub fn new(options: Options) -> Result<Self, reqwest::Error> {
        install_crypto_provider();
        let client = Self::builder(&options)?.build()?;
        Ok(Self { client, options, hosts: Mutex::default(), tls_clients: Mutex::default() })
    }

    fn builder(options: &Options) -> Result<reqwest::ClientBuilder, reqwest::Error> {
        let resolver = VettingResolver {
            policy: options.endpoints.clone(),
            proxy_host: options.proxy.as_ref().and_then(ProxyUrl::host_name),
        };
        let builder = reqwest::Client::builder()
            .connect_timeout(options.connect_timeout)
            .timeout(options.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(resolver))
            .user_agent(concat!("tokensource-operator/", env!("CARGO_PKG_VERSION")))
            // HTTPS_PROXY, HTTP_PROXY, ALL_PROXY and NO_PROXY are not read: a proxy resolves and
            // connects on its own, where the resolver cannot vet the destination.
            .no_proxy();
        Ok(match &options.proxy {
            Some(proxy) => builder.proxy(reqwest::Proxy::all(proxy.0.as_str())?),
            None => builder,
        })
    }

    /// The client for a request: the shared one, or one built for its TLS material.
    fn client_for(&self, tls: Option<&Tls>) -> Result<reqwest::Client, ProviderError> {
        let Some(tls) = tls.filter(|t| t.ca_pem.is_some() || t.identity_pem.is_some()) else {
            return Ok(self.client.clone());
        };
        let mut h = Sha256::new();
        for part in [&tls.ca_pem, &tls.identity_pem] {
            let bytes = part.as_deref().unwrap_or_default();
            h.update((bytes.len() as u64).to_be_bytes());
            h.update(bytes);
        }
        let key: [u8; 32] = h.finalize().into();
        let mut clients = self.tls_clients.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = clients.get(&key) {
            return Ok(c.clone());
        }
        let setup = |e: String| ProviderError::Unreachable(format!("TLS setup: {e}"));
        let mut builder = Self::builder(&self.options).map_err(|e| setup(e.to_string()))?;
        if let Some(ca) = &tls.ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(ca).map_err(|e| setup(e.to_string()))?;
            builder = builder.tls_certs_only(certs);
        }
        if let Some(id) = &tls.identity_pem {
            builder = builder.identity(reqwest::Identity::from_pem(id).map_err(|e| setup(e.to_string()))?);
        }
        let client = builder.build().map_err(|e| setup(e.to_string()))?;
        if clients.len() >= MAX_TLS_CLIENTS {
            clients.clear();
        }
        clients.insert(key, client.clone());
        Ok(client)
    }

    fn lock_hosts(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<HostLimit>>> {
        self.hosts.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn host_limit(&self, url: &url::Url) -> Arc<HostLimit> {
        let ceiling = self
            .options
            .per_host_ceilings
            .of(url.host_str().unwrap_or_default(), url.port_or_known_default().unwrap_or(0));
        let bounds = Bounds::new(self.options.per_host_floor, ceiling);
        self.lock_hosts().entry(host_key(url)).or_insert_with(|| HostLimit::new(bounds)).clone()
    }

    /// Forgets the limits of hosts not in `live` (as [`host_key`] names them); a host with a
    /// request in flight keeps its entry until the next time.
    pub fn retain_hosts(&self, live: &std::collections::HashSet<String>) {
        self.lock_hosts().retain(|h, limit| live.contains(h) || !limit.idle());
    }

    /// How many more requests the host `host_key` may be sent now, and until when a
    /// `Retry-After` of it holds every request back (then none may).
    pub fn free_slots(&self, host_key: &str) -> (usize, Option<std::time::Instant>) {
        let limit = self.lock_hosts().get(host_key).cloned();
        limit.map_or((1, None), |l| l.free(std::time::Instant::now()))
    }

    /// Each host's limit as it is now, by [`host_key`].
    pub fn hosts(&self) -> Vec<(String, Snapshot)> {
        let now = std::time::Instant::now();
        let hosts: Vec<_> = self.lock_hosts().iter().map(|(h, l)| (h.clone(), l.clone())).collect();
        hosts.into_iter().map(|(h, l)| (h, l.snapshot(now))).collect()
    }

    /// One of the request slots of the request's host, if one is free. Waiting for a slot is the
    /// caller's to arrange, so that a slow host never holds anything but its own slots.
    pub fn slot(&self, req: &Request) -> Option<Slot> {
        self.slot_for(&req.url)
    }

    /// One of the request slots of the host of `url`, if one is free: taken before the request
    /// is built when building it costs something (a ServiceAccount token).
    pub fn slot_for(&self, url: &url::Url) -> Option<Slot> {
        self.host_limit(url).try_acquire(std::time::Instant::now()).map(|permit| Slot { permit })
    }

    /// Sends one attempt in `slot` and returns the reply body of a 2xx answer. How the host
    /// answered adapts its limit.
    pub async fn send(&self, req: &Request, slot: Slot) -> Result<Vec<u8>, ProviderError> {
        let client = self.client_for(req.tls.as_ref())?;
        let started = std::time::Instant::now();
        let result = self.send_in(req, client).await;
        let answer = match &result {
            Ok(_) => Answer::Fine(started.elapsed()),
            Err(ProviderError::Status { status, retry_after, .. }) if *status == 429 || *status >= 500 => {
                Answer::Overloaded(*retry_after)
            }
            Err(ProviderError::Unreachable(_)) => Answer::Overloaded(None),
            Err(_) => Answer::Neutral,
        };
        slot.permit.finish(answer, std::time::Instant::now());
        result
    }

    async fn send_in(&self, req: &Request, client: reqwest::Client) -> Result<Vec<u8>, ProviderError> {
        self.options.endpoints.check_url(&req.url).map_err(|r| ProviderError::NotAllowed(r.to_string()))?;
        if self.options.proxy.is_some() {
            self.check_proxied(&req.url).await?;
        }
        let method = match req.method {
            Method::Get => reqwest::Method::GET,
            Method::Post => reqwest::Method::POST,
            Method::Put => reqwest::Method::PUT,
        };
        let mut builder = client.request(method, req.url.clone());
        if let Some(t) = req.timeout.filter(|t| *t < self.options.timeout) {
            builder = builder.timeout(t);
        }
        let has_accept = req.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("accept"));
        if !has_accept {
            builder = builder.header(reqwest::header::ACCEPT, "application/json");
        }
        for (k, v) in &req.headers {
            builder = builder.header(k.as_str(), v.as_str());
        }
        if let Some(ct) = &req.content_type {
            builder = builder.header(reqwest::header::CONTENT_TYPE, ct.as_str());
        }
        // This attempt's secrets: the request's, and the Authorization header as sent (an HMAC
        // signature differs per attempt).
        let mut redactor = req.redactor();
        if let Some(auth) = req.authorization(jiff::Timestamp::now().as_second(), &hmac::nonce()) {
            redactor.add(auth.as_bytes());
            if let Some((_, credentials)) = auth.split_once(' ') {
                redactor.add(credentials.as_bytes());
                redactor.add(credentials.rsplit(':').next().unwrap_or_default().as_bytes());
            }
            builder = builder.header(reqwest::header::AUTHORIZATION, auth);
        }
        if !req.body.is_empty() || req.method != Method::Get {
            builder = builder.body(req.body.clone());
        }
        let unreachable = |e: &reqwest::Error| match refusal(e) {
            Some(r) => ProviderError::NotAllowed(r.to_string()),
            None => ProviderError::Unreachable(redactor.redact(&describe_reqwest(e))),
        };
        let mut resp = builder.send().await.map_err(|e| unreachable(&e))?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| retry_after(v, jiff::Timestamp::now()));
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| unreachable(&e))? {
            if body.len() + chunk.len() > self.options.max_body {
                return Err(ProviderError::BadResponse(format!(
                    "the reply is larger than {} bytes",
                    self.options.max_body
                )));
            }
            body.extend_from_slice(&chunk);
        }
        if status.is_success() {
            return Ok(body);
        }
        // Redacted before it is cut: a cut could split a secret so it is no longer recognised.
        let detail = describe_error_body(&body, &redactor);
        Err(ProviderError::Status { status: status.as_u16(), detail, retry_after })
    }

    /// Through a proxy the operator never connects to the endpoint, so its resolver never sees
    /// the endpoint's name: the name is resolved here and refused unless every address is
    /// allowed (the proxy may pick any). The proxy resolves it again; a name whose answers
    /// change in between (DNS rebinding) is the proxy's to refuse.
    async fn check_proxied(&self, url: &url::Url) -> Result<(), ProviderError> {
        let Some(url::Host::Domain(name)) = url.host() else { return Ok(()) };
        let lookup = tokio::net::lookup_host((name, 0));
        let addrs = tokio::time::timeout(self.options.connect_timeout, lookup)
            .await
            .map_err(|_| ProviderError::Unreachable(format!("resolving {name} to check it timed out")))?
            .map_err(|e| ProviderError::Unreachable(format!("cannot resolve {name} to check it: {e}")))?;
        self.options.endpoints.vet_every(name, addrs).map_err(|r| ProviderError::NotAllowed(r.to_string()))
    }
}

/// The key of a host's request slots: host and port.
pub fn host_key(url: &url::Url) -> String {
    format!("{}:{}", url.host_str().unwrap_or_default(), url.port_or_known_default().unwrap_or(0))
}

/// A `Retry-After` value (RFC 9110 section 10.2.3): delay seconds or an HTTP date, as a delay
/// from `now`, at most a day (the retry schedule caps it further).
pub fn retry_after(value: &str, now: jiff::Timestamp) -> Option<Duration> {
    const DAY: u64 = 86_400;
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs.min(DAY)));
    }
    let at = jiff::fmt::rfc2822::parse(value).ok()?.timestamp();
    let secs = at.as_second().saturating_sub(now.as_second()).clamp(0, DAY as i64);
    Some(Duration::from_secs(u64::try_from(secs).unwrap_or(0)))
}

/// Selects ring as the process's TLS crypto provider (the one kube uses too); harmless when one
/// is installed already.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The outbound policy's refusal, if that is why the request failed (the resolver refused every
/// address of the host).
fn refusal(e: &reqwest::Error) -> Option<Refusal> {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(r) = s.downcast_ref::<Refusal>() {
            return Some(r.clone());
        }
        source = s.source();
    }
    None
}

fn describe_reqwest(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    let mut source = std::error::Error::source(e);
    let mut root = None;
    while let Some(s) = source {
        root = Some(s.to_string());
        source = s.source();
    }
    match root {
        Some(r) => format!("{kind}: {r}"),
        None => kind.to_string(),
    }
}

/// What an error reply says, in a line: the OAuth 2.0 `error` and `error_description` (RFC 6749
/// section 5.2), a `message`-like field, or the start of the text.
pub fn describe_error_body(body: &[u8], redactor: &crate::redact::Redactor) -> Option<String> {
    if body.is_empty() {
        return None;
    }
    let clip = |s: &str| {
        let s = redactor.redact(s);
        let clean: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
        let clean = clean.trim().to_string();
        if clean.chars().count() > 300 { format!("{}…", clean.chars().take(300).collect::<String>()) } else { clean }
    };
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        let s = |k: &str| v.get(k).and_then(|x| x.as_str()).filter(|x| !x.is_empty());
        if let Some(err) = s("error") {
            return Some(clip(&match s("error_description") {
                Some(d) => format!("{err}: {d}"),
                None => err.to_string(),
            }));
        }
        for k in ["message", "error_message", "errorMessage", "detail", "title"] {
            if let Some(m) = s(k) {
                return Some(clip(m));
            }
        }
        if let Some(m) = v.get("error").and_then(|e| e.get("message")).and_then(|m| m.as_str()) {
            return Some(clip(m));
        }
    }
    let text = String::from_utf8_lossy(body);
    Some(clip(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_in_seconds_or_as_a_date_and_capped() {
        let now: jiff::Timestamp = "1994-11-06T08:49:00Z".parse().unwrap();
        assert_eq!(retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(retry_after("999999999999", now), Some(Duration::from_secs(86_400)));
        assert_eq!(retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now), Some(Duration::from_secs(37)));
        assert_eq!(retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now), Some(Duration::ZERO), "a date in the past");
        assert_eq!(retry_after("soon", now), None);
        assert_eq!(retry_after("-5", now), None);
    }

    #[test]
    fn proxy_urls_are_plain_http_and_shown_without_credentials() {
        let p = ProxyUrl::parse("http://user:pa55word@proxy.corp.example:3128").unwrap();
        assert_eq!(p.host_name().as_deref(), Some("proxy.corp.example"));
        assert_eq!(
            format!("{p} {p:?}"),
            "http://[redacted]@proxy.corp.example:3128/ ProxyUrl(http://[redacted]@proxy.corp.example:3128/)"
        );
        assert_eq!(ProxyUrl::parse("http://192.0.2.1:3128").unwrap().host_name(), None);
        for bad in
            ["https://u:pa55word@proxy:3128", "socks5://proxy:1080", "http://proxy:3128/path", "proxy:3128", "http://"]
        {
            let e = ProxyUrl::parse(bad).unwrap_err();
            assert!(!e.contains("pa55word"), "{e}");
        }
        // The client builds with it.
        let options = Options { proxy: Some(p), ..Default::default() };
        assert!(Transport::new(options).is_ok());
    }

    #[tokio::test]
    async fn a_failed_proxy_connection_is_described_without_the_proxy_credentials() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let options = Options {
            proxy: Some(ProxyUrl::parse(&format!("http://user:pa55word@{closed}")).unwrap()),
            endpoints: Arc::new(EndpointPolicy::parse("127.0.0.1/32", "").unwrap()),
            ..Default::default()
        };
        let transport = Transport::new(options).unwrap();
        let req = Request {
            method: Method::Post,
            url: url::Url::parse(&format!("https://{closed}/token")).unwrap(),
            headers: vec![],
            body: vec![],
            content_type: None,
            auth: crate::providers::Auth::None,
            secrets: vec![],
            tls: None,
            timeout: None,
        };
        let slot = transport.slot(&req).unwrap();
        let e = transport.send(&req, slot).await.unwrap_err().to_string();
        assert!(e.contains("connect") && !e.contains("pa55word"), "{e}");
    }

    #[test]
    fn error_bodies_read_as_one_line() {
        assert_eq!(
            describe_error_body(
                br#"{"error":"invalid_client","error_description":"Client authentication failed"}"#,
                &Default::default()
            )
            .as_deref(),
            Some("invalid_client: Client authentication failed")
        );
        assert_eq!(
            describe_error_body(br#"{"error":"invalid_scope"}"#, &Default::default()).as_deref(),
            Some("invalid_scope")
        );
        assert_eq!(
            describe_error_body(br#"{"message":"Nonce reused"}"#, &Default::default()).as_deref(),
            Some("Nonce reused")
        );
        assert_eq!(
            describe_error_body(b"<html>\nBad Gateway\n</html>", &Default::default()).as_deref(),
            Some("<html> Bad Gateway </html>")
        );
        assert_eq!(describe_error_body(b"", &Default::default()), None);
        let long = "x".repeat(1000);
        assert!(describe_error_body(long.as_bytes(), &Default::default()).is_some_and(|d| d.chars().count() == 301));
    }
}
