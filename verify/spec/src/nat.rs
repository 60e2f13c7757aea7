//! NAT's forward half: a client's packet to a `nat` or `fullnat` worker,
//! readdressed to the worker's address and port (and for `fullnat` from a
//! NAT source and a port claimed for the connection), its TTL lowered and
//! every checksum updated; and what becomes of a packet that looks like a
//! NAT worker's reply but is none.

use lb_common::{
    balancer::{Backend, FlowKey, FlowValue, FAMILY_V6, FORWARD_FULLNAT},
    nat::{
        NatEntry, NatHop, NatSource, NatWorkerKey, NAT_CLOSING, NAT_DEAD, NAT_ESTABLISHED,
        NAT_OPENING,
    },
};

use crate::{
    balance::{drop, flow_hash, readdressed, Job, Outcome},
    checksum,
    headers::{pair, Packet, ETH_LEN, TCP},
    state::{Clock, Effect, Maps, Verdict},
};

/// Ports a connection's claim tries before giving up.
const PROBES: u32 = 16;
/// A flow's NAT source slot meaning "none".
pub const NO_SOURCE: u8 = 0xff;
/// The NAT source array's capacity: 16 a family.
const SOURCE_SLOTS: u8 = 32;
/// Slots of the `nat` next-hop cache.
const HOP_SLOTS: u32 = 256;
const SECOND: u64 = 1_000_000_000;
const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;
/// The transport header never starts further in than this.
const MAX_L4: usize = 512;

/// A bit of the VIP and reply filters: the address's four words folded
/// with the port and protocol, then Fibonacci-hashed to 16 bits.
pub fn filter_bit(addr: &[u8; 16], port: u16, proto: u8) -> u32 {
    let word = |at: usize| crate::tunnel::word(addr, at);
    let folded = word(0) ^ word(4) ^ word(8) ^ word(12) ^ (u32::from(port) << 8) ^ u32::from(proto);
    folded.wrapping_mul(0x9e37_79b1) >> 16
}

fn in_reply_filter(maps: &Maps, bit: u32) -> bool {
    let word = maps
        .reply_filter
        .get(bit as usize / 64)
        .copied()
        .unwrap_or(0);
    word & (1 << (bit % 64)) != 0
}

/// Whether the reply filter has `addr:port/proto`'s bit: the packet may
/// be a NAT worker's.
pub fn reply_candidate(maps: &Maps, addr: &[u8; 16], port: u16, proto: u8) -> bool {
    in_reply_filter(maps, filter_bit(addr, port, proto))
}

/// A TCP or UDP packet for no VIP: a NAT worker's reply (a `fullnat`
/// connection's by its tuple, a `nat` worker's by its address and port),
/// translated back and sent toward the client; anything else passes
/// (`Some(None)`), counted as a miss when the reply filter has its source.
/// `None`: the client's next hop is not cached (lb asks the kernel's
/// routing table), or lies behind another of lb's interfaces.
pub fn reply(
    maps: &mut Maps,
    frame: &[u8],
    packet: &Packet,
    key: &FlowKey,
    clock: Clock,
) -> Outcome {
    if !reply_candidate(maps, &key.src, key.sport, key.proto) {
        return Some(None);
    }
    let Some(found) = reply_of(maps, packet, key, clock) else {
        maps.counters.nat_reply_misses += 1;
        return Some(None);
    };
    if !fresh(&found.hop, clock.coarse) {
        return None;
    }
    let mut out = match rewrite(frame, packet, key, Some(found.vip), found.client) {
        Ok(out) => out,
        Err(fault) => return Some(Some(dropped(maps, frame, fault))),
    };
    if found.hop.ifindex == maps.ingress {
        out[..12].copy_from_slice(&found.hop.macs);
        maps.counters.nat_replies += 1;
        return Some(Some(Effect {
            verdict: Verdict::Tx,
            frame: out,
        }));
    }
    if maps.ifaces.contains(&found.hop.ifindex) {
        return None;
    }
    // The hop's interface is no longer lb's: the kernel routes the reply.
    maps.counters.nat_replies_unrouted += 1;
    Some(Some(Effect {
        verdict: Verdict::Pass,
        frame: out,
    }))
}

/// A worker's reply found: what it is translated to and where it goes.
struct Reply {
    /// The new source: the VIP.
    vip: ([u8; 16], u16),
    /// The new destination (`fullnat`: the client; `nat`: unchanged).
    client: Option<([u8; 16], u16)>,
    /// The client's next hop as cached.
    hop: NatHop,
}

