//! The serial console: bytes from QEMU's stdout become clean lines with arrival times.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Longest line kept in one piece; longer runs without a newline are split.
pub const MAX_LINE_BYTES: usize = 4096;

/// How many lines a VM keeps for [`Vm::console_lines`](crate::Vm::console_lines).
pub const RETAINED_LINES: usize = 10_000;

/// Splits a byte stream into lines. Removes terminal escape sequences (firmware clears the screen and sets
/// colours), carriage returns and other control characters; applies backspaces; decodes UTF-8 lossily.
#[derive(Debug, Default)]
pub struct LineSplitter {
    buf: Vec<u8>,
    state: EscState,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum EscState {
    #[default]
    Text,
    /// After ESC.
    Esc,
    /// Inside `ESC [ ...` until a final byte.
    Csi,
    /// Inside `ESC ] ...` until BEL or `ESC \`.
    Osc,
    /// ESC seen inside an OSC.
    OscEsc,
}

impl LineSplitter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes and calls `line` for every completed line.
    pub fn feed(&mut self, bytes: &[u8], mut line: impl FnMut(String)) {
        for &b in bytes {
            match self.state {
                EscState::Text => match b {
                    b'\n' => line(self.take()),
                    0x1b => self.state = EscState::Esc,
                    0x08 => {
                        self.buf.pop();
                    }
                    b'\t' => self.push(b, &mut line),
                    0x00..=0x1f | 0x7f => {}
                    _ => self.push(b, &mut line),
                },
                EscState::Esc => {
                    self.state = match b {
                        b'[' => EscState::Csi,
                        b']' => EscState::Osc,
                        // Two-byte sequences (`ESC =`, `ESC c`, `ESC (B` is rare enough to leak one byte).
                        _ => EscState::Text,
                    }
                }
                EscState::Csi => {
                    if (0x40..=0x7e).contains(&b) {
                        self.state = EscState::Text;
                    }
                }
                EscState::Osc => match b {
                    0x07 => self.state = EscState::Text,
                    0x1b => self.state = EscState::OscEsc,
                    _ => {}
                },
                EscState::OscEsc => self.state = if b == b'\\' { EscState::Text } else { EscState::Osc },
            }
        }
    }

    /// Returns the unfinished last line, if any (at end of stream).
    pub fn finish(&mut self) -> Option<String> {
        (!self.buf.is_empty()).then(|| self.take())
    }

    fn push(&mut self, b: u8, line: &mut impl FnMut(String)) {
        self.buf.push(b);
        if self.buf.len() >= MAX_LINE_BYTES {
            line(self.take());
        }
    }

    fn take(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.buf).into_owned();
        self.buf.clear();
        s
    }
}

/// True for a line that proves an operating system runs: a kernel printk timestamp (`[    0.123456]`), the
/// kernel's `Linux version` banner, or a line from `ingot-init`. Firmware, boot loader and EFI stub lines do
/// not count: they appear under a KVM that later hangs.
pub fn is_os_line(line: &str) -> bool {
    let t = line.trim_start();
    t.starts_with(ingot_spec::marker::PREFIX.trim_end())
        || line.contains("Linux version ")
        || has_printk_timestamp(line)
}

/// Finds `[`, optional spaces, digits, `.`, six digits, `]` anywhere in the line.
fn has_printk_timestamp(line: &str) -> bool {
    let b = line.as_bytes();
    b.iter().enumerate().filter(|&(_, &c)| c == b'[').any(|(i, _)| {
        let mut j = i + 1;
        while j < b.len() && b[j] == b' ' {
            j += 1;
        }
        let int_start = j;
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
        if j == int_start || b.get(j) != Some(&b'.') {
            return false;
        }
        let frac = &b[j + 1..];
        frac.len() > 6 && frac[..6].iter().all(u8::is_ascii_digit) && frac[6] == b']'
    })
}

/// One console line and when it arrived, measured from QEMU's start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsoleLine {
    pub text: String,
    pub at: Duration,
}

#[derive(Debug, Default)]
pub(crate) struct ConsoleState {
    pub lines: VecDeque<ConsoleLine>,
    /// Sequence number of `lines[0]`.
    pub first_seq: u64,
    /// Arrival of the first line [`is_os_line`] accepts.
    pub first_os_line: Option<Duration>,
    /// Arrival of the first line of any kind.
    pub first_line: Option<Duration>,
    /// QEMU closed its stdout (it exited).
    pub eof: bool,
}

