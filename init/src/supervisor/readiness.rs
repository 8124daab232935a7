//! Readiness checks: how often they run, and the HTTP one (URL, request, status line, a nonblocking
//! probe the event loop drives).
//!
//! A daemon's check runs every [`FIRST_INTERVAL`] for the first [`FAST_PERIOD`] after it started (a socket or
//! file check costs microseconds, and every step of delay here is boot time), then at intervals doubling up
//! to [`MAX_INTERVAL`]. After [`WARN_AFTER`] without success a warning is printed and the service shows as
//! `running` (not `ready`); checking goes on at [`MAX_INTERVAL`], so dependents still start once it passes.
//! A command check gets [`COMMAND_TIMEOUT`] before its process group is killed; an HTTP check
//! [`HTTP_TIMEOUT`] for connecting, sending and reading the status line.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::sys::fd::{Read, TcpConn};

pub const FIRST_INTERVAL: Duration = Duration::from_millis(100);
pub const MAX_INTERVAL: Duration = Duration::from_secs(1);
pub const FAST_PERIOD: Duration = Duration::from_secs(10);
pub const WARN_AFTER: Duration = Duration::from_secs(60);
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(1);
/// While an HTTP check connects, the loop looks again this often (completion is not a readable event).
pub const HTTP_CONNECT_POLL: Duration = Duration::from_millis(10);
/// The response bytes kept while looking for the end of the status line.
const MAX_STATUS_LINE: usize = 512;

/// The interval after `current`, `checking` for this long already.
pub fn next_interval(current: Duration, checking: Duration) -> Duration {
    if checking < FAST_PERIOD {
        FIRST_INTERVAL
    } else {
        (current * 2).min(MAX_INTERVAL)
    }
}

/// A parsed `http://host[:port][/path]` readiness URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpTarget {
    pub addr: SocketAddr,
    /// For the `Host` header, as written in the URL.
    pub host: String,
    /// Path and query, at least `/`.
    pub path: String,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("expected a URL starting with http://")]
    Scheme,
    #[error("the host must be a loopback IP address or localhost (PID 1 does no name lookups)")]
    Host,
    #[error("expected a port number from 1 to 65535 after the ':'")]
    Port,
}

impl HttpTarget {
    pub fn parse(url: &str) -> Result<HttpTarget, UrlError> {
        let rest = url.strip_prefix("http://").ok_or(UrlError::Scheme)?;
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, "/"),
        };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or(UrlError::Host)?;
            match after {
                "" => (h, None),
                p => (h, Some(p.strip_prefix(':').ok_or(UrlError::Port)?)),
            }
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        let port = match port {
            None => 80,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 => n,
                _ => return Err(UrlError::Port),
            },
        };
        let ip = if host.eq_ignore_ascii_case("localhost") {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            host.parse::<IpAddr>().map_err(|_| UrlError::Host)?
        };
        if !ip.is_loopback() {
            return Err(UrlError::Host);
        }
        Ok(HttpTarget {
            addr: SocketAddr::new(ip, port),
            host: authority.to_owned(),
            path: path.to_owned(),
        })
    }

    /// The request: HTTP/1.0, so the server closes the connection after answering.
    pub fn request(&self) -> Vec<u8> {
        format!(
            "GET {} HTTP/1.0\r\nHost: {}\r\nUser-Agent: ingot-init\r\nConnection: close\r\n\r\n",
            self.path, self.host
        )
        .into_bytes()
    }
}

/// The status code of a response whose status line is complete in `head`; `Some(Err)` when the line is
/// complete but not HTTP, `None` while it is incomplete.
pub fn status_code(head: &[u8]) -> Option<Result<u16, ()>> {
    let end = head.iter().position(|&b| b == b'\n')?;
    let line = head.get(..end)?;
    let line = std::str::from_utf8(line).map_err(|_| ()).ok();
    let code = line.and_then(|l| {
        let mut parts = l.split(' ');
        let version = parts.next()?;
        let code = parts.next()?.trim_end_matches('\r');
        (version.starts_with("HTTP/1.") && code.len() == 3)
            .then(|| code.parse::<u16>().ok())
            .flatten()
    });
    Some(code.ok_or(()))
}

/// One HTTP readiness check in progress.
#[derive(Debug)]
pub struct HttpProbe {
    conn: TcpConn,
    request: Vec<u8>,
    sent: usize,
    response: Vec<u8>,
    /// When the check counts as failed.
    pub deadline: Duration,
}

