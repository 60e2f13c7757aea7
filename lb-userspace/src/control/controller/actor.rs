//! The controller as an actor: one OS thread owns the [`Controller`] and
//! takes messages from a channel, so its map, netlink and file work never
//! blocks the async runtime and nothing waits on a lock. Messages that
//! arrive together are handled as one batch: each VIP's Maglev table is
//! rebuilt once and the state file written once at the batch's end, and
//! admin requests are answered only then.
//!
//! The channel is std's rather than tokio's: sending never blocks (it is
//! unbounded) so async code may send, and `recv_timeout` lets the thread
//! release answers held for a new worker's MAC on time. A second thread
//! listens for the kernel's notices of neighbour and route changes and
//! tells the controller to look again, so a worker resolves, its host
//! fails, or the way to it changes the moment the kernel knows.
//!
//! The actor runs any [`Control`], and its channel and flags come from
//! [`sync`], so that the schedule tests run this very code under
//! shuttle's scheduler with a model of the controller.

use std::{
    collections::HashMap,
    sync::{atomic::Ordering, Arc},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use tokio::sync::{oneshot, watch};

use self::sync::{
    mpsc::{self, Receiver, RecvTimeoutError, Sender},
    AtomicBool,
};
use super::{Controller, Flushed, MetricsSnapshot, Pending};
use crate::{
    admin::protocol::{too_late, Deadline, Request, Response},
    checks::health,
    checks::load,
    dataplane::activity::Scan,
    kernel::netlink::{ChangeNotices, Changes},
};

/// How long the answer to adding a worker waits for its MAC (other
/// messages are handled meanwhile): a worker that resolves by then is
/// scheduled when the command returns, as users and scripts expect.
const RESOLVE_WAIT: Duration = Duration::from_millis(500);
/// Shortest time between two rounds of notices handed to the controller.
const NOTICE_PAUSE: Duration = Duration::from_millis(20);
/// At most this many messages make one batch, so a flood of reports can't
/// hold back the answers to admin requests for long.
const MAX_BATCH: usize = 4096;

/// std's channel and flags, or shuttle's in the unit tests: shuttle
/// decides which thread runs at each send, receive and flag, and so
/// explores the schedules these allow. (Shuttle's panic outside a shuttle
/// test, so a unit test may start the actor only under shuttle.)
mod sync {
    #[cfg(not(test))]
    pub use std::sync::{atomic::AtomicBool, mpsc};

    #[cfg(test)]
    pub use shuttle::sync::{atomic::AtomicBool, mpsc};
}

/// What the controller thread is asked to do.
pub enum Message {
    /// An admin request, answered once its change is installed and saved;
    /// refused untouched once the deadline its client sent has passed.
    Admin(Box<Request>, Option<Deadline>, oneshot::Sender<Response>),
    /// One round of a health checker.
    Check(health::Report),
    /// A load report pushed by a worker, answered with whether it applied.
    Load(load::Report, oneshot::Sender<Result<(), String>>),
    /// A metrics snapshot.
    Metrics(oneshot::Sender<MetricsSnapshot>),
    /// The once-a-second housekeeping: a flow-table scan when one was due,
    /// and the sticky-session count when sessions were expired.
    Tick {
        /// The scan's result.
        scan: Option<Scan>,
        /// Sessions left after expiry.
        sessions: Option<u64>,
        /// NAT entries by source slot at the last sweep.
        nat_entries: Option<Box<crate::dataplane::nat::NatEntries>>,
    },
    /// The kernel changed a neighbour of the interface: read the table.
    Neighbours,
    /// The kernel changed a route: look up the next hops of L3 workers.
    Routes,
    /// A route of lb's announcements changed (lb's own write, or someone
    /// else's): read the table again.
    Announced,
    /// Stop and hand the controller back.
    Stop,
}

/// The async side's way to the controller thread.
#[derive(Clone)]
pub struct Handle {
    sender: Sender<Message>,
}

/// Why the controller could not answer.
#[derive(Debug, thiserror::Error)]
#[error("the controller thread has stopped")]
pub struct Stopped;

impl Handle {
    /// Carries out an admin request, unless `deadline` has passed by the
    /// time the controller takes it.
    pub async fn request(
        &self,
        request: Request,
        deadline: Option<Deadline>,
    ) -> Result<Response, Stopped> {
        let (reply, answer) = oneshot::channel();
        self.send(Message::Admin(Box::new(request), deadline, reply))?;
        answer.await.map_err(|_| Stopped)
    }

    /// Applies a pushed load report.
    pub async fn push_load(&self, report: load::Report) -> Result<Result<(), String>, Stopped> {
        let (reply, answer) = oneshot::channel();
        self.send(Message::Load(report, reply))?;
        answer.await.map_err(|_| Stopped)
    }

    /// A metrics snapshot; blocks, so only for threads outside the runtime.
    pub fn metrics_blocking(&self) -> Result<MetricsSnapshot, Stopped> {
        let (reply, answer) = oneshot::channel();
        self.send(Message::Metrics(reply))?;
        answer.blocking_recv().map_err(|_| Stopped)
    }

    /// Sends a message without waiting.
    pub fn send(&self, message: Message) -> Result<(), Stopped> {
        self.sender.send(message).map_err(|_| Stopped)
    }

    /// Where health checkers report.
    pub fn check_sink(&self) -> health::Sink {
        let sender = self.sender.clone();
        std::sync::Arc::new(move |report| sender.send(Message::Check(report)).is_ok())
    }
}

/// What the controller thread publishes after each batch that changed the
/// desired state.
pub struct Published {
    /// The checks the health supervisor should run.
    pub targets: watch::Receiver<Vec<health::Target>>,
    /// Sticky-session lifetimes by VIP id, for the session expiry.
    pub sticky_ttls: watch::Receiver<HashMap<u32, Duration>>,
}

/// Starts the controller thread.
pub fn spawn(
    controller: Controller,
) -> std::io::Result<(Handle, Published, JoinHandle<Controller>)> {
    let (sender, receiver) = mpsc::channel();
    let (targets, targets_rx) = watch::channel(controller.check_targets());
    let (ttls, ttls_rx) = watch::channel(controller.sticky_ttls());
    let noticed = Noticed::default();
    listen_to_changes(controller.ifindexes(), sender.clone(), noticed.clone())?;
    let actor = Actor {
        controller,
        receiver,
        targets,
        ttls,
        pending: Vec::new(),
        parked: Vec::new(),
        noticed,
    };
    let thread = std::thread::Builder::new()
        .name("lb-controller".into())
        .spawn(move || actor.run())?;
    let published = Published {
        targets: targets_rx,
        sticky_ttls: ttls_rx,
    };
    Ok((Handle { sender }, published, thread))
}

/// Notices on their way to the controller thread: at most one message of
/// each kind waits in the channel, however many notices a storm brings.
#[derive(Clone, Default)]
struct Noticed {
    neighbours: Arc<AtomicBool>,
    routes: Arc<AtomicBool>,
    announced: Arc<AtomicBool>,
}

/// Starts the thread that turns the kernel's notices into
/// [`Message::Neighbours`] and [`Message::Routes`]. It ends when the
/// controller thread has.
fn listen_to_changes(
    ifindexes: Vec<u32>,
    sender: Sender<Message>,
    noticed: Noticed,
) -> std::io::Result<()> {
    let notices = ChangeNotices::open()?;
    std::thread::Builder::new()
        .name("lb-notices".into())
        .spawn(move || loop {
            let changes = match notices.next(&ifindexes) {
                Ok(changes) => changes,
                Err(error) => {
                    tracing::warn!("listening for neighbour and route changes: {error}; reading the neighbour table once a second instead");
                    return;
                }
            };
            if !tell(&sender, &noticed, changes) {
                return;
            }
            // Each notice costs the controller a read of the neighbour
            // table: in a storm (a thousand workers resolving or failing
            // at once) reading it at most this often leaves it time for
            // everything else. Notices meanwhile wait in the socket.
            std::thread::sleep(NOTICE_PAUSE);
        })?;
    Ok(())
}

/// Sends what changed unless it is on its way already; false once the
/// controller thread is gone.
fn tell(sender: &Sender<Message>, noticed: &Noticed, changes: Changes) -> bool {
    let Changes {
        neighbours,
        routes,
        announced,
    } = changes;
    let send = |changed: bool, flag: &AtomicBool, message: Message| {
        !changed || flag.swap(true, Ordering::AcqRel) || sender.send(message).is_ok()
    };
    send(routes, &noticed.routes, Message::Routes)
        && send(neighbours, &noticed.neighbours, Message::Neighbours)
        && send(announced, &noticed.announced, Message::Announced)
}

/// What the actor needs of the controller it runs: [`Controller`] in lb,
/// a model of it in the schedule tests.
trait Control {
    /// Carries out an admin request up to the end of its batch.
    fn handle(&mut self, request: Request) -> Pending;
    /// Whether the batch left something to install or save.
    fn is_dirty(&self) -> bool;
    /// Whether the desired state changed since the last save.
    fn unsaved(&self) -> bool;
    /// Installs and saves what the batch changed.
    fn flush(&mut self) -> Flushed;
    /// Whether worker `id`'s MAC is known (or it needs none).
    fn resolved(&self, id: u32) -> bool;
    /// The checks the health supervisor should run.
    fn check_targets(&self) -> Vec<health::Target>;
    /// Sticky-session lifetimes by VIP id.
    fn sticky_ttls(&self) -> HashMap<u32, Duration>;
    /// Takes one round of a health checker.
    fn record_check(&mut self, report: health::Report);
    /// Applies a pushed load report.
    fn push_load(&mut self, report: load::Report) -> Result<(), String>;
    /// The figures for a metrics scrape.
    fn metrics_snapshot(&self) -> MetricsSnapshot;
    /// Takes what the housekeeping tick found.
    fn housekeep(
        &mut self,
        scan: Option<Scan>,
        sessions: Option<u64>,
        nat_entries: Option<Box<crate::dataplane::nat::NatEntries>>,
    );
    /// Reads the neighbour tables again.
    fn refresh_neighbours(&mut self);
    /// Looks up the next hops of L3 workers again.
    fn refresh_routes(&mut self);
    /// Reads the announce table again.
    fn recheck_announcements(&mut self);
    /// Has a failed save tried again at the end of the batch.
    fn retry_save(&mut self);
    /// Says what a stop leaves unsaved, if anything.
    fn warn_unsaved(&self);
}

impl Control for Controller {
    fn handle(&mut self, request: Request) -> Pending {
        Controller::handle(self, request)
    }

    fn is_dirty(&self) -> bool {
        Controller::is_dirty(self)
    }

    fn unsaved(&self) -> bool {
        self.unsaved
    }

    fn flush(&mut self) -> Flushed {
        Controller::flush(self)
    }

    fn resolved(&self, id: u32) -> bool {
        Controller::resolved(self, id)
    }

    fn check_targets(&self) -> Vec<health::Target> {
        Controller::check_targets(self)
    }

    fn sticky_ttls(&self) -> HashMap<u32, Duration> {
        Controller::sticky_ttls(self)
    }

    fn record_check(&mut self, report: health::Report) {
        Controller::record_check(self, report);
    }

    fn push_load(&mut self, report: load::Report) -> Result<(), String> {
        Controller::push_load(self, report)
    }

    fn metrics_snapshot(&self) -> MetricsSnapshot {
        Controller::metrics_snapshot(self)
    }

    fn housekeep(
        &mut self,
        scan: Option<Scan>,
        sessions: Option<u64>,
        nat_entries: Option<Box<crate::dataplane::nat::NatEntries>>,
    ) {
        if let Some(sessions) = sessions {
            self.set_session_count(sessions);
        }
        if let Some(entries) = nat_entries {
            self.set_nat_entries(*entries);
        }
        self.tick(scan);
    }

    fn refresh_neighbours(&mut self) {
        Controller::refresh_neighbours(self, false);
    }

    fn refresh_routes(&mut self) {
        Controller::refresh_routes(self);
    }

    fn recheck_announcements(&mut self) {
        Controller::recheck_announcements(self);
    }

    fn retry_save(&mut self) {
        Controller::retry_save(self);
    }

    fn warn_unsaved(&self) {
        Controller::warn_unsaved(self);
    }
}

struct Actor<C> {
    controller: C,
    receiver: Receiver<Message>,
    targets: watch::Sender<Vec<health::Target>>,
    ttls: watch::Sender<HashMap<u32, Duration>>,
    /// Admin requests of this batch, to be answered at its end.
    pending: Vec<(Pending, oneshot::Sender<Response>)>,
    /// Answers held until the workers their requests added resolve.
    parked: Vec<Parked>,
    /// Which notices are on their way.
    noticed: Noticed,
}

/// An answer held until its request's new workers resolve, or until
/// `until`.
struct Parked {
    response: Response,
    reply: oneshot::Sender<Response>,
    workers: Vec<u32>,
    until: Instant,
}

/// What waiting for the next message ended with.
enum Wait {
    Message(Message),
    /// A held answer's time is up.
    Timer,
    /// Every sender is gone.
    Gone,
}

impl<C: Control> Actor<C> {
    fn run(mut self) -> C {
        loop {
            let first = match self.wait() {
                Wait::Message(message) => Some(message),
                Wait::Timer => None,
                Wait::Gone => return self.controller,
            };
            let mut batch = Vec::from_iter(first);
            while batch.len() < MAX_BATCH {
                match self.receiver.try_recv() {
                    Ok(message) => batch.push(message),
                    Err(_) => break,
                }
            }
            for message in batch {
                if !self.take(message) {
                    // A save that failed gets its last try.
                    self.controller.retry_save();
                    self.finish_batch();
                    self.controller.warn_unsaved();
                    // Answers held for a new worker's MAC are of changes
                    // made and saved: dropped, they would tell their
                    // clients that the controller failed.
                    for parked in std::mem::take(&mut self.parked) {
                        let _ = parked.reply.send(parked.response);
                    }
                    return self.controller;
                }
            }
            self.finish_batch();
        }
    }

    /// Waits for a message, or until the first held answer is due.
    fn wait(&self) -> Wait {
        let Some(at) = self.parked.iter().map(|p| p.until).min() else {
            return self.receiver.recv().map_or(Wait::Gone, Wait::Message);
        };
        match self
            .receiver
            .recv_timeout(at.saturating_duration_since(Instant::now()))
        {
            Ok(message) => Wait::Message(message),
            Err(RecvTimeoutError::Timeout) => Wait::Timer,
            Err(RecvTimeoutError::Disconnected) => Wait::Gone,
        }
    }

    /// Handles one message; `false` for [`Message::Stop`].
    fn take(&mut self, message: Message) -> bool {
        match message {
            Message::Admin(request, deadline, reply) => {
                // Its client has stopped waiting: carried out now, the
                // change would surprise whoever was told it failed.
                if let Some(late) = deadline.and_then(Deadline::passed_by) {
                    let command: &'static str = (&*request).into();
                    tracing::warn!(
                        "refused a {command} request taken {} after its deadline: its client had stopped waiting (was the controller stopped or overloaded?)",
                        crate::duration::format(late)
                    );
                    let _ = reply.send(Response::refusal(too_late(late)));
                    return true;
                }
                if !request.changes_state() {
                    // A query sees every change queued before it.
                    self.finish_batch();
                    let pending = self.controller.handle(*request);
                    let _ = reply.send(pending.finish(&Default::default()));
                } else {
                    let pending = self.controller.handle(*request);
                    self.pending.push((pending, reply));
                }
            }
            Message::Check(report) => self.controller.record_check(report),
            Message::Load(report, reply) => {
                let _ = reply.send(self.controller.push_load(report));
            }
            Message::Metrics(reply) => {
                self.finish_batch();
                let _ = reply.send(self.controller.metrics_snapshot());
            }
            Message::Tick {
                scan,
                sessions,
                nat_entries,
            } => self.controller.housekeep(scan, sessions, nat_entries),
            Message::Neighbours => {
                self.noticed.neighbours.store(false, Ordering::Release);
                self.controller.refresh_neighbours();
            }
            Message::Routes => {
                self.noticed.routes.store(false, Ordering::Release);
                self.controller.refresh_routes();
            }
            Message::Announced => {
                self.noticed.announced.store(false, Ordering::Release);
                self.controller.recheck_announcements();
            }
            Message::Stop => return false,
        }
        true
    }

    /// Installs and saves what the batch changed, answers its admin
    /// requests, and publishes what changed for the checkers and expiry.
    fn finish_batch(&mut self) {
        if !self.controller.is_dirty() && self.pending.is_empty() {
            self.release_parked();
            return;
        }
        let desired_changed = self.controller.unsaved();
        let flushed = self.controller.flush();
        let until = Instant::now() + RESOLVE_WAIT;
        for (pending, reply) in std::mem::take(&mut self.pending) {
            let workers = pending.unresolved.clone();
            let response = pending.finish(&flushed);
            self.parked.push(Parked {
                response,
                reply,
                workers,
                until,
            });
        }
        self.release_parked();
        if desired_changed {
            let targets = self.controller.check_targets();
            self.targets
                .send_if_modified(|now| replace_if_changed(now, targets));
            let ttls = self.controller.sticky_ttls();
            self.ttls
                .send_if_modified(|now| replace_if_changed(now, ttls));
        }
    }

    /// Sends the held answers whose workers resolved or whose time is up.
    fn release_parked(&mut self) {
        let now = Instant::now();
        let (done, held): (Vec<Parked>, Vec<Parked>) =
            std::mem::take(&mut self.parked).into_iter().partition(|p| {
                now >= p.until || p.workers.iter().all(|id| self.controller.resolved(*id))
            });
        self.parked = held;
        for parked in done {
            let _ = parked.reply.send(parked.response);
        }
    }
}

fn replace_if_changed<T: PartialEq>(now: &mut T, next: T) -> bool {
    let changed = *now != next;
    *now = next;
    changed
}

/// The schedule tests: the real actor (its channel, batches, queries,
/// held answers and notice flags) runs a model of the controller, fed by
/// admin clients, a health checker, housekeeping and the kernel's
/// notices, each a shuttle thread, under random and PCT schedules.
#[cfg(test)]
mod tests {
    use std::{collections::BTreeSet, net::IpAddr};

    use shuttle::{future::block_on, sync::Mutex, thread};

    use super::*;
    use crate::service::Vip;

    /// Admin clients, and the changes each has acknowledged one by one.
    const CLIENTS: u8 = 2;
    const CHANGES: u32 = 3;
    /// Health-check rounds and housekeeping ticks sent.
    const CHECKS: usize = 2;
    const TICKS: usize = 2;

    /// A change: the client that asked for it and its number there.
    type Change = (u8, u32);

    /// What the model and the test threads share: what the state file
    /// holds, and the kernel's neighbour table (workers resolved).
    #[derive(Clone)]
    struct Shared {
        saved: Arc<Mutex<Vec<Change>>>,
        kernel: Arc<Mutex<BTreeSet<u32>>>,
    }

    /// The controller, reduced to what the actor sees: changes applied in
    /// memory, saved at the batch's end, and new workers that resolve
    /// once a read of the neighbour table finds them.
    struct Model {
        shared: Shared,
        applied: Vec<Change>,
        unsaved: bool,
        resolved: BTreeSet<u32>,
        /// Workers for the kernel to resolve (it answers with a notice).
        arp: mpsc::Sender<u32>,
        next_id: u32,
        checks: usize,
        ticks: usize,
    }

    fn vip() -> Vip {
        "192.0.2.100:80/tcp".parse().unwrap()
    }

    /// Client `client`'s change `seq`: a worker whose weight is `seq`.
    fn add(client: u8, seq: u32) -> Request {
        Request::BackendAdd {
            vip: vip(),
            worker: IpAddr::from([192, 0, 2, client]),
            port: None,
            weight: seq,
        }
    }

    fn pending(data: serde_json::Value, changes: bool, unresolved: Vec<u32>) -> Pending {
        Pending {
            result: Ok(data),
            touched: Default::default(),
            changes,
            unresolved,
        }
    }

    impl Control for Model {
        fn handle(&mut self, request: Request) -> Pending {
            let Request::BackendAdd {
                worker: IpAddr::V4(worker),
                weight,
                ..
            } = request
            else {
                let saved = self.shared.saved.lock().unwrap().clone();
                return pending(serde_json::json!(saved), false, Vec::new());
            };
            self.applied.push((worker.octets()[3], weight));
            self.unsaved = true;
            self.next_id += 1;
            let _ = self.arp.send(self.next_id);
            pending(serde_json::Value::Null, true, vec![self.next_id])
        }

        fn is_dirty(&self) -> bool {
            self.unsaved
        }

        fn unsaved(&self) -> bool {
            self.unsaved
        }

        fn flush(&mut self) -> Flushed {
            *self.shared.saved.lock().unwrap() = self.applied.clone();
            self.unsaved = false;
            Flushed::default()
        }

        fn resolved(&self, id: u32) -> bool {
            self.resolved.contains(&id)
        }

        fn check_targets(&self) -> Vec<health::Target> {
            Vec::new()
        }

        fn sticky_ttls(&self) -> HashMap<u32, Duration> {
            HashMap::new()
        }

        fn record_check(&mut self, _: health::Report) {
            self.checks += 1;
        }

        fn push_load(&mut self, _: load::Report) -> Result<(), String> {
            Ok(())
        }

        fn metrics_snapshot(&self) -> MetricsSnapshot {
            use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
            MetricsSnapshot {
                vips: Vec::new(),
                workers: Vec::new(),
                occupancy: Default::default(),
                pin_dir: "/sys/fs/bpf/lb".into(),
                max_flows: 0,
                check_latency: Histogram::new(exponential_buckets(1.0, 2.0, 1)),
                attachment: Default::default(),
                program: None,
                announcements: Vec::new(),
                unsaved: self.unsaved,
            }
        }

        fn housekeep(
            &mut self,
            _: Option<Scan>,
            _: Option<u64>,
            _: Option<Box<crate::dataplane::nat::NatEntries>>,
        ) {
            self.ticks += 1;
        }

        fn refresh_neighbours(&mut self) {
            self.resolved = self.shared.kernel.lock().unwrap().clone();
        }

        fn refresh_routes(&mut self) {}

        fn recheck_announcements(&mut self) {}

        fn retry_save(&mut self) {}

        fn warn_unsaved(&self) {}
    }

    /// Starts the real actor on `model`, as [`spawn`] does.
    fn start(model: Model) -> (Handle, Noticed, thread::JoinHandle<Model>) {
        let (sender, receiver) = mpsc::channel();
        let noticed = Noticed::default();
        let actor = Actor {
            controller: model,
            receiver,
            targets: watch::channel(Vec::new()).0,
            ttls: watch::channel(HashMap::new()).0,
            pending: Vec::new(),
            parked: Vec::new(),
            noticed: noticed.clone(),
        };
        let thread = thread::spawn(move || actor.run());
        (Handle { sender }, noticed, thread)
    }

    /// The kernel: resolves each new worker, then sends its notice through
    /// the listener's [`tell`], as `lb-notices` does.
    fn kernel(arp: mpsc::Receiver<u32>, shared: Shared, handle: Handle, noticed: Noticed) {
        while let Ok(id) = arp.recv() {
            shared.kernel.lock().unwrap().insert(id);
            let changes = Changes {
                neighbours: true,
                routes: id % 2 == 0,
                announced: false,
            };
            if !tell(&handle.sender, &noticed, changes) {
                return;
            }
        }
    }

    /// One admin client: each change acknowledged is saved, after every
    /// change of this client acknowledged before it; then a change and a
    /// query sent together: the query sees the change.
    fn client(handle: Handle, shared: Shared, client: u8) {
        for seq in 0..CHANGES {
            let answer = block_on(handle.request(add(client, seq), None)).unwrap();
            assert!(answer.ok, "{answer:?}");
            let saved = shared.saved.lock().unwrap().clone();
            let mine: Vec<u32> = saved
                .iter()
                .filter(|(c, _)| *c == client)
                .map(|(_, seq)| *seq)
                .collect();
            assert_eq!(mine, Vec::from_iter(0..=seq), "lost or out of order");
        }
        let (change_reply, change) = oneshot::channel();
        let (query_reply, query) = oneshot::channel();
        let last = add(client, CHANGES);
        handle
            .send(Message::Admin(Box::new(last), None, change_reply))
            .unwrap();
        handle
            .send(Message::Admin(
                Box::new(Request::VipList),
                None,
                query_reply,
            ))
            .unwrap();
        let seen = block_on(query).unwrap().data;
        assert!(
            seen.as_array()
                .unwrap()
                .contains(&serde_json::json!([client, CHANGES])),
            "{seen}"
        );
        assert!(block_on(change).unwrap().ok);
    }

    /// A health checker, a pushed load report, housekeeping and a metrics
    /// scrape, each answered or taken.
    fn others(handle: Handle) {
        let sink = handle.check_sink();
        for _ in 0..CHECKS {
            let report = health::Report {
                worker: IpAddr::from([192, 0, 2, 1]),
                serves: Vec::new(),
                outcome: None,
                load: None,
            };
            assert!(sink(report));
        }
        let load = load::Report {
            vip: vip(),
            worker: IpAddr::from([192, 0, 2, 1]),
            load: 0.5,
        };
        assert_eq!(block_on(handle.push_load(load)).unwrap(), Ok(()));
        for _ in 0..TICKS {
            let tick = Message::Tick {
                scan: None,
                sessions: Some(1),
                nat_entries: None,
            };
            handle.send(tick).unwrap();
        }
        let (reply, snapshot) = oneshot::channel();
        handle.send(Message::Metrics(reply)).unwrap();
        assert!(!block_on(snapshot).unwrap().unsaved, "a scrape saves first");
    }

    /// Everyone at once; then a stop, after which every acknowledged
    /// change is saved and every other message was taken. A deadlock or a
    /// request never answered fails the run (shuttle reports threads all
    /// blocked).
    fn everyone_at_once() {
        let shared = Shared {
            saved: Arc::default(),
            kernel: Arc::default(),
        };
        let (arp, arp_rx) = mpsc::channel();
        let model = Model {
            shared: shared.clone(),
            applied: Vec::new(),
            unsaved: false,
            resolved: BTreeSet::new(),
            arp,
            next_id: 0,
            checks: 0,
            ticks: 0,
        };
        let (handle, noticed, actor) = start(model);
        let kernel = {
            let (shared, handle) = (shared.clone(), handle.clone());
            thread::spawn(move || kernel(arp_rx, shared, handle, noticed))
        };
        let mut threads: Vec<_> = (1..=CLIENTS)
            .map(|c| {
                let (handle, shared) = (handle.clone(), shared.clone());
                thread::spawn(move || client(handle, shared, c))
            })
            .collect();
        let other = handle.clone();
        threads.push(thread::spawn(move || others(other)));
        threads.into_iter().for_each(|t| t.join().unwrap());
        handle.send(Message::Stop).unwrap();
        let model = actor.join().unwrap();
        let per_client = CHANGES as usize + 1;
        assert_eq!(model.applied.len(), CLIENTS as usize * per_client);
        assert_eq!(*shared.saved.lock().unwrap(), model.applied);
        assert_eq!((model.checks, model.ticks), (CHECKS, TICKS));
        drop(model);
        kernel.join().unwrap();
    }

    /// Random schedules: every thread may be preempted at every send,
    /// receive, lock and flag.
    #[test]
    fn shuttle_random_schedules_lose_reorder_and_starve_nothing() {
        shuttle::check_random(everyone_at_once, 1000);
    }

    /// PCT schedules (priority changes at 3 points), which find bugs of
    /// a few ordering constraints with a known probability.
    #[test]
    fn shuttle_pct_schedules_lose_reorder_and_starve_nothing() {
        shuttle::check_pct(everyone_at_once, 1000, 3);
    }
}
