//! NAT forwarding (`nat`, `fullnat`): the balancer's second half for NAT
//! workers, reached by a tail call (`lb_nat`) with the job in a per-CPU
//! slot, like the tunnel program, so the translation has a stack of its
//! own.
//!
//! Forward: the destination becomes the worker's address and port; for
//! `fullnat` the source also becomes a NAT source and a port, allocated
//! for the connection's first packet (`allocate`) and kept in its flow
//! entry after that. Reverse: a worker's reply is found by its tuple
//! (`LB_NAT` for `fullnat`, `LB_NAT_WORKERS` by the worker's address and
//! port for `nat`), translated back, and sent toward the client's next
//! hop as the kernel's routing table names it (`bpf_fib_lookup`).

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup as FibParams, xdp_action, BPF_ANY, BPF_FIB_LKUP_RET_NOT_FWDED,
        BPF_FIB_LKUP_RET_SUCCESS, BPF_NOEXIST,
    },
    helpers::bpf_fib_lookup,
    programs::XdpContext,
};
use lb_common::{
    balancer::{Backend, FlowKey, FlowValue, BACKEND_MAC_KNOWN, FAMILY_V6, FORWARD_FULLNAT},
    capture::{reason, ACTION_PASS, NO_ID},
    counters::GlobalCounters,
    csum::{self, Update},
    nat::{
        self, NatConfig, NatEntry, NatHop, NatJob, NatWorkerKey, NAT_CLOSING, NAT_DEAD,
        NAT_ESTABLISHED, NAT_JOB_NEW_FLOW, NAT_JOB_REPLY, NAT_OPENING, NAT_PROBES,
        NAT_PROG_FORWARD, NAT_PROG_REPLY, NAT_SOURCES_PER_FAMILY, NO_NAT_SOURCE,
    },
    packet::{ETH_HLEN, IPPROTO_TCP},
};
use lb_ebpf::frame::XdpFrame;

use crate::{
    capture::{self, Outcome},
    flow::{self, Decision},
    maps::{
        LB_BACKENDS, LB_COUNTERS, LB_FLOWS, LB_IFACES, LB_NAT, LB_NAT_CONFIG, LB_NAT_HOPS,
        LB_NAT_JOB, LB_NAT_PROG, LB_NAT_SCRATCH, LB_NAT_SOURCES, LB_NAT_WORKERS, LB_REPLY_FILTER,
    },
    transmit,
};

const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_FIN: u8 = 0x01;
const TCP_ACK: u8 = 0x10;

/// The transport header never starts further in than this (Ethernet,
/// IPv6 and the extension headers the parser follows): a bound the
/// verifier needs for an offset read from a map.
const MAX_L4_OFFSET: usize = 512;

/// `errno` of an insert whose key exists.
const EEXIST: i32 = 17;

/// Hands a packet of a NAT'd flow to the NAT program; like the tunnel's
/// tail call, it only returns when the program is missing.
#[inline(always)]
pub fn to_worker(
    ctx: &XdpContext,
    key: &FlowKey,
    decision: &Decision,
    (len, tcp_flags, l4_offset): (u64, u8, usize),
    counters: &mut GlobalCounters,
) -> Outcome {
    let kind = if decision.new_flow {
        NAT_JOB_NEW_FLOW
    } else {
        nat::NAT_JOB_FLOW
    };
    if let Some(slot) = LB_NAT_JOB.get_ptr_mut(0) {
        // SAFETY: per-CPU slot: nothing else touches it during this run.
        let slot: &mut NatJob = unsafe { &mut *slot };
        slot.key = *key;
        slot.backend_id = decision.backend_id;
        slot.vip_id = decision.vip_id;
        slot.len = len;
        slot.kind = kind;
        slot.reason = decision.reason;
        slot.tcp_flags = tcp_flags;
        slot.nat_source = decision.nat.0;
        slot.nat_port = decision.nat.1;
        slot.l4_offset = l4_offset as u16;
        // SAFETY: the context is the program's own.
        unsafe { LB_NAT_PROG.tail_call(ctx, NAT_PROG_FORWARD) };
    }
    counters.drop_no_nat += 1;
    Outcome::drop(reason::NO_NAT, decision.vip_id, decision.backend_id)
}

/// Whether a packet from `src:sport` may be a NAT worker's reply: its bit
/// in the reply filter (most packets that are not for a VIP leave here).
#[inline(always)]
pub fn maybe_reply(src: &[u8; 16], sport: u16, proto: u8) -> bool {
    let bit = lb_common::balancer::vip_filter_bit(src, sport, proto);
    LB_REPLY_FILTER
        .get(bit >> 6)
        .is_some_and(|word| word & (1u64 << (bit & 63)) != 0)
}

