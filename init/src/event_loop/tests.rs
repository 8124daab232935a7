//! The loop against the recording fake, and as PID 1 of a pid namespace against the real kernel.

#![allow(clippy::unwrap_used, clippy::panic)]

use std::cell::RefCell;
use std::io::Write as _;
use std::rc::Rc;

use ingot_spec::config::{Readiness, Restart, Service, ServiceKind};

use super::*;
use crate::supervisor::State;
use crate::sys::fake::FakeSys;
use crate::sys::{Command, Errno, ExitStatus, Linux, Signal};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A pollable with a period and/or a pipe, recording when it was woken and with what.
struct Ticker {
    every: Option<Duration>,
    next: Option<Duration>,
    pipe: Option<OwnedFd>,
    wakes: Rc<RefCell<Vec<(u64, usize)>>>,
}

impl Pollable for Ticker {
    fn fds(&self) -> Vec<RawFd> {
        self.pipe.iter().map(AsRawFd::as_raw_fd).collect()
    }

    fn deadline(&self) -> Option<Duration> {
        self.next
    }

    fn wake(&mut self, _sys: &dyn Sys, now: Duration, readable: &[RawFd]) {
        self.wakes
            .borrow_mut()
            .push((u64::try_from(now.as_millis()).unwrap(), readable.len()));
        if let Some(p) = &self.pipe {
            let mut buf = [0u8; 64];
            let _ = crate::sys::fd::read_nonblocking(p.as_fd(), &mut buf);
        }
        self.next = self.every.map(|e| now + e);
    }
}

#[test]
fn a_turn_returns_the_shutdown_a_signal_asks_for() {
    let sys = FakeSys::new();
    let mut ev = EventLoop::new();
    let mut sup = Supervisor::default();
    sys.queue_signal(Signal::Hup);
    sys.queue_signal(Signal::Child);
    assert_eq!(ev.turn(&sys, &mut sup, &mut [], Some(ms(2000))), None);
    sys.queue_signal(Signal::Usr2);
    sys.queue_signal(Signal::Term);
    assert_eq!(ev.turn(&sys, &mut sup, &mut [], None), Some(Shutdown::PowerOff));
    assert_eq!(sys.calls(), ["signal-fd"], "one descriptor for all turns");
    assert_eq!(sys.now(), ms(1500), "pending signals do not wait");
}

#[test]
fn run_until_says_whether_the_condition_held_time_ran_out_or_a_shutdown_came() {
    let sys = FakeSys::new();
    let mut ev = EventLoop::new();
    let mut sup = Supervisor::default();
    assert_eq!(
        ev.run_until(&sys, &mut sup, &mut [], Some(ms(9000)), |_| true),
        Outcome::Done
    );
    assert!(sys.calls().is_empty(), "a condition that holds needs no turn");
    assert_eq!(
        ev.run_until(&sys, &mut sup, &mut [], Some(ms(4000)), |_| false),
        Outcome::TimedOut
    );
    assert_eq!(sys.now(), ms(4000));
    sys.signal_at(ms(5000), Signal::Usr1);
    assert_eq!(
        ev.run_until(&sys, &mut sup, &mut [], Some(ms(9000)), |_| false),
        Outcome::Shutdown(Shutdown::Halt)
    );
    assert_eq!(sys.now(), ms(5000));
    sys.signal_at(ms(7000), Signal::Pwr);
    let mut calls = 0;
    let how = ev.run(&sys, &mut sup, &mut [], |_| calls += 1);
    assert_eq!(how, Shutdown::PowerOff);
    assert_eq!(sys.now(), ms(7000));
    assert_eq!(calls, 2, "before the first turn and after the last");
}

#[test]
fn wakes_pollables_at_their_deadlines_and_when_their_descriptor_is_readable() {
    let sys = FakeSys::new();
    let mut ev = EventLoop::new();
    let mut sup = Supervisor::default();
    let wakes_a = Rc::default();
    let mut a = Ticker {
        every: Some(ms(250)),
        next: Some(ms(1750)),
        pipe: None,
        wakes: Rc::clone(&wakes_a),
    };
    let (r, w) = crate::sys::fd::output_pipe().unwrap();
    let wakes_b = Rc::default();
    let mut b = Ticker {
        every: None,
        next: None,
        pipe: Some(r),
        wakes: Rc::clone(&wakes_b),
    };
    let w = std::fs::File::from(w);
    let mut writer = w.try_clone().unwrap();
    sys.at(ms(2100), move |_| writer.write_all(b"x").unwrap());
    let outcome = ev.run_until(&sys, &mut sup, &mut [&mut a, &mut b], Some(ms(2600)), |_| false);
    assert_eq!(outcome, Outcome::TimedOut);
    assert_eq!(*wakes_a.borrow(), [(1750, 0), (2000, 0), (2250, 0), (2500, 0)]);
    assert_eq!(*wakes_b.borrow(), [(2100, 1)]);
    drop(w);
}

