//! One reconcile of one TokenSource, as a pipeline:
//! load → validate → decide → (keep | fetch → render → apply) → status, with every failure
//! going through the one failure policy.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};

use super::decide::{self, Decision};
use super::failure::{self, FailureInput};
use super::flight::{FlightKey, Poll};
use super::memory::{FailureRecord, Held};
use super::status::{self, Note, Outcome};
use super::{Context, validate};
use crate::conditions::{ConditionType, Reason};
use crate::crd::{CreationPolicy, REFRESH_REQUESTED_AT_ANNOTATION, TokenSource, TokenSourceStatus};
use crate::error::Error;
use crate::metrics::ResultLabels;
use crate::redact::Redactor;
use crate::response::Token;
use crate::schedule;
use crate::secret::{self, Stored};

/// What became of the Secret a reconcile found, when no new token is written to it now.
enum Reshaped {
    /// It stays as it is.
    Unchanged,
    /// The token in hand was written to it again (it was deleted or changed, or today's shape
    /// differs).
    Written,
    /// Today's shape differs, and comes with the next token.
    Pending,
}

/// What a reconcile that needs a token has: the token, or what it waits for.
enum Got {
    Token(Arc<Token>),
    Waiting(String),
}

/// The host of the spec's token endpoint, for messages.
fn endpoint_host(ts: &TokenSource) -> String {
    let raw = ts.spec.oauth2.as_ref().map(|o| o.token_url.as_str()).or(ts.spec.http.as_ref().map(|h| h.url.as_str()));
    raw.and_then(|u| url::Url::parse(u).ok()).and_then(|u| u.host_str().map(String::from)).unwrap_or_default()
}

/// What a TokenSource whose request is in flight waits for.
fn in_flight(ts: &TokenSource) -> String {
    format!("a token request to {} is in flight", endpoint_host(ts))
}

/// How long a new TokenSource waits for its first token before its status says `Pending`.
const PENDING_GRACE: jiff::SignedDuration = jiff::SignedDuration::from_secs(3);

/// The shortest a token request may be given: even a nearly expired token gets a real attempt.
const MIN_ATTEMPT: Duration = Duration::from_secs(5);

/// A token request to make: what a flight's task needs.
struct Request<'a> {
    ts: &'a Arc<TokenSource>,
    plan: &'a validate::Plan,
    creds: &'a crate::credentials::Credentials,
    upstream: Option<String>,
    why: &'static str,
    uid: &'a str,
}

/// What the pipeline has learnt by the time it fails, for the failure policy.
#[derive(Default)]
struct Known {
    /// The expiry of the valid token the target Secret holds.
    valid_until: Option<Timestamp>,
    /// When the token this TokenSource wrote to the Secret expired, if it has.
    expired_at: Option<Timestamp>,
    /// Every secret value the TokenSource reads, and the chained token, once they are loaded.
    redactor: Redactor,
    /// The fingerprint of today's spec and credentials.
    fingerprint: Option<String>,
    /// The restart the workloads are owed, as the Secret records it.
    restart_owed: Option<Timestamp>,
    /// The generation the stored status was written for (a backoff it records holds for that
    /// generation only).
    recorded_generation: Option<i64>,
    /// A digest of the upstream token a chained request carries (never the token).
    upstream: Option<u64>,
    /// Today's owner policy and template are not in the Secret yet (its token could not be
    /// rendered again): the status does not claim today's generation as observed.
    shape_pending: bool,
    /// Today's write of the Secret: its shape over the Secret's version ([`FailureRecord::refused_write`]).
    write: Option<String>,
}

/// How long a reconcile waits for the cache to show this instance's own write of a Secret
/// before it reads the Secret from the API instead.
const CACHE_CATCH_UP: Duration = Duration::from_secs(5);