/// Whether the reply filter has NAT source `addr`'s bit.
#[inline(always)]
fn reply_bit(addr: &[u8; 16]) -> bool {
    let bit = nat::source_bit(addr);
    LB_REPLY_FILTER
        .get(bit >> 6)
        .is_some_and(|word| word & (1u64 << (bit & 63)) != 0)
}

/// Hands a possible reply (tuple `key` as the worker sent it) to the NAT
/// program; `None` (pass it untouched) when the program is missing.
#[inline(always)]
pub fn to_reverse(
    ctx: &XdpContext,
    key: &FlowKey,
    (len, tcp_flags, l4_offset): (u64, u8, usize),
) -> Option<Outcome> {
    let slot = LB_NAT_JOB.get_ptr_mut(0)?;
    // SAFETY: per-CPU slot: nothing else touches it during this run.
    let slot: &mut NatJob = unsafe { &mut *slot };
    slot.key = *key;
    slot.len = len;
    slot.kind = NAT_JOB_REPLY;
    slot.tcp_flags = tcp_flags;
    slot.l4_offset = l4_offset as u16;
    // SAFETY: the context is the program's own.
    unsafe { LB_NAT_PROG.tail_call(ctx, NAT_PROG_REPLY) };
    None
}

/// The NAT program's work: the job the balancer left, translated, sent,
/// counted, and shown to a running capture.
#[inline(always)]
pub fn run<const REPLY: bool>(ctx: &XdpContext) -> u32 {
    // Slot 0 of a per-CPU array always exists; the verifier needs the check.
    let (Some(job), Some(counters)) = (LB_NAT_JOB.get(0), LB_COUNTERS.get_ptr_mut(0)) else {
        return xdp_action::XDP_DROP;
    };
    // SAFETY: per-CPU slot: nothing else touches it during this run.
    let counters = unsafe { &mut *counters };
    let outcome = translate::<REPLY>(ctx, job, counters);
    // A capture's client filter names clients: a reply's is its
    // destination as translated, looked up only while a capture runs.
    let client = if REPLY && capture::running() {
        reply_client(&job.key)
    } else {
        &job.key.src
    };
    capture::finish(ctx, &outcome, client, job.key.family)
}

