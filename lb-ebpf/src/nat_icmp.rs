//! ICMP errors about NAT'd connections, translated both ways (as IPVS's
//! `ip_vs_nat_icmp` does), so Path MTU discovery and unreachable ports
//! work through NAT: a program of its own (`lb_nat_icmp`, reached by a
//! tail call), since the outer and the embedded headers both change.
//!
//! Toward the worker (an error from the client's side about a reply):
//! outer destination VIP → worker (`fullnat`: outer source → the NAT
//! source), embedded `VIP:vp → client` becomes `worker:wp → client`
//! (`fullnat`: `→ source:port`). From the worker's side (an error about a
//! translated packet): outer source → VIP (`fullnat`: destination → the
//! client), embedded `client|source → worker:wp` becomes
//! `client → VIP:vp`. Every checksum moves by the words that changed:
//! the outer IPv4 header's, the embedded IPv4 header's, the embedded
//! transport checksum when quoted, and the ICMP checksum (ICMPv6: with
//! its pseudo-header).

use aya_ebpf::{
    bindings::{xdp_action, BPF_FIB_LKUP_RET_NOT_FWDED, BPF_FIB_LKUP_RET_SUCCESS},
    helpers::bpf_fib_lookup,
    programs::XdpContext,
};
use lb_common::{
    balancer::{Backend, FlowKey, BACKEND_MAC_KNOWN, FAMILY_V6, FORWARD_FULLNAT},
    capture::{reason, ACTION_PASS, NO_ID},
    counters::GlobalCounters,
    csum::Update,
    icmp::{EmbeddedFlow, ICMP_HLEN},
    nat::{
        NatJob, NatWorkerKey, NAT_DEAD, NAT_JOB_ICMP_FROM_WORKER, NAT_JOB_ICMP_TO_WORKER,
        NAT_PROG_ICMP, NO_NAT_SOURCE,
    },
    packet::{ETH_HLEN, IPPROTO_TCP},
};
use lb_ebpf::frame::XdpFrame;

use crate::{
    capture::{self, Outcome},
    maps::{
        LB_BACKENDS, LB_COUNTERS, LB_FLOWS, LB_NAT, LB_NAT_JOB, LB_NAT_PROG, LB_NAT_SOURCES,
        LB_NAT_WORKERS,
    },
    nat::{address_delta, fib_scratch, fill_fib, maybe_reply, set_macs, Endpoint, Rewritten},
    transmit,
};

/// The transport header never starts further in than this: a bound the
/// verifier needs for an offset read from a map.
const MAX_L4_OFFSET: usize = 512;

/// Hands an ICMP error about flow `key` (as the client sent it) of a NAT
/// worker to the NAT ICMP program; it only returns when the program is
/// missing.
#[inline(always)]
pub fn to_worker(
    ctx: &XdpContext,
    key: &FlowKey,
    backend_id: u32,
    backend: &Backend,
    icmp_offset: usize,
    counters: &mut GlobalCounters,
) -> Outcome {
    let job = (backend_id, backend.vip_id, NAT_JOB_ICMP_TO_WORKER);
    hand_over(ctx, key, job, icmp_offset);
    counters.drop_no_nat += 1;
    Outcome::drop(reason::NO_NAT, backend.vip_id, backend_id)
}

/// Hands an ICMP error about a packet a NAT worker was sent (its
/// embedded destination is the worker's address and port) to the NAT
/// ICMP program; `None` (pass it) when it is no NAT worker's or the
/// program is missing.
#[inline(always)]
pub fn from_worker(
    ctx: &XdpContext,
    embedded: &EmbeddedFlow,
    family: u8,
    icmp_offset: usize,
) -> Option<Outcome> {
    // The classifier names the embedded packet's ends as a reply's: its
    // "client" is the worker, its "VIP" the NAT source or the client.
    if !maybe_reply(&embedded.client, embedded.client_port, embedded.proto) {
        return None;
    }
    let key = FlowKey {
        src: embedded.client,
        dst: embedded.vip,
        sport: embedded.client_port,
        dport: embedded.vip_port,
        proto: embedded.proto,
        family,
        pad: [0; 2],
    };
    hand_over(ctx, &key, (0, 0, NAT_JOB_ICMP_FROM_WORKER), icmp_offset);
    None
}