/// The NAT'd connection or worker `key` (as the worker sent it) is a
/// reply of, a `fullnat` entry's state and clock moved by it.
fn reply_of(maps: &mut Maps, packet: &Packet, key: &FlowKey, clock: Clock) -> Option<Reply> {
    // Only a packet to a NAT source can be a `fullnat` reply.
    if in_reply_filter(maps, filter_bit(&key.dst, 0, 0)) {
        if let Some(entry) = maps.nat.get_mut(key) {
            if entry.flags & NAT_DEAD != 0 {
                return None;
            }
            seen_from_worker(entry, packet, clock);
            let client = entry.client;
            return Some(Reply {
                vip: (client.dst, client.dport),
                client: Some((client.src, client.sport)),
                hop: entry.hop,
            });
        }
    }
    let worker = NatWorkerKey {
        addr: key.src,
        port: key.sport,
        proto: key.proto,
        family: key.family,
    };
    let value = maps.nat_workers.get(&worker)?;
    let cached = maps.nat_hops.get(&hop_slot(&key.dst)).copied();
    Some(Reply {
        vip: (value.vip, value.vip_port),
        client: None,
        // Another client's slot: lb takes it over and asks the routing
        // table, which [`reply`] leaves out.
        hop: cached
            .filter(|cached| cached.client == key.dst)
            .map(|cached| cached.hop)
            .unwrap_or_default(),
    })
}

/// A `fullnat` connection after a packet from its worker: TCP closing
/// once either side sent a FIN or a reset, otherwise established; its
/// clock moved when the state changes, on a FIN or reset, and otherwise
/// at most once a second.
fn seen_from_worker(entry: &mut NatEntry, packet: &Packet, clock: Clock) {
    let tcp = packet.proto == TCP;
    let closes = tcp && packet.tcp_flags & (FIN | RST) != 0;
    let state = if tcp && (closes || entry.state == NAT_CLOSING) {
        NAT_CLOSING
    } else {
        NAT_ESTABLISHED
    };
    if state != entry.state || closes || clock.coarse.saturating_sub(entry.last_seen_ns) > SECOND {
        entry.state = state;
        entry.last_seen_ns = clock.coarse;
    }
}

/// Whether a cached next hop may still be used: found within the last
/// second.
fn fresh(hop: &NatHop, now: u64) -> bool {
    hop.found_ns != 0 && now.saturating_sub(hop.found_ns) < SECOND
}

/// The slot of the `nat` next-hop cache that holds client `addr`'s.
fn hop_slot(addr: &[u8; 16]) -> u32 {
    let word = |at: usize| crate::tunnel::word(addr, at);
    let folded = word(0) ^ word(4) ^ word(8) ^ word(12);
    (folded.wrapping_mul(0x9e37_79b1) >> 24) % HOP_SLOTS
}

/// The forward half for a packet whose worker `job` names (with, for a
/// followed `fullnat` flow, its NAT source slot and port).
pub fn forward(
    maps: &mut Maps,
    frame: &[u8],
    packet: &Packet,
    key: &FlowKey,
    job: &Job,
    clock: Clock,
) -> Effect {
    let backend = job.backend;
    if backend.flags & lb_common::balancer::BACKEND_MAC_KNOWN == 0 {
        maps.counters.drop_no_neighbour += 1;
        return drop(frame);
    }
    let worker = (backend.addr, worker_port(&backend, key));
    let source = if backend.forward == FORWARD_FULLNAT {
        let pair = if job.new_flow {
            match claim(maps, key, packet, job, worker, clock) {
                Some(pair) => pair,
                None => return drop(frame),
            }
        } else {
            job.nat
        };
        match source(maps, pair.0) {
            Some(source) => Some((source.addr, pair.1)),
            None => return drop(frame),
        }
    } else {
        None
    };
    let out = match rewrite(frame, packet, key, source, Some(worker)) {
        Ok(out) => out,
        Err(fault) => return dropped(maps, frame, fault),
    };
    crate::balance::count_forwarded(maps, job, frame.len() as u64);
    maps.counters.forwarded += 1;
    Effect {
        verdict: Verdict::Tx,
        frame: readdressed(&out, backend.mac),
    }
}

/// NAT source slot `slot`, if it holds one.
fn source(maps: &Maps, slot: u8) -> Option<NatSource> {
    source_slot(maps, slot).filter(|source| source.family != 0)
}

/// The tuple a worker's reply through `source:port` carries.
fn reply_key(key: &FlowKey, worker: ([u8; 16], u16), source: [u8; 16], port: u16) -> FlowKey {
    FlowKey {
        src: worker.0,
        dst: source,
        sport: worker.1,
        dport: port,
        proto: key.proto,
        family: key.family,
        pad: [0; 2],
    }
}

/// The connection's NAT entry through `pair`, if the slot holds a source.
fn entry_of(
    maps: &Maps,
    key: &FlowKey,
    worker: ([u8; 16], u16),
    pair: (u8, u16),
) -> Option<NatEntry> {
    let source = source_slot(maps, pair.0)?;
    maps.nat
        .get(&reply_key(key, worker, source.addr, pair.1))
        .copied()
}

