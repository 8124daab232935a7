use proptest::prelude::*;

use super::*;

const TOKEN: &str = "abcdef.0123456789abcdef";
const PIN: &str = "sha256:345959acb2c3b2feb87d281961c893f62a314207ef02599f1cc4a5fb255480b3";

fn config(extra: &str) -> String {
    format!(
        "[cluster]\nendpoint = \"10.0.0.10:6443\"\ntoken = \"{TOKEN}\"\nca-cert-hashes = [\"{PIN}\"]\n{extra}"
    )
}

fn error(text: &str) -> String {
    NodeConfig::parse(text.as_bytes()).unwrap_err().to_string()
}

#[test]
fn a_minimal_config_parses() {
    let c = NodeConfig::parse(config("").as_bytes()).unwrap();
    assert_eq!(c.cluster.endpoint.to_string(), "10.0.0.10:6443");
    assert_eq!(c.cluster.endpoint.url(), "https://10.0.0.10:6443");
    assert_eq!(c.cluster.token.id(), "abcdef");
    assert_eq!(c.cluster.token.secret(), "0123456789abcdef");
    assert_eq!(c.cluster.ca_cert_hashes[0].to_string(), PIN);
    assert_eq!(c.node, Node::default());
}

#[test]
fn node_labels_taints_and_kubelet_args_parse() {
    let c = NodeConfig::parse(
        config(
            "[node]\nname = \"worker-1\"\nlabels = { \"topology.kubernetes.io/zone\" = \"rack-3\" }\n\
             taints = [\"dedicated=gpu:NoSchedule\"]\n[kubelet]\nextra-args = [\"--v=2\"]\n",
        )
        .as_bytes(),
    )
    .unwrap();
    assert_eq!(c.node.name.as_deref(), Some("worker-1"));
    assert_eq!(c.node.labels["topology.kubernetes.io/zone"], "rack-3");
    assert_eq!(c.node.taints, ["dedicated=gpu:NoSchedule"]);
    assert_eq!(c.kubelet.extra_args, ["--v=2"]);
}

#[test]
fn the_token_is_never_formatted() {
    let c = NodeConfig::parse(config("").as_bytes()).unwrap();
    for shown in [format!("{c:?}"), format!("{}", c.cluster.token)] {
        assert!(!shown.contains("0123456789abcdef"), "{shown}");
        assert!(shown.contains("abcdef.<redacted>"), "{shown}");
    }
}

#[test]
fn a_bad_token_names_the_field_but_not_the_value() {
    let text = config("").replace(TOKEN, "abcdef.0123456789ABCDEF");
    let e = error(&text);
    assert!(e.starts_with("cluster.token: expected <id>.<secret>"), "{e}");
    assert!(!e.contains("0123456789"), "{e}");
}

#[test]
fn syntax_errors_give_the_position_without_quoting_the_line() {
    let text = config("").replace(&format!("\"{TOKEN}\""), &format!("\"{TOKEN}"));
    let e = error(&text);
    assert!(e.starts_with("line 3, column "), "{e}");
    assert!(!e.contains("0123456789abcdef"), "{e}");
}

#[test]
fn unknown_fields_are_named() {
    let e = error(&config("[node]\nnmae = \"x\"\n"));
    assert!(e.contains("unknown field `nmae`"), "{e}");
}

#[test]
fn pins_follow_kubeadms_rules() {
    assert_eq!(CaPin::parse(&PIN.to_uppercase()).unwrap().to_string(), PIN);
    assert!(
        CaPin::parse("sha256:abcd")
            .unwrap_err()
            .contains("4 hex digits; expected 64")
    );
    assert!(
        CaPin::parse(&PIN.replace("sha256", "md5"))
            .unwrap_err()
            .contains("unknown hash format `md5`")
    );
    assert!(
        CaPin::parse("sha256:aa:bb")
            .unwrap_err()
            .contains("is not <format>:<hex>")
    );
    assert!(
        CaPin::parse(&PIN.replace('3', "g"))
            .unwrap_err()
            .contains("not hexadecimal")
    );
    let e = error(&config("").replace(PIN, "sha256:00"));
    assert!(
        e.starts_with("cluster.ca-cert-hashes[0]: the sha256 hash has 2 hex digits"),
        "{e}"
    );
}

#[test]
fn pins_are_required_unless_verification_is_skipped_explicitly() {
    let no_pins = config("").replace(&format!("\"{PIN}\""), "");
    assert!(error(&no_pins).starts_with("cluster.ca-cert-hashes: is empty"));
    let skip = no_pins.replace("ca-cert-hashes = []", "unsafe-skip-ca-verification = true");
    assert!(
        NodeConfig::parse(skip.as_bytes())
            .unwrap()
            .cluster
            .unsafe_skip_ca_verification
    );
    let both = config("").replace("[cluster]\n", "[cluster]\nunsafe-skip-ca-verification = true\n");
    assert!(error(&both).starts_with("cluster.unsafe-skip-ca-verification: is true"));
}

#[test]
fn endpoints_must_be_addresses_with_ports() {
    assert_eq!(
        Endpoint::parse("[fd00::1]:6443").unwrap().url(),
        "https://[fd00::1]:6443"
    );
    assert!(Endpoint::parse("10.0.0.1").unwrap_err().contains("has no port"));
    assert!(Endpoint::parse("10.0.0.1:0").unwrap_err().contains("1 to 65535"));
    assert!(
        Endpoint::parse("api.example.com:6443")
            .unwrap_err()
            .contains("is not an IP address")
    );
}

