//! The last guard before a provider's reply or an error message reaches a condition, an Event, a
//! metric or a log: every secret value is replaced in every form it may be echoed in — as is,
//! base64 (standard or URL-safe, padded or not, at any alignment inside a longer encoding), the
//! Basic `id:secret` pair in base64, percent or form encoding, JSON string escaping.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};

/// What replaces a secret.
pub const MASK: &str = "[redacted]";

/// The shortest text that is redacted: shorter values would mask ordinary words.
const MIN_LEN: usize = 4;

/// Replaces each of `secrets` (four characters or longer) in `text`, as is.
pub fn redact<'a>(text: &str, secrets: impl IntoIterator<Item = &'a str>) -> String {
    let mut r = Redactor::default();
    for s in secrets {
        r.add_text(s);
    }
    r.redact(text)
}

/// A set of secret values; their encodings are worked out only when a text is redacted (most
/// reconciles redact nothing, and the encodings are a dozen strings per value).
#[derive(Clone, Default)]
pub struct Redactor {
    secrets: Vec<Secret>,
}

/// Shows how many values it hides, never them.
impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor").field("secrets", &self.secrets.len()).finish()
    }
}

/// A value to hide, as given.
#[derive(Clone)]
enum Secret {
    /// Bytes: their textual forms, and base64 of the bytes and of each textual form.
    Bytes(Vec<u8>),
    /// A text: its textual forms only.
    Text(String),
}

impl Redactor {
    /// Adds a secret value (bytes: a key may not be text) in all its encodings: its textual
    /// forms, and base64 of the bytes and of each textual form.
    pub fn add(&mut self, value: &[u8]) {
        if value.len() >= MIN_LEN {
            self.secrets.push(Secret::Bytes(value.to_vec()));
        }
    }

    /// Adds a text secret in its textual forms (as is, percent- and form-encoded, JSON-escaped).
    fn add_text(&mut self, text: &str) {
        if text.len() >= MIN_LEN {
            self.secrets.push(Secret::Text(text.to_string()));
        }
    }

    /// Adds the HTTP Basic pair `id:secret`, whose base64 reveals the secret.
    pub fn add_pair(&mut self, id: &str, secret: &str) {
        if secret.len() >= MIN_LEN {
            self.add(format!("{id}:{secret}").as_bytes());
        }
    }

    /// Adds every string of a JSON value (a reply whose values must not be shown).
    pub fn add_strings(&mut self, v: &serde_json::Value) {
        match v {
            serde_json::Value::String(s) => self.add_text(s),
            serde_json::Value::Array(a) => a.iter().for_each(|x| self.add_strings(x)),
            serde_json::Value::Object(m) => m.values().for_each(|x| self.add_strings(x)),
            _ => {}
        }
    }

    /// Adds everything another redactor hides.
    pub fn extend(&mut self, other: &Redactor) {
        self.secrets.extend(other.secrets.iter().cloned());
    }

