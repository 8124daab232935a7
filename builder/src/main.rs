//! `ingot`: casts immutable OS images for bare-metal Kubernetes. Argument parsing and error printing only;
//! the work is in the library (`ingot::commands`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use ingot_spec::node_config::Channel;

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
        ingot build --profile minimal     # → out/minimal.raw + .manifest.json + .bmap\n  \
        ingot run out/minimal.raw         # boot it under QEMU, console on stdout\n  \
        ingot inspect out/minimal.raw     # partitions, hashes, kernel command line, components\n  \
        ingot export out/minimal.raw --format raw.zst   # → out/minimal.raw.zst for bmaptool, Tinkerbell\n  \
        ingot node-config from-join-command \"kubeadm join …\" -o node.toml   # which cluster a node joins\n  \
        ingot kernel check /boot/config-$(uname -r)   # can this kernel run containerd, kubelet, a CNI?\n  \
        ingot doctor                      # which host tools each command needs, and what is missing"
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
    /// (components and `[[images]]` archives) are pinned by their sha256. A `[base.apt]` root pins the
    /// archive's `Essential: yes` packages, the packages it names and their dependencies as `[[base]]`
    /// entries, which the build installs with mmdebstrap. The lock is the profile's path with `.lock`.
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
        /// and ESP, and an apt base's mmdebstrap tarball, are reused when nothing they are made of changed).
        #[arg(long)]
        rebuild: bool,
        /// Keep the work directory (staged root, ESP files, file system images) at this new path.
        #[arg(long, value_name = "DIR")]
        keep_work: Option<PathBuf>,
        /// Bake this node configuration into the root at /etc/ingot/node.toml (mode 0600): the lowest
        /// channel, used when no other holds one. Validated before the build starts. The image then holds
        /// the bootstrap token: treat it as a secret.
        #[arg(long, value_name = "FILE")]
        node_config: Option<PathBuf>,
        /// Sign the image's manifest with this private key (made by `ingot keygen`); the signature goes
        /// next to it as `<name>.manifest.json.sig`. `ingot verify` checks image, manifest and signature.
        #[arg(long, value_name = "KEY")]
        sign_key: Option<PathBuf>,
        /// Sign systemd-boot and the UKI with Authenticode for UEFI Secure Boot, with this db key made by
        /// `ingot keygen --secure-boot`: its path prefix (DIR/db: DIR/db.key + DIR/db.crt) or the key set's
        /// directory. Signatures are deterministic: the same key and inputs give the same image.
        #[arg(long, value_name = "KEY")]
        secure_boot_key: Option<PathBuf>,
    },
    /// Make an Ed25519 key pair for signing images (OUT.key, OUT.pub), or with --secure-boot the owner's
    /// Secure Boot keys (a directory).
    ///
    /// Image keys: two-line text files, `ingot-key v1 ed25519 private|public`, then the base64 of the
    /// 32-byte key. Keep OUT.key offline; give OUT.pub to whoever checks images (`ingot verify --key
    /// OUT.pub`). Existing files are never overwritten.
    ///
    /// Secure Boot keys (--secure-boot, --out is a directory, created with mode 0700): PK (platform key),
    /// KEK (key exchange key) and db (signature database; it signs the boot binaries). For each NAME:
    ///
    /// - OUT/NAME.key: RSA-2048 private key, PEM PKCS#8 ("BEGIN PRIVATE KEY", unencrypted), mode 0600
    ///
    /// - OUT/NAME.crt: self-signed X.509 certificate, PEM; subject CN=ingot <--name> NAME; SHA-256 with
    ///   RSA; valid 30 years from now
    ///
    /// - OUT/NAME.cer: the same certificate, DER (what firmware setup menus import)
    ///
    /// and OUT/owner-guid.txt, the random EFI GUID that owns the enrolled entries. RSA-2048 with SHA-256 is
    /// what UEFI firmware verifies. Enroll the .cer files (or let `ingot run --secure-boot OUT` do it for
    /// QEMU) and sign images with `ingot build --secure-boot-key OUT/db`. Every file is written to a temp
    /// file, synced and renamed; existing ones are kept unless --force.
    Keygen {
        /// Path prefix of the two files; with --secure-boot, the directory of the key set.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Make the Secure Boot key set (PK, KEK, db) instead of an image signing key.
        #[arg(long)]
        secure_boot: bool,
        /// The name in the Secure Boot certificates' subjects (default: the directory's name).
        #[arg(long, requires = "secure_boot")]
        name: Option<String>,
        /// Replace an existing Secure Boot key set.
        #[arg(long, requires = "secure_boot")]
        force: bool,
    },
    /// Prove an image is exactly what its signed manifest describes.
    ///
    /// Checks, in order: the manifest's signature (`<manifest>.sig`) against the public key, the image's
    /// size, every partition's sha256 (and that the rest of each partition is zeros), and the sha256 of the
    /// bytes outside the partitions (MBR, both GPTs, gaps). Partitions are hashed in parallel. The first
    /// failure is reported with the partition and byte range; the exit code is non-zero. Alongside, the
    /// dm-verity tree is rebuilt from root-a and compared with root-a-verity and the manifest's root hash;
    /// then the UKI on the ESP must be the manifest's, with `roothash=` equal to that root hash. Last, it
    /// says whether the boot loader and the UKI carry Authenticode signatures for Secure Boot, and whose.
    ///
    /// Rollback protection: for each public key, ingot remembers the highest version it accepted of each
    /// image name (in $XDG_STATE_HOME/ingot/accepted-versions.json, or --state) and refuses a lower one.
    /// Versions compare as Debian versions (1.2.3 < 1.10, 1.0~rc1 < 1.0).
    Verify {
        /// The raw disk image, or a block device an image was copied onto (then pass --manifest; a larger
        /// device's bytes past the image are not checked).
        image: PathBuf,
        /// The public key (`ingot keygen` → OUT.pub).
        #[arg(long)]
        key: PathBuf,
        /// The manifest; by default the one next to the image (`out/x.raw` → `out/x.manifest.json`).
        #[arg(long)]
        manifest: Option<PathBuf>,
        /// The rollback state file (default: $XDG_STATE_HOME/ingot/accepted-versions.json, else
        /// ~/.local/state/ingot/accepted-versions.json).
        #[arg(long, value_name = "FILE")]
        state: Option<PathBuf>,
        /// Accept an image older than the newest one accepted before with this key (the recorded version
        /// stays the newer one).
        #[arg(long)]
        allow_downgrade: bool,
    },
    /// Write an image to a disk or USB stick: verified first, only the blocks it needs, read back after.
    ///
    /// Steps: the target is checked and refused when it is a partition, mounted, the disk the running
    /// system lives on, swap, part of a device-mapper or RAID device, read-only, smaller than the image, or
    /// not a block device (a regular file only with --to-file). The image is verified against its
    /// manifest (with --key: the signature too, and the rollback state as `ingot verify` keeps it). Then:
    /// both GPT locations on the target are zeroed; the image's partitions (up to the end of their content,
    /// and at least their first MiB, so no old file system survives there) and the space around them are
    /// written in 8 MiB direct writes; the target is flushed and every written byte is
    /// read back and compared, each partition against the manifest's sha256; last the backup GPT (moved to
    /// the end of a larger disk) and the primary GPT. Interrupted before that, the disk has no partition
    /// table at all, so it never looks bootable. On first boot the node grows `var` to the end of the disk.
    ///
    /// Examples:
    ///   ingot flash out/worker.raw /dev/sdb --key ingot.pub
    ///   ingot flash out/worker.raw /dev/disk/by-id/usb-SanDisk_Ultra_0401... --key ingot.pub --dry-run
    ///   ingot flash out/minimal.raw disk.img --to-file
    #[command(verbatim_doc_comment)]
    Flash {
        /// The raw disk image (`ingot build` → out/NAME.raw).
        image: PathBuf,
        /// The whole disk to write to (/dev/sdX, /dev/nvmeXnY, /dev/disk/by-id/…), or a file with --to-file.
        target: PathBuf,
        /// The public key the image's manifest must be signed with. Required when the image is signed
        /// (NAME.manifest.json.sig exists); without it an unsigned image is checked against its manifest only.
        #[arg(long)]
        key: Option<PathBuf>,
        /// The manifest; by default the one next to the image.
        #[arg(long)]
        manifest: Option<PathBuf>,
        /// The rollback state file, as for `ingot verify` (used with --key).
        #[arg(long, value_name = "FILE", requires = "key")]
        state: Option<PathBuf>,
        /// Accept an image older than the newest one accepted with this key before.
        #[arg(long, requires = "key")]
        allow_downgrade: bool,
        /// Write into a regular file instead of a block device: a missing file is created with the image's
        /// size (written to a temporary file and renamed when complete); an existing one must be at least as
        /// large and is written in place, like a disk.
        #[arg(long)]
        to_file: bool,
        /// Check the target and the image and print what would be written, without writing anything.
        #[arg(long)]
        dry_run: bool,
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
        /// How the disk is attached: virtio (a virtual machine's disk) or usb (the image as it boots from a
        /// USB stick on a real machine: a removable USB storage device on an xHCI controller, which the
        /// firmware boots from and stage 1 must find after USB enumeration). Either works with --disk-size,
        /// --secure-boot and every --config-channel.
        #[arg(long, value_enum, value_name = "BUS", default_value_t = DiskBusArg::Virtio)]
        disk_bus: DiskBusArg,
        /// Let the guest reboot: QEMU resets the machine and the image boots again in the same run instead of
        /// QEMU exiting. The disk overlay, and so everything the guest wrote, persists across guest reboots
        /// within one run.
        #[arg(long)]
        allow_reboot: bool,
        /// Hand this node configuration (see `ingot node-config`) to the guest. Validated first.
        #[arg(long, value_name = "FILE")]
        node_config: Option<PathBuf>,
        /// The channel --node-config arrives on: fw_cfg (QEMU's fw_cfg item opt/io.ingot/node.toml),
        /// smbios (OEM string io.ingot.node=<base64>), esp (a copy of the image with ingot/node.toml on
        /// its ESP; the image itself stays untouched) or cmdline (the UKI's kernel and initrd booted
        /// directly with ingot.node=<base64> added to its command line; at most 2047 bytes in all).
        #[arg(long, value_name = "CHANNEL", default_value = "fw_cfg", requires = "node_config",
              value_parser = parse_run_channel)]
        config_channel: Channel,
        /// Boot with UEFI Secure Boot on, trusting the key set in this directory (made by `ingot keygen
        /// --secure-boot`): Debian's OVMF_CODE_4M.secboot.fd with SMM, and a variable store with the set's
        /// PK, KEK and db enrolled, made once per key set with virt-fw-vars (`pip install virt-firmware`)
        /// and kept in the cache. Only binaries signed with the db key boot (`ingot build
        /// --secure-boot-key DIR/db`).
        #[arg(long, value_name = "DIR")]
        secure_boot: Option<PathBuf>,
    },
    /// Node configurations: which Kubernetes cluster a node joins and how it names itself there.
    #[command(long_about = NODE_CONFIG_ABOUT)]
    NodeConfig {
        #[command(subcommand)]
        command: NodeConfigCommand,
    },
    /// Write an image in a format provisioning tools take: raw.zst or qcow2.
    ///
    /// raw.zst is the raw image compressed with zstd (level 3, one thread); qcow2 is made by `qemu-img
    /// convert` (from the qemu-utils package) with compressed clusters. Either is written to a temp file
    /// next to the output and renamed over it only when complete, and the same image always exports to
    /// the same bytes (for qcow2, with the same qemu-img). The image's block map (`out/NAME.bmap`, written
    /// by `ingot build`) lists the blocks a copy must write, for raw and raw.zst alike.
    #[command(after_help = EXPORT_AFTER_HELP)]
    Export {
        /// The raw disk image (`ingot build` → out/NAME.raw).
        image: PathBuf,
        /// The output format.
        #[arg(long, value_enum)]
        format: ExportFormat,
        /// Where to write it (default: next to the image, out/NAME.raw → out/NAME.raw.zst or out/NAME.qcow2).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Print nothing but errors (no progress bar, no summary).
        #[arg(long, short)]
        quiet: bool,
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
    /// Check that this machine has the host tools each command needs, and say how to install what is missing.
    ///
    /// Checks the programs and files of each command (mtools and mkfs.erofs for build, QEMU and OVMF for run,
    /// qemu-img, virt-fw-vars, mmdebstrap, …), QEMU's version, whether KVM is usable (without it guests run
    /// under TCG) and, for an unprivileged apt-based build, the user's subordinate IDs. A command that finds
    /// a tool missing fails with the same words. Exits 1 when anything checked is missing.
    #[command(after_help = doctor_after_help())]
    Doctor {
        /// Check only these (default: every command, not the tests).
        #[arg(value_name = "NEED", value_parser = parse_need)]
        needs: Vec<ingot_spec::host_tools::Need>,
        /// Print JSON instead of text (same exit status).
        #[arg(long)]
        json: bool,
    },
}

