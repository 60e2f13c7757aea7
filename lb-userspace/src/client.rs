//! `lb vip`, `lb backend`, `lb status`: the CLI side of the admin API.

use anyhow::Context as _;

use crate::{
    api::{self, BackendRow, Request, Status, VipRow},
    cli::{BackendCommand, ClientArgs, OutputFormat, VipCommand},
    service::{parse_worker, Vip},
    table,
};

fn vip(text: &str) -> anyhow::Result<Vip> {
    Ok(text.parse()?)
}

/// Runs `lb vip …`.
pub fn vip_command(command: VipCommand) -> anyhow::Result<()> {
    match command {
        VipCommand::Add {
            vip: v,
            table_size,
            client,
        } => {
            let request = Request::VipAdd {
                vip: vip(&v)?,
                table_size,
            };
            api::call(&client.socket, &request).map(drop)
        }
        VipCommand::Del { vip: v, client } => {
            api::call(&client.socket, &Request::VipDel { vip: vip(&v)? }).map(drop)
        }
        VipCommand::List { client } => {
            let rows: Vec<VipRow> = fetch(&client, &Request::VipList)?;
            table::print(
                client.output,
                &rows,
                &["VIP", "ID", "TABLE", "WORKERS"],
                |r| {
                    vec![
                        r.vip.to_string(),
                        r.id.to_string(),
                        r.table_size.to_string(),
                        r.workers.to_string(),
                    ]
                },
            )
        }
    }
}

/// Runs `lb backend …`.
pub fn backend_command(command: BackendCommand) -> anyhow::Result<()> {
    match command {
        BackendCommand::Add {
            vip: v,
            worker,
            weight,
            client,
        } => {
            let request = Request::BackendAdd {
                vip: vip(&v)?,
                worker: parse_worker(&worker)?,
                weight,
            };
            api::call(&client.socket, &request).map(drop)
        }
        BackendCommand::Del {
            vip: v,
            worker,
            client,
        } => {
            let request = Request::BackendDel {
                vip: vip(&v)?,
                worker: parse_worker(&worker)?,
            };
            api::call(&client.socket, &request).map(drop)
        }
        BackendCommand::List { vip: v, client } => {
            let only = v.as_deref().map(vip).transpose()?;
            let rows: Vec<BackendRow> = fetch(&client, &Request::BackendList { vip: only })?;
            table::print(
                client.output,
                &rows,
                &["VIP", "WORKER", "ID", "WEIGHT", "MAC"],
                |r| {
                    vec![
                        r.vip.to_string(),
                        r.worker.to_string(),
                        r.id.to_string(),
                        r.weight.to_string(),
                        r.mac.clone().unwrap_or_else(|| "unresolved".into()),
                    ]
                },
            )
        }
    }
}

/// Runs `lb status`.
pub fn status(client: &ClientArgs) -> anyhow::Result<()> {
    let status: Status = fetch(client, &Request::Status)?;
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

fn fetch<T: serde::de::DeserializeOwned>(
    client: &ClientArgs,
    request: &Request,
) -> anyhow::Result<T> {
    let data = api::call(&client.socket, request)?;
    serde_json::from_value(data)
        .context("unexpected answer from the controller (is it the same lb version?)")
}
