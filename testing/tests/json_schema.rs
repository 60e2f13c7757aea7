//! The JSON output of every listing command against docs/JSON.md: the
//! test reads the document's tables, so the two can't drift. Needs root.

use std::collections::BTreeMap;

use lb_testing::{
    lb_exe,
    rig::{Rig, VIP4},
    testbed::http_get,
    wait::wait_until,
};
use serde_json::Value;

const DOC: &str = include_str!("../../docs/JSON.md");

/// The documented fields of each `## heading`: name → type.
fn schema() -> BTreeMap<String, BTreeMap<String, String>> {
    let mut tables = BTreeMap::new();
    let mut current = None;
    for line in DOC.lines() {
        if let Some(heading) = line.strip_prefix("## ") {
            current = Some(heading.to_owned());
            continue;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 4 || cells[1] == "field" || cells[1].starts_with("---") {
            continue;
        }
        if let Some(heading) = &current {
            tables
                .entry(heading.clone())
                .or_insert_with(BTreeMap::new)
                .insert(cells[1].to_owned(), cells[2].to_owned());
        }
    }
    tables
}

fn type_ok(value: &Value, documented: &str) -> bool {
    documented.split(" or ").any(|t| match t {
        "string" => value.is_string(),
        "integer" => value.is_u64() || value.is_i64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        "object" => value.is_object(),
        "array" => value.is_array(),
        "null" => value.is_null(),
        other => panic!("unknown type {other} in docs/JSON.md"),
    })
}

/// Checks `object` has exactly the fields of table `heading`.
fn check(schema: &BTreeMap<String, BTreeMap<String, String>>, heading: &str, object: &Value) {
    let fields = schema
        .get(heading)
        .unwrap_or_else(|| panic!("docs/JSON.md has no section {heading:?}"));
    let object = object
        .as_object()
        .unwrap_or_else(|| panic!("{heading}: not an object: {object}"));
    let keys: Vec<&String> = object.keys().collect();
    let documented: Vec<&String> = fields.keys().collect();
    assert_eq!(
        keys.iter()
            .copied()
            .collect::<std::collections::BTreeSet<_>>(),
        documented.iter().copied().collect(),
        "{heading}: fields"
    );
    for (name, documented) in fields {
        assert!(
            type_ok(&object[name], documented),
            "{heading}: {name} is {} not {documented}",
            object[name]
        );
    }
}

fn json(rig: &Rig, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.extend(["-o", "json"]);
    serde_json::from_str(&rig.lb.cli_ok(&args).unwrap()).unwrap()
}

#[test]
fn every_listing_command_prints_the_documented_json() {
    lb_testing::needs_root!();
    let schema = schema();
    let rig = Rig::new(lb_exe().as_ref(), 2, &["--announce-table", "100"]).unwrap();
    let vip = "192.0.2.100:80/tcp";
    rig.add_vip_with_workers(vip, &["--sticky", "60s"]).unwrap();
    let w1 = rig.workers[0].ipv4.to_string();
    rig.lb
        .cli_ok(&["sessions", "pin", vip, "198.51.100.9", &w1])
        .unwrap();
    rig.lb
        .cli_ok(&["backend", "set", vip, &w1, "--load", "0.5"])
        .unwrap();
    let target = std::net::SocketAddr::new(VIP4.into(), 80);
    rig.client
        .within(move || http_get(target, std::time::Duration::from_secs(5)))
        .unwrap()
        .unwrap();
    wait_until(
        std::time::Duration::from_secs(10),
        "every worker's first check",
        || {
            let backends = json(&rig, &["backend", "list"]);
            backends
                .as_array()
                .unwrap()
                .iter()
                .all(|w| !w["check"].is_null())
        },
    );

    let each = |heading: &str, value: &Value| {
        let items = value
            .as_array()
            .unwrap_or_else(|| panic!("{heading}: not an array"));
        assert!(!items.is_empty(), "{heading}: nothing listed to check");
        for item in items {
            check(&schema, heading, item);
        }
    };
    each(
        "`lb vip list -o json`: an array of",
        &json(&rig, &["vip", "list"]),
    );
    let backends = json(&rig, &["backend", "list"]);
    each("`lb backend list -o json`: an array of", &backends);
    for backend in backends.as_array().unwrap() {
        if !backend["check"].is_null() {
            check(
                &schema,
                "`lb backend list -o json`: `check`",
                &backend["check"],
            );
        }
    }
    each(
        "`lb sessions list -o json`: an array of",
        &json(&rig, &["sessions", "list"]),
    );
    check(
        &schema,
        "`lb status -o json`: an object",
        &json(&rig, &["status"]),
    );
    each(
        "`lb announce list -o json`: an array of",
        &json(&rig, &["announce", "list"]),
    );
    let stats = json(&rig, &["stats"]);
    check(&schema, "`lb stats -o json`: an object", &stats);
    assert!(stats["global"]
        .as_object()
        .unwrap()
        .values()
        .all(Value::is_u64));
    each("`lb stats -o json`: `vips` entries", &stats["vips"]);
    each("`lb stats -o json`: `workers` entries", &stats["workers"]);
    assert!(
        stats["workers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|w| w["vip"] == vip),
        "every worker row names its VIP: {}",
        stats["workers"]
    );
    let flows = json(&rig, &["flows"]);
    each("`lb flows -o json`: an array of", &flows);
    check_explain(&rig, &schema, vip, &flows);
}

/// `lb explain` of the client's flow (flow, session, Maglev pick, a SYN's
/// verdict), of the pinned client (pin, shares), and of a least-load VIP
/// (both candidates).
fn check_explain(
    rig: &Rig,
    schema: &BTreeMap<String, BTreeMap<String, String>>,
    vip: &str,
    flows: &Value,
) {
    let object = |heading: &str, value: &Value| {
        assert!(!value.is_null(), "{heading}: nothing to check");
        check(schema, &format!("`lb explain -o json`: {heading}"), value);
    };
    let client = flows[0]["client"].as_str().unwrap();
    let flow = json(rig, &["explain", vip, client]);
    object("an object", &flow);
    object("`settings`", &flow["settings"]);
    object("`flow`", &flow["flow"]);
    object("`session`", &flow["session"]);
    object("`schedule`", &flow["schedule"]);
    object("`schedule` picks", &flow["schedule"]["first"]);
    object("`verdict` and `syn`", &flow["verdict"]);
    object("`verdict` and `syn`", &flow["syn"]);
    for worker in flow["workers"].as_array().unwrap() {
        object("`workers` entries", worker);
    }
    let pinned = json(rig, &["explain", vip, "198.51.100.9"]);
    object("an object", &pinned);
    object("`pin`", &pinned["pin"]);

    let least_load = "192.0.2.100:8080/tcp";
    rig.add_vip_with_workers(least_load, &["--scheduler", "least-load"])
        .unwrap();
    let picks = json(rig, &["explain", least_load, "192.0.2.1:40000"]);
    object("an object", &picks);
    object("`schedule` picks", &picks["schedule"]["second"]);
}

#[test]
fn decap_stats_prints_the_documented_json() {
    lb_testing::needs_root!();
    let schema = schema();
    let mut bed = lb_testing::testbed::Testbed::new().unwrap();
    let host = bed
        .add_host(
            "w",
            "192.0.2.11".parse().unwrap(),
            lb_testing::rig::v6(0x11),
        )
        .unwrap();
    let pins = bed.pin_dir("decap");
    let dir = pins.to_str().unwrap();
    let lb = |args: &[&str]| host.run(lb_exe(), &[&["decap"], args].concat()).unwrap();
    lb(&["attach", "--iface", "eth0", "--pin-dir", dir]);
    let doc: Value = serde_json::from_str(&lb(&["stats", "--pin-dir", dir, "-o", "json"])).unwrap();
    let entries = doc.as_array().unwrap();
    assert_eq!(entries.len(), 1, "{doc}");
    check(
        &schema,
        "`lb decap stats -o json`: an array of",
        &entries[0],
    );
    check(
        &schema,
        "`lb decap stats -o json`: `counters`",
        &entries[0]["counters"],
    );
    assert_eq!(entries[0]["iface"], "eth0");
    lb(&["detach", "--iface", "eth0", "--pin-dir", dir]);
}