#[test]
fn without_a_signal_descriptor_it_warns_once_keeps_reaping_and_tries_again() {
    let sys = FakeSys::new();
    sys.fail("signal-fd", Errno::MFILE);
    let mut ev = EventLoop::new();
    let mut sup = Supervisor::default();
    let orphan = sys
        .spawn(&Command {
            argv: &["/usr/bin/orphan".to_owned()],
            env: &[],
        })
        .unwrap()
        .pid;
    sys.exit_at(ms(2200), orphan, ExitStatus::Code(0));
    sys.queue_signal(Signal::Usr1);
    for _ in 0..3 {
        assert_eq!(ev.turn(&sys, &mut sup, &mut [], None), None);
    }
    // Woken by the exit's event at 2.2 s, then a second per turn.
    assert_eq!(sys.now(), ms(4200), "a turn waits at most a second");
    assert!(!sys.running(orphan));
    assert!(sup.none_left(), "the orphan was reaped");
    sys.unfail("signal-fd");
    assert_eq!(
        ev.turn(&sys, &mut sup, &mut [], None),
        Some(Shutdown::Halt),
        "the signal waited for the descriptor"
    );
    assert_eq!(
        sys.console_lines(),
        [
            "ingot: warning creating the signal descriptor: Too many open files (os error 24), trying again every 1s"
        ]
    );
}

#[test]
fn shutdown_with_nothing_running_syncs_unmounts_and_reboots() {
    let sys = FakeSys::new();
    sys.write(
        "/proc/self/mountinfo",
        "1 0 8:1 / / ro - erofs /dev/vda2 ro\n2 1 0:2 / /run rw - tmpfs tmpfs rw\n",
    );
    let mut ev = EventLoop::new();
    let mut sup = Supervisor::default();
    let err = ev.shutdown(&sys, &mut sup, Shutdown::PowerOff);
    assert_eq!(err.to_string(), "fake reboot returned");
    assert_eq!(
        sys.calls(),
        [
            "console ingot: shutdown poweroff",
            "kill-all term",
            "sync",
            "umount /run",
            "console ingot: unmounted /run",
            "remount-ro /",
            "console ingot: remounted / read-only",
            "console ingot: powering off",
            "reboot poweroff"
        ]
    );
}

#[test]
fn shutdown_kills_what_outlives_sigterm() {
    let sys = FakeSys::new();
    let mut ev = EventLoop::new();
    let mut sup = Supervisor::default();
    let pid = sys
        .spawn(&Command {
            argv: &["/usr/bin/stubborn".to_owned()],
            env: &[],
        })
        .unwrap()
        .pid;
    sys.ignore_term(pid);
    ev.shutdown(&sys, &mut sup, Shutdown::Reboot);
    assert_eq!(
        sys.calls_matching(&["kill-all", "sync", "reboot", "console ingot: warning proc"]),
        [
            "kill-all term",
            "console ingot: warning processes left after SIGTERM, sending SIGKILL",
            "kill-all kill",
            "sync",
            "reboot reboot"
        ]
    );
    assert_eq!(sys.now(), ms(1500) + TERM_TIMEOUT);
    assert!(!sys.running(pid));
}

// --- as PID 1 of a pid namespace, against the real kernel ---------------------------------------

