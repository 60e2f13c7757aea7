//! The admin API: one JSON request and one JSON answer per connection on
//! a Unix socket that only root can open.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::IpAddr,
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};

use crate::service::Vip;

/// Largest request the controller reads.
pub const MAX_REQUEST_BYTES: u64 = 64 * 1024;
/// How long either side waits for the other.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// What the CLI asks the controller.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Add a VIP.
    VipAdd {
        /// The VIP.
        vip: Vip,
        /// Maglev table size, a prime; derived when absent.
        table_size: Option<u32>,
    },
    /// Remove a VIP.
    VipDel {
        /// The VIP.
        vip: Vip,
    },
    /// List VIPs.
    VipList,
    /// Add a worker to a VIP.
    BackendAdd {
        /// The VIP.
        vip: Vip,
        /// The worker's address.
        worker: IpAddr,
        /// Its weight.
        weight: u32,
    },
    /// Remove a worker from a VIP.
    BackendDel {
        /// The VIP.
        vip: Vip,
        /// The worker's address.
        worker: IpAddr,
    },
    /// List workers, of one VIP or all.
    BackendList {
        /// Only this VIP's.
        vip: Option<Vip>,
    },
    /// Describe the instance.
    Status,
}

/// The controller's answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Response {
    /// Whether the request was carried out.
    pub ok: bool,
    /// Why not, when `ok` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What was asked for.
    #[serde(default)]
    pub data: serde_json::Value,
}

/// A row of `lb vip list`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct VipRow {
    /// The VIP.
    pub vip: Vip,
    /// Its index in the per-VIP maps.
    pub id: u32,
    /// Maglev table size in force.
    pub table_size: u32,
    /// Number of workers.
    pub workers: usize,
}

/// A row of `lb backend list`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BackendRow {
    /// The VIP.
    pub vip: Vip,
    /// The worker.
    pub worker: IpAddr,
    /// Its index in the backend array.
    pub id: u32,
    /// Its weight.
    pub weight: u32,
    /// Its resolved MAC address, if known.
    pub mac: Option<String>,
}

/// `lb status`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Status {
    /// Interface the program is attached to.
    pub iface: String,
    /// native or generic.
    pub xdp_mode: String,
    /// The kernel's program id.
    pub program_id: u32,
    /// Where the maps are pinned.
    pub pin_dir: String,
    /// Capacity of the flow table.
    pub max_flows: u32,
    /// Seed of the flow hash.
    pub hash_seed: u32,
    /// Number of VIPs.
    pub vips: usize,
    /// Number of workers across VIPs.
    pub workers: usize,
}

/// Sends `request` to the controller at `socket` and returns its data.
pub fn call(socket: &Path, request: &Request) -> anyhow::Result<serde_json::Value> {
    let mut stream = UnixStream::connect(socket).with_context(|| {
        format!(
            "no lb controller answers on {}; start one with `sudo lb run --iface <dev>` (or pass its --socket; the socket is root-only)",
            socket.display()
        )
    })?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut line = serde_json::to_string(request)?;
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .context("the controller did not answer")?;
    let response: Response = serde_json::from_str(&answer)
        .with_context(|| format!("garbled answer from the controller: {answer:?}"))?;
    if !response.ok {
        bail!(
            "{}",
            response
                .error
                .unwrap_or_else(|| "the controller refused".into())
        );
    }
    Ok(response.data)
}
