//! What each action of the handover model may do, and does.

use super::{
    world::DETACH, Action, Bug, Content, Handover, Maps, Op, Proc, Program, Save, Tables, World,
};
use crate::lb::{self, Slot, VIP_ID};

impl Handover {
    /// The next step of process `p`'s start, or of its running batch.
    pub(super) fn process_actions(&self, world: &World, p: u8, actions: &mut Vec<Action>) {
        let proc = world.procs[usize::from(p)];
        match proc {
            Proc::Down => {
                let free = world.state_lock.is_none() || self.has(Bug::NoLocks);
                let may = p == 0 || world.budgets.racer > 0;
                if free && may && matches!(world.file.visible, Content::Whole(_)) {
                    actions.push(Action::Open(p));
                }
            }
            Proc::Opened { .. } => actions.push(Action::LockPins(p)),
            Proc::Locked { .. } => actions.push(Action::Plan(p)),
            Proc::Planned { .. } => actions.push(Action::LoadMaps(p)),
            Proc::Loaded { .. } => actions.push(Action::SwapIn(p)),
            Proc::Attached { .. } => actions.push(Action::StartController(p)),
            Proc::Running { desired, save, .. } => {
                self.running_actions(world, p, desired, save, actions);
            }
        }
        if proc != Proc::Down && world.budgets.faults > 0 {
            actions.push(Action::Crash(p));
        }
    }

    fn running_actions(
        &self,
        world: &World,
        p: u8,
        desired: u8,
        save: Save,
        actions: &mut Vec<Action>,
    ) {
        match save {
            Save::Idle => {
                if world.budgets.changes > 0 {
                    self.changes(world, p, desired, actions);
                }
                if world.pin_lock.is_none() {
                    actions.push(Action::Relock(p));
                }
            }
            Save::Applied => actions.push(Action::WriteTemp(p)),
            Save::Written if self.has(Bug::SkipTempFsync) => actions.push(Action::Rename(p)),
            Save::Written => actions.push(Action::FsyncTemp(p)),
            Save::Synced => actions.push(Action::Rename(p)),
            Save::Renamed => actions.push(Action::FsyncDir(p)),
        }
    }

    /// Every add of a worker not there (where lb has a slot for it) and
    /// every delete of one there.
    fn changes(&self, world: &World, p: u8, desired: u8, actions: &mut Vec<Action>) {
        let ids = &world.history[usize::from(desired)];
        for w in 0..self.workers {
            if ids.iter().any(|&(x, _)| x == w) {
                actions.push(Action::Change(p, Op::Del(w)));
            } else if lb::add_worker(ids, w, self.slots).is_some() {
                actions.push(Action::Change(p, Op::Add(w)));
            }
        }
    }

    /// What happens beside the controllers: traffic, the operator, faults.
    pub(super) fn world_actions(&self, world: &World, actions: &mut Vec<Action>) {
        if let (Some(program), true) = (world.pins.link, world.budgets.flows > 0) {
            let tables = &world.tables[usize::from(program.maps.tables)];
            actions.extend(tables.maglev.iter().map(|&s| Action::Packet(s)));
        }
        self.detach_actions(world, actions);
        let idle = matches!(
            world.procs[0],
            Proc::Running {
                save: Save::Idle,
                ..
            }
        );
        if world.budgets.upgrades > 0 && idle {
            actions.push(Action::Upgrade);
        }
        if world.budgets.faults == 0 {
            return;
        }
        actions.push(Action::Reboot { rename_kept: false });
        if world.file.renamed.is_some() {
            actions.push(Action::Reboot { rename_kept: true });
        }
        if world.pin_lock.is_some() {
            actions.push(Action::LoseLockFile);
        }
        let stopped = world.procs.iter().all(|p| *p == Proc::Down);
        if stopped && world.pins.tables.is_some() {
            actions.push(Action::UnpinTables);
        }
    }

