//! TokenSources that break each CEL rule of the CRD (and the schema checks standing in for the
//! controller's), with the field the API server blames and what it says: what the real kubectl
//! is shown (`kubectl_api.rs`) and what kubesim must answer as the real API server does
//! (`differential.rs`).

#![allow(dead_code)]

use serde_json::{Value, json};

pub fn oauth2() -> Value {
    json!({
        "apiVersion": "tokensource.dev/v1alpha1", "kind": "TokenSource",
        "metadata": {"name": "t"},
        "spec": {
            "type": "OAuth2",
            "oauth2": {
                "tokenURL": "https://idp.example/token",
                "clientID": {"value": "id"},
                "clientAuth": {"type": "ClientSecretBasic", "clientSecretRef": {"name": "creds", "key": "secret"}}
            },
            "target": {"name": "t-token"}
        }
    })
}

pub fn http() -> Value {
    json!({
        "apiVersion": "tokensource.dev/v1alpha1", "kind": "TokenSource",
        "metadata": {"name": "t"},
        "spec": {"type": "HTTP", "http": {"url": "https://api.example/token"}, "target": {"name": "t-token"}}
    })
}

/// Sets `value` at a `/`-separated path, creating objects on the way.
pub fn set(mut doc: Value, path: &str, value: Value) -> Value {
    let mut cur = &mut doc;
    let parts: Vec<&str> = path.split('/').collect();
    for p in &parts[..parts.len() - 1] {
        cur = &mut cur[*p];
    }
    cur[parts[parts.len() - 1]] = value;
    doc
}

pub fn remove(mut doc: Value, path: &str) -> Value {
    let parts: Vec<&str> = path.split('/').collect();
    let mut cur = &mut doc;
    for p in &parts[..parts.len() - 1] {
        cur = &mut cur[*p];
    }
    cur.as_object_mut().map(|m| m.remove(parts[parts.len() - 1]));
    doc
}

/// A broken TokenSource, the field the API server blames and what it says.
pub struct Case {
    pub doc: Value,
    pub field: &'static str,
    pub message: &'static str,
}

