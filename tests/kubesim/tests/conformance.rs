//! Conformance of kubesim through kube-rs: what the operator and kube's runtime rely on.

#![cfg(test)]

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
    WatchEvent, WatchParams,
};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kubesim::{KubeSim, Matcher};
use serde_json::{Value, json};

fn api_error(e: kube::Error) -> (u16, String, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason.clone(), s.message.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn secret(name: &str, data: Value) -> Secret {
    serde_json::from_value(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "data": data}))
        .unwrap()
}

fn widget_crd() -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {
            "group": "example.com",
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wd"]},
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {
                        "spec": {"type": "object", "required": ["size"], "properties": {
                            "size": {"type": "integer", "minimum": 1},
                            "color": {"type": "string", "enum": ["red", "blue"], "default": "red"},
                            "labels": {"type": "object", "additionalProperties": {"type": "string"}}
                        }},
                        "status": {"type": "object", "properties": {"phase": {"type": "string"}}}
                    }
                }}
            }]
        }
    })
}

async fn widgets(sim: &KubeSim) -> Api<DynamicObject> {
    let crds: Api<DynamicObject> = Api::all_with(
        sim.client(),
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("apiextensions.k8s.io", "v1", "CustomResourceDefinition"),
            "customresourcedefinitions",
        ),
    );
    let crd: DynamicObject = serde_json::from_value(widget_crd()).unwrap();
    crds.create(&PostParams::default(), &crd).await.expect("create CRD");
    let ar = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("example.com", "v1", "Widget"), "widgets");
    Api::namespaced_with(sim.client(), "default", &ar)
}

fn widget(name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(
        json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": name}, "spec": spec}),
    )
    .unwrap()
}

async fn start() -> KubeSim {
    KubeSim::start().await.expect("kubesim")
}

/// kubesim, or the real API server `TOKENSOURCE_E2E_KUBECONFIG` names (as
/// `tests/controlplane/run 1.37 -- cargo test -p kubesim --test conformance` sets it), for the
/// tests that hold kubesim's answers against the API server's. The sim, if any, lives as long
/// as the client is used.
async fn cluster() -> (Option<KubeSim>, kube::Client) {
    match std::env::var("TOKENSOURCE_E2E_KUBECONFIG") {
        Ok(path) if !path.is_empty() => {
            let kc = kube::config::Kubeconfig::read_from(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
            let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.unwrap();
            (None, kube::Client::try_from(cfg).unwrap())
        }
        _ => {
            let sim = start().await;
            let client = sim.client();
            (Some(sim), client)
        }
    }
}

/// A name no other run of the test uses (a real cluster outlives one run).
fn fresh(prefix: &str) -> String {
    format!("{prefix}-{:08x}", rand::random::<u32>())
}

#[tokio::test]
async fn crud_conflicts_and_not_found() {
    let sim = start().await;
    let api: Api<Secret> = Api::default_namespaced(sim.client());
    let created = api.create(&PostParams::default(), &secret("a", json!({"k": "dg=="}))).await.unwrap();
    let meta = &created.metadata;
    assert!(meta.uid.is_some() && meta.creation_timestamp.is_some());
    assert_eq!(meta.namespace.as_deref(), Some("default"));
    assert_eq!(created.type_.as_deref(), Some("Opaque"));

    let (code, reason, message) = api_error(
        api.create(&PostParams::default(), &secret("a", json!({}))).await.expect_err("duplicate create succeeded"),
    );
    assert_eq!((code, reason.as_str(), message.as_str()), (409, "AlreadyExists", "secrets \"a\" already exists"));

    let mut stale = created.clone();
    let mut fresh = created.clone();
    fresh.data = Some(Default::default());
    api.replace("a", &PostParams::default(), &fresh).await.unwrap();
    stale.string_data = Some([("x".to_string(), "y".to_string())].into());
    let (code, reason, _) =
        api_error(api.replace("a", &PostParams::default(), &stale).await.expect_err("stale update succeeded"));
    assert_eq!((code, reason.as_str()), (409, "Conflict"));

    let raw: Api<DynamicObject> = Api::default_namespaced_with(sim.client(), &ApiResource::erase::<Secret>(&()));
    let bad: DynamicObject = serde_json::from_value(
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "b"}, "data": {"k": "not base64!"}}),
    )
    .unwrap();
    let (code, reason, message) =
        api_error(raw.create(&PostParams::default(), &bad).await.expect_err("bad base64 accepted"));
    // As the real API server: the body cannot be decoded into a Secret at all.
    assert_eq!((code, reason.as_str()), (400, "BadRequest"));
    assert_eq!(message, "Secret in version \"v1\" cannot be handled as a Secret: illegal base64 data at input byte 3");

    api.delete("a", &DeleteParams::default()).await.unwrap();
    let (code, reason, message) = api_error(api.get("a").await.expect_err("deleted secret still there"));
    assert_eq!((code, reason.as_str(), message.as_str()), (404, "NotFound", "secrets \"a\" not found"));
    let other: Api<Secret> = Api::namespaced(sim.client(), "nowhere");
    let (code, _, message) = api_error(
        other
            .create(&PostParams::default(), &secret("x", json!({})))
            .await
            .expect_err("created in a missing namespace"),
    );
    assert_eq!((code, message.as_str()), (404, "namespaces \"nowhere\" not found"));
}

#[tokio::test]
async fn no_op_update_keeps_resource_version() {
    let sim = start().await;
    let api: Api<Secret> = Api::default_namespaced(sim.client());
    let a = api.create(&PostParams::default(), &secret("a", json!({"k": "dg=="}))).await.unwrap();
    let b = api.replace("a", &PostParams::default(), &a).await.unwrap();
    assert_eq!(a.metadata.resource_version, b.metadata.resource_version);
}

