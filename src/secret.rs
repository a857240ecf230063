//! What goes into the target Secret, and what an existing one says about the token it holds.

use std::borrow::Cow;
use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Resource;
use kube::api::ObjectMeta;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::crd::{CreationPolicy, EngineVersion, MergePolicy, TokenSource};
use crate::error::Error;
use crate::response::Token;

pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "tokensource-operator";
pub const NAME_LABEL: &str = "tokensource.dev/name";
pub const FINGERPRINT_ANNOTATION: &str = "tokensource.dev/fingerprint";
pub const EXPIRES_AT_ANNOTATION: &str = "tokensource.dev/expires-at";
pub const RENEWED_AT_ANNOTATION: &str = "tokensource.dev/renewed-at";
/// When the operator plans to renew the token, when it chose a spread-out first renewal: kept
/// with the token so a restart renews at the same time.
pub const RENEW_AT_ANNOTATION: &str = "tokensource.dev/renew-at";
/// A hash of the target's shape in the spec (template, creation policy) the Secret was written
/// with: a change re-renders the Secret from the token it holds.
pub const SHAPE_ANNOTATION: &str = "tokensource.dev/shape";
/// A salted hash of the data the operator wrote (never the data): an edit of the Secret shows.
pub const DATA_HASH_ANNOTATION: &str = "tokensource.dev/data-hash";
/// The keys of the data the operator wrote, comma-separated: the data hash covers these only, so
/// a key another writer adds beside them does not make the Secret look edited.
pub const DATA_KEYS_ANNOTATION: &str = "tokensource.dev/data-keys";
/// When the Secret's token replaced another while `target.rolloutRestart` is set: the restart
/// the workloads are owed, written with the token itself, so no failed status write or failover
/// between the two loses it.
pub const RESTART_OWED_ANNOTATION: &str = "tokensource.dev/restart-owed-since";
/// The uid of the TokenSource the Secret is written for. The operator writes a Secret that
/// exists only if this annotation (or a controller owner reference) names the TokenSource's uid:
/// labels can be copied, and a name comes back with a new TokenSource. The Secret's owner hands
/// a Secret over to another TokenSource by setting it.
pub const OWNER_UID_ANNOTATION: &str = "tokensource.dev/owner-uid";

pub use crate::names::MAX_SECRET_DATA;

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
    /// The Secret's own uid: a write goes to this object only, not to another of the same name.
    pub uid: Option<String>,
    /// The Secret was written for the TokenSource it is read for: see [`Stored::of`].
    pub ours: bool,
    pub fingerprint: Option<String>,
    pub expires_at: Option<Timestamp>,
    pub refreshed_at: Option<Timestamp>,
    /// The planned renewal, when the operator chose one for this token.
    pub renew_at: Option<Timestamp>,
    /// The Secret holds what the operator wrote: the `token` key (`Merge`), or data (`Replace`).
    pub has_token: bool,
    pub token_type: Option<String>,
    pub scope: Option<String>,
    /// The shape of the spec it was written with.
    pub shape: Option<String>,
    /// Its data is what the operator wrote (its hash matches the annotation).
    pub intact: bool,
    /// When its token replaced another with rollout restarts configured.
    pub restart_owed_since: Option<Timestamp>,
}

/// The uid of the TokenSource a Secret names as its writer: its [`OWNER_UID_ANNOTATION`], else its
/// controller owner reference to a TokenSource.
fn claimant(secret: &Secret) -> Option<&str> {
    let meta = &secret.metadata;
    let annotated = meta.annotations.as_ref().and_then(|a| a.get(OWNER_UID_ANNOTATION)).map(String::as_str);
    annotated.or_else(|| {
        meta.owner_references
            .iter()
            .flatten()
            .find(|r| {
                r.controller == Some(true) && r.kind == "TokenSource" && r.api_version.starts_with("tokensource.dev/")
            })
            .map(|r| r.uid.as_str())
    })
}

/// Whether `secret` has an owner reference to the TokenSource with `uid`: the garbage collector
/// deletes it with that TokenSource.
pub fn owned_by(secret: &Secret, uid: &str) -> bool {
    secret.metadata.owner_references.iter().flatten().any(|r| r.uid == uid && r.kind == "TokenSource")
}

