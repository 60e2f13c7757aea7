//! How an instance passes from one controller to the next: a start that
//! takes the state file's lock and the pin directory's, adopts (or, on an
//! upgrade across map layouts, replaces) the pinned maps and restores the
//! state file; admin changes applied to the maps and saved atomically;
//! a crash at any step, a power loss, a second `lb run` racing the first,
//! a removed lock file; and the data plane recording and following flows
//! by worker-slot generation meanwhile. Ids come from lb's own
//! `Desired::add_worker`, and the data plane's decisions from lb-common's
//! `Backend::takes_new_flows` and `Backend::keeps_flows`.

use stateright::{Model, Property};

use crate::bound::Depth;
pub use crate::lb::Slot;

mod properties;
mod steps;
mod world;

pub use world::{
    Budgets, Content, Flow, Maps, Pins, Proc, Program, Save, StateFile, Tables, World,
};

/// A deliberately broken lb, to show that the properties catch what
/// they are about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bug {
    /// A change is answered before its save (`Pending::finish` before
    /// `Controller::flush` saves).
    AnswerBeforeSave,
    /// The temporary file is renamed without its fsync.
    SkipTempFsync,
    /// Neither lock is taken.
    NoLocks,
    /// A slot's next worker keeps the slot's generation
    /// (`generation_for` without its `+ 1`).
    ReuseGeneration,
    /// A start leaves the slots of workers the restored state lacks
    /// (`Controller::remove_stale` without its worker slots).
    KeepStaleSlots,
    /// A start adopts a flow table pinned without its backend array
    /// (`check_layout` without `orphaned_generations`).
    AdoptOrphanedFlows,
}

/// An admin change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// `lb backend add` of worker `w`.
    Add(u8),
    /// `lb backend del` of worker `w`.
    Del(u8),
}

/// What the controllers, the data plane, the operator and the world do;
/// each names the lb code it stands for. `p` is the process (0: the one
/// systemd runs, 1: a second `lb run` by hand).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// `StateFile::open` (desired/state_file.rs): takes the state file's
    /// lock (`lock`; a held lock refuses, which changes nothing) and reads
    /// the file (`load`, which removes leftover temporary files).
    Open(u8),
    /// `Dataplane::attach` → `lock_pin_dir` (dataplane/pins.rs); when
    /// another holds it the start is refused and lets go of the state
    /// file's lock.
    LockPins(u8),
    /// `attach_in` → `plan` → `check_layout` (pins.rs) and, for maps of
    /// another layout (an upgrade, run with `--force`), `remove_pins`.
    Plan(u8),
    /// `load` in dataplane/attach.rs: each map reused from its pin, or
    /// made and pinned (`EbpfLoader::map_pin_path`).
    LoadMaps(u8),
    /// `swap_in` (`attach_fresh` when nothing is pinned), then
    /// `mark_layout`.
    SwapIn(u8),
    /// `Controller::start` (control/controller.rs): each worker written
    /// with `ControlMaps::generation_for`, the tables installed,
    /// `remove_stale`.
    StartController(u8),
    /// An admin change: `Controller::handle` → `Controller::add_worker`
    /// or `remove_worker` (`Desired::add_worker`/`del_worker`,
    /// `ControlMaps::write_backend`/`clear_backend`); `Controller::flush`
    /// installs the table.
    Change(u8, Op),
    /// `Controller::flush` → `state_file::save` → `write_atomically`:
    /// the temporary file written.
    WriteTemp(u8),
    /// Its `sync_all`.
    FsyncTemp(u8),
    /// `fs::rename` over the state file.
    Rename(u8),
    /// The directory's `sync_all`; the answer goes out
    /// (`Pending::finish`).
    FsyncDir(u8),
    /// `Controller::check_pins` → `PinGuard::restore` (dataplane/
    /// guard.rs): a new lock file for one that was removed.
    Relock(u8),
    /// A new flow onto slot `s`: lb-common's `decide` picks it from the
    /// Maglev table if `Backend::takes_new_flows`, and records the slot's
    /// generation (the data plane).
    Packet(u8),
    /// The operator installs the next layout's lb and restarts it
    /// (`systemctl restart lb`): the controller stops after its batch.
    Upgrade,
    /// `kill -9` (a fault): its locks go with it, its files stay.
    Crash(u8),
    /// A power loss (a fault): processes, bpffs (pins, link, maps) and
    /// /run (lock files) gone; the state file as the disk kept it, with
    /// the last rename kept or not.
    Reboot { rename_kept: bool },
    /// The pin directory's lock file removed (a cleanup of /run; a fault).
    LoseLockFile,
    /// `lb detach` (commands/run.rs `detach`) takes the pin directory's
    /// lock (`take_lock`; refused, changing nothing, while a controller
    /// holds it).
    DetachLock,
    /// `lb detach` goes on: `withdraw_announcements`, `detach_pins` (the
    /// link, the maps, the marks and the lock file removed: the program
    /// leaves the interface, flows and sessions go).
    Detach,
    /// The backend array's pin removed by hand while no controller runs
    /// (a fault).
    UnpinTables,
}

