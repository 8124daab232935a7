//! The service supervisor: services × runners × restart policy over one reaper.
//!
//! [`Supervisor`] holds the configured services ([`ingot_spec::config::Service`]) and is driven by PID 1's
//! event loop ([`crate::event_loop`]) as a [`Pollable`]: the loop hands it the exits the [`Reaper`] collected
//! ([`Supervisor::reap`]), the service output pipes that became readable, and wakes it at its deadlines
//! (restart backoff, readiness checks, stop timeouts, the status file).
//!
//! - **Start order**: nothing starts before [`Supervisor::start`]. Then every service starts as soon as
//!   the services in its `after` list are satisfied: a daemon when it is ready, a one-shot when it exited 0.
//!   When a dependency fails for good (or can never become ready), its dependents are not started and the
//!   console says why. Services whose configuration is wrong (see [`graph`]) fail at start.
//! - **Processes** are started through [`Sys::spawn`] (absolute `exec`, no shell, environment `PATH` plus
//!   the service's `env`, stdin `/dev/null`, stdout and stderr to a pipe PID 1 reads, a session of their
//!   own, clean signal state, cwd `/`), registered with the reaper before the loop runs again, and never
//!   waited for in any other way. When the main process exits, what is left of its process group is
//!   killed, so a restart does not meet leftovers of the previous run.
//! - **Readiness** ([`readiness`]): a daemon without a check is ready once started; with one it is
//!   `starting` until the check passes. A one-shot is done when it exits 0.
//! - **Restart policy**: `always` restarts a daemon after every exit, `on-failure` after a non-zero exit, a
//!   signal or a failed start, `never` not at all. A one-shot that exited 0 is done for this boot and never
//!   runs again; a failed one is retried like a daemon under `always`/`on-failure`. Restarts wait
//!   according to [`backoff`]; each is announced on the console:
//!   `ingot: service containerd exited (signal 9), restart 1 in 0.1s`. A start that fails (`ENOENT`,
//!   `EACCES`) counts as a failed run.
//! - **Output** ([`logs`]): per-service log files with rotation, and the console as `<name>| line`,
//!   rate-limited per service.
//! - **Status** ([`status`]): `/run/ingot/status.json` after every change.
//! - **Events** for the caller ([`Supervisor::take_events`]): a service became ready for the first time, a
//!   service failed for good, all services are ready.
//! - **Stopping** ([`Supervisor::begin_stop`]): in reverse dependency order (a service is stopped once
//!   everything that depends on it has exited), `SIGTERM` to the service's process group, `SIGKILL` after
//!   its `stop_timeout_ms`, and after a further [`KILL_TIMEOUT`] it is given up on. At the very end
//!   [`Supervisor::close_files`] closes the log files so `/var` can be unmounted.
//!
//! Signals follow busybox init, so its `reboot`/`poweroff`/`halt` applets work against us:
//!
//! | signal | action |
//! |---|---|
//! | `SIGTERM`, `SIGINT` (Ctrl-Alt-Del) | reboot |
//! | `SIGUSR2`, `SIGPWR` | power off |
//! | `SIGUSR1` | halt |
//! | `SIGHUP` | ignored (reload, once there is configuration to reload) |
//!
//! Not done (yet): cgroups (a service that leaves its process group escapes the stop), per-service users,
//! resource limits, reloading the configuration, a socket to query or control services.

mod backoff;
mod graph;
mod logs;
mod readiness;
mod reaper;
mod status;
pub mod unmount;

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::time::Duration;

use ingot_spec::config::{Readiness, Restart, Service, ServiceKind};
use ingot_spec::marker::PREFIX;

pub use reaper::Reaper;

use self::backoff::Backoff;
use self::logs::{LineSplitter, LogDir, ServiceLog};
use self::readiness::{HttpProbe, HttpTarget};
use self::status::{LastExit, Phase, ServiceStatus, Status, StatusWriter};
use crate::event::Pollable;
use crate::sys::fd::Read;
use crate::sys::{self, Command, Errno, Exit, ExitStatus, KillSignal, Shutdown, Signal, Sys};