impl Stored {
    /// What a Secret written with `merge` for the TokenSource with `uid` says. It is that
    /// TokenSource's (`ours`) if it names the uid (annotation or owner reference); a Secret
    /// written before the annotation and without an owner reference (`creationPolicy: Orphan`),
    /// if its label names the TokenSource and its data hash, salted with the uid, matches.
    pub fn of(secret: &Secret, merge: MergePolicy, uid: &str) -> Self {
        let labels = secret.metadata.labels.as_ref();
        let annotations = secret.metadata.annotations.as_ref();
        let managed = labels.and_then(|l| l.get(MANAGED_BY_LABEL)).is_some_and(|v| v == MANAGED_BY);
        let ts = |k: &str| annotations.and_then(|a| a.get(k)).and_then(|v| v.parse::<Timestamp>().ok());
        let data = secret.data.as_ref();
        let has_token = match merge {
            MergePolicy::Replace => data.is_some_and(|d| !d.is_empty()),
            _ => data.is_some_and(|d| d.get(TOKEN_KEY).is_some_and(|t| !t.0.is_empty())),
        };
        let owner = if managed { labels.and_then(|l| l.get(NAME_LABEL)).cloned() } else { None };
        // The keys the operator wrote, when the Secret lists them (written before the list: all).
        let keys: Option<Vec<&str>> = annotations
            .and_then(|a| a.get(DATA_KEYS_ANNOTATION))
            .map(|k| k.split(',').filter(|k| !k.is_empty()).collect());
        let intact = annotations.and_then(|a| a.get(DATA_HASH_ANNOTATION)).is_some_and(|h| {
            let ours = |k: &str| keys.as_ref().is_none_or(|keys| keys.contains(&k));
            let written = data.into_iter().flatten().filter(|(k, _)| ours(k));
            *h == data_hash(uid, written.map(|(k, v)| (k.as_str(), v.0.as_slice())))
        });
        let ours = !uid.is_empty()
            && match claimant(secret) {
                Some(claimed) => claimed == uid,
                None => owner.is_some() && intact,
            };
        Self {
            owner,
            uid: secret.metadata.uid.clone(),
            ours,
            fingerprint: annotations.and_then(|a| a.get(FINGERPRINT_ANNOTATION)).cloned(),
            expires_at: ts(EXPIRES_AT_ANNOTATION),
            refreshed_at: ts(RENEWED_AT_ANNOTATION),
            renew_at: ts(RENEW_AT_ANNOTATION),
            has_token,
            token_type: text(secret, TOKEN_TYPE_KEY),
            scope: text(secret, SCOPE_KEY),
            shape: annotations.and_then(|a| a.get(SHAPE_ANNOTATION)).cloned(),
            intact,
            restart_owed_since: ts(RESTART_OWED_ANNOTATION),
        }
    }

