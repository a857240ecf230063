//! The template engine for Secret keys and request bodies (MiniJinja), held to a bounded subset:
//! one tenant's template must not be able to take the operator's memory or time from everyone
//! else. Fuel bounds the operations; the subset bounds what one operation can build:
//!
//! - statements: `for` and `if` only (no `set`, macros, includes or blocks), so nothing grows
//!   from one iteration to the next;
//! - no `*` or `**` (string and list repetition);
//! - at most [`MAX_CONCATENATIONS`] `~` or `+` per template;
//! - no filter or function that multiplies its input (`center`, `indent`, `replace`, `format`,
//!   `wordwrap`, `range`, `namespace`, ...), and a `join` that checks its size first;
//! - the output is written to a bounded buffer: a template cannot write more than it is allowed.

use std::io;

use base64::Engine;
use minijinja::machinery::{Token, tokenize};
use minijinja::syntax::SyntaxConfig;
use minijinja::value::Value;
use minijinja::{Error as TemplateError, ErrorKind};

/// How many operations one template may take.
pub const FUEL: u64 = 50_000;

/// How many `~` and `+` one template may hold.
pub const MAX_CONCATENATIONS: usize = 16;

/// Statements a template may use.
const STATEMENTS: &[&str] = &["for", "endfor", "if", "elif", "else", "endif"];

/// Filters, functions and tests that may multiply their input, and the statements' helpers.
const DENIED: &[&str] =
    &["center", "indent", "replace", "format", "wordwrap", "range", "namespace", "cycler", "joiner", "lipsum", "debug"];

/// A template environment with the operator's settings and filters (`b64encode` besides the
/// built-ins such as `tojson` and `urlencode`).
pub fn env() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.set_fuel(Some(FUEL));
    env.add_filter("b64encode", |s: String| base64::engine::general_purpose::STANDARD.encode(s));
    env.add_filter("join", join);
    for name in DENIED {
        env.remove_filter(name);
        env.remove_global(name);
    }
    env
}

/// Whether a string holds template syntax at all.
pub fn has_syntax(s: &str) -> bool {
    s.contains("{{") || s.contains("{%") || s.contains("{#")
}

/// Checks that `source` keeps to the bounded subset; the error says what it may not use.
pub fn check(source: &str) -> Result<(), String> {
    let mut concatenations = 0;
    let mut statement_start = false;
    for token in tokenize(source, false, SyntaxConfig::default()) {
        let (token, _) = token.map_err(|e| e.to_string())?;
        match token {
            Token::BlockStart => statement_start = true,
            Token::Ident(name) if statement_start => {
                if !STATEMENTS.contains(&name) {
                    return Err(format!("the {name:?} statement is not available (only for and if)"));
                }
                statement_start = false;
            }
            Token::Ident(name) if DENIED.contains(&name) => {
                return Err(format!("{name:?} is not available in templates"));
            }
            Token::Mul | Token::Pow => return Err("repetition with * or ** is not available in templates".into()),
            Token::Tilde | Token::Plus => {
                concatenations += 1;
                if concatenations > MAX_CONCATENATIONS {
                    return Err(format!("a template may concatenate at most {MAX_CONCATENATIONS} times"));
                }
            }
            _ => statement_start = false,
        }
    }
    Ok(())
}

/// Whether `source` refers to the variable `name` anywhere.
pub fn reads(source: &str, name: &str) -> bool {
    tokenize(source, false, SyntaxConfig::default()).any(|t| matches!(t, Ok((Token::Ident(n), _)) if n == name))
}

/// Renders `source` over `ctx`, writing at most `limit` bytes.
pub fn render<S: serde::Serialize>(
    env: &minijinja::Environment<'_>,
    source: &str,
    ctx: &S,
    limit: usize,
) -> Result<String, TemplateError> {
    check(source).map_err(|e| TemplateError::new(ErrorKind::InvalidOperation, e))?;
    let template = env.template_from_str(source)?;
    let mut out = Bounded { buf: Vec::new(), limit };
    if let Err(e) = template.render_captured_to(minijinja::value::Serde(ctx), &mut out) {
        if e.kind() != ErrorKind::UndefinedError {
            return Err(e);
        }
        // Name the variable, and what there is instead.
        let known: Vec<String> = match serde_json::to_value(ctx) {
            Ok(serde_json::Value::Object(m)) => m.keys().cloned().collect(),
            _ => vec![],
        };
        let mut missing: Vec<String> = template
            .undeclared_variables(false)
            .into_iter()
            .filter(|n| !known.contains(n) && env.globals().all(|(g, _)| g != n.as_str()))
            .collect();
        missing.sort();
        let message = match missing.as_slice() {
            [] => return Err(e),
            [one] => format!("undefined variable {one:?}"),
            many => {
                format!("undefined variables {}", many.iter().map(|n| format!("{n:?}")).collect::<Vec<_>>().join(", "))
            }
        };
        return Err(TemplateError::new(
            ErrorKind::UndefinedError,
            format!("{message}; available: {}", known.join(", ")),
        ));
    }
    String::from_utf8(out.buf).map_err(|_| TemplateError::new(ErrorKind::BadSerialization, "the output is not UTF-8"))
}

/// A buffer that refuses to grow past its limit.
struct Bounded {
    buf: Vec<u8>,
    limit: usize,
}

