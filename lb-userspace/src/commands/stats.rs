//! `lb stats` and `lb flows`: read from the pinned maps, so they work with
//! or without a controller.

use std::{net::IpAddr, path::Path};

use anyhow::Context as _;
use aya::maps::{Array, HashMap, MapData};
use lb_common::{
    balancer::{
        is_nat, Backend, FlowKey, FlowValue, TrafficCounters, VipInfo, VipKey, BACKEND_VALID,
        FORWARD_FULLNAT,
    },
    map_names,
};
use serde::Serialize;

use crate::{
    commands::cli::{FlowsArgs, OutputFormat},
    commands::table,
    dataplane::counters,
    dataplane::maps,
    service::{addr_from_bytes, Vip},
};

/// Traffic of one VIP or worker.
#[derive(Debug, Serialize)]
struct TrafficRow {
    /// The VIP or worker.
    name: String,
    packets: u64,
    bytes: u64,
    new_flows: u64,
}

/// Traffic of one worker of one VIP: a worker of several VIPs has a row
/// for each.
#[derive(Debug, Serialize)]
struct WorkerRow {
    /// The VIP; `None` once the VIP is gone (a removed worker's slot keeps
    /// its counters until reused).
    vip: Option<String>,
    #[serde(flatten)]
    traffic: TrafficRow,
}

pub(crate) fn no_instance(pin_dir: &Path) -> String {
    format!(
        "no lb maps pinned under {}; is `lb run` attached with this --name or --pin-dir (and are you root)?",
        pin_dir.display()
    )
}

/// Prints global, per-VIP and per-worker counters.
pub fn stats(output: OutputFormat, pin_dir: &Path) -> anyhow::Result<()> {
    let global = counters::read_pinned(pin_dir).with_context(|| no_instance(pin_dir))?;
    let vip_ids = vip_ids(pin_dir)?;
    let vips: Vec<TrafficRow> = vip_ids
        .iter()
        .map(|(vip, id)| traffic_row(pin_dir, map_names::VIP_STATS, *id, vip.to_string()))
        .collect::<anyhow::Result<_>>()?;
    let workers = worker_rows(pin_dir, &vip_ids)?;
    let interfaces = counters::read_interfaces(pin_dir);
    match output {
        OutputFormat::Json => {
            let global = serde_json::to_value(global)?;
            let doc = serde_json::json!({
                "global": global,
                "interfaces": interfaces,
                "vips": vips,
                "workers": workers,
            });
            println!("{doc}");
        }
        OutputFormat::Table => {
            print!("{}", counters::render_table(&global));
            let iface_cells: Vec<Vec<String>> = interfaces
                .iter()
                .map(|row| {
                    vec![
                        row.iface.clone(),
                        row.ifindex.map_or_else(|| "-".into(), |i| i.to_string()),
                        row.redirected_packets.to_string(),
                        row.redirected_bytes.to_string(),
                    ]
                })
                .collect();
            print!(
                "\n{}",
                table::render(
                    &[
                        "INTERFACE",
                        "IFINDEX",
                        "REDIRECTED_PACKETS",
                        "REDIRECTED_BYTES"
                    ],
                    &iface_cells
                )
            );
            let vip_cells: Vec<Vec<String>> = vips.iter().map(traffic_cells).collect();
            print!(
                "\n{}",
                table::render(&["VIP", "PACKETS", "BYTES", "NEW_FLOWS"], &vip_cells)
            );
            let worker_cells: Vec<Vec<String>> = workers
                .iter()
                .map(|w| {
                    let mut cells = vec![w.vip.clone().unwrap_or_else(|| "-".into())];
                    cells.extend(traffic_cells(&w.traffic));
                    cells
                })
                .collect();
            print!(
                "\n{}",
                table::render(
                    &["VIP", "WORKER", "PACKETS", "BYTES", "NEW_FLOWS"],
                    &worker_cells
                )
            );
        }
    }
    Ok(())
}

fn traffic_cells(row: &TrafficRow) -> Vec<String> {
    vec![
        row.name.clone(),
        row.packets.to_string(),
        row.bytes.to_string(),
        row.new_flows.to_string(),
    ]
}

/// Every worker slot in use with its VIP, ordered by VIP, then worker.
fn worker_rows(pin_dir: &Path, vip_ids: &[(Vip, u32)]) -> anyhow::Result<Vec<WorkerRow>> {
    let vips: std::collections::HashMap<u32, Vip> =
        vip_ids.iter().map(|(vip, id)| (*id, *vip)).collect();
    let mut rows: Vec<(Option<Vip>, IpAddr, WorkerRow)> = backend_entries(pin_dir)?
        .into_iter()
        .filter_map(|(id, backend)| {
            let addr = addr_from_bytes(backend.addr, backend.family)?;
            Some((id, addr, vips.get(&backend.vip_id).copied()))
        })
        .map(|(id, addr, vip)| {
            let traffic = traffic_row(pin_dir, map_names::BACKEND_STATS, id, addr.to_string())?;
            let row = WorkerRow {
                vip: vip.map(|v| v.to_string()),
                traffic,
            };
            Ok((vip, addr, row))
        })
        .collect::<anyhow::Result<_>>()?;
    rows.sort_by_key(|(vip, addr, _)| (vip.is_none(), *vip, *addr));
    Ok(rows.into_iter().map(|(_, _, row)| row).collect())
}

fn traffic_row(pin_dir: &Path, map: &str, id: u32, name: String) -> anyhow::Result<TrafficRow> {
    let TrafficCounters {
        packets,
        bytes,
        new_flows,
    } = maps::traffic(pin_dir, map, id)?;
    Ok(TrafficRow {
        name,
        packets,
        bytes,
        new_flows,
    })
}

