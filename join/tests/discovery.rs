//! Token discovery against a hostile API server: each way an answer can be wrong gives its own error.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Pki, Reply, SECRET, Server, all_text, config_map, kubeconfig, signed, token};
use ingot_join::discovery::{
    CLUSTER_INFO_PATH, DiscoveryError, DiscoveryOptions, discover, discover_with_progress,
};
use ingot_join::{HttpOptions, jws};
use ingot_spec::node_config::CaPin;

fn opts() -> DiscoveryOptions {
    DiscoveryOptions {
        http: HttpOptions {
            connect_timeout: Duration::from_millis(500),
            deadline: Duration::from_millis(800),
            body_limit: 1024 * 1024,
        },
        poll_interval: Duration::from_millis(30),
        deadline: Duration::from_secs(2),
    }
}

/// A server whose cluster-info names itself and its CA, signed for the test token.
fn honest(pki: &Pki) -> (Server, String) {
    let holder: Arc<Mutex<String>> = Arc::new(Mutex::new(String::new()));
    let body = holder.clone();
    let server = Server::with_pki(pki, move |_| Reply::Ok(body.lock().unwrap().clone()));
    let kc = kubeconfig(&server.url(), &pki.ca_pem);
    *holder.lock().unwrap() = signed(&kc);
    (server, kc)
}

/// A server answering with `reply(url)` for every connection.
fn serving(pki: &Pki, reply: impl Fn(&str, usize) -> Reply + Send + Sync + 'static) -> Server {
    let url: Arc<Mutex<String>> = Arc::new(Mutex::new(String::new()));
    let u = url.clone();
    let server = Server::with_pki(pki, move |n| reply(&u.lock().unwrap(), n));
    *url.lock().unwrap() = server.url();
    server
}

fn assert_no_secret(e: &DiscoveryError) {
    let text = all_text(e);
    assert!(!text.contains(SECRET), "the token secret leaked: {text}");
}

#[test]
fn happy_path() {
    let pki = Pki::new("kubernetes");
    let (server, kc) = honest(&pki);
    let found = discover(&server.endpoint(), &token(), &[pki.ca_pin], false, &opts()).unwrap();
    assert_eq!(found.server, server.url());
    assert_eq!(found.ca_pem, pki.ca_pem.as_bytes());
    assert_eq!(found.kubeconfig, kc);
    assert_eq!(server.connections(), 2, "one insecure fetch, one verified");
    assert_eq!(
        *server.paths.lock().unwrap(),
        [CLUSTER_INFO_PATH, CLUSTER_INFO_PATH]
    );
}

#[test]
fn any_pin_of_several_and_any_cert_of_the_bundle_will_do() {
    let pki = Pki::new("kubernetes");
    let other = Pki::new("old-ca");
    let bundle = format!("{}{}", other.ca_pem, pki.ca_pem);
    let server = serving(&pki, move |url, _| Reply::Ok(signed(&kubeconfig(url, &bundle))));
    let pins = [CaPin([7; 32]), pki.ca_pin];
    discover(&server.endpoint(), &token(), &pins, false, &opts()).unwrap();
}

#[test]
fn signature_appears_after_polls() {
    let pki = Pki::new("kubernetes");
    // Unsigned for the first three connections, as before the bootstrap signer has run.
    let holder: Arc<Mutex<String>> = Arc::new(Mutex::new(String::new()));
    let unsigned: Arc<Mutex<String>> = Arc::new(Mutex::new(String::new()));
    let (h, u) = (holder.clone(), unsigned.clone());
    let server = Server::with_pki(&pki, move |n| {
        Reply::Ok(if n < 3 {
            u.lock().unwrap().clone()
        } else {
            h.lock().unwrap().clone()
        })
    });
    let kc = kubeconfig(&server.url(), &pki.ca_pem);
    *unsigned.lock().unwrap() = config_map(&[("kubeconfig", &kc)]);
    *holder.lock().unwrap() = signed(&kc);

    let mut waits = Vec::new();
    let found = discover_with_progress(
        &server.endpoint(),
        &token(),
        &[pki.ca_pin],
        false,
        &opts(),
        &mut |e, wait| waits.push((e.to_string(), wait)),
    )
    .unwrap();
    assert_eq!(found.kubeconfig, kc);
    assert_eq!(waits.len(), 3, "{waits:?}");
    for (msg, wait) in &waits {
        assert_eq!(
            msg,
            "token id \"abcdef\" is invalid for this cluster or it has expired"
        );
        assert_eq!(*wait, Duration::from_millis(30));
    }
    assert_eq!(server.connections(), 5);
}

