//! What lb learns from workers: health checks (TCP, HTTP, UDP, DNS, and
//! through IPIP and GUE tunnels) and load figures, probed or reported.

pub(crate) mod datagram;
pub(crate) mod dns;
pub(crate) mod health;
pub mod load;
pub(crate) mod tunnel;
