//! `/run/ingot/status.json`: what PID 1 knows about the boot and the services, for people and tools on
//! the node (`cat /run/ingot/status.json`).
//!
//! Rewritten atomically (temporary file, rename) after every change, at most every [`MIN_INTERVAL`]; a
//! change within that time is written when it is over. Times are milliseconds of `CLOCK_BOOTTIME`, like
//! the console's phase lines. Shape:
//!
//! ```json
//! {
//!   "t_ms": 4120,
//!   "phases": [{ "name": "stage2", "t_ms": 1503 }, { "name": "network", "t_ms": 2310 }],
//!   "services": [
//!     { "name": "containerd", "kind": "daemon", "state": "ready", "pid": 312, "restarts": 1,
//!       "last_exit": { "signal": 9 }, "since_ms": 3980 }
//!   ]
//! }
//! ```
//!
//! `state` is one of `waiting` (dependencies or the start of services pending), `starting` (readiness
//! check not passed yet), `ready`, `running` (a one-shot at work, or a daemon whose readiness check has
//! not passed within its time), `backoff` (waiting to restart), `exited` (ended and not restarted: a
//! one-shot done, or a daemon whose policy stops it), `failed` (will not run again; `reason` says why),
//! `stopping`, `stopped` (at shutdown). `last_exit` is `{"code": n}`, `{"signal": n}` or
//! `{"error": "…"}` (could not be started).

use std::time::Duration;

use serde::Serialize;

use crate::sys::{self, Errno, Sys};

/// Where the status file lives (on the `/run` tmpfs).
pub const STATUS_PATH: &str = "/run/ingot/status.json";
/// The status file is rewritten at most this often.
pub const MIN_INTERVAL: Duration = Duration::from_millis(250);

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Status<'a> {
    pub t_ms: u64,
    pub phases: &'a [Phase],
    pub services: Vec<ServiceStatus<'a>>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Phase {
    pub name: String,
    pub t_ms: u64,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct ServiceStatus<'a> {
    pub name: &'a str,
    pub kind: &'static str,
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    pub restarts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<LastExit>,
    pub since_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LastExit {
    Code(i32),
    Signal(i32),
    Error(String),
}

pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// When the status file is due, and whether writing it works.
#[derive(Debug, Default)]
pub struct StatusWriter {
    dirty: bool,
    last_write: Option<Duration>,
    warned: bool,
}

impl StatusWriter {
    /// Something changed: write soon.
    pub fn touch(&mut self) {
        self.dirty = true;
    }

    /// When the next write is due, if one is pending.
    pub fn due(&self) -> Option<Duration> {
        self.dirty
            .then(|| self.last_write.map_or(Duration::ZERO, |t| t + MIN_INTERVAL))
    }

    /// Writes `render()` if a write is due at `now` (or `force`).
    pub fn write_if_due(
        &mut self,
        sys: &dyn Sys,
        now: Duration,
        force: bool,
        render: impl FnOnce() -> String,
    ) {
        if !self.dirty || (!force && self.due().is_some_and(|t| now < t)) {
            return;
        }
        self.dirty = false;
        self.last_write = Some(now);
        let result = sys.write_file_atomic(STATUS_PATH, render().as_bytes(), 0o644);
        match result {
            Ok(()) => self.warned = false,
            Err(e) if !self.warned => {
                self.warned = true;
                let hint = if sys::is_errno(&e, Errno::NOENT) {
                    " (/run is not mounted)"
                } else {
                    ""
                };
                crate::warn(
                    sys,
                    &format!("writing {STATUS_PATH}: {e}{hint}, ignoring until it works"),
                );
            }
            Err(_) => {}
        }
    }
}

pub fn render(status: &Status<'_>) -> String {
    // Serializing these types cannot fail: string keys, no floats.
    let mut s = serde_json::to_string_pretty(status).unwrap_or_default();
    s.push('\n');
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::sys::fake::FakeSys;

    #[test]
    fn writes_at_most_every_interval_and_warns_once() {
        let sys = FakeSys::new();
        let mut w = StatusWriter::default();
        let t = Duration::from_secs(2);
        assert_eq!(w.due(), None);
        w.touch();
        assert_eq!(w.due(), Some(Duration::ZERO));
        w.write_if_due(&sys, t, false, || "1".into());
        assert_eq!(std::fs::read_to_string(sys.host(STATUS_PATH)).unwrap(), "1");
        w.touch();
        assert_eq!(w.due(), Some(t + MIN_INTERVAL));
        w.write_if_due(&sys, t + Duration::from_millis(100), false, || "2".into());
        assert_eq!(std::fs::read_to_string(sys.host(STATUS_PATH)).unwrap(), "1");
        w.write_if_due(&sys, t + MIN_INTERVAL, false, || "3".into());
        assert_eq!(std::fs::read_to_string(sys.host(STATUS_PATH)).unwrap(), "3");

        sys.fail("write-atomic /run", Errno::NOSPC);
        for i in 0..3 {
            w.touch();
            w.write_if_due(&sys, t + Duration::from_secs(10 + i), false, || "4".into());
        }
        assert_eq!(
            sys.console_lines(),
            [
                "ingot: warning writing /run/ingot/status.json: No space left on device (os error 28), ignoring until it works"
            ]
        );
    }
}
