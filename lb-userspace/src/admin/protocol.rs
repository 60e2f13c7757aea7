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
/// How long the CLI gives the controller to begin a request (its
/// deadline), and the controller a client to take its answer.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How much longer than a request's deadline the CLI waits for the answer:
/// a request begun just in time is answered once its batch is installed
/// and saved, and an added worker's answer waits up to 0.5 s for its MAC.
pub const ANSWER_GRACE: Duration = Duration::from_secs(2);
/// The request field that carries its deadline, in milliseconds of the
/// host's monotonic clock (`CLOCK_MONOTONIC`).
pub const DEADLINE_FIELD: &str = "deadline_monotonic_ms";
/// How long the controller waits for a request once it took a connection.
/// The CLI sends its request as it connects, so it is there already; a
/// peer that sends nothing frees its slot this soon.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// The refusal of a request over [`MAX_REQUEST_BYTES`].
pub fn too_large() -> String {
    format!("request too large (over {} KiB)", MAX_REQUEST_BYTES / 1024)
}

/// The moment after which a client no longer waits for its request's
/// answer, on the host's monotonic clock: the CLI and the controller read
/// the same one, and no change of the wall clock moves it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Deadline(Duration);

impl Deadline {
    /// `timeout` from now.
    pub fn after(timeout: Duration) -> Self {
        Self(monotonic_now().saturating_add(timeout))
    }

    /// How long ago it passed, if it has.
    pub fn passed_by(self) -> Option<Duration> {
        monotonic_now()
            .checked_sub(self.0)
            .filter(|late| !late.is_zero())
    }

    /// How long until it passes (zero once it has).
    pub fn remaining(self) -> Duration {
        self.0.saturating_sub(monotonic_now())
    }
}

fn monotonic_now() -> Duration {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    Duration::new(
        u64::try_from(now.tv_sec).unwrap_or(0),
        u32::try_from(now.tv_nsec).unwrap_or(0),
    )
}

/// A request as it travels on the socket: the command, and the deadline
/// the client sends with it. A controller refuses a request once its
/// deadline has passed, so a client that gave up waiting knows it will
/// not be carried out later. Clients that send no deadline (older ones)
/// are served as before.
#[derive(Clone, Debug, PartialEq)]
pub struct Sent {
    /// The command.
    pub request: Request,
    /// When its client stops waiting.
    pub deadline: Option<Deadline>,
}

impl Sent {
    /// The JSON line to send: the request's fields, `cmd`, and the
    /// deadline in [`DEADLINE_FIELD`].
    pub fn to_line(&self) -> serde_json::Result<String> {
        let mut value = serde_json::to_value(&self.request)?;
        if let (Some(deadline), Some(fields)) = (self.deadline, value.as_object_mut()) {
            let millis = u64::try_from(deadline.0.as_millis()).unwrap_or(u64::MAX);
            fields.insert(DEADLINE_FIELD.into(), millis.into());
        }
        let mut line = serde_json::to_string(&value)?;
        line.push('\n');
        Ok(line)
    }

    /// Reads a line as [`Sent::to_line`] writes it, with or without the
    /// deadline; the error says what is wrong.
    pub fn parse(line: &str) -> Result<Self, String> {
        let mut value: serde_json::Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
        let deadline = match value.as_object_mut().and_then(|o| o.remove(DEADLINE_FIELD)) {
            None => None,
            Some(millis) => Some(Deadline(Duration::from_millis(
                millis.as_u64().ok_or_else(|| {
                    format!("{DEADLINE_FIELD} must be a whole number of milliseconds, not {millis}")
                })?,
            ))),
        };
        let request = Request::deserialize(value).map_err(|e| e.to_string())?;
        Ok(Self { request, deadline })
    }
}

/// The refusal of a request read `late` after its deadline.
pub fn too_late(late: Duration) -> String {
    format!(
        "not carried out: the controller took this request {} after its deadline, when its client had stopped waiting; nothing was changed",
        crate::duration::format(late)
    )
}

