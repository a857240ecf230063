//! The apply step: the target Secret, written with server-side apply under the operator's field
//! manager, and only to the Secret the reconcile saw: which Secret is written is decided by the
//! API server at the moment of the write, not by an earlier read.
//!
//! - No Secret was there: the write creates one, or fails with `409 Conflict` if a Secret of
//!   that name exists by the time it arrives (created by someone else meanwhile): it carries a
//!   `resourceVersion` that no object can have, which a create ignores and an update must match.
//!   (Not a `POST`: fields a create writes stay owned by an update manager, and a later apply
//!   that stops setting one of them, such as a template key removed, would leave it behind.)
//! - The operator's Secret was there: the write carries its `uid`, so it fails if that Secret
//!   was replaced by another of the same name (`422`, the uid cannot change) or deleted (`409`,
//!   and the Secret is then created as above).
//!
//! Either way one request per write, as before.

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::{Context, MANAGER};
use crate::crd::{CreationPolicy, TokenSource};
use crate::error::Error;
use crate::secret::Stored;

/// A `resourceVersion` no object has: an etcd revision is a positive signed 64-bit number, and
/// the API server parses this one as an unsigned one. Sent with a server-side apply, it makes the
/// apply a create.
const NO_OBJECT_HAS: &str = "18446744073709551615";

/// The Secret a write may go to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expected<'a> {
    /// None: the write creates it.
    Absent,
    /// The object with this uid.
    Object(&'a str),
}

impl Context {
    /// Applies `desired` (built by [`crate::secret::desired`], without managed fields) as the
    /// TokenSource's target Secret, over `stored`, the Secret the reconcile read (`None`: there
    /// was none). Returns the resourceVersion the Secret has after the write.
    pub(super) async fn apply_secret(
        &self,
        ts: &TokenSource,
        desired: &Secret,
        stored: Option<&Stored>,
    ) -> Result<Option<String>, Error> {
        let expected = match stored {
            None => Expected::Absent,
            Some(s) => Expected::Object(
                s.uid
                    .as_deref()
                    .filter(|u| !u.is_empty())
                    .ok_or_else(|| Error::Internal("the target Secret was read without its uid".into()))?,
            ),
        };
        let written = match self.apply_once(ts, desired, expected).await {
            // The Secret the reconcile saw was deleted since: it is created again, if the name
            // is still free.
            Err(Gone) if expected != Expected::Absent => self.apply_once(ts, desired, Expected::Absent).await,
            other => other,
        };
        let written = written.map_err(|e| {
            // What the Secret is now is asked of the API again.
            self.memory.remember_absent(&kube::runtime::reflector::ObjectRef::from_obj(ts), None);
            match e {
                Failed(e) => e,
                Gone => Error::SecretConflict(ts.spec.target.name.clone()),
            }
        })?;
        self.metrics.secret_writes.inc();
        Ok(written.metadata.resource_version)
    }

    /// Makes the TokenSource's owner reference on its Secret what `creationPolicy` asks, and
    /// nothing else: the policy applied while the token cannot be written again (under
    /// `Orphan` the garbage collector would otherwise delete the Secret with the TokenSource;
    /// back to `Owner`, it would keep it). The Secret is read whole (other owners' references
    /// stay) and written only if it has not changed since; the owner-uid annotation keeps its
    /// claim whatever the references say. Returns the resourceVersion after the write; `None`
    /// if there was nothing to change.
    pub(super) async fn set_owner_reference(&self, ts: &TokenSource) -> Result<Option<String>, Error> {
        let uid = ts.meta().uid.as_deref().unwrap_or_default();
        let api = self.api::<Secret>(&ts.namespace().unwrap_or_default());
        let name = &ts.spec.target.name;
        let Some(secret) = api.get_opt(name).await.map_err(Error::Kube)? else { return Ok(None) };
        let owned = ts.spec.target.creation_policy == CreationPolicy::Owner;
        if crate::secret::owned_by(&secret, uid) == owned {
            return Ok(None);
        }
        let mut references: Vec<_> = secret.owner_references().iter().filter(|r| r.uid != uid).cloned().collect();
        if owned {
            references.extend(ts.controller_owner_ref(&()));
        }
        let patch = json!({"metadata": {
            "ownerReferences": references,
            "annotations": {crate::secret::OWNER_UID_ANNOTATION: uid},
            "resourceVersion": secret.resource_version(),
        }});
        let params = PatchParams { field_manager: Some(MANAGER.into()), ..PatchParams::default() };
        let write = async { api.patch(name, &params, &Patch::Merge(&patch)).await.map_err(Error::ApplySecret) };
        let written = self.config.leadership.fenced(write).await?;
        self.metrics.secret_writes.inc();
        Ok(written.metadata.resource_version)
    }

