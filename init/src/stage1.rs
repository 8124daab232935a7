//! Stage 1, in the initramfs: API file systems, console, modules, find the boot disk, mount root-a
//! read-only on [`NEW_ROOT`], `switch_root`, exec stage 2.
//!
//! Not yet: dm-verity (`roothash=`), slot b, the `var` partition.

use std::convert::Infallible;
use std::io;
use std::time::Duration;

use ingot_spec::marker::{PHASE_ROOT, PHASE_STAGE1, PREFIX};
use ingot_spec::partition::ROOT_FS_TYPE;

use crate::block::{self, BootDisk};
use crate::options::BootOptions;
use crate::sys::{self, Mount, MountFlags, Sys};
use crate::{efi, modules, mounts};

/// Marks the initramfs (UAPI `initrd-release`): its presence selects stage 1.
pub const INITRD_RELEASE: &str = "/etc/initrd-release";
/// Where the root is mounted before it becomes `/`.
pub const NEW_ROOT: &str = "/sysroot";
/// What stage 1 executes in the new root (this same binary, as stage 2).
pub const NEXT_INIT: &str = "/sbin/init";
/// How long to wait for the boot disk.
pub const ROOT_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Mount(#[from] mounts::Error),
    #[error(transparent)]
    Modules(#[from] modules::Error),
    #[error("asking the boot loader which disk we booted from")]
    Efi(#[from] efi::Error),
    #[error("finding the root partition")]
    Root(#[from] block::Error),
    #[error("mounting {device} on {NEW_ROOT} as {ROOT_FS_TYPE}")]
    MountRoot {
        device: String,
        #[source]
        source: io::Error,
    },
    #[error("switching root: {step}")]
    SwitchRoot {
        step: String,
        #[source]
        source: io::Error,
    },
    #[error("switching root: {NEW_ROOT} is on the same device as / (the root is not mounted there)")]
    NewRootNotMounted,
    #[error("executing {NEXT_INIT} in the new root")]
    Exec(#[source] io::Error),
}

fn step(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let step = what.into();
    move |source| Error::SwitchRoot { step, source }
}

/// Runs stage 1; returns only on failure. `opts` is filled from the command line once `/proc` is there,
/// so the failure policy sees it.
pub fn run(sys: &dyn Sys, opts: &mut BootOptions) -> Result<Infallible, Error> {
    crate::phase(sys, PHASE_STAGE1);
    mounts::mount_all(sys, &mounts::API)?;
    if let Err(e) = sys.setup_console() {
        crate::warn(
            sys,
            &format!("opening /dev/console: {e}, keeping the kernel's descriptors, ignoring"),
        );
    }
    *opts = BootOptions::load(sys);
    sys::set_panic_policy(opts.debug, opts.reboot_delay);

    modules::load_all(sys, &opts.extra_modules)?;

    let wanted = match efi::boot_partition(sys)? {
        Some(part) => BootDisk::WithPartition(part),
        None => {
            sys.console(&format!(
                "{PREFIX}no LoaderDevicePartUUID from the boot loader, using the single disk with an ESP and a root partition"
            ));
            BootDisk::WithEspAndRoot
        }
    };
    match efi::secure_boot(sys) {
        Ok(Some(on)) => sys.console(&format!(
            "{PREFIX}secure boot {}",
            if on { "enabled" } else { "disabled" }
        )),
        Ok(None) => {}
        Err(e) => crate::warn(sys, &format!("reading {}: {e}, ignoring", efi::SECURE_BOOT)),
    }
    let root = block::find_root(sys, wanted, ROOT_WAIT)?;
    sys.console(&format!(
        "{PREFIX}root {} (partition {} {:?} {} on {})",
        root.device, root.partition.number, root.partition.name, root.partition.part_guid, root.disk
    ));

    let mount_root = Mount {
        source: &root.device,
        target: NEW_ROOT,
        fstype: ROOT_FS_TYPE,
        flags: MountFlags::RDONLY,
        data: None,
    };
    let mount_err = |source| Error::MountRoot {
        device: root.device.clone(),
        source,
    };
    sys.mkdir(NEW_ROOT).map_err(mount_err)?;
    sys.mount(&mount_root).map_err(mount_err)?;
    crate::phase(sys, PHASE_ROOT);

    switch_root(sys, NEW_ROOT)
}

/// What util-linux `switch_root` does: delete the initramfs (files on its own device only), move the API
/// mounts into the new root, make it `/`, and exec the next init there (keeping PID 1).
pub fn switch_root(sys: &dyn Sys, new_root: &str) -> Result<Infallible, Error> {
    let old_dev = sys.device_of("/").map_err(step("stat /"))?;
    let new_dev = sys
        .device_of(new_root)
        .map_err(step(format!("stat {new_root}")))?;
    if old_dev == new_dev {
        return Err(Error::NewRootNotMounted);
    }
    // Only an initramfs is ours to empty; anything else could be a real disk.
    if sys.is_ram_fs("/").map_err(step("statfs /"))? {
        match sys.remove_same_device("/") {
            Ok(0) => {}
            Ok(n) => crate::warn(
                sys,
                &format!("{n} initramfs entries could not be deleted, ignoring"),
            ),
            Err(e) => crate::warn(sys, &format!("deleting the initramfs: {e}, ignoring")),
        }
    } else {
        crate::warn(sys, "/ is not a ramfs or tmpfs, not deleting its contents");
    }
    for m in &mounts::API {
        let to = format!("{new_root}{}", m.target);
        sys.move_mount(m.target, &to)
            .map_err(step(format!("moving {} to {to}", m.target)))?;
    }
    sys.chdir(new_root).map_err(step(format!("chdir {new_root}")))?;
    sys.move_mount(new_root, "/")
        .map_err(step(format!("moving {new_root} to /")))?;
    sys.chroot(".").map_err(step("chroot ."))?;
    sys.chdir("/").map_err(step("chdir /"))?;
    Err(Error::Exec(sys.exec(NEXT_INIT)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::block::testing::{add_disk, gpt_image, ingot_layout};
    use crate::efi::LOADER_DEVICE_PART_UUID;
    use crate::failure;
    use crate::sys::Errno;
    use crate::sys::fake::FakeSys;

    fn initramfs(sys: &FakeSys) {
        sys.write(INITRD_RELEASE, "");
        sys.write("/proc/cmdline", "console=ttyS0 ingot.reboot_delay=5\n");
        sys.write(
            modules::LIST_PATH,
            "kernel/virtio_ring.ko\nkernel/virtio.ko\nkernel/virtio_blk.ko\nkernel/erofs.ko\n",
        );
    }

    fn efi_var(part: ingot_spec::Uuid) -> Vec<u8> {
        let mut v = vec![6, 0, 0, 0];
        for u in part.to_string().to_uppercase().encode_utf16().chain([0]) {
            v.extend_from_slice(&u.to_le_bytes());
        }
        v
    }

    const SEQUENCE: &[&str] = &[
        "mount",
        "load",
        "move",
        "chdir",
        "chroot",
        "exec",
        "remove",
        "mkdir /sysroot",
    ];

    #[test]
    fn boots_from_the_disk_systemd_boot_names() {
        let sys = FakeSys::new();
        initramfs(&sys);
        let root = sys.host("/");
        add_disk(
            &root,
            "vda",
            &gpt_image(&ingot_layout(0x10)),
            &[1, 2, 3, 4, 5, 6],
            |n| format!("vda{n}"),
        );
        add_disk(
            &root,
            "vdb",
            &gpt_image(&ingot_layout(0x20)),
            &[1, 2, 3, 4, 5, 6],
            |n| format!("vdb{n}"),
        );
        sys.write(
            LOADER_DEVICE_PART_UUID,
            efi_var(ingot_spec::Uuid::from_u128(0x21)),
        );

        let mut opts = BootOptions::default();
        let err = run(&sys, &mut opts).unwrap_err();
        assert!(matches!(err, Error::Exec(_)), "{err}");
        assert_eq!(opts.reboot_delay, Duration::from_secs(5));
        assert_eq!(
            sys.calls_matching(SEQUENCE),
            [
                "mount devtmpfs /dev devtmpfs nosuid mode=0755",
                "mount proc /proc proc nodev,noexec,nosuid -",
                "mount sysfs /sys sysfs nodev,noexec,nosuid -",
                "load /lib/modules/6.1.0-test/kernel/virtio_ring.ko",
                "load /lib/modules/6.1.0-test/kernel/virtio.ko",
                "load /lib/modules/6.1.0-test/kernel/virtio_blk.ko",
                "load /lib/modules/6.1.0-test/kernel/erofs.ko",
                "mount efivarfs /sys/firmware/efi/efivars efivarfs nodev,noexec,nosuid -",
                "mkdir /sysroot",
                "mount /dev/vdb2 /sysroot erofs rdonly -",
                "remove-same-device /",
                "move /dev /sysroot/dev",
                "move /proc /sysroot/proc",
                "move /sys /sysroot/sys",
                "chdir /sysroot",
                "move /sysroot /",
                "chroot .",
                "chdir /",
                "exec /sbin/init",
            ]
        );
        let console = sys.console_lines();
        assert_eq!(console[0], "ingot: phase=stage1 t=1500");
        assert!(
            console.iter().any(|l| l.starts_with("ingot: phase=root t=")),
            "{console:?}"
        );
        assert!(
            console
                .iter()
                .any(|l| l.starts_with("ingot: root /dev/vdb2 (partition 2 \"root-a\"")),
            "{console:?}"
        );
    }

    #[test]
    fn without_the_efi_variable_falls_back_and_says_so() {
        let sys = FakeSys::new();
        initramfs(&sys);
        add_disk(
            &sys.host("/"),
            "vda",
            &gpt_image(&ingot_layout(0x10)),
            &[1, 2, 3, 4, 5, 6],
            |n| format!("vda{n}"),
        );
        let err = run(&sys, &mut BootOptions::default()).unwrap_err();
        assert!(matches!(err, Error::Exec(_)), "{err}");
        assert!(sys.calls_matching(&["mount efivarfs"]).is_empty());
        assert!(
            sys.calls()
                .contains(&"mount /dev/vda2 /sysroot erofs rdonly -".to_owned())
        );
        assert!(
            sys.console_lines()
                .iter()
                .any(|l| l.contains("no LoaderDevicePartUUID"))
        );
    }

    #[test]
    fn switch_root_keeps_a_non_initramfs_root_and_refuses_an_unmounted_new_root() {
        let sys = FakeSys::new();
        sys.ram_root.set(false);
        let _ = switch_root(&sys, NEW_ROOT);
        assert!(sys.calls_matching(&["remove"]).is_empty());
        assert!(sys.calls_matching(&["exec"]).len() == 1);

        let sys = FakeSys::new();
        sys.new_root_device.set(1);
        assert!(matches!(
            switch_root(&sys, NEW_ROOT),
            Err(Error::NewRootNotMounted)
        ));
        assert!(sys.calls_matching(&["remove", "move"]).is_empty());
    }

    #[test]
    fn a_failed_root_mount_reports_the_chain_and_reboots_after_the_delay() {
        let sys = FakeSys::new();
        initramfs(&sys);
        add_disk(
            &sys.host("/"),
            "vda",
            &gpt_image(&ingot_layout(0x10)),
            &[1, 2, 3, 4, 5, 6],
            |n| format!("vda{n}"),
        );
        sys.fail("mount /dev/vda2", Errno::NODEV);
        let mut opts = BootOptions::default();
        let err = run(&sys, &mut opts).unwrap_err();
        failure::after_error(&sys, &opts, &err);
        let console = sys.console_lines();
        assert!(
            console.contains(
                &"ingot: error mounting /dev/vda2 on /sysroot as erofs: No such device (os error 19)"
                    .to_owned()
            ),
            "{console:?}"
        );
        assert_eq!(
            sys.calls_matching(&["sleep 5s", "reboot", "exec", "move"]),
            ["sleep 5s", "reboot reboot"]
        );
    }

    #[test]
    fn a_missing_disk_times_out_after_the_root_wait() {
        let sys = FakeSys::new();
        initramfs(&sys);
        sys.write("/sys/class/block/.keep", "");
        let start = sys.now();
        let err = run(&sys, &mut BootOptions::default()).unwrap_err();
        assert!(sys.now() - start >= ROOT_WAIT);
        assert_eq!(
            failure::chain(&err),
            "finding the root partition: found no disk holding both an ESP and a root partition within 30 s (disks seen: none); check that the storage driver is in the initramfs module list"
        );
    }
}
