//! Where service output goes.
//!
//! PID 1 reads each service's stdout and stderr (one pipe) and splits it into lines. Every line goes to
//! `/var/log/ingot/<name>.log` ([`LOG_DIR`]) and to the console as `<name>| line`.
//!
//! - **Files** are opened for appending (close-on-exec) when the service starts, so they continue across
//!   restarts and boots. When a file would pass [`ROTATE_AT`] (1 MiB) it is renamed to `<name>.log.1`,
//!   `.1` to `.2` and so on; [`KEEP`] old files are kept, the oldest is replaced. If the directory cannot
//!   be written (no `/var` yet, read-only, full) one warning is printed and the output goes to the console
//!   only; the next start of the service tries again.
//! - **Lines** end at `\n` (a trailing `\r` is dropped, invalid UTF-8 replaced). A partial line is held
//!   until its end arrives, at most [`MAX_LINE`] bytes: longer lines are cut into pieces of that size.
//!   Output still partial when the pipe closes is written as a last line.
//! - **The console** is shared by everything and slow (a serial line), so each service may print a burst
//!   of [`CONSOLE_BURST`] lines and then [`CONSOLE_RATE`] lines per second. Beyond that its lines are kept
//!   from the console (the file still gets every line); the console says so when it starts and how many
//!   lines it missed once the service calms down.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ingot_spec::marker::PREFIX;

use crate::sys::{self, AppendFile, Errno, Sys};

/// Directory of the service log files.
pub const LOG_DIR: &str = "/var/log/ingot";
/// Size at which a log file is rotated.
pub const ROTATE_AT: u64 = 1 << 20;
/// How many rotated files (`.1` … `.3`) are kept.
pub const KEEP: u32 = 3;
/// The longest line kept whole; longer ones are cut.
pub const MAX_LINE: usize = 4096;
/// Lines a service may print to the console at once.
pub const CONSOLE_BURST: u64 = 200;
/// Lines per second a service may print to the console in the long run.
pub const CONSOLE_RATE: u64 = 50;

/// Splits a byte stream into lines.
#[derive(Debug, Default)]
pub struct LineSplitter {
    partial: Vec<u8>,
}

fn line_text(bytes: &[u8]) -> String {
    let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    String::from_utf8_lossy(bytes).into_owned()
}

fn push_cut(bytes: &[u8], out: &mut Vec<String>) {
    if bytes.is_empty() {
        out.push(String::new());
    }
    for piece in bytes.chunks(MAX_LINE) {
        out.push(line_text(piece));
    }
}

impl LineSplitter {
    /// Adds `data`; appends the lines it completes to `out`.
    pub fn push(&mut self, data: &[u8], out: &mut Vec<String>) {
        let mut rest = data;
        while let Some(i) = rest.iter().position(|&b| b == b'\n') {
            let line = rest.get(..i).unwrap_or_default();
            if self.partial.is_empty() {
                push_cut(line, out);
            } else {
                self.partial.extend_from_slice(line);
                push_cut(&self.partial, out);
                self.partial.clear();
            }
            rest = rest.get(i + 1..).unwrap_or_default();
        }
        self.partial.extend_from_slice(rest);
        if self.partial.len() >= MAX_LINE {
            let whole = self.partial.len() / MAX_LINE * MAX_LINE;
            let head: Vec<u8> = self.partial.drain(..whole).collect();
            push_cut(&head, out);
        }
    }

    /// At end of file: the partial line, if any.
    pub fn finish(&mut self, out: &mut Vec<String>) {
        if !self.partial.is_empty() {
            push_cut(&std::mem::take(&mut self.partial), out);
        }
    }
}

/// Whether a console line may be shown (a token bucket per service).
#[derive(Debug)]
pub struct ConsoleLimiter {
    /// Thousandths of a line.
    tokens: u64,
    last: Option<Duration>,
    dropped: u64,
}

impl Default for ConsoleLimiter {
    fn default() -> Self {
        ConsoleLimiter {
            tokens: CONSOLE_BURST * 1000,
            last: None,
            dropped: 0,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Show,
    /// Show, after saying that this many lines were held back.
    ShowAfterDropping(u64),
    /// Hold back; `first` of a run of held-back lines.
    Drop {
        first: bool,
    },
}

impl ConsoleLimiter {
    pub fn admit(&mut self, now: Duration) -> Verdict {
        let elapsed = self.last.map_or(0, |l| {
            u64::try_from(now.saturating_sub(l).as_millis()).unwrap_or(u64::MAX)
        });
        self.last = Some(now);
        // CONSOLE_RATE lines per second = CONSOLE_RATE thousandths of a line per millisecond.
        self.tokens = self
            .tokens
            .saturating_add(elapsed.saturating_mul(CONSOLE_RATE))
            .min(CONSOLE_BURST * 1000);
        if self.tokens >= 1000 {
            self.tokens -= 1000;
            match std::mem::take(&mut self.dropped) {
                0 => Verdict::Show,
                n => Verdict::ShowAfterDropping(n),
            }
        } else {
            self.dropped += 1;
            Verdict::Drop {
                first: self.dropped == 1,
            }
        }
    }

    /// Lines held back and not yet reported.
    pub fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.dropped)
    }
}

