//! Name syntax the API server enforces, checked before anything is written.

/// Whether `key` is a valid Secret (or ConfigMap) data key: alphanumerics, `-`, `_` and `.`.
pub fn is_secret_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 253
        && key != "."
        && key != ".."
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

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
