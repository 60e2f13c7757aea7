//! `lb top` under a pseudo-terminal (util-linux `script`): it shows the
//! VIP and worker rows within 80 columns, refreshes, and quits on q.
//! Needs root.

use std::{
    io::{Read as _, Write as _},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use lb_testing::{lb_exe, rig::Rig};

const VIP: &str = "192.0.2.100:80/tcp";

/// Runs `lb top` under a pseudo-terminal for 1.5 s, presses q; returns
/// what it showed last, after checking it refreshed and quit cleanly.
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
    std::thread::sleep(Duration::from_millis(1500));
    child.stdin.as_mut().unwrap().write_all(b"q").unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "lb top did not quit on q"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut output = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut output)
        .unwrap();
    assert!(status.success(), "{output}");
    // Each refresh homes the cursor and clears the screen (crossterm).
    let refresh = "\x1b[1;1H\x1b[2J";
    let refreshes = output.matches(refresh).count();
    assert!(refreshes >= 3, "refreshed {refreshes} times: {output}");
    let last = output.rsplit(refresh).next().unwrap().to_owned();
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