/// What the CLI asks the controller.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, strum::IntoStaticStr)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
#[strum(serialize_all = "snake_case")]
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
        /// Its own port (NAT VIPs only; none: the VIP's).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        port: Option<u16>,
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
    /// The command that shows whether a change it asked for was made.
    pub fn listing(&self) -> &'static str {
        match self {
            Self::VipAdd { .. } | Self::VipSet { .. } | Self::VipDel { .. } | Self::VipList => {
                "lb vip list"
            }
            Self::BackendAdd { .. }
            | Self::BackendDel { .. }
            | Self::BackendSet { .. }
            | Self::BackendDrain { .. }
            | Self::BackendList { .. } => "lb backend list",
            Self::SessionsList { .. }
            | Self::SessionsFlush { .. }
            | Self::SessionsPin { .. }
            | Self::SessionsUnpin { .. } => "lb sessions list",
            Self::AnnounceWithdraw { .. } | Self::AnnounceRestore { .. } | Self::AnnounceList => {
                "lb announce list"
            }
            Self::Status => "lb status",
        }
    }

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
    /// Its own port, when it has one.
    pub port: Option<u16>,
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
    /// The first interface the program is attached to: the instance's
    /// own (`lb run --iface`, the first given).
    pub iface: String,
    /// Every interface it is attached to, in `--iface` order.
    pub ifaces: Vec<String>,
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
    /// The NAT sources (`--nat-source`).
    pub nat_sources: Vec<IpAddr>,
    /// The NAT port range (`--nat-ports`).
    pub nat_ports: String,
    /// Capacity of the NAT table (`--max-nat-flows`).
    pub max_nat_flows: u32,
    /// Seed of the flow hash.
    pub hash_seed: u32,
    /// Since when (Unix seconds) changes in force are not in the state
    /// file, because saving it fails; lb retries every second.
    pub unsaved_since: Option<u64>,
    /// Why the last save failed, while one does.
    pub save_error: Option<String>,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn drain() -> Request {
        Request::BackendDrain {
            vip: "192.0.2.100:80/tcp".parse().unwrap(),
            worker: "192.0.2.11".parse().unwrap(),
            drain: true,
        }
    }

    #[test]
    fn a_request_travels_with_its_deadline_or_without_one() {
        let deadline = Deadline::after(IO_TIMEOUT);
        let sent = Sent {
            request: drain(),
            deadline: Some(deadline),
        };
        let line = sent.to_line().unwrap();
        assert!(
            line.ends_with('\n') && line.contains(DEADLINE_FIELD),
            "{line}"
        );
        let read = Sent::parse(&line).unwrap();
        assert_eq!(read.request, drain());
        // The wire keeps milliseconds.
        let kept = read.deadline.unwrap();
        assert!(kept <= deadline && deadline.0 - kept.0 < Duration::from_millis(1));
        // An older client's line, with no deadline.
        let old = serde_json::to_string(&drain()).unwrap();
        assert_eq!(
            Sent::parse(&old).unwrap(),
            Sent {
                request: drain(),
                deadline: None
            }
        );
    }

    #[test]
    fn a_bad_deadline_or_an_unknown_field_is_refused() {
        let line = format!(r#"{{"cmd":"status","{DEADLINE_FIELD}":"soon"}}"#);
        let error = Sent::parse(&line).unwrap_err();
        assert!(error.contains("whole number of milliseconds"), "{error}");
        let unknown = r#"{"cmd":"vip_del","vip":"192.0.2.100:80/tcp","deadline":1}"#;
        let error = Sent::parse(unknown).unwrap_err();
        assert!(error.contains("unknown field `deadline`"), "{error}");
        assert!(Sent::parse("[1]").is_err());
    }

    #[test]
    fn an_older_controller_refuses_the_deadline_by_name() {
        // It read a `Request` straight from the line; the CLI asks again
        // without the deadline when the refusal names the field.
        let line = Sent {
            request: drain(),
            deadline: Some(Deadline::after(IO_TIMEOUT)),
        }
        .to_line()
        .unwrap();
        let error = serde_json::from_str::<Request>(&line).unwrap_err();
        assert!(
            error
                .to_string()
                .contains(&format!("unknown field `{DEADLINE_FIELD}`")),
            "{error}"
        );
    }

    #[test]
    fn a_deadline_passes() {
        assert_eq!(Deadline::after(Duration::from_secs(60)).passed_by(), None);
        let past = Deadline(monotonic_now() - Duration::from_secs(3));
        assert!(past.passed_by().unwrap() >= Duration::from_secs(3));
        assert_eq!(past.remaining(), Duration::ZERO);
    }
}
