//! The root through dm-verity: stage 1 maps root-a through a verity device whose root hash comes from the
//! kernel command line (`roothash=`, inside the signed UKI), and stage 2 stops the node when the kernel
//! reports a block that does not match the tree.
//!
//! Stage 1 ([`open_root`]): `roothash=` from the command line, root-a-verity on the root's disk, its
//! superblock ([`Superblock::parse`]), then the device-mapper device [`DEVICE_NAME`] with the one-target
//! table [`table_params`], read-only, and its node `/dev/dm-<minor>` waited for. Every failure is an error:
//! there is no fallback to the raw partition. A device created before a failure is removed again.
//!
//! At run time a block that fails verification makes the read return `EIO`, and the kernel logs
//! `device-mapper: verity: <maj>:<min>: data block <n> is corrupted` ([`corruption`]). Stage 2 watches
//! `/dev/kmsg` from the oldest record on ([`CorruptionWatch`]), so a report made before it started counts.

use std::cell::OnceCell;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use ingot_spec::cmdline::{self, ROOT_HASH};
use ingot_spec::gpt::Partition;
use ingot_spec::marker::PREFIX;
use ingot_spec::partition::{Role, TYPE_ROOT_X86_64_VERITY};
use ingot_spec::verity::{
    ALGORITHM, HASH_START_BLOCK, RootHashError, Superblock, SuperblockError, hex, parse_root_hash,
};

use crate::block::{self, Root, SYS_CLASS_BLOCK};
use crate::event::Pollable;
use crate::kmsg;
use crate::sys::{DevNum, DmTarget, Sys, dm};

/// The device-mapper name of the verified root (`/dev/mapper/root` where udev runs; ingot has none).
pub const DEVICE_NAME: &str = "root";
/// How long stage 1 waits for `/dev/dm-<minor>` after resuming the device.
pub const NODE_WAIT: Duration = Duration::from_secs(10);
const NODE_POLL: Duration = Duration::from_millis(5);
/// Prefix of every verity line on the console, success lines excepted.
pub const LINE: &str = "verity: ";
/// Batches of kernel log records read at most when looking through the whole ring at once.
const MAX_BATCHES: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading /proc/cmdline")]
    Cmdline(#[source] io::Error),
    #[error(
        "the kernel command line has no {ROOT_HASH}= (expected {ROOT_HASH}=<64 lowercase hex digits>, the root's dm-verity root hash)"
    )]
    NoRootHash,
    #[error(transparent)]
    RootHash(#[from] RootHashError),
    #[error("disk {disk} has no partition of type {TYPE_ROOT_X86_64_VERITY} named {:?} (partitions: {found})", Role::RootAVerity.label())]
    NoHashPartition { disk: String, found: String },
    #[error("disk {disk}: reading its GPT again: {reason}")]
    Gpt { disk: String, reason: String },
    #[error("disk {disk} has no device node for partition {number}")]
    NoNode { disk: String, number: u32 },
    #[error("reading the verity superblock at the start of {device}")]
    ReadSuperblock {
        device: String,
        #[source]
        source: io::Error,
    },
    #[error("{device} does not start with the verity superblock ingot images have")]
    Superblock {
        device: String,
        #[source]
        source: SuperblockError,
    },
    #[error("{path}: expected `<major>:<minor>` and a size in sectors")]
    Sysfs {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("the verity superblock covers {needed} sectors of {device}, which holds only {has}")]
    DataTooSmall { device: String, needed: u64, has: u64 },
    #[error(
        "creating the device-mapper device {DEVICE_NAME:?} through {} (loaded by dm_mod)",
        dm::CONTROL
    )]
    Create(#[source] io::Error),
    #[error(
        "loading the table `{table}` into {DEVICE_NAME:?} (the kernel needs dm_verity and must accept the table)"
    )]
    Load {
        table: String,
        #[source]
        source: io::Error,
    },
    #[error("resuming {DEVICE_NAME:?} with its verity table")]
    Resume(#[source] io::Error),
    #[error("{node} did not appear within {} s of resuming {DEVICE_NAME:?}", .waited.as_secs())]
    NodeTimeout { node: String, waited: Duration },
}

