//! Rollout restarts: workloads that read the token only at start are restarted when the Secret
//! gets a new one, at most once per `minInterval` (new tokens inside it are folded into one
//! restart at its end). What is owed and when the last restart happened are in status, so a new
//! leader picks them up: the debt is written to status before any workload is patched, and each
//! workload's restart annotation is a time the status determines (the debt, the end of the
//! interval, the token's issue), not the time of the patch, so a restart done again (by a new
//! leader after a failover halfway through, or after a lost status write) changes nothing on the
//! workloads already restarted and restarts only the others.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;
use kube::api::{ListParams, Patch, PatchParams};
use serde_json::json;

use super::status::{Note, Outcome, condition, set_condition, until};
use super::{Context, MANAGER};
use crate::conditions::{ConditionType, Reason};
use crate::crd::{RolloutRestart, TokenSource, WorkloadKind, WorkloadRef};
use crate::error::Error;
use crate::schedule;

/// The pod template annotation a restart sets, as `kubectl rollout restart` sets its own.
pub const RESTARTED_AT_ANNOTATION: &str = "tokensource.dev/restartedAt";

/// How soon a failed restart is tried again, at most (sooner with a shorter `minInterval`).
const RETRY: Duration = Duration::from_secs(60);

fn interval(spec: &RolloutRestart) -> SignedDuration {
    schedule::parse_duration(&spec.min_interval).unwrap_or(SignedDuration::from_mins(5))
}

/// The earliest time the next restart may happen.
fn next_allowed(spec: &RolloutRestart, last: Option<Timestamp>) -> Option<Timestamp> {
    last.map(|l| l.checked_add(interval(spec)).unwrap_or(Timestamp::MAX))
}

impl Context {
    /// Restarts the workloads if a restart is owed and the interval allows, recording it in the
    /// outcome's status; otherwise schedules the look at the interval's end.
    pub(super) async fn rollout_restart(&self, ts: &TokenSource, outcome: &mut Outcome, now: Timestamp) {
        let status = &mut outcome.status;
        let Some(spec) = &ts.spec.target.rollout_restart else {
            status.rollout_restart_pending_since = None;
            status.conditions.retain(|c| ConditionType::RolloutRestartBlocked != c.type_);
            return;
        };
        let generation = ts.metadata.generation;
        if status.rollout_restart_pending_since.is_none() {
            set_condition(&mut status.conditions, unblocked(generation, now));
            return;
        }
        let last = status.last_rollout_restart_time.as_ref().map(|t| t.0);
        if let Some(at) = next_allowed(spec, last).filter(|at| *at > now) {
            let wait = until(now, at);
            outcome.requeue = Some(outcome.requeue.map_or(wait, |r| r.min(wait)));
            return;
        }
        let Some(debt) = status.rollout_restart_pending_since.clone() else { return };
        // The debt is in the cluster before any workload restarts: whoever leads next finishes
        // this restart (with the same annotation) instead of losing it or starting another. This
        // reconcile writes it; the next one, at once, restarts.
        if !self.debt_recorded(ts, &debt) {
            outcome.requeue = Some(Duration::ZERO);
            return;
        }
        // The annotation follows from the status alone (the debt, the end of the interval after
        // the last restart, and the token the Secret holds), so every leader that finishes this
        // restart sets the same one, and a later token always another.
        let token_at = status.last_renewal_time.as_ref().map(|t| t.0);
        let at = [Some(debt.0), next_allowed(spec, last), token_at].into_iter().flatten().max().unwrap_or(now).min(now);
        tracing::debug!(tokensource = %ts.name_any(), namespace = ts.namespace().unwrap_or_default(), owed_since = %debt.0, last = ?last, at = %at, version = ts.resource_version().unwrap_or_default(), "restarting workloads");
        match self.restart_workloads(ts, &spec.workloads, at).await {
            Ok(restarted) => {
                status.rollout_restart_pending_since = None;
                status.last_rollout_restart_time = Some(Time(now));
                set_condition(&mut status.conditions, unblocked(generation, now));
                self.metrics.rollout_restarts.inc();
                let message =
                    format!("Restarted {} for the new token in Secret {:?}", restarted.join(", "), ts.spec.target.name);
                self.publish(ts, Note { warning: false, reason: Reason::RolloutRestarted, message }).await;
            }
            // Cut off at the fence: the debt stays in the status, and the restart is tried again
            // at once — by this instance if a renewal moved the fence meanwhile (nothing else
            // would bring it back before the next renewal), else by whoever leads.
            Err(Error::NotLeader) => outcome.requeue = Some(Duration::ZERO),
            Err(e) => {
                let message = restart_failure(&e);
                let blocked = condition(
                    ConditionType::RolloutRestartBlocked,
                    true,
                    Reason::RolloutRestartFailed,
                    message.clone(),
                    generation,
                    now,
                );
                set_condition(&mut status.conditions, blocked);
                let retry = Duration::try_from(interval(spec)).map_or(RETRY, |d| d.min(RETRY));
                outcome.requeue = Some(outcome.requeue.map_or(retry, |r| r.min(retry)));
                tracing::warn!(tokensource = %ts.name_any(), namespace = ts.namespace().unwrap_or_default(), error = %message, "rollout restart failed");
                self.publish(ts, Note { warning: true, reason: Reason::RolloutRestartFailed, message }).await;
            }
        }
    }

