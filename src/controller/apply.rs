//! The apply step: the target Secret, written with server-side apply under the operator's field
//! manager.

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Patch, PatchParams};
use serde_json::json;

use super::{Context, MANAGER};
use crate::crd::TokenSource;
use crate::error::Error;

impl Context {
    /// Applies `desired` (built by [`crate::secret::desired`], without managed fields) as the
    /// TokenSource's target Secret.
    /// Returns the resourceVersion the Secret has after the write.
    pub(super) async fn apply_secret(&self, ts: &TokenSource, desired: &Secret) -> Result<Option<String>, Error> {
        let patch = json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": desired.metadata,
            "type": desired.type_,
            "data": desired.data,
        });
        let api = self.api::<Secret>(&ts.namespace().unwrap_or_default());
        let params = PatchParams::apply(MANAGER).force();
        let write =
            async { api.patch(&ts.spec.target.name, &params, &Patch::Apply(&patch)).await.map_err(Error::ApplySecret) };
        let written = self.config.leadership.fenced(write).await?;
        self.metrics.secret_writes.inc();
        Ok(written.metadata.resource_version)
    }
}
