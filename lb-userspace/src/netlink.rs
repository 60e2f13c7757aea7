//! Route netlink (rtnetlink) in the controller's network namespace:
//! neighbours (worker MACs and reachability), links (what XDP program an
//! interface runs) and addresses, and the kernel's notices of neighbour
//! changes. Blocking, one request at a time: the kernel answers at once,
//! and callers run off the async runtime.

use std::{collections::HashMap, io, net::IpAddr};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REPLACE,
    NLM_F_REQUEST,
};
use netlink_packet_route::{
    address::{AddressAttribute, AddressMessage},
    link::{LinkAttribute, LinkMessage, LinkXdp, XdpAttached},
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState},
    AddressFamily, RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::neighbour::Entry;

/// Cache ages come in clock ticks of USER_HZ, 100 on every Linux port.
const USER_HZ: u32 = 100;
/// The multicast group of neighbour changes (RTNLGRP_NEIGH).
const GROUP_NEIGHBOURS: u32 = 3;

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
        message.header.family = match addr {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
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

    /// Every address of every interface in this network namespace.
    pub fn addresses(&mut self) -> io::Result<Vec<IpAddr>> {
        let mut found = Vec::new();
        let request = RouteNetlinkMessage::GetAddress(AddressMessage::default());
        self.request(request, NLM_F_DUMP, |answer| {
            let RouteNetlinkMessage::NewAddress(message) = answer else {
                return;
            };
            for attribute in message.attributes {
                if let AddressAttribute::Address(addr) | AddressAttribute::Local(addr) = attribute {
                    found.push(addr);
                }
            }
        })?;
        found.sort();
        found.dedup();
        Ok(found)
    }

    /// The XDP program interface `ifindex` runs.
    pub fn xdp(&mut self, ifindex: u32) -> io::Result<XdpState> {
        let mut message = LinkMessage::default();
        message.header.index = ifindex;
        let mut state = XdpState {
            program_id: 0,
            mode: "none",
        };
        self.request(RouteNetlinkMessage::GetLink(message), 0, |answer| {
            let RouteNetlinkMessage::NewLink(link) = answer else {
                return;
            };
            for attribute in &link.attributes {
                let LinkAttribute::Xdp(xdp) = attribute else {
                    continue;
                };
                for item in xdp {
                    match item {
                        LinkXdp::ProgId(id) => state.program_id = *id,
                        LinkXdp::Attached(attached) => state.mode = mode_name(attached),
                        _ => {}
                    }
                }
            }
        })?;
        Ok(state)
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

/// A socket that hears of every change to the neighbour table.
pub struct NeighbourEvents {
    socket: Socket,
}

impl NeighbourEvents {
    /// Subscribes to neighbour changes in the caller's network namespace.
    pub fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.add_membership(GROUP_NEIGHBOURS)?;
        Ok(Self { socket })
    }

    /// Blocks until the kernel reports a change to a neighbour of
    /// interface `ifindex`. Notices lost to a full receive buffer count
    /// as a change, since any of them may have been one.
    pub fn changed(&self, ifindex: u32) -> io::Result<()> {
        loop {
            let data = match self.socket.recv_from_full() {
                Ok((data, _)) => data,
                Err(error) if error.raw_os_error() == Some(libc::ENOBUFS) => return Ok(()),
                Err(error) => return Err(error),
            };
            if touches(&data, ifindex) {
                return Ok(());
            }
        }
    }
}

/// Whether a datagram of notices holds one about a neighbour of `ifindex`.
fn touches(data: &[u8], ifindex: u32) -> bool {
    let mut offset = 0;
    while offset < data.len() {
        let Ok(notice) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..]) else {
            return true;
        };
        if notice.header.length == 0 {
            break;
        }
        offset += notice.header.length as usize;
        if let NetlinkPayload::InnerMessage(
            RouteNetlinkMessage::NewNeighbour(message) | RouteNetlinkMessage::DelNeighbour(message),
        ) = notice.payload
        {
            if message.header.ifindex == ifindex {
                return true;
            }
        }
    }
    false
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
    crate::iface::index_of(name).ok_or_else(|| {
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
