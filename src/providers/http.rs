//! Generic token requests (`spec.http`): any URL, method, headers and body, with Basic, HMAC or
//! bearer (chained or static) authentication.

use std::collections::BTreeMap;

use minijinja::Environment;
use serde_json::Value;

use crate::crd::{AuthType, BodyType, HmacScheme, HttpAuth, HttpBody, HttpMethod, HttpSpec};
use crate::credentials::Credentials;
use crate::error::{Error, UpstreamState};
use crate::providers::{Auth, Method, Request, check_headers, hmac::ImburseKey, parse_url, resolve_all};

/// The most a request body may hold.
const MAX_BODY: usize = 1 << 20;

/// Fills `{{ name }}` placeholders from `values`; an unknown name is an error.
fn fill(
    env: &Environment<'_>,
    field: &str,
    template: &str,
    values: &BTreeMap<String, String>,
) -> Result<String, Error> {
    if !crate::template::has_syntax(template) {
        return Ok(template.to_string());
    }
    crate::template::render(env, template, values, MAX_BODY).map_err(|e| {
        Error::InvalidSpec(crate::redact::redact(&format!("{field}: {e}"), values.values().map(String::as_str)))
    })
}

fn fill_json(env: &Environment<'_>, field: &str, v: &Value, values: &BTreeMap<String, String>) -> Result<Value, Error> {
    Ok(match v {
        Value::String(s) => Value::String(fill(env, field, s, values)?),
        Value::Array(a) => Value::Array(a.iter().map(|x| fill_json(env, field, x, values)).collect::<Result<_, _>>()?),
        Value::Object(m) => Value::Object(
            m.iter().map(|(k, x)| Ok((k.clone(), fill_json(env, field, x, values)?))).collect::<Result<_, Error>>()?,
        ),
        other => other.clone(),
    })
}

/// Builds the request for an `http` spec. `upstream_token` is the chained bearer token, when the
/// spec asks for one (the caller resolves it).
pub fn request(
    spec: &HttpSpec,
    creds: &Credentials,
    upstream_token: Option<&str>,
    allow_http: bool,
) -> Result<Request, Error> {
    let url = parse_url("http.url", &spec.url, allow_http)?;
    let mut secrets: Vec<Vec<u8>> = vec![];
    let headers = resolve_all(creds, &spec.headers, "http.headers", &mut secrets)?;
    check_headers("http.headers", &headers)?;
    if headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("authorization")) && spec.auth.type_ != AuthType::None {
        return Err(Error::InvalidSpec("http: set the Authorization header or http.auth, not both".into()));
    }
    let (mut body, content_type) = match &spec.body {
        None => (vec![], None),
        Some(b) => body(b, creds, &mut secrets)?,
    };
    let auth = auth(&spec.auth, creds, upstream_token, &mut secrets)?;
    let auth = place_assertion(&spec.auth, auth, &mut body, content_type.as_deref())?;
    let method = match spec.method {
        HttpMethod::Get => Method::Get,
        HttpMethod::Post => Method::Post,
        HttpMethod::Put => Method::Put,
        HttpMethod::Unknown => return Err(Error::unsupported("http.method")),
    };
    if method == Method::Get && !body.is_empty() {
        return Err(Error::InvalidSpec("http: a GET request cannot have a body".into()));
    }
    Ok(Request { method, url, headers, body, content_type, auth, secrets, tls: None, timeout: None })
}

/// The body bytes and their content type.
fn body(b: &HttpBody, creds: &Credentials, secrets: &mut Vec<Vec<u8>>) -> Result<(Vec<u8>, Option<String>), Error> {
    let values: BTreeMap<String, String> =
        resolve_all(creds, &b.values, "http.body.values", secrets)?.into_iter().collect();
    let env = crate::template::env();
    let missing = |member: &str| Error::InvalidSpec(format!("http.body: type {:?} needs {member}", b.type_));
    Ok(match b.type_ {
        BodyType::Raw => {
            let raw = b.raw.as_deref().ok_or_else(|| missing("raw"))?;
            let content_type = b.content_type.clone().unwrap_or_else(|| "text/plain".into());
            (fill(&env, "http.body.raw", raw, &values)?.into_bytes(), Some(content_type))
        }
        BodyType::Json => {
            let json = b.json.as_ref().ok_or_else(|| missing("json"))?;
            (
                fill_json(&env, "http.body.json", json, &values)?.to_string().into_bytes(),
                Some("application/json".into()),
            )
        }
        BodyType::Form => {
            let form = b.form.as_deref().ok_or_else(|| missing("form"))?;
            let mut ser = url::form_urlencoded::Serializer::new(String::new());
            for (k, v) in resolve_all(creds, form, "http.body.form", secrets)? {
                ser.append_pair(&k, &v);
            }
            (ser.finish().into_bytes(), Some("application/x-www-form-urlencoded".into()))
        }
        BodyType::Unknown => return Err(Error::unsupported("http.body.type")),
    })
}

