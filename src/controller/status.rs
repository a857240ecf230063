//! What a reconcile reports: the status it computes (conditions, times, failures), the Event it
//! emits, and the writes of both.

use std::time::Duration;

use super::events::Occurrence;
use jiff::{SignedDuration, Timestamp};
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::{Context, MANAGER};
use crate::conditions::{ConditionStatus, ConditionType, Reason};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::crd::{TokenSource, TokenSourceStatus};
use crate::error::Error;
use crate::schedule;
use crate::secret::Stored;

/// An Event to publish about the TokenSource.
#[derive(Clone, Debug, PartialEq)]
pub struct Note {
    pub warning: bool,
    pub reason: Reason,
    pub message: String,
}

/// The result of one reconcile, before it is written.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub status: TokenSourceStatus,
    /// When to reconcile again without a change; `None` waits for one.
    pub requeue: Option<Duration>,
    pub event: Option<Note>,
    /// Nothing was learnt (a request slot was not free): the status is not written; the
    /// TokenSource comes back when a slot frees or at `requeue`.
    pub deferred: bool,
}

/// The most a condition message or an Event note holds (events.k8s.io allows 1 KiB notes).
pub const MAX_MESSAGE: usize = 1024;

/// `text` cut to [`MAX_MESSAGE`] bytes at a character boundary, marked when cut.
pub fn cut(text: &str) -> String {
    cut_to(text, MAX_MESSAGE)
}

/// What the status shows of the reply's `token_type` and `scope`, bounded: the endpoint chooses
/// them, and a status the API server refuses for its size would never be written again (and so
/// never turn `Ready` false).
const MAX_TOKEN_TYPE: usize = 64;
const MAX_SCOPES: usize = 64;
const MAX_SCOPE: usize = 256;

