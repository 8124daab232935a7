//! `ingot doctor`: is this machine ready for each command? Checks the host tools of `scripts/host-tools`
//! (compiled in through [`ingot_spec::host_tools`]) and what a tool's presence does not prove: QEMU's
//! version, whether KVM is usable, subordinate IDs for an unprivileged mmdebstrap.
//!
//! Each command's errors use the same words for a missing tool ([`host_tools::missing_message`]), so
//! what doctor predicts is what the command would say.

use std::path::Path;
use std::process::Command;

use ingot_spec::host_tools::{self, HostTool, Need, Package};
use serde::Serialize;

/// The oldest QEMU the images are tested with (Debian 12's).
pub const MIN_QEMU: (u32, u32) = (7, 2);

/// One thing checked.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// The program, file or property checked.
    pub name: String,
    /// What was found: the program's path, the file, a version.
    pub found: Option<String>,
    /// What is wrong, when something is.
    pub problem: Option<String>,
    /// The command that fixes it.
    pub install: Option<String>,
    /// What the command uses it for.
    pub why: String,
}

impl Check {
    pub fn ok(&self) -> bool {
        self.problem.is_none()
    }
}

/// The checks of one command.
#[derive(Debug, Clone, Serialize)]
pub struct CommandReport {
    /// The name on doctor's command line (`build`, `disk-size`, …).
    pub need: &'static str,
    /// The command as a user types it.
    pub command: &'static str,
    pub ready: bool,
    pub checks: Vec<Check>,
    /// Facts that are not problems (KVM unusable means TCG, not failure).
    pub notes: Vec<String>,
}

/// Everything doctor found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub ready: bool,
    pub commands: Vec<CommandReport>,
    /// Commands that install everything missing, one per package manager.
    pub install: Vec<String>,
}

/// The needs checked when none are named: every command, not the tests.
pub fn default_needs() -> Vec<Need> {
    Need::ALL.into_iter().filter(|n| *n != Need::Test).collect()
}

/// Checks `needs` on this machine.
pub fn check(needs: &[Need]) -> Report {
    let commands: Vec<CommandReport> = needs.iter().map(|&n| check_need(n)).collect();
    let mut apt = Vec::new();
    let mut pip = Vec::new();
    for c in commands.iter().flat_map(|c| &c.checks) {
        let Some(t) = host_tools::tool(&c.name).filter(|_| !c.ok()) else {
            continue;
        };
        match t.package {
            Package::Debian(p) if !apt.contains(&p) => apt.push(p),
            Package::Pip(p) if !pip.contains(&p) => pip.push(p),
            _ => {}
        }
    }
    let mut install = Vec::new();
    if !apt.is_empty() {
        install.push(format!("apt-get install {}", apt.join(" ")));
    }
    if !pip.is_empty() {
        install.push(format!("pip install {}", pip.join(" ")));
    }
    Report {
        ready: commands.iter().all(|c| c.ready),
        commands,
        install,
    }
}

fn check_need(need: Need) -> CommandReport {
    let mut checks: Vec<Check> = host_tools::table()
        .iter()
        .filter(|t| t.needed_by.contains(&need))
        .map(check_tool)
        .collect();
    let mut notes = Vec::new();
    match need {
        Need::Run => {
            if let Some(c) = qemu_version_check() {
                checks.push(c);
            }
            notes.push(match ingot_qemu::kvm_usable() {
                Ok(()) => format!(
                    "KVM: /dev/kvm is usable; `--accel auto` tries it first and falls back to TCG if the \
                     guest shows nothing within {} s",
                    ingot_qemu::DEFAULT_KVM_PROBE.as_secs()
                ),
                Err(why) => format!("KVM: {why}; guests run under TCG (software emulation), which is slower"),
            });
        }
        Need::Build => notes.extend(tool_versions_note()),
        Need::AptBuild => {
            if let Some(c) = subordinate_ids_check() {
                checks.push(c);
            }
        }
        Need::Flash if !is_root() => {
            notes.push("flashing a block device needs root (or write access to the device)".into());
        }
        _ => {}
    }
    CommandReport {
        need: need.name(),
        command: need.command(),
        ready: checks.iter().all(Check::ok),
        checks,
        notes,
    }
}

