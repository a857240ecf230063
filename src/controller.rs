//! The reconciler: load -> validate -> decide -> fetch -> apply -> status, driven by watches of
//! TokenSources, the Secrets they read and the Secrets they write, and requeued for exactly the
//! next refresh time.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::{Stream, StreamExt};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, PartialObjectMeta, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::mpsc;

use crate::admin::Health;
use crate::crd::{Condition, Failure, TokenSource, TokenSourceStatus};
use crate::error::{Error, ProviderError};
use crate::metrics::{HostLabels, Metrics, ResultLabels};
use crate::providers::{self, Credentials};
use crate::response::{Reader, Token};
use crate::schedule::{self, Policy};
use crate::secret::{self, Stored};
use crate::transport::Transport;

/// The field manager for everything the operator writes.
pub const MANAGER: &str = "tokensource-operator";

/// How the controller runs.
#[derive(Clone, Debug)]
pub struct Config {
    /// Watch only this namespace; all namespaces when unset.
    pub namespace: Option<String>,
    /// How long before expiry a new token must be in the Secret at the latest.
    pub propagation_margin: Duration,
    /// Allow `http://` token endpoints (tests and local sandboxes only).
    pub allow_http: bool,
    /// How many TokenSources are reconciled at once.
    pub concurrency: u16,
    pub transport: crate::transport::Options,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            namespace: None,
            propagation_margin: Duration::from_secs(120),
            allow_http: false,
            concurrency: 16,
            transport: crate::transport::Options::default(),
        }
    }
}

/// What every reconcile shares: the client, the caches and the token transport.
pub struct Context {
    client: Client,
    config: Config,
    transport: Transport,
    sources: Store<TokenSource>,
    targets: Store<Secret>,
    secret_meta: Store<PartialObjectMeta<Secret>>,
    credentials: tokio::sync::Mutex<HashMap<(String, String), CachedSecret>>,
    /// The last failed attempt per TokenSource, and what produced it: the backoff holds even when
    /// a reconcile sees a cached object from before its own status write.
    failures: std::sync::Mutex<HashMap<ObjectRef<TokenSource>, FailureMemory>>,
    /// The last token this instance wrote per TokenSource, for the same reason: a cache that has
    /// not caught up with the write must not cause a second fetch.
    issued: std::sync::Mutex<HashMap<ObjectRef<TokenSource>, Stored>>,
    references: Arc<References>,
    /// When the Ready gauge was last counted (it walks every TokenSource).
    ready_counted: std::sync::Mutex<std::time::Instant>,
    recorder: Recorder,
    pub metrics: Arc<Metrics>,
}

#[derive(Clone, Debug)]
struct FailureMemory {
    fingerprint: String,
    retry_at: Timestamp,
    failures: u32,
}

struct CachedSecret {
    resource_version: String,
    data: BTreeMap<String, Vec<u8>>,
}

fn ts_ref(ts: &TokenSource) -> ObjectRef<TokenSource> {
    ObjectRef::from_obj(ts)
}

fn secret_ref(ns: &str, name: &str) -> ObjectRef<Secret> {
    ObjectRef::new(name).within(ns)
}

fn jitter() -> f64 {
    rand::random::<f64>()
}

fn until(now: Timestamp, at: Timestamp) -> Duration {
    Duration::try_from(at.duration_since(now).max(SignedDuration::ZERO)).unwrap_or_default()
}

/// Sets a condition; `lastTransitionTime` changes only when the status does.
pub fn set_condition(conds: &mut Vec<Condition>, new: Condition) {
    match conds.iter_mut().find(|c| c.type_ == new.type_) {
        Some(c) => {
            let time =
                if c.status == new.status { c.last_transition_time.clone() } else { new.last_transition_time.clone() };
            *c = Condition { last_transition_time: time, ..new };
        }
        None => conds.push(new),
    }
}

fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    Condition {
        type_: type_.into(),
        status: if status { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        last_transition_time: now.to_string(),
        observed_generation: generation,
    }
}

/// The result of one reconcile, before it is written.
struct Outcome {
    status: TokenSourceStatus,
    requeue: Option<Duration>,
    event: Option<(EventType, String, String)>,
}

