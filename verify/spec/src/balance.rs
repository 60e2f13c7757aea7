//! The balancer's steps for one frame: count it, find its VIP, follow its
//! flow or choose a worker for a new one (pin, sticky session, Maglev or
//! least-load), record what it chose, and send the frame on.

use lb_common::balancer::{
    is_nat, Backend, FlowKey, FlowValue, StickyKey, StickyValue, VipInfo, VipKey, BACKEND_DOWN,
    BACKEND_DRAINING, BACKEND_MAC_KNOWN, BACKEND_UNREACHABLE, BACKEND_VALID, FAMILY_V4, FAMILY_V6,
    FLOW_CLOSING, FORWARD_DSR, FORWARD_FULLNAT, FORWARD_GUE, FORWARD_IPIP, LOAD_UNKNOWN,
    NO_BACKEND, SCHED_LEAST_LOAD, VIP_HAS_PINS, VIP_STICKY,
};

use crate::{
    headers::{self, Class, Packet, TCP, UDP},
    icmp, nat, pmtu,
    state::{Clock, Effect, Maps, Verdict},
    tunnel,
};

const SECOND: u64 = 1_000_000_000;
const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;
/// The least-load scheduler's second hash is seeded apart from the first.
const SECOND_SALT: u32 = 0x5bd1_e995;

/// Runs one frame through the balancer: the verdict and the frame that
/// leaves, with `maps` changed as the data plane changes them; `None` when
/// the frame takes a path this specification leaves out (a NAT reply
/// whose client's next hop is not cached, NAT's ICMP half, "too big"
/// answers, a worker behind another interface).
pub fn step(maps: &mut Maps, frame: &[u8], clock: Clock) -> Option<Effect> {
    maps.counters.packets += 1;
    maps.counters.bytes += frame.len() as u64;
    let effect = match headers::parse(frame) {
        Ok(packet) => {
            count_class(maps, packet.class());
            balance(maps, frame, &packet, clock)?
        }
        Err(class) => {
            count_class(maps, class);
            None
        }
    };
    Some(effect.unwrap_or_else(|| {
        maps.counters.pass_not_vip += 1;
        pass(frame)
    }))
}

/// The frame, untouched, to the kernel.
pub fn pass(frame: &[u8]) -> Effect {
    Effect {
        verdict: Verdict::Pass,
        frame: frame.to_vec(),
    }
}

/// A dropped frame.
pub fn drop(frame: &[u8]) -> Effect {
    Effect {
        verdict: Verdict::Drop,
        frame: frame.to_vec(),
    }
}

fn count_class(maps: &mut Maps, class: Class) {
    let counters = &mut maps.counters;
    let field = match class {
        Class::NonIp => &mut counters.non_ip,
        Class::Malformed => &mut counters.malformed,
        Class::Ipv4Tcp => &mut counters.ipv4_tcp,
        Class::Ipv4Udp => &mut counters.ipv4_udp,
        Class::Ipv4Icmp => &mut counters.ipv4_icmp,
        Class::Ipv4Fragment => &mut counters.ipv4_fragment,
        Class::Ipv4Other => &mut counters.ipv4_other,
        Class::Ipv6Tcp => &mut counters.ipv6_tcp,
        Class::Ipv6Udp => &mut counters.ipv6_udp,
        Class::Ipv6Icmp => &mut counters.ipv6_icmp,
        Class::Ipv6Other => &mut counters.ipv6_other,
    };
    *field += 1;
}

/// The outer `Option`: inside the specification or not; the inner: the
/// balancer's effect, or `None` to pass the frame as not a VIP's.
pub type Outcome = Option<Option<Effect>>;

