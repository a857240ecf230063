//! The `TokenSource` custom resource (`tokensource.dev/v1alpha1`).
//!
//! Every field's doc comment becomes its description in the CRD, which is what `kubectl explain`
//! shows: write them for users. Conventions (README, "API conventions"): credentials are only
//! ever references (`…SecretRef`); other values use the core `EnvVar` shape (`value` or
//! `valueFrom`); every union has a `type` discriminator; behaviour decided by default is written
//! into the schema as a default; every enum tolerates values from newer versions (`Unknown`), so
//! an older operator refuses such a TokenSource instead of misreading it.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The API group of the operator's resources.
pub const GROUP: &str = "tokensource.dev";

/// The Secret keys the operator writes with `mergePolicy: Merge`; templates and copied fields
/// cannot use them (chained TokenSources read `token`).
pub const RESERVED_KEYS: [&str; 4] = ["token", "token_type", "expires_at", "scope"];

const DNS_SUBDOMAIN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
const SECRET_KEY: &str = r"^[-._a-zA-Z0-9]+$";
/// GEP-2257 durations: up to four parts such as `1h30m` or `500ms`.
const DURATION: &str = r"^([0-9]{1,5}(h|m|s|ms)){1,4}$";

/// A TokenSource obtains a short-lived API token from a token endpoint, keeps it in a Secret that
/// pods mount, and renews it before it expires, for as long as the TokenSource exists.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "tokensource.dev",
    version = "v1alpha1",
    kind = "TokenSource",
    plural = "tokensources",
    shortname = "tks",
    category = "tokensource",
    namespaced,
    status = "TokenSourceStatus",
    doc = "A TokenSource obtains a short-lived API token from a token endpoint, writes it into a target Secret and renews it before it expires.",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status","description":"Whether the target Secret holds a valid token"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Degraded\")].reason","description":"AsExpected, or why the last attempt to get a token failed (shown while the stored token is still valid too)"}"#,
    printcolumn = r#"{"name":"Secret","type":"string","jsonPath":".spec.target.name","priority":1,"description":"The target Secret"}"#,
    printcolumn = r#"{"name":"Expires","type":"string","format":"date-time","jsonPath":".status.expirationTime","description":"When the current token expires"}"#,
    printcolumn = r#"{"name":"Renewal","type":"string","format":"date-time","jsonPath":".status.renewalTime","description":"When the operator will next ask for a token"}"#,
    printcolumn = r#"{"name":"Message","type":"string","jsonPath":".status.conditions[?(@.type==\"Degraded\")].message","priority":1,"description":"What the last failed attempt met, such as the provider's answer"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.type != 'OAuth2' || (has(self.oauth2) && !has(self.http))", "message": "type OAuth2 needs oauth2 and no http"},
    {"rule": "self.type != 'HTTP' || (has(self.http) && !has(self.oauth2))", "message": "type HTTP needs http and no oauth2"},
    {"rule": "!has(self.oauth2) || !has(self.oauth2.clientAuth) || self.oauth2.clientAuth.type != 'TLSClientAuth' || (has(self.tls) && has(self.tls.clientCertificateSecretRef))", "message": "clientAuth type TLSClientAuth needs tls.clientCertificateSecretRef", "fieldPath": ".oauth2.clientAuth.type"},
    {"rule": "!has(self.response.fields) || !has(self.target.template.data) || self.response.fields.all(f, !(f.key in self.target.template.data))", "message": "a Secret key is written by both response.fields and target.template.data", "fieldPath": ".response.fields"}
]))]
pub struct TokenSourceSpec {
    /// The kind of token request: `OAuth2` (an OAuth 2.0 token request, set `oauth2`) or `HTTP`
    /// (any other token request, set `http`).
    #[serde(rename = "type")]
    pub type_: RequestType,

    /// An OAuth 2.0 token request (RFC 6749), for `type: OAuth2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth2: Option<Box<OAuth2Spec>>,

    /// A token request for endpoints that are not plain OAuth 2.0, for `type: HTTP`: any URL,
    /// method, headers and body, with Basic, HMAC-signed or bearer authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<Box<HttpSpec>>,

    /// Where the token, its type, scopes and expiry are in the endpoint's JSON reply. The
    /// defaults read the RFC 6749 fields (`access_token`, `token_type`, `scope`, `expires_in`).
    #[serde(default)]
    pub response: ResponseSpec,

    /// When the token is renewed.
    #[serde(default)]
    pub renewal: RenewalSpec,

    /// TLS for the token request: a client certificate (mutual TLS) and a CA bundle for private
    /// CAs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Box<TlsSpec>>,

    /// How long one token request may take, such as `10s`. Unset: the operator's
    /// `--request-timeout` (30s unless changed), which is also the most it allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION), length(max = 32), extend("x-kubernetes-validations" = [{"rule": "duration(self) <= duration('8784h')", "message": "at most a year (8784h)"}]))]
    pub timeout: Option<String>,

    /// The Secret the token is written to.
    pub target: TargetSpec,
}

/// The kinds of token request.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RequestType {
    /// An OAuth 2.0 token request (`oauth2`).
    OAuth2,
    /// Any other HTTP token request (`http`).
    #[serde(rename = "HTTP")]
    Http,
    /// A kind this version of the operator does not know (written by a newer version).
    #[serde(other)]
    #[schemars(skip)]
    Unknown,
}

/// A key of a Secret in the TokenSource's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN))]
    pub name: String,
    /// The key within the Secret's data.
    #[schemars(length(min = 1, max = 253), regex(pattern = SECRET_KEY))]
    pub key: String,
}

/// A key of a ConfigMap in the TokenSource's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapKeyRef {
    /// The ConfigMap's name.
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN))]
    pub name: String,
    /// The key within the ConfigMap's data.
    #[schemars(length(min = 1, max = 253), regex(pattern = SECRET_KEY))]
    pub key: String,
}

/// A Secret in the TokenSource's namespace, as a whole.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalSecretRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN))]
    pub name: String,
}

/// Another TokenSource in the same namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenSourceRef {
    /// The TokenSource's name.
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN))]
    pub name: String,
}

/// Where a value that is not a secret is read from. Set exactly one of `secretKeyRef` and
/// `configMapKeyRef`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{"rule": "has(self.secretKeyRef) != has(self.configMapKeyRef)", "message": "set exactly one of secretKeyRef and configMapKeyRef"}]))]
pub struct ValueFrom {
    /// A key of a Secret in the TokenSource's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<SecretKeyRef>,
    /// A key of a ConfigMap in the TokenSource's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_key_ref: Option<ConfigMapKeyRef>,
}

/// A value that is not a secret, given inline (`value`) or read from a Secret or ConfigMap key
/// (`valueFrom`), as a container's `env` does. Set exactly one.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{"rule": "has(self.value) != has(self.valueFrom)", "message": "set exactly one of value and valueFrom"}]))]
pub struct ValueSource {
    /// The value itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub value: Option<String>,
    /// Where to read the value from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<ValueFrom>,
}

/// A named value (a header, a form field, a parameter, a placeholder value), given inline
/// (`value`) or read from a Secret or ConfigMap key (`valueFrom`). Set exactly one.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{"rule": "has(self.value) != has(self.valueFrom)", "message": "set exactly one of value and valueFrom"}]))]
pub struct NamedValue {
    /// The name.
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
    /// The value itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub value: Option<String>,
    /// Where to read the value from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<ValueFrom>,
}

