//! The `TokenSource` custom resource (`tokensource.dev/v1alpha1`).
//!
//! Every field's doc comment becomes its description in the CRD, which is what `kubectl explain`
//! shows: write them for users.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of the operator's resources.
pub const GROUP: &str = "tokensource.dev";

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
    printcolumn = r#"{"name":"Secret","type":"string","jsonPath":".spec.target.secretName","priority":1,"description":"The target Secret"}"#,
    printcolumn = r#"{"name":"Expires","type":"string","format":"date-time","jsonPath":".status.expiresAt","description":"When the current token expires"}"#,
    printcolumn = r#"{"name":"Next Refresh","type":"string","format":"date-time","jsonPath":".status.nextRefreshAt","description":"When the operator will fetch the next token"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason","priority":1,"description":"Why the TokenSource is or is not ready"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.oauth2) != has(self.http)", "message": "set exactly one of oauth2 and http"},
    {"rule": "!has(self.oauth2) || !has(self.oauth2.clientAuthentication) || self.oauth2.clientAuthentication != 'tlsClientAuth' || (has(self.tls) && has(self.tls.clientCertificateSecretRef))", "message": "clientAuthentication tlsClientAuth needs tls.clientCertificateSecretRef"}
]))]
pub struct TokenSourceSpec {
    /// An OAuth 2.0 client-credentials token request (RFC 6749 section 4.4). Set exactly one of
    /// `oauth2` and `http`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth2: Option<OAuth2Spec>,

    /// A token request for endpoints that are not plain OAuth 2.0: any URL, method, headers and
    /// body, with Basic, HMAC-signed or chained bearer authentication. Set exactly one of `oauth2`
    /// and `http`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSpec>,

    /// Where the token, its lifetime and any extra fields are in the endpoint's JSON reply.
    /// Without it, the RFC 6749 fields are read: `access_token`, `token_type`, `expires_in`, `scope`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<ResponseSpec>,

    /// When to renew the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh: Option<RefreshSpec>,

    /// TLS for the token request: a client certificate (mutual TLS) and a CA bundle for private CAs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,

    /// The Secret the token is written to.
    pub target: TargetSpec,
}

/// A value given inline or read from a key of a Secret in the TokenSource's namespace. Set
/// exactly one of `value` and `secretKeyRef`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{"rule": "has(self.value) != has(self.secretKeyRef)", "message": "set exactly one of value and secretKeyRef"}]))]
pub struct ValueSource {
    /// The value itself. Use it for identifiers that are not secret; keep secrets in a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,

    /// A key of a Secret in the TokenSource's namespace that holds the value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<SecretKeyRef>,
}

/// A key of a Secret in the same namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key within the Secret's data.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// An OAuth 2.0 client-credentials token request.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "(has(self.clientAuthentication) && self.clientAuthentication in ['privateKeyJwt', 'tlsClientAuth']) || has(self.clientSecret)", "message": "clientSecret is required for basic and body authentication"},
    {"rule": "!has(self.clientAuthentication) || self.clientAuthentication != 'privateKeyJwt' || has(self.privateKeyJwt)", "message": "clientAuthentication privateKeyJwt needs privateKeyJwt"}
]))]
pub struct OAuth2Spec {
    /// The token endpoint, for example `https://app.podero.com/oauth2/token/`.
    #[schemars(length(min = 1), regex(pattern = r"^https?://"))]
    pub token_url: String,

    /// The client identifier.
    pub client_id: ValueSource,

    /// The client secret, for `basic` and `body` authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<ValueSource>,

    /// How the client authenticates: `basic` sends `Authorization: Basic base64(id:secret)`
    /// (RFC 6749 section 2.3.1, the default); `body` sends `client_id` and `client_secret` as
    /// request parameters; `privateKeyJwt` sends a signed client assertion (RFC 7523, see
    /// `privateKeyJwt`); `tlsClientAuth` relies on the client certificate in `spec.tls` (RFC 8705)
    /// and sends only `client_id`.
    #[serde(default)]
    pub client_authentication: ClientAuthentication,

    /// The key and claims of the client assertion for `clientAuthentication: privateKeyJwt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key_jwt: Option<PrivateKeyJwt>,