#[tokio::test]
async fn pagination_and_selectors() {
    let sim = start().await;
    let api: Api<ConfigMap> = Api::default_namespaced(sim.client());
    for i in 0..25 {
        let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": format!("cm-{i:02}"), "labels": {"parity": if i % 2 == 0 { "even" } else { "odd" }, "n": i.to_string()}}}))
            .unwrap();
        api.create(&PostParams::default(), &cm).await.unwrap();
    }
    let mut names = vec![];
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut lp = ListParams::default().limit(10);
        if let Some(t) = &token {
            lp = lp.continue_token(t);
        }
        let page = api.list(&lp).await.unwrap();
        pages += 1;
        names.extend(page.items.iter().filter_map(|c| c.metadata.name.clone()));
        token = page.metadata.continue_.filter(|c| !c.is_empty());
        if token.is_none() {
            break;
        }
        assert!(page.metadata.remaining_item_count.is_some_and(|n| n > 0));
    }
    assert_eq!(pages, 3);
    assert_eq!(names.len(), 25);
    assert!(names.windows(2).all(|w| w[0] < w[1]), "lists come back in name order");

    let count = |sel: &'static str| {
        let api = api.clone();
        async move { api.list(&ListParams::default().labels(sel)).await.unwrap().items.len() }
    };
    assert_eq!(count("parity=even").await, 13);
    assert_eq!(count("parity!=even").await, 12);
    assert_eq!(count("n in (1,2,3),parity=odd").await, 2);
    assert_eq!(count("n notin (1,2,3)").await, 22);
    assert_eq!(count("parity").await, 25);
    assert_eq!(count("!parity").await, 0);
    let by_name = api.list(&ListParams::default().fields("metadata.name=cm-07")).await.unwrap();
    assert_eq!(by_name.items.len(), 1);
    let all: Api<ConfigMap> = Api::all(sim.client());
    assert_eq!(all.list(&ListParams::default()).await.unwrap().items.len(), 25);
}

#[tokio::test]
async fn watch_resumes_sends_bookmarks_and_expires() {
    let sim = start().await;
    let api: Api<Secret> = Api::default_namespaced(sim.client());
    let first = api.create(&PostParams::default(), &secret("w", json!({}))).await.unwrap();
    let rv = first.metadata.resource_version.clone().unwrap_or_default();
    api.create(&PostParams::default(), &secret("w2", json!({}))).await.unwrap();

    // Resuming from the first object's version replays what came after it.
    let mut stream = api.watch(&WatchParams::default().timeout(10), &rv).await.unwrap().boxed();
    let mut saw_added = false;
    let mut saw_bookmark = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !(saw_added && saw_bookmark) && tokio::time::Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(3), stream.try_next()).await {
            Ok(Ok(Some(WatchEvent::Added(s)))) => {
                assert_eq!(s.metadata.name.as_deref(), Some("w2"));
                saw_added = true;
            }
            Ok(Ok(Some(WatchEvent::Bookmark(b)))) => {
                assert!(b.metadata.resource_version.parse::<u64>().is_ok());
                saw_bookmark = true;
            }
            other => panic!("unexpected watch result: {other:?}"),
        }
    }
    assert!(saw_added && saw_bookmark, "added={saw_added} bookmark={saw_bookmark}");

    // After a compaction, resuming from an old version is 410 Gone.
    sim.compact();
    let mut stream = api.watch(&WatchParams::default(), &rv).await.unwrap().boxed();
    match tokio::time::timeout(Duration::from_secs(3), stream.try_next()).await {
        Ok(Ok(Some(WatchEvent::Error(e)))) => assert_eq!(e.code, 410),
        Ok(Err(kube::Error::Api(e))) => assert_eq!(e.code, 410),
        other => panic!("expected 410 Gone, got {other:?}"),
    }
}

#[tokio::test]
async fn reflector_recovers_from_dropped_watches_and_compaction() {
    let sim = start().await;
    let api: Api<Secret> = Api::default_namespaced(sim.client());
    let (reader, writer) = reflector::store();
    let stream = reflector(writer, watcher(api.clone(), watcher::Config::default())).applied_objects();
    let task = tokio::spawn(async move {
        futures::pin_mut!(stream);
        while stream.next().await.is_some() {}
    });
    reader.wait_until_ready().await.unwrap();
    let wait_for = |n: usize| {
        let reader = reader.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while reader.len() != n {
                assert!(tokio::time::Instant::now() < deadline, "reflector has {} objects, want {n}", reader.len());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    api.create(&PostParams::default(), &secret("one", json!({}))).await.unwrap();
    wait_for(1).await;
    let watches_before = sim.faults().count("watch", "secrets");
    sim.faults().end_watches();
    api.create(&PostParams::default(), &secret("two", json!({}))).await.unwrap();
    wait_for(2).await;
    assert!(sim.faults().count("watch", "secrets") > watches_before, "the watcher reconnected");
    let lists_before = sim.faults().count("list", "secrets");
    sim.compact();
    sim.faults().end_watches();
    api.create(&PostParams::default(), &secret("three", json!({}))).await.unwrap();
    wait_for(3).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while sim.faults().count("list", "secrets") == lists_before {
        assert!(tokio::time::Instant::now() < deadline, "the watcher never re-listed after 410");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    task.abort();
}

#[tokio::test]
async fn server_side_apply_merges_and_conflicts() {
    let sim = start().await;
    let api: Api<Secret> = Api::default_namespaced(sim.client());
    let a = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "ssa", "labels": {"owner": "a"}}, "data": {"a": "YQ=="}});
    let applied = api.patch("ssa", &PatchParams::apply("manager-a"), &Patch::Apply(&a)).await.unwrap();
    assert_eq!(applied.metadata.managed_fields.as_ref().map(Vec::len), Some(1));
    let b = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "ssa"}, "data": {"b": "Yg=="}});
    let merged = api.patch("ssa", &PatchParams::apply("manager-b"), &Patch::Apply(&b)).await.unwrap();
    let keys: Vec<String> = merged.data.as_ref().map(|d| d.keys().cloned().collect()).unwrap_or_default();
    assert_eq!(keys, vec!["a", "b"]);

    let steal = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "ssa"}, "data": {"a": "Yw=="}});
    let (code, reason, message) = api_error(
        api.patch("ssa", &PatchParams::apply("manager-b"), &Patch::Apply(&steal))
            .await
            .expect_err("conflict not detected"),
    );
    assert_eq!((code, reason.as_str()), (409, "Conflict"));
    assert!(message.contains("conflict with \"manager-a\"") && message.contains(".data.a"), "{message}");
    let forced = api.patch("ssa", &PatchParams::apply("manager-b").force(), &Patch::Apply(&steal)).await.unwrap();
    assert_eq!(forced.data.as_ref().and_then(|d| d.get("a")).map(|b| b.0.clone()), Some(b"c".to_vec()));
    // manager-b stops applying data.b: it is removed; data.a, still applied, stays.
    let fewer = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "ssa"}, "data": {"a": "Yw=="}});
    let after = api.patch("ssa", &PatchParams::apply("manager-b").force(), &Patch::Apply(&fewer)).await.unwrap();
    let keys: Vec<String> = after.data.as_ref().map(|d| d.keys().cloned().collect()).unwrap_or_default();
    assert_eq!(keys, vec!["a"]);
    assert_eq!(after.metadata.labels.as_ref().and_then(|l| l.get("owner")).map(String::as_str), Some("a"));
    // Re-applying the same configuration writes nothing.
    let again = api.patch("ssa", &PatchParams::apply("manager-b").force(), &Patch::Apply(&fewer)).await.unwrap();
    assert_eq!(again.metadata.resource_version, after.metadata.resource_version);
}