impl NamedValue {
    /// The value part, without the name.
    pub fn source(&self) -> ValueSource {
        ValueSource { value: self.value.clone(), value_from: self.value_from.clone() }
    }
}

/// An OAuth 2.0 token request.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.headers) || self.headers.all(h, h.name.lowerAscii() != 'authorization')", "message": "the Authorization header belongs to clientAuth", "fieldPath": ".headers"},
    {"rule": "!has(self.parameters) || self.parameters.all(p, !(p.name in ['grant_type', 'scope', 'client_id', 'client_secret', 'client_assertion', 'client_assertion_type', 'subject_token', 'subject_token_type', 'requested_token_type']))", "message": "grant_type, scope, client_id, client_secret, client_assertion, client_assertion_type, subject_token, subject_token_type and requested_token_type are set by the operator", "fieldPath": ".parameters"},
    {"rule": "has(self.grantType) && self.grantType == 'TokenExchange' || (has(self.clientID) && has(self.clientAuth))", "message": "the ClientCredentials grant needs clientID and clientAuth"},
    {"rule": "!has(self.clientAuth) || has(self.clientID)", "message": "clientAuth needs clientID"},
    {"rule": "(has(self.grantType) && self.grantType == 'TokenExchange') == has(self.tokenExchange)", "message": "tokenExchange is required for the TokenExchange grant, and only for it"}
]))]
pub struct OAuth2Spec {
    /// The token endpoint, for example `https://app.podero.com/oauth2/token/`: https (http only
    /// when the operator allows it), no user or password in the URL.
    #[serde(rename = "tokenURL")]
    #[schemars(length(min = 1, max = 2048), extend("x-kubernetes-validations" = [{"rule": "(self.startsWith('https://') || self.startsWith('http://')) && isURL(self) && url(self).getHostname() != '' && !self.split('/')[2].contains('@') && !self.contains(' ')", "message": "must be an absolute http(s) URL with a host and no user:password@, such as https://idp.example.com/oauth2/token"}]))]
    pub token_url: String,

    /// The grant: `ClientCredentials` (RFC 6749 section 4.4) or `TokenExchange` (RFC 8693, a
    /// ServiceAccount token exchanged for the provider's token; set `tokenExchange`).
    #[serde(default)]
    pub grant_type: GrantType,

    /// The client identifier. Required for `ClientCredentials`; for `TokenExchange` only when the
    /// token service wants to know the client.
    #[serde(rename = "clientID", default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<ValueSource>,

    /// How the client authenticates to the token endpoint. Required for `ClientCredentials`; a
    /// `TokenExchange` without it is a public client's (RFC 8693 section 2.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_auth: Option<ClientAuth>,

    /// What the `TokenExchange` grant exchanges: a ServiceAccount token, as `subject_token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_exchange: Option<TokenExchange>,

    /// How the request parameters are encoded: `Form` (`application/x-www-form-urlencoded`, as
    /// RFC 6749 requires) or `JSON` (a JSON object, as Podero expects).
    #[serde(default)]
    pub body_type: OAuth2BodyType,

    /// Scopes to request, sent space-separated in the `scope` parameter.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 256), regex(pattern = r"^[!#-\[\]-~]+$")))]
    pub scopes: Vec<String>,

    /// Extra request parameters, such as `audience` or `resource`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub parameters: Vec<NamedValue>,

    /// Extra HTTP headers, such as `Cache-Control: no-cache`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), extend("x-kubernetes-validations" = [{"rule": "self.all(h, h.name.matches('^[-!#$%&\\'*+.^_`|~0-9A-Za-z]+$'))", "message": "header names are RFC 9110 tokens"}, {"rule": "self.all(h, !(h.name.lowerAscii() in ['host', 'content-length', 'content-type', 'transfer-encoding', 'connection']))", "message": "Host, Content-Length, Content-Type, Transfer-Encoding and Connection are set by the operator"}]))]
    pub headers: Vec<NamedValue>,
}

/// OAuth 2.0 grants.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum GrantType {
    /// The client credentials grant (RFC 6749 section 4.4).
    #[default]
    ClientCredentials,
    /// The token exchange grant (RFC 8693): `grant_type=urn:ietf:params:oauth:grant-type:token-exchange`
    /// with a ServiceAccount token as `subject_token`, as Google's and other workload identity
    /// federations take it. The target audience or resource go in `parameters`.
    TokenExchange,
    /// A grant this version of the operator does not know.
    #[serde(other)]
    #[schemars(skip)]
    Unknown,
}

/// How an OAuth 2.0 client authenticates. `type` says which; its member holds the details.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "(self.type in ['ClientSecretBasic', 'ClientSecretPost']) == has(self.clientSecretRef)", "message": "clientSecretRef is required for ClientSecretBasic and ClientSecretPost, and only for them"},
    {"rule": "(self.type == 'PrivateKeyJWT') == has(self.privateKeyJWT)", "message": "privateKeyJWT is required for PrivateKeyJWT, and only for it"},
    {"rule": "(self.type == 'ServiceAccountToken') == has(self.serviceAccountToken)", "message": "serviceAccountToken is required for ServiceAccountToken, and only for it"}
]))]
pub struct ClientAuth {
    /// `ClientSecretBasic`: `Authorization: Basic base64(id:secret)` (RFC 6749 section 2.3.1);
    /// `ClientSecretPost`: `client_id` and `client_secret` as request parameters;
    /// `PrivateKeyJWT`: a signed client assertion (RFC 7523); `TLSClientAuth`: the client
    /// certificate of `spec.tls` (RFC 8705), only `client_id` is sent; `ServiceAccountToken`: a
    /// Kubernetes ServiceAccount token as the client assertion (RFC 7523 section 2.2), as Entra ID
    /// workload identity federation takes it — no secret is stored anywhere.
    #[serde(rename = "type")]
    pub type_: ClientAuthType,
    /// The client secret, for `ClientSecretBasic` and `ClientSecretPost`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_ref: Option<SecretKeyRef>,
    /// The key and claims of the client assertion, for `PrivateKeyJWT`.
    #[serde(rename = "privateKeyJWT", default, skip_serializing_if = "Option::is_none")]
    pub private_key_jwt: Option<PrivateKeyJwt>,
    /// The ServiceAccount token sent as the client assertion, for `ServiceAccountToken`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_token: Option<ServiceAccountToken>,
}

/// A Kubernetes ServiceAccount token the operator requests (TokenRequest API,
/// `serviceaccounts/token`) for every token request and sends in place of a stored secret. The
/// ServiceAccount must be in the TokenSource's namespace, and the operator must be allowed to
/// request its tokens (`deploy/components/workload-identity`). The token lives only in memory,
/// for the one request.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountToken {
    /// The ServiceAccount, in the TokenSource's namespace.
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN))]
    pub service_account_name: String,
    /// The token's audience (`aud`): what the provider's federation expects, such as
    /// `api://AzureADTokenExchange` for Entra ID or the workload identity provider's URL for
    /// Google. Never the Kubernetes API server's own audience.
    #[schemars(length(min = 1, max = 1024), extend("x-kubernetes-validations" = [{"rule": "!self.startsWith('https://kubernetes.default.svc')", "message": "a token for the Kubernetes API itself is not sent to token endpoints"}]))]
    pub audience: String,
    /// How long the ServiceAccount token is valid: between `10m` (the API server's minimum) and
    /// `1h`. It is used once, right away.
    #[serde(default = "ServiceAccountToken::default_expiration")]
    #[schemars(regex(pattern = DURATION), length(max = 32), extend("x-kubernetes-validations" = [{"rule": "duration(self) >= duration('10m') && duration(self) <= duration('1h')", "message": "between 10m and 1h"}]))]
    pub expiration: String,
}