/// Mounts a tmpfs on each directory (inside the test's private mount namespace).
fn tmpfs_on(dirs: &[&'static str]) {
    for d in dirs {
        Linux
            .mount(&crate::sys::Mount {
                source: "tmpfs",
                target: d,
                fstype: "tmpfs",
                flags: crate::sys::MountFlags::empty(),
                data: None,
            })
            .unwrap();
    }
}

/// The other processes in this pid namespace: `(pid, state, ppid)`.
fn processes() -> Vec<(i32, char, i32)> {
    let me = std::process::id();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap() {
        let name = e.unwrap().file_name();
        let Ok(pid) = name.to_string_lossy().parse::<i32>() else {
            continue;
        };
        if u32::try_from(pid).unwrap() == me {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) S ppid …"; comm may contain spaces, so split after the last ')'.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let mut f = rest.split(' ');
        let state = f.next().unwrap().chars().next().unwrap();
        let ppid = f.next().unwrap().parse().unwrap();
        out.push((pid, state, ppid));
    }
    out
}

#[test]
fn reaps_an_orphan_storm_as_pid1() {
    if !crate::sys::pid1_test::as_pid1("event_loop::tests::reaps_an_orphan_storm_as_pid1") {
        return;
    }
    tmpfs_on(&["/run", "/var/log"]);
    let fifo = "/run/storm.fifo";
    rustix::fs::mknodat(
        rustix::fs::CWD,
        fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    // Held open for writing, so the 1000 readers can open the FIFO; closing it ends them all at once.
    let gate = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(fifo)
        .unwrap();
    let sys = Linux::new();
    let mut ev = EventLoop::new();
    let mut sup = Supervisor::default();
    // Started directly, not as a service: a service's process group is killed when its main process
    // exits, and that would take the orphans with it.
    let storm = format!("for i in $(seq 1000); do (read x < {fifo}; exit 7) & done");
    sys.spawn(&Command {
        argv: &["/bin/sh".to_owned(), "-c".to_owned(), storm],
        env: &[],
    })
    .unwrap();
    // The shell exits after forking; its 1000 children become PID 1's and wait on the FIFO.
    let waiting = || {
        let p = processes();
        p.len() == 1000
            && p.iter().all(|&(pid, _, ppid)| {
                ppid == 1
                    && std::fs::read_link(format!("/proc/{pid}/fd/0")).is_ok_and(|p| p.to_str() == Some(fifo))
            })
    };
    let deadline = sys.boottime() + Duration::from_secs(60);
    while !waiting() {
        assert!(sys.boottime() < deadline, "{:?}", processes().len());
        ev.turn(&sys, &mut sup, &mut [], Some(sys.boottime() + ms(50)));
    }

    drop(gate);
    let start = sys.boottime();
    let outcome = ev.run_until(
        &sys,
        &mut sup,
        &mut [],
        Some(start + Duration::from_secs(1)),
        |_| processes().is_empty(),
    );
    let left = processes();
    let zombies = left.iter().filter(|p| p.1 == 'Z').count();
    println!(
        "1000 orphans exited and were reaped in {:?}; {} processes left, {zombies} zombies",
        sys.boottime() - start,
        left.len()
    );
    assert_eq!(outcome, Outcome::Done);
    assert_eq!(zombies, 0);
    assert!(sup.none_left());
}

#[test]
fn supervises_real_processes_as_pid1() {
    if !crate::sys::pid1_test::as_pid1("event_loop::tests::supervises_real_processes_as_pid1") {
        return;
    }
    tmpfs_on(&["/run", "/var/log"]);
    let sh = |name: &str, script: &str| Service {
        name: name.into(),
        exec: vec!["/bin/sh".into(), "-c".into(), script.into()],
        env: [("GREETING".to_owned(), "hello".to_owned())].into(),
        after: vec![],
        kind: ServiceKind::Daemon,
        ready: None,
        restart: Restart::Always,
        stop_timeout_ms: 5000,
        phase: None,
    };
    let services = vec![
        Service {
            ready: Some(Readiness::Command(vec![
                "/bin/sh".into(),
                "-c".into(),
                "test -e /run/web.up".into(),
            ])),
            ..sh(
                "web",
                "echo \"$GREETING from $(pwd)\"; sleep 0.3; touch /run/web.up; \
                 trap 'echo bye; exit 0' TERM; while :; do sleep 0.05; done",
            )
        },
        Service {
            kind: ServiceKind::Oneshot,
            after: vec!["web".into()],
            ..sh("once", "echo once")
        },
        Service {
            restart: Restart::OnFailure,
            ..sh("crasher", "echo crash >&2; exit 3")
        },
        Service {
            exec: vec!["/nonexistent/bin".into()],
            restart: Restart::Never,
            ..sh("missing", "")
        },
        Service {
            stop_timeout_ms: 300,
            phase: None,
            ..sh("stubborn", "trap '' TERM; while :; do sleep 0.05; done")
        },
    ];
    let sys = Linux::new();
    let mut ev = EventLoop::new();
    let mut sup = Supervisor::new(services);
    sup.start(&sys);
    let outcome = ev.run_until(
        &sys,
        &mut sup,
        &mut [],
        Some(sys.boottime() + Duration::from_secs(20)),
        |s| {
            s.state("once") == Some(State::Exited)
                && std::fs::read_to_string("/var/log/ingot/crasher.log").is_ok_and(|l| l.lines().count() >= 3)
        },
    );
    assert_eq!(outcome, Outcome::Done);
    assert_eq!(sup.state("web"), Some(State::Ready));
    assert_eq!(sup.state("missing"), Some(State::Failed));
    let log = std::fs::read_to_string("/var/log/ingot/web.log").unwrap();
    assert_eq!(log, "hello from /\n");
    assert_eq!(
        std::fs::read_to_string("/var/log/ingot/once.log").unwrap(),
        "once\n"
    );

    let began = sys.boottime();
    sup.begin_stop(&sys, began);
    while !sup.stopped() {
        assert!(sys.boottime() < began + Duration::from_secs(10));
        ev.turn(&sys, &mut sup, &mut [], None);
    }
    let took = sys.boottime() - began;
    assert!(took >= ms(300), "stubborn ignores SIGTERM: {took:?}");
    assert!(took < ms(3000), "{took:?}");
    for s in ["web", "stubborn"] {
        assert_eq!(sup.state(s), Some(State::Stopped), "{s}");
    }
    // What web printed while stopping was read before it was reaped.
    let log = std::fs::read_to_string("/var/log/ingot/web.log").unwrap();
    assert!(
        log.starts_with("hello from /\n") && log.ends_with("bye\n"),
        "{log}"
    );
    // The loop reaps the rest (the sleeps in the killed process groups).
    let _ = ev.run_until(
        &sys,
        &mut sup,
        &mut [],
        Some(sys.boottime() + Duration::from_secs(2)),
        |_| processes().is_empty(),
    );
    assert_eq!(processes(), []);
    sup.flush_status(&sys, sys.boottime());
    let status: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string("/run/ingot/status.json").unwrap()).unwrap();
    assert_eq!(
        status["services"][3]["last_exit"]["error"],
        "No such file or directory (os error 2)"
    );
}