    /// What the operator writes for a new token from `owner`'s request with `fingerprint`.
    pub fn issued(owner: String, fingerprint: String, token: &Token) -> Self {
        Self {
            owner: Some(owner),
            uid: None,
            ours: true,
            fingerprint: Some(fingerprint),
            expires_at: Some(token.expires_at),
            refreshed_at: Some(token.issued_at),
            renew_at: token.renew_at,
            has_token: true,
            token_type: token.token_type.clone(),
            scope: token.scope.clone(),
            shape: None,
            intact: true,
            restart_owed_since: None,
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

/// A hash of a Secret's data, salted with the TokenSource's uid: it shows an edit without
/// revealing the data.
pub fn data_hash<'a>(uid: &str, data: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> String {
    let mut h = Sha256::new();
    h.update(uid.as_bytes());
    for (k, v) in data {
        h.update((k.len() as u64).to_be_bytes());
        h.update(k.as_bytes());
        h.update((v.len() as u64).to_be_bytes());
        h.update(v);
    }
    h.finalize().iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// The token an intact Secret holds, read back (after a restart, when this instance does not
/// hold it): possible with `mergePolicy: Merge` and templates that do not read the reply, which
/// is not kept anywhere.
pub fn read_back(ts: &TokenSource, secret: &Secret, stored: &Stored) -> Option<Token> {
    let template = &ts.spec.target.template;
    if template.merge_policy != MergePolicy::Merge || !stored.intact || reads_reply(ts) {
        return None;
    }
    let fields = ts
        .spec
        .response
        .fields
        .iter()
        .map(|f| text(secret, &f.key).map(|v| (f.key.clone(), v)))
        .collect::<Option<BTreeMap<_, _>>>()?;
    Some(Token {
        access_token: token_of(secret)?,
        token_type: stored.token_type.clone(),
        scope: stored.scope.clone(),
        issued_at: stored.refreshed_at?,
        expires_at: stored.expires_at?,
        lifetime_source: crate::response::LifetimeSource::Stored,
        fields,
        raw: serde_json::Value::Null,
        renew_at: stored.renew_at,
    })
}

/// Whether the TokenSource's templates read the provider's reply (`response`): only then is the
/// reply kept with the token.
pub fn reads_reply(ts: &TokenSource) -> bool {
    ts.spec.target.template.data.values().any(|t| crate::template::reads(t, "response"))
}

/// The token a managed Secret holds, for chained requests.
pub fn token_of(secret: &Secret) -> Option<String> {
    text(secret, TOKEN_KEY).filter(|t| !t.is_empty())
}

/// Renders the Secret's data: with `Merge`, the default keys, the copied reply fields and the
/// template's keys; with `Replace`, only the template's keys.
pub fn render_data(ts: &TokenSource, token: &Token) -> Result<BTreeMap<String, String>, Error> {
    let template = &ts.spec.target.template;
    let mut data = BTreeMap::new();
    let expires = token.expires_at.to_string();
    if template.merge_policy != MergePolicy::Replace {
        data.insert(TOKEN_KEY.to_string(), token.access_token.clone());
        data.insert(EXPIRES_AT_KEY.to_string(), expires.clone());
        if let Some(t) = &token.token_type {
            data.insert(TOKEN_TYPE_KEY.to_string(), t.clone());
        }
        if let Some(s) = &token.scope {
            data.insert(SCOPE_KEY.to_string(), s.clone());
        }
        data.extend(token.fields.clone());
    }
    let too_large =
        || Error::Limit(format!("the Secret would hold more than {MAX_SECRET_DATA} bytes of data, Kubernetes' limit"));
    let mut used = data.values().map(String::len).sum::<usize>();
    if used > MAX_SECRET_DATA {
        return Err(too_large());
    }
    if !template.data.is_empty() {
        let env = crate::template::env();
        let ctx = json!({
            "token": token.access_token,
            "token_type": token.token_type,
            "expires_at": expires,
            "expires_at_unix": token.expires_at.as_second(),
            "scope": token.scope,
            "response": token.raw,
        });
        for (key, source) in &template.data {
            let rendered = crate::template::render(&env, source, &ctx, MAX_SECRET_DATA - used).map_err(|e| {
                if e.kind() == minijinja::ErrorKind::WriteFailure {
                    return too_large();
                }
                let detail = e.detail().map(String::from).unwrap_or_else(|| e.to_string());
                // Template errors may quote what they rendered: no value of the reply is shown.
                let mut redactor = crate::redact::Redactor::default();
                redactor.add(token.access_token.as_bytes());
                redactor.add_strings(&token.raw);
                let detail = redactor.redact(&detail);
                Error::RenderSecret(format!("target.template.data.{key}: {detail}"))
            })?;
            used += rendered.len();
            data.insert(key.clone(), rendered);
        }
    }
    Ok(data)
}

/// Checks the template block before any provider call: a known engine and merge policy, a type
/// no core controller acts on, valid and unreserved keys and labels and annotations, templates
/// that parse.
pub fn check_template(ts: &TokenSource) -> Result<(), Error> {
    let template = &ts.spec.target.template;
    if template.engine_version == EngineVersion::Unknown {
        return Err(Error::unsupported("target.template.engineVersion"));
    }
    if template.merge_policy == MergePolicy::Unknown {
        return Err(Error::unsupported("target.template.mergePolicy"));
    }
    if ts.spec.target.creation_policy == CreationPolicy::Unknown {
        return Err(Error::unsupported("target.creationPolicy"));
    }
    if template.merge_policy == MergePolicy::Replace && template.data.is_empty() {
        return Err(Error::RenderSecret("target.template: mergePolicy Replace needs data".into()));
    }
    check_type(ts)?;
    check_metadata(ts)?;
    let env = crate::template::env();
    for (key, source) in &template.data {
        if !crate::names::is_secret_key(key) {
            return Err(Error::RenderSecret(format!("target.template.data: {key:?} is not a valid Secret key")));
        }
        if crate::crd::RESERVED_KEYS.contains(&key.as_str()) {
            return Err(Error::RenderSecret(format!("target.template.data: {key:?} is written by the operator")));
        }
        crate::template::check(source).map_err(|e| Error::RenderSecret(format!("target.template.data.{key}: {e}")))?;
        env.template_from_str(source).map_err(|e| Error::RenderSecret(format!("target.template.data.{key}: {e}")))?;
    }
    Ok(())
}

/// The keys the Secret's type requires (as the API server checks them), and whether any one of
/// them is enough.
fn required_keys(secret_type: &str) -> (&'static [&'static str], bool) {
    match secret_type {
        "kubernetes.io/dockerconfigjson" => (&[".dockerconfigjson"], false),
        "kubernetes.io/dockercfg" => (&[".dockercfg"], false),
        "kubernetes.io/tls" => (&["tls.crt", "tls.key"], false),
        "kubernetes.io/basic-auth" => (&["username", "password"], true),
        "kubernetes.io/ssh-auth" => (&["ssh-privatekey"], false),
        _ => (&[], false),
    }
}

/// The Kubernetes Secret types a TokenSource may write: those no core controller acts on. Any
/// other type under `kubernetes.io` (a `service-account-token`, which the token controller fills
/// with a token that never expires; a `bootstrap.kubernetes.io/token`, which authenticates
/// nodes) is refused, as the CRD refuses it.
pub const ALLOWED_KUBERNETES_TYPES: [&str; 6] = [
    "Opaque",
    "kubernetes.io/dockerconfigjson",
    "kubernetes.io/dockercfg",
    "kubernetes.io/basic-auth",
    "kubernetes.io/ssh-auth",
    "kubernetes.io/tls",
];

/// Whether `name` (a Secret type, or a label or annotation key) is in a domain Kubernetes
/// reserves for itself: `kubernetes.io` and `k8s.io` and their subdomains.
fn in_kubernetes_domain(name: &str) -> bool {
    let Some((prefix, _)) = name.split_once('/') else { return false };
    ["kubernetes.io", "k8s.io"].iter().any(|d| prefix == *d || prefix.strip_suffix(d).is_some_and(|p| p.ends_with('.')))
}

/// Whether a template may set the label or annotation `key`: not in Kubernetes' domains, whose
/// keys make core controllers act (`kubernetes.io/service-account.name` has the token controller
/// fill a Secret), and not the operator's own.
pub fn is_reserved_key(key: &str) -> bool {
    in_kubernetes_domain(key) || key.starts_with("tokensource.dev/")
}

/// Refuses reserved label and annotation keys in the template (the CRD refuses them too; an
/// older CRD might not).
fn check_metadata(ts: &TokenSource) -> Result<(), Error> {
    let metadata = &ts.spec.target.template.metadata;
    let keys =
        metadata.labels.keys().map(|k| ("labels", k)).chain(metadata.annotations.keys().map(|k| ("annotations", k)));
    for (kind, key) in keys {
        if is_reserved_key(key) {
            return Err(Error::InvalidSpec(format!(
                "target.template.metadata.{kind}: {key:?} is reserved (keys under kubernetes.io/, k8s.io/ and their subdomains make Kubernetes' controllers act; tokensource.dev/ keys are the operator's)"
            )));
        }
    }
    Ok(())
}

/// Refuses a template that cannot give the Secret's type what the API server requires, before
/// any request: a type no core controller acts on, and the keys the type needs.
fn check_type(ts: &TokenSource) -> Result<(), Error> {
    let template = &ts.spec.target.template;
    let kind = template.type_.as_str();
    if in_kubernetes_domain(kind) && !ALLOWED_KUBERNETES_TYPES.contains(&kind) {
        return Err(Error::InvalidSpec(format!(
            "target.template.type {kind} is reserved: Kubernetes acts on Secrets of this type; use {} or a type outside kubernetes.io and k8s.io",
            ALLOWED_KUBERNETES_TYPES.join(", ")
        )));
    }
    let mut keys: Vec<&str> = template.data.keys().map(String::as_str).collect();
    if template.merge_policy == MergePolicy::Merge {
        keys.extend([TOKEN_KEY, EXPIRES_AT_KEY]);
        keys.extend(ts.spec.response.fields.iter().map(|f| f.key.as_str()));
    }
    let (required, any) = required_keys(kind);
    let present = |k: &&str| keys.contains(k);
    let satisfied = if any { required.iter().any(present) } else { required.iter().all(present) };
    if !satisfied {
        let list =
            required.iter().map(|k| format!("{k:?}")).collect::<Vec<_>>().join(if any { " or " } else { " and " });
        return Err(Error::InvalidSpec(format!(
            "a Secret of type {kind} needs {list} in target.template.data (or response.fields)"
        )));
    }
    Ok(())
}

/// The target Secret as the operator applies it: `fingerprint` says what request produced the
/// token, `shape` what spec shaped the Secret.
pub fn desired(ts: &TokenSource, token: &Token, fingerprint: &str, shape: &str) -> Result<Secret, Error> {
    let target = &ts.spec.target;
    let data = render_data(ts, token)?;
    for key in [".dockerconfigjson", ".dockercfg"] {
        if required_keys(&target.template.type_).0.contains(&key)
            && data.get(key).is_some_and(|v| serde_json::from_str::<serde_json::Value>(v).is_err())
        {
            return Err(Error::RenderSecret(format!(
                "target.template.data[{key}] does not render to JSON, which a Secret of type {} needs",
                target.template.type_
            )));
        }
    }
    let uid = ts.meta().uid.clone().unwrap_or_default();
    let hash = data_hash(&uid, data.iter().map(|(k, v)| (k.as_str(), v.as_bytes())));
    let mut labels = target.template.metadata.labels.clone();
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    labels.insert(NAME_LABEL.into(), ts.meta().name.clone().unwrap_or_default());
    let mut annotations = target.template.metadata.annotations.clone();
    annotations.insert(FINGERPRINT_ANNOTATION.into(), fingerprint.into());
    annotations.insert(EXPIRES_AT_ANNOTATION.into(), token.expires_at.to_string());
    annotations.insert(RENEWED_AT_ANNOTATION.into(), token.issued_at.to_string());
    if let Some(at) = token.renew_at {
        annotations.insert(RENEW_AT_ANNOTATION.into(), at.to_string());
    }
    annotations.insert(SHAPE_ANNOTATION.into(), shape.into());
    annotations.insert(DATA_HASH_ANNOTATION.into(), hash);
    annotations.insert(DATA_KEYS_ANNOTATION.into(), data.keys().map(String::as_str).collect::<Vec<_>>().join(","));
    annotations.insert(OWNER_UID_ANNOTATION.into(), uid);
    let owner_references = match target.creation_policy {
        CreationPolicy::Owner => ts.controller_owner_ref(&()).map(|o| vec![o]),
        CreationPolicy::Orphan | CreationPolicy::Unknown => None,
    };
    Ok(Secret {
        metadata: ObjectMeta {
            name: Some(target.name.clone()),
            namespace: ts.meta().namespace.clone(),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references,
            ..Default::default()
        },
        type_: Some(target.template.type_.clone()),
        data: Some(data.into_iter().map(|(k, v)| (k, ByteString(v.into_bytes()))).collect()),
        ..Default::default()
    })
}

/// A managed Secret as the cache keeps it: what [`Stored::of`], [`read_back`] and chained
/// requests read (name, uid, version, the operator's labels and annotations, who it was written
/// for, the data), in about a third of a `Secret`'s memory (10,000 of them were 20 MiB as whole
/// Secrets). Other labels and annotations, owner references, the type and the managed fields
/// are not kept.
#[derive(Clone, Debug, PartialEq)]
pub struct Managed {
    name: Box<str>,
    namespace: Option<Box<str>>,
    uid: Option<Box<str>>,
    resource_version: Option<Box<str>>,
    /// The value of [`NAME_LABEL`], when [`MANAGED_BY_LABEL`] says the operator manages it.
    owner: Option<Box<str>>,
    /// The uid of the TokenSource it names as its writer ([`claimant`]).
    claimant: Option<Box<str>>,
    /// Its owner references include one to that TokenSource: deleting the TokenSource deletes it.
    owned: bool,
    /// The operator's annotations that [`Stored::of`] reads.
    annotations: Box<[(&'static str, Box<str>)]>,
    data: Box<[KeptValue]>,
}

/// A key of a kept Secret's data (the default keys without a copy), and its value.
type KeptValue = (Cow<'static, str>, Box<[u8]>);

/// The annotations a kept Secret keeps.
const KEPT_ANNOTATIONS: [&str; 8] = [
    FINGERPRINT_ANNOTATION,
    EXPIRES_AT_ANNOTATION,
    RENEWED_AT_ANNOTATION,
    RENEW_AT_ANNOTATION,
    SHAPE_ANNOTATION,
    DATA_HASH_ANNOTATION,
    DATA_KEYS_ANNOTATION,
    RESTART_OWED_ANNOTATION,
];

impl Managed {
    /// What the cache keeps of `secret`.
    pub fn of(secret: Secret) -> Self {
        let claimant: Option<Box<str>> = claimant(&secret).map(Into::into);
        let owned = claimant.as_deref().is_some_and(|c| owned_by(&secret, c));
        let meta = secret.metadata;
        let labels = meta.labels.unwrap_or_default();
        let managed = labels.get(MANAGED_BY_LABEL).is_some_and(|v| v == MANAGED_BY);
        Self {
            name: meta.name.unwrap_or_default().into(),
            namespace: meta.namespace.map(Into::into),
            uid: meta.uid.map(Into::into),
            resource_version: meta.resource_version.map(Into::into),
            owner: labels.get(NAME_LABEL).filter(|_| managed).map(|n| n.as_str().into()),
            claimant,
            owned,
            annotations: meta
                .annotations
                .unwrap_or_default()
                .into_iter()
                .filter_map(|(k, v)| KEPT_ANNOTATIONS.into_iter().find(|kept| *kept == k).map(|kept| (kept, v.into())))
                .collect(),
            data: secret
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| {
                    let key = [TOKEN_KEY, TOKEN_TYPE_KEY, EXPIRES_AT_KEY, SCOPE_KEY]
                        .into_iter()
                        .find(|d| *d == k)
                        .map_or(Cow::Owned(k), Cow::Borrowed);
                    (key, v.0.into())
                })
                .collect(),
        }
    }

    /// The TokenSource its label names, if the operator manages it.
    pub fn owner(&self) -> Option<&str> {
        self.owner.as_deref()
    }

    pub fn resource_version(&self) -> Option<&str> {
        self.resource_version.as_deref()
    }

    /// The Secret again, with what was kept: enough for [`Stored::of`], [`read_back`] and
    /// [`token_of`].
    pub fn to_secret(&self) -> Secret {
        let labels = self.owner.as_ref().map(|owner| {
            BTreeMap::from([
                (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
                (NAME_LABEL.to_string(), owner.to_string()),
            ])
        });
        let mut annotations: BTreeMap<String, String> =
            self.annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        if let Some(claimant) = &self.claimant {
            annotations.insert(OWNER_UID_ANNOTATION.into(), claimant.to_string());
        }
        // Enough of the owner reference to tell that there is one ([`owned_by`]).
        let owner_references = self.claimant.as_ref().filter(|_| self.owned).map(|uid| {
            vec![OwnerReference {
                api_version: TokenSource::api_version(&()).into(),
                kind: TokenSource::kind(&()).into(),
                name: self.owner.as_deref().unwrap_or_default().into(),
                uid: uid.to_string(),
                controller: Some(true),
                block_owner_deletion: None,
            }]
        });
        Secret {
            metadata: ObjectMeta {
                name: Some(self.name.to_string()),
                namespace: self.namespace.as_deref().map(String::from),
                uid: self.uid.as_deref().map(String::from),
                resource_version: self.resource_version.as_deref().map(String::from),
                labels,
                annotations: Some(annotations),
                owner_references,
                ..Default::default()
            },
            data: Some(self.data.iter().map(|(k, v)| (k.to_string(), ByteString(v.to_vec()))).collect()),
            ..Default::default()
        }
    }
}

/// Lets the cache of managed Secrets hold [`Managed`] (the reflector needs names and versions).
impl kube::runtime::reflector::Lookup for Managed {
    type DynamicType = ();

    fn kind(_: &()) -> Cow<'_, str> {
        "Secret".into()
    }

    fn group(_: &()) -> Cow<'_, str> {
        "".into()
    }

    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }

    fn plural(_: &()) -> Cow<'_, str> {
        "secrets".into()
    }

    fn name(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(&self.name))
    }

