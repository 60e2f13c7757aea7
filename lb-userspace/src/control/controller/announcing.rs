//! What the controller announces: each VIP address's verdict from the
//! desired state, the workers' health and the attachment, and the NAT
//! sources while lb runs, carried out by
//! the [`Announcer`] after every batch, tick and notice; and the
//! operator's `lb announce` requests.

use std::{collections::BTreeMap, net::IpAddr};

use anyhow::{bail, Context as _};

use super::{Controller, Live};
use crate::{
    admin::protocol::AnnounceRow,
    control::announce::{Announcer, Verdict},
    service::Vip,
};

impl Controller {
    /// Opens the announce table when the instance has one.
    pub(super) fn open_announcer(table: Option<u32>) -> anyhow::Result<Option<Announcer>> {
        table
            .map(|table| {
                Announcer::open(table)
                    .with_context(|| format!("reading routing table {table} (--announce-table)"))
            })
            .transpose()
    }

    /// Each VIP address's verdict, and each NAT source's: announced while
    /// lb runs, so that behind ECMP a worker's reply to a `fullnat`
    /// connection reaches the balancer holding it.
    fn verdicts(&self) -> BTreeMap<IpAddr, Verdict> {
        let mut verdicts = BTreeMap::new();
        for source in &self.instance.nat.sources {
            verdicts.insert(*source, Verdict::Announce);
        }
        for (vip, state) in self.desired.vips() {
            // Every tick and every batch: no members built.
            let serving = state.serves(|id| self.live.get(&id).is_some_and(Live::takes_new_flows));
            let verdict = verdicts.entry(vip.addr).or_insert(Verdict::NoWorker);
            if serving {
                *verdict = Verdict::Announce;
            }
        }
        for (addr, verdict) in &mut verdicts {
            if self.attachment.lost.is_some() {
                *verdict = Verdict::NotAttached;
            } else if self.desired.withdrawn().contains(addr) {
                *verdict = Verdict::Withdrawn;
            }
        }
        verdicts
    }

    /// Brings the announce table in line with the verdicts.
    pub(super) fn announce(&mut self) {
        if self.announcer.is_none() {
            return;
        }
        let verdicts = self.verdicts();
        if let Some(announcer) = &mut self.announcer {
            announcer.sync(&verdicts);
        }
    }

    /// Takes every announcement out: the controller stops and detaches.
    pub fn withdraw_all(&mut self) {
        if let Some(announcer) = &mut self.announcer {
            announcer.sync(&BTreeMap::new());
        }
    }

    /// After the kernel reported a change to one of lb's routes: reads the
    /// table again and puts back what someone else took out.
    pub fn recheck_announcements(&mut self) {
        if let Some(announcer) = &mut self.announcer {
            announcer.reread();
        }
        self.announce();
    }

    /// `lb announce withdraw` and `restore`.
    pub(super) fn set_withdrawn(
        &mut self,
        addresses: Vec<IpAddr>,
        vips: &[Vip],
        withdraw: bool,
    ) -> anyhow::Result<serde_json::Value> {
        self.announcer_table()?;
        let mut named = addresses;
        for vip in vips {
            self.desired.vip(vip)?;
            named.push(vip.addr);
        }
        named.sort();
        named.dedup();
        let chosen = self.desired.set_withdrawn(&named, withdraw)?;
        for addr in &chosen {
            tracing::info!(
                "{addr}: {} by an operator",
                if withdraw { "withdrawn" } else { "restored" }
            );
        }
        Ok(serde_json::to_value(chosen)?)
    }

    /// The table, or why this controller has none.
    fn announcer_table(&self) -> anyhow::Result<u32> {
        match &self.announcer {
            Some(announcer) => Ok(announcer.table()),
            None => {
                bail!("this controller announces nothing: start `lb run` with --announce-table N")
            }
        }
    }

    /// `lb announce list`.
    pub(super) fn announce_rows(&self) -> anyhow::Result<Vec<AnnounceRow>> {
        self.announcer_table()?;
        Ok(self.announcement_rows())
    }

    /// Every VIP address with its announcement (none without a table).
    pub(super) fn announcement_rows(&self) -> Vec<AnnounceRow> {
        let Some(announcer) = &self.announcer else {
            return Vec::new();
        };
        let verdicts = self.verdicts();
        verdicts
            .iter()
            .map(|(addr, verdict)| {
                let announced = announcer.is_announced(*addr);
                let reason = match (announced, verdict.reason()) {
                    (true, _) => None,
                    (false, Some(reason)) => Some(reason.to_owned()),
                    (false, None) => Some(
                        announcer
                            .failure(*addr)
                            .unwrap_or("not written yet")
                            .to_owned(),
                    ),
                };
                AnnounceRow {
                    address: *addr,
                    announced,
                    reason,
                    vips: self
                        .desired
                        .vips()
                        .keys()
                        .filter(|v| v.addr == *addr)
                        .copied()
                        .collect(),
                }
            })
            .collect()
    }
}
