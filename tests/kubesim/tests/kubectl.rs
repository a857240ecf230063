//! kubesim driven by the real kubectl, as users and the README drive it.

#![cfg(test)]

use std::process::{Command, Output};
use std::time::Duration;

use kubesim::KubeSim;

fn kubectl_path() -> String {
    std::env::var("KUBECTL").unwrap_or_else(|_| "/usr/bin/kubectl".to_string())
}

struct Kubectl<'a> {
    sim: &'a KubeSim,
}

impl Kubectl<'_> {
    fn output(&self, args: &[&str], stdin: Option<&str>) -> Output {
        use std::io::Write;
        let mut cmd = Command::new(kubectl_path());
        cmd.args(args).env("KUBECONFIG", self.sim.kubeconfig_path()).env("HOME", std::env::temp_dir());
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child =
            cmd.spawn().unwrap_or_else(|e| panic!("kubectl is required for these tests ({}): {e}", kubectl_path()));
        if let Some(input) = stdin {
            child.stdin.take().map(|mut s| s.write_all(input.as_bytes())).transpose().unwrap();
        } else {
            drop(child.stdin.take());
        }
        child.wait_with_output().unwrap()
    }

    /// Runs kubectl and returns stdout; fails the test when kubectl fails.
    fn ok(&self, args: &[&str]) -> String {
        self.ok_with(args, None)
    }

    fn ok_with(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.output(args, stdin);
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.status.success(), "kubectl {args:?} failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
        stdout
    }

    /// Runs kubectl expecting failure; returns stderr.
    fn fails(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.output(args, stdin);
        assert!(!out.status.success(), "kubectl {args:?} should have failed: {}", String::from_utf8_lossy(&out.stdout));
        String::from_utf8_lossy(&out.stderr).to_string()
    }
}

const CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wd]}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    additionalPrinterColumns:
    - {name: Size, type: integer, jsonPath: .spec.size}
    - {name: Ready, type: string, jsonPath: '.status.conditions[?(@.type=="Ready")].status'}
    - {name: Age, type: date, jsonPath: .metadata.creationTimestamp}
    schema:
      openAPIV3Schema:
        type: object
        description: A widget for tests.
        properties:
          spec:
            type: object
            description: What the widget should be.
            required: [size]
            properties:
              size: {type: integer, minimum: 1, description: How big it is.}
              color: {type: string, enum: [red, blue]}
          status:
            type: object
            properties:
              conditions:
                type: array
                items:
                  type: object
                  properties: {type: {type: string}, status: {type: string}}
"#;

fn widget(name: &str, size: i64) -> String {
    format!("apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: {name}\nspec:\n  size: {size}\n")
}

async fn start() -> KubeSim {
    KubeSim::start().await.expect("kubesim")
}

