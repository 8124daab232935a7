//! Roots built from an apt archive (`[base.apt]`): the packages the lock pins, installed by `mmdebstrap`,
//! then stripped of what an appliance never reads.
//!
//! The chain of trust is the lock's: `ingot lock` verified the archive's `InRelease` with its keyring and
//! pinned every `.deb` by sha256; the fetcher checks each download against that pin. The build then writes
//! the verified files into a flat repository of its own (a `Packages` index made from each package's
//! control file) and points `mmdebstrap` at it alone, as trusted. So apt can install nothing but the pinned
//! set, whatever the archive holds today, and the same lock gives the same root.
//!
//! `mmdebstrap` runs in `unshare` mode (a user namespace: no root needed), `--variant=custom` (exactly the
//! pinned packages, maintainer scripts run as on any Debian system), with `SOURCE_DATE_EPOCH` set, and writes
//! a tarball. The tarball is kept in the cache under the hash of everything that went into it, so a rebuild
//! of an unchanged lock skips `mmdebstrap` (`--rebuild` does not).
//!
//! Unpacking the tarball is the strip step ([`unpack`]): it routes the kernel (`/boot`, `/usr/lib/modules`)
//! to its own directory for the UKI and the module staging, and drops documentation (but not the packages'
//! copyright files), the contents of
//! `/var` (the node mounts its var partition there) and of the runtime file systems. Set-user-ID and
//! set-group-ID bits are cleared: the root is all root-owned ([`crate::rootfs::erofs`]), where a
//! set-group-ID `shadow` program would become set-group-ID root, and nothing on a node logs in.

use std::fmt::Write as _;
use std::fs;
use std::io::BufReader;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::fetch::Sha256;
use crate::lock::LockedComponent;
use crate::profile::AptBase;

/// The hook mmdebstrap ships to set up merged-/usr before the first package is unpacked (Debian since
/// bookworm and Ubuntu require it).
const MERGED_USR_HOOK: &str = "/usr/share/mmdebstrap/hooks/merged-usr";

/// What the strip step drops (paths relative to the root), and how the build reports it.
const STRIPPED: [(&str, &str); 7] = [
    ("usr/share/doc", "documentation"),
    ("usr/share/doc-base", "doc-base registrations"),
    ("usr/share/man", "manual pages"),
    ("usr/share/info", "info pages"),
    ("usr/share/locale", "translations"),
    ("usr/share/lintian", "lintian overrides"),
    ("usr/share/bug", "bug-report scripts"),
];
/// Directories kept empty: runtime file systems, and `/var`, over which the node mounts its var partition
/// (with the package database, apt's lists and caches, logs).
const EMPTIED: [&str; 6] = ["dev", "proc", "sys", "run", "tmp", "var"];
/// Where the kernel lives in a root.
const KERNEL_DIRS: [&str; 2] = ["boot", "usr/lib/modules"];

/// One `.deb` of the base: its lock entry, the verified file and its control fields.
pub struct BaseDeb<'a> {
    pub locked: &'a LockedComponent,
    pub file: PathBuf,
    pub control: Vec<(String, String)>,
}

impl<'a> BaseDeb<'a> {
    /// Reads the control file of `file` and checks it is the package and version the lock pins.
    pub fn new(locked: &'a LockedComponent, file: PathBuf) -> Result<Self> {
        let control = crate::fetch::control_fields(&file)
            .with_context(|| format!("reading the control file of base package {}", locked.name))?;
        let deb = BaseDeb {
            locked,
            file,
            control,
        };
        if deb.field("Package") != Some(locked.name.as_str())
            || deb.field("Version") != locked.version.as_deref()
        {
            bail!(
                "{} is {} {}, but the lock pins {} {}",
                deb.file.display(),
                deb.field("Package").unwrap_or("?"),
                deb.field("Version").unwrap_or("?"),
                locked.name,
                locked.version.as_deref().unwrap_or("?")
            );
        }
        Ok(deb)
    }

