//! Route netlink (rtnetlink) in the controller's network namespace:
//! neighbours (worker and next-hop MACs and reachability), routes (the
//! next hop toward an L3 worker), links (what XDP program an interface
//! runs, its MTU) and addresses, and the kernel's notices of neighbour
//! and route changes. Blocking, one request at a time: the kernel answers
//! at once, and callers run off the async runtime.

use std::{collections::HashMap, io, net::IpAddr};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP,
    NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::{
    address::{AddressAttribute, AddressMessage},
    link::{LinkAttribute, LinkMessage, LinkXdp, XdpAttached},
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState},
    route::{
        RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType, RouteVia,
    },
    AddressFamily, RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::kernel::neighbour::Entry;

/// The protocol number lb's routes carry: daemons learn routes by it, and
/// nothing else (DHCP clients, NetworkManager, an operator's `ip route
/// flush proto static`) touches them. `ip route` names it `lb` with
/// dist/rt_protos.d/lb.conf.
pub const LB_ROUTE_PROTOCOL: u8 = 250;

/// Cache ages come in clock ticks of USER_HZ, 100 on every Linux port.
const USER_HZ: u32 = 100;
/// The multicast group of neighbour changes (RTNLGRP_NEIGH).
const GROUP_NEIGHBOURS: u32 = 3;
/// The multicast groups of IPv4 and IPv6 route changes
/// (RTNLGRP_IPV4_ROUTE, RTNLGRP_IPV6_ROUTE).
const GROUPS_ROUTES: [u32; 2] = [7, 11];

/// Where the kernel would send a packet for an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// The interface it leaves by.
    pub ifindex: u32,
    /// The router it goes to; `None` when the address is on that link.
    pub gateway: Option<IpAddr>,
}

/// The XDP program an interface runs, as the kernel reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XdpState {
    /// The program's id (0: none).
    pub program_id: u32,
    /// How it is attached: `native`, `generic`, `offload` or `none`.
    pub mode: &'static str,
}

/// A route netlink socket.
pub struct Netlink {
    socket: Socket,
    sequence: u32,
}