#[test]
fn bad_signature_is_final() {
    let pki = Pki::new("kubernetes");
    let server = serving(&pki, {
        let ca = pki.ca_pem.clone();
        move |url, _| {
            let kc = kubeconfig(url, &ca);
            let forged = jws::sign("abcdef", "fedcba9876543210", &kc);
            Reply::Ok(config_map(&[
                ("kubeconfig", &kc),
                ("jws-kubeconfig-abcdef", &forged),
            ]))
        }
    });
    let e = discover(&server.endpoint(), &token(), &[pki.ca_pin], false, &opts()).unwrap_err();
    assert!(matches!(e, DiscoveryError::BadSignature), "{e}");
    assert_eq!(
        e.to_string(),
        "failed to verify JWS signature of received cluster info object, can't trust this API Server"
    );
    assert_eq!(server.connections(), 1, "no retry after a forged answer");
    assert_no_secret(&e);
}

#[test]
fn signature_for_another_token_only() {
    let pki = Pki::new("kubernetes");
    let server = serving(&pki, {
        let ca = pki.ca_pem.clone();
        move |url, _| {
            let kc = kubeconfig(url, &ca);
            let sig = jws::sign("zzzzzz", "zzzzzzzzzzzzzzzz", &kc);
            Reply::Ok(config_map(&[
                ("kubeconfig", &kc),
                ("jws-kubeconfig-zzzzzz", &sig),
            ]))
        }
    });
    let mut o = opts();
    o.deadline = Duration::from_millis(300);
    let started = Instant::now();
    let e = discover(&server.endpoint(), &token(), &[pki.ca_pin], false, &o).unwrap_err();
    assert!(
        matches!(e, DiscoveryError::NoSignature(ref id) if id == "abcdef"),
        "{e}"
    );
    assert_eq!(
        e.to_string(),
        "token id \"abcdef\" is invalid for this cluster or it has expired"
    );
    assert!(
        started.elapsed() < Duration::from_millis(1300),
        "polled past the deadline"
    );
    assert!(
        server.connections() >= 2,
        "it polls while the signature is missing"
    );
    assert_no_secret(&e);
}

#[test]
fn one_changed_kubeconfig_byte_breaks_the_signature() {
    let pki = Pki::new("kubernetes");
    let server = serving(&pki, {
        let ca = pki.ca_pem.clone();
        move |url, _| {
            let kc = kubeconfig(url, &ca);
            let sig = jws::sign("abcdef", SECRET, &kc);
            // Point the node at another server, keeping the signature.
            let tampered = kc.replacen("server: https://127.0.0.1", "server: https://127.0.0.2", 1);
            assert_ne!(tampered, kc);
            Reply::Ok(config_map(&[
                ("kubeconfig", &tampered),
                ("jws-kubeconfig-abcdef", &sig),
            ]))
        }
    });
    let e = discover(&server.endpoint(), &token(), &[pki.ca_pin], false, &opts()).unwrap_err();
    assert!(matches!(e, DiscoveryError::BadSignature), "{e}");
}

#[test]
fn ca_matching_no_pin() {
    let pki = Pki::new("kubernetes");
    let (server, _) = honest(&pki);
    let wrong = CaPin([0xab; 32]);
    let e = discover(&server.endpoint(), &token(), &[wrong], false, &opts()).unwrap_err();
    assert!(matches!(e, DiscoveryError::CaNotPinned(_)), "{e}");
    let msg = e.to_string();
    assert!(msg.contains(&wrong.to_string()), "names the pin: {msg}");
    assert!(msg.contains(&pki.ca_pin.to_string()), "names the CA found: {msg}");
    assert_eq!(server.connections(), 1, "no verified fetch with an unpinned CA");
    assert_no_secret(&e);
}

#[test]
fn no_pins_without_the_explicit_skip_is_refused_before_any_io() {
    let pki = Pki::new("kubernetes");
    let (server, _) = honest(&pki);
    let e = discover(&server.endpoint(), &token(), &[], false, &opts()).unwrap_err();
    assert!(matches!(e, DiscoveryError::NoPins), "{e}");
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(server.connections(), 0);
    // Malformed pins never reach discovery: the node configuration refuses them.
    assert!(CaPin::parse("sha256:abcd").is_err());
    assert!(CaPin::parse("md5:00112233445566778899aabbccddeeff").is_err());
}

