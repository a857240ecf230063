//! Field ownership for server-side apply: the sets of fields each manager owns, the apply merge,
//! conflict detection and the `managedFields` rendering (FieldsV1).

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

/// One step of a field path in FieldsV1 notation: `f:name`, `k:{"type":"Ready"}` or `v:"value"`.
pub type FieldPath = Vec<String>;
pub type FieldSet = BTreeSet<FieldPath>;

/// How a list merges: by key, as a set, or replaced whole.
#[derive(Clone, Debug, PartialEq)]
pub enum ListKind {
    Map(Vec<String>),
    Set,
    Atomic,
}

/// Decides list semantics from the CRD schema where one is given, else from the strategic-merge
/// keys of the built-in kinds.
pub fn list_kind(field: &str, schema: Option<&Value>) -> ListKind {
    if let Some(s) = schema {
        match s["x-kubernetes-list-type"].as_str() {
            Some("map") => {
                let keys = s["x-kubernetes-list-map-keys"]
                    .as_array()
                    .map(|k| k.iter().filter_map(|x| x.as_str().map(String::from)).collect())
                    .unwrap_or_default();
                return ListKind::Map(keys);
            }
            Some("set") => return ListKind::Set,
            Some(_) => return ListKind::Atomic,
            None => {}
        }
    }
    let key = |k: &str| ListKind::Map(vec![k.to_string()]);
    match field {
        "finalizers" => ListKind::Set,
        "ownerReferences" => key("uid"),
        "conditions" if schema.is_none() => key("type"),
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "secrets" => key("name"),
        "volumeMounts" => key("mountPath"),
        "ports" => key("containerPort"),
        _ => ListKind::Atomic,
    }
}

/// Whether a keyed list's elements are owned whole: an owner reference is an atomic struct.
fn atomic_elements(field: &str, schema: Option<&Value>) -> bool {
    schema.is_none() && field == "ownerReferences"
}

/// The schema of a child field, if the parent has one.
pub fn child_schema<'a>(schema: Option<&'a Value>, key: &str) -> Option<&'a Value> {
    let s = schema?;
    if let Some(p) = s["properties"].get(key) {
        return Some(p);
    }
    if s["additionalProperties"].is_object() {
        return Some(&s["additionalProperties"]);
    }
    None
}

fn item_schema(schema: Option<&Value>) -> Option<&Value> {
    schema.and_then(|s| s.get("items"))
}

const UNTRACKED_META: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
    "generateName",
];

fn element_key(item: &Value, keys: &[String]) -> String {
    let mut m = Map::new();
    for k in keys {
        m.insert(k.clone(), item[k].clone());
    }
    format!("k:{}", Value::Object(m))
}

/// Whether the field `k` under `prefix` has an owner: not the type's `apiVersion` and `kind`,
/// nor the metadata the server sets.
fn tracked(prefix: &FieldPath, k: &str) -> bool {
    let root_type = prefix.is_empty() && (k == "apiVersion" || k == "kind");
    let server_meta = prefix.len() == 1 && prefix[0] == "f:metadata" && UNTRACKED_META.contains(&k);
    !root_type && !server_meta
}

/// The leaf fields `value` sets.
pub fn fields_of(value: &Value, schema: Option<&Value>) -> FieldSet {
    let mut out = FieldSet::new();
    collect(value, schema, &mut vec![], "", &mut out);
    out
}

fn collect(value: &Value, schema: Option<&Value>, prefix: &mut FieldPath, field: &str, out: &mut FieldSet) {
    match value {
        Value::Object(map) => {
            if map.is_empty() && !prefix.is_empty() {
                out.insert(prefix.clone());
            }
            for (k, child) in map {
                if !tracked(prefix, k) {
                    continue;
                }
                prefix.push(format!("f:{k}"));
                collect(child, child_schema(schema, k), prefix, k, out);
                prefix.pop();
            }
        }
        Value::Array(items) => match list_kind(field, schema) {
            ListKind::Map(keys) => {
                for item in items {
                    prefix.push(element_key(item, &keys));
                    if atomic_elements(field, schema) {
                        out.insert(prefix.clone());
                    } else {
                        collect(item, item_schema(schema), prefix, "", out);
                    }
                    prefix.pop();
                }
            }
            ListKind::Set => {
                for item in items {
                    prefix.push(format!("v:{item}"));
                    out.insert(prefix.clone());
                    prefix.pop();
                }
            }
            ListKind::Atomic => {
                out.insert(prefix.clone());
            }
        },
        _ => {
            if !prefix.is_empty() {
                out.insert(prefix.clone());
            }
        }
    }
}