/// The mapped, verified root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerityRoot {
    /// `/dev/dm-<minor>`.
    pub device: String,
    /// `<first 12 hex digits>… over /dev/vda2 (<n> blocks, salt <n> bytes)`.
    pub summary: String,
}

/// The verity target's parameters: format version 1, the data and hash devices, block sizes, how many data
/// blocks, where the tree starts, the algorithm, root hash and salt (`-` for none).
pub fn table_params(sb: &Superblock, data: DevNum, hash: DevNum, root_hash: &[u8]) -> String {
    let salt = if sb.salt.is_empty() {
        "-".to_owned()
    } else {
        hex(&sb.salt)
    };
    format!(
        "1 {data} {hash} {} {} {} {HASH_START_BLOCK} {ALGORITHM} {} {salt}",
        sb.data_block_size,
        sb.hash_block_size,
        sb.data_blocks,
        hex(root_hash)
    )
}

/// root-a-verity on `parts`: the verity type and its name.
fn pick_hash(disk: &str, parts: &[Partition]) -> Result<Partition, Error> {
    crate::block::find_role(parts, Role::RootAVerity).ok_or_else(|| Error::NoHashPartition {
        disk: disk.to_owned(),
        found: crate::block::describe(parts),
    })
}

/// A sysfs attribute of a block device (`dev`, `size`).
fn sysfs(sys: &dyn Sys, node: &str, attr: &str) -> Result<String, Error> {
    let path = format!("{SYS_CLASS_BLOCK}/{node}/{attr}");
    sys.read(Path::new(&path))
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .map_err(|source| Error::Sysfs { path, source })
}

fn sysfs_invalid(node: &str, attr: &str, value: &str) -> Error {
    Error::Sysfs {
        path: format!("{SYS_CLASS_BLOCK}/{node}/{attr}"),
        source: io::Error::new(io::ErrorKind::InvalidData, format!("found {value:?}")),
    }
}

fn dev_num(sys: &dyn Sys, node: &str) -> Result<DevNum, Error> {
    let s = sysfs(sys, node, "dev")?;
    s.split_once(':')
        .and_then(|(a, b)| {
            Some(DevNum {
                major: a.parse().ok()?,
                minor: b.parse().ok()?,
            })
        })
        .ok_or_else(|| sysfs_invalid(node, "dev", &s))
}

fn sectors(sys: &dyn Sys, node: &str) -> Result<u64, Error> {
    let s = sysfs(sys, node, "size")?;
    s.parse().map_err(|_| sysfs_invalid(node, "size", &s))
}

/// Sets up the verity device for `root` (see the module documentation) and returns its node.
pub fn open_root(sys: &dyn Sys, root: &Root) -> Result<VerityRoot, Error> {
    let line = sys.read(Path::new("/proc/cmdline")).map_err(Error::Cmdline)?;
    let line = String::from_utf8_lossy(&line);
    let root_hash = parse_root_hash(cmdline::get(&line, ROOT_HASH).ok_or(Error::NoRootHash)?)?;

    let parts = block::read_gpt(sys, &root.disk).map_err(|reason| Error::Gpt {
        disk: root.disk.clone(),
        reason,
    })?;
    let hash_part = pick_hash(&root.disk, &parts)?;
    let hash_node = block::partition_device(sys, &root.disk, hash_part.number)
        .ok()
        .flatten()
        .ok_or_else(|| Error::NoNode {
            disk: root.disk.clone(),
            number: hash_part.number,
        })?;
    let hash_device = format!("/dev/{hash_node}");
    let block = sys
        .read_at(Path::new(&hash_device), 0, ingot_spec::verity::SUPERBLOCK_LEN)
        .map_err(|source| Error::ReadSuperblock {
            device: hash_device.clone(),
            source,
        })?;
    let sb = Superblock::parse(&block).map_err(|source| Error::Superblock {
        device: hash_device.clone(),
        source,
    })?;

    let data_node = root.device.trim_start_matches("/dev/");
    let data = dev_num(sys, data_node)?;
    let hash = dev_num(sys, &hash_node)?;
    let has = sectors(sys, data_node)?;
    if sb.data_sectors() > has {
        return Err(Error::DataTooSmall {
            device: root.device.clone(),
            needed: sb.data_sectors(),
            has,
        });
    }

    let params = table_params(&sb, data, hash, &root_hash);
    let dev = sys.dm_create(DEVICE_NAME).map_err(Error::Create)?;
    let target = DmTarget {
        start: 0,
        sectors: sb.data_sectors(),
        kind: "verity",
        params: &params,
    };
    let node = format!("/dev/dm-{}", dev.minor);
    let live = sys
        .dm_load_table(DEVICE_NAME, &[target], true)
        .map_err(|source| Error::Load {
            table: format!("0 {} verity {params}", sb.data_sectors()),
            source,
        })
        .and_then(|()| sys.dm_resume(DEVICE_NAME).map_err(Error::Resume))
        .and_then(|()| wait_for_node(sys, &node));
    if let Err(e) = live {
        remove(sys);
        return Err(e);
    }
    Ok(VerityRoot {
        device: node,
        summary: format!(
            "{}… over {} ({} blocks, salt {} bytes)",
            &hex(&root_hash)[..12],
            root.device,
            sb.data_blocks,
            sb.salt.len()
        ),
    })
}

