//! The controller's desired state: VIPs, their workers and weights. Every
//! change is validated here before anything touches the maps.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    net::IpAddr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use lb_common::balancer::{DEFAULT_MAX_VIPS, DEFAULT_MAX_WORKERS, MAX_TABLE_SIZE};
use serde::{Deserialize, Serialize};

use crate::{
    desired::maglev,
    desired::options::{Forward, OptionsError, VipOptions},
    service::Vip,
};

/// Weight of a worker added without `--weight`.
pub const DEFAULT_WEIGHT: u32 = 100;

/// A change the state refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StateError {
    /// The VIP exists already.
    #[error("VIP {0} exists already")]
    VipExists(Vip),
    /// No such VIP.
    #[error("no VIP {0}; `lb vip list` shows the VIPs")]
    UnknownVip(Vip),
    /// No VIP on the address.
    #[error("no VIP on {0}; `lb announce list` shows the addresses")]
    NoVipOn(IpAddr),
    /// The worker is on the VIP already.
    #[error("worker {worker} is already on VIP {vip}; use `lb backend del` first to change it")]
    DuplicateWorker {
        /// The VIP.
        vip: Vip,
        /// The worker.
        worker: IpAddr,
    },
    /// The worker is not on the VIP.
    #[error("worker {worker} is not on VIP {vip}; `lb backend list {vip}` shows its workers")]
    UnknownWorker {
        /// The VIP.
        vip: Vip,
        /// The worker.
        worker: IpAddr,
    },
    /// IPv4 worker for an IPv6 VIP or the other way round.
    #[error("worker {worker} and VIP {vip} are of different IP families; DSR and NAT need the worker in the VIP's family (--forward ipip or gue carry either)")]
    FamilyMismatch {
        /// The VIP.
        vip: Vip,
        /// The worker.
        worker: IpAddr,
    },
    /// A port of its own for a worker of a method that keeps the VIP's.
    #[error("worker {worker} of {vip} can't have port {port}: workers of a {forward} VIP take the VIP's port ({vip_port}); only --forward nat or fullnat map ports")]
    PortNotNat {
        /// The VIP.
        vip: Vip,
        /// The worker.
        worker: IpAddr,
        /// The port asked for.
        port: u16,
        /// The VIP's port.
        vip_port: u16,
        /// The VIP's method.
        forward: Forward,
    },
    /// A `nat` worker's address and port on two `nat` VIPs: its replies
    /// could not be told apart.
    #[error("{worker} port {port} already serves nat VIP {other}: lb tells a nat worker's replies apart by its address and port, so each serves one nat VIP; give it another port")]
    NatWorkerTaken {
        /// The worker.
        worker: IpAddr,
        /// Its port.
        port: u16,
        /// The VIP it serves.
        other: Vip,
    },
    /// A change of method that would leave workers with ports of their own.
    #[error("{vip} has workers on ports of their own ({worker} port {port}): only --forward nat or fullnat map ports; delete them first")]
    PortsBlockMethod {
        /// The VIP.
        vip: Vip,
        /// A worker with a port.
        worker: IpAddr,
        /// Its port.
        port: u16,
    },
    /// Weight out of range.
    #[error("weight {0} is out of range: use 1 to 65535")]
    BadWeight(u32),
    /// Table size not a prime in range.
    #[error("table size {0} must be a prime from 7 to {MAX_TABLE_SIZE} (e.g. 16381 or 65537)")]
    BadTableSize(u32),
    /// VIP limit reached.
    #[error("this instance holds at most {0} VIPs (`lb run --max-vips`)")]
    TooManyVips(u32),
    /// Worker limit reached.
    #[error("this instance holds at most {0} workers across all VIPs (`lb run --max-workers`)")]
    TooManyBackends(u32),
    /// The Maglev tables would pass the memory budget.
    #[error(
        "the Maglev tables would need about {} of kernel memory (one table more while one is swapped in), more than the {} that --max-memory leaves beside the flow table: use a smaller --table-size, fewer VIPs or a larger `lb run --max-memory`",
        crate::desired::state::mib(*needed),
        crate::desired::state::mib(*budget)
    )]
    TablesTooLarge {
        /// What they would need.
        needed: u64,
        /// What the budget leaves them.
        budget: u64,
    },
    /// A VIP setting out of range.
    #[error(transparent)]
    Options(#[from] OptionsError),
    /// Pin to a worker the VIP doesn't have.
    #[error("cannot pin {client} to {worker}: it is not a worker of {vip}; `lb backend list {vip}` shows them")]
    PinToUnknownWorker {
        /// The VIP.
        vip: Vip,
        /// The client.
        client: IpAddr,
        /// The worker.
        worker: IpAddr,
    },
    /// Client of the wrong family.
    #[error("client {client} and VIP {vip} are of different IP families")]
    ClientFamilyMismatch {
        /// The VIP.
        vip: Vip,
        /// The client.
        client: IpAddr,
    },
    /// The sticky prefix can't change under pins.
    #[error("{0} has pinned clients keyed by its sticky prefix: `lb sessions unpin` them before changing --sticky-prefix")]
    PinsBlockPrefix(Vip),
    /// Two VIPs or two workers share an id (a damaged state file).
    #[error("id {0} is used twice")]
    DuplicateId(u32),
    /// An id beyond the maps' size (a damaged state file, or limits
    /// lowered below the ids in use).
    #[error("id {0} is beyond the limits this instance runs with (`lb run --max-vips`, `--max-workers`)")]
    IdOutOfRange(u32),
    /// No such pin.
    #[error(
        "client {client} is not pinned on {vip} (pins are kept per /{prefix}: none holds {masked})"
    )]
    UnknownPin {
        /// The VIP.
        vip: Vip,
        /// The client, as given.
        client: IpAddr,
        /// The VIP's sticky prefix length.
        prefix: u8,
        /// The client masked to it.
        masked: IpAddr,
    },
    /// An address lb can't send a VIP's traffic to, or serve as a VIP.
    #[error("{what} {addr} {problem}")]
    NotUnicast {
        /// "VIP" or "worker".
        what: &'static str,
        /// The address.
        addr: IpAddr,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// A pin for an address no packet comes from.
    #[error("client {client} {problem}: pin a client's address (under a short --sticky-prefix, any address in the prefix pins all of it)")]
    NotAClient {
        /// The client, as given.
        client: IpAddr,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// A worker at the VIP's own address.
    #[error("worker {0} is the VIP's own address: a worker must be another host that holds the VIP on its loopback")]
    WorkerIsVip(IpAddr),
}

/// One worker of a VIP.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Worker {
    /// Index in the data plane's backend array.
    pub id: u32,
    /// Its own port, for NAT methods (none: the VIP's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Relative share of new flows.
    pub weight: u32,
    /// Draining: no new flows or sessions, existing flows continue.
    pub drain: bool,
    /// Being removed gracefully (draining): removed once its flows end,
    /// or at this time (Unix seconds) at the latest. Wall-clock time, so
    /// that it survives a restart of the controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remove_by: Option<u64>,
}