/// A uid or resourceVersion in an applied configuration is a precondition: what the operator
/// relies on to write only the Secret it saw (and to create one only where none exists).
#[tokio::test]
async fn server_side_apply_takes_uid_and_resource_version_as_preconditions() {
    let (_sim, client) = cluster().await;
    let api: Api<Secret> = Api::default_namespaced(client);
    let apply = PatchParams::apply("op").force();
    let body = |name: &str, meta: Value| {
        let mut m = json!({"name": name});
        m.as_object_mut().unwrap().extend(meta.as_object().unwrap().clone());
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": m, "data": {"x": "MQ=="}})
    };
    // A resourceVersion no object has: a create where nothing exists...
    let name = fresh("created");
    let never = json!({"resourceVersion": "18446744073709551615"});
    let created = api.patch(&name, &apply, &Patch::Apply(&body(&name, never.clone()))).await.unwrap();
    let fields = serde_json::to_string(&created.metadata.managed_fields).unwrap();
    assert!(fields.contains("\"operation\":\"Apply\"") && !fields.contains("\"Update\""), "{fields}");
    // ...and a conflict where something does.
    let (code, reason, message) =
        api_error(api.patch(&name, &apply, &Patch::Apply(&body(&name, never))).await.expect_err("applied over"));
    assert_eq!((code, reason.as_str()), (409, "Conflict"), "{message}");
    assert!(message.contains("the object has been modified"), "{message}");

    // The right uid: an update.
    let uid = created.metadata.uid.clone().unwrap();
    let updated = api.patch(&name, &apply, &Patch::Apply(&body(&name, json!({"uid": uid})))).await.unwrap();
    assert_eq!(updated.metadata.uid.as_deref(), Some(uid.as_str()));
    // Another uid: the uid cannot change.
    let other = "00000000-0000-4000-8000-000000000001";
    let (code, reason, message) = api_error(
        api.patch(&name, &apply, &Patch::Apply(&body(&name, json!({"uid": other})))).await.expect_err("applied"),
    );
    assert_eq!((code, reason.as_str()), (422, "Invalid"), "{message}");
    assert!(message.contains("metadata.uid") && message.contains("field is immutable"), "{message}");
    // A uid where nothing exists: no create.
    let missing = fresh("missing");
    let (code, reason, message) = api_error(
        api.patch(&missing, &apply, &Patch::Apply(&body(&missing, json!({"uid": other})))).await.expect_err("created"),
    );
    assert_eq!((code, reason.as_str()), (409, "Conflict"), "{message}");
    assert!(message.contains("uid mismatch") && message.contains("no existing object was found"), "{message}");
    assert!(api.get_opt(&missing).await.unwrap().is_none());
    api.delete(&name, &DeleteParams::default()).await.unwrap();
}

