//! From replies to one offset: the sanity checks on each reply, the offset and delay from its four
//! timestamps, and combining the replies of several servers (median, outliers).
//!
//! All times are nanoseconds: instants since the Unix epoch, offsets as "true time minus our time".

use std::fmt;
use std::net::SocketAddr;

use super::packet::{self, LEAP_UNSYNCHRONIZED, MODE_SERVER, NtpTimestamp, Reply};

const SEC: i64 = 1_000_000_000;
/// A reply that took longer than this for the round trip says little about the time.
pub const MAX_DELAY: i64 = SEC;
/// The largest root distance (half the round trip to the reference clock plus its dispersion) accepted;
/// ntpd's default `maxdist`.
pub const MAX_ROOT_DISTANCE: i64 = 3 * SEC / 2;
/// Server time before this is wrong on its face (2025-01-01, [`packet::ERA_PIVOT_UNIX_SECS`]): the node
/// never sets its clock back before the year its software was made.
pub const MIN_SERVER_TIME: i64 = packet::ERA_PIVOT_UNIX_SECS * SEC;
/// With three or more replies, one whose offset is further from the median than its own error bound
/// plus this margin is an outlier.
pub const OUTLIER_MARGIN: i64 = 25_000_000;

/// Why a reply was not used. [`Reject::is_final`] tells a server's real (if unusable) answer from packets
/// that do not answer our request at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    #[error(transparent)]
    Packet(#[from] packet::Error),
    #[error("came from {0}, expected the server's address")]
    Source(SocketAddr),
    #[error("mode {0}, expected 4 (server)")]
    Mode(u8),
    #[error("version {0}, expected 3 or 4")]
    Version(u8),
    #[error("origin timestamp does not echo our request, expected a reply to it (stale or forged)")]
    Origin,
    #[error("kiss-o'-death {0:?}, expected time: the server refuses to serve it")]
    Kiss(String),
    #[error("stratum {0}, expected 1 to 15 (16: the server is not synchronized)")]
    Stratum(u8),
    #[error("leap indicator 3, expected a synchronized server")]
    Unsynchronized,
    #[error("zero receive or transmit timestamp, expected both set")]
    ZeroTimestamp,
    #[error("server time {0}, expected 2025 or later")]
    TooEarly(String),
    #[error("round-trip delay {0}, expected 0 to 1s")]
    Delay(Secs),
    #[error("root distance {0}, expected below 1.5s")]
    RootDistance(Secs),
}

impl Reject {
    /// Whether this is the server's answer to our request (the origin matched), so waiting longer for
    /// another reply from it is pointless.
    pub fn is_final(&self) -> bool {
        !matches!(
            self,
            Reject::Packet(_) | Reject::Source(_) | Reject::Mode(_) | Reject::Version(_) | Reject::Origin
        )
    }
}

/// Nanoseconds shown as seconds with microsecond precision: `0.001234s`, `-2.500000s`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Secs(pub i64);

impl fmt::Display for Secs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let micros = i128::from(self.0) / 1000;
        let sign = if micros < 0 {
            "-"
        } else if f.sign_plus() {
            "+"
        } else {
            ""
        };
        let micros = micros.unsigned_abs();
        write!(f, "{sign}{}.{:06}s", micros / 1_000_000, micros % 1_000_000)
    }
}

/// One server's usable answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    pub server: SocketAddr,
    /// True time minus ours.
    pub offset: i64,
    /// Round-trip delay, server processing time excluded.
    pub delay: i64,
    /// Half the round trip to the server's reference plus its dispersion, from the reply.
    pub root_distance: i64,
}

impl Sample {
    /// How far the true offset may be from [`Sample::offset`]: half our round trip plus the root
    /// distance (the true time was somewhere inside the exchange, and the server itself may be off).
    pub fn error_bound(&self) -> i64 {
        self.delay / 2 + self.root_distance
    }
}

