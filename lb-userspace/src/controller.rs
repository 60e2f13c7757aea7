//! The controller: applies desired-state changes to the maps, and keeps
//! what it learns about workers (MAC, health, load, active flows) current
//! in the maps the data plane reads.

use std::{
    collections::HashMap,
    net::IpAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use lb_common::balancer::{StickyKey, BACKEND_DOWN, BACKEND_DRAINING, LOAD_UNKNOWN};

use crate::{
    activity,
    api::{BackendRow, CheckRow, Request, Response, SessionRow, Status, VipRow, WorkerState},
    duration,
    health::{self, Health, HealthState},
    load::{self, Figure, Source},
    maps::{ControlMaps, WorkerEntry},
    neighbour,
    options::{CheckKind, LoadSignal, VipOptions},
    service::{self, Vip},
    sessions,
    state::Desired,
};

/// How long adding a worker waits for its MAC address to resolve.
const RESOLVE_WAIT: Duration = Duration::from_millis(500);
/// How long `backend del --graceful` waits for flows to end by default.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(300);

/// Static facts about the instance, for `lb status`.
#[derive(Clone, Debug)]
pub struct Instance {
    /// Interface.
    pub iface: String,
    /// native or generic.
    pub xdp_mode: String,
    /// Program id.
    pub program_id: u32,
    /// Pin directory.
    pub pin_dir: PathBuf,
    /// Flow table capacity.
    pub max_flows: u32,
    /// Load report endpoint, if enabled.
    pub load_listen: Option<String>,
}

/// What the controller knows about a worker beyond its desired state.
#[derive(Debug)]
struct Live {
    vip: Vip,
    addr: IpAddr,
    mac: Option<[u8; 6]>,
    health: Health,
    load: Option<Figure>,
    /// The load figure last written to the data plane.
    written_load: u32,
    /// Active flows at the last flow-table scan.
    flows: u64,
    /// Deadline of a graceful removal.
    removing: Option<Instant>,
}

/// Desired state plus the maps that carry it out.
pub struct Controller {
    desired: Desired,
    maps: ControlMaps,
    instance: Instance,
    live: HashMap<u32, Live>,
}

impl Controller {
    /// Writes `desired` into the maps.
    pub fn start(
        desired: Desired,
        mut maps: ControlMaps,
        instance: Instance,
    ) -> anyhow::Result<Self> {
        maps.write_config(desired.hash_seed)
            .context("writing the data plane's config")?;
        let mut controller = Self {
            desired: Desired::new(desired.hash_seed),
            maps,
            instance,
            live: HashMap::new(),
        };
        for (vip, state) in desired.vips() {
            controller.apply(Request::VipAdd {
                vip: *vip,
                options: state.options.clone(),
            })?;
            for (worker, w) in &state.workers {
                controller.apply(Request::BackendAdd {
                    vip: *vip,
                    worker: *worker,
                    weight: w.weight,
                })?;
                if w.drain {
                    controller.set_drain(vip, *worker, true)?;
                }
            }
            for (client, worker) in &state.pins {
                controller.apply(Request::SessionsPin {
                    vip: *vip,
                    client: *client,
                    worker: *worker,
                })?;
            }
        }
        Ok(controller)
    }

    /// Carries out one API request.
    pub fn handle(&mut self, request: Request) -> Response {
        match self.apply(request) {
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

    fn apply(&mut self, request: Request) -> anyhow::Result<serde_json::Value> {
        let done = serde_json::Value::Null;
        match request {
            Request::VipAdd { vip, options } => self.add_vip(vip, options)?,
            Request::VipDel { vip } => self.del_vip(&vip)?,
            Request::BackendAdd {
                vip,
                worker,
                weight,
            } => self.add_worker(vip, worker, weight)?,
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
            Request::Status => return Ok(serde_json::to_value(self.status())?),
        }
        Ok(done)
    }

    fn add_vip(&mut self, vip: Vip, options: VipOptions) -> anyhow::Result<()> {
        self.desired.add_vip(vip, options)?;
        self.install(&vip)?;
        log::info!("added VIP {vip}");
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
        log::info!("removed VIP {vip}");
        Ok(())
    }

    fn add_worker(&mut self, vip: Vip, worker: IpAddr, weight: u32) -> anyhow::Result<()> {
        let id = self.desired.add_worker(&vip, worker, weight)?;
        self.live.insert(
            id,
            Live {
                vip,
                addr: worker,
                mac: resolve(&self.instance.iface, worker),
                health: Health::default(),
                load: None,
                written_load: LOAD_UNKNOWN,
                flows: 0,
                removing: None,
            },
        );
        self.maps
            .write_load(id, LOAD_UNKNOWN)
            .context("writing the worker's load")?;
        self.write_worker(id)?;
        self.install(&vip)?;
        log::info!("added worker {worker} to {vip} (weight {weight})");
        Ok(())
    }

    /// Removes a worker at once: it gets no new flows; the flows it has
    /// keep going to it. Its sessions and pins go.
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
        self.install(vip)?;
        log::info!("removed worker {worker} from {vip}");
        Ok(())
    }

    fn forget(&mut self, id: u32) -> anyhow::Result<()> {
        self.live.remove(&id);
        Ok(self.maps.write_load(id, LOAD_UNKNOWN)?)
    }

    fn remove_gracefully(
        &mut self,
        vip: &Vip,
        worker: IpAddr,
        timeout: Duration,
    ) -> anyhow::Result<serde_json::Value> {
        let id = self.set_drain(vip, worker, true)?;
        let live = self
            .live
            .get_mut(&id)
            .context("worker without live state")?;
        live.removing = Some(Instant::now() + timeout);
        log::info!(
            "removing worker {worker} from {vip} once its {} flows end (at most {})",
            live.flows,
            duration::format(timeout)
        );
        Ok(serde_json::json!({ "flows": live.flows, "timeout": duration::format(timeout) }))
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
            self.install(vip)?;
            log::info!("worker {worker} of {vip}: weight {weight}");
        }
        if let Some(load) = load {
            self.record_load(id, load, Source::Cli);
        }
        self.sync_load(id)
    }

    fn set_drain(&mut self, vip: &Vip, worker: IpAddr, drain: bool) -> anyhow::Result<u32> {
        let id = self.desired.set_drain(vip, worker, drain)?;
        if !drain {
            if let Some(live) = self.live.get_mut(&id) {
                live.removing = None;
            }
        }
        self.write_worker(id)?;
        self.install(vip)?;
        log::info!(
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
        let state = self.desired.vip(vip)?;
        let client = service::mask_addr(client, state.options.prefix_for(vip));
        self.desired.pin(vip, client, worker)?;
        let state = self.desired.vip(vip)?;
        let key = self.pin_key(state.id, client);
        let id = state.workers[&worker].id;
        self.maps.write_pin(key, id).context("writing the pin")?;
        self.install(vip)?;
        log::info!("pinned client {client} of {vip} to {worker}");
        Ok(())
    }

    fn unpin(&mut self, vip: &Vip, client: IpAddr) -> anyhow::Result<()> {
        let state = self.desired.vip(vip)?;
        let client = service::mask_addr(client, state.options.prefix_for(vip));
        let key = self.pin_key(state.id, client);
        self.desired.unpin(vip, client)?;
        self.maps.remove_pin(&key).context("removing the pin")?;
        self.install(vip)?;
        log::info!("unpinned client {client} of {vip}");
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
        log::info!("flushed {removed} sticky sessions");
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
        let drain = vip_state.workers.get(&live.addr).is_some_and(|w| w.drain);
        let mut state_flags = 0;
        if live.health.state() == HealthState::Down {
            state_flags |= BACKEND_DOWN;
        }
        if drain {
            state_flags |= BACKEND_DRAINING;
        }
        let entry = WorkerEntry {
            addr: live.addr,
            mac: live.mac,
            vip_id: vip_state.id,
            state_flags,
        };
        self.maps
            .write_backend(id, &entry)
            .with_context(|| format!("writing worker {}", live.addr))
    }

    /// Rebuilds and swaps in a VIP's Maglev table from the workers that
    /// take new flows.
    fn install(&mut self, vip: &Vip) -> anyhow::Result<()> {
        let state = self.desired.vip(vip)?;
        let live = &self.live;
        let members = state.members(|id| {
            live.get(&id)
                .is_some_and(|l| l.health.state() == HealthState::Up)
        });
        let (size, took) = self
            .maps
            .install_vip(vip, state, &members, self.desired.hash_seed)
            .with_context(|| format!("installing the Maglev table of {vip}"))?;
        log::info!(
            "{vip}: Maglev table of {size} slots for {} of {} workers built in {took:?}",
            members.len(),
            state.workers.len()
        );
        if members.is_empty() && !state.workers.is_empty() {
            log::warn!("{vip}: no worker takes new flows; its new connections are dropped");
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
                state
                    .workers
                    .iter()
                    .filter(move |_| kind != CheckKind::None || options.load.probe.is_some())
                    .map(move |(addr, worker)| health::Target {
                        vip: *vip,
                        worker: *addr,
                        id: worker.id,
                        kind,
                        port: options.health.port.unwrap_or(vip.port),
                        path: options.health.path.clone(),
                        interval: options.health.interval,
                        timeout: options.health.timeout,
                        load_probe: options.load.probe.clone(),
                    })
            })
            .collect()
    }

    /// Applies one health checker report.
    pub fn record_check(&mut self, report: health::Report) {
        let current = self
            .live
            .get(&report.id)
            .is_some_and(|l| l.vip == report.vip && l.addr == report.worker);
        if !current {
            return;
        }
        if let Some(Ok(load)) = report.load {
            self.record_load(report.id, load, Source::Probe);
            if let Err(error) = self.sync_load(report.id) {
                log::error!("writing a load figure: {error:#}");
            }
        } else if let Some(Err(error)) = &report.load {
            log::debug!("load probe of {} failed: {error}", report.worker);
        }
        let Ok(state) = self.desired.vip(&report.vip) else {
            return;
        };
        let (rise, fall) = (state.options.health.rise, state.options.health.fall);
        let Some(outcome) = report.outcome else {
            return;
        };
        let detail = outcome.detail.clone();
        let Some(live) = self.live.get_mut(&report.id) else {
            return;
        };
        let Some(now_state) = live.health.record(outcome, Instant::now(), rise, fall) else {
            return;
        };
        match now_state {
            HealthState::Down => log::warn!(
                "worker {} of {} is down ({detail}): its flows move to healthy workers",
                report.worker,
                report.vip
            ),
            HealthState::Up => log::info!("worker {} of {} is up", report.worker, report.vip),
        }
        let applied = self
            .write_worker(report.id)
            .and_then(|()| self.install(&report.vip));
        if let Err(error) = applied {
            log::error!("applying the health of {}: {error:#}", report.worker);
        }
    }

    /// Applies a load report pushed by a worker.
    pub fn push_load(&mut self, report: load::Report) -> Result<(), String> {
        let id = self
            .desired
            .worker(&report.vip, report.worker)
            .map_err(|e| e.to_string())?
            .id;
        self.record_load(id, report.load, Source::Push);
        self.sync_load(id).map_err(|e| format!("{e:#}"))
    }

    fn record_load(&mut self, id: u32, load: f64, source: Source) {
        if let Some(live) = self.live.get_mut(&id) {
            live.load = Some(Figure {
                load,
                source,
                at: Instant::now(),
            });
        }
    }

    /// Writes worker `id`'s load figure if it changed: its current report,
    /// or its active flows per weight, as its VIP chooses.
    fn sync_load(&mut self, id: u32) -> anyhow::Result<()> {
        let Some(live) = self.live.get(&id) else {
            return Ok(());
        };
        let state = self.desired.vip(&live.vip)?;
        let options = &state.options.load;
        let figure = match options.signal {
            LoadSignal::Reported => load::scaled(
                live.load
                    .and_then(|f| f.current(Instant::now(), options.ttl)),
            ),
            LoadSignal::Flows => {
                let weight = state.workers.get(&live.addr).map_or(1, |w| w.weight);
                load::scaled_flows(live.flows, weight)
            }
        };
        if figure != live.written_load {
            self.maps.write_load(id, figure)?;
            if let Some(live) = self.live.get_mut(&id) {
                live.written_load = figure;
            }
        }
        Ok(())
    }

    /// Once a second: takes in a flow-table scan, finishes graceful
    /// removals, expires load reports, refreshes MAC addresses.
    pub fn tick(&mut self, flows: Option<HashMap<u32, u64>>) {
        if let Some(flows) = &flows {
            for (id, live) in self.live.iter_mut() {
                live.flows = flows.get(id).copied().unwrap_or(0);
            }
        }
        let now = Instant::now();
        let done: Vec<(Vip, IpAddr)> = self
            .live
            .values()
            .filter(|l| {
                l.removing
                    .is_some_and(|deadline| now >= deadline || (flows.is_some() && l.flows == 0))
            })
            .map(|l| (l.vip, l.addr))
            .collect();
        for (vip, worker) in done {
            if let Err(error) = self.remove_worker(&vip, worker) {
                log::error!("removing drained worker {worker} of {vip}: {error:#}");
            }
        }
        let ids: Vec<u32> = self.live.keys().copied().collect();
        for id in ids {
            if let Err(error) = self.sync_load(id) {
                log::error!("writing a load figure: {error:#}");
            }
        }
        self.refresh_neighbours();
    }

    /// Sticky-session lifetimes by VIP id, for expiry.
    pub fn sticky_ttls(&self) -> HashMap<u32, Duration> {
        self.desired
            .vips()
            .values()
            .filter_map(|s| Some((s.id, s.options.sticky?)))
            .collect()
    }

    /// Where the maps are pinned.
    pub fn pin_dir(&self) -> &std::path::Path {
        &self.instance.pin_dir
    }

    /// Re-reads every worker's MAC address and writes the ones that
    /// changed; unresolved workers are solicited again.
    fn refresh_neighbours(&mut self) {
        let known = neighbour::table(&self.instance.iface);
        let mut changed = Vec::new();
        for (id, live) in self.live.iter_mut() {
            let current = known.get(&live.addr).copied();
            if current.is_none() {
                neighbour::solicit(live.addr);
            }
            if current.is_some() && current != live.mac {
                live.mac = current;
                changed.push(*id);
            }
        }
        for id in changed {
            if let Err(error) = self.write_worker(id) {
                log::warn!("updating a worker's MAC: {error:#}");
            }
        }
    }

    fn vip_rows(&self) -> Vec<VipRow> {
        self.desired
            .vips()
            .iter()
            .map(|(vip, state)| VipRow {
                vip: *vip,
                id: state.id,
                table_size: state.effective_table_size(),
                workers: state.workers.len(),
                serving: state
                    .members(|id| {
                        self.live
                            .get(&id)
                            .is_some_and(|l| l.health.state() == HealthState::Up)
                    })
                    .len(),
                scheduler: state.options.scheduler,
                sticky: state.options.sticky.map(duration::format),
                sticky_prefix: state.options.prefix_for(vip),
                health: state.options.health.kind_for(vip),
            })
            .collect()
    }

    fn backend_rows(&self, only: Option<Vip>) -> anyhow::Result<Vec<BackendRow>> {
        if let Some(vip) = &only {
            self.desired.vip(vip)?;
        }
        let now = Instant::now();
        Ok(self
            .desired
            .vips()
            .iter()
            .filter(|(vip, _)| only.is_none_or(|o| o == **vip))
            .flat_map(|(vip, state)| {
                state.workers.iter().filter_map(move |(addr, w)| {
                    let live = self.live.get(&w.id)?;
                    let figure = live
                        .load
                        .filter(|f| f.current(now, state.options.load.ttl).is_some());
                    Some(BackendRow {
                        vip: *vip,
                        worker: *addr,
                        id: w.id,
                        weight: w.weight,
                        state: worker_state(live, w.drain),
                        check: live.health.last().map(|(outcome, at)| CheckRow {
                            ok: outcome.ok,
                            detail: outcome.detail.clone(),
                            took_ms: outcome.took.as_secs_f64() * 1e3,
                            ago_ms: now.saturating_duration_since(*at).as_millis() as u64,
                        }),
                        load: figure.map(|f| f.load),
                        load_source: figure.map(|f| f.source),
                        flows: live.flows,
                        mac: live.mac.as_ref().map(neighbour::format_mac),
                    })
                })
            })
            .collect())
    }

    fn session_rows(&self, only: Option<Vip>) -> anyhow::Result<Vec<SessionRow>> {
        if let Some(vip) = &only {
            self.desired.vip(vip)?;
        }
        let vips: HashMap<u32, (Vip, u8)> = self
            .desired
            .vips()
            .iter()
            .filter(|(vip, _)| only.is_none_or(|o| o == **vip))
            .map(|(vip, s)| (s.id, (*vip, s.options.prefix_for(vip))))
            .collect();
        let mut rows: Vec<SessionRow> = self
            .desired
            .vips()
            .iter()
            .filter(|(vip, _)| only.is_none_or(|o| o == **vip))
            .flat_map(|(vip, s)| {
                s.pins.iter().map(|(client, worker)| SessionRow {
                    vip: *vip,
                    client: *client,
                    prefix: s.options.prefix_for(vip),
                    worker: *worker,
                    pinned: true,
                    idle_ms: None,
                })
            })
            .collect();
        let now = activity::monotonic_ns();
        let sessions =
            sessions::read_all(&self.instance.pin_dir).context("reading sticky sessions")?;
        for (key, value) in sessions {
            let (Some((vip, prefix)), Some(live)) =
                (vips.get(&key.vip_id), self.live.get(&value.backend_id))
            else {
                continue;
            };
            let family = if vip.addr.is_ipv4() { 4 } else { 6 };
            let Some(client) = service::addr_from_bytes(key.client, family) else {
                continue;
            };
            rows.push(SessionRow {
                vip: *vip,
                client,
                prefix: *prefix,
                worker: live.addr,
                pinned: false,
                idle_ms: Some(now.saturating_sub(value.last_ns) / 1_000_000),
            });
        }
        rows.sort_by_key(|a| (a.vip, a.client, !a.pinned));
        Ok(rows)
    }

    fn status(&self) -> Status {
        Status {
            iface: self.instance.iface.clone(),
            xdp_mode: self.instance.xdp_mode.clone(),
            program_id: self.instance.program_id,
            pin_dir: self.instance.pin_dir.display().to_string(),
            max_flows: self.instance.max_flows,
            hash_seed: self.desired.hash_seed,
            vips: self.desired.vips().len(),
            workers: self.desired.vips().values().map(|v| v.workers.len()).sum(),
            workers_down: self
                .live
                .values()
                .filter(|l| l.health.state() == HealthState::Down)
                .count(),
            load_listen: self.instance.load_listen.clone(),
        }
    }
}

fn worker_state(live: &Live, drain: bool) -> WorkerState {
    if live.removing.is_some() {
        WorkerState::Removing
    } else if drain {
        WorkerState::Draining
    } else if live.health.state() == HealthState::Down {
        WorkerState::Down
    } else {
        WorkerState::Up
    }
}

/// The worker's MAC, soliciting it and waiting briefly when unknown.
fn resolve(iface: &str, addr: IpAddr) -> Option<[u8; 6]> {
    if let Some(mac) = neighbour::lookup(iface, addr) {
        return Some(mac);
    }
    neighbour::solicit(addr);
    let deadline = Instant::now() + RESOLVE_WAIT;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(25));
        if let Some(mac) = neighbour::lookup(iface, addr) {
            return Some(mac);
        }
    }
    None
}
