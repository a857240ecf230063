//! The patch formats: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and strategic merge
//! patch for the built-in kinds.

use serde_json::Value;

use crate::error::ApiError;
use crate::fields::{ListKind, list_kind};

pub fn merge_patch(target: &mut Value, patch: &Value) {
    json_patch::merge(target, patch);
}

pub fn json_patch(target: &mut Value, patch: Value) -> Result<(), ApiError> {
    let ops: json_patch::Patch =
        serde_json::from_value(patch).map_err(|e| ApiError::bad_request(format!("json patch is invalid: {e}")))?;
    // The API server does not say which operation failed, nor why.
    json_patch::patch(target, &ops).map_err(|_| {
        let mut error = ApiError::new(422, "Invalid", "the server rejected our request due to an error in our request");
        error.details = Some(serde_json::json!({}));
        error
    })
}

fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter().filter(|(k, _)| !k.starts_with('$')).map(|(k, v)| (k.clone(), strip_directives(v))).collect(),
        ),
        Value::Array(a) => Value::Array(
            a.iter()
                .filter(|i| i.get("$patch").and_then(Value::as_str) != Some("delete"))
                .map(strip_directives)
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Applies a strategic merge patch: maps merge, lists with a merge key merge by it, `$patch`
/// directives (`replace`, `delete`), `$retainKeys` and `$deleteFromPrimitiveList` are honoured,
/// `$setElementOrder` is accepted and ignored.
pub fn strategic_merge(target: &mut Value, patch: &Value) {
    let (Value::Object(t), Value::Object(p)) = (&mut *target, patch) else {
        *target = strip_directives(patch);
        return;
    };
    if p.get("$patch").and_then(Value::as_str) == Some("replace") {
        *target = strip_directives(patch);
        return;
    }
    for (k, pv) in p {
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Some(remove)) = (t.get_mut(field), pv.as_array()) {
                list.retain(|x| !remove.contains(x));
            }
            continue;
        }
        if k.starts_with('$') {
            continue;
        }
        if pv.is_null() {
            t.remove(k);
            continue;
        }
        match (t.get_mut(k), pv) {
            (Some(tv @ Value::Object(_)), Value::Object(_)) => {
                if pv.get("$patch").and_then(Value::as_str) == Some("delete") {
                    t.remove(k);
                } else {
                    strategic_merge(tv, pv);
                }
            }
            (Some(Value::Array(tl)), Value::Array(pl)) => merge_list(tl, pl, k),
            _ => {
                t.insert(k.clone(), strip_directives(pv));
            }
        }
    }
    if let Some(keep) = p.get("$retainKeys").and_then(Value::as_array) {
        let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
        t.retain(|k, _| keep.contains(&k.as_str()));
    }
}

fn merge_list(target: &mut Vec<Value>, patch: &[Value], field: &str) {
    match list_kind(field, None) {
        ListKind::Map(keys) => {
            if patch.iter().any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace")) {
                *target = patch.iter().filter(|i| i.get("$patch").is_none()).map(strip_directives).collect();
                return;
            }
            let same = |a: &Value, b: &Value| keys.iter().all(|k| a[k] == b[k]);
            for item in patch {
                if item.get("$patch").and_then(Value::as_str) == Some("delete") {
                    target.retain(|t| !same(t, item));
                } else if let Some(existing) = target.iter_mut().find(|t| same(t, item)) {
                    strategic_merge(existing, item);
                } else {
                    target.push(strip_directives(item));
                }
            }
        }
        ListKind::Set => {
            for item in patch {
                if !target.contains(item) {
                    target.push(item.clone());
                }
            }
        }
        ListKind::Atomic => *target = patch.iter().map(strip_directives).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strategic_merge_lists_by_key() {
        let mut t = json!({"metadata": {"labels": {"a": "1", "b": "2"}, "finalizers": ["x"]},
            "spec": {"containers": [{"name": "c", "image": "old", "env": [{"name": "A", "value": "1"}]}], "args": ["a"]}});
        strategic_merge(
            &mut t,
            &json!({"metadata": {"labels": {"b": null, "c": "3"}, "finalizers": ["y"]},
            "spec": {"$setElementOrder/containers": [{"name": "c"}],
                     "containers": [{"name": "c", "image": "new", "env": [{"name": "B", "value": "2"}]}, {"name": "d", "image": "i"}],
                     "args": ["b"]}}),
        );
        assert_eq!(t["metadata"]["labels"], json!({"a": "1", "c": "3"}));
        assert_eq!(t["metadata"]["finalizers"], json!(["x", "y"]));
        assert_eq!(t["spec"]["containers"][0]["image"], "new");
        assert_eq!(t["spec"]["containers"][0]["env"].as_array().map(Vec::len), Some(2));
        assert_eq!(t["spec"]["containers"][1]["name"], "d");
        assert_eq!(t["spec"]["args"], json!(["b"]));
        strategic_merge(&mut t, &json!({"spec": {"containers": [{"name": "d", "$patch": "delete"}]}}));
        assert_eq!(t["spec"]["containers"].as_array().map(Vec::len), Some(1));
        strategic_merge(&mut t, &json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["x"]}}));
        assert_eq!(t["metadata"]["finalizers"], json!(["y"]));
    }
}
