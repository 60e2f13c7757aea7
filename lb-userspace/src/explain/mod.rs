//! `lb explain`: what the data plane would do with a client's next packet
//! to a VIP, and why. It reads the pinned maps and takes the data plane's
//! steps in the data plane's order (flow table, pin, sticky session,
//! Maglev, least-load, the worker's MAC) with the decisions both share
//! (`lb_common::decide`), so it works without a controller and names the
//! worker the data plane would. It changes nothing: the data plane
//! refreshes sessions and records flows as it goes, an explanation does
//! not.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    path::Path,
};

use anyhow::Context as _;
use aya::maps::{Array, HashMap, MapData, MapError};
use lb_common::{
    balancer::{
        mask_prefix, Backend, Config, FlowKey, FlowValue, StickyKey, StickyValue, VipInfo, VipKey,
        VipTag, BACKEND_MAC_KNOWN, BACKEND_VALID, FLOW_CLOSING, LOAD_SCALE, LOAD_UNKNOWN,
        NO_BACKEND, SCHED_LEAST_LOAD, VIP_HAS_PINS, VIP_STICKY,
    },
    decide, map_names,
};
use serde::Serialize;

use crate::{
    activity,
    cli::{ExplainArgs, OutputFormat},
    maps,
    service::{self, Protocol, Vip},
    stats, table,
};

/// Why `lb explain` can't answer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExplainError {
    /// The VIP did not parse.
    #[error(transparent)]
    Vip(#[from] service::ParseError),
    /// `--proto` says otherwise than the VIP's /tcp or /udp.
    #[error("{vip} is {vip_proto}, but --proto says {flag}")]
    ProtoDisagrees {
        /// The VIP as given.
        vip: String,
        /// Its protocol.
        vip_proto: &'static str,
        /// What --proto said.
        flag: &'static str,
    },
    /// The client is neither ADDRESS nor ADDRESS:PORT.
    #[error("`{0}` is not a client ADDRESS or ADDRESS:PORT (IPv6 as [ADDRESS]:PORT)")]
    BadClient(String),
    /// Client port 0.
    #[error("port 0 in `{0}`: a client port is 1 to 65535 (leave it out for a new connection)")]
    ClientPortZero(String),
    /// A client of the other family: it can't reach the VIP.
    #[error("client {client} is {client_family}, but VIP {vip} is {vip_family}")]
    WrongFamily {
        /// The client.
        client: IpAddr,
        /// The VIP.
        vip: Vip,
        /// The client's family.
        client_family: &'static str,
        /// The VIP's family.
        vip_family: &'static str,
    },
    /// The data plane has no such VIP.
    #[error("no VIP {0} in this instance (see `lb vip list`)")]
    UnknownVip(Vip),
}

/// Prints the explanation of `args` from the maps pinned under `pin_dir`.
pub fn explain(args: &ExplainArgs, pin_dir: &Path) -> anyhow::Result<()> {
    let vip = parse_vip(&args.vip, args.proto)?;
    let (client, port) = parse_client(&args.client)?;
    check_family(client, &vip)?;
    let explanation = gather(pin_dir, vip, client, port)?.explain();
    match args.pinned.output {
        OutputFormat::Json => println!("{}", serde_json::to_string(&explanation)?),
        OutputFormat::Table => print!("{}", render(&explanation)),
    }
    Ok(())
}

/// A VIP as `ADDRESS:PORT/PROTO`, or `ADDRESS:PORT` with `--proto`
/// (default tcp).
pub fn parse_vip(text: &str, proto: Option<Protocol>) -> Result<Vip, ExplainError> {
    if !text.contains('/') {
        let proto = proto.unwrap_or(Protocol::Tcp).word();
        return Ok(format!("{text}/{proto}").parse()?);
    }
    let vip: Vip = text.parse()?;
    match proto {
        Some(flag) if flag != vip.proto => Err(ExplainError::ProtoDisagrees {
            vip: text.to_owned(),
            vip_proto: vip.proto.word(),
            flag: flag.word(),
        }),
        _ => Ok(vip),
    }
}

/// A client as `ADDRESS` or `ADDRESS:PORT` (`[ADDRESS]:PORT` or
/// `[ADDRESS]` for IPv6).
pub fn parse_client(text: &str) -> Result<(IpAddr, Option<u16>), ExplainError> {
    if let Ok(socket) = text.parse::<SocketAddr>() {
        if socket.port() == 0 {
            return Err(ExplainError::ClientPortZero(text.to_owned()));
        }
        return Ok((socket.ip(), Some(socket.port())));
    }
    let bare = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    bare.parse()
        .map(|addr| (addr, None))
        .map_err(|_| ExplainError::BadClient(text.to_owned()))
}

fn check_family(client: IpAddr, vip: &Vip) -> Result<(), ExplainError> {
    if client.is_ipv4() == vip.addr.is_ipv4() {
        return Ok(());
    }
    Err(ExplainError::WrongFamily {
        client,
        vip: *vip,
        client_family: service::family_word(client),
        vip_family: service::family_word(vip.addr),
    })
}

/// A flow table entry, with what `LB_VIP_TAGS` holds at its VIP id.
#[derive(Clone, Copy, Debug)]
struct Recorded {
    value: FlowValue,
    /// `None` when the id is past the end of the map.
    tag: Option<VipTag>,
}

