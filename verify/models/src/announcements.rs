//! Which VIP addresses lb announces (`lb run --announce-table`, see
//! docs/scale-out.md) while workers fail and recover, operators drain
//! workers and withdraw or restore addresses, the program is lost from
//! the interface, routes are flushed by hand, and the controller crashes,
//! restarts and stops. The verdicts come from lb's own desired state
//! (`Desired`, `VipState::serves`, `Desired::set_withdrawn`,
//! `Desired::with_withdrawn`); the state file is taken to be atomic here
//! (the handover model checks that it is).

use stateright::{Model, Property};

use crate::{
    bound::Depth,
    lb::{self, Verdict},
};

mod world;

pub use world::World;
use world::{Running, Saved};

/// A deliberately broken lb, to show that the properties catch what
/// they are about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bug {
    /// A start drops the saved withdrawals (as if `state_file::load` did
    /// not apply `Desired::with_withdrawn`).
    ForgetsWithdrawals,
    /// A worker starts down until its first check passes (`Health`'s
    /// default `Down`): every restart withdraws every address.
    StartsDown,
    /// The verdict ignores drains (`VipState::serves` asked only about
    /// health).
    IgnoresDrains,
    /// A start takes every worker to be up, even one its data plane
    /// recorded down (`start_worker_via` ignoring the adopted slot's
    /// `BACKEND_DOWN`).
    ForgetsDownSlots,
}

/// What the controller, the operator and the world do; each names the lb
/// code it stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Worker `w` starts or stops passing its checks: the world, not lb
    /// (a fault).
    WorkerHealth(usize),
    /// A check round of worker `w` reaches the controller:
    /// `Controller::record_check` in control/controller/feedback.rs
    /// (rise and fall counts of 1), which writes the worker's slot
    /// (`BACKEND_DOWN`).
    Check(usize),
    /// `lb backend drain|undrain` on worker `w`: `Controller::handle` →
    /// `Controller::set_drain` (`Desired::set_drain`), saved by
    /// `Controller::flush` (an operator change).
    Drain(usize, bool),
    /// `lb announce withdraw|restore` of address `a`:
    /// `Controller::set_withdrawn` in control/controller/announcing.rs
    /// (`Desired::set_withdrawn`), saved by `Controller::flush`.
    Withdraw(usize, bool),
    /// The end of a batch or tick: `Controller::announce` →
    /// `Announcer::sync` (control/announce.rs), then the batch's answers
    /// go out.
    Sync,
    /// lb's program leaves the interface behind lb's back (a fault).
    LoseProgram,
    /// The tick's `Controller::check_pins` (`PinGuard::check`, dataplane/
    /// guard.rs) finds the program gone: `attachment.lost`.
    NoticeLoss,
    /// Someone flushes the announce table (`ip route flush table N`); the
    /// controller hears of it (`Controller::recheck_announcements`) and
    /// the next `Sync` puts the routes back (a fault).
    FlushRoutes,
    /// `kill -9`, a crash or a plain stop: the controller goes, the
    /// routes and the program stay (a fault).
    Crash,
    /// `lb run` (systemd restarts it): `commands/run.rs` `start` →
    /// `StateFile::open`, `Dataplane::attach`, `Controller::start`, which
    /// takes the workers whose adopted slots are marked down to be down
    /// (`ControlMaps::adopted_slot`), every other worker up, opens the table
    /// (`Announcer::open` keeps the routes it finds) and announces.
    Start,
    /// A stop with `--detach-on-exit`: `Controller::withdraw_all`, then
    /// `Dataplane::detach` (an operator change).
    StopDetaching,
}

/// The announcement model: which VIPs are on which address, which worker
/// serves which VIP, and how many faults and operator changes a run may
/// have.
pub struct Announcements {
    /// The address (by index) of each VIP.
    vip_addrs: Vec<usize>,
    /// The VIP (by index) each worker serves.
    worker_vips: Vec<usize>,
    faults: u8,
    changes: u8,
    bug: Option<Bug>,
    /// lb's desired state with every VIP and worker, none drained or
    /// withdrawn; each state's is built from it.
    base: lb_userspace::desired::state::Desired,
    /// Each worker's backend id in `base`.
    ids: Vec<u32>,
}

