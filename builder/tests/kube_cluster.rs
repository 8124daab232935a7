//! The Kubernetes 1.20 control plane the join tests run against (`common::kube_cluster`), checked from the
//! host the way a joining node uses it: token discovery as `kubeadm join` does it (anonymous
//! `cluster-info`, the detached JWS keyed with the token secret, the CA pin, the verified re-fetch at the
//! address a VM guest uses), then the kubelet's TLS bootstrap (a CSR with the bootstrap token, approved and
//! signed by the controller manager), a node identity reporting its Node Ready and a pod bound to it
//! Succeeded, and the scheduler placing a pod on that node.
//!
//! Needs the binaries `scripts/k8s-1.20` builds and Debian's `etcd-server`; skips with a printed reason
//! without them (fails instead when `INGOT_K8S_BIN` is set, as `scripts/test` does).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use common::kube_cluster::*;
use hmac::{Hmac, KeyInit, Mac};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use serde_json::json;
use sha2::Sha256;

/// The address a VM guest reaches the apiserver at (a QEMU guestfwd), and so the server in cluster-info.
const GUEST_SERVER: &str = "https://10.0.2.100:6443";
const NODE: &str = "join-test-node";

/// The detached JWS the bootstrap signer puts into `cluster-info`: HS256 keyed with the token secret over
/// `B64URL({"alg":"HS256","kid":"<id>"}) . B64URL(content)`, payload left out.
fn detached_jws(id: &str, secret: &str, content: &str) -> String {
    let header = B64URL.encode(format!(r#"{{"alg":"HS256","kid":"{id}"}}"#));
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{header}.{}", B64URL.encode(content)).as_bytes());
    format!("{header}..{}", B64URL.encode(mac.finalize().into_bytes()))
}

#[test]
fn detached_jws_matches_the_upstream_vectors() {
    let content = "Hello from the other side. I must have called a thousand times.";
    assert_eq!(
        detached_jws("joshua", "my voice is my passcode", content),
        "eyJhbGciOiJIUzI1NiIsImtpZCI6Impvc2h1YSJ9..VShe2taLd-YTrmWuRkcL_8QTNDHYxQIEBsAYYiIj1_8"
    );
    assert_eq!(
        detached_jws("joshua", "my voice is my passcode", ""),
        "eyJhbGciOiJIUzI1NiIsImtpZCI6Impvc2h1YSJ9..7Ui1ALizW4jXphVUB7xUqC9vLYLL9RZeOFfVLoB7Tgk"
    );
    assert_eq!(
        detached_jws("abcdef", "0123456789abcdef", "apiVersion: v1\nkind: Config\n"),
        "eyJhbGciOiJIUzI1NiIsImtpZCI6ImFiY2RlZiJ9..vH_kT4yiol-nrAWgjfCYqvum5wsKETXe0S7OOp1VgnE"
    );
}

#[test]
fn bootstrap_tokens_follow_the_kubeadm_pattern() {
    for _ in 0..100 {
        let t = BootstrapToken::generate();
        assert_eq!(BootstrapToken::parse(&t.token()).unwrap(), t);
    }
    for bad in [
        "abcdef0123456789abcdef",
        "abcde.0123456789abcdef",
        "abcdef.0123456789abcde",
        "ABCDEF.0123456789abcdef",
        "abcdef.0123456789abcdeF",
        "abcdef:0123456789abcdef",
    ] {
        assert!(BootstrapToken::parse(bad).is_err(), "{bad} accepted");
    }
}

/// A value of a kubeconfig's one cluster (`server`, `certificate-authority-data`).
fn kubeconfig_field<'a>(kubeconfig: &'a str, key: &str) -> &'a str {
    kubeconfig
        .lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{key}: ")))
        .unwrap_or_else(|| panic!("no {key} in the kubeconfig:\n{kubeconfig}"))
}

