//! Generic token requests (`spec.http`): any URL, method, headers and body, with Basic, HMAC or
//! chained bearer authentication.

use std::collections::BTreeMap;

use minijinja::Environment;
use serde_json::Value;

use crate::crd::{HmacScheme, HttpMethod, HttpSpec};
use crate::credentials::Credentials;
use crate::error::Error;
use crate::providers::{Auth, Method, Request, check_headers, hmac::ImburseKey, parse_url};

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
    env.render_str(template, minijinja::value::Serde(values)).map_err(|e| {
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
    let mut headers = vec![];
    for (k, v) in &spec.headers {
        let value = creds.string(v, &format!("http.headers.{k}"))?;
        if v.secret_key_ref.is_some() {
            secrets.push(value.clone().into_bytes());
        }
        headers.push((k.clone(), value));
    }
    check_headers("http.headers", &headers)?;
    if headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("authorization")) && spec.auth.is_some() {
        return Err(Error::InvalidSpec("http: set the Authorization header or http.auth, not both".into()));
    }

    let env = crate::template::env();
    let (body, content_type) = match &spec.body {
        None => (vec![], None),
        Some(b) => {
            let mut values = BTreeMap::new();
            for (k, v) in &b.values {
                let value = creds.string(v, &format!("http.body.values.{k}"))?;
                if v.secret_key_ref.is_some() {
                    secrets.push(value.clone().into_bytes());
                }
                values.insert(k.clone(), value);
            }
            match (&b.raw, &b.json, &b.form) {
                (Some(raw), None, None) => (
                    fill(&env, "http.body.raw", raw, &values)?.into_bytes(),
                    Some(b.content_type.clone().unwrap_or_else(|| "text/plain".into())),
                ),
                (None, Some(json), None) => (
                    fill_json(&env, "http.body.json", json, &values)?.to_string().into_bytes(),
                    Some("application/json".into()),
                ),
                (None, None, Some(form)) => {
                    let mut ser = url::form_urlencoded::Serializer::new(String::new());
                    for (k, v) in form {
                        let value = creds.string(v, &format!("http.body.form.{k}"))?;
                        if v.secret_key_ref.is_some() {
                            secrets.push(value.clone().into_bytes());
                        }
                        ser.append_pair(k, &value);
                    }
                    (ser.finish().into_bytes(), Some("application/x-www-form-urlencoded".into()))
                }
                (None, None, None) => (vec![], None),
                _ => return Err(Error::InvalidSpec("http.body: set at most one of raw, json and form".into())),
            }
        }
    };

    let auth = match &spec.auth {
        None => Auth::None,
        Some(a) => match (&a.basic, &a.hmac, &a.bearer) {
            (Some(b), None, None) => {
                let password = creds.string(&b.password, "http.auth.basic.password")?;
                secrets.push(password.clone().into_bytes());
                Auth::Basic { username: creds.string(&b.username, "http.auth.basic.username")?, password }
            }
            (None, Some(h), None) => match h.scheme {
                HmacScheme::Imburse => {
                    let private = creds.string(&h.private_key, "http.auth.hmac.privateKey")?;
                    secrets.push(private.clone().into_bytes());
                    let public = creds.string(&h.public_key, "http.auth.hmac.publicKey")?;
                    Auth::Hmac(ImburseKey::new(public, &private, h.private_key_encoding)?)
                }
            },
            (None, None, Some(b)) => {
                let token = upstream_token.ok_or_else(|| Error::Upstream {
                    name: b.token_source_ref.name.clone(),
                    state: crate::error::UpstreamState::NotReady,
                })?;
                secrets.push(token.as_bytes().to_vec());
                Auth::Bearer(token.to_string())
            }
            (None, None, None) => Auth::None,
            _ => return Err(Error::InvalidSpec("http.auth: set at most one of basic, hmac and bearer".into())),
        },
    };
    let method = match spec.method {
        HttpMethod::Get => Method::Get,
        HttpMethod::Post => Method::Post,
        HttpMethod::Put => Method::Put,
    };
    if method == Method::Get && !body.is_empty() {
        return Err(Error::InvalidSpec("http: a GET request cannot have a body".into()));
    }
    Ok(Request { method, url, headers, body, content_type, auth, secrets, tls: None })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{BearerAuth, HmacAuth, HttpAuth, HttpBody, KeyEncoding, LocalRef, SecretKeyRef, ValueSource};
    use serde_json::json;

    fn secret(name: &str, key: &str) -> ValueSource {
        ValueSource { value: None, secret_key_ref: Some(SecretKeyRef { name: name.into(), key: key.into() }) }
    }

    fn creds() -> Credentials {
        let mut c = Credentials::default();
        c.insert(SecretKeyRef { name: "imburse".into(), key: "public".into() }, b"pub-123".to_vec());
        c.insert(
            SecretKeyRef { name: "imburse".into(), key: "private".into() },
            b"c2VjcmV0LWtleS1mb3ItdGVzdHM=".to_vec(),
        );
        c.insert(SecretKeyRef { name: "imburse".into(), key: "customer".into() }, b"cust-9".to_vec());
        c
    }

    #[test]
    fn imburse_management_request_is_signed_without_a_body() {
        let spec = HttpSpec {
            url: "https://sandbox-api.imbursepayments.com/identity/v1/hmac/management".into(),
            method: HttpMethod::Post,
            headers: BTreeMap::new(),
            body: None,
            auth: Some(HttpAuth {
                basic: None,
                hmac: Some(HmacAuth {
                    scheme: HmacScheme::Imburse,
                    public_key: secret("imburse", "public"),
                    private_key: secret("imburse", "private"),
                    private_key_encoding: KeyEncoding::Base64,
                }),
                bearer: None,
            }),
        };
        let r = request(&spec, &creds(), None, false).unwrap();
        assert!(r.body.is_empty());
        // Same vector as the signer's known-answer test.
        assert_eq!(
            r.authorization(1535617532, "nonce-abc").as_deref(),
            Some("Hmac pub-123:nonce-abc:1535617532:1++L9XBalKW49apREMPPuc3Lnitdss+VAZW6O8pXE3A=")
        );
    }

    #[test]
    fn payout_request_from_the_management_token() {
        let spec = HttpSpec {
            url: "https://sandbox-api.imbursepayments.com/v1/identity/payout".into(),
            method: HttpMethod::Post,
            headers: BTreeMap::new(),
            body: Some(HttpBody {
                raw: None,
                json: Some(json!({"customerRef": "{{ customer }}", "orderRef": "1", "instructionRef": "1"})),
                form: None,
                values: [("customer".to_string(), secret("imburse", "customer"))].into(),
                content_type: None,
            }),
            auth: Some(HttpAuth {
                basic: None,
                hmac: None,
                bearer: Some(BearerAuth { token_source_ref: LocalRef { name: "mgmt".into() } }),
            }),
        };
        assert!(matches!(
            request(&spec, &creds(), None, false),
            Err(Error::Upstream { state: crate::error::UpstreamState::NotReady, .. })
        ));
        let r = request(&spec, &creds(), Some("mgmt-token"), false).unwrap();
        let body: Value = serde_json::from_slice(&r.body).unwrap_or_default();
        assert_eq!(body, json!({"customerRef": "cust-9", "orderRef": "1", "instructionRef": "1"}));
        assert_eq!(r.content_type.as_deref(), Some("application/json"));
        assert_eq!(r.authorization(0, "").as_deref(), Some("Bearer mgmt-token"));
        assert_eq!(r.scrub("mgmt-token and cust-9"), "[redacted] and [redacted]");
    }

    #[test]
    fn basic_auth_headers_from_secrets_and_form_bodies() {
        let spec = HttpSpec {
            url: "https://x.example/token".into(),
            method: HttpMethod::Post,
            headers: [
                ("X-Api-Key".to_string(), secret("imburse", "customer")),
                ("Accept".to_string(), ValueSource { value: Some("application/json".into()), secret_key_ref: None }),
            ]
            .into(),
            body: Some(HttpBody {
                raw: None,
                json: None,
                form: Some(
                    [(
                        "grant_type".to_string(),
                        ValueSource { value: Some("client_credentials".into()), secret_key_ref: None },
                    )]
                    .into(),
                ),
                values: BTreeMap::new(),
                content_type: None,
            }),
            auth: Some(HttpAuth {
                basic: Some(crate::crd::BasicAuth {
                    username: ValueSource { value: Some("user".into()), secret_key_ref: None },
                    password: secret("imburse", "public"),
                }),
                hmac: None,
                bearer: None,
            }),
        };
        let r = request(&spec, &creds(), None, false).unwrap();
        assert_eq!(
            r.headers,
            vec![
                ("Accept".to_string(), "application/json".to_string()),
                ("X-Api-Key".to_string(), "cust-9".to_string())
            ]
        );
        assert_eq!(String::from_utf8_lossy(&r.body), "grant_type=client_credentials");
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
    fn unknown_placeholders_are_spec_errors() {
        let spec = HttpSpec {
            url: "https://x.example/token".into(),
            method: HttpMethod::Post,
            headers: BTreeMap::new(),
            body: Some(HttpBody {
                raw: Some("id={{ nope }}".into()),
                json: None,
                form: None,
                values: BTreeMap::new(),
                content_type: None,
            }),
            auth: None,
        };
        assert!(matches!(request(&spec, &creds(), None, false), Err(Error::InvalidSpec(_))));
    }
}