    /// Whether the status in the cluster (as the cache or this instance's last status write
    /// shows it) records the restart owed since `debt`.
    fn debt_recorded(&self, ts: &TokenSource, debt: &Time) -> bool {
        let owed = |s: &crate::crd::TokenSourceStatus| s.rollout_restart_pending_since.as_ref() == Some(debt);
        ts.status.as_ref().is_some_and(owed)
            || self
                .memory
                .newer_status(
                    &kube::runtime::reflector::ObjectRef::from_obj(ts),
                    &ts.resource_version().unwrap_or_default(),
                )
                .is_some_and(|s| owed(&s))
    }

    /// Sets the restart annotation, the restart's time `at`, on every workload named or
    /// selected; returns them as `deployment/name`. Setting it again is no change, and no second
    /// rollout.
    async fn restart_workloads(
        &self,
        ts: &TokenSource,
        workloads: &[WorkloadRef],
        at: Timestamp,
    ) -> Result<Vec<String>, Error> {
        let ns = ts.namespace().unwrap_or_default();
        let patch =
            json!({"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT_ANNOTATION: at.to_string()}}}}});
        let mut restarted = vec![];
        for w in workloads {
            let (kind, names) = match w.kind {
                WorkloadKind::Deployment => ("deployment", self.names::<Deployment>(&ns, w).await?),
                WorkloadKind::StatefulSet => ("statefulset", self.names::<StatefulSet>(&ns, w).await?),
                WorkloadKind::DaemonSet => ("daemonset", self.names::<DaemonSet>(&ns, w).await?),
                WorkloadKind::Unknown => return Err(Error::unsupported("target.rolloutRestart.workloads[].kind")),
            };
            for name in names {
                let params = PatchParams { field_manager: Some(MANAGER.into()), ..Default::default() };
                let write = async {
                    let patched = match w.kind {
                        WorkloadKind::Deployment => {
                            self.api::<Deployment>(&ns).patch(&name, &params, &Patch::Merge(&patch)).await.map(|_| ())
                        }
                        WorkloadKind::StatefulSet => {
                            self.api::<StatefulSet>(&ns).patch(&name, &params, &Patch::Merge(&patch)).await.map(|_| ())
                        }
                        _ => self.api::<DaemonSet>(&ns).patch(&name, &params, &Patch::Merge(&patch)).await.map(|_| ()),
                    };
                    patched.map_err(Error::Kube)
                };
                self.config.leadership.fenced(write).await?;
                restarted.push(format!("{kind}/{name}"));
            }
        }
        Ok(restarted)
    }

    /// The workloads a reference names: its name, or those its selector matches.
    async fn names<K>(&self, ns: &str, w: &WorkloadRef) -> Result<Vec<String>, Error>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        if let Some(name) = &w.name {
            return Ok(vec![name.clone()]);
        }
        let Some(selector) = &w.selector else { return Ok(vec![]) };
        let labels: Vec<String> = selector.match_labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let list = self
            .api::<K>(ns)
            .list_metadata(&ListParams::default().labels(&labels.join(",")))
            .await
            .map_err(Error::Kube)?;
        Ok(list.items.iter().map(|m| m.name_any()).collect())
    }
}

/// `RolloutRestartBlocked=False`: nothing owed, or the last restart went through.
fn unblocked(generation: Option<i64>, now: Timestamp) -> Condition {
    condition(ConditionType::RolloutRestartBlocked, false, Reason::AsExpected, String::new(), generation, now)
}

/// What a failed restart says, with the fix for the usual causes.
fn restart_failure(e: &Error) -> String {
    let hint = match e {
        Error::Kube(kube::Error::Api(s)) if s.code == 403 => {
            "; the operator may not patch workloads: install the rollout-restart RBAC (deploy/components/rollout-restart)"
        }
        Error::Kube(kube::Error::Api(s)) if s.code == 404 => "; check target.rolloutRestart.workloads",
        _ => "",
    };
    format!("restarting workloads for the new token: {e}{hint}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_are_spaced_by_the_interval() {
        let spec = RolloutRestart { workloads: vec![], min_interval: "5m".into() };
        let t = |s: i64| Timestamp::from_second(1_700_000_000 + s).unwrap();
        assert_eq!(next_allowed(&spec, None), None, "the first restart is never held back");
        assert_eq!(next_allowed(&spec, Some(t(0))), Some(t(300)));
        let odd = RolloutRestart { min_interval: "nonsense".into(), ..spec };
        assert_eq!(next_allowed(&odd, Some(t(0))), Some(t(300)), "an unreadable interval is the default");
    }

    #[test]
    fn a_forbidden_restart_points_at_the_rbac_component() {
        let forbidden =
            kube::core::Status::failure("deployments.apps \"api\" is forbidden", "Forbidden").with_code(403);
        let m = restart_failure(&Error::Kube(kube::Error::Api(forbidden.into())));
        assert!(m.contains("is forbidden") && m.contains("deploy/components/rollout-restart"), "{m}");
    }
}