impl Announcements {
    /// The model at `depth`: two addresses, the first with two VIPs.
    pub fn new(depth: Depth) -> Self {
        let (worker_vips, faults, changes) = match depth {
            Depth::Ci => (vec![0, 1, 2], 3, 2),
            Depth::Long => (vec![0, 0, 1, 2], 4, 3),
        };
        let vip_addrs = vec![0, 0, 1];
        let (base, ids) = lb::many_vips(&vip_addrs, &worker_vips);
        Self {
            vip_addrs,
            worker_vips,
            faults,
            changes,
            bug: None,
            base,
            ids,
        }
    }

    /// The same model with `bug` planted in lb.
    pub fn with_bug(mut self, bug: Bug) -> Self {
        self.bug = Some(bug);
        self
    }

    fn addresses(&self) -> usize {
        self.vip_addrs.iter().max().map_or(0, |a| a + 1)
    }

    /// The address worker `w`'s VIP is on.
    fn address_of(&self, w: usize) -> usize {
        self.vip_addrs[self.worker_vips[w]]
    }

    /// lb's desired state with `saved`'s drains and withdrawals.
    fn desired(&self, saved: &Saved) -> lb_userspace::desired::state::Desired {
        let mut desired = self.base.clone();
        for (w, _) in saved.drains.iter().enumerate().filter(|(_, &d)| d) {
            if self.bug != Some(Bug::IgnoresDrains) {
                lb::drain(&mut desired, &self.vip_addrs, self.worker_vips[w], w);
            }
        }
        for (a, _) in saved.withdrawn.iter().enumerate().filter(|(_, &w)| w) {
            lb::set_withdrawn(&mut desired, a, true);
        }
        desired
    }

    /// The routes a running controller's verdicts ask for, per address.
    fn wanted_routes(&self, running: &Running) -> Vec<bool> {
        let up = |id: u32| {
            let w = self.ids.iter().position(|&i| i == id);
            w.is_some_and(|w| running.up[w])
        };
        let verdicts = lb::verdicts(&self.desired(&running.desired), up, running.lost);
        (0..self.addresses())
            .map(|a| verdicts.get(&lb::vip_addr(a)) == Some(&Verdict::Announce))
            .collect()
    }

    /// What docs/scale-out.md promises once the controller has caught
    /// up, from the world alone: announced while the program is attached,
    /// a worker on the address is up and not drained, and the state file
    /// holds no withdrawal of it (a request is in force once saved).
    fn promised(&self, world: &World, a: usize) -> bool {
        let serving = (0..self.worker_vips.len())
            .any(|w| self.address_of(w) == a && world.healthy[w] && !world.saved.drains[w]);
        world.attached && serving && !world.saved.withdrawn[a]
    }

    /// The controller has caught up with the world: nothing left to
    /// check, notice, sync or answer.
    fn converged(&self, world: &World) -> bool {
        world.controller.as_ref().is_some_and(|running| {
            running.up == world.healthy
                && running.lost != world.attached
                && running.unanswered.is_none()
                && world.routes == self.wanted_routes(running)
        })
    }

    /// Whether a start may take `a`'s route out: only for what the saved
    /// state asks (a withdrawal, every worker there drained) or what the
    /// data plane recorded (every worker there down), never for a health
    /// it has not seen or for attachment.
    fn start_may_withdraw(&self, world: &World, a: usize) -> bool {
        let saved = &world.saved;
        saved.withdrawn[a] || self.on(a).all(|w| saved.drains[w] || world.slot_down[w])
    }

    /// The workers on address `a`.
    fn on(&self, a: usize) -> impl Iterator<Item = usize> + '_ {
        (0..self.worker_vips.len()).filter(move |&w| self.address_of(w) == a)
    }
}

impl Model for Announcements {
    type State = World;
    type Action = Action;