fn check_tool(t: &HostTool) -> Check {
    // `ingot run` also takes OVMF from INGOT_OVMF_CODE/VARS or Debian's 2M pair: ask it, and say what it
    // would say.
    let (code, vars) = ingot_qemu::DEBIAN_OVMF[0];
    if t.name == code || t.name == vars {
        let found = ingot_qemu::find_ovmf();
        return Check {
            name: t.name.to_string(),
            found: found.as_ref().ok().map(|o| {
                let p = if t.name == code { &o.code } else { &o.vars };
                p.display().to_string()
            }),
            install: found.is_err().then(|| t.package.install_command()),
            problem: found.err().map(|e| e.to_string()),
            why: t.why.to_string(),
        };
    }
    let found = if t.is_file() {
        Path::new(t.name).is_file().then(|| t.name.to_string())
    } else {
        ingot_qemu::find_tool(t.name).map(|p| p.display().to_string())
    };
    Check {
        name: t.name.to_string(),
        problem: found.is_none().then(|| host_tools::missing_summary(t.name)),
        install: found.is_none().then(|| t.package.install_command()),
        found,
        why: t.why.to_string(),
    }
}

/// QEMU's version against [`MIN_QEMU`]; `None` when QEMU is missing (its own check says so).
fn qemu_version_check() -> Option<Check> {
    let qemu = ingot_qemu::find_tool(ingot_qemu::QEMU_BINARY)?;
    let out = Command::new(&qemu).arg("--version").output();
    let text = out
        .as_ref()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let version = parse_qemu_version(&text);
    let (min_major, min_minor) = MIN_QEMU;
    let problem = match version {
        None => Some(format!(
            "{} --version printed no version ({})",
            qemu.display(),
            match &out {
                Ok(o) => format!("exit {}", o.status),
                Err(e) => e.to_string(),
            }
        )),
        Some((major, minor, _)) if (major, minor) < MIN_QEMU => Some(format!(
            "QEMU {major}.{minor} is older than {min_major}.{min_minor}, the oldest the images are tested with"
        )),
        Some(_) => None,
    };
    Some(Check {
        name: format!("QEMU {min_major}.{min_minor} or newer"),
        found: version.map(|(a, b, c)| format!("{a}.{b}.{c}")),
        install: problem
            .as_ref()
            .and_then(|_| host_tools::tool(ingot_qemu::QEMU_BINARY).map(|t| t.package.install_command())),
        problem,
        why: "q35, OVMF, qemu-xhci and the options ingot run passes".into(),
    })
}

/// The packages whose versions reach an image's bytes (mkfs.erofs writes the root, mtools the ESP's boot
/// sector and FATs), as dpkg knows them: builds agree byte for byte only between builders with the same.
fn tool_versions_note() -> Option<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f", "${Package} ${Version}\n", "erofs-utils", "mtools"])
        .output()
        .ok()?;
    let versions: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.split(' ').nth(1).is_some_and(|v| !v.is_empty()))
        .map(str::to_string)
        .collect();
    (!versions.is_empty()).then(|| {
        format!(
            "image bytes depend on {}: another Debian release's versions build a different (equally \
             valid) image",
            versions.join(", ")
        )
    })
}

/// `QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)` → (10, 0, 2).
pub fn parse_qemu_version(text: &str) -> Option<(u32, u32, u32)> {
    let rest = text.split("version ").nth(1)?;
    let v = rest.split(|c: char| !(c.is_ascii_digit() || c == '.')).next()?;
    let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
    Some((
        parts.next()??,
        parts.next()??,
        parts.next().flatten().unwrap_or(0),
    ))
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// How many subordinate IDs mmdebstrap --mode=unshare maps.
const SUBORDINATE_IDS: u64 = 65536;

/// mmdebstrap --mode=unshare as an ordinary user maps 65536 subordinate IDs from /etc/subuid and
/// /etc/subgid; root needs none. `None` for root.
fn subordinate_ids_check() -> Option<Check> {
    if is_root() {
        return None;
    }
    let uid = rustix::process::getuid().as_raw();
    let user = user_name(uid, &std::fs::read_to_string("/etc/passwd").unwrap_or_default());
    let mut missing = Vec::new();
    for file in ["/etc/subuid", "/etc/subgid"] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        if !has_subordinate_range(&text, user.as_deref(), uid) {
            missing.push(file);
        }
    }
    let who = user.clone().unwrap_or_else(|| uid.to_string());
    let problem = (!missing.is_empty()).then(|| {
        format!(
            "{} has no range for {who}: mmdebstrap --mode=unshare needs {SUBORDINATE_IDS} subordinate IDs",
            missing.join(" and ")
        )
    });
    Some(Check {
        name: "subordinate IDs".into(),
        found: missing
            .is_empty()
            .then(|| format!("{who} has ranges in /etc/subuid and /etc/subgid")),
        install: problem
            .as_ref()
            .map(|_| format!("usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {who}")),
        problem,
        why: "mmdebstrap maps the root's users into them".into(),
    })
}

