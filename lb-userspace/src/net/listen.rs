//! Taking connections so that no peer can stop the controller. Each
//! listener (admin socket, load reports, metrics) holds at most a fixed
//! number of connections at once; the rest wait in the kernel's backlog,
//! where they cost the controller no descriptor. A failed accept (out of
//! descriptors, a connection aborted before it was taken, …) is logged and
//! retried after a pause that grows, and never ends the listener: the
//! descriptors that map updates, health checks and the state file need
//! stay free whatever peers do.

use std::{
    future::Future,
    io,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{
    net::{TcpListener, TcpSocket},
    sync::{OwnedSemaphorePermit, Semaphore},
};

/// Descriptors kept for the controller's own work, beyond its listeners'
/// connections: the maps, program and link, netlink sockets, the state
/// file, standard streams, the runtime, and one socket per health check or
/// load probe in flight for a few hundred workers.
pub const RESERVED_DESCRIPTORS: u64 = 256;
/// The descriptor limit the systemd unit sets (`LimitNOFILE`): room for the
/// caps, the reserve, and health checks of tens of thousands of workers.
pub const RECOMMENDED_DESCRIPTORS: u64 = 65_536;
/// First pause after a failed accept.
const FIRST_PAUSE: Duration = Duration::from_millis(10);
/// Longest pause between failed accepts.
const LONGEST_PAUSE: Duration = Duration::from_secs(1);
/// At most one log line per listener this often while accepts fail.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// How many connections each listener holds at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caps {
    /// The admin socket.
    pub admin: usize,
    /// The load report endpoint.
    pub load: usize,
    /// The metrics endpoint.
    pub metrics: usize,
}

impl Caps {
    /// The caps when descriptors are plenty.
    pub const FULL: Self = Self {
        admin: 64,
        load: 256,
        metrics: 16,
    };

    /// [`Caps::FULL`], scaled down (each at least 1) when `limit`
    /// descriptors can't hold them and [`RESERVED_DESCRIPTORS`] too.
    pub fn within(limit: u64) -> Self {
        let full = Self::FULL;
        let total = (full.admin + full.load + full.metrics) as u64;
        let budget = limit.saturating_sub(RESERVED_DESCRIPTORS);
        if budget >= total {
            return full;
        }
        let scale = |cap: usize| ((cap as u64 * budget / total) as usize).max(1);
        Self {
            admin: scale(full.admin),
            load: scale(full.load),
            metrics: scale(full.metrics),
        }
    }

    /// The caps for this process: raises its descriptor limit, fits the
    /// caps in it and says so when they had to shrink.
    pub fn for_this_process() -> Self {
        let limit = match raise_descriptor_limit() {
            Ok(limit) => limit,
            Err(error) => {
                tracing::warn!("reading the open-file limit: {error}; assuming 1024");
                1024
            }
        };
        let caps = Self::within(limit);
        if caps == Self::FULL {
            tracing::debug!(
                "connection caps: admin {}, load reports {}, metrics {} (open-file limit {limit})",
                caps.admin,
                caps.load,
                caps.metrics
            );
        } else {
            tracing::warn!(
                "the open-file limit is {limit}: connection caps lowered to admin {}, load reports {}, metrics {}; raise it to {RECOMMENDED_DESCRIPTORS} (LimitNOFILE= under systemd, `ulimit -n` in a shell)",
                caps.admin,
                caps.load,
                caps.metrics
            );
        }
        caps
    }
}

/// Raises the soft limit on open descriptors to the hard one and returns
/// the limit in force. The soft default of 1,024 exists for programs that
/// use select(); lb polls with epoll and has no use for it.
pub fn raise_descriptor_limit() -> io::Result<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let current = limit.current.unwrap_or(u64::MAX);
    match limit.maximum {
        Some(maximum) if current < maximum => {
            let raised = Rlimit {
                current: Some(maximum),
                maximum: Some(maximum),
            };
            Ok(setrlimit(Resource::Nofile, raised).map_or(current, |()| maximum))
        }
        _ => Ok(current),
    }
}

/// One listener's connection slots and accept-error handling.
pub struct Gate {
    slots: Arc<Semaphore>,
    backoff: Backoff,
}

