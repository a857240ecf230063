//! The HTTP front: path routing, discovery, verbs, watch streaming and the admin endpoints.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State as AxState};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use crate::error::{ApiError, ApiResult};
use crate::faults::{Failure, Faults, Latency, RequestInfo};
use crate::registry::ResourceDef;
use crate::selector::{FieldSelector, LabelSelector};
use crate::store::{Ctx, DeleteOpts, ListOpts, PatchKind, State, WatchEvent};
use crate::{openapi, table};

/// What every handler shares.
pub struct Shared {
    pub state: Mutex<State>,
    pub faults: Faults,
    pub bookmark_interval: Duration,
    pub issuer: crate::tokens::Issuer,
    /// The Kubernetes minor version answered as.
    pub minor: u32,
}

impl Shared {
    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new().fallback(handle).with_state(shared)
}

type Params = HashMap<String, String>;

fn json_response(code: StatusCode, v: &Value) -> Response {
    (code, [(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}

fn ok(v: &Value) -> Response {
    json_response(StatusCode::OK, v)
}

fn with_warnings(mut resp: Response, warnings: &[String]) -> Response {
    for w in warnings {
        if let Ok(v) = HeaderValue::from_str(&format!("299 - {w:?}")) {
            resp.headers_mut().append(header::WARNING, v);
        }
    }
    resp
}

async fn handle(
    AxState(shared): AxState<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Query(params): Query<Params>,
    body: Bytes,
) -> Response {
    let path = uri.path().trim_matches('/').to_string();
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let minor = shared.minor;
    let result = match segs.as_slice() {
        ["version"] => Ok(ok(&json!({
            "major": "1", "minor": minor.to_string(),
            "gitVersion": format!("v1.{minor}.0-kubesim"), "gitCommit": "kubesim",
            "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24",
            "compiler": "gc", "platform": "linux/amd64"
        }))),
        ["healthz"] | ["readyz"] | ["livez"] => Ok((StatusCode::OK, "ok").into_response()),
        ["api"] => Ok(ok(&json!({"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}))),
        ["apis"] => Ok(ok(&group_list(&shared))),
        ["api", "v1"] => Ok(ok(&resource_list(&shared, "", "v1"))),
        ["apis", g] => group(&shared, g),
        ["apis", g, v] => {
            let list = resource_list(&shared, g, v);
            if list["resources"].as_array().is_some_and(|r| r.is_empty()) {
                Err(ApiError::new(404, "NotFound", "the server could not find the requested resource"))
            } else {
                Ok(ok(&list))
            }
        }
        // An empty OpenAPI v2 document (the protobuf encoding of nothing): old kubectl versions
        // read v2 before anything else and go on to use v3 or plain requests.
        ["openapi", "v2"] => Ok((
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/com.github.proto-openapi.spec.v2.v1.0+protobuf")],
            Vec::<u8>::new(),
        )
            .into_response()),
        ["openapi", "v3"] => Ok(ok(&openapi_index(&shared))),
        ["openapi", "v3", "api", v] => Ok(ok(&openapi_doc(&shared, "", v))),
        ["openapi", "v3", "apis", g, v] => Ok(ok(&openapi_doc(&shared, g, v))),
        [".well-known", "openid-configuration"] => Ok(ok(&shared.issuer.discovery())),
        ["openid", "v1", "jwks"] => Ok(ok(&shared.issuer.jwks())),
        ["kubesim", rest @ ..] => admin(&shared, &method, rest, &body),
        ["apis", AUTHENTICATION, "v1", "tokenreviews"] => {
            logged(&shared, token_review(&shared, method, &headers, body)).await
        }
        ["api", "v1", rest @ ..] => {
            logged(&shared, resource(&shared, "", "v1", rest, method, &headers, &params, body)).await
        }
        ["apis", g, v, rest @ ..] => {
            logged(&shared, resource(&shared, g, v, rest, method, &headers, &params, body)).await
        }
        _ => Err(ApiError::new(404, "NotFound", "the server could not find the requested resource")),
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

/// Runs a resource request and logs its answer (requests that never name a resource are not
/// logged).
async fn logged(
    shared: &Shared,
    request: impl std::future::Future<Output = (Option<RequestInfo>, ApiResult<Response>)>,
) -> ApiResult<Response> {
    let (info, result) = request.await;
    if let Some(info) = info {
        let code = match &result {
            Ok(r) => r.status().as_u16(),
            Err(e) => e.code,
        };
        shared.faults.record(&info, code);
    }
    result
}

fn served_versions(shared: &Shared) -> Vec<(String, String, Vec<ResourceDef>)> {
    let st = shared.state();
    let mut out: Vec<(String, String, Vec<ResourceDef>)> = vec![];
    for def in st.served() {
        for v in def.versions.iter().filter(|v| v.served) {
            match out.iter_mut().find(|(g, ver, _)| *g == def.group && *ver == v.name) {
                Some(e) => e.2.push(def.clone()),
                None => out.push((def.group.clone(), v.name.clone(), vec![def.clone()])),
            }
        }
    }
    out
}

/// The group of TokenReview (and of TokenRequest, served as `serviceaccounts/token`).
const AUTHENTICATION: &str = "authentication.k8s.io";

fn group_list(shared: &Shared) -> Value {
    let mut groups: Vec<(String, Vec<String>)> = vec![(AUTHENTICATION.into(), vec!["v1".into()])];
    for (g, v, _) in served_versions(shared) {
        if g.is_empty() {
            continue;
        }
        match groups.iter_mut().find(|(name, _)| *name == g) {
            Some(e) => e.1.push(v),
            None => groups.push((g, vec![v])),
        }
    }
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|(g, vs)| {
            let versions: Vec<Value> =
                vs.iter().map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v})).collect();
            json!({"name": g, "versions": versions, "preferredVersion": versions[0]})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

fn group(shared: &Shared, g: &str) -> ApiResult<Response> {
    let list = group_list(shared);
    list["groups"]
        .as_array()
        .and_then(|gs| gs.iter().find(|x| x["name"] == g))
        .map(|x| {
            let mut x = x.clone();
            x["kind"] = json!("APIGroup");
            x["apiVersion"] = json!("v1");
            ok(&x)
        })
        .ok_or_else(|| ApiError::new(404, "NotFound", "the server could not find the requested resource"))
}

fn resource_list(shared: &Shared, g: &str, v: &str) -> Value {
    let mut resources: Vec<Value> = served_versions(shared)
        .into_iter()
        .filter(|(group, ver, _)| group == g && ver == v)
        .flat_map(|(_, _, defs)| defs.into_iter().flat_map(|d| d.api_resources(v)))
        .collect();
    if g == AUTHENTICATION && v == "v1" {
        resources.push(json!({"name": "tokenreviews", "singularName": "", "namespaced": false,
            "kind": "TokenReview", "verbs": ["create"]}));
    }
    let gv = if g.is_empty() { v.to_string() } else { format!("{g}/{v}") };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})
}

fn openapi_index(shared: &Shared) -> Value {
    let gvs: Vec<(String, String)> = served_versions(shared).into_iter().map(|(g, v, _)| (g, v)).collect();
    let rv = shared.state().rv;
    openapi::index(&gvs, rv)
}

fn openapi_doc(shared: &Shared, g: &str, v: &str) -> Value {
    let all = served_versions(shared);
    let defs: Vec<&ResourceDef> =
        all.iter().filter(|(gg, vv, _)| gg == g && vv == v).flat_map(|(_, _, d)| d.iter()).collect();
    openapi::document(&defs, g, v)
}

fn admin(shared: &Shared, method: &Method, rest: &[&str], body: &Bytes) -> ApiResult<Response> {
    let bad = |e: serde_json::Error| ApiError::bad_request(e.to_string());
    let faults = &shared.faults;
    match (method.as_str(), rest) {
        ("POST", ["end-watches"]) => faults.end_watches(),
        ("POST", ["compact"]) => shared.state().compact(),
        ("POST", ["pause"]) => faults.pause(),
        ("POST", ["resume"]) => faults.resume(),
        ("POST", ["fail"]) => {
            let f: Failure = serde_json::from_slice(body).map_err(bad)?;
            faults.fail_next(f.matcher, f.count, f.code, f.retry_after_seconds);
        }
        ("POST", ["latency"]) => {
            let l: Latency = serde_json::from_slice(body).map_err(bad)?;
            faults.add_latency(l.matcher, Duration::from_millis(l.millis));
        }
        ("DELETE", ["faults"]) => faults.clear(),
        ("GET", ["counts"]) => return Ok(ok(&json!(faults.counts()))),
        ("DELETE", ["counts"]) => faults.reset_counts(),
        ("GET", ["requests"]) => return Ok(ok(&json!(faults.requests()))),
        ("DELETE", ["requests"]) => faults.clear_requests(),
        _ => return Err(ApiError::new(404, "NotFound", "unknown kubesim admin path")),
    }
    Ok(ok(&json!({"status": "ok"})))
}

struct Target<'a> {
    plural: &'a str,
    namespace: Option<String>,
    name: Option<&'a str>,
    subresource: Option<&'a str>,
}

fn parse_target<'a>(shared: &Shared, group: &str, rest: &[&'a str]) -> ApiResult<Target<'a>> {
    let namespaced_path = rest.len() >= 3
        && rest[0] == "namespaces"
        && shared.state().defs.get(&crate::error::GroupResource::new(group, rest[2])).is_some_and(|d| d.namespaced);
    let (namespace, rest) = if namespaced_path { (Some(rest[1].to_string()), &rest[2..]) } else { (None, rest) };
    match rest {
        [plural] => Ok(Target { plural, namespace, name: None, subresource: None }),
        [plural, name] => Ok(Target { plural, namespace, name: Some(name), subresource: None }),
        [plural, name, sub] => Ok(Target { plural, namespace, name: Some(name), subresource: Some(sub) }),
        _ => Err(ApiError::new(404, "NotFound", "the server could not find the requested resource")),
    }
}

fn flag(params: &Params, name: &str) -> bool {
    params.get(name).is_some_and(|v| v == "true" || v == "1")
}

fn manager_of(params: &Params, headers: &HeaderMap) -> String {
    if let Some(m) = params.get("fieldManager").filter(|m| !m.is_empty()) {
        return m.clone();
    }
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .and_then(|ua| ua.split('/').next())
        .filter(|s| !s.is_empty())
        .unwrap_or("unknown")
        .to_string()
}

fn parse_body(body: &Bytes, yaml: bool) -> ApiResult<Value> {
    if body.starts_with(crate::proto::MAGIC) {
        return crate::proto::decode(body);
    }
    if yaml {
        let text = std::str::from_utf8(body).map_err(|e| ApiError::bad_request(e.to_string()))?;
        if let Ok(v) = serde_json::from_str(text) {
            return Ok(v);
        }
        return serde_saphyr::from_str::<Value>(text)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("couldn't decode the request body as JSON: {e}")))
}

/// The API server selects on a kind's own few fields only: `metadata.name`, `metadata.namespace`
/// and the kind's field labels.
fn supported_fields(def: &ResourceDef, opts: &ListOpts) -> ApiResult<()> {
    use crate::kinds::Builtin;
    let extra: &[&str] = match def.builtin {
        Some(Builtin::Secret) => &["type"],
        Some(Builtin::Namespace) => &["status.phase"],
        Some(Builtin::Event) => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        Some(Builtin::EventV1) => &[
            "regarding.kind",
            "regarding.namespace",
            "regarding.name",
            "regarding.uid",
            "regarding.apiVersion",
            "regarding.resourceVersion",
            "regarding.fieldPath",
            "reason",
            "reportingController",
            "type",
        ],
        Some(Builtin::Pod) => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.podIPs",
            "status.nominatedNodeName",
        ],
        _ => &[],
    };
    match opts.fields.paths().find(|p| !matches!(*p, "metadata.name" | "metadata.namespace") && !extra.contains(p)) {
        Some(p) => Err(ApiError::bad_request(format!("field label not supported: {p}"))),
        None => Ok(()),
    }
}