/// What the data plane holds about one VIP and one client, read at one
/// moment.
#[derive(Debug)]
struct View {
    vip: Vip,
    info: VipInfo,
    idle_timeout_s: u32,
    seed: u32,
    /// The worker slots, by id.
    backends: Vec<Backend>,
    /// The load figures, by worker id.
    loads: Vec<u32>,
    /// The VIP's Maglev table.
    table: Vec<u32>,
    client: IpAddr,
    /// The flow, when the client's port is known.
    key: Option<FlowKey>,
    flow: Option<Recorded>,
    /// The client's pin (when the VIP has pins).
    pin: Option<u32>,
    /// The client's sticky session (when the VIP is sticky).
    session: Option<StickyValue>,
    /// CLOCK_MONOTONIC, ns.
    now_ns: u64,
}

/// A map lookup's value; `None` when the key is absent.
fn found<T>(result: Result<T, MapError>) -> Result<Option<T>, MapError> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(MapError::KeyNotFound) => Ok(None),
        Err(error) => Err(error),
    }
}

fn open(pin_dir: &Path, name: &str) -> anyhow::Result<aya::maps::Map> {
    maps::open_pinned(pin_dir, name).with_context(|| stats::no_instance(pin_dir))
}

/// Reads what the data plane would consult for `client` (and `port`).
fn gather(pin_dir: &Path, vip: Vip, client: IpAddr, port: Option<u16>) -> anyhow::Result<View> {
    let vips: HashMap<MapData, VipKey, VipInfo> = open(pin_dir, map_names::VIPS)?.try_into()?;
    let info = found(vips.get(&vip.key(), 0))?.ok_or(ExplainError::UnknownVip(vip))?;
    let tags: Array<MapData, VipTag> = open(pin_dir, map_names::VIP_TAGS)?.try_into()?;
    let config: Array<MapData, Config> = open(pin_dir, map_names::CONFIG)?.try_into()?;
    let backends: Array<MapData, Backend> = open(pin_dir, map_names::BACKENDS)?.try_into()?;
    let loads: Array<MapData, u32> = open(pin_dir, map_names::LOAD)?.try_into()?;
    let key = port.map(|port| flow_key(&vip, client, port));
    let flow = match &key {
        Some(key) => read_flow(pin_dir, key, &tags)?,
        None => None,
    };
    let client_key = StickyKey {
        client: mask_prefix(&service::addr_bytes(client).0, info.sticky_prefix),
        vip_id: info.id,
    };
    let pin = if info.flags & VIP_HAS_PINS != 0 {
        let pins: HashMap<MapData, StickyKey, u32> = open(pin_dir, map_names::PINS)?.try_into()?;
        found(pins.get(&client_key, 0))?
    } else {
        None
    };
    let session = if info.flags & VIP_STICKY != 0 {
        let sticky: HashMap<MapData, StickyKey, StickyValue> =
            open(pin_dir, map_names::STICKY)?.try_into()?;
        found(sticky.get(&client_key, 0))?
    } else {
        None
    };
    Ok(View {
        vip,
        info,
        idle_timeout_s: tags.get(&info.id, 0)?.idle_timeout_s,
        seed: config.get(&0, 0)?.hash_seed,
        backends: backends.iter().collect::<Result<_, _>>()?,
        loads: loads.iter().collect::<Result<_, _>>()?,
        table: maps::pinned_maglev_table(pin_dir, info.id)
            .context("reading the VIP's Maglev table")?,
        client,
        key,
        flow,
        pin,
        session,
        now_ns: activity::monotonic_ns(),
    })
}

fn read_flow(
    pin_dir: &Path,
    key: &FlowKey,
    tags: &Array<MapData, VipTag>,
) -> anyhow::Result<Option<Recorded>> {
    let flows: HashMap<MapData, FlowKey, FlowValue> =
        open(pin_dir, map_names::FLOWS)?.try_into()?;
    let Some(value) = found(flows.get(key, 0))? else {
        return Ok(None);
    };
    let tag = match tags.get(&value.vip_id, 0) {
        Ok(tag) => Some(tag),
        Err(MapError::OutOfBounds { .. }) => None,
        Err(error) => return Err(error.into()),
    };
    Ok(Some(Recorded { value, tag }))
}

/// The data plane's key of the flow from `client`:`port` to `vip`.
fn flow_key(vip: &Vip, client: IpAddr, port: u16) -> FlowKey {
    let vip_key = vip.key();
    FlowKey {
        src: service::addr_bytes(client).0,
        dst: vip_key.addr,
        sport: port.to_be(),
        dport: vip_key.port,
        proto: vip_key.proto,
        family: vip_key.family,
        pad: [0; 2],
    }
}

/// What `lb explain` prints.
#[derive(Debug, Serialize)]
pub struct Explanation {
    /// The VIP.
    vip: Vip,
    /// The client's address.
    client: IpAddr,
    /// Its port; `None`: a new connection from any port.
    client_port: Option<u16>,
    /// The VIP's settings in the data plane.
    settings: Settings,
    /// The flow's entry in the flow table (with a port, if there is one).
    flow: Option<FlowReport>,
    /// The client's pin, if it has one.
    pin: Option<PinReport>,
    /// The client's sticky session, if it has one.
    session: Option<SessionReport>,
    /// What the scheduler picks for a new flow.
    schedule: ScheduleReport,
    /// The VIP's workers (and any other a flow, pin or session names).
    workers: Vec<WorkerReport>,
    /// What happens to the next packet.
    verdict: Verdict,
    /// For TCP with a port whose flow is followed: what a SYN from that
    /// port would get (a SYN always opens a new connection).
    syn: Option<Verdict>,
}

