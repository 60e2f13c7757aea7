//! The announcement model's state: the world (workers, the program, the
//! announce table, the state file) and the controller, if one runs.

use super::Action;

/// One state of the announcement model.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct World {
    /// Whether each worker would pass its checks.
    pub healthy: Vec<bool>,
    /// Whether lb's program runs on the interface.
    pub attached: bool,
    /// The announce table: whether each address has lb's host route.
    pub routes: Vec<bool>,
    /// The state file's drains and withdrawals.
    pub(super) saved: Saved,
    /// The controller, while one runs.
    pub(super) controller: Option<Running>,
    /// Addresses whose withdrawal was answered, and not restored since
    /// (a ghost: what the operator was told).
    pub acked_withdrawn: Vec<bool>,
    /// Whether each worker's slot in the data plane is marked down
    /// (`BACKEND_DOWN`, written at each check; the slots go with the
    /// maps on a detaching stop).
    pub slot_down: Vec<bool>,
    /// A start took out a route that its saved state did not ask it to
    /// (a ghost for "a restart withdraws nothing").
    pub restart_withdrew: bool,
    /// A start announced an address every worker of which its data plane
    /// recorded down (a ghost).
    pub restart_announced_down: bool,
    pub(super) faults_left: u8,
    pub(super) changes_left: u8,
}

/// What the operator asked for that lb saves: drains per worker,
/// withdrawals per address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct Saved {
    pub(super) drains: Vec<bool>,
    pub(super) withdrawn: Vec<bool>,
}

/// A running controller.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct Running {
    /// Its desired state's drains and withdrawals.
    pub(super) desired: Saved,
    /// Whether it takes each worker to be up (`Live::takes_new_flows`).
    pub(super) up: Vec<bool>,
    /// `Attachment::lost`: it found its program gone.
    pub(super) lost: bool,
    /// The request of the batch, saved but not answered yet.
    pub(super) unanswered: Option<Action>,
}

impl World {
    /// An answered withdrawal of address `a` is still in force: in the
    /// state file, in the controller's desired state, and not announced.
    pub(super) fn withdrawal_holds(&self, a: usize) -> bool {
        let desired = (self.controller.as_ref()).is_none_or(|r| r.desired.withdrawn[a]);
        self.saved.withdrawn[a] && desired && !self.routes[a]
    }
}
