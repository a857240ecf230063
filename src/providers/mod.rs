//! Building token requests: one module per way of asking. A [`Request`] is everything the
//! transport needs; authentication that must be fresh per attempt (HMAC) is applied at send time.

pub mod hmac;
pub mod http;
pub mod jwt;
pub mod oauth2;

use std::fmt;

use base64::Engine;

use crate::crd::NamedValue;
use crate::credentials::Credentials;
use crate::error::Error;

/// How a request authenticates, applied when it is sent.
#[derive(Clone)]
pub enum Auth {
    None,
    Basic { username: String, password: String },
    Bearer(String),
    Hmac(hmac::ImburseKey),
}

/// An HTTP method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Put,
}

/// A token request ready to send.
#[derive(Clone)]
pub struct Request {
    pub method: Method,
    pub url: url::Url,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub content_type: Option<String>,
    pub auth: Auth,
    /// Values that must never appear in anything the operator writes or logs.
    pub secrets: Vec<Vec<u8>>,
    /// A client certificate and CA bundle for this request, when the spec has them.
    pub tls: Option<Tls>,
    /// The total timeout of this request, when shorter than the transport's.
    pub timeout: Option<std::time::Duration>,
}

/// PEM material for one request's TLS connection.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Tls {
    /// CA certificates to trust instead of the system roots.
    pub ca_pem: Option<Vec<u8>>,
    /// The client certificate chain followed by its private key.
    pub identity_pem: Option<Vec<u8>>,
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("url", &self.url.as_str())
            .field("headers", &self.headers.iter().map(|(k, _)| k).collect::<Vec<_>>())
            .field("body_len", &self.body.len())
            .finish_non_exhaustive()
    }
}

impl Request {
    /// The `Authorization` header for one attempt; HMAC signatures get a fresh nonce and time.
    pub fn authorization(&self, now_epoch: i64, nonce: &str) -> Option<String> {
        match &self.auth {
            Auth::None => None,
            Auth::Basic { username, password } => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))
            )),
            Auth::Bearer(token) => Some(format!("Bearer {token}")),
            Auth::Hmac(key) => Some(key.authorization(nonce, now_epoch, &self.body)),
        }
    }

    /// Everything secret this request sends, in every encoding it may be echoed in: the values
    /// from Secrets, the Basic pair, and the bearer token.
    pub fn redactor(&self) -> crate::redact::Redactor {
        let mut r = crate::redact::Redactor::default();
        for s in &self.secrets {
            r.add(s);
        }
        match &self.auth {
            Auth::Basic { username, password } => r.add_pair(username, password),
            Auth::Bearer(token) => r.add(token.as_bytes()),
            Auth::None | Auth::Hmac(_) => {}
        }
        r
    }

    /// Replaces every secret value this request sends, in any encoding, in `text`.
    pub fn scrub(&self, text: &str) -> String {
        self.redactor().redact(text)
    }
}

/// A URL text with any `user:password@` removed, for messages.
pub fn without_userinfo(raw: &str) -> String {
    let Some(scheme_end) = raw.find("://").map(|i| i + 3) else { return raw.to_string() };
    let rest = &raw[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}[redacted]@{}", &raw[..scheme_end], &rest[at + 1..]),
        None => raw.to_string(),
    }
}

/// Parses and checks a token endpoint URL.
pub fn parse_url(field: &str, raw: &str, allow_http: bool) -> Result<url::Url, Error> {
    let url = url::Url::parse(raw)
        .map_err(|e| Error::InvalidSpec(format!("{field}: {:?} is not a URL: {e}", without_userinfo(raw))))?;
    match url.scheme() {
        "https" => {}
        "http" if allow_http => {}
        "http" => {
            return Err(Error::InvalidSpec(format!(
                "{field}: plain http would send credentials unencrypted; use https (or start the operator with --allow-insecure-http for local testing)"
            )));
        }
        other => return Err(Error::InvalidSpec(format!("{field}: scheme {other:?} is not supported; use https"))),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Error::InvalidSpec(format!("{field}: put credentials in Secrets, not in the URL")));
    }
    Ok(url)
}

/// Resolves named values (headers, parameters, form fields) in order; values read from Secrets
/// are added to `secrets`, so replies are scrubbed of them.
pub fn resolve_all(
    creds: &Credentials,
    items: &[NamedValue],
    field: &str,
    secrets: &mut Vec<Vec<u8>>,
) -> Result<Vec<(String, String)>, Error> {
    items
        .iter()
        .map(|item| {
            let v = creds.resolve(&item.source(), &format!("{field}[{}]", item.name))?;
            if v.secret {
                secrets.push(v.text.clone().into_bytes());
            }
            Ok((item.name.clone(), v.text))
        })
        .collect()
}

fn header_name_ok(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Checks extra headers and refuses ones the operator sets itself.
pub fn check_headers(field: &str, headers: &[(String, String)]) -> Result<(), Error> {
    for (k, v) in headers {
        if !header_name_ok(k) {
            return Err(Error::InvalidSpec(format!("{field}: {k:?} is not a valid header name")));
        }
        if v.contains(['\r', '\n']) {
            return Err(Error::InvalidSpec(format!("{field}.{k}: header values cannot contain line breaks")));
        }
        let lower = k.to_ascii_lowercase();
        if matches!(lower.as_str(), "host" | "content-length" | "content-type" | "transfer-encoding" | "connection") {
            return Err(Error::InvalidSpec(format!("{field}: the {k} header is set by the operator")));
        }
    }
    Ok(())
}
