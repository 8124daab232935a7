//! Token discovery: from a bootstrap token and CA pins to a trusted CA and API server, as kubeadm's
//! `discovery/token` does it (the crate documentation lists the steps).
//!
//! While the API server is unreachable, answers with an error status, or has not yet signed cluster-info
//! for this token id, discovery polls every [`DiscoveryOptions::poll_interval`] until
//! [`DiscoveryOptions::deadline`] and then returns the last such error. Everything else (a signature that
//! does not verify, a CA that matches no pin, a changed answer) is final at once: waiting would not make
//! an attacker's answer trustworthy.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ingot_spec::node_config::{BootstrapToken, CaPin, Endpoint};
use serde::Deserialize;

use crate::https::{self, HttpError, HttpOptions, Trust};
use crate::jws;
use crate::kubeconfig::{self, KubeconfigError};
use crate::pin::{self, PinError};

/// The path of the cluster-info ConfigMap, readable anonymously.
pub const CLUSTER_INFO_PATH: &str = "/api/v1/namespaces/kube-public/configmaps/cluster-info";
/// Key of the signed kubeconfig in cluster-info's data.
const KUBECONFIG_KEY: &str = "kubeconfig";
/// Prefix of the per-token signature keys in cluster-info's data.
const JWS_PREFIX: &str = "jws-kubeconfig-";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiscoveryOptions {
    /// Limits of each request (their deadlines are cut to what is left of the overall one).
    pub http: HttpOptions,
    /// Wait between attempts while cluster-info is unreachable or not yet signed for the token.
    pub poll_interval: Duration,
    /// For the whole discovery, polling included.
    pub deadline: Duration,
}

impl Default for DiscoveryOptions {
    /// kubeadm's defaults: poll every 5 s for at most 5 minutes.
    fn default() -> Self {
        DiscoveryOptions {
            http: HttpOptions::default(),
            poll_interval: Duration::from_secs(5),
            deadline: Duration::from_secs(300),
        }
    }
}