fn wait_for_node(sys: &dyn Sys, node: &str) -> Result<(), Error> {
    let start = sys.boottime();
    loop {
        if sys.exists(Path::new(node)) {
            return Ok(());
        }
        let waited = sys.boottime().saturating_sub(start);
        if waited >= NODE_WAIT {
            return Err(Error::NodeTimeout {
                node: node.to_owned(),
                waited,
            });
        }
        sys.sleep(NODE_POLL);
    }
}

/// Removes the verity device after a failure, best effort.
pub fn remove(sys: &dyn Sys) {
    if let Err(e) = sys.dm_remove(DEVICE_NAME) {
        crate::warn(
            sys,
            &format!("removing the device-mapper device {DEVICE_NAME:?}: {e}, ignoring"),
        );
    }
}

/// A corruption report the kernel logged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Corruption<'a> {
    /// The data device, `<major>:<minor>`.
    pub device: &'a str,
    /// `data` or `metadata` (a block of the tree).
    pub kind: &'a str,
    pub block: u64,
}

/// Recognises dm-verity's `device-mapper: verity: <maj>:<min>: (data|metadata) block <n> is corrupted`
/// in a record the kernel itself logged.
pub fn corruption<'a>(record: &kmsg::Record<'a>) -> Option<Corruption<'a>> {
    if !record.is_from_kernel() {
        return None;
    }
    let rest = record.text.strip_prefix("device-mapper: verity: ")?;
    let (device, rest) = rest.split_once(": ")?;
    let (major, minor) = device.split_once(':')?;
    if major.parse::<u32>().is_err() || minor.parse::<u32>().is_err() {
        return None;
    }
    let (kind, rest) = rest.split_once(" block ")?;
    if kind != "data" && kind != "metadata" {
        return None;
    }
    let block = rest.strip_suffix(" is corrupted")?.parse().ok()?;
    Some(Corruption { device, kind, block })
}

/// The text of the first corruption report in `records`.
fn first_report(records: &[String]) -> Option<String> {
    records.iter().find_map(|r| {
        let rec = kmsg::parse(r)?;
        corruption(&rec).map(|_| rec.text.to_owned())
    })
}

