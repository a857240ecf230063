//! HTTPS for the fakes, with optional client certificates, and the two endpoints that need it:
//! RFC 8705 `tls_client_auth` and RFC 7523 `private_key_jwt`, each as strict as an identity
//! provider: certificate binding, assertion signature, `iss`/`sub`/`aud`, expiry and `jti` reuse.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::serve::{IncomingStream, Listener};
use base64::Engine;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair, RSA_PKCS1_2048_8192_SHA256,
    RsaKeyPair, UnparsedPublicKey,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::{Endpoint, Shared, lock, media_type, oauth_error, random_token};

/// Test-only key material (see `fixtures/generate.sh`).
pub mod fixtures {
    pub const CA_CERT: &[u8] = include_bytes!("../fixtures/ca.crt");
    pub const SERVER_CERT: &[u8] = include_bytes!("../fixtures/server.crt");
    pub const SERVER_KEY: &[u8] = include_bytes!("../fixtures/server.key");
    pub const CLIENT_CERT: &[u8] = include_bytes!("../fixtures/client.crt");
    pub const CLIENT_KEY: &[u8] = include_bytes!("../fixtures/client.key");
    pub const JWT_RSA_KEY: &[u8] = include_bytes!("../fixtures/jwt-rsa.key");
    pub const JWT_EC_KEY: &[u8] = include_bytes!("../fixtures/jwt-ec.key");
    /// A second RSA key, for key rotations.
    pub const JWT_RSA_KEY_2: &[u8] = include_bytes!("../fixtures/jwt-rsa-2.key");
}

/// Who is on the other end of a TLS connection.
#[derive(Clone, Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The verified client certificate, if one was presented.
    pub client_cert: Option<Vec<u8>>,
}

pub struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
}

impl Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else { continue };
            match self.acceptor.accept(tcp).await {
                Ok(tls) => {
                    let client_cert =
                        tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.as_ref().to_vec());
                    return (tls, Peer { addr, client_cert });
                }
                Err(e) => tracing::debug!(error = %e, "fake provider: TLS handshake failed"),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(Peer { addr: self.tcp.local_addr()?, client_cert: None })
    }
}

impl axum::extract::connect_info::Connected<IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        stream.remote_addr().clone()
    }
}

fn pem_error(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(format!("fixture: {e}"))
}

pub async fn listener(addr: SocketAddr) -> std::io::Result<TlsListener> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(fixtures::CA_CERT).map_err(pem_error)?).map_err(pem_error)?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(pem_error)?;
    let chain = vec![CertificateDer::from_pem_slice(fixtures::SERVER_CERT).map_err(pem_error)?];
    let key = PrivateKeyDer::from_pem_slice(fixtures::SERVER_KEY).map_err(pem_error)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(pem_error)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(pem_error)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpListener::bind(addr).await?;
    Ok(TlsListener { tcp, acceptor: TlsAcceptor::from(Arc::new(config)) })
}

pub(crate) fn form(body: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

pub(crate) fn get<'a>(form: &'a [(String, String)], k: &str) -> Option<&'a str> {
    form.iter().find(|(x, _)| x == k).map(|(_, v)| v.as_str())
}

fn issue(s: &Shared, e: Endpoint) -> Response {
    let lifetime = s.lifetime(e);
    let token = random_token(32);
    s.issue(e, token.clone(), lifetime);
    crate::json_response(
        StatusCode::OK,
        json!({"access_token": token, "expires_in": lifetime.as_secs(), "token_type": "Bearer"}),
    )
}

/// RFC 8705 `tls_client_auth`: the client certificate must be the registered one.
pub(crate) async fn mtls_token(
    State(s): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let e = Endpoint::MtlsToken;
    if let Some(r) = s.enter(e) {
        return r;
    }
    let invalid =
        || oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "Client certificate authentication failed");
    let expected = CertificateDer::from_pem_slice(fixtures::CLIENT_CERT).map(|c| c.as_ref().to_vec()).ok();
    match &peer.client_cert {
        None => return s.reject(e, "no client certificate", invalid()),
        Some(c) if Some(c) != expected.as_ref() => return s.reject(e, "unregistered client certificate", invalid()),
        Some(_) => {}
    }
    if media_type(&headers) != "application/x-www-form-urlencoded" {
        return s.reject(
            e,
            "Content-Type is not form",
            oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "form body expected"),
        );
    }
    let f = form(&body);
    let client_id = lock(&s.config).mtls_client_id.clone();
    if get(&f, "grant_type") != Some("client_credentials") || get(&f, "client_id") != Some(client_id.as_str()) {
        return s.reject(
            e,
            "grant_type or client_id wrong",
            oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "bad parameters"),
        );
    }
    if headers.contains_key(axum::http::header::AUTHORIZATION) || get(&f, "client_secret").is_some() {
        return s.reject(
            e,
            "more than one authentication method",
            oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "multiple client authentication methods"),
        );
    }
    issue(&s, e)
}

