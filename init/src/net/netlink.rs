//! Route netlink without an async runtime: the few requests the network configuration makes (list links,
//! set a link up or its MTU, add or remove an IPv4 address, replace or remove the default route), built
//! and parsed with `netlink-packet-route`, sent over the blocking socket of [`crate::sys::net::Netlink`].
//!
//! Every request asks for an acknowledgement; a kernel refusal becomes an [`Error::Kernel`] that names
//! the operation, so the console reads `adding 10.0.2.15/24 to eth0: File exists (os error 17)`.
//!
//! The fixed headers (`ifinfomsg`, `ifaddrmsg`, `rtmsg`) are the crate's types; attributes are written and
//! read as plain type-length-value items with `netlink-packet-core`, only the handful used. The crate's
//! full attribute enums would link the encoders and parsers of every link kind, route encapsulation and
//! statistics block into PID 1 (half a megabyte of the static binary) for nothing. Replies are parsed
//! defensively: a malformed or unexpected message is an error, never a panic.

use std::io;
use std::net::Ipv4Addr;
use std::num::NonZeroI32;
use std::time::Duration;

use netlink_packet_core::{
    DecodeError, DefaultNla, Emitable, ErrorBuffer, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_DUMP_INTR,
    NLM_F_REPLACE, NLM_F_REQUEST, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload,
    NetlinkSerializable, NlasIterator,
};
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::{AddressHeader, AddressScope};
use netlink_packet_route::link::{LinkFlags, LinkHeader, LinkLayerType};
use netlink_packet_route::route::{RouteFlags, RouteHeader, RouteProtocol, RouteScope, RouteType};

use super::addr::{Ipv4Cidr, Mac};
use crate::sys::net::Netlink;

const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;

// Attribute types (linux/if_link.h, if_addr.h, rtnetlink.h).
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_BROADCAST: u16 = 4;
const IFA_CACHEINFO: u16 = 6;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PRIORITY: u16 = 6;

/// A dump interrupted by a concurrent change is retried this many times.
const DUMP_ATTEMPTS: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("opening the route netlink socket")]
    Open(#[source] io::Error),
    /// The kernel refused, or the socket failed; `what` names the operation.
    #[error("{what}")]
    Kernel {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{what}: the kernel's answer is malformed")]
    Malformed {
        what: String,
        #[source]
        source: DecodeError,
    },
    #[error("{what}: the kernel changed the links {DUMP_ATTEMPTS} times while listing them")]
    Interrupted { what: String },
}

impl Error {
    /// The errno the kernel answered with, if that is what this is.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Kernel { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// One network interface as the kernel lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<Mac>,
    /// `ARPHRD_ETHER`.
    pub ethernet: bool,
    pub loopback: bool,
    /// `IFLA_INFO_KIND` (`veth`, `bridge`, `vlan` …); `None` for a physical device.
    pub kind: Option<String>,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// The physical layer is up (`IFF_LOWER_UP`, the carrier).
    pub carrier: bool,
    pub mtu: Option<u32>,
}

/// Who installed a route, as `ip route` shows it (`proto dhcp`, `proto static`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Static,
    Dhcp,
}

/// The requests this module makes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    ListLinks,
    SetUp {
        index: u32,
        up: bool,
    },
    SetMtu {
        index: u32,
        mtu: u32,
    },
    /// Adds or updates (`NLM_F_REPLACE`) an address; `lifetime` `None` is forever.
    AddAddress {
        index: u32,
        cidr: Ipv4Cidr,
        lifetime: Option<Duration>,
    },
    RemoveAddress {
        index: u32,
        cidr: Ipv4Cidr,
    },
    /// Adds, or replaces the one with the same metric.
    ReplaceDefaultRoute {
        index: u32,
        route: DefaultRoute,
    },
    RemoveDefaultRoute {
        index: u32,
        route: DefaultRoute,
    },
}

/// A default route in the main table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DefaultRoute {
    pub gateway: Ipv4Addr,
    /// Lower is preferred; routes of different metrics coexist.
    pub metric: u32,
    pub origin: Origin,
    /// For a gateway outside every subnet of the link (a /32 lease).
    pub onlink: bool,
}

/// The inner message of a request: a fixed header and its attributes.
#[derive(Debug)]
enum Body {
    Link(u16, LinkHeader, Vec<DefaultNla>),
    Address(u16, AddressHeader, Vec<DefaultNla>),
    Route(u16, RouteHeader, Vec<DefaultNla>),
}