/// Reads what is left on a kmsg descriptor (bounded) and returns the first corruption report in it.
fn drain(sys: &dyn Sys, fd: &OwnedFd) -> io::Result<Option<String>> {
    for _ in 0..MAX_BATCHES {
        let records = sys.read_kmsg(fd.as_fd())?;
        if records.is_empty() {
            return Ok(None);
        }
        if let Some(found) = first_report(&records) {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

/// The first corruption report in the kernel's whole log ring.
pub fn reported_corruption(sys: &dyn Sys) -> io::Result<Option<String>> {
    let fd = sys.open_kmsg()?;
    drain(sys, &fd)
}

/// The line stage 2 prints before it stops: `verity: the root is corrupted (kernel: "…"); stopping`.
pub fn stopping_line(report: &str) -> String {
    format!("{PREFIX}{LINE}the root is corrupted (kernel: {report:?}); stopping")
}

/// After `exec` of the next init failed: says whether the kernel reported the root corrupted.
pub fn explain_exec_failure(sys: &dyn Sys, program: &str) {
    let line = match reported_corruption(sys) {
        Ok(Some(report)) => format!(
            "the root is corrupted (kernel: {report:?}), which is why {program} could not be executed"
        ),
        Ok(None) => "the kernel reported no corruption of the root".to_owned(),
        Err(e) => format!("reading /dev/kmsg to look for corruption reports: {e}"),
    };
    sys.console(&format!("{PREFIX}{LINE}{line}"));
}

/// Watches the kernel log for dm-verity corruption reports, from the oldest record the ring holds. A
/// [`Pollable`]: stage 2 hands it to every turn of the event loop and stops once [`CorruptionWatch::found`]
/// holds a report.
#[derive(Debug)]
pub struct CorruptionWatch {
    fd: Option<OwnedFd>,
    found: Rc<OnceCell<String>>,
}

impl CorruptionWatch {
    /// Opens `/dev/kmsg`; without it (warned) the watch sees nothing and corruption shows only as read
    /// errors.
    pub fn open(sys: &dyn Sys) -> CorruptionWatch {
        let fd = match sys.open_kmsg() {
            Ok(fd) => Some(fd),
            Err(e) => {
                crate::warn(
                    sys,
                    &format!("opening /dev/kmsg to watch for verity corruption reports: {e}, ignoring"),
                );
                None
            }
        };
        CorruptionWatch {
            fd,
            found: Rc::default(),
        }
    }

    /// The first corruption report seen, shared so a loop condition can look while the watch is lent out.
    pub fn found(&self) -> Rc<OnceCell<String>> {
        Rc::clone(&self.found)
    }

    /// Reads everything logged so far (after a fatal error, to tell whether corruption caused it).
    pub fn check_now(&mut self, sys: &dyn Sys) -> Option<String> {
        if self.found.get().is_none()
            && let Some(fd) = &self.fd
        {
            match drain(sys, fd) {
                Ok(Some(report)) => {
                    let _ = self.found.set(report);
                }
                Ok(None) => {}
                Err(e) => self.give_up(sys, &e),
            }
        }
        self.found.get().cloned()
    }

    fn give_up(&mut self, sys: &dyn Sys, e: &io::Error) {
        crate::warn(
            sys,
            &format!("reading /dev/kmsg: {e}, no longer watching for verity corruption reports"),
        );
        self.fd = None;
    }
}

impl Pollable for CorruptionWatch {
    fn fds(&self) -> Vec<RawFd> {
        match (&self.fd, self.found.get()) {
            (Some(fd), None) => vec![fd.as_raw_fd()],
            _ => Vec::new(),
        }
    }

    fn deadline(&self) -> Option<Duration> {
        None
    }

    fn wake(&mut self, sys: &dyn Sys, _now: Duration, readable: &[RawFd]) {
        let Some(fd) = &self.fd else { return };
        if !readable.contains(&fd.as_raw_fd()) || self.found.get().is_some() {
            return;
        }
        match sys.read_kmsg(fd.as_fd()) {
            Ok(records) => {
                if let Some(report) = first_report(&records) {
                    let _ = self.found.set(report);
                }
            }
            Err(e) => self.give_up(sys, &e),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::sys::fake::FakeSys;
    use proptest::prelude::*;

    const REPORT: &str = "3,812,5123456,-;device-mapper: verity: 254:2: data block 57 is corrupted";

    fn rec(line: &str) -> kmsg::Record<'_> {
        kmsg::parse(line).unwrap()
    }

    #[test]
    fn recognises_data_and_metadata_corruption_from_the_kernel_only() {
        assert_eq!(
            corruption(&rec(REPORT)),
            Some(Corruption {
                device: "254:2",
                kind: "data",
                block: 57
            })
        );
        assert_eq!(
            corruption(&rec(
                "3,1,1,-;device-mapper: verity: 7:0: metadata block 3 is corrupted"
            ))
            .map(|c| c.kind),
            Some("metadata")
        );
        for other in [
            // A process writing the same words to /dev/kmsg (facility LOG_USER).
            "11,1,1,-;device-mapper: verity: 254:2: data block 57 is corrupted",
            "3,1,1,-;device-mapper: verity: 254:2: reached maximum errors",
            "3,1,1,-;device-mapper: verity: sha256 using implementation \"sha256-avx2\"",
            "3,1,1,-;device-mapper: verity: 254:2: data block x is corrupted",
            "3,1,1,-;device-mapper: verity: vda2: data block 1 is corrupted",
            "3,1,1,-;device-mapper: verity: 254:2: inode block 1 is corrupted",
            "3,1,1,-;device-mapper: crypt: 254:2: data block 1 is corrupted",
            "6,1,1,-;EXT4-fs (vda6): mounted filesystem",
        ] {
            assert_eq!(corruption(&rec(other)), None, "{other}");
        }
    }

    #[test]
    fn the_watch_finds_reports_logged_before_and_after_it_opened() {
        let sys = FakeSys::new();
        sys.kmsg("6,1,100,-;Linux version 6.1.0");
        let mut early = CorruptionWatch::open(&sys);
        assert_eq!(early.check_now(&sys), None);
        sys.kmsg(REPORT);
        let found = early.found();
        let fds = early.fds();
        assert_eq!(fds.len(), 1);
        let ready = sys.poll(&fds, Some(Duration::ZERO)).unwrap();
        early.wake(&sys, sys.now(), &ready);
        assert_eq!(
            found.get().map(String::as_str),
            Some("device-mapper: verity: 254:2: data block 57 is corrupted")
        );
        assert!(early.fds().is_empty(), "stops watching once it found one");

        let mut late = CorruptionWatch::open(&sys);
        assert_eq!(
            late.check_now(&sys).as_deref(),
            Some("device-mapper: verity: 254:2: data block 57 is corrupted")
        );
    }

    #[test]
    fn without_kmsg_the_watch_warns_and_sees_nothing() {
        let sys = FakeSys::new();
        sys.fail("open-kmsg", crate::sys::Errno::NOENT);
        let mut w = CorruptionWatch::open(&sys);
        assert!(w.fds().is_empty());
        assert_eq!(w.check_now(&sys), None);
        assert!(sys.console_lines()[0].starts_with("ingot: warning opening /dev/kmsg"));
    }

    #[test]
    fn the_table_names_devices_by_number_and_an_empty_salt_as_a_dash() {
        let sb = Superblock {
            uuid: [0; 16],
            data_block_size: 4096,
            hash_block_size: 4096,
            data_blocks: 10,
            salt: vec![0xab, 0x01],
        };
        let dev = |major, minor| DevNum { major, minor };
        let hash = [0x11u8; 32];
        assert_eq!(
            table_params(&sb, dev(254, 2), dev(254, 3), &hash),
            format!("1 254:2 254:3 4096 4096 10 1 sha256 {} ab01", "11".repeat(32))
        );
        let unsalted = Superblock {
            salt: Vec::new(),
            ..sb
        };
        assert!(table_params(&unsalted, dev(8, 1), dev(8, 2), &hash).ends_with(" -"));
    }

    proptest! {
        #[test]
        fn the_recogniser_never_panics(text in "\\PC{0,120}") {
            let line = format!("3,1,1,-;{text}");
            let _ = corruption(&rec(&line));
        }

        #[test]
        fn reports_round_trip(major in any::<u32>(), minor in any::<u32>(), meta in any::<bool>(), block in any::<u64>()) {
            let kind = if meta { "metadata" } else { "data" };
            let line = format!("3,7,9,-;device-mapper: verity: {major}:{minor}: {kind} block {block} is corrupted");
            let c = corruption(&rec(&line)).unwrap();
            let device = format!("{major}:{minor}");
            prop_assert_eq!(c.device, device.as_str());
            prop_assert_eq!(c.kind, kind);
            prop_assert_eq!(c.block, block);
        }
    }
}