    /// `lb detach` by an operator, once, of an instance that no running
    /// controller holds (one whose lock file was removed is not
    /// modelled: lb's `PinGuard` would pin again what it removed).
    fn detach_actions(&self, world: &World, actions: &mut Vec<Action>) {
        if world.pin_lock == Some(DETACH) {
            actions.push(Action::Detach);
            return;
        }
        let running = (world.procs.iter()).any(|p| !matches!(p, Proc::Down | Proc::Opened { .. }));
        let pinned = world.pins.link.is_some() || world.pins.tables.is_some();
        if world.budgets.detaches > 0 && world.pin_lock.is_none() && !running && pinned {
            actions.push(Action::DetachLock);
        }
    }

    pub(super) fn apply(&self, world: &mut World, action: Action) {
        match action {
            Action::Open(p) => self.open(world, p),
            Action::LockPins(p) => self.lock_pins(world, p),
            Action::Plan(p) => self.plan(world, p),
            Action::LoadMaps(p) => load_maps(world, p),
            Action::SwapIn(p) => swap_in(world, p),
            Action::StartController(p) => self.start_controller(world, p),
            Action::Change(p, op) => self.change(world, p, op),
            Action::WriteTemp(p) => write_temp(world, p),
            Action::FsyncTemp(p) => fsync_temp(world, p),
            Action::Rename(p) => rename(world, p),
            Action::FsyncDir(p) => self.fsync_dir(world, p),
            Action::Relock(p) => world.pin_lock = Some(p),
            Action::Packet(s) => self.packet(world, s),
            Action::Upgrade => upgrade(world),
            Action::Crash(p) => crash(world, p),
            Action::Reboot { rename_kept } => reboot(world, rename_kept),
            Action::LoseLockFile => world.pin_lock = None,
            Action::DetachLock => {
                world.budgets.detaches -= 1;
                world.pin_lock = Some(DETACH);
            }
            Action::Detach => detach(world),
            Action::UnpinTables => world.pins.tables = None,
        }
        if is_fault(action) {
            world.budgets.faults -= 1;
        }
    }

    fn open(&self, world: &mut World, p: u8) {
        let Content::Whole(loaded) = world.file.visible else {
            unreachable!("a start refuses a damaged file");
        };
        if p == 1 {
            world.budgets.racer -= 1;
        }
        world.state_lock = Some(p);
        world.file.temp = None;
        let binary = world.installed;
        set(world, p, Proc::Opened { binary, loaded });
    }

    fn lock_pins(&self, world: &mut World, p: u8) {
        let Proc::Opened { binary, loaded } = proc(world, p) else {
            unreachable!()
        };
        if world.pin_lock.is_some() && !self.has(Bug::NoLocks) {
            // `PinDirInUse`: `run.rs` undoes the start, the state lock goes.
            world.state_lock = None;
            set(world, p, Proc::Down);
            return;
        }
        world.pin_lock = Some(p);
        set(world, p, Proc::Locked { binary, loaded });
    }

    fn start_controller(&self, world: &mut World, p: u8) {
        let Proc::Attached {
            binary,
            loaded,
            maps,
        } = proc(world, p)
        else {
            unreachable!()
        };
        let ids = world.history[usize::from(loaded)].clone();
        for &(w, id) in &ids {
            self.write_worker(world, maps, w, id);
        }
        if !self.has(Bug::KeepStaleSlots) {
            clear_stale_slots(world, maps, &ids);
        }
        install(world, maps, &ids);
        // `Controller::start` saves what it restored: the same state,
        // whole (a crash midway leaves only a temporary file).
        let saved = Content::Whole(loaded);
        world.file = super::StateFile {
            visible: saved,
            durable: saved,
            renamed: None,
            temp: None,
        };
        let save = Save::Idle;
        let desired = loaded;
        set(
            world,
            p,
            Proc::Running {
                binary,
                desired,
                maps,
                save,
            },
        );
    }

    /// `Controller::start_worker_via` / `write_worker`: the slot gets the
    /// worker with `generation_for`'s generation.
    fn write_worker(&self, world: &mut World, maps: Maps, w: u8, id: u8) {
        let slot = &mut world.tables[usize::from(maps.tables)].slots[usize::from(id)];
        let generation = if self.has(Bug::ReuseGeneration) {
            slot.generation.max(1)
        } else {
            lb::generation_for(*slot, w)
        };
        *slot = Slot {
            worker: Some(w),
            generation,
            valid: true,
        };
    }