fn list_opts(params: &Params) -> ApiResult<ListOpts> {
    Ok(ListOpts {
        labels: LabelSelector::parse(params.get("labelSelector").map(String::as_str).unwrap_or(""))?,
        fields: FieldSelector::parse(params.get("fieldSelector").map(String::as_str).unwrap_or(""))?,
        limit: params.get("limit").and_then(|l| l.parse().ok()),
        continue_token: params.get("continue").filter(|c| !c.is_empty()).cloned(),
        resource_version: params.get("resourceVersion").filter(|c| !c.is_empty()).cloned(),
        resource_version_match: params.get("resourceVersionMatch").filter(|c| !c.is_empty()).cloned(),
    })
}

/// A request on a resource, with what it was (once that is known) for the request log.
#[allow(clippy::too_many_arguments)]
async fn resource(
    shared: &Arc<Shared>,
    group: &str,
    version: &str,
    rest: &[&str],
    method: Method,
    headers: &HeaderMap,
    params: &Params,
    body: Bytes,
) -> (Option<RequestInfo>, ApiResult<Response>) {
    let mut seen = None;
    let result = serve_resource(shared, (group, version, rest), method, headers, params, body, &mut seen).await;
    (seen, result)
}

async fn serve_resource(
    shared: &Arc<Shared>,
    (group, version, rest): (&str, &str, &[&str]),
    method: Method,
    headers: &HeaderMap,
    params: &Params,
    body: Bytes,
    seen: &mut Option<RequestInfo>,
) -> ApiResult<Response> {
    let target = parse_target(shared, group, rest)?;
    let mut ctx = shared.state().ctx_for(group, target.plural, target.namespace.clone())?;
    if ctx.def.version(version).is_none() {
        return Err(ApiError::new(404, "NotFound", "the server could not find the requested resource"));
    }
    ctx.version = version.to_string();
    ctx.manager = manager_of(params, headers);
    ctx.field_validation = params.get("fieldValidation").cloned();
    ctx.dry_run = params.get("dryRun").is_some_and(|d| d == "All");
    if !ctx.def.namespaced && target.namespace.is_some() {
        return Err(ApiError::new(404, "NotFound", "the server could not find the requested resource"));
    }
    let status_sub = match target.subresource {
        None => false,
        Some("status") if ctx.def.has_status(version) => true,
        Some("token") if group.is_empty() && target.plural == "serviceaccounts" && method == Method::POST => {
            return token_request(shared, &ctx, &target, headers, body, seen).await;
        }
        Some(_) => {
            return Err(ApiError::new(404, "NotFound", "the server could not find the requested resource"));
        }
    };
    let is_watch = flag(params, "watch");
    let verb = match (&method, target.name) {
        (&Method::GET, Some(_)) => "get",
        (&Method::GET, None) if is_watch => "watch",
        (&Method::GET, None) => "list",
        (&Method::POST, None) => "create",
        (&Method::PUT, Some(_)) => "update",
        (&Method::PATCH, Some(_)) => "patch",
        (&Method::DELETE, Some(_)) => "delete",
        (&Method::DELETE, None) => "deletecollection",
        _ => {
            return Err(ApiError::method_not_allowed(
                "the server does not allow this method on the requested resource".to_string(),
            ));
        }
    };
    let info = RequestInfo {
        verb: verb.into(),
        resource: match target.subresource {
            Some(s) => format!("{}/{s}", target.plural),
            None => target.plural.to_string(),
        },
        namespace: target.namespace.clone().unwrap_or_default(),
        name: target.name.unwrap_or_default().to_string(),
        user_agent: headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string(),
    };
    *seen = Some(info.clone());
    shared.faults.admit(&info).await?;
    if ctx.def.namespaced && target.namespace.is_none() && !matches!(verb, "list" | "watch") {
        return Err(ApiError::new(404, "NotFound", "the server could not find the requested resource"));
    }
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("application/json");
    let name = target.name.unwrap_or_default();
    let include = params.get("includeObject").map(String::as_str).unwrap_or("Metadata").to_string();
    let meta_only = wants_metadata(&accept);
    match verb {
        "get" => {
            let obj = shared.state().get(&ctx, name)?;
            if meta_only {
                return Ok(ok(&partial(&obj)));
            }
            if table::wants_table(&accept) {
                return Ok(ok(&table::render(
                    &ctx.def,
                    version,
                    std::slice::from_ref(&obj),
                    json!({"resourceVersion": obj["metadata"]["resourceVersion"]}),
                    &include,
                )));
            }
            Ok(ok(&obj))
        }
        "list" => {
            let opts = list_opts(params)?;
            supported_fields(&ctx.def, &opts)?;
            let list = shared.state().list(&ctx, &opts)?;
            if meta_only {
                let items: Vec<Value> =
                    list["items"].as_array().map(|a| a.iter().map(partial).collect()).unwrap_or_default();
                let mut partial_list = json!({
                    "kind": "PartialObjectMetadataList",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": list["metadata"],
                });
                // Moved in, not through `json!`, which would serialise every item again.
                partial_list["items"] = Value::Array(items);
                return Ok(ok(&partial_list));
            }
            if table::wants_table(&accept) {
                let items = list["items"].as_array().cloned().unwrap_or_default();
                return Ok(ok(&table::render(&ctx.def, version, &items, list["metadata"].clone(), &include)));
            }
            let mut list = list;
            // A built-in kind's list is typed: its items carry no apiVersion and kind (a custom
            // resource's do).
            if !ctx.def.custom
                && let Some(items) = list["items"].as_array_mut()
            {
                for item in items.iter_mut().filter_map(Value::as_object_mut) {
                    item.remove("apiVersion");
                    item.remove("kind");
                }
            }
            Ok(ok(&list))
        }
        "watch" => {
            let render = if meta_only {
                Render::Metadata
            } else if table::wants_table(&accept) {
                Render::Table(include)
            } else {
                Render::Full
            };
            watch(shared, ctx, params, render)
        }
        "create" => {
            let obj = parse_body(&body, false)?;
            let (out, warnings) = shared.state().create(&ctx, obj)?;
            Ok(with_warnings(json_response(StatusCode::CREATED, &out), &warnings))
        }
        "update" => {
            let obj = parse_body(&body, false)?;
            let (out, warnings) = shared.state().update(&ctx, name, obj, status_sub)?;
            Ok(with_warnings(ok(&out), &warnings))
        }
        "patch" => {
            let media = content_type.split(';').next().unwrap_or("").trim();
            let kind = match media {
                "application/merge-patch+json" => PatchKind::Merge,
                "application/json-patch+json" => PatchKind::Json,
                "application/strategic-merge-patch+json" => PatchKind::Strategic,
                "application/apply-patch+yaml" => PatchKind::Apply { force: flag(params, "force") },
                other => return Err(ApiError::unsupported_media(other)),
            };
            let is_apply = matches!(kind, PatchKind::Apply { .. });
            if is_apply && params.get("fieldManager").is_none_or(|m| m.is_empty()) {
                let cause = crate::error::Cause::new(
                    "FieldValueRequired",
                    "fieldManager",
                    "Required value: is required for apply patch",
                );
                return Err(ApiError::invalid("PatchOptions", "meta.k8s.io", "", &[cause]));
            }
            let obj = parse_body(&body, is_apply)?;
            // Whether the apply created the object is decided under the same lock as the write.
            let (existed, (out, warnings)) = {
                let mut state = shared.state();
                (state.get(&ctx, name).is_ok(), state.patch(&ctx, name, kind, obj, status_sub)?)
            };
            let code = if is_apply && !existed { StatusCode::CREATED } else { StatusCode::OK };
            Ok(with_warnings(json_response(code, &out), &warnings))
        }
        "delete" => {
            let opts = delete_opts(params, &body)?;
            let mut out = shared.state().delete(&ctx, name, &opts)?;
            // Orphan and Foreground deletions wait for the garbage collector behind a finalizer:
            // the object comes back marked, though kubesim's collector has already done its work.
            let finalizer = match opts.propagation.as_deref() {
                Some("Orphan") => Some("orphan"),
                Some("Foreground") => Some("foregroundDeletion"),
                _ => None,
            };
            if let Some(f) = finalizer.filter(|_| out["metadata"]["deletionTimestamp"].is_null() && out.is_object()) {
                out["metadata"]["deletionTimestamp"] = json!(crate::store::now());
                out["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                out["metadata"]["finalizers"] = json!([f]);
            }
            // Most built-in kinds answer an immediate deletion with a Status; custom resources,
            // Pods, Namespaces and CRDs, and anything still held by finalizers, with the object.
            let returns_object = ctx.def.custom
                || matches!(
                    ctx.def.builtin,
                    Some(
                        crate::kinds::Builtin::Pod
                            | crate::kinds::Builtin::Namespace
                            | crate::kinds::Builtin::CustomResourceDefinition
                    )
                )
                || out["metadata"]["deletionTimestamp"].is_string();
            if returns_object {
                return Ok(ok(&out));
            }
            let mut details = json!({"name": name, "kind": ctx.def.plural, "uid": out["metadata"]["uid"]});
            if !ctx.def.group.is_empty() {
                details["group"] = json!(ctx.def.group);
            }
            Ok(ok(&json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details
            })))
        }
        "deletecollection" => {
            let opts = delete_opts(params, &body)?;
            let out = shared.state().delete_collection(&ctx, &list_opts(params)?, &opts)?;
            Ok(ok(&out))
        }
        _ => Err(ApiError::method_not_allowed("unsupported verb")),
    }
}

