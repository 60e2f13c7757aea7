//! ICMP errors about NAT'd connections from the client's side (a router
//! could not deliver a worker's translated reply): sent to the worker as
//! if about the packet the worker itself sent. The outer destination
//! becomes the worker (`fullnat`: the outer source the connection's NAT
//! source); the quoted packet's source becomes the worker's address and
//! port (`fullnat`: its destination the NAT source and port); every
//! checksum moves by the words that changed. Errors from the worker's side
//! go back toward the client by a routing lookup, which this
//! specification leaves out.

use lb_common::balancer::{Backend, FlowKey, FAMILY_V6, FORWARD_FULLNAT};

use crate::{
    balance::{readdressed, Outcome},
    checksum,
    headers::{Packet, ETH_LEN, TCP},
    nat::{self, Fault},
    state::{Effect, Maps, Verdict},
};

/// The ICMP header before the quoted packet.
const ICMP_HEADER: usize = 8;
/// The transport header never starts further in than this.
const MAX_L4: usize = 512;

/// What the error's headers become (`None`: as they are).
#[derive(Default)]
struct Rewrite {
    outer_src: Option<[u8; 16]>,
    outer_dst: Option<[u8; 16]>,
    /// The quoted packet's source address and port.
    inner_src: Option<([u8; 16], u16)>,
    /// The quoted packet's destination address and port.
    inner_dst: Option<([u8; 16], u16)>,
}

/// An error about flow `key` (as the client sent it), whose worker
/// `backend` is a NAT worker.
pub fn to_worker(
    maps: &mut Maps,
    frame: &[u8],
    packet: &Packet,
    key: &FlowKey,
    backend: &Backend,
) -> Outcome {
    let mut rewrite = Rewrite {
        outer_dst: Some(backend.addr),
        inner_src: Some((backend.addr, nat::worker_port(backend, key))),
        ..Rewrite::default()
    };
    if backend.forward == FORWARD_FULLNAT {
        // A flow the table forgot has no port to translate to: the
        // kernel's to ignore.
        let Some((source, port)) = maps
            .flows
            .get(key)
            .filter(|flow| flow.nat_source != nat::NO_SOURCE)
            .and_then(|flow| Some((nat::source_slot(maps, flow.nat_source)?, flow.nat_port)))
        else {
            return Some(None);
        };
        rewrite.outer_src = Some(source.addr);
        rewrite.inner_dst = Some((source.addr, port));
    }
    let out = match rewritten(frame, packet, key.family == FAMILY_V6, key.proto, &rewrite) {
        Ok(out) => out,
        Err(fault) => return Some(Some(nat::dropped(maps, frame, fault))),
    };
    if backend.egress != 0 {
        return None;
    }
    maps.counters.icmp_errors_forwarded += 1;
    Some(Some(Effect {
        verdict: Verdict::Tx,
        frame: readdressed(&out, backend.mac),
    }))
}

