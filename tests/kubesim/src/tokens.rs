//! ServiceAccount tokens, as the API server issues them: the TokenRequest subresource
//! (`POST /api/v1/namespaces/{ns}/serviceaccounts/{name}/token`) signs an RS256 JWT with the
//! cluster's key, and the OIDC discovery documents (`/.well-known/openid-configuration`,
//! `/openid/v1/jwks`) publish the public key, so a federation can verify the token as Entra ID,
//! Google or an RFC 8693 token service verify a real cluster's. TokenReview
//! (`POST /apis/authentication.k8s.io/v1/tokenreviews`) says whether the API server itself
//! accepts a token: for the audiences asked, or its own (`--api-audiences`) when none are.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{RSA_PKCS1_2048_8192_SHA256, RSA_PKCS1_SHA256, RsaKeyPair, RsaPublicKeyComponents};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::error::{ApiError, ApiResult, Cause};

/// The signing key: a committed test key (`keys/service-account.key`); it protects nothing.
const KEY_PEM: &str = include_str!("../keys/service-account.key");

/// The API server refuses shorter tokens (`may not specify a duration less than 10 minutes`).
const MIN_EXPIRATION_SECONDS: i64 = 600;
/// What the API server issues when the request names no lifetime.
const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;
/// `--service-account-max-token-expiration` of a kind cluster: longer requests are shortened.
const MAX_EXPIRATION_SECONDS: i64 = 48 * 3600;

/// The cluster's ServiceAccount token issuer.
pub struct Issuer {
    key: RsaKeyPair,
    key_id: String,
    pub url: String,
    /// The audiences the API server accepts as its own (`--api-audiences`); the issuer's URL
    /// when none are set, as the API server defaults them. k3s and RKE2 add `k3s` and `rke2`.
    api_audiences: std::sync::Mutex<Vec<String>>,
}

