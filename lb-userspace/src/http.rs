//! A deliberately small, strict subset of HTTP/1.1: enough for the
//! controller to take load reports (`POST /load`) and serve `/metrics`, and
//! to health-check and probe workers (`GET /path`). Not hyper: the subset
//! is small enough to read whole and its limits are fixed.
//!
//! One request or response per connection (`Connection: close`).
//! Decisions that make it strict:
//!
//! - Lines end in CRLF. A bare LF is refused in requests and responses:
//!   RFC 9112 lets recipients accept it, but two parsers that disagree on
//!   line ends are how requests get smuggled, and every client we expect
//!   (curl, Prometheus, lb's workers, nginx) sends CRLF.
//! - Heads are printable ASCII (plus tab in header values); obs-fold and
//!   header names with spaces are refused.
//! - Request bodies come with `Content-Length` only; `Transfer-Encoding` is
//!   refused with 411 Length Required.
//! - Response bodies may be chunked: a health-checked application server
//!   may well stream its answer, and a health check should not fail over
//!   framing. Chunk extensions and trailers are ignored.

use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};

/// Most bytes in a head: request or status line, headers and the blank line.
pub const MAX_HEAD: usize = 8 * 1024;
/// Most header lines in a head.
pub const MAX_HEADERS: usize = 64;
/// Most bytes in a request body.
pub const MAX_BODY: usize = 64 * 1024;
/// Most bytes in a whole response that [`get`] reads.
pub const MAX_RESPONSE: usize = 64 * 1024;

/// Why a request or response was refused, or an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// A line ends in LF without CR.
    #[error("a line ends in a bare LF: end every line with CRLF (\\r\\n)")]
    BareLf,
    /// A control or non-ASCII byte in the head.
    #[error("the head holds a control or non-ASCII byte: the path and headers must be printable ASCII (percent-encode the path)")]
    BadByte,
    /// The request line is not `METHOD /path HTTP/1.x`.
    #[error("malformed request line: send METHOD /path HTTP/1.1, separated by single spaces")]
    BadRequestLine,
    /// An HTTP version other than 1.0 and 1.1.
    #[error("unsupported HTTP version `{0}`: use HTTP/1.1 or HTTP/1.0")]
    UnsupportedVersion(String),
    /// The path does not start with `/` or holds whitespace.
    #[error("path `{0}` is not valid: start it with / and percent-encode spaces and other special characters")]
    BadPath(String),
    /// The host holds whitespace or control characters.
    #[error("host `{0}` is not valid: use a name or address without spaces, such as example.com or 192.0.2.11:80")]
    BadHost(String),
    /// A header line without a colon.
    #[error("malformed header line: write each header as `Name: value`")]
    BadHeader,
    /// A header name that is not a token (e.g. it holds a space).
    #[error(
        "header name `{0}` is not valid: use letters, digits and -, with no space before the colon"
    )]
    BadHeaderName(String),
    /// A header continued on the next line (obs-fold).
    #[error("a header line starts with whitespace (obs-fold): put each header on one line")]
    ObsFold,
    /// More than [`MAX_HEADERS`] headers.
    #[error("more than {MAX_HEADERS} headers: send fewer")]
    TooManyHeaders,
    /// A head longer than [`MAX_HEAD`].
    #[error("the head is longer than {MAX_HEAD} bytes: send shorter headers")]
    HeadTooLarge,
    /// A request with `Transfer-Encoding`.
    #[error("Transfer-Encoding is not supported: send the body with a Content-Length header")]
    TransferEncoding,
    /// A `Content-Length` that is not a decimal number.
    #[error("Content-Length `{0}` is not a number of bytes")]
    BadContentLength(String),
    /// `Content-Length` given twice.
    #[error("Content-Length is given more than once: send it once")]
    DuplicateContentLength,
    /// A request body longer than [`MAX_BODY`].
    #[error("the body is longer than {MAX_BODY} bytes: send a smaller one")]
    BodyTooLarge,
    /// The connection closed before a whole request or response arrived.
    #[error("the connection closed before a whole request or response arrived: the peer stopped early or sent less body than its Content-Length")]
    Incomplete,
    /// No whole request arrived, or no response, before the deadline.
    #[error("no answer within {}: check that the peer is up and speaks HTTP, or allow more time", crate::duration::format(*.0))]
    Timeout(Duration),
    // The I/O errors are in the messages rather than sources because health
    // checks report `to_string()` alone, and "connection refused" is the
    // part an operator needs.
    /// Reading or writing the connection failed.
    #[error("reading or writing the connection failed: {0}")]
    Io(std::io::Error),
    /// Connecting for [`get`] failed.
    #[error("cannot connect to {addr} ({error}): check that it is up and listens on that port")]
    Connect {
        /// Where to.
        addr: SocketAddr,
        /// Why not.
        error: std::io::Error,
    },
    /// The response does not start with `HTTP/1.x NNN`.
    #[error("the answer is not an HTTP/1.x response: check that the port serves HTTP")]
    BadStatusLine,
    /// A response longer than [`MAX_RESPONSE`].
    #[error("the response is longer than {MAX_RESPONSE} bytes: point the check at a smaller page")]
    ResponseTooLarge,
    /// A response body shorter than its `Content-Length`.
    #[error("the response body has {got} of its {expected} bytes (Content-Length): the server cut it short")]
    ShortBody {
        /// `Content-Length`.
        expected: usize,
        /// Bytes received.
        got: usize,
    },
    /// A malformed chunked response body.
    #[error("the chunked response body is malformed or cut short: check the server, or have it send Content-Length")]
    BadChunk,
    /// A response `Transfer-Encoding` other than chunked.
    #[error("response Transfer-Encoding `{0}` is not supported: have the server send chunked or Content-Length")]
    UnsupportedTransferEncoding(String),
}

