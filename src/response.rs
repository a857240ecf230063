//! Reading a token, its lifetime and extra fields out of a token endpoint's reply.

use std::collections::BTreeMap;

use base64::Engine;
use jiff::{SignedDuration, Timestamp};
use serde_json::Value;
use serde_json_path::JsonPath;

use crate::crd::{ExpiryFormat, ResponseSpec};
use crate::error::{Error, ProviderError};

/// Where a token's expiry came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LifetimeSource {
    ExpiresIn,
    ExpiresAt,
    JwtExp,
    Default,
}

/// A token as read from a reply. `raw` is the whole reply, kept only in memory for templates.
#[derive(Clone, Debug)]
pub struct Token {
    pub access_token: String,
    pub token_type: Option<String>,
    pub scope: Option<String>,
    pub issued_at: Timestamp,
    pub expires_at: Timestamp,
    pub lifetime_source: LifetimeSource,
    pub fields: BTreeMap<String, String>,
    pub raw: Value,
}

/// The compiled JSONPaths of a response spec.
#[derive(Debug)]
pub struct Reader {
    token: JsonPath,
    token_type: JsonPath,
    scope: JsonPath,
    expires_in: JsonPath,
    expires_at: Option<(JsonPath, Option<ExpiryFormat>)>,
    fields: Vec<(String, JsonPath)>,
}

fn compile(field: &str, path: &str) -> Result<JsonPath, Error> {
    JsonPath::parse(path)
        .map_err(|e| Error::InvalidSpec(format!("response.{field}: {path:?} is not a valid JSONPath: {e}")))
}

impl Reader {
    /// Compiles the paths, or the RFC 6749 defaults when there is no response spec.
    pub fn new(spec: Option<&ResponseSpec>) -> Result<Self, Error> {
        let default = ResponseSpec::default();
        let s = spec.unwrap_or(&default);
        let path =
            |field: &str, given: &Option<String>, fallback: &str| compile(field, given.as_deref().unwrap_or(fallback));
        let mut fields = vec![];
        for (key, p) in &s.fields {
            if !crate::names::is_secret_key(key) {
                return Err(Error::InvalidSpec(format!("response.fields: {key:?} is not a valid Secret key")));
            }
            fields.push((key.clone(), compile(&format!("fields.{key}"), p)?));
        }
        Ok(Self {
            token: path("tokenPath", &s.token_path, "$.access_token")?,
            token_type: path("tokenTypePath", &s.token_type_path, "$.token_type")?,
            scope: path("scopePath", &s.scope_path, "$.scope")?,
            expires_in: path("expiresInPath", &s.expires_in_path, "$.expires_in")?,
            expires_at: s
                .expires_at_path
                .as_deref()
                .map(|p| compile("expiresAtPath", p).map(|c| (c, s.expires_at_format)))
                .transpose()?,
            fields,
        })
    }

    /// Reads a reply received at `now`.
    pub fn read(
        &self,
        body: &[u8],
        default_lifetime: Option<SignedDuration>,
        now: Timestamp,
    ) -> Result<Token, ProviderError> {
        let now = crate::schedule::whole_second(now);
        let raw: Value = serde_json::from_slice(body)
            .map_err(|e| ProviderError::BadResponse(format!("the reply is not JSON ({e})")))?;
        let access_token = match first(&self.token, &raw) {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(_) => return Err(ProviderError::BadResponse(format!("{} is not a non-empty string", self.token))),
            None => {
                return Err(ProviderError::BadResponse(format!(
                    "no token at {} (reply fields: {})",
                    self.token,
                    field_names(&raw)
                )));
            }
        };
        let (expires_at, lifetime_source) = self.expiry(&raw, &access_token, default_lifetime, now)?;
        let expires_at = crate::schedule::whole_second(expires_at);
        if expires_at <= now {
            return Err(ProviderError::BadResponse(format!("the token expired already ({expires_at})")));
        }
        if expires_at > now + SignedDuration::from_hours(24 * 366 * 5) {
            return Err(ProviderError::BadResponse(format!(
                "the expiry {expires_at} is more than five years away; check response.expiresAtFormat"
            )));
        }
        let mut fields = BTreeMap::new();
        for (key, path) in &self.fields {
            match first(path, &raw) {
                Some(v) => {
                    fields.insert(key.clone(), scalar_string(v));
                }
                None => return Err(ProviderError::BadResponse(format!("no value at {path} for Secret key {key:?}"))),
            }
        }
        Ok(Token {
            token_type: first(&self.token_type, &raw).map(scalar_string),
            scope: first(&self.scope, &raw).map(scalar_string),
            access_token,
            issued_at: now,
            expires_at,
            lifetime_source,
            fields,
            raw,
        })
    }