impl io::Write for Bounded {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len().saturating_add(data.len()) > self.limit {
            return Err(io::Error::other(format!("the output is larger than {} bytes", self.limit)));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The most one `join` may build.
const MAX_JOIN: usize = 1 << 20;

/// `join` that computes the size of what it would build before building it.
fn join(value: Value, separator: Option<String>) -> Result<String, TemplateError> {
    let separator = separator.unwrap_or_default();
    let items: Vec<String> = value.try_iter()?.map(|v| v.to_string()).collect();
    let size = items.iter().map(String::len).fold(separator.len().saturating_mul(items.len()), usize::saturating_add);
    if size > MAX_JOIN {
        return Err(TemplateError::new(
            ErrorKind::InvalidOperation,
            format!("join would build more than {MAX_JOIN} bytes"),
        ));
    }
    Ok(items.join(&separator))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn an_undefined_variable_is_named_with_what_there_is() {
        let env = env();
        let ctx = json!({"token": "t", "expires_at": "x"});
        let e = render(&env, "Bearer {{ tokne }}", &ctx, 1000).unwrap_err();
        assert_eq!(e.detail(), Some("undefined variable \"tokne\"; available: expires_at, token"));
        let e = render(&env, "{{ a }}{{ b }}{% for c in token %}{{ c }}{% endfor %}", &ctx, 1000).unwrap_err();
        assert!(e.detail().unwrap_or_default().starts_with("undefined variables \"a\", \"b\";"), "{e}");
        // A missing attribute of a known variable is left to the engine's own message.
        assert!(render(&env, "{{ token.nope.deeper }}", &ctx, 1000).is_err());
    }

    #[test]
    fn strict_and_fuelled() {
        let env = env();
        assert!(render(&env, "{{ missing }}", &json!({}), 1000).is_err());
        assert_eq!(render(&env, "{{ 'a:b' | b64encode }}", &json!({}), 1000).unwrap(), "YTpi");
        assert!(
            render(
                &env,
                "{% for i in xs %}{% for j in xs %}{{ i }}{% endfor %}{% endfor %}",
                &json!({"xs": (0..1000).collect::<Vec<_>>()}),
                1 << 30
            )
            .is_err(),
            "out of fuel"
        );
        assert!(has_syntax("Bearer {{ token }}") && !has_syntax("plain"));
    }

    #[test]
    fn the_subset_keeps_what_secrets_need() {
        let env = env();
        let ctx = json!({"token": "t", "scopes": ["a", "b"], "response": {"region": "eu"}});
        for (template, want) in [
            ("Bearer {{ token }}", "Bearer t"),
            ("{{ scopes | join(' ') }}", "a b"),
            ("{% for s in scopes %}{{ s }};{% endfor %}", "a;b;"),
            ("{% if response.region == 'eu' %}eu{% else %}other{% endif %}", "eu"),
            ("{{ ('user:' ~ token) | b64encode }}", "dXNlcjp0"),
            ("{{ response | tojson }}", "{\"region\": \"eu\"}"),
            ("{{ token | upper }}-{{ 'a b' | urlencode }}", "T-a%20b"),
        ] {
            assert_eq!(render(&env, template, &ctx, 1000).unwrap(), want, "{template}");
        }
    }

    #[test]
    fn nothing_can_grow_without_bound() {
        let env = env();
        let ctx = json!({"big": "x".repeat(1000), "xs": (0..100).collect::<Vec<_>>()});
        for template in [
            "{{ 'a' * 100000000 }}",
            "{{ big ** 2 }}",
            "{% set a = big %}{{ a }}",
            "{% macro m() %}x{% endmacro %}",
            "{{ big | center(1000000000) }}",
            "{{ big | replace('x', big) }}",
            "{{ range(100000) | join(big) }}",
            "{{ big | indent(100000000) }}",
            &format!("{{{{ big{} }}}}", " ~ big".repeat(17)),
        ] {
            assert!(render(&env, template, &ctx, 1 << 30).is_err(), "{template}");
        }
        // Output is bounded by the writer, whatever the loop.
        assert!(render(&env, "{% for x in xs %}{{ big }}{% endfor %}", &ctx, 50_000).is_err());
        assert!(render(&env, "{% for x in xs %}{{ big }}{% endfor %}", &ctx, 200_000).is_ok());
        // join checks before it builds.
        let long = json!({"xs": vec!["y"; 10_000], "sep": "z".repeat(200)});
        assert!(render(&env, "{{ xs | join(sep) }}", &long, 1 << 30).is_err());
    }
}

/// Properties of templates: any source is checked or refused without a panic, and rendering
/// never writes past its limit, whatever the template and the reply.
#[cfg(test)]
mod properties_256_cases {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn snippet() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("{{ token }}".to_string()),
            Just("{{ response | tojson }}".to_string()),
            Just("{{ big ~ big }}".to_string()),
            Just("{% for x in xs %}{{ x }}{{ big }}{% endfor %}".to_string()),
            Just("{% if token %}{{ token | b64encode }}{% endif %}".to_string()),
            Just("{{ xs | join(big) }}".to_string()),
            Just("{{ 'a' * 9 }}".to_string()),
            Just("{% set a = 1 %}".to_string()),
            Just("{{ range(10) }}".to_string()),
            "[a-z {}%|~*+().']{0,12}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn any_template_is_checked_and_bounded(parts in proptest::collection::vec(snippet(), 1..8), limit in 0usize..20_000, noise in "\\PC{0,30}") {
            let source: String = parts.concat();
            let _ = check(&noise);
            let ctx = json!({"token": "t0k", "big": "x".repeat(3000), "xs": (0..50).collect::<Vec<_>>(), "response": {"a": [1, 2, 3]}});
            if let Ok(out) = render(&env(), &source, &ctx, limit) {
                prop_assert!(out.len() <= limit, "{} bytes written with a limit of {limit}", out.len());
            }
        }
    }
}