fn matches_step(item: &Value, step: &str) -> bool {
    if let Some(k) = step.strip_prefix("k:") {
        let Ok(Value::Object(keys)) = serde_json::from_str::<Value>(k) else {
            return false;
        };
        keys.iter().all(|(kk, kv)| &item[kk] == kv)
    } else if let Some(v) = step.strip_prefix("v:") {
        serde_json::from_str::<Value>(v).is_ok_and(|v| &v == item)
    } else {
        false
    }
}

/// The names of the key fields of an associative list element step (`k:{"uid":"..."}`).
fn key_fields(step: &str) -> Vec<String> {
    step.strip_prefix("k:")
        .and_then(|k| serde_json::from_str::<Map<String, Value>>(k).ok())
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

/// Whether the value at `path` holds nothing any more: an empty map or list, or a list element
/// left with only the fields that identify it.
pub fn is_hollow(value: &Value, path: &[String]) -> bool {
    match get_at(value, path) {
        Some(Value::Object(m)) => {
            let keys = path.last().map(|s| key_fields(s)).unwrap_or_default();
            m.keys().all(|k| keys.contains(k))
        }
        Some(Value::Array(a)) => a.is_empty(),
        _ => false,
    }
}

/// The value at a field path, if present.
pub fn get_at<'a>(value: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = value;
    for step in path {
        cur = if let Some(name) = step.strip_prefix("f:") {
            cur.as_object()?.get(name)?
        } else {
            cur.as_array()?.iter().find(|i| matches_step(i, step))?
        };
    }
    Some(cur)
}

