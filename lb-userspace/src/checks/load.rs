//! Worker load: the figures the least-load scheduler compares, where they
//! come from, and the endpoint workers push their reports to.
//!
//! A report is a fraction of the worker's capacity, 0 (idle) to 1 (full).
//! `POST /load` with `{"vip": "192.0.2.100:80/tcp", "worker": "192.0.2.11",
//! "load": 0.73}` and `Authorization: Bearer <token>`; the token is the
//! content of `--load-token-file`, and the request must come from the
//! worker's own address, so a worker can only speak for itself.

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use hyper::{body::Bytes, header::AUTHORIZATION, Method, Request, StatusCode};
use lb_common::balancer::{LOAD_SCALE, LOAD_UNKNOWN};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use crate::{
    net::http::{self, Answer},
    service::Vip,
};

/// Shortest token accepted, so it can't be guessed.
const MIN_TOKEN_LEN: usize = 16;

/// A load report refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LoadError {
    /// Not a fraction of capacity.
    #[error("load {0} is out of range: report a fraction of capacity from 0 to 1")]
    OutOfRange(f64),
    /// Body not a report.
    #[error("malformed load report: {0}; send {{\"vip\": \"ADDR:PORT/PROTO\", \"worker\": \"ADDR\", \"load\": 0.5}}")]
    Malformed(String),
    /// Missing or wrong token.
    #[error(
        "unauthorised: send the token from --load-token-file as `Authorization: Bearer <token>`"
    )]
    Unauthorised,
    /// Sent from another address than the worker's.
    #[error("worker {worker} may only report from its own address, not {from}")]
    WrongSource {
        /// The worker reported on.
        worker: IpAddr,
        /// Where the report came from.
        from: IpAddr,
    },
    /// The controller refused it (unknown VIP or worker).
    #[error("{0}")]
    Refused(String),
}

impl LoadError {
    fn status(&self) -> StatusCode {
        match self {
            Self::OutOfRange(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Malformed(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorised => StatusCode::UNAUTHORIZED,
            Self::WrongSource { .. } => StatusCode::FORBIDDEN,
            Self::Refused(_) => StatusCode::NOT_FOUND,
        }
    }
}

/// Checks a load figure.
pub fn check_value(load: f64) -> Result<(), LoadError> {
    if load.is_finite() && (0.0..=1.0).contains(&load) {
        Ok(())
    } else {
        Err(LoadError::OutOfRange(load))
    }
}

/// Who said how loaded a worker is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The worker, through the report endpoint.
    Push,
    /// The controller's load probe.
    Probe,
    /// An operator, with `lb backend set --load`.
    Cli,
}

/// The latest load figure of a worker.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Figure {
    /// Fraction of capacity.
    pub load: f64,
    /// Who reported it.
    pub source: Source,
    /// When.
    pub at: Instant,
}

impl Figure {
    /// The figure if it is younger than `ttl`.
    pub fn current(&self, now: Instant, ttl: Duration) -> Option<f64> {
        (now.saturating_duration_since(self.at) < ttl).then_some(self.load)
    }
}

/// The data plane's form of a fraction of capacity.
pub fn scaled(load: Option<f64>) -> u32 {
    match load {
        Some(load) => (load * f64::from(LOAD_SCALE)).round() as u32,
        None => LOAD_UNKNOWN,
    }
}

/// The data plane's form of an active-flow count: flows per unit of
/// weight (in thousandths), so that a heavier worker counts as less loaded.
pub fn scaled_flows(flows: u64, weight: u32) -> u32 {
    let per_weight = flows.saturating_mul(1000) / u64::from(weight.max(1));
    per_weight.min(u64::from(LOAD_UNKNOWN - 1)) as u32
}

/// The body of `POST /load`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// The VIP the worker serves.
    pub vip: Vip,
    /// The worker's address.
    pub worker: IpAddr,
    /// Fraction of capacity in use.
    pub load: f64,
}

/// Parses and checks a report body.
pub fn parse_report(body: &[u8]) -> Result<Report, LoadError> {
    let report: Report =
        serde_json::from_slice(body).map_err(|e| LoadError::Malformed(e.to_string()))?;
    check_value(report.load)?;
    Ok(report)
}