pub(super) async fn reconcile(ts: Arc<TokenSource>, ctx: Arc<Context>) -> Result<Action, Error> {
    if !ctx.config.leadership.is_leading() {
        return Ok(ctx.refused(&ts));
    }
    if ts.meta().deletion_timestamp.is_some() {
        return being_deleted(&ts, &ctx).await;
    }
    ctx.references.record(&ts);
    let exact = Timestamp::now();
    let now = schedule::whole_second(exact);
    // Times are whole seconds; a requeue counts from the exact time, or it would come up to a
    // second late.
    let truncated = Duration::try_from(exact.duration_since(now)).unwrap_or_default();
    let started = std::time::Instant::now();
    // A panic (a bug, triggered by this TokenSource's input) is this TokenSource's failure, not
    // the process's: every other TokenSource keeps being served.
    let attempt = guarded(ctx.attempt(&ts, Clock { now, exact }), || {
        ctx.metrics.reconcile_panics.inc();
        let error = Error::Internal(
            "the operator failed internally while reconciling this TokenSource (a bug: the operator's log has the place; please report it)".into(),
        );
        Some(ctx.failure(&ts, ts.status.clone().unwrap_or_default(), &error, Known::default(), now))
    })
    .await;
    let Some(mut outcome) = attempt else { return Ok(ctx.refused(&ts)) };
    let result = (outcome.status.failed_renewal_attempts > 0)
        .then(|| status::find(&outcome.status, ConditionType::Degraded).map(|c| c.reason.clone()))
        .flatten();
    // Leadership lost during the attempt: whatever it learnt is not written (the new leader
    // works it out again from the cluster).
    if !ctx.config.leadership.is_leading() {
        return Ok(ctx.refused(&ts));
    }
    // What a deferred outcome would add is not written: restarts and the audit wait for the
    // reconcile that writes (a restart done now would not be recorded, and be done again).
    if !outcome.deferred {
        ctx.rollout_restart(&ts, &mut outcome, now).await;
        ctx.audit_consumers(&ts, &mut outcome, now).await;
    }
    ctx.warn_inline_secrets(&ts).await;
    ctx.metrics.reconcile_seconds.observe(started.elapsed().as_secs_f64());
    ctx.metrics.reconciles.get_or_create(&ResultLabels { result: result.unwrap_or_else(|| "Success".into()) }).inc();
    if !outcome.deferred {
        match ctx.write_status(&ts, &outcome.status).await {
            Err(Error::NotLeader) => return Ok(ctx.refused(&ts)),
            written => written?,
        }
    }
    if let Some(note) = outcome.event {
        ctx.publish(&ts, note).await;
    }
    // Ready=True is looked at again when its token expires, whatever else is planned.
    let requeue = match (outcome.requeue, status::until_untrue(&outcome.status, now)) {
        (Some(r), Some(e)) => Some(r.min(e)),
        (r, e) => r.or(e),
    };
    // The requeue counts from now, when the reconcile ends, while `requeue` counts from `now`:
    // without this reconcile's own length (a slow status write, a restart) every renewal and
    // every expiry would be looked at that much late.
    let spent = truncated + started.elapsed();
    Ok(match requeue {
        Some(d) => Action::requeue(d.saturating_sub(spent).max(Duration::from_millis(100))),
        None => Action::await_change(),
    })
}

/// A TokenSource being deleted, held by finalizers (of a backup tool, a GitOps controller):
/// its token is not renewed any more, but its status stays true — `Ready` turns `False` when the
/// token expires, saying why nothing renews it.
async fn being_deleted(ts: &TokenSource, ctx: &Context) -> Result<Action, Error> {
    let exact = Timestamp::now();
    let now = schedule::whole_second(exact);
    let Some(mut status) = ts.status.clone() else { return Ok(Action::await_change()) };
    if let Some(left) = status::until_untrue(&status, exact) {
        let expires = status.expiration_time.as_ref().map(|t| t.0).filter(|e| *e <= now);
        let Some(expires) = expires else { return Ok(Action::requeue(left)) };
        let holders = status::cut(&ts.finalizers().join(", "));
        let mut expired = status::expired(&ts.spec.target.name, expires, ts.metadata.generation, now);
        expired.message = status::cut(&format!(
            "{}: the TokenSource is being deleted and waits for its finalizers ({holders}); tokens are not renewed meanwhile",
            expired.message
        ));
        status::set_condition(&mut status.conditions, expired);
        status.renewal_time = None;
        match ctx.write_status(ts, &status).await {
            Err(Error::NotLeader) => return Ok(ctx.refused(ts)),
            written => written?,
        }
    }
    Ok(Action::await_change())
}

