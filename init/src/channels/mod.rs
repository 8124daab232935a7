//! Where the node learns which cluster to join: the node configuration ([`ingot_spec::node_config`]),
//! looked for on each channel in precedence order ([`Channel::ALL`]):
//!
//! 1. `cmdline`: `ingot.node=<standard base64 of the TOML>` on the kernel command line;
//! 2. `fw_cfg`: QEMU's `opt/io.ingot/node.toml` item, in sysfs through the `qemu_fw_cfg` module;
//! 3. `smbios`: an SMBIOS type 11 OEM string `io.ingot.node=<base64>` ([`smbios`], through `dmi-sysfs`);
//! 4. `esp`: the file `ingot/node.toml` on the EFI system partition of the boot disk, mounted read-only
//!    for the read;
//! 5. `baked`: `/etc/ingot/node.toml` in the root (`ingot build --node-config`).
//!
//! The first channel that holds a configuration decides. A configuration that does not parse or validate
//! is rejected and nothing else is tried: a lower channel is usually an older or more generic
//! configuration, and joining a cluster with it instead of the one the operator just supplied would be
//! worse than not joining. A channel that cannot be looked at (its module is missing, the ESP cannot be
//! mounted) is skipped with a one-line note.
//!
//! The chosen configuration is written, normalized ([`NodeConfig::to_toml`]), to [`RUN_PATH`] (mode 0600,
//! on the `/run` tmpfs) for the join step, which reads it with [`selected`]; its `network` and `time`
//! tables replace the image's before the network and clock start. The bootstrap token is never printed:
//! messages show the token's id and `<redacted>`.

pub mod smbios;

use std::io;
use std::path::Path;

use base64::Engine as _;
use ingot_spec::cmdline;
use ingot_spec::config::InitConfig;
use ingot_spec::marker::PREFIX;
use ingot_spec::node_config::{
    BAKED_PATH, CMDLINE_KEY, Channel, ESP_PATH, FW_CFG_NAME, MAX_BYTES, NodeConfig, NodeConfigError,
    SMBIOS_PREFIX,
};
use ingot_spec::partition::TYPE_ESP;

use crate::sys::{Mount, MountFlags, Sys};
use crate::{block, failure, modules, storage};

/// Where stage 2 leaves the chosen configuration for the join step.
pub const RUN_PATH: &str = "/run/ingot/node.toml";
/// QEMU's fw_cfg items by name, as the `qemu_fw_cfg` module shows them.
pub const FW_CFG_BY_NAME: &str = "/sys/firmware/qemu_fw_cfg/by_name";
/// SMBIOS structures, as `dmi-sysfs` shows them (`<type>-<instance>/raw`).
pub const DMI_ENTRIES: &str = "/sys/firmware/dmi/entries";
/// Where the ESP is mounted while its configuration file is read.
pub const ESP_MOUNT: &str = "/run/ingot/esp";
/// The ESP's code page (short names) and character set (long names); their `nls_*` modules are loaded.
const ESP_MOUNT_OPTIONS: &str = "codepage=437,iocharset=ascii";

/// Why a configuration a channel holds was rejected.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Base64(#[from] Base64Error),
    #[error(transparent)]
    Config(#[from] NodeConfigError),
    #[error("reading {0}")]
    Read(String, #[source] io::Error),
}

/// A base64 value that is not standard base64 (RFC 4648 alphabet with `=` padding). Offsets count the
/// value's bytes from 0.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Base64Error {
    #[error(
        "is not standard base64: byte {offset} is {found}; expected A-Z, a-z, 0-9, + or / (and = only as padding at the end)"
    )]
    InvalidByte { offset: usize, found: String },
    #[error(
        "is not standard base64: byte {offset} ends the value with bits no encoder leaves set; it is cut or altered"
    )]
    InvalidLastByte { offset: usize },
    #[error(
        "is not standard base64: {0} characters is no encoded length; expected a multiple of 4 with = padding (`base64 -w0` output)"
    )]
    Length(usize),
    #[error(
        "is not standard base64: the = padding is wrong; expected = or == at the end, as `base64 -w0` writes"
    )]
    Padding,
    #[error("is {0} base64 characters; at most {max} are accepted (64 KiB decoded)", max = max_encoded_len())]
    TooLong(usize),
}

fn max_encoded_len() -> usize {
    MAX_BYTES.div_ceil(3) * 4
}

/// How a byte is shown in an error: printable ASCII quoted, anything else in hex.
fn show_byte(b: u8) -> String {
    if b.is_ascii_graphic() {
        format!("`{}`", char::from(b))
    } else {
        format!("0x{b:02x}")
    }
}

