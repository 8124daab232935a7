//! The node's clock: a small SNTP client (RFC 4330 over the RFC 5905 packet) that sets the system clock
//! at boot and keeps it disciplined, driven by PID 1's event loop ([`Pollable`]).
//!
//! # How it works
//!
//! Every round asks **all** configured servers at once, each from a fresh UDP socket connected to it
//! (the kernel drops datagrams from other addresses; the ephemeral port is one more thing to guess) and
//! with its own random transmit timestamp as nonce (the server echoes it; our own send time stays
//! local, so the request tells nobody our clock). A reply counts only if it comes from the server's
//! address and port, is a mode-4 server reply of version 3 or 4, echoes the nonce, has stratum 1–15
//! (stratum 0 is a kiss-o'-death), a leap indicator other than 3 (unsynchronized), non-zero receive and
//! transmit timestamps, a server time not before 2025, a round-trip delay in 0–1 s and a root distance
//! below 1.5 s ([`sample::check`]). A round ends when every server answered or after
//! [`REPLY_TIMEOUT`]; the median offset of the good replies wins, and with three or more, replies
//! further from the median than their own error bound allows are dropped first ([`sample::combine`]).
//!
//! # Step or slew
//!
//! The first result after boot **steps** the clock (`clock_settime`) when it is off by more than
//! [`STEP_THRESHOLD`] (128 ms, ntpd's step threshold), in either direction: until then the time came from
//! the RTC, and nothing has been scheduled on it yet worth protecting. Smaller offsets, and every result
//! after that, are **slewed**: the clock never jumps, so it never runs backwards under running services.
//! The one exception is an offset beyond [`HUGE_OFFSET`] (1000 s, ntpd's panic threshold): slewing that
//! at the kernel's 500 ppm would take three weeks, during which certificates and leases are judged by a
//! wrong clock, so it is stepped, but only once a second round confirmed it (a single bogus reply cannot
//! move the clock by hours).
//!
//! Slewing goes through the kernel's phase-locked loop (`adjtimex` with `ADJ_OFFSET | ADJ_STATUS`,
//! `STA_PLL`, time constant = log₂ of the poll interval, as ntpd does in kernel mode) rather than
//! `ADJ_OFFSET_SINGLESHOT`: the single-shot slew corrects the phase only, so the oscillator's frequency
//! error (tens of ppm, up to 100 ms per 1024 s poll) comes back between polls; the PLL also learns the
//! frequency, so the clock keeps time between polls and polls can grow to 1024 s. The kernel takes at
//! most ±0.5 s per update ([`MAX_SLEW`]); larger offsets after boot are worked off over several polls.
//!
//! Every update clears `STA_UNSYNC`: the kernel then copies the system time to the RTC every 11 minutes
//! (where it is built with `RTC_SYSTOHC`, as Debian's is), so the next boot starts from a close time
//! even if no server answers then. This assumes the RTC keeps UTC, as Linux servers do.
//!
//! # Schedule
//!
//! The first round starts at once. Without a result, rounds repeat after 2 s, doubling up to 64 s
//! ([`RETRY_MIN`], [`RETRY_MAX`]). After a result the poll interval starts at 64 s and doubles up to
//! 1024 s while the offsets stay below [`STABLE_OFFSET`]; a larger offset sends it back to 64 s.
//!
//! At boot, the `clock` phase waits at most [`BOOT_WAIT`] for the first result; [`Clock::boot_outcome`]
//! then says what happened, and without a result the node keeps the RTC time and goes on trying in the
//! background.
//!
//! # Logging
//!
//! State changes only: a server's new problem (a rejected reply, a socket error), the boot wait ending
//! without a result, the first sync when it comes after the boot outcome, a step after boot, losing
//! every server for three rounds after having been synced, and getting one back. Routine polls and
//! slews are silent.
//!
//! # Not yet
//!
//! Host names (PID 1 has no resolver yet; [`parse_servers`] says so), authentication (NTS or symmetric
//! keys), leap-second announcements (the leap indicator is not passed to the kernel), kernel receive
//! timestamps (T4 is read when the event loop gets to the socket, so a busy loop makes replies look
//! slower, bounded by the 1 s delay check), a per-server clock filter over several polls, and a drift
//! file (the kernel relearns the frequency after every boot).