/// `create serviceaccounts/token`: a signed token for an existing ServiceAccount.
async fn token_request(
    shared: &Shared,
    ctx: &Ctx,
    target: &Target<'_>,
    headers: &HeaderMap,
    body: Bytes,
    seen: &mut Option<RequestInfo>,
) -> ApiResult<Response> {
    let name = target.name.unwrap_or_default();
    let info = RequestInfo {
        verb: "create".into(),
        resource: "serviceaccounts/token".into(),
        namespace: target.namespace.clone().unwrap_or_default(),
        name: name.to_string(),
        user_agent: headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string(),
    };
    *seen = Some(info.clone());
    shared.faults.admit(&info).await?;
    let sa = shared.state().get(ctx, name)?;
    let out = shared.issuer.token_request(&sa, &parse_body(&body, false)?, &ctx.manager)?;
    Ok(json_response(StatusCode::CREATED, &out))
}

/// `create tokenreviews`: whether the API server accepts a token (see
/// [`crate::tokens::Issuer::token_review`]).
async fn token_review(
    shared: &Shared,
    method: Method,
    headers: &HeaderMap,
    body: Bytes,
) -> (Option<RequestInfo>, ApiResult<Response>) {
    let info = RequestInfo {
        verb: "create".into(),
        resource: "tokenreviews".into(),
        user_agent: headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string(),
        ..Default::default()
    };
    let result = async {
        if method != Method::POST {
            return Err(ApiError::method_not_allowed(
                "the server does not allow this method on the requested resource",
            ));
        }
        shared.faults.admit(&info).await?;
        let account = |ns: &str, name: &str| {
            let state = shared.state();
            let ctx = state.ctx_for("", "serviceaccounts", Some(ns.to_string())).ok()?;
            let sa = state.get(&ctx, name).ok()?;
            sa["metadata"]["uid"].as_str().map(String::from)
        };
        let out = shared.issuer.token_review(&parse_body(&body, false)?, account)?;
        Ok(json_response(StatusCode::CREATED, &out))
    }
    .await;
    (Some(info), result)
}