/// The handover model: workers of one VIP, slots of the backend array,
/// and what a run may do.
pub struct Handover {
    workers: u8,
    slots: u32,
    budgets: Budgets,
    bug: Option<Bug>,
}

impl Handover {
    /// The model at `depth`.
    pub fn new(depth: Depth) -> Self {
        let (workers, slots, budgets) = match depth {
            Depth::Ci => (2, 2, budgets(1, 2, 1)),
            Depth::Long => (2, 2, budgets(2, 3, 2)),
        };
        Self {
            workers,
            slots,
            budgets,
            bug: None,
        }
    }

    /// The same model with `bug` planted in lb.
    pub fn with_bug(mut self, bug: Bug) -> Self {
        self.bug = Some(bug);
        if bug == Bug::AdoptOrphanedFlows {
            // A crash, then the removed pin.
            self.budgets.faults = self.budgets.faults.max(2);
        }
        self
    }

    fn has(&self, bug: Bug) -> bool {
        self.bug == Some(bug)
    }
}

fn budgets(faults: u8, changes: u8, flows: u8) -> Budgets {
    Budgets {
        faults,
        changes,
        flows,
        racer: 1,
        upgrades: 1,
        detaches: 1,
    }
}

impl Model for Handover {
    type State = World;
    type Action = Action;

    fn init_states(&self) -> Vec<World> {
        vec![self.running_instance()]
    }

    fn actions(&self, world: &World, actions: &mut Vec<Action>) {
        for p in 0..2 {
            self.process_actions(world, p, actions);
        }
        self.world_actions(world, actions);
    }

    fn next_state(&self, world: &World, action: Action) -> Option<World> {
        let mut next = world.clone();
        self.apply(&mut next, action);
        Some(next)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        properties::all()
    }
}

impl Handover {
    /// An instance at rest: controller 0 of the first layout runs version
    /// 0 (worker 0 in slot 0), saved and answered.
    fn running_instance(&self) -> World {
        let ids = crate::lb::add_worker(&[], 0, self.slots).expect("a free slot");
        let mut slots = vec![Slot::default(); self.slots as usize];
        slots[0] = Slot {
            worker: Some(0),
            generation: 1,
            valid: true,
        };
        let maps = Maps {
            tables: 0,
            flows: 0,
        };
        let whole = Content::Whole(0);
        World {
            procs: vec![
                Proc::Running {
                    binary: 1,
                    desired: 0,
                    maps,
                    save: Save::Idle,
                },
                Proc::Down,
            ],
            state_lock: Some(0),
            pin_lock: Some(0),
            file: StateFile {
                visible: whole,
                durable: whole,
                renamed: None,
                temp: None,
            },
            history: vec![ids],
            acked: 0,
            installed: 1,
            pins: Pins {
                link: Some(Program { layout: 1, maps }),
                tables: Some(0),
                flows: Some(0),
                layout: Some(1),
            },
            tables: vec![Tables {
                layout: 1,
                slots,
                maglev: vec![0],
            }],
            flow_tables: vec![Vec::new()],
            budgets: self.budgets,
        }
    }
}
