//! The built-in kinds, and everything particular to each in one place: how it is registered
//! (scope, names, generation, storage), validated and defaulted before a write, described in
//! OpenAPI, and printed as a table row. The lifecycles that reach across objects (a namespace's
//! contents deleted with it, a CRD serving its resource and taking its objects with it) are keyed
//! by the same enum in the store.

use base64::Engine;
use serde_json::{Map, Value, json};

use crate::error::{Cause, GroupResource};
use crate::registry::{self, ResourceDef, VersionDef};
use crate::table::{age_of, column_defs};

/// A built-in resource type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Builtin {
    Namespace,
    Secret,
    ConfigMap,
    ServiceAccount,
    /// Pods are stored and served (no scheduling, no kubelet): what reads them can be tested.
    Pod,
    /// `core/v1` events.
    Event,
    /// `events.k8s.io/v1` events, stored with the `core/v1` ones and converted both ways.
    EventV1,
    Lease,
    ClusterRole,
    ClusterRoleBinding,
    Role,
    RoleBinding,
    Deployment,
    StatefulSet,
    DaemonSet,
    PodDisruptionBudget,
    /// Stored and served (nothing enforces them): the install's NetworkPolicy component applies.
    NetworkPolicy,
    /// Stored and served (no cluster IP is allocated): the monitoring component's Service applies.
    Service,
    CustomResourceDefinition,
}

/// How a built-in kind is registered.
struct Registration {
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
    short_names: &'static [&'static str],
    status: bool,
    generation: bool,
    categories: &'static [&'static str],
}

type SchemaParts = (Value, Map<String, Value>);
type Row = (Vec<Value>, Vec<Value>);

impl Builtin {
    pub const ALL: [Builtin; 19] = [
        Self::Namespace,
        Self::Secret,
        Self::ConfigMap,
        Self::ServiceAccount,
        Self::Pod,
        Self::Event,
        Self::EventV1,
        Self::Lease,
        Self::ClusterRole,
        Self::ClusterRoleBinding,
        Self::Role,
        Self::RoleBinding,
        Self::Deployment,
        Self::StatefulSet,
        Self::DaemonSet,
        Self::PodDisruptionBudget,
        Self::NetworkPolicy,
        Self::Service,
        Self::CustomResourceDefinition,
    ];

