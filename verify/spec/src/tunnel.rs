//! IPIP and GUE: the packet, its Ethernet header taken off, behind an outer
//! IPv4 or IPv6 header (and a UDP header for GUE) to the worker.

use lb_common::balancer::{Backend, FlowKey, FAMILY_V6, FORWARD_GUE};

use crate::{checksum, headers::ETH_LEN};

const OUTER_TTL: u8 = 64;
const IPV4_DONT_FRAGMENT: [u8; 2] = [0x40, 0x00];
const PROTO_IPIP: u8 = 4;
const PROTO_IPV6: u8 = 41;
const PROTO_UDP: u8 = 17;

/// The headers a worker's method adds.
pub fn overhead(backend: &Backend) -> usize {
    let ip = if backend.family == FAMILY_V6 { 40 } else { 20 };
    ip + if backend.forward == FORWARD_GUE { 8 } else { 0 }
}

/// A 32-bit word of `bytes` at `at` as the little-endian data plane loads it.
pub fn word(bytes: &[u8; 16], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// The hash a flow's outer headers carry (IPv6's flow label, GUE's source
/// port), so that routers spread flows and keep each on one path: the
/// client's address and both ports, mixed.
fn entropy(key: &FlowKey) -> u32 {
    let ports = (u32::from(key.sport) << 16) | u32::from(key.dport);
    let mut h = word(&key.src, 0) ^ word(&key.src, 4) ^ word(&key.src, 8) ^ word(&key.src, 12);
    h ^= ports;
    h ^= h >> 16;
    h = h.wrapping_mul(0x045d_9f3b);
    h ^ (h >> 16)
}

/// `frame` encapsulated for `backend` (the inner packet's family `family`):
/// the worker's MAC, ours (the frame's destination), the outer headers,
/// then the frame's IP packet and everything after it, padding included.
pub fn encapsulate(frame: &[u8], backend: &Backend, key: &FlowKey, family: u8) -> Vec<u8> {
    let gue = backend.forward == FORWARD_GUE;
    let inner = &frame[ETH_LEN..];
    let inner_len = inner.len() as u16;
    let (inner_proto, class) = if family == FAMILY_V6 {
        (
            PROTO_IPV6,
            (frame[ETH_LEN] << 4) | (frame[ETH_LEN + 1] >> 4),
        )
    } else {
        (PROTO_IPIP, frame[ETH_LEN + 1])
    };
    let hash = entropy(key);
    let payload = inner_len + if gue { 8 } else { 0 };
    let proto = if gue { PROTO_UDP } else { inner_proto };
    let mut out = Vec::with_capacity(frame.len() + overhead(backend));
    out.extend_from_slice(&backend.mac);
    out.extend_from_slice(&frame[0..6]);
    if backend.family == FAMILY_V6 {
        out.extend_from_slice(&[0x86, 0xdd]);
        let first = (6 << 28) | (u32::from(class) << 20) | (hash & 0xf_ffff);
        out.extend_from_slice(&first.to_be_bytes());
        out.extend_from_slice(&payload.to_be_bytes());
        out.extend_from_slice(&[proto, OUTER_TTL]);
        out.extend_from_slice(&backend.tunnel_source);
        out.extend_from_slice(&backend.addr);
    } else {
        out.extend_from_slice(&[0x08, 0x00]);
        out.extend_from_slice(&ipv4_header(backend, proto, class, payload));
    }
    if gue {
        let source_port = 0xc000 | (hash as u16 & 0x3fff);
        out.extend_from_slice(&source_port.to_be_bytes());
        out.extend_from_slice(&backend.gue_port.to_le_bytes());
        out.extend_from_slice(&(inner_len + 8).to_be_bytes());
        out.extend_from_slice(&[0, 0]);
    }
    out.extend_from_slice(inner);
    out
}

fn ipv4_header(backend: &Backend, proto: u8, tos: u8, payload: u16) -> [u8; 20] {
    let mut header = [0u8; 20];
    header[0] = 0x45;
    header[1] = tos;
    header[2..4].copy_from_slice(&(20 + payload).to_be_bytes());
    header[6..8].copy_from_slice(&IPV4_DONT_FRAGMENT);
    header[8] = OUTER_TTL;
    header[9] = proto;
    header[12..16].copy_from_slice(&backend.tunnel_source[..4]);
    header[16..20].copy_from_slice(&backend.addr[..4]);
    let check = checksum::checksum(&header);
    header[10..12].copy_from_slice(&check.to_be_bytes());
    header
}