impl Worker {
    /// Whether it takes new flows: not draining, and `up` by id.
    fn takes_new_flows(&self, up: impl Fn(u32) -> bool) -> bool {
        !self.drain && up(self.id)
    }
}

/// How long from `now` until `deadline` (Unix seconds); zero once past,
/// and at most a year, whatever a damaged state file says.
pub fn time_until(deadline: u64, now: SystemTime) -> Duration {
    const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);
    UNIX_EPOCH
        .checked_add(Duration::from_secs(deadline))
        .map_or(YEAR, |at| at.duration_since(now).unwrap_or_default())
        .min(YEAR)
}

/// The deadline, in Unix seconds, `timeout` after `now`, rounded up to a
/// whole second (never early).
pub fn deadline_after(now: SystemTime, timeout: Duration) -> u64 {
    let at = now + timeout;
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    since.as_secs() + u64::from(since.subsec_nanos() > 0)
}

pub fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// One VIP.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipState {
    /// Index in the per-VIP maps.
    pub id: u32,
    /// Scheduler, stickiness, health checks, load signal.
    pub options: VipOptions,
    /// Workers by address.
    pub workers: BTreeMap<IpAddr, Worker>,
    /// Pinned clients (masked to the sticky prefix) → worker.
    pub pins: BTreeMap<IpAddr, IpAddr>,
}

impl VipState {
    /// The Maglev table size in force.
    pub fn effective_table_size(&self) -> u32 {
        self.options
            .table_size
            .unwrap_or_else(|| maglev::table_size_for(self.workers.len()))
    }

    /// Whether a worker takes new flows: as [`Self::members`] chooses,
    /// without building them.
    pub fn serves(&self, up: impl Fn(u32) -> bool) -> bool {
        self.workers.values().any(|w| w.takes_new_flows(&up))
    }

    /// The workers that take new flows, as Maglev members: not draining,
    /// and `up` by id.
    pub fn members(&self, up: impl Fn(u32) -> bool) -> Vec<maglev::Member> {
        self.workers
            .iter()
            .filter(|(_, w)| w.takes_new_flows(&up))
            .map(|(addr, w)| maglev::Member {
                name: addr.to_string(),
                weight: w.weight,
                id: w.id,
            })
            .collect()
    }
}

/// Hands out ids, reusing freed ones last so that flows still pinned to a
/// removed worker keep reaching it for as long as possible.
#[derive(Clone, Debug, Default)]
struct Ids {
    next: u32,
    limit: u32,
    freed: VecDeque<u32>,
}

impl Ids {
    /// An allocator that has handed out `used` (in any order).
    fn with_used(limit: u32, used: &[u32]) -> Result<Self, StateError> {
        let mut seen = std::collections::BTreeSet::new();
        for &id in used {
            if id >= limit {
                return Err(StateError::IdOutOfRange(id));
            }
            if !seen.insert(id) {
                return Err(StateError::DuplicateId(id));
            }
        }
        let next = seen.last().map_or(0, |last| last + 1);
        Ok(Self {
            next,
            limit,
            freed: (0..next).filter(|id| !seen.contains(id)).collect(),
        })
    }

    fn new(limit: u32) -> Self {
        Self {
            next: 0,
            limit,
            freed: VecDeque::new(),
        }
    }

    fn take(&mut self) -> Option<u32> {
        if self.next < self.limit {
            self.next += 1;
            return Some(self.next - 1);
        }
        self.freed.pop_front()
    }

    fn free(&mut self, id: u32) {
        self.freed.push_back(id);
    }
}

/// How many VIPs and workers an instance holds: the size of its per-VIP
/// and per-worker maps, so ids stay below them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// VIPs.
    pub vips: u32,
    /// Workers across all VIPs.
    pub workers: u32,
    /// Bytes of kernel memory the Maglev tables may take: what
    /// `--max-memory` leaves beside the fixed maps.
    pub table_bytes: u64,
}

impl Limits {
    /// No limit but the ids' range: for a state read before the limits
    /// it must fit are applied with [`Desired::within`].
    pub const NONE: Self = Self {
        vips: u32::MAX,
        workers: u32::MAX,
        table_bytes: u64::MAX,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            vips: DEFAULT_MAX_VIPS,
            workers: DEFAULT_MAX_WORKERS,
            table_bytes: u64::MAX,
        }
    }
}

/// Bytes as a person reads them, in MiB rounded up.
pub fn mib(bytes: u64) -> String {
    format!("{} MiB", bytes.div_ceil(1 << 20))
}

/// Kernel memory per Maglev slot: a u32, which an array map stores in 8
/// bytes.
const TABLE_SLOT_BYTES: u64 = 8;

fn table_bytes(size: u32) -> u64 {
    u64::from(size) * TABLE_SLOT_BYTES
}

