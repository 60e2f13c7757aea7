//! Virtual service addresses as users write them: `192.0.2.100:80/tcp`,
//! `[2001:db8::100]:443/udp`.

use std::{fmt, net::IpAddr, net::SocketAddr, str::FromStr};

use lb_common::{
    balancer::{VipKey, FAMILY_V4, FAMILY_V6},
    packet::{IPPROTO_TCP, IPPROTO_UDP},
};
use serde::{Deserialize, Serialize};

/// Transport protocol of a VIP.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
    strum::Display,
    strum::IntoStaticStr,
)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    fn number(self) -> u8 {
        match self {
            Self::Tcp => IPPROTO_TCP,
            Self::Udp => IPPROTO_UDP,
        }
    }
}

/// A virtual service: address, port, protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Vip {
    /// The service address.
    pub addr: IpAddr,
    /// The service port (never 0).
    pub port: u16,
    /// TCP or UDP.
    pub proto: Protocol,
}

/// Why a VIP or worker address did not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    /// No `/tcp` or `/udp` suffix.
    #[error("`{0}` has no protocol: write ADDRESS:PORT/tcp or ADDRESS:PORT/udp (IPv6 as [ADDRESS]:PORT/tcp)")]
    MissingProtocol(String),
    /// A protocol other than tcp or udp.
    #[error("unknown protocol `{0}`: lb balances tcp and udp")]
    UnknownProtocol(String),
    /// The address or port is not valid.
    #[error("`{0}` is not ADDRESS:PORT (ports 1-65535; IPv6 as [ADDRESS]:PORT)")]
    BadSocketAddress(String),
    /// Port 0.
    #[error("port 0 in `{0}`: a VIP needs a port from 1 to 65535")]
    PortZero(String),
    /// The worker address is not an IP address.
    #[error("`{0}` is not an IPv4 or IPv6 address")]
    BadAddress(String),
    /// The worker is neither an address nor an address and port.
    #[error("`{0}` is not a worker: give ADDR, ADDR:PORT or [IPV6]:PORT (port 1-65535)")]
    BadWorker(String),
}

impl FromStr for Vip {
    type Err = ParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (socket, proto) = text
            .rsplit_once('/')
            .ok_or_else(|| ParseError::MissingProtocol(text.to_owned()))?;
        let proto = match proto.to_ascii_lowercase().as_str() {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            other => return Err(ParseError::UnknownProtocol(other.to_owned())),
        };
        let socket: SocketAddr = socket
            .parse()
            .map_err(|_| ParseError::BadSocketAddress(socket.to_owned()))?;
        if socket.port() == 0 {
            return Err(ParseError::PortZero(text.to_owned()));
        }
        Ok(Self {
            addr: socket.ip(),
            port: socket.port(),
            proto,
        })
    }
}

impl fmt::Display for Vip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            SocketAddr::new(self.addr, self.port),
            self.proto
        )
    }
}

impl Serialize for Vip {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Vip {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl Vip {
    /// The data plane's key for this VIP.
    pub fn key(&self) -> VipKey {
        let (addr, family) = addr_bytes(self.addr);
        VipKey {
            addr,
            port: self.port.to_be(),
            proto: self.proto.number(),
            family,
        }
    }