impl ServiceAccountToken {
    fn default_expiration() -> String {
        "10m".into()
    }
}

/// An RFC 8693 token exchange of a ServiceAccount token.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenExchange {
    /// The ServiceAccount token sent as `subject_token`.
    pub service_account_token: ServiceAccountToken,
    /// The `subject_token_type`: `urn:ietf:params:oauth:token-type:jwt` (the default) or
    /// `urn:ietf:params:oauth:token-type:id_token`, whichever the token service expects for
    /// Kubernetes tokens.
    #[serde(default = "TokenExchange::default_subject_token_type")]
    #[schemars(length(min = 1, max = 256), regex(pattern = r"^urn:[!-~]+$"))]
    pub subject_token_type: String,
    /// The `requested_token_type`, such as `urn:ietf:params:oauth:token-type:access_token`; not
    /// sent when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256), regex(pattern = r"^urn:[!-~]+$"))]
    pub requested_token_type: Option<String>,
}

impl TokenExchange {
    fn default_subject_token_type() -> String {
        "urn:ietf:params:oauth:token-type:jwt".into()
    }
}

/// OAuth 2.0 client authentication methods (the names of the IANA registry, in UpperCamelCase).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ClientAuthType {
    ClientSecretBasic,
    ClientSecretPost,
    #[serde(rename = "PrivateKeyJWT")]
    PrivateKeyJwt,
    #[serde(rename = "TLSClientAuth")]
    TlsClientAuth,
    ServiceAccountToken,
    /// A method this version of the operator does not know.
    #[serde(other)]
    #[schemars(skip)]
    Unknown,
}

/// A client assertion (RFC 7523): a JWT with `iss` and `sub` set to the client id, a fresh
/// `jti`, and `exp` one minute after `iat`, signed for every token request.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrivateKeyJwt {
    /// The Secret key holding the PEM private key (PKCS#8; PKCS#1 for RSA is accepted too).
    pub private_key_secret_ref: SecretKeyRef,
    /// The signing algorithm: `RS256` or `ES256` (P-256).
    #[serde(default)]
    pub algorithm: JwtAlgorithm,
    /// The `kid` header, when the provider wants to know which registered key signed.
    #[serde(rename = "keyID", default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub key_id: Option<String>,
    /// The `aud` claim; the token URL when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub audience: Option<String>,
}

/// JWS algorithms for client assertions.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum JwtAlgorithm {
    #[default]
    RS256,
    ES256,
    /// An algorithm this version of the operator does not know.
    #[serde(other)]
    #[schemars(skip)]
    Unknown,
}

/// How OAuth 2.0 request parameters are encoded.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum OAuth2BodyType {
    /// `application/x-www-form-urlencoded`, as RFC 6749 specifies.
    #[default]
    Form,
    /// A JSON object.
    #[serde(rename = "JSON")]
    Json,
    /// An encoding this version of the operator does not know.
    #[serde(other)]
    #[schemars(skip)]
    Unknown,
}

/// TLS settings for the token request.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// A `kubernetes.io/tls` Secret (keys `tls.crt` and `tls.key`) whose certificate is presented
    /// to the token endpoint (mutual TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate_secret_ref: Option<LocalSecretRef>,
    /// PEM CA certificates to trust for the token endpoint instead of the system roots (a private
    /// CA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<CaBundle>,
}

/// Where a CA bundle is. `type` says which member holds it.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "(self.type == 'PEM') == has(self.pem)", "message": "pem is required for type PEM, and only for it"},
    {"rule": "(self.type == 'SecretKeyRef') == has(self.secretKeyRef)", "message": "secretKeyRef is required for type SecretKeyRef, and only for it"},
    {"rule": "(self.type == 'ConfigMapKeyRef') == has(self.configMapKeyRef)", "message": "configMapKeyRef is required for type ConfigMapKeyRef, and only for it"}
]))]
pub struct CaBundle {
    /// `PEM` (inline), `SecretKeyRef` or `ConfigMapKeyRef`.
    #[serde(rename = "type")]
    pub type_: CaBundleType,
    /// The PEM certificates themselves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 262144))]
    pub pem: Option<String>,
    /// A key of a Secret in the TokenSource's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<SecretKeyRef>,
    /// A key of a ConfigMap in the TokenSource's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_key_ref: Option<ConfigMapKeyRef>,
}

/// Where a CA bundle is kept.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum CaBundleType {
    #[serde(rename = "PEM")]
    Pem,
    SecretKeyRef,
    ConfigMapKeyRef,
    /// A source this version of the operator does not know.
    #[serde(other)]
    #[schemars(skip)]
    Unknown,
}

/// A token request for endpoints that are not plain OAuth 2.0.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.method != 'GET' || !has(self.body)", "message": "a GET request has no body", "fieldPath": ".body"},
    {"rule": "self.auth.type == 'None' || !has(self.headers) || self.headers.all(h, h.name.lowerAscii() != 'authorization')", "message": "set the Authorization header or auth, not both", "fieldPath": ".headers"}
]))]
pub struct HttpSpec {
    /// The token endpoint: https (http only when the operator allows it), no user or password in
    /// the URL.
    #[schemars(length(min = 1, max = 2048), extend("x-kubernetes-validations" = [{"rule": "(self.startsWith('https://') || self.startsWith('http://')) && isURL(self) && url(self).getHostname() != '' && !self.split('/')[2].contains('@') && !self.contains(' ')", "message": "must be an absolute http(s) URL with a host and no user:password@, such as https://idp.example.com/oauth2/token"}]))]
    pub url: String,

    /// The HTTP method: `POST`, `GET` or `PUT`.
    #[serde(default)]
    pub method: HttpMethod,

    /// Request headers, each given inline or read from a Secret or ConfigMap key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), extend("x-kubernetes-validations" = [{"rule": "self.all(h, h.name.matches('^[-!#$%&\\'*+.^_`|~0-9A-Za-z]+$'))", "message": "header names are RFC 9110 tokens"}, {"rule": "self.all(h, !(h.name.lowerAscii() in ['host', 'content-length', 'content-type', 'transfer-encoding', 'connection']))", "message": "Host, Content-Length, Content-Type, Transfer-Encoding and Connection are set by the operator"}]))]
    pub headers: Vec<NamedValue>,

    /// The request body; none when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<HttpBody>,

    /// How the request is authenticated.
    #[serde(default)]
    pub auth: HttpAuth,
}

/// An HTTP method for token requests.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum HttpMethod {
    #[default]
    #[serde(rename = "POST")]
    Post,
    #[serde(rename = "GET")]
    Get,
    #[serde(rename = "PUT")]
    Put,
    /// A method this version of the operator does not know.
    #[serde(other)]
    #[schemars(skip)]
    Unknown,
}

