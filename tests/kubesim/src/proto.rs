//! Just enough of the Kubernetes protobuf encoding to read what kubectl's typed commands send
//! (`kubectl create secret|configmap|namespace|serviceaccount`): the `k8s\0` envelope, ObjectMeta
//! and those kinds. Everything else gets 415, as from a server that does not speak protobuf.

use base64::Engine;
use serde_json::{Map, Value, json};

use crate::error::ApiError;

pub const MAGIC: &[u8] = b"k8s\0";

enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

struct Reader<'a> {
    buf: &'a [u8],
}

fn err(what: &str) -> ApiError {
    ApiError::bad_request(format!("protobuf body could not be decoded: {what}"))
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, ApiError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = self.buf.split_first().ok_or_else(|| err("truncated varint"))?;
            self.buf = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(err("varint too long"))
    }

    fn next(&mut self) -> Result<Option<(u64, Field<'a>)>, ApiError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let field = match key & 7 {
            0 => Field::Varint(self.varint()?),
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| err("length"))?;
                if len > self.buf.len() {
                    return Err(err("truncated field"));
                }
                let (b, rest) = self.buf.split_at(len);
                self.buf = rest;
                Field::Bytes(b)
            }
            1 => {
                self.skip(8)?;
                Field::Varint(0)
            }
            5 => {
                self.skip(4)?;
                Field::Varint(0)
            }
            _ => return Err(err("unsupported wire type")),
        };
        Ok(Some((key >> 3, field)))
    }

    fn skip(&mut self, n: usize) -> Result<(), ApiError> {
        if n > self.buf.len() {
            return Err(err("truncated"));
        }
        self.buf = &self.buf[n..];
        Ok(())
    }
}

fn fields(buf: &[u8]) -> Result<Vec<(u64, Field<'_>)>, ApiError> {
    let mut r = Reader { buf };
    let mut out = vec![];
    while let Some(f) = r.next()? {
        out.push(f);
    }
    Ok(out)
}

fn string(b: &[u8]) -> Result<Value, ApiError> {
    std::str::from_utf8(b).map(|s| json!(s)).map_err(|_| err("invalid UTF-8"))
}

fn map_entry(b: &[u8], bytes_value: bool) -> Result<(String, Value), ApiError> {
    let (mut k, mut v) = (String::new(), json!(""));
    for (n, f) in fields(b)? {
        if let Field::Bytes(x) = f {
            match n {
                1 => k = std::str::from_utf8(x).map_err(|_| err("invalid UTF-8"))?.to_string(),
                2 if bytes_value => v = json!(base64::engine::general_purpose::STANDARD.encode(x)),
                2 => v = string(x)?,
                _ => {}
            }
        }
    }
    Ok((k, v))
}

fn insert_entry(obj: &mut Map<String, Value>, key: &str, b: &[u8], bytes_value: bool) -> Result<(), ApiError> {
    let (k, v) = map_entry(b, bytes_value)?;
    obj.entry(key).or_insert_with(|| json!({}))[k] = v;
    Ok(())
}

fn owner_reference(b: &[u8]) -> Result<Value, ApiError> {
    let mut o = Map::new();
    for (n, f) in fields(b)? {
        match (n, f) {
            (1, Field::Bytes(x)) => drop(o.insert("kind".into(), string(x)?)),
            (3, Field::Bytes(x)) => drop(o.insert("name".into(), string(x)?)),
            (4, Field::Bytes(x)) => drop(o.insert("uid".into(), string(x)?)),
            (5, Field::Bytes(x)) => drop(o.insert("apiVersion".into(), string(x)?)),
            (6, Field::Varint(v)) => drop(o.insert("controller".into(), json!(v != 0))),
            (7, Field::Varint(v)) => drop(o.insert("blockOwnerDeletion".into(), json!(v != 0))),
            _ => {}
        }
    }
    Ok(Value::Object(o))
}

fn object_meta(b: &[u8]) -> Result<Value, ApiError> {
    let mut m = Map::new();
    for (n, f) in fields(b)? {
        match (n, f) {
            (1, Field::Bytes(x)) => drop(m.insert("name".into(), string(x)?)),
            (2, Field::Bytes(x)) => drop(m.insert("generateName".into(), string(x)?)),
            (3, Field::Bytes(x)) => drop(m.insert("namespace".into(), string(x)?)),
            (6, Field::Bytes(x)) => drop(m.insert("resourceVersion".into(), string(x)?)),
            (11, Field::Bytes(x)) => insert_entry(&mut m, "labels", x, false)?,
            (12, Field::Bytes(x)) => insert_entry(&mut m, "annotations", x, false)?,
            (13, Field::Bytes(x)) => {
                let r = owner_reference(x)?;
                if let Some(a) = m.entry("ownerReferences").or_insert_with(|| json!([])).as_array_mut() {
                    a.push(r)
                }
            }
            (14, Field::Bytes(x)) => {
                let s = string(x)?;
                if let Some(a) = m.entry("finalizers").or_insert_with(|| json!([])).as_array_mut() {
                    a.push(s)
                }
            }
            _ => {}
        }
    }
    m.retain(|_, v| v.as_str() != Some(""));
    Ok(Value::Object(m))
}

