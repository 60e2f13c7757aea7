//! An executable specification of lb's XDP data plane, written for
//! clarity and not for speed: what the balancer does to one frame given
//! the contents of its maps: the verdict, the exact frame that leaves and
//! every change to the maps.
//!
//! It is written independently of `lb-ebpf` and `lb_common::decide`: the
//! header parser, the flow hash, the checksums, the decision and the
//! encapsulation are all its own, so that a bug in the data plane's code
//! is not also in its specification. It shares only layouts and
//! constants with lb-common. `testing/tests/conformance.rs` runs the real
//! program (BPF_PROG_TEST_RUN) beside it on generated maps and frames.

mod balance;
mod checksum;
mod headers;
mod icmp;
mod nat;
mod nat_icmp;
mod pmtu;
mod state;
mod tunnel;

pub use balance::step;
pub use headers::{parse, Class, Packet};
pub use state::{Clock, Effect, Maps, Verdict};
