#![allow(clippy::unwrap_used, clippy::panic)]

use base64::Engine as _;
use proptest::prelude::*;

use super::*;
use crate::sys::Errno;
use crate::sys::fake::FakeSys;

const TOKEN_SECRET: &str = "0123456789abcdef";
const PIN: &str = "sha256:345959acb2c3b2feb87d281961c893f62a314207ef02599f1cc4a5fb255480b3";

fn toml(name: &str) -> String {
    format!(
        "[cluster]\nendpoint = \"10.0.2.100:6443\"\ntoken = \"abcdef.{TOKEN_SECRET}\"\nca-cert-hashes = [\"{PIN}\"]\n\n[node]\nname = \"{name}\"\n"
    )
}

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// A node whose root is `/dev/vda2`, with the channels' modules in `modules.dep` (dmi-sysfs built in).
fn node() -> FakeSys {
    let sys = crate::storage::tests::node(131_072, true);
    sys.write("/proc/cmdline", "console=ttyS0 panic=-1\n");
    sys.write(
        "/lib/modules/6.1.0-test/modules.dep",
        "kernel/drivers/firmware/qemu_fw_cfg.ko:\n\
         kernel/fs/fat/fat.ko:\n\
         kernel/fs/fat/vfat.ko: kernel/fs/fat/fat.ko\n\
         kernel/fs/nls/nls_cp437.ko:\n\
         kernel/fs/nls/nls_ascii.ko:\n",
    );
    sys.write(
        "/lib/modules/6.1.0-test/modules.builtin",
        "kernel/drivers/firmware/dmi-sysfs.ko\n",
    );
    sys
}

fn fw_cfg_path() -> String {
    format!("{FW_CFG_BY_NAME}/{FW_CFG_NAME}/raw")
}

fn esp_file() -> String {
    format!("{ESP_MOUNT}/{ESP_PATH}")
}

/// Puts a configuration named `worker-<channel>` on every channel.
fn every_channel(sys: &FakeSys) {
    sys.write(
        "/proc/cmdline",
        format!(
            "console=ttyS0 ingot.node={} panic=-1\n",
            b64(&toml("worker-cmdline"))
        ),
    );
    sys.write(&fw_cfg_path(), toml("worker-fw-cfg"));
    sys.write(
        &format!("{DMI_ENTRIES}/11-0/raw"),
        smbios::build(
            0x100,
            &[format!("{SMBIOS_PREFIX}{}", b64(&toml("worker-smbios"))).as_bytes()],
        ),
    );
    sys.write(&esp_file(), toml("worker-esp"));
    sys.write(BAKED_PATH, toml("worker-baked"));
}

fn winner(sys: &FakeSys) -> (Channel, String, Option<String>) {
    match select(sys) {
        Outcome::Valid {
            channel,
            source,
            config,
        } => (channel, source, config.node.name.clone()),
        other => panic!("no valid configuration: {other:?}\n{:#?}", sys.calls()),
    }
}

#[test]
fn the_highest_channel_holding_a_configuration_wins() {
    let sys = node();
    every_channel(&sys);
    let expect = [
        (Channel::Cmdline, "/proc/cmdline ingot.node="),
        (Channel::FwCfg, "opt/io.ingot/node.toml"),
        (Channel::Smbios, "type 11 entry 11-0, string 1"),
        (Channel::Esp, "/dev/vda1 ingot/node.toml"),
        (Channel::Baked, "/etc/ingot/node.toml"),
    ];
    for (channel, source) in expect {
        let (got, got_source, name) = winner(&sys);
        assert_eq!((got, got_source.as_str()), (channel, source));
        assert_eq!(
            name.as_deref(),
            Some(format!("worker-{}", channel.name().replace('_', "-")).as_str())
        );
        // Take this channel's configuration away; the next one down wins.
        match channel {
            Channel::Cmdline => sys.write("/proc/cmdline", "console=ttyS0\n"),
            Channel::FwCfg => std::fs::remove_file(sys.host(fw_cfg_path())).unwrap(),
            Channel::Smbios => sys.write(
                &format!("{DMI_ENTRIES}/11-0/raw"),
                smbios::build(0x100, &[b"other"]),
            ),
            Channel::Esp => std::fs::remove_file(sys.host(esp_file())).unwrap(),
            Channel::Baked => std::fs::remove_file(sys.host(BAKED_PATH)).unwrap(),
        }
    }
    assert!(matches!(select(&sys), Outcome::None));
}

