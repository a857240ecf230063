//! The fetch step: build the token request for the spec (one provider module per way of asking,
//! plus the TLS material) and send it.

use std::sync::Arc;

use jiff::Timestamp;

use super::Context;
use super::validate::Plan;
use crate::crd::{CaBundleType, TokenSource};
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;

use crate::credentials::Credentials;
use crate::error::{Error, ProviderError};
use crate::metrics::{LatencyLabels, RefreshLabels};
use crate::providers;
use crate::response::Token;
use crate::transport::Slot;

impl Context {
    /// A request slot of the host of the spec's token endpoint, with the host's key; `None` when
    /// every slot is taken, after queueing `ts` to be called back as soon as one frees.
    pub(super) fn take_slot(self: &Arc<Self>, ts: &TokenSource) -> Result<Option<(Slot, String)>, Error> {
        let url = request_url(ts, self.config.allow_http)?;
        let host_key = crate::transport::host_key(&url);
        match self.transport.slot_for(&url) {
            Some(slot) => Ok(Some((slot, host_key))),
            None => {
                self.waiting.wait(&host_key, ObjectRef::from_obj(ts));
                // Every request to the host may have ended (or its hold with them) between the
                // look for a slot and the queueing: their call-backs found no one waiting.
                self.slot_freed(&host_key);
                Ok(None)
            }
        }
    }

    /// Asks the token endpoint for a new token in `slot` (a flight's task runs this). A
    /// ServiceAccount token is requested only for a request that goes out; it and the request are
    /// fenced like every write: an instance whose fence lapses cuts them off, so it has nothing in
    /// flight once another may lead.
    pub(super) async fn send_token_request(
        self: &Arc<Self>,
        ts: &TokenSource,
        plan: &Plan,
        creds: &Credentials,
        upstream_token: Option<&str>,
        why: &str,
        (slot, host_key): (Slot, String),
    ) -> Result<Token, Error> {
        let result = self.send_in_slot(ts, plan, creds, upstream_token, why, slot).await;
        // The slot is free again: the next TokenSource waiting for this host takes it.
        self.slot_freed(&host_key);
        result
    }

    async fn send_in_slot(
        &self,
        ts: &TokenSource,
        plan: &Plan,
        creds: &Credentials,
        upstream_token: Option<&str>,
        why: &str,
        slot: Slot,
    ) -> Result<Token, Error> {
        let leadership = &self.config.leadership;
        let with_token =
            leadership.while_leading(self.with_service_account_token(ts, creds)).await.ok_or(Error::NotLeader)??;
        let creds = with_token.as_ref().unwrap_or(creds);
        let mut request = build_request(ts, creds, upstream_token, self.config.allow_http)?;
        request.timeout = Some(plan.timeout);
        tracing::info!(tokensource = %ts.name_any(), namespace = ts.namespace().unwrap_or_default(), reason = why, "requesting a token");
        let host = request.url.host_str().unwrap_or_default().to_string();
        let started = std::time::Instant::now();
        // A lifetime counts from when the provider issued the token, some time after this and
        // before the reply arrives: counted from here, the expiry is never later than the
        // provider's, however slow the reply.
        let sent_at = Timestamp::now();
        // Cut off (the connection closed) at the fence unless renewals move it: an old leader has
        // no request open once another instance may lead.
        let sent = leadership.while_leading(self.transport.send(&request, slot)).await.ok_or(Error::NotLeader)?;
        let result = match sent {
            // Parsing up to a megabyte and querying it is kept off the async runtime.
            Ok(body) => {
                let reader = plan.reader.clone();
                tokio::task::spawn_blocking(move || {
                    let token = reader.read(&body, sent_at)?;
                    // Valid when it was issued, but a slow reply can arrive after that.
                    if token.expires_at <= Timestamp::now() {
                        return Err(ProviderError::BadResponse(format!(
                            "the token expired before its reply arrived ({})",
                            token.expires_at
                        )));
                    }
                    Ok(token)
                })
                .await
                .unwrap_or_else(|_| Err(ProviderError::BadResponse("reading the reply failed".into())))
                // A reply can echo what was sent, in field names too.
                .map_err(|e| {
                    let redactor = request.redactor();
                    e.map_text(|t| redactor.redact(t))
                })
            }
            Err(e) => Err(e),
        };
        let status_class = match &result {
            Ok(_) => "2xx".to_string(),
            Err(ProviderError::Status { status, .. }) => format!("{}xx", status / 100),
            Err(_) => "error".to_string(),
        };
        let latency = LatencyLabels { host: host.clone(), status_class };
        self.metrics.token_request_seconds.get_or_create(&latency).observe(started.elapsed().as_secs_f64());
        let (result_label, refresh) = match &result {
            Ok(_) => ("Success".to_string(), RefreshLabels { result: "success".into(), reason: why.into() }),
            Err(e) => {
                (e.reason().to_string(), RefreshLabels { result: "failure".into(), reason: e.reason().to_string() })
            }
        };
        self.metrics.refreshes.get_or_create(&refresh).inc();
        self.metrics.token_request(&host, &result_label);
        Ok(result?)
    }

