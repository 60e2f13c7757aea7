//! Property tests for everything in user space that parses outside input:
//! config files, state files, admin API requests, load reports, the CLI's
//! address syntax. None may panic on any input, and what they accept must
//! survive a round trip.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lb_userspace::{
    admin::protocol::{Deadline, Request, Sent},
    checks::load,
    desired::config::FileConfig,
    desired::state_file,
    service,
    service::Vip,
};
use proptest::prelude::*;

/// Text that is mostly made of the pieces these formats use.
fn formatish() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("[[vip]]\n".to_owned()),
        Just("address = \"192.0.2.100:80/tcp\"\n".to_owned()),
        Just("backends = [{ address = \"192.0.2.11\", weight = 5 }]\n".to_owned()),
        Just("sticky = \"5s\"\n".to_owned()),
        Just("health = { check = \"http\", path = \"/\" }\n".to_owned()),
        Just("{\"cmd\":\"vip_add\",\"vip\":\"192.0.2.100:80/tcp\"}".to_owned()),
        Just("\"deadline_monotonic_ms\":18446744073709551615,".to_owned()),
        Just("{\"format\":1,\"hash_seed\":7,\"vips\":{}}".to_owned()),
        Just("[2001:db8::1]:53/udp".to_owned()),
        "[ -~]{0,12}".prop_map(|s| s),
        any::<char>().prop_map(|c| c.to_string()),
    ];
    proptest::collection::vec(piece, 0..8).prop_map(|p| p.concat())
}

fn vip() -> impl Strategy<Value = Vip> {
    let addr = prop_oneof![
        any::<u32>().prop_map(|a| IpAddr::V4(Ipv4Addr::from(a))),
        any::<u128>().prop_map(|a| IpAddr::V6(Ipv6Addr::from(a))),
    ];
    (addr, 1u16.., any::<bool>()).prop_map(|(addr, port, tcp)| {
        let proto = if tcp { "tcp" } else { "udp" };
        let text = match addr {
            IpAddr::V4(a) => format!("{a}:{port}/{proto}"),
            IpAddr::V6(a) => format!("[{a}]:{port}/{proto}"),
        };
        text.parse().expect("well-formed VIP text parses")
    })
}

proptest! {
    #[test]
    fn config_files_never_panic(text in formatish()) {
        let _ = FileConfig::parse(&text).and_then(|c| c.desired());
    }

    #[test]
    fn admin_requests_never_panic(text in formatish()) {
        let _ = serde_json::from_str::<Request>(&text);
        let _ = Sent::parse(&text);
    }

    #[test]
    fn load_reports_never_panic(text in formatish()) {
        let _ = load::parse_report(text.as_bytes());
    }

    #[test]
    fn addresses_never_panic(text in formatish()) {
        let _ = text.parse::<Vip>();
        let _ = service::parse_worker(&text);
        let _ = text.parse::<service::WorkerAddr>();
    }

    #[test]
    fn workers_with_ports_round_trip_through_text(vip in vip(), port in proptest::option::of(1u16..)) {
        let worker = service::WorkerAddr { addr: vip.addr, port };
        prop_assert_eq!(worker.to_string().parse::<service::WorkerAddr>().unwrap(), worker);
    }

    #[test]
    fn vips_round_trip_through_text_and_map_keys(vip in vip()) {
        prop_assert_eq!(vip.to_string().parse::<Vip>().unwrap(), vip);
        prop_assert_eq!(Vip::from_key(&vip.key()), Some(vip));
    }

    #[test]
    fn admin_requests_round_trip(vip in vip(), weight in 1u32..65536, port in proptest::option::of(1u16..)) {
        let request = Request::BackendAdd { vip, worker: vip.addr, port, weight };
        let text = serde_json::to_string(&request).unwrap();
        prop_assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), request.clone());
        let sent = Sent { request, deadline: Some(Deadline::after(std::time::Duration::ZERO)) };
        let read = Sent::parse(&sent.to_line().unwrap()).unwrap();
        prop_assert_eq!(read.request, sent.request);
        prop_assert!(read.deadline.is_some());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn state_files_never_panic_and_damage_is_reported(text in formatish()) {
        let path = std::env::temp_dir().join(format!("lb-state-prop-{}.json", std::process::id()));
        std::fs::write(&path, &text).unwrap();
        let result = state_file::load(&path);
        let _ = std::fs::remove_file(&path);
        if let Err(error) = result {
            prop_assert!(error.to_string().contains(&path.display().to_string()));
        }
    }
}
