//! Who this node is and how its kernel is tuned: the writable `/etc`, the machine-id and boot counter kept
//! on `/var`, the host name, and the profile's sysctls.
//!
//! The machine-id is made once, on the first boot, from the kernel's random pool and kept in
//! `/var/lib/ingot/machine-id`; every boot copies it to `/etc/machine-id`. The default host name derives
//! from it, so a node keeps its name (and its Kubernetes node name) across reboots until `var` is wiped.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use crate::sys::{Mount, MountFlags, Sys};

const MACHINE_ID: &str = "/var/lib/ingot/machine-id";
const BOOT_COUNT: &str = "/var/lib/ingot/boot-count";
const ETC_UPPER: &str = "/run/ingot/etc/upper";
const ETC_WORK: &str = "/run/ingot/etc/work";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {0}")]
    Read(&'static str, #[source] io::Error),
    #[error("writing {0}")]
    Write(String, #[source] io::Error),
    #[error("drawing a machine-id from the kernel's random pool")]
    Random(#[source] io::Error),
}

/// The node's identity for this boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// 32 lowercase hex digits, as `/etc/machine-id` holds it.
    pub machine_id: String,
    /// 1 on the first boot with this `var`.
    pub boot: u64,
    pub hostname: String,
}

impl Identity {
    pub fn summary(&self) -> String {
        format!(
            "boot={} machine-id={} hostname={}",
            self.boot, self.machine_id, self.hostname
        )
    }
}

/// Makes `/etc` writable for this boot: an overlay whose upper layer lives on `/run`, so the image's
/// `/etc` shows through and changes vanish at reboot. Needs the `overlay` module (load it before).
pub fn writable_etc(sys: &dyn Sys) -> io::Result<()> {
    sys.mkdir("/run/ingot")?;
    sys.mkdir("/run/ingot/etc")?;
    sys.mkdir(ETC_UPPER)?;
    sys.mkdir(ETC_WORK)?;
    let data = format!("lowerdir=/etc,upperdir={ETC_UPPER},workdir={ETC_WORK}");
    sys.mount(&Mount {
        source: "overlay",
        target: "/etc",
        fstype: "overlay",
        flags: MountFlags::NOSUID | MountFlags::NODEV,
        data: Some(&data),
    })
}

/// Reads or creates the machine-id, counts this boot, sets the host name (`hostname`, or one derived from
/// the machine-id) and writes `/etc/machine-id`, `/etc/hostname` and `/etc/hosts`. `/var` must be mounted.
pub fn establish_identity(sys: &dyn Sys, hostname: Option<&str>) -> Result<Identity, Error> {
    let machine_id = match read_text(sys, MACHINE_ID)? {
        Some(id) if is_machine_id(&id) => id,
        other => {
            if other.is_some() {
                crate::warn(
                    sys,
                    &format!("{MACHINE_ID} is not 32 hex digits, making a new one"),
                );
            }
            let id = new_machine_id(sys)?;
            write_atomic(sys, MACHINE_ID, &format!("{id}\n"))?;
            id
        }
    };
    let previous = match read_text(sys, BOOT_COUNT)? {
        None => 0,
        Some(text) => text.parse::<u64>().unwrap_or_else(|_| {
            crate::warn(
                sys,
                &format!("{BOOT_COUNT} holds {text:?}, not a number; counting from 0"),
            );
            0
        }),
    };
    let boot = previous.saturating_add(1);
    write_atomic(sys, BOOT_COUNT, &format!("{boot}\n"))?;

    let hostname = hostname.map_or_else(|| format!("ingot-{}", &machine_id[..12]), str::to_owned);
    if let Err(e) = sys.set_hostname(&hostname) {
        crate::warn(
            sys,
            &format!("setting the host name to {hostname}: {e}, ignoring"),
        );
    }
    // Container runtimes copy /etc/hosts into every pod sandbox and fail without one.
    let hosts =
        format!("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}");
    for (path, content) in [
        ("/etc/machine-id", &machine_id),
        ("/etc/hostname", &hostname),
        ("/etc/hosts", &hosts),
    ] {
        if let Err(e) = sys.write_file(path, format!("{content}\n").as_bytes()) {
            crate::warn(sys, &format!("writing {path}: {e}, ignoring"));
        }
    }
    Ok(Identity {
        machine_id,
        boot,
        hostname,
    })
}

/// Applies `net.ipv4.ip_forward = "1"`-style settings through `/proc/sys`, in key order. A setting the
/// kernel rejects (no such key: its module is not loaded) is a warning; the node still boots.
pub fn apply_sysctls(sys: &dyn Sys, sysctls: &BTreeMap<String, String>) -> usize {
    let mut applied = 0;
    for (key, value) in sysctls {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        match sys.write_file(&path, value.as_bytes()) {
            Ok(()) => applied += 1,
            Err(e) => crate::warn(sys, &format!("sysctl {key} = {value}: {e}, ignoring")),
        }
    }
    applied
}

fn read_text(sys: &dyn Sys, path: &'static str) -> Result<Option<String>, Error> {
    match sys.read(Path::new(path)) {
        Ok(b) => Ok(Some(String::from_utf8_lossy(&b).trim().to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::Read(path, e)),
    }
}

fn write_atomic(sys: &dyn Sys, path: &str, content: &str) -> Result<(), Error> {
    sys.write_file_atomic(path, content.as_bytes(), 0o644)
        .map_err(|e| Error::Write(path.to_owned(), e))
}

fn is_machine_id(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && s != "0".repeat(32)
}

/// A random 128-bit id formatted like systemd's (a version 4 UUID without dashes).
fn new_machine_id(sys: &dyn Sys) -> Result<String, Error> {
    let mut b = [0u8; 16];
    sys.random(&mut b).map_err(Error::Random)?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::sys::Errno;
    use crate::sys::fake::FakeSys;

    #[test]
    fn first_boot_makes_an_id_and_later_boots_keep_it_and_count() {
        let sys = FakeSys::new();
        let first = establish_identity(&sys, None).unwrap();
        assert_eq!(first.boot, 1);
        assert!(is_machine_id(&first.machine_id), "{}", first.machine_id);
        assert_eq!(first.hostname, format!("ingot-{}", &first.machine_id[..12]));
        let second = establish_identity(&sys, None).unwrap();
        assert_eq!(second.boot, 2);
        assert_eq!(second.machine_id, first.machine_id);
        assert_eq!(second.hostname, first.hostname);
        assert_eq!(
            sys.calls_matching(&["random"]),
            ["random 16"],
            "the id is drawn once"
        );
        assert_eq!(
            std::fs::read_to_string(sys.host("/etc/machine-id")).unwrap(),
            format!("{}\n", first.machine_id)
        );
        assert_eq!(sys.calls_matching(&["hostname"]).len(), 2);
        let hosts = std::fs::read_to_string(sys.host("/etc/hosts")).unwrap();
        assert!(hosts.starts_with("127.0.0.1\tlocalhost\n"), "{hosts}");
        assert!(
            hosts.ends_with(&format!("127.0.1.1\t{}\n", first.hostname)),
            "{hosts}"
        );
    }

    #[test]
    fn a_configured_hostname_wins_and_a_bad_state_file_is_replaced() {
        let sys = FakeSys::new();
        sys.write(MACHINE_ID, "not-an-id\n");
        sys.write(BOOT_COUNT, "seven\n");
        let id = establish_identity(&sys, Some("worker-1")).unwrap();
        assert_eq!(id.hostname, "worker-1");
        assert_eq!(id.boot, 1);
        assert!(is_machine_id(&id.machine_id));
        let console = sys.console_lines();
        assert!(console[0].contains("is not 32 hex digits"), "{console:?}");
        assert!(console[1].contains("not a number"), "{console:?}");
    }

    #[test]
    fn sysctls_are_written_in_key_order_and_failures_are_warnings() {
        let sys = FakeSys::new();
        sys.fail("write /proc/sys/net/bridge", Errno::NOENT);
        let mut s = BTreeMap::new();
        s.insert("net.ipv4.ip_forward".to_owned(), "1".to_owned());
        s.insert("net.bridge.bridge-nf-call-iptables".to_owned(), "1".to_owned());
        assert_eq!(apply_sysctls(&sys, &s), 1);
        assert_eq!(
            sys.calls_matching(&["write /proc"]),
            [
                "write /proc/sys/net/bridge/bridge-nf-call-iptables 1",
                "write /proc/sys/net/ipv4/ip_forward 1"
            ]
        );
        assert!(sys.console_lines()[0].ends_with("No such file or directory (os error 2), ignoring"));
    }

    #[test]
    fn etc_becomes_an_overlay_over_the_image() {
        let sys = FakeSys::new();
        writable_etc(&sys).unwrap();
        assert_eq!(
            sys.calls_matching(&["mount"]),
            [
                "mount overlay /etc overlay nodev,nosuid lowerdir=/etc,upperdir=/run/ingot/etc/upper,workdir=/run/ingot/etc/work"
            ]
        );
    }
}