/// A VIP's settings as the data plane has them.
#[derive(Debug, Serialize)]
struct Settings {
    id: u32,
    scheduler: &'static str,
    table_size: u32,
    idle_timeout_secs: u32,
    /// `None`: not sticky.
    sticky_ttl_secs: Option<u32>,
    /// The client prefix that sessions and pins are keyed by.
    sticky_prefix: u8,
    has_pins: bool,
    hash_seed: u32,
}

/// A flow table entry.
#[derive(Debug, Serialize)]
struct FlowReport {
    worker: String,
    age_secs: f64,
    idle_secs: f64,
    /// A FIN or RST was seen.
    closing: bool,
    /// Whether the data plane follows it.
    followed: bool,
    /// Why not, if it doesn't.
    why_not: Option<String>,
}

/// A pin.
#[derive(Debug, Serialize)]
struct PinReport {
    /// The client prefix pinned.
    client: String,
    worker: String,
    /// Whether it decides a new flow.
    applies: bool,
    why_not: Option<String>,
}

/// A sticky session.
#[derive(Debug, Serialize)]
struct SessionReport {
    /// The client prefix.
    client: String,
    worker: String,
    /// Since the client's last new connection.
    idle_secs: f64,
    ttl_secs: u32,
    /// Whether it decides a new flow.
    applies: bool,
    why_not: Option<String>,
}

/// The scheduler's picks.
#[derive(Debug, Serialize)]
struct ScheduleReport {
    scheduler: &'static str,
    /// Without a port the slot is unknown: see the workers' shares.
    depends_on_port: bool,
    /// Maglev's pick (least-load's first candidate).
    first: Option<Pick>,
    /// Least-load's second candidate.
    second: Option<Pick>,
}

/// One slot of the Maglev table.
#[derive(Debug, Serialize)]
struct Pick {
    hash: u32,
    slot: u32,
    /// `None`: the slot is empty (or past the table).
    worker: Option<String>,
    /// The worker's load figure (0-1); `None`: unknown.
    load: Option<f64>,
}

/// A worker.
#[derive(Debug, Serialize)]
struct WorkerReport {
    worker: String,
    id: u32,
    /// up, down, unreachable, draining, removed, or other-vip.
    state: &'static str,
    mac_known: bool,
    takes_new_flows: bool,
    load: Option<f64>,
    /// Its slots in the VIP's Maglev table.
    slots: u32,
    /// Its share of new flows that the scheduler decides (by slots).
    share: f64,
}

/// What happens to the packet.
#[derive(Clone, Debug, PartialEq, Serialize)]
struct Verdict {
    action: Action,
    /// The worker chosen, also when it is dropped for want of its MAC.
    worker: Option<String>,
    reason: String,
}

/// `Verdict::action`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Action {
    /// Sent to the worker.
    Forward,
    /// Dropped.
    Drop,
    /// The client's port decides (no port was given).
    DependsOnPort,
}

/// How a new flow's worker was chosen.
#[derive(Debug, PartialEq)]
enum Choice {
    /// This worker, for this reason.
    Worker(u32, String),
    /// No worker: dropped.
    NoWorker,
    /// The client's port decides.
    Undecided(String),
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

fn load_fraction(load: u32) -> Option<f64> {
    (load != LOAD_UNKNOWN).then(|| f64::from(load) / f64::from(LOAD_SCALE))
}

impl View {
    fn explain(&self) -> Explanation {
        let new_flow = self.verdict(self.choose());
        let flow = self.flow.map(|recorded| self.flow_report(&recorded));
        let followed = self.flow.and_then(|recorded| self.follow(&recorded).ok());
        let (verdict, syn) = match followed {
            Some(id) => {
                let established = self.verdict(Choice::Worker(id, "established flow".into()));
                let is_tcp = self.vip.proto == Protocol::Tcp;
                (established, is_tcp.then_some(new_flow))
            }
            None => (new_flow, None),
        };
        Explanation {
            vip: self.vip,
            client: self.client,
            client_port: self.key.map(|k| u16::from_be(k.sport)),
            settings: self.settings(),
            flow,
            pin: self.pin.map(|id| self.pin_report(id)),
            session: self.session.map(|s| self.session_report(&s)),
            schedule: self.schedule_report(),
            workers: self.worker_reports(),
            verdict,
            syn,
        }
    }

    fn settings(&self) -> Settings {
        let info = &self.info;
        Settings {
            id: info.id,
            scheduler: self.scheduler_word(),
            table_size: info.table_size,
            idle_timeout_secs: self.idle_timeout_s,
            sticky_ttl_secs: (info.flags & VIP_STICKY != 0).then_some(info.sticky_ttl_s),
            sticky_prefix: info.sticky_prefix,
            has_pins: info.flags & VIP_HAS_PINS != 0,
            hash_seed: self.seed,
        }
    }

    fn scheduler_word(&self) -> &'static str {
        if self.info.scheduler == SCHED_LEAST_LOAD {
            "least-load"
        } else {
            "maglev"
        }
    }