/// Everything the controller wants the data plane to do.
#[derive(Clone, Debug)]
pub struct Desired {
    /// Seed of the flow hash and of Maglev permutations.
    pub hash_seed: u32,
    vips: BTreeMap<Vip, VipState>,
    vip_ids: Ids,
    backend_ids: Ids,
    /// VIP addresses an operator withdrew from the routers.
    withdrawn: BTreeSet<IpAddr>,
    /// What the Maglev tables may take ([`Limits::table_bytes`]).
    table_budget: u64,
}

impl Desired {
    /// An empty state with the given seed and the default limits.
    pub fn new(hash_seed: u32) -> Self {
        Self::limited(hash_seed, Limits::default())
    }

    /// An empty state with the given seed and limits.
    pub fn limited(hash_seed: u32, limits: Limits) -> Self {
        Self {
            hash_seed,
            vips: BTreeMap::new(),
            vip_ids: Ids::new(limits.vips),
            backend_ids: Ids::new(limits.workers),
            withdrawn: BTreeSet::new(),
            table_budget: limits.table_bytes,
        }
    }

    /// A saved state, checked whole: what `add_vip`, `add_worker` and
    /// `pin` would have refused is refused, and ids must be unique. It has
    /// no limits until [`Self::within`] gives it some.
    pub fn restore(hash_seed: u32, vips: BTreeMap<Vip, VipState>) -> Result<Self, StateError> {
        Self::restore_within(hash_seed, vips, Limits::NONE)
    }

    /// This state under `limits`, if it fits them.
    pub fn within(self, limits: Limits) -> Result<Self, StateError> {
        let workers: usize = self.vips.values().map(|v| v.workers.len()).sum();
        if self.vips.len() > limits.vips as usize {
            return Err(StateError::TooManyVips(limits.vips));
        }
        if workers > limits.workers as usize {
            return Err(StateError::TooManyBackends(limits.workers));
        }
        check_tables(
            tables_need(self.vips.values().map(VipState::effective_table_size)),
            limits,
        )?;
        let withdrawn = self.withdrawn;
        let mut limited = Self::restore_within(self.hash_seed, self.vips, limits)?;
        limited.withdrawn = withdrawn;
        Ok(limited)
    }

    fn restore_within(
        hash_seed: u32,
        vips: BTreeMap<Vip, VipState>,
        limits: Limits,
    ) -> Result<Self, StateError> {
        for (vip, state) in &vips {
            let mut check = Self::limited(hash_seed, Limits::NONE);
            check.add_vip(*vip, state.options.clone())?;
            for (addr, worker) in &state.workers {
                check.add_worker_on(vip, *addr, worker.port, worker.weight)?;
            }
            for (client, worker) in &state.pins {
                check.pin_masked(vip, *client, *worker)?;
            }
        }
        let vip_ids: Vec<u32> = vips.values().map(|v| v.id).collect();
        let backend_ids: Vec<u32> = vips
            .values()
            .flat_map(|v| v.workers.values().map(|w| w.id))
            .collect();
        Ok(Self {
            hash_seed,
            vip_ids: Ids::with_used(limits.vips, &vip_ids)?,
            backend_ids: Ids::with_used(limits.workers, &backend_ids)?,
            vips,
            withdrawn: BTreeSet::new(),
            table_budget: limits.table_bytes,
        })
    }

    /// Refuses a change that leaves `vip`'s table at `size` when the
    /// tables after it would pass the budget, by the rule a start applies
    /// ([`tables_need`]): what is accepted now starts again.
    fn fits_tables(&self, vip: &Vip, size: u32) -> Result<(), StateError> {
        let others = self
            .vips
            .iter()
            .filter(|(v, _)| *v != vip)
            .map(|(_, state)| state.effective_table_size());
        check_tables(
            tables_need(others.chain([size])),
            Limits {
                table_bytes: self.table_budget,
                ..Limits::NONE
            },
        )
    }

    /// This state with the addresses in `withdrawn` withdrawn, those of
    /// them that still have a VIP (a saved state's).
    pub fn with_withdrawn(mut self, withdrawn: BTreeSet<IpAddr>) -> Self {
        let addresses = self.addresses();
        self.withdrawn = withdrawn.intersection(&addresses).copied().collect();
        self
    }

    /// The addresses of the VIPs.
    pub fn addresses(&self) -> BTreeSet<IpAddr> {
        self.vips.keys().map(|v| v.addr).collect()
    }

    /// The VIP addresses an operator withdrew.
    pub fn withdrawn(&self) -> &BTreeSet<IpAddr> {
        &self.withdrawn
    }

    /// Withdraws (or with `withdraw` false restores) `addresses`, every VIP
    /// address when none are named; returns the addresses it applied to.
    /// Refused whole when one has no VIP.
    pub fn set_withdrawn(
        &mut self,
        addresses: &[IpAddr],
        withdraw: bool,
    ) -> Result<Vec<IpAddr>, StateError> {
        let known = self.addresses();
        if let Some(unknown) = addresses.iter().find(|a| !known.contains(a)) {
            return Err(StateError::NoVipOn(*unknown));
        }
        let chosen: Vec<IpAddr> = if addresses.is_empty() {
            known.into_iter().collect()
        } else {
            addresses.to_vec()
        };
        for addr in &chosen {
            if withdraw {
                self.withdrawn.insert(*addr);
            } else {
                self.withdrawn.remove(addr);
            }
        }
        Ok(chosen)
    }

    /// This state changed to match `target` (a config file) while keeping
    /// the ids of VIPs and workers that both have, so that flows in the
    /// pinned maps keep their workers.
    pub fn reconciled(&self, target: &Desired) -> Result<Desired, StateError> {
        let mut next = self.clone();
        next.hash_seed = target.hash_seed;
        let gone: Vec<Vip> = next
            .vips
            .keys()
            .filter(|v| !target.vips.contains_key(v))
            .copied()
            .collect();
        for vip in gone {
            next.del_vip(&vip)?;
        }
        for (vip, wanted) in &target.vips {
            next.reconcile_vip(vip, wanted)?;
        }
        Ok(next)
    }

