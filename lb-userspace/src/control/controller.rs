//! The controller: applies desired-state changes to the maps, and keeps
//! what it learns about workers (MAC, health, load, active flows) current
//! in the maps the data plane reads.

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use lb_common::balancer::{
    StickyKey, BACKEND_DOWN, BACKEND_DRAINING, BACKEND_MAC_KNOWN, BACKEND_UNREACHABLE, LOAD_UNKNOWN,
};

pub mod actor;
mod announcing;
mod feedback;
mod listing;

pub use listing::MetricsSnapshot;

use crate::{
    admin::protocol::{Request, Response},
    checks::health::{self, Health, HealthState},
    checks::load::{self, Figure, Source},
    checks::tunnel::{Encapsulation, Tunnel},
    dataplane::maps::{ControlMaps, WorkerEntry},
    dataplane::nat::NatWorker,
    dataplane::sessions,
    dataplane::{PinCheck, PinGuard},
    desired::options::{CheckKind, Forward, VipOptions},
    desired::state::{self, Desired},
    desired::state_file::StateFile,
    duration,
    kernel::neighbour,
    kernel::netlink::Netlink,
    service::{self, Vip},
};

/// How long a worker whose MAC was known may stay unresolved before it
/// counts as unreachable: longer than the kernel's three one-second
/// solicitations.
const UNRESOLVED_GRACE: Duration = Duration::from_secs(4);
/// How long `backend del --graceful` waits for flows to end by default.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(300);

/// One of the interfaces lb runs on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    /// Its name.
    pub name: String,
    /// Its index.
    pub index: u32,
    /// Its MAC address: the source of what lb sends out of it.
    pub mac: [u8; 6],
}

impl Instance {
    /// The interfaces' names, for messages: `eth0` or `eth0, eth1`.
    pub fn iface_names(&self) -> String {
        let names: Vec<&str> = self.ifaces.iter().map(|i| i.name.as_str()).collect();
        names.join(", ")
    }

    /// The interfaces' indexes.
    pub fn ifindexes(&self) -> Vec<u32> {
        self.ifaces.iter().map(|i| i.index).collect()
    }

    /// The egress slot of interface `ifindex` ([`WorkerEntry::egress`]):
    /// 0 with one interface (a frame leaves where it came in), else its
    /// place in `--iface` order from 1.
    fn egress_slot(&self, ifindex: u32) -> u8 {
        if self.ifaces.len() < 2 {
            return 0;
        }
        self.ifaces
            .iter()
            .position(|i| i.index == ifindex)
            .map_or(0, |at| at as u8 + 1)
    }
}

/// Static facts about the instance, for `lb status`.
#[derive(Clone, Debug)]
pub struct Instance {
    /// The instance's name.
    pub name: String,
    /// lb's interfaces, in `--iface` order (never empty).
    pub ifaces: Vec<Interface>,
    /// native or generic.
    pub xdp_mode: String,
    /// Program id.
    pub program_id: u32,
    /// Pin directory.
    pub pin_dir: PathBuf,
    /// Flow table capacity.
    pub max_flows: u32,
    /// NAT table capacity.
    pub max_nat_flows: u32,
    /// VIPs and workers the maps hold.
    pub limits: crate::desired::state::Limits,
    /// Outer sources and MTU of IPIP and GUE.
    pub tunnels: crate::control::tunnel::Tunnels,
    /// NAT sources and ports.
    pub nat: crate::dataplane::nat::NatSettings,
    /// Load report endpoint, if enabled.
    pub load_listen: Option<String>,
    /// lb's own TCP endpoints, which no VIP may hide.
    pub endpoints: Vec<service::Endpoint>,
    /// Routing table of VIP announcements, if enabled.
    pub announce_table: Option<u32>,
}

/// Whether the program still runs on the interface, and whether its pins
/// are whole, as the controller last checked through its references to
/// the link and the maps.
#[derive(Clone, Debug, Default)]
pub struct Attachment {
    /// Why it no longer runs; `None` while it does.
    pub lost: Option<String>,
    /// How often the link's pin was found removed and pinned again.
    pub repins: u64,
    /// Why the pins are not whole (or not in a directory only lb may
    /// write) and were not pinned again; `None` while they are.
    pub unpinned: Option<String>,
    /// How often pins were found removed and pinned again.
    pub restores: u64,
}

/// Changes in force that the state file doesn't hold yet: the last save
/// failed (a full disk, a read-only file system), and lb retries every
/// second until one succeeds.
#[derive(Clone, Debug)]
pub struct SaveFailure {
    /// Why the last attempt failed.
    pub error: String,
    /// When the first failed, in Unix seconds.
    pub since: u64,
    /// Attempts that failed since.
    pub attempts: u64,
}

/// Whether the balancer can reach a worker's host on its link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reach {
    /// Its neighbour entry holds a usable MAC address.
    Reachable,
    /// Unresolved since then, with a MAC from before still in use: it
    /// stays scheduled for [`UNRESOLVED_GRACE`] (an adopted worker whose
    /// entry the kernel forgot resolves again within that).
    Resolving(Instant),
    /// Not scheduled, for this reason.
    Unreachable(&'static str),
}

/// What the controller knows about a worker beyond its desired state.
#[derive(Debug)]
struct Live {
    vip: Vip,
    addr: IpAddr,
    /// Where its frames go: the address whose neighbour entry holds the
    /// MAC they are sent to (the worker's own on this link, else the
    /// router's toward it).
    hop: Hop,
    mac: Option<[u8; 6]>,
    /// The slot generation written for it (flows and sessions record it).
    generation: u32,
    reach: Reach,
    health: Health,
    load: Option<Figure>,
    /// The load figure last written to the data plane.
    written_load: u32,
    /// Active flows at the last flow-table scan.
    flows: u64,
    /// When its graceful removal is due, on the monotonic clock: the
    /// state file's wall-clock deadline is read once, so that a step of
    /// the wall clock while lb runs moves no deadline.
    removal_due: Option<Instant>,
}

/// The first hop toward a worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hop {
    /// This address on the link of this interface of lb's: the worker, or
    /// a router.
    Via(IpAddr, u32),
    /// None: no route through the interface, or no tunnel source of the
    /// worker's family. Not scheduled, for this reason.
    Missing(&'static str),
}

