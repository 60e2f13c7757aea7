//! lb's protocols as finite models, checked exhaustively with stateright
//! to a bound: how a controller hands the data plane and the state file
//! over to the next one ([`handover`]), and which VIP addresses it
//! announces to the routers ([`announcements`]). Where lb has a pure
//! decision function the models call it rather than restate it, so that
//! a change to it is checked too; where the function is not reachable
//! from outside `lb-userspace`, the model mirrors it and says so at the
//! spot. docs/VERIFICATION.md says what each model covers and what not.

pub mod announcements;
pub mod bound;
pub mod handover;
mod lb;
pub mod run;