/// The client a worker's reply `key` goes to: a `fullnat` connection's,
/// or (`nat`) its destination.
#[inline(always)]
fn reply_client(key: &'static FlowKey) -> &'static [u8; 16] {
    match LB_NAT.get_ptr(key) {
        // SAFETY: the kernel keeps the element alive for this run.
        Some(entry) => unsafe { &(*entry).client.src },
        None => &key.dst,
    }
}

/// What a packet is rewritten to, and where it goes.
struct Plan {
    /// The new source, if it changes.
    src: Option<Endpoint>,
    /// The new destination, if it changes.
    dst: Option<Endpoint>,
    /// The VIP's id.
    vip_id: u32,
    /// The worker's id.
    backend_id: u32,
    /// Forward: the worker's next hop.
    mac: [u8; 6],
    /// Forward: the slot of the interface it is reached through.
    egress: u8,
    /// Reverse: the routing lookup's answer (`BPF_FIB_LKUP_RET_*`).
    route: i64,
    /// Reverse: the client's next hop, fresh from the cache (no lookup).
    hop: Option<&'static NatHop>,
}

/// Plans the job's packet (forward, or with `REPLY` reverse), rewrites
/// it, and sends it. Forward and reverse are programs of their own: the
/// rewriting's locals and the port allocation's do not fit one 512-byte
/// stack beside the reverse path's routing lookup.
#[inline(always)]
fn translate<const REPLY: bool>(
    ctx: &XdpContext,
    job: &'static NatJob,
    counters: &mut GlobalCounters,
) -> Outcome {
    let plan = if REPLY {
        reverse(ctx, job)
    } else {
        forward(job, counters)
    };
    let plan = match plan {
        Ok(plan) => plan,
        Err(outcome) => {
            // No NAT'd connection's reply after all: the kernel's.
            let missed = u64::from(outcome.reason == reason::NOT_VIP);
            counters.pass_not_vip += missed;
            if REPLY {
                counters.nat_reply_misses += missed;
            }
            return outcome;
        }
    };
    let (vip_id, backend_id) = (plan.vip_id, plan.backend_id);
    let frame = XdpFrame::new(ctx);
    match rewrite(&frame, job, plan.src.as_ref(), plan.dst.as_ref()) {
        Rewritten::Yes => {}
        Rewritten::TtlExpired => {
            counters.nat_ttl_expired += 1;
            return Outcome::drop(reason::TTL_EXPIRED, vip_id, backend_id);
        }
        Rewritten::TooShort => return Outcome::drop(reason::TOO_SHORT, vip_id, backend_id),
    }
    if REPLY {
        return send_reply(ctx, &frame, &plan, counters);
    }
    if !frame.readdress(Some(plan.mac)) {
        return Outcome::drop(reason::TOO_SHORT, vip_id, backend_id);
    }
    let action = transmit::depart(ctx, &frame, plan.egress);
    transmit::count_forwarded(vip_id, backend_id, job.len, job.kind == NAT_JOB_NEW_FLOW);
    counters.forwarded += 1;
    Outcome::forward(action, job.reason, vip_id, backend_id)
}

/// An address and port a packet is rewritten to.
#[derive(Clone, Copy)]
pub struct Endpoint {
    /// In a map's value: a reference, not a copy, to spare the stack.
    pub addr: &'static [u8; 16],
    /// Network byte order.
    pub port: u16,
}

/// A client's packet to its worker: the destination becomes the
/// worker's address and port, and for `fullnat` the source a NAT source
/// and the connection's port; it goes to the worker's next hop.
#[inline(always)]
fn forward(job: &NatJob, counters: &mut GlobalCounters) -> Result<Plan, Outcome> {
    let (vip_id, backend_id) = (job.vip_id, job.backend_id);
    let Some(backend) = LB_BACKENDS.get(backend_id) else {
        return Err(Outcome::drop(reason::NO_BACKEND, vip_id, NO_ID));
    };
    if backend.flags & BACKEND_MAC_KNOWN == 0 {
        counters.drop_no_neighbour += 1;
        return Err(Outcome::drop(reason::NO_NEIGHBOUR, vip_id, backend_id));
    }
    let worker = Endpoint {
        addr: &backend.addr,
        port: if backend.port != 0 {
            backend.port
        } else {
            job.key.dport
        },
    };
    let src = if backend.forward == FORWARD_FULLNAT {
        let pair = if job.kind == NAT_JOB_NEW_FLOW {
            connect(job, backend, &worker, counters)?
        } else {
            (job.nat_source, job.nat_port)
        };
        let Some(source) = source_endpoint(pair) else {
            return Err(Outcome::drop(reason::NAT_EXHAUSTED, vip_id, backend_id));
        };
        Some(source)
    } else {
        None
    };
    Ok(Plan {
        src,
        dst: Some(worker),
        vip_id,
        backend_id,
        mac: backend.mac,
        egress: backend.egress,
        route: 0,
        hop: None,
    })
}

/// The NAT source slot's address and the port, as a packet's new source.
#[inline(always)]
fn source_endpoint((slot, port): (u8, u16)) -> Option<Endpoint> {
    let source = LB_NAT_SOURCES.get(u32::from(slot))?;
    if source.family == 0 {
        return None;
    }
    Some(Endpoint {
        addr: &source.addr,
        port,
    })
}

/// [`claim`]'s answer when no port is free.
const CLAIM_EXHAUSTED: u32 = u32::MAX;
/// [`claim`]'s answer when the NAT table is full.
const CLAIM_TABLE_FULL: u32 = u32::MAX - 1;

/// The NAT source slot and port (network byte order) of a `fullnat`
/// flow's first packet here, or the drop that ends it.
#[inline(always)]
fn connect(
    job: &NatJob,
    backend: &Backend,
    worker: &Endpoint,
    counters: &mut GlobalCounters,
) -> Result<(u8, u16), Outcome> {
    match claim(job, backend, worker, counters) {
        CLAIM_EXHAUSTED | CLAIM_TABLE_FULL => Err(Outcome::drop(
            reason::NAT_EXHAUSTED,
            job.vip_id,
            job.backend_id,
        )),
        pair => Ok(((pair >> 16) as u8, pair as u16)),
    }
}

/// The port of a `fullnat` flow's first packet here: its entry's when it
/// has one (a retransmitted SYN, a flow whose flow entry expired or was
/// evicted), otherwise newly allocated; the flow is recorded with it.
/// Answers `slot << 16 | port`, or [`CLAIM_EXHAUSTED`] or
/// [`CLAIM_TABLE_FULL`] (counted).
#[inline(always)]
fn claim(job: &NatJob, backend: &Backend, worker: &Endpoint, counters: &mut GlobalCounters) -> u32 {
    let Some(config) = LB_NAT_CONFIG.get(0) else {
        counters.nat_ports_exhausted += 1;
        return CLAIM_EXHAUSTED;
    };
    let syn = job.key.proto == IPPROTO_TCP && job.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    let found = match recorded(job, worker, syn) {
        Some(pair) => Some(pair),
        None if !syn => unpack(recover(job, config, worker)),
        None => None,
    };
    let pair = match found {
        Some(pair) => {
            counters.nat_recovered += u64::from(!syn);
            pair
        }
        None => match allocate(job, backend, config, worker) {
            CLAIM_EXHAUSTED => {
                counters.nat_ports_exhausted += 1;
                return CLAIM_EXHAUSTED;
            }
            CLAIM_TABLE_FULL => {
                counters.nat_table_full += 1;
                return CLAIM_TABLE_FULL;
            }
            claimed => {
                counters.nat_allocations += 1;
                ((claimed >> 16) as u8, claimed as u16)
            }
        },
    };
    record(job, backend, pair, counters);
    pack(pair)
}

/// A NAT source slot and port as one word (slots are below 32, so it is
/// never [`CLAIM_EXHAUSTED`] or [`CLAIM_TABLE_FULL`]): the probe loops
/// are functions of their own, which answer in one register.
#[inline(always)]
fn pack((slot, port): (u8, u16)) -> u32 {
    u32::from(slot) << 16 | u32::from(port)
}

/// The pair [`pack`] packed, unless the word says there is none.
#[inline(always)]
fn unpack(word: u32) -> Option<(u8, u16)> {
    (word != CLAIM_EXHAUSTED && word != CLAIM_TABLE_FULL)
        .then_some(((word >> 16) as u8, word as u16))
}

/// The NAT source and port the flow entry of `job`'s flow still names,
/// if its NAT entry is live, on the same worker, and (for a SYN) not
/// closing: a retransmitted SYN or an idle flow keeps its port; a SYN
/// reusing a closed connection's tuple gets a new one.
#[inline(always)]
fn recorded(job: &NatJob, worker: &Endpoint, syn: bool) -> Option<(u8, u16)> {
    // SAFETY: copied out at once.
    let value = unsafe { LB_FLOWS.get(&job.key) }?;
    if value.nat_source == NO_NAT_SOURCE || value.backend_id != job.backend_id {
        return None;
    }
    let pair = (value.nat_source, value.nat_port);
    let entry = entry_of(&job.key, worker, pair)?;
    let reusable = entry.flags & NAT_DEAD == 0
        && same_flow(&entry.client, &job.key)
        && !(syn && entry.state == NAT_CLOSING);
    reusable.then_some(pair)
}

/// The NAT entry of `client`'s connection to `worker` through `pair`.
#[inline(always)]
fn entry_of(
    client: &FlowKey,
    worker: &Endpoint,
    (slot, port): (u8, u16),
) -> Option<&'static NatEntry> {
    let source = LB_NAT_SOURCES.get(u32::from(slot))?;
    let key = nat::reply_key(client, worker.addr, worker.port, &source.addr, port);
    // SAFETY: the kernel keeps the element alive for this run; only whole
    // aligned fields are stored.
    LB_NAT.get_ptr(&key).map(|entry| unsafe { &*entry })
}