/// `ingot doctor --help`'s list of needs, from the one table of them.
fn doctor_after_help() -> String {
    let needs: String = ingot_spec::host_tools::Need::ALL
        .iter()
        .map(|n| format!("  {:<12} {}\n", n.name(), n.command()))
        .collect();
    format!(
        "NEED is one of:\n{needs}\nExamples:\n  \
         ingot doctor                 # every command\n  \
         ingot doctor build run       # just what building and booting need\n  \
         ingot doctor --json | jq '.commands[] | select(.ready | not) | .command'\n"
    )
}

fn parse_need(s: &str) -> Result<ingot_spec::host_tools::Need, String> {
    ingot_spec::host_tools::Need::parse(s).ok_or_else(|| {
        let all: Vec<&str> = ingot_spec::host_tools::Need::ALL
            .iter()
            .map(|n| n.name())
            .collect();
        format!("expected one of {}", all.join(", "))
    })
}

const EXPORT_AFTER_HELP: &str = "What each tool takes:\n  \
    bmaptool    NAME.raw or NAME.raw.zst with NAME.bmap: writes the mapped blocks, checks their sha256\n  \
    MAAS        NAME.raw itself, uploaded as a custom image with filetype=ddraw\n  \
    Tinkerbell  image2disk: NAME.raw.zst at IMG_URL with COMPRESSED=true (older releases want .zs)\n  \
    qcow2       virtual machine platforms and image services: libvirt, Proxmox, OpenStack Glance\n\n\
    Examples:\n  \
    ingot export out/minimal.raw --format raw.zst\n  \
    bmaptool copy --bmap out/minimal.bmap out/minimal.raw.zst /dev/sdX\n  \
    maas $PROFILE boot-resources create name=custom/minimal architecture=amd64/generic \\\n      \
    filetype=ddraw content@=out/minimal.raw\n  \
    ingot export out/minimal.raw --format qcow2 --out /srv/images/minimal-0.1.0.qcow2\n";