/// A request body. `type` says which member holds it. Strings in `raw` and `json` may use
/// `{{ name }}` placeholders, filled from `values`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "(self.type == 'Raw') == has(self.raw)", "message": "raw is required for type Raw, and only for it"},
    {"rule": "(self.type == 'JSON') == has(self.json)", "message": "json is required for type JSON, and only for it"},
    {"rule": "(self.type == 'Form') == has(self.form)", "message": "form is required for type Form, and only for it"},
    {"rule": "self.type == 'Raw' || !has(self.contentType)", "message": "contentType is only for type Raw", "fieldPath": ".contentType"},
    {"rule": "self.type != 'Form' || !has(self.values)", "message": "values fill placeholders in raw and json bodies; a form takes its values directly", "fieldPath": ".values"}
]))]
pub struct HttpBody {
    /// `Raw` (sent as is, with `contentType`), `JSON` (`application/json`) or `Form`
    /// (`application/x-www-form-urlencoded`).
    #[serde(rename = "type")]
    pub type_: BodyType,

    /// A body sent as is, after placeholders are filled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 65536))]
    pub raw: Option<String>,

    /// The Content-Type of a `Raw` body; `text/plain` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 256),
        regex(pattern = r"^[-!#$%&'*+.^_`|~0-9A-Za-z]+/[-!#$%&'*+.^_`|~0-9A-Za-z]+( *;[ -~]*)?$")
    )]
    pub content_type: Option<String>,

    /// A JSON body, an object; every string in it may use placeholders.
    // `type: object`, not any JSON value: the API server's CEL sees no field without a type, and
    // refuses the CRD whose rule above tests `has(self.json)` ("undefined field 'json'").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("type" = "object", "x-kubernetes-preserve-unknown-fields" = true))]
    pub json: Option<Value>,

    /// Form fields, in order; names may repeat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub form: Option<Vec<NamedValue>>,

    /// Values for the placeholders in `raw` and `json`, each inline or read from a Secret or
    /// ConfigMap key. Names are identifiers (`customer_ref`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), extend("x-kubernetes-validations" = [{"rule": "self.all(v, v.name.matches('^[A-Za-z_][A-Za-z0-9_]*$'))", "message": "placeholder names are identifiers such as customer_ref"}]))]
    pub values: Vec<NamedValue>,
}

/// Request body types.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum BodyType {
    Raw,
    #[serde(rename = "JSON")]
    Json,
    Form,
    /// A body type this version of the operator does not know.
    #[serde(other)]
    #[schemars(skip)]
    Unknown,
}

/// How a generic token request is authenticated. `type` says which member holds the details;
/// `None` sends no credentials.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "(self.type == 'Basic') == has(self.basic)", "message": "basic is required for type Basic, and only for it"},
    {"rule": "(self.type == 'HMAC') == has(self.hmac)", "message": "hmac is required for type HMAC, and only for it"},
    {"rule": "(self.type == 'Bearer') == has(self.bearer)", "message": "bearer is required for type Bearer, and only for it"},
    {"rule": "(self.type == 'JWT') == has(self.jwt)", "message": "jwt is required for type JWT, and only for it"}
]))]
pub struct HttpAuth {
    /// `None`, `Basic`, `HMAC` or `Bearer`.
    #[serde(rename = "type")]
    pub type_: AuthType,

    /// HTTP Basic authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic: Option<BasicAuth>,

    /// An HMAC-signed `Authorization` header, computed afresh for every request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hmac: Option<HmacAuth>,

    /// `Authorization: Bearer` with a token another TokenSource holds (a chain) or one kept in a
    /// Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer: Option<BearerAuth>,

    /// `Authorization: Bearer` with a short JWT the operator signs for every request with a
    /// private key from a Secret, as GitHub Apps authenticate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtAuth>,
}

impl Default for HttpAuth {
    fn default() -> Self {
        Self { type_: AuthType::None, basic: None, hmac: None, bearer: None, jwt: None }
    }
}

/// A self-signed JWT, signed afresh for every request: `{"alg", "typ": "JWT", "kid"?}` over
/// `iss`, `sub`?, `aud`?, `iat` (now, backdated by `clockSkew`), `exp` (`iat + lifetime`) and the
/// extra `claims`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.serviceAccountKeySecretRef) ? !has(self.privateKeySecretRef) && !has(self.issuer) : has(self.privateKeySecretRef) && has(self.issuer)", "message": "set serviceAccountKeySecretRef, or privateKeySecretRef and issuer"}
]))]
pub struct JwtAuth {
    /// `RS256` (GitHub Apps, Google service accounts) or `ES256`.
    #[serde(default)]
    pub algorithm: JwtAlgorithm,
    /// The PEM private key (PKCS#8, or PKCS#1 for RSA, as GitHub hands it out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key_secret_ref: Option<SecretKeyRef>,
    /// A Google service-account JSON key file, as downloaded: its `private_key` signs, its
    /// `client_email` is `iss`, its `private_key_id` is `kid` and its `token_uri` is `aud` (unless
    /// `keyId` or `audience` say otherwise). Instead of `privateKeySecretRef` and `issuer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_key_secret_ref: Option<SecretKeyRef>,
    /// Where the JWT goes: `AuthorizationHeader` (`Authorization: Bearer`, as GitHub wants) or
    /// `AssertionParameter` (the form field `assertion`, for the OAuth 2.0 JWT-bearer grant of
    /// RFC 7523 section 2.1; the body must be a `Form` with
    /// `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`).
    #[serde(default)]
    pub send_as: JwtPlacement,
    /// The `kid` header, when the verifier needs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub key_id: Option<String>,
    /// The `iss` claim: for a GitHub App, its App ID or Client ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<ValueSource>,
    /// The `sub` claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub subject: Option<String>,
    /// The `aud` claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub audience: Option<String>,
    /// Extra string claims.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    #[schemars(length(max = 16), extend("x-kubernetes-validations" = [{"rule": "self.all(k, !(k in ['iss', 'sub', 'aud', 'iat', 'exp', 'nbf']))", "message": "iss, sub, aud, iat, exp and nbf are set by the operator"}]))]
    pub claims: std::collections::BTreeMap<String, String>,
    /// How long the JWT is valid from its `iat`, such as `9m` (GitHub accepts at most 10 minutes
    /// ahead, Google at most an hour after `iat`). Longer than `clockSkew`.
    #[serde(default = "JwtAuth::default_lifetime")]
    #[schemars(regex(pattern = DURATION), length(max = 32), extend("x-kubernetes-validations" = [{"rule": "duration(self) >= duration('10s') && duration(self) <= duration('1h')", "message": "between 10s and 1h"}]))]
    pub lifetime: String,
    /// How far `iat` is backdated, for verifiers whose clocks run behind.
    #[serde(default = "JwtAuth::default_skew")]
    #[schemars(regex(pattern = DURATION), length(max = 32), extend("x-kubernetes-validations" = [{"rule": "duration(self) <= duration('5m')", "message": "at most 5m"}]))]
    pub clock_skew: String,
}

/// Where a self-signed JWT is sent.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum JwtPlacement {
    #[default]
    AuthorizationHeader,
    AssertionParameter,
    /// A placement this version of the operator does not know.
    #[serde(other)]
    #[schemars(skip)]
    Unknown,
}

