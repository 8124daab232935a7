//! containerd end to end, in two parts.
//!
//! `[[images]]`: a profile with an image built from Debian's `busybox-static` (a component that is not
//! installed in the root) and a ready archive from a `path`. `ingot build` writes both archives into the
//! root, the init configuration, the manifest and the lock record them, and containerd 1.6 (Debian bookworm)
//! imports them under the profile's names and runs the busybox image.
//!
//! `ingot build --profile tests/profiles/containerd-smoke.toml`: Debian's containerd, runc, CNI plugins,
//! e2fsprogs and busybox with the libraries their dependency closures pull, the init configuration (with
//! the busybox image and the service that runs it), and the root's kernel modules with `modules.dep`. The
//! build itself proves the ELF check passes; containerd then runs the `hello` service's command against
//! the image archive the build wrote.
//!
//! The containerd parts need root, `containerd`, `ctr` and `runc` (`apt-get install containerd runc`) and
//! skip with a printed reason otherwise. containerd runs with a private root, state and socket in a
//! temporary directory and the native snapshotter, so it touches nothing of a containerd the host may run.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use ingot::lock::Lock;
use ingot::manifest::Manifest;

/// Debian bookworm's `busybox-static` (from the bookworm `Packages` index).
const BUSYBOX_URL: &str =
    "https://deb.debian.org/debian/pool/main/b/busybox/busybox-static_1.35.0-4+deb12u1+b1_amd64.deb";
const BUSYBOX_SHA256: &str = "3d3fdbe91d4660c873e14b092c213fe81c1da6362daa236eb25d0171eb108744";
const IMAGE: &str = "ingot.local/busybox:latest";

/// Whether containerd can run here: as root, with containerd and runc installed. Otherwise skips `test`
/// (a failure under CI) naming what is missing.
fn containerd_can_run(test: &str) -> bool {
    ingot_testkit::require_root(test, "running containerd and runc")
        && ingot_testkit::require_tools(test, &["containerd", "ctr", "containerd-shim-runc-v2", "runc"])
}

/// A containerd of our own; killed and waited for on drop.
struct Containerd {
    child: Child,
    address: PathBuf,
    log: PathBuf,
}