    /// The table: group, version, names, scope, subresources and generation of each kind.
    fn registration(self) -> Registration {
        let r = |group, plural, kind, namespaced, short_names: &'static [&'static str], status| Registration {
            group,
            version: "v1",
            plural,
            kind,
            namespaced,
            short_names,
            status,
            generation: false,
            categories: &[],
        };
        match self {
            Self::Namespace => r("", "namespaces", "Namespace", false, &["ns"], true),
            Self::Secret => r("", "secrets", "Secret", true, &[], false),
            Self::ConfigMap => r("", "configmaps", "ConfigMap", true, &["cm"], false),
            Self::ServiceAccount => r("", "serviceaccounts", "ServiceAccount", true, &["sa"], false),
            Self::Pod => Registration { categories: &["all"], ..r("", "pods", "Pod", true, &["po"], true) },
            Self::Event => r("", "events", "Event", true, &["ev"], false),
            Self::EventV1 => r("events.k8s.io", "events", "Event", true, &["ev"], false),
            Self::Lease => r("coordination.k8s.io", "leases", "Lease", true, &[], false),
            Self::ClusterRole => r("rbac.authorization.k8s.io", "clusterroles", "ClusterRole", false, &[], false),
            Self::ClusterRoleBinding => {
                r("rbac.authorization.k8s.io", "clusterrolebindings", "ClusterRoleBinding", false, &[], false)
            }
            Self::Role => r("rbac.authorization.k8s.io", "roles", "Role", true, &[], false),
            Self::RoleBinding => r("rbac.authorization.k8s.io", "rolebindings", "RoleBinding", true, &[], false),
            Self::Deployment => Registration {
                generation: true,
                categories: &["all"],
                ..r("apps", "deployments", "Deployment", true, &["deploy"], true)
            },
            Self::StatefulSet => Registration {
                generation: true,
                categories: &["all"],
                ..r("apps", "statefulsets", "StatefulSet", true, &["sts"], true)
            },
            Self::DaemonSet => Registration {
                generation: true,
                categories: &["all"],
                ..r("apps", "daemonsets", "DaemonSet", true, &["ds"], true)
            },
            Self::PodDisruptionBudget => Registration {
                generation: true,
                ..r("policy", "poddisruptionbudgets", "PodDisruptionBudget", true, &["pdb"], true)
            },
            Self::Service => {
                Registration { categories: &["all"], ..r("", "services", "Service", true, &["svc"], true) }
            }
            Self::NetworkPolicy => Registration {
                generation: true,
                ..r("networking.k8s.io", "networkpolicies", "NetworkPolicy", true, &["netpol"], false)
            },
            Self::CustomResourceDefinition => Registration {
                generation: true,
                ..r(
                    "apiextensions.k8s.io",
                    "customresourcedefinitions",
                    "CustomResourceDefinition",
                    false,
                    &["crd", "crds"],
                    true,
                )
            },
        }
    }

    /// The group and resource.
    pub fn gr(self) -> GroupResource {
        let r = self.registration();
        GroupResource::new(r.group, r.plural)
    }

    /// The resource type as the registry serves it.
    pub fn def(self) -> ResourceDef {
        let r = self.registration();
        let storage = match self {
            Self::EventV1 => GroupResource::new("", "events"),
            _ => GroupResource::new(r.group, r.plural),
        };
        ResourceDef {
            group: r.group.into(),
            plural: r.plural.into(),
            singular: r.kind.to_lowercase(),
            kind: r.kind.into(),
            list_kind: format!("{}List", r.kind),
            namespaced: r.namespaced,
            short_names: r.short_names.iter().map(|s| s.to_string()).collect(),
            categories: r.categories.iter().map(|s| s.to_string()).collect(),
            versions: vec![VersionDef {
                name: r.version.into(),
                served: true,
                storage: true,
                schema: None,
                columns: vec![],
                status_subresource: r.status,
            }],
            generation: r.generation,
            custom: false,
            storage,
            builtin: Some(self),
        }
    }

    /// Whether `name` is a valid name for an object of this kind.
    pub fn name_is_valid(self, name: &str) -> bool {
        match self {
            // Checked against the group and plural when the CRD is read.
            Self::CustomResourceDefinition => !name.is_empty(),
            _ => valid_dns_subdomain(name),
        }
    }

    /// The OpenAPI v3 schema k8s-openapi's type generates, and the definitions it refers to.
    pub fn schema(self) -> Option<SchemaParts> {
        use k8s_openapi::api;
        use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
        fn generate<T: schemars::JsonSchema>() -> Option<SchemaParts> {
            let generator = schemars::generate::SchemaSettings::openapi3().into_generator();
            let mut root = serde_json::to_value(generator.into_root_schema_for::<T>()).ok()?;
            let map = root.as_object_mut()?;
            map.remove("$schema");
            let components = map.remove("components").and_then(|mut c| c.get_mut("schemas").map(Value::take));
            let defs = components.and_then(|c| c.as_object().cloned()).unwrap_or_default();
            Some((root, defs))
        }
        match self {
            Self::Namespace => generate::<api::core::v1::Namespace>(),
            Self::Secret => generate::<api::core::v1::Secret>(),
            Self::ConfigMap => generate::<api::core::v1::ConfigMap>(),
            Self::ServiceAccount => generate::<api::core::v1::ServiceAccount>(),
            Self::Pod => generate::<api::core::v1::Pod>(),
            Self::Event => generate::<api::core::v1::Event>(),
            Self::EventV1 => generate::<api::events::v1::Event>(),
            Self::Lease => generate::<api::coordination::v1::Lease>(),
            Self::Deployment => generate::<api::apps::v1::Deployment>(),
            Self::PodDisruptionBudget => generate::<api::policy::v1::PodDisruptionBudget>(),
            Self::NetworkPolicy => generate::<api::networking::v1::NetworkPolicy>(),
            Self::Service => generate::<api::core::v1::Service>(),
            Self::StatefulSet => generate::<api::apps::v1::StatefulSet>(),
            Self::DaemonSet => generate::<api::apps::v1::DaemonSet>(),
            Self::ClusterRole => generate::<api::rbac::v1::ClusterRole>(),
            Self::ClusterRoleBinding => generate::<api::rbac::v1::ClusterRoleBinding>(),
            Self::Role => generate::<api::rbac::v1::Role>(),
            Self::RoleBinding => generate::<api::rbac::v1::RoleBinding>(),
            Self::CustomResourceDefinition => generate::<CustomResourceDefinition>(),
        }
    }

    /// The columns and cells `kubectl get` shows for an object of this kind; `None` for the
    /// default (name and age).
    pub fn row(self, o: &Value) -> Option<Row> {
        let name = json!(o["metadata"]["name"]);
        let age = age_of(&o["metadata"]["creationTimestamp"]);
        let count = |v: &Value| v.as_object().map_or(0, |m| m.len()) as i64;
        Some(match self {
            Self::Secret => (
                column_defs(&[
                    ("Name", "string", ""),
                    ("Type", "string", ""),
                    ("Data", "string", ""),
                    ("Age", "string", ""),
                ]),
                vec![name, o["type"].clone(), json!(count(&o["data"])), age],
            ),
            Self::ConfigMap => (
                column_defs(&[("Name", "string", ""), ("Data", "string", ""), ("Age", "string", "")]),
                vec![name, json!(count(&o["data"]) + count(&o["binaryData"])), age],
            ),
            Self::Namespace => (
                column_defs(&[("Name", "string", ""), ("Status", "string", ""), ("Age", "string", "")]),
                vec![name, o["status"]["phase"].clone(), age],
            ),
            Self::Event | Self::EventV1 => {
                let last = [&o["lastTimestamp"], &o["eventTime"], &o["metadata"]["creationTimestamp"]]
                    .into_iter()
                    .find(|v| v.is_string())
                    .map(age_of)
                    .unwrap_or(json!("<unknown>"));
                let inv = &o["involvedObject"];
                let object = format!(
                    "{}/{}",
                    inv["kind"].as_str().unwrap_or("").to_lowercase(),
                    inv["name"].as_str().unwrap_or("")
                );
                (
                    column_defs(&[
                        ("Last Seen", "string", ""),
                        ("Type", "string", ""),
                        ("Reason", "string", ""),
                        ("Object", "string", ""),
                        ("Message", "string", ""),
                    ]),
                    vec![last, o["type"].clone(), o["reason"].clone(), json!(object), o["message"].clone()],
                )
            }
            Self::Lease => (
                column_defs(&[("Name", "string", ""), ("Holder", "string", ""), ("Age", "string", "")]),
                vec![name, o["spec"]["holderIdentity"].clone(), age],
            ),
            Self::Deployment => {
                let s = &o["status"];
                let n = |v: &Value| v.as_i64().unwrap_or(0);
                (
                    column_defs(&[
                        ("Name", "string", ""),
                        ("Ready", "string", ""),
                        ("Up-to-date", "integer", ""),
                        ("Available", "integer", ""),
                        ("Age", "string", ""),
                    ]),
                    vec![
                        name,
                        json!(format!("{}/{}", n(&s["readyReplicas"]), o["spec"]["replicas"].as_i64().unwrap_or(1))),
                        json!(n(&s["updatedReplicas"])),
                        json!(n(&s["availableReplicas"])),
                        age,
                    ],
                )
            }
            _ => return None,
        })
    }

    /// Kind-specific validation and defaulting before a write; `old` is the stored object of an
    /// update. Problems are added to `causes`.
    pub fn prepare(self, body: &mut Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
        match self {
            Self::Secret => prepare_secret(body, old, causes),
            Self::Namespace if body["status"]["phase"].is_null() => body["status"] = json!({"phase": "Active"}),
            Self::CustomResourceDefinition => match registry::from_crd(body) {
                Err(e) => causes.push(Cause::new("FieldValueInvalid", "spec", e)),
                Ok(def) => {
                    untyped_rule_fields(body, causes);
                    body["status"] = crd_status(&def);
                }
            },
            _ => {}
        }
    }
}

