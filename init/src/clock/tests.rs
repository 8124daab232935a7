//! The client against simulated servers and a simulated clock: time is virtual (`CLOCK_BOOTTIME` moves
//! from one deadline or reply to the next), replies are computed from the true time of a simulated world,
//! and clock adjustments are recorded (a step also moves the simulated clock).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::time::Duration;

use super::packet::{NtpTimestamp, Reply};
use super::*;
use crate::sys::Errno;
use crate::sys::fake::FakeSys;

/// True Unix time at boottime 0 (2026-11-21T16:09:32Z).
const TRUE_START: i64 = 1_795_277_372 * SEC;
const A: &str = "10.0.2.2:123";
const B: &str = "10.0.2.3:123";
const C: &str = "10.0.2.4:123";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

type Edit = Rc<dyn Fn(&mut Reply, &mut SocketAddr)>;

#[derive(Clone)]
enum Server {
    /// Answers correctly; its clock is `ahead` of the true time; the reply comes back after `delay`.
    Good {
        ahead: i64,
        delay: Duration,
    },
    Silent,
    /// A good reply (ahead 0, 20 ms), then `edit` changes it and the address it comes from.
    Edited(Edit),
    /// Sends a forged reply (wrong origin, other time) before the real one.
    ForgedFirst,
}

fn good(ahead: i64) -> Server {
    Server::Good {
        ahead,
        delay: Duration::from_millis(20),
    }
}

fn edited(edit: impl Fn(&mut Reply, &mut SocketAddr) + 'static) -> Server {
    Server::Edited(Rc::new(edit))
}

struct Sent {
    at: Duration,
    server: SocketAddr,
    packet: Vec<u8>,
}

#[derive(Default)]
struct World {
    now: Duration,
    /// Our clock minus the true time.
    local_error: i64,
    next_fd: RawFd,
    open: BTreeSet<RawFd>,
    inbox: BTreeMap<RawFd, VecDeque<(Vec<u8>, SocketAddr)>>,
    in_flight: Vec<(Duration, RawFd, Vec<u8>, SocketAddr)>,
    sent: Vec<Sent>,
    servers: BTreeMap<SocketAddr, Server>,
    open_error: Option<Errno>,
    step_error: Option<Errno>,
    adjustments: Vec<String>,
}

impl World {
    fn true_time(&self, at: Duration) -> i64 {
        TRUE_START + i64::try_from(at.as_nanos()).unwrap()
    }

    fn reply(&self, request: &[u8], ahead: i64, delay: Duration) -> Reply {
        let nonce = NtpTimestamp(u64::from_be_bytes(request[40..48].try_into().unwrap()));
        let t2 = self.true_time(self.now + delay / 2) + ahead;
        Reply {
            leap: 0,
            version: 4,
            mode: 4,
            stratum: 2,
            poll: 6,
            precision: -20,
            root_delay: 0,
            root_dispersion: 0,
            reference_id: [10, 0, 0, 1],
            reference: NtpTimestamp::from_unix_nanos(t2 - SEC),
            origin: nonce,
            receive: NtpTimestamp::from_unix_nanos(t2),
            transmit: NtpTimestamp::from_unix_nanos(t2),
        }
    }

    /// The server's answer to a request sent now on `fd`.
    fn answer(&mut self, fd: RawFd, server: SocketAddr, request: &[u8]) {
        let delay = Duration::from_millis(20);
        match self.servers.get(&server).cloned() {
            None | Some(Server::Silent) => {}
            Some(Server::Good { ahead, delay }) => {
                let r = self.reply(request, ahead, delay);
                self.in_flight
                    .push((self.now + delay, fd, r.to_bytes().to_vec(), server));
            }
            Some(Server::Edited(edit)) => {
                let mut r = self.reply(request, 0, delay);
                let mut from = server;
                edit(&mut r, &mut from);
                self.in_flight
                    .push((self.now + delay, fd, r.to_bytes().to_vec(), from));
            }
            Some(Server::ForgedFirst) => {
                let mut forged = self.reply(request, 3600 * SEC, delay);
                forged.origin = NtpTimestamp(forged.origin.0 ^ 1);
                let real = self.reply(request, 0, delay);
                let early = self.now + delay / 2;
                self.in_flight
                    .push((early, fd, forged.to_bytes().to_vec(), server));
                self.in_flight
                    .push((self.now + delay, fd, real.to_bytes().to_vec(), server));
            }
        }
    }
}