impl Context {
    fn api<K>(&self, ns: &str) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        Api::namespaced(self.client.clone(), ns)
    }

    /// Reads the credential Secrets a spec refers to, from a cache kept fresh by resourceVersion.
    async fn credentials(&self, ts: &TokenSource) -> Result<Credentials, Error> {
        let ns = ts.namespace().unwrap_or_default();
        let mut creds = Credentials::default();
        let mut cache = self.credentials.lock().await;
        for r in ts.spec.secret_refs() {
            let key = (ns.clone(), r.name.clone());
            let current_rv = self
                .secret_meta
                .get(&ObjectRef::new(&r.name).within(&ns))
                .and_then(|m| m.metadata.resource_version.clone());
            let fresh = matches!((cache.get(&key), &current_rv), (Some(c), Some(rv)) if &c.resource_version == rv);
            if !fresh {
                match self.api::<Secret>(&ns).get_opt(&r.name).await.map_err(Error::Kube)? {
                    Some(s) => {
                        let data = s.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect();
                        cache.insert(
                            key.clone(),
                            CachedSecret { resource_version: s.metadata.resource_version.unwrap_or_default(), data },
                        );
                    }
                    None => {
                        cache.remove(&key);
                        return Err(Error::ReadCredentials(format!("Secret {:?} not found", r.name)));
                    }
                }
            }
            let value = cache
                .get(&key)
                .and_then(|c| c.data.get(&r.key))
                .ok_or_else(|| Error::ReadCredentials(format!("Secret {:?} has no key {:?}", r.name, r.key)))?;
            creds.insert(r, value.clone());
        }
        self.prune_caches(&mut cache);
        Ok(creds)
    }

    /// Sets the Ready gauge, at most every five seconds: counting walks every TokenSource.
    fn count_ready(&self) {
        let mut last = self.ready_counted.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.elapsed() < Duration::from_secs(5) {
            return;
        }
        *last = std::time::Instant::now();
        let ready = self
            .sources
            .state()
            .iter()
            .filter(|t| {
                t.status.as_ref().is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .count();
        self.metrics.ready_sources.set(ready as i64);
    }

    /// Forgets cached credential Secrets and failure fingerprints nothing refers to any more,
    /// once the caches have grown well past what the TokenSources need.
    fn prune_caches(&self, cache: &mut HashMap<(String, String), CachedSecret>) {
        if cache.len() <= self.sources.len() * 4 + 64 {
            return;
        }
        let sources = self.sources.state();
        let referenced: std::collections::HashSet<(String, String)> = sources
            .iter()
            .flat_map(|ts| {
                let ns = ts.namespace().unwrap_or_default();
                ts.spec.secret_refs().into_iter().map(move |r| (ns.clone(), r.name))
            })
            .collect();
        cache.retain(|k, _| referenced.contains(k));
        let live: std::collections::HashSet<ObjectRef<TokenSource>> =
            sources.iter().map(|ts| ObjectRef::from_obj(&**ts)).collect();
        self.failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner).retain(|k, _| live.contains(k));
        self.issued.lock().unwrap_or_else(std::sync::PoisonError::into_inner).retain(|k, _| live.contains(k));
        self.references.retain(&live);
    }

    /// The target Secret: from the cache, or from the API when the cache does not have it (a
    /// Secret the operator did not create carries no label and is not cached).
    async fn target(&self, ts: &TokenSource) -> Result<Option<Secret>, Error> {
        let ns = ts.namespace().unwrap_or_default();
        let name = &ts.spec.target.secret_name;
        if let Some(s) = self.targets.get(&secret_ref(&ns, name)) {
            return Ok(Some((*s).clone()));
        }
        self.api::<Secret>(&ns).get_opt(name).await.map_err(Error::Kube)
    }

    /// Follows the bearer chain: the upstream TokenSource must exist and the chain must not loop.
    fn upstream(&self, ts: &TokenSource) -> Result<Option<Arc<TokenSource>>, Error> {
        let Some(first) = ts.spec.upstream() else { return Ok(None) };
        let ns = ts.namespace().unwrap_or_default();
        let me = ts.name_any();
        if first == me {
            return Err(Error::InvalidSpec("http.auth.bearer.tokenSourceRef refers to this TokenSource itself".into()));
        }
        let get = |name: &str| self.sources.get(&ObjectRef::new(name).within(&ns));
        let upstream =
            get(first).ok_or_else(|| Error::WaitingForUpstream(format!("TokenSource {first:?} not found")))?;
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
    fn upstream_token(&self, upstream: &TokenSource, now: Timestamp) -> Option<String> {
        let ns = upstream.namespace().unwrap_or_default();
        let s = self.targets.get(&secret_ref(&ns, &upstream.spec.target.secret_name))?;
        let stored = Stored::of(&s);
        (stored.owner.as_deref() == Some(upstream.name_any().as_str()) && stored.valid_at(now))
            .then(|| secret::token_of(&s))
            .flatten()
    }

    /// Adds the spec's client certificate and CA bundle to a request.
    async fn with_tls(
        &self,
        ts: &TokenSource,
        creds: &Credentials,
        mut request: providers::Request,
    ) -> Result<providers::Request, Error> {
        let Some(spec) = &ts.spec.tls else { return Ok(request) };
        let source = |r: crate::crd::SecretKeyRef| crate::crd::ValueSource { value: None, secret_key_ref: Some(r) };
        let mut tls = providers::Tls::default();
        if let Some((crt, key)) = ts.spec.client_certificate_refs() {
            let mut pem = creds.bytes(&source(crt), "tls.clientCertificateSecretRef")?;
            pem.push(b'\n');
            let key_pem = creds.bytes(&source(key), "tls.clientCertificateSecretRef")?;
            request.secrets.push(key_pem.clone());
            pem.extend(key_pem);
            tls.identity_pem = Some(pem);
        }
        if let Some(ca) = &spec.ca_bundle {
            tls.ca_pem = Some(match (&ca.secret_key_ref, &ca.config_map_key_ref) {
                (Some(r), None) => creds.bytes(&source(r.clone()), "tls.caBundle")?,
                (None, Some(r)) => {
                    let ns = ts.namespace().unwrap_or_default();
                    let cm = self
                        .api::<k8s_openapi::api::core::v1::ConfigMap>(&ns)
                        .get_opt(&r.name)
                        .await
                        .map_err(Error::Kube)?
                        .ok_or_else(|| {
                            Error::ReadCredentials(format!("tls.caBundle: ConfigMap {:?} not found", r.name))
                        })?;
                    cm.data
                        .and_then(|d| d.get(&r.key).cloned())
                        .ok_or_else(|| {
                            Error::ReadCredentials(format!(
                                "tls.caBundle: ConfigMap {:?} has no key {:?}",
                                r.name, r.key
                            ))
                        })?
                        .into_bytes()
                }
                _ => {
                    return Err(Error::InvalidSpec(
                        "tls.caBundle: set exactly one of secretKeyRef and configMapKeyRef".into(),
                    ));
                }
            });
        }
        crate::transport::check_tls(&tls).map_err(|e| Error::ReadCredentials(format!("tls: {e}")))?;
        request.tls = Some(tls);
        Ok(request)
    }

    async fn fetch(
        &self,
        request: &providers::Request,
        reader: &Reader,
        default_lifetime: Option<SignedDuration>,
    ) -> Result<Token, ProviderError> {
        let host = request.url.host_str().unwrap_or_default().to_string();
        let started = std::time::Instant::now();
        let result =
            self.transport.send(request).await.and_then(|body| reader.read(&body, default_lifetime, Timestamp::now()));
        self.metrics.token_request_seconds.observe(started.elapsed().as_secs_f64());
        let label = match &result {
            Ok(_) => "Success".to_string(),
            Err(e) => e.reason().to_string(),
        };
        self.metrics.token_requests.get_or_create(&HostLabels { host, result: label }).inc();
        result
    }
}

/// What the pure validation step yields.
struct Plan {
    policy: Policy,
    reader: Reader,
    default_lifetime: Option<SignedDuration>,
}

/// Checks everything about the spec that needs no I/O.
fn validate(ts: &TokenSource, config: &Config) -> Result<Plan, Error> {
    let spec = &ts.spec;
    match (&spec.oauth2, &spec.http) {
        (Some(_), None) | (None, Some(_)) => {}
        _ => return Err(Error::InvalidSpec("set exactly one of spec.oauth2 and spec.http".into())),
    }
    let policy = Policy::new(spec.refresh.as_ref(), config.propagation_margin)?;
    let default_lifetime =
        spec.refresh.as_ref().and_then(|r| r.default_lifetime.as_deref()).map(schedule::parse_duration).transpose()?;
    let reader = Reader::new(spec.response.as_ref())?;
    secret::check_templates(ts)?;
    if let Some(o) = &spec.oauth2 {
        providers::parse_url("oauth2.tokenUrl", &o.token_url, config.allow_http)?;
    }
    if let Some(h) = &spec.http {
        providers::parse_url("http.url", &h.url, config.allow_http)?;
    }
    Ok(Plan { policy, reader, default_lifetime })
}

/// Why a new token is needed, or `None` when the stored one is good until `refresh_at`.
#[derive(Debug, PartialEq)]
pub enum Decision {
    Keep { refresh_at: Timestamp },
    Fetch { why: &'static str },
}

/// The pure decision: keep the stored token, or fetch one. The renewal time of a stored token is
/// recomputed, not read back from status, with the token's own fixed jitter: every reconcile and
/// every restart arrives at the same time.
pub fn decide(stored: Option<&Stored>, fingerprint: &str, uid: &str, policy: &Policy, now: Timestamp) -> Decision {
    let Some(s) = stored.filter(|s| s.has_token) else { return Decision::Fetch { why: "NoToken" } };
    if s.fingerprint.as_deref() != Some(fingerprint) {
        return Decision::Fetch { why: "SpecOrCredentialsChanged" };
    }
    let (Some(expires), Some(issued)) = (s.expires_at, s.refreshed_at) else {
        return Decision::Fetch { why: "NoToken" };
    };
    if expires <= now {
        return Decision::Fetch { why: "Expired" };
    }
    let refresh_at = policy.refresh_at(issued, expires, secret::jitter_for(uid, issued));
    if refresh_at <= now {
        return Decision::Fetch { why: "RenewalDue" };
    }
    Decision::Keep { refresh_at }
}

impl Context {
    async fn attempt(&self, ts: &TokenSource, now: Timestamp) -> Result<Outcome, Error> {
        let generation = ts.meta().generation;
        let old = ts.status.clone().unwrap_or_default();
        let mut status = old.clone();
        status.observed_generation = generation;
        let target = self.target(ts).await?;
        let cached = target.as_ref().map(Stored::of);
        let mine = self.issued.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&ts_ref(ts)).cloned();
        let stored = match (cached, mine) {
            (Some(c), Some(m)) if c.owner == m.owner && c.refreshed_at < m.refreshed_at => Some(m),
            (c, _) => c,
        };
        let name = ts.name_any();
        let secret_ok = stored.as_ref().is_none_or(|s| s.owner.as_deref() == Some(name.as_str()));
        let valid_until = stored.as_ref().filter(|s| secret_ok && s.valid_at(now)).and_then(|s| s.expires_at);

        let prepared = async {
            if !secret_ok {
                return Err(Error::SecretConflict(ts.spec.target.secret_name.clone()));
            }
            let plan = validate(ts, &self.config)?;
            let upstream = self.upstream(ts)?;
            let creds = self.credentials(ts).await?;
            Ok((plan, upstream, creds))
        }
        .await;
        let (plan, upstream, creds) = match prepared {
            Ok(p) => p,
            Err(e) => return Ok(self.failed(ts, status, &e, now, valid_until, None)),
        };
        let fingerprint = secret::fingerprint(ts, &creds);
        let uid = ts.meta().uid.clone().unwrap_or_default();
        let decision = decide(stored.as_ref(), &fingerprint, &uid, &plan.policy, now);
        let why = match decision {
            Decision::Keep { refresh_at } => {
                self.forget_failure(ts);
                return Ok(self.ready(ts, status, stored.as_ref(), refresh_at, now, None));
            }
            Decision::Fetch { why } => why,
        };
        // Back off after failures, unless what produced them changed.
        if let Some(retry_at) = self.backoff_pending(ts, &old, &fingerprint, now) {
            status.next_refresh_at = Some(retry_at.to_string());
            return Ok(Outcome { status, requeue: Some(until(now, retry_at)), event: None });
        }
        tracing::info!(tokensource = %name, namespace = ts.namespace().unwrap_or_default(), reason = why, "requesting a token");
        let upstream_token = upstream.as_ref().and_then(|u| self.upstream_token(u, now));
        let request = match (&ts.spec.oauth2, &ts.spec.http) {
            (Some(o), _) => providers::oauth2::request(o, &creds, self.config.allow_http),
            (None, Some(h)) => providers::http::request(h, &creds, upstream_token.as_deref(), self.config.allow_http),
            (None, None) => Err(Error::InvalidSpec("set exactly one of spec.oauth2 and spec.http".into())),
        };
        let request = match request {
            Ok(r) => self.with_tls(ts, &creds, r).await,
            Err(e) => Err(e),
        };
        let request = match request {
            Ok(r) => r,
            Err(e) => return Ok(self.failed(ts, status, &e, now, valid_until, Some(fingerprint))),
        };
        let token = match self.fetch(&request, &plan.reader, plan.default_lifetime).await {
            Ok(t) => t,
            Err(e) => return Ok(self.failed(ts, status, &Error::FetchToken(e), now, valid_until, Some(fingerprint))),
        };
        let desired = match secret::desired(ts, &token, &fingerprint) {
            Ok(d) => d,
            Err(e) => return Ok(self.failed(ts, status, &e, now, valid_until, Some(fingerprint))),
        };
        let ns = ts.namespace().unwrap_or_default();
        let params = PatchParams::apply(MANAGER).force();
        let mut applied = desired.clone();
        applied.metadata.managed_fields = None;
        let patch = json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": applied.metadata,
            "type": applied.type_,
            "data": applied.data,
        });
        self.api::<Secret>(&ns)
            .patch(&ts.spec.target.secret_name, &params, &Patch::Apply(&patch))
            .await
            .map_err(Error::ApplySecret)?;
        self.metrics.secret_writes.inc();
        self.forget_failure(ts);
        let refresh_at =
            plan.policy.refresh_at(token.issued_at, token.expires_at, secret::jitter_for(&uid, token.issued_at));
        let issued = Stored {
            owner: Some(name.clone()),
            fingerprint: Some(fingerprint),
            expires_at: Some(token.expires_at),
            refreshed_at: Some(token.issued_at),
            has_token: true,
            token_type: token.token_type.clone(),
            scope: token.scope.clone(),
        };
        self.issued.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(ts_ref(ts), issued.clone());
        let was_ready = old.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True");
        let event = (!was_ready).then(|| {
            (
                EventType::Normal,
                "TokenIssued".to_string(),
                format!("Wrote a token to Secret {:?}; it expires at {}", ts.spec.target.secret_name, token.expires_at),
            )
        });
        Ok(self.ready(ts, status, Some(&issued), refresh_at, now, event))
    }

    fn ready(
        &self,
        ts: &TokenSource,
        mut status: TokenSourceStatus,
        stored: Option<&Stored>,
        refresh_at: Timestamp,
        now: Timestamp,
        event: Option<(EventType, String, String)>,
    ) -> Outcome {
        let generation = ts.meta().generation;
        let expires = stored.and_then(|s| s.expires_at);
        status.expires_at = expires.map(|e| e.to_string());
        status.refreshed_at = stored.and_then(|s| s.refreshed_at).map(|r| r.to_string());
        status.token_type = stored.and_then(|s| s.token_type.clone());
        status.scopes = stored.and_then(|s| s.scope.clone());
        status.next_refresh_at = Some(refresh_at.to_string());
        status.failures = 0;
        status.last_failure = None;
        let msg = format!("Secret {:?} holds a valid token", ts.spec.target.secret_name);
        set_condition(&mut status.conditions, condition("Ready", true, "TokenValid", msg, generation, now));
        set_condition(
            &mut status.conditions,
            condition("Degraded", false, "AsExpected", String::new(), generation, now),
        );
        Outcome { status, requeue: Some(until(now, refresh_at)), event }
    }

    /// Records a failure: conditions, backoff, and a Warning Event. A still-valid token keeps
    /// Ready true; the failure shows in `Degraded` and `lastFailure`.
    fn failed(
        &self,
        ts: &TokenSource,
        mut status: TokenSourceStatus,
        err: &Error,
        now: Timestamp,
        valid_until: Option<Timestamp>,
        fingerprint: Option<String>,
    ) -> Outcome {
        let generation = ts.meta().generation;
        let reason = err.reason();
        let message = err.to_string();
        tracing::warn!(tokensource = %ts.name_any(), namespace = ts.namespace().unwrap_or_default(), reason, error = %message, "no new token");
        let upstream_gone = matches!(err, Error::WaitingForUpstream(m) if m.ends_with("not found"));
        let keep_ready = valid_until.is_some()
            && !matches!(err, Error::InvalidSpec(_) | Error::SecretConflict(_) | Error::RenderSecret(_))
            && !upstream_gone;
        // The same failure seen again without a new attempt (a spec or credential problem found
        // on every reconcile) is not a new failure: count and time stay, so status settles.
        let repeated = err.retry_class().is_none()
            && status.last_failure.as_ref().is_some_and(|f| f.reason == reason && f.message == message);
        let remembered = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&ts_ref(ts))
            .map_or(0, |f| f.failures);
        if !repeated {
            status.failures = status.failures.max(remembered).saturating_add(1);
            status.last_failure =
                Some(Failure { time: now.to_string(), reason: reason.into(), message: message.clone() });
        }
        if keep_ready {
            let until = valid_until.map(|v| v.to_string()).unwrap_or_default();
            let msg = format!(
                "Secret {:?} holds a token valid until {until}; renewing it failed",
                ts.spec.target.secret_name
            );
            set_condition(&mut status.conditions, condition("Ready", true, "TokenValid", msg, generation, now));
        } else {
            set_condition(&mut status.conditions, condition("Ready", false, reason, message.clone(), generation, now));
        }
        set_condition(&mut status.conditions, condition("Degraded", true, reason, message.clone(), generation, now));
        let requeue = match err.retry_class() {
            Some(class) => {
                let retry_after = match err {
                    Error::FetchToken(p) => p.retry_after(),
                    _ => None,
                };
                let at = schedule::retry_at(now, status.failures, class, retry_after, valid_until, jitter());
                if let Some(fingerprint) = fingerprint {
                    let memory = FailureMemory { fingerprint, retry_at: at, failures: status.failures };
                    self.failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(ts_ref(ts), memory);
                }
                status.next_refresh_at = Some(at.to_string());
                Some(until(now, at))
            }
            None => {
                // Nothing to retry until the spec or a Secret changes; a valid token still needs
                // attention before it expires.
                status.next_refresh_at = None;
                valid_until.map(|v| until(now, v))
            }
        };
        if !keep_ready {
            status.expires_at = valid_until.map(|v| v.to_string()).or(status.expires_at);
        }
        let event = (!repeated).then(|| (EventType::Warning, reason.to_string(), message));
        Outcome { status, requeue, event }
    }

    fn forget_failure(&self, ts: &TokenSource) {
        self.failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&ts_ref(ts));
    }

    /// The pending retry time after a failure, when nothing that produced it has changed. This
    /// instance's own record decides; after a restart, the status does.
    fn backoff_pending(
        &self,
        ts: &TokenSource,
        status: &TokenSourceStatus,
        fingerprint: &str,
        now: Timestamp,
    ) -> Option<Timestamp> {
        let failures = self.failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(f) = failures.get(&ts_ref(ts)) {
            return (f.fingerprint == fingerprint && f.retry_at > now).then_some(f.retry_at);
        }
        if status.failures == 0 || status.observed_generation != ts.meta().generation {
            return None;
        }
        status.next_refresh_at.as_deref()?.parse::<Timestamp>().ok().filter(|t| *t > now)
    }
}

