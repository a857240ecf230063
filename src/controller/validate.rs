//! Everything about a spec that can be checked without I/O, before any provider call. The CRD
//! schema refuses most mistakes at apply time; this catches what it cannot (and values written by
//! a newer version of the operator, which this one refuses rather than misreads).

use std::time::Duration;

use super::Config;
use crate::crd::{CaBundleType, RequestType, TokenSource};
use crate::error::Error;
use crate::providers;
use crate::response::Reader;
use crate::schedule::{self, Policy};
use crate::secret::{self, Stored};

/// What validation yields for the later steps.
#[derive(Clone)]
pub struct Plan {
    pub policy: Policy,
    pub reader: Reader,
    /// The timeout of one token request.
    pub timeout: Duration,
}

/// Checks the spec: the kind of request and its URL, the renewal settings, the reply paths, the
/// Secret template and the TLS settings.
pub fn validate(ts: &TokenSource, config: &Config) -> Result<Plan, Error> {
    let spec = &ts.spec;
    match (spec.type_, &spec.oauth2, &spec.http) {
        (RequestType::OAuth2, Some(o), None) => {
            providers::parse_url("oauth2.tokenURL", &o.token_url, config.allow_http)?;
        }
        (RequestType::Http, None, Some(h)) => {
            providers::parse_url("http.url", &h.url, config.allow_http)?;
        }
        (RequestType::Unknown, _, _) => return Err(Error::unsupported("type")),
        _ => {
            return Err(Error::InvalidSpec(
                "type OAuth2 needs oauth2 (and no http), type HTTP needs http (and no oauth2)".into(),
            ));
        }
    }
    check_names(ts)?;
    let policy = Policy::new(&spec.renewal, config.propagation_margin)?;
    let reader = Reader::new(&spec.response)?;
    secret::check_template(ts)?;
    if let Some(ca) = spec.tls.as_ref().and_then(|t| t.ca_bundle.as_ref())
        && ca.type_ == CaBundleType::Unknown
    {
        return Err(Error::unsupported("tls.caBundle.type"));
    }
    if let Some(t) = spec.service_account_token() {
        service_account_token_lifetime(t)?;
        if t.audience.is_empty() || t.audience.starts_with("https://kubernetes.default.svc") {
            return Err(Error::InvalidSpec(
                "serviceAccountToken.audience must name the provider's federation, not the Kubernetes API".into(),
            ));
        }
    }
    let most = config.transport.timeout;
    let timeout = match spec.timeout.as_deref() {
        None => most,
        Some(t) => {
            let d = schedule::parse_duration(t)?;
            let d = Duration::try_from(d).map_err(|_| Error::InvalidSpec("timeout must be positive".into()))?;
            if d.is_zero() {
                return Err(Error::InvalidSpec("timeout must be positive".into()));
            }
            d.min(most)
        }
    };
    Ok(Plan { policy, reader, timeout })
}

/// The lifetime to request for a ServiceAccount token, in seconds: 10 minutes (the API server's
/// minimum) to an hour.
pub fn service_account_token_lifetime(t: &crate::crd::ServiceAccountToken) -> Result<i64, Error> {
    let d = schedule::parse_duration(&t.expiration)?;
    if d < jiff::SignedDuration::from_mins(10) || d > jiff::SignedDuration::from_hours(1) {
        return Err(Error::InvalidSpec("serviceAccountToken.expiration must be between 10m and 1h".into()));
    }
    Ok(d.as_secs())
}

/// Every object name the spec gives is a DNS subdomain, before any of them is put into a request
/// path (the CRD checks this too; an older CRD might not).
pub fn check_names(ts: &TokenSource) -> Result<(), Error> {
    let spec = &ts.spec;
    let names = spec
        .secret_refs()
        .into_iter()
        .map(|r| ("a Secret", r.name))
        .chain(spec.config_map_refs().into_iter().map(|r| ("a ConfigMap", r.name)))
        .chain(spec.upstream().map(|n| ("a TokenSource", n.to_string())))
        .chain(spec.service_account_token().map(|t| ("a ServiceAccount", t.service_account_name.clone())))
        .chain([("target.name", spec.target.name.clone())]);
    for (what, name) in names {
        if !crate::names::is_dns_subdomain(&name) {
            return Err(Error::InvalidSpec(format!("{name:?} ({what}) is not a valid object name")));
        }
    }
    Ok(())
}

/// The target Secret, if it exists, must be one the operator wrote for this TokenSource: one
/// that names its uid ([`Stored::of`]), not merely its name.
pub fn owner(ts: &TokenSource, stored: Option<&Stored>) -> Result<(), Error> {
    match stored {
        Some(s) if !s.ours => Err(Error::SecretConflict(ts.spec.target.name.clone())),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn names_that_would_leave_their_path_are_refused() {
        let ts: TokenSource = serde_json::from_value(json!({
            "apiVersion": "tokensource.dev/v1alpha1", "kind": "TokenSource",
            "metadata": {"name": "t", "namespace": "ns"},
            "spec": {"type": "HTTP", "http": {"url": "https://x.example/t", "auth": {"type": "Basic", "basic": {
                "username": {"value": "u"},
                "passwordSecretRef": {"name": "../../other-namespace/secrets/x", "key": "k"}
            }}}, "target": {"name": "t-token"}}
        }))
        .unwrap();
        let e = validate(&ts, &Config::default()).err().unwrap();
        assert!(matches!(e, Error::InvalidSpec(_)) && e.to_string().contains("not a valid object name"), "{e}");
    }
}
