//! A recording [`Sys`] for unit tests: reads come from a temporary directory standing in for `/`, every
//! action is recorded as one line (`mount proc /proc proc nosuid,nodev,noexec`), time is virtual and only
//! moves when the code sleeps or waits, and failures are injected per call prefix.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Errno, Exit, ExitStatus, KillSignal, Mount, Shutdown, Signal, Sys};

type Event = Box<dyn FnOnce(&Path)>;

pub struct FakeSys {
    root: tempfile::TempDir,
    calls: RefCell<Vec<String>>,
    clock: Cell<Duration>,
    failures: RefCell<Vec<(String, Errno)>>,
    signals: RefCell<VecDeque<Signal>>,
    exits: RefCell<VecDeque<Result<Option<Exit>, Errno>>>,
    events: RefCell<Vec<(Duration, Event)>>,
    pub ram_root: Cell<bool>,
    pub new_root_device: Cell<u64>,
    /// `st_dev` of `/`.
    pub root_device: Cell<u64>,
}

impl FakeSys {
    pub fn new() -> Self {
        FakeSys {
            root: tempfile::tempdir().unwrap(),
            calls: RefCell::default(),
            clock: Cell::new(Duration::from_millis(1500)),
            failures: RefCell::default(),
            signals: RefCell::default(),
            exits: RefCell::default(),
            events: RefCell::default(),
            ram_root: Cell::new(true),
            new_root_device: Cell::new(2),
            root_device: Cell::new(1),
        }
    }

    /// The host path standing in for `path` on the node.
    pub fn host(&self, path: impl AsRef<Path>) -> PathBuf {
        let p = path.as_ref();
        self.root.path().join(p.strip_prefix("/").unwrap_or(p))
    }

    /// Creates a file (and its parents) in the fake tree.
    pub fn write(&self, path: &str, content: impl AsRef<[u8]>) {
        write_under(self.root.path(), path, content.as_ref());
    }

    /// Runs `event` on the fake tree once the virtual clock passed `at` (e.g. a disk showing up).
    pub fn at(&self, at: Duration, event: impl FnOnce(&Path) + 'static) {
        self.events.borrow_mut().push((at, Box::new(event)));
    }

    /// Every call whose record starts with `prefix` fails with `errno`.
    pub fn fail(&self, prefix: &str, errno: Errno) {
        self.failures.borrow_mut().push((prefix.to_owned(), errno));
    }

    pub fn queue_signal(&self, s: Signal) {
        self.signals.borrow_mut().push_back(s);
    }

    pub fn queue_exit(&self, e: Result<Option<Exit>, Errno>) {
        self.exits.borrow_mut().push_back(e);
    }

    pub fn calls(&self) -> Vec<String> {
        self.calls.borrow().clone()
    }

    /// Recorded calls starting with one of `prefixes`, in order.
    pub fn calls_matching(&self, prefixes: &[&str]) -> Vec<String> {
        self.calls
            .borrow()
            .iter()
            .filter(|c| prefixes.iter().any(|p| c.starts_with(p)))
            .cloned()
            .collect()
    }

    /// The lines written to the console.
    pub fn console_lines(&self) -> Vec<String> {
        self.calls
            .borrow()
            .iter()
            .filter_map(|c| c.strip_prefix("console ").map(str::to_owned))
            .collect()
    }

    pub fn now(&self) -> Duration {
        self.clock.get()
    }

    fn advance(&self, d: Duration) {
        self.clock.set(self.clock.get() + d);
        let now = self.clock.get();
        let due: Vec<Event> = {
            let mut events = self.events.borrow_mut();
            let (due, later): (Vec<_>, Vec<_>) = events.drain(..).partition(|(t, _)| *t <= now);
            *events = later;
            due.into_iter().map(|(_, e)| e).collect()
        };
        for e in due {
            e(self.root.path());
        }
    }