    fn backend(&self, id: u32) -> Option<&Backend> {
        self.backends.get(id as usize)
    }

    /// Worker `id`'s address, or `#id` for a slot without one.
    fn name(&self, id: u32) -> String {
        self.backend(id)
            .filter(|b| b.flags & BACKEND_VALID != 0)
            .and_then(|b| service::addr_from_bytes(b.addr, b.family))
            .map_or_else(|| format!("#{id}"), |addr| addr.to_string())
    }

    fn load(&self, id: u32) -> u32 {
        self.loads.get(id as usize).copied().unwrap_or(LOAD_UNKNOWN)
    }

    /// The data plane's `usable`: worker `id`'s generation if it takes new
    /// flows of this VIP.
    fn usable(&self, id: u32) -> Option<u32> {
        let backend = self.backend(id)?;
        backend
            .takes_new_flows(self.info.id)
            .then_some(backend.generation)
    }

    /// Why worker `id` (recorded with `generation`) can't have a flow of
    /// VIP `vip_id`, for one the data plane refused.
    fn unusable(&self, id: u32, vip_id: u32, generation: Option<u32>) -> String {
        let name = self.name(id);
        let Some(backend) = self.backend(id) else {
            return format!("worker slot #{id} does not exist");
        };
        let flags = backend.flags;
        if flags & BACKEND_VALID == 0 {
            format!("worker {name} was removed")
        } else if backend.vip_id != vip_id {
            format!("worker slot #{id} now serves another VIP")
        } else if generation.is_some_and(|g| g != backend.generation) {
            format!("worker slot #{id} now holds another worker ({name})")
        } else {
            match maps::state_word(flags) {
                "up" => format!("worker {name} can't take it"),
                state => format!("worker {name} is {state}"),
            }
        }
    }

    /// The data plane's `flow::established`: the recorded worker, or why
    /// the packet is scheduled afresh.
    fn follow(&self, recorded: &Recorded) -> Result<u32, String> {
        let value = &recorded.value;
        let Some(tag) = recorded.tag else {
            return Err(format!("its VIP id {} is past the map", value.vip_id));
        };
        if tag.tag != value.vip_tag {
            return Err("its VIP was removed or replaced since".into());
        }
        if decide::flow_expired(self.now_ns, value.last_seen_ns, tag.idle_timeout_s) {
            return Err(format!(
                "idle for {:.1}s, past the VIP's idle timeout of {}s",
                secs(self.now_ns.saturating_sub(value.last_seen_ns)),
                tag.idle_timeout_s
            ));
        }
        let id = value.backend_id;
        let keeps = self
            .backend(id)
            .is_some_and(|b| b.keeps_flows(value.vip_id, value.backend_generation));
        if !keeps {
            return Err(self.unusable(id, value.vip_id, Some(value.backend_generation)));
        }
        Ok(id)
    }

    fn flow_report(&self, recorded: &Recorded) -> FlowReport {
        let value = &recorded.value;
        let followed = self.follow(recorded);
        FlowReport {
            worker: self.name(value.backend_id),
            age_secs: secs(self.now_ns.saturating_sub(value.created_ns)),
            idle_secs: secs(self.now_ns.saturating_sub(value.last_seen_ns)),
            closing: value.flags & FLOW_CLOSING != 0,
            followed: followed.is_ok(),
            why_not: followed.err(),
        }
    }

    fn client_prefix(&self) -> String {
        let prefix = self.info.sticky_prefix;
        format!("{}/{prefix}", service::mask_addr(self.client, prefix))
    }

    /// The pin, if it decides.
    fn pinned(&self) -> Option<u32> {
        self.pin.filter(|&id| self.usable(id).is_some())
    }

    /// The session's worker, if it decides (and no pin does).
    fn sticky(&self) -> Option<u32> {
        let session = self.session?;
        let fresh = decide::session_fresh(self.now_ns, session.last_ns, self.info.sticky_ttl_s);
        let usable = self.usable(session.backend_id) == Some(session.backend_generation);
        (fresh && usable).then_some(session.backend_id)
    }

    fn pin_report(&self, id: u32) -> PinReport {
        let applies = self.pinned().is_some();
        PinReport {
            client: self.client_prefix(),
            worker: self.name(id),
            applies,
            why_not: (!applies).then(|| self.unusable(id, self.info.id, None)),
        }
    }

    fn session_report(&self, session: &StickyValue) -> SessionReport {
        let id = session.backend_id;
        let idle = self.now_ns.saturating_sub(session.last_ns);
        let ttl = self.info.sticky_ttl_s;
        let why_not = if self.pinned().is_some() {
            Some("the pin comes first".to_owned())
        } else if !decide::session_fresh(self.now_ns, session.last_ns, ttl) {
            Some(format!(
                "expired: the client's last new connection was {:.1}s ago, the TTL is {ttl}s",
                secs(idle)
            ))
        } else if self.sticky().is_none() {
            Some(self.unusable(id, self.info.id, Some(session.backend_generation)))
        } else {
            None
        };
        SessionReport {
            client: self.client_prefix(),
            worker: self.name(id),
            idle_secs: secs(idle),
            ttl_secs: ttl,
            applies: why_not.is_none(),
            why_not,
        }
    }

