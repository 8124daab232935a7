//! The client over real UDP sockets: against chronyd serving on loopback, against a server that never
//! answers, and against one that answers wrongly. The host's clock is never touched: the client reads the
//! real `CLOCK_REALTIME` but its adjustments go to a recorder. chronyd runs with `-x` (no clock control).
//!
//! The chrony tests need `chronyd` (Debian package `chrony`) and root (chronyd refuses to start
//! otherwise); without them they print why and skip.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::cell::RefCell;
use std::io::Read as _;
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::packet::{NtpTimestamp, Reply};
use super::*;
use crate::sys::Linux;
use crate::sys::clock::realtime;
use crate::sys::fake::FakeSys;

/// An arbitrary `CLOCK_BOOTTIME` for the tests that move time themselves.
const T0: Duration = Duration::from_secs(1000);

/// The real clock, read through; adjustments recorded, and a step moves only the recorder's view.
struct RecordingClock {
    /// What the recorder adds to the real time: a pretend error of the node's clock.
    error: i64,
    log: Rc<RefCell<Vec<String>>>,
}

impl RecordingClock {
    fn new(error: i64) -> (RecordingClock, Rc<RefCell<Vec<String>>>) {
        let log = Rc::new(RefCell::new(Vec::new()));
        (
            RecordingClock {
                error,
                log: log.clone(),
            },
            log,
        )
    }
}

impl SystemClock for RecordingClock {
    fn now(&self) -> std::io::Result<i64> {
        Ok(packet::unix_nanos(realtime()?) + self.error)
    }

    fn step(&mut self, offset: i64) -> std::io::Result<()> {
        self.error += offset;
        self.log.borrow_mut().push(format!("step {offset}"));
        Ok(())
    }

    fn slew(&mut self, d: &Discipline) -> std::io::Result<()> {
        self.log
            .borrow_mut()
            .push(format!("slew {} tc={}", d.offset_nanos, d.time_constant));
        Ok(())
    }
}

struct Chronyd {
    child: Child,
    dir: tempfile::TempDir,
    addr: SocketAddr,
}

impl Chronyd {
    /// Starts chronyd as an NTP server on a free loopback port; `None` when it cannot run here, after
    /// [`ingot_testkit::skip`]ping `test` with the reason.
    fn start(test: &str) -> Option<Chronyd> {
        if !ingot_testkit::require_root(test, "starting chronyd") {
            return None;
        }
        let port = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let conf = format!(
            "port {port}\nbindaddress 127.0.0.1\nallow 127.0.0.1\nlocal stratum 8\ncmdport 0\n\
             bindcmdaddress /\npidfile {d}/chronyd.pid\ndriftfile {d}/drift\n"
        );
        std::fs::write(dir.path().join("chrony.conf"), conf).unwrap();
        let log = std::fs::File::create(dir.path().join("log")).unwrap();
        let spawned = Command::new("chronyd")
            .args(["-d", "-x", "-u", "root", "-f"])
            .arg(dir.path().join("chrony.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn();
        let child = match spawned {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                ingot_testkit::skip(test, ingot_testkit::CHRONYD_MISSING);
                return None;
            }
            Err(e) => panic!("starting chronyd: {e}"),
        };
        let mut chronyd = Chronyd {
            child,
            dir,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        chronyd.wait_until_serving();
        Some(chronyd)
    }

    fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(self.dir.path().join("log")) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Asks with plain requests until chronyd answers (it takes a moment to bind).
    fn wait_until_serving(&mut self) {
        let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
        probe.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("chronyd exited with {status}:\n{}", self.log());
            }
            let _ = probe.send_to(&packet::request(NtpTimestamp(1)), self.addr);
            let mut buf = [0u8; 128];
            if let Ok((n, _)) = probe.recv_from(&mut buf) {
                let r = Reply::parse(&buf[..n]).unwrap();
                if r.stratum != 0 && r.stratum < 16 {
                    return;
                }
            }
        }
        panic!("chronyd did not answer within 10s:\n{}", self.log());
    }
}

impl Drop for Chronyd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the clock in real time like the event loop would, until `done` or `limit`.
fn run_real(clock: &mut Clock, sys: &FakeSys, limit: Duration, done: impl Fn(&Clock) -> bool) {
    let started = Instant::now();
    while started.elapsed() < limit && !done(clock) {
        let now = Linux.boottime();
        let fds = clock.fds();
        clock.wake(sys, now, &fds);
        // While a request is out, look often: the reply's receive time (T4) is read when it is seen.
        let nap = if clock.fds().is_empty() {
            clock
                .deadline()
                .map_or(Duration::from_millis(50), |d| d.saturating_sub(now))
                .min(Duration::from_millis(50))
        } else {
            Duration::from_micros(100)
        };
        std::thread::sleep(nap);
    }
}