/// `text` cut to at most `max` bytes, on a character boundary, marked with `…` if cut.
fn cut_to(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max - '…'.len_utf8();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// The granted scopes as the status lists them: the first 64, each cut to 256 bytes.
fn granted(scope: &str) -> Vec<String> {
    scope.split_whitespace().take(MAX_SCOPES).map(|s| cut_to(s, MAX_SCOPE)).collect()
}

/// Ready=False because the token in `target` expired at `at`.
pub fn expired(target: &str, at: Timestamp, generation: Option<i64>, now: Timestamp) -> Condition {
    let msg = format!("the token in Secret {target:?} expired at {at} and has not been renewed");
    condition(ConditionType::Ready, false, Reason::Expired, msg, generation, now)
}

/// The time from `now` until `at`, zero if it has passed.
pub fn until(now: Timestamp, at: Timestamp) -> Duration {
    Duration::try_from(at.duration_since(now).max(SignedDuration::ZERO)).unwrap_or_default()
}

/// A condition computed at `now` for `generation`.
pub fn condition(
    type_: ConditionType,
    status: bool,
    reason: Reason,
    message: String,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    Condition {
        type_: type_.to_string(),
        status: ConditionStatus::from(status).to_string(),
        reason: reason.to_string(),
        message,
        last_transition_time: Time(now),
        observed_generation: generation,
    }
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

/// The condition of `type_`, if the status has it.
pub fn find(status: &TokenSourceStatus, type_: ConditionType) -> Option<&Condition> {
    status.conditions.iter().find(|c| type_ == c.type_)
}

/// Whether the status says the Secret holds a valid token.
pub fn is_ready(status: &TokenSourceStatus) -> bool {
    find(status, ConditionType::Ready).is_some_and(|c| ConditionStatus::True == c.status)
}

/// The status of a TokenSource whose Secret holds the valid token `stored`, renewed at
/// `refresh_at`: Ready, not Degraded, failures cleared.
pub fn ready(
    mut status: TokenSourceStatus,
    stored: &Stored,
    target: &str,
    refresh_at: Timestamp,
    generation: Option<i64>,
    now: Timestamp,
) -> Outcome {
    status.expiration_time = stored.expires_at.map(Time);
    status.last_renewal_time = stored.refreshed_at.map(Time);
    status.token_type = stored.token_type.as_deref().map(|t| cut_to(t, MAX_TOKEN_TYPE));
    status.scopes = stored.scope.as_deref().map(granted).unwrap_or_default();
    // Announced as the whole second by which the renewal starts.
    status.renewal_time = Some(Time(schedule::ceil_second(refresh_at)));
    status.failed_renewal_attempts = 0;
    status.last_failure_time = None;
    let msg = format!("Secret {target:?} holds a valid token");
    set_condition(
        &mut status.conditions,
        condition(ConditionType::Ready, true, Reason::TokenValid, msg, generation, now),
    );
    set_condition(
        &mut status.conditions,
        condition(ConditionType::Degraded, false, Reason::AsExpected, String::new(), generation, now),
    );
    Outcome { status, requeue: Some(until(now, refresh_at)), event: None, deferred: false }
}

/// After a new token was written: Ready, with a `TokenIssued` Event when it was not Ready before.
pub fn issued(
    status: TokenSourceStatus,
    stored: &Stored,
    target: &str,
    refresh_at: Timestamp,
    generation: Option<i64>,
    now: Timestamp,
) -> Outcome {
    let was_ready = is_ready(&status);
    let failures = status.failed_renewal_attempts;
    let mut outcome = ready(status, stored, target, refresh_at, generation, now);
    // Issuance and recovery are news; a routine renewal is not.
    let after = if failures > 0 { format!(" after {failures} failed attempts") } else { String::new() };
    outcome.event = (!was_ready || failures > 0).then(|| Note {
        warning: false,
        reason: Reason::TokenIssued,
        message: format!(
            "Wrote a token to Secret {target:?}{after}; it expires at {}",
            stored.expires_at.map(|e| e.to_string()).unwrap_or_default()
        ),
    });
    outcome
}

/// The Event of a Secret written back after it was deleted or changed.
pub fn restored(target: &str, why: &str, expires: Timestamp) -> Note {
    let what = if why == "SecretDeleted" { "was deleted" } else { "was changed" };
    Note {
        warning: false,
        reason: Reason::SecretRestored,
        message: format!(
            "Secret {target:?} {what}; wrote back the token this instance holds (valid until {expires}), without a new request"
        ),
    }
}

/// A fetch is due but a backoff after failures still holds until `retry_at`; if the Secret's
/// token has expired meanwhile (`expired_at`), Ready says so.
pub fn backing_off(
    mut status: TokenSourceStatus,
    retry_at: Timestamp,
    held: Held,
    target: &str,
    generation: Option<i64>,
    now: Timestamp,
) -> Outcome {
    status.renewal_time = Some(Time(retry_at));
    if let Some(at) = held.expired_at {
        set_condition(&mut status.conditions, expired(target, at, generation, now));
    } else if !held.valid && is_ready(&status) {
        let msg = format!("Secret {target:?} holds no valid token; the next attempt is at {retry_at}");
        set_condition(
            &mut status.conditions,
            condition(ConditionType::Ready, false, Reason::Pending, msg, generation, now),
        );
    }
    Outcome { status, requeue: Some(until(now, retry_at)), event: None, deferred: false }
}

/// What the target Secret holds while no new token is written: the token that expired in it,
/// if one did, and whether it holds a valid one (a Secret deleted or edited holds none).
#[derive(Clone, Copy, Debug)]
pub struct Held {
    pub expired_at: Option<Timestamp>,
    pub valid: bool,
}

/// Nothing to learn now (every request slot of the endpoint's host is taken, or the cache has
/// not caught up with this instance's last write): try again when called back or in a second or
/// two; the status is not written.
pub fn deferred(status: TokenSourceStatus) -> Outcome {
    let wait = Duration::from_millis(1000 + (rand::random::<f64>() * 1000.0) as u64);
    Outcome { status, requeue: Some(wait), event: None, deferred: true }
}

/// A token request for this TokenSource is in flight, or waits for a request slot of its host
/// (`why` says which, in words that do not change while it waits): the request's end (or the
/// slot) calls it back; `timeout` later at the latest, in case. While the Secret holds a valid
/// token nothing is written; without a token yet the status says what it waits for
/// (`Ready=False, Pending`), and once the token in the Secret has expired (`expired_at`) it says
/// that, whatever is in flight.
///
/// A TokenSource created moments ago (before `quiet_until`) is not told `Pending` yet: its first
/// token usually comes sooner, and a status write per new TokenSource is saved; it is looked at
/// again then, and told if it still waits.
pub fn waiting(
    mut status: TokenSourceStatus,
    why: &str,
    held: Held,
    (target, generation, now): (&str, Option<i64>, Timestamp),
    timeout: Duration,
    quiet_until: Option<Timestamp>,
) -> Outcome {
    let requeue = Some(timeout + Duration::from_secs(5));
    if let Some(at) = held.expired_at {
        set_condition(&mut status.conditions, expired(target, at, generation, now));
        return Outcome { status, requeue, event: None, deferred: false };
    }
    let lost = !held.valid && is_ready(&status);
    let first = find(&status, ConditionType::Ready).is_none();
    if let Some(quiet) = quiet_until.filter(|q| first && *q > now) {
        return Outcome { status, requeue: Some(until(now, quiet)), event: None, deferred: true };
    }
    if first || lost {
        let msg = match lost {
            true => format!("Secret {target:?} holds no valid token: {why}"),
            false => format!("no token in Secret {target:?} yet: {why}"),
        };
        set_condition(
            &mut status.conditions,
            condition(ConditionType::Ready, false, Reason::Pending, msg, generation, now),
        );
        return Outcome { status, requeue, event: None, deferred: false };
    }
    Outcome { status, requeue, event: None, deferred: true }
}

/// How long until `status` stops being true by itself: the expiry of the token it calls valid.
/// A reconcile is scheduled then, so `Ready` turns `False` at the expiry, to the second, whatever
/// else is happening.
pub fn until_untrue(status: &TokenSourceStatus, now: Timestamp) -> Option<Duration> {
    let expires = status.expiration_time.as_ref().filter(|_| is_ready(status))?;
    // Just past it: a reconcile at the instant itself would still see the token valid.
    Some(until(now, expires.0) + Duration::from_millis(20))
}

impl Context {
    /// Writes the status with server-side apply, unless it is what the object already shows or
    /// what this instance already wrote for the object as cached (a reconcile that runs before
    /// the cache has seen the last status write would otherwise write it again).
    pub(super) async fn write_status(&self, ts: &TokenSource, status: &TokenSourceStatus) -> Result<(), Error> {
        if ts.status.as_ref() == Some(status) {
            return Ok(());
        }
        let key = ObjectRef::from_obj(ts);
        let version = ts.resource_version().unwrap_or_default();
        let hash = status_hash(status);
        if self.memory.wrote_status(&key, &version, hash) {
            return Ok(());
        }
        let patch = json!({
            "apiVersion": TokenSource::api_version(&()),
            "kind": TokenSource::kind(&()),
            "status": status,
        });
        let api = self.api::<TokenSource>(&ts.namespace().unwrap_or_default());
        let write = async {
            api.patch_status(&ts.name_any(), &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch))
                .await
                .map_err(Error::UpdateStatus)
        };
        let written = self.config.leadership.fenced(write).await?;
        self.memory.remember_status(&key, version, written.resource_version(), hash, status.clone());
        self.metrics.status_writes.inc();
        Ok(())
    }

    /// Publishes an Event about the TokenSource; a failure to do so is logged, not fatal.
    pub(super) async fn publish(&self, ts: &TokenSource, note: Note) {
        let reason = note.reason.to_string();
        let ev = Occurrence { warning: note.warning, reason: &reason, action: "GetToken", note: &note.message };
        if let Err(e) = self.recorder.publish(&ts.object_ref(&()), ev, &self.config.leadership).await {
            tracing::warn!(error = %e, "could not publish an Event");
        }
    }
}

fn status_hash(status: &TokenSourceStatus) -> u64 {
    use std::hash::{DefaultHasher, Hasher};
    let mut h = DefaultHasher::new();
    h.write(&serde_json::to_vec(status).unwrap_or_default());
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    #[test]
    fn conditions_keep_their_transition_time() {
        let mut conds = vec![];
        set_condition(&mut conds, condition(ConditionType::Ready, true, Reason::TokenValid, "m".into(), Some(1), t(0)));
        set_condition(
            &mut conds,
            condition(ConditionType::Ready, true, Reason::InvalidSpec, "n".into(), Some(2), t(5)),
        );
        assert_eq!(conds.len(), 1);
        assert_eq!(conds[0].last_transition_time, Time(t(0)));
        assert_eq!(conds[0].reason, "InvalidSpec");
        set_condition(
            &mut conds,
            condition(ConditionType::Ready, false, Reason::InvalidSpec, "o".into(), Some(2), t(9)),
        );
        assert_eq!(conds[0].last_transition_time, Time(t(9)));
    }

    #[test]
    fn a_secret_without_a_valid_token_is_never_ready_while_waiting_or_backing_off() {
        let stored =
            Stored { expires_at: Some(t(3600)), refreshed_at: Some(t(0)), has_token: true, ..Default::default() };
        let ready = super::ready(TokenSourceStatus::default(), &stored, "tok", t(2400), Some(1), t(0)).status;
        let ready_reason =
            |o: &Outcome| find(&o.status, ConditionType::Ready).map(|c| (c.status.clone(), c.reason.clone()));
        let gone = Held { expired_at: None, valid: false };
        let there = Held { expired_at: None, valid: true };
        let w =
            waiting(ready.clone(), "in flight", gone, ("tok", Some(1), t(10)), Duration::from_secs(30), Some(t(12)));
        assert_eq!(ready_reason(&w), Some(("False".into(), "Pending".into())), "lost: said at once");
        assert!(!w.deferred, "the status is written");
        let w = waiting(ready.clone(), "in flight", there, ("tok", Some(1), t(10)), Duration::from_secs(30), None);
        assert!(w.deferred && is_ready(&w.status), "a valid token in the Secret: nothing to write");
        let b = backing_off(ready.clone(), t(40), gone, "tok", Some(1), t(10));
        assert_eq!(ready_reason(&b), Some(("False".into(), "Pending".into())));
        let b = backing_off(ready, t(40), there, "tok", Some(1), t(10));
        assert!(is_ready(&b.status));
    }

    #[test]
    fn a_new_tokensource_is_told_pending_only_if_it_still_waits_moments_later() {
        let new = TokenSourceStatus::default();
        let gone = Held { expired_at: None, valid: false };
        let waiting_at = |now: i64| {
            waiting(new.clone(), "in flight", gone, ("tok", Some(1), t(now)), Duration::from_secs(30), Some(t(3)))
        };
        let early = waiting_at(1);
        assert!(early.deferred && find(&early.status, ConditionType::Ready).is_none(), "nothing written yet");
        assert_eq!(early.requeue, Some(Duration::from_secs(2)), "looked at again when the moment is over");
        let later = waiting_at(3);
        assert!(!later.deferred);
        assert_eq!(find(&later.status, ConditionType::Ready).map(|c| c.reason.as_str()), Some("Pending"));
    }

    #[test]
    fn what_the_endpoint_says_of_its_token_is_bounded_in_status() {
        let huge = format!("{} {}", "s ".repeat(100_000), "é".repeat(1000));
        let stored = Stored {
            expires_at: Some(t(3600)),
            refreshed_at: Some(t(0)),
            has_token: true,
            scope: Some(huge),
            token_type: Some("B".repeat(10_000)),
            ..Default::default()
        };
        let status = super::ready(TokenSourceStatus::default(), &stored, "tok", t(2400), Some(1), t(0)).status;
        assert_eq!(status.scopes.len(), 64);
        assert!(status.token_type.as_deref().is_some_and(|t| t.len() <= 64 && t.ends_with('…')));
        let cut = &granted(&"é".repeat(1000))[0];
        assert!(cut.len() <= 256 && cut.ends_with('…'), "cut on a character boundary: {}", cut.len());
        assert_eq!(granted("read write"), vec!["read".to_string(), "write".to_string()]);
    }

    #[test]
    fn the_crd_bounds_what_the_status_is_cut_to() {
        let crd = serde_json::to_value(crate::crd::crd()).expect("the CRD serialises");
        let status = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"];
        assert_eq!(status["scopes"]["maxItems"], MAX_SCOPES);
        assert_eq!(status["scopes"]["items"]["maxLength"], MAX_SCOPE);
        assert_eq!(status["tokenType"]["maxLength"], MAX_TOKEN_TYPE);
    }

    #[test]
    fn a_first_token_is_announced_a_renewal_is_not() {
        let stored =
            Stored { expires_at: Some(t(3600)), refreshed_at: Some(t(0)), has_token: true, ..Default::default() };
        let first = issued(TokenSourceStatus::default(), &stored, "tok", t(2400), Some(1), t(0));
        assert!(is_ready(&first.status));
        assert_eq!(first.event.as_ref().map(|e| e.reason), Some(Reason::TokenIssued));
        assert_eq!(first.requeue, Some(Duration::from_secs(2400)));
        let renewal = issued(first.status, &stored, "tok", t(2400), Some(1), t(0));
        assert_eq!(renewal.event, None);
    }
}
