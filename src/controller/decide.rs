//! The pure decisions: keep the stored token or fetch a new one, whether a backoff still holds,
//! and the fingerprint that tells whether a stored token came from today's spec and credentials.

use jiff::Timestamp;
use kube::Resource;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::memory::FailureRecord;
use crate::crd::{TokenSource, TokenSourceStatus};
use crate::credentials::Credentials;
use crate::schedule::{self, Policy};
use crate::secret::Stored;

/// Keep the stored token until `refresh_at`, or fetch a new one and why.
#[derive(Debug, PartialEq)]
pub enum Decision {
    Keep { refresh_at: Timestamp },
    Fetch { why: &'static str },
}

/// Keep or fetch. The renewal time of a stored token is recomputed, not read back from status,
/// with the token's own fixed jitter: every reconcile and every restart arrives at the same time.
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
    let refresh_at = policy.refresh_at(issued, expires, schedule::jitter_for(uid, issued));
    if refresh_at <= now {
        return Decision::Fetch { why: "RenewalDue" };
    }
    Decision::Keep { refresh_at }
}

/// The pending retry time after failures, when nothing that produced them has changed. This
/// instance's own record decides; after a restart the status does (its retry time holds while the
/// spec generation is the one that failed).
pub fn backoff_pending(
    remembered: Option<&FailureRecord>,
    status: &TokenSourceStatus,
    generation: Option<i64>,
    fingerprint: &str,
    now: Timestamp,
) -> Option<Timestamp> {
    if let Some(f) = remembered {
        return (f.fingerprint == fingerprint && f.retry_at > now).then_some(f.retry_at);
    }
    if status.failed_renewal_attempts == 0 || status.observed_generation != generation {
        return None;
    }
    status.renewal_time.as_ref().map(|t| t.0).filter(|t| *t > now)
}

/// A hash of everything that shaped the token: the request and reply specs, the templates and the
/// credential values, salted with the TokenSource's uid. A change means a new token is needed;
/// the credentials cannot be recovered from it.
pub fn fingerprint(ts: &TokenSource, creds: &Credentials) -> String {
    let spec = &ts.spec;
    let template = &spec.target.template;
    let shape = json!({
        "type": spec.type_,
        "oauth2": spec.oauth2,
        "http": spec.http,
        "tls": spec.tls,
        "response": spec.response,
        "data": template.data,
        "secretType": template.type_,
        "mergePolicy": template.merge_policy,
    });
    let mut h = Sha256::new();
    h.update(ts.meta().uid.as_deref().unwrap_or_default().as_bytes());
    h.update(shape.to_string().as_bytes());
    for v in creds.all_values() {
        h.update((v.len() as u64).to_be_bytes());
        h.update(v);
    }
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
            ..Default::default()
        }
    }

    fn policy() -> Policy {
        Policy::new(&Default::default(), Duration::from_secs(120)).unwrap()
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
        let record = FailureRecord { fingerprint: "fp".into(), retry_at: t(30), failures: 1 };
        let none = TokenSourceStatus::default();
        assert_eq!(backoff_pending(Some(&record), &none, Some(1), "fp", t(10)), Some(t(30)));
        assert_eq!(backoff_pending(Some(&record), &none, Some(1), "fp", t(30)), None, "its time has come");
        assert_eq!(
            backoff_pending(Some(&record), &none, Some(1), "rotated", t(10)),
            None,
            "credentials changed after the failure: the backoff is dropped"
        );
        // After a restart the status carries the backoff, for the generation that failed.
        assert_eq!(backoff_pending(None, &failed_status(2, 1, 60), Some(1), "fp", t(10)), Some(t(60)));
        assert_eq!(backoff_pending(None, &failed_status(2, 1, 60), Some(2), "fp", t(10)), None, "spec edited");
        assert_eq!(backoff_pending(None, &failed_status(0, 1, 60), Some(1), "fp", t(10)), None, "no failure");
        // The record wins over the status: a lagging cached status cannot shorten or extend it.
        assert_eq!(backoff_pending(Some(&record), &failed_status(2, 1, 600), Some(1), "fp", t(10)), Some(t(30)));
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
        b.spec.target.template.data.insert("x".into(), "{{ token }}".into());
        assert_ne!(fingerprint(&b, &creds), fp2);
        assert!(!fp2.contains("v2"));
        let mut other = a.clone();
        other.metadata.uid = Some("uid-2".into());
        assert_ne!(fingerprint(&other, &creds), fp2, "salted per TokenSource");
    }
}
