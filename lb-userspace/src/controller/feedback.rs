//! What the controller learns from workers and the flow table (health
//! check results, load figures, active flows, MAC addresses) and how it
//! passes that on to the data plane.

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use super::Controller;
use crate::{
    health::{self, HealthState},
    load::{self, Figure, Source},
    neighbour,
    options::LoadSignal,
    service::Vip,
};

impl Controller {
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
                tracing::error!("writing a load figure: {error:#}");
            }
        } else if let Some(Err(error)) = &report.load {
            tracing::debug!("load probe of {} failed: {error}", report.worker);
        }
        let Ok(state) = self.desired.vip(&report.vip) else {
            return;
        };
        let (rise, fall) = (state.options.health.rise, state.options.health.fall);
        let Some(outcome) = report.outcome else {
            return;
        };
        self.check_latency.observe(outcome.took.as_secs_f64());
        let detail = outcome.detail.clone();
        let Some(live) = self.live.get_mut(&report.id) else {
            return;
        };
        let Some(now_state) = live.health.record(outcome, Instant::now(), rise, fall) else {
            return;
        };
        match now_state {
            HealthState::Down => tracing::warn!(
                "worker {} of {} is down ({detail}): its flows move to healthy workers",
                report.worker,
                report.vip
            ),
            HealthState::Up => tracing::info!("worker {} of {} is up", report.worker, report.vip),
        }
        let applied = self
            .write_worker(report.id)
            .and_then(|()| self.install(&report.vip));
        if let Err(error) = applied {
            tracing::error!("applying the health of {}: {error:#}", report.worker);
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

    pub(super) fn record_load(&mut self, id: u32, load: f64, source: Source) {
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
    pub(super) fn sync_load(&mut self, id: u32) -> anyhow::Result<()> {
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
    pub fn tick(&mut self, scan: Option<crate::activity::Scan>) {
        if let Some(scan) = &scan {
            for (id, live) in self.live.iter_mut() {
                live.flows = scan.active.get(id).copied().unwrap_or(0);
            }
            self.occupancy.flow_entries = scan.entries;
        }
        let flows = scan.map(|s| s.active);
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
        let removed_any = !done.is_empty();
        for (vip, worker) in done {
            if let Err(error) = self.remove_worker(&vip, worker) {
                tracing::error!("removing drained worker {worker} of {vip}: {error:#}");
            }
        }
        if removed_any {
            if let Err(error) = self.save() {
                tracing::error!("saving the state: {error:#}");
            }
        }
        let ids: Vec<u32> = self.live.keys().copied().collect();
        for id in ids {
            if let Err(error) = self.sync_load(id) {
                tracing::error!("writing a load figure: {error:#}");
            }
        }
        self.refresh_neighbours();
    }

    /// Records how many sticky sessions the table holds.
    pub fn set_session_count(&mut self, sessions: u64) {
        self.occupancy.sessions = sessions;
    }

    /// Sticky-session lifetimes by VIP id, for expiry.
    pub fn sticky_ttls(&self) -> HashMap<u32, Duration> {
        self.desired
            .vips()
            .values()
            .filter_map(|s| Some((s.id, s.options.sticky?)))
            .collect()
    }

    /// Re-reads every worker's MAC address and writes the ones that
    /// changed; unresolved workers are solicited again.
    pub(super) fn refresh_neighbours(&mut self) {
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
                tracing::warn!("updating a worker's MAC: {error:#}");
            }
        }
    }
}