impl Body {
    fn parts(&self) -> (u16, &dyn Emitable, &[DefaultNla]) {
        match self {
            Body::Link(t, h, a) => (*t, h, a),
            Body::Address(t, h, a) => (*t, h, a),
            Body::Route(t, h, a) => (*t, h, a),
        }
    }
}

impl NetlinkSerializable for Body {
    fn message_type(&self) -> u16 {
        self.parts().0
    }

    fn buffer_len(&self) -> usize {
        let (_, header, attrs) = self.parts();
        header.buffer_len() + attrs.buffer_len()
    }

    fn serialize(&self, buffer: &mut [u8]) {
        let (_, header, attrs) = self.parts();
        let (head, rest) = buffer.split_at_mut(header.buffer_len().min(buffer.len()));
        header.emit(head);
        attrs.emit(rest);
    }
}

fn ipv4(kind: u16, ip: Ipv4Addr) -> DefaultNla {
    DefaultNla::new(kind, ip.octets().to_vec())
}

fn u32_attr(kind: u16, v: u32) -> DefaultNla {
    DefaultNla::new(kind, v.to_ne_bytes().to_vec())
}

fn address_message(index: u32, cidr: Ipv4Cidr) -> (AddressHeader, Vec<DefaultNla>) {
    let header = AddressHeader {
        family: AddressFamily::Inet,
        prefix_len: cidr.prefix,
        scope: AddressScope::Universe,
        index,
        ..AddressHeader::default()
    };
    (
        header,
        vec![ipv4(IFA_LOCAL, cidr.addr), ipv4(IFA_ADDRESS, cidr.addr)],
    )
}

fn default_route(index: u32, route: &DefaultRoute) -> (RouteHeader, Vec<DefaultNla>) {
    let header = RouteHeader {
        address_family: AddressFamily::Inet,
        table: RouteHeader::RT_TABLE_MAIN,
        scope: RouteScope::Universe,
        kind: RouteType::Unicast,
        ..RouteHeader::default()
    };
    let attrs = vec![
        ipv4(RTA_GATEWAY, route.gateway),
        u32_attr(RTA_OIF, index),
        u32_attr(RTA_PRIORITY, route.metric),
    ];
    (header, attrs)
}

/// The kernel's representation of "forever" in address lifetimes.
const INFINITY_LIFETIME: u32 = u32::MAX;

impl Request {
    /// The request as bytes, with sequence number `seq`.
    pub fn encode(&self, seq: u32) -> Vec<u8> {
        let create = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
        let link = |index, flags, change_mask| LinkHeader {
            interface_family: AddressFamily::Unspec,
            index,
            flags,
            change_mask,
            ..LinkHeader::default()
        };
        let (flags, body) = match self {
            Request::ListLinks => (
                NLM_F_REQUEST | NLM_F_DUMP,
                Body::Link(
                    RTM_GETLINK,
                    link(0, LinkFlags::empty(), LinkFlags::empty()),
                    vec![],
                ),
            ),
            Request::SetUp { index, up } => {
                let flags = if *up { LinkFlags::Up } else { LinkFlags::empty() };
                (
                    NLM_F_REQUEST | NLM_F_ACK,
                    Body::Link(RTM_NEWLINK, link(*index, flags, LinkFlags::Up), vec![]),
                )
            }
            Request::SetMtu { index, mtu } => (
                NLM_F_REQUEST | NLM_F_ACK,
                Body::Link(
                    RTM_NEWLINK,
                    link(*index, LinkFlags::empty(), LinkFlags::empty()),
                    vec![u32_attr(IFLA_MTU, *mtu)],
                ),
            ),
            Request::AddAddress {
                index,
                cidr,
                lifetime,
            } => {
                let (header, mut attrs) = address_message(*index, *cidr);
                if let Some(b) = cidr.broadcast() {
                    attrs.push(ipv4(IFA_BROADCAST, b));
                }
                if let Some(l) = lifetime {
                    // struct ifa_cacheinfo: preferred, valid, created, updated.
                    let secs = u32::try_from(l.as_secs()).unwrap_or(INFINITY_LIFETIME);
                    let mut info = Vec::with_capacity(16);
                    for v in [secs, secs, 0, 0] {
                        info.extend(v.to_ne_bytes());
                    }
                    attrs.push(DefaultNla::new(IFA_CACHEINFO, info));
                }
                (create, Body::Address(RTM_NEWADDR, header, attrs))
            }
            Request::RemoveAddress { index, cidr } => {
                let (header, attrs) = address_message(*index, *cidr);
                (
                    NLM_F_REQUEST | NLM_F_ACK,
                    Body::Address(RTM_DELADDR, header, attrs),
                )
            }
            Request::ReplaceDefaultRoute { index, route } => {
                let (mut header, attrs) = default_route(*index, route);
                header.protocol = match route.origin {
                    Origin::Static => RouteProtocol::Static,
                    Origin::Dhcp => RouteProtocol::Dhcp,
                };
                if route.onlink {
                    header.flags = RouteFlags::Onlink;
                }
                (create, Body::Route(RTM_NEWROUTE, header, attrs))
            }
            Request::RemoveDefaultRoute { index, route } => {
                let (mut header, attrs) = default_route(*index, route);
                // Deleting matches on the fields that are set; scope "nowhere" matches any scope.
                header.scope = RouteScope::NoWhere;
                (
                    NLM_F_REQUEST | NLM_F_ACK,
                    Body::Route(RTM_DELROUTE, header, attrs),
                )
            }
        };
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = seq;
        let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(body));
        msg.finalize();
        let mut buf = vec![0u8; msg.buffer_len()];
        msg.serialize(&mut buf);
        buf
    }
}

