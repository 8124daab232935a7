//! Device mapper through its control device: the ioctls of <linux/dm-ioctl.h> (interface version 4) on
//! `/dev/mapper/control`, as libdevmapper sends them, for the few operations ingot-init needs: check the
//! interface version, create a device, load its table, resume it (which makes the table live) and remove
//! it. [`super::Linux`] implements the `dm_*` methods of [`super::Sys`] with these.
//!
//! Every request is one `struct dm_ioctl` followed by its payload in one buffer; the kernel reads
//! `data_size` bytes of it and writes its answer back into the same buffer.

use std::io;
use std::os::fd::OwnedFd;

use rustix::fs::{Mode, OFlags};
use rustix::ioctl::{Opcode, Updater, opcode};

use super::{DevNum, DmTarget};

/// The device-mapper control device (devtmpfs creates it when `dm_mod` loads).
pub const CONTROL: &str = "/dev/mapper/control";

const DM_IOCTL: u8 = 0xfd;
const DM_NAME_LEN: usize = 128;
const DM_UUID_LEN: usize = 129;
const DM_MAX_TYPE_NAME: usize = 16;
/// The interface major version this code speaks; the minor version 0 asks for nothing newer.
const DM_VERSION_MAJOR: u32 = 4;
/// `DM_READONLY_FLAG`: the table opens its devices read-only and the mapped device is read-only.
const DM_READONLY_FLAG: u32 = 1 << 0;

/// `struct dm_ioctl` from <linux/dm-ioctl.h>.
#[repr(C)]
#[derive(Clone, Copy)]
struct DmIoctl {
    version: [u32; 3],
    /// Bytes of the whole request, this header included.
    data_size: u32,
    /// Where the payload starts, from the start of this header.
    data_start: u32,
    target_count: u32,
    open_count: i32,
    flags: u32,
    event_nr: u32,
    padding: u32,
    /// The device number, in the kernel's `huge_encode_dev` form.
    dev: u64,
    name: [u8; DM_NAME_LEN],
    uuid: [u8; DM_UUID_LEN],
    data: [u8; 7],
}

/// `struct dm_target_spec`; its parameter string follows it, NUL-terminated and padded to 8 bytes.
#[repr(C)]
#[derive(Clone, Copy)]
struct DmTargetSpec {
    sector_start: u64,
    length: u64,
    status: i32,
    /// Bytes from the start of this spec to the next one.
    next: u32,
    target_type: [u8; DM_MAX_TYPE_NAME],
}

const HEADER_LEN: usize = std::mem::size_of::<DmIoctl>();
const SPEC_LEN: usize = std::mem::size_of::<DmTargetSpec>();
/// Room for a table: a verity target's line is under 300 bytes.
const PAYLOAD_LEN: usize = 16 * 1024;

/// One request: the header, then its payload.
#[repr(C, align(8))]
struct Request {
    header: DmIoctl,
    payload: [u8; PAYLOAD_LEN],
}

const VERSION: Opcode = opcode::read_write::<DmIoctl>(DM_IOCTL, 0);
const DEV_CREATE: Opcode = opcode::read_write::<DmIoctl>(DM_IOCTL, 3);
const DEV_REMOVE: Opcode = opcode::read_write::<DmIoctl>(DM_IOCTL, 4);
const DEV_SUSPEND: Opcode = opcode::read_write::<DmIoctl>(DM_IOCTL, 6);
const TABLE_LOAD: Opcode = opcode::read_write::<DmIoctl>(DM_IOCTL, 9);

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// Copies `s` into a NUL-terminated fixed-size field.
fn put_str(field: &mut [u8], s: &str, what: &str) -> io::Result<()> {
    if s.len() >= field.len() || s.as_bytes().contains(&0) {
        return Err(invalid(format!(
            "device-mapper {what} {s:?} must be under {} bytes without NUL",
            field.len()
        )));
    }
    field[..s.len()].copy_from_slice(s.as_bytes());
    Ok(())
}

impl Request {
    fn new(name: &str, flags: u32) -> io::Result<Box<Request>> {
        let mut header = DmIoctl {
            version: [DM_VERSION_MAJOR, 0, 0],
            data_size: u32::try_from(std::mem::size_of::<Request>()).map_err(io::Error::other)?,
            data_start: HEADER_LEN as u32,
            target_count: 0,
            open_count: 0,
            flags,
            event_nr: 0,
            padding: 0,
            dev: 0,
            name: [0; DM_NAME_LEN],
            uuid: [0; DM_UUID_LEN],
            data: [0; 7],
        };
        if name.contains('/') {
            return Err(invalid(format!(
                "device-mapper name {name:?} must not contain '/'"
            )));
        }
        put_str(&mut header.name, name, "name")?;
        Ok(Box::new(Request {
            header,
            payload: [0; PAYLOAD_LEN],
        }))
    }
}

