//! The handover model at the bound `LB_MODELS_DEPTH` asks for (the CI
//! bound by default): lb keeps every property, and each planted bug is
//! caught by the property it is about.

use lb_models::{
    bound::Depth,
    handover::{Bug, Handover},
    run::{check, finds},
};

fn model() -> Handover {
    Handover::new(Depth::from_env())
}

#[test]
fn lb_keeps_every_handover_property() {
    let summary = check(model());
    assert!(summary.failed.is_empty(), "{:#?}", summary.failed);
}

#[test]
fn an_answer_before_the_save_is_caught() {
    assert!(finds(
        model().with_bug(Bug::AnswerBeforeSave),
        "the state file parses and holds the acknowledged state or a later one"
    ));
}

#[test]
fn a_rename_before_the_fsync_is_caught() {
    assert!(finds(
        model().with_bug(Bug::SkipTempFsync),
        "the state file parses and holds the acknowledged state or a later one"
    ));
}

#[test]
fn controllers_without_locks_are_caught() {
    assert!(finds(
        model().with_bug(Bug::NoLocks),
        "at most one controller writes the maps"
    ));
}

#[test]
fn a_generation_kept_for_the_next_worker_is_caught() {
    assert!(finds(
        model().with_bug(Bug::ReuseGeneration),
        "a flow never follows a slot's next worker"
    ));
}

#[test]
fn a_start_that_keeps_stale_slots_is_caught() {
    assert!(finds(
        model().with_bug(Bug::KeepStaleSlots),
        "adoption leaves no slot of a worker the state lacks"
    ));
}

#[test]
fn a_start_that_adopts_flows_without_their_slots_is_caught() {
    assert!(finds(
        model().with_bug(Bug::AdoptOrphanedFlows),
        "a flow never follows a slot's next worker"
    ));
}