impl Gate {
    /// A gate of `cap` slots for the listener called `what` in logs.
    pub fn new(what: &'static str, cap: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(cap.max(1))),
            backoff: Backoff::new(what),
        }
    }

    /// Waits for a free slot, then for a connection from `accept`; the
    /// slot is freed when the returned permit is dropped, so keep it with
    /// the connection. Failed accepts are retried, never returned.
    pub async fn next<T, F, Fut>(&mut self, mut accept: F) -> (T, OwnedSemaphorePermit)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = io::Result<T>>,
    {
        let permit = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .unwrap_or_else(|_| unreachable!("the semaphore is never closed"));
        loop {
            match accept().await {
                Ok(connection) => {
                    self.backoff.succeeded();
                    return (connection, permit);
                }
                Err(error) => {
                    let pause = self.backoff.failed(&error, Instant::now());
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }
}

/// Pauses that double from [`FIRST_PAUSE`] to [`LONGEST_PAUSE`] while
/// accepts fail, and a log line at most every [`LOG_EVERY`].
struct Backoff {
    what: &'static str,
    pause: Duration,
    last_logged: Option<Instant>,
    unlogged: u64,
}

impl Backoff {
    fn new(what: &'static str) -> Self {
        Self {
            what,
            pause: FIRST_PAUSE,
            last_logged: None,
            unlogged: 0,
        }
    }

    fn succeeded(&mut self) {
        self.pause = FIRST_PAUSE;
    }

    /// Logs the failure if it is time to; returns how long to pause.
    fn failed(&mut self, error: &io::Error, now: Instant) -> Duration {
        let pause = self.pause;
        self.pause = (pause * 2).min(LONGEST_PAUSE);
        if self
            .last_logged
            .is_some_and(|at| now.saturating_duration_since(at) < LOG_EVERY)
        {
            self.unlogged += 1;
            return pause;
        }
        let also = match self.unlogged {
            0 => String::new(),
            n => format!(" ({n} more failed accepts since the last report)"),
        };
        tracing::warn!(
            "accepting a connection on the {} failed: {error}{also}; retrying in {}{}",
            self.what,
            crate::duration::format(pause),
            advice(error)
        );
        self.last_logged = Some(now);
        self.unlogged = 0;
        pause
    }
}

/// What to do about an accept error, when there is something to do.
fn advice(error: &io::Error) -> &'static str {
    match error.raw_os_error() {
        Some(libc::EMFILE) => {
            "; the controller is out of file descriptors: raise its open-file limit (LimitNOFILE=65536 under systemd)"
        }
        Some(libc::ENFILE) => {
            "; the system is out of file descriptors: raise fs.file-max or find what holds them"
        }
        Some(libc::ENOBUFS | libc::ENOMEM) => "; the system is short of memory",
        _ => "",
    }
}

/// Connections the kernel holds for a TCP listener that is at its cap:
/// they wait there, at no descriptor's cost, rather than being refused.
const TCP_BACKLOG: u32 = 1024;

/// A TCP listener with room for [`TCP_BACKLOG`] waiting connections.
pub fn bind_tcp(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(TCP_BACKLOG)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_fit_within_the_limit_and_leave_the_reserve() {
        assert_eq!(Caps::within(RECOMMENDED_DESCRIPTORS), Caps::FULL);
        assert_eq!(Caps::within(1024), Caps::FULL);
        for limit in [0u64, 16, 256, 300, 400, 591] {
            let caps = Caps::within(limit);
            assert!(caps.admin >= 1 && caps.load >= 1 && caps.metrics >= 1);
            let used = (caps.admin + caps.load + caps.metrics) as u64;
            assert!(
                used <= limit.saturating_sub(RESERVED_DESCRIPTORS).max(3),
                "{limit}: {caps:?}"
            );
        }
    }

    fn emfile() -> io::Error {
        io::Error::from_raw_os_error(libc::EMFILE)
    }

    #[test]
    fn pauses_double_up_to_a_second_and_start_over_after_a_success() {
        let mut backoff = Backoff::new("test listener");
        let now = Instant::now();
        let pauses: Vec<u128> = (0..9)
            .map(|_| backoff.failed(&emfile(), now).as_millis())
            .collect();
        assert_eq!(pauses, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        backoff.succeeded();
        assert_eq!(backoff.failed(&emfile(), now), FIRST_PAUSE);
    }

    #[test]
    fn failures_are_logged_at_most_every_ten_seconds_with_a_count() {
        let mut backoff = Backoff::new("test listener");
        let start = Instant::now();
        backoff.failed(&emfile(), start);
        for second in 1..10 {
            backoff.failed(&emfile(), start + Duration::from_secs(second));
        }
        assert_eq!(backoff.unlogged, 9);
        assert_eq!(backoff.last_logged, Some(start));
        let later = start + LOG_EVERY;
        backoff.failed(&emfile(), later);
        assert_eq!((backoff.unlogged, backoff.last_logged), (0, Some(later)));
    }

    #[tokio::test]
    async fn failed_accepts_are_retried_until_one_succeeds() {
        let mut gate = Gate::new("test listener", 1);
        let mut results = vec![
            Ok(7),
            Err(io::Error::from_raw_os_error(libc::ECONNABORTED)),
            Err(io::Error::from_raw_os_error(libc::ENFILE)),
            Err(emfile()),
        ];
        let mut tries = 0;
        let (value, _permit) = gate
            .next(|| {
                tries += 1;
                std::future::ready(results.pop().unwrap())
            })
            .await;
        assert_eq!((value, tries), (7, 4));
    }

    #[tokio::test]
    async fn a_full_gate_waits_for_a_slot_before_accepting() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _clients: Vec<_> = connect_many(addr, 3).await;
        let mut gate = Gate::new("test listener", 2);
        let (_first, first_slot) = gate.next(|| listener.accept()).await;
        let (_second, _second_slot) = gate.next(|| listener.accept()).await;
        let third =
            tokio::time::timeout(Duration::from_millis(100), gate.next(|| listener.accept())).await;
        assert!(third.is_err(), "a third connection was taken");
        drop(first_slot);
        let (_third, _slot) = gate.next(|| listener.accept()).await;
    }

    async fn connect_many(addr: std::net::SocketAddr, n: usize) -> Vec<tokio::net::TcpStream> {
        let mut streams = Vec::new();
        for _ in 0..n {
            streams.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        streams
    }
}
