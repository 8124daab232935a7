//! The `var` partition: found on the disk the root came from, grown to the end of that disk and formatted
//! ext4 on first boot, mounted at `/var` on every boot.
//!
//! This runs at the start of stage 2, not in stage 1 as first planned: `mke2fs` (e2fsprogs) lives in the
//! read-only root, and running it there needs no chroot or second copy in the initramfs. Nothing writes to
//! `/var` before this step.
//!
//! "First boot" means the partition holds no ext4 superblock. Growing rewrites the GPT (backup moved to
//! the disk's real end, see [`ingot_spec::gpt_grow`]) and tells the kernel the partition's new size with
//! `BLKPG_RESIZE_PARTITION`, which works while the root on the same disk is mounted. A crash before
//! `mke2fs` finishes leaves no superblock, so the next boot simply does it again.

use std::io;
use std::path::Path;

use ingot_spec::gpt::{self, SECTOR};
use ingot_spec::gpt_grow::{self, GrowError};
use ingot_spec::partition::TYPE_VAR;

use crate::block;
use crate::sys::{ExitStatus, Mount, MountFlags, Sys};

pub const VAR: &str = "/var";
/// Where ext4 keeps its magic number: superblock at 1024, `s_magic` at offset 56 in it.
const EXT4_MAGIC_OFFSET: u64 = 1024 + 56;
const EXT4_MAGIC: [u8; 2] = 0xEF53u16.to_le_bytes();
/// Partition ends stay 1 MiB aligned.
const ALIGN_SECTORS: u64 = 2048;
/// Where e2fsprogs may live in the root (merged `/usr` or not).
const MKE2FS: [&str; 2] = ["/usr/sbin/mke2fs", "/sbin/mke2fs"];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("finding the disk of the root file system")]
    RootDisk(#[source] io::Error),
    #[error("the root file system is on {0}, which is not a partition of a disk")]
    NotAPartition(String),
    #[error("reading the partition table of /dev/{disk}: {reason}")]
    Table { disk: String, reason: String },
    #[error("disk /dev/{0} has no var partition (type {TYPE_VAR})")]
    NoVar(String),
    #[error("partition {number} of /dev/{disk} has no device node")]
    NoDevice { disk: String, number: u32 },
    #[error("growing var on /dev/{disk}")]
    Grow {
        disk: String,
        #[source]
        source: GrowError,
    },
    #[error("{what} on /dev/{disk}")]
    Io {
        what: &'static str,
        disk: String,
        #[source]
        source: io::Error,
    },
    #[error("no mke2fs in the root (looked for {}); add e2fsprogs to the profile", MKE2FS.join(", "))]
    NoMkfs,
    #[error("{program} {device} {status}")]
    Mkfs {
        program: &'static str,
        device: String,
        status: String,
    },
    #[error("mounting {device} on {VAR}")]
    Mount {
        device: String,
        #[source]
        source: io::Error,
    },
}

/// What [`prepare_var`] did, for the `var` phase line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Var {
    pub device: String,
    pub size_bytes: u64,
    /// The partition was formatted on this boot.
    pub formatted: bool,
    /// The partition was grown on this boot.
    pub grown: bool,
}

impl Var {
    pub fn summary(&self) -> String {
        let mut s = format!("device={} size={}MiB", self.device, self.size_bytes >> 20);
        if self.grown {
            s.push_str(" grown");
        }
        if self.formatted {
            s.push_str(" formatted");
        }
        s
    }
}

/// Finds `var`, grows and formats it when it holds no file system yet, and mounts it on `/var`.
pub fn prepare_var(sys: &dyn Sys) -> Result<Var, Error> {
    let (disk, _root_part) = root_disk(sys)?;
    let table_err = |reason: String| Error::Table {
        disk: disk.clone(),
        reason,
    };
    let parts = block::read_gpt(sys, &disk).map_err(table_err)?;
    let mut var = parts
        .iter()
        .find(|p| p.type_guid == TYPE_VAR)
        .cloned()
        .ok_or_else(|| Error::NoVar(disk.clone()))?;
    let node = block::partition_device(sys, &disk, var.number)
        .map_err(|source| io_err("listing partitions", &disk, source))?
        .ok_or_else(|| Error::NoDevice {
            disk: disk.clone(),
            number: var.number,
        })?;
    let device = format!("/dev/{node}");

    let mut out = Var {
        device: device.clone(),
        size_bytes: var.size_bytes(),
        formatted: false,
        grown: false,
    };
    if !has_ext4(sys, &device).map_err(|source| io_err("reading var", &disk, source))? {
        if let Some(last_lba) = grow(sys, &disk, var.number)? {
            var.last_lba = last_lba;
            out.size_bytes = var.size_bytes();
            out.grown = true;
        }
        mkfs(sys, &device)?;
        out.formatted = true;
    }
    sys.mount(&Mount {
        source: &device,
        target: VAR,
        fstype: "ext4",
        flags: MountFlags::NOSUID | MountFlags::NODEV,
        data: None,
    })
    .map_err(|source| Error::Mount {
        device: device.clone(),
        source,
    })?;
    Ok(out)
}

