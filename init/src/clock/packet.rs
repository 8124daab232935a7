//! NTP packets as an SNTP client sends and reads them (RFC 5905 §7.3, RFC 4330), and the NTP time formats.
//!
//! Times inside the client are nanoseconds since the Unix epoch (`i64`, enough for 1678–2262). NTP
//! timestamps carry seconds since 1900 modulo 2³², so the era is implicit: [`NtpTimestamp::to_unix_nanos`]
//! resolves it to the instant within 68 years of [`ERA_PIVOT`], which keeps working past the 2036 rollover
//! and whatever the node's RTC says.

use std::time::Duration;

/// Bytes of an NTP header without extension fields or MAC.
pub const PACKET_LEN: usize = 48;
/// Seconds from 1900-01-01 (NTP's epoch) to 1970-01-01 (Unix').
pub const NTP_TO_UNIX_SECS: i64 = 2_208_988_800;
/// 2025-01-01T00:00:00Z: NTP timestamps resolve to 1956..2093 around it.
pub const ERA_PIVOT_UNIX_SECS: i64 = 1_735_689_600;

const NANOS_PER_SEC: i128 = 1_000_000_000;
const ERA: i128 = 1 << 32;

pub const MODE_CLIENT: u8 = 3;
pub const MODE_SERVER: u8 = 4;
pub const VERSION: u8 = 4;
/// Leap indicator 3: "alarm condition, clock not synchronized".
pub const LEAP_UNSYNCHRONIZED: u8 = 3;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("{0} bytes, expected an NTP packet of at least {PACKET_LEN}")]
    TooShort(usize),
}

/// A 64-bit NTP timestamp: 32 bits of seconds since 1900 (in some era) and 32 bits of fraction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NtpTimestamp(pub u64);

impl NtpTimestamp {
    pub const ZERO: NtpTimestamp = NtpTimestamp(0);

    #[cfg(test)]
    /// The timestamp of an instant given in nanoseconds since the Unix epoch (the era is dropped).
    pub fn from_unix_nanos(unix_nanos: i64) -> NtpTimestamp {
        let nanos = i128::from(unix_nanos) + i128::from(NTP_TO_UNIX_SECS) * NANOS_PER_SEC;
        let secs = nanos.div_euclid(NANOS_PER_SEC).rem_euclid(ERA);
        let sub = nanos.rem_euclid(NANOS_PER_SEC);
        // Rounded up so that `to_unix_nanos` (which rounds down) gives back the same nanosecond.
        let frac = (sub * ERA + NANOS_PER_SEC - 1) / NANOS_PER_SEC;
        // Both parts are below 2³²: `secs` by the modulo, `frac` because `sub` < 10⁹.
        NtpTimestamp(((secs as u64) << 32) | frac as u64)
    }

    pub fn seconds(self) -> u32 {
        (self.0 >> 32) as u32
    }

    pub fn fraction(self) -> u32 {
        self.0 as u32
    }

    /// Nanoseconds since the Unix epoch of the instant this timestamp names in the era that puts it
    /// within 2³¹ s (68 years) of [`ERA_PIVOT_UNIX_SECS`].
    pub fn to_unix_nanos(self) -> i64 {
        let pivot = i128::from(ERA_PIVOT_UNIX_SECS + NTP_TO_UNIX_SECS);
        let secs = i128::from(self.seconds());
        // The era whose copy of `secs` lies in [pivot - 2³¹, pivot + 2³¹).
        let delta = (secs - pivot + ERA / 2).rem_euclid(ERA) - ERA / 2;
        let unix_secs = pivot + delta - i128::from(NTP_TO_UNIX_SECS);
        let frac_nanos = (i128::from(self.fraction()) * NANOS_PER_SEC) / ERA;
        // Within about ±2⁶² ns by construction, so it fits.
        (unix_secs * NANOS_PER_SEC + frac_nanos) as i64
    }
}

/// NTP's 32-bit "short format" (16.16 seconds), used for root delay and root dispersion, in nanoseconds.
pub fn short_to_nanos(v: u32) -> i64 {
    // At most 65536 s, well within i64.
    ((i128::from(v) * NANOS_PER_SEC) >> 16) as i64
}

