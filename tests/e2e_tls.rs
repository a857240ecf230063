//! End to end over HTTPS: private CA bundles, RFC 7523 private_key_jwt and RFC 8705 mutual TLS,
//! against fakes that verify certificates and assertions like an identity provider.

#![cfg(test)]

mod common;

use common::Env;
use fake_providers::Endpoint;
use fake_providers::tls::fixtures;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, PostParams};
use serde_json::json;

async fn put_tls_secret(env: &Env) {
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "client-cert"},
        "type": "kubernetes.io/tls",
        "stringData": {
            "tls.crt": String::from_utf8_lossy(fixtures::CLIENT_CERT),
            "tls.key": String::from_utf8_lossy(fixtures::CLIENT_KEY),
        }
    }))
    .unwrap();
    env.secrets().create(&PostParams::default(), &secret).await.unwrap();
}

async fn put_ca_config_map(env: &Env) {
    let cm: ConfigMap = serde_json::from_value(
        json!({"metadata": {"name": "private-ca"}, "data": {"ca.crt": String::from_utf8_lossy(fixtures::CA_CERT)}}),
    )
    .unwrap();
    Api::<ConfigMap>::namespaced(env.client.clone(), &env.ns).create(&PostParams::default(), &cm).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_key_jwt_with_rs256_and_es256_over_a_private_ca() {
    let env = Env::start_tls().await;
    put_ca_config_map(&env).await;
    env.put_secret(
        "jwt-keys",
        &[
            ("rsa.pem", &String::from_utf8_lossy(fixtures::JWT_RSA_KEY)),
            ("ec.pem", &String::from_utf8_lossy(fixtures::JWT_EC_KEY)),
            ("ca.crt", &String::from_utf8_lossy(fixtures::CA_CERT)),
        ],
    )
    .await;
    let client_id = env.fakes.config().jwt_client_id;
    for (name, alg, key, ca) in [
        (
            "jwt-rs",
            "RS256",
            "rsa.pem",
            json!({"type": "ConfigMapKeyRef", "configMapKeyRef": {"name": "private-ca", "key": "ca.crt"}}),
        ),
        (
            "jwt-es",
            "ES256",
            "ec.pem",
            json!({"type": "SecretKeyRef", "secretKeyRef": {"name": "jwt-keys", "key": "ca.crt"}}),
        ),
    ] {
        env.create(json!({
            "metadata": {"name": name},
            "spec": {
                "type": "OAuth2",
                "oauth2": {
                    "tokenURL": env.fakes.endpoint_url(Endpoint::JwtToken),
                    "clientID": {"value": client_id},
                    "clientAuth": {"type": "PrivateKeyJWT", "privateKeyJWT": {"privateKeySecretRef": {"name": "jwt-keys", "key": key}, "algorithm": alg, "keyID": "key-1"}}
                },
                "tls": {"caBundle": ca},
                "target": {"name": format!("{name}-token")}
            }
        }))
        .await;
        let token = env.wait_token(&format!("{name}-token"), None).await;
        assert!(env.fakes.is_valid(&token), "{name}");
        env.wait_ready(name, "True", "TokenValid").await;
    }
    assert_eq!(env.fakes.rejections(), vec![]);
    assert_eq!(env.fakes.issued(Endpoint::JwtToken), 2);
    let key_text = String::from_utf8_lossy(fixtures::JWT_RSA_KEY).to_string();
    let key_line = key_text.lines().nth(1).unwrap_or_default().to_string();
    env.assert_nothing_leaks(&[&key_line], &["jwt-rs-token", "jwt-es-token"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_client_authentication() {
    let env = Env::start_tls().await;
    put_tls_secret(&env).await;
    env.put_secret("mtls-secret", &[("client_secret", "not-a-certificate")]).await;
    let spec = |name: &str, with_cert: bool| {
        // The CA inline, as PEM.
        let mut tls = json!({"caBundle": {"type": "PEM", "pem": String::from_utf8_lossy(fixtures::CA_CERT)}});
        if with_cert {
            tls["clientCertificateSecretRef"] = json!({"name": "client-cert"});
        }
        json!({
            "metadata": {"name": name},
            "spec": {
                "type": "OAuth2",
                "oauth2": {
                    "tokenURL": env.fakes.endpoint_url(Endpoint::MtlsToken),
                    "clientID": {"value": "mtls-client"},
                    "clientAuth": if with_cert {
                        json!({"type": "TLSClientAuth"})
                    } else {
                        json!({"type": "ClientSecretPost", "clientSecretRef": {"name": "mtls-secret", "key": "client_secret"}})
                    }
                },
                "tls": tls,
                "target": {"name": format!("{name}-token")}
            }
        })
    };
    env.create(spec("mtls", true)).await;
    let token = env.wait_token("mtls-token", None).await;
    assert!(env.fakes.is_valid(&token));
    env.wait_ready("mtls", "True", "TokenValid").await;
    // Without the certificate the provider refuses, and says so.
    env.create(spec("no-cert", false)).await;
    let m = env.wait_ready("no-cert", "False", "ProviderRejected").await;
    assert!(m.contains("401") && m.contains("invalid_client"), "{m}");
    assert_eq!(
        env.fakes.rejections().iter().map(|(_, r)| r.as_str()).collect::<Vec<_>>(),
        vec!["no client certificate"]
    );
    let key_line = String::from_utf8_lossy(fixtures::CLIENT_KEY).lines().nth(1).unwrap_or_default().to_string();
    env.assert_nothing_leaks(&[&key_line], &["mtls-token"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_ca_is_an_unreachable_provider_and_http_is_refused() {
    let env = Env::start_tls().await;
    common::podero_credentials(&env).await;
    env.create(common::podero(&env, "no-ca", "no-ca-token")).await;
    let m = env.wait_ready("no-ca", "False", "ProviderUnreachable").await;
    assert!(m.to_lowercase().contains("certificate"), "{m}");
    let mut plain = common::podero(&env, "plain", "plain-token");
    plain["spec"]["oauth2"]["tokenURL"] = json!("http://127.0.0.1:1/oauth2/token/");
    env.create(plain).await;
    let m = env.wait_ready("plain", "False", "InvalidSpec").await;
    assert!(m.contains("https"), "{m}");
    assert_eq!(env.fakes.issued(Endpoint::Podero), 0);
}
