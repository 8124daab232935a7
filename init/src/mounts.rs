//! The file systems each stage mounts, as data, and one way to mount them.

use std::io;

use crate::sys::{self, Errno, Mount, MountFlags, Sys};

const NOSUID_NODEV_NOEXEC: MountFlags = MountFlags::NOSUID
    .union(MountFlags::NODEV)
    .union(MountFlags::NOEXEC);

/// The kernel's API file systems, in mount order (stage 1; stage 2 again when booted without an initramfs).
pub const API: [Mount<'static>; 3] = [
    Mount {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: MountFlags::NOSUID,
        data: Some("mode=0755"),
    },
    Mount {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    Mount {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
];

/// Stage 2's writable scratch space on the read-only root.
pub const RUNTIME: [Mount<'static>; 2] = [
    Mount {
        source: "tmpfs",
        target: "/run",
        fstype: "tmpfs",
        flags: MountFlags::NOSUID.union(MountFlags::NODEV),
        data: Some("mode=0755"),
    },
    Mount {
        source: "tmpfs",
        target: "/tmp",
        fstype: "tmpfs",
        flags: MountFlags::NOSUID.union(MountFlags::NODEV),
        data: Some("mode=1777"),
    },
];

/// What containers and their runtimes expect besides `/run` and `/tmp`: pseudo terminals, POSIX shared
/// memory, the unified cgroup hierarchy and the BPF file system (pinned programs survive their loader, as
/// Cilium needs). A node whose kernel lacks one still boots: these are mounted with [`mount_best_effort`].
pub const NODE: [Mount<'static>; 4] = [
    Mount {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: MountFlags::NOSUID.union(MountFlags::NOEXEC),
        data: Some("mode=0620,ptmxmode=0666"),
    },
    Mount {
        source: "tmpfs",
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: Some("mode=1777"),
    },
    Mount {
        source: "cgroup2",
        target: "/sys/fs/cgroup",
        fstype: "cgroup2",
        flags: NOSUID_NODEV_NOEXEC,
        data: Some("nsdelegate,memory_recursiveprot"),
    },
    Mount {
        source: "bpf",
        target: "/sys/fs/bpf",
        fstype: "bpf",
        flags: NOSUID_NODEV_NOEXEC,
        data: Some("mode=0700"),
    },
];

/// Like [`mount_all`], but a failure is a warning naming the mount, and the rest are still tried.
pub fn mount_best_effort(sys: &dyn Sys, mounts: &[Mount<'static>]) {
    for m in mounts {
        if let Err(e) = mount_all(sys, std::slice::from_ref(m)) {
            crate::warn(sys, &format!("{e}: {}, ignoring", e.source));
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("mounting {fstype} on {target}")]
pub struct Error {
    pub fstype: &'static str,
    pub target: &'static str,
    #[source]
    pub source: io::Error,
}

/// Mounts each entry in order, creating its mount point when missing (which fails on a read-only root,
/// where the builder must have created it). `EBUSY` means the kernel or an earlier stage already mounted
/// that file system there, which is fine.
pub fn mount_all(sys: &dyn Sys, mounts: &[Mount<'static>]) -> Result<(), Error> {
    for m in mounts {
        let err = |source| Error {
            fstype: m.fstype,
            target: m.target,
            source,
        };
        if !sys.exists(std::path::Path::new(m.target)) {
            sys.mkdir(m.target).map_err(err)?;
        }
        match sys.mount(m) {
            Ok(()) => {}
            Err(e) if sys::is_errno(&e, Errno::BUSY) => {}
            Err(e) => return Err(err(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::sys::fake::FakeSys;

    #[test]
    fn mounts_in_order_creating_missing_mount_points() {
        let sys = FakeSys::new();
        sys.write("/proc/.keep", "");
        mount_all(&sys, &API).unwrap();
        assert_eq!(
            sys.calls(),
            [
                "mkdir /dev",
                "mount devtmpfs /dev devtmpfs nosuid mode=0755",
                "mount proc /proc proc nodev,noexec,nosuid -",
                "mkdir /sys",
                "mount sysfs /sys sysfs nodev,noexec,nosuid -",
            ]
        );
    }

    #[test]
    fn already_mounted_is_fine_other_errors_name_the_mount() {
        let sys = FakeSys::new();
        sys.fail("mount devtmpfs", Errno::BUSY);
        sys.fail("mount proc", Errno::NODEV);
        let err = mount_all(&sys, &API).unwrap_err();
        assert_eq!(err.to_string(), "mounting proc on /proc");
        assert_eq!(sys.calls_matching(&["mount"]).len(), 2);
    }
}