fn balance(maps: &mut Maps, frame: &[u8], packet: &Packet, clock: Clock) -> Outcome {
    if packet.later_fragment {
        return Some(None);
    }
    if packet.is_icmp() {
        return icmp::handle(maps, frame, packet);
    }
    if packet.proto != TCP && packet.proto != UDP {
        return Some(None);
    }
    let key = flow_key(packet);
    let Some(vip) = maps.vips.get(&vip_key(&key)).copied() else {
        return nat::reply(maps, frame, packet, &key, clock);
    };
    let tcp = packet.proto == TCP;
    let syn = tcp && packet.tcp_flags & (SYN | ACK) == SYN;
    let closing = tcp && packet.tcp_flags & (FIN | RST) != 0;
    let chosen = if syn {
        None
    } else {
        follow(maps, &key, clock, closing)
    };
    let job = match chosen {
        Some(job) => job,
        None => {
            let reset = tcp && packet.tcp_flags & RST != 0;
            match new_flow(maps, &key, &vip, clock, reset) {
                Some(job) => job,
                None => {
                    maps.counters.drop_no_backend += 1;
                    return Some(Some(drop(frame)));
                }
            }
        }
    };
    send(maps, frame, packet, &key, &job, clock).map(Some)
}

/// A packet's flow: addresses, ports (as on the wire), protocol, family.
pub fn flow_key(packet: &Packet) -> FlowKey {
    FlowKey {
        src: packet.src,
        dst: packet.dst,
        sport: u16::from_le_bytes(packet.sport),
        dport: u16::from_le_bytes(packet.dport),
        proto: packet.proto,
        family: family(packet),
        pad: [0; 2],
    }
}

/// The family code of a packet's version.
pub fn family(packet: &Packet) -> u8 {
    if packet.version == 4 {
        FAMILY_V4
    } else {
        FAMILY_V6
    }
}

fn vip_key(key: &FlowKey) -> VipKey {
    VipKey {
        addr: key.dst,
        port: key.dport,
        proto: key.proto,
        family: key.family,
    }
}

/// Where a packet goes, and why.
pub struct Job {
    /// The worker's id.
    pub backend_id: u32,
    /// Its slot as read.
    pub backend: Backend,
    /// The VIP's id.
    pub vip_id: u32,
    /// Whether this packet opened a flow.
    pub new_flow: bool,
    /// A followed `fullnat` flow's NAT source slot and port.
    pub nat: (u8, u16),
}

/// The flow table's worker for `key`, its entry kept fresh: a flow is
/// followed while its VIP is the one it was recorded for, it has been
/// idle no longer than the VIP's idle timeout, and its worker is the same
/// generation, neither down nor unreachable (draining keeps flows).
fn follow(maps: &mut Maps, key: &FlowKey, clock: Clock, closing: bool) -> Option<Job> {
    let entry = *maps.flows.get(key)?;
    let tag = maps.vip_tag(entry.vip_id)?;
    if tag.tag != entry.vip_tag {
        return None;
    }
    let idle = clock.coarse.saturating_sub(entry.last_seen_ns);
    if idle > u64::from(tag.idle_timeout_s) * SECOND {
        maps.counters.flow_expired += 1;
        return None;
    }
    let backend = maps.backend(entry.backend_id)?;
    if !keeps_flows(&backend, entry.vip_id, entry.backend_generation) {
        maps.counters.flow_rescheduled += 1;
        return None;
    }
    maps.counters.flow_hits += 1;
    let touched = maps.flows.get_mut(key).expect("read above");
    if closing {
        touched.flags |= FLOW_CLOSING;
        touched.last_seen_ns = clock.coarse;
    } else if clock.coarse.saturating_sub(touched.last_seen_ns) > SECOND {
        touched.last_seen_ns = clock.coarse;
    }
    Some(Job {
        backend_id: entry.backend_id,
        backend,
        vip_id: entry.vip_id,
        new_flow: false,
        nat: (entry.nat_source, entry.nat_port),
    })
}

fn keeps_flows(backend: &Backend, vip_id: u32, generation: u32) -> bool {
    let valid = backend.flags & BACKEND_VALID != 0;
    let gone = backend.flags & (BACKEND_DOWN | BACKEND_UNREACHABLE) != 0;
    valid && !gone && backend.vip_id == vip_id && backend.generation == generation
}

