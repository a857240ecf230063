//! Reading a token, its lifetime and extra fields out of a token endpoint's reply.

use std::collections::BTreeMap;

use base64::Engine;
use jiff::{SignedDuration, Timestamp};
use serde_json::Value;
use serde_json_path::JsonPath;

use crate::crd::{ExpiryFormat, ExpiryType, ResponseSpec};
use crate::error::{Error, ProviderError};
use crate::schedule::add;

/// Where a token's expiry came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LifetimeSource {
    ExpiresIn,
    ExpiresAt,
    JwtExp,
    Default,
    /// Read back from the target Secret's annotations.
    Stored,
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
    /// The reply, for templates that read it; `Null` when none does (it is not kept).
    pub raw: Value,
    /// When the operator planned to renew it, if it chose a spread-out first renewal
    /// ([`crate::schedule::Policy::first_refresh_at`]); otherwise the policy's regular time.
    pub renew_at: Option<Timestamp>,
}

/// How the expiry is read, compiled.
#[derive(Clone, Debug)]
enum Expiry {
    /// `expires_in` if the reply has it, else the JWT `exp`, else the default lifetime.
    Auto {
        expires_in: JsonPath,
        default_lifetime: Option<SignedDuration>,
    },
    ExpiresIn(JsonPath),
    ExpiresAt(JsonPath, ExpiryFormat),
    Jwt,
}

/// The compiled JSONPaths of a response spec.
#[derive(Clone, Debug)]
pub struct Reader {
    token: JsonPath,
    token_type: JsonPath,
    scope: JsonPath,
    expiry: Expiry,
    fields: Vec<(String, JsonPath)>,
}

/// The longest lifetime a reply may give: five years (longer is usually milliseconds read as
/// seconds).
const MAX_LIFETIME_SECS: f64 = 5.0 * 366.0 * 86_400.0;

/// How many descendant segments (`..`) a query may hold: one keeps a query linear in the size of
/// the reply; several nested ones multiply.
const MAX_DESCENDANT_SEGMENTS: usize = 1;

fn compile(field: &str, path: &str) -> Result<JsonPath, Error> {
    if descendant_segments(path) > MAX_DESCENDANT_SEGMENTS {
        return Err(Error::InvalidSpec(format!(
            "response.{field}: {path:?} uses more than {MAX_DESCENDANT_SEGMENTS} descendant segment (..)"
        )));
    }
    JsonPath::parse(path)
        .map_err(|e| Error::InvalidSpec(format!("response.{field}: {path:?} is not a valid JSONPath: {e}")))
}

/// The `..` of a JSONPath outside its string literals.
fn descendant_segments(path: &str) -> usize {
    let mut count = 0;
    let mut quote: Option<char> = None;
    let mut chars = path.chars().peekable();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(_), '\\') => {
                chars.next();
            }
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '.') if chars.peek() == Some(&'.') => {
                chars.next();
                count += 1;
            }
            (None, _) => {}
        }
    }
    count
}

impl Reader {
    /// Compiles the paths of a response spec.
    pub fn new(s: &ResponseSpec) -> Result<Self, Error> {
        let mut fields = vec![];
        for f in &s.fields {
            if !crate::names::is_secret_key(&f.key) {
                return Err(Error::InvalidSpec(format!("response.fields: {:?} is not a valid Secret key", f.key)));
            }
            if crate::crd::RESERVED_KEYS.contains(&f.key.as_str()) {
                return Err(Error::InvalidSpec(format!("response.fields: {:?} is written by the operator", f.key)));
            }
            fields.push((f.key.clone(), compile(&format!("fields[{}].jsonPath", f.key), &f.json_path)?));
        }
        let e = &s.expiry;
        let path = |fallback: Option<&str>| -> Result<JsonPath, Error> {
            let p = e
                .json_path
                .as_deref()
                .or(fallback)
                .ok_or_else(|| Error::InvalidSpec(format!("response.expiry: type {:?} needs jsonPath", e.type_)))?;
            compile("expiry.jsonPath", p)
        };
        let expiry = match e.type_ {
            ExpiryType::Auto => Expiry::Auto {
                expires_in: compile("expiry", "$.expires_in")?,
                default_lifetime: e.default_lifetime.as_deref().map(crate::schedule::parse_duration).transpose()?,
            },
            ExpiryType::ExpiresIn => Expiry::ExpiresIn(path(Some("$.expires_in"))?),
            ExpiryType::ExpiresAt => match e.format {
                Some(ExpiryFormat::Unknown) => return Err(Error::unsupported("response.expiry.format")),
                Some(format) => Expiry::ExpiresAt(path(None)?, format),
                None => return Err(Error::InvalidSpec("response.expiry: type ExpiresAt needs format".into())),
            },
            ExpiryType::Jwt => Expiry::Jwt,
            ExpiryType::Unknown => return Err(Error::unsupported("response.expiry.type")),
        };
        Ok(Self {
            token: compile("token.jsonPath", &s.token.json_path)?,
            token_type: compile("tokenType.jsonPath", &s.token_type.json_path)?,
            scope: compile("scope.jsonPath", &s.scope.json_path)?,
            expiry,
            fields,
        })
    }

