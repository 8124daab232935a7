//! The node's IPv4 network, from [`ingot_spec::config::Network`]: choose the links, bring `lo` and them
//! up, apply static addresses at once, run a DHCP client where no address is given, keep
//! `/etc/resolv.conf` in step. Driven by PID 1's event loop through [`Pollable`].
//!
//! - **Choosing links.** Each configured interface matches a link by kernel name, by MAC address, or
//!   both. Without configured interfaces, the first physical Ethernet link (no `IFLA_INFO_KIND`, by name
//!   order) with a carrier gets DHCP: every candidate is brought up to learn its carrier, and after
//!   [`CARRIER_WAIT`] without one the first by name is taken; the others go back down. A link that is not
//!   there yet (its driver still probing) is waited for, polled every [`LINK_POLL`].
//! - **Static** interfaces get their MTU, `up`, their addresses and the default route via `gateway`
//!   (`proto static`; `onlink` when the gateway is in none of the subnets).
//! - **DHCP** interfaces get a [`dhcp::Client`] and a UDP socket bound to the link. A lease's address is
//!   added with the lease's lifetime (so the kernel drops it too if renewal fails), the first router
//!   becomes the default route (`proto dhcp`), option 26 sets the MTU unless the configuration does.
//! - **resolv.conf** lists the configured `dns` servers of every interface, then the leased ones; it is
//!   written (temporary file, fsync, rename) whenever that list changes, once there is something to list.
//!
//! Failures after [`Network::start`] never stop the network: they are logged (`ingot: warning …`) and
//! retried with a backoff of 1 s doubling to 30 s. Lease changes and renewals are logged once each,
//! packets never.
//!
//! Each interface with a gateway (or a leased router) gets its own default route, with the interface's
//! position in the configuration as metric: the first is preferred, the next serves once that route is
//! gone (its address removed).
//!
//! Known limits: IPv4 only; Ethernet-like links (DHCP sends the 6-byte MAC); rp_filter on the interface
//! must be off while it has no address (replies are broadcast to a UDP socket, not read from a packet
//! socket); a carrier coming back does not restart DHCP at once (the lease runs its course: renewal,
//! rebinding, expiry); no VLANs, bonds or static routes beyond the default route.

pub mod addr;
pub mod dhcp;
pub mod netlink;
#[cfg(test)]
mod netns_tests;
mod resolv;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::time::Duration;

use ingot_spec::config;
use ingot_spec::marker::PREFIX;

use self::addr::{Ipv4Cidr, Mac};
use self::dhcp::{Client, Destination, Event, Lease, Loss};
use self::netlink::{DefaultRoute, Link, Origin, Rtnl};
use crate::event::Pollable;
use crate::sys::Sys;
use crate::sys::net::{DHCP_SERVER_PORT, DhcpSocket};

/// How long the default interface choice waits for a carrier before taking the first link by name.
pub const CARRIER_WAIT: Duration = Duration::from_secs(5);
/// How often missing links are looked for.
pub const LINK_POLL: Duration = Duration::from_secs(1);
/// How often the default choice looks at carriers while waiting for one.
const CARRIER_POLL: Duration = Duration::from_millis(250);
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(30);

const ENOENT: i32 = 2;
const ESRCH: i32 = 3;
const EADDRNOTAVAIL: i32 = 99;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("network interface {index} of the configuration: {message}")]
    Config { index: usize, message: String },
    #[error("bringing up the loopback interface")]
    Loopback(#[source] netlink::Error),
    #[error(transparent)]
    Netlink(#[from] netlink::Error),
}

/// Where [`Network`] writes; the tests point it elsewhere.
#[derive(Clone, Debug)]
pub struct Options {
    pub resolv_conf: PathBuf,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
        }
    }
}

/// Which link an interface is.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Matcher {
    /// By name and/or MAC (both must match when both are given).
    Given { name: Option<String>, mac: Option<Mac> },
    /// No interfaces configured: the first physical Ethernet link with a carrier. `raised` are the
    /// candidates brought up to see their carrier, `since` when candidates were first seen.
    Default {
        raised: Vec<Link>,
        since: Option<Duration>,
    },
}

impl Matcher {
    fn describe(&self) -> String {
        match self {
            Matcher::Given {
                name: Some(n),
                mac: Some(m),
            } => format!("name:{n},mac:{m}"),
            Matcher::Given {
                name: Some(n),
                mac: None,
            } => format!("name:{n}"),
            Matcher::Given {
                name: None,
                mac: Some(m),
            } => format!("mac:{m}"),
            Matcher::Given {
                name: None,
                mac: None,
            }
            | Matcher::Default { .. } => "first-ethernet".to_owned(),
        }
    }

