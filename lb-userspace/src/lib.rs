//! lb's control plane: loading and attaching the XDP data plane, Maglev
//! tables, the controller and its admin API, and the command line.

pub mod activity;
pub mod api;
pub mod cli;
pub mod client;
pub mod config;
pub mod controller;
pub mod counters;
pub mod datagram;
pub mod dataplane;
pub mod dns;
pub mod duration;
pub mod health;
pub mod http;
pub mod iface;
pub mod instance;
pub mod listen;
pub mod load;
pub mod logging;
pub mod maglev;
pub mod maps;
pub mod metrics;
pub mod neighbour;
pub mod netlink;
pub mod object;
pub mod options;
pub mod private;
pub mod privileges;
pub mod run;
pub mod service;
pub mod sessions;
pub mod state;
pub mod state_file;
pub mod stats;
pub mod table;
pub mod top;