impl ConsoleState {
    pub fn next_seq(&self) -> u64 {
        self.first_seq + self.lines.len() as u64
    }

    pub fn tail(&self, n: usize) -> Vec<String> {
        let skip = self.lines.len().saturating_sub(n);
        self.lines.iter().skip(skip).map(|l| l.text.clone()).collect()
    }

    fn push(&mut self, line: ConsoleLine) {
        self.first_line.get_or_insert(line.at);
        if self.first_os_line.is_none() && is_os_line(&line.text) {
            self.first_os_line = Some(line.at);
        }
        if self.lines.len() == RETAINED_LINES {
            self.lines.pop_front();
            self.first_seq += 1;
        }
        self.lines.push_back(line);
    }
}

/// Console state shared between the reader thread and the [`Vm`](crate::Vm).
#[derive(Debug, Default)]
pub(crate) struct Console {
    state: Mutex<ConsoleState>,
    changed: Condvar,
}

impl Console {
    pub fn lock(&self) -> MutexGuard<'_, ConsoleState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until the state changes or `deadline` passes.
    pub fn wait_until<'a>(
        &self,
        guard: MutexGuard<'a, ConsoleState>,
        deadline: Instant,
    ) -> MutexGuard<'a, ConsoleState> {
        let left = deadline.saturating_duration_since(Instant::now());
        self.changed
            .wait_timeout(guard, left)
            .unwrap_or_else(PoisonError::into_inner)
            .0
    }
}

/// Where the reader thread copies lines besides the shared state.
pub(crate) struct Sinks {
    pub echo: bool,
    pub log: Option<std::fs::File>,
}

