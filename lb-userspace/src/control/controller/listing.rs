//! What the controller reports: `vip list`, `backend list`, `sessions
//! list` and `status` rows.

use std::{collections::HashMap, time::Instant};

use anyhow::Context as _;

use super::{Controller, Live, Reach};
use crate::{
    admin::protocol::{BackendRow, CheckRow, SessionRow, Status, VipRow, WorkerState},
    checks::health::HealthState,
    dataplane::activity,
    dataplane::capture,
    dataplane::sessions,
    desired::options::Forward,
    desired::state::Worker,
    duration,
    kernel::neighbour,
    service::{self, Vip},
};

/// What the metrics endpoint reports from the controller's side.
pub struct MetricsSnapshot {
    /// The VIPs.
    pub vips: Vec<VipRow>,
    /// Every worker of every VIP.
    pub workers: Vec<BackendRow>,
    /// Table occupancy at the last scans.
    pub occupancy: super::Occupancy,
    /// Where the maps are pinned.
    pub pin_dir: std::path::PathBuf,
    /// Flow table capacity.
    pub max_flows: u32,
    /// Durations of every health check so far.
    pub check_latency: prometheus_client::metrics::histogram::Histogram,
    /// Whether the program still runs and its pins are whole, and how
    /// often pins were restored.
    pub attachment: super::Attachment,
    /// The kernel's statistics of the program, where the caller has them.
    pub program: Option<crate::dataplane::ProgramStats>,
    /// Each VIP address's announcement, with --announce-table.
    pub announcements: Vec<crate::admin::protocol::AnnounceRow>,
    /// Whether changes in force are missing from the state file.
    pub unsaved: bool,
}

impl Controller {
    /// The controller's figures for a metrics scrape.
    pub fn metrics_snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            vips: self.vip_rows(),
            workers: self.backend_rows(None).unwrap_or_default(),
            occupancy: self.occupancy,
            pin_dir: self.instance.pin_dir.clone(),
            max_flows: self.instance.max_flows,
            check_latency: self.check_latency.clone(),
            attachment: self.attachment.clone(),
            program: None,
            announcements: self.announcement_rows(),
            unsaved: self.save_failure.is_some(),
        }
    }

    pub(super) fn vip_rows(&self) -> Vec<VipRow> {
        self.desired
            .vips()
            .iter()
            .map(|(vip, state)| VipRow {
                vip: *vip,
                id: state.id,
                table_size: state.effective_table_size(),
                workers: state.workers.len(),
                serving: state
                    .members(|id| self.live.get(&id).is_some_and(Live::takes_new_flows))
                    .len(),
                scheduler: state.options.scheduler,
                forward: state.options.forward,
                gue_port: (state.options.forward == Forward::Gue).then(|| state.options.gue_port()),
                sticky: state.options.sticky.map(duration::format),
                sticky_prefix: state.options.prefix_for(vip),
                health: state.options.health.kind_for(vip),
                idle_timeout: duration::format(state.options.idle_timeout_for(vip)),
            })
            .collect()
    }

    pub(super) fn backend_rows(&self, only: Option<Vip>) -> anyhow::Result<Vec<BackendRow>> {
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
                        port: w.port,
                        id: w.id,
                        weight: w.weight,
                        state: worker_state(live, w),
                        reason: match live.reach {
                            Reach::Unreachable(reason) => Some(reason.to_owned()),
                            _ => None,
                        },
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

    pub(super) fn session_rows(&self, only: Option<Vip>) -> anyhow::Result<Vec<SessionRow>> {
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

    pub(super) fn status(&self) -> Status {
        let announcements = self.announcement_rows();
        Status {
            name: self.instance.name.clone(),
            iface: self.instance.ifaces[0].name.clone(),
            ifaces: self
                .instance
                .ifaces
                .iter()
                .map(|i| i.name.clone())
                .collect(),
            xdp_mode: self.instance.xdp_mode.clone(),
            program_id: self.instance.program_id,
            attached: self.attachment.lost.is_none(),
            detached_because: self.attachment.lost.clone(),
            pinned: self.attachment.unpinned.is_none(),
            unpinned_because: self.attachment.unpinned.clone(),
            pin_dir: self.instance.pin_dir.display().to_string(),
            max_flows: self.instance.max_flows,
            max_vips: self.instance.limits.vips,
            max_workers: self.instance.limits.workers,
            nat_sources: self.instance.nat.sources.clone(),
            nat_ports: self.instance.nat.ports.to_string(),
            max_nat_flows: self.instance.max_nat_flows,
            hash_seed: self.desired.hash_seed,
            unsaved_since: self.save_failure.as_ref().map(|f| f.since),
            save_error: self.save_failure.as_ref().map(|f| f.error.clone()),
            vips: self.desired.vips().len(),
            workers: self.desired.vips().values().map(|v| v.workers.len()).sum(),
            workers_down: self
                .live
                .values()
                .filter(|l| l.health.state() == HealthState::Down)
                .count(),
            workers_unreachable: self
                .live
                .values()
                .filter(|l| matches!(l.reach, Reach::Unreachable(_)))
                .count(),
            load_listen: self.instance.load_listen.clone(),
            announce_table: self.instance.announce_table,
            announced: announcements.iter().filter(|a| a.announced).count(),
            not_announced: announcements.iter().filter(|a| !a.announced).count(),
            capture_running: capture::running(&self.instance.pin_dir)
                .inspect_err(|e| tracing::debug!("reading the capture filter: {e:#}"))
                .unwrap_or(false),
        }
    }
}

fn worker_state(live: &Live, worker: &Worker) -> WorkerState {
    if worker.remove_by.is_some() {
        WorkerState::Removing
    } else if live.health.state() == HealthState::Down {
        WorkerState::Down
    } else if matches!(live.reach, Reach::Unreachable(_)) {
        WorkerState::Unreachable
    } else if worker.drain {
        WorkerState::Draining
    } else {
        WorkerState::Up
    }
}
