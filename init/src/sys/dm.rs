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
}