    /// How the request parameters are encoded: `form` (`application/x-www-form-urlencoded`, as
    /// RFC 6749 requires, the default) or `json` (a JSON object, as Podero expects).
    #[serde(default)]
    pub request_format: RequestFormat,

    /// Scopes to request, sent space-separated in the `scope` parameter.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,

    /// Extra request parameters, such as `audience` or `resource`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parameters: BTreeMap<String, String>,

    /// Extra HTTP headers, such as `Cache-Control: no-cache`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

/// How an OAuth 2.0 client authenticates to the token endpoint.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ClientAuthentication {
    /// HTTP Basic authentication with the client id and secret (RFC 6749 section 2.3.1).
    #[default]
    Basic,
    /// `client_id` and `client_secret` in the request body.
    Body,
    /// A JWT client assertion signed with the client's private key (RFC 7523 section 2.2).
    PrivateKeyJwt,
    /// Mutual TLS with the client certificate from `spec.tls` (RFC 8705 section 2).
    TlsClientAuth,
}

/// A client assertion (RFC 7523): a short-lived JWT with `iss` and `sub` set to the client id, a
/// fresh `jti`, and `exp` one minute after `iat`, signed for every token request.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrivateKeyJwt {
    /// The Secret key holding the PEM private key (PKCS#8; PKCS#1 for RSA is accepted too).
    pub private_key: SecretKeyRef,
    /// The signing algorithm: `RS256` (the default) or `ES256` (P-256).
    #[serde(default)]
    pub algorithm: JwtAlgorithm,
    /// The `kid` header, when the provider wants to know which registered key signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// The `aud` claim; the token URL by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
}

/// JWS algorithms for client assertions.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum JwtAlgorithm {
    #[default]
    RS256,
    ES256,
}

/// TLS settings for the token request.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// A `kubernetes.io/tls` Secret (keys `tls.crt` and `tls.key`) whose certificate is presented to
    /// the token endpoint (mutual TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate_secret_ref: Option<LocalRef>,
    /// PEM CA certificates to trust for the token endpoint, instead of the system roots (a private
    /// CA). From a Secret key or a ConfigMap key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<CaBundle>,
}

/// Where a CA bundle is. Set exactly one of `secretKeyRef` and `configMapKeyRef`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{"rule": "has(self.secretKeyRef) != has(self.configMapKeyRef)", "message": "set exactly one of secretKeyRef and configMapKeyRef"}]))]
pub struct CaBundle {
    /// A key of a Secret in the TokenSource's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<SecretKeyRef>,
    /// A key of a ConfigMap in the TokenSource's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_key_ref: Option<SecretKeyRef>,
}

/// How token request parameters are encoded.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum RequestFormat {
    /// `application/x-www-form-urlencoded`, as RFC 6749 specifies.
    #[default]
    Form,
    /// A JSON object.
    Json,
}

/// A token request for endpoints that are not plain OAuth 2.0.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpSpec {
    /// The token endpoint.
    #[schemars(length(min = 1), regex(pattern = r"^https?://"))]
    pub url: String,

    /// The HTTP method; `POST` by default.
    #[serde(default)]
    pub method: HttpMethod,

    /// Request headers, each given inline or from a Secret key.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, ValueSource>,

    /// The request body; none by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<HttpBody>,

    /// How the request is authenticated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<HttpAuth>,
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
}

/// A request body. Set at most one of `raw`, `json` and `form`. Strings in `raw` and `json` may
/// use `{{ name }}` placeholders, filled from `values`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{"rule": "(has(self.raw) ? 1 : 0) + (has(self.json) ? 1 : 0) + (has(self.form) ? 1 : 0) <= 1", "message": "set at most one of raw, json and form"}]))]
pub struct HttpBody {
    /// A body sent as is (after placeholders are filled), with `contentType`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<String>,

    /// A JSON body; every string in it may use placeholders. Sent as `application/json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
    pub json: Option<serde_json::Value>,

    /// Form fields, sent as `application/x-www-form-urlencoded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub form: Option<BTreeMap<String, ValueSource>>,

    /// Values for the placeholders in `raw` and `json`, each inline or from a Secret key.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub values: BTreeMap<String, ValueSource>,

    /// The Content-Type of a `raw` body; `text/plain` by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
}

