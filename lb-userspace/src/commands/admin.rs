//! `lb vip`, `lb backend`, `lb sessions`, `lb announce`, `lb status`: the
//! CLI side of the admin API.

use std::{net::IpAddr, path::Path};

use anyhow::Context as _;

use crate::{
    admin::{
        client,
        protocol::{AnnounceRow, BackendRow, Request, SessionRow, Status, VipRow},
    },
    commands::cli::{AnnounceCommand, BackendCommand, OutputFormat, SessionsCommand, VipCommand},
    commands::table,
    duration,
    service::{AddressOrVip, Vip},
};

/// Runs `lb vip …`.
pub fn vip_command(command: VipCommand, output: OutputFormat, socket: &Path) -> anyhow::Result<()> {
    match command {
        VipCommand::Add { vip, options } => send(socket, &Request::VipAdd { vip, options }),
        VipCommand::Set { vip, options } => send(socket, &Request::VipSet { vip, options }),
        VipCommand::Del { vip } => send(socket, &Request::VipDel { vip }),
        VipCommand::List => {
            let rows: Vec<VipRow> = fetch(socket, &Request::VipList)?;
            table::print(
                output,
                &rows,
                &[
                    "VIP",
                    "ID",
                    "TABLE",
                    "WORKERS",
                    "SERVING",
                    "SCHEDULER",
                    "FORWARD",
                    "STICKY",
                    "HEALTH",
                    "IDLE",
                ],
                |r| {
                    vec![
                        r.vip.to_string(),
                        r.id.to_string(),
                        r.table_size.to_string(),
                        r.workers.to_string(),
                        r.serving.to_string(),
                        r.scheduler.to_string(),
                        match r.gue_port {
                            Some(port) => format!("gue :{port}"),
                            None => r.forward.to_string(),
                        },
                        r.sticky
                            .as_ref()
                            .map_or_else(|| "-".into(), |t| format!("{t} /{}", r.sticky_prefix)),
                        r.health.to_string(),
                        r.idle_timeout.clone(),
                    ]
                },
            )
        }
    }
}

/// Runs `lb backend …`.
pub fn backend_command(
    command: BackendCommand,
    output: OutputFormat,
    socket: &Path,
) -> anyhow::Result<()> {
    match command {
        BackendCommand::Add {
            vip,
            worker,
            weight,
        } => send(
            socket,
            &Request::BackendAdd {
                vip,
                worker: worker.addr,
                port: worker.port,
                weight,
            },
        ),
        BackendCommand::Del {
            vip,
            worker,
            graceful,
            timeout,
        } => {
            let request = Request::BackendDel {
                vip,
                worker,
                graceful,
                timeout,
            };
            let answer = client::call(socket, &request)?;
            if graceful {
                println!(
                    "draining {worker}: removed once its flows end ({} at the last count), at most {} from now",
                    answer["flows"],
                    answer["timeout"].as_str().unwrap_or("?")
                );
            }
            Ok(())
        }
        BackendCommand::Set {
            vip,
            worker,
            weight,
            load,
        } => send(
            socket,
            &Request::BackendSet {
                vip,
                worker,
                weight,
                load,
            },
        ),
        BackendCommand::Drain { vip, worker } => drain(socket, vip, worker, true),
        BackendCommand::Undrain { vip, worker } => drain(socket, vip, worker, false),
        BackendCommand::List { vip } => {
            let rows: Vec<BackendRow> = fetch(socket, &Request::BackendList { vip })?;
            table::print(
                output,
                &rows,
                &[
                    "VIP", "WORKER", "STATE", "WEIGHT", "LOAD", "FLOWS", "CHECK", "MAC",
                ],
                backend_cells,
            )
        }
    }
}

fn backend_cells(r: &BackendRow) -> Vec<String> {
    let check = r.check.as_ref().map_or_else(
        || "-".into(),
        |c| {
            let ago = duration::format(std::time::Duration::from_millis(c.ago_ms / 100 * 100));
            format!("{} ({ago} ago)", c.detail)
        },
    );
    let state = match &r.reason {
        Some(reason) => format!("{} ({reason})", r.state),
        None => r.state.to_string(),
    };
    let worker = crate::service::WorkerAddr {
        addr: r.worker,
        port: r.port,
    };
    vec![
        r.vip.to_string(),
        worker.to_string(),
        state,
        r.weight.to_string(),
        r.load.map_or_else(|| "-".into(), |l| format!("{l:.2}")),
        r.flows.to_string(),
        check,
        r.mac.clone().unwrap_or_else(|| "unresolved".into()),
    ]
}

fn drain(socket: &Path, vip: Vip, worker: IpAddr, drain: bool) -> anyhow::Result<()> {
    let request = Request::BackendDrain { vip, worker, drain };
    send(socket, &request)
}

