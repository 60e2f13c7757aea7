//! `lb vip`, `lb backend`, `lb sessions`, `lb announce`, `lb status`: the
//! CLI side of the admin API.

use std::{net::IpAddr, path::Path};

use anyhow::Context as _;

use crate::{
    admin::{
        client,
        protocol::{AnnounceRow, BackendRow, Request, SessionRow, Status, VipRow},
    },
    commands::cli::{
        AnnounceCommand, BackendCommand, ClientArgs, OutputFormat, SessionsCommand, VipCommand,
    },
    commands::table,
    duration,
    service::{parse_worker, Vip},
};

fn vip(text: &str) -> anyhow::Result<Vip> {
    Ok(text.parse()?)
}

/// Runs `lb vip …`.
pub fn vip_command(command: VipCommand, socket: &Path) -> anyhow::Result<()> {
    match command {
        VipCommand::Add {
            vip: v, options, ..
        } => {
            let request = Request::VipAdd {
                vip: vip(&v)?,
                options: options.into(),
            };
            send(socket, &request)
        }
        VipCommand::Set {
            vip: v, options, ..
        } => {
            let request = Request::VipSet {
                vip: vip(&v)?,
                options: options.into(),
            };
            send(socket, &request)
        }
        VipCommand::Del { vip: v, .. } => send(socket, &Request::VipDel { vip: vip(&v)? }),
        VipCommand::List { client } => {
            let rows: Vec<VipRow> = fetch(socket, &Request::VipList)?;
            table::print(
                client.output,
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
pub fn backend_command(command: BackendCommand, socket: &Path) -> anyhow::Result<()> {
    match command {
        BackendCommand::Add {
            vip: v,
            worker,
            weight,
            ..
        } => {
            let request = Request::BackendAdd {
                vip: vip(&v)?,
                worker: parse_worker(&worker)?,
                weight,
            };
            send(socket, &request)
        }
        BackendCommand::Del {
            vip: v,
            worker,
            graceful,
            timeout,
            ..
        } => {
            let request = Request::BackendDel {
                vip: vip(&v)?,
                worker: parse_worker(&worker)?,
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
            vip: v,
            worker,
            weight,
            load,
            ..
        } => {
            let request = Request::BackendSet {
                vip: vip(&v)?,
                worker: parse_worker(&worker)?,
                weight,
                load,
            };
            send(socket, &request)
        }
        BackendCommand::Drain { vip: v, worker, .. } => drain(socket, &v, &worker, true),
        BackendCommand::Undrain { vip: v, worker, .. } => drain(socket, &v, &worker, false),
        BackendCommand::List { vip: v, client } => {
            let only = v.as_deref().map(vip).transpose()?;
            let rows: Vec<BackendRow> = fetch(socket, &Request::BackendList { vip: only })?;
            table::print(
                client.output,
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
    vec![
        r.vip.to_string(),
        r.worker.to_string(),
        state,
        r.weight.to_string(),
        r.load.map_or_else(|| "-".into(), |l| format!("{l:.2}")),
        r.flows.to_string(),
        check,
        r.mac.clone().unwrap_or_else(|| "unresolved".into()),
    ]
}

fn drain(socket: &Path, v: &str, worker: &str, drain: bool) -> anyhow::Result<()> {
    let request = Request::BackendDrain {
        vip: vip(v)?,
        worker: parse_worker(worker)?,
        drain,
    };
    send(socket, &request)
}

/// Runs `lb sessions …`.
pub fn sessions_command(command: SessionsCommand, socket: &Path) -> anyhow::Result<()> {
    match command {
        SessionsCommand::List { vip: v, client } => {
            let only = v.as_deref().map(vip).transpose()?;
            let rows: Vec<SessionRow> = fetch(socket, &Request::SessionsList { vip: only })?;
            table::print(
                client.output,
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
        SessionsCommand::Flush { vip: v, worker, .. } => {
            let request = Request::SessionsFlush {
                vip: v.as_deref().map(vip).transpose()?,
                worker: worker.as_deref().map(parse_worker).transpose()?,
            };
            let answer = client::call(socket, &request)?;
            println!("flushed {} sessions", answer["flushed"]);
            Ok(())
        }
        SessionsCommand::Pin {
            vip: v,
            client_addr,
            worker,
            ..
        } => {
            let request = Request::SessionsPin {
                vip: vip(&v)?,
                client: parse_worker(&client_addr)?,
                worker: parse_worker(&worker)?,
            };
            send(socket, &request)
        }
        SessionsCommand::Unpin {
            vip: v,
            client_addr,
            ..
        } => {
            let request = Request::SessionsUnpin {
                vip: vip(&v)?,
                client: parse_worker(&client_addr)?,
            };
            send(socket, &request)
        }
    }
}

/// Runs `lb announce …`.
pub fn announce_command(command: AnnounceCommand, socket: &Path) -> anyhow::Result<()> {
    let (named, client, withdraw) = match command {
        AnnounceCommand::List { client } => {
            let rows: Vec<AnnounceRow> = fetch(socket, &Request::AnnounceList)?;
            return table::print(
                client.output,
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
        AnnounceCommand::Withdraw { vip, client } => (vip, client, true),
        AnnounceCommand::Restore { vip, client } => (vip, client, false),
    };
    let (addresses, vips) = addresses_and_vips(&named)?;
    let request = if withdraw {
        Request::AnnounceWithdraw { addresses, vips }
    } else {
        Request::AnnounceRestore { addresses, vips }
    };
    let done: Vec<IpAddr> = fetch(socket, &request)?;
    match client.output {
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

/// Splits `lb announce` arguments into addresses and VIPs.
fn addresses_and_vips(named: &[String]) -> anyhow::Result<(Vec<IpAddr>, Vec<Vip>)> {
    let (mut addresses, mut vips) = (Vec::new(), Vec::new());
    for text in named {
        if let Ok(addr) = text.parse::<IpAddr>() {
            addresses.push(addr);
        } else {
            let vip = text.parse::<Vip>().map_err(|error| {
                anyhow::anyhow!("{text:?} is neither a VIP address nor a VIP ({error})")
            })?;
            vips.push(vip);
        }
    }
    Ok((addresses, vips))
}

/// Runs `lb status`.
pub fn status(client: &ClientArgs, socket: &Path) -> anyhow::Result<()> {
    let status: Status = fetch(socket, &Request::Status)?;
    match client.output {
        OutputFormat::Json => println!("{}", serde_json::to_string(&status)?),
        OutputFormat::Table => {
            let value = serde_json::to_value(&status)?;
            let rows: Vec<Vec<String>> = value
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| vec![k.clone(), v.to_string().trim_matches('"').to_owned()])
                .collect();
            print!("{}", table::render(&["FIELD", "VALUE"], &rows));
        }
    }
    Ok(())
}

fn send(socket: &Path, request: &Request) -> anyhow::Result<()> {
    client::call(socket, request).map(drop)
}

fn fetch<T: serde::de::DeserializeOwned>(socket: &Path, request: &Request) -> anyhow::Result<T> {
    let data = client::call(socket, request)?;
    serde_json::from_value(data)
        .context("unexpected answer from the controller (is it the same lb version?)")
}