/// Removes the value at a field path; a no-op when it is absent.
pub fn remove_at(value: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = value;
    for step in parents {
        let next = if let Some(name) = step.strip_prefix("f:") {
            cur.as_object_mut().and_then(|m| m.get_mut(name))
        } else {
            cur.as_array_mut().and_then(|a| a.iter_mut().find(|i| matches_step(i, step)))
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    if let Some(name) = last.strip_prefix("f:") {
        // A key field of a list element stays while the element does: it is how the element is
        // found, and the element goes as a whole once nothing else is left in it.
        if parents.last().is_some_and(|p| key_fields(p).iter().any(|k| k == name)) {
            return;
        }
        if let Some(m) = cur.as_object_mut() {
            m.remove(name);
        }
    } else if let Some(a) = cur.as_array_mut() {
        a.retain(|i| !matches_step(i, last));
    }
}

/// Merges an applied configuration into the live object: maps field by field, associative lists
/// by key, sets by union, everything else replaced.
pub fn merge_applied(live: &mut Value, applied: &Value, schema: Option<&Value>, field: &str) {
    match (live, applied) {
        (Value::Object(l), Value::Object(a)) => {
            for (k, av) in a {
                let sub = child_schema(schema, k);
                match l.get_mut(k) {
                    Some(lv) if !av.is_null() => merge_applied(lv, av, sub, k),
                    _ => {
                        l.insert(k.clone(), av.clone());
                    }
                }
            }
        }
        (Value::Array(l), Value::Array(a)) => match list_kind(field, schema) {
            ListKind::Map(keys) => {
                for item in a {
                    let key = element_key(item, &keys);
                    match l.iter_mut().find(|x| element_key(x, &keys) == key) {
                        Some(existing) => merge_applied(existing, item, item_schema(schema), ""),
                        None => l.push(item.clone()),
                    }
                }
            }
            ListKind::Set => {
                for item in a {
                    if !l.contains(item) {
                        l.push(item.clone());
                    }
                }
            }
            ListKind::Atomic => *l = a.clone(),
        },
        (l, a) => *l = a.clone(),
    }
}

/// The fields whose value differs between two versions of an object (added or changed), with
/// the maps, objects and list elements added (an update makes its manager own them too: `.` in
/// FieldsV1); and the fields removed.
pub fn changed_fields(old: &Value, new: &Value, schema: Option<&Value>) -> (FieldSet, FieldSet) {
    let new_fields = fields_of(new, schema);
    let old_fields = fields_of(old, schema);
    let mut changed: FieldSet = new_fields.iter().filter(|p| get_at(old, p) != get_at(new, p)).cloned().collect();
    added_nodes(old, new, schema, &mut vec![], "", &mut changed);
    let removed = old_fields.difference(&new_fields).cloned().collect();
    (changed, removed)
}

/// The maps of the built-in kinds: their structs are always there (Go values, not pointers), so
/// only these, and list elements, are ever added.
const BUILTIN_MAPS: &[&str] = &["labels", "annotations", "data", "binaryData", "stringData"];

/// The maps, objects (of custom resources), merged lists and their elements `value` holds that
/// `old` has not, as members of the set: an update's manager owns them. Never `metadata`
/// itself.
fn added_nodes(
    old: &Value,
    value: &Value,
    schema: Option<&Value>,
    prefix: &mut FieldPath,
    field: &str,
    out: &mut FieldSet,
) {
    match value {
        Value::Object(map) => {
            for (k, child) in map {
                if !tracked(prefix, k) {
                    continue;
                }
                prefix.push(format!("f:{k}"));
                let map = child.is_object()
                    && !(prefix.len() == 1 && k == "metadata")
                    && (schema.is_some() || BUILTIN_MAPS.contains(&k.as_str()));
                // A list merged by key or as a set is a member too (an atomic one is a leaf).
                let list = child.is_array() && list_kind(k, child_schema(schema, k)) != ListKind::Atomic;
                if (map || list) && get_at(old, prefix).is_none() {
                    out.insert(prefix.clone());
                }
                added_nodes(old, child, child_schema(schema, k), prefix, k, out);
                prefix.pop();
            }
        }
        Value::Array(items) => {
            if let ListKind::Map(keys) = list_kind(field, schema) {
                for item in items {
                    prefix.push(element_key(item, &keys));
                    if !atomic_elements(field, schema) && get_at(old, prefix).is_none() {
                        out.insert(prefix.clone());
                    }
                    added_nodes(old, item, item_schema(schema), prefix, "", out);
                    prefix.pop();
                }
            }
        }
        _ => {}
    }
}

/// How a manager wrote its fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// Server-side apply: the fields are the manager's declared intent.
    Apply,
    /// Create, update or a non-apply patch.
    Update,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Apply => "Apply",
            Self::Update => "Update",
        }
    }
}

/// One manager's entry in `metadata.managedFields`.
#[derive(Clone, Debug, PartialEq)]
pub struct ManagedEntry {
    pub manager: String,
    pub operation: Operation,
    pub api_version: String,
    pub subresource: String,
    pub time: String,
    pub fields: FieldSet,
}

impl ManagedEntry {
    /// Whether this entry is `manager`'s, written by `operation`, of `subresource` (empty for
    /// the object itself): the key under which managedFields keeps one entry.
    pub fn is(&self, manager: &str, operation: Operation, subresource: &str) -> bool {
        self.manager == manager && self.operation == operation && self.subresource == subresource
    }
}

/// Renders a field set as a FieldsV1 tree: a member with members below it is marked `.`.
pub fn fields_v1(set: &FieldSet) -> Value {
    let mut root = Map::new();
    for path in set {
        let below = set.range(path.clone()..).nth(1).is_some_and(|next| next.starts_with(path));
        let mut cur = &mut root;
        for step in path.iter().cloned().chain(below.then(|| ".".to_string())) {
            let entry = cur.entry(step).or_insert_with(|| json!({}));
            let Some(next) = entry.as_object_mut() else {
                break;
            };
            cur = next;
        }
    }
    Value::Object(root)
}

pub fn render(entries: &[ManagedEntry]) -> Value {
    Value::Array(
        entries
            .iter()
            .filter(|e| !e.fields.is_empty())
            .map(|e| {
                let mut v = json!({
                    "manager": e.manager,
                    "operation": e.operation.as_str(),
                    "apiVersion": e.api_version,
                    "time": e.time,
                    "fieldsType": "FieldsV1",
                    "fieldsV1": fields_v1(&e.fields),
                });
                if !e.subresource.is_empty() {
                    v["subresource"] = json!(e.subresource);
                }
                v
            })
            .collect(),
    )
}