mod io;
mod packet;
mod sample;

#[cfg(test)]
mod chrony_tests;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;
use std::time::Duration;

use ingot_spec::marker::PREFIX;

use crate::event::Pollable;
use crate::sys::Sys;
use crate::sys::clock::Discipline;

pub use io::{Channel, Kernel, SystemClock, Transport, Udp};
use packet::NtpTimestamp;
use sample::{Combined, Reject, Sample, Secs};

const SEC: i64 = 1_000_000_000;
const MS: i64 = 1_000_000;

/// How long the boot's `clock` phase waits for a first result before going on with the RTC time.
pub const BOOT_WAIT: Duration = Duration::from_secs(10);
/// How long a round waits for replies (a reply slower than this fails the delay check anyway).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(1);
/// The first retry after a round without a result; it doubles up to [`RETRY_MAX`].
pub const RETRY_MIN: Duration = Duration::from_secs(2);
pub const RETRY_MAX: Duration = Duration::from_secs(64);
/// The poll interval after a result is 2^exp seconds: 64 s, doubling to 1024 s while stable.
pub const POLL_MIN_EXP: u32 = 6;
pub const POLL_MAX_EXP: u32 = 10;
/// A first result further off than this (ns) steps the clock; closer ones are slewed.
pub const STEP_THRESHOLD: i64 = 128 * MS;
/// After the first result, only an offset beyond this (ns), seen in two rounds in a row, steps the clock.
pub const HUGE_OFFSET: i64 = 1000 * SEC;
/// How close the confirming round's offset must be to the first for a step after boot.
pub const CONFIRM_TOLERANCE: i64 = SEC;
/// The most the kernel's phase-locked loop takes per update (its `MAXPHASE`).
pub const MAX_SLEW: i64 = 500 * MS;
/// Offsets below this (ns) count as stable and let the poll interval grow.
pub const STABLE_OFFSET: i64 = 20 * MS;
/// Failed rounds in a row, after a sync, before the loss is logged (one lost packet is not news).
pub const LOSS_REPORT_AFTER: u32 = 3;
pub const DEFAULT_PORT: u16 = 123;
/// Datagrams read from one socket per wake, so a flood cannot hold up the event loop.
const MAX_DATAGRAMS_PER_WAKE: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error(
        "NTP server {0:?}: host names are not supported yet, expected an IP address such as \"192.0.2.1\" or \"192.0.2.1:123\""
    )]
    HostName(String),
    #[error(
        "NTP server {0:?}: expected an IP address with an optional port: \"192.0.2.1\", \"192.0.2.1:123\", \"2001:db8::1\" or \"[2001:db8::1]:123\""
    )]
    Invalid(String),
    #[error("NTP server {0:?}: port 0, expected 1 to 65535")]
    PortZero(String),
    #[error("NTP server {0:?}: expected a unicast address")]
    NotUnicast(String),
}

/// Parses the configured servers (`"ip"` or `"ip:port"`, IPv6 as `"2001:db8::1"` or
/// `"[2001:db8::1]:123"`; port [`DEFAULT_PORT`] by default). Duplicates are dropped, the order kept.
pub fn parse_servers(servers: &[String]) -> Result<Vec<SocketAddr>, Error> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for s in servers {
        let addr = parse_server(s)?;
        if !out.contains(&addr) {
            out.push(addr);
        }
    }
    Ok(out)
}