/// The control device, opened close-on-exec, after checking the kernel speaks interface version 4.
fn control() -> io::Result<OwnedFd> {
    let ctl = rustix::fs::open(CONTROL, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())?;
    let mut req = Request::new("", 0)?;
    send::<VERSION>(&ctl, &mut req)?;
    let v = req.header.version;
    if v[0] != DM_VERSION_MAJOR {
        return Err(io::Error::other(format!(
            "the kernel's device-mapper interface is version {}.{}.{}, expected {DM_VERSION_MAJOR}.x",
            v[0], v[1], v[2]
        )));
    }
    Ok(ctl)
}

fn send<const OP: Opcode>(ctl: &OwnedFd, req: &mut Request) -> io::Result<()> {
    // SAFETY: every opcode used here is a device-mapper `_IOWR(0xfd, n, struct dm_ioctl)`, which takes a
    // pointer to a `struct dm_ioctl` (`Request` starts with one, `repr(C)` as in <linux/dm-ioctl.h>). Its
    // `data_size` is the size of the whole `Request`, so the kernel reads and writes only inside the
    // buffer, which `req` borrows mutably for the duration of the call.
    unsafe { rustix::ioctl::ioctl(ctl, Updater::<OP, Request>::new(req)) }?;
    Ok(())
}

/// `DM_DEV_CREATE`: a new device without a table; returns its device number.
pub fn create(name: &str) -> io::Result<DevNum> {
    let ctl = control()?;
    let mut req = Request::new(name, 0)?;
    send::<DEV_CREATE>(&ctl, &mut req)?;
    let dev = req.header.dev;
    Ok(DevNum {
        major: rustix::fs::major(dev),
        minor: rustix::fs::minor(dev),
    })
}