/// Writes the job (worker id, VIP id, kind) and tail-calls the program.
#[inline(always)]
fn hand_over(
    ctx: &XdpContext,
    key: &FlowKey,
    (backend_id, vip_id, kind): (u32, u32, u8),
    icmp_offset: usize,
) {
    if let Some(slot) = LB_NAT_JOB.get_ptr_mut(0) {
        // SAFETY: per-CPU slot: nothing else touches it during this run.
        let slot: &mut NatJob = unsafe { &mut *slot };
        slot.key = *key;
        slot.backend_id = backend_id;
        slot.vip_id = vip_id;
        slot.kind = kind;
        slot.l4_offset = icmp_offset as u16;
        // SAFETY: the context is the program's own.
        unsafe { LB_NAT_PROG.tail_call(ctx, NAT_PROG_ICMP) };
    }
}

/// The NAT ICMP program's work.
#[inline(always)]
pub fn run(ctx: &XdpContext) -> u32 {
    // Slot 0 of a per-CPU array always exists; the verifier needs the check.
    let (Some(job), Some(counters)) = (LB_NAT_JOB.get(0), LB_COUNTERS.get_ptr_mut(0)) else {
        return xdp_action::XDP_DROP;
    };
    // SAFETY: per-CPU slot: nothing else touches it during this run.
    let counters = unsafe { &mut *counters };
    let outcome = if job.kind == NAT_JOB_ICMP_FROM_WORKER {
        from_worker_job(ctx, job, counters)
    } else {
        to_worker_job(ctx, job, counters)
    };
    // The error's sender is a router or a host, not a client known here.
    capture::finish(ctx, &outcome, &job.key.src, 0)
}

/// What the error's headers become: `None` leaves a field as it is.
struct Rewrite {
    outer_src: Option<&'static [u8; 16]>,
    outer_dst: Option<&'static [u8; 16]>,
    /// The embedded packet's source.
    inner_src: Option<Endpoint>,
    /// The embedded packet's destination.
    inner_dst: Option<Endpoint>,
}

/// An error from the client's side about a reply of a NAT'd flow, to the
/// flow's worker.
#[inline(always)]
fn to_worker_job(ctx: &XdpContext, job: &NatJob, counters: &mut GlobalCounters) -> Outcome {
    let (vip_id, backend_id) = (job.vip_id, job.backend_id);
    let Some(backend) = LB_BACKENDS.get(backend_id) else {
        return Outcome::drop(reason::NO_BACKEND, vip_id, NO_ID);
    };
    if backend.flags & BACKEND_MAC_KNOWN == 0 {
        counters.drop_no_neighbour += 1;
        return Outcome::drop(reason::NO_NEIGHBOUR, vip_id, backend_id);
    }
    let worker = Endpoint {
        addr: &backend.addr,
        port: if backend.port != 0 {
            backend.port
        } else {
            job.key.dport
        },
    };
    let mut rewrite = Rewrite {
        outer_src: None,
        outer_dst: Some(&backend.addr),
        inner_src: Some(worker),
        inner_dst: None,
    };
    if backend.forward == FORWARD_FULLNAT {
        // SAFETY: the kernel keeps the element alive for this run.
        let flow = LB_FLOWS.get_ptr(&job.key).map(|flow| unsafe { &*flow });
        let source = flow
            .filter(|flow| flow.nat_source != NO_NAT_SOURCE)
            .and_then(|flow| {
                Some((
                    LB_NAT_SOURCES.get(u32::from(flow.nat_source))?,
                    flow.nat_port,
                ))
            });
        // A flow the table forgot has no port to translate to: the
        // kernel's to ignore.
        let Some((source, port)) = source else {
            return not_ours(counters);
        };
        rewrite.outer_src = Some(&source.addr);
        rewrite.inner_dst = Some(Endpoint {
            addr: &source.addr,
            port,
        });
    }
    let frame = XdpFrame::new(ctx);
    match rewrite_error(&frame, job, &rewrite) {
        Rewritten::Yes => {}
        Rewritten::TtlExpired => {
            counters.nat_ttl_expired += 1;
            return Outcome::drop(reason::TTL_EXPIRED, vip_id, backend_id);
        }
        Rewritten::TooShort => return Outcome::drop(reason::TOO_SHORT, vip_id, backend_id),
    }
    if !frame.readdress(Some(backend.mac)) {
        return Outcome::drop(reason::TOO_SHORT, vip_id, backend_id);
    }
    let action = transmit::depart(ctx, &frame, backend.egress);
    counters.icmp_errors_forwarded += 1;
    Outcome::forward(action, reason::ICMP_ERROR, vip_id, backend_id)
}

