//! The load step: what a reconcile reads besides the TokenSource itself — the target Secret and
//! what it holds, the credential values, the upstream of a chain, ConfigMap values.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec, TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;

use super::Context;
use crate::crd::{MergePolicy, ServiceAccountToken, TokenSource};
use crate::credentials::Credentials;
use crate::error::{Error, UpstreamState};
use crate::secret::{self, Managed, Stored};

/// Requests a token for the ServiceAccount `spec` names in `namespace` (TokenRequest API), for one
/// token request: what the operator sends and what `kubectl tokensource check` sends. The token
/// is returned only once the API server has said it does not accept it itself
/// ([`refuse_api_credential`]).
pub async fn service_account_token(
    client: &kube::Client,
    namespace: &str,
    spec: &ServiceAccountToken,
) -> Result<String, Error> {
    let seconds = super::validate::service_account_token_lifetime(spec)?;
    let name = &spec.service_account_name;
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![spec.audience.clone()],
            expiration_seconds: Some(seconds),
            bound_object_ref: None,
        },
        ..Default::default()
    };
    let api: kube::Api<ServiceAccount> = kube::Api::namespaced(client.clone(), namespace);
    let answer = api.create_token_request(name, &kube::api::PostParams::default(), &request).await.map_err(|e| {
        Error::ServiceAccountToken(match &e {
            kube::Error::Api(s) if s.code == 404 => format!("ServiceAccount {name:?} not found"),
            kube::Error::Api(s) if s.code == 403 => format!(
                "the operator may not request tokens for ServiceAccount {name:?} (Forbidden): grant it create on serviceaccounts/token (deploy/components/workload-identity)"
            ),
            _ => format!("requesting a token for ServiceAccount {name:?}: {e}"),
        })
    })?;
    let token = answer.status.map(|s| s.token).filter(|t| !t.is_empty()).ok_or_else(|| {
        Error::ServiceAccountToken(format!("the API server answered no token for ServiceAccount {name:?}"))
    })?;
    refuse_api_credential(client, &token, &spec.audience).await?;
    Ok(token)
}

/// Refuses a ServiceAccount token the API server itself accepts: asked with a TokenReview
/// without audiences (so for the API server's own, `--api-audiences`), whether the token
/// authenticates to this cluster's API. Such a token is a credential for the API, never to be
/// handed to a token endpoint; the spec's audience prefix rule catches only the usual
/// `https://kubernetes.default.svc...` (k3s and RKE2 also accept `k3s` and `rke2`, and clusters
/// configure others). The check fails closed: a review that cannot be made sends nothing.
async fn refuse_api_credential(client: &kube::Client, token: &str, audience: &str) -> Result<(), Error> {
    let review =
        TokenReview { spec: TokenReviewSpec { token: Some(token.to_string()), audiences: None }, ..Default::default() };
    let api: kube::Api<TokenReview> = kube::Api::all(client.clone());
    // The reply repeats the token in its spec: only its status is read, and errors are the API
    // server's Status, which does not.
    let answer = api.create(&kube::api::PostParams::default(), &review).await.map_err(|e| {
        Error::ServiceAccountToken(match &e {
            kube::Error::Api(s) if s.code == 403 => "the operator may not check the ServiceAccount token with a TokenReview (Forbidden), so it is not sent: grant it create on tokenreviews.authentication.k8s.io (deploy/components/workload-identity/token-review.yaml)".to_string(),
            _ => format!("checking the ServiceAccount token with a TokenReview failed, so it is not sent: {e}"),
        })
    })?;
    let status = answer.status.unwrap_or_default();
    if status.authenticated == Some(true) {
        let accepted = status.audiences.unwrap_or_default().join(", ");
        return Err(Error::InvalidSpec(format!(
            "serviceAccountToken.audience {audience:?} is an audience the Kubernetes API server accepts as its own ({accepted}): such a token is a credential for the Kubernetes API and is never sent to a token endpoint; use the audience the provider's federation expects"
        )));
    }
    Ok(())
}

/// Secret types whose values authenticate to the Kubernetes API (a ServiceAccount's stored token,
/// a node bootstrap token): a tenant who may create TokenSources but not read Secrets must not be
/// able to send them to an endpoint of their choosing.
fn api_credential_type(type_: &str) -> bool {
    matches!(type_, "kubernetes.io/service-account-token" | "bootstrap.kubernetes.io/token")
}

/// Credential Secrets' data, by namespace and name, kept while the resourceVersion the metadata
/// watch reports has not moved. Each Secret has its own lock, held while it is read from the API:
/// TokenSources that share a Secret wait for one read; others are not held up.
#[derive(Default)]
pub struct CredentialCache {
    secrets: std::sync::Mutex<HashMap<(String, String), Slot>>,
}

