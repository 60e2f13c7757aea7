//! The announcement model at the bound `LB_MODELS_DEPTH` asks for (the
//! CI bound by default): lb keeps every property, and each planted bug is
//! caught by the property it is about.

use lb_models::{
    announcements::{Announcements, Bug},
    bound::Depth,
    run::{check, finds},
};

fn model() -> Announcements {
    Announcements::new(Depth::from_env())
}

#[test]
fn lb_keeps_every_announcement_property() {
    let summary = check(model());
    assert!(summary.failed.is_empty(), "{:#?}", summary.failed);
}

#[test]
fn a_start_that_forgets_withdrawals_is_caught() {
    assert!(finds(
        model().with_bug(Bug::ForgetsWithdrawals),
        "an operator's withdrawal survives restarts"
    ));
}

#[test]
fn workers_that_start_down_are_caught() {
    assert!(finds(
        model().with_bug(Bug::StartsDown),
        "a crash or restart withdraws nothing"
    ));
}

#[test]
fn a_verdict_that_ignores_drains_is_caught() {
    assert!(finds(
        model().with_bug(Bug::IgnoresDrains),
        "announced as promised once converged"
    ));
}

#[test]
fn a_start_that_forgets_down_slots_is_caught() {
    assert!(finds(
        model().with_bug(Bug::ForgetsDownSlots),
        "a restart announces no address whose workers were recorded down"
    ));
}