async fn reconcile(ts: Arc<TokenSource>, ctx: Arc<Context>) -> Result<Action, Error> {
    if ts.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    ctx.references.record(&ts);
    let now = schedule::whole_second(Timestamp::now());
    let outcome = match ctx.attempt(&ts, now).await {
        Ok(o) => o,
        Err(e) => {
            let valid_until = None;
            ctx.failed(&ts, ts.status.clone().unwrap_or_default(), &e, now, valid_until, None)
        }
    };
    let result = outcome.status.last_failure.as_ref().filter(|_| outcome.status.failures > 0).map(|f| f.reason.clone());
    ctx.metrics.reconciles.get_or_create(&ResultLabels { result: result.unwrap_or_else(|| "Success".into()) }).inc();
    if ts.status.as_ref() != Some(&outcome.status) {
        let ns = ts.namespace().unwrap_or_default();
        let patch = json!({
            "apiVersion": TokenSource::api_version(&()),
            "kind": TokenSource::kind(&()),
            "status": outcome.status,
        });
        ctx.api::<TokenSource>(&ns)
            .patch_status(&ts.name_any(), &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch))
            .await
            .map_err(Error::UpdateStatus)?;
        ctx.metrics.status_writes.inc();
    }
    if let Some((type_, reason, note)) = outcome.event {
        let ev = Event { type_, reason, note: Some(note), action: "GetToken".into(), secondary: None };
        if let Err(e) = ctx.recorder.publish(&ev, &ts.object_ref(&())).await {
            tracing::warn!(error = %e, "could not publish an Event");
        }
    }
    Ok(match outcome.requeue {
        Some(d) => Action::requeue(d.max(Duration::from_millis(100))),
        None => Action::await_change(),
    })
}