/// TokenReview answers as the API server does: what the operator relies on to tell a
/// ServiceAccount token the API server accepts (its own audiences: `k3s` on k3s, the issuer on a
/// kubeadm cluster) from one for another audience.
#[tokio::test]
async fn token_reviews_answer_as_the_api_server_does() {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec, TokenReview, TokenReviewSpec};
    use k8s_openapi::api::core::v1::ServiceAccount;
    let (_sim, client) = cluster().await;
    let accounts: Api<ServiceAccount> = Api::default_namespaced(client.clone());
    let reviews: Api<TokenReview> = Api::all(client.clone());
    let name = fresh("reviewed");
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    accounts.create(&PostParams::default(), &sa).await.unwrap();
    let mint = |audiences: Vec<String>| {
        let (accounts, name) = (accounts.clone(), name.clone());
        async move {
            let request = TokenRequest {
                spec: TokenRequestSpec { audiences, expiration_seconds: Some(600), bound_object_ref: None },
                ..Default::default()
            };
            let answer = accounts.create_token_request(&name, &PostParams::default(), &request).await.unwrap();
            (answer.spec.audiences, answer.status.unwrap().token)
        }
    };
    let review = |token: &str, audiences: Option<Vec<String>>| {
        let (reviews, token) = (reviews.clone(), token.to_string());
        async move {
            let r = TokenReview { spec: TokenReviewSpec { token: Some(token), audiences }, ..Default::default() };
            reviews.create(&PostParams::default(), &r).await.map(|r| r.status.unwrap_or_default())
        }
    };

    // No audience asked: the API server's own, which a review without audiences accepts.
    let (own, api_token) = mint(vec![]).await;
    assert!(!own.is_empty());
    let status = review(&api_token, None).await.unwrap();
    assert_eq!(status.authenticated, Some(true), "{status:?}");
    assert_eq!(status.audiences.as_ref(), Some(&own));
    let user = status.user.unwrap();
    assert_eq!(user.username.as_deref(), Some(format!("system:serviceaccount:default:{name}").as_str()));
    assert!(user.groups.unwrap_or_default().contains(&"system:serviceaccounts:default".to_string()));

    // Another audience: not the API server's; accepted only for that audience.
    let idp = "https://idp.example.com".to_string();
    let (audiences, idp_token) = mint(vec![idp.clone()]).await;
    assert_eq!(audiences, std::slice::from_ref(&idp));
    let status = review(&idp_token, None).await.unwrap();
    assert!(!status.authenticated.unwrap_or(false), "{status:?}");
    let error = status.error.unwrap_or_default();
    assert!(error.contains("invalid bearer token") && error.contains("is invalid for the target audiences"), "{error}");
    let status = review(&idp_token, Some(vec![idp.clone()])).await.unwrap();
    assert_eq!((status.authenticated, status.audiences), (Some(true), Some(vec![idp])));

    // Not a token at all; no token.
    let status = review("not-a-token", None).await.unwrap();
    assert!(!status.authenticated.unwrap_or(false) && status.error.is_some_and(|e| e.contains("invalid bearer token")));
    let (code, reason, message) = api_error(review("", None).await.expect_err("an empty token was reviewed"));
    assert_eq!((code, reason.as_str()), (400, "BadRequest"), "{message}");

    // The ServiceAccount deleted: its tokens are no longer accepted (the API server reads
    // ServiceAccounts from a cache: 1.37 refuses the token 10 s after the deletion).
    accounts.delete(&name, &DeleteParams::default()).await.unwrap();
    let deleted = std::time::Instant::now();
    let deadline = deleted + Duration::from_secs(30);
    loop {
        let status = review(&api_token, None).await.unwrap();
        if !status.authenticated.unwrap_or(false) {
            let error = status.error.unwrap_or_default();
            assert!(error.contains(&format!("serviceaccounts \"{name}\" not found")), "{error}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "a deleted ServiceAccount's token is still accepted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The API server's own audiences are configurable (`--api-audiences`), as k3s and RKE2 add
/// theirs: a token for one of them is accepted, and a TokenRequest without audiences gets them.
#[tokio::test]
async fn the_api_servers_own_audiences_can_be_set() {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec, TokenReview, TokenReviewSpec};
    use k8s_openapi::api::core::v1::ServiceAccount;
    let sim = start().await;
    assert_eq!(sim.api_audiences(), [sim.service_account_issuer().to_string()]);
    sim.set_api_audiences(&["https://kubernetes.default.svc.cluster.local", "k3s"]);
    let accounts: Api<ServiceAccount> = Api::default_namespaced(sim.client());
    accounts
        .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "a"}})).unwrap())
        .await
        .unwrap();
    let request = |aud: &[&str]| TokenRequest {
        spec: TokenRequestSpec {
            audiences: aud.iter().map(|a| a.to_string()).collect(),
            expiration_seconds: None,
            bound_object_ref: None,
        },
        ..Default::default()
    };
    let default = accounts.create_token_request("a", &PostParams::default(), &request(&[])).await.unwrap();
    assert_eq!(default.spec.audiences, ["https://kubernetes.default.svc.cluster.local", "k3s"]);
    let k3s = accounts.create_token_request("a", &PostParams::default(), &request(&["k3s"])).await.unwrap();
    let reviews: Api<TokenReview> = Api::all(sim.client());
    let r = TokenReview {
        spec: TokenReviewSpec { token: Some(k3s.status.unwrap().token), audiences: None },
        ..Default::default()
    };
    let status = reviews.create(&PostParams::default(), &r).await.unwrap().status.unwrap();
    assert_eq!((status.authenticated, status.audiences), (Some(true), Some(vec!["k3s".to_string()])));
    assert_eq!(sim.faults().count("create", "tokenreviews"), 1);
}

#[tokio::test]
async fn strategic_merge_and_json_patch_on_builtins() {
    let sim = start().await;
    let api: Api<Secret> = Api::default_namespaced(sim.client());
    api.create(&PostParams::default(), &secret("p", json!({"a": "YQ=="}))).await.unwrap();
    let p = json!({"metadata": {"finalizers": ["one"], "labels": {"x": "1"}}});
    api.patch("p", &PatchParams::default(), &Patch::Strategic(&p)).await.unwrap();
    let p = json!({"metadata": {"finalizers": ["two"]}});
    let s = api.patch("p", &PatchParams::default(), &Patch::Strategic(&p)).await.unwrap();
    assert_eq!(s.metadata.finalizers, Some(vec!["one".to_string(), "two".to_string()]), "finalizers merge as a set");
    let ops: json_patch::Patch =
        serde_json::from_value(json!([{"op": "remove", "path": "/metadata/finalizers"}])).unwrap();
    let s = api.patch("p", &PatchParams::default(), &Patch::<()>::Json(ops)).await.unwrap();
    assert_eq!(s.metadata.finalizers, None);
}

