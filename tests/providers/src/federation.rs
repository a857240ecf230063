//! Workload identity federation: token endpoints that take a Kubernetes ServiceAccount token
//! instead of a stored secret and verify it as the real services do — the issuer must be one
//! they trust, its OIDC discovery document (`{iss}/.well-known/openid-configuration`) names the
//! JWKS that must hold the signing key (`kid`, RS256), and `aud`, `sub`, `exp`, `nbf` and `iat`
//! must fit.
//!
//! - [`Endpoint::EntraToken`]: Microsoft Entra ID's v2.0 token endpoint, the client credentials
//!   grant with a federated client assertion (`client_assertion_type=
//!   urn:ietf:params:oauth:client-assertion-type:jwt-bearer`), refusals worded `AADSTS…` as
//!   Entra words them.
//! - [`Endpoint::TokenExchange`]: an RFC 8693 security token service (as Google's STS): the
//!   token-exchange grant with the ServiceAccount token as `subject_token`.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents};
use serde_json::{Value, json};

use crate::tls::{form, get};
use crate::{Endpoint, Shared, lock, media_type, oauth_error, random_token};

/// A federated identity credential: which tokens of which issuer are accepted.
#[derive(Clone, Debug)]
pub struct Federation {
    /// The trusted issuer (the cluster's `--service-account-issuer`).
    pub issuer: String,
    /// The accepted `sub`, such as `system:serviceaccount:payments:payments-api`.
    pub subject: String,
    /// The accepted `aud`, such as `api://AzureADTokenExchange`.
    pub audience: String,
}

/// Why a token was refused, in the words of the service.
struct Refusal {
    error: &'static str,
    description: String,
}

fn refuse(error: &'static str, description: impl Into<String>) -> Refusal {
    Refusal { error, description: description.into() }
}

/// The fakes' HTTP client for the issuers' discovery documents (plain HTTP on loopback in tests),
/// made once per set of fakes: a client belongs to the runtime it was made in.
fn client(s: &Shared) -> Result<reqwest::Client, String> {
    if let Some(c) = s.http.get() {
        return Ok(c.clone());
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let c = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| e.to_string())?;
    Ok(s.http.get_or_init(|| c).clone())
}