/// How long processes get between `SIGTERM` and `SIGKILL` at shutdown (after the services stopped).
pub const TERM_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for killed processes to be reaped before going on without them.
pub const KILL_TIMEOUT: Duration = Duration::from_secs(1);
/// `PATH` of every service (a service's own `env` may replace it).
pub const SERVICE_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";
/// The most PID 1 reads from one pipe per turn of the loop, so one chatty service cannot starve the rest.
const READ_PER_TURN: usize = 64 * 1024;

/// Makes PID 1 the one that decides about signals, in both stages: blocks the signals it takes from its
/// signal descriptor and routes Ctrl-Alt-Del to it as `SIGINT` (instead of an immediate kernel reboot
/// without sync). Failures are warnings: the node still boots.
pub fn take_signals(sys: &dyn Sys) {
    if let Err(e) = sys.block_signals() {
        crate::warn(sys, &format!("blocking signals: {e}, ignoring"));
    }
    if let Err(e) = sys.disable_ctrl_alt_del() {
        crate::warn(sys, &format!("routing Ctrl-Alt-Del to PID 1: {e}, ignoring"));
    }
}

/// The shutdown a signal asks for, if any.
pub fn shutdown_for(signal: Signal) -> Option<Shutdown> {
    match signal {
        Signal::Term | Signal::Int => Some(Shutdown::Reboot),
        Signal::Usr2 | Signal::Pwr => Some(Shutdown::PowerOff),
        Signal::Usr1 => Some(Shutdown::Halt),
        Signal::Child | Signal::Hup => None,
    }
}

/// Where a service is; see [`status`] for what each means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Waiting,
    Starting,
    Ready,
    Running,
    Backoff,
    Exited,
    Failed,
    Stopping,
    Stopped,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Waiting => "waiting",
            State::Starting => "starting",
            State::Ready => "ready",
            State::Running => "running",
            State::Backoff => "backoff",
            State::Exited => "exited",
            State::Failed => "failed",
            State::Stopping => "stopping",
            State::Stopped => "stopped",
        }
    }
}

/// What the supervisor tells its caller ([`Supervisor::take_events`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The service became ready for the first time this boot (a daemon's readiness check passed, or it
    /// has none and started; a one-shot exited 0). Stage 2 prints
    /// [`ingot_spec::marker::service_ready_phase`].
    Ready(String),
    /// Every service has been ready (or done) at least once; sent once. With no services, right at
    /// [`Supervisor::start`]. Never sent while a service has failed for good.
    AllReady,
    /// The service will not run again this boot: its restart policy gave up, its configuration is wrong,
    /// or a dependency failed.
    Failed(String),
}

/// Who waits for a reaped pid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Owner {
    /// The service's main process.
    Main(usize),
    /// The service's readiness check command.
    Check(usize),
}

/// How one run of a service ended.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Ended {
    Exit(ExitStatus),
    NotStarted(String),
}

impl Ended {
    fn success(&self) -> bool {
        *self == Ended::Exit(ExitStatus::Code(0))
    }

    /// `exited (code 1)`, `exited (signal 9)`, `did not start (No such file or directory …)`.
    fn describe(&self) -> String {
        match self {
            Ended::Exit(ExitStatus::Code(c)) => format!("exited (code {c})"),
            Ended::Exit(ExitStatus::Signal(s)) => format!("exited (signal {s})"),
            Ended::NotStarted(e) => format!("did not start ({e})"),
        }
    }

    fn last_exit(&self) -> LastExit {
        match self {
            Ended::Exit(ExitStatus::Code(c)) => LastExit::Code(*c),
            Ended::Exit(ExitStatus::Signal(s)) => LastExit::Signal(*s),
            Ended::NotStarted(e) => LastExit::Error(e.clone()),
        }
    }
}

#[derive(Debug)]
struct Pipe {
    fd: OwnedFd,
    lines: LineSplitter,
}

#[derive(Debug)]
enum CheckRun {
    Command {
        pid: i32,
        deadline: Duration,
        killed: bool,
    },
    Http {
        probe: HttpProbe,
        /// When to look again while connecting or sending.
        poll_at: Option<Duration>,
    },
}

/// A daemon's readiness checking, from its start until the check passes.
#[derive(Debug)]
struct Check {
    began: Duration,
    next_at: Duration,
    interval: Duration,
    warned: bool,
    last_error: Option<String>,
    run: Option<CheckRun>,
    /// The command check exited 0; the next tick makes the service ready.
    passed: bool,
}