    fn init_states(&self) -> Vec<World> {
        let workers = self.worker_vips.len();
        let saved = Saved {
            drains: vec![false; workers],
            withdrawn: vec![false; self.addresses()],
        };
        let mut world = World {
            healthy: vec![true; workers],
            attached: true,
            routes: vec![false; self.addresses()],
            acked_withdrawn: vec![false; self.addresses()],
            controller: None,
            saved,
            slot_down: vec![false; workers],
            restart_withdrew: false,
            restart_announced_down: false,
            faults_left: self.faults,
            changes_left: self.changes,
        };
        self.start(&mut world);
        vec![world]
    }

    fn actions(&self, world: &World, actions: &mut Vec<Action>) {
        self.fault_actions(world, actions);
        self.operator_actions(world, actions);
        self.controller_actions(world, actions);
    }

    fn next_state(&self, world: &World, action: Action) -> Option<World> {
        let mut next = world.clone();
        match action {
            Action::WorkerHealth(w) => next.healthy[w] = !next.healthy[w],
            Action::LoseProgram => next.attached = false,
            Action::FlushRoutes => next.routes.fill(false),
            Action::Crash => next.controller = None,
            Action::Drain(w, drain) => {
                running_mut(&mut next).desired.drains[w] = drain;
                take_request(&mut next, action);
            }
            Action::Withdraw(a, withdraw) => self.withdraw(&mut next, a, withdraw),
            Action::StopDetaching => {
                next.routes.fill(false);
                next.attached = false;
                next.controller = None;
                next.slot_down.fill(false);
            }
            Action::Check(w) => {
                running_mut(&mut next).up[w] = world.healthy[w];
                next.slot_down[w] = !world.healthy[w];
            }
            Action::NoticeLoss => running_mut(&mut next).lost = true,
            Action::Sync => self.sync(&mut next),
            Action::Start => self.start(&mut next),
        }
        if is_fault(action) {
            next.faults_left -= 1;
        }
        if is_change(action) {
            next.changes_left -= 1;
        }
        Some(next)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always(
                "announced as promised once converged",
                |m: &Self, w: &World| {
                    !m.converged(w) || (0..m.addresses()).all(|a| w.routes[a] == m.promised(w, a))
                },
            ),
            Property::always("a crash or restart withdraws nothing", |_, w: &World| {
                !w.restart_withdrew
            }),
            Property::always(
                "a restart announces no address whose workers were recorded down",
                |_, w: &World| !w.restart_announced_down,
            ),
            Property::always(
                "an operator's withdrawal survives restarts",
                |_, w: &World| {
                    (0..w.routes.len()).all(|a| !w.acked_withdrawn[a] || w.withdrawal_holds(a))
                },
            ),
            Property::always(
                "converges once faults and changes stop",
                |m: &Self, w: &World| !m.is_terminal(w) || m.converged(w),
            ),
            Property::sometimes("an address is announced", |_, w: &World| {
                w.routes.contains(&true)
            }),
            Property::sometimes("a withdrawal outlives a crash", |_, w: &World| {
                w.controller.is_none() && w.acked_withdrawn.contains(&true)
            }),
        ]
    }
}

impl Announcements {
    fn fault_actions(&self, world: &World, actions: &mut Vec<Action>) {
        if world.faults_left == 0 {
            return;
        }
        actions.extend((0..world.healthy.len()).map(Action::WorkerHealth));
        if world.attached {
            actions.push(Action::LoseProgram);
        }
        if world.routes.contains(&true) {
            actions.push(Action::FlushRoutes);
        }
        if world.controller.is_some() {
            actions.push(Action::Crash);
        }
    }

    /// Requests wait for the previous one's answer: one per batch.
    fn operator_actions(&self, world: &World, actions: &mut Vec<Action>) {
        let Some(running) = &world.controller else {
            return;
        };
        if world.changes_left == 0 || running.unanswered.is_some() {
            return;
        }
        let drains = running.desired.drains.iter().enumerate();
        actions.extend(drains.map(|(w, &d)| Action::Drain(w, !d)));
        let withdrawn = running.desired.withdrawn.iter().enumerate();
        actions.extend(withdrawn.map(|(a, &w)| Action::Withdraw(a, !w)));
        actions.push(Action::StopDetaching);
    }

