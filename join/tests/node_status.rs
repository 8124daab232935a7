//! Node readiness with the kubelet's client certificate, against a server that requires one.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{Pki, Reply, Server, all_text};
use ingot_join::node_status::{NodeReadiness, NodeStatusError, node_ready};
use ingot_join::{HttpOptions, https};

fn opts() -> HttpOptions {
    HttpOptions {
        connect_timeout: Duration::from_millis(500),
        deadline: Duration::from_secs(1),
        body_limit: 1024 * 1024,
    }
}

fn mtls(pki: &Pki, reply: Reply) -> Server {
    Server::start(
        pki.server_chain.clone(),
        pki.server_key_der.clone(),
        Some(pki.ca_der.clone()),
        move |_| reply.clone(),
    )
}

const READY: &str = r#"{"kind":"Node","metadata":{"name":"worker-1"},"status":{"conditions":[{"type":"Ready","status":"True","reason":"KubeletReady","message":"kubelet is posting ready status"}]}}"#;

#[test]
fn ready_node_with_kubelet_client_certificate() {
    let pki = Pki::new("kubernetes");
    let server = mtls(&pki, Reply::Ok(READY.to_string()));
    let client = pki.client_pem("worker-1");
    let r = node_ready(
        &server.url(),
        pki.ca_pem.as_bytes(),
        client.as_bytes(),
        "worker-1",
        &opts(),
    );
    assert_eq!(r.unwrap(), NodeReadiness::Ready);
    assert_eq!(*server.paths.lock().unwrap(), ["/api/v1/nodes/worker-1"]);
}

#[test]
fn not_ready_reports_reason_and_message() {
    let pki = Pki::new("kubernetes");
    let body = r#"{"status":{"conditions":[{"type":"Ready","status":"False","reason":"KubeletNotReady","message":"container runtime network not ready"}]}}"#;
    let server = mtls(&pki, Reply::Ok(body.to_string()));
    let client = pki.client_pem("worker-1");
    let r = node_ready(
        &server.url(),
        pki.ca_pem.as_bytes(),
        client.as_bytes(),
        "worker-1",
        &opts(),
    );
    assert_eq!(
        r.unwrap(),
        NodeReadiness::NotReady {
            status: "False".to_string(),
            reason: "KubeletNotReady".to_string(),
            message: "container runtime network not ready".to_string(),
        }
    );
}

#[test]
fn unknown_node_is_not_registered() {
    let pki = Pki::new("kubernetes");
    let server = mtls(
        &pki,
        Reply::Status(
            404,
            r#"{"kind":"Status","message":"nodes \"worker-1\" not found"}"#.to_string(),
        ),
    );
    let client = pki.client_pem("worker-1");
    let r = node_ready(
        &server.url(),
        pki.ca_pem.as_bytes(),
        client.as_bytes(),
        "worker-1",
        &opts(),
    );
    assert_eq!(r.unwrap(), NodeReadiness::NotRegistered);
}

#[test]
fn client_certificate_of_another_ca_is_refused_by_the_server() {
    let pki = Pki::new("kubernetes");
    let stranger = Pki::new("stranger");
    let server = mtls(&pki, Reply::Ok(READY.to_string()));
    let client = stranger.client_pem("worker-1");
    let e = node_ready(
        &server.url(),
        pki.ca_pem.as_bytes(),
        client.as_bytes(),
        "worker-1",
        &opts(),
    )
    .unwrap_err();
    assert!(matches!(e, NodeStatusError::Http { .. }), "{e}");
    assert!(server.paths.lock().unwrap().is_empty(), "no request got through");
}

#[test]
fn server_of_another_ca_is_refused_by_the_client() {
    let pki = Pki::new("kubernetes");
    let mitm = Pki::new("attacker");
    let server = Server::with_pki(&mitm, |_| Reply::Ok(READY.to_string()));
    let client = pki.client_pem("worker-1");
    let e = node_ready(
        &server.url(),
        pki.ca_pem.as_bytes(),
        client.as_bytes(),
        "worker-1",
        &opts(),
    )
    .unwrap_err();
    let text = all_text(&e);
    assert!(
        matches!(
            e,
            NodeStatusError::Http {
                source: https::HttpError::Tls(_),
                ..
            }
        ),
        "{text}"
    );
    assert!(!text.contains("PRIVATE KEY"), "{text}");
}

#[test]
fn key_that_does_not_fit_is_refused_before_any_io() {
    let pki = Pki::new("kubernetes");
    let server = mtls(&pki, Reply::Ok(READY.to_string()));
    let a = pki.client_pem("worker-1");
    let b = pki.client_pem("worker-1");
    let cert_a = &a[..a.find("-----BEGIN PRIVATE KEY").unwrap()];
    let key_b = &b[b.find("-----BEGIN PRIVATE KEY").unwrap()..];
    let mixed = format!("{cert_a}{key_b}");
    let e = node_ready(
        &server.url(),
        pki.ca_pem.as_bytes(),
        mixed.as_bytes(),
        "worker-1",
        &opts(),
    )
    .unwrap_err();
    assert!(matches!(e, NodeStatusError::Identity(_)), "{e}");
    assert_eq!(server.connections(), 0);
}
