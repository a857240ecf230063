//! The last guard before a provider's reply or an error message reaches a condition, an Event or
//! a log: every credential value that appears in it is replaced.

/// Replaces each of `secrets` (four characters or longer) in `text` by `[redacted]`.
pub fn redact<'a>(text: &str, secrets: impl IntoIterator<Item = &'a str>) -> String {
    let mut out = text.to_string();
    for v in secrets {
        if v.len() >= 4 {
            out = out.replace(v, "[redacted]");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_values_of_four_characters_or_more() {
        assert_eq!(redact("id abc secret s3cr3t", ["s3cr3t", "abc"]), "id abc secret [redacted]");
    }
}