/// One Secret's cached data, locked while it is read.
type Slot = Arc<tokio::sync::Mutex<Option<CachedSecret>>>;

struct CachedSecret {
    resource_version: String,
    data: Arc<BTreeMap<String, Vec<u8>>>,
}

impl CredentialCache {
    fn slot(&self, key: &(String, String)) -> Slot {
        let mut secrets = self.secrets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        secrets.entry(key.clone()).or_default().clone()
    }
}

impl Context {
    /// The target Secret as the cache of managed Secrets shows it.
    pub(super) fn cached_target(&self, ts: &TokenSource) -> Option<Arc<Managed>> {
        self.targets.get(&ObjectRef::new(&ts.spec.target.name).within(&ts.namespace().unwrap_or_default()))
    }

    /// The target Secret: from the cache of managed Secrets, or from the API when the cache does
    /// not have it (a Secret the operator did not create carries no label and is not cached) or
    /// shows another version than this instance last wrote (the cache may not have caught up, or
    /// someone changed it since: only the API can tell).
    pub(super) async fn target(&self, ts: &TokenSource) -> Result<Option<Secret>, Error> {
        let ns = ts.namespace().unwrap_or_default();
        let name = &ts.spec.target.name;
        let me = ObjectRef::from_obj(ts);
        let written = self.memory.written(&me);
        let cached = self.targets.get(&ObjectRef::new(name).within(&ns));
        if let Some(s) = &cached
            && (written.is_none() || s.resource_version() == written.as_deref())
        {
            return Ok(Some(s.to_secret()));
        }
        // None in the cache: a Secret without the operator's label (someone else's, or one whose
        // label was removed) is looked for once, not on every reconcile while a TokenSource
        // waits for its token. A write creates the Secret only if none exists by then, so one
        // created meanwhile is never taken over; the failed write has it looked for again.
        if cached.is_none() && written.is_none() && self.memory.known_absent(&me, name) {
            return Ok(None);
        }
        let found = self.api::<Secret>(&ns).get_opt(name).await.map_err(Error::Kube)?;
        if found.is_none() && cached.is_none() {
            self.memory.remember_absent(&me, Some(name));
        }
        Ok(found)
    }

    /// Reads the Secret and ConfigMap keys a spec refers to: Secrets from a cache kept fresh by
    /// resourceVersion, ConfigMaps from the API (they are not watched).
    pub(super) async fn credentials(&self, ts: &TokenSource) -> Result<Credentials, Error> {
        let ns = ts.namespace().unwrap_or_default();
        let mut creds = Credentials::default();
        for r in ts.spec.secret_refs() {
            let data = self.credential_secret(&ns, &r.name).await?;
            let value = data
                .get(&r.key)
                .ok_or_else(|| Error::CredentialsNotFound(format!("Secret {:?} has no key {:?}", r.name, r.key)))?;
            creds.insert(r, value.clone());
        }
        self.prune();
        let mut config_maps: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for r in ts.spec.config_map_refs() {
            if !config_maps.contains_key(&r.name) {
                let cm = self
                    .api::<ConfigMap>(&ns)
                    .get_opt(&r.name)
                    .await
                    .map_err(Error::Kube)?
                    .ok_or_else(|| Error::ConfigMapNotFound(format!("ConfigMap {:?} not found", r.name)))?;
                config_maps.insert(r.name.clone(), cm.data.unwrap_or_default());
            }
            let value =
                config_maps.get(&r.name).and_then(|d| d.get(&r.key)).cloned().ok_or_else(|| {
                    Error::ConfigMapNotFound(format!("ConfigMap {:?} has no key {:?}", r.name, r.key))
                })?;
            creds.insert_config(r, value);
        }
        Ok(creds)
    }

    /// A ServiceAccount token for this attempt of a workload identity flow, if the spec uses one.
    pub(super) async fn with_service_account_token(
        &self,
        ts: &TokenSource,
        creds: &Credentials,
    ) -> Result<Option<Credentials>, Error> {
        let Some(spec) = ts.spec.service_account_token() else { return Ok(None) };
        let ns = ts.namespace().unwrap_or_default();
        let token = service_account_token(&self.client, &ns, spec).await?;
        let mut creds = creds.clone();
        creds.set_service_account_token(token);
        Ok(Some(creds))
    }

