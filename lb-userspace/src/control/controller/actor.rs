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

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc::{self, Receiver, RecvTimeoutError, Sender},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use tokio::sync::{oneshot, watch};

use super::{Controller, MetricsSnapshot, Pending};
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

struct Actor {
    controller: Controller,
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

impl Actor {
    fn run(mut self) -> Controller {
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
            } => {
                if let Some(sessions) = sessions {
                    self.controller.set_session_count(sessions);
                }
                if let Some(entries) = nat_entries {
                    self.controller.set_nat_entries(*entries);
                }
                self.controller.tick(scan);
            }
            Message::Neighbours => {
                self.noticed.neighbours.store(false, Ordering::Release);
                self.controller.refresh_neighbours(false);
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
        let desired_changed = self.controller.unsaved;
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
