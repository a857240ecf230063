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

/// The schema of a built-in kind, generated from k8s-openapi's types, and the definitions it
/// refers to (as `#/components/schemas/...`).
fn builtin_schema(def: &ResourceDef) -> Option<(Value, Map<String, Value>)> {
    use k8s_openapi::api;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    fn generate<T: schemars::JsonSchema>() -> Option<(Value, Map<String, Value>)> {
        let generator = schemars::generate::SchemaSettings::openapi3().into_generator();
        let mut root = serde_json::to_value(generator.into_root_schema_for::<T>()).ok()?;
        let map = root.as_object_mut()?;
        map.remove("$schema");
        let components = map.remove("components").and_then(|mut c| c.get_mut("schemas").map(Value::take));
        let defs = components.and_then(|c| c.as_object().cloned()).unwrap_or_default();
        Some((root, defs))
    }
    match (def.group.as_str(), def.plural.as_str()) {
        ("", "namespaces") => generate::<api::core::v1::Namespace>(),
        ("", "secrets") => generate::<api::core::v1::Secret>(),
        ("", "configmaps") => generate::<api::core::v1::ConfigMap>(),
        ("", "serviceaccounts") => generate::<api::core::v1::ServiceAccount>(),
        ("", "events") => generate::<api::core::v1::Event>(),
        ("events.k8s.io", "events") => generate::<api::events::v1::Event>(),
        ("coordination.k8s.io", "leases") => generate::<api::coordination::v1::Lease>(),
        ("apps", "deployments") => generate::<api::apps::v1::Deployment>(),
        ("rbac.authorization.k8s.io", "clusterroles") => generate::<api::rbac::v1::ClusterRole>(),
        ("rbac.authorization.k8s.io", "clusterrolebindings") => generate::<api::rbac::v1::ClusterRoleBinding>(),
        ("rbac.authorization.k8s.io", "roles") => generate::<api::rbac::v1::Role>(),
        ("rbac.authorization.k8s.io", "rolebindings") => generate::<api::rbac::v1::RoleBinding>(),
        ("apiextensions.k8s.io", "customresourcedefinitions") => generate::<CustomResourceDefinition>(),
        _ => None,
    }
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
        let builtin = if def.custom { None } else { builtin_schema(def) };
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