impl Issuer {
    pub fn new(url: String, api_audiences: Vec<String>) -> std::io::Result<Self> {
        let body: String = KEY_PEM.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|e| std::io::Error::other(format!("service-account key: {e}")))?;
        let key =
            RsaKeyPair::from_pkcs8(&der).map_err(|e| std::io::Error::other(format!("service-account key: {e}")))?;
        let (n, e) = public_parts(&key);
        // As the API server names its keys: a hash of the public key.
        let key_id = URL_SAFE_NO_PAD.encode(Sha256::digest([n.as_slice(), e.as_slice()].concat()));
        let issuer = Self { key, key_id, url, api_audiences: Default::default() };
        issuer.set_api_audiences(api_audiences);
        Ok(issuer)
    }

    /// The audiences the API server accepts as its own.
    pub fn api_audiences(&self) -> Vec<String> {
        self.api_audiences.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Sets them (`--api-audiences`); none means the issuer's URL.
    pub fn set_api_audiences(&self, audiences: Vec<String>) {
        let audiences = if audiences.is_empty() { vec![self.url.clone()] } else { audiences };
        *self.api_audiences.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = audiences;
    }

    /// `/.well-known/openid-configuration`.
    pub fn discovery(&self) -> Value {
        json!({
            "issuer": self.url,
            "jwks_uri": format!("{}/openid/v1/jwks", self.url),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
        })
    }

    /// `/openid/v1/jwks`.
    pub fn jwks(&self) -> Value {
        let (n, e) = public_parts(&self.key);
        json!({"keys": [{
            "use": "sig", "kty": "RSA", "kid": self.key_id, "alg": "RS256",
            "n": URL_SAFE_NO_PAD.encode(n), "e": URL_SAFE_NO_PAD.encode(e),
        }]})
    }

    /// Answers a TokenRequest for the ServiceAccount `sa` (its object, which exists), made by
    /// `manager`: the TokenRequest comes back as a created object of its own (uid, time, the
    /// fields the request set).
    pub fn token_request(&self, sa: &Value, body: &Value, manager: &str) -> ApiResult<Value> {
        let name = sa["metadata"]["name"].as_str().unwrap_or_default();
        let namespace = sa["metadata"]["namespace"].as_str().unwrap_or_default();
        // The request object has no name of its own.
        let invalid = |causes: Vec<Cause>| ApiError::invalid("TokenRequest", "authentication.k8s.io", "", &causes);
        if body["kind"].as_str().is_some_and(|k| k != "TokenRequest") {
            return Err(ApiError::bad_request(format!("kind {} is not TokenRequest", body["kind"])));
        }
        let spec = &body["spec"];
        let requested = match &spec["expirationSeconds"] {
            Value::Null => DEFAULT_EXPIRATION_SECONDS,
            v => v
                .as_i64()
                .ok_or_else(|| invalid(vec![Cause::invalid("spec.expirationSeconds", v, "must be an integer")]))?,
        };
        if requested < MIN_EXPIRATION_SECONDS {
            return Err(invalid(vec![Cause::invalid(
                "spec.expirationSeconds",
                &json!(requested),
                "may not specify a duration less than 10 minutes",
            )]));
        }
        if requested > 1 << 32 {
            return Err(invalid(vec![Cause::invalid(
                "spec.expirationSeconds",
                &json!(requested),
                "may not specify a duration larger than 2^32 seconds",
            )]));
        }
        let audiences: Vec<String> = match &spec["audiences"] {
            Value::Null => vec![],
            Value::Array(a) => a.iter().filter_map(|v| v.as_str().map(String::from)).collect(),
            v => return Err(invalid(vec![Cause::invalid("spec.audiences", v, "must be a list of strings")])),
        };
        // No audience means the API server's own.
        let audiences = if audiences.is_empty() { self.api_audiences() } else { audiences };
        let lifetime = requested.min(MAX_EXPIRATION_SECONDS);
        let now = jiff::Timestamp::now().as_second();
        let claims = json!({
            "aud": audiences,
            "exp": now + lifetime,
            "iat": now,
            "iss": self.url,
            "jti": uuid::Uuid::new_v4().to_string(),
            "kubernetes.io": {
                "namespace": namespace,
                "serviceaccount": {"name": name, "uid": sa["metadata"]["uid"]},
            },
            "nbf": now,
            "sub": format!("system:serviceaccount:{namespace}:{name}"),
        });
        let token = self.sign(&claims)?;
        let expires = jiff::Timestamp::from_second(now + lifetime)
            .map_err(|e| ApiError::new(500, "InternalError", e.to_string()))?;
        let set: serde_json::Map<String, Value> = spec
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, _)| (format!("f:{k}"), json!({})))
            .collect();
        let created = crate::store::now();
        Ok(json!({
            "kind": "TokenRequest",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {
                "name": name, "namespace": namespace, "creationTimestamp": created,
                "uid": uuid::Uuid::new_v4().to_string(),
                "managedFields": [{
                    "manager": manager, "operation": "Update", "apiVersion": "authentication.k8s.io/v1",
                    "time": created, "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": set}, "subresource": "token",
                }],
            },
            "spec": {"audiences": audiences, "expirationSeconds": lifetime, "boundObjectRef": spec["boundObjectRef"]},
            "status": {"token": token, "expirationTimestamp": expires.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()},
        }))
    }

    /// Answers a TokenReview: whether the token is one this issuer signed, current, for one of
    /// the audiences asked (the API server's own when none are), of a ServiceAccount that still
    /// exists (`account` looks it up by namespace and name: its uid). Worded as the API server
    /// words it: `status.authenticated` only when true, the audiences the token is valid for,
    /// the user, or an `error`.
    pub fn token_review(&self, body: &Value, account: impl Fn(&str, &str) -> Option<String>) -> ApiResult<Value> {
        if body["kind"].as_str().is_some_and(|k| k != "TokenReview") {
            return Err(ApiError::bad_request(format!("kind {} is not TokenReview", body["kind"])));
        }
        let spec = &body["spec"];
        let token = spec["token"].as_str().unwrap_or_default();
        if token.is_empty() {
            return Err(ApiError::bad_request("token is required for TokenReview in authentication"));
        }
        let asked: Vec<String> = spec["audiences"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect())
            .unwrap_or_default();
        let targets = if asked.is_empty() { self.api_audiences() } else { asked };
        let status = match self.verify(token, &targets, account) {
            Ok((claims, audiences, uid)) => {
                let ns = claims["kubernetes.io"]["namespace"].as_str().unwrap_or_default();
                json!({
                    "authenticated": true,
                    "user": {
                        "username": claims["sub"],
                        "uid": uid,
                        "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{ns}"), "system:authenticated"],
                        "extra": {"authentication.kubernetes.io/credential-id": [format!("JTI={}", claims["jti"].as_str().unwrap_or_default())]},
                    },
                    "audiences": audiences,
                })
            }
            Err(why) => json!({"user": {}, "error": why}),
        };
        Ok(json!({
            "kind": "TokenReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": null},
            "spec": spec,
            "status": status,
        }))
    }

    /// The token's claims, the audiences of `targets` it is valid for and its ServiceAccount's
    /// uid; or why it is not valid, as the API server says it.
    fn verify(
        &self,
        token: &str,
        targets: &[String],
        account: impl Fn(&str, &str) -> Option<String>,
    ) -> Result<(Value, Vec<String>, String), String> {
        let invalid = "invalid bearer token".to_string();
        let because = |why: String| format!("[invalid bearer token, {why}]");
        let parts: Vec<&str> = token.split('.').collect();
        let [header, payload, signature] = parts.as_slice() else { return Err(invalid) };
        let decode = |p: &str| URL_SAFE_NO_PAD.decode(p).map_err(|_| invalid.clone());
        let header: Value = serde_json::from_slice(&decode(header)?).map_err(|_| invalid.clone())?;
        let claims: Value = serde_json::from_slice(&decode(payload)?).map_err(|_| invalid.clone())?;
        if header["alg"] != "RS256" || claims["iss"].as_str() != Some(self.url.as_str()) {
            return Err(invalid);
        }
        let (n, e) = public_parts(&self.key);
        let signed = format!("{}.{}", parts[0], parts[1]);
        RsaPublicKeyComponents { n, e }
            .verify(&RSA_PKCS1_2048_8192_SHA256, signed.as_bytes(), &decode(signature)?)
            .map_err(|_| invalid.clone())?;
        let now = jiff::Timestamp::now().as_second();
        if claims["exp"].as_i64().is_none_or(|exp| exp <= now) {
            return Err(because("service account token has expired".into()));
        }
        if claims["nbf"].as_i64().is_some_and(|nbf| nbf > now) {
            return Err(because("service account token is not valid yet".into()));
        }
        let aud: Vec<String> = match &claims["aud"] {
            Value::String(a) => vec![a.clone()],
            Value::Array(a) => a.iter().filter_map(|v| v.as_str().map(String::from)).collect(),
            _ => vec![],
        };
        let valid: Vec<String> = targets.iter().filter(|t| aud.contains(t)).cloned().collect();
        if valid.is_empty() {
            return Err(because(format!("token audiences {aud:?} is invalid for the target audiences {targets:?}")));
        }
        let sa = &claims["kubernetes.io"]["serviceaccount"];
        let ns = claims["kubernetes.io"]["namespace"].as_str().unwrap_or_default();
        let name = sa["name"].as_str().unwrap_or_default();
        let uid = sa["uid"].as_str().unwrap_or_default();
        match account(ns, name) {
            Some(current) if current == uid => Ok((claims.clone(), valid, current)),
            Some(current) => Err(because(format!("service account UID ({uid}) does not match claim ({current})"))),
            None => Err(because(format!("serviceaccounts {name:?} not found"))),
        }
    }

    fn sign(&self, claims: &Value) -> ApiResult<String> {
        let header = json!({"alg": "RS256", "kid": self.key_id});
        let input =
            format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
        let mut sig = vec![0; self.key.public().modulus_len()];
        self.key
            .sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), input.as_bytes(), &mut sig)
            .map_err(|_| ApiError::new(500, "InternalError", "signing the token failed"))?;
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig)))
    }
}

fn public_parts(key: &RsaKeyPair) -> (Vec<u8>, Vec<u8>) {
    let parts = RsaPublicKeyComponents::<Vec<u8>>::from(key.public());
    (parts.n, parts.e)
}