fn io_err(what: &'static str, disk: &str, source: io::Error) -> Error {
    Error::Io {
        what,
        disk: disk.to_owned(),
        source,
    }
}

/// The disk (`vda`) and partition (`vda2`) holding `/`, from its device number and sysfs. A device-mapper
/// root (the verity device `dm-0`) is followed to the partitions under it (`slaves/`: root-a, then its hash
/// partition), the first of which names the disk.
pub(crate) fn root_disk(sys: &dyn Sys) -> Result<(String, String), Error> {
    let dev = sys.device_of("/").map_err(Error::RootDisk)?;
    let (major, minor) = (rustix::fs::major(dev), rustix::fs::minor(dev));
    let uevent = sys
        .read(Path::new(&format!("/sys/dev/block/{major}:{minor}/uevent")))
        .map_err(Error::RootDisk)?;
    let uevent = String::from_utf8_lossy(&uevent);
    let part = uevent
        .lines()
        .find_map(|l| l.strip_prefix("DEVNAME="))
        .ok_or_else(|| Error::NotAPartition(format!("device {major}:{minor}")))?
        .to_owned();
    let slaves = Path::new(block::SYS_CLASS_BLOCK).join(&part).join("slaves");
    let part = match sys.read_dir(&slaves).ok().and_then(|s| s.into_iter().next()) {
        Some(under) => under.to_string_lossy().into_owned(),
        None => part,
    };
    for disk in block::disks(sys).map_err(Error::RootDisk)? {
        if sys.exists(&Path::new(block::SYS_CLASS_BLOCK).join(&disk).join(&part)) {
            return Ok((disk, part));
        }
    }
    Err(Error::NotAPartition(part))
}

fn has_ext4(sys: &dyn Sys, device: &str) -> io::Result<bool> {
    Ok(sys.read_at(Path::new(device), EXT4_MAGIC_OFFSET, 2)? == EXT4_MAGIC)
}

/// Grows partition `number` to the end of the disk; `None` when the image already fills the disk.
fn grow(sys: &dyn Sys, disk: &str, number: u32) -> Result<Option<u64>, Error> {
    let sectors = sys
        .read(Path::new(&format!("{}/{disk}/size", block::SYS_CLASS_BLOCK)))
        .map_err(|source| io_err("reading the disk size", disk, source))?;
    let sectors: u64 = String::from_utf8_lossy(&sectors)
        .trim()
        .parse()
        .map_err(|_| Error::Table {
            disk: disk.to_owned(),
            reason: "sysfs size is not a number".to_owned(),
        })?;
    let dev = format!("/dev/{disk}");
    let start = sys
        .read_at(Path::new(&dev), 0, 2 * SECTOR as usize)
        .map_err(|source| io_err("reading the GPT", disk, source))?;
    let header = gpt::parse_header(&start).map_err(|e| Error::Table {
        disk: disk.to_owned(),
        reason: e.to_string(),
    })?;
    let head_len = usize::try_from(header.entries_byte_range().end).unwrap_or(usize::MAX);
    let head = sys
        .read_at(Path::new(&dev), 0, head_len)
        .map_err(|source| io_err("reading the GPT", disk, source))?;
    let grow_err = |source| Error::Grow {
        disk: disk.to_owned(),
        source,
    };
    let Some(grown) = gpt_grow::grow_partition(&head, sectors, number, ALIGN_SECTORS).map_err(grow_err)?
    else {
        return Ok(None);
    };
    for w in &grown.writes {
        sys.write_at_sync(&dev, w.offset, &w.bytes)
            .map_err(|source| io_err("writing the GPT", disk, source))?;
    }
    let parts = block::read_gpt(sys, disk).map_err(|reason| Error::Table {
        disk: disk.to_owned(),
        reason,
    })?;
    let part = parts
        .iter()
        .find(|p| p.number == number)
        .ok_or_else(|| Error::NoVar(disk.to_owned()))?;
    sys.resize_partition(&dev, number, part.offset_bytes(), part.size_bytes())
        .map_err(|source| io_err("resizing var in the kernel", disk, source))?;
    Ok(Some(grown.last_lba))
}