#[test]
fn lower_channels_are_not_even_looked_at() {
    let sys = node();
    every_channel(&sys);
    assert_eq!(winner(&sys).0, Channel::Cmdline);
    assert!(
        sys.calls_matching(&["load", "mount", "mkdir"]).is_empty(),
        "{:#?}",
        sys.calls()
    );
}

#[test]
fn a_malformed_configuration_is_rejected_without_falling_back() {
    let sys = node();
    every_channel(&sys);
    sys.write("/proc/cmdline", "console=ttyS0\n");
    sys.write(
        &fw_cfg_path(),
        toml("worker-fw-cfg").replace(TOKEN_SECRET, "0123456789ABCDEF"),
    );
    let mut cfg = InitConfig::default();
    let outcome = discover(&sys, &mut cfg);
    let Outcome::Rejected { channel, error, .. } = &outcome else {
        panic!("{outcome:?}");
    };
    assert_eq!(*channel, Channel::FwCfg);
    assert!(
        error.starts_with("cluster.token: expected <id>.<secret>"),
        "{error}"
    );
    let console = sys.console_lines();
    assert_eq!(
        console.last().unwrap(),
        &format!("ingot: node config from fw_cfg (opt/io.ingot/node.toml) rejected: {error}")
    );
    assert!(console.iter().all(|l| !l.contains("0123456789")), "{console:#?}");
    // Nothing for the join step, and the lower channels (ESP, baked) were not consulted.
    assert!(sys.calls_matching(&["write-atomic", "mount"]).is_empty());
    assert!(!sys.host(RUN_PATH).exists());
    assert_eq!(cfg, InitConfig::default());
}

#[test]
fn a_configuration_that_is_not_base64_is_rejected_naming_the_byte() {
    let sys = node();
    sys.write(BAKED_PATH, toml("worker-baked"));
    let mut value = b64(&toml("x"));
    value.replace_range(9..10, "%");
    sys.write("/proc/cmdline", format!("console=ttyS0 ingot.node={value}\n"));
    let outcome = select(&sys);
    assert_eq!(
        outcome.line(),
        "node config from cmdline (/proc/cmdline ingot.node=) rejected: is not standard base64: byte 9 is `%`; expected A-Z, a-z, 0-9, + or / (and = only as padding at the end)"
    );
}

#[test]
fn a_valid_configuration_is_left_for_the_join_step_and_its_network_and_time_apply() {
    let sys = node();
    let text = format!(
        "{}\n[network]\ninterfaces = [{{ match = {{ name = \"eth1\" }}, addresses = [\"192.168.10.5/24\"] }}]\n\n[time]\nservers = [\"192.168.10.1\"]\n",
        toml("worker-1")
    );
    sys.write(&fw_cfg_path(), &text);
    let mut cfg = InitConfig::default();
    let outcome = discover(&sys, &mut cfg);
    assert!(matches!(outcome, Outcome::Valid { .. }), "{outcome:?}");
    assert_eq!(
        sys.console_lines().last().unwrap(),
        "ingot: node config from fw_cfg (opt/io.ingot/node.toml): cluster 10.0.2.100:6443, token abcdef.<redacted>, node name worker-1, network from the node config, time servers from the node config"
    );
    assert_eq!(
        sys.calls_matching(&["write-atomic"]),
        ["write-atomic /run/ingot/node.toml 600"]
    );
    let written = std::fs::read(sys.host(RUN_PATH)).unwrap();
    let expected = NodeConfig::parse(text.as_bytes()).unwrap();
    assert_eq!(written, expected.to_toml().as_bytes());
    assert_eq!(NodeConfig::parse(&written).unwrap(), expected);
    assert_eq!(
        cfg.network.interfaces[0].addresses,
        ["192.168.10.5/24"],
        "{cfg:?}"
    );
    assert_eq!(cfg.time.servers, ["192.168.10.1"]);
}