impl HttpError {
    /// The status a server answers this error with. Errors that only [`get`]
    /// returns give 502 (what a proxy would answer), a timeout 408.
    pub fn status(&self) -> u16 {
        match self {
            Self::BareLf
            | Self::BadByte
            | Self::BadRequestLine
            | Self::BadPath(_)
            | Self::BadHost(_)
            | Self::BadHeader
            | Self::BadHeaderName(_)
            | Self::ObsFold
            | Self::BadContentLength(_)
            | Self::DuplicateContentLength
            | Self::Incomplete => 400,
            Self::Timeout(_) => 408,
            Self::TransferEncoding => 411,
            Self::BodyTooLarge => 413,
            Self::TooManyHeaders | Self::HeadTooLarge => 431,
            Self::Io(_) => 500,
            Self::Connect { .. }
            | Self::BadStatusLine
            | Self::ResponseTooLarge
            | Self::ShortBody { .. }
            | Self::BadChunk
            | Self::UnsupportedTransferEncoding(_) => 502,
            Self::UnsupportedVersion(_) => 505,
        }
    }
}

/// A request as [`parse_request`] read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `POST`, … as sent (methods are case-sensitive).
    pub method: String,
    /// The request target, starting with `/`, query included.
    pub path: String,
    /// Headers in order, names as sent, values without surrounding blanks.
    pub headers: Vec<(String, String)>,
    /// `Content-Length` bytes of body.
    pub body: Vec<u8>,
}

impl Request {
    /// The value of the first header called `name`, in any case.
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

/// A response as [`parse_response`] read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// The status code, 100 to 599.
    pub status: u16,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

/// Parses one request from the start of `buf`: `Ok(None)` while it needs
/// more bytes, else the request and how many bytes of `buf` it took.
pub fn parse_request(buf: &[u8]) -> Result<Option<(Request, usize)>, HttpError> {
    let Some((head, head_len)) = parse_request_head(buf)? else {
        return Ok(None);
    };
    let end = head_len + head.content_length;
    Ok(buf
        .get(head_len..end)
        .map(|body| (head.into_request(body.to_vec()), end)))
}

/// Reads one request, all of it within `timeout`.
pub async fn read_request<R: AsyncRead + Unpin>(
    reader: &mut R,
    timeout: Duration,
) -> Result<Request, HttpError> {
    tokio::time::timeout(timeout, read_request_untimed(reader))
        .await
        .map_err(|_| HttpError::Timeout(timeout))?
}

async fn read_request_untimed<R: AsyncRead + Unpin>(reader: &mut R) -> Result<Request, HttpError> {
    let mut buf = Vec::new();
    // The head is re-scanned after every read, but it is at most MAX_HEAD
    // bytes; the body is then read straight to its known length.
    let (head, head_len) = loop {
        if let Some(parsed) = parse_request_head(&buf)? {
            break parsed;
        }
        read_more(reader, &mut buf).await?;
    };
    let mut body = buf.split_off(head_len);
    // Anything past the body would be a pipelined request, which a
    // Connection: close server does not serve.
    body.truncate(head.content_length);
    let missing = head.content_length - body.len();
    let mut rest = vec![0; missing];
    reader
        .read_exact(&mut rest)
        .await
        .map_err(eof_is_incomplete)?;
    body.extend_from_slice(&rest);
    Ok(head.into_request(body))
}

/// Appends what one read gives; EOF is an error, as the message is not whole.
async fn read_more<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
) -> Result<(), HttpError> {
    let mut chunk = [0; 4096];
    match reader.read(&mut chunk).await.map_err(HttpError::Io)? {
        0 => Err(HttpError::Incomplete),
        n => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(())
        }
    }
}

fn eof_is_incomplete(error: std::io::Error) -> HttpError {
    match error.kind() {
        std::io::ErrorKind::UnexpectedEof => HttpError::Incomplete,
        _ => HttpError::Io(error),
    }
}

