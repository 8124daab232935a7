//! A real Kubernetes 1.20 control plane on the host's loopback for the join tests: etcd, kube-apiserver,
//! kube-controller-manager and kube-scheduler, each a child process with its log in a temporary directory,
//! on ports chosen at start. No kubelet runs on the host; nodes join from VMs.
//!
//! The PKI is generated here (ECDSA P-256): a CA, the apiserver's serving certificate (loopback, the
//! `kubernetes` service names, 10.96.0.1 and the caller's extra SANs, e.g. the QEMU guestfwd address a VM
//! reaches the apiserver at), client certificates for the admin, the apiserver's kubelet client, the
//! controller manager and the scheduler, and the service-account key. The controller manager signs and
//! approves node client CSRs with the CA and runs the bootstrap signer and token cleaner, so a node can join
//! with a bootstrap token the way `kubeadm join` does: [`KubeCluster::create_bootstrap_token`],
//! [`KubeCluster::create_kubeadm_rbac`] and [`KubeCluster::publish_cluster_info`] create what
//! `kubeadm init` would.
//!
//! Every API call goes over HTTPS with `ureq` (no `kubectl`). The binaries come from `INGOT_K8S_BIN`
//! (`scripts/k8s-1.20` builds them) or its cache directory; etcd from Debian's `etcd-server`.
//!
//! Dropping the cluster stops the components (controllers first, then the apiserver, then etcd; SIGTERM,
//! SIGKILL after a few seconds: the apiserver can take a minute and a half to exit on SIGTERM), waits for
//! them and removes the directory. The children also get SIGKILL when the thread that started them ends
//! (`setpriv --pdeathsig`), so a test process killed on a timeout leaves nothing behind: create and drop a
//! cluster on the same thread. `INGOT_KUBE_KEEP=1` keeps the directory (logs, PKI, `admin.conf`).

use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, PublicKeyData,
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig};

