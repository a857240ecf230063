//! How a Pod consumes a Secret, and whether it ever sees a renewed token.
//!
//! The kubelet updates Secret volumes in place (after its sync period and cache TTL), so a
//! container that reads the token file again gets the new one. Environment variables (`env`,
//! `envFrom`) are read once when the container starts, and a `subPath` mount is a copy made at
//! start: those consumers keep the first token until the Pod restarts.

use k8s_openapi::api::core::v1::{Container, PodSpec};

/// One way a container reads the Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Consumption {
    pub container: String,
    pub how: How,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum How {
    /// `env[].valueFrom.secretKeyRef`: read once at start.
    Env,
    /// `envFrom[].secretRef`: read once at start.
    EnvFrom,
    /// A Secret volume mounted with `subPath`: copied once at start.
    SubPath,
    /// A Secret volume (or projected volume) mounted whole: updated in place.
    Volume,
}

impl How {
    /// Whether this consumer ever sees a renewed token without a restart.
    pub fn sees_renewals(self) -> bool {
        matches!(self, Self::Volume)
    }

    pub fn describe(self) -> &'static str {
        match self {
            Self::Env => "env (read once at start)",
            Self::EnvFrom => "envFrom (read once at start)",
            Self::SubPath => "subPath mount (copied once at start)",
            Self::Volume => "volume mount (updated in place)",
        }
    }
}

/// Every way the containers of `spec` (init containers too) read the Secret `secret`.
pub fn consumptions(spec: &PodSpec, secret: &str) -> Vec<Consumption> {
    let volumes: Vec<&str> = spec
        .volumes
        .iter()
        .flatten()
        .filter(|v| {
            v.secret.as_ref().is_some_and(|s| s.secret_name.as_deref() == Some(secret))
                || v.projected.as_ref().is_some_and(|p| {
                    p.sources.iter().flatten().any(|s| s.secret.as_ref().is_some_and(|s| s.name == secret))
                })
        })
        .map(|v| v.name.as_str())
        .collect();
    let containers = spec.init_containers.iter().flatten().chain(spec.containers.iter());
    containers.flat_map(|c| of_container(c, secret, &volumes)).collect()
}

fn of_container(c: &Container, secret: &str, volumes: &[&str]) -> Vec<Consumption> {
    let mut found = vec![];
    let mut add = |how| {
        let consumption = Consumption { container: c.name.clone(), how };
        if !found.contains(&consumption) {
            found.push(consumption);
        }
    };
    let env_ref = c
        .env
        .iter()
        .flatten()
        .any(|e| e.value_from.as_ref().and_then(|f| f.secret_key_ref.as_ref()).is_some_and(|r| r.name == secret));
    if env_ref {
        add(How::Env);
    }
    if c.env_from.iter().flatten().any(|e| e.secret_ref.as_ref().is_some_and(|r| r.name == secret)) {
        add(How::EnvFrom);
    }
    for m in c.volume_mounts.iter().flatten().filter(|m| volumes.contains(&m.name.as_str())) {
        let sub_path = m.sub_path.as_deref().is_some_and(|p| !p.is_empty())
            || m.sub_path_expr.as_deref().is_some_and(|p| !p.is_empty());
        add(if sub_path { How::SubPath } else { How::Volume });
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(v: serde_json::Value) -> PodSpec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn every_way_of_reading_a_secret_is_found_and_judged() {
        let s = spec(serde_json::json!({
            "volumes": [
                {"name": "tok", "secret": {"secretName": "api-token"}},
                {"name": "proj", "projected": {"sources": [{"secret": {"name": "api-token"}}]}},
                {"name": "other", "secret": {"secretName": "other"}}
            ],
            "initContainers": [{"name": "init", "envFrom": [{"secretRef": {"name": "api-token"}}]}],
            "containers": [
                {"name": "app", "env": [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "api-token", "key": "token"}}}],
                 "volumeMounts": [{"name": "tok", "mountPath": "/t"}, {"name": "tok", "mountPath": "/x/token", "subPath": "token"}]},
                {"name": "side", "volumeMounts": [{"name": "proj", "mountPath": "/p"}, {"name": "other", "mountPath": "/o"}]},
                {"name": "unrelated", "env": [{"name": "U", "valueFrom": {"secretKeyRef": {"name": "other", "key": "k"}}}]}
            ]
        }));
        let found: Vec<(String, How)> =
            consumptions(&s, "api-token").into_iter().map(|c| (c.container, c.how)).collect();
        assert_eq!(
            found,
            [
                ("init".into(), How::EnvFrom),
                ("app".into(), How::Env),
                ("app".into(), How::Volume),
                ("app".into(), How::SubPath),
                ("side".into(), How::Volume),
            ]
        );
        assert!(How::Volume.sees_renewals());
        assert!(![How::Env, How::EnvFrom, How::SubPath].iter().any(|h| h.sees_renewals()));
        assert!(consumptions(&s, "nothing").is_empty());
    }
}
