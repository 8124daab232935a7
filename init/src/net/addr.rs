//! IPv4 address with prefix length, and MAC addresses, as the configuration writes them.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// `a.b.c.d/len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ipv4Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Cidr {
    fn mask(self) -> u32 {
        u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0)
    }

    /// Whether `ip` is in this address's subnet.
    pub fn contains(self, ip: Ipv4Addr) -> bool {
        (u32::from(ip) ^ u32::from(self.addr)) & self.mask() == 0
    }

    /// The subnet's broadcast address; `None` for /31 and /32, which have none.
    pub fn broadcast(self) -> Option<Ipv4Addr> {
        (self.prefix < 31).then(|| Ipv4Addr::from(u32::from(self.addr) | !self.mask()))
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("`{s}` has no prefix length (expected a.b.c.d/len)"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("`{s}` is not an IPv4 address with prefix length"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| format!("`{s}` has a prefix length outside 0..=32"))?;
        if addr.is_unspecified() || addr.is_multicast() || addr.is_broadcast() {
            return Err(format!("`{s}` is not a host address"));
        }
        Ok(Ipv4Cidr { addr, prefix })
    }
}

/// Prefix length of a contiguous netmask; `None` for a mask like 255.0.255.0.
pub fn prefix_of_mask(mask: Ipv4Addr) -> Option<u8> {
    let m = u32::from(mask);
    let ones = m.leading_ones();
    (m.checked_shl(ones).unwrap_or(0) == 0).then(|| u8::try_from(ones).unwrap_or(32))
}

/// A 6-byte Ethernet address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl FromStr for Mac {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("`{s}` is not a MAC address (expected six hex pairs like 52:54:00:12:34:56)");
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for byte in &mut out {
            let p = parts.next().filter(|p| p.len() == 2).ok_or_else(bad)?;
            *byte = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Mac(out))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_addresses_with_prefix() {
        let c: Ipv4Cidr = "192.168.10.5/24".parse().unwrap();
        assert_eq!(c.to_string(), "192.168.10.5/24");
        assert!(c.contains(Ipv4Addr::new(192, 168, 10, 1)));
        assert!(!c.contains(Ipv4Addr::new(192, 168, 11, 1)));
        assert_eq!(c.broadcast(), Some(Ipv4Addr::new(192, 168, 10, 255)));
        let host: Ipv4Cidr = "10.1.2.3/32".parse().unwrap();
        assert_eq!(host.broadcast(), None);
        assert!(!host.contains(Ipv4Addr::new(10, 1, 2, 4)));
        let all: Ipv4Cidr = "10.1.2.3/0".parse().unwrap();
        assert!(all.contains(Ipv4Addr::new(8, 8, 8, 8)));
        for bad in [
            "10.0.0.1",
            "10.0.0.1/33",
            "10.0.0/24",
            "0.0.0.0/8",
            "224.0.0.1/4",
            "x/1",
            "10.0.0.1/-1",
        ] {
            assert!(bad.parse::<Ipv4Cidr>().is_err(), "{bad}");
        }
        let err = "10.0.0.1".parse::<Ipv4Cidr>().unwrap_err();
        assert_eq!(err, "`10.0.0.1` has no prefix length (expected a.b.c.d/len)");
    }

    #[test]
    fn netmasks_become_prefix_lengths_only_when_contiguous() {
        assert_eq!(prefix_of_mask(Ipv4Addr::new(255, 255, 255, 0)), Some(24));
        assert_eq!(prefix_of_mask(Ipv4Addr::new(255, 255, 255, 255)), Some(32));
        assert_eq!(prefix_of_mask(Ipv4Addr::new(0, 0, 0, 0)), Some(0));
        assert_eq!(prefix_of_mask(Ipv4Addr::new(255, 255, 254, 0)), Some(23));
        assert_eq!(prefix_of_mask(Ipv4Addr::new(255, 0, 255, 0)), None);
    }

    #[test]
    fn macs_parse_in_either_case_and_print_lower() {
        let m: Mac = "52:54:00:AB:cd:0F".parse().unwrap();
        assert_eq!(m.to_string(), "52:54:00:ab:cd:0f");
        assert_eq!("52-54-00-ab-cd-0f".parse::<Mac>().unwrap(), m);
        for bad in [
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:0f:00",
            "52:54:00:ab:cd:0g",
            "525400abcd0f",
            "5:54:00:ab:cd:0f1",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
    }
}
