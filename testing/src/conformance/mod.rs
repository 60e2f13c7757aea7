//! Conformance of lb's data plane to its executable specification
//! (`lb-spec`): a case's configuration is installed the way the controller
//! installs one (plus the flow entries and sessions it asks for), the maps
//! are read back into the specification's [`lb_spec::Maps`], and each
//! frame runs through the real program (BPF_PROG_TEST_RUN) and through
//! the specification. The verdict, the frame that leaves and every map
//! the data plane writes must agree after every frame.

mod case;
mod snapshot;

use std::{net::IpAddr, time::Duration};

use anyhow::Context as _;
use lb_common::{
    balancer::{
        mask_prefix, FlowKey, FlowValue, IcmpBudget, StickyKey, StickyValue, ICMP_TOKEN_NS,
        LOAD_UNKNOWN,
    },
    nat::{hop_slot, NatClientHop, NatHop, NO_NAT_SOURCE},
    program_names::BALANCER,
};
use lb_spec::{Clock, Maps, Verdict};
use lb_userspace::{
    dataplane::maps::{ControlMaps, WorkerEntry},
    desired::{
        options::{Forward, Scheduler, VipOptions},
        state::{Desired, DEFAULT_WEIGHT},
    },
    service::{addr_bytes, addr_from_bytes, Vip},
};

pub use case::{
    case, Age, Budget, Case, FlowCase, FrameCase, Hop, Kind, Method, SessionCase, VipCase,
    WorkerCase,
};
use snapshot::{MapIds, EMPTY_SLOT, LOOPBACK};

use crate::{
    frames::{error_about, flow_key as flow_key_of, tcp, Fragment, Packet, Transport},
    testrun::{configure_nat, worker_mac, Loaded, TUNNEL_SOURCES},
};

/// The NAT sources of every case.
const NAT_SOURCES: [&str; 2] = ["192.0.2.2", "2001:db8::2"];

fn is_nat(method: Method) -> bool {
    matches!(method, Method::Nat | Method::Fullnat)
}

/// A NAT worker's port: its own, not the VIP's.
fn nat_port(vip: &Vip) -> u16 {
    if vip.key().proto == 6 {
        8080
    } else {
        5353
    }
}

/// The MACs of every cached next hop.
const HOP_MACS: [u8; 12] = [2, 0, 0, 0, 0, 0x77, 2, 0, 0, 0, 0, 0x66];
/// An interface lb is not on.
const FOREIGN_IFINDEX: u32 = 77;

const SECOND: u64 = 1_000_000_000;
/// How far the data plane's reading of the coarse clock may lag the one
/// taken before the run: its per-CPU cache is a tick old at most.
const COARSE_LAG: u64 = 50_000_000;

/// The installed case: the loaded program and its configuration.
struct Installed {
    lb: Loaded,
    ids: MapIds,
    _control: (Desired, ControlMaps),
    /// Each worker's id, numbered across the VIPs.
    workers: Vec<u32>,
}

fn vip_of(case: &Case, n: u8) -> (usize, &VipCase) {
    let index = usize::from(n) % case.vips.len();
    (index, &case.vips[index])
}

fn vip_addr(index: usize, v6: bool) -> IpAddr {
    let text = if v6 {
        format!("2001:db8::{}", 100 + index)
    } else {
        format!("192.0.2.{}", 100 + index)
    };
    text.parse().expect("an address")
}

fn vip_port(vip: &VipCase) -> u16 {
    if vip.udp {
        53
    } else {
        80
    }
}

fn service(index: usize, vip: &VipCase) -> Vip {
    let proto = if vip.udp { "udp" } else { "tcp" };
    let addr = match vip_addr(index, vip.v6) {
        IpAddr::V4(addr) => addr.to_string(),
        IpAddr::V6(addr) => format!("[{addr}]"),
    };
    format!("{addr}:{}/{proto}", vip_port(vip))
        .parse()
        .expect("a VIP")
}

fn client_addr(v6: bool, n: u8) -> IpAddr {
    let text = if v6 {
        format!("2001:db8:c0::{}", 10 + n)
    } else {
        format!("203.0.113.{}", 10 + n)
    };
    text.parse().expect("an address")
}

fn worker_addr(v6: bool, n: usize) -> IpAddr {
    let text = if v6 {
        format!("2001:db8:1::{}", 10 + n)
    } else {
        format!("198.51.100.{}", 10 + n)
    };
    text.parse().expect("an address")
}

