//! The EFI System Partition: a FAT32 image holding systemd-boot, its loader configuration and the UKIs.
//!
//! Written with mtools (`mformat`, `mmd`, `mcopy`) rather than a Rust FAT crate: the released `fatfs` 0.3.6
//! writes subdirectories that `fsck.fat` reports as broken, and its fixed successor is unreleased. mtools
//! needs no root and no loop devices, and with a fixed volume id, `SOURCE_DATE_EPOCH` and source files whose
//! mtime is the epoch it produces byte-identical images. Reading (for `ingot inspect`) uses `mtype` on the
//! image at the partition's offset.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Where systemd-boot looks for itself as the default (removable-media) boot loader.
pub const BOOT_LOADER_PATH: &str = "EFI/BOOT/BOOTX64.EFI";
/// Directory of Type #2 boot entries (UKIs) that systemd-boot discovers on its own.
pub const UKI_DIR: &str = "EFI/Linux";
pub const LOADER_CONF_PATH: &str = "loader/loader.conf";
/// Boot attempts a new UKI gets before systemd-boot considers it bad (boot counting: `+3` in the name).
pub const BOOT_TRIES: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum EspError {
    #[error("{}", ingot_spec::host_tools::missing_message(tool))]
    MissingTool { tool: String },
    #[error("`{command}` failed: {stderr}")]
    Tool { command: String, stderr: String },
    #[error("I/O on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("ESP path {0:?} must be relative, `/`-separated, without `.` or `..`")]
    BadPath(String),
}

/// A file to place on the ESP.
#[derive(Debug, Clone)]
pub struct EspFile {
    /// Path on the ESP, e.g. `EFI/BOOT/BOOTX64.EFI`.
    pub path: String,
    /// File on the build host with the content.
    pub source: PathBuf,
}

/// The UKI's file name with boot counting: `ingot-<image>-<version>+3.efi`.
pub fn uki_file_name(image: &str, version: &str) -> String {
    format!("ingot-{image}-{version}+{BOOT_TRIES}.efi")
}

/// `loader.conf` for systemd-boot: boot the newest entry at once unless a timeout is configured.
pub fn loader_conf(timeout: u32) -> String {
    format!("timeout {timeout}\neditor no\nauto-entries no\nauto-firmware no\n")
}

fn mtools(tool: &str, epoch: u64) -> Command {
    let mut c = Command::new(tool);
    // The epoch and time zone pin the times mtools stamps on files, directories and the volume;
    // MTOOLS_SKIP_CHECK stops it from rejecting images whose geometry does not match a floppy.
    crate::host_env::pin_tool_env(&mut c, epoch)
        .env("MTOOLS_SKIP_CHECK", "1")
        .env("MTOOLSRC", "/dev/null");
    c
}

fn run(mut cmd: Command) -> Result<Vec<u8>, EspError> {
    let tool = cmd.get_program().to_string_lossy().into_owned();
    let command = format!(
        "{tool} {}",
        cmd.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let out = cmd.output().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => EspError::MissingTool { tool },
        _ => EspError::Tool {
            command: command.clone(),
            stderr: e.to_string(),
        },
    })?;
    if !out.status.success() {
        return Err(EspError::Tool {
            command,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out.stdout)
}

fn check_path(p: &str) -> Result<(), EspError> {
    if p.is_empty() || p.starts_with('/') || p.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err(EspError::BadPath(p.to_string()));
    }
    Ok(())
}

/// Sectors per cluster: 4 KiB clusters where FAT32's minimum of 65525 clusters allows, smaller otherwise.
fn sectors_per_cluster(size: u64) -> u32 {
    let sectors = size / 512;
    [8u32, 4, 2, 1]
        .into_iter()
        .find(|spc| sectors / u64::from(*spc) >= 66_000)
        .unwrap_or(1)
}

/// Formats `image` (created or truncated to `size` bytes) as FAT32 and copies `files` onto it.
pub fn build(image: &Path, size: u64, volume_id: u32, files: &[EspFile], epoch: u64) -> Result<(), EspError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| EspError::Io { path, source }
    };
    let f = std::fs::File::create(image).map_err(io(image))?;
    f.set_len(size).map_err(io(image))?;
    drop(f);
    let img = image.as_os_str().to_string_lossy().into_owned();
    let mut fmt = mtools("mformat", epoch);
    fmt.args([
        "-i",
        &img,
        "-F",
        "-T",
        &(size / 512).to_string(),
        "-h",
        "64",
        "-s",
        "32",
    ])
    .args([
        "-c",
        &sectors_per_cluster(size).to_string(),
        "-N",
        &format!("{volume_id:08x}"),
        "-v",
        "ESP",
        "::",
    ]);
    run(fmt)?;

    let mut files: Vec<&EspFile> = files.iter().collect();
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let mut dirs = std::collections::BTreeSet::new();
    for f in &files {
        check_path(&f.path)?;
        let mut acc = String::new();
        let parts: Vec<&str> = f.path.split('/').collect();
        for part in &parts[..parts.len() - 1] {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(part);
            dirs.insert(acc.clone());
        }
    }
    if !dirs.is_empty() {
        let mut mmd = mtools("mmd", epoch);
        mmd.args(["-i", &img])
            .args(dirs.iter().map(|d| format!("::/{d}")));
        run(mmd)?;
    }
    for f in files {
        // mcopy -m keeps the source's mtime, so the source must carry the epoch for reproducible entries.
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(epoch);
        let src = std::fs::File::options()
            .write(true)
            .open(&f.source)
            .map_err(io(&f.source))?;
        src.set_modified(t).map_err(io(&f.source))?;
        drop(src);
        let mut cp = mtools("mcopy", epoch);
        cp.args(["-m", "-o", "-i", &img])
            .arg(&f.source)
            .arg(format!("::/{}", f.path));
        run(cp)?;
    }
    Ok(())
}