impl HttpProbe {
    /// Starts connecting. Errors (no such port: refused at once on loopback) mean the check failed.
    pub fn start(target: &HttpTarget, now: Duration) -> std::io::Result<HttpProbe> {
        Ok(HttpProbe {
            conn: TcpConn::connect(target.addr)?,
            request: target.request(),
            sent: 0,
            response: Vec::new(),
            deadline: now + HTTP_TIMEOUT,
        })
    }

    pub fn fd(&self) -> std::os::fd::RawFd {
        self.conn.raw_fd()
    }

    /// Whether the probe waits for the connection or for room to send (the loop must look again soon).
    pub fn sending(&self) -> bool {
        self.sent < self.request.len()
    }

    /// Moves the check on without blocking: `None` while it is in progress, then whether it passed (a
    /// 2xx status) or why not.
    pub fn advance(&mut self, now: Duration) -> Option<Result<(), String>> {
        match self.try_advance() {
            Ok(None) if now >= self.deadline => Some(Err(format!(
                "no answer within {:.1}s",
                HTTP_TIMEOUT.as_secs_f64()
            ))),
            Ok(r) => r,
            Err(e) => Some(Err(e.to_string())),
        }
    }

    fn try_advance(&mut self) -> std::io::Result<Option<Result<(), String>>> {
        while self.sending() {
            if self.sent == 0 && !self.conn.connected()? {
                return Ok(None);
            }
            let n = self
                .conn
                .send(self.request.get(self.sent..).unwrap_or_default())?;
            if n == 0 {
                return Ok(None);
            }
            self.sent += n;
        }
        let mut buf = [0u8; 256];
        loop {
            match self.conn.recv(&mut buf)? {
                Read::Data(n) => {
                    let room = MAX_STATUS_LINE.saturating_sub(self.response.len());
                    self.response
                        .extend_from_slice(buf.get(..n.min(room)).unwrap_or_default());
                    if let Some(r) = self.verdict() {
                        return Ok(Some(r));
                    }
                    if self.response.len() >= MAX_STATUS_LINE {
                        return Ok(Some(Err("the status line is too long".to_owned())));
                    }
                }
                Read::WouldBlock => return Ok(None),
                Read::Eof => {
                    return Ok(Some(self.verdict().unwrap_or_else(|| {
                        Err("the connection closed before a status line".to_owned())
                    })));
                }
            }
        }
    }

