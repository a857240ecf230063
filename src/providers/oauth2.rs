//! OAuth 2.0 token requests (RFC 6749): the client credentials grant, with the client
//! authentication methods of the IANA registry, and the token exchange of a ServiceAccount token
//! (RFC 8693).

use crate::crd::{ClientAuth, ClientAuthType, GrantType, JwtAlgorithm, OAuth2BodyType, OAuth2Spec};
use crate::credentials::Credentials;
use crate::error::Error;
use crate::providers::{Auth, Method, Request, check_headers, parse_url, resolve_all};

/// Parameters the operator sets itself.
const RESERVED: [&str; 9] = [
    "grant_type",
    "scope",
    "client_id",
    "client_secret",
    "client_assertion",
    "client_assertion_type",
    "subject_token",
    "subject_token_type",
    "requested_token_type",
];

/// The grant type of RFC 8693.
pub const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

/// Builds the token request for an `oauth2` spec. A `PrivateKeyJWT` assertion is signed here,
/// fresh for the attempt; a ServiceAccount token comes in `creds`, requested for the attempt.
pub fn request(spec: &OAuth2Spec, creds: &Credentials, allow_http: bool) -> Result<Request, Error> {
    let url = parse_url("oauth2.tokenURL", &spec.token_url, allow_http)?;
    let mut secrets = vec![];
    let client_id = match &spec.client_id {
        Some(source) => {
            let client_id = creds.resolve(source, "oauth2.clientID")?;
            if client_id.secret {
                secrets.push(client_id.text.clone().into_bytes());
            }
            if client_id.text.is_empty() {
                return Err(Error::CredentialsInvalid("oauth2.clientID is empty".into()));
            }
            Some(client_id.text)
        }
        None => None,
    };
    let mut params: Vec<(String, String)> = vec![];
    match spec.grant_type {
        GrantType::ClientCredentials => params.push(("grant_type".into(), "client_credentials".into())),
        GrantType::TokenExchange => {
            let exchange = spec.token_exchange.as_ref().ok_or_else(|| {
                Error::InvalidSpec("oauth2.tokenExchange is required for the TokenExchange grant".into())
            })?;
            let subject = service_account_token(creds, "oauth2.tokenExchange.serviceAccountToken")?;
            secrets.push(subject.as_bytes().to_vec());
            params.push(("grant_type".into(), TOKEN_EXCHANGE.into()));
            params.push(("subject_token".into(), subject.to_string()));
            params.push(("subject_token_type".into(), exchange.subject_token_type.clone()));
            if let Some(t) = &exchange.requested_token_type {
                params.push(("requested_token_type".into(), t.clone()));
            }
        }
        GrantType::Unknown => return Err(Error::unsupported("oauth2.grantType")),
    }
    if !spec.scopes.is_empty() {
        params.push(("scope".into(), spec.scopes.join(" ")));
    }
    for (k, v) in resolve_all(creds, &spec.parameters, "oauth2.parameters", &mut secrets)? {
        if RESERVED.contains(&k.as_str()) {
            return Err(Error::InvalidSpec(format!("oauth2.parameters: {k} is set by the operator")));
        }
        params.push((k, v));
    }
    let auth = match (&spec.client_auth, client_id) {
        (Some(auth), Some(client_id)) => client_auth(spec, auth, creds, &client_id, &mut params, &mut secrets)?,
        (Some(_), None) => return Err(Error::InvalidSpec("oauth2.clientAuth needs oauth2.clientID".into())),
        (None, _) if spec.grant_type == GrantType::ClientCredentials => {
            return Err(Error::InvalidSpec(
                "the ClientCredentials grant needs oauth2.clientID and oauth2.clientAuth".into(),
            ));
        }
        // A public client of a token exchange identifies itself, when it has an id.
        (None, Some(client_id)) => {
            params.push(("client_id".into(), client_id));
            Auth::None
        }
        (None, None) => Auth::None,
    };
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

/// The ServiceAccount token requested for this attempt; `field` names the spec field.
fn service_account_token<'a>(creds: &'a Credentials, field: &str) -> Result<&'a str, Error> {
    creds
        .service_account_token()
        .ok_or_else(|| Error::CredentialsNotFound(format!("{field}: no ServiceAccount token was requested")))
}