/// The error with its outer and quoted headers rewritten, the outer TTL or
/// hop limit lowered, and every checksum moved: the quoted IPv4 header's
/// and transport checksum (when quoted; a UDP datagram without one keeps
/// none), the outer IPv4 header's, and the ICMP checksum by every word of
/// the message that changed (ICMPv6's also by the outer addresses, its
/// pseudo-header).
fn rewritten(
    frame: &[u8],
    packet: &Packet,
    v6: bool,
    proto: u8,
    rewrite: &Rewrite,
) -> Result<Vec<u8>, Fault> {
    let icmp = packet.l4;
    let inner = icmp + ICMP_HEADER;
    let (width, inner_l4, addrs) = if v6 {
        (16, inner + 40, [inner + 8, inner + 24])
    } else {
        let ihl = usize::from(frame.get(inner).ok_or(Fault::TooShort)? & 0x0f) * 4;
        if ihl < 20 {
            return Err(Fault::TooShort);
        }
        (4, inner + ihl, [inner + 12, inner + 16])
    };
    let header_end = if v6 { inner + 40 } else { inner + 20 };
    if icmp > MAX_L4 || frame.len() < (icmp + 4).max(header_end).max(inner_l4 + 4) {
        return Err(Fault::TooShort);
    }
    let mut out = frame.to_vec();
    let mut address_words = Vec::new();
    let inner_addrs = [rewrite.inner_src, rewrite.inner_dst].map(|e| e.map(|(addr, _)| addr));
    for (at, new) in addrs.into_iter().zip(inner_addrs) {
        if let Some(new) = new {
            address_words.extend(nat::words(&frame[at..at + width], &new[..width]));
            out[at..at + width].copy_from_slice(&new[..width]);
        }
    }
    if !v6 {
        let check = u16::from_be_bytes([frame[inner + 10], frame[inner + 11]]);
        let check = checksum::updated_words(check, &address_words);
        out[inner + 10..inner + 12].copy_from_slice(&check.to_be_bytes());
    }
    quoted_ports(frame, &mut out, inner_l4, proto, &address_words, rewrite);
    outer(frame, &mut out, v6, rewrite)?;
    let mut changed = nat::words(&frame[icmp..], &out[icmp..]);
    // The checksum field itself.
    changed.remove(1);
    if v6 {
        changed.extend(nat::words(
            &frame[ETH_LEN + 8..ETH_LEN + 40],
            &out[ETH_LEN + 8..ETH_LEN + 40],
        ));
    }
    changed.retain(|(old, new)| old != new);
    let check = u16::from_be_bytes([frame[icmp + 2], frame[icmp + 3]]);
    let check = checksum::updated_words(check, &changed);
    out[icmp + 2..icmp + 4].copy_from_slice(&check.to_be_bytes());
    Ok(out)
}

/// The quoted ports, and the quoted transport checksum when the error
/// holds it.
fn quoted_ports(
    frame: &[u8],
    out: &mut [u8],
    l4: usize,
    proto: u8,
    address_words: &[(u16, u16)],
    rewrite: &Rewrite,
) {
    let old = |at: usize| u16::from_be_bytes([frame[at], frame[at + 1]]);
    let (old_sport, old_dport) = (old(l4), old(l4 + 2));
    let new_sport = rewrite
        .inner_src
        .map_or(old_sport, |(_, p)| u16::from_be(p));
    let new_dport = rewrite
        .inner_dst
        .map_or(old_dport, |(_, p)| u16::from_be(p));
    out[l4..l4 + 2].copy_from_slice(&new_sport.to_be_bytes());
    out[l4 + 2..l4 + 4].copy_from_slice(&new_dport.to_be_bytes());
    let check_at = l4 + if proto == TCP { 16 } else { 6 };
    if frame.len() < check_at + 2 {
        return;
    }
    let check = old(check_at);
    if proto != TCP && check == 0 {
        return;
    }
    let mut changed = address_words.to_vec();
    changed.extend([(old_sport, new_sport), (old_dport, new_dport)]);
    let check = match checksum::updated_words(check, &changed) {
        0 if proto != TCP => 0xffff,
        check => check,
    };
    out[check_at..check_at + 2].copy_from_slice(&check.to_be_bytes());
}

/// The outer header: addresses, TTL or hop limit, and IPv4's checksum.
fn outer(frame: &[u8], out: &mut [u8], v6: bool, rewrite: &Rewrite) -> Result<(), Fault> {
    let (width, ttl_at, src_at) = if v6 { (16, 7, 8) } else { (4, 8, 12) };
    let (ttl_at, src_at) = (ETH_LEN + ttl_at, ETH_LEN + src_at);
    let ttl = frame[ttl_at];
    if ttl <= 1 {
        return Err(Fault::TtlExpired);
    }
    out[ttl_at] = ttl - 1;
    for (at, new) in [
        (src_at, rewrite.outer_src),
        (src_at + width, rewrite.outer_dst),
    ] {
        if let Some(new) = new {
            out[at..at + width].copy_from_slice(&new[..width]);
        }
    }
    if !v6 {
        let header = ETH_LEN..ETH_LEN + 20;
        let mut changed = nat::words(&frame[header.clone()], &out[header]);
        changed.retain(|(old, new)| old != new);
        let check = u16::from_be_bytes([frame[ETH_LEN + 10], frame[ETH_LEN + 11]]);
        let check = checksum::updated_words(check, &changed);
        out[ETH_LEN + 10..ETH_LEN + 12].copy_from_slice(&check.to_be_bytes());
    }
    Ok(())
}