#[test]
fn without_a_node_name_the_line_says_the_host_name_is_used() {
    let sys = node();
    let text = toml("x").replace("\n[node]\nname = \"x\"\n", "");
    sys.write(BAKED_PATH, text);
    let outcome = discover(&sys, &mut InitConfig::default());
    assert_eq!(
        outcome.line(),
        "node config from baked (/etc/ingot/node.toml): cluster 10.0.2.100:6443, token abcdef.<redacted>, node name: host name"
    );
}

#[test]
fn no_configuration_anywhere_says_what_was_tried() {
    let sys = node();
    let outcome = discover(&sys, &mut InitConfig::default());
    assert!(matches!(outcome, Outcome::None));
    assert_eq!(
        sys.console_lines(),
        ["ingot: no node config (tried cmdline, fw_cfg, smbios, esp, baked); not joining a cluster"]
    );
    assert!(sys.calls_matching(&["write-atomic"]).is_empty());
    assert!(!sys.host(RUN_PATH).exists());
}

#[test]
fn the_esp_is_mounted_read_only_for_the_read_and_unmounted() {
    let sys = node();
    sys.write(&esp_file(), toml("worker-esp"));
    assert_eq!(winner(&sys).0, Channel::Esp);
    assert_eq!(
        sys.calls_matching(&["load", "mkdir", "mount", "umount"]),
        [
            "load /lib/modules/6.1.0-test/kernel/drivers/firmware/qemu_fw_cfg.ko",
            "load /lib/modules/6.1.0-test/kernel/fs/fat/fat.ko",
            "load /lib/modules/6.1.0-test/kernel/fs/fat/vfat.ko",
            "load /lib/modules/6.1.0-test/kernel/fs/nls/nls_cp437.ko",
            "load /lib/modules/6.1.0-test/kernel/fs/nls/nls_ascii.ko",
            "mkdir /run/ingot",
            "mkdir /run/ingot/esp",
            "mount /dev/vda1 /run/ingot/esp vfat nodev,noexec,nosuid,rdonly codepage=437,iocharset=ascii",
            "umount /run/ingot/esp",
        ]
    );
}

#[test]
fn a_channel_that_cannot_be_looked_at_is_skipped_with_a_note() {
    let sys = node();
    sys.write(
        "/lib/modules/6.1.0-test/modules.dep",
        "kernel/fs/fat/vfat.ko:\nkernel/fs/nls/nls_cp437.ko:\nkernel/fs/nls/nls_ascii.ko:\n",
    );
    sys.fail("mount /dev/vda1", Errno::NODEV);
    sys.write(BAKED_PATH, toml("worker-baked"));
    sys.write(&esp_file(), toml("worker-esp"));
    let outcome = discover(&sys, &mut InitConfig::default());
    assert_eq!(
        sys.console_lines(),
        [
            "ingot: node config channel fw_cfg skipped: module qemu_fw_cfg is neither in modules.dep nor built in; add it to the profile's kernel modules",
            "ingot: node config channel esp skipped: mounting /dev/vda1 on /run/ingot/esp as vfat: No such device (os error 19)",
            "ingot: node config from baked (/etc/ingot/node.toml): cluster 10.0.2.100:6443, token abcdef.<redacted>, node name worker-baked",
        ]
    );
    assert!(matches!(
        outcome,
        Outcome::Valid {
            channel: Channel::Baked,
            ..
        }
    ));
}