fn error_policy(_ts: Arc<TokenSource>, err: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(error = %err, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(2) + Duration::from_millis((jitter() * 3000.0) as u64))
}

/// What a TokenSource refers to, as index keys.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum RefKey {
    /// A Secret it reads credentials from or writes its token to.
    Secret(String, String),
    /// The TokenSource it takes its bearer token from.
    Upstream(String, String),
    /// The TokenSource itself, by name.
    Source(String, String),
}

/// Which TokenSources refer to which Secrets and upstream TokenSources, so a Secret event finds
/// the TokenSources it affects without scanning them all. Every reconcile records its
/// TokenSource's references; references only change with the spec, and a spec change reconciles.
#[derive(Default)]
pub struct References {
    inner: std::sync::Mutex<ReferencesInner>,
}

#[derive(Default)]
struct ReferencesInner {
    by_source: HashMap<ObjectRef<TokenSource>, Vec<RefKey>>,
    by_key: HashMap<RefKey, std::collections::HashSet<ObjectRef<TokenSource>>>,
}

impl References {
    fn lock(&self) -> std::sync::MutexGuard<'_, ReferencesInner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records what `ts` refers to now.
    pub fn record(&self, ts: &TokenSource) {
        let ns = ts.namespace().unwrap_or_default();
        let mut keys: Vec<RefKey> =
            ts.spec.secret_refs().into_iter().map(|r| RefKey::Secret(ns.clone(), r.name)).collect();
        keys.push(RefKey::Secret(ns.clone(), ts.spec.target.secret_name.clone()));
        keys.push(RefKey::Source(ns.clone(), ts.name_any()));
        if let Some(up) = ts.spec.upstream() {
            keys.push(RefKey::Upstream(ns.clone(), up.to_string()));
        }
        keys.sort_by_key(|k| format!("{k:?}"));
        keys.dedup();
        let r = ts_ref(ts);
        let mut inner = self.lock();
        if inner.by_source.get(&r) == Some(&keys) {
            return;
        }
        Self::remove(&mut inner, &r);
        for k in &keys {
            inner.by_key.entry(k.clone()).or_default().insert(r.clone());
        }
        inner.by_source.insert(r, keys);
    }