/// Reads the report token: at least 16 characters, in a file only its
/// owner can read.
pub fn read_token(path: &Path) -> anyhow::Result<String> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(path)
        .with_context(|| format!("reading load token file {}", path.display()))?;
    let me = crate::kernel::private::euid();
    let problem = if meta.uid() != me {
        // Its owner could change the token, or read it whatever its mode.
        Some(format!(
            "belongs to uid {}, not to lb's uid {me}",
            meta.uid()
        ))
    } else if meta.mode() & 0o077 != 0 {
        Some(format!(
            "is open to other users (mode {:o})",
            meta.mode() & 0o777
        ))
    } else {
        None
    };
    if let Some(problem) = problem {
        bail!(
            "load token file {path} {problem}: `chown root: {path}; chmod 600 {path}`",
            path = path.display()
        );
    }
    let token = std::fs::read_to_string(path)
        .with_context(|| format!("reading load token file {}", path.display()))?
        .trim()
        .to_owned();
    if token.len() < MIN_TOKEN_LEN {
        bail!(
            "load token in {} is shorter than {MIN_TOKEN_LEN} characters; use e.g. `openssl rand -hex 16`",
            path.display()
        );
    }
    Ok(token)
}

/// Checks a request's credentials and source, then parses its report.
pub fn authorise(request: &Request<Bytes>, from: IpAddr, token: &str) -> Result<Report, LoadError> {
    let presented = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(LoadError::Unauthorised)?;
    if !constant_time_eq(presented.trim().as_bytes(), token.as_bytes()) {
        return Err(LoadError::Unauthorised);
    }
    let report = parse_report(request.body())?;
    let from = from.to_canonical();
    if report.worker != from {
        return Err(LoadError::WrongSource {
            worker: report.worker,
            from,
        });
    }
    Ok(report)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Serves `POST /load` until the task is dropped, at most `cap`
/// connections at once; `accept` applies a report or says why not.
pub async fn serve<F, A>(listener: TcpListener, cap: usize, token: String, accept: F)
where
    F: Fn(Report) -> A + Send + Sync + 'static,
    A: std::future::Future<Output = Result<(), String>> + Send,
{
    let token = Arc::new(token);
    let accept = Arc::new(accept);
    http::serve(
        listener,
        "load report endpoint",
        cap,
        move |request, from: SocketAddr| {
            let (token, accept) = (token.clone(), accept.clone());
            async move { answer(&request, from.ip(), &token, accept.as_ref()).await }
        },
    )
    .await;
}

async fn answer<F, A>(request: &Request<Bytes>, from: IpAddr, token: &str, accept: &F) -> Answer
where
    F: Fn(Report) -> A,
    A: std::future::Future<Output = Result<(), String>>,
{
    if request.uri().path() != "/load" {
        return Answer::text(StatusCode::NOT_FOUND, "only /load is served here");
    }
    if request.method() != Method::POST {
        return Answer::text(StatusCode::METHOD_NOT_ALLOWED, "use POST /load");
    }
    let accepted = match authorise(request, from, token) {
        Ok(report) => accept(report).await.map_err(LoadError::Refused),
        Err(error) => Err(error),
    };
    match accepted {
        Ok(()) => Answer::text(StatusCode::NO_CONTENT, ""),
        Err(error) => Answer::text(error.status(), error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef0123";

    #[test]
    fn token_files_must_be_lb_s_alone() {
        use std::os::unix::fs::PermissionsExt as _;
        let path = std::env::temp_dir().join(format!("lb-token-test-{}", std::process::id()));
        std::fs::write(&path, format!("{TOKEN}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let error = read_token(&path).unwrap_err().to_string();
        assert!(
            error.contains("mode 640") && error.contains("chmod 600"),
            "{error}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_token(&path).unwrap(), TOKEN);
        if crate::kernel::private::euid() == 0 {
            std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
            let error = read_token(&path).unwrap_err().to_string();
            assert!(
                error.contains("belongs to uid 65534") && error.contains("chown root:"),
                "{error}"
            );
        }
        std::fs::remove_file(&path).unwrap();
    }

    fn request(auth: Option<&str>, body: &str) -> Request<Bytes> {
        let mut request = Request::post("/load");
        if let Some(auth) = auth {
            request = request.header(AUTHORIZATION, auth);
        }
        request.body(Bytes::from(body.to_owned())).unwrap()
    }

    const GOOD: &str = r#"{"vip":"192.0.2.100:80/tcp","worker":"192.0.2.11","load":0.73}"#;

    #[test]
    fn a_worker_with_the_token_reports_for_itself() {
        let from: IpAddr = "192.0.2.11".parse().unwrap();
        let bearer = format!("Bearer {TOKEN}");
        let report = authorise(&request(Some(&bearer), GOOD), from, TOKEN).unwrap();
        assert_eq!(report.load, 0.73);
        let mapped: IpAddr = "::ffff:192.0.2.11".parse().unwrap();
        authorise(&request(Some(&bearer), GOOD), mapped, TOKEN).unwrap();
    }

    #[test]
    fn bad_reports_are_refused_with_the_right_status() {
        let from: IpAddr = "192.0.2.11".parse().unwrap();
        let bearer = format!("Bearer {TOKEN}");
        let cases = [
            (request(None, GOOD), from, 401),
            (request(Some("Bearer wrong-token-wrong"), GOOD), from, 401),
            (request(Some(TOKEN), GOOD), from, 401),
            (
                request(Some(&bearer), GOOD),
                "192.0.2.12".parse().unwrap(),
                403,
            ),
            (request(Some(&bearer), "{"), from, 400),
            (
                request(
                    Some(&bearer),
                    r#"{"vip":"192.0.2.100:80/tcp","worker":"192.0.2.11","load":"high"}"#,
                ),
                from,
                400,
            ),
            (
                request(
                    Some(&bearer),
                    r#"{"vip":"192.0.2.100:80/tcp","worker":"192.0.2.11","load":1.5}"#,
                ),
                from,
                422,
            ),
            (
                request(
                    Some(&bearer),
                    r#"{"vip":"192.0.2.100:80/tcp","worker":"192.0.2.11","load":-0.1}"#,
                ),
                from,
                422,
            ),
            (
                request(
                    Some(&bearer),
                    r#"{"vip":"192.0.2.100:80","worker":"192.0.2.11","load":0.1}"#,
                ),
                from,
                400,
            ),
            (
                request(
                    Some(&bearer),
                    r#"{"vip":"192.0.2.100:80/tcp","worker":"192.0.2.11","load":0.1,"x":1}"#,
                ),
                from,
                400,
            ),
        ];
        for (request, from, status) in cases {
            let error = authorise(&request, from, TOKEN).unwrap_err();
            assert_eq!(error.status().as_u16(), status, "{request:?}: {error}");
        }
    }

    #[test]
    fn figures_expire_and_scale() {
        let at = Instant::now();
        let figure = Figure {
            load: 0.5,
            source: Source::Cli,
            at,
        };
        assert_eq!(figure.current(at, Duration::from_secs(10)), Some(0.5));
        assert_eq!(
            figure.current(at + Duration::from_secs(10), Duration::from_secs(10)),
            None
        );
        assert_eq!(scaled(Some(0.5)), LOAD_SCALE / 2);
        assert_eq!(scaled(None), LOAD_UNKNOWN);
        assert!(scaled_flows(10, 200) < scaled_flows(10, 100));
        assert!(scaled_flows(u64::MAX, 1) < LOAD_UNKNOWN);
    }

    /// POSTs `body` to `path` with `auth`; the status and body answered.
    async fn post(
        addr: std::net::SocketAddr,
        method: &str,
        path: &str,
        auth: &str,
        body: &str,
    ) -> (u16, String) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: lb\r\n{auth}Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        let status = answer[9..12].parse().unwrap();
        let text = answer.split_once("\r\n\r\n").unwrap().1.to_owned();
        (status, text)
    }

    #[tokio::test]
    async fn the_endpoint_answers_each_report_with_its_status_and_why() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, 4, TOKEN.into(), |report| {
            let verdict = match report.vip.to_string().as_str() {
                "127.0.0.1:80/tcp" => Ok(()),
                vip => Err(format!("no VIP {vip}")),
            };
            std::future::ready(verdict)
        }));
        let bearer = format!("Authorization: Bearer {TOKEN}\r\n");
        let good = r#"{"vip":"127.0.0.1:80/tcp","worker":"127.0.0.1","load":0.5}"#;
        let elsewhere = good.replace(":80/", ":81/");
        let cases = [
            ("POST", "/load", bearer.as_str(), good, 204, ""),
            ("GET", "/load", &bearer, good, 405, "use POST /load"),
            ("POST", "/", &bearer, good, 404, "only /load is served here"),
            (
                "POST",
                "/load",
                "",
                good,
                401,
                "unauthorised: send the token from --load-token-file as `Authorization: Bearer <token>`",
            ),
            ("POST", "/load", &bearer, &elsewhere, 404, "no VIP 127.0.0.1:81/tcp"),
        ];
        for (method, path, auth, body, status, text) in cases {
            assert_eq!(
                post(addr, method, path, auth, body).await,
                (status, text.to_owned()),
                "{method} {path} {auth} {body}"
            );
        }
    }
}
