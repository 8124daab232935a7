//! A worker image joins a real Kubernetes 1.20 control plane and runs a pod: kubeadm-style token
//! discovery by ingot-init, kubelet's TLS bootstrap, the Node Ready through the API, a pod with `nodeName`
//! run to completion; and no copy of the token anywhere but where it must be. Names start with `vm_`:
//! they run in the nextest `vm` profile.
//!
//! The control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler) runs on host loopback
//! (`common::kube_cluster`). The guest has QEMU's restricted user network: the only address it can reach
//! is 10.0.2.100:6443, forwarded to the API server's loopback port; everything else (kubelet's probe of
//! 169.254.169.254, DNS) goes nowhere.

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::kube_cluster::{self, KubeCluster, KubeOpts};
use common::*;
use ingot_qemu::{Accel, FwCfgFile, GuestFwd, Vm, VmConfig};
use ingot_spec::marker::parse_phase_line;

/// Where the guest finds the API server.
const API_GUEST_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 100);
const API_GUEST_PORT: u16 = 6443;
const NODE: &str = "ingot-e2e-1";
const JOIN_TIMEOUT: Duration = Duration::from_secs(420);

/// Whether QEMU and a control plane are here; otherwise skips `test`, naming what is missing.
fn can_run(test: &str) -> bool {
    ingot_testkit::require_tools(test, &[QEMU, QEMU_IMG]) && kube_cluster::control_plane_can_start(test)
}

/// Builds `tests/profiles/<profile>.toml` through a profile in `dir` that extends it: the lock then records
/// this machine's kubelet build (a local file) without touching the repository.
fn build(profile: &str, dir: &Path, extra: &str) -> PathBuf {
    let base = repo_root().join(format!("tests/profiles/{profile}.toml"));
    let p = dir.join("node.toml");
    std::fs::write(
        &p,
        format!(
            "extends = \"{}\"\n[image]\nname = \"node\"\n{extra}",
            base.display()
        ),
    )
    .unwrap();
    let bin = kube_cluster::k8s_bin_dir();
    let o = run(ingot()
        .env("INGOT_K8S_BIN", &bin)
        .arg("lock")
        .arg("--profile")
        .arg(&p));
    assert!(o.status.success(), "ingot lock failed:\n{}", stderr(&o));
    let o = run(ingot()
        .env("INGOT_K8S_BIN", &bin)
        .args(["build", "--quiet", "--profile"])
        .arg(&p)
        .arg("--out")
        .arg(dir.join("out")));
    assert!(o.status.success(), "ingot build failed:\n{}", stderr(&o));
    let image = dir.join("out/node.raw");
    veritysetup_agrees(&image);
    image
}

/// Every spelling of the token a leak could take.
fn token_forms(token: &str) -> Vec<Vec<u8>> {
    let b64 = base64::engine::general_purpose::STANDARD.encode(token);
    let b64url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token);
    let secret = token.split_once('.').unwrap().1;
    vec![
        token.as_bytes().to_vec(),
        secret.as_bytes().to_vec(),
        b64.trim_end_matches('=').as_bytes().to_vec(),
        b64url.into_bytes(),
    ]
}

/// The byte ranges of `path` that hold data, as `qemu-img map` reports them (holes and zero clusters are
/// skipped, so a 4 GiB disk with a few hundred MiB written is read in seconds). `overlay_only`: only what the
/// guest wrote (depth 0 of a qcow2 overlay), not its backing image.
fn data_ranges(path: &Path, format: &str, overlay_only: bool) -> Vec<(u64, u64)> {
    let o = run(std::process::Command::new("qemu-img")
        .args(["map", "--output=json", "-f", format])
        .arg(path));
    assert!(o.status.success(), "qemu-img map: {}", stderr(&o));
    let map: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    map.iter()
        .filter(|e| e["data"] == true && (!overlay_only || e["depth"] == 0))
        .map(|e| (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap()))
        .collect()
}