pub fn cases() -> Vec<Case> {
    let named = |name: &str| json!([{"name": name, "value": "v"}]);
    let case = |doc: Value, field: &'static str, message: &'static str| Case { doc, field, message };
    vec![
        // The kind of request and its member.
        case(remove(oauth2(), "spec/oauth2"), "spec", "type OAuth2 needs oauth2 and no http"),
        case(
            set(oauth2(), "spec/http", json!({"url": "https://x.example"})),
            "spec",
            "type OAuth2 needs oauth2 and no http",
        ),
        case(remove(http(), "spec/http"), "spec", "type HTTP needs http and no oauth2"),
        case(
            set(oauth2(), "spec/oauth2/clientAuth", json!({"type": "TLSClientAuth"})),
            "spec.oauth2.clientAuth.type",
            "clientAuth type TLSClientAuth needs tls.clientCertificateSecretRef",
        ),
        case(
            set(
                set(oauth2(), "spec/response", json!({"fields": [{"key": "auth", "jsonPath": "$.a"}]})),
                "spec/target/template",
                json!({"data": {"auth": "x"}}),
            ),
            "spec.response.fields",
            "a Secret key is written by both response.fields and target.template.data",
        ),
        // Values and where they come from.
        case(
            set(
                oauth2(),
                "spec/oauth2/clientID",
                json!({"value": "id", "valueFrom": {"secretKeyRef": {"name": "c", "key": "k"}}}),
            ),
            "spec.oauth2.clientID",
            "set exactly one of value and valueFrom",
        ),
        case(
            set(oauth2(), "spec/oauth2/clientID", json!({"valueFrom": {}})),
            "spec.oauth2.clientID.valueFrom",
            "set exactly one of secretKeyRef and configMapKeyRef",
        ),
        case(
            set(oauth2(), "spec/oauth2/parameters", json!([{"name": "audience"}])),
            "spec.oauth2.parameters[0]",
            "set exactly one of value and valueFrom",
        ),
        // OAuth 2.0 requests.
        case(
            set(oauth2(), "spec/oauth2/headers", named("authorization")),
            "spec.oauth2.headers",
            "the Authorization header belongs to clientAuth",
        ),
        case(
            set(oauth2(), "spec/oauth2/parameters", named("client_secret")),
            "spec.oauth2.parameters",
            "grant_type, scope, client_id, client_secret, client_assertion, client_assertion_type, subject_token, subject_token_type and requested_token_type are set by the operator",
        ),
        // Workload identity.
        case(
            remove(oauth2(), "spec/oauth2/clientAuth"),
            "spec.oauth2",
            "the ClientCredentials grant needs clientID and clientAuth",
        ),
        case(
            set(oauth2(), "spec/oauth2/grantType", json!("TokenExchange")),
            "spec.oauth2",
            "tokenExchange is required for the TokenExchange grant, and only for it",
        ),
        case(
            set(
                oauth2(),
                "spec/oauth2/clientAuth",
                json!({"type": "ServiceAccountToken", "clientSecretRef": {"name": "c", "key": "k"}}),
            ),
            "spec.oauth2.clientAuth",
            "serviceAccountToken is required for ServiceAccountToken, and only for it",
        ),
        case(
            set(
                oauth2(),
                "spec/oauth2/clientAuth",
                json!({"type": "ServiceAccountToken", "serviceAccountToken": {"serviceAccountName": "payments", "audience": "api://AzureADTokenExchange", "expiration": "5m"}}),
            ),
            "spec.oauth2.clientAuth.serviceAccountToken.expiration",
            "between 10m and 1h",
        ),
        case(
            set(oauth2(), "spec/oauth2/headers", named("X Api")),
            "spec.oauth2.headers",
            "header names are RFC 9110 tokens",
        ),
        case(
            set(oauth2(), "spec/oauth2/headers", named("Content-Length")),
            "spec.oauth2.headers",
            "Host, Content-Length, Content-Type, Transfer-Encoding and Connection are set by the operator",
        ),
        case(
            set(oauth2(), "spec/oauth2/clientAuth", json!({"type": "ClientSecretPost"})),
            "spec.oauth2.clientAuth",
            "clientSecretRef is required for ClientSecretBasic and ClientSecretPost, and only for them",
        ),
        case(
            set(oauth2(), "spec/oauth2/clientAuth", json!({"type": "PrivateKeyJWT"})),
            "spec.oauth2.clientAuth",
            "privateKeyJWT is required for PrivateKeyJWT, and only for it",
        ),
        // CA bundles.
        case(
            set(oauth2(), "spec/tls", json!({"caBundle": {"type": "PEM"}})),
            "spec.tls.caBundle",
            "pem is required for type PEM, and only for it",
        ),
        case(
            set(oauth2(), "spec/tls", json!({"caBundle": {"type": "SecretKeyRef", "pem": "x"}})),
            "spec.tls.caBundle",
            "secretKeyRef is required for type SecretKeyRef, and only for it",
        ),
        case(
            set(oauth2(), "spec/tls", json!({"caBundle": {"type": "ConfigMapKeyRef"}})),
            "spec.tls.caBundle",
            "configMapKeyRef is required for type ConfigMapKeyRef, and only for it",
        ),
        // Generic HTTP requests.
        case(
            set(set(http(), "spec/http/method", json!("GET")), "spec/http/body", json!({"type": "Raw", "raw": "x"})),
            "spec.http.body",
            "a GET request has no body",
        ),
        case(
            set(
                set(http(), "spec/http/headers", named("Authorization")),
                "spec/http/auth",
                json!({"type": "Bearer", "bearer": {"tokenSecretRef": {"name": "s", "key": "k"}}}),
            ),
            "spec.http.headers",
            "set the Authorization header or auth, not both",
        ),
        case(set(http(), "spec/http/headers", named("a:b")), "spec.http.headers", "header names are RFC 9110 tokens"),
        case(
            set(http(), "spec/http/headers", named("Host")),
            "spec.http.headers",
            "Host, Content-Length, Content-Type, Transfer-Encoding and Connection are set by the operator",
        ),
        case(
            set(http(), "spec/http/body", json!({"type": "Raw"})),
            "spec.http.body",
            "raw is required for type Raw, and only for it",
        ),
        case(
            set(http(), "spec/http/body", json!({"type": "JSON", "raw": "x"})),
            "spec.http.body",
            "json is required for type JSON, and only for it",
        ),
        case(
            set(http(), "spec/http/body", json!({"type": "Form", "json": {}})),
            "spec.http.body",
            "form is required for type Form, and only for it",
        ),
        case(
            set(http(), "spec/http/body", json!({"type": "JSON", "json": {}, "contentType": "text/plain"})),
            "spec.http.body.contentType",
            "contentType is only for type Raw",
        ),
        case(
            set(
                http(),
                "spec/http/body",
                json!({"type": "Form", "form": [{"name": "a", "value": "b"}], "values": [{"name": "x", "value": "y"}]}),
            ),
            "spec.http.body.values",
            "values fill placeholders in raw and json bodies; a form takes its values directly",
        ),
        case(
            set(
                http(),
                "spec/http/body",
                json!({"type": "Raw", "raw": "{{ a-b }}", "values": [{"name": "a-b", "value": "y"}]}),
            ),
            "spec.http.body.values",
            "placeholder names are identifiers such as customer_ref",
        ),
        case(
            set(http(), "spec/http/auth", json!({"type": "Basic"})),
            "spec.http.auth",
            "basic is required for type Basic, and only for it",
        ),
        case(
            set(http(), "spec/http/auth", json!({"type": "HMAC"})),
            "spec.http.auth",
            "hmac is required for type HMAC, and only for it",
        ),
        case(
            set(http(), "spec/http/auth", json!({"type": "None", "bearer": {"tokenSourceRef": {"name": "up"}}})),
            "spec.http.auth",
            "bearer is required for type Bearer, and only for it",
        ),
        case(
            set(http(), "spec/http/auth", json!({"type": "Bearer", "bearer": {}})),
            "spec.http.auth.bearer",
            "set exactly one of tokenSourceRef and tokenSecretRef",
        ),
        // Reading the reply.
        case(
            set(http(), "spec/response", json!({"fields": [{"key": "token", "jsonPath": "$.t"}]})),
            "spec.response.fields[0].key",
            "token, token_type, expires_at and scope are written by the operator",
        ),
        case(
            set(http(), "spec/response", json!({"expiry": {"type": "ExpiresAt", "jsonPath": "$.e"}})),
            "spec.response.expiry",
            "type ExpiresAt needs jsonPath and format",
        ),
        case(
            set(http(), "spec/response", json!({"expiry": {"type": "JWT", "jsonPath": "$.e"}})),
            "spec.response.expiry.jsonPath",
            "jsonPath is for types ExpiresIn and ExpiresAt",
        ),
        case(
            set(http(), "spec/response", json!({"expiry": {"type": "ExpiresIn", "format": "RFC3339"}})),
            "spec.response.expiry.format",
            "format is for type ExpiresAt",
        ),
        case(
            set(http(), "spec/response", json!({"expiry": {"type": "JWT", "defaultLifetime": "1h"}})),
            "spec.response.expiry.defaultLifetime",
            "defaultLifetime is for type Auto",
        ),
        // The Secret.
        case(
            set(http(), "spec/target/template", json!({"mergePolicy": "Replace"})),
            "spec.target.template",
            "mergePolicy Replace needs data: it writes only the template's keys",
        ),
        case(
            set(http(), "spec/target/template", json!({"data": {"a/b": "x"}})),
            "spec.target.template.data",
            "keys must be Secret keys: letters, digits, '-', '_' and '.'",
        ),
        case(
            set(http(), "spec/target/template", json!({"data": {"expires_at": "x"}})),
            "spec.target.template.data",
            "token, token_type, expires_at and scope are written by the operator",
        ),
        // Plain words for common mistakes.
        case(
            set(http(), "spec/response/token", json!({"jsonPath": "access_token"})),
            "spec.response.token.jsonPath",
            "a JSONPath starts with $, such as $.access_token",
        ),
        case(
            set(oauth2(), "spec/oauth2/tokenURL", json!("https://")),
            "spec.oauth2.tokenURL",
            "must be an absolute http(s) URL with a host and no user:password@, such as https://idp.example.com/oauth2/token",
        ),
        // Self-signed JWT bearer.
        case(
            set(http(), "spec/http/auth", json!({"type": "JWT"})),
            "spec.http.auth",
            "jwt is required for type JWT, and only for it",
        ),
        case(
            set(
                http(),
                "spec/http/auth",
                json!({"type": "JWT", "jwt": {"privateKeySecretRef": {"name": "k", "key": "pem"}, "issuer": {"value": "1"}, "claims": {"exp": "9999999999"}}}),
            ),
            "spec.http.auth.jwt.claims",
            "iss, sub, aud, iat, exp and nbf are set by the operator",
        ),
        case(
            set(
                http(),
                "spec/http/auth",
                json!({"type": "JWT", "jwt": {"privateKeySecretRef": {"name": "k", "key": "pem"}, "issuer": {"value": "1"}, "lifetime": "2h"}}),
            ),
            "spec.http.auth.jwt.lifetime",
            "between 10s and 1h",
        ),
        case(
            set(
                http(),
                "spec/http/auth",
                json!({"type": "JWT", "jwt": {"privateKeySecretRef": {"name": "k", "key": "pem"}, "serviceAccountKeySecretRef": {"name": "k", "key": "json"}}}),
            ),
            "spec.http.auth.jwt",
            "set serviceAccountKeySecretRef, or privateKeySecretRef and issuer",
        ),
        // Rollout restarts.
        case(
            set(http(), "spec/target/rolloutRestart", json!({"workloads": [{"kind": "Deployment"}]})),
            "spec.target.rolloutRestart.workloads[0]",
            "set exactly one of name and selector",
        ),
        case(
            set(
                http(),
                "spec/target/rolloutRestart",
                json!({"workloads": [{"kind": "Deployment", "name": "a", "selector": {"matchLabels": {"a": "b"}}}]}),
            ),
            "spec.target.rolloutRestart.workloads[0]",
            "set exactly one of name and selector",
        ),
        case(
            set(
                http(),
                "spec/target/rolloutRestart",
                json!({"minInterval": "1s", "workloads": [{"kind": "Deployment", "name": "a"}]}),
            ),
            "spec.target.rolloutRestart.minInterval",
            "between 10s and a year (8784h)",
        ),
    ]
}