    fn namespace(&self) -> Option<Cow<'_, str>> {
        self.namespace.as_deref().map(Cow::Borrowed)
    }

    fn resource_version(&self) -> Option<Cow<'_, str>> {
        self.resource_version.as_deref().map(Cow::Borrowed)
    }

    fn uid(&self) -> Option<Cow<'_, str>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::response::LifetimeSource;

    fn ts(target: Value) -> TokenSource {
        let mut t: TokenSource = serde_json::from_value(json!({
            "apiVersion": "tokensource.dev/v1alpha1", "kind": "TokenSource",
            "metadata": {"name": "podero", "namespace": "energy", "uid": "uid-1"},
            "spec": {"type": "HTTP", "http": {"url": "https://x.example/t"}, "target": target}
        }))
        .unwrap();
        t.metadata.uid = Some("uid-1".into());
        t
    }

    fn token() -> Token {
        Token {
            access_token: "tok".into(),
            token_type: Some("Bearer".into()),
            scope: None,
            issued_at: "2026-01-01T00:00:00Z".parse().unwrap(),
            expires_at: "2026-01-01T10:00:00Z".parse().unwrap(),
            lifetime_source: LifetimeSource::ExpiresIn,
            fields: [("merchant_code".to_string(), "MX1".to_string())].into(),
            raw: json!({"access_token": "tok", "extra": {"region": "eu"}}),
            renew_at: None,
        }
    }

    fn text(s: &Secret, k: &str) -> Option<String> {
        s.data.as_ref()?.get(k).map(|b| String::from_utf8_lossy(&b.0).to_string())
    }

    #[test]
    fn a_planned_renewal_is_kept_with_the_token() {
        let planned: Timestamp = "2026-01-01T05:00:00.250Z".parse().unwrap();
        let t = Token { renew_at: Some(planned), ..token() };
        let s = desired(&ts(json!({"name": "podero-token"})), &t, "fp", "shape").unwrap();
        let stored = Stored::of(&s, MergePolicy::Merge, "uid-1");
        assert_eq!(stored.renew_at, Some(planned));
        let back = read_back(&ts(json!({"name": "podero-token"})), &s, &stored).unwrap();
        assert_eq!(back.renew_at, Some(planned), "a restart reads the plan back");
        let plain = desired(&ts(json!({"name": "podero-token"})), &token(), "fp", "shape").unwrap();
        assert!(!plain.metadata.annotations.unwrap_or_default().contains_key(RENEW_AT_ANNOTATION));
    }

    #[test]
    fn the_cached_projection_reads_like_the_secret() {
        let source = ts(json!({"name": "podero-token", "template": {"metadata": {
            "labels": {"team": "energy"}, "annotations": {"note": "foreign"}}}}));
        let t = Token { renew_at: Some("2026-01-01T05:00:00Z".parse().unwrap()), ..token() };
        let mut s = desired(&source, &t, "fp", "shape").unwrap();
        s.metadata.resource_version = Some("42".into());
        let kept = Managed::of(s.clone()).to_secret();
        let (was, now) = (Stored::of(&s, MergePolicy::Merge, "uid-1"), Stored::of(&kept, MergePolicy::Merge, "uid-1"));
        assert!(was.intact && was.owner.is_some());
        assert_eq!(now, was);
        let (back, back_kept) = (read_back(&source, &s, &was).unwrap(), read_back(&source, &kept, &now).unwrap());
        assert_eq!(
            (back_kept.access_token, back_kept.renew_at, back_kept.fields),
            (back.access_token, back.renew_at, back.fields)
        );
        assert_eq!(token_of(&kept).as_deref(), Some("tok"));
        assert_eq!(Managed::of(s.clone()).resource_version(), Some("42"));
        let labels = kept.metadata.labels.unwrap_or_default();
        assert!(!labels.contains_key("team"), "only the operator's labels are kept");
        assert!(!kept.metadata.annotations.unwrap_or_default().contains_key("note"));
        // A Secret the operator does not manage names no owner.
        s.metadata.labels.as_mut().unwrap().remove(MANAGED_BY_LABEL);
        assert_eq!(Managed::of(s.clone()).owner(), None);
        assert_eq!(Stored::of(&Managed::of(s).to_secret(), MergePolicy::Merge, "uid-1").owner, None);
    }

    #[test]
    fn a_secret_is_ours_only_if_it_names_our_uid() {
        let source = ts(json!({"name": "podero-token"}));
        let written = desired(&source, &token(), "fp", "shape").unwrap();
        let ours = |s: &Secret, uid: &str| Stored::of(s, MergePolicy::Merge, uid).ours;
        assert!(ours(&written, "uid-1"), "written with the annotation and the owner reference");
        assert!(!ours(&written, "uid-2"), "another TokenSource of the same name");
        assert!(ours(&Managed::of(written.clone()).to_secret(), "uid-1"), "the cache reads it the same");
        assert!(!ours(&Managed::of(written.clone()).to_secret(), "uid-2"));
        // The cache tells whether the garbage collector deletes it with its TokenSource.
        assert!(owned_by(&written, "uid-1") && owned_by(&Managed::of(written.clone()).to_secret(), "uid-1"));
        let mut orphaned = written.clone();
        orphaned.metadata.owner_references = None;
        assert!(!owned_by(&Managed::of(orphaned).to_secret(), "uid-1"));
        // The owner reference alone (written before the annotation, creationPolicy Owner).
        let mut by_reference = written.clone();
        by_reference.metadata.annotations.as_mut().unwrap().remove(OWNER_UID_ANNOTATION);
        by_reference.metadata.annotations.as_mut().unwrap().insert(DATA_HASH_ANNOTATION.into(), "edited".into());
        assert!(ours(&by_reference, "uid-1") && !ours(&by_reference, "uid-2"));
        assert!(ours(&Managed::of(by_reference).to_secret(), "uid-1"));
        // Neither (written before the annotation, creationPolicy Orphan): the data hash salted
        // with the uid shows who wrote it.
        let mut legacy = written.clone();
        legacy.metadata.annotations.as_mut().unwrap().remove(OWNER_UID_ANNOTATION);
        legacy.metadata.owner_references = None;
        assert!(ours(&legacy, "uid-1") && !ours(&legacy, "uid-2"));
        legacy.data.as_mut().unwrap().insert("token".into(), ByteString(b"edited".to_vec()));
        assert!(!ours(&legacy, "uid-1"), "edited: nothing names the TokenSource any more");
        // The operator's labels alone, which anyone who may write the Secret can set.
        let mut labelled = legacy.clone();
        labelled.metadata.annotations = None;
        assert!(!ours(&labelled, "uid-1"));
        // Another TokenSource's annotation wins over our owner reference.
        let mut handed = written.clone();
        handed.metadata.annotations.as_mut().unwrap().insert(OWNER_UID_ANNOTATION.into(), "uid-2".into());
        assert!(ours(&handed, "uid-2") && !ours(&handed, "uid-1"));
        assert!(!ours(&written, ""), "a TokenSource without a uid owns nothing");
    }

    #[test]
    fn default_keys_labels_and_owner() {
        let s = desired(&ts(json!({"name": "podero-token"})), &token(), "fp", "shape").unwrap();
        assert_eq!(text(&s, "token").as_deref(), Some("tok"));
        assert_eq!(text(&s, "token_type").as_deref(), Some("Bearer"));
        assert_eq!(text(&s, "expires_at").as_deref(), Some("2026-01-01T10:00:00Z"));
        assert_eq!(text(&s, "merchant_code").as_deref(), Some("MX1"));
        assert!(text(&s, "scope").is_none());
        assert_eq!(s.type_.as_deref(), Some("Opaque"));
        let stored = Stored::of(&s, MergePolicy::Merge, "uid-1");
        assert!(stored.intact && stored.shape.as_deref() == Some("shape"));
        assert_eq!(stored.owner.as_deref(), Some("podero"));
        assert_eq!(stored.fingerprint.as_deref(), Some("fp"));
        assert!(stored.valid_at("2026-01-01T09:59:59Z".parse().unwrap()));
        assert!(!stored.valid_at("2026-01-01T10:00:00Z".parse().unwrap()));
        let owner = s.metadata.owner_references.unwrap_or_default();
        assert_eq!(owner.len(), 1);
        assert_eq!(owner[0].controller, Some(true));
        let orphan =
            desired(&ts(json!({"name": "podero-token", "creationPolicy": "Orphan"})), &token(), "fp", "shape").unwrap();
        assert!(orphan.metadata.owner_references.is_none());
    }

    #[test]
    fn templates_render_and_fail_cleanly() {
        let target = json!({"name": "t", "template": {
            "type": "kubernetes.io/dockerconfigjson",
            "metadata": {"labels": {"team": "energy"}},
            "data": {
                "authorization": "{{ token_type }} {{ token }}",
                "config.json": "{\"token\": {{ token | tojson }}, \"region\": \"{{ response.extra.region }}\"}",
                "auth": "{{ ('user:' ~ token) | b64encode }}"
            }
        }});
        let s = desired(&ts(target), &token(), "fp", "shape").unwrap();
        assert_eq!(text(&s, "authorization").as_deref(), Some("Bearer tok"));
        assert_eq!(text(&s, "config.json").as_deref(), Some("{\"token\": \"tok\", \"region\": \"eu\"}"));
        assert_eq!(text(&s, "auth").as_deref(), Some("dXNlcjp0b2s="));
        assert_eq!(s.type_.as_deref(), Some("kubernetes.io/dockerconfigjson"));
        assert_eq!(s.metadata.labels.unwrap_or_default().get("team").map(String::as_str), Some("energy"));
        let broken = ts(json!({"name": "t", "template": {"data": {"x": "{{ missing }}"}}}));
        assert!(matches!(desired(&broken, &token(), "fp", "shape"), Err(Error::RenderSecret(_))));
        let unparsable = ts(json!({"name": "t", "template": {"data": {"x": "{{ token "}}}));
        assert!(matches!(check_template(&unparsable), Err(Error::RenderSecret(_))));
        let bad_key = ts(json!({"name": "t", "template": {"data": {"no/slash": "x"}}}));
        assert!(check_template(&bad_key).is_err());
        let reserved = ts(json!({"name": "t", "template": {"data": {"token": "Bearer {{ token }}"}}}));
        assert!(check_template(&reserved).is_err(), "chained TokenSources read the token key");
        let newer = ts(json!({"name": "t", "template": {"engineVersion": "v2"}}));
        assert!(matches!(check_template(&newer), Err(Error::InvalidSpec(_))));
    }

    #[test]
    fn replace_writes_only_the_template() {
        let s = desired(
            &ts(json!({"name": "t", "template": {"mergePolicy": "Replace", "data": {"GITHUB_TOKEN": "{{ token }}"}}})),
            &token(),
            "fp",
            "shape",
        )
        .unwrap();
        assert_eq!(
            s.data.as_ref().map(|d| d.keys().cloned().collect::<Vec<_>>()),
            Some(vec!["GITHUB_TOKEN".to_string()])
        );
        assert!(Stored::of(&s, MergePolicy::Replace, "uid-1").has_token);
        assert!(!Stored::of(&s, MergePolicy::Merge, "uid-1").has_token);
        assert_eq!(token_of(&s), None, "no token key for a chain to read");
    }

    #[test]
    fn an_edit_shows_and_an_intact_secret_gives_its_token_back() {
        let source = ts(json!({"name": "t", "template": {"data": {"auth": "Bearer {{ token }}"}}}));
        let mut s = desired(&source, &token(), "fp", "shape").unwrap();
        let stored = Stored::of(&s, MergePolicy::Merge, "uid-1");
        assert!(stored.intact);
        let back = read_back(&source, &s, &stored).unwrap();
        assert_eq!((back.access_token.as_str(), back.expires_at), ("tok", token().expires_at));
        assert_eq!(back.fields.get("merchant_code"), None, "only the fields the spec copies");
        assert!(!Stored::of(&s, MergePolicy::Merge, "uid-2").intact, "salted per TokenSource");
        // A key another writer adds beside the operator's is no edit of what it wrote; one of
        // its own keys removed is.
        let mut added = s.clone();
        added.data.as_mut().unwrap().insert("ca.crt".into(), ByteString(b"pem".to_vec()));
        assert!(Stored::of(&added, MergePolicy::Merge, "uid-1").intact, "another writer's key");
        let mut removed = s.clone();
        removed.data.as_mut().unwrap().remove("auth");
        assert!(!Stored::of(&removed, MergePolicy::Merge, "uid-1").intact, "a key of the operator's removed");
        s.data.as_mut().unwrap().insert("token".into(), ByteString(b"edited".to_vec()));
        let edited = Stored::of(&s, MergePolicy::Merge, "uid-1");
        assert!(!edited.intact);
        assert!(read_back(&source, &s, &edited).is_none(), "an edited Secret is not trusted");
        // A template that reads the reply cannot be rendered again from the Secret alone.
        let reads_reply = ts(json!({"name": "t", "template": {"data": {"region": "{{ response.extra.region }}"}}}));
        let s = desired(&reads_reply, &token(), "fp", "shape").unwrap();
        assert!(read_back(&reads_reply, &s, &Stored::of(&s, MergePolicy::Merge, "uid-1")).is_none());
    }

    #[test]
    fn reserved_labels_and_annotations_are_refused() {
        for (key, reserved) in [
            ("kubernetes.io/service-account.name", true),
            ("kubernetes.io/service-account.uid", true),
            ("app.kubernetes.io/instance", true),
            ("node-role.kubernetes.io/control-plane", true),
            ("k8s.io/x", true),
            ("a.b.k8s.io/x", true),
            ("tokensource.dev/fingerprint", true),
            ("team", false),
            ("example.com/kubernetes.io", false),
            ("kubernetes.iox/y", false),
            ("xkubernetes.io/y", false),
        ] {
            assert_eq!(is_reserved_key(key), reserved, "{key}");
            for field in ["labels", "annotations"] {
                let t = ts(json!({"name": "t", "template": {"metadata": {field: {key: "v"}}}}));
                let checked = check_template(&t);
                assert_eq!(checked.is_err(), reserved, "{field} {key}: {checked:?}");
                if let Err(e) = checked {
                    assert!(matches!(e, Error::InvalidSpec(_)) && e.to_string().contains(key), "{e}");
                }
            }
        }
    }

    #[test]
    fn a_template_must_give_the_secret_s_type_its_keys() {
        for (template, ok) in [
            (json!({"type": "kubernetes.io/dockerconfigjson"}), false),
            (json!({"type": "kubernetes.io/dockerconfigjson", "data": {".dockerconfigjson": "{}"}}), true),
            (json!({"type": "kubernetes.io/tls", "data": {"tls.crt": "{{ token }}"}}), false),
            (json!({"type": "kubernetes.io/basic-auth", "data": {"password": "{{ token }}"}}), true),
            (json!({"type": "kubernetes.io/ssh-auth"}), false),
            (json!({"type": "kubernetes.io/service-account-token"}), false),
            (
                json!({"type": "kubernetes.io/service-account-token", "metadata": {"annotations": {"kubernetes.io/service-account.name": "deployer"}}}),
                false,
            ),
            (json!({"type": "bootstrap.kubernetes.io/token"}), false),
            (json!({"type": "k8s.io/anything"}), false),
            (json!({"type": "example.com/anything"}), true),
            (json!({"type": "notkubernetes.io/anything"}), true),
            (json!({"type": "plain"}), true),
        ] {
            let t = ts(json!({"name": "t", "template": template}));
            assert_eq!(check_template(&t).is_ok(), ok, "{template}");
        }
        let not_json = ts(
            json!({"name": "t", "template": {"type": "kubernetes.io/dockerconfigjson", "data": {".dockerconfigjson": "{{ token }}"}}}),
        );
        let e = desired(&not_json, &token(), "fp", "shape").unwrap_err();
        assert!(matches!(e, Error::RenderSecret(_)) && !e.to_string().contains("tok\""), "{e}");
    }
}