#[test]
fn skipping_ca_verification_trusts_the_signed_ca() {
    let pki = Pki::new("kubernetes");
    let (server, kc) = honest(&pki);
    let found = discover(&server.endpoint(), &token(), &[], true, &opts()).unwrap();
    assert_eq!(found.kubeconfig, kc);
    assert_eq!(server.connections(), 2, "the verified re-fetch still happens");
}

#[test]
fn second_fetch_differs() {
    let pki = Pki::new("kubernetes");
    let server = serving(&pki, {
        let ca = pki.ca_pem.clone();
        move |url, n| {
            let kc = kubeconfig(url, &ca);
            // Validly signed both times, but not the same bytes.
            let kc = if n == 0 { kc } else { format!("{kc}# changed\n") };
            Reply::Ok(signed(&kc))
        }
    });
    let e = discover(&server.endpoint(), &token(), &[pki.ca_pin], false, &opts()).unwrap_err();
    assert!(matches!(e, DiscoveryError::Changed), "{e}");
    assert_eq!(server.connections(), 2);
}

#[test]
fn refetch_from_a_server_of_another_ca_fails_tls() {
    // cluster-info names the real CA (and the pin matches it), but the server that answers holds a
    // certificate from another CA: a man in the middle who knows the token.
    let real = Pki::new("kubernetes");
    let mitm = Pki::new("attacker");
    let server = serving(&mitm, {
        let ca = real.ca_pem.clone();
        move |url, _| Reply::Ok(signed(&kubeconfig(url, &ca)))
    });
    let e = discover(&server.endpoint(), &token(), &[real.ca_pin], false, &opts()).unwrap_err();
    assert!(matches!(e, DiscoveryError::RefetchTls { .. }), "{e}");
    let text = all_text(&e);
    assert!(text.contains("TLS verification failed"), "{text}");
    assert_eq!(server.connections(), 2, "a failed verification is final");
}

#[test]
fn refetch_from_a_certificate_for_another_ip_fails_tls() {
    // The right CA, but its serving certificate names 127.0.0.3 while the endpoint is 127.0.0.1.
    let pki = Pki::serving("kubernetes", std::net::Ipv4Addr::new(127, 0, 0, 3));
    let (server, _) = honest(&pki);
    let e = discover(&server.endpoint(), &token(), &[pki.ca_pin], false, &opts()).unwrap_err();
    assert!(matches!(e, DiscoveryError::RefetchTls { .. }), "{e}");
    let text = all_text(&e);
    assert!(text.contains("not valid for name \"127.0.0.1\""), "{text}");
}

#[test]
fn oversized_answer() {
    let pki = Pki::new("kubernetes");
    let big = format!("{{\"data\":{{\"x\":\"{}\"}}}}", "a".repeat(70 * 1024));
    let server = serving(&pki, move |_, _| Reply::Ok(big.clone()));
    let mut o = opts();
    o.http.body_limit = 64 * 1024;
    let e = discover(&server.endpoint(), &token(), &[pki.ca_pin], false, &o).unwrap_err();
    assert!(matches!(e, DiscoveryError::TooLarge { .. }), "{e}");
    assert!(
        all_text(&e).contains("larger than 65536 bytes"),
        "{}",
        all_text(&e)
    );
    assert_eq!(server.connections(), 1, "an oversized answer is final");
}

#[test]
fn silent_server_times_out_within_the_deadline() {
    let pki = Pki::new("kubernetes");
    let server = Server::with_pki(&pki, |_| Reply::Silent(Duration::from_secs(5)));
    let mut o = opts();
    o.deadline = Duration::from_millis(1200);
    let started = Instant::now();
    let e = discover(&server.endpoint(), &token(), &[pki.ca_pin], false, &o).unwrap_err();
    let took = started.elapsed();
    assert!(matches!(e, DiscoveryError::Timeout { .. }), "{e}");
    assert!(took < Duration::from_millis(1700), "took {took:?}");
    assert!(took >= Duration::from_millis(1000), "gave up early: {took:?}");
}

