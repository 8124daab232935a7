//! The contract between PID 1's single-threaded event loop and the things it drives (services, the DHCP
//! client, the NTP client, the power button).
//!
//! PID 1 runs no threads (it forks, and a fork next to threads can deadlock the child), so everything that
//! waits does so by handing the loop a descriptor to watch and a deadline, and doing its work in
//! [`Pollable::wake`] without blocking for long. Time is `CLOCK_BOOTTIME` since the kernel started
//! ([`crate::sys::Sys::boottime`]): it never jumps when the NTP client steps the wall clock, and the
//! recording fake controls it in tests.

use std::os::fd::RawFd;
use std::time::Duration;

use crate::sys::Sys;

pub trait Pollable {
    /// Descriptors to watch for readability now (may change between calls).
    fn fds(&self) -> Vec<RawFd>;
    /// When [`Pollable::wake`] must run next even if no descriptor became readable; `None`: only on input.
    fn deadline(&self) -> Option<Duration>;
    /// Does the due work: `readable` lists which of this pollable's descriptors have input, `now` is
    /// `CLOCK_BOOTTIME`. Must not block for more than a few milliseconds; errors are logged and retried
    /// later, never returned (PID 1 has nowhere to return them to).
    fn wake(&mut self, sys: &dyn Sys, now: Duration, readable: &[RawFd]);
}
