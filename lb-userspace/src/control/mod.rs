//! The control plane: the controller that applies desired state to the
//! maps and keeps what it learns current, VIP announcements, the tunnels'
//! outer addresses, NAT's sources and ports, and the Prometheus metrics.

pub(crate) mod announce;
pub(crate) mod controller;
pub(crate) mod housekeeping;
pub(crate) mod metrics;
pub mod nat;
pub(crate) mod tunnel;