/// Writes a whole response with `Connection: close`. A 204 has neither body
/// nor Content-Length (RFC 9110 forbids both); passing a body with it, or a
/// content type with control characters, is an `InvalidInput` error.
pub async fn write_response<W: AsyncWrite + Unpin>(
    writer: &mut W,
    status: u16,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let invalid = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, what);
    if !(100..=599).contains(&status) {
        return Err(invalid("an HTTP status is from 100 to 599"));
    }
    if !content_type.bytes().all(is_value_byte) {
        return Err(invalid("content type holds control characters"));
    }
    let reason = reason(status);
    let head = if status == 204 {
        if !body.is_empty() {
            return Err(invalid("a 204 response has no body"));
        }
        format!("HTTP/1.1 204 {reason}\r\nConnection: close\r\n\r\n")
    } else {
        let length = body.len();
        format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n\
             Content-Length: {length}\r\nConnection: close\r\n\r\n"
        )
    };
    // One write, so that a small response leaves in one segment.
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    writer.write_all(&out).await?;
    writer.flush().await
}

/// The reason phrase of the statuses lb answers with; empty for others,
/// which RFC 9112 allows.
fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Content",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// Checks that `path` can go in a request line as is: it starts with `/` and
/// holds only printable ASCII without spaces.
pub fn check_path(path: &str) -> Result<(), HttpError> {
    if path.starts_with('/') && path.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(())
    } else {
        Err(HttpError::BadPath(path.to_owned()))
    }
}

/// GETs `path` from `addr` with `Host: host`, connection, request and whole
/// response within `timeout`. Any status is `Ok`; judging it is the caller's.
pub async fn get(
    addr: SocketAddr,
    path: &str,
    host: &str,
    timeout: Duration,
) -> Result<Response, HttpError> {
    check_path(path)?;
    if host.is_empty() || !host.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(HttpError::BadHost(host.to_owned()));
    }
    tokio::time::timeout(timeout, get_untimed(addr, path, host))
        .await
        .map_err(|_| HttpError::Timeout(timeout))?
}

async fn get_untimed(addr: SocketAddr, path: &str, host: &str) -> Result<Response, HttpError> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|error| HttpError::Connect { addr, error })?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: lb-health\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(HttpError::Io)?;
    let mut buf = Vec::new();
    // One byte over the cap tells a response that is too large from one
    // that fits exactly.
    (&mut stream)
        .take(MAX_RESPONSE as u64 + 1)
        .read_to_end(&mut buf)
        .await
        .map_err(HttpError::Io)?;
    if buf.len() > MAX_RESPONSE {
        return Err(HttpError::ResponseTooLarge);
    }
    parse_response(&buf)
}

/// Parses a whole response, read until the server closed the connection.
pub fn parse_response(buf: &[u8]) -> Result<Response, HttpError> {
    // Checked first so that a server speaking another protocol is named as
    // such rather than as a bad byte somewhere in its greeting.
    if !buf.starts_with(b"HTTP/") {
        return Err(match buf {
            [] => HttpError::Incomplete,
            _ => HttpError::BadStatusLine,
        });
    }
    let head = split_head(buf)?.ok_or(HttpError::Incomplete)?;
    let (status_line, header_lines) = head.lines.split_first().ok_or(HttpError::BadStatusLine)?;
    let status = parse_status_line(status_line)?;
    let headers = parse_headers(header_lines)?;
    let rest = &buf[head.len..];
    let body = match header(&headers, "transfer-encoding") {
        Some(coding) if coding.eq_ignore_ascii_case("chunked") => decode_chunked(rest)?,
        Some(coding) => return Err(HttpError::UnsupportedTransferEncoding(coding.to_owned())),
        None => match content_length(&headers)? {
            Some(expected) => rest
                .get(..expected)
                .ok_or(HttpError::ShortBody {
                    expected,
                    got: rest.len(),
                })?
                .to_vec(),
            None => rest.to_vec(),
        },
    };
    Ok(Response { status, body })
}

/// `HTTP/1.x NNN reason` (the reason may be missing) → NNN.
fn parse_status_line(line: &[u8]) -> Result<u16, HttpError> {
    let line = line_text(line)?;
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().unwrap_or_default();
    if !matches!(version, "HTTP/1.0" | "HTTP/1.1")
        || code.len() != 3
        || !code.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(HttpError::BadStatusLine);
    }
    match code.parse::<u16>() {
        Ok(status @ 100..=599) => Ok(status),
        _ => Err(HttpError::BadStatusLine),
    }
}

/// Joins the chunks of a chunked body; stops at the last (empty) chunk.
fn decode_chunked(mut rest: &[u8]) -> Result<Vec<u8>, HttpError> {
    let mut body = Vec::new();
    loop {
        let (line, used) = next_line(rest)?.ok_or(HttpError::BadChunk)?;
        let size = chunk_size(line)?;
        rest = &rest[used..];
        if size == 0 {
            return Ok(body);
        }
        let data = rest.get(..size).ok_or(HttpError::BadChunk)?;
        if rest.get(size..size + 2) != Some(&b"\r\n"[..]) {
            return Err(HttpError::BadChunk);
        }
        body.extend_from_slice(data);
        rest = &rest[size + 2..];
    }
}

/// The hex size at the start of a chunk-size line, extensions ignored.
fn chunk_size(line: &[u8]) -> Result<usize, HttpError> {
    let digits = line.split(|&b| b == b';').next().unwrap_or_default();
    // At most 6 hex digits (16 MiB): a chunk can't be larger than a whole
    // response, and the limit keeps size + 2 from overflowing.
    if digits.is_empty() || digits.len() > 6 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return Err(HttpError::BadChunk);
    }
    let digits = std::str::from_utf8(digits).map_err(|_| HttpError::BadChunk)?;
    usize::from_str_radix(digits, 16).map_err(|_| HttpError::BadChunk)
}

