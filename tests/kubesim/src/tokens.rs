//! ServiceAccount tokens, as the API server issues them: the TokenRequest subresource
//! (`POST /api/v1/namespaces/{ns}/serviceaccounts/{name}/token`) signs an RS256 JWT with the
//! cluster's key, and the OIDC discovery documents (`/.well-known/openid-configuration`,
//! `/openid/v1/jwks`) publish the public key, so a federation can verify the token as Entra ID,
//! Google or an RFC 8693 token service verify a real cluster's.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair, RsaPublicKeyComponents};
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
}

impl Issuer {
    pub fn new(url: String) -> std::io::Result<Self> {
        let body: String = KEY_PEM.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|e| std::io::Error::other(format!("service-account key: {e}")))?;
        let key =
            RsaKeyPair::from_pkcs8(&der).map_err(|e| std::io::Error::other(format!("service-account key: {e}")))?;
        let (n, e) = public_parts(&key);
        // As the API server names its keys: a hash of the public key.
        let key_id = URL_SAFE_NO_PAD.encode(Sha256::digest([n.as_slice(), e.as_slice()].concat()));
        Ok(Self { key, key_id, url })
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

    /// Answers a TokenRequest for the ServiceAccount `sa` (its object, which exists).
    pub fn token_request(&self, sa: &Value, body: &Value) -> ApiResult<Value> {
        let name = sa["metadata"]["name"].as_str().unwrap_or_default();
        let namespace = sa["metadata"]["namespace"].as_str().unwrap_or_default();
        let invalid = |causes: Vec<Cause>| ApiError::invalid("TokenRequest", "authentication.k8s.io", name, &causes);
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
        let audiences = if audiences.is_empty() { vec![self.url.clone()] } else { audiences };
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
        Ok(json!({
            "kind": "TokenRequest",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": name, "namespace": namespace, "creationTimestamp": null},
            "spec": {"audiences": audiences, "expirationSeconds": lifetime, "boundObjectRef": spec["boundObjectRef"]},
            "status": {"token": token, "expirationTimestamp": expires.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()},
        }))
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