/// What one received datagram said about the request with a given sequence number.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reply {
    pub links: Vec<Link>,
    /// The request is answered: an `NLMSG_ERROR` (an ACK when `errno` is `None`) or the end of a dump.
    pub finished: bool,
    /// The kernel's error number (positive), when it refused.
    pub errno: Option<i32>,
    /// A dump was interrupted by a concurrent change and must be repeated.
    pub interrupted: bool,
}

/// Parses one datagram of netlink messages, keeping only those answering `seq`.
pub fn parse_reply(mut bytes: &[u8], seq: u32) -> Result<Reply, DecodeError> {
    let mut reply = Reply::default();
    while !bytes.is_empty() {
        let buf = NetlinkBuffer::new_checked(bytes)?;
        let len = usize::try_from(buf.length()).unwrap_or(usize::MAX);
        // Messages are 4-byte aligned; the last one may lack its padding.
        let advance = len
            .checked_add(3)
            .map(|l| l & !3)
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        if buf.sequence_number() == seq {
            if buf.flags() & NLM_F_DUMP_INTR != 0 {
                reply.interrupted = true;
            }
            let payload = buf.payload();
            match buf.message_type() {
                NLMSG_ERROR => {
                    let err = ErrorBuffer::new_checked(&payload)?;
                    reply.errno = err.code().map(NonZeroI32::get).map(i32::saturating_abs);
                    reply.finished = true;
                }
                NLMSG_DONE => reply.finished = true,
                RTM_NEWLINK => reply.links.push(parse_link(payload)?),
                _ => {}
            }
        }
        bytes = bytes.get(advance..).unwrap_or_default();
    }
    Ok(reply)
}

/// A NUL-terminated (or not) attribute string.
fn attr_string(value: &[u8]) -> String {
    let end = value.iter().position(|b| *b == 0).unwrap_or(value.len());
    String::from_utf8_lossy(value.get(..end).unwrap_or_default()).into_owned()
}

fn parse_link(payload: &[u8]) -> Result<Link, DecodeError> {
    let header = LinkHeader::parse(payload)?;
    let mut link = Link {
        index: header.index,
        name: String::new(),
        mac: None,
        ethernet: header.link_layer_type == LinkLayerType::Ether,
        loopback: header.flags.contains(LinkFlags::Loopback),
        kind: None,
        up: header.flags.contains(LinkFlags::Up),
        carrier: header.flags.contains(LinkFlags::LowerUp),
        mtu: None,
    };
    let attrs = payload.get(header.buffer_len()..).unwrap_or_default();
    for nla in NlasIterator::new(attrs) {
        let nla = nla?;
        let value = nla.value();
        match nla.kind() {
            IFLA_IFNAME => link.name = attr_string(value),
            IFLA_ADDRESS => link.mac = <[u8; 6]>::try_from(value).ok().map(Mac),
            IFLA_MTU => link.mtu = <[u8; 4]>::try_from(value).ok().map(u32::from_ne_bytes),
            IFLA_LINKINFO => {
                for info in NlasIterator::new(value) {
                    let info = info?;
                    if info.kind() == IFLA_INFO_KIND {
                        link.kind = Some(attr_string(info.value()));
                    }
                }
            }
            _ => {}
        }
    }
    if link.name.is_empty() {
        return Err(DecodeError::from("link without a name"));
    }
    Ok(link)
}

