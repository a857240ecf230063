//! What goes into the target Secret, and what an existing one says about the token it holds.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Resource;
use kube::api::ObjectMeta;
use serde_json::json;

use crate::crd::{DeletionPolicy, TokenSource};
use crate::error::Error;
use crate::response::Token;

pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "tokensource-operator";
pub const NAME_LABEL: &str = "tokensource.dev/name";
pub const FINGERPRINT_ANNOTATION: &str = "tokensource.dev/fingerprint";
pub const EXPIRES_AT_ANNOTATION: &str = "tokensource.dev/expires-at";
pub const REFRESHED_AT_ANNOTATION: &str = "tokensource.dev/refreshed-at";

/// The default keys of the target Secret.
pub const TOKEN_KEY: &str = "token";
pub const TOKEN_TYPE_KEY: &str = "token_type";
pub const EXPIRES_AT_KEY: &str = "expires_at";
pub const SCOPE_KEY: &str = "scope";

/// What an existing target Secret says.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stored {
    /// The TokenSource named in the Secret's label, if the operator manages it.
    pub owner: Option<String>,
    pub fingerprint: Option<String>,
    pub expires_at: Option<Timestamp>,
    pub refreshed_at: Option<Timestamp>,
    pub has_token: bool,
    pub token_type: Option<String>,
    pub scope: Option<String>,
}

impl Stored {
    pub fn of(secret: &Secret) -> Self {
        let labels = secret.metadata.labels.as_ref();
        let annotations = secret.metadata.annotations.as_ref();
        let managed = labels.and_then(|l| l.get(MANAGED_BY_LABEL)).is_some_and(|v| v == MANAGED_BY);
        let ts = |k: &str| annotations.and_then(|a| a.get(k)).and_then(|v| v.parse::<Timestamp>().ok());
        Self {
            owner: if managed { labels.and_then(|l| l.get(NAME_LABEL)).cloned() } else { None },
            fingerprint: annotations.and_then(|a| a.get(FINGERPRINT_ANNOTATION)).cloned(),
            expires_at: ts(EXPIRES_AT_ANNOTATION),
            refreshed_at: ts(REFRESHED_AT_ANNOTATION),
            has_token: secret.data.as_ref().is_some_and(|d| d.get(TOKEN_KEY).is_some_and(|t| !t.0.is_empty())),
            token_type: text(secret, TOKEN_TYPE_KEY),
            scope: text(secret, SCOPE_KEY),
        }
    }

    /// What the operator writes for a new token from `owner`'s request with `fingerprint`.
    pub fn issued(owner: String, fingerprint: String, token: &Token) -> Self {
        Self {
            owner: Some(owner),
            fingerprint: Some(fingerprint),
            expires_at: Some(token.expires_at),
            refreshed_at: Some(token.issued_at),
            has_token: true,
            token_type: token.token_type.clone(),
            scope: token.scope.clone(),
        }
    }

    /// The token is present and has not expired at `now`.
    pub fn valid_at(&self, now: Timestamp) -> bool {
        self.has_token && self.expires_at.is_some_and(|e| e > now)
    }
}

fn text(secret: &Secret, key: &str) -> Option<String> {
    secret.data.as_ref()?.get(key).and_then(|b| String::from_utf8(b.0.clone()).ok())
}

/// The token a managed Secret holds, for chained requests.
pub fn token_of(secret: &Secret) -> Option<String> {
    secret.data.as_ref()?.get(TOKEN_KEY).and_then(|b| String::from_utf8(b.0.clone()).ok())
}

/// Renders the Secret's data: default keys, copied reply fields, then templates.
pub fn render_data(ts: &TokenSource, token: &Token) -> Result<BTreeMap<String, String>, Error> {
    let mut data = BTreeMap::new();
    let expires = token.expires_at.to_string();
    data.insert(TOKEN_KEY.to_string(), token.access_token.clone());
    data.insert(EXPIRES_AT_KEY.to_string(), expires.clone());
    if let Some(t) = &token.token_type {
        data.insert(TOKEN_TYPE_KEY.to_string(), t.clone());
    }
    if let Some(s) = &token.scope {
        data.insert(SCOPE_KEY.to_string(), s.clone());
    }
    data.extend(token.fields.clone());
    if !ts.spec.target.templates.is_empty() {
        let env = crate::template::env();
        let ctx = json!({
            "token": token.access_token,
            "token_type": token.token_type,
            "expires_at": expires,
            "expires_at_unix": token.expires_at.as_second(),
            "scope": token.scope,
            "response": token.raw,
        });
        for (key, template) in &ts.spec.target.templates {
            if !crate::names::is_secret_key(key) {
                return Err(Error::RenderSecret(format!("target.templates: {key:?} is not a valid Secret key")));
            }
            let rendered = env.render_str(template, minijinja::value::Serde(&ctx)).map_err(|e| {
                let detail = e.detail().map(String::from).unwrap_or_else(|| e.to_string());
                let detail = crate::redact::redact(&detail, [token.access_token.as_str()]);
                Error::RenderSecret(format!("target.templates.{key}: {detail}"))
            })?;
            data.insert(key.clone(), rendered);
        }
    }
    Ok(data)
}

/// Parses the templates, so syntax mistakes are reported before any provider call.
pub fn check_templates(ts: &TokenSource) -> Result<(), Error> {
    let env = crate::template::env();
    for (key, template) in &ts.spec.target.templates {
        if !crate::names::is_secret_key(key) {
            return Err(Error::RenderSecret(format!("target.templates: {key:?} is not a valid Secret key")));
        }
        env.template_from_str(template).map_err(|e| Error::RenderSecret(format!("target.templates.{key}: {e}")))?;
    }
    Ok(())
}

