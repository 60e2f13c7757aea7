//! The CLI's side of the admin API: one request, one answer, on the
//! controller's socket.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::Path,
};

use anyhow::{bail, Context as _};

use super::protocol::{too_large, Request, Response, IO_TIMEOUT, MAX_REQUEST_BYTES};

/// What the CLI says when the controller hung up without a whole answer.
const CLOSED: &str =
    "the controller closed the connection without answering (did it stop or crash? see its log)";

/// Sends `request` to the controller at `socket` and returns its data.
pub fn call(socket: &Path, request: &Request) -> anyhow::Result<serde_json::Value> {
    let mut line = serde_json::to_string(request)?;
    line.push('\n');
    if line.len() as u64 > MAX_REQUEST_BYTES {
        bail!("{}", too_large());
    }
    let mut stream = UnixStream::connect(socket).with_context(|| {
        format!(
            "no lb controller answers on {}; start one with `sudo lb run --iface <dev>` (or pass its --name or --socket; the socket is root-only)",
            socket.display()
        )
    })?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    stream.write_all(line.as_bytes()).map_err(lost)?;
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .map_err(lost)?;
    if !answer.ends_with('\n') {
        bail!(CLOSED);
    }
    let response: Response = serde_json::from_str(&answer)
        .with_context(|| format!("garbled answer from the controller: {answer:?}"))?;
    if !response.ok {
        bail!(
            "{}",
            response
                .error
                .unwrap_or_else(|| "the controller refused".into())
        );
    }
    Ok(response.data)
}

/// Why talking to the controller failed, in the CLI's words.
fn lost(error: std::io::Error) -> anyhow::Error {
    use std::io::ErrorKind;
    match error.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => anyhow::anyhow!(
            "the controller did not answer within {}: it may be busy with other connections or stuck; see its log",
            crate::duration::format(IO_TIMEOUT)
        ),
        ErrorKind::BrokenPipe | ErrorKind::ConnectionReset | ErrorKind::UnexpectedEof => {
            anyhow::anyhow!(CLOSED)
        }
        _ => anyhow::Error::new(error).context("talking to the controller"),
    }
}

#[cfg(test)]
mod tests {
    use std::{io::Read as _, os::unix::net::UnixListener, path::PathBuf};

    use super::*;
    use crate::desired::options::VipOptions;

    /// A socket path of its own for each test, removed on drop.
    struct Socket(PathBuf);

    impl Socket {
        fn new(name: &str) -> Self {
            let path =
                std::env::temp_dir().join(format!("lb-api-{}-{name}.sock", std::process::id()));
            let _ = std::fs::remove_file(&path);
            Self(path)
        }
    }

    impl Drop for Socket {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// A controller that reads the request line, writes `answer` and hangs up.
    fn dying_controller(socket: &Socket, answer: &'static [u8]) -> std::thread::JoinHandle<()> {
        let listener = UnixListener::bind(&socket.0).unwrap();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut byte = [0];
            while stream.read_exact(&mut byte).is_ok() && byte[0] != b'\n' {}
            stream.write_all(answer).unwrap();
        })
    }

    #[test]
    fn a_controller_that_hangs_up_without_a_whole_answer_is_reported_as_such() {
        for (name, answer) in [("silent", &b""[..]), ("cut", b"{\"ok\":tr")] {
            let socket = Socket::new(name);
            let controller = dying_controller(&socket, answer);
            let error = call(&socket.0, &Request::Status).unwrap_err();
            assert_eq!(error.to_string(), CLOSED, "{name}");
            controller.join().unwrap();
        }
    }

    #[test]
    fn a_request_over_the_limit_is_refused_before_it_is_sent() {
        let mut options = VipOptions::default();
        options.health.path = format!("/{}", "a".repeat(MAX_REQUEST_BYTES as usize));
        let request = Request::VipAdd {
            vip: "192.0.2.100:80/tcp".parse().unwrap(),
            options,
        };
        let socket = Socket::new("large");
        let error = call(&socket.0, &request).unwrap_err();
        assert_eq!(error.to_string(), "request too large (over 64 KiB)");
    }
}