    /// The data plane's `schedule::choose` for a new flow.
    fn choose(&self) -> Choice {
        if let Some(id) = self.pinned() {
            return Choice::Worker(id, "pinned".into());
        }
        if let Some(id) = self.sticky() {
            return Choice::Worker(id, "sticky session".into());
        }
        let scheduled = match &self.key {
            Some(key) => self.schedule(key),
            None => self.schedule_any_port(),
        };
        match scheduled {
            Choice::Worker(id, reason) if self.info.flags & VIP_STICKY != 0 => {
                Choice::Worker(id, format!("{reason}; it becomes the sticky session"))
            }
            other => other,
        }
    }

    /// The worker in the slot `hash` picks, if any.
    fn slot(&self, hash: u32) -> (u32, Option<u32>) {
        let index = decide::slot_index(hash, self.info.table_size);
        let id = self
            .table
            .get(index as usize)
            .copied()
            .filter(|&id| id != NO_BACKEND);
        (index, id)
    }

    /// The data plane's `schedule::schedule`.
    fn schedule(&self, key: &FlowKey) -> Choice {
        if self.info.table_size == 0 {
            return Choice::NoWorker;
        }
        let (index, Some(first)) = self.slot(decide::first_hash(key, self.seed)) else {
            return Choice::NoWorker;
        };
        let maglev = format!("maglev slot {index}");
        if self.info.scheduler != SCHED_LEAST_LOAD {
            return Choice::Worker(first, maglev);
        }
        let (_, Some(second)) = self.slot(decide::second_hash(key, self.seed)) else {
            return Choice::Worker(
                first,
                format!("{maglev} (the second choice's slot is empty)"),
            );
        };
        let (first_load, second_load) = (self.load(first), self.load(second));
        let shown = |id, load| {
            let figure = load_fraction(load).map_or("unknown".into(), |l| format!("{l:.2}"));
            format!("{} ({figure})", self.name(id))
        };
        let (a, b) = (shown(first, first_load), shown(second, second_load));
        if decide::second_wins(first_load, second_load) {
            return Choice::Worker(second, format!("least-load: lower load of {b} and {a}"));
        }
        let reason = if first == second {
            format!("least-load: both choices are {a}, {maglev}")
        } else if first_load == LOAD_UNKNOWN || second_load == LOAD_UNKNOWN {
            format!("least-load: no load figure to compare for {a} and {b}, so {maglev}")
        } else if first_load == second_load {
            format!("least-load: equal loads of {a} and {b}, so the first choice, {maglev}")
        } else {
            format!("least-load: lower load of {a} and {b}")
        };
        Choice::Worker(first, reason)
    }

    /// The scheduler without a port: decided only when the table holds
    /// one worker or none.
    fn schedule_any_port(&self) -> Choice {
        let workers: BTreeSet<u32> = self.slot_counts().into_keys().collect();
        let mut workers = workers.into_iter();
        match (workers.next(), workers.next()) {
            (None, _) => Choice::NoWorker,
            (Some(id), None) => Choice::Worker(
                id,
                "every slot of the Maglev table holds this worker".into(),
            ),
            (Some(_), Some(_)) => Choice::Undecided(format!(
                "the client's port decides: the flow hash picks one of {} Maglev slots ({})",
                self.info.table_size,
                self.scheduler_word()
            )),
        }
    }

    /// The data plane's last check, in `transmit`: a worker without a MAC
    /// can't be sent to.
    fn verdict(&self, choice: Choice) -> Verdict {
        match choice {
            Choice::Worker(id, reason) => match self.backend(id) {
                None => Verdict {
                    action: Action::Drop,
                    worker: None,
                    reason: "drop: no worker".into(),
                },
                Some(b) if b.flags & BACKEND_MAC_KNOWN == 0 => Verdict {
                    action: Action::Drop,
                    worker: Some(self.name(id)),
                    reason: format!(
                        "drop: worker's MAC unknown ({}, chosen by {reason})",
                        self.name(id)
                    ),
                },
                Some(_) => Verdict {
                    action: Action::Forward,
                    worker: Some(self.name(id)),
                    reason,
                },
            },
            Choice::NoWorker => Verdict {
                action: Action::Drop,
                worker: None,
                reason: "drop: no worker".into(),
            },
            Choice::Undecided(reason) => Verdict {
                action: Action::DependsOnPort,
                worker: None,
                reason,
            },
        }
    }

    fn pick(&self, hash: u32) -> Pick {
        let (slot, id) = self.slot(hash);
        Pick {
            hash,
            slot,
            worker: id.map(|id| self.name(id)),
            load: id.and_then(|id| load_fraction(self.load(id))),
        }
    }

    fn schedule_report(&self) -> ScheduleReport {
        let picks = self.key.filter(|_| self.info.table_size != 0).map(|key| {
            let second = (self.info.scheduler == SCHED_LEAST_LOAD)
                .then(|| self.pick(decide::second_hash(&key, self.seed)));
            (self.pick(decide::first_hash(&key, self.seed)), second)
        });
        let (first, second) = match picks {
            Some((first, second)) => (Some(first), second),
            None => (None, None),
        };
        ScheduleReport {
            scheduler: self.scheduler_word(),
            depends_on_port: self.key.is_none(),
            first,
            second,
        }
    }

    /// Slots per worker id in the VIP's table.
    fn slot_counts(&self) -> BTreeMap<u32, u32> {
        let size = self.info.table_size as usize;
        let mut counts = BTreeMap::new();
        for &id in self.table.iter().take(size).filter(|&&id| id != NO_BACKEND) {
            *counts.entry(id).or_default() += 1;
        }
        counts
    }