/// Whether `name` is a lowercase RFC 1123 subdomain, as object names must be.
pub(crate) fn valid_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|part| {
            !part.is_empty()
                && part.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

/// A served CRD's status: names accepted, established, its storage versions.
/// CEL rules that name a field the schema gives no type (`x-kubernetes-preserve-unknown-fields`
/// alone): the API server leaves such a field out of the CEL type of the object, so the rule
/// fails to compile and the CRD is refused, with the rule's position of the first such field.
/// (Other compile errors are not looked for.)
fn untyped_rule_fields(crd: &Value, causes: &mut Vec<Cause>) {
    let versions = crd["spec"]["versions"].as_array().cloned().unwrap_or_default();
    let schemas: Vec<&Value> = versions.iter().map(|v| &v["schema"]["openAPIV3Schema"]).collect();
    // The API server names one schema shared by every version `spec.validation`.
    let shared = schemas.windows(2).all(|w| w[0] == w[1]);
    for (i, schema) in schemas.iter().enumerate() {
        let path = if shared {
            "spec.validation.openAPIV3Schema".to_string()
        } else {
            format!("spec.versions[{i}].schema.openAPIV3Schema")
        };
        untyped_in(schema, &path, causes);
        if shared {
            break;
        }
    }
}

fn untyped_in(node: &Value, path: &str, causes: &mut Vec<Cause>) {
    for (j, rule) in node["x-kubernetes-validations"].as_array().into_iter().flatten().enumerate() {
        let text = rule["rule"].as_str().unwrap_or_default();
        let untyped = |node: &Value, field: &str| {
            node["properties"][field].as_object().is_some_and(|p| {
                !p.contains_key("type")
                    && p.get("x-kubernetes-int-or-string").and_then(Value::as_bool) != Some(true)
                    && p.get("x-kubernetes-embedded-resource").and_then(Value::as_bool) != Some(true)
            })
        };
        // The first field of a chain that the schema gives no type (the fields under it are not
        // known to CEL at all).
        let first_untyped = self_fields(text).into_iter().find_map(|chain| {
            let mut schema = node;
            for (at, field) in chain {
                if untyped(schema, &field) {
                    return Some((at, field));
                }
                schema = &schema["properties"][field.as_str()];
                if !schema.is_object() {
                    return None;
                }
            }
            None
        });
        if let Some((at, field)) = first_untyped {
            let quoted = |k: &str| rule.get(k).and_then(Value::as_str).map_or(Value::Null, |v| json!(v));
            let value = format!(
                "{{\"Rule\":{},\"Message\":{},\"MessageExpression\":{},\"Reason\":{},\"FieldPath\":{},\"OptionalOldSelf\":{}}}",
                json!(text),
                json!(rule["message"].as_str().unwrap_or_default()),
                json!(rule["messageExpression"].as_str().unwrap_or_default()),
                quoted("reason"),
                json!(rule["fieldPath"].as_str().unwrap_or_default()),
                rule.get("optionalOldSelf").cloned().unwrap_or(Value::Null),
            );
            causes.push(Cause::new(
                "FieldValueInvalid",
                format!("{path}.x-kubernetes-validations[{j}].rule"),
                format!(
                    "Invalid value: {value}: compilation failed: ERROR: <input>:1:{}: undefined field '{field}'\n | {text}\n | {}^",
                    at + 1,
                    ".".repeat(at)
                ),
            ));
        }
    }
    for (name, child) in node["properties"].as_object().into_iter().flatten() {
        untyped_in(child, &format!("{path}.properties[{name}]"), causes);
    }
    if node["items"].is_object() {
        untyped_in(&node["items"], &format!("{path}.items"), causes);
    }
    if node["additionalProperties"].is_object() {
        untyped_in(&node["additionalProperties"], &format!("{path}.additionalProperties"), causes);
    }
}

/// The chains of fields a rule selects from `self` (`self.a.b` gives `["a", "b"]`), outside
/// string literals, each field with the position CEL reports for it: the `(` of `has(...)` for
/// the last field of a `has` test, else the `.` before the field.
fn self_fields(rule: &str) -> Vec<Vec<(usize, String)>> {
    let bytes = rule.as_bytes();
    let mut chains = vec![];
    let mut quote: Option<u8> = None;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match quote {
            Some(_) if b == b'\\' => {
                i += 2;
                continue;
            }
            Some(q) if b == q => quote = None,
            Some(_) => {}
            None if b == b'\'' || b == b'"' => quote = Some(b),
            None if rule[i..].starts_with("self.") => {
                let preceded =
                    i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_' || bytes[i - 1] == b'.');
                if !preceded {
                    let in_has = rule[..i].ends_with("has(");
                    let mut chain = vec![];
                    let mut at = i + 4;
                    while at < bytes.len() && bytes[at] == b'.' {
                        let field: String =
                            rule[at + 1..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                        if field.is_empty() {
                            break;
                        }
                        chain.push((at, field.clone()));
                        at += 1 + field.len();
                    }
                    if in_has
                        && rule[at..].starts_with(')')
                        && let Some(last) = chain.last_mut()
                    {
                        last.0 = i - 1;
                    }
                    i = at;
                    chains.push(chain);
                    continue;
                }
            }
            None => {}
        }
        i += 1;
    }
    chains
}

fn crd_status(def: &ResourceDef) -> Value {
    let now = crate::store::now();
    json!({
        "acceptedNames": {"plural": def.plural, "singular": def.singular, "kind": def.kind, "listKind": def.list_kind, "shortNames": def.short_names, "categories": def.categories},
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now}
        ],
        "storedVersions": def.versions.iter().filter(|v| v.storage).map(|v| v.name.clone()).collect::<Vec<_>>(),
    })
}