    fn remove(inner: &mut ReferencesInner, r: &ObjectRef<TokenSource>) {
        for k in inner.by_source.remove(r).unwrap_or_default() {
            if let Some(set) = inner.by_key.get_mut(&k) {
                set.remove(r);
                if set.is_empty() {
                    inner.by_key.remove(&k);
                }
            }
        }
    }

    /// Forgets TokenSources that no longer exist.
    fn retain(&self, live: &std::collections::HashSet<ObjectRef<TokenSource>>) {
        let mut inner = self.lock();
        let gone: Vec<ObjectRef<TokenSource>> =
            inner.by_source.keys().filter(|r| !live.contains(*r)).cloned().collect();
        for r in gone {
            Self::remove(&mut inner, &r);
        }
    }

    /// The TokenSources affected by a change to a Secret: those that read or write it, and for a
    /// target Secret its owner and every TokenSource chained to the owner.
    pub fn affected(&self, ns: &str, name: &str, owner: Option<&str>) -> Vec<ObjectRef<TokenSource>> {
        let inner = self.lock();
        let mut keys = vec![RefKey::Secret(ns.into(), name.into())];
        if let Some(o) = owner {
            keys.push(RefKey::Source(ns.into(), o.into()));
            keys.push(RefKey::Upstream(ns.into(), o.into()));
        }
        let mut out: Vec<ObjectRef<TokenSource>> =
            keys.iter().filter_map(|k| inner.by_key.get(k)).flat_map(|set| set.iter().cloned()).collect();
        out.sort_by_key(|r| r.to_string());
        out.dedup();
        out
    }
}

