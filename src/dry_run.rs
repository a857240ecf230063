//! A dry run of one TokenSource from a user's machine (`kubectl tokensource check`): the token
//! request the operator would send, sent, and what the operator would make of the answer —
//! without writing anything anywhere.

use jiff::Timestamp;

use crate::controller::{Config, build_request, hint, validate};
use crate::crd::TokenSource;
use crate::credentials::Credentials;
use crate::error::Error;
use crate::redact::Redactor;
use crate::response::{LifetimeSource, Token};
use crate::transport::{self, Transport};

/// What the operator would do with the answer.
pub struct Report {
    /// The request line, such as `POST https://idp.example/token`.
    pub request: String,
    pub token: Token,
    /// When the operator would renew it on its regular schedule.
    pub renew_at: Timestamp,
    /// The window a first token (of a new TokenSource, or after a change) is renewed in: the
    /// operator spreads such renewals over it.
    pub first_renewal: (Timestamp, Timestamp),
    pub secret_type: String,
    /// The keys the target Secret would hold.
    pub keys: Vec<String>,
}

/// A failed dry run: what went wrong, redacted, and how to fix it when that is known.
pub struct Failure {
    pub request: Option<String>,
    pub message: String,
    pub hint: Option<&'static str>,
}

/// Sends the token request of `ts` with `creds` (and the chained `upstream_token`) and reads the
/// answer as the operator would.
pub async fn dry_run(
    ts: &TokenSource,
    creds: &Credentials,
    upstream_token: Option<&str>,
    config: &Config,
) -> Result<Report, Failure> {
    let mut redactor = Redactor::default();
    for v in creds.secret_values() {
        redactor.add(v);
    }
    if let Some(t) = creds.service_account_token() {
        redactor.add(t.as_bytes());
    }
    if let Some(t) = upstream_token {
        redactor.add(t.as_bytes());
    }
    let fail = |request: Option<String>, e: Error, redactor: &Redactor| Failure {
        request,
        message: redactor.redact(&e.to_string()),
        hint: hint(ts, &e),
    };
    let plan = validate(ts, config).map_err(|e| fail(None, e, &redactor))?;
    let mut request =
        build_request(ts, creds, upstream_token, config.allow_http).map_err(|e| fail(None, e, &redactor))?;
    request.timeout = Some(plan.timeout);
    let method = match request.method {
        crate::providers::Method::Get => "GET",
        crate::providers::Method::Post => "POST",
        crate::providers::Method::Put => "PUT",
    };
    let line = redactor.redact(&format!("{method} {}", request.url));
    let transport = Transport::new(config.transport.clone()).map_err(|e| {
        fail(Some(line.clone()), Error::Internal(format!("cannot build the HTTP client: {e}")), &redactor)
    })?;
    let slot = transport
        .slot(&request)
        .ok_or_else(|| fail(Some(line.clone()), Error::Internal("no request slot".into()), &redactor))?;
    let body = transport.send(&request, slot).await.map_err(|e| {
        let redactor = request.redactor();
        fail(Some(line.clone()), Error::FetchToken(e.map_text(|t| redactor.redact(t))), &redactor)
    })?;
    let token = plan.reader.read(&body, Timestamp::now()).map_err(|e| {
        let redactor = request.redactor();
        fail(Some(line.clone()), Error::FetchToken(e.map_text(|t| redactor.redact(t))), &redactor)
    })?;
    redactor.add(token.access_token.as_bytes());
    let secret =
        crate::secret::desired(ts, &token, "dry-run", "").map_err(|e| fail(Some(line.clone()), e, &redactor))?;
    let renew_at = plan.policy.refresh_at(token.issued_at, token.expires_at, 0.5);
    let first_renewal = plan.policy.first_window(token.issued_at, token.expires_at);
    Ok(Report {
        request: line,
        renew_at,
        first_renewal,
        secret_type: secret.type_.unwrap_or_else(|| "Opaque".into()),
        keys: secret.data.unwrap_or_default().into_keys().collect(),
        token,
    })
}

/// Where the expiry came from, in words, with a warning where it is a guess.
pub fn lifetime_source(source: LifetimeSource) -> &'static str {
    match source {
        LifetimeSource::ExpiresIn => "the reply's expires_in (seconds from now)",
        LifetimeSource::ExpiresAt => "the reply's absolute expiry field",
        LifetimeSource::JwtExp => "the token's JWT exp claim (the reply had no expires_in)",
        LifetimeSource::Default => {
            "response.expiry.defaultLifetime: the reply gave no expiry, so this is an assumption; if the provider's tokens live shorter, Secrets will hold expired tokens"
        }
        LifetimeSource::Stored => "the Secret's annotations",
    }
}

/// The transport settings of a dry run: those of the operator, with the endpoint policy given.
pub fn config(allow_http: bool, endpoints: crate::endpoint::EndpointPolicy) -> Config {
    Config {
        allow_http,
        transport: transport::Options { endpoints: std::sync::Arc::new(endpoints), ..Default::default() },
        ..Default::default()
    }
}
