//! kubesim held against the real API server: the same sequences of requests go to both, and what
//! comes back is compared — status codes, `reason`, messages and `details.causes`, and the
//! objects, minus what each server makes up (uids, timestamps, resourceVersions). Prints "N of M
//! identical" and fails on any difference not in [`ACCEPTED`], each entry with its reason.
//!
//! Runs where `TOKENSOURCE_E2E_KUBECONFIG` names a real API server (`./test` runs it on every
//! version it tests); against kubesim alone there is nothing to compare, and it says so.

#![cfg(test)]

mod cel_cases;

use std::collections::BTreeMap;

use http::Request;
use kube::client::Body;
use serde_json::{Value, json};

/// Differences kubesim keeps on purpose: (sequence/step, why).
const ACCEPTED: &[(&str, &str)] = &[(
    "rbac/impersonated-list",
    "kubesim authorizes nothing (its README, Known gaps): RBAC is tested on the real API servers (tests/rbac.rs)",
)];

/// One request: method, path (`{ns}` is the sequence's namespace), content type and body.
/// In a body, `"$rv:NAME"` is the resourceVersion the server last gave the object NAME, and
/// `"$rv0:NAME"` the first one it gave it (a stale version).
struct Step {
    name: String,
    method: &'static str,
    path: String,
    content_type: &'static str,
    body: Option<Value>,
    /// Extra request headers (impersonation).
    headers: Vec<(&'static str, &'static str)>,
    /// Sent again until its answer says so (the garbage collector acts after the request), for
    /// up to [`POLL`]; the last answer is the one compared.
    until: Option<fn(u16, &Value) -> bool>,
}

/// How long a polled step waits for the answer it expects.
const POLL: std::time::Duration = std::time::Duration::from_secs(20);

impl Step {
    fn until(self, done: fn(u16, &Value) -> bool) -> Self {
        Self { until: Some(done), ..self }
    }

    fn header(mut self, name: &'static str, value: &'static str) -> Self {
        self.headers.push((name, value));
        self
    }
}

fn step(name: &str, method: &'static str, path: &str, body: Option<Value>) -> Step {
    let content_type = match method {
        "PATCH" => "application/merge-patch+json",
        _ => "application/json",
    };
    Step { name: name.into(), method, path: path.into(), content_type, body, headers: vec![], until: None }
}

fn patch(name: &str, content_type: &'static str, path: &str, body: Value) -> Step {
    Step {
        name: name.into(),
        method: "PATCH",
        path: path.into(),
        content_type,
        body: Some(body),
        headers: vec![],
        until: None,
    }
}

/// A server, and the resourceVersions (first and last) and uid it gave each object.
struct Server {
    client: kube::Client,
    versions: BTreeMap<String, (String, String)>,
    uids: BTreeMap<String, String>,
}

