//! Worker MAC addresses and reachability from the kernel's neighbour
//! table, over rtnetlink: lb never asks a user to type a MAC, and learns
//! when a worker's host stops answering ARP or neighbour discovery.
//!
//! The data plane sends to workers without the kernel's help, so nothing
//! keeps their neighbour entries fresh: a dead host's entry could stay
//! `STALE` forever. The controller therefore asks the kernel to re-probe
//! entries that have not been confirmed lately ([`Netlink::probe`]); a
//! host that does not answer the probes goes `FAILED` within about three
//! seconds.

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, SocketAddr, UdpSocket},
};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REPLACE,
    NLM_F_REQUEST,
};
use netlink_packet_route::{
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState},
    AddressFamily, RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr as NetlinkAddr};

/// The discard port: a datagram to it makes the kernel resolve the worker's
/// address without bothering any service.
const DISCARD_PORT: u16 = 9;

/// Cache ages come in clock ticks of USER_HZ, 100 on every Linux port.
const USER_HZ: u32 = 100;

/// What the kernel's neighbour table says about one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    /// A usable MAC address; `confirmed_ms` ago the kernel last had proof
    /// that the host answers.
    Resolved {
        /// The MAC address.
        mac: [u8; 6],
        /// Milliseconds since the last confirmation.
        confirmed_ms: u32,
        /// The entry is static (permanent or no-ARP): never probed.
        fixed: bool,
        /// The kernel is confirming it already (DELAY or PROBE): asking
        /// again would restart its probe count, so a dead host would never
        /// fail.
        probing: bool,
    },
    /// Resolution is under way (no usable address yet).
    Resolving,
    /// The host did not answer the kernel's probes.
    Failed,
}

/// A route netlink socket for the neighbour table of one interface.
pub struct Netlink {
    socket: Socket,
    ifindex: u32,
    sequence: u32,
}

impl Netlink {
    /// Opens a socket for the neighbours of `iface` (in the caller's
    /// network namespace).
    pub fn open(iface: &str) -> io::Result<Self> {
        let ifindex = ifindex(iface)?;
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&NetlinkAddr::new(0, 0))?;
        Ok(Self {
            socket,
            ifindex,
            sequence: 0,
        })
    }

    /// The interface's neighbour entries, by address.
    pub fn table(&mut self) -> io::Result<HashMap<IpAddr, Entry>> {
        let request = NeighbourMessage::default();
        let mut entries = HashMap::new();
        let ifindex = self.ifindex;
        self.request(request, NLM_F_DUMP, |message| {
            if message.header.ifindex != ifindex {
                return;
            }
            if let Some((addr, entry)) = entry_of(&message) {
                entries.insert(addr, entry);
            }
        })?;
        Ok(entries)
    }

    /// Asks the kernel to confirm that `addr` still answers: its entry goes
    /// to PROBE, which either confirms it (REACHABLE) or fails it (FAILED)
    /// after the kernel's unicast probes. Needs an entry with an address.
    pub fn probe(&mut self, addr: IpAddr) -> io::Result<()> {
        let mut message = NeighbourMessage::default();
        message.header.family = family(addr);
        message.header.ifindex = self.ifindex;
        message.header.state = NeighbourState::Probe;
        message
            .attributes
            .push(NeighbourAttribute::Destination(match addr {
                IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
                IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
            }));
        self.request(message, NLM_F_REPLACE | NLM_F_ACK, |_| {})
    }

    /// Sends one request and reads its answers up to the end of the dump
    /// or the acknowledgement, handing every neighbour message to `each`.
    fn request(
        &mut self,
        message: NeighbourMessage,
        flags: u16,
        mut each: impl FnMut(NeighbourMessage),
    ) -> io::Result<()> {
        self.sequence = self.sequence.wrapping_add(1);
        let payload = if flags & NLM_F_DUMP != 0 {
            RouteNetlinkMessage::GetNeighbour(message)
        } else {
            RouteNetlinkMessage::NewNeighbour(message)
        };
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.sequence;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(payload));
        packet.finalize();
        let mut buffer = vec![0; packet.buffer_len()];
        packet.serialize(&mut buffer);
        self.socket.send(&buffer, 0)?;
        loop {
            let (data, _) = self.socket.recv_from_full()?;
            let mut offset = 0;
            while offset < data.len() {
                let answer = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                offset += answer.header.length as usize;
                if answer.header.length == 0 {
                    break;
                }
                // Answers to an earlier request that gave up half way.
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
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(m)) => each(m),
                    _ => {}
                }
            }
        }
    }
}

/// The address and state of a neighbour message.
fn entry_of(message: &NeighbourMessage) -> Option<(IpAddr, Entry)> {
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
                mac = <[u8; 6]>::try_from(&bytes[..]).ok()
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

fn family(addr: IpAddr) -> AddressFamily {
    match addr {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

fn ifindex(iface: &str) -> io::Result<u32> {
    let name = std::ffi::CString::new(iface)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface name holds a NUL"))?;
    // SAFETY: `name` is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(index)
}

/// Makes the kernel start resolving `addr` by sending one datagram to its
/// discard port.
pub fn solicit(addr: IpAddr) {
    let bind: SocketAddr = match addr {
        IpAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    if let Ok(socket) = UdpSocket::bind(bind) {
        let _ = socket.send_to(b"lb neighbour probe", (addr, DISCARD_PORT));
    }
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trip() {
        let mac = parse_mac("02:00:5e:10:00:0a").unwrap();
        assert_eq!(format_mac(&mac), "02:00:5e:10:00:0a");
        assert!(parse_mac("02:00:5e:10:00").is_none());
        assert!(parse_mac("02:00:5e:10:00:0a:01").is_none());
    }

    #[test]
    fn the_loopback_table_can_be_read() {
        // Any user may dump the neighbour table; loopback's entries, if
        // any, are static ones that are never probed.
        let mut netlink = Netlink::open("lo").unwrap();
        for (addr, entry) in netlink.table().unwrap() {
            assert!(
                matches!(entry, Entry::Resolved { fixed: true, .. }),
                "{addr}: {entry:?}"
            );
        }
        assert!(Netlink::open("no-such-dev0").is_err());
    }
}
