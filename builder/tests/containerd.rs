//! `[[images]]` end to end against the real containerd: a profile builds an image from Debian's
//! `busybox-static` (a component that is not installed in the root), `ingot build` writes its OCI archive
//! into the root, and containerd 1.6 (Debian bookworm) imports it under the profile's name and runs it.
//!
//! Needs root, `containerd`, `ctr` and `runc` (`apt-get install containerd runc`); skips with a printed
//! reason otherwise. containerd runs with a private root, state and socket in a temporary directory and the
//! native snapshotter, so it touches nothing of a containerd the host may run.

mod common;

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

fn skip_reason() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("not root (containerd and runc need it)".into());
    }
    for tool in ["containerd", "ctr", "runc", "containerd-shim-runc-v2"] {
        if !have(tool) {
            return Some(format!("{tool} is missing (apt-get install containerd runc)"));
        }
    }
    None
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

/// A profile with the minimal profile's pinned kernel and bootloader, and busybox only as an image.
fn write_profile(dir: &Path) -> PathBuf {
    let lock = Lock::load(&repo_root().join("profiles/minimal.lock")).unwrap();
    let pin = |name: &str| {
        let c = lock.component(name).unwrap();
        format!("url = \"{}\"\nsha256 = \"{}\"", c.url, c.sha256)
    };
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
"#,
            kernel = pin("kernel"),
            bootloader = pin("bootloader"),
        ),
    )
    .unwrap();
    profile
}

#[test]
fn containerd_imports_and_runs_an_image_built_from_a_component() {
    if let Some(why) = skip_reason() {
        println!("SKIPPED containerd_imports_and_runs_an_image_built_from_a_component: {why}");
        return;
    }
    let started = Instant::now();
    let d = tempfile::Builder::new()
        .prefix("ingot-ctr-")
        .tempdir_in("/tmp")
        .unwrap();
    let profile = write_profile(d.path());
    let o = run(ingot().args(["lock", "--profile"]).arg(&profile));
    assert!(o.status.success(), "ingot lock failed:\n{}", stderr(&o));
    let out = d.path().join("out");
    let work = d.path().join("work");
    let o = run(ingot()
        .args(["build", "--quiet", "--profile"])
        .arg(&profile)
        .arg("--out")
        .arg(&out)
        .arg("--keep-work")
        .arg(&work));
    assert!(o.status.success(), "ingot build failed:\n{}", stderr(&o));

    let root = work.join("root");
    assert!(
        !root.join("bin/busybox").exists(),
        "a component with install = false stays out of the root"
    );
    let archive = root.join("usr/share/ingot/images/ingot.local_busybox_latest.tar");
    let m = Manifest::load(&out.join("oci.manifest.json")).unwrap();
    assert_eq!(m.images.len(), 1, "{:?}", m.images);
    let entry = &m.images[0];
    assert_eq!(
        (
            entry.name.as_str(),
            entry.namespace.as_str(),
            entry.archive.as_str()
        ),
        (
            IMAGE,
            "k8s.io",
            "/usr/share/ingot/images/ingot.local_busybox_latest.tar"
        )
    );
    assert_eq!(
        entry.sha256,
        ingot::fetch::Sha256::of_file(&archive).unwrap().to_hex()
    );

    // The same archive, named differently by an index without containerd's annotation, as a pinned
    // archive from elsewhere would be: normalising it must make the import tag it.
    let renamed = d.path().join("renamed.tar");
    ingot::oci::normalize_archive(&archive, "registry.k8s.io/pause:3.6", &renamed).unwrap();

    let c = Containerd::start(&d.path().join("containerd"));
    let ns = ["-n", "k8s.io"];
    for a in [&archive, &renamed] {
        c.ok(&[
            &ns[..],
            &["images", "import", "--snapshotter", "native", a.to_str().unwrap()],
        ]
        .concat());
    }
    let listed = c.ok(&[&ns[..], &["images", "ls"]].concat());
    for name in [IMAGE, "registry.k8s.io/pause:3.6"] {
        let line = listed
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("{name} not imported under its name:\n{listed}"));
        assert!(
            line.contains(&entry.digest),
            "the manifest's digest {} is what containerd shows:\n{line}",
            entry.digest
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
