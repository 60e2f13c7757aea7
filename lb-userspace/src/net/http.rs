//! HTTP through hyper: the server the load report and metrics endpoints
//! share, and the client health checks and load probes use.
//!
//! The server answers one request per connection (`Connection: close`, as
//! workers' scripts that read to the end of the answer expect) and limits
//! what a peer may hold: the head within [`HEADER_TIMEOUT`] and
//! [`MAX_HEAD`] bytes of at most [`MAX_HEADERS`] headers (else 431, or the
//! connection is closed), the body within [`BODY_TIMEOUT`] and
//! [`MAX_BODY`] bytes (else 408 or 413), the whole connection within
//! [`CONNECTION_TIMEOUT`]; each connection runs on its own task, so a
//! stalled one delays no other, and when every slot is taken a new peer
//! gets the place of one that has not sent its request
//! ([`Gate`]). The client fetches one page within a
//! deadline and refuses answers over [`MAX_RESPONSE`] bytes.

use std::{convert::Infallible, future::Future, net::SocketAddr, sync::Arc, time::Duration};

use http_body_util::{BodyExt as _, Empty, Full, LengthLimitError, Limited};
use hyper::{
    body::{Body as _, Bytes, Incoming},
    header::{CONNECTION, CONTENT_TYPE, HOST, TRANSFER_ENCODING, USER_AGENT},
    Request, Response, StatusCode, Uri,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};

use crate::net::listen::{Gate, Marker};

/// Most bytes in a request head: request line, headers and blank line.
pub const MAX_HEAD: usize = 8 * 1024;
/// Most header lines in a request head.
pub const MAX_HEADERS: usize = 64;
/// Most bytes in a request body.
pub const MAX_BODY: usize = 64 * 1024;
/// Most bytes in a response head, and in a response body, that [`get`]
/// reads.
pub const MAX_RESPONSE: usize = 64 * 1024;
/// How long a peer may take to send a request head once connected.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a peer may take to send the body after the head.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection may last in all, the answer's sending included:
/// a peer that never reads its answer frees its slot then.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// What a handler answers: a status and a text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The status code.
    pub status: StatusCode,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// The body; none with 204.
    pub body: String,
}

impl Answer {
    /// A plain-text answer.
    pub fn text(status: StatusCode, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/plain",
            body: body.into(),
        }
    }

    fn into_response(self) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(Bytes::from(self.body)));
        *response.status_mut() = self.status;
        if self.status != StatusCode::NO_CONTENT {
            response.headers_mut().insert(
                CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(self.content_type),
            );
        }
        response
    }
}

/// How long a peer may take, per connection.
#[derive(Clone, Copy, Debug)]
struct Timeouts {
    header: Duration,
    body: Duration,
    connection: Duration,
}

impl Timeouts {
    const SERVED: Self = Self {
        header: HEADER_TIMEOUT,
        body: BODY_TIMEOUT,
        connection: CONNECTION_TIMEOUT,
    };
}

