//! Everything about a spec that can be checked without I/O, before any provider call.

use jiff::SignedDuration;
use kube::ResourceExt;

use super::Config;
use crate::crd::TokenSource;
use crate::error::Error;
use crate::providers;
use crate::response::Reader;
use crate::schedule::{self, Policy};
use crate::secret::{self, Stored};

/// What validation yields for the later steps.
pub struct Plan {
    pub policy: Policy,
    pub reader: Reader,
    pub default_lifetime: Option<SignedDuration>,
}

/// Checks the spec: one request kind, the renewal settings, the reply paths, the templates and
/// the endpoint URL.
pub fn validate(ts: &TokenSource, config: &Config) -> Result<Plan, Error> {
    let spec = &ts.spec;
    match (&spec.oauth2, &spec.http) {
        (Some(_), None) | (None, Some(_)) => {}
        _ => return Err(Error::InvalidSpec("set exactly one of spec.oauth2 and spec.http".into())),
    }
    let policy = Policy::new(spec.refresh.as_ref(), config.propagation_margin)?;
    let default_lifetime =
        spec.refresh.as_ref().and_then(|r| r.default_lifetime.as_deref()).map(schedule::parse_duration).transpose()?;
    let reader = Reader::new(spec.response.as_ref())?;
    secret::check_templates(ts)?;
    if let Some(o) = &spec.oauth2 {
        providers::parse_url("oauth2.tokenUrl", &o.token_url, config.allow_http)?;
    }
    if let Some(h) = &spec.http {
        providers::parse_url("http.url", &h.url, config.allow_http)?;
    }
    Ok(Plan { policy, reader, default_lifetime })
}

/// The target Secret, if it exists, must be one the operator wrote for this TokenSource.
pub fn owner(ts: &TokenSource, stored: Option<&Stored>) -> Result<(), Error> {
    match stored {
        Some(s) if s.owner.as_deref() != Some(ts.name_any().as_str()) => {
            Err(Error::SecretConflict(ts.spec.target.secret_name.clone()))
        }
        _ => Ok(()),
    }
}
