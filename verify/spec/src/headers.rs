//! Reading a frame's headers: Ethernet, IPv4 or IPv6 (with up to four
//! extension headers), and the TCP, UDP or ICMP header behind them.

/// The Ethernet header's length.
pub const ETH_LEN: usize = 14;
const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];
const ETHERTYPE_IPV6: [u8; 2] = [0x86, 0xdd];
/// IP protocol numbers.
pub const TCP: u8 = 6;
/// UDP's protocol number.
pub const UDP: u8 = 17;
/// ICMP's protocol number.
pub const ICMP: u8 = 1;
/// ICMPv6's protocol number.
pub const ICMPV6: u8 = 58;
/// IPv6 extension headers the data plane steps over, at most four of them.
const HOP_BY_HOP: u8 = 0;
const ROUTING: u8 = 43;
const FRAGMENT: u8 = 44;
const DESTINATION: u8 = 60;
const MAX_EXTENSIONS: usize = 4;

/// The packet class a frame is counted in (the counters' names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Not IPv4 or IPv6 (or too short to tell).
    NonIp,
    /// An IP header that doesn't hold together.
    Malformed,
    /// By version and protocol; IPv4's later fragments have their own.
    Ipv4Tcp,
    /// IPv4 UDP.
    Ipv4Udp,
    /// IPv4 ICMP.
    Ipv4Icmp,
    /// An IPv4 fragment after the first.
    Ipv4Fragment,
    /// Any other IPv4.
    Ipv4Other,
    /// IPv6 TCP.
    Ipv6Tcp,
    /// IPv6 UDP.
    Ipv6Udp,
    /// ICMPv6.
    Ipv6Icmp,
    /// Any other IPv6, later fragments included.
    Ipv6Other,
}

/// An IP packet's fields the balancer uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    /// 4 or 6.
    pub version: u8,
    /// Source address; IPv4's in the first four bytes, the rest zeros.
    pub src: [u8; 16],
    /// Destination address, likewise.
    pub dst: [u8; 16],
    /// The transport protocol (after IPv6's extension headers).
    pub proto: u8,
    /// Where the transport header starts.
    pub l4: usize,
    /// Where the IP packet ends (Ethernet padding may follow).
    pub end: usize,
    /// Ports as they are on the wire (the maps keep them so).
    pub sport: [u8; 2],
    /// Destination port, as on the wire.
    pub dport: [u8; 2],
    /// TCP's flags byte; 0 for anything else.
    pub tcp_flags: u8,
    /// A fragment other than the first: no transport header.
    pub later_fragment: bool,
}

impl Packet {
    /// Whether its protocol is its version's ICMP.
    pub fn is_icmp(&self) -> bool {
        self.proto == if self.version == 4 { ICMP } else { ICMPV6 }
    }

    /// Its class.
    pub fn class(&self) -> Class {
        match (self.version, self.proto) {
            (4, _) if self.later_fragment => Class::Ipv4Fragment,
            (4, TCP) => Class::Ipv4Tcp,
            (4, UDP) => Class::Ipv4Udp,
            (4, ICMP) => Class::Ipv4Icmp,
            (4, _) => Class::Ipv4Other,
            (_, _) if self.later_fragment => Class::Ipv6Other,
            (_, TCP) => Class::Ipv6Tcp,
            (_, UDP) => Class::Ipv6Udp,
            (_, ICMPV6) => Class::Ipv6Icmp,
            _ => Class::Ipv6Other,
        }
    }
}

/// `len` bytes of `frame` at `at`, if the frame holds them.
pub fn bytes(frame: &[u8], at: usize, len: usize) -> Option<&[u8]> {
    frame.get(at..at.checked_add(len)?)
}

/// Two bytes of `frame` at `at`.
pub fn pair(frame: &[u8], at: usize) -> Option<[u8; 2]> {
    bytes(frame, at, 2).map(|b| [b[0], b[1]])
}

