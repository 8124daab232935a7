//! What the client does to the outside world, as two small traits: reaching servers ([`Transport`]) and
//! reading and adjusting the system clock ([`SystemClock`]). On the node they are UDP sockets and the
//! kernel's clock ([`Udp`], [`Kernel`], both thin over [`crate::sys::clock`]); the tests script replies
//! and record the adjustments instead of applying them, so no test ever changes the host's clock.

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;

use crate::sys::clock::{self as sys_clock, Discipline, NtpSocket};

/// A way to exchange datagrams with NTP servers.
pub trait Transport {
    /// A fresh channel to `server` for one request and its reply.
    fn open(&mut self, server: SocketAddr) -> io::Result<Box<dyn Channel>>;
}

/// One open request/reply channel; dropping it closes it.
pub trait Channel {
    /// The descriptor the event loop watches for the reply.
    fn fd(&self) -> RawFd;
    fn send(&mut self, packet: &[u8]) -> io::Result<()>;
    /// The next waiting datagram and its source; `None` when nothing is waiting.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<(usize, SocketAddr)>>;
}

/// The clock being disciplined.
pub trait SystemClock {
    /// `CLOCK_REALTIME` in nanoseconds since the Unix epoch.
    fn now(&self) -> io::Result<i64>;
    /// Jumps the clock by `offset` nanoseconds.
    fn step(&mut self, offset: i64) -> io::Result<()>;
    /// Hands one measurement to the kernel's phase-locked loop (slews; marks the clock synchronized).
    fn slew(&mut self, discipline: &Discipline) -> io::Result<()>;
}

/// UDP on the node: a new connected socket per request.
#[derive(Debug, Default)]
pub struct Udp;

impl Transport for Udp {
    fn open(&mut self, server: SocketAddr) -> io::Result<Box<dyn Channel>> {
        Ok(Box::new(NtpSocket::connect(server)?))
    }
}

impl Channel for NtpSocket {
    fn fd(&self) -> RawFd {
        NtpSocket::fd(self)
    }

    fn send(&mut self, packet: &[u8]) -> io::Result<()> {
        NtpSocket::send(self, packet)
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<(usize, SocketAddr)>> {
        NtpSocket::recv(self, buf)
    }
}

/// The kernel's `CLOCK_REALTIME`.
#[derive(Debug, Default)]
pub struct Kernel;

impl SystemClock for Kernel {
    fn now(&self) -> io::Result<i64> {
        Ok(super::packet::unix_nanos(sys_clock::realtime()?))
    }

    fn step(&mut self, offset: i64) -> io::Result<()> {
        sys_clock::step_realtime(offset).map(|_| ())
    }

    fn slew(&mut self, discipline: &Discipline) -> io::Result<()> {
        sys_clock::discipline(discipline)
    }
}
