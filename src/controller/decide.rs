//! The pure decisions: keep the stored token or fetch a new one, whether a backoff still holds,
//! and the fingerprint that tells whether a stored token came from today's spec and credentials.

use jiff::Timestamp;
use kube::Resource;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::memory::FailureRecord;
use crate::crd::{TokenSource, TokenSourceStatus};
use crate::credentials::Credentials;
use crate::response::Token;
use crate::schedule::{self, Policy};
use crate::secret::Stored;

/// Keep the token in hand until `refresh_at`, or fetch a new one and why.
#[derive(Debug, PartialEq)]
pub enum Decision {
    Keep {
        refresh_at: Timestamp,
    },
    Fetch {
        why: &'static str,
    },
    /// The token has expired, but renewals are at least [`schedule::MIN_RENEWAL_INTERVAL`]
    /// apart: the next one is at `until` (only tokens that live shorter than that get here).
    Wait {
        until: Timestamp,
        expired_at: Timestamp,
    },
}

/// Keep or fetch, for the token in hand (`held`: when it was issued, when it expires and the
/// renewal planned for it, if any), or `missing` as the reason when there is none. The renewal
/// time is the planned one (kept with the token in the Secret) within the policy's bounds, else
/// recomputed with the token's own fixed jitter: every reconcile and every restart arrives at
/// the same time.
pub fn decide(
    held: Option<(Timestamp, Timestamp, Option<Timestamp>)>,
    missing: &'static str,
    uid: &str,
    policy: &Policy,
    now: Timestamp,
) -> Decision {
    let Some((issued, expires, planned)) = held else { return Decision::Fetch { why: missing } };
    if expires <= now {
        let earliest = schedule::add(issued, schedule::MIN_RENEWAL_INTERVAL);
        if now < earliest {
            return Decision::Wait { until: earliest, expired_at: expires };
        }
        return Decision::Fetch { why: "Expired" };
    }
    let refresh_at = policy.planned_refresh_at(issued, expires, schedule::jitter_for(uid, issued), planned);
    if refresh_at <= now {
        return Decision::Fetch { why: "RenewalDue" };
    }
    Decision::Keep { refresh_at }
}

/// When `token` of the TokenSource with `uid` is renewed: its planned time, else the policy's.
pub fn renewal_of(token: &Token, uid: &str, policy: &Policy) -> Timestamp {
    let jitter = schedule::jitter_for(uid, token.issued_at);
    policy.planned_refresh_at(token.issued_at, token.expires_at, jitter, token.renew_at)
}

/// Why there is no token in hand for today's request: what the Secret says.
pub fn missing(stored: Option<&Stored>, fingerprint: &str) -> &'static str {
    match stored {
        Some(s) if s.has_token && s.fingerprint.as_deref() != Some(fingerprint) => "SpecOrCredentialsChanged",
        Some(s) if s.has_token && !s.intact => "SecretChanged",
        Some(s) if s.has_token && s.expires_at.is_none() => "NoExpiry",
        _ => "NoToken",
    }
}

/// Whether the Secret must be written to hold the token in hand (issued at `issued`) in today's
/// `shape`, and why: it is gone, someone changed its data, a write of the token failed, or the
/// template changed.
pub fn needs_write(stored: Option<&Stored>, issued: Timestamp, shape: &str) -> Option<&'static str> {
    match stored {
        None => Some("SecretDeleted"),
        Some(s) if !s.intact || !s.has_token => Some("SecretChanged"),
        Some(s) if s.refreshed_at != Some(issued) => Some("NotWrittenYet"),
        Some(s) if s.shape.as_deref() != Some(shape) => Some("TemplateChanged"),
        Some(_) => None,
    }
}