impl JwtAuth {
    fn default_lifetime() -> String {
        "9m".into()
    }
    fn default_skew() -> String {
        "60s".into()
    }
}

/// Request authentication types.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum AuthType {
    /// No credentials are sent.
    None,
    Basic,
    #[serde(rename = "HMAC")]
    Hmac,
    Bearer,
    /// A JWT the operator signs (`jwt`).
    #[serde(rename = "JWT")]
    Jwt,
    /// A type this version of the operator does not know: such a TokenSource is refused, never
    /// sent unauthenticated.
    #[serde(other)]
    #[schemars(skip)]
    Unknown,
}

/// HTTP Basic credentials.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BasicAuth {
    /// The user name (client id).
    pub username: ValueSource,
    /// The password (client secret).
    pub password_secret_ref: SecretKeyRef,
}

/// An HMAC request-signing scheme.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HmacAuth {
    /// The signing scheme. `Imburse`: `Authorization: Hmac {publicKey}:{nonce}:{epoch}:{signature}`
    /// with the signature an HMAC-SHA256 over `{publicKey}:{nonce}:{epoch}:{base64(sha256(body))}`.
    pub scheme: HmacScheme,
    /// The public key (key id).
    pub public_key: ValueSource,
    /// The private key.
    pub private_key_secret_ref: SecretKeyRef,
    /// How the private key is encoded in its Secret: `Base64` (decoded to bytes before signing,
    /// as Imburse's samples do) or `None` (its UTF-8 bytes are the key).
    #[serde(default)]
    pub private_key_encoding: KeyEncoding,
}

/// HMAC signing schemes.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum HmacScheme {
    /// Imburse's tenant API key scheme.
    Imburse,
    /// A scheme this version of the operator does not know.
    #[serde(other)]
    #[schemars(skip)]
    Unknown,
}

/// How a key is encoded in its Secret.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum KeyEncoding {
    #[default]
    Base64,
    None,
    /// An encoding this version of the operator does not know.
    #[serde(other)]
    #[schemars(skip)]
    Unknown,
}

/// Where a bearer token comes from. Set exactly one of `tokenSourceRef` and `tokenSecretRef`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{"rule": "has(self.tokenSourceRef) != has(self.tokenSecretRef)", "message": "set exactly one of tokenSourceRef and tokenSecretRef"}]))]
pub struct BearerAuth {
    /// The TokenSource, in the same namespace, whose current token authenticates this request
    /// (chained tokens). While it holds no valid token, this TokenSource waits and calls nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_source_ref: Option<TokenSourceRef>,
    /// A Secret key holding a static bearer token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret_ref: Option<SecretKeyRef>,
}

/// Where the parts of a token reply are, as JSONPath (RFC 9535) expressions such as
/// `$.accessToken`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResponseSpec {
    /// The token.
    #[serde(default = "ReplyPath::access_token")]
    pub token: ReplyPath,

    /// The token type (such as `Bearer`); not an error when the reply has none.
    #[serde(default = "ReplyPath::token_type")]
    pub token_type: ReplyPath,

    /// The granted scopes, space-separated; not an error when the reply has none.
    #[serde(default = "ReplyPath::scope")]
    pub scope: ReplyPath,

    /// When the token expires.
    #[serde(default)]
    pub expiry: ExpirySpec,

    /// Extra reply fields to copy into the target Secret, such as
    /// `{key: merchant_code, jsonPath: $.merchant_code}`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["key"]))]
    pub fields: Vec<ReplyField>,
}

impl Default for ResponseSpec {
    fn default() -> Self {
        Self {
            token: ReplyPath::access_token(),
            token_type: ReplyPath::token_type(),
            scope: ReplyPath::scope(),
            expiry: ExpirySpec::default(),
            fields: vec![],
        }
    }
}

/// A place in the reply.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplyPath {
    /// A JSONPath (RFC 9535), starting with `$`.
    #[schemars(length(min = 1, max = 1024), extend("x-kubernetes-validations" = [{"rule": "self.startsWith('$')", "message": "a JSONPath starts with $, such as $.access_token"}]))]
    pub json_path: String,
}

impl ReplyPath {
    fn at(path: &str) -> Self {
        Self { json_path: path.into() }
    }
    fn access_token() -> Self {
        Self::at("$.access_token")
    }
    fn token_type() -> Self {
        Self::at("$.token_type")
    }
    fn scope() -> Self {
        Self::at("$.scope")
    }
}

/// A reply field copied into the Secret.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{"rule": "!(self.key in ['token', 'token_type', 'expires_at', 'scope'])", "message": "token, token_type, expires_at and scope are written by the operator", "fieldPath": ".key"}]))]
pub struct ReplyField {
    /// The Secret key.
    #[schemars(length(min = 1, max = 253), regex(pattern = SECRET_KEY))]
    pub key: String,
    /// A JSONPath (RFC 9535) into the reply, starting with `$`.
    #[schemars(length(min = 1, max = 1024), extend("x-kubernetes-validations" = [{"rule": "self.startsWith('$')", "message": "a JSONPath starts with $, such as $.access_token"}]))]
    pub json_path: String,
}

/// Where a token's expiry comes from. `type` says how it is read.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.type != 'ExpiresAt' || (has(self.jsonPath) && has(self.format))", "message": "type ExpiresAt needs jsonPath and format"},
    {"rule": "self.type in ['ExpiresIn', 'ExpiresAt'] || !has(self.jsonPath)", "message": "jsonPath is for types ExpiresIn and ExpiresAt", "fieldPath": ".jsonPath"},
    {"rule": "self.type == 'ExpiresAt' || !has(self.format)", "message": "format is for type ExpiresAt", "fieldPath": ".format"},
    {"rule": "self.type == 'Auto' || !has(self.defaultLifetime)", "message": "defaultLifetime is for type Auto", "fieldPath": ".defaultLifetime"}
]))]
pub struct ExpirySpec {
    /// `Auto`: `expires_in` if the reply has it, else the token's JWT `exp` claim, else
    /// `defaultLifetime`. `ExpiresIn`: a lifetime in seconds at `jsonPath` (`$.expires_in` when
    /// unset). `ExpiresAt`: an absolute time at `jsonPath` in `format`. `JWT`: the token's `exp`
    /// claim (decoded, not verified).
    #[serde(rename = "type", default)]
    pub type_: ExpiryType,
    /// Where the lifetime or the expiry is, for `ExpiresIn` and `ExpiresAt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024), extend("x-kubernetes-validations" = [{"rule": "self.startsWith('$')", "message": "a JSONPath starts with $, such as $.access_token"}]))]
    pub json_path: Option<String>,
    /// How an `ExpiresAt` time is written: `UnixSeconds`, `UnixMilliseconds` (numbers or numeric
    /// strings, such as Imburse's `"1560514835115"`) or `RFC3339`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<ExpiryFormat>,
    /// For `Auto`: the lifetime to assume when the reply gives none, such as `1h`. Without it
    /// such a reply is an error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION), length(max = 32), extend("x-kubernetes-validations" = [{"rule": "duration(self) <= duration('8784h')", "message": "at most a year (8784h)"}]))]
    pub default_lifetime: Option<String>,
}

