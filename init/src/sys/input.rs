//! Reading key events from an evdev device (`/dev/input/eventN`): the ACPI power button.

use std::fs::File;
use std::io::{self, Read as _};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt as _;

/// `struct input_event` on 64-bit Linux: a `timeval` (16 bytes), then type, code (u16) and value (i32).
pub const EVENT_SIZE: usize = 24;

/// An evdev device opened read-only, non-blocking and close-on-exec.
#[derive(Debug)]
pub struct EventDevice {
    file: File,
}

impl EventDevice {
    pub fn open(path: &str) -> io::Result<EventDevice> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)?;
        Ok(EventDevice { file })
    }

    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Reads whatever events are queued (a whole number of `EVENT_SIZE` records); empty when none.
    pub fn read_events(&mut self) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; EVENT_SIZE * 32];
        match self.file.read(&mut buf) {
            Ok(n) => {
                buf.truncate(n - n % EVENT_SIZE);
                Ok(buf)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }
}

/// Asks PID 1 itself for a power-off, exactly as `SIGPWR` from outside would.
pub fn request_power_off() -> io::Result<()> {
    rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::POWER)?;
    Ok(())
}
