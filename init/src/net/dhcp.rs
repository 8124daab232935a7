//! The DHCPv4 client (RFC 2131) as a state machine without I/O: it is handed packets and the time
//! (`CLOCK_BOOTTIME`) and answers with [`Event`]s (packets to send, a lease to apply, an address to
//! remove, a line worth logging). [`super::Network`] moves packets between it and the socket and applies
//! leases over netlink; the tests drive it with simulated time.
//!
//! ```text
//! Init ─► Selecting ──OFFER──► Requesting ──ACK──► Bound ──T1──► Renewing ──T2──► Rebinding ──expiry──► Selecting
//!            ▲                     │ NAK, no answer          ▲         │ ACK             │ ACK
//!            └─────────────────────┘                         └─────────┴─────────────────┘
//!                         NAK in any state: the address goes, discovery starts again
//! ```
//!
//! Retransmission follows RFC 2131 §4.1: DISCOVER and the first REQUEST are repeated after 4, 8, 16, 32,
//! then every 64 s, each ±1 s at random; a REQUEST without answer for 60 s sends the client back to
//! discovery. Renewal (unicast to the server) and rebinding (broadcast) are repeated after half the time
//! left until T2 or expiry, at least 10 s apart (the RFC suggests 60 s, which a short lease would not
//! leave room for).
//!
//! Replies are checked before use: BOOTREPLY, our transaction id, our hardware address, a usable
//! `yiaddr` and, for offers, a server identifier. A lease without a lease time gets [`DEFAULT_LEASE`];
//! T1 and T2 default to 50 % and 87.5 % of it when missing or inconsistent. A lease of 0xffffffff seconds
//! is infinite and never renewed.
//!
//! Requests carry the broadcast flag while the interface has no address, so the server's answer reaches
//! a socket that cannot receive unicast yet.
//!
//! Packets: `dhcproto` names the codes (options, message types, op codes, flags); the bytes are written
//! and read here, a 240-byte fixed part and a dozen options. dhcproto's own `Message` codec would link,
//! through its error types, a DNS library with an IDNA implementation and its Unicode tables (about
//! 200 KiB of PID 1) to decode options the client never reads. The tests build server replies and decode
//! the client's requests with that codec, so both sides are checked against an independent
//! implementation. Not done: DHCPDECLINE after an ARP probe, DHCPRELEASE at
//! shutdown, INIT-REBOOT (asking for the previous boot's address), classless static routes (option 121).

use std::net::Ipv4Addr;
use std::time::Duration;

use dhcproto::v4::{self, Flags, HType, MessageType, Opcode, OptionCode};

use super::addr::{Ipv4Cidr, Mac, prefix_of_mask};

/// Used when an ACK carries no lease time.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(3600);
/// The lease time that means "forever".
const INFINITE_SECS: u32 = u32::MAX;
/// First retransmission delay of DISCOVER and REQUEST; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(4);
const MAX_BACKOFF: Duration = Duration::from_secs(64);
/// How long REQUEST is repeated before discovery starts over.
const REQUEST_GIVE_UP: Duration = Duration::from_secs(60);
/// Minimum time between renewal (and rebinding) retransmissions.
const MIN_RENEW_RETRY: Duration = Duration::from_secs(10);
/// When "no offer yet" is worth a console line.
const SLOW_DISCOVERY: Duration = Duration::from_secs(30);
/// BOOTP relays and some servers drop shorter packets.
const MIN_PACKET: usize = 300;

/// Where a packet goes: the limited broadcast address or the server, port 67 either way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destination {
    Broadcast,
    Unicast(Ipv4Addr),
}

/// A lease the client holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub cidr: Ipv4Cidr,
    /// The server identifier: where renewals go.
    pub server: Ipv4Addr,
    /// Default gateways, preferred first.
    pub routers: Vec<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    /// Option 42.
    pub ntp: Vec<Ipv4Addr>,
    /// Option 15, only when it is a plausible domain name.
    pub domain: Option<String>,
    /// Option 26, only when at least 576 (the IPv4 minimum every host must accept).
    pub mtu: Option<u16>,
    /// When the request this lease answers was sent; the lease times count from here.
    pub start: Duration,
    pub duration: Duration,
    pub t1: Duration,
    pub t2: Duration,
}

impl Lease {
    pub fn infinite(&self) -> bool {
        self.duration.as_secs() >= u64::from(INFINITE_SECS)
    }

    pub fn renew_at(&self) -> Duration {
        self.start.saturating_add(self.t1)
    }

    pub fn rebind_at(&self) -> Duration {
        self.start.saturating_add(self.t2)
    }

    pub fn expires_at(&self) -> Duration {
        self.start.saturating_add(self.duration)
    }

    /// `lease=86400s` or `lease=infinite`, as the summary shows it.
    pub fn duration_text(&self) -> String {
        if self.infinite() {
            "infinite".to_owned()
        } else {
            format!("{}s", self.duration.as_secs())
        }
    }
}

/// Why a lease's address must be removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Loss {
    Expired,
    /// The server answered a request with DHCPNAK.
    Refused {
        server: Option<Ipv4Addr>,
        message: Option<String>,
    },
    /// A renewal was answered with a different address.
    Replaced,
}

/// What the client wants done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Send {
        to: Destination,
        bytes: Vec<u8>,
    },
    /// A new lease (or a new address): configure it.
    Bound(Lease),
    /// The held lease was extended; times and options may have changed, the address has not.
    Renewed(Lease),
    /// The address of `lease` must go.
    Lost {
        lease: Lease,
        why: Loss,
    },
    /// Something worth one console line (a warning).
    Note(String),
}

/// What the client puts in its requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Params {
    pub mac: Mac,
    /// Sent as option 12 so the server can register the name.
    pub hostname: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Offer {
    address: Ipv4Addr,
    server: Ipv4Addr,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    /// Waiting to start discovery at `at` (after a refusal).
    Init {
        at: Duration,
    },
    Selecting {
        xid: u32,
        started: Duration,
        sent: u32,
        next: Duration,
        noted: bool,
    },
    Requesting {
        xid: u32,
        started: Duration,
        offer: Offer,
        first_sent: Duration,
        sent: u32,
        next: Duration,
    },
    Bound {
        lease: Lease,
    },
    Renewing {
        lease: Lease,
        xid: u32,
        first_sent: Duration,
        next: Duration,
    },
    Rebinding {
        lease: Lease,
        xid: u32,
        first_sent: Duration,
        next: Duration,
    },
}

/// xorshift64*: enough for transaction ids and jitter, and reproducible in tests.
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn xid(&mut self) -> u32 {
        (self.next() >> 32) as u32
    }

    /// `base` ± up to one second (RFC 2131 §4.1).
    fn jitter(&mut self, base: Duration) -> Duration {
        let ms = self.next() % 2001;
        (base + Duration::from_millis(ms)).saturating_sub(Duration::from_secs(1))
    }
}

