//! GitHub's `POST /app/installations/{id}/access_tokens`, checked as GitHub checks it: an
//! `Authorization: Bearer` JWT signed RS256 with one of the App's registered keys, `iss` the App
//! ID (a number or a string), `iat` not in the future (60 s of drift allowed), `exp` in the
//! future and at most 10 minutes ahead; `Accept: application/vnd.github+json`; an optional JSON
//! body with only `repositories`, `repository_ids` and `permissions`. The answer is `201` with
//! `{"token": "ghs_...", "expires_at": "<RFC 3339>", "permissions": {...},
//! "repository_selection": "all"}`; refusals are GitHub's `{"message", "documentation_url"}`.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use ring::signature::{KeyPair, RSA_PKCS1_2048_8192_SHA256, RsaKeyPair, UnparsedPublicKey};
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use serde_json::{Value, json};

use crate::{Endpoint, Shared, lock, random_token};

fn github_error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"message": message, "documentation_url": "https://docs.github.com/rest", "status": status.as_u16().to_string()})))
        .into_response()
}

/// The public key of a PEM RSA private key.
pub(crate) fn rsa_public_key(pem: &[u8]) -> Option<UnparsedPublicKey<Vec<u8>>> {
    let pair = match PrivateKeyDer::from_pem_slice(pem).ok()? {
        PrivateKeyDer::Pkcs8(k) => RsaKeyPair::from_pkcs8(k.secret_pkcs8_der()).ok()?,
        PrivateKeyDer::Pkcs1(k) => RsaKeyPair::from_der(k.secret_pkcs1_der()).ok()?,
        _ => return None,
    };
    Some(UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, pair.public_key().as_ref().to_vec()))
}

/// Checks the App's JWT; GitHub's message on failure.
fn check_jwt(s: &Shared, jwt: &str) -> Result<(), &'static str> {
    let d = |x: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(x).ok();
    let parts: Vec<&str> = jwt.split('.').collect();
    let [h, c, sig] = parts.as_slice() else { return Err("A JSON web token could not be decoded") };
    let header: Value =
        d(h).and_then(|b| serde_json::from_slice(&b).ok()).ok_or("A JSON web token could not be decoded")?;
    let claims: Value =
        d(c).and_then(|b| serde_json::from_slice(&b).ok()).ok_or("A JSON web token could not be decoded")?;
    let sig = d(sig).ok_or("A JSON web token could not be decoded")?;
    if header["alg"] != "RS256" {
        return Err("A JSON web token could not be decoded");
    }
    let config = lock(&s.config).clone();
    let input = format!("{h}.{c}");
    let verified =
        config.github_keys.iter().filter_map(|k| rsa_public_key(k)).any(|k| k.verify(input.as_bytes(), &sig).is_ok());
    if !verified {
        return Err("A JSON web token could not be decoded");
    }
    let iss = match &claims["iss"] {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        _ => String::new(),
    };
    if iss != config.github_app_id {
        return Err("Integration not found");
    }
    let now = jiff::Timestamp::now().as_second();
    let (Some(iat), Some(exp)) = (claims["iat"].as_i64(), claims["exp"].as_i64()) else {
        return Err("Missing 'issued at' or 'expiration time' claim");
    };
    if iat > now + 60 {
        return Err("'Issued at' claim ('iat') must be an Integer representing a time in the past.");
    }
    if exp <= now {
        return Err(
            "'Expiration time' claim ('exp') must be a numeric value representing the future time at which the assertion expires.",
        );
    }
    if exp > now + 600 {
        return Err("'Expiration time' claim ('exp') is too far in the future");
    }
    Ok(())
}

pub(crate) async fn access_token(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let e = Endpoint::GitHubApp;
    if let Some(r) = s.enter(e) {
        return r;
    }
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !accept.split(',').any(|a| a.trim() == "application/vnd.github+json") {
        return s.reject(
            e,
            "Accept is not application/vnd.github+json",
            github_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "Unsupported 'Accept' header"),
        );
    }
    let bearer =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    let Some(jwt) = bearer else {
        return s.reject(
            e,
            "no bearer JWT",
            github_error(StatusCode::UNAUTHORIZED, "A JSON web token could not be decoded"),
        );
    };
    if let Err(message) = check_jwt(&s, jwt) {
        return s.reject(e, message, github_error(StatusCode::UNAUTHORIZED, message));
    }
    let mut permissions = json!({"contents": "read", "metadata": "read"});
    if !body.is_empty() {
        let Ok(Value::Object(b)) = serde_json::from_slice::<Value>(&body) else {
            return s.reject(
                e,
                "body is not a JSON object",
                github_error(StatusCode::BAD_REQUEST, "Problems parsing JSON"),
            );
        };
        if let Some(k) = b.keys().find(|k| !["repositories", "repository_ids", "permissions"].contains(&k.as_str())) {
            let message = format!("{k} is not a permitted key.");
            return s.reject(e, message.clone(), github_error(StatusCode::UNPROCESSABLE_ENTITY, &message));
        }
        if let Some(p) = b.get("permissions") {
            permissions = p.clone();
        }
    }
    let token = format!("ghs_{}", random_token(36));
    let lifetime = s.lifetime(e);
    let exp = s.issue(e, token.clone(), lifetime);
    let expires_at = jiff::Timestamp::from_second(exp.as_second()).unwrap_or(exp).to_string();
    (
        StatusCode::CREATED,
        Json(json!({"token": token, "expires_at": expires_at, "permissions": permissions, "repository_selection": "all"})),
    )
        .into_response()
}