#[tokio::test]
async fn custom_resources_validate_default_and_separate_status() {
    let sim = start().await;
    let api = widgets(&sim).await;
    let w = api.create(&PostParams::default(), &widget("w", json!({"size": 2, "unknown": true}))).await.unwrap();
    assert_eq!(w.data["spec"]["color"], "red", "defaulted");
    assert!(w.data["spec"].get("unknown").is_none(), "pruned");
    assert_eq!(w.metadata.generation, Some(1));

    let (code, reason, message) = api_error(
        api.create(&PostParams::default(), &widget("bad", json!({"size": 0, "color": "green"})))
            .await
            .expect_err("invalid widget accepted"),
    );
    assert_eq!((code, reason.as_str()), (422, "Invalid"));
    assert!(message.starts_with("Widget.example.com \"bad\" is invalid: ["), "{message}");
    assert!(message.contains("spec.size") && message.contains("spec.color: Unsupported value: \"green\""), "{message}");
    let (code, _, message) = api_error(
        api.create(&PostParams::default(), &widget("bad", json!({}))).await.expect_err("missing field accepted"),
    );
    assert_eq!(code, 422);
    assert!(message.contains("spec.size: Required value"), "{message}");

    // Status writes go through /status only, and do not bump generation.
    let status = json!({"status": {"phase": "Ready"}, "spec": {"size": 9}});
    let s = api.patch_status("w", &PatchParams::default(), &Patch::Merge(&status)).await.unwrap();
    assert_eq!(s.data["status"]["phase"], "Ready");
    assert_eq!(s.data["spec"]["size"], 2, "spec is ignored on /status");
    assert_eq!(s.metadata.generation, Some(1));
    let main = json!({"status": {"phase": "Lost"}, "spec": {"size": 3}});
    let m = api.patch("w", &PatchParams::default(), &Patch::Merge(&main)).await.unwrap();
    assert_eq!(m.data["status"]["phase"], "Ready", "status is ignored on the main resource");
    assert_eq!(m.metadata.generation, Some(2));
    let meta_only = json!({"metadata": {"labels": {"a": "b"}}});
    let m = api.patch("w", &PatchParams::default(), &Patch::Merge(&meta_only)).await.unwrap();
    assert_eq!(m.metadata.generation, Some(2), "metadata edits do not bump generation");

    let (code, reason, _) = api_error(
        api.patch("w", &PatchParams::default(), &Patch::Strategic(&meta_only))
            .await
            .expect_err("strategic merge accepted on a custom resource"),
    );
    assert_eq!((code, reason.as_str()), (415, "UnsupportedMediaType"));
}

#[tokio::test]
async fn finalizers_hold_deletion_and_owners_collect_dependents() {
    let sim = start().await;
    let api = widgets(&sim).await;
    let secrets: Api<Secret> = Api::default_namespaced(sim.client());
    let mut w = widget("held", json!({"size": 1}));
    w.metadata.finalizers = Some(vec!["example.com/cleanup".into()]);
    api.create(&PostParams::default(), &w).await.unwrap();
    api.delete("held", &DeleteParams::default()).await.unwrap();
    let held = api.get("held").await.unwrap();
    assert!(held.metadata.deletion_timestamp.is_some());
    api.patch("held", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": null}}))).await.unwrap();
    assert_eq!(api_error(api.get("held").await.expect_err("still there")).0, 404);

    for (owner, policy) in [
        ("bg", None),
        ("orphan", Some(kube::api::PropagationPolicy::Orphan)),
        ("fg", Some(kube::api::PropagationPolicy::Foreground)),
    ] {
        let o = api.create(&PostParams::default(), &widget(owner, json!({"size": 1}))).await.unwrap();
        let mut s = secret(&format!("{owner}-child"), json!({}));
        s.metadata.owner_references = Some(vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "example.com/v1".into(),
            kind: "Widget".into(),
            name: owner.into(),
            uid: o.metadata.uid.clone().unwrap_or_default(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }]);
        secrets.create(&PostParams::default(), &s).await.unwrap();
        let dp = DeleteParams { propagation_policy: policy.clone(), ..Default::default() };
        api.delete(owner, &dp).await.unwrap();
        let child = secrets.get_opt(&format!("{owner}-child")).await.unwrap();
        match policy {
            Some(kube::api::PropagationPolicy::Orphan) => {
                let child = child.expect("orphaned child was deleted");
                assert!(child.metadata.owner_references.unwrap_or_default().is_empty());
            }
            _ => assert!(child.is_none(), "{owner}: dependent survived its owner"),
        }
    }
    // A dependent whose owner never existed is collected too.
    let mut s = secret("dangling", json!({}));
    s.metadata.owner_references = Some(vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
        api_version: "example.com/v1".into(),
        kind: "Widget".into(),
        name: "ghost".into(),
        uid: "00000000-0000-0000-0000-000000000000".into(),
        ..Default::default()
    }]);
    secrets.create(&PostParams::default(), &s).await.unwrap();
    assert!(secrets.get_opt("dangling").await.unwrap().is_none());
}

#[tokio::test]
async fn fault_injection_controls() {
    let sim = start().await;
    let api: Api<Secret> = Api::default_namespaced(sim.client());
    sim.faults().fail_next(Matcher::new("create", "secrets"), 1, 500, None);
    let (code, reason, _) = api_error(
        api.create(&PostParams::default(), &secret("f", json!({}))).await.expect_err("injected failure missing"),
    );
    assert_eq!((code, reason.as_str()), (500, "InternalError"));
    api.create(&PostParams::default(), &secret("f", json!({}))).await.expect("only one failure was asked for");

    // kube's client retries 503 and 429 itself, honouring Retry-After: the injected failures
    // show up as extra requests and as the wait.
    sim.faults().reset_counts();
    sim.faults().fail_next(Matcher::new("get", "secrets").named("default", "f"), 1, 503, None);
    sim.faults().fail_next(Matcher::new("get", "secrets").named("default", "f"), 1, 429, Some(1));
    let t = std::time::Instant::now();
    api.get("f").await.expect("retries should absorb two transient failures");
    assert_eq!(sim.faults().count("get", "secrets"), 3);
    assert!(t.elapsed() >= Duration::from_secs(1), "Retry-After was not sent or not honoured");
    sim.faults().fail_next(Matcher::new("get", "secrets").named("default", "other"), 1, 403, None);
    assert_eq!(api_error(api.get("other").await.expect_err("no 403")).1, "Forbidden");

    sim.faults().add_latency(Matcher::new("get", "secrets"), Duration::from_millis(300));
    let t = std::time::Instant::now();
    api.get("f").await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(300));
    sim.faults().clear();

    sim.faults().pause();
    let gets = sim.faults().count("get", "secrets");
    let pending = tokio::spawn({
        let api = api.clone();
        async move { api.get("f").await.map(|_| ()) }
    });
    // The request has arrived (it is counted on arrival) and is held.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while sim.faults().count("get", "secrets") == gets {
        assert!(tokio::time::Instant::now() < deadline, "the request never reached the paused API");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!pending.is_finished(), "a paused API answered");
    sim.faults().resume();
    tokio::time::timeout(Duration::from_secs(5), pending)
        .await
        .expect("resume did not release the request")
        .unwrap()
        .unwrap();

    sim.faults().reset_counts();
    api.get("f").await.unwrap();
    api.list(&ListParams::default()).await.unwrap();
    assert_eq!(sim.faults().count("get", "secrets"), 1);
    assert_eq!(sim.faults().count("list", "secrets"), 1);
    assert_eq!(sim.faults().count("create", "secrets"), 0);
}