/// An error from the worker's side about a packet lb translated, back to
/// the client as if about the VIP.
#[inline(always)]
fn from_worker_job(
    ctx: &XdpContext,
    job: &'static NatJob,
    counters: &mut GlobalCounters,
) -> Outcome {
    let key = &job.key;
    let (rewrite, client, vip_id, backend_id) = if let Some(entry) = LB_NAT.get_ptr(key) {
        // SAFETY: the kernel keeps the element alive for this run.
        let entry = unsafe { &*entry };
        if entry.flags & NAT_DEAD != 0 {
            return not_ours(counters);
        }
        let client = &entry.client;
        let rewrite = Rewrite {
            outer_src: Some(&client.dst),
            outer_dst: Some(&client.src),
            inner_src: Some(Endpoint {
                addr: &client.src,
                port: client.sport,
            }),
            inner_dst: Some(Endpoint {
                addr: &client.dst,
                port: client.dport,
            }),
        };
        (rewrite, &client.src, entry.vip_id, entry.backend_id)
    } else {
        let worker = NatWorkerKey {
            addr: key.src,
            port: key.sport,
            proto: key.proto,
            family: key.family,
        };
        // SAFETY: the kernel keeps the element alive for this run.
        let Some(value) = (unsafe { LB_NAT_WORKERS.get(&worker) }) else {
            return not_ours(counters);
        };
        let rewrite = Rewrite {
            outer_src: Some(&value.vip),
            outer_dst: None,
            inner_src: None,
            inner_dst: Some(Endpoint {
                addr: &value.vip,
                port: value.vip_port,
            }),
        };
        (rewrite, &key.dst, value.vip_id, value.backend_id)
    };
    let Some(fib) = fib_scratch() else {
        return not_ours(counters);
    };
    let from = Endpoint {
        addr: rewrite.outer_src.unwrap_or(&key.src),
        port: 0,
    };
    let icmp = FlowKey {
        proto: if key.family == FAMILY_V6 { 58 } else { 1 },
        ..*key
    };
    fill_fib(ctx, fib, &icmp, &from, (client, 0));
    // SAFETY: the context is the program's own; the parameters lie in the
    // scratch slot, of the size passed.
    let route =
        unsafe { bpf_fib_lookup(ctx.ctx.cast(), fib, core::mem::size_of_val(fib) as i32, 0) };
    if route == i64::from(BPF_FIB_LKUP_RET_NOT_FWDED) {
        // About the host's own connection to the worker.
        return not_ours(counters);
    }
    let frame = XdpFrame::new(ctx);
    match rewrite_error(&frame, job, &rewrite) {
        Rewritten::Yes => {}
        Rewritten::TtlExpired => {
            counters.nat_ttl_expired += 1;
            return Outcome::drop(reason::TTL_EXPIRED, vip_id, backend_id);
        }
        Rewritten::TooShort => return Outcome::drop(reason::TOO_SHORT, vip_id, backend_id),
    }
    let action = (route == i64::from(BPF_FIB_LKUP_RET_SUCCESS))
        .then(|| transmit::leaves_by(ctx, fib.ifindex))
        .flatten();
    if let Some(action) = action.filter(|_| set_macs(&frame, fib)) {
        counters.icmp_errors_forwarded += 1;
        return Outcome::forward(action, reason::ICMP_ERROR, vip_id, backend_id);
    }
    counters.nat_replies_unrouted += 1;
    Outcome {
        xdp_action: xdp_action::XDP_PASS,
        action: ACTION_PASS,
        reason: reason::ICMP_ERROR,
        vip_id,
        worker_id: backend_id,
    }
}

/// An error about no NAT'd connection: the kernel's.
#[inline(always)]
fn not_ours(counters: &mut GlobalCounters) -> Outcome {
    counters.pass_not_vip += 1;
    Outcome::NOT_VIP
}