/// A request head: what [`Request`] has but the body, and its length.
struct RequestHead {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    content_length: usize,
}

impl RequestHead {
    fn into_request(self, body: Vec<u8>) -> Request {
        Request {
            method: self.method,
            path: self.path,
            headers: self.headers,
            body,
        }
    }
}

/// The request head at the start of `buf` and its length, `None` while it
/// is incomplete.
fn parse_request_head(buf: &[u8]) -> Result<Option<(RequestHead, usize)>, HttpError> {
    let Some(raw) = split_head(buf)? else {
        return Ok(None);
    };
    let (request_line, header_lines) = raw.lines.split_first().ok_or(HttpError::BadRequestLine)?;
    let (method, path) = parse_request_line(request_line)?;
    let headers = parse_headers(header_lines)?;
    if header(&headers, "transfer-encoding").is_some() {
        return Err(HttpError::TransferEncoding);
    }
    let content_length = content_length(&headers)?.unwrap_or(0);
    if content_length > MAX_BODY {
        return Err(HttpError::BodyTooLarge);
    }
    let head = RequestHead {
        method,
        path,
        headers,
        content_length,
    };
    Ok(Some((head, raw.len)))
}

/// `METHOD SP PATH SP HTTP/1.x` → method and path.
fn parse_request_line(line: &[u8]) -> Result<(String, String), HttpError> {
    let line = line_text(line)?;
    let mut parts = line.split(' ');
    let (Some(method), Some(path), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpError::BadRequestLine);
    };
    if !is_token(method) {
        return Err(HttpError::BadRequestLine);
    }
    check_path(path)?;
    match version {
        "HTTP/1.0" | "HTTP/1.1" => Ok((method.to_owned(), path.to_owned())),
        _ if version.starts_with("HTTP/") => Err(HttpError::UnsupportedVersion(version.to_owned())),
        _ => Err(HttpError::BadRequestLine),
    }
}

/// A head cut into lines, not yet parsed.
struct RawHead<'a> {
    /// The start line and header lines, without CRLF.
    lines: Vec<&'a [u8]>,
    /// Bytes up to and with the blank line that ends the head.
    len: usize,
}

/// The head at the start of `buf`; `None` while incomplete.
fn split_head(buf: &[u8]) -> Result<Option<RawHead<'_>>, HttpError> {
    let window = &buf[..buf.len().min(MAX_HEAD)];
    let mut lines = Vec::new();
    let mut pos = 0;
    // Line by line rather than searching for CRLFCRLF, so that a bare LF
    // or too many headers are refused as soon as they arrive.
    while let Some((line, used)) = next_line(&window[pos..])? {
        pos += used;
        if line.is_empty() {
            return Ok(Some(RawHead { lines, len: pos }));
        }
        if lines.len() > MAX_HEADERS {
            return Err(HttpError::TooManyHeaders);
        }
        lines.push(line);
    }
    if buf.len() >= MAX_HEAD {
        return Err(HttpError::HeadTooLarge);
    }
    Ok(None)
}

/// The first CRLF-terminated line of `buf` without its CRLF, and its length
/// with it; `None` if no line ends in `buf` yet.
fn next_line(buf: &[u8]) -> Result<Option<(&[u8], usize)>, HttpError> {
    let Some(lf) = buf.iter().position(|&b| b == b'\n') else {
        return Ok(None);
    };
    match lf.checked_sub(1).map(|cr| buf[cr]) {
        Some(b'\r') => Ok(Some((&buf[..lf - 1], lf + 1))),
        _ => Err(HttpError::BareLf),
    }
}

fn parse_headers(lines: &[&[u8]]) -> Result<Vec<(String, String)>, HttpError> {
    lines.iter().map(|line| parse_header(line)).collect()
}

/// `Name: value` → name and value without surrounding blanks.
fn parse_header(line: &[u8]) -> Result<(String, String), HttpError> {
    if line.starts_with(b" ") || line.starts_with(b"\t") {
        return Err(HttpError::ObsFold);
    }
    let (name, value) = line_text(line)?
        .split_once(':')
        .ok_or(HttpError::BadHeader)?;
    if !is_token(name) {
        return Err(HttpError::BadHeaderName(name.to_owned()));
    }
    let value = value.trim_matches([' ', '\t']);
    Ok((name.to_owned(), value.to_owned()))
}

/// The line as text if it is printable ASCII, tabs allowed.
fn line_text(line: &[u8]) -> Result<&str, HttpError> {
    std::str::from_utf8(line)
        .ok()
        .filter(|text| text.bytes().all(is_value_byte))
        .ok_or(HttpError::BadByte)
}

fn is_value_byte(b: u8) -> bool {
    b == b'\t' || b == b' ' || b.is_ascii_graphic()
}