    fn reconcile_vip(&mut self, vip: &Vip, wanted: &VipState) -> Result<(), StateError> {
        if !self.vips.contains_key(vip) {
            self.add_vip(*vip, wanted.options.clone())?;
        }
        let state = self.vips.get_mut(vip).ok_or(StateError::UnknownVip(*vip))?;
        state.pins.clear();
        self.set_options(vip, wanted.options.clone())?;
        let state = self.vip(vip)?;
        let gone: Vec<IpAddr> = state
            .workers
            .keys()
            .filter(|w| !wanted.workers.contains_key(w))
            .copied()
            .collect();
        for worker in gone {
            self.del_worker(vip, worker)?;
        }
        for (addr, worker) in &wanted.workers {
            let port = worker.port.filter(|&p| p != vip.port);
            if self.worker(vip, *addr).is_ok_and(|w| w.port != port) {
                self.del_worker(vip, *addr)?;
            }
            if self.worker(vip, *addr).is_err() {
                self.add_worker_on(vip, *addr, worker.port, worker.weight)?;
            }
            self.set_weight(vip, *addr, worker.weight)?;
            self.set_drain(vip, *addr, worker.drain)?;
        }
        for (client, worker) in &wanted.pins {
            self.pin_masked(vip, *client, *worker)?;
        }
        Ok(())
    }

    /// The VIPs, ordered.
    pub fn vips(&self) -> &BTreeMap<Vip, VipState> {
        &self.vips
    }

    /// One VIP.
    pub fn vip(&self, vip: &Vip) -> Result<&VipState, StateError> {
        self.vips.get(vip).ok_or(StateError::UnknownVip(*vip))
    }

    /// Adds a VIP with no workers.
    pub fn add_vip(&mut self, vip: Vip, options: VipOptions) -> Result<&VipState, StateError> {
        if self.vips.contains_key(&vip) {
            return Err(StateError::VipExists(vip));
        }
        if let Some(problem) = crate::service::unicast_problem(vip.addr) {
            return Err(StateError::NotUnicast {
                what: "VIP",
                addr: vip.addr,
                problem,
            });
        }
        check_options(&vip, &options)?;
        let size = options
            .table_size
            .unwrap_or_else(|| maglev::table_size_for(0));
        self.fits_tables(&vip, size)?;
        let id = self
            .vip_ids
            .take()
            .ok_or(StateError::TooManyVips(self.vip_ids.limit))?;
        Ok(self.vips.entry(vip).or_insert(VipState {
            id,
            options,
            workers: BTreeMap::new(),
            pins: BTreeMap::new(),
        }))
    }

    /// Replaces a VIP's settings. A new sticky prefix is refused while the
    /// VIP has pins (they are keyed by the old one).
    pub fn set_options(&mut self, vip: &Vip, options: VipOptions) -> Result<(), StateError> {
        check_options(vip, &options)?;
        let workers = self.vip(vip)?.workers.len();
        let size = options
            .table_size
            .unwrap_or_else(|| maglev::table_size_for(workers));
        self.fits_tables(vip, size)?;
        let state = self.vips.get_mut(vip).ok_or(StateError::UnknownVip(*vip))?;
        if !state.pins.is_empty() && options.prefix_for(vip) != state.options.prefix_for(vip) {
            return Err(StateError::PinsBlockPrefix(*vip));
        }
        if !options.forward.is_l3() || options.forward.is_nat() {
            if let Some(&worker) = state
                .workers
                .keys()
                .find(|w| w.is_ipv4() != vip.addr.is_ipv4())
            {
                return Err(StateError::FamilyMismatch { vip: *vip, worker });
            }
        }
        if !options.forward.is_nat() {
            if let Some((worker, port)) = state
                .workers
                .iter()
                .find_map(|(addr, w)| Some((*addr, w.port?)))
            {
                return Err(StateError::PortsBlockMethod {
                    vip: *vip,
                    worker,
                    port,
                });
            }
        }
        state.options = options;
        Ok(())
    }

    /// Removes a VIP and its workers; returns what it was.
    pub fn del_vip(&mut self, vip: &Vip) -> Result<VipState, StateError> {
        let state = self.vips.remove(vip).ok_or(StateError::UnknownVip(*vip))?;
        // A withdrawal goes with the address's last VIP: a VIP added there
        // later is announced as any new one is.
        if !self.vips.keys().any(|v| v.addr == vip.addr) {
            self.withdrawn.remove(&vip.addr);
        }
        self.vip_ids.free(state.id);
        for worker in state.workers.values() {
            self.backend_ids.free(worker.id);
        }
        Ok(state)
    }

    /// Adds a worker to a VIP; returns its backend id.
    pub fn add_worker(&mut self, vip: &Vip, addr: IpAddr, weight: u32) -> Result<u32, StateError> {
        self.add_worker_on(vip, addr, None, weight)
    }

    /// Adds a worker serving on `port` (none, or the VIP's: the VIP's) to
    /// a VIP; returns its backend id.
    pub fn add_worker_on(
        &mut self,
        vip: &Vip,
        addr: IpAddr,
        port: Option<u16>,
        weight: u32,
    ) -> Result<u32, StateError> {
        check_weight(weight)?;
        if let Some(problem) = crate::service::unicast_problem(addr) {
            return Err(StateError::NotUnicast {
                what: "worker",
                addr,
                problem,
            });
        }
        if addr == vip.addr {
            return Err(StateError::WorkerIsVip(addr));
        }
        let port = port.filter(|&p| p != vip.port);
        let forward = self.vip(vip)?.options.forward;
        if let Some(port) = port {
            if !forward.is_nat() {
                return Err(StateError::PortNotNat {
                    vip: *vip,
                    worker: addr,
                    port,
                    vip_port: vip.port,
                    forward,
                });
            }
        }
        if forward == Forward::Nat {
            self.nat_worker_free(vip, addr, port.unwrap_or(vip.port))?;
        }
        let grown = self.vip(vip).map(|state| {
            state
                .options
                .table_size
                .unwrap_or_else(|| maglev::table_size_for(state.workers.len() + 1))
        })?;
        self.fits_tables(vip, grown)?;
        let state = self.vips.get_mut(vip).ok_or(StateError::UnknownVip(*vip))?;
        let other_family = vip.addr.is_ipv4() != addr.is_ipv4();
        if other_family && (!forward.is_l3() || forward.is_nat()) {
            return Err(StateError::FamilyMismatch {
                vip: *vip,
                worker: addr,
            });
        }
        if state.workers.contains_key(&addr) {
            return Err(StateError::DuplicateWorker {
                vip: *vip,
                worker: addr,
            });
        }
        let id = self
            .backend_ids
            .take()
            .ok_or(StateError::TooManyBackends(self.backend_ids.limit))?;
        state.workers.insert(
            addr,
            Worker {
                id,
                port,
                weight,
                drain: false,
                remove_by: None,
            },
        );
        Ok(id)
    }