/// Slot `slot` of the source array as read (zeros if never written).
pub fn source_slot(maps: &Maps, slot: u8) -> Option<NatSource> {
    (slot < SOURCE_SLOTS).then(|| maps.nat_sources.get(&slot).copied().unwrap_or_default())
}

/// Probe `i` of a flow: the NAT source slot and the port (network order).
fn probe(maps: &Maps, key: &FlowKey, i: u32) -> (u8, u16) {
    let config = &maps.nat_config;
    let hash = flow_hash(key, config.seed ^ i.wrapping_mul(0x9e37_79b9));
    let (slots, count) = if key.family == FAMILY_V6 {
        (config.v6_slots, config.v6_count)
    } else {
        (config.v4_slots, config.v4_count)
    };
    let index = if count == 0 {
        0
    } else {
        (hash & 0xff) % u32::from(count)
    };
    let range = u32::from(config.port_high.saturating_sub(config.port_low)) + 1;
    let port = u32::from(config.port_low) + (hash >> 8) % range;
    (slots[index as usize], (port as u16).to_be())
}

fn source_count(maps: &Maps, key: &FlowKey) -> u8 {
    if key.family == FAMILY_V6 {
        maps.nat_config.v6_count
    } else {
        maps.nat_config.v4_count
    }
}

/// A `fullnat` connection's source and port for its first packet here:
/// the one its flow entry still names (a retransmitted SYN, an idle flow;
/// not for a SYN reusing a closing connection's tuple), or for a packet
/// other than a SYN the one a live entry of its probe sequence holds
/// (its flow entry was lost), or the first free one of its probe
/// sequence, claimed. The flow is recorded with it unless the packet is
/// a reset. `None`: no port free, or no source for the family.
fn claim(
    maps: &mut Maps,
    key: &FlowKey,
    packet: &Packet,
    job: &Job,
    worker: ([u8; 16], u16),
    clock: Clock,
) -> Option<(u8, u16)> {
    let syn = packet.proto == TCP && packet.tcp_flags & (SYN | ACK) == SYN;
    let live = |entry: &NatEntry| entry.flags & NAT_DEAD == 0 && entry.client == *key;
    let recorded = maps
        .flows
        .get(key)
        .filter(|flow| flow.nat_source != NO_SOURCE && flow.backend_id == job.backend_id)
        .map(|flow| (flow.nat_source, flow.nat_port))
        .filter(|&pair| {
            entry_of(maps, key, worker, pair)
                .is_some_and(|entry| live(&entry) && !(syn && entry.state == NAT_CLOSING))
        });
    let recovered = || {
        (0..PROBES)
            .take_while(|_| source_count(maps, key) != 0)
            .map(|i| probe(maps, key, i))
            .find(|&pair| entry_of(maps, key, worker, pair).is_some_and(|e| live(&e)))
    };
    let found = recorded.or_else(|| if syn { None } else { recovered() });
    let pair = match found {
        Some(pair) => {
            maps.counters.nat_recovered += u64::from(!syn);
            pair
        }
        None => match allocate(maps, key, job, worker, clock) {
            Some(pair) => {
                maps.counters.nat_allocations += 1;
                pair
            }
            None => {
                maps.counters.nat_ports_exhausted += 1;
                return None;
            }
        },
    };
    if !(packet.proto == TCP && packet.tcp_flags & RST != 0) {
        let value = FlowValue {
            backend_id: job.backend_id,
            vip_id: job.vip_id,
            created_ns: clock.coarse,
            last_seen_ns: clock.coarse,
            flags: 0,
            // The tag array's, not the VIP entry's: this half has no VIP entry.
            vip_tag: maps.vip_tag(job.vip_id).map_or(0, |tag| tag.tag),
            backend_generation: job.backend.generation,
            nat_port: pair.1,
            nat_source: pair.0,
            pad: 0,
        };
        maps.flows.insert(*key, value);
    }
    Some(pair)
}

/// The first probe whose reply tuple is free, its entry inserted.
fn allocate(
    maps: &mut Maps,
    key: &FlowKey,
    job: &Job,
    worker: ([u8; 16], u16),
    clock: Clock,
) -> Option<(u8, u16)> {
    let count = source_count(maps, key);
    if count == 0 || count > 16 {
        return None;
    }
    for i in 0..PROBES {
        let (slot, port) = probe(maps, key, i);
        let Some(source) = source_slot(maps, slot) else {
            continue;
        };
        let reply = reply_key(key, worker, source.addr, port);
        if maps.nat.contains_key(&reply) {
            continue;
        }
        let entry = NatEntry {
            client: *key,
            backend_id: job.backend_id,
            vip_id: job.vip_id,
            vip_tag: maps.vip_tag(job.vip_id).map_or(0, |tag| tag.tag),
            backend_generation: job.backend.generation,
            created_ns: clock.coarse,
            last_seen_ns: clock.coarse,
            state: if key.proto == TCP {
                NAT_OPENING
            } else {
                NAT_ESTABLISHED
            },
            flags: 0,
            source: slot,
            pad: [0; 5],
            hop: Default::default(),
        };
        maps.nat.insert(reply, entry);
        return Some((slot, port));
    }
    None
}