/// Decodes a channel's base64 value.
pub fn decode_base64(value: &str) -> Result<Vec<u8>, Base64Error> {
    if value.len() > max_encoded_len() {
        return Err(Base64Error::TooLong(value.len()));
    }
    base64::engine::general_purpose::STANDARD
        .decode(value)
        .map_err(|e| match e {
            base64::DecodeError::InvalidByte(offset, b) => Base64Error::InvalidByte {
                offset,
                found: show_byte(b),
            },
            base64::DecodeError::InvalidLastSymbol(offset, _) => Base64Error::InvalidLastByte { offset },
            base64::DecodeError::InvalidLength(n) => Base64Error::Length(n),
            base64::DecodeError::InvalidPadding => Base64Error::Padding,
        })
}

/// What one channel holds.
#[derive(Debug)]
enum Probe {
    /// No configuration.
    Empty,
    /// The channel could not be looked at; the note says why.
    Skipped(String),
    /// A configuration: exactly where, and its bytes or why they could not be had.
    Found {
        source: String,
        bytes: Result<Vec<u8>, Error>,
    },
}

/// What the channels gave.
#[derive(Debug)]
pub enum Outcome {
    Valid {
        channel: Channel,
        source: String,
        config: Box<NodeConfig>,
    },
    /// The highest channel holding a configuration held a broken one; `error` is its message.
    Rejected {
        channel: Channel,
        source: String,
        error: String,
    },
    /// No channel holds a configuration.
    None,
}

impl Outcome {
    /// The console line (without the `ingot: ` prefix). Shows the token's id only.
    pub fn line(&self) -> String {
        match self {
            Outcome::Valid {
                channel,
                source,
                config,
            } => {
                let name = match &config.node.name {
                    Some(n) => format!("node name {n}"),
                    None => "node name: host name".to_owned(),
                };
                let mut line = format!(
                    "node config from {channel} ({source}): cluster {}, token {}, {name}",
                    config.cluster.endpoint, config.cluster.token
                );
                if config.network.is_some() {
                    line.push_str(", network from the node config");
                }
                if config.time.is_some() {
                    line.push_str(", time servers from the node config");
                }
                line
            }
            Outcome::Rejected {
                channel,
                source,
                error,
            } => format!("node config from {channel} ({source}) rejected: {error}"),
            Outcome::None => {
                let tried: Vec<&str> = Channel::ALL.iter().map(|c| c.name()).collect();
                format!(
                    "no node config (tried {}); not joining a cluster",
                    tried.join(", ")
                )
            }
        }
    }
}

/// Looks at the channels in precedence order and stops at the first that holds a configuration, which
/// is validated; prints a note for each channel that could not be looked at.
pub fn select(sys: &dyn Sys) -> Outcome {
    for channel in Channel::ALL {
        match probe(sys, channel) {
            Probe::Empty => {}
            Probe::Skipped(why) => {
                sys.console(&format!("{PREFIX}node config channel {channel} skipped: {why}"))
            }
            Probe::Found { source, bytes } => {
                let parsed = bytes.and_then(|b| NodeConfig::parse(&b).map_err(Error::from));
                return match parsed {
                    Ok(config) => Outcome::Valid {
                        channel,
                        source,
                        config: Box::new(config),
                    },
                    Err(e) => Outcome::Rejected {
                        channel,
                        source,
                        error: failure::chain(&e),
                    },
                };
            }
        }
    }
    Outcome::None
}

/// Stage 2's step: selects the configuration, says which channel it came from (or why none is used),
/// leaves a valid one at [`RUN_PATH`] for the join step and applies its `network` and `time` to `cfg`.
pub fn discover(sys: &dyn Sys, cfg: &mut InitConfig) -> Outcome {
    let outcome = select(sys);
    sys.console(&format!("{PREFIX}{}", outcome.line()));
    if let Outcome::Valid { config, .. } = &outcome {
        if let Err(e) = sys.write_file_atomic(RUN_PATH, config.to_toml().as_bytes(), 0o600) {
            crate::warn(
                sys,
                &format!("writing {RUN_PATH}: {e}, ignoring; the node will not join a cluster"),
            );
        }
        if let Some(network) = &config.network {
            cfg.network = network.clone();
        }
        if let Some(time) = &config.time {
            cfg.time = time.clone();
        }
    }
    outcome
}

fn probe(sys: &dyn Sys, channel: Channel) -> Probe {
    if let Err(e) = modules::load_named(sys, &to_strings(channel.modules())) {
        return Probe::Skipped(failure::chain(&e));
    }
    match channel {
        Channel::Cmdline => probe_cmdline(sys),
        Channel::FwCfg => probe_fw_cfg(sys),
        Channel::Smbios => probe_smbios(sys),
        Channel::Esp => probe_esp(sys),
        Channel::Baked => probe_file(sys, BAKED_PATH, BAKED_PATH.to_owned()),
    }
}

fn to_strings(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

fn probe_cmdline(sys: &dyn Sys) -> Probe {
    let line = match sys.read(Path::new("/proc/cmdline")) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) => return Probe::Skipped(format!("reading /proc/cmdline: {e}")),
    };
    match cmdline::get(&line, CMDLINE_KEY) {
        None => Probe::Empty,
        Some(value) => Probe::Found {
            source: format!("/proc/cmdline {CMDLINE_KEY}="),
            bytes: decode_base64(value).map_err(Error::from),
        },
    }
}