impl Hop {
    /// The address and the interface whose neighbour entry holds the MAC.
    fn at(self) -> Option<(IpAddr, u32)> {
        match self {
            Self::Via(addr, ifindex) => Some((addr, ifindex)),
            Self::Missing(_) => None,
        }
    }
}

impl Live {
    fn new(vip: Vip, addr: IpAddr, hop: Hop, mac: Option<[u8; 6]>, generation: u32) -> Self {
        let reach = match (hop, mac) {
            (Hop::Missing(reason), _) => Reach::Unreachable(reason),
            (Hop::Via(..), Some(_)) => Reach::Reachable,
            (Hop::Via(at, _), None) => Reach::Unreachable(unresolved_reason(addr, at)),
        };
        Self {
            vip,
            addr,
            hop,
            mac,
            generation,
            reach,
            health: Health::default(),
            load: None,
            written_load: LOAD_UNKNOWN,
            removal_due: None,
            flows: 0,
        }
    }

    /// Whether new flows may go to the worker.
    fn takes_new_flows(&self) -> bool {
        self.health.state() == HealthState::Up && !matches!(self.reach, Reach::Unreachable(_))
    }
}

/// Why a worker at `addr` whose hop `hop` never resolved is unreachable.
fn unresolved_reason(addr: IpAddr, hop: IpAddr) -> &'static str {
    match (hop, hop == addr) {
        (IpAddr::V4(_), true) => "no ARP reply",
        (IpAddr::V6(_), true) => "no neighbour advertisement",
        (IpAddr::V4(_), false) => "no ARP reply from its router",
        (IpAddr::V6(_), false) => "no neighbour advertisement from its router",
    }
}

/// Why an L3 worker has no hop.
const NO_ROUTE: &str = "no route through lb's interfaces";
const NO_SOURCE_V4: &str = "no IPv4 tunnel source (lb run --tunnel-source)";
const NO_SOURCE_V6: &str = "no IPv6 tunnel source (lb run --tunnel-source)";

/// How full the flow and session tables were at their last scans.
#[derive(Clone, Copy, Debug, Default)]
pub struct Occupancy {
    /// Flow table entries.
    pub flow_entries: u64,
    /// Sticky sessions.
    pub sessions: u64,
    /// `fullnat` connections in the NAT table (live and dying), by NAT
    /// source slot.
    pub nat_entries: crate::dataplane::nat::NatEntries,
}

/// Desired state plus the maps that carry it out.
pub struct Controller {
    desired: Desired,
    maps: ControlMaps,
    instance: Instance,
    live: HashMap<u32, Live>,
    state_file: Option<StateFile>,
    /// Route netlink, for the interfaces' neighbour tables.
    netlink: Netlink,
    /// The references to the program's link and maps, if they could be
    /// taken.
    pins: Option<PinGuard>,
    /// VIPs whose Maglev table the last install failed to write.
    uninstalled: BTreeSet<Vip>,
    attachment: Attachment,
    occupancy: Occupancy,
    /// Durations of every health check, for the metrics.
    check_latency: prometheus_client::metrics::histogram::Histogram,
    /// VIPs whose Maglev table must be rebuilt at the end of the batch.
    dirty: BTreeSet<Vip>,
    /// VIPs the admin request being handled marked dirty.
    touched: BTreeSet<Vip>,
    /// The desired state changed since the state file was written.
    unsaved: bool,
    /// The saves that failed since the last one that succeeded.
    save_failure: Option<SaveFailure>,
    /// Workers the admin request being handled added whose MAC is not
    /// known yet.
    unresolved_added: Vec<u32>,
    /// The announce table's keeper, with --announce-table.
    announcer: Option<crate::control::announce::Announcer>,
}

/// An admin request carried out up to the end of its batch: its answer
/// depends on the installs and the save that end does.
pub struct Pending {
    result: anyhow::Result<serde_json::Value>,
    touched: BTreeSet<Vip>,
    changes: bool,
    /// Workers it added whose MAC is not known yet.
    pub(super) unresolved: Vec<u32>,
}

/// What the end of a batch did.
#[derive(Debug, Default)]
pub struct Flushed {
    /// Why each VIP whose table could not be installed failed.
    failed: HashMap<Vip, String>,
    /// Why the state file could not be written, if it could not.
    unsaved: Option<String>,
}

impl Pending {
    /// The answer, once the batch is flushed: the request's own error
    /// first, then its VIPs' install failures, then a failed save.
    pub fn finish(self, flushed: &Flushed) -> Response {
        let install = self.touched.iter().find_map(|v| flushed.failed.get(v));
        let result =
            self.result.and_then(|data| {
                if let Some(error) = install {
                    bail!("{error}");
                }
                match (&flushed.unsaved, self.changes) {
                    (Some(error), true) => Err(anyhow::anyhow!("{error}")
                        .context("the change is in force but was not saved")),
                    _ => Ok(data),
                }
            });
        match result {
            Ok(data) => Response {
                ok: true,
                error: None,
                data,
            },
            Err(error) => Response {
                ok: false,
                error: Some(format!("{error:#}")),
                data: serde_json::Value::Null,
            },
        }
    }
}