#[derive(Clone, Copy, ValueEnum)]
enum ExportFormat {
    /// The raw image compressed with zstd (bmaptool, Tinkerbell image2disk).
    #[value(name = "raw.zst")]
    RawZst,
    /// qcow2 with compressed clusters, made by qemu-img (virtual machine platforms).
    Qcow2,
}

const NODE_CONFIG_ABOUT: &str = "Node configurations: which Kubernetes cluster a node joins and how it names \
    itself there.\n\n\
    A node configuration is a small TOML file: the API server endpoint, a bootstrap token and the cluster CA's \
    public key hash (what `kubeadm join` takes), optionally the node's name, labels, taints, kubelet \
    arguments, and network and time settings that replace the image's. It holds the bootstrap token, so it \
    is written with mode 0600 and never printed.\n\n\
    One image serves every node: each node gets its configuration at boot on one of these channels, \
    highest precedence first. The node takes the first channel that holds a configuration; a broken one is \
    rejected (the console names the field) and the node then joins no cluster rather than fall back to a \
    lower channel:\n\
    \x20 1. cmdline  kernel command line ingot.node=<standard base64 of the file>\n\
    \x20 2. fw_cfg   QEMU fw_cfg item opt/io.ingot/node.toml\n\
    \x20 3. smbios   SMBIOS type 11 OEM string io.ingot.node=<standard base64 of the file>\n\
    \x20 4. esp      the file ingot/node.toml on the image's EFI system partition (e.g. on a flashed USB stick)\n\
    \x20 5. baked    /etc/ingot/node.toml in the image (ingot build --node-config FILE)\n\
    `ingot run IMAGE --node-config FILE --config-channel CHANNEL` tries the first four under QEMU. The kernel \
    command line is readable by every process on the node (/proc/cmdline) and printed at boot: prefer the \
    other channels for tokens that matter.";

