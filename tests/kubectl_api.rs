//! The TokenSource API as users meet it through the real kubectl: every CEL rule of the CRD (and
//! the schema checks that stand in for the controller's) refuses a broken TokenSource at apply
//! time, with its message at its field path; defaults are visible in what `kubectl get` shows.

#![cfg(test)]

use std::process::{Command, Stdio};

use serde_json::{Value, json};

/// kubesim, or the real API server `TOKENSOURCE_E2E_KUBECONFIG` names, with a namespace of the
/// test's own (a real cluster is shared by the tests that run at once).
struct Cluster {
    _sim: Option<kubesim::KubeSim>,
    kubeconfig: std::path::PathBuf,
    ns: String,
}

impl Cluster {
    async fn start() -> Self {
        let ns = format!("api-{:08x}", rand::random::<u32>());
        let cluster = match std::env::var("TOKENSOURCE_E2E_KUBECONFIG") {
            Ok(path) if !path.is_empty() => Self { _sim: None, kubeconfig: path.into(), ns },
            _ => {
                let sim = kubesim::KubeSim::start().await.expect("kubesim");
                Self { kubeconfig: sim.kubeconfig_path().to_path_buf(), _sim: Some(sim), ns }
            }
        };
        tokio::task::block_in_place(|| {
            let (ok, _, err) = kubectl(&cluster, &["create", "namespace", &cluster.ns], None);
            assert!(ok, "{err}");
        });
        cluster
    }

    /// The CRD, server-side, and established.
    fn install_crd(&self) {
        let crd = tokensource_operator::crd::crd_yaml().expect("CRD");
        let (ok, _, err) = kubectl(
            self,
            &["apply", "--server-side", "--force-conflicts", "--field-manager", "kubectl-api-test", "-f", "-"],
            Some(&crd),
        );
        assert!(ok, "{err}");
        let (ok, _, err) = kubectl(
            self,
            &["wait", "--for", "condition=Established", "--timeout", "60s", "crd/tokensources.tokensource.dev"],
            None,
        );
        assert!(ok, "{err}");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self._sim.is_none() {
            let _ = kubectl(self, &["delete", "namespace", &self.ns, "--wait=false"], None);
        }
    }
}