fn delete_opts(params: &Params, body: &Bytes) -> ApiResult<DeleteOpts> {
    let mut opts = DeleteOpts { propagation: params.get("propagationPolicy").cloned(), ..Default::default() };
    if !body.is_empty() {
        let v = parse_body(body, false)?;
        if let Some(p) = v["propagationPolicy"].as_str() {
            opts.propagation = Some(p.into());
        }
        if v["orphanDependents"].as_bool() == Some(true) {
            opts.propagation = Some("Orphan".into());
        }
        opts.uid = v["preconditions"]["uid"].as_str().map(String::from);
        opts.resource_version = v["preconditions"]["resourceVersion"].as_str().map(String::from);
    }
    Ok(opts)
}

fn event_line(kind: &str, obj: &Value) -> Bytes {
    let mut s = json!({"type": kind, "object": obj}).to_string();
    s.push('\n');
    Bytes::from(s)
}

/// How watch events show objects.
enum Render {
    Full,
    Metadata,
    Table(String),
}

fn wants_metadata(accept: &str) -> bool {
    accept.split(',').next().is_some_and(|first| first.contains("as=PartialObjectMetadata"))
}

/// An object as `PartialObjectMetadata`: its identity and metadata only.
fn partial(obj: &Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]})
}

struct WatchFilter {
    ctx: Ctx,
    opts: ListOpts,
    render: Render,
}