#[test]
fn chrony_on_loopback_syncs_the_clock_to_within_milliseconds() {
    let Some(chronyd) = Chronyd::start("chrony_on_loopback_syncs_the_clock_to_within_milliseconds") else {
        return;
    };
    let (recorder, log) = RecordingClock::new(0);
    let mut clock = Clock::with_io(
        vec![chronyd.addr],
        Linux.boottime(),
        Box::new(Udp),
        Box::new(recorder),
    );
    let sys = FakeSys::new();
    run_real(&mut clock, &sys, Duration::from_secs(12), |c| {
        c.boot_outcome().is_some()
    });

    let ClockState::Synced {
        server,
        offset,
        stepped,
        ..
    } = clock.state().clone()
    else {
        panic!(
            "not synced: {:?} {:?}\nchronyd:\n{}",
            clock.state(),
            sys.console_lines(),
            chronyd.log()
        );
    };
    eprintln!("chronyd at {}: offset {offset}", chronyd.addr);
    assert_eq!(server, chronyd.addr);
    // chronyd reads the same clock we do; what is left is timestamping noise.
    assert!(offset.as_nanos().abs() < 5 * MS, "offset {offset}");
    assert!(!stepped);
    let outcome = clock.boot_outcome().unwrap();
    assert!(
        outcome.starts_with(&format!("synced server={} offset=", chronyd.addr))
            && outcome.ends_with(" slewed"),
        "{outcome}"
    );
    let log = log.borrow();
    assert_eq!(log.len(), 1, "{log:?}");
    let slew: i64 = log[0]
        .strip_prefix("slew ")
        .unwrap()
        .strip_suffix(" tc=6")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(slew, offset.as_nanos());
    assert_eq!(sys.console_lines(), Vec::<String>::new());
}

#[test]
fn chrony_corrects_a_clock_three_seconds_ahead_by_stepping_it() {
    let Some(chronyd) = Chronyd::start("chrony_corrects_a_clock_three_seconds_ahead_by_stepping_it") else {
        return;
    };
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (recorder, log) = RecordingClock::new(3 * SEC);
    let servers = vec![chronyd.addr, silent.local_addr().unwrap()];
    let mut clock = Clock::with_io(servers, Linux.boottime(), Box::new(Udp), Box::new(recorder));
    let sys = FakeSys::new();
    run_real(&mut clock, &sys, Duration::from_secs(12), |c| {
        c.boot_outcome().is_some()
    });

    let ClockState::Synced { offset, stepped, .. } = clock.state().clone() else {
        panic!("not synced: {:?}\nchronyd:\n{}", clock.state(), chronyd.log());
    };
    assert!((offset.as_nanos() + 3 * SEC).abs() < 5 * MS, "offset {offset}");
    assert!(stepped);
    let log = log.borrow();
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(log[0], format!("step {}", offset.as_nanos()));
    assert_eq!(log[1], "slew 0 tc=6");
    assert_eq!(
        sys.console_lines(),
        [format!(
            "ingot: warning NTP server {}: no answer within 1s, ignoring it this time",
            silent.local_addr().unwrap()
        )]
    );
}

/// Runs the clock against nobody with virtual time: the timeouts pass at once, the sockets are real.
#[test]
fn a_server_that_never_answers_leaves_the_rtc_time_and_retries() {
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    silent.set_nonblocking(true).unwrap();
    let (recorder, log) = RecordingClock::new(0);
    let mut clock = Clock::with_io(
        vec![silent.local_addr().unwrap()],
        T0,
        Box::new(Udp),
        Box::new(recorder),
    );
    let sys = FakeSys::new();
    while let Some(d) = clock.deadline().filter(|d| *d <= T0 + Duration::from_secs(100)) {
        let fds = clock.fds();
        clock.wake(&sys, d, &fds);
    }
    assert_eq!(
        clock.boot_outcome().as_deref(),
        Some("unsynced: no NTP server answered within 10s, keeping the RTC time")
    );
    assert_eq!(
        clock.state(),
        &ClockState::Unsynced {
            attempts: 6,
            since: T0
        }
    );
    // Rounds at 0, 2, 6, 14, 30 and 62 s; the next one is scheduled 64 s after the last.
    assert_eq!(clock.deadline(), Some(T0 + Duration::from_secs(126)));
    let lines = sys.console_lines();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("ingot: warning no NTP server answered within 10s, keeping the RTC time 20")
            && lines[0].ends_with("Z, retrying in the background"),
        "{}",
        lines[0]
    );
    assert!(log.borrow().is_empty());

    // The server saw six proper requests, each with its own nonce, each from a fresh port.
    let mut nonces = std::collections::BTreeSet::new();
    let mut ports = std::collections::BTreeSet::new();
    let mut buf = [0u8; 128];
    while let Ok((n, from)) = silent.recv_from(&mut buf) {
        assert_eq!(n, 48);
        assert_eq!(buf[0], 0x23);
        nonces.insert(buf[40..48].to_vec());
        ports.insert(from.port());
    }
    assert_eq!((nonces.len(), ports.len()), (6, 6));
}

