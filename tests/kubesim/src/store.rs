//! The emulator's state: objects, resourceVersions, the watch history, field ownership, deletion
//! with finalizers and owner-reference garbage collection.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use base64::Engine;
use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::error::{ApiError, ApiResult, Cause, GroupResource};
use crate::fields::{self, FieldSet, ManagedEntry, Operation};
use crate::kinds::{self, Builtin};
use crate::registry::{self, ResourceDef};
use crate::selector::{FieldSelector, LabelSelector};
use crate::{events, patch, schema};

/// A stored object and who manages which of its fields.
#[derive(Clone, Debug)]
pub struct Entry {
    pub obj: Value,
    pub managers: Vec<ManagedEntry>,
}

impl Entry {
    /// The object as clients see it, with `metadata.managedFields`.
    pub fn rendered(&self) -> Value {
        let mut o = self.obj.clone();
        let mf = fields::render(&self.managers);
        if mf.as_array().is_some_and(|a| !a.is_empty()) {
            o["metadata"]["managedFields"] = mf;
        }
        o
    }
}

/// One change, as watchers receive it.
#[derive(Debug)]
pub struct WatchEvent {
    pub rv: u64,
    pub kind: &'static str,
    pub storage: GroupResource,
    pub namespace: String,
    pub obj: Value,
    /// For MODIFIED: the labels and fields before the change, so a watch with a selector can
    /// turn "stopped matching" into DELETED and "started matching" into ADDED.
    pub old: Option<Value>,
    /// The watch line for the stored representation, serialised once for all watchers.
    line: std::sync::OnceLock<bytes::Bytes>,
}

impl WatchEvent {
    pub fn new(rv: u64, kind: &'static str, storage: GroupResource, namespace: String, obj: Value) -> Self {
        Self { rv, kind, storage, namespace, obj, old: None, line: std::sync::OnceLock::new() }
    }

    /// `{"type": ..., "object": ...}` and a newline, for watchers that need no conversion.
    pub fn line(&self) -> bytes::Bytes {
        self.line
            .get_or_init(|| {
                let mut s = json!({"type": self.kind, "object": self.obj}).to_string();
                s.push('\n');
                bytes::Bytes::from(s)
            })
            .clone()
    }
}

/// Everything a request says about where and how it acts.
#[derive(Clone, Debug)]
pub struct Ctx {
    /// Shared with the registry: a request does not copy the (possibly large) schema.
    pub def: Arc<ResourceDef>,
    pub version: String,
    pub namespace: Option<String>,
    pub manager: String,
    pub field_validation: Option<String>,
    pub dry_run: bool,
}

#[derive(Clone, Debug, Default)]
pub struct ListOpts {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub limit: Option<usize>,
    pub continue_token: Option<String>,
    pub resource_version: Option<String>,
    pub resource_version_match: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub struct DeleteOpts {
    pub propagation: Option<String>,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

pub enum PatchKind {
    Merge,
    Json,
    Strategic,
    Apply { force: bool },
}

pub type Key = (String, String);

/// What a new watcher starts from: the backlog to replay and the live feed.
pub type WatchStart = (Vec<Arc<WatchEvent>>, broadcast::Receiver<Arc<WatchEvent>>);

/// A CEL rule, the path of the schema node declaring it and the node's type.
type RuleNode = (String, String, String);

pub struct State {
    pub defs: BTreeMap<GroupResource, Arc<ResourceDef>>,
    pub objects: BTreeMap<GroupResource, BTreeMap<Key, Entry>>,
    pub rv: u64,
    pub history: VecDeque<Arc<WatchEvent>>,
    /// Watches may resume from any resourceVersion at or above this one.
    pub compacted: u64,
    pub history_limit: usize,
    tx: broadcast::Sender<Arc<WatchEvent>>,
    /// Evaluates CRDs' `x-kubernetes-validations` (CEL) rules.
    cel: kube_cel::Validator,
    /// The CEL rules of each served custom resource version that has any, compiled once when
    /// the CRD is written rather than on every object write.
    cel_rules: std::collections::HashMap<(GroupResource, String), Arc<kube_cel::CompiledSchema>>,
    /// The Kubernetes minor version answered as ([`crate::Options::minor`]).
    pub minor: u32,
    /// Where each CEL rule of each served custom resource version is declared: the rule, the
    /// path of its schema node (`[*]` for items and map values) and the node's type.
    cel_nodes: std::collections::HashMap<(GroupResource, String), Vec<RuleNode>>,
    /// Where each uid lives, for owner lookups.
    uids: std::collections::HashMap<String, (GroupResource, Key)>,
    /// The objects whose ownerReferences name each uid, for garbage collection.
    dependents: std::collections::HashMap<String, std::collections::BTreeSet<(GroupResource, Key)>>,
}

fn owner_uids(obj: &Value) -> Vec<String> {
    obj["metadata"]["ownerReferences"]
        .as_array()
        .map(|refs| refs.iter().filter_map(|r| r["uid"].as_str().map(String::from)).collect())
        .unwrap_or_default()
}

pub fn now() -> String {
    let ts = jiff::Timestamp::now();
    jiff::Timestamp::from_second(ts.as_second()).unwrap_or(ts).to_string()
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj["metadata"][field].as_str().unwrap_or_default()
}

fn random_suffix() -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5).map(|_| CHARS[rng.random_range(0..CHARS.len())] as char).collect()
}

/// Whether two objects are equal but for the top-level fields `skip` (compared in place: every
/// write compares, and objects are large).
fn equal_except(a: &Value, b: &Value, skip: &[&str]) -> bool {
    match (a.as_object(), b.as_object()) {
        (Some(a), Some(b)) => {
            let kept = |(k, _): &(&String, &Value)| !skip.contains(&k.as_str());
            a.iter().filter(kept).eq(b.iter().filter(kept))
        }
        _ => a == b,
    }
}

/// Whether the spec (everything but metadata, and status where it is a subresource) differs.
fn spec_changed(old: &Value, new: &Value, with_status: bool) -> bool {
    let skip: &[&str] = if with_status { &["metadata", "status"] } else { &["metadata"] };
    !equal_except(old, new, skip)
}

/// Whether two versions are the same object but for resourceVersion and managedFields.
fn same_but_volatile(old: &Value, new: &Value) -> bool {
    equal_except(old, new, &["metadata"])
        && equal_except(&old["metadata"], &new["metadata"], &["resourceVersion", "managedFields"])
}

impl Ctx {
    /// A managedFields entry of this request's manager.
    fn managed_entry(&self, operation: Operation, subresource: &str, fields: FieldSet) -> ManagedEntry {
        ManagedEntry {
            manager: self.manager.clone(),
            operation,
            api_version: self.def.api_version(&self.version),
            subresource: subresource.into(),
            time: now(),
            fields,
        }
    }
}