impl Controller {
    /// Writes `desired` into the maps (ids as they are: an adopted data
    /// plane's flows refer to them), removes what the maps hold beyond it,
    /// and saves it.
    pub fn start(
        desired: Desired,
        maps: ControlMaps,
        instance: Instance,
        state_file: Option<StateFile>,
        pins: Option<PinGuard>,
    ) -> anyhow::Result<Self> {
        let netlink = Netlink::open().context("opening a route netlink socket")?;
        let announcer = Self::open_announcer(instance.announce_table)?;
        let mut controller = Self {
            desired,
            maps,
            instance,
            live: HashMap::new(),
            state_file,
            netlink,
            pins,
            uninstalled: Default::default(),
            attachment: Attachment::default(),
            occupancy: Occupancy::default(),
            check_latency: prometheus_client::metrics::histogram::Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.000_1, 4.0, 8),
            ),
            dirty: BTreeSet::new(),
            touched: BTreeSet::new(),
            unsaved: false,
            save_failure: None,
            unresolved_added: Vec::new(),
            announcer,
        };
        controller
            .maps
            .write_config(controller.desired.hash_seed)
            .context("writing the data plane's config")?;
        let ifaces: Vec<(u32, [u8; 6])> = (controller.instance.ifaces.iter())
            .map(|i| (i.index, i.mac))
            .collect();
        controller
            .maps
            .write_interfaces(&ifaces)
            .context("writing the data plane's interfaces")?;
        // A fresh instance's probe seed: std's per-process random keys.
        let seed = {
            use std::hash::BuildHasher as _;
            std::collections::hash_map::RandomState::new().hash_one(()) as u32
        };
        controller
            .maps
            .nat()
            .write_settings(&controller.instance.nat, seed)
            .context("writing the NAT sources and ports")?;
        controller.sync_nat()?;
        let vips: Vec<(Vip, crate::desired::state::VipState)> = controller
            .desired
            .vips()
            .iter()
            .map(|(v, s)| (*v, s.clone()))
            .collect();
        for (vip, state) in &vips {
            for (addr, worker) in &state.workers {
                controller.start_worker(*vip, *addr, worker.id)?;
            }
            for (client, worker) in &state.pins {
                let key = controller.pin_key(state.id, *client);
                controller.maps.write_pin(key, state.workers[worker].id)?;
            }
            controller.install(vip)?;
        }
        controller.dirty.clear();
        controller.touched.clear();
        controller.remove_stale()?;
        controller
            .maps
            .commit()
            .map_err(|(_, error)| error)
            .context("installing the VIPs' Maglev tables")?;
        controller.save()?;
        controller.announce();
        Ok(controller)
    }

    /// Live state and map entry for a worker of the desired state. Its MAC
    /// comes from the neighbour table or, when adopting, from the entry the
    /// previous controller wrote, so forwarding never pauses.
    fn start_worker(&mut self, vip: Vip, addr: IpAddr, id: u32) -> anyhow::Result<()> {
        let hop = self.hop_for(&vip, addr);
        self.start_worker_via(vip, addr, id, hop)
    }

    /// As [`Self::start_worker`], with the first hop already looked up.
    fn start_worker_via(
        &mut self,
        vip: Vip,
        addr: IpAddr,
        id: u32,
        hop: Hop,
    ) -> anyhow::Result<()> {
        let adopted = self.maps.adopted_slot(id, addr);
        let pinned_mac =
            (adopted.filter(|slot| slot.flags & BACKEND_MAC_KNOWN != 0)).map(|slot| slot.mac);
        let generation = self
            .maps
            .generation_for(id, addr)
            .context("reading the worker's slot")?;
        let mac = match hop {
            Hop::Via(at, ifindex) => resolve(&mut self.netlink, ifindex, at, pinned_mac),
            Hop::Missing(_) => None,
        };
        let mut live = Live::new(vip, addr, hop, mac, generation);
        let recorded_down = adopted.is_some_and(|slot| slot.flags & BACKEND_DOWN != 0);
        if recorded_down && self.is_checked(&vip) {
            live.health = Health::down();
        }
        if let Reach::Unreachable(reason) = live.reach {
            self.unresolved_added.push(id);
            tracing::warn!(
                "worker {addr} of {vip} is unreachable ({reason}): not scheduled until it resolves"
            );
        }
        self.live.insert(id, live);
        self.maps
            .write_load(id, LOAD_UNKNOWN)
            .context("writing the worker's load")?;
        self.write_worker(id)
    }

    /// Whether `vip`'s workers are health-checked (a worker of an
    /// unchecked VIP is never down).
    fn is_checked(&self, vip: &Vip) -> bool {
        self.desired
            .vip(vip)
            .is_ok_and(|state| state.options.health.kind_for(vip) != CheckKind::None)
    }

    /// The first hop toward worker `addr` of `vip`: the worker itself for
    /// DSR; for IPIP, GUE and NAT the router its route goes through, or
    /// itself when on the link.
    fn hop_for(&mut self, vip: &Vip, addr: IpAddr) -> Hop {
        let Ok(forward) = self.desired.vip(vip).map(|state| state.options.forward) else {
            return Hop::Via(addr, self.dsr_iface(addr));
        };
        if !forward.is_l3() {
            return Hop::Via(addr, self.dsr_iface(addr));
        }
        self.l3_hop(addr, forward.is_nat())
    }

    /// The interface a DSR worker at `addr` is on: the only one, or the
    /// one of lb's its route goes out of (else the first).
    fn dsr_iface(&mut self, addr: IpAddr) -> u32 {
        let first = self.instance.ifaces[0].index;
        if self.instance.ifaces.len() < 2 {
            return first;
        }
        match self.netlink.route_to(addr) {
            Ok(Some(route)) if self.instance.ifindexes().contains(&route.ifindex) => route.ifindex,
            _ => first,
        }
    }

    /// The first hop toward an IPIP, GUE or NAT worker at `addr`.
    fn l3_hop(&mut self, addr: IpAddr, nat: bool) -> Hop {
        if !nat && self.instance.tunnels.source_for(addr).is_none() {
            return Hop::Missing(if addr.is_ipv4() {
                NO_SOURCE_V4
            } else {
                NO_SOURCE_V6
            });
        }
        match self.netlink.route_to(addr) {
            Ok(Some(route)) if self.instance.ifindexes().contains(&route.ifindex) => {
                Hop::Via(route.gateway.unwrap_or(addr), route.ifindex)
            }
            Ok(_) => Hop::Missing(NO_ROUTE),
            Err(error) => {
                tracing::warn!("looking up the route to {addr}: {error}");
                Hop::Missing(NO_ROUTE)
            }
        }
    }

    /// Removes VIPs, pins and worker slots the maps hold but the desired
    /// state doesn't (left by an earlier controller whose state differed,
    /// or that crashed between writing a change and saving it).
    fn remove_stale(&mut self) -> anyhow::Result<()> {
        let wanted: std::collections::HashSet<_> =
            self.desired.vips().keys().map(Vip::key).collect();
        for key in self.maps.vip_keys() {
            if !wanted.contains(&key) {
                self.maps.remove_vip_key(&key)?;
            }
        }
        let pins: std::collections::HashSet<StickyKey> = self
            .desired
            .vips()
            .values()
            .flat_map(|s| s.pins.keys().map(|c| self.pin_key(s.id, *c)))
            .collect();
        for key in self.maps.pin_keys() {
            if !pins.contains(&key) {
                self.maps.remove_pin(&key)?;
            }
        }
        // A worker written to its slot by a controller that crashed before
        // saving it: the state has no such worker, so its flows must not
        // go on to it unchecked.
        let workers: std::collections::HashSet<u32> = self
            .desired
            .vips()
            .values()
            .flat_map(|s| s.workers.values().map(|w| w.id))
            .collect();
        for id in self.maps.valid_backend_ids() {
            if !workers.contains(&id) {
                self.maps.clear_backend(id)?;
            }
        }
        Ok(())
    }

    /// Writes the desired state to the state file, if there is one.
    fn save(&self) -> anyhow::Result<()> {
        if let Some(file) = &self.state_file {
            file.save(&self.desired)?;
        }
        Ok(())
    }

    /// Saves the state; when that fails, keeps what failed so that every
    /// tick tries again ([`Self::retry_save`]) and `lb status` and the
    /// metrics show it. Returns what an answer to a change must say.
    fn save_or_retry(&mut self) -> Option<String> {
        match self.save() {
            Ok(()) => {
                if let Some(failure) = self.save_failure.take() {
                    tracing::info!(
                        "saved the state after {} failed attempts ({})",
                        failure.attempts,
                        failure.error
                    );
                }
                None
            }
            Err(error) => {
                let error = format!("{error:#}");
                let failure = match &mut self.save_failure {
                    Some(failure) => failure,
                    None => {
                        tracing::error!("saving the state: {error}; lb retries every second");
                        self.save_failure.insert(SaveFailure {
                            error: error.clone(),
                            since: state::unix_seconds(std::time::SystemTime::now()),
                            attempts: 0,
                        })
                    }
                };
                failure.attempts += 1;
                failure.error.clone_from(&error);
                Some(format!(
                    "{error}; lb retries every second until it succeeds (`lb status` shows unsaved_since)"
                ))
            }
        }
    }

    /// Has a failed save tried again at the end of the batch.
    pub(super) fn retry_save(&mut self) {
        self.unsaved |= self.save_failure.is_some();
    }

    /// Says, as the controller stops, that changes in force are not in
    /// the state file: the next start won't have them.
    pub(super) fn warn_unsaved(&self) {
        if let Some(failure) = &self.save_failure {
            tracing::error!(
                "stopping with changes the state file does not hold ({}): the next start restores what it last saved",
                failure.error
            );
        }
    }

    /// Carries out one API request up to the end of the batch: the
    /// tables it changes are installed and the state saved by [`Self::flush`].
    pub fn handle(&mut self, request: Request) -> Pending {
        let changes = request.changes_state();
        self.touched.clear();
        self.unresolved_added.clear();
        let result = self.apply(request);
        // Saved even when applying failed half way (a table the kernel
        // could not create is retried): the file always says what the
        // controller holds, and a refused change left nothing to save.
        self.unsaved |= changes;
        Pending {
            result,
            touched: std::mem::take(&mut self.touched),
            changes,
            unresolved: std::mem::take(&mut self.unresolved_added),
        }
    }

    /// Whether the batch has work left for [`Self::flush`].
    pub fn is_dirty(&self) -> bool {
        !self.dirty.is_empty() || self.unsaved
    }

    /// Ends a batch: installs each VIP whose table changed once, and saves
    /// the state once if it changed.
    pub fn flush(&mut self) -> Flushed {
        let mut flushed = Flushed::default();
        // Before the tables: a NAT worker's replies are recognised before
        // the first packet reaches it.
        if !self.dirty.is_empty() {
            if let Err(error) = self.sync_nat() {
                tracing::error!("{error:#}");
            }
        }
        for vip in std::mem::take(&mut self.dirty) {
            if self.desired.vip(&vip).is_err() {
                continue;
            }
            if let Err(error) = self.install(&vip) {
                tracing::error!("{error:#}");
                flushed.failed.insert(vip, format!("{error:#}"));
            }
        }
        if let Err((vips, error)) = self.maps.commit() {
            tracing::error!("installing the tables of new VIPs: {error}");
            for vip in vips {
                self.uninstalled.insert(vip);
                flushed.failed.insert(
                    vip,
                    format!("installing its Maglev table failed ({error}); the change is saved and lb retries every second"),
                );
            }
        }
        if std::mem::take(&mut self.unsaved) {
            flushed.unsaved = self.save_or_retry();
        }
        self.announce();
        flushed
    }

    /// Writes the NAT workers' reverse entries and the reply filter from
    /// the desired state.
    fn sync_nat(&mut self) -> anyhow::Result<()> {
        let workers: Vec<NatWorker> = self
            .desired
            .vips()
            .iter()
            .filter(|(_, state)| state.options.forward.is_nat())
            .flat_map(|(vip, state)| {
                state.workers.iter().map(move |(addr, worker)| NatWorker {
                    addr: *addr,
                    port: worker.port.unwrap_or(vip.port),
                    vip: (vip.addr, vip.port, vip.key().proto),
                    vip_id: state.id,
                    backend_id: worker.id,
                    stateless: state.options.forward == Forward::Nat,
                })
            })
            .collect();
        self.maps
            .nat()
            .sync(&workers)
            .context("writing the NAT workers and the reply filter")
    }

    /// Records what the last sweep of the NAT table found.
    pub fn set_nat_entries(&mut self, entries: crate::dataplane::nat::NatEntries) {
        self.occupancy.nat_entries = entries;
    }

    /// The interface whose neighbours the controller follows.
    pub fn ifindexes(&self) -> Vec<u32> {
        self.instance.ifindexes()
    }

    /// Whether worker `id` is past resolving: its MAC is known, or it is
    /// gone.
    pub fn resolved(&self, id: u32) -> bool {
        self.live.get(&id).is_none_or(|l| l.mac.is_some())
    }

    /// Has `vip`'s Maglev table rebuilt at the end of the batch.
    fn reschedule(&mut self, vip: &Vip) {
        self.dirty.insert(*vip);
        self.touched.insert(*vip);
    }

    fn apply(&mut self, request: Request) -> anyhow::Result<serde_json::Value> {
        let done = serde_json::Value::Null;
        match request {
            Request::VipAdd { vip, options } => self.add_vip(vip, options)?,
            Request::VipSet { vip, options } => self.set_vip(&vip, options)?,
            Request::VipDel { vip } => self.del_vip(&vip)?,
            Request::BackendAdd {
                vip,
                worker,
                port,
                weight,
            } => self.add_worker(vip, worker, port, weight)?,
            Request::BackendDel {
                vip,
                worker,
                graceful: false,
                ..
            } => self.remove_worker(&vip, worker)?,
            Request::BackendDel {
                vip,
                worker,
                graceful: true,
                timeout,
            } => return self.remove_gracefully(&vip, worker, timeout.unwrap_or(DEFAULT_GRACE)),
            Request::BackendSet {
                vip,
                worker,
                weight,
                load,
            } => self.set(&vip, worker, weight, load)?,
            Request::BackendDrain { vip, worker, drain } => {
                self.set_drain(&vip, worker, drain)?;
            }
            Request::VipList => return Ok(serde_json::to_value(self.vip_rows())?),
            Request::BackendList { vip } => {
                return Ok(serde_json::to_value(self.backend_rows(vip)?)?)
            }
            Request::SessionsList { vip } => {
                return Ok(serde_json::to_value(self.session_rows(vip)?)?)
            }
            Request::SessionsFlush { vip, worker } => return self.flush_sessions(vip, worker),
            Request::SessionsPin {
                vip,
                client,
                worker,
            } => self.pin(&vip, client, worker)?,
            Request::SessionsUnpin { vip, client } => self.unpin(&vip, client)?,
            Request::AnnounceWithdraw { addresses, vips } => {
                return self.set_withdrawn(addresses, &vips, true)
            }
            Request::AnnounceRestore { addresses, vips } => {
                return self.set_withdrawn(addresses, &vips, false)
            }
            Request::AnnounceList => return Ok(serde_json::to_value(self.announce_rows()?)?),
            Request::Status => return Ok(serde_json::to_value(self.status())?),
        }
        Ok(done)
    }

    fn add_vip(&mut self, vip: Vip, options: VipOptions) -> anyhow::Result<()> {
        self.check_nat(&vip, &options)?;
        self.check_tunnel(&options, None)?;
        let ifindexes = self.instance.ifindexes();
        check_subnet_edges(&mut self.netlink, &ifindexes, [("VIP", vip.addr)])?;
        check_endpoints(&mut self.netlink, &self.instance.endpoints, [vip])?;
        self.desired.add_vip(vip, options)?;
        self.reschedule(&vip);
        tracing::info!("added VIP {vip}");
        Ok(())
    }

    /// Replaces a VIP's settings and rebuilds what depends on them; with a
    /// new sticky prefix its sessions go (they are keyed by the old one).
    fn set_vip(&mut self, vip: &Vip, options: VipOptions) -> anyhow::Result<()> {
        let old = self.desired.vip(vip)?;
        let (id, old_prefix) = (old.id, old.options.prefix_for(vip));
        self.check_nat(vip, &options)?;
        for worker in old.workers.keys() {
            self.check_tunnel(&options, Some(*worker))?;
        }
        self.desired.set_options(vip, options)?;
        let state = self.desired.vip(vip)?;
        if state.options.prefix_for(vip) != old_prefix {
            self.flush_where(|key, _| key.vip_id == id)?;
        }
        let workers: Vec<(IpAddr, u32)> = state.workers.iter().map(|(a, w)| (*a, w.id)).collect();
        for (addr, id) in workers {
            self.sync_load(id)?;
            self.rehop(id, *vip, addr);
            self.write_worker(id)?;
        }
        self.reschedule(vip);
        tracing::info!("changed the settings of VIP {vip}");
        Ok(())
    }

    fn del_vip(&mut self, vip: &Vip) -> anyhow::Result<()> {
        let state = self.desired.vip(vip)?.clone();
        self.maps
            .remove_vip(vip)
            .context("removing the VIP from the data plane")?;
        for client in state.pins.keys() {
            self.maps.remove_pin(&self.pin_key(state.id, *client))?;
        }
        for worker in state.workers.values() {
            self.forget(worker.id)?;
        }
        self.desired.del_vip(vip)?;
        self.flush_where(|key, _| key.vip_id == state.id)?;
        tracing::info!("removed VIP {vip}");
        Ok(())
    }

    /// Refuses IPIP or GUE toward `worker` (or at all, without one) when
    /// there is no tunnel source of its family.
    /// Refuses a VIP on a NAT source's address, and a NAT method the
    /// instance can't serve: `fullnat` without a NAT source of the VIP's
    /// family, either while IP forwarding is off on the interface (the
    /// replies' routing lookup needs it on).
    fn check_nat(&self, vip: &Vip, options: &VipOptions) -> anyhow::Result<()> {
        if self.instance.nat.sources.contains(&vip.addr) {
            bail!(
                "{} is a NAT source address of this lb (--nat-source): a VIP can't share it",
                vip.addr
            );
        }
        if !options.forward.is_nat() {
            return Ok(());
        }
        if options.forward == Forward::Fullnat && !self.instance.nat.has_family_of(vip.addr) {
            let family = if vip.addr.is_ipv6() { "IPv6" } else { "IPv4" };
            bail!("--forward fullnat needs a NAT source of the VIP's family: give lb run --nat-source with an {family} address of this host");
        }
        for iface in &self.instance.ifaces {
            if let Some(sysctl) = crate::control::nat::forwarding_off(&iface.name, vip.addr) {
                bail!(
                    "--forward {} needs IP forwarding on {}: lb routes the workers' replies back to clients, and the kernel refuses while it is off; set {sysctl}=1",
                    options.forward,
                    iface.name
                );
            }
        }
        Ok(())
    }

    fn check_tunnel(&self, options: &VipOptions, worker: Option<IpAddr>) -> anyhow::Result<()> {
        if !options.forward.is_l3() || options.forward.is_nat() {
            return Ok(());
        }
        let tunnels = &self.instance.tunnels;
        let missing = match worker {
            Some(addr) => tunnels.source_for(addr).is_none(),
            None => tunnels.v4.is_none() && tunnels.v6.is_none(),
        };
        if missing {
            let family = match worker {
                Some(IpAddr::V4(_)) => "IPv4 ",
                Some(IpAddr::V6(_)) => "IPv6 ",
                None => "",
            };
            bail!(
                "--forward {} needs an outer source address: {} has no {family}address; give lb run --tunnel-source",
                options.forward,
                self.instance.ifaces[0].name
            );
        }
        Ok(())
    }

    /// Looks up the first hop toward worker `id` again: after its VIP's
    /// method or the routes changed. A worker whose hop moved resolves the
    /// new one's MAC afresh, keeping the old meanwhile.
    fn rehop(&mut self, id: u32, vip: Vip, addr: IpAddr) {
        let hop = self.hop_for(&vip, addr);
        self.set_hop(id, vip, addr, hop);
    }

    /// Gives worker `id` (`addr` of `vip`) first hop `hop`; whether it
    /// changed.
    fn set_hop(&mut self, id: u32, vip: Vip, addr: IpAddr, hop: Hop) -> bool {
        let Some(live) = self.live.get_mut(&id) else {
            return false;
        };
        if live.hop == hop {
            return false;
        }
        tracing::info!(
            "worker {addr} of {vip}: {}",
            match hop {
                Hop::Via(at, ifindex) if at == addr => format!(
                    "reached on the link of {}",
                    self.instance
                        .ifaces
                        .iter()
                        .find(|i| i.index == ifindex)
                        .map_or("?", |i| i.name.as_str())
                ),
                Hop::Via(at, _) => format!("reached through {at}"),
                Hop::Missing(reason) => reason.to_owned(),
            }
        );
        live.hop = hop;
        if let Hop::Missing(reason) = hop {
            live.reach = Reach::Unreachable(reason);
        }
        true
    }

    fn add_worker(
        &mut self,
        vip: Vip,
        worker: IpAddr,
        port: Option<u16>,
        weight: u32,
    ) -> anyhow::Result<()> {
        check_not_own(&mut self.netlink, [worker])?;
        let ifindexes = self.instance.ifindexes();
        check_subnet_edges(&mut self.netlink, &ifindexes, [("worker", worker)])?;
        self.check_tunnel(&self.desired.vip(&vip)?.options.clone(), Some(worker))?;
        let hop = self.hop_for(&vip, worker);
        if hop == Hop::Missing(NO_ROUTE) {
            bail!(
                "no route to {worker} through {}: lb could not send it anything (add a route, or check the address)",
                self.instance.iface_names()
            );
        }
        let id = self.desired.add_worker_on(&vip, worker, port, weight)?;
        self.start_worker_via(vip, worker, id, hop)?;
        self.reschedule(&vip);
        tracing::info!("added worker {worker} to {vip} (weight {weight})");
        Ok(())
    }

    /// Removes a worker at once: nothing more goes to it. Its flows are
    /// scheduled afresh at their next packet (its slot is emptied), its
    /// sessions and pins go.
    fn remove_worker(&mut self, vip: &Vip, worker: IpAddr) -> anyhow::Result<()> {
        let state = self.desired.vip(vip)?;
        let vip_id = state.id;
        let pins: Vec<IpAddr> = state
            .pins
            .iter()
            .filter(|(_, w)| **w == worker)
            .map(|(c, _)| *c)
            .collect();
        let id = self.desired.del_worker(vip, worker)?;
        for client in pins {
            self.maps.remove_pin(&self.pin_key(vip_id, client))?;
        }
        self.forget(id)?;
        self.flush_where(|_, session| session.backend_id == id)?;
        self.reschedule(vip);
        tracing::info!("removed worker {worker} from {vip}");
        Ok(())
    }

    fn forget(&mut self, id: u32) -> anyhow::Result<()> {
        self.live.remove(&id);
        self.maps
            .clear_backend(id)
            .context("emptying the worker's slot")?;
        Ok(self.maps.write_load(id, LOAD_UNKNOWN)?)
    }

    fn remove_gracefully(
        &mut self,
        vip: &Vip,
        worker: IpAddr,
        timeout: Duration,
    ) -> anyhow::Result<serde_json::Value> {
        let id = self.set_drain(vip, worker, true)?;
        let deadline = state::deadline_after(std::time::SystemTime::now(), timeout);
        self.desired.remove_by(vip, worker, deadline)?;
        let live = self.live.get_mut(&id);
        let flows = live.as_ref().map_or(0, |l| l.flows);
        if let Some(live) = live {
            live.removal_due = Some(Instant::now() + timeout);
        }
        tracing::info!(
            "removing worker {worker} from {vip} once its {flows} flows end (at most {})",
            duration::format(timeout)
        );
        Ok(serde_json::json!({ "flows": flows, "timeout": duration::format(timeout) }))
    }

    fn set(
        &mut self,
        vip: &Vip,
        worker: IpAddr,
        weight: Option<u32>,
        load: Option<f64>,
    ) -> anyhow::Result<()> {
        let id = self.desired.worker(vip, worker)?.id;
        if weight.is_none() && load.is_none() {
            bail!("nothing to set: give --weight and/or --load");
        }
        if let Some(load) = load {
            load::check_value(load)?;
        }
        if let Some(weight) = weight {
            self.desired.set_weight(vip, worker, weight)?;
            self.reschedule(vip);
            tracing::info!("worker {worker} of {vip}: weight {weight}");
        }
        if let Some(load) = load {
            self.record_load(id, load, Source::Cli);
        }
        self.sync_load(id)
    }

    fn set_drain(&mut self, vip: &Vip, worker: IpAddr, drain: bool) -> anyhow::Result<u32> {
        let id = self.desired.set_drain(vip, worker, drain)?;
        self.write_worker(id)?;
        self.reschedule(vip);
        tracing::info!(
            "worker {worker} of {vip}: {}",
            if drain {
                "draining"
            } else {
                "taking new flows"
            }
        );
        Ok(id)
    }

    fn pin(&mut self, vip: &Vip, client: IpAddr, worker: IpAddr) -> anyhow::Result<()> {
        let client = self.desired.pin(vip, client, worker)?;
        let state = self.desired.vip(vip)?;
        let key = self.pin_key(state.id, client);
        let id = state.workers[&worker].id;
        self.maps.write_pin(key, id).context("writing the pin")?;
        self.reschedule(vip);
        tracing::info!("pinned client {client} of {vip} to {worker}");
        Ok(())
    }

    fn unpin(&mut self, vip: &Vip, client: IpAddr) -> anyhow::Result<()> {
        let id = self.desired.vip(vip)?.id;
        let client = self.desired.unpin(vip, client)?;
        let key = self.pin_key(id, client);
        self.maps.remove_pin(&key).context("removing the pin")?;
        self.reschedule(vip);
        tracing::info!("unpinned client {client} of {vip}");
        Ok(())
    }

    fn pin_key(&self, vip_id: u32, client: IpAddr) -> StickyKey {
        StickyKey {
            client: service::addr_bytes(client).0,
            vip_id,
        }
    }

    fn flush_sessions(
        &mut self,
        vip: Option<Vip>,
        worker: Option<IpAddr>,
    ) -> anyhow::Result<serde_json::Value> {
        let vip_id = vip
            .map(|v| self.desired.vip(&v).map(|s| s.id))
            .transpose()?;
        let worker_ids: Option<Vec<u32>> = worker.map(|w| {
            self.live
                .iter()
                .filter(|(_, l)| l.addr == w && vip.is_none_or(|v| v == l.vip))
                .map(|(id, _)| *id)
                .collect()
        });
        let removed = self.flush_where(|key, session| {
            vip_id.is_none_or(|v| v == key.vip_id)
                && worker_ids
                    .as_ref()
                    .is_none_or(|ids| ids.contains(&session.backend_id))
        })?;
        tracing::info!("flushed {removed} sticky sessions");
        Ok(serde_json::json!({ "flushed": removed }))
    }

    fn flush_where(
        &self,
        doomed: impl Fn(&StickyKey, &lb_common::balancer::StickyValue) -> bool,
    ) -> anyhow::Result<usize> {
        sessions::remove_where(&self.instance.pin_dir, doomed).context("flushing sticky sessions")
    }

    /// Writes worker `id`'s entry: address, MAC, VIP, down/draining.
    fn write_worker(&mut self, id: u32) -> anyhow::Result<()> {
        let live = self.live.get(&id).context("worker without live state")?;
        let vip_state = self.desired.vip(&live.vip)?;
        let worker = vip_state.workers.get(&live.addr);
        let drain = worker.is_some_and(|w| w.drain);
        let port = worker.and_then(|w| w.port).unwrap_or(0);
        let mut state_flags = 0;
        if live.health.state() == HealthState::Down {
            state_flags |= BACKEND_DOWN;
        }
        if drain {
            state_flags |= BACKEND_DRAINING;
        }
        if matches!(live.reach, Reach::Unreachable(_)) {
            state_flags |= BACKEND_UNREACHABLE;
        }
        let options = &vip_state.options;
        let entry = WorkerEntry {
            addr: live.addr,
            mac: live.mac,
            vip_id: vip_state.id,
            state_flags,
            generation: live.generation,
            forward: options.forward.code(),
            gue_port: options.gue_port(),
            port,
            mtu: self.instance.tunnels.mtu,
            tunnel_source: self.instance.tunnels.source_for(live.addr),
            egress: live
                .hop
                .at()
                .map_or(0, |(_, ifindex)| self.instance.egress_slot(ifindex)),
        };
        self.maps
            .write_backend(id, &entry)
            .with_context(|| format!("writing worker {}", live.addr))
    }

    /// Rebuilds and swaps in a VIP's Maglev table from the workers that
    /// take new flows.
    /// A table that can't be installed (the kernel refused a new map, for
    /// instance for lack of file descriptors) is retried every tick until
    /// it is.
    fn install(&mut self, vip: &Vip) -> anyhow::Result<()> {
        let state = self.desired.vip(vip)?;
        let live = &self.live;
        let members = state.members(|id| live.get(&id).is_some_and(Live::takes_new_flows));
        let installed = self
            .maps
            .install_vip(vip, state, &members, self.desired.hash_seed);
        let (size, took) = match installed {
            Ok(done) => done,
            Err(error) => {
                self.uninstalled.insert(*vip);
                return Err(anyhow::Error::new(error).context(format!(
                    "installing the Maglev table of {vip} failed; the change is saved and lb retries every second"
                )));
            }
        };
        self.uninstalled.remove(vip);
        tracing::info!(
            "{vip}: Maglev table of {size} slots for {} of {} workers built in {took:?}",
            members.len(),
            state.workers.len()
        );
        if members.is_empty() && !state.workers.is_empty() {
            tracing::warn!("{vip}: no worker takes new flows; its new connections are dropped");
        }
        Ok(())
    }

    /// What the health checkers should be doing.
    pub fn check_targets(&self) -> Vec<health::Target> {
        self.desired
            .vips()
            .iter()
            .flat_map(|(vip, state)| {
                let options = &state.options;
                let kind = options.health.kind_for(vip);
                // The desired state holds validated options only, so every
                // VIP's check builds.
                let check = options.health.check_for(vip).ok();
                state
                    .workers
                    .iter()
                    .filter(move |_| kind != CheckKind::None || options.load.probe.is_some())
                    .filter_map(move |(addr, worker)| {
                        Some(health::Target {
                            vip: *vip,
                            worker: *addr,
                            id: worker.id,
                            check: check.clone()?,
                            port: options.health.port.or(worker.port).unwrap_or(vip.port),
                            interval: options.health.interval,
                            timeout: options.health.timeout,
                            load_probe: options.load.probe.clone(),
                            tunnel: self.tunnel_check(vip, options),
                        })
                    })
            })
            .collect()
    }

    /// The tunnel a check of `vip`'s workers passes first: the VIP's own
    /// encapsulation, unless it is checked directly.
    fn tunnel_check(&self, vip: &Vip, options: &VipOptions) -> Option<Tunnel> {
        let encapsulation = match options.forward {
            _ if options.health.direct => return None,
            Forward::Dsr | Forward::Nat | Forward::Fullnat => return None,
            Forward::Ipip => Encapsulation::Ipip,
            Forward::Gue => Encapsulation::Gue(options.gue_port()),
        };
        Some(Tunnel {
            encapsulation,
            vip: vip.addr,
            source: self.instance.tunnels.source_for(vip.addr),
        })
    }

    /// Has the tables whose last install failed installed again at the end
    /// of the batch.
    pub(super) fn retry_installs(&mut self) {
        let pending = std::mem::take(&mut self.uninstalled);
        self.dirty.extend(pending);
    }

    /// Checks, through the controller's references to the link and the
    /// maps, that the program still runs on the interface and that its
    /// pins are whole; removed pins are pinned again where that is safe.
    pub(super) fn check_pins(&mut self) {
        let Some(pins) = &mut self.pins else {
            return;
        };
        let PinCheck {
            restored,
            unpinned,
            lost,
        } = pins.check(&mut self.netlink);
        let (iface, dir) = (self.instance.iface_names(), self.instance.pin_dir.display());
        if !restored.is_empty() {
            self.attachment.restores += 1;
            if restored.iter().any(|r| r == crate::dataplane::LINK_PIN) {
                self.attachment.repins += 1;
            }
            let them = if restored.len() == 1 { "it" } else { "them" };
            tracing::error!(
                "{} of lb's instance on {iface} under {dir} had been removed (the program kept running: lb holds its link and maps); pinned {them} again",
                restored.join(", ")
            );
        }
        match (&unpinned, &self.attachment.unpinned) {
            (Some(why), previous) if previous.as_ref() != Some(why) => tracing::error!(
                "the pins of lb's instance on {iface} under {dir} are not whole, and were not pinned again: {why}; the program runs only for as long as this controller does"
            ),
            (None, Some(_)) => tracing::info!("the pins under {dir} are whole again"),
            _ => {}
        }
        self.attachment.unpinned = unpinned;
        if let Some(why) = &lost {
            if self.attachment.lost.as_ref() != Some(why) {
                tracing::error!(
                    "lb's program no longer runs on {iface}: {why}; `lb run` again attaches it"
                );
            }
        }
        self.attachment.lost = lost;
    }

    /// Hands over the references to the link and the maps, for `lb run`
    /// to let go of them after it stops (detaching, or saying whether the
    /// program stays).
    pub fn take_pins(&mut self) -> Option<PinGuard> {
        self.pins.take()
    }

    /// Where the maps are pinned.
    pub fn pin_dir(&self) -> &std::path::Path {
        &self.instance.pin_dir
    }
}

