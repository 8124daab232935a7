//! `ingot run --node-config FILE --config-channel CHANNEL`: hands a node configuration to the VM on one
//! channel, the way a hypervisor or an operator would on real machines.
//!
//! - `fw_cfg`: QEMU's `-fw_cfg name=opt/io.ingot/node.toml,file=…`;
//! - `smbios`: an SMBIOS type 11 OEM string `io.ingot.node=<base64>`;
//! - `esp`: a sparse copy of the image in a scratch directory with `ingot/node.toml` put on its ESP
//!   (mtools); the user's image is never written;
//! - `cmdline`: the image's UKI carries its own command line, which nothing outside can extend, so the
//!   VM boots the UKI's `.linux` and `.initrd` directly (OVMF still the firmware, `-kernel`, `-initrd`,
//!   `-append`) with the UKI's `.cmdline` plus `ingot.node=<base64>`.
//!
//! Files are written to a scratch directory that lives as long as the [`Delivery`].

use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use ingot_qemu::{DirectKernel, FwCfgFile, VmConfig};
use ingot_spec::gpt;
use ingot_spec::node_config::{CMDLINE_KEY, Channel, ESP_PATH, FW_CFG_NAME, SMBIOS_PREFIX};
use ingot_spec::partition::TYPE_ESP;

use crate::node_config::NodeConfigFile;
use crate::{disk, esp, uki};

/// The kernel's command line buffer on x86 (`COMMAND_LINE_SIZE`), including the terminating NUL.
pub const KERNEL_CMDLINE_MAX: usize = 2048;

#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    #[error(
        "the baked channel is part of the image: build it with `ingot build --profile NAME --node-config FILE`; `ingot run` delivers on fw_cfg, smbios, esp or cmdline"
    )]
    Baked,
    #[error("creating a scratch directory for the VM")]
    Scratch(#[source] std::io::Error),
    #[error("{what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {reason}", image.display())]
    Image { image: PathBuf, reason: String },
    #[error(transparent)]
    Esp(#[from] esp::EspError),
    #[error("{path} on the ESP of {}", image.display())]
    Uki {
        image: PathBuf,
        path: String,
        #[source]
        source: uki::UkiError,
    },
    #[error(
        "the kernel command line would be {total} bytes ({base} of the image's own plus {added} for {CMDLINE_KEY}=<base64 of {config} bytes>); the kernel takes at most {} bytes: shorten the configuration or use --config-channel fw_cfg",
        KERNEL_CMDLINE_MAX - 1
    )]
    CmdlineTooLong {
        total: usize,
        base: usize,
        added: usize,
        config: usize,
    },
}

type Result<T> = std::result::Result<T, DeliverError>;