/// Walks the probe sequence for a live entry of `job`'s flow: a
/// connection whose flow entry was evicted from the LRU flow table.
/// Answers the [`pack`]ed pair, or [`CLAIM_EXHAUSTED`] when there is
/// none. Not inlined, like [`allocate`]: the unrolled probe loop's
/// locals would not fit beside the rewriting's in one 512-byte frame.
#[inline(never)]
fn recover(job: &NatJob, config: &NatConfig, worker: &Endpoint) -> u32 {
    let (_, count) = config.slots(job.key.family);
    if count == 0 {
        return CLAIM_EXHAUSTED;
    }
    let mut i = 0;
    while i < NAT_PROBES {
        let Some(pair) = unpack(probe_at(job, config, i)) else {
            break;
        };
        i += 1;
        if let Some(entry) = entry_of(&job.key, worker, pair) {
            if entry.flags & NAT_DEAD == 0 && same_flow(&entry.client, &job.key) {
                return pack(pair);
            }
        }
    }
    CLAIM_EXHAUSTED
}

/// Probe `i` of `job`'s flow: the [`pack`]ed NAT source slot and port
/// (network byte order), or [`CLAIM_EXHAUSTED`] if the configuration
/// names no source there. Not inlined: the flow hash, unrolled in each
/// probe loop, would not fit their frames.
#[inline(never)]
fn probe_at(job: &NatJob, config: &NatConfig, i: u32) -> u32 {
    let (slots, _) = config.slots(job.key.family);
    let (index, port) = nat::probe(&job.key, config.seed, i, config);
    match slots.get(index as usize) {
        Some(&slot) => pack((slot, port.to_be())),
        None => CLAIM_EXHAUSTED,
    }
}

