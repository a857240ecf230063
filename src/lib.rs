//! tokensource-operator: keeps short-lived API bearer tokens fresh in Kubernetes Secrets.

pub mod admin;
pub mod controller;
pub mod crd;
pub mod error;
pub mod metrics;
pub mod providers;
pub mod response;
pub mod schedule;
pub mod secret;
pub mod telemetry;
pub mod transport;