/// The pending retry time after failures, when nothing that produced them has changed. This
/// instance's own record decides; after a restart the status does: its retry time holds while
/// the spec generation is the one that failed (`failed_generation`, the `observedGeneration` the
/// stored status was written for, not the one this reconcile is about to write).
pub fn backoff_pending(
    remembered: Option<&FailureRecord>,
    status: &TokenSourceStatus,
    failed_generation: Option<i64>,
    generation: Option<i64>,
    (fingerprint, upstream): (&str, Option<u64>),
    now: Timestamp,
) -> Option<Timestamp> {
    if let Some(f) = remembered {
        // A refusal of a request that carried an upstream token ends with that token.
        let same_upstream = f.upstream.is_none_or(|u| Some(u) == upstream);
        // A provider's backoff outlasts a later failure of another kind (a refused write).
        let until = f.owed_from.map_or(f.retry_at, |owed| owed.max(f.retry_at));
        return (f.fingerprint == fingerprint && same_upstream && until > now).then_some(until);
    }
    if status.failed_renewal_attempts == 0 || failed_generation != generation {
        return None;
    }
    status.renewal_time.as_ref().map(|t| t.0).filter(|t| *t > now)
}

/// The request and reply specs as canonical JSON (keys sorted): what a token is fetched for.
/// Worked out once per reconcile for [`fingerprint`] and [`request_key`].
pub fn request_spec(ts: &TokenSource) -> String {
    let spec = &ts.spec;
    json!({
        "type": spec.type_,
        "oauth2": spec.oauth2,
        "http": spec.http,
        "tls": spec.tls,
        "response": spec.response,
    })
    .to_string()
}

/// A hash of everything that shaped the request and the reading of its reply: the request and
/// reply specs ([`request_spec`]) and the values read from Secrets and ConfigMaps, salted with
/// the TokenSource's uid. A change means a new token is needed; the credentials cannot be
/// recovered from it.
pub fn fingerprint(ts: &TokenSource, request: &str, creds: &Credentials) -> String {
    let mut h = Sha256::new();
    h.update(ts.meta().uid.as_deref().unwrap_or_default().as_bytes());
    request_hash(h, request, creds)
}

/// Adds the request and reply specs and every credential value to `h`.
fn request_hash(mut h: Sha256, request: &str, creds: &Credentials) -> String {
    h.update(request.as_bytes());
    for v in creds.all_values() {
        h.update((v.len() as u64).to_be_bytes());
        h.update(v);
    }
    hex(h)
}

/// What TokenSources sending identical requests share: the fingerprint's request and values,
/// scoped to the namespace instead of salted with the uid.
pub fn request_key(ts: &TokenSource, request: &str, creds: &Credentials) -> String {
    let mut h = Sha256::new();
    h.update(b"shared\0");
    h.update(ts.meta().namespace.as_deref().unwrap_or_default().as_bytes());
    h.update(b"\0");
    request_hash(h, request, creds)
}

/// A hash of what shapes the Secret around the token: the template and the creation policy. A
/// change re-renders the Secret from the token it holds; it needs no new token.
pub fn shape(ts: &TokenSource) -> String {
    let target = &ts.spec.target;
    let mut h = Sha256::new();
    h.update(ts.meta().uid.as_deref().unwrap_or_default().as_bytes());
    h.update(json!({"creationPolicy": target.creation_policy, "template": target.template}).to_string().as_bytes());
    hex(h)
}