/// Rewrites an ICMP error's outer and embedded headers as `rewrite` says,
/// decrements the outer TTL or hop limit, and moves every checksum.
#[inline(always)]
fn rewrite_error(frame: &XdpFrame, job: &NatJob, rewrite: &Rewrite) -> Rewritten {
    let icmp_at = usize::from(job.l4_offset);
    if icmp_at > MAX_L4_OFFSET {
        return Rewritten::TooShort;
    }
    let v6 = job.key.family == FAMILY_V6;
    let Some(icmp_check) = frame.ptr_mut::<[u8; 2]>(icmp_at + 2) else {
        return Rewritten::TooShort;
    };
    // SAFETY: ptr_mut checked the range against data_end.
    let old_icmp_check = u16::from_be_bytes(unsafe { *icmp_check });
    let mut icmp_sum = Update::new(old_icmp_check);
    let inner = if v6 {
        rewrite_inner_v6(
            frame,
            icmp_at + ICMP_HLEN,
            job.key.proto,
            rewrite,
            &mut icmp_sum,
        )
    } else {
        rewrite_inner_v4(
            frame,
            icmp_at + ICMP_HLEN,
            job.key.proto,
            rewrite,
            &mut icmp_sum,
        )
    };
    if let Err(error) = inner {
        return error;
    }
    let outer = rewrite_outer(frame, v6, rewrite, &mut icmp_sum);
    if let Err(error) = outer {
        return error;
    }
    // SAFETY: as above.
    unsafe { *icmp_check = icmp_sum.finish().to_be_bytes() };
    Rewritten::Yes
}

/// The outer header: addresses, TTL or hop limit, the IPv4 checksum; for
/// ICMPv6 the addresses also move the ICMP checksum (its pseudo-header).
#[inline(always)]
fn rewrite_outer(
    frame: &XdpFrame,
    v6: bool,
    rewrite: &Rewrite,
    icmp_sum: &mut Update,
) -> Result<(), Rewritten> {
    if v6 {
        let header = frame
            .ptr_mut::<[u8; 40]>(ETH_HLEN)
            .ok_or(Rewritten::TooShort)?;
        // SAFETY: ptr_mut checked the 40 bytes against data_end.
        let header = unsafe { &mut *header };
        if header[7] <= 1 {
            return Err(Rewritten::TtlExpired);
        }
        header[7] -= 1;
        for (at, new) in [(8, rewrite.outer_src), (24, rewrite.outer_dst)] {
            if let Some(new) = new {
                let mut old = [0u8; 16];
                old.copy_from_slice(&header[at..at + 16]);
                icmp_sum.add(address_delta(&old, new, true));
                header[at..at + 16].copy_from_slice(new);
            }
        }
        return Ok(());
    }
    let header = frame
        .ptr_mut::<[u8; 20]>(ETH_HLEN)
        .ok_or(Rewritten::TooShort)?;
    // SAFETY: ptr_mut checked the 20 bytes against data_end.
    let header = unsafe { &mut *header };
    let ttl = header[8];
    if ttl <= 1 {
        return Err(Rewritten::TtlExpired);
    }
    let mut ip_sum = Update::new(u16::from_be_bytes([header[10], header[11]]));
    ip_sum.word(
        u16::from_be_bytes([ttl, header[9]]),
        u16::from_be_bytes([ttl - 1, header[9]]),
    );
    header[8] = ttl - 1;
    for (at, new) in [(12, rewrite.outer_src), (16, rewrite.outer_dst)] {
        if let Some(new) = new {
            let mut old = [0u8; 16];
            old[..4].copy_from_slice(&header[at..at + 4]);
            ip_sum.add(address_delta(&old, new, false));
            header[at..at + 4].copy_from_slice(&new[..4]);
        }
    }
    let check = ip_sum.finish().to_be_bytes();
    header[10] = check[0];
    header[11] = check[1];
    Ok(())
}

/// The embedded IPv4 packet at `at`: addresses, its header checksum, its
/// ports and (when quoted) its transport checksum; every changed word
/// moves the ICMP checksum too.
#[inline(always)]
fn rewrite_inner_v4(
    frame: &XdpFrame,
    at: usize,
    proto: u8,
    rewrite: &Rewrite,
    icmp_sum: &mut Update,
) -> Result<(), Rewritten> {
    let header = frame.ptr_mut::<[u8; 20]>(at).ok_or(Rewritten::TooShort)?;
    // SAFETY: ptr_mut checked the 20 bytes against data_end.
    let header = unsafe { &mut *header };
    let ihl = usize::from(header[0] & 0x0f) * 4;
    if ihl < 20 {
        return Err(Rewritten::TooShort);
    }
    let l4 = at + ihl;
    let ports = frame.ptr_mut::<[u8; 4]>(l4).ok_or(Rewritten::TooShort)?;
    let old_check = u16::from_be_bytes([header[10], header[11]]);
    let mut ip_sum = Update::new(old_check);
    let mut addresses = 0;
    for (at, new) in [(12, rewrite.inner_src), (16, rewrite.inner_dst)] {
        if let Some(new) = new {
            let mut old = [0u8; 16];
            old[..4].copy_from_slice(&header[at..at + 4]);
            addresses += address_delta(&old, new.addr, false);
            header[at..at + 4].copy_from_slice(&new.addr[..4]);
        }
    }
    ip_sum.add(addresses);
    icmp_sum.add(addresses);
    let new_check = ip_sum.finish();
    icmp_sum.word(old_check, new_check);
    let [hi, lo] = new_check.to_be_bytes();
    header[10] = hi;
    header[11] = lo;
    rewrite_inner_ports(frame, l4, ports, proto, addresses, rewrite, icmp_sum, false);
    Ok(())
}