    fn matches(&self, link: &Link) -> bool {
        match self {
            Matcher::Given { name, mac } => {
                name.as_ref().is_none_or(|n| *n == link.name) && mac.is_none_or(|m| link.mac == Some(m))
            }
            Matcher::Default { .. } => default_candidate(link),
        }
    }
}

/// The default choice among `candidates` (sorted by name) at `now`, having looked since `since`: the first
/// with a carrier, or the first of all once [`CARRIER_WAIT`] passed (then with `true`: no carrier).
fn default_pick(candidates: &[Link], since: Duration, now: Duration) -> Option<(&Link, bool)> {
    match candidates.iter().find(|l| l.carrier) {
        Some(l) => Some((l, false)),
        None if now >= since + CARRIER_WAIT => candidates.first().map(|l| (l, true)),
        None => None,
    }
}

/// A physical Ethernet device: what the default configuration may choose.
fn default_candidate(link: &Link) -> bool {
    link.ethernet && !link.loopback && link.kind.is_none()
}

/// The DHCP side of an interface.
#[derive(Debug)]
struct Dhcp {
    client: Client,
    socket: Option<DhcpSocket>,
    /// The lease configured on the link, once applied.
    applied: Option<Lease>,
    /// A lease that still has to be applied (the last attempt failed).
    pending: Option<Lease>,
    /// The last send failure reported, so a lasting one is logged once.
    send_error: Option<String>,
}

#[derive(Debug)]
struct Iface {
    matcher: Matcher,
    addresses: Vec<Ipv4Cidr>,
    gateway: Option<Ipv4Addr>,
    dns: Vec<Ipv4Addr>,
    mtu: Option<u32>,
    link: Option<Link>,
    /// Link up and static configuration done (for DHCP: the socket open).
    set_up: bool,
    dhcp: Option<Dhcp>,
    /// When a failed step is tried again, and the delay after the next failure.
    retry_at: Option<Duration>,
    retry_delay: Duration,
    /// When to look for the link again.
    poll_at: Duration,
    waiting_noted: bool,
}

impl Iface {
    fn from_config(index: usize, c: &config::Interface) -> Result<Iface, Error> {
        let err = |message: String| Error::Config { index, message };
        let mac = c
            .matches
            .mac
            .as_deref()
            .map(str::parse::<Mac>)
            .transpose()
            .map_err(err)?;
        if c.matches.name.is_none() && mac.is_none() {
            return Err(err("`match` names no link: give `name`, `mac` or both".to_owned()));
        }
        let addresses = c
            .addresses
            .iter()
            .map(|a| a.parse::<Ipv4Cidr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(err)?;
        if addresses.is_empty() && c.gateway.is_some() {
            return Err(err(
                "`gateway` needs static `addresses` (with DHCP the server names the router)".to_owned(),
            ));
        }
        if let Some(mtu) = c.mtu.filter(|m| !(68..=65535).contains(m)) {
            return Err(err(format!("`mtu` {mtu} is outside 68..=65535")));
        }
        Ok(Iface::new(
            Matcher::Given {
                name: c.matches.name.clone(),
                mac,
            },
            addresses,
            c.gateway,
            c.dns.clone(),
            c.mtu,
        ))
    }

    fn new(
        matcher: Matcher,
        addresses: Vec<Ipv4Cidr>,
        gateway: Option<Ipv4Addr>,
        dns: Vec<Ipv4Addr>,
        mtu: Option<u32>,
    ) -> Iface {
        Iface {
            matcher,
            addresses,
            gateway,
            dns,
            mtu,
            link: None,
            set_up: false,
            dhcp: None,
            retry_at: None,
            retry_delay: FIRST_RETRY,
            poll_at: Duration::ZERO,
            waiting_noted: false,
        }
    }

    fn is_dhcp(&self) -> bool {
        self.addresses.is_empty()
    }

    fn name(&self) -> String {
        self.link
            .as_ref()
            .map_or_else(|| self.matcher.describe(), |l| l.name.clone())
    }

    fn configured(&self) -> bool {
        self.set_up && (!self.is_dhcp() || self.dhcp.as_ref().is_some_and(|d| d.applied.is_some()))
    }

    fn lease(&self) -> Option<&Lease> {
        self.dhcp.as_ref().and_then(|d| d.applied.as_ref())
    }

    /// Name servers in order: configured, then leased.
    fn name_servers(&self) -> Vec<Ipv4Addr> {
        let mut out = self.dns.clone();
        if let Some(l) = self.lease() {
            out.extend(&l.dns);
        }
        out
    }

    fn summary(&self) -> String {
        let via = if self.is_dhcp() { "dhcp" } else { "static" };
        let Some(link) = &self.link else {
            return format!(
                "interface=none match={} address=none via={via} state=no-link",
                self.matcher.describe()
            );
        };
        let list = |v: &[Ipv4Addr]| {
            if v.is_empty() {
                "none".to_owned()
            } else {
                v.iter().map(Ipv4Addr::to_string).collect::<Vec<_>>().join(",")
            }
        };
        let dns = list(&self.name_servers());
        if !self.is_dhcp() {
            let addresses = self
                .addresses
                .iter()
                .map(Ipv4Cidr::to_string)
                .collect::<Vec<_>>()
                .join(",");
            let gateway = list(self.gateway.as_slice());
            let state = if self.set_up { "" } else { " state=pending" };
            return format!(
                "interface={} address={addresses} gateway={gateway} dns={dns} via=static{state}",
                link.name
            );
        }
        match (self.lease(), &self.dhcp) {
            (Some(l), _) => format!(
                "interface={} address={} gateway={} dns={dns} via=dhcp lease={}",
                link.name,
                l.cidr,
                list(l.routers.get(..1).unwrap_or_default()),
                l.duration_text()
            ),
            (None, Some(d)) => format!(
                "interface={} address=none via=dhcp state={}",
                link.name,
                d.client.state_name()
            ),
            (None, None) => format!("interface={} address=none via=dhcp state=pending", link.name),
        }
    }

    /// Schedules another attempt after a failure and says when.
    fn failed(&mut self, sys: &dyn Sys, now: Duration, err: &dyn std::error::Error) {
        let delay = self.retry_delay;
        crate::warn(
            sys,
            &format!(
                "network: {}, retrying in {} s",
                crate::failure::chain(err),
                delay.as_secs()
            ),
        );
        self.retry_at = Some(now + delay);
        self.retry_delay = (delay * 2).min(MAX_RETRY);
    }

    fn succeeded(&mut self) {
        self.retry_at = None;
        self.retry_delay = FIRST_RETRY;
    }
}

/// The network configuration in force.
#[derive(Debug)]
pub struct Network {
    rtnl: Rtnl,
    ifaces: Vec<Iface>,
    options: Options,
    /// `resolv.conf` as last written, and as last failed to write (logged once).
    resolv_written: Option<String>,
    resolv_failed: Option<String>,
    resolv_retry_at: Option<Duration>,
    hostname: Option<String>,
    seed: u64,
    /// The last failure to list the links, reported once.
    links_error: Option<String>,
}

impl Network {
    /// Chooses links, brings lo and them up, applies static config at once, starts DHCP where asked.
    pub fn start(sys: &dyn Sys, cfg: &config::Network, now: Duration) -> Result<Network, Error> {
        Network::start_with(sys, cfg, now, Options::default())
    }