/// Serves `listener` until the task is dropped, at most `cap` connections
/// at once (the listener is called `what` in logs). `handler` gets each
/// whole request, its body read, and the peer's address.
pub async fn serve<H, Fut>(listener: TcpListener, what: &'static str, cap: usize, handler: H)
where
    H: Fn(Request<Bytes>, SocketAddr) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Answer> + Send + 'static,
{
    serve_within(listener, what, cap, Timeouts::SERVED, handler).await;
}

async fn serve_within<H, Fut>(
    listener: TcpListener,
    what: &'static str,
    cap: usize,
    timeouts: Timeouts,
    handler: H,
) where
    H: Fn(Request<Bytes>, SocketAddr) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Answer> + Send + 'static,
{
    let handler = Arc::new(handler);
    let mut gate = Gate::per_address(what, cap);
    loop {
        let ((stream, from), slot) = gate
            .next(
                || listener.accept(),
                |(_, from): &(TcpStream, SocketAddr)| Some(from.ip().to_canonical()),
            )
            .await;
        let handler = handler.clone();
        let marker = slot.marker();
        tokio::spawn(slot.hold(connection(stream, from, timeouts, marker, handler)));
    }
}

async fn connection<H, Fut>(
    stream: TcpStream,
    from: SocketAddr,
    timeouts: Timeouts,
    marker: Marker,
    handler: Arc<H>,
) where
    H: Fn(Request<Bytes>, SocketAddr) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Answer> + Send + 'static,
{
    let service = hyper::service::service_fn(move |request| {
        let handler = handler.clone();
        let marker = marker.clone();
        async move {
            let answer = match read_body(request, timeouts.body).await {
                // Once the whole request is in, the connection is no
                // longer one the gate may close for room; if it already
                // was, the answer could not be sent, so nothing is done.
                Ok(_) if !marker.busy() => Answer::text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "closed to make room for newer connections",
                ),
                Ok(request) => handler(request, from).await,
                Err(refusal) => refusal,
            };
            if !answer.status.is_success() {
                tracing::debug!(
                    "HTTP request from {from} refused: {} {}",
                    answer.status,
                    answer.body
                );
            }
            Ok::<_, Infallible>(answer.into_response())
        }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header)
        .max_header_size(MAX_HEAD)
        .max_headers(MAX_HEADERS)
        .keep_alive(false)
        // A client may shut its sending side once the request is out.
        .half_close(true)
        .serve_connection(TokioIo::new(stream), service);
    match tokio::time::timeout(timeouts.connection, served).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::debug!("HTTP connection from {from}: {error}"),
        Err(_) => tracing::debug!(
            "HTTP connection from {from} cut after {}",
            crate::duration::format(timeouts.connection)
        ),
    }
}

/// Reads a request's body within the limits, or says why not.
async fn read_body(
    request: Request<Incoming>,
    timeout: Duration,
) -> Result<Request<Bytes>, Answer> {
    // Content-Length alone says how much is coming, so an oversized body
    // is refused before any of it is read.
    if request.headers().contains_key(TRANSFER_ENCODING) {
        return Err(Answer::text(
            StatusCode::LENGTH_REQUIRED,
            "Transfer-Encoding is not supported: send the body with a Content-Length header",
        ));
    }
    if request.body().size_hint().lower() > MAX_BODY as u64 {
        return Err(body_too_large());
    }
    let (parts, body) = request.into_parts();
    match tokio::time::timeout(timeout, Limited::new(body, MAX_BODY).collect()).await {
        Ok(Ok(body)) => Ok(Request::from_parts(parts, body.to_bytes())),
        Ok(Err(error)) if error.is::<LengthLimitError>() => Err(body_too_large()),
        Ok(Err(_)) => Err(Answer::text(
            StatusCode::BAD_REQUEST,
            "the connection closed before the whole body arrived: send as many bytes as Content-Length says",
        )),
        Err(_) => Err(Answer::text(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the body did not arrive within {}: send it with the head",
                crate::duration::format(timeout)
            ),
        )),
    }
}

fn body_too_large() -> Answer {
    Answer::text(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the body is longer than {MAX_BODY} bytes: send a smaller one"),
    )
}

/// A page [`get`] fetched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page {
    /// The status code.
    pub status: u16,
    /// The body, de-chunked.
    pub body: Bytes,
}

/// Why [`get`] got no page. Health checks show the message alone, so each
/// says what happened and what to look at.
#[derive(Debug, thiserror::Error)]
pub enum GetError {
    /// The path can't be sent in a request line.
    #[error("path `{0}` is not valid: start it with / and percent-encode spaces and other special characters")]
    BadPath(String),
    /// Connecting failed.
    #[error("cannot connect to {addr} ({error}): check that it is up and listens on that port")]
    Connect {
        /// Where to.
        addr: SocketAddr,
        /// Why not.
        error: std::io::Error,
    },
    /// No whole answer before the deadline.
    #[error("no answer within {}: check that the worker is up and speaks HTTP, or allow more time", crate::duration::format(*.0))]
    Timeout(Duration),
    /// The head or the body is larger than [`MAX_RESPONSE`].
    #[error("the response is longer than {MAX_RESPONSE} bytes: point the check at a smaller page")]
    ResponseTooLarge,
    // hyper's error goes in the message rather than a source because health
    // checks report `to_string()` alone.
    /// Not an HTTP/1.x answer, or one cut short.
    #[error("the answer is not a whole HTTP/1.x response ({0}): check that the port serves HTTP")]
    Http(String),
}

