//! The two kubeconfigs of a join: the one cluster-info carries (read) and the kubelet's bootstrap
//! kubeconfig (written).
//!
//! cluster-info's kubeconfig is YAML as Go's `sigs.k8s.io/yaml` writes it: one cluster, usually unnamed,
//! with `server` and `certificate-authority-data` (base64 of a PEM bundle). It is parsed with `saphyr`, a
//! maintained pure-Rust YAML 1.2 loader: no C code, no serde layer. Only signed content reaches this
//! parser in discovery, but it is still treated as untrusted bytes: a first pass over the parser's events
//! refuses nesting deeper than [`MAX_DEPTH`] (the loader and the tree's destructor recurse, and a few
//! kilobytes of `[` would exhaust the stack) and anchors and aliases, which no kubeconfig writer produces
//! and which are the way to make a small document expand into a huge tree.
//!
//! The cluster is picked as client-go's `GetClusterFromKubeConfig` picks it for kubeadm: the unnamed
//! cluster if there is one, else the current context's cluster; when neither exists but there is
//! exactly one cluster, that one.
//!
//! The bootstrap kubeconfig is written as JSON (YAML's subset, which the kubelet reads as well), with the
//! names kubeadm's `bootstrap-kubelet.conf` uses.

use std::borrow::Cow;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ingot_spec::node_config::BootstrapToken;
use saphyr::{LoadableYamlNode, Scalar, Yaml};
use saphyr_parser::Event;

/// kubeadm's names in `bootstrap-kubelet.conf`.
pub const BOOTSTRAP_CLUSTER: &str = "kubernetes";
pub const BOOTSTRAP_USER: &str = "tls-bootstrap-token-user";
pub const BOOTSTRAP_CONTEXT: &str = "tls-bootstrap-token-user@kubernetes";

/// Deepest nesting of collections accepted; a kubeconfig needs 4.
pub const MAX_DEPTH: usize = 32;

/// What discovery needs from cluster-info's kubeconfig.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterInfo {
    /// The API server URL the cluster advertises (`clusters[].cluster.server`).
    pub server: String,
    /// `certificate-authority-data`, base64-decoded: a PEM bundle (empty if the field is absent).
    pub ca_pem: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KubeconfigError {
    #[error("is not YAML: {0}")]
    Yaml(String),
    #[error("nests collections deeper than {MAX_DEPTH} levels; a kubeconfig needs 4")]
    TooDeep,
    #[error("uses YAML anchors or aliases, which kubeconfigs do not")]
    Alias,
    #[error("holds {0} YAML documents; expected one")]
    Documents(usize),
    #[error("is not a mapping at the top; expected a kubeconfig (apiVersion: v1, kind: Config)")]
    NotMapping,
    #[error("has no usable cluster: expected an unnamed cluster, the current context's or a single one")]
    NoCluster,
    #[error("{0} is not a string")]
    NotString(&'static str),
    #[error("{0} is not a list")]
    NotList(&'static str),
    #[error("the cluster has no server URL")]
    NoServer,
    #[error("the cluster's certificate-authority-data is not base64")]
    CaBase64,
}

/// Reads the cluster's server and CA from a kubeconfig.
pub fn parse_cluster_info(text: &str) -> Result<ClusterInfo, KubeconfigError> {
    check_shape(text)?;
    // The same parser input type as the shape check, so the scanner is compiled once.
    let mut docs = Yaml::load_from_parser(&mut saphyr_parser::Parser::new_from_str(text))
        .map_err(|e| KubeconfigError::Yaml(e.to_string()))?;
    if docs.len() != 1 {
        return Err(KubeconfigError::Documents(docs.len()));
    }
    let doc = docs.remove(0);
    if !doc.is_mapping() {
        return Err(KubeconfigError::NotMapping);
    }
    let cluster = pick_cluster(&doc)?;
    let server = match cluster.as_mapping_get("server") {
        None => return Err(KubeconfigError::NoServer),
        Some(v) => text_of(v).ok_or(KubeconfigError::NotString("server"))?,
    };
    if server.is_empty() {
        return Err(KubeconfigError::NoServer);
    }
    let ca_pem = match cluster.as_mapping_get("certificate-authority-data") {
        None => Vec::new(),
        Some(v) => {
            let b64 = text_of(v).ok_or(KubeconfigError::NotString("certificate-authority-data"))?;
            // Go's encoding/json reads []byte as padded standard base64, skipping line breaks.
            let compact: String = b64.chars().filter(|c| *c != '\n' && *c != '\r').collect();
            STANDARD
                .decode(compact.as_bytes())
                .map_err(|_| KubeconfigError::CaBase64)?
        }
    };
    Ok(ClusterInfo {
        server: server.into_owned(),
        ca_pem,
    })
}

/// Refuses deep nesting and anchors/aliases from the event stream, before any tree is built.
fn check_shape(text: &str) -> Result<(), KubeconfigError> {
    let mut depth = 0usize;
    for event in saphyr_parser::Parser::new_from_str(text) {
        let (event, _) = event.map_err(|e| KubeconfigError::Yaml(e.to_string()))?;
        match event {
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                if anchor != 0 {
                    return Err(KubeconfigError::Alias);
                }
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(KubeconfigError::TooDeep);
                }
            }
            Event::SequenceEnd | Event::MappingEnd => depth = depth.saturating_sub(1),
            Event::Scalar(_, _, anchor, _) if anchor != 0 => return Err(KubeconfigError::Alias),
            Event::Alias(_) => return Err(KubeconfigError::Alias),
            _ => {}
        }
    }
    Ok(())
}