/// Reads at most one byte more than a configuration may have, so an oversized one is rejected by size
/// without reading it all.
fn read_bounded(sys: &dyn Sys, path: &str) -> io::Result<Vec<u8>> {
    sys.read_at(Path::new(path), 0, MAX_BYTES + 1)
}

/// A channel that is a file: absent is empty, anything else found.
fn probe_file(sys: &dyn Sys, path: &str, source: String) -> Probe {
    match read_bounded(sys, path) {
        Ok(bytes) => Probe::Found {
            source,
            bytes: Ok(bytes),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Probe::Empty,
        Err(e) => Probe::Found {
            source,
            bytes: Err(Error::Read(path.to_owned(), e)),
        },
    }
}

fn probe_fw_cfg(sys: &dyn Sys) -> Probe {
    let raw = format!("{FW_CFG_BY_NAME}/{FW_CFG_NAME}/raw");
    probe_file(sys, &raw, FW_CFG_NAME.to_owned())
}

fn probe_smbios(sys: &dyn Sys) -> Probe {
    let entries = match sys.read_dir(Path::new(DMI_ENTRIES)) {
        Ok(e) => e,
        // No SMBIOS tables at all.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Probe::Empty,
        Err(e) => return Probe::Skipped(format!("listing {DMI_ENTRIES}: {e}")),
    };
    let prefix = format!("{}-", smbios::TYPE_OEM_STRINGS);
    for entry in entries.iter().filter_map(|e| e.to_str()) {
        if !entry.starts_with(&prefix) {
            continue;
        }
        let path = format!("{DMI_ENTRIES}/{entry}/raw");
        let raw = match sys.read(Path::new(&path)) {
            Ok(r) => r,
            Err(e) => {
                crate::warn(sys, &format!("reading {path}: {e}, ignoring this entry"));
                continue;
            }
        };
        let strings = match smbios::parse(&raw) {
            Ok(s) => s,
            Err(e) => {
                crate::warn(sys, &format!("{path} {e}, ignoring this entry"));
                continue;
            }
        };
        for (i, s) in strings.strings.iter().enumerate() {
            if let Some(value) = s.strip_prefix(SMBIOS_PREFIX.as_bytes()) {
                // Not UTF-8 is not base64 either; the decoder names the first bad byte.
                let value = String::from_utf8_lossy(value);
                return Probe::Found {
                    source: format!("type 11 entry {entry}, string {}", i + 1),
                    bytes: decode_base64(&value).map_err(Error::from),
                };
            }
        }
    }
    Probe::Empty
}

/// The ESP's device node on the disk the root came from (`/dev/vda1`).
fn esp_device(sys: &dyn Sys) -> Result<String, String> {
    let (disk, _) = storage::root_disk(sys).map_err(|e| failure::chain(&e))?;
    let parts = block::read_gpt(sys, &disk).map_err(|e| format!("reading the GPT of /dev/{disk}: {e}"))?;
    let esp = parts
        .iter()
        .find(|p| p.type_guid == TYPE_ESP)
        .ok_or_else(|| format!("/dev/{disk} has no EFI system partition (type {TYPE_ESP})"))?;
    match block::partition_device(sys, &disk, esp.number) {
        Ok(Some(node)) => Ok(format!("/dev/{node}")),
        Ok(None) => Err(format!(
            "partition {} of /dev/{disk} has no device node",
            esp.number
        )),
        Err(e) => Err(format!("listing the partitions of /dev/{disk}: {e}")),
    }
}

fn probe_esp(sys: &dyn Sys) -> Probe {
    let device = match esp_device(sys) {
        Ok(d) => d,
        Err(why) => return Probe::Skipped(why),
    };
    // `mkdir` makes one level; /run is an empty tmpfs.
    for dir in ["/run/ingot", ESP_MOUNT] {
        if let Err(e) = sys.mkdir(dir) {
            return Probe::Skipped(format!("creating {dir}: {e}"));
        }
    }
    let mount = Mount {
        source: &device,
        target: ESP_MOUNT,
        fstype: "vfat",
        flags: MountFlags::RDONLY | MountFlags::NOEXEC | MountFlags::NOSUID | MountFlags::NODEV,
        data: Some(ESP_MOUNT_OPTIONS),
    };
    if let Err(e) = sys.mount(&mount) {
        return Probe::Skipped(format!("mounting {device} on {ESP_MOUNT} as vfat: {e}"));
    }
    let probe = probe_file(
        sys,
        &format!("{ESP_MOUNT}/{ESP_PATH}"),
        format!("{device} {ESP_PATH}"),
    );
    if let Err(e) = sys.unmount(ESP_MOUNT) {
        crate::warn(sys, &format!("unmounting {ESP_MOUNT}: {e}, ignoring"));
    }
    probe
}

#[cfg(test)]
mod tests;
