//! RFC 7523 client assertions: a JWT with `iss` = `sub` = client id, `aud`, a fresh `jti`, `iat`
//! and a one-minute `exp`, signed RS256 or ES256 with the client's private key.

use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, RSA_PKCS1_SHA256, RsaKeyPair};
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use serde_json::json;

use crate::crd::JwtAlgorithm;
use crate::error::Error;

pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// How long an assertion is valid.
pub const LIFETIME_SECS: i64 = 60;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Signs a client assertion at `now` (Unix seconds) with a fresh `jti`.
pub fn client_assertion(
    algorithm: JwtAlgorithm,
    key_pem: &[u8],
    client_id: &str,
    audience: &str,
    key_id: Option<&str>,
    now: i64,
) -> Result<String, Error> {
    let claims = json!({
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "jti": super::hmac::nonce(),
        "iat": now,
        "exp": now + LIFETIME_SECS,
    });
    sign(algorithm, key_pem, key_id, &claims, "oauth2.clientAuth.privateKeyJWT.privateKeySecretRef")
}

/// Signs `claims` as a compact JWS with the PEM private key; `field` names the key in errors.
pub fn sign(
    algorithm: JwtAlgorithm,
    key_pem: &[u8],
    key_id: Option<&str>,
    claims: &serde_json::Value,
    field: &str,
) -> Result<String, Error> {
    let key_error = |what: &str| Error::CredentialsInvalid(format!("{field}: {what}"));
    let der = PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| key_error("not a PEM private key"))?;
    let alg = match algorithm {
        JwtAlgorithm::RS256 => "RS256",
        JwtAlgorithm::ES256 => "ES256",
        JwtAlgorithm::Unknown => return Err(Error::unsupported("the JWT algorithm")),
    };
    let mut header = json!({"alg": alg, "typ": "JWT"});
    if let Some(kid) = key_id {
        header["kid"] = json!(kid);
    }
    let signing_input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
    let rng = SystemRandom::new();
    let signature = match algorithm {
        JwtAlgorithm::RS256 => {
            let pair = match &der {
                PrivateKeyDer::Pkcs8(k) => RsaKeyPair::from_pkcs8(k.secret_pkcs8_der()),
                PrivateKeyDer::Pkcs1(k) => RsaKeyPair::from_der(k.secret_pkcs1_der()),
                _ => return Err(key_error("RS256 needs an RSA key")),
            }
            .map_err(|_| key_error("not a usable RSA key (2048 bits or more)"))?;
            let mut sig = vec![0u8; pair.public().modulus_len()];
            pair.sign(&RSA_PKCS1_SHA256, &rng, signing_input.as_bytes(), &mut sig)
                .map_err(|_| key_error("signing failed"))?;
            sig
        }
        JwtAlgorithm::Unknown => return Err(Error::unsupported("the JWT algorithm")),
        JwtAlgorithm::ES256 => {
            let PrivateKeyDer::Pkcs8(k) = &der else { return Err(key_error("ES256 needs a PKCS#8 P-256 key")) };
            let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, k.secret_pkcs8_der(), &rng)
                .map_err(|_| key_error("not a P-256 key"))?;
            pair.sign(&rng, signing_input.as_bytes()).map_err(|_| key_error("signing failed"))?.as_ref().to_vec()
        }
    };
    Ok(format!("{signing_input}.{}", b64(&signature)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{ECDSA_P256_SHA256_FIXED, KeyPair, RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};

    const RSA: &[u8] = include_bytes!("../../tests/providers/fixtures/jwt-rsa.key");
    const EC: &[u8] = include_bytes!("../../tests/providers/fixtures/jwt-ec.key");

    fn parts(jwt: &str) -> (serde_json::Value, serde_json::Value, Vec<u8>, String) {
        let p: Vec<&str> = jwt.split('.').collect();
        assert_eq!(p.len(), 3);
        let d = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s).unwrap_or_default();
        let h = serde_json::from_slice(&d(p[0])).unwrap_or_default();
        let c = serde_json::from_slice(&d(p[1])).unwrap_or_default();
        (h, c, d(p[2]), format!("{}.{}", p[0], p[1]))
    }

    #[test]
    fn rs256_assertion_verifies_with_the_public_key() {
        let jwt = client_assertion(
            JwtAlgorithm::RS256,
            RSA,
            "client-1",
            "https://idp.example/token",
            Some("k1"),
            1_800_000_000,
        )
        .unwrap();
        let (h, c, sig, input) = parts(&jwt);
        assert_eq!(h, json!({"alg": "RS256", "typ": "JWT", "kid": "k1"}));
        assert_eq!(
            (c["iss"].as_str(), c["sub"].as_str(), c["aud"].as_str()),
            (Some("client-1"), Some("client-1"), Some("https://idp.example/token"))
        );
        assert_eq!(c["exp"].as_i64().unwrap_or(0) - c["iat"].as_i64().unwrap_or(0), 60);
        let der = PrivateKeyDer::from_pem_slice(RSA).unwrap();
        let PrivateKeyDer::Pkcs8(k) = der else { panic!("the fixture is PKCS#8") };
        let pair = RsaKeyPair::from_pkcs8(k.secret_pkcs8_der()).unwrap();
        let public = UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, pair.public_key().as_ref().to_vec());
        assert!(public.verify(input.as_bytes(), &sig).is_ok());
        assert!(public.verify(b"tampered", &sig).is_err());
        let again =
            client_assertion(JwtAlgorithm::RS256, RSA, "client-1", "aud", None, 1_800_000_000).unwrap_or_default();
        assert_ne!(parts(&again).1["jti"], c["jti"], "every assertion has its own jti");
    }

    #[test]
    fn es256_assertion_verifies_with_the_public_key() {
        let jwt = client_assertion(JwtAlgorithm::ES256, EC, "client-2", "aud", None, 1_800_000_000).unwrap();
        let (h, _, sig, input) = parts(&jwt);
        assert_eq!(h["alg"], "ES256");
        assert_eq!(sig.len(), 64, "JWS ES256 signatures are r||s");
        let der = PrivateKeyDer::from_pem_slice(EC).unwrap();
        let PrivateKeyDer::Pkcs8(k) = der else { panic!("the fixture is PKCS#8") };
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, k.secret_pkcs8_der(), &SystemRandom::new())
                .unwrap();
        let public = UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, pair.public_key().as_ref().to_vec());
        assert!(public.verify(input.as_bytes(), &sig).is_ok());
    }

    #[test]
    fn wrong_keys_are_credential_errors() {
        assert!(matches!(
            client_assertion(JwtAlgorithm::RS256, EC, "c", "a", None, 0),
            Err(Error::CredentialsInvalid(_))
        ));
        assert!(matches!(
            client_assertion(JwtAlgorithm::ES256, RSA, "c", "a", None, 0),
            Err(Error::CredentialsInvalid(_))
        ));
        assert!(matches!(
            client_assertion(JwtAlgorithm::RS256, b"not pem", "c", "a", None, 0),
            Err(Error::CredentialsInvalid(_))
        ));
    }
}