fn scoped<K>(client: Client, ns: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    match ns {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    }
}

/// Forwards the objects a watch touches into the trigger channel.
fn forward<K, S>(
    stream: S,
    tx: mpsc::Sender<ObjectRef<TokenSource>>,
    map: impl Fn(&K) -> Vec<ObjectRef<TokenSource>> + Send + 'static,
) where
    K: Send + 'static,
    S: Stream<Item = Result<K, watcher::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(item) = stream.next().await {
            match item {
                Ok(obj) => {
                    for r in map(&obj) {
                        if tx.send(r).await.is_err() {
                            return;
                        }
                    }
                }
                Err(e) => tracing::debug!(error = %e, "watch error; retrying"),
            }
        }
    });
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    client: Client,
    config: Config,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), StartError> {
    let ns = config.namespace.clone();
    let sources_api: Api<TokenSource> = scoped(client.clone(), ns.as_deref());
    // Fail fast with a clear message when the CRD is not installed.
    sources_api.list(&ListParams::default().limit(1)).await.map_err(|e| {
        StartError(format!(
            "cannot list TokenSources ({e}); is the CRD installed? (tokensource-operator crd | kubectl apply -f -)"
        ))
    })?;
    let secrets_api: Api<Secret> = scoped(client.clone(), ns.as_deref());
    let controller = Controller::new(sources_api, watcher::Config::default().any_semantic());
    let sources = controller.store();

    let (targets, targets_writer) = reflector::store();
    let selector = format!("{}={}", secret::MANAGED_BY_LABEL, secret::MANAGED_BY);
    let targets_stream =
        reflector::reflector(targets_writer, watcher(secrets_api, watcher::Config::default().labels(&selector)))
            .default_backoff()
            .touched_objects();
    let (secret_meta, meta_writer) = reflector::store();
    let meta_api: Api<PartialObjectMeta<Secret>> = match ns.as_deref() {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let meta_stream = reflector::reflector(meta_writer, watcher(meta_api, watcher::Config::default()))
        .default_backoff()
        .touched_objects();

    let (tx, rx) = mpsc::channel::<ObjectRef<TokenSource>>(4096);
    let references = Arc::new(References::default());
    let r1 = references.clone();
    forward(targets_stream, tx.clone(), move |s: &Secret| {
        let owner = s.labels().get(secret::NAME_LABEL).cloned();
        r1.affected(&s.namespace().unwrap_or_default(), &s.name_any(), owner.as_deref())
    });
    let r2 = references.clone();
    forward(meta_stream, tx, move |m: &PartialObjectMeta<Secret>| {
        r2.affected(&m.namespace().unwrap_or_default(), &m.name_any(), None)
    });
    targets.wait_until_ready().await.map_err(|e| StartError(e.to_string()))?;
    secret_meta.wait_until_ready().await.map_err(|e| StartError(e.to_string()))?;

    let transport = Transport::new(config.transport.clone()).map_err(|e| StartError(e.to_string()))?;
    let reporter = Reporter { controller: MANAGER.into(), instance: std::env::var("POD_NAME").ok() };
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client,
        transport,
        sources,
        targets,
        secret_meta,
        credentials: tokio::sync::Mutex::default(),
        failures: std::sync::Mutex::default(),
        issued: std::sync::Mutex::default(),
        references,
        ready_counted: std::sync::Mutex::new(std::time::Instant::now()),
        metrics: metrics.clone(),
        config: config.clone(),
    });
    health.ready.store(true, Ordering::Relaxed);
    tracing::info!(namespace = ns.as_deref().unwrap_or("<all>"), "controller running");
    controller
        .with_config(kube::runtime::controller::Config::default().concurrency(config.concurrency))
        .reconcile_on(tokio_stream::wrappers::ReceiverStream::new(rx))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|res| {
            ctx.count_ready();
            if let Err(e) = res {
                tracing::debug!(error = %e, "controller event");
            }
            futures::future::ready(())
        })
        .await;
    Ok(())
}