struct FakeChannel {
    fd: RawFd,
    server: SocketAddr,
    world: Rc<RefCell<World>>,
}

impl Channel for FakeChannel {
    fn fd(&self) -> RawFd {
        self.fd
    }

    fn send(&mut self, packet: &[u8]) -> io::Result<()> {
        let mut w = self.world.borrow_mut();
        let at = w.now;
        w.sent.push(Sent {
            at,
            server: self.server,
            packet: packet.to_vec(),
        });
        w.answer(self.fd, self.server, packet);
        Ok(())
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<(usize, SocketAddr)>> {
        let mut w = self.world.borrow_mut();
        let Some((bytes, from)) = w.inbox.get_mut(&self.fd).and_then(VecDeque::pop_front) else {
            return Ok(None);
        };
        let n = bytes.len().min(buf.len());
        buf[..n].copy_from_slice(&bytes[..n]);
        Ok(Some((n, from)))
    }
}

impl Drop for FakeChannel {
    fn drop(&mut self) {
        let mut w = self.world.borrow_mut();
        w.open.remove(&self.fd);
        w.inbox.remove(&self.fd);
    }
}

struct FakeTransport(Rc<RefCell<World>>);

impl Transport for FakeTransport {
    fn open(&mut self, server: SocketAddr) -> io::Result<Box<dyn Channel>> {
        let mut w = self.0.borrow_mut();
        if let Some(e) = w.open_error {
            return Err(e.into());
        }
        w.next_fd += 1;
        let fd = 100 + w.next_fd;
        w.open.insert(fd);
        Ok(Box::new(FakeChannel {
            fd,
            server,
            world: self.0.clone(),
        }))
    }
}

struct FakeClock(Rc<RefCell<World>>);

impl SystemClock for FakeClock {
    fn now(&self) -> io::Result<i64> {
        let w = self.0.borrow();
        Ok(w.true_time(w.now) + w.local_error)
    }

    fn step(&mut self, offset: i64) -> io::Result<()> {
        let mut w = self.0.borrow_mut();
        if let Some(e) = w.step_error {
            return Err(e.into());
        }
        w.local_error += offset;
        w.adjustments.push(format!("step {}", Offset(offset)));
        Ok(())
    }

    fn slew(&mut self, d: &Discipline) -> io::Result<()> {
        self.0.borrow_mut().adjustments.push(format!(
            "slew {} tc={}",
            Offset(d.offset_nanos),
            d.time_constant
        ));
        Ok(())
    }
}

struct Sim {
    world: Rc<RefCell<World>>,
    sys: FakeSys,
    clock: Clock,
}

impl Sim {
    fn new(servers: &[(&str, Server)]) -> Sim {
        let world = Rc::new(RefCell::new(World::default()));
        for (a, s) in servers {
            world.borrow_mut().servers.insert(addr(a), s.clone());
        }
        let list = servers.iter().map(|(a, _)| addr(a)).collect();
        let clock = Clock::with_io(
            list,
            Duration::ZERO,
            Box::new(FakeTransport(world.clone())),
            Box::new(FakeClock(world.clone())),
        );
        Sim {
            world,
            sys: FakeSys::new(),
            clock,
        }
    }

    fn set_server(&self, a: &str, s: Server) {
        self.world.borrow_mut().servers.insert(addr(a), s);
    }

    fn set_local_error(&self, e: i64) {
        self.world.borrow_mut().local_error = e;
    }

