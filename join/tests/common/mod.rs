//! A hostile API server for the join tests: rustls on 127.0.0.1 in threads, certificates from rcgen,
//! answering each connection as the test's script says.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ingot_join::jws;
use ingot_spec::node_config::{BootstrapToken, CaPin, Endpoint};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    PKCS_ECDSA_P256_SHA256, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

pub const TOKEN: &str = "abcdef.0123456789abcdef";
pub const SECRET: &str = "0123456789abcdef";

pub fn token() -> BootstrapToken {
    BootstrapToken::parse(TOKEN).unwrap()
}

/// A CA and a serving certificate for 127.0.0.1 it issued.
pub struct Pki {
    pub ca_pem: String,
    pub ca_der: CertificateDer<'static>,
    pub ca_pin: CaPin,
    issuer: Issuer<'static, KeyPair>,
    pub server_chain: Vec<CertificateDer<'static>>,
    pub server_key_der: Vec<u8>,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        Pki::serving(name, Ipv4Addr::LOCALHOST)
    }

    /// A CA whose serving certificate names `ip` (the test server always listens on 127.0.0.1).
    pub fn serving(name: &str, ip: Ipv4Addr) -> Pki {
        let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let ca = params.self_signed(&ca_key).unwrap();
        let ca_pin = CaPin(ingot_join::pin::spki_sha256(ca.der()).unwrap());
        let issuer = Issuer::new(params, ca_key);

        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        params.subject_alt_names = vec![SanType::IpAddress(ip.into())];
        let cert = params.signed_by(&key, &issuer).unwrap();
        Pki {
            ca_pem: ca.pem(),
            ca_der: ca.der().clone(),
            ca_pin,
            issuer,
            server_chain: vec![cert.der().clone()],
            server_key_der: key.serialize_der(),
        }
    }

    /// A kubelet client certificate (`system:node:<name>`) and key in one PEM, as the kubelet writes
    /// `kubelet-client-current.pem`.
    pub fn client_pem(&self, node: &str) -> String {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("system:node:{node}"));
        params
            .distinguished_name
            .push(DnType::OrganizationName, "system:nodes");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        format!("{}{}", cert.pem(), key.serialize_pem())
    }
}

/// cluster-info's kubeconfig as kubeadm writes it.
pub fn kubeconfig(server: &str, ca_pem: &str) -> String {
    format!(
        "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: {}\n    server: {server}\n  name: \"\"\ncontexts: null\ncurrent-context: \"\"\nkind: Config\npreferences: {{}}\nusers: null\n",
        STANDARD.encode(ca_pem)
    )
}

/// The cluster-info ConfigMap with these data entries.
pub fn config_map(data: &[(&str, &str)]) -> String {
    let data: serde_json::Map<String, serde_json::Value> = data
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
        .collect();
    serde_json::json!({
        "kind": "ConfigMap",
        "apiVersion": "v1",
        "metadata": {"name": "cluster-info", "namespace": "kube-public"},
        "data": data,
    })
    .to_string()
}

/// A ConfigMap signed for the test token.
pub fn signed(kubeconfig: &str) -> String {
    let sig = jws::sign("abcdef", SECRET, kubeconfig);
    config_map(&[("kubeconfig", kubeconfig), ("jws-kubeconfig-abcdef", &sig)])
}

/// What the server does with one connection.
#[derive(Clone)]
pub enum Reply {
    /// Status 200 and this body.
    Ok(String),
    /// This status and body.
    Status(u16, String),
    /// 200 with a header `Content-Length`, then the body one byte per interval.
    Trickle(String, Duration),
    /// Accept the TCP connection, then say nothing (not even the TLS handshake) for this long.
    Silent(Duration),
    /// Raw bytes as the whole answer after the request.
    Raw(Vec<u8>),
}

pub type Script = Arc<dyn Fn(usize) -> Reply + Send + Sync>;

pub struct Server {
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub connections: Arc<AtomicUsize>,
    /// Request paths seen.
    pub paths: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl Server {
    /// Serves with this certificate chain and key; `client_ca` makes client certificates mandatory.
    pub fn start(
        chain: Vec<CertificateDer<'static>>,
        key_der: Vec<u8>,
        client_ca: Option<CertificateDer<'static>>,
        script: impl Fn(usize) -> Reply + Send + Sync + 'static,
    ) -> Server {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match client_ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                roots.add(ca).unwrap();
                let verifier =
                    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_der));
        let config = Arc::new(builder.with_single_cert(chain, key).unwrap());

        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let paths = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let script: Script = Arc::new(script);
        {
            let (connections, paths, stop) = (connections.clone(), paths.clone(), stop.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((tcp, _)) => {
                            let n = connections.fetch_add(1, Ordering::SeqCst);
                            let reply = script(n);
                            let (config, paths) = (config.clone(), paths.clone());
                            thread::spawn(move || serve(tcp, config, reply, paths));
                        }
                        Err(_) => thread::sleep(Duration::from_millis(5)),
                    }
                }
            });
        }
        Server {
            addr,
            connections,
            paths,
            stop,
        }
    }

    pub fn with_pki(pki: &Pki, script: impl Fn(usize) -> Reply + Send + Sync + 'static) -> Server {
        Server::start(pki.server_chain.clone(), pki.server_key_der.clone(), None, script)
    }

    pub fn endpoint(&self) -> Endpoint {
        Endpoint {
            ip: self.addr.ip(),
            port: self.addr.port(),
        }
    }

    pub fn url(&self) -> String {
        self.endpoint().url()
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn serve(tcp: TcpStream, config: Arc<rustls::ServerConfig>, reply: Reply, paths: Arc<Mutex<Vec<String>>>) {
    tcp.set_nonblocking(false).ok();
    if let Reply::Silent(d) = reply {
        thread::sleep(d);
        return;
    }
    tcp.set_read_timeout(Some(Duration::from_secs(10))).ok();
    tcp.set_write_timeout(Some(Duration::from_secs(10))).ok();
    let Ok(conn) = rustls::ServerConnection::new(config) else {
        return;
    };
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match tls.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
        if request.len() > 64 * 1024 {
            return;
        }
    }
    let text = String::from_utf8_lossy(&request);
    if let Some(path) = text.split_whitespace().nth(1) {
        paths.lock().unwrap().push(path.to_string());
    }
    let head = |code: u16, len: usize| {
        format!(
            "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
        )
    };
    let _ = match reply {
        Reply::Ok(body) => tls
            .write_all(head(200, body.len()).as_bytes())
            .and_then(|_| tls.write_all(body.as_bytes())),
        Reply::Status(code, body) => tls
            .write_all(head(code, body.len()).as_bytes())
            .and_then(|_| tls.write_all(body.as_bytes())),
        Reply::Trickle(body, every) => {
            let mut r = tls.write_all(head(200, body.len()).as_bytes());
            for b in body.as_bytes() {
                if r.is_err() {
                    break;
                }
                r = tls.write_all(&[*b]).and_then(|_| tls.flush());
                thread::sleep(every);
            }
            r
        }
        Reply::Raw(bytes) => tls.write_all(&bytes),
        Reply::Silent(_) => Ok(()),
    };
    let _ = tls.flush();
    tls.conn.send_close_notify();
    let _ = tls.flush();
}

/// Every message of an error and its sources, and its Debug form.
pub fn all_text(e: &dyn std::error::Error) -> String {
    let mut out = format!("{e:?}");
    let mut cur: Option<&dyn std::error::Error> = Some(e);
    while let Some(err) = cur {
        out.push_str(&format!("\n{err}"));
        cur = err.source();
    }
    out
}