impl State {
    pub fn new(history_limit: usize) -> (Self, broadcast::Sender<Arc<WatchEvent>>) {
        let (tx, _) = broadcast::channel(1 << 16);
        let mut s = Self {
            defs: BTreeMap::new(),
            objects: BTreeMap::new(),
            rv: 1,
            history: VecDeque::new(),
            compacted: 0,
            history_limit,
            tx: tx.clone(),
            cel: kube_cel::Validator::new(),
            cel_rules: Default::default(),
            minor: 34,
            cel_nodes: Default::default(),
            uids: Default::default(),
            dependents: Default::default(),
        };
        for def in registry::builtins() {
            s.defs.insert(def.gr(), Arc::new(def));
        }
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}});
        let namespaces = Builtin::Namespace.gr();
        let ctx =
            s.ctx_for(&namespaces.group, &namespaces.resource, None).map(|c| Ctx { manager: "kubesim".into(), ..c });
        if let Ok(ctx) = ctx {
            let _ = s.create(&ctx, ns);
        }
        (s, tx)
    }

    pub fn ctx_for(&self, group: &str, plural: &str, namespace: Option<String>) -> ApiResult<Ctx> {
        let def = self
            .defs
            .get(&GroupResource::new(group, plural))
            .cloned()
            .ok_or_else(|| ApiError::new(404, "NotFound", "the server could not find the requested resource"))?;
        let version = def.versions.iter().find(|v| v.storage).unwrap_or(&def.versions[0]).name.clone();
        Ok(Ctx { def, version, namespace, manager: "kubesim".into(), field_validation: None, dry_run: false })
    }

    fn key(ctx: &Ctx, name: &str) -> Key {
        (if ctx.def.namespaced { ctx.namespace.clone().unwrap_or_default() } else { String::new() }, name.to_string())
    }

    fn bucket(&self, ctx: &Ctx) -> Option<&BTreeMap<Key, Entry>> {
        self.objects.get(&ctx.def.storage)
    }

    /// How an object of `ctx`'s type and version looks to the client.
    pub fn present(ctx: &Ctx, obj: &Value) -> Value {
        if ctx.def.builtin == Some(Builtin::EventV1) {
            return events::from_core(obj);
        }
        let mut o = obj.clone();
        o["apiVersion"] = json!(ctx.def.api_version(&ctx.version));
        o
    }

    pub fn get(&self, ctx: &Ctx, name: &str) -> ApiResult<Value> {
        self.bucket(ctx)
            .and_then(|b| b.get(&Self::key(ctx, name)))
            .map(|e| Self::present(ctx, &e.rendered()))
            .ok_or_else(|| ApiError::not_found(&ctx.def.gr(), name))
    }

    pub fn list(&self, ctx: &Ctx, opts: &ListOpts) -> ApiResult<Value> {
        let rv = self.rv;
        if let (Some(m), Some(want)) = (opts.resource_version_match.as_deref(), opts.resource_version.as_deref()) {
            let want: u64 =
                want.parse().map_err(|_| ApiError::bad_request(format!("invalid resource version {want:?}")))?;
            if m == "Exact" && want != rv && want < self.compacted {
                return Err(ApiError::gone(format!("too old resource version: {want} ({})", self.compacted)));
            }
            if m == "NotOlderThan" && want > rv {
                return Err(ApiError::new(
                    504,
                    "Timeout",
                    format!("Too large resource version: {want}, current: {rv}"),
                ));
            }
        }
        let mut start: Option<Key> = None;
        if let Some(token) = &opts.continue_token {
            let invalid = |why: String| {
                ApiError::bad_request(format!("invalid continue token: continue key is not valid: {why}"))
            };
            let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).map_err(|e| {
                invalid(format!("illegal base64 data at input byte {}", crate::kinds::base64_offset(&e)))
            })?;
            let raw = serde_json::from_slice::<Value>(&bytes).map_err(|e| invalid(e.to_string()))?;
            if raw["rv"].as_u64().unwrap_or(0) < self.compacted {
                return Err(ApiError::gone(
                    "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                ));
            }
            start =
                Some((raw["ns"].as_str().unwrap_or_default().into(), raw["name"].as_str().unwrap_or_default().into()));
        }
        let mut items = vec![];
        let mut cont = None;
        let mut remaining = 0usize;
        if let Some(bucket) = self.bucket(ctx) {
            // A continued list starts after the last key it returned, not at the first.
            let from = match &start {
                Some(s) => std::ops::Bound::Excluded(s),
                None => std::ops::Bound::Unbounded,
            };
            let matching = bucket.range::<Key, _>((from, std::ops::Bound::Unbounded)).filter(|(k, e)| {
                (!ctx.def.namespaced || ctx.namespace.as_ref().is_none_or(|ns| &k.0 == ns))
                    && opts.labels.matches(&e.obj["metadata"]["labels"])
                    && opts.fields.matches(&e.obj)
            });
            for (k, e) in matching {
                if let Some(limit) = opts.limit.filter(|l| *l > 0)
                    && items.len() >= limit
                {
                    remaining += 1;
                    if cont.is_none() {
                        let last = items.last().map(|(k, _): &(Key, Value)| k.clone()).unwrap_or_default();
                        cont = Some(
                            base64::engine::general_purpose::URL_SAFE_NO_PAD
                                .encode(json!({"rv": rv, "ns": last.0, "name": last.1}).to_string()),
                        );
                    }
                    continue;
                }
                items.push((k.clone(), Self::present(ctx, &e.rendered())));
            }
        }
        let mut meta = json!({ "resourceVersion": rv.to_string() });
        if let Some(c) = cont {
            meta["continue"] = json!(c);
            meta["remainingItemCount"] = json!(remaining);
        }
        let mut list = json!({
            "kind": ctx.def.list_kind,
            "apiVersion": ctx.def.api_version(&ctx.version),
            "metadata": meta,
        });
        // Moved in, not through `json!`, which would serialise every item into a new Value.
        list["items"] = Value::Array(items.into_iter().map(|(_, v)| v).collect());
        Ok(list)
    }

    /// Registers a watcher: the events after `from` (or the current objects as ADDED when `from`
    /// is absent or "0") and a receiver for what comes next, taken under the same lock.
    pub fn watch(&self, ctx: &Ctx, from: Option<u64>) -> ApiResult<WatchStart> {
        let rx = self.tx.subscribe();
        let backlog = match from {
            Some(r) if r > 0 => {
                if r < self.compacted {
                    return Err(ApiError::gone(format!("too old resource version: {r} ({})", self.compacted)));
                }
                self.history.iter().filter(|e| e.rv > r && e.storage == ctx.def.storage).cloned().collect()
            }
            _ => self
                .bucket(ctx)
                .map(|b| {
                    b.iter()
                        .map(|((ns, _), e)| {
                            Arc::new(WatchEvent::new(
                                e.obj["metadata"]["resourceVersion"].as_str().and_then(|s| s.parse().ok()).unwrap_or(0),
                                "ADDED",
                                ctx.def.storage.clone(),
                                ns.clone(),
                                e.rendered(),
                            ))
                        })
                        .collect()
                })
                .unwrap_or_default(),
        };
        Ok((backlog, rx))
    }

    fn emit(&mut self, kind: &'static str, storage: &GroupResource, namespace: &str, obj: Value, old: Option<Value>) {
        let mut ev = WatchEvent::new(self.rv, kind, storage.clone(), namespace.to_string(), obj);
        ev.old = old;
        let ev = Arc::new(ev);
        self.history.push_back(ev.clone());
        while self.history.len() > self.history_limit {
            if let Some(old) = self.history.pop_front() {
                self.compacted = old.rv;
            }
        }
        let _ = self.tx.send(ev);
    }

    /// Forgets the watch history, as an etcd compaction does: every watcher that resumes from
    /// an older resourceVersion gets 410 Gone and must re-list.
    pub fn compact(&mut self) {
        self.rv += 1;
        self.compacted = self.rv;
        self.history.clear();
    }

    pub fn create(&mut self, ctx: &Ctx, mut body: Value) -> ApiResult<(Value, Vec<String>)> {
        if ctx.def.builtin == Some(Builtin::EventV1) {
            body = events::to_core(&body);
        }
        if !body.is_object() {
            return Err(ApiError::bad_request("the body of the request was not a JSON object"));
        }
        let gr = ctx.def.gr();
        let mut name = meta_str(&body, "name").to_string();
        if name.is_empty() {
            let prefix = meta_str(&body, "generateName");
            if prefix.is_empty() {
                return Err(ApiError::invalid(&ctx.def.kind, &ctx.def.group, "", &[Cause::required("metadata.name")]));
            }
            name = format!("{prefix}{}", random_suffix());
            body["metadata"]["name"] = json!(name);
        }
        self.check_namespace(ctx, &body)?;
        let key = Self::key(ctx, &name);
        if self.bucket(ctx).is_some_and(|b| b.contains_key(&key)) {
            return Err(ApiError::already_exists(&gr, &name));
        }
        let meta =
            body["metadata"].as_object_mut().ok_or_else(|| ApiError::bad_request("metadata must be an object"))?;
        for f in [
            "resourceVersion",
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "managedFields",
            "generation",
            "selfLink",
        ] {
            meta.remove(f);
        }
        if ctx.def.namespaced {
            meta.insert("namespace".into(), json!(key.0));
        } else {
            meta.remove("namespace");
        }
        meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        meta.insert("creationTimestamp".into(), json!(now()));
        if ctx.def.generation {
            meta.insert("generation".into(), json!(1));
        }
        let warnings = self.prepare(ctx, &mut body, None)?;
        let managed = fields::changed_fields(&json!({}), &body, Self::schema_of(ctx)).0;
        let managers = vec![ctx.managed_entry(Operation::Update, "", managed)];
        let out = self.commit(ctx, key, None, Entry { obj: body, managers })?;
        Ok((out, warnings))
    }

    fn check_namespace(&self, ctx: &Ctx, body: &Value) -> ApiResult<()> {
        if !ctx.def.namespaced {
            return Ok(());
        }
        let ns = ctx.namespace.clone().unwrap_or_default();
        let body_ns = meta_str(body, "namespace");
        if !body_ns.is_empty() && body_ns != ns {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let nsgr = Builtin::Namespace.gr();
        match self.objects.get(&nsgr).and_then(|b| b.get(&(String::new(), ns.clone()))) {
            None => Err(ApiError::not_found(&nsgr, &ns)),
            Some(n) if n.obj["metadata"]["deletionTimestamp"].is_string() => Err(ApiError::new(
                403,
                "Forbidden",
                format!("unable to create new content in namespace {ns} because it is being terminated"),
            )),
            Some(_) => Ok(()),
        }
    }

    fn schema_of(ctx: &Ctx) -> Option<&Value> {
        if !ctx.def.custom {
            return None;
        }
        ctx.def.version(&ctx.version).and_then(|v| v.schema.as_ref())
    }

    /// Validation, defaulting and kind-specific normalisation before a write.
    fn prepare(&self, ctx: &Ctx, body: &mut Value, old: Option<&Value>) -> ApiResult<Vec<String>> {
        if ctx.def.builtin == Some(Builtin::Secret) {
            crate::kinds::secret_decodes(body)?;
        }
        let name = meta_str(body, "name").to_string();
        let mut causes = vec![];
        let mut warnings = vec![];
        let name_ok = match ctx.def.builtin {
            Some(b) => b.name_is_valid(&name),
            None => kinds::valid_dns_subdomain(&name),
        };
        if !name_ok && old.is_none() {
            causes.push(Cause::invalid(
                "metadata.name",
                &json!(name),
                "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
            ));
        }
        body["kind"] = json!(ctx.def.kind);
        body["apiVersion"] = json!(if ctx.def.builtin == Some(Builtin::EventV1) {
            "v1".to_string()
        } else {
            ctx.def.api_version(&ctx.version)
        });
        for (field, what) in [("labels", "label"), ("annotations", "annotation")] {
            if let Some(m) = body["metadata"][field].as_object() {
                for (k, v) in m {
                    if !v.is_string() {
                        causes.push(Cause::invalid(
                            format!("metadata.{field}.{k}"),
                            v,
                            format!("{what} values must be strings"),
                        ));
                    }
                }
            }
        }
        if ctx.def.custom
            && let Some(schema) = Self::schema_of(ctx)
        {
            let (c, unknown) = schema::process(body, schema);
            let structural_ok = c.is_empty();
            causes.extend(c);
            let key = (ctx.def.gr(), ctx.version.clone());
            match self.cel_rules.get(&key) {
                Some(rules) if structural_ok => {
                    let nodes = self.cel_nodes.get(&key).map(Vec::as_slice).unwrap_or_default();
                    causes.extend(self.cel_causes(rules, nodes, body, old));
                }
                Some(_) => causes.push(Cause::new(
                    "FieldValueInvalid",
                    "<nil>",
                    "Invalid value: null: some validation rules were not checked because the object was invalid; correct the existing errors to complete validation",
                )),
                None => {}
            }
            match ctx.field_validation.as_deref() {
                Some("Strict") if !unknown.is_empty() => {
                    let list: Vec<String> =
                        unknown.iter().map(|u| format!("unknown field {:?}", u.trim_start_matches('.'))).collect();
                    return Err(ApiError::bad_request(format!("strict decoding error: {}", list.join(", "))));
                }
                Some("Ignore") => {}
                _ => warnings.extend(unknown.iter().map(|u| format!("unknown field {:?}", u.trim_start_matches('.')))),
            }
        }
        if let Some(b) = ctx.def.builtin {
            b.prepare(body, old, &mut causes);
        }
        if !causes.is_empty() {
            return Err(ApiError::invalid(&ctx.def.kind, &ctx.def.group, &name, &causes));
        }
        Ok(warnings)
    }

    /// Runs the schema's CEL rules, with the stored object as `oldSelf` for transition rules.
    /// Ratcheted like the API server (CRDValidationRatcheting, GA in 1.33): on an update, the rules
    /// of a top-level field that did not change are not run again (a status write does not
    /// re-validate the spec it left alone).
    /// A cause names the type of the schema node whose rule failed before 1.37, and no value
    /// from 1.37 on.
    fn cel_causes(
        &self,
        rules: &kube_cel::CompiledSchema,
        nodes: &[RuleNode],
        obj: &Value,
        old: Option<&Value>,
    ) -> Vec<Cause> {
        let rules_only_in_fields = rules.validations.is_empty()
            && rules.items.is_none()
            && rules.additional_properties.is_none()
            && rules.all_of.is_empty()
            && rules.one_of.is_empty()
            && rules.any_of.is_empty();
        let errors: Vec<(String, kube_cel::ValidationError)> = match old {
            Some(old) if rules_only_in_fields => rules
                .properties
                .iter()
                .filter(|(field, _)| obj.get(field.as_str()) != old.get(field.as_str()))
                .filter_map(|(field, sub)| {
                    let (now, before) = (obj.get(field.as_str())?, old.get(field.as_str()));
                    let errors = self.cel.validate_compiled(sub, now, before).err()?;
                    Some(errors.into_vec().into_iter().map(|e| (field.clone(), e)))
                })
                .flatten()
                .collect(),
            _ => match self.cel.validate_compiled(rules, obj, old) {
                Ok(()) => vec![],
                Err(errors) => errors.into_vec().into_iter().map(|e| (String::new(), e)).collect(),
            },
        };
        errors
            .into_iter()
            .map(|(under, e)| {
                let field = match (under.as_str(), e.field_path.chars().next()) {
                    ("", None) => "<root>".to_string(),
                    ("", Some(_)) => e.field_path.clone(),
                    (under, None) => under.to_string(),
                    (under, Some('.' | '[')) => format!("{under}{}", e.field_path),
                    (under, Some(_)) => format!("{under}.{}", e.field_path),
                };
                let reason = match e.reason.as_deref() {
                    Some("FieldValueRequired") => "FieldValueRequired",
                    Some("FieldValueForbidden") => "FieldValueForbidden",
                    Some("FieldValueDuplicate") => "FieldValueDuplicate",
                    _ => "FieldValueInvalid",
                };
                let kind = rule_type(nodes, &e.rule, &field);
                let message = match (self.minor >= 37, kind) {
                    // 1.37 quotes a scalar's value, and no value of an object or a list.
                    (true, "string" | "integer" | "number" | "boolean") => {
                        let value = value_at(obj, &field).unwrap_or(&Value::Null);
                        format!("Invalid value: {}: {}", crate::error::short_value(value), e.message)
                    }
                    (true, _) => format!("Invalid value: {}", e.message),
                    (false, kind) => format!("Invalid value: \"{kind}\": {}", e.message),
                };
                Cause::new(reason, field, message)
            })
            .collect()
    }

    /// Stores a new version of an object (or the first), unless nothing changed.
    fn commit(&mut self, ctx: &Ctx, key: Key, old: Option<&Entry>, mut entry: Entry) -> ApiResult<Value> {
        if let Some(old) = old {
            if ctx.def.generation {
                let with_status = ctx.def.has_status(&ctx.version);
                let generation = old.obj["metadata"]["generation"].as_i64().unwrap_or(1);
                let bumped = if spec_changed(&old.obj, &entry.obj, with_status) { generation + 1 } else { generation };
                entry.obj["metadata"]["generation"] = json!(bumped);
            }
            if same_but_volatile(&old.obj, &entry.obj) && old.managers == entry.managers {
                return Ok(Self::present(ctx, &old.rendered()));
            }
        }
        if ctx.dry_run {
            return Ok(Self::present(ctx, &entry.rendered()));
        }
        let finishing = entry.obj["metadata"]["deletionTimestamp"].is_string()
            && entry.obj["metadata"]["finalizers"].as_array().is_none_or(|f| f.is_empty());
        self.rv += 1;
        entry.obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        if ctx.def.builtin == Some(Builtin::CustomResourceDefinition)
            && let Ok(def) = registry::from_crd(&entry.obj)
        {
            self.register(def);
        }
        let rendered = entry.rendered();
        let presented = Self::present(ctx, &rendered);
        let storage = ctx.def.storage.clone();
        self.index(&storage, &key, old.map(|o| &o.obj), Some(&entry.obj));
        self.objects.entry(storage.clone()).or_default().insert(key.clone(), entry);
        let before = old.map(|o| o.obj.clone());
        self.emit(if before.is_some() { "MODIFIED" } else { "ADDED" }, &storage, &key.0, rendered, before);
        if finishing {
            self.remove(&storage, &key);
        } else if old.is_none() {
            self.collect_if_orphaned(&storage, &key);
        }
        Ok(presented)
    }

    fn entry(&self, ctx: &Ctx, name: &str) -> ApiResult<Entry> {
        self.bucket(ctx)
            .and_then(|b| b.get(&Self::key(ctx, name)))
            .cloned()
            .ok_or_else(|| ApiError::not_found(&ctx.def.gr(), name))
    }

    /// Carries the parts a write may not change over from the stored object.
    fn carry_over(ctx: &Ctx, old: &Value, new: &mut Value, subresource: bool) -> ApiResult<()> {
        let name = meta_str(old, "name").to_string();
        let new_name = meta_str(new, "name");
        if !new_name.is_empty() && new_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({new_name}) does not match the name on the URL ({name})"
            )));
        }
        if subresource {
            let status = new.get("status").cloned();
            *new = old.clone();
            match status {
                Some(s) => new["status"] = s,
                None => {
                    if let Some(m) = new.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
            return Ok(());
        }
        if ctx.def.has_status(&ctx.version) {
            match old.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    if let Some(m) = new.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
        }
        if !new["metadata"].is_object() {
            new["metadata"] = json!({});
        }
        for f in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
        ] {
            match old["metadata"].get(f) {
                Some(v) => new["metadata"][f] = v.clone(),
                None => {
                    if let Some(m) = new["metadata"].as_object_mut() {
                        m.remove(f);
                    }
                }
            }
        }
        if let Some(m) = new["metadata"].as_object_mut() {
            m.remove("managedFields");
        }
        Ok(())
    }

    fn record_update(
        ctx: &Ctx,
        managers: &mut Vec<ManagedEntry>,
        old: &Value,
        new: &Value,
        schema: Option<&Value>,
        subresource: bool,
    ) {
        let (changed, removed) = fields::changed_fields(old, new, schema);
        let sub = if subresource { "status" } else { "" };
        for m in managers.iter_mut() {
            // A map or list element gone from the object is no one's any more.
            m.fields.retain(|p| !changed.contains(p) && !removed.contains(p) && fields::get_at(new, p).is_some());
        }
        if changed.is_empty() {
            managers.retain(|m| !m.fields.is_empty());
            return;
        }
        match managers.iter_mut().find(|m| m.is(&ctx.manager, Operation::Update, sub)) {
            Some(m) => {
                m.fields.extend(changed);
                m.time = now();
            }
            None => managers.push(ctx.managed_entry(Operation::Update, sub, changed)),
        }
        managers.retain(|m| !m.fields.is_empty());
    }

    /// Managed fields a client wrote explicitly (kubectl's migration to server-side apply does);
    /// `None` when it sent none or the ones it read.
    fn sent_managers(old: &Entry, new: &Value) -> Option<Vec<ManagedEntry>> {
        let sent = new["metadata"].get("managedFields")?;
        let current = fields::render(&old.managers);
        (sent != &current).then(|| fields::parse(sent))
    }

    pub fn update(
        &mut self,
        ctx: &Ctx,
        name: &str,
        mut body: Value,
        subresource: bool,
    ) -> ApiResult<(Value, Vec<String>)> {
        if ctx.def.builtin == Some(Builtin::EventV1) {
            body = events::to_core(&body);
        }
        let old = self.entry(ctx, name)?;
        self.replace(ctx, name, &old, body, subresource)
    }

    /// The common end of update and patch: the optimistic-concurrency check, the parts a write
    /// may not change, validation, field ownership, and the commit.
    fn replace(
        &mut self,
        ctx: &Ctx,
        name: &str,
        old: &Entry,
        mut new: Value,
        subresource: bool,
    ) -> ApiResult<(Value, Vec<String>)> {
        let sent_rv = meta_str(&new, "resourceVersion").to_string();
        if !sent_rv.is_empty() && sent_rv != meta_str(&old.obj, "resourceVersion") {
            return Err(ApiError::stale(&ctx.def.gr(), name));
        }
        let sent_managers = Self::sent_managers(old, &new);
        Self::carry_over(ctx, &old.obj, &mut new, subresource)?;
        let warnings = self.prepare(ctx, &mut new, Some(&old.obj)).map_err(|e| relative_to_status(e, subresource))?;
        let mut managers = sent_managers.unwrap_or_else(|| old.managers.clone());
        Self::record_update(ctx, &mut managers, &old.obj, &new, Self::schema_of(ctx), subresource);
        let out = self.commit(ctx, Self::key(ctx, name), Some(old), Entry { obj: new, managers })?;
        Ok((out, warnings))
    }

    pub fn patch(
        &mut self,
        ctx: &Ctx,
        name: &str,
        kind: PatchKind,
        mut body: Value,
        subresource: bool,
    ) -> ApiResult<(Value, Vec<String>)> {
        let event_v1 = ctx.def.builtin == Some(Builtin::EventV1);
        let existing = self.bucket(ctx).and_then(|b| b.get(&Self::key(ctx, name))).cloned();
        if let PatchKind::Apply { force } = kind {
            if event_v1 {
                body = events::patch_to_core(&body);
                if let Some(m) = body.as_object_mut() {
                    m.remove("apiVersion");
                }
            }
            return self.apply(ctx, name, existing, body, force, subresource);
        }
        let old = existing.ok_or_else(|| ApiError::not_found(&ctx.def.gr(), name))?;
        let mut new = Self::present(ctx, &old.rendered());
        match kind {
            PatchKind::Merge => patch::merge_patch(&mut new, &body),
            PatchKind::Json => patch::json_patch(&mut new, body.clone())?,
            PatchKind::Strategic => {
                if ctx.def.custom {
                    return Err(ApiError::unsupported_media("application/strategic-merge-patch+json"));
                }
                patch::strategic_merge(&mut new, &body)
            }
            PatchKind::Apply { .. } => {}
        }
        // The patch was made against the events.k8s.io form; the object is kept in core form.
        if event_v1 {
            new = events::to_core(&new);
        }
        self.replace(ctx, name, &old, new, subresource)
    }

    /// Server-side apply: merges the applied configuration, checks it against the fields other
    /// managers own, and removes the fields this manager stopped applying.
    fn apply(
        &mut self,
        ctx: &Ctx,
        name: &str,
        existing: Option<Entry>,
        mut applied: Value,
        force: bool,
        subresource: bool,
    ) -> ApiResult<(Value, Vec<String>)> {
        if ctx.manager.is_empty() || ctx.manager == "kubesim" {
            return Err(ApiError::bad_request(
                "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
            ));
        }
        if applied["apiVersion"].as_str().is_none() || applied["kind"].as_str().is_none() {
            return Err(ApiError::bad_request("apply patches must set apiVersion and kind"));
        }
        if let Some(n) = applied["metadata"]["name"].as_str()
            && n != name
        {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({name})"
            )));
        }
        let has_status = ctx.def.has_status(&ctx.version);
        if let Some(m) = applied.as_object_mut() {
            if subresource {
                m.retain(|k, _| matches!(k.as_str(), "apiVersion" | "kind" | "metadata" | "status"));
                if let Some(meta) = m.get_mut("metadata").and_then(Value::as_object_mut) {
                    meta.retain(|k, _| k == "name" || k == "namespace");
                }
            } else if has_status {
                m.remove("status");
            }
        }
        let schema = Self::schema_of(ctx).cloned();
        let applied_fields = fields::fields_of(&applied, schema.as_ref());
        let sub = if subresource { "status" } else { "" };
        // A uid or resourceVersion in the applied configuration is a precondition, checked as the
        // API server checks it: a uid names an object that must exist (409 when none does) and
        // cannot change (422); a resourceVersion must be the current one (409). A create ignores
        // the resourceVersion.
        let sent_uid = meta_str(&applied, "uid").to_string();
        let sent_rv = meta_str(&applied, "resourceVersion").to_string();
        let Some(old) = existing else {
            if subresource {
                return Err(ApiError::not_found(&ctx.def.gr(), name));
            }
            if !sent_uid.is_empty() {
                return Err(ApiError::conflict(
                    &ctx.def.gr(),
                    name,
                    &format!(
                        "uid mismatch: the provided object specified uid {sent_uid}, and no existing object was found"
                    ),
                ));
            }
            let mut obj = applied.clone();
            obj["metadata"]["name"] = json!(name);
            let (created, warnings) = self.create(ctx, obj)?;
            let key = Self::key(ctx, name);
            if let Some(e) = self.objects.get_mut(&ctx.def.storage).and_then(|b| b.get_mut(&key)) {
                e.managers = vec![ctx.managed_entry(Operation::Apply, "", applied_fields)];
                return Ok((Self::present(ctx, &e.rendered()), warnings));
            }
            return Ok((created, warnings));
        };
        if !sent_rv.is_empty() && sent_rv != meta_str(&old.obj, "resourceVersion") {
            return Err(ApiError::stale(&ctx.def.gr(), name));
        }
        if !sent_uid.is_empty() && sent_uid != meta_str(&old.obj, "uid") {
            return Err(ApiError::invalid(
                &ctx.def.kind,
                &ctx.def.group,
                name,
                // Said twice up to 1.36, as those API servers do.
                &vec![
                    Cause::invalid("metadata.uid", &json!(sent_uid), "field is immutable");
                    if self.minor < 37 { 2 } else { 1 }
                ],
            ));
        }
        let mut managers = old.managers.clone();
        let live = Self::present(ctx, &old.obj);
        let mine = |m: &ManagedEntry| m.is(&ctx.manager, Operation::Apply, sub);
        let mut conflicts: Vec<(String, fields::FieldPath)> = vec![];
        for m in managers.iter().filter(|m| !mine(m)) {
            for p in m.fields.intersection(&applied_fields) {
                if fields::get_at(&live, p) != fields::get_at(&applied, p) {
                    conflicts.push((m.manager.clone(), p.clone()));
                }
            }
        }
        if !conflicts.is_empty() && !force {
            let causes: Vec<Value> = conflicts
                .iter()
                .map(|(m, p)| json!({"reason": "FieldManagerConflict", "message": format!("conflict with {m:?}"), "field": fields::display_path(p)}))
                .collect();
            let lines: Vec<String> =
                conflicts.iter().map(|(m, p)| format!("conflict with {m:?}: {}", fields::display_path(p))).collect();
            let msg = if lines.len() == 1 {
                format!("Apply failed with 1 conflict: {}", lines[0])
            } else {
                format!("Apply failed with {} conflicts: {}", lines.len(), lines.join("\n"))
            };
            let mut e = ApiError::new(409, "Conflict", msg);
            e.details = Some(json!({"causes": causes}));
            return Err(e);
        }
        let taken: FieldSet = conflicts.into_iter().map(|(_, p)| p).collect();
        let previous: FieldSet = managers.iter().find(|m| mine(m)).map(|m| m.fields.clone()).unwrap_or_default();
        let mut new = live.clone();
        let others: Vec<&ManagedEntry> = managers.iter().filter(|m| !mine(m)).collect();
        // A map or list that loses its last field with the removal goes too, unless someone
        // still sets something inside it (as the "." ownership of a struct works in FieldsV1).
        let kept = |prefix: &[String]| {
            applied_fields.iter().chain(others.iter().flat_map(|m| m.fields.iter())).any(|f| f.starts_with(prefix))
        };
        for p in previous.difference(&applied_fields) {
            if others.iter().any(|m| m.fields.contains(p)) {
                continue;
            }
            fields::remove_at(&mut new, p);
            for depth in (1..p.len()).rev() {
                let parent = &p[..depth];
                if !fields::is_hollow(&new, parent) || kept(parent) {
                    break;
                }
                fields::remove_at(&mut new, parent);
            }
        }
        fields::merge_applied(&mut new, &applied, schema.as_ref(), "");
        for m in managers.iter_mut() {
            m.fields.retain(|p| !taken.contains(p));
        }
        managers.retain(|m| !mine(m));
        managers.push(ctx.managed_entry(Operation::Apply, sub, applied_fields));
        managers.retain(|m| !m.fields.is_empty());
        Self::carry_over(ctx, &old.obj, &mut new, subresource)?;
        let warnings = self.prepare(ctx, &mut new, Some(&old.obj)).map_err(|e| relative_to_status(e, subresource))?;
        // A re-apply of the same configuration changes only the manager's timestamp: keep the old one.
        if same_but_volatile(&old.obj, &new) {
            let same_sets = managers.len() == old.managers.len()
                && managers.iter().all(|m| {
                    old.managers.iter().any(|o| {
                        o.manager == m.manager
                            && o.operation == m.operation
                            && o.subresource == m.subresource
                            && o.fields == m.fields
                    })
                });
            if same_sets {
                return Ok((Self::present(ctx, &old.rendered()), warnings));
            }
        }
        let out = self.commit(ctx, Self::key(ctx, name), Some(&old), Entry { obj: new, managers })?;
        Ok((out, warnings))
    }

    pub fn delete(&mut self, ctx: &Ctx, name: &str, opts: &DeleteOpts) -> ApiResult<Value> {
        let old = self.entry(ctx, name)?;
        if let Some(uid) = &opts.uid
            && uid != meta_str(&old.obj, "uid")
        {
            return Err(ApiError::conflict(
                &ctx.def.gr(),
                name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    meta_str(&old.obj, "uid")
                ),
            ));
        }
        if let Some(rv) = &opts.resource_version
            && rv != meta_str(&old.obj, "resourceVersion")
        {
            return Err(ApiError::stale(&ctx.def.gr(), name));
        }
        if ctx.dry_run {
            return Ok(Self::present(ctx, &old.rendered()));
        }
        let key = Self::key(ctx, name);
        let storage = ctx.def.storage.clone();
        let uid = meta_str(&old.obj, "uid").to_string();
        match opts.propagation.as_deref() {
            Some("Orphan") => self.orphan_dependents(&uid),
            Some("Foreground") => self.delete_dependents(&uid),
            _ => {}
        }
        let namespace = ctx.def.builtin == Some(Builtin::Namespace);
        if namespace {
            self.delete_namespace_contents(name);
        }
        let has_finalizers = old.obj["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty());
        let namespace_busy = namespace && self.namespace_has_content(name);
        if has_finalizers || namespace_busy {
            if old.obj["metadata"]["deletionTimestamp"].is_string() {
                return Ok(Self::present(ctx, &old.rendered()));
            }
            let mut obj = old.obj.clone();
            obj["metadata"]["deletionTimestamp"] = json!(now());
            obj["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            if namespace {
                obj["status"]["phase"] = json!("Terminating");
            }
            let managers = old.managers.clone();
            return self.commit(ctx, key, Some(&old), Entry { obj, managers });
        }
        let out = self.remove(&storage, &key);
        Ok(out.map(|o| Self::present(ctx, &o)).unwrap_or(Value::Null))
    }

    /// Removes an object for good, then lets the garbage collector act on its dependents.
    fn remove(&mut self, storage: &GroupResource, key: &Key) -> Option<Value> {
        let entry = self.objects.get_mut(storage)?.remove(key)?;
        self.index(storage, key, Some(&entry.obj), None);
        self.rv += 1;
        let mut obj = entry.rendered();
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.emit("DELETED", storage, &key.0, obj.clone(), None);
        let uid = meta_str(&obj, "uid").to_string();
        if *storage == Builtin::CustomResourceDefinition.gr() {
            self.unregister_crd(&obj);
        }
        self.collect_dependents(&uid);
        if !key.0.is_empty() {
            self.finish_namespace_if_empty(&key.0);
        }
        Some(obj)
    }

    /// Serves a custom resource type, compiling its CEL rules once.
    fn register(&mut self, def: ResourceDef) {
        let gr = def.gr();
        self.cel_rules.retain(|(g, _), _| *g != gr);
        self.cel_nodes.retain(|(g, _), _| *g != gr);
        for v in &def.versions {
            if let Some(schema) = v.schema.as_ref().filter(|s| s.to_string().contains("x-kubernetes-validations")) {
                self.cel_rules.insert((gr.clone(), v.name.clone()), Arc::new(kube_cel::compile_schema(schema)));
                let mut nodes = vec![];
                rule_nodes(schema, String::new(), &mut nodes);
                self.cel_nodes.insert((gr.clone(), v.name.clone()), nodes);
            }
        }
        self.defs.insert(gr, Arc::new(def));
    }

    /// A deleted CRD takes its custom objects with it and stops being served.
    fn unregister_crd(&mut self, crd: &Value) {
        let Ok(def) = registry::from_crd(crd) else {
            return;
        };
        let gr = def.gr();
        let keys: Vec<Key> = self.objects.get(&gr).map(|b| b.keys().cloned().collect()).unwrap_or_default();
        for key in keys {
            self.remove(&gr, &key);
        }
        self.defs.remove(&gr);
        self.cel_rules.retain(|(g, _), _| *g != gr);
    }

    /// Keeps the uid and owner indexes in step with a write (`new`) or a removal (no `new`).
    fn index(&mut self, gr: &GroupResource, key: &Key, old: Option<&Value>, new: Option<&Value>) {
        let place = (gr.clone(), key.clone());
        for owner in old.map(owner_uids).unwrap_or_default() {
            if let Some(set) = self.dependents.get_mut(&owner) {
                set.remove(&place);
                if set.is_empty() {
                    self.dependents.remove(&owner);
                }
            }
        }
        match new {
            Some(obj) => {
                self.uids.insert(meta_str(obj, "uid").to_string(), place.clone());
                for owner in owner_uids(obj) {
                    self.dependents.entry(owner).or_default().insert(place.clone());
                }
            }
            None => {
                if let Some(obj) = old {
                    self.uids.remove(meta_str(obj, "uid"));
                }
            }
        }
    }

    fn dependents_of(&self, uid: &str) -> Vec<(GroupResource, Key)> {
        self.dependents.get(uid).map(|set| set.iter().cloned().collect()).unwrap_or_default()
    }

    fn uid_exists(&self, uid: &str) -> bool {
        self.uids.contains_key(uid)
    }

    fn internal_ctx(&self, gr: &GroupResource, ns: &str) -> Option<Ctx> {
        self.ctx_for(&gr.group, &gr.resource, Some(ns.to_string()))
            .ok()
            .map(|c| Ctx { manager: "generic-garbage-collector".into(), ..c })
    }

    /// Background garbage collection: a dependent loses the reference to a deleted owner and is
    /// deleted when no owner is left.
    fn collect_dependents(&mut self, uid: &str) {
        for (gr, key) in self.dependents_of(uid) {
            let Some(entry) = self.objects.get(&gr).and_then(|b| b.get(&key)).cloned() else {
                continue;
            };
            let refs: Vec<Value> = entry.obj["metadata"]["ownerReferences"]
                .as_array()
                .map(|r| r.iter().filter(|r| r["uid"].as_str() != Some(uid)).cloned().collect())
                .unwrap_or_default();
            let alive = refs.iter().any(|r| r["uid"].as_str().is_some_and(|u| self.uid_exists(u)));
            let Some(ctx) = self.internal_ctx(&gr, &key.0) else {
                continue;
            };
            if alive {
                let mut obj = entry.obj.clone();
                obj["metadata"]["ownerReferences"] = Value::Array(refs);
                let _ = self.commit(&ctx, key.clone(), Some(&entry), Entry { obj, managers: entry.managers.clone() });
            } else {
                let _ = self.delete(&ctx, &key.1, &DeleteOpts::default());
            }
        }
    }

    fn collect_if_orphaned(&mut self, gr: &GroupResource, key: &Key) {
        let Some(entry) = self.objects.get(gr).and_then(|b| b.get(key)) else {
            return;
        };
        let Some(refs) = entry.obj["metadata"]["ownerReferences"].as_array() else {
            return;
        };
        if refs.is_empty() {
            return;
        }
        let dangling = refs.iter().all(|r| !r["uid"].as_str().is_some_and(|u| self.uid_exists(u)));
        if dangling && let Some(ctx) = self.internal_ctx(gr, &key.0) {
            let _ = self.delete(&ctx, &key.1, &DeleteOpts::default());
        }
    }

    fn orphan_dependents(&mut self, uid: &str) {
        for (gr, key) in self.dependents_of(uid) {
            let Some(entry) = self.objects.get(&gr).and_then(|b| b.get(&key)).cloned() else {
                continue;
            };
            let Some(ctx) = self.internal_ctx(&gr, &key.0) else {
                continue;
            };
            let mut obj = entry.obj.clone();
            if let Some(refs) = obj["metadata"]["ownerReferences"].as_array_mut() {
                refs.retain(|r| r["uid"].as_str() != Some(uid));
                if refs.is_empty()
                    && let Some(m) = obj["metadata"].as_object_mut()
                {
                    m.remove("ownerReferences");
                }
            }
            // The garbage collector's patch: whoever set the reference no longer owns it.
            let mut managers = entry.managers.clone();
            Self::record_update(&ctx, &mut managers, &entry.obj, &obj, Self::schema_of(&ctx), false);
            let _ = self.commit(&ctx, key, Some(&entry), Entry { obj, managers });
        }
    }

    fn delete_dependents(&mut self, uid: &str) {
        for (gr, key) in self.dependents_of(uid) {
            if let Some(ctx) = self.internal_ctx(&gr, &key.0) {
                let opts = DeleteOpts { propagation: Some("Foreground".into()), ..Default::default() };
                let _ = self.delete(&ctx, &key.1, &opts);
            }
        }
    }

    fn namespace_has_content(&self, ns: &str) -> bool {
        self.objects.values().any(|b| b.keys().any(|(n, _)| n == ns))
    }

    fn delete_namespace_contents(&mut self, ns: &str) {
        let keys: Vec<(GroupResource, Key)> = self
            .objects
            .iter()
            .flat_map(|(gr, b)| b.keys().filter(|(n, _)| n == ns).map(move |k| (gr.clone(), k.clone())))
            .collect();
        for (gr, key) in keys {
            if let Some(ctx) = self.internal_ctx(&gr, &key.0) {
                let _ = self.delete(&ctx, &key.1, &DeleteOpts::default());
            }
        }
    }

    fn finish_namespace_if_empty(&mut self, ns: &str) {
        let nsgr = Builtin::Namespace.gr();
        let key = (String::new(), ns.to_string());
        let terminating = self
            .objects
            .get(&nsgr)
            .and_then(|b| b.get(&key))
            .is_some_and(|e| e.obj["metadata"]["deletionTimestamp"].is_string());
        if terminating && !self.namespace_has_content(ns) {
            self.remove(&nsgr, &key);
        }
    }

    pub fn delete_collection(&mut self, ctx: &Ctx, list: &ListOpts, opts: &DeleteOpts) -> ApiResult<Value> {
        let names: Vec<String> = self
            .bucket(ctx)
            .map(|b| {
                b.iter()
                    .filter(|(k, e)| {
                        ctx.namespace.as_ref().is_none_or(|ns| !ctx.def.namespaced || &k.0 == ns)
                            && list.labels.matches(&e.obj["metadata"]["labels"])
                            && list.fields.matches(&e.obj)
                    })
                    .map(|(k, _)| k.1.clone())
                    .collect()
            })
            .unwrap_or_default();
        let mut items = vec![];
        for n in names {
            items.push(self.delete(ctx, &n, opts)?);
        }
        Ok(json!({
            "kind": ctx.def.list_kind,
            "apiVersion": ctx.def.api_version(&ctx.version),
            "metadata": {"resourceVersion": self.rv.to_string()},
            "items": items,
        }))
    }

    /// Counts stored objects, for the admin endpoint and benchmarks.
    pub fn object_count(&self) -> usize {
        self.objects.values().map(BTreeMap::len).sum()
    }

    pub fn served(&self) -> impl Iterator<Item = &ResourceDef> {
        self.defs.values().map(|d| &**d)
    }
}

