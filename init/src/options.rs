//! What the kernel command line tells `ingot-init` (keys defined in `ingot_spec::cmdline`).

use std::path::Path;
use std::time::Duration;

use ingot_spec::cmdline;

use crate::sys::Sys;

/// Settings from the kernel command line; [`Default`] is what applies before `/proc` is mounted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootOptions {
    /// `ingot.debug`: halt instead of rebooting after a fatal error.
    pub debug: bool,
    /// `ingot.poweroff`: power off once the node is ready.
    pub poweroff: bool,
    /// `ingot.reboot_delay=<seconds>`: wait this long before rebooting after a fatal error.
    pub reboot_delay: Duration,
    /// `ingot.modules=<path>,<path>`: extra module files (relative to `/lib/modules/<kver>/`) loaded after the
    /// initramfs list, for debugging a node without rebuilding its image.
    pub extra_modules: Vec<String>,
}

impl Default for BootOptions {
    fn default() -> Self {
        BootOptions {
            debug: false,
            poweroff: false,
            reboot_delay: Duration::from_secs(cmdline::DEFAULT_REBOOT_DELAY_SECS),
            extra_modules: Vec::new(),
        }
    }
}

impl BootOptions {
    /// Parses a command line; returns the options and warnings about values that were ignored.
    pub fn parse(line: &str) -> (BootOptions, Vec<String>) {
        let mut warnings = Vec::new();
        let mut opts = BootOptions {
            debug: cmdline::flag(line, cmdline::DEBUG),
            poweroff: cmdline::flag(line, cmdline::POWEROFF),
            ..BootOptions::default()
        };
        if let Some(v) = cmdline::get(line, cmdline::REBOOT_DELAY) {
            match v.parse::<u64>() {
                Ok(secs) => opts.reboot_delay = Duration::from_secs(secs),
                Err(_) => warnings.push(format!(
                    "{}={v:?} is not a number of seconds, using {}, ignoring",
                    cmdline::REBOOT_DELAY,
                    cmdline::DEFAULT_REBOOT_DELAY_SECS
                )),
            }
        }
        if let Some(v) = cmdline::get(line, cmdline::MODULES) {
            opts.extra_modules = v
                .split(',')
                .filter(|m| !m.is_empty())
                .map(str::to_owned)
                .collect();
        }
        (opts, warnings)
    }

    /// Reads `/proc/cmdline`; on failure warns and keeps the defaults.
    pub fn load(sys: &dyn Sys) -> BootOptions {
        match sys.read(Path::new("/proc/cmdline")) {
            Ok(bytes) => {
                let (opts, warnings) = BootOptions::parse(&String::from_utf8_lossy(&bytes));
                for w in warnings {
                    crate::warn(sys, &w);
                }
                opts
            }
            Err(e) => {
                crate::warn(
                    sys,
                    &format!("reading /proc/cmdline: {e}, using defaults, ignoring"),
                );
                BootOptions::default()
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn defaults_without_our_keys() {
        let (o, w) = BootOptions::parse("console=ttyS0 quiet");
        assert_eq!(o, BootOptions::default());
        assert_eq!(o.reboot_delay, Duration::from_secs(10));
        assert!(w.is_empty());
    }

    #[test]
    fn reads_every_key() {
        let (o, w) = BootOptions::parse(
            "console=ttyS0 ingot.debug ingot.poweroff=1 ingot.reboot_delay=3 ingot.modules=kernel/a.ko,,kernel/b.ko\n",
        );
        assert!(w.is_empty());
        assert_eq!(
            o,
            BootOptions {
                debug: true,
                poweroff: true,
                reboot_delay: Duration::from_secs(3),
                extra_modules: vec!["kernel/a.ko".into(), "kernel/b.ko".into()],
            }
        );
    }

    #[test]
    fn bad_delay_warns_and_keeps_default() {
        let (o, w) = BootOptions::parse("ingot.reboot_delay=soon ingot.debug=0");
        assert_eq!(o.reboot_delay, Duration::from_secs(10));
        assert!(!o.debug);
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("ingot.reboot_delay=\"soon\""), "{w:?}");
    }

    #[test]
    fn load_falls_back_to_defaults_without_proc() {
        let sys = crate::sys::fake::FakeSys::new();
        assert_eq!(BootOptions::load(&sys), BootOptions::default());
        assert!(sys.console_lines()[0].starts_with("ingot: warning reading /proc/cmdline"));
        sys.write("/proc/cmdline", "ingot.poweroff\n");
        assert!(BootOptions::load(&sys).poweroff);
    }
}