    fn expiry(
        &self,
        raw: &Value,
        token: &str,
        default_lifetime: Option<SignedDuration>,
        now: Timestamp,
    ) -> Result<(Timestamp, LifetimeSource), ProviderError> {
        if let Some((path, format)) = &self.expires_at
            && let Some(v) = first(path, raw)
        {
            return parse_expiry(v, *format).map(|t| (t, LifetimeSource::ExpiresAt));
        }
        if let Some(v) = first(&self.expires_in, raw) {
            let secs =
                number(v).ok_or_else(|| ProviderError::BadResponse(format!("{} is not a number", self.expires_in)))?;
            if secs <= 0.0 {
                return Err(ProviderError::BadResponse(format!("{} is not positive", self.expires_in)));
            }
            return Ok((now + SignedDuration::from_secs_f64(secs.min(1e10)), LifetimeSource::ExpiresIn));
        }
        if let Some(exp) = jwt_exp(token) {
            return Ok((exp, LifetimeSource::JwtExp));
        }
        match default_lifetime {
            Some(d) => Ok((now + d, LifetimeSource::Default)),
            None => Err(ProviderError::BadResponse(
                "the reply gives no lifetime (no expires_in, no absolute expiry, not a JWT with exp); set refresh.defaultLifetime".into(),
            )),
        }
    }
}

fn first<'a>(path: &JsonPath, v: &'a Value) -> Option<&'a Value> {
    path.query(v).first().filter(|v| !v.is_null())
}

fn field_names(v: &Value) -> String {
    v.as_object().map(|m| m.keys().cloned().collect::<Vec<_>>().join(", ")).unwrap_or_else(|| "none".into())
}