#[test]
fn smbios_finds_the_string_among_others_and_ignores_broken_entries() {
    let sys = node();
    sys.write(&format!("{DMI_ENTRIES}/0-0/raw"), b"\x00\x05\0\0\0\0\0");
    sys.write(&format!("{DMI_ENTRIES}/11-0/raw"), b"\x0b\x05\0\0\x01abc");
    let value = format!("{SMBIOS_PREFIX}{}", b64(&toml("worker-smbios")));
    sys.write(
        &format!("{DMI_ENTRIES}/11-1/raw"),
        smbios::build(9, &[b"vendor=x", value.as_bytes()]),
    );
    let (channel, source, _) = winner(&sys);
    assert_eq!(
        (channel, source.as_str()),
        (Channel::Smbios, "type 11 entry 11-1, string 2")
    );
    assert_eq!(
        sys.console_lines(),
        [
            "ingot: warning /sys/firmware/dmi/entries/11-0/raw its string set does not end with an empty string (two NUL bytes), ignoring this entry"
        ]
    );
}

#[test]
fn an_oversized_configuration_is_rejected_by_its_size() {
    let sys = node();
    sys.write(BAKED_PATH, vec![b'#'; MAX_BYTES + 100]);
    let outcome = select(&sys);
    assert_eq!(
        outcome.line(),
        "node config from baked (/etc/ingot/node.toml) rejected: is 65537 bytes; at most 65536 are accepted"
    );
    let long = "A".repeat(max_encoded_len() + 4);
    assert_eq!(
        decode_base64(&long).unwrap_err(),
        Base64Error::TooLong(long.len())
    );
}

#[test]
fn an_unreadable_channel_is_rejected_not_skipped() {
    let sys = node();
    // A directory where the file should be: reading it fails with EISDIR.
    sys.write(&format!("{}/x", fw_cfg_path()), "");
    sys.write(BAKED_PATH, toml("worker-baked"));
    let outcome = select(&sys);
    assert!(
        outcome.line().starts_with(
            "node config from fw_cfg (opt/io.ingot/node.toml) rejected: reading /sys/firmware/qemu_fw_cfg/by_name/opt/io.ingot/node.toml/raw: "
        ),
        "{}",
        outcome.line()
    );
}

#[test]
fn base64_errors_name_what_is_wrong() {
    assert_eq!(decode_base64("eA==").unwrap(), b"x");
    assert_eq!(decode_base64("eA").unwrap_err(), Base64Error::Padding);
    assert_eq!(decode_base64("eAxyz").unwrap_err(), Base64Error::Length(5));
    assert_eq!(decode_base64("eAxyzABCD").unwrap_err(), Base64Error::Length(9));
    assert_eq!(
        decode_base64("eB==").unwrap_err(),
        Base64Error::InvalidLastByte { offset: 1 }
    );
    assert_eq!(
        decode_base64("eA\x07=").unwrap_err(),
        Base64Error::InvalidByte {
            offset: 2,
            found: "0x07".into()
        }
    );
}

proptest! {
    #[test]
    fn base64_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let encoded = base64::engine::general_purpose::STANDARD.encode(&bytes);
        prop_assert_eq!(decode_base64(&encoded).unwrap(), bytes);
    }

    #[test]
    fn a_byte_outside_the_alphabet_is_named_by_its_offset(bytes in proptest::collection::vec(any::<u8>(), 1..300),
                                                          at in any::<proptest::sample::Index>(),
                                                          bad in any::<u8>().prop_filter("outside the alphabet",
                                                              |b| b.is_ascii() && !b.is_ascii_alphanumeric() && !b"+/=".contains(b))) {
        let mut encoded = base64::engine::general_purpose::STANDARD.encode(&bytes).into_bytes();
        // Before the padding, so the bad byte is the only problem.
        let at = at.index(encoded.iter().filter(|&&b| b != b'=').count());
        encoded[at] = bad;
        let err = decode_base64(std::str::from_utf8(&encoded).unwrap()).unwrap_err();
        prop_assert_eq!(err, Base64Error::InvalidByte { offset: at, found: show_byte(bad) });
    }

    #[test]
    fn arbitrary_values_never_panic(value in "\\PC{0,200}") {
        let _ = decode_base64(&value);
    }
}
