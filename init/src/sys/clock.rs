//! The NTP client's system calls: one UDP socket per query, reading `CLOCK_REALTIME`, stepping it with
//! `clock_settime(2)` and slewing it through the kernel's clock discipline with `adjtimex(2)`.
//!
//! The protocol logic lives in [`crate::clock`]; this file only wraps the calls. rustix has safe calls for
//! reading and setting the clock, std for UDP (its sockets are `SOCK_CLOEXEC`); `adjtimex` has no safe
//! wrapper in either, so it is the one `unsafe` call here.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use rustix::time::{ClockId, Timespec};

const NANOS_PER_SEC: i128 = 1_000_000_000;

/// A UDP socket connected to one NTP server, non-blocking, on a fresh ephemeral port.
///
/// Connected, so the kernel drops datagrams from any other address and reports an ICMP "port
/// unreachable" as `ECONNREFUSED` on the next receive; fresh per query, so the source port is one more
/// thing an off-path forger has to guess.
#[derive(Debug)]
pub struct NtpSocket {
    socket: UdpSocket,
}

impl NtpSocket {
    pub fn connect(server: SocketAddr) -> io::Result<NtpSocket> {
        let local: SocketAddr = match server {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = UdpSocket::bind(local)?;
        socket.set_nonblocking(true)?;
        socket.connect(server)?;
        Ok(NtpSocket { socket })
    }

    /// Sends one datagram; a datagram is sent whole or not at all.
    pub fn send(&self, packet: &[u8]) -> io::Result<()> {
        let sent = self.socket.send(packet)?;
        if sent != packet.len() {
            return Err(io::Error::other(format!("sent {sent} of {} bytes", packet.len())));
        }
        Ok(())
    }

    /// The next waiting datagram with its source, `None` when nothing is waiting. A datagram longer than
    /// `buf` is cut to its length (the caller's buffer is larger than any NTP packet it accepts).
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Option<(usize, SocketAddr)>> {
        loop {
            match self.socket.recv_from(buf) {
                Ok((n, from)) => return Ok(Some((n, from))),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    pub fn fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

/// `CLOCK_REALTIME` as time since the Unix epoch.
pub fn realtime() -> io::Result<Duration> {
    let ts = rustix::time::clock_gettime(ClockId::Realtime);
    timespec_to_duration(ts)
        .ok_or_else(|| io::Error::other(format!("the system clock reads {}s, before 1970", ts.tv_sec)))
}

/// Steps `CLOCK_REALTIME` by `offset_nanos` (read, add, set back to back); returns the time it was set to.
pub fn step_realtime(offset_nanos: i64) -> io::Result<Duration> {
    let now = rustix::time::clock_gettime(ClockId::Realtime);
    let now = i128::from(now.tv_sec) * NANOS_PER_SEC + i128::from(now.tv_nsec);
    let target = now + i128::from(offset_nanos);
    if target < 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the new time would be before 1970",
        ));
    }
    let ts = Timespec {
        tv_sec: i64::try_from(target / NANOS_PER_SEC)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "the new time is out of range"))?,
        // In 0..1e9 because `target` is not negative.
        tv_nsec: (target % NANOS_PER_SEC) as _,
    };
    rustix::time::clock_settime(ClockId::Realtime, ts)?;
    timespec_to_duration(ts).ok_or_else(|| io::Error::other("the new time is out of range"))
}

fn timespec_to_duration(ts: Timespec) -> Option<Duration> {
    let secs = u64::try_from(ts.tv_sec).ok()?;
    let nanos = u32::try_from(ts.tv_nsec).ok()?;
    Some(Duration::new(secs, nanos))
}

/// One update of the kernel's clock discipline (its phase-locked loop, RFC 5905 / Mills' nanokernel).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Discipline {
    /// The measured offset (true time minus ours); the kernel slews it out and adjusts the frequency. It
    /// accepts at most ±0.5 s per update and clamps larger values.
    pub offset_nanos: i64,
    /// The loop's time constant as a power of two seconds; `log2(poll interval)` keeps the loop stable.
    pub time_constant: i64,
    /// The largest error the time may have, in µs; the kernel adds 500 µs/s to it and declares the clock
    /// unsynchronized once it passes 16 s.
    pub max_error_micros: i64,
    /// The estimated error, in µs (informational for readers of `adjtimex`).
    pub est_error_micros: i64,
}

