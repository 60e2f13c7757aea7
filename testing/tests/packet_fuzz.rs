//! A short run of the packet fuzzer (`cargo xtask fuzz` runs a long one).
//! Needs root (CAP_BPF).

use std::time::Duration;

use lb_testing::packet_fuzz::Target;

#[test]
fn two_hundred_thousand_random_and_mutated_frames_keep_every_invariant() {
    lb_testing::needs_root!();
    let target = Target::new().unwrap();
    let report = target
        .run(0x5eed_1b5e_ed00_0001, 200_000, Duration::from_secs(120))
        .unwrap();
    println!("{report:?}");
    assert_eq!(report.iterations, 200_000, "ran out of time: {report:?}");
    assert!(
        report.forwarded > 1000 && report.passed > 1000 && report.dropped > 100,
        "{report:?}"
    );
}