/// Claims a port for `job`'s flow: the first of its probe sequence whose
/// reply tuple is free, claimed by inserting its entry only if absent
/// (the map arbitrates between CPUs). Answers the [`pack`]ed pair, or
/// [`CLAIM_EXHAUSTED`] (every probe hit a taken port, or the family has
/// no NAT source) or [`CLAIM_TABLE_FULL`].
#[inline(never)]
fn allocate(job: &NatJob, backend: &Backend, config: &NatConfig, worker: &Endpoint) -> u32 {
    let (_, count) = config.slots(job.key.family);
    if count == 0 || u32::from(count) > NAT_SOURCES_PER_FAMILY {
        return CLAIM_EXHAUSTED;
    }
    let Some(scratch) = LB_NAT_SCRATCH.get_ptr_mut(0) else {
        return CLAIM_EXHAUSTED;
    };
    // SAFETY: per-CPU slot: nothing else touches it during this run.
    let entry = unsafe { &mut (*scratch).entry };
    let now = flow::coarse_now();
    entry.client = job.key;
    entry.backend_id = job.backend_id;
    entry.vip_id = job.vip_id;
    entry.vip_tag = crate::maps::LB_VIP_TAGS
        .get(job.vip_id)
        .map_or(0, |tag| tag.tag);
    entry.backend_generation = backend.generation;
    entry.created_ns = now;
    entry.last_seen_ns = now;
    entry.state = if job.key.proto == IPPROTO_TCP {
        NAT_OPENING
    } else {
        NAT_ESTABLISHED
    };
    entry.flags = 0;
    entry.pad = [0; 5];
    entry.hop = NatHop::default();
    let mut i = 0;
    while i < NAT_PROBES {
        let Some((slot, port)) = unpack(probe_at(job, config, i)) else {
            break;
        };
        i += 1;
        let Some(source) = LB_NAT_SOURCES.get(u32::from(slot)) else {
            continue;
        };
        let key = nat::reply_key(&job.key, worker.addr, worker.port, &source.addr, port);
        entry.source = slot;
        match LB_NAT.insert(&key, &*entry, BPF_NOEXIST.into()) {
            Ok(()) => return pack((slot, port)),
            Err(error) if error == -EEXIST => {}
            Err(_) => return CLAIM_TABLE_FULL,
        }
    }
    CLAIM_EXHAUSTED
}

/// Records a `fullnat` flow with its NAT source and port (the scheduler
/// leaves the recording of these flows to this program), unless the
/// packet is a RST.
#[inline(always)]
fn record(job: &NatJob, backend: &Backend, (slot, port): (u8, u16), counters: &mut GlobalCounters) {
    if job.key.proto == IPPROTO_TCP && job.tcp_flags & TCP_RST != 0 {
        return;
    }
    let now = flow::coarse_now();
    let tag = crate::maps::LB_VIP_TAGS
        .get(job.vip_id)
        .map_or(0, |tag| tag.tag);
    let value = FlowValue {
        backend_id: job.backend_id,
        vip_id: job.vip_id,
        created_ns: now,
        last_seen_ns: now,
        flags: 0,
        vip_tag: tag,
        backend_generation: backend.generation,
        nat_port: port,
        nat_source: slot,
        pad: 0,
    };
    if LB_FLOWS.insert(&job.key, &value, BPF_ANY.into()).is_err() {
        counters.flow_insert_failed += 1;
    }
}