impl Check {
    fn new(now: Duration) -> Check {
        Check {
            began: now,
            next_at: now + readiness::FIRST_INTERVAL,
            interval: readiness::FIRST_INTERVAL,
            warned: false,
            last_error: None,
            run: None,
            passed: false,
        }
    }

    fn failed_attempt(&mut self, now: Duration, why: Option<String>) {
        self.run = None;
        if why.is_some() {
            self.last_error = why;
        }
        self.interval = readiness::next_interval(self.interval, now.saturating_sub(self.began));
        self.next_at = now + self.interval;
    }
}

#[derive(Debug)]
struct Stop {
    began: Duration,
    kill_at: Duration,
    killed_at: Option<Duration>,
}

#[derive(Debug)]
struct Unit {
    spec: Service,
    deps: Vec<usize>,
    state: State,
    since: Duration,
    pid: Option<i32>,
    started_at: Duration,
    restarts: u32,
    backoff: Backoff,
    restart_at: Option<Duration>,
    last_exit: Option<Ended>,
    reason: Option<String>,
    ever_ready: bool,
    check: Option<Check>,
    stop: Option<Stop>,
    pipes: Vec<Pipe>,
    log: ServiceLog,
}

impl Unit {
    fn is_daemon(&self) -> bool {
        self.spec.kind == ServiceKind::Daemon
    }
}

fn describe_check(r: &Readiness) -> String {
    match r {
        Readiness::Socket(p) => format!("socket {p}"),
        Readiness::File(p) => format!("file {p}"),
        Readiness::Command(argv) => format!("command {}", argv.join(" ")),
        Readiness::Http(u) => format!("http {u}"),
    }
}

fn restart_name(r: Restart) -> &'static str {
    match r {
        Restart::Always => "always",
        Restart::OnFailure => "on-failure",
        Restart::Never => "never",
    }
}

