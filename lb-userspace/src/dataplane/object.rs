//! The XDP object built from lb-ebpf, embedded in the binary.

/// The balancer object: the `lb_xdp` and `lb_pass` programs and their maps.
pub static LB_XDP: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-xdp"));

/// The worker's object (`lb decap`): the `lb_decap` program and its maps.
pub static LB_DECAP: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-decap"));