/// Lays out `targets` as `dm_target_spec`s with their parameter strings; returns the bytes used.
fn put_targets(payload: &mut [u8], targets: &[DmTarget<'_>]) -> io::Result<usize> {
    let mut at = 0;
    for t in targets {
        let params_len = (t.params.len() + 1).next_multiple_of(8);
        let len = SPEC_LEN + params_len;
        let room = payload.len() - at;
        if len > room || t.params.as_bytes().contains(&0) {
            return Err(invalid(format!(
                "the {} target's parameters must be under {room} bytes without NUL",
                t.kind
            )));
        }
        let mut spec = DmTargetSpec {
            sector_start: t.start,
            length: t.sectors,
            status: 0,
            next: u32::try_from(len).map_err(io::Error::other)?,
            target_type: [0; DM_MAX_TYPE_NAME],
        };
        put_str(&mut spec.target_type, t.kind, "target type")?;
        let out = &mut payload[at..at + len];
        out[..8].copy_from_slice(&spec.sector_start.to_ne_bytes());
        out[8..16].copy_from_slice(&spec.length.to_ne_bytes());
        out[16..20].copy_from_slice(&spec.status.to_ne_bytes());
        out[20..24].copy_from_slice(&spec.next.to_ne_bytes());
        out[24..SPEC_LEN].copy_from_slice(&spec.target_type);
        out[SPEC_LEN..SPEC_LEN + t.params.len()].copy_from_slice(t.params.as_bytes());
        out[SPEC_LEN + t.params.len()..].fill(0);
        at += len;
    }
    Ok(at)
}

/// `DM_TABLE_LOAD`: `targets` become the inactive table of `name`, opened read-only with `read_only`.
pub fn load_table(name: &str, targets: &[DmTarget<'_>], read_only: bool) -> io::Result<()> {
    let ctl = control()?;
    let mut req = Request::new(name, if read_only { DM_READONLY_FLAG } else { 0 })?;
    put_targets(&mut req.payload, targets)?;
    req.header.target_count = u32::try_from(targets.len()).map_err(io::Error::other)?;
    send::<TABLE_LOAD>(&ctl, &mut req)
}

/// `DM_DEV_SUSPEND` without `DM_SUSPEND_FLAG`: resumes `name`, swapping in its loaded table.
pub fn resume(name: &str) -> io::Result<()> {
    let ctl = control()?;
    let mut req = Request::new(name, 0)?;
    send::<DEV_SUSPEND>(&ctl, &mut req)
}

/// `DM_DEV_REMOVE`: removes `name` (fails with `EBUSY` while it is open or mounted).
pub fn remove(name: &str) -> io::Result<()> {
    let ctl = control()?;
    let mut req = Request::new(name, 0)?;
    send::<DEV_REMOVE>(&ctl, &mut req)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_the_kernel_header() {
        // sizeof(struct dm_ioctl) and sizeof(struct dm_target_spec) on x86-64.
        assert_eq!(HEADER_LEN, 312);
        assert_eq!(SPEC_LEN, 40);
        assert_eq!(DEV_CREATE, 0xc138_fd03);
        assert_eq!(TABLE_LOAD, 0xc138_fd09);
        assert_eq!(DEV_SUSPEND, 0xc138_fd06);
    }

    #[test]
    fn targets_are_laid_out_with_padded_parameters() {
        let mut payload = [0xaau8; 256];
        let targets = [
            DmTarget {
                start: 0,
                sectors: 8,
                kind: "verity",
                params: "abc",
            },
            DmTarget {
                start: 8,
                sectors: 16,
                kind: "error",
                params: "",
            },
        ];
        let used = put_targets(&mut payload, &targets).unwrap();
        assert_eq!(used, 40 + 8 + 40 + 8);
        assert_eq!(&payload[8..16], &8u64.to_ne_bytes());
        assert_eq!(&payload[20..24], &48u32.to_ne_bytes());
        assert_eq!(&payload[24..31], b"verity\0");
        assert_eq!(&payload[40..48], b"abc\0\0\0\0\0");
        assert_eq!(&payload[48..56], &8u64.to_ne_bytes());
        assert_eq!(&payload[72..78], b"error\0");
        assert_eq!(&payload[88..96], &[0; 8]);
        assert_eq!(payload[96], 0xaa, "nothing written past the table");
    }

    #[test]
    fn names_and_tables_that_do_not_fit_are_refused() {
        assert!(Request::new(&"x".repeat(127), 0).is_ok());
        assert!(Request::new(&"x".repeat(128), 0).is_err());
        assert!(Request::new("a/b", 0).is_err());
        let mut payload = [0u8; 64];
        let long = DmTarget {
            start: 0,
            sectors: 1,
            kind: "verity",
            params: &"p".repeat(30),
        };
        assert!(put_targets(&mut payload, &[long]).is_err());
    }

    /// Whether the device-mapper test can run here: root, veritysetup, losetup and a kernel with the device
    /// mapper; otherwise skips `test`, naming what is missing.
    fn host_ready(test: &str) -> bool {
        if !ingot_testkit::require_root(test, "mapping a device") {
            return false;
        }
        if !ingot_testkit::require_tools(test, &["veritysetup", "losetup"]) {
            return false;
        }
        if !std::path::Path::new(CONTROL).exists() {
            let _ = std::process::Command::new("modprobe").arg("dm_verity").output();
        }
        if !std::path::Path::new(CONTROL).exists() {
            // vm_verity covers the same ioctls in a guest kernel that has it.
            ingot_testkit::skip_host_kernel(
                test,
                format!(
                    "has no device mapper ({CONTROL} is missing; CONFIG_BLK_DEV_DM and CONFIG_DM_VERITY)"
                ),
            );
            return false;
        }
        true
    }

    fn run(program: &str, args: &[&str]) -> String {
        let out = std::process::Command::new(program).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// A loop device over a file, detached when dropped.
    struct Loop(String);

    impl Loop {
        fn attach(file: &std::path::Path) -> Loop {
            let dev = run(
                "losetup",
                &["--find", "--show", "--read-only", file.to_str().unwrap()],
            );
            Loop(dev.trim().to_owned())
        }

        fn number(&self) -> DevNum {
            let rdev = rustix::fs::stat(self.0.as_str()).unwrap().st_rdev;
            DevNum {
                major: rustix::fs::major(rdev),
                minor: rustix::fs::minor(rdev),
            }
        }
    }

    impl Drop for Loop {
        fn drop(&mut self) {
            let _ = std::process::Command::new("losetup")
                .args(["-d", &self.0])
                .output();
        }
    }

    /// A device-mapper device made through this module, removed when dropped.
    struct Mapping {
        name: String,
        node: std::path::PathBuf,
    }

    impl Mapping {
        fn verity(
            name: &str,
            dir: &std::path::Path,
            sb: &Superblock,
            data: DevNum,
            hash: DevNum,
            root_hash: &[u8],
        ) -> Mapping {
            let dev = create(name).unwrap();
            let mapping = Mapping {
                name: name.to_owned(),
                node: dir.join(format!("dm-{}", dev.minor)),
            };
            let params = crate::verity::table_params(sb, data, hash, root_hash);
            let target = DmTarget {
                start: 0,
                sectors: sb.data_sectors(),
                kind: "verity",
                params: &params,
            };
            load_table(name, &[target], true).unwrap();
            resume(name).unwrap();
            // Our own node, so the test does not depend on devtmpfs being mounted on /dev.
            rustix::fs::mknodat(
                rustix::fs::CWD,
                &mapping.node,
                rustix::fs::FileType::BlockDevice,
                Mode::from_raw_mode(0o600),
                rustix::fs::makedev(dev.major, dev.minor),
            )
            .unwrap();
            mapping
        }
    }

    impl Drop for Mapping {
        fn drop(&mut self) {
            let _ = remove(&self.name);
            let _ = std::fs::remove_file(&self.node);
        }
    }

    use ingot_spec::verity::Superblock;
    use std::os::unix::fs::FileExt as _;

    #[test]
    fn maps_verity_reads_the_data_and_fails_a_flipped_byte_with_eio_as_root() {
        if !host_ready("maps_verity_reads_the_data_and_fails_a_flipped_byte_with_eio_as_root") {
            return;
        }
        use crate::sys::Sys as _;
        let dir = tempfile::tempdir().unwrap();
        let data_path = dir.path().join("data");
        let hash_path = dir.path().join("hash");
        let blocks = 300usize;
        let data: Vec<u8> = (0..blocks * 4096).map(|i| (i * 7 + i / 4096) as u8).collect();
        std::fs::write(&data_path, &data).unwrap();
        let salt = "5a".repeat(32);
        let out = run(
            "veritysetup",
            &[
                "format",
                &format!("--salt={salt}"),
                data_path.to_str().unwrap(),
                hash_path.to_str().unwrap(),
            ],
        );
        let root_hash = out
            .lines()
            .find_map(|l| l.strip_prefix("Root hash:"))
            .map(|h| ingot_spec::verity::parse_root_hash(h.trim()).unwrap())
            .unwrap();
        let sb = Superblock::parse(&std::fs::read(&hash_path).unwrap()).unwrap();
        assert_eq!(sb.data_blocks, blocks as u64);

        let data_loop = Loop::attach(&data_path);
        let hash_loop = Loop::attach(&hash_path);
        let name = format!("ingot-test-{}", std::process::id());
        {
            let m = Mapping::verity(
                &name,
                dir.path(),
                &sb,
                data_loop.number(),
                hash_loop.number(),
                &root_hash,
            );
            assert_eq!(
                std::fs::read(&m.node).unwrap(),
                data,
                "the mapped device reads the data"
            );
        }
        // Dropped: removed, so the name is free again.
        assert!(remove(&name).is_err_and(|e| e.raw_os_error() == Some(libc::ENXIO)));

        let flipped = 57 * 4096 + 123;
        let f = std::fs::OpenOptions::new().write(true).open(&data_path).unwrap();
        f.write_all_at(&[data[flipped] ^ 1], flipped as u64).unwrap();
        f.sync_all().unwrap();
        let m = Mapping::verity(
            &name,
            dir.path(),
            &sb,
            data_loop.number(),
            hash_loop.number(),
            &root_hash,
        );
        let dev = std::fs::File::open(&m.node).unwrap();
        let mut block = vec![0u8; 4096];
        dev.read_exact_at(&mut block, 10 * 4096).unwrap();
        assert_eq!(
            block,
            data[10 * 4096..11 * 4096],
            "an untouched block still reads"
        );
        let err = dev.read_exact_at(&mut block, 57 * 4096).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");

        let kmsg = super::super::Linux.open_kmsg().unwrap();
        let mut reports = Vec::new();
        loop {
            let records = super::super::Linux
                .read_kmsg(std::os::fd::AsFd::as_fd(&kmsg))
                .unwrap();
            if records.is_empty() {
                break;
            }
            for r in records {
                let Some(rec) = crate::kmsg::parse(&r) else {
                    continue;
                };
                if let Some(c) = crate::verity::corruption(&rec) {
                    reports.push((c.device.to_owned(), c.kind.to_owned(), c.block));
                }
            }
        }
        let want = (data_loop.number().to_string(), "data".to_owned(), 57);
        assert!(reports.contains(&want), "no report {want:?} in {reports:?}");
    }
}