#[derive(Clone, Debug)]
pub struct Client {
    params: Params,
    rng: Rng,
    state: State,
    /// Refusals in a row; delays the next discovery so a confused server cannot make us spin.
    refusals: u32,
}

impl Client {
    /// A client that sends its first DISCOVER at `now`. `seed` feeds transaction ids and jitter.
    pub fn new(params: Params, seed: u64, now: Duration) -> Client {
        Client {
            params,
            rng: Rng(seed | 1),
            state: State::Init { at: now },
            refusals: 0,
        }
    }

    /// The state for the summary line.
    pub fn state_name(&self) -> &'static str {
        match self.state {
            State::Init { .. } | State::Selecting { .. } => "discovering",
            State::Requesting { .. } => "requesting",
            State::Bound { .. } => "bound",
            State::Renewing { .. } => "renewing",
            State::Rebinding { .. } => "rebinding",
        }
    }

    /// The lease whose address is in use, if any.
    pub fn lease(&self) -> Option<&Lease> {
        match &self.state {
            State::Bound { lease } | State::Renewing { lease, .. } | State::Rebinding { lease, .. } => {
                Some(lease)
            }
            _ => None,
        }
    }

    /// When [`Client::on_timer`] must run next.
    pub fn deadline(&self) -> Duration {
        match &self.state {
            State::Init { at } => *at,
            State::Selecting { next, .. } | State::Requesting { next, .. } => *next,
            State::Bound { lease } => lease.renew_at(),
            State::Renewing { lease, next, .. } => (*next).min(lease.rebind_at()),
            State::Rebinding { lease, next, .. } => (*next).min(lease.expires_at()),
        }
    }

    /// Does what is due at `now`: (re)transmissions and lease timers.
    pub fn on_timer(&mut self, now: Duration) -> Vec<Event> {
        let mut events = Vec::new();
        // A long pause (a suspended VM) may make several steps due at once.
        for _ in 0..4 {
            if now < self.deadline() {
                break;
            }
            self.step(now, &mut events);
        }
        events
    }

    fn step(&mut self, now: Duration, events: &mut Vec<Event>) {
        match self.state.clone() {
            State::Init { .. } => self.discover(now, events),
            State::Selecting {
                xid,
                started,
                sent,
                noted,
                ..
            } => {
                let waited = now.saturating_sub(started);
                let noted = noted || {
                    let slow = waited >= SLOW_DISCOVERY;
                    if slow {
                        events.push(Event::Note(format!(
                            "no DHCP offer after {} s, still asking",
                            waited.as_secs()
                        )));
                    }
                    slow
                };
                let bytes = self.discover_packet(xid, secs(now, started));
                events.push(Event::Send {
                    to: Destination::Broadcast,
                    bytes,
                });
                let next = now + self.backoff(sent);
                self.state = State::Selecting {
                    xid,
                    started,
                    sent: sent + 1,
                    next,
                    noted,
                };
            }
            State::Requesting {
                xid,
                started,
                offer,
                first_sent,
                sent,
                ..
            } => {
                if now.saturating_sub(first_sent) >= REQUEST_GIVE_UP {
                    events.push(Event::Note(format!(
                        "no answer from DHCP server {} to the request for {}, discovering again",
                        offer.server, offer.address
                    )));
                    self.discover(now, events);
                    return;
                }
                let bytes = self.select_packet(xid, secs(now, started), &offer);
                events.push(Event::Send {
                    to: Destination::Broadcast,
                    bytes,
                });
                let next = (now + self.backoff(sent)).min(first_sent + REQUEST_GIVE_UP);
                self.state = State::Requesting {
                    xid,
                    started,
                    offer,
                    first_sent,
                    sent: sent + 1,
                    next,
                };
            }
            State::Bound { lease } => {
                let xid = self.rng.xid();
                self.renew(now, lease, xid, now, events);
            }
            State::Renewing {
                lease,
                xid,
                first_sent,
                ..
            } => {
                if now >= lease.rebind_at() {
                    events.push(Event::Note(format!(
                        "no answer from DHCP server {} to the renewal of {}, asking any server",
                        lease.server, lease.cidr
                    )));
                    let xid = self.rng.xid();
                    self.rebind(now, lease, xid, now, events);
                } else {
                    self.renew(now, lease, xid, first_sent, events);
                }
            }
            State::Rebinding {
                lease,
                xid,
                first_sent,
                ..
            } => {
                if now >= lease.expires_at() {
                    events.push(Event::Lost {
                        lease,
                        why: Loss::Expired,
                    });
                    self.discover(now, events);
                } else {
                    self.rebind(now, lease, xid, first_sent, events);
                }
            }
        }
    }

    fn backoff(&mut self, sent: u32) -> Duration {
        let base = FIRST_BACKOFF
            .checked_mul(1 << sent.min(4))
            .unwrap_or(MAX_BACKOFF)
            .min(MAX_BACKOFF);
        self.rng.jitter(base)
    }

    fn discover(&mut self, now: Duration, events: &mut Vec<Event>) {
        let xid = self.rng.xid();
        self.state = State::Selecting {
            xid,
            started: now,
            sent: 0,
            next: now,
            noted: false,
        };
        self.step(now, events);
    }

    fn renew(
        &mut self,
        now: Duration,
        lease: Lease,
        xid: u32,
        first_sent: Duration,
        events: &mut Vec<Event>,
    ) {
        let bytes = self.renew_packet(xid, secs(now, first_sent), lease.cidr.addr);
        events.push(Event::Send {
            to: Destination::Unicast(lease.server),
            bytes,
        });
        let until = lease.rebind_at();
        let next = (now + (until.saturating_sub(now) / 2).max(MIN_RENEW_RETRY)).min(until);
        self.state = State::Renewing {
            lease,
            xid,
            first_sent,
            next,
        };
    }

    fn rebind(
        &mut self,
        now: Duration,
        lease: Lease,
        xid: u32,
        first_sent: Duration,
        events: &mut Vec<Event>,
    ) {
        let bytes = self.renew_packet(xid, secs(now, first_sent), lease.cidr.addr);
        events.push(Event::Send {
            to: Destination::Broadcast,
            bytes,
        });
        let until = lease.expires_at();
        let next = (now + (until.saturating_sub(now) / 2).max(MIN_RENEW_RETRY)).min(until);
        self.state = State::Rebinding {
            lease,
            xid,
            first_sent,
            next,
        };
    }

    /// Handles one datagram that arrived on the client port at `now`.
    pub fn on_packet(&mut self, now: Duration, bytes: &[u8]) -> Vec<Event> {
        let mut events = Vec::new();
        let Some(reply) = parse(bytes) else {
            return events;
        };
        let (xid, waiting_since) = match &self.state {
            State::Init { .. } | State::Bound { .. } => return events,
            State::Selecting { xid, .. } => (*xid, None),
            State::Requesting { xid, first_sent, .. }
            | State::Renewing { xid, first_sent, .. }
            | State::Rebinding { xid, first_sent, .. } => (*xid, Some(*first_sent)),
        };
        if reply.xid != xid || reply.mac != Some(self.params.mac) {
            return events;
        }
        match (reply.kind, waiting_since) {
            (MessageType::Offer, None) => {
                let (Some(server), true) = (reply.server, usable(reply.yiaddr)) else {
                    return events;
                };
                let State::Selecting { started, .. } = self.state else {
                    return events;
                };
                let offer = Offer {
                    address: reply.yiaddr,
                    server,
                };
                self.state = State::Requesting {
                    xid,
                    started,
                    offer,
                    first_sent: now,
                    sent: 0,
                    next: now,
                };
                self.step(now, &mut events);
            }
            (MessageType::Ack, Some(first_sent)) => {
                if !usable(reply.yiaddr) {
                    return events;
                }
                let known_server = match &self.state {
                    State::Requesting { offer, .. } => Some(offer.server),
                    State::Renewing { lease, .. } | State::Rebinding { lease, .. } => Some(lease.server),
                    _ => None,
                };
                let Some(server) = reply.server.or(known_server) else {
                    return events;
                };
                let lease = reply.lease(server, first_sent);
                let previous = self.lease().cloned();
                self.refusals = 0;
                self.state = State::Bound { lease: lease.clone() };
                match previous {
                    Some(old) if old.cidr.addr == lease.cidr.addr => events.push(Event::Renewed(lease)),
                    Some(old) => {
                        events.push(Event::Lost {
                            lease: old,
                            why: Loss::Replaced,
                        });
                        events.push(Event::Bound(lease));
                    }
                    None => events.push(Event::Bound(lease)),
                }
            }
            (MessageType::Nak, Some(_)) => {
                if let Some(lease) = self.lease().cloned() {
                    let why = Loss::Refused {
                        server: reply.server,
                        message: reply.message.clone(),
                    };
                    events.push(Event::Lost { lease, why });
                } else {
                    let from = reply.server.map(|s| format!(" {s}")).unwrap_or_default();
                    let text = reply
                        .message
                        .as_deref()
                        .map(|m| format!(" ({m})"))
                        .unwrap_or_default();
                    events.push(Event::Note(format!(
                        "DHCP server{from} refused the offered address{text}, discovering again"
                    )));
                }
                let delay = Duration::from_secs(1 << self.refusals.min(6));
                self.refusals = self.refusals.saturating_add(1);
                self.state = State::Init { at: now + delay };
            }
            _ => {}
        }
        events
    }

    /// A request with the options every request carries, and `extra`.
    fn packet(
        &self,
        xid: u32,
        secs: u16,
        kind: MessageType,
        ciaddr: Ipv4Addr,
        extra: &[(OptionCode, &[u8])],
    ) -> Vec<u8> {
        let mut client_id = vec![1u8];
        client_id.extend(self.params.mac.0);
        let requested: Vec<u8> = [
            OptionCode::SubnetMask,
            OptionCode::Router,
            OptionCode::DomainNameServer,
            OptionCode::DomainName,
            OptionCode::InterfaceMtu,
            OptionCode::BroadcastAddr,
            OptionCode::NtpServers,
            OptionCode::AddressLeaseTime,
            OptionCode::Renewal,
            OptionCode::Rebinding,
        ]
        .into_iter()
        .map(u8::from)
        .collect();
        let kind = [u8::from(kind)];
        let mut options: Vec<(OptionCode, &[u8])> = vec![
            (OptionCode::MessageType, &kind),
            (OptionCode::ClientIdentifier, &client_id),
            (OptionCode::ParameterRequestList, &requested),
        ];
        if let Some(name) = &self.params.hostname {
            options.push((OptionCode::Hostname, name.as_bytes()));
        }
        options.extend_from_slice(extra);
        // While the interface has no address, only a broadcast answer reaches it.
        let broadcast = ciaddr.is_unspecified();
        let mut buf = Vec::with_capacity(MIN_PACKET);
        write_request(&mut buf, xid, secs, broadcast, ciaddr, &self.params.mac, &options);
        if buf.len() < MIN_PACKET {
            buf.resize(MIN_PACKET, 0);
        }
        buf
    }

    fn discover_packet(&self, xid: u32, secs: u16) -> Vec<u8> {
        self.packet(xid, secs, MessageType::Discover, Ipv4Addr::UNSPECIFIED, &[])
    }

    /// REQUEST in SELECTING: names the offer and its server, broadcast so other servers withdraw theirs.
    fn select_packet(&self, xid: u32, secs: u16, offer: &Offer) -> Vec<u8> {
        let address = offer.address.octets();
        let server = offer.server.octets();
        let extra = [
            (OptionCode::RequestedIpAddress, &address[..]),
            (OptionCode::ServerIdentifier, &server[..]),
        ];
        self.packet(xid, secs, MessageType::Request, Ipv4Addr::UNSPECIFIED, &extra)
    }

    /// REQUEST in RENEWING and REBINDING: the address in `ciaddr`, no server identifier (RFC 2131 §4.3.2).
    fn renew_packet(&self, xid: u32, secs: u16, address: Ipv4Addr) -> Vec<u8> {
        self.packet(xid, secs, MessageType::Request, address, &[])
    }
}

