//! PID 1's event loop: one thread, one `poll(2)`, everything else driven from it.
//!
//! Each turn ([`EventLoop::turn`]) waits on one set of descriptors: a `signalfd` for the signals PID 1
//! blocks ([`crate::supervisor::take_signals`]), the [`Supervisor`]'s service output pipes and readiness
//! sockets, and the descriptors of every other [`Pollable`] (network, clock), until one is readable or the
//! earliest deadline among them (and the caller's) comes. Then it
//!
//! 1. reads the pending signals: shutdown requests are returned ([`shutdown_for`]), `SIGCHLD` and `SIGHUP`
//!    need no action of their own;
//! 2. reaps: [`Supervisor::reap`] collects every exited child (orphans too) and routes the exits of
//!    services and their checks to them. This happens on every turn, not only after `SIGCHLD`, so a
//!    coalesced signal can never leave a zombie behind;
//! 3. wakes the supervisor, then each other pollable whose descriptor is readable or whose deadline
//!    passed.
//!
//! Time is `CLOCK_BOOTTIME` throughout; nothing in a turn sleeps.
//!
//! # Using it
//!
//! Stage 2 owns one [`EventLoop`] and one [`Supervisor`] and calls the loop in three ways:
//!
//! - **Boot steps that wait**, before or while services run (network up, clock set): call
//!   [`EventLoop::turn`] in a loop with the step's own condition and timeout, passing the step's
//!   pollables. Borrowing each pollable only for one turn lets the caller look at it between turns:
//!
//!   ```ignore
//!   let deadline = sys.boottime() + NETWORK_TIMEOUT;
//!   while !net.configured() && sys.boottime() < deadline {
//!       if let Some(how) = event_loop.turn(sys, &mut supervisor, &mut [&mut net], Some(deadline)) {
//!           return shutdown(how);
//!       }
//!       print_events(sys, &mut supervisor);
//!   }
//!   ```
//!
//!   [`EventLoop::run_until`] does the same for conditions on the supervisor itself (a service being
//!   ready) and says whether the condition held, the time ran out, or a shutdown was requested.
//! - **The steady state**: [`EventLoop::run`] turns until a shutdown is requested, calling back after
//!   every turn so the caller can print the supervisor's events ([`Supervisor::take_events`]).
//! - **Going down**: [`EventLoop::shutdown`] stops the services, kills the rest, syncs, unmounts and
//!   calls `reboot(2)`.
//!
//! A shutdown signal is returned by the turn that read it and acted on by the caller; signals that arrive
//! during [`EventLoop::shutdown`] are ignored (the machine is already going down).

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::time::Duration;

use ingot_spec::marker::PREFIX;

use crate::event::Pollable;
use crate::supervisor::{KILL_TIMEOUT, Supervisor, TERM_TIMEOUT, shutdown_for, unmount};
use crate::sys::{KillSignal, Shutdown, Sys};

/// Without a signal descriptor (creating it failed), the loop tries again at least this often; the
/// signals stay pending meanwhile, and children are still reaped every turn.
const SIGNAL_FD_RETRY: Duration = Duration::from_secs(1);
/// After `poll(2)` itself failed, the loop waits this long before the next turn, so it cannot spin.
const POLL_RETRY: Duration = Duration::from_millis(100);

/// Why [`EventLoop::run_until`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The condition held.
    Done,
    /// The deadline passed first.
    TimedOut,
    /// A signal asked for this shutdown.
    Shutdown(Shutdown),
}

/// PID 1's event loop; see the module documentation.
#[derive(Debug, Default)]
pub struct EventLoop {
    /// The signal descriptor, created on the first turn.
    signals: Option<OwnedFd>,
    signal_fd_failing: bool,
    poll_failing: bool,
}

impl EventLoop {
    pub fn new() -> EventLoop {
        EventLoop::default()
    }

    fn ensure_signal_fd(&mut self, sys: &dyn Sys) {
        if self.signals.is_some() {
            return;
        }
        match sys.signal_fd() {
            Ok(fd) => {
                self.signals = Some(fd);
                self.signal_fd_failing = false;
            }
            Err(e) => {
                if !std::mem::replace(&mut self.signal_fd_failing, true) {
                    crate::warn(
                        sys,
                        &format!(
                            "creating the signal descriptor: {e}, trying again every {}s",
                            SIGNAL_FD_RETRY.as_secs()
                        ),
                    );
                }
            }
        }
    }

