//! Values read from Secrets and ConfigMaps for one reconcile, and the ways the spec refers to
//! them: credentials by `…SecretRef`, other values as `value` or `valueFrom`.

use std::collections::BTreeMap;
use std::fmt;

use crate::crd::{ConfigMapKeyRef, SecretKeyRef, ValueSource};
use crate::error::Error;

/// Values read from Secrets and ConfigMaps. Debug output names the keys, never the values.
#[derive(Clone, Default)]
pub struct Credentials {
    secrets: BTreeMap<SecretKeyRef, Vec<u8>>,
    config_maps: BTreeMap<ConfigMapKeyRef, String>,
    /// A ServiceAccount token requested for this one token request. Not a credential value: a
    /// fresh one each time, so it is left out of what fingerprints the request.
    service_account_token: Option<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("secret_keys", &self.secrets.keys().collect::<Vec<_>>())
            .field("config_map_keys", &self.config_maps.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// A value of the spec, resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub text: String,
    /// Read from a Secret: it is scrubbed from anything the operator writes or logs.
    pub secret: bool,
}

impl Credentials {
    pub fn insert(&mut self, r: SecretKeyRef, value: Vec<u8>) {
        self.secrets.insert(r, value);
    }

    pub fn insert_config(&mut self, r: ConfigMapKeyRef, value: String) {
        self.config_maps.insert(r, value);
    }

    /// The bytes of one Secret key; `field` names the spec field for the error.
    pub fn get(&self, r: &SecretKeyRef, field: &str) -> Result<&[u8], Error> {
        self.secrets.get(r).map(Vec::as_slice).ok_or_else(|| {
            Error::CredentialsNotFound(format!("{field}: key {:?} of Secret {:?} is not available", r.key, r.name))
        })
    }

    /// One Secret key as text.
    pub fn secret(&self, r: &SecretKeyRef, field: &str) -> Result<String, Error> {
        text(self.get(r, field)?.to_vec(), field)
    }

    /// One ConfigMap key.
    pub fn config(&self, r: &ConfigMapKeyRef, field: &str) -> Result<&str, Error> {
        self.config_maps.get(r).map(String::as_str).ok_or_else(|| {
            Error::CredentialsNotFound(format!("{field}: key {:?} of ConfigMap {:?} is not available", r.key, r.name))
        })
    }

    /// A value given inline or read from a Secret or ConfigMap key.
    pub fn resolve(&self, source: &ValueSource, field: &str) -> Result<Resolved, Error> {
        let from = source.value_from.as_ref();
        match (
            &source.value,
            from.and_then(|f| f.secret_key_ref.as_ref()),
            from.and_then(|f| f.config_map_key_ref.as_ref()),
        ) {
            (Some(v), None, None) => Ok(Resolved { text: v.clone(), secret: false }),
            (None, Some(r), None) => Ok(Resolved { text: self.secret(r, field)?, secret: true }),
            (None, None, Some(r)) => {
                Ok(Resolved { text: self.config(r, field)?.trim_end_matches(['\r', '\n']).to_string(), secret: false })
            }
            _ => Err(Error::InvalidSpec(format!(
                "{field}: set exactly one of value, valueFrom.secretKeyRef and valueFrom.configMapKeyRef"
            ))),
        }
    }

    /// Holds the ServiceAccount token of this attempt.
    pub fn set_service_account_token(&mut self, token: String) {
        self.service_account_token = Some(token);
    }

    /// The ServiceAccount token of this attempt, if one was requested.
    pub fn service_account_token(&self) -> Option<&str> {
        self.service_account_token.as_deref()
    }

    /// Every value read from a Secret, for scrubbing provider replies.
    pub fn secret_values(&self) -> impl Iterator<Item = &[u8]> {
        self.secrets.values().map(Vec::as_slice)
    }

    /// Every value read, Secrets' and ConfigMaps', in a stable order: what shaped the request.
    pub fn all_values(&self) -> impl Iterator<Item = &[u8]> {
        self.secret_values().chain(self.config_maps.values().map(String::as_bytes))
    }
}

/// Credential bytes as text, trailing line breaks dropped: `echo secret | kubectl create secret`
/// so often leaves one.
pub fn text(bytes: Vec<u8>, field: &str) -> Result<String, Error> {
    let s = String::from_utf8(bytes)
        .map_err(|_| Error::CredentialsInvalid(format!("{field}: the value is not UTF-8 text")))?;
    Ok(s.trim_end_matches(['\r', '\n']).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ValueFrom;

    fn r(name: &str, key: &str) -> SecretKeyRef {
        SecretKeyRef { name: name.into(), key: key.into() }
    }

    fn from_secret(name: &str, key: &str) -> ValueSource {
        ValueSource {
            value: None,
            value_from: Some(ValueFrom { secret_key_ref: Some(r(name, key)), config_map_key_ref: None }),
        }
    }

    #[test]
    fn values_by_reference_or_inline() {
        let mut c = Credentials::default();
        c.insert(r("creds", "secret"), b"s3cr3t\n".to_vec());
        c.insert(r("creds", "binary"), vec![0xff, 0xfe]);
        let cm = ConfigMapKeyRef { name: "settings".into(), key: "client_id".into() };
        c.insert_config(cm.clone(), "my-id\n".into());
        assert_eq!(c.get(&r("creds", "secret"), "f").unwrap(), b"s3cr3t\n");
        assert!(matches!(c.get(&r("creds", "nope"), "f"), Err(Error::CredentialsNotFound(_))));
        assert_eq!(
            c.resolve(&from_secret("creds", "secret"), "f").unwrap(),
            Resolved { text: "s3cr3t".into(), secret: true }
        );
        let inline = ValueSource { value: Some("id".into()), value_from: None };
        assert_eq!(c.resolve(&inline, "f").unwrap(), Resolved { text: "id".into(), secret: false });
        let from_cm = ValueSource {
            value: None,
            value_from: Some(ValueFrom { secret_key_ref: None, config_map_key_ref: Some(cm) }),
        };
        assert_eq!(c.resolve(&from_cm, "f").unwrap(), Resolved { text: "my-id".into(), secret: false });
        assert!(matches!(c.resolve(&from_secret("creds", "binary"), "f"), Err(Error::CredentialsInvalid(_))));
        let neither = ValueSource { value: None, value_from: None };
        assert!(matches!(c.resolve(&neither, "f"), Err(Error::InvalidSpec(_))));
        assert!(!format!("{c:?}").contains("s3cr3t"));
        assert_eq!(c.secret_values().count(), 2);
        assert_eq!(c.all_values().count(), 3);
    }
}
