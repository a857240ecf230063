//! tokensource-operator: keeps short-lived API bearer tokens fresh in Kubernetes Secrets.

pub mod admin;
pub mod conditions;
pub mod consumers;
pub mod controller;
pub mod crd;
pub mod credentials;
pub mod dry_run;
pub mod endpoint;
pub mod error;
pub mod leader;
pub mod limit;
pub mod metrics;
pub mod names;
pub mod providers;
pub mod redact;
pub mod response;
pub mod schedule;
pub mod secret;
pub mod telemetry;
pub mod template;
pub mod transport;
