//! OAuth 2.0 token requests (RFC 6749): the client credentials grant, with the client
//! authentication methods of the IANA registry.

use crate::crd::{ClientAuthType, GrantType, JwtAlgorithm, OAuth2BodyType, OAuth2Spec};
use crate::credentials::Credentials;
use crate::error::Error;
use crate::providers::{Auth, Method, Request, check_headers, parse_url, resolve_all};

/// Parameters the operator sets itself.
const RESERVED: [&str; 6] =
    ["grant_type", "scope", "client_id", "client_secret", "client_assertion", "client_assertion_type"];

/// Builds the token request for an `oauth2` spec. A `PrivateKeyJWT` assertion is signed here,
/// fresh for the attempt.
pub fn request(spec: &OAuth2Spec, creds: &Credentials, allow_http: bool) -> Result<Request, Error> {
    let url = parse_url("oauth2.tokenURL", &spec.token_url, allow_http)?;
    let mut secrets = vec![];
    let client_id = creds.resolve(&spec.client_id, "oauth2.clientID")?;
    if client_id.secret {
        secrets.push(client_id.text.clone().into_bytes());
    }
    let client_id = client_id.text;
    if client_id.is_empty() {
        return Err(Error::CredentialsInvalid("oauth2.clientID is empty".into()));
    }
    let grant = match spec.grant_type {
        GrantType::ClientCredentials => "client_credentials",
        GrantType::Unknown => return Err(Error::unsupported("oauth2.grantType")),
    };
    let mut params: Vec<(String, String)> = vec![("grant_type".into(), grant.into())];
    if !spec.scopes.is_empty() {
        params.push(("scope".into(), spec.scopes.join(" ")));
    }
    for (k, v) in resolve_all(creds, &spec.parameters, "oauth2.parameters", &mut secrets)? {
        if RESERVED.contains(&k.as_str()) {
            return Err(Error::InvalidSpec(format!("oauth2.parameters: {k} is set by the operator")));
        }
        params.push((k, v));
    }
    let auth = client_auth(spec, creds, &client_id, &mut params, &mut secrets)?;
    let (body, content_type) = match spec.body_type {
        OAuth2BodyType::Form => {
            let mut ser = url::form_urlencoded::Serializer::new(String::new());
            for (k, v) in &params {
                ser.append_pair(k, v);
            }
            (ser.finish().into_bytes(), "application/x-www-form-urlencoded")
        }
        OAuth2BodyType::Json => {
            let map: serde_json::Map<String, serde_json::Value> =
                params.into_iter().map(|(k, v)| (k, serde_json::Value::String(v))).collect();
            (serde_json::Value::Object(map).to_string().into_bytes(), "application/json")
        }
        OAuth2BodyType::Unknown => return Err(Error::unsupported("oauth2.bodyType")),
    };
    let headers = resolve_all(creds, &spec.headers, "oauth2.headers", &mut secrets)?;
    check_headers("oauth2.headers", &headers)?;
    if headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("authorization")) {
        return Err(Error::InvalidSpec("oauth2.headers: the Authorization header belongs to clientAuth".into()));
    }
    Ok(Request {
        method: Method::Post,
        url,
        headers,
        body,
        content_type: Some(content_type.into()),
        auth,
        secrets,
        tls: None,
        timeout: None,
    })
}