    /// Each token endpoint host's request limit, for the metrics.
    pub(super) fn host_rows(&self) -> Vec<crate::metrics::HostRow> {
        let waiting: std::collections::HashMap<String, usize> = self.waiting.lengths().into_iter().collect();
        self.transport
            .hosts()
            .into_iter()
            .map(|(host, s)| crate::metrics::HostRow {
                waiting: waiting.get(&host).copied().unwrap_or(0),
                host,
                limit: if s.held { 0 } else { s.limit },
                in_flight: s.in_flight,
                throttled: s.throttled,
            })
            .collect()
    }

    /// A slot of `host_key` is free again: as many TokenSources waiting for this host as it has
    /// free slots now (its limit may have grown, or shrunk) take them, longest waiting first.
    /// While the host's `Retry-After` holds every request back, they are called back when it
    /// ends.
    pub(super) fn slot_freed(self: &Arc<Self>, host_key: &str) {
        let (free, held_until) = self.transport.free_slots(host_key);
        let next: Vec<_> = (0..free).map_while(|_| self.waiting.next(host_key)).collect();
        self.wake(next);
        if let Some(until) = held_until
            && self.waiting.hold(host_key)
        {
            let (ctx, host) = (self.clone(), host_key.to_string());
            tokio::spawn(async move {
                tokio::time::sleep_until(until.into()).await;
                ctx.waiting.held_over(&host);
                ctx.slot_freed(&host);
            });
        }
    }
}

/// The URL the spec's token request goes to.
fn request_url(ts: &TokenSource, allow_http: bool) -> Result<url::Url, Error> {
    match (&ts.spec.oauth2, &ts.spec.http) {
        (Some(o), _) => providers::parse_url("oauth2.tokenURL", &o.token_url, allow_http),
        (None, Some(h)) => providers::parse_url("http.url", &h.url, allow_http),
        (None, None) => Err(Error::InvalidSpec("set exactly one of spec.oauth2 and spec.http".into())),
    }
}

/// The token request a spec asks for, with its TLS material: what the operator sends, and what
/// `kubectl tokensource check` sends.
pub fn build_request(
    ts: &TokenSource,
    creds: &Credentials,
    upstream_token: Option<&str>,
    allow_http: bool,
) -> Result<providers::Request, Error> {
    let request = match (&ts.spec.oauth2, &ts.spec.http) {
        (Some(o), _) => providers::oauth2::request(o, creds, allow_http)?,
        (None, Some(h)) => providers::http::request(h, creds, upstream_token, allow_http)?,
        (None, None) => return Err(Error::InvalidSpec("set exactly one of spec.oauth2 and spec.http".into())),
    };
    with_tls(ts, creds, request)
}

/// Adds the spec's client certificate and CA bundle to a request.
fn with_tls(
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