/// How a generic token request is authenticated. Set at most one of `basic`, `hmac` and `bearer`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{"rule": "(has(self.basic) ? 1 : 0) + (has(self.hmac) ? 1 : 0) + (has(self.bearer) ? 1 : 0) <= 1", "message": "set at most one of basic, hmac and bearer"}]))]
pub struct HttpAuth {
    /// HTTP Basic authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic: Option<BasicAuth>,

    /// An HMAC-signed `Authorization` header, computed afresh for every request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hmac: Option<HmacAuth>,

    /// `Authorization: Bearer` with the token another TokenSource currently holds (chained tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer: Option<BearerAuth>,
}

/// HTTP Basic credentials.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BasicAuth {
    /// The user name (client id).
    pub username: ValueSource,
    /// The password (client secret).
    pub password: ValueSource,
}

/// An HMAC request-signing scheme.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HmacAuth {
    /// The signing scheme. `imburse`: `Authorization: Hmac {publicKey}:{nonce}:{epoch}:{signature}`
    /// with the signature an HMAC-SHA256 over `{publicKey}:{nonce}:{epoch}:{base64(sha256(body))}`.
    pub scheme: HmacScheme,
    /// The public key (key id).
    pub public_key: ValueSource,
    /// The private key.
    pub private_key: ValueSource,
    /// How the private key is encoded: `base64` (decoded to bytes before signing, as Imburse's
    /// samples do; the default) or `raw` (its UTF-8 bytes are the key).
    #[serde(default)]
    pub private_key_encoding: KeyEncoding,
}

/// HMAC signing schemes.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum HmacScheme {
    /// Imburse's tenant API key scheme.
    Imburse,
}

/// How a key is encoded in its Secret.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum KeyEncoding {
    #[default]
    Base64,
    Raw,
}

/// A bearer token taken from another TokenSource.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BearerAuth {
    /// The TokenSource, in the same namespace, whose current token authenticates this request.
    pub token_source_ref: LocalRef,
}

/// A reference to an object in the same namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalRef {
    /// The object's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Where the parts of a token reply are, as JSONPath (RFC 9535) expressions such as
/// `$.accessToken`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResponseSpec {
    /// The token; `$.access_token` by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_path: Option<String>,

    /// The token type; `$.token_type` by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_type_path: Option<String>,

    /// The granted scopes; `$.scope` by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope_path: Option<String>,

    /// A relative lifetime in seconds (a number or a numeric string); `$.expires_in` by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_path: Option<String>,

    /// An absolute expiry, read with `expiresAtFormat`. Takes precedence over `expiresInPath`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_path: Option<String>,

    /// How the absolute expiry is written: `unixSeconds`, `unixMilliseconds` (numbers or numeric
    /// strings, such as Imburse's `"1560514835115"`) or `rfc3339`. Default: `rfc3339` for
    /// strings that are not numbers, otherwise `unixSeconds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_format: Option<ExpiryFormat>,

    /// Extra reply fields to copy into the target Secret: Secret key to JSONPath, for example
    /// `merchant_code: $.merchant_code`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, String>,
}

/// How an absolute expiry is written.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ExpiryFormat {
    UnixSeconds,
    UnixMilliseconds,
    Rfc3339,
}

/// When a token is renewed. Set at most one of `renewBefore` and `renewBeforePercentage`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{"rule": "!(has(self.renewBefore) && has(self.renewBeforePercentage))", "message": "set at most one of renewBefore and renewBeforePercentage"}]))]
pub struct RefreshSpec {
    /// How long before expiry to renew, as a duration such as `10m` or `1h30m`. Default: when a
    /// third of the token's lifetime is left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub renew_before: Option<String>,

    /// How much of the lifetime should be left when the token is renewed, in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 99))]
    pub renew_before_percentage: Option<u8>,

    /// The lifetime to assume when the reply gives none (no `expires_in`, no absolute expiry,
    /// and the token is not a JWT with an `exp` claim), such as `1h`. Without it such a
    /// token is an error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub default_lifetime: Option<String>,
}