fn kubectl(cluster: &Cluster, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    use std::io::Write;
    let mut child = Command::new(std::env::var("KUBECTL").unwrap_or_else(|_| "/usr/bin/kubectl".into()))
        .args(args)
        .args(["--namespace", &cluster.ns])
        .env("KUBECONFIG", &cluster.kubeconfig)
        .env("HOME", std::env::temp_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl is required for this test");
    if let Some(input) = stdin {
        child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("writing to kubectl");
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().expect("kubectl");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn oauth2() -> Value {
    json!({
        "apiVersion": "tokensource.dev/v1alpha1", "kind": "TokenSource",
        "metadata": {"name": "t"},
        "spec": {
            "type": "OAuth2",
            "oauth2": {
                "tokenURL": "https://idp.example/token",
                "clientID": {"value": "id"},
                "clientAuth": {"type": "ClientSecretBasic", "clientSecretRef": {"name": "creds", "key": "secret"}}
            },
            "target": {"name": "t-token"}
        }
    })
}

fn http() -> Value {
    json!({
        "apiVersion": "tokensource.dev/v1alpha1", "kind": "TokenSource",
        "metadata": {"name": "t"},
        "spec": {"type": "HTTP", "http": {"url": "https://api.example/token"}, "target": {"name": "t-token"}}
    })
}

/// Sets `value` at a `/`-separated path, creating objects on the way.
fn set(mut doc: Value, path: &str, value: Value) -> Value {
    let mut cur = &mut doc;
    let parts: Vec<&str> = path.split('/').collect();
    for p in &parts[..parts.len() - 1] {
        cur = &mut cur[*p];
    }
    cur[parts[parts.len() - 1]] = value;
    doc
}

fn remove(mut doc: Value, path: &str) -> Value {
    let parts: Vec<&str> = path.split('/').collect();
    let mut cur = &mut doc;
    for p in &parts[..parts.len() - 1] {
        cur = &mut cur[*p];
    }
    cur.as_object_mut().map(|m| m.remove(parts[parts.len() - 1]));
    doc
}

/// A broken TokenSource, the field the API server blames and what it says.
struct Case {
    doc: Value,
    field: &'static str,
    message: &'static str,
}

fn cases() -> Vec<Case> {
    let named = |name: &str| json!([{"name": name, "value": "v"}]);
    let case = |doc: Value, field: &'static str, message: &'static str| Case { doc, field, message };
    vec![
        // The kind of request and its member.
        case(remove(oauth2(), "spec/oauth2"), "spec", "type OAuth2 needs oauth2 and no http"),
        case(
            set(oauth2(), "spec/http", json!({"url": "https://x.example"})),
            "spec",
            "type OAuth2 needs oauth2 and no http",
        ),
        case(remove(http(), "spec/http"), "spec", "type HTTP needs http and no oauth2"),
        case(
            set(oauth2(), "spec/oauth2/clientAuth", json!({"type": "TLSClientAuth"})),
            "spec.oauth2.clientAuth.type",
            "clientAuth type TLSClientAuth needs tls.clientCertificateSecretRef",
        ),
        case(
            set(
                set(oauth2(), "spec/response", json!({"fields": [{"key": "auth", "jsonPath": "$.a"}]})),
                "spec/target/template",
                json!({"data": {"auth": "x"}}),
            ),
            "spec.response.fields",
            "a Secret key is written by both response.fields and target.template.data",
        ),
        // Values and where they come from.
        case(
            set(
                oauth2(),
                "spec/oauth2/clientID",
                json!({"value": "id", "valueFrom": {"secretKeyRef": {"name": "c", "key": "k"}}}),
            ),
            "spec.oauth2.clientID",
            "set exactly one of value and valueFrom",
        ),
        case(
            set(oauth2(), "spec/oauth2/clientID", json!({"valueFrom": {}})),
            "spec.oauth2.clientID.valueFrom",
            "set exactly one of secretKeyRef and configMapKeyRef",
        ),
        case(
            set(oauth2(), "spec/oauth2/parameters", json!([{"name": "audience"}])),
            "spec.oauth2.parameters[0]",
            "set exactly one of value and valueFrom",
        ),
        // OAuth 2.0 requests.
        case(
            set(oauth2(), "spec/oauth2/headers", named("authorization")),
            "spec.oauth2.headers",
            "the Authorization header belongs to clientAuth",
        ),
        case(
            set(oauth2(), "spec/oauth2/parameters", named("client_secret")),
            "spec.oauth2.parameters",
            "grant_type, scope, client_id, client_secret, client_assertion, client_assertion_type, subject_token, subject_token_type and requested_token_type are set by the operator",
        ),
        // Workload identity.
        case(
            remove(oauth2(), "spec/oauth2/clientAuth"),
            "spec.oauth2",
            "the ClientCredentials grant needs clientID and clientAuth",
        ),
        case(
            set(oauth2(), "spec/oauth2/grantType", json!("TokenExchange")),
            "spec.oauth2",
            "tokenExchange is required for the TokenExchange grant, and only for it",
        ),
        case(
            set(
                oauth2(),
                "spec/oauth2/clientAuth",
                json!({"type": "ServiceAccountToken", "clientSecretRef": {"name": "c", "key": "k"}}),
            ),
            "spec.oauth2.clientAuth",
            "serviceAccountToken is required for ServiceAccountToken, and only for it",
        ),
        case(
            set(
                oauth2(),
                "spec/oauth2/clientAuth",
                json!({"type": "ServiceAccountToken", "serviceAccountToken": {"serviceAccountName": "payments", "audience": "api://AzureADTokenExchange", "expiration": "5m"}}),
            ),
            "spec.oauth2.clientAuth.serviceAccountToken.expiration",
            "between 10m and 1h",
        ),
        case(
            set(oauth2(), "spec/oauth2/headers", named("X Api")),
            "spec.oauth2.headers",
            "header names are RFC 9110 tokens",
        ),
        case(
            set(oauth2(), "spec/oauth2/headers", named("Content-Length")),
            "spec.oauth2.headers",
            "Host, Content-Length, Content-Type, Transfer-Encoding and Connection are set by the operator",
        ),
        case(
            set(oauth2(), "spec/oauth2/clientAuth", json!({"type": "ClientSecretPost"})),
            "spec.oauth2.clientAuth",
            "clientSecretRef is required for ClientSecretBasic and ClientSecretPost, and only for them",
        ),
        case(
            set(oauth2(), "spec/oauth2/clientAuth", json!({"type": "PrivateKeyJWT"})),
            "spec.oauth2.clientAuth",
            "privateKeyJWT is required for PrivateKeyJWT, and only for it",
        ),
        // CA bundles.
        case(
            set(oauth2(), "spec/tls", json!({"caBundle": {"type": "PEM"}})),
            "spec.tls.caBundle",
            "pem is required for type PEM, and only for it",
        ),
        case(
            set(oauth2(), "spec/tls", json!({"caBundle": {"type": "SecretKeyRef", "pem": "x"}})),
            "spec.tls.caBundle",
            "secretKeyRef is required for type SecretKeyRef, and only for it",
        ),
        case(
            set(oauth2(), "spec/tls", json!({"caBundle": {"type": "ConfigMapKeyRef"}})),
            "spec.tls.caBundle",
            "configMapKeyRef is required for type ConfigMapKeyRef, and only for it",
        ),
        // Generic HTTP requests.
        case(
            set(set(http(), "spec/http/method", json!("GET")), "spec/http/body", json!({"type": "Raw", "raw": "x"})),
            "spec.http.body",
            "a GET request has no body",
        ),
        case(
            set(
                set(http(), "spec/http/headers", named("Authorization")),
                "spec/http/auth",
                json!({"type": "Bearer", "bearer": {"tokenSecretRef": {"name": "s", "key": "k"}}}),
            ),
            "spec.http.headers",
            "set the Authorization header or auth, not both",
        ),
        case(set(http(), "spec/http/headers", named("a:b")), "spec.http.headers", "header names are RFC 9110 tokens"),
        case(
            set(http(), "spec/http/headers", named("Host")),
            "spec.http.headers",
            "Host, Content-Length, Content-Type, Transfer-Encoding and Connection are set by the operator",
        ),
        case(
            set(http(), "spec/http/body", json!({"type": "Raw"})),
            "spec.http.body",
            "raw is required for type Raw, and only for it",
        ),
        case(
            set(http(), "spec/http/body", json!({"type": "JSON", "raw": "x"})),
            "spec.http.body",
            "json is required for type JSON, and only for it",
        ),
        case(
            set(http(), "spec/http/body", json!({"type": "Form", "json": {}})),
            "spec.http.body",
            "form is required for type Form, and only for it",
        ),
        case(
            set(http(), "spec/http/body", json!({"type": "JSON", "json": {}, "contentType": "text/plain"})),
            "spec.http.body.contentType",
            "contentType is only for type Raw",
        ),
        case(
            set(
                http(),
                "spec/http/body",
                json!({"type": "Form", "form": [{"name": "a", "value": "b"}], "values": [{"name": "x", "value": "y"}]}),
            ),
            "spec.http.body.values",
            "values fill placeholders in raw and json bodies; a form takes its values directly",
        ),
        case(
            set(
                http(),
                "spec/http/body",
                json!({"type": "Raw", "raw": "{{ a-b }}", "values": [{"name": "a-b", "value": "y"}]}),
            ),
            "spec.http.body.values",
            "placeholder names are identifiers such as customer_ref",
        ),
        case(
            set(http(), "spec/http/auth", json!({"type": "Basic"})),
            "spec.http.auth",
            "basic is required for type Basic, and only for it",
        ),
        case(
            set(http(), "spec/http/auth", json!({"type": "HMAC"})),
            "spec.http.auth",
            "hmac is required for type HMAC, and only for it",
        ),
        case(
            set(http(), "spec/http/auth", json!({"type": "None", "bearer": {"tokenSourceRef": {"name": "up"}}})),
            "spec.http.auth",
            "bearer is required for type Bearer, and only for it",
        ),
        case(
            set(http(), "spec/http/auth", json!({"type": "Bearer", "bearer": {}})),
            "spec.http.auth.bearer",
            "set exactly one of tokenSourceRef and tokenSecretRef",
        ),
        // Reading the reply.
        case(
            set(http(), "spec/response", json!({"fields": [{"key": "token", "jsonPath": "$.t"}]})),
            "spec.response.fields[0].key",
            "token, token_type, expires_at and scope are written by the operator",
        ),
        case(
            set(http(), "spec/response", json!({"expiry": {"type": "ExpiresAt", "jsonPath": "$.e"}})),
            "spec.response.expiry",
            "type ExpiresAt needs jsonPath and format",
        ),
        case(
            set(http(), "spec/response", json!({"expiry": {"type": "JWT", "jsonPath": "$.e"}})),
            "spec.response.expiry.jsonPath",
            "jsonPath is for types ExpiresIn and ExpiresAt",
        ),
        case(
            set(http(), "spec/response", json!({"expiry": {"type": "ExpiresIn", "format": "RFC3339"}})),
            "spec.response.expiry.format",
            "format is for type ExpiresAt",
        ),
        case(
            set(http(), "spec/response", json!({"expiry": {"type": "JWT", "defaultLifetime": "1h"}})),
            "spec.response.expiry.defaultLifetime",
            "defaultLifetime is for type Auto",
        ),
        // The Secret.
        case(
            set(http(), "spec/target/template", json!({"mergePolicy": "Replace"})),
            "spec.target.template",
            "mergePolicy Replace needs data: it writes only the template's keys",
        ),
        case(
            set(http(), "spec/target/template", json!({"data": {"a/b": "x"}})),
            "spec.target.template.data",
            "keys must be Secret keys: letters, digits, '-', '_' and '.'",
        ),
        case(
            set(http(), "spec/target/template", json!({"data": {"expires_at": "x"}})),
            "spec.target.template.data",
            "token, token_type, expires_at and scope are written by the operator",
        ),
        // Plain words for common mistakes.
        case(
            set(http(), "spec/response/token", json!({"jsonPath": "access_token"})),
            "spec.response.token.jsonPath",
            "a JSONPath starts with $, such as $.access_token",
        ),
        case(
            set(oauth2(), "spec/oauth2/tokenURL", json!("https://")),
            "spec.oauth2.tokenURL",
            "must be an absolute http(s) URL with a host and no user:password@, such as https://idp.example.com/oauth2/token",
        ),
        // Self-signed JWT bearer.
        case(
            set(http(), "spec/http/auth", json!({"type": "JWT"})),
            "spec.http.auth",
            "jwt is required for type JWT, and only for it",
        ),
        case(
            set(
                http(),
                "spec/http/auth",
                json!({"type": "JWT", "jwt": {"privateKeySecretRef": {"name": "k", "key": "pem"}, "issuer": {"value": "1"}, "claims": {"exp": "9999999999"}}}),
            ),
            "spec.http.auth.jwt.claims",
            "iss, sub, aud, iat, exp and nbf are set by the operator",
        ),
        case(
            set(
                http(),
                "spec/http/auth",
                json!({"type": "JWT", "jwt": {"privateKeySecretRef": {"name": "k", "key": "pem"}, "issuer": {"value": "1"}, "lifetime": "2h"}}),
            ),
            "spec.http.auth.jwt.lifetime",
            "between 10s and 1h",
        ),
        case(
            set(
                http(),
                "spec/http/auth",
                json!({"type": "JWT", "jwt": {"privateKeySecretRef": {"name": "k", "key": "pem"}, "serviceAccountKeySecretRef": {"name": "k", "key": "json"}}}),
            ),
            "spec.http.auth.jwt",
            "set serviceAccountKeySecretRef, or privateKeySecretRef and issuer",
        ),
        // Rollout restarts.
        case(
            set(http(), "spec/target/rolloutRestart", json!({"workloads": [{"kind": "Deployment"}]})),
            "spec.target.rolloutRestart.workloads[0]",
            "set exactly one of name and selector",
        ),
        case(
            set(
                http(),
                "spec/target/rolloutRestart",
                json!({"workloads": [{"kind": "Deployment", "name": "a", "selector": {"matchLabels": {"a": "b"}}}]}),
            ),
            "spec.target.rolloutRestart.workloads[0]",
            "set exactly one of name and selector",
        ),
        case(
            set(
                http(),
                "spec/target/rolloutRestart",
                json!({"minInterval": "1s", "workloads": [{"kind": "Deployment", "name": "a"}]}),
            ),
            "spec.target.rolloutRestart.minInterval",
            "between 10s and a year (8784h)",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn every_rule_refuses_its_mistake_with_its_message_at_its_field() {
    let cluster = Cluster::start().await;
    tokio::task::block_in_place(|| {
        cluster.install_crd();
        for (kind, base) in [("oauth2", oauth2()), ("http", http())] {
            let (ok, _, err) = kubectl(&cluster, &["create", "--dry-run=server", "-f", "-"], Some(&base.to_string()));
            assert!(ok, "the valid {kind} base is accepted: {err}");
        }
        let cases = cases();
        for (i, c) in cases.iter().enumerate() {
            let (ok, _, err) = kubectl(&cluster, &["create", "-f", "-"], Some(&c.doc.to_string()));
            assert!(!ok, "case {i} ({}) was accepted", c.message);
            let want = format!("{}: Invalid value: ", c.field);
            assert!(
                err.contains(&want) && err.contains(c.message),
                "case {i}: want {want:?} and {:?} in:\n{err}",
                c.message
            );
        }
        eprintln!("{} CEL rules refused their mistakes", cases.len());
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn schema_checks_names_urls_paths_and_durations() {
    let cluster = Cluster::start().await;
    tokio::task::block_in_place(|| {
        cluster.install_crd();
        let refused = |doc: Value, field: &str, what: &str| {
            let (ok, _, err) = kubectl(&cluster, &["create", "-f", "-"], Some(&doc.to_string()));
            assert!(!ok && err.contains(field) && err.contains(what), "want {field} {what:?} in:\n{err}");
        };
        refused(
            set(oauth2(), "spec/oauth2/tokenURL", json!("https://user:pw@idp.example/token")),
            "spec.oauth2.tokenURL",
            "no user:password@",
        );
        refused(set(http(), "spec/http/url", json!("ftp://x.example")), "spec.http.url", "absolute http(s) URL");
        refused(set(http(), "spec/http/url", json!("https://x.example/a b")), "spec.http.url", "absolute http(s) URL");
        refused(set(http(), "spec/http/url", json!("idp.example/token")), "spec.http.url", "absolute http(s) URL");
        refused(set(http(), "spec/timeout", json!("1.5h")), "spec.timeout", "should match");
        refused(
            set(http(), "spec/renewal", json!({"renewBefore": "999999h"})),
            "spec.renewal.renewBefore",
            "should match",
        );
        refused(
            set(http(), "spec/renewal", json!({"renewBeforePercentage": 100})),
            "spec.renewal.renewBeforePercentage",
            "less than or equal to 99",
        );
        refused(
            set(http(), "spec/response", json!({"token": {"jsonPath": "access_token"}})),
            "spec.response.token.jsonPath",
            "starts with $",
        );
        refused(
            set(oauth2(), "spec/oauth2/clientAuth/clientSecretRef", json!({"name": "../other/secrets/x", "key": "k"})),
            "spec.oauth2.clientAuth.clientSecretRef.name",
            "should match",
        );
        refused(
            set(oauth2(), "spec/oauth2/clientAuth/clientSecretRef", json!({"name": "c", "key": "a/b"})),
            "spec.oauth2.clientAuth.clientSecretRef.key",
            "should match",
        );
        refused(
            set(http(), "spec/http/auth", json!({"type": "SigV4"})),
            "spec.http.auth.type",
            "Unsupported value: \"SigV4\"",
        );
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn defaults_are_stored_and_name_and_type_cannot_change() {
    let cluster = Cluster::start().await;
    tokio::task::block_in_place(|| {
        cluster.install_crd();
        let (ok, _, err) = kubectl(&cluster, &["apply", "-f", "-"], Some(&http().to_string()));
        assert!(ok, "{err}");
        let (ok, out, err) = kubectl(&cluster, &["get", "tokensource", "t", "-o", "json"], None);
        assert!(ok, "{err}");
        let spec = serde_json::from_str::<Value>(&out).expect("JSON")["spec"].clone();
        assert_eq!(spec["http"]["method"], "POST");
        assert_eq!(spec["http"]["auth"], json!({"type": "None"}), "no authentication is spelled out");
        assert_eq!(spec["response"]["token"], json!({"jsonPath": "$.access_token"}));
        assert_eq!(spec["response"]["expiry"], json!({"type": "Auto"}));
        assert_eq!(spec["renewal"], json!({"renewBeforePercentage": 33, "shareIdenticalRequests": true}));
        assert_eq!(
            spec["target"],
            json!({"name": "t-token", "creationPolicy": "Owner", "template": {"type": "Opaque", "engineVersion": "v1", "mergePolicy": "Merge"}})
        );
        for (path, value, field, message) in [
            ("spec/target/name", json!("other-token"), "spec.target.name", "target.name cannot be changed"),
            (
                "spec/target/template/type",
                json!("kubernetes.io/dockerconfigjson"),
                "spec.target.template.type",
                "the Secret type cannot be changed",
            ),
        ] {
            let (ok, _, err) = kubectl(&cluster, &["apply", "-f", "-"], Some(&set(http(), path, value).to_string()));
            assert!(!ok && err.contains(field) && err.contains(message), "{err}");
        }
    });
}