fn options(vip: &VipCase) -> VipOptions {
    let forward = match vip.method {
        Method::Dsr => Forward::Dsr,
        Method::Ipip => Forward::Ipip,
        Method::Gue => Forward::Gue,
        Method::Nat => Forward::Nat,
        Method::Fullnat => Forward::Fullnat,
    };
    VipOptions {
        forward,
        scheduler: if vip.least_load {
            Scheduler::LeastLoad
        } else {
            Scheduler::Maglev
        },
        sticky: vip.sticky_s.map(|s| Duration::from_secs(s.into())),
        sticky_prefix: vip.wide_prefix.then_some(if vip.v6 { 64 } else { 24 }),
        idle_timeout: Some(Duration::from_secs(vip.idle_s.into())),
        table_size: Some(vip.table_size),
        ..VipOptions::default()
    }
}

/// Installs `case`'s VIPs and workers as the controller does.
fn install(case: &Case) -> anyhow::Result<Installed> {
    let mut lb = Loaded::lb(4096)?;
    let ids = MapIds::of(&lb)?;
    let mut control = ControlMaps::take(lb.ebpf_mut())?;
    let mut desired = Desired::new(case.hash_seed);
    control.write_config(case.hash_seed)?;
    let mut workers = Vec::new();
    let mut entries = Vec::new();
    for (index, vip_case) in case.vips.iter().enumerate() {
        let vip = service(index, vip_case);
        let options = options(vip_case);
        desired.add_vip(vip, options.clone())?;
        let mut addrs = Vec::new();
        for worker in &vip_case.workers {
            let v6 = if matches!(vip_case.method, Method::Dsr | Method::Nat | Method::Fullnat) {
                vip_case.v6
            } else {
                worker.v6
            };
            let addr = worker_addr(v6, workers.len());
            let id = desired.add_worker(&vip, addr, DEFAULT_WEIGHT)?;
            anyhow::ensure!(id < EMPTY_SLOT, "worker id {id} beyond those read back");
            let entry = WorkerEntry {
                addr,
                mac: worker.mac_known.then(|| worker_mac(id)),
                vip_id: desired.vip(&vip)?.id,
                state_flags: worker.state,
                generation: worker.generation,
                forward: options.forward.code(),
                gue_port: options.gue_port(),
                port: 0,
                mtu: worker.mtu,
                tunnel_source: Some(TUNNEL_SOURCES[usize::from(addr.is_ipv6())].parse()?),
                egress: 0,
            };
            control.write_backend(id, &entry)?;
            control.write_load(id, worker.load.unwrap_or(LOAD_UNKNOWN))?;
            entries.push((id, entry, is_nat(vip_case.method).then(|| nat_port(&vip))));
            workers.push(id);
            addrs.push((addr, id));
        }
        if let (Some((client, n)), false) = (vip_case.pin, addrs.is_empty()) {
            let (addr, id) = addrs[usize::from(n) % addrs.len()];
            let client = client_addr(vip_case.v6, client);
            desired.pin(&vip, client, addr)?;
            let state = desired.vip(&vip)?;
            let prefix = state.options.prefix_for(&vip);
            let key = StickyKey {
                client: mask_prefix(&addr_bytes(client).0, prefix),
                vip_id: state.id,
            };
            control.write_pin(key, id)?;
        }
        let state = desired.vip(&vip)?;
        control.install_vip(&vip, state, &state.members(|_| true), case.hash_seed)?;
    }
    control.commit().map_err(|(_, error)| error)?;
    let sources: Vec<IpAddr> = NAT_SOURCES
        .iter()
        .map(|s| s.parse())
        .collect::<Result<_, _>>()?;
    let high = if case.few_nat_ports { 20_003 } else { 20_999 };
    configure_nat(&desired, &mut control, nat_port, &sources, (20_000, high))?;
    // The NAT workers again, in the case's states (the NAT configuration
    // wrote them up, of generation 1), with their own port.
    for (id, mut entry, port) in entries {
        if let Some(port) = port {
            entry.port = port;
            entry.tunnel_source = None;
            control.write_backend(id, &entry)?;
        }
    }
    Ok(Installed {
        lb,
        ids,
        _control: (desired, control),
        workers,
    })
}

/// The worker id a flow or session names: a case's worker, an empty slot,
/// or one past the array.
fn worker_id(installed: &Installed, maps: &Maps, n: u8) -> u32 {
    let n = usize::from(n) % (installed.workers.len() + 2);
    match installed.workers.get(n) {
        Some(&id) => id,
        None if n == installed.workers.len() => EMPTY_SLOT,
        None => maps.max_backends + 5,
    }
}

