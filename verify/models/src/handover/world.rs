//! The handover model's state: the controllers, their locks, the state
//! file on disk, the pin directory and the maps, and the budgets left.

use crate::lb::{Ids, Slot};

/// The pin directory's lock holder that is `lb detach`.
pub const DETACH: u8 = 2;

/// One state of the handover model.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct World {
    /// Two `lb run` processes of one instance: the one systemd runs, and
    /// one an operator starts by hand.
    pub procs: Vec<Proc>,
    /// Who holds the state file's lock (`<state file>.lock`).
    pub state_lock: Option<u8>,
    /// Who holds the pin directory's lock (under /run/lb/locks): a
    /// process, or [`DETACH`].
    pub pin_lock: Option<u8>,
    /// The state file and its temporary file.
    pub file: StateFile,
    /// Every desired state a controller applied, by version: the state
    /// file names one (a ghost, so versions stand for whole states).
    pub history: Vec<Ids>,
    /// The last version whose change was answered `ok` (a ghost).
    pub acked: u8,
    /// The map layout of the lb binary installed.
    pub installed: u8,
    /// What the pin directory holds.
    pub pins: Pins,
    /// Every backend array (with its Maglev table) ever made, by id.
    pub tables: Vec<Tables>,
    /// Every flow table ever made, by id.
    pub flow_tables: Vec<Vec<Flow>>,
    /// Faults, changes and packets a run may still have.
    pub budgets: Budgets,
}

/// A controller process, by how far its start got.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proc {
    /// Not running.
    Down,
    /// Holds the state file's lock and read version `loaded`.
    Opened { binary: u8, loaded: u8 },
    /// Holds the pin directory's lock too.
    Locked { binary: u8, loaded: u8 },
    /// Decided what to do with the pinned maps (and removed them if
    /// their layout is another).
    Planned { binary: u8, loaded: u8 },
    /// Loaded its program with these maps, pinned.
    Loaded { binary: u8, loaded: u8, maps: Maps },
    /// Its program runs on the link, the layout marked.
    Attached { binary: u8, loaded: u8, maps: Maps },
    /// `Controller::start` done: it serves version `desired`.
    Running {
        binary: u8,
        desired: u8,
        maps: Maps,
        save: Save,
    },
}

impl Proc {
    /// Whether it holds, or may be about to use, the pin directory: from
    /// its lock on, it writes the maps.
    pub fn writes_maps(self) -> bool {
        !matches!(self, Self::Down | Self::Opened { .. })
    }
}

/// How far a change's save got (`state_file::save`'s
/// `write_atomically`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Save {
    /// Nothing to save.
    Idle,
    /// In force in the maps, not written yet.
    Applied,
    /// The temporary file written.
    Written,
    /// And fsynced.
    Synced,
    /// Renamed over the state file.
    Renamed,
}

/// A pair of maps a program uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Maps {
    /// Its backend array and Maglev table.
    pub tables: u8,
    /// Its flow table.
    pub flows: u8,
}

/// A loaded XDP program: its layout and its maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Program {
    pub layout: u8,
    pub maps: Maps,
}

/// The pin directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Pins {
    /// The link, with the program it runs.
    pub link: Option<Program>,
    /// The pinned backend array.
    pub tables: Option<u8>,
    /// The pinned flow table.
    pub flows: Option<u8>,
    /// The `layout-N` mark.
    pub layout: Option<u8>,
}

/// A backend array with the Maglev table built over it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Tables {
    pub layout: u8,
    pub slots: Vec<Slot>,
    /// The slots new flows go to.
    pub maglev: Vec<u8>,
}

/// A flow-table entry: the slot and generation it follows, and the worker
/// it was recorded for (a ghost).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Flow {
    pub slot: u8,
    pub generation: u32,
    pub worker: u8,
}

/// What a file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Content {
    /// A whole state of this version.
    Whole(u8),
    /// Not a state: what a rename of data never fsynced leaves after a
    /// power loss.
    Garbage,
}

/// The state file as readers see it and as a power loss would leave it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StateFile {
    /// What reading it gives now.
    pub visible: Content,
    /// What it holds after a power loss, as of the last directory fsync.
    pub durable: Content,
    /// A rename since, not fsynced in the directory: what it would leave
    /// if the power loss kept it.
    pub renamed: Option<Content>,
    /// The temporary file (`.NAME.PID.tmp`): its version, and whether
    /// its data was fsynced.
    pub temp: Option<(u8, bool)>,
}

/// What a run may still do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Budgets {
    /// Crashes, power losses, removed lock files and pins.
    pub faults: u8,
    /// Admin changes.
    pub changes: u8,
    /// New flows.
    pub flows: u8,
    /// Starts of the second `lb run`.
    pub racer: u8,
    /// Upgrades to the binary of the next layout.
    pub upgrades: u8,
    /// Runs of `lb detach`.
    pub detaches: u8,
}