    /// The VIP's workers, and any other worker the client's flow, pin or
    /// session names; by address.
    fn worker_reports(&self) -> Vec<WorkerReport> {
        let counts = self.slot_counts();
        let mut ids: BTreeSet<u32> = (0..self.backends.len() as u32)
            .filter(|&id| {
                self.backend(id)
                    .is_some_and(|b| b.flags & BACKEND_VALID != 0 && b.vip_id == self.info.id)
            })
            .collect();
        ids.extend(counts.keys());
        ids.extend(self.flow.map(|f| f.value.backend_id));
        ids.extend(self.pin);
        ids.extend(self.session.map(|s| s.backend_id));
        let total = counts.values().sum::<u32>().max(1);
        let mut rows: Vec<(Option<IpAddr>, WorkerReport)> = ids
            .into_iter()
            .filter_map(|id| Some((id, self.backend(id)?)))
            .map(|(id, backend)| {
                let slots = counts.get(&id).copied().unwrap_or(0);
                let row = WorkerReport {
                    worker: self.name(id),
                    id,
                    state: self.state_word(backend),
                    mac_known: backend.flags & BACKEND_MAC_KNOWN != 0,
                    takes_new_flows: backend.takes_new_flows(self.info.id),
                    load: load_fraction(self.load(id)),
                    slots,
                    share: f64::from(slots) / f64::from(total),
                };
                (service::addr_from_bytes(backend.addr, backend.family), row)
            })
            .collect();
        rows.sort_by_key(|(addr, row)| (*addr, row.id));
        rows.into_iter().map(|(_, row)| row).collect()
    }

    fn state_word(&self, backend: &Backend) -> &'static str {
        let flags = backend.flags;
        if flags & BACKEND_VALID == 0 {
            "removed"
        } else if backend.vip_id != self.info.id {
            "other-vip"
        } else {
            maps::state_word(flags)
        }
    }
}

/// The explanation for people.
fn render(e: &Explanation) -> String {
    let mut lines: Vec<(&str, String)> = vec![("vip", render_settings(e))];
    let client = match e.client_port {
        Some(port) => SocketAddr::new(e.client, port).to_string(),
        None => format!("{} (a new connection from any port)", e.client),
    };
    lines.push(("client", client));
    if e.client_port.is_some() {
        let flow = e.flow.as_ref().map_or_else(
            || "none in the flow table: the next packet opens a new flow".into(),
            render_flow,
        );
        lines.push(("flow", flow));
    }
    if e.settings.has_pins {
        let pin = e.pin.as_ref().map_or_else(
            || "none".into(),
            |p| render_rule(&p.client, &p.worker, "", p.why_not.as_deref()),
        );
        lines.push(("pin", pin));
    }
    if e.settings.sticky_ttl_secs.is_some() {
        let session = e.session.as_ref().map_or_else(
            || "none".into(),
            |s| {
                let last = format!(", last new connection {:.1}s ago", s.idle_secs);
                render_rule(&s.client, &s.worker, &last, s.why_not.as_deref())
            },
        );
        lines.push(("session", session));
    }
    lines.extend(render_schedule(&e.schedule));
    lines.push(("verdict", render_verdict(&e.verdict)));
    if let Some(syn) = &e.syn {
        lines.push((
            "a SYN",
            format!("{} (a new connection)", render_verdict(syn)),
        ));
    }
    let mut out: String = lines
        .iter()
        .map(|(label, text)| format!("{label:<9} {text}\n"))
        .collect();
    out.push('\n');
    out += &table::render(
        &["WORKER", "ID", "STATE", "MAC", "LOAD", "SLOTS", "SHARE"],
        &e.workers.iter().map(worker_cells).collect::<Vec<_>>(),
    );
    out
}

fn render_settings(e: &Explanation) -> String {
    let s = &e.settings;
    let mut text = format!(
        "{}: id {}, {}, {} slots, idle timeout {}s",
        e.vip, s.id, s.scheduler, s.table_size, s.idle_timeout_secs
    );
    if let Some(ttl) = s.sticky_ttl_secs {
        text += &format!(", sticky {ttl}s per /{}", s.sticky_prefix);
    }
    if s.has_pins {
        text += ", has pins";
    }
    text
}

fn render_flow(f: &FlowReport) -> String {
    let closing = if f.closing { ", closing" } else { "" };
    let followed = match &f.why_not {
        None => "followed".to_owned(),
        Some(why) => format!("not followed: {why}"),
    };
    format!(
        "{}, age {:.1}s, idle {:.1}s{closing}: {followed}",
        f.worker, f.age_secs, f.idle_secs
    )
}

fn render_rule(client: &str, worker: &str, extra: &str, why_not: Option<&str>) -> String {
    let applies = match why_not {
        None => "applies".to_owned(),
        Some(why) => format!("does not apply: {why}"),
    };
    format!("{client} → {worker}{extra}: {applies}")
}

