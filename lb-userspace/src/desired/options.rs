//! Per-VIP behaviour: scheduler, sticky sessions, health checks and the
//! load signal. Shared by the config file, the admin API and the CLI.

use std::time::Duration;

use lb_common::{
    balancer::{
        FORWARD_DSR, FORWARD_FULLNAT, FORWARD_GUE, FORWARD_IPIP, FORWARD_NAT, SCHED_LEAST_LOAD,
        SCHED_MAGLEV,
    },
    encap::DEFAULT_GUE_PORT,
};
use serde::{Deserialize, Serialize};

use crate::{
    checks::datagram::Datagram,
    checks::dns::{self, DnsName, DnsRcode, DnsType},
    checks::health::Check,
    duration,
    service::{Protocol, Vip},
};

/// How long an idle TCP flow keeps its worker unless the VIP says
/// otherwise.
pub const TCP_IDLE_DEFAULT: Duration = Duration::from_secs(300);
/// How long an idle UDP flow keeps its worker unless the VIP says
/// otherwise.
pub const UDP_IDLE_DEFAULT: Duration = Duration::from_secs(60);
/// The shortest idle timeout: the data plane refreshes a flow's last-seen
/// time about once a second, so a shorter timeout would expire busy flows.
const MIN_IDLE: Duration = Duration::from_secs(2);
/// The longest idle timeout.
const MAX_IDLE: Duration = Duration::from_secs(7 * 24 * 3600);

/// A VIP setting the controller refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OptionsError {
    /// Sticky prefix longer than the VIP's addresses.
    #[error("sticky prefix /{prefix} is too long for {vip}: use at most /{max}")]
    StickyPrefix {
        /// The VIP.
        vip: Vip,
        /// The prefix asked for.
        prefix: u8,
        /// The family's address length in bits.
        max: u8,
    },
    /// Sticky TTL out of range.
    #[error("sticky TTL {0} is out of range: use 1s to 168h")]
    StickyTtl(String),
    /// Check timing out of range.
    #[error("health check {what} {value} is out of range: use {range}")]
    Timing {
        /// Which setting.
        what: &'static str,
        /// Its value.
        value: String,
        /// What is allowed.
        range: &'static str,
    },
    /// Timeout not below the interval.
    #[error("health check timeout {timeout} must be shorter than the interval {interval}")]
    TimeoutNotBelowInterval {
        /// The timeout.
        timeout: String,
        /// The interval.
        interval: String,
    },
    /// Rise or fall out of range.
    #[error("health check {0} must be from 1 to 100")]
    Count(&'static str),
    /// An HTTP path that isn't one.
    #[error("HTTP path {0:?} must start with / and hold no spaces or control characters")]
    Path(String),
    /// A TCP check or load probe of a UDP VIP needs a TCP port to probe.
    #[error("{0} is a UDP service: a tcp or http health check or a load probe needs --health-port (a TCP port the workers listen on)")]
    UdpCheckWithoutPort(Vip),
    /// Port 0 reaches no service.
    #[error("health check port 0 reaches no service: use a port from 1 to 65535")]
    PortZero,
    /// A udp or dns check of a TCP VIP needs a UDP port to probe.
    #[error("{0} is a TCP service: a udp or dns health check needs --health-port (a UDP port the workers listen on)")]
    TcpCheckWithoutPort(Vip),
    /// A dns check without a name to ask for.
    #[error("a dns health check needs --health-dns-name (dns_name in a config file): the name it asks for")]
    DnsWithoutName,
    /// A check setting the VIP's check kind does not use.
    #[error("{setting} applies to {used_by} health checks only; this VIP's check is {kind}")]
    Unused {
        /// The setting, as a flag and config key.
        setting: &'static str,
        /// The kind that uses it.
        used_by: CheckKind,
        /// The kind in force.
        kind: CheckKind,
    },
    /// Idle timeout out of range.
    #[error("idle timeout {0} is out of range: use 2s to 168h")]
    IdleTimeout(String),
    /// Load TTL out of range.
    #[error("load TTL {0} is out of range: use 1s to 1h")]
    LoadTtl(String),
    /// GUE port zero.
    #[error("--gue-port must be 1 to 65535")]
    GuePort,
    /// A GUE port for another method.
    #[error("--gue-port is for --forward gue only")]
    GuePortUnused,
    /// A direct check asked of a VIP whose checks are direct anyway.
    #[error("--health-direct (direct) is for --forward ipip and gue only: dsr checks go to the worker directly")]
    DirectUnused,
}