    /// The VIP a data-plane key describes, if it is one lb writes.
    pub fn from_key(key: &VipKey) -> Option<Self> {
        let proto = match key.proto {
            IPPROTO_TCP => Protocol::Tcp,
            IPPROTO_UDP => Protocol::Udp,
            _ => return None,
        };
        Some(Self {
            addr: addr_from_bytes(key.addr, key.family)?,
            port: u16::from_be(key.port),
            proto,
        })
    }
}

/// `addr` with every bit past the first `bits` cleared (how sticky
/// sessions and pins key clients).
pub fn mask_addr(addr: IpAddr, bits: u8) -> IpAddr {
    let (bytes, family) = addr_bytes(addr);
    let masked = lb_common::balancer::mask_prefix(&bytes, bits);
    addr_from_bytes(masked, family).unwrap_or(addr)
}

/// Why `addr` can't be a VIP or a worker, if it can't: lb sends to one
/// host at a time, and only to one it can reach on the wire.
pub fn unicast_problem(addr: IpAddr) -> Option<&'static str> {
    match addr {
        IpAddr::V4(v4) => {
            let octets = v4.octets();
            if octets[0] == 0 {
                Some("is \"this network\" (0.0.0.0/8), no host")
            } else if v4.is_loopback() {
                Some("is a loopback address: it never leaves its own host")
            } else if v4.is_multicast() {
                Some("is a multicast address")
            } else if v4.is_broadcast() {
                Some("is the broadcast address")
            } else if v4.is_link_local() {
                Some("is a link-local address (169.254.0.0/16)")
            } else if octets[0] >= 240 {
                Some("is reserved (240.0.0.0/4)")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            if v6.is_unspecified() {
                Some("is the unspecified address ::")
            } else if v6.is_loopback() {
                Some("is the loopback address ::1: it never leaves its own host")
            } else if v6.is_multicast() {
                Some("is a multicast address")
            } else if v6.to_ipv4_mapped().is_some() {
                Some("is an IPv4-mapped IPv6 address: write the IPv4 address")
            } else if v6.segments()[..6] == [0; 6] {
                // ::/96 past :: and ::1: IPv4-compatible addresses, which
                // RFC 4291 deprecated; no host has one on the wire.
                Some("is an IPv4-compatible IPv6 address (::/96, deprecated): write the IPv4 address")
            } else if v6.segments()[0] & 0xffc0 == 0xfe80 {
                Some("is a link-local address (fe80::/10)")
            } else {
                None
            }
        }
    }
}

/// Why `addr` is no host of the subnet `network`/`prefix` (an address
/// and prefix length of the balancer's interface), if it is none: its
/// network or broadcast address (IPv4 up to /30), its subnet-router
/// anycast address (IPv6 up to /126). Prefixes without such edges (/31,
/// /32, /127, /128) and other families give `None`.
pub fn subnet_edge(addr: IpAddr, network: IpAddr, prefix: u8) -> Option<String> {
    let edge = match (addr, network) {
        (IpAddr::V4(addr), IpAddr::V4(network)) if prefix <= 30 => {
            let mask = u32::MAX << (32 - prefix);
            let base = u32::from(network) & mask;
            match u32::from(addr) {
                a if a == base => "network address",
                a if a == base | !mask => "broadcast address",
                _ => return None,
            }
        }
        (IpAddr::V6(addr), IpAddr::V6(network)) if prefix <= 126 => {
            let mask = u128::MAX << (128 - prefix);
            if u128::from(addr) != u128::from(network) & mask {
                return None;
            }
            "subnet-router anycast address"
        }
        _ => return None,
    };
    let base = mask_addr(network, prefix);
    Some(format!(
        "is the {edge} of {base}/{prefix}, a subnet of the balancer's interface: no host has it"
    ))
}

/// One of lb's own TCP endpoints (metrics, load reports), which a VIP on
/// its address and port would hide: the data plane takes their packets
/// before the kernel's stack does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// What it is, for messages ("metrics endpoint").
    pub what: &'static str,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Endpoint {
    /// Whether `vip` takes this endpoint's packets, `own` being the
    /// balancer's addresses: a TCP VIP on its port, at its address, or at
    /// any own address of the family it listens on when it listens on all
    /// (`[::]` takes IPv4 as well: lb's sockets are dual-stack).
    pub fn hidden_by(&self, vip: &Vip, own: &[IpAddr]) -> bool {
        if vip.proto != Protocol::Tcp || vip.port != self.addr.port() {
            return false;
        }
        let listens = self.addr.ip();
        listens == vip.addr
            || (listens.is_unspecified()
                && (listens.is_ipv6() || vip.addr.is_ipv4())
                && own.contains(&vip.addr))
    }
}

/// Parses a worker address.
pub fn parse_worker(text: &str) -> Result<IpAddr, ParseError> {
    text.parse()
        .map_err(|_| ParseError::BadAddress(text.to_owned()))
}

/// A worker as `lb backend add` takes it: an address, with a port of its
/// own for NAT VIPs (`192.0.2.11:8080`, `[2001:db8::11]:8080`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkerAddr {
    /// The worker's address.
    pub addr: IpAddr,
    /// Its port, when given.
    pub port: Option<u16>,
}