    fn controller_actions(&self, world: &World, actions: &mut Vec<Action>) {
        let Some(running) = &world.controller else {
            actions.push(Action::Start);
            return;
        };
        let stale = (running.up.iter().zip(&world.healthy).enumerate())
            .filter(|(_, (known, real))| known != real)
            .map(|(w, _)| Action::Check(w));
        actions.extend(stale);
        if !world.attached && !running.lost {
            actions.push(Action::NoticeLoss);
        }
        if running.unanswered.is_some() || world.routes != self.wanted_routes(running) {
            actions.push(Action::Sync);
        }
    }

    fn is_terminal(&self, world: &World) -> bool {
        let mut actions = Vec::new();
        self.actions(world, &mut actions);
        actions.is_empty()
    }

    /// `lb announce withdraw|restore`: saved at once; a restore is the
    /// operator's new word from then on, a withdrawal once answered.
    fn withdraw(&self, world: &mut World, a: usize, withdraw: bool) {
        let running = running_mut(world);
        let mut desired = self.desired(&running.desired);
        lb::set_withdrawn(&mut desired, a, withdraw);
        running.desired.withdrawn[a] = desired.withdrawn().contains(&lb::vip_addr(a));
        if !withdraw {
            world.acked_withdrawn[a] = false;
        }
        take_request(world, Action::Withdraw(a, withdraw));
    }

    /// `Announcer::sync`, then the batch's answer.
    fn sync(&self, world: &mut World) {
        let running = world.controller.as_mut().expect("only a controller syncs");
        world.routes = self.wanted_routes(running);
        if let Some(Action::Withdraw(a, true)) = running.unanswered.take() {
            world.acked_withdrawn[a] = true;
        }
    }

    /// `lb run`: the saved state restored, the program attached or
    /// adopted, every worker up unless its slot was marked down, the
    /// table synced.
    fn start(&self, world: &mut World) {
        let before = world.routes.clone();
        let mut desired = self.desired(&Saved {
            withdrawn: vec![false; self.addresses()],
            ..world.saved.clone()
        });
        if self.bug != Some(Bug::ForgetsWithdrawals) {
            desired = lb::restore_withdrawn(desired, &world.saved.withdrawn);
        }
        let withdrawn = (0..self.addresses())
            .map(|a| desired.withdrawn().contains(&lb::vip_addr(a)))
            .collect();
        let up = (world.slot_down.iter())
            .map(|&down| match self.bug {
                Some(Bug::StartsDown) => false,
                Some(Bug::ForgetsDownSlots) => true,
                _ => !down,
            })
            .collect();
        let withdrew: Vec<bool> = (0..before.len())
            .map(|a| !self.start_may_withdraw(world, a))
            .collect();
        world.attached = true;
        world.controller = Some(Running {
            desired: Saved {
                withdrawn,
                ..world.saved.clone()
            },
            up,
            lost: false,
            unanswered: None,
        });
        world.saved = running_mut(world).desired.clone();
        self.sync(world);
        world.restart_withdrew |=
            (0..before.len()).any(|a| before[a] && !world.routes[a] && withdrew[a]);
        world.restart_announced_down |= (0..before.len())
            .any(|a| !before[a] && world.routes[a] && self.on(a).all(|w| world.slot_down[w]));
    }
}

/// `Controller::flush` saves the controller's whole desired state; the
/// answer waits for the sync.
fn take_request(world: &mut World, request: Action) {
    let running = running_mut(world);
    running.unanswered = Some(request);
    world.saved = running.desired.clone();
}

fn running_mut(world: &mut World) -> &mut Running {
    world
        .controller
        .as_mut()
        .expect("the action needs a controller")
}

fn is_fault(action: Action) -> bool {
    matches!(
        action,
        Action::WorkerHealth(_) | Action::LoseProgram | Action::FlushRoutes | Action::Crash
    )
}

fn is_change(action: Action) -> bool {
    matches!(
        action,
        Action::Drain(..) | Action::Withdraw(..) | Action::StopDetaching
    )
}
