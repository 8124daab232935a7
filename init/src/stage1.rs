//! Stage 1, in the initramfs: API file systems, console, modules, find the boot disk, map root-a through
//! dm-verity with the command line's `roothash=` ([`verity`]), mount that read-only on [`NEW_ROOT`],
//! `switch_root`, exec stage 2.
//!
//! The root is never mounted unverified: without `roothash=`, with a broken hash partition or a table the
//! kernel refuses, stage 1 prints `ingot: verity: <what was expected>` and fails.
//!
//! Not yet: slot b.

use std::convert::Infallible;
use std::io;
use std::time::Duration;

use ingot_spec::marker::{PHASE_ROOT, PHASE_STAGE1, PREFIX};
use ingot_spec::partition::ROOT_FS_TYPE;

use crate::block::{self, BootDisk};
use crate::options::BootOptions;
use crate::sys::{self, Mount, MountFlags, Sys};
use crate::{efi, modules, mounts, verity};

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
    /// Details are on the `ingot: verity:` line printed before.
    #[error(
        "refusing to boot: the root could not be set up through dm-verity, and it is never mounted unverified"
    )]
    Verity(verity::Error),
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

    let verified = match verity::open_root(sys, &root) {
        Ok(v) => v,
        Err(e) => {
            sys.console(&format!("{PREFIX}{}{}", verity::LINE, crate::failure::chain(&e)));
            return Err(Error::Verity(e));
        }
    };
    sys.console(&format!("{PREFIX}verity root {}", verified.summary));

    let mount_root = Mount {
        source: &verified.device,
        target: NEW_ROOT,
        fstype: ROOT_FS_TYPE,
        flags: MountFlags::RDONLY,
        data: None,
    };
    let mounted = sys.mkdir(NEW_ROOT).and_then(|()| sys.mount(&mount_root));
    if let Err(source) = mounted {
        let kernel = match verity::reported_corruption(sys) {
            Ok(Some(report)) => format!("the kernel reported: {report:?}"),
            Ok(None) => "the kernel reported no verity corruption".to_owned(),
            Err(e) => format!("reading /dev/kmsg: {e}"),
        };
        sys.console(&format!(
            "{PREFIX}{}mounting {} on {NEW_ROOT}: {source}; expected {ROOT_FS_TYPE} on the verified root ({kernel})",
            verity::LINE,
            verified.device
        ));
        verity::remove(sys);
        return Err(Error::MountRoot {
            device: verified.device,
            source,
        });
    }
    crate::phase(sys, PHASE_ROOT);

    let err = switch_root(sys, NEW_ROOT);
    if let Err(Error::Exec(_)) = &err {
        verity::explain_exec_failure(sys, NEXT_INIT);
    }
    err
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
    use ingot_spec::partition::Role;
    use ingot_spec::verity::Superblock;

    const ROOT_HASH: &str = "4f3c2b1a00ffee99887766554433221100112233445566778899aabbccddeeff";

    fn initramfs(sys: &FakeSys) {
        initramfs_with(
            sys,
            &format!("console=ttyS0 roothash={ROOT_HASH} ingot.reboot_delay=5\n"),
        );
    }

    fn initramfs_with(sys: &FakeSys, cmdline: &str) {
        sys.write(INITRD_RELEASE, "");
        sys.write("/proc/cmdline", cmdline);
        sys.write(
            modules::LIST_PATH,
            "kernel/virtio_ring.ko\nkernel/virtio.ko\nkernel/virtio_blk.ko\nkernel/erofs.ko\n",
        );
    }

    fn superblock() -> Superblock {
        Superblock {
            uuid: [3; 16],
            data_block_size: 4096,
            hash_block_size: 4096,
            data_blocks: 200,
            salt: vec![0xab; 32],
        }
    }

    /// What the kernel shows of root-a (`254:<first>`, 2048 sectors) and root-a-verity (`254:<first + 1>`,
    /// holding `hash`) of `disk`.
    fn verity_partitions(sys: &FakeSys, disk: &str, first: u32, hash: &[u8]) {
        sys.write(&format!("/sys/class/block/{disk}2/dev"), format!("254:{first}\n"));
        sys.write(&format!("/sys/class/block/{disk}2/size"), "2048\n");
        sys.write(
            &format!("/sys/class/block/{disk}3/dev"),
            format!("254:{}\n", first + 1),
        );
        sys.write(&format!("/sys/class/block/{disk}3/size"), "2048\n");
        sys.write(&format!("/dev/{disk}3"), hash);
    }

    fn hash_partition(sb: &Superblock) -> Vec<u8> {
        let mut block = sb.to_bytes().unwrap().to_vec();
        block.resize(4096, 0);
        block
    }

    /// A node with one ingot disk `vda` whose root-a-verity holds `hash`.
    fn one_disk(hash: &[u8]) -> FakeSys {
        let sys = FakeSys::new();
        initramfs(&sys);
        add_disk(
            &sys.host("/"),
            "vda",
            &gpt_image(&ingot_layout(0x10)),
            &[1, 2, 3, 4, 5, 6],
            |n| format!("vda{n}"),
        );
        verity_partitions(&sys, "vda", 2, hash);
        sys
    }

    /// Runs stage 1 and the failure policy; checks the root was never mounted, neither raw nor verified,
    /// and that the node reboots after the delay. Returns the `ingot: verity:` lines.
    fn fails_closed(sys: &FakeSys) -> Vec<String> {
        let mut opts = BootOptions::default();
        let err = run(sys, &mut opts).unwrap_err();
        failure::after_error(sys, &opts, &err);
        assert!(
            sys.calls_matching(&["mount /dev/vda", "mount /dev/dm-", "exec"])
                .is_empty(),
            "{:#?}",
            sys.calls()
        );
        assert_eq!(
            sys.calls_matching(&["sleep 5s", "reboot"]),
            ["sleep 5s", "reboot reboot"]
        );
        let console = sys.console_lines();
        assert!(
            console.iter().any(|l| l.starts_with("ingot: error ")),
            "{console:#?}"
        );
        console
            .into_iter()
            .filter(|l| l.starts_with("ingot: verity: "))
            .collect()
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
        "dm-",
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
        verity_partitions(&sys, "vda", 2, b"");
        verity_partitions(&sys, "vdb", 18, &hash_partition(&superblock()));
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
                "dm-create root",
                &format!(
                    "dm-load root ro 0 1600 verity 1 254:18 254:19 4096 4096 200 1 sha256 {ROOT_HASH} {}",
                    "ab".repeat(32)
                ),
                "dm-resume root",
                "mkdir /sysroot",
                "mount /dev/dm-0 /sysroot erofs rdonly -",
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
        assert!(
            console.contains(
                &"ingot: verity root 4f3c2b1a00ff… over /dev/vdb2 (200 blocks, salt 32 bytes)".to_owned()
            ),
            "{console:?}"
        );
        // The fake's exec fails: stage 1 says whether corruption explains it.
        assert_eq!(
            console.last().unwrap(),
            "ingot: verity: the kernel reported no corruption of the root"
        );
    }

    #[test]
    fn without_the_efi_variable_falls_back_and_says_so() {
        let sys = one_disk(&hash_partition(&superblock()));
        let err = run(&sys, &mut BootOptions::default()).unwrap_err();
        assert!(matches!(err, Error::Exec(_)), "{err}");
        assert!(sys.calls_matching(&["mount efivarfs"]).is_empty());
        assert!(
            sys.calls()
                .contains(&"mount /dev/dm-0 /sysroot erofs rdonly -".to_owned())
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
        let sys = one_disk(&hash_partition(&superblock()));
        sys.fail("mount /dev/dm-0", Errno::NODEV);
        let mut opts = BootOptions::default();
        let err = run(&sys, &mut opts).unwrap_err();
        failure::after_error(&sys, &opts, &err);
        let console = sys.console_lines();
        assert!(
            console.contains(
                &"ingot: error mounting /dev/dm-0 on /sysroot as erofs: No such device (os error 19)"
                    .to_owned()
            ),
            "{console:?}"
        );
        assert!(
            console.contains(
                &"ingot: verity: mounting /dev/dm-0 on /sysroot: No such device (os error 19); expected erofs on the verified root (the kernel reported no verity corruption)"
                    .to_owned()
            ),
            "{console:?}"
        );
        assert_eq!(
            sys.calls_matching(&["sleep 5s", "reboot", "exec", "move", "dm-remove"]),
            ["dm-remove root", "sleep 5s", "reboot reboot"]
        );
    }

    #[test]
    fn a_mount_failing_on_a_corrupted_block_quotes_the_kernel() {
        let sys = one_disk(&hash_partition(&superblock()));
        sys.fail("mount /dev/dm-0", Errno::IO);
        sys.kmsg("3,900,2100000,-;device-mapper: verity: 254:2: data block 0 is corrupted");
        let mut opts = BootOptions::default();
        let err = run(&sys, &mut opts).unwrap_err();
        assert!(matches!(err, Error::MountRoot { .. }), "{err}");
        let line = sys
            .console_lines()
            .into_iter()
            .find(|l| l.starts_with("ingot: verity: "))
            .unwrap();
        assert!(
            line.ends_with(
                r#"(the kernel reported: "device-mapper: verity: 254:2: data block 0 is corrupted")"#
            ),
            "{line}"
        );
    }

    #[test]
    fn without_roothash_the_root_is_not_mounted() {
        let sys = one_disk(&hash_partition(&superblock()));
        initramfs_with(&sys, "console=ttyS0 ingot.reboot_delay=5\n");
        assert_eq!(
            fails_closed(&sys),
            [
                "ingot: verity: the kernel command line has no roothash= (expected roothash=<64 lowercase hex digits>, the root's dm-verity root hash)"
            ]
        );
        assert!(sys.calls_matching(&["dm-"]).is_empty());
    }

    #[test]
    fn a_malformed_roothash_is_refused() {
        let sys = one_disk(&hash_partition(&superblock()));
        let upper = ROOT_HASH.to_uppercase();
        initramfs_with(&sys, &format!("roothash={upper} ingot.reboot_delay=5"));
        assert_eq!(
            fails_closed(&sys),
            [format!(
                "ingot: verity: roothash={upper:?} is not a root hash: expected 64 lowercase hex digits"
            )]
        );
        assert!(sys.calls_matching(&["dm-"]).is_empty());
    }

    #[test]
    fn a_disk_without_root_a_verity_is_refused() {
        let sys = FakeSys::new();
        initramfs(&sys);
        let mut layout = ingot_layout(0x10);
        layout.retain(|(_, r, _)| *r != Role::RootAVerity);
        add_disk(
            &sys.host("/"),
            "vda",
            &gpt_image(&layout),
            &[1, 2, 4, 5, 6],
            |n| format!("vda{n}"),
        );
        let lines = fails_closed(&sys);
        assert_eq!(lines.len(), 1);
        assert!(
            lines[0].starts_with(
                "ingot: verity: disk vda has no partition of type 2c7357ed-ebd2-46d9-aec1-23d437ec2bf5 named \"root-a-verity\" (partitions: 1 \"esp\""
            ),
            "{lines:?}"
        );
    }

    #[test]
    fn a_missing_or_garbled_superblock_is_refused_naming_the_field() {
        let sys = one_disk(&[0u8; 4096]);
        assert_eq!(
            fails_closed(&sys),
            [
                r#"ingot: verity: /dev/vda3 does not start with the verity superblock ingot images have: magic: expected "verity\x00\x00", found "\x00\x00\x00\x00\x00\x00\x00\x00""#
            ]
        );

        let mut sha1 = hash_partition(&superblock());
        sha1[32..38].copy_from_slice(b"sha1\0\0");
        let sys = one_disk(&sha1);
        assert_eq!(
            fails_closed(&sys),
            [
                r#"ingot: verity: /dev/vda3 does not start with the verity superblock ingot images have: algorithm: expected "sha256", found "sha1""#
            ]
        );

        let sys = one_disk(b"verity");
        assert_eq!(
            fails_closed(&sys),
            [
                "ingot: verity: /dev/vda3 does not start with the verity superblock ingot images have: the superblock is 6 bytes, expected 512"
            ]
        );
        assert!(sys.calls_matching(&["dm-"]).is_empty());
    }

    #[test]
    fn a_superblock_covering_more_than_root_a_is_refused() {
        let sys = one_disk(&hash_partition(&Superblock {
            data_blocks: 257,
            ..superblock()
        }));
        assert_eq!(
            fails_closed(&sys),
            ["ingot: verity: the verity superblock covers 2056 sectors of /dev/vda2, which holds only 2048"]
        );
    }

    #[test]
    fn without_the_device_mapper_nothing_is_left_to_remove() {
        let sys = one_disk(&hash_partition(&superblock()));
        sys.fail("dm-create", Errno::NOENT);
        assert_eq!(
            fails_closed(&sys),
            [
                "ingot: verity: creating the device-mapper device \"root\" through /dev/mapper/control (loaded by dm_mod): No such file or directory (os error 2)"
            ]
        );
        assert!(sys.calls_matching(&["dm-remove"]).is_empty());
    }

    #[test]
    fn a_refused_table_removes_the_device_and_shows_the_table() {
        let sys = one_disk(&hash_partition(&superblock()));
        sys.fail("dm-load", Errno::INVAL);
        let lines = fails_closed(&sys);
        assert_eq!(
            lines,
            [format!(
                "ingot: verity: loading the table `0 1600 verity 1 254:2 254:3 4096 4096 200 1 sha256 {ROOT_HASH} {}` into \"root\" (the kernel needs dm_verity and must accept the table): Invalid argument (os error 22)",
                "ab".repeat(32)
            )]
        );
        assert_eq!(
            sys.calls_matching(&["dm-"])
                .iter()
                .map(|c| c.split(' ').next().unwrap())
                .collect::<Vec<_>>(),
            ["dm-create", "dm-load", "dm-remove"]
        );
    }

    #[test]
    fn a_failed_resume_removes_the_device() {
        let sys = one_disk(&hash_partition(&superblock()));
        sys.fail("dm-resume", Errno::NXIO);
        let lines = fails_closed(&sys);
        assert!(
            lines[0].starts_with("ingot: verity: resuming \"root\" with its verity table: "),
            "{lines:?}"
        );
        assert_eq!(sys.calls_matching(&["dm-remove"]), ["dm-remove root"]);
    }

    #[test]
    fn a_device_node_that_never_appears_times_out_and_removes_the_device() {
        let sys = one_disk(&hash_partition(&superblock()));
        sys.dm_nodes_appear.set(false);
        let start = sys.now();
        let lines = fails_closed(&sys);
        assert_eq!(
            lines,
            ["ingot: verity: /dev/dm-0 did not appear within 10 s of resuming \"root\""]
        );
        assert!(sys.now() - start >= verity::NODE_WAIT);
        assert_eq!(sys.calls_matching(&["dm-remove"]), ["dm-remove root"]);
    }

    #[test]
    fn a_failed_exec_says_when_the_kernel_reported_corruption() {
        let sys = one_disk(&hash_partition(&superblock()));
        sys.kmsg("6,1,100,-;Linux version 6.1.0-test");
        sys.kmsg("3,812,5123456,-;device-mapper: verity: 254:2: data block 1234 is corrupted");
        let err = run(&sys, &mut BootOptions::default()).unwrap_err();
        assert!(matches!(err, Error::Exec(_)), "{err}");
        assert_eq!(
            sys.console_lines().last().unwrap(),
            r#"ingot: verity: the root is corrupted (kernel: "device-mapper: verity: 254:2: data block 1234 is corrupted"), which is why /sbin/init could not be executed"#
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
