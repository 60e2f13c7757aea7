//! The files in dist/ work as shipped: the systemd unit passes
//! `systemd-analyze verify`, the example config is a valid lb config, the
//! routing daemons' configs parse, and the man page and completions come
//! out of the binary.

use std::process::Command;

use lb_testing::{bird::shipped_config, lb_exe};

const DIST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../dist");

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let unit = std::fs::read_to_string(format!("{DIST}/lb.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/lb run"));
    // verify checks that ExecStart's binary exists: point it at this build.
    let dir = std::env::temp_dir().join(format!("lb-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("lb.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/lb", lb_exe())).unwrap();
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (cargo xtask setup installs systemd)");
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stderr.trim().is_empty(),
        "{stderr}"
    );
}

#[test]
fn the_example_config_is_valid() {
    let config =
        lb_userspace::desired::config::FileConfig::load(format!("{DIST}/lb.toml").as_ref())
            .unwrap();
    let desired = config.desired().unwrap();
    assert_eq!(desired.vips().len(), 3);
}

#[test]
fn man_page_and_completions_come_out_of_the_binary() {
    let run = |args: &[&str]| {
        let output = Command::new(lb_exe()).args(args).output().unwrap();
        assert!(output.status.success(), "lb {args:?}");
        String::from_utf8(output.stdout).unwrap()
    };
    assert!(run(&["man"]).contains(".TH lb 1"));
    let dir = std::env::temp_dir().join(format!("lb-man-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    run(&["man", "--out-dir", dir.to_str().unwrap()]);
    for page in [
        "lb.1",
        "lb-run.1",
        "lb-vip-add.1",
        "lb-backend-drain.1",
        "lb-top.1",
    ] {
        assert!(dir.join(page).exists(), "no {page}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
    for shell in ["bash", "zsh", "fish"] {
        assert!(run(&["completions", shell]).contains("backend"), "{shell}");
    }
}

#[test]
fn the_bird_configs_parse_as_shipped_and_with_other_addresses() {
    let balancer = [
        ("LB_ADDRESS", "203.0.113.7"),
        ("LB_ADDRESS6", "2001:db8:5::7"),
        ("LB_AS", "4200000001"),
        ("ROUTER_ADDRESS", "203.0.113.1"),
        ("ROUTER_AS", "64512"),
        ("ANNOUNCE_TABLE", "4000"),
    ];
    let router = [
        ("ROUTER_ADDRESS", "203.0.113.1"),
        ("ROUTER_AS", "64512"),
        ("BALANCERS", "203.0.113.0/24"),
        ("LB_AS", "4200000001"),
    ];
    let dir = std::env::temp_dir().join(format!("lb-bird-conf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (file, defines) in [
        ("balancer.conf", &[][..]),
        ("balancer.conf", &balancer[..]),
        ("router.conf", &[][..]),
        ("router.conf", &router[..]),
    ] {
        let config = shipped_config(file, defines).unwrap();
        for (name, value) in defines {
            assert!(config.contains(&format!("define {name} = {value};")));
        }
        let path = dir.join(file);
        std::fs::write(&path, config).unwrap();
        let output = Command::new("bird")
            .arg("-p")
            .arg("-c")
            .arg(&path)
            .output()
            .expect("bird (cargo xtask setup installs bird2)");
        assert!(
            output.status.success(),
            "bird -p -c {file} with {defines:?}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_frr_configs_pass_vtyshs_dry_run() {
    for file in ["balancer.conf", "router.conf"] {
        let output = Command::new("vtysh")
            .arg("--dryrun")
            .arg("-f")
            .arg(format!("{DIST}/frr/{file}"))
            .output()
            .expect("vtysh (cargo xtask setup installs frr)");
        assert!(
            output.status.success(),
            "vtysh --dryrun -f dist/frr/{file}: {}{}",
            String::from_utf8_lossy(&output.stdout).trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
}
