//! The operator's errors. One table ([`Error::classify`]) gives each its reason (the PascalCase
//! word of conditions, Events and metrics) and its retry class together.

use std::time::Duration;

use crate::conditions::Reason;

/// How a failure is retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryClass {
    /// Timeouts, connection errors, 5xx, 408, 429: retry soon.
    Transient,
    /// The endpoint rejected the request (4xx) or answered something unusable: retry slowly; a
    /// spec or credential change retries at once.
    Rejected,
}

/// What went wrong talking to a token endpoint. Messages carry what the endpoint answered, never
/// what was sent.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ProviderError {
    /// The endpoint could not be reached or did not answer in time.
    #[error("token endpoint unreachable: {0}")]
    Unreachable(String),
    /// The endpoint answered with an error status.
    #[error("token endpoint answered {status}{}", detail.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    Status { status: u16, detail: Option<String>, retry_after: Option<Duration> },
    /// The endpoint answered 2xx but the reply is not what the spec says it should be.
    #[error("token endpoint reply unusable: {0}")]
    BadResponse(String),
    /// The reply, or what the spec copies out of it, exceeds a limit; the message names it.
    #[error("token endpoint reply too large: {0}")]
    TooLarge(String),
    /// The endpoint's address is refused by the outbound policy; nothing was sent.
    #[error("token endpoint not allowed: {0}")]
    NotAllowed(String),
}

impl ProviderError {
    /// The reason and retry class of a provider failure.
    pub fn classify(&self) -> (Reason, RetryClass) {
        use RetryClass::{Rejected, Transient};
        match self {
            Self::Unreachable(_) => (Reason::ProviderUnreachable, Transient),
            Self::Status { status: 429, .. } => (Reason::ProviderThrottled, Transient),
            Self::Status { status: 408, .. } => (Reason::ProviderUnavailable, Transient),
            Self::Status { status, .. } if *status >= 500 => (Reason::ProviderUnavailable, Transient),
            Self::Status { .. } => (Reason::ProviderRejected, Rejected),
            Self::BadResponse(_) => (Reason::BadProviderResponse, Rejected),
            Self::TooLarge(_) => (Reason::LimitExceeded, Rejected),
            Self::NotAllowed(_) => (Reason::EndpointNotAllowed, Rejected),
        }
    }

    pub fn reason(&self) -> Reason {
        self.classify().0
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The same error with its text passed through `f` (to redact it).
    pub fn map_text(self, f: impl Fn(&str) -> String) -> Self {
        match self {
            Self::Unreachable(m) => Self::Unreachable(f(&m)),
            Self::Status { status, detail, retry_after } => {
                Self::Status { status, detail: detail.map(|d| f(&d)), retry_after }
            }
            Self::BadResponse(m) => Self::BadResponse(f(&m)),
            Self::TooLarge(m) => Self::TooLarge(f(&m)),
            Self::NotAllowed(m) => Self::NotAllowed(f(&m)),
        }
    }
}

/// Why a chained TokenSource cannot use its upstream yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamState {
    /// The upstream TokenSource does not exist.
    Missing,
    /// It exists but its Secret holds no valid token.
    NotReady,
}