/// Nanoseconds since the Unix epoch of a [`Duration`] since it, saturating far in the future.
pub fn unix_nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// The request a client sends: version 4, mode 3, and every field zero except the transmit timestamp,
/// which carries `nonce` instead of our time (RFC 9109 §4 and the NTP data-minimization draft: the
/// server only echoes it, so a random value matches replies to requests and tells nobody our clock).
pub fn request(nonce: NtpTimestamp) -> [u8; PACKET_LEN] {
    let mut p = [0u8; PACKET_LEN];
    p[0] = (VERSION << 3) | MODE_CLIENT;
    p[40..48].copy_from_slice(&nonce.0.to_be_bytes());
    p
}

/// The fields of a received packet, unchecked (see [`super::sample::check`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reply {
    pub leap: u8,
    pub version: u8,
    pub mode: u8,
    pub stratum: u8,
    pub poll: i8,
    pub precision: i8,
    /// Round-trip delay to the reference clock, 16.16 seconds.
    pub root_delay: u32,
    /// Dispersion to the reference clock, 16.16 seconds.
    pub root_dispersion: u32,
    /// The reference's id; in a kiss-o'-death packet (stratum 0) four ASCII letters saying why.
    pub reference_id: [u8; 4],
    pub reference: NtpTimestamp,
    /// Our request's transmit timestamp, echoed.
    pub origin: NtpTimestamp,
    /// When the server received the request (T2).
    pub receive: NtpTimestamp,
    /// When the server sent the reply (T3).
    pub transmit: NtpTimestamp,
}

impl Reply {
    /// Splits a datagram into fields; extension fields and a MAC after the header are ignored.
    pub fn parse(bytes: &[u8]) -> Result<Reply, Error> {
        let Some(h) = bytes.first_chunk::<PACKET_LEN>() else {
            return Err(Error::TooShort(bytes.len()));
        };
        let u32_at = |i: usize| u32::from_be_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let ts_at = |i: usize| NtpTimestamp((u64::from(u32_at(i)) << 32) | u64::from(u32_at(i + 4)));
        Ok(Reply {
            leap: h[0] >> 6,
            version: (h[0] >> 3) & 7,
            mode: h[0] & 7,
            stratum: h[1],
            poll: i8::from_be_bytes([h[2]]),
            precision: i8::from_be_bytes([h[3]]),
            root_delay: u32_at(4),
            root_dispersion: u32_at(8),
            reference_id: [h[12], h[13], h[14], h[15]],
            reference: ts_at(16),
            origin: ts_at(24),
            receive: ts_at(32),
            transmit: ts_at(40),
        })
    }

