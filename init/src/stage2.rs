//! Stage 2, `/sbin/init` in the read-only root: the node brings itself up, then PID 1 supervises it.
//!
//! In order, each step printing its phase line (`ingot: phase=<name> t=<ms> <details>`):
//!
//! 1. API and runtime mounts (`/run`, `/tmp`), then what containers need (`/dev/pts`, `/dev/shm`, cgroup2,
//!    bpf); the init configuration from the root ([`ingot_spec::config`]); the profile's kernel modules;
//!    the node configuration from the first channel that holds one ([`channels`]: kernel command line,
//!    fw_cfg, SMBIOS, ESP, baked), left at `/run/ingot/node.toml` for the join step, its `network` and
//!    `time` replacing the image's; `/etc` made writable (an overlay on `/run`).
//! 2. `var`: grown, formatted and mounted ([`storage`]); the machine-id, boot counter and host name
//!    ([`node`]); sysctls.
//! 3. `network`: links, static addresses or DHCP ([`crate::net`]), waited for up to [`NETWORK_WAIT`].
//! 4. `clock`: SNTP ([`crate::clock`]) against the profile's servers or DHCP's, at most its boot wait.
//! 5. Services in dependency order under the [`Supervisor`]; `<service>-ready` as each first becomes ready,
//!    `ready` once all are.
//! 6. The event loop until a shutdown request (signal, power button), then the orderly shutdown.
//!
//! A step that fails in a way the node can live with prints `ingot: warning … , ignoring` and boot goes on;
//! what it cannot live with (no `var`, a broken init configuration) is returned as an error, and
//! [`crate::failure`] reboots. The network, clock and power button talk to real devices, so they come from
//! a [`Devices`] the tests replace.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use ingot_spec::config::{self, InitConfig};
use ingot_spec::marker::{
    self, PHASE_CLOCK, PHASE_NETWORK, PHASE_READY, PHASE_STAGE2, PHASE_VAR, service_ready_phase,
};

use crate::event::Pollable;
use crate::event_loop::EventLoop;
use crate::options::BootOptions;
use crate::supervisor::{Event, Supervisor};
use crate::sys::{self, Shutdown, Sys};
use crate::{channels, clock, images, kube, modules, mounts, net, node, power_button, storage, verity};