/// Decodes a protobuf request body into the JSON form of the object.
pub fn decode(body: &[u8]) -> Result<Value, ApiError> {
    let inner = body.strip_prefix(MAGIC).ok_or_else(|| err("missing k8s envelope"))?;
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    for (n, f) in fields(inner)? {
        match (n, f) {
            (1, Field::Bytes(tm)) => {
                for (n, f) in fields(tm)? {
                    if let Field::Bytes(x) = f {
                        let s = std::str::from_utf8(x).map_err(|_| err("invalid UTF-8"))?.to_string();
                        if n == 1 {
                            api_version = s;
                        } else if n == 2 {
                            kind = s;
                        }
                    }
                }
            }
            (2, Field::Bytes(x)) => raw = x,
            _ => {}
        }
    }
    let mut obj = Map::new();
    obj.insert("apiVersion".into(), json!(api_version));
    obj.insert("kind".into(), json!(kind));
    let supported = matches!(
        (api_version.as_str(), kind.as_str()),
        ("v1", "Secret" | "ConfigMap" | "Namespace" | "ServiceAccount") | ("authentication.k8s.io/v1", "TokenRequest")
    );
    if !supported {
        return Err(ApiError::unsupported_media(&format!(
            "application/vnd.kubernetes.protobuf ({api_version} {kind})"
        )));
    }
    for (n, f) in fields(raw)? {
        let x = match f {
            Field::Bytes(x) => x,
            Field::Varint(v) => {
                if matches!((kind.as_str(), n), ("Secret", 5) | ("ConfigMap", 4)) {
                    obj.insert("immutable".into(), json!(v != 0));
                }
                continue;
            }
        };
        match (kind.as_str(), n) {
            (_, 1) => drop(obj.insert("metadata".into(), object_meta(x)?)),
            ("Secret", 2) => insert_entry(&mut obj, "data", x, true)?,
            ("Secret", 3) => drop(obj.insert("type".into(), string(x)?)),
            ("Secret", 4) => insert_entry(&mut obj, "stringData", x, false)?,
            ("ConfigMap", 2) => insert_entry(&mut obj, "data", x, false)?,
            ("ConfigMap", 3) => insert_entry(&mut obj, "binaryData", x, true)?,
            ("Namespace", 2) => {
                let mut fins = vec![];
                for (n, f) in fields(x)? {
                    if let (1, Field::Bytes(s)) = (n, f) {
                        fins.push(string(s)?);
                    }
                }
                obj.insert("spec".into(), json!({ "finalizers": fins }));
            }
            ("ServiceAccount", 4) => {
                let mut name = json!("");
                for (n, f) in fields(x)? {
                    if let (1, Field::Bytes(s)) = (n, f) {
                        name = string(s)?;
                    }
                }
                if let Some(a) = obj.entry("imagePullSecrets").or_insert_with(|| json!([])).as_array_mut() {
                    a.push(json!({ "name": name }))
                }
            }
            ("TokenRequest", 2) => drop(obj.insert("spec".into(), token_request_spec(x)?)),
            _ => {}
        }
    }
    if obj.get("type").and_then(Value::as_str) == Some("") {
        obj.remove("type");
    }
    Ok(Value::Object(obj))
}

/// `TokenRequestSpec`: audiences (1), expirationSeconds (4); a boundObjectRef (3) is not kept.
fn token_request_spec(x: &[u8]) -> Result<Value, ApiError> {
    let mut audiences = vec![];
    let mut spec = Map::new();
    for (n, f) in fields(x)? {
        match (n, f) {
            (1, Field::Bytes(s)) => audiences.push(string(s)?),
            (4, Field::Varint(v)) => drop(spec.insert("expirationSeconds".into(), json!(v as i64))),
            _ => {}
        }
    }
    spec.insert("audiences".into(), json!(audiences));
    Ok(Value::Object(spec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_kubectl_create_secret() {
        // Captured from `kubectl create secret generic s1 --from-literal=a=b` (kubectl 1.32).
        let body = b"k8s\x00\n\x0c\n\x02v1\x12\x06Secret\x12\x1e\n\x12\n\x02s1\x12\x00\x1a\x00\"\x00*\x002\x008\x00B\x00\x12\x06\n\x01a\x12\x01b\x1a\x00\x1a\x00\"\x00";
        let v = decode(body).unwrap();
        assert_eq!(v["kind"], "Secret");
        assert_eq!(v["metadata"]["name"], "s1");
        assert_eq!(v["data"]["a"], "Yg==");
        assert!(v.get("type").is_none());
    }
}