impl std::fmt::Display for WorkerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.port {
            Some(port) => write!(f, "{}", std::net::SocketAddr::new(self.addr, port)),
            None => write!(f, "{}", self.addr),
        }
    }
}

impl FromStr for WorkerAddr {
    type Err = ParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if let Ok(addr) = text.parse::<IpAddr>() {
            return Ok(Self { addr, port: None });
        }
        match text.parse::<std::net::SocketAddr>() {
            Ok(socket) if socket.port() != 0 => Ok(Self {
                addr: socket.ip(),
                port: Some(socket.port()),
            }),
            _ => Err(ParseError::BadWorker(text.to_owned())),
        }
    }
}

/// A VIP address (`192.0.2.100`) or a VIP standing for its address
/// (`192.0.2.100:80/tcp`), as `lb announce` takes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressOrVip {
    /// An address.
    Address(IpAddr),
    /// A VIP.
    Vip(Vip),
}

impl FromStr for AddressOrVip {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if let Ok(addr) = text.parse() {
            return Ok(Self::Address(addr));
        }
        text.parse()
            .map(Self::Vip)
            .map_err(|error| format!("{text:?} is neither a VIP address nor a VIP ({error})"))
    }
}

/// A client address or prefix, `ADDR` or `ADDR/PREFIX`; without a prefix,
/// the whole address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientPrefix {
    /// The address as written.
    pub addr: IpAddr,
    /// Its prefix length, within the family's.
    pub prefix: u8,
}

impl FromStr for ClientPrefix {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{text:?} is not an address or ADDRESS/PREFIX");
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?,
            None => max,
        };
        Ok(Self { addr, prefix })
    }
}

impl fmt::Display for ClientPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// "IPv4" or "IPv6", for messages.
pub fn family_word(addr: IpAddr) -> &'static str {
    if addr.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

/// An address in the data plane's 16-byte form, with its family.
pub fn addr_bytes(addr: IpAddr) -> ([u8; 16], u8) {
    match addr {
        IpAddr::V4(v4) => {
            let mut bytes = [0u8; 16];
            bytes[..4].copy_from_slice(&v4.octets());
            (bytes, FAMILY_V4)
        }
        IpAddr::V6(v6) => (v6.octets(), FAMILY_V6),
    }
}

