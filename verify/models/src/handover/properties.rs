//! What the handover model holds lb to.

use stateright::{Model, Property};

use super::{world::DETACH, Content, Handover, Proc, Save, World};
use crate::lb::VIP_ID;

/// Every property.
pub(super) fn all() -> Vec<Property<Handover>> {
    let mut all = vec![
        Property::always("at most one controller writes the maps", |_, w: &World| {
            w.procs.iter().filter(|p| p.writes_maps()).count() <= 1
        }),
        Property::always(
            "the state file parses and holds the acknowledged state or a later one",
            |_, w: &World| file_holds_acked(w),
        ),
        Property::always(
            "after adoption the data plane serves the desired state",
            |_, w: &World| {
                idle_controllers(w).all(|(desired, maps)| serves(w, desired, maps, false))
            },
        ),
        Property::always(
            "a flow never follows a slot's next worker",
            |_, w: &World| flows_keep_their_worker(w),
        ),
        Property::always("converges once faults stop", |m: &Handover, w: &World| {
            !is_terminal(m, w) || converged(w)
        }),
        Property::sometimes("an upgrade replaces the maps", |_, w: &World| {
            w.pins.link.is_some_and(|p| p.layout == 2) && idle_controllers(w).count() == 1
        }),
        Property::sometimes("a slot holds its second worker", |_, w: &World| {
            w.tables
                .iter()
                .flat_map(|t| &t.slots)
                .any(|s| s.valid && s.generation >= 2)
        }),
        Property::sometimes("a start meets lb detach", |_, w: &World| {
            let opened = w.procs.iter().any(|p| matches!(p, Proc::Opened { .. }));
            w.pin_lock == Some(DETACH) && opened
        }),
        Property::sometimes("the second lb run takes over", |_, w: &World| {
            matches!(w.procs[1], Proc::Running { .. })
        }),
    ];
    all.push(Property::always(
        "adoption leaves no slot of a worker the state lacks",
        |_, w: &World| idle_controllers(w).all(|(desired, maps)| serves(w, desired, maps, true)),
    ));
    all
}

/// The file holds a whole state, answered or applied later (a crash
/// between the rename and the answer leaves one never answered).
fn file_holds_acked(w: &World) -> bool {
    match w.file.visible {
        Content::Whole(v) => w.acked <= v && usize::from(v) < w.history.len(),
        Content::Garbage => false,
    }
}

/// Running controllers between batches: their version and maps.
fn idle_controllers(w: &World) -> impl Iterator<Item = (u8, super::Maps)> + '_ {
    w.procs.iter().filter_map(|p| match *p {
        Proc::Running {
            desired,
            maps,
            save: Save::Idle,
            ..
        } => Some((desired, maps)),
        _ => None,
    })
}

/// The program on the link uses `maps`, every worker of version
/// `desired` is in its slot and the Maglev table is theirs; `strict`:
/// and no other slot holds a worker.
fn serves(w: &World, desired: u8, maps: super::Maps, strict: bool) -> bool {
    let ids = &w.history[usize::from(desired)];
    let tables = &w.tables[usize::from(maps.tables)];
    let placed = ids.iter().all(|&(worker, id)| {
        let slot = tables.slots[usize::from(id)];
        slot.valid && slot.worker == Some(worker)
    });
    let mut maglev: Vec<u8> = ids.iter().map(|&(_, id)| id).collect();
    maglev.sort_unstable();
    let no_stale = (tables.slots.iter().enumerate())
        .all(|(s, slot)| !slot.valid || ids.iter().any(|&(_, id)| usize::from(id) == s));
    w.pins.link.is_some_and(|p| p.maps == maps)
        && placed
        && tables.maglev == maglev
        && (!strict || no_stale)
}

/// Every flow the running program would follow (lb-common's
/// `Backend::keeps_flows`) goes to the worker it was recorded for.
fn flows_keep_their_worker(w: &World) -> bool {
    let Some(program) = w.pins.link else {
        return true;
    };
    let tables = &w.tables[usize::from(program.maps.tables)];
    w.flow_tables[usize::from(program.maps.flows)]
        .iter()
        .all(|flow| {
            let slot = tables.slots[usize::from(flow.slot)];
            !slot.backend().keeps_flows(VIP_ID, flow.generation) || slot.worker == Some(flow.worker)
        })
}

fn is_terminal(m: &Handover, w: &World) -> bool {
    let mut actions = Vec::new();
    m.actions(w, &mut actions);
    actions.is_empty()
}

/// A controller between batches serves what the state file durably
/// holds, at least the acknowledged state.
fn converged(w: &World) -> bool {
    idle_controllers(w).any(|(desired, maps)| {
        let saved = Content::Whole(desired);
        serves(w, desired, maps, false)
            && w.file.visible == saved
            && w.file.durable == saved
            && w.acked <= desired
    })
}
