//! Credential values read from Secrets, by Secret and key, and the ways the spec refers to them.

use std::collections::BTreeMap;
use std::fmt;

use crate::crd::{SecretKeyRef, ValueSource};
use crate::error::Error;

/// Credential values read from Secrets. Debug output names the keys, never the values.
#[derive(Clone, Default)]
pub struct Credentials {
    values: BTreeMap<SecretKeyRef, Vec<u8>>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials").field("keys", &self.values.keys().collect::<Vec<_>>()).finish_non_exhaustive()
    }
}

impl Credentials {
    pub fn insert(&mut self, r: SecretKeyRef, value: Vec<u8>) {
        self.values.insert(r, value);
    }

    /// The bytes of one Secret key; `field` names the spec field for the error.
    pub fn get(&self, r: &SecretKeyRef, field: &str) -> Result<&[u8], Error> {
        self.values.get(r).map(Vec::as_slice).ok_or_else(|| {
            Error::CredentialsNotFound(format!("{field}: key {:?} of Secret {:?} is not available", r.key, r.name))
        })
    }

    /// The bytes of a value given inline or read from a Secret.
    pub fn bytes(&self, source: &ValueSource, field: &str) -> Result<Vec<u8>, Error> {
        match (&source.value, &source.secret_key_ref) {
            (Some(v), None) => Ok(v.as_bytes().to_vec()),
            (None, Some(r)) => self.get(r, field).map(<[u8]>::to_vec),
            _ => Err(Error::InvalidSpec(format!("{field}: set exactly one of value and secretKeyRef"))),
        }
    }

    /// A value as text, without the trailing newline that `echo secret | kubectl create secret`
    /// so often leaves.
    pub fn string(&self, source: &ValueSource, field: &str) -> Result<String, Error> {
        text(self.bytes(source, field)?, field)
    }

    /// Every secret value, for scrubbing provider replies before they reach a log or condition.
    pub fn secret_values(&self) -> impl Iterator<Item = &[u8]> {
        self.values.values().map(Vec::as_slice)
    }
}

/// Credential bytes as text, trailing line breaks dropped.
pub fn text(bytes: Vec<u8>, field: &str) -> Result<String, Error> {
    let s = String::from_utf8(bytes)
        .map_err(|_| Error::CredentialsInvalid(format!("{field}: the value is not UTF-8 text")))?;
    Ok(s.trim_end_matches(['\r', '\n']).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(name: &str, key: &str) -> SecretKeyRef {
        SecretKeyRef { name: name.into(), key: key.into() }
    }

    #[test]
    fn values_by_reference_or_inline() {
        let mut c = Credentials::default();
        c.insert(r("creds", "secret"), b"s3cr3t\n".to_vec());
        c.insert(r("creds", "binary"), vec![0xff, 0xfe]);
        assert_eq!(c.get(&r("creds", "secret"), "f").unwrap(), b"s3cr3t\n");
        assert!(matches!(c.get(&r("creds", "nope"), "f"), Err(Error::CredentialsNotFound(_))));
        let by_ref = ValueSource { value: None, secret_key_ref: Some(r("creds", "secret")) };
        assert_eq!(c.string(&by_ref, "f").unwrap(), "s3cr3t");
        let inline = ValueSource { value: Some("id".into()), secret_key_ref: None };
        assert_eq!(c.string(&inline, "f").unwrap(), "id");
        let binary = ValueSource { value: None, secret_key_ref: Some(r("creds", "binary")) };
        assert!(matches!(c.string(&binary, "f"), Err(Error::CredentialsInvalid(_))));
        assert!(!format!("{c:?}").contains("s3cr3t"));
    }
}
