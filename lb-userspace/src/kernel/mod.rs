//! The kernel's interfaces lb uses beside BPF: route netlink (neighbours,
//! routes, links), interface lookup, the privileges lb needs, and the
//! directories only lb may write.

pub(crate) mod bpffs;
pub(crate) mod iface;
pub mod neighbour;
pub(crate) mod netlink;
pub(crate) mod private;
pub mod privileges;