#[tokio::test(flavor = "multi_thread")]
async fn apply_get_patch_and_delete_custom_resources() {
    let sim = start().await;
    let k = Kubectl { sim: &sim };
    tokio::task::block_in_place(|| {
        assert!(
            k.ok_with(&["apply", "-f", "-"], Some(CRD))
                .contains("customresourcedefinition.apiextensions.k8s.io/widgets.example.com created")
        );
        assert!(k.ok_with(&["apply", "-f", "-"], Some(&widget("w1", 3))).contains("widget.example.com/w1 created"));
        assert!(
            k.ok_with(&["apply", "--server-side", "-f", "-"], Some(&widget("w2", 4)))
                .contains("widget.example.com/w2 serverside-applied")
        );
        // Client-side validation is on by default: kubectl asks the server to validate strictly.
        let err = k.fails(
            &["apply", "-f", "-"],
            Some("apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: bad}\nspec: {size: 1, nope: 1}\n"),
        );
        assert!(err.contains("unknown field \"spec.nope\""), "{err}");
        let err = k.fails(&["apply", "-f", "-"], Some(&widget("bad", 0)));
        assert!(
            err.contains("spec.size: Invalid value: 0: spec.size in body should be greater than or equal to 1"),
            "{err}"
        );

        let table = k.ok(&["get", "widgets"]);
        let header: Vec<&str> = table.lines().next().unwrap_or_default().split_whitespace().collect();
        assert_eq!(header, vec!["NAME", "SIZE", "READY", "AGE"], "{table}");
        assert!(table.lines().any(|l| l.starts_with("w1") && l.contains(" 3 ")), "{table}");
        assert!(k.ok(&["get", "wd", "w2", "-o", "yaml"]).contains("size: 4"));
        assert!(k.ok(&["explain", "widget.spec.size"]).contains("How big it is."));

        k.ok(&["label", "wd", "w1", "tier=gold"]);
        k.ok(&["annotate", "wd", "w1", "note=hello"]);
        let labelled = k.ok(&["get", "wd", "-l", "tier=gold", "-o", "name"]);
        assert_eq!(labelled.trim(), "widget.example.com/w1");
        k.ok(&["patch", "wd", "w1", "--type=merge", "-p", r#"{"spec":{"size":7}}"#]);
        k.ok(&["patch", "wd", "w1", "--type=json", "-p", r#"[{"op":"add","path":"/spec/color","value":"blue"}]"#]);
        let jp = k.ok(&[
            "get",
            "wd",
            "w1",
            "-o",
            "jsonpath={.spec.size} {.spec.color} {.metadata.annotations.note} {.metadata.generation}",
        ]);
        assert_eq!(jp, "7 blue hello 3");

        k.ok(&["patch", "wd", "w1", "--type=merge", "-p", r#"{"metadata":{"finalizers":["example.com/hold"]}}"#]);
        k.ok(&["delete", "wd", "w1", "--wait=false"]);
        assert!(!k.ok(&["get", "wd", "w1", "-o", "jsonpath={.metadata.deletionTimestamp}"]).is_empty());
        k.ok(&["patch", "wd", "w1", "--type=json", "-p", r#"[{"op":"remove","path":"/metadata/finalizers"}]"#]);
        let err = k.fails(&["get", "wd", "w1"], None);
        assert!(err.contains("widgets.example.com \"w1\" not found"), "{err}");
        k.ok(&["delete", "wd", "w2"]);
        assert!(k.ok(&["get", "wd", "-A"]).is_empty());
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_all_namespaces_watch_and_wait() {
    let sim = start().await;
    let k = Kubectl { sim: &sim };
    tokio::task::block_in_place(|| {
        k.ok(&["create", "namespace", "team-a"]);
        assert!(
            k.ok(&["create", "secret", "generic", "creds", "-n", "team-a", "--from-literal=client_id=abc"])
                .contains("secret/creds created")
        );
        let all = k.ok(&["get", "secrets", "-A"]);
        assert!(
            all.lines()
                .any(|l| l.starts_with("team-a") && l.contains("creds") && l.contains("Opaque") && l.contains(" 1 ")),
            "{all}"
        );
        let data = k.ok(&["get", "secret", "creds", "-n", "team-a", "-o", "jsonpath={.data.client_id}"]);
        assert_eq!(data, "YWJj");
        k.ok_with(&["apply", "--server-side", "-f", "-"], Some(CRD));
        k.ok_with(&["apply", "-f", "-"], Some(&widget("w", 1)));
    });

    // `kubectl get -w` sees a change made after it started.
    let watches = sim.faults().count("watch", "widgets");
    let mut watcher = std::process::Command::new(kubectl_path())
        .args(["get", "widgets", "-w", "--request-timeout=20s"])
        .env("KUBECONFIG", sim.kubeconfig_path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_request(&sim, "watch", "widgets", watches);
    tokio::task::block_in_place(|| k.ok(&["patch", "wd", "w", "--type=merge", "-p", r#"{"spec":{"size":42}}"#]));
    let lines = lines_of(watcher.stdout.take().unwrap());
    let mut seen = vec![];
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                let size = line.split_whitespace().nth(1).map(String::from);
                seen.push(line.clone());
                if line.starts_with("w ") && size.as_deref() == Some("42") {
                    break;
                }
            }
            Err(_) => panic!("kubectl get -w did not show the change; it printed: {seen:?}"),
        }
    }
    let _ = watcher.kill();
    let _ = watcher.wait();

    // `kubectl wait --for=condition=Ready` returns once status says so.
    let watches = sim.faults().count("watch", "widgets");
    let waiter = std::process::Command::new(kubectl_path())
        .args(["wait", "--for=condition=Ready", "widget/w", "--timeout=20s"])
        .env("KUBECONFIG", sim.kubeconfig_path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // kubectl wait reads the object, then watches it: patch once it is watching.
    wait_for_request(&sim, "watch", "widgets", watches);
    let client = reqwest_free_status_patch(&sim).await;
    assert!(client, "status patch failed");
    let out = tokio::task::block_in_place(|| waiter.wait_with_output()).unwrap();
    assert!(out.status.success(), "kubectl wait failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("condition met"));
}

/// Waits until kubesim has seen more than `before` requests of `verb` on `resource`.
fn wait_for_request(sim: &KubeSim, verb: &str, resource: &str, before: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while sim.faults().count(verb, resource) <= before {
        assert!(std::time::Instant::now() < deadline, "no {verb} request on {resource} arrived");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The lines a child writes, as they come.
fn lines_of(out: std::process::ChildStdout) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

async fn reqwest_free_status_patch(sim: &KubeSim) -> bool {
    use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
    let ar = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("example.com", "v1", "Widget"), "widgets");
    let api: Api<DynamicObject> = Api::namespaced_with(sim.client(), "default", &ar);
    let status = serde_json::json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}});
    api.patch_status("w", &PatchParams::default(), &Patch::Merge(&status)).await.is_ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn client_side_apply_of_built_in_kinds_and_explain() {
    let sim = start().await;
    let k = Kubectl { sim: &sim };
    tokio::task::block_in_place(|| {
        let v1 = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d, labels: {tier: web}}\nspec:\n  replicas: 1\n  selector: {matchLabels: {a: b}}\n  template:\n    metadata: {labels: {a: b}}\n    spec:\n      containers:\n      - {name: c, image: i, env: [{name: A, value: \"1\"}]}\n";
        let v2 = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec:\n  replicas: 2\n  selector: {matchLabels: {a: b}}\n  template:\n    metadata: {labels: {a: b}}\n    spec:\n      containers:\n      - {name: c, image: i2}\n";
        assert!(k.ok_with(&["apply", "-f", "-"], Some(v1)).contains("deployment.apps/d created"));
        assert!(k.ok_with(&["apply", "-f", "-"], Some(v2)).contains("deployment.apps/d configured"));
        // The three-way strategic merge removes what the manifest no longer has.
        let got = k.ok(&[
            "get",
            "deploy",
            "d",
            "-o",
            "jsonpath={.spec.replicas} {.metadata.labels} {.spec.template.spec.containers}",
        ]);
        assert_eq!(got, "2  [{\"image\":\"i2\",\"name\":\"c\"}]");
        assert!(k.ok(&["explain", "secret.data"]).contains("Data contains the secret data"));
        assert!(k.ok(&["explain", "deployment.spec.replicas"]).contains("<integer>"));
    });
}