/// A client that names itself, as the operator does with its leader-election identity.
fn client_named(sim: &KubeSim, agent: &str) -> kube::Client {
    let mut config = kube::Config::new(sim.url().parse().unwrap());
    config.default_namespace = "default".into();
    config.headers.push((http::header::USER_AGENT, http::HeaderValue::from_str(agent).unwrap()));
    kube::Client::try_from(config).unwrap()
}

#[tokio::test]
async fn one_client_can_be_cut_off_and_every_answer_is_logged() {
    let sim = start().await;
    let a: Api<Secret> = Api::default_namespaced(client_named(&sim, "op/1 (a_1)"));
    let b: Api<Secret> = Api::default_namespaced(client_named(&sim, "op/1 (b_2)"));
    sim.faults().fail_next(
        Matcher { verb: Some("create".into()), ..Matcher::from_client("(a_1)") },
        u32::MAX,
        500,
        None,
    );
    let (code, _, _) = api_error(a.create(&PostParams::default(), &secret("x", json!({}))).await.unwrap_err());
    assert_eq!(code, 500);
    b.create(&PostParams::default(), &secret("x", json!({}))).await.expect("the other client is not cut off");
    a.get("x").await.expect("only the matched verb fails");
    let log: Vec<(String, String, u16, bool)> = sim
        .faults()
        .requests()
        .into_iter()
        .map(|r| (r.verb.clone(), r.user_agent.clone(), r.code, r.is_successful_write()))
        .collect();
    assert_eq!(
        log,
        [
            ("create".into(), "op/1 (a_1)".into(), 500, false),
            ("create".into(), "op/1 (b_2)".into(), 201, true),
            ("get".into(), "op/1 (a_1)".into(), 200, false),
        ]
    );
    sim.faults().clear_requests();
    assert!(sim.faults().requests().is_empty());
}

#[tokio::test]
async fn events_are_one_store_under_two_apis() {
    let sim = start().await;
    let new: Api<k8s_openapi::api::events::v1::Event> = Api::default_namespaced(sim.client());
    let ev: k8s_openapi::api::events::v1::Event = serde_json::from_value(json!({
        "metadata": {"name": "e1"}, "eventTime": "2026-01-01T00:00:00.000000Z", "reason": "Tested", "note": "hello",
        "type": "Normal", "action": "Test", "reportingController": "tests", "reportingInstance": "t-1",
        "regarding": {"kind": "Secret", "name": "x", "namespace": "default"}
    }))
    .unwrap();
    new.create(&PostParams::default(), &ev).await.unwrap();
    let core: Api<k8s_openapi::api::core::v1::Event> = Api::default_namespaced(sim.client());
    let c = core.get("e1").await.unwrap();
    assert_eq!(c.message.as_deref(), Some("hello"));
    assert_eq!(c.involved_object.name.as_deref(), Some("x"));
    assert_eq!(c.reporting_component.as_deref(), Some("tests"));

    // A merge patch of the series alone (as recorders send for a repeat) keeps the rest, in both
    // forms.
    let series = json!({"series": {"count": 2, "lastObservedTime": "2026-01-01T00:01:00.000000Z"}});
    let patched = new.patch("e1", &PatchParams::default(), &Patch::Merge(&series)).await.unwrap();
    assert_eq!(patched.series.as_ref().map(|s| s.count), Some(2));
    assert_eq!(
        (patched.note.as_deref(), patched.regarding.and_then(|r| r.name).as_deref()),
        (Some("hello"), Some("x"))
    );
    let c = core.get("e1").await.unwrap();
    assert_eq!((c.message.as_deref(), c.involved_object.name.as_deref()), (Some("hello"), Some("x")));
    assert_eq!(c.series.and_then(|s| s.count), Some(2));
}

#[tokio::test]
async fn apply_removes_a_struct_whose_fields_are_no_longer_applied() {
    let sim = start().await;
    let api = widgets(&sim).await;
    let mut w = widget("s", json!({"size": 1}));
    w.data["status"] = json!({});
    api.create(&PostParams::default(), &w).await.unwrap();
    let with = json!({"apiVersion": "example.com/v1", "kind": "Widget", "status": {"phase": "Failed"}});
    let s = api.patch_status("s", &PatchParams::apply("op").force(), &Patch::Apply(&with)).await.unwrap();
    assert_eq!(s.data["status"]["phase"], "Failed");
    let without = json!({"apiVersion": "example.com/v1", "kind": "Widget", "status": {"observed": {}}});
    let s = api.patch_status("s", &PatchParams::apply("op").force(), &Patch::Apply(&without)).await.unwrap();
    assert!(s.data["status"].get("phase").is_none(), "{:?}", s.data);
    // Nested: a struct whose only field stops being applied disappears with it.
    let nested = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "n", "annotations": {"a": "1"}}, "data": {"k": "v"}});
    let cms: Api<ConfigMap> = Api::default_namespaced(sim.client());
    cms.patch("n", &PatchParams::apply("op"), &Patch::Apply(&nested)).await.unwrap();
    let fewer = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "n"}, "data": {"k": "v"}});
    let cm = cms.patch("n", &PatchParams::apply("op"), &Patch::Apply(&fewer)).await.unwrap();
    assert_eq!(cm.metadata.annotations, None, "an emptied map is removed, not left as {{}}");
}