/// The Secret the token is written to.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetSpec {
    /// The Secret's name, in the TokenSource's namespace. The operator creates it and refuses to
    /// take over a Secret it did not create.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub secret_name: String,

    /// What happens to the Secret when the TokenSource is deleted: `Delete` (the default; the
    /// Secret is owned by the TokenSource and garbage-collected) or `Retain`.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// The Secret's type; `Opaque` by default. For `kubernetes.io/dockerconfigjson`, render the
    /// `.dockerconfigjson` key with a template.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,

    /// Extra Secret keys rendered from templates (MiniJinja, Jinja2 syntax) over the token
    /// reply. Variables: `token`, `token_type`, `expires_at` (RFC 3339), `expires_at_unix`,
    /// `scope`, `response` (the whole JSON reply). Filters include `b64encode` and `tojson`.
    /// Example: `authorization: "Bearer {{ token }}"`. A key here replaces a default key of the
    /// same name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub templates: BTreeMap<String, String>,

    /// Extra labels for the Secret.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,

    /// Extra annotations for the Secret.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// What happens to the target Secret when its TokenSource is deleted.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    /// The Secret is deleted with the TokenSource.
    #[default]
    Delete,
    /// The Secret is kept.
    Retain,
}

/// The observed state of a TokenSource.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenSourceStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready`: the target Secret holds a valid token. `Degraded`: the last attempt to get a token
    /// failed (the Secret may still hold a valid one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// When the token in the Secret expires (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,

    /// When the token in the Secret was obtained (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refreshed_at: Option<String>,

    /// When the operator will next ask for a token (RFC 3339): the scheduled renewal, or the next
    /// retry after a failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_refresh_at: Option<String>,

    /// The token type the endpoint reported, such as `Bearer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_type: Option<String>,

    /// The scopes the endpoint granted, space-separated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<String>,

    /// Consecutive failed attempts since the last success.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failures: u32,

    /// The most recent failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<Failure>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A status condition, as the Kubernetes API conventions define it.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// The condition type, such as `Ready`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// A PascalCase word for why the condition is as it is.
    pub reason: String,
    /// A human-readable explanation.
    #[serde(default)]
    pub message: String,
    /// When `status` last changed (RFC 3339).
    pub last_transition_time: String,
    /// The generation the condition was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// A failed attempt to obtain a token.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Failure {
    /// When it happened (RFC 3339).
    pub time: String,
    /// A PascalCase word for the kind of failure, such as `ProviderRejected`.
    pub reason: String,
    /// What went wrong, including what the token endpoint answered. Never holds a credential or token.
    pub message: String,
}

impl TokenSourceSpec {
    /// The TokenSources this one takes its bearer token from.
    pub fn upstream(&self) -> Option<&str> {
        self.http
            .as_ref()
            .and_then(|h| h.auth.as_ref())
            .and_then(|a| a.bearer.as_ref())
            .map(|b| b.token_source_ref.name.as_str())
    }

    /// Every Secret key the spec reads credentials from, the client certificate included.
    pub fn secret_refs(&self) -> Vec<SecretKeyRef> {
        let mut sources: Vec<&ValueSource> = vec![];
        let mut refs: Vec<&SecretKeyRef> = vec![];
        if let Some(o) = &self.oauth2 {
            sources.push(&o.client_id);
            sources.extend(&o.client_secret);
            refs.extend(o.private_key_jwt.as_ref().map(|j| &j.private_key));
        }
        if let Some(tls) = &self.tls {
            refs.extend(tls.ca_bundle.as_ref().and_then(|c| c.secret_key_ref.as_ref()));
        }
        if let Some(h) = &self.http {
            sources.extend(h.headers.values());
            if let Some(b) = &h.body {
                sources.extend(b.values.values());
                if let Some(f) = &b.form {
                    sources.extend(f.values());
                }
            }
            if let Some(a) = &h.auth {
                if let Some(b) = &a.basic {
                    sources.push(&b.username);
                    sources.push(&b.password);
                }
                if let Some(m) = &a.hmac {
                    sources.push(&m.public_key);
                    sources.push(&m.private_key);
                }
            }
        }
        refs.extend(sources.into_iter().filter_map(|s| s.secret_key_ref.as_ref()));
        let mut out: Vec<SecretKeyRef> = refs.into_iter().cloned().collect();
        if let Some((crt, key)) = self.client_certificate_refs() {
            out.push(crt);
            out.push(key);
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

/// The CRD as YAML, as `tokensource-operator crd` prints it and `crds/` holds it.
pub fn crd_yaml() -> Result<String, serde_saphyr::SerializeError> {
    use kube::CustomResourceExt;
    serde_saphyr::to_string(&TokenSource::crd())
}