fn parse_tree(node: &Value, prefix: &mut FieldPath, out: &mut FieldSet) {
    let Some(map) = node.as_object() else { return };
    if map.is_empty() && !prefix.is_empty() {
        out.insert(prefix.clone());
    }
    for (k, child) in map {
        if k == "." {
            out.insert(prefix.clone());
            continue;
        }
        prefix.push(k.clone());
        parse_tree(child, prefix, out);
        prefix.pop();
    }
}

/// Reads `metadata.managedFields` as a client sent it.
pub fn parse(managed: &Value) -> Vec<ManagedEntry> {
    managed
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .map(|e| {
                    let mut fields = FieldSet::new();
                    parse_tree(&e["fieldsV1"], &mut vec![], &mut fields);
                    ManagedEntry {
                        manager: e["manager"].as_str().unwrap_or_default().to_string(),
                        operation: if e["operation"].as_str() == Some("Apply") {
                            Operation::Apply
                        } else {
                            Operation::Update
                        },
                        api_version: e["apiVersion"].as_str().unwrap_or_default().to_string(),
                        subresource: e["subresource"].as_str().unwrap_or_default().to_string(),
                        time: e["time"].as_str().unwrap_or_default().to_string(),
                        fields,
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Formats a path the way the API server prints it in apply conflicts: `.data.token`.
pub fn display_path(path: &FieldPath) -> String {
    let mut s = String::new();
    for step in path {
        if let Some(n) = step.strip_prefix("f:") {
            s.push('.');
            s.push_str(n);
        } else if let Some(k) = step.strip_prefix("k:") {
            s.push('[');
            s.push_str(k);
            s.push(']');
        } else if let Some(v) = step.strip_prefix("v:") {
            s.push_str(&format!("[={v}]"));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_follow_list_semantics() {
        let obj = json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "a", "labels": {"x": "1"}, "finalizers": ["f"], "ownerReferences": [{"uid": "u", "name": "o"}]},
            "data": {"k": "dg=="}, "list": [1, 2]});
        let f = fields_of(&obj, None);
        let shown: Vec<String> = f.iter().map(display_path).collect();
        assert!(shown.contains(&".metadata.labels.x".to_string()), "{shown:?}");
        assert!(shown.contains(&".metadata.finalizers[=\"f\"]".to_string()), "{shown:?}");
        // An owner reference is owned whole (an atomic struct), as the API server records it.
        assert!(shown.contains(&".metadata.ownerReferences[{\"uid\":\"u\"}]".to_string()), "{shown:?}");
        assert!(shown.contains(&".list".to_string()), "{shown:?}");
        assert!(!shown.iter().any(|s| s.contains("name") && s.starts_with(".metadata.name")), "{shown:?}");
    }

    #[test]
    fn managed_fields_round_trip() {
        let obj = json!({"metadata": {"labels": {"a": "1"}}, "spec": {"x": [1], "m": {}}});
        let entry = ManagedEntry {
            manager: "m".into(),
            operation: Operation::Apply,
            api_version: "v1".into(),
            subresource: String::new(),
            time: "t".into(),
            fields: fields_of(&obj, None),
        };
        let parsed = parse(&render(std::slice::from_ref(&entry)));
        assert_eq!(parsed, vec![entry]);
    }

    #[test]
    fn merge_and_remove_by_key() {
        let mut live = json!({"status": {"conditions": [{"type": "A", "status": "True"}]}, "spec": {"l": [1]}});
        merge_applied(
            &mut live,
            &json!({"status": {"conditions": [{"type": "B", "status": "False"}]}, "spec": {"l": [2]}}),
            None,
            "",
        );
        assert_eq!(live["status"]["conditions"].as_array().map(Vec::len), Some(2));
        assert_eq!(live["spec"]["l"], json!([2]));
        remove_at(&mut live, &["f:status".into(), "f:conditions".into(), "k:{\"type\":\"A\"}".into()]);
        assert_eq!(live["status"]["conditions"], json!([{"type": "B", "status": "False"}]));
    }
}