fn parse_server(s: &str) -> Result<SocketAddr, Error> {
    let unbracketed = s.strip_prefix('[').and_then(|r| r.strip_suffix(']'));
    let addr = if let Ok(a) = s.parse::<SocketAddr>() {
        a
    } else if let Ok(ip) = unbracketed.unwrap_or(s).parse::<IpAddr>() {
        SocketAddr::new(ip, DEFAULT_PORT)
    } else if looks_like_host_name(s) {
        return Err(Error::HostName(s.to_owned()));
    } else {
        return Err(Error::Invalid(s.to_owned()));
    };
    if addr.port() == 0 {
        return Err(Error::PortZero(s.to_owned()));
    }
    let ip = addr.ip();
    let broadcast = matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
    if ip.is_unspecified() || ip.is_multicast() || broadcast {
        return Err(Error::NotUnicast(s.to_owned()));
    }
    Ok(addr)
}

/// `pool.ntp.org` or `time.example:123`: letters, digits, dots and dashes with at least one letter.
fn looks_like_host_name(s: &str) -> bool {
    let host = match s.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => host,
        Some(_) => return false,
        None => s,
    };
    !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        && host.bytes().any(|b| b.is_ascii_alphabetic())
}

/// How far our clock was from the servers' (their time minus ours), in nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offset(i64);

impl Offset {
    #[cfg(test)]
    pub fn from_nanos(nanos: i64) -> Offset {
        Offset(nanos)
    }

    #[cfg(test)]
    pub fn as_nanos(self) -> i64 {
        self.0
    }

    #[cfg(test)]
    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / SEC as f64
    }
}

/// `+2.345000s`, `-0.000120s`.
impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:+}", Secs(self.0))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClockState {
    /// No NTP result has set the clock yet: it runs on the RTC's time. `attempts` rounds ended without a
    /// result since `since` (`CLOCK_BOOTTIME`).
    Unsynced { attempts: u32, since: Duration },
    /// The clock follows NTP: the last result came from `server` at `at` (`CLOCK_BOOTTIME`) and found it
    /// `offset` off; `stepped` when that result was applied by stepping rather than slewing. Stays so while
    /// servers are unreachable later (the kernel keeps the clock running on the learned frequency).
    Synced {
        server: SocketAddr,
        offset: Offset,
        stepped: bool,
        at: Duration,
    },
}

/// The NTP client. See the module documentation.
pub struct Clock {
    servers: Vec<SocketAddr>,
    transport: Box<dyn Transport>,
    system: Box<dyn SystemClock>,
    state: ClockState,
    boot_deadline: Duration,
    boot_outcome: Option<String>,
    round: Option<Round>,
    next_round: Duration,
    /// Rounds in a row without a result.
    failures: u32,
    poll_exp: u32,
    /// A huge offset after boot, waiting for the next round to confirm it.
    pending_step: Option<i64>,
    /// Why the last round gave no result.
    problem: Option<Problem>,
    /// The problem last logged per server, so a lasting one is logged once.
    server_problems: BTreeMap<SocketAddr, String>,
    /// The last clock adjustment error logged.
    adjust_error: Option<String>,
    loss_reported: bool,
    nonces: Nonces,
}

struct Round {
    started: Duration,
    queries: Vec<Query>,
}

struct Query {
    server: SocketAddr,
    nonce: NtpTimestamp,
    /// T1: our clock when the request left.
    sent_at: i64,
    /// Open while waiting for the reply.
    channel: Option<Box<dyn Channel>>,
    outcome: QueryOutcome,
}

