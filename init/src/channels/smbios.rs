//! SMBIOS type 11 (OEM strings) structures as the kernel's `dmi-sysfs` shows them in
//! `/sys/firmware/dmi/entries/11-<n>/raw`: the formatted area (type, length, handle, string count) followed
//! by the string set, NUL-terminated strings ending in an empty one (SMBIOS 3.x, section 6.1.3 and 7.12).
//!
//! The bytes come from the firmware (under QEMU: whoever wrote the command line), so every offset is
//! checked and nothing here panics.

/// The SMBIOS structure type holding OEM strings.
pub const TYPE_OEM_STRINGS: u8 = 11;
/// Type 11's formatted area: the 4-byte header and the string count.
const MIN_LENGTH: u8 = 5;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("is {0} bytes; an SMBIOS structure starts with a 4-byte header")]
    Short(usize),
    #[error("is an SMBIOS structure of type {0}; expected type 11 (OEM strings)")]
    Type(u8),
    #[error(
        "declares a formatted area of {declared} bytes; type 11 needs at least {MIN_LENGTH} and the entry holds {available}"
    )]
    Length { declared: u8, available: usize },
    #[error("its string set does not end with an empty string (two NUL bytes)")]
    Unterminated,
    #[error("declares {declared} strings but its string set holds {found}")]
    MissingStrings { declared: u8, found: usize },
}

/// One parsed type 11 structure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OemStrings<'a> {
    pub handle: u16,
    /// The strings in order (SMBIOS numbers them from 1), without their NUL terminators.
    pub strings: Vec<&'a [u8]>,
}

/// Parses one raw type 11 structure. Strings beyond the declared count are not OEM strings and are
/// left out; fewer than declared is an error (the structure is cut off).
pub fn parse(raw: &[u8]) -> Result<OemStrings<'_>, Error> {
    let [kind, declared_len, handle_lo, handle_hi, ..] = *raw else {
        return Err(Error::Short(raw.len()));
    };
    if kind != TYPE_OEM_STRINGS {
        return Err(Error::Type(kind));
    }
    let length = usize::from(declared_len);
    if declared_len < MIN_LENGTH || length > raw.len() {
        return Err(Error::Length {
            declared: declared_len,
            available: raw.len(),
        });
    }
    let count = raw[4];
    let mut strings = Vec::new();
    let mut rest = &raw[length..];
    loop {
        let Some(nul) = rest.iter().position(|&b| b == 0) else {
            return Err(Error::Unterminated);
        };
        if nul == 0 {
            break;
        }
        strings.push(&rest[..nul]);
        rest = &rest[nul + 1..];
    }
    if strings.len() < usize::from(count) {
        return Err(Error::MissingStrings {
            declared: count,
            found: strings.len(),
        });
    }
    strings.truncate(usize::from(count));
    Ok(OemStrings {
        handle: u16::from_le_bytes([handle_lo, handle_hi]),
        strings,
    })
}

/// A type 11 structure holding `strings` (none may contain NUL), as firmware lays it out.
#[cfg(test)]
pub fn build(handle: u16, strings: &[&[u8]]) -> Vec<u8> {
    let mut raw = vec![TYPE_OEM_STRINGS, MIN_LENGTH];
    raw.extend_from_slice(&handle.to_le_bytes());
    raw.push(u8::try_from(strings.len()).unwrap_or(u8::MAX));
    for s in strings {
        raw.extend_from_slice(s);
        raw.push(0);
    }
    if strings.is_empty() {
        raw.push(0);
    }
    raw.push(0);
    raw
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_the_strings_qemu_writes() {
        // What `-smbios type=11,value=a,value=io.ingot.node=eA==` gives in sysfs.
        let raw = b"\x0b\x05\x00\x01\x02a\0io.ingot.node=eA==\0\0";
        let s = parse(raw).unwrap();
        assert_eq!(s.handle, 0x100);
        assert_eq!(s.strings, [&b"a"[..], b"io.ingot.node=eA=="]);
    }

    #[test]
    fn no_strings_is_two_nuls() {
        let s = parse(b"\x0b\x05\x34\x12\x00\0\0").unwrap();
        assert_eq!((s.handle, s.strings.len()), (0x1234, 0));
    }

    #[test]
    fn a_longer_formatted_area_is_skipped() {
        let s = parse(b"\x0b\x07\x00\x00\x01\xff\xffx\0\0").unwrap();
        assert_eq!(s.strings, [b"x"]);
    }

    #[test]
    fn broken_structures_say_what_is_wrong() {
        assert_eq!(parse(b"\x0b\x05").unwrap_err(), Error::Short(2));
        assert_eq!(parse(b"\x01\x05\0\0\0\0\0").unwrap_err(), Error::Type(1));
        assert_eq!(
            parse(b"\x0b\x04\0\0\0\0").unwrap_err(),
            Error::Length {
                declared: 4,
                available: 6
            }
        );
        assert_eq!(
            parse(b"\x0b\x09\0\0\x01a\0\0").unwrap_err(),
            Error::Length {
                declared: 9,
                available: 8
            }
        );
        assert_eq!(parse(b"\x0b\x05\0\0\x01abc").unwrap_err(), Error::Unterminated);
        assert_eq!(
            parse(b"\x0b\x05\0\0\x03a\0b\0\0").unwrap_err(),
            Error::MissingStrings {
                declared: 3,
                found: 2
            }
        );
        assert_eq!(
            parse(b"\x0b\x05\0\0\x01a\0b\0\0").unwrap().strings,
            [b"a"],
            "strings past the count are not OEM strings"
        );
    }

    fn oem_string() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(1u8..=255, 1..80)
    }

    proptest! {
        #[test]
        fn built_structures_parse_back(handle in any::<u16>(),
                                       strings in proptest::collection::vec(oem_string(), 0..12)) {
            let refs: Vec<&[u8]> = strings.iter().map(Vec::as_slice).collect();
            let raw = build(handle, &refs);
            let parsed = parse(&raw).unwrap();
            prop_assert_eq!(parsed.handle, handle);
            prop_assert_eq!(parsed.strings, refs);
        }

        #[test]
        fn a_cut_off_structure_is_an_error(strings in proptest::collection::vec(oem_string(), 1..6),
                                          cut in any::<proptest::sample::Index>()) {
            let refs: Vec<&[u8]> = strings.iter().map(Vec::as_slice).collect();
            let raw = build(7, &refs);
            let cut = cut.index(raw.len());
            prop_assert!(parse(&raw[..cut]).is_err(), "{:?}", &raw[..cut]);
        }

        #[test]
        fn arbitrary_bytes_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse(&raw);
        }

        #[test]
        fn mutated_structures_never_panic(strings in proptest::collection::vec(oem_string(), 0..6),
                                          edits in proptest::collection::vec((any::<proptest::sample::Index>(), any::<u8>()), 1..8)) {
            let refs: Vec<&[u8]> = strings.iter().map(Vec::as_slice).collect();
            let mut raw = build(1, &refs);
            for (at, b) in edits {
                let i = at.index(raw.len());
                raw[i] = b;
            }
            if let Ok(parsed) = parse(&raw) {
                // Whatever parses stays inside the input and holds no NUL.
                prop_assert!(parsed.strings.iter().all(|s| !s.contains(&0) && s.len() < raw.len()));
            }
        }
    }
}
