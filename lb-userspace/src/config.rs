//! The TOML configuration `lb run --config` applies at start.
//!
//! ```toml
//! hash_seed = 0                      # same on every instance behind ECMP
//!
//! [[vip]]
//! address = "192.0.2.100:80/tcp"
//! table_size = 16381                 # optional prime
//! backends = [
//!   { address = "192.0.2.11" },
//!   { address = "192.0.2.12", weight = 200 },
//! ]
//! ```

use std::{net::IpAddr, path::Path};

use anyhow::Context as _;
use serde::Deserialize;

use crate::{
    service::Vip,
    state::{Desired, DEFAULT_WEIGHT},
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

/// One `[[vip]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VipConfig {
    /// `ADDRESS:PORT/PROTO`.
    pub address: Vip,
    /// Maglev table size (a prime).
    pub table_size: Option<u32>,
    /// Its workers.
    #[serde(default)]
    pub backends: Vec<BackendConfig>,
}

/// One worker of a `[[vip]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// The worker's address.
    pub address: IpAddr,
    /// Its weight (default 100).
    pub weight: Option<u32>,
}

impl FileConfig {
    /// Reads and parses a configuration file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("config file {}", path.display()))
    }

    /// Parses configuration text.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        Ok(toml::from_str(text)?)
    }

    /// The desired state this configuration describes, validated whole.
    pub fn desired(&self) -> anyhow::Result<Desired> {
        let mut desired = Desired::new(self.hash_seed);
        for vip in &self.vip {
            desired.add_vip(vip.address, vip.table_size)?;
            for backend in &vip.backends {
                let weight = backend.weight.unwrap_or(DEFAULT_WEIGHT);
                desired.add_worker(&vip.address, backend.address, weight)?;
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
            "#,
        )
        .unwrap();
        let desired = config.desired().unwrap();
        assert_eq!(desired.hash_seed, 42);
        assert_eq!(desired.vips().len(), 2);
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        let cases = [
            ("[[vip]]\naddress = \"192.0.2.100:80\"", "no protocol"),
            ("[[vip]]\naddress = \"192.0.2.100:80/tcp\"\nbackends = [{ address = \"2001:db8::1\" }]", "different IP families"),
            ("[[vip]]\naddress = \"192.0.2.100:80/tcp\"\nbackends = [{ address = \"192.0.2.1\" }, { address = \"192.0.2.1\" }]", "already on VIP"),
            ("[[vip]]\naddress = \"192.0.2.100:80/tcp\"\ntable_size = 100", "must be a prime"),
            ("vips = []", "unknown field"),
        ];
        for (text, reason) in cases {
            let error = FileConfig::parse(text)
                .and_then(|c| c.desired())
                .map(drop)
                .unwrap_err();
            assert!(format!("{error:#}").contains(reason), "{text}: {error:#}");
        }
    }
}