fn scalar_string(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Reads an absolute expiry in the given format (or guesses: RFC 3339 for non-numeric strings,
/// Unix seconds for numbers).
pub fn parse_expiry(v: &Value, format: Option<ExpiryFormat>) -> Result<Timestamp, ProviderError> {
    let bad =
        |what: &str| ProviderError::BadResponse(format!("expiry {v} is not {what}; check response.expiresAtFormat"));
    let format = format.unwrap_or(match (v, number(v)) {
        (_, Some(_)) => ExpiryFormat::UnixSeconds,
        _ => ExpiryFormat::Rfc3339,
    });
    match format {
        ExpiryFormat::Rfc3339 => {
            v.as_str().and_then(|s| s.parse::<Timestamp>().ok()).ok_or_else(|| bad("an RFC 3339 time"))
        }
        ExpiryFormat::UnixSeconds => number(v)
            .and_then(|n| Timestamp::from_millisecond((n * 1000.0) as i64).ok())
            .ok_or_else(|| bad("Unix seconds")),
        ExpiryFormat::UnixMilliseconds => {
            number(v).and_then(|n| Timestamp::from_millisecond(n as i64).ok()).ok_or_else(|| bad("Unix milliseconds"))
        }
    }
}

/// The `exp` claim of a JWT, decoded but not verified: only the expiry is wanted.
pub fn jwt_exp(token: &str) -> Option<Timestamp> {
    let mut parts = token.split('.');
    let (_, payload, _) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    let exp = number(&claims["exp"])?;
    Timestamp::from_second(exp as i64).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    fn jwt(claims: Value) -> String {
        let b = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        format!("{}.{}.sig", b(&json!({"alg": "RS256"})), b(&claims))
    }

    fn read(spec: Option<ResponseSpec>, body: Value, default: Option<SignedDuration>) -> Result<Token, ProviderError> {
        Reader::new(spec.as_ref()).unwrap().read(body.to_string().as_bytes(), default, now())
    }

    #[test]
    fn podero_reply() {
        let t = read(
            None,
            json!({"access_token": "abc", "expires_in": 36000, "token_type": "Bearer", "scope": "read write"}),
            None,
        )
        .unwrap();
        assert_eq!(t.access_token, "abc");
        assert_eq!(t.expires_at, now() + SignedDuration::from_secs(36000));
        assert_eq!(t.lifetime_source, LifetimeSource::ExpiresIn);
        assert_eq!(t.scope.as_deref(), Some("read write"));
        assert_eq!(t.token_type.as_deref(), Some("Bearer"));
    }

    #[test]
    fn interswitch_reply_uses_the_jwt_exp_and_copies_fields() {
        let token = jwt(json!({"exp": 1_800_003_600, "merchant_code": "MX1"}));
        let spec = ResponseSpec {
            fields: [
                ("merchant_code".to_string(), "$.merchant_code".to_string()),
                ("requestor_id".to_string(), "$.requestor_id".to_string()),
            ]
            .into(),
            ..Default::default()
        };
        let t = read(Some(spec), json!({"access_token": token, "token_type": "bearer", "scope": "profile", "merchant_code": "MX1", "requestor_id": 12}), None)
            .unwrap();
        assert_eq!(t.expires_at, Timestamp::from_second(1_800_003_600).unwrap_or(now()));
        assert_eq!(t.lifetime_source, LifetimeSource::JwtExp);
        assert_eq!(t.fields.get("merchant_code").map(String::as_str), Some("MX1"));
        assert_eq!(t.fields.get("requestor_id").map(String::as_str), Some("12"));
    }

    #[test]
    fn imburse_reply_with_millisecond_string() {
        let spec = ResponseSpec {
            token_path: Some("$.accessToken".into()),
            expires_at_path: Some("$.expires".into()),
            expires_at_format: Some(ExpiryFormat::UnixMilliseconds),
            ..Default::default()
        };
        let t = read(Some(spec), json!({"accessToken": "tok", "expires": "1800000900115"}), None).unwrap();
        // Whole seconds, rounded down: the reported expiry is never later than the real one.
        assert_eq!(t.expires_at, Timestamp::from_second(1_800_000_900).unwrap_or(now()));
        assert_eq!(t.lifetime_source, LifetimeSource::ExpiresAt);
    }

    #[test]
    fn expiry_formats() {
        let secs = Timestamp::from_second(1_800_000_600).unwrap_or(now());
        assert_eq!(parse_expiry(&json!(1_800_000_600), None).ok(), Some(secs));
        assert_eq!(parse_expiry(&json!("1800000600"), Some(ExpiryFormat::UnixSeconds)).ok(), Some(secs));
        assert_eq!(parse_expiry(&json!(1_800_000_600_000i64), Some(ExpiryFormat::UnixMilliseconds)).ok(), Some(secs));
        assert_eq!(parse_expiry(&json!("2027-01-15T08:10:00Z"), None).ok(), "2027-01-15T08:10:00Z".parse().ok());
        assert_eq!(
            parse_expiry(&json!("2027-01-15T09:10:00+01:00"), Some(ExpiryFormat::Rfc3339)).ok(),
            "2027-01-15T08:10:00Z".parse().ok()
        );
        assert!(parse_expiry(&json!("tomorrow"), None).is_err());
        assert!(parse_expiry(&json!("soon"), Some(ExpiryFormat::UnixMilliseconds)).is_err());
    }

    #[test]
    fn implausible_or_missing_lifetimes_are_errors() {
        // Milliseconds read as seconds land tens of thousands of years out.
        let spec = ResponseSpec { expires_at_path: Some("$.expires".into()), ..Default::default() };
        let e = read(Some(spec), json!({"access_token": "t", "expires": "1800000900115"}), None).err();
        assert!(e.is_some_and(|e| e.to_string().contains("expiresAtFormat")));
        let e = read(None, json!({"access_token": "opaque"}), None).err();
        assert!(e.is_some_and(|e| e.to_string().contains("refresh.defaultLifetime")));
        let t = read(None, json!({"access_token": "opaque"}), Some(SignedDuration::from_mins(5))).unwrap();
        assert_eq!(t.lifetime_source, LifetimeSource::Default);
        assert!(read(None, json!({"access_token": "t", "expires_in": 0}), None).is_err());
        assert!(
            read(None, json!({"token": "t", "expires_in": 10}), None)
                .is_err_and(|e| e.to_string().contains("reply fields: expires_in, token"))
        );
        assert!(read(None, json!({"access_token": "t", "expires_in": "60"}), None).is_ok());
    }

    #[test]
    fn invalid_paths_are_spec_errors() {
        let spec = ResponseSpec { token_path: Some("$[".into()), ..Default::default() };
        assert!(matches!(Reader::new(Some(&spec)), Err(Error::InvalidSpec(_))));
    }
}