fn hex(h: Sha256) -> String {
    h.finalize().iter().take(16).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use crate::crd::SecretKeyRef;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn stored(fp: &str, issued: i64, expires: i64) -> Stored {
        Stored {
            owner: Some("x".into()),
            fingerprint: Some(fp.into()),
            expires_at: Some(t(expires)),
            refreshed_at: Some(t(issued)),
            has_token: true,
            shape: Some("shape".into()),
            intact: true,
            ..Default::default()
        }
    }

    fn policy() -> Policy {
        Policy::new(&Default::default(), Duration::from_secs(120)).unwrap()
    }

    fn held(issued: i64, expires: i64) -> Option<(Timestamp, Timestamp, Option<Timestamp>)> {
        Some((t(issued), t(expires), None))
    }

    #[test]
    fn a_planned_renewal_is_kept_to() {
        let planned = Some((t(0), t(3600), Some(t(1500))));
        assert_eq!(decide(planned, "NoToken", "u", &policy(), t(1499)), Decision::Keep { refresh_at: t(1500) });
        assert_eq!(decide(planned, "NoToken", "u", &policy(), t(1500)), Decision::Fetch { why: "RenewalDue" });
    }

    #[test]
    fn keeps_a_valid_token_with_a_stable_schedule() {
        let a = decide(held(0, 3600), "NoToken", "uid-1", &policy(), t(10));
        let Decision::Keep { refresh_at } = a else { panic!("{a:?}") };
        // Default: renew with a third left, up to a tenth of that window earlier.
        assert!(refresh_at <= t(2412) && refresh_at >= t(2292), "{refresh_at}");
        assert_eq!(decide(held(0, 3600), "NoToken", "uid-1", &policy(), t(500)), a, "same time on every reconcile");
        let b = decide(held(0, 3600), "NoToken", "uid-2", &policy(), t(10));
        assert_ne!(a, b, "another TokenSource renews at another moment");
    }

    #[test]
    fn fetches_when_needed() {
        assert_eq!(decide(None, "NoToken", "u", &policy(), t(0)), Decision::Fetch { why: "NoToken" });
        assert_eq!(decide(held(0, 3600), "NoToken", "u", &policy(), t(2413)), Decision::Fetch { why: "RenewalDue" });
        assert_eq!(decide(held(0, 3600), "NoToken", "u", &policy(), t(3600)), Decision::Fetch { why: "Expired" });
        // A one-second token is expired a second after issue, and still renewed five seconds apart.
        assert_eq!(
            decide(held(0, 1), "NoToken", "u", &policy(), t(2)),
            Decision::Wait { until: t(5), expired_at: t(1) }
        );
        assert_eq!(decide(held(0, 1), "NoToken", "u", &policy(), t(5)), Decision::Fetch { why: "Expired" });
        assert_eq!(missing(None, "fp"), "NoToken");
        assert_eq!(missing(Some(&stored("old", 0, 3600)), "fp"), "SpecOrCredentialsChanged");
        let edited = Stored { intact: false, ..stored("fp", 0, 3600) };
        assert_eq!(missing(Some(&edited), "fp"), "SecretChanged");
    }

    #[test]
    fn the_secret_is_written_when_it_does_not_hold_the_token_in_today_s_shape() {
        let s = stored("fp", 0, 3600);
        assert_eq!(needs_write(Some(&s), t(0), "shape"), None, "nothing to do");
        assert_eq!(needs_write(None, t(0), "shape"), Some("SecretDeleted"));
        assert_eq!(needs_write(Some(&Stored { intact: false, ..s.clone() }), t(0), "shape"), Some("SecretChanged"));
        assert_eq!(needs_write(Some(&s), t(5), "shape"), Some("NotWrittenYet"), "a newer token is held");
        assert_eq!(needs_write(Some(&s), t(0), "new-template"), Some("TemplateChanged"));
    }

    fn failed_status(failures: i32, generation: i64, next: i64) -> TokenSourceStatus {
        TokenSourceStatus {
            failed_renewal_attempts: failures,
            observed_generation: Some(generation),
            renewal_time: Some(Time(t(next))),
            ..Default::default()
        }
    }

    #[test]
    fn backoff_holds_until_its_time_or_a_change() {
        let record = FailureRecord {
            fingerprint: "fp".into(),
            retry_at: t(30),
            failures: 1,
            owed_from: Some(t(30)),
            upstream: None,
            refused_write: None,
        };
        let none = TokenSourceStatus::default();
        assert_eq!(backoff_pending(Some(&record), &none, None, Some(1), ("fp", None), t(10)), Some(t(30)));
        assert_eq!(
            backoff_pending(Some(&record), &none, None, Some(1), ("fp", None), t(30)),
            None,
            "its time has come"
        );
        let write_refused_since = FailureRecord { retry_at: t(5), ..record.clone() };
        assert_eq!(
            backoff_pending(Some(&write_refused_since), &none, None, Some(1), ("fp", None), t(10)),
            Some(t(30)),
            "a write refused after the provider failed does not cut the provider's backoff short"
        );
        let chained = FailureRecord { upstream: Some(7), ..record.clone() };
        assert_eq!(backoff_pending(Some(&chained), &none, None, Some(1), ("fp", Some(7)), t(10)), Some(t(30)));
        assert_eq!(
            backoff_pending(Some(&chained), &none, None, Some(1), ("fp", Some(8)), t(10)),
            None,
            "the upstream's next token ends the backoff"
        );
        assert_eq!(
            backoff_pending(Some(&record), &none, None, Some(1), ("fp", Some(8)), t(10)),
            Some(t(30)),
            "not the backoff from an endpoint that failed to answer: the upstream token was not what failed"
        );
        assert_eq!(
            backoff_pending(Some(&record), &none, None, Some(1), ("rotated", None), t(10)),
            None,
            "credentials changed after the failure: the backoff is dropped"
        );
        // After a restart the status carries the backoff, for the generation that failed.
        assert_eq!(backoff_pending(None, &failed_status(2, 1, 60), Some(1), Some(1), ("fp", None), t(10)), Some(t(60)));
        assert_eq!(
            backoff_pending(None, &failed_status(2, 1, 60), Some(1), Some(2), ("fp", None), t(10)),
            None,
            "spec edited"
        );
        assert_eq!(
            backoff_pending(None, &failed_status(0, 1, 60), Some(1), Some(1), ("fp", None), t(10)),
            None,
            "no failure"
        );
        // The record wins over the status: a lagging cached status cannot shorten or extend it.
        assert_eq!(
            backoff_pending(Some(&record), &failed_status(2, 1, 600), Some(1), Some(1), ("fp", None), t(10)),
            Some(t(30))
        );
    }

    fn source() -> TokenSource {
        let mut ts: TokenSource = serde_json::from_value(json!({
            "apiVersion": "tokensource.dev/v1alpha1", "kind": "TokenSource",
            "metadata": {"name": "a", "namespace": "ns", "uid": "uid-1"},
            "spec": {"type": "HTTP", "http": {"url": "https://x.example/t"}, "target": {"name": "a-token"}}
        }))
        .unwrap();
        ts.metadata.uid = Some("uid-1".into());
        ts
    }

    fn fingerprint(ts: &TokenSource, creds: &Credentials) -> String {
        super::fingerprint(ts, &request_spec(ts), creds)
    }

    #[test]
    fn fingerprint_tracks_credentials_and_spec_not_refresh() {
        let a = source();
        let mut creds = Credentials::default();
        let fp1 = fingerprint(&a, &creds);
        creds.insert(SecretKeyRef { name: "c".into(), key: "k".into() }, b"v2".to_vec());
        let fp2 = fingerprint(&a, &creds);
        assert_ne!(fp1, fp2);
        let mut b = a.clone();
        b.spec.renewal.renew_before = Some("5m".into());
        assert_eq!(fingerprint(&b, &creds), fp2);
        let before = shape(&b);
        b.spec.target.template.data.insert("x".into(), "{{ token }}".into());
        b.spec.target.template.metadata.labels.insert("team".into(), "energy".into());
        assert_eq!(fingerprint(&b, &creds), fp2, "the template needs no new token");
        assert_ne!(shape(&b), before, "but a new rendering");
        b.spec.response.token.json_path = "$.token".into();
        assert_ne!(fingerprint(&b, &creds), fp2, "reading the reply differently needs a new token");
        assert!(!fp2.contains("v2"));
        let mut other = a.clone();
        other.metadata.uid = Some("uid-2".into());
        assert_ne!(fingerprint(&other, &creds), fp2, "salted per TokenSource");
    }
}
