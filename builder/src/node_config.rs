//! Node configuration files on the build host: `ingot node-config from-join-command` writes them,
//! `ingot node-config check` validates them, `ingot build --node-config` bakes one into the root and
//! `ingot run --node-config` hands one to the VM ([`crate::deliver`]). The schema and its validation are
//! [`ingot_spec::node_config`]; this module adds files, summaries and the words around them.
//!
//! A node configuration holds the cluster's bootstrap token: files are written with mode 0600, and
//! nothing here prints the token (summaries show its id and `<redacted>`).

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use ingot_spec::node_config::{Channel, MAX_BYTES, NodeConfig, NodeConfigError};

#[derive(Debug, thiserror::Error)]
pub enum NodeConfigFileError {
    #[error("reading the node configuration {}", .0.display())]
    Read(PathBuf, #[source] std::io::Error),
    /// The file's name, then the field and the rule it broke.
    #[error("{}: {error}", path.display())]
    Invalid { path: PathBuf, error: NodeConfigError },
    #[error("the join command: {0}")]
    JoinCommand(String),
    #[error("--node-name: {0}")]
    NodeName(String),
    #[error("{} already exists; pass --force to replace it", .0.display())]
    Exists(PathBuf),
    #[error("writing {}", .0.display())]
    Write(PathBuf, #[source] std::io::Error),
}

type Result<T> = std::result::Result<T, NodeConfigFileError>;

/// A validated configuration and the bytes it was read from (what the channels deliver).
#[derive(Debug, Clone)]
pub struct NodeConfigFile {
    pub path: PathBuf,
    pub bytes: Vec<u8>,
    pub config: NodeConfig,
}

/// Reads and validates a node configuration file. Errors name the file, then the field and the rule.
pub fn load(path: &Path) -> Result<NodeConfigFile> {
    let read = |e| NodeConfigFileError::Read(path.to_path_buf(), e);
    let mut bytes = Vec::new();
    // One byte past the limit is enough to reject an oversized file by its size.
    std::fs::File::open(path)
        .map_err(read)?
        .take(MAX_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(read)?;
    let config = NodeConfig::parse(&bytes).map_err(|error| NodeConfigFileError::Invalid {
        path: path.to_path_buf(),
        error,
    })?;
    Ok(NodeConfigFile {
        path: path.to_path_buf(),
        bytes,
        config,
    })
}

/// A configuration from the command `kubeadm token create --print-join-command` prints, with the node
/// name replaced when `node_name` is given.
pub fn from_join_command(command: &str, node_name: Option<&str>) -> Result<NodeConfig> {
    let mut config = NodeConfig::from_join_command(command).map_err(NodeConfigFileError::JoinCommand)?;
    if let Some(name) = node_name {
        config.node.name = Some(name.to_owned());
        // Validate the name by the schema's rules.
        config = NodeConfig::parse(config.to_toml().as_bytes()).map_err(|e| match e {
            NodeConfigError::Field { reason, .. } => NodeConfigFileError::NodeName(reason),
            other => NodeConfigFileError::NodeName(other.to_string()),
        })?;
    }
    Ok(config)
}

/// Writes `config` to `path` with mode 0600: a temp file in the same directory, fsync, rename, fsync of
/// the directory. An existing file is replaced only with `force`.
pub fn write(path: &Path, config: &NodeConfig, force: bool) -> Result<()> {
    let err = |e| NodeConfigFileError::Write(path.to_path_buf(), e);
    if !force && path.exists() {
        return Err(NodeConfigFileError::Exists(path.to_path_buf()));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    // tempfile creates the file with mode 0600.
    let mut tmp = tempfile::Builder::new()
        .prefix(".node-config-")
        .tempfile_in(dir)
        .map_err(err)?;
    tmp.write_all(config.to_toml().as_bytes()).map_err(err)?;
    tmp.as_file().sync_all().map_err(err)?;
    if force {
        tmp.persist(path).map_err(|e| err(e.error))?;
    } else {
        // Refuses to replace a file that appeared since the check above.
        tmp.persist_noclobber(path).map_err(|e| {
            if e.error.kind() == std::io::ErrorKind::AlreadyExists {
                NodeConfigFileError::Exists(path.to_path_buf())
            } else {
                err(e.error)
            }
        })?;
    }
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
    Ok(())
}

/// What a configuration says, without the token's secret half.
pub fn summary(config: &NodeConfig) -> String {
    let c = &config.cluster;
    let mut s = format!("  cluster    {}\n  token      {}\n", c.endpoint, c.token);
    if c.unsafe_skip_ca_verification {
        s.push_str("  CA         not verified (unsafe-skip-ca-verification)\n");
    }
    for pin in &c.ca_cert_hashes {
        s.push_str(&format!("  CA pin     {pin}\n"));
    }
    match &config.node.name {
        Some(n) => s.push_str(&format!("  node name  {n}\n")),
        None => s.push_str("  node name  the node's host name\n"),
    }
    for (k, v) in &config.node.labels {
        s.push_str(&format!("  label      {k}={v}\n"));
    }
    for t in &config.node.taints {
        s.push_str(&format!("  taint      {t}\n"));
    }
    if !config.kubelet.extra_args.is_empty() {
        s.push_str(&format!("  kubelet    {}\n", config.kubelet.extra_args.join(" ")));
    }
    if config.network.is_some() {
        s.push_str("  network    replaces the image's [network]\n");
    }
    if config.time.is_some() {
        s.push_str("  time       replaces the image's time servers\n");
    }
    s
}

/// The channels, highest precedence first, and how to use each: for `--help` and the next steps.
pub fn channels_help(file: &str) -> String {
    let how = |c: Channel| match c {
        Channel::Cmdline => format!(
            "kernel command line ingot.node=<base64 of the file>; under QEMU: ingot run IMAGE --node-config {file} --config-channel cmdline"
        ),
        Channel::FwCfg => format!(
            "QEMU fw_cfg item opt/io.ingot/node.toml: ingot run IMAGE --node-config {file} (or qemu -fw_cfg name=opt/io.ingot/node.toml,file={file})"
        ),
        Channel::Smbios => format!(
            "SMBIOS OEM string io.ingot.node=<base64>: ingot run IMAGE --node-config {file} --config-channel smbios (or a hypervisor's OEM strings)"
        ),
        Channel::Esp => format!(
            "the file ingot/node.toml on the image's EFI system partition: copy {file} there after flashing (mcopy, or mount the FAT partition)"
        ),
        Channel::Baked => {
            format!("/etc/ingot/node.toml in the image: ingot build --profile NAME --node-config {file}")
        }
    };
    Channel::ALL
        .iter()
        .enumerate()
        .map(|(i, c)| format!("  {}. {:<8} {}\n", i + 1, c.name(), how(*c)))
        .collect()
}

/// What `ingot node-config from-join-command` prints after writing `path`.
pub fn written_report(path: &Path, config: &NodeConfig) -> String {
    let file = path.display().to_string();
    format!(
        "wrote {file} (mode 0600: it holds the bootstrap token, keep it secret)\n{}\n\
         Next: give it to the node on one of these channels. The node reads the first that holds a \
         configuration, in this order, and rejects a broken one without trying the others:\n{}",
        summary(config),
        channels_help(&file)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    const JOIN: &str = "kubeadm join 10.0.0.1:6443 --token abcdef.0123456789abcdef \\\n    --discovery-token-ca-cert-hash sha256:345959acb2c3b2feb87d281961c893f62a314207ef02599f1cc4a5fb255480b3";

    #[test]
    fn writes_mode_0600_and_refuses_to_overwrite_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        let config = from_join_command(JOIN, Some("worker-1")).unwrap();
        write(&path, &config, false).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load(&path).unwrap().config, config);

        let other = from_join_command(JOIN, Some("worker-2")).unwrap();
        let err = write(&path, &other, false).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{} already exists; pass --force to replace it", path.display())
        );
        assert_eq!(load(&path).unwrap().config.node.name.as_deref(), Some("worker-1"));
        write(&path, &other, true).unwrap();
        assert_eq!(load(&path).unwrap().config.node.name.as_deref(), Some("worker-2"));
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "no temp files left behind");
    }

    #[test]
    fn a_bad_node_name_is_named_as_the_option() {
        let err = from_join_command(JOIN, Some("Worker_1")).unwrap_err().to_string();
        assert!(
            err.starts_with("--node-name: `Worker_1` is not a valid node name"),
            "{err}"
        );
    }

    #[test]
    fn errors_name_the_file_and_field_and_the_summary_hides_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(
            &path,
            "[cluster]\nendpoint = \"10.0.0.1\"\ntoken = \"abcdef.0123456789abcdef\"\nca-cert-hashes = []\n",
        )
        .unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!(
                "{}: cluster.endpoint: `10.0.0.1` has no port",
                path.display()
            )),
            "{err}"
        );
        let config = from_join_command(JOIN, None).unwrap();
        let report = written_report(Path::new("node.toml"), &config);
        assert!(!report.contains("0123456789abcdef"), "{report}");
        assert!(report.contains("token      abcdef.<redacted>"), "{report}");
        assert!(report.contains("node name  the node's host name"), "{report}");
        let order: Vec<usize> = ["1. cmdline", "2. fw_cfg", "3. smbios", "4. esp", "5. baked"]
            .iter()
            .map(|c| report.find(c).unwrap_or_else(|| panic!("{c} in {report}")))
            .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{report}");
    }
}