/// The offset θ and the delay δ of one exchange (RFC 5905 §8) from T1 (we sent), T2 (the server
/// received), T3 (the server sent) and T4 (we received):
/// θ = ((T2 − T1) + (T3 − T4)) / 2, δ = (T4 − T1) − (T3 − T2). Saturates instead of overflowing.
pub fn offset_and_delay(t1: i64, t2: i64, t3: i64, t4: i64) -> (i64, i64) {
    let [t1, t2, t3, t4] = [t1, t2, t3, t4].map(i128::from);
    let offset = ((t2 - t1) + (t3 - t4)).div_euclid(2);
    let delay = (t4 - t1) - (t3 - t2);
    (saturate(offset), saturate(delay))
}

fn saturate(v: i128) -> i64 {
    i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX })
}

/// Checks a datagram `from` an address against the request we sent to `server` with transmit timestamp
/// `nonce` at `t1` (our clock), received at `t4`, and measures it.
pub fn check(
    server: SocketAddr,
    from: SocketAddr,
    bytes: &[u8],
    nonce: NtpTimestamp,
    t1: i64,
    t4: i64,
) -> Result<Sample, Reject> {
    if from != server {
        return Err(Reject::Source(from));
    }
    let r = Reply::parse(bytes)?;
    if r.mode != MODE_SERVER {
        return Err(Reject::Mode(r.mode));
    }
    if !(3..=4).contains(&r.version) {
        return Err(Reject::Version(r.version));
    }
    if r.origin != nonce {
        return Err(Reject::Origin);
    }
    if r.stratum == 0 {
        return Err(Reject::Kiss(kiss_code(&r)));
    }
    if r.stratum > 15 {
        return Err(Reject::Stratum(r.stratum));
    }
    if r.leap == LEAP_UNSYNCHRONIZED {
        return Err(Reject::Unsynchronized);
    }
    if r.receive == NtpTimestamp::ZERO || r.transmit == NtpTimestamp::ZERO {
        return Err(Reject::ZeroTimestamp);
    }
    let (t2, t3) = (r.receive.to_unix_nanos(), r.transmit.to_unix_nanos());
    if t3 < MIN_SERVER_TIME {
        return Err(Reject::TooEarly(super::format_utc(t3)));
    }
    let (offset, delay) = offset_and_delay(t1, t2, t3, t4);
    if !(0..MAX_DELAY).contains(&delay) {
        return Err(Reject::Delay(Secs(delay)));
    }
    let root_distance = packet::short_to_nanos(r.root_delay) / 2 + packet::short_to_nanos(r.root_dispersion);
    if root_distance + delay / 2 >= MAX_ROOT_DISTANCE {
        return Err(Reject::RootDistance(Secs(root_distance + delay / 2)));
    }
    Ok(Sample {
        server,
        offset,
        delay,
        root_distance,
    })
}

/// The kiss code of a stratum-0 reply (`RATE`, `DENY`, …), printable characters only.
fn kiss_code(r: &Reply) -> String {
    r.reference_id
        .iter()
        .map(|b| if b.is_ascii_graphic() { char::from(*b) } else { '?' })
        .collect()
}

/// The median of `values` (the mean of the middle two for an even count); `None` when empty.
pub fn median(values: &[i64]) -> Option<i64> {
    let mut v = values.to_vec();
    v.sort_unstable();
    let n = v.len();
    let hi = *v.get(n / 2)?;
    if n % 2 == 1 {
        return Some(hi);
    }
    let lo = *v.get(n / 2 - 1)?;
    // The mean of two i64 fits an i64.
    Some(((i128::from(lo) + i128::from(hi)).div_euclid(2)) as i64)
}

/// The result of one round over all servers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Combined {
    /// The median offset of the samples kept.
    pub offset: i64,
    /// The kept sample nearest that offset (the lower delay on a tie): the server named in the logs.
    pub best: Sample,
    pub kept: usize,
    /// Servers whose offsets were outliers.
    pub outliers: Vec<SocketAddr>,
    /// The largest distance of a kept offset from the median: the round's jitter.
    pub spread: i64,
}

