//! Finding the boot disk and its root partition from sysfs and the disks' GPTs.
//!
//! Disks are the entries of `/sys/class/block` without a `partition` file; a disk's partitions are the
//! subdirectories of its sysfs directory that have one (it holds the partition number), so the device node
//! of partition `n` is `/dev/<that entry>` whatever the naming scheme (`vda2`, `nvme0n1p2`, `mmcblk0p2`).
//! Devices appear asynchronously after their drivers load, so [`find_root`] polls until a deadline.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ingot_spec::Uuid;
use ingot_spec::gpt::{self, Partition};
use ingot_spec::partition::{Role, TYPE_ESP, TYPE_ROOT_X86_64};

use crate::sys::Sys;

pub const SYS_CLASS_BLOCK: &str = "/sys/class/block";
/// How often [`find_root`] looks again.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Which disk we booted from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootDisk {
    /// The disk holding this partition (systemd-boot's `LoaderDevicePartUUID`).
    WithPartition(Uuid),
    /// No hint from the firmware: the single disk holding both an ESP and a root partition.
    WithEspAndRoot,
}

impl fmt::Display for BootDisk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BootDisk::WithPartition(u) => write!(f, "disk holding partition {u}"),
            BootDisk::WithEspAndRoot => write!(f, "disk holding both an ESP and a root partition"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("listing {SYS_CLASS_BLOCK}")]
    Sysfs(#[source] io::Error),
    #[error("found no {wanted} within {} s (disks seen: {seen}); check that the storage driver is in the initramfs module list", .waited.as_secs())]
    Timeout {
        wanted: BootDisk,
        waited: Duration,
        seen: String,
    },
    #[error("found more than one {wanted}: {disks}; detach all but one")]
    Ambiguous { wanted: BootDisk, disks: String },
    #[error("disk {disk} has no partition of type {TYPE_ROOT_X86_64} named {:?} (partitions: {found})", Role::RootA.label())]
    NoRoot { disk: String, found: String },
}

/// The root partition to mount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Root {
    /// Disk name in sysfs (`vda`).
    pub disk: String,
    pub partition: Partition,
    /// Device node (`/dev/vda2`).
    pub device: String,
}

/// One whole disk and what its GPT says, or why it could not be read.
struct Scanned {
    name: String,
    table: Result<Vec<Partition>, String>,
}

fn is_partition(sys: &dyn Sys, dir: &Path) -> bool {
    sys.exists(&dir.join("partition"))
}

/// Whole disks with a non-zero size, sorted by name.
pub fn disks(sys: &dyn Sys) -> io::Result<Vec<String>> {
    let base = Path::new(SYS_CLASS_BLOCK);
    let mut out = Vec::new();
    for name in sys.read_dir(base)? {
        let Some(name) = name.to_str().map(str::to_owned) else {
            continue;
        };
        let dir = base.join(&name);
        if is_partition(sys, &dir) {
            continue;
        }
        let size = sys
            .read(&dir.join("size"))
            .ok()
            .and_then(|b| String::from_utf8_lossy(&b).trim().parse::<u64>().ok())
            .unwrap_or(0);
        if size > 0 {
            out.push(name);
        }
    }
    Ok(out)
}

/// The sysfs name of partition `number` of `disk`, from the `partition` files of its subdirectories.
pub fn partition_device(sys: &dyn Sys, disk: &str, number: u32) -> io::Result<Option<String>> {
    let dir = PathBuf::from(SYS_CLASS_BLOCK).join(disk);
    for entry in sys.read_dir(&dir)? {
        let Some(entry) = entry.to_str() else { continue };
        let Ok(n) = sys.read(&dir.join(entry).join("partition")) else {
            continue;
        };
        if String::from_utf8_lossy(&n).trim().parse::<u32>().ok() == Some(number) {
            return Ok(Some(entry.to_owned()));
        }
    }
    Ok(None)
}

/// Reads the GPT of `/dev/<disk>` with the strict reader from `ingot_spec`.
pub fn read_gpt(sys: &dyn Sys, disk: &str) -> Result<Vec<Partition>, String> {
    let dev = PathBuf::from("/dev").join(disk);
    let start = sys
        .read_at(&dev, 0, 2 * gpt::SECTOR as usize)
        .map_err(|e| format!("reading: {e}"))?;
    let header = gpt::parse_header(&start).map_err(|e| e.to_string())?;
    let range = header.entries_byte_range();
    let len = usize::try_from(range.end - range.start).map_err(|e| e.to_string())?;
    let array = sys
        .read_at(&dev, range.start, len)
        .map_err(|e| format!("reading: {e}"))?;
    gpt::parse_entries(&header, &array).map_err(|e| e.to_string())
}