async fn fetch_json(client: &reqwest::Client, url: &str) -> Result<Value, String> {
    let resp = client.get(url).send().await.map_err(|e| format!("{url}: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("{url}: HTTP {}", resp.status()));
    }
    resp.json().await.map_err(|e| format!("{url}: {e}"))
}

/// The claims of `jwt` once its signature is verified against the issuer's published keys; the
/// issuer must be `federation.issuer` before anything is fetched from it. `messages` words the
/// refusals (Entra's or RFC 8693's).
async fn verify(s: &Shared, jwt: &str, federation: &Federation, messages: &Messages) -> Result<Value, Refusal> {
    let parts: Vec<&str> = jwt.split('.').collect();
    let [h, c, sig] = parts.as_slice() else { return Err(refuse(messages.malformed.0, messages.malformed.1)) };
    let decode = |x: &str| URL_SAFE_NO_PAD.decode(x).ok();
    let json = |x: &str| decode(x).and_then(|b| serde_json::from_slice::<Value>(&b).ok());
    let (Some(header), Some(claims), Some(sig)) = (json(h), json(c), decode(sig)) else {
        return Err(refuse(messages.malformed.0, messages.malformed.1));
    };
    let iss = claims["iss"].as_str().unwrap_or_default();
    if iss != federation.issuer {
        return Err(refuse(messages.issuer.0, messages.issuer.1.replace("{}", iss)));
    }
    if header["alg"] != "RS256" {
        return Err(refuse(messages.signature.0, messages.signature.1));
    }
    let client = client(s).map_err(|e| refuse("temporarily_unavailable", e))?;
    let discovery = fetch_json(&client, &format!("{}/.well-known/openid-configuration", iss.trim_end_matches('/')))
        .await
        .map_err(|e| refuse(messages.discovery.0, messages.discovery.1.replace("{}", &e)))?;
    if discovery["issuer"] != iss {
        return Err(refuse(messages.discovery.0, messages.discovery.1.replace("{}", "the discovery issuer differs")));
    }
    let jwks_uri = discovery["jwks_uri"].as_str().unwrap_or_default();
    let jwks = fetch_json(&client, jwks_uri)
        .await
        .map_err(|e| refuse(messages.discovery.0, messages.discovery.1.replace("{}", &e)))?;
    let key = jwks["keys"]
        .as_array()
        .and_then(|keys| keys.iter().find(|k| k["kid"] == header["kid"] && k["kty"] == "RSA"))
        .ok_or_else(|| refuse(messages.signature.0, messages.signature.1))?;
    let (Some(n), Some(e)) = (key["n"].as_str().and_then(decode), key["e"].as_str().and_then(decode)) else {
        return Err(refuse(messages.signature.0, messages.signature.1));
    };
    let public = RsaPublicKeyComponents { n, e };
    if public.verify(&RSA_PKCS1_2048_8192_SHA256, format!("{h}.{c}").as_bytes(), &sig).is_err() {
        return Err(refuse(messages.signature.0, messages.signature.1));
    }
    let audiences: Vec<&str> = match &claims["aud"] {
        Value::String(a) => vec![a.as_str()],
        Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    if !audiences.contains(&federation.audience.as_str()) {
        return Err(refuse(messages.audience.0, messages.audience.1.replace("{}", &audiences.join(","))));
    }
    let sub = claims["sub"].as_str().unwrap_or_default();
    if sub != federation.subject {
        return Err(refuse(messages.subject.0, messages.subject.1.replace("{}", sub)));
    }
    let now = jiff::Timestamp::now().as_second();
    let in_time = matches!(
        (claims["exp"].as_i64(), claims["iat"].as_i64(), claims["nbf"].as_i64()),
        (Some(exp), Some(iat), nbf) if exp > now && iat <= now + 300 && nbf.is_none_or(|nbf| nbf <= now + 300)
    );
    if !in_time {
        return Err(refuse(messages.time.0, messages.time.1));
    }
    Ok(claims)
}

/// The service's wording of each refusal: (error code, description; `{}` is filled in).
struct Messages {
    malformed: (&'static str, &'static str),
    issuer: (&'static str, &'static str),
    discovery: (&'static str, &'static str),
    signature: (&'static str, &'static str),
    audience: (&'static str, &'static str),
    subject: (&'static str, &'static str),
    time: (&'static str, &'static str),
}

const ENTRA: Messages = Messages {
    malformed: ("invalid_client", "AADSTS50027: JWT token is invalid or malformed."),
    issuer: (
        "invalid_client",
        "AADSTS700211: No matching federated identity record found for presented assertion issuer '{}'.",
    ),
    discovery: ("invalid_client", "AADSTS50166: Request to External OIDC endpoint failed. {}"),
    signature: ("invalid_client", "AADSTS5002738: Invalid JWT token. Signature validation failed."),
    audience: (
        "invalid_client",
        "AADSTS700212: No matching federated identity record found for presented assertion audience '{}'.",
    ),
    subject: (
        "invalid_client",
        "AADSTS700213: No matching federated identity record found for presented assertion subject '{}'.",
    ),
    time: ("invalid_client", "AADSTS700024: Client assertion is not within its valid time range."),
};

const STS: Messages = Messages {
    malformed: ("invalid_grant", "The subject token is not a valid JWT."),
    issuer: ("invalid_grant", "The issuer '{}' is not trusted by this workload identity pool."),
    discovery: ("invalid_grant", "The issuer's OIDC discovery failed: {}"),
    signature: ("invalid_grant", "Invalid JWT signature: no key of the issuer's JWKS verifies it."),
    audience: ("invalid_grant", "The audience in the subject token ('{}') does not match this provider."),
    subject: ("invalid_grant", "The given credential is rejected by the attribute condition (sub '{}')."),
    time: ("invalid_grant", "The subject token has expired or is not yet valid."),
};

/// One check of a request's form, and the service's words when it fails.
struct Check<'a> {
    ok: bool,
    what: &'a str,
    error: &'static str,
    description: &'a str,
}

/// The refusal (400) of the first failed check, in order, if any fails.
fn first_refusal(s: &Shared, e: Endpoint, checks: &[Check<'_>]) -> Option<Response> {
    checks
        .iter()
        .find(|c| !c.ok)
        .map(|c| s.reject(e, c.what, oauth_error(StatusCode::BAD_REQUEST, c.error, c.description)))
}

/// The federation trusted at `e`, if one is configured.
fn config_of(s: &Shared, e: Endpoint) -> Option<Federation> {
    let config = lock(&s.config).clone();
    if e == Endpoint::EntraToken { config.entra_federation } else { config.sts_federation }
}

fn no_trust(s: &Shared, e: Endpoint) -> Response {
    s.reject(e, "no federation configured", oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "no trust"))
}

/// Entra ID: `POST /{tenant}/oauth2/v2.0/token` with the client credentials grant and a
/// federated client assertion.
pub(crate) async fn entra_token(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let e = Endpoint::EntraToken;
    if let Some(r) = s.enter(e) {
        return r;
    }
    let f = form(&body);
    let client_id = lock(&s.config).entra_client_id.clone();
    let missing_credential =
        "AADSTS7000218: The request body must contain the following parameter: 'client_assertion' or 'client_secret'.";
    let checks = [
        Check {
            ok: media_type(&headers) == "application/x-www-form-urlencoded",
            what: "Content-Type",
            error: "invalid_request",
            description: "AADSTS900144: The request body must contain the following parameter: 'grant_type'.",
        },
        Check {
            ok: get(&f, "grant_type") == Some("client_credentials"),
            what: "grant_type",
            error: "unsupported_grant_type",
            description: "AADSTS70003: The app requested an unsupported grant type.",
        },
        Check {
            ok: get(&f, "client_id") == Some(client_id.as_str()),
            what: "client_id",
            error: "unauthorized_client",
            description: "AADSTS700016: Application with identifier was not found in the directory.",
        },
        Check {
            ok: get(&f, "scope").is_some_and(|sc| sc.split(' ').count() == 1 && sc.ends_with("/.default")),
            what: "scope",
            error: "invalid_scope",
            description: "AADSTS1002012: The provided value for scope is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI).",
        },
        Check {
            ok: get(&f, "client_secret").is_none() && !headers.contains_key(axum::http::header::AUTHORIZATION),
            what: "second credential",
            error: "invalid_request",
            description: "AADSTS50049: Multiple client credentials were presented.",
        },
        Check {
            ok: get(&f, "client_assertion_type") == Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
            what: "client_assertion_type",
            error: "invalid_request",
            description: missing_credential,
        },
        Check {
            ok: get(&f, "client_assertion").is_some(),
            what: "no assertion",
            error: "invalid_request",
            description: missing_credential,
        },
    ];
    if let Some(r) = first_refusal(&s, e, &checks) {
        return r;
    }
    let assertion = get(&f, "client_assertion").unwrap_or_default();
    let Some(federation) = config_of(&s, e) else { return no_trust(&s, e) };
    if let Err(r) = verify(&s, assertion, &federation, &ENTRA).await {
        return s.reject(e, r.description.clone(), oauth_error(StatusCode::UNAUTHORIZED, r.error, &r.description));
    }
    let token = format!("eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.{}", random_token(48));
    let lifetime = s.lifetime(e);
    s.issue(e, token.clone(), lifetime);
    Json(json!({
        "token_type": "Bearer",
        "expires_in": lifetime.as_secs(),
        "ext_expires_in": lifetime.as_secs(),
        "access_token": token,
    }))
    .into_response()
}

/// RFC 8693 token exchange: the ServiceAccount token as `subject_token`.
pub(crate) async fn token_exchange(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let e = Endpoint::TokenExchange;
    if let Some(r) = s.enter(e) {
        return r;
    }
    let f = form(&body);
    let expected_audience = lock(&s.config).sts_audience.clone();
    let checks = [
        Check {
            ok: media_type(&headers) == "application/x-www-form-urlencoded",
            what: "Content-Type",
            error: "invalid_request",
            description: "Content-Type must be application/x-www-form-urlencoded",
        },
        Check {
            ok: get(&f, "grant_type") == Some("urn:ietf:params:oauth:grant-type:token-exchange"),
            what: "grant_type",
            error: "unsupported_grant_type",
            description: "Invalid value for \"grant_type\".",
        },
        Check {
            ok: matches!(
                get(&f, "subject_token_type"),
                Some("urn:ietf:params:oauth:token-type:jwt" | "urn:ietf:params:oauth:token-type:id_token")
            ),
            what: "subject_token_type",
            error: "invalid_request",
            description: "Invalid value for \"subject_token_type\".",
        },
        Check {
            ok: get(&f, "requested_token_type").is_none_or(|t| t == "urn:ietf:params:oauth:token-type:access_token"),
            what: "requested_token_type",
            error: "invalid_request",
            description: "Invalid value for \"requested_token_type\".",
        },
        Check {
            ok: get(&f, "audience") == Some(expected_audience.as_str()),
            what: "audience",
            error: "invalid_target",
            description: "The target service indicated by the \"audience\" parameter is invalid.",
        },
        Check {
            ok: get(&f, "subject_token").is_some(),
            what: "no subject_token",
            error: "invalid_request",
            description: "Missing required parameter: subject_token",
        },
    ];
    if let Some(r) = first_refusal(&s, e, &checks) {
        return r;
    }
    let subject_token = get(&f, "subject_token").unwrap_or_default();
    let Some(federation) = config_of(&s, e) else { return no_trust(&s, e) };
    if let Err(r) = verify(&s, subject_token, &federation, &STS).await {
        return s.reject(e, r.description.clone(), oauth_error(StatusCode::BAD_REQUEST, r.error, &r.description));
    }
    let token = format!("ya29.sts.{}", random_token(40));
    let lifetime = s.lifetime(e);
    s.issue(e, token.clone(), lifetime);
    Json(json!({
        "access_token": token,
        "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
        "token_type": "Bearer",
        "expires_in": lifetime.as_secs(),
    }))
    .into_response()
}