/// Feeds one measurement to the kernel's phase-locked loop and marks the clock synchronized.
///
/// Sets `STA_PLL` (the kernel slews the offset out gradually and learns the frequency error, so the
/// clock keeps time between polls) and clears `STA_UNSYNC`, which turns on the kernel's "11-minute mode":
/// it copies the system time to the RTC every 11 minutes, so the next boot starts close. Offsets are in
/// nanoseconds (`ADJ_NANO`).
pub fn discipline(d: &Discipline) -> io::Result<()> {
    let mut tx = zeroed_timex();
    tx.modes = libc::ADJ_OFFSET
        | libc::ADJ_STATUS
        | libc::ADJ_TIMECONST
        | libc::ADJ_MAXERROR
        | libc::ADJ_ESTERROR
        | libc::ADJ_NANO;
    tx.status = libc::STA_PLL;
    tx.offset = clamp_long(i128::from(d.offset_nanos));
    tx.constant = clamp_long(i128::from(d.time_constant));
    tx.maxerror = clamp_long(i128::from(d.max_error_micros));
    tx.esterror = clamp_long(i128::from(d.est_error_micros));
    adjtimex(&mut tx)?;
    Ok(())
}

fn clamp_long(v: i128) -> libc::c_long {
    let min = i128::from(libc::c_long::MIN);
    let max = i128::from(libc::c_long::MAX);
    // In range after the clamp, so the cast is exact.
    v.clamp(min, max) as libc::c_long
}

fn zeroed_timex() -> libc::timex {
    // SAFETY: `timex` is a C struct of integers (and a `timeval` of integers) and padding; all-zero bytes
    // are a valid value of each field, and `modes = 0` is the read-only request.
    unsafe { std::mem::zeroed() }
}

/// `adjtimex(2)`: applies the modes set in `tx` and fills it with the kernel's state; returns the clock
/// state (`TIME_OK`, `TIME_ERROR` for unsynchronized, …).
fn adjtimex(tx: &mut libc::timex) -> io::Result<i32> {
    // SAFETY: `tx` is a valid, exclusively borrowed `timex` for the duration of the call; the kernel reads
    // the fields selected by `modes` and writes the whole struct back, nothing else. No pointer is kept.
    let state = unsafe { libc::adjtimex(tx) };
    if state < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(state)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_kernel_clock_discipline_without_changing_it() {
        // modes = 0 only reads, which needs no privilege: it checks the struct layout the call uses.
        let mut tx = zeroed_timex();
        let state = adjtimex(&mut tx).unwrap();
        assert!((0..=5).contains(&state), "clock state {state}");
        assert_eq!(tx.modes, 0);
        // The kernel's fixed tolerance is 500 ppm in 16.16 fixed point.
        assert_eq!(tx.tolerance, 500 << 16);
        assert!(tx.tick > 0);
    }

    #[test]
    fn realtime_is_after_the_year_2020() {
        assert!(realtime().unwrap() > Duration::from_secs(1_577_836_800));
    }

    #[test]
    fn a_connected_socket_only_hears_its_server() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let other = UdpSocket::bind("127.0.0.1:0").unwrap();
        let sock = NtpSocket::connect(server.local_addr().unwrap()).unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(sock.recv(&mut buf).unwrap(), None);
        sock.send(b"hello").unwrap();
        let (n, client) = server.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello");
        other.send_to(b"forged", client).unwrap();
        server.send_to(b"reply", client).unwrap();
        let mut got = None;
        for _ in 0..100 {
            if let Some(r) = sock.recv(&mut buf).unwrap() {
                got = Some(r);
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let (n, from) = got.unwrap();
        assert_eq!((&buf[..n], from), (&b"reply"[..], server.local_addr().unwrap()));
        assert_eq!(sock.recv(&mut buf).unwrap(), None);
    }

    #[test]
    fn a_closed_port_is_reported_as_refused() {
        let port = {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.local_addr().unwrap()
        };
        let sock = NtpSocket::connect(port).unwrap();
        sock.send(b"x").unwrap();
        let mut buf = [0u8; 8];
        let mut result = Ok(None);
        for _ in 0..100 {
            result = sock.recv(&mut buf);
            if !matches!(result, Ok(None)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(result.unwrap_err().kind(), io::ErrorKind::ConnectionRefused);
    }
}