/// The frame with its source and destination (each when given) rewritten,
/// the TTL or hop limit lowered and the IPv4 header's and the transport
/// checksums updated word by word.
fn rewrite(
    frame: &[u8],
    packet: &Packet,
    key: &FlowKey,
    src: Option<([u8; 16], u16)>,
    dst: Option<([u8; 16], u16)>,
) -> Result<Vec<u8>, Fault> {
    let l4 = packet.l4;
    let check_at = l4 + if packet.proto == TCP { 16 } else { 6 };
    if l4 > MAX_L4 || frame.len() < l4 + 4 || pair(frame, check_at).is_none() {
        return Err(Fault::TooShort);
    }
    let (new_src, new_sport) = src.unwrap_or((key.src, key.sport));
    let (new_dst, new_dport) = dst.unwrap_or((key.dst, key.dport));
    let v6 = key.family == FAMILY_V6;
    let ttl_at = ETH_LEN + if v6 { 7 } else { 8 };
    let ttl = frame[ttl_at];
    if ttl <= 1 {
        return Err(Fault::TtlExpired);
    }
    let mut out = frame.to_vec();
    let width = if v6 { 16 } else { 4 };
    let mut changed = words(&key.src[..width], &new_src[..width]);
    changed.extend(words(&key.dst[..width], &new_dst[..width]));
    out[ttl_at] = ttl - 1;
    if v6 {
        out[ETH_LEN + 8..ETH_LEN + 24].copy_from_slice(&new_src);
        out[ETH_LEN + 24..ETH_LEN + 40].copy_from_slice(&new_dst);
    } else {
        let mut header_words = changed.clone();
        let proto = frame[ETH_LEN + 9];
        header_words.push((
            u16::from_be_bytes([ttl, proto]),
            u16::from_be_bytes([ttl - 1, proto]),
        ));
        let check = u16::from_be_bytes([frame[ETH_LEN + 10], frame[ETH_LEN + 11]]);
        let check = checksum::updated_words(check, &header_words);
        out[ETH_LEN + 10..ETH_LEN + 12].copy_from_slice(&check.to_be_bytes());
        out[ETH_LEN + 12..ETH_LEN + 16].copy_from_slice(&new_src[..4]);
        out[ETH_LEN + 16..ETH_LEN + 20].copy_from_slice(&new_dst[..4]);
    }
    let port = |p: u16| u16::from_be(p);
    changed.push((port(key.sport), port(new_sport)));
    changed.push((port(key.dport), port(new_dport)));
    let old = u16::from_be_bytes([frame[check_at], frame[check_at + 1]]);
    let check = match checksum::updated_words(old, &changed) {
        // A UDP checksum of 0 means "none" and stays so; a computed 0 is
        // sent as its other form.
        _ if packet.proto != TCP && old == 0 => 0,
        0 if packet.proto != TCP => 0xffff,
        check => check,
    };
    out[l4..l4 + 2].copy_from_slice(&new_sport.to_le_bytes());
    out[l4 + 2..l4 + 4].copy_from_slice(&new_dport.to_le_bytes());
    out[check_at..check_at + 2].copy_from_slice(&check.to_be_bytes());
    Ok(out)
}

/// The 16-bit words of `old` and `new`, paired (an odd last byte padded
/// with a zero).
pub fn words(old: &[u8], new: &[u8]) -> Vec<(u16, u16)> {
    let word = |w: &[u8]| u16::from_be_bytes([w[0], w.get(1).copied().unwrap_or(0)]);
    old.chunks(2)
        .zip(new.chunks(2))
        .map(|(o, n)| (word(o), word(n)))
        .collect()
}

/// Why a rewrite left a frame as it was.
pub enum Fault {
    /// A header is not where it must be.
    TooShort,
    /// The TTL or hop limit ran out.
    TtlExpired,
}

/// The drop of a frame a rewrite could not change, counted when its TTL
/// ran out.
pub fn dropped(maps: &mut Maps, frame: &[u8], fault: Fault) -> Effect {
    if let Fault::TtlExpired = fault {
        maps.counters.nat_ttl_expired += 1;
    }
    drop(frame)
}

/// The port a NAT worker is sent flow `key` on: its own, or the VIP's.
pub fn worker_port(backend: &Backend, key: &FlowKey) -> u16 {
    if backend.port != 0 {
        backend.port
    } else {
        key.dport
    }
}