/// The route netlink socket with its request/answer bookkeeping.
#[derive(Debug)]
pub struct Rtnl {
    sock: Netlink,
    seq: u32,
    buf: Vec<u8>,
}

impl Rtnl {
    pub fn open() -> Result<Rtnl, Error> {
        Ok(Rtnl {
            sock: Netlink::open().map_err(Error::Open)?,
            seq: 0,
            buf: vec![0u8; 64 * 1024],
        })
    }

    /// Sends `req` and collects the answer to it.
    fn transact(&mut self, req: &Request, what: &dyn Fn() -> String) -> Result<Vec<Link>, Error> {
        for _ in 0..DUMP_ATTEMPTS {
            self.seq = self.seq.wrapping_add(1);
            let seq = self.seq;
            let kernel = |source| Error::Kernel { what: what(), source };
            self.sock.send(&req.encode(seq)).map_err(kernel)?;
            let mut links = Vec::new();
            let mut interrupted = false;
            loop {
                let n = self.sock.recv(&mut self.buf).map_err(kernel)?;
                let reply = parse_reply(self.buf.get(..n).unwrap_or_default(), seq)
                    .map_err(|source| Error::Malformed { what: what(), source })?;
                links.extend(reply.links);
                interrupted |= reply.interrupted;
                if let Some(errno) = reply.errno {
                    return Err(kernel(io::Error::from_raw_os_error(errno)));
                }
                if reply.finished {
                    break;
                }
            }
            if !interrupted {
                return Ok(links);
            }
        }
        Err(Error::Interrupted { what: what() })
    }

    pub fn links(&mut self) -> Result<Vec<Link>, Error> {
        let mut links = self.transact(&Request::ListLinks, &|| "listing network links".to_owned())?;
        links.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(links)
    }

    pub fn set_up(&mut self, link: &Link, up: bool) -> Result<(), Error> {
        let state = if up { "up" } else { "down" };
        self.transact(
            &Request::SetUp {
                index: link.index,
                up,
            },
            &|| format!("setting {} {state}", link.name),
        )
        .map(drop)
    }

    pub fn set_mtu(&mut self, link: &Link, mtu: u32) -> Result<(), Error> {
        self.transact(
            &Request::SetMtu {
                index: link.index,
                mtu,
            },
            &|| format!("setting the MTU of {} to {mtu}", link.name),
        )
        .map(drop)
    }

    pub fn add_address(
        &mut self,
        link: &Link,
        cidr: Ipv4Cidr,
        lifetime: Option<Duration>,
    ) -> Result<(), Error> {
        let req = Request::AddAddress {
            index: link.index,
            cidr,
            lifetime,
        };
        self.transact(&req, &|| format!("adding {cidr} to {}", link.name))
            .map(drop)
    }

    pub fn remove_address(&mut self, link: &Link, cidr: Ipv4Cidr) -> Result<(), Error> {
        let req = Request::RemoveAddress {
            index: link.index,
            cidr,
        };
        self.transact(&req, &|| format!("removing {cidr} from {}", link.name))
            .map(drop)
    }

    pub fn replace_default_route(&mut self, link: &Link, route: DefaultRoute) -> Result<(), Error> {
        let req = Request::ReplaceDefaultRoute {
            index: link.index,
            route,
        };
        let gateway = route.gateway;
        self.transact(&req, &|| {
            format!("setting the default route via {gateway} on {}", link.name)
        })
        .map(drop)
    }