#[test]
fn trickling_server_times_out_within_the_deadline() {
    let pki = Pki::new("kubernetes");
    let server = serving(&pki, {
        let ca = pki.ca_pem.clone();
        move |url, _| Reply::Trickle(signed(&kubeconfig(url, &ca)), Duration::from_millis(20))
    });
    let mut o = opts();
    o.deadline = Duration::from_millis(1200);
    let started = Instant::now();
    let e = discover(&server.endpoint(), &token(), &[pki.ca_pin], false, &o).unwrap_err();
    let took = started.elapsed();
    assert!(matches!(e, DiscoveryError::Timeout { .. }), "{e}");
    assert!(
        all_text(&e).contains("no complete answer within"),
        "{}",
        all_text(&e)
    );
    assert!(took < Duration::from_millis(1700), "took {took:?}");
}

#[test]
fn http_status_errors_are_retried_then_reported() {
    let pki = Pki::new("kubernetes");
    let server = Server::with_pki(&pki, |_| {
        Reply::Status(
            403,
            r#"{"kind":"Status","status":"Failure","message":"configmaps \"cluster-info\" is forbidden: User \"system:anonymous\" cannot get resource","code":403}"#
                .to_string(),
        )
    });
    let mut o = opts();
    o.deadline = Duration::from_millis(300);
    let e = discover(&server.endpoint(), &token(), &[pki.ca_pin], false, &o).unwrap_err();
    assert!(matches!(e, DiscoveryError::Status { .. }), "{e}");
    let text = all_text(&e);
    assert!(
        text.contains("HTTP status 403: configmaps \"cluster-info\" is forbidden"),
        "{text}"
    );
    assert!(server.connections() >= 2, "retried");
}

#[test]
fn redirects_are_not_followed() {
    let pki = Pki::new("kubernetes");
    let server = Server::with_pki(&pki, |_| {
        Reply::Raw(
            b"HTTP/1.1 302 Found\r\nLocation: https://127.0.0.1:1/elsewhere\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                .to_vec(),
        )
    });
    let mut o = opts();
    o.deadline = Duration::from_millis(200);
    let e = discover(&server.endpoint(), &token(), &[pki.ca_pin], false, &o).unwrap_err();
    assert!(all_text(&e).contains("HTTP status 302"), "{}", all_text(&e));
    assert!(
        server
            .paths
            .lock()
            .unwrap()
            .iter()
            .all(|p| p == CLUSTER_INFO_PATH)
    );
}

#[test]
fn malformed_config_map() {
    let pki = Pki::new("kubernetes");
    let server = Server::with_pki(&pki, |_| Reply::Ok("{\"data\": [1, 2".to_string()));
    let e = discover(&server.endpoint(), &token(), &[pki.ca_pin], false, &opts()).unwrap_err();
    assert!(matches!(e, DiscoveryError::MalformedConfigMap(_)), "{e}");
}

#[test]
fn kubeconfig_without_ca() {
    let pki = Pki::new("kubernetes");
    let server = serving(&pki, |url, _| {
        let kc =
            format!("apiVersion: v1\nclusters:\n- cluster:\n    server: {url}\n  name: \"\"\nkind: Config\n");
        Reply::Ok(signed(&kc))
    });
    let e = discover(&server.endpoint(), &token(), &[pki.ca_pin], false, &opts()).unwrap_err();
    assert!(matches!(e, DiscoveryError::NoCa), "{e}");
}

#[test]
fn ca_with_junk_appended() {
    let pki = Pki::new("kubernetes");
    let server = serving(&pki, {
        let ca = format!("{}junk\n", pki.ca_pem);
        move |url, _| Reply::Ok(signed(&kubeconfig(url, &ca)))
    });
    let e = discover(&server.endpoint(), &token(), &[pki.ca_pin], false, &opts()).unwrap_err();
    assert!(matches!(e, DiscoveryError::CaBundle(_)), "{e}");
}

#[test]
fn unreachable_server_is_retried_until_the_deadline() {
    // A port nothing listens on: bind, learn the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = ingot_spec::node_config::Endpoint {
        ip: "127.0.0.1".parse().unwrap(),
        port,
    };
    let mut o = opts();
    o.deadline = Duration::from_millis(200);
    let mut attempts = 0;
    let e = discover_with_progress(&endpoint, &token(), &[CaPin([0; 32])], false, &o, &mut |_, _| {
        attempts += 1
    })
    .unwrap_err();
    assert!(matches!(e, DiscoveryError::Unreachable { .. }), "{e}");
    assert!(attempts >= 2, "{attempts}");
}