impl WatchFilter {
    fn line(&self, ev: &WatchEvent) -> Option<Bytes> {
        if ev.storage != self.ctx.def.storage {
            return None;
        }
        if self.ctx.def.namespaced && self.ctx.namespace.as_ref().is_some_and(|ns| *ns != ev.namespace) {
            return None;
        }
        let matches = |o: &Value| self.opts.labels.matches(&o["metadata"]["labels"]) && self.opts.fields.matches(o);
        let now = matches(&ev.obj);
        let before = ev.old.as_ref().map(matches);
        // As the real server does for filtered watches: leaving the selection is a DELETED,
        // entering it an ADDED.
        let kind = match (ev.kind, before, now) {
            ("MODIFIED", Some(true), false) => "DELETED",
            ("MODIFIED", Some(false), true) => "ADDED",
            (_, _, false) => return None,
            (k, _, true) => k,
        };
        let as_stored = self.ctx.def.builtin != Some(crate::kinds::Builtin::EventV1)
            && ev.obj["apiVersion"].as_str() == Some(self.ctx.def.api_version(&self.ctx.version).as_str());
        if matches!(self.render, Render::Full) && as_stored && kind == ev.kind {
            return Some(ev.line());
        }
        let obj = State::present(&self.ctx, &ev.obj);
        Some(match &self.render {
            Render::Table(include) => event_line(
                kind,
                &table::render(
                    &self.ctx.def,
                    &self.ctx.version,
                    std::slice::from_ref(&obj),
                    json!({"resourceVersion": ev.rv.to_string()}),
                    include,
                ),
            ),
            Render::Metadata => event_line(kind, &partial(&obj)),
            Render::Full => event_line(kind, &obj),
        })
    }

