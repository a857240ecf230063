//! The failure policy, as a pure function: given the status, the error and what is remembered,
//! does Ready stay true, is this failure new, how many failures are there now, when is the next
//! attempt, and which Event says so.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::memory::FailureRecord;
use super::status as message;
use super::status::{Note, Outcome, condition, expired, find, set_condition, until};
use crate::conditions::{ConditionStatus, ConditionType, Reason};
use crate::crd::TokenSourceStatus;
use crate::error::Error;
use crate::schedule;

/// Everything the failure policy decides from.
pub struct FailureInput<'a> {
    pub error: &'a Error,
    /// What the error says, already scrubbed of every secret value.
    pub message: String,
    /// The status so far (its `observedGeneration` already the current generation).
    pub status: TokenSourceStatus,
    /// The consecutive failures this instance remembers, which a lagging cached status may not
    /// show yet.
    pub remembered_failures: u32,
    /// The expiry of the valid token the target Secret holds, if it holds one.
    pub valid_until: Option<Timestamp>,
    /// When the token this TokenSource wrote to the Secret expired, if it has.
    pub expired_at: Option<Timestamp>,
    /// The fingerprint of the spec and credentials that failed, once it is known.
    pub fingerprint: Option<&'a str>,
    pub generation: Option<i64>,
    pub target: &'a str,
    /// The time of the attempt, in whole seconds, as status shows times.
    pub now: Timestamp,
    /// The time of the attempt to the nanosecond: the next attempt is at least a second after
    /// it, not after `now`, which may be almost a second earlier.
    pub clock: Timestamp,
    /// In `[0, 1)`: spreads retries.
    pub jitter: f64,
}

/// The outcome of a failure, and the record to remember for the backoff (retryable failures only).
/// Its requeue counts from `now`, as every requeue of a reconcile does (the reconcile takes its
/// own length off).
pub fn on_failure(input: FailureInput<'_>) -> (Outcome, Option<FailureRecord>) {
    let FailureInput {
        error,
        message,
        mut status,
        remembered_failures,
        valid_until,
        expired_at,
        fingerprint,
        generation,
        target,
        now,
        clock,
        jitter,
    } = input;
    let (reason, class) = error.classify();
    let message = message::cut(&message);
    let keep_ready = valid_until.is_some() && error.keeps_token();
    // The same failure seen again without a new attempt (a spec or credential problem found on
    // every reconcile) is not a new failure: count and time stay, so the status settles.
    let repeated = class.is_none()
        && find(&status, ConditionType::Degraded)
            .is_some_and(|c| ConditionStatus::True == c.status && reason == c.reason && c.message == message);
    if !repeated {
        let failures = u32::try_from(status.failed_renewal_attempts).unwrap_or(0).max(remembered_failures);
        status.failed_renewal_attempts = i32::try_from(failures.saturating_add(1)).unwrap_or(i32::MAX);
        status.last_failure_time = Some(Time(now));
    }
    let failures = u32::try_from(status.failed_renewal_attempts).unwrap_or(0);
    let ready = match (keep_ready, expired_at) {
        (true, _) => {
            let until = valid_until.map(|v| v.to_string()).unwrap_or_default();
            let msg = format!("Secret {target:?} holds a token valid until {until}; renewing it failed");
            condition(ConditionType::Ready, true, Reason::TokenValid, msg, generation, now)
        }
        // The Secret's token ran out while renewals failed: Ready says so, Degraded says why.
        (false, Some(at)) if class.is_some() => expired(target, at, generation, now),
        (false, _) => condition(ConditionType::Ready, false, reason, message.clone(), generation, now),
    };
    set_condition(&mut status.conditions, ready);
    set_condition(
        &mut status.conditions,
        condition(ConditionType::Degraded, true, reason, message.clone(), generation, now),
    );
    let mut record = None;
    let requeue = match class {
        Some(class) => {
            let at = schedule::retry_at(clock, failures, class, error.retry_after(), valid_until, jitter);
            let owed_from = matches!(error, Error::FetchToken(_)).then_some(at);
            record = fingerprint.map(|fp| FailureRecord {
                fingerprint: fp.to_string(),
                retry_at: at,
                failures,
                owed_from,
                upstream: None,
                refused_write: None,
            });
            status.renewal_time = Some(Time(at));
            Some(until(now, at))
        }
        None => {
            // Nothing to retry until the spec or a watched object changes (or, for what is not
            // watched, a while has passed); a valid token still needs attention before it expires.
            // The same failure keeps the look it planned: a status written anew with another
            // random time would be an event that reconciles again, and so on at the API's speed.
            let spread = |d: std::time::Duration| d.mul_f64(1.0 + jitter.clamp(0.0, 1.0));
            let planned = status.renewal_time.as_ref().map(|t| t.0).filter(|at| repeated && *at > clock);
            let recheck = error.recheck().map(|d| {
                let d = jiff::SignedDuration::try_from(spread(d)).unwrap_or(jiff::SignedDuration::ZERO);
                planned.unwrap_or_else(|| schedule::ceil_second(schedule::add(clock, d)))
            });
            status.renewal_time = recheck.map(Time);
            [valid_until.map(|v| until(now, v)), recheck.map(|at| until(now, at))].into_iter().flatten().min()
        }
    };
    if !keep_ready {
        status.expiration_time = valid_until.map(Time).or(status.expiration_time);
    }
    let event = (!repeated).then_some(Note { warning: true, reason, message });
    (Outcome { status, requeue, event, deferred: false }, record)
}

