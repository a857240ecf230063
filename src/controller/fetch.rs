//! The fetch step: build the token request for the spec (one provider module per way of asking,
//! plus the TLS material) and send it.

use jiff::Timestamp;

use super::Context;
use super::validate::Plan;
use crate::crd::{CaBundleType, TokenSource};
use crate::credentials::Credentials;
use crate::error::Error;
use crate::metrics::HostLabels;
use crate::providers;
use crate::response::Token;

impl Context {
    /// Asks the token endpoint for a new token.
    pub(super) async fn fetch(
        &self,
        ts: &TokenSource,
        plan: &Plan,
        creds: &Credentials,
        upstream_token: Option<&str>,
    ) -> Result<Token, Error> {
        let allow_http = self.config.allow_http;
        let request = match (&ts.spec.oauth2, &ts.spec.http) {
            (Some(o), _) => providers::oauth2::request(o, creds, allow_http)?,
            (None, Some(h)) => providers::http::request(h, creds, upstream_token, allow_http)?,
            (None, None) => return Err(Error::InvalidSpec("set exactly one of spec.oauth2 and spec.http".into())),
        };
        let mut request = self.with_tls(ts, creds, request)?;
        request.timeout = Some(plan.timeout);
        let host = request.url.host_str().unwrap_or_default().to_string();
        let started = std::time::Instant::now();
        let result = self.transport.send(&request).await.and_then(|body| plan.reader.read(&body, Timestamp::now()));
        self.metrics.token_request_seconds.observe(started.elapsed().as_secs_f64());
        let result_label = match &result {
            Ok(_) => "Success".to_string(),
            Err(e) => e.reason().to_string(),
        };
        self.metrics.token_requests.get_or_create(&HostLabels { host, result: result_label }).inc();
        Ok(result?)
    }

    /// Adds the spec's client certificate and CA bundle to a request.
    fn with_tls(
        &self,
        ts: &TokenSource,
        creds: &Credentials,
        mut request: providers::Request,
    ) -> Result<providers::Request, Error> {
        let Some(spec) = &ts.spec.tls else { return Ok(request) };
        let mut tls = providers::Tls::default();
        if let Some((crt, key)) = ts.spec.client_certificate_refs() {
            let field = "tls.clientCertificateSecretRef";
            let mut pem = creds.get(&crt, field)?.to_vec();
            pem.push(b'\n');
            let key_pem = creds.get(&key, field)?;
            request.secrets.push(key_pem.to_vec());
            pem.extend_from_slice(key_pem);
            tls.identity_pem = Some(pem);
        }
        if let Some(ca) = &spec.ca_bundle {
            let field = "tls.caBundle";
            let missing = |member: &str| Error::InvalidSpec(format!("{field}: type {:?} needs {member}", ca.type_));
            tls.ca_pem = Some(match ca.type_ {
                CaBundleType::Pem => ca.pem.clone().ok_or_else(|| missing("pem"))?.into_bytes(),
                CaBundleType::SecretKeyRef => {
                    creds.get(ca.secret_key_ref.as_ref().ok_or_else(|| missing("secretKeyRef"))?, field)?.to_vec()
                }
                CaBundleType::ConfigMapKeyRef => creds
                    .config(ca.config_map_key_ref.as_ref().ok_or_else(|| missing("configMapKeyRef"))?, field)?
                    .as_bytes()
                    .to_vec(),
                CaBundleType::Unknown => return Err(Error::unsupported("tls.caBundle.type")),
            });
        }
        crate::transport::check_tls(&tls).map_err(|e| Error::CredentialsInvalid(format!("tls: {e}")))?;
        request.tls = Some(tls);
        Ok(request)
    }
}
