//! Worker MAC addresses and reachability from the kernel's neighbour
//! table, over rtnetlink: lb never asks a user to type a MAC, and learns
//! when a worker's host stops answering ARP or neighbour discovery.
//!
//! The data plane sends to workers without the kernel's help, so nothing
//! keeps their neighbour entries fresh: a dead host's entry could stay
//! `STALE` forever. The controller therefore asks the kernel (over
//! [`crate::kernel::netlink`]) to re-probe entries that have not been confirmed
//! lately; a host that does not answer the probes goes `FAILED` within
//! about three seconds.

use std::net::{IpAddr, SocketAddr, UdpSocket};

/// The discard port: a datagram to it makes the kernel resolve the worker's
/// address without bothering any service.
const DISCARD_PORT: u16 = 9;

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
}