/// The group kubeadm gives its default node-join tokens.
pub const DEFAULT_NODE_TOKEN_GROUP: &str = "system:bootstrappers:kubeadm:default-node-token";
const SERVICE_CIDR: &str = "10.96.0.0/12";
const CONTROL_PLANE: [&str; 3] = ["kube-apiserver", "kube-controller-manager", "kube-scheduler"];
const POLL: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("{0}")]
    Missing(String),
    #[error("creating a temporary directory for the cluster")]
    TempDir(#[source] io::Error),
    #[error("choosing a free port on 127.0.0.1")]
    Port(#[source] io::Error),
    #[error("generating the {what} certificate")]
    Pki {
        what: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("writing {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("starting {name} ({})", bin.display())]
    Spawn {
        name: String,
        bin: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{name} exited ({status}) while it should be running; last lines of {}:\n{tail}", log.display())]
    Exited {
        name: String,
        status: ExitStatus,
        log: PathBuf,
        tail: String,
    },
    #[error("{what} not within {waited:?}; {detail}")]
    Timeout {
        what: String,
        waited: Duration,
        detail: String,
    },
    #[error("{method} {url}: no HTTP response")]
    Http {
        method: &'static str,
        url: String,
        #[source]
        source: Box<ureq::Error>,
    },
    #[error("{method} {url}: HTTP {status}, expected a success: {body}")]
    Status {
        method: &'static str,
        url: String,
        status: u16,
        body: String,
    },
    #[error("{method} {url}: the body is not the JSON expected: {body}")]
    Json {
        method: &'static str,
        url: String,
        body: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("bootstrap token {0:?}: expected an id of 6 and a secret of 16 characters from [a-z0-9]")]
    Token(String),
    #[error("{what}: PEM expected")]
    Pem {
        what: &'static str,
        #[source]
        source: ureq::Error,
    },
    #[error("pod {namespace}/{name} ended in phase {phase}, expected {want}; status: {status}")]
    PodPhase {
        namespace: String,
        name: String,
        phase: String,
        want: String,
        status: String,
    },
}

pub type Result<T, E = ClusterError> = std::result::Result<T, E>;

/// How to start a cluster; `Default` gives a loopback-only one.
#[derive(Clone, Debug, Default)]
pub struct KubeOpts {
    /// More subject alternative names of the apiserver certificate: IP addresses or DNS names (a VM guest
    /// reaching the apiserver through a QEMU guestfwd needs that address, e.g. `10.0.2.100`).
    pub extra_sans: Vec<String>,
    /// The directory with the Kubernetes binaries; [`k8s_bin_dir`] if `None`.
    pub bin_dir: Option<PathBuf>,
    /// More kube-apiserver flags (a later flag wins over ours).
    pub apiserver_args: Vec<String>,
    /// More kube-controller-manager flags, e.g. `--allocate-node-cidrs=true --cluster-cidr=10.244.0.0/16`.
    pub controller_manager_args: Vec<String>,
}

/// How long the start took, from the beginning of [`KubeCluster::start`].
#[derive(Clone, Copy, Debug)]
pub struct StartTimings {
    pub pki: Duration,
    pub etcd_ready: Duration,
    pub apiserver_ready: Duration,
}

/// The directory with kubelet, kube-apiserver, kube-controller-manager and kube-scheduler: `INGOT_K8S_BIN`,
/// else the cache `scripts/k8s-1.20` fills.
pub fn k8s_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("INGOT_K8S_BIN") {
        return PathBuf::from(dir);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/nonexistent"));
    cache.join("ingot-tests/k8s-1.20.2/bin")
}

/// Whether a control plane can start here; when it cannot, [`ingot_testkit::skip`]s `test` saying what is
/// missing (a failure under CI). With `INGOT_K8S_BIN` set, always true: the binaries were asked for, and a
/// missing piece fails the start instead.
pub fn control_plane_can_start(test: &str) -> bool {
    if std::env::var_os("INGOT_K8S_BIN").is_some() {
        return true;
    }
    ingot_testkit::require(test, missing(&k8s_bin_dir())).is_some()
}

fn missing(bin_dir: &Path) -> Result<(), String> {
    for b in CONTROL_PLANE {
        if !bin_dir.join(b).is_file() {
            return Err(format!(
                "{} is missing (scripts/k8s-1.20 builds it; INGOT_K8S_BIN names the directory)",
                bin_dir.join(b).display()
            ));
        }
    }
    if ingot_testkit::find_program("etcd").is_none() {
        return Err(ingot_spec::host_tools::missing_summary("etcd"));
    }
    Ok(())
}

/// The last `n` lines of a log file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = match fs::read(path) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) => return format!("(cannot read {}: {e})", path.display()),
    };
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `sha256:<hex>` over the DER SubjectPublicKeyInfo: kubeadm's `--discovery-token-ca-cert-hash`.
pub fn spki_pin(spki_der: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(spki_der)))
}

// ---------------------------------------------------------------------------------------------------------
// PKI

struct Pki {
    ca_key: KeyPair,
    ca_params: CertificateParams,
    ca_pem: String,
    ca_der: Vec<u8>,
}

/// A certificate and its key, PEM.
#[derive(Clone)]
pub struct CertKey {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Pki {
    fn new() -> Result<Pki> {
        let pki_err = |source| ClusterError::Pki {
            what: "CA".into(),
            source,
        };
        let ca_key = KeyPair::generate().map_err(pki_err)?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(pki_err)?;
        ca_params.distinguished_name = dn("kubernetes", None);
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = ca_params.self_signed(&ca_key).map_err(pki_err)?;
        Ok(Pki {
            ca_pem: ca.pem(),
            ca_der: ca.der().to_vec(),
            ca_key,
            ca_params,
        })
    }

    fn issue(
        &self,
        cn: &str,
        org: Option<&str>,
        sans: &[String],
        usage: ExtendedKeyUsagePurpose,
    ) -> Result<CertKey> {
        let pki_err = |source| ClusterError::Pki {
            what: cn.into(),
            source,
        };
        let key = KeyPair::generate().map_err(pki_err)?;
        let mut params = CertificateParams::new(sans.to_vec()).map_err(pki_err)?;
        params.distinguished_name = dn(cn, org);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        let issuer = Issuer::from_params(&self.ca_params, &self.ca_key);
        let cert = params.signed_by(&key, &issuer).map_err(pki_err)?;
        Ok(CertKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

fn dn(cn: &str, org: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    if let Some(o) = org {
        dn.push(DnType::OrganizationName, o);
    }
    dn.push(DnType::CommonName, cn);
    dn
}

fn write(path: &Path, contents: impl AsRef<[u8]>) -> Result<()> {
    fs::write(path, contents).map_err(|source| ClusterError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// A kubeconfig with one cluster, one user and one context, as kubeadm writes them.
fn kubeconfig(server: &str, ca_pem: &str, user: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    certificate-authority-data: {ca}\n    \
         server: {server}\n  name: kubernetes\ncontexts:\n- context:\n    cluster: kubernetes\n    \
         user: user\n  name: default\ncurrent-context: default\npreferences: {{}}\nusers:\n- name: user\n  \
         user:\n{user}",
        ca = B64.encode(ca_pem),
    )
}

fn kubeconfig_with_cert(server: &str, ca_pem: &str, ck: &CertKey) -> String {
    let user = format!(
        "    client-certificate-data: {}\n    client-key-data: {}\n",
        B64.encode(&ck.cert_pem),
        B64.encode(&ck.key_pem)
    );
    kubeconfig(server, ca_pem, &user)
}

/// A kubeconfig authenticating with a bearer token (`bootstrap-kubelet.conf` for a bootstrap token).
pub fn kubeconfig_with_token(server: &str, ca_pem: &str, token: &str) -> String {
    kubeconfig(server, ca_pem, &format!("    token: {token}\n"))
}

/// The kubeconfig kubeadm puts into `kube-public/cluster-info`: the cluster only, no user.
pub fn cluster_info_kubeconfig(server: &str, ca_pem: &str) -> String {
    format!(
        "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: {}\n    server: {server}\n  \
         name: \"\"\ncontexts: null\ncurrent-context: \"\"\nkind: Config\npreferences: {{}}\nusers: null\n",
        B64.encode(ca_pem)
    )
}

// ---------------------------------------------------------------------------------------------------------
// HTTP

/// Sends every connection to one address whatever the URL's host is, as QEMU's guestfwd does for a guest.
#[derive(Debug)]
struct FixedResolver(SocketAddr);

impl ureq::unversioned::resolver::Resolver for FixedResolver {
    fn resolve(
        &self,
        _uri: &ureq::http::Uri,
        _config: &ureq::config::Config,
        _timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<ureq::unversioned::resolver::ResolvedSocketAddrs, ureq::Error> {
        let mut addrs = self.empty();
        addrs.push(self.0);
        Ok(addrs)
    }
}

/// How an [`ApiClient`] checks the server and authenticates.
#[derive(Clone)]
pub enum Auth {
    /// No credentials: `system:anonymous`.
    Anonymous,
    /// A client certificate.
    Cert(CertKey),
    /// `Authorization: Bearer`.
    Bearer(String),
}

/// An HTTPS client of one apiserver.
#[derive(Clone)]
pub struct ApiClient {
    agent: ureq::Agent,
    base: String,
    bearer: Option<String>,
}

impl ApiClient {
    /// A client of `base` (`https://host:port`). `ca_pem` = `None` skips the server's verification (the
    /// first, unauthenticated step of token discovery). With `connect_to`, every connection goes to that
    /// address whatever `base` names, so the certificate is checked against `base`'s host.
    pub fn new(
        base: &str,
        ca_pem: Option<&str>,
        auth: Auth,
        connect_to: Option<SocketAddr>,
    ) -> Result<ApiClient> {
        let mut tls = TlsConfig::builder();
        match ca_pem {
            Some(pem) => {
                let ca = Certificate::from_pem(pem.as_bytes()).map_err(|source| ClusterError::Pem {
                    what: "CA certificate",
                    source,
                })?;
                tls = tls.root_certs(RootCerts::new_with_certs(&[ca]));
            }
            None => tls = tls.disable_verification(true),
        }
        let mut bearer = None;
        match auth {
            Auth::Anonymous => {}
            Auth::Bearer(t) => bearer = Some(t),
            Auth::Cert(ck) => {
                let cert =
                    Certificate::from_pem(ck.cert_pem.as_bytes()).map_err(|source| ClusterError::Pem {
                        what: "client certificate",
                        source,
                    })?;
                let key =
                    PrivateKey::from_pem(ck.key_pem.as_bytes()).map_err(|source| ClusterError::Pem {
                        what: "client key",
                        source,
                    })?;
                tls = tls.client_cert(Some(ClientCert::new_with_certs(&[cert], key)));
            }
        }
        let config = ureq::Agent::config_builder()
            .tls_config(tls.build())
            .http_status_as_error(false)
            .proxy(None)
            .timeout_global(Some(Duration::from_secs(30)))
            .build();
        let agent = match connect_to {
            Some(addr) => ureq::Agent::with_parts(
                config,
                ureq::unversioned::transport::DefaultConnector::default(),
                FixedResolver(addr),
            ),
            None => config.new_agent(),
        };
        Ok(ApiClient {
            agent,
            base: base.trim_end_matches('/').to_string(),
            bearer,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// One request; returns the status and the body, whatever the status.
    pub fn request(
        &self,
        method: &'static str,
        path: &str,
        body: Option<(&str, &[u8])>,
    ) -> Result<(u16, String)> {
        let url = format!("{}{path}", self.base);
        let auth = self.bearer.as_ref().map(|t| format!("Bearer {t}"));
        let with_auth = |r: ureq::RequestBuilder<ureq::typestate::WithBody>| match &auth {
            Some(a) => r.header("Authorization", a),
            None => r,
        };
        let result = match (method, body) {
            ("GET", _) | ("DELETE", _) => {
                let r = if method == "GET" {
                    self.agent.get(&url)
                } else {
                    self.agent.delete(&url)
                };
                let r = match &auth {
                    Some(a) => r.header("Authorization", a),
                    None => r,
                };
                r.header("Accept", "application/json").call()
            }
            (_, body) => {
                let r = match method {
                    "POST" => self.agent.post(&url),
                    "PUT" => self.agent.put(&url),
                    _ => self.agent.patch(&url),
                };
                let (ctype, bytes) = body.unwrap_or(("application/json", b"{}"));
                with_auth(r)
                    .header("Accept", "application/json")
                    .header("Content-Type", ctype)
                    .send(bytes)
            }
        };
        let mut resp = result.map_err(|source| ClusterError::Http {
            method,
            url: url.clone(),
            source: Box::new(source),
        })?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .read_to_string()
            .map_err(|source| ClusterError::Http {
                method,
                url,
                source: Box::new(source),
            })?;
        Ok((status, text))
    }

    fn json(&self, method: &'static str, path: &str, body: Option<(&str, &[u8])>) -> Result<Value> {
        let (status, text) = self.request(method, path, body)?;
        let url = format!("{}{path}", self.base);
        if !(200..300).contains(&status) {
            return Err(ClusterError::Status {
                method,
                url,
                status,
                body: text,
            });
        }
        serde_json::from_str(&text).map_err(|source| ClusterError::Json {
            method,
            url,
            body: text,
            source,
        })
    }

    /// GET, expecting a 2xx JSON answer.
    pub fn get(&self, path: &str) -> Result<Value> {
        self.json("GET", path, None)
    }

    /// GET; `None` for 404.
    pub fn get_opt(&self, path: &str) -> Result<Option<Value>> {
        match self.get(path) {
            Err(ClusterError::Status { status: 404, .. }) => Ok(None),
            r => r.map(Some),
        }
    }

    /// POST a JSON object (create), expecting 2xx.
    pub fn post(&self, path: &str, body: &Value) -> Result<Value> {
        self.json(
            "POST",
            path,
            Some(("application/json", body.to_string().as_bytes())),
        )
    }

    /// A JSON merge patch, expecting 2xx.
    pub fn merge_patch(&self, path: &str, patch: &Value) -> Result<Value> {
        self.json(
            "PATCH",
            path,
            Some(("application/merge-patch+json", patch.to_string().as_bytes())),
        )
    }
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(ClusterError::Port)?;
    l.local_addr().map(|a| a.port()).map_err(ClusterError::Port)
}

// ---------------------------------------------------------------------------------------------------------
// Processes

struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn exited(&mut self) -> Option<ClusterError> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(ClusterError::Exited {
                name: self.name.into(),
                status,
                tail: tail(&self.log, 40),
                log: self.log.clone(),
            }),
            _ => None,
        }
    }
}

fn term(p: &Proc) {
    if let Some(pid) = rustix::process::Pid::from_raw(p.child.id() as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
}

/// SIGTERM to all of `procs`, SIGKILL to those still running after `grace`, and wait for all.
fn stop(procs: &mut [Proc], grace: Duration) {
    for p in procs.iter() {
        term(p);
    }
    let deadline = Instant::now() + grace;
    for p in procs.iter_mut() {
        while matches!(p.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if matches!(p.child.try_wait(), Ok(None)) {
            let _ = p.child.kill();
        }
        let _ = p.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------------------
// The cluster

/// A bootstrap token: id `[a-z0-9]{6}`, secret `[a-z0-9]{16}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootstrapToken {
    pub id: String,
    pub secret: String,
}

impl BootstrapToken {
    /// From `id.secret`, checked against kubeadm's pattern.
    pub fn parse(token: &str) -> Result<BootstrapToken> {
        let ok = |s: &str, n: usize| {
            s.len() == n && s.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
        };
        match token.split_once('.') {
            Some((id, secret)) if ok(id, 6) && ok(secret, 16) => Ok(BootstrapToken {
                id: id.into(),
                secret: secret.into(),
            }),
            _ => Err(ClusterError::Token(token.into())),
        }
    }

    /// A random token, as `kubeadm token generate` makes.
    pub fn generate() -> BootstrapToken {
        use rand::Rng;
        const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
        let mut rng = rand::thread_rng();
        let mut pick = |n: usize| -> String {
            (0..n)
                .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
                .collect()
        };
        BootstrapToken {
            id: pick(6),
            secret: pick(16),
        }
    }

    /// `id.secret`, the form `kubeadm join --token` and the bearer header take.
    pub fn token(&self) -> String {
        format!("{}.{}", self.id, self.secret)
    }
}

pub struct KubeCluster {
    // Declared first so the processes are stopped (in `drop`) before the directory goes.
    procs: Mutex<Vec<Proc>>,
    dir: tempfile::TempDir,
    api_port: u16,
    ca_pem: String,
    ca_der: Vec<u8>,
    ca_spki: Vec<u8>,
    admin_cert: CertKey,
    admin: ApiClient,
    started: Instant,
    timings: StartTimings,
}

impl KubeCluster {
    /// Generates the PKI, starts etcd and kube-apiserver and waits until both are ready, then starts the
    /// controller manager and the scheduler (not waited for: [`KubeCluster::check_running`] and every
    /// `wait_*` notice if one dies). A port taken by another process in between is retried with new ports.
    pub fn start(opts: KubeOpts) -> Result<KubeCluster> {
        let bin_dir = opts.bin_dir.clone().unwrap_or_else(k8s_bin_dir);
        missing(&bin_dir).map_err(ClusterError::Missing)?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::start_once(&opts, &bin_dir) {
                Err(ClusterError::Exited { ref tail, .. })
                    if attempt < 3 && tail.contains("address already in use") =>
                {
                    continue;
                }
                r => return r,
            }
        }
    }

    fn start_once(opts: &KubeOpts, bin_dir: &Path) -> Result<KubeCluster> {
        let started = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix("ingot-kube-")
            .tempdir()
            .map_err(ClusterError::TempDir)?;
        let d = dir.path().to_path_buf();
        let pki_dir = d.join("pki");
        fs::create_dir_all(&pki_dir).map_err(|source| ClusterError::Write {
            path: pki_dir.clone(),
            source,
        })?;

        // PKI.
        let pki = Pki::new()?;
        let mut sans: Vec<String> = [
            "127.0.0.1",
            "::1",
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
            "10.96.0.1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        sans.extend(opts.extra_sans.iter().cloned());
        let server_usage = ExtendedKeyUsagePurpose::ServerAuth;
        let client = ExtendedKeyUsagePurpose::ClientAuth;
        let apiserver = pki.issue("kube-apiserver", None, &sans, server_usage)?;
        let kubelet_client = pki.issue(
            "kube-apiserver-kubelet-client",
            Some("system:masters"),
            &[],
            client.clone(),
        )?;
        let admin_cert = pki.issue("kubernetes-admin", Some("system:masters"), &[], client.clone())?;
        let kcm = pki.issue("system:kube-controller-manager", None, &[], client.clone())?;
        let scheduler = pki.issue("system:kube-scheduler", None, &[], client)?;
        let sa = KeyPair::generate().map_err(|source| ClusterError::Pki {
            what: "service-account".into(),
            source,
        })?;
        let p = |n: &str| pki_dir.join(n);
        write(&p("ca.crt"), &pki.ca_pem)?;
        write(&p("ca.key"), pki.ca_key.serialize_pem())?;
        for (name, ck) in [
            ("apiserver", &apiserver),
            ("apiserver-kubelet-client", &kubelet_client),
            ("admin", &admin_cert),
        ] {
            write(&p(&format!("{name}.crt")), &ck.cert_pem)?;
            write(&p(&format!("{name}.key")), &ck.key_pem)?;
        }
        write(&p("sa.key"), sa.serialize_pem())?;
        write(&p("sa.pub"), sa.public_key_pem())?;
        let pki_time = started.elapsed();

        let etcd_port = free_port()?;
        let etcd_peer_port = free_port()?;
        let api_port = free_port()?;
        let server = format!("https://127.0.0.1:{api_port}");
        write(
            &d.join("admin.conf"),
            kubeconfig_with_cert(&server, &pki.ca_pem, &admin_cert),
        )?;
        write(
            &d.join("controller-manager.conf"),
            kubeconfig_with_cert(&server, &pki.ca_pem, &kcm),
        )?;
        write(
            &d.join("scheduler.conf"),
            kubeconfig_with_cert(&server, &pki.ca_pem, &scheduler),
        )?;

        let admin = ApiClient::new(&server, Some(&pki.ca_pem), Auth::Cert(admin_cert.clone()), None)?;
        let mut cluster = KubeCluster {
            procs: Mutex::new(Vec::new()),
            api_port,
            ca_spki: pki.ca_key.subject_public_key_info(),
            ca_pem: pki.ca_pem,
            ca_der: pki.ca_der,
            admin_cert,
            admin,
            started,
            timings: StartTimings {
                pki: pki_time,
                etcd_ready: Duration::ZERO,
                apiserver_ready: Duration::ZERO,
            },
            dir,
        };
        let s = |p: PathBuf| p.display().to_string();

        // etcd.
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{etcd_peer_port}");
        let etcd = ingot_testkit::find_program("etcd").ok_or_else(|| ClusterError::Missing("etcd".into()))?;
        cluster.spawn(
            "etcd",
            &etcd,
            &[
                "--name=default".into(),
                format!("--data-dir={}", s(d.join("etcd"))),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=default={peer_url}"),
                "--initial-cluster-state=new".into(),
                "--logger=zap".into(),
                "--log-level=warn".into(),
            ],
        )?;
        let plain = ApiClient::new(&etcd_url, None, Auth::Anonymous, None)?;
        cluster.wait("etcd to report healthy", Duration::from_secs(60), || {
            Ok(matches!(plain.request("GET", "/health", None),
                Ok((200, body)) if body.contains("\"true\"")))
        })?;
        let etcd_ready = started.elapsed();

        // kube-apiserver.
        let mut args: Vec<String> = vec![
            format!("--etcd-servers={etcd_url}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={api_port}"),
            "--insecure-port=0".into(),
            format!("--cert-dir={}", s(d.join("apiserver-certs"))),
            format!("--tls-cert-file={}", s(p("apiserver.crt"))),
            format!("--tls-private-key-file={}", s(p("apiserver.key"))),
            format!("--client-ca-file={}", s(p("ca.crt"))),
            format!(
                "--kubelet-client-certificate={}",
                s(p("apiserver-kubelet-client.crt"))
            ),
            format!("--kubelet-client-key={}", s(p("apiserver-kubelet-client.key"))),
            "--enable-bootstrap-token-auth=true".into(),
            "--authorization-mode=Node,RBAC".into(),
            "--enable-admission-plugins=NodeRestriction".into(),
            "--allow-privileged=true".into(),
            format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--service-account-key-file={}", s(p("sa.pub"))),
            format!("--service-account-signing-key-file={}", s(p("sa.key"))),
            // A loopback advertise address is not a valid endpoint for the `kubernetes` service.
            "--endpoint-reconciler-type=none".into(),
            "--profiling=false".into(),
        ];
        args.extend(opts.apiserver_args.iter().cloned());
        cluster.spawn("kube-apiserver", &bin_dir.join("kube-apiserver"), &args)?;
        cluster.wait(
            "kube-apiserver to answer /readyz",
            Duration::from_secs(120),
            || {
                Ok(matches!(
                    cluster.admin.request("GET", "/readyz", None),
                    Ok((200, _))
                ))
            },
        )?;
        let apiserver_ready = started.elapsed();

        // Controllers.
        let mut args: Vec<String> = vec![
            format!("--kubeconfig={}", s(d.join("controller-manager.conf"))),
            "--bind-address=127.0.0.1".into(),
            "--port=0".into(),
            "--secure-port=0".into(),
            "--leader-elect=false".into(),
            "--controllers=*,bootstrapsigner,tokencleaner".into(),
            format!("--cluster-signing-cert-file={}", s(p("ca.crt"))),
            format!("--cluster-signing-key-file={}", s(p("ca.key"))),
            format!("--root-ca-file={}", s(p("ca.crt"))),
            format!("--service-account-private-key-file={}", s(p("sa.key"))),
            "--use-service-account-credentials=true".into(),
            format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            "--profiling=false".into(),
        ];
        args.extend(opts.controller_manager_args.iter().cloned());
        cluster.spawn(
            "kube-controller-manager",
            &bin_dir.join("kube-controller-manager"),
            &args,
        )?;
        cluster.spawn(
            "kube-scheduler",
            &bin_dir.join("kube-scheduler"),
            &[
                format!("--kubeconfig={}", s(d.join("scheduler.conf"))),
                "--bind-address=127.0.0.1".into(),
                "--port=0".into(),
                "--secure-port=0".into(),
                "--leader-elect=false".into(),
                "--profiling=false".into(),
            ],
        )?;
        cluster.check_running()?;
        cluster.timings.etcd_ready = etcd_ready;
        cluster.timings.apiserver_ready = apiserver_ready;
        Ok(cluster)
    }

    fn spawn(&self, name: &'static str, bin: &Path, args: &[String]) -> Result<()> {
        let log = self.dir.path().join(format!("{name}.log"));
        let write_err = |source| ClusterError::Write {
            path: log.clone(),
            source,
        };
        let out = fs::File::create(&log).map_err(write_err)?;
        let err = out.try_clone().map_err(write_err)?;
        // SIGKILL when the starting thread ends, also when the test process is killed.
        let mut cmd = match ingot_testkit::find_program("setpriv") {
            Some(setpriv) => {
                let mut c = Command::new(setpriv);
                c.args(["--pdeathsig", "KILL", "--"]).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = cmd.spawn().map_err(|source| ClusterError::Spawn {
            name: name.into(),
            bin: bin.to_path_buf(),
            source,
        })?;
        // setpriv arms the death signal before it executes the component; until then, a thread ending
        // right after the start would leave the component running.
        let exe = format!("/proc/{}/exe", child.id());
        let target = fs::canonicalize(bin).unwrap_or_else(|_| bin.to_path_buf());
        let deadline = Instant::now() + Duration::from_secs(5);
        while fs::read_link(&exe).is_ok_and(|e| e != target) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.lock().push(Proc { name, child, log });
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Proc>> {
        self.procs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The process ids of the components, by name.
    pub fn pids(&self) -> Vec<(&'static str, u32)> {
        self.lock().iter().map(|p| (p.name, p.child.id())).collect()
    }

    /// An error for the first component that is no longer running, with the end of its log.
    pub fn check_running(&self) -> Result<()> {
        for p in self.lock().iter_mut() {
            if let Some(e) = p.exited() {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Polls `ready` every 100 ms until it says yes, a component exits, or `timeout` passes.
    pub fn wait(&self, what: &str, timeout: Duration, mut ready: impl FnMut() -> Result<bool>) -> Result<()> {
        self.wait_for(what, timeout, || Ok(ready()?.then_some(())))
    }

    /// Polls `probe` every 100 ms until it gives a value, a component exits, or `timeout` passes.
    pub fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut probe: impl FnMut() -> Result<Option<T>>,
    ) -> Result<T> {
        let start = Instant::now();
        loop {
            if let Some(v) = probe()? {
                return Ok(v);
            }
            self.check_running()?;
            if start.elapsed() >= timeout {
                return Err(ClusterError::Timeout {
                    what: what.into(),
                    waited: timeout,
                    detail: self.log_tails(15),
                });
            }
            std::thread::sleep(POLL);
        }
    }

    /// The last `n` lines of every component's log, for failure messages.
    pub fn log_tails(&self, n: usize) -> String {
        self.lock()
            .iter()
            .map(|p| format!("--- {} ({}):\n{}", p.name, p.log.display(), tail(&p.log, n)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The directory with the PKI (`pki/`), the kubeconfigs (`admin.conf` works with kubectl) and the logs
    /// (`<component>.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_path(&self, component: &str) -> PathBuf {
        self.dir.path().join(format!("{component}.log"))
    }

    pub fn api_port(&self) -> u16 {
        self.api_port
    }

    pub fn api_addr(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), self.api_port)
    }

    /// `https://127.0.0.1:<port>`.
    pub fn server(&self) -> String {
        format!("https://127.0.0.1:{}", self.api_port)
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    pub fn ca_der(&self) -> &[u8] {
        &self.ca_der
    }

    /// The kubeadm pin of the CA: `sha256:<hex>` over its SubjectPublicKeyInfo.
    pub fn ca_cert_hash(&self) -> String {
        spki_pin(&self.ca_spki)
    }

    /// When [`KubeCluster::start`] began, to time later steps from.
    pub fn started(&self) -> Instant {
        self.started
    }

    pub fn timings(&self) -> StartTimings {
        self.timings
    }

    /// The client with the admin certificate (`system:masters`).
    pub fn admin(&self) -> &ApiClient {
        &self.admin
    }

    pub fn admin_cert(&self) -> &CertKey {
        &self.admin_cert
    }

    /// A client of this apiserver that verifies it against the cluster's CA.
    pub fn client(&self, auth: Auth) -> Result<ApiClient> {
        ApiClient::new(&self.server(), Some(&self.ca_pem), auth, None)
    }

    /// A client of `url` (e.g. `https://10.0.2.100:6443`, the address a VM guest uses) that connects to
    /// this apiserver, so the certificate is checked against `url`'s host. `ca_pem` = `None`: unverified.
    pub fn client_as_seen_at(&self, url: &str, ca_pem: Option<&str>, auth: Auth) -> Result<ApiClient> {
        ApiClient::new(url, ca_pem, auth, Some(self.api_addr()))
    }

    // -----------------------------------------------------------------------------------------------------
    // What `kubeadm init` creates for joining nodes

    /// The Secret `kube-system/bootstrap-token-<id>` kubeadm creates: authentication and signing usages,
    /// group `system:bootstrappers:kubeadm:default-node-token`, expiring after `ttl`.
    pub fn create_bootstrap_token(&self, id: &str, secret: &str, ttl: Duration) -> Result<BootstrapToken> {
        let token = BootstrapToken::parse(&format!("{id}.{secret}"))?;
        let expires = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .saturating_add(ttl)
            .as_secs();
        self.admin.post(
            "/api/v1/namespaces/kube-system/secrets",
            &json!({
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": format!("bootstrap-token-{id}"), "namespace": "kube-system"},
                "type": "bootstrap.kubernetes.io/token",
                "stringData": {
                    "description": "ingot test cluster join token",
                    "token-id": id,
                    "token-secret": secret,
                    "expiration": ingot_spec::time::rfc3339(expires as i64),
                    "usage-bootstrap-authentication": "true",
                    "usage-bootstrap-signing": "true",
                    "auth-extra-groups": DEFAULT_NODE_TOKEN_GROUP,
                },
            }),
        )?;
        Ok(token)
    }

    /// The RBAC objects kubeadm creates for joining nodes: bootstrap tokens may create CSRs
    /// (`kubeadm:kubelet-bootstrap`), have them approved (`kubeadm:node-autoapprove-bootstrap`) and get
    /// nodes (`kubeadm:get-nodes`); nodes have their renewals approved
    /// (`kubeadm:node-autoapprove-certificate-rotation`); anyone may get `kube-public/cluster-info`
    /// (`kubeadm:bootstrap-signer-clusterinfo`).
    pub fn create_kubeadm_rbac(&self) -> Result<()> {
        let rbac = "/apis/rbac.authorization.k8s.io/v1";
        let group =
            |name: &str| json!({"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": name});
        let binding = |name: &str, role: &str, subject: Value| {
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                "subjects": [subject],
            })
        };
        let bindings = format!("{rbac}/clusterrolebindings");
        self.admin.post(
            &bindings,
            &binding(
                "kubeadm:kubelet-bootstrap",
                "system:node-bootstrapper",
                group(DEFAULT_NODE_TOKEN_GROUP),
            ),
        )?;
        self.admin.post(
            &bindings,
            &binding(
                "kubeadm:node-autoapprove-bootstrap",
                "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
                group(DEFAULT_NODE_TOKEN_GROUP),
            ),
        )?;
        self.admin.post(
            &bindings,
            &binding(
                "kubeadm:node-autoapprove-certificate-rotation",
                "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
                group("system:nodes"),
            ),
        )?;
        self.admin.post(
            &format!("{rbac}/clusterroles"),
            &json!({
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": "kubeadm:get-nodes"},
                "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}],
            }),
        )?;
        self.admin.post(
            &bindings,
            &binding(
                "kubeadm:get-nodes",
                "kubeadm:get-nodes",
                group(DEFAULT_NODE_TOKEN_GROUP),
            ),
        )?;
        let name = "kubeadm:bootstrap-signer-clusterinfo";
        self.admin.post(
            &format!("{rbac}/namespaces/kube-public/roles"),
            &json!({
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": name, "namespace": "kube-public"},
                "rules": [{"apiGroups": [""], "resources": ["configmaps"],
                           "resourceNames": ["cluster-info"], "verbs": ["get"]}],
            }),
        )?;
        self.admin.post(
            &format!("{rbac}/namespaces/kube-public/rolebindings"),
            &json!({
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": name, "namespace": "kube-public"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
                "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io",
                              "name": "system:anonymous"}],
            }),
        )?;
        Ok(())
    }

    /// The ConfigMap `kube-public/cluster-info` with a kubeconfig naming `server` (the URL joining nodes
    /// use, e.g. `https://10.0.2.100:6443`) and the CA. The bootstrap signer then adds
    /// `jws-kubeconfig-<id>` for every signing token ([`KubeCluster::wait_cluster_info_signed`]).
    pub fn publish_cluster_info(&self, server: &str) -> Result<()> {
        self.admin.post(
            "/api/v1/namespaces/kube-public/configmaps",
            &json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "cluster-info", "namespace": "kube-public"},
                "data": {"kubeconfig": cluster_info_kubeconfig(server, &self.ca_pem)},
            }),
        )?;
        Ok(())
    }

    /// Waits until `cluster-info` carries the signature for `token_id`; returns the ConfigMap.
    pub fn wait_cluster_info_signed(&self, token_id: &str, timeout: Duration) -> Result<Value> {
        let key = format!("jws-kubeconfig-{token_id}");
        self.wait_for(&format!("cluster-info to carry {key}"), timeout, || {
            let cm = self
                .admin
                .get_opt("/api/v1/namespaces/kube-public/configmaps/cluster-info")?;
            Ok(cm.filter(|cm| cm["data"][&key].is_string()))
        })
    }

    // -----------------------------------------------------------------------------------------------------
    // Nodes and pods

    /// The Node object, or `None` while there is none.
    pub fn node(&self, name: &str) -> Result<Option<Value>> {
        self.admin.get_opt(&format!("/api/v1/nodes/{name}"))
    }

    /// Waits for the node's `Ready` condition to be `True`; returns the Node.
    pub fn wait_node_ready(&self, name: &str, timeout: Duration) -> Result<Value> {
        let mut last = None;
        let r = self.wait_for(&format!("node {name} Ready"), timeout, || {
            let node = self.node(name)?;
            let ready = node.as_ref().is_some_and(|n| {
                n["status"]["conditions"]
                    .as_array()
                    .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
            });
            if ready {
                return Ok(node);
            }
            last = node;
            Ok(None)
        });
        r.map_err(|e| match e {
            ClusterError::Timeout { what, waited, detail } => ClusterError::Timeout {
                what,
                waited,
                detail: match &last {
                    Some(n) => format!("conditions: {}\n{detail}", n["status"]["conditions"]),
                    None => format!("no Node object\n{detail}"),
                },
            },
            e => e,
        })
    }

    /// Creates a pod (namespace from `metadata.namespace`, else `default`) once the namespace's service
    /// account exists (admission refuses pods before); returns the created Pod.
    pub fn create_pod(&self, pod: &Value) -> Result<Value> {
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
        let sa = pod["spec"]["serviceAccountName"].as_str().unwrap_or("default");
        self.wait(
            &format!("service account {ns}/{sa}"),
            Duration::from_secs(60),
            || {
                Ok(self
                    .admin
                    .get_opt(&format!("/api/v1/namespaces/{ns}/serviceaccounts/{sa}"))?
                    .is_some())
            },
        )?;
        self.admin.post(&format!("/api/v1/namespaces/{ns}/pods"), pod)
    }

    pub fn pod(&self, ns: &str, name: &str) -> Result<Option<Value>> {
        self.admin
            .get_opt(&format!("/api/v1/namespaces/{ns}/pods/{name}"))
    }

    /// `status.phase` (Pending, Running, Succeeded, Failed, Unknown), `None` without a pod.
    pub fn pod_phase(&self, ns: &str, name: &str) -> Result<Option<String>> {
        Ok(self
            .pod(ns, name)?
            .and_then(|p| p["status"]["phase"].as_str().map(String::from)))
    }

    /// Waits until the scheduler has bound the pod to a node; returns the node's name.
    pub fn wait_pod_scheduled(&self, ns: &str, name: &str, timeout: Duration) -> Result<String> {
        self.wait_for(&format!("pod {ns}/{name} bound to a node"), timeout, || {
            Ok(self
                .pod(ns, name)?
                .and_then(|p| p["spec"]["nodeName"].as_str().map(String::from)))
        })
    }

    /// Waits for the pod to reach `phase`; fails at once if it ends (Succeeded or Failed) in another.
    /// Returns the Pod.
    pub fn wait_pod_phase(&self, ns: &str, name: &str, phase: &str, timeout: Duration) -> Result<Value> {
        self.wait_for(&format!("pod {ns}/{name} in phase {phase}"), timeout, || {
            let Some(pod) = self.pod(ns, name)? else {
                return Ok(None);
            };
            let now = pod["status"]["phase"].as_str().unwrap_or("");
            if now == phase {
                return Ok(Some(pod));
            }
            if now == "Succeeded" || now == "Failed" {
                return Err(ClusterError::PodPhase {
                    namespace: ns.into(),
                    name: name.into(),
                    phase: now.into(),
                    want: phase.into(),
                    status: pod["status"].to_string(),
                });
            }
            Ok(None)
        })
    }
}

impl Drop for KubeCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "control plane in {} at the failure:\n{}",
                self.dir.path().display(),
                self.log_tails(30)
            );
        }
        if std::env::var_os("INGOT_KUBE_KEEP").is_some() {
            self.dir.disable_cleanup(true);
            eprintln!("INGOT_KUBE_KEEP: keeping {}", self.dir.path().display());
        }
        let mut procs = std::mem::take(&mut *self.lock());
        // Clients first: the apiserver waits for their watches on SIGTERM. etcd last.
        let tier = |p: &Proc| match p.name {
            "etcd" => 2,
            "kube-apiserver" => 1,
            _ => 0,
        };
        procs.sort_by_key(tier);
        let split = |procs: &mut Vec<Proc>, t: u8| -> Vec<Proc> {
            let (a, b): (Vec<Proc>, Vec<Proc>) = procs.drain(..).partition(|p| tier(p) == t);
            *procs = b;
            a
        };
        let mut clients = split(&mut procs, 0);
        stop(&mut clients, Duration::from_secs(3));
        let mut apiserver = split(&mut procs, 1);
        stop(&mut apiserver, Duration::from_secs(5));
        stop(&mut procs, Duration::from_secs(5));
    }
}