/// The frame's IP packet, or the class it is counted in if it has none.
pub fn parse(frame: &[u8]) -> Result<Packet, Class> {
    match pair(frame, 12) {
        Some(ETHERTYPE_IPV4) => ipv4(frame),
        Some(ETHERTYPE_IPV6) => ipv6(frame),
        _ => Err(Class::NonIp),
    }
}

fn ipv4(frame: &[u8]) -> Result<Packet, Class> {
    let header = bytes(frame, ETH_LEN, 20).ok_or(Class::Malformed)?;
    let header_len = usize::from(header[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([header[2], header[3]]));
    if header[0] >> 4 != 4 || header_len < 20 || total < header_len {
        return Err(Class::Malformed);
    }
    let end = ETH_LEN + total;
    if end > frame.len() {
        return Err(Class::Malformed);
    }
    let mut src = [0; 16];
    let mut dst = [0; 16];
    src[..4].copy_from_slice(&header[12..16]);
    dst[..4].copy_from_slice(&header[16..20]);
    let offset = u16::from_be_bytes([header[6], header[7]]) & 0x1fff;
    let packet = Packet {
        version: 4,
        src,
        dst,
        proto: header[9],
        l4: ETH_LEN + header_len,
        end,
        sport: [0; 2],
        dport: [0; 2],
        tcp_flags: 0,
        later_fragment: offset != 0,
    };
    transport(frame, packet)
}

fn ipv6(frame: &[u8]) -> Result<Packet, Class> {
    let header = bytes(frame, ETH_LEN, 40).ok_or(Class::Malformed)?;
    if header[0] >> 4 != 6 {
        return Err(Class::Malformed);
    }
    let end = ETH_LEN + 40 + usize::from(u16::from_be_bytes([header[4], header[5]]));
    if end > frame.len() {
        return Err(Class::Malformed);
    }
    let mut proto = header[6];
    let mut at = ETH_LEN + 40;
    let mut later_fragment = false;
    for _ in 0..MAX_EXTENSIONS {
        match proto {
            HOP_BY_HOP | ROUTING | DESTINATION => {
                let [next, len] = pair(frame, at).ok_or(Class::Malformed)?;
                proto = next;
                at += (usize::from(len) + 1) * 8;
            }
            FRAGMENT => {
                let ext = bytes(frame, at, 4).ok_or(Class::Malformed)?;
                proto = ext[0];
                later_fragment = u16::from_be_bytes([ext[2], ext[3]]) >> 3 != 0;
                at += 8;
            }
            _ => break,
        }
    }
    if at > end {
        return Err(Class::Malformed);
    }
    let packet = Packet {
        version: 6,
        src: header[8..24].try_into().expect("16 bytes"),
        dst: header[24..40].try_into().expect("16 bytes"),
        proto,
        l4: at,
        end,
        sport: [0; 2],
        dport: [0; 2],
        tcp_flags: 0,
        later_fragment,
    };
    transport(frame, packet)
}

/// The transport header of a first (or only) fragment: it must lie within
/// the IP packet, not in the Ethernet padding.
fn transport(frame: &[u8], mut packet: Packet) -> Result<Packet, Class> {
    if packet.later_fragment {
        return Ok(packet);
    }
    let within = |len: usize| packet.l4 + len <= packet.end;
    match packet.proto {
        TCP => {
            let tcp = bytes(frame, packet.l4, 20).ok_or(Class::Malformed)?;
            let header_len = usize::from(tcp[12] >> 4) * 4;
            if header_len < 20 || !within(header_len) {
                return Err(Class::Malformed);
            }
            packet.sport = [tcp[0], tcp[1]];
            packet.dport = [tcp[2], tcp[3]];
            packet.tcp_flags = tcp[13];
        }
        UDP => {
            let udp = bytes(frame, packet.l4, 8).ok_or(Class::Malformed)?;
            if !within(8) {
                return Err(Class::Malformed);
            }
            packet.sport = [udp[0], udp[1]];
            packet.dport = [udp[2], udp[3]];
        }
        _ if packet.is_icmp() && !within(8) => return Err(Class::Malformed),
        _ => {}
    }
    Ok(packet)
}