/// Every CEL rule of a schema with the path of the node that declares it and the node's type.
fn rule_nodes(schema: &Value, path: String, out: &mut Vec<RuleNode>) {
    let kind = schema["type"].as_str().unwrap_or("object");
    for rule in schema["x-kubernetes-validations"].as_array().into_iter().flatten() {
        if let Some(r) = rule["rule"].as_str() {
            out.push((r.to_string(), path.clone(), kind.to_string()));
        }
    }
    for (name, child) in schema["properties"].as_object().into_iter().flatten() {
        let at = if path.is_empty() { name.clone() } else { format!("{path}.{name}") };
        rule_nodes(child, at, out);
    }
    for nested in ["items", "additionalProperties"] {
        if schema[nested].is_object() {
            rule_nodes(&schema[nested], format!("{path}[*]"), out);
        }
    }
}

/// The type of the schema node that declares `rule` and holds `field` (the deepest such node:
/// a rule's `fieldPath` may point below it); `object` when none is found.
fn rule_type<'a>(nodes: &'a [RuleNode], rule: &str, field: &str) -> &'a str {
    let mut normalized = String::with_capacity(field.len());
    let mut in_brackets = false;
    for c in field.chars() {
        match c {
            '[' => {
                in_brackets = true;
                normalized.push_str("[*");
            }
            ']' => {
                in_brackets = false;
                normalized.push(']');
            }
            _ if in_brackets => {}
            _ => normalized.push(c),
        }
    }
    let holds = |path: &str| {
        path.is_empty()
            || normalized == path
            || normalized.strip_prefix(path).is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
    };
    nodes
        .iter()
        .filter(|(r, path, _)| r == rule && holds(path))
        .max_by_key(|(_, path, _)| path.len())
        .map_or("object", |(_, _, kind)| kind.as_str())
}