enum QueryOutcome {
    Waiting {
        /// The last datagram that was no answer to our request (forged, stale, garbled).
        ignored: Option<Reject>,
    },
    Good(Sample),
    Rejected(Reject),
    Failed(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Problem {
    NoAnswer,
    /// Every answer was rejected; one reason, with its server.
    Rejected(String),
    Disagree(String),
    Adjust(String),
}

impl Problem {
    /// The problem as a phrase; `when` says over what time: "within 10s".
    fn describe(&self, when: &str) -> String {
        match self {
            Problem::NoAnswer => format!("no NTP server answered {when}"),
            Problem::Rejected(why) => format!("no usable NTP answer {when} ({why})"),
            Problem::Disagree(why) => format!("the NTP servers disagree ({why})"),
            Problem::Adjust(why) => format!("setting the clock failed ({why})"),
        }
    }
}

/// Transmit-timestamp nonces: SipHash under a random key (std's `RandomState`, seeded by the kernel's
/// random generator) over a counter, so they never repeat and cannot be predicted off-path.
struct Nonces {
    keys: RandomState,
    counter: u64,
}

impl Nonces {
    fn new() -> Nonces {
        Nonces {
            keys: RandomState::new(),
            counter: 0,
        }
    }

    fn next(&mut self) -> NtpTimestamp {
        loop {
            let mut h = self.keys.build_hasher();
            h.write_u64(self.counter);
            self.counter = self.counter.wrapping_add(1);
            let v = h.finish();
            // Zero would match the zero origin of a packet that echoes nothing.
            if v != 0 {
                return NtpTimestamp(v);
            }
        }
    }
}

impl Clock {
    /// A client for `servers` on the node's UDP stack and clock; `now` is `CLOCK_BOOTTIME`. The first
    /// round starts at the first [`Pollable::wake`]; the boot wait ends [`BOOT_WAIT`] after `now`.
    pub fn new(servers: Vec<SocketAddr>, now: Duration) -> Clock {
        Clock::with_io(servers, now, Box::new(Udp), Box::new(Kernel))
    }

    /// [`Clock::new`] with another transport and clock (tests).
    pub fn with_io(
        servers: Vec<SocketAddr>,
        now: Duration,
        transport: Box<dyn Transport>,
        system: Box<dyn SystemClock>,
    ) -> Clock {
        let mut clock = Clock {
            servers: Vec::new(),
            transport,
            system,
            state: ClockState::Unsynced {
                attempts: 0,
                since: now,
            },
            boot_deadline: now + BOOT_WAIT,
            boot_outcome: None,
            round: None,
            next_round: now,
            failures: 0,
            poll_exp: POLL_MIN_EXP,
            pending_step: None,
            problem: None,
            server_problems: BTreeMap::new(),
            adjust_error: None,
            loss_reported: false,
            nonces: Nonces::new(),
        };
        clock.replace_servers(servers, now);
        clock
    }

    #[cfg(test)]
    /// Replace the server list (e.g. when DHCP offers NTP servers later). A new list starts a round at
    /// the next wake; the same list changes nothing.
    pub fn set_servers(&mut self, servers: Vec<SocketAddr>, now: Duration) {
        if servers != self.servers {
            self.replace_servers(servers, now);
        }
    }

    fn replace_servers(&mut self, servers: Vec<SocketAddr>, now: Duration) {
        self.server_problems.retain(|s, _| servers.contains(s));
        self.servers = servers;
        self.round = None;
        self.next_round = now;
        self.failures = 0;
        self.pending_step = None;
        if self.servers.is_empty() && self.boot_outcome.is_none() {
            self.boot_outcome = Some("unsynced: no NTP server configured, keeping the RTC time".to_owned());
        }
    }

    #[cfg(test)]
    pub fn state(&self) -> &ClockState {
        &self.state
    }

    /// The first outcome at boot for the console's `clock` phase, once known:
    /// `synced server=10.0.2.2:123 offset=+2.345000s stepped` (or `slewed`), or
    /// `unsynced: no NTP server answered within 10s, keeping the RTC time`. Known after the first result
    /// or [`BOOT_WAIT`], whichever comes first (at once without servers). Later changes are logged by the
    /// clock itself.
    pub fn boot_outcome(&self) -> Option<String> {
        self.boot_outcome.clone()
    }

    fn start_round(&mut self, now: Duration) {
        let mut queries = Vec::with_capacity(self.servers.len());
        for server in self.servers.clone() {
            let nonce = self.nonces.next();
            let mut query = Query {
                server,
                nonce,
                sent_at: 0,
                channel: None,
                outcome: QueryOutcome::Waiting { ignored: None },
            };
            match self.send_request(server, nonce) {
                Ok((channel, sent_at)) => {
                    query.channel = Some(channel);
                    query.sent_at = sent_at;
                }
                Err(why) => query.outcome = QueryOutcome::Failed(why),
            }
            queries.push(query);
        }
        self.round = Some(Round {
            started: now,
            queries,
        });
    }

    fn send_request(
        &mut self,
        server: SocketAddr,
        nonce: NtpTimestamp,
    ) -> Result<(Box<dyn Channel>, i64), String> {
        let mut channel = self
            .transport
            .open(server)
            .map_err(|e| format!("opening a socket: {e}"))?;
        let t1 = self.system.now().map_err(|e| format!("reading the clock: {e}"))?;
        channel
            .send(&packet::request(nonce))
            .map_err(|e| format!("sending the request: {e}"))?;
        Ok((channel, t1))
    }

    /// Reads what arrived on the round's readable sockets.
    fn receive(&mut self, readable: &[RawFd]) {
        let Some(round) = self.round.as_mut() else {
            return;
        };
        let mut buf = [0u8; 512];
        for q in &mut round.queries {
            let Some(channel) = q.channel.as_mut() else {
                continue;
            };
            if !readable.contains(&channel.fd()) {
                continue;
            }
            for _ in 0..MAX_DATAGRAMS_PER_WAKE {
                let (n, from) = match channel.recv(&mut buf) {
                    Ok(Some(got)) => got,
                    Ok(None) => break,
                    Err(e) => {
                        q.outcome = QueryOutcome::Failed(format!("receiving the reply: {e}"));
                        break;
                    }
                };
                let t4 = match self.system.now() {
                    Ok(t) => t,
                    Err(e) => {
                        q.outcome = QueryOutcome::Failed(format!("reading the clock: {e}"));
                        break;
                    }
                };
                let bytes = buf.get(..n).unwrap_or(&buf);
                match sample::check(q.server, from, bytes, q.nonce, q.sent_at, t4) {
                    Ok(s) => q.outcome = QueryOutcome::Good(s),
                    Err(r) if r.is_final() => q.outcome = QueryOutcome::Rejected(r),
                    Err(r) => {
                        q.outcome = QueryOutcome::Waiting { ignored: Some(r) };
                        continue;
                    }
                }
                break;
            }
            if !matches!(q.outcome, QueryOutcome::Waiting { .. }) {
                q.channel = None;
            }
        }
    }

    fn finish_round(&mut self, sys: &dyn Sys, now: Duration) {
        let Some(round) = self.round.take() else {
            return;
        };
        let mut samples = Vec::new();
        let mut rejected = None;
        let mut silent = Vec::new();
        for q in round.queries {
            match q.outcome {
                QueryOutcome::Good(s) => {
                    self.server_problems.remove(&q.server);
                    samples.push(s);
                }
                QueryOutcome::Rejected(r) | QueryOutcome::Waiting { ignored: Some(r), .. } => {
                    let why = format!("reply rejected: {r}");
                    self.note_server_problem(sys, q.server, &why);
                    rejected.get_or_insert(format!("{}: {r}", q.server));
                }
                QueryOutcome::Failed(why) => self.note_server_problem(sys, q.server, &why),
                QueryOutcome::Waiting { ignored: None } => silent.push(q.server),
            }
        }
        let Some(result) = sample::combine(&samples) else {
            let problem = match (rejected, samples.is_empty()) {
                (_, false) => Problem::Disagree(
                    samples
                        .iter()
                        .map(|s| format!("{} {}", s.server, Offset(s.offset)))
                        .collect::<Vec<_>>()
                        .join(", "),
                ),
                (Some(why), true) => Problem::Rejected(why),
                (None, true) => Problem::NoAnswer,
            };
            let repeated = matches!(self.problem, Some(Problem::Disagree(_)));
            if let (Problem::Disagree(why), false) = (&problem, repeated) {
                crate::warn(
                    sys,
                    &format!("the NTP servers disagree ({why}), ignoring them this time"),
                );
            }
            self.round_failed(sys, round.started, problem);
            return;
        };
        // Servers that stayed silent while others answered: worth a line, once.
        for server in silent {
            self.note_server_problem(
                sys,
                server,
                &format!("no answer within {}s", REPLY_TIMEOUT.as_secs()),
            );
        }
        for server in &result.outliers {
            self.note_server_problem(sys, *server, "its time disagrees with the other servers");
        }
        self.apply(sys, now, round.started, &result);
    }

    /// Acts on a round's result: step or slew, then the next poll.
    fn apply(&mut self, sys: &dyn Sys, now: Duration, started: Duration, result: &Combined) {
        let offset = result.offset;
        let first = matches!(self.state, ClockState::Unsynced { .. });
        let step = if first {
            offset.abs() > STEP_THRESHOLD
        } else if offset.abs() > HUGE_OFFSET {
            match self.pending_step {
                Some(p) if (i128::from(p) - i128::from(offset)).abs() < i128::from(CONFIRM_TOLERANCE) => true,
                _ => {
                    self.pending_step = Some(offset);
                    crate::warn(
                        sys,
                        &format!(
                            "the clock is {} off according to {}, confirming before stepping it",
                            Offset(offset),
                            result.best.server
                        ),
                    );
                    self.next_round = started + RETRY_MIN;
                    return;
                }
            }
        } else {
            false
        };
        let poll_exp = if first || step || offset.abs() >= STABLE_OFFSET {
            POLL_MIN_EXP
        } else {
            (self.poll_exp + 1).min(POLL_MAX_EXP)
        };
        let discipline = Discipline {
            offset_nanos: if step {
                0
            } else {
                offset.clamp(-MAX_SLEW, MAX_SLEW)
            },
            time_constant: i64::from(poll_exp),
            max_error_micros: result.best.error_bound() / 1000,
            est_error_micros: result.spread / 1000,
        };
        let applied = if step {
            self.system.step(offset)
        } else {
            self.system.slew(&discipline)
        };
        if let Err(e) = applied {
            let what = if step { "stepping" } else { "slewing" };
            let why = format!("{what} the clock by {}: {e}", Offset(offset));
            if self.adjust_error.as_deref() != Some(why.as_str()) {
                crate::warn(sys, &format!("{why}, retrying"));
                self.adjust_error = Some(why.clone());
            }
            self.round_failed(sys, started, Problem::Adjust(e.to_string()));
            return;
        }
        self.adjust_error = None;
        if step {
            // The step is done; telling the kernel the clock is synchronized (for the RTC) is a bonus.
            if let Err(e) = self.system.slew(&discipline) {
                crate::warn(sys, &format!("marking the clock synchronized: {e}, ignoring"));
            }
        }
        self.pending_step = None;
        self.problem = None;
        self.failures = 0;
        self.poll_exp = poll_exp;
        self.next_round = started + Duration::from_secs(1 << poll_exp);
        let summary = format!(
            "server={} offset={} {}",
            result.best.server,
            Offset(offset),
            if step { "stepped" } else { "slewed" }
        );
        if first {
            if self.boot_outcome.is_none() {
                self.boot_outcome = Some(format!("synced {summary}"));
            } else {
                sys.console(&format!("{PREFIX}clock synced {summary}"));
            }
        } else if step {
            sys.console(&format!(
                "{PREFIX}clock stepped {summary} (more than {}s off, confirmed by two rounds)",
                HUGE_OFFSET / SEC
            ));
        } else if self.loss_reported {
            sys.console(&format!("{PREFIX}clock synced again {summary}"));
        }
        self.loss_reported = false;
        self.state = ClockState::Synced {
            server: result.best.server,
            offset: Offset(offset),
            stepped: step,
            at: now,
        };
    }

    fn round_failed(&mut self, sys: &dyn Sys, started: Duration, problem: Problem) {
        self.failures = self.failures.saturating_add(1);
        let shift = (self.failures - 1).min(RETRY_MAX.as_secs().ilog2());
        self.next_round = started + (RETRY_MIN * (1 << shift)).min(RETRY_MAX);
        match &mut self.state {
            ClockState::Unsynced { attempts, .. } => *attempts = attempts.saturating_add(1),
            ClockState::Synced { at, .. } => {
                if self.failures == LOSS_REPORT_AFTER && !self.loss_reported {
                    let ago = started.saturating_sub(*at).as_secs();
                    crate::warn(
                        sys,
                        &format!(
                            "{} (last sync {ago}s ago), the clock runs on its learned frequency, retrying",
                            problem.describe(&format!("in {LOSS_REPORT_AFTER} rounds"))
                        ),
                    );
                    self.loss_reported = true;
                }
            }
        }
        self.problem = Some(problem);
    }

    /// Logs a server's problem when it differs from the last one logged for it.
    fn note_server_problem(&mut self, sys: &dyn Sys, server: SocketAddr, why: &str) {
        if self.server_problems.get(&server).map(String::as_str) != Some(why) {
            crate::warn(sys, &format!("NTP server {server}: {why}, ignoring it this time"));
            self.server_problems.insert(server, why.to_owned());
        }
    }

    fn check_boot_wait(&mut self, sys: &dyn Sys, now: Duration) {
        if self.boot_outcome.is_some() || now < self.boot_deadline {
            return;
        }
        let problem = self
            .problem
            .clone()
            .unwrap_or(Problem::NoAnswer)
            .describe(&format!("within {}s", BOOT_WAIT.as_secs()));
        let rtc = self
            .system
            .now()
            .map_or_else(|e| format!("unreadable: {e}"), format_utc);
        crate::warn(
            sys,
            &format!("{problem}, keeping the RTC time {rtc}, retrying in the background"),
        );
        self.boot_outcome = Some(format!("unsynced: {problem}, keeping the RTC time"));
    }
}

impl Pollable for Clock {
    fn fds(&self) -> Vec<RawFd> {
        self.round
            .iter()
            .flat_map(|r| r.queries.iter())
            .filter_map(|q| q.channel.as_ref().map(|c| c.fd()))
            .collect()
    }

    fn deadline(&self) -> Option<Duration> {
        let poll = match &self.round {
            Some(r) => Some(r.started + REPLY_TIMEOUT),
            None if self.servers.is_empty() => None,
            None => Some(self.next_round),
        };
        let boot = self.boot_outcome.is_none().then_some(self.boot_deadline);
        match (poll, boot) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn wake(&mut self, sys: &dyn Sys, now: Duration, readable: &[RawFd]) {
        self.receive(readable);
        let round_over = self.round.as_ref().is_some_and(|r| {
            now >= r.started + REPLY_TIMEOUT
                || r.queries
                    .iter()
                    .all(|q| !matches!(q.outcome, QueryOutcome::Waiting { .. }))
        });
        if round_over {
            self.finish_round(sys, now);
        }
        if self.round.is_none() && !self.servers.is_empty() && now >= self.next_round {
            self.start_round(now);
            // Every request may have failed at once (no route, no socket): no reply to wait for.
            let all_failed = self.round.as_ref().is_some_and(|r| {
                r.queries
                    .iter()
                    .all(|q| !matches!(q.outcome, QueryOutcome::Waiting { .. }))
            });
            if all_failed {
                self.finish_round(sys, now);
            }
        }
        self.check_boot_wait(sys, now);
    }
}

/// `2026-11-21T16:09:32Z` for nanoseconds since the Unix epoch (whole seconds, UTC).
pub fn format_utc(unix_nanos: i64) -> String {
    ingot_spec::time::rfc3339(unix_nanos.div_euclid(SEC))
}
