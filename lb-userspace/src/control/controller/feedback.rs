//! What the controller learns from workers and the flow table (health
//! check results, load figures, active flows, MAC addresses) and how it
//! passes that on to the data plane.

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
    time::{Duration, Instant, SystemTime},
};

use super::{Controller, Hop, Live, Reach, UNRESOLVED_GRACE};
use crate::{
    checks::health::{self, HealthState},
    checks::load::{self, Figure, Source},
    desired::options::LoadSignal,
    kernel::neighbour::{self, Entry},
    service::Vip,
};

impl Controller {
    /// Applies one round of a shared checker to every worker entry it
    /// serves.
    pub fn record_check(&mut self, report: health::Report) {
        if let Some(outcome) = &report.outcome {
            self.check_latency.observe(outcome.took.as_secs_f64());
        }
        for &(vip, id) in &report.serves {
            self.record_check_of(vip, id, &report);
        }
    }

    fn record_check_of(&mut self, vip: Vip, id: u32, report: &health::Report) {
        let worker = report.worker;
        let current = self
            .live
            .get(&id)
            .is_some_and(|l| l.vip == vip && l.addr == worker);
        if !current {
            return;
        }
        match &report.load {
            Some(Ok(load)) => {
                self.record_load(id, *load, Source::Probe);
                if let Err(error) = self.sync_load(id) {
                    tracing::error!("writing a load figure: {error:#}");
                }
            }
            Some(Err(error)) => tracing::debug!("load probe of {worker} failed: {error}"),
            None => {}
        }
        let Ok(state) = self.desired.vip(&vip) else {
            return;
        };
        let (rise, fall) = (state.options.health.rise, state.options.health.fall);
        let Some(outcome) = report.outcome.clone() else {
            return;
        };
        let detail = outcome.detail.clone();
        let Some(live) = self.live.get_mut(&id) else {
            return;
        };
        let Some(now_state) = live.health.record(outcome, Instant::now(), rise, fall) else {
            return;
        };
        match now_state {
            HealthState::Down => tracing::warn!(
                "worker {worker} of {vip} is down ({detail}): its flows move to healthy workers"
            ),
            HealthState::Up => tracing::info!("worker {worker} of {vip} is up"),
        }
        match self.write_worker(id) {
            Ok(()) => self.reschedule(&vip),
            Err(error) => tracing::error!("applying the health of {worker}: {error:#}"),
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
    pub fn tick(&mut self, scan: Option<crate::dataplane::activity::Scan>) {
        if let Some(scan) = &scan {
            for (id, live) in self.live.iter_mut() {
                live.flows = scan.active.get(id).copied().unwrap_or(0);
            }
            self.occupancy.flow_entries = scan.entries;
        }
        let scanned = scan.is_some();
        let now = Instant::now();
        self.follow_removals(now);
        let done: Vec<(Vip, IpAddr)> = self
            .live
            .values()
            .filter(|l| {
                l.removal_due
                    .is_some_and(|due| now >= due || (scanned && l.flows == 0))
            })
            .map(|l| (l.vip, l.addr))
            .collect();
        self.unsaved |= !done.is_empty();
        for (vip, worker) in done {
            if let Err(error) = self.remove_worker(&vip, worker) {
                tracing::error!("removing drained worker {worker} of {vip}: {error:#}");
            }
        }
        let ids: Vec<u32> = self.live.keys().copied().collect();
        for id in ids {
            if let Err(error) = self.sync_load(id) {
                tracing::error!("writing a load figure: {error:#}");
            }
        }
        self.refresh_neighbours(true);
        self.check_pins();
        self.retry_installs();
        self.retry_save();
        self.announce();
    }

    /// Gives each worker being removed its monotonic deadline, from the
    /// saved wall-clock one the first time (after a start or an adoption),
    /// and takes it from those no longer being removed.
    fn follow_removals(&mut self, now: Instant) {
        let wall = SystemTime::now();
        for live in self.live.values_mut() {
            let remove_by = self
                .desired
                .worker(&live.vip, live.addr)
                .ok()
                .and_then(|w| w.remove_by);
            live.removal_due = match (remove_by, live.removal_due) {
                (None, _) => None,
                (Some(_), Some(due)) => Some(due),
                (Some(by), None) => Some(now + crate::desired::state::time_until(by, wall)),
            };
        }
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

    /// Looks up the first hop of every IPIP, GUE and NAT worker again (a
    /// route changed), once per address and kind however many VIPs it
    /// serves, then their neighbours.
    pub fn refresh_routes(&mut self) {
        // DSR workers are on a link of lb's; with several, a route says
        // which.
        let several = self.instance.ifaces.len() > 1;
        let routed: Vec<(u32, Vip, IpAddr, Option<bool>)> = self
            .live
            .iter()
            .filter_map(|(id, l)| {
                let forward = self.desired.vip(&l.vip).ok()?.options.forward;
                let nat = forward.is_l3().then_some(forward.is_nat());
                (nat.is_some() || several).then_some((*id, l.vip, l.addr, nat))
            })
            .collect();
        let mut hops = HashMap::new();
        let mut moved = Vec::new();
        for (id, vip, addr, nat) in routed {
            let hop = *hops.entry((addr, nat)).or_insert_with(|| match nat {
                Some(nat) => self.l3_hop(addr, nat),
                None => Hop::Via(addr, self.dsr_iface(addr)),
            });
            if self.set_hop(id, vip, addr, hop) {
                moved.push((id, vip));
            }
        }
        for (id, vip) in &moved {
            if let Err(error) = self.write_worker(*id) {
                tracing::warn!("updating a worker's route: {error:#}");
            }
            self.reschedule(vip);
        }
        if !moved.is_empty() {
            self.refresh_neighbours(true);
        }
    }

    /// Re-reads every worker's (or its router's) neighbour entry: writes
    /// MACs that changed, takes workers whose host stopped answering out of
    /// scheduling and brings back those that answer again; with `nudge`,
    /// also has the kernel re-probe entries not confirmed lately (nothing
    /// else would: the data plane's packets bypass the kernel) and solicit
    /// unresolved ones. Between ticks it runs without `nudge`, when the
    /// kernel reports a neighbour change.
    pub fn refresh_neighbours(&mut self, nudge: bool) {
        let mut tables = HashMap::new();
        for ifindex in self.instance.ifindexes() {
            match self.netlink.neighbours(ifindex) {
                Ok(table) => tables.insert(ifindex, table),
                Err(error) => {
                    tracing::warn!("reading the neighbour table: {error}");
                    return;
                }
            };
        }
        let now = Instant::now();
        let mut rewrite = Vec::new();
        let mut reschedule = BTreeSet::new();
        let mut probe = BTreeSet::new();
        let mut solicit = BTreeSet::new();
        for (id, live) in self.live.iter_mut() {
            let Some((hop, ifindex)) = live.hop.at() else {
                continue;
            };
            let entry = tables.get(&ifindex).and_then(|t| t.get(&hop)).copied();
            match entry {
                Some(Entry::Resolved {
                    confirmed_ms,
                    fixed: false,
                    probing: false,
                    ..
                }) if confirmed_ms > PROBE_AFTER_MS => {
                    probe.insert((hop, ifindex));
                }
                Some(Entry::Resolved { .. }) => {}
                _ => {
                    solicit.insert(hop);
                }
            }
            let (reach, mac) = next_reach(live, hop, entry, now);
            let was_schedulable = live.takes_new_flows();
            let changed = reach != live.reach || mac != live.mac;
            log_reach(live, reach);
            live.reach = reach;
            live.mac = mac;
            if changed {
                rewrite.push(*id);
            }
            if live.takes_new_flows() != was_schedulable {
                reschedule.insert(live.vip);
            }
        }
        if !nudge {
            probe.clear();
            solicit.clear();
        }
        for (addr, ifindex) in probe {
            if let Err(error) = self.netlink.probe_neighbour(ifindex, addr) {
                tracing::debug!("asking the kernel to probe {addr}: {error}");
            }
        }
        solicit.into_iter().for_each(neighbour::solicit);
        for id in rewrite {
            if let Err(error) = self.write_worker(id) {
                tracing::warn!("updating a worker's neighbour: {error:#}");
            }
        }
        for vip in reschedule {
            self.reschedule(&vip);
        }
    }
}

/// The kernel has had no proof that a worker answers for this long: ask
/// it to probe (with the kernel's three one-second unicast probes, a dead
/// host is found within about this plus three seconds).
const PROBE_AFTER_MS: u32 = 3_000;

/// A worker's reachability and MAC after its neighbour entry read `entry`.
fn next_reach(
    live: &Live,
    hop: IpAddr,
    entry: Option<Entry>,
    now: Instant,
) -> (Reach, Option<[u8; 6]>) {
    let family_reason = super::unresolved_reason(live.addr, hop);
    match entry {
        Some(Entry::Resolved { mac, .. }) => (Reach::Reachable, Some(mac)),
        Some(Entry::Failed) => (Reach::Unreachable(family_reason), live.mac),
        Some(Entry::Resolving) | None => {
            let reach = match (live.reach, live.mac) {
                (_, None) => Reach::Unreachable(family_reason),
                (Reach::Reachable, Some(_)) => Reach::Resolving(now),
                (Reach::Resolving(since), Some(_)) if now - since > UNRESOLVED_GRACE => {
                    Reach::Unreachable(family_reason)
                }
                (other, Some(_)) => other,
            };
            (reach, live.mac)
        }
    }
}

fn log_reach(live: &Live, next: Reach) {
    let (vip, addr) = (live.vip, live.addr);
    match (live.reach, next) {
        (Reach::Unreachable(_), Reach::Unreachable(_)) => {}
        (_, Reach::Unreachable(reason)) => tracing::warn!(
            "worker {addr} of {vip} is unreachable ({reason}): not scheduled until it answers"
        ),
        (Reach::Unreachable(_), _) => {
            tracing::info!("worker {addr} of {vip} is reachable again")
        }
        _ => {}
    }
}
