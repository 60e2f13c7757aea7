//! The lb code the models run, and mirrors of what lb-userspace keeps
//! private. Every mirror names the item it copies and what would let the
//! model call the real one; keep them in step with lb until then.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
};

use lb_common::balancer::{Backend, BACKEND_VALID};
use lb_userspace::{
    desired::{
        options::VipOptions,
        state::{Desired, Limits, VipState, Worker},
    },
    service::{Protocol, Vip},
};

/// The hash seed of every modelled state: it decides nothing the models
/// look at.
const SEED: u32 = 1;

/// The id every modelled VIP has in the data plane's per-VIP maps when
/// there is one (the handover model): flows and slots record it.
pub(crate) const VIP_ID: u32 = 0;

/// The address of the `n`th VIP address.
pub(crate) fn vip_addr(n: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1 + small(n)))
}

/// The `n`th worker's address.
pub(crate) fn worker_addr(n: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1 + small(n)))
}

/// Which worker `addr` is, for the models' addresses.
fn worker_index(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(v4) => v4.octets()[3] - 1,
        IpAddr::V6(_) => unreachable!("the models' workers are IPv4"),
    }
}

fn small(n: usize) -> u8 {
    u8::try_from(n).expect("a model has a handful of addresses")
}

/// A TCP VIP on the `addr`th address at `port`.
pub(crate) fn vip(addr: usize, port: u16) -> Vip {
    Vip {
        addr: vip_addr(addr),
        port,
        proto: Protocol::Tcp,
    }
}

/// A worker of the desired state as lb saves it: weight 1, no drain.
fn worker(id: u8) -> Worker {
    Worker {
        id: id.into(),
        port: None,
        weight: 1,
        drain: false,
        remove_by: None,
    }
}

/// One VIP's workers, as the handover model keeps them: (worker, backend
/// id), ordered by worker.
pub(crate) type Ids = Vec<(u8, u8)>;

/// lb's real desired state of one VIP (port 80 on the first address)
/// with `ids`, restored the way a start restores a state file
/// (`Desired::restore`, then `within` the instance's limits), so the
/// next id it hands out is the one a restarted controller would.
fn one_vip(ids: &[(u8, u8)], slots: u32) -> Desired {
    let workers = ids
        .iter()
        .map(|&(w, id)| (worker_addr(w.into()), worker(id)))
        .collect();
    let state = VipState {
        id: VIP_ID,
        options: VipOptions::default(),
        workers,
        pins: BTreeMap::new(),
    };
    let limits = Limits {
        vips: 1,
        workers: slots,
        table_bytes: u64::MAX,
    };
    Desired::restore(SEED, BTreeMap::from([(vip(0, 80), state)]))
        .and_then(|desired| desired.within(limits))
        .expect("the model's states are valid")
}

/// The ids after `Desired::add_worker` of worker `w`; `None` when lb
/// refuses it (no free slot).
pub(crate) fn add_worker(ids: &[(u8, u8)], w: u8, slots: u32) -> Option<Ids> {
    let mut desired = one_vip(ids, slots);
    desired
        .add_worker(&vip(0, 80), worker_addr(w.into()), 1)
        .ok()?;
    Some(ids_of(&desired))
}

/// The ids after `Desired::del_worker` of worker `w`.
pub(crate) fn del_worker(ids: &[(u8, u8)], w: u8, slots: u32) -> Ids {
    let mut desired = one_vip(ids, slots);
    desired
        .del_worker(&vip(0, 80), worker_addr(w.into()))
        .expect("only present workers are deleted");
    ids_of(&desired)
}

fn ids_of(desired: &Desired) -> Ids {
    desired.vips()[&vip(0, 80)]
        .workers
        .iter()
        .map(|(addr, w)| {
            let id = u8::try_from(w.id).expect("a model has a handful of slots");
            (worker_index(*addr), id)
        })
        .collect()
}

/// A worker slot of the backend array, as much of lb-common's `Backend`
/// as the models look at.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Slot {
    /// The worker it was written for (the address, by index).
    pub worker: Option<u8>,
    /// `Backend::generation`.
    pub generation: u32,
    /// `BACKEND_VALID`: a worker is there (`ControlMaps::clear_backend`
    /// clears it and keeps the generation).
    pub valid: bool,
}

impl Slot {
    /// The data plane's view of the slot: lb-common's own `Backend`, so
    /// the models decide with its `takes_new_flows` and `keeps_flows`.
    pub fn backend(self) -> Backend {
        let flags = if self.valid { BACKEND_VALID } else { 0 };
        Backend {
            addr: self.worker.map_or([0; 16], address_bytes),
            flags,
            vip_id: VIP_ID,
            generation: self.generation,
            ..Backend::default()
        }
    }
}

