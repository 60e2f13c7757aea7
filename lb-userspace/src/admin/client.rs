//! The CLI's side of the admin API: one request, one answer, on the
//! controller's socket. Each request carries a deadline ([`IO_TIMEOUT`]
//! from now), after which the controller refuses it, so when the answer
//! does not come, the CLI can say whether the change may still be made.

use std::{
    io::{Read as _, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use super::protocol::{
    too_large, Deadline, Request, Response, Sent, ANSWER_GRACE, DEADLINE_FIELD, IO_TIMEOUT,
    MAX_REQUEST_BYTES,
};
use crate::duration::format;

/// What the CLI says when the controller hung up without a whole answer
/// to a request that changes nothing.
const CLOSED: &str =
    "the controller closed the connection without answering (did it stop or crash? see its log)";

/// Why a request got no answer, in the CLI's words: each says whether the
/// change may have been made, and how to check.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Nothing listens on the socket.
    #[error("no lb controller answers on {}; start one with `sudo lb run --iface <dev>` (or pass its --name or --socket; the socket is root-only)", .socket.display())]
    NoController {
        /// The socket.
        socket: PathBuf,
        /// Why connecting failed.
        #[source]
        error: std::io::Error,
    },
    /// The request is larger than the controller reads.
    #[error("{}", too_large())]
    TooLarge,
    /// The controller refused the request, in its words.
    #[error("{0}")]
    Refused(String),
    /// The controller did not take the whole request in time: it can't
    /// carry it out.
    #[error("the controller did not take the request within {} (is it stopped or stuck? see its log); nothing was changed", format(*.waited))]
    NotTaken {
        /// How long the CLI tried.
        waited: Duration,
    },
    /// The controller closed the connection before it had the whole
    /// request: it can't carry it out.
    #[error("the controller closed the connection before taking the request (did it stop or crash? see its log); nothing was changed")]
    ClosedBeforeTaking,
    /// The controller closed the connection without answering a request
    /// that changes nothing.
    #[error("{CLOSED}")]
    Closed,
    /// The controller closed the connection without answering a change:
    /// it may have made and saved it first.
    #[error("{CLOSED}; it may have made and saved the change before: check with `{check}` before retrying")]
    ClosedAfterChange {
        /// The listing that shows the change.
        check: &'static str,
    },
    /// No answer to a request that changes nothing.
    #[error("the controller did not answer within {}: it may be stopped, stuck or busy; see its log", format(*.waited))]
    NoAnswer {
        /// How long the CLI waited.
        waited: Duration,
    },
    /// No answer to a change sent with a deadline: the controller made it
    /// before the deadline, or refuses it from then on.
    #[error("the controller did not answer within {} (is it stopped or stuck? see its log), so lb stopped waiting. The controller refuses a request it takes later than {} after it was sent, so this change was either made by then or will not be: check with `{check}` before retrying", format(*.waited), format(IO_TIMEOUT))]
    NoAnswerByDeadline {
        /// How long the CLI waited.
        waited: Duration,
        /// The listing that shows the change.
        check: &'static str,
    },
    /// No answer to a change sent without a deadline, to a controller that
    /// takes none: it may still make it.
    #[error("the controller did not answer within {} (is it stopped or stuck? see its log); it is too old to refuse requests whose client stopped waiting, so it may still make this change later: check with `{check}` before retrying", format(*.waited))]
    NoAnswerMayStillApply {
        /// How long the CLI waited.
        waited: Duration,
        /// The listing that shows the change.
        check: &'static str,
    },
    /// The answer is not a response.
    #[error("garbled answer from the controller: {0:?}")]
    Garbled(String),
    /// Talking to the controller failed otherwise.
    #[error("talking to the controller: {0}")]
    Io(#[source] std::io::Error),
}

/// Sends `request` to the controller at `socket` and returns its data.
pub fn call(socket: &Path, request: &Request) -> anyhow::Result<serde_json::Value> {
    let sent = Sent {
        request: request.clone(),
        deadline: Some(Deadline::after(IO_TIMEOUT)),
    };
    match exchange(socket, &sent) {
        // A controller older than deadlines refuses the field before it
        // reads the request, so asking again without it is safe.
        Err(CallError::Refused(error))
            if error.contains(&format!("unknown field `{DEADLINE_FIELD}`")) =>
        {
            let sent = Sent {
                deadline: None,
                ..sent
            };
            Ok(exchange(socket, &sent)?)
        }
        answer => Ok(answer?),
    }
}

/// One request, one answer, within the deadline and [`ANSWER_GRACE`]
/// (or [`IO_TIMEOUT`] without a deadline).
fn exchange(socket: &Path, sent: &Sent) -> Result<serde_json::Value, CallError> {
    let line = sent
        .to_line()
        .map_err(|error| CallError::Io(error.into()))?;
    if line.len() as u64 > MAX_REQUEST_BYTES {
        return Err(CallError::TooLarge);
    }
    let started = Instant::now();
    let patience = sent
        .deadline
        .map_or(IO_TIMEOUT, |deadline| deadline.remaining() + ANSWER_GRACE);
    let until = started + patience;
    let left = || {
        until
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    let waited = || round(started.elapsed());
    let not_taken = || CallError::NotTaken { waited: waited() };
    let mut stream = connect(socket, patience).map_err(|error| match error.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => not_taken(),
        _ => CallError::NoController {
            socket: socket.to_owned(),
            error,
        },
    })?;
    stream
        .set_write_timeout(Some(left()))
        .map_err(CallError::Io)?;
    // Until the whole line is written the controller has no request: a
    // failure here changed nothing.
    stream
        .write_all(line.as_bytes())
        .map_err(|error| match error.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => not_taken(),
            _ => CallError::ClosedBeforeTaking,
        })?;
    let mut answer = Vec::new();
    let mut buffer = vec![0; 64 * 1024];
    let no_answer = || {
        let waited = waited();
        let check = sent.request.listing();
        match (sent.request.changes_state(), sent.deadline) {
            (false, _) => CallError::NoAnswer { waited },
            (true, Some(_)) => CallError::NoAnswerByDeadline { waited, check },
            (true, None) => CallError::NoAnswerMayStillApply { waited, check },
        }
    };
    loop {
        if Instant::now() >= until {
            return Err(no_answer());
        }
        stream
            .set_read_timeout(Some(left()))
            .map_err(CallError::Io)?;
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => {
                answer.extend_from_slice(&buffer[..n]);
                // The answer is one line.
                if buffer[..n].contains(&b'\n') {
                    break;
                }
            }
            Err(error) => match error.kind() {
                std::io::ErrorKind::Interrupted => {}
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                    return Err(no_answer())
                }
                std::io::ErrorKind::ConnectionReset => break,
                _ => return Err(CallError::Io(error)),
            },
        }
    }
    if !answer.ends_with(b"\n") {
        return Err(if sent.request.changes_state() {
            CallError::ClosedAfterChange {
                check: sent.request.listing(),
            }
        } else {
            CallError::Closed
        });
    }
    let answer = String::from_utf8_lossy(&answer);
    let response: Response = serde_json::from_str(&answer)
        .map_err(|_| CallError::Garbled(answer.clone().into_owned()))?;
    if !response.ok {
        return Err(CallError::Refused(
            response
                .error
                .unwrap_or_else(|| "the controller refused".into()),
        ));
    }
    Ok(response.data)
}

