//! Reading what the data plane would consult for one client of one VIP
//! into a snapshot, and running the data plane's own decision
//! (`lb_common::decide`) over it.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::Path,
};

use anyhow::Context as _;
use aya::maps::{Array, HashMap, MapData, MapError};
use lb_common::{
    balancer::{
        mask_prefix, Backend, Config, FlowKey, FlowValue, StickyKey, StickyValue, VipInfo, VipKey,
        VipTag, LOAD_UNKNOWN, NO_BACKEND, VIP_HAS_PINS, VIP_STICKY,
    },
    decide::{self, Decided, DecisionMaps, Missed, Rule, Schedule, Scheduler},
    map_names,
};

use super::ExplainError;
use crate::{commands::stats, dataplane::activity, dataplane::maps, service, service::Vip};

/// What the data plane holds about one VIP and one client, read at one
/// moment.
#[derive(Debug)]
pub(super) struct View {
    pub(super) vip: Vip,
    pub(super) info: VipInfo,
    pub(super) seed: u32,
    /// The worker slots, by id.
    pub(super) backends: Vec<Backend>,
    /// The load figures, by worker id.
    pub(super) loads: Vec<u32>,
    /// The VIP's Maglev table.
    pub(super) table: Vec<u32>,
    /// `LB_VIP_TAGS` at the ids the decision reads: the VIP's, and the
    /// flow's (absent when past the map's end).
    pub(super) tags: BTreeMap<u32, VipTag>,
    pub(super) client: IpAddr,
    /// The flow, when the client's port is known.
    pub(super) key: Option<FlowKey>,
    pub(super) flow: Option<FlowValue>,
    /// The key of the client's pin and session.
    pub(super) client_key: StickyKey,
    /// The client's pin (when the VIP has pins).
    pub(super) pin: Option<u32>,
    /// The client's sticky session (when the VIP is sticky).
    pub(super) session: Option<StickyValue>,
    /// CLOCK_MONOTONIC, ns.
    pub(super) now_ns: u64,
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
pub(super) fn gather(
    pin_dir: &Path,
    vip: Vip,
    client: IpAddr,
    port: Option<u16>,
) -> anyhow::Result<View> {
    let vips: HashMap<MapData, VipKey, VipInfo> = open(pin_dir, map_names::VIPS)?.try_into()?;
    let info = found(vips.get(&vip.key(), 0))?.ok_or(ExplainError::UnknownVip(vip))?;
    let tag_map: Array<MapData, VipTag> = open(pin_dir, map_names::VIP_TAGS)?.try_into()?;
    let config: Array<MapData, Config> = open(pin_dir, map_names::CONFIG)?.try_into()?;
    let backends: Array<MapData, Backend> = open(pin_dir, map_names::BACKENDS)?.try_into()?;
    let loads: Array<MapData, u32> = open(pin_dir, map_names::LOAD)?.try_into()?;
    let mut tags = BTreeMap::from([(info.id, tag_map.get(&info.id, 0)?)]);
    let key = port.map(|port| flow_key(&vip, client, port));
    let flow = match &key {
        Some(key) => read_flow(pin_dir, key, &tag_map, &mut tags)?,
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
        seed: config.get(&0, 0)?.hash_seed,
        backends: backends.iter().collect::<Result<_, _>>()?,
        loads: loads.iter().collect::<Result<_, _>>()?,
        table: maps::pinned_maglev_table(pin_dir, info.id)
            .context("reading the VIP's Maglev table")?,
        tags,
        client,
        key,
        flow,
        client_key,
        pin,
        session,
        now_ns: activity::monotonic_ns(),
    })
}

/// The flow's entry, and the tag at its VIP id into `tags`.
fn read_flow(
    pin_dir: &Path,
    key: &FlowKey,
    tag_map: &Array<MapData, VipTag>,
    tags: &mut BTreeMap<u32, VipTag>,
) -> anyhow::Result<Option<FlowValue>> {
    let flows: HashMap<MapData, FlowKey, FlowValue> =
        open(pin_dir, map_names::FLOWS)?.try_into()?;
    let Some(value) = found(flows.get(key, 0))? else {
        return Ok(None);
    };
    match tag_map.get(&value.vip_id, 0) {
        Ok(tag) => {
            tags.insert(value.vip_id, tag);
        }
        Err(MapError::OutOfBounds { .. }) => {}
        Err(error) => return Err(error.into()),
    }
    Ok(Some(value))
}