/// The log directory, shared by all services: created on first use, one warning when unusable.
#[derive(Debug)]
pub struct LogDir {
    dir: PathBuf,
    warned: bool,
}

impl Default for LogDir {
    fn default() -> Self {
        LogDir {
            dir: PathBuf::from(LOG_DIR),
            warned: false,
        }
    }
}

impl LogDir {
    fn warn_once(&mut self, sys: &dyn Sys, what: &str) {
        if !std::mem::replace(&mut self.warned, true) {
            crate::warn(sys, &format!("{what}, service output goes to the console only"));
        }
    }

    /// Opens `<dir>/<name>.log`, creating the directory; `None` (after a warning, the first time) when
    /// that fails.
    fn open(&mut self, sys: &dyn Sys, name: &str) -> Option<LogFile> {
        if let Err(e) = mkdir_all(sys, &self.dir) {
            self.warn_once(sys, &format!("creating {}: {e}", self.dir.display()));
            return None;
        }
        let path = self.dir.join(format!("{name}.log"));
        let opened = sys.open_append(&path).and_then(|f| f.len().map(|size| (f, size)));
        match opened {
            Ok((file, size)) => Some(LogFile {
                path,
                file,
                size,
                rotate_failed: false,
            }),
            Err(e) => {
                self.warn_once(sys, &format!("opening {}: {e}", path.display()));
                None
            }
        }
    }
}

/// Creates `dir` and its missing parents.
fn mkdir_all(sys: &dyn Sys, dir: &Path) -> io::Result<()> {
    let missing: Vec<&Path> = dir.ancestors().take_while(|d| !sys.exists(d)).collect();
    for d in missing.into_iter().rev() {
        let s = d
            .to_str()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path is not UTF-8"))?;
        sys.mkdir(s)?;
    }
    Ok(())
}

#[derive(Debug)]
struct LogFile {
    path: PathBuf,
    file: AppendFile,
    size: u64,
    rotate_failed: bool,
}

