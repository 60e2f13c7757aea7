//! The controller: applies desired-state changes to the maps and keeps
//! worker MAC addresses current.

use std::{collections::HashMap, net::IpAddr, time::Duration, time::Instant};

use anyhow::Context as _;

use crate::{
    api::{BackendRow, Request, Response, Status, VipRow},
    maps::ControlMaps,
    neighbour,
    service::Vip,
    state::Desired,
};

/// How long adding a worker waits for its MAC address to resolve.
const RESOLVE_WAIT: Duration = Duration::from_millis(500);

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
    pub pin_dir: String,
    /// Flow table capacity.
    pub max_flows: u32,
}

/// Desired state plus the maps that carry it out.
pub struct Controller {
    desired: Desired,
    maps: ControlMaps,
    instance: Instance,
    /// MAC last written for each worker id (None: unresolved).
    macs: HashMap<u32, (IpAddr, Option<[u8; 6]>)>,
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
            macs: HashMap::new(),
        };
        for (vip, state) in desired.vips() {
            controller.apply(Request::VipAdd {
                vip: *vip,
                table_size: state.table_size,
            })?;
            for (worker, w) in &state.workers {
                controller.apply(Request::BackendAdd {
                    vip: *vip,
                    worker: *worker,
                    weight: w.weight,
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
        match request {
            Request::VipAdd { vip, table_size } => {
                self.desired.add_vip(vip, table_size)?;
                self.install(&vip)?;
                log::info!("added VIP {vip}");
            }
            Request::VipDel { vip } => {
                self.desired.vip(&vip)?;
                self.maps
                    .remove_vip(&vip)
                    .context("removing the VIP from the data plane")?;
                self.desired.del_vip(&vip)?;
                log::info!("removed VIP {vip}");
            }
            Request::BackendAdd {
                vip,
                worker,
                weight,
            } => {
                let id = self.desired.add_worker(&vip, worker, weight)?;
                let mac = resolve(&self.instance.iface, worker);
                self.maps
                    .write_backend(id, worker, mac)
                    .context("writing the worker")?;
                self.macs.insert(id, (worker, mac));
                self.install(&vip)?;
                log::info!("added worker {worker} to {vip} (weight {weight})");
            }
            Request::BackendDel { vip, worker } => {
                let id = self.desired.del_worker(&vip, worker)?;
                self.macs.remove(&id);
                self.install(&vip)?;
                log::info!("removed worker {worker} from {vip}");
            }
            Request::VipList => return Ok(serde_json::to_value(self.vip_rows())?),
            Request::BackendList { vip } => {
                return Ok(serde_json::to_value(self.backend_rows(vip)?)?)
            }
            Request::Status => return Ok(serde_json::to_value(self.status())?),
        }
        Ok(serde_json::Value::Null)
    }

    /// Rebuilds and swaps in a VIP's Maglev table.
    fn install(&mut self, vip: &Vip) -> anyhow::Result<()> {
        let state = self.desired.vip(vip)?;
        let (size, took) = self
            .maps
            .install_vip(vip, state, self.desired.hash_seed)
            .with_context(|| format!("installing the Maglev table of {vip}"))?;
        log::info!(
            "{vip}: Maglev table of {size} slots for {} workers built in {took:?}",
            state.workers.len()
        );
        Ok(())
    }

    /// Re-reads every worker's MAC address and writes the ones that
    /// changed; unresolved workers are solicited again.
    pub fn refresh_neighbours(&mut self) {
        let known = neighbour::table(&self.instance.iface);
        for (id, (addr, mac)) in self.macs.iter_mut() {
            let current = known.get(addr).copied();
            if current.is_none() {
                neighbour::solicit(*addr);
            }
            if current.is_some() && current != *mac {
                if let Err(error) = self.maps.write_backend(*id, *addr, current) {
                    log::warn!("updating the MAC of worker {addr}: {error}");
                    continue;
                }
                *mac = current;
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
            })
            .collect()
    }

    fn backend_rows(&self, only: Option<Vip>) -> anyhow::Result<Vec<BackendRow>> {
        if let Some(vip) = &only {
            self.desired.vip(vip)?;
        }
        Ok(self
            .desired
            .vips()
            .iter()
            .filter(|(vip, _)| only.is_none_or(|o| o == **vip))
            .flat_map(|(vip, state)| {
                state.workers.iter().map(|(addr, w)| BackendRow {
                    vip: *vip,
                    worker: *addr,
                    id: w.id,
                    weight: w.weight,
                    mac: self
                        .macs
                        .get(&w.id)
                        .and_then(|(_, mac)| mac.as_ref())
                        .map(neighbour::format_mac),
                })
            })
            .collect())
    }

    fn status(&self) -> Status {
        Status {
            iface: self.instance.iface.clone(),
            xdp_mode: self.instance.xdp_mode.clone(),
            program_id: self.instance.program_id,
            pin_dir: self.instance.pin_dir.clone(),
            max_flows: self.instance.max_flows,
            hash_seed: self.desired.hash_seed,
            vips: self.desired.vips().len(),
            workers: self.desired.vips().values().map(|v| v.workers.len()).sum(),
        }
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
