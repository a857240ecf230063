//! Name syntax and sizes the API server enforces, checked before anything is written.

/// The most data a Secret may hold, as the API server counts it (the values' bytes).
pub const MAX_SECRET_DATA: usize = 1 << 20;

/// Whether `key` is a valid Secret (or ConfigMap) data key: alphanumerics, `-`, `_` and `.`.
pub fn is_secret_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 253
        && key != "."
        && key != ".."
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Whether `name` is a DNS subdomain (RFC 1123), as the names of Secrets, ConfigMaps and
/// TokenSources are. The Kubernetes client puts names into request paths as they are, so a name
/// is checked before it is used: `../../other-namespace/secrets/x` must never reach a path.
pub fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|part| {
            !part.is_empty()
                && part.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names() {
        for ok in ["podero-credentials", "a.b-c", "x"] {
            assert!(is_dns_subdomain(ok), "{ok}");
        }
        for bad in ["", "../../other-namespace/secrets/x", "a..b", "A", "-a", "a/b", "a%2Fb", &"a".repeat(254)] {
            assert!(!is_dns_subdomain(bad), "{bad}");
        }
    }

    #[test]
    fn secret_keys() {
        for ok in ["token", ".dockerconfigjson", "tls.crt", "a_b-c"] {
            assert!(is_secret_key(ok), "{ok}");
        }
        for bad in ["", ".", "..", "no/slash", "sp ace", &"k".repeat(254)] {
            assert!(!is_secret_key(bad), "{bad}");
        }
    }
}