/// How new flows are spread over a VIP's workers.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    clap::ValueEnum,
    strum::Display,
    strum::IntoStaticStr,
)]
#[serde(rename_all = "kebab-case")]
#[strum(serialize_all = "kebab-case")]
pub enum Scheduler {
    /// Weighted consistent hashing of the 5-tuple (Maglev).
    #[default]
    Maglev,
    /// Power of two choices: the less loaded of two Maglev picks.
    LeastLoad,
}

impl Scheduler {
    /// The data plane's code for it.
    pub fn code(self) -> u8 {
        match self {
            Self::Maglev => SCHED_MAGLEV,
            Self::LeastLoad => SCHED_LEAST_LOAD,
        }
    }
}

/// How packets reach a VIP's workers.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    clap::ValueEnum,
    strum::Display,
    strum::IntoStaticStr,
)]
#[serde(rename_all = "kebab-case")]
#[strum(serialize_all = "kebab-case")]
pub enum Forward {
    /// L2 direct server return: the frame readdressed to the worker, which
    /// must share the balancer's link.
    #[default]
    Dsr,
    /// The packet inside an outer IPv4 or IPv6 header (IPIP, IP6IP6, or
    /// across families) to a worker anywhere the balancer's routes reach.
    Ipip,
    /// The packet inside outer IP and UDP headers to the worker's GUE port.
    Gue,
    /// Destination NAT: the packet readdressed to the worker's address
    /// and port; the worker's replies must come back through lb (its
    /// gateway), which readdresses them from the VIP.
    Nat,
    /// Source and destination NAT: also sent from one of lb's NAT
    /// sources and a port lb allocates, so the worker answers lb wherever
    /// it is; the worker sees lb's address, not the client's.
    Fullnat,
}

impl Forward {
    /// The data plane's code for it.
    pub fn code(self) -> u8 {
        match self {
            Self::Dsr => FORWARD_DSR,
            Self::Ipip => FORWARD_IPIP,
            Self::Gue => FORWARD_GUE,
            Self::Nat => FORWARD_NAT,
            Self::Fullnat => FORWARD_FULLNAT,
        }
    }

    /// Whether workers are reached by their routes rather than on this
    /// link.
    pub fn is_l3(self) -> bool {
        self != Self::Dsr
    }

    /// Whether it rewrites addresses (and may map ports), so that replies
    /// come back through lb.
    pub fn is_nat(self) -> bool {
        matches!(self, Self::Nat | Self::Fullnat)
    }
}

/// What a health check does.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    clap::ValueEnum,
    strum::Display,
    strum::IntoStaticStr,
)]
#[serde(rename_all = "kebab-case")]
#[strum(serialize_all = "kebab-case")]
pub enum CheckKind {
    /// A TCP connection to the worker is accepted.
    Tcp,
    /// `GET path` on the worker answers 2xx.
    Http,
    /// A datagram to the worker draws no ICMP error (and, with an expected
    /// reply, draws that reply).
    Udp,
    /// A DNS query to the worker gets the expected response code.
    Dns,
    /// No checks: the worker is always up.
    None,
}