/// A BOOTREQUEST: the fixed part, the magic cookie, `options` (values longer than 255 bytes are cut), the
/// end mark.
fn write_request(
    buf: &mut Vec<u8>,
    xid: u32,
    secs: u16,
    broadcast: bool,
    ciaddr: Ipv4Addr,
    mac: &Mac,
    options: &[(OptionCode, &[u8])],
) {
    buf.extend([u8::from(Opcode::BootRequest), u8::from(HType::Eth), 6, 0]); // op, htype, hlen, hops
    buf.extend(xid.to_be_bytes());
    buf.extend(secs.to_be_bytes());
    let flags = if broadcast {
        Flags::default().set_broadcast()
    } else {
        Flags::default()
    };
    buf.extend(u16::from(flags).to_be_bytes());
    buf.extend(ciaddr.octets());
    buf.extend([0u8; 12]); // yiaddr, siaddr, giaddr
    buf.extend(mac.0);
    buf.extend([0u8; 10 + 64 + 128]); // the rest of chaddr, sname, file
    buf.extend(v4::MAGIC);
    for (code, value) in options {
        let value = value.get(..255).unwrap_or(value);
        buf.extend([u8::from(*code), u8::try_from(value.len()).unwrap_or(u8::MAX)]);
        buf.extend(value);
    }
    buf.push(u8::from(OptionCode::End));
}

fn secs(now: Duration, since: Duration) -> u16 {
    u16::try_from(now.saturating_sub(since).as_secs()).unwrap_or(u16::MAX)
}

/// An address a host may use as its own.
fn usable(ip: Ipv4Addr) -> bool {
    !(ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_loopback()
        || ip.octets()[0] == 0)
}

