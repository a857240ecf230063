//! Loads the manifests under `deploy/examples/` and points them at the fakes: token endpoint
//! URLs are rewritten to the fakes' address and the placeholder credentials in their Secrets are
//! replaced by the ones the fakes accept. Tests and the sandbox use the same files users read.

use std::path::Path;

use serde_json::Value;

use crate::{Config, Fakes};

/// The real providers' base URLs used in the examples.
pub const PROVIDER_BASES: &[&str] =
    &["https://app.podero.com", "https://qa.interswitchng.com", "https://sandbox-api.imbursepayments.com"];

fn credential(config: &Config, secret: &str, key: &str) -> Option<String> {
    Some(match (secret, key) {
        ("podero-credentials", "client_id") => config.podero.id.clone(),
        ("podero-credentials", "client_secret") => config.podero.secret.clone(),
        ("interswitch-credentials", "client_id") => config.interswitch.id.clone(),
        ("interswitch-credentials", "secret_key") => config.interswitch.secret.clone(),
        ("imburse-tenant-key", "public_key") => config.imburse_public.clone(),
        ("imburse-tenant-key", "private_key") => config.imburse_private_b64.clone(),
        _ => return None,
    })
}

fn rewrite_urls(v: &mut Value, base: &str) {
    match v {
        Value::String(s) => {
            for b in PROVIDER_BASES {
                if let Some(rest) = s.strip_prefix(b) {
                    *s = format!("{base}{rest}");
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| rewrite_urls(x, base)),
        Value::Object(m) => m.values_mut().for_each(|x| rewrite_urls(x, base)),
        _ => {}
    }
}

/// Reads one example file: its documents, retargeted at `fakes`.
pub fn load(path: &Path, fakes: &Fakes) -> Result<Vec<Value>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let config = fakes.config();
    let mut out = vec![];
    for mut doc in docs.into_iter().filter(|d| d.is_object()) {
        rewrite_urls(&mut doc, &fakes.url());
        if doc["kind"] == "Secret" {
            let name = doc["metadata"]["name"].as_str().unwrap_or_default().to_string();
            if let Some(data) = doc["stringData"].as_object_mut() {
                for (k, v) in data.iter_mut() {
                    if let Some(real) = credential(&config, &name, k) {
                        *v = Value::String(real);
                    }
                }
            }
        }
        out.push(doc);
    }
    Ok(out)
}

/// The example files, in the order they can be applied.
pub const FILES: &[&str] = &[
    "podero.yaml",
    "interswitch.yaml",
    "imburse-tenant-key.yaml",
    "imburse-management.yaml",
    "imburse-payout-hmac.yaml",
    "imburse-payout-from-management.yaml",
];