    /// [`Network::start`] writing where `options` say.
    pub fn start_with(
        sys: &dyn Sys,
        cfg: &config::Network,
        now: Duration,
        options: Options,
    ) -> Result<Network, Error> {
        let mut ifaces = cfg
            .interfaces
            .iter()
            .enumerate()
            .map(|(i, c)| Iface::from_config(i + 1, c))
            .collect::<Result<Vec<_>, _>>()?;
        if ifaces.is_empty() {
            ifaces.push(Iface::new(
                Matcher::Default {
                    raised: Vec::new(),
                    since: None,
                },
                Vec::new(),
                None,
                Vec::new(),
                None,
            ));
        }
        let mut rtnl = Rtnl::open()?;
        let links = rtnl.links()?;
        if let Some(lo) = links.iter().find(|l| l.loopback) {
            rtnl.set_up(lo, true).map_err(Error::Loopback)?;
            let local = Ipv4Cidr {
                addr: Ipv4Addr::LOCALHOST,
                prefix: 8,
            };
            rtnl.add_address(lo, local, None).map_err(Error::Loopback)?;
        }
        let mut net = Network {
            rtnl,
            ifaces,
            options,
            resolv_written: None,
            resolv_failed: None,
            resolv_retry_at: None,
            hostname: crate::sys::net::hostname(),
            seed: crate::sys::net::random_u64(),
            links_error: None,
        };
        net.find_links(sys, now, &links);
        net.run_timers(sys, now);
        net.update_resolv_conf(sys, now);
        Ok(net)
    }

    /// Every chosen interface has an address (static, or a bound lease).
    pub fn configured(&self) -> bool {
        self.ifaces.iter().all(Iface::configured)
    }