    /// Follows the bearer chain: the upstream TokenSource must exist and the chain must not loop.
    pub(super) fn upstream(&self, ts: &TokenSource) -> Result<Option<Arc<TokenSource>>, Error> {
        let Some(first) = ts.spec.upstream() else { return Ok(None) };
        let ns = ts.namespace().unwrap_or_default();
        let me = ts.name_any();
        if first == me {
            return Err(Error::InvalidSpec("http.auth.bearer.tokenSourceRef refers to this TokenSource itself".into()));
        }
        let get = |name: &str| self.sources.get(&ObjectRef::new(name).within(&ns));
        let upstream =
            get(first).ok_or_else(|| Error::Upstream { name: first.to_string(), state: UpstreamState::Missing })?;
        if upstream.spec.target.template.merge_policy == MergePolicy::Replace {
            return Err(Error::InvalidSpec(format!(
                "TokenSource {first:?} writes only its template's keys (mergePolicy Replace), so it has no token key to chain from"
            )));
        }
        let mut seen = vec![me.clone(), first.to_string()];
        let mut next = upstream.spec.upstream().map(String::from);
        while let Some(name) = next {
            if seen.contains(&name) {
                seen.push(name);
                return Err(Error::InvalidSpec(format!("bearer tokenSourceRef chain loops: {}", seen.join(" -> "))));
            }
            seen.push(name.clone());
            next = get(&name).and_then(|t| t.spec.upstream().map(String::from));
        }
        Ok(Some(upstream))
    }

    /// The upstream's current token, if its Secret holds a valid one.
    pub(super) fn upstream_token(&self, upstream: &TokenSource, now: Timestamp) -> Option<String> {
        let ns = upstream.namespace().unwrap_or_default();
        let cached = self.targets.get(&ObjectRef::new(&upstream.spec.target.name).within(&ns));
        // This instance wrote the upstream's Secret since the cache saw it: the token it wrote
        // is the current one (the cached one may have been revoked by its replacement), however
        // long the cache lags — a cache still showing the version this instance wrote over has
        // seen no later write either.
        let up = ObjectRef::from_obj(upstream);
        let cached_version = cached.as_ref().and_then(|s| s.resource_version().map(String::from));
        if self.memory.cache_behind_write(&up, cached_version.as_deref(), std::time::Duration::MAX) {
            return self.memory.held_latest(&up).filter(|t| t.expires_at > now).map(|t| t.access_token.clone());
        }
        let s = cached?.to_secret();
        let uid = upstream.metadata.uid.as_deref().unwrap_or_default();
        let stored = Stored::of(&s, upstream.spec.target.template.merge_policy, uid);
        (stored.owner.as_deref() == Some(upstream.name_any().as_str()) && stored.intact && stored.valid_at(now))
            .then(|| secret::token_of(&s))
            .flatten()
    }

    /// The data of one credential Secret: cached while its version has not moved, else read
    /// once for every TokenSource that asks meanwhile.
    async fn credential_secret(&self, ns: &str, name: &str) -> Result<Arc<BTreeMap<String, Vec<u8>>>, Error> {
        let key = (ns.to_string(), name.to_string());
        let slot = self.credentials.slot(&key);
        let mut cached = slot.lock().await;
        let current = self.versions.get(ns, name);
        if let (Some(c), Some(v)) = (cached.as_ref(), current.as_deref())
            && c.resource_version == v
        {
            return Ok(c.data.clone());
        }
        match self.api::<Secret>(ns).get_opt(name).await.map_err(Error::Kube)? {
            Some(s) if s.type_.as_deref().is_some_and(api_credential_type) => {
                *cached = None;
                Err(Error::CredentialsInvalid(format!(
                    "Secret {name:?} is of type {}: it holds a credential for the Kubernetes API itself, which is never sent to a token endpoint (for a ServiceAccount token a provider accepts, use oauth2.clientAuth.type ServiceAccountToken or a token exchange: the operator requests one for the provider's audience)",
                    s.type_.as_deref().unwrap_or_default()
                )))
            }
            Some(s) => {
                let resource_version = s.metadata.resource_version.unwrap_or_default();
                self.versions.remember(ns, name, &resource_version);
                let data: Arc<BTreeMap<String, Vec<u8>>> =
                    Arc::new(s.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect());
                *cached = Some(CachedSecret { resource_version, data: data.clone() });
                Ok(data)
            }
            None => {
                *cached = None;
                Err(Error::CredentialsNotFound(format!("Secret {name:?} not found")))
            }
        }
    }

    /// Forgets cached credential Secrets (and their versions) that nothing refers to any more,
    /// once the cache has grown well past what the TokenSources need.
    fn prune(&self) {
        let limit = self.sources.len() * 4 + 64;
        let mut secrets = self.credentials.secrets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if secrets.len() <= limit && self.versions.len() <= limit {
            return;
        }
        let sources = self.sources.state();
        let referenced: HashSet<(String, String)> = sources
            .iter()
            .flat_map(|ts| {
                let ns = ts.namespace().unwrap_or_default();
                ts.spec.secret_refs().into_iter().map(move |r| (ns.clone(), r.name))
            })
            .collect();
        secrets.retain(|k, _| referenced.contains(k));
        drop(secrets);
        self.versions.retain(&self.references);
    }
}