/// How long boot waits for the network before going on without it (it keeps trying).
pub const NETWORK_WAIT: Duration = Duration::from_secs(30);
/// With `ingot.poweroff`, how long the services get to become ready before the node powers off anyway.
const POWEROFF_WAIT: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Mount(#[from] mounts::Error),
    #[error("reading {}", config::INIT_CONFIG_PATH)]
    ReadConfig(#[source] io::Error),
    #[error("{path}: {0}", path = config::INIT_CONFIG_PATH)]
    Config(String),
    #[error(transparent)]
    Var(#[from] storage::Error),
    #[error(transparent)]
    Identity(#[from] node::Error),
    #[error("{}", .0.name())]
    Shutdown(Shutdown, #[source] io::Error),
    /// The kernel reported a block of the root that does not match its verity tree.
    #[error("the root failed dm-verity verification (kernel: {0:?})")]
    RootCorrupted(String),
}

/// The network as stage 2 uses it.
pub trait Network: Pollable {
    fn configured(&self) -> bool;
    fn summary(&self) -> String;
    fn ntp_servers(&self) -> Vec<Ipv4Addr>;
}

/// The clock as stage 2 uses it.
pub trait Clock: Pollable {
    fn boot_outcome(&self) -> Option<String>;
}

/// What stage 2 starts that talks to hardware and the network.
pub trait Devices {
    fn network(
        &self,
        sys: &dyn Sys,
        cfg: &config::Network,
        now: Duration,
    ) -> Result<Box<dyn Network>, String>;
    fn clock(&self, servers: Vec<SocketAddr>, now: Duration) -> Box<dyn Clock>;
    fn power_button(&self, sys: &dyn Sys) -> Box<dyn Pollable>;
}

/// The real network, NTP client and power button.
pub struct NodeDevices;

impl Devices for NodeDevices {
    fn network(
        &self,
        sys: &dyn Sys,
        cfg: &config::Network,
        now: Duration,
    ) -> Result<Box<dyn Network>, String> {
        net::Network::start(sys, cfg, now)
            .map(|n| Box::new(n) as Box<dyn Network>)
            .map_err(|e| crate::failure::chain(&e))
    }
    fn clock(&self, servers: Vec<SocketAddr>, now: Duration) -> Box<dyn Clock> {
        Box::new(clock::Clock::new(servers, now))
    }
    fn power_button(&self, sys: &dyn Sys) -> Box<dyn Pollable> {
        Box::new(power_button::PowerButton::open(sys))
    }
}

impl Network for net::Network {
    fn configured(&self) -> bool {
        net::Network::configured(self)
    }
    fn summary(&self) -> String {
        net::Network::summary(self)
    }
    fn ntp_servers(&self) -> Vec<Ipv4Addr> {
        net::Network::ntp_servers(self)
    }
}

impl Clock for clock::Clock {
    fn boot_outcome(&self) -> Option<String> {
        clock::Clock::boot_outcome(self)
    }
}

/// A network that never comes up, standing in when the real one could not start.
struct NoNetwork;

impl Pollable for NoNetwork {
    fn fds(&self) -> Vec<std::os::fd::RawFd> {
        Vec::new()
    }
    fn deadline(&self) -> Option<Duration> {
        None
    }
    fn wake(&mut self, _: &dyn Sys, _: Duration, _: &[std::os::fd::RawFd]) {}
}

impl Network for NoNetwork {
    fn configured(&self) -> bool {
        false
    }
    fn summary(&self) -> String {
        "none".to_owned()
    }
    fn ntp_servers(&self) -> Vec<Ipv4Addr> {
        Vec::new()
    }
}

/// Runs stage 2 until the machine goes down; returns only on failure.
pub fn run(sys: &dyn Sys, opts: &mut BootOptions) -> Result<Infallible, Error> {
    run_with(sys, opts, &NodeDevices)
}

/// Prints phase lines and records them in the status file.
struct Phases<'a> {
    sys: &'a dyn Sys,
    /// Each service's ready phase: its own `phase`, or `<name>-ready`.
    ready_phases: HashMap<String, String>,
}

impl Phases<'_> {
    fn print(&self, sup: &mut Supervisor, name: &str, details: &str) {
        let ms = u64::try_from(self.sys.boottime().as_millis()).unwrap_or(u64::MAX);
        self.sys.console(&marker::phase_line_with(name, ms, details));
        sup.record_phase(name, ms);
    }

    /// Turns the supervisor's events into phase lines.
    fn events(&self, sup: &mut Supervisor) {
        for event in sup.take_events() {
            match event {
                Event::Ready(name) => {
                    let phase = self
                        .ready_phases
                        .get(&name)
                        .cloned()
                        .unwrap_or_else(|| service_ready_phase(&name));
                    self.print(sup, &phase, "");
                }
                Event::AllReady => {
                    let rss = resident_kib(self.sys)
                        .map(|k| format!("init-rss={k}KiB"))
                        .unwrap_or_default();
                    self.print(sup, PHASE_READY, &rss);
                }
                // The supervisor already said why.
                Event::Failed(_) => {}
            }
        }
    }
}

/// Prints that the root is corrupted and returns the error that stops the node.
fn root_corrupted(sys: &dyn Sys, report: &str) -> Error {
    sys.console(&verity::stopping_line(report));
    Error::RootCorrupted(report.to_owned())
}

pub fn run_with(sys: &dyn Sys, opts: &mut BootOptions, devices: &dyn Devices) -> Result<Infallible, Error> {
    crate::phase(sys, PHASE_STAGE2);
    // Already there after stage 1 (EBUSY); needed when the kernel boots this root without an initramfs.
    mounts::mount_all(sys, &mounts::API)?;
    // From here on a fatal error may be a corrupted root showing as a read error: say so when it is.
    let mut watch = verity::CorruptionWatch::open(sys);
    match bring_up(sys, opts, devices, &mut watch) {
        Err(e) if !matches!(e, Error::Shutdown(..) | Error::RootCorrupted(_)) => match watch.check_now(sys) {
            Some(report) => Err(root_corrupted(sys, &report)),
            None => Err(e),
        },
        other => other,
    }
}

/// Stage 2 after the API mounts; `watch` takes part in every turn of the event loop, and a corruption it
/// sees ends the boot (or the steady state) with [`Error::RootCorrupted`].
fn bring_up(
    sys: &dyn Sys,
    opts: &mut BootOptions,
    devices: &dyn Devices,
    watch: &mut verity::CorruptionWatch,
) -> Result<Infallible, Error> {
    let corrupted = watch.found();
    let check = || match corrupted.get() {
        Some(report) => Err(root_corrupted(sys, report)),
        None => Ok(()),
    };
    // A report from before stage 2 (stage 1's reads, the exec of this binary) stops it here.
    watch.check_now(sys);
    check()?;
    *opts = BootOptions::load(sys);
    sys::set_panic_policy(opts.debug, opts.reboot_delay);
    mounts::mount_all(sys, &mounts::RUNTIME)?;
    mounts::mount_best_effort(sys, &mounts::NODE);
    let mut cfg = load_config(sys)?;
    match modules::load_named(sys, &cfg.modules) {
        Ok(report) if !cfg.modules.is_empty() => sys.console(&format!(
            "{}modules: {} loaded, {} already there",
            marker::PREFIX,
            report.loaded,
            report.already_loaded
        )),
        Ok(_) => {}
        Err(e) => crate::warn(sys, &format!("{}, ignoring", crate::failure::chain(&e))),
    }
    // Before the network and clock: the node configuration may replace their settings.
    channels::discover(sys, &mut cfg);
    if let Err(e) = node::writable_etc(sys) {
        crate::warn(
            sys,
            &format!("making /etc writable: {e}, ignoring; /etc stays read-only"),
        );
    }

    let mut services = cfg.services.clone();
    services.extend(images::import_service(&cfg.images));
    if let Some(k) = &cfg.kubernetes
        && sys.exists(Path::new(kube::NODE_CONFIG))
    {
        services.extend(kube::services(k));
    }
    let ready_phases: HashMap<String, String> = services
        .iter()
        .map(|s| {
            let phase = s.phase.clone().unwrap_or_else(|| service_ready_phase(&s.name));
            (s.name.clone(), phase)
        })
        .collect();
    let mut sup = Supervisor::new(services);
    let mut event_loop = EventLoop::new();
    let phases = Phases { sys, ready_phases };

    // The modules and the node configuration were the first reads of the root: stop before var is
    // formatted or mounted when one of them hit a corrupted block.
    watch.check_now(sys);
    check()?;
    let var = storage::prepare_var(sys)?;
    let id = node::establish_identity(sys, cfg.hostname.as_deref())?;
    phases.print(
        &mut sup,
        PHASE_VAR,
        &format!("{} {}", var.summary(), id.summary()),
    );
    node::apply_sysctls(sys, &cfg.sysctls);

    let mut button = devices.power_button(sys);
    let mut network: Box<dyn Network> = match devices.network(sys, &cfg.network, sys.boottime()) {
        Ok(n) => n,
        Err(e) => {
            crate::warn(
                sys,
                &format!("starting the network: {e}, ignoring; the node has no network"),
            );
            Box::new(NoNetwork)
        }
    };
    let deadline = sys.boottime() + NETWORK_WAIT;
    while !network.configured() && sys.boottime() < deadline {
        let others: &mut [&mut dyn Pollable] = &mut [&mut *network, &mut *button, &mut *watch];
        if let Some(how) = event_loop.turn(sys, &mut sup, others, Some(deadline)) {
            return Err(Error::Shutdown(how, event_loop.shutdown(sys, &mut sup, how)));
        }
        check()?;
    }
    if network.configured() {
        phases.print(&mut sup, PHASE_NETWORK, &network.summary());
    } else {
        let why = format!(
            "unconfigured after {}s, still trying: {}",
            NETWORK_WAIT.as_secs(),
            network.summary()
        );
        phases.print(&mut sup, PHASE_NETWORK, &why);
    }

    let servers = match clock::parse_servers(&cfg.time.servers) {
        Ok(s) if !s.is_empty() => s,
        Ok(_) => network
            .ntp_servers()
            .into_iter()
            .map(|ip| SocketAddr::from((ip, 123)))
            .collect(),
        Err(e) => {
            crate::warn(sys, &format!("time.servers: {e}, ignoring"));
            Vec::new()
        }
    };
    let mut clock = devices.clock(servers, sys.boottime());
    let deadline = sys.boottime() + clock::BOOT_WAIT + Duration::from_secs(2);
    while clock.boot_outcome().is_none() && sys.boottime() < deadline {
        let others: &mut [&mut dyn Pollable] = &mut [&mut *network, &mut *clock, &mut *button, &mut *watch];
        if let Some(how) = event_loop.turn(sys, &mut sup, others, Some(deadline)) {
            return Err(Error::Shutdown(how, event_loop.shutdown(sys, &mut sup, how)));
        }
        check()?;
    }
    let outcome = clock
        .boot_outcome()
        .unwrap_or_else(|| "unsynced: no answer yet, keeping the RTC time".to_owned());
    phases.print(&mut sup, PHASE_CLOCK, &outcome);

    // No service starts on a root known to be corrupted.
    watch.check_now(sys);
    check()?;
    sup.start(sys);
    phases.events(&mut sup);
    let others: &mut [&mut dyn Pollable] = &mut [&mut *network, &mut *clock, &mut *button, &mut *watch];
    // With `ingot.poweroff`, until every service is ready (or the wait ran out); else until a shutdown
    // request. Either way a corruption report ends it.
    let deadline = opts.poweroff.then(|| sys.boottime() + POWEROFF_WAIT);
    let outcome = event_loop.run_until(sys, &mut sup, others, deadline, |sup| {
        phases.events(sup);
        corrupted.get().is_some() || (opts.poweroff && sup.all_ready())
    });
    check()?;
    let how = match outcome {
        crate::event_loop::Outcome::Shutdown(how) => how,
        _ => Shutdown::PowerOff,
    };
    phases.events(&mut sup);
    Err(Error::Shutdown(how, event_loop.shutdown(sys, &mut sup, how)))
}

fn load_config(sys: &dyn Sys) -> Result<InitConfig, Error> {
    match sys.read(Path::new(config::INIT_CONFIG_PATH)) {
        Ok(bytes) => config::parse(&bytes).map_err(Error::Config),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            crate::warn(
                sys,
                &format!(
                    "{} is missing, running no services and DHCP on the first link",
                    config::INIT_CONFIG_PATH
                ),
            );
            Ok(InitConfig::default())
        }
        Err(e) => Err(Error::ReadConfig(e)),
    }
}

/// PID 1's resident memory (`VmRSS`), for the `ready` line.
fn resident_kib(sys: &dyn Sys) -> Option<u64> {
    let status = sys.read(Path::new("/proc/self/status")).ok()?;
    let status = String::from_utf8_lossy(&status);
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::sys::fake::FakeSys;
    use crate::sys::{Errno, Signal};
    use std::os::fd::RawFd;

    /// Devices that are up at once: a configured network and a clock that already has its outcome.
    struct Instant;

    struct Up(&'static str);

    impl Pollable for Up {
        fn fds(&self) -> Vec<RawFd> {
            Vec::new()
        }
        fn deadline(&self) -> Option<Duration> {
            None
        }
        fn wake(&mut self, _: &dyn Sys, _: Duration, _: &[RawFd]) {}
    }

    impl Network for Up {
        fn configured(&self) -> bool {
            true
        }
        fn summary(&self) -> String {
            self.0.to_owned()
        }
        fn ntp_servers(&self) -> Vec<Ipv4Addr> {
            vec![Ipv4Addr::new(10, 0, 2, 2)]
        }
    }

    impl Clock for Up {
        fn boot_outcome(&self) -> Option<String> {
            Some(self.0.to_owned())
        }
    }

    impl Devices for Instant {
        fn network(&self, _: &dyn Sys, _: &config::Network, _: Duration) -> Result<Box<dyn Network>, String> {
            Ok(Box::new(Up("address=10.0.2.15/24")))
        }
        fn clock(&self, servers: Vec<SocketAddr>, _: Duration) -> Box<dyn Clock> {
            assert_eq!(
                servers,
                [SocketAddr::from(([10, 0, 2, 2], 123))],
                "DHCP's servers by default"
            );
            Box::new(Up("synced"))
        }
        fn power_button(&self, _: &dyn Sys) -> Box<dyn Pollable> {
            Box::new(Up(""))
        }
    }

    fn node(cmdline: &str, init_json: Option<&str>) -> FakeSys {
        let sys = crate::storage::tests::node(131_072, true);
        for d in [
            "/dev",
            "/proc",
            "/sys",
            "/run",
            "/tmp",
            "/dev/pts",
            "/dev/shm",
            "/sys/fs/cgroup",
            "/sys/fs/bpf",
        ] {
            sys.write(&format!("{d}/.keep"), "");
        }
        sys.write("/proc/cmdline", cmdline);
        for api in ["mount devtmpfs", "mount proc", "mount sysfs"] {
            sys.fail(api, Errno::BUSY);
        }
        if let Some(json) = init_json {
            sys.write(config::INIT_CONFIG_PATH, json);
        }
        sys
    }

    fn phases(sys: &FakeSys) -> Vec<String> {
        sys.console_lines()
            .iter()
            .filter_map(|l| marker::parse_phase_line(l).map(|(p, _)| p.to_owned()))
            .collect()
    }

    #[test]
    fn boots_through_every_phase_and_powers_off_with_ingot_poweroff() {
        let sys = node(
            "console=ttyS0 ingot.poweroff\n",
            Some(r#"{"schema":1,"sysctls":{"net.ipv4.ip_forward":"1"}}"#),
        );
        sys.write("/proc/self/status", "Name:\tingot-init\nVmRSS:\t    2048 kB\n");
        let mut opts = BootOptions::default();
        let err = run_with(&sys, &mut opts, &Instant).unwrap_err();
        assert!(opts.poweroff);
        assert_eq!(phases(&sys), ["stage2", "var", "network", "clock", "ready"]);
        let console = sys.console_lines();
        let line = |p: &str| {
            console
                .iter()
                .find(|l| l.starts_with(&format!("ingot: phase={p} ")))
                .unwrap()
                .clone()
        };
        assert!(
            line("var").contains("device=/dev/vda6") && line("var").contains("boot=1 machine-id="),
            "{console:#?}"
        );
        assert!(line("network").ends_with(" address=10.0.2.15/24"));
        assert!(line("clock").ends_with(" synced"));
        assert!(line("ready").ends_with(" init-rss=2048KiB"));
        assert_eq!(
            sys.calls_matching(&[
                "mount overlay",
                "mount devpts",
                "mount cgroup2",
                "write /proc/sys",
                "reboot"
            ]),
            [
                "mount devpts /dev/pts devpts noexec,nosuid mode=0620,ptmxmode=0666",
                "mount cgroup2 /sys/fs/cgroup cgroup2 nodev,noexec,nosuid nsdelegate,memory_recursiveprot",
                "mount overlay /etc overlay nodev,nosuid lowerdir=/etc,upperdir=/run/ingot/etc/upper,workdir=/run/ingot/etc/work",
                "write /proc/sys/net/ipv4/ip_forward 1",
                "reboot poweroff",
            ]
        );
        assert_eq!(crate::failure::chain(&err), "poweroff: fake reboot returned");
    }

    #[test]
    fn services_start_after_the_clock_and_each_ready_service_is_a_phase() {
        let sys = node(
            "console=ttyS0\n",
            Some(r#"{"schema":1,"services":[{"name":"containerd","exec":["/usr/bin/containerd"]}]}"#),
        );
        sys.signal_at(Duration::from_secs(60), Signal::Term);
        let _ = run_with(&sys, &mut BootOptions::default(), &Instant);
        assert_eq!(
            phases(&sys),
            ["stage2", "var", "network", "clock", "containerd-ready", "ready"]
        );
        assert_eq!(sys.spawned()[0].argv, ["/usr/bin/containerd"]);
        assert_eq!(sys.calls_matching(&["reboot"]), ["reboot reboot"]);
    }

    /// [`Instant`], remembering the network configuration it was given.
    #[derive(Default)]
    struct Recording(std::cell::RefCell<Option<config::Network>>);

    impl Devices for Recording {
        fn network(
            &self,
            sys: &dyn Sys,
            cfg: &config::Network,
            now: Duration,
        ) -> Result<Box<dyn Network>, String> {
            *self.0.borrow_mut() = Some(cfg.clone());
            Instant.network(sys, cfg, now)
        }
        fn clock(&self, _: Vec<SocketAddr>, _: Duration) -> Box<dyn Clock> {
            Box::new(Up("synced"))
        }
        fn power_button(&self, sys: &dyn Sys) -> Box<dyn Pollable> {
            Instant.power_button(sys)
        }
    }

    #[test]
    fn the_node_configuration_is_found_before_the_network_and_replaces_its_settings() {
        let sys = node("console=ttyS0 ingot.poweroff\n", Some(r#"{"schema":1}"#));
        sys.write(
            ingot_spec::node_config::BAKED_PATH,
            "[cluster]\nendpoint = \"10.0.2.100:6443\"\ntoken = \"abcdef.0123456789abcdef\"\n\
             unsafe-skip-ca-verification = true\n\
             [network]\ninterfaces = [{ match = { name = \"eth0\" }, addresses = [\"10.0.2.50/24\"] }]\n",
        );
        let devices = Recording::default();
        let _ = run_with(&sys, &mut BootOptions::default(), &devices);
        let console = sys.console_lines();
        let at = |prefix: &str| console.iter().position(|l| l.starts_with(prefix)).unwrap();
        assert!(
            at(
                "ingot: node config from baked (/etc/ingot/node.toml): cluster 10.0.2.100:6443, token abcdef.<redacted>"
            ) < at("ingot: phase=network "),
            "{console:#?}"
        );
        let network = devices.0.borrow().clone().unwrap();
        assert_eq!(network.interfaces[0].addresses, ["10.0.2.50/24"]);
        assert!(sys.host(crate::channels::RUN_PATH).exists());
    }

    #[test]
    fn a_broken_init_configuration_is_fatal_and_names_the_field() {
        let sys = node("", Some(r#"{"schema":1,"servces":[]}"#));
        let err = run_with(&sys, &mut BootOptions::default(), &Instant).unwrap_err();
        let chain = crate::failure::chain(&err);
        assert!(
            chain.starts_with("/etc/ingot/init.json: unknown field `servces`"),
            "{chain}"
        );
    }

    #[test]
    fn a_missing_mount_point_on_the_read_only_root_is_fatal() {
        let sys = node("", None);
        std::fs::remove_dir_all(sys.host("/run")).unwrap();
        sys.fail("mkdir /run", Errno::ROFS);
        let err = run_with(&sys, &mut BootOptions::default(), &Instant).unwrap_err();
        assert_eq!(
            crate::failure::chain(&err),
            "mounting tmpfs on /run: Read-only file system (os error 30)"
        );
    }

    const CORRUPTED: &str = "3,812,5123456,-;device-mapper: verity: 254:2: data block 57 is corrupted";
    const STOPPING: &str = r#"ingot: verity: the root is corrupted (kernel: "device-mapper: verity: 254:2: data block 57 is corrupted"); stopping"#;

    #[test]
    fn a_corruption_report_while_running_stops_the_node_through_the_failure_policy() {
        let sys = node(
            "console=ttyS0 ingot.reboot_delay=7\n",
            Some(r#"{"schema":1,"services":[{"name":"containerd","exec":["/usr/bin/containerd"]}]}"#),
        );
        let at = Duration::from_secs(120);
        let mut opts = BootOptions::default();
        let sys = std::rc::Rc::new(sys);
        sys.kmsg("6,1,100,-;Linux version 6.1.0");
        let corrupt_later = {
            let sys = std::rc::Rc::clone(&sys);
            move || sys.kmsg(CORRUPTED)
        };
        // The kernel logs the report at `at`, long after the node is ready: a power button stand-in with
        // that deadline logs it.
        struct LogsLater(Option<Box<dyn FnOnce()>>, Duration);
        impl Pollable for LogsLater {
            fn fds(&self) -> Vec<RawFd> {
                Vec::new()
            }
            fn deadline(&self) -> Option<Duration> {
                self.0.as_ref().map(|_| self.1)
            }
            fn wake(&mut self, _: &dyn Sys, _: Duration, _: &[RawFd]) {
                if let Some(f) = self.0.take() {
                    f();
                }
            }
        }
        struct Later(std::cell::RefCell<Option<Box<dyn FnOnce()>>>, Duration);
        impl Devices for Later {
            fn network(
                &self,
                sys: &dyn Sys,
                cfg: &config::Network,
                now: Duration,
            ) -> Result<Box<dyn Network>, String> {
                Instant.network(sys, cfg, now)
            }
            fn clock(&self, servers: Vec<SocketAddr>, now: Duration) -> Box<dyn Clock> {
                Instant.clock(servers, now)
            }
            fn power_button(&self, _: &dyn Sys) -> Box<dyn Pollable> {
                Box::new(LogsLater(self.0.borrow_mut().take(), self.1))
            }
        }
        let devices = Later(std::cell::RefCell::new(Some(Box::new(corrupt_later))), at);
        let err = run_with(&*sys, &mut opts, &devices).unwrap_err();
        assert!(matches!(err, Error::RootCorrupted(_)), "{err}");
        crate::failure::after_error(&*sys, &opts, &err);
        let console = sys.console_lines();
        let ready = console
            .iter()
            .position(|l| l.starts_with("ingot: phase=ready "))
            .unwrap();
        let stop = console.iter().position(|l| l == STOPPING).unwrap();
        assert!(ready < stop, "{console:#?}");
        assert!(sys.now() >= at);
        assert_eq!(
            console[stop + 1],
            r#"ingot: error the root failed dm-verity verification (kernel: "device-mapper: verity: 254:2: data block 57 is corrupted")"#
        );
        assert_eq!(
            sys.calls_matching(&["sleep 7s", "reboot"]),
            ["sleep 7s", "reboot reboot"]
        );
    }

    #[test]
    fn a_report_logged_before_stage_2_started_stops_it_before_the_services() {
        let sys = node(
            "console=ttyS0\n",
            Some(r#"{"schema":1,"services":[{"name":"containerd","exec":["/usr/bin/containerd"]}]}"#),
        );
        sys.kmsg(CORRUPTED);
        let err = run_with(&sys, &mut BootOptions::default(), &Instant).unwrap_err();
        assert!(matches!(err, Error::RootCorrupted(_)), "{err}");
        assert!(sys.console_lines().contains(&STOPPING.to_owned()));
        assert!(sys.spawned().is_empty(), "no service started on a corrupted root");
        assert!(!phases(&sys).contains(&"ready".to_owned()));
    }

    #[test]
    fn a_fatal_read_error_on_a_corrupted_root_is_blamed_on_the_corruption() {
        let sys = node("console=ttyS0\n", Some(r#"{"schema":1}"#));
        // What reading a file on a corrupted block looks like: EIO, and the kernel's report.
        std::fs::remove_file(sys.host(config::INIT_CONFIG_PATH)).unwrap();
        std::fs::create_dir(sys.host(config::INIT_CONFIG_PATH)).unwrap();
        sys.kmsg(CORRUPTED);
        let err = run_with(&sys, &mut BootOptions::default(), &Instant).unwrap_err();
        assert!(matches!(err, Error::RootCorrupted(_)), "{err}");
        assert_eq!(sys.console_lines().last().unwrap(), STOPPING);

        // The same error without a report stays what it was.
        let sys = node("console=ttyS0\n", Some(r#"{"schema":1}"#));
        std::fs::remove_file(sys.host(config::INIT_CONFIG_PATH)).unwrap();
        std::fs::create_dir(sys.host(config::INIT_CONFIG_PATH)).unwrap();
        sys.kmsg("3,5,5,-;device-mapper: verity: 254:2: reached maximum errors");
        let err = run_with(&sys, &mut BootOptions::default(), &Instant).unwrap_err();
        assert!(matches!(err, Error::ReadConfig(_)), "{err}");
        assert!(!sys.console_lines().iter().any(|l| l.starts_with("ingot: verity")));
    }
}