/// How long ago, for a threshold of `limit_s` seconds.
fn age_ns(age: Age, limit_s: u32) -> u64 {
    let limit = u64::from(limit_s) * SECOND;
    match age {
        Age::Recent => SECOND * 3 / 10,
        Age::Seconds => SECOND * 3 / 2,
        Age::JustBefore => limit.saturating_sub(SECOND / 2),
        Age::JustAfter => limit + SECOND / 2,
        Age::Ancient => 3 * 86_400 * SECOND,
    }
}

/// Both clocks now.
pub fn clocks() -> Clock {
    let read = |id| {
        let mut time = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a valid clock id and a timespec to write.
        unsafe { libc::clock_gettime(id, &mut time) };
        time.tv_sec as u64 * SECOND + time.tv_nsec as u64
    };
    Clock {
        coarse: read(libc::CLOCK_MONOTONIC_COARSE),
        monotonic: read(libc::CLOCK_MONOTONIC),
    }
}

fn flow_key(case: &Case, vip: u8, client: u8, port: u16) -> FlowKey {
    let (index, vip_case) = vip_of(case, vip);
    let (src, family) = addr_bytes(client_addr(vip_case.v6, client));
    FlowKey {
        src,
        dst: addr_bytes(vip_addr(index, vip_case.v6)).0,
        sport: port.to_be(),
        dport: vip_port(vip_case).to_be(),
        proto: if vip_case.udp { 17 } else { 6 },
        family,
        pad: [0; 2],
    }
}

/// A `fullnat` VIP's flow entry names the family's first NAT source and
/// one of the four lowest ports (the NAT table may not have its entry:
/// then the flow is a lost one).
fn with_nat_source(value: FlowValue, vip: &VipCase, maps: &Maps, port: u16) -> FlowValue {
    if vip.method != Method::Fullnat {
        return value;
    }
    let config = &maps.nat_config;
    let slot = if vip.v6 {
        config.v6_slots[0]
    } else {
        config.v4_slots[0]
    };
    FlowValue {
        nat_source: slot,
        nat_port: (20_000 + port % 4).to_be(),
        ..value
    }
}

/// Writes the case's flow entries and sessions, timed back from `now`.
fn write_state(installed: &Installed, case: &Case, maps: &Maps, now: Clock) -> anyhow::Result<()> {
    let mut flows = Vec::new();
    for flow in &case.flows {
        let (index, vip_case) = vip_of(case, flow.vip);
        let key = flow_key(case, flow.vip, flow.client, flow.port);
        let info = maps.vips[&service(index, vip_case).key()];
        let seen = now.coarse.saturating_sub(age_ns(flow.age, vip_case.idle_s));
        let value = FlowValue {
            backend_id: worker_id(installed, maps, flow.worker),
            vip_id: info.id,
            created_ns: seen.saturating_sub(SECOND),
            last_seen_ns: seen,
            flags: u32::from(flow.closing),
            vip_tag: if flow.stale_vip {
                info.tag ^ 2
            } else {
                info.tag
            },
            backend_generation: flow.generation,
            nat_port: 0,
            nat_source: NO_NAT_SOURCE,
            pad: 0,
        };
        flows.push((key, with_nat_source(value, vip_case, maps, flow.port)));
    }
    installed.ids.write_flows(&flows)?;
    let mut sessions = Vec::new();
    for session in &case.sessions {
        let (index, vip_case) = vip_of(case, session.vip);
        let vip = service(index, vip_case);
        let info = maps.vips[&vip.key()];
        let client = addr_bytes(client_addr(vip_case.v6, session.client)).0;
        let key = StickyKey {
            client: mask_prefix(&client, info.sticky_prefix),
            vip_id: info.id,
        };
        let ttl = vip_case.sticky_s.unwrap_or(10);
        let value = StickyValue {
            backend_id: worker_id(installed, maps, session.worker),
            backend_generation: session.generation,
            last_ns: now.monotonic.saturating_sub(age_ns(session.age, ttl)),
        };
        sessions.push((key, value));
    }
    installed.ids.write_sessions(&sessions)
}

/// Worker `n` (modulo the VIP's workers) of VIP `index`, in the VIP's
/// family, numbered as [`install`] numbers them; one of no VIP when it
/// has none.
fn worker_of(case: &Case, index: usize, n: u8) -> IpAddr {
    let vip_case = &case.vips[index];
    let first: usize = case.vips[..index].iter().map(|v| v.workers.len()).sum();
    let n = match vip_case.workers.len() {
        0 => 30,
        count => first + usize::from(n) % count,
    };
    worker_addr(vip_case.v6, n)
}