/// `stringData` folded into `data`, base64 and key syntax checked, `Opaque` by default, and
/// `type` (and `data` of an immutable Secret) unchangeable.
fn prepare_secret(body: &mut Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    if let Some(Value::Object(sd)) = body.as_object_mut().and_then(|m| m.remove("stringData")) {
        let data = body["data"].as_object().cloned().unwrap_or_default();
        let mut data = Value::Object(data);
        for (k, v) in sd {
            data[k] = json!(base64::engine::general_purpose::STANDARD.encode(v.as_str().unwrap_or_default()));
        }
        body["data"] = data;
    }
    if let Some(data) = body["data"].as_object() {
        for k in data.keys() {
            let key_ok =
                !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
            if !key_ok {
                causes.push(Cause::invalid(
                    format!("data[{k}]"),
                    &json!(k),
                    "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')",
                ));
            }
        }
    }
    if body["type"].is_null() {
        body["type"] = json!("Opaque");
    }
    // ValidateSecretUpdate: what cannot change first, then the Secret as it would be.
    if let Some(old) = old {
        if old["type"] != body["type"] {
            causes.push(Cause::invalid("type", &body["type"], "field is immutable"));
        }
        if old["immutable"].as_bool() == Some(true)
            && (old["data"] != body["data"] || body["immutable"] != old["immutable"])
        {
            causes.push(Cause::new(
                "FieldValueForbidden",
                "data",
                "Forbidden: field is immutable when `immutable` is set",
            ));
        }
    }
    check_secret_type(body, causes);
}

