//! Whether the API server sees this node as Ready, asked with the kubelet's own client certificate.
//!
//! After the TLS bootstrap the kubelet holds `system:node:<name>` credentials, which may read their own
//! Node object; the node's `Ready` condition is what `kubectl get nodes` shows.

use serde::Deserialize;

use crate::https::{self, ClientIdentity, HttpError, HttpOptions, Trust};
use crate::pin::{self, PinError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeReadiness {
    /// The `Ready` condition is `True`.
    Ready,
    /// The node exists but is not Ready; `status` is the condition's (`False`, `Unknown`), or `Unknown`
    /// when the kubelet has not reported one yet.
    NotReady {
        status: String,
        reason: String,
        message: String,
    },
    /// The API server has no Node of that name (the kubelet has not registered it yet).
    NotRegistered,
}

#[derive(Debug, thiserror::Error)]
pub enum NodeStatusError {
    #[error(
        "node name {0:?} is not a DNS subdomain; expected at most 253 characters of a-z, 0-9, '-' and '.'"
    )]
    Name(String),
    #[error("the cluster CA")]
    Ca(#[source] PinError),
    #[error("the kubelet's client certificate")]
    Identity(#[source] HttpError),
    #[error("could not read node {name} from {server}")]
    Http {
        name: String,
        server: String,
        #[source]
        source: HttpError,
    },
    #[error("the API server's answer for node {name} is not a Node in JSON")]
    Malformed {
        name: String,
        #[source]
        source: serde_json::Error,
    },
}

#[derive(Deserialize)]
struct Node {
    #[serde(default)]
    status: NodeStatus,
}

#[derive(Deserialize, Default)]
struct NodeStatus {
    #[serde(default)]
    conditions: Vec<Condition>,
}

#[derive(Deserialize)]
struct Condition {
    #[serde(rename = "type")]
    kind: String,
    status: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    message: String,
}

/// GETs `/api/v1/nodes/<node_name>` from `server` (`https://<ip>:<port>`), verified against `ca_pem`,
/// presenting the certificate and key in `client_pem` (one PEM file, as the kubelet writes
/// `kubelet-client-current.pem`).
pub fn node_ready(
    server: &str,
    ca_pem: &[u8],
    client_pem: &[u8],
    node_name: &str,
    opts: &HttpOptions,
) -> Result<NodeReadiness, NodeStatusError> {
    if !is_dns_subdomain(node_name) {
        return Err(NodeStatusError::Name(node_name.to_string()));
    }
    let ca = pin::parse_ca_bundle(ca_pem).map_err(NodeStatusError::Ca)?;
    let identity = ClientIdentity::from_pem(client_pem).map_err(NodeStatusError::Identity)?;
    let url = format!("{}/api/v1/nodes/{node_name}", server.trim_end_matches('/'));
    let body = match https::get(
        &url,
        Trust::Client {
            ca: &ca,
            identity: &identity,
        },
        opts,
    ) {
        Ok(body) => body,
        Err(HttpError::Status { code: 404, .. }) => return Ok(NodeReadiness::NotRegistered),
        Err(source) => {
            return Err(NodeStatusError::Http {
                name: node_name.to_string(),
                server: server.to_string(),
                source,
            });
        }
    };
    readiness(&body).map_err(|source| NodeStatusError::Malformed {
        name: node_name.to_string(),
        source,
    })
}

fn readiness(body: &[u8]) -> Result<NodeReadiness, serde_json::Error> {
    let node: Node = serde_json::from_slice(body)?;
    let Some(ready) = node.status.conditions.into_iter().find(|c| c.kind == "Ready") else {
        return Ok(NodeReadiness::NotReady {
            status: "Unknown".to_string(),
            reason: String::new(),
            message: "the kubelet has not reported a Ready condition yet".to_string(),
        });
    };
    if ready.status == "True" {
        return Ok(NodeReadiness::Ready);
    }
    Ok(NodeReadiness::NotReady {
        status: ready.status,
        reason: ready.reason,
        message: ready.message,
    })
}

/// RFC 1123 subdomain, the rule for Node names; keeps the name a single path segment.
fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ready_condition_decides() {
        let ready = br#"{"kind":"Node","status":{"conditions":[
            {"type":"MemoryPressure","status":"False","reason":"KubeletHasSufficientMemory"},
            {"type":"Ready","status":"True","reason":"KubeletReady","message":"kubelet is posting ready status"}]}}"#;
        assert_eq!(readiness(ready).unwrap(), NodeReadiness::Ready);
        let not_ready = br#"{"status":{"conditions":[{"type":"Ready","status":"False","reason":"KubeletNotReady","message":"container runtime network not ready"}]}}"#;
        assert_eq!(
            readiness(not_ready).unwrap(),
            NodeReadiness::NotReady {
                status: "False".to_string(),
                reason: "KubeletNotReady".to_string(),
                message: "container runtime network not ready".to_string(),
            }
        );
        assert!(matches!(
            readiness(br#"{"metadata":{"name":"n"}}"#).unwrap(),
            NodeReadiness::NotReady { status, .. } if status == "Unknown"
        ));
        assert!(readiness(b"\"node\"").is_err());
        assert!(readiness(br#"{"status":{"conditions":[{"type":"Ready"}]}}"#).is_err());
    }

    #[test]
    fn node_names_stay_one_path_segment() {
        assert!(is_dns_subdomain("worker-1"));
        assert!(is_dns_subdomain("worker-1.rack3"));
        for bad in [
            "",
            "Worker",
            "a/b",
            "..",
            "a..b",
            "-a",
            "a-",
            "a?x",
            &"a".repeat(254),
        ] {
            assert!(!is_dns_subdomain(bad), "{bad}");
        }
    }

    #[test]
    fn bad_name_is_refused_before_any_io() {
        let e = node_ready(
            "https://10.0.0.1:6443",
            b"",
            b"",
            "../secrets",
            &HttpOptions::default(),
        )
        .unwrap_err();
        assert!(matches!(e, NodeStatusError::Name(_)), "{e}");
    }

    proptest! {
        #[test]
        fn random_answers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
            let _ = readiness(&bytes);
        }
    }
}
