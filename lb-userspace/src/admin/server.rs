//! The controller's side of the admin API: a socket only root can reach,
//! at most a fixed number of connections at once (a new one takes the
//! place of one that has not sent its request), each one request read
//! whole within a time limit and answered.

use std::{
    future::Future,
    os::unix::fs::{DirBuilderExt as _, PermissionsExt as _},
    path::Path,
};

use anyhow::{bail, Context as _};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncRead, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
};

use super::protocol::{
    too_large, Deadline, Request, Response, Sent, IO_TIMEOUT, MAX_REQUEST_BYTES, REQUEST_TIMEOUT,
};
use crate::net::listen::{Gate, Marker};

/// Answers admin requests with `handle`, at most `cap` connections at
/// once. `handle` gets each request with the deadline its client sent,
/// and must refuse it once that has passed.
pub async fn serve<F, Fut>(listener: UnixListener, cap: usize, handle: F)
where
    F: Fn(Request, Option<Deadline>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Response> + Send + 'static,
{
    let mut gate = Gate::new("admin socket", cap);
    loop {
        // Every peer is root on this host: there is no address to share
        // slots by, only connections with and without a request.
        let ((stream, _), slot) = gate.next(|| listener.accept(), |_| None).await;
        let handle = handle.clone();
        let marker = slot.marker();
        tokio::spawn(slot.hold(answer(stream, marker, handle)));
    }
}

/// Reads one request (size- and time-limited), carries it out, answers.
async fn answer<Fut: Future<Output = Response>>(
    stream: UnixStream,
    marker: Marker,
    handle: impl Fn(Request, Option<Deadline>) -> Fut,
) {
    let (read, mut write) = stream.into_split();
    let response = match read_request(read).await {
        // Closed for room already: carry out nothing its client can't
        // hear about.
        Ok(_) if !marker.busy() => return,
        Ok(Sent { request, deadline }) => handle(request, deadline).await,
        Err(error) => Response::refusal(error),
    };
    if let Ok(mut text) = serde_json::to_string(&response) {
        text.push('\n');
        let _ = tokio::time::timeout(IO_TIMEOUT, write.write_all(text.as_bytes())).await;
    }
}

/// Reads one request: a JSON line of at most [`MAX_REQUEST_BYTES`] within
/// [`REQUEST_TIMEOUT`]; or why not, as the answer should say it.
async fn read_request(read: impl AsyncRead + Unpin) -> Result<Sent, String> {
    let mut line = String::new();
    // One byte over the limit tells a request that is too large from one
    // that fits exactly.
    let mut reader = BufReader::new(read.take(MAX_REQUEST_BYTES + 1));
    match tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line)).await {
        Err(_) => Err(format!(
            "timed out waiting for the request: send it within {} of connecting",
            crate::duration::format(REQUEST_TIMEOUT)
        )),
        Ok(Err(error)) => Err(format!("reading the request: {error}")),
        Ok(Ok(_)) if line.len() as u64 > MAX_REQUEST_BYTES => Err(too_large()),
        Ok(Ok(_)) => Sent::parse(&line).map_err(|error| format!("bad request: {error}")),
    }
}

/// Makes sure no other controller owns the socket path; removes a stale
/// socket left by one that died.
pub fn claim_socket(path: &Path) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| d.exists()) {
        check_socket_dir(dir)?;
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        bail!(
            "another lb controller is running on {}; stop it, or give this instance its own --name (or --socket and --pin-dir)",
            path.display()
        );
    }
    if path.exists() {
        std::fs::remove_file(path)
            .with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    Ok(())
}

/// Binds the admin socket so that only root can connect (0600, in a 0700
/// directory when lb creates it).
pub fn bind_socket(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.exists()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    if let Some(dir) = path.parent() {
        check_socket_dir(dir)?;
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("binding the admin socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {} to root", path.display()))?;
    Ok(listener)
}

/// Refuses a socket directory others could write to: they could replace
/// the socket with their own and receive the CLI's commands.
fn check_socket_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let meta = std::fs::metadata(dir).with_context(|| format!("inspecting {}", dir.display()))?;
    let me = crate::kernel::private::euid();
    if meta.mode() & 0o022 != 0 || meta.uid() != me {
        bail!(
            "{} is writable by others or not ours (mode {:o}, owner {}): anyone who can write there could replace lb's admin socket; pass a --socket in a directory only root can write, such as /run/lb",
            dir.display(),
            meta.mode() & 0o7777,
            meta.uid()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> Result<Sent, String> {
        Ok(Sent {
            request: Request::Status,
            deadline: None,
        })
    }

    #[tokio::test]
    async fn requests_are_read_whole_or_refused_with_why() {
        let read = read_request(&b"{\"cmd\":\"status\"}\n"[..]).await;
        assert_eq!(read, status());
        // Exactly the limit, newline included, is still a request.
        let mut exact = "{\"cmd\":\"status\"}".to_owned();
        exact.push_str(&" ".repeat(MAX_REQUEST_BYTES as usize - exact.len() - 1));
        exact.push('\n');
        assert_eq!(read_request(exact.as_bytes()).await, status());
        let over = format!(" {exact}");
        assert_eq!(read_request(over.as_bytes()).await, Err(too_large()));
        let huge = vec![b'{'; 200_000];
        assert_eq!(
            read_request(&huge[..]).await,
            Err("request too large (over 64 KiB)".to_owned())
        );
        let garbage = read_request(&b"{\"cmd\":\"reboot\"}\n"[..]).await;
        assert!(garbage.unwrap_err().starts_with("bad request: "));
    }

    #[tokio::test]
    async fn a_client_that_sends_nothing_is_refused_after_the_request_timeout() {
        let (_client, server) = tokio::io::duplex(64);
        let error = read_request(server).await.unwrap_err();
        assert_eq!(
            error,
            "timed out waiting for the request: send it within 2s of connecting"
        );
    }
}
