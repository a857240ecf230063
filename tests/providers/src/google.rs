//! Google's token endpoint for service accounts: the OAuth 2.0 JWT-bearer grant (RFC 7523
//! section 2.1) as Google checks it — a form body with
//! `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer` and `assertion`, a JWT signed RS256
//! with a key of the service account named by `kid`, `iss` the account's e-mail, `aud` this token
//! endpoint, a `scope`, `iat` not in the future, `exp` after now and at most an hour after
//! `iat`. Answers `{"access_token", "expires_in", "token_type": "Bearer"}`; refusals are
//! `400 {"error": "invalid_grant", "error_description": ...}` as Google words them.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{Value, json};

use crate::github::rsa_public_key;
use crate::tls::{form, get};
use crate::{Endpoint, Shared, lock, media_type, oauth_error, random_token};

fn check(s: &Shared, jwt: &str, audience: &str) -> Result<(), &'static str> {
    let d = |x: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(x).ok();
    let parts: Vec<&str> = jwt.split('.').collect();
    let [h, c, sig] = parts.as_slice() else {
        return Err("Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe.");
    };
    let header: Value = d(h).and_then(|b| serde_json::from_slice(&b).ok()).ok_or("Invalid JWT Signature.")?;
    let claims: Value = d(c).and_then(|b| serde_json::from_slice(&b).ok()).ok_or("Invalid JWT Signature.")?;
    let sig = d(sig).ok_or("Invalid JWT Signature.")?;
    let config = lock(&s.config).clone();
    if header["alg"] != "RS256" {
        return Err("Invalid JWT Signature.");
    }
    let key =
        config.google_keys.iter().find(|(kid, _)| header["kid"] == kid.as_str()).ok_or("Invalid JWT Signature.")?;
    let input = format!("{h}.{c}");
    if rsa_public_key(&key.1).is_none_or(|k| k.verify(input.as_bytes(), &sig).is_err()) {
        return Err("Invalid JWT Signature.");
    }
    if claims["iss"] != config.google_client_email.as_str() {
        return Err("Invalid JWT: the issuer is not the service account.");
    }
    if claims["aud"] != audience {
        return Err("Invalid JWT: audience does not match the token endpoint.");
    }
    if claims["scope"].as_str().is_none_or(|sc| sc.trim().is_empty()) {
        return Err("Invalid OAuth scope or ID token audience provided.");
    }
    let now = jiff::Timestamp::now().as_second();
    let (Some(iat), Some(exp)) = (claims["iat"].as_i64(), claims["exp"].as_i64()) else {
        return Err("Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe.");
    };
    if iat > now + 60 || exp <= now || exp - iat > 3600 {
        return Err(
            "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.",
        );
    }
    Ok(())
}

pub(crate) async fn token(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let e = Endpoint::GoogleToken;
    if let Some(r) = s.enter(e) {
        return r;
    }
    if media_type(&headers) != "application/x-www-form-urlencoded" {
        return s.reject(
            e,
            "Content-Type is not form",
            oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "Invalid Content-Type"),
        );
    }
    let f = form(&body);
    if get(&f, "grant_type") != Some("urn:ietf:params:oauth:grant-type:jwt-bearer") {
        return s.reject(
            e,
            "grant_type",
            oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type", "Invalid grant_type"),
        );
    }
    if headers.contains_key(axum::http::header::AUTHORIZATION) {
        return s.reject(
            e,
            "Authorization header",
            oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "the assertion goes in the body"),
        );
    }
    let audience = format!("{}{}", lock(&s.base_url), e.path());
    let Some(assertion) = get(&f, "assertion") else {
        return s.reject(
            e,
            "no assertion",
            oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "Missing required parameter: assertion"),
        );
    };
    if let Err(why) = check(&s, assertion, &audience) {
        return s.reject(e, why, oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", why));
    }
    let token = format!("ya29.{}", random_token(40));
    let lifetime = s.lifetime(e);
    s.issue(e, token.clone(), lifetime);
    Json(json!({"access_token": token, "expires_in": lifetime.as_secs(), "token_type": "Bearer"})).into_response()
}
