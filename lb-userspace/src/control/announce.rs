//! VIP announcements. lb speaks no routing protocol: it keeps one host
//! route per VIP address it can serve in a kernel routing table of the
//! operator's choice (`lb run --announce-table N`), and the routing daemon
//! operators already run (BIRD, FRR) learns that table and announces it to
//! the routers, which spread the VIP's traffic over every balancer that
//! announces it. See docs/scale-out.md.

use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    net::IpAddr,
};

use serde::{Deserialize, Serialize};

use crate::kernel::netlink::{self, Netlink, LB_ROUTE_PROTOCOL as PROTOCOL};

/// Parses `--announce-table`: a table of the operator's own, not one the
/// kernel routes by.
pub fn parse_table(text: &str) -> Result<u32, String> {
    let table: u32 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a routing table number (1-4294967295)"))?;
    match table {
        0 => Err("table 0 is no table: give one of lb's own, e.g. 100".into()),
        252..=255 => Err(format!(
            "table {table} is reserved (252 compat, 253 default, 254 main, 255 local): give one of lb's own, e.g. 100"
        )),
        _ => Ok(table),
    }
}

/// Whether a VIP address should be announced, and if not, why.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// It should: the program runs and a VIP there has a worker taking new
    /// flows.
    Announce,
    /// lb's program no longer runs on the interface.
    NotAttached,
    /// An operator withdrew it (`lb announce withdraw`).
    Withdrawn,
    /// No VIP on the address has a worker that takes new flows.
    NoWorker,
}

impl Verdict {
    /// Why the address is not announced, in an operator's words.
    pub fn reason(self) -> Option<&'static str> {
        match self {
            Self::Announce => None,
            Self::NotAttached => Some("lb's program is not attached"),
            Self::Withdrawn => Some("withdrawn (lb announce restore brings it back)"),
            Self::NoWorker => Some("no worker takes new flows"),
        }
    }
}

/// The host routes of lb in one table, kept to what the verdicts say.
pub struct Announcer {
    table: u32,
    /// Netlink with strict checking, so that dumps are filtered by table
    /// and protocol in the kernel: a router's main table may hold a
    /// million routes.
    netlink: Netlink,
    loopback: u32,
    /// What the table holds, as last written or read.
    announced: BTreeSet<IpAddr>,
    /// Why the last write of an address's route failed.
    failed: BTreeMap<IpAddr, String>,
}

impl Announcer {
    /// Takes over table `table`: the routes an earlier controller left
    /// there stay until the verdicts say otherwise, so a restart withdraws
    /// nothing.
    pub fn open(table: u32) -> io::Result<Self> {
        let mut announcer = Self {
            table,
            netlink: Netlink::open_strict()?,
            loopback: netlink::ifindex("lo")?,
            announced: BTreeSet::new(),
            failed: BTreeMap::new(),
        };
        announcer.announced = announcer.read()?;
        Ok(announcer)
    }

    /// The table.
    pub fn table(&self) -> u32 {
        self.table
    }

    /// Whether `addr`'s route is in the table.
    pub fn is_announced(&self, addr: IpAddr) -> bool {
        self.announced.contains(&addr)
    }

    /// Why writing or removing `addr`'s route last failed, if it did.
    pub fn failure(&self, addr: IpAddr) -> Option<&str> {
        self.failed.get(&addr).map(String::as_str)
    }

    /// Brings the table to `verdicts`: a route for every address to
    /// announce, none for any other (an address with no verdict has no VIP
    /// left). A write that fails is retried at the next call.
    pub fn sync(&mut self, verdicts: &BTreeMap<IpAddr, Verdict>) {
        for (addr, verdict) in verdicts {
            if *verdict == Verdict::Announce && !self.announced.contains(addr) {
                let added = self
                    .netlink
                    .add_host_route(self.table, PROTOCOL, *addr, self.loopback);
                if self.note(*addr, added, "announcing") {
                    self.announced.insert(*addr);
                    tracing::info!("announcing {addr} (a host route in table {})", self.table);
                }
            }
        }
        let doomed: Vec<IpAddr> = self
            .announced
            .iter()
            .filter(|a| verdicts.get(a) != Some(&Verdict::Announce))
            .copied()
            .collect();
        for addr in doomed {
            let removed = self.netlink.del_host_route(self.table, PROTOCOL, addr);
            if self.note(addr, removed, "withdrawing") {
                self.announced.remove(&addr);
                let why = verdicts
                    .get(&addr)
                    .and_then(|v| v.reason())
                    .unwrap_or("no VIP left on the address");
                tracing::warn!("withdrew {addr} from table {}: {why}", self.table);
            }
        }
        self.failed.retain(|a, _| verdicts.contains_key(a));
    }

    /// Records the outcome of a write; whether it succeeded. A failure is
    /// logged when it is new, not at every retry.
    fn note(&mut self, addr: IpAddr, outcome: io::Result<()>, doing: &str) -> bool {
        match outcome {
            Ok(()) => {
                self.failed.remove(&addr);
                true
            }
            Err(error) => {
                let why = format!("{doing} failed: {error}");
                if self.failed.get(&addr) != Some(&why) {
                    tracing::error!("{addr} in table {}: {why}", self.table);
                }
                self.failed.insert(addr, why);
                false
            }
        }
    }

    /// Reads the table again, after the kernel reported a change to a
    /// route of lb's: one that someone else removed is put back by the
    /// next [`Self::sync`].
    pub fn reread(&mut self) {
        match self.read() {
            Ok(found) if found != self.announced => {
                tracing::warn!(
                    "table {} changed behind lb's back (held {:?}, now {:?}); restoring it",
                    self.table,
                    self.announced,
                    found
                );
                self.announced = found;
            }
            Ok(_) => {}
            Err(error) => tracing::warn!("reading table {}: {error}", self.table),
        }
    }

    fn read(&mut self) -> io::Result<BTreeSet<IpAddr>> {
        Ok(self
            .netlink
            .host_routes(PROTOCOL, Some(self.table))?
            .into_iter()
            .map(|(_, addr)| addr)
            .collect())
    }
}

/// Removes lb's host routes for `addresses` from every table (`lb detach`,
/// which does not know the table the controller used); how many it
/// removed.
pub fn withdraw_everywhere(addresses: &BTreeSet<IpAddr>) -> io::Result<usize> {
    let mut netlink = Netlink::open_strict()?;
    let mut removed = 0;
    for (table, addr) in netlink.host_routes(PROTOCOL, None)? {
        if addresses.contains(&addr) {
            netlink.del_host_route(table, PROTOCOL, addr)?;
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_the_kernel_routes_by_are_refused() {
        for bad in ["0", "252", "253", "254", "255", "-1", "main", "4294967296"] {
            assert!(parse_table(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_table("100"), Ok(100));
        assert_eq!(parse_table("256"), Ok(256));
        assert_eq!(parse_table("4294967295"), Ok(4294967295));
    }

    #[test]
    fn every_verdict_but_announce_has_a_reason() {
        for verdict in [Verdict::NotAttached, Verdict::Withdrawn, Verdict::NoWorker] {
            assert!(verdict.reason().is_some());
        }
        assert_eq!(Verdict::Announce.reason(), None);
    }
}