#[test]
fn node_fields_are_validated() {
    assert!(
        error(&config("[node]\nname = \"Worker_1\"\n"))
            .starts_with("node.name: `Worker_1` is not a valid node name")
    );
    assert!(
        error(&config("[node]\ntaints = [\"a=b:Sometimes\"]\n"))
            .starts_with("node.taints[0]: effect `Sometimes`")
    );
    assert!(
        error(&config("[node]\nlabels = { \"a\" = \"-x\" }\n"))
            .starts_with("node.labels.\"a\": `-x` is not a label value")
    );
    assert!(
        error(&config("[kubelet]\nextra-args = [\"v=2\"]\n"))
            .starts_with("kubelet.extra-args[0]: `v=2` is not a flag")
    );
}

#[test]
fn oversized_and_binary_input_is_refused() {
    assert_eq!(
        error(&"#".repeat(MAX_BYTES + 1)),
        "is 65537 bytes; at most 65536 are accepted"
    );
    assert_eq!(
        NodeConfig::parse(&[0xff, 0xfe]).unwrap_err(),
        NodeConfigError::NotUtf8
    );
}

#[test]
fn to_toml_round_trips() {
    let c = NodeConfig::parse(
        config("[node]\nname = \"w\"\ntaints = [\"a:NoExecute\"]\n[time]\nservers = [\"10.0.0.1\"]\n")
            .as_bytes(),
    )
    .unwrap();
    assert_eq!(NodeConfig::parse(c.to_toml().as_bytes()).unwrap(), c);
}

#[test]
fn join_commands_as_kubeadm_prints_them() {
    let printed = format!(
        "kubeadm join 192.168.1.10:6443 --token {TOKEN} \\\n    --discovery-token-ca-cert-hash {PIN} "
    );
    let c = NodeConfig::from_join_command(&printed).unwrap();
    assert_eq!(c.cluster.endpoint.to_string(), "192.168.1.10:6443");
    assert_eq!(c.cluster.token.expose(), TOKEN);
    assert_eq!(c.cluster.ca_cert_hashes.len(), 1);

    let c = NodeConfig::from_join_command(&format!(
        "sudo kubeadm join '10.0.0.1:6443' --token={TOKEN} --discovery-token-ca-cert-hash={PIN} \
         --discovery-token-ca-cert-hash sha256:{} --node-name n1 --cri-socket unix:///run/containerd/containerd.sock",
        "ab".repeat(32)
    ))
    .unwrap();
    assert_eq!(c.cluster.ca_cert_hashes.len(), 2);
    assert_eq!(c.node.name.as_deref(), Some("n1"));
}

#[test]
fn join_command_errors_name_the_flag() {
    let e = NodeConfig::from_join_command(&format!(
        "kubeadm join 10.0.0.1:6443 --token nope --discovery-token-ca-cert-hash {PIN}"
    ))
    .unwrap_err();
    assert!(e.starts_with("--token: expected <id>.<secret>"), "{e}");
    let e =
        NodeConfig::from_join_command(&format!("kubeadm join 10.0.0.1:6443 --token {TOKEN}")).unwrap_err();
    assert!(e.starts_with("--discovery-token-ca-cert-hash: is empty"), "{e}");
    let e = NodeConfig::from_join_command(&format!(
        "kubeadm join 10.0.0.1:6443 --token {TOKEN} --control-plane"
    ))
    .unwrap_err();
    assert!(e.contains("joining the control plane is not supported"), "{e}");
    let e = NodeConfig::from_join_command(&format!("kubeadm join 10.0.0.1:6443 --token {TOKEN} --bogus"))
        .unwrap_err();
    assert!(e.contains("--bogus is not a kubeadm join flag"), "{e}");
    assert!(
        NodeConfig::from_join_command("kubeadm join --token")
            .unwrap_err()
            .contains("--token needs a value")
    );
    assert!(
        NodeConfig::from_join_command("kubeadm join 'x")
            .unwrap_err()
            .contains("not closed")
    );
}

#[test]
fn channels_parse_from_their_names() {
    for c in Channel::ALL {
        assert_eq!(c.name().parse::<Channel>().unwrap(), c);
    }
    assert!(
        "usb"
            .parse::<Channel>()
            .unwrap_err()
            .contains("expected one of cmdline, fw_cfg")
    );
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = NodeConfig::parse(&bytes);
    }

    #[test]
    fn errors_never_contain_the_secret(secret in "[a-z0-9]{16}", cut in 0usize..200, junk in "[ -~]{0,8}") {
        let mut text = config("").replace("0123456789abcdef", &secret);
        let at = cut.min(text.len());
        text.insert_str(at, &junk);
        if let Err(e) = NodeConfig::parse(text.as_bytes()) {
            let shown = e.to_string();
            prop_assert!(!shown.contains(&secret), "{}", shown);
        }
    }

    #[test]
    fn join_command_splitting_never_panics(s in "[ -~\\n]{0,200}") {
        let _ = NodeConfig::from_join_command(&s);
    }
}
