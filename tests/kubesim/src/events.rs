//! `events.k8s.io/v1` Events are the same objects as `core/v1` Events, under other field names.
//! They are stored in the core form and converted on the way in and out, as the real server does.

use serde_json::{Map, Value};

/// (events.k8s.io name, core name)
const RENAMES: &[(&str, &str)] = &[
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
];

fn rename(obj: &Value, from_new: bool, api_version: &str) -> Value {
    let Value::Object(m) = obj else {
        return obj.clone();
    };
    let mut out = Map::new();
    for (k, v) in m {
        let key = RENAMES
            .iter()
            .find_map(|(new, core)| {
                if from_new && k == new {
                    Some(*core)
                } else if !from_new && k == core {
                    Some(*new)
                } else {
                    None
                }
            })
            .unwrap_or(k);
        out.insert(key.to_string(), v.clone());
    }
    out.insert("apiVersion".into(), Value::String(api_version.into()));
    Value::Object(out)
}

/// An `events.k8s.io/v1` Event in core form.
pub fn to_core(obj: &Value) -> Value {
    let mut core = rename(obj, true, "v1");
    if core.get("source").is_none()
        && let Some(c) = core.get("reportingComponent").cloned()
    {
        core["source"] = serde_json::json!({ "component": c });
    }
    core
}

/// A core Event as `events.k8s.io/v1` shows it.
pub fn from_core(obj: &Value) -> Value {
    rename(obj, false, "events.k8s.io/v1")
}

/// Rewrites a merge or strategic patch written against `events.k8s.io/v1` field names.
pub fn patch_to_core(patch: &Value) -> Value {
    rename(patch, true, "v1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trips() {
        let new = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "note": "hi", "regarding": {"name": "x"},
            "reportingController": "c", "reason": "R", "type": "Normal"});
        let core = to_core(&new);
        assert_eq!(core["message"], "hi");
        assert_eq!(core["involvedObject"]["name"], "x");
        assert_eq!(core["source"]["component"], "c");
        assert_eq!(core["apiVersion"], "v1");
        let back = from_core(&core);
        assert_eq!(back["note"], "hi");
        assert_eq!(back["regarding"]["name"], "x");
        assert_eq!(back["apiVersion"], "events.k8s.io/v1");
    }
}