/// A packet from a worker: a `fullnat` connection's (by its tuple) or a
/// `nat` worker's (by its address and port), translated back to the VIP
/// and the client and sent toward the client; anything else passes
/// untouched.
#[inline(always)]
fn reverse(ctx: &XdpContext, job: &'static NatJob) -> Result<Plan, Outcome> {
    let key = &job.key;
    let is_tcp = key.proto == IPPROTO_TCP;
    let now = flow::coarse_now();
    // SAFETY: the context pointer is valid for the program's run.
    let ingress = unsafe { (*ctx.ctx).ingress_ifindex };
    // Only a packet to a NAT source can be a fullnat reply: a nat reply
    // (to a client) skips that table.
    let fullnat = if reply_bit(&key.dst) {
        LB_NAT.get_ptr_mut(key)
    } else {
        None
    };
    let (vip, client, vip_id, backend_id, hop) = if let Some(entry) = fullnat {
        // SAFETY: the kernel keeps the element alive for this run; only
        // whole aligned fields are stored.
        let entry = unsafe { &mut *entry };
        if entry.flags & NAT_DEAD != 0 {
            return Err(Outcome::NOT_VIP);
        }
        seen_from_worker(entry, is_tcp, job.tcp_flags, now);
        let client = &entry.client;
        (
            Endpoint {
                addr: &client.dst,
                port: client.dport,
            },
            Some(Endpoint {
                addr: &client.src,
                port: client.sport,
            }),
            entry.vip_id,
            entry.backend_id,
            &mut entry.hop,
        )
    } else {
        let worker = NatWorkerKey {
            addr: key.src,
            port: key.sport,
            proto: key.proto,
            family: key.family,
        };
        // SAFETY: the kernel keeps the element alive for this run; the
        // controller replaces elements whole.
        let Some(value) = (unsafe { LB_NAT_WORKERS.get(&worker) }) else {
            return Err(Outcome::NOT_VIP);
        };
        let Some(slot) = client_hop(&key.dst) else {
            return Err(Outcome::NOT_VIP);
        };
        (
            Endpoint {
                addr: &value.vip,
                port: value.vip_port,
            },
            None,
            value.vip_id,
            value.backend_id,
            slot,
        )
    };
    let mut plan = Plan {
        src: Some(vip),
        dst: client,
        vip_id,
        backend_id,
        mac: [0; 6],
        egress: 0,
        route: i64::from(BPF_FIB_LKUP_RET_SUCCESS),
        hop: None,
    };
    if hop.fresh(now) {
        plan.hop = Some(hop);
        return Ok(plan);
    }
    let Some(fib) = fib_scratch() else {
        return Err(Outcome::NOT_VIP);
    };
    let to = client.map_or(&key.dst, |client| client.addr);
    let to_port = client.map_or(key.dport, |c| c.port);
    fill_fib(ctx, fib, key, &vip, (to, to_port));
    // SAFETY: the context is the program's own; the parameters lie in the
    // scratch slot, of the size passed.
    let route = unsafe {
        bpf_fib_lookup(
            ctx.ctx.cast(),
            fib,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    if route == i64::from(BPF_FIB_LKUP_RET_NOT_FWDED) {
        // For this host (its own connection to the worker's port, a
        // health check): not a client's.
        return Err(Outcome::NOT_VIP);
    }
    if route == i64::from(BPF_FIB_LKUP_RET_SUCCESS) && is_ours(ingress, fib.ifindex) {
        remember(hop, fib, now);
    }
    plan.route = route;
    Ok(plan)
}

/// The per-CPU cache slot of `nat` client `client`'s next hop: its own
/// when it holds it, otherwise emptied for it.
#[inline(always)]
fn client_hop(client: &[u8; 16]) -> Option<&'static mut NatHop> {
    let slot = LB_NAT_HOPS.get_ptr_mut(nat::hop_slot(client))?;
    // SAFETY: per-CPU slot: nothing else touches it during this run.
    let slot = unsafe { &mut *slot };
    if slot.client != *client {
        slot.client = *client;
        slot.hop.found_ns = 0;
    }
    Some(&mut slot.hop)
}

/// Whether interface `ifindex` is the one a packet came in on (`ingress`)
/// or another of lb's: one a reply can leave by without the kernel.
#[inline(always)]
fn is_ours(ingress: u32, ifindex: u32) -> bool {
    ifindex == ingress || LB_IFACES.get_ifindex(ifindex).is_some()
}

/// Caches a routing lookup's answer for the client's next replies.
#[inline(always)]
fn remember(hop: &mut NatHop, fib: &FibParams, now: u64) {
    hop.macs[..6].copy_from_slice(&fib.dmac);
    hop.macs[6..].copy_from_slice(&fib.smac);
    hop.ifindex = fib.ifindex;
    hop.found_ns = now;
}

/// Sends a translated reply where the routing lookup said: to the
/// client's next hop out of this interface or another of lb's, or to the
/// kernel.
#[inline(always)]
fn send_reply(
    ctx: &XdpContext,
    frame: &XdpFrame,
    plan: &Plan,
    counters: &mut GlobalCounters,
) -> Outcome {
    let (vip_id, backend_id) = (plan.vip_id, plan.backend_id);
    if let Some(hop) = plan.hop {
        let action = transmit::leaves_by(ctx, hop.ifindex);
        if let Some(action) = action.filter(|_| transmit::write(frame, 0, hop.macs).is_some()) {
            counters.nat_replies += 1;
            return Outcome::forward(action, reason::NAT_REPLY, vip_id, backend_id);
        }
    } else if let Some(fib) = fib_scratch() {
        // Only this packet's own lookup: with a cached hop, the scratch
        // holds another packet's.
        let action = (plan.route == i64::from(BPF_FIB_LKUP_RET_SUCCESS))
            .then(|| transmit::leaves_by(ctx, fib.ifindex))
            .flatten();
        if let Some(action) = action.filter(|_| set_macs(frame, fib)) {
            counters.nat_replies += 1;
            return Outcome::forward(action, reason::NAT_REPLY, vip_id, backend_id);
        }
    }
    // An interface lb is not on, or the neighbour unresolved: the kernel
    // forwards the translated packet (and resolves the neighbour on the
    // way).
    counters.nat_replies_unrouted += 1;
    Outcome {
        xdp_action: xdp_action::XDP_PASS,
        action: ACTION_PASS,
        reason: reason::NAT_REPLY,
        vip_id,
        worker_id: backend_id,
    }
}

/// The per-CPU `bpf_fib_lookup` parameters.
#[inline(always)]
pub fn fib_scratch() -> Option<&'static mut FibParams> {
    let scratch = LB_NAT_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: per-CPU slot: nothing else touches it during this run; its
    // 64 bytes hold a `bpf_fib_lookup` (size checked below), any bit
    // pattern of which is valid, and the slot is 8-aligned.
    Some(unsafe { &mut *(*scratch).fib.as_mut_ptr().cast::<FibParams>() })
}

