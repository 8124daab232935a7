//! Kernel log records as `/dev/kmsg` hands them out (Documentation/ABI/testing/dev-kmsg):
//! `<prefix>,<sequence>,<microseconds>,<flags>[,<more>…];<text>`, where the prefix is
//! `facility * 8 + level`. Records a process writes to `/dev/kmsg` never get facility 0 (the kernel gives
//! them `LOG_USER`), so facility 0 means the kernel itself said it.

/// One parsed record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub facility: u32,
    pub level: u8,
    pub seq: u64,
    /// Microseconds since boot.
    pub usec: u64,
    /// The text, with the kernel's `\xNN` escapes left as they are.
    pub text: &'a str,
}

impl Record<'_> {
    /// Whether the kernel wrote this record (not a process through `/dev/kmsg`).
    pub fn is_from_kernel(&self) -> bool {
        self.facility == 0
    }
}

/// Parses one record's first line (a trailing newline and continuation lines are ignored); `None` for
/// anything else.
pub fn parse(line: &str) -> Option<Record<'_>> {
    let line = line.split('\n').next().unwrap_or_default();
    let (header, text) = line.split_once(';')?;
    let mut fields = header.split(',');
    let prefix: u32 = fields.next()?.parse().ok()?;
    let seq = fields.next()?.parse().ok()?;
    let usec = fields.next()?.parse().ok()?;
    // The flags field: `-`, or `c` for a record continued by the next one.
    let flags = fields.next()?;
    if flags.len() != 1 {
        return None;
    }
    Some(Record {
        facility: prefix >> 3,
        level: u8::try_from(prefix & 7).ok()?,
        seq,
        usec,
        text,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_kernel_and_user_records() {
        let r = parse("3,1234,5678901,-;device-mapper: verity: 254:2: data block 57 is corrupted\n").unwrap();
        assert_eq!(
            r,
            Record {
                facility: 0,
                level: 3,
                seq: 1234,
                usec: 5_678_901,
                text: "device-mapper: verity: 254:2: data block 57 is corrupted",
            }
        );
        assert!(r.is_from_kernel());
        // A process's record (facility LOG_USER), with a caller field and a dictionary line.
        let r = parse("14,9,100,-,caller=T1;hello; world\n SUBSYSTEM=block\n").unwrap();
        assert_eq!((r.facility, r.level, r.text), (1, 6, "hello; world"));
        assert!(!r.is_from_kernel());
    }

    #[test]
    fn refuses_what_is_not_a_record() {
        for bad in [
            "",
            "no header",
            "3,1,2;missing flags",
            "x,1,2,-;bad prefix",
            "3,-1,2,-;negative sequence",
            "3,1,2,--;long flags",
            " SUBSYSTEM=block",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(s in "\\PC{0,200}") {
            let _ = parse(&s);
        }

        #[test]
        fn records_round_trip(prefix in 0u32..2048, seq in any::<u64>(), usec in any::<u64>(),
                              flag in "[-c]", text in "[^\n]{0,120}") {
            let line = format!("{prefix},{seq},{usec},{flag};{text}\n");
            let r = parse(&line).unwrap();
            prop_assert_eq!(r.facility, prefix >> 3);
            prop_assert_eq!(u32::from(r.level), prefix & 7);
            prop_assert_eq!(r.seq, seq);
            prop_assert_eq!(r.usec, usec);
            prop_assert_eq!(r.text, text.as_str());
        }
    }
}