    /// Reads a reply received at `now`.
    pub fn read(&self, body: &[u8], now: Timestamp) -> Result<Token, ProviderError> {
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
        let (expires_at, lifetime_source) = self.expiry(&raw, &access_token, now)?;
        let expires_at = crate::schedule::whole_second(expires_at);
        if expires_at <= now {
            return Err(ProviderError::BadResponse(format!("the token expired already ({expires_at})")));
        }
        if expires_at > add(now, SignedDuration::from_secs_f64(MAX_LIFETIME_SECS)) {
            return Err(ProviderError::BadResponse(format!(
                "the expiry {expires_at} is more than five years away; check response.expiry.format"
            )));
        }
        let mut fields = BTreeMap::new();
        let mut size = access_token.len();
        for (key, path) in &self.fields {
            match first(path, &raw) {
                Some(v) => {
                    let value = scalar_string(v);
                    size = size.saturating_add(value.len());
                    if size > crate::names::MAX_SECRET_DATA {
                        return Err(ProviderError::TooLarge(format!(
                            "the token and response.fields come to more than {} bytes, a Secret's limit",
                            crate::names::MAX_SECRET_DATA
                        )));
                    }
                    fields.insert(key.clone(), value);
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
            renew_at: None,
        })
    }

    fn expiry(&self, raw: &Value, token: &str, now: Timestamp) -> Result<(Timestamp, LifetimeSource), ProviderError> {
        let relative = |path: &JsonPath, v: &Value| -> Result<Timestamp, ProviderError> {
            let secs = number(v).ok_or_else(|| ProviderError::BadResponse(format!("{path} is not a number")))?;
            if secs.is_nan() || secs <= 0.0 {
                return Err(ProviderError::BadResponse(format!("{path} is not a positive number")));
            }
            // Refused before any arithmetic: past five years is usually milliseconds read as
            // seconds, and a clamped lifetime would be a made-up one. (A number is no secret.)
            if secs > MAX_LIFETIME_SECS {
                let shown = if secs < 1e15 { format!("{secs}") } else { format!("{secs:e}") };
                return Err(ProviderError::BadResponse(format!(
                    "{path} is {shown} seconds, more than five years; check response.expiry (milliseconds read as seconds?)"
                )));
            }
            Ok(add(now, SignedDuration::from_secs_f64(secs)))
        };
        let jwt = || {
            jwt_exp(token).ok_or_else(|| {
                ProviderError::BadResponse("the token is not a JWT with an exp claim (response.expiry.type JWT)".into())
            })
        };
        match &self.expiry {
            Expiry::ExpiresAt(path, format) => {
                let v = first(path, raw).ok_or_else(|| {
                    ProviderError::BadResponse(format!("no expiry at {path} (reply fields: {})", field_names(raw)))
                })?;
                parse_expiry(v, *format).map(|t| (t, LifetimeSource::ExpiresAt))
            }
            Expiry::ExpiresIn(path) => {
                let v = first(path, raw).ok_or_else(|| {
                    ProviderError::BadResponse(format!("no lifetime at {path} (reply fields: {})", field_names(raw)))
                })?;
                relative(path, v).map(|t| (t, LifetimeSource::ExpiresIn))
            }
            Expiry::Jwt => jwt().map(|t| (t, LifetimeSource::JwtExp)),
            Expiry::Auto { expires_in, default_lifetime } => {
                if let Some(v) = first(expires_in, raw) {
                    return relative(expires_in, v).map(|t| (t, LifetimeSource::ExpiresIn));
                }
                if let Some(exp) = jwt_exp(token) {
                    return Ok((exp, LifetimeSource::JwtExp));
                }
                match default_lifetime {
                    Some(d) => Ok((add(now, *d), LifetimeSource::Default)),
                    None => Err(ProviderError::BadResponse(
                        "the reply gives no lifetime (no expires_in, and the token is not a JWT with exp); set response.expiry.defaultLifetime or another response.expiry.type".into(),
                    )),
                }
            }
        }
    }
}

fn first<'a>(path: &JsonPath, v: &'a Value) -> Option<&'a Value> {
    path.query(v).first().filter(|v| !v.is_null())
}

