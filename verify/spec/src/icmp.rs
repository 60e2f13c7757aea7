//! ICMP: echo requests to a VIP's address are answered; errors about a
//! VIP's flow (a router's "unreachable", "too big", "time exceeded") go to
//! the worker that owns the flow, the way the flow's packets go.

use lb_common::balancer::{is_nat, FlowKey, VipAddrKey, VipKey, BACKEND_MAC_KNOWN, FORWARD_DSR};

use crate::{
    balance::{self, drop, family, flow_key, readdressed, Outcome},
    checksum,
    headers::{bytes, pair, Packet, ETH_LEN, TCP, UDP},
    pmtu,
    state::{Effect, Maps, Verdict},
    tunnel,
};

const ECHO_REQUEST_V4: u8 = 8;
const ECHO_REPLY_V4: u8 = 0;
const ECHO_REQUEST_V6: u8 = 128;
const ECHO_REPLY_V6: u8 = 129;
/// ICMP's "destination unreachable" and "time exceeded".
const ERRORS_V4: [u8; 2] = [3, 11];
/// ICMPv6's "destination unreachable", "packet too big", "time exceeded".
const ERRORS_V6: [u8; 3] = [1, 2, 3];
/// The ICMP header before an error's quoted packet.
const ICMP_HEADER: usize = 8;

/// An ICMP packet's effect (see `balance::balance` for the nesting).
pub fn handle(maps: &mut Maps, frame: &[u8], packet: &Packet) -> Outcome {
    let Some([kind, _]) = pair(frame, packet.l4) else {
        return Some(None);
    };
    let (request, errors): (u8, &[u8]) = if packet.version == 4 {
        (ECHO_REQUEST_V4, &ERRORS_V4)
    } else {
        (ECHO_REQUEST_V6, &ERRORS_V6)
    };
    if kind == request {
        return Some(echo(maps, frame, packet));
    }
    if !errors.contains(&kind) {
        return Some(None);
    }
    match quoted_flow(frame, packet) {
        Some(key) => error(maps, frame, packet, &key),
        None => Some(None),
    }
}

/// The reply to an echo request for one of the VIPs' addresses: the
/// addresses and MACs swapped, the type a reply's, the checksum updated.
fn echo(maps: &mut Maps, frame: &[u8], packet: &Packet) -> Option<Effect> {
    let key = VipAddrKey {
        addr: packet.dst,
        family: family(packet),
        pad: [0; 3],
    };
    if !maps.vip_addrs.contains(&key) {
        return None;
    }
    let mut out = readdressed(frame, frame[6..12].try_into().expect("6 bytes"));
    let (addrs, len, reply) = if packet.version == 4 {
        (ETH_LEN + 12, 4, ECHO_REPLY_V4)
    } else {
        (ETH_LEN + 8, 16, ECHO_REPLY_V6)
    };
    let (src, dst) = (addrs, addrs + len);
    out[src..src + len].copy_from_slice(&frame[dst..dst + len]);
    out[dst..dst + len].copy_from_slice(&frame[src..src + len]);
    let l4 = packet.l4;
    let old = u16::from_be_bytes([out[l4], out[l4 + 1]]);
    out[l4] = reply;
    let new = u16::from_be_bytes([out[l4], out[l4 + 1]]);
    let check = u16::from_be_bytes([out[l4 + 2], out[l4 + 3]]);
    out[l4 + 2..l4 + 4].copy_from_slice(&checksum::updated(check, old, new).to_be_bytes());
    maps.counters.icmp_echo_replies += 1;
    Some(Effect {
        verdict: Verdict::Tx,
        frame: out,
    })
}

/// The flow an error quotes, as the client sent it: the quoted packet
/// went from the VIP (its source) to the client, so the flow is the
/// reverse. Only TCP and UDP; the quoted ports must be in the frame.
fn quoted_flow(frame: &[u8], packet: &Packet) -> Option<FlowKey> {
    let at = packet.l4 + ICMP_HEADER;
    let (proto, vip, client, ports_at) = if packet.version == 4 {
        let header = bytes(frame, at, 20)?;
        let header_len = usize::from(header[0] & 0x0f) * 4;
        if header[0] >> 4 != 4 || header_len < 20 {
            return None;
        }
        let mut vip = [0; 16];
        let mut client = [0; 16];
        vip[..4].copy_from_slice(&header[12..16]);
        client[..4].copy_from_slice(&header[16..20]);
        (header[9], vip, client, at + header_len)
    } else {
        let header = bytes(frame, at, 40)?;
        if header[0] >> 4 != 6 {
            return None;
        }
        let vip: [u8; 16] = header[8..24].try_into().expect("16 bytes");
        let client: [u8; 16] = header[24..40].try_into().expect("16 bytes");
        (header[6], vip, client, at + 40)
    };
    if proto != TCP && proto != UDP {
        return None;
    }
    let ports = bytes(frame, ports_at, 4)?;
    let quoted = Packet {
        src: client,
        dst: vip,
        proto,
        sport: [ports[2], ports[3]],
        dport: [ports[0], ports[1]],
        ..*packet
    };
    Some(flow_key(&quoted))
}

/// An error about flow `key`, to the worker its flow entry names (whatever
/// that worker's state, while the VIP and the worker's generation are the
/// recorded ones) or else the one the VIP's scheduler picks. Errors about
/// no VIP's flow pass.
fn error(maps: &mut Maps, frame: &[u8], packet: &Packet, key: &FlowKey) -> Outcome {
    let Some(backend_id) = recorded_worker(maps, key).or_else(|| scheduled_worker(maps, key))
    else {
        return Some(None);
    };
    let Some(backend) = maps.backend(backend_id) else {
        let candidate = crate::nat::reply_candidate(maps, &key.src, key.sport, key.proto);
        return (!candidate).then_some(None);
    };
    if backend.flags & BACKEND_MAC_KNOWN == 0 {
        maps.counters.drop_no_neighbour += 1;
        return Some(Some(drop(frame)));
    }
    let out = match backend.forward {
        FORWARD_DSR => readdressed(frame, backend.mac),
        forward if is_nat(forward) => {
            return crate::nat_icmp::to_worker(maps, frame, packet, key, &backend)
        }
        _ => {
            if pmtu::too_big(frame, &backend) {
                // Never an error about an error.
                maps.counters.too_big_dropped += 1;
                return Some(Some(drop(frame)));
            }
            tunnel::encapsulate(frame, &backend, key, key.family)
        }
    };
    if backend.egress != 0 {
        return None;
    }
    maps.counters.icmp_errors_forwarded += 1;
    Some(Some(Effect {
        verdict: Verdict::Tx,
        frame: out,
    }))
}

fn recorded_worker(maps: &Maps, key: &FlowKey) -> Option<u32> {
    let entry = maps.flows.get(key)?;
    let tag = maps.vip_tag(entry.vip_id)?;
    let backend = maps.backend(entry.backend_id)?;
    let current = tag.tag == entry.vip_tag && backend.generation == entry.backend_generation;
    current.then_some(entry.backend_id)
}

fn scheduled_worker(maps: &Maps, key: &FlowKey) -> Option<u32> {
    let vip_key = VipKey {
        addr: key.dst,
        port: key.dport,
        proto: key.proto,
        family: key.family,
    };
    let vip = maps.vips.get(&vip_key)?;
    balance::scheduled(maps, key, vip)
}