    /// `text` with every secret in every encoding replaced by [`MASK`].
    pub fn redact(&self, text: &str) -> String {
        let needles = self.needles();
        let mut needles: Vec<&String> = needles.iter().collect();
        // Longer first, so a value is not half-replaced by one of its parts.
        needles.sort_by_key(|n| std::cmp::Reverse(n.len()));
        needles.dedup();
        let mut out = text.to_string();
        for n in needles {
            if out.contains(n.as_str()) {
                out = out.replace(n.as_str(), MASK);
            }
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// Every form of every secret, four characters or longer.
    fn needles(&self) -> Vec<String> {
        let mut needles = vec![];
        for secret in &self.secrets {
            match secret {
                Secret::Bytes(value) => {
                    let mut forms: Vec<Vec<u8>> = vec![value.clone()];
                    if let Ok(text) = std::str::from_utf8(value) {
                        forms.extend(textual(text).into_iter().map(String::into_bytes));
                    }
                    forms.dedup();
                    for form in &forms {
                        if let Ok(text) = std::str::from_utf8(form) {
                            needles.push(text.to_string());
                        }
                        base64_forms(form, &mut needles);
                    }
                }
                Secret::Text(text) => needles.extend(textual(text)),
            }
        }
        needles.retain(|n| n.len() >= MIN_LEN);
        needles
    }
}

/// Base64 of `bytes` in every alphabet and padding, also where they start one or two bytes into
/// a group of a longer encoding (the groups entirely their own are the same whatever came
/// before).
fn base64_forms(bytes: &[u8], out: &mut Vec<String>) {
    for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
        out.push(engine.encode(bytes));
        for offset in 1..3 {
            let mut shifted = vec![0u8; offset];
            shifted.extend_from_slice(bytes);
            let encoded = engine.encode(&shifted);
            let inner = encoded.get(4..encoded.len().saturating_sub(4)).unwrap_or_default();
            out.push(inner.to_string());
        }
    }
}

/// A text's forms: as is, form- and percent-encoded (upper and lower hex), JSON-escaped.
fn textual(text: &str) -> Vec<String> {
    let percent = utf8_percent_encode(text, NON_ALPHANUMERIC).to_string();
    let mut forms = vec![
        text.to_string(),
        url::form_urlencoded::byte_serialize(text.as_bytes()).collect(),
        percent.to_lowercase_hex(),
        percent,
    ];
    if let Ok(json) = serde_json::to_string(text) {
        forms.push(json.trim_matches('"').to_string());
    }
    forms.dedup();
    forms
}

/// Percent-encoding with lower-case hex digits, as some servers write it.
trait LowerHex {
    fn to_lowercase_hex(&self) -> String;
}

impl LowerHex for String {
    fn to_lowercase_hex(&self) -> String {
        let mut out = String::with_capacity(self.len());
        let mut chars = self.chars();
        while let Some(c) = chars.next() {
            out.push(c);
            if c == '%' {
                out.extend(chars.by_ref().take(2).map(|h| h.to_ascii_lowercase()));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "s3cr3t+/=value with spaces & \"quotes\"";

    fn redactor() -> Redactor {
        let mut r = Redactor::default();
        r.add(SECRET.as_bytes());
        r.add_pair("client-id", SECRET);
        r
    }

    #[test]
    fn debug_output_names_no_secret() {
        let shown = format!("{:?}", redactor());
        assert_eq!(shown, "Redactor { secrets: 2 }");
        assert!(!shown.contains("s3cr3t"));
    }

    #[test]
    fn every_encoding_is_redacted() {
        let r = redactor();
        let b = SECRET.as_bytes();
        let echoed = [
            SECRET.to_string(),
            STANDARD.encode(b),
            STANDARD_NO_PAD.encode(b),
            URL_SAFE.encode(b),
            URL_SAFE_NO_PAD.encode(b),
            STANDARD.encode(format!("client-id:{SECRET}")),
            url::form_urlencoded::byte_serialize(b).collect::<String>(),
            utf8_percent_encode(SECRET, NON_ALPHANUMERIC).to_string(),
            utf8_percent_encode(SECRET, NON_ALPHANUMERIC).to_string().to_lowercase_hex(),
            serde_json::to_string(SECRET).unwrap(),
            // Inside a longer base64 text, at each alignment, and of another encoding.
            STANDARD.encode(format!("x{SECRET}y")),
            STANDARD.encode(format!("xy{SECRET}")),
            STANDARD.encode(format!("grant_type=client_credentials&client_secret={SECRET}")),
            URL_SAFE_NO_PAD.encode(format!(
                "body: grant_type=client_credentials&client_secret={}",
                url::form_urlencoded::byte_serialize(b).collect::<String>()
            )),
            STANDARD.encode(format!("{{\"secret\": {}}}", serde_json::to_string(SECRET).unwrap())),
        ];
        for e in echoed {
            let out = r.redact(&format!("the server said: {e} (end)"));
            assert!(out.contains(MASK), "not redacted: {e}");
            assert!(!out.contains(SECRET) && !out.contains(&STANDARD_NO_PAD.encode(b)[4..20]), "{out}");
        }
    }

    #[test]
    fn short_values_and_ordinary_text_are_left_alone() {
        let mut r = Redactor::default();
        r.add(b"abc");
        assert!(r.is_empty());
        assert_eq!(
            redactor().redact("invalid_client: Client authentication failed"),
            "invalid_client: Client authentication failed"
        );
        assert_eq!(redact("id abc secret s3cr3t", ["s3cr3t", "abc"]), "id abc secret [redacted]");
    }
}