    fn record(&self, call: String) -> io::Result<()> {
        let failure = self
            .failures
            .borrow()
            .iter()
            .find(|(p, _)| call.starts_with(p.as_str()))
            .map(|(_, e)| *e);
        self.calls.borrow_mut().push(call);
        match failure {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }
}

pub fn write_under(root: &Path, path: &str, content: &[u8]) {
    let p = root.join(path.trim_start_matches('/'));
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

fn flag_names(flags: super::MountFlags) -> String {
    let names: Vec<String> = flags.iter_names().map(|(n, _)| n.to_ascii_lowercase()).collect();
    if names.is_empty() {
        "-".to_owned()
    } else {
        names.join(",")
    }
}

impl Sys for FakeSys {
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(self.host(path))
    }

    fn read_at(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let all = std::fs::read(self.host(path))?;
        let start = usize::try_from(offset).unwrap().min(all.len());
        let end = (start + len).min(all.len());
        Ok(all[start..end].to_vec())
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<OsString>> {
        let mut names = std::fs::read_dir(self.host(path))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<Vec<_>>>()?;
        names.sort();
        Ok(names)
    }

    fn exists(&self, path: &Path) -> bool {
        self.host(path).exists()
    }

    fn kernel_release(&self) -> String {
        "6.1.0-test".to_owned()
    }

    fn boottime(&self) -> Duration {
        self.clock.get()
    }

    fn console(&self, line: &str) {
        let _ = self.record(format!("console {line}"));
    }

    fn setup_console(&self) -> io::Result<()> {
        self.record("setup-console".to_owned())
    }

    fn mkdir(&self, path: &str) -> io::Result<()> {
        self.record(format!("mkdir {path}"))
    }

    fn mount(&self, m: &Mount<'_>) -> io::Result<()> {
        self.record(format!(
            "mount {} {} {} {} {}",
            m.source,
            m.target,
            m.fstype,
            flag_names(m.flags),
            m.data.unwrap_or("-")
        ))
    }

    fn move_mount(&self, from: &str, to: &str) -> io::Result<()> {
        self.record(format!("move {from} {to}"))
    }

    fn device_of(&self, path: &str) -> io::Result<u64> {
        self.record(format!("stat {path}"))?;
        Ok(if path == "/" {
            self.root_device.get()
        } else {
            self.new_root_device.get()
        })
    }

    fn is_ram_fs(&self, path: &str) -> io::Result<bool> {
        self.record(format!("statfs {path}"))?;
        Ok(self.ram_root.get())
    }

    fn remove_same_device(&self, dir: &str) -> io::Result<usize> {
        self.record(format!("remove-same-device {dir}"))?;
        Ok(0)
    }

    fn chdir(&self, path: &str) -> io::Result<()> {
        self.record(format!("chdir {path}"))
    }

    fn chroot(&self, path: &str) -> io::Result<()> {
        self.record(format!("chroot {path}"))
    }

    fn sync(&self) {
        let _ = self.record("sync".to_owned());
    }

    fn load_module(&self, path: &Path) -> io::Result<()> {
        self.record(format!("load {}", path.display()))
    }

    fn exec(&self, path: &str) -> io::Error {
        match self.record(format!("exec {path}")) {
            Err(e) => e,
            Ok(()) => Errno::NOENT.into(),
        }
    }

    fn block_signals(&self) -> io::Result<()> {
        self.record("block-signals".to_owned())
    }

    fn disable_ctrl_alt_del(&self) -> io::Result<()> {
        self.record("cad-off".to_owned())
    }

    fn wait_signal(&self, timeout: Option<Duration>) -> io::Result<Option<Signal>> {
        if let Some(s) = self.signals.borrow_mut().pop_front() {
            return Ok(Some(s));
        }
        self.advance(timeout.unwrap_or(Duration::from_secs(1)));
        Ok(None)
    }

    fn reap_one(&self) -> io::Result<Option<Exit>> {
        match self.exits.borrow_mut().pop_front() {
            Some(Ok(e)) => Ok(e),
            Some(Err(e)) => Err(e.into()),
            None => Err(Errno::CHILD.into()),
        }
    }

    fn kill_all(&self, sig: KillSignal) -> io::Result<()> {
        self.record(format!("kill-all {sig:?}").to_ascii_lowercase())
    }

    fn sleep(&self, d: Duration) {
        let _ = self.record(format!("sleep {d:?}"));
        self.advance(d);
    }

    fn reboot(&self, how: Shutdown) -> io::Error {
        match self.record(format!("reboot {}", how.name())) {
            Err(e) => e,
            Ok(()) => io::Error::other("fake reboot returned"),
        }
    }

    fn write_file(&self, path: &str, bytes: &[u8]) -> io::Result<()> {
        self.record(format!(
            "write {path} {}",
            String::from_utf8_lossy(bytes).trim_end()
        ))?;
        write_under(self.root.path(), path, bytes);
        Ok(())
    }

    fn write_file_atomic(&self, path: &str, bytes: &[u8], mode: u32) -> io::Result<()> {
        self.record(format!("write-atomic {path} {mode:o}"))?;
        write_under(self.root.path(), path, bytes);
        Ok(())
    }

    fn write_at_sync(&self, path: &str, offset: u64, bytes: &[u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt as _;
        self.record(format!("write-at {path} {offset} {}", bytes.len()))?;
        let f = std::fs::OpenOptions::new().write(true).open(self.host(path))?;
        f.write_all_at(bytes, offset)
    }

    fn resize_partition(&self, disk: &str, number: u32, start: u64, len: u64) -> io::Result<()> {
        self.record(format!("resize-partition {disk} {number} {start} {len}"))
    }

    fn run(&self, argv: &[&str]) -> io::Result<ExitStatus> {
        self.record(format!("run {}", argv.join(" ")))?;
        Ok(ExitStatus::Code(0))
    }

    fn set_hostname(&self, name: &str) -> io::Result<()> {
        self.record(format!("hostname {name}"))
    }

    fn random(&self, buf: &mut [u8]) -> io::Result<()> {
        self.record(format!("random {}", buf.len()))?;
        for (i, b) in buf.iter_mut().enumerate() {
            *b = i as u8 * 17;
        }
        Ok(())
    }
}