/// Health checking of a VIP's workers. Each setting's default is declared
/// once, on its flag; the config file and the admin API take the same
/// defaults through [`Default`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct HealthOptions {
    /// Health check: tcp (default for TCP VIPs), http, udp (default for
    /// UDP VIPs), dns, or none.
    #[arg(long = "health", value_enum)]
    pub check: Option<CheckKind>,
    /// Path of the http check.
    #[arg(long = "health-path", default_value = "/")]
    pub path: String,
    /// Port to check (default: the VIP's).
    #[arg(long = "health-port")]
    pub port: Option<u16>,
    /// Time between checks.
    #[arg(long = "health-interval", value_parser = duration::parse_clap, default_value = "1s")]
    #[serde(with = "duration::serde_str")]
    pub interval: Duration,
    /// Limit on one check.
    #[arg(long = "health-timeout", value_parser = duration::parse_clap, default_value = "500ms")]
    #[serde(with = "duration::serde_str")]
    pub timeout: Duration,
    /// Passed checks in a row that bring a worker up.
    #[arg(long, default_value_t = 2)]
    pub rise: u32,
    /// Failed checks in a row that take a worker down.
    #[arg(long, default_value_t = 2)]
    pub fall: u32,
    /// What the udp check sends (default: an empty datagram): text, or
    /// hex: and hex digits.
    #[arg(long = "health-payload", value_name = "TEXT")]
    pub payload: Option<Datagram>,
    /// The udp check passes only on a reply that starts with this (text,
    /// or hex: and hex digits); without it, any reply or silence passes.
    #[arg(long = "health-expect", value_name = "TEXT")]
    pub expect: Option<Datagram>,
    /// The name the dns check asks for (required with --health dns).
    #[arg(long = "health-dns-name", value_name = "NAME")]
    pub dns_name: Option<DnsName>,
    /// The record type the dns check asks for: A (default), AAAA, TXT,
    /// SOA, NS, …
    #[arg(long = "health-dns-type", value_name = "TYPE")]
    pub dns_type: Option<DnsType>,
    /// The response code that passes the dns check: NOERROR (default),
    /// NXDOMAIN, …
    #[arg(long = "health-dns-rcode", value_name = "RCODE")]
    pub dns_rcode: Option<DnsRcode>,
    /// For ipip and gue VIPs: check the worker's address directly only,
    /// without first sending an echo to the VIP through the tunnel (which
    /// marks a worker that can't decapsulate down).
    #[arg(long = "health-direct")]
    // Left out when off, so that a state file stays readable by the lb
    // before it, for a downgrade.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub direct: bool,
}

impl Default for HealthOptions {
    fn default() -> Self {
        VipOptions::default().health
    }
}

/// The value of every flag of `T` when none is given: how the settings'
/// defaults, declared on the flags, reach the config file and the admin
/// API.
fn flag_defaults<T: clap::Args + clap::FromArgMatches>() -> T {
    let command = T::augment_args(clap::Command::new("defaults"));
    let matches = command
        .try_get_matches_from(["defaults"])
        .expect("every setting has a default or is optional");
    T::from_arg_matches(&matches).expect("the declared defaults parse")
}

/// Where a VIP's load figures come from.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    clap::ValueEnum,
    strum::Display,
)]
#[serde(rename_all = "kebab-case")]
#[strum(serialize_all = "kebab-case")]
pub enum LoadSignal {
    /// Reports: pushed by workers, probed over HTTP, or set with the CLI.
    #[default]
    Reported,
    /// Active flows per worker in the flow table, divided by its weight.
    Flows,
}

/// Worker load of a VIP.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct LoadOptions {
    /// Load figure of the least-load scheduler: reported, or the worker's
    /// active flows per weight.
    #[arg(long = "load-signal", value_enum, default_value_t)]
    pub signal: LoadSignal,
    /// Path the controller GETs on each worker at each check for its load
    /// (a number from 0 to 1).
    #[arg(long = "load-probe")]
    pub probe: Option<String>,
    /// A load report older than this counts as unknown.
    #[arg(long = "load-ttl", value_parser = duration::parse_clap, default_value = "10s")]
    #[serde(with = "duration::serde_str")]
    pub ttl: Duration,
}

