//! The detached HS256 JWS with which the controller-manager's bootstrap signer signs cluster-info.
//!
//! For every valid token with `usage-bootstrap-signing`, the `kube-public/cluster-info` ConfigMap holds
//! `jws-kubeconfig-<token id>` = a compact JWS over the exact `kubeconfig` string, with the payload left
//! out (RFC 7515 appendix F):
//!
//! ```text
//! B64URL({"alg":"HS256","kid":"<token id>"}) + ".." + B64URL(HMAC-SHA256(token secret, header "." B64URL(kubeconfig)))
//! ```
//!
//! The key is the 16-character token secret alone, not `<id>.<secret>`. The upstream signer zero-pads it
//! to 32 bytes first, which changes nothing: HMAC zero-pads every key to the 64-byte block anyway.
//!
//! [`verify`] does what upstream does, recomputing the whole serialized string and comparing it, but in
//! constant time; the header is never parsed, so any other header (another algorithm, extra fields) simply
//! does not match.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// SHA-256's block size, the length HMAC pads its key to.
const BLOCK: usize = 64;

/// The detached signature `kubeadm`'s bootstrap signer would store for `content` under this token.
pub fn sign(token_id: &str, secret: &str, content: &str) -> String {
    let header = URL_SAFE_NO_PAD.encode(header_json(token_id));
    let payload = URL_SAFE_NO_PAD.encode(content);
    let signing_input = format!("{header}.{payload}");
    let tag = hmac_sha256(secret.as_bytes(), signing_input.as_bytes());
    format!("{header}..{}", URL_SAFE_NO_PAD.encode(tag))
}

/// Whether `detached` is exactly the signature of `content` under this token, compared in constant time.
pub fn verify(token_id: &str, secret: &str, content: &str, detached: &str) -> bool {
    let expected = sign(token_id, secret, content);
    bool::from(expected.as_bytes().ct_eq(detached.as_bytes()))
}

/// `{"alg":"HS256","kid":"<id>"}`, compact and in that key order, with the id escaped as Go's JSON encoder
/// escapes strings (token ids are `[a-z0-9]{6}`, which need no escaping).
fn header_json(kid: &str) -> String {
    let mut out = String::from(r#"{"alg":"HS256","kid":""#);
    for c in kid.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push_str(r#""}"#);
    out
}

/// HMAC-SHA256 keyed with `key`, padded to the block size here (RFC 2104: longer keys are hashed, shorter
/// ones zero-padded) so the MAC is built from a full-block key and cannot fail.
fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut mac = <Hmac<Sha256> as KeyInit>::new(&block.into());
    mac.update(data);
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const JOSHUA: &str = "joshua";
    const PASSCODE: &str = "my voice is my passcode";
    const HELLO: &str = "Hello from the other side. I must have called a thousand times.";
    const JOSHUA_HEADER: &str = "eyJhbGciOiJIUzI1NiIsImtpZCI6Impvc2h1YSJ9";

    #[test]
    fn upstream_vector_content() {
        let sig = sign(JOSHUA, PASSCODE, HELLO);
        assert_eq!(
            sig,
            format!("{JOSHUA_HEADER}..VShe2taLd-YTrmWuRkcL_8QTNDHYxQIEBsAYYiIj1_8")
        );
        assert!(verify(JOSHUA, PASSCODE, HELLO, &sig));
    }

    #[test]
    fn upstream_vector_empty_content() {
        let expected = format!("{JOSHUA_HEADER}..7Ui1ALizW4jXphVUB7xUqC9vLYLL9RZeOFfVLoB7Tgk");
        assert_eq!(sign(JOSHUA, PASSCODE, ""), expected);
        assert!(verify(JOSHUA, PASSCODE, "", &expected));
    }

    #[test]
    fn upstream_vector_empty_secret() {
        let expected = format!("{JOSHUA_HEADER}..UfkqvDGiIFxrMnFseDj9LYJOLNrvjW8aHhF71mvvAs8");
        assert_eq!(sign(JOSHUA, "", HELLO), expected);
        assert!(verify(JOSHUA, "", HELLO, &expected));
    }

    #[test]
    fn kubeconfig_vector() {
        let content = "apiVersion: v1\nkind: Config\n";
        let expected =
            "eyJhbGciOiJIUzI1NiIsImtpZCI6ImFiY2RlZiJ9..vH_kT4yiol-nrAWgjfCYqvum5wsKETXe0S7OOp1VgnE";
        assert_eq!(sign("abcdef", "0123456789abcdef", content), expected);
        assert!(verify("abcdef", "0123456789abcdef", content, expected));
    }

    #[test]
    fn header_is_the_compact_json_upstream_writes() {
        assert_eq!(
            URL_SAFE_NO_PAD.encode(header_json("07401b")),
            "eyJhbGciOiJIUzI1NiIsImtpZCI6IjA3NDAxYiJ9"
        );
    }

    #[test]
    fn long_secret_is_hashed_as_hmac_requires() {
        // RFC 4231 test case 6: a 131-byte key, longer than the block.
        let key = [0xaau8; 131];
        let tag = hmac_sha256(&key, b"Test Using Larger Than Block-Size Key - Hash Key First");
        assert_eq!(
            tag,
            [
                0x60, 0xe4, 0x31, 0x59, 0x1e, 0xe0, 0xb6, 0x7f, 0x0d, 0x8a, 0x26, 0xaa, 0xcb, 0xf5, 0xb7,
                0x7f, 0x8e, 0x0b, 0xc6, 0x21, 0x37, 0x28, 0xc5, 0x14, 0x05, 0x46, 0x04, 0x0f, 0x0e, 0xe3,
                0x7f, 0x54
            ]
        );
    }

    #[test]
    fn rejects_what_differs_anywhere() {
        let sig = sign("abcdef", "0123456789abcdef", HELLO);
        assert!(!verify("abcdef", "0123456789abcdeg", HELLO, &sig), "other secret");
        assert!(!verify("abcdeg", "0123456789abcdef", HELLO, &sig), "other id");
        assert!(
            !verify("abcdef", "0123456789abcdef", &format!("{HELLO} "), &sig),
            "other content"
        );
        assert!(
            !verify("abcdef", "0123456789abcdef", HELLO, &format!("{sig}=")),
            "padded"
        );
        assert!(!verify("abcdef", "0123456789abcdef", HELLO, ""), "empty");
        // The same MAC under another header (alg "none", or an attached payload) is not accepted.
        let (_, tag) = sig.split_once("..").unwrap_or_default();
        let none = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","kid":"abcdef"}"#);
        assert!(!verify(
            "abcdef",
            "0123456789abcdef",
            HELLO,
            &format!("{none}..{tag}")
        ));
        let attached = sig.replacen("..", &format!(".{}.", URL_SAFE_NO_PAD.encode(HELLO)), 1);
        assert!(!verify("abcdef", "0123456789abcdef", HELLO, &attached));
    }

    #[test]
    fn kid_escaping_follows_go() {
        assert_eq!(header_json("a\"<"), r#"{"alg":"HS256","kid":"a\"\u003c"}"#);
    }
}