/// How to fix the usual mistakes behind a provider's refusal, in plain words.
pub fn hint(ts: &crate::crd::TokenSource, error: &Error) -> Option<&'static str> {
    use crate::crd::{ClientAuthType, OAuth2BodyType};
    use crate::error::ProviderError;
    let Error::FetchToken(ProviderError::Status { status, detail, .. }) = error else { return None };
    let oauth2 = ts.spec.oauth2.as_ref()?;
    let said = |what: &str| detail.as_deref().is_some_and(|d| d.contains(what));
    if ts.spec.service_account_token().is_some() && (said("invalid_client") || said("invalid_grant") || *status == 401)
    {
        return Some(
            "check the provider's trust of this cluster: the issuer must be the cluster's service-account issuer, the subject system:serviceaccount:NAMESPACE:SERVICEACCOUNT and the audience serviceAccountToken.audience",
        );
    }
    if said("invalid_client") || (*status == 401 && !said("invalid_grant")) {
        return match oauth2.client_auth.as_ref().map(|a| a.type_) {
            Some(ClientAuthType::ClientSecretBasic) => Some(
                "check the client id and secret; if they are right, the provider may expect them in the body: try clientAuth.type ClientSecretPost",
            ),
            Some(ClientAuthType::ClientSecretPost) => Some(
                "check the client id and secret; if they are right, the provider may expect them in the Authorization header: try clientAuth.type ClientSecretBasic",
            ),
            _ => Some("check the client's credentials and that the provider registered this authentication method"),
        };
    }
    if matches!(status, 400 | 415) && (said("invalid_request") || said("unsupported") || said("content")) {
        return Some(match oauth2.body_type {
            OAuth2BodyType::Form => "the provider may expect a JSON body: try oauth2.bodyType JSON",
            _ => "the provider may expect a form body (RFC 6749): try oauth2.bodyType Form",
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::error::{ProviderError, UpstreamState};

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn input<'a>(error: &'a Error, status: TokenSourceStatus, valid_until: Option<i64>) -> FailureInput<'a> {
        FailureInput {
            error,
            message: error.to_string(),
            status,
            remembered_failures: 0,
            valid_until: valid_until.map(t),
            expired_at: None,
            fingerprint: Some("fp"),
            generation: Some(1),
            target: "tok",
            now: t(0),
            clock: t(0),
            jitter: 1.0,
        }
    }

    fn cond(o: &Outcome, type_: ConditionType) -> (String, String) {
        let c = o.status.conditions.iter().find(|c| type_ == c.type_).unwrap();
        (c.status.clone(), c.reason.clone())
    }

    fn http(status: u16, retry_after: Option<u64>) -> Error {
        Error::FetchToken(ProviderError::Status {
            status,
            detail: Some("maintenance".into()),
            retry_after: retry_after.map(Duration::from_secs),
        })
    }

    #[test]
    fn a_transient_failure_with_a_valid_token_keeps_ready_and_degrades() {
        let err = http(503, None);
        let (o, record) = on_failure(input(&err, TokenSourceStatus::default(), Some(3600)));
        assert_eq!(cond(&o, ConditionType::Ready), ("True".into(), "TokenValid".into()));
        assert_eq!(cond(&o, ConditionType::Degraded), ("True".into(), "ProviderUnavailable".into()));
        assert_eq!(o.status.failed_renewal_attempts, 1);
        assert_eq!(o.status.last_failure_time, Some(Time(t(0))));
        assert_eq!(o.requeue, Some(Duration::from_secs(2)), "transient: 2 s first");
        assert_eq!(
            record,
            Some(FailureRecord {
                fingerprint: "fp".into(),
                retry_at: t(2),
                failures: 1,
                owed_from: Some(t(2)),
                upstream: None,
                refused_write: None,
            })
        );
        let ev = o.event.unwrap();
        assert!(ev.warning && ev.reason == Reason::ProviderUnavailable && ev.message.contains("maintenance"));
    }

    #[test]
    fn an_invalid_spec_is_not_ready_even_with_a_valid_token_and_is_not_retried() {
        let err = Error::InvalidSpec("response.tokenPath: bad".into());
        let (o, record) = on_failure(input(&err, TokenSourceStatus::default(), Some(3600)));
        assert_eq!(cond(&o, ConditionType::Ready), ("False".into(), "InvalidSpec".into()));
        assert_eq!(o.status.renewal_time, None);
        assert_eq!(o.requeue, Some(Duration::from_secs(3600)), "woken at expiry to report it");
        assert_eq!(o.status.expiration_time, Some(Time(t(3600))));
        assert_eq!(record, None, "nothing to back off from");
    }

    #[test]
    fn a_missing_upstream_is_not_ready_an_unready_one_keeps_the_token() {
        let missing = Error::Upstream { name: "mgmt".into(), state: UpstreamState::Missing };
        let (o, _) = on_failure(input(&missing, TokenSourceStatus::default(), Some(3600)));
        assert_eq!(cond(&o, ConditionType::Ready), ("False".into(), "WaitingForUpstream".into()));
        let not_ready = Error::Upstream { name: "mgmt".into(), state: UpstreamState::NotReady };
        let (o, _) = on_failure(input(&not_ready, TokenSourceStatus::default(), Some(3600)));
        assert_eq!(cond(&o, ConditionType::Ready), ("True".into(), "TokenValid".into()));
        assert_eq!(cond(&o, ConditionType::Degraded), ("True".into(), "WaitingForUpstream".into()));
        let (o, _) = on_failure(input(&not_ready, TokenSourceStatus::default(), None));
        assert_eq!(cond(&o, ConditionType::Ready), ("False".into(), "WaitingForUpstream".into()));
        assert_eq!(o.requeue, None, "woken by the upstream's Secret, not by a timer");
    }

    #[test]
    fn a_missing_config_map_is_looked_at_again_without_counting_a_failure_per_look() {
        let err = Error::ConfigMapNotFound("ConfigMap \"ca\" not found".into());
        let (first, record) = on_failure(input(&err, TokenSourceStatus::default(), None));
        assert_eq!(record, None, "no backoff: a missing ConfigMap is no attempt that failed");
        assert_eq!(first.requeue, Some(Duration::from_secs(30)), "15 s, spread by the jitter (1.0 here)");
        assert_eq!(first.status.renewal_time, Some(Time(t(30))));
        let mut look = input(&err, first.status.clone(), None);
        look.jitter = 0.0;
        let (again, _) = on_failure(look);
        assert_eq!(again.status, first.status, "the same failure writes the same status: no write, no event");
        assert_eq!(again.requeue, Some(Duration::from_secs(30)), "the planned look stays");
        assert!(again.event.is_none());
        // Once the planned look has come, the next is planned.
        let mut later = input(&err, first.status.clone(), None);
        (later.now, later.clock, later.jitter) = (t(30), t(30), 0.0);
        let (later, _) = on_failure(later);
        assert_eq!(later.status.renewal_time, Some(Time(t(45))));
        let (valid, _) = on_failure(input(&err, TokenSourceStatus::default(), Some(10)));
        assert_eq!(valid.requeue, Some(Duration::from_secs(10)), "the token's expiry comes first");
    }

    #[test]
    fn a_repeated_non_retryable_failure_neither_counts_nor_announces_itself_again() {
        let err = Error::CredentialsNotFound("Secret \"creds\" not found".into());
        let (first, _) = on_failure(input(&err, TokenSourceStatus::default(), None));
        assert_eq!(first.status.failed_renewal_attempts, 1);
        assert!(first.event.is_some());
        let mut later = input(&err, first.status.clone(), None);
        later.now = t(60);
        later.clock = t(60);
        let (second, _) = on_failure(later);
        assert_eq!(second.status, first.status, "the status settles");
        assert_eq!(second.event, None);
        // A retryable failure counts every attempt.
        let err = http(401, None);
        let (a, _) = on_failure(input(&err, TokenSourceStatus::default(), None));
        let (b, _) = on_failure(input(&err, a.status.clone(), None));
        assert_eq!((a.status.failed_renewal_attempts, b.status.failed_renewal_attempts), (1, 2));
        assert!(b.event.is_some());
    }

    #[test]
    fn the_requeue_counts_from_the_start_of_the_reconcile_like_every_other() {
        let err = http(503, None);
        let mut i = input(&err, TokenSourceStatus::default(), None);
        i.clock = t(3);
        let (o, record) = on_failure(i);
        assert_eq!(record.map(|r| r.retry_at), Some(t(5)), "2 s after the attempt ended");
        assert_eq!(o.requeue, Some(Duration::from_secs(5)), "the reconcile takes its 3 s off");
    }

    #[test]
    fn the_remembered_count_wins_over_a_lagging_status() {
        let err = http(500, None);
        let mut i = input(&err, TokenSourceStatus::default(), None);
        i.remembered_failures = 4;
        let (o, record) = on_failure(i);
        assert_eq!(o.status.failed_renewal_attempts, 5);
        assert_eq!(record.map(|r| r.failures), Some(5));
    }

    #[test]
    fn a_retry_never_sleeps_past_expiry() {
        let err = http(401, None);
        let mut i = input(&err, TokenSourceStatus::default(), Some(10));
        i.remembered_failures = 10;
        let (o, _) = on_failure(i);
        let next = o.status.renewal_time.unwrap().0;
        assert!(next < t(10), "{next}");
        assert!(o.requeue.unwrap() < Duration::from_secs(10));
    }

    #[test]
    fn an_expired_token_turns_ready_false_as_expired_while_degraded_says_why() {
        let err = http(503, None);
        let mut i = input(&err, TokenSourceStatus::default(), None);
        i.expired_at = Some(t(-1));
        let (o, _) = on_failure(i);
        assert_eq!(cond(&o, ConditionType::Ready), ("False".into(), "Expired".into()));
        assert_eq!(cond(&o, ConditionType::Degraded), ("True".into(), "ProviderUnavailable".into()));
        // A spec problem is what Ready reports, expired token or not.
        let err = Error::InvalidSpec("bad".into());
        let mut i = input(&err, TokenSourceStatus::default(), None);
        i.expired_at = Some(t(-1));
        assert_eq!(cond(&on_failure(i).0, ConditionType::Ready), ("False".into(), "InvalidSpec".into()));
    }

    #[test]
    fn messages_are_bounded() {
        let err = Error::FetchToken(ProviderError::BadResponse("x".repeat(100_000)));
        let (o, _) = on_failure(input(&err, TokenSourceStatus::default(), None));
        let degraded = o.status.conditions.iter().find(|c| c.type_ == "Degraded").unwrap();
        assert!(degraded.message.len() <= 1024, "{}", degraded.message.len());
        assert!(o.event.unwrap().message.len() <= 1024);
    }

    #[test]
    fn retry_after_is_honoured() {
        let err = http(429, Some(120));
        let (o, record) = on_failure(input(&err, TokenSourceStatus::default(), None));
        assert_eq!(cond(&o, ConditionType::Ready), ("False".into(), "ProviderThrottled".into()));
        assert_eq!(o.requeue, Some(Duration::from_secs(120)));
        // A provider cannot push the next attempt past five minutes.
        let err = http(503, Some(86_400));
        let (o, _) = on_failure(input(&err, TokenSourceStatus::default(), None));
        assert_eq!(o.requeue, Some(Duration::from_secs(300)));
        assert_eq!(record.map(|r| r.retry_at), Some(t(120)));
    }

    #[test]
    fn failures_before_the_fingerprint_is_known_leave_no_record() {
        let err = Error::Kube(kube::Error::LinesCodecMaxLineLengthExceeded);
        let mut i = input(&err, TokenSourceStatus::default(), None);
        i.fingerprint = None;
        let (o, record) = on_failure(i);
        assert_eq!(cond(&o, ConditionType::Ready), ("False".into(), "KubernetesError".into()));
        assert!(o.requeue.is_some());
        assert_eq!(record, None);
    }

    #[test]
    fn refusals_say_how_to_fix_the_usual_mistakes() {
        use crate::error::ProviderError;
        let ts = |auth: &str, body: &str| -> crate::crd::TokenSource {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "tokensource.dev/v1alpha1", "kind": "TokenSource", "metadata": {"name": "a", "namespace": "n"},
                "spec": {"type": "OAuth2", "oauth2": {"tokenURL": "https://idp.example/token", "clientID": {"value": "a"}, "bodyType": body,
                         "clientAuth": {"type": auth, "clientSecretRef": {"name": "c", "key": "k"}}}, "target": {"name": "t"}}
            }))
            .unwrap()
        };
        let refused = |status: u16, detail: &str| {
            Error::FetchToken(ProviderError::Status { status, detail: Some(detail.into()), retry_after: None })
        };
        let basic = ts("ClientSecretBasic", "Form");
        assert!(
            hint(&basic, &refused(401, "invalid_client")).unwrap().contains("try clientAuth.type ClientSecretPost")
        );
        let post = ts("ClientSecretPost", "JSON");
        assert!(
            hint(&post, &refused(400, "invalid_client: bad"))
                .unwrap()
                .contains("try clientAuth.type ClientSecretBasic")
        );
        assert!(hint(&basic, &refused(400, "invalid_request: missing grant_type")).unwrap().contains("bodyType JSON"));
        assert!(hint(&post, &refused(415, "unsupported media type")).unwrap().contains("bodyType Form"));
        assert_eq!(hint(&basic, &refused(503, "maintenance")), None);
        assert_eq!(hint(&basic, &refused(400, "invalid_grant")), None);
    }
}