/// Offsets in `raw` (the guest's view of a disk, or an image) where any of `needles` occurs, reading only
/// `ranges`.
fn find_in_ranges(raw: &Path, ranges: &[(u64, u64)], needles: &[Vec<u8>]) -> Vec<(u64, String)> {
    use std::io::{Read, Seek, SeekFrom};
    let finders: Vec<_> = needles.iter().map(memchr::memmem::Finder::new).collect();
    let overlap = needles.iter().map(Vec::len).max().unwrap_or(0) as u64;
    let mut f = std::fs::File::open(raw).unwrap();
    let mut hits = Vec::new();
    const CHUNK: u64 = 16 << 20;
    for &(start, len) in ranges {
        let end = start + len;
        let mut at = start;
        while at < end {
            // Each read reaches a little into the next so a match across the boundary is not missed.
            let n = (CHUNK + overlap).min(end - at);
            let mut buf = vec![0u8; n as usize];
            f.seek(SeekFrom::Start(at)).unwrap();
            f.read_exact(&mut buf).unwrap();
            for (finder, needle) in finders.iter().zip(needles) {
                for i in finder.find_iter(&buf) {
                    let offset = at + i as u64;
                    if !hits.iter().any(|(o, _)| *o == offset) {
                        hits.push((offset, String::from_utf8_lossy(needle).into_owned()));
                    }
                }
            }
            at += CHUNK.min(end - at);
        }
    }
    hits
}

/// `phase -> t` of every phase line in the serial log.
fn phase_times(log: &Path) -> Vec<(String, u64)> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .filter_map(|l| parse_phase_line(l).map(|(p, t)| (p.to_owned(), t)))
        .collect()
}