/// The target Secret as the operator applies it.
pub fn desired(ts: &TokenSource, token: &Token, fingerprint: &str) -> Result<Secret, Error> {
    let target = &ts.spec.target;
    let data = render_data(ts, token)?;
    let mut labels = target.labels.clone();
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    labels.insert(NAME_LABEL.into(), ts.meta().name.clone().unwrap_or_default());
    let mut annotations = target.annotations.clone();
    annotations.insert(FINGERPRINT_ANNOTATION.into(), fingerprint.into());
    annotations.insert(EXPIRES_AT_ANNOTATION.into(), token.expires_at.to_string());
    annotations.insert(REFRESHED_AT_ANNOTATION.into(), token.issued_at.to_string());
    let owner_references = match target.deletion_policy {
        DeletionPolicy::Delete => ts.controller_owner_ref(&()).map(|o| vec![o]),
        DeletionPolicy::Retain => None,
    };
    Ok(Secret {
        metadata: ObjectMeta {
            name: Some(target.secret_name.clone()),
            namespace: ts.meta().namespace.clone(),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references,
            ..Default::default()
        },
        type_: Some(target.type_.clone().unwrap_or_else(|| "Opaque".into())),
        data: Some(data.into_iter().map(|(k, v)| (k, ByteString(v.into_bytes()))).collect()),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{TargetSpec, TokenSourceSpec};
    use crate::response::LifetimeSource;

    fn ts(templates: BTreeMap<String, String>, policy: DeletionPolicy) -> TokenSource {
        let mut t = TokenSource::new(
            "podero",
            TokenSourceSpec {
                oauth2: None,
                http: None,
                response: None,
                refresh: None,
                tls: None,
                target: TargetSpec {
                    secret_name: "podero-token".into(),
                    deletion_policy: policy,
                    type_: None,
                    templates,
                    labels: BTreeMap::new(),
                    annotations: BTreeMap::new(),
                },
            },
        );
        t.metadata.namespace = Some("energy".into());
        t.metadata.uid = Some("uid-1".into());
        t
    }

    fn token() -> Token {
        Token {
            access_token: "tok".into(),
            token_type: Some("Bearer".into()),
            scope: None,
            issued_at: "2026-01-01T00:00:00Z".parse().unwrap_or(Timestamp::UNIX_EPOCH),
            expires_at: "2026-01-01T10:00:00Z".parse().unwrap_or(Timestamp::UNIX_EPOCH),
            lifetime_source: LifetimeSource::ExpiresIn,
            fields: [("merchant_code".to_string(), "MX1".to_string())].into(),
            raw: json!({"access_token": "tok", "extra": {"region": "eu"}}),
        }
    }

    fn text(s: &Secret, k: &str) -> Option<String> {
        s.data.as_ref()?.get(k).map(|b| String::from_utf8_lossy(&b.0).to_string())
    }

    #[test]
    fn default_keys_labels_and_owner() {
        let s = desired(&ts(BTreeMap::new(), DeletionPolicy::Delete), &token(), "fp").unwrap();
        assert_eq!(text(&s, "token").as_deref(), Some("tok"));
        assert_eq!(text(&s, "token_type").as_deref(), Some("Bearer"));
        assert_eq!(text(&s, "expires_at").as_deref(), Some("2026-01-01T10:00:00Z"));
        assert_eq!(text(&s, "merchant_code").as_deref(), Some("MX1"));
        assert!(text(&s, "scope").is_none());
        let stored = Stored::of(&s);
        assert_eq!(stored.owner.as_deref(), Some("podero"));
        assert_eq!(stored.fingerprint.as_deref(), Some("fp"));
        assert!(stored.valid_at("2026-01-01T09:59:59Z".parse().unwrap_or(Timestamp::UNIX_EPOCH)));
        assert!(!stored.valid_at("2026-01-01T10:00:00Z".parse().unwrap_or(Timestamp::UNIX_EPOCH)));
        let owner = s.metadata.owner_references.unwrap_or_default();
        assert_eq!(owner.len(), 1);
        assert_eq!(owner[0].controller, Some(true));
        let retained = desired(&ts(BTreeMap::new(), DeletionPolicy::Retain), &token(), "fp").unwrap();
        assert!(retained.metadata.owner_references.is_none());
    }

    #[test]
    fn templates_render_and_fail_cleanly() {
        let templates: BTreeMap<String, String> = [
            ("authorization".to_string(), "{{ token_type }} {{ token }}".to_string()),
            (
                "config.json".to_string(),
                "{\"token\": {{ token | tojson }}, \"region\": \"{{ response.extra.region }}\"}".to_string(),
            ),
            ("auth".to_string(), "{{ ('user:' ~ token) | b64encode }}".to_string()),
        ]
        .into();
        let s = desired(&ts(templates, DeletionPolicy::Delete), &token(), "fp").unwrap();
        assert_eq!(text(&s, "authorization").as_deref(), Some("Bearer tok"));
        assert_eq!(text(&s, "config.json").as_deref(), Some("{\"token\": \"tok\", \"region\": \"eu\"}"));
        assert_eq!(text(&s, "auth").as_deref(), Some("dXNlcjp0b2s="));
        let broken = ts([("x".to_string(), "{{ missing }}".to_string())].into(), DeletionPolicy::Delete);
        assert!(matches!(desired(&broken, &token(), "fp"), Err(Error::RenderSecret(_))));
        let unparsable = ts([("x".to_string(), "{{ token ".to_string())].into(), DeletionPolicy::Delete);
        assert!(matches!(check_templates(&unparsable), Err(Error::RenderSecret(_))));
        let bad_key = ts([("no/slash".to_string(), "x".to_string())].into(), DeletionPolicy::Delete);
        assert!(check_templates(&bad_key).is_err());
    }
}