/// The authentication of the request.
fn auth(
    spec: &HttpAuth,
    creds: &Credentials,
    upstream_token: Option<&str>,
    secrets: &mut Vec<Vec<u8>>,
) -> Result<Auth, Error> {
    let missing = |member: &str| Error::InvalidSpec(format!("http.auth: type {:?} needs {member}", spec.type_));
    Ok(match spec.type_ {
        AuthType::None => Auth::None,
        AuthType::Basic => {
            let b = spec.basic.as_ref().ok_or_else(|| missing("basic"))?;
            let password = creds.secret(&b.password_secret_ref, "http.auth.basic.passwordSecretRef")?;
            secrets.push(password.clone().into_bytes());
            let username = creds.resolve(&b.username, "http.auth.basic.username")?;
            if username.secret {
                secrets.push(username.text.clone().into_bytes());
            }
            Auth::Basic { username: username.text, password }
        }
        AuthType::Hmac => {
            let h = spec.hmac.as_ref().ok_or_else(|| missing("hmac"))?;
            if h.scheme == HmacScheme::Unknown {
                return Err(Error::unsupported("http.auth.hmac.scheme"));
            }
            let private = creds.secret(&h.private_key_secret_ref, "http.auth.hmac.privateKeySecretRef")?;
            secrets.push(private.clone().into_bytes());
            let public = creds.resolve(&h.public_key, "http.auth.hmac.publicKey")?;
            if public.secret {
                secrets.push(public.text.clone().into_bytes());
            }
            Auth::Hmac(ImburseKey::new(public.text, &private, h.private_key_encoding)?)
        }
        AuthType::Bearer => {
            let b = spec.bearer.as_ref().ok_or_else(|| missing("bearer"))?;
            let token = match (&b.token_source_ref, &b.token_secret_ref) {
                (Some(upstream), None) => upstream_token
                    .ok_or_else(|| Error::Upstream { name: upstream.name.clone(), state: UpstreamState::NotReady })?
                    .to_string(),
                (None, Some(r)) => creds.secret(r, "http.auth.bearer.tokenSecretRef")?,
                _ => {
                    return Err(Error::InvalidSpec(
                        "http.auth.bearer: set exactly one of tokenSourceRef and tokenSecretRef".into(),
                    ));
                }
            };
            secrets.push(token.as_bytes().to_vec());
            Auth::Bearer(token)
        }
        AuthType::Jwt => {
            let j = spec.jwt.as_ref().ok_or_else(|| missing("jwt"))?;
            let signer = signer(j, creds, secrets)?;
            let seconds = |d: &str, what: &str| {
                crate::schedule::parse_duration(d)
                    .map(|d| d.as_secs())
                    .map_err(|_| Error::InvalidSpec(format!("http.auth.jwt.{what}: {d:?} is not a duration")))
            };
            let (lifetime, skew) = (seconds(&j.lifetime, "lifetime")?, seconds(&j.clock_skew, "clockSkew")?);
            let now = jiff::Timestamp::now().as_second();
            let mut claims = serde_json::Map::new();
            for (k, v) in &j.claims {
                claims.insert(k.clone(), serde_json::Value::String(v.clone()));
            }
            claims.insert("iss".into(), issuer_claim(&signer.issuer));
            if let Some(sub) = &j.subject {
                claims.insert("sub".into(), sub.clone().into());
            }
            if let Some(aud) = j.audience.clone().or(signer.audience) {
                claims.insert("aud".into(), aud.into());
            }
            // The JWT spans `lifetime` from its backdated `iat`, as verifiers count it (Google:
            // at most an hour after iat; GitHub: at most 10 minutes ahead).
            let (iat, exp) = (now - skew, now - skew + lifetime);
            if exp <= now + 10 {
                return Err(Error::InvalidSpec("http.auth.jwt: lifetime must be longer than clockSkew".into()));
            }
            claims.insert("iat".into(), iat.into());
            claims.insert("exp".into(), exp.into());
            let kid = j.key_id.clone().or(signer.key_id);
            let jwt = super::jwt::sign(j.algorithm, &signer.key, kid.as_deref(), &claims.into(), signer.field)?;
            secrets.push(jwt.as_bytes().to_vec());
            Auth::Bearer(jwt)
        }
        AuthType::Unknown => return Err(Error::unsupported("http.auth.type")),
    })
}

