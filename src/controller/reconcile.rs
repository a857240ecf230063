//! One reconcile of one TokenSource, as a pipeline:
//! load → validate → decide → (keep | fetch → render → apply) → status, with every failure
//! going through the one failure policy.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};

use super::decide::{self, Decision};
use super::failure::{self, FailureInput};
use super::status::{self, Outcome};
use super::{Context, validate};
use crate::conditions::ConditionType;
use crate::crd::{TokenSource, TokenSourceStatus};
use crate::error::Error;
use crate::metrics::ResultLabels;
use crate::redact::Redactor;
use crate::schedule;
use crate::secret::{self, Stored};

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
}

pub(super) async fn reconcile(ts: Arc<TokenSource>, ctx: Arc<Context>) -> Result<Action, Error> {
    if ts.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    ctx.references.record(&ts);
    let now = schedule::whole_second(Timestamp::now());
    // A panic (a bug, triggered by this TokenSource's input) is this TokenSource's failure, not
    // the process's: every other TokenSource keeps being served.
    let outcome = guarded(ctx.attempt(&ts, now), || {
        ctx.metrics.reconcile_panics.inc();
        let error = Error::Internal(
            "the operator failed internally while reconciling this TokenSource (a bug: the operator's log has the place; please report it)".into(),
        );
        ctx.failure(&ts, ts.status.clone().unwrap_or_default(), &error, Known::default(), now)
    })
    .await;
    let result = (outcome.status.failed_renewal_attempts > 0)
        .then(|| status::find(&outcome.status, ConditionType::Degraded).map(|c| c.reason.clone()))
        .flatten();
    ctx.metrics.reconciles.get_or_create(&ResultLabels { result: result.unwrap_or_else(|| "Success".into()) }).inc();
    ctx.write_status(&ts, &outcome.status).await?;
    if let Some(note) = outcome.event {
        ctx.publish(&ts, note).await;
    }
    Ok(match outcome.requeue {
        Some(d) => Action::requeue(d.max(Duration::from_millis(100))),
        None => Action::await_change(),
    })
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
    /// Runs the pipeline and turns its result, success or failure, into the outcome to write.
    async fn attempt(&self, ts: &TokenSource, now: Timestamp) -> Outcome {
        let mut status = ts.status.clone().unwrap_or_default();
        status.observed_generation = ts.meta().generation;
        let mut known = Known::default();
        match self.pipeline(ts, &status, now, &mut known).await {
            Ok(outcome) => outcome,
            Err(error) => self.failure(ts, status, &error, known, now),
        }
    }

    async fn pipeline(
        &self,
        ts: &TokenSource,
        status: &TokenSourceStatus,
        now: Timestamp,
        known: &mut Known,
    ) -> Result<Outcome, Error> {
        let me = ObjectRef::from_obj(ts);
        let generation = ts.meta().generation;
        let target = ts.spec.target.name.as_str();

        // Load and validate.
        let stored = self.stored(ts).await?;
        validate::owner(ts, stored.as_ref())?;
        known.valid_until = stored.as_ref().filter(|s| s.valid_at(now)).and_then(|s| s.expires_at);
        known.expired_at = stored.as_ref().filter(|s| s.has_token).and_then(|s| s.expires_at).filter(|e| *e <= now);
        let plan = validate::validate(ts, &self.config)?;
        let upstream = self.upstream(ts)?;
        let creds = self.credentials(ts).await?;
        for value in creds.secret_values() {
            known.redactor.add(value);
        }

        // Decide.
        let fingerprint = decide::fingerprint(ts, &creds);
        known.fingerprint = Some(fingerprint.clone());
        let uid = ts.meta().uid.clone().unwrap_or_default();
        let why = match decide::decide(stored.as_ref(), &fingerprint, &uid, &plan.policy, now) {
            Decision::Keep { refresh_at } => {
                self.memory.forget_failure(&me);
                let stored = stored.unwrap_or_default();
                return Ok(status::ready(status.clone(), &stored, target, refresh_at, generation, now));
            }
            Decision::Fetch { why } => why,
        };
        let remembered = self.memory.failure(&me);
        if let Some(retry_at) = decide::backoff_pending(remembered.as_ref(), status, generation, &fingerprint, now) {
            return Ok(status::backing_off(status.clone(), retry_at, known.expired_at, target, generation, now));
        }

        // Fetch, render, apply.
        let upstream_token = upstream.as_ref().and_then(|u| self.upstream_token(u, now));
        if let Some(t) = &upstream_token {
            known.redactor.add(t.as_bytes());
        }
        let Some(token) = self.fetch(ts, &plan, &creds, upstream_token.as_deref(), why).await? else {
            return Ok(status::host_busy(status.clone()));
        };
        // Rendering templates over the reply is kept off the async runtime.
        let desired = {
            let (ts, token, fingerprint) = (ts.clone(), token.clone(), fingerprint.clone());
            tokio::task::spawn_blocking(move || secret::desired(&ts, &token, &fingerprint))
                .await
                .map_err(|_| Error::Internal("rendering the Secret failed".into()))??
        };
        self.apply_secret(ts, &desired).await?;

        // Remember and report.
        let refresh_at =
            plan.policy.refresh_at(token.issued_at, token.expires_at, schedule::jitter_for(&uid, token.issued_at));
        let issued = Stored::issued(ts.name_any(), fingerprint, &token);
        self.memory.remember_issued(&me, issued.clone());
        Ok(status::issued(status.clone(), &issued, target, refresh_at, generation, now))
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
        let message = known.redactor.redact(&error.to_string());
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
            jitter: rand::random::<f64>(),
        });
        if let Some(record) = record {
            self.memory.remember_failure(&me, record);
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