/// An RFC 9110 token: methods and header names.
fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// The one `Content-Length`, if any.
fn content_length(headers: &[(String, String)]) -> Result<Option<usize>, HttpError> {
    let mut values = headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v);
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(HttpError::DuplicateContentLength);
    }
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HttpError::BadContentLength(value.clone()));
    }
    // All digits, so only overflow fails, and that is surely too large.
    value.parse().map(Some).map_err(|_| HttpError::BodyTooLarge)
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use proptest::prelude::*;
    use tokio::net::TcpListener;

    use super::*;

    fn parse_whole(text: &[u8]) -> Result<Request, HttpError> {
        match parse_request(text)? {
            Some((request, used)) => {
                assert_eq!(used, text.len());
                Ok(request)
            }
            None => panic!("incomplete: {:?}", String::from_utf8_lossy(text)),
        }
    }

    /// The bytes of `request` as HTTP/1.1.
    fn serialise(request: &Request) -> Vec<u8> {
        let mut out = format!("{} {} HTTP/1.1\r\n", request.method, request.path);
        for (name, value) in &request.headers {
            out += &format!("{name}: {value}\r\n");
        }
        out += "\r\n";
        let mut out = out.into_bytes();
        out.extend_from_slice(&request.body);
        out
    }

    #[test]
    fn parses_a_get() {
        let request =
            parse_whole(b"GET /health?x=1 HTTP/1.1\r\nHost: lb\r\nAccept:  */* \r\n\r\n").unwrap();
        assert_eq!(
            request,
            Request {
                method: "GET".into(),
                path: "/health?x=1".into(),
                headers: vec![
                    ("Host".into(), "lb".into()),
                    ("Accept".into(), "*/*".into())
                ],
                body: vec![],
            }
        );
        assert_eq!(request.header("host"), Some("lb"));
        assert_eq!(request.header("ACCEPT"), Some("*/*"));
        assert_eq!(request.header("cookie"), None);
    }

    #[test]
    fn parses_a_post_with_a_body() {
        let text = b"POST /load HTTP/1.0\r\nContent-Type: application/json\r\ncontent-length: 11\r\n\r\n{\"load\":42}";
        let request = parse_whole(text).unwrap();
        assert_eq!(request.method, "POST");
        assert_eq!(request.body, b"{\"load\":42}");
        assert_eq!(request.header("Content-Length"), Some("11"));
    }

    #[test]
    fn leaves_bytes_after_the_request() {
        let text = b"POST /load HTTP/1.1\r\nContent-Length: 2\r\n\r\n42GET / HTTP/1.1\r\n";
        let (request, used) = parse_request(text).unwrap().unwrap();
        assert_eq!(request.body, b"42");
        assert_eq!(&text[used..], b"GET / HTTP/1.1\r\n");
    }

    #[test]
    fn needs_more_bytes_until_the_last_one() {
        let text = b"POST /load HTTP/1.1\r\nHost: lb\r\nContent-Length: 5\r\n\r\nhello";
        for end in 0..text.len() {
            assert!(parse_request(&text[..end]).unwrap().is_none(), "{end}");
        }
        let (request, used) = parse_request(text).unwrap().unwrap();
        assert_eq!((request.body.as_slice(), used), (&b"hello"[..], text.len()));
    }

    fn rejects(text: &[u8]) -> HttpError {
        match parse_request(text) {
            Err(error) => error,
            Ok(parsed) => panic!("{:?} parsed as {parsed:?}", String::from_utf8_lossy(text)),
        }
    }

    #[test]
    fn rejects_malformed_request_lines() {
        for text in [
            &b"\r\n\r\n"[..],
            b"GET\r\n\r\n",
            b"GET /\r\n\r\n",
            b"GET  / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1 x\r\n\r\n",
            b"G(T / HTTP/1.1\r\n\r\n",
            b"GET / FTP/1.1\r\n\r\n",
        ] {
            assert!(
                matches!(rejects(text), HttpError::BadRequestLine),
                "{text:?}"
            );
        }
        assert!(matches!(
            rejects(b"GET /a b HTTP/1.1\r\n\r\n"),
            HttpError::BadRequestLine
        ));
        assert!(matches!(
            rejects(b"GET http://x/ HTTP/1.1\r\n\r\n"),
            HttpError::BadPath(_)
        ));
        assert!(matches!(
            rejects(b"GET * HTTP/1.1\r\n\r\n"),
            HttpError::BadPath(_)
        ));
        assert!(matches!(
            rejects(b"GET /\ta HTTP/1.1\r\n\r\n"),
            HttpError::BadPath(_)
        ));
        let error = rejects(b"GET / HTTP/2.0\r\n\r\n");
        assert!(matches!(&error, HttpError::UnsupportedVersion(v) if v == "HTTP/2.0"));
        assert_eq!(error.status(), 505);
    }

    #[test]
    fn rejects_bare_lf_as_soon_as_it_arrives() {
        assert!(matches!(rejects(b"GET / HTTP/1.1\n"), HttpError::BareLf));
        assert!(matches!(
            rejects(b"GET / HTTP/1.1\r\nHost: x\n"),
            HttpError::BareLf
        ));
        assert!(matches!(rejects(b"\n"), HttpError::BareLf));
    }

    #[test]
    fn rejects_bad_bytes() {
        for text in [
            &b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nX: \x00\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: caf\xc3\xa9\r\n\r\n",
            b"GET /caf\xc3\xa9 HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: \x7f\r\n\r\n",
        ] {
            assert!(matches!(rejects(text), HttpError::BadByte), "{text:?}");
        }
    }

    #[test]
    fn rejects_malformed_headers() {
        assert!(matches!(
            rejects(b"GET / HTTP/1.1\r\nHost lb\r\n\r\n"),
            HttpError::BadHeader
        ));
        assert!(matches!(
            rejects(b"GET / HTTP/1.1\r\nHost : lb\r\n\r\n"),
            HttpError::BadHeaderName(name) if name == "Host "
        ));
        assert!(matches!(
            rejects(b"GET / HTTP/1.1\r\n: lb\r\n\r\n"),
            HttpError::BadHeaderName(_)
        ));
        assert!(matches!(
            rejects(b"GET / HTTP/1.1\r\nX-A: 1\r\n  2\r\n\r\n"),
            HttpError::ObsFold
        ));
        assert!(matches!(
            rejects(b"GET / HTTP/1.1\r\nX-A: 1\r\n\t2\r\n\r\n"),
            HttpError::ObsFold
        ));
    }

    #[test]
    fn rejects_other_framing_than_content_length() {
        let error = rejects(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert!(matches!(error, HttpError::TransferEncoding));
        assert_eq!(error.status(), 411);
        assert!(error.to_string().contains("Content-Length"));
        for value in ["-1", "+1", "1,1", "0x10", "", "1 1"] {
            let text = format!("POST / HTTP/1.1\r\nContent-Length: {value}\r\n\r\n");
            let error = rejects(text.as_bytes());
            assert!(
                matches!(error, HttpError::BadContentLength(_)),
                "{value}: {error:?}"
            );
            assert_eq!(error.status(), 400);
        }
        let twice = b"POST / HTTP/1.1\r\nContent-Length: 1\r\ncontent-length: 1\r\n\r\nx";
        assert!(matches!(rejects(twice), HttpError::DuplicateContentLength));
    }

    #[test]
    fn rejects_oversized_requests() {
        let body_limit = format!("POST / HTTP/1.1\r\nContent-Length: {MAX_BODY}\r\n\r\n");
        assert!(parse_request(body_limit.as_bytes()).unwrap().is_none());
        let too_long = format!(
            "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        let error = rejects(too_long.as_bytes());
        assert!(matches!(error, HttpError::BodyTooLarge));
        assert_eq!(error.status(), 413);
        let overflow = b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n";
        assert!(matches!(rejects(overflow), HttpError::BodyTooLarge));

        let headers = "X: y\r\n".repeat(MAX_HEADERS);
        let at_limit = format!("GET / HTTP/1.1\r\n{headers}\r\n");
        assert_eq!(
            parse_whole(at_limit.as_bytes()).unwrap().headers.len(),
            MAX_HEADERS
        );
        let over_limit = format!("GET / HTTP/1.1\r\n{headers}X: y\r\n");
        let error = rejects(over_limit.as_bytes());
        assert!(matches!(error, HttpError::TooManyHeaders));
        assert_eq!(error.status(), 431);

        let long = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD));
        assert!(matches!(rejects(long.as_bytes()), HttpError::HeadTooLarge));
        let pad = MAX_HEAD - "GET / HTTP/1.1\r\nX: \r\n\r\n".len();
        let exactly = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(pad));
        assert_eq!(exactly.len(), MAX_HEAD);
        assert!(parse_whole(exactly.as_bytes()).is_ok());
        let one_over = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(pad + 1));
        assert!(matches!(
            rejects(one_over.as_bytes()),
            HttpError::HeadTooLarge
        ));
    }

    #[test]
    fn check_path_wants_a_plain_absolute_path() {
        for path in ["/", "/health", "/a/b?c=d&e=%20"] {
            assert!(check_path(path).is_ok(), "{path}");
        }
        for path in ["", "health", "/a b", "/a\tb", "/a\r\n", "/é", "*"] {
            assert!(
                matches!(check_path(path), Err(HttpError::BadPath(_))),
                "{path}"
            );
        }
    }

    #[test]
    fn parses_responses() {
        let nginx = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\n42";
        assert_eq!(
            parse_response(nginx).unwrap(),
            Response {
                status: 200,
                body: b"42".to_vec()
            }
        );
        let extra = b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 2\r\n\r\nno and more";
        assert_eq!(parse_response(extra).unwrap().body, b"no");
        let until_eof = b"HTTP/1.1 404 Not Found\r\n\r\nnothing here";
        assert_eq!(parse_response(until_eof).unwrap().body, b"nothing here");
        let no_reason = b"HTTP/1.1 204\r\n\r\n";
        assert_eq!(parse_response(no_reason).unwrap().status, 204);
    }

    #[test]
    fn decodes_chunked_responses() {
        let text = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n4;ext=1\r\nWiki\r\na\r\npedia in\r\n\r\n0\r\nTrailer: x\r\n\r\n";
        assert_eq!(parse_response(text).unwrap().body, b"Wikipedia in\r\n");
        for bad in [
            &b"4\r\nWiki"[..],
            b"4\r\nWikiXX0\r\n\r\n",
            b"4\r\nWiki\r\n",
            b"x\r\n",
            b"+4\r\nWiki\r\n0\r\n\r\n",
            b"1234567\r\n",
            b"",
        ] {
            let text = [
                &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
                bad,
            ]
            .concat();
            assert!(
                matches!(parse_response(&text), Err(HttpError::BadChunk)),
                "{bad:?}"
            );
        }
        let gzip = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n";
        assert!(matches!(
            parse_response(gzip),
            Err(HttpError::UnsupportedTransferEncoding(_))
        ));
    }

    #[test]
    fn rejects_bad_responses() {
        for text in [
            &b"\r\n\r\n"[..],
            b"HTTP/2 200 OK\r\n\r\n",
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 099 Low\r\n\r\n",
            b"HTTP/1.1 600 High\r\n\r\n",
            b"HTTP/1.1 +20 OK\r\n\r\n",
            b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
        ] {
            assert!(
                matches!(parse_response(text), Err(HttpError::BadStatusLine)),
                "{text:?}"
            );
        }
        assert!(matches!(
            parse_response(b"HTTP/1.1 200 OK\r\n"),
            Err(HttpError::Incomplete)
        ));
        assert!(matches!(parse_response(b""), Err(HttpError::Incomplete)));
        assert!(matches!(
            parse_response(b"HTTP/1.1 200 OK\n\n"),
            Err(HttpError::BareLf)
        ));
        let short = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n42";
        let error = parse_response(short).unwrap_err();
        assert!(
            matches!(
                error,
                HttpError::ShortBody {
                    expected: 10,
                    got: 2
                }
            ),
            "{error:?}"
        );
        let twice = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n42";
        assert!(matches!(
            parse_response(twice),
            Err(HttpError::DuplicateContentLength)
        ));
    }

    #[tokio::test]
    async fn reads_a_request_in_pieces() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let text = b"POST /load HTTP/1.1\r\nContent-Length: 11\r\n\r\n{\"load\":42}";
        let writer = tokio::spawn(async move {
            for piece in text.chunks(7) {
                client.write_all(piece).await.unwrap();
                tokio::task::yield_now().await;
            }
            client
        });
        let request = read_request(&mut server, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(request.path, "/load");
        assert_eq!(request.body, b"{\"load\":42}");
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn read_request_fails_on_early_eof() {
        let mut head_cut = &b"GET / HTTP/1.1\r\nHost: lb\r\n"[..];
        let error = read_request(&mut head_cut, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(error, HttpError::Incomplete), "{error:?}");
        let mut body_cut = &b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nabc"[..];
        let error = read_request(&mut body_cut, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(error, HttpError::Incomplete), "{error:?}");
    }

    #[tokio::test]
    async fn read_request_reports_errors_and_ignores_what_follows() {
        let mut chunked = &b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"[..];
        let error = read_request(&mut chunked, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(error, HttpError::TransferEncoding), "{error:?}");
        let mut pipelined =
            &b"POST / HTTP/1.1\r\nContent-Length: 1\r\n\r\nxGET / HTTP/1.1\r\n\r\n"[..];
        let request = read_request(&mut pipelined, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(request.body, b"x");
    }

    #[tokio::test]
    async fn read_request_times_out() {
        let (_client, mut server) = tokio::io::duplex(64);
        let started = Instant::now();
        let error = read_request(&mut server, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(error, HttpError::Timeout(_)), "{error:?}");
        assert_eq!(error.status(), 408);
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn writes_responses() {
        let mut out = Vec::new();
        write_response(&mut out, 200, "text/plain", b"ok")
            .await
            .unwrap();
        assert_eq!(
            out,
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
        );
        assert_eq!(parse_response(&out).unwrap().body, b"ok");

        let mut out = Vec::new();
        write_response(&mut out, 204, "text/plain", b"")
            .await
            .unwrap();
        assert_eq!(out, b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
        assert!(write_response(&mut out, 204, "text/plain", b"x")
            .await
            .is_err());
        assert!(write_response(&mut out, 200, "text/plain\r\nX: y", b"")
            .await
            .is_err());
        assert!(write_response(&mut out, 1000, "text/plain", b"")
            .await
            .is_err());
    }

    #[test]
    fn every_listed_status_has_a_reason() {
        for status in [
            200, 204, 400, 401, 403, 404, 405, 408, 411, 413, 415, 422, 431, 500, 501, 502, 503,
            505,
        ] {
            assert!(!reason(status).is_empty(), "{status}");
        }
    }

    /// Serves one connection: reads the request head, hands it over, then
    /// answers `response`, or nothing at all if it is `None`.
    async fn serve_once(
        response: Option<&'static [u8]>,
    ) -> (SocketAddr, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            while !request.ends_with(b"\r\n\r\n") {
                let mut byte = [0];
                stream.read_exact(&mut byte).await.unwrap();
                request.push(byte[0]);
            }
            match response {
                // The client may stop reading early, as it does when the
                // response is too large.
                Some(response) => stream.write_all(response).await.unwrap_or_default(),
                // Hold the connection open well past the client's deadline.
                None => tokio::time::sleep(Duration::from_secs(5)).await,
            }
            request
        });
        (addr, server)
    }

    #[tokio::test]
    async fn get_sends_a_request_and_reads_the_response() {
        let (addr, server) =
            serve_once(Some(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n42")).await;
        let response = get(addr, "/load", "worker-1", Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(
            response,
            Response {
                status: 200,
                body: b"42".to_vec()
            }
        );
        assert_eq!(
            server.await.unwrap(),
            b"GET /load HTTP/1.1\r\nHost: worker-1\r\nUser-Agent: lb-health\r\nConnection: close\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn get_times_out_on_a_silent_server() {
        let (addr, server) = serve_once(None).await;
        let started = Instant::now();
        let error = get(addr, "/", "worker-1", Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(error, HttpError::Timeout(_)), "{error:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
        server.abort();
    }

    #[tokio::test]
    async fn get_refuses_bad_arguments_and_reports_refused_connections() {
        let unused = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = unused.local_addr().unwrap();
        drop(unused);
        let timeout = Duration::from_secs(5);
        assert!(matches!(
            get(addr, "health", "h", timeout).await,
            Err(HttpError::BadPath(_))
        ));
        assert!(matches!(
            get(addr, "/", "a\r\nX: y", timeout).await,
            Err(HttpError::BadHost(_))
        ));
        let error = get(addr, "/", "h", timeout).await.unwrap_err();
        assert!(matches!(error, HttpError::Connect { .. }), "{error:?}");
        // Health checks show only the message: it must say why.
        assert!(error.to_string().contains("refused"), "{error}");
    }

    #[tokio::test]
    async fn get_refuses_oversized_responses() {
        static HUGE: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
            [&b"HTTP/1.1 200 OK\r\n\r\n"[..], &vec![b'x'; MAX_RESPONSE]].concat()
        });
        let (addr, server) = serve_once(Some(HUGE.as_slice())).await;
        let error = get(addr, "/", "h", Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(error, HttpError::ResponseTooLarge), "{error:?}");
        server.abort();
    }

    /// Bytes that are mostly a valid request, each piece now and then
    /// replaced by something that the parser has to refuse.
    fn request_like() -> impl Strategy<Value = Vec<u8>> {
        let method = prop_oneof![8 => "GET|POST|PUT", 1 => "[A-Z( ]{0,3}"];
        let path = prop_oneof![8 => "/[a-z0-9/?=%]{0,8}", 1 => "[a-z \t/*]{0,3}"];
        let version = prop_oneof![8 => "HTTP/1\\.[01]", 1 => "HTTP/2|http/1\\.1"];
        let name = prop_oneof![
            6 => "[A-Za-z-]{1,6}",
            2 => "Content-Length|content-length",
            1 => "Transfer-Encoding",
            1 => "[A-Za-z :-]{0,4}",
        ];
        let value = prop_oneof![
            4 => "[ a-z0-9\t:]{0,6}",
            4 => "[0-9]",
            1 => "[\\x00-\\x7f]{0,3}",
            1 => "[\\x80-\\xff]",
        ];
        let eol = prop_oneof![20 => Just("\r\n"), 1 => Just("\n"), 1 => Just("\r")];
        let header = (
            name,
            prop_oneof![8 => ": ?", 1 => " :| "],
            value,
            eol.clone(),
        )
            .prop_map(|(name, colon, value, eol)| format!("{name}{colon}{value}{eol}"));
        let headers = proptest::collection::vec(header, 0..4);
        (method, path, version, eol, headers, "[a-z0-9\r\n]{0,9}").prop_map(
            |(method, path, version, eol, headers, body)| {
                let headers = headers.concat();
                format!("{method} {path} {version}{eol}{headers}\r\n{body}").into_bytes()
            },
        )
    }

    fn check_round_trip(bytes: &[u8]) -> Result<(), TestCaseError> {
        if let Ok(Some((request, used))) = parse_request(bytes) {
            let again = serialise(&request);
            let (reparsed, reused) = parse_request(&again).unwrap().unwrap();
            prop_assert_eq!(&reparsed, &request);
            prop_assert_eq!(reused, again.len());
            prop_assert!(used <= bytes.len());
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn parse_request_never_panics_and_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            check_round_trip(&bytes)?;
        }

        #[test]
        fn request_like_bytes_round_trip(bytes in request_like()) {
            check_round_trip(&bytes)?;
        }

        #[test]
        fn every_prefix_of_an_accepted_request_is_incomplete(bytes in request_like()) {
            if let Ok(Some((_, used))) = parse_request(&bytes) {
                for end in 0..used {
                    prop_assert!(matches!(parse_request(&bytes[..end]), Ok(None)), "{}", end);
                }
            }
        }

        #[test]
        fn parse_response_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse_response(&bytes);
        }
    }
}