fn mkfs(sys: &dyn Sys, device: &str) -> Result<(), Error> {
    let program = MKE2FS
        .into_iter()
        .find(|p| sys.exists(Path::new(p)))
        .ok_or(Error::NoMkfs)?;
    // Lazy init keeps first boot fast on big disks; the kernel zeroes the inode tables in the background.
    let argv = [
        program,
        "-q",
        "-F",
        "-t",
        "ext4",
        "-L",
        "var",
        "-E",
        "lazy_itable_init=1,lazy_journal_init=1",
        device,
    ];
    let fail = |status: String| Error::Mkfs {
        program,
        device: device.to_owned(),
        status,
    };
    match sys.run(&argv) {
        Ok(ExitStatus::Code(0)) => Ok(()),
        Ok(ExitStatus::Code(c)) => Err(fail(format!("exited with status {c}"))),
        Ok(ExitStatus::Signal(s)) => Err(fail(format!("was killed by signal {s}"))),
        Err(e) => Err(fail(format!("could not start: {e}"))),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub mod tests {
    use super::*;
    use crate::block::testing;
    use crate::sys::fake::FakeSys;

    /// A fake node whose root is `vda2` and whose disk image is `sectors` long (bigger than the GPT says).
    pub fn node(sectors: u64, ext4: bool) -> FakeSys {
        let sys = FakeSys::new();
        add_var_disk(&sys, sectors, ext4);
        sys
    }

    /// Adds the boot disk with its `var` partition to a fake node.
    pub fn add_var_disk(sys: &FakeSys, sectors: u64, ext4: bool) {
        let layout = testing::ingot_layout(0x1000);
        let mut image = testing::gpt_image(&layout);
        image.resize((sectors * SECTOR) as usize, 0);
        testing::add_disk(sys.host("/").as_path(), "vda", &image, &[1, 2, 3, 4, 5, 6], |n| {
            format!("vda{n}")
        });
        sys.write("/sys/class/block/vda/size", format!("{sectors}\n"));
        sys.write(
            "/sys/dev/block/254:2/uevent",
            "MAJOR=254\nMINOR=2\nDEVNAME=vda2\nDEVTYPE=partition\n",
        );
        sys.root_device.set(rustix::fs::makedev(254, 2));
        sys.write("/usr/sbin/mke2fs", "");
        let mut part = vec![0u8; 4096];
        if ext4 {
            part[EXT4_MAGIC_OFFSET as usize..EXT4_MAGIC_OFFSET as usize + 2].copy_from_slice(&EXT4_MAGIC);
        }
        sys.write("/dev/vda6", part);
    }

    #[test]
    fn a_root_on_a_verity_device_is_followed_to_its_disk() {
        let sys = node(131_072, true);
        sys.write(
            "/sys/dev/block/253:0/uevent",
            "MAJOR=253\nMINOR=0\nDEVNAME=dm-0\nDEVTYPE=disk\n",
        );
        sys.write("/sys/class/block/dm-0/slaves/vda3", "");
        sys.write("/sys/class/block/dm-0/slaves/vda2", "");
        sys.root_device.set(rustix::fs::makedev(253, 0));
        assert_eq!(root_disk(&sys).unwrap(), ("vda".to_owned(), "vda2".to_owned()));
        let var = prepare_var(&sys).unwrap();
        assert!(var.summary().contains("device=/dev/vda6"), "{}", var.summary());

        // A device-mapper root over nothing ingot knows is still refused.
        std::fs::remove_dir_all(sys.host("/sys/class/block/dm-0/slaves")).unwrap();
        assert!(matches!(root_disk(&sys), Err(Error::NotAPartition(p)) if p == "dm-0"));
    }

    #[test]
    fn first_boot_grows_formats_and_mounts() {
        let sys = node(131_072, false);
        let var = prepare_var(&sys).unwrap();
        assert!(var.formatted && var.grown, "{var:?}");
        // The partition now ends at the last 1 MiB boundary before the backup table.
        let parts = block::read_gpt(&sys, "vda").unwrap();
        let p = parts.iter().find(|p| p.type_guid == TYPE_VAR).unwrap();
        assert_eq!((p.last_lba + 1) % ALIGN_SECTORS, 0);
        assert_eq!(var.size_bytes, p.size_bytes());
        let calls = sys.calls_matching(&["write-at", "resize-partition", "run", "mount"]);
        assert_eq!(calls.len(), 7, "{calls:#?}");
        assert!(calls[..4].iter().all(|c| c.starts_with("write-at /dev/vda ")));
        assert_eq!(
            calls[4],
            format!(
                "resize-partition /dev/vda 6 {} {}",
                p.offset_bytes(),
                p.size_bytes()
            )
        );
        assert_eq!(
            calls[5],
            "run /usr/sbin/mke2fs -q -F -t ext4 -L var -E lazy_itable_init=1,lazy_journal_init=1 /dev/vda6"
        );
        assert_eq!(calls[6], "mount /dev/vda6 /var ext4 nodev,nosuid -");
    }

    #[test]
    fn later_boots_only_mount() {
        let sys = node(131_072, true);
        let var = prepare_var(&sys).unwrap();
        assert!(!var.formatted && !var.grown);
        assert_eq!(
            sys.calls_matching(&["write-at", "resize-partition", "run", "mount"]),
            ["mount /dev/vda6 /var ext4 nodev,nosuid -"]
        );
    }

    #[test]
    fn a_failed_mkfs_names_the_program_device_and_status() {
        let sys = node(131_072, false);
        sys.fail("run ", crate::sys::Errno::NOENT);
        let err = prepare_var(&sys).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/usr/sbin/mke2fs /dev/vda6 could not start: No such file or directory (os error 2)"
        );
    }
}