impl Default for LoadOptions {
    fn default() -> Self {
        VipOptions::default().load
    }
}

/// Everything about a VIP besides its workers: the flags of `lb vip add`,
/// the keys of a config file's `[[vip]]`, the options of the admin API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct VipOptions {
    /// Maglev table size, a prime (default: 16381, or the first prime
    /// above 100 × workers).
    #[arg(long)]
    pub table_size: Option<u32>,
    /// New-flow scheduler.
    #[arg(long, value_enum, default_value_t)]
    pub scheduler: Scheduler,
    /// Sticky sessions: a client's new connections go to the worker it
    /// used last, for this long after its last new connection (e.g. 300s).
    #[arg(long, value_parser = duration::parse_clap)]
    #[serde(with = "duration::serde_str_opt")]
    pub sticky: Option<Duration>,
    /// Key sessions by this client prefix length (e.g. 24 or 64).
    #[arg(long)]
    pub sticky_prefix: Option<u8>,
    /// A flow idle for longer is scheduled afresh at its next packet
    /// (2s to 168h; default 300s for TCP, 60s for UDP).
    #[arg(long, value_parser = duration::parse_clap)]
    #[serde(with = "duration::serde_str_opt")]
    pub idle_timeout: Option<Duration>,
    /// Health checks.
    #[command(flatten)]
    pub health: HealthOptions,
    /// How packets reach the workers: dsr (same link), ipip (IPIP, IP6IP6
    /// or across families) or gue (IP in UDP); ipip and gue reach workers
    /// anywhere the balancer's routes reach, which run `lb decap attach`.
    #[arg(long, value_enum, default_value_t)]
    pub forward: Forward,
    /// Workers' GUE port, with --forward gue [default: 6080].
    #[arg(long)]
    pub gue_port: Option<u16>,
    /// The load signal of the least-load scheduler.
    #[command(flatten)]
    pub load: LoadOptions,
}

impl Default for VipOptions {
    fn default() -> Self {
        // Parsed once: serde asks for the defaults of every VIP it reads.
        static DEFAULTS: std::sync::OnceLock<VipOptions> = std::sync::OnceLock::new();
        DEFAULTS.get_or_init(flag_defaults).clone()
    }
}

const MAX_STICKY: Duration = Duration::from_secs(7 * 24 * 3600);

impl VipOptions {
    /// Checks every setting against `vip`.
    pub fn validate(&self, vip: &Vip) -> Result<(), OptionsError> {
        let max = if vip.addr.is_ipv4() { 32 } else { 128 };
        if let Some(prefix) = self.sticky_prefix.filter(|p| *p > max) {
            return Err(OptionsError::StickyPrefix {
                vip: *vip,
                prefix,
                max,
            });
        }
        if let Some(ttl) = self.sticky {
            if ttl < Duration::from_secs(1) || ttl > MAX_STICKY {
                return Err(OptionsError::StickyTtl(duration::format(ttl)));
            }
        }
        if let Some(idle) = self.idle_timeout {
            if idle < MIN_IDLE || idle > MAX_IDLE {
                return Err(OptionsError::IdleTimeout(duration::format(idle)));
            }
        }
        let load_ttl = self.load.ttl;
        if load_ttl < Duration::from_secs(1) || load_ttl > Duration::from_secs(3600) {
            return Err(OptionsError::LoadTtl(duration::format(load_ttl)));
        }
        if let Some(path) = &self.load.probe {
            check_path(path)?;
            if vip.proto == Protocol::Udp && self.health.port.is_none() {
                return Err(OptionsError::UdpCheckWithoutPort(*vip));
            }
        }
        match (self.forward, self.gue_port) {
            (_, Some(0)) => return Err(OptionsError::GuePort),
            (Forward::Dsr | Forward::Ipip, Some(_)) => return Err(OptionsError::GuePortUnused),
            _ => {}
        }
        if self.health.direct && !self.forward.is_l3() {
            return Err(OptionsError::DirectUnused);
        }
        self.health.validate(vip)
    }