/// Key `n` (modulo their number) of those whose flow, as the client sent
/// it (`flow`), is to `vip`, in the keys' order: the choice depends on the
/// case alone, not on a hash map's order.
fn pick<'a, V: 'a>(
    entries: impl Iterator<Item = (&'a FlowKey, &'a V)>,
    flow: impl Fn(&FlowKey, &V) -> FlowKey,
    vip: &Vip,
    n: u16,
) -> Option<FlowKey> {
    let (addr, _) = addr_bytes(vip.addr);
    let port = vip.port.to_be();
    let mut keys: Vec<FlowKey> = entries
        .filter(|&(key, value)| {
            let flow = flow(key, value);
            flow.dst == addr && flow.dport == port
        })
        .map(|(key, _)| *key)
        .collect();
    keys.sort_by_key(|key| (key.src, key.sport, key.dst, key.dport, key.proto));
    keys.get(usize::from(n) % keys.len().max(1)).copied()
}

/// One of `vip`'s connections in the NAT table (by its reply tuple),
/// chosen by `n`.
fn connection(spec: &Maps, vip: &Vip, n: u16) -> Option<FlowKey> {
    pick(spec.nat.iter(), |_, entry| entry.client, vip, n)
}

/// The client and port of one of `vip`'s flows in the flow table, chosen
/// by `n`.
fn recorded_client(spec: &Maps, vip: &Vip, n: u16) -> Option<(IpAddr, u16)> {
    let key = pick(spec.flows.iter(), |key, _| *key, vip, n)?;
    Some((addr_of(key.src, key.family), u16::from_be(key.sport)))
}

fn addr_of(bytes: [u8; 16], family: u8) -> IpAddr {
    addr_from_bytes(bytes, family).expect("a family the maps know")
}

/// A worker's reply ([`Kind::Reply`]) with TCP flags `flags`.
fn reply_packet(case: &Case, frame: &FrameCase, flags: u8, spec: &Maps) -> Packet {
    let (index, vip_case) = vip_of(case, frame.vip);
    let vip = service(index, vip_case);
    let fullnat = vip_case.method == Method::Fullnat;
    let known = fullnat
        .then(|| connection(spec, &vip, frame.port))
        .flatten();
    let (src, sport, dst, dport) = match known {
        Some(key) => (
            addr_of(key.src, key.family),
            u16::from_be(key.sport),
            addr_of(key.dst, key.family),
            u16::from_be(key.dport),
        ),
        None => {
            let worker = worker_of(case, index, frame.client);
            let sport = if is_nat(vip_case.method) {
                nat_port(&vip)
            } else {
                vip_port(vip_case)
            };
            if fullnat {
                let source = NAT_SOURCES[usize::from(vip_case.v6)]
                    .parse()
                    .expect("an address");
                (worker, sport, source, 20_000 + frame.port % 4)
            } else {
                let client = client_addr(vip_case.v6, frame.client);
                (worker, sport, client, frame.port)
            }
        }
    };
    if vip_case.udp {
        Packet::udp(src, sport, dst, dport)
    } else {
        Packet::tcp(src, sport, dst, dport, flags)
    }
}

/// Caches a reply's client's next hop as `hop` says, in the connection's
/// NAT entry (if it has one) and in the `nat` cache, in lb's maps and the
/// specification's.
fn cache_hop(
    installed: &Installed,
    spec: &mut Maps,
    key: &FlowKey,
    hop: Hop,
) -> anyhow::Result<()> {
    let now = clocks().coarse;
    let value = NatHop {
        macs: HOP_MACS,
        ifindex: if hop == Hop::Elsewhere {
            FOREIGN_IFINDEX
        } else {
            LOOPBACK
        },
        found_ns: if hop == Hop::Stale {
            now.saturating_sub(5 * SECOND)
        } else {
            now
        },
    };
    if let Some(entry) = spec.nat.get_mut(key) {
        entry.hop = value;
        installed.ids.write_connection_hop(key, value)?;
    }
    let cached = NatClientHop {
        client: key.dst,
        hop: value,
    };
    let slot = hop_slot(&key.dst);
    installed.ids.write_client_hop(slot, cached)?;
    spec.nat_hops.insert(slot, cached);
    Ok(())
}

