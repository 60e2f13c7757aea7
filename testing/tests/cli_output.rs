//! The CLI's output to a reader that stops early: `lb … | head -1` ends
//! lb quietly, the way a Unix filter ends, instead of a panic.

use std::{
    io::Read as _,
    os::unix::process::ExitStatusExt as _,
    process::{Command, Stdio},
};

use lb_testing::lb_exe;

#[test]
fn a_closed_pipe_ends_a_command_without_a_panic() {
    for args in [&["completions", "bash"][..], &["man"]] {
        let mut child = Command::new(lb_exe())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Read one byte, as `head -c1` would, and go.
        let mut stdout = child.stdout.take().unwrap();
        let mut first = [0u8; 1];
        stdout.read_exact(&mut first).unwrap();
        drop(stdout);
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
        let quiet = output.status.success() || output.status.signal() == Some(libc::SIGPIPE);
        assert!(quiet, "{args:?}: {:?}", output.status);
    }
}