/// The client authentication: the `Authorization` header to send, or the parameters it adds.
fn client_auth(
    spec: &OAuth2Spec,
    creds: &Credentials,
    client_id: &str,
    params: &mut Vec<(String, String)>,
    secrets: &mut Vec<Vec<u8>>,
) -> Result<Auth, Error> {
    let auth = &spec.client_auth;
    let client_secret = || -> Result<String, Error> {
        let r = auth.client_secret_ref.as_ref().ok_or_else(|| {
            Error::InvalidSpec(
                "oauth2.clientAuth.clientSecretRef is required for ClientSecretBasic and ClientSecretPost".into(),
            )
        })?;
        creds.secret(r, "oauth2.clientAuth.clientSecretRef")
    };
    Ok(match auth.type_ {
        ClientAuthType::ClientSecretBasic => {
            let client_secret = client_secret()?;
            secrets.push(client_secret.clone().into_bytes());
            Auth::Basic { username: client_id.to_string(), password: client_secret }
        }
        ClientAuthType::ClientSecretPost => {
            let client_secret = client_secret()?;
            secrets.push(client_secret.clone().into_bytes());
            params.push(("client_id".into(), client_id.to_string()));
            params.push(("client_secret".into(), client_secret));
            Auth::None
        }
        ClientAuthType::PrivateKeyJwt => {
            let jwt = auth.private_key_jwt.as_ref().ok_or_else(|| {
                Error::InvalidSpec("oauth2.clientAuth.privateKeyJWT is required for PrivateKeyJWT".into())
            })?;
            if jwt.algorithm == JwtAlgorithm::Unknown {
                return Err(Error::unsupported("oauth2.clientAuth.privateKeyJWT.algorithm"));
            }
            let key = creds.get(&jwt.private_key_secret_ref, "oauth2.clientAuth.privateKeyJWT.privateKeySecretRef")?;
            let audience = jwt.audience.clone().unwrap_or_else(|| spec.token_url.clone());
            let now = jiff::Timestamp::now().as_second();
            let assertion =
                super::jwt::client_assertion(jwt.algorithm, key, client_id, &audience, jwt.key_id.as_deref(), now)?;
            secrets.push(assertion.clone().into_bytes());
            params.push(("client_id".into(), client_id.to_string()));
            params.push(("client_assertion_type".into(), super::jwt::ASSERTION_TYPE.into()));
            params.push(("client_assertion".into(), assertion));
            Auth::None
        }
        ClientAuthType::TlsClientAuth => {
            params.push(("client_id".into(), client_id.to_string()));
            Auth::None
        }
        ClientAuthType::Unknown => return Err(Error::unsupported("oauth2.clientAuth.type")),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::crd::SecretKeyRef;

    fn spec(auth: Value, body_type: &str) -> OAuth2Spec {
        serde_json::from_value(json!({
            "tokenURL": "https://auth.example.com/oauth2/token/",
            "clientID": {"value": "my-id"},
            "clientAuth": auth,
            "bodyType": body_type,
            "scopes": ["read", "write"],
            "parameters": [{"name": "audience", "value": "api"}],
            "headers": [{"name": "Cache-Control", "value": "no-cache"}]
        }))
        .unwrap()
    }

    fn secret_auth(type_: &str) -> Value {
        json!({"type": type_, "clientSecretRef": {"name": "c", "key": "secret"}})
    }

    fn creds() -> Credentials {
        let mut c = Credentials::default();
        c.insert(SecretKeyRef { name: "c".into(), key: "secret".into() }, b"s3cr3t\n".to_vec());
        c
    }

    #[test]
    fn basic_auth_form_body() {
        let r = request(&spec(secret_auth("ClientSecretBasic"), "Form"), &creds(), false).unwrap();
        assert_eq!(String::from_utf8_lossy(&r.body), "grant_type=client_credentials&scope=read+write&audience=api");
        assert_eq!(r.content_type.as_deref(), Some("application/x-www-form-urlencoded"));
        // base64("my-id:s3cr3t"): the trailing newline of the Secret value is not part of it.
        assert_eq!(r.authorization(0, "").as_deref(), Some("Basic bXktaWQ6czNjcjN0"));
        assert_eq!(r.headers, vec![("Cache-Control".to_string(), "no-cache".to_string())]);
    }

    #[test]
    fn post_auth_json_body() {
        let r = request(&spec(secret_auth("ClientSecretPost"), "JSON"), &creds(), false).unwrap();
        let v: Value = serde_json::from_slice(&r.body).unwrap_or_default();
        assert_eq!(v["grant_type"], "client_credentials");
        assert_eq!(v["client_id"], "my-id");
        assert_eq!(v["client_secret"], "s3cr3t");
        assert_eq!(v["scope"], "read write");
        assert!(r.authorization(0, "").is_none());
        assert_eq!(r.scrub("echo s3cr3t back"), "echo [redacted] back");
        assert!(!format!("{r:?}").contains("s3cr3t"));
    }

    #[test]
    fn private_key_jwt_and_tls_client_auth_send_no_secret() {
        let s = spec(
            json!({"type": "PrivateKeyJWT", "privateKeyJWT": {"privateKeySecretRef": {"name": "jwt", "key": "key.pem"}, "algorithm": "ES256"}}),
            "Form",
        );
        let mut c = creds();
        c.insert(
            SecretKeyRef { name: "jwt".into(), key: "key.pem".into() },
            include_bytes!("../../tests/providers/fixtures/jwt-ec.key").to_vec(),
        );
        let r = request(&s, &c, false).unwrap();
        let form: Vec<(String, String)> = url::form_urlencoded::parse(&r.body).into_owned().collect();
        let get = |k: &str| form.iter().find(|(x, _)| x == k).map(|(_, v)| v.clone());
        assert_eq!(get("client_assertion_type").as_deref(), Some(super::super::jwt::ASSERTION_TYPE));
        assert_eq!(get("client_id").as_deref(), Some("my-id"));
        assert!(get("client_assertion").is_some_and(|a| a.split('.').count() == 3));
        assert!(get("client_secret").is_none() && r.authorization(0, "").is_none());
        let r = request(&spec(json!({"type": "TLSClientAuth"}), "Form"), &creds(), false).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&r.body),
            "grant_type=client_credentials&scope=read+write&audience=api&client_id=my-id"
        );
    }

    #[test]
    fn spec_mistakes_are_invalid_spec() {
        let mut s = spec(secret_auth("ClientSecretBasic"), "Form");
        s.token_url = "http://auth.example.com/token".into();
        assert!(matches!(request(&s, &creds(), false), Err(Error::InvalidSpec(_))));
        assert!(request(&s, &creds(), true).is_ok());
        s.token_url = "not a url".into();
        assert!(matches!(request(&s, &creds(), true), Err(Error::InvalidSpec(_))));
        let mut s = spec(secret_auth("ClientSecretBasic"), "Form");
        s.parameters[0].name = "grant_type".into();
        assert!(matches!(request(&s, &creds(), false), Err(Error::InvalidSpec(_))));
        let s = spec(secret_auth("ClientSecretBasic"), "Form");
        assert!(matches!(request(&s, &Credentials::default(), false), Err(Error::CredentialsNotFound(_))));
    }

    #[test]
    fn methods_from_a_newer_version_are_refused() {
        let s = spec(json!({"type": "ClientSecretJWT", "clientSecretRef": {"name": "c", "key": "secret"}}), "Form");
        assert_eq!(s.client_auth.type_, ClientAuthType::Unknown);
        let e = request(&s, &creds(), false).unwrap_err();
        assert!(matches!(e, Error::InvalidSpec(_)) && e.to_string().contains("oauth2.clientAuth.type"), "{e}");
        let s = spec(secret_auth("ClientSecretBasic"), "CBOR");
        assert!(matches!(request(&s, &creds(), false), Err(Error::InvalidSpec(_))));
    }
}