/// What signs a self-signed JWT, and the claims its key brings.
struct Signer {
    key: Vec<u8>,
    issuer: String,
    key_id: Option<String>,
    audience: Option<String>,
    field: &'static str,
}

/// The key and issuer of a JWT: a PEM key and `issuer`, or a service-account key file.
fn signer(j: &crate::crd::JwtAuth, creds: &Credentials, secrets: &mut Vec<Vec<u8>>) -> Result<Signer, Error> {
    if let Some(r) = &j.service_account_key_secret_ref {
        let field = "http.auth.jwt.serviceAccountKeySecretRef";
        let raw = creds.get(r, field)?;
        secrets.push(raw.to_vec());
        let file: serde_json::Value = serde_json::from_slice(raw)
            .map_err(|_| Error::CredentialsInvalid(format!("{field}: not a JSON service-account key file")))?;
        let text = |k: &str| {
            file.get(k).and_then(|v| v.as_str()).filter(|v| !v.is_empty()).map(String::from).ok_or_else(|| {
                Error::CredentialsInvalid(format!("{field}: the key file has no {k:?} (is it a service-account key?)"))
            })
        };
        let key = text("private_key")?.into_bytes();
        secrets.push(key.clone());
        return Ok(Signer {
            key,
            issuer: text("client_email")?,
            key_id: text("private_key_id").ok(),
            audience: text("token_uri").ok(),
            field,
        });
    }
    let field = "http.auth.jwt.privateKeySecretRef";
    let missing = |m: &str| {
        Error::InvalidSpec(format!(
            "http.auth.jwt: set serviceAccountKeySecretRef, or privateKeySecretRef and issuer ({m} is missing)"
        ))
    };
    let key =
        creds.get(j.private_key_secret_ref.as_ref().ok_or_else(|| missing("privateKeySecretRef"))?, field)?.to_vec();
    secrets.push(key.clone());
    let issuer = creds.resolve(j.issuer.as_ref().ok_or_else(|| missing("issuer"))?, "http.auth.jwt.issuer")?;
    Ok(Signer { key, issuer: issuer.text, key_id: None, audience: None, field })
}

/// Moves a JWT meant for the `assertion` form field out of the Authorization header and into
/// the body (the OAuth 2.0 JWT-bearer grant).
fn place_assertion(spec: &HttpAuth, auth: Auth, body: &mut Vec<u8>, content_type: Option<&str>) -> Result<Auth, Error> {
    let assertion = spec.type_ == AuthType::Jwt
        && spec.jwt.as_ref().is_some_and(|j| j.send_as == crate::crd::JwtPlacement::AssertionParameter);
    if spec.jwt.as_ref().is_some_and(|j| j.send_as == crate::crd::JwtPlacement::Unknown) {
        return Err(Error::unsupported("http.auth.jwt.sendAs"));
    }
    let Auth::Bearer(jwt) = auth else { return Ok(auth) };
    if !assertion {
        return Ok(Auth::Bearer(jwt));
    }
    if content_type != Some("application/x-www-form-urlencoded") {
        return Err(Error::InvalidSpec(
            "http.auth.jwt.sendAs AssertionParameter needs a Form body (with grant_type urn:ietf:params:oauth:grant-type:jwt-bearer)".into(),
        ));
    }
    let text = String::from_utf8(std::mem::take(body)).unwrap_or_default();
    let mut form = url::form_urlencoded::Serializer::for_suffix(text, 0);
    form.append_pair("assertion", &jwt);
    *body = form.finish().into_bytes();
    Ok(Auth::None)
}