    /// Refuses a `nat` worker whose address and port already serve another
    /// `nat` VIP of the protocol: its replies are told apart by them.
    fn nat_worker_free(&self, vip: &Vip, addr: IpAddr, port: u16) -> Result<(), StateError> {
        let taken = self.vips.iter().find(|(other, state)| {
            *other != vip
                && other.proto == vip.proto
                && state.options.forward == Forward::Nat
                && state
                    .workers
                    .get(&addr)
                    .is_some_and(|w| w.port.unwrap_or(other.port) == port)
        });
        match taken {
            Some((other, _)) => Err(StateError::NatWorkerTaken {
                worker: addr,
                port,
                other: *other,
            }),
            None => Ok(()),
        }
    }

    /// A worker of a VIP.
    pub fn worker(&self, vip: &Vip, addr: IpAddr) -> Result<&Worker, StateError> {
        self.vip(vip)?
            .workers
            .get(&addr)
            .ok_or(StateError::UnknownWorker {
                vip: *vip,
                worker: addr,
            })
    }

    fn worker_mut(&mut self, vip: &Vip, addr: IpAddr) -> Result<&mut Worker, StateError> {
        let state = self.vips.get_mut(vip).ok_or(StateError::UnknownVip(*vip))?;
        state
            .workers
            .get_mut(&addr)
            .ok_or(StateError::UnknownWorker {
                vip: *vip,
                worker: addr,
            })
    }

    /// Changes a worker's weight.
    pub fn set_weight(&mut self, vip: &Vip, addr: IpAddr, weight: u32) -> Result<(), StateError> {
        check_weight(weight)?;
        self.worker_mut(vip, addr)?.weight = weight;
        Ok(())
    }

    /// Starts or stops draining a worker; returns its id. Stopping also
    /// calls off its graceful removal.
    pub fn set_drain(&mut self, vip: &Vip, addr: IpAddr, drain: bool) -> Result<u32, StateError> {
        let worker = self.worker_mut(vip, addr)?;
        worker.drain = drain;
        if !drain {
            worker.remove_by = None;
        }
        Ok(worker.id)
    }

    /// Drains a worker, to be removed once its flows end or at `deadline`
    /// (Unix seconds) at the latest; returns its id.
    pub fn remove_by(&mut self, vip: &Vip, addr: IpAddr, deadline: u64) -> Result<u32, StateError> {
        let worker = self.worker_mut(vip, addr)?;
        worker.drain = true;
        worker.remove_by = Some(deadline);
        Ok(worker.id)
    }

    /// Pins `client`'s sticky prefix (the VIP's) to a worker; returns
    /// the masked client the pin is kept under.
    pub fn pin(&mut self, vip: &Vip, client: IpAddr, worker: IpAddr) -> Result<IpAddr, StateError> {
        if let Some(problem) = no_client(client) {
            return Err(StateError::NotAClient { client, problem });
        }
        self.pin_masked(vip, client, worker)
    }

    /// [`Self::pin`] for a client masked already (a saved or reconciled
    /// pin), which may be 0.0.0.0 or `::` under a short sticky prefix.
    fn pin_masked(
        &mut self,
        vip: &Vip,
        client: IpAddr,
        worker: IpAddr,
    ) -> Result<IpAddr, StateError> {
        if vip.addr.is_ipv4() != client.is_ipv4() {
            return Err(StateError::ClientFamilyMismatch { vip: *vip, client });
        }
        let state = self.vips.get_mut(vip).ok_or(StateError::UnknownVip(*vip))?;
        if !state.workers.contains_key(&worker) {
            return Err(StateError::PinToUnknownWorker {
                vip: *vip,
                client,
                worker,
            });
        }
        let masked = crate::service::mask_addr(client, state.options.prefix_for(vip));
        state.pins.insert(masked, worker);
        Ok(masked)
    }

    /// Removes the pin of `client`'s sticky prefix; returns the pinned
    /// (masked) client.
    pub fn unpin(&mut self, vip: &Vip, client: IpAddr) -> Result<IpAddr, StateError> {
        let state = self.vips.get_mut(vip).ok_or(StateError::UnknownVip(*vip))?;
        let prefix = state.options.prefix_for(vip);
        let masked = crate::service::mask_addr(client, prefix);
        match state.pins.remove(&masked) {
            Some(_) => Ok(masked),
            None => Err(StateError::UnknownPin {
                vip: *vip,
                client,
                prefix,
                masked,
            }),
        }
    }

    /// Removes a worker from a VIP; returns its backend id.
    pub fn del_worker(&mut self, vip: &Vip, addr: IpAddr) -> Result<u32, StateError> {
        let state = self.vips.get_mut(vip).ok_or(StateError::UnknownVip(*vip))?;
        let worker = state
            .workers
            .remove(&addr)
            .ok_or(StateError::UnknownWorker {
                vip: *vip,
                worker: addr,
            })?;
        state.pins.retain(|_, pinned| *pinned != addr);
        self.backend_ids.free(worker.id);
        Ok(worker.id)
    }
}

