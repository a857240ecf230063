//! Imburse's HMAC request signing: `Authorization: Hmac {publicKey}:{nonce}:{epoch}:{signature}`
//! where the signature is base64(HMAC-SHA256(key, "{publicKey}:{nonce}:{epoch}:{bodyHash}")) and
//! bodyHash is base64(SHA-256(body)), or empty when there is no body.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::crd::KeyEncoding;
use crate::error::Error;

/// A tenant API key pair.
#[derive(Clone)]
pub struct ImburseKey {
    public_key: String,
    key: Vec<u8>,
}

impl ImburseKey {
    /// Builds the key; a `base64` private key is decoded to bytes, as Imburse's samples do.
    pub fn new(public_key: String, private_key: &str, encoding: KeyEncoding) -> Result<Self, Error> {
        if public_key.is_empty() || public_key.contains(':') {
            return Err(Error::InvalidSpec("hmac.publicKey must be non-empty and contain no ':'".into()));
        }
        let key = match encoding {
            KeyEncoding::Base64 => {
                base64::engine::general_purpose::STANDARD.decode(private_key.trim()).map_err(|_| {
                    Error::CredentialsInvalid(
                        "hmac.privateKey is not valid base64; set privateKeyEncoding: None if the key is used as is"
                            .into(),
                    )
                })?
            }
            KeyEncoding::None => private_key.as_bytes().to_vec(),
            KeyEncoding::Unknown => return Err(Error::unsupported("http.auth.hmac.privateKeyEncoding")),
        };
        if key.is_empty() {
            return Err(Error::CredentialsInvalid("hmac.privateKey is empty".into()));
        }
        Ok(Self { public_key, key })
    }

    /// The string that is signed.
    pub fn message(&self, nonce: &str, epoch: i64, body: &[u8]) -> String {
        let body_hash = if body.is_empty() {
            String::new()
        } else {
            base64::engine::general_purpose::STANDARD.encode(Sha256::digest(body))
        };
        format!("{}:{nonce}:{epoch}:{body_hash}", self.public_key)
    }

    pub fn signature(&self, nonce: &str, epoch: i64, body: &[u8]) -> String {
        // HMAC accepts keys of any length; new_from_slice cannot fail for it.
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.key) {
            Ok(m) => m,
            Err(_) => return String::new(),
        };
        mac.update(self.message(nonce, epoch, body).as_bytes());
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    }

    pub fn authorization(&self, nonce: &str, epoch: i64, body: &[u8]) -> String {
        format!("Hmac {}:{nonce}:{epoch}:{}", self.public_key, self.signature(nonce, epoch, body))
    }
}

/// A fresh random nonce: 128 bits, hex.
pub fn nonce() -> String {
    use rand::Rng;
    let bytes: [u8; 16] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Known answers computed independently of this code with Python's standard library:
    //
    //   import hmac, hashlib, base64
    //   key = base64.b64decode("c2VjcmV0LWtleS1mb3ItdGVzdHM=")          # b"secret-key-for-tests"
    //   def sign(msg): return base64.b64encode(hmac.new(key, msg.encode(), hashlib.sha256).digest()).decode()
    //   sign("pub-123:nonce-abc:1535617532:")
    //   body = b'{"customerRef":"my-customer-ref","orderRef":"1","instructionRef":"1"}'
    //   h = base64.b64encode(hashlib.sha256(body).digest()).decode()
    //   sign("pub-123:nonce-abc:1535617532:" + h)
    //   raw = b"raw-key"; base64.b64encode(hmac.new(raw, b"pub-123:n:1:", hashlib.sha256).digest())
    const KEY_B64: &str = "c2VjcmV0LWtleS1mb3ItdGVzdHM=";
    const BODY: &[u8] = br#"{"customerRef":"my-customer-ref","orderRef":"1","instructionRef":"1"}"#;

    fn key() -> ImburseKey {
        ImburseKey::new("pub-123".into(), KEY_B64, KeyEncoding::Base64).unwrap()
    }

    #[test]
    fn message_without_body_ends_in_a_colon() {
        assert_eq!(key().message("nonce-abc", 1535617532, b""), "pub-123:nonce-abc:1535617532:");
    }

    #[test]
    fn known_answers() {
        assert_eq!(key().signature("nonce-abc", 1535617532, b""), EMPTY_BODY_SIG);
        assert_eq!(key().message("nonce-abc", 1535617532, BODY), format!("pub-123:nonce-abc:1535617532:{BODY_HASH}"));
        assert_eq!(key().signature("nonce-abc", 1535617532, BODY), BODY_SIG);
        let raw = ImburseKey::new("pub-123".into(), "raw-key", KeyEncoding::None).unwrap();
        assert_eq!(raw.signature("n", 1, b""), RAW_SIG);
        assert_eq!(
            key().authorization("nonce-abc", 1535617532, b""),
            format!("Hmac pub-123:nonce-abc:1535617532:{EMPTY_BODY_SIG}")
        );
    }

    #[test]
    fn bad_keys_are_reported() {
        assert!(ImburseKey::new("pub".into(), "not base64!", KeyEncoding::Base64).is_err());
        assert!(ImburseKey::new("a:b".into(), KEY_B64, KeyEncoding::Base64).is_err());
        assert_ne!(nonce(), nonce());
        assert_eq!(nonce().len(), 32);
    }

    const EMPTY_BODY_SIG: &str = "1++L9XBalKW49apREMPPuc3Lnitdss+VAZW6O8pXE3A=";
    const BODY_HASH: &str = "+0uh4joB4GQ09vd74EtjQYpuyBNog2DIpdjN3OGaoaw=";
    const BODY_SIG: &str = "NZdzapH2zgTrTeTtgLzCzK907tKq2Tu5+GBKg5iRkFc=";
    const RAW_SIG: &str = "t1e1rUBnX1ykUV6Ldb//3KYMQ09inIFiiImMA1PXEWE=";
}

/// Properties of HMAC signing over any key, public key, nonce, time and body.
#[cfg(test)]
mod properties_256_cases {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn any_inputs_sign_or_are_refused(
            public in "\\PC{0,40}",
            private in "\\PC{0,60}",
            encoding in prop_oneof![Just(KeyEncoding::Base64), Just(KeyEncoding::None), Just(KeyEncoding::Unknown)],
            nonce in "[0-9a-f]{0,40}",
            epoch in any::<i64>(),
            body in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            if let Ok(key) = ImburseKey::new(public.clone(), &private, encoding) {
                let header = key.authorization(&nonce, epoch, &body);
                let signature = header.rsplit(':').next().unwrap_or_default();
                let raw = base64::engine::general_purpose::STANDARD.decode(signature).unwrap();
                prop_assert_eq!(raw.len(), 32, "an HMAC-SHA256");
                let prefix = format!("Hmac {public}:{nonce}:{epoch}:");
                prop_assert!(header.starts_with(&prefix));
                // The same inputs sign the same; another body signs differently.
                prop_assert_eq!(&header, &key.authorization(&nonce, epoch, &body));
                let mut other = body.clone();
                other.push(0);
                prop_assert_ne!(header, key.authorization(&nonce, epoch, &other));
            }
        }
    }
}