impl Server {
    fn substitute(&self, v: &mut Value) {
        match v {
            Value::String(s) => {
                let rv = |name: &str, first: bool| {
                    self.versions.get(name).map(|(f, l)| if first { f.clone() } else { l.clone() }).unwrap_or_default()
                };
                if let Some(name) = s.strip_prefix("$rv0:") {
                    *s = rv(name, true);
                } else if let Some(name) = s.strip_prefix("$rv:") {
                    *s = rv(name, false);
                } else if let Some(name) = s.strip_prefix("$uid:") {
                    *s = self.uids.get(name).cloned().unwrap_or_default();
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|i| self.substitute(i)),
            Value::Object(m) => m.values_mut().for_each(|i| self.substitute(i)),
            _ => {}
        }
    }

    /// Sends one step (again until its answer is the one awaited, if it awaits one).
    async fn answer(&mut self, ns: &str, step: &Step) -> (u16, Value) {
        let deadline = std::time::Instant::now() + POLL;
        loop {
            let (code, body) = self.send(ns, step).await;
            match step.until {
                Some(done) if !done(code, &body) && std::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                _ => return (code, body),
            }
        }
    }

    /// Sends one step: the status code and the body (JSON, or the text as a string).
    async fn send(&mut self, ns: &str, step: &Step) -> (u16, Value) {
        let mut body = step.body.clone();
        if let Some(b) = body.as_mut() {
            self.substitute(b);
        }
        let bytes = body.as_ref().map(|b| serde_json::to_vec(b).unwrap_or_default()).unwrap_or_default();
        // `{rv0:NAME}` in a path: the first resourceVersion the server gave NAME.
        let mut path = step.path.replace("{ns}", ns);
        while let Some(start) = path.find("{rv0:") {
            let end = path[start..].find('}').map_or(path.len(), |e| start + e);
            let name = &path[start + 5..end];
            let rv = self.versions.get(name).map(|(first, _)| first.clone()).unwrap_or_default();
            path.replace_range(start..=end.min(path.len() - 1), &rv);
        }
        let mut request = Request::builder()
            .method(step.method)
            .uri(path)
            .header("content-type", step.content_type)
            .header("accept", "application/json");
        for (name, value) in &step.headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Body::from(bytes)).unwrap_or_else(|e| panic!("{}: {e}", step.name));
        let response = self.client.send(request).await.unwrap_or_else(|e| panic!("{}: {e}", step.name));
        let code = response.status().as_u16();
        let bytes = response.into_body().collect_bytes().await.unwrap_or_default();
        let value = if step.path.contains("watch=true") && code == 200 {
            // A watch (ended by its timeoutSeconds): its events, in order.
            Value::Array(
                serde_json::Deserializer::from_slice(&bytes).into_iter::<Value>().map_while(Result::ok).collect(),
            )
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        if let (Some(name), Some(rv)) =
            (value["metadata"]["name"].as_str(), value["metadata"]["resourceVersion"].as_str())
        {
            let entry = self.versions.entry(name.to_string()).or_insert_with(|| (rv.to_string(), rv.to_string()));
            entry.1 = rv.to_string();
        }
        if let (Some(name), Some(uid)) = (value["metadata"]["name"].as_str(), value["metadata"]["uid"].as_str()) {
            self.uids.insert(name.to_string(), uid.to_string());
        }
        (code, value)
    }
}

/// What a server makes up, replaced by a marker: present on both or on neither is all that is
/// compared. Uids in the keys of managed fields (`k:{"uid":...}`) too.
fn normalize(v: &mut Value) {
    match v {
        Value::Object(m) => {
            let keyed: Vec<String> =
                m.keys().filter(|k| k.starts_with("k:{") && k.contains("\"uid\":")).cloned().collect();
            for k in keyed {
                if let (Some(child), Ok(mut key)) = (m.remove(&k), serde_json::from_str::<Value>(&k[2..])) {
                    key["uid"] = json!("<generated>");
                    m.insert(format!("k:{key}"), child);
                }
            }
            for key in [
                "uid",
                "resourceVersion",
                "creationTimestamp",
                "deletionTimestamp",
                "time",
                "lastTransitionTime",
                "expirationTimestamp",
            ] {
                if let Some(x) = m.get_mut(key)
                    && !x.is_null()
                {
                    *x = json!("<generated>");
                }
            }
            // A TokenRequest's token (a TokenSource's `token` is an object, kept).
            if let Some(Value::String(t)) = m.get_mut("token") {
                *t = "<generated>".into();
            }
            if let Some(Value::String(c)) = m.get_mut("continue")
                && !c.is_empty()
            {
                *c = "<token>".into();
            }
            m.values_mut().for_each(normalize);
        }
        Value::Array(items) => items.iter_mut().for_each(normalize),
        _ => {}
    }
}

/// Where two answers first differ (a JSON pointer), and what each holds there.
fn first_difference(a: &Value, b: &Value, at: String) -> Option<(String, Value, Value)> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| {
                let (l, r) = (x.get(k).unwrap_or(&Value::Null), y.get(k).unwrap_or(&Value::Null));
                first_difference(l, r, format!("{at}/{k}"))
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            x.iter().zip(y).enumerate().find_map(|(i, (l, r))| first_difference(l, r, format!("{at}/{i}")))
        }
        _ => (a != b).then(|| (at, a.clone(), b.clone())),
    }
}