fn takes_new_flows(backend: &Backend, vip_id: u32) -> bool {
    let valid = backend.flags & BACKEND_VALID != 0;
    let unusable = BACKEND_DOWN | BACKEND_DRAINING | BACKEND_UNREACHABLE;
    valid && backend.flags & unusable == 0 && backend.vip_id == vip_id
}

/// The generation of worker `id` if it may take a new flow of `vip`.
fn usable(maps: &Maps, id: u32, vip: &VipInfo) -> Option<u32> {
    let backend = maps.backend(id)?;
    takes_new_flows(&backend, vip.id).then_some(backend.generation)
}

/// A new flow's worker: the client's usable pin, else its fresh sticky
/// session on a usable worker of the same generation, else the scheduler
/// (whose pick becomes the client's session on a sticky VIP). The flow is
/// recorded unless the packet is a reset.
fn new_flow(
    maps: &mut Maps,
    key: &FlowKey,
    vip: &VipInfo,
    clock: Clock,
    reset: bool,
) -> Option<Job> {
    let client = StickyKey {
        client: masked(&key.src, vip.sticky_prefix),
        vip_id: vip.id,
    };
    let mut becomes_session = false;
    let pinned = (vip.flags & VIP_HAS_PINS != 0)
        .then(|| maps.pins.get(&client).copied())
        .flatten()
        .filter(|&id| usable(maps, id, vip).is_some());
    let backend_id = if let Some(id) = pinned {
        maps.counters.pin_hits += 1;
        id
    } else if let Some(id) = session(maps, &client, vip, clock) {
        maps.counters.sticky_hits += 1;
        id
    } else {
        becomes_session = vip.flags & VIP_STICKY != 0;
        scheduled(maps, key, vip)?
    };
    let backend = maps.backend(backend_id)?;
    if becomes_session {
        let session = StickyValue {
            backend_id,
            backend_generation: backend.generation,
            last_ns: clock.monotonic,
        };
        maps.sessions.insert(client, session);
    }
    // A `fullnat` flow is recorded once it has its port.
    if !reset && backend.forward != FORWARD_FULLNAT {
        maps.flows
            .insert(*key, recorded(backend_id, &backend, vip, clock));
    }
    Some(Job {
        backend_id,
        backend,
        vip_id: vip.id,
        new_flow: true,
        nat: (nat::NO_SOURCE, 0),
    })
}

/// The worker of the client's sticky session, refreshed, if the session
/// is younger than the VIP's TTL and its worker may take the flow.
fn session(maps: &mut Maps, client: &StickyKey, vip: &VipInfo, clock: Clock) -> Option<u32> {
    if vip.flags & VIP_STICKY == 0 {
        return None;
    }
    let session = *maps.sessions.get(client)?;
    let age = clock.monotonic.wrapping_sub(session.last_ns);
    let fresh = age < u64::from(vip.sticky_ttl_s) * SECOND;
    if !fresh || usable(maps, session.backend_id, vip) != Some(session.backend_generation) {
        return None;
    }
    maps.sessions.get_mut(client).expect("read above").last_ns = clock.monotonic;
    Some(session.backend_id)
}

fn recorded(backend_id: u32, backend: &Backend, vip: &VipInfo, clock: Clock) -> FlowValue {
    FlowValue {
        backend_id,
        vip_id: vip.id,
        created_ns: clock.coarse,
        last_seen_ns: clock.coarse,
        flags: 0,
        vip_tag: vip.tag,
        backend_generation: backend.generation,
        nat_port: 0,
        nat_source: nat::NO_SOURCE,
        pad: 0,
    }
}

/// The first `bits` bits of `addr`, the rest zeros.
fn masked(addr: &[u8; 16], bits: u8) -> [u8; 16] {
    let mut out = [0u8; 16];
    for bit in 0..usize::from(bits).min(128) {
        let mask = 0x80 >> (bit % 8);
        out[bit / 8] |= addr[bit / 8] & mask;
    }
    out
}

