//! CA public key pins, as `kubeadm join --discovery-token-ca-cert-hash` checks them.
//!
//! A pin is `sha256:<hex>` over the certificate's SubjectPublicKeyInfo, the raw DER bytes as they appear in
//! the certificate (RFC 7469 style): `openssl x509 -pubkey | openssl pkey -pubin -outform der | sha256sum`.
//!
//! Certificates are parsed with rustls-webpki's trust-anchor parser, the same code that later decides
//! whether the CA is trusted for the verified re-fetch, so what is pinned and what is trusted cannot
//! disagree; it is already linked for TLS, so pinning adds no parser to the binary. It rejects non-DER
//! encodings, which makes re-wrapping the SPKI contents in their SEQUENCE header give back exactly the
//! certificate's bytes.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ingot_spec::node_config::CaPin;
use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};

const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
const END: &str = "-----END CERTIFICATE-----";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PinError {
    #[error("the CA bundle holds no certificate; expected one or more PEM CERTIFICATE blocks")]
    Empty,
    #[error(
        "the CA bundle has {found} at byte {offset}; expected only PEM CERTIFICATE blocks and white space"
    )]
    NotPem { offset: usize, found: String },
    #[error("CA certificate {index} is not valid base64 inside its PEM block")]
    Base64 { index: usize },
    #[error("CA certificate {index} is not an X.509 certificate in DER ({reason})")]
    Certificate { index: usize, reason: String },
    #[error("the cluster CA matches none of the pins: pinned {}, found {}", List(.pins), List(.found))]
    NoMatch { pins: Vec<CaPin>, found: Vec<CaPin> },
}

/// Comma-separated pins for messages.
struct List<'a>(&'a [CaPin]);

impl fmt::Display for List<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        for (i, pin) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{pin}")?;
        }
        Ok(())
    }
}

/// SHA-256 of the certificate's SubjectPublicKeyInfo (tag, length and contents), i.e. its pin.
pub fn spki_sha256(cert_der: &[u8]) -> Result<[u8; 32], PinError> {
    spki_sha256_at(cert_der, 0)
}

fn spki_sha256_at(cert_der: &[u8], index: usize) -> Result<[u8; 32], PinError> {
    let cert = CertificateDer::from(cert_der);
    let anchor = webpki::anchor_from_trusted_cert(&cert).map_err(|e| PinError::Certificate {
        index,
        reason: format!("{e:?}"),
    })?;
    let contents: &[u8] = anchor.subject_public_key_info.as_ref();
    let mut hasher = Sha256::new();
    hasher.update([0x30]); // SEQUENCE
    hasher.update(der_length(contents.len()));
    hasher.update(contents);
    Ok(hasher.finalize().into())
}

/// A DER length: short form below 128, else the minimal big-endian bytes after `0x80 | count`.
fn der_length(len: usize) -> Vec<u8> {
    if len < 0x80 {
        return vec![len as u8];
    }
    let bytes = len.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    let mut out = vec![0x80 | (bytes.len() - skip) as u8];
    out.extend_from_slice(&bytes[skip..]);
    out
}

