//! HTTPS GETs to the API server, on `ureq` with rustls (ring), in three trust modes ([`Trust`]).
//!
//! Every request has a connect timeout (TCP and TLS handshake), an overall deadline (ending with the last
//! body byte) and a body limit, each with its own error. Environment proxies are ignored and redirects
//! are answered as status errors. Hosts must be IP addresses: the resolver handed to ureq turns an IP
//! literal into its socket address and refuses everything else, so no name lookup (and no NSS, which a
//! static binary cannot load) ever happens; verified requests then check the server certificate's IP
//! SAN against that address.
//!
//! The resolver uses ureq's `unversioned` API (the `Resolver` trait), which may change in a minor ureq
//! release; that would be a compile error here, not a behaviour change.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use ureq::config::Config;
use ureq::http::Uri;
use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig, TlsProvider};
use ureq::unversioned::resolver::{ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};

/// Limits of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpOptions {
    /// For the TCP connection and the TLS handshake.
    pub connect_timeout: Duration,
    /// For the whole request, from connecting to the last body byte.
    pub deadline: Duration,
    /// Largest response body accepted, in bytes.
    pub body_limit: u64,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            connect_timeout: Duration::from_secs(10),
            deadline: Duration::from_secs(30),
            body_limit: 1024 * 1024,
        }
    }
}

/// Whom a request trusts and who it is.
#[derive(Debug, Clone, Copy)]
pub enum Trust<'a> {
    /// No server verification, anonymous: only for content that is verified otherwise.
    Insecure,
    /// The server certificate must chain to one of these CAs and name the URL's IP address.
    Ca(&'a [CertificateDer<'static>]),
    /// As [`Trust::Ca`], presenting a client certificate.
    Client {
        ca: &'a [CertificateDer<'static>],
        identity: &'a ClientIdentity,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("`{0}` is not an https URL with an IP address as host; the node resolves no host names")]
    Url(String),
    #[error("the client certificate and key: {0}")]
    ClientIdentity(String),
    #[error("no connection within {0:?}")]
    ConnectTimeout(Duration),
    #[error("no complete answer within {0:?}")]
    Deadline(Duration),
    #[error("the answer is larger than {0} bytes")]
    TooLarge(u64),
    #[error("HTTP status {code}{}", .message.as_ref().map(|m| format!(": {m}")).unwrap_or_default())]
    Status { code: u16, message: Option<String> },
    #[error("TLS verification failed: {0}")]
    Tls(String),
    #[error("the request failed")]
    Transport(#[source] ureq::Error),
}

/// A client certificate chain and its private key, checked to belong together.
#[derive(Clone)]
pub struct ClientIdentity {
    certs: usize,
    client: ClientCert,
}

impl fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientIdentity({} certificates, key <redacted>)", self.certs)
    }
}

impl ClientIdentity {
    /// Certificates and key from one PEM file, as the kubelet writes
    /// `/var/lib/kubelet/pki/kubelet-client-current.pem`. The first certificate must be the key's.
    pub fn from_pem(pem: &[u8]) -> Result<ClientIdentity, HttpError> {
        let bad = |m: String| HttpError::ClientIdentity(m);
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(format!("the PEM does not parse ({e})")))?;
        if certs.is_empty() {
            return Err(bad("no CERTIFICATE block found".to_string()));
        }
        let key = PrivateKeyDer::from_pem_slice(pem).map_err(|e| {
            bad(format!(
                "no usable private key found ({e}); expected a PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY block"
            ))
        })?;
        // The same check rustls makes when the client configuration is built, done here so a key that
        // does not fit is an error rather than a failure inside the HTTP client.
        rustls::sign::CertifiedKey::from_der(certs.clone(), key, &provider())
            .map_err(|e| bad(format!("the key does not fit the certificate ({e})")))?;
        // The same first key block, in the HTTP client's own type.
        let key = PrivateKey::from_pem(pem).map_err(|e| bad(format!("the key does not load ({e})")))?;
        let chain: Vec<Certificate<'static>> = certs
            .iter()
            .map(|c| Certificate::from_der(c.as_ref()).to_owned())
            .collect();
        Ok(ClientIdentity {
            certs: certs.len(),
            client: ClientCert::new_with_certs(&chain, key),
        })
    }
}

fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// GETs `url`, returning the body of a 200 answer.
pub fn get(url: &str, trust: Trust<'_>, opts: &HttpOptions) -> Result<Vec<u8>, HttpError> {
    let uri: Uri = url.parse().map_err(|_| HttpError::Url(url.to_string()))?;
    if socket_addr(&uri).is_none() {
        return Err(HttpError::Url(url.to_string()));
    }
    let agent = agent(trust, opts);
    let mut response = agent
        .get(uri)
        .header("Accept", "application/json")
        .call()
        .map_err(|e| map_error(e, opts))?;
    let code = response.status().as_u16();
    let body = response
        .body_mut()
        .with_config()
        .limit(opts.body_limit)
        .read_to_vec()
        .map_err(|e| map_error(e, opts))?;
    if code != 200 {
        return Err(HttpError::Status {
            code,
            message: status_message(&body),
        });
    }
    Ok(body)
}