/// A digest of an upstream token, to tell one from the next without keeping it.
fn digest(token: &str) -> u64 {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(token.as_bytes());
    u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

/// What `status.lastRefreshRequest` records of the annotation value `value`: the value itself
/// when it fits the field's 64 characters, else a digest of it (still one new token per value).
fn handled_marker(value: &str) -> String {
    use sha2::{Digest, Sha256};
    if value.chars().count() <= 64 {
        return value.to_string();
    }
    let digest = Sha256::digest(value.as_bytes());
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// A token that is not a scheduled renewal gets its first renewal spread over the last three
/// quarters of its keep time ([`schedule::Policy::first_refresh_at`]), recorded with it.
fn spread_first_renewal(mut token: Token, why: &str, policy: &schedule::Policy, uid: &str) -> Token {
    if why != "RenewalDue" && token.renew_at.is_none() {
        let jitter = schedule::jitter_for(uid, token.issued_at);
        token.renew_at = Some(policy.first_refresh_at(token.issued_at, token.expires_at, jitter));
    }
    token
}

/// The token without the provider's reply unless `keep`: most templates never read it, and the
/// reply is most of what a held token costs (10,000 held replies were 6 MiB).
fn without_unread_reply(mut token: Token, keep: bool) -> Token {
    if !keep {
        token.raw = serde_json::Value::Null;
    }
    token
}

/// The time of a reconcile: whole seconds for what it writes (Kubernetes times have no
/// fractions), and exact for whether a renewal is due.
#[derive(Clone, Copy)]
struct Clock {
    now: Timestamp,
    exact: Timestamp,
}

/// Runs `attempt`; if it panics, the outcome `on_panic` gives instead.
async fn guarded<T>(attempt: impl std::future::Future<Output = T>, on_panic: impl FnOnce() -> T) -> T {
    match AssertUnwindSafe(attempt).catch_unwind().await {
        Ok(v) => v,
        Err(_) => on_panic(),
    }
}

/// A reconcile that could not write its status is tried again in a few seconds.
pub(super) fn error_policy(_ts: Arc<TokenSource>, err: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(error = %err, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(2) + Duration::from_millis((rand::random::<f64>() * 3000.0) as u64))
}

impl Context {
    /// A reconcile this instance may not do now. A standby (or an instance that lost the Lease)
    /// drops it: taking over reconciles everything. A leader whose fence lapsed under a slow
    /// renewal keeps it for when the renewal succeeds ([`Refused`]).
    fn refused(&self, ts: &TokenSource) -> Action {
        let leadership = &self.config.leadership;
        if !leadership.holds_lease() {
            return Action::await_change();
        }
        let me = ObjectRef::from_obj(ts);
        self.refused.insert(me.clone());
        // Renewed meanwhile: its resumption may have been handled before the insert.
        if leadership.is_leading() && self.refused.remove(&me) {
            return Action::requeue(Duration::from_millis(100));
        }
        Action::await_change()
    }

    /// Reconciles `sharers` (of a new shared token, of a request that ended) soon. Never blocks a reconcile, and never
    /// drops one: what the queue cannot take now is sent by a task of its own.
    pub(super) fn wake(&self, sharers: Vec<ObjectRef<TokenSource>>) {
        let mut rest = sharers.into_iter();
        for r in rest.by_ref() {
            if let Err(tokio::sync::mpsc::error::TrySendError::Full(r)) = self.retrigger.try_send(r) {
                let tx = self.retrigger.clone();
                let later: Vec<_> = std::iter::once(r).chain(rest).collect();
                tokio::spawn(async move {
                    for r in later {
                        if tx.send(r).await.is_err() {
                            return;
                        }
                    }
                });
                return;
            }
        }
    }

    /// Runs the pipeline and turns its result, success or failure, into the outcome to write;
    /// `None` when this instance stopped leading on the way (nothing learnt is written).
    async fn attempt(self: &Arc<Self>, ts: &Arc<TokenSource>, clock: Clock) -> Option<Outcome> {
        let now = clock.now;
        let version = ts.resource_version().unwrap_or_default();
        let mut status = self
            .memory
            .newer_status(&ObjectRef::from_obj(&**ts), &version)
            .unwrap_or_else(|| ts.status.clone().unwrap_or_default());
        let recorded_generation = status.observed_generation;
        status.observed_generation = ts.meta().generation;
        // A new value of the annotation asks for one new token. What is recorded of it fits the
        // status field whatever the value (a tenant's typo must never make the status write
        // fail, which would stop every renewal of this TokenSource).
        let requested = ts.refresh_requested().map(|v| (v, handled_marker(v)));
        let pending = requested.filter(|(_, marker)| status.last_refresh_request.as_deref() != Some(marker.as_str()));
        let mut manual = None;
        if let Some((value, marker)) = pending {
            if value.parse::<Timestamp>().is_ok() {
                manual = Some(value);
            } else {
                status.last_refresh_request = Some(marker.clone());
                let shown: String = value.chars().take(64).collect();
                let cut = if shown.len() < value.len() { "…" } else { "" };
                let message = format!(
                    "ignored {REFRESH_REQUESTED_AT_ANNOTATION}={shown:?}{cut}: not an RFC 3339 time such as 2026-01-02T03:04:05Z"
                );
                self.publish(ts, Note { warning: true, reason: Reason::RefreshRequestInvalid, message }).await;
            }
        }
        // At most one manual refresh per renewal floor: annotating in a loop does not make a
        // provider call per value.
        let last_attempt = [status.last_renewal_time.as_ref(), status.last_failure_time.as_ref()]
            .into_iter()
            .flatten()
            .map(|t| t.0)
            .max();
        let manual_due = manual
            .and(last_attempt)
            .map(|last| schedule::add(last, schedule::MIN_RENEWAL_INTERVAL))
            .filter(|due| *due > now);
        let manual = manual.filter(|_| manual_due.is_none());
        let marker = manual.map(handled_marker);
        let mut known = Known { recorded_generation, ..Known::default() };
        let result = self.pipeline(ts, &status, clock, &mut known, manual).await;
        let restart_owed = known.restart_owed.filter(|_| ts.spec.target.rollout_restart.is_some());
        let shape_pending = known.shape_pending;
        let mut outcome = match result {
            Ok(mut outcome) => {
                if let Some(due) = manual_due {
                    let wait = status::until(now, due);
                    outcome.requeue = Some(outcome.requeue.map_or(wait, |r| r.min(wait)));
                }
                outcome
            }
            Err(Error::NotLeader) => return None,
            Err(error) => {
                // A requested refresh that failed is still handled: the backoff takes over.
                if let Some(marker) = marker {
                    status.last_refresh_request = Some(marker);
                }
                self.failure(ts, status, &error, known, now)
            }
        };
        if shape_pending {
            outcome.status.observed_generation = recorded_generation;
        }
        // The restart the Secret records as owed, unless one has been made since.
        if let Some(owed) = restart_owed
            && outcome.status.last_rollout_restart_time.as_ref().is_none_or(|last| last.0 < owed)
        {
            outcome.status.rollout_restart_pending_since.get_or_insert(Time(owed));
        }
        Some(outcome)
    }

    async fn pipeline(
        self: &Arc<Self>,
        ts: &Arc<TokenSource>,
        status: &TokenSourceStatus,
        clock: Clock,
        known: &mut Known,
        manual: Option<&str>,
    ) -> Result<Outcome, Error> {
        let Clock { now, exact } = clock;
        let me = ObjectRef::from_obj(&**ts);
        let generation = ts.meta().generation;
        let target = ts.spec.target.name.as_str();
        let uid = ts.meta().uid.clone().unwrap_or_default();

        // Load and validate; no name reaches a request path before it is checked.
        validate::check_names(ts)?;
        // The cache has not yet seen this instance's last write of the Secret: the write's own
        // event comes in a moment and reconciles again, so nothing is read or written now.
        let cached_version = self.cached_target(ts).and_then(|s| s.resource_version().map(String::from));
        if self.memory.cache_behind_write(&me, cached_version.as_deref(), CACHE_CATCH_UP) {
            return Ok(status::deferred(status.clone()));
        }
        let secret = self.target(ts).await?;
        let stored = secret.as_ref().map(|s| Stored::of(s, ts.spec.target.template.merge_policy, &uid));
        validate::owner(ts, stored.as_ref())?;
        known.restart_owed = stored.as_ref().and_then(|s| s.restart_owed_since);
        let trusted = stored.as_ref().filter(|s| s.intact && s.has_token);
        known.valid_until = trusted.filter(|s| s.valid_at(now)).and_then(|s| s.expires_at);
        known.expired_at = trusted.and_then(|s| s.expires_at).filter(|e| *e <= now);
        let plan = validate::validate(ts, &self.config)?;
        let upstream = self.upstream(ts)?;
        let creds = self.credentials(ts).await?;
        for value in creds.secret_values() {
            known.redactor.add(value);
        }

        // Decide. The token in hand: the one this instance holds for today's request, else the
        // one the Secret holds, read back, if it was written for today's request.
        let request = decide::request_spec(ts);
        let fingerprint = decide::fingerprint(ts, &request, &creds);
        let shape = decide::shape(ts);
        known.fingerprint = Some(fingerprint.clone());
        // A write the API server refused is not tried again before its backoff ends: each
        // refusal writes the status, an event that would reconcile and write again at once. A
        // new template, or a Secret changed since, is tried now.
        let write = format!("{shape}@{}", secret.as_ref().and_then(|s| s.resource_version()).unwrap_or_default());
        let refused =
            self.memory.failure(&me).filter(|f| f.refused_write.as_ref() == Some(&write) && f.retry_at > exact);
        if let Some(refused) = refused {
            let held = status::Held { expired_at: known.expired_at, valid: known.valid_until.is_some() };
            return Ok(status::backing_off(status.clone(), refused.retry_at, held, target, generation, now));
        }
        known.write = Some(write);
        // A token whose reply was not kept serves only templates that do not read it.
        let reads_reply = secret::reads_reply(ts);
        let usable = |t: &Token| !reads_reply || !t.raw.is_null();
        let in_hand = self.memory.held(&me, &fingerprint, now).filter(|t| usable(t)).or_else(|| {
            let (secret, stored) = (secret.as_ref()?, stored.as_ref()?);
            (stored.fingerprint.as_deref() == Some(fingerprint.as_str()))
                .then(|| secret::read_back(ts, secret, stored))?
                .map(Arc::new)
        });
        if let Some(t) = &in_hand {
            known.redactor.add(t.access_token.as_bytes());
        }
        // A Secret written for today's request whose token cannot be read back (a `Replace`
        // template, or one that reads the reply) still says when its token expires: kept while
        // it needs no write, so a restart mints nothing for it either.
        let written_today = stored
            .as_ref()
            .filter(|s| s.intact && s.has_token && s.fingerprint.as_deref() == Some(fingerprint.as_str()));
        let times = in_hand.as_ref().map(|t| (t.issued_at, t.expires_at, t.renew_at)).or_else(|| {
            let s = written_today?;
            Some((s.refreshed_at?, s.expires_at?, s.renew_at))
        });
        let missing = decide::missing(stored.as_ref(), &fingerprint);
        // A manual refresh fetches whatever the token in hand; a token the provider failed to
        // give (a failed manual refresh) is still owed, after the backoff.
        let owed = self.memory.failure(&me).is_some_and(|f| f.owed_from.is_some() && f.fingerprint == fingerprint);
        // Identical requests share one token: a newer one a sharer got is taken at once.
        let key = ts.spec.renewal.share_identical_requests.then(|| decide::request_key(ts, &request, &creds));
        match (&key, &in_hand) {
            (None, _) => self.shared.leave(&me),
            (Some(k), held) => {
                self.shared.join(k, &me, reads_reply);
                // The token in hand may be newer than any this instance knows of (read back
                // after a failover): the sharers holding another take it.
                if let Some(t) = held.as_ref().filter(|t| usable(t)) {
                    self.wake(self.shared.offer_held(k, t, &me));
                }
            }
        }
        // Newer than the token in hand: the shared entry holds the last token any sharer fetched,
        // so another token not issued before this one is newer (issue times are whole seconds:
        // two sharers may fetch within one).
        let mine = in_hand.clone();
        let newer = |t: &Token, mine: &Token| t.issued_at >= mine.issued_at && t.access_token != mine.access_token;
        let newer_shared = key
            .as_deref()
            .and_then(|k| self.shared.token(k, now))
            .is_some_and(|t| usable(&t) && mine.as_ref().is_some_and(|mine| newer(&t, mine)));
        let decision = match (manual, decide::decide(times, missing, &uid, &plan.policy, exact)) {
            (Some(_), _) => Decision::Fetch { why: "ManualRefresh" },
            (None, Decision::Keep { .. }) if owed => Decision::Fetch { why: "RetryAfterFailure" },
            (None, Decision::Keep { .. }) if newer_shared => Decision::Fetch { why: "SharedToken" },
            (None, decision) => decision,
        };
        // Kept without a token in hand: the Secret stays as it is, or, if it must be written
        // (another shape, a key lost), only a new token can be rendered into it.
        let decision = match (decision, &in_hand, written_today) {
            (Decision::Keep { refresh_at }, None, Some(written)) => {
                let issued = written.refreshed_at.unwrap_or(now);
                match decide::needs_write(Some(written), issued, &shape) {
                    None => {
                        self.memory.forget_failure(&me);
                        return Ok(status::ready(status.clone(), written, target, refresh_at, generation, now));
                    }
                    Some(why) => Decision::Fetch { why },
                }
            }
            (decision, _, _) => decision,
        };
        // No token is written by this path now. A Secret deleted or edited meanwhile gets the
        // valid token in hand back at once (a request may be in flight for a while), and a
        // Secret whose token stays gets today's shape.
        if !matches!(decision, Decision::Keep { .. }) {
            let valid = in_hand.as_ref().filter(|t| t.expires_at > exact);
            let lost = valid.and_then(|t| decide::needs_write(stored.as_ref(), t.issued_at, &shape));
            let reshaped = match (valid, lost) {
                (Some(token), Some("SecretDeleted" | "SecretChanged")) => {
                    known.restart_owed = self.write(ts, token, &fingerprint, &shape, stored.as_ref()).await?;
                    Reshaped::Written
                }
                _ => self.reshape(ts, secret.as_ref(), stored.as_ref(), &shape, known).await?,
            };
            match reshaped {
                // What this reconcile read of the Secret is out of date now: a token written
                // over it would be refused as written over someone else's Secret. The write's
                // own event reconciles again, with the Secret as it is.
                Reshaped::Written => {
                    self.memory.forget_refused_write(&me);
                    return Ok(status::deferred(status.clone()));
                }
                Reshaped::Pending => known.shape_pending = true,
                Reshaped::Unchanged => {}
            }
        }
        let why = match decision {
            Decision::Keep { refresh_at } => {
                let Some(token) = in_hand else { return Err(Error::Internal("a kept token went missing".into())) };
                let restored = match decide::needs_write(stored.as_ref(), token.issued_at, &shape) {
                    None => None,
                    Some(why) => {
                        // The Secret is written from the token in hand: no provider call.
                        known.restart_owed = self.write(ts, &token, &fingerprint, &shape, stored.as_ref()).await?;
                        matches!(why, "SecretDeleted" | "SecretChanged").then_some(why)
                    }
                };
                self.memory.forget_failure(&me);
                let held = Stored::issued(ts.name_any(), fingerprint, &token);
                let mut outcome = status::ready(status.clone(), &held, target, refresh_at, generation, now);
                outcome.event = restored.map(|why| status::restored(target, why, token.expires_at));
                return Ok(outcome);
            }
            Decision::Wait { until, expired_at } => {
                let held = status::Held { expired_at: Some(expired_at), valid: false };
                return Ok(status::backing_off(status.clone(), until, held, target, generation, now));
            }
            Decision::Fetch { why } => why,
        };
        // A chained request is not started without its upstream token: one that went out without
        // it would fail later, after the upstream's Secret event that should have woken this
        // TokenSource had come and gone, and it would wait for the next event, an hour away.
        let upstream_token =
            match &upstream {
                Some(u) => Some(self.upstream_token(u, now).ok_or_else(|| Error::Upstream {
                    name: u.name_any(),
                    state: crate::error::UpstreamState::NotReady,
                })?),
                None => None,
            };
        if let Some(t) = &upstream_token {
            known.redactor.add(t.as_bytes());
            known.upstream = Some(digest(t));
        }
        let remembered = self.memory.failure(&me);
        let backoff = decide::backoff_pending(
            remembered.as_ref(),
            status,
            known.recorded_generation,
            generation,
            (&fingerprint, known.upstream),
            now,
        );
        if let Some(retry_at) = backoff.filter(|_| manual.is_none()) {
            let held = status::Held { expired_at: known.expired_at, valid: known.valid_until.is_some() };
            return Ok(status::backing_off(status.clone(), retry_at, held, target, generation, now));
        }

        // Fetch, then render and write. Only the leader calls a provider; a token it fetches
        // after losing the Lease is discarded at the fence, never written.
        if !self.config.leadership.is_leading() {
            return Err(Error::NotLeader);
        }
        // A manual refresh is answered by a request sent since this instance noticed it: a
        // shared request that went out since then answers it, and none is sent twice for it.
        let noticed = manual.map(|value| self.memory.manual_noticed(&me, value));
        // A request never outlives the token it renews, nor the one the Secret holds (issued
        // for credentials since rotated, say), by more than a moment (nor its own timeouts); a
        // nearly expired token still gets a real attempt.
        let renewing = times.map(|(_, expires, _)| expires).into_iter().chain(known.valid_until).min();
        let plan = match renewing {
            Some(expires) => {
                let left = Duration::try_from(expires.duration_since(exact)).unwrap_or_default();
                validate::Plan { timeout: plan.timeout.min(left.max(MIN_ATTEMPT)), ..plan }
            }
            None => plan,
        };
        // While it waits, the status says so when there is something to say (no token yet, or
        // the Secret's token expired meanwhile).
        let held = status::Held { expired_at: known.expired_at, valid: known.valid_until.is_some() };
        let quiet_until = ts.meta().creation_timestamp.as_ref().map(|t| schedule::add(t.0, PENDING_GRACE));
        let waiting = |why: &str| {
            status::waiting(status.clone(), why, held, (target, generation, now), plan.timeout, quiet_until)
        };
        let token = match &key {
            None => {
                let request = Request { ts, plan: &plan, creds: &creds, upstream: upstream_token, why, uid: &uid };
                match self.flight(FlightKey::Own(me.clone()), &fingerprint, request, reads_reply)? {
                    Got::Token(t) => t,
                    Got::Waiting(why) => return Ok(waiting(&why)),
                }
            }
            Some(k) => {
                let key = FlightKey::Shared(k.clone());
                // The request this TokenSource waited for ended: its result is taken as it is
                // (filtered like a sharer's token below, a token already due by this
                // TokenSource's policy would only send another request, and another).
                let ended = match self.flights.poll(&key, &me, k) {
                    Poll::Ready(result) => Some(result?),
                    Poll::Waiting => return Ok(waiting(&in_flight(ts))),
                    Poll::Absent => None,
                };
                // A sharer's newer token that is not due by this TokenSource's policy is taken
                // instead of a new request.
                let candidate = match noticed {
                    Some(since) => self.shared.token_requested_since(k, since, now),
                    None => self.shared.token(k, now),
                };
                // (For a manual refresh the token requested since may be the one in hand
                // already, written before a status write failed.)
                let reuse = candidate.filter(|t| {
                    usable(t)
                        && (noticed.is_some() || mine.as_ref().is_none_or(|mine| newer(t, mine)))
                        && decide::renewal_of(t, &uid, &plan.policy) > exact
                });
                match ended.or(reuse) {
                    Some(t) => t,
                    None => {
                        let request =
                            Request { ts, plan: &plan, creds: &creds, upstream: upstream_token, why, uid: &uid };
                        match self.flight(key, k, request, reads_reply)? {
                            Got::Token(t) => t,
                            Got::Waiting(why) => return Ok(waiting(&why)),
                        }
                    }
                }
            }
        };
        known.redactor.add(token.access_token.as_bytes());
        // Held before it is written: a failed write is retried with it, without a new request.
        self.memory.hold(&me, Held { fingerprint: fingerprint.clone(), token: token.clone() });
        // The provider gave the token it owed: a failed write of it owes no other.
        self.memory.token_given(&me);
        known.restart_owed = self.write(ts, &token, &fingerprint, &shape, stored.as_ref()).await?;
        self.memory.forget_failure(&me);
        let refresh_at = decide::renewal_of(&token, &uid, &plan.policy);
        let issued = Stored::issued(ts.name_any(), fingerprint, &token);
        let mut outcome = status::issued(status.clone(), &issued, target, refresh_at, generation, now);
        if let Some(value) = manual {
            outcome.status.last_refresh_request = Some(handled_marker(value));
            outcome.event = Some(Note {
                warning: false,
                reason: Reason::ManualRefresh,
                message: format!(
                    "Wrote a new token to Secret {target:?} as requested ({REFRESH_REQUESTED_AT_ANNOTATION}={value}); it expires at {}",
                    token.expires_at
                ),
            });
        }
        Ok(outcome)
    }

    /// The token of the request for `key` (made for `made_for`): taken if it ended, else `None`
    /// with the request in flight on a task of its own (started now, if there was none and a
    /// request slot of the host is free; otherwise this TokenSource waits for a slot). The end
    /// of the request reconciles every TokenSource waiting for it.
    fn flight(
        self: &Arc<Self>,
        key: FlightKey,
        made_for: &str,
        request: Request<'_>,
        reads_reply: bool,
    ) -> Result<Got, Error> {
        let me = ObjectRef::from_obj(&**request.ts);
        let in_flight = || Got::Waiting(in_flight(request.ts));
        match self.flights.poll(&key, &me, made_for) {
            Poll::Ready(result) => return result.map(Got::Token),
            Poll::Waiting => return Ok(in_flight()),
            Poll::Absent => {}
        }
        let Some(slot) = self.take_slot(request.ts)? else {
            let host = endpoint_host(request.ts);
            return Ok(Got::Waiting(format!("waiting for a free request slot of host {host}")));
        };
        let sent = std::time::Instant::now();
        let Some(id) = self.flights.start(&key, &me, made_for) else {
            // Another sharer started it meanwhile: this one waits for it, and the slot goes back.
            let host = slot.1.clone();
            drop(slot);
            self.slot_freed(&host);
            return Ok(in_flight());
        };
        self.metrics.requests_in_flight.inc();
        let ctx = self.clone();
        let (ts, plan, creds) = (request.ts.clone(), request.plan.clone(), request.creds.clone());
        let (upstream, why, uid) = (request.upstream, request.why, request.uid.to_string());
        tokio::spawn(async move {
            let send = ctx.send_token_request(&ts, &plan, &creds, upstream.as_deref(), why, slot);
            let result = guarded(send, || {
                Err(Error::Internal(
                    "the token request failed internally (a bug: the operator's log has the place; please report it)"
                        .into(),
                ))
            })
            .await;
            let shared = match &key {
                FlightKey::Shared(k) => Some(k.as_str()),
                FlightKey::Own(_) => None,
            };
            // The reply is kept if this TokenSource's template reads it, or any sharer's.
            let keep_reply = reads_reply || shared.is_some_and(|k| ctx.shared.needs_reply(k));
            let result = result
                .map(|t| Arc::new(spread_first_renewal(without_unread_reply(t, keep_reply), why, &plan.policy, &uid)));
            if let (Some(k), Ok(t)) = (shared, &result) {
                ctx.wake(ctx.shared.offer(k, t.clone(), &me, sent));
            }
            let waiters = ctx.flights.finish(&key, id, result);
            ctx.metrics.requests_in_flight.dec();
            ctx.wake(waiters);
        });
        Ok(in_flight())
    }

    /// Renders the Secret for `token` and writes it over `stored`; returns the restart the
    /// workloads are owed, recorded in the same write: a token that replaces another owes one
    /// (however the write comes about: a fetch, or a failed write completed later), and an
    /// earlier debt is carried on.
    async fn write(
        &self,
        ts: &TokenSource,
        token: &Arc<Token>,
        fingerprint: &str,
        shape: &str,
        stored: Option<&Stored>,
    ) -> Result<Option<Timestamp>, Error> {
        // Rendering templates over the reply is kept off the async runtime.
        let mut desired = {
            let (ts, token, fingerprint, shape) =
                (ts.clone(), token.clone(), fingerprint.to_string(), shape.to_string());
            tokio::task::spawn_blocking(move || secret::desired(&ts, &token, &fingerprint, &shape))
                .await
                .map_err(|_| Error::Internal("rendering the Secret failed".into()))??
        };
        let replaces = stored.is_some_and(|s| s.has_token && s.refreshed_at != Some(token.issued_at));
        let owed = match ts.spec.target.rollout_restart {
            None => None,
            Some(_) if replaces => Some(schedule::whole_second(Timestamp::now())),
            Some(_) => stored.and_then(|s| s.restart_owed_since),
        };
        if let (Some(at), Some(annotations)) = (owed, desired.metadata.annotations.as_mut()) {
            annotations.insert(secret::RESTART_OWED_ANNOTATION.into(), at.to_string());
        }
        let me = ObjectRef::from_obj(ts);
        let over = self.cached_target(ts).and_then(|s| s.resource_version().map(String::from));
        let resource_version = self.apply_secret(ts, &desired, stored).await?;
        self.memory.remember_written(&me, resource_version, over);
        Ok(owed)
    }

    /// Writes today's owner policy and template over the token the Secret already holds, when
    /// no new token is written now (renewals failing, a backoff, a request in flight): a Secret
    /// the user asked to keep is not garbage-collected for want of a token, nor a removed key
    /// left in it. `Pending` when that token cannot be rendered again here (it was neither held
    /// by this instance nor can be read back: a `Replace` template or one that reads the reply,
    /// after a restart); today's shape then comes with the next token.
    async fn reshape(
        &self,
        ts: &TokenSource,
        secret: Option<&Secret>,
        stored: Option<&Stored>,
        shape: &str,
        known: &mut Known,
    ) -> Result<Reshaped, Error> {
        let (Some(secret), Some(stored)) = (secret, stored) else { return Ok(Reshaped::Unchanged) };
        let uid = ts.meta().uid.as_deref().unwrap_or_default();
        // The owner reference, set apart from the data while the token could not be rendered
        // again, may be all that differs from what the policy asks.
        let owned = ts.spec.target.creation_policy == CreationPolicy::Owner;
        let reference_right = secret::owned_by(secret, uid) == owned;
        if !stored.has_token || (stored.shape.as_deref() == Some(shape) && reference_right) {
            return Ok(Reshaped::Unchanged);
        }
        let me = ObjectRef::from_obj(ts);
        let reads_reply = secret::reads_reply(ts);
        // A Secret whose data someone else changed is not re-rendered from what it holds.
        let fingerprint = stored.fingerprint.as_deref().filter(|_| stored.intact);
        // Only the owner reference is wrong: it alone is set. The apply of the token could not
        // remove a reference that another write added (server-side apply removes only the
        // fields its manager owns), and would be tried again and again.
        let only_reference = stored.shape.as_deref() == Some(shape);
        let token = fingerprint.filter(|_| !only_reference).and_then(|fingerprint| {
            self.memory
                .held_any(&me, fingerprint)
                .filter(|t| stored.refreshed_at == Some(t.issued_at) && (!reads_reply || !t.raw.is_null()))
                .or_else(|| secret::read_back(ts, secret, stored).map(Arc::new))
        });
        let (Some(fingerprint), Some(token)) = (fingerprint, token) else {
            // Whatever else waits for the next token, a Secret the user asked to keep is not
            // left for the garbage collector, nor one to be collected kept.
            if !reference_right {
                let over = secret.resource_version();
                if let Some(version) = self.set_owner_reference(ts).await? {
                    self.memory.remember_written(&me, Some(version), over);
                    return Ok(Reshaped::Written);
                }
            }
            return Ok(if only_reference { Reshaped::Unchanged } else { Reshaped::Pending });
        };
        known.redactor.add(token.access_token.as_bytes());
        // Under the fingerprint it was fetched for: what decides the next request is unchanged.
        known.restart_owed = self.write(ts, &token, fingerprint, shape, Some(stored)).await?;
        Ok(Reshaped::Written)
    }

    /// Warns, once per spec generation, about values that look secret and are given inline.
    async fn warn_inline_secrets(&self, ts: &TokenSource) {
        let inline = ts.spec.inline_secrets();
        let key = format!("inline/{}", ts.meta().generation.unwrap_or_default());
        if inline.is_empty() || !self.memory.warn_once(&ObjectRef::from_obj(ts), &key) {
            return;
        }
        let message = format!(
            "{} given inline: anyone who can read the TokenSource can read it; put it in a Secret and use valueFrom.secretKeyRef",
            inline.join(", ")
        );
        self.publish(ts, Note { warning: true, reason: Reason::InlineSecret, message }).await;
    }

    /// Applies the failure policy, logs the failure and remembers its backoff.
    fn failure(
        &self,
        ts: &TokenSource,
        status: TokenSourceStatus,
        error: &Error,
        known: Known,
        now: Timestamp,
    ) -> Outcome {
        let me = ObjectRef::from_obj(ts);
        if matches!(error, Error::NotLeader) {
            // Not a failure of this TokenSource: nothing is counted or remembered.
            tracing::debug!(tokensource = %ts.name_any(), namespace = ts.namespace().unwrap_or_default(), "not the leader; nothing written");
            return Outcome { status, event: None, requeue: None, deferred: false };
        }
        let message = known.redactor.redact(&error.to_string());
        let message = match failure::hint(ts, error) {
            Some(hint) => format!("{message} ({hint})"),
            None => message,
        };
        tracing::warn!(tokensource = %ts.name_any(), namespace = ts.namespace().unwrap_or_default(), reason = %error.reason(), error = message.as_str(), "no new token");
        let (outcome, record) = failure::on_failure(FailureInput {
            error,
            status,
            remembered_failures: self.memory.failure(&me).map_or(0, |f| f.failures),
            message,
            valid_until: known.valid_until,
            expired_at: known.expired_at,
            fingerprint: known.fingerprint.as_deref(),
            generation: ts.meta().generation,
            target: &ts.spec.target.name,
            now,
            // The attempt ends now: the next one is at least a second from here.
            clock: Timestamp::now().max(now),
            jitter: rand::random::<f64>(),
        });
        if let Some(mut record) = record {
            // A token the provider failed to give is still owed after a failure of another kind
            // (a write-back of the token in hand refused, say), for the same request, and not
            // asked for before the provider's own backoff ends.
            // It keeps the upstream token it was refused for: the upstream's next token still
            // ends that backoff.
            let mut carried_upstream = None;
            if record.owed_from.is_none()
                && let Some(prev) = self.memory.failure(&me).filter(|p| p.fingerprint == record.fingerprint)
            {
                record.owed_from = prev.owed_from;
                carried_upstream = prev.upstream.filter(|_| prev.owed_from.is_some());
            }
            let refused_write = known.write.filter(|_| matches!(error, Error::ApplySecret(_)));
            // Only a refusal can be the upstream token's fault: the upstream's next token ends
            // that backoff, not the backoff from an endpoint that is down or throttling.
            let upstream = known.upstream.filter(|_| error.is_refusal()).or(carried_upstream);
            self.memory.remember_failure(&me, FailureRecord { upstream, refused_write, ..record });
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_annotation_value_is_recorded_within_the_status_field() {
        assert_eq!(handled_marker("2026-01-02T03:04:05Z"), "2026-01-02T03:04:05Z");
        let long = "x".repeat(80);
        let marker = handled_marker(&long);
        assert!(marker.chars().count() <= 64 && marker.starts_with("sha256:"), "{marker}");
        assert_ne!(marker, handled_marker(&"x".repeat(81)), "another value is another request");
        assert!(handled_marker(&"é".repeat(64)).chars().count() == 64, "counted in characters, as the schema does");
    }

    #[tokio::test]
    async fn a_panicking_attempt_becomes_an_outcome() {
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let caught = guarded(async { panic!("a bug") }, || "internal error").await;
        let fine = guarded(async { "ok" }, || "internal error").await;
        std::panic::set_hook(hook);
        assert_eq!((caught, fine), ("internal error", "ok"));
    }
}