#[test]
fn vm_worker_joins_a_kubernetes_1_20_cluster_runs_a_pod_and_leaves_no_token_behind() {
    let test = "vm_worker_joins_a_kubernetes_1_20_cluster_runs_a_pod_and_leaves_no_token_behind";
    if !can_run(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // bench/join sets kubelet settings here (e.g. a short nodeStatusUpdateFrequency) and collects timings.
    let extra = std::env::var("INGOT_JOIN_PROFILE_EXTRA").unwrap_or_default();
    let image = build("worker-k8s120", dir.path(), &extra);

    let cluster = KubeCluster::start(KubeOpts {
        extra_sans: vec![API_GUEST_ADDR.to_string()],
        ..KubeOpts::default()
    })
    .unwrap();
    // A recognisable secret, so a leak is unambiguous: "canary" followed by ten random characters.
    let mut token = kube_cluster::BootstrapToken::generate();
    token.secret.replace_range(..6, "canary");
    cluster
        .create_bootstrap_token(&token.id, &token.secret, Duration::from_secs(3600))
        .unwrap();
    cluster.create_kubeadm_rbac().unwrap();
    let server = format!("https://{API_GUEST_ADDR}:{API_GUEST_PORT}");
    cluster.publish_cluster_info(&server).unwrap();
    cluster
        .wait_cluster_info_signed(&token.id, Duration::from_secs(60))
        .unwrap();

    let node_toml = dir.path().join("node-config.toml");
    std::fs::write(
        &node_toml,
        format!(
            "[cluster]\nendpoint = \"{API_GUEST_ADDR}:{API_GUEST_PORT}\"\ntoken = \"{}\"\nca-cert-hashes = [\"{}\"]\n\
             [node]\nname = \"{NODE}\"\n",
            token.token(),
            cluster.ca_cert_hash()
        ),
    )
    .unwrap();

    let mut cfg = VmConfig::new(&image);
    cfg.accel = Accel::Tcg;
    cfg.memory_mib = 2048;
    cfg.disk_size = Some(4 << 30);
    cfg.serial_log = Some(dir.path().join("serial.log"));
    cfg.fw_cfg.push(FwCfgFile {
        name: ingot_spec::node_config::FW_CFG_NAME.to_owned(),
        path: node_toml.clone(),
    });
    cfg.net.guestfwd.push(GuestFwd {
        guest_addr: API_GUEST_ADDR,
        guest_port: API_GUEST_PORT,
        target: SocketAddrV4::new(Ipv4Addr::LOCALHOST, cluster.api_port()),
    });
    let started = Instant::now();
    let mut vm = Vm::start(cfg).unwrap();
    expect_line(&mut vm, "node config from fw_cfg", JOIN_TIMEOUT);
    expect_line(&mut vm, "phase=discovered", JOIN_TIMEOUT);
    expect_line(&mut vm, "phase=joined", JOIN_TIMEOUT);
    let joined_host = started.elapsed();
    expect_line(&mut vm, "phase=node-ready", JOIN_TIMEOUT);
    let ready_host = started.elapsed();

    // The API server agrees: the Node exists and is Ready, registered by kubelet's own certificate.
    cluster.wait_node_ready(NODE, Duration::from_secs(30)).unwrap();
    let node = cluster.node(NODE).unwrap().unwrap();
    assert_eq!(node["metadata"]["name"], NODE);

    // A pod bound to the node by name (no scheduler involved) runs to completion there.
    let pod = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": "hello", "namespace": "default" },
        "spec": {
            "nodeName": NODE,
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "containers": [{
                "name": "hello",
                "image": "ingot.local/busybox:latest",
                "imagePullPolicy": "Never",
                "command": ["/bin/busybox", "echo", "hello from a pod"],
            }],
        },
    });
    cluster.create_pod(&pod).unwrap();
    let pod_started = Instant::now();
    cluster
        .wait_pod_phase("default", "hello", "Succeeded", Duration::from_secs(180))
        .unwrap_or_else(|e| panic!("{e}; console:\n{}", vm.console_lines().join("\n")));
    let pod_took = pod_started.elapsed();

    let serial = dir.path().join("serial.log");
    let phases = phase_times(&serial);
    eprintln!(
        "join timings (TCG): host-side joined {:.1}s, node-ready {:.1}s after QEMU start; pod Succeeded {:.1}s after creation; guest phases: {}",
        joined_host.as_secs_f64(),
        ready_host.as_secs_f64(),
        pod_took.as_secs_f64(),
        phases
            .iter()
            .map(|(p, t)| format!("{p}={t}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    if let Ok(out) = std::env::var("INGOT_JOIN_TIMINGS") {
        let guest: std::collections::BTreeMap<String, u64> = phases.iter().cloned().collect();
        let timings = serde_json::json!({
            "host_joined_s": joined_host.as_secs_f64(),
            "host_node_ready_s": ready_host.as_secs_f64(),
            "pod_succeeded_s": pod_took.as_secs_f64(),
            "guest_phases_ms": guest,
        });
        std::fs::write(out, timings.to_string()).unwrap();
    }
    for required in [
        "network",
        "clock",
        "containerd-ready",
        "discovered",
        "joined",
        "node-ready",
    ] {
        assert!(
            phases.iter().any(|(p, _)| p == required),
            "no phase {required}: {phases:?}"
        );
    }

    // Ctrl-Alt-Del: the next boot uses the credentials kubelet was issued, without discovery (the token's
    // kubeconfig is gone anyway), and the node is Ready again.
    vm.ctrl_alt_del().unwrap();
    let var2 = expect_line(&mut vm, "ingot: phase=var ", JOIN_TIMEOUT);
    assert!(var2.contains("boot=2"), "{var2}");
    expect_line(&mut vm, "skipping discovery", JOIN_TIMEOUT);
    expect_line(&mut vm, "phase=joined", JOIN_TIMEOUT);
    expect_line(&mut vm, "phase=node-ready", JOIN_TIMEOUT);
    cluster.wait_node_ready(NODE, Duration::from_secs(30)).unwrap();

    // Power off in order (services stopped, var unmounted), then look for the token everywhere.
    vm.powerdown().unwrap();
    expect_line(&mut vm, "powering off", Duration::from_secs(120));
    let status = vm.wait_exit(Duration::from_secs(60)).unwrap();
    assert!(status.success(), "QEMU exit: {status}");

    // The guest's view of its disk (the image plus what it wrote), and the image as built.
    let disk = dir.path().join("disk.raw");
    let overlay = vm.scratch_dir().join("disk.qcow2");
    let o = run(std::process::Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(&overlay)
        .arg(&disk));
    assert!(o.status.success(), "qemu-img convert: {}", stderr(&o));
    let forms = token_forms(&token.token());
    let console = std::fs::read(&serial).unwrap();
    let console_hits = find_in_ranges(&serial, &[(0, console.len() as u64)], &forms);
    assert!(
        console_hits.is_empty(),
        "the console shows the token: {console_hits:?}"
    );
    let image_hits = find_in_ranges(&image, &data_ranges(&image, "raw", false), &forms);
    assert!(image_hits.is_empty(), "the image holds the token: {image_hits:?}");
    // The bootstrap kubeconfig held it until kubelet had its certificate; then it was wiped.
    let written = data_ranges(&overlay, "qcow2", true);
    let scanned: u64 = written.iter().map(|r| r.1).sum();
    let disk_hits = find_in_ranges(&disk, &written, &forms);
    assert!(
        disk_hits.is_empty(),
        "the node's disk holds the token (byte offset, form): {disk_hits:?}"
    );
    // The scan does see the var partition: the cluster CA that discovery wrote there is found.
    let ca_line = cluster.ca_pem().lines().nth(1).unwrap().as_bytes().to_vec();
    let ca_hits = find_in_ranges(&disk, &written, &[ca_line]);
    assert!(
        !ca_hits.is_empty(),
        "the scan did not find the CA written to /var/lib/kubelet/pki/ca.crt"
    );
    eprintln!(
        "token canary: not on the console ({} bytes), in the image or in the {} MiB the node wrote",
        console.len(),
        scanned >> 20
    );
    drop(cluster);
}