/// The fields of a server's reply the client uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub kind: MessageType,
    pub xid: u32,
    /// `chaddr`, when it is a 6-byte Ethernet address.
    pub mac: Option<Mac>,
    pub yiaddr: Ipv4Addr,
    pub server: Option<Ipv4Addr>,
    pub mask: Option<Ipv4Addr>,
    pub routers: Vec<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub ntp: Vec<Ipv4Addr>,
    pub domain: Option<String>,
    pub mtu: Option<u16>,
    pub lease_secs: Option<u32>,
    pub t1_secs: Option<u32>,
    pub t2_secs: Option<u32>,
    /// Option 56, a NAK's reason.
    pub message: Option<String>,
}

/// The fixed BOOTP part and the magic cookie that precede the options.
const FIXED_PART: usize = 240;

/// Parses a datagram as a DHCP reply; `None` for anything else (garbage, a request, no message type).
///
/// Only the options the client uses are decoded, so untrusted bytes meet only these few lines. Options
/// that occur several times are concatenated (RFC 3396); a truncated option ends the options.
pub fn parse(bytes: &[u8]) -> Option<Reply> {
    let fixed: &[u8; FIXED_PART] = bytes.get(..FIXED_PART)?.try_into().ok()?;
    if Opcode::from(fixed[0]) != Opcode::BootReply || fixed[236..] != v4::MAGIC {
        return None;
    }
    let word = |at: usize| <[u8; 4]>::try_from(fixed.get(at..at + 4).unwrap_or_default()).ok();
    let mac = (HType::from(fixed[1]) == HType::Eth && fixed[2] == 6)
        .then(|| <[u8; 6]>::try_from(&fixed[28..34]).ok().map(Mac))
        .flatten();
    let mut options: Vec<(u8, Vec<u8>)> = Vec::new();
    let mut rest = bytes.get(FIXED_PART..).unwrap_or_default();
    while let Some((&code, tail)) = rest.split_first() {
        if code == u8::from(OptionCode::Pad) {
            rest = tail;
            continue;
        }
        if code == u8::from(OptionCode::End) {
            break;
        }
        let Some((value, next)) = tail.split_first().and_then(|(&len, v)| {
            let len = usize::from(len);
            Some((v.get(..len)?, v.get(len..)?))
        }) else {
            break;
        };
        match options.iter_mut().find(|(c, _)| *c == code) {
            Some((_, v)) => v.extend(value),
            None => options.push((code, value.to_vec())),
        }
        rest = next;
    }
    let mut reply = Reply {
        kind: MessageType::Unknown(0),
        xid: u32::from_be_bytes(word(4)?),
        mac,
        yiaddr: Ipv4Addr::from(word(16)?),
        server: None,
        mask: None,
        routers: Vec::new(),
        dns: Vec::new(),
        ntp: Vec::new(),
        domain: None,
        mtu: None,
        lease_secs: None,
        t1_secs: None,
        t2_secs: None,
        message: None,
    };
    let mut kind = None;
    for (code, data) in &options {
        let data = data.as_slice();
        match OptionCode::from(*code) {
            OptionCode::MessageType => kind = <[u8; 1]>::try_from(data).ok().map(|[t]| MessageType::from(t)),
            OptionCode::ServerIdentifier => reply.server = ipv4(data).filter(|s| usable(*s)),
            OptionCode::SubnetMask => reply.mask = ipv4(data),
            OptionCode::Router => reply.routers = usable_ipv4s(data),
            OptionCode::DomainNameServer => reply.dns = usable_ipv4s(data),
            OptionCode::NtpServers => reply.ntp = usable_ipv4s(data),
            OptionCode::DomainName => {
                reply.domain = std::str::from_utf8(data)
                    .ok()
                    .map(|d| d.trim_end_matches(['.', '\0']).to_owned())
                    .filter(|d| domain_name(d));
            }
            OptionCode::InterfaceMtu => {
                reply.mtu = <[u8; 2]>::try_from(data)
                    .ok()
                    .map(u16::from_be_bytes)
                    .filter(|m| *m >= 576);
            }
            OptionCode::AddressLeaseTime => reply.lease_secs = be_u32(data),
            OptionCode::Renewal => reply.t1_secs = be_u32(data),
            OptionCode::Rebinding => reply.t2_secs = be_u32(data),
            OptionCode::Message => {
                let text = String::from_utf8_lossy(data);
                reply.message = Some(text.chars().filter(|c| !c.is_control()).take(200).collect());
            }
            _ => {}
        }
    }
    reply.kind = kind?;
    Some(reply)
}

fn ipv4(data: &[u8]) -> Option<Ipv4Addr> {
    <[u8; 4]>::try_from(data).ok().map(Ipv4Addr::from)
}

fn be_u32(data: &[u8]) -> Option<u32> {
    <[u8; 4]>::try_from(data).ok().map(u32::from_be_bytes)
}

/// A list of addresses, without those no host can be reached at; empty when the length is not a
/// multiple of four.
fn usable_ipv4s(data: &[u8]) -> Vec<Ipv4Addr> {
    if !data.len().is_multiple_of(4) {
        return Vec::new();
    }
    data.chunks_exact(4)
        .filter_map(ipv4)
        .filter(|ip| usable(*ip))
        .collect()
}

