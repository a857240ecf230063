//! OpenAPI v3 documents per group-version, enough for kubectl's server-side field validation
//! check, its patch-type choice, and `kubectl explain` on custom resources.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::registry::ResourceDef;

/// The path of a group-version in the index: `api/v1` or `apis/{group}/{version}`.
pub fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() { format!("api/{version}") } else { format!("apis/{group}/{version}") }
}

fn reversed_group(group: &str) -> String {
    if group.is_empty() {
        return "io.k8s.api.core".into();
    }
    let mut parts: Vec<&str> = group.split('.').collect();
    parts.reverse();
    parts.join(".")
}

fn schema_name(def: &ResourceDef, version: &str) -> String {
    format!("{}.{version}.{}", reversed_group(&def.group), def.kind)
}

fn param(name: &str) -> Value {
    json!({"name": name, "in": "query", "description": name, "schema": {"type": "string", "uniqueItems": true}})
}

fn operation(def: &ResourceDef, version: &str, id: &str, schema_ref: &Value, body_types: &[&str]) -> Value {
    let mut op = json!({
        "operationId": id,
        "parameters": [param("dryRun"), param("fieldManager"), param("fieldValidation")],
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": schema_ref}}}},
        "x-kubernetes-action": id,
        "x-kubernetes-group-version-kind": {"group": def.group, "version": version, "kind": def.kind},
    });
    if !body_types.is_empty() {
        let content: Map<String, Value> =
            body_types.iter().map(|t| (t.to_string(), json!({"schema": schema_ref}))).collect();
        op["requestBody"] = json!({"content": content, "required": true});
    }
    op
}

/// The document for one group-version.
pub fn document(defs: &[&ResourceDef], group: &str, version: &str) -> Value {
    let mut paths = BTreeMap::new();
    let mut schemas = Map::new();
    for def in defs {
        let Some(v) = def.version(version) else {
            continue;
        };
        let name = schema_name(def, version);
        let gvk = json!([{"group": def.group, "version": version, "kind": def.kind}]);
        let builtin = def.builtin.and_then(|b| b.schema());
        let mut schema = match builtin {
            Some((root, defs)) => {
                schemas.extend(defs);
                root
            }
            None => v
                .schema
                .clone()
                .unwrap_or_else(|| json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})),
        };
        schema["x-kubernetes-group-version-kind"] = gvk;
        if let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) {
            props.entry("apiVersion").or_insert(json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."}));
            props.entry("kind").or_insert(json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents."}));
            props.entry("metadata").or_insert(json!({"type": "object", "description": "Standard object's metadata."}));
        }
        schemas.insert(name.clone(), schema);
        let schema_ref = json!({"$ref": format!("#/components/schemas/{name}")});
        // The server accepts strategic merge patches for built-in kinds, but the documents do not
        // say so: k8s-openapi's schemas carry no patch-merge-key extensions, and kubectl would
        // compute its patches from them wrongly. Unadvertised, kubectl uses its compiled-in types.
        let patch_types: &[&str] =
            &["application/json-patch+json", "application/merge-patch+json", "application/apply-patch+yaml"];
        let base = if def.namespaced {
            format!("/{}/namespaces/{{namespace}}/{}", gv_path(group, version), def.plural)
        } else {
            format!("/{}/{}", gv_path(group, version), def.plural)
        };
        let mut item = json!({
            "get": operation(def, version, "get", &schema_ref, &[]),
            "put": operation(def, version, "put", &schema_ref, &["application/json"]),
            "patch": operation(def, version, "patch", &schema_ref, patch_types),
            "delete": operation(def, version, "delete", &schema_ref, &[]),
        });
        if let Some(p) = item["patch"]["parameters"].as_array_mut() {
            p.push(param("force"));
        }
        paths.insert(format!("{base}/{{name}}"), item);
        paths.insert(
            base.clone(),
            json!({"get": operation(def, version, "list", &schema_ref, &[]), "post": operation(def, version, "post", &schema_ref, &["application/json"])}),
        );
        if v.status_subresource {
            paths.insert(
                format!("{base}/{{name}}/status"),
                json!({"get": operation(def, version, "get", &schema_ref, &[]), "put": operation(def, version, "put", &schema_ref, &["application/json"]), "patch": operation(def, version, "patch", &schema_ref, patch_types)}),
            );
        }
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.33.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    })
}

/// The `/openapi/v3` index of group-version documents.
pub fn index(gvs: &[(String, String)], rv: u64) -> Value {
    let paths: Map<String, Value> = gvs
        .iter()
        .map(|(g, v)| {
            let p = gv_path(g, v);
            (p.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={rv:016X}")}))
        })
        .collect();
    json!({ "paths": paths })
}