#[tokio::test]
async fn cel_validation_rules_are_enforced() {
    let sim = start().await;
    let crds: Api<DynamicObject> = Api::all_with(
        sim.client(),
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("apiextensions.k8s.io", "v1", "CustomResourceDefinition"),
            "customresourcedefinitions",
        ),
    );
    let crd: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "ranges.example.com"},
        "spec": {
            "group": "example.com", "scope": "Namespaced",
            "names": {"plural": "ranges", "singular": "range", "kind": "Range"},
            "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {
                "type": "object",
                "properties": {"spec": {
                    "type": "object",
                    "x-kubernetes-validations": [
                        {"rule": "self.min <= self.max", "message": "min must not exceed max"},
                        {"rule": "self.id == oldSelf.id", "message": "id is immutable"}
                    ],
                    "properties": {"min": {"type": "integer"}, "max": {"type": "integer"}, "id": {"type": "string"}}
                }}
            }}}]
        }
    }))
    .unwrap();
    crds.create(&PostParams::default(), &crd).await.unwrap();
    let ar = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("example.com", "v1", "Range"), "ranges");
    let api: Api<DynamicObject> = Api::namespaced_with(sim.client(), "default", &ar);
    let range = |min: i64, max: i64, id: &str| -> DynamicObject {
        serde_json::from_value(json!({"apiVersion": "example.com/v1", "kind": "Range", "metadata": {"name": "r"}, "spec": {"min": min, "max": max, "id": id}}))
            .unwrap()
    };
    let (code, _, message) =
        api_error(api.create(&PostParams::default(), &range(5, 1, "a")).await.expect_err("CEL rule not enforced"));
    assert_eq!(code, 422);
    assert!(message.contains("min must not exceed max") && message.contains("spec"), "{message}");
    api.create(&PostParams::default(), &range(1, 5, "a")).await.unwrap();
    let patch = json!({"spec": {"id": "b"}});
    let (code, _, message) = api_error(
        api.patch("r", &PatchParams::default(), &Patch::Merge(&patch)).await.expect_err("transition rule not enforced"),
    );
    assert_eq!(code, 422);
    assert!(message.contains("id is immutable"), "{message}");
    api.patch("r", &PatchParams::default(), &Patch::Merge(json!({"spec": {"max": 9}}))).await.unwrap();

    // Ratcheting: a rule added later that the stored spec breaks fails only writes that change
    // the spec; a write that leaves it alone (labels here, a status write alike) goes through.
    let mut stricter = crds.get("ranges.example.com").await.unwrap();
    stricter.data["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["x-kubernetes-validations"]
        .as_array_mut()
        .unwrap()
        .push(json!({"rule": "self.min > 3", "message": "min must exceed 3"}));
    crds.replace("ranges.example.com", &PostParams::default(), &stricter).await.unwrap();
    api.patch("r", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}}))).await.unwrap();
    let (code, _, message) = api_error(
        api.patch("r", &PatchParams::default(), &Patch::Merge(json!({"spec": {"max": 8}})))
            .await
            .expect_err("a changed spec is validated by the new rule"),
    );
    assert_eq!(code, 422);
    assert!(message.contains("min must exceed 3") && message.contains("spec"), "{message}");
}

#[tokio::test]
async fn fault_injection_over_http() {
    let sim = start().await;
    let api: Api<Secret> = Api::default_namespaced(sim.client());
    let client = sim.client();
    let post = |path: &str, body: Value| {
        let client = client.clone();
        let req =
            http::Request::post(path).header("content-type", "application/json").body(body.to_string().into_bytes());
        async move { client.request_text(req.unwrap()).await }
    };
    post("/kubesim/fail", json!({"verb": "get", "resource": "secrets", "count": 1, "code": 500})).await.unwrap();
    assert_eq!(api_error(api.get("x").await.expect_err("no failure")).0, 500);
    assert_eq!(api_error(api.get("x").await.expect_err("x does not exist")).0, 404);
    let counts: Value = serde_json::from_str(
        &client.request_text(http::Request::get("/kubesim/counts").body(vec![]).unwrap()).await.unwrap(),
    )
    .unwrap_or_default();
    assert_eq!(counts["get secrets"], 2);
    post("/kubesim/latency", json!({"verb": "list", "resource": "secrets", "millis": 200})).await.unwrap();
    let t = std::time::Instant::now();
    api.list(&ListParams::default()).await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(200));
    let rv = sim.resource_version();
    post("/kubesim/compact", json!({})).await.unwrap();
    let mut stream = api.watch(&WatchParams::default(), &rv.to_string()).await.unwrap().boxed();
    match tokio::time::timeout(Duration::from_secs(3), stream.try_next()).await {
        Ok(Ok(Some(WatchEvent::Error(e)))) => assert_eq!(e.code, 410),
        other => panic!("expected 410 after compaction over HTTP, got {other:?}"),
    }
}

#[tokio::test]
async fn filtered_watches_see_objects_enter_and_leave_the_selection() {
    let sim = start().await;
    let api: Api<Secret> = Api::default_namespaced(sim.client());
    let rv = sim.resource_version().to_string();
    let mut stream = api.watch(&WatchParams::default().labels("team=a").timeout(10), &rv).await.unwrap().boxed();
    api.create(&PostParams::default(), &secret("s", json!({}))).await.unwrap();
    let label = |v: Option<&str>| json!({"metadata": {"labels": {"team": v}}});
    api.patch("s", &PatchParams::default(), &Patch::Merge(label(Some("a")))).await.unwrap();
    api.patch("s", &PatchParams::default(), &Patch::Merge(json!({"data": {"k": "dg=="}}))).await.unwrap();
    api.patch("s", &PatchParams::default(), &Patch::Merge(label(Some("b")))).await.unwrap();
    let mut kinds = vec![];
    while kinds.len() < 3 {
        match tokio::time::timeout(Duration::from_secs(3), stream.try_next()).await {
            Ok(Ok(Some(WatchEvent::Added(_)))) => kinds.push("ADDED"),
            Ok(Ok(Some(WatchEvent::Modified(_)))) => kinds.push("MODIFIED"),
            Ok(Ok(Some(WatchEvent::Deleted(s)))) => {
                assert_eq!(s.metadata.labels.and_then(|l| l.get("team").cloned()).as_deref(), Some("b"));
                kinds.push("DELETED")
            }
            Ok(Ok(Some(WatchEvent::Bookmark(_)))) => {}
            other => panic!("unexpected: {other:?}"),
        }
    }
    assert_eq!(kinds, vec!["ADDED", "MODIFIED", "DELETED"]);
}

