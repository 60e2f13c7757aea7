//! The data plane conforms to its executable specification (`lb-spec`):
//! generated configurations and frames run through lb's real program
//! (BPF_PROG_TEST_RUN) and through the specification agree on the
//! verdict, the frame that leaves and every map the data plane writes.
//! A disagreement shrinks to a minimal case, printed as a test to paste
//! below. Needs root (CAP_BPF).
//!
//! `LB_CONFORMANCE_CASES` sets how many cases (default 32: CI's budget);
//! `LB_CONFORMANCE_SEED` fixes the generator's seed; `LB_CONFORMANCE_SHRINK=0`
//! reports the first failing case without shrinking it.

use lb_testing::conformance::{case, check, Case};
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};

fn cases() -> u32 {
    std::env::var("LB_CONFORMANCE_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(32)
}

fn runner() -> TestRunner {
    let config = Config {
        cases: cases(),
        failure_persistence: None,
        // `cargo xtask verify --mutants` only asks whether a case fails.
        max_shrink_iters: if std::env::var_os("LB_CONFORMANCE_SHRINK").is_some_and(|v| v == "0") {
            0
        } else {
            Config::default().max_shrink_iters
        },
        ..Config::default()
    };
    match std::env::var("LB_CONFORMANCE_SEED") {
        Ok(seed) => {
            let seed: u64 = seed.parse().expect("LB_CONFORMANCE_SEED is a number");
            let mut bytes = [0u8; 32];
            bytes[..8].copy_from_slice(&seed.to_le_bytes());
            TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &bytes))
        }
        Err(_) => TestRunner::new(config),
    }
}

#[test]
fn the_data_plane_does_what_its_specification_says() {
    lb_testing::needs_root!();
    let result = runner().run(&case(), |case| check(&case).map_err(TestCaseError::fail));
    match result {
        Ok(()) => {}
        Err(TestError::Fail(reason, case)) => panic!(
            "lb and its specification disagree: {reason}\n\nThe minimal case, as a test:\n\n\
             #[test]\nfn regression() {{\n    lb_testing::needs_root!();\n    \
             use lb_testing::conformance::{{Age::*, Budget::*, Hop::*, Kind::*, Method::*, *}};\n    \
             let case = {};\n    lb_testing::conformance::check(&case).unwrap();\n}}\n",
            rust(&case)
        ),
        Err(error) => panic!("{error}"),
    }
}

fn rust(case: &Case) -> String {
    case.to_rust()
}

/// Found by the check: a `nat` reply whose cached next hop is on an
/// interface lb is not on was sent with the MACs of the previous packet's
/// routing lookup (left in the per-CPU scratch) instead of going to the
/// kernel.
#[test]
fn a_reply_whose_cached_hop_left_lb_goes_to_the_kernel() {
    lb_testing::needs_root!();
    use lb_testing::conformance::{Hop, Kind, Method, *};
    let reply = |hop| FrameCase {
        vip: 0,
        client: 0,
        port: 40000,
        kind: Kind::Reply(0x02, hop),
        payload: 0,
        flips: vec![],
        cut: None,
        budget: Budget::Refills,
    };
    let case = Case {
        hash_seed: 0,
        few_nat_ports: false,
        vips: vec![VipCase {
            v6: false,
            udp: false,
            method: Method::Nat,
            least_load: false,
            sticky_s: None,
            wide_prefix: false,
            idle_s: 2,
            table_size: 7,
            workers: vec![WorkerCase {
                v6: false,
                state: 0,
                mac_known: false,
                generation: 1,
                load: None,
                mtu: 1500,
            }],
            pin: None,
        }],
        flows: vec![],
        sessions: vec![],
        frames: vec![reply(Hop::Stale), reply(Hop::Elsewhere)],
    };
    check(&case).unwrap();
}