/// Refuses workers at one of this balancer's own addresses: its packets
/// would come back to itself.
pub fn check_not_own(
    netlink: &mut Netlink,
    workers: impl IntoIterator<Item = IpAddr>,
) -> anyhow::Result<()> {
    let own = netlink
        .addresses()
        .context("reading this host's addresses")?;
    for worker in workers {
        // Loopback and the like get the state's more precise refusal.
        if own.contains(&worker) && service::unicast_problem(worker).is_none() {
            bail!("worker {worker} is an address of this balancer: a worker must be another host");
        }
    }
    Ok(())
}

/// Refuses VIPs and workers (`what`, address) at an edge of a subnet of
/// the balancer's interfaces `ifindexes`, its network or broadcast
/// address: no host has one. The edges of subnets beyond the links lb
/// can't know.
pub fn check_subnet_edges(
    netlink: &mut Netlink,
    ifindexes: &[u32],
    addresses: impl IntoIterator<Item = (&'static str, IpAddr)>,
) -> anyhow::Result<()> {
    let mut subnets = Vec::new();
    for &ifindex in ifindexes {
        let prefixes = netlink
            .interface_prefixes(ifindex)
            .context("reading the interface's addresses")?;
        subnets.extend(prefixes);
    }
    for (what, addr) in addresses {
        // Loopback and the like get the state's more precise refusal.
        if service::unicast_problem(addr).is_some() {
            continue;
        }
        for &(network, prefix) in &subnets {
            if let Some(problem) = service::subnet_edge(addr, network, prefix) {
                bail!("{what} {addr} {problem}");
            }
        }
    }
    Ok(())
}

/// Refuses VIPs that would take the connections of one of lb's own
/// endpoints (a TCP VIP on the balancer's address and the endpoint's
/// port): the data plane would send them to the workers, and the metrics
/// or load reports would stop arriving.
pub fn check_endpoints(
    netlink: &mut Netlink,
    endpoints: &[service::Endpoint],
    vips: impl IntoIterator<Item = Vip>,
) -> anyhow::Result<()> {
    if endpoints.is_empty() {
        return Ok(());
    }
    let own = netlink
        .addresses()
        .context("reading this host's addresses")?;
    for vip in vips {
        if let Some(endpoint) = endpoints.iter().find(|e| e.hidden_by(&vip, &own)) {
            bail!(
                "VIP {vip} would hide lb's own {} {}: the data plane would send its connections to the VIP's workers; give one of them another port or address",
                endpoint.what,
                endpoint.addr
            );
        }
    }
    Ok(())
}

/// The worker's MAC: the neighbour table's; else `known` (what an adopted
/// data plane had); else `None` after asking the kernel to resolve it (the
/// kernel's notice of the answer makes the controller read the table
/// again, rather than wait here).
fn resolve(
    netlink: &mut Netlink,
    ifindex: u32,
    addr: IpAddr,
    known: Option<[u8; 6]>,
) -> Option<[u8; 6]> {
    let found = match netlink.neighbours(ifindex).ok()?.get(&addr) {
        Some(neighbour::Entry::Resolved { mac, .. }) => Some(*mac),
        _ => None,
    };
    let mac = found.or(known);
    if mac.is_none() {
        neighbour::solicit(addr);
    }
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(vip: &str, changes: bool) -> Pending {
        Pending {
            result: Ok(serde_json::Value::Null),
            touched: [vip.parse().unwrap()].into(),
            changes,
            unresolved: Vec::new(),
        }
    }

    #[test]
    fn an_answer_reports_its_own_vips_install_failure_then_a_failed_save() {
        let mut flushed = Flushed::default();
        let other: Vip = "192.0.2.101:80/tcp".parse().unwrap();
        flushed.failed.insert(other, "no room".into());
        assert!(pending("192.0.2.100:80/tcp", true).finish(&flushed).ok);
        assert_eq!(
            pending("192.0.2.101:80/tcp", true).finish(&flushed).error,
            Some("no room".into())
        );
        flushed.unsaved = Some("disk full".into());
        assert_eq!(
            pending("192.0.2.100:80/tcp", true).finish(&flushed).error,
            Some("the change is in force but was not saved: disk full".into())
        );
        assert!(pending("192.0.2.100:80/tcp", false).finish(&flushed).ok);
    }
}