/// The user name of `uid` in a passwd file's text.
fn user_name(uid: u32, passwd: &str) -> Option<String> {
    passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        (f.nth(1)?.parse::<u32>().ok()? == uid).then(|| name.to_string())
    })
}

/// Whether a subuid/subgid file's text gives `user` (or `uid`) at least 65536 IDs.
fn has_subordinate_range(text: &str, user: Option<&str>, uid: u32) -> bool {
    let uid = uid.to_string();
    text.lines().any(|l| {
        let mut f = l.trim().split(':');
        let (Some(who), Some(_start), Some(count)) = (f.next(), f.next(), f.next()) else {
            return false;
        };
        (Some(who) == user || who == uid) && count.parse::<u64>().is_ok_and(|c| c >= SUBORDINATE_IDS)
    })
}

/// The report as text: one block per command, what is missing with its fix, then the install commands.
pub fn render(r: &Report) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let width = r.commands.iter().map(|c| c.command.len()).max().unwrap_or(0);
    for c in &r.commands {
        let state = if c.ready { "ready" } else { "MISSING" };
        let _ = writeln!(s, "{:<width$}  {state}", c.command);
        for check in c.checks.iter().filter(|c| !c.ok()) {
            let _ = writeln!(
                s,
                "{:<width$}    {} ({})",
                "",
                check.problem.as_deref().unwrap_or_default(),
                check.why
            );
        }
        // The one version worth seeing when all is well.
        if let Some(v) = c.checks.iter().find(|k| k.ok() && k.name.starts_with("QEMU")) {
            let _ = writeln!(s, "{:<width$}    QEMU {}", "", v.found.as_deref().unwrap_or("?"));
        }
        for n in &c.notes {
            let _ = writeln!(s, "{:<width$}    {n}", "");
        }
    }
    if r.install.is_empty() {
        s.push_str("\nEverything checked is present.\n");
    } else {
        s.push_str("\nTo install what is missing:\n");
        for i in &r.install {
            let _ = writeln!(s, "  {i}");
        }
        let needs: Vec<&str> = r.commands.iter().filter(|c| !c.ready).map(|c| c.need).collect();
        let _ = writeln!(
            s,
            "or, from a checkout of ingot: scripts/setup-host {}",
            needs.join(" ")
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_versions_parse_from_debian_and_upstream_banners() {
        assert_eq!(
            parse_qemu_version("QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)\n"),
            Some((10, 0, 2))
        );
        assert_eq!(
            parse_qemu_version("QEMU emulator version 7.2.19\nCopyright"),
            Some((7, 2, 19))
        );
        assert_eq!(parse_qemu_version("QEMU emulator version 8.1"), Some((8, 1, 0)));
        assert_eq!(parse_qemu_version("garbage"), None);
    }

    #[test]
    fn subordinate_ranges_count_by_name_or_uid_and_need_65536() {
        let passwd = "root:x:0:0::/root:/bin/sh\nbuild:x:1000:1000::/home/build:/bin/sh\n";
        assert_eq!(user_name(1000, passwd).as_deref(), Some("build"));
        assert_eq!(user_name(1001, passwd), None);
        assert!(has_subordinate_range("build:100000:65536\n", Some("build"), 1000));
        assert!(has_subordinate_range("1000:100000:65536\n", Some("build"), 1000));
        assert!(!has_subordinate_range("build:100000:1000\n", Some("build"), 1000));
        assert!(!has_subordinate_range(
            "other:100000:65536\n",
            Some("build"),
            1000
        ));
    }

    #[test]
    fn the_report_lists_each_missing_tool_with_its_fix() {
        let r = Report {
            ready: false,
            commands: vec![CommandReport {
                need: "disk-size",
                command: "ingot run --disk-size",
                ready: false,
                checks: vec![Check {
                    name: "qemu-img".into(),
                    found: None,
                    problem: Some(host_tools::missing_summary("qemu-img")),
                    install: Some("apt-get install qemu-utils".into()),
                    why: "overlays a bigger disk; writes qcow2".into(),
                }],
                notes: vec![],
            }],
            install: vec!["apt-get install qemu-utils".into()],
        };
        let text = render(&r);
        assert!(text.contains("ingot run --disk-size  MISSING"), "{text}");
        assert!(
            text.contains("qemu-img is not installed: it comes with the Debian package qemu-utils"),
            "{text}"
        );
        assert!(text.contains("\n  apt-get install qemu-utils\n"), "{text}");
    }
}