#[tokio::test]
async fn streaming_lists_send_initial_events_and_their_end() {
    let sim = start().await;
    let api: Api<Secret> = Api::default_namespaced(sim.client());
    for name in ["x", "y"] {
        api.create(&PostParams::default(), &secret(name, json!({}))).await.unwrap();
    }
    let (reader, writer) = reflector::store();
    let stream =
        reflector(writer, watcher(api.clone(), watcher::Config::default().streaming_lists())).applied_objects();
    let task = tokio::spawn(async move {
        futures::pin_mut!(stream);
        while stream.next().await.is_some() {}
    });
    tokio::time::timeout(Duration::from_secs(5), reader.wait_until_ready())
        .await
        .expect("the initial-events-end bookmark never came")
        .unwrap();
    assert_eq!(reader.len(), 2);
    assert_eq!(sim.faults().count("list", "secrets"), 0, "a streaming list needs no list request");
    task.abort();
}

#[tokio::test]
async fn apply_removes_a_keyed_list_element_its_manager_stops_applying() {
    let sim = start().await;
    let api: Api<Secret> = Api::default_namespaced(sim.client());
    let owner = json!({"metadata": {"name": "owner"}, "data": {}});
    let owner = api.create(&PostParams::default(), &serde_json::from_value(owner).unwrap()).await.unwrap();
    let reference = json!([{"apiVersion": "v1", "kind": "Secret", "name": "owner", "uid": owner.metadata.uid, "controller": true, "blockOwnerDeletion": true}]);
    let p = PatchParams::apply("m").force();
    let with = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "ownerReferences": reference, "labels": {"a": "1"}}});
    api.patch("s", &p, &Patch::Apply(&with)).await.unwrap();
    let without = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "labels": {"a": "1"}}});
    let s = api.patch("s", &p, &Patch::Apply(&without)).await.unwrap();
    assert_eq!(s.metadata.owner_references, None, "the whole element goes, key and all");
    assert_eq!(s.metadata.labels.unwrap_or_default().get("a").map(String::as_str), Some("1"));
}

/// A CRD of kind Body in a fresh group: `spec.json` has the schema `json`, `spec.text` is a
/// string; `root` and `spec` are the rules on the root and on `spec`.
fn body_crd(json: Value, root: Value, spec: Value) -> DynamicObject {
    let group = format!("{}.example.com", fresh("untyped"));
    serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("bodies.{group}")},
        "spec": {
            "group": group, "scope": "Namespaced",
            "names": {"plural": "bodies", "singular": "body", "kind": "Body"},
            "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {
                "type": "object",
                "x-kubernetes-validations": root,
                "properties": {"spec": {
                    "type": "object",
                    "x-kubernetes-validations": spec,
                    "properties": {"json": json, "text": {"type": "string"}}
                }}
            }}}]
        }
    }))
    .unwrap()
}

/// A CEL rule that names a field the schema gives no type (`x-kubernetes-preserve-unknown-fields`
/// alone) is refused with the CRD: the API server leaves such a field out of CEL's type of the
/// object and fails to compile the rule. Held against the real API server (1.34, 1.37), which
/// refused our own CRD for it while kubesim accepted it.
#[tokio::test]
async fn a_cel_rule_on_a_field_without_a_type_is_refused_with_the_crd() {
    let (_sim, client) = cluster().await;
    let crds: Api<DynamicObject> = Api::all_with(
        client,
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("apiextensions.k8s.io", "v1", "CustomResourceDefinition"),
            "customresourcedefinitions",
        ),
    );
    let untyped = json!({"x-kubernetes-preserve-unknown-fields": true});
    let one_of = json!([{"rule": "has(self.json) != has(self.text)", "message": "set one of json and text"}]);
    let (code, reason, message) = api_error(
        crds.create(&PostParams::default(), &body_crd(untyped.clone(), json!([]), one_of.clone()))
            .await
            .expect_err("a rule on an untyped field"),
    );
    assert_eq!((code, reason.as_str()), (422, "Invalid"), "{message}");
    assert!(
        message.contains(
            "spec.validation.openAPIV3Schema.properties[spec].x-kubernetes-validations[0].rule: Invalid value: \
             {\"Rule\":\"has(self.json) != has(self.text)\",\"Message\":\"set one of json and text\",\
             \"MessageExpression\":\"\",\"Reason\":null,\"FieldPath\":\"\",\"OptionalOldSelf\":null}: \
             compilation failed: ERROR: <input>:1:4: undefined field 'json'\n | has(self.json) != has(self.text)\n | ...^"
        ),
        "{message}"
    );

    // The same from the root, through a typed field.
    let (code, _, message) = api_error(
        crds.create(
            &PostParams::default(),
            &body_crd(untyped.clone(), json!([{"rule": "has(self.spec.json)"}]), json!([])),
        )
        .await
        .expect_err("a chain to an untyped field"),
    );
    assert_eq!(code, 422, "{message}");
    assert!(
        message.contains("spec.validation.openAPIV3Schema.x-kubernetes-validations[0].rule: Invalid value: ")
            && message.contains("compilation failed: ERROR: <input>:1:4: undefined field 'json'"),
        "{message}"
    );

    // Accepted: the field with a type, and `self.json` inside a string, which is no field.
    let typed = json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true});
    let in_string = json!([{"rule": "self.text != 'self.json'"}]);
    for accepted in [body_crd(typed, json!([]), one_of), body_crd(untyped, json!([]), in_string)] {
        let name = accepted.metadata.name.clone().unwrap();
        crds.create(&PostParams::default(), &accepted).await.unwrap();
        crds.delete(&name, &Default::default()).await.unwrap();
    }
}
