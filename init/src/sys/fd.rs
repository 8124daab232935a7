//! Descriptor I/O that works the same on the node and in the tests: the pipes services write to, log
//! files, readiness-check sockets and `poll(2)`. [`super::Linux`] and the recording fake
//! both use these on real descriptors (the fake on paths under its temporary root), so they are tested
//! against real kernel objects: pipes, files, listening TCP and Unix sockets.
//!
//! Every descriptor opened here is close-on-exec; the ones PID 1 reads in its loop are nonblocking.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::Duration;

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use rustix::net::{AddressFamily, SendFlags, SocketAddrUnix, SocketFlags, SocketType};

/// What one nonblocking read found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Read {
    /// This many bytes were read.
    Data(usize),
    /// Nothing to read now.
    WouldBlock,
    /// The writing side is closed and everything was read.
    Eof,
}

/// Reads what is there from a nonblocking descriptor (a pipe, a socket). `buf` must not be empty.
pub fn read_nonblocking(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Read> {
    if buf.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "reading into an empty buffer",
        ));
    }
    loop {
        match rustix::io::read(fd, &mut *buf) {
            Ok(0) => return Ok(Read::Eof),
            Ok(n) => return Ok(Read::Data(n)),
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN) => return Ok(Read::WouldBlock),
            Err(e) => return Err(e.into()),
        }
    }
}

/// A pipe for a child's stdout and stderr: `(read, write)`. The read end is close-on-exec and nonblocking
/// (PID 1 reads it in its loop); the write end is close-on-exec and blocking: the spawn duplicates it onto
/// the child's descriptors 1 and 2, which clears close-on-exec there, and a child must not see `EAGAIN`.
pub fn output_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    rustix::fs::fcntl_setfl(&read, OFlags::NONBLOCK)?;
    Ok((read, write))
}

fn timespec(d: Duration) -> Timespec {
    Timespec {
        tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(d.subsec_nanos()),
    }
}

/// `poll(2)` for input on `fds` for at most `timeout` (`None`: until one is readable). Returns the
/// descriptors that are readable, at end of file, in error or not open: their owner finds out which by
/// reading. Interrupted: nothing is readable. Negative descriptors are ignored.
pub fn poll_readable(fds: &[RawFd], timeout: Option<Duration>) -> io::Result<Vec<RawFd>> {
    let open: Vec<RawFd> = fds.iter().copied().filter(|fd| *fd >= 0).collect();
    let borrowed: Vec<BorrowedFd<'_>> = open
        .iter()
        // SAFETY: the event loop passes the descriptors its pollables hold open across this call (they own
        // them and cannot run while we wait), and `fd` is not -1. A number closed behind our back would at
        // worst be reported `POLLNVAL`, which we hand back to its owner.
        .map(|&fd| unsafe { BorrowedFd::borrow_raw(fd) })
        .collect();
    let mut pfds: Vec<PollFd<'_>> = borrowed
        .iter()
        .map(|fd| PollFd::from_borrowed_fd(*fd, PollFlags::IN))
        .collect();
    let ts = timeout.map(timespec);
    match rustix::event::poll(&mut pfds, ts.as_ref()) {
        Ok(_) => {}
        Err(Errno::INTR) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    }
    Ok(pfds
        .iter()
        .zip(&open)
        .filter(|(p, _)| !p.revents().is_empty())
        .map(|(_, fd)| *fd)
        .collect())
}

/// A file opened for appending (service logs).
#[derive(Debug)]
pub struct AppendFile {
    fd: OwnedFd,
}

impl AppendFile {
    /// Opens or creates `path` (mode 0640) for appending, close-on-exec.
    pub fn open(path: &Path) -> io::Result<AppendFile> {
        let flags = OFlags::WRONLY | OFlags::APPEND | OFlags::CREATE | OFlags::CLOEXEC | OFlags::NOCTTY;
        let fd = rustix::fs::open(path, flags, Mode::from_raw_mode(0o640))?;
        Ok(AppendFile { fd })
    }

    /// The file's current size.
    pub fn len(&self) -> io::Result<u64> {
        let st = rustix::fs::fstat(&self.fd)?;
        Ok(u64::try_from(st.st_size).unwrap_or(0))
    }

    pub fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        write_all(self.fd.as_fd(), buf)
    }
}