/// The bytes of a case's frame, built from `packet` ([`packet_of`]).
fn frame_bytes(mut packet: Packet, frame: &FrameCase) -> Vec<u8> {
    let mut bytes = packet.build();
    if let Kind::Padded(n) = frame.kind {
        packet.pad_to = bytes.len() + usize::from(n);
        bytes = packet.build();
    }
    mutate(bytes, frame)
}

/// A case's frame before padding and the fuzzer's mutations (a reply's
/// and a `fullnat` error's chosen among the connections in `spec`).
fn packet_of(case: &Case, frame: &FrameCase, spec: &Maps) -> Packet {
    let (index, vip_case) = vip_of(case, frame.vip);
    let vip = vip_addr(index, vip_case.v6);
    let client = client_addr(vip_case.v6, frame.client);
    let port = vip_port(vip_case);
    let segment = |dport: u16, flags: u8| {
        if vip_case.udp {
            Packet::udp(client, frame.port, vip, dport)
        } else {
            Packet::tcp(client, frame.port, vip, dport, flags)
        }
    };
    let mut packet = match frame.kind {
        Kind::Segment(flags) | Kind::Options(flags) => segment(port, flags),
        Kind::Fragment(_) | Kind::Padded(_) => segment(port, tcp::ACK),
        Kind::OtherPort(n) => segment(1000 + u16::from(n), tcp::ACK),
        Kind::Echo => {
            let kind = if vip_case.v6 { 128 } else { 8 };
            let rest = [0, 7, 0, 1];
            Packet::new(
                client,
                vip,
                Transport::Icmp {
                    kind,
                    code: 0,
                    rest,
                },
            )
        }
        Kind::Reply(flags, _) => reply_packet(case, frame, flags, spec),
        Kind::Error => {
            // A `fullnat` flow's error needs the flow's entry: about one
            // the table has, when it has some.
            let (client, client_port) = (vip_case.method == Method::Fullnat)
                .then(|| recorded_client(spec, &service(index, vip_case), frame.port))
                .flatten()
                .unwrap_or((client, frame.port));
            let sent = if vip_case.udp {
                Packet::udp(vip, port, client, client_port)
            } else {
                Packet::tcp(vip, port, client, client_port, tcp::ACK)
            };
            error_about(worker_addr(vip_case.v6, 99), &sent)
        }
    };
    if !matches!(frame.kind, Kind::Error) {
        packet.payload = vec![0x61; usize::from(frame.payload)];
    }
    match frame.kind {
        Kind::Options(n) if vip_case.v6 => packet.ipv6_hop_by_hop = n > 0,
        Kind::Options(n) => packet.ipv4_options = vec![1; 4 * usize::from(n)],
        Kind::Fragment(offset) => {
            packet.fragment = Some(Fragment { offset, more: true });
        }
        _ => {}
    }
    packet
}

/// The frame with its mutations: bytes flipped, then cut (never below an
/// Ethernet header, which BPF_PROG_TEST_RUN requires).
fn mutate(mut bytes: Vec<u8>, frame: &FrameCase) -> Vec<u8> {
    let len = bytes.len();
    for &(at, mask) in &frame.flips {
        bytes[usize::from(at) % len] ^= mask;
    }
    if let Some(cut) = frame.cut {
        bytes.truncate(14 + usize::from(cut) % (len - 13));
    }
    bytes
}

/// Runs `case` through lb and the specification; the first disagreement,
/// described.
pub fn check(case: &Case) -> Result<(), String> {
    run(case).map_err(|error| format!("{error:#}"))
}