/// The data plane's spelling of worker `w`'s address (`service::addr_bytes`).
fn address_bytes(w: u8) -> [u8; 16] {
    let mut bytes = [0; 16];
    bytes[..4].copy_from_slice(&[10, 0, 0, 1 + w]);
    bytes
}

/// The generation worker `w` gets in `slot`: lb's own rule
/// (`dataplane::maps::next_generation`, which `ControlMaps::generation_for`
/// applies to the slot it reads).
pub(crate) fn generation_for(slot: Slot, w: u8) -> u32 {
    let addr = std::net::IpAddr::from([10, 0, 0, 1 + w]);
    lb_userspace::dataplane::maps::next_generation(&slot.backend(), addr)
}

/// Whether an address should be announced, and if not why.
///
/// MIRROR of `Verdict` in lb-userspace/src/control/announce.rs (the
/// `control` module is `pub(crate)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Announce,
    NotAttached,
    Withdrawn,
    NoWorker,
}

/// Each VIP address's verdict, from lb's real desired state: a VIP
/// serves by lb's own `VipState::serves` (drains included), an address is
/// withdrawn by `Desired::withdrawn`.
///
/// MIRROR of `Controller::verdicts` in
/// lb-userspace/src/control/controller/announcing.rs, a private method
/// that reads the controller's fields. To call lb's rule instead, lb
/// needs it as a pure `pub fn verdicts(desired: &Desired, takes_new_flows:
/// impl Fn(u32) -> bool, attached: bool, nat_sources: &[IpAddr]) ->
/// BTreeMap<IpAddr, Verdict>` (and `control::announce::Verdict` public).
/// NAT sources are not modelled.
pub(crate) fn verdicts(
    desired: &Desired,
    takes_new_flows: impl Fn(u32) -> bool,
    lost: bool,
) -> BTreeMap<IpAddr, Verdict> {
    let mut verdicts = BTreeMap::new();
    for (vip, state) in desired.vips() {
        let serving = state.serves(&takes_new_flows);
        let verdict = verdicts.entry(vip.addr).or_insert(Verdict::NoWorker);
        if serving {
            *verdict = Verdict::Announce;
        }
    }
    for (addr, verdict) in &mut verdicts {
        if lost {
            *verdict = Verdict::NotAttached;
        } else if desired.withdrawn().contains(addr) {
            *verdict = Verdict::Withdrawn;
        }
    }
    verdicts
}

/// lb's real desired state of the announcement model: VIP `v` on the
/// `vip_addrs[v]`th address (port 80 + v), worker `w` serving VIP
/// `worker_vips[w]`, each worker's id returned beside it.
pub(crate) fn many_vips(vip_addrs: &[usize], worker_vips: &[usize]) -> (Desired, Vec<u32>) {
    let mut desired = Desired::new(SEED);
    let vips: Vec<Vip> = (vip_addrs.iter().enumerate())
        .map(|(v, &a)| vip(a, 80 + u16::from(small(v))))
        .collect();
    for v in &vips {
        desired
            .add_vip(*v, VipOptions::default())
            .expect("the model's VIPs are valid");
    }
    let ids = (worker_vips.iter().enumerate())
        .map(|(w, &v)| {
            desired
                .add_worker(&vips[v], worker_addr(w), 1)
                .expect("the model's workers are valid")
        })
        .collect();
    (desired, ids)
}

/// `desired` with worker `w` (of VIP `v`) drained, by lb's
/// `Desired::set_drain`.
pub(crate) fn drain(desired: &mut Desired, vip_addrs: &[usize], v: usize, w: usize) {
    let v16 = u16::from(small(v));
    desired
        .set_drain(&vip(vip_addrs[v], 80 + v16), worker_addr(w), true)
        .expect("the model's workers exist");
}

/// `desired` with address `a` withdrawn or restored, by lb's
/// `Desired::set_withdrawn`.
pub(crate) fn set_withdrawn(desired: &mut Desired, a: usize, withdraw: bool) {
    desired
        .set_withdrawn(&[vip_addr(a)], withdraw)
        .expect("the model's addresses have VIPs");
}

/// What a start keeps of the saved withdrawals: lb's
/// `Desired::with_withdrawn`, as `state_file::load` applies it.
pub(crate) fn restore_withdrawn(desired: Desired, saved: &[bool]) -> Desired {
    let withdrawn = (saved.iter().enumerate())
        .filter(|(_, &w)| w)
        .map(|(a, _)| vip_addr(a))
        .collect();
    desired.with_withdrawn(withdrawn)
}