    fn change(&self, world: &mut World, p: u8, op: Op) {
        let Proc::Running {
            binary,
            desired,
            maps,
            ..
        } = proc(world, p)
        else {
            unreachable!()
        };
        let ids = &world.history[usize::from(desired)];
        let next = match op {
            Op::Add(w) => lb::add_worker(ids, w, self.slots).expect("offered with a slot"),
            Op::Del(w) => lb::del_worker(ids, w, self.slots),
        };
        match op {
            Op::Add(w) => {
                let id = next.iter().find(|&&(x, _)| x == w).expect("added").1;
                self.write_worker(world, maps, w, id);
            }
            Op::Del(w) => {
                let id = ids.iter().find(|&&(x, _)| x == w).expect("present").1;
                clear_backend(world, maps, id);
            }
        }
        install(world, maps, &next);
        world.history.push(next);
        world.budgets.changes -= 1;
        let desired = u8::try_from(world.history.len() - 1).expect("few versions");
        if self.has(Bug::AnswerBeforeSave) {
            world.acked = desired;
        }
        let save = Save::Applied;
        set(
            world,
            p,
            Proc::Running {
                binary,
                desired,
                maps,
                save,
            },
        );
    }

    fn fsync_dir(&self, world: &mut World, p: u8) {
        if let Some(renamed) = world.file.renamed.take() {
            world.file.durable = renamed;
        }
        let desired = set_save(world, p, Save::Idle);
        world.acked = desired;
    }

    /// A new flow on slot `s` of the running program's tables, if the
    /// data plane would pick it.
    fn packet(&self, world: &mut World, s: u8) {
        let program = world.pins.link.expect("a program runs");
        let slot = world.tables[usize::from(program.maps.tables)].slots[usize::from(s)];
        world.budgets.flows -= 1;
        if !slot.backend().takes_new_flows(VIP_ID) {
            return;
        }
        let flow = super::Flow {
            slot: s,
            generation: slot.generation,
            worker: slot.worker.expect("a valid slot has a worker"),
        };
        let flows = &mut world.flow_tables[usize::from(program.maps.flows)];
        if !flows.contains(&flow) {
            flows.push(flow);
        }
    }
}

fn proc(world: &World, p: u8) -> Proc {
    world.procs[usize::from(p)]
}

fn set(world: &mut World, p: u8, to: Proc) {
    world.procs[usize::from(p)] = to;
}

/// Moves a running process's save on; returns its desired version.
fn set_save(world: &mut World, p: u8, to: Save) -> u8 {
    let Proc::Running { desired, save, .. } = &mut world.procs[usize::from(p)] else {
        unreachable!("only a running controller saves")
    };
    *save = to;
    *desired
}

impl Handover {
    /// `check_layout`: the pinned maps are replaced when they have another
    /// layout (`--force`, which an upgrade across layouts needs), or when
    /// the flow table is pinned without the backend array
    /// (`orphaned_generations`).
    fn plan(&self, world: &mut World, p: u8) {
        let Proc::Locked { binary, loaded } = proc(world, p) else {
            unreachable!()
        };
        let pinned = world.pins.tables.is_some() || world.pins.flows.is_some();
        let orphaned = world.pins.tables.is_none() && world.pins.flows.is_some();
        let orphaned = orphaned && !self.has(Bug::AdoptOrphanedFlows);
        if orphaned || (pinned && world.pins.layout != Some(binary)) {
            world.pins.tables = None;
            world.pins.flows = None;
            world.pins.layout = None;
        }
        set(world, p, Proc::Planned { binary, loaded });
    }
}

fn load_maps(world: &mut World, p: u8) {
    let Proc::Planned { binary, loaded } = proc(world, p) else {
        unreachable!()
    };
    let slots = world.tables[0].slots.len();
    let tables = world.pins.tables.unwrap_or_else(|| {
        world.tables.push(Tables {
            layout: binary,
            slots: vec![Slot::default(); slots],
            maglev: Vec::new(),
        });
        last(world.tables.len())
    });
    let flows = world.pins.flows.unwrap_or_else(|| {
        world.flow_tables.push(Vec::new());
        last(world.flow_tables.len())
    });
    world.pins.tables = Some(tables);
    world.pins.flows = Some(flows);
    let maps = Maps { tables, flows };
    set(
        world,
        p,
        Proc::Loaded {
            binary,
            loaded,
            maps,
        },
    );
}

