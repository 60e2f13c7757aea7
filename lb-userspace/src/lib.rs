//! lb's control plane and command line, by role: the `lb` commands
//! ([`commands`]) over the admin API ([`admin`]) and the control plane
//! ([`control`]), which applies what the operator asked for ([`desired`])
//! to the data plane's maps ([`dataplane`]) with what the checks learn from
//! workers ([`checks`]), through the kernel's interfaces ([`kernel`]) and
//! sockets ([`net`]). Dependencies run one way, in that order: the control
//! plane never imports a command.

// Lints beyond clippy's default for the product's code (the set and why:
// docs/VERIFICATION.md, "Static analysis"). Every exception is an
// `#[expect(lint, reason = "...")]` at the narrowest scope. `dataplane` and
// `desired::maglev` add `cast_possible_truncation`: they write map values.
#![warn(
    clippy::allow_attributes_without_reason,
    clippy::dbg_macro,
    clippy::exit,
    clippy::mem_forget,
    clippy::print_stderr,
    clippy::print_stdout,
    clippy::string_slice,
    clippy::todo,
    clippy::unimplemented,
    clippy::unnecessary_safety_comment,
    clippy::unnecessary_safety_doc,
    clippy::unwrap_used
)]
#![cfg_attr(not(test), warn(clippy::allow_attributes))]
#![cfg_attr(
    test,
    allow(
        clippy::cast_possible_truncation,
        clippy::print_stderr,
        clippy::print_stdout,
        clippy::string_slice,
        clippy::unwrap_used,
        reason = "unit tests stay under clippy's default set: a panic there is a failed test"
    )
)]

pub mod admin;
pub mod checks;
#[expect(
    clippy::print_stderr,
    clippy::print_stdout,
    reason = "the commands are the CLI's output layer: they print what the operator asked for; the rest of the library logs through tracing"
)]
pub mod commands;
pub(crate) mod control;
pub mod dataplane;
pub mod desired;
pub mod duration;
pub mod kernel;
pub mod logging;
pub mod net;
pub mod service;