/// The client authentication: the `Authorization` header to send, or the parameters it adds.
fn client_auth(
    spec: &OAuth2Spec,
    auth: &ClientAuth,
    creds: &Credentials,
    client_id: &str,
    params: &mut Vec<(String, String)>,
    secrets: &mut Vec<Vec<u8>>,
) -> Result<Auth, Error> {
    let client_secret = || -> Result<String, Error> {
        let r = auth.client_secret_ref.as_ref().ok_or_else(|| {
            Error::InvalidSpec(
                "oauth2.clientAuth.clientSecretRef is required for ClientSecretBasic and ClientSecretPost".into(),
            )
        })?;
        creds.secret(r, "oauth2.clientAuth.clientSecretRef")
    };
    let mut assertion = |assertion: String| {
        secrets.push(assertion.clone().into_bytes());
        params.push(("client_id".into(), client_id.to_string()));
        params.push(("client_assertion_type".into(), super::jwt::ASSERTION_TYPE.into()));
        params.push(("client_assertion".into(), assertion));
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
            assertion(super::jwt::client_assertion(
                jwt.algorithm,
                key,
                client_id,
                &audience,
                jwt.key_id.as_deref(),
                now,
            )?);
            Auth::None
        }
        ClientAuthType::ServiceAccountToken => {
            assertion(service_account_token(creds, "oauth2.clientAuth.serviceAccountToken")?.to_string());
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
        assert_eq!(s.client_auth.as_ref().map(|a| a.type_), Some(ClientAuthType::Unknown));
        let e = request(&s, &creds(), false).unwrap_err();
        assert!(matches!(e, Error::InvalidSpec(_)) && e.to_string().contains("oauth2.clientAuth.type"), "{e}");
        let s = spec(secret_auth("ClientSecretBasic"), "CBOR");
        assert!(matches!(request(&s, &creds(), false), Err(Error::InvalidSpec(_))));
    }

    fn form_of(r: &Request) -> Vec<(String, String)> {
        url::form_urlencoded::parse(&r.body).into_owned().collect()
    }

    #[test]
    fn service_account_token_is_the_client_assertion() {
        let s = spec(
            json!({"type": "ServiceAccountToken", "serviceAccountToken": {"serviceAccountName": "payments", "audience": "api://AzureADTokenExchange"}}),
            "Form",
        );
        let missing = request(&s, &creds(), false).unwrap_err();
        assert!(matches!(missing, Error::CredentialsNotFound(_)), "{missing}");
        let mut c = creds();
        c.set_service_account_token("eyJhbGciOiJSUzI1NiJ9.sa.sig".into());
        let r = request(&s, &c, false).unwrap();
        assert_eq!(
            form_of(&r),
            [
                ("grant_type", "client_credentials"),
                ("scope", "read write"),
                ("audience", "api"),
                ("client_id", "my-id"),
                ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
                ("client_assertion", "eyJhbGciOiJSUzI1NiJ9.sa.sig"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        );
        assert!(r.authorization(0, "").is_none());
        assert_eq!(r.scrub("got eyJhbGciOiJSUzI1NiJ9.sa.sig"), "got [redacted]");
    }

    #[test]
    fn token_exchange_sends_the_service_account_token_as_subject() {
        let s: OAuth2Spec = serde_json::from_value(json!({
            "tokenURL": "https://sts.example.com/v1/token",
            "grantType": "TokenExchange",
            "tokenExchange": {
                "serviceAccountToken": {"serviceAccountName": "payments", "audience": "//iam.example/pool"},
                "requestedTokenType": "urn:ietf:params:oauth:token-type:access_token"
            },
            "scopes": ["cloud-platform"],
            "parameters": [{"name": "audience", "value": "//iam.example/pool"}]
        }))
        .unwrap();
        let mut c = Credentials::default();
        c.set_service_account_token("sa.jwt.sig".into());
        let r = request(&s, &c, false).unwrap();
        assert_eq!(
            form_of(&r),
            [
                ("grant_type", TOKEN_EXCHANGE),
                ("subject_token", "sa.jwt.sig"),
                ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
                ("requested_token_type", "urn:ietf:params:oauth:token-type:access_token"),
                ("scope", "cloud-platform"),
                ("audience", "//iam.example/pool"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        );
        assert!(r.authorization(0, "").is_none(), "a public client sends no credentials");
        // A confidential client of the token service authenticates as usual.
        let mut s = s;
        s.client_id = Some(serde_json::from_value(json!({"value": "sts-client"})).unwrap());
        s.client_auth = Some(serde_json::from_value(secret_auth("ClientSecretBasic")).unwrap());
        c.insert(SecretKeyRef { name: "c".into(), key: "secret".into() }, b"s3cr3t".to_vec());
        let r = request(&s, &c, false).unwrap();
        assert_eq!(r.authorization(0, "").as_deref(), Some("Basic c3RzLWNsaWVudDpzM2NyM3Q="));
        // The client credentials grant cannot do without a client.
        let mut cc = spec(secret_auth("ClientSecretBasic"), "Form");
        cc.client_auth = None;
        assert!(matches!(request(&cc, &creds(), false), Err(Error::InvalidSpec(_))));
        let mut p = s.clone();
        p.parameters.push(serde_json::from_value(json!({"name": "subject_token", "value": "x"})).unwrap());
        assert!(matches!(request(&p, &c, false), Err(Error::InvalidSpec(_))));
    }
}