#[derive(Subcommand)]
enum NodeConfigCommand {
    /// Write a node configuration from the command `kubeadm token create --print-join-command` prints.
    ///
    /// On a control-plane node, `kubeadm token create --print-join-command` creates a bootstrap token
    /// (valid 24 hours by default; `--ttl` changes that) and prints the command a worker would run:
    /// `kubeadm join <endpoint> --token <token> --discovery-token-ca-cert-hash sha256:<hash>`. Pass that
    /// command as one argument, or `-` to read it from standard input. The file is written with mode 0600
    /// (it holds the token) and not over an existing one unless --force is given.
    #[command(after_help = "Examples:\n  \
        ingot node-config from-join-command \"$(ssh cp1 kubeadm token create --print-join-command)\" -o worker.toml\n  \
        ssh cp1 kubeadm token create --print-join-command | ingot node-config from-join-command - --node-name worker-1\n\n\
        Then deliver the file on one of the channels (first that holds one wins):\n  \
        1. cmdline  ingot.node=<base64 -w0 of the file> on the kernel command line\n  \
        2. fw_cfg   qemu -fw_cfg name=opt/io.ingot/node.toml,file=worker.toml (ingot run --node-config)\n  \
        3. smbios   qemu -smbios type=11,value=io.ingot.node=<base64 -w0 of the file>\n  \
        4. esp      ingot/node.toml on the image's EFI system partition\n  \
        5. baked    ingot build --profile NAME --node-config worker.toml")]
    FromJoinCommand {
        /// The `kubeadm join …` command, quoted as one argument, or `-` for standard input.
        command: String,
        /// Where to write the configuration.
        #[arg(long, short, default_value = "node.toml", value_name = "FILE")]
        out: PathBuf,
        /// The node's Kubernetes name (default: the node's host name, or --node-name in the command).
        #[arg(long, value_name = "NAME")]
        node_name: Option<String>,
        /// Replace the file if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Validate a node configuration file and show what it says (the token's id only).
    ///
    /// Errors name the file, the field and the rule it broke. Exits 0 when the file is valid.
    Check { file: PathBuf },
}

