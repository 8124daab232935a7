//! Importing the profile's container images into containerd, without a registry.
//!
//! The builder puts OCI archives under [`ingot_spec::config::IMAGES_DIR`] and lists them, with their
//! sha256, in the init configuration. Stage 2 runs the import as an ordinary one-shot service named
//! [`SERVICE`] after `containerd`, so it is supervised, logged and ordered like everything else: the service
//! execs this same binary as `ingot-init import-images`, which checks each archive's hash, runs
//! `ctr images import` for it and records the import under `/var/lib/ingot/images/`, so later boots skip
//! images containerd already has.

use std::io::{self, Read as _};
use std::path::Path;
use std::process::Command;

use ingot_spec::config::{self, Image, Restart, Service, ServiceKind};
use sha2::{Digest as _, Sha256};

/// The service name other services use in `after` to wait for the images.
pub const SERVICE: &str = "images";
/// The argument that makes `ingot-init` run the import instead of being PID 1.
pub const APPLET: &str = "import-images";
const CTR: &str = "/usr/bin/ctr";
const CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";
const DONE_DIR: &str = "/var/lib/ingot/images";

/// The one-shot service that imports `images`, or `None` when there are none.
pub fn import_service(images: &[Image]) -> Option<Service> {
    (!images.is_empty()).then(|| Service {
        name: SERVICE.to_owned(),
        exec: vec!["/sbin/init".to_owned(), APPLET.to_owned()],
        env: Default::default(),
        after: vec!["containerd".to_owned()],
        kind: ServiceKind::Oneshot,
        ready: None,
        restart: Restart::OnFailure,
        stop_timeout_ms: config::DEFAULT_STOP_TIMEOUT_MS,
        phase: None,
    })
}

/// `ingot-init import-images`: imports every image of the init configuration; the exit code says whether
/// all of them are in containerd. Runs as an ordinary process (a child of PID 1), so it may exit.
pub fn applet() -> i32 {
    let cfg = match std::fs::read(config::INIT_CONFIG_PATH)
        .map_err(|e| e.to_string())
        .and_then(|b| config::parse(&b))
    {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("reading {}: {e}", config::INIT_CONFIG_PATH);
            return 1;
        }
    };
    let mut failed = 0;
    for image in &cfg.images {
        match import(image) {
            Ok(Outcome::Imported) => println!("imported {} ({})", image.name, image.archive),
            Ok(Outcome::AlreadyThere) => println!("{} was imported on an earlier boot", image.name),
            Err(e) => {
                eprintln!("importing {} from {}: {e}", image.name, image.archive);
                failed += 1;
            }
        }
    }
    i32::from(failed > 0)
}

enum Outcome {
    Imported,
    AlreadyThere,
}

fn import(image: &Image) -> Result<Outcome, String> {
    let done = Path::new(DONE_DIR).join(format!("{}.imported", image.sha256));
    if done.exists() {
        return Ok(Outcome::AlreadyThere);
    }
    let actual = sha256_file(Path::new(&image.archive)).map_err(|e| format!("reading the archive: {e}"))?;
    if actual != image.sha256 {
        return Err(format!(
            "the archive's sha256 is {actual}, the image was built with {}; the root is damaged",
            image.sha256
        ));
    }
    let status = Command::new(CTR)
        .args(["--address", CONTAINERD_SOCKET, "--namespace", &image.namespace])
        .args(["images", "import", &image.archive])
        .status()
        .map_err(|e| format!("running {CTR}: {e}"))?;
    if !status.success() {
        return Err(format!("{CTR} images import failed ({status})"));
    }
    std::fs::create_dir_all(DONE_DIR).map_err(|e| format!("creating {DONE_DIR}: {e}"))?;
    std::fs::write(&done, format!("{}\n", image.name))
        .map_err(|e| format!("writing {}: {e}", done.display()))?;
    Ok(Outcome::Imported)
}

fn sha256_file(path: &Path) -> io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_import_service_runs_once_after_containerd_and_only_with_images() {
        assert_eq!(import_service(&[]), None);
        let image = Image {
            name: "ingot.local/busybox:latest".into(),
            archive: "/usr/share/ingot/images/busybox.tar".into(),
            namespace: "k8s.io".into(),
            sha256: "0".repeat(64),
        };
        let s = import_service(&[image]).unwrap();
        assert_eq!(s.name, SERVICE);
        assert_eq!(s.exec, ["/sbin/init", APPLET]);
        assert_eq!(s.after, ["containerd"]);
        assert_eq!(s.kind, ServiceKind::Oneshot);
    }

    #[test]
    fn hashes_files() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a");
        std::fs::write(&f, b"abc").unwrap();
        assert_eq!(
            sha256_file(&f).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
