//! Taking connections so that no peer can stop the controller. Each
//! listener (admin socket, load reports, metrics) holds at most a fixed
//! number of connections at once, and makes room for a new one by closing
//! one that has sent no whole request yet ([`Gate`]), so peers that
//! connect and stall can neither exhaust the controller's descriptors nor
//! keep others waiting. A failed accept (out of descriptors, a connection
//! aborted before it was taken, …) is logged and retried after a pause
//! that grows, and never ends the listener: the descriptors that map
//! updates, health checks and the state file need stay free whatever
//! peers do.

use std::{
    collections::{BTreeMap, HashMap},
    future::Future,
    io,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::{
    net::{TcpListener, TcpSocket},
    sync::{oneshot, Notify},
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

/// One peer address holds at most this share of a TCP listener's slots
/// (a quarter: at least four addresses share each listener), so a single
/// host can't take every slot with requests it sends whole and then
/// leaves unread.
const PEER_SHARE: usize = 4;

/// One listener's connection slots and accept-error handling.
///
/// A listener that waited for a free slot before accepting would leave
/// new peers in the kernel's backlog behind whoever filled it: a few
/// hundred connections that send nothing (a slowloris) would hold every
/// scrape, load report or `lb status` for as long as they kept coming.
/// So the gate accepts whenever it can make room, and makes it by closing
/// a connection that has not sent a whole request yet, from the peer
/// address that holds the most, the oldest first. A connection that has
/// sent its request is never closed for room: it is being answered. On a
/// TCP listener, one address holds at most a quarter of the slots; past
/// that, its own oldest connection without a request is closed, or the
/// new one when it has none. Each closed connection's descriptor is freed
/// before the next is taken, so a listener holds at most one connection
/// over its cap.
pub struct Gate {
    shared: Arc<Shared>,
    cap: usize,
    per_peer: Option<usize>,
    backoff: Backoff,
    closures: Closures,
}

/// What a gate and its connections' tasks share.
struct Shared {
    table: Mutex<Table>,
    /// Told whenever a connection ends and frees its slot.
    freed: Notify,
}

impl Shared {
    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        // Nothing panics while holding the lock; a poisoned table is
        // still whole.
        self.table
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The connections a gate holds.
#[derive(Default)]
struct Table {
    next: u64,
    /// By id, which is the order they were accepted in: oldest first.
    held: BTreeMap<u64, Held>,
}

/// One held connection.
struct Held {
    /// The peer's address; none on the admin socket.
    peer: Option<IpAddr>,
    /// It has sent a whole request and is being answered.
    busy: bool,
    /// Dropping it tells the connection's task to close; `None` once it
    /// was told and the descriptor is on its way to being freed.
    close: Option<oneshot::Sender<()>>,
}

impl Held {
    fn live(&self) -> bool {
        self.close.is_some()
    }

    /// Whether it may be closed to make room.
    fn idle(&self) -> bool {
        self.live() && !self.busy
    }
}

impl Table {
    fn live(&self) -> impl Iterator<Item = (&u64, &Held)> {
        self.held.iter().filter(|(_, held)| held.live())
    }

    /// Whether a new connection may be taken now: a slot is free, or one
    /// can be freed and no connection closed for room is still being
    /// torn down (which bounds the descriptors held at the cap plus one).
    fn has_room(&self, cap: usize) -> bool {
        let closing = self.held.values().any(|held| !held.live());
        self.held.len() < cap || (!closing && self.held.values().any(Held::idle))
    }

    /// The connection to close for room: one without a request, of the
    /// peer address that holds the most, the oldest of those.
    fn victim(&self) -> Option<u64> {
        let mut holding: HashMap<Option<IpAddr>, usize> = HashMap::new();
        for (_, held) in self.live() {
            *holding.entry(held.peer).or_default() += 1;
        }
        self.held
            .iter()
            .filter(|(_, held)| held.idle())
            .max_by_key(|(id, held)| (holding[&held.peer], std::cmp::Reverse(**id)))
            .map(|(id, _)| *id)
    }

    /// `peer`'s oldest connection without a request.
    fn oldest_idle_of(&self, peer: IpAddr) -> Option<u64> {
        self.held
            .iter()
            .find(|(_, held)| held.idle() && held.peer == Some(peer))
            .map(|(id, _)| *id)
    }

    /// Tells connection `id` to close; returns its peer.
    fn close(&mut self, id: u64) -> Option<IpAddr> {
        let held = self.held.get_mut(&id)?;
        held.close = None;
        held.peer
    }
}

/// Why the gate closed a connection, counted between two log lines.
#[derive(Default)]
struct Closures {
    /// Closed to make room for a newer connection.
    for_room: u64,
    /// Closed because its address held its share of the slots.
    over_share: u64,
    /// New connections refused: their address held its share, each
    /// connection busy with a request.
    refused: u64,
    /// The address of the last one.
    last_peer: Option<IpAddr>,
    last_logged: Option<Instant>,
}

impl Closures {
    fn any(&self) -> bool {
        self.for_room + self.over_share + self.refused > 0
    }

    /// Logs what was closed, at most every [`LOG_EVERY`]: a flood of
    /// connections is worth a line, not a line per connection.
    fn report(&mut self, what: &str, cap: usize, now: Instant) {
        if !self.any()
            || self
                .last_logged
                .is_some_and(|at| now.saturating_duration_since(at) < LOG_EVERY)
        {
            return;
        }
        let from = self
            .last_peer
            .map_or_else(String::new, |peer| format!(" (the last from {peer})"));
        let refused = format!(
            "refused {} new connections from addresses whose quarter of the slots was busy with requests",
            self.refused
        );
        let closed = self.for_room + self.over_share;
        if closed == 0 {
            tracing::warn!("the {what} {refused}{from}");
        } else {
            let mut why = Vec::new();
            if self.for_room > 0 {
                why.push(format!("{} as all {cap} slots were taken", self.for_room));
            }
            if self.over_share > 0 {
                why.push(format!(
                    "{} as their address held its quarter of the slots",
                    self.over_share
                ));
            }
            if self.refused > 0 {
                why.push(format!("and {refused}"));
            }
            tracing::warn!(
                "the {what} closed {closed} connections that had sent no whole request, to make room for newer ones: {}{from}; clients should send their request as soon as they connect",
                why.join(", "),
            );
        }
        let last_logged = Some(now);
        *self = Self {
            last_logged,
            ..Self::default()
        };
    }
}

impl Gate {
    /// A gate of `cap` slots for the listener called `what` in logs,
    /// whose peers have no address (a Unix socket).
    pub fn new(what: &'static str, cap: usize) -> Self {
        Self {
            shared: Arc::new(Shared {
                table: Mutex::new(Table::default()),
                freed: Notify::new(),
            }),
            cap: cap.max(1),
            per_peer: None,
            backoff: Backoff::new(what),
            closures: Closures::default(),
        }
    }

    /// A gate of `cap` slots for a TCP listener, of which one peer
    /// address holds at most a quarter.
    pub fn per_address(what: &'static str, cap: usize) -> Self {
        Self {
            per_peer: Some((cap / PEER_SHARE).max(1)),
            ..Self::new(what, cap)
        }
    }

    /// Waits until there is room, then for a connection from `accept`,
    /// and returns it with its slot; `peer` tells its address. Serve the
    /// connection within [`Slot::hold`], which ends it when the gate
    /// closes it for room. Failed accepts are retried, never returned.
    pub async fn next<T, F, Fut>(
        &mut self,
        mut accept: F,
        peer: impl Fn(&T) -> Option<IpAddr>,
    ) -> (T, Slot)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = io::Result<T>>,
    {
        loop {
            self.room().await;
            let connection = self.accept(&mut accept).await;
            let admitted = self.admit(peer(&connection));
            self.closures
                .report(self.backoff.what, self.cap, Instant::now());
            if let Some(slot) = admitted {
                return (connection, slot);
            }
        }
    }

    /// Waits until [`Table::has_room`].
    async fn room(&self) {
        loop {
            // `notify_one` keeps a wake-up for a waiter yet to come, so a
            // slot freed between the check and the wait is not missed.
            if self.shared.table().has_room(self.cap) {
                return;
            }
            self.shared.freed.notified().await;
        }
    }

    async fn accept<T, F, Fut>(&mut self, accept: &mut F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = io::Result<T>>,
    {
        loop {
            match accept().await {
                Ok(connection) => {
                    self.backoff.succeeded();
                    return connection;
                }
                Err(error) => {
                    let pause = self.backoff.failed(&error, Instant::now());
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    /// Makes room for a new connection from `peer` and gives it a slot,
    /// or refuses it (`None`) when its address holds its share and every
    /// one of those connections is busy with a request.
    fn admit(&mut self, peer: Option<IpAddr>) -> Option<Slot> {
        let mut table = self.shared.table();
        if let (Some(share), Some(addr)) = (self.per_peer, peer) {
            let holding = table
                .live()
                .filter(|(_, held)| held.peer == Some(addr))
                .count();
            if holding >= share {
                self.closures.last_peer = Some(addr);
                let Some(id) = table.oldest_idle_of(addr) else {
                    self.closures.refused += 1;
                    return None;
                };
                table.close(id);
                self.closures.over_share += 1;
            }
        }
        if table.live().count() >= self.cap {
            // With none to close (every connection became busy since
            // `room`), the new one is held over the cap until one ends.
            if let Some(id) = table.victim() {
                self.closures.last_peer = table.close(id);
                self.closures.for_room += 1;
            }
        }
        let id = table.next;
        table.next += 1;
        let (close, closed) = oneshot::channel();
        table.held.insert(
            id,
            Held {
                peer,
                busy: false,
                close: Some(close),
            },
        );
        Some(Slot {
            shared: self.shared.clone(),
            id,
            closed,
        })
    }
}

/// A connection's place in its gate: freed when dropped.
pub struct Slot {
    shared: Arc<Shared>,
    id: u64,
    closed: oneshot::Receiver<()>,
}

impl Slot {
    /// What the connection's server uses to say it has a whole request.
    pub fn marker(&self) -> Marker {
        Marker {
            shared: self.shared.clone(),
            id: self.id,
        }
    }

    /// Runs `connection` until it ends or the gate closes it to make
    /// room (which drops it, and with it the socket); then frees the slot.
    pub async fn hold(mut self, connection: impl Future<Output = ()>) {
        tokio::select! {
            biased;
            _ = &mut self.closed => {}
            () = connection => {}
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.shared.table().held.remove(&self.id);
        self.shared.freed.notify_one();
    }
}

/// See [`Slot::marker`].
#[derive(Clone)]
pub struct Marker {
    shared: Arc<Shared>,
    id: u64,
}

impl Marker {
    /// Marks the connection busy: it has sent a whole request, which is
    /// about to be carried out, so it is no longer closed to make room.
    /// False when the gate closed it already: then don't carry the
    /// request out, as its answer could not be sent.
    pub fn busy(&self) -> bool {
        match self.shared.table().held.get_mut(&self.id) {
            Some(held) if held.live() => {
                held.busy = true;
                true
            }
            _ => false,
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

/// Connections the kernel holds for a TCP listener between two accepts, or
/// while every slot is busy answering a request: they wait there, at no
/// descriptor's cost, rather than being refused.
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
        let (value, _slot) = gate
            .next(
                || {
                    tries += 1;
                    std::future::ready(results.pop().unwrap())
                },
                |_| None,
            )
            .await;
        assert_eq!((value, tries), (7, 4));
    }

    /// A connection held by a gate: its task serves nothing until the
    /// gate closes it.
    struct Conn {
        peer: IpAddr,
        task: tokio::task::JoinHandle<()>,
        marker: Marker,
    }

    impl Conn {
        /// Whether the gate has closed it (its task ended).
        async fn closed(&self) -> bool {
            // Let a task that was told to close run to its end.
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            self.task.is_finished()
        }
    }

    /// The next connection from the first of `peers` the gate admits.
    async fn take(gate: &mut Gate, peers: &[IpAddr]) -> Conn {
        let mut queue = peers.iter().copied();
        let (peer, slot) = gate
            .next(
                || std::future::ready(queue.next().ok_or_else(emfile)),
                |peer| Some(*peer),
            )
            .await;
        let marker = slot.marker();
        let task = tokio::spawn(slot.hold(std::future::pending()));
        Conn { peer, task, marker }
    }

    fn addr(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    #[tokio::test]
    async fn a_full_gate_closes_the_oldest_connection_without_a_request() {
        let mut gate = Gate::new("test listener", 2);
        let first = take(&mut gate, &[addr(1)]).await;
        let second = take(&mut gate, &[addr(1)]).await;
        let third = take(&mut gate, &[addr(1)]).await;
        assert!(first.closed().await);
        assert!(!second.closed().await && !third.closed().await);
        assert!(!first.marker.busy(), "a closed connection can't turn busy");
        assert!(second.marker.busy());
        let fourth = take(&mut gate, &[addr(1)]).await;
        assert!(!second.closed().await, "a busy connection is kept");
        assert!(third.closed().await && !fourth.closed().await);
    }

    #[tokio::test]
    async fn a_gate_full_of_busy_connections_waits_for_one_to_end() {
        let mut gate = Gate::new("test listener", 2);
        let first = take(&mut gate, &[addr(1)]).await;
        let second = take(&mut gate, &[addr(1)]).await;
        assert!(first.marker.busy() && second.marker.busy());
        let waited =
            tokio::time::timeout(Duration::from_millis(100), take(&mut gate, &[addr(1)])).await;
        assert!(waited.is_err(), "a third connection was taken");
        first.task.abort();
        let third = take(&mut gate, &[addr(1)]).await;
        assert!(!second.closed().await && !third.closed().await);
    }

    #[tokio::test]
    async fn room_is_made_from_the_address_that_holds_the_most() {
        let mut gate = Gate::new("test listener", 4);
        let lone = take(&mut gate, &[addr(1)]).await;
        let flood: Vec<Conn> = vec![
            take(&mut gate, &[addr(2)]).await,
            take(&mut gate, &[addr(2)]).await,
        ];
        let other = take(&mut gate, &[addr(3)]).await;
        let newcomer = take(&mut gate, &[addr(4)]).await;
        assert!(flood[0].closed().await, "the flood's oldest goes first");
        for conn in [&lone, &flood[1], &other, &newcomer] {
            assert!(!conn.closed().await, "{} was closed", conn.peer);
        }
    }

    #[tokio::test]
    async fn one_address_holds_at_most_a_quarter_of_the_slots() {
        let mut gate = Gate::per_address("test listener", 8);
        let a1 = take(&mut gate, &[addr(1)]).await;
        let a2 = take(&mut gate, &[addr(1)]).await;
        let b = take(&mut gate, &[addr(2)]).await;
        // A third from the same address: its own oldest makes room,
        // though the gate has free slots.
        let a3 = take(&mut gate, &[addr(1)]).await;
        assert!(a1.closed().await);
        assert!(!a2.closed().await && !a3.closed().await && !b.closed().await);
        // With both busy, another from it is refused; the next peer is
        // taken.
        assert!(a2.marker.busy() && a3.marker.busy());
        let next = take(&mut gate, &[addr(1), addr(3)]).await;
        assert_eq!(next.peer, addr(3));
        assert!(!a2.closed().await && !a3.closed().await);
    }

    #[tokio::test]
    async fn a_full_gate_takes_a_new_connection_over_a_stalled_one() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stalled: Vec<_> = connect_many(addr, 3).await;
        let mut gate = Gate::new("test listener", 2);
        let mut held = Vec::new();
        for _ in 0..3 {
            let (stream, slot) = gate.next(|| listener.accept(), |_| None).await;
            held.push(tokio::spawn(slot.hold(async move {
                let _stream = stream;
                std::future::pending::<()>().await;
            })));
        }
        // The first was closed (and its socket with it) to make room.
        let mut first = stalled.into_iter().next().unwrap();
        let mut buf = [0; 1];
        let read = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::io::AsyncReadExt::read(&mut first, &mut buf),
        )
        .await
        .expect("the stalled connection was closed");
        assert_eq!(read.unwrap(), 0);
    }

    async fn connect_many(addr: std::net::SocketAddr, n: usize) -> Vec<tokio::net::TcpStream> {
        let mut streams = Vec::new();
        for _ in 0..n {
            streams.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        streams
    }
}
