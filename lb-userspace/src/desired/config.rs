//! The TOML configuration `lb run --config` applies at start.
//!
//! ```toml
//! hash_seed = 0                      # same on every instance behind ECMP
//!
//! [[vip]]
//! address = "192.0.2.100:80/tcp"
//! table_size = 16381                 # optional prime
//! scheduler = "least-load"           # or "maglev" (default)
//! forward = "ipip"                   # or "gue", "dsr" (default)
//! gue_port = 6080                    # with forward = "gue"
//! sticky = "300s"                    # optional sticky sessions
//! sticky_prefix = 24                 # optional, default the whole address
//! idle_timeout = "10m"               # optional, default 300s for TCP, 60s for UDP
//! health = { check = "http", path = "/healthz", interval = "1s", timeout = "500ms", rise = 2, fall = 2 }
//! load = { signal = "reported", probe = "/load", ttl = "10s" }
//! backends = [
//!   { address = "192.0.2.11" },
//!   { address = "192.0.2.12", weight = 200 },
//!   { address = "192.0.2.13", drain = true },
//! ]
//! pins = [{ client = "198.51.100.7", worker = "192.0.2.11" }]
//! ```

use std::{collections::BTreeMap, net::IpAddr, path::Path};

use anyhow::Context as _;
use serde::Deserialize;

use crate::{
    desired::options::VipOptions,
    desired::state::{Desired, Limits, DEFAULT_WEIGHT},
    service::Vip,
};

/// The file as written.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Seed of the flow hash and Maglev permutations.
    #[serde(default)]
    pub hash_seed: u32,
    /// Virtual services.
    #[serde(default)]
    pub vip: Vec<VipConfig>,
}

/// One `[[vip]]`: its address, its settings (the keys of
/// [`VipOptions`], the flags of `lb vip add`), its workers and its pins.
#[derive(Debug, Deserialize)]
pub struct VipConfig {
    /// `ADDRESS:PORT/PROTO`.
    pub address: Vip,
    /// Its settings.
    #[serde(flatten)]
    pub options: VipOptions,
    /// Its workers.
    #[serde(default)]
    pub backends: Vec<BackendConfig>,
    /// Clients pinned to a worker.
    #[serde(default)]
    pub pins: Vec<PinConfig>,
    /// Keys no setting takes, refused: serde's deny_unknown_fields doesn't
    /// work beside a flattened struct.
    #[serde(flatten)]
    unknown: BTreeMap<String, toml::Value>,
}

impl VipConfig {
    fn refuse_unknown(&self) -> anyhow::Result<()> {
        match self.unknown.keys().next() {
            Some(key) => anyhow::bail!("[[vip]] {}: unknown field `{key}`", self.address),
            None => Ok(()),
        }
    }
}

/// One pinned client of a `[[vip]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinConfig {
    /// The client's address (masked to the VIP's sticky prefix).
    pub client: IpAddr,
    /// The worker it goes to.
    pub worker: IpAddr,
}

/// One worker of a `[[vip]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// The worker's address.
    pub address: IpAddr,
    /// Its own port (NAT VIPs only; default the VIP's).
    pub port: Option<u16>,
    /// Its weight (default 100).
    pub weight: Option<u32>,
    /// Start draining: no new flows.
    #[serde(default)]
    pub drain: bool,
}

