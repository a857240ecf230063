//! What resource types the emulator serves: the built-in kinds and the ones CRDs add.

use serde_json::{Value, json};

use crate::error::GroupResource;
use crate::kinds::Builtin;

/// A printer column, as in a CRD's `additionalPrinterColumns`.
#[derive(Clone, Debug)]
pub struct PrinterColumn {
    pub name: String,
    pub type_: String,
    pub format: String,
    pub description: String,
    pub priority: i64,
    pub json_path: String,
}

/// One served version of a resource.
#[derive(Clone, Debug)]
pub struct VersionDef {
    pub name: String,
    pub served: bool,
    pub storage: bool,
    pub schema: Option<Value>,
    pub columns: Vec<PrinterColumn>,
    pub status_subresource: bool,
}

/// A resource type: a group, its plural name and the versions it is served at.
#[derive(Clone, Debug)]
pub struct ResourceDef {
    pub group: String,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub list_kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub versions: Vec<VersionDef>,
    /// Whether `metadata.generation` is maintained (custom resources and workloads).
    pub generation: bool,
    /// Defined by a CustomResourceDefinition (validated against its schema, merge patch only).
    pub custom: bool,
    /// Where the objects are kept; `events.k8s.io` events live with `core/v1` events.
    pub storage: GroupResource,
    /// Which built-in kind this is; `None` for custom resources.
    pub builtin: Option<Builtin>,
}

impl ResourceDef {
    pub fn gr(&self) -> GroupResource {
        GroupResource::new(&self.group, &self.plural)
    }

    pub fn version(&self, v: &str) -> Option<&VersionDef> {
        self.versions.iter().find(|x| x.name == v && x.served)
    }

    pub fn api_version(&self, v: &str) -> String {
        if self.group.is_empty() { v.to_string() } else { format!("{}/{v}", self.group) }
    }

    pub fn has_status(&self, v: &str) -> bool {
        self.version(v).is_some_and(|x| x.status_subresource)
    }

    /// An entry of an `APIResourceList`.
    pub fn api_resources(&self, v: &str) -> Vec<Value> {
        let verbs = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];
        let mut main = json!({
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": verbs,
        });
        if !self.short_names.is_empty() {
            main["shortNames"] = json!(self.short_names);
        }
        if !self.categories.is_empty() {
            main["categories"] = json!(self.categories);
        }
        let mut out = vec![main];
        if self.has_status(v) {
            out.push(json!({
                "name": format!("{}/status", self.plural),
                "singularName": "",
                "namespaced": self.namespaced,
                "kind": self.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
        if self.group.is_empty() && self.plural == "serviceaccounts" {
            out.push(json!({
                "name": "serviceaccounts/token",
                "singularName": "",
                "namespaced": true,
                "group": "authentication.k8s.io",
                "version": "v1",
                "kind": "TokenRequest",
                "verbs": ["create"],
            }));
        }
        out
    }
}

/// The built-in resource types the emulator serves.
pub fn builtins() -> Vec<ResourceDef> {
    Builtin::ALL.iter().map(|b| b.def()).collect()
}

/// Reads a CustomResourceDefinition into the resource type it defines.
pub fn from_crd(crd: &Value) -> Result<ResourceDef, String> {
    let spec = &crd["spec"];
    let group = spec["group"].as_str().ok_or("spec.group is required")?;
    let names = &spec["names"];
    let plural = names["plural"].as_str().ok_or("spec.names.plural is required")?;
    let kind = names["kind"].as_str().ok_or("spec.names.kind is required")?;
    let expected = format!("{plural}.{group}");
    let name = crd["metadata"]["name"].as_str().unwrap_or_default();
    if name != expected {
        return Err(format!("metadata.name: Invalid value: {name:?}: must be spec.names.plural+\".\"+spec.group"));
    }
    let strings = |v: &Value| -> Vec<String> {
        v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect()).unwrap_or_default()
    };
    let mut versions = vec![];
    for v in spec["versions"].as_array().ok_or("spec.versions is required")? {
        let vname = v["name"].as_str().ok_or("spec.versions[].name is required")?;
        let columns = v["additionalPrinterColumns"]
            .as_array()
            .map(|cols| {
                cols.iter()
                    .map(|c| PrinterColumn {
                        name: c["name"].as_str().unwrap_or_default().to_string(),
                        type_: c["type"].as_str().unwrap_or("string").to_string(),
                        format: c["format"].as_str().unwrap_or_default().to_string(),
                        description: c["description"].as_str().unwrap_or_default().to_string(),
                        priority: c["priority"].as_i64().unwrap_or(0),
                        json_path: c["jsonPath"].as_str().unwrap_or_default().to_string(),
                    })
                    .collect()
            })
            .unwrap_or_else(|| {
                vec![PrinterColumn {
                    name: "Age".into(),
                    type_: "date".into(),
                    format: String::new(),
                    description: String::new(),
                    priority: 0,
                    json_path: ".metadata.creationTimestamp".into(),
                }]
            });
        versions.push(VersionDef {
            name: vname.to_string(),
            served: v["served"].as_bool().unwrap_or(true),
            storage: v["storage"].as_bool().unwrap_or(false),
            schema: v["schema"]["openAPIV3Schema"].as_object().map(|o| Value::Object(o.clone())),
            columns,
            status_subresource: v["subresources"]["status"].is_object(),
        });
    }
    if versions.is_empty() {
        return Err("spec.versions: Required value".into());
    }
    let namespaced = match spec["scope"].as_str() {
        Some("Namespaced") => true,
        Some("Cluster") => false,
        other => {
            return Err(format!(
                "spec.scope: Unsupported value: {other:?}: supported values: \"Cluster\", \"Namespaced\""
            ));
        }
    };
    Ok(ResourceDef {
        group: group.into(),
        plural: plural.into(),
        singular: names["singular"].as_str().map(String::from).unwrap_or_else(|| kind.to_lowercase()),
        kind: kind.into(),
        list_kind: names["listKind"].as_str().map(String::from).unwrap_or_else(|| format!("{kind}List")),
        namespaced,
        short_names: strings(&names["shortNames"]),
        categories: strings(&names["categories"]),
        versions,
        generation: true,
        custom: true,
        storage: GroupResource::new(group, plural),
        builtin: None,
    })
}
