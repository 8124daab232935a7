//! Kernel command line keys `ingot-init` reads, and a parser that follows the kernel's own quoting rules.

/// Halt instead of rebooting after a fatal error, and keep the console open.
pub const DEBUG: &str = "ingot.debug";
/// Power off once the node is ready (used by tests and benchmarks).
pub const POWEROFF: &str = "ingot.poweroff";
/// Seconds to wait before rebooting after a fatal error (default [`DEFAULT_REBOOT_DELAY_SECS`]).
pub const REBOOT_DELAY: &str = "ingot.reboot_delay";
/// Comma-separated extra module files (relative to `/lib/modules/<kver>/`) stage 1 loads after the list the
/// builder wrote to `/etc/ingot/modules`; a debugging aid for trying a driver without rebuilding.
pub const MODULES: &str = "ingot.modules";
/// The dm-verity root hash of the root this command line may boot (systemd's key name), 64 lowercase hex
/// digits; the builder adds it to the UKI's command line, so the signed UKI pins its root. Stage 1 mounts
/// the root only through a verity device with this root hash, and refuses to boot without it.
pub const ROOT_HASH: &str = "roothash";
/// Default delay before a reboot after a fatal error.
pub const DEFAULT_REBOOT_DELAY_SECS: u64 = 10;

/// One `key` or `key=value` word of a kernel command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Param<'a> {
    pub key: &'a str,
    pub value: Option<&'a str>,
}

/// Splits a command line into parameters. Double quotes group words with spaces, as in the kernel
/// (`key="a b"`); the quotes are removed from the value.
pub fn parse(cmdline: &str) -> Vec<Param<'_>> {
    let mut out = Vec::new();
    let bytes = cmdline.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= bytes.len() {
            break;
        }
        let start = i;
        let mut in_quote = false;
        while i < bytes.len() && (in_quote || !bytes[i].is_ascii_whitespace()) {
            if bytes[i] == b'"' {
                in_quote = !in_quote;
            }
            i += 1;
        }
        let word = &cmdline[start..i];
        let param = match word.split_once('=') {
            Some((k, v)) => Param {
                key: k.trim_matches('"'),
                value: Some(v.trim_matches('"')),
            },
            None => Param {
                key: word.trim_matches('"'),
                value: None,
            },
        };
        out.push(param);
    }
    out
}

/// The value of the last occurrence of `key` (the kernel's rule: later wins); `Some("")` for a bare flag.
pub fn get<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    parse(cmdline)
        .into_iter()
        .rev()
        .find(|p| p.key == key)
        .map(|p| p.value.unwrap_or(""))
}

/// Whether a flag is set: present bare, or with a value other than `0`/`false`/`no`.
pub fn flag(cmdline: &str, key: &str) -> bool {
    get(cmdline, key).is_some_and(|v| !matches!(v, "0" | "false" | "no"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_flags_values_and_quotes() {
        let c = "console=ttyS0 quiet ingot.modules=virtio_blk,erofs foo=\"a b\" ingot.debug=0\n";
        assert_eq!(get(c, "console"), Some("ttyS0"));
        assert_eq!(get(c, "quiet"), Some(""));
        assert_eq!(get(c, "foo"), Some("a b"));
        assert_eq!(get(c, MODULES), Some("virtio_blk,erofs"));
        assert!(flag(c, "quiet"));
        assert!(!flag(c, DEBUG));
        assert!(!flag(c, POWEROFF));
    }

    #[test]
    fn later_value_wins() {
        assert_eq!(get("a=1 a=2", "a"), Some("2"));
    }

    proptest! {
        #[test]
        fn unquoted_words_round_trip(words in proptest::collection::vec("[a-z0-9._,-]{1,8}(=[a-z0-9._,=-]{0,8})?", 0..12),
                                     sep in "[ \t\n]{1,3}") {
            let line = words.join(&sep);
            let parsed = parse(&line);
            prop_assert_eq!(parsed.len(), words.len());
            for (p, w) in parsed.iter().zip(&words) {
                let (k, v) = match w.split_once('=') { Some((k, v)) => (k, Some(v)), None => (w.as_str(), None) };
                prop_assert_eq!(p.key, k);
                prop_assert_eq!(p.value, v);
            }
        }

        #[test]
        fn arbitrary_input_never_panics(s in "\\PC*") {
            let _ = parse(&s);
        }
    }
}
