//! The host programs and files ingot's commands use, the package that provides each, and what needs them.
//!
//! The table is `scripts/host-tools`, compiled in: `scripts/setup-host` installs from the same file, so the
//! set-up and `ingot doctor` cannot drift. Every command that finds a tool missing says so with
//! [`missing_message`], the words `ingot doctor` prints for it, and so does a test that skips for it.

use std::fmt;

/// The table's text (see its header for the format).
pub const TABLE: &str = include_str!("../../scripts/host-tools");

/// Where a tool comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Package {
    /// A Debian package (the same name in bookworm and trixie).
    Debian(&'static str),
    /// A PyPI requirement (`name==version`), installed into a virtual environment.
    Pip(&'static str),
}

impl Package {
    /// The command that installs it.
    pub fn install_command(self) -> String {
        match self {
            Package::Debian(p) => format!("apt-get install {p}"),
            Package::Pip(p) => format!("pip install {p}"),
        }
    }
}

impl fmt::Display for Package {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Package::Debian(p) => write!(f, "the Debian package {p}"),
            Package::Pip(p) => write!(f, "{p} from PyPI"),
        }
    }
}

/// What needs a tool: a command, or a variant of one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Need {
    Build,
    AptBuild,
    Run,
    DiskSize,
    SecureBoot,
    Inspect,
    Flash,
    Export,
    Test,
}

impl Need {
    /// Every need, in the order `ingot doctor` reports them.
    pub const ALL: [Need; 9] = [
        Need::Build,
        Need::AptBuild,
        Need::Run,
        Need::DiskSize,
        Need::SecureBoot,
        Need::Inspect,
        Need::Flash,
        Need::Export,
        Need::Test,
    ];

    /// The name in the table and on `ingot doctor`'s command line.
    pub fn name(self) -> &'static str {
        match self {
            Need::Build => "build",
            Need::AptBuild => "apt-build",
            Need::Run => "run",
            Need::DiskSize => "disk-size",
            Need::SecureBoot => "secure-boot",
            Need::Inspect => "inspect",
            Need::Flash => "flash",
            Need::Export => "export",
            Need::Test => "test",
        }
    }

    /// The command line it stands for, as a user types it.
    pub fn command(self) -> &'static str {
        match self {
            Need::Build => "ingot build",
            Need::AptBuild => "ingot build (a profile with [base.apt])",
            Need::Run => "ingot run",
            Need::DiskSize => "ingot run --disk-size",
            Need::SecureBoot => "ingot run --secure-boot",
            Need::Inspect => "ingot inspect, ingot verify",
            Need::Flash => "ingot flash",
            Need::Export => "ingot export --format qcow2",
            Need::Test => "scripts/test (every test tier)",
        }
    }

    pub fn parse(name: &str) -> Option<Need> {
        Need::ALL.into_iter().find(|n| n.name() == name)
    }
}

/// One line of the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostTool {
    /// A program looked up on `PATH`, or an absolute path to a file.
    pub name: &'static str,
    pub package: Package,
    pub needed_by: Vec<Need>,
    /// What it is for, in a few words.
    pub why: &'static str,
}

impl HostTool {
    /// Whether this names a file rather than a program.
    pub fn is_file(&self) -> bool {
        self.name.starts_with('/')
    }
}

/// A malformed line of the table.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("scripts/host-tools line {line}: {what}")]
pub struct TableError {
    pub line: usize,
    pub what: String,
}

