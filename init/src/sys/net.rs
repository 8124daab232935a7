//! Sockets for the network configuration ([`crate::net`]): the route netlink socket, the DHCP client's UDP
//! socket, randomness for transaction ids, the host name, and the atomic file replacement `resolv.conf`
//! needs. These are tested against the real kernel (network namespaces) rather than through the
//! [`super::Sys`] fake: what matters is what the kernel and a real DHCP server make of them.
//!
//! Every descriptor is close-on-exec; the DHCP socket is non-blocking (the event loop polls it), the
//! netlink socket blocks with a receive timeout (the kernel answers route requests synchronously).

use std::ffi::CString;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::Duration;

use rustix::fs::{Mode, OFlags};
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType, ipproto, netlink, sockopt};

/// How long a netlink request may wait for the kernel's answer.
const NETLINK_TIMEOUT: Duration = Duration::from_secs(2);

/// A `NETLINK_ROUTE` socket bound to an automatically chosen port.
#[derive(Debug)]
pub struct Netlink {
    fd: OwnedFd,
}

impl Netlink {
    pub fn open() -> io::Result<Netlink> {
        let fd = rustix::net::socket_with(
            AddressFamily::NETLINK,
            SocketType::RAW,
            SocketFlags::CLOEXEC,
            None, // NETLINK_ROUTE is protocol 0
        )?;
        rustix::net::bind(&fd, &netlink::SocketAddrNetlink::new(0, 0))?;
        sockopt::set_socket_timeout(&fd, sockopt::Timeout::Recv, Some(NETLINK_TIMEOUT))?;
        // Link dumps of a machine with many interfaces exceed the default receive buffer.
        sockopt::set_socket_recv_buffer_size(&fd, 1 << 20)?;
        Ok(Netlink { fd })
    }