struct Sequence {
    name: &'static str,
    steps: Vec<Step>,
}

fn secret(name: &str, extra: Value) -> Value {
    let mut s = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "data": {"k": "dg=="}});
    if let (Some(s), Some(extra)) = (s.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            s.insert(k.clone(), v.clone());
        }
    }
    s
}

const SECRETS: &str = "/api/v1/namespaces/{ns}/secrets";
const TOKENSOURCES: &str = "/apis/tokensource.dev/v1alpha1/namespaces/{ns}/tokensources";

fn sequences() -> Vec<Sequence> {
    let at = |name: &str| format!("{SECRETS}/{name}");
    let mut all = vec![
        Sequence {
            name: "secrets-crud",
            steps: vec![
                step("create", "POST", SECRETS, Some(secret("a", json!({})))),
                step("create-again", "POST", SECRETS, Some(secret("a", json!({})))),
                step("get", "GET", &at("a"), None),
                step("get-missing", "GET", &at("missing"), None),
                step(
                    "update",
                    "PUT",
                    &at("a"),
                    Some(secret(
                        "a",
                        json!({"metadata": {"name": "a", "resourceVersion": "$rv:a"}, "data": {"k": "dzI="}}),
                    )),
                ),
                step(
                    "update-stale",
                    "PUT",
                    &at("a"),
                    Some(secret("a", json!({"metadata": {"name": "a", "resourceVersion": "$rv0:a"}}))),
                ),
                step("update-missing", "PUT", &at("nope"), Some(secret("nope", json!({})))),
                step("update-wrong-name", "PUT", &at("a"), Some(secret("b", json!({})))),
                step("delete", "DELETE", &at("a"), None),
                step("get-deleted", "GET", &at("a"), None),
                step("delete-again", "DELETE", &at("a"), None),
            ],
        },
        Sequence {
            name: "patches",
            steps: vec![
                step(
                    "create",
                    "POST",
                    SECRETS,
                    Some(secret("p", json!({"metadata": {"name": "p", "labels": {"x": "1"}}}))),
                ),
                patch(
                    "merge",
                    "application/merge-patch+json",
                    &at("p"),
                    json!({"metadata": {"labels": {"y": "2"}}, "stringData": {"s": "t"}}),
                ),
                patch(
                    "json",
                    "application/json-patch+json",
                    &at("p"),
                    json!([{"op": "add", "path": "/metadata/labels/z", "value": "3"}]),
                ),
                patch(
                    "json-test-fails",
                    "application/json-patch+json",
                    &at("p"),
                    json!([{"op": "test", "path": "/metadata/labels/x", "value": "nope"}]),
                ),
                patch(
                    "json-path-missing",
                    "application/json-patch+json",
                    &at("p"),
                    json!([{"op": "replace", "path": "/metadata/annotations/none", "value": "v"}]),
                ),
                patch(
                    "strategic",
                    "application/strategic-merge-patch+json",
                    &at("p"),
                    json!({"metadata": {"labels": {"x": null}}}),
                ),
                patch("merge-missing", "application/merge-patch+json", &at("missing"), json!({"data": {}})),
                patch(
                    "merge-precondition",
                    "application/merge-patch+json",
                    &at("p"),
                    json!({"metadata": {"resourceVersion": "$rv0:p", "labels": {"w": "4"}}}),
                ),
                patch(
                    "merge-type-change",
                    "application/merge-patch+json",
                    &at("p"),
                    json!({"type": "kubernetes.io/basic-auth"}),
                ),
                step("get", "GET", &at("p"), None),
            ],
        },
        Sequence {
            name: "server-side-apply",
            steps: vec![
                patch(
                    "apply-a",
                    "application/apply-patch+yaml",
                    &format!("{}?fieldManager=a", at("c")),
                    secret("c", json!({"metadata": {"name": "c", "labels": {"l": "a"}}})),
                ),
                patch(
                    "apply-b-conflicts",
                    "application/apply-patch+yaml",
                    &format!("{}?fieldManager=b", at("c")),
                    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "c", "labels": {"l": "b"}}}),
                ),
                patch(
                    "apply-b-forced",
                    "application/apply-patch+yaml",
                    &format!("{}?fieldManager=b&force=true", at("c")),
                    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "c", "labels": {"l": "b"}}}),
                ),
                patch(
                    "apply-a-again",
                    "application/apply-patch+yaml",
                    &format!("{}?fieldManager=a", at("c")),
                    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "c"}, "data": {"k": "dg=="}}),
                ),
                patch(
                    "apply-wrong-uid",
                    "application/apply-patch+yaml",
                    &format!("{}?fieldManager=a", at("c")),
                    json!({"apiVersion": "v1", "kind": "Secret",
                           "metadata": {"name": "c", "uid": "00000000-0000-0000-0000-000000000000"}}),
                ),
                patch(
                    "apply-no-manager",
                    "application/apply-patch+yaml",
                    &at("c"),
                    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "c"}}),
                ),
                step("get", "GET", &at("c"), None),
            ],
        },
        Sequence {
            name: "secret-rules",
            steps: vec![
                step("tls-without-keys", "POST", SECRETS, Some(secret("t", json!({"type": "kubernetes.io/tls"})))),
                step(
                    "basic-auth-empty",
                    "POST",
                    SECRETS,
                    Some(
                        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "ba"}, "type": "kubernetes.io/basic-auth"}),
                    ),
                ),
                step("bad-key", "POST", SECRETS, Some(secret("bk", json!({"data": {"bad key!": "dg=="}})))),
                step("bad-base64", "POST", SECRETS, Some(secret("b64", json!({"data": {"k": "not base64!"}})))),
                step("bad-name", "POST", SECRETS, Some(secret("Bad_Name", json!({})))),
                step(
                    "too-large",
                    "POST",
                    SECRETS,
                    Some(secret("big", json!({"stringData": {"big": "x".repeat(1024 * 1024 + 1)}, "data": {}}))),
                ),
                step("opaque", "POST", SECRETS, Some(secret("o", json!({})))),
                step(
                    "type-change",
                    "PUT",
                    &at("o"),
                    Some(secret(
                        "o",
                        json!({"metadata": {"name": "o", "resourceVersion": "$rv:o"}, "type": "kubernetes.io/basic-auth"}),
                    )),
                ),
                step("immutable", "POST", SECRETS, Some(secret("im", json!({"immutable": true})))),
                patch("immutable-change", "application/merge-patch+json", &at("im"), json!({"data": {"k": "dzI="}})),
            ],
        },
        Sequence {
            name: "lists-and-selectors",
            steps: vec![
                step(
                    "e1",
                    "POST",
                    SECRETS,
                    Some(secret("e1", json!({"metadata": {"name": "e1", "labels": {"app": "x", "tier": "a"}}}))),
                ),
                step(
                    "e2",
                    "POST",
                    SECRETS,
                    Some(secret("e2", json!({"metadata": {"name": "e2", "labels": {"app": "x", "tier": "b"}}}))),
                ),
                step(
                    "e3",
                    "POST",
                    SECRETS,
                    Some(secret("e3", json!({"metadata": {"name": "e3", "labels": {"app": "y"}}}))),
                ),
                step("label-equals", "GET", &format!("{SECRETS}?labelSelector=app%3Dx"), None),
                step("label-not", "GET", &format!("{SECRETS}?labelSelector=app%3Dx,tier!%3Da"), None),
                step("label-in", "GET", &format!("{SECRETS}?labelSelector=tier%20in%20(a,b)"), None),
                step("label-exists", "GET", &format!("{SECRETS}?labelSelector=!tier"), None),
                step("field-name", "GET", &format!("{SECRETS}?fieldSelector=metadata.name%3De3"), None),
                step("field-type", "GET", &format!("{SECRETS}?fieldSelector=type%3DOpaque,metadata.name!%3De1"), None),
                step("field-unknown", "GET", &format!("{SECRETS}?fieldSelector=data.k%3Dx"), None),
                step("label-malformed", "GET", &format!("{SECRETS}?labelSelector=%3D%3D"), None),
                step("page-1", "GET", &format!("{SECRETS}?limit=2"), None),
                step("page-bad-continue", "GET", &format!("{SECRETS}?limit=2&continue=bogus"), None),
            ],
        },
    ];
    let cm = |name: &str| format!("/api/v1/namespaces/{{ns}}/configmaps/{name}");
    let owner = |name: &str| Some(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}}));
    let dependent = |name: &str, of: &str, block: bool| {
        let reference = json!({"apiVersion": "v1", "kind": "ConfigMap", "name": of, "uid": format!("$uid:{of}"),
                               "blockOwnerDeletion": block});
        Some(secret(name, json!({"metadata": {"name": name, "ownerReferences": [reference]}})))
    };
    let gone = |code: u16, _: &Value| code == 404;
    let delete = |name: &str, policy: &str| {
        let mut s = step(&format!("delete-{name}"), "DELETE", &cm(name), None);
        s.body = Some(json!({"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": policy}));
        s
    };
    all.push(Sequence {
        name: "garbage-collection",
        steps: vec![
            step("owner-bg", "POST", "/api/v1/namespaces/{ns}/configmaps", owner("owner-bg")),
            step("dependent-bg", "POST", SECRETS, dependent("dep-bg", "owner-bg", false)),
            delete("owner-bg", "Background"),
            step("dependent-bg-collected", "GET", &at("dep-bg"), None).until(gone),
            step("owner-orphan", "POST", "/api/v1/namespaces/{ns}/configmaps", owner("owner-orphan")),
            step("dependent-orphan", "POST", SECRETS, dependent("dep-orphan", "owner-orphan", false)),
            delete("owner-orphan", "Orphan"),
            step("owner-orphan-gone", "GET", &cm("owner-orphan"), None).until(gone),
            step("dependent-orphaned", "GET", &at("dep-orphan"), None)
                .until(|_, v| v["metadata"]["ownerReferences"].is_null()),
            step("owner-fg", "POST", "/api/v1/namespaces/{ns}/configmaps", owner("owner-fg")),
            step("dependent-fg", "POST", SECRETS, dependent("dep-fg", "owner-fg", true)),
            delete("owner-fg", "Foreground"),
            step("dependent-fg-collected", "GET", &at("dep-fg"), None).until(gone),
            step("owner-fg-gone", "GET", &cm("owner-fg"), None).until(gone),
        ],
    });
    let token = |seconds: u64| {
        Some(json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                    "spec": {"audiences": ["https://api.example"], "expirationSeconds": seconds}}))
    };
    all.push(Sequence {
        name: "token-request",
        steps: vec![
            step(
                "service-account",
                "POST",
                "/api/v1/namespaces/{ns}/serviceaccounts",
                Some(json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "sa"}})),
            ),
            step("token", "POST", "/api/v1/namespaces/{ns}/serviceaccounts/sa/token", token(3600)),
            step("token-too-short", "POST", "/api/v1/namespaces/{ns}/serviceaccounts/sa/token", token(60)),
            step("token-no-account", "POST", "/api/v1/namespaces/{ns}/serviceaccounts/nobody/token", token(3600)),
        ],
    });
    let watch = |query: &str| format!("{SECRETS}?watch=true&timeoutSeconds=2&{query}");
    all.push(Sequence {
        name: "watches",
        steps: vec![
            step("w1", "POST", SECRETS, Some(secret("w1", json!({})))),
            patch("w1-changed", "application/merge-patch+json", &at("w1"), json!({"metadata": {"labels": {"a": "b"}}})),
            step("w2", "POST", SECRETS, Some(secret("w2", json!({})))),
            step("w1-deleted", "DELETE", &at("w1"), None),
            step("from-w1-creation", "GET", &watch("resourceVersion={rv0:w1}"), None),
            step("from-w1-creation-selected", "GET", &watch("resourceVersion={rv0:w1}&labelSelector=a%3Db"), None),
            step(
                "initial-events",
                "GET",
                &watch("sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true"),
                None,
            ),
            step("too-old", "GET", &watch("resourceVersion=1"), None),
        ],
    });
    all.push(Sequence {
        name: "rbac",
        steps: vec![step("impersonated-list", "GET", SECRETS, None).header("Impersonate-User", "nobody")],
    });
    let ts = cel_cases::http();
    all.push(Sequence {
        name: "tokensource-status",
        steps: vec![
            step("create-with-defaults", "POST", TOKENSOURCES, Some(ts.clone())),
            step(
                "status-put",
                "PUT",
                &format!("{TOKENSOURCES}/t/status"),
                Some(cel_cases::set(
                    cel_cases::set(ts.clone(), "metadata/resourceVersion", json!("$rv:t")),
                    "status",
                    json!({"failedRenewalAttempts": 1}),
                )),
            ),
            patch(
                "status-patch-ignores-spec",
                "application/merge-patch+json",
                &format!("{TOKENSOURCES}/t/status"),
                json!({"spec": {"target": {"name": "other"}}, "status": {"failedRenewalAttempts": 2}}),
            ),
            patch(
                "main-patch-ignores-status",
                "application/merge-patch+json",
                &format!("{TOKENSOURCES}/t"),
                json!({"metadata": {"labels": {"a": "b"}}, "status": {"failedRenewalAttempts": 9}}),
            ),
            patch(
                "status-invalid",
                "application/merge-patch+json",
                &format!("{TOKENSOURCES}/t/status"),
                json!({"status": {"failedRenewalAttempts": "many"}}),
            ),
            patch(
                "unknown-field-pruned",
                "application/merge-patch+json",
                &format!("{TOKENSOURCES}/t"),
                json!({"spec": {"notAField": true}}),
            ),
            step("get", "GET", &format!("{TOKENSOURCES}/t"), None),
            step("status-missing", "GET", &format!("{TOKENSOURCES}/missing/status"), None),
        ],
    });
    let cel = cel_cases::cases()
        .into_iter()
        .enumerate()
        .map(|(i, c)| step(&format!("{i}:{}", c.field), "POST", TOKENSOURCES, Some(c.doc)))
        .collect();
    all.push(Sequence { name: "cel-rules", steps: cel });
    all
}

