//! The EFI variable systemd-boot leaves for the OS: which partition it was loaded from.

use std::io;
use std::path::Path;

use ingot_spec::Uuid;

use crate::sys::{self, Errno, MountFlags, Sys};

/// Where stage 1 mounts efivarfs.
pub const EFIVARS_DIR: &str = "/sys/firmware/efi/efivars";
/// `LoaderDevicePartUUID` in systemd's loader vendor namespace (Boot Loader Interface).
pub const LOADER_DEVICE_PART_UUID: &str =
    "/sys/firmware/efi/efivars/LoaderDevicePartUUID-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";

/// The global `SecureBoot` variable (UEFI 2.x, 3.3): 1 when the firmware enforces Secure Boot.
pub const SECURE_BOOT: &str = "/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("mounting efivarfs on {EFIVARS_DIR}")]
    Mount(#[source] io::Error),
    #[error("reading {LOADER_DEVICE_PART_UUID}")]
    Read(#[source] io::Error),
    #[error("decoding LoaderDevicePartUUID")]
    Decode(#[source] DecodeError),
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("{0} bytes is too short: expected 4 attribute bytes and a UTF-16LE string")]
    TooShort(usize),
    #[error("the string has an odd number of bytes ({0})")]
    OddLength(usize),
    #[error("the string is not valid UTF-16")]
    NotUtf16,
    #[error("{0:?} is not a GUID")]
    NotGuid(String),
}

/// Decodes the variable's efivarfs content: 4 bytes of attributes, then the ESP's partition GUID as a
/// NUL-terminated UTF-16LE string in normal GUID syntax (systemd's Boot Loader Interface). Case and the
/// terminating NUL are not relied on.
pub fn decode_part_uuid(bytes: &[u8]) -> Result<Uuid, DecodeError> {
    let Some(text) = bytes.get(4..).filter(|t| !t.is_empty()) else {
        return Err(DecodeError::TooShort(bytes.len()));
    };
    if text.len() % 2 != 0 {
        return Err(DecodeError::OddLength(text.len()));
    }
    let units: Vec<u16> = text
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    let s = String::from_utf16(&units).map_err(|_| DecodeError::NotUtf16)?;
    Uuid::parse_str(s.trim()).map_err(|_| DecodeError::NotGuid(s))
}

/// The partition systemd-boot was loaded from, or `None` when the machine did not boot through UEFI
/// and systemd-boot (no `/sys/firmware/efi`, or no variable: e.g. a direct `-kernel` boot in tests).
pub fn boot_partition(sys: &dyn Sys) -> Result<Option<Uuid>, Error> {
    if !sys.exists(Path::new("/sys/firmware/efi")) {
        return Ok(None);
    }
    let m = sys::Mount {
        source: "efivarfs",
        target: EFIVARS_DIR,
        fstype: "efivarfs",
        flags: MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        data: None,
    };
    match sys.mount(&m) {
        Ok(()) => {}
        Err(e) if sys::is_errno(&e, Errno::BUSY) => {} // already mounted
        Err(e) => return Err(Error::Mount(e)),
    }
    let bytes = match sys.read(Path::new(LOADER_DEVICE_PART_UUID)) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::Read(e)),
    };
    decode_part_uuid(&bytes).map(Some).map_err(Error::Decode)
}

/// Whether the firmware booted with Secure Boot on, read after [`boot_partition`] mounted efivarfs:
/// `None` without UEFI or when the variable cannot be read (the error), `Some(false)` when the firmware
/// has no such variable.
pub fn secure_boot(sys: &dyn Sys) -> Result<Option<bool>, io::Error> {
    if !sys.exists(Path::new("/sys/firmware/efi")) {
        return Ok(None);
    }
    match sys.read(Path::new(SECURE_BOOT)) {
        // 4 attribute bytes, then one byte.
        Ok(b) => Ok(Some(b.get(4) == Some(&1))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Some(false)),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::sys::fake::FakeSys;

    /// efivarfs content of the variable: attributes 0x06 (boot service + runtime access, volatile), then
    /// the GUID in UTF-16LE, NUL terminated.
    const GOLDEN: &[u8] = b"\x06\x00\x00\x00\
        3\x008\x00F\x00A\x00B\x002\x00D\x000\x00-\x00\
        6\x00C\x000\x008\x00-\x004\x00B\x00E\x00A\x00-\x00\
        9\x00C\x00D\x004\x00-\x00\
        7\x004\x00F\x00D\x008\x00A\x005\x004\x00D\x00E\x008\x002\x00\
        \x00\x00";

    #[test]
    fn decodes_golden_bytes() {
        assert_eq!(
            decode_part_uuid(GOLDEN).unwrap(),
            Uuid::parse_str("38fab2d0-6c08-4bea-9cd4-74fd8a54de82").unwrap()
        );
        // Without the terminating NUL, and lower case.
        let mut v = vec![6, 0, 0, 0];
        for u in "38fab2d0-6c08-4bea-9cd4-74fd8a54de82".encode_utf16() {
            v.extend_from_slice(&u.to_le_bytes());
        }
        assert!(decode_part_uuid(&v).is_ok());
    }

    #[test]
    fn rejects_malformed_values() {
        assert_eq!(decode_part_uuid(&[6, 0, 0, 0]), Err(DecodeError::TooShort(4)));
        assert_eq!(decode_part_uuid(&GOLDEN[..9]), Err(DecodeError::OddLength(5)));
        assert_eq!(
            decode_part_uuid(&[6, 0, 0, 0, b'x', 0]),
            Err(DecodeError::NotGuid("x".into()))
        );
        assert_eq!(
            decode_part_uuid(&[6, 0, 0, 0, 0x00, 0xd8, b'a', 0]),
            Err(DecodeError::NotUtf16)
        );
    }

    #[test]
    fn absent_without_uefi_or_variable() {
        let sys = FakeSys::new();
        assert!(boot_partition(&sys).unwrap().is_none());
        assert!(sys.calls_matching(&["mount"]).is_empty());

        sys.write("/sys/firmware/efi/efivars/Other-x", "");
        assert!(boot_partition(&sys).unwrap().is_none());
        assert_eq!(
            sys.calls_matching(&["mount"]),
            ["mount efivarfs /sys/firmware/efi/efivars efivarfs nodev,noexec,nosuid -"]
        );
    }

    #[test]
    fn secure_boot_state_from_the_variable() {
        let sys = FakeSys::new();
        assert_eq!(secure_boot(&sys).unwrap(), None);
        sys.write("/sys/firmware/efi/efivars/Other-x", "");
        assert_eq!(secure_boot(&sys).unwrap(), Some(false));
        sys.write(SECURE_BOOT, b"\x06\x00\x00\x00\x01");
        assert_eq!(secure_boot(&sys).unwrap(), Some(true));
        sys.write(SECURE_BOOT, b"\x06\x00\x00\x00\x00");
        assert_eq!(secure_boot(&sys).unwrap(), Some(false));
    }

    #[test]
    fn reads_the_variable_when_efivarfs_was_already_mounted() {
        let sys = FakeSys::new();
        sys.write(LOADER_DEVICE_PART_UUID, GOLDEN);
        sys.fail("mount efivarfs", Errno::BUSY);
        assert!(boot_partition(&sys).unwrap().is_some());

        let sys2 = FakeSys::new();
        sys2.write(LOADER_DEVICE_PART_UUID, GOLDEN);
        sys2.fail("mount efivarfs", Errno::NODEV);
        assert!(matches!(boot_partition(&sys2), Err(Error::Mount(_))));
    }
}