/// The `iss` claim: a number when the issuer is one (a GitHub App ID), else the text.
fn issuer_claim(issuer: &str) -> serde_json::Value {
    match issuer.parse::<u64>() {
        Ok(n) if !issuer.starts_with('0') => n.into(),
        _ => issuer.into(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::crd::SecretKeyRef;

    fn spec(v: Value) -> HttpSpec {
        serde_json::from_value(v).unwrap()
    }

    fn creds() -> Credentials {
        let mut c = Credentials::default();
        let r = |key: &str| SecretKeyRef { name: "imburse".into(), key: key.into() };
        c.insert(r("public"), b"pub-123".to_vec());
        c.insert(r("private"), b"c2VjcmV0LWtleS1mb3ItdGVzdHM=".to_vec());
        c.insert(r("customer"), b"cust-9".to_vec());
        c.insert(r("static"), b"static-token-1".to_vec());
        c
    }

    fn from_secret(key: &str) -> Value {
        json!({"valueFrom": {"secretKeyRef": {"name": "imburse", "key": key}}})
    }

    #[test]
    fn imburse_management_request_is_signed_without_a_body() {
        let s = spec(json!({
            "url": "https://sandbox-api.imbursepayments.com/identity/v1/hmac/management",
            "auth": {"type": "HMAC", "hmac": {"scheme": "Imburse", "publicKey": from_secret("public"), "privateKeySecretRef": {"name": "imburse", "key": "private"}}}
        }));
        let r = request(&s, &creds(), None, false).unwrap();
        assert!(r.body.is_empty());
        // Same vector as the signer's known-answer test.
        assert_eq!(
            r.authorization(1535617532, "nonce-abc").as_deref(),
            Some("Hmac pub-123:nonce-abc:1535617532:1++L9XBalKW49apREMPPuc3Lnitdss+VAZW6O8pXE3A=")
        );
    }

    #[test]
    fn payout_request_from_the_management_token() {
        let s = spec(json!({
            "url": "https://sandbox-api.imbursepayments.com/v1/identity/payout",
            "body": {"type": "JSON", "json": {"customerRef": "{{ customer }}", "orderRef": "1", "instructionRef": "1"},
                     "values": [{"name": "customer", "valueFrom": {"secretKeyRef": {"name": "imburse", "key": "customer"}}}]},
            "auth": {"type": "Bearer", "bearer": {"tokenSourceRef": {"name": "mgmt"}}}
        }));
        assert!(matches!(
            request(&s, &creds(), None, false),
            Err(Error::Upstream { state: UpstreamState::NotReady, .. })
        ));
        let r = request(&s, &creds(), Some("mgmt-token"), false).unwrap();
        let body: Value = serde_json::from_slice(&r.body).unwrap_or_default();
        assert_eq!(body, json!({"customerRef": "cust-9", "orderRef": "1", "instructionRef": "1"}));
        assert_eq!(r.content_type.as_deref(), Some("application/json"));
        assert_eq!(r.authorization(0, "").as_deref(), Some("Bearer mgmt-token"));
        assert_eq!(r.scrub("mgmt-token and cust-9"), "[redacted] and [redacted]");
    }

    #[test]
    fn a_static_bearer_token_from_a_secret() {
        let s = spec(json!({
            "url": "https://x.example/token",
            "auth": {"type": "Bearer", "bearer": {"tokenSecretRef": {"name": "imburse", "key": "static"}}}
        }));
        let r = request(&s, &creds(), None, false).unwrap();
        assert_eq!(r.authorization(0, "").as_deref(), Some("Bearer static-token-1"));
        assert_eq!(r.scrub("static-token-1"), "[redacted]");
    }

    #[test]
    fn basic_auth_headers_from_secrets_and_form_bodies() {
        let s = spec(json!({
            "url": "https://x.example/token",
            "headers": [{"name": "X-Api-Key", "valueFrom": {"secretKeyRef": {"name": "imburse", "key": "customer"}}}, {"name": "Accept", "value": "application/json"}],
            "body": {"type": "Form", "form": [{"name": "grant_type", "value": "client_credentials"}, {"name": "resource", "value": "a"}, {"name": "resource", "value": "b"}]},
            "auth": {"type": "Basic", "basic": {"username": {"value": "user"}, "passwordSecretRef": {"name": "imburse", "key": "public"}}}
        }));
        let r = request(&s, &creds(), None, false).unwrap();
        assert_eq!(
            r.headers,
            vec![
                ("X-Api-Key".to_string(), "cust-9".to_string()),
                ("Accept".to_string(), "application/json".to_string())
            ],
            "headers keep their order"
        );
        assert_eq!(String::from_utf8_lossy(&r.body), "grant_type=client_credentials&resource=a&resource=b");
        assert_eq!(r.content_type.as_deref(), Some("application/x-www-form-urlencoded"));
        // base64("user:pub-123")
        assert_eq!(r.authorization(0, "").as_deref(), Some("Basic dXNlcjpwdWItMTIz"));
        assert_eq!(
            r.scrub("cust-9 pub-123"),
            "[redacted] [redacted]",
            "header and password values from Secrets are scrubbed"
        );
    }

    #[test]
    fn unknown_placeholders_and_unknown_auth_types_are_spec_errors() {
        let s = spec(json!({"url": "https://x.example/token", "body": {"type": "Raw", "raw": "id={{ nope }}"}}));
        assert!(matches!(request(&s, &creds(), None, false), Err(Error::InvalidSpec(_))));
        // A newer version's authentication is refused, never sent without credentials.
        let s = spec(
            json!({"url": "https://x.example/token", "auth": {"type": "SigV4", "sigv4": {"region": "eu-west-1"}}}),
        );
        assert_eq!(s.auth.type_, AuthType::Unknown);
        let e = request(&s, &creds(), None, false).unwrap_err();
        assert!(e.to_string().contains("http.auth.type"), "{e}");
    }
}