/// The outcome: a CA and API server that the token and a pin vouch for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovered {
    /// The API server URL cluster-info names (may be a host name; the kubelet resolves it).
    pub server: String,
    /// The cluster CA bundle (PEM), checked against the pins.
    pub ca_pem: Vec<u8>,
    /// cluster-info's kubeconfig, exactly as signed.
    pub kubeconfig: String,
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error(
        "no CA pin given: set the cluster CA's public key hash (ca-cert-hashes), or explicitly skip CA verification"
    )]
    NoPins,
    #[error("failed to verify JWS signature of received cluster info object, can't trust this API Server")]
    BadSignature,
    #[error("token id {0:?} is invalid for this cluster or it has expired")]
    NoSignature(String),
    #[error("cluster-info has no kubeconfig")]
    NoKubeconfig,
    #[error("cluster-info is not a ConfigMap in JSON")]
    MalformedConfigMap(#[source] serde_json::Error),
    #[error("cluster-info's kubeconfig")]
    Kubeconfig(#[source] KubeconfigError),
    #[error("cluster-info's kubeconfig has no certificate-authority-data; expected the cluster CA")]
    NoCa,
    #[error("cluster-info's CA bundle")]
    CaBundle(#[source] PinError),
    #[error("{0}")]
    CaNotPinned(#[source] PinError),
    #[error("the cluster-info fetched over verified TLS differs from the signed one fetched first")]
    Changed,
    #[error("the API server at {url} failed TLS verification against the cluster-info CA")]
    RefetchTls {
        url: String,
        #[source]
        source: HttpError,
    },
    #[error("cluster-info from {url} is too large")]
    TooLarge {
        url: String,
        #[source]
        source: HttpError,
    },
    #[error("the API server at {url} was too slow")]
    Timeout {
        url: String,
        #[source]
        source: HttpError,
    },
    #[error("the API server at {url} refused cluster-info")]
    Status {
        url: String,
        #[source]
        source: HttpError,
    },
    #[error("could not fetch cluster-info from {url}")]
    Unreachable {
        url: String,
        #[source]
        source: HttpError,
    },
}

impl DiscoveryError {
    /// Whether asking again later may help: the server is not up yet, or the token's signature not yet
    /// added. Never for an answer that fails a check.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            DiscoveryError::NoSignature(_)
                | DiscoveryError::NoKubeconfig
                | DiscoveryError::Timeout { .. }
                | DiscoveryError::Status { .. }
                | DiscoveryError::Unreachable { .. }
        )
    }
}

/// Runs token discovery against `endpoint`. Pins are checked whenever given; with none, it fails unless
/// `skip_ca_verification` accepts the token-signed CA alone (kubeadm's
/// `--discovery-token-unsafe-skip-ca-verification`).
pub fn discover(
    endpoint: &Endpoint,
    token: &BootstrapToken,
    pins: &[CaPin],
    skip_ca_verification: bool,
    opts: &DiscoveryOptions,
) -> Result<Discovered, DiscoveryError> {
    discover_with_progress(endpoint, token, pins, skip_ca_verification, opts, &mut |_, _| {})
}

/// [`discover`], telling `progress` about each transient failure and the wait before the next attempt.
pub fn discover_with_progress(
    endpoint: &Endpoint,
    token: &BootstrapToken,
    pins: &[CaPin],
    skip_ca_verification: bool,
    opts: &DiscoveryOptions,
    progress: &mut dyn FnMut(&DiscoveryError, Duration),
) -> Result<Discovered, DiscoveryError> {
    if pins.is_empty() && !skip_ca_verification {
        return Err(DiscoveryError::NoPins);
    }
    let end = Instant::now() + opts.deadline;
    let url = format!("{}{CLUSTER_INFO_PATH}", endpoint.url());

    let signed = retrying(end, opts, progress, |http| {
        let data = fetch_data(&url, Trust::Insecure, http)?;
        let kubeconfig = data.get(KUBECONFIG_KEY).ok_or(DiscoveryError::NoKubeconfig)?;
        let signature = data
            .get(&format!("{JWS_PREFIX}{}", token.id()))
            .ok_or_else(|| DiscoveryError::NoSignature(token.id().to_string()))?;
        if !jws::verify(token.id(), token.secret(), kubeconfig, signature) {
            return Err(DiscoveryError::BadSignature);
        }
        Ok(kubeconfig.clone())
    })?;

    let info = kubeconfig::parse_cluster_info(&signed).map_err(DiscoveryError::Kubeconfig)?;
    if info.ca_pem.is_empty() {
        return Err(DiscoveryError::NoCa);
    }
    let certs = pin::parse_ca_bundle(&info.ca_pem).map_err(DiscoveryError::CaBundle)?;
    if !pins.is_empty() {
        pin::check_any(&certs, pins).map_err(DiscoveryError::CaNotPinned)?;
    }

    let verified = retrying(end, opts, progress, |http| {
        let mut data = fetch_data(&url, Trust::Ca(&certs), http)?;
        data.remove(KUBECONFIG_KEY).ok_or(DiscoveryError::NoKubeconfig)
    })?;
    if verified != signed {
        return Err(DiscoveryError::Changed);
    }
    Ok(Discovered {
        server: info.server,
        ca_pem: info.ca_pem,
        kubeconfig: signed,
    })
}

/// Runs `attempt` until it succeeds, fails for good, or the deadline passes (then its last error; when
/// the deadline cut that attempt short and it timed out, the error of the attempt before, which says
/// more than "too slow").
fn retrying<T>(
    end: Instant,
    opts: &DiscoveryOptions,
    progress: &mut dyn FnMut(&DiscoveryError, Duration),
    mut attempt: impl FnMut(&HttpOptions) -> Result<T, DiscoveryError>,
) -> Result<T, DiscoveryError> {
    let mut previous: Option<DiscoveryError> = None;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        let http = HttpOptions {
            connect_timeout: opts.http.connect_timeout.min(left),
            deadline: opts.http.deadline.min(left),
            body_limit: opts.http.body_limit,
        };
        let cut_short = http.deadline < opts.http.deadline;
        let err = match attempt(&http) {
            Ok(v) => return Ok(v),
            Err(e) if e.is_transient() => e,
            Err(e) => return Err(e),
        };
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(match (err, previous) {
                (DiscoveryError::Timeout { .. }, Some(before)) if cut_short => before,
                (err, _) => err,
            });
        }
        let wait = opts.poll_interval.min(left);
        progress(&err, wait);
        std::thread::sleep(wait);
        if Instant::now() >= end {
            return Err(err);
        }
        previous = Some(err);
    }
}

