//! OAuth 2.0 client credentials grant (RFC 6749 section 4.4).

use crate::crd::{ClientAuthentication, OAuth2Spec, RequestFormat};
use crate::credentials::Credentials;
use crate::error::Error;
use crate::providers::{Auth, Method, Request, check_headers, parse_url};

/// Builds the token request for an `oauth2` spec. A `privateKeyJwt` assertion is signed here,
/// fresh for the attempt.
pub fn request(spec: &OAuth2Spec, creds: &Credentials, allow_http: bool) -> Result<Request, Error> {
    let url = parse_url("oauth2.tokenUrl", &spec.token_url, allow_http)?;
    let client_id = creds.string(&spec.client_id, "oauth2.clientId")?;
    if client_id.is_empty() {
        return Err(Error::CredentialsInvalid("oauth2.clientId is empty".into()));
    }
    let secret = || -> Result<String, Error> {
        let source = spec.client_secret.as_ref().ok_or_else(|| {
            Error::InvalidSpec("oauth2.clientSecret is required for basic and body authentication".into())
        })?;
        creds.string(source, "oauth2.clientSecret")
    };
    let mut params: Vec<(String, String)> = vec![("grant_type".into(), "client_credentials".into())];
    if !spec.scopes.is_empty() {
        params.push(("scope".into(), spec.scopes.join(" ")));
    }
    for (k, v) in &spec.parameters {
        if matches!(
            k.as_str(),
            "grant_type" | "client_id" | "client_secret" | "client_assertion" | "client_assertion_type"
        ) {
            return Err(Error::InvalidSpec(format!("oauth2.parameters: {k} is set by the operator")));
        }
        params.push((k.clone(), v.clone()));
    }
    let mut secrets = vec![];
    let auth = match spec.client_authentication {
        ClientAuthentication::Basic => {
            let client_secret = secret()?;
            secrets.push(client_secret.clone().into_bytes());
            Auth::Basic { username: client_id.clone(), password: client_secret }
        }
        ClientAuthentication::Body => {
            let client_secret = secret()?;
            secrets.push(client_secret.clone().into_bytes());
            params.push(("client_id".into(), client_id.clone()));
            params.push(("client_secret".into(), client_secret));
            Auth::None
        }
        ClientAuthentication::PrivateKeyJwt => {
            let jwt = spec.private_key_jwt.as_ref().ok_or_else(|| {
                Error::InvalidSpec("oauth2.privateKeyJwt is required for clientAuthentication privateKeyJwt".into())
            })?;
            let key = creds.get(&jwt.private_key, "oauth2.privateKeyJwt.privateKey")?;
            let audience = jwt.audience.clone().unwrap_or_else(|| spec.token_url.clone());
            let now = jiff::Timestamp::now().as_second();
            let assertion =
                super::jwt::client_assertion(jwt.algorithm, key, &client_id, &audience, jwt.key_id.as_deref(), now)?;
            secrets.push(assertion.clone().into_bytes());
            params.push(("client_id".into(), client_id.clone()));
            params.push(("client_assertion_type".into(), super::jwt::ASSERTION_TYPE.into()));
            params.push(("client_assertion".into(), assertion));
            Auth::None
        }
        ClientAuthentication::TlsClientAuth => {
            params.push(("client_id".into(), client_id.clone()));
            Auth::None
        }
    };
    let (body, content_type) = match spec.request_format {
        RequestFormat::Form => {
            let mut ser = url::form_urlencoded::Serializer::new(String::new());
            for (k, v) in &params {
                ser.append_pair(k, v);
            }
            (ser.finish().into_bytes(), "application/x-www-form-urlencoded")
        }
        RequestFormat::Json => {
            let map: serde_json::Map<String, serde_json::Value> =
                params.into_iter().map(|(k, v)| (k, serde_json::Value::String(v))).collect();
            (serde_json::Value::Object(map).to_string().into_bytes(), "application/json")
        }
    };
    let headers: Vec<(String, String)> = spec.headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    check_headers("oauth2.headers", &headers)?;
    Ok(Request {
        method: Method::Post,
        url,
        headers,
        body,
        content_type: Some(content_type.into()),
        auth,
        secrets,
        tls: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{SecretKeyRef, ValueSource};

    fn spec(auth: ClientAuthentication, format: RequestFormat) -> OAuth2Spec {
        OAuth2Spec {
            token_url: "https://auth.example.com/oauth2/token/".into(),
            client_id: ValueSource { value: Some("my-id".into()), secret_key_ref: None },
            client_secret: Some(ValueSource {
                value: None,
                secret_key_ref: Some(SecretKeyRef { name: "c".into(), key: "secret".into() }),
            }),
            client_authentication: auth,
            private_key_jwt: None,
            request_format: format,
            scopes: vec!["read".into(), "write".into()],
            parameters: [("audience".to_string(), "api".to_string())].into(),
            headers: [("Cache-Control".to_string(), "no-cache".to_string())].into(),
        }
    }

    fn creds() -> Credentials {
        let mut c = Credentials::default();
        c.insert(SecretKeyRef { name: "c".into(), key: "secret".into() }, b"s3cr3t\n".to_vec());
        c
    }

    #[test]
    fn basic_auth_form_body() {
        let r = request(&spec(ClientAuthentication::Basic, RequestFormat::Form), &creds(), false).unwrap();
        assert_eq!(String::from_utf8_lossy(&r.body), "grant_type=client_credentials&scope=read+write&audience=api");
        assert_eq!(r.content_type.as_deref(), Some("application/x-www-form-urlencoded"));
        // base64("my-id:s3cr3t"): the trailing newline of the Secret value is not part of it.
        assert_eq!(r.authorization(0, "").as_deref(), Some("Basic bXktaWQ6czNjcjN0"));
        assert_eq!(r.headers, vec![("Cache-Control".to_string(), "no-cache".to_string())]);
    }

    #[test]
    fn body_auth_json_body() {
        let r = request(&spec(ClientAuthentication::Body, RequestFormat::Json), &creds(), false).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
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
        let mut s = spec(ClientAuthentication::PrivateKeyJwt, RequestFormat::Form);
        s.client_secret = None;
        s.private_key_jwt = Some(crate::crd::PrivateKeyJwt {
            private_key: SecretKeyRef { name: "jwt".into(), key: "key.pem".into() },
            algorithm: crate::crd::JwtAlgorithm::ES256,
            key_id: None,
            audience: None,
        });
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
        let mut t = spec(ClientAuthentication::TlsClientAuth, RequestFormat::Form);
        t.client_secret = None;
        let r = request(&t, &creds(), false).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&r.body),
            "grant_type=client_credentials&scope=read+write&audience=api&client_id=my-id"
        );
    }

    #[test]
    fn spec_mistakes_are_invalid_spec() {
        let mut s = spec(ClientAuthentication::Basic, RequestFormat::Form);
        s.token_url = "http://auth.example.com/token".into();
        assert!(matches!(request(&s, &creds(), false), Err(Error::InvalidSpec(_))));
        assert!(request(&s, &creds(), true).is_ok());
        s.token_url = "not a url".into();
        assert!(matches!(request(&s, &creds(), true), Err(Error::InvalidSpec(_))));
        let mut s = spec(ClientAuthentication::Basic, RequestFormat::Form);
        s.parameters.insert("grant_type".into(), "password".into());
        assert!(matches!(request(&s, &creds(), false), Err(Error::InvalidSpec(_))));
        let s = spec(ClientAuthentication::Basic, RequestFormat::Form);
        assert!(matches!(request(&s, &Credentials::default(), false), Err(Error::CredentialsNotFound(_))));
    }
}