impl FileConfig {
    /// Reads and parses a configuration file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("config file {}", path.display()))
    }

    /// Parses configuration text. TOML's own errors quote the line and
    /// underline the spot over several lines; lb's errors are one line, so
    /// this keeps where and what. A mistake in a VIP's settings is placed
    /// at the start of its `[[vip]]`: the settings are read through serde's
    /// flatten, which keeps no positions.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        toml::from_str(text).map_err(|error| {
            let message = error.message().trim();
            match error.span() {
                Some(span) => {
                    #[expect(
                        clippy::string_slice,
                        reason = "toml's spans are offsets of tokens in `text`: char boundaries"
                    )]
                    let before = &text[..span.start];
                    let line = before.matches('\n').count() + 1;
                    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                    anyhow::anyhow!("line {line}, column {column}: {message}")
                }
                None => anyhow::anyhow!("{message}"),
            }
        })
    }

    /// The desired state this configuration describes, validated whole;
    /// it has no limits until [`Desired::within`] gives it some.
    pub fn desired(&self) -> anyhow::Result<Desired> {
        let mut desired = Desired::limited(self.hash_seed, Limits::NONE);
        for vip in &self.vip {
            vip.refuse_unknown()?;
            let options = vip.options.clone();
            let prefix = options.prefix_for(&vip.address);
            desired.add_vip(vip.address, options)?;
            for backend in &vip.backends {
                let weight = backend.weight.unwrap_or(DEFAULT_WEIGHT);
                desired.add_worker_on(&vip.address, backend.address, backend.port, weight)?;
                desired.set_drain(&vip.address, backend.address, backend.drain)?;
            }
            for pin in &vip.pins {
                let client = crate::service::mask_addr(pin.client, prefix);
                desired.pin(&vip.address, client, pin.worker)?;
            }
        }
        Ok(desired)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_parses() {
        let config = FileConfig::parse(
            r#"
            hash_seed = 42
            [[vip]]
            address = "192.0.2.100:80/tcp"
            backends = [{ address = "192.0.2.11" }, { address = "192.0.2.12", weight = 200 }]
            [[vip]]
            address = "[2001:db8::100]:53/udp"
            table_size = 65537
            scheduler = "least-load"
            sticky = "5m"
            sticky_prefix = 64
            idle_timeout = "20s"
            health = { check = "tcp", port = 80, interval = "2s", timeout = "1s", rise = 3, fall = 1 }
            load = { signal = "flows", ttl = "30s" }
            backends = [{ address = "2001:db8::11", drain = true }, { address = "2001:db8::12" }]
            pins = [{ client = "2001:db8:1:2:3::9", worker = "2001:db8::12" }]
            "#,
        )
        .unwrap();
        let desired = config.desired().unwrap();
        assert_eq!(desired.hash_seed, 42);
        assert_eq!(desired.vips().len(), 2);
        let v6 = &desired.vips()[&"[2001:db8::100]:53/udp".parse().unwrap()];
        assert_eq!(v6.options.sticky, Some(std::time::Duration::from_secs(300)));
        assert_eq!(v6.options.health.rise, 3);
        assert!(v6.workers[&"2001:db8::11".parse::<IpAddr>().unwrap()].drain);
        assert_eq!(
            v6.options.idle_timeout,
            Some(std::time::Duration::from_secs(20))
        );
        assert_eq!(
            v6.pins.keys().next().unwrap(),
            &"2001:db8:1:2::".parse::<IpAddr>().unwrap(),
            "pins are keyed by the sticky prefix"
        );
    }

    #[test]
    fn udp_and_dns_check_keys_parse() {
        let config = FileConfig::parse(
            r#"
            [[vip]]
            address = "192.0.2.100:5353/udp"
            health = { check = "udp", payload = "hex:0001", expect = "pong" }
            [[vip]]
            address = "192.0.2.100:53/udp"
            health = { check = "dns", dns_name = "health.example.com", dns_type = "txt", dns_rcode = "NXDOMAIN" }
            [[vip]]
            address = "192.0.2.101:53/udp"
            "#,
        )
        .unwrap();
        let desired = config.desired().unwrap();
        let health = |vip: &str| desired.vips()[&vip.parse().unwrap()].options.health.clone();
        let udp = health("192.0.2.100:5353/udp");
        assert_eq!(udp.payload.unwrap().as_bytes(), [0, 1]);
        assert_eq!(udp.expect.unwrap().as_bytes(), b"pong");
        let dns = health("192.0.2.100:53/udp");
        assert_eq!(dns.dns_name.unwrap().to_string(), "health.example.com.");
        assert_eq!(dns.dns_type.unwrap().to_string(), "TXT");
        assert_eq!(dns.dns_rcode.unwrap().to_string(), "NXDOMAIN");
        let vip = "192.0.2.101:53/udp".parse().unwrap();
        assert_eq!(
            health("192.0.2.101:53/udp").kind_for(&vip),
            crate::desired::options::CheckKind::Udp,
            "UDP VIPs are udp-checked by default"
        );
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        let cases = [
            ("[[vip]]\naddress = \"192.0.2.100:80\"", "no protocol"),
            ("[[vip]]\naddress = \"192.0.2.100:80/tcp\"\nbackends = [{ address = \"2001:db8::1\" }]", "different IP families"),
            ("[[vip]]\naddress = \"192.0.2.100:80/tcp\"\nbackends = [{ address = \"192.0.2.1\" }, { address = \"192.0.2.1\" }]", "already on VIP"),
            ("[[vip]]\naddress = \"192.0.2.100:80/tcp\"\ntable_size = 100", "must be a prime"),
            ("vips = []", "unknown field"),
            ("[[vip]]\naddress = \"192.0.2.100:80/tcp\"\nsticky = \"5 minutes\"", "unit"),
            ("[[vip]]\naddress = \"192.0.2.100:80/tcp\"\nhealth = { check = \"ping\" }", "line 1, column 1: unknown variant `ping`, expected one of `tcp`, `http`, `udp`, `dns`, `none`"),
            ("[[vip]]\naddress = \"192.0.2.100:53/udp\"\nhealth = { check = \"dns\" }", "needs --health-dns-name"),
            ("[[vip]]\naddress = \"192.0.2.100:53/udp\"\nhealth = { check = \"dns\", dns_name = \"a b\" }", "is not a DNS name"),
            ("[[vip]]\naddress = \"192.0.2.100:53/udp\"\nhealth = { check = \"dns\", dns_name = \"x\", dns_type = \"B\" }", "unknown DNS type"),
            ("[[vip]]\naddress = \"192.0.2.100:53/udp\"\nhealth = { check = \"dns\", dns_name = \"x\", dns_rcode = \"OK\" }", "unknown DNS rcode"),
            ("[[vip]]\naddress = \"192.0.2.100:53/udp\"\nhealth = { payload = \"hex:0g\" }", "hex: takes the digits"),
            ("[[vip]]\naddress = \"192.0.2.100:80/tcp\"\nhealth = { expect = \"ok\" }", "applies to udp health checks only"),
            ("[[vip]]\naddress = \"192.0.2.100:80/tcp\"\nidle_timeout = \"1s\"", "use 2s to 168h"),
            ("[[vip]]\naddress = \"192.0.2.100:80/tcp\"\nsticky_prefix = 40", "too long"),
            ("[[vip]]\naddress = \"192.0.2.100:80/tcp\"\nschedular = \"maglev\"", "[[vip]] 192.0.2.100:80/tcp: unknown field `schedular`"),
        ];
        for (text, reason) in cases {
            let error = FileConfig::parse(text)
                .and_then(|c| c.desired())
                .map(drop)
                .unwrap_err();
            let error = format!("{error:#}");
            assert!(error.contains(reason), "{text}: {error}");
            assert!(!error.contains('\n'), "one line: {error}");
        }
    }
}
