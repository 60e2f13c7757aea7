//! Worker MAC addresses from the kernel's neighbour table: lb never asks a
//! user to type one.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr, UdpSocket},
    process::Command,
};

/// The discard port: a datagram to it makes the kernel resolve the worker's
/// address without bothering any service.
const DISCARD_PORT: u16 = 9;

/// The usable MAC addresses the kernel knows on `iface`, from one dump of
/// its neighbour table.
pub fn table(iface: &str) -> HashMap<IpAddr, [u8; 6]> {
    let Ok(output) = Command::new("ip")
        .args(["-j", "neigh", "show", "dev", iface])
        .output()
    else {
        return HashMap::new();
    };
    let entries: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
    entries
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let states = entry.get("state")?.as_array()?;
            let unusable = states
                .iter()
                .any(|s| matches!(s.as_str(), Some("FAILED" | "INCOMPLETE")));
            if unusable {
                return None;
            }
            let addr = entry.get("dst")?.as_str()?.parse().ok()?;
            Some((addr, parse_mac(entry.get("lladdr")?.as_str()?)?))
        })
        .collect()
}

/// The MAC the kernel knows for `addr` on `iface`, if it has a usable one.
pub fn lookup(iface: &str, addr: IpAddr) -> Option<[u8; 6]> {
    table(iface).get(&addr).copied()
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