fn numbered(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

impl LogFile {
    /// `x.log.2` → `x.log.3`, `x.log.1` → `x.log.2`, `x.log` → `x.log.1`, then a new `x.log`.
    fn rotate(&mut self, sys: &dyn Sys) -> io::Result<()> {
        for n in (1..KEEP).rev() {
            match sys.rename(&numbered(&self.path, n), &numbered(&self.path, n + 1)) {
                Err(e) if !sys::is_errno(&e, Errno::NOENT) => return Err(e),
                _ => {}
            }
        }
        sys.rename(&self.path, &numbered(&self.path, 1))?;
        self.file = sys.open_append(&self.path)?;
        self.size = 0;
        Ok(())
    }

    fn write(&mut self, sys: &dyn Sys, name: &str, batch: &[u8]) -> io::Result<()> {
        let len = u64::try_from(batch.len()).unwrap_or(u64::MAX);
        if self.size > 0
            && self.size.saturating_add(len) > ROTATE_AT
            && !self.rotate_failed
            && let Err(e) = self.rotate(sys)
        {
            self.rotate_failed = true;
            crate::warn(
                sys,
                &format!(
                    "rotating {}: {e}, {name}'s log keeps growing, ignoring",
                    self.path.display()
                ),
            );
        }
        self.file.write_all(batch)?;
        self.size = self.size.saturating_add(len);
        Ok(())
    }
}

/// One service's output sink: its log file and its console allowance.
#[derive(Debug)]
pub struct ServiceLog {
    name: String,
    file: Option<LogFile>,
    console: ConsoleLimiter,
}

impl ServiceLog {
    pub fn new(name: &str) -> ServiceLog {
        ServiceLog {
            name: name.to_owned(),
            file: None,
            console: ConsoleLimiter::default(),
        }
    }

    /// Opens the log file if it is not open (called when the service starts).
    pub fn open(&mut self, sys: &dyn Sys, dir: &mut LogDir) {
        if self.file.is_none() {
            self.file = dir.open(sys, &self.name);
        }
    }

    fn say(&self, sys: &dyn Sys, msg: &str) {
        sys.console(&format!("{PREFIX}service {}{msg}", self.name));
    }

    /// Writes lines to the file and, as the rate limit allows, to the console.
    pub fn write(&mut self, sys: &dyn Sys, now: Duration, lines: &[String]) {
        if lines.is_empty() {
            return;
        }
        if let Some(f) = &mut self.file {
            let mut batch = Vec::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
            for l in lines {
                batch.extend_from_slice(l.as_bytes());
                batch.push(b'\n');
            }
            if let Err(e) = f.write(sys, &self.name, &batch) {
                crate::warn(
                    sys,
                    &format!(
                        "writing {}: {e}, {}'s output goes to the console only until it restarts",
                        f.path.display(),
                        self.name
                    ),
                );
                self.file = None;
            }
        }
        for l in lines {
            match self.console.admit(now) {
                Verdict::Show => {}
                Verdict::ShowAfterDropping(n) => self.report_dropped(sys, n),
                Verdict::Drop { first } => {
                    if first {
                        let whereto = match &self.file {
                            Some(f) => format!("all lines are kept in {}", f.path.display()),
                            None => "they are lost: there is no log file".to_owned(),
                        };
                        self.say(
                            sys,
                            &format!(" writes too fast, hiding its lines from the console ({whereto})"),
                        );
                    }
                    continue;
                }
            }
            sys.console(&format!("{}| {l}", self.name));
        }
    }

    /// Says how many lines were held back, if any (when its output ends).
    pub fn flush(&mut self, sys: &dyn Sys) {
        let n = self.console.take_dropped();
        if n > 0 {
            self.report_dropped(sys, n);
        }
    }

    /// Closes the log file (at shutdown, so its file system can be unmounted); the next
    /// [`ServiceLog::open`] opens it again.
    pub fn close(&mut self) {
        self.file = None;
    }

    fn report_dropped(&self, sys: &dyn Sys, n: u64) {
        self.say(sys, &format!(": {n} lines were not shown on the console"));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::sys::fake::FakeSys;

    fn split(chunks: &[&[u8]]) -> Vec<String> {
        let mut s = LineSplitter::default();
        let mut out = Vec::new();
        for c in chunks {
            s.push(c, &mut out);
        }
        s.finish(&mut out);
        out
    }

    #[test]
    fn splits_lines_across_reads_and_keeps_the_partial_end() {
        assert_eq!(
            split(&[b"one\r\ntw", b"o\n\nthr", b"ee"]),
            ["one", "two", "", "three"]
        );
        assert_eq!(split(&[b"bad \xff byte\n"]), ["bad \u{fffd} byte"]);
    }

    #[test]
    fn cuts_lines_longer_than_the_limit() {
        let long = vec![b'x'; MAX_LINE * 2 + 10];
        let mut s = LineSplitter::default();
        let mut out = Vec::new();
        s.push(&long[..MAX_LINE + 5], &mut out);
        assert_eq!(out.len(), 1, "a full piece is written before the line ends");
        s.push(&long[MAX_LINE + 5..], &mut out);
        s.push(b"\nnext\n", &mut out);
        let lens: Vec<usize> = out.iter().map(String::len).collect();
        assert_eq!(lens, [MAX_LINE, MAX_LINE, 10, 4]);
    }

    proptest! {
        #[test]
        fn splitting_loses_no_bytes(data in proptest::collection::vec(prop_oneof![Just(b'\n'), Just(b'a'), Just(b'b')], 0..10_000), cut in 0usize..10_000) {
            let cut = cut.min(data.len());
            let got = split(&[&data[..cut], &data[cut..]]);
            let expected: Vec<String> = {
                let mut v: Vec<String> = Vec::new();
                let text = String::from_utf8(data.clone()).unwrap();
                let mut parts: Vec<&str> = text.split('\n').collect();
                if parts.last() == Some(&"") { parts.pop(); }
                for p in parts {
                    if p.is_empty() { v.push(String::new()); }
                    for c in p.as_bytes().chunks(MAX_LINE) { v.push(String::from_utf8(c.to_vec()).unwrap()); }
                }
                v
            };
            prop_assert_eq!(got, expected);
        }
    }

    #[test]
    fn console_allows_a_burst_then_the_rate() {
        let mut c = ConsoleLimiter::default();
        let t = Duration::from_secs(10);
        for _ in 0..CONSOLE_BURST {
            assert_eq!(c.admit(t), Verdict::Show);
        }
        assert_eq!(c.admit(t), Verdict::Drop { first: true });
        assert_eq!(c.admit(t), Verdict::Drop { first: false });
        // 20 ms at 50 lines/s is one line.
        assert_eq!(
            c.admit(t + Duration::from_millis(20)),
            Verdict::ShowAfterDropping(2)
        );
        assert_eq!(
            c.admit(t + Duration::from_millis(20)),
            Verdict::Drop { first: true }
        );
        // Quiet for long enough refills the whole burst, not more.
        let later = t + Duration::from_secs(3600);
        assert_eq!(c.admit(later), Verdict::ShowAfterDropping(1));
        for _ in 1..CONSOLE_BURST {
            assert_eq!(c.admit(later), Verdict::Show);
        }
        assert_eq!(c.admit(later), Verdict::Drop { first: true });
    }

    fn lines(range: std::ops::Range<usize>) -> Vec<String> {
        range.map(|i| format!("line {i}")).collect()
    }

    #[test]
    fn a_flood_keeps_every_line_in_the_file_and_says_what_the_console_missed() {
        let sys = FakeSys::new();
        let mut dir = LogDir::default();
        let mut log = ServiceLog::new("chatty");
        log.open(&sys, &mut dir);
        let t = Duration::from_secs(5);
        log.write(&sys, t, &lines(0..300));
        log.write(&sys, t + Duration::from_millis(40), &lines(300..301));
        log.flush(&sys);
        let file = std::fs::read_to_string(sys.host("/var/log/ingot/chatty.log")).unwrap();
        assert_eq!(file.lines().count(), 301);
        assert!(file.ends_with("line 299\nline 300\n"));
        let console = sys.console_lines();
        assert_eq!(console.len(), 200 + 1 + 1 + 1);
        assert_eq!(console[0], "chatty| line 0");
        assert_eq!(console[199], "chatty| line 199");
        assert_eq!(
            console[200],
            "ingot: service chatty writes too fast, hiding its lines from the console (all lines are kept in /var/log/ingot/chatty.log)"
        );
        assert_eq!(
            console[201],
            "ingot: service chatty: 100 lines were not shown on the console"
        );
        assert_eq!(console[202], "chatty| line 300");
    }

    #[test]
    fn rotates_at_one_mebibyte_keeping_three_old_files() {
        let sys = FakeSys::new();
        let mut dir = LogDir::default();
        let mut log = ServiceLog::new("big");
        log.open(&sys, &mut dir);
        // 64 KiB batches: 16 fill one file; 5 files' worth of output.
        let line = "x".repeat(1023);
        let batch: Vec<String> = vec![line; 64];
        for i in 0..(16 * 5) {
            log.write(&sys, Duration::from_secs(3600 * i), &batch);
        }
        let size = |p: &str| std::fs::metadata(sys.host(p)).map(|m| m.len()).ok();
        assert_eq!(size("/var/log/ingot/big.log"), Some(ROTATE_AT));
        for n in 1..=3 {
            assert_eq!(size(&format!("/var/log/ingot/big.log.{n}")), Some(ROTATE_AT));
        }
        assert_eq!(size("/var/log/ingot/big.log.4"), None);
        // A reopened log continues the current file.
        let mut again = ServiceLog::new("big");
        again.open(&sys, &mut dir);
        again.write(&sys, Duration::ZERO, &["after".to_owned()]);
        let files = std::fs::read_dir(sys.host("/var/log/ingot")).unwrap().count();
        assert_eq!(files, 4);
        assert_eq!(size("/var/log/ingot/big.log"), Some(6));
    }

    #[test]
    fn an_unwritable_log_directory_warns_once_and_falls_back_to_the_console() {
        let sys = FakeSys::new();
        sys.fail("mkdir /var", Errno::ROFS);
        let mut dir = LogDir::default();
        let mut a = ServiceLog::new("a");
        let mut b = ServiceLog::new("b");
        a.open(&sys, &mut dir);
        b.open(&sys, &mut dir);
        a.write(&sys, Duration::ZERO, &["hello".to_owned()]);
        assert_eq!(
            sys.console_lines(),
            [
                "ingot: warning creating /var/log/ingot: Read-only file system (os error 30), service output goes to the console only",
                "a| hello",
            ]
        );
    }

    #[test]
    fn a_failing_write_falls_back_to_the_console() {
        let sys = FakeSys::new();
        let mut dir = LogDir::default();
        let mut log = ServiceLog::new("a");
        log.open(&sys, &mut dir);
        // A full disk: every write to /dev/full fails with ENOSPC.
        log.file.as_mut().unwrap().file = AppendFile::open(Path::new("/dev/full")).unwrap();
        log.write(&sys, Duration::ZERO, &["one".to_owned()]);
        log.write(&sys, Duration::ZERO, &["two".to_owned()]);
        assert_eq!(
            sys.console_lines(),
            [
                "ingot: warning writing /var/log/ingot/a.log: No space left on device (os error 28), a's output goes to the console only until it restarts",
                "a| one",
                "a| two",
            ]
        );
    }
}