impl Default for ExpirySpec {
    fn default() -> Self {
        Self { type_: ExpiryType::Auto, json_path: None, format: None, default_lifetime: None }
    }
}

/// How a token's expiry is found.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ExpiryType {
    #[default]
    Auto,
    ExpiresIn,
    ExpiresAt,
    #[serde(rename = "JWT")]
    Jwt,
    /// A type this version of the operator does not know.
    #[serde(other)]
    #[schemars(skip)]
    Unknown,
}

/// How an absolute expiry is written.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ExpiryFormat {
    UnixSeconds,
    UnixMilliseconds,
    #[serde(rename = "RFC3339")]
    Rfc3339,
    /// A format this version of the operator does not know.
    #[serde(other)]
    #[schemars(skip)]
    Unknown,
}

/// When a token is renewed.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RenewalSpec {
    /// How long before expiry to renew, such as `10m` or `1h30m`. Takes precedence over
    /// `renewBeforePercentage`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION), length(max = 32), extend("x-kubernetes-validations" = [{"rule": "duration(self) <= duration('8784h')", "message": "at most a year (8784h)"}]))]
    pub renew_before: Option<String>,

    /// How much of the token's lifetime should be *left* when it is renewed, in percent (as
    /// cert-manager counts; Vault Secrets Operator's `renewalPercent` counts the elapsed part).
    /// A tenth of the renewal window is added at random per token, so tokens issued together do
    /// not renew together.
    #[serde(default = "RenewalSpec::default_percentage")]
    #[schemars(range(min = 1, max = 99))]
    pub renew_before_percentage: i32,

    /// TokenSources in one namespace that send identical requests (URL, method, headers, body,
    /// authentication and credential values) and read the reply alike share one token: one
    /// provider call per lifetime, each target Secret gets it. This also spares providers that
    /// revoke a client's older token when a new one is issued. Never across namespaces.
    #[serde(default = "RenewalSpec::share")]
    pub share_identical_requests: bool,
}

impl RenewalSpec {
    fn default_percentage() -> i32 {
        33
    }
    fn share() -> bool {
        true
    }
}

impl Default for RenewalSpec {
    fn default() -> Self {
        Self { renew_before: None, renew_before_percentage: Self::default_percentage(), share_identical_requests: true }
    }
}

/// The Secret the token is written to.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetSpec {
    /// The Secret's name, in the TokenSource's namespace. The operator creates it and refuses to
    /// take over a Secret it did not create. Cannot be changed.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = DNS_SUBDOMAIN),
        extend("x-kubernetes-validations" = [{"rule": "self == oldSelf", "message": "target.name cannot be changed; create another TokenSource"}])
    )]
    pub name: String,

    /// Who owns the Secret: `Owner` (the TokenSource; the Secret is deleted with it through its
    /// owner reference) or `Orphan` (the Secret is kept when the TokenSource is deleted).
    #[serde(default)]
    pub creation_policy: CreationPolicy,

    /// The shape of the Secret: its type, extra labels and annotations, and keys rendered from
    /// templates.
    #[serde(default)]
    pub template: SecretTemplate,

    /// Workloads to restart when the Secret gets a new token, for those that read it only at
    /// start (environment variables, `subPath` mounts). Needs the operator's rollout-restart RBAC
    /// (`deploy/components/rollout-restart`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_restart: Option<RolloutRestart>,
}

/// Restarts of workloads that consume the target Secret.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutRestart {
    /// The Deployments, StatefulSets and DaemonSets to restart, in the TokenSource's namespace.
    #[schemars(length(min = 1, max = 32))]
    pub workloads: Vec<WorkloadRef>,

    /// At most one restart per interval, such as `5m`: new tokens inside it are folded into one
    /// restart at its end.
    #[serde(default = "RolloutRestart::default_interval")]
    #[schemars(regex(pattern = DURATION), length(max = 32), extend("x-kubernetes-validations" = [{"rule": "duration(self) >= duration('10s') && duration(self) <= duration('8784h')", "message": "between 10s and a year (8784h)"}]))]
    pub min_interval: String,
}

impl RolloutRestart {
    fn default_interval() -> String {
        "5m".into()
    }
}

/// Workloads of one kind, by name or by label selector.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.name) != has(self.selector)", "message": "set exactly one of name and selector"}
]))]
pub struct WorkloadRef {
    pub kind: WorkloadKind,
    /// The workload's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN))]
    pub name: Option<String>,
    /// Every workload of this kind whose labels match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

/// A label selector: `matchLabels` (all must match).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    #[schemars(length(min = 1, max = 64))]
    pub match_labels: std::collections::BTreeMap<String, String>,
}

/// A kind of workload with a pod template.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
    DaemonSet,
    /// A kind this version of the operator does not know.
    #[serde(other)]
    #[schemars(skip)]
    Unknown,
}

/// Who owns the target Secret.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum CreationPolicy {
    /// The TokenSource owns the Secret; it is garbage-collected with it.
    #[default]
    Owner,
    /// The Secret is kept when the TokenSource is deleted.
    Orphan,
    /// A policy this version of the operator does not know.
    #[serde(other)]
    #[schemars(skip)]
    Unknown,
}

/// The shape of the target Secret.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.mergePolicy != 'Replace' || (has(self.data) && size(self.data) > 0)", "message": "mergePolicy Replace needs data: it writes only the template's keys"}
]))]
pub struct SecretTemplate {
    /// The Secret's type: `Opaque`, `kubernetes.io/dockerconfigjson`, `kubernetes.io/dockercfg`,
    /// `kubernetes.io/basic-auth`, `kubernetes.io/ssh-auth`, `kubernetes.io/tls`, or a type of
    /// your own outside `kubernetes.io` and `k8s.io` (such as `example.com/token`); other
    /// Kubernetes types make a core controller act on the Secret. Cannot be changed.
    #[serde(rename = "type", default = "SecretTemplate::opaque")]
    #[schemars(
        length(min = 1, max = 253),
        extend("x-kubernetes-validations" = [
            {"rule": "self == oldSelf", "message": "the Secret type cannot be changed; create another TokenSource"},
            {"rule": "self in ['Opaque', 'kubernetes.io/dockerconfigjson', 'kubernetes.io/dockercfg', 'kubernetes.io/basic-auth', 'kubernetes.io/ssh-auth', 'kubernetes.io/tls'] || !self.matches('^([^/]*[.])?(kubernetes|k8s)[.]io/')", "message": "this Secret type is reserved: use Opaque, kubernetes.io/dockerconfigjson, kubernetes.io/dockercfg, kubernetes.io/basic-auth, kubernetes.io/ssh-auth, kubernetes.io/tls or a type outside kubernetes.io and k8s.io"}
        ])
    )]
    pub type_: String,

    /// Extra labels and annotations for the Secret. Keys under `kubernetes.io/` and `k8s.io/`
    /// (and their subdomains) and `tokensource.dev/` are reserved.
    #[serde(default, skip_serializing_if = "TemplateMetadata::is_empty")]
    pub metadata: TemplateMetadata,

    /// The template language version: `v1` (MiniJinja, Jinja2 syntax; variables `token`,
    /// `token_type`, `expires_at` (RFC 3339), `expires_at_unix`, `scope`, and `response`, the
    /// whole JSON reply; filters include `b64encode`, `tojson` and `urlencode`).
    #[serde(default)]
    pub engine_version: EngineVersion,

    /// `Merge`: the Secret holds `token`, `token_type`, `expires_at`, `scope`, the copied
    /// `response.fields` and `data`. `Replace`: it holds only `data` (such a TokenSource cannot be
    /// the upstream of a chain, which reads `token`).
    #[serde(default)]
    pub merge_policy: MergePolicy,

    /// Secret keys rendered from templates, such as `authorization: "Bearer {{ token }}"`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(
        extend("maxProperties" = 32),
        extend("x-kubernetes-validations" = [
            {"rule": "self.all(k, k.matches('^[-._a-zA-Z0-9]+$') && size(k) <= 253)", "message": "keys must be Secret keys: letters, digits, '-', '_' and '.'"},
            {"rule": "self.all(k, !(k in ['token', 'token_type', 'expires_at', 'scope']))", "message": "token, token_type, expires_at and scope are written by the operator"}
        ]),
        extend("additionalProperties" = {"type": "string", "maxLength": 65536})
    )]
    pub data: BTreeMap<String, String>,
}