/// A reconcile failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec cannot work as written; nothing is retried until it changes.
    #[error("{0}")]
    InvalidSpec(String),
    /// A referenced Secret, ConfigMap or key is missing.
    #[error("{0}")]
    CredentialsNotFound(String),
    /// A referenced ConfigMap or one of its keys is missing. ConfigMaps are not watched, so
    /// unlike a missing Secret this is tried again, with a backoff.
    #[error("{0}")]
    ConfigMapNotFound(String),
    /// A referenced credential exists but cannot be used.
    #[error("{0}")]
    CredentialsInvalid(String),
    /// The target Secret exists and was not written for this TokenSource (or was created by
    /// someone else just before the operator's write).
    #[error(
        "Secret {0:?} already exists and is not managed by this TokenSource; delete it, choose another target.name, or hand it over by annotating it tokensource.dev/owner-uid=<this TokenSource's uid>"
    )]
    SecretConflict(String),
    /// The ServiceAccount token of a workload identity flow could not be requested.
    #[error("{0}")]
    ServiceAccountToken(String),
    /// A chained TokenSource has no usable token.
    #[error("{}", upstream_message(name, *state))]
    Upstream { name: String, state: UpstreamState },
    /// The token request failed.
    #[error(transparent)]
    FetchToken(#[from] ProviderError),
    /// A template or field could not be rendered into the Secret.
    #[error("{0}")]
    RenderSecret(String),
    /// Writing the target Secret failed.
    #[error("writing the target Secret: {0}")]
    ApplySecret(#[source] kube::Error),
    /// Writing the status failed.
    #[error("updating status: {0}")]
    UpdateStatus(#[source] kube::Error),
    /// Reading from the Kubernetes API failed.
    #[error("reading from the Kubernetes API: {0}")]
    Kube(#[source] kube::Error),
    /// A limit on the work for one TokenSource was exceeded; the message names the limit.
    #[error("{0}")]
    Limit(String),
    /// The operator failed internally (a bug); the message says where to look.
    #[error("{0}")]
    Internal(String),
    /// This instance does not hold the leader Lease (any more): nothing was written.
    #[error("this instance does not hold the leader Lease; nothing was written")]
    NotLeader,
}

fn upstream_message(name: &str, state: UpstreamState) -> String {
    match state {
        UpstreamState::Missing => format!("TokenSource {name:?} not found"),
        UpstreamState::NotReady => format!("TokenSource {name:?} has no valid token yet"),
    }
}

impl Error {
    /// The reason and the retry class: `None` waits for a change to the TokenSource or to what it
    /// reads (all of it is watched).
    pub fn classify(&self) -> (Reason, Option<RetryClass>) {
        match self {
            Self::InvalidSpec(_) | Self::RenderSecret(_) => (Reason::InvalidSpec, None),
            Self::CredentialsNotFound(_) => (Reason::CredentialsNotFound, None),
            // Not a failure to back off from: looked at again after a while ([`Self::recheck`]).
            Self::ConfigMapNotFound(_) => (Reason::CredentialsNotFound, None),
            Self::CredentialsInvalid(_) => (Reason::CredentialsInvalid, None),
            Self::SecretConflict(_) => (Reason::SecretConflict, None),
            Self::Upstream { .. } => (Reason::WaitingForUpstream, None),
            // ServiceAccounts and RBAC are not watched: a fix is found by trying again.
            Self::ServiceAccountToken(_) => (Reason::ServiceAccountTokenFailed, Some(RetryClass::Transient)),
            Self::FetchToken(p) => {
                let (reason, class) = p.classify();
                (reason, Some(class))
            }
            Self::ApplySecret(_) => (Reason::ApplySecretFailed, Some(RetryClass::Transient)),
            Self::UpdateStatus(_) => (Reason::UpdateStatusFailed, Some(RetryClass::Transient)),
            Self::Kube(_) => (Reason::KubernetesError, Some(RetryClass::Transient)),
            Self::Limit(_) => (Reason::LimitExceeded, Some(RetryClass::Rejected)),
            Self::Internal(_) => (Reason::InternalError, Some(RetryClass::Rejected)),
            // Never reported: a reconcile that meets it ends without a write.
            Self::NotLeader => (Reason::KubernetesError, Some(RetryClass::Transient)),
        }
    }

    pub fn reason(&self) -> Reason {
        self.classify().0
    }

    /// The token endpoint refused the request (rather than failing to answer it): something in
    /// the request, its credentials or the bearer token it carried, is what failed.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Self::FetchToken(p @ ProviderError::Status { .. }) if p.classify().1 == RetryClass::Rejected)
    }

    /// How long until a failure that no watch event ends is looked at again: ConfigMaps are not
    /// watched, so one created or fixed later is found by reading it again (the time is spread
    /// over up to twice this).
    pub fn recheck(&self) -> Option<std::time::Duration> {
        matches!(self, Self::ConfigMapNotFound(_)).then_some(std::time::Duration::from_secs(15))
    }

    /// The same error, for another TokenSource that waited for the same token request. An API
    /// error is copied as the API gave it; any other error of the Kubernetes client keeps its
    /// text.
    pub fn duplicate(&self) -> Self {
        fn kube(e: &kube::Error) -> kube::Error {
            match e {
                kube::Error::Api(status) => kube::Error::Api(status.clone()),
                other => kube::Error::Service(other.to_string().into()),
            }
        }
        match self {
            Self::InvalidSpec(m) => Self::InvalidSpec(m.clone()),
            Self::CredentialsNotFound(m) => Self::CredentialsNotFound(m.clone()),
            Self::ConfigMapNotFound(m) => Self::ConfigMapNotFound(m.clone()),
            Self::CredentialsInvalid(m) => Self::CredentialsInvalid(m.clone()),
            Self::SecretConflict(m) => Self::SecretConflict(m.clone()),
            Self::ServiceAccountToken(m) => Self::ServiceAccountToken(m.clone()),
            Self::Upstream { name, state } => Self::Upstream { name: name.clone(), state: *state },
            Self::FetchToken(p) => Self::FetchToken(p.clone()),
            Self::RenderSecret(m) => Self::RenderSecret(m.clone()),
            Self::ApplySecret(e) => Self::ApplySecret(kube(e)),
            Self::UpdateStatus(e) => Self::UpdateStatus(kube(e)),
            Self::Kube(e) => Self::Kube(kube(e)),
            Self::Limit(m) => Self::Limit(m.clone()),
            Self::Internal(m) => Self::Internal(m.clone()),
            Self::NotLeader => Self::NotLeader,
        }
    }

    pub fn retry_class(&self) -> Option<RetryClass> {
        self.classify().1
    }

    /// Whether a stored token stays usable despite this failure: not when the spec or the
    /// Secret's ownership is wrong, and not when the chain it came from is gone.
    pub fn keeps_token(&self) -> bool {
        !matches!(
            self,
            Self::InvalidSpec(_)
                | Self::SecretConflict(_)
                | Self::RenderSecret(_)
                | Self::Internal(_)
                | Self::Upstream { state: UpstreamState::Missing, .. }
        )
    }

    /// The refusal of a value this version of the operator does not know (written by a newer
    /// version): the TokenSource is refused, never half-understood.
    pub fn unsupported(field: &str) -> Self {
        Self::InvalidSpec(format!(
            "{field} has a value this version of the operator does not support; upgrade the operator or change the TokenSource"
        ))
    }

    /// The `Retry-After` the provider asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::FetchToken(p) => p.retry_after(),
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16) -> ProviderError {
        ProviderError::Status { status: code, detail: None, retry_after: None }
    }

    #[test]
    fn one_table_gives_reason_and_class() {
        assert_eq!(status(401).classify(), (Reason::ProviderRejected, RetryClass::Rejected));
        assert_eq!(status(408).classify(), (Reason::ProviderUnavailable, RetryClass::Transient));
        assert_eq!(status(429).classify(), (Reason::ProviderThrottled, RetryClass::Transient));
        assert_eq!(status(503).classify(), (Reason::ProviderUnavailable, RetryClass::Transient));
        assert_eq!(
            ProviderError::Unreachable("x".into()).classify(),
            (Reason::ProviderUnreachable, RetryClass::Transient)
        );
        assert_eq!(Error::CredentialsInvalid("x".into()).classify(), (Reason::CredentialsInvalid, None));
        let gone = Error::Upstream { name: "mgmt".into(), state: UpstreamState::Missing };
        assert_eq!(gone.to_string(), "TokenSource \"mgmt\" not found");
        assert!(!gone.keeps_token());
        assert!(Error::Upstream { name: "mgmt".into(), state: UpstreamState::NotReady }.keeps_token());
    }
}