    /// One turn: waits until a descriptor is readable or the earliest deadline (the supervisor's, the
    /// pollables', `deadline`) passes, then handles signals, reaps, and wakes the supervisor and the
    /// pollables that are due. Returns the shutdown a signal asked for, if one did.
    pub fn turn(
        &mut self,
        sys: &dyn Sys,
        sup: &mut Supervisor,
        others: &mut [&mut dyn Pollable],
        deadline: Option<Duration>,
    ) -> Option<Shutdown> {
        self.ensure_signal_fd(sys);
        let now = sys.boottime();
        let signal_fd = self.signals.as_ref().map(AsRawFd::as_raw_fd);
        let sup_fds = sup.fds();
        let other_fds: Vec<Vec<RawFd>> = others.iter().map(|o| o.fds()).collect();
        let fds: Vec<RawFd> = signal_fd
            .into_iter()
            .chain(sup_fds.iter().copied())
            .chain(other_fds.iter().flatten().copied())
            .collect();
        let mut wake_at = [deadline, sup.deadline()]
            .into_iter()
            .chain(others.iter().map(|o| o.deadline()))
            .flatten()
            .min();
        if signal_fd.is_none() {
            let retry = now + SIGNAL_FD_RETRY;
            wake_at = Some(wake_at.map_or(retry, |t| t.min(retry)));
        }
        let timeout = wake_at.map(|t| t.saturating_sub(now));
        let readable = match sys.poll(&fds, timeout) {
            Ok(r) => {
                self.poll_failing = false;
                r
            }
            Err(e) => {
                if !std::mem::replace(&mut self.poll_failing, true) {
                    crate::warn(sys, &format!("waiting for events: {e}, retrying"));
                }
                sys.sleep(POLL_RETRY);
                Vec::new()
            }
        };
        let now = sys.boottime();

        let mut shutdown = None;
        if let Some(fd) = self.signals.as_ref()
            && readable.contains(&fd.as_raw_fd())
        {
            match sys.read_signals(fd.as_fd()) {
                Ok(signals) => {
                    for s in signals {
                        if let Some(how) = shutdown_for(s) {
                            shutdown.get_or_insert(how);
                        }
                    }
                }
                Err(e) => crate::warn(sys, &format!("reading signals: {e}, ignoring")),
            }
        }

        sup.reap(sys, now);
        let mine = |owned: &[RawFd]| -> Vec<RawFd> {
            readable.iter().copied().filter(|fd| owned.contains(fd)).collect()
        };
        sup.wake(sys, now, &mine(&sup_fds));
        for (o, owned) in others.iter_mut().zip(&other_fds) {
            let r = mine(owned);
            if !r.is_empty() || o.deadline().is_some_and(|t| t <= now) {
                o.wake(sys, now, &r);
            }
        }
        shutdown
    }

    /// Turns until `until(supervisor)` holds (checked before every turn, so it may return at once),
    /// `deadline` passes, or a shutdown is requested.
    pub fn run_until(
        &mut self,
        sys: &dyn Sys,
        sup: &mut Supervisor,
        others: &mut [&mut dyn Pollable],
        deadline: Option<Duration>,
        mut until: impl FnMut(&mut Supervisor) -> bool,
    ) -> Outcome {
        loop {
            if until(sup) {
                return Outcome::Done;
            }
            if deadline.is_some_and(|d| sys.boottime() >= d) {
                return Outcome::TimedOut;
            }
            if let Some(how) = self.turn(sys, sup, others, deadline) {
                return Outcome::Shutdown(how);
            }
        }
    }

    /// Turns until a shutdown is requested, calling `after_turn` after every turn (and once before the
    /// first); returns the shutdown.
    pub fn run(
        &mut self,
        sys: &dyn Sys,
        sup: &mut Supervisor,
        others: &mut [&mut dyn Pollable],
        mut after_turn: impl FnMut(&mut Supervisor),
    ) -> Shutdown {
        loop {
            after_turn(sup);
            if let Some(how) = self.turn(sys, sup, others, None) {
                after_turn(sup);
                return how;
            }
        }
    }

    /// Takes the machine down and calls `reboot(2)`:
    ///
    /// 1. stops the services in reverse dependency order ([`Supervisor::begin_stop`]), reading their
    ///    output until they are gone;
    /// 2. `SIGTERM` to every remaining process, reaping until none is left or [`TERM_TIMEOUT`] passed,
    ///    then `SIGKILL` and at most [`KILL_TIMEOUT`] more;
    /// 3. closes the service log files, `sync`s, then unmounts everything it can, newest first
    ///    ([`unmount::unmount_all`]);
    /// 4. `reboot(2)`.
    ///
    /// Each step is printed on the console. Returns only if `reboot(2)` failed.
    pub fn shutdown(&mut self, sys: &dyn Sys, sup: &mut Supervisor, how: Shutdown) -> io::Error {
        sys.console(&format!("{PREFIX}shutdown {}", how.name()));
        sup.begin_stop(sys, sys.boottime());
        while !sup.stopped() {
            // Shutdown requests are ignored now: this is one.
            let _ = self.turn(sys, sup, &mut [], None);
        }
        sup.flush_status(sys, sys.boottime());

        if let Err(e) = sys.kill_all(KillSignal::Term) {
            crate::warn(sys, &format!("sending SIGTERM to all processes: {e}, ignoring"));
        }
        if !self.wait_for_all(sys, sup, TERM_TIMEOUT) {
            crate::warn(sys, "processes left after SIGTERM, sending SIGKILL");
            if let Err(e) = sys.kill_all(KillSignal::Kill) {
                crate::warn(sys, &format!("sending SIGKILL to all processes: {e}, ignoring"));
            }
            self.wait_for_all(sys, sup, KILL_TIMEOUT);
        }
        sup.close_files(sys, sys.boottime());
        sys.sync();
        unmount::unmount_all(sys);
        let doing = match how {
            Shutdown::Reboot => "rebooting",
            Shutdown::PowerOff => "powering off",
            Shutdown::Halt => "halting",
        };
        sys.console(&format!("{PREFIX}{doing}"));
        sys.reboot(how)
    }

    /// Reaps until no child is left (true) or `timeout` passed (false).
    fn wait_for_all(&mut self, sys: &dyn Sys, sup: &mut Supervisor, timeout: Duration) -> bool {
        let deadline = sys.boottime() + timeout;
        sup.reap(sys, sys.boottime());
        loop {
            if sup.none_left() {
                return true;
            }
            if sys.boottime() >= deadline {
                return false;
            }
            let _ = self.turn(sys, sup, &mut [], Some(deadline));
        }
    }
}

#[cfg(test)]
mod tests;
