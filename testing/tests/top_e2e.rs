//! `lb top` under a pseudo-terminal (util-linux `script`): it shows the
//! VIP and worker rows within 80 columns, refreshes, and quits on q.
//! Needs root.

use std::{
    io::{Read as _, Write as _},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use lb_testing::{lb_exe, rig::Rig, wait::wait_until};

const VIP: &str = "192.0.2.100:80/tcp";
/// Each refresh homes the cursor and clears the screen (crossterm).
const REFRESH: &str = "\x1b[1;1H\x1b[2J";

/// Runs `lb top` under a pseudo-terminal until it has refreshed three
/// times, presses q; returns what it showed last, after checking it quit
/// cleanly.
fn run_top(rig: &Rig) -> String {
    let socket = rig.lb.state_file().with_extension("sock");
    let top = format!(
        "{} top --interval 300ms --pin-dir {} --socket {}",
        lb_exe(),
        rig.lb.pin_dir().display(),
        socket.display()
    );
    let mut child = Command::new("script")
        .args(["-qfec", &top, "/dev/null"])
        .env("COLUMNS", "80")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("script (util-linux)");
    let shown = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let (mut stdout, shown) = (child.stdout.take().unwrap(), shown.clone());
        std::thread::spawn(move || {
            let mut buffer = [0; 4096];
            while let Ok(n @ 1..) = stdout.read(&mut buffer) {
                shown.lock().unwrap().extend_from_slice(&buffer[..n]);
            }
        })
    };
    wait_until(Duration::from_secs(10), "refreshed 3 times", || {
        let refreshes = String::from_utf8_lossy(&shown.lock().unwrap())
            .matches(REFRESH)
            .count();
        if refreshes >= 3 {
            Ok(())
        } else {
            Err(format!("{refreshes} refreshes"))
        }
    });
    child.stdin.as_mut().unwrap().write_all(b"q").unwrap();
    let status = wait_until(Duration::from_secs(5), "lb top quit on q", || {
        child.try_wait()
    });
    reader.join().unwrap();
    let output = String::from_utf8_lossy(&shown.lock().unwrap()).into_owned();
    assert!(status.success(), "{output}");
    let last = output.rsplit(REFRESH).next().unwrap().to_owned();
    for line in last.lines() {
        assert!(
            line.chars().count() <= 80,
            "wider than 80 columns: {line:?}"
        );
    }
    last
}

#[test]
fn lb_top_shows_the_vips_refreshes_and_quits_on_q_with_or_without_controller() {
    lb_testing::needs_root!();
    let mut rig = Rig::new(lb_exe().as_ref(), 2, &[]).unwrap();
    rig.add_vip_with_workers(VIP, &[]).unwrap();
    for last in [run_top(&rig), {
        rig.lb.stop().unwrap();
        run_top(&rig)
    }] {
        assert!(last.contains(VIP), "{last}");
        for worker in &rig.workers {
            assert!(last.contains(&worker.ipv4.to_string()), "{last}");
        }
        assert!(last.contains("up"), "{last}");
    }
    assert!(run_top(&rig).contains("controller not answering"));
}