impl Containerd {
    fn start(dir: &Path) -> Containerd {
        std::fs::create_dir_all(dir).unwrap();
        let address = dir.join("containerd.sock");
        let config = dir.join("config.toml");
        let d = dir.display();
        std::fs::write(
            &config,
            format!(
                r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]

[grpc]
  address = "{d}/containerd.sock"

[ttrpc]
  address = "{d}/containerd.sock.ttrpc"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
"#
            ),
        )
        .unwrap();
        let log = dir.join("containerd.log");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.join("containerd.err")).unwrap())
            .spawn()
            .expect("starting containerd");
        let c = Containerd {
            child,
            address,
            log: dir.join("containerd.err"),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if c.address.exists() && c.ctr(&["version"]).status.success() {
                return c;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("containerd did not answer within 20 s:\n{}", c.logs());
    }

    fn ctr(&self, args: &[&str]) -> std::process::Output {
        Command::new("ctr")
            .arg("--address")
            .arg(&self.address)
            .args(args)
            .output()
            .expect("running ctr")
    }

    /// Runs ctr and returns its stdout; panics with both outputs and containerd's log on failure.
    fn ok(&self, args: &[&str]) -> String {
        let o = self.ctr(args);
        assert!(
            o.status.success(),
            "ctr {args:?} failed:\n{}{}\ncontainerd:\n{}",
            stdout(&o),
            stderr_of(&o),
            self.logs()
        );
        stdout(&o)
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn stderr_of(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The second image: a ready archive from a `path`, tagged differently in its own index (as an
/// `oci-archive` made elsewhere would be), which the build must name `PAUSE` for containerd.
const PAUSE: &str = "registry.k8s.io/pause:3.6";

/// A profile with the minimal profile's pinned kernel and bootloader, busybox only as an image, and a
/// `path` image archive.
fn write_profile(dir: &Path) -> PathBuf {
    let lock = Lock::load(&repo_root().join("profiles/minimal.lock")).unwrap();
    let pin = |name: &str| {
        let c = lock.component(name).unwrap();
        format!("url = \"{}\"\nsha256 = \"{}\"", c.url, c.sha256)
    };
    let tree = dir.join("pause-tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("pause"), b"not really pause\n").unwrap();
    ingot::oci::write_archive(
        &tree,
        "ingot.local/elsewhere:1",
        &ingot::oci::ImageConfig::default(),
        0,
        dir,
        &dir.join("pause.tar"),
    )
    .unwrap();
    let profile = dir.join("oci.toml");
    std::fs::write(
        &profile,
        format!(
            r#"[image]
name = "oci"
version = "0.1.0"

[kernel]
{kernel}
cmdline = ["console=ttyS0"]
initrd_modules = ["virtio_pci", "virtio_blk", "erofs", "efivarfs"]

[bootloader]
{bootloader}

[partitions]
esp = "512M"
root = "256M"

[[components]]
name = "busybox"
url = "{BUSYBOX_URL}"
sha256 = "{BUSYBOX_SHA256}"
install = false
files = [{{ src = "bin/busybox" }}]

[[images]]
name = "{IMAGE}"
from = "busybox"
entrypoint = ["/bin/busybox"]
cmd = ["echo", "hello from the image's command"]
env = {{ PATH = "/bin" }}

[[images]]
name = "{PAUSE}"
path = "pause.tar"
"#,
            kernel = pin("kernel"),
            bootloader = pin("bootloader"),
        ),
    )
    .unwrap();
    profile
}

/// What a build of the test profile left: the staged root and the manifest.
struct Built {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    profile: PathBuf,
    root: PathBuf,
    manifest: Manifest,
}

fn lock_and_build() -> Built {
    let d = tempfile::Builder::new()
        .prefix("ingot-ctr-")
        .tempdir_in("/tmp")
        .unwrap();
    let dir = d.path().to_path_buf();
    let profile = write_profile(&dir);
    let o = run(ingot().args(["lock", "--profile"]).arg(&profile));
    assert!(o.status.success(), "ingot lock failed:\n{}", stderr(&o));
    let o = run(ingot()
        .args(["build", "--quiet", "--profile"])
        .arg(&profile)
        .arg("--out")
        .arg(dir.join("out"))
        .arg("--keep-work")
        .arg(dir.join("work")));
    assert!(o.status.success(), "ingot build failed:\n{}", stderr(&o));
    veritysetup_agrees(&dir.join("out/oci.raw"));
    let manifest = Manifest::load(&dir.join("out/oci.manifest.json")).unwrap();
    Built {
        _dir: d,
        root: dir.join("work/root"),
        profile,
        dir,
        manifest,
    }
}

#[test]
fn images_land_in_the_root_manifest_and_lock() {
    let b = lock_and_build();
    assert!(
        !b.root.join("bin/busybox").exists(),
        "a component with install = false stays out of the root"
    );
    let names: Vec<(&str, &str, &str)> = b
        .manifest
        .images
        .iter()
        .map(|i| (i.name.as_str(), i.namespace.as_str(), i.archive.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            (
                IMAGE,
                "k8s.io",
                "/usr/share/ingot/images/ingot.local_busybox_latest.tar"
            ),
            (
                PAUSE,
                "k8s.io",
                "/usr/share/ingot/images/registry.k8s.io_pause_3.6.tar"
            ),
        ]
    );
    // The init configuration lists the same archives, so the node imports them and checks their hashes.
    let init =
        ingot_spec::config::parse(&std::fs::read(b.root.join("etc/ingot/init.json")).unwrap()).unwrap();
    let listed: Vec<(&str, &str, &str, &str)> = init
        .images
        .iter()
        .map(|i| {
            (
                i.name.as_str(),
                i.namespace.as_str(),
                i.archive.as_str(),
                i.sha256.as_str(),
            )
        })
        .collect();
    let in_manifest: Vec<(&str, &str, &str, &str)> = b
        .manifest
        .images
        .iter()
        .map(|i| {
            (
                i.name.as_str(),
                i.namespace.as_str(),
                i.archive.as_str(),
                i.sha256.as_str(),
            )
        })
        .collect();
    assert_eq!(listed, in_manifest);
    for i in &b.manifest.images {
        let file = b.root.join(i.archive.trim_start_matches('/'));
        assert_eq!(i.sha256, ingot::fetch::Sha256::of_file(&file).unwrap().to_hex());
        let index = ingot::oci::read_index(&file).unwrap();
        assert_eq!(
            index.manifests[0].annotations[ingot::oci::ANNOTATION_CONTAINERD_NAME],
            i.name
        );
        assert_eq!(index.manifests[0].digest, i.digest);
    }
    // The lock records the path archive by content, like every path source; a changed archive makes
    // the lock stale.
    let lock = Lock::load(&b.profile.with_extension("lock")).unwrap();
    let pinned = lock.component(&format!("image:{PAUSE}")).unwrap();
    assert_eq!(
        pinned.sha256,
        ingot::fetch::Sha256::of_file(&b.dir.join("pause.tar")).unwrap()
    );
    std::fs::write(b.dir.join("pause.tar"), b"changed").unwrap();
    let o = run(ingot()
        .args(["build", "--quiet", "--profile"])
        .arg(&b.profile)
        .arg("--out")
        .arg(b.dir.join("out2")));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("is stale"), "{}", stderr(&o));
}

#[test]
fn containerd_imports_and_runs_the_images() {
    if !containerd_can_run("containerd_imports_and_runs_the_images") {
        return;
    }
    let started = Instant::now();
    let b = lock_and_build();
    let c = Containerd::start(&b.dir.join("containerd"));
    let ns = ["-n", "k8s.io"];
    for i in &b.manifest.images {
        let file = b.root.join(i.archive.trim_start_matches('/'));
        c.ok(&[
            &ns[..],
            &[
                "images",
                "import",
                "--snapshotter",
                "native",
                file.to_str().unwrap(),
            ],
        ]
        .concat());
    }
    let listed = c.ok(&[&ns[..], &["images", "ls"]].concat());
    for i in &b.manifest.images {
        let line = listed
            .lines()
            .find(|l| l.split_whitespace().next() == Some(i.name.as_str()))
            .unwrap_or_else(|| panic!("{} not imported under its name:\n{listed}", i.name));
        assert!(
            line.contains(&i.digest),
            "the manifest's digest {} is what containerd shows:\n{line}",
            i.digest
        );
    }
    let hello = c.ok(&[
        &ns[..],
        &[
            "run",
            "--rm",
            "--snapshotter",
            "native",
            IMAGE,
            "t1",
            "/bin/busybox",
            "echo",
            "hello",
        ],
    ]
    .concat());
    assert_eq!(hello.trim(), "hello");
    // Without a command, the image's entrypoint and command run, with its environment.
    let default = c.ok(&[&ns[..], &["run", "--rm", "--snapshotter", "native", IMAGE, "t2"]].concat());
    assert_eq!(default.trim(), "hello from the image's command");
    let env = c.ok(&[
        &ns[..],
        &[
            "run",
            "--rm",
            "--snapshotter",
            "native",
            IMAGE,
            "t3",
            "/bin/busybox",
            "env",
        ],
    ]
    .concat());
    assert!(env.lines().any(|l| l == "PATH=/bin"), "{env}");
    println!("containerd test took {:.1} s", started.elapsed().as_secs_f64());
}

const SMOKE_PROFILE: &str = "tests/profiles/containerd-smoke.toml";

#[test]
fn containerd_smoke_builds_with_its_closure_init_config_and_modules() {
    let out = tempfile::tempdir().unwrap();
    let work = out.path().join("work");
    let o = run(ingot()
        .args(["build", "--quiet", "--profile", SMOKE_PROFILE, "--out"])
        .arg(out.path().join("out"))
        .arg("--keep-work")
        .arg(&work));
    assert!(o.status.success(), "ingot build failed:\n{}", stderr(&o));
    assert_eq!(
        stdout(&o).trim(),
        out.path().join("out/containerd-smoke.raw").display().to_string()
    );
    let root = work.join("root");

    // Merged /usr: the loader every Debian program names resolves through /lib64.
    assert_eq!(
        std::fs::read_link(root.join("lib64")).unwrap(),
        Path::new("usr/lib64")
    );
    assert!(root.join("lib64/ld-linux-x86-64.so.2").exists());
    for program in [
        "usr/bin/containerd",
        "usr/bin/containerd-shim-runc-v2",
        "usr/bin/ctr",
        "usr/sbin/runc",
        "usr/sbin/mke2fs",
        "usr/bin/busybox",
        "usr/lib/cni/bridge",
        "usr/lib/cni/host-local",
        "usr/lib/cni/loopback",
        "usr/lib/cni/portmap",
    ] {
        let mode = std::fs::metadata(root.join(program))
            .unwrap()
            .permissions()
            .mode();
        assert!(mode & 0o111 != 0, "{program} is not executable");
    }
    // Only the CNI plugins asked for; the excluded packages are absent.
    assert_eq!(
        dir_entries(&root.join("usr/lib/cni")),
        ["bridge", "host-local", "loopback", "portmap"]
    );
    assert!(!root.join("usr/sbin/logsave").exists() && !root.join("usr/sbin/iptables").exists());
    assert!(root.join("usr/lib/x86_64-linux-gnu/libseccomp.so.2").exists());

    let json = std::fs::read(root.join("etc/ingot/init.json")).unwrap();
    let mode = std::fs::metadata(root.join("etc/ingot/init.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o644);
    let init = ingot_spec::config::parse(&json).unwrap();
    let names: Vec<&str> = init.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["containerd", "hello"]);
    // The busybox image: its archive in the root, with the hash the node checks before importing it.
    assert_eq!(init.images.len(), 1, "{:?}", init.images);
    let image = &init.images[0];
    assert_eq!(
        (
            image.name.as_str(),
            image.namespace.as_str(),
            image.archive.as_str()
        ),
        (
            IMAGE,
            "k8s.io",
            "/usr/share/ingot/images/ingot.local_busybox_latest.tar"
        )
    );
    let archive = root.join(image.archive.trim_start_matches('/'));
    assert_eq!(
        image.sha256,
        ingot::fetch::Sha256::of_file(&archive).unwrap().to_hex()
    );
    let hello = &init.services[1];
    assert_eq!(hello.after, ["images"]);
    assert_eq!(init.sysctls["net.bridge.bridge-nf-call-iptables"], "1");
    assert!(init.modules.iter().any(|m| m == "br_netfilter"));

    // modules.dep: each module with its dependencies in load order, paths relative to the module directory.
    let manifest = Manifest::load(&out.path().join("out/containerd-smoke.manifest.json")).unwrap();
    let kver = &manifest.uki.kernel_release;
    let modules = root.join("usr/lib/modules").join(kver);
    let dep = std::fs::read_to_string(modules.join("modules.dep")).unwrap();
    let line = dep
        .lines()
        .find(|l| l.starts_with("kernel/net/bridge/br_netfilter.ko"))
        .unwrap_or_else(|| panic!("no br_netfilter line in:\n{dep}"));
    let deps: Vec<&str> = line.split_once(": ").unwrap().1.split(' ').collect();
    let at = |name: &str| {
        deps.iter()
            .position(|d| d.contains(name))
            .unwrap_or_else(|| panic!("{name}: {line}"))
    };
    assert!(
        at("/llc.ko") < at("/stp.ko") && at("/stp.ko") < at("/bridge.ko"),
        "{line}"
    );
    for l in dep.lines() {
        let (module, deps) = l.split_once(':').unwrap();
        for file in std::iter::once(module).chain(deps.split_whitespace()) {
            assert!(
                modules.join(file).is_file(),
                "{file} of modules.dep is not in the root"
            );
        }
    }
    assert!(modules.join("modules.softdep").is_file() && modules.join("modules.builtin").is_file());

    // Every pulled package is recorded with the first component that pulled it (e2fsprogs comes from the
    // minimal base, so it is first to need libc6).
    let pulled: Vec<(&str, &str)> = manifest
        .components
        .iter()
        .filter_map(|c| Some((c.name.as_str(), c.pulled_by.as_deref()?)))
        .collect();
    for expected in [
        ("libc6", "e2fsprogs"),
        ("libseccomp2", "runc"),
        ("libext2fs2", "e2fsprogs"),
    ] {
        assert!(pulled.contains(&expected), "{expected:?} not in {pulled:?}");
    }
    let root_part = &manifest.partitions[1];
    run_hello_service(
        "containerd_smoke_builds_with_its_closure_init_config_and_modules",
        &hello.exec,
        &archive,
        &work.join("containerd"),
    );
    eprintln!(
        "containerd-smoke: {} components ({} pulled), root {} MiB of {} MiB",
        manifest.components.len(),
        pulled.len(),
        root_part.hashed_bytes >> 20,
        root_part.size >> 20
    );
}

/// Imports the image archive into a private containerd and runs the `hello` service's command against it
/// (with the test containerd's address and snapshotter added), as the node would after its `images`
/// service. Without root, containerd or runc, skips this last part of `test`.
fn run_hello_service(test: &str, exec: &[String], archive: &Path, dir: &Path) {
    if !containerd_can_run(test) {
        return;
    }
    assert_eq!(exec[0], "/usr/bin/ctr", "{exec:?}");
    let c = Containerd::start(dir);
    c.ok(&[
        "-n",
        "k8s.io",
        "images",
        "import",
        "--snapshotter",
        "native",
        archive.to_str().unwrap(),
    ]);
    let mut args: Vec<&str> = exec[1..].iter().map(String::as_str).collect();
    let run = args
        .iter()
        .position(|a| *a == "run")
        .unwrap_or_else(|| panic!("the hello service does not `ctr run`: {exec:?}"));
    args.splice(run + 1..run + 1, ["--snapshotter", "native"]);
    assert_eq!(c.ok(&args).trim(), "hello from a container");
}