/// Where Go's decoder stops on bad base64 (`illegal base64 data at input byte N`).
pub fn base64_offset(e: &base64::DecodeError) -> usize {
    match e {
        base64::DecodeError::InvalidByte(i, _) | base64::DecodeError::InvalidLastSymbol(i, _) => *i,
        base64::DecodeError::InvalidLength(n) => n.saturating_sub(1),
        base64::DecodeError::InvalidPadding => 0,
    }
}

/// A Secret's data values are base64: anything else cannot be decoded into a Secret at all
/// (400, before any validation).
pub fn secret_decodes(body: &Value) -> Result<(), crate::error::ApiError> {
    for v in body["data"].as_object().into_iter().flatten().map(|(_, v)| v) {
        if let Some(Err(e)) = v.as_str().map(|s| base64::engine::general_purpose::STANDARD.decode(s)) {
            return Err(crate::error::ApiError::bad_request(format!(
                "Secret in version \"v1\" cannot be handled as a Secret: illegal base64 data at input byte {}",
                base64_offset(&e)
            )));
        }
    }
    Ok(())
}

/// The most data a Secret may hold (the values' decoded bytes), as the API server counts it.
const MAX_SECRET_SIZE: usize = 1 << 20;

/// The rules of `ValidateSecret` in Kubernetes (pkg/apis/core/validation): the total size of
/// the data and what each built-in type requires, with the API server's messages.
fn check_secret_type(body: &Value, causes: &mut Vec<Cause>) {
    let data = body["data"].as_object();
    let decoded = |k: &str| {
        data.and_then(|d| d.get(k))
            .and_then(Value::as_str)
            .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
    };
    let has = |k: &str| data.is_some_and(|d| d.contains_key(k));
    let total: usize = data
        .into_iter()
        .flatten()
        .filter_map(|(_, v)| v.as_str().and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok()))
        .map(|v| v.len())
        .sum();
    if total > MAX_SECRET_SIZE {
        causes.push(Cause::new(
            "FieldValueTooLong",
            "data",
            format!("Too long: may not be more than {MAX_SECRET_SIZE} bytes"),
        ));
    }
    let json_key = |key: &str, causes: &mut Vec<Cause>| match decoded(key) {
        None if !has(key) => causes.push(Cause::required(format!("data[{key}]"))),
        value => {
            if serde_json::from_slice::<Value>(&value.unwrap_or_default()).is_err() {
                causes.push(Cause::new(
                    "FieldValueInvalid",
                    format!("data[{key}]"),
                    "Invalid value: \"<secret contents redacted>\": invalid JSON",
                ));
            }
        }
    };
    let account = body["metadata"]["annotations"]["kubernetes.io/service-account.name"].as_str().unwrap_or_default();
    match body["type"].as_str().unwrap_or_default() {
        "kubernetes.io/service-account-token" if account.is_empty() => {
            causes.push(Cause::required("metadata.annotations[kubernetes.io/service-account.name]"));
        }
        "kubernetes.io/dockercfg" => json_key(".dockercfg", causes),
        "kubernetes.io/dockerconfigjson" => json_key(".dockerconfigjson", causes),
        "kubernetes.io/basic-auth" if !has("username") && !has("password") => {
            causes.push(Cause::required("data[username]"));
            causes.push(Cause::required("data[password]"));
        }
        "kubernetes.io/ssh-auth" if decoded("ssh-privatekey").is_none_or(|v| v.is_empty()) => {
            causes.push(Cause::required("data[ssh-privatekey]"));
        }
        "kubernetes.io/tls" => {
            for key in ["tls.crt", "tls.key"] {
                if !has(key) {
                    causes.push(Cause::required(format!("data[{key}]")));
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_registers_and_describes_itself() {
        for b in Builtin::ALL {
            let def = b.def();
            assert_eq!(def.builtin, Some(b));
            assert!(b.schema().is_some(), "{b:?} has an OpenAPI schema");
        }
        assert_eq!(Builtin::EventV1.def().storage, GroupResource::new("", "events"));
        assert!(Builtin::Deployment.def().generation && !Builtin::Secret.def().generation);
    }

    #[test]
    fn secrets_are_defaulted_and_checked() {
        let mut causes = vec![];
        let mut s = json!({"stringData": {"a": "b"}});
        Builtin::Secret.prepare(&mut s, None, &mut causes);
        assert_eq!(s, json!({"data": {"a": "Yg=="}, "type": "Opaque"}));
        let mut changed = json!({"data": {}, "type": "kubernetes.io/tls"});
        Builtin::Secret.prepare(&mut changed, Some(&s), &mut causes);
        assert!(
            causes.iter().any(|c| c.field == "type" && c.message.contains("field is immutable")),
            "the type is immutable"
        );
        assert!(Builtin::Secret.name_is_valid("a.b-c") && !Builtin::Secret.name_is_valid("A"));
    }

    #[test]
    fn secret_types_are_checked_as_the_api_server_checks_them() {
        let causes_of = |secret: Value| {
            let mut secret = secret;
            let mut causes = vec![];
            Builtin::Secret.prepare(&mut secret, None, &mut causes);
            causes.into_iter().map(|c| format!("{}: {}", c.field, c.message)).collect::<Vec<_>>()
        };
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        assert_eq!(
            causes_of(json!({"type": "kubernetes.io/dockerconfigjson", "data": {}})),
            ["data[.dockerconfigjson]: Required value"]
        );
        assert_eq!(
            causes_of(
                json!({"type": "kubernetes.io/dockerconfigjson", "data": {".dockerconfigjson": b64("not json")}})
            ),
            ["data[.dockerconfigjson]: Invalid value: \"<secret contents redacted>\": invalid JSON"]
        );
        assert!(
            causes_of(json!({"type": "kubernetes.io/dockerconfigjson", "data": {".dockerconfigjson": b64("{}")}}))
                .is_empty()
        );
        assert_eq!(
            causes_of(json!({"type": "kubernetes.io/tls", "data": {"tls.crt": ""}})),
            ["data[tls.key]: Required value"]
        );
        assert_eq!(causes_of(json!({"type": "kubernetes.io/basic-auth", "data": {}})).len(), 2);
        assert!(causes_of(json!({"type": "kubernetes.io/basic-auth", "data": {"password": ""}})).is_empty());
        assert_eq!(
            causes_of(json!({"type": "kubernetes.io/ssh-auth", "data": {"ssh-privatekey": ""}})),
            ["data[ssh-privatekey]: Required value"]
        );
        assert_eq!(
            causes_of(json!({"type": "kubernetes.io/service-account-token"})),
            ["metadata.annotations[kubernetes.io/service-account.name]: Required value"]
        );
        let big = json!({"data": {"a": b64(&"x".repeat(600_000)), "b": b64(&"y".repeat(600_000))}});
        assert_eq!(causes_of(big), ["data: Too long: may not be more than 1048576 bytes"]);
    }
}