/// The `cluster:` mapping discovery uses.
fn pick_cluster<'a>(doc: &'a Yaml<'a>) -> Result<&'a Yaml<'a>, KubeconfigError> {
    let entries = named_entries(doc, "clusters", "cluster")?;
    if let Some((_, c)) = entries.iter().find(|(name, _)| name.is_empty()) {
        return Ok(c);
    }
    let current = match doc.as_mapping_get("current-context") {
        Some(v) => text_of(v).ok_or(KubeconfigError::NotString("current-context"))?,
        None => Cow::Borrowed(""),
    };
    let contexts = named_entries(doc, "contexts", "context")?;
    let context_cluster = contexts
        .iter()
        .find(|(name, _)| *name == current)
        .and_then(|(_, ctx)| ctx.as_mapping_get("cluster"))
        .and_then(text_of);
    if let Some(wanted) = context_cluster {
        return entries
            .iter()
            .find(|(name, _)| *name == wanted)
            .map(|(_, c)| *c)
            .ok_or(KubeconfigError::NoCluster);
    }
    match entries.as_slice() {
        [(_, only)] => Ok(only),
        _ => Err(KubeconfigError::NoCluster),
    }
}

/// `key: [{name: …, <inner>: {…}}, …]` as (name, inner mapping); a missing or null list is empty.
fn named_entries<'a>(
    doc: &'a Yaml<'a>,
    key: &'static str,
    inner: &str,
) -> Result<Vec<(Cow<'a, str>, &'a Yaml<'a>)>, KubeconfigError> {
    let list = match doc.as_mapping_get(key) {
        None => return Ok(Vec::new()),
        Some(v) if v.is_null() => return Ok(Vec::new()),
        Some(v) => v.as_vec().ok_or(KubeconfigError::NotList(key))?,
    };
    let mut out = Vec::new();
    for entry in list {
        let name = match entry.as_mapping_get("name") {
            None => Cow::Borrowed(""),
            Some(v) => text_of(v).ok_or(KubeconfigError::NotString("a name"))?,
        };
        if let Some(value) = entry.as_mapping_get(inner).filter(|v| v.is_mapping()) {
            out.push((name, value));
        }
    }
    Ok(out)
}

/// A string scalar's text; null reads as empty, as Go reads it into a string field.
fn text_of<'a>(node: &'a Yaml<'a>) -> Option<Cow<'a, str>> {
    match node {
        Yaml::Value(Scalar::String(s)) => Some(Cow::Borrowed(s.as_ref())),
        Yaml::Value(Scalar::Null) => Some(Cow::Borrowed("")),
        Yaml::Representation(s, _, _) => Some(Cow::Borrowed(s.as_ref())),
        Yaml::Tagged(_, inner) => text_of(inner),
        _ => None,
    }
}