    fn verdict(&self) -> Option<Result<(), String>> {
        Some(match status_code(&self.response)? {
            Ok(code) if (200..300).contains(&code) => Ok(()),
            Ok(code) => Err(format!("status {code}")),
            Err(()) => Err("the answer is not HTTP".to_owned()),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::io::{Read as _, Write as _};

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn parses_loopback_urls() {
        let t = HttpTarget::parse("http://127.0.0.1:10248/healthz").unwrap();
        assert_eq!(t.addr, "127.0.0.1:10248".parse().unwrap());
        assert_eq!(t.path, "/healthz");
        assert_eq!(t.host, "127.0.0.1:10248");
        let t = HttpTarget::parse("http://localhost").unwrap();
        assert_eq!(t.addr, "127.0.0.1:80".parse().unwrap());
        assert_eq!(t.path, "/");
        let t = HttpTarget::parse("http://[::1]:8080/a?b=c").unwrap();
        assert_eq!(t.addr, "[::1]:8080".parse().unwrap());
        assert_eq!(t.path, "/a?b=c");
        assert_eq!(
            String::from_utf8(t.request()).unwrap(),
            "GET /a?b=c HTTP/1.0\r\nHost: [::1]:8080\r\nUser-Agent: ingot-init\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn rejects_what_it_cannot_check_without_lookups() {
        assert_eq!(HttpTarget::parse("https://127.0.0.1/"), Err(UrlError::Scheme));
        assert_eq!(HttpTarget::parse("http://kube.local:80/"), Err(UrlError::Host));
        assert_eq!(HttpTarget::parse("http://10.0.0.1:80/"), Err(UrlError::Host));
        assert_eq!(HttpTarget::parse("http://127.0.0.1:0/"), Err(UrlError::Port));
        assert_eq!(HttpTarget::parse("http://127.0.0.1:x/"), Err(UrlError::Port));
        assert_eq!(HttpTarget::parse("http://[::1/"), Err(UrlError::Host));
    }

    #[test]
    fn reads_status_lines() {
        assert_eq!(status_code(b"HTTP/1.1 200 OK\r\n"), Some(Ok(200)));
        assert_eq!(status_code(b"HTTP/1.0 503\r\nx"), Some(Ok(503)));
        assert_eq!(status_code(b"HTTP/1.1 200 OK"), None);
        assert_eq!(status_code(b"SSH-2.0-OpenSSH\r\n"), Some(Err(())));
        assert_eq!(status_code(b"HTTP/1.1 2000 OK\r\n"), Some(Err(())));
    }

    #[test]
    fn checks_stay_fast_for_ten_seconds_then_double_to_one_second() {
        assert_eq!(
            next_interval(FIRST_INTERVAL, Duration::from_millis(9_900)),
            FIRST_INTERVAL
        );
        let mut i = FIRST_INTERVAL;
        let mut seen = vec![i.as_millis()];
        for _ in 0..5 {
            i = next_interval(i, FAST_PERIOD);
            seen.push(i.as_millis());
        }
        assert_eq!(seen, [100, 200, 400, 800, 1000, 1000]);
    }

    proptest! {
        #[test]
        fn url_parser_never_panics(s in "\\PC{0,60}") {
            let _ = HttpTarget::parse(&s);
            let _ = HttpTarget::parse(&format!("http://{s}"));
        }

        #[test]
        fn status_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = status_code(&bytes);
        }

        #[test]
        fn any_loopback_port_and_path_round_trip(port in 1u16.., path in "(/[a-z0-9]{0,8}){1,3}") {
            let t = HttpTarget::parse(&format!("http://127.0.0.1:{port}{path}")).unwrap();
            prop_assert_eq!(t.addr.port(), port);
            prop_assert_eq!(t.path, path);
        }
    }

    /// Serves one connection with `answer` after reading the request; returns the request.
    fn serve_once(answer: &'static [u8]) -> (SocketAddr, std::thread::JoinHandle<Vec<u8>>) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let h = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 256];
            while !req.ends_with(b"\r\n\r\n") {
                let n = s.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&buf[..n]);
            }
            s.write_all(answer).unwrap();
            req
        });
        (addr, h)
    }

    fn run_probe(addr: SocketAddr) -> Result<(), String> {
        let target = HttpTarget::parse(&format!("http://{addr}/healthz")).unwrap();
        let start = std::time::Instant::now();
        let now = || Duration::from_millis(u64::try_from(start.elapsed().as_millis()).unwrap());
        let mut probe = HttpProbe::start(&target, now()).unwrap();
        loop {
            if let Some(r) = probe.advance(now()) {
                return r;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn probe_passes_on_2xx_against_a_real_server() {
        let (addr, h) = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        assert_eq!(run_probe(addr), Ok(()));
        let req = String::from_utf8(h.join().unwrap()).unwrap();
        assert!(req.starts_with("GET /healthz HTTP/1.0\r\n"), "{req}");
    }

    #[test]
    fn probe_fails_on_other_statuses_refusals_and_silence() {
        let (addr, h) = serve_once(b"HTTP/1.1 500 Internal Server Error\r\n\r\n");
        assert_eq!(run_probe(addr), Err("status 500".to_owned()));
        h.join().unwrap();

        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let target = HttpTarget::parse(&format!("http://{closed}/")).unwrap();
        let refused = match HttpProbe::start(&target, Duration::ZERO) {
            Err(e) => e.to_string(),
            Ok(mut p) => loop {
                if let Some(r) = p.advance(Duration::ZERO) {
                    break r.unwrap_err();
                }
            },
        };
        assert!(refused.contains("refused"), "{refused}");

        // Accepts but never answers: fails at the deadline.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let target = HttpTarget::parse(&format!("http://{}/", l.local_addr().unwrap())).unwrap();
        let mut p = HttpProbe::start(&target, Duration::ZERO).unwrap();
        let _conn = l.accept().unwrap();
        assert_eq!(p.advance(Duration::from_millis(10)), None);
        assert_eq!(
            p.advance(HTTP_TIMEOUT),
            Some(Err("no answer within 1.0s".to_owned()))
        );
    }
}