#[derive(Deserialize)]
struct ConfigMap {
    #[serde(default)]
    data: Option<BTreeMap<String, String>>,
}

/// cluster-info's `data`.
fn fetch_data(
    url: &str,
    trust: Trust<'_>,
    http: &HttpOptions,
) -> Result<BTreeMap<String, String>, DiscoveryError> {
    let verified = !matches!(trust, Trust::Insecure);
    let body = https::get(url, trust, http).map_err(|source| {
        let url = url.to_string();
        match source {
            HttpError::Tls(_) if verified => DiscoveryError::RefetchTls { url, source },
            HttpError::TooLarge(_) => DiscoveryError::TooLarge { url, source },
            HttpError::ConnectTimeout(_) | HttpError::Deadline(_) => DiscoveryError::Timeout { url, source },
            HttpError::Status { .. } => DiscoveryError::Status { url, source },
            _ => DiscoveryError::Unreachable { url, source },
        }
    })?;
    parse_config_map(&body)
}

/// A ConfigMap's `data` (absent: empty); every value must be a string.
fn parse_config_map(body: &[u8]) -> Result<BTreeMap<String, String>, DiscoveryError> {
    let cm: ConfigMap = serde_json::from_slice(body).map_err(DiscoveryError::MalformedConfigMap)?;
    Ok(cm.data.unwrap_or_default())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn config_map_data() {
        let data = parse_config_map(
            br#"{"kind":"ConfigMap","data":{"kubeconfig":"x","jws-kubeconfig-abcdef":"y"}}"#,
        )
        .unwrap();
        assert_eq!(data.get("kubeconfig").map(String::as_str), Some("x"));
        assert!(parse_config_map(br#"{"kind":"ConfigMap"}"#).unwrap().is_empty());
        assert!(parse_config_map(br#"{"data":null}"#).unwrap().is_empty());
        for bad in [
            &br#"{"data":{"kubeconfig":1}}"#[..],
            b"",
            b"[",
            br#"{"data":{}}x"#,
        ] {
            assert!(matches!(
                parse_config_map(bad),
                Err(DiscoveryError::MalformedConfigMap(_))
            ));
        }
    }

    #[test]
    fn only_errors_that_waiting_can_fix_are_transient() {
        assert!(DiscoveryError::NoSignature("abcdef".into()).is_transient());
        assert!(DiscoveryError::NoKubeconfig.is_transient());
        assert!(!DiscoveryError::BadSignature.is_transient());
        assert!(!DiscoveryError::Changed.is_transient());
        assert!(!DiscoveryError::NoCa.is_transient());
    }

    proptest! {
        #[test]
        fn random_answers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
            let _ = parse_config_map(&bytes);
        }

        #[test]
        fn mutated_answers_never_panic(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6)
        ) {
            let mut bytes = br#"{"kind":"ConfigMap","data":{"kubeconfig":"apiVersion: v1\n","jws-kubeconfig-abcdef":"e30..x"}}"#.to_vec();
            for (i, b) in edits {
                let i = i.index(bytes.len());
                bytes[i] = b;
            }
            let _ = parse_config_map(&bytes);
        }
    }
}
