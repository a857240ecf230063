//! The template engine for Secret keys and request bodies (MiniJinja): strict about undefined
//! names, bounded in how much work one template may do.

use base64::Engine;

/// How many operations one template may take.
pub const FUEL: u64 = 50_000;

/// A template environment with the operator's settings and filters (`b64encode` besides the
/// built-ins such as `tojson` and `urlencode`).
pub fn env() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.set_fuel(Some(FUEL));
    env.add_filter("b64encode", |s: String| base64::engine::general_purpose::STANDARD.encode(s));
    env
}

/// Whether a string holds template syntax at all.
pub fn has_syntax(s: &str) -> bool {
    s.contains("{{") || s.contains("{%") || s.contains("{#")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_and_fuelled() {
        let env = env();
        assert!(env.render_str("{{ missing }}", ()).is_err());
        assert_eq!(env.render_str("{{ 'a:b' | b64encode }}", ()).unwrap(), "YTpi");
        assert!(env.render_str("{% for i in range(100000) %}{{ i }}{% endfor %}", ()).is_err(), "out of fuel");
        assert!(has_syntax("Bearer {{ token }}") && !has_syntax("plain"));
    }
}