fn say(sys: &dyn Sys, msg: &str) {
    sys.console(&format!("{PREFIX}{msg}"));
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// The environment of a service's processes: `PATH`, then the service's own variables (which may
/// replace `PATH`).
fn environment(spec: &Service) -> Vec<(String, String)> {
    let mut env = vec![("PATH".to_owned(), SERVICE_PATH.to_owned())];
    for (k, v) in &spec.env {
        match env.iter_mut().find(|(name, _)| name == k) {
            Some(e) => e.1.clone_from(v),
            None => env.push((k.clone(), v.clone())),
        }
    }
    env
}

/// Whether a dependency lets its dependents start.
enum DepStatus {
    Met,
    Pending,
    Never(String),
}

/// The supervisor of PID 1's services; see the module documentation.
#[derive(Debug, Default)]
pub struct Supervisor {
    reaper: Reaper<Owner>,
    units: Vec<Unit>,
    /// Start order (dependencies first).
    order: Vec<usize>,
    problems: Vec<(usize, String)>,
    started: bool,
    stopping: bool,
    events: Vec<Event>,
    all_ready_sent: bool,
    log_dir: LogDir,
    status: StatusWriter,
    phases: Vec<Phase>,
    none_left: bool,
    /// Counts state changes, so [`Supervisor::tick`] knows when a pass changed nothing.
    changes: u64,
}

impl Supervisor {
    /// A supervisor for `services` (in configuration order), all `waiting` until [`Supervisor::start`].
    /// `Supervisor::default()` supervises nothing and only reaps.
    pub fn new(services: Vec<Service>) -> Supervisor {
        let plan = graph::plan(&services);
        let units = services
            .into_iter()
            .zip(plan.deps)
            .map(|(spec, deps)| Unit {
                log: ServiceLog::new(&spec.name),
                spec,
                deps,
                state: State::Waiting,
                since: Duration::ZERO,
                pid: None,
                started_at: Duration::ZERO,
                restarts: 0,
                backoff: Backoff::default(),
                restart_at: None,
                last_exit: None,
                reason: None,
                ever_ready: false,
                check: None,
                stop: None,
                pipes: Vec::new(),
            })
            .collect();
        Supervisor {
            units,
            order: plan.order,
            problems: plan.problems.into_iter().collect(),
            ..Supervisor::default()
        }
    }

    /// Starts the services, each once its dependencies are satisfied (this call starts those without
    /// dependencies). Reports services whose configuration is wrong. Does nothing the second time.
    pub fn start(&mut self, sys: &dyn Sys) {
        if self.started || self.stopping {
            return;
        }
        self.started = true;
        let now = sys.boottime();
        for u in &mut self.units {
            u.since = now;
        }
        self.status.touch();
        for (i, problem) in std::mem::take(&mut self.problems) {
            self.fail(sys, now, i, format!("not started: {problem}"));
        }
        self.tick(sys, now);
    }

    /// Records a boot phase for the status file (stage 2 calls it for each phase it prints).
    pub fn record_phase(&mut self, name: &str, t_ms: u64) {
        self.phases.push(Phase {
            name: name.to_owned(),
            t_ms,
        });
        self.status.touch();
    }

    /// The events since the last call, oldest first.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    #[cfg(test)]
    /// The state of the service named `name`.
    pub fn state(&self, name: &str) -> Option<State> {
        self.units.iter().find(|u| u.spec.name == name).map(|u| u.state)
    }

    /// Whether every service has been ready (or done) at least once.
    pub fn all_ready(&self) -> bool {
        self.started && self.units.iter().all(|u| u.ever_ready)
    }

    /// Collects exited children and hands the exits of services and their checks to them. The event loop
    /// calls it on every turn.
    pub fn reap(&mut self, sys: &dyn Sys, now: Duration) {
        let reaped = self.reaper.reap(sys);
        self.none_left = reaped.none_left;
        for (owner, exit) in reaped.exits {
            match owner {
                Owner::Main(i) => self.main_exited(sys, now, i, exit),
                Owner::Check(i) => self.check_exited(now, i, exit),
            }
        }
    }

    /// Whether the last [`Supervisor::reap`] found no children at all.
    pub fn none_left(&self) -> bool {
        self.none_left
    }

    /// Starts stopping every service (see the module documentation); nothing starts or restarts after.
    /// The event loop then runs until [`Supervisor::stopped`].
    pub fn begin_stop(&mut self, sys: &dyn Sys, now: Duration) {
        if self.stopping {
            return;
        }
        self.stopping = true;
        for i in 0..self.units.len() {
            self.cancel_check(sys, i);
            if matches!(self.units[i].state, State::Waiting | State::Backoff) {
                self.units[i].restart_at = None;
                self.set_state(now, i, State::Stopped);
            }
        }
        self.tick(sys, now);
    }

    /// Whether no service process is left (after [`Supervisor::begin_stop`]: all stopped).
    pub fn stopped(&self) -> bool {
        self.units.iter().all(|u| u.pid.is_none())
    }

    /// Reads what is left in the output pipes, then closes them and the log files, so no descriptor of
    /// PID 1 keeps `/var` busy when it is unmounted. For the end of the shutdown, after every process
    /// is gone.
    pub fn close_files(&mut self, sys: &dyn Sys, now: Duration) {
        for i in 0..self.units.len() {
            self.read_pipes(sys, now, i, None);
            let u = &mut self.units[i];
            u.pipes.clear();
            u.log.flush(sys);
            u.log.close();
        }
    }

    /// Writes the status file now if anything changed since the last write.
    pub fn flush_status(&mut self, sys: &dyn Sys, now: Duration) {
        let (units, phases) = (&self.units, &self.phases);
        self.status
            .write_if_due(sys, now, true, || render_status(now, units, phases));
    }

    fn set_state(&mut self, now: Duration, i: usize, state: State) {
        let u = &mut self.units[i];
        if u.state != state {
            u.state = state;
            u.since = now;
            self.changes += 1;
        }
        self.status.touch();
    }

    fn fail(&mut self, sys: &dyn Sys, now: Duration, i: usize, reason: String) {
        say(sys, &format!("service {} {reason}", self.units[i].spec.name));
        self.units[i].reason = Some(reason);
        self.set_state(now, i, State::Failed);
        self.events.push(Event::Failed(self.units[i].spec.name.clone()));
    }

    fn dep_status(&self, dep: usize) -> DepStatus {
        let d = &self.units[dep];
        let name = &d.spec.name;
        match d.state {
            State::Ready if d.is_daemon() => DepStatus::Met,
            // A one-shot is `exited` only after exiting 0.
            State::Exited if !d.is_daemon() => DepStatus::Met,
            State::Failed => DepStatus::Never(format!("dependency {name} failed")),
            State::Exited => DepStatus::Never(format!("dependency {name} exited and is not restarted")),
            State::Stopping | State::Stopped => DepStatus::Never(format!("dependency {name} was stopped")),
            _ => DepStatus::Pending,
        }
    }

    /// Everything time- or state-driven: starts, restarts, readiness checks, stopping, events, status.
    fn tick(&mut self, sys: &dyn Sys, now: Duration) {
        // One change can enable the next (a service becomes ready, so its dependents start; a dependent
        // stopped, so its dependency is stopped next): repeat until a pass changes nothing. Within one
        // instant states only move forward, so this ends; the bound is a safeguard.
        for _ in 0..=self.units.len() * 4 {
            let before = self.changes;
            if self.started && !self.stopping {
                self.start_due(sys, now);
                for i in 0..self.units.len() {
                    self.run_check(sys, now, i);
                }
            }
            if self.stopping {
                self.advance_stop(sys, now);
            }
            if self.changes == before {
                break;
            }
        }
        if self.all_ready() && !self.all_ready_sent {
            self.all_ready_sent = true;
            self.events.push(Event::AllReady);
        }
        let (units, phases) = (&self.units, &self.phases);
        self.status
            .write_if_due(sys, now, false, || render_status(now, units, phases));
    }

    /// Starts the waiting services whose dependencies are met (fails those whose dependencies never
    /// will be), and restarts those whose backoff is over.
    fn start_due(&mut self, sys: &dyn Sys, now: Duration) {
        for k in 0..self.order.len() {
            let i = self.order[k];
            match self.units[i].state {
                State::Waiting => {
                    let mut pending = false;
                    let mut never = None;
                    for &d in &self.units[i].deps {
                        match self.dep_status(d) {
                            DepStatus::Met => {}
                            DepStatus::Pending => pending = true,
                            DepStatus::Never(why) => {
                                never.get_or_insert(why);
                            }
                        }
                    }
                    if let Some(why) = never {
                        self.fail(sys, now, i, format!("not started: {why}"));
                    } else if !pending {
                        self.spawn_main(sys, now, i);
                    }
                }
                State::Backoff if self.units[i].restart_at.is_some_and(|t| t <= now) => {
                    self.spawn_main(sys, now, i);
                }
                _ => {}
            }
        }
    }

    fn spawn_main(&mut self, sys: &dyn Sys, now: Duration, i: usize) {
        let u = &mut self.units[i];
        u.log.open(sys, &mut self.log_dir);
        u.restart_at = None;
        let env = environment(&u.spec);
        let cmd = Command {
            argv: &u.spec.exec,
            env: &env,
        };
        match sys.spawn(&cmd) {
            Ok(child) => {
                self.reaper.watch(child.pid, Owner::Main(i));
                u.pid = Some(child.pid);
                u.started_at = now;
                u.pipes.push(Pipe {
                    fd: child.output,
                    lines: LineSplitter::default(),
                });
                let restart = match u.restarts {
                    0 => String::new(),
                    n => format!(", restart {n}"),
                };
                say(
                    sys,
                    &format!("started {} (pid {}{restart})", u.spec.name, child.pid),
                );
                match (u.spec.kind, &u.spec.ready) {
                    (ServiceKind::Oneshot, _) => self.set_state(now, i, State::Running),
                    (ServiceKind::Daemon, None) => self.became_ready(sys, now, i),
                    (ServiceKind::Daemon, Some(_)) => {
                        u.check = Some(Check::new(now));
                        self.set_state(now, i, State::Starting);
                    }
                }
            }
            Err(e) => self.ended(sys, now, i, Ended::NotStarted(e.to_string()), Duration::ZERO),
        }
    }

    fn became_ready(&mut self, sys: &dyn Sys, now: Duration, i: usize) {
        self.set_state(now, i, State::Ready);
        let u = &mut self.units[i];
        u.check = None;
        if !u.ever_ready {
            u.ever_ready = true;
            self.events.push(Event::Ready(u.spec.name.clone()));
        } else if let Some(r) = &u.spec.ready {
            say(
                sys,
                &format!("service {} is ready again ({})", u.spec.name, describe_check(r)),
            );
        }
    }

    /// A run ended (exit or failed start): done, restart later, or give up, by kind and policy.
    fn ended(&mut self, sys: &dyn Sys, now: Duration, i: usize, how: Ended, uptime: Duration) {
        let u = &mut self.units[i];
        let success = how.success();
        let what = how.describe();
        let name = u.spec.name.clone();
        u.last_exit = Some(how);
        if u.spec.kind == ServiceKind::Oneshot && success {
            say(sys, &format!("service {name} finished"));
            self.set_state(now, i, State::Exited);
            let u = &mut self.units[i];
            if !u.ever_ready {
                u.ever_ready = true;
                self.events.push(Event::Ready(name));
            }
            return;
        }
        let restart = match u.spec.restart {
            Restart::Always => true,
            Restart::OnFailure => !success,
            Restart::Never => false,
        };
        if restart {
            let delay = u.backoff.delay_after(uptime);
            u.restarts += 1;
            u.restart_at = Some(now + delay);
            say(
                sys,
                &format!("service {name} {what}, restart {} in {}", u.restarts, secs(delay)),
            );
            self.set_state(now, i, State::Backoff);
        } else if success {
            say(
                sys,
                &format!(
                    "service {name} {what}, not restarted (restart={})",
                    restart_name(u.spec.restart)
                ),
            );
            self.set_state(now, i, State::Exited);
        } else {
            let policy = restart_name(u.spec.restart);
            self.fail(sys, now, i, format!("{what}, not restarted (restart={policy})"));
        }
    }

    fn main_exited(&mut self, sys: &dyn Sys, now: Duration, i: usize, exit: Exit) {
        // Its last words before the line about its exit.
        self.read_pipes(sys, now, i, None);
        self.cancel_check(sys, i);
        let u = &mut self.units[i];
        u.pid = None;
        // Whatever the service left in its process group goes with it.
        match sys.kill_group(exit.pid, KillSignal::Kill) {
            Err(e) if !sys::is_errno(&e, Errno::SRCH) => crate::warn(
                sys,
                &format!("killing what {} left behind: {e}, ignoring", u.spec.name),
            ),
            _ => {}
        }
        let how = Ended::Exit(exit.status);
        if self.stopping {
            let name = u.spec.name.clone();
            match u.stop.take() {
                Some(stop) => say(
                    sys,
                    &format!("stopped {name} in {}", secs(now.saturating_sub(stop.began))),
                ),
                None => say(sys, &format!("service {name} {} while stopping", how.describe())),
            }
            u.last_exit = Some(how);
            self.set_state(now, i, State::Stopped);
            return;
        }
        let uptime = now.saturating_sub(u.started_at);
        self.ended(sys, now, i, how, uptime);
    }

    fn check_exited(&mut self, now: Duration, i: usize, exit: Exit) {
        let u = &mut self.units[i];
        let running = u.pid.is_some();
        let Some(check) = &mut u.check else {
            return;
        };
        if !matches!(check.run, Some(CheckRun::Command { pid, .. }) if pid == exit.pid) {
            return;
        }
        if exit.status == ExitStatus::Code(0) && running {
            check.run = None;
            check.passed = true;
        } else {
            let why = match exit.status {
                ExitStatus::Code(c) => format!("exit code {c}"),
                ExitStatus::Signal(s) => format!("killed by signal {s}"),
            };
            check.failed_attempt(now, Some(why));
        }
    }

    /// Stops a readiness check in progress (its command is killed; its exit is then ignored).
    fn cancel_check(&mut self, sys: &dyn Sys, i: usize) {
        let Some(check) = &mut self.units[i].check else {
            return;
        };
        if let Some(CheckRun::Command { pid, .. }) = check.run {
            let _ = sys.kill_group(pid, KillSignal::Kill);
        }
        self.units[i].check = None;
    }

    fn run_check(&mut self, sys: &dyn Sys, now: Duration, i: usize) {
        let u = &mut self.units[i];
        let (Some(check), Some(ready)) = (&mut u.check, &u.spec.ready) else {
            return;
        };
        if u.pid.is_none() || !matches!(u.state, State::Starting | State::Running) {
            return;
        }
        if check.passed {
            return self.became_ready(sys, now, i);
        }
        if !check.warned && now >= check.began + readiness::WARN_AFTER {
            check.warned = true;
            let why = check
                .last_error
                .as_ref()
                .map_or(String::new(), |e| format!(": {e}"));
            crate::warn(
                sys,
                &format!(
                    "service {} is not ready after {} ({}{why}), still checking every {}",
                    u.spec.name,
                    secs(readiness::WARN_AFTER),
                    describe_check(ready),
                    secs(readiness::MAX_INTERVAL)
                ),
            );
            self.set_state(now, i, State::Running);
            return self.run_check(sys, now, i);
        }
        match &mut check.run {
            Some(CheckRun::Command {
                pid,
                deadline,
                killed,
            }) => {
                if now >= *deadline && !*killed {
                    *killed = true;
                    let _ = sys.kill_group(*pid, KillSignal::Kill);
                    check.last_error = Some(format!(
                        "the command took longer than {}",
                        secs(readiness::COMMAND_TIMEOUT)
                    ));
                }
                return;
            }
            Some(CheckRun::Http { probe, poll_at }) => {
                match probe.advance(now) {
                    None => {
                        *poll_at = probe.sending().then(|| now + readiness::HTTP_CONNECT_POLL);
                    }
                    Some(Ok(())) => return self.became_ready(sys, now, i),
                    Some(Err(e)) => check.failed_attempt(now, Some(e)),
                }
                return;
            }
            None => {}
        }
        if now < check.next_at {
            return;
        }
        let passed = match ready {
            Readiness::File(p) => sys.exists(std::path::Path::new(p)).then_some(()).ok_or(None),
            Readiness::Socket(p) => sys
                .connect_unix(std::path::Path::new(p))
                .map_err(|e| Some(e.to_string())),
            Readiness::Command(argv) => {
                let env = environment(&u.spec);
                match sys.spawn(&Command { argv, env: &env }) {
                    Ok(child) => {
                        self.reaper.watch(child.pid, Owner::Check(i));
                        u.pipes.push(Pipe {
                            fd: child.output,
                            lines: LineSplitter::default(),
                        });
                        check.run = Some(CheckRun::Command {
                            pid: child.pid,
                            deadline: now + readiness::COMMAND_TIMEOUT,
                            killed: false,
                        });
                        return;
                    }
                    Err(e) => Err(Some(format!("starting the command: {e}"))),
                }
            }
            Readiness::Http(url) => match HttpTarget::parse(url) {
                Err(e) => Err(Some(e.to_string())),
                Ok(target) => match HttpProbe::start(&target, now) {
                    Ok(probe) => {
                        check.run = Some(CheckRun::Http { probe, poll_at: None });
                        // Loopback connections are usually there at once: send right away.
                        return self.run_check(sys, now, i);
                    }
                    Err(e) => Err(Some(e.to_string())),
                },
            },
        };
        match passed {
            Ok(()) => self.became_ready(sys, now, i),
            Err(why) => check.failed_attempt(now, why),
        }
    }

    fn advance_stop(&mut self, sys: &dyn Sys, now: Duration) {
        for i in 0..self.units.len() {
            let Some(pid) = self.units[i].pid else {
                continue;
            };
            let blocked = self.units.iter().any(|d| d.deps.contains(&i) && d.pid.is_some());
            let u = &mut self.units[i];
            let name = u.spec.name.clone();
            match &mut u.stop {
                None if !blocked => {
                    say(sys, &format!("stopping {name}"));
                    signal_group(sys, &name, pid, KillSignal::Term);
                    u.stop = Some(Stop {
                        began: now,
                        kill_at: now + Duration::from_millis(u.spec.stop_timeout_ms),
                        killed_at: None,
                    });
                    self.set_state(now, i, State::Stopping);
                }
                None => {}
                Some(stop) => match stop.killed_at {
                    None if now >= stop.kill_at => {
                        crate::warn(
                            sys,
                            &format!(
                                "{name} did not stop within {}, sending SIGKILL",
                                secs(now.saturating_sub(stop.began))
                            ),
                        );
                        signal_group(sys, &name, pid, KillSignal::Kill);
                        stop.killed_at = Some(now);
                    }
                    Some(t) if now >= t + KILL_TIMEOUT => {
                        crate::warn(
                            sys,
                            &format!("{name} (pid {pid}) did not exit after SIGKILL, going on without it"),
                        );
                        u.pid = None;
                        u.stop = None;
                        self.set_state(now, i, State::Stopped);
                    }
                    _ => {}
                },
            }
        }
    }

    /// Reads the output pipes of service `i` that are in `readable` (`None`: all of them).
    fn read_pipes(&mut self, sys: &dyn Sys, now: Duration, i: usize, readable: Option<&[RawFd]>) {
        let u = &mut self.units[i];
        let mut lines = Vec::new();
        let mut closed = false;
        let name = &u.spec.name;
        u.pipes.retain_mut(|p| {
            if readable.is_some_and(|r| !r.contains(&p.fd.as_raw_fd())) {
                return true;
            }
            let mut buf = [0u8; 8192];
            let mut total = 0;
            while total < READ_PER_TURN {
                match sys::fd::read_nonblocking(p.fd.as_fd(), &mut buf) {
                    Ok(Read::Data(n)) => {
                        p.lines.push(buf.get(..n).unwrap_or_default(), &mut lines);
                        total += n;
                    }
                    Ok(Read::WouldBlock) => return true,
                    Ok(Read::Eof) => {
                        p.lines.finish(&mut lines);
                        closed = true;
                        return false;
                    }
                    Err(e) => {
                        crate::warn(sys, &format!("reading the output of {name}: {e}, closing it"));
                        p.lines.finish(&mut lines);
                        closed = true;
                        return false;
                    }
                }
            }
            true
        });
        u.log.write(sys, now, &lines);
        if closed && u.pipes.is_empty() {
            u.log.flush(sys);
        }
    }
}

fn signal_group(sys: &dyn Sys, name: &str, pgid: i32, sig: KillSignal) {
    match sys.kill_group(pgid, sig) {
        Err(e) if !sys::is_errno(&e, Errno::SRCH) => crate::warn(
            sys,
            &format!("signalling {name} (process group {pgid}): {e}, ignoring"),
        ),
        _ => {}
    }
}

fn render_status(now: Duration, units: &[Unit], phases: &[Phase]) -> String {
    status::render(&Status {
        t_ms: status::millis(now),
        phases,
        services: units
            .iter()
            .map(|u| ServiceStatus {
                name: &u.spec.name,
                kind: match u.spec.kind {
                    ServiceKind::Daemon => "daemon",
                    ServiceKind::Oneshot => "oneshot",
                },
                state: u.state.name(),
                pid: u.pid,
                restarts: u.restarts,
                last_exit: u.last_exit.as_ref().map(Ended::last_exit),
                since_ms: status::millis(u.since),
                reason: u.reason.as_deref(),
            })
            .collect(),
    })
}

impl Pollable for Supervisor {
    fn fds(&self) -> Vec<RawFd> {
        let mut fds = Vec::new();
        for u in &self.units {
            fds.extend(u.pipes.iter().map(|p| p.fd.as_raw_fd()));
            if let Some(Check {
                run: Some(CheckRun::Http { probe, .. }),
                ..
            }) = &u.check
            {
                fds.push(probe.fd());
            }
        }
        fds
    }

    fn deadline(&self) -> Option<Duration> {
        let mut times = vec![self.status.due()];
        for u in &self.units {
            if !self.stopping {
                times.push(u.restart_at);
            }
            if let (Some(c), Some(_)) = (&u.check, u.pid) {
                times.push(match &c.run {
                    None => Some(c.next_at),
                    Some(CheckRun::Command { deadline, killed, .. }) => (!killed).then_some(*deadline),
                    Some(CheckRun::Http { probe, poll_at }) => {
                        Some(poll_at.map_or(probe.deadline, |t| t.min(probe.deadline)))
                    }
                });
                if !c.warned {
                    times.push(Some(c.began + readiness::WARN_AFTER));
                }
            }
            if let Some(stop) = &u.stop {
                times.push(Some(match stop.killed_at {
                    None => stop.kill_at,
                    Some(t) => t + KILL_TIMEOUT,
                }));
            }
        }
        times.into_iter().flatten().min()
    }

    fn wake(&mut self, sys: &dyn Sys, now: Duration, readable: &[RawFd]) {
        if !readable.is_empty() {
            for i in 0..self.units.len() {
                self.read_pipes(sys, now, i, Some(readable));
            }
        }
        self.tick(sys, now);
    }
}

#[cfg(test)]
mod tests;