    /// Sends one request to the kernel.
    pub fn send(&self, msg: &[u8]) -> io::Result<()> {
        loop {
            match rustix::net::send(&self.fd, msg, SendFlags::empty()) {
                Ok(n) if n == msg.len() => return Ok(()),
                Ok(_) => return Err(io::Error::new(io::ErrorKind::WriteZero, "short netlink send")),
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Receives one datagram (one or more netlink messages); `TimedOut` when the kernel stays silent.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match rustix::net::recv(&self.fd, &mut *buf, RecvFlags::empty()) {
                Ok((n, _)) => return Ok(n),
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::AGAIN) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no answer within {} s", NETLINK_TIMEOUT.as_secs()),
                    ));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// The DHCP client's socket: UDP `0.0.0.0:68` bound to one interface, allowed to broadcast, shared with
/// the sockets of other interfaces (`SO_REUSEADDR`), non-blocking.
#[derive(Debug)]
pub struct DhcpSocket {
    fd: OwnedFd,
}

pub const DHCP_CLIENT_PORT: u16 = 68;
pub const DHCP_SERVER_PORT: u16 = 67;

impl DhcpSocket {
    pub fn open(ifname: &str) -> io::Result<DhcpSocket> {
        let fd = rustix::net::socket_with(
            AddressFamily::INET,
            SocketType::DGRAM,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            Some(ipproto::UDP),
        )?;
        sockopt::set_socket_reuseaddr(&fd, true)?;
        sockopt::set_socket_broadcast(&fd, true)?;
        bind_to_device(&fd, ifname)?;
        rustix::net::bind(&fd, &SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, DHCP_CLIENT_PORT))?;
        Ok(DhcpSocket { fd })
    }

    pub fn send_to(&self, bytes: &[u8], to: SocketAddrV4) -> io::Result<()> {
        loop {
            match rustix::net::sendto(&self.fd, bytes, SendFlags::empty(), &to) {
                Ok(n) if n == bytes.len() => return Ok(()),
                Ok(_) => return Err(io::Error::new(io::ErrorKind::WriteZero, "short UDP send")),
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// One waiting datagram and its sender; `None` when nothing is waiting.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Option<(usize, Option<SocketAddrV4>)>> {
        loop {
            match rustix::net::recvfrom(&self.fd, &mut *buf, RecvFlags::empty()) {
                Ok((n, _, from)) => {
                    let from = from.and_then(|a| SocketAddrV4::try_from(a).ok());
                    return Ok(Some((n.min(buf.len()), from)));
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::AGAIN) => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        }
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// `SO_BINDTODEVICE`: rustix has no wrapper for it.
fn bind_to_device(fd: &OwnedFd, ifname: &str) -> io::Result<()> {
    let name = CString::new(ifname)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface name contains NUL"))?;
    let bytes = name.as_bytes_with_nul();
    let len = libc::socklen_t::try_from(bytes.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface name too long"))?;
    // SAFETY: `fd` is an open socket we own for the duration of the call; the option value points to
    // `len` initialized bytes (the NUL-terminated name) that outlive the call, and the kernel only reads them.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            bytes.as_ptr().cast(),
            len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// 64 random bits for DHCP transaction ids and retransmission jitter. Never blocks: early in boot the
/// kernel's pool may not be initialized yet, and unpredictability is not a security property here, so the
/// fallback mixes in the boot clock.
pub fn random_u64() -> u64 {
    let mut buf = [0u8; 8];
    let flags = rustix::rand::GetRandomFlags::INSECURE;
    match rustix::rand::getrandom(&mut buf, flags) {
        Ok(8) => u64::from_ne_bytes(buf),
        _ => {
            let ts = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
            let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
            let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
            (secs.rotate_left(32) ^ nanos).wrapping_mul(0x9e37_79b9_7f4a_7c15)
        }
    }
}

/// The kernel's host name (`uname -n`); `None` when unset.
pub fn hostname() -> Option<String> {
    let name = rustix::system::uname().nodename().to_string_lossy().into_owned();
    (!name.is_empty() && name != "(none)").then_some(name)
}

/// Replaces `path` with `contents` so readers see the old or the new file, never a partial one: a
/// temporary file in the same directory, written and fsynced, renamed over `path`, then the directory
/// fsynced. Mode 0644.
pub fn replace_file(path: &Path, contents: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    let result = (|| {
        let fd = rustix::fs::open(&tmp, flags, Mode::from_raw_mode(0o644))?;
        let mut rest = contents;
        while !rest.is_empty() {
            match rustix::io::write(&fd, rest) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "short write")),
                Ok(n) => rest = rest.get(n..).unwrap_or_default(),
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o644))?;
        rustix::fs::fsync(&fd)?;
        drop(fd);
        rustix::fs::rename(&tmp, path)?;
        let dirfd = rustix::fs::open(
            dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        rustix::fs::fsync(&dirfd)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = rustix::fs::unlink(&tmp);
    }
    result
}

/// Test support: network namespaces and waiting for sockets.
#[cfg(test)]
pub mod testing {
    use super::*;

    /// Moves the calling thread (only it: `CLONE_NEWNET` is per thread) into a new, empty network
    /// namespace. Processes it spawns afterwards start in that namespace too.
    pub fn enter_new_network_namespace() -> io::Result<()> {
        // SAFETY: only `NEWNET` is unshared: the file descriptor table and memory stay shared with the
        // other threads, so no thread can observe descriptors it cannot use (the hazard `unshare_unsafe`
        // documents for `FILES`).
        unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) }?;
        Ok(())
    }

    /// Waits until one of `fds` is readable or `timeout` passed.
    pub fn wait_readable(fds: &[RawFd], timeout: Duration) -> io::Result<Vec<RawFd>> {
        use std::os::fd::BorrowedFd;
        // SAFETY: the caller passes descriptors it keeps open for the duration of this call (the
        // pollable's sockets, which it owns and does not close while waiting).
        let borrowed: Vec<BorrowedFd<'_>> = fds
            .iter()
            .map(|&fd| unsafe { BorrowedFd::borrow_raw(fd) })
            .collect();
        let mut pfds: Vec<rustix::event::PollFd<'_>> = borrowed
            .iter()
            .map(|fd| rustix::event::PollFd::new(fd, rustix::event::PollFlags::IN))
            .collect();
        let ts =
            rustix::time::Timespec::try_from(timeout).map_err(|_| io::Error::other("timeout too long"))?;
        match rustix::event::poll(&mut pfds, Some(&ts)) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(pfds
            .iter()
            .zip(fds)
            .filter(|(p, _)| p.revents().contains(rustix::event::PollFlags::IN))
            .map(|(_, fd)| *fd)
            .collect())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn replaces_a_file_atomically_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resolv.conf");
        std::fs::write(&path, "old\n").unwrap();
        replace_file(&path, b"nameserver 10.0.2.3\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "nameserver 10.0.2.3\n");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["resolv.conf"]);
    }

    #[test]
    fn a_missing_directory_is_reported_and_nothing_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let err = replace_file(&dir.path().join("etc/resolv.conf"), b"x").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn random_values_differ() {
        assert_ne!(random_u64(), random_u64());
    }
}