    async fn apply_once(&self, ts: &TokenSource, desired: &Secret, expected: Expected<'_>) -> Result<Secret, Failure> {
        let mut metadata = desired.metadata.clone();
        match expected {
            Expected::Absent => metadata.resource_version = Some(NO_OBJECT_HAS.into()),
            Expected::Object(uid) => metadata.uid = Some(uid.into()),
        }
        let patch = json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": metadata,
            "type": desired.type_,
            "data": desired.data,
        });
        let name = &ts.spec.target.name;
        let api = self.api::<Secret>(&ts.namespace().unwrap_or_default());
        let params = PatchParams::apply(MANAGER).force();
        let write = async { api.patch(name, &params, &Patch::Apply(&patch)).await.map_err(Error::ApplySecret) };
        match self.config.leadership.fenced(write).await {
            Ok(s) => Ok(s),
            Err(Error::ApplySecret(kube::Error::Api(s))) => Err(refused(expected, name, s)),
            Err(e) => Err(Failed(e)),
        }
    }
}

/// Why one apply did not write.
enum Failure {
    /// The Secret it was to update is gone.
    Gone,
    Failed(Error),
}
use Failure::{Failed, Gone};

/// What the API server's refusal of an apply over `expected` means.
fn refused(expected: Expected<'_>, name: &str, s: Box<kube::core::Status>) -> Failure {
    let conflict = || Failed(Error::SecretConflict(name.to_string()));
    let uid_refused = || match &s.details {
        Some(d) if !d.causes.is_empty() => d.causes.iter().any(|c| c.field == "metadata.uid"),
        _ => s.message.contains("metadata.uid"),
    };
    match (expected, s.code) {
        // A Secret of that name was created since the reconcile found none.
        (Expected::Absent, 409) => conflict(),
        // "uid mismatch: the provided object specified uid ..., and no existing object was found"
        (Expected::Object(_), 409) if s.message.contains("uid mismatch") => Gone,
        // "metadata.uid: Invalid value: ...: field is immutable": another Secret took the name.
        (Expected::Object(_), 422) if uid_refused() => conflict(),
        _ => Failed(Error::ApplySecret(kube::Error::Api(s))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(code: u16, message: &str) -> Box<kube::core::Status> {
        serde_json::from_value(json!({"status": "Failure", "code": code, "reason": "x", "message": message})).unwrap()
    }

    #[test]
    fn refusals_are_read_as_the_api_server_words_them() {
        let conflict = |f: Failure| matches!(f, Failed(Error::SecretConflict(n)) if n == "t");
        let taken = "Operation cannot be fulfilled on secrets \"t\": the object has been modified; please apply your changes to the latest version and try again";
        assert!(conflict(refused(Expected::Absent, "t", answer(409, taken))));
        let gone = "Operation cannot be fulfilled on secrets \"t\": uid mismatch: the provided object specified uid 1, and no existing object was found";
        assert!(matches!(refused(Expected::Object("1"), "t", answer(409, gone)), Gone));
        let replaced = "Secret \"t\" is invalid: metadata.uid: Invalid value: \"1\": field is immutable";
        assert!(conflict(refused(Expected::Object("1"), "t", answer(422, replaced))));
        let other = "Secret \"t\" is invalid: data[tls.key]: Required value";
        assert!(matches!(refused(Expected::Object("1"), "t", answer(422, other)), Failed(Error::ApplySecret(_))));
        assert!(matches!(refused(Expected::Absent, "t", answer(500, "etcd")), Failed(Error::ApplySecret(_))));
    }
}