/// The data plane's key of the flow from `client`:`port` to `vip`.
pub(super) fn flow_key(vip: &Vip, client: IpAddr, port: u16) -> FlowKey {
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

/// The snapshot answers for its one VIP and one client, as the maps would.
impl DecisionMaps for View {
    type Entry<'a, T: 'a> = &'a T;

    fn flow(&self, key: &FlowKey) -> Option<&FlowValue> {
        self.flow
            .as_ref()
            .filter(|_| self.key.as_ref() == Some(key))
    }

    fn vip_tag(&self, vip_id: u32) -> Option<&VipTag> {
        self.tags.get(&vip_id)
    }

    fn vip(&self, key: &VipKey) -> Option<VipInfo> {
        (*key == self.vip.key()).then_some(self.info)
    }

    fn backend(&self, id: u32) -> Option<&Backend> {
        self.backends.get(id as usize)
    }

    fn pin(&self, client: &StickyKey) -> Option<u32> {
        self.pin.filter(|_| *client == self.client_key)
    }

    fn session(&self, client: &StickyKey) -> Option<&StickyValue> {
        self.session.as_ref().filter(|_| *client == self.client_key)
    }

    fn slot(&self, vip_id: u32, index: u32) -> Option<u32> {
        let table = (vip_id == self.info.id).then_some(&self.table)?;
        table.get(index as usize).copied()
    }

    fn load(&self, id: u32) -> u32 {
        self.loads.get(id as usize).copied().unwrap_or(LOAD_UNKNOWN)
    }

    fn hash_seed(&self) -> u32 {
        self.seed
    }

    fn coarse_now(&self) -> u64 {
        self.now_ns
    }

    fn now(&self) -> u64 {
        self.now_ns
    }
}

/// What the scheduler picks: for a flow, the data plane's scheduler;
/// without a client port, one worker only when the table holds one or
/// none.
#[derive(Debug, PartialEq)]
pub(super) enum Picked {
    /// The data plane's scheduler, for the flow.
    Flow(Schedule),
    /// The table holds no worker.
    NoWorker,
    /// Every slot holds this worker.
    OnlyWorker(u32),
    /// The client's port decides.
    DependsOnPort,
}

/// The scheduler step for [`decide::choose`], with or without a port.
struct ExplainScheduler<'v>(&'v View);

impl Scheduler for ExplainScheduler<'_> {
    type Pick = Picked;

    fn pick(self) -> Picked {
        let view = self.0;
        if let Some(key) = &view.key {
            return Picked::Flow(decide::schedule(view, key, &view.info));
        }
        let workers: BTreeSet<u32> = view.slot_counts().into_keys().collect();
        let mut workers = workers.into_iter();
        match (workers.next(), workers.next()) {
            (None, _) => Picked::NoWorker,
            (Some(id), None) => Picked::OnlyWorker(id),
            (Some(_), Some(_)) => Picked::DependsOnPort,
        }
    }
}

/// What the data plane's decision says about the client's next packet.
pub(super) struct Trace<'v> {
    /// With a port: the flow table's worker, or why not.
    pub(super) flow: Option<Result<u32, Missed>>,
    /// How a new flow's worker is chosen (pin, session, scheduler): the
    /// next packet's unless the flow table decides it, a SYN's always.
    pub(super) new_flow: Rule<&'v StickyValue, Picked>,
}

impl View {
    /// Runs the data plane's decision over the snapshot.
    pub(super) fn trace(&self) -> Result<Trace<'_>, ExplainError> {
        let flow = match &self.key {
            Some(key) => match decide::decide(self, key, false) {
                Decided::Established(followed) => Some(Ok(followed.backend_id)),
                Decided::New { missed, .. } => Some(Err(missed)),
                Decided::NotVip(_) => return Err(ExplainError::UnknownVip(self.vip)),
            },
            None => None,
        };
        let src = service::addr_bytes(self.client).0;
        let new_flow = decide::choose(self, &src, &self.info, ExplainScheduler(self));
        Ok(Trace { flow, new_flow })
    }

    /// Slots per worker id in the VIP's table.
    pub(super) fn slot_counts(&self) -> BTreeMap<u32, u32> {
        let size = self.info.table_size as usize;
        let mut counts = BTreeMap::new();
        for &id in self.table.iter().take(size).filter(|&&id| id != NO_BACKEND) {
            *counts.entry(id).or_default() += 1;
        }
        counts
    }
}