/// `waited` as people read it: to the second, or to the tenth below one.
fn round(waited: Duration) -> Duration {
    let millis = waited.as_millis() as u64;
    if millis >= 1000 {
        Duration::from_secs((millis + 500) / 1000)
    } else {
        Duration::from_millis((millis + 50) / 100 * 100)
    }
}

/// Connects to `socket`, giving up after `timeout`: a controller that
/// takes no connections (stopped, or with its backlog full) keeps a plain
/// connect waiting, and the send timeout is what bounds that wait.
fn connect(socket: &Path, timeout: Duration) -> std::io::Result<UnixStream> {
    use rustix::net::{sockopt, AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    sockopt::set_socket_timeout(&fd, sockopt::Timeout::Send, Some(timeout))?;
    rustix::net::connect(&fd, &SocketAddrUnix::new(socket)?)?;
    Ok(UnixStream::from(fd))
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
        let answers = vec![answer.to_vec()];
        let controller = controller(socket, answers);
        std::thread::spawn(move || drop(controller.join().unwrap()))
    }

    /// A controller that answers one connection after another, each with
    /// the next of `answers` once it has read the request line; returns
    /// the lines it read.
    fn controller(socket: &Socket, answers: Vec<Vec<u8>>) -> std::thread::JoinHandle<Vec<String>> {
        let listener = UnixListener::bind(&socket.0).unwrap();
        std::thread::spawn(move || {
            let mut lines = Vec::new();
            for answer in answers {
                let (mut stream, _) = listener.accept().unwrap();
                let mut line = Vec::new();
                let mut byte = [0];
                while stream.read_exact(&mut byte).is_ok() && byte[0] != b'\n' {
                    line.push(byte[0]);
                }
                lines.push(String::from_utf8(line).unwrap());
                stream.write_all(&answer).unwrap();
            }
            lines
        })
    }

    fn drain() -> Request {
        Request::BackendDrain {
            vip: "192.0.2.100:80/tcp".parse().unwrap(),
            worker: "192.0.2.11".parse().unwrap(),
            drain: true,
        }
    }

    #[test]
    fn a_controller_that_hangs_up_on_a_change_may_have_made_it() {
        let socket = Socket::new("change");
        let controller = dying_controller(&socket, b"");
        let error = call(&socket.0, &drain()).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!("{CLOSED}; it may have made and saved the change before: check with `lb backend list` before retrying")
        );
        controller.join().unwrap();
    }

    #[test]
    fn requests_carry_a_deadline_and_go_again_without_to_an_older_controller() {
        let socket = Socket::new("older");
        let refusal = format!(
            "{{\"ok\":false,\"error\":\"bad request: unknown field `{DEADLINE_FIELD}`, expected `vip`\"}}\n"
        );
        let answers = vec![refusal.into_bytes(), b"{\"ok\":true,\"data\":7}\n".to_vec()];
        let controller = controller(&socket, answers);
        assert_eq!(call(&socket.0, &drain()).unwrap(), 7);
        let lines = controller.join().unwrap();
        assert!(lines[0].contains(DEADLINE_FIELD), "{lines:?}");
        let again: Request = serde_json::from_str(&lines[1]).unwrap();
        assert_eq!(again, drain());
    }

    #[test]
    fn a_refusal_is_reported_in_the_controllers_words() {
        let socket = Socket::new("refused");
        let answers = vec![b"{\"ok\":false,\"error\":\"no such VIP\"}\n".to_vec()];
        let controller = controller(&socket, answers);
        let error = call(&socket.0, &drain()).unwrap_err();
        assert_eq!(error.to_string(), "no such VIP");
        controller.join().unwrap();
    }

    #[test]
    fn no_controller_is_said_plainly() {
        let socket = Socket::new("none");
        let error = call(&socket.0, &Request::Status).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("no lb controller answers on "),
            "{error}"
        );
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
