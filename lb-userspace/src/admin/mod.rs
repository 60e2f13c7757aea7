//! The admin API: one JSON request and one JSON answer per connection on
//! a Unix socket only root can open.

pub(crate) mod client;
pub mod protocol;
pub(crate) mod server;