impl SecretTemplate {
    fn opaque() -> String {
        "Opaque".into()
    }
}

impl Default for SecretTemplate {
    fn default() -> Self {
        Self {
            type_: Self::opaque(),
            metadata: TemplateMetadata::default(),
            engine_version: EngineVersion::default(),
            merge_policy: MergePolicy::default(),
            data: BTreeMap::new(),
        }
    }
}

/// Extra labels and annotations. Keys under `kubernetes.io/` and `k8s.io/` (and their subdomains,
/// such as `app.kubernetes.io/`) are reserved: Kubernetes' own controllers act on them (the
/// ServiceAccount token controller on `kubernetes.io/service-account.name`). So are the
/// operator's own, under `tokensource.dev/`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateMetadata {
    /// Extra labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(
        extend("maxProperties" = 64),
        extend("additionalProperties" = {"type": "string", "maxLength": 63}),
        extend("x-kubernetes-validations" = [{"rule": RESERVED_METADATA_RULE, "message": RESERVED_METADATA_MESSAGE}])
    )]
    pub labels: BTreeMap<String, String>,
    /// Extra annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(
        extend("maxProperties" = 64),
        extend("additionalProperties" = {"type": "string", "maxLength": 4096}),
        extend("x-kubernetes-validations" = [{"rule": RESERVED_METADATA_RULE, "message": RESERVED_METADATA_MESSAGE}])
    )]
    pub annotations: BTreeMap<String, String>,
}

/// The CEL rule that refuses reserved label and annotation keys (as [`crate::secret`] does).
const RESERVED_METADATA_RULE: &str =
    "self.all(k, !k.matches('^([^/]*[.])?(kubernetes|k8s)[.]io/') && !k.startsWith('tokensource.dev/'))";
const RESERVED_METADATA_MESSAGE: &str = "keys under kubernetes.io/, k8s.io/ (and their subdomains) and tokensource.dev/ are reserved: Kubernetes' controllers act on them, or the operator writes them";

impl TemplateMetadata {
    fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.annotations.is_empty()
    }
}

/// Template language versions.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum EngineVersion {
    #[default]
    #[serde(rename = "v1")]
    V1,
    /// A version this version of the operator does not know.
    #[serde(other)]
    #[schemars(skip)]
    Unknown,
}

/// How the template's keys combine with the operator's.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum MergePolicy {
    #[default]
    Merge,
    Replace,
    /// A policy this version of the operator does not know.
    #[serde(other)]
    #[schemars(skip)]
    Unknown,
}

/// The observed state of a TokenSource.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenSourceStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub observed_generation: Option<i64>,

    /// `Ready`: the target Secret holds a valid token. `Degraded`: the last attempt to get a token
    /// failed (the Secret may still hold a valid one); its reason and message say why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,

    /// When the token in the Secret expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration_time: Option<Time>,

    /// When the operator will next ask for a token: the scheduled renewal (it starts by this
    /// whole second), or the next retry after a failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_time: Option<Time>,

    /// When the token in the Secret was obtained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_renewal_time: Option<Time>,

    /// The token type the endpoint reported, such as `Bearer` (at most 64 bytes; a longer one is
    /// cut and ends in `…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub token_type: Option<String>,

    /// The scopes the endpoint granted: the first 64, each at most 256 bytes (a longer one is cut
    /// and ends in `…`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 256)))]
    pub scopes: Vec<String>,

    /// Consecutive failed attempts to get a token since the last success.
    #[serde(default, skip_serializing_if = "is_zero")]
    #[schemars(range(min = 0))]
    pub failed_renewal_attempts: i32,

    /// When the last attempt failed; the `Degraded` condition says why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure_time: Option<Time>,

    /// The value of the `tokensource.dev/refresh-requested-at` annotation last acted on: a new
    /// value asks for one new token, even while the current one is valid or during a backoff.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub last_refresh_request: Option<String>,

    /// Since when a restart of `target.rolloutRestart.workloads` is owed for a new token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_restart_pending_since: Option<Time>,

    /// When the workloads were last restarted for a new token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rollout_restart_time: Option<Time>,
}

/// The annotation that asks for a new token now: set it to a new RFC 3339 time (`kubectl
/// tokensource refresh` does), and the operator requests one token for that value.
pub const REFRESH_REQUESTED_AT_ANNOTATION: &str = "tokensource.dev/refresh-requested-at";

