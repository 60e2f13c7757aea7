//! Announcements through a real routing daemon (issue 16's rig: a BIRD
//! router doing ECMP over two balancers, each with lb and BIRD): how long
//! a planned withdrawal and a balancer's death take to reach the router,
//! and what they cost in requests. Each trial builds a fresh rig, so that
//! no trial inherits another's routes or sessions.

use lb_testing::bgp::{link_cut, planned_withdrawal, BgpRig, LinkCut, Withdrawal, ANNOUNCE_TABLE};

use super::Plan;

/// Established connections the link-cut trials keep open.
pub const CONNECTIONS: usize = 100;

/// Every trial of both kinds.
pub struct Announcements {
    /// Planned withdrawals and restores of one balancer.
    pub withdrawals: Vec<Withdrawal>,
    /// One balancer's link cut, found by BFD.
    pub cuts: Vec<LinkCut>,
}

/// Runs `plan.announce_trials` trials of each kind, alternating.
pub fn run(plan: &Plan) -> anyhow::Result<Announcements> {
    let table = ANNOUNCE_TABLE.to_string();
    let args = ["--announce-table", table.as_str()];
    let mut results = Announcements {
        withdrawals: Vec::new(),
        cuts: Vec::new(),
    };
    for _ in 0..plan.announce_trials {
        let rig = BgpRig::new(&plan.lb, 2, 3, &args)?;
        results.withdrawals.push(planned_withdrawal(&rig)?);
        drop(rig);
        let rig = BgpRig::new(&plan.lb, 2, 3, &args)?;
        results.cuts.push(link_cut(&rig, CONNECTIONS)?);
    }
    Ok(results)
}
