//! The `meta.k8s.io/v1` Table format that `kubectl get` asks for, with the built-in kinds'
//! columns and custom resources' `additionalPrinterColumns`.

use serde_json::{Value, json};

use crate::registry::{PrinterColumn, ResourceDef};

pub fn wants_table(accept: &str) -> bool {
    accept.split(',').next().is_some_and(|first| first.contains("as=Table"))
}

/// kubectl's short human duration (`5s`, `3m20s`, `2d4h`).
pub fn human_duration(secs: i64) -> String {
    let s = secs.max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86400);
    if secs < -1 {
        return "<invalid>".into();
    }
    if s < 120 {
        format!("{s}s")
    } else if m < 10 {
        if s % 60 == 0 { format!("{m}m") } else { format!("{m}m{}s", s % 60) }
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        if m % 60 == 0 { format!("{h}h") } else { format!("{h}h{}m", m % 60) }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 192 {
        if h % 24 == 0 { format!("{d}d") } else { format!("{d}d{}h", h % 24) }
    } else if d < 730 {
        format!("{d}d")
    } else {
        format!("{}y", d / 365)
    }
}

/// An age cell: how long ago `ts` was.
pub(crate) fn age_of(ts: &Value) -> Value {
    match ts.as_str().and_then(|s| s.parse::<jiff::Timestamp>().ok()) {
        Some(t) => json!(human_duration(jiff::Timestamp::now().as_second() - t.as_second())),
        None => json!("<unknown>"),
    }
}

/// A small JSONPath evaluator for printer columns: `.a.b`, `[0]`, `[*]` and
/// `[?(@.type=="Ready")]`.
pub fn eval_path(obj: &Value, path: &str) -> Vec<Value> {
    let mut cur = vec![obj.clone()];
    let mut rest = path.trim().trim_start_matches('{').trim_end_matches('}').trim_start_matches('$');
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            let field = &r[..end];
            cur = cur.iter().filter_map(|v| v.get(field).cloned()).collect();
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix('[') {
            let Some(end) = r.find(']') else { break };
            let inner = &r[..end];
            rest = &r[end + 1..];
            cur = if inner == "*" {
                cur.iter().flat_map(|v| v.as_array().cloned().unwrap_or_default()).collect()
            } else if let Some(filter) = inner.strip_prefix("?(@.").and_then(|f| f.strip_suffix(')')) {
                let (field, want) = filter.split_once("==").unwrap_or((filter, ""));
                let want = want.trim().trim_matches(|c| c == '"' || c == '\'');
                cur.iter()
                    .flat_map(|v| v.as_array().cloned().unwrap_or_default())
                    .filter(|item| item[field.trim()].as_str() == Some(want))
                    .collect()
            } else if let Ok(i) = inner.parse::<usize>() {
                cur.iter().filter_map(|v| v.get(i).cloned()).collect()
            } else {
                vec![]
            };
        } else {
            break;
        }
    }
    cur
}

fn cell(obj: &Value, col: &PrinterColumn) -> Value {
    let values = eval_path(obj, &col.json_path);
    let Some(first) = values.into_iter().next() else {
        return Value::Null;
    };
    if col.type_ == "date" {
        return age_of(&first);
    }
    first
}

/// Column definitions of a built-in kind's table.
pub(crate) fn column_defs(cols: &[(&str, &str, &str)]) -> Vec<Value> {
    cols.iter()
        .map(|(name, ty, desc)| {
            json!({"name": name, "type": ty, "format": if *name == "Name" { "name" } else { "" }, "description": desc, "priority": 0})
        })
        .collect()
}

/// Renders objects as a Table; `include` is the `includeObject` parameter.
pub fn render(def: &ResourceDef, version: &str, objects: &[Value], list_meta: Value, include: &str) -> Value {
    let mut defs = vec![];
    let mut rows = vec![];
    for o in objects {
        let (cols, cells) = if def.custom {
            let cols = def.version(version).map(|v| v.columns.clone()).unwrap_or_default();
            let mut defs = vec![
                json!({"name": "Name", "type": "string", "format": "name", "description": "Name must be unique within a namespace.", "priority": 0}),
            ];
            let mut cells = vec![o["metadata"]["name"].clone()];
            for c in &cols {
                defs.push(json!({"name": c.name, "type": if c.type_ == "date" { "date" } else { c.type_.as_str() }, "format": c.format, "description": c.description, "priority": c.priority}));
                cells.push(cell(o, c));
            }
            (defs, cells)
        } else {
            def.builtin.and_then(|b| b.row(o)).unwrap_or_else(|| {
                (
                    column_defs(&[
                        ("Name", "string", "Name must be unique within a namespace."),
                        ("Created At", "date", ""),
                    ]),
                    vec![o["metadata"]["name"].clone(), o["metadata"]["creationTimestamp"].clone()],
                )
            })
        };
        defs = cols;
        let mut row = json!({ "cells": cells });
        match include {
            "None" => {}
            "Object" => row["object"] = o.clone(),
            _ => {
                row["object"] =
                    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]});
            }
        }
        rows.push(row);
    }
    if defs.is_empty() {
        let sample = json!({"metadata": {}});
        defs = if def.custom {
            render(def, version, &[sample], json!({}), include)["columnDefinitions"]
                .clone()
                .as_array()
                .cloned()
                .unwrap_or_default()
        } else {
            def.builtin
                .and_then(|b| b.row(&sample))
                .map(|(c, _)| c)
                .unwrap_or_else(|| column_defs(&[("Name", "string", ""), ("Created At", "date", "")]))
        };
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": defs,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonpath_filters_conditions() {
        let o =
            json!({"status": {"conditions": [{"type": "A", "status": "False"}, {"type": "Ready", "status": "True"}]}});
        assert_eq!(eval_path(&o, ".status.conditions[?(@.type==\"Ready\")].status"), vec![json!("True")]);
        assert_eq!(eval_path(&o, ".status.conditions[0].type"), vec![json!("A")]);
        assert!(eval_path(&o, ".spec.x").is_empty());
    }

    #[test]
    fn durations_read_like_kubectl() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(200), "3m20s");
        assert_eq!(human_duration(3600 * 3 + 60), "3h1m");
        assert_eq!(human_duration(86400 * 3), "3d");
    }
}
