//! The operator's errors, each with a stable PascalCase reason used for conditions, Events and
//! metrics, and a retry class.

use std::time::Duration;

use crate::schedule::RetryClass;

/// What went wrong talking to a token endpoint. Messages carry what the endpoint answered, never
/// what was sent.
#[derive(Debug, thiserror::Error)]
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
}

impl ProviderError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Unreachable(_) => "ProviderUnreachable",
            Self::Status { status: 429, .. } => "ProviderThrottled",
            Self::Status { status, .. } if *status >= 500 => "ProviderUnavailable",
            Self::Status { .. } => "ProviderRejected",
            Self::BadResponse(_) => "BadProviderResponse",
        }
    }

    pub fn class(&self) -> RetryClass {
        match self {
            Self::Status { status, .. } if *status != 429 && *status != 408 && *status < 500 => RetryClass::Rejected,
            Self::BadResponse(_) => RetryClass::Rejected,
            _ => RetryClass::Transient,
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// A reconcile failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec cannot work as written; nothing is retried until it changes.
    #[error("{0}")]
    InvalidSpec(String),
    /// A referenced credential Secret or key is missing.
    #[error("{0}")]
    ReadCredentials(String),
    /// The target Secret exists and was not created for this TokenSource.
    #[error(
        "Secret {0:?} already exists and is not managed by this TokenSource; delete it or choose another target.secretName"
    )]
    SecretConflict(String),
    /// A chained TokenSource has no usable token yet.
    #[error("{0}")]
    WaitingForUpstream(String),
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
}

impl Error {
    /// A stable PascalCase word for conditions, Events and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidSpec(_) => "InvalidSpec",
            Self::ReadCredentials(_) => "CredentialsNotFound",
            Self::SecretConflict(_) => "SecretConflict",
            Self::WaitingForUpstream(_) => "WaitingForUpstream",
            Self::FetchToken(p) => p.reason(),
            Self::RenderSecret(_) => "InvalidSpec",
            Self::ApplySecret(_) => "ApplySecretFailed",
            Self::UpdateStatus(_) => "UpdateStatusFailed",
            Self::Kube(_) => "KubernetesError",
        }
    }

    /// Whether the operator retries on its own; `None` waits for a change to the TokenSource or
    /// the Secrets it reads.
    pub fn retry_class(&self) -> Option<RetryClass> {
        match self {
            Self::InvalidSpec(_) | Self::ReadCredentials(_) | Self::SecretConflict(_) | Self::RenderSecret(_) => None,
            Self::WaitingForUpstream(_) => None,
            Self::FetchToken(p) => Some(p.class()),
            Self::ApplySecret(_) | Self::UpdateStatus(_) | Self::Kube(_) => Some(RetryClass::Transient),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