fn last(len: usize) -> u8 {
    u8::try_from(len - 1).expect("a model makes a handful of maps")
}

fn swap_in(world: &mut World, p: u8) {
    let Proc::Loaded {
        binary,
        loaded,
        maps,
    } = proc(world, p)
    else {
        unreachable!()
    };
    world.pins.link = Some(Program {
        layout: binary,
        maps,
    });
    world.pins.layout = Some(binary);
    set(
        world,
        p,
        Proc::Attached {
            binary,
            loaded,
            maps,
        },
    );
}

/// `ControlMaps::clear_backend`: the slot emptied, its generation kept.
fn clear_backend(world: &mut World, maps: Maps, id: u8) {
    let slot = &mut world.tables[usize::from(maps.tables)].slots[usize::from(id)];
    *slot = Slot {
        generation: slot.generation,
        ..Slot::default()
    };
}

/// `Controller::install`: the Maglev table rebuilt from the workers.
fn install(world: &mut World, maps: Maps, ids: &[(u8, u8)]) {
    let mut maglev: Vec<u8> = ids.iter().map(|&(_, id)| id).collect();
    maglev.sort_unstable();
    world.tables[usize::from(maps.tables)].maglev = maglev;
}

fn write_temp(world: &mut World, p: u8) {
    let desired = set_save(world, p, Save::Written);
    world.file.temp = Some((desired, false));
}

fn fsync_temp(world: &mut World, p: u8) {
    set_save(world, p, Save::Synced);
    if let Some((_, synced)) = &mut world.file.temp {
        *synced = true;
    }
}

/// The rename shows the new state at once; after a power loss it holds
/// it only if its data was fsynced.
fn rename(world: &mut World, p: u8) {
    let Some((version, synced)) = world.file.temp.take() else {
        // Only without locks: another start removed it as a leftover.
        // The save fails and is retried (`Controller::retry_save`).
        set_save(world, p, Save::Applied);
        return;
    };
    set_save(world, p, Save::Renamed);
    world.file.visible = Content::Whole(version);
    world.file.renamed = Some(if synced {
        Content::Whole(version)
    } else {
        Content::Garbage
    });
}

/// `systemctl restart` into the next layout's binary: the running
/// controller stops between batches.
fn upgrade(world: &mut World) {
    world.budgets.upgrades -= 1;
    world.installed += 1;
    crash(world, 0);
}

fn crash(world: &mut World, p: u8) {
    if world.state_lock == Some(p) {
        world.state_lock = None;
    }
    if world.pin_lock == Some(p) {
        world.pin_lock = None;
    }
    set(world, p, Proc::Down);
}

fn reboot(world: &mut World, rename_kept: bool) {
    let file = &mut world.file;
    let kept = file.renamed.take().filter(|_| rename_kept);
    file.durable = kept.unwrap_or(file.durable);
    file.visible = file.durable;
    file.temp = None;
    world.procs.fill(Proc::Down);
    world.state_lock = None;
    detach(world);
}

/// `detach_pins`: everything under the pin directory goes, the lock
/// file too.
fn detach(world: &mut World) {
    world.pins = super::Pins {
        link: None,
        tables: None,
        flows: None,
        layout: None,
    };
    world.pin_lock = None;
}

fn is_fault(action: Action) -> bool {
    matches!(
        action,
        Action::Crash(_) | Action::Reboot { .. } | Action::LoseLockFile | Action::UnpinTables
    )
}

/// `Controller::remove_stale`: a slot the restored state has no worker for
/// is emptied (`ControlMaps::clear_backend`), its generation kept for the
/// slot's next worker.
fn clear_stale_slots(world: &mut World, maps: Maps, ids: &[(u8, u8)]) {
    let slots = &mut world.tables[usize::from(maps.tables)].slots;
    for (s, slot) in slots.iter_mut().enumerate() {
        if slot.valid && !ids.iter().any(|&(_, id)| usize::from(id) == s) {
            slot.valid = false;
            slot.worker = None;
        }
    }
}