fn render_schedule(s: &ScheduleReport) -> Vec<(&'static str, String)> {
    let pick = |p: &Pick| {
        let worker = p.worker.as_deref().unwrap_or("empty");
        let load = p
            .load
            .map_or_else(String::new, |l| format!(", load {l:.2}"));
        format!("slot {} (hash {:#010x}) → {worker}{load}", p.slot, p.hash)
    };
    if s.depends_on_port {
        return vec![(
            "maglev",
            "the slot depends on the client's port: each worker's share of the slots is below"
                .into(),
        )];
    }
    let mut lines = Vec::new();
    let first_label = if s.second.is_some() {
        "first"
    } else {
        "maglev"
    };
    if let Some(first) = &s.first {
        lines.push((first_label, pick(first)));
    }
    if let Some(second) = &s.second {
        lines.push(("second", pick(second)));
    }
    lines
}

fn render_verdict(v: &Verdict) -> String {
    match (&v.action, &v.worker) {
        (Action::Forward, Some(worker)) => format!("{worker}: {}", v.reason),
        _ => v.reason.clone(),
    }
}

fn worker_cells(w: &WorkerReport) -> Vec<String> {
    vec![
        w.worker.clone(),
        w.id.to_string(),
        w.state.to_owned(),
        if w.mac_known { "yes" } else { "no" }.to_owned(),
        w.load.map_or_else(|| "-".into(), |l| format!("{l:.2}")),
        w.slots.to_string(),
        format!("{:.1}%", w.share * 100.0),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::balancer::{BACKEND_DOWN, BACKEND_DRAINING, FAMILY_V4, SCHED_MAGLEV};

    const SEC: u64 = 1_000_000_000;
    const NOW: u64 = 1000 * SEC;

    fn worker(last: u8, extra_flags: u8) -> Backend {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&[192, 0, 2, last]);
        Backend {
            addr,
            family: FAMILY_V4,
            flags: BACKEND_VALID | BACKEND_MAC_KNOWN | extra_flags,
            generation: 1,
            ..Backend::default()
        }
    }

    /// Two workers (ids 0 and 1, 192.0.2.11 and .12) sharing a 7-slot
    /// table; a client without a port.
    fn view() -> View {
        View {
            vip: "192.0.2.100:80/tcp".parse().unwrap(),
            info: VipInfo {
                id: 0,
                table_size: 7,
                scheduler: SCHED_MAGLEV,
                sticky_prefix: 32,
                tag: 5,
                ..VipInfo::default()
            },
            idle_timeout_s: 300,
            seed: 42,
            backends: vec![worker(11, 0), worker(12, 0)],
            loads: vec![LOAD_UNKNOWN; 2],
            table: vec![0, 1, 0, 1, 0, 1, 0],
            client: "192.0.2.1".parse().unwrap(),
            key: None,
            flow: None,
            pin: None,
            session: None,
            now_ns: NOW,
        }
    }

    fn with_port(mut view: View, port: u16) -> View {
        view.key = Some(flow_key(&view.vip, view.client, port));
        view
    }

    fn recorded(backend_id: u32, last_seen_s: u64) -> Recorded {
        Recorded {
            value: FlowValue {
                backend_id,
                vip_tag: 5,
                backend_generation: 1,
                created_ns: 900 * SEC,
                last_seen_ns: last_seen_s * SEC,
                ..FlowValue::default()
            },
            tag: Some(VipTag {
                tag: 5,
                idle_timeout_s: 300,
            }),
        }
    }

    #[test]
    fn vips_and_clients_parse_or_say_why_not() {
        let vip = parse_vip("192.0.2.100:80", Some(Protocol::Udp)).unwrap();
        assert_eq!(vip.to_string(), "192.0.2.100:80/udp");
        assert_eq!(
            parse_vip("192.0.2.100:80", None).unwrap().proto,
            Protocol::Tcp
        );
        assert!(matches!(
            parse_vip("192.0.2.100:80/tcp", Some(Protocol::Udp)),
            Err(ExplainError::ProtoDisagrees { .. })
        ));
        assert!(parse_vip("192.0.2.100:80/tcp", Some(Protocol::Tcp)).is_ok());
        assert!(parse_vip("nonsense", None).is_err());
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(parse_client("2001:db8::1").unwrap(), (v6, None));
        assert_eq!(parse_client("[2001:db8::1]").unwrap(), (v6, None));
        assert_eq!(parse_client("[2001:db8::1]:443").unwrap(), (v6, Some(443)));
        assert!(matches!(
            parse_client("192.0.2.1:0"),
            Err(ExplainError::ClientPortZero(_))
        ));
        assert!(matches!(
            parse_client("192.0.2.1:99999"),
            Err(ExplainError::BadClient(_))
        ));
        let error = check_family(v6, &vip).unwrap_err().to_string();
        assert_eq!(
            error,
            "client 2001:db8::1 is IPv6, but VIP 192.0.2.100:80/udp is IPv4"
        );
    }

    #[test]
    fn maglev_names_the_slot_the_data_plane_indexes() {
        let view = with_port(view(), 40000);
        let key = view.key.unwrap();
        let index = key.hash(42) % 7;
        let expected = view.table[index as usize];
        let e = view.explain();
        assert_eq!(e.verdict.action, Action::Forward);
        assert_eq!(e.verdict.worker, Some(view.name(expected)));
        assert_eq!(e.verdict.reason, format!("maglev slot {index}"));
        assert_eq!(e.schedule.first.unwrap().slot, index);
    }

    #[test]
    fn without_a_port_the_shares_stand_in_for_the_slot() {
        let e = view().explain();
        assert_eq!(e.verdict.action, Action::DependsOnPort);
        assert!(e.schedule.depends_on_port);
        let slots: Vec<u32> = e.workers.iter().map(|w| w.slots).collect();
        assert_eq!(slots, [4, 3]);
        let mut single = view();
        single.table = vec![1; 7];
        let e = single.explain();
        assert_eq!(e.verdict.worker.as_deref(), Some("192.0.2.12"));
        single.table = vec![NO_BACKEND; 7];
        assert_eq!(single.explain().verdict.reason, "drop: no worker");
    }

    #[test]
    fn least_load_takes_the_lower_of_its_two_candidates() {
        let mut view = with_port(view(), 40000);
        view.info.scheduler = SCHED_LEAST_LOAD;
        // Find a port whose two candidates differ.
        let port = (1..2000u16)
            .find(|&p| {
                let key = flow_key(&view.vip, view.client, p);
                view.slot(decide::first_hash(&key, 42)).1
                    != view.slot(decide::second_hash(&key, 42)).1
            })
            .unwrap();
        view = with_port(view, port);
        let key = view.key.unwrap();
        let first = view.slot(decide::first_hash(&key, 42)).1.unwrap();
        let second = 1 - first;
        view.loads[first as usize] = LOAD_SCALE / 2;
        view.loads[second as usize] = LOAD_SCALE / 10;
        let e = view.explain();
        assert_eq!(e.verdict.worker, Some(view.name(second)));
        assert!(e.verdict.reason.starts_with("least-load: lower load of"));
        view.loads[second as usize] = LOAD_UNKNOWN;
        assert_eq!(view.explain().verdict.worker, Some(view.name(first)));
        view.loads[second as usize] = LOAD_SCALE / 2;
        let tie = view.explain().verdict;
        assert_eq!(tie.worker, Some(view.name(first)));
        assert!(tie.reason.contains("equal loads"), "{}", tie.reason);
    }

    #[test]
    fn an_established_flow_wins_until_idle_or_its_worker_is_gone() {
        let mut view = with_port(view(), 40000);
        view.flow = Some(recorded(1, 990));
        let e = view.explain();
        assert_eq!(e.verdict.reason, "established flow");
        assert_eq!(e.verdict.worker.as_deref(), Some("192.0.2.12"));
        assert!(e.syn.is_some(), "TCP: a SYN would be scheduled");
        // Draining keeps established flows.
        view.backends[1].flags |= BACKEND_DRAINING;
        assert_eq!(view.explain().verdict.reason, "established flow");
        view.backends[1].flags |= BACKEND_DOWN;
        let flow = view.explain().flow.unwrap();
        assert!(!flow.followed);
        assert_eq!(flow.why_not.as_deref(), Some("worker 192.0.2.12 is down"));
        view.backends[1].flags = BACKEND_VALID | BACKEND_MAC_KNOWN;
        view.flow = Some(recorded(1, 600));
        let flow = view.explain().flow.unwrap();
        assert!(flow.why_not.unwrap().contains("idle timeout of 300s"));
        let mut replaced = recorded(1, 990);
        replaced.value.backend_generation = 7;
        view.flow = Some(replaced);
        assert!(!view.explain().flow.unwrap().followed);
    }

    #[test]
    fn a_usable_pin_comes_before_a_fresh_session() {
        let mut view = view();
        view.info.flags = VIP_STICKY | VIP_HAS_PINS;
        view.info.sticky_ttl_s = 60;
        view.pin = Some(1);
        view.session = Some(StickyValue {
            backend_id: 0,
            backend_generation: 1,
            last_ns: NOW - 10 * SEC,
        });
        let e = view.explain();
        assert_eq!(e.verdict.reason, "pinned");
        assert_eq!(e.verdict.worker.as_deref(), Some("192.0.2.12"));
        assert_eq!(
            e.session.unwrap().why_not.as_deref(),
            Some("the pin comes first")
        );
        view.backends[1].flags |= BACKEND_DRAINING;
        let e = view.explain();
        assert_eq!(e.verdict.reason, "sticky session");
        assert_eq!(e.verdict.worker.as_deref(), Some("192.0.2.11"));
        assert_eq!(
            e.pin.unwrap().why_not.as_deref(),
            Some("worker 192.0.2.12 is draining")
        );
        view.session.as_mut().unwrap().last_ns = NOW - 61 * SEC;
        let e = view.explain();
        assert_eq!(e.verdict.action, Action::DependsOnPort);
        assert!(e.session.unwrap().why_not.unwrap().starts_with("expired"));
    }

    #[test]
    fn a_worker_without_a_mac_is_a_drop() {
        let mut view = with_port(view(), 40000);
        view.backends[0].flags &= !BACKEND_MAC_KNOWN;
        view.backends[1].flags &= !BACKEND_MAC_KNOWN;
        let e = view.explain();
        assert_eq!(e.verdict.action, Action::Drop);
        assert!(e.verdict.reason.starts_with("drop: worker's MAC unknown"));
        assert!(e.verdict.worker.is_some());
    }

    #[test]
    fn the_text_names_each_step() {
        let mut view = with_port(view(), 40000);
        view.flow = Some(recorded(1, 990));
        let text = render(&view.explain());
        for word in [
            "vip ", "client ", "flow ", "maglev ", "verdict ", "a SYN ", "WORKER",
        ] {
            assert!(text.contains(word), "no {word:?} in\n{text}");
        }
    }
}
