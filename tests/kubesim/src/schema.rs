//! Structural-schema handling for custom resources: defaulting, pruning of unknown fields and
//! validation against a version's `openAPIV3Schema`, with the real server's messages.

use base64::Engine;
use serde_json::{Map, Value};

use crate::error::{Cause, short_value};

fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_string() } else { format!("{path}.{key}") }
}

fn preserves_unknown(schema: &Value) -> bool {
    schema["x-kubernetes-preserve-unknown-fields"].as_bool() == Some(true)
}

/// Applies `default` values from the schema to absent fields, top down.
pub fn apply_defaults(value: &mut Value, schema: &Value) {
    match value {
        Value::Object(map) => {
            if let Some(props) = schema["properties"].as_object() {
                for (k, sub) in props {
                    if !map.contains_key(k)
                        && let Some(d) = sub.get("default")
                    {
                        map.insert(k.clone(), d.clone());
                    }
                    if let Some(child) = map.get_mut(k) {
                        apply_defaults(child, sub);
                    }
                }
            } else if schema["additionalProperties"].is_object() {
                for child in map.values_mut() {
                    apply_defaults(child, &schema["additionalProperties"]);
                }
            }
        }
        Value::Array(items) if schema["items"].is_object() => {
            for child in items {
                apply_defaults(child, &schema["items"]);
            }
        }
        _ => {}
    }
}

/// Drops fields the schema does not declare (recording their paths) and `null`s of fields that are
/// not nullable, as the API server does before defaulting.
pub fn prune(value: &mut Value, schema: &Value, path: &str, unknown: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            let props = schema["properties"].as_object();
            let additional = &schema["additionalProperties"];
            let keep_all = preserves_unknown(schema) || additional.as_bool() == Some(true);
            let keys: Vec<String> = map.keys().cloned().collect();
            for k in keys {
                let sub =
                    props.and_then(|p| p.get(&k)).or(if additional.is_object() { Some(additional) } else { None });
                match sub {
                    Some(sub) => {
                        if map.get(&k).is_some_and(Value::is_null) && sub["nullable"].as_bool() != Some(true) {
                            map.remove(&k);
                        } else if let Some(child) = map.get_mut(&k) {
                            prune(child, sub, &join(path, &k), unknown);
                        }
                    }
                    None if keep_all => {}
                    None => {
                        map.remove(&k);
                        unknown.push(format!(".{}", join(path, &k)));
                    }
                }
            }
        }
        Value::Array(items) if schema["items"].is_object() => {
            for (i, child) in items.iter_mut().enumerate() {
                prune(child, &schema["items"], &format!("{path}[{i}]"), unknown);
            }
        }
        _ => {}
    }
}