/// The kubelet's `--bootstrap-kubeconfig`: the verified CA, the server and the bootstrap token, with
/// kubeadm's cluster, user and context names. JSON, which the kubelet reads like YAML.
///
/// The result holds the whole token: write it with [`crate::files::write_private`] and wipe it with
/// [`crate::files::wipe`] once the kubelet has its certificate.
pub fn bootstrap_kubeconfig(server: &str, ca_pem: &[u8], token: &BootstrapToken) -> String {
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": BOOTSTRAP_CLUSTER,
            "cluster": {
                "server": server,
                "certificate-authority-data": STANDARD.encode(ca_pem),
            },
        }],
        "contexts": [{
            "name": BOOTSTRAP_CONTEXT,
            "context": { "cluster": BOOTSTRAP_CLUSTER, "user": BOOTSTRAP_USER },
        }],
        "current-context": BOOTSTRAP_CONTEXT,
        "preferences": {},
        "users": [{
            "name": BOOTSTRAP_USER,
            "user": { "token": token.expose() },
        }],
    });
    format!("{config:#}\n")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// cluster-info's kubeconfig as kubeadm writes it (`clientcmd.Write` of a one-cluster config).
    const CLUSTER_INFO: &str = "apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: aGVsbG8K
    server: https://10.0.0.10:6443
  name: \"\"
