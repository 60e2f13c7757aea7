//! lb's control plane: loading and attaching the XDP data plane, reading
//! its maps, and the command line built on top.

pub mod cli;
pub mod counters;
pub mod dataplane;
pub mod demo;
pub mod iface;
pub mod maglev;
pub mod object;
pub mod privileges;
pub mod run;
pub mod stats;
pub mod testbed;