/// The longest reply field name an error shows.
const MAX_NAME_SHOWN: usize = 64;

/// The reply's top-level field names, for errors: at most ten. A name is shown whole or not at
/// all, never cut: the message is redacted later, with the request's secrets, and a secret echoed
/// as a name and cut short would no longer be recognised there.
fn field_names(v: &Value) -> String {
    let Some(m) = v.as_object() else { return "none".into() };
    let mut names: Vec<String> = m
        .keys()
        .take(10)
        .map(|k| match k.chars().count() {
            n if n > MAX_NAME_SHOWN => format!("(a name of {n} characters)"),
            _ => k.clone(),
        })
        .collect();
    if m.len() > 10 {
        names.push(format!("and {} more", m.len() - 10));
    }
    names.join(", ")
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

/// Reads an absolute expiry in the given format.
pub fn parse_expiry(v: &Value, format: ExpiryFormat) -> Result<Timestamp, ProviderError> {
    // The value itself is never shown: a reply's values may be tokens.
    let bad = |what: &str| {
        ProviderError::BadResponse(format!("the expiry is {}, not {what}; check response.expiry.format", kind(v)))
    };
    match format {
        ExpiryFormat::Rfc3339 => {
            let s = v.as_str().ok_or_else(|| bad("an RFC 3339 time"))?;
            s.parse::<Timestamp>().or_else(|_| {
                // A valid time in the year 9999 past the last instant the clock library holds
                // (9999-12-30, UTC) is far away, not malformed: it is refused as such.
                // (2001, like 9999, is not a leap year.)
                let in_9999 = s.get(..5) == Some("9999-") && format!("2001{}", &s[4..]).parse::<Timestamp>().is_ok();
                if in_9999 { Ok(Timestamp::MAX) } else { Err(bad("an RFC 3339 time")) }
            })
        }
        ExpiryFormat::UnixSeconds => number(v)
            .filter(|n| n.is_finite())
            .map(|n| saturating_millis(n * 1000.0))
            .ok_or_else(|| bad("Unix seconds")),
        ExpiryFormat::UnixMilliseconds => {
            number(v).filter(|n| n.is_finite()).map(saturating_millis).ok_or_else(|| bad("Unix milliseconds"))
        }
        ExpiryFormat::Unknown => Err(bad("in a format this version of the operator knows")),
    }
}

/// What kind of JSON value `v` is, for messages that must not show it.
fn kind(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(_) => "a boolean".into(),
        Value::Number(_) => "a number out of range".into(),
        Value::String(s) if s.trim().parse::<f64>().is_ok() => format!("a numeric string of {} characters", s.len()),
        Value::String(s) => format!("a string of {} characters", s.len()),
        Value::Array(a) => format!("an array of {}", a.len()),
        Value::Object(m) => format!("an object with {} fields", m.len()),
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
    let exp = number(&claims["exp"]).filter(|n| n.is_finite())?;
    Some(saturating_millis(exp * 1000.0))
}

/// The instant `ms` milliseconds after the Unix epoch, or the last (first) instant there is for
/// one beyond: such a time is then refused as too far away (or as expired), not as malformed.
fn saturating_millis(ms: f64) -> Timestamp {
    let (min, max) = (Timestamp::MIN.as_millisecond(), Timestamp::MAX.as_millisecond());
    // `as` saturates at the bounds of i64; the clamp keeps it in the clock library's range.
    Timestamp::from_millisecond((ms as i64).clamp(min, max)).unwrap_or(if ms < 0.0 {
        Timestamp::MIN
    } else {
        Timestamp::MAX
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    fn jwt(claims: Value) -> String {
        let b = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        format!("{}.{}.sig", b(&json!({"alg": "RS256"})), b(&claims))
    }

    /// A response spec from its JSON form, with the defaults the CRD schema would fill in.
    fn spec(v: Value) -> ResponseSpec {
        serde_json::from_value(v).unwrap()
    }

    fn read(spec: &ResponseSpec, body: Value) -> Result<Token, ProviderError> {
        Reader::new(spec).unwrap().read(body.to_string().as_bytes(), now())
    }

    #[test]
    fn podero_reply() {
        let t = read(
            &ResponseSpec::default(),
            json!({"access_token": "abc", "expires_in": 36000, "token_type": "Bearer", "scope": "read write"}),
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
        let s = spec(json!({"fields": [
            {"key": "merchant_code", "jsonPath": "$.merchant_code"},
            {"key": "requestor_id", "jsonPath": "$.requestor_id"}
        ]}));
        let body = json!({"access_token": token, "token_type": "bearer", "scope": "profile", "merchant_code": "MX1", "requestor_id": 12});
        let t = read(&s, body.clone()).unwrap();
        assert_eq!(t.expires_at, Timestamp::from_second(1_800_003_600).unwrap());
        assert_eq!(t.lifetime_source, LifetimeSource::JwtExp);
        assert_eq!(t.fields.get("merchant_code").map(String::as_str), Some("MX1"));
        assert_eq!(t.fields.get("requestor_id").map(String::as_str), Some("12"));
        let explicit = spec(json!({"expiry": {"type": "JWT"}}));
        assert_eq!(read(&explicit, body).unwrap().lifetime_source, LifetimeSource::JwtExp);
        assert!(read(&explicit, json!({"access_token": "opaque", "expires_in": 60})).is_err(), "JWT means JWT");
    }

    #[test]
    fn imburse_reply_with_millisecond_string() {
        let s = spec(
            json!({"token": {"jsonPath": "$.accessToken"}, "expiry": {"type": "ExpiresAt", "jsonPath": "$.expires", "format": "UnixMilliseconds"}}),
        );
        let t = read(&s, json!({"accessToken": "tok", "expires": "1800000900115"})).unwrap();
        // Whole seconds, rounded down: the reported expiry is never later than the real one.
        assert_eq!(t.expires_at, Timestamp::from_second(1_800_000_900).unwrap());
        assert_eq!(t.lifetime_source, LifetimeSource::ExpiresAt);
        let e = read(&s, json!({"accessToken": "tok", "expires_in": 60})).unwrap_err();
        assert!(e.to_string().contains("no expiry at $.expires"), "an absent ExpiresAt is reported, not guessed: {e}");
    }

    #[test]
    fn expires_in_at_another_path() {
        let s = spec(json!({"expiry": {"type": "ExpiresIn", "jsonPath": "$.data.ttl"}}));
        let t = read(&s, json!({"access_token": "t", "data": {"ttl": "600"}})).unwrap();
        assert_eq!(t.expires_at, now() + SignedDuration::from_secs(600));
    }

    #[test]
    fn expiry_errors_name_the_type_not_the_value() {
        let e = parse_expiry(&json!({"access_token": "leaked-token-1234"}), ExpiryFormat::UnixSeconds).unwrap_err();
        assert!(!e.to_string().contains("leaked") && e.to_string().contains("an object with 1 fields"), "{e}");
        let e = parse_expiry(&json!("leaked-token-1234"), ExpiryFormat::Rfc3339).unwrap_err();
        assert!(!e.to_string().contains("leaked") && e.to_string().contains("a string of 17 characters"), "{e}");
    }

    #[test]
    fn expiry_formats() {
        let secs = Timestamp::from_second(1_800_000_600).unwrap();
        assert_eq!(parse_expiry(&json!(1_800_000_600), ExpiryFormat::UnixSeconds).ok(), Some(secs));
        assert_eq!(parse_expiry(&json!("1800000600"), ExpiryFormat::UnixSeconds).ok(), Some(secs));
        assert_eq!(parse_expiry(&json!(1_800_000_600_000i64), ExpiryFormat::UnixMilliseconds).ok(), Some(secs));
        assert_eq!(
            parse_expiry(&json!("2027-01-15T09:10:00+01:00"), ExpiryFormat::Rfc3339).ok(),
            "2027-01-15T08:10:00Z".parse().ok()
        );
        assert!(parse_expiry(&json!("tomorrow"), ExpiryFormat::Rfc3339).is_err());
        assert!(parse_expiry(&json!("soon"), ExpiryFormat::UnixMilliseconds).is_err());
    }

    #[test]
    fn implausible_or_missing_lifetimes_are_errors() {
        // Milliseconds read as seconds land tens of thousands of years out.
        let s = spec(json!({"expiry": {"type": "ExpiresAt", "jsonPath": "$.expires", "format": "UnixSeconds"}}));
        let e = read(&s, json!({"access_token": "t", "expires": "1800000900115"})).unwrap_err();
        assert!(e.to_string().contains("response.expiry.format"), "{e}");
        let e = read(&ResponseSpec::default(), json!({"access_token": "opaque"})).unwrap_err();
        assert!(e.to_string().contains("response.expiry.defaultLifetime"), "{e}");
        let with_default = spec(json!({"expiry": {"type": "Auto", "defaultLifetime": "5m"}}));
        let t = read(&with_default, json!({"access_token": "opaque"})).unwrap();
        assert_eq!(t.lifetime_source, LifetimeSource::Default);
        assert!(read(&ResponseSpec::default(), json!({"access_token": "t", "expires_in": 0})).is_err());
        // An absurd lifetime is refused with its value, never shortened to the limit.
        for absurd in [json!(1e300), json!(1.6e8), json!("99999999999")] {
            let e = read(&ResponseSpec::default(), json!({"access_token": "t", "expires_in": absurd})).unwrap_err();
            assert!(e.to_string().contains("more than five years") && e.to_string().contains("seconds"), "{e}");
        }
        let five_years = 5 * 366 * 86_400;
        assert!(read(&ResponseSpec::default(), json!({"access_token": "t", "expires_in": five_years})).is_ok());
        assert!(
            read(&ResponseSpec::default(), json!({"token": "t", "expires_in": 10}))
                .is_err_and(|e| e.to_string().contains("reply fields: expires_in, token"))
        );
        assert!(read(&ResponseSpec::default(), json!({"access_token": "t", "expires_in": "60"})).is_ok());
    }

    #[test]
    fn queries_are_held_to_one_descendant_segment() {
        assert_eq!(descendant_segments("$..a"), 1);
        assert_eq!(descendant_segments("$['a..b']..c"), 1, "dots in a name are not a segment");
        assert_eq!(descendant_segments("$..a..b"), 2);
        assert!(Reader::new(&spec(json!({"token": {"jsonPath": "$..token"}}))).is_ok());
        assert!(matches!(
            Reader::new(&spec(json!({"token": {"jsonPath": "$..*..*..token"}}))),
            Err(Error::InvalidSpec(_))
        ));
        assert!(matches!(
            Reader::new(&spec(json!({"fields": [{"key": "x", "jsonPath": "$[?@..a]..b"}]}))),
            Err(Error::InvalidSpec(_))
        ));
    }

    #[test]
    fn copies_are_bounded_by_the_secret_limit() {
        let big = "x".repeat(600_000);
        let s = spec(json!({"fields": [{"key": "a", "jsonPath": "$.big"}, {"key": "b", "jsonPath": "$.big"}]}));
        let e = read(&s, json!({"access_token": "t", "expires_in": 60, "big": big})).unwrap_err();
        assert!(matches!(e, ProviderError::TooLarge(_)), "{e}");
        // Error messages name at most ten fields.
        let wide: serde_json::Map<String, Value> = (0..5000).map(|i| (format!("field-{i}"), json!(i))).collect();
        let e = read(&ResponseSpec::default(), Value::Object(wide)).unwrap_err().to_string();
        assert!(e.len() < 400 && e.contains("and 4990 more"), "{e}");
    }

    /// Issue 30, case 7: a secret echoed as a field name is never shown in part, where the
    /// redaction that follows (with the request's secrets) could no longer recognise it.
    #[test]
    fn reply_field_names_are_shown_whole_for_redaction() {
        let secret = "client-secret-0123456789-abcdefghijklmnopqrstuvwxyz-ABCDEFGH";
        let mut redactor = crate::redact::Redactor::default();
        redactor.add(secret.as_bytes());
        let replies = [
            json!({secret: 1}),
            json!({"expires_in": 60, format!("x-{secret}"): 1, "a": 2}),
            json!({format!("{secret}/{secret}"): 1}),
        ];
        for reply in replies {
            let e = read(&ResponseSpec::default(), reply).unwrap_err().to_string();
            let shown = redactor.redact(&e);
            assert!(shown.contains("reply fields:"), "{shown}");
            for start in 0..secret.len() - 8 {
                assert!(!shown.contains(&secret[start..start + 8]), "part of the secret shows: {shown}");
            }
        }
        let e = read(&ResponseSpec::default(), json!({format!("{secret}/{secret}"): 1})).unwrap_err();
        assert!(e.to_string().contains("(reply fields: (a name of 121 characters))"), "{e}");
        // Short names read as they are.
        let e = read(&ResponseSpec::default(), json!({"expires_in": 60, "tok": "x"})).unwrap_err();
        assert!(e.to_string().contains("(reply fields: expires_in, tok)"), "{e}");
    }

    #[test]
    fn invalid_paths_and_unknown_types_are_spec_errors() {
        assert!(matches!(Reader::new(&spec(json!({"token": {"jsonPath": "$["}}))), Err(Error::InvalidSpec(_))));
        assert!(matches!(Reader::new(&spec(json!({"expiry": {"type": "Sliding"}}))), Err(Error::InvalidSpec(_))));
        assert!(matches!(
            Reader::new(&spec(json!({"expiry": {"type": "ExpiresAt", "jsonPath": "$.e"}}))),
            Err(Error::InvalidSpec(_))
        ));
        assert!(matches!(
            Reader::new(&spec(json!({"fields": [{"key": "token", "jsonPath": "$.x"}]}))),
            Err(Error::InvalidSpec(_))
        ));
    }
}

/// Properties of reply parsing over arbitrary JSON at every path a spec reads, numbers of any
/// size and sign, and numeric or odd strings.
#[cfg(test)]
mod properties_256_cases {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn number_like() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter_map("JSON numbers are finite", |f| serde_json::Number::from_f64(f).map(Value::Number)),
            prop_oneof![
                Just("NaN"),
                Just("inf"),
                Just("-inf"),
                Just("1e400"),
                Just("-0"),
                Just("9999999999999999999999"),
                Just("1560514835115"),
                Just("2026-11-23T10:00:00Z"),
                Just("0x10"),
                Just(" 60 "),
            ]
            .prop_map(Value::from),
            "\\PC{0,24}".prop_map(Value::from),
        ]
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![Just(Value::Null), any::<bool>().prop_map(Value::from), number_like()];
        leaf.prop_recursive(4, 64, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map("[a-z_]{1,8}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn jwt_with(exp: &Value) -> String {
        let b = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        format!("{}.{}.sig", b(&json!({"alg": "RS256"})), b(&json!({"exp": exp})))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn any_reply_reads_or_is_refused_within_bounds(
            token in prop_oneof![json_value(), number_like().prop_map(|v| Value::from(jwt_with(&v)))],
            expires_in in json_value(),
            expires in json_value(),
            extra in json_value(),
        ) {
            let now = Timestamp::from_second(1_800_000_000).unwrap();
            let reply = json!({"access_token": token, "expires_in": expires_in, "expires": expires, "extra": extra});
            let specs = [
                json!({}),
                json!({"expiry": {"type": "Auto", "defaultLifetime": "1h"}}),
                json!({"expiry": {"type": "ExpiresIn"}}),
                json!({"expiry": {"type": "ExpiresAt", "jsonPath": "$.expires", "format": "UnixSeconds"}}),
                json!({"expiry": {"type": "ExpiresAt", "jsonPath": "$.expires", "format": "UnixMilliseconds"}}),
                json!({"expiry": {"type": "ExpiresAt", "jsonPath": "$.expires", "format": "RFC3339"}}),
                json!({"expiry": {"type": "JWT"}, "fields": [{"key": "extra", "jsonPath": "$..extra"}]}),
            ];
            for spec in specs {
                let reader = Reader::new(&serde_json::from_value(spec).unwrap()).unwrap();
                if let Ok(t) = reader.read(reply.to_string().as_bytes(), now) {
                    prop_assert!(t.expires_at > now);
                    prop_assert!(t.expires_at <= add(now, SignedDuration::from_secs_f64(MAX_LIFETIME_SECS)));
                    prop_assert!(!t.access_token.is_empty());
                }
            }
        }

        #[test]
        fn any_value_in_any_format_reads_or_is_refused(v in json_value()) {
            for format in [ExpiryFormat::UnixSeconds, ExpiryFormat::UnixMilliseconds, ExpiryFormat::Rfc3339, ExpiryFormat::Unknown] {
                let _ = parse_expiry(&v, format);
            }
            let _ = jwt_exp(&jwt_with(&v));
        }

        #[test]
        fn any_bytes_are_a_reply_or_an_error(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let reader = Reader::new(&ResponseSpec::default()).unwrap();
            let _ = reader.read(&body, Timestamp::from_second(1_800_000_000).unwrap());
        }
    }
}