/// Parses a table in `scripts/host-tools`' format.
pub fn parse(text: &'static str) -> Result<Vec<HostTool>, TableError> {
    let mut tools = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let err = |what: String| TableError { line: i + 1, what };
        let mut fields = line.split_whitespace();
        let (Some(name), Some(package), Some(needs)) = (fields.next(), fields.next(), fields.next()) else {
            return Err(err("expected TOOL PACKAGE NEEDED-BY [WHY]".into()));
        };
        let package = match package.strip_prefix("pip:") {
            Some(req) if req.contains("==") => Package::Pip(req),
            Some(req) => {
                return Err(err(format!(
                    "pip requirement {req:?} must pin a version (NAME==VERSION)"
                )));
            }
            None => Package::Debian(package),
        };
        let needed_by = needs
            .split(',')
            .map(|n| Need::parse(n).ok_or_else(|| err(format!("unknown NEEDED-BY {n:?}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let why = after_fields(line, 3);
        tools.push(HostTool {
            name,
            package,
            needed_by,
            why,
        });
    }
    Ok(tools)
}

/// `line` without its first `n` whitespace-separated fields.
fn after_fields(line: &str, n: usize) -> &str {
    let mut rest = line.trim_start();
    for _ in 0..n {
        rest = rest
            .find(char::is_whitespace)
            .map_or("", |i| rest[i..].trim_start());
    }
    rest.trim_end()
}

/// The compiled-in table. A unit test proves it parses, so this never fails in a released binary.
pub fn table() -> &'static [HostTool] {
    static TOOLS: std::sync::OnceLock<Vec<HostTool>> = std::sync::OnceLock::new();
    TOOLS.get_or_init(|| parse(TABLE).unwrap_or_default())
}

/// The table's line for `name`.
pub fn tool(name: &str) -> Option<&'static HostTool> {
    table().iter().find(|t| t.name == name)
}

/// What every command says when `name` (a program or file of the table) is missing: [`missing_summary`] and
/// a pointer to `ingot doctor`.
pub fn missing_message(name: &str) -> String {
    format!("{}; `ingot doctor` checks every host tool", missing_summary(name))
}

/// What `ingot doctor` prints for a missing `name`: the name, the package and the command that installs it.
pub fn missing_summary(name: &str) -> String {
    match tool(name) {
        Some(t) => {
            let what = if t.is_file() {
                "does not exist"
            } else {
                "is not installed"
            };
            format!("{name} {what}: {}", provided_by(t))
        }
        None => format!("{name} is not installed"),
    }
}

/// Where `t` comes from and how to install it: "it comes with the Debian package ovmf (`apt-get install
/// ovmf`)".
pub fn provided_by(t: &HostTool) -> String {
    format!("it comes with {} (`{}`)", t.package, t.package.install_command())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_table_parses_and_names_every_need() {
        let tools = parse(TABLE).unwrap();
        for need in Need::ALL {
            assert!(
                tools.iter().any(|t| t.needed_by.contains(&need)),
                "no tool is needed by {need:?}"
            );
        }
        let img = tools.iter().find(|t| t.name == "qemu-img").unwrap();
        assert_eq!(img.package, Package::Debian("qemu-utils"));
        assert_eq!(img.needed_by, [Need::DiskSize, Need::Export, Need::Test]);
        assert_eq!(img.why, "overlays a bigger disk; writes qcow2");
        assert!(
            tools.iter().all(|t| !t.why.is_empty()),
            "every tool says what it is for"
        );
    }

    #[test]
    fn the_message_names_the_tool_the_package_and_the_install_command() {
        assert_eq!(
            missing_message("qemu-img"),
            "qemu-img is not installed: it comes with the Debian package qemu-utils (`apt-get install \
             qemu-utils`); `ingot doctor` checks every host tool"
        );
        assert!(missing_message("virt-fw-vars").contains("`pip install virt-firmware==26.10`"));
        assert!(missing_message("/usr/share/OVMF/OVMF_CODE_4M.fd").contains("does not exist"));
    }

    #[test]
    fn malformed_lines_are_named() {
        assert_eq!(
            parse("a b\n").unwrap_err(),
            TableError {
                line: 1,
                what: "expected TOOL PACKAGE NEEDED-BY [WHY]".into()
            }
        );
        assert!(
            parse("# c\n\na b nonsense\n")
                .unwrap_err()
                .to_string()
                .contains("line 3: unknown NEEDED-BY")
        );
        assert!(
            parse("a pip:b build x\n")
                .unwrap_err()
                .what
                .contains("must pin a version")
        );
    }
}