/// One request from the client to a server the test plays, answered with a reply `edit` spoils (from
/// another port with `other_port`); returns the clock after the round.
fn answer_once(edit: impl Fn(&mut Reply), other_port: bool) -> (Clock, FakeSys, Rc<RefCell<Vec<String>>>) {
    let server = UdpSocket::bind("127.0.0.1:0").unwrap();
    server.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let (recorder, log) = RecordingClock::new(0);
    let mut clock = Clock::with_io(
        vec![server.local_addr().unwrap()],
        T0,
        Box::new(Udp),
        Box::new(recorder),
    );
    let sys = FakeSys::new();
    clock.wake(&sys, T0, &[]);
    let mut buf = [0u8; 128];
    let (n, client) = server.recv_from(&mut buf).unwrap();
    let request = Reply::parse(&buf[..n]).unwrap();
    let now = NtpTimestamp::from_unix_nanos(packet::unix_nanos(realtime().unwrap()));
    let mut reply = Reply {
        leap: 0,
        version: 4,
        mode: 4,
        stratum: 2,
        poll: 6,
        precision: -20,
        root_delay: 0,
        root_dispersion: 0,
        reference_id: [127, 0, 0, 1],
        reference: now,
        origin: request.transmit,
        receive: now,
        transmit: now,
    };
    edit(&mut reply);
    let other = UdpSocket::bind("127.0.0.1:0").unwrap();
    let sender = if other_port { &other } else { &server };
    sender.send_to(&reply.to_bytes(), client).unwrap();
    let started = Instant::now();
    while !clock.fds().is_empty() && started.elapsed() < Duration::from_millis(300) {
        let fds = clock.fds();
        clock.wake(&sys, T0 + Duration::from_millis(1), &fds);
        std::thread::sleep(Duration::from_millis(1));
    }
    let fds = clock.fds();
    clock.wake(&sys, T0 + REPLY_TIMEOUT, &fds);
    (clock, sys, log)
}

#[test]
fn a_hostile_server_is_not_believed() {
    // The same exchange with an honest reply syncs: the rejections below are about the content.
    let (clock, _, log) = answer_once(|_| {}, false);
    assert!(
        matches!(clock.state(), ClockState::Synced { .. }),
        "{:?}",
        clock.state()
    );
    assert_eq!(log.borrow().len(), 1);

    type Spoil = Box<dyn Fn(&mut Reply)>;
    let cases: Vec<(Spoil, &str)> = vec![
        (
            Box::new(|r| r.origin = NtpTimestamp(r.origin.0 ^ 0x8000)),
            "origin timestamp does not echo our request, expected a reply to it (stale or forged)",
        ),
        (
            Box::new(|r| {
                r.stratum = 0;
                r.reference_id = *b"DENY";
            }),
            "kiss-o'-death \"DENY\", expected time: the server refuses to serve it",
        ),
        (
            Box::new(|r| r.stratum = 16),
            "stratum 16, expected 1 to 15 (16: the server is not synchronized)",
        ),
        (
            Box::new(|r| r.leap = 3),
            "leap indicator 3, expected a synchronized server",
        ),
    ];
    for (edit, why) in cases {
        let (clock, sys, log) = answer_once(edit, false);
        assert!(
            matches!(clock.state(), ClockState::Unsynced { attempts: 1, .. }),
            "{why}: {:?}",
            clock.state()
        );
        assert!(log.borrow().is_empty(), "{why}");
        let lines = sys.console_lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].ends_with(&format!(": reply rejected: {why}, ignoring it this time")),
            "{}",
            lines[0]
        );
    }

    // A good reply from another port never reaches the client's connected socket.
    let (clock, sys, log) = answer_once(|_| {}, true);
    assert!(matches!(clock.state(), ClockState::Unsynced { attempts: 1, .. }));
    assert!(log.borrow().is_empty());
    assert_eq!(sys.console_lines(), Vec::<String>::new());
}