    /// The GUE port in force (meaningful with `forward = gue`).
    pub fn gue_port(&self) -> u16 {
        self.gue_port.unwrap_or(DEFAULT_GUE_PORT)
    }

    /// The idle timeout in force for `vip`.
    pub fn idle_timeout_for(&self, vip: &Vip) -> Duration {
        self.idle_timeout.unwrap_or(match vip.proto {
            Protocol::Tcp => TCP_IDLE_DEFAULT,
            Protocol::Udp => UDP_IDLE_DEFAULT,
        })
    }

    /// The sticky prefix in force for `vip`'s family.
    pub fn prefix_for(&self, vip: &Vip) -> u8 {
        let max = if vip.addr.is_ipv4() { 32 } else { 128 };
        self.sticky_prefix.unwrap_or(max)
    }
}

impl HealthOptions {
    /// The check kind in force for `vip`.
    pub fn kind_for(&self, vip: &Vip) -> CheckKind {
        self.check.unwrap_or(match vip.proto {
            Protocol::Tcp => CheckKind::Tcp,
            Protocol::Udp => CheckKind::Udp,
        })
    }

    /// The check of `vip`'s workers, with what it needs; refuses settings
    /// it lacks or doesn't use. Validation goes through here, so what
    /// validates is what runs.
    pub fn check_for(&self, vip: &Vip) -> Result<Check, OptionsError> {
        let kind = self.kind_for(vip);
        self.refuse_unused(kind)?;
        check_port(kind, vip, self.port)?;
        Ok(match kind {
            CheckKind::None => Check::None,
            CheckKind::Tcp => Check::Tcp,
            CheckKind::Http => {
                check_path(&self.path)?;
                Check::Http {
                    path: self.path.clone(),
                }
            }
            CheckKind::Udp => Check::Udp {
                payload: self.payload.clone().unwrap_or_default(),
                expect: self.expect.clone(),
            },
            CheckKind::Dns => Check::Dns(dns::Query {
                name: self.dns_name.clone().ok_or(OptionsError::DnsWithoutName)?,
                rtype: self.dns_type.unwrap_or_default(),
                rcode: self.dns_rcode.unwrap_or_default(),
            }),
        })
    }

    /// Refuses udp and dns settings given for a check that ignores them:
    /// they would be saved and shown, but never sent.
    fn refuse_unused(&self, kind: CheckKind) -> Result<(), OptionsError> {
        let given = [
            (
                "--health-payload (payload)",
                CheckKind::Udp,
                self.payload.is_some(),
            ),
            (
                "--health-expect (expect)",
                CheckKind::Udp,
                self.expect.is_some(),
            ),
            (
                "--health-dns-name (dns_name)",
                CheckKind::Dns,
                self.dns_name.is_some(),
            ),
            (
                "--health-dns-type (dns_type)",
                CheckKind::Dns,
                self.dns_type.is_some(),
            ),
            (
                "--health-dns-rcode (dns_rcode)",
                CheckKind::Dns,
                self.dns_rcode.is_some(),
            ),
        ];
        match given
            .into_iter()
            .find(|(_, user, given)| *given && *user != kind)
        {
            Some((setting, used_by, _)) => Err(OptionsError::Unused {
                setting,
                used_by,
                kind,
            }),
            None => Ok(()),
        }
    }

    fn validate(&self, vip: &Vip) -> Result<(), OptionsError> {
        let timing = |what, value: Duration, range| OptionsError::Timing {
            what,
            value: duration::format(value),
            range,
        };
        if self.interval < Duration::from_millis(50) || self.interval > Duration::from_secs(3600) {
            return Err(timing("interval", self.interval, "50ms to 1h"));
        }
        if self.timeout < Duration::from_millis(10) {
            return Err(timing("timeout", self.timeout, "10ms or more"));
        }
        if self.timeout >= self.interval {
            return Err(OptionsError::TimeoutNotBelowInterval {
                timeout: duration::format(self.timeout),
                interval: duration::format(self.interval),
            });
        }
        if !(1..=100).contains(&self.rise) {
            return Err(OptionsError::Count("rise"));
        }
        if !(1..=100).contains(&self.fall) {
            return Err(OptionsError::Count("fall"));
        }
        self.check_for(vip).map(drop)
    }
}

