//! Changes in force reach the state file even when it can't be written
//! at first: a full disk fails the save, lb says so, retries, and the
//! change survives a restart once there is room. Needs root.

use std::{
    fs,
    io::Write as _,
    net::{Ipv4Addr, Ipv6Addr},
    path::Path,
    time::Duration,
};

use lb_testing::{
    lb_exe,
    testbed::{LbProcess, Testbed},
    wait::wait_until,
};

const VIP: &str = "192.0.2.100:80/tcp";

/// Writes zeros to `path` until the file system is full.
fn fill(path: &Path) {
    let mut filler = fs::File::create(path).unwrap();
    let chunk = vec![0u8; 4096];
    loop {
        match filler.write_all(&chunk).and_then(|()| filler.sync_all()) {
            Ok(()) => {}
            Err(error) if error.raw_os_error() == Some(libc::ENOSPC) => return,
            Err(error) => panic!("filling {}: {error}", path.display()),
        }
    }
}

fn status(lb: &LbProcess) -> serde_json::Value {
    serde_json::from_str(&lb.cli_ok(&["status", "-o", "json"]).unwrap()).unwrap()
}

#[test]
fn a_change_that_could_not_be_saved_is_saved_once_there_is_room() {
    lb_testing::needs_root!();
    let mut bed = Testbed::new().unwrap();
    let host = bed
        .add_host(
            "lb",
            Ipv4Addr::new(192, 0, 2, 2),
            "2001:db8::2".parse::<Ipv6Addr>().unwrap(),
        )
        .unwrap();
    // The state file, socket and log live in the testbed's socket
    // directory: a small file system of its own there can be filled.
    let dir = bed.socket("lb").parent().unwrap().to_owned();
    bed.small_tmpfs(&dir, 256 * 1024).unwrap();
    let mut lb = LbProcess::start(Path::new(lb_exe()), &mut bed, &host, "lb", &[]).unwrap();
    let filler = dir.join("filler");
    fill(&filler);

    let refused = lb.cli(&["vip", "add", VIP, "--health", "none"]).unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("the change is in force but was not saved"),
        "{stderr}"
    );
    assert!(stderr.contains("lb retries every second"), "{stderr}");
    assert!(
        lb.cli_ok(&["vip", "list"]).unwrap().contains(VIP),
        "in force"
    );
    let lagging = status(&lb);
    assert!(lagging["unsaved_since"].is_u64(), "{lagging}");
    let error = lagging["save_error"].as_str().unwrap_or_default();
    assert!(error.contains("No space left on device"), "{lagging}");

    fs::remove_file(&filler).unwrap();
    wait_until(Duration::from_secs(10), "the state saved", || {
        status(&lb)["unsaved_since"].is_null()
    });
    let saved = fs::read_to_string(&lb.paths().state_file).unwrap();
    assert!(saved.contains(VIP), "{saved}");

    lb.stop().unwrap();
    let lb = LbProcess::start(Path::new(lb_exe()), &mut bed, &host, "lb", &[]).unwrap();
    assert!(
        lb.cli_ok(&["vip", "list"]).unwrap().contains(VIP),
        "kept across a restart"
    );
}
