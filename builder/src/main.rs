//! `ingot`: casts immutable OS images for bare-metal Kubernetes. Argument parsing and error printing only;
//! the work is in the library (`ingot::commands`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "ingot",
    version,
    about = "Cast immutable, reproducible OS images for bare-metal Kubernetes",
    long_about = "Cast immutable, reproducible OS images for bare-metal Kubernetes.\n\n\
        A profile (profiles/NAME.toml) says what goes into an image; its lock file (profiles/NAME.lock) pins \
        every input by URL and sha256. `ingot build` turns the two into one GPT disk image that boots under \
        UEFI: systemd-boot and a unified kernel image on the ESP, a read-only EROFS root, and ingot-init as \
        PID 1.",
    after_help = "Typical use:\n  ingot lock --profile minimal      # pin inputs (writes profiles/minimal.lock)\n  \
        ingot build --profile minimal     # → out/minimal.raw + out/minimal.manifest.json\n  \
        ingot run out/minimal.raw         # boot it under QEMU, console on stdout\n  \
        ingot inspect out/minimal.raw     # partitions, hashes, kernel command line, components\n  \
        ingot kernel check /boot/config-$(uname -r)   # can this kernel run containerd, kubelet, a CNI?"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Resolve a profile's packages to pinned URLs and sha256s and write its lock file.
    ///
    /// Reads the archive's InRelease, checks its OpenPGP signature against the keyring the profile names,
    /// takes the Packages index (checked against InRelease) and picks the newest version of each package.
    /// Kernel metapackages are followed to the versioned kernel package; components with `depends = true`
    /// also pin their dependency closure (listed under the component). Inputs given by `url` or `path`
    /// (components and `[[images]]` archives) are pinned by their sha256. The lock is the profile's path
    /// with `.lock`.
    Lock {
        /// Profile name (profiles/NAME.toml) or path to a profile file.
        #[arg(long, short)]
        profile: String,
        /// Use only cached archive indices.
        #[arg(long)]
        offline: bool,
    },
    /// Build a disk image from a profile and its lock file.
    ///
    /// Inputs come from the cache ($XDG_CACHE_HOME/ingot, or INGOT_CACHE_DIR) or are downloaded and checked
    /// against the lock's sha256. INGOT_MIRROR="FROM=TO[;FROM=TO]" rewrites URL prefixes. The image and its
    /// manifest appear in the output directory only once complete.
    Build {
        /// Profile name (profiles/NAME.toml) or path to a profile file.
        #[arg(long, short)]
        profile: String,
        /// Output directory.
        #[arg(long, short, default_value = "out")]
        out: PathBuf,
        /// Do not download: use only the cache.
        #[arg(long)]
        offline: bool,
        /// Print nothing but errors.
        #[arg(long, short)]
        quiet: bool,
        /// Rebuild every artifact; only downloaded inputs come from the cache (by default the initramfs, UKI
        /// and ESP are reused when nothing they are made of changed).
        #[arg(long)]
        rebuild: bool,
        /// Keep the work directory (staged root, ESP files, file system images) at this new path.
        #[arg(long, value_name = "DIR")]
        keep_work: Option<PathBuf>,
    },
    /// Boot an image under QEMU (UEFI via OVMF) with the serial console on stdout.
    ///
    /// The image is never modified: the guest's writes go to a temporary overlay, discarded when QEMU exits.
    /// Networking is QEMU's user mode with restrict=on (the guest reaches nothing). QEMU exits when the guest
    /// reboots, unless --allow-reboot is given.
    Run {
        /// The raw disk image.
        image: PathBuf,
        /// Acceleration; auto tries KVM and falls back to TCG when KVM is missing or the guest shows no kernel
        /// output within 30 s. INGOT_QEMU_ACCEL overrides it.
        #[arg(long, value_enum, default_value_t = AccelArg::Auto)]
        accel: AccelArg,
        /// Guest memory, e.g. 1G or 2048M.
        #[arg(long, default_value = "1G")]
        memory: String,
        /// Virtual CPUs.
        #[arg(long, default_value_t = 2)]
        cpus: u32,
        /// Exit 0 as soon as a console line contains this text (and non-zero if it does not appear in time).
        #[arg(long)]
        expect: Option<String>,
        /// Seconds to wait for --expect (default 300), or for the guest to power off without --expect.
        #[arg(long)]
        timeout: Option<u64>,
        /// Also write the console to this file.
        #[arg(long)]
        serial_log: Option<PathBuf>,
        /// Give the guest a disk of this size, e.g. 4G or 512M (at least the image's size): the image
        /// followed by empty space. The node's var partition grows into the extra space on first boot.
        /// The image stays untouched: a qcow2 overlay backed by it (made with qemu-img, from qemu-utils)
        /// holds the writes. Without this option the disk is exactly the image.
        #[arg(long, value_name = "SIZE")]
        disk_size: Option<String>,
        /// Let the guest reboot: QEMU resets the machine and the image boots again in the same run instead of
        /// QEMU exiting. The disk overlay, and so everything the guest wrote, persists across guest reboots
        /// within one run.
        #[arg(long)]
        allow_reboot: bool,
    },
    /// Show an image's partitions with hashes, its kernel command line and its pinned components.
    Inspect {
        image: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Kernel tools: `ingot kernel check` tells whether a kernel configuration can run a Kubernetes node.
    Kernel {
        #[command(subcommand)]
        command: KernelCommand,
    },
}