fn type_matches(value: &Value, ty: &str) -> bool {
    match ty {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        _ => true,
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Validates `value` at `path` against `schema`, appending one cause per violation.
pub fn validate(value: &Value, schema: &Value, path: &str, causes: &mut Vec<Cause>) {
    let here = if path.is_empty() { "<root>" } else { path };
    if value.is_null() {
        if schema["nullable"].as_bool() != Some(true) && schema["type"].is_string() {
            causes.push(Cause::new(
                "FieldValueTypeInvalid",
                here,
                format!(
                    "Invalid value: \"null\": {here} in body must be of type {}: \"null\"",
                    schema["type"].as_str().unwrap_or("")
                ),
            ));
        }
        return;
    }
    let int_or_string = schema["x-kubernetes-int-or-string"].as_bool() == Some(true);
    if int_or_string {
        if !(value.is_string() || value.is_i64() || value.is_u64()) {
            causes.push(Cause::new(
                "FieldValueTypeInvalid",
                here,
                format!(
                    "Invalid value: {}: {here} in body must be of type integer or string: {:?}",
                    short_value(value),
                    type_name(value)
                ),
            ));
            return;
        }
    } else if let Some(ty) = schema["type"].as_str()
        && !type_matches(value, ty)
    {
        causes.push(Cause::new(
            "FieldValueTypeInvalid",
            here,
            format!(
                "Invalid value: {:?}: {here} in body must be of type {ty}: {:?}",
                type_name(value),
                type_name(value)
            ),
        ));
        return;
    }

    if let Some(options) = schema["enum"].as_array()
        && !options.contains(value)
    {
        let list: Vec<String> = options.iter().map(short_value).collect();
        causes.push(Cause::new(
            "FieldValueNotSupported",
            here,
            format!("Unsupported value: {}: supported values: {}", short_value(value), list.join(", ")),
        ));
    }

    match value {
        Value::String(s) => validate_string(s, schema, here, causes),
        Value::Number(n) => validate_number(value, n.as_f64().unwrap_or(0.0), schema, here, causes),
        Value::Array(items) => validate_array(items, schema, path, here, causes),
        Value::Object(map) => validate_object(map, schema, path, here, causes),
        _ => {}
    }
    validate_combinators(value, schema, path, here, causes);
}

fn validate_string(s: &str, schema: &Value, here: &str, causes: &mut Vec<Cause>) {
    let len = s.chars().count() as u64;
    if let Some(min) = schema["minLength"].as_u64()
        && len < min
    {
        causes.push(Cause::new(
            "FieldValueInvalid",
            here,
            format!("Invalid value: {s:?}: {here} in body should be at least {min} chars long"),
        ));
    }
    if let Some(max) = schema["maxLength"].as_u64()
        && len > max
    {
        causes.push(Cause::new("FieldValueTooLong", here, format!("Too long: may not be more than {max} bytes")));
    }
    if let Some(pattern) = schema["pattern"].as_str() {
        match compiled(pattern) {
            Ok(re) if !re.is_match(s) => causes.push(Cause::new(
                "FieldValueInvalid",
                here,
                format!("Invalid value: {s:?}: {here} in body should match '{pattern}'"),
            )),
            Ok(_) => {}
            Err(_) => causes.push(Cause::new(
                "FieldValueInvalid",
                here,
                format!("Invalid value: {pattern:?}: the schema's pattern does not compile"),
            )),
        }
    }
    let bad_format = match schema["format"].as_str() {
        Some("date-time") => s.parse::<jiff::Timestamp>().is_err(),
        Some("date") => s.parse::<jiff::civil::Date>().is_err(),
        Some("byte") => base64::engine::general_purpose::STANDARD.decode(s).is_err(),
        Some("int-or-string") | None => false,
        Some(_) => false,
    };
    if bad_format {
        let f = schema["format"].as_str().unwrap_or_default();
        causes.push(Cause::new(
            "FieldValueInvalid",
            here,
            format!("Invalid value: {s:?}: {here} in body must be of type {f}: {s:?}"),
        ));
    }
}

fn validate_number(value: &Value, n: f64, schema: &Value, here: &str, causes: &mut Vec<Cause>) {
    if let Some(min) = schema["minimum"].as_f64() {
        let exclusive = schema["exclusiveMinimum"].as_bool() == Some(true);
        if n < min || (exclusive && n == min) {
            let op = if exclusive { "greater than" } else { "greater than or equal to" };
            causes.push(Cause::new(
                "FieldValueInvalid",
                here,
                format!("Invalid value: {value}: {here} in body should be {op} {}", schema["minimum"]),
            ));
        }
    }
    if let Some(max) = schema["maximum"].as_f64() {
        let exclusive = schema["exclusiveMaximum"].as_bool() == Some(true);
        if n > max || (exclusive && n == max) {
            let op = if exclusive { "less than" } else { "less than or equal to" };
            causes.push(Cause::new(
                "FieldValueInvalid",
                here,
                format!("Invalid value: {value}: {here} in body should be {op} {}", schema["maximum"]),
            ));
        }
    }
    if schema["format"].as_str() == Some("int32") && value.as_i64().is_some_and(|i| i32::try_from(i).is_err()) {
        causes.push(Cause::new(
            "FieldValueInvalid",
            here,
            format!("Invalid value: {value}: {here} in body must be of type int32"),
        ));
    }
}

fn validate_array(items: &[Value], schema: &Value, path: &str, here: &str, causes: &mut Vec<Cause>) {
    let n = items.len() as u64;
    if let Some(min) = schema["minItems"].as_u64()
        && n < min
    {
        causes.push(Cause::new(
            "FieldValueInvalid",
            here,
            format!("Invalid value: {n}: {here} in body should have at least {min} items"),
        ));
    }
    if let Some(max) = schema["maxItems"].as_u64()
        && n > max
    {
        causes.push(Cause::new("FieldValueTooMany", here, format!("Too many: {n}: must have at most {max} items")));
    }
    match schema["x-kubernetes-list-type"].as_str() {
        Some("set") => {
            for (i, item) in items.iter().enumerate() {
                if items[..i].contains(item) {
                    causes.push(Cause::new(
                        "FieldValueDuplicate",
                        format!("{path}[{i}]"),
                        format!("Duplicate value: {}", short_value(item)),
                    ));
                }
            }
        }
        Some("map") => {
            let keys: Vec<&str> = schema["x-kubernetes-list-map-keys"]
                .as_array()
                .map(|k| k.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let key_of = |item: &Value| keys.iter().map(|k| item[*k].clone()).collect::<Vec<_>>();
            for (i, item) in items.iter().enumerate() {
                let k = key_of(item);
                if items[..i].iter().any(|o| key_of(o) == k) {
                    causes.push(Cause::new(
                        "FieldValueDuplicate",
                        format!("{path}[{i}]"),
                        format!("Duplicate value: {}", Value::Array(k)),
                    ));
                }
            }
        }
        _ => {}
    }
    if schema["items"].is_object() {
        for (i, item) in items.iter().enumerate() {
            validate(item, &schema["items"], &format!("{path}[{i}]"), causes);
        }
    }
}

fn validate_object(map: &Map<String, Value>, schema: &Value, path: &str, here: &str, causes: &mut Vec<Cause>) {
    if let Some(required) = schema["required"].as_array() {
        for r in required.iter().filter_map(Value::as_str) {
            if !map.contains_key(r) {
                causes.push(Cause::required(join(path, r)));
            }
        }
    }
    let n = map.len() as u64;
    if let Some(min) = schema["minProperties"].as_u64()
        && n < min
    {
        causes.push(Cause::new(
            "FieldValueInvalid",
            here,
            format!("Invalid value: {n}: {here} in body should have at least {min} properties"),
        ));
    }
    if let Some(max) = schema["maxProperties"].as_u64()
        && n > max
    {
        causes.push(Cause::new("FieldValueTooMany", here, format!("Too many: {n}: must have at most {max} items")));
    }
    let props = schema["properties"].as_object();
    for (k, child) in map {
        if let Some(sub) = props.and_then(|p| p.get(k)) {
            validate(child, sub, &join(path, k), causes);
        } else if schema["additionalProperties"].is_object() {
            validate(child, &schema["additionalProperties"], &join(path, k), causes);
        }
    }
}

fn validate_combinators(value: &Value, schema: &Value, path: &str, here: &str, causes: &mut Vec<Cause>) {
    let passes = |sub: &Value| {
        let mut inner = vec![];
        validate(value, sub, path, &mut inner);
        inner.is_empty()
    };
    if let Some(all) = schema["allOf"].as_array() {
        for sub in all {
            validate(value, sub, path, causes);
        }
    }
    if let Some(one) = schema["oneOf"].as_array() {
        let n = one.iter().filter(|s| passes(s)).count();
        if n != 1 {
            let found = if n == 0 { "Found none valid".to_string() } else { format!("Found {n} valid alternatives") };
            causes.push(Cause::new(
                "FieldValueInvalid",
                here,
                format!(
                    "Invalid value: {}: {here} in body must validate one and only one schema (oneOf). {found}",
                    short_value(value)
                ),
            ));
        }
    }
    if let Some(any) = schema["anyOf"].as_array()
        && !any.iter().any(passes)
    {
        causes.push(Cause::new(
            "FieldValueInvalid",
            here,
            format!("Invalid value: {}: {here} in body must validate at least one schema (anyOf)", short_value(value)),
        ));
    }
    if schema["not"].is_object() && passes(&schema["not"]) {
        causes.push(Cause::new(
            "FieldValueInvalid",
            here,
            format!("Invalid value: {}: {here} in body should not validate the schema (not)", short_value(value)),
        ));
    }
}

/// Runs pruning, defaulting and validation over a whole custom object. `apiVersion`, `kind` and
/// `metadata` at the root are always kept. Returns the causes and the pruned unknown fields.
pub fn process(obj: &mut Value, schema: &Value) -> (Vec<Cause>, Vec<String>) {
    let mut unknown = vec![];
    let meta = obj.as_object_mut().map(|m| (m.remove("apiVersion"), m.remove("kind"), m.remove("metadata")));
    prune(obj, schema, "", &mut unknown);
    apply_defaults(obj, schema);
    let mut causes = vec![];
    // The three root fields were taken out above, so the schema's properties for them match
    // nothing; only a root `required` naming them would fail. The schema is cloned (it is large,
    // and every write comes here) only for a root that requires one of them.
    let root = |r: &Value| matches!(r.as_str(), Some("apiVersion" | "kind" | "metadata"));
    if schema["required"].as_array().is_some_and(|req| req.iter().any(root)) {
        let mut root_schema = schema.clone();
        if let Some(req) = root_schema.get_mut("required").and_then(Value::as_array_mut) {
            req.retain(|r| !root(r));
        }
        validate(obj, &root_schema, "", &mut causes);
    } else {
        validate(obj, schema, "", &mut causes);
    }
    if let (Some(map), Some((api, kind, metadata))) = (obj.as_object_mut(), meta) {
        for (k, v) in [("apiVersion", api), ("kind", kind), ("metadata", metadata)] {
            if let Some(v) = v {
                map.insert(k.to_string(), v);
            }
        }
    }
    (causes, unknown)
}

/// A schema pattern, compiled once (every write of every object validates against it).
fn compiled(pattern: &str) -> Result<regex::Regex, regex::Error> {
    use std::collections::HashMap;
    use std::sync::{LazyLock, Mutex};
    static PATTERNS: LazyLock<Mutex<HashMap<String, Result<regex::Regex, regex::Error>>>> =
        LazyLock::new(Default::default);
    let mut patterns = PATTERNS.lock().unwrap_or_else(|p| p.into_inner());
    patterns.entry(pattern.to_string()).or_insert_with(|| regex::Regex::new(pattern)).clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "required": ["url"],
                    "properties": {
                        "url": {"type": "string", "pattern": "^https?://"},
                        "mode": {"type": "string", "enum": ["a", "b"], "default": "a"},
                        "count": {"type": "integer", "minimum": 1, "maximum": 5},
                        "port": {"x-kubernetes-int-or-string": true},
                        "tags": {"type": "array", "maxItems": 2, "items": {"type": "string"}},
                        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                        "opt": {"type": "string", "nullable": true}
                    },
                    "oneOf": [{"required": ["count"]}, {"required": ["port"]}]
                }
            }
        })
    }

    #[test]
    fn defaults_prunes_and_validates() {
        let mut obj = json!({"apiVersion": "x/v1", "kind": "X", "metadata": {"name": "a"},
            "spec": {"url": "https://x", "count": 2, "extra": 1, "free": {"any": [1]}, "opt": null}});
        let (causes, unknown) = process(&mut obj, &schema());
        assert_eq!(causes, vec![]);
        assert_eq!(unknown, vec![".spec.extra".to_string()]);
        assert_eq!(obj["spec"]["mode"], "a");
        assert_eq!(obj["spec"]["free"]["any"][0], 1);
        assert!(obj["spec"]["opt"].is_null() && obj["spec"].get("opt").is_some());
        assert_eq!(obj["metadata"]["name"], "a");
    }

    #[test]
    fn reports_each_violation_with_its_field() {
        let mut obj =
            json!({"spec": {"url": "ftp://x", "mode": "c", "count": 9, "port": 1.5, "tags": ["a", "b", "c"]}});
        let (causes, _) = process(&mut obj, &schema());
        let fields: Vec<(&str, &str)> = causes.iter().map(|c| (c.field.as_str(), c.reason)).collect();
        assert!(fields.contains(&("spec.url", "FieldValueInvalid")), "{causes:?}");
        assert!(fields.contains(&("spec.mode", "FieldValueNotSupported")), "{causes:?}");
        assert!(fields.contains(&("spec.count", "FieldValueInvalid")), "{causes:?}");
        assert!(fields.contains(&("spec.port", "FieldValueTypeInvalid")), "{causes:?}");
        assert!(fields.contains(&("spec.tags", "FieldValueTooMany")), "{causes:?}");
        let mut missing = json!({"spec": {"count": 1}});
        let (causes, _) = process(&mut missing, &schema());
        assert_eq!(causes, vec![Cause::required("spec.url")]);
        let mut both = json!({"spec": {"url": "http://x", "count": 1, "port": "a"}});
        let (causes, _) = process(&mut both, &schema());
        assert_eq!(causes.len(), 1);
        assert!(causes[0].message.contains("oneOf"), "{causes:?}");
    }
}