impl TokenSource {
    /// The manual refresh asked for: the annotation's value, if set.
    pub fn refresh_requested(&self) -> Option<&str> {
        let requested = self.metadata.annotations.as_ref()?.get(REFRESH_REQUESTED_AT_ANNOTATION)?.trim();
        (!requested.is_empty()).then_some(requested)
    }
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

/// `metav1.Condition` with the checks the Kubernetes API applies to it (as controller-gen writes
/// them), listed by type.
fn conditions_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut item = generator.subschema_for::<Condition>().to_value();
    if let Some(reference) = item.get("$ref").and_then(Value::as_str).map(String::from) {
        let name = reference.rsplit('/').next().unwrap_or_default().to_string();
        item = generator.definitions().get(&name).cloned().unwrap_or(item);
    }
    let checks = json!({
        "type": {"maxLength": 316, "pattern": r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"},
        "status": {"enum": ["True", "False", "Unknown"]},
        "observedGeneration": {"minimum": 0},
        "reason": {"minLength": 1, "maxLength": 1024, "pattern": r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"},
        "message": {"maxLength": 32768},
        "lastTransitionTime": {"type": "string", "format": "date-time"},
    });
    if let (Some(props), Some(checks)) = (item.get_mut("properties").and_then(Value::as_object_mut), checks.as_object())
    {
        for (field, extra) in checks {
            let Some(prop) = props.get_mut(field).and_then(Value::as_object_mut) else { continue };
            prop.remove("$ref");
            prop.remove("allOf");
            for (k, v) in extra.as_object().into_iter().flatten() {
                prop.insert(k.clone(), v.clone());
            }
        }
    }
    let schema = json!({
        "type": "array",
        "maxItems": 8,
        "items": item,
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
    });
    schemars::Schema::try_from(schema).unwrap_or_default()
}

impl TokenSourceSpec {
    /// The TokenSource this one takes its bearer token from, if any.
    pub fn upstream(&self) -> Option<&str> {
        let http = self.http.as_ref()?;
        if http.auth.type_ != AuthType::Bearer {
            return None;
        }
        http.auth.bearer.as_ref()?.token_source_ref.as_ref().map(|r| r.name.as_str())
    }

    /// Named values given inline whose names say they are secrets (`X-Api-Key`, `password`, a
    /// `client_secret` placeholder...): they belong in a Secret, read with `valueFrom`. Returned
    /// as `field name`, for a warning.
    pub fn inline_secrets(&self) -> Vec<String> {
        const SECRET_WORDS: [&str; 7] = ["secret", "password", "passwd", "apikey", "api-key", "api_key", "private"];
        let looks_secret = |n: &str| {
            let n = n.to_ascii_lowercase();
            SECRET_WORDS.iter().any(|w| n.contains(w)) || n == "token" || n.ends_with("-token") || n.ends_with("_token")
        };
        let mut named: Vec<(&str, &NamedValue)> = vec![];
        if let Some(o) = &self.oauth2 {
            named.extend(o.parameters.iter().map(|v| ("oauth2.parameters", v)));
            named.extend(o.headers.iter().map(|v| ("oauth2.headers", v)));
        }
        if let Some(h) = &self.http {
            named.extend(h.headers.iter().map(|v| ("http.headers", v)));
            if let Some(b) = &h.body {
                named.extend(b.values.iter().map(|v| ("http.body.values", v)));
                named.extend(b.form.iter().flatten().map(|v| ("http.body.form", v)));
            }
        }
        named
            .into_iter()
            .filter(|(_, v)| v.value.is_some() && looks_secret(&v.name))
            .map(|(field, v)| format!("{field} {:?}", v.name))
            .collect()
    }

    /// Every value source of the spec, with the field it belongs to.
    fn value_sources(&self) -> Vec<ValueSource> {
        let mut out = vec![];
        if let Some(o) = &self.oauth2 {
            out.extend(o.client_id.clone());
            out.extend(o.parameters.iter().chain(&o.headers).map(NamedValue::source));
        }
        if let Some(h) = &self.http {
            out.extend(h.headers.iter().map(NamedValue::source));
            if let Some(b) = &h.body {
                out.extend(b.values.iter().chain(b.form.iter().flatten()).map(NamedValue::source));
            }
            if let Some(b) = &h.auth.basic {
                out.push(b.username.clone());
            }
            if let Some(m) = &h.auth.hmac {
                out.push(m.public_key.clone());
            }
            if let Some(issuer) = h.auth.jwt.as_ref().and_then(|j| j.issuer.clone()) {
                out.push(issuer);
            }
        }
        out
    }

    /// Every Secret key the spec reads, the client certificate included.
    pub fn secret_refs(&self) -> Vec<SecretKeyRef> {
        let mut out: Vec<SecretKeyRef> =
            self.value_sources().into_iter().filter_map(|v| v.value_from.and_then(|f| f.secret_key_ref)).collect();
        if let Some(auth) = self.oauth2.as_ref().and_then(|o| o.client_auth.as_ref()) {
            out.extend(auth.client_secret_ref.clone());
            out.extend(auth.private_key_jwt.as_ref().map(|j| j.private_key_secret_ref.clone()));
        }
        if let Some(h) = &self.http {
            out.extend(h.auth.basic.as_ref().map(|b| b.password_secret_ref.clone()));
            out.extend(h.auth.hmac.as_ref().map(|m| m.private_key_secret_ref.clone()));
            out.extend(h.auth.bearer.as_ref().and_then(|b| b.token_secret_ref.clone()));
            if let Some(j) = &h.auth.jwt {
                out.extend(j.private_key_secret_ref.clone());
                out.extend(j.service_account_key_secret_ref.clone());
            }
        }
        if let Some(tls) = &self.tls {
            out.extend(tls.ca_bundle.as_ref().and_then(|c| c.secret_key_ref.clone()));
        }
        if let Some((crt, key)) = self.client_certificate_refs() {
            out.push(crt);
            out.push(key);
        }
        out.sort();
        out.dedup();
        out
    }

    /// The ServiceAccount token each token request needs, if any.
    pub fn service_account_token(&self) -> Option<&ServiceAccountToken> {
        let o = self.oauth2.as_ref()?;
        match o.grant_type {
            GrantType::TokenExchange => o.token_exchange.as_ref().map(|t| &t.service_account_token),
            _ => o.client_auth.as_ref()?.service_account_token.as_ref(),
        }
    }

    /// Every ConfigMap key the spec reads.
    pub fn config_map_refs(&self) -> Vec<ConfigMapKeyRef> {
        let mut out: Vec<ConfigMapKeyRef> =
            self.value_sources().into_iter().filter_map(|v| v.value_from.and_then(|f| f.config_map_key_ref)).collect();
        if let Some(tls) = &self.tls {
            out.extend(tls.ca_bundle.as_ref().and_then(|c| c.config_map_key_ref.clone()));
        }
        out.sort();
        out.dedup();
        out
    }

    /// The Secret keys of the client certificate, when mutual TLS is configured.
    pub fn client_certificate_refs(&self) -> Option<(SecretKeyRef, SecretKeyRef)> {
        let name = &self.tls.as_ref()?.client_certificate_secret_ref.as_ref()?.name;
        Some((
            SecretKeyRef { name: name.clone(), key: "tls.crt".into() },
            SecretKeyRef { name: name.clone(), key: "tls.key".into() },
        ))
    }
}

/// The CRD, with the schema cleaned of what the generator adds but Kubernetes conventions do not
/// want: `nullable` on optional fields and `null` among enum values (an absent field is simply
/// absent; the API server drops `null`s of fields that are not nullable), and descriptions
/// reflowed (doc comments break lines at 100 columns; `kubectl explain` wraps them itself).
pub fn crd() -> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    use kube::CustomResourceExt;
    let mut crd = TokenSource::crd();
    for version in &mut crd.spec.versions {
        if let Some(schema) = version.schema.as_mut().and_then(|s| s.open_api_v3_schema.as_mut())
            && let Ok(mut v) = serde_json::to_value(&*schema)
        {
            clean(&mut v);
            if let Ok(cleaned) = serde_json::from_value(v) {
                *schema = cleaned;
            }
        }
    }
    crd
}

fn clean(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if map.get("nullable") == Some(&Value::Bool(true)) {
                map.remove("nullable");
            }
            if let Some(Value::Array(values)) = map.get_mut("enum") {
                values.retain(|e| !e.is_null());
            }
            if let Some(Value::String(d)) = map.get_mut("description") {
                *d = reflow(d);
            }
            map.values_mut().for_each(clean);
        }
        Value::Array(items) => items.iter_mut().for_each(clean),
        _ => {}
    }
}

/// Joins the lines of each paragraph; paragraphs stay apart.
fn reflow(text: &str) -> String {
    text.split("\n\n")
        .map(|p| p.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// The CRD as YAML, as `tokensource-operator crd` prints it and `crds/` holds it.
pub fn crd_yaml() -> Result<String, serde_saphyr::SerializeError> {
    serde_saphyr::to_string(&crd())
}