#[derive(Subcommand)]
enum KernelCommand {
    /// Check a kernel configuration for what containerd, kubelet, CNI plugins and storage drivers need.
    ///
    /// Reads a kernel configuration (`/boot/config-<release>`, a build tree's `.config`), a kernel package
    /// (`linux-image-*.deb`: its `/boot/config-*` is read without unpacking the rest), or with --profile the
    /// kernel a profile's lock file pins. For each feature it lists the options that are present (`y`, or `m`:
    /// a module is fine) and the ones that are missing with what they are for. An option "absent" from the
    /// configuration is one whose dependencies are off; enable those first.
    ///
    /// The features and their options are in kernel-configs/features.toml (compiled in). Exits 0 when every
    /// requested feature is complete, 1 when one is not or on an error.
    #[command(after_help = "Examples:\n  \
        ingot kernel check /boot/config-$(uname -r)\n  \
        ingot kernel check linux-image-6.1.0-50-cloud-amd64_6.1.176-1_amd64.deb --feature cilium\n  \
        ingot kernel check --profile minimal --feature containers --feature kubelet\n  \
        ingot kernel check .config --json | jq '.features[] | select(.complete | not) | .missing'\n\n\
        Features: containers, kubelet, kube-proxy, bridge-cni, vxlan, cilium, calico, longhorn, rook, topolvm, ipvs")]
    #[command(group = clap::ArgGroup::new("input").required(true).args(["config", "profile"]))]
    Check {
        /// Kernel configuration file or kernel .deb.
        config: Option<PathBuf>,
        /// Check the kernel this profile's lock file pins (a name in profiles/ or a path).
        #[arg(long, short)]
        profile: Option<String>,
        /// Check only this feature (repeatable); all features by default.
        #[arg(long = "feature", short = 'f', value_name = "NAME")]
        features: Vec<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// With --profile: do not download the kernel, use only the cache.
        #[arg(long)]
        offline: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum AccelArg {
    Auto,
    Kvm,
    Tcg,
}

fn parse_memory(s: &str) -> anyhow::Result<u32> {
    let bytes = ingot::profile::parse_size(s).map_err(anyhow::Error::msg)?;
    let mib = bytes / (1024 * 1024);
    if mib < 256 || bytes % (1024 * 1024) != 0 {
        anyhow::bail!("--memory {s}: expected whole MiB, at least 256M");
    }
    Ok(u32::try_from(mib)?)
}

fn parse_disk_size(s: &str) -> anyhow::Result<u64> {
    let bytes = ingot::profile::parse_size(s).map_err(anyhow::Error::msg)?;
    if bytes == 0 || !bytes.is_multiple_of(512) {
        anyhow::bail!("--disk-size {s}: expected a size in whole 512-byte sectors, e.g. 4G or 512M");
    }
    Ok(bytes)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut incomplete = false;
    let result = match cli.command {
        Command::Lock { profile, offline } => ingot::commands::lock(&profile, offline).map(|_| ()),
        Command::Build {
            profile,
            out,
            offline,
            quiet,
            rebuild,
            keep_work,
        } => ingot::commands::build(
            &profile,
            &out,
            ingot::commands::BuildOptions {
                offline,
                quiet,
                rebuild,
                keep_work: keep_work.as_deref(),
            },
        )
        .map(|r| {
            println!("{}", r.image.display());
            if !quiet {
                eprintln!("wrote {} and {}", r.image.display(), r.manifest_path.display());
            }
        }),
        Command::Run {
            image,
            accel,
            memory,
            cpus,
            expect,
            timeout,
            serial_log,
            disk_size,
            allow_reboot,
        } => parse_memory(&memory).and_then(|memory_mib| {
            let disk_size = disk_size.as_deref().map(parse_disk_size).transpose()?;
            ingot::commands::run(ingot::commands::RunOptions {
                image,
                accel: match accel {
                    AccelArg::Auto => ingot_qemu::Accel::Auto,
                    AccelArg::Kvm => ingot_qemu::Accel::Kvm,
                    AccelArg::Tcg => ingot_qemu::Accel::Tcg,
                },
                memory_mib,
                cpus,
                expect,
                timeout: timeout.map(Duration::from_secs),
                serial_log,
                disk_size,
                allow_reboot,
            })
        }),
        Command::Kernel {
            command:
                KernelCommand::Check {
                    config,
                    profile,
                    features,
                    json,
                    offline,
                },
        } => {
            let input = match (config, profile) {
                (_, Some(p)) => ingot::commands::KernelConfigInput::Profile(p),
                (Some(c), None) => ingot::commands::KernelConfigInput::Path(c),
                // clap requires one of the two.
                (None, None) => ingot::commands::KernelConfigInput::Path(PathBuf::new()),
            };
            ingot::commands::kernel_check(&input, &features, offline).and_then(|r| {
                if json {
                    println!("{}", serde_json::to_string_pretty(&r)?);
                } else {
                    print!("{}", ingot::kconfig::render(&r));
                }
                // The report says what is missing; only the exit status is left to set.
                incomplete = !r.complete;
                Ok(())
            })
        }
        Command::Inspect { image, json } => ingot::inspect::inspect(&image).and_then(|r| {
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print!("{}", ingot::inspect::render(&r));
            }
            Ok(())
        }),
    };
    match result {
        Ok(()) if incomplete => ExitCode::FAILURE,
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line per cause, outermost first, so the user sees what failed and why.
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}
