//! What `lb explain` prints: the explanation of a snapshot's decision,
//! step by step, as JSON (docs/JSON.md) and as text.

use std::{collections::BTreeSet, net::IpAddr, net::SocketAddr};

use lb_common::{
    balancer::{
        Backend, FlowValue, StickyValue, BACKEND_MAC_KNOWN, BACKEND_VALID, FLOW_CLOSING,
        LOAD_SCALE, LOAD_UNKNOWN, SCHED_LEAST_LOAD, VIP_HAS_PINS, VIP_STICKY,
    },
    decide::{self, DecisionMaps, Missed, Rule, Schedule, Stale},
};
use serde::Serialize;

use super::gather::{Picked, Trace, View};
use crate::{
    admin::protocol::WorkerState,
    commands::table,
    service::{self, Protocol, Vip},
};

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
    /// The explanation of what the decision says, `trace`, about this
    /// snapshot.
    pub(super) fn explain(&self, trace: &Trace) -> Explanation {
        let new_flow = self.verdict(self.rule_choice(&trace.new_flow));
        let flow = self.flow.as_ref().zip(trace.flow.as_ref());
        let (verdict, syn) = match trace.flow {
            Some(Ok(id)) => {
                let established = self.verdict(Choice::Worker(id, "established flow".into()));
                let is_tcp = self.vip.proto == Protocol::Tcp;
                (established, is_tcp.then_some(new_flow))
            }
            _ => (new_flow, None),
        };
        Explanation {
            vip: self.vip,
            client: self.client,
            client_port: self.key.map(|k| u16::from_be(k.sport)),
            settings: self.settings(),
            flow: flow.map(|(value, step)| self.flow_report(value, step)),
            pin: self.pin.map(|id| self.pin_report(id, &trace.new_flow)),
            session: self
                .session
                .map(|s| self.session_report(&s, &trace.new_flow)),
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
            idle_timeout_secs: self.tags.get(&info.id).map_or(0, |t| t.idle_timeout_s),
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

    /// Worker `id`'s address, or `#id` for a slot without one.
    fn name(&self, id: u32) -> String {
        self.backend(id)
            .filter(|b| b.flags & BACKEND_VALID != 0)
            .and_then(|b| service::addr_from_bytes(b.addr, b.family))
            .map_or_else(|| format!("#{id}"), |addr| addr.to_string())
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
            match WorkerState::from_flags(flags) {
                WorkerState::Up => format!("worker {name} can't take it"),
                state => format!("worker {name} is {state}"),
            }
        }
    }

    /// Why the flow table does not decide, for flow entry `value`.
    fn missed(&self, value: &FlowValue, missed: Missed) -> String {
        match missed {
            Missed::Syn => "a SYN opens a new connection".into(),
            Missed::Absent => "no entry".into(),
            Missed::VipPastMap => format!("its VIP id {} is past the map", value.vip_id),
            Missed::VipReplaced => "its VIP was removed or replaced since".into(),
            Missed::Expired { idle_timeout_s } => format!(
                "idle for {:.1}s, past the VIP's idle timeout of {idle_timeout_s}s",
                secs(self.now_ns.saturating_sub(value.last_seen_ns)),
            ),
            Missed::NoWorker | Missed::WorkerRefuses => self.unusable(
                value.backend_id,
                value.vip_id,
                Some(value.backend_generation),
            ),
        }
    }

    fn flow_report(&self, value: &FlowValue, step: &Result<u32, Missed>) -> FlowReport {
        FlowReport {
            worker: self.name(value.backend_id),
            age_secs: secs(self.now_ns.saturating_sub(value.created_ns)),
            idle_secs: secs(self.now_ns.saturating_sub(value.last_seen_ns)),
            closing: value.flags & FLOW_CLOSING != 0,
            followed: step.is_ok(),
            why_not: step.err().map(|missed| self.missed(value, missed)),
        }
    }

    fn client_prefix(&self) -> String {
        let prefix = self.info.sticky_prefix;
        format!("{}/{prefix}", service::mask_addr(self.client, prefix))
    }

    fn pin_report(&self, id: u32, rule: &Rule<&StickyValue, Picked>) -> PinReport {
        let applies = matches!(rule, Rule::Pinned(_));
        PinReport {
            client: self.client_prefix(),
            worker: self.name(id),
            applies,
            why_not: (!applies).then(|| self.unusable(id, self.info.id, None)),
        }
    }

    fn session_report(
        &self,
        session: &StickyValue,
        rule: &Rule<&StickyValue, Picked>,
    ) -> SessionReport {
        let id = session.backend_id;
        let idle = self.now_ns.saturating_sub(session.last_ns);
        let ttl = self.info.sticky_ttl_s;
        let why_not = match rule {
            Rule::Sticky { .. } => None,
            Rule::Pinned(_) => Some("the pin comes first".to_owned()),
            Rule::Scheduled {
                stale: Some(Stale::Expired),
                ..
            } => Some(format!(
                "expired: the client's last new connection was {:.1}s ago, the TTL is {ttl}s",
                secs(idle)
            )),
            Rule::Scheduled { .. } => {
                Some(self.unusable(id, self.info.id, Some(session.backend_generation)))
            }
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

    /// A new flow's worker, and why, as the decision chose it.
    fn rule_choice(&self, rule: &Rule<&StickyValue, Picked>) -> Choice {
        match rule {
            Rule::Pinned(id) => Choice::Worker(*id, "pinned".into()),
            Rule::Sticky { backend_id, .. } => Choice::Worker(*backend_id, "sticky session".into()),
            Rule::Scheduled {
                scheduled,
                becomes_session,
                ..
            } => match self.picked_choice(scheduled) {
                Choice::Worker(id, reason) if becomes_session.is_some() => {
                    Choice::Worker(id, format!("{reason}; it becomes the sticky session"))
                }
                other => other,
            },
        }
    }

    fn picked_choice(&self, picked: &Picked) -> Choice {
        match picked {
            Picked::Flow(schedule) => self.schedule_choice(schedule),
            Picked::NoWorker => Choice::NoWorker,
            Picked::OnlyWorker(id) => Choice::Worker(
                *id,
                "every slot of the Maglev table holds this worker".into(),
            ),
            Picked::DependsOnPort => Choice::Undecided(format!(
                "the client's port decides: the flow hash picks one of {} Maglev slots ({})",
                self.info.table_size,
                self.scheduler_word()
            )),
        }
    }

    /// The scheduler's pick, and why.
    fn schedule_choice(&self, schedule: &Schedule) -> Choice {
        let (first, second, first_load, second_load, second_won) = match *schedule {
            Schedule::Empty => return Choice::NoWorker,
            Schedule::Maglev(first) => {
                return Choice::Worker(first.worker, format!("maglev slot {}", first.slot))
            }
            Schedule::SecondEmpty(first) => {
                return Choice::Worker(
                    first.worker,
                    format!(
                        "maglev slot {} (the second choice's slot is empty)",
                        first.slot
                    ),
                )
            }
            Schedule::Weighed {
                first,
                second,
                first_load,
                second_load,
                second_won,
            } => (first, second, first_load, second_load, second_won),
        };
        let shown = |id, load| {
            let figure = load_fraction(load).map_or("unknown".into(), |l| format!("{l:.2}"));
            format!("{} ({figure})", self.name(id))
        };
        let (a, b) = (
            shown(first.worker, first_load),
            shown(second.worker, second_load),
        );
        if second_won {
            return Choice::Worker(
                second.worker,
                format!("least-load: lower load of {b} and {a}"),
            );
        }
        let maglev = format!("maglev slot {}", first.slot);
        let reason = if first.worker == second.worker {
            format!("least-load: both choices are {a}, {maglev}")
        } else if first_load == LOAD_UNKNOWN || second_load == LOAD_UNKNOWN {
            format!("least-load: no load figure to compare for {a} and {b}, so {maglev}")
        } else if first_load == second_load {
            format!("least-load: equal loads of {a} and {b}, so the first choice, {maglev}")
        } else {
            format!("least-load: lower load of {a} and {b}")
        };
        Choice::Worker(first.worker, reason)
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
        let worker = decide::pick(self, &self.info, hash).map(|pick| pick.worker);
        Pick {
            hash,
            slot: decide::slot_index(hash, self.info.table_size),
            worker: worker.map(|id| self.name(id)),
            load: worker.and_then(|id| load_fraction(DecisionMaps::load(self, id))),
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
        ids.extend(self.flow.map(|f| f.backend_id));
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
                    load: load_fraction(DecisionMaps::load(self, id)),
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
            WorkerState::from_flags(flags).into()
        }
    }
}

/// The explanation for people.
pub(super) fn text(e: &Explanation) -> String {
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
    use std::collections::BTreeMap;

    use super::*;
    use crate::commands::explain::gather::flow_key;
    use lb_common::balancer::{
        mask_prefix, StickyKey, VipInfo, VipTag, BACKEND_DOWN, BACKEND_DRAINING, FAMILY_V4,
        NO_BACKEND, SCHED_MAGLEV,
    };

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
            seed: 42,
            backends: vec![worker(11, 0), worker(12, 0)],
            loads: vec![LOAD_UNKNOWN; 2],
            table: vec![0, 1, 0, 1, 0, 1, 0],
            tags: BTreeMap::from([(
                0,
                VipTag {
                    tag: 5,
                    idle_timeout_s: 300,
                },
            )]),
            client: "192.0.2.1".parse().unwrap(),
            key: None,
            flow: None,
            client_key: StickyKey {
                client: mask_prefix(&service::addr_bytes("192.0.2.1".parse().unwrap()).0, 32),
                vip_id: 0,
            },
            pin: None,
            session: None,
            now_ns: NOW,
        }
    }

    fn with_port(mut view: View, port: u16) -> View {
        view.key = Some(flow_key(&view.vip, view.client, port));
        view
    }

    fn recorded(backend_id: u32, last_seen_s: u64) -> FlowValue {
        FlowValue {
            backend_id,
            vip_tag: 5,
            backend_generation: 1,
            created_ns: 900 * SEC,
            last_seen_ns: last_seen_s * SEC,
            ..FlowValue::default()
        }
    }

    fn explained(view: &View) -> Explanation {
        view.explain(&view.trace().unwrap())
    }

    /// The worker in the slot `hash` picks, if any.
    fn picked(view: &View, hash: u32) -> Option<u32> {
        decide::pick(view, &view.info, hash).map(|pick| pick.worker)
    }

    #[test]
    fn maglev_names_the_slot_the_data_plane_indexes() {
        let view = with_port(view(), 40000);
        let key = view.key.unwrap();
        let index = key.hash(42) % 7;
        let expected = view.table[index as usize];
        let e = explained(&view);
        assert_eq!(e.verdict.action, Action::Forward);
        assert_eq!(e.verdict.worker, Some(view.name(expected)));
        assert_eq!(e.verdict.reason, format!("maglev slot {index}"));
        assert_eq!(e.schedule.first.unwrap().slot, index);
    }

    #[test]
    fn without_a_port_the_shares_stand_in_for_the_slot() {
        let e = explained(&view());
        assert_eq!(e.verdict.action, Action::DependsOnPort);
        assert!(e.schedule.depends_on_port);
        let slots: Vec<u32> = e.workers.iter().map(|w| w.slots).collect();
        assert_eq!(slots, [4, 3]);
        let mut single = view();
        single.table = vec![1; 7];
        let e = explained(&single);
        assert_eq!(e.verdict.worker.as_deref(), Some("192.0.2.12"));
        single.table = vec![NO_BACKEND; 7];
        assert_eq!(explained(&single).verdict.reason, "drop: no worker");
    }

    #[test]
    fn least_load_takes_the_lower_of_its_two_candidates() {
        let mut view = with_port(view(), 40000);
        view.info.scheduler = SCHED_LEAST_LOAD;
        // Find a port whose two candidates differ.
        let port = (1..2000u16)
            .find(|&p| {
                let key = flow_key(&view.vip, view.client, p);
                picked(&view, decide::first_hash(&key, 42))
                    != picked(&view, decide::second_hash(&key, 42))
            })
            .unwrap();
        view = with_port(view, port);
        let key = view.key.unwrap();
        let first = picked(&view, decide::first_hash(&key, 42)).unwrap();
        let second = 1 - first;
        view.loads[first as usize] = LOAD_SCALE / 2;
        view.loads[second as usize] = LOAD_SCALE / 10;
        let e = explained(&view);
        assert_eq!(e.verdict.worker, Some(view.name(second)));
        assert!(e.verdict.reason.starts_with("least-load: lower load of"));
        view.loads[second as usize] = LOAD_UNKNOWN;
        assert_eq!(explained(&view).verdict.worker, Some(view.name(first)));
        view.loads[second as usize] = LOAD_SCALE / 2;
        let tie = explained(&view).verdict;
        assert_eq!(tie.worker, Some(view.name(first)));
        assert!(tie.reason.contains("equal loads"), "{}", tie.reason);
    }

    #[test]
    fn an_established_flow_wins_until_idle_or_its_worker_is_gone() {
        let mut view = with_port(view(), 40000);
        view.flow = Some(recorded(1, 990));
        let e = explained(&view);
        assert_eq!(e.verdict.reason, "established flow");
        assert_eq!(e.verdict.worker.as_deref(), Some("192.0.2.12"));
        assert!(e.syn.is_some(), "TCP: a SYN would be scheduled");
        // Draining keeps established flows.
        view.backends[1].flags |= BACKEND_DRAINING;
        assert_eq!(explained(&view).verdict.reason, "established flow");
        view.backends[1].flags |= BACKEND_DOWN;
        let flow = explained(&view).flow.unwrap();
        assert!(!flow.followed);
        assert_eq!(flow.why_not.as_deref(), Some("worker 192.0.2.12 is down"));
        view.backends[1].flags = BACKEND_VALID | BACKEND_MAC_KNOWN;
        view.flow = Some(recorded(1, 600));
        let flow = explained(&view).flow.unwrap();
        assert!(flow.why_not.unwrap().contains("idle timeout of 300s"));
        let mut replaced = recorded(1, 990);
        replaced.backend_generation = 7;
        view.flow = Some(replaced);
        assert!(!explained(&view).flow.unwrap().followed);
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
        let e = explained(&view);
        assert_eq!(e.verdict.reason, "pinned");
        assert_eq!(e.verdict.worker.as_deref(), Some("192.0.2.12"));
        assert_eq!(
            e.session.unwrap().why_not.as_deref(),
            Some("the pin comes first")
        );
        view.backends[1].flags |= BACKEND_DRAINING;
        let e = explained(&view);
        assert_eq!(e.verdict.reason, "sticky session");
        assert_eq!(e.verdict.worker.as_deref(), Some("192.0.2.11"));
        assert_eq!(
            e.pin.unwrap().why_not.as_deref(),
            Some("worker 192.0.2.12 is draining")
        );
        view.session.as_mut().unwrap().last_ns = NOW - 61 * SEC;
        let e = explained(&view);
        assert_eq!(e.verdict.action, Action::DependsOnPort);
        assert!(e.session.unwrap().why_not.unwrap().starts_with("expired"));
    }

    #[test]
    fn a_worker_without_a_mac_is_a_drop() {
        let mut view = with_port(view(), 40000);
        view.backends[0].flags &= !BACKEND_MAC_KNOWN;
        view.backends[1].flags &= !BACKEND_MAC_KNOWN;
        let e = explained(&view);
        assert_eq!(e.verdict.action, Action::Drop);
        assert!(e.verdict.reason.starts_with("drop: worker's MAC unknown"));
        assert!(e.verdict.worker.is_some());
    }

    #[test]
    fn the_text_names_each_step() {
        let mut view = with_port(view(), 40000);
        view.flow = Some(recorded(1, 990));
        let text = text(&explained(&view));
        for word in [
            "vip ", "client ", "flow ", "maglev ", "verdict ", "a SYN ", "WORKER",
        ] {
            assert!(text.contains(word), "no {word:?} in\n{text}");
        }
    }
}
