//! Serving and asking over sockets: hyper's HTTP server and client, and
//! listeners that hold a fixed number of connections so no peer can stop
//! the controller.

pub(crate) mod http;
pub mod listen;