/// A VIP's settings, table size included (a prime in range).
/// What tables of `sizes` need: all of them, and the largest once more,
/// for the moment any one is rebuilt into a fresh map and swapped in.
fn tables_need(sizes: impl Iterator<Item = u32>) -> u64 {
    let (sum, largest) = sizes.fold((0, 0), |(sum, largest), size| {
        (sum + table_bytes(size), largest.max(table_bytes(size)))
    });
    sum + largest
}

/// Refuses tables that need more than `limits` gives them.
fn check_tables(needed: u64, limits: Limits) -> Result<(), StateError> {
    if needed > limits.table_bytes {
        return Err(StateError::TablesTooLarge {
            needed,
            budget: limits.table_bytes,
        });
    }
    Ok(())
}

fn check_options(vip: &Vip, options: &VipOptions) -> Result<(), StateError> {
    options.validate(vip)?;
    match options.table_size {
        Some(size)
            if !(7..=MAX_TABLE_SIZE).contains(&size) || !maglev::is_prime(u64::from(size)) =>
        {
            Err(StateError::BadTableSize(size))
        }
        _ => Ok(()),
    }
}

/// Why no packet comes from `client`, if none does: a pin for it would
/// pin nobody.
fn no_client(client: IpAddr) -> Option<&'static str> {
    match client {
        IpAddr::V4(v4) if v4.octets()[0] == 0 => {
            Some("is \"this network\" (0.0.0.0/8), no client's address")
        }
        IpAddr::V6(v6) if v6.is_unspecified() => {
            Some("is the unspecified address, no client's address")
        }
        _ => None,
    }
}