/// Reads one file from a FAT file system starting at byte `offset` of `image`.
pub fn read_file(image: &Path, offset: u64, path: &str) -> Result<Vec<u8>, EspError> {
    check_path(path)?;
    let mut c = mtools("mcopy", 0);
    c.arg("-n")
        .arg("-i")
        .arg(format!("{}@@{offset}", image.display()))
        .arg(format!("::/{path}"))
        .arg("-");
    run(c)
}

/// Puts `source` at `path` on a FAT file system starting at byte `offset` of `image`, creating the
/// directories on the way and replacing a file already there.
pub fn add_file(image: &Path, offset: u64, path: &str, source: &Path) -> Result<(), EspError> {
    check_path(path)?;
    let target = format!("{}@@{offset}", image.display());
    let parts: Vec<&str> = path.split('/').collect();
    for depth in 1..parts.len() {
        let mut mmd = mtools("mmd", 0);
        mmd.arg("-i")
            .arg(&target)
            .arg(format!("::/{}", parts[..depth].join("/")));
        // Fails when the directory exists; a real problem shows in the copy below.
        let _ = run(mmd);
    }
    let mut cp = mtools("mcopy", 0);
    cp.args(["-o", "-i"])
        .arg(&target)
        .arg(source)
        .arg(format!("::/{path}"));
    run(cp)?;
    Ok(())
}

/// Lists the plain files in a directory of a FAT file system at `offset` of `image`.
pub fn list_dir(image: &Path, offset: u64, dir: &str) -> Result<Vec<String>, EspError> {
    check_path(dir)?;
    let mut c = mtools("mdir", 0);
    c.arg("-b")
        .arg("-i")
        .arg(format!("{}@@{offset}", image.display()))
        .arg(format!("::/{dir}"));
    let out = run(c)?;
    let prefix = format!("::/{dir}/");
    Ok(String::from_utf8_lossy(&out)
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix).map(str::to_string))
        .filter(|n| !n.is_empty() && !n.ends_with('/'))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether mtools is installed; otherwise skips `test`.
    fn tools(test: &str) -> bool {
        ingot_testkit::require_tools(test, &["mformat", "mmd", "mcopy", "mdir"])
    }

    #[test]
    fn builds_a_clean_reproducible_esp_and_reads_it_back() {
        if !tools("builds_a_clean_reproducible_esp_and_reads_it_back") {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let boot = d.path().join("boot.efi");
        std::fs::write(&boot, b"MZ boot").unwrap();
        let uki = d.path().join("uki.efi");
        std::fs::write(&uki, vec![7u8; 100_000]).unwrap();
        let conf = d.path().join("loader.conf");
        std::fs::write(&conf, loader_conf(0)).unwrap();
        let files = vec![
            EspFile {
                path: BOOT_LOADER_PATH.into(),
                source: boot,
            },
            EspFile {
                path: format!("{UKI_DIR}/{}", uki_file_name("minimal", "0.1.0")),
                source: uki,
            },
            EspFile {
                path: LOADER_CONF_PATH.into(),
                source: conf,
            },
        ];
        let a = d.path().join("a.img");
        let b = d.path().join("b.img");
        build(&a, 64 << 20, 0x1234_abcd, &files, 1_704_067_200).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        build(&b, 64 << 20, 0x1234_abcd, &files, 1_704_067_200).unwrap();
        assert!(
            std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(),
            "ESP images differ"
        );
        if let Some(fsck) = ingot_testkit::tool_for_check(
            "builds_a_clean_reproducible_esp_and_reads_it_back",
            "the fsck.fat check",
            "fsck.fat",
        ) {
            let out = Command::new(fsck).arg("-n").arg(&a).output().unwrap();
            assert!(
                out.status.success(),
                "fsck.fat: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        assert_eq!(read_file(&a, 0, BOOT_LOADER_PATH).unwrap(), b"MZ boot");
        assert_eq!(
            list_dir(&a, 0, UKI_DIR).unwrap(),
            vec!["ingot-minimal-0.1.0+3.efi".to_string()]
        );
        assert_eq!(
            read_file(&a, 0, "loader/loader.conf").unwrap(),
            loader_conf(0).as_bytes()
        );
        assert!(matches!(read_file(&a, 0, "../x"), Err(EspError::BadPath(_))));
        assert!(read_file(&a, 0, "EFI/nothing").is_err());
    }

    #[test]
    fn add_file_creates_the_directory_and_replaces_the_file() {
        if !tools("add_file_creates_the_directory_and_replaces_the_file") {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let esp = d.path().join("esp.img");
        build(&esp, 64 << 20, 1, &[], 0).unwrap();
        // The file system starts 1 MiB into the "disk".
        let disk = d.path().join("disk.img");
        let mut bytes = vec![0u8; 1 << 20];
        bytes.extend(std::fs::read(&esp).unwrap());
        std::fs::write(&disk, bytes).unwrap();
        let src = d.path().join("node.toml");
        for content in ["first", "second"] {
            std::fs::write(&src, content).unwrap();
            add_file(&disk, 1 << 20, "ingot/node.toml", &src).unwrap();
            assert_eq!(
                read_file(&disk, 1 << 20, "ingot/node.toml").unwrap(),
                content.as_bytes()
            );
        }
        assert_eq!(list_dir(&disk, 1 << 20, "ingot").unwrap(), ["node.toml"]);
    }
}