/// The scratch files a delivery made; keep it until the VM is gone.
#[derive(Debug)]
pub struct Delivery {
    pub scratch: tempfile::TempDir,
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> DeliverError {
    let path = path.to_path_buf();
    move |source| DeliverError::Io { what, path, source }
}

/// Standard base64 of the configuration's bytes, as the cmdline and smbios channels carry it.
pub fn encode(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// `<uki cmdline> ingot.node=<base64>`, or why it does not fit the kernel's buffer.
pub fn kernel_cmdline(base: &str, config: &[u8]) -> Result<String> {
    let base = base.trim();
    let added = format!("{CMDLINE_KEY}={}", encode(config));
    let line = if base.is_empty() {
        added.clone()
    } else {
        format!("{base} {added}")
    };
    if line.len() >= KERNEL_CMDLINE_MAX {
        return Err(DeliverError::CmdlineTooLong {
            total: line.len(),
            base: base.len(),
            added: line.len() - base.len(),
            config: config.len(),
        });
    }
    Ok(line)
}

/// Sets `cfg` up to hand `file` to the guest on `channel`.
pub fn deliver(cfg: &mut VmConfig, file: &NodeConfigFile, channel: Channel) -> Result<Delivery> {
    if channel == Channel::Baked {
        return Err(DeliverError::Baked);
    }
    let scratch = tempfile::Builder::new()
        .prefix("ingot-run-")
        .tempdir()
        .map_err(DeliverError::Scratch)?;
    // tempfile makes the directory 0700: the token stays private.
    let toml = scratch.path().join("node.toml");
    std::fs::write(&toml, &file.bytes).map_err(io("writing", &toml))?;
    match channel {
        Channel::FwCfg => cfg.fw_cfg.push(FwCfgFile {
            name: FW_CFG_NAME.to_owned(),
            path: toml,
        }),
        Channel::Smbios => cfg
            .smbios_oem_strings
            .push(format!("{SMBIOS_PREFIX}{}", encode(&file.bytes))),
        Channel::Esp => {
            let copy = scratch.path().join(
                cfg.image
                    .file_name()
                    .map_or_else(|| "image.raw".into(), |n| n.to_owned()),
            );
            sparse_copy(&cfg.image, &copy)?;
            let offset = esp_offset(&copy)?;
            esp::add_file(&copy, offset, ESP_PATH, &toml)?;
            cfg.image = copy;
        }
        Channel::Cmdline => {
            let offset = esp_offset(&cfg.image)?;
            let parts = uki_parts(&cfg.image, offset)?;
            let kernel = scratch.path().join("vmlinuz");
            let initrd = scratch.path().join("initrd");
            std::fs::write(&kernel, &parts.linux).map_err(io("writing", &kernel))?;
            std::fs::write(&initrd, &parts.initrd).map_err(io("writing", &initrd))?;
            cfg.kernel = Some(DirectKernel {
                kernel,
                initrd: Some(initrd),
                cmdline: kernel_cmdline(&parts.cmdline, &file.bytes)?,
            });
        }
        Channel::Baked => return Err(DeliverError::Baked),
    }
    Ok(Delivery { scratch })
}

/// Copies `src` to `dst` writing only non-zero blocks, so the copy takes the space of the data. Holes
/// are skipped without reading them (SEEK_DATA/SEEK_HOLE; without those, everything is read).
pub fn sparse_copy(src: &Path, dst: &Path) -> Result<()> {
    use rustix::fs::{SeekFrom, seek};
    let from = File::open(src).map_err(io("opening", src))?;
    let len = from.metadata().map_err(io("reading", src))?.len();
    let to = File::create(dst).map_err(io("creating", dst))?;
    to.set_len(len).map_err(io("writing", dst))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0;
    while pos < len {
        let data = match seek(&from, SeekFrom::Data(pos)) {
            Ok(d) => d,
            // Only a hole is left.
            Err(rustix::io::Errno::NXIO) => break,
            Err(_) => pos,
        };
        let hole = seek(&from, SeekFrom::Hole(data)).map_or(len, |h| h.min(len));
        pos = data;
        while pos < hole {
            let n = usize::try_from(hole - pos).map_or(buf.len(), |r| r.min(buf.len()));
            from.read_exact_at(&mut buf[..n], pos)
                .map_err(io("reading", src))?;
            disk::write_nonzero(&to, &buf[..n], pos).map_err(io("writing", dst))?;
            pos += n as u64;
        }
    }
    Ok(())
}

/// The byte offset of the ESP in a disk image, from its GPT.
pub fn esp_offset(image: &Path) -> Result<u64> {
    let bad = |reason: String| DeliverError::Image {
        image: image.to_path_buf(),
        reason,
    };
    let f = File::open(image).map_err(io("opening", image))?;
    let mut head = vec![0u8; 2 * gpt::SECTOR as usize];
    f.read_exact_at(&mut head, 0)
        .map_err(|_| bad("too small to hold a GPT".into()))?;
    let header = gpt::parse_header(&head).map_err(|e| bad(format!("reading the GPT: {e}")))?;
    let range = header.entries_byte_range();
    let mut array = vec![0u8; usize::try_from(range.end - range.start).unwrap_or(0)];
    f.read_exact_at(&mut array, range.start)
        .map_err(|_| bad("the GPT partition array is cut off".into()))?;
    let parts = gpt::parse_entries(&header, &array).map_err(|e| bad(format!("reading the GPT: {e}")))?;
    parts
        .iter()
        .find(|p| p.type_guid == TYPE_ESP)
        .map(|p| p.offset_bytes())
        .ok_or_else(|| bad(format!("has no EFI system partition (type {TYPE_ESP})")))
}

/// What a UKI holds for booting its kernel directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UkiParts {
    pub linux: Vec<u8>,
    pub initrd: Vec<u8>,
    pub cmdline: String,
}

/// Extracts kernel, initrd and command line from UKI bytes.
pub fn split_uki(bytes: &[u8]) -> std::result::Result<UkiParts, String> {
    let section = |name: &str| -> std::result::Result<Vec<u8>, String> {
        uki::section_data(bytes, name)
            .map_err(|e| e.to_string())?
            .map(<[u8]>::to_vec)
            .ok_or_else(|| format!("has no {name} section"))
    };
    Ok(UkiParts {
        linux: section(".linux")?,
        initrd: section(".initrd")?,
        cmdline: uki::cmdline(bytes)
            .map_err(|e| e.to_string())?
            .unwrap_or_default(),
    })
}

/// The newest UKI in `EFI/Linux` of the ESP at `offset`, split into its parts.
fn uki_parts(image: &Path, offset: u64) -> Result<UkiParts> {
    let mut names = esp::list_dir(image, offset, esp::UKI_DIR)?;
    names.sort();
    let name = names
        .into_iter()
        .rfind(|n| n.ends_with(".efi"))
        .ok_or_else(|| DeliverError::Image {
            image: image.to_path_buf(),
            reason: format!("its ESP has no UKI in {}", esp::UKI_DIR),
        })?;
    let path = format!("{}/{name}", esp::UKI_DIR);
    let bytes = esp::read_file(image, offset, &path)?;
    split_uki(&bytes).map_err(|reason| DeliverError::Image {
        image: image.to_path_buf(),
        reason: format!("{path} on the ESP {reason}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cmdline_channel_appends_the_base64_and_refuses_what_the_kernel_would_cut() {
        assert_eq!(
            kernel_cmdline("console=ttyS0 panic=-1\n", b"x").unwrap(),
            "console=ttyS0 panic=-1 ingot.node=eA=="
        );
        let base = "console=ttyS0";
        // 13 + 1 + 11 + 2020 (the base64 of 1515 bytes) = 2045 fits; 3 more bytes are 4 more characters.
        assert_eq!(kernel_cmdline(base, &[b'#'; 1515]).unwrap().len(), 2045);
        assert!(kernel_cmdline(base, &[b'#'; 1518]).is_err());
        let err = kernel_cmdline(base, &[b'#'; 1600]).unwrap_err().to_string();
        assert_eq!(
            err,
            "the kernel command line would be 2161 bytes (13 of the image's own plus 2148 for ingot.node=<base64 of 1600 bytes>); the kernel takes at most 2047 bytes: shorten the configuration or use --config-channel fw_cfg"
        );
    }

    #[test]
    fn a_uki_without_an_initrd_is_named() {
        let stub = crate::uki::tests::tiny_stub();
        let mut inputs = crate::uki::tests::inputs(&stub);
        let built = crate::uki::assemble(&inputs).unwrap();
        let parts = split_uki(&built).unwrap();
        assert_eq!(parts.linux, inputs.kernel);
        assert_eq!(parts.initrd, inputs.initrd);
        assert_eq!(parts.cmdline, inputs.cmdline);
        inputs.initrd = &[];
        let built = crate::uki::assemble(&inputs).unwrap();
        assert_eq!(split_uki(&built).unwrap_err(), "has no .initrd section");
    }

    #[test]
    fn a_sparse_copy_is_identical_and_sparse() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("a.raw");
        let f = File::create(&src).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(b"head", 0).unwrap();
        f.write_all_at(&[7u8; 10_000], 40 << 20).unwrap();
        drop(f);
        let dst = d.path().join("b.raw");
        sparse_copy(&src, &dst).unwrap();
        assert!(std::fs::read(&src).unwrap() == std::fs::read(&dst).unwrap());
        let blocks = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&dst).unwrap());
        assert!(blocks * 512 < 1 << 20, "the copy takes {} bytes", blocks * 512);
    }
}
