//! Writes the read-only root as EROFS with `mkfs.erofs` (erofs-utils), with options that make the output a
//! function of the tree alone: a fixed UUID and timestamp, every file owned by root (the build runs without
//! root, so host ownership means nothing), and xattrs from the tree.

use std::path::Path;
use std::process::Command;

use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum ErofsError {
    #[error("{}", ingot_spec::host_tools::missing_message("mkfs.erofs"))]
    Missing,
    #[error("`mkfs.erofs` failed on {tree}: {stderr}")]
    Failed { tree: String, stderr: String },
}

/// Compression for the root. `None` is fastest to build; `Lz4hc` is ~35 % smaller and reads fast.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Lz4hc,
}

pub fn mkfs(
    tree: &Path,
    out: &Path,
    uuid: Uuid,
    epoch: u64,
    compression: Compression,
) -> Result<(), ErofsError> {
    let mut c = Command::new("mkfs.erofs");
    c.arg("--quiet")
        .arg(format!("-T{epoch}"))
        .arg(format!("-U{uuid}"))
        .arg("--all-root");
    if compression == Compression::Lz4hc {
        c.arg("-zlz4hc");
    }
    c.arg(out).arg(tree);
    crate::host_env::pin_tool_env(&mut c, epoch);
    let o = c.output().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ErofsError::Missing,
        _ => ErofsError::Failed {
            tree: tree.display().to_string(),
            stderr: e.to_string(),
        },
    })?;
    if !o.status.success() {
        return Err(ErofsError::Failed {
            tree: tree.display().to_string(),
            stderr: String::from_utf8_lossy(&o.stderr).trim().to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_tree_gives_same_bytes_and_passes_fsck() {
        if !ingot_testkit::require_tools(
            "same_tree_gives_same_bytes_and_passes_fsck",
            &["mkfs.erofs", "fsck.erofs"],
        ) {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let tree = d.path().join("tree");
        std::fs::create_dir_all(tree.join("sbin")).unwrap();
        std::fs::write(tree.join("sbin/init"), vec![1u8; 50_000]).unwrap();
        std::os::unix::fs::symlink("sbin/init", tree.join("init")).unwrap();
        let a = d.path().join("a.img");
        let b = d.path().join("b.img");
        mkfs(&tree, &a, Uuid::from_u128(5), 1_704_067_200, Compression::Lz4hc).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        std::fs::write(tree.join("sbin/init"), vec![1u8; 50_000]).unwrap(); // new mtime, same content
        mkfs(&tree, &b, Uuid::from_u128(5), 1_704_067_200, Compression::Lz4hc).unwrap();
        assert!(
            std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(),
            "EROFS images differ"
        );
        let fsck = Command::new("fsck.erofs").arg(&a).output().unwrap();
        assert!(fsck.status.success(), "{}", String::from_utf8_lossy(&fsck.stderr));
    }
}