fn check_weight(weight: u32) -> Result<(), StateError> {
    if (1..=65535).contains(&weight) {
        Ok(())
    } else {
        Err(StateError::BadWeight(weight))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vip(text: &str) -> Vip {
        text.parse().unwrap()
    }

    #[test]
    fn addresses_that_are_no_single_host_are_refused_as_vips_and_workers() {
        let mut state = Desired::new(7);
        for bad in [
            "0.0.0.0:80/tcp",
            "127.0.0.1:80/tcp",
            "224.0.0.1:80/tcp",
            "255.255.255.255:80/tcp",
            "[::1]:80/tcp",
            "[::ffff:192.0.2.100]:80/tcp",
            "[::192.0.2.100]:80/tcp",
            "[ff02::1]:53/udp",
        ] {
            let error = state.add_vip(vip(bad), VipOptions::default()).unwrap_err();
            assert!(
                matches!(error, StateError::NotUnicast { .. }),
                "{bad}: {error}"
            );
        }
        let v4 = vip("192.0.2.100:80/tcp");
        state.add_vip(v4, VipOptions::default()).unwrap();
        for bad in [
            "0.0.0.0",
            "127.0.0.1",
            "239.1.2.3",
            "255.255.255.255",
            "169.254.1.1",
        ] {
            let error = state
                .add_worker(&v4, bad.parse().unwrap(), 100)
                .unwrap_err();
            assert!(
                error.to_string().starts_with(&format!("worker {bad} ")),
                "{error}"
            );
        }
        let error = state
            .add_worker(&v4, "192.0.2.100".parse().unwrap(), 100)
            .unwrap_err();
        assert_eq!(
            error,
            StateError::WorkerIsVip("192.0.2.100".parse().unwrap())
        );
        assert!(state.vip(&v4).unwrap().workers.is_empty());
        let v6 = vip("[2001:db8::100]:80/tcp");
        state.add_vip(v6, VipOptions::default()).unwrap();
        let error = state
            .add_worker(&v6, "::192.0.2.11".parse().unwrap(), 100)
            .unwrap_err();
        assert!(error.to_string().contains("IPv4-compatible"), "{error}");
        assert!(state.vip(&v6).unwrap().workers.is_empty());
    }

    #[test]
    fn a_pin_for_no_client_is_refused_but_a_saved_pin_of_every_client_is_kept() {
        let mut state = Desired::new(7);
        let v4 = vip("192.0.2.100:80/tcp");
        let v6 = vip("[2001:db8::100]:80/tcp");
        let every_client = VipOptions {
            sticky_prefix: Some(0),
            ..Default::default()
        };
        for (v, worker) in [(v4, "192.0.2.11"), (v6, "2001:db8::11")] {
            state.add_vip(v, every_client.clone()).unwrap();
            state.add_worker(&v, worker.parse().unwrap(), 100).unwrap();
        }
        let before = format!("{:?}", state.vips());
        for (v, client, worker) in [
            (v4, "0.0.0.0", "192.0.2.11"),
            (v4, "0.1.2.3", "192.0.2.11"),
            (v6, "::", "2001:db8::11"),
        ] {
            let error = state
                .pin(&v, client.parse().unwrap(), worker.parse().unwrap())
                .unwrap_err();
            assert!(
                error.to_string().starts_with(&format!("client {client} ")),
                "{error}"
            );
        }
        assert_eq!(format!("{:?}", state.vips()), before);
        // Under /0 a real client's pin is kept as 0.0.0.0: it restores.
        let masked = state
            .pin(
                &v4,
                "198.51.100.7".parse().unwrap(),
                "192.0.2.11".parse().unwrap(),
            )
            .unwrap();
        assert_eq!(masked, "0.0.0.0".parse::<IpAddr>().unwrap());
        let restored = Desired::restore(7, state.vips().clone()).unwrap();
        assert_eq!(restored.vips(), state.vips());
        let reconciled = Desired::new(7).reconciled(&state).unwrap();
        assert_eq!(reconciled.vips(), state.vips());
    }

    #[test]
    fn pin_errors_name_the_client_as_given() {
        let mut state = Desired::new(7);
        let v6 = vip("[2001:db8::100]:80/tcp");
        let options = VipOptions {
            sticky_prefix: Some(64),
            ..Default::default()
        };
        state.add_vip(v6, options).unwrap();
        state
            .add_worker(&v6, "2001:db8::11".parse().unwrap(), 100)
            .unwrap();
        let client: IpAddr = "2001:db8::5".parse().unwrap();
        let error = state
            .pin(&v6, client, "2001:db8::99".parse().unwrap())
            .unwrap_err();
        assert!(
            error.to_string().contains("cannot pin 2001:db8::5 to"),
            "{error}"
        );
        let error = state.unpin(&v6, client).unwrap_err();
        assert_eq!(
            error.to_string(),
            "client 2001:db8::5 is not pinned on [2001:db8::100]:80/tcp (pins are kept per /64: none holds 2001:db8::)"
        );
        let masked = state
            .pin(&v6, client, "2001:db8::11".parse().unwrap())
            .unwrap();
        assert_eq!(masked, "2001:db8::".parse::<IpAddr>().unwrap());
        assert_eq!(
            state.unpin(&v6, "2001:db8::77".parse().unwrap()).unwrap(),
            masked
        );
    }

    #[test]
    fn bad_changes_are_refused_and_change_nothing() {
        let mut state = Desired::new(7);
        let v4 = vip("192.0.2.100:80/tcp");
        state.add_vip(v4, VipOptions::default()).unwrap();
        state
            .add_worker(&v4, "192.0.2.11".parse().unwrap(), 100)
            .unwrap();
        let before = format!("{:?}", state.vips());
        let errors = [
            state
                .add_vip(v4, VipOptions::default())
                .map(|_| ())
                .unwrap_err(),
            state
                .add_vip(
                    vip("192.0.2.101:80/tcp"),
                    VipOptions {
                        table_size: Some(16380),
                        ..Default::default()
                    },
                )
                .map(|_| ())
                .unwrap_err(),
            state
                .add_worker(&v4, "192.0.2.11".parse().unwrap(), 1)
                .map(drop)
                .unwrap_err(),
            state
                .add_worker(&v4, "2001:db8::11".parse().unwrap(), 1)
                .map(drop)
                .unwrap_err(),
            state
                .add_worker(&v4, "192.0.2.12".parse().unwrap(), 0)
                .map(drop)
                .unwrap_err(),
            state
                .add_worker(&vip("192.0.2.1:1/udp"), "192.0.2.12".parse().unwrap(), 1)
                .map(drop)
                .unwrap_err(),
            state
                .del_worker(&v4, "192.0.2.99".parse().unwrap())
                .map(drop)
                .unwrap_err(),
            state
                .set_weight(&v4, "192.0.2.11".parse().unwrap(), 0)
                .unwrap_err(),
            state
                .set_drain(&v4, "192.0.2.99".parse().unwrap(), true)
                .map(drop)
                .unwrap_err(),
            state
                .pin(
                    &v4,
                    "198.51.100.1".parse().unwrap(),
                    "192.0.2.99".parse().unwrap(),
                )
                .unwrap_err(),
            state
                .pin(
                    &v4,
                    "2001:db8::1".parse().unwrap(),
                    "192.0.2.11".parse().unwrap(),
                )
                .unwrap_err(),
        ];
        assert_eq!(errors.len(), 11);
        assert_eq!(format!("{:?}", state.vips()), before);
    }

    #[test]
    fn a_graceful_removal_has_a_wall_clock_deadline_that_undrain_calls_off() {
        use std::time::{Duration, UNIX_EPOCH};
        let now = UNIX_EPOCH + Duration::from_millis(1_000_500);
        assert_eq!(deadline_after(now, Duration::from_secs(20)), 1_021);
        assert_eq!(deadline_after(now, Duration::from_millis(500)), 1_001);
        let mut state = Desired::new(0);
        let v = vip("192.0.2.100:80/tcp");
        let w: IpAddr = "192.0.2.11".parse().unwrap();
        state.add_vip(v, VipOptions::default()).unwrap();
        state.add_worker(&v, w, 1).unwrap();
        state.remove_by(&v, w, 1_021).unwrap();
        let worker = state.worker(&v, w).unwrap();
        assert!(worker.drain);
        let deadline = worker.remove_by.unwrap();
        let at = |secs| UNIX_EPOCH + Duration::from_secs(secs);
        assert_eq!(time_until(deadline, at(1_020)), Duration::from_secs(1));
        assert_eq!(time_until(deadline, at(1_021)), Duration::ZERO);
        assert_eq!(time_until(deadline, at(2_000)), Duration::ZERO);
        let year = Duration::from_secs(365 * 24 * 3600);
        assert_eq!(time_until(u64::MAX, at(0)), year, "no overflow");
        let mut config = Desired::new(0);
        config.add_vip(v, VipOptions::default()).unwrap();
        config.add_worker(&v, w, 1).unwrap();
        let reconciled = state.reconciled(&config).unwrap();
        assert_eq!(
            reconciled.worker(&v, w).unwrap().remove_by,
            None,
            "a config that has the worker serving wins"
        );
        state.set_drain(&v, w, false).unwrap();
        assert_eq!(state.worker(&v, w).unwrap().remove_by, None);
    }

    #[test]
    fn the_maglev_tables_stay_within_their_memory() {
        // Room for three tables of 65537 slots: two VIPs, and the one
        // more that a swap needs.
        let budget = 3 * table_bytes(65_537);
        let limits = Limits {
            table_bytes: budget,
            ..Limits::NONE
        };
        let mut state = Desired::limited(0, limits);
        let large = VipOptions {
            table_size: Some(65_537),
            ..VipOptions::default()
        };
        let (a, b) = (vip("192.0.2.100:80/tcp"), vip("192.0.2.101:80/tcp"));
        state.add_vip(a, large.clone()).unwrap();
        state.add_vip(b, large.clone()).unwrap();
        let third = state.add_vip(vip("192.0.2.102:80/tcp"), large.clone());
        let error = third.unwrap_err();
        assert!(
            matches!(error, StateError::TablesTooLarge { .. }),
            "{error}"
        );
        assert!(
            error
                .to_string()
                .starts_with("the Maglev tables would need about 3 MiB of kernel memory"),
            "{error}"
        );
        let larger = VipOptions {
            table_size: Some(131_071),
            ..VipOptions::default()
        };
        assert!(state.set_options(&a, larger).is_err(), "a table that grows");
        let small = VipOptions {
            table_size: Some(7),
            ..VipOptions::default()
        };
        state.set_options(&b, small.clone()).unwrap();
        state.add_vip(vip("192.0.2.102:80/tcp"), small).unwrap();
        let saved = state.clone();
        assert!(
            saved
                .within(Limits {
                    table_bytes: 2 * table_bytes(65_537),
                    ..Limits::NONE
                })
                .is_err(),
            "a saved state is held to the budget at start"
        );
    }

    #[test]
    fn limits_bound_what_a_state_holds_and_keep_its_ids() {
        let mut state = Desired::limited(0, Limits::NONE);
        for last in [100, 101, 102] {
            let v = vip(&format!("192.0.2.{last}:80/tcp"));
            state.add_vip(v, VipOptions::default()).unwrap();
            state
                .add_worker(&v, "192.0.2.11".parse().unwrap(), 1)
                .unwrap();
        }
        let too_few_vips = Limits {
            vips: 2,
            workers: 8,
            ..Limits::NONE
        };
        assert!(matches!(
            state.clone().within(too_few_vips),
            Err(StateError::TooManyVips(2))
        ));
        let too_few_workers = Limits {
            vips: 8,
            workers: 2,
            ..Limits::NONE
        };
        assert!(matches!(
            state.clone().within(too_few_workers),
            Err(StateError::TooManyBackends(2))
        ));
        let exact = Limits {
            vips: 3,
            workers: 3,
            ..Limits::NONE
        };
        let mut bounded = state.clone().within(exact).unwrap();
        let v = vip("192.0.2.100:80/tcp");
        assert_eq!(
            bounded
                .worker(&v, "192.0.2.11".parse().unwrap())
                .unwrap()
                .id,
            state.worker(&v, "192.0.2.11".parse().unwrap()).unwrap().id
        );
        assert!(matches!(
            bounded.add_worker(&v, "192.0.2.12".parse().unwrap(), 1),
            Err(StateError::TooManyBackends(3))
        ));
        assert!(matches!(
            bounded.add_vip(vip("192.0.2.103:80/tcp"), VipOptions::default()),
            Err(StateError::TooManyVips(3))
        ));
    }

    #[test]
    fn withdrawals_name_vip_addresses_and_go_with_the_last_vip_there() {
        let mut desired = Desired::new(1);
        let (a, b) = (vip("192.0.2.100:80/tcp"), vip("192.0.2.100:53/udp"));
        let c = vip("[2001:db8::100]:80/tcp");
        for v in [a, b, c] {
            desired.add_vip(v, VipOptions::default()).unwrap();
        }
        let unknown: IpAddr = "192.0.2.199".parse().unwrap();
        assert_eq!(
            desired.set_withdrawn(&[a.addr, unknown], true),
            Err(StateError::NoVipOn(unknown))
        );
        assert!(desired.withdrawn().is_empty(), "refused whole");
        assert_eq!(
            desired.set_withdrawn(&[], true).unwrap(),
            vec![a.addr, c.addr]
        );
        desired.set_withdrawn(&[c.addr], false).unwrap();
        assert_eq!(desired.withdrawn(), &BTreeSet::from([a.addr]));
        desired.del_vip(&a).unwrap();
        assert_eq!(desired.withdrawn(), &BTreeSet::from([a.addr]), "b is left");
        desired.del_vip(&b).unwrap();
        assert!(desired.withdrawn().is_empty());
    }

    #[test]
    fn freed_backend_ids_are_reused_last() {
        let mut state = Desired::new(0);
        let v = vip("192.0.2.100:80/tcp");
        state.add_vip(v, VipOptions::default()).unwrap();
        let a = state
            .add_worker(&v, "192.0.2.11".parse().unwrap(), 1)
            .unwrap();
        state.del_worker(&v, "192.0.2.11".parse().unwrap()).unwrap();
        let b = state
            .add_worker(&v, "192.0.2.12".parse().unwrap(), 1)
            .unwrap();
        assert_ne!(
            a, b,
            "a removed worker's id is not handed out while fresh ones remain"
        );
    }

    #[test]
    fn reconciling_with_a_config_keeps_the_ids_of_what_both_have() {
        let v = vip("192.0.2.100:80/tcp");
        let gone = vip("192.0.2.101:80/tcp");
        let mut saved = Desired::new(1);
        saved.add_vip(gone, VipOptions::default()).unwrap();
        saved.add_vip(v, VipOptions::default()).unwrap();
        for last in [11, 12] {
            let addr = format!("192.0.2.{last}").parse().unwrap();
            saved.add_worker(&v, addr, 100).unwrap();
        }
        let kept = saved.worker(&v, "192.0.2.12".parse().unwrap()).unwrap().id;
        let mut config = Desired::new(9);
        config
            .add_vip(
                v,
                VipOptions {
                    sticky: Some(std::time::Duration::from_secs(60)),
                    ..Default::default()
                },
            )
            .unwrap();
        for last in [12, 13] {
            let addr = format!("192.0.2.{last}").parse().unwrap();
            config.add_worker(&v, addr, 50).unwrap();
        }
        let next = saved.reconciled(&config).unwrap();
        assert_eq!(next.hash_seed, 9, "the config wins");
        assert!(next.vip(&gone).is_err());
        let state = next.vip(&v).unwrap();
        assert_eq!(state.id, saved.vip(&v).unwrap().id);
        assert_eq!(
            state.options.sticky,
            Some(std::time::Duration::from_secs(60))
        );
        let addrs: Vec<String> = state.workers.keys().map(|a| a.to_string()).collect();
        assert_eq!(addrs, ["192.0.2.12", "192.0.2.13"]);
        let w12 = &state.workers[&"192.0.2.12".parse::<IpAddr>().unwrap()];
        assert_eq!((w12.id, w12.weight), (kept, 50));
    }
}