/// The RSA and the EC public key of the fixtures' assertion signing keys.
type PublicKeys = (UnparsedPublicKey<Vec<u8>>, UnparsedPublicKey<Vec<u8>>);

fn public_keys() -> Option<PublicKeys> {
    let rsa = match PrivateKeyDer::from_pem_slice(fixtures::JWT_RSA_KEY).ok()? {
        PrivateKeyDer::Pkcs8(k) => RsaKeyPair::from_pkcs8(k.secret_pkcs8_der()).ok()?,
        _ => return None,
    };
    let ec = match PrivateKeyDer::from_pem_slice(fixtures::JWT_EC_KEY).ok()? {
        PrivateKeyDer::Pkcs8(k) => EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            k.secret_pkcs8_der(),
            &ring::rand::SystemRandom::new(),
        )
        .ok()?,
        _ => return None,
    };
    Some((
        UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, rsa.public_key().as_ref().to_vec()),
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, ec.public_key().as_ref().to_vec()),
    ))
}

/// Checks a client assertion; the reason on failure.
fn check_assertion(s: &Shared, assertion: &str, audience: &str) -> Result<(), String> {
    let parts: Vec<&str> = assertion.split('.').collect();
    let [h, c, sig] = parts.as_slice() else { return Err("assertion is not a JWS".into()) };
    let d = |x: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(x).map_err(|_| "assertion is not base64url".to_string())
    };
    let header: Value = serde_json::from_slice(&d(h)?).map_err(|_| "bad header")?;
    let claims: Value = serde_json::from_slice(&d(c)?).map_err(|_| "bad claims")?;
    let (rsa, ec) = public_keys().ok_or("fixture keys")?;
    let input = format!("{h}.{c}");
    let sig = d(sig)?;
    let verified = match header["alg"].as_str() {
        Some("RS256") => rsa.verify(input.as_bytes(), &sig).is_ok(),
        Some("ES256") => ec.verify(input.as_bytes(), &sig).is_ok(),
        _ => return Err("unsupported alg".into()),
    };
    if !verified {
        return Err("assertion signature does not verify".into());
    }
    let client_id = lock(&s.config).jwt_client_id.clone();
    if claims["iss"] != client_id.as_str() || claims["sub"] != client_id.as_str() {
        return Err("iss and sub must be the client id".into());
    }
    if claims["aud"] != audience {
        return Err(format!("aud {} is not {audience}", claims["aud"]));
    }
    let now = jiff::Timestamp::now().as_second();
    let (exp, iat) = (claims["exp"].as_i64().unwrap_or(0), claims["iat"].as_i64().unwrap_or(0));
    if exp <= now || exp - iat > 300 || iat > now + 60 {
        return Err("assertion expired or too long-lived".into());
    }
    let jti = claims["jti"].as_str().ok_or("no jti")?;
    if !lock(&s.inner).nonces.insert(format!("jti:{jti}")) {
        return Err("jti reused".into());
    }
    Ok(())
}

/// RFC 7523 `private_key_jwt` at `/jwt/token`; the audience is this endpoint's URL.
pub(crate) async fn jwt_token(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let e = Endpoint::JwtToken;
    if let Some(r) = s.enter(e) {
        return r;
    }
    if media_type(&headers) != "application/x-www-form-urlencoded" {
        return s.reject(
            e,
            "Content-Type is not form",
            oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "form body expected"),
        );
    }
    let f = form(&body);
    if get(&f, "grant_type") != Some("client_credentials") {
        return s.reject(
            e,
            "grant_type",
            oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type", "client_credentials only"),
        );
    }
    if get(&f, "client_assertion_type") != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer") {
        return s.reject(
            e,
            "client_assertion_type",
            oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "bad client_assertion_type"),
        );
    }
    let audience = format!("https://localhost:{}{}", peer_port(&s), Endpoint::JwtToken.path());
    match get(&f, "client_assertion").map(|a| check_assertion(&s, a, &audience)) {
        Some(Ok(())) => issue(&s, e),
        Some(Err(why)) => {
            s.reject(e, why, oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "client assertion rejected"))
        }
        None => s.reject(
            e,
            "no client_assertion",
            oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "client_assertion missing"),
        ),
    }
}

fn peer_port(s: &Shared) -> u16 {
    *lock(&s.port)
}