fn parse_run_channel(s: &str) -> Result<Channel, String> {
    match s.parse::<Channel>()? {
        Channel::Baked => Err(
            "baked is part of the image: use `ingot build --node-config FILE`; ingot run delivers on fw_cfg, smbios, esp or cmdline"
                .into(),
        ),
        c => Ok(c),
    }
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
        Features: containers, kubelet, kube-proxy, bridge-cni, vxlan, cilium, calico, longhorn, rook, topolvm, ipvs, node-config, verity-root")]
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

#[derive(Clone, Copy, ValueEnum)]
enum DiskBusArg {
    /// A virtio disk (/dev/vda in the guest), as in a virtual machine.
    Virtio,
    /// A removable USB mass-storage device on a USB 3 (xHCI) controller (/dev/sda in the guest).
    Usb,
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

/// Prints a report as pretty JSON or as its text rendering.
fn print_report<T: serde::Serialize>(
    json: bool,
    report: &T,
    render: impl Fn(&T) -> String,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print!("{}", render(report));
    }
    Ok(())
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
            node_config,
            sign_key,
            secure_boot_key,
        } => ingot::commands::build(
            &profile,
            &out,
            ingot::commands::BuildOptions {
                offline,
                quiet,
                rebuild,
                keep_work: keep_work.as_deref(),
                node_config: node_config.as_deref(),
                sign_key: sign_key.as_deref(),
                secure_boot_key: secure_boot_key.as_deref(),
            },
        )
        .map(|r| {
            println!("{}", r.image.display());
            if !quiet {
                eprintln!(
                    "wrote {}, {} and {}",
                    r.image.display(),
                    r.manifest_path.display(),
                    r.bmap_path.display()
                );
            }
        }),
        Command::Keygen {
            out,
            secure_boot: true,
            name,
            force,
        } => (|| -> anyhow::Result<()> {
            let out = out.unwrap_or_else(|| PathBuf::from("secure-boot"));
            let name = name.unwrap_or_else(|| {
                std::path::absolute(&out)
                    .ok()
                    .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                    .unwrap_or_else(|| "owner".into())
            });
            let set = ingot::secure_boot::keygen(&out, &name, force)?;
            for (_, _, files) in &set.keys {
                println!(
                    "{}\n{}\n{}",
                    files.key.display(),
                    files.pem.display(),
                    files.der.display()
                );
            }
            println!("{}", out.join(ingot::secure_boot::OWNER_GUID_FILE).display());
            for (key, subject, _) in &set.keys {
                eprintln!("{key:<4} {subject}");
            }
            eprintln!(
                "owner GUID {}; the .key files are private (mode 0600). Sign images with `ingot build --secure-boot-key {}`",
                set.owner_guid,
                out.join(ingot::secure_boot::SIGNING_KEY).display()
            );
            Ok(())
        })(),
        Command::Keygen { out, .. } => ingot::signing::keygen(&out.unwrap_or_else(|| PathBuf::from("ingot")))
            .map(|(private, public, id)| {
                println!("{}\n{}", private.display(), public.display());
                eprintln!(
                    "key {id}: {} is the private key (mode 0600; keep it offline), {} the public one",
                    private.display(),
                    public.display()
                );
            })
            .map_err(Into::into),
        Command::Verify {
            image,
            key,
            manifest,
            state,
            allow_downgrade,
        } => (|| -> anyhow::Result<()> {
            let public = ingot::signing::load_public_key(&key)?;
            let manifest = manifest.unwrap_or_else(|| ingot::manifest::path_for_image(&image));
            let policy = ingot::rollback::Policy {
                state: state.map_or_else(ingot::rollback::default_state_path, Ok)?,
                allow_downgrade,
            };
            let started = std::time::Instant::now();
            let a = ingot::rollback::verify(&image, &manifest, &public, &policy)?;
            let v = &a.verified;
            let key_id = ingot::signing::key_id(&public);
            println!(
                "{}: verified: signed by key {}, {} partitions and the rest of the image, {} MiB hashed in {:.2} s",
                image.display(),
                key_id,
                v.partitions,
                v.bytes_hashed >> 20,
                started.elapsed().as_secs_f64()
            );
            if v.device_tail > 0 {
                println!(
                    "  the device's last {} MiB, past the image's end, belong to the device and were not checked",
                    v.device_tail >> 20
                );
            }
            match (&a.previous, a.raised) {
                (_, true) => eprintln!(
                    "{} {} recorded as the newest accepted with key {} ({})",
                    a.name,
                    a.version,
                    key_id,
                    policy.state.display()
                ),
                (Some(p), false) if policy.allow_downgrade && *p != a.version => eprintln!(
                    "{} {} accepted as a downgrade; the newest accepted with key {} stays {p}",
                    a.name, a.version, key_id
                ),
                _ => {}
            }
            // Secure Boot signatures are the firmware's to enforce; verify reports them.
            for b in ingot::inspect::boot_signatures(&image)? {
                println!("  {}: {}", b.path, b.signature);
            }
            Ok(())
        })(),
        Command::Run {
            image,
            accel,
            memory,
            cpus,
            expect,
            timeout,
            serial_log,
            disk_size,
            disk_bus,
            allow_reboot,
            node_config,
            config_channel,
            secure_boot,
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
                disk_bus: match disk_bus {
                    DiskBusArg::Virtio => ingot_qemu::DiskBus::Virtio,
                    DiskBusArg::Usb => ingot_qemu::DiskBus::Usb,
                },
                allow_reboot,
                node_config: node_config.map(|f| (f, config_channel)),
                secure_boot,
            })
        }),
        Command::NodeConfig { command } => match command {
            NodeConfigCommand::FromJoinCommand {
                command,
                out,
                node_name,
                force,
            } => ingot::commands::node_config_from_join_command(&command, &out, node_name.as_deref(), force)
                .map(|report| print!("{report}")),
            NodeConfigCommand::Check { file } => {
                ingot::commands::node_config_check(&file).map(|report| print!("{report}"))
            }
        },
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
                // The report says what is missing; only the exit status is left to set.
                incomplete = !r.complete;
                print_report(json, &r, ingot::kconfig::render)
            })
        }
        Command::Flash {
            image,
            target,
            key,
            manifest,
            state,
            allow_downgrade,
            to_file,
            dry_run,
        } => (|| -> anyhow::Result<()> {
            let key = match key {
                Some(k) => Some((
                    ingot::signing::load_public_key(&k)?,
                    ingot::rollback::Policy {
                        state: state.map_or_else(ingot::rollback::default_state_path, Ok)?,
                        allow_downgrade,
                    },
                )),
                None => None,
            };
            let opts = ingot::flash::Options {
                image,
                target,
                manifest,
                key,
                to_file,
                dry_run,
                progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            };
            let r = ingot::flash::flash(&opts)?;
            if !r.dry_run {
                println!(
                    "{}: flashed {} of a {} image in {:.2} s (verify {:.2} s, write {:.2} s, read-back {:.2} s)",
                    opts.target.display(),
                    ingot::flash::target::human(r.bytes),
                    ingot::flash::target::human(r.image_size),
                    r.total_time.as_secs_f64(),
                    r.verify_time.as_secs_f64(),
                    r.write_time.as_secs_f64(),
                    r.read_back_time.as_secs_f64()
                );
                if let Some(Err(why)) = &r.reread {
                    eprintln!(
                        "note: the kernel did not re-read the partition table ({why}); replug the disk or run \
                         `partprobe` to see its partitions"
                    );
                }
            }
            Ok(())
        })(),
        Command::Export {
            image,
            format,
            out,
            quiet,
        } => {
            let format = match format {
                ExportFormat::RawZst => ingot::export::Format::RawZst,
                ExportFormat::Qcow2 => ingot::export::Format::Qcow2,
            };
            let started = std::time::Instant::now();
            ingot::export::export(&image, format, out.as_deref(), !quiet)
                .map(|e| {
                    println!("{}", e.path.display());
                    if !quiet {
                        eprintln!(
                            "wrote {} ({:.1} MiB for a {:.1} MiB image) in {:.2} s",
                            e.path.display(),
                            e.bytes as f64 / 1048576.0,
                            e.image_bytes as f64 / 1048576.0,
                            started.elapsed().as_secs_f64()
                        );
                    }
                })
                .map_err(Into::into)
        }
        Command::Doctor { needs, json } => {
            let needs = if needs.is_empty() {
                ingot::doctor::default_needs()
            } else {
                needs
            };
            let r = ingot::doctor::check(&needs);
            incomplete = !r.ready;
            print_report(json, &r, ingot::doctor::render)
        }
        Command::Inspect { image, json } => {
            ingot::inspect::inspect(&image).and_then(|r| print_report(json, &r, ingot::inspect::render))
        }
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
