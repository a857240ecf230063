//! The Helm chart (`charts/tokensource-operator`), with the `helm` commands of Helm 3 and 4 built
//! from their Go modules (`tests/helm/`): it lints strictly, every documented combination of
//! values (`ci/*-values.yaml`) renders to objects the Kubernetes schemas accept, the defaults
//! and each feature render exactly what `deploy/` and its component install (ignoring only
//! Helm's labels), `values.schema.json` refuses typos, and the chart's README lists every value.

#![cfg(test)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::{WAIT, check, eventually};
use serde_json::Value;

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/tokensource-operator");

/// Each values file of `ci/` and the kustomize components that install the same (None: no
/// kustomize variant has these values; rendered and validated only).
const VARIANTS: [(&str, Option<&[&str]>); 9] = [
    ("base", Some(&[])),
    ("namespaced", Some(&["components/namespaced"])),
    ("network-policy", Some(&["components/network-policy"])),
    ("rollout-restart", Some(&["components/rollout-restart"])),
    ("audit-consumers", Some(&["components/audit-consumers"])),
    ("workload-identity", Some(&["components/workload-identity"])),
    ("monitoring", Some(&["monitoring"])),
    (
        "everything",
        Some(&[
            "monitoring",
            "components/network-policy",
            "components/rollout-restart",
            "components/audit-consumers",
            "components/workload-identity",
        ]),
    ),
    ("tuned", None),
];

/// The labels Helm's conventions add, which `deploy/` does not carry.
const HELM_LABELS: [&str; 4] =
    ["app.kubernetes.io/instance", "app.kubernetes.io/version", "app.kubernetes.io/managed-by", "helm.sh/chart"];

/// Whether there is no way to get `helm` here and the user asked for no Go: the kubesim-only
/// run (`TOKENSOURCE_SKIP_CONTROLPLANE=1 ./test` on a machine without Go). Says so.
fn skipped() -> bool {
    let given = std::env::var_os("TOKENSOURCE_HELM3").is_some() && std::env::var_os("TOKENSOURCE_HELM4").is_some();
    let go = Command::new("go").arg("version").output().is_ok_and(|o| o.status.success());
    let skip = !given && !go && std::env::var_os("TOKENSOURCE_SKIP_CONTROLPLANE").is_some();
    if skip {
        eprintln!("helm: not built (no Go, TOKENSOURCE_SKIP_CONTROLPLANE is set): the chart's tests are skipped");
    }
    skip
}