    /// One line for the console, e.g. "interface=eth0 address=10.0.2.15/24 gateway=10.0.2.2 dns=10.0.2.3
    /// via=dhcp lease=86400s"; several interfaces are separated by "; ".
    pub fn summary(&self) -> String {
        self.ifaces
            .iter()
            .map(Iface::summary)
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// NTP servers offered by DHCP (option 42), for the clock when the profile names none.
    pub fn ntp_servers(&self) -> Vec<Ipv4Addr> {
        let mut out: Vec<Ipv4Addr> = Vec::new();
        for ip in self.ifaces.iter().filter_map(Iface::lease).flat_map(|l| &l.ntp) {
            if !out.contains(ip) {
                out.push(*ip);
            }
        }
        out
    }

    /// Looks for the links of interfaces that have none yet, in `links` (sorted by name).
    fn find_links(&mut self, sys: &dyn Sys, now: Duration, links: &[Link]) {
        for i in 0..self.ifaces.len() {
            if self.ifaces[i].link.is_some() || now < self.ifaces[i].poll_at {
                continue;
            }
            let taken: Vec<u32> = self
                .ifaces
                .iter()
                .filter_map(|f| f.link.as_ref().map(|l| l.index))
                .collect();
            let free = links.iter().filter(|l| !taken.contains(&l.index));
            let chosen = if matches!(self.ifaces[i].matcher, Matcher::Default { .. }) {
                let candidates: Vec<Link> = free.filter(|l| default_candidate(l)).cloned().collect();
                self.choose_default(sys, now, i, &candidates)
            } else {
                let found = free
                    .into_iter()
                    .find(|l| self.ifaces[i].matcher.matches(l))
                    .cloned();
                let iface = &mut self.ifaces[i];
                if found.is_none() {
                    if !iface.waiting_noted {
                        crate::warn(
                            sys,
                            &format!(
                                "network: no link matches {} yet, waiting for it",
                                iface.matcher.describe()
                            ),
                        );
                        iface.waiting_noted = true;
                    }
                    iface.poll_at = now + LINK_POLL;
                } else if iface.waiting_noted {
                    sys.console(&format!(
                        "{PREFIX}network: {} appeared",
                        found.as_ref().map_or("", |l| l.name.as_str())
                    ));
                }
                found
            };
            if let Some(link) = chosen {
                self.ifaces[i].link = Some(link);
                self.setup(sys, now, i);
            }
        }
    }

    /// The default interface choice, one step: raise the candidates, take the first with a carrier, or
    /// the first by name once [`CARRIER_WAIT`] passed.
    fn choose_default(
        &mut self,
        sys: &dyn Sys,
        now: Duration,
        i: usize,
        candidates: &[Link],
    ) -> Option<Link> {
        let iface = &mut self.ifaces[i];
        let rtnl = &mut self.rtnl;
        let Matcher::Default { raised, since } = &mut iface.matcher else {
            return None;
        };
        if candidates.is_empty() {
            if !iface.waiting_noted {
                crate::warn(sys, "network: no Ethernet link yet, waiting for one");
                iface.waiting_noted = true;
            }
            iface.poll_at = now + LINK_POLL;
            return None;
        }
        let since = *since.get_or_insert(now);
        for link in candidates.iter().filter(|l| !l.up) {
            if raised.iter().any(|r| r.index == link.index) {
                continue;
            }
            match rtnl.set_up(link, true) {
                Ok(()) => raised.push(link.clone()),
                Err(e) => crate::warn(sys, &format!("{}, ignoring", crate::failure::chain(&e))),
            }
        }
        let pick = match default_pick(candidates, since, now) {
            Some((link, false)) => link.clone(),
            Some((link, true)) => {
                crate::warn(
                    sys,
                    &format!(
                        "network: no Ethernet link has a carrier after {} s, using {}",
                        CARRIER_WAIT.as_secs(),
                        link.name
                    ),
                );
                link.clone()
            }
            None => {
                iface.poll_at = now + CARRIER_POLL;
                return None;
            }
        };
        // The candidates raised only to look at their carrier go back down.
        for link in std::mem::take(raised).iter().filter(|l| l.index != pick.index) {
            if let Err(e) = rtnl.set_up(link, false) {
                crate::warn(sys, &format!("{}, ignoring", crate::failure::chain(&e)));
            }
        }
        Some(pick)
    }

    /// Brings interface `i`'s link up and applies its static configuration or starts its DHCP client.
    fn setup(&mut self, sys: &dyn Sys, now: Duration, i: usize) {
        let iface = &mut self.ifaces[i];
        let Some(link) = iface.link.clone() else { return };
        let result = (|| -> Result<(), SetupError> {
            if let Some(mtu) = iface.mtu {
                self.rtnl.set_mtu(&link, mtu)?;
            }
            self.rtnl.set_up(&link, true)?;
            for cidr in &iface.addresses {
                self.rtnl.add_address(&link, *cidr, None)?;
            }
            if let Some(gateway) = iface.gateway {
                let route = DefaultRoute {
                    gateway,
                    metric: metric(i),
                    origin: Origin::Static,
                    onlink: !iface.addresses.iter().any(|c| c.contains(gateway)),
                };
                self.rtnl.replace_default_route(&link, route)?;
            }
            if iface.is_dhcp() {
                let dhcp = iface.dhcp.get_or_insert_with(|| Dhcp {
                    client: Client::new(
                        dhcp::Params {
                            mac: link.mac.unwrap_or(Mac([0; 6])),
                            hostname: self.hostname.clone(),
                        },
                        self.seed ^ u64::from(link.index).rotate_left(17),
                        now,
                    ),
                    socket: None,
                    applied: None,
                    pending: None,
                    send_error: None,
                });
                if dhcp.socket.is_none() {
                    let socket =
                        DhcpSocket::open(&link.name).map_err(|e| SetupError::Socket(link.name.clone(), e))?;
                    dhcp.socket = Some(socket);
                }
            }
            Ok(())
        })();
        match result {
            Ok(()) => {
                iface.set_up = true;
                iface.succeeded();
            }
            Err(e) => iface.failed(sys, now, &e),
        }
    }

    /// Timers of every interface: retries, link polls, DHCP.
    fn run_timers(&mut self, sys: &dyn Sys, now: Duration) {
        for i in 0..self.ifaces.len() {
            if self.ifaces[i].retry_at.is_some_and(|t| now >= t) {
                self.ifaces[i].retry_at = None;
                if !self.ifaces[i].set_up {
                    self.setup(sys, now, i);
                } else if let Some(lease) = self.ifaces[i].dhcp.as_mut().and_then(|d| d.pending.take()) {
                    self.apply_lease(sys, now, i, lease);
                }
            }
            let due = self.ifaces[i]
                .dhcp
                .as_ref()
                .is_some_and(|d| d.socket.is_some() && now >= d.client.deadline());
            if due && self.ifaces[i].set_up {
                let events = self.ifaces[i]
                    .dhcp
                    .as_mut()
                    .map(|d| d.client.on_timer(now))
                    .unwrap_or_default();
                self.handle(sys, now, i, events);
            }
        }
    }

    /// Reads every waiting datagram of interface `i`'s socket into its client.
    fn receive(&mut self, sys: &dyn Sys, now: Duration, i: usize) {
        let mut buf = [0u8; 1500];
        let name = self.ifaces[i].name();
        // Bounded: a flood must not keep PID 1 here.
        for _ in 0..64 {
            let Some(d) = self.ifaces[i].dhcp.as_mut() else {
                return;
            };
            let Some(socket) = &d.socket else { return };
            match socket.recv(&mut buf) {
                Ok(Some((n, _))) => {
                    let events = d.client.on_packet(now, buf.get(..n).unwrap_or_default());
                    self.handle(sys, now, i, events);
                }
                Ok(None) => return,
                Err(e) => {
                    crate::warn(sys, &format!("dhcp {name}: receiving: {e}, reopening the socket"));
                    d.socket = None;
                    self.ifaces[i].set_up = false;
                    self.ifaces[i].retry_at = Some(now + FIRST_RETRY);
                    return;
                }
            }
        }
    }

    fn handle(&mut self, sys: &dyn Sys, now: Duration, i: usize, events: Vec<Event>) {
        for event in events {
            let name = self.ifaces[i].name();
            match event {
                Event::Send { to, bytes } => self.send(sys, i, to, &bytes),
                Event::Bound(lease) => {
                    sys.console(&format!(
                        "{PREFIX}dhcp {name}: lease {} from {} for {}",
                        lease.cidr,
                        lease.server,
                        lease.duration_text()
                    ));
                    self.apply_lease(sys, now, i, lease);
                }
                Event::Renewed(lease) => {
                    sys.console(&format!(
                        "{PREFIX}dhcp {name}: renewed {} for {}",
                        lease.cidr,
                        lease.duration_text()
                    ));
                    self.apply_lease(sys, now, i, lease);
                }
                Event::Lost { lease, why } => {
                    let why = match why {
                        Loss::Expired => "expired".to_owned(),
                        Loss::Replaced => "replaced by the server".to_owned(),
                        Loss::Refused { server, message } => format!(
                            "refused by {}{}",
                            server.map_or_else(|| "the server".to_owned(), |s| s.to_string()),
                            message.map(|m| format!(" ({m})")).unwrap_or_default()
                        ),
                    };
                    crate::warn(
                        sys,
                        &format!("dhcp {name}: lease of {} {why}, address removed", lease.cidr),
                    );
                    self.remove_lease(sys, i, &lease);
                }
                Event::Note(note) => crate::warn(sys, &format!("dhcp {name}: {note}")),
            }
        }
    }

    fn send(&mut self, sys: &dyn Sys, i: usize, to: Destination, bytes: &[u8]) {
        let name = self.ifaces[i].name();
        let Some(d) = self.ifaces[i].dhcp.as_mut() else {
            return;
        };
        let Some(socket) = &d.socket else { return };
        if bytes.is_empty() {
            return;
        }
        let ip = match to {
            Destination::Broadcast => Ipv4Addr::BROADCAST,
            Destination::Unicast(ip) => ip,
        };
        match socket.send_to(bytes, SocketAddrV4::new(ip, DHCP_SERVER_PORT)) {
            Ok(()) => d.send_error = None,
            Err(e) => {
                // The client retransmits; a lasting failure is reported once.
                let text = e.to_string();
                if d.send_error.as_deref() != Some(text.as_str()) {
                    crate::warn(sys, &format!("dhcp {name}: sending to {ip}: {text}, retrying"));
                    d.send_error = Some(text);
                }
            }
        }
    }

    fn apply_lease(&mut self, sys: &dyn Sys, now: Duration, i: usize, lease: Lease) {
        let iface = &mut self.ifaces[i];
        let Some(link) = iface.link.clone() else { return };
        let Some(d) = iface.dhcp.as_mut() else { return };
        let previous_router = d.applied.as_ref().and_then(|l| l.routers.first().copied());
        let result = (|| -> Result<(), netlink::Error> {
            if let (None, Some(mtu)) = (iface.mtu, lease.mtu) {
                self.rtnl.set_mtu(&link, u32::from(mtu))?;
            }
            let lifetime = (!lease.infinite()).then(|| lease.expires_at().saturating_sub(now));
            self.rtnl.add_address(&link, lease.cidr, lifetime)?;
            match lease.routers.first() {
                Some(gw) => self
                    .rtnl
                    .replace_default_route(&link, dhcp_route(i, &lease.cidr, *gw))?,
                None => {
                    if let Some(old) = previous_router {
                        let route = dhcp_route(i, &lease.cidr, old);
                        ignore_missing(self.rtnl.remove_default_route(&link, route))?;
                    }
                }
            }
            Ok(())
        })();
        match result {
            Ok(()) => {
                d.applied = Some(lease);
                d.pending = None;
                iface.succeeded();
            }
            Err(e) => {
                d.pending = Some(lease);
                iface.failed(sys, now, &e);
            }
        }
    }

    fn remove_lease(&mut self, sys: &dyn Sys, i: usize, lease: &Lease) {
        let iface = &mut self.ifaces[i];
        let Some(link) = iface.link.clone() else { return };
        let Some(d) = iface.dhcp.as_mut() else { return };
        d.pending = None;
        let Some(applied) = d.applied.take() else { return };
        let mut result = Ok(());
        if let Some(gw) = applied.routers.first() {
            let route = dhcp_route(i, &applied.cidr, *gw);
            result = ignore_missing(self.rtnl.remove_default_route(&link, route));
        }
        // The kernel may have dropped the address itself when its lifetime ran out.
        let removed = ignore_missing(self.rtnl.remove_address(&link, lease.cidr));
        if let Err(e) = result.and(removed) {
            crate::warn(sys, &format!("{}, ignoring", crate::failure::chain(&e)));
        }
    }

    /// Writes `resolv.conf` when the name servers changed.
    fn update_resolv_conf(&mut self, sys: &dyn Sys, now: Duration) {
        let servers: Vec<Ipv4Addr> = self.ifaces.iter().flat_map(Iface::name_servers).collect();
        let domains: Vec<String> = self
            .ifaces
            .iter()
            .filter_map(Iface::lease)
            .filter_map(|l| l.domain.clone())
            .collect();
        let text = resolv::render(&servers, &domains);
        if self.resolv_written.as_deref() == Some(text.as_str()) {
            return;
        }
        // Nothing known yet: leave the image's file alone.
        if self.resolv_written.is_none() && servers.is_empty() {
            return;
        }
        if self.resolv_retry_at.is_some_and(|t| now < t)
            && self.resolv_failed.as_deref() == Some(text.as_str())
        {
            return;
        }
        match crate::sys::net::replace_file(&self.options.resolv_conf, text.as_bytes()) {
            Ok(()) => {
                self.resolv_written = Some(text);
                self.resolv_failed = None;
                self.resolv_retry_at = None;
            }
            Err(e) => {
                if self.resolv_failed.as_deref() != Some(text.as_str()) {
                    crate::warn(
                        sys,
                        &format!(
                            "writing {}: {e}, retrying in {} s",
                            self.options.resolv_conf.display(),
                            MAX_RETRY.as_secs()
                        ),
                    );
                }
                self.resolv_failed = Some(text);
                self.resolv_retry_at = Some(now + MAX_RETRY);
            }
        }
    }
}

/// The default route metric of interface `i`: the first configured interface is preferred.
fn metric(i: usize) -> u32 {
    u32::try_from(i).unwrap_or(u32::MAX)
}

fn dhcp_route(i: usize, cidr: &Ipv4Cidr, gateway: Ipv4Addr) -> DefaultRoute {
    DefaultRoute {
        gateway,
        metric: metric(i),
        origin: Origin::Dhcp,
        onlink: !cidr.contains(gateway),
    }
}

/// Removing what is already gone is success.
fn ignore_missing(r: Result<(), netlink::Error>) -> Result<(), netlink::Error> {
    match r {
        Err(e) if matches!(e.errno(), Some(ESRCH | ENOENT | EADDRNOTAVAIL)) => Ok(()),
        other => other,
    }
}

#[derive(Debug, thiserror::Error)]
enum SetupError {
    #[error(transparent)]
    Netlink(#[from] netlink::Error),
    #[error("opening the DHCP socket on {0}")]
    Socket(String, #[source] std::io::Error),
}

impl Pollable for Network {
    fn fds(&self) -> Vec<RawFd> {
        self.ifaces
            .iter()
            .filter_map(|i| i.dhcp.as_ref()?.socket.as_ref().map(DhcpSocket::raw_fd))
            .collect()
    }

    fn deadline(&self) -> Option<Duration> {
        let mut times = Vec::new();
        for i in &self.ifaces {
            if i.link.is_none() {
                times.push(i.poll_at);
            }
            times.extend(i.retry_at);
            if let Some(d) = i.dhcp.as_ref().filter(|d| i.set_up && d.socket.is_some()) {
                times.push(d.client.deadline());
            }
        }
        times.extend(self.resolv_retry_at);
        times.into_iter().min()
    }

    fn wake(&mut self, sys: &dyn Sys, now: Duration, readable: &[RawFd]) {
        if self.ifaces.iter().any(|i| i.link.is_none() && now >= i.poll_at) {
            match self.rtnl.links() {
                Ok(links) => {
                    self.links_error = None;
                    self.find_links(sys, now, &links);
                }
                Err(e) => {
                    // A lasting failure is reported once, not every poll.
                    let text = crate::failure::chain(&e);
                    if self.links_error.as_deref() != Some(text.as_str()) {
                        crate::warn(sys, &format!("{text}, retrying every {} s", LINK_POLL.as_secs()));
                        self.links_error = Some(text);
                    }
                    for i in self.ifaces.iter_mut().filter(|i| i.link.is_none()) {
                        i.poll_at = now + LINK_POLL;
                    }
                }
            }
        }
        for i in 0..self.ifaces.len() {
            let fd = self.ifaces[i]
                .dhcp
                .as_ref()
                .and_then(|d| d.socket.as_ref())
                .map(DhcpSocket::raw_fd);
            if fd.is_some_and(|fd| readable.contains(&fd)) {
                self.receive(sys, now, i);
            }
        }
        self.run_timers(sys, now);
        self.update_resolv_conf(sys, now);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn link(index: u32, name: &str, kind: Option<&str>, carrier: bool) -> Link {
        Link {
            index,
            name: name.to_owned(),
            mac: Some(Mac([2, 0, 0, 0, 0, index as u8])),
            ethernet: true,
            loopback: false,
            kind: kind.map(str::to_owned),
            up: carrier,
            carrier,
            mtu: Some(1500),
        }
    }

    fn iface(c: config::Interface) -> Result<Iface, String> {
        Iface::from_config(1, &c).map_err(|e| e.to_string())
    }

    #[test]
    fn interfaces_match_by_name_mac_or_both() {
        let eth0 = link(2, "eth0", None, true);
        let by = |name: Option<&str>, mac: Option<&str>| Matcher::Given {
            name: name.map(str::to_owned),
            mac: mac.map(|m| m.parse().unwrap()),
        };
        assert!(by(Some("eth0"), None).matches(&eth0));
        assert!(by(None, Some("02:00:00:00:00:02")).matches(&eth0));
        assert!(by(Some("eth0"), Some("02:00:00:00:00:02")).matches(&eth0));
        assert!(!by(Some("eth0"), Some("02:00:00:00:00:03")).matches(&eth0));
        assert!(!by(Some("eth1"), None).matches(&eth0));
    }

    #[test]
    fn the_default_choice_takes_physical_ethernet_only() {
        assert!(default_candidate(&link(2, "eth0", None, false)));
        assert!(!default_candidate(&link(3, "veth0", Some("veth"), true)));
        let mut lo = link(1, "lo", None, true);
        lo.loopback = true;
        lo.ethernet = false;
        assert!(!default_candidate(&lo));
        let mut wg = link(4, "wg0", None, true);
        wg.ethernet = false;
        assert!(!default_candidate(&wg));
    }

    #[test]
    fn the_default_choice_prefers_a_carrier_then_waits_then_takes_the_first() {
        let s = Duration::from_secs;
        let no_carrier = [link(2, "eth0", None, false), link(3, "eth1", None, false)];
        assert_eq!(default_pick(&no_carrier, s(10), s(10)), None);
        assert_eq!(default_pick(&no_carrier, s(10), s(14)), None);
        let (pick, late) = default_pick(&no_carrier, s(10), s(15)).unwrap();
        assert_eq!((pick.name.as_str(), late), ("eth0", true));
        let second_up = [link(2, "eth0", None, false), link(3, "eth1", None, true)];
        let (pick, late) = default_pick(&second_up, s(10), s(10)).unwrap();
        assert_eq!((pick.name.as_str(), late), ("eth1", false));
        assert_eq!(default_pick(&[], s(0), s(100)), None);
    }

    #[test]
    fn failures_are_retried_with_a_growing_delay_and_said_so() {
        let sys = crate::sys::fake::FakeSys::new();
        let mut f = Iface::new(
            Matcher::Default {
                raised: vec![],
                since: None,
            },
            vec![],
            None,
            vec![],
            None,
        );
        let err = netlink::Error::Kernel {
            what: "setting eth0 up".into(),
            source: std::io::Error::from_raw_os_error(19),
        };
        let mut delays = Vec::new();
        for _ in 0..7 {
            f.failed(&sys, Duration::from_secs(100), &err);
            delays.push(f.retry_at.unwrap().as_secs() - 100);
        }
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(
            sys.console_lines()[0],
            "ingot: warning network: setting eth0 up: No such device (os error 19), retrying in 1 s"
        );
        f.succeeded();
        assert_eq!((f.retry_at, f.retry_delay), (None, FIRST_RETRY));
    }

    #[test]
    fn configuration_errors_name_the_interface_and_the_field() {
        let name = |n: &str| config::InterfaceMatch {
            name: Some(n.to_owned()),
            mac: None,
        };
        let err = iface(config::Interface::default()).unwrap_err();
        assert_eq!(
            err,
            "network interface 1 of the configuration: `match` names no link: give `name`, `mac` or both"
        );
        let err = iface(config::Interface {
            matches: name("eth0"),
            addresses: vec!["10.0.0.5".into()],
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            err.ends_with("`10.0.0.5` has no prefix length (expected a.b.c.d/len)"),
            "{err}"
        );
        let err = iface(config::Interface {
            matches: name("eth0"),
            gateway: Some(Ipv4Addr::new(10, 0, 0, 1)),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.contains("`gateway` needs static `addresses`"), "{err}");
        let err = iface(config::Interface {
            matches: name("eth0"),
            mtu: Some(40),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.ends_with("`mtu` 40 is outside 68..=65535"), "{err}");
        let err = iface(config::Interface {
            matches: config::InterfaceMatch {
                name: None,
                mac: Some("52:54:00".into()),
            },
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.contains("is not a MAC address"), "{err}");
    }

    #[test]
    fn summaries_show_what_is_configured() {
        let mut f = iface(config::Interface {
            matches: config::InterfaceMatch {
                name: Some("eth1".into()),
                mac: None,
            },
            addresses: vec!["192.168.10.5/24".into()],
            gateway: Some(Ipv4Addr::new(192, 168, 10, 1)),
            dns: vec![Ipv4Addr::new(1, 1, 1, 1)],
            mtu: None,
        })
        .unwrap();
        assert_eq!(
            f.summary(),
            "interface=none match=name:eth1 address=none via=static state=no-link"
        );
        f.link = Some(link(3, "eth1", None, true));
        f.set_up = true;
        assert_eq!(
            f.summary(),
            "interface=eth1 address=192.168.10.5/24 gateway=192.168.10.1 dns=1.1.1.1 via=static"
        );
        assert!(f.configured());

        let mut d = Iface::new(
            Matcher::Default {
                raised: vec![],
                since: None,
            },
            vec![],
            None,
            vec![],
            None,
        );
        d.link = Some(link(2, "eth0", None, true));
        d.set_up = true;
        let client = Client::new(
            dhcp::Params {
                mac: Mac([2; 6]),
                hostname: None,
            },
            1,
            Duration::ZERO,
        );
        d.dhcp = Some(Dhcp {
            client,
            socket: None,
            applied: None,
            pending: None,
            send_error: None,
        });
        assert_eq!(
            d.summary(),
            "interface=eth0 address=none via=dhcp state=discovering"
        );
        assert!(!d.configured());
        d.dhcp.as_mut().unwrap().applied = Some(Lease {
            cidr: "10.0.2.15/24".parse().unwrap(),
            server: Ipv4Addr::new(10, 0, 2, 2),
            routers: vec![Ipv4Addr::new(10, 0, 2, 2)],
            dns: vec![Ipv4Addr::new(10, 0, 2, 3)],
            ntp: vec![],
            domain: None,
            mtu: None,
            start: Duration::ZERO,
            duration: Duration::from_secs(86400),
            t1: Duration::from_secs(43200),
            t2: Duration::from_secs(75600),
        });
        assert_eq!(
            d.summary(),
            "interface=eth0 address=10.0.2.15/24 gateway=10.0.2.2 dns=10.0.2.3 via=dhcp lease=86400s"
        );
        assert!(d.configured());
    }
}