impl Netlink {
    /// Opens a socket in the caller's network namespace.
    pub fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Self {
            socket,
            sequence: 0,
        })
    }

    /// As [`Self::open`], with strict checking of requests: dumps are then
    /// filtered in the kernel by what their header and attributes ask for.
    pub fn open_strict() -> io::Result<Self> {
        let netlink = Self::open()?;
        netlink.socket.set_netlink_get_strict_chk(true)?;
        Ok(netlink)
    }

    /// The neighbour entries of interface `ifindex`, by address.
    pub fn neighbours(&mut self, ifindex: u32) -> io::Result<HashMap<IpAddr, Entry>> {
        let mut entries = HashMap::new();
        let request = RouteNetlinkMessage::GetNeighbour(NeighbourMessage::default());
        self.request(request, NLM_F_DUMP, |answer| {
            if let RouteNetlinkMessage::NewNeighbour(message) = answer {
                if message.header.ifindex == ifindex {
                    entries.extend(neighbour_entry(&message));
                }
            }
        })?;
        Ok(entries)
    }

    /// Asks the kernel to confirm that `addr` on interface `ifindex` still
    /// answers: its entry goes to PROBE, which either confirms it
    /// (REACHABLE) or fails it (FAILED) after the kernel's unicast probes.
    /// Needs an entry with a link-layer address.
    pub fn probe_neighbour(&mut self, ifindex: u32, addr: IpAddr) -> io::Result<()> {
        let mut message = NeighbourMessage::default();
        message.header.family = family(addr);
        message.header.ifindex = ifindex;
        message.header.state = NeighbourState::Probe;
        message
            .attributes
            .push(NeighbourAttribute::Destination(match addr {
                IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
                IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
            }));
        let request = RouteNetlinkMessage::NewNeighbour(message);
        self.request(request, NLM_F_REPLACE | NLM_F_ACK, |_| {})
    }

    /// The route the kernel takes to `addr`; `None` when it has none
    /// (unreachable, blackhole, prohibited, or local).
    pub fn route_to(&mut self, addr: IpAddr) -> io::Result<Option<Route>> {
        let mut message = RouteMessage::default();
        message.header.address_family = family(addr);
        message.header.destination_prefix_length = full_length(addr);
        message
            .attributes
            .push(RouteAttribute::Destination(RouteAddress::from(addr)));
        let mut found = None;
        let answer = self.request(RouteNetlinkMessage::GetRoute(message), 0, |answer| {
            if let RouteNetlinkMessage::NewRoute(route) = answer {
                found = route_of(&route);
            }
        });
        match answer {
            Ok(()) => Ok(found),
            // What `ip route get` reports as "Network is unreachable" and
            // the like: no route.
            Err(error)
                if matches!(
                    error.raw_os_error(),
                    Some(libc::ENETUNREACH | libc::EHOSTUNREACH | libc::EACCES | libc::EINVAL)
                ) =>
            {
                Ok(None)
            }
            Err(error) => Err(error),
        }
    }

    /// Puts a host route for `addr` through interface `ifindex` into
    /// routing table `table`, marked with `protocol`; one there already is
    /// replaced.
    pub fn add_host_route(
        &mut self,
        table: u32,
        protocol: u8,
        addr: IpAddr,
        ifindex: u32,
    ) -> io::Result<()> {
        let mut message = host_route(table, protocol, addr);
        message.header.scope = RouteScope::Link;
        message.header.kind = RouteType::Unicast;
        message.attributes.push(RouteAttribute::Oif(ifindex));
        let request = RouteNetlinkMessage::NewRoute(message);
        self.request(request, NLM_F_CREATE | NLM_F_REPLACE | NLM_F_ACK, |_| {})
    }

    /// Removes the host route for `addr` marked with `protocol` from
    /// table `table`; none there is no error.
    pub fn del_host_route(&mut self, table: u32, protocol: u8, addr: IpAddr) -> io::Result<()> {
        let mut message = host_route(table, protocol, addr);
        message.header.scope = RouteScope::NoWhere;
        let request = RouteNetlinkMessage::DelRoute(message);
        match self.request(request, NLM_F_ACK, |_| {}) {
            Err(error) if error.raw_os_error() == Some(libc::ESRCH) => Ok(()),
            done => done,
        }
    }

    /// The host routes marked with `protocol`, each with its table, in
    /// table `table` or in every table, of both families. On a socket of
    /// [`Self::open_strict`] the kernel sends only those.
    pub fn host_routes(
        &mut self,
        protocol: u8,
        table: Option<u32>,
    ) -> io::Result<Vec<(u32, IpAddr)>> {
        let mut found = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut message = RouteMessage::default();
            message.header.address_family = family;
            message.header.protocol = RouteProtocol::from(protocol);
            if let Some(table) = table {
                message.header.table = u8::try_from(table).unwrap_or(RT_TABLE_COMPAT);
                message.attributes.push(RouteAttribute::Table(table));
            }
            let request = RouteNetlinkMessage::GetRoute(message);
            let dumped = self.request(request, NLM_F_DUMP, |answer| {
                if let RouteNetlinkMessage::NewRoute(route) = answer {
                    found.extend(
                        host_route_of(&route, protocol)
                            .filter(|(t, _)| table.is_none_or(|wanted| *t == wanted)),
                    );
                }
            });
            match dumped {
                // A table that holds no route of the family does not exist.
                Err(error) if error.raw_os_error() == Some(libc::ENOENT) => {}
                other => other?,
            }
        }
        Ok(found)
    }

    /// The MAC address of interface `ifindex`.
    pub fn mac(&mut self, ifindex: u32) -> io::Result<[u8; 6]> {
        let mut mac = None;
        self.get_link(ifindex, |attribute| {
            if let LinkAttribute::Address(bytes) = attribute {
                mac = <[u8; 6]>::try_from(bytes.as_slice()).ok();
            }
        })?;
        mac.ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "the link has no MAC address"))
    }

    /// The MTU of interface `ifindex`.
    pub fn mtu(&mut self, ifindex: u32) -> io::Result<u32> {
        let mut mtu = None;
        self.get_link(ifindex, |attribute| {
            if let LinkAttribute::Mtu(value) = attribute {
                mtu = Some(*value);
            }
        })?;
        mtu.ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "the link has no MTU"))
    }

    /// The addresses of interface `ifindex` of global scope, primary first
    /// within each family, as the kernel lists them.
    pub fn interface_addresses(&mut self, ifindex: u32) -> io::Result<Vec<IpAddr>> {
        let mut found = Vec::new();
        self.each_address(|message| {
            // Scope 0 is "universe" (global): no link-local or host addresses.
            if message.header.index != ifindex || u8::from(message.header.scope) != 0 {
                return;
            }
            for attribute in &message.attributes {
                if let AddressAttribute::Address(addr) = attribute {
                    found.push(*addr);
                }
            }
        })?;
        Ok(found)
    }

    /// The subnets of interface `ifindex`: each address with its prefix
    /// length, as `ip addr` shows them.
    pub fn interface_prefixes(&mut self, ifindex: u32) -> io::Result<Vec<(IpAddr, u8)>> {
        let mut found = Vec::new();
        self.each_address(|message| {
            if message.header.index != ifindex {
                return;
            }
            for attribute in &message.attributes {
                if let AddressAttribute::Address(addr) = attribute {
                    found.push((*addr, message.header.prefix_len));
                }
            }
        })?;
        Ok(found)
    }

    /// Every address of every interface in this network namespace.
    pub fn addresses(&mut self) -> io::Result<Vec<IpAddr>> {
        let mut found = Vec::new();
        self.each_address(|message| {
            for attribute in &message.attributes {
                if let AddressAttribute::Address(addr) | AddressAttribute::Local(addr) = attribute {
                    found.push(*addr);
                }
            }
        })?;
        found.sort();
        found.dedup();
        Ok(found)
    }

    /// Hands each address message of a dump of every address to `each`.
    fn each_address(&mut self, mut each: impl FnMut(&AddressMessage)) -> io::Result<()> {
        let request = RouteNetlinkMessage::GetAddress(AddressMessage::default());
        self.request(request, NLM_F_DUMP, |answer| {
            if let RouteNetlinkMessage::NewAddress(message) = answer {
                each(&message);
            }
        })
    }

    /// The XDP program interface `ifindex` runs.
    pub fn xdp(&mut self, ifindex: u32) -> io::Result<XdpState> {
        let mut state = XdpState {
            program_id: 0,
            mode: "none",
        };
        self.get_link(ifindex, |attribute| {
            let LinkAttribute::Xdp(xdp) = attribute else {
                return;
            };
            for item in xdp {
                match item {
                    LinkXdp::ProgId(id) => state.program_id = *id,
                    LinkXdp::Attached(attached) => state.mode = mode_name(attached),
                    _ => {}
                }
            }
        })?;
        Ok(state)
    }

    /// Hands each attribute of link `ifindex` to `each`.
    fn get_link(&mut self, ifindex: u32, mut each: impl FnMut(&LinkAttribute)) -> io::Result<()> {
        let mut message = LinkMessage::default();
        message.header.index = ifindex;
        self.request(RouteNetlinkMessage::GetLink(message), 0, |answer| {
            if let RouteNetlinkMessage::NewLink(link) = answer {
                link.attributes.iter().for_each(&mut each);
            }
        })
    }

    /// Sends one request and reads its answers up to the end of the dump,
    /// the acknowledgement or the one answer, handing each to `each`.
    fn request(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
        mut each: impl FnMut(RouteNetlinkMessage),
    ) -> io::Result<()> {
        self.sequence = self.sequence.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.sequence;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(message));
        packet.finalize();
        let mut buffer = vec![0; packet.buffer_len()];
        packet.serialize(&mut buffer);
        self.socket.send(&buffer, 0)?;
        let single = flags & (NLM_F_DUMP | NLM_F_ACK) == 0;
        loop {
            let (data, _) = self.socket.recv_from_full()?;
            let mut offset = 0;
            while offset < data.len() {
                let answer = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                if answer.header.length == 0 {
                    break;
                }
                offset += answer.header.length as usize;
                // Left over from an earlier request that gave up half way.
                if answer.header.sequence_number != self.sequence {
                    continue;
                }
                match answer.payload {
                    NetlinkPayload::Done(_) => return Ok(()),
                    NetlinkPayload::Error(error) => {
                        return match error.code {
                            None => Ok(()),
                            Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                        }
                    }
                    NetlinkPayload::InnerMessage(inner) => {
                        each(inner);
                        if single {
                            return Ok(());
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

/// What changed, as the kernel's notices tell.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// A neighbour of the interface.
    pub neighbours: bool,
    /// Some route (any may change the way to an L3 worker), lb's own
    /// excepted.
    pub routes: bool,
    /// A route of lb's announcements (protocol [`LB_ROUTE_PROTOCOL`]).
    pub announced: bool,
}

impl Changes {
    /// What notices lost to a full receive buffer may have said.
    const ALL: Self = Self {
        neighbours: true,
        routes: true,
        announced: true,
    };
}

/// A socket that hears of every change to the neighbour table and to the
/// routes.
pub struct ChangeNotices {
    socket: Socket,
}

impl ChangeNotices {
    /// Subscribes to neighbour and route changes in the caller's network
    /// namespace.
    pub fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.add_membership(GROUP_NEIGHBOURS)?;
        for group in GROUPS_ROUTES {
            socket.add_membership(group)?;
        }
        Ok(Self { socket })
    }

    /// Blocks until the kernel reports a change to a neighbour of one of
    /// interfaces `ifindexes` or to a route. Notices lost to a full
    /// receive buffer count as both, since any of them may have been
    /// either.
    pub fn next(&self, ifindexes: &[u32]) -> io::Result<Changes> {
        loop {
            let data = match self.socket.recv_from_full() {
                Ok((data, _)) => data,
                Err(error) if error.raw_os_error() == Some(libc::ENOBUFS) => {
                    return Ok(Changes::ALL)
                }
                Err(error) => return Err(error),
            };
            let changes = changes_in(&data, ifindexes);
            if changes != Changes::default() {
                return Ok(changes);
            }
        }
    }
}

/// What a datagram of notices says changed.
fn changes_in(data: &[u8], ifindexes: &[u32]) -> Changes {
    let mut changes = Changes::default();
    let mut offset = 0;
    while offset < data.len() {
        let Ok(notice) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..]) else {
            return Changes::ALL;
        };
        if notice.header.length == 0 {
            break;
        }
        offset += notice.header.length as usize;
        match notice.payload {
            NetlinkPayload::InnerMessage(
                RouteNetlinkMessage::NewNeighbour(message)
                | RouteNetlinkMessage::DelNeighbour(message),
            ) => changes.neighbours |= ifindexes.contains(&message.header.ifindex),
            NetlinkPayload::InnerMessage(
                RouteNetlinkMessage::NewRoute(route) | RouteNetlinkMessage::DelRoute(route),
            ) => {
                if u8::from(route.header.protocol) == LB_ROUTE_PROTOCOL {
                    changes.announced = true;
                } else {
                    changes.routes = true;
                }
            }
            _ => {}
        }
    }
    changes
}

fn family(addr: IpAddr) -> AddressFamily {
    match addr {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

/// The header and destination of a host route for `addr` in `table`.
fn host_route(table: u32, protocol: u8, addr: IpAddr) -> RouteMessage {
    let mut message = RouteMessage::default();
    message.header.address_family = family(addr);
    message.header.destination_prefix_length = full_length(addr);
    // Tables past 255 only fit the attribute; the header then says
    // "compat", as iproute2 does.
    message.header.table = u8::try_from(table).unwrap_or(RT_TABLE_COMPAT);
    message.header.protocol = RouteProtocol::from(protocol);
    message
        .attributes
        .push(RouteAttribute::Destination(RouteAddress::from(addr)));
    message.attributes.push(RouteAttribute::Table(table));
    message
}

/// The table "compat": what a header says of a table past 255.
const RT_TABLE_COMPAT: u8 = 252;

fn full_length(addr: IpAddr) -> u8 {
    if addr.is_ipv4() {
        32
    } else {
        128
    }
}

/// The table and address of a host route marked with `protocol`.
fn host_route_of(route: &RouteMessage, protocol: u8) -> Option<(u32, IpAddr)> {
    if u8::from(route.header.protocol) != protocol {
        return None;
    }
    let mut table = u32::from(route.header.table);
    let mut destination = None;
    for attribute in &route.attributes {
        match attribute {
            RouteAttribute::Table(id) => table = *id,
            RouteAttribute::Destination(RouteAddress::Inet(v4)) => {
                destination = Some(IpAddr::V4(*v4));
            }
            RouteAttribute::Destination(RouteAddress::Inet6(v6)) => {
                destination = Some(IpAddr::V6(*v6));
            }
            _ => {}
        }
    }
    let addr = destination?;
    (route.header.destination_prefix_length == full_length(addr)).then_some((table, addr))
}

/// The interface and gateway of a unicast route.
fn route_of(route: &RouteMessage) -> Option<Route> {
    if route.header.kind != RouteType::Unicast {
        return None;
    }
    let mut found = Route {
        ifindex: 0,
        gateway: None,
    };
    for attribute in &route.attributes {
        match attribute {
            RouteAttribute::Oif(index) => found.ifindex = *index,
            RouteAttribute::Gateway(RouteAddress::Inet(v4))
            | RouteAttribute::Via(RouteVia::Inet(v4)) => found.gateway = Some(IpAddr::V4(*v4)),
            RouteAttribute::Gateway(RouteAddress::Inet6(v6))
            | RouteAttribute::Via(RouteVia::Inet6(v6)) => found.gateway = Some(IpAddr::V6(*v6)),
            _ => {}
        }
    }
    (found.ifindex != 0).then_some(found)
}

fn mode_name(attached: &XdpAttached) -> &'static str {
    match attached {
        XdpAttached::Driver => "native",
        XdpAttached::SocketBuffer => "generic",
        XdpAttached::Hardware => "offload",
        XdpAttached::Multiple => "multiple",
        _ => "none",
    }
}

/// The address and state of a neighbour message.
fn neighbour_entry(message: &NeighbourMessage) -> Option<(IpAddr, Entry)> {
    let mut addr = None;
    let mut mac = None;
    let mut confirmed_ms = 0;
    for attribute in &message.attributes {
        match attribute {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                addr = Some(IpAddr::V4(*v4));
            }
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                addr = Some(IpAddr::V6(*v6));
            }
            NeighbourAttribute::LinkLayerAddress(bytes) => {
                mac = <[u8; 6]>::try_from(&bytes[..]).ok();
            }
            NeighbourAttribute::CacheInfo(info) => {
                confirmed_ms = info.confirmed.saturating_mul(1000 / USER_HZ);
            }
            _ => {}
        }
    }
    let entry = match (message.header.state, mac) {
        (NeighbourState::Failed, _) => Entry::Failed,
        (NeighbourState::Incomplete | NeighbourState::None, _) | (_, None) => Entry::Resolving,
        (state, Some(mac)) => Entry::Resolved {
            mac,
            confirmed_ms,
            fixed: matches!(state, NeighbourState::Permanent | NeighbourState::Noarp),
            probing: matches!(state, NeighbourState::Delay | NeighbourState::Probe),
        },
    };
    Some((addr?, entry))
}

/// The index of interface `name` in the caller's network namespace.
pub fn ifindex(name: &str) -> io::Result<u32> {
    crate::kernel::iface::index_of(name).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("no network interface named `{name}` here"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_can_be_read() {
        // Any user may read these; loopback's neighbour entries, if any,
        // are static ones that are never probed, and it runs no XDP.
        let mut netlink = Netlink::open().unwrap();
        let lo = ifindex("lo").unwrap();
        for (addr, entry) in netlink.neighbours(lo).unwrap() {
            assert!(
                matches!(entry, Entry::Resolved { fixed: true, .. }),
                "{addr}: {entry:?}"
            );
        }
        let xdp = netlink.xdp(lo).unwrap();
        assert_eq!((xdp.program_id, xdp.mode), (0, "none"));
        let own = netlink.addresses().unwrap();
        assert!(own.contains(&IpAddr::from([127, 0, 0, 1])), "{own:?}");
        assert!(ifindex("no-such-dev0").is_err());
    }
}
