//! A throw-away network namespace with a tap device, for VM tests whose guest must reach a host service over
//! UDP (DHCP, NTP, DNS), which QEMU's user network does not forward.
//!
//! ```no_run
//! use std::time::Duration;
//! use ingot_qemu::{TestNetns, Vm, VmConfig};
//!
//! // Declared before the VM, so the VM is dropped (QEMU killed) first.
//! let ns = TestNetns::create("ingot-test")?;
//! let mut dnsmasq = ns
//!     .exec("dnsmasq")
//!     .args(["--no-daemon", "--port=0", "--interface=tap0", "--bind-interfaces"])
//!     .arg("--dhcp-range=10.0.3.10,10.0.3.20,1h")
//!     .spawn()?;
//! let mut cfg = VmConfig::new("out/worker.raw");
//! ns.attach(&mut cfg);
//! let mut vm = Vm::start(cfg)?;
//! vm.wait_for("ingot: phase=ready", Duration::from_secs(300))?;
//! # drop(vm); dnsmasq.kill()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::ffi::OsStr;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::config::{NetConfig, VmConfig};
use crate::error::NetnsError;

/// How a [`TestNetns`] is set up; [`Default`] gives `tap0` with 10.0.3.1/24.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetnsOptions {
    /// Name of the tap device inside the namespace (at most 15 bytes).
    pub tap: String,
    /// The namespace's own address on the tap device: what the guest reaches its host services at.
    pub host_addr: Ipv4Addr,
    /// Prefix length of the tap device's network.
    pub prefix_len: u8,
}

impl Default for NetnsOptions {
    fn default() -> Self {
        NetnsOptions {
            tap: "tap0".into(),
            host_addr: Ipv4Addr::new(10, 0, 3, 1),
            prefix_len: 24,
        }
    }
}

/// A uniquely named network namespace holding loopback (up) and one tap device (up, with an address),
/// nothing else: a guest on that tap device reaches exactly what runs in the namespace. Services for the
/// guest are started inside it with [`TestNetns::exec`]; QEMU with [`TestNetns::attach`].
///
/// Dropping it kills every process still in the namespace (SIGKILL; the caller's children among them stay
/// unreaped until the caller waits for them) and deletes it, which also removes the tap device. Needs root.
#[derive(Debug)]
pub struct TestNetns {
    name: String,
    opts: NetnsOptions,
    ip: PathBuf,
}

/// Numbers namespaces created by this process.
static NEXT: AtomicU32 = AtomicU32::new(0);

/// How long the drop waits for killed processes to leave the namespace.
const KILL_GRACE: Duration = Duration::from_secs(5);

impl TestNetns {
    /// Creates a namespace named `<name_prefix>-<pid>-<n>` with [`NetnsOptions::default`].
    pub fn create(name_prefix: &str) -> Result<TestNetns, NetnsError> {
        Self::create_with(name_prefix, NetnsOptions::default())
    }

    /// Creates a namespace named `<name_prefix>-<pid>-<n>` set up as `opts` says.
    pub fn create_with(name_prefix: &str, opts: NetnsOptions) -> Result<TestNetns, NetnsError> {
        let prefix_ok = (1..=32).contains(&name_prefix.len())
            && name_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !prefix_ok {
            return Err(NetnsError::BadName {
                what: "namespace name prefix",
                value: name_prefix.into(),
                expected: "1 to 32 ASCII letters, digits, - or _",
            });
        }
        let tap_ok = (1..=15).contains(&opts.tap.len())
            && opts
                .tap
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !tap_ok {
            return Err(NetnsError::BadName {
                what: "tap device name",
                value: opts.tap.clone(),
                expected: "1 to 15 ASCII letters, digits, - or _",
            });
        }
        if opts.prefix_len > 32 {
            return Err(NetnsError::BadName {
                what: "prefix length",
                value: opts.prefix_len.to_string(),
                expected: "0 to 32",
            });
        }
        let uid = rustix::process::geteuid();
        if !uid.is_root() {
            return Err(NetnsError::NotRoot { uid: uid.as_raw() });
        }
        let ip = crate::host::find_tool("ip").ok_or(NetnsError::IpNotFound)?;
        let name = loop {
            let candidate = format!(
                "{name_prefix}-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            );
            // A namespace left behind by a killed earlier process with the same pid is skipped, not reused.
            if !std::path::Path::new("/run/netns").join(&candidate).exists() {
                break candidate;
            }
        };
        run_ip(&ip, &["netns", "add", &name])?;
        // From here on, dropping `ns` deletes the namespace again.
        let ns = TestNetns { name, opts, ip };
        let addr = format!("{}/{}", ns.opts.host_addr, ns.opts.prefix_len);
        ns.ip_in(&["link", "set", "lo", "up"])?;
        ns.ip_in(&["tuntap", "add", "dev", &ns.opts.tap, "mode", "tap"])?;
        ns.ip_in(&["addr", "add", &addr, "dev", &ns.opts.tap])?;
        ns.ip_in(&["link", "set", &ns.opts.tap, "up"])?;
        Ok(ns)
    }

    /// The namespace's name, as `ip netns` lists it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The tap device inside the namespace.
    pub fn tap(&self) -> &str {
        &self.opts.tap
    }

    /// The namespace's address on the tap device.
    pub fn host_addr(&self) -> Ipv4Addr {
        self.opts.host_addr
    }

    /// Prefix length of the tap device's network.
    pub fn prefix_len(&self) -> u8 {
        self.opts.prefix_len
    }

    /// A command that runs `program` inside the namespace (`ip netns exec NAME PROGRAM`; `ip` execs it, so
    /// the child's pid is the program's). Add arguments, I/O and spawn it as usual. Inside, `/sys` shows the
    /// namespace's devices.
    pub fn exec(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new(&self.ip);
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Makes `cfg` start QEMU inside the namespace with its NIC on the tap device. Forwards of the user
    /// network are dropped: they do not apply to a tap device.
    pub fn attach(&self, cfg: &mut VmConfig) {
        cfg.netns = Some(self.name.clone());
        cfg.net = NetConfig::tap(self.opts.tap.clone());
    }

    /// Process ids of everything running in the namespace (`ip netns pids`).
    pub fn pids(&self) -> Result<Vec<u32>, NetnsError> {
        let out = run_ip(&self.ip, &["netns", "pids", &self.name])?;
        Ok(out.split_whitespace().filter_map(|p| p.parse().ok()).collect())
    }

    /// Runs `ip -n NAME ARGS` and returns its stdout.
    pub fn ip_in(&self, args: &[&str]) -> Result<String, NetnsError> {
        let mut v = vec!["-n", self.name.as_str()];
        v.extend_from_slice(args);
        run_ip(&self.ip, &v)
    }

    /// Kills what runs in the namespace and deletes it.
    fn destroy(&self) -> Result<(), NetnsError> {
        let deadline = Instant::now() + KILL_GRACE;
        loop {
            let pids = self.pids()?;
            if pids.is_empty() || Instant::now() >= deadline {
                break;
            }
            for pid in pids {
                if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                    // The process may be gone already; the next listing tells.
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        run_ip(&self.ip, &["netns", "delete", &self.name]).map(drop)
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        if let Err(e) = self.destroy() {
            eprintln!("ingot-qemu: cannot remove network namespace {}: {e}", self.name);
        }
    }
}

fn run_ip(ip: &std::path::Path, args: &[&str]) -> Result<String, NetnsError> {
    let command = format!("ip {}", args.join(" "));
    let out = Command::new(ip)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| NetnsError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(NetnsError::Command {
            command,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
