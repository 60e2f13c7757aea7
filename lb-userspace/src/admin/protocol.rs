//! The admin API's messages: what the CLI asks the controller, what it
//! answers, and the limits both sides keep.

use std::{net::IpAddr, time::Duration};

use serde::{Deserialize, Serialize};

use crate::{
    desired::options::{CheckKind, Forward, Scheduler, VipOptions},
    service::Vip,
};

/// Largest request the controller reads.
pub const MAX_REQUEST_BYTES: u64 = 64 * 1024;
/// How long the CLI waits for the controller, and the controller for a
/// client to take its answer.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the controller waits for a request once it took a connection.
/// The CLI sends its request as it connects, so it is there already; a
/// peer that sends nothing frees its slot this soon.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// The refusal of a request over [`MAX_REQUEST_BYTES`].
pub fn too_large() -> String {
    format!("request too large (over {} KiB)", MAX_REQUEST_BYTES / 1024)
}

/// What the CLI asks the controller.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Add a VIP.
    VipAdd {
        /// The VIP.
        vip: Vip,
        /// Table size, scheduler, stickiness, health checks, load signal.
        #[serde(default)]
        options: VipOptions,
    },
    /// Replace a VIP's settings; its workers, pins and flows stay.
    VipSet {
        /// The VIP.
        vip: Vip,
        /// Its new settings, whole.
        #[serde(default)]
        options: VipOptions,
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
        /// Drain first; remove when its flows are gone or `timeout` passes.
        #[serde(default)]
        graceful: bool,
        /// Longest a graceful removal waits (default 5 minutes).
        #[serde(default, with = "crate::duration::serde_str_opt")]
        timeout: Option<Duration>,
    },
    /// Change a worker's weight or load figure.
    BackendSet {
        /// The VIP.
        vip: Vip,
        /// The worker's address.
        worker: IpAddr,
        /// New weight.
        #[serde(default)]
        weight: Option<u32>,
        /// Load figure, a fraction of capacity from 0 to 1.
        #[serde(default)]
        load: Option<f64>,
    },
    /// Start or stop draining a worker.
    BackendDrain {
        /// The VIP.
        vip: Vip,
        /// The worker's address.
        worker: IpAddr,
        /// true: drain; false: take new flows again.
        drain: bool,
    },
    /// List workers, of one VIP or all.
    BackendList {
        /// Only this VIP's.
        vip: Option<Vip>,
    },
    /// List sticky sessions and pins.
    SessionsList {
        /// Only this VIP's.
        vip: Option<Vip>,
    },
    /// Forget sticky sessions.
    SessionsFlush {
        /// Only this VIP's.
        #[serde(default)]
        vip: Option<Vip>,
        /// Only those on this worker.
        #[serde(default)]
        worker: Option<IpAddr>,
    },
    /// Send a client (or its sticky prefix) to one worker.
    SessionsPin {
        /// The VIP.
        vip: Vip,
        /// The client.
        client: IpAddr,
        /// The worker.
        worker: IpAddr,
    },
    /// Remove a pin.
    SessionsUnpin {
        /// The VIP.
        vip: Vip,
        /// The client.
        client: IpAddr,
    },
    /// Take VIP addresses out of the routers' tables (all when none is
    /// named): their host routes leave the announce table.
    AnnounceWithdraw {
        /// The addresses.
        #[serde(default)]
        addresses: Vec<IpAddr>,
        /// VIPs, each standing for its address.
        #[serde(default)]
        vips: Vec<Vip>,
    },
    /// Announce withdrawn VIP addresses again (all when none is named).
    AnnounceRestore {
        /// The addresses.
        #[serde(default)]
        addresses: Vec<IpAddr>,
        /// VIPs, each standing for its address.
        #[serde(default)]
        vips: Vec<Vip>,
    },
    /// List the VIP addresses and whether each is announced.
    AnnounceList,
    /// Describe the instance.
    Status,
}

impl Request {
    /// Whether carrying it out changes the desired state.
    pub fn changes_state(&self) -> bool {
        !matches!(
            self,
            Self::VipList
                | Self::BackendList { .. }
                | Self::SessionsList { .. }
                | Self::AnnounceList
                | Self::Status
        )
    }
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

impl Response {
    /// A refusal that says why.
    pub fn refusal(error: String) -> Self {
        Self {
            ok: false,
            error: Some(error),
            data: serde_json::Value::Null,
        }
    }
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
    /// Workers taking new flows (up and not draining).
    pub serving: usize,
    /// New-flow scheduler.
    pub scheduler: Scheduler,
    /// How packets reach the workers.
    pub forward: Forward,
    /// The workers' GUE port, with `forward` gue.
    pub gue_port: Option<u16>,
    /// Sticky-session lifetime, if sticky.
    pub sticky: Option<String>,
    /// Sticky prefix length.
    pub sticky_prefix: u8,
    /// Health check in force.
    pub health: CheckKind,
    /// Idle timeout in force, in its shortest form ("5m").
    pub idle_timeout: String,
}

/// Where a worker stands.
#[derive(
    Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, strum::Display, strum::IntoStaticStr,
)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum WorkerState {
    /// Takes new flows.
    Up,
    /// Failed its health checks: no flows at all.
    Down,
    /// Its host does not answer ARP / neighbour discovery: no flows at all.
    Unreachable,
    /// No new flows; established ones continue.
    Draining,
    /// Draining, removed once its flows end (`backend del --graceful`).
    Removing,
}