/// Checks that an HTTP path (a health check's or a load probe's) can go in
/// a request line as it is: it starts with `/` and holds only printable
/// ASCII without spaces.
fn check_path(path: &str) -> Result<(), OptionsError> {
    if path.starts_with('/') && path.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(())
    } else {
        Err(OptionsError::Path(path.to_owned()))
    }
}

/// A check over the other transport than the VIP's can't default to the
/// VIP's port: that port is the service's on the VIP's transport.
fn check_port(kind: CheckKind, vip: &Vip, port: Option<u16>) -> Result<(), OptionsError> {
    let other_transport = match kind {
        CheckKind::Tcp | CheckKind::Http => vip.proto == Protocol::Udp,
        CheckKind::Udp | CheckKind::Dns => vip.proto == Protocol::Tcp,
        CheckKind::None => false,
    };
    match (other_transport, port, vip.proto) {
        (_, Some(0), _) => Err(OptionsError::PortZero),
        (true, None, Protocol::Udp) => Err(OptionsError::UdpCheckWithoutPort(*vip)),
        (true, None, Protocol::Tcp) => Err(OptionsError::TcpCheckWithoutPort(*vip)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vip(text: &str) -> Vip {
        text.parse().unwrap()
    }

    #[test]
    fn defaults_are_valid_and_match_the_documentation() {
        let options = VipOptions::default();
        options.validate(&vip("192.0.2.100:80/tcp")).unwrap();
        options.validate(&vip("[2001:db8::100]:53/udp")).unwrap();
        assert_eq!(options.health.interval, Duration::from_secs(1));
        assert_eq!(options.health.timeout, Duration::from_millis(500));
        assert_eq!((options.health.rise, options.health.fall), (2, 2));
        assert_eq!(
            options.health.kind_for(&vip("192.0.2.100:80/tcp")),
            CheckKind::Tcp
        );
        assert_eq!(
            options.health.kind_for(&vip("192.0.2.100:53/udp")),
            CheckKind::Udp
        );
        assert_eq!(
            options.health.check_for(&vip("192.0.2.100:53/udp")),
            Ok(Check::Udp {
                payload: Datagram::default(),
                expect: None
            }),
            "an empty datagram, any answer or silence passes"
        );
        assert_eq!(
            options.idle_timeout_for(&vip("192.0.2.100:80/tcp")),
            Duration::from_secs(300)
        );
        assert_eq!(
            options.idle_timeout_for(&vip("192.0.2.100:53/udp")),
            Duration::from_secs(60)
        );
    }

    fn health(edit: impl FnOnce(&mut HealthOptions)) -> VipOptions {
        let mut options = VipOptions::default();
        edit(&mut options.health);
        options
    }

    #[test]
    fn udp_and_dns_checks_take_their_settings() {
        let dns_vip = vip("192.0.2.100:53/udp");
        let options = health(|h| {
            h.check = Some(CheckKind::Dns);
            h.dns_name = Some("health.example.com".parse().unwrap());
            h.dns_rcode = Some("NXDOMAIN".parse().unwrap());
        });
        let Ok(Check::Dns(query)) = options.health.check_for(&dns_vip) else {
            panic!("not a dns check");
        };
        assert_eq!(query.rtype.to_string(), "A", "the default type");
        assert_eq!(query.rcode.to_string(), "NXDOMAIN");
        let options = health(|h| {
            h.payload = Some("hex:00".parse().unwrap());
            h.expect = Some("ok".parse().unwrap());
        });
        options.validate(&dns_vip).unwrap();
        let on_tcp = health(|h| {
            h.check = Some(CheckKind::Udp);
            h.port = Some(53);
        });
        on_tcp.validate(&vip("192.0.2.100:80/tcp")).unwrap();
    }

    #[test]
    fn bad_udp_and_dns_settings_say_what_is_wrong() {
        let udp = vip("192.0.2.100:53/udp");
        let tcp = vip("192.0.2.100:80/tcp");
        let cases: [(VipOptions, &Vip, &str); 6] = [
            (
                health(|h| h.check = Some(CheckKind::Dns)),
                &udp,
                "needs --health-dns-name",
            ),
            (
                health(|h| h.payload = Some("x".parse().unwrap())),
                &tcp,
                "--health-payload (payload) applies to udp health checks only; this VIP's check is tcp",
            ),
            (
                health(|h| {
                    h.check = Some(CheckKind::Dns);
                    h.dns_name = Some("example.com".parse().unwrap());
                    h.expect = Some("x".parse().unwrap());
                }),
                &udp,
                "--health-expect (expect) applies to udp health checks only; this VIP's check is dns",
            ),
            (
                health(|h| h.dns_type = Some("TXT".parse().unwrap())),
                &udp,
                "--health-dns-type (dns_type) applies to dns health checks only; this VIP's check is udp",
            ),
            (
                health(|h| h.check = Some(CheckKind::Udp)),
                &tcp,
                "is a TCP service: a udp or dns health check needs --health-port",
            ),
            (
                VipOptions {
                    idle_timeout: Some(Duration::from_secs(1)),
                    ..Default::default()
                },
                &tcp,
                "idle timeout 1s is out of range: use 2s to 168h",
            ),
        ];
        for (options, vip, reason) in cases {
            let error = options.validate(vip).unwrap_err().to_string();
            assert!(error.contains(reason), "{error}");
            assert!(!error.contains('\n'), "one line: {error}");
        }
        let week = VipOptions {
            idle_timeout: Some(MAX_IDLE),
            ..Default::default()
        };
        week.validate(&tcp).unwrap();
        let longer = VipOptions {
            idle_timeout: Some(MAX_IDLE + Duration::from_secs(1)),
            ..Default::default()
        };
        assert!(longer.validate(&tcp).is_err());
    }

    #[test]
    fn bad_settings_are_refused() {
        let v4 = vip("192.0.2.100:80/tcp");
        let bad = [
            VipOptions {
                sticky_prefix: Some(33),
                ..Default::default()
            },
            VipOptions {
                sticky: Some(Duration::ZERO),
                ..Default::default()
            },
            VipOptions {
                health: HealthOptions {
                    timeout: Duration::from_secs(2),
                    ..Default::default()
                },
                ..Default::default()
            },
            VipOptions {
                health: HealthOptions {
                    rise: 0,
                    ..Default::default()
                },
                ..Default::default()
            },
            VipOptions {
                health: HealthOptions {
                    check: Some(CheckKind::Http),
                    path: "no-slash".into(),
                    ..Default::default()
                },
                ..Default::default()
            },
        ];
        for options in bad {
            assert!(options.validate(&v4).is_err(), "{options:?} was accepted");
        }
        let udp_tcp_check = VipOptions {
            health: HealthOptions {
                check: Some(CheckKind::Tcp),
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(udp_tcp_check.validate(&vip("192.0.2.100:53/udp")).is_err());
    }

    #[test]
    fn http_paths_are_plain_absolute_paths() {
        for path in ["/", "/health", "/a/b?c=d&e=%20"] {
            assert!(check_path(path).is_ok(), "{path}");
        }
        for path in ["", "health", "/a b", "/a\tb", "/a\r\n", "/é", "*"] {
            assert!(
                matches!(check_path(path), Err(OptionsError::Path(_))),
                "{path}"
            );
        }
    }
}
