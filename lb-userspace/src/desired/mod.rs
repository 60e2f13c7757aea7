//! What the operator asked for: VIPs, their workers, weights and options,
//! the Maglev tables built from them, the instance they belong to, and the
//! config and state files they are read from and saved to.

pub mod config;
pub mod instance;
pub mod maglev;
pub mod options;
pub mod state;
pub mod state_file;