impl WorkerState {
    /// What a worker's flags in the data plane's backend map say (the map
    /// doesn't know of graceful removals: those read as draining).
    pub fn from_flags(flags: u8) -> Self {
        use lb_common::balancer::{BACKEND_DOWN, BACKEND_DRAINING, BACKEND_UNREACHABLE};
        if flags & BACKEND_DOWN != 0 {
            Self::Down
        } else if flags & BACKEND_UNREACHABLE != 0 {
            Self::Unreachable
        } else if flags & BACKEND_DRAINING != 0 {
            Self::Draining
        } else {
            Self::Up
        }
    }
}

/// The last health check of a worker.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CheckRow {
    /// Whether it passed.
    pub ok: bool,
    /// What happened.
    pub detail: String,
    /// How long it took, in milliseconds.
    pub took_ms: f64,
    /// How long ago it finished, in milliseconds.
    pub ago_ms: u64,
}

/// A row of `lb backend list`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BackendRow {
    /// The VIP.
    pub vip: Vip,
    /// The worker.
    pub worker: IpAddr,
    /// Its index in the backend array.
    pub id: u32,
    /// Its weight.
    pub weight: u32,
    /// Up, down, unreachable, draining or removing.
    pub state: WorkerState,
    /// Why it is unreachable, when it is.
    pub reason: Option<String>,
    /// Its last health check, if checked.
    pub check: Option<CheckRow>,
    /// Its current load report (fraction of capacity), if any.
    pub load: Option<f64>,
    /// Who made that report: push, probe or cli.
    pub load_source: Option<crate::checks::load::Source>,
    /// Its active flows in the flow table.
    pub flows: u64,
    /// Its resolved MAC address, if known.
    pub mac: Option<String>,
}

/// A row of `lb sessions list`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionRow {
    /// The VIP.
    pub vip: Vip,
    /// The client address, masked to the sticky prefix.
    pub client: IpAddr,
    /// The prefix length.
    pub prefix: u8,
    /// The worker.
    pub worker: IpAddr,
    /// A pin (set by an operator) rather than a session.
    pub pinned: bool,
    /// Time since the client last opened a flow (sessions only).
    pub idle_ms: Option<u64>,
}

/// A row of `lb announce list`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AnnounceRow {
    /// The VIP address.
    pub address: IpAddr,
    /// Whether its host route is in the announce table.
    pub announced: bool,
    /// Why it is not, when it is not.
    pub reason: Option<String>,
    /// The VIPs on the address.
    pub vips: Vec<Vip>,
}

/// `lb status`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Status {
    /// The instance's name.
    pub name: String,
    /// Interface the program is attached to.
    pub iface: String,
    /// native or generic.
    pub xdp_mode: String,
    /// The kernel's program id.
    pub program_id: u32,
    /// Whether the program still runs on the interface.
    pub attached: bool,
    /// Why it no longer does, when it doesn't.
    pub detached_because: Option<String>,
    /// Whether every pin (link, maps, marks, lock file) is in place, in a
    /// pin directory only lb may write: without its link's pin, the
    /// program leaves the interface when the controller stops.
    pub pinned: bool,
    /// Why not, when not.
    pub unpinned_because: Option<String>,
    /// Where the maps are pinned.
    pub pin_dir: String,
    /// Capacity of the flow table.
    pub max_flows: u32,
    /// How many VIPs the instance can hold.
    pub max_vips: u32,
    /// How many workers it can hold across its VIPs.
    pub max_workers: u32,
    /// Seed of the flow hash.
    pub hash_seed: u32,
    /// Number of VIPs.
    pub vips: usize,
    /// Number of workers across VIPs.
    pub workers: usize,
    /// Workers whose health checks fail.
    pub workers_down: usize,
    /// Workers whose host does not answer ARP / neighbour discovery.
    pub workers_unreachable: usize,
    /// Where workers push load reports, if anywhere.
    pub load_listen: Option<String>,
    /// The routing table of VIP announcements, if they are on.
    pub announce_table: Option<u32>,
    /// VIP addresses announced.
    pub announced: usize,
    /// VIP addresses not announced (withdrawn, no worker, not attached).
    pub not_announced: usize,
    /// Whether an `lb capture` has the data plane copying packets now.
    pub capture_running: bool,
}