/// Reads `src` to its end, splitting lines into `console` and the sinks. Runs on its own thread.
pub(crate) fn pump(mut src: impl Read, console: Arc<Console>, mut sinks: Sinks, started: Instant) {
    let mut splitter = LineSplitter::new();
    let mut buf = [0u8; 8192];
    let publish = |text: String, sinks: &mut Sinks| {
        if sinks.echo {
            let mut out = std::io::stdout().lock();
            // The console copy is best effort: a closed stdout must not stop the VM.
            let _ = writeln!(out, "{text}");
            let _ = out.flush();
        }
        if let Some(log) = sinks.log.as_mut() {
            let _ = writeln!(log, "{text}");
        }
        console.lock().push(ConsoleLine {
            text,
            at: started.elapsed(),
        });
        console.changed.notify_all();
    };
    loop {
        match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let mut lines = Vec::new();
                splitter.feed(&buf[..n], |l| lines.push(l));
                for l in lines {
                    publish(l, &mut sinks);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    if let Some(l) = splitter.finish() {
        publish(l, &mut sinks);
    }
    console.lock().eof = true;
    console.changed.notify_all();
}

/// Keeps the last `cap` bytes of `src` (QEMU's stderr) in `out`.
pub(crate) fn collect_tail(mut src: impl Read, out: Arc<Mutex<Vec<u8>>>, cap: usize) {
    let mut buf = [0u8; 4096];
    loop {
        match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let mut o = out.lock().unwrap_or_else(PoisonError::into_inner);
                o.extend_from_slice(&buf[..n]);
                if o.len() > cap {
                    let cut = o.len() - cap;
                    o.drain(..cut);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]]) -> (Vec<String>, Option<String>) {
        let mut s = LineSplitter::new();
        let mut out = Vec::new();
        for c in chunks {
            s.feed(c, |l| out.push(l));
        }
        let rest = s.finish();
        (out, rest)
    }

    #[test]
    fn crlf_and_partial_lines() {
        let (lines, rest) = split(&[b"one\r\ntw", b"o\r", b"\nthree\nfour"]);
        assert_eq!(lines, ["one", "two", "three"]);
        assert_eq!(rest.as_deref(), Some("four"));
    }

    #[test]
    fn empty_lines_are_kept() {
        let (lines, rest) = split(&[b"\r\n\r\na\n"]);
        assert_eq!(lines, ["", "", "a"]);
        assert_eq!(rest, None);
    }

    #[test]
    fn firmware_escapes_are_removed() {
        let ovmf = b"\x1b[2J\x1b[01;01H\x1b[=3h\x1b[2J\x1b[01;01HBdsDxe: loading Boot0001\r\n";
        let ipxe = b"\x1b[1m\x1b[37m\x1b[40miPXE 1.0.0\x1b[0m -- Open Source\r\n";
        let osc = b"\x1b]0;title\x07after\x1b]2;t\x1b\\x\n";
        let (lines, _) = split(&[ovmf, ipxe, osc]);
        assert_eq!(
            lines,
            ["BdsDxe: loading Boot0001", "iPXE 1.0.0 -- Open Source", "afterx"]
        );
    }

    #[test]
    fn escape_split_across_reads() {
        let (lines, _) = split(&[b"a\x1b", b"[3", b"1mb\n"]);
        assert_eq!(lines, ["ab"]);
    }

    #[test]
    fn backspaces_and_controls() {
        let (lines, _) = split(&[b"spin-\x08 \x08\\ done\x07\tok\n"]);
        assert_eq!(lines, ["spin\\ done\tok"]);
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        let (lines, _) = split(&[b"caf\xc3\xa9 \xff\xfe end\n"]);
        assert_eq!(lines, ["caf\u{e9} \u{fffd}\u{fffd} end"]);
    }

    #[test]
    fn overlong_lines_are_split() {
        let long = vec![b'x'; MAX_LINE_BYTES + 10];
        let (lines, rest) = split(&[&long, b"\n"]);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].len(), MAX_LINE_BYTES);
        assert_eq!(lines[1].len(), 10);
        assert_eq!(rest, None);
    }

    #[test]
    fn os_lines_are_kernel_or_init() {
        for l in [
            "[    0.000000] Linux version 6.1.0-56-cloud-amd64 (debian-kernel@lists.debian.org)",
            "[    2.243290] Run /init as init process",
            "[12345.123456] late message",
            "[0.100000]",
            "Linux version 6.1.0 (builder)",
            "ingot: phase=stage1 t=812",
            "  ingot: starting",
        ] {
            assert!(is_os_line(l), "{l:?} should count");
        }
        for l in [
            "BdsDxe: loading Boot0001 \"UEFI QEMU HARDDISK QM00001 \" from PciRoot(0x0)",
            "EFI stub: Loaded initrd from LINUX_EFI_INITRD_MEDIA_GUID device path",
            "iPXE 1.0.0+git -- Open Source Network Boot Firmware",
            "Boot in 3 s.",
            "[Bds]Booting UEFI QEMU HARDDISK",
            "[ 1.12345]",
            "[    .123456]",
            "ingotx",
            "",
        ] {
            assert!(!is_os_line(l), "{l:?} should not count");
        }
    }

    #[test]
    fn pump_publishes_lines_log_and_eof() {
        let dir = tempfile::tempdir().unwrap();
        let log_path = dir.path().join("serial.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let console = Arc::new(Console::default());
        let input: &[u8] =
            b"\x1b[2JBdsDxe: starting\r\n[    0.000000] Linux version 6.1\r\ningot: phase=ready t=9\r\ntail";
        pump(
            input,
            Arc::clone(&console),
            Sinks {
                echo: false,
                log: Some(log),
            },
            Instant::now(),
        );

        let st = console.lock();
        assert!(st.eof);
        let texts: Vec<_> = st.lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(
            texts,
            [
                "BdsDxe: starting",
                "[    0.000000] Linux version 6.1",
                "ingot: phase=ready t=9",
                "tail"
            ]
        );
        assert_eq!(st.first_line, Some(st.lines[0].at));
        assert_eq!(st.first_os_line, Some(st.lines[1].at));
        assert_eq!(
            std::fs::read_to_string(&log_path).unwrap(),
            "BdsDxe: starting\n[    0.000000] Linux version 6.1\ningot: phase=ready t=9\ntail\n"
        );
    }

    #[test]
    fn state_retains_a_bounded_tail() {
        let mut st = ConsoleState::default();
        for i in 0..RETAINED_LINES + 5 {
            st.push(ConsoleLine {
                text: i.to_string(),
                at: Duration::from_millis(i as u64),
            });
        }
        assert_eq!(st.lines.len(), RETAINED_LINES);
        assert_eq!(st.first_seq, 5);
        assert_eq!(st.next_seq(), (RETAINED_LINES + 5) as u64);
        assert_eq!(
            st.tail(2),
            [(RETAINED_LINES + 3).to_string(), (RETAINED_LINES + 4).to_string()]
        );
        assert_eq!(st.first_line, Some(Duration::ZERO));
        assert_eq!(st.first_os_line, None);
    }
}