/// The address stored as 16 bytes and a family.
pub fn addr_from_bytes(bytes: [u8; 16], family: u8) -> Option<IpAddr> {
    match family {
        FAMILY_V4 => Some(IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]])),
        FAMILY_V6 => Some(IpAddr::from(bytes)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_take_an_optional_prefix_within_their_family() {
        let client = |text: &str| text.parse::<ClientPrefix>().map(|c| (c.addr, c.prefix));
        assert_eq!(client("192.0.2.1"), Ok(("192.0.2.1".parse().unwrap(), 32)));
        assert_eq!(
            client("2001:db8::/32"),
            Ok(("2001:db8::".parse().unwrap(), 32))
        );
        for bad in ["192.0.2.1/33", "192.0.2.1/x", "host"] {
            assert!(client(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_and_prints_both_families() {
        for text in ["192.0.2.100:80/tcp", "[2001:db8::100]:53/udp"] {
            let vip: Vip = text.parse().unwrap();
            assert_eq!(vip.to_string(), text);
            assert_eq!(Vip::from_key(&vip.key()), Some(vip));
        }
    }

    #[test]
    fn rejects_bad_input_with_a_reason() {
        let cases = [
            ("192.0.2.100:80", "no protocol"),
            ("192.0.2.100:80/sctp", "unknown protocol"),
            ("192.0.2.100:65536/tcp", "not ADDRESS:PORT"),
            ("192.0.2.100:0/tcp", "port 0"),
            ("192.0.2.300:80/tcp", "not ADDRESS:PORT"),
            ("2001:db8::1:80/tcp", "not ADDRESS:PORT"),
        ];
        for (text, reason) in cases {
            let error = text.parse::<Vip>().unwrap_err().to_string();
            assert!(error.contains(reason), "{text}: {error}");
        }
        assert!(parse_worker("192.0.2").is_err());
    }

    #[test]
    fn the_edges_of_a_subnet_are_no_host() {
        let edge = |addr: &str, network: &str, prefix| {
            subnet_edge(addr.parse().unwrap(), network.parse().unwrap(), prefix)
        };
        let found = edge("192.0.2.255", "192.0.2.2", 24).unwrap();
        assert!(
            found.contains("broadcast address of 192.0.2.0/24"),
            "{found}"
        );
        let found = edge("192.0.2.0", "192.0.2.2", 24).unwrap();
        assert!(found.contains("network address of 192.0.2.0/24"), "{found}");
        assert!(edge("10.0.0.3", "10.0.0.1", 30)
            .unwrap()
            .contains("broadcast"));
        let found = edge("2001:db8::", "2001:db8::2", 64).unwrap();
        assert!(
            found.contains("subnet-router anycast address of 2001:db8::/64"),
            "{found}"
        );
        for (addr, network, prefix) in [
            ("192.0.2.100", "192.0.2.2", 24),
            ("192.0.3.0", "192.0.2.2", 24),
            ("10.0.0.0", "10.0.0.1", 31),
            ("10.0.0.1", "10.0.0.1", 32),
            ("2001:db8::ffff:ffff:ffff:ffff", "2001:db8::2", 64),
            ("2001:db8::", "2001:db8::1", 127),
            ("192.0.2.0", "2001:db8::2", 64),
        ] {
            assert_eq!(
                edge(addr, network, prefix),
                None,
                "{addr} {network}/{prefix}"
            );
        }
    }

    #[test]
    fn a_tcp_vip_on_an_own_endpoint_hides_it() {
        let own: Vec<IpAddr> = ["192.0.2.2", "2001:db8::2"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let endpoint = |addr: &str| Endpoint {
            what: "metrics endpoint",
            addr: addr.parse().unwrap(),
        };
        let hides = |vip: &str, at: &str| endpoint(at).hidden_by(&vip.parse().unwrap(), &own);
        assert!(hides("192.0.2.2:9469/tcp", "192.0.2.2:9469"));
        assert!(hides("192.0.2.2:9469/tcp", "0.0.0.0:9469"));
        assert!(hides("192.0.2.2:9469/tcp", "[::]:9469"));
        assert!(hides("[2001:db8::2]:9469/tcp", "[::]:9469"));
        // Hiding nothing: UDP, another port, another address, an address
        // not the balancer's, a family the endpoint doesn't listen on.
        assert!(!hides("192.0.2.2:9469/udp", "192.0.2.2:9469"));
        assert!(!hides("192.0.2.2:9470/tcp", "0.0.0.0:9469"));
        assert!(!hides("192.0.2.2:9469/tcp", "127.0.0.1:9469"));
        assert!(!hides("192.0.2.100:9469/tcp", "0.0.0.0:9469"));
        assert!(!hides("[2001:db8::2]:9469/tcp", "0.0.0.0:9469"));
    }

    #[test]
    fn key_uses_network_byte_order() {
        let key = "192.0.2.100:80/tcp".parse::<Vip>().unwrap().key();
        assert_eq!(key.port.to_ne_bytes(), [0, 80]);
        assert_eq!(&key.addr[..4], &[192, 0, 2, 100]);
        assert_eq!(key.proto, 6);
    }
}