    /// A control field's value.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.control
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `mmdebstrap --version`, which is part of the base tarball's cache key.
pub fn mmdebstrap_version() -> Result<String> {
    let out = Command::new("mmdebstrap")
        .arg("--version")
        .output()
        .map_err(|e| spawn_error(e, "running `mmdebstrap --version`"))?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A failure to start mmdebstrap: not installed (say how to install it), or another error in `doing`.
fn spawn_error(e: std::io::Error, doing: &str) -> anyhow::Error {
    match e.kind() {
        std::io::ErrorKind::NotFound => anyhow::anyhow!(
            "a profile with [base.apt] needs mmdebstrap: {}",
            ingot_spec::host_tools::missing_message("mmdebstrap")
        ),
        _ => anyhow::Error::new(e).context(doing.to_owned()),
    }
}

/// The cache key of a base tarball: mmdebstrap's version, the suite and architecture, the epoch, the
/// arguments and every pinned package.
pub fn cache_key(base: &AptBase, debs: &[BaseDeb<'_>], epoch: u64, mmdebstrap: &str) -> Sha256 {
    let mut text = format!(
        "ingot-apt-base 1\n{mmdebstrap}\nsuite={} arch={} epoch={epoch}\n{}\n",
        base.archive.suite,
        base.archive.arch,
        mmdebstrap_args(base, debs, Path::new("REPO")).join(" ")
    );
    for d in debs {
        let _ = writeln!(text, "{} {}", d.locked.name, d.locked.sha256);
    }
    Sha256::digest(text.as_bytes())
}

/// Writes a flat repository of `debs` in `dir` (which must exist): the files, linked (or copied across file
/// systems) from the cache, and a `Packages` index from each one's control file.
pub fn write_repo(dir: &Path, debs: &[BaseDeb<'_>]) -> Result<()> {
    let mut index = String::new();
    for d in debs {
        let name = format!("{}.deb", d.locked.name);
        let dst = dir.join(&name);
        if fs::hard_link(&d.file, &dst).is_err() {
            fs::copy(&d.file, &dst)
                .with_context(|| format!("copying {} to {}", d.file.display(), dst.display()))?;
        }
        for (k, v) in &d.control {
            let _ = writeln!(index, "{k}: {v}");
        }
        let size = fs::metadata(&d.file)
            .with_context(|| format!("reading {}", d.file.display()))?
            .len();
        let _ = writeln!(
            index,
            "Filename: ./{name}\nSize: {size}\nSHA256: {}\n",
            d.locked.sha256
        );
    }
    fs::write(dir.join("Packages"), index).with_context(|| format!("writing {}/Packages", dir.display()))
}

/// mmdebstrap's options, before the suite, output and mirror.
fn mmdebstrap_args(base: &AptBase, debs: &[BaseDeb<'_>], repo: &Path) -> Vec<String> {
    let names: Vec<&str> = debs.iter().map(|d| d.locked.name.as_str()).collect();
    vec![
        "--mode=unshare".into(),
        "--variant=custom".into(),
        "--format=tar".into(),
        format!("--architectures={}", base.archive.arch),
        format!("--hook-dir={MERGED_USR_HOOK}"),
        // Device nodes are made by devtmpfs on the node; the tarball needs none.
        "--skip=output/dev".into(),
        format!("--include={}", names.join(",")),
        base.archive.suite.clone(),
        "-".into(),
        // `copy:` rather than `file:`: apt copies each package into the chroot's cache, where dpkg (running
        // inside it for this variant) can read it.
        format!("deb [trusted=yes] copy://{} ./", repo.display()),
    ]
}

/// Runs mmdebstrap over the repository in `repo` and writes the root's tarball to `out` (through a temp
/// file next to it). Its output is shown unless `quiet`; on failure the error carries its last lines.
pub fn run_mmdebstrap(
    base: &AptBase,
    debs: &[BaseDeb<'_>],
    repo: &Path,
    epoch: u64,
    out: &Path,
    quiet: bool,
) -> Result<()> {
    let dir = out.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(".base-")
        .suffix(".tar")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temp file in {}", dir.display()))?;
    let stdout = tmp
        .reopen()
        .with_context(|| format!("opening {}", tmp.path().display()))?;
    let args = mmdebstrap_args(base, debs, repo);
    let mut cmd = Command::new("mmdebstrap");
    crate::host_env::pin_tool_env(&mut cmd, epoch);
    let mut child = cmd
        .args(&args)
        .args(quiet.then_some("--quiet"))
        // dpkg and maintainer scripts want a UTF-8 locale; C.UTF-8 is in every Debian and Ubuntu base.
        .env("LC_ALL", "C.UTF-8")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| spawn_error(e, "starting mmdebstrap"))?;
    // Keep the last lines for the error; show mmdebstrap's own progress lines (not dpkg's) unless quiet.
    let mut tail: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    if let Some(stderr) = child.stderr.take() {
        for line in std::io::BufRead::lines(BufReader::new(stderr)) {
            let line = line.unwrap_or_default();
            if !quiet && (line.starts_with("I: ") || line.starts_with("W: ") || line.starts_with("E: ")) {
                eprintln!("    {line}");
            }
            if tail.len() == 40 {
                tail.pop_front();
            }
            tail.push_back(line);
        }
    }
    let status = child.wait().context("waiting for mmdebstrap")?;
    if !status.success() {
        let lines: Vec<String> = tail.into_iter().collect();
        bail!(
            "mmdebstrap failed ({status}) installing the {} pinned package(s) of the apt base; its last output:\n{}",
            debs.len(),
            lines.join("\n")
        );
    }
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("syncing {}", tmp.path().display()))?;
    tmp.persist(out)
        .map_err(|e| e.error)
        .with_context(|| format!("renaming the base tarball to {}", out.display()))?;
    Ok(())
}

/// What the strip step did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StripReport {
    /// Per [`STRIPPED`] entry and for the emptied directories: what, files, bytes.
    pub dropped: Vec<(String, u64, u64)>,
    /// Bytes of the kernel and its modules, routed to the kernel directory or dropped.
    pub kernel_bytes: u64,
    /// Regular files kept, and their bytes.
    pub kept_files: u64,
    pub kept_bytes: u64,
    /// Files whose set-user-ID or set-group-ID bit was cleared (root paths).
    pub setid_cleared: Vec<String>,
}

impl StripReport {
    pub fn dropped_bytes(&self) -> u64 {
        self.dropped.iter().map(|(_, _, b)| b).sum()
    }

    /// One line per kind of dropped file, for the build's output.
    pub fn summary(&self) -> String {
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        let mut out = format!(
            "kept {} files, {:.1} MiB; dropped {:.1} MiB:",
            self.kept_files,
            mib(self.kept_bytes),
            mib(self.dropped_bytes())
        );
        for (what, files, bytes) in self.dropped.iter().filter(|d| d.1 > 0) {
            let _ = write!(out, " {what} {:.1} MiB ({files} files);", mib(*bytes));
        }
        let _ = write!(
            out,
            " kernel and modules {:.1} MiB (taken out for the UKI and staged as needed)",
            mib(self.kernel_bytes)
        );
        if !self.setid_cleared.is_empty() {
            let _ = write!(out, "; cleared set-ID bits of {}", self.setid_cleared.join(", "));
        }
        out
    }
}

/// Where an entry of the base tarball goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Root,
    Kernel,
    /// Index into the report's `dropped`.
    Dropped(usize),
}

fn place(rel: &Path) -> Place {
    if KERNEL_DIRS
        .iter()
        .any(|k| rel.starts_with(k) && rel != Path::new(k))
    {
        return Place::Kernel;
    }
    // Each package's copyright file stays: the licences of what the image ships travel with it.
    if let Ok(doc) = rel.strip_prefix("usr/share/doc") {
        let parts = doc.components().count();
        if parts <= 1 || (parts == 2 && doc.ends_with("copyright")) {
            return Place::Root;
        }
    }
    if let Some(i) = STRIPPED.iter().position(|(p, _)| rel.starts_with(p)) {
        return Place::Dropped(i);
    }
    if EMPTIED.iter().any(|d| rel.starts_with(d) && rel != Path::new(d)) {
        return Place::Dropped(STRIPPED.len());
    }
    // An image must not carry a machine ID (the node makes its own); the sources list names the build's
    // temporary repository, and the root has no apt to read it.
    if rel == Path::new("etc/machine-id") || rel == Path::new("etc/apt/sources.list") {
        return Place::Dropped(STRIPPED.len());
    }
    Place::Root
}

/// Unpacks a base tarball: the root's files into `root`, the kernel (`/boot`, `/usr/lib/modules`) into
/// `kernel` when given (else it is dropped), and the rest of the strip as the module documentation says.
pub fn unpack(tar: &Path, root: &Path, kernel: Option<&Path>) -> Result<StripReport> {
    let mut report = StripReport {
        dropped: STRIPPED
            .iter()
            .map(|(_, what)| ((*what).to_owned(), 0, 0))
            .chain([("/var and runtime directories".to_owned(), 0, 0)])
            .collect(),
        ..StripReport::default()
    };
    let file = fs::File::open(tar).with_context(|| format!("opening {}", tar.display()))?;
    let dirs: Vec<&Path> = match kernel {
        Some(k) => vec![root, k],
        None => vec![root],
    };
    let mut route = |rel: &Path, header: &tar::Header| -> Option<usize> {
        let size = if header.entry_type().is_file() {
            header.size().unwrap_or(0)
        } else {
            0
        };
        let counted = u64::from(header.entry_type().is_file());
        let mut p = place(rel);
        // A hard link goes where its target went, or nowhere.
        if header.entry_type().is_hard_link()
            && let Ok(Some(target)) = header.link_name()
        {
            let target = target.strip_prefix("./").unwrap_or(&target).to_path_buf();
            if place(&target) != p {
                p = Place::Dropped(STRIPPED.len());
            }
        }
        match p {
            Place::Root => {
                report.kept_files += counted;
                report.kept_bytes += size;
                Some(0)
            }
            Place::Kernel => {
                report.kernel_bytes += size;
                kernel.map(|_| 1)
            }
            Place::Dropped(i) => {
                report.dropped[i].1 += counted;
                report.dropped[i].2 += size;
                None
            }
        }
    };
    crate::fetch::extract_tar_routed(BufReader::new(file), &dirs, tar, "the base tarball", &mut route)
        .with_context(|| format!("unpacking the apt base {}", tar.display()))?;
    report.setid_cleared = clear_setid(root)?;
    Ok(report)
}

/// Clears set-user-ID and set-group-ID bits below `root`; returns the image paths, sorted.
fn clear_setid(root: &Path) -> Result<Vec<String>> {
    let mut entries = Vec::new();
    crate::rootfs::stage::walk(root, &mut entries).with_context(|| format!("listing {}", root.display()))?;
    let mut cleared = Vec::new();
    for e in entries {
        let m = fs::symlink_metadata(&e).with_context(|| format!("reading {}", e.display()))?;
        let mode = m.permissions().mode();
        if m.is_file() && mode & 0o6000 != 0 {
            fs::set_permissions(&e, fs::Permissions::from_mode(mode & 0o1777))
                .with_context(|| format!("clearing the set-ID bits of {}", e.display()))?;
            cleared.push(format!("/{}", e.strip_prefix(root).unwrap_or(&e).display()));
        }
    }
    cleared.sort();
    Ok(cleared)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_strip_routes_kernel_drops_docs_and_empties_var() {
        assert_eq!(place(Path::new("usr/bin/containerd")), Place::Root);
        assert_eq!(place(Path::new("boot/vmlinuz-6.1.0-50-amd64")), Place::Kernel);
        assert_eq!(
            place(Path::new(
                "usr/lib/modules/6.1.0-50-amd64/kernel/fs/ext4/ext4.ko.xz"
            )),
            Place::Kernel
        );
        assert_eq!(
            place(Path::new("boot")),
            Place::Root,
            "the directory itself stays"
        );
        let doc = |p: &str| place(Path::new(p));
        assert_eq!(doc("usr/share/doc/runc/changelog.Debian.gz"), Place::Dropped(0));
        assert_eq!(doc("usr/share/doc/runc/examples/x"), Place::Dropped(0));
        assert_eq!(doc("usr/share/doc/runc/copyright"), Place::Root, "licences stay");
        assert_eq!(doc("usr/share/doc/runc"), Place::Root);
        assert_eq!(doc("usr/share/doc-base/x"), Place::Dropped(1));
        assert_eq!(doc("usr/share/man/man8/runc.8.gz"), Place::Dropped(2));
        assert_eq!(place(Path::new("var")), Place::Root);
        assert_eq!(
            place(Path::new("var/lib/dpkg/status")),
            Place::Dropped(STRIPPED.len())
        );
        assert_eq!(place(Path::new("etc/machine-id")), Place::Dropped(STRIPPED.len()));
        assert_eq!(
            place(Path::new("etc/apt/sources.list")),
            Place::Dropped(STRIPPED.len())
        );
        assert_eq!(
            place(Path::new("usr/share/docker/x")),
            Place::Root,
            "prefixes match whole names"
        );
    }
}