/// The embedded IPv6 packet at `at` (no extension headers: the
/// classifier found its transport header right after): as for IPv4,
/// without a header checksum.
#[inline(always)]
fn rewrite_inner_v6(
    frame: &XdpFrame,
    at: usize,
    proto: u8,
    rewrite: &Rewrite,
    icmp_sum: &mut Update,
) -> Result<(), Rewritten> {
    let header = frame.ptr_mut::<[u8; 40]>(at).ok_or(Rewritten::TooShort)?;
    // SAFETY: ptr_mut checked the 40 bytes against data_end.
    let header = unsafe { &mut *header };
    let l4 = at + 40;
    let ports = frame.ptr_mut::<[u8; 4]>(l4).ok_or(Rewritten::TooShort)?;
    let mut addresses = 0;
    for (at, new) in [(8, rewrite.inner_src), (24, rewrite.inner_dst)] {
        if let Some(new) = new {
            let mut old = [0u8; 16];
            old.copy_from_slice(&header[at..at + 16]);
            addresses += address_delta(&old, new.addr, true);
            header[at..at + 16].copy_from_slice(new.addr);
        }
    }
    icmp_sum.add(addresses);
    rewrite_inner_ports(frame, l4, ports, proto, addresses, rewrite, icmp_sum, true);
    Ok(())
}

/// The embedded transport header at `l4`: its ports, and its checksum
/// when the error quotes it (a UDP checksum always, a TCP one when 18
/// bytes are quoted; a UDP datagram over IPv4 without one keeps none).
#[expect(
    clippy::too_many_arguments,
    reason = "one step of one rewrite, inlined"
)]
#[inline(always)]
fn rewrite_inner_ports(
    frame: &XdpFrame,
    l4: usize,
    ports: *mut [u8; 4],
    proto: u8,
    addresses: u32,
    rewrite: &Rewrite,
    icmp_sum: &mut Update,
    v6: bool,
) {
    // SAFETY: the caller's ptr_mut checked the 4 bytes against data_end.
    let ports = unsafe { &mut *ports };
    let old_sport = u16::from_be_bytes([ports[0], ports[1]]);
    let old_dport = u16::from_be_bytes([ports[2], ports[3]]);
    let new_sport = rewrite
        .inner_src
        .map_or(old_sport, |e| u16::from_be(e.port));
    let new_dport = rewrite
        .inner_dst
        .map_or(old_dport, |e| u16::from_be(e.port));
    icmp_sum.word(old_sport, new_sport);
    icmp_sum.word(old_dport, new_dport);
    *ports = {
        let (s, d) = (new_sport.to_be_bytes(), new_dport.to_be_bytes());
        [s[0], s[1], d[0], d[1]]
    };
    let is_tcp = proto == IPPROTO_TCP;
    let check_at = l4 + if is_tcp { 16 } else { 6 };
    let Some(check) = frame.ptr_mut::<[u8; 2]>(check_at) else {
        return;
    };
    // SAFETY: ptr_mut checked the 2 bytes against data_end.
    let check = unsafe { &mut *check };
    let old = u16::from_be_bytes(*check);
    if !is_tcp && !v6 && old == 0 {
        return;
    }
    let mut sum = Update::new(old);
    sum.add(addresses);
    sum.word(old_sport, new_sport);
    sum.word(old_dport, new_dport);
    let new = if is_tcp {
        sum.finish()
    } else {
        sum.finish_udp(old)
    };
    icmp_sum.word(old, new);
    *check = new.to_be_bytes();
}