/// A `fullnat` entry's state and clock after a packet from its worker.
#[inline(always)]
fn seen_from_worker(entry: &mut NatEntry, is_tcp: bool, tcp_flags: u8, now: u64) {
    let state = nat::state_after_reply(entry.state, is_tcp, tcp_flags);
    let closing = is_tcp && tcp_flags & (TCP_FIN | TCP_RST) != 0;
    if state != entry.state
        || closing
        || now.saturating_sub(entry.last_seen_ns) > lb_common::balancer::FLOW_TOUCH_NS
    {
        entry.state = state;
        entry.last_seen_ns = now;
    }
}

const _: () = assert!(core::mem::size_of::<FibParams>() == 64);

/// The routing lookup for a translated reply from `vip` to `to`.
#[inline(always)]
pub fn fill_fib(
    ctx: &XdpContext,
    fib: &mut FibParams,
    key: &FlowKey,
    vip: &Endpoint,
    (to, to_port): (&[u8; 16], u16),
) {
    // SAFETY: an all-zero bpf_fib_lookup is valid (integers and arrays).
    *fib = unsafe { core::mem::zeroed() };
    // The lookup is a forwarding decision for a packet that came in here.
    // SAFETY: the context pointer is valid for the program's run.
    fib.ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    fib.l4_protocol = key.proto;
    fib.sport = vip.port;
    fib.dport = to_port;
    if key.family == FAMILY_V6 {
        fib.family = 10; // AF_INET6
        fib.__bindgen_anon_3.ipv6_src = words(vip.addr);
        fib.__bindgen_anon_4.ipv6_dst = words(to);
    } else {
        fib.family = 2; // AF_INET
        fib.__bindgen_anon_3.ipv4_src =
            u32::from_ne_bytes([vip.addr[0], vip.addr[1], vip.addr[2], vip.addr[3]]);
        fib.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes([to[0], to[1], to[2], to[3]]);
    }
}

/// An IPv6 address as the four words `bpf_fib_lookup` takes.
#[inline(always)]
fn words(addr: &[u8; 16]) -> [u32; 4] {
    let word = |i: usize| u32::from_ne_bytes([addr[i], addr[i + 1], addr[i + 2], addr[i + 3]]);
    [word(0), word(4), word(8), word(12)]
}

/// The frame's MACs as the routing lookup found them.
#[inline(always)]
pub fn set_macs(frame: &XdpFrame, fib: &FibParams) -> bool {
    transmit::write(frame, 0, fib.dmac).is_some() && transmit::write(frame, 6, fib.smac).is_some()
}

/// Whether two flow keys are equal, compared as five words: the derived
/// comparison becomes a byte-wise `memcmp` whose spills alone would
/// overflow the stack.
#[inline(always)]
fn same_flow(a: &FlowKey, b: &FlowKey) -> bool {
    const WORDS: usize = core::mem::size_of::<FlowKey>() / 8;
    // SAFETY: FlowKey is repr(C, align(8)), 40 bytes without implicit
    // padding (its explicit padding is always zero).
    let (a, b) = unsafe {
        (
            &*(a as *const FlowKey).cast::<[u64; WORDS]>(),
            &*(b as *const FlowKey).cast::<[u64; WORDS]>(),
        )
    };
    a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3] && a[4] == b[4]
}

/// What [`rewrite`] did.
pub enum Rewritten {
    /// The packet carries its new addresses, ports and checksums.
    Yes,
    /// Its TTL or hop limit ran out; the frame is unchanged.
    TtlExpired,
    /// A header is not where the job says; the frame is unchanged.
    TooShort,
}

/// How an address's change moves a checksum (see `csum::delta`): of its
/// first four bytes unless `v6`. Not inlined: unrolled beside the rest,
/// its byte loads would spill past the 512-byte stack.
#[inline(never)]
pub fn address_delta(old: &[u8; 16], new: &[u8; 16], v6: bool) -> u32 {
    if v6 {
        csum::delta(old, new)
    } else {
        csum::delta(&v4(old), &v4(new))
    }
}