impl From<hyper::Error> for GetError {
    fn from(error: hyper::Error) -> Self {
        if error.is_parse_too_large() {
            Self::ResponseTooLarge
        } else {
            Self::Http(describe(&error))
        }
    }
}

/// An error with its causes, `error: cause: cause`.
fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// GETs `path` from `addr` (with `Host: addr`), connection, request and
/// whole response within `timeout`. Any status is `Ok`; judging it is the
/// caller's.
pub async fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<Page, GetError> {
    let uri: Uri = path
        .parse()
        .ok()
        .filter(|uri: &Uri| uri.scheme().is_none() && path.starts_with('/'))
        .ok_or_else(|| GetError::BadPath(path.to_owned()))?;
    tokio::time::timeout(timeout, exchange(addr, uri))
        .await
        .map_err(|_| GetError::Timeout(timeout))?
}

async fn exchange(addr: SocketAddr, uri: Uri) -> Result<Page, GetError> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|error| GetError::Connect { addr, error })?;
    let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
        .max_buf_size(MAX_RESPONSE)
        .handshake(TokioIo::new(stream))
        .await?;
    let request = Request::get(uri)
        .header(HOST, addr.to_string())
        .header(USER_AGENT, "lb-health")
        .header(CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|error| GetError::Http(error.to_string()))?;
    let fetch = async {
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|error| match error.downcast::<hyper::Error>() {
                Ok(error) => GetError::from(*error),
                Err(error) if error.is::<LengthLimitError>() => GetError::ResponseTooLarge,
                Err(error) => GetError::Http(describe(error.as_ref())),
            })?;
        Ok(Page {
            status,
            body: body.to_bytes(),
        })
    };
    // The connection is driven here rather than on a task of its own, so
    // that the deadline in `get` closes it too.
    tokio::pin!(fetch, connection);
    tokio::select! {
        page = &mut fetch => page,
        ended = &mut connection => {
            ended?;
            fetch.await
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// Short enough for tests, long enough for a loaded machine to send a
    /// request in time.
    const SHORT: Timeouts = Timeouts {
        header: Duration::from_millis(500),
        body: Duration::from_millis(500),
        connection: Duration::from_secs(3),
    };
    /// Longest any test waits for the server to act.
    const PATIENCE: Duration = Duration::from_secs(10);
    /// The test server's cap: one address holds a quarter of it.
    const CAP: usize = 16;

    /// A server on 127.0.0.1 whose handler echoes method, path and body.
    async fn server(timeouts: Timeouts) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve_within(
            listener,
            "test endpoint",
            CAP,
            timeouts,
            |request: Request<Bytes>, _| async move {
                if request.uri().path() == "/nothing" {
                    return Answer::text(StatusCode::NO_CONTENT, "");
                }
                let body = String::from_utf8_lossy(request.body()).into_owned();
                Answer::text(
                    StatusCode::OK,
                    format!("{} {} {body}", request.method(), request.uri()),
                )
            },
        ));
        addr
    }

    /// Sends `bytes`, then reads until the server closes (or [`PATIENCE`]
    /// runs out, which fails the test).
    async fn exchange_raw(addr: SocketAddr, bytes: &[u8]) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(bytes).await.unwrap();
        read_to_close(&mut stream).await
    }

    async fn read_to_close(stream: &mut TcpStream) -> String {
        let mut answer = Vec::new();
        tokio::time::timeout(PATIENCE, stream.read_to_end(&mut answer))
            .await
            .expect("the server closed the connection")
            .unwrap_or_default();
        String::from_utf8_lossy(&answer).into_owned()
    }

    fn status(answer: &str) -> u16 {
        answer
            .strip_prefix("HTTP/1.1 ")
            .or_else(|| answer.strip_prefix("HTTP/1.0 "))
            .and_then(|rest| rest.get(..3)?.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"))
    }

    #[tokio::test]
    async fn answers_one_request_and_closes() {
        let addr = server(SHORT).await;
        let answer = exchange_raw(
            addr,
            b"POST /load?x=1 HTTP/1.1\r\nHost: lb\r\nContent-Length: 11\r\n\r\n{\"load\":42}",
        )
        .await;
        assert_eq!(status(&answer), 200, "{answer}");
        let lower = answer.to_ascii_lowercase();
        assert!(lower.contains("\r\nconnection: close\r\n"), "{answer}");
        assert!(
            lower.contains("\r\ncontent-type: text/plain\r\n"),
            "{answer}"
        );
        assert!(
            answer.ends_with("\r\n\r\nPOST /load?x=1 {\"load\":42}"),
            "{answer}"
        );

        let answer = exchange_raw(addr, b"GET /nothing HTTP/1.1\r\nHost: lb\r\n\r\n").await;
        assert_eq!(status(&answer), 204, "{answer}");
        assert!(
            !answer.to_ascii_lowercase().contains("content-type"),
            "{answer}"
        );
    }

    #[tokio::test]
    async fn a_client_that_shuts_its_side_after_the_request_gets_its_answer() {
        let addr = server(SHORT).await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(b"GET /x HTTP/1.0\r\n\r\n").await.unwrap();
        stream.shutdown().await.unwrap();
        let answer = read_to_close(&mut stream).await;
        assert_eq!(status(&answer), 200, "{answer}");
    }

    #[tokio::test]
    async fn oversized_heads_get_431() {
        let addr = server(SHORT).await;
        let long = format!(
            "GET / HTTP/1.1\r\nHost: lb\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_HEAD)
        );
        assert_eq!(status(&exchange_raw(addr, long.as_bytes()).await), 431);
        let many = format!(
            "GET / HTTP/1.1\r\nHost: lb\r\n{}\r\n",
            "X: y\r\n".repeat(MAX_HEADERS)
        );
        assert_eq!(status(&exchange_raw(addr, many.as_bytes()).await), 431);
        let fits = format!(
            "GET / HTTP/1.1\r\nHost: lb\r\n{}\r\n",
            "X: y\r\n".repeat(MAX_HEADERS - 1)
        );
        assert_eq!(status(&exchange_raw(addr, fits.as_bytes()).await), 200);
    }

    #[tokio::test]
    async fn oversized_or_chunked_bodies_are_refused_unread() {
        let addr = server(SHORT).await;
        let announced = format!(
            "POST / HTTP/1.1\r\nHost: lb\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        let answer = exchange_raw(addr, announced.as_bytes()).await;
        assert_eq!(status(&answer), 413, "{answer}");
        assert!(
            answer.ends_with("the body is longer than 65536 bytes: send a smaller one"),
            "{answer}"
        );
        let chunked = b"POST / HTTP/1.1\r\nHost: lb\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        let answer = exchange_raw(addr, chunked).await;
        assert_eq!(status(&answer), 411, "{answer}");
        assert!(
            answer.contains("send the body with a Content-Length header"),
            "{answer}"
        );
    }

    #[tokio::test]
    async fn malformed_requests_get_400() {
        let addr = server(SHORT).await;
        for bytes in [
            &b"GET / HTTP/1.1\r\nNo colon here\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nab",
            b"GET / HTTP/1.1\r\nContent-Length: two\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
        ] {
            let answer = exchange_raw(addr, bytes).await;
            assert_eq!(status(&answer), 400, "{bytes:?}: {answer}");
        }
    }

    #[tokio::test]
    async fn a_head_trickled_slower_than_the_header_timeout_is_cut() {
        let addr = server(SHORT).await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let started = Instant::now();
        // One byte every 100 ms would take 2 s; the head has 500 ms.
        for byte in b"GET / HTTP/1.1\r\nHost: lb\r\n\r\n" {
            if stream.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            if started.elapsed() > PATIENCE {
                panic!("the server still reads after {PATIENCE:?}");
            }
        }
        // A server that waited for the whole head would have answered it.
        let answer = read_to_close(&mut stream).await;
        assert!(!answer.starts_with("HTTP/1.1 200"), "{answer}");
    }

    #[tokio::test]
    async fn an_idle_connection_is_closed_after_the_header_timeout() {
        let addr = server(SHORT).await;
        let mut silent = TcpStream::connect(addr).await.unwrap();
        assert_eq!(read_to_close(&mut silent).await, "");
    }

    #[tokio::test]
    async fn a_body_slower_than_the_body_timeout_gets_408() {
        let addr = server(SHORT).await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"POST / HTTP/1.1\r\nHost: lb\r\nContent-Length: 10\r\n\r\nab")
            .await
            .unwrap();
        let answer = read_to_close(&mut stream).await;
        assert_eq!(status(&answer), 408, "{answer}");
        assert!(
            answer.contains("the body did not arrive within 500ms"),
            "{answer}"
        );
    }

    #[tokio::test]
    async fn a_stalled_connection_does_not_delay_another() {
        let addr = server(Timeouts::SERVED).await;
        let mut stalled = TcpStream::connect(addr).await.unwrap();
        stalled
            .write_all(b"POST / HTTP/1.1\r\nHost: lb\r\nContent-Length: 5\r\n\r\na")
            .await
            .unwrap();
        let mut half_head = TcpStream::connect(addr).await.unwrap();
        half_head.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
        let answer = exchange_raw(addr, b"GET /other HTTP/1.1\r\nHost: lb\r\n\r\n").await;
        assert_eq!(status(&answer), 200, "{answer}");
        // Answered while the stalled peers are still being waited for.
        for stream in [&stalled, &half_head] {
            let still_open = stream.try_read(&mut [0; 1]);
            assert!(
                matches!(&still_open, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
                "{still_open:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_silent_connection_makes_room_for_a_new_one_at_once() {
        // Timeouts as served: nothing is cut by the header timeout here.
        let addr = server(Timeouts::SERVED).await;
        let mut holders = Vec::new();
        for _ in 0..CAP / 4 {
            holders.push(TcpStream::connect(addr).await.unwrap());
        }
        // The fifth from this address: its oldest silent connection is
        // closed for it.
        let answer = exchange_raw(addr, b"GET /late HTTP/1.1\r\nHost: lb\r\n\r\n").await;
        assert_eq!(status(&answer), 200, "{answer}");
        let mut oldest = holders.remove(0);
        assert_eq!(read_to_close(&mut oldest).await, "");
        for holder in &holders {
            let still_open = holder.try_read(&mut [0; 1]);
            assert!(
                matches!(&still_open, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
                "{still_open:?}"
            );
        }
    }

    /// Serves one connection with `answer` once it has read the request
    /// head, `pause` after each KiB (or, with no answer, before closing);
    /// returns the address and the head it read.
    async fn worker(
        answer: Vec<u8>,
        pause: Duration,
    ) -> (SocketAddr, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                let mut byte = [0];
                if stream.read_exact(&mut byte).await.is_err() {
                    break;
                }
                head.push(byte[0]);
            }
            if answer.is_empty() {
                tokio::time::sleep(pause).await;
            }
            for piece in answer.chunks(1024) {
                // The client may hang up early, as it does on a response
                // that is too large.
                if stream.write_all(piece).await.is_err() {
                    break;
                }
                tokio::time::sleep(pause).await;
            }
            head
        });
        (addr, task)
    }

    #[tokio::test]
    async fn get_sends_a_plain_request_and_reads_the_page() {
        let (addr, head) = worker(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n42".to_vec(),
            Duration::ZERO,
        )
        .await;
        let page = get(addr, "/load?v=1", Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!((page.status, &page.body[..]), (200, &b"42"[..]));
        let head = String::from_utf8(head.await.unwrap())
            .unwrap()
            .to_ascii_lowercase();
        assert!(head.starts_with("get /load?v=1 http/1.1\r\n"), "{head}");
        for line in [
            format!("host: {addr}"),
            "user-agent: lb-health".into(),
            "connection: close".into(),
        ] {
            assert!(head.contains(&format!("\r\n{line}\r\n")), "{line}: {head}");
        }
    }

    #[tokio::test]
    async fn get_reads_chunked_and_close_delimited_pages() {
        let chunked = b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n";
        let (addr, _) = worker(chunked.to_vec(), Duration::ZERO).await;
        let page = get(addr, "/", Duration::from_secs(5)).await.unwrap();
        assert_eq!((page.status, &page.body[..]), (503, &b"Wikipedia"[..]));
        let (addr, _) = worker(
            b"HTTP/1.0 200 OK\r\n\r\nto the end".to_vec(),
            Duration::ZERO,
        )
        .await;
        let page = get(addr, "/", Duration::from_secs(5)).await.unwrap();
        assert_eq!(&page.body[..], b"to the end");
    }

    #[tokio::test]
    async fn get_refuses_oversized_responses() {
        let body = [
            &b"HTTP/1.1 200 OK\r\n\r\n"[..],
            &vec![b'x'; MAX_RESPONSE + 1],
        ]
        .concat();
        let (addr, _) = worker(body, Duration::ZERO).await;
        let error = get(addr, "/", Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(error, GetError::ResponseTooLarge), "{error:?}");
        assert!(
            error
                .to_string()
                .contains("point the check at a smaller page"),
            "{error}"
        );

        let head = format!("HTTP/1.1 200 OK\r\nX: {}\r\n\r\n", "a".repeat(MAX_RESPONSE));
        let (addr, _) = worker(head.into_bytes(), Duration::ZERO).await;
        let error = get(addr, "/", Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(error, GetError::ResponseTooLarge), "{error:?}");
    }

    #[tokio::test]
    async fn get_gives_up_on_a_silent_or_slow_server() {
        let timeout = Duration::from_millis(300);
        // Nothing at all, and the connection held open past the deadline.
        let (addr, task) = worker(Vec::new(), PATIENCE).await;
        let error = get(addr, "/", timeout).await.unwrap_err();
        assert!(matches!(error, GetError::Timeout(_)), "{error:?}");
        assert_eq!(
            error.to_string(),
            "no answer within 300ms: check that the worker is up and speaks HTTP, or allow more time"
        );
        task.abort();
        // A body of 10 KiB, a KiB every 100 ms: a second in all.
        let slow = [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 10240\r\n\r\n"[..],
            &[b'x'; 10240],
        ]
        .concat();
        let (addr, _) = worker(slow, Duration::from_millis(100)).await;
        let error = get(addr, "/", timeout).await.unwrap_err();
        assert!(matches!(error, GetError::Timeout(_)), "{error:?}");
    }

    #[tokio::test]
    async fn get_says_what_went_wrong() {
        let unused = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = unused.local_addr().unwrap();
        drop(unused);
        let error = get(addr, "/", Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(error, GetError::Connect { .. }), "{error:?}");
        assert!(error.to_string().contains("refused"), "{error}");
        for path in ["health", "/a b", "http://example.com/"] {
            let error = get(addr, path, Duration::from_secs(5)).await.unwrap_err();
            assert!(matches!(error, GetError::BadPath(_)), "{path}: {error:?}");
        }
        let (addr, _) = worker(b"SSH-2.0-OpenSSH_9.6\r\n".to_vec(), Duration::ZERO).await;
        let error = get(addr, "/", Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(error, GetError::Http(_)), "{error:?}");
        assert!(
            error
                .to_string()
                .contains("check that the port serves HTTP"),
            "{error}"
        );
        let (addr, _) = worker(
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n42".to_vec(),
            Duration::ZERO,
        )
        .await;
        let error = get(addr, "/", Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(error, GetError::Http(_)), "{error:?}");
    }
}
