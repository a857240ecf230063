//! The words the operator writes into conditions, Events and metric labels: condition types,
//! statuses and reasons, typed so a decision never compares strings.

use std::fmt;

/// Declares a fieldless enum whose variants serialise as their own PascalCase names.
macro_rules! words {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The word as it appears in the API.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => stringify!($variant)),+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.as_str() == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                self.as_str() == other
            }
        }
    };
}

words! {
    /// The condition types a TokenSource reports.
    ConditionType {
        /// The target Secret holds a valid token.
        Ready,
        /// The last attempt to get a token failed (the Secret may still hold a valid one).
        Degraded,
        /// Workloads owed a restart for a new token could not be restarted (only with
        /// `target.rolloutRestart`).
        RolloutRestartBlocked,
        /// Pods read the target Secret in a way that never sees a renewed token (only with
        /// `--audit-consumers`).
        ConsumersStale,
    }
}

words! {
    /// A condition's status.
    ConditionStatus { True, False, Unknown }
}

impl From<bool> for ConditionStatus {
    fn from(b: bool) -> Self {
        if b { Self::True } else { Self::False }
    }
}

words! {
    /// Why a condition is as it is; also the reason of Events and the `result` of metrics.
    Reason {
        /// Ready: the Secret holds a valid token.
        TokenValid,
        /// Ready=False: no token yet; the first one is on its way (a request in flight, or
        /// waiting for a request slot of its host).
        Pending,
        /// Degraded=False: nothing is wrong.
        AsExpected,
        /// The spec cannot work as written; nothing is retried until it changes.
        InvalidSpec,
        /// A referenced Secret, ConfigMap or key does not exist.
        CredentialsNotFound,
        /// A referenced credential exists but cannot be used (bad base64, PEM or UTF-8, empty).
        CredentialsInvalid,
        /// The target Secret exists and was not created for this TokenSource.
        SecretConflict,
        /// A chained TokenSource is missing or has no valid token yet.
        WaitingForUpstream,
        /// The token endpoint refused the request (4xx other than 408 and 429).
        ProviderRejected,
        /// The token endpoint failed (5xx, 408).
        ProviderUnavailable,
        /// The token endpoint asked to slow down (429).
        ProviderThrottled,
        /// The token endpoint could not be reached or did not answer in time.
        ProviderUnreachable,
        /// The token endpoint answered 2xx with a reply the spec cannot read.
        BadProviderResponse,
        /// Writing the target Secret failed.
        ApplySecretFailed,
        /// Writing the status failed.
        UpdateStatusFailed,
        /// Reading from the Kubernetes API failed.
        KubernetesError,
        /// Ready=False: the token in the Secret has expired and no new one could be had.
        Expired,
        /// A limit on the work for one TokenSource was exceeded (reply, template or Secret size).
        LimitExceeded,
        /// The operator failed internally on this TokenSource (a bug); others are unaffected.
        InternalError,
        /// The token endpoint's address is one the operator does not send requests to.
        EndpointNotAllowed,
        /// The ServiceAccount token a workload identity flow sends could not be had (no such
        /// ServiceAccount, or the operator may not request its tokens); retried with backoff.
        ServiceAccountTokenFailed,
        /// An Event: a token was written to the Secret for the first time, or after failures.
        TokenIssued,
        /// An Event: the Secret was deleted or edited and the operator wrote its token back.
        SecretRestored,
        /// An Event: a new token was written because `tokensource.dev/refresh-requested-at`
        /// asked for one.
        ManualRefresh,
        /// An Event: a `tokensource.dev/refresh-requested-at` value that is not an RFC 3339 time
        /// was ignored.
        RefreshRequestInvalid,
        /// An Event: the workloads of `target.rolloutRestart` were restarted for a new token.
        RolloutRestarted,
        /// The workloads could not be restarted (RBAC, a missing workload); retried every minute.
        RolloutRestartFailed,
        /// Pods read the target Secret through `env`, `envFrom` or a `subPath` mount.
        StaleConsumers,
        /// An Event: a value whose name says it is a secret is given inline in the spec.
        InlineSecret,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_their_pascal_case_names() {
        assert_eq!(Reason::ProviderRejected.as_str(), "ProviderRejected");
        assert_eq!(ConditionType::Ready.to_string(), "Ready");
        assert_eq!(ConditionStatus::from(false), "False");
        assert!(Reason::ALL.iter().all(|r| r.as_str().chars().next().is_some_and(char::is_uppercase)));
        assert_eq!(Reason::ALL.len(), 29);
    }
}
