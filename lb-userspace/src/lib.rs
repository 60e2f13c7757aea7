//! lb's control plane and command line, by role: the `lb` commands
//! ([`commands`]) over the admin API ([`admin`]) and the control plane
//! ([`control`]), which applies what the operator asked for ([`desired`])
//! to the data plane's maps ([`dataplane`]) with what the checks learn from
//! workers ([`checks`]), through the kernel's interfaces ([`kernel`]) and
//! sockets ([`net`]). Dependencies run one way, in that order: the control
//! plane never imports a command.

pub mod admin;
pub mod checks;
pub mod commands;
pub(crate) mod control;
pub mod dataplane;
pub mod desired;
pub mod duration;
pub mod kernel;
pub mod logging;
pub mod net;
pub mod service;