/// The VIPs in the data plane, with their ids.
pub fn vip_ids(pin_dir: &Path) -> anyhow::Result<Vec<(Vip, u32)>> {
    let vips: HashMap<MapData, VipKey, VipInfo> = maps::open_pinned(pin_dir, map_names::VIPS)
        .with_context(|| no_instance(pin_dir))?
        .try_into()?;
    let mut rows: Vec<(Vip, u32)> = vips
        .iter()
        .filter_map(Result::ok)
        .filter_map(|(key, info)| Some((Vip::from_key(&key)?, info.id)))
        .collect();
    rows.sort();
    Ok(rows)
}

/// Worker slots in use, id → address.
fn backends(pin_dir: &Path) -> anyhow::Result<Vec<(u32, IpAddr)>> {
    Ok(backend_entries(pin_dir)?
        .into_iter()
        .filter_map(|(id, backend)| Some((id, addr_from_bytes(backend.addr, backend.family)?)))
        .collect())
}

/// Worker slots in use (removed workers' slots too, until reused).
pub fn backend_entries(pin_dir: &Path) -> anyhow::Result<Vec<(u32, Backend)>> {
    let array: Array<MapData, Backend> = maps::open_pinned(pin_dir, map_names::BACKENDS)
        .with_context(|| no_instance(pin_dir))?
        .try_into()?;
    Ok((0..array.len())
        .filter_map(|id| {
            let backend = array.get(&id, 0).ok()?;
            (backend.flags & BACKEND_VALID != 0).then_some((id, backend))
        })
        .collect())
}

/// A NAT flow as its worker sees it: from the client (`nat`) or the
/// flow's NAT source and port (`fullnat`) to the worker's address and
/// port; `None` for other methods.
fn worker_side(
    sources: &std::collections::HashMap<u8, IpAddr>,
    backend: &Backend,
    (client, vip_port): (std::net::SocketAddr, u16),
    flow: &FlowValue,
) -> Option<String> {
    if !is_nat(backend.forward) {
        return None;
    }
    let port = match u16::from_be(backend.port) {
        0 => vip_port,
        port => port,
    };
    let worker = addr_from_bytes(backend.addr, backend.family)?;
    let from = if backend.forward == FORWARD_FULLNAT {
        let source = sources.get(&flow.nat_source)?;
        std::net::SocketAddr::new(*source, u16::from_be(flow.nat_port))
    } else {
        client
    };
    let to = std::net::SocketAddr::new(worker, port);
    Some(format!("{from} → {to}"))
}

/// One flow of `lb flows`.
#[derive(Debug, Serialize)]
struct FlowRow {
    client: String,
    vip: String,
    worker: String,
    /// For a NAT flow, the connection as the worker sees it (`source:port
    /// → worker:port`): the client for `nat`, a NAT source for `fullnat`.
    worker_side: Option<String>,
    age_secs: f64,
    idle_secs: f64,
    /// "active", "closing" (FIN or RST seen), "closed" (closing for longer
    /// than the linger), "idle" (no packets for the VIP's idle timeout) or
    /// "stale" (its VIP or worker is gone); the data plane schedules idle
    /// and stale flows afresh at their next packet.
    state: &'static str,
}

/// Prints the flow table.
pub fn flows(args: &FlowsArgs, output: OutputFormat, pin_dir: &Path) -> anyhow::Result<()> {
    let only = args.vip;
    let flows: HashMap<MapData, FlowKey, FlowValue> = maps::open_pinned(pin_dir, map_names::FLOWS)
        .with_context(|| no_instance(pin_dir))?
        .try_into()?;
    let slots: std::collections::HashMap<u32, Backend> =
        backend_entries(pin_dir)?.into_iter().collect();
    let sources = crate::dataplane::nat::sources(pin_dir);
    let workers: std::collections::HashMap<u32, IpAddr> = backends(pin_dir)?.into_iter().collect();
    let rules = crate::dataplane::activity::Rules::read(pin_dir)?;
    let now = crate::dataplane::activity::monotonic_ns();
    let mut rows: Vec<FlowRow> = flows
        .iter()
        .filter_map(Result::ok)
        .filter_map(|(key, value)| {
            let vip = Vip::from_key(&VipKey {
                addr: key.dst,
                port: key.dport,
                proto: key.proto,
                family: key.family,
            })?;
            if only.is_some_and(|o| o != vip) {
                return None;
            }
            let client = std::net::SocketAddr::new(
                addr_from_bytes(key.src, key.family)?,
                u16::from_be(key.sport),
            );
            let worker_side = slots
                .get(&value.backend_id)
                .and_then(|backend| worker_side(&sources, backend, (client, vip.port), &value));
            Some(FlowRow {
                client: client.to_string(),
                vip: vip.to_string(),
                worker: workers
                    .get(&value.backend_id)
                    .map_or_else(|| format!("#{}", value.backend_id), IpAddr::to_string),
                worker_side,
                age_secs: now.saturating_sub(value.created_ns) as f64 / 1e9,
                idle_secs: now.saturating_sub(value.last_seen_ns) as f64 / 1e9,
                state: rules.state(&value, now).into(),
            })
        })
        .collect();
    rows.sort_by(|a, b| a.client.cmp(&b.client));
    table::print(
        output,
        &rows,
        &[
            "CLIENT",
            "VIP",
            "WORKER",
            "WORKER SIDE",
            "AGE",
            "IDLE",
            "STATE",
        ],
        |r| {
            vec![
                r.client.clone(),
                r.vip.clone(),
                r.worker.clone(),
                r.worker_side.clone().unwrap_or_else(|| "-".into()),
                format!("{:.1}s", r.age_secs),
                format!("{:.1}s", r.idle_secs),
                r.state.to_owned(),
            ]
        },
    )
}