/// Rewrites the packet's source and destination (each when given),
/// decrements its TTL or hop limit (lb routes it), and updates every
/// checksum by the words that changed.
#[inline(always)]
fn rewrite(
    frame: &XdpFrame,
    job: &NatJob,
    src: Option<&Endpoint>,
    dst: Option<&Endpoint>,
) -> Rewritten {
    let l4 = usize::from(job.l4_offset);
    if l4 > MAX_L4_OFFSET {
        return Rewritten::TooShort;
    }
    let key = &job.key;
    let is_tcp = key.proto == IPPROTO_TCP;
    // The transport checksum's offset: TCP's at 16, UDP's at 6.
    let check_at = l4 + if is_tcp { 16 } else { 6 };
    let (Some(ports), Some(check)) = (
        frame.ptr_mut::<[u8; 4]>(l4),
        frame.ptr_mut::<[u8; 2]>(check_at),
    ) else {
        return Rewritten::TooShort;
    };
    let v6 = key.family == FAMILY_V6;
    let new_src = src.map_or(&key.src, |e| e.addr);
    let new_dst = dst.map_or(&key.dst, |e| e.addr);
    let new_sport = src.map_or(key.sport, |e| e.port);
    let new_dport = dst.map_or(key.dport, |e| e.port);
    // SAFETY: ptr_mut checked both ranges against data_end.
    let old_check = u16::from_be_bytes(unsafe { *check });
    let mut l4_sum = Update::new(old_check);
    let written = if v6 {
        rewrite_v6(frame, key, new_src, new_dst, &mut l4_sum)
    } else {
        rewrite_v4(frame, key, new_src, new_dst, &mut l4_sum)
    };
    if let Err(rewritten) = written {
        return rewritten;
    }
    l4_sum.word(u16::from_be(key.sport), u16::from_be(new_sport));
    l4_sum.word(u16::from_be(key.dport), u16::from_be(new_dport));
    // A UDP checksum of 0 means "none" and stays so (IPv6 forbids it:
    // the worker drops such a datagram, as it would have anyway).
    let new_check = if is_tcp {
        l4_sum.finish()
    } else {
        l4_sum.finish_udp(old_check)
    };
    let (sport, dport) = (new_sport.to_ne_bytes(), new_dport.to_ne_bytes());
    // SAFETY: as above.
    unsafe {
        *ports = [sport[0], sport[1], dport[0], dport[1]];
        *check = new_check.to_be_bytes();
    }
    Rewritten::Yes
}

/// IPv4: addresses, TTL and the header checksum; the address words go
/// into the transport checksum's update too (its pseudo-header).
#[inline(always)]
fn rewrite_v4(
    frame: &XdpFrame,
    key: &FlowKey,
    new_src: &[u8; 16],
    new_dst: &[u8; 16],
    l4_sum: &mut Update,
) -> Result<(), Rewritten> {
    let Some(header) = frame.ptr_mut::<[u8; 20]>(ETH_HLEN) else {
        return Err(Rewritten::TooShort);
    };
    // SAFETY: ptr_mut checked the 20 bytes against data_end.
    let header = unsafe { &mut *header };
    let ttl = header[8];
    if ttl <= 1 {
        return Err(Rewritten::TtlExpired);
    }
    let (src, dst) = (v4(new_src), v4(new_dst));
    let addresses =
        address_delta(&key.src, new_src, false) + address_delta(&key.dst, new_dst, false);
    let mut ip_sum = Update::new(u16::from_be_bytes([header[10], header[11]]));
    ip_sum.add(addresses);
    ip_sum.word(
        u16::from_be_bytes([ttl, header[9]]),
        u16::from_be_bytes([ttl - 1, header[9]]),
    );
    l4_sum.add(addresses);
    header[8] = ttl - 1;
    let check = ip_sum.finish().to_be_bytes();
    header[10] = check[0];
    header[11] = check[1];
    header[12..16].copy_from_slice(&src);
    header[16..20].copy_from_slice(&dst);
    Ok(())
}

/// IPv6: addresses and hop limit (no header checksum); the addresses go
/// into the transport checksum's update.
#[inline(always)]
fn rewrite_v6(
    frame: &XdpFrame,
    key: &FlowKey,
    new_src: &[u8; 16],
    new_dst: &[u8; 16],
    l4_sum: &mut Update,
) -> Result<(), Rewritten> {
    let Some(header) = frame.ptr_mut::<[u8; 40]>(ETH_HLEN) else {
        return Err(Rewritten::TooShort);
    };
    // SAFETY: ptr_mut checked the 40 bytes against data_end.
    let header = unsafe { &mut *header };
    let hops = header[7];
    if hops <= 1 {
        return Err(Rewritten::TtlExpired);
    }
    l4_sum.add(address_delta(&key.src, new_src, true) + address_delta(&key.dst, new_dst, true));
    header[7] = hops - 1;
    header[8..24].copy_from_slice(new_src);
    header[24..40].copy_from_slice(new_dst);
    Ok(())
}

#[inline(always)]
pub fn v4(addr: &[u8; 16]) -> [u8; 4] {
    [addr[0], addr[1], addr[2], addr[3]]
}