/// The value at a field path as causes name it (`spec.items[0].name`, `spec.data[key]`).
fn value_at<'a>(obj: &'a Value, field: &str) -> Option<&'a Value> {
    let mut cur = obj;
    for part in field.split('.') {
        let (name, mut rest) = part.split_once('[').map_or((part, ""), |(n, r)| (n, r));
        if !name.is_empty() {
            cur = cur.get(name)?;
        }
        while let Some((inner, after)) = rest.split_once(']') {
            cur = match inner.parse::<usize>() {
                Ok(i) if cur.is_array() => cur.get(i)?,
                _ => cur.get(inner)?,
            };
            rest = after.strip_prefix('[').unwrap_or(after);
        }
    }
    Some(cur)
}

/// A status write's schema errors name their field from the status down, as the API server's
/// status validation does (`failedRenewalAttempts in body`, for `status.failedRenewalAttempts`).
fn relative_to_status(mut e: ApiError, subresource: bool) -> ApiError {
    if !subresource {
        return e;
    }
    // `Invalid value: "string": status.x in body must be ...`: the quoted value, then the path.
    let relative = |m: &str| m.replace("\": status.", "\": ");
    e.message = relative(&e.message);
    if let Some(causes) = e.details.as_mut().and_then(|d| d["causes"].as_array_mut()) {
        for c in causes {
            if let Some(m) = c["message"].as_str() {
                c["message"] = json!(relative(m));
            }
        }
    }
    e
}