async fn real_server() -> Option<kube::Client> {
    let path = std::env::var("TOKENSOURCE_E2E_KUBECONFIG").ok().filter(|p| !p.is_empty())?;
    let kc = kube::config::Kubeconfig::read_from(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.expect("kubeconfig");
    Some(kube::Client::try_from(cfg).expect("client"))
}

/// The CRD, server-side, and established.
async fn install_crd(server: &mut Server) {
    let crd: Value = serde_saphyr::from_str(&tokensource_operator::crd::crd_yaml().expect("CRD")).expect("CRD YAML");
    let path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/tokensources.tokensource.dev?fieldManager=differential&force=true";
    let (code, body) = server.send("", &patch("crd", "application/apply-patch+yaml", path, crd)).await;
    assert!(code < 300, "installing the CRD: {body}");
    common::eventually("the CRD established", common::WAIT, || async {
        let get = step(
            "crd",
            "GET",
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/tokensources.tokensource.dev",
            None,
        );
        let mut probe = Server { client: server.client.clone(), versions: BTreeMap::new(), uids: BTreeMap::new() };
        let (_, crd) = probe.send("", &get).await;
        let established = crd["status"]["conditions"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["type"] == "Established" && c["status"] == "True"));
        common::check(established, (), "not yet")
    })
    .await;
}

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubesim_answers_as_the_real_api_server_does() {
    let Some(real) = real_server().await else {
        eprintln!("differential: needs a real API server to compare with (TOKENSOURCE_E2E_KUBECONFIG); skipped");
        return;
    };
    // kubesim answers as the minor it is compared with, where minors differ.
    let version = real.apiserver_version().await.expect("the real server's version");
    let minor: u32 = version.minor.trim_end_matches('+').parse().expect("a minor version");
    // Bookmarks about once a minute, as the API server sends them (kubesim's default, a second,
    // is for tests that wait for one).
    let options =
        kubesim::Options { minor, bookmark_interval: std::time::Duration::from_secs(60), ..Default::default() };
    let sim = kubesim::KubeSim::start_with(options).await.expect("kubesim");
    let mut servers = [
        Server { client: sim.client(), versions: BTreeMap::new(), uids: BTreeMap::new() },
        Server { client: real, versions: BTreeMap::new(), uids: BTreeMap::new() },
    ];
    eprintln!("kubesim as 1.{minor}, against {}", version.git_version);
    for s in servers.iter_mut() {
        install_crd(s).await;
    }
    let (mut identical, mut total) = (0, 0);
    let mut differences = Vec::new();
    let mut accepted_seen = Vec::new();
    for seq in sequences() {
        let ns = format!("diff-{}-{:06x}", seq.name, rand::random::<u32>() & 0xff_ffff);
        for s in servers.iter_mut() {
            let (code, body) = s
                .send("", &step("namespace", "POST", "/api/v1/namespaces", Some(json!({"metadata": {"name": ns}}))))
                .await;
            assert!(code < 300, "namespace {ns}: {body}");
        }
        let mut seq_identical = 0;
        for st in &seq.steps {
            let mut answers = Vec::new();
            for s in servers.iter_mut() {
                let (code, mut body) = s.answer(&ns, st).await;
                normalize(&mut body);
                answers.push((code, body));
            }
            total += 1;
            let key = format!("{}/{}", seq.name, st.name);
            if answers[0] == answers[1] {
                identical += 1;
                seq_identical += 1;
            } else if let Some((_, why)) = ACCEPTED.iter().find(|(k, _)| *k == key) {
                accepted_seen.push(format!("{key}: {why}"));
            } else {
                let short = |v: &Value| v.to_string().chars().take(1500).collect::<String>();
                let (at, sim, real) = match std::env::var_os("TOKENSOURCE_DIFFERENTIAL_WHOLE") {
                    // The whole answers, to see everything that differs.
                    Some(_) => (String::new(), answers[0].1.clone(), answers[1].1.clone()),
                    None => first_difference(&answers[0].1, &answers[1].1, String::new())
                        .unwrap_or_else(|| (String::new(), Value::Null, Value::Null)),
                };
                differences.push(format!(
                    "{key}: {} vs {}, first at {at:?}\n  kubesim: {}\n  real:    {}",
                    answers[0].0,
                    answers[1].0,
                    short(&sim),
                    short(&real)
                ));
            }
        }
        eprintln!("{}: {seq_identical} of {} identical", seq.name, seq.steps.len());
        let _ = servers[1].send("", &step("namespace", "DELETE", &format!("/api/v1/namespaces/{ns}"), None)).await;
    }
    eprintln!("kubesim against the real API server: {identical} of {total} identical");
    for a in &accepted_seen {
        eprintln!("accepted difference: {a}");
    }
    assert!(differences.is_empty(), "{} differences:\n{}", differences.len(), differences.join("\n"));
}
