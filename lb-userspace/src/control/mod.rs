//! The control plane: the controller that applies desired state to the
//! maps and keeps what it learns current, VIP announcements, the tunnels'
//! outer addresses, and the Prometheus metrics.

pub(crate) mod announce;
pub(crate) mod controller;
pub(crate) mod housekeeping;
pub(crate) mod metrics;
pub(crate) mod tunnel;