/// The CA pin as `openssl` computes it (the recipe of the kubeadm docs), or `None` after skipping that
/// comparison for `test` when openssl is not installed.
fn openssl_pin(test: &str, ca_pem: &str) -> Option<String> {
    common::tool_for_check(test, "comparing the CA pin with openssl's", "openssl")?;
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("openssl x509 -pubkey -noout | openssl pkey -pubin -outform der | sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), ca_pem.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let hex = String::from_utf8(out.stdout).unwrap();
    Some(format!("sha256:{}", hex.split_whitespace().next().unwrap()))
}

fn now_rfc3339() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    ingot_spec::time::rfc3339(secs as i64)
}

#[test]
fn kube_control_plane_serves_a_kubeadm_token_join() {
    if !control_plane_can_start("kube_control_plane_serves_a_kubeadm_token_join") {
        return;
    }
    let cluster = KubeCluster::start(KubeOpts {
        extra_sans: vec!["10.0.2.100".into()],
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let t = cluster.timings();
    eprintln!(
        "control plane: PKI {:?}, etcd ready {:?}, apiserver ready {:?}",
        t.pki, t.etcd_ready, t.apiserver_ready
    );

    // What `kubeadm init` leaves for joining nodes.
    let token = BootstrapToken::generate();
    cluster
        .create_bootstrap_token(&token.id, &token.secret, Duration::from_secs(600))
        .unwrap();
    cluster.create_kubeadm_rbac().unwrap();
    cluster.publish_cluster_info(GUEST_SERVER).unwrap();
    cluster
        .wait_cluster_info_signed(&token.id, Duration::from_secs(90))
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "control plane: cluster-info signed {:?} after the start",
        cluster.started().elapsed()
    );

    // Discovery, as the joining node does it: first without verifying the server, anonymously.
    let cluster_info = "/api/v1/namespaces/kube-public/configmaps/cluster-info";
    let insecure = cluster
        .client_as_seen_at(GUEST_SERVER, None, Auth::Anonymous)
        .unwrap();
    let (status, body) = insecure.request("GET", cluster_info, None).unwrap();
    assert_eq!(status, 200, "anonymous GET of cluster-info: {body}");
    let cm: serde_json::Value = serde_json::from_str(&body).unwrap();
    let kubeconfig = cm["data"]["kubeconfig"].as_str().unwrap().to_string();
    let jws = cm["data"][format!("jws-kubeconfig-{}", token.id)]
        .as_str()
        .unwrap();
    assert_eq!(
        jws,
        detached_jws(&token.id, &token.secret, &kubeconfig),
        "the signature does not verify with the token secret"
    );
    assert_ne!(
        jws,
        detached_jws(&token.id, "0000000000000000", &kubeconfig),
        "the signature verifies with any secret"
    );
    let (status, body) = insecure
        .request("GET", "/api/v1/namespaces/kube-system/secrets", None)
        .unwrap();
    assert_eq!(status, 403, "anonymous GET of kube-system secrets: {body}");

    // The CA in the signed kubeconfig matches the pin the operator hands out.
    assert_eq!(kubeconfig_field(&kubeconfig, "server"), GUEST_SERVER);
    let ca_pem = String::from_utf8(
        B64.decode(kubeconfig_field(&kubeconfig, "certificate-authority-data"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(ca_pem, cluster.ca_pem());
    let (_, ca) = x509_parser::pem::parse_x509_pem(ca_pem.as_bytes()).unwrap();
    let ca = ca.parse_x509().unwrap();
    let pin = spki_pin(ca.public_key().raw);
    assert_eq!(pin, cluster.ca_cert_hash());
    if let Some(p) = openssl_pin("kube_control_plane_serves_a_kubeadm_token_join", &ca_pem) {
        assert_eq!(p, pin, "openssl computes another pin");
    }

    // Then again with the server verified against that CA, at the guest's address: same bytes.
    let verified = cluster
        .client_as_seen_at(GUEST_SERVER, Some(&ca_pem), Auth::Anonymous)
        .unwrap();
    let again = verified.get(cluster_info).unwrap();
    assert_eq!(again["data"]["kubeconfig"].as_str(), Some(kubeconfig.as_str()));
    let other_ca = KeyPair::generate().unwrap();
    let other_ca = CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .self_signed(&other_ca)
        .unwrap()
        .pem();
    let wrong = cluster
        .client_as_seen_at(GUEST_SERVER, Some(&other_ca), Auth::Anonymous)
        .unwrap();
    assert!(
        wrong.request("GET", cluster_info, None).is_err(),
        "the apiserver passes verification against an unrelated CA"
    );

    // The kubelet's TLS bootstrap: a node client CSR with the bootstrap token, approved and signed.
    let bootstrap = cluster
        .client_as_seen_at(GUEST_SERVER, Some(&ca_pem), Auth::Bearer(token.token()))
        .unwrap();
    let (status, body) = bootstrap
        .request("GET", &format!("/api/v1/nodes/{NODE}"), None)
        .unwrap();
    assert_eq!(status, 404, "a token holder getting an absent node: {body}");
    assert!(cluster.node(NODE).unwrap().is_none());
    let node_key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "system:nodes");
    params
        .distinguished_name
        .push(DnType::CommonName, format!("system:node:{NODE}"));
    let csr_pem = params.serialize_request(&node_key).unwrap().pem().unwrap();
    let csr_start = Instant::now();
    let csr = bootstrap
        .post(
            "/apis/certificates.k8s.io/v1/certificatesigningrequests",
            &json!({
                "apiVersion": "certificates.k8s.io/v1",
                "kind": "CertificateSigningRequest",
                "metadata": {"generateName": "node-csr-"},
                "spec": {
                    "request": B64.encode(&csr_pem),
                    "signerName": "kubernetes.io/kube-apiserver-client-kubelet",
                    "usages": ["digital signature", "key encipherment", "client auth"],
                },
            }),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let csr_path = format!(
        "/apis/certificates.k8s.io/v1/certificatesigningrequests/{}",
        csr["metadata"]["name"].as_str().unwrap()
    );
    let csr = cluster
        .wait_for("the node CSR issued", Duration::from_secs(60), || {
            let csr = bootstrap.get(&csr_path)?;
            Ok(csr["status"]["certificate"].is_string().then_some(csr))
        })
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("node CSR approved and issued in {:?}", csr_start.elapsed());
    let approved = &csr["status"]["conditions"][0];
    assert_eq!(approved["type"], "Approved", "{csr}");
    assert_eq!(approved["reason"], "AutoApproved", "{csr}");
    let node_cert = CertKey {
        cert_pem: String::from_utf8(
            B64.decode(csr["status"]["certificate"].as_str().unwrap())
                .unwrap(),
        )
        .unwrap(),
        key_pem: node_key.serialize_pem(),
    };

    // The node identity registers its Node and reports it Ready, as a kubelet would.
    let node = cluster
        .client_as_seen_at(GUEST_SERVER, Some(&ca_pem), Auth::Cert(node_cert))
        .unwrap();
    node.post(
        "/api/v1/nodes",
        &json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}}),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let (status, body) = node
        .request("GET", "/api/v1/namespaces/kube-system/secrets", None)
        .unwrap();
    assert_eq!(status, 403, "a node listing kube-system secrets: {body}");
    assert!(
        cluster.wait_node_ready(NODE, Duration::from_millis(500)).is_err(),
        "a node without a Ready condition counts as Ready"
    );
    let now = now_rfc3339();
    node.merge_patch(
        &format!("/api/v1/nodes/{NODE}/status"),
        &json!({"status": {"conditions": [{
            "type": "Ready", "status": "True", "reason": "KubeletReady",
            "message": "kubelet is posting ready status",
            "lastHeartbeatTime": now, "lastTransitionTime": now,
        }],
        "capacity": {"cpu": "2", "memory": "2Gi", "pods": "10"},
        "allocatable": {"cpu": "2", "memory": "2Gi", "pods": "10"}}}),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let ready = cluster
        .wait_node_ready(NODE, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ready["metadata"]["name"], NODE);

    // A pod bound to the node: Pending until the node reports it done.
    let pod = cluster
        .create_pod(&json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "hello", "namespace": "default"},
            "spec": {
                "nodeName": NODE,
                "restartPolicy": "Never",
                "automountServiceAccountToken": false,
                "containers": [{"name": "hello", "image": "ingot.local/busybox:latest",
                                "imagePullPolicy": "Never", "command": ["true"]}],
            },
        }))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(pod["spec"]["nodeName"], NODE);
    assert_eq!(
        cluster.pod_phase("default", "hello").unwrap().as_deref(),
        Some("Pending")
    );
    assert_eq!(cluster.pod_phase("default", "absent").unwrap(), None);
    node.merge_patch(
        "/api/v1/namespaces/default/pods/hello/status",
        &json!({"status": {"phase": "Succeeded"}}),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    cluster
        .wait_pod_phase("default", "hello", "Succeeded", Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}"));
    let early = Instant::now();
    let err = cluster
        .wait_pod_phase("default", "hello", "Running", Duration::from_secs(30))
        .unwrap_err();
    assert!(
        matches!(err, ClusterError::PodPhase { .. }) && early.elapsed() < Duration::from_secs(5),
        "waiting for Running on a Succeeded pod: {err}"
    );

    // A pod without a node: the scheduler binds it to the one Ready node.
    let scheduling = Instant::now();
    cluster
        .create_pod(&json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "scheduled", "namespace": "default"},
            "spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "hello", "image": "ingot.local/busybox:latest",
                                "imagePullPolicy": "Never", "command": ["true"]}],
            },
        }))
        .unwrap_or_else(|e| panic!("{e}"));
    let bound = cluster
        .wait_pod_scheduled("default", "scheduled", Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(bound, NODE);
    eprintln!("pod scheduled in {:?}", scheduling.elapsed());

    cluster.check_running().unwrap_or_else(|e| panic!("{e}"));
    let dir = cluster.dir().to_path_buf();
    let stop = Instant::now();
    drop(cluster);
    eprintln!("control plane stopped in {:?}", stop.elapsed());
    assert!(!dir.exists(), "{} left behind", dir.display());
}