fn scan(sys: &dyn Sys) -> Result<Vec<Scanned>, Error> {
    Ok(disks(sys)
        .map_err(Error::Sysfs)?
        .into_iter()
        .map(|name| {
            let table = read_gpt(sys, &name);
            Scanned { name, table }
        })
        .collect())
}

fn matches(wanted: BootDisk, parts: &[Partition]) -> bool {
    match wanted {
        BootDisk::WithPartition(u) => parts.iter().any(|p| p.part_guid == u),
        BootDisk::WithEspAndRoot => {
            parts.iter().any(|p| p.type_guid == TYPE_ESP)
                && parts.iter().any(|p| p.type_guid == TYPE_ROOT_X86_64)
        }
    }
}

fn summary(scanned: &[Scanned]) -> String {
    if scanned.is_empty() {
        return "none".to_owned();
    }
    scanned
        .iter()
        .map(|s| match &s.table {
            Ok(p) => format!("{} ({} partitions)", s.name, p.len()),
            Err(e) => format!("{} ({e})", s.name),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Root-a on `parts`: type root (x86-64) and name `root-a`. (Slot b is chosen here once updates exist.)
pub fn pick_root(disk: &str, parts: &[Partition]) -> Result<Partition, Error> {
    find_role(parts, Role::RootA).ok_or_else(|| Error::NoRoot {
        disk: disk.to_owned(),
        found: describe(parts),
    })
}

/// The partition with `role`'s type GUID and label.
pub fn find_role(parts: &[Partition], role: Role) -> Option<Partition> {
    parts
        .iter()
        .find(|p| p.type_guid == role.type_guid() && p.name == role.label())
        .cloned()
}

/// `number "name" type, …` of every partition, for errors that say what was there instead.
pub fn describe(parts: &[Partition]) -> String {
    parts
        .iter()
        .map(|p| format!("{} {:?} {}", p.number, p.name, p.type_guid))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Waits up to `timeout` for the boot disk, picks root-a on it and waits for its device node.
pub fn find_root(sys: &dyn Sys, wanted: BootDisk, timeout: Duration) -> Result<Root, Error> {
    let start = sys.boottime();
    loop {
        let scanned = scan(sys)?;
        let found: Vec<(&str, &Vec<Partition>)> = scanned
            .iter()
            .filter_map(|s| s.table.as_ref().ok().map(|t| (s.name.as_str(), t)))
            .filter(|(_, t)| matches(wanted, t))
            .collect();
        match found.as_slice() {
            [] => {}
            [(disk, parts)] => {
                let partition = pick_root(disk, parts)?;
                let node = partition_device(sys, disk, partition.number).map_err(Error::Sysfs)?;
                if let Some(node) = node {
                    let device = format!("/dev/{node}");
                    if sys.exists(Path::new(&device)) {
                        return Ok(Root {
                            disk: (*disk).to_owned(),
                            partition,
                            device,
                        });
                    }
                }
                // The disk is there but its partition device is not yet: keep polling.
            }
            many => {
                return Err(Error::Ambiguous {
                    wanted,
                    disks: many.iter().map(|(d, _)| *d).collect::<Vec<_>>().join(", "),
                });
            }
        }
        let waited = sys.boottime().saturating_sub(start);
        if waited >= timeout {
            return Err(Error::Timeout {
                wanted,
                waited,
                seen: summary(&scanned),
            });
        }
        sys.sleep(POLL_INTERVAL);
    }
}

/// Test helpers: a GPT writer and fake sysfs trees, shared with the stage 1 tests.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub mod testing {
    use std::path::Path;

    use ingot_spec::Uuid;
    use ingot_spec::partition::Role;

    use crate::sys::fake::write_under;

    /// A disk image holding only a GPT with the given `(number, role, partition GUID)` entries.
    pub fn gpt_image(parts: &[(u32, Role, Uuid)]) -> Vec<u8> {
        let mut d = vec![0u8; 1024 + 128 * 128];
        for &(number, role, guid) in parts {
            let e = &mut d[1024 + 128 * (number as usize - 1)..][..128];
            e[0..16].copy_from_slice(&role.type_guid().to_bytes_le());
            e[16..32].copy_from_slice(&guid.to_bytes_le());
            let first = 2048 * u64::from(number);
            e[32..40].copy_from_slice(&first.to_le_bytes());
            e[40..48].copy_from_slice(&(first + 2047).to_le_bytes());
            for (i, u) in role.label().encode_utf16().enumerate() {
                e[56 + 2 * i..58 + 2 * i].copy_from_slice(&u.to_le_bytes());
            }
        }
        let array_crc = crc32fast::hash(&d[1024..]);
        let h = &mut d[512..1024];
        h[0..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[40..48].copy_from_slice(&34u64.to_le_bytes());
        h[48..56].copy_from_slice(&100_000u64.to_le_bytes());
        h[56..72].copy_from_slice(&Uuid::from_u128(0xd15c).to_bytes_le());
        h[72..80].copy_from_slice(&2u64.to_le_bytes());
        h[80..84].copy_from_slice(&128u32.to_le_bytes());
        h[84..88].copy_from_slice(&128u32.to_le_bytes());
        h[88..92].copy_from_slice(&array_crc.to_le_bytes());
        let crc = crc32fast::hash(&h[..92]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        d
    }

    /// Adds disk `name` to the fake tree: sysfs entries (partition subdirectories named by `part_name`) and
    /// `/dev` nodes holding `image`.
    pub fn add_disk(root: &Path, name: &str, image: &[u8], parts: &[u32], part_name: impl Fn(u32) -> String) {
        write_under(root, &format!("/sys/class/block/{name}/size"), b"4194304\n");
        write_under(root, &format!("/dev/{name}"), image);
        for &n in parts {
            let p = part_name(n);
            write_under(
                root,
                &format!("/sys/class/block/{name}/{p}/partition"),
                format!("{n}\n").as_bytes(),
            );
            write_under(
                root,
                &format!("/sys/class/block/{p}/partition"),
                format!("{n}\n").as_bytes(),
            );
            write_under(root, &format!("/dev/{p}"), b"");
        }
    }

    /// The ingot layout: ESP, root-a, root-a-verity, root-b, root-b-verity, var; GUIDs `base + number`.
    pub fn ingot_layout(base: u128) -> Vec<(u32, Role, Uuid)> {
        Role::ALL
            .into_iter()
            .map(|r| (r.number(), r, Uuid::from_u128(base + u128::from(r.number()))))
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::testing::*;
    use super::*;
    use crate::sys::fake::{FakeSys, write_under};

    const ALL: [u32; 6] = [1, 2, 3, 4, 5, 6];

    #[test]
    fn finds_root_a_on_the_disk_holding_the_boot_partition() {
        let sys = FakeSys::new();
        // A second ingot disk with other GUIDs, a disk without GPT, an empty CD drive.
        add_disk(
            sys.host("/").as_path(),
            "sda",
            &gpt_image(&ingot_layout(0x100)),
            &ALL,
            |n| format!("sda{n}"),
        );
        add_disk(sys.host("/").as_path(), "sdb", &[0u8; 4096], &[], |n| {
            format!("sdb{n}")
        });
        sys.write("/sys/class/block/sr0/size", "0\n");
        add_disk(
            sys.host("/").as_path(),
            "nvme0n1",
            &gpt_image(&ingot_layout(0x200)),
            &ALL,
            |n| format!("nvme0n1p{n}"),
        );
        let esp = Uuid::from_u128(0x200 + 1);
        let root = find_root(&sys, BootDisk::WithPartition(esp), Duration::from_secs(30)).unwrap();
        assert_eq!(root.disk, "nvme0n1");
        assert_eq!(root.device, "/dev/nvme0n1p2");
        assert_eq!(root.partition.number, 2);
        assert_eq!(root.partition.name, "root-a");
    }

    #[test]
    fn device_name_comes_from_sysfs_not_from_the_disk_name() {
        let sys = FakeSys::new();
        // Unusual naming: trust the `partition` files.
        add_disk(
            sys.host("/").as_path(),
            "vda",
            &gpt_image(&ingot_layout(0)),
            &ALL,
            |n| format!("weird-{}", 7 - n),
        );
        let root = find_root(&sys, BootDisk::WithEspAndRoot, Duration::from_secs(1)).unwrap();
        assert_eq!(root.device, "/dev/weird-5");
    }

    #[test]
    fn waits_for_the_disk_to_appear() {
        let sys = FakeSys::new();
        sys.write("/sys/class/block/.keep", "");
        let start = sys.now();
        sys.at(start + Duration::from_millis(2050), |root| {
            add_disk(root, "vda", &gpt_image(&ingot_layout(0)), &ALL, |n| {
                format!("vda{n}")
            });
        });
        let root = find_root(&sys, BootDisk::WithEspAndRoot, Duration::from_secs(30)).unwrap();
        assert_eq!(root.device, "/dev/vda2");
        let waited = sys.now() - start;
        assert!(
            waited >= Duration::from_millis(2050) && waited < Duration::from_millis(2300),
            "{waited:?}"
        );
    }

    #[test]
    fn waits_for_a_usb_disk_whose_size_and_partitions_come_late() {
        // A USB stick: sda is registered before its capacity is read (size 0) and its partitions come last,
        // seconds after the virtio disks would have been there.
        let sys = FakeSys::new();
        sys.write("/sys/class/block/.keep", "");
        let start = sys.now();
        let image = gpt_image(&ingot_layout(0x300));
        let disk_only = image.clone();
        sys.at(start + Duration::from_millis(2500), |root| {
            write_under(root, "/sys/class/block/sda/size", b"0\n");
        });
        sys.at(start + Duration::from_millis(3500), move |root| {
            write_under(root, "/sys/class/block/sda/size", b"4194304\n");
            write_under(root, "/dev/sda", &disk_only);
        });
        sys.at(start + Duration::from_millis(4000), move |root| {
            add_disk(root, "sda", &image, &ALL, |n| format!("sda{n}"));
        });
        let esp = Uuid::from_u128(0x300 + 1);
        let root = find_root(&sys, BootDisk::WithPartition(esp), Duration::from_secs(30)).unwrap();
        assert_eq!((root.disk.as_str(), root.device.as_str()), ("sda", "/dev/sda2"));
        let waited = sys.now() - start;
        assert!(
            waited >= Duration::from_millis(4000) && waited < Duration::from_millis(4300),
            "{waited:?}"
        );
    }

    #[test]
    fn times_out_naming_what_it_saw() {
        let sys = FakeSys::new();
        add_disk(sys.host("/").as_path(), "sdb", &[0u8; 4096], &[], |n| {
            format!("sdb{n}")
        });
        let start = sys.now();
        let err = find_root(
            &sys,
            BootDisk::WithPartition(Uuid::from_u128(9)),
            Duration::from_secs(30),
        )
        .unwrap_err();
        assert!(sys.now() - start >= Duration::from_secs(30));
        let msg = err.to_string();
        assert!(
            msg.starts_with(
                "found no disk holding partition 00000000-0000-0000-0000-000000000009 within 30 s"
            ),
            "{msg}"
        );
        assert!(msg.contains("sdb (no GPT header at byte 512"), "{msg}");
    }

    #[test]
    fn two_candidate_disks_without_a_hint_is_an_error() {
        let sys = FakeSys::new();
        add_disk(
            sys.host("/").as_path(),
            "vda",
            &gpt_image(&ingot_layout(0)),
            &ALL,
            |n| format!("vda{n}"),
        );
        add_disk(
            sys.host("/").as_path(),
            "vdb",
            &gpt_image(&ingot_layout(0x10)),
            &ALL,
            |n| format!("vdb{n}"),
        );
        let err = find_root(&sys, BootDisk::WithEspAndRoot, Duration::from_secs(1)).unwrap_err();
        assert!(
            matches!(&err, Error::Ambiguous { disks, .. } if disks == "vda, vdb"),
            "{err}"
        );
    }

    #[test]
    fn a_boot_disk_without_root_a_is_an_error() {
        let sys = FakeSys::new();
        let mut layout = ingot_layout(0);
        layout.retain(|(_, r, _)| *r != Role::RootA);
        add_disk(sys.host("/").as_path(), "vda", &gpt_image(&layout), &ALL, |n| {
            format!("vda{n}")
        });
        let err = find_root(
            &sys,
            BootDisk::WithPartition(Uuid::from_u128(1)),
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(matches!(err, Error::NoRoot { .. }), "{err}");
        assert!(err.to_string().contains("4 \"root-b\""), "{err}");
    }
}