fn write_all(fd: BorrowedFd<'_>, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match rustix::io::write(fd, buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = buf.get(n..).unwrap_or_default(),
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Whether a Unix stream socket at `path` accepts a connection now (without waiting: a full backlog
/// counts as not accepting).
pub fn connect_unix(path: &Path) -> io::Result<()> {
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    rustix::net::connect(&fd, &SocketAddrUnix::new(path)?)?;
    Ok(())
}

/// A nonblocking TCP connection (readiness checks over HTTP).
#[derive(Debug)]
pub struct TcpConn {
    fd: OwnedFd,
}

impl TcpConn {
    /// Starts connecting to `addr` without waiting for the connection to complete.
    pub fn connect(addr: SocketAddr) -> io::Result<TcpConn> {
        let family = match addr {
            SocketAddr::V4(_) => AddressFamily::INET,
            SocketAddr::V6(_) => AddressFamily::INET6,
        };
        let fd = rustix::net::socket_with(
            family,
            SocketType::STREAM,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )?;
        match rustix::net::connect(&fd, &addr) {
            Ok(()) | Err(Errno::INPROGRESS | Errno::INTR) => Ok(TcpConn { fd }),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether the connection is established: `Ok(false)` while it is still in progress, the error when it
    /// failed (refused, unreachable).
    pub fn connected(&self) -> io::Result<bool> {
        let mut pfd = [PollFd::new(&self.fd, PollFlags::OUT)];
        match rustix::event::poll(&mut pfd, Some(&timespec(Duration::ZERO))) {
            Ok(_) => {}
            Err(Errno::INTR) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
        if pfd[0].revents().is_empty() {
            return Ok(false);
        }
        match rustix::net::sockopt::socket_error(&self.fd)? {
            Ok(()) => Ok(true),
            Err(e) => Err(e.into()),
        }
    }

    /// Sends what the socket takes now; 0 when its buffer is full.
    pub fn send(&self, buf: &[u8]) -> io::Result<usize> {
        match rustix::net::send(&self.fd, buf, SendFlags::NOSIGNAL) {
            Ok(n) => Ok(n),
            Err(Errno::AGAIN | Errno::INTR) => Ok(0),
            Err(e) => Err(e.into()),
        }
    }

    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Read> {
        read_nonblocking(self.fd.as_fd(), buf)
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use std::io::Write as _;

    use super::*;

    #[test]
    fn pipe_reads_data_then_would_block_then_eof() {
        let (r, w) = output_pipe().unwrap();
        let mut w = std::fs::File::from(w);
        let mut buf = [0u8; 16];
        assert_eq!(read_nonblocking(r.as_fd(), &mut buf).unwrap(), Read::WouldBlock);
        w.write_all(b"hello\n").unwrap();
        assert_eq!(
            poll_readable(&[r.as_raw_fd()], Some(Duration::from_secs(5))).unwrap(),
            [r.as_raw_fd()]
        );
        assert_eq!(read_nonblocking(r.as_fd(), &mut buf).unwrap(), Read::Data(6));
        assert_eq!(&buf[..6], b"hello\n");
        drop(w);
        assert_eq!(read_nonblocking(r.as_fd(), &mut buf).unwrap(), Read::Eof);
    }

    #[test]
    fn both_pipe_ends_are_close_on_exec_and_only_the_read_end_nonblocking() {
        let (r, w) = output_pipe().unwrap();
        for fd in [&r, &w] {
            assert!(
                rustix::io::fcntl_getfd(fd)
                    .unwrap()
                    .contains(rustix::io::FdFlags::CLOEXEC)
            );
        }
        assert!(rustix::fs::fcntl_getfl(&r).unwrap().contains(OFlags::NONBLOCK));
        assert!(!rustix::fs::fcntl_getfl(&w).unwrap().contains(OFlags::NONBLOCK));
    }

    #[test]
    fn poll_times_out_with_nothing_readable() {
        let (r, _w) = output_pipe().unwrap();
        let start = std::time::Instant::now();
        let ready = poll_readable(&[r.as_raw_fd(), -1], Some(Duration::from_millis(30))).unwrap();
        assert!(ready.is_empty());
        assert!(start.elapsed() >= Duration::from_millis(25));
    }

    #[test]
    fn append_file_appends_and_reports_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.log");
        let mut f = AppendFile::open(&p).unwrap();
        f.write_all(b"one\n").unwrap();
        drop(f);
        let mut f = AppendFile::open(&p).unwrap();
        assert_eq!(f.len().unwrap(), 4);
        f.write_all(b"two\n").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"one\ntwo\n");
    }

    #[test]
    fn unix_connect_succeeds_only_with_a_listener() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.sock");
        assert!(connect_unix(&p).is_err());
        let _l = std::os::unix::net::UnixListener::bind(&p).unwrap();
        connect_unix(&p).unwrap();
    }

    #[test]
    fn tcp_connects_sends_and_receives_against_a_real_listener() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let conn = TcpConn::connect(l.local_addr().unwrap()).unwrap();
        let (mut server, _) = l.accept().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !conn.connected().unwrap() {
            assert!(std::time::Instant::now() < deadline);
        }
        assert_eq!(conn.send(b"ping").unwrap(), 4);
        let mut got = [0u8; 4];
        std::io::Read::read_exact(&mut server, &mut got).unwrap();
        assert_eq!(&got, b"ping");
        let mut buf = [0u8; 8];
        assert_eq!(conn.recv(&mut buf).unwrap(), Read::WouldBlock);
        server.write_all(b"pong").unwrap();
        drop(server);
        poll_readable(&[conn.raw_fd()], Some(Duration::from_secs(5))).unwrap();
        assert_eq!(conn.recv(&mut buf).unwrap(), Read::Data(4));
        assert_eq!(conn.recv(&mut buf).unwrap(), Read::Eof);
    }

    #[test]
    fn tcp_connect_to_a_closed_port_fails() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        match TcpConn::connect(addr) {
            Err(_) => {}
            Ok(conn) => {
                let deadline = std::time::Instant::now() + Duration::from_secs(5);
                loop {
                    match conn.connected() {
                        Err(e) => {
                            assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
                            break;
                        }
                        Ok(true) => panic!("connected to a closed port"),
                        Ok(false) => assert!(std::time::Instant::now() < deadline),
                    }
                }
            }
        }
    }
}