/// Runs `lb sessions …`.
pub fn sessions_command(
    command: SessionsCommand,
    output: OutputFormat,
    socket: &Path,
) -> anyhow::Result<()> {
    match command {
        SessionsCommand::List { vip } => {
            let rows: Vec<SessionRow> = fetch(socket, &Request::SessionsList { vip })?;
            table::print(
                output,
                &rows,
                &["VIP", "CLIENT", "WORKER", "KIND", "IDLE"],
                |r| {
                    vec![
                        r.vip.to_string(),
                        format!("{}/{}", r.client, r.prefix),
                        r.worker.to_string(),
                        if r.pinned { "pin" } else { "session" }.into(),
                        r.idle_ms.map_or_else(
                            || "-".into(),
                            |ms| duration::format(std::time::Duration::from_millis(ms)),
                        ),
                    ]
                },
            )
        }
        SessionsCommand::Flush { vip, worker } => {
            let request = Request::SessionsFlush { vip, worker };
            let answer = client::call(socket, &request)?;
            println!("flushed {} sessions", answer["flushed"]);
            Ok(())
        }
        SessionsCommand::Pin {
            vip,
            client_addr,
            worker,
        } => {
            let request = Request::SessionsPin {
                vip,
                client: client_addr,
                worker,
            };
            send(socket, &request)
        }
        SessionsCommand::Unpin { vip, client_addr } => {
            let request = Request::SessionsUnpin {
                vip,
                client: client_addr,
            };
            send(socket, &request)
        }
    }
}

/// Runs `lb announce …`.
pub fn announce_command(
    command: AnnounceCommand,
    output: OutputFormat,
    socket: &Path,
) -> anyhow::Result<()> {
    let (named, withdraw) = match command {
        AnnounceCommand::List => {
            let rows: Vec<AnnounceRow> = fetch(socket, &Request::AnnounceList)?;
            return table::print(
                output,
                &rows,
                &["ADDRESS", "ANNOUNCED", "WHY NOT", "VIPS"],
                |r| {
                    vec![
                        r.address.to_string(),
                        if r.announced { "yes" } else { "no" }.into(),
                        r.reason.clone().unwrap_or_else(|| "-".into()),
                        r.vips
                            .iter()
                            .map(Vip::to_string)
                            .collect::<Vec<_>>()
                            .join(" "),
                    ]
                },
            );
        }
        AnnounceCommand::Withdraw { vip } => (vip, true),
        AnnounceCommand::Restore { vip } => (vip, false),
    };
    let (mut addresses, mut vips) = (Vec::new(), Vec::new());
    for each in named {
        match each {
            AddressOrVip::Address(addr) => addresses.push(addr),
            AddressOrVip::Vip(vip) => vips.push(vip),
        }
    }
    let request = if withdraw {
        Request::AnnounceWithdraw { addresses, vips }
    } else {
        Request::AnnounceRestore { addresses, vips }
    };
    let done: Vec<IpAddr> = fetch(socket, &request)?;
    match output {
        OutputFormat::Json => println!("{}", serde_json::to_string(&done)?),
        OutputFormat::Table => {
            let verb = if withdraw { "withdrew" } else { "restored" };
            for addr in done {
                println!("{verb} {addr}");
            }
        }
    }
    Ok(())
}

/// Runs `lb status`.
pub fn status(output: OutputFormat, socket: &Path) -> anyhow::Result<()> {
    let status: Status = fetch(socket, &Request::Status)?;
    match output {
        OutputFormat::Json => println!("{}", serde_json::to_string(&status)?),
        OutputFormat::Table => {
            print!(
                "{}",
                table::render(&["FIELD", "VALUE"], &status_rows(&status)?)
            );
        }
    }
    Ok(())
}

/// `lb status`'s table: a row per field, as JSON names it; what is not
/// there (JSON's null) is `-`, as in the other tables.
fn status_rows(status: &Status) -> anyhow::Result<Vec<Vec<String>>> {
    let value = serde_json::to_value(status)?;
    Ok(value
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| {
            let text = match v {
                serde_json::Value::Null => "-".to_owned(),
                serde_json::Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            vec![k.clone(), text]
        })
        .collect())
}

fn send(socket: &Path, request: &Request) -> anyhow::Result<()> {
    client::call(socket, request).map(drop)
}

fn fetch<T: serde::de::DeserializeOwned>(socket: &Path, request: &Request) -> anyhow::Result<T> {
    let data = client::call(socket, request)?;
    serde_json::from_value(data)
        .context("unexpected answer from the controller (is it the same lb version?)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_shows_what_is_not_there_as_a_dash() {
        let status = Status {
            name: "lb".into(),
            iface: "eth0".into(),
            ifaces: vec!["eth0".into()],
            xdp_mode: "native".into(),
            program_id: 7,
            attached: true,
            detached_because: None,
            pinned: true,
            unpinned_because: None,
            pin_dir: "/sys/fs/bpf/lb".into(),
            max_flows: 1000,
            max_vips: 10,
            max_workers: 10,
            nat_sources: Vec::new(),
            nat_ports: "20000-32767".into(),
            max_nat_flows: 10,
            hash_seed: 1,
            unsaved_since: None,
            save_error: None,
            vips: 0,
            workers: 0,
            workers_down: 0,
            workers_unreachable: 0,
            load_listen: None,
            announce_table: None,
            announced: 0,
            not_announced: 0,
            capture_running: false,
        };
        let rows = status_rows(&status).unwrap();
        let value = |field: &str| {
            rows.iter()
                .find(|row| row[0] == field)
                .map(|row| row[1].as_str())
        };
        for absent in ["detached_because", "load_listen", "announce_table"] {
            assert_eq!(value(absent), Some("-"), "{absent}");
        }
        assert!(rows.iter().all(|row| row[1] != "null"), "{rows:?}");
        assert_eq!(value("iface"), Some("eth0"));
        assert_eq!(value("attached"), Some("true"));
    }
}