/// The certificates of a PEM bundle that holds nothing else: CERTIFICATE blocks without headers, separated
/// only by white space. Anything else (junk before, between or after, another block type, a block that
/// does not decode or parse) is an error rather than skipped, so what was signed is what is trusted.
pub fn parse_ca_bundle(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, PinError> {
    let mut certs = Vec::new();
    let mut pos = 0;
    loop {
        pos += pem[pos..].iter().take_while(|b| b.is_ascii_whitespace()).count();
        if pos == pem.len() {
            break;
        }
        let rest = &pem[pos..];
        if !rest.starts_with(BEGIN.as_bytes()) {
            return Err(not_pem(pem, pos));
        }
        let body_start = pos + BEGIN.len();
        let Some(body_len) = find(&pem[body_start..], END.as_bytes()) else {
            return Err(PinError::NotPem {
                offset: pos,
                found: "a CERTIFICATE block without its END line".to_string(),
            });
        };
        let body = &pem[body_start..body_start + body_len];
        let index = certs.len();
        // Base64 lines only: a header line (`Proc-Type: …`) or a stray marker fails to decode.
        let text: Vec<u8> = body
            .iter()
            .copied()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        let der = STANDARD.decode(&text).map_err(|_| PinError::Base64 { index })?;
        spki_sha256_at(&der, index)?;
        certs.push(CertificateDer::from(der));
        pos = body_start + body_len + END.len();
        // The END line must end its line.
        if pem.get(pos).is_some_and(|b| !b.is_ascii_whitespace()) {
            return Err(not_pem(pem, pos));
        }
    }
    if certs.is_empty() {
        return Err(PinError::Empty);
    }
    Ok(certs)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A short, printable description of what stands at `offset` (CA bundles hold no secrets).
fn not_pem(pem: &[u8], offset: usize) -> PinError {
    let snippet: String = String::from_utf8_lossy(&pem[offset..pem.len().min(offset + 24)])
        .chars()
        .map(|c| if c.is_control() { '.' } else { c })
        .collect();
    PinError::NotPem {
        offset,
        found: format!("`{snippet}`"),
    }
}

/// Ok if any certificate's public key matches any pin (kubeadm's `CheckAny`).
pub fn check_any(certs: &[CertificateDer<'_>], pins: &[CaPin]) -> Result<(), PinError> {
    let mut found = Vec::with_capacity(certs.len());
    for (index, cert) in certs.iter().enumerate() {
        let hash = CaPin(spki_sha256_at(cert.as_ref(), index)?);
        if pins.contains(&hash) {
            return Ok(());
        }
        found.push(hash);
    }
    Err(PinError::NoMatch {
        pins: pins.to_vec(),
        found,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// kubeadm's `pubkeypin_test.go` certificates (RSA 2048, self-signed with the openssl CLI).
    const KUBEADM_CERT: &str = include_str!("../tests/fixtures/kubeadm-keypins-test.pem");
    const KUBEADM_CERT2: &str = include_str!("../tests/fixtures/kubeadm-keypins-test2.pem");
    const KUBEADM_HASH: &str = "sha256:345959acb2c3b2feb87d281961c893f62a314207ef02599f1cc4a5fb255480b3";

    fn pin(s: &str) -> CaPin {
        CaPin::parse(s).unwrap()
    }

    #[test]
    fn kubeadm_vector() {
        let certs = parse_ca_bundle(KUBEADM_CERT.as_bytes()).unwrap();
        assert_eq!(certs.len(), 1);
        let hash = CaPin(spki_sha256(certs[0].as_ref()).unwrap());
        assert_eq!(hash.to_string(), KUBEADM_HASH);
    }

    #[test]
    fn check_any_passes_when_any_cert_matches() {
        let bundle = format!("{KUBEADM_CERT2}\n{KUBEADM_CERT}");
        let certs = parse_ca_bundle(bundle.as_bytes()).unwrap();
        assert_eq!(certs.len(), 2);
        check_any(&certs, &[pin(KUBEADM_HASH)]).unwrap();
        check_any(
            &certs,
            &[pin(&KUBEADM_HASH.to_uppercase().replace("SHA256", "sha256"))],
        )
        .unwrap();
    }

    #[test]
    fn check_any_names_pins_and_found_hashes() {
        let certs = parse_ca_bundle(KUBEADM_CERT2.as_bytes()).unwrap();
        let err = check_any(&certs, &[pin(KUBEADM_HASH)]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(KUBEADM_HASH), "{msg}");
        assert!(
            msg.contains("sha256:d1ef16989563fe7775f81a7dc55ce16a467ca9baedae2d081cb0a068b6a81971"),
            "{msg}"
        );
        assert!(matches!(err, PinError::NoMatch { .. }));
        assert!(check_any(&certs, &[]).is_err(), "no pins match nothing");
    }

    #[test]
    fn ecdsa_cert_from_rcgen() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let params = rcgen::CertificateParams::new(vec!["ca.test".to_string()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let ours = spki_sha256(cert.der()).unwrap();
        // rcgen encodes the SubjectPublicKeyInfo on its own; the pin is its SHA-256.
        let expected: [u8; 32] = Sha256::digest(rcgen::PublicKeyData::subject_public_key_info(&key)).into();
        assert_eq!(ours, expected);
        // And the openssl pipeline kubeadm documents, where openssl is installed.
        match openssl_pin(&cert.pem()) {
            Some(hex) => assert_eq!(CaPin(ours).to_string(), format!("sha256:{hex}")),
            None => ingot_testkit::skip(
                "ecdsa_cert_from_rcgen",
                "the rest of the test ran: openssl not installed (apt-get install openssl), so the pin was \
                 compared with rcgen's SubjectPublicKeyInfo only",
            ),
        }
    }

    fn openssl_pin(pem: &str) -> Option<String> {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let run = |args: &[&str], input: &[u8]| -> Option<Vec<u8>> {
            let mut child = Command::new("openssl")
                .args(args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .ok()?;
            child.stdin.take()?.write_all(input).ok()?;
            let out = child.wait_with_output().ok()?;
            out.status.success().then_some(out.stdout)
        };
        let pubkey = run(&["x509", "-pubkey", "-noout"], pem.as_bytes())?;
        let der = run(&["pkey", "-pubin", "-outform", "der"], &pubkey)?;
        Some(Sha256::digest(der).iter().map(|b| format!("{b:02x}")).collect())
    }

    #[test]
    fn der_lengths() {
        assert_eq!(der_length(0), [0]);
        assert_eq!(der_length(127), [127]);
        assert_eq!(der_length(128), [0x81, 128]);
        assert_eq!(der_length(290), [0x82, 0x01, 0x22]);
    }

    #[test]
    fn junk_appended_is_rejected() {
        let err = parse_ca_bundle(format!("{KUBEADM_CERT}junk\n").as_bytes()).unwrap_err();
        assert!(matches!(err, PinError::NotPem { .. }), "{err}");
        let err = parse_ca_bundle(format!("{KUBEADM_CERT}\njunk").as_bytes()).unwrap_err();
        assert!(err.to_string().contains("`junk`"), "{err}");
    }

    #[test]
    fn junk_before_or_between_is_rejected() {
        assert!(parse_ca_bundle(format!("junk\n{KUBEADM_CERT}").as_bytes()).is_err());
        assert!(parse_ca_bundle(format!("{KUBEADM_CERT}\n# comment\n{KUBEADM_CERT2}").as_bytes()).is_err());
    }

    #[test]
    fn other_blocks_and_broken_blocks_are_rejected() {
        let key = KUBEADM_CERT.replace("CERTIFICATE", "PRIVATE KEY");
        assert!(matches!(
            parse_ca_bundle(key.as_bytes()),
            Err(PinError::NotPem { .. })
        ));
        let headers = KUBEADM_CERT.replacen("\nMII", "\nProc-Type: 4,ENCRYPTED\n\nMII", 1);
        assert_eq!(
            parse_ca_bundle(headers.as_bytes()),
            Err(PinError::Base64 { index: 0 })
        );
        let unterminated = KUBEADM_CERT.replace(END, "");
        assert!(matches!(
            parse_ca_bundle(unterminated.as_bytes()),
            Err(PinError::NotPem { .. })
        ));
        let not_x509 = format!("{BEGIN}\n{}\n{END}\n", STANDARD.encode(b"hello"));
        assert!(matches!(
            parse_ca_bundle(not_x509.as_bytes()),
            Err(PinError::Certificate { index: 0, .. })
        ));
        assert_eq!(parse_ca_bundle(b""), Err(PinError::Empty));
        assert_eq!(parse_ca_bundle(b" \n\t"), Err(PinError::Empty));
    }

    #[test]
    fn crlf_and_surrounding_white_space_are_fine() {
        let crlf = format!("\n\n{}\r\n", KUBEADM_CERT.replace('\n', "\r\n"));
        assert_eq!(parse_ca_bundle(crlf.as_bytes()).unwrap().len(), 1);
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let _ = parse_ca_bundle(&bytes);
            let _ = spki_sha256(&bytes);
        }

        #[test]
        fn mutated_bundles_never_panic(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)
        ) {
            let mut bytes = KUBEADM_CERT.as_bytes().to_vec();
            for (i, b) in edits {
                let i = i.index(bytes.len());
                bytes[i] = b;
            }
            if let Ok(certs) = parse_ca_bundle(&bytes) {
                let _ = check_any(&certs, &[]);
            }
        }

        #[test]
        fn mutated_der_never_panics(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)
        ) {
            let mut der = parse_ca_bundle(KUBEADM_CERT.as_bytes()).unwrap().remove(0).to_vec();
            for (i, b) in edits {
                let i = i.index(der.len());
                der[i] = b;
            }
            let _ = spki_sha256(&der);
        }
    }
}