/// Letters, digits, hyphens and dots, as `resolv.conf`'s `search` line may carry.
fn domain_name(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 253
        && d.split('.').all(|l| !l.is_empty() && l.len() <= 63)
        && d.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

impl Reply {
    /// The lease an ACK grants, counted from `start`.
    fn lease(&self, server: Ipv4Addr, start: Duration) -> Lease {
        let prefix = self
            .mask
            .and_then(prefix_of_mask)
            .unwrap_or_else(|| classful_prefix(self.yiaddr));
        let duration = self
            .lease_secs
            .map_or(DEFAULT_LEASE, |s| Duration::from_secs(u64::from(s.max(1))));
        let (t1, t2) = if self.lease_secs == Some(INFINITE_SECS) {
            (duration, duration)
        } else {
            let t1 = self.t1_secs.map(|s| Duration::from_secs(u64::from(s)));
            let t2 = self.t2_secs.map(|s| Duration::from_secs(u64::from(s)));
            match (t1, t2) {
                (Some(t1), Some(t2)) if t1 <= t2 && t2 <= duration => (t1, t2),
                (Some(t1), None) if t1 <= duration.mul_f64(0.875) => (t1, duration.mul_f64(0.875)),
                (None, Some(t2)) if t2 <= duration && duration / 2 <= t2 => (duration / 2, t2),
                _ => (duration / 2, duration.mul_f64(0.875)),
            }
        };
        Lease {
            cidr: Ipv4Cidr {
                addr: self.yiaddr,
                prefix,
            },
            server,
            routers: self.routers.clone(),
            dns: self.dns.clone(),
            ntp: self.ntp.clone(),
            domain: self.domain.clone(),
            mtu: self.mtu,
            start,
            duration,
            t1,
            t2,
        }
    }
}

/// The pre-CIDR prefix of an address's class, for a server that sends no subnet mask.
fn classful_prefix(ip: Ipv4Addr) -> u8 {
    match ip.octets()[0] {
        0..=127 => 8,
        128..=191 => 16,
        _ => 24,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
pub(crate) mod tests {
    use super::*;
    use dhcproto::v4::DhcpOption;
    use dhcproto::{Decodable, Decoder, Encodable};
    use proptest::prelude::*;

    pub const MAC: Mac = Mac([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
    const ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    fn client() -> Client {
        Client::new(
            Params {
                mac: MAC,
                hostname: Some("node1".into()),
            },
            42,
            s(10),
        )
    }

    /// The request packets among `events`, decoded.
    fn sent(events: &[Event]) -> Vec<(Destination, v4::Message)> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Send { to, bytes } => {
                    Some((*to, v4::Message::decode(&mut Decoder::new(bytes)).unwrap()))
                }
                _ => None,
            })
            .collect()
    }

    fn kind(m: &v4::Message) -> MessageType {
        match m.opts().get(OptionCode::MessageType) {
            Some(DhcpOption::MessageType(t)) => *t,
            other => panic!("no message type: {other:?}"),
        }
    }

    /// A server's reply to `req` as QEMU's user network sends it.
    pub fn reply(xid: u32, kind: MessageType, yiaddr: Ipv4Addr, lease: Option<u32>) -> Vec<u8> {
        let mut m = v4::Message::new_with_id(
            xid,
            Ipv4Addr::UNSPECIFIED,
            yiaddr,
            SERVER,
            Ipv4Addr::UNSPECIFIED,
            &MAC.0,
        );
        m.set_opcode(Opcode::BootReply);
        let o = m.opts_mut();
        o.insert(DhcpOption::MessageType(kind));
        o.insert(DhcpOption::ServerIdentifier(SERVER));
        if kind != MessageType::Nak {
            o.insert(DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)));
            o.insert(DhcpOption::Router(vec![SERVER]));
            o.insert(DhcpOption::DomainNameServer(vec![Ipv4Addr::new(10, 0, 2, 3)]));
            o.insert(DhcpOption::NtpServers(vec![Ipv4Addr::new(10, 0, 2, 4)]));
            o.insert(DhcpOption::DomainName("example.net".into()));
            o.insert(DhcpOption::InterfaceMtu(1400));
            if let Some(l) = lease {
                o.insert(DhcpOption::AddressLeaseTime(l));
            }
        } else {
            o.insert(DhcpOption::Message("wrong network".into()));
        }
        m.to_vec().unwrap()
    }

    /// Runs the client's timers from `from` to `to` in 100 ms steps, collecting events with their times.
    fn run(c: &mut Client, from: Duration, to: Duration) -> Vec<(Duration, Event)> {
        let mut out = Vec::new();
        let mut now = from;
        while now <= to {
            out.extend(c.on_timer(now).into_iter().map(|e| (now, e)));
            now += Duration::from_millis(100);
        }
        out
    }

    /// Drives a client from DISCOVER to a bound lease at `t`.
    fn bind(c: &mut Client, t: Duration, lease: Option<u32>) -> Lease {
        let discover = sent(&c.on_timer(t));
        let xid = discover[0].1.xid();
        let request = sent(&c.on_packet(t, &reply(xid, MessageType::Offer, ADDR, lease)));
        assert_eq!(kind(&request[0].1), MessageType::Request);
        let events = c.on_packet(t, &reply(request[0].1.xid(), MessageType::Ack, ADDR, lease));
        match events.as_slice() {
            [Event::Bound(l)] => l.clone(),
            other => panic!("expected a lease: {other:?}"),
        }
    }

    #[test]
    fn discover_offer_request_ack_binds_the_lease() {
        let mut c = client();
        assert_eq!(c.deadline(), s(10));
        let out = sent(&c.on_timer(s(10)));
        assert_eq!(out.len(), 1);
        let (to, discover) = &out[0];
        assert_eq!(*to, Destination::Broadcast);
        assert_eq!(kind(discover), MessageType::Discover);
        assert!(
            discover.flags().broadcast(),
            "the reply must be broadcast: no address yet"
        );
        assert_eq!(discover.chaddr(), &MAC.0);
        assert!(
            matches!(discover.opts().get(OptionCode::Hostname), Some(DhcpOption::Hostname(h)) if h == "node1")
        );
        assert!(
            matches!(discover.opts().get(OptionCode::ClientIdentifier), Some(DhcpOption::ClientIdentifier(id)) if id[0] == 1 && id[1..] == MAC.0)
        );
        assert_eq!(c.state_name(), "discovering");

        let out = sent(&c.on_packet(
            s(11),
            &reply(discover.xid(), MessageType::Offer, ADDR, Some(86400)),
        ));
        let (to, request) = &out[0];
        assert_eq!(*to, Destination::Broadcast);
        assert_eq!(kind(request), MessageType::Request);
        assert!(request.flags().broadcast());
        assert_eq!(
            request.opts().get(OptionCode::RequestedIpAddress),
            Some(&DhcpOption::RequestedIpAddress(ADDR))
        );
        assert_eq!(
            request.opts().get(OptionCode::ServerIdentifier),
            Some(&DhcpOption::ServerIdentifier(SERVER))
        );
        assert_eq!(c.state_name(), "requesting");

        let events = c.on_packet(s(12), &reply(request.xid(), MessageType::Ack, ADDR, Some(86400)));
        let [Event::Bound(lease)] = events.as_slice() else {
            panic!("{events:?}")
        };
        assert_eq!(lease.cidr.to_string(), "10.0.2.15/24");
        assert_eq!(lease.server, SERVER);
        assert_eq!(lease.routers, [SERVER]);
        assert_eq!(lease.dns, [Ipv4Addr::new(10, 0, 2, 3)]);
        assert_eq!(lease.ntp, [Ipv4Addr::new(10, 0, 2, 4)]);
        assert_eq!(lease.domain.as_deref(), Some("example.net"));
        assert_eq!(lease.mtu, Some(1400));
        // Times count from when the request was sent, not from the answer.
        assert_eq!(lease.start, s(11));
        assert_eq!(
            (lease.t1, lease.t2, lease.duration),
            (s(43200), s(75600), s(86400))
        );
        assert_eq!(c.state_name(), "bound");
        assert_eq!(c.deadline(), s(11 + 43200));
    }

    #[test]
    fn discover_is_retransmitted_with_exponential_backoff_and_jitter() {
        let mut c = client();
        let events = run(&mut c, s(10), s(10 + 200));
        let times: Vec<f64> = events
            .iter()
            .filter(|(_, e)| matches!(e, Event::Send { .. }))
            .map(|(t, _)| (*t - s(10)).as_secs_f64())
            .collect();
        // Sent at 0, then after ~4, 8, 16, 32, 64, 64 s, each within a second of the nominal time.
        let nominal = [0.0, 4.0, 12.0, 28.0, 60.0, 124.0, 188.0];
        assert_eq!(times.len(), nominal.len(), "{times:?}");
        let mut drift = 0.0;
        for (i, (t, n)) in times.iter().zip(nominal).enumerate() {
            if i > 0 {
                let gap = t - times[i - 1];
                let want = n - nominal[i - 1];
                assert!((gap - want).abs() <= 1.05, "gap {i} is {gap}, want {want}±1");
            }
            drift = t - n;
        }
        let _ = drift;
        // The xid stays the same for one discovery; a slow discovery is mentioned once.
        let xids: Vec<u32> = sent(&events.iter().map(|(_, e)| e.clone()).collect::<Vec<_>>())
            .iter()
            .map(|(_, m)| m.xid())
            .collect();
        assert!(xids.windows(2).all(|w| w[0] == w[1]));
        let notes: Vec<_> = events
            .iter()
            .filter(|(_, e)| matches!(e, Event::Note(_)))
            .collect();
        assert_eq!(notes.len(), 1, "{notes:?}");
    }

    #[test]
    fn replies_for_someone_else_are_ignored() {
        let mut c = client();
        let xid = sent(&c.on_timer(s(10)))[0].1.xid();
        // Wrong transaction id.
        assert!(
            c.on_packet(s(11), &reply(xid ^ 1, MessageType::Offer, ADDR, None))
                .is_empty()
        );
        // Another client's hardware address.
        let mut other =
            v4::Message::decode(&mut Decoder::new(&reply(xid, MessageType::Offer, ADDR, None))).unwrap();
        other.set_chaddr(&[2, 0, 0, 0, 0, 1]);
        assert!(c.on_packet(s(11), &other.to_vec().unwrap()).is_empty());
        // An offer of no address, and an offer without a server identifier.
        assert!(
            c.on_packet(
                s(11),
                &reply(xid, MessageType::Offer, Ipv4Addr::UNSPECIFIED, None)
            )
            .is_empty()
        );
        let mut anonymous =
            v4::Message::decode(&mut Decoder::new(&reply(xid, MessageType::Offer, ADDR, None))).unwrap();
        anonymous.opts_mut().remove(OptionCode::ServerIdentifier);
        assert!(c.on_packet(s(11), &anonymous.to_vec().unwrap()).is_empty());
        // Our own broadcast request echoed back.
        let discover = sent(&c.on_timer(s(20)));
        assert!(c.on_packet(s(20), &discover[0].1.to_vec().unwrap()).is_empty());
        // An ACK while selecting.
        assert!(
            c.on_packet(s(21), &reply(xid, MessageType::Ack, ADDR, None))
                .is_empty()
        );
        assert_eq!(c.state_name(), "discovering");
    }

    #[test]
    fn an_unanswered_request_falls_back_to_discovery() {
        let mut c = client();
        let xid = sent(&c.on_timer(s(10)))[0].1.xid();
        c.on_packet(s(10), &reply(xid, MessageType::Offer, ADDR, None));
        let events = run(&mut c, s(10), s(75));
        let kinds: Vec<MessageType> = sent(&events.iter().map(|(_, e)| e.clone()).collect::<Vec<_>>())
            .iter()
            .map(|(_, m)| kind(m))
            .collect();
        // Retransmitted REQUESTs at ~4, 12, 28 s, then DISCOVER once 60 s passed.
        assert_eq!(kinds[..3], [MessageType::Request; 3], "{kinds:?}");
        assert_eq!(kinds.last(), Some(&MessageType::Discover));
        assert!(
            events.iter().any(
                |(_, e)| matches!(e, Event::Note(n) if n.contains("no answer from DHCP server 10.0.2.2"))
            )
        );
        assert_eq!(c.state_name(), "discovering");
    }

    #[test]
    fn a_missing_lease_time_gets_the_default() {
        let mut c = client();
        let lease = bind(&mut c, s(10), None);
        assert_eq!(lease.duration, DEFAULT_LEASE);
        assert_eq!(lease.t1, DEFAULT_LEASE / 2);
    }

    #[test]
    fn renews_at_t1_by_unicast_and_keeps_the_address() {
        let mut c = client();
        let lease = bind(&mut c, s(10), Some(120));
        assert_eq!((lease.t1, lease.t2), (s(60), s(105)));
        assert!(c.on_timer(s(69)).is_empty());
        let out = sent(&c.on_timer(s(70)));
        let (to, renew) = &out[0];
        assert_eq!(*to, Destination::Unicast(SERVER));
        assert_eq!(kind(renew), MessageType::Request);
        assert_eq!(renew.ciaddr(), ADDR);
        assert!(!renew.flags().broadcast());
        assert!(renew.opts().get(OptionCode::ServerIdentifier).is_none());
        assert!(renew.opts().get(OptionCode::RequestedIpAddress).is_none());
        assert_eq!(c.state_name(), "renewing");
        // The address stays in use while renewing.
        assert_eq!(c.lease().unwrap().cidr.addr, ADDR);

        let events = c.on_packet(s(71), &reply(renew.xid(), MessageType::Ack, ADDR, Some(120)));
        let [Event::Renewed(renewed)] = events.as_slice() else {
            panic!("{events:?}")
        };
        assert_eq!(renewed.start, s(70));
        assert_eq!(c.deadline(), s(130));
        assert_eq!(c.state_name(), "bound");
    }

    #[test]
    fn an_unanswered_renewal_rebinds_at_t2_then_expires_and_discovers_again() {
        let mut c = client();
        bind(&mut c, s(10), Some(120));
        // T1 at 70, T2 at 115, expiry at 130.
        let events = run(&mut c, s(60), s(131));
        let sends: Vec<(Duration, Destination)> = events
            .iter()
            .filter_map(|(t, e)| match e {
                Event::Send { to, .. } => Some((*t, *to)),
                _ => None,
            })
            .collect();
        let unicast: Vec<_> = sends
            .iter()
            .filter(|(_, d)| *d == Destination::Unicast(SERVER))
            .map(|(t, _)| t.as_secs())
            .collect();
        // Renewal at T1, repeated after half the time left to T2, but no sooner than 10 s.
        assert_eq!(unicast, [70, 92, 103, 113], "{sends:?}");
        let rebinds: Vec<_> = sends
            .iter()
            .filter(|(t, d)| *d == Destination::Broadcast && t.as_secs() < 130)
            .map(|(t, _)| t.as_secs())
            .collect();
        assert_eq!(
            rebinds,
            [115, 125],
            "rebinding at T2, repeated no sooner than 10 s later: {sends:?}"
        );
        let notes: Vec<_> = events
            .iter()
            .filter_map(|(_, e)| match e {
                Event::Note(n) => Some(n.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(
            notes,
            ["no answer from DHCP server 10.0.2.2 to the renewal of 10.0.2.15/24, asking any server"]
        );
        let lost: Vec<_> = events
            .iter()
            .filter_map(|(t, e)| match e {
                Event::Lost { lease, why } => Some((*t, lease.cidr.addr, why.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(lost, [(s(130), ADDR, Loss::Expired)]);
        // Discovery starts over at once.
        let (t, last) = events
            .iter()
            .rev()
            .find(|(_, e)| matches!(e, Event::Send { .. }))
            .unwrap();
        assert_eq!(*t, s(130));
        let Event::Send { bytes, .. } = last else {
            unreachable!()
        };
        assert_eq!(
            kind(&v4::Message::decode(&mut Decoder::new(bytes)).unwrap()),
            MessageType::Discover
        );
        assert!(c.lease().is_none());
    }

    #[test]
    fn a_rebinding_ack_from_another_server_keeps_the_lease() {
        let mut c = client();
        bind(&mut c, s(10), Some(120));
        let events: Vec<Event> = run(&mut c, s(60), s(116)).into_iter().map(|(_, e)| e).collect();
        let (to, rebind) = sent(&events).pop().unwrap();
        assert_eq!(to, Destination::Broadcast);
        assert_eq!(rebind.ciaddr(), ADDR);
        let mut ack = v4::Message::decode(&mut Decoder::new(&reply(
            rebind.xid(),
            MessageType::Ack,
            ADDR,
            Some(600),
        )))
        .unwrap();
        ack.opts_mut()
            .insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 2, 9)));
        let events = c.on_packet(s(116), &ack.to_vec().unwrap());
        let [Event::Renewed(lease)] = events.as_slice() else {
            panic!("{events:?}")
        };
        assert_eq!(lease.server, Ipv4Addr::new(10, 0, 2, 9));
        assert_eq!(lease.expires_at(), s(115 + 600));
    }

    #[test]
    fn a_renewal_answered_with_another_address_replaces_the_lease() {
        let mut c = client();
        bind(&mut c, s(10), Some(120));
        let renew = sent(&c.on_timer(s(70))).pop().unwrap().1;
        let other = Ipv4Addr::new(10, 0, 2, 16);
        let events = c.on_packet(s(70), &reply(renew.xid(), MessageType::Ack, other, Some(120)));
        match events.as_slice() {
            [
                Event::Lost {
                    lease: old,
                    why: Loss::Replaced,
                },
                Event::Bound(new),
            ] => {
                assert_eq!((old.cidr.addr, new.cidr.addr), (ADDR, other));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_nak_to_a_renewal_drops_the_address_and_restarts_discovery() {
        let mut c = client();
        bind(&mut c, s(10), Some(120));
        let renew = sent(&c.on_timer(s(70))).pop().unwrap().1;
        let events = c.on_packet(
            s(71),
            &reply(renew.xid(), MessageType::Nak, Ipv4Addr::UNSPECIFIED, None),
        );
        match events.as_slice() {
            [
                Event::Lost {
                    lease,
                    why: Loss::Refused { server, message },
                },
            ] => {
                assert_eq!(lease.cidr.addr, ADDR);
                assert_eq!(*server, Some(SERVER));
                assert_eq!(message.as_deref(), Some("wrong network"));
            }
            other => panic!("{other:?}"),
        }
        assert!(c.lease().is_none());
        // Discovery restarts after a pause that grows with repeated refusals.
        assert_eq!(c.deadline(), s(72));
        let discover = sent(&c.on_timer(s(72)));
        assert_eq!(kind(&discover[0].1), MessageType::Discover);
    }

    #[test]
    fn a_nak_to_the_first_request_restarts_discovery_with_growing_pauses() {
        let mut c = client();
        let mut pauses = Vec::new();
        let mut t = s(10);
        for _ in 0..3 {
            let xid = sent(&c.on_timer(t))[0].1.xid();
            let req = sent(&c.on_packet(t, &reply(xid, MessageType::Offer, ADDR, None)));
            let events = c.on_packet(
                t,
                &reply(req[0].1.xid(), MessageType::Nak, Ipv4Addr::UNSPECIFIED, None),
            );
            assert!(
                matches!(events.as_slice(), [Event::Note(n)] if n.contains("refused the offered address (wrong network)")),
                "{events:?}"
            );
            pauses.push(c.deadline() - t);
            t = c.deadline();
        }
        assert_eq!(pauses, [s(1), s(2), s(4)]);
        // A successful lease resets the pause.
        bind(&mut c, t, Some(120));
        assert_eq!(c.refusals, 0);
    }

    #[test]
    fn infinite_leases_are_never_renewed() {
        let mut c = client();
        let lease = bind(&mut c, s(10), Some(u32::MAX));
        assert!(lease.infinite());
        assert_eq!(lease.duration_text(), "infinite");
        assert!(c.deadline() > s(100 * 365 * 86400));
    }

    #[test]
    fn inconsistent_t1_and_t2_fall_back_to_the_defaults() {
        let mut m =
            v4::Message::decode(&mut Decoder::new(&reply(1, MessageType::Ack, ADDR, Some(1000)))).unwrap();
        m.opts_mut().insert(DhcpOption::Renewal(900));
        m.opts_mut().insert(DhcpOption::Rebinding(800));
        let r = parse(&m.to_vec().unwrap()).unwrap();
        let lease = r.lease(SERVER, s(0));
        assert_eq!((lease.t1, lease.t2), (s(500), s(875)));
        m.opts_mut().insert(DhcpOption::Renewal(100));
        m.opts_mut().insert(DhcpOption::Rebinding(200));
        let lease = parse(&m.to_vec().unwrap()).unwrap().lease(SERVER, s(0));
        assert_eq!((lease.t1, lease.t2), (s(100), s(200)));
    }

    #[test]
    fn unusable_options_are_dropped() {
        let mut m =
            v4::Message::decode(&mut Decoder::new(&reply(1, MessageType::Ack, ADDR, Some(1000)))).unwrap();
        m.opts_mut()
            .insert(DhcpOption::DomainName("evil\nnameserver 6.6.6.6".into()));
        m.opts_mut().insert(DhcpOption::InterfaceMtu(100));
        m.opts_mut()
            .insert(DhcpOption::SubnetMask(Ipv4Addr::new(255, 0, 255, 0)));
        m.opts_mut().insert(DhcpOption::Router(vec![
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::new(10, 0, 2, 1),
        ]));
        let lease = parse(&m.to_vec().unwrap()).unwrap().lease(SERVER, s(0));
        assert_eq!(lease.domain, None);
        assert_eq!(lease.mtu, None);
        assert_eq!(
            lease.cidr.prefix, 8,
            "a non-contiguous mask falls back to the address class"
        );
        assert_eq!(lease.routers, [Ipv4Addr::new(10, 0, 2, 1)]);
    }

    #[test]
    fn malformed_options_are_ignored_not_misread() {
        let good = reply(1, MessageType::Ack, ADDR, Some(1000));
        let mut m = v4::Message::decode(&mut Decoder::new(&good)).unwrap();
        // A malformed Rapid Commit (it must be empty) is of no interest; a router list whose length is not
        // a multiple of four is dropped; a two-byte lease time is no lease time.
        m.opts_mut().insert(DhcpOption::Unknown(v4::UnknownOption::new(
            OptionCode::RapidCommit,
            vec![1, 2],
        )));
        m.opts_mut().insert(DhcpOption::Unknown(v4::UnknownOption::new(
            OptionCode::Router,
            vec![10, 0, 2, 1, 9],
        )));
        m.opts_mut().insert(DhcpOption::Unknown(v4::UnknownOption::new(
            OptionCode::AddressLeaseTime,
            vec![0, 1],
        )));
        let r = parse(&m.to_vec().unwrap()).unwrap();
        assert_eq!(r.kind, MessageType::Ack);
        assert!(r.routers.is_empty());
        assert_eq!(r.lease_secs, None);
        assert_eq!(r.dns, [Ipv4Addr::new(10, 0, 2, 3)]);
        // No magic cookie: no options, so no message type, so not a reply.
        let mut no_cookie = good.clone();
        no_cookie[236] = 0;
        assert!(parse(&no_cookie).is_none());
        // An option running past the end ends the options; those before it count.
        let mut truncated = good[..240].to_vec();
        truncated.extend([53, 1, 5, 51, 4, 0]);
        let r = parse(&truncated).unwrap();
        assert_eq!((r.kind, r.lease_secs), (MessageType::Ack, None));
        // A hardware address longer than 16 bytes is not ours (and must not be sliced).
        let mut long_hlen = good.clone();
        long_hlen[2] = 255;
        assert_eq!(parse(&long_hlen[..240]).map(|r| r.mac), None);
        assert_eq!(parse(&long_hlen).unwrap().mac, None);
    }

    #[test]
    fn repeated_options_are_concatenated() {
        let mut bytes = reply(1, MessageType::Ack, ADDR, Some(1000));
        let end = bytes.iter().rposition(|b| *b == 255).unwrap();
        bytes.truncate(end);
        // A second router list and a second half of the domain name (RFC 3396).
        bytes.extend([3, 4, 10, 0, 2, 9, 15, 4, b'.', b'o', b'r', b'g', 255]);
        let r = parse(&bytes).unwrap();
        assert_eq!(r.routers, [SERVER, Ipv4Addr::new(10, 0, 2, 9)]);
        assert_eq!(r.domain.as_deref(), Some("example.net.org"));
    }

    #[test]
    fn requests_are_at_least_300_bytes_with_the_bootp_layout() {
        let c = client();
        let bytes = c.discover_packet(0x0102_0304, 7);
        assert_eq!(bytes.len(), MIN_PACKET);
        assert_eq!(&bytes[..12], &[1, 1, 6, 0, 1, 2, 3, 4, 0, 7, 0x80, 0]);
        assert_eq!(&bytes[28..34], &MAC.0);
        assert_eq!(&bytes[236..240], &v4::MAGIC);
        let m = v4::Message::decode(&mut Decoder::new(&bytes)).unwrap();
        assert_eq!((m.xid(), m.secs()), (0x0102_0304, 7));
        assert!(
            matches!(m.opts().get(OptionCode::ParameterRequestList), Some(DhcpOption::ParameterRequestList(l)) if l.contains(&OptionCode::NtpServers))
        );
    }

    proptest! {
        #[test]
        fn parsing_agrees_with_dhcproto(
            xid in any::<u32>(),
            yiaddr in any::<u32>(),
            kind in prop::sample::select(vec![MessageType::Offer, MessageType::Ack, MessageType::Nak]),
            routers in proptest::collection::vec(any::<u32>(), 0..4),
            dns in proptest::collection::vec(any::<u32>(), 0..70),
            lease in proptest::option::of(any::<u32>()),
            mtu in proptest::option::of(any::<u16>()),
            mask in 0u8..=32,
        ) {
            let mut m = v4::Message::new_with_id(xid, Ipv4Addr::UNSPECIFIED, yiaddr.into(), SERVER, Ipv4Addr::UNSPECIFIED, &MAC.0);
            m.set_opcode(Opcode::BootReply);
            let o = m.opts_mut();
            o.insert(DhcpOption::MessageType(kind));
            o.insert(DhcpOption::ServerIdentifier(SERVER));
            o.insert(DhcpOption::SubnetMask(Ipv4Addr::from(u32::MAX.checked_shl(32 - u32::from(mask)).unwrap_or(0))));
            if !routers.is_empty() {
                o.insert(DhcpOption::Router(routers.iter().map(|r| Ipv4Addr::from(*r)).collect()));
            }
            if !dns.is_empty() {
                // More than 63 servers do not fit one option: dhcproto splits them (RFC 3396).
                o.insert(DhcpOption::DomainNameServer(dns.iter().map(|r| Ipv4Addr::from(*r)).collect()));
            }
            if let Some(l) = lease {
                o.insert(DhcpOption::AddressLeaseTime(l));
            }
            if let Some(mtu) = mtu {
                o.insert(DhcpOption::InterfaceMtu(mtu));
            }
            let r = parse(&m.to_vec().unwrap()).unwrap();
            prop_assert_eq!(r.kind, kind);
            prop_assert_eq!(r.xid, xid);
            prop_assert_eq!(r.mac, Some(MAC));
            prop_assert_eq!(r.yiaddr, Ipv4Addr::from(yiaddr));
            prop_assert_eq!(r.server, Some(SERVER));
            prop_assert_eq!(r.mask.and_then(prefix_of_mask), Some(mask));
            let usable_only = |v: &[u32]| v.iter().map(|r| Ipv4Addr::from(*r)).filter(|ip| usable(*ip)).collect::<Vec<_>>();
            prop_assert_eq!(r.routers, usable_only(&routers));
            prop_assert_eq!(r.dns, usable_only(&dns));
            prop_assert_eq!(r.lease_secs, lease);
            prop_assert_eq!(r.mtu, mtu.filter(|m| *m >= 576));
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
            let _ = parse(&bytes);
            let mut c = client();
            let _ = c.on_timer(s(10));
            let _ = c.on_packet(s(11), &bytes);
        }

        #[test]
        fn mutated_replies_never_panic(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..10),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut c = client();
            let xid = sent(&c.on_timer(s(10)))[0].1.xid();
            let mut bytes = reply(xid, MessageType::Offer, ADDR, Some(3600));
            for (at, value) in edits {
                let i = at.index(bytes.len());
                bytes[i] = value;
            }
            let _ = parse(&bytes);
            let _ = parse(&bytes[..cut.index(bytes.len())]);
            let _ = c.on_packet(s(11), &bytes);
            if let Some(r) = parse(&bytes) {
                let _ = r.lease(SERVER, s(11));
            }
        }
    }
}