/// The VIP's scheduler: Maglev's slot for the flow's hash; least-load
/// also looks at the slot of an independent hash and takes its worker
/// only when both loads are known and its is strictly lower.
pub fn scheduled(maps: &Maps, key: &FlowKey, vip: &VipInfo) -> Option<u32> {
    let table = maps.tables.get(&vip.id)?;
    let slot = |hash: u32| {
        let index = hash.checked_rem(vip.table_size)?;
        table
            .get(index as usize)
            .copied()
            .filter(|&id| id != NO_BACKEND)
    };
    let first = slot(flow_hash(key, maps.hash_seed))?;
    if vip.scheduler != SCHED_LEAST_LOAD {
        return Some(first);
    }
    let Some(second) = slot(flow_hash(key, maps.hash_seed ^ SECOND_SALT)) else {
        return Some(first);
    };
    let load = |id: u32| maps.loads.get(&id).copied().unwrap_or(LOAD_UNKNOWN);
    let (first_load, second_load) = (load(first), load(second));
    let known = first_load != LOAD_UNKNOWN && second_load != LOAD_UNKNOWN;
    Some(if known && second_load < first_load {
        second
    } else {
        first
    })
}

/// The flow hash: MurmurHash3's 32-bit block mix over the addresses'
/// words (source and destination interleaved), the ports and the
/// protocol, then its finalizer.
pub fn flow_hash(key: &FlowKey, seed: u32) -> u32 {
    let mut h = seed ^ 0x9e37_79b9;
    for at in [0, 4, 8, 12] {
        h = murmur_block(h, tunnel::word(&key.src, at));
        h = murmur_block(h, tunnel::word(&key.dst, at));
    }
    h = murmur_block(h, (u32::from(key.sport) << 16) | u32::from(key.dport));
    h = murmur_block(h, u32::from(key.proto));
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

fn murmur_block(h: u32, block: u32) -> u32 {
    let k = block
        .wrapping_mul(0xcc9e_2d51)
        .rotate_left(15)
        .wrapping_mul(0x1b87_3593);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

/// Sends the packet on to its worker: dropped while the worker's MAC (or
/// next hop's) is unknown; readdressed (DSR) or encapsulated (IPIP, GUE);
/// counted for its VIP and worker. `None` outside the specification.
fn send(
    maps: &mut Maps,
    frame: &[u8],
    packet: &Packet,
    key: &FlowKey,
    job: &Job,
    clock: Clock,
) -> Option<Effect> {
    if is_nat(job.backend.forward) {
        return (job.backend.egress == 0)
            .then(|| nat::forward(maps, frame, packet, key, job, clock));
    }
    if job.backend.flags & BACKEND_MAC_KNOWN == 0 {
        maps.counters.drop_no_neighbour += 1;
        return Some(drop(frame));
    }
    let out = match job.backend.forward {
        FORWARD_DSR => readdressed(frame, job.backend.mac),
        FORWARD_IPIP | FORWARD_GUE => {
            if pmtu::too_big(frame, &job.backend) {
                return Some(pmtu::answer(maps, frame, key, &job.backend, clock.coarse));
            }
            tunnel::encapsulate(frame, &job.backend, key, key.family)
        }
        _ => return None,
    };
    if job.backend.egress != 0 {
        return None;
    }
    count_forwarded(maps, job, frame.len() as u64);
    maps.counters.forwarded += 1;
    Some(Effect {
        verdict: Verdict::Tx,
        frame: out,
    })
}

/// The frame to `mac` from the address it was sent to (ours).
pub fn readdressed(frame: &[u8], mac: [u8; 6]) -> Vec<u8> {
    let mut out = frame.to_vec();
    out[6..12].copy_from_slice(&frame[0..6]);
    out[0..6].copy_from_slice(&mac);
    out
}

pub fn count_forwarded(maps: &mut Maps, job: &Job, len: u64) {
    for stats in [
        maps.vip_stats.entry(job.vip_id).or_default(),
        maps.backend_stats.entry(job.backend_id).or_default(),
    ] {
        stats.packets += 1;
        stats.bytes += len;
        stats.new_flows += u64::from(job.new_flow);
    }
}