/// The `helm` of Helm `major` (3 or 4): `$TOKENSOURCE_HELM<major>`, else built (once, cached
/// outside the work tree) by `tests/helm/build`.
fn helm(major: u32) -> &'static Path {
    static HELM: [OnceLock<PathBuf>; 2] = [OnceLock::new(), OnceLock::new()];
    HELM[(major - 3) as usize].get_or_init(|| {
        if let Ok(path) = std::env::var(format!("TOKENSOURCE_HELM{major}")) {
            return PathBuf::from(path);
        }
        let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/helm/build"))
            .arg(major.to_string())
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("tests/helm/build runs");
        assert!(out.status.success(), "building helm {major} failed (it needs Go 1.26 and its module proxy)");
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
}

/// `helm template` of the chart as release `tokensource-operator` in `tokensource-system` (the
/// names `deploy/` uses) with `values` and `args`: success, stdout, stderr.
fn template(major: u32, values: Option<&Path>, args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(helm(major));
    cmd.args(["template", "tokensource-operator", CHART, "--namespace", "tokensource-system"]);
    if let Some(v) = values {
        cmd.arg("--values").arg(v);
    }
    let out = cmd.args(args).output().expect("helm runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn values_file(variant: &str) -> PathBuf {
    Path::new(CHART).join("ci").join(format!("{variant}-values.yaml"))
}

/// Objects by kind, namespace and name, without Helm's labels and its keep annotation; the
/// Namespace `deploy/` creates is left out (with Helm, `--create-namespace` or the user does).
fn objects(docs: Vec<Value>) -> BTreeMap<String, Value> {
    fn strip(v: &mut Value) {
        match v {
            Value::Object(map) => {
                for (key, child) in map.iter_mut() {
                    // `selector` of a Service is a map of labels too.
                    if let ("labels" | "matchLabels" | "selector", Value::Object(labels)) = (key.as_str(), &mut *child)
                    {
                        for label in HELM_LABELS {
                            labels.remove(label);
                        }
                    }
                    if let ("annotations", Value::Object(annotations)) = (key.as_str(), &mut *child) {
                        annotations.remove("helm.sh/resource-policy");
                    }
                    strip(child);
                }
                // Left empty by the above (the CRD carries Helm's labels only).
                map.retain(|k, v| {
                    !(matches!(k.as_str(), "annotations" | "labels") && v.as_object().is_some_and(|a| a.is_empty()))
                });
            }
            Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    docs.into_iter()
        .filter(|d| !d.is_null() && d["kind"] != "Namespace")
        .map(|mut d| {
            strip(&mut d);
            let key = format!(
                "{} {}/{}",
                d["kind"].as_str().unwrap_or_default(),
                d["metadata"]["namespace"].as_str().unwrap_or_default(),
                d["metadata"]["name"].as_str().unwrap_or_default()
            );
            (key, d)
        })
        .collect()
}

fn parse(text: &str) -> Vec<Value> {
    serde_saphyr::from_multiple(text).unwrap_or_else(|e| panic!("helm's output is not YAML: {e}\n{text}"))
}

#[test]
fn the_chart_lints_strictly_with_helm_3_and_4_for_every_documented_combination() {
    if skipped() {
        return;
    }
    for major in [3, 4] {
        for (variant, _) in VARIANTS {
            let out = Command::new(helm(major))
                .args(["lint", "--strict", CHART, "--values"])
                .arg(values_file(variant))
                .output()
                .expect("helm runs");
            let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            assert!(
                out.status.success() && text.contains("0 chart(s) failed"),
                "helm {major} lint, {variant}:\n{text}"
            );
        }
    }
}

#[test]
fn the_defaults_and_each_feature_render_what_deploy_and_its_component_install() {
    if skipped() {
        return;
    }
    for major in [3, 4] {
        for (variant, components) in VARIANTS {
            let Some(components) = components else { continue };
            let (ok, text, err) = template(major, Some(&values_file(variant)), &[]);
            assert!(ok, "helm {major} template, {variant}: {err}");
            let chart = objects(parse(&text));
            let (docs, _) = common::kustomize(&format!("helm-{major}-{variant}"), components);
            let kustomized = objects(docs);
            let names = |m: &BTreeMap<String, Value>| m.keys().cloned().collect::<Vec<_>>();
            assert_eq!(names(&chart), names(&kustomized), "helm {major}, {variant}: the objects differ");
            for (key, want) in &kustomized {
                let have = &chart[key];
                assert!(
                    have == want,
                    "helm {major}, {variant}: {key} differs\nchart:\n{}\ndeploy/:\n{}",
                    serde_json::to_string_pretty(have).unwrap_or_default(),
                    serde_json::to_string_pretty(want).unwrap_or_default()
                );
            }
        }
    }
}

#[test]
fn every_documented_combination_passes_the_kubernetes_schemas() {
    if skipped() {
        return;
    }
    for (variant, _) in VARIANTS {
        let (ok, text, err) = template(4, Some(&values_file(variant)), &[]);
        assert!(ok, "{variant}: {err}");
        assert!(parse(&text).iter().filter(|d| !d.is_null()).count() >= 8, "{variant}: too few objects");
        let file = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("helm-{variant}.yaml"));
        std::fs::write(&file, &text).unwrap();
        common::validate_strict(&file, variant);
    }
}

#[test]
fn the_tuned_values_reach_the_objects() {
    if skipped() {
        return;
    }
    let (ok, text, err) = template(3, Some(&values_file("tuned")), &[]);
    assert!(ok, "{err}");
    let docs = parse(&text);
    let find = |kind: &str| docs.iter().find(|d| d["kind"] == kind).unwrap_or_else(|| panic!("no {kind}"));
    let deployment = find("Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(
        container["image"],
        "registry.example.com/mirror/tokensource-operator@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    );
    let args: Vec<&str> = container["args"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    for arg in [
        "--leader-elect",
        "--leader-election-namespace=kube-system",
        "--leader-election-lease-duration=30s",
        "--leader-election-renew-deadline=20s",
        "--leader-election-retry-period=4s",
        "--allow-endpoint-cidrs=10.96.0.0/12,fd00::/8",
        "--allow-endpoint-hosts=login.example.com,*.auth.example.net",
        "--concurrency=32",
    ] {
        assert!(args.contains(&arg), "{arg} missing: {args:?}");
    }
    assert_eq!(deployment["spec"]["replicas"], 3);
    assert_eq!(pod["serviceAccountName"], "token-operator");
    assert_eq!(pod["priorityClassName"], "system-cluster-critical");
    assert!(pod["affinity"]["nodeAffinity"].is_object(), "the affinity given replaces the default");
    assert_eq!(deployment["spec"]["template"]["metadata"]["labels"]["team"], "platform");
    // The Lease's Role is where the Lease is; the CRD is not kept when asked not to be.
    let role = docs.iter().find(|d| d["kind"] == "Role").expect("the leader election Role");
    assert_eq!(role["metadata"]["namespace"], "kube-system");
    let crd = find("CustomResourceDefinition");
    assert!(crd["metadata"]["annotations"]["helm.sh/resource-policy"].is_null());
    let (_, defaults, _) = template(3, None, &[]);
    let crd = parse(&defaults).into_iter().find(|d| d["kind"] == "CustomResourceDefinition").expect("the CRD");
    assert_eq!(crd["metadata"]["annotations"]["helm.sh/resource-policy"], "keep", "kept by default");
}

#[test]
fn mistakes_in_values_fail_with_a_clear_message() {
    if skipped() {
        return;
    }
    for (major, set, says) in [
        (3, "replicaCont=2", "additional properties 'replicaCont' not allowed"),
        (4, "replicaCont=2", "replicaCont"),
        (3, "replicaCount=two", "replicaCount"),
        (3, "scope.type=Namespaced", "scope/type"),
        (3, "scope.type=Namespace", "scope/namespace"),
        (3, "image.pullPolicy=Sometimes", "pullPolicy"),
        (3, "endpointPolicy.allowCIDRs={10.0.0.0}", "allowCIDRs"),
        (3, "leaderElection.leaseDuration=15", "leaseDuration"),
        (3, "features.rolloutRestrat=true", "rolloutRestrat"),
        (3, "leaderElection.enabled=false", "replicaCount above 1 needs leaderElection.enabled"),
        (3, "leaderElection.leaseDuration=1.5s", "leaseDuration"),
        (3, "leaderElection.renewDeadline=20s", "leaseDuration must be longer than leaderElection.renewDeadline"),
        (4, "leaderElection.retryPeriod=9s", "renewDeadline must be longer than 1.2 × leaderElection.retryPeriod"),
        (3, "endpointPolicy.allowCIDRs={10.0.0.0/33}", "allowCIDRs"),
        (3, "endpointPolicy.allowCIDRs={::::/999}", "allowCIDRs"),
    ] {
        let (ok, _, err) = template(major, None, &["--set", set]);
        assert!(!ok && err.contains(says), "helm {major} --set {set}: wanted an error naming {says:?}, got: {err}");
    }
    let (ok, _, err) = template(3, None, &["--set", "leaderElection.enabled=false", "--set", "replicaCount=1"]);
    assert!(ok, "one replica without leader election is fine: {err}");
}

/// What a release named otherwise, a single replica, the namespaced mode with features, and
/// extra network rules render: alerts that match the release's scrape job, no disruption budget
/// that would block every node drain, no cluster-wide rules the namespaced mode does not need.
#[test]
fn the_chart_fits_other_names_one_replica_and_the_namespaced_mode() {
    if skipped() {
        return;
    }
    let render = |release: &str, sets: &[&str]| {
        let mut cmd = Command::new(helm(3));
        cmd.args(["template", release, CHART, "--namespace", "ops"]);
        for set in sets {
            cmd.args(["--set", set]);
        }
        let out = cmd.output().expect("helm runs");
        assert!(out.status.success(), "{sets:?}: {}", String::from_utf8_lossy(&out.stderr));
        parse(&String::from_utf8_lossy(&out.stdout)).into_iter().filter(|d| !d.is_null()).collect::<Vec<_>>()
    };
    let docs = render("tokens", &["prometheus.serviceMonitor.enabled=true", "prometheus.prometheusRule.enabled=true"]);
    let service = docs.iter().find(|d| d["kind"] == "Service").expect("the Service");
    let job = service["metadata"]["name"].as_str().unwrap_or_default().to_string();
    assert_eq!(job, "tokens-tokensource-operator");
    let rules = docs.iter().find(|d| d["kind"] == "PrometheusRule").expect("the rules").to_string();
    assert!(rules.contains(&format!("job=\\\"{job}\\\"")), "the alerts name the Service's job: {rules}");
    assert!(!rules.contains("job=\\\"tokensource-operator\\\""), "{rules}");

    let one = render("tokensource-operator", &["replicaCount=1", "leaderElection.enabled=false"]);
    assert!(!one.iter().any(|d| d["kind"] == "PodDisruptionBudget"), "a budget for the only replica");
    let deployment = one.iter().find(|d| d["kind"] == "Deployment").expect("the Deployment");
    assert_eq!(deployment["spec"]["strategy"]["type"], "Recreate", "without leader election, never two at once");
    let two = render("tokensource-operator", &["podDisruptionBudget.maxUnavailable=1"]);
    let pdb = two.iter().find(|d| d["kind"] == "PodDisruptionBudget").expect("the budget");
    assert!(pdb["spec"]["maxUnavailable"] == 1 && pdb["spec"]["minAvailable"].is_null(), "{pdb}");

    let namespaced = render(
        "tokensource-operator",
        &[
            "scope.type=Namespace",
            "scope.namespace=apps",
            "features.rolloutRestart=true",
            "features.auditConsumers=true",
            "features.workloadIdentity=true",
        ],
    );
    let cluster_wide: Vec<String> = namespaced
        .iter()
        .filter(|d| d["kind"] == "ClusterRole")
        .map(|d| d["metadata"]["name"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(cluster_wide, ["tokensource-operator-token-review"], "only token reviews are cluster-scoped");
    for name in ["rollout-restart", "audit-consumers", "serviceaccount-token"] {
        for kind in ["Role", "RoleBinding"] {
            let name = format!("tokensource-operator-{name}");
            assert!(
                namespaced.iter().any(|d| d["kind"] == kind
                    && d["metadata"]["name"] == name.as_str()
                    && d["metadata"]["namespace"] == "apps"),
                "{kind} {name} in apps"
            );
        }
    }

    let policy = render(
        "tokensource-operator",
        &[
            "networkPolicy.enabled=true",
            "networkPolicy.extraEgress[0].ports[0].port=8443",
            "networkPolicy.extraIngress[0].ports[0].port=9090",
        ],
    );
    let np = policy.iter().find(|d| d["kind"] == "NetworkPolicy").expect("the NetworkPolicy");
    assert_eq!(np["spec"]["egress"].as_array().map(Vec::len), Some(3), "{np}");
    assert_eq!(np["spec"]["egress"][2]["ports"][0]["port"], 8443);
    assert_eq!(np["spec"]["ingress"][1]["ports"][0]["port"], 9090);
}

/// The values table of the chart's README, generated from the `# --` comments of values.yaml.
fn values_table() -> String {
    let text = std::fs::read_to_string(Path::new(CHART).join("values.yaml")).unwrap();
    let values: Value = serde_saphyr::from_str(&text).unwrap();
    let mut rows = vec!["| Key | Type | Default | Description |".to_string(), "|---|---|---|---|".to_string()];
    let mut path: Vec<(usize, String)> = Vec::new();
    let mut doc: Option<String> = None;
    for line in text.lines() {
        let indent = line.len() - line.trim_start().len();
        let trimmed = line.trim();
        if let Some(d) = trimmed.strip_prefix("# --") {
            doc = Some(d.trim().to_string());
            continue;
        }
        if let (Some(d), Some(more)) = (doc.as_mut(), trimmed.strip_prefix('#')) {
            d.push(' ');
            d.push_str(more.trim());
            continue;
        }
        let Some((key, _)) = trimmed.split_once(':').filter(|_| !trimmed.starts_with('#') && !trimmed.starts_with('-'))
        else {
            continue;
        };
        path.retain(|(i, _)| *i < indent);
        path.push((indent, key.to_string()));
        if let Some(d) = doc.take() {
            let keys: Vec<&str> = path.iter().map(|(_, k)| k.as_str()).collect();
            let value = keys.iter().fold(&values, |v, k| &v[*k]);
            let kind = match value {
                Value::Bool(_) => "bool",
                Value::Number(n) if n.is_i64() => "int",
                Value::Number(_) => "number",
                Value::String(_) => "string",
                Value::Array(_) => "list",
                Value::Object(_) => "object",
                Value::Null => "null",
            };
            let default = serde_json::to_string(value).unwrap_or_default().replace('|', "\\|");
            rows.push(format!("| `{}` | {kind} | `{default}` | {} |", keys.join("."), d.replace('|', "\\|")));
        }
    }
    rows.join("\n") + "\n"
}

#[test]
fn the_chart_readme_lists_every_value() {
    let readme_path = Path::new(CHART).join("README.md");
    let readme = std::fs::read_to_string(&readme_path).unwrap_or_default();
    let (start, end) = ("<!-- values:start -->\n", "<!-- values:end -->");
    let table = values_table();
    let current = readme.split_once(start).and_then(|(_, rest)| rest.split_once(end)).map(|(t, _)| t.to_string());
    if std::env::var_os("TOKENSOURCE_BLESS").is_some() {
        let (head, tail) = readme.split_once(start).expect("the README has the values markers");
        let tail = tail.split_once(end).map(|(_, t)| t).unwrap_or_default();
        std::fs::write(&readme_path, format!("{head}{start}{table}{end}{tail}")).unwrap();
        return;
    }
    assert_eq!(
        current.as_deref(),
        Some(table.as_str()),
        "charts/tokensource-operator/README.md's values table is stale: TOKENSOURCE_BLESS=1 cargo test --test helm"
    );
    // Every value is documented: each leaf of values.yaml (or a map documented whole) has a row.
    let values: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(Path::new(CHART).join("values.yaml")).unwrap()).unwrap();
    fn leaves(v: &Value, at: String, out: &mut Vec<String>) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, c) in m {
                    leaves(c, if at.is_empty() { k.clone() } else { format!("{at}.{k}") }, out);
                }
            }
            _ => out.push(at),
        }
    }
    let mut all = Vec::new();
    leaves(&values, String::new(), &mut all);
    for leaf in all {
        let documented = table.lines().any(|row| {
            row.strip_prefix("| `")
                .and_then(|r| r.split_once('`'))
                .is_some_and(|(key, _)| leaf == key || leaf.starts_with(&format!("{key}.")))
        });
        assert!(documented, "values.yaml: {leaf} has no `# --` description");
    }
}

/// The chart the upgrade starts from: the last released chart once there is a release; until
/// then, the chart's first commit.
const PREVIOUS_CHART: &str = "6273c967fca052fe9d530fe15a298c1d534a88d3";

/// A copy of the chart as it was at `commit`, extracted from Git.
fn chart_at(commit: &str, work: &Path) -> PathBuf {
    let archive = work.join(format!("chart-{commit}.tar"));
    let out = Command::new("git")
        .args(["-C", env!("CARGO_MANIFEST_DIR"), "archive", "--format=tar", "-o"])
        .arg(&archive)
        .args([commit, "charts/tokensource-operator"])
        .output()
        .expect("git runs");
    assert!(out.status.success(), "the chart at {commit}: {}", String::from_utf8_lossy(&out.stderr));
    let dir = work.join(format!("chart-{commit}"));
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new("tar").arg("-xf").arg(&archive).arg("-C").arg(&dir).output().expect("tar runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    dir.join("charts/tokensource-operator")
}

/// `helm <args>` of Helm `major` as the admin of `kubeconfig`: success and everything it said.
fn helm_at(major: u32, kubeconfig: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(helm(major)).args(args).arg("--kubeconfig").arg(kubeconfig).output().expect("helm runs");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// On the real API server, with Helm 3 and then Helm 4: the chart installs (Helm 3: the previous
/// chart, then `helm upgrade` to this one), the operator — run as the chart's Deployment runs it,
/// with a token of the chart's ServiceAccount and only the chart's RBAC — issues a token, the
/// upgrade and the operator's restart keep the TokenSource and its Secret and call no provider,
/// and `helm uninstall` keeps the CRD (and so every TokenSource and Secret) and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_installs_upgrades_and_uninstalls_on_the_real_api_server() {
    use common::installed;
    use fake_providers::{Config as FakeConfig, Endpoint, Fakes};
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::{Api, PostParams};
    use serde_json::json;
    use tokensource_operator::crd::TokenSource;

    if skipped() {
        return;
    }
    let Some(admin) = std::env::var("TOKENSOURCE_E2E_KUBECONFIG").ok().filter(|k| !k.is_empty()).map(PathBuf::from)
    else {
        eprintln!("the real API server only: helm install, upgrade and uninstall run in ./test's control plane phase");
        return;
    };
    let kc = kube::config::Kubeconfig::read_from(&admin).unwrap();
    let client =
        kube::Client::try_from(kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.unwrap()).unwrap();
    let fakes = Fakes::start(FakeConfig::default()).await.unwrap();
    let work = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("helm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let kubectl = |args: &[&str]| {
        let (ok, out, err) = common::kubectl_at(&admin, args);
        assert!(ok, "kubectl {args:?}: {err}");
        out
    };
    // The operator serves every namespace: other suites' TokenSources would be its work too; and
    // only the chart's RBAC may be in place.
    let (ok, _, err) =
        common::kubectl_at(&admin, &["delete", "tokensources", "--all", "--all-namespaces", "--wait=false"]);
    assert!(ok || err.contains("doesn't have a resource type"), "{err}");
    common::remove_operator_rbac(&admin);

    for major in [3, 4] {
        let (system, tenant) = (format!("helm{major}-system"), format!("helm{major}-tenant"));
        for ns in [&system, &tenant] {
            kubectl(&["create", "namespace", ns]);
        }
        // A CRD installed before (by kubectl, or the last release) is adopted, as a user moving
        // from `kubectl apply -k deploy/` to the chart does.
        let crd = "crd/tokensources.tokensource.dev";
        if common::kubectl_at(&admin, &["get", crd]).0 {
            kubectl(&["label", crd, "app.kubernetes.io/managed-by=Helm", "--overwrite"]);
            let (name, namespace) =
                ("meta.helm.sh/release-name=tokensource-operator", format!("meta.helm.sh/release-namespace={system}"));
            kubectl(&["annotate", crd, name, &namespace, "--overwrite"]);
        }
        let previous = chart_at(PREVIOUS_CHART, &work);
        let first = if major == 3 { previous.to_str().unwrap() } else { CHART };
        let (ok, said) = helm_at(major, &admin, &["install", "tokensource-operator", first, "--namespace", &system]);
        assert!(ok, "helm {major} install: {said}");
        common::wait_crd_established(&admin);

        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &system);
        let start = |name: String| {
            let (client, admin, work, system, deployments) = (&client, &admin, &work, &system, &deployments);
            async move {
                let deployment = deployments.get("tokensource-operator").await.unwrap();
                let kubeconfig = installed::service_account_kubeconfig(client, admin, work, system, &deployment).await;
                installed::run(&deployment, system, &name, &kubeconfig, work)
            }
        };
        let operator = start(format!("helm{major}-a")).await;

        let c = fakes.config().podero;
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &tenant);
        let creds = json!({"metadata": {"name": "podero-credentials"}, "stringData": {"client_secret": c.secret}});
        secrets.create(&PostParams::default(), &serde_json::from_value(creds).unwrap()).await.unwrap();
        let ts = json!({
            "apiVersion": "tokensource.dev/v1alpha1", "kind": "TokenSource",
            "metadata": {"name": "api"},
            "spec": {
                "type": "OAuth2",
                "oauth2": {
                    "tokenURL": fakes.endpoint_url(Endpoint::Podero),
                    "clientID": {"value": c.id},
                    "clientAuth": {"type": "ClientSecretBasic", "clientSecretRef": {"name": "podero-credentials", "key": "client_secret"}},
                    "bodyType": "JSON"
                },
                "target": {"name": "api-token"}
            }
        });
        let sources: Api<TokenSource> = Api::namespaced(client.clone(), &tenant);
        sources.create(&PostParams::default(), &serde_json::from_value(ts).unwrap()).await.unwrap();
        let token_of = || async {
            let s = secrets.get_opt("api-token").await.map_err(|e| e.to_string())?;
            let t = s.and_then(|s| s.data?.get("token").map(|t| String::from_utf8_lossy(&t.0).into_owned()));
            t.filter(|t| fakes.is_valid(t)).ok_or_else(|| "no valid token yet".to_string())
        };
        let ready = || async {
            let ts = sources.get("api").await.map_err(|e| e.to_string())?;
            let c = ts.status.and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "Ready"));
            check(c.as_ref().is_some_and(|c| c.status == "True"), (), c.map(|c| c.message))
        };
        let token = eventually(&format!("helm {major}: a token in {tenant}/api-token"), WAIT, token_of).await;
        eventually(&format!("helm {major}: Ready=True"), WAIT, ready).await;
        let calls = fakes.calls(Endpoint::Podero);

        // The upgrade to this chart (Helm 3 installed the previous one), and the restart it rolls
        // out: the TokenSource and its Secret stay, no provider call.
        let (ok, said) = helm_at(major, &admin, &["upgrade", "tokensource-operator", CHART, "--namespace", &system]);
        assert!(ok, "helm {major} upgrade: {said}");
        drop(operator);
        let operator = start(format!("helm{major}-b")).await;
        eventually(&format!("helm {major}: Ready=True after the upgrade"), WAIT, ready).await;
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        assert_eq!(token_of().await, Ok(token.clone()), "helm {major}: the upgrade changed the token");
        assert_eq!(
            fakes.calls(Endpoint::Podero),
            calls,
            "helm {major}: the upgrade or the restart called the provider"
        );
        let refused = operator.refusals(&[&tenant]);
        assert!(
            refused.is_empty(),
            "helm {major}: the API server refused the chart's operator:\n{}",
            refused.join("\n")
        );
        drop(operator);

        // Uninstalled: the CRD, the TokenSource and its Secret stay, and Helm says why.
        let (ok, said) = helm_at(major, &admin, &["uninstall", "tokensource-operator", "--namespace", &system]);
        assert!(ok, "helm {major} uninstall: {said}");
        eprintln!("helm {major} uninstall: {}", said.trim());
        assert!(
            said.contains("resource policy") && said.contains("tokensources.tokensource.dev"),
            "helm {major} uninstall does not say it kept the CRD: {said}"
        );
        assert!(common::kubectl_at(&admin, &["get", crd]).0, "helm {major} uninstall deleted the CRD");
        assert!(sources.get_opt("api").await.unwrap().is_some(), "the TokenSource went with the release");
        assert_eq!(token_of().await, Ok(token), "the Secret went with the release");
        let (_, left, _) = common::kubectl_at(
            &admin,
            &["get", "clusterrole", "-l", "app.kubernetes.io/name=tokensource-operator", "-o", "name"],
        );
        assert!(left.trim().is_empty(), "helm {major} uninstall left RBAC: {left}");
        for ns in [&tenant, &system] {
            kubectl(&["delete", "namespace", ns, "--wait=false"]);
        }
        eprintln!(
            "helm {major}: installed, issued a token, upgraded and restarted with no provider call, uninstalled keeping the CRD"
        );
    }
}