contexts: null
current-context: \"\"
kind: Config
preferences: {}
users: null
";

    #[test]
    fn reads_kubeadm_cluster_info() {
        let info = parse_cluster_info(CLUSTER_INFO).unwrap();
        assert_eq!(info.server, "https://10.0.0.10:6443");
        assert_eq!(info.ca_pem, b"hello\n");
    }

    #[test]
    fn unnamed_cluster_wins_then_current_context() {
        let two = "clusters:
- name: other
  cluster: {server: https://10.9.9.9:6443}
- cluster: {server: https://10.0.0.10:6443}
";
        assert_eq!(parse_cluster_info(two).unwrap().server, "https://10.0.0.10:6443");
        let by_context = "clusters:
- name: a
  cluster: {server: https://10.0.0.1:6443}
- name: b
  cluster: {server: https://10.0.0.2:6443}
contexts:
- name: ctx
  context: {cluster: b, user: u}
current-context: ctx
";
        assert_eq!(
            parse_cluster_info(by_context).unwrap().server,
            "https://10.0.0.2:6443"
        );
        let ambiguous = by_context.replace("current-context: ctx", "current-context: nope");
        assert_eq!(parse_cluster_info(&ambiguous), Err(KubeconfigError::NoCluster));
    }

    #[test]
    fn reads_json_too() {
        let json = r#"{"apiVersion":"v1","kind":"Config","clusters":[{"name":"","cluster":{"server":"https://[fd00::1]:6443","certificate-authority-data":"aGVsbG8K"}}]}"#;
        let info = parse_cluster_info(json).unwrap();
        assert_eq!(info.server, "https://[fd00::1]:6443");
    }

    #[test]
    fn missing_ca_is_empty_not_an_error_here() {
        let info = parse_cluster_info("clusters:\n- cluster: {server: https://10.0.0.1:6443}\n").unwrap();
        assert!(info.ca_pem.is_empty());
    }

    #[test]
    fn bad_input_gives_clear_errors() {
        assert!(matches!(
            parse_cluster_info("a: [b"),
            Err(KubeconfigError::Yaml(_))
        ));
        assert_eq!(parse_cluster_info(""), Err(KubeconfigError::Documents(0)));
        assert_eq!(
            parse_cluster_info("a: 1\n---\nb: 2\n"),
            Err(KubeconfigError::Documents(2))
        );
        assert_eq!(parse_cluster_info("- 1\n"), Err(KubeconfigError::NotMapping));
        assert_eq!(
            parse_cluster_info("kind: Config\n"),
            Err(KubeconfigError::NoCluster)
        );
        assert_eq!(
            parse_cluster_info("clusters:\n- cluster: {certificate-authority-data: aGVsbG8K}\n"),
            Err(KubeconfigError::NoServer)
        );
        assert_eq!(
            parse_cluster_info("clusters:\n- cluster: {server: [1]}\n"),
            Err(KubeconfigError::NotString("server"))
        );
        assert_eq!(
            parse_cluster_info(
                "clusters:\n- cluster: {server: https://1.2.3.4:1, certificate-authority-data: '!!'}\n"
            ),
            Err(KubeconfigError::CaBase64)
        );
        assert!(matches!(
            parse_cluster_info("clusters:\n- cluster: {server: a}\n  cluster: {server: b}\n"),
            Err(KubeconfigError::Yaml(_))
        ));
    }

    #[test]
    fn alias_bombs_are_refused() {
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        let mut prev = 'a';
        for name in ['b', 'c', 'd', 'e', 'f', 'g', 'h', 'i'] {
            bomb.push_str(&format!(
                "{name}: &{name} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
            ));
            prev = name;
        }
        assert_eq!(parse_cluster_info(&bomb), Err(KubeconfigError::Alias));
        let anchored = CLUSTER_INFO.replace("server:", "server: &s");
        assert_eq!(parse_cluster_info(&anchored), Err(KubeconfigError::Alias));
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        for deep in [
            format!("clusters: {}{}\n", "[".repeat(100_000), "]".repeat(100_000)),
            format!("clusters: {}\n", "{a: ".repeat(100_000)),
            format!("clusters:\n{}x\n", "- ".repeat(100_000)),
        ] {
            // The scanner has its own, higher limit for flow collections; either refusal will do.
            let result = parse_cluster_info(&deep);
            assert!(
                matches!(result, Err(KubeconfigError::TooDeep | KubeconfigError::Yaml(_))),
                "{result:?}"
            );
        }
        let nested = format!("a: {}1{}\n", "[".repeat(MAX_DEPTH - 1), "]".repeat(MAX_DEPTH - 1));
        assert_eq!(parse_cluster_info(&nested), Err(KubeconfigError::NoCluster));
        let too_deep = format!("a: {}1{}\n", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert_eq!(parse_cluster_info(&too_deep), Err(KubeconfigError::TooDeep));
        let block = format!("clusters:\n{}x\n", "- ".repeat(MAX_DEPTH));
        assert_eq!(parse_cluster_info(&block), Err(KubeconfigError::TooDeep));
    }

    #[test]
    fn bootstrap_kubeconfig_reads_back_with_kubeadm_names() {
        let token = BootstrapToken::parse("abcdef.0123456789abcdef").unwrap();
        let text = bootstrap_kubeconfig("https://10.0.0.10:6443", b"-----BEGIN\n", &token);
        let info = parse_cluster_info(&text).unwrap();
        assert_eq!(info.server, "https://10.0.0.10:6443");
        assert_eq!(info.ca_pem, b"-----BEGIN\n");
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["current-context"], "tls-bootstrap-token-user@kubernetes");
        assert_eq!(json["contexts"][0]["context"]["cluster"], "kubernetes");
        assert_eq!(json["contexts"][0]["context"]["user"], "tls-bootstrap-token-user");
        assert_eq!(json["clusters"][0]["name"], "kubernetes");
        assert_eq!(json["users"][0]["name"], "tls-bootstrap-token-user");
        assert_eq!(json["users"][0]["user"]["token"], "abcdef.0123456789abcdef");
    }

    #[test]
    fn server_text_is_escaped_not_interpreted() {
        let token = BootstrapToken::parse("abcdef.0123456789abcdef").unwrap();
        let text = bootstrap_kubeconfig("https://x\"}, \"users\": [", b"", &token);
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            json["clusters"][0]["cluster"]["server"],
            "https://x\"}, \"users\": ["
        );
    }

    proptest! {
        #[test]
        fn random_text_never_panics(text in "\\PC{0,512}") {
            let _ = parse_cluster_info(&text);
        }

        #[test]
        fn yamlish_text_never_panics(text in "[-:\\[\\]{}&*!|>'\"#%@` \n\ta-z0-9]{0,512}") {
            let _ = parse_cluster_info(&text);
        }

        #[test]
        fn mutated_cluster_info_never_panics(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<char>()), 1..8)
        ) {
            let mut chars: Vec<char> = CLUSTER_INFO.chars().collect();
            for (i, c) in edits {
                let i = i.index(chars.len());
                chars[i] = c;
            }
            let text: String = chars.into_iter().collect();
            let _ = parse_cluster_info(&text);
        }
    }
}