    pub fn remove_default_route(&mut self, link: &Link, route: DefaultRoute) -> Result<(), Error> {
        let req = Request::RemoveDefaultRoute {
            index: link.index,
            route,
        };
        let gateway = route.gateway;
        self.transact(&req, &|| {
            format!("removing the default route via {gateway} on {}", link.name)
        })
        .map(drop)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;
    use netlink_packet_core::Parseable;
    use netlink_packet_route::address::{AddressAttribute, AddressMessage};
    use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
    use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
    use proptest::prelude::*;
    use std::net::IpAddr;

    /// An already emitted inner message.
    struct Raw(u16, Vec<u8>);

    impl NetlinkSerializable for Raw {
        fn message_type(&self) -> u16 {
            self.0
        }
        fn buffer_len(&self) -> usize {
            self.1.len()
        }
        fn serialize(&self, buffer: &mut [u8]) {
            buffer.copy_from_slice(&self.1);
        }
    }

    /// An `RTM_NEWLINK` message as the kernel sends it in a dump.
    pub fn link_message(
        seq: u32,
        index: u32,
        name: &str,
        mac: [u8; 6],
        kind: Option<&str>,
        flags: LinkFlags,
    ) -> Vec<u8> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.header.link_layer_type = LinkLayerType::Ether;
        m.header.flags = flags;
        m.attributes.push(LinkAttribute::IfName(name.to_owned()));
        m.attributes.push(LinkAttribute::Address(mac.to_vec()));
        m.attributes.push(LinkAttribute::Mtu(1500));
        if let Some(k) = kind {
            m.attributes
                .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Other(
                    k.to_owned(),
                ))]));
        }
        let mut payload = vec![0u8; m.buffer_len()];
        m.emit(&mut payload);
        let mut header = NetlinkHeader::default();
        header.sequence_number = seq;
        header.flags = 2; // NLM_F_MULTI
        let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(Raw(RTM_NEWLINK, payload)));
        msg.finalize();
        let mut buf = vec![0u8; msg.buffer_len()];
        msg.serialize(&mut buf);
        buf
    }

    fn control(seq: u32, kind: u16, code: i32) -> Vec<u8> {
        let mut buf = vec![0u8; 16 + 4 + 16];
        let len = buf.len() as u32;
        buf[0..4].copy_from_slice(&len.to_ne_bytes());
        buf[4..6].copy_from_slice(&kind.to_ne_bytes());
        buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        buf[16..20].copy_from_slice(&code.to_ne_bytes());
        buf
    }

    #[test]
    fn parses_a_link_dump_and_its_end() {
        let mut bytes = link_message(
            7,
            2,
            "eth0",
            [0x52, 0x54, 0, 0x12, 0x34, 0x56],
            None,
            LinkFlags::Up | LinkFlags::LowerUp,
        );
        bytes.extend(link_message(
            7,
            3,
            "veth0",
            [2, 0, 0, 0, 0, 1],
            Some("veth"),
            LinkFlags::empty(),
        ));
        bytes.extend(link_message(
            6,
            4,
            "stale",
            [2, 0, 0, 0, 0, 2],
            None,
            LinkFlags::empty(),
        ));
        let reply = parse_reply(&bytes, 7).unwrap();
        assert!(!reply.finished);
        assert_eq!(reply.links.len(), 2);
        let eth0 = &reply.links[0];
        assert_eq!((eth0.index, eth0.name.as_str()), (2, "eth0"));
        assert_eq!(eth0.mac.unwrap().to_string(), "52:54:00:12:34:56");
        assert!(eth0.ethernet && eth0.up && eth0.carrier && eth0.kind.is_none());
        assert_eq!(eth0.mtu, Some(1500));
        assert_eq!(reply.links[1].kind.as_deref(), Some("veth"));
        assert!(!reply.links[1].up && !reply.links[1].carrier);

        let done = parse_reply(&control(7, NLMSG_DONE, 0), 7).unwrap();
        assert!(done.finished && done.errno.is_none());
    }

    #[test]
    fn an_error_answer_carries_the_errno_and_an_ack_none() {
        let nack = parse_reply(&control(3, NLMSG_ERROR, -17), 3).unwrap();
        assert_eq!((nack.finished, nack.errno), (true, Some(17)));
        let ack = parse_reply(&control(3, NLMSG_ERROR, 0), 3).unwrap();
        assert_eq!((ack.finished, ack.errno), (true, None));
        let other = parse_reply(&control(4, NLMSG_ERROR, -17), 3).unwrap();
        assert!(!other.finished);
    }

    #[test]
    fn kernel_errors_name_the_operation() {
        let e = Error::Kernel {
            what: format!("adding {} to eth0", "10.0.2.15/24".parse::<Ipv4Cidr>().unwrap()),
            source: io::Error::from_raw_os_error(17),
        };
        assert_eq!(
            crate::failure::chain(&e),
            "adding 10.0.2.15/24 to eth0: File exists (os error 17)"
        );
        assert_eq!(e.errno(), Some(17));
    }

    #[test]
    fn requests_encode_the_fields_the_kernel_reads() {
        let cidr: Ipv4Cidr = "10.0.2.15/24".parse().unwrap();
        let bytes = Request::AddAddress {
            index: 2,
            cidr,
            lifetime: Some(Duration::from_secs(86400)),
        }
        .encode(9);
        let nl = NetlinkBuffer::new_checked(&bytes).unwrap();
        assert_eq!(nl.message_type(), RTM_NEWADDR);
        assert_eq!(
            nl.flags(),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
        );
        assert_eq!(nl.sequence_number(), 9);
        assert_eq!(nl.length() as usize, bytes.len());
        let msg = AddressMessage::parse(nl.payload()).unwrap();
        assert_eq!((msg.header.index, msg.header.prefix_len), (2, 24));
        assert!(
            msg.attributes
                .contains(&AddressAttribute::Local(IpAddr::V4(cidr.addr)))
        );
        assert!(
            msg.attributes
                .contains(&AddressAttribute::Broadcast(Ipv4Addr::new(10, 0, 2, 255)))
        );
        assert!(
            msg.attributes
                .iter()
                .any(|a| matches!(a, AddressAttribute::CacheInfo(c) if c.ifa_valid == 86400))
        );

        let route = DefaultRoute {
            gateway: Ipv4Addr::new(10, 0, 2, 2),
            metric: 1,
            origin: Origin::Dhcp,
            onlink: true,
        };
        let bytes = Request::ReplaceDefaultRoute { index: 2, route }.encode(10);
        let nl = NetlinkBuffer::new_checked(&bytes).unwrap();
        assert_eq!(nl.message_type(), RTM_NEWROUTE);
        let msg = RouteMessage::parse(nl.payload()).unwrap();
        assert_eq!(msg.header.destination_prefix_length, 0);
        assert_eq!(msg.header.protocol, RouteProtocol::Dhcp);
        assert_eq!(msg.header.flags, RouteFlags::Onlink);
        assert!(
            msg.attributes
                .contains(&RouteAttribute::Gateway(RouteAddress::Inet(Ipv4Addr::new(
                    10, 0, 2, 2
                ))))
        );
        assert!(msg.attributes.contains(&RouteAttribute::Oif(2)));
        assert!(msg.attributes.contains(&RouteAttribute::Priority(1)));
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), seq in 0u32..4) {
            let _ = parse_reply(&bytes, seq);
        }

        #[test]
        fn mutated_link_dumps_never_panic(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut bytes = link_message(1, 2, "eth0", [0x52, 0x54, 0, 0x12, 0x34, 0x56], Some("veth"), LinkFlags::Up);
            bytes.extend(control(1, NLMSG_DONE, 0));
            for (at, value) in edits {
                let i = at.index(bytes.len());
                bytes[i] = value;
            }
            let _ = parse_reply(&bytes, 1);
            let _ = parse_reply(&bytes[..cut.index(bytes.len())], 1);
        }

        #[test]
        fn arbitrary_link_attributes_never_panic(
            attrs in proptest::collection::vec((0u16..70, proptest::collection::vec(any::<u8>(), 0..40)), 0..8),
        ) {
            // A well-framed RTM_NEWLINK whose attributes are random: type, length and value.
            let mut payload = vec![0u8; 16];
            for (kind, value) in attrs {
                let len = 4 + value.len();
                payload.extend((len as u16).to_ne_bytes());
                payload.extend(kind.to_ne_bytes());
                payload.extend(&value);
                payload.resize(payload.len().div_ceil(4) * 4, 0);
            }
            let mut bytes = vec![0u8; 16];
            bytes[0..4].copy_from_slice(&((16 + payload.len()) as u32).to_ne_bytes());
            bytes[4..6].copy_from_slice(&RTM_NEWLINK.to_ne_bytes());
            bytes.extend(payload);
            let _ = parse_reply(&bytes, 0);
        }
    }
}