    fn bookmark(&self, rv: u64, initial_end: bool) -> Bytes {
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        event_line(
            "BOOKMARK",
            &json!({"kind": self.ctx.def.kind, "apiVersion": self.ctx.def.api_version(&self.ctx.version), "metadata": meta}),
        )
    }
}

fn watch(shared: &Arc<Shared>, ctx: Ctx, params: &Params, render: Render) -> ApiResult<Response> {
    let opts = list_opts(params)?;
    supported_fields(&ctx.def, &opts)?;
    let from = match opts.resource_version.as_deref() {
        None | Some("") => None,
        Some(r) => {
            Some(r.parse::<u64>().map_err(|_| ApiError::bad_request(format!("invalid resource version {r:?}")))?)
        }
    };
    let send_initial = flag(params, "sendInitialEvents");
    let bookmarks = flag(params, "allowWatchBookmarks");
    let timeout = params.get("timeoutSeconds").and_then(|t| t.parse::<u64>().ok()).map(Duration::from_secs);
    let started = {
        let st = shared.state();
        let from = if send_initial { None } else { from };
        st.watch(&ctx, from).map(|(b, rx)| (b, rx, st.rv))
    };
    // Like the real server, an expired resourceVersion is an ERROR event in a 200 stream.
    let (backlog, mut rx, start_rv) = match started {
        Ok(s) => s,
        Err(e) if e.code == 410 => {
            return Ok(stream_response(Body::from(event_line("ERROR", &e.status()))));
        }
        Err(e) => return Err(e),
    };
    let filter = WatchFilter { ctx, opts, render };
    let (tx, out) = mpsc::channel::<Result<Bytes, Infallible>>(1024);
    let mut epoch = shared.faults.watch_epoch();
    epoch.borrow_and_update();
    let interval = shared.bookmark_interval;
    let mut held = shared.faults.held_watch_events();
    tokio::spawn(async move {
        let mut progress = start_rv;
        for ev in &backlog {
            if let Some(line) = filter.line(ev)
                && tx.send(Ok(line)).await.is_err()
            {
                return;
            }
        }
        if send_initial && tx.send(Ok(filter.bookmark(progress, true))).await.is_err() {
            return;
        }
        let deadline = tokio::time::sleep(timeout.unwrap_or(Duration::from_secs(3600 * 24)));
        tokio::pin!(deadline);
        let mut ticker = tokio::time::interval(interval);
        ticker.tick().await;
        // Events held back by `Faults::hold_watch_events`, in order; no bookmark passes them.
        let resource = filter.ctx.def.plural.clone();
        let mut holding = held.borrow_and_update().contains(&resource);
        let mut withheld = std::collections::VecDeque::new();
        loop {
            tokio::select! {
                ev = rx.recv() => match ev {
                    Ok(ev) => {
                        progress = progress.max(ev.rv);
                        if let Some(line) = filter.line(&ev) {
                            if holding {
                                withheld.push_back(line);
                            } else if tx.send(Ok(line)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) | Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = ticker.tick(), if bookmarks && !holding => {
                    if tx.send(Ok(filter.bookmark(progress, false))).await.is_err() { return; }
                }
                Ok(()) = held.changed() => {
                    holding = held.borrow_and_update().contains(&resource);
                    while !holding && let Some(line) = withheld.pop_front() {
                        if tx.send(Ok(line)).await.is_err() { return; }
                    }
                }
                _ = &mut deadline => return,
                _ = epoch.changed() => return,
                _ = tx.closed() => return,
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(out);
    Ok(stream_response(Body::from_stream(stream)))
}

fn stream_response(body: Body) -> Response {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