fn run(case: &Case) -> anyhow::Result<()> {
    let installed = install(case).context("installing the case")?;
    let configured = installed.ids.read()?;
    write_state(&installed, case, &configured, clocks())?;
    let mut spec = installed.ids.read()?;
    for (n, frame) in case.frames.iter().enumerate() {
        let packet = packet_of(case, frame, &spec);
        if let Kind::Reply(_, hop) = frame.kind {
            cache_hop(&installed, &mut spec, &flow_key_of(&packet), hop)?;
        }
        let bytes = frame_bytes(packet, frame);
        let before = clocks();
        let budget = budget_of(frame.budget, before.coarse);
        installed.ids.write_budget(budget)?;
        spec.icmp_budget = budget;
        let (verdict, out) = installed.lb.run_frame(BALANCER, &bytes)?;
        let after = clocks();
        let mut real = installed.ids.read()?;
        real.icmp_budget = installed.ids.read_budget(budget)?;
        // A run that took a token's time with a budget refilled just now:
        // whether lb earned a token depends on when it read the clock.
        let unknowable = frame.budget != Budget::Refills
            && after.coarse.saturating_sub(budget.refilled_ns) >= ICMP_TOKEN_NS;
        let effect = if unknowable {
            None
        } else {
            lb_spec::step(&mut spec, &bytes, before)
        };
        let Some(effect) = effect else {
            // That, or a path the specification leaves out (an ICMP error
            // about a flow recorded on a NAT worker, say: VERIFICATION.md
            // lists them): lb's effects stand, and the check goes on from
            // them.
            spec = real;
            continue;
        };
        let context = || format!("frame {n} ({frame:?}): {}", hex(&bytes));
        // What a dropped frame's bytes became is seen by nobody.
        let dropped = verdict == Verdict::Drop.code();
        anyhow::ensure!(
            verdict == effect.verdict.code() && (dropped || out == effect.frame),
            "{}\nverdict {verdict}, specified {} ({:?})\nleft      {}\nspecified {}",
            context(),
            effect.verdict.code(),
            effect.verdict,
            hex(&out),
            hex(&effect.frame)
        );
        adopt_times(&mut spec, &real, before, after);
        real.vips.clear();
        compare(&spec, &real).with_context(context)?;
    }
    Ok(())
}

/// The budget `budget` asks for, `now` being the coarse clock.
fn budget_of(budget: Budget, now: u64) -> IcmpBudget {
    let (tokens, refilled_ns) = match budget {
        Budget::Refills => (0, 0),
        Budget::Left(tokens) => (u64::from(tokens), now),
        Budget::Spent => (0, now),
    };
    IcmpBudget {
        tokens,
        refilled_ns,
    }
}

/// Takes the data plane's readings of the clock where the specification
/// wrote "now" and the reading lies between the clocks read before and
/// after the run.
fn adopt_times(spec: &mut Maps, real: &Maps, before: Clock, after: Clock) {
    let coarse = |ours: &mut u64, theirs: u64| {
        let window = before.coarse.saturating_sub(COARSE_LAG)..=after.coarse;
        if *ours == before.coarse && window.contains(&theirs) {
            *ours = theirs;
        }
    };
    for (key, value) in &mut spec.flows {
        if let Some(theirs) = real.flows.get(key) {
            coarse(&mut value.created_ns, theirs.created_ns);
            coarse(&mut value.last_seen_ns, theirs.last_seen_ns);
        }
    }
    for (key, value) in &mut spec.nat {
        if let Some(theirs) = real.nat.get(key) {
            coarse(&mut value.created_ns, theirs.created_ns);
            coarse(&mut value.last_seen_ns, theirs.last_seen_ns);
        }
    }
    coarse(
        &mut spec.icmp_budget.refilled_ns,
        real.icmp_budget.refilled_ns,
    );
    for (key, value) in &mut spec.sessions {
        if let Some(theirs) = real.sessions.get(key) {
            let window = before.monotonic..=after.monotonic;
            if value.last_ns == before.monotonic && window.contains(&theirs.last_ns) {
                value.last_ns = theirs.last_ns;
            }
        }
    }
}

fn compare(spec: &Maps, real: &Maps) -> anyhow::Result<()> {
    anyhow::ensure!(
        spec.counters == real.counters,
        "counters\nlb        {:?}\nspecified {:?}",
        real.counters,
        spec.counters
    );
    anyhow::ensure!(
        spec.flows == real.flows,
        "flow table\nlb        {:?}\nspecified {:?}",
        real.flows,
        spec.flows
    );
    anyhow::ensure!(
        spec.nat == real.nat,
        "NAT table\nlb        {:?}\nspecified {:?}",
        real.nat,
        spec.nat
    );
    anyhow::ensure!(
        spec.icmp_budget == real.icmp_budget,
        "\"too big\" budget\nlb        {:?}\nspecified {:?}",
        real.icmp_budget,
        spec.icmp_budget
    );
    anyhow::ensure!(
        spec.sessions == real.sessions,
        "sessions\nlb        {:?}\nspecified {:?}",
        real.sessions,
        spec.sessions
    );
    anyhow::ensure!(
        (&spec.vip_stats, &spec.backend_stats) == (&real.vip_stats, &real.backend_stats),
        "VIP and worker statistics\nlb        {:?} {:?}\nspecified {:?} {:?}",
        real.vip_stats,
        real.backend_stats,
        spec.vip_stats,
        spec.backend_stats
    );
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