    /// The packet with these fields (what a server would send); for tests.
    #[cfg(test)]
    pub fn to_bytes(self) -> [u8; PACKET_LEN] {
        let mut p = [0u8; PACKET_LEN];
        p[0] = (self.leap << 6) | ((self.version & 7) << 3) | (self.mode & 7);
        p[1] = self.stratum;
        p[2] = self.poll.to_be_bytes()[0];
        p[3] = self.precision.to_be_bytes()[0];
        p[4..8].copy_from_slice(&self.root_delay.to_be_bytes());
        p[8..12].copy_from_slice(&self.root_dispersion.to_be_bytes());
        p[12..16].copy_from_slice(&self.reference_id);
        p[16..24].copy_from_slice(&self.reference.0.to_be_bytes());
        p[24..32].copy_from_slice(&self.origin.0.to_be_bytes());
        p[32..40].copy_from_slice(&self.receive.0.to_be_bytes());
        p[40..48].copy_from_slice(&self.transmit.0.to_be_bytes());
        p
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SEC: i64 = 1_000_000_000;

    #[test]
    fn converts_the_unix_epoch_and_fractions() {
        let t = NtpTimestamp::from_unix_nanos(0);
        assert_eq!(t.seconds(), 2_208_988_800);
        assert_eq!(t.fraction(), 0);
        let t = NtpTimestamp::from_unix_nanos(SEC / 2);
        assert_eq!(t.fraction(), 1 << 31);
        let t = NtpTimestamp::from_unix_nanos(SEC / 4 + 5 * SEC);
        assert_eq!((t.seconds(), t.fraction()), (2_208_988_805, 1 << 30));
        assert_eq!(t.to_unix_nanos(), 5 * SEC + SEC / 4);
        // The smallest fraction step is 232.8 ps; one nanosecond is 4.29 steps, rounded up to 5.
        assert_eq!(NtpTimestamp::from_unix_nanos(1).fraction(), 5);
    }

    #[test]
    fn resolves_eras_across_the_2036_rollover() {
        // 2036-02-07T06:28:16Z is the first second of era 1: its NTP seconds wrap to 0.
        let rollover = 2_085_978_496 * SEC;
        let t = NtpTimestamp::from_unix_nanos(rollover);
        assert_eq!(t.0, 0);
        assert_eq!(t.to_unix_nanos(), rollover);
        let before = NtpTimestamp::from_unix_nanos(rollover - 1);
        assert_eq!(before.seconds(), u32::MAX);
        assert_eq!(before.to_unix_nanos(), rollover - 1);
        let after = NtpTimestamp::from_unix_nanos(rollover + 3 * SEC);
        assert_eq!((after.seconds(), after.to_unix_nanos()), (3, rollover + 3 * SEC));
        // An RTC without battery says 1970; that still resolves to 1970, in era 0.
        assert_eq!(NtpTimestamp::from_unix_nanos(42 * SEC).to_unix_nanos(), 42 * SEC);
    }

    #[test]
    fn short_format_is_16_16_seconds() {
        assert_eq!(short_to_nanos(0x0001_0000), SEC);
        assert_eq!(short_to_nanos(0x0000_8000), SEC / 2);
        assert_eq!(short_to_nanos(0x0000_0001), 15_258);
    }

    #[test]
    fn a_request_is_version_4_mode_3_with_only_the_nonce() {
        let p = request(NtpTimestamp(0x0102_0304_0506_0708));
        assert_eq!(p[0], 0x23);
        assert!(p[1..40].iter().all(|b| *b == 0));
        assert_eq!(&p[40..], &[1, 2, 3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn parses_a_reply_from_chrony() {
        // A reply chronyd 4.3 (`local stratum 8`) sent to a request whose transmit was 0x123456789abcdef0.
        let bytes = hex(
            "240800e700000000000000007f7f0101eeac40ba69871be4123456789abcdef0eeac40bc2d97ffa1eeac40bc2da21014",
        );
        let r = Reply::parse(&bytes).unwrap();
        assert_eq!((r.leap, r.version, r.mode, r.stratum), (0, 4, 4, 8));
        assert_eq!((r.poll, r.precision), (0, -25));
        assert_eq!(r.reference_id, [127, 127, 1, 1]);
        assert_eq!(r.origin, NtpTimestamp(0x1234_5678_9abc_def0));
        assert_eq!(r.receive.seconds(), 0xeeac_40bc);
        // 2026-11-21T16:09:32Z.
        assert_eq!(r.transmit.to_unix_nanos() / SEC, 1_795_277_372);
        assert_eq!(Reply::parse(&r.to_bytes()).unwrap(), r);
        // Extension fields after the header are ignored; a short packet is not a reply.
        let mut longer = bytes.clone();
        longer.extend_from_slice(&[0; 20]);
        assert_eq!(Reply::parse(&longer).unwrap(), r);
        assert_eq!(Reply::parse(&bytes[..47]), Err(Error::TooShort(47)));
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    proptest! {
        #[test]
        fn unix_nanos_round_trip_within_the_era_window(
            nanos in (ERA_PIVOT_UNIX_SECS - (1 << 31) + 1) * SEC..(ERA_PIVOT_UNIX_SECS + (1 << 31) - 1) * SEC,
        ) {
            prop_assert_eq!(NtpTimestamp::from_unix_nanos(nanos).to_unix_nanos(), nanos);
        }

        #[test]
        fn any_timestamp_resolves_near_the_pivot(raw in any::<u64>()) {
            let t = NtpTimestamp(raw);
            let unix = t.to_unix_nanos();
            prop_assert!((unix / SEC - ERA_PIVOT_UNIX_SECS).abs() <= 1 << 31);
            prop_assert_eq!(NtpTimestamp::from_unix_nanos(unix).seconds(), t.seconds());
        }

        #[test]
        fn parsing_any_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
            match Reply::parse(&bytes) {
                Ok(r) => {
                    prop_assert!(bytes.len() >= PACKET_LEN);
                    prop_assert_eq!(&r.to_bytes()[..], &bytes[..PACKET_LEN]);
                }
                Err(Error::TooShort(n)) => {
                    prop_assert!(n < PACKET_LEN);
                    prop_assert_eq!(n, bytes.len());
                }
            }
        }
    }
}