    /// Runs the event loop: wakes the clock at its deadlines and when replies arrive, up to `until`.
    fn run_until(&mut self, until: Duration) {
        for _ in 0..100_000 {
            let next_delivery = self.world.borrow().in_flight.iter().map(|d| d.0).min();
            let next = match (next_delivery, self.clock.deadline()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let Some(next) = next.filter(|n| *n <= until) else {
                self.world.borrow_mut().now = until;
                return;
            };
            let readable = {
                let mut w = self.world.borrow_mut();
                w.now = w.now.max(next);
                let now = w.now;
                let (due, later): (Vec<_>, Vec<_>) = w.in_flight.drain(..).partition(|d| d.0 <= now);
                w.in_flight = later;
                let mut readable = Vec::new();
                for (_, fd, bytes, from) in due {
                    if w.open.contains(&fd) {
                        w.inbox.entry(fd).or_default().push_back((bytes, from));
                        readable.push(fd);
                    }
                }
                readable
            };
            let now = self.world.borrow().now;
            self.clock.wake(&self.sys, now, &readable);
        }
        panic!(
            "the clock keeps asking to be woken at {:?}",
            self.clock.deadline()
        );
    }

    fn sent_times(&self) -> Vec<u64> {
        self.world.borrow().sent.iter().map(|s| s.at.as_secs()).collect()
    }

    fn adjustments(&self) -> Vec<String> {
        self.world.borrow().adjustments.clone()
    }

    fn console(&self) -> Vec<String> {
        self.sys.console_lines()
    }
}

fn synced_offset(state: &ClockState) -> (SocketAddr, i64, bool) {
    match state {
        ClockState::Synced {
            server,
            offset,
            stepped,
            ..
        } => (*server, offset.as_nanos(), *stepped),
        other => panic!("not synced: {other:?}"),
    }
}

#[test]
fn a_small_offset_at_boot_is_slewed() {
    let mut sim = Sim::new(&[(A, good(0))]);
    sim.set_local_error(-50 * MS);
    sim.run_until(secs(1));
    assert_eq!(
        sim.clock.boot_outcome().as_deref(),
        Some("synced server=10.0.2.2:123 offset=+0.050000s slewed")
    );
    assert_eq!(sim.adjustments(), ["slew +0.050000s tc=6"]);
    assert_eq!(synced_offset(sim.clock.state()), (addr(A), 50 * MS, false));
    // The boot outcome goes into the caller's phase line; the clock prints nothing itself.
    assert_eq!(sim.console(), Vec::<String>::new());
    assert_eq!(sim.clock.deadline(), Some(secs(64)));
    assert!(sim.clock.fds().is_empty());
}

#[test]
fn a_large_offset_at_boot_is_stepped_in_either_direction() {
    for (error, want) in [(2 * SEC, "-2.000000s"), (-7200 * SEC, "+7200.000000s")] {
        let mut sim = Sim::new(&[(A, good(0))]);
        sim.set_local_error(error);
        sim.run_until(secs(1));
        assert_eq!(
            sim.clock.boot_outcome(),
            Some(format!("synced server=10.0.2.2:123 offset={want} stepped"))
        );
        // The step, then the kernel is told the clock is synchronized (offset 0).
        assert_eq!(
            sim.adjustments(),
            [format!("step {want}"), "slew +0.000000s tc=6".to_owned()]
        );
        assert_eq!(sim.world.borrow().local_error, 0);
        assert!(synced_offset(sim.clock.state()).2);
    }
}

#[test]
fn after_boot_the_clock_is_only_slewed_even_backwards() {
    let mut sim = Sim::new(&[(A, good(0))]);
    sim.run_until(secs(1));
    // The clock runs 5 s ahead (a paused VM resumed with a wrong correction, say).
    sim.set_local_error(5 * SEC);
    sim.run_until(secs(65));
    assert_eq!(
        sim.adjustments(),
        ["slew +0.000000s tc=6", "slew -0.500000s tc=6"]
    );
    assert_eq!(synced_offset(sim.clock.state()), (addr(A), -5 * SEC, false));
    assert_eq!(sim.console(), Vec::<String>::new());
    // Not stable: the next poll stays at 64 s.
    assert_eq!(sim.clock.deadline(), Some(secs(128)));
}

#[test]
fn a_huge_offset_after_boot_is_stepped_once_a_second_round_confirms_it() {
    let mut sim = Sim::new(&[(A, good(0))]);
    sim.run_until(secs(1));
    sim.set_local_error(-3600 * SEC);
    sim.run_until(secs(65));
    assert_eq!(sim.adjustments(), ["slew +0.000000s tc=6"]);
    assert_eq!(
        sim.console(),
        [
            "ingot: warning the clock is +3600.000000s off according to 10.0.2.2:123, confirming before stepping it"
        ]
    );
    assert_eq!(sim.clock.deadline(), Some(secs(66)));
    sim.run_until(secs(67));
    assert_eq!(
        sim.adjustments()[1..],
        ["step +3600.000000s", "slew +0.000000s tc=6"]
    );
    assert_eq!(
        sim.console()[1],
        "ingot: clock stepped server=10.0.2.2:123 offset=+3600.000000s stepped (more than 1000s off, confirmed by two rounds)"
    );
    assert_eq!(sim.world.borrow().local_error, 0);
}

#[test]
fn a_single_huge_reading_after_boot_steps_nothing() {
    let mut sim = Sim::new(&[(A, good(0))]);
    sim.run_until(secs(1));
    sim.set_server(A, good(5000 * SEC));
    sim.run_until(secs(65));
    sim.set_server(A, good(0));
    sim.run_until(secs(67));
    assert_eq!(sim.sent_times(), [0, 64, 66]);
    assert_eq!(
        sim.adjustments(),
        ["slew +0.000000s tc=6", "slew +0.000000s tc=7"]
    );
    assert_eq!(synced_offset(sim.clock.state()).1, 0);
}

#[test]
fn without_answers_the_rtc_time_stays_and_retries_back_off_to_64s() {
    let mut sim = Sim::new(&[(A, Server::Silent)]);
    sim.run_until(secs(9));
    assert_eq!(sim.clock.boot_outcome(), None);
    sim.run_until(secs(10));
    assert_eq!(
        sim.clock.boot_outcome().as_deref(),
        Some("unsynced: no NTP server answered within 10s, keeping the RTC time")
    );
    sim.run_until(secs(300));
    assert_eq!(sim.sent_times(), [0, 2, 6, 14, 30, 62, 126, 190, 254]);
    assert_eq!(
        sim.console(),
        [
            "ingot: warning no NTP server answered within 10s, keeping the RTC time 2026-11-21T16:09:42Z, retrying in the background"
        ]
    );
    assert_eq!(
        sim.clock.state(),
        &ClockState::Unsynced {
            attempts: 9,
            since: Duration::ZERO
        }
    );
    assert_eq!(sim.adjustments(), Vec::<String>::new());
    assert_eq!(sim.clock.deadline(), Some(secs(318)));

    // The server comes back: the first result after boot may still step, and says so on the console.
    sim.set_server(A, good(3 * SEC));
    sim.run_until(secs(319));
    assert_eq!(
        sim.console()[1],
        "ingot: clock synced server=10.0.2.2:123 offset=+3.000000s stepped"
    );
    assert_eq!(sim.adjustments()[0], "step +3.000000s");
}

#[test]
fn the_poll_interval_grows_to_1024s_while_stable_and_drops_back_on_a_jump() {
    let mut sim = Sim::new(&[(A, good(5 * MS))]);
    sim.run_until(secs(5000));
    assert_eq!(sim.sent_times(), [0, 64, 192, 448, 960, 1984, 3008, 4032]);
    let tcs: Vec<String> = sim
        .adjustments()
        .iter()
        .map(|a| a.rsplit(' ').next().unwrap().to_owned())
        .collect();
    assert_eq!(
        tcs,
        ["tc=6", "tc=7", "tc=8", "tc=9", "tc=10", "tc=10", "tc=10", "tc=10"]
    );
    sim.set_server(A, good(100 * MS));
    sim.run_until(secs(5057));
    assert_eq!(sim.clock.deadline(), Some(secs(5056 + 64)));
}

#[test]
fn three_servers_outvote_one_with_a_wrong_clock() {
    let mut sim = Sim::new(&[(A, good(2 * MS)), (B, good(30 * SEC)), (C, good(4 * MS))]);
    sim.run_until(secs(1));
    assert_eq!(
        sim.clock.boot_outcome().as_deref(),
        Some("synced server=10.0.2.2:123 offset=+0.003000s slewed")
    );
    assert_eq!(
        sim.console(),
        [
            "ingot: warning NTP server 10.0.2.3:123: its time disagrees with the other servers, ignoring it this time"
        ]
    );
    // Every server got its own nonce.
    let w = sim.world.borrow();
    let nonces: BTreeSet<&[u8]> = w.sent.iter().map(|s| &s.packet[40..48]).collect();
    assert_eq!(nonces.len(), 3);
    let servers: BTreeSet<SocketAddr> = w.sent.iter().map(|s| s.server).collect();
    assert_eq!(servers.len(), 3);
}

#[test]
fn one_silent_server_among_good_ones_is_named_once() {
    let mut sim = Sim::new(&[(A, good(0)), (B, Server::Silent)]);
    sim.run_until(secs(200));
    assert_eq!(synced_offset(sim.clock.state()).0, addr(A));
    assert_eq!(
        sim.console(),
        ["ingot: warning NTP server 10.0.2.3:123: no answer within 1s, ignoring it this time"]
    );
}

#[test]
fn replies_a_careful_client_must_not_trust_are_rejected() {
    let cases: Vec<(Server, &str)> = vec![
        (
            edited(|r, _| r.origin = NtpTimestamp(r.origin.0.wrapping_add(1))),
            "origin timestamp does not echo our request, expected a reply to it (stale or forged)",
        ),
        (
            edited(|r, _| r.stratum = 16),
            "stratum 16, expected 1 to 15 (16: the server is not synchronized)",
        ),
        (
            edited(|r, _| {
                r.stratum = 0;
                r.reference_id = *b"RATE";
            }),
            "kiss-o'-death \"RATE\", expected time: the server refuses to serve it",
        ),
        (
            edited(|r, _| r.leap = 3),
            "leap indicator 3, expected a synchronized server",
        ),
        (edited(|r, _| r.mode = 5), "mode 5, expected 4 (server)"),
        (
            edited(|_, from| *from = addr("10.0.2.9:123")),
            "came from 10.0.2.9:123, expected the server's address",
        ),
        (
            edited(|r, _| r.transmit = NtpTimestamp::ZERO),
            "zero receive or transmit timestamp, expected both set",
        ),
    ];
    for (server, why) in cases {
        let mut sim = Sim::new(&[(A, server)]);
        sim.run_until(secs(100));
        assert!(matches!(sim.clock.state(), ClockState::Unsynced { .. }), "{why}");
        assert_eq!(sim.adjustments(), Vec::<String>::new(), "{why}");
        assert_eq!(
            sim.console(),
            [
                format!(
                    "ingot: warning NTP server 10.0.2.2:123: reply rejected: {why}, ignoring it this time"
                ),
                format!(
                    "ingot: warning no usable NTP answer within 10s (10.0.2.2:123: {why}), keeping the RTC time 2026-11-21T16:09:42Z, retrying in the background"
                ),
            ],
        );
        assert_eq!(
            sim.clock.boot_outcome(),
            Some(format!(
                "unsynced: no usable NTP answer within 10s (10.0.2.2:123: {why}), keeping the RTC time"
            ))
        );
    }
}

#[test]
fn a_forged_reply_arriving_first_does_not_hide_the_real_one() {
    let mut sim = Sim::new(&[(A, Server::ForgedFirst)]);
    sim.run_until(secs(1));
    assert_eq!(
        sim.clock.boot_outcome().as_deref(),
        Some("synced server=10.0.2.2:123 offset=+0.000000s slewed")
    );
    assert_eq!(sim.console(), Vec::<String>::new());
}

#[test]
fn new_servers_are_asked_at_once_and_late_replies_from_old_ones_ignored() {
    let mut sim = Sim::new(&[(A, Server::Silent), (B, good(0))]);
    sim.set_server(
        B,
        Server::Good {
            ahead: 0,
            delay: Duration::from_millis(900),
        },
    );
    sim.run_until(Duration::from_millis(500));
    assert_eq!(sim.clock.fds().len(), 2);
    sim.set_server(C, good(40 * MS));
    sim.clock.set_servers(vec![addr(C)], Duration::from_millis(500));
    assert!(sim.clock.fds().is_empty());
    assert_eq!(sim.clock.deadline(), Some(Duration::from_millis(500)));
    sim.run_until(secs(2));
    assert_eq!(synced_offset(sim.clock.state()), (addr(C), 40 * MS, false));
    assert_eq!(sim.adjustments(), ["slew +0.040000s tc=6"]);
    // The same list again changes nothing.
    let before = sim.clock.deadline();
    sim.clock.set_servers(vec![addr(C)], secs(2));
    assert_eq!(sim.clock.deadline(), before);
}

#[test]
fn without_servers_the_outcome_is_known_at_once_and_dhcp_servers_work_later() {
    let mut sim = Sim::new(&[]);
    assert_eq!(
        sim.clock.boot_outcome().as_deref(),
        Some("unsynced: no NTP server configured, keeping the RTC time")
    );
    assert_eq!(sim.clock.deadline(), None);
    sim.set_server(A, good(0));
    sim.clock.set_servers(vec![addr(A)], secs(30));
    sim.run_until(secs(31));
    assert_eq!(
        sim.console(),
        ["ingot: clock synced server=10.0.2.2:123 offset=+0.000000s slewed"]
    );
}

#[test]
fn socket_errors_are_logged_once_and_retried() {
    let mut sim = Sim::new(&[(A, good(0))]);
    sim.world.borrow_mut().open_error = Some(Errno::NETUNREACH);
    sim.run_until(secs(7));
    assert_eq!(
        sim.clock.state(),
        &ClockState::Unsynced {
            attempts: 3,
            since: Duration::ZERO
        }
    );
    sim.world.borrow_mut().open_error = None;
    sim.run_until(secs(15));
    assert_eq!(
        sim.console(),
        [
            "ingot: warning NTP server 10.0.2.2:123: opening a socket: Network is unreachable (os error 101), ignoring it this time",
            "ingot: warning no NTP server answered within 10s, keeping the RTC time 2026-11-21T16:09:42Z, retrying in the background",
            "ingot: clock synced server=10.0.2.2:123 offset=+0.000000s slewed",
        ]
    );
    assert_eq!(synced_offset(sim.clock.state()).1, 0);
}

#[test]
fn a_failed_adjustment_keeps_the_node_unsynced_and_is_retried() {
    let mut sim = Sim::new(&[(A, good(10 * SEC))]);
    sim.world.borrow_mut().step_error = Some(Errno::PERM);
    sim.run_until(secs(10));
    assert_eq!(
        sim.clock.boot_outcome().as_deref(),
        Some(
            "unsynced: setting the clock failed (Operation not permitted (os error 1)), keeping the RTC time"
        )
    );
    assert_eq!(
        sim.console()[0],
        "ingot: warning stepping the clock by +10.000000s: Operation not permitted (os error 1), retrying"
    );
    assert_eq!(sim.console().len(), 2);
    sim.world.borrow_mut().step_error = None;
    sim.run_until(secs(20));
    assert_eq!(synced_offset(sim.clock.state()), (addr(A), 10 * SEC, true));
}

#[test]
fn losing_every_server_after_a_sync_is_logged_once_and_so_is_the_recovery() {
    let mut sim = Sim::new(&[(A, good(0))]);
    sim.run_until(secs(1));
    sim.set_server(A, Server::Silent);
    sim.run_until(secs(200));
    assert_eq!(sim.sent_times(), [0, 64, 66, 70, 78, 94, 126, 190]);
    assert_eq!(
        sim.console(),
        [
            "ingot: warning no NTP server answered in 3 rounds (last sync 69s ago), the clock runs on its learned frequency, retrying"
        ]
    );
    assert!(matches!(sim.clock.state(), ClockState::Synced { at, .. } if *at == Duration::from_millis(20)));
    sim.set_server(A, good(MS));
    sim.run_until(secs(255));
    assert_eq!(
        sim.console()[1],
        "ingot: clock synced again server=10.0.2.2:123 offset=+0.001000s slewed"
    );
}

#[test]
fn during_a_round_the_sockets_are_watched_until_the_reply_timeout() {
    let mut sim = Sim::new(&[(A, Server::Silent), (B, Server::Silent)]);
    assert_eq!(sim.clock.deadline(), Some(Duration::ZERO));
    sim.run_until(Duration::ZERO);
    assert_eq!(sim.clock.fds().len(), 2);
    assert_eq!(sim.clock.deadline(), Some(REPLY_TIMEOUT));
    sim.run_until(REPLY_TIMEOUT);
    assert!(sim.clock.fds().is_empty());
    assert_eq!(sim.clock.deadline(), Some(RETRY_MIN));
}

#[test]
fn requests_are_client_packets_with_fresh_nonces() {
    let mut sim = Sim::new(&[(A, Server::Silent), (B, Server::Silent)]);
    sim.run_until(secs(300));
    let w = sim.world.borrow();
    let mut nonces = BTreeSet::new();
    for s in &w.sent {
        assert_eq!(s.packet.len(), 48);
        assert_eq!(s.packet[0], 0x23);
        assert!(s.packet[1..40].iter().all(|b| *b == 0));
        let nonce = u64::from_be_bytes(s.packet[40..48].try_into().unwrap());
        assert_ne!(nonce, 0);
        nonces.insert(nonce);
    }
    assert_eq!(nonces.len(), w.sent.len());
    assert_eq!(w.sent.len(), 18);
}

#[test]
fn parses_configured_servers() {
    let list = |v: &[&str]| parse_servers(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    assert_eq!(
        list(&[
            "10.0.2.2",
            "192.0.2.1:1123",
            "2001:db8::1",
            "[2001:db8::2]:124",
            "[2001:db8::3]",
            "10.0.2.2:123"
        ]),
        Ok(vec![
            addr("10.0.2.2:123"),
            addr("192.0.2.1:1123"),
            addr("[2001:db8::1]:123"),
            addr("[2001:db8::2]:124"),
            addr("[2001:db8::3]:123"),
        ])
    );
    assert_eq!(list(&[]), Ok(vec![]));
    assert_eq!(
        list(&["pool.ntp.org"]),
        Err(Error::HostName("pool.ntp.org".into()))
    );
    assert_eq!(
        list(&["time-1.example:123"]),
        Err(Error::HostName("time-1.example:123".into()))
    );
    assert_eq!(
        list(&["pool.ntp.org"]).unwrap_err().to_string(),
        "NTP server \"pool.ntp.org\": host names are not supported yet, expected an IP address such as \"192.0.2.1\" or \"192.0.2.1:123\""
    );
    for bad in [
        "",
        "10.0.2",
        "10.0.2.2:",
        "10.0.2.2:99999",
        "10.0.2.2:x",
        " 10.0.2.2",
        "2001:db8::1:123:x",
        "a b",
    ] {
        assert_eq!(list(&[bad]), Err(Error::Invalid(bad.into())), "{bad:?}");
    }
    assert_eq!(list(&["10.0.2.2:0"]), Err(Error::PortZero("10.0.2.2:0".into())));
    for bad in ["0.0.0.0", "255.255.255.255", "224.0.1.1", "::", "[ff02::101]:123"] {
        assert_eq!(list(&[bad]), Err(Error::NotUnicast(bad.into())), "{bad:?}");
    }
}

#[test]
fn formats_utc_dates() {
    assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
    assert_eq!(format_utc(TRUE_START), "2026-11-21T16:09:32Z");
    assert_eq!(format_utc(951_782_400 * SEC), "2000-02-29T00:00:00Z");
    assert_eq!(format_utc(2_085_978_496 * SEC), "2036-02-07T06:28:16Z");
    assert_eq!(format_utc(-SEC), "1969-12-31T23:59:59Z");
}

#[test]
fn offsets_print_signed() {
    assert_eq!(Offset::from_nanos(2_345_000_000).to_string(), "+2.345000s");
    assert_eq!(Offset::from_nanos(-120_000).to_string(), "-0.000120s");
    assert!((Offset::from_nanos(-1_500_000_000).as_secs_f64() + 1.5).abs() < 1e-12);
}