/// Why the controller could not start.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartError(pub String);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    fn stored(fp: &str, issued: i64, expires: i64) -> Stored {
        Stored {
            owner: Some("x".into()),
            fingerprint: Some(fp.into()),
            expires_at: Some(t(expires)),
            refreshed_at: Some(t(issued)),
            has_token: true,
            ..Default::default()
        }
    }

    fn policy() -> Policy {
        Policy::new(None, Duration::from_secs(120)).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn keeps_a_valid_token_with_a_stable_schedule() {
        let a = decide(Some(&stored("fp", 0, 3600)), "fp", "uid-1", &policy(), t(10));
        let Decision::Keep { refresh_at } = a else { panic!("{a:?}") };
        // Default: renew with a third left, up to a tenth of that window earlier.
        assert!(refresh_at <= t(2400) && refresh_at >= t(2280), "{refresh_at}");
        assert_eq!(
            decide(Some(&stored("fp", 0, 3600)), "fp", "uid-1", &policy(), t(500)),
            a,
            "same time on every reconcile"
        );
        let b = decide(Some(&stored("fp", 0, 3600)), "fp", "uid-2", &policy(), t(10));
        assert_ne!(a, b, "another TokenSource renews at another moment");
    }

    #[test]
    fn fetches_when_needed() {
        assert_eq!(decide(None, "fp", "u", &policy(), t(0)), Decision::Fetch { why: "NoToken" });
        assert_eq!(
            decide(Some(&stored("old", 0, 3600)), "fp", "u", &policy(), t(10)),
            Decision::Fetch { why: "SpecOrCredentialsChanged" }
        );
        assert_eq!(
            decide(Some(&stored("fp", 0, 3600)), "fp", "u", &policy(), t(2401)),
            Decision::Fetch { why: "RenewalDue" }
        );
        assert_eq!(
            decide(Some(&stored("fp", 0, 3600)), "fp", "u", &policy(), t(3600)),
            Decision::Fetch { why: "Expired" }
        );
    }

    fn source(name: &str, creds: &str, target: &str, upstream: Option<&str>) -> TokenSource {
        let auth = match upstream {
            Some(u) => json!({"bearer": {"tokenSourceRef": {"name": u}}}),
            None => {
                json!({"basic": {"username": {"value": "u"}, "password": {"secretKeyRef": {"name": creds, "key": "p"}}}})
            }
        };
        let mut ts: TokenSource = serde_json::from_value(json!({
            "apiVersion": "tokensource.dev/v1alpha1", "kind": "TokenSource",
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"http": {"url": "https://x.example/t", "auth": auth}, "target": {"secretName": target}}
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        ts.metadata.namespace = Some("ns".into());
        ts
    }

    #[test]
    fn references_find_affected_sources_without_a_scan() {
        let refs = References::default();
        let a = source("a", "creds", "a-token", None);
        let b = source("b", "other", "b-token", Some("a"));
        refs.record(&a);
        refs.record(&b);
        let names = |v: Vec<ObjectRef<TokenSource>>| v.into_iter().map(|r| r.name).collect::<Vec<_>>();
        assert_eq!(names(refs.affected("ns", "creds", None)), vec!["a"]);
        assert_eq!(names(refs.affected("other-ns", "creds", None)), Vec::<String>::new());
        // a's target Secret changed: a itself and b, which is chained to a.
        assert_eq!(names(refs.affected("ns", "a-token", Some("a"))), vec!["a", "b"]);
        // A spec change moves a's credentials to another Secret.
        refs.record(&source("a", "rotated", "a-token", None));
        assert!(refs.affected("ns", "creds", None).is_empty());
        assert_eq!(names(refs.affected("ns", "rotated", None)), vec!["a"]);
        refs.retain(&[ts_ref(&b)].into_iter().collect());
        assert!(refs.affected("ns", "rotated", None).is_empty());
    }

    #[test]
    fn conditions_keep_their_transition_time() {
        let mut conds = vec![];
        set_condition(&mut conds, condition("Ready", true, "A", "m".into(), Some(1), t(0)));
        set_condition(&mut conds, condition("Ready", true, "B", "n".into(), Some(2), t(5)));
        assert_eq!(conds.len(), 1);
        assert_eq!(conds[0].last_transition_time, t(0).to_string());
        assert_eq!(conds[0].reason, "B");
        set_condition(&mut conds, condition("Ready", false, "C", "o".into(), Some(2), t(9)));
        assert_eq!(conds[0].last_transition_time, t(9).to_string());
    }
}
