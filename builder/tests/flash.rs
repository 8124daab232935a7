//! `ingot flash` onto loop devices (as root) and files: what lands on the target, that a same-size copy
//! verifies as the image, and that every refusal leaves the target byte-for-byte as it was.
//!
//! Loop devices need root and `losetup`; without them each test says why it does not run.

mod common;

use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

struct Loop {
    dev: PathBuf,
    backing: PathBuf,
}

impl Loop {
    /// A loop device over a new sparse file of `size` bytes (with `-P`: partitions scanned).
    fn new(dir: &Path, name: &str, size: u64, partscan: bool) -> Loop {
        let backing = dir.join(name);
        std::fs::File::create(&backing).unwrap().set_len(size).unwrap();
        Loop::attach(backing, partscan)
    }

    /// A loop device over the existing file `backing`.
    fn attach(backing: PathBuf, partscan: bool) -> Loop {
        let mut c = Command::new("losetup");
        c.args(["--find", "--show"]);
        if partscan {
            c.arg("--partscan");
        }
        let o = c.arg(&backing).output().unwrap();
        assert!(
            o.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        Loop {
            dev: PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()),
            backing,
        }
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

/// A read-only mount, unmounted when dropped (also when the test fails).
struct Mounted(PathBuf);

impl Mounted {
    fn new(dev: &Path, at: &Path) -> Mounted {
        let ok = Command::new("mount")
            .args(["-o", "ro"])
            .arg(dev)
            .arg(at)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mounting {}", dev.display());
        Mounted(at.to_path_buf())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// sha256 of a whole device or file (sha2 uses the CPU's SHA extensions; coreutils' sha256sum does not).
fn sha256sum(path: &Path) -> String {
    use sha2::Digest as _;
    use std::io::Read as _;
    let mut f = std::fs::File::open(path).unwrap();
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 8 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

fn sha256_at(path: &Path, offset: u64, len: u64) -> String {
    use sha2::Digest as _;
    let f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; len as usize];
    f.read_exact_at(&mut buf, offset).unwrap();
    hex::encode(sha2::Sha256::digest(&buf))
}

struct Signed {
    dir: tempfile::TempDir,
    image: PathBuf,
    manifest: serde_json::Value,
    public: PathBuf,
    other_public: PathBuf,
}

fn signed_minimal() -> Signed {
    let dir = tempfile::tempdir().unwrap();
    for name in ["site", "other"] {
        let o = run(ingot().arg("keygen").arg("--out").arg(dir.path().join(name)));
        assert!(o.status.success(), "keygen: {}", stderr(&o));
    }
    let key = dir.path().join("site.key");
    let image = build_minimal_with(&dir.path().join("out"), &["--sign-key", key.to_str().unwrap()]);
    let manifest =
        serde_json::from_slice(&std::fs::read(dir.path().join("out/minimal.manifest.json")).unwrap())
            .unwrap();
    Signed {
        image,
        manifest,
        public: dir.path().join("site.pub"),
        other_public: dir.path().join("other.pub"),
        dir,
    }
}

impl Signed {
    fn size(&self) -> u64 {
        self.manifest["image"]["size"].as_u64().unwrap()
    }

    fn partition(&self, label: &str) -> (u64, u64, u64, String) {
        let p = self.manifest["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["label"] == label)
            .unwrap();
        (
            p["offset"].as_u64().unwrap(),
            p["size"].as_u64().unwrap(),
            p["hashed_bytes"].as_u64().unwrap(),
            p["sha256"].as_str().unwrap().to_owned(),
        )
    }

    /// `ingot flash` with this image's key and a rollback state of the test's own.
    fn flash(&self, target: &Path, extra: &[&str]) -> std::process::Output {
        run(ingot()
            .arg("flash")
            .arg(&self.image)
            .arg(target)
            .arg("--key")
            .arg(&self.public)
            .arg("--state")
            .arg(self.dir.path().join("state.json"))
            .args(extra))
    }
}

/// Fills `dev` with a repeating non-zero pattern, as a disk that held something before.
fn fill_with_junk(dev: &Path, size: u64) {
    let f = std::fs::OpenOptions::new().write(true).open(dev).unwrap();
    let chunk: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8 | 1).collect();
    let mut off = 0;
    while off < size {
        let n = (size - off).min(chunk.len() as u64) as usize;
        f.write_all_at(&chunk[..n], off).unwrap();
        off += n as u64;
    }
    f.sync_all().unwrap();
}

#[test]
fn flash_onto_a_used_larger_disk_writes_the_image_moves_the_backup_and_reads_back() {
    if !ingot_testkit::require_loop_devices(
        "flash_onto_a_used_larger_disk_writes_the_image_moves_the_backup_and_reads_back",
    ) {
        return;
    }
    let s = signed_minimal();
    let size = s.size() + (512 << 20);
    let lo = Loop::new(s.dir.path(), "disk.img", size, false);
    fill_with_junk(&lo.dev, size);

    let o = s.flash(&lo.dev, &[]);
    assert!(o.status.success(), "flash failed:\n{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("read back and compared"), "{err}");
    assert!(
        err.contains("backup GPT moved to the end (512.0 MiB for var to grow into"),
        "{err}"
    );
    assert!(stdout(&o).contains("flashed"), "{}", stdout(&o));

    // The table describes the whole disk: primary and backup agree, the backup in the last sector.
    let head = {
        let mut b = vec![0u8; 34 * 512];
        std::fs::File::open(&lo.dev)
            .unwrap()
            .read_exact_at(&mut b, 0)
            .unwrap();
        b
    };
    let header = ingot_spec::gpt::parse_header(&head).unwrap();
    let parts = ingot_spec::gpt::parse_entries(&header, &head[1024..]).unwrap();
    assert_eq!(parts.len(), 6);
    assert_eq!(header.last_usable_lba, size / 512 - 34);
    let sgdisk = Command::new("sgdisk").arg("-v").arg(&lo.dev).output();
    if let Ok(o) = sgdisk {
        assert!(
            String::from_utf8_lossy(&o.stdout).contains("No problems found"),
            "{}",
            String::from_utf8_lossy(&o.stdout)
        );
    }

    // Each partition's content is the manifest's, the start of the empty ones is wiped, and the disk's
    // old bytes past that were left alone (flash writes what the image needs, not the whole image).
    for label in ["esp", "root-a"] {
        let (offset, _, hashed, sha) = s.partition(label);
        assert_eq!(sha256_at(&lo.dev, offset, hashed), sha, "{label}");
    }
    let (var, var_size, _, _) = s.partition("var");
    let f = std::fs::File::open(&lo.dev).unwrap();
    let mut first = vec![0u8; 1 << 20];
    f.read_exact_at(&mut first, var).unwrap();
    assert!(first.iter().all(|b| *b == 0), "var's first MiB is wiped");
    let mut later = vec![0u8; 4096];
    f.read_exact_at(&mut later, var + var_size / 2).unwrap();
    assert!(later.iter().all(|b| *b != 0), "the rest of var was not written");
    // The image's own backup GPT position (mid-disk now) holds no stale table.
    let mut old_backup = vec![0u8; 512];
    f.read_exact_at(&mut old_backup, s.size() - 512).unwrap();
    assert!(old_backup.iter().all(|b| *b == 0));
}

#[test]
fn a_same_size_disk_verifies_as_the_image_afterwards() {
    if !ingot_testkit::require_loop_devices("a_same_size_disk_verifies_as_the_image_afterwards") {
        return;
    }
    let s = signed_minimal();
    let lo = Loop::new(s.dir.path(), "disk.img", s.size(), false);
    let o = s.flash(&lo.dev, &[]);
    assert!(o.status.success(), "flash failed:\n{}", stderr(&o));
    assert!(!stderr(&o).contains("backup GPT moved"), "{}", stderr(&o));
    let o = run(ingot()
        .arg("verify")
        .arg(&lo.dev)
        .arg("--key")
        .arg(&s.public)
        .arg("--manifest")
        .arg(s.dir.path().join("out/minimal.manifest.json"))
        .arg("--state")
        .arg(s.dir.path().join("state.json")));
    assert!(
        o.status.success(),
        "verify of the flashed device failed:\n{}",
        stderr(&o)
    );
    assert_eq!(sha256sum(&lo.dev), sha256sum(&s.image));
}

/// Runs flash with `args` against `target`, expects it to fail with `message`, and the target unchanged.
fn refused(s: &Signed, target: &Path, args: &[&str], key: Option<&Path>, message: &str) {
    let before = sha256sum(target);
    let mut c = ingot();
    c.arg("flash").arg(&s.image).arg(target).args(args);
    if let Some(key) = key {
        c.arg("--key")
            .arg(key)
            .arg("--state")
            .arg(s.dir.path().join("state.json"));
    }
    let o = run(&mut c);
    let err = stderr(&o);
    assert!(
        !o.status.success(),
        "flash to {} should have been refused:\n{err}",
        target.display()
    );
    assert!(err.contains(message), "expected {message:?} in:\n{err}");
    assert!(err.contains("nothing was written"), "{err}");
    assert_eq!(
        sha256sum(target),
        before,
        "the target changed although flash refused"
    );
}

#[test]
fn refusals_leave_the_target_untouched() {
    if !ingot_testkit::require_loop_devices("refusals_leave_the_target_untouched") {
        return;
    }
    let s = signed_minimal();
    let pubkey = Some(s.public.as_path());

    // Too small.
    let small = Loop::new(s.dir.path(), "small.img", 512 << 20, false);
    fill_with_junk(&small.dev, 512 << 20);
    refused(
        &s,
        &small.dev,
        &[],
        pubkey,
        "is 512.0 MiB (536870912 bytes), smaller than the image",
    );

    // Not a block device (a regular file without --to-file).
    refused(
        &s,
        &small.backing,
        &[],
        pubkey,
        "is a regular file, not a block device; pass --to-file",
    );

    // Mounted (a file system on the whole loop device).
    let disk = Loop::new(s.dir.path(), "mounted.img", s.size() + (64 << 20), false);
    assert!(
        Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&disk.dev)
            .status()
            .unwrap()
            .success()
    );
    let mnt = s.dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    // Read-only, so the file system itself changes nothing on the device while it is compared.
    let mounted = Mounted::new(&disk.dev, &mnt);
    refused(
        &s,
        &disk.dev,
        &[],
        pubkey,
        &format!("is mounted on {}; unmount it first", mnt.display()),
    );
    drop(mounted);

    // The wrong key, a signed image without one, a corrupted image: refused before the first write.
    refused(
        &s,
        &disk.dev,
        &[],
        Some(&s.other_public),
        "the image failed verification",
    );
    refused(&s, &disk.dev, &[], None, "is signed (");
    let (root, _, hashed, _) = s.partition("root-a");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&s.image)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, root + hashed / 2).unwrap();
    f.write_all_at(&[b[0] ^ 0x10], root + hashed / 2).unwrap();
    refused(&s, &disk.dev, &[], pubkey, "the image failed verification");
    f.write_all_at(&b, root + hashed / 2).unwrap();

    // --dry-run checks everything and writes nothing.
    let before = sha256sum(&disk.dev);
    let o = s.flash(&disk.dev, &["--dry-run"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("would write"), "{}", stderr(&o));
    assert_eq!(sha256sum(&disk.dev), before);
}

#[test]
fn a_partition_or_a_disk_with_a_mounted_partition_is_refused() {
    let test = "a_partition_or_a_disk_with_a_mounted_partition_is_refused";
    if !ingot_testkit::require_loop_devices(test) {
        return;
    }
    let s = signed_minimal();
    // A disk holding the image, partitions scanned, its ESP mounted.
    let lo = Loop::new(s.dir.path(), "disk.img", s.size(), false);
    let o = s.flash(&lo.dev, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let backing = lo.backing.clone();
    drop(lo);
    let lo = Loop::attach(backing, true);
    let p1 = PathBuf::from(format!("{}p1", lo.dev.display()));
    let appears = || {
        (0..50).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(100));
            p1.exists()
        })
    };
    // Some kernels scan a loop device's partitions only when asked through BLKPG, which partx does.
    let mut partx = String::new();
    if !appears() && ingot_testkit::find_program("partx").is_some() {
        let o = Command::new("partx").arg("-a").arg(&lo.dev).output().unwrap();
        partx = format!(
            "; partx -a: {}{}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        );
        appears();
    }
    if !p1.exists() {
        ingot_testkit::skip(
            test,
            format!(
                "the partition cases: no partition devices appeared for {} with losetup --partscan{partx} \
                 (in a container, /dev must be the host's devtmpfs)",
                lo.dev.display()
            ),
        );
        return;
    }
    refused(&s, &p1, &[], Some(&s.public), "is a partition (");
    // root-a (EROFS) rather than the ESP: hosts without vfat, such as many VM kernels, still mount it.
    let p2 = PathBuf::from(format!("{}p2", lo.dev.display()));
    let mnt = s.dir.path().join("root-a");
    std::fs::create_dir(&mnt).unwrap();
    if !Command::new("mount")
        .args(["-t", "erofs", "-o", "ro"])
        .arg(&p2)
        .arg(&mnt)
        .status()
        .unwrap()
        .success()
    {
        ingot_testkit::skip(
            test,
            "the mounted-partition case (the rest ran): cannot mount root-a here (the kernel needs erofs: \
             modprobe erofs)",
        );
        return;
    }
    let message = format!("{} is mounted on {}", p2.display(), mnt.display());
    let before = sha256sum(&lo.dev);
    let o = s.flash(&lo.dev, &[]);
    let _ = Command::new("umount").arg(&mnt).status();
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains(&message),
        "expected {message:?} in {}",
        stderr(&o)
    );
    assert_eq!(sha256sum(&lo.dev), before);
}

#[test]
fn the_disk_of_the_running_system_is_refused() {
    use std::os::unix::fs::MetadataExt as _;
    let dev = std::fs::metadata("/").unwrap().dev();
    let sys = PathBuf::from(format!(
        "/sys/dev/block/{}:{}",
        rustix::fs::major(dev),
        rustix::fs::minor(dev)
    ));
    let test = "the_disk_of_the_running_system_is_refused";
    let Ok(dir) = std::fs::canonicalize(&sys) else {
        ingot_testkit::skip(
            test,
            format!(
                "/ is not on a block device ({} does not exist): run it where / is on a disk, not in a container",
                sys.display()
            ),
        );
        return;
    };
    let disk = if dir.join("partition").exists() {
        dir.parent().unwrap().to_path_buf()
    } else {
        dir
    };
    let dev = Path::new("/dev").join(disk.file_name().unwrap());
    if !dev.exists() {
        ingot_testkit::skip(
            test,
            format!(
                "{}, the disk holding /, does not exist here (a container without the host's /dev?)",
                dev.display()
            ),
        );
        return;
    }
    let s = signed_minimal();
    // --dry-run: even a broken check would write nothing to this machine's disk.
    let o = s.flash(&dev, &["--dry-run"]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("refusing to write: holds the running system: / is mounted from"),
        "{err}"
    );
}

#[test]
fn to_file_creates_a_copy_or_writes_into_a_large_enough_file() {
    let s = signed_minimal();
    let copy = s.dir.path().join("copy.img");
    let o = s.flash(&copy, &["--to-file"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        sha256sum(&copy),
        sha256sum(&s.image),
        "a new file is an exact copy"
    );
    let leftovers: Vec<_> = std::fs::read_dir(s.dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".ingot-flash-"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");

    let small = s.dir.path().join("small.img");
    std::fs::write(&small, b"keep me").unwrap();
    refused(
        &s,
        &small,
        &["--to-file"],
        Some(&s.public),
        "is 7 bytes, smaller than the image",
    );
    refused(
        &s,
        Path::new("/dev/null"),
        &[],
        Some(&s.public),
        "is a character device",
    );
}