/// Whether `pid` is gone or a zombie (killed, not yet waited for).
fn dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

#[test]
fn kube_control_plane_dies_with_the_thread_that_started_it() {
    let test = "kube_control_plane_dies_with_the_thread_that_started_it";
    if !control_plane_can_start(test) || !ingot_testkit::require_tools(test, &["setpriv"]) {
        return;
    }
    // A cluster that is never dropped, as when the test process is killed: the kernel kills the
    // components when the thread that started them ends.
    let (pids, dir) = std::thread::spawn(|| {
        let cluster = KubeCluster::start(KubeOpts::default()).unwrap_or_else(|e| panic!("{e}"));
        let pids = cluster.pids();
        let dir = cluster.dir().to_path_buf();
        assert_eq!(pids.len(), 4, "{pids:?}");
        assert!(pids.iter().all(|(_, pid)| !dead(*pid)), "{pids:?}");
        std::mem::forget(cluster);
        (pids, dir)
    })
    .join()
    .unwrap();
    let start = Instant::now();
    while !pids.iter().all(|(_, pid)| dead(*pid)) && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let survivors: Vec<_> = pids.iter().filter(|(_, pid)| !dead(*pid)).collect();
    for (_, pid) in &pids {
        let pid = rustix::process::Pid::from_raw(*pid as i32).unwrap();
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty()).unwrap();
    }
    std::fs::remove_dir_all(dir).unwrap();
    assert!(
        survivors.is_empty(),
        "outlived the thread that started them: {survivors:?}"
    );
}

#[test]
fn kube_control_plane_start_failure_shows_the_components_log() {
    if !control_plane_can_start("kube_control_plane_start_failure_shows_the_components_log") {
        return;
    }
    let err = KubeCluster::start(KubeOpts {
        apiserver_args: vec!["--no-such-flag=1".into()],
        ..Default::default()
    })
    .err()
    .expect("an apiserver with an unknown flag started");
    let msg = err.to_string();
    assert!(
        matches!(&err, ClusterError::Exited { name, .. } if name == "kube-apiserver"),
        "{msg}"
    );
    assert!(msg.contains("unknown flag: --no-such-flag"), "{msg}");
}