fn agent(trust: Trust<'_>, opts: &HttpOptions) -> ureq::Agent {
    let tls = TlsConfig::builder()
        .provider(TlsProvider::Rustls)
        .unversioned_rustls_crypto_provider(Arc::new(provider()));
    let tls = match trust {
        Trust::Insecure => tls.disable_verification(true),
        Trust::Ca(ca) => tls.root_certs(roots(ca)),
        Trust::Client { ca, identity } => tls
            .root_certs(roots(ca))
            .client_cert(Some(identity.client.clone())),
    };
    let config = ureq::Agent::config_builder()
        .proxy(None)
        .max_redirects(0)
        .http_status_as_error(false)
        .timeout_connect(Some(opts.connect_timeout))
        .timeout_global(Some(opts.deadline))
        .user_agent(concat!("ingot-join/", env!("CARGO_PKG_VERSION")))
        .tls_config(tls.build())
        .build();
    ureq::Agent::with_parts(config, DefaultConnector::default(), IpLiteralResolver)
}

fn roots(ca: &[CertificateDer<'static>]) -> RootCerts {
    let certs: Vec<Certificate<'static>> = ca
        .iter()
        .map(|c| Certificate::from_der(c.as_ref()).to_owned())
        .collect();
    RootCerts::new_with_certs(&certs)
}

fn map_error(e: ureq::Error, opts: &HttpOptions) -> HttpError {
    match e {
        ureq::Error::Timeout(ureq::Timeout::Connect) => HttpError::ConnectTimeout(opts.connect_timeout),
        ureq::Error::Timeout(_) => HttpError::Deadline(opts.deadline),
        ureq::Error::BodyExceedsLimit(limit) => HttpError::TooLarge(limit),
        ureq::Error::Rustls(e) => HttpError::Tls(e.to_string()),
        ureq::Error::Io(io) => match io
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            Some(tls) => HttpError::Tls(tls.to_string()),
            None => HttpError::Transport(ureq::Error::Io(io)),
        },
        ureq::Error::HostNotFound => HttpError::Url("the request URL".to_string()),
        other => HttpError::Transport(other),
    }
}

/// The `message` of a Kubernetes `Status` answer, printable and short.
fn status_message(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let message = value.get("message")?.as_str()?;
    let clean: String = message
        .chars()
        .take(200)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    Some(clean)
}

/// The socket address of an `https://<ip literal>[:port]` URI.
fn socket_addr(uri: &Uri) -> Option<SocketAddr> {
    if uri.scheme_str() != Some("https") {
        return None;
    }
    let authority = uri.authority()?;
    if authority.as_str().contains('@') {
        return None;
    }
    let host = authority.host();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let ip: IpAddr = host.parse().ok()?;
    Some(SocketAddr::new(ip, authority.port_u16().unwrap_or(443)))
}

/// Resolves IP literals only; never looks a name up and never starts a thread.
#[derive(Debug)]
struct IpLiteralResolver;

impl Resolver for IpLiteralResolver {
    fn resolve(
        &self,
        uri: &Uri,
        _config: &Config,
        _timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let addr = socket_addr(uri).ok_or(ureq::Error::HostNotFound)?;
        let mut out = self.empty();
        out.push(addr);
        Ok(out)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn only_https_ip_literals_are_addresses() {
        let addr = |s: &str| socket_addr(&s.parse::<Uri>().unwrap());
        assert_eq!(
            addr("https://10.0.0.1:6443/x"),
            Some("10.0.0.1:6443".parse().unwrap())
        );
        assert_eq!(addr("https://10.0.0.1/x"), Some("10.0.0.1:443".parse().unwrap()));
        assert_eq!(
            addr("https://[fd00::1]:6443"),
            Some("[fd00::1]:6443".parse().unwrap())
        );
        assert_eq!(addr("https://kubernetes.default:6443"), None);
        assert_eq!(addr("http://10.0.0.1:6443"), None);
        assert_eq!(addr("https://user@10.0.0.1:6443"), None);
    }

    #[test]
    fn host_names_are_refused_before_any_io() {
        let e = get("https://localhost:1/", Trust::Insecure, &HttpOptions::default()).unwrap_err();
        assert!(matches!(e, HttpError::Url(_)), "{e}");
    }

    #[test]
    fn status_messages_are_short_and_printable() {
        let body = br#"{"kind":"Status","message":"configmaps \"cluster-info\" is forbidden:\nUser \"system:anonymous\""}"#;
        assert_eq!(
            status_message(body).unwrap(),
            "configmaps \"cluster-info\" is forbidden: User \"system:anonymous\""
        );
        assert_eq!(status_message(b"<html>"), None);
    }

    #[test]
    fn client_identity_needs_a_matching_key() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec![])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let pem = format!("{}{}", cert.pem(), key.serialize_pem());
        let id = ClientIdentity::from_pem(pem.as_bytes()).unwrap();
        assert_eq!(
            format!("{id:?}"),
            "ClientIdentity(1 certificates, key <redacted>)"
        );

        let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mismatched = format!("{}{}", cert.pem(), other.serialize_pem());
        let e = ClientIdentity::from_pem(mismatched.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("does not fit"), "{e}");
        assert!(!e.to_string().contains("PRIVATE"), "{e}");

        let e = ClientIdentity::from_pem(cert.pem().as_bytes()).unwrap_err();
        assert!(e.to_string().contains("no usable private key"), "{e}");
        let e = ClientIdentity::from_pem(key.serialize_pem().as_bytes()).unwrap_err();
        assert!(e.to_string().contains("no CERTIFICATE"), "{e}");
    }
}
