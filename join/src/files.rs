//! Files that hold secrets: written whole and private, and wiped rather than just unlinked.
//!
//! [`write_private`] writes a temporary file (mode 0600, created exclusively) in the target's directory,
//! fsyncs it, renames it over the target and fsyncs the directory: a reader sees the old file or the whole
//! new one, never a part, and never a moment where the content is readable by others.
//!
//! [`wipe`] overwrites the file's bytes with zeros in place, fsyncs, unlinks and fsyncs the directory. On
//! ext4 (the node's `var`) an in-place overwrite lands on the same blocks, so the bootstrap token does not
//! linger in freed blocks once the kubelet has its own certificate. It cannot reach copies outside the
//! file system's view: data journalled under `data=journal`, or blocks a flash controller remapped.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("could not {action} {}", .path.display())]
pub struct FileError {
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

fn err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> FileError + 'a {
    move |source| FileError {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Replaces `path` with `bytes`, readable and writable by the owner only.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    write_atomic(path, bytes, 0o600)
}

/// Replaces `path` with `bytes` and exactly `mode`: a temporary file in the same directory, fsynced, renamed
/// over `path`, then the directory fsynced. A crash leaves the old file or the new one.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), FileError> {
    let dir = parent(path);
    let name = path
        .file_name()
        .ok_or_else(|| err("name a file at", path)(io::ErrorKind::InvalidInput.into()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = write_then_rename(&tmp, path, bytes, mode);
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    sync_dir(dir)
}

fn write_then_rename(tmp: &Path, path: &Path, bytes: &[u8], mode: u32) -> Result<(), FileError> {
    // A temporary file left by an earlier crash of this same process id would block create_new.
    let _ = fs::remove_file(tmp);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(tmp)
        .map_err(err("create", tmp))?;
    // The umask can only take bits away; make the mode exact.
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(err("set the mode of", tmp))?;
    file.write_all(bytes).map_err(err("write", tmp))?;
    file.sync_all().map_err(err("fsync", tmp))?;
    drop(file);
    fs::rename(tmp, path).map_err(err("rename into place", path))
}

/// Overwrites `path` with zeros, fsyncs and unlinks it. A missing file is already wiped; a symbolic link
/// is removed without touching what it points to.
pub fn wipe(path: &Path) -> Result<(), FileError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(err("inspect", path)(e)),
    };
    if meta.file_type().is_file() {
        let mut file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(err("open for wiping", path))?;
        let len = file.metadata().map_err(err("inspect", path))?.len();
        let zeros = [0u8; 8192];
        let mut left = len;
        while left > 0 {
            let n = usize::try_from(left.min(zeros.len() as u64)).unwrap_or(zeros.len());
            file.write_all(&zeros[..n]).map_err(err("overwrite", path))?;
            left -= n as u64;
        }
        file.sync_all().map_err(err("fsync", path))?;
    }
    fs::remove_file(path).map_err(err("remove", path))?;
    sync_dir(parent(path))
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn sync_dir(dir: &Path) -> Result<(), FileError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err("fsync the directory", dir))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn writes_whole_file_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bootstrap-kubelet.conf");
        fs::write(&path, b"old content, world readable").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&path, b"new").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o7777, 0o600);
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["bootstrap-kubelet.conf"], "no temporary file is left");
    }

    #[test]
    fn other_modes_are_exact_whatever_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.crt");
        write_atomic(&path, b"pem", 0o644).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o7777, 0o644);
        write_atomic(&path, b"pem2", 0o640).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"pem2");
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o7777, 0o640);
    }

    #[test]
    fn write_into_missing_directory_fails_with_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing/file");
        let e = write_private(&path, b"x").unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
    }

    #[test]
    fn wipe_zeroes_the_blocks_before_unlinking() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        write_private(&path, &[b'S'; 20_000]).unwrap();
        // A second link keeps the inode alive, so the bytes left behind can be read after the unlink.
        let witness = dir.path().join("witness");
        fs::hard_link(&path, &witness).unwrap();
        wipe(&path).unwrap();
        assert!(!path.exists());
        let left = fs::read(&witness).unwrap();
        assert_eq!(left.len(), 20_000);
        assert!(left.iter().all(|b| *b == 0));
    }

    #[test]
    fn wipe_of_nothing_is_fine_and_symlinks_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        wipe(&dir.path().join("absent")).unwrap();
        let target = dir.path().join("target");
        fs::write(&target, b"keep").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        wipe(&link).unwrap();
        assert!(fs::symlink_metadata(&link).is_err());
        assert_eq!(fs::read(&target).unwrap(), b"keep");
    }
}