/// Combines the good samples of a round: the median offset; with three or more, samples further from the
/// first median than their own error bound plus [`OUTLIER_MARGIN`] are dropped first (a server that
/// disagrees with the majority beyond what its delay explains is wrong). `None` without samples, or when
/// no sample is close to the median (two camps of equal size: no majority to believe).
pub fn combine(samples: &[Sample]) -> Option<Combined> {
    let offsets: Vec<i64> = samples.iter().map(|s| s.offset).collect();
    let first = median(&offsets)?;
    let (kept, outliers): (Vec<Sample>, Vec<Sample>) = if samples.len() >= 3 {
        samples.iter().partition(|s| {
            i128::from(s.offset).abs_diff(i128::from(first))
                <= u128::from(s.error_bound().unsigned_abs() + OUTLIER_MARGIN.unsigned_abs())
        })
    } else {
        (samples.to_vec(), Vec::new())
    };
    let offset = median(&kept.iter().map(|s| s.offset).collect::<Vec<_>>())?;
    let distance = |s: &Sample| i128::from(s.offset).abs_diff(i128::from(offset));
    let best = *kept.iter().min_by_key(|s| (distance(s), s.delay))?;
    let spread = kept.iter().map(distance).max().unwrap_or(0);
    Some(Combined {
        offset,
        best,
        kept: kept.len(),
        outliers: outliers.iter().map(|s| s.server).collect(),
        spread: i64::try_from(spread).unwrap_or(i64::MAX),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::clock::packet::PACKET_LEN;
    use proptest::prelude::*;

    const MS: i64 = 1_000_000;
    /// 2026-01-01T00:00:00Z.
    const NOW: i64 = 1_767_225_600 * SEC;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn sample(server: &str, offset_ms: i64, delay_ms: i64) -> Sample {
        Sample {
            server: addr(server),
            offset: offset_ms * MS,
            delay: delay_ms * MS,
            root_distance: 0,
        }
    }

    /// A good reply to `nonce` from a server whose clock is `server_ahead` ahead of ours, received after
    /// `delay` with `processing` spent at the server.
    fn good_reply(nonce: NtpTimestamp, t1: i64, server_ahead: i64, delay: i64, processing: i64) -> Reply {
        let t2 = t1 + (delay - processing) / 2 + server_ahead;
        Reply {
            leap: 0,
            version: 4,
            mode: 4,
            stratum: 2,
            poll: 6,
            precision: -20,
            root_delay: 0x0000_0100,
            root_dispersion: 0x0000_0200,
            reference_id: [10, 0, 0, 1],
            reference: NtpTimestamp::from_unix_nanos(t2 - 10 * SEC),
            origin: nonce,
            receive: NtpTimestamp::from_unix_nanos(t2),
            transmit: NtpTimestamp::from_unix_nanos(t2 + processing),
        }
    }

    #[test]
    fn offset_and_delay_from_the_four_timestamps() {
        // Server 5 s ahead, 20 ms each way, 2 ms processing.
        let (t1, t2, t3, t4) = (
            NOW,
            NOW + 5 * SEC + 20 * MS,
            NOW + 5 * SEC + 22 * MS,
            NOW + 42 * MS,
        );
        assert_eq!(offset_and_delay(t1, t2, t3, t4), (5 * SEC, 40 * MS));
        // Asymmetric paths show up as half the asymmetry in the offset.
        let (t2, t3, t4) = (NOW + 30 * MS, NOW + 30 * MS, NOW + 40 * MS);
        assert_eq!(offset_and_delay(NOW, t2, t3, t4), (10 * MS, 40 * MS));
        // Our clock ahead: negative offset.
        assert_eq!(offset_and_delay(NOW, NOW - SEC, NOW - SEC, NOW), (-SEC, 0));
        assert_eq!(
            offset_and_delay(i64::MIN, i64::MAX, i64::MAX, i64::MIN),
            (i64::MAX, 0)
        );
        assert_eq!(offset_and_delay(i64::MIN, 0, 0, i64::MAX), (0, i64::MAX));
    }

    #[test]
    fn checks_a_good_reply_and_measures_it() {
        let server = addr("10.0.2.2:123");
        let nonce = NtpTimestamp(0x1234_5678_9abc_def0);
        let reply = good_reply(nonce, NOW, 2 * SEC, 10 * MS, MS);
        let s = check(server, server, &reply.to_bytes(), nonce, NOW, NOW + 10 * MS).unwrap();
        assert_eq!((s.offset, s.delay), (2 * SEC, 9 * MS));
        // 256/65536 s / 2 + 512/65536 s.
        assert_eq!(s.root_distance, 9_765_625);
    }

    #[test]
    fn rejects_replies_a_careful_client_must_not_use() {
        let server = addr("10.0.2.2:123");
        let nonce = NtpTimestamp(0x1234_5678_9abc_def0);
        let good = good_reply(nonce, NOW, 0, 10 * MS, MS);
        let run = |r: Reply, from: &str| check(server, addr(from), &r.to_bytes(), nonce, NOW, NOW + 10 * MS);
        let cases: Vec<(Reply, Reject)> = vec![
            (Reply { mode: 3, ..good }, Reject::Mode(3)),
            (Reply { version: 2, ..good }, Reject::Version(2)),
            (Reply { version: 5, ..good }, Reject::Version(5)),
            (
                Reply {
                    origin: NtpTimestamp(1),
                    ..good
                },
                Reject::Origin,
            ),
            (
                Reply {
                    stratum: 0,
                    reference_id: *b"DENY",
                    ..good
                },
                Reject::Kiss("DENY".into()),
            ),
            (Reply { stratum: 16, ..good }, Reject::Stratum(16)),
            (Reply { stratum: 255, ..good }, Reject::Stratum(255)),
            (Reply { leap: 3, ..good }, Reject::Unsynchronized),
            (
                Reply {
                    receive: NtpTimestamp::ZERO,
                    ..good
                },
                Reject::ZeroTimestamp,
            ),
            (
                Reply {
                    transmit: NtpTimestamp::ZERO,
                    ..good
                },
                Reject::ZeroTimestamp,
            ),
            (
                Reply {
                    root_dispersion: 0x0001_8000,
                    ..good
                },
                Reject::RootDistance(Secs(1_500_000_000 + 3_906_250 / 2 + 4_500_000)),
            ),
        ];
        for (reply, want) in cases {
            assert_eq!(run(reply, "10.0.2.2:123"), Err(want.clone()), "{want}");
        }
        assert_eq!(
            run(good, "10.0.2.3:123"),
            Err(Reject::Source(addr("10.0.2.3:123")))
        );
        assert_eq!(
            run(good, "10.0.2.2:124"),
            Err(Reject::Source(addr("10.0.2.2:124")))
        );
        assert!(
            run(
                Reply {
                    version: 3,
                    leap: 1,
                    ..good
                },
                "10.0.2.2:123"
            )
            .is_ok()
        );
        assert!(run(Reply { stratum: 15, ..good }, "10.0.2.2:123").is_ok());

        let early = Reply {
            transmit: NtpTimestamp::from_unix_nanos(MIN_SERVER_TIME - SEC),
            ..good
        };
        assert_eq!(
            run(early, "10.0.2.2:123"),
            Err(Reject::TooEarly("2024-12-31T23:59:59Z".into()))
        );
        // T3 long after T2: the delay comes out negative.
        let slow_server = Reply {
            transmit: NtpTimestamp::from_unix_nanos(NOW + SEC),
            ..good
        };
        assert!(matches!(run(slow_server, "10.0.2.2:123"), Err(Reject::Delay(d)) if d.0 < 0));
        let far = good_reply(nonce, NOW, 0, 1500 * MS, 0);
        assert_eq!(
            check(server, server, &far.to_bytes(), nonce, NOW, NOW + 1500 * MS),
            Err(Reject::Delay(Secs(1500 * MS)))
        );
        assert_eq!(
            Reject::Delay(Secs(1500 * MS)).to_string(),
            "round-trip delay 1.500000s, expected 0 to 1s"
        );
        assert_eq!(
            check(server, server, &[0x24; 20], nonce, NOW, NOW),
            Err(Reject::Packet(packet::Error::TooShort(20)))
        );
    }

    #[test]
    fn only_answers_to_our_request_are_final() {
        assert!(!Reject::Origin.is_final());
        assert!(!Reject::Source(addr("10.0.0.1:123")).is_final());
        assert!(Reject::Stratum(16).is_final());
        assert!(Reject::Unsynchronized.is_final());
    }

    #[test]
    fn seconds_print_signed_with_microseconds() {
        assert_eq!(format!("{:+}", Secs(2_345_000_000)), "+2.345000s");
        assert_eq!(format!("{:+}", Secs(-1_500)), "-0.000001s");
        assert_eq!(format!("{:+}", Secs(0)), "+0.000000s");
        assert_eq!(format!("{}", Secs(40 * MS)), "0.040000s");
        assert_eq!(format!("{}", Secs(i64::MIN)), "-9223372036.854775s");
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[7]), Some(7));
        assert_eq!(median(&[9, 1, 5]), Some(5));
        assert_eq!(median(&[4, 1, 3, 2]), Some(2));
        assert_eq!(median(&[-3, -4]), Some(-4));
        assert_eq!(median(&[i64::MAX, i64::MAX]), Some(i64::MAX));
    }

    #[test]
    fn three_servers_outvote_a_wrong_one() {
        let samples = [
            sample("10.0.0.1:123", 12, 4),
            sample("10.0.0.2:123", 5012, 4),
            sample("10.0.0.3:123", 10, 2),
        ];
        let c = combine(&samples).unwrap();
        assert_eq!(c.outliers, [addr("10.0.0.2:123")]);
        assert_eq!((c.offset, c.kept, c.spread), (11 * MS, 2, MS));
        // Equally near the median: the lower delay names the server.
        assert_eq!(c.best.server, addr("10.0.0.3:123"));
    }

    #[test]
    fn a_large_delay_widens_what_counts_as_agreement() {
        // 300 ms from the median, but a 700 ms round trip means the truth may be 350 ms away.
        let samples = [
            sample("10.0.0.1:123", 0, 2),
            sample("10.0.0.2:123", 300, 700),
            sample("10.0.0.3:123", 1, 2),
            sample("10.0.0.4:123", 400, 100),
            sample("10.0.0.5:123", 2, 2),
        ];
        let c = combine(&samples).unwrap();
        assert_eq!(c.outliers, [addr("10.0.0.4:123")]);
        assert_eq!((c.offset, c.kept), (3 * MS / 2, 4));
    }

    #[test]
    fn two_servers_are_averaged_and_two_equal_camps_give_nothing() {
        let c = combine(&[sample("10.0.0.1:123", 10, 1), sample("10.0.0.2:123", 20, 1)]).unwrap();
        assert_eq!((c.offset, c.kept), (15 * MS, 2));
        assert_eq!(combine(&[]), None);
        let camps = [
            sample("10.0.0.1:123", 0, 1),
            sample("10.0.0.2:123", 1, 1),
            sample("10.0.0.3:123", 9000, 1),
            sample("10.0.0.4:123", 9001, 1),
        ];
        assert_eq!(combine(&camps), None);
    }

    fn valid_bytes() -> impl Strategy<Value = (Vec<u8>, NtpTimestamp)> {
        (any::<u64>(), 0..500 * MS, 0..SEC, any::<i8>()).prop_map(|(nonce, ahead, delay, precision)| {
            let nonce = NtpTimestamp(nonce);
            let r = Reply {
                precision,
                ..good_reply(nonce, NOW, ahead, delay, 0)
            };
            (r.to_bytes().to_vec(), nonce)
        })
    }

    proptest! {
        #[test]
        fn checking_any_bytes_never_panics(
            bytes in proptest::collection::vec(any::<u8>(), 0..100),
            nonce in any::<u64>(),
            t1 in any::<i64>(),
            t4 in any::<i64>(),
        ) {
            let server = addr("10.0.2.2:123");
            let _ = check(server, server, &bytes, NtpTimestamp(nonce), t1, t4);
        }

        /// Flipping bytes of a good reply either leaves it acceptable by every rule, or it is rejected.
        #[test]
        fn mutated_replies_pass_only_when_every_rule_holds(
            (mut bytes, nonce) in valid_bytes(),
            flips in proptest::collection::vec((0..PACKET_LEN, any::<u8>()), 1..6),
            delay in 0..2 * SEC,
        ) {
            let server = addr("10.0.2.2:123");
            for (i, x) in flips {
                bytes[i] ^= x;
            }
            if let Ok(s) = check(server, server, &bytes, nonce, NOW, NOW + delay) {
                let r = Reply::parse(&bytes).unwrap();
                prop_assert_eq!(r.mode, 4);
                prop_assert!(r.version == 3 || r.version == 4);
                prop_assert_eq!(r.origin, nonce);
                prop_assert!((1..=15).contains(&r.stratum));
                prop_assert_ne!(r.leap, 3);
                prop_assert!(r.receive.0 != 0 && r.transmit.0 != 0);
                prop_assert!((0..SEC).contains(&s.delay));
                prop_assert!(r.transmit.to_unix_nanos() >= MIN_SERVER_TIME);
            }
        }

        #[test]
        fn a_bad_field_is_rejected_whatever_the_rest(
            (bytes, nonce) in valid_bytes(),
            bad in prop_oneof![
                (0u8..8).prop_filter("not a server", |m| *m != 4).prop_map(|m| (0usize, 0xf8u8, m)),
                Just((0usize, 0x3f, 3 << 6)),
                Just((1usize, 0, 0)),
                (16u8..=255).prop_map(|s| (1usize, 0, s)),
            ],
        ) {
            let (i, keep, set) = bad;
            let mut bytes = bytes;
            bytes[i] = (bytes[i] & keep) | set;
            let server = addr("10.0.2.2:123");
            prop_assert!(check(server, server, &bytes, nonce, NOW, NOW + MS).is_err());
        }

        #[test]
        fn the_median_has_as_many_offsets_on_each_side(
            offsets in proptest::collection::vec(-10 * SEC..10 * SEC, 1..9),
        ) {
            let m = median(&offsets).unwrap();
            let below = offsets.iter().filter(|o| **o < m).count();
            let above = offsets.iter().filter(|o| **o > m).count();
            prop_assert!(below <= offsets.len() / 2 && above <= offsets.len() / 2);
        }

        #[test]
        fn outliers_never_outvote_a_majority(
            honest in proptest::collection::vec(-5 * MS..5 * MS, 3..6),
            wrong in proptest::collection::vec(prop_oneof![-3600 * SEC..-SEC, SEC..3600 * SEC], 0..3),
        ) {
            prop_assume!(wrong.len() < honest.len());
            let mut samples = Vec::new();
            for (i, o) in honest.iter().chain(wrong.iter()).enumerate() {
                samples.push(Sample {
                    server: SocketAddr::from(([10, 0, 0, u8::try_from(i).unwrap()], 123)),
                    offset: *o,
                    delay: MS,
                    root_distance: 0,
                });
            }
            let c = combine(&samples).unwrap();
            prop_assert!(c.offset.abs() <= 5 * MS);
            prop_assert_eq!(c.outliers.len(), wrong.len());
        }
    }
}
