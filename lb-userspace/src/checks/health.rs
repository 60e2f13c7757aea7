//! Health checks: one task per distinct check (worker address, port and
//! settings), shared by every VIP whose workers need it, each on its own
//! timer so a slow worker never delays the others, reporting to the
//! controller once per round; and the rise/fall state machine the
//! controller keeps per worker.

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::AsRawFd as _,
    sync::Arc,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use tokio::{net::UdpSocket, sync::watch, task::JoinHandle};

use crate::{
    checks::datagram::{self, Datagram},
    checks::dns,
    checks::tunnel::{Prober, Tunnel},
    net::http,
    service::Vip,
};

/// Whether a worker takes new flows as far as its checks go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthState {
    /// Passing (or not checked).
    Up,
    /// Failed `fall` checks in a row and not yet passed `rise`.
    Down,
}

/// The result of one check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Whether it passed.
    pub ok: bool,
    /// What happened, for `lb backend list` ("connected", "HTTP 503", …).
    pub detail: String,
    /// How long it took.
    pub took: Duration,
}

/// A worker's health as the controller tracks it. Workers start up, so a
/// new worker takes traffic at once; the first failed checks take it out.
#[derive(Clone, Debug)]
pub struct Health {
    state: HealthState,
    /// Consecutive results that disagree with `state`.
    streak: u32,
    last: Option<(Outcome, Instant)>,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            state: HealthState::Up,
            streak: 0,
            last: None,
        }
    }
}

impl Health {
    /// A worker an earlier controller left down: it takes new flows again
    /// only after passing `rise` checks, so a restart neither puts it back
    /// in the tables nor announces its address before its checks do.
    pub fn down() -> Self {
        Self {
            state: HealthState::Down,
            ..Self::default()
        }
    }

    /// The state in force.
    pub fn state(&self) -> HealthState {
        self.state
    }

    /// The last check and when it finished.
    pub fn last(&self) -> Option<&(Outcome, Instant)> {
        self.last.as_ref()
    }

    /// Records a check; returns the new state when it changed.
    pub fn record(
        &mut self,
        outcome: Outcome,
        at: Instant,
        rise: u32,
        fall: u32,
    ) -> Option<HealthState> {
        let agrees = outcome.ok == (self.state == HealthState::Up);
        self.last = Some((outcome, at));
        if agrees {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = match self.state {
            HealthState::Up => fall,
            HealthState::Down => rise,
        };
        if self.streak < needed {
            return None;
        }
        self.streak = 0;
        self.state = match self.state {
            HealthState::Up => HealthState::Down,
            HealthState::Down => HealthState::Up,
        };
        Some(self.state)
    }
}

/// What a health check does, with what it needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    /// Nothing: the worker is always up.
    None,
    /// A TCP connection is accepted.
    Tcp,
    /// `GET path` answers 2xx.
    Http {
        /// The path.
        path: String,
    },
    /// `payload` draws no ICMP error; with `expect`, it draws a reply that
    /// starts with it.
    Udp {
        /// What is sent.
        payload: Datagram,
        /// What the reply must start with.
        expect: Option<Datagram>,
    },
    /// A DNS query gets the expected response code.
    Dns(dns::Query),
}

/// What a worker entry needs checked, and for whom.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The VIP.
    pub vip: Vip,
    /// The worker.
    pub worker: IpAddr,
    /// Its backend id (reports for a replaced worker are ignored).
    pub id: u32,
    /// The check; `Check::None` runs only the load probe.
    pub check: Check,
    /// Port to check.
    pub port: u16,
    /// Time between checks.
    pub interval: Duration,
    /// Limit on one check (and one load probe).
    pub timeout: Duration,
    /// Path of the load probe, if any.
    pub load_probe: Option<String>,
    /// For an IPIP or GUE VIP checked the way its traffic goes: the tunnel
    /// an echo must pass before the check counts.
    pub tunnel: Option<Tunnel>,
}

/// One round of a checker task.
#[derive(Clone, Debug)]
pub struct Report {
    /// The worker checked.
    pub worker: IpAddr,
    /// The worker entries (VIP, backend id) the check stands for; reports
    /// for a replaced worker are ignored.
    pub serves: Vec<(Vip, u32)>,
    /// The health check's result (`None` when only load is probed).
    pub outcome: Option<Outcome>,
    /// The load probe's result.
    pub load: Option<Result<f64, String>>,
}

/// The worker entries (VIP, backend id) one check stands for.
type Served = Vec<(Vip, u32)>;

/// Where checkers send their reports; `false` once nobody listens.
pub type Sink = std::sync::Arc<dyn Fn(Report) -> bool + Send + Sync>;

/// Runs one check: through the tunnel first, when the worker is reached
/// by one, then the check itself.
pub async fn check(target: &Target, prober: &Prober) -> Outcome {
    let started = Instant::now();
    if let Some(tunnel) = &target.tunnel {
        let Some(source) = tunnel.source else {
            let note = format!(
                " ({} not checked: the balancer has no {} address to send the echo from)",
                tunnel.encapsulation,
                crate::service::family_word(tunnel.vip)
            );
            return finish(target, started, Some(note)).await;
        };
        if let Err(detail) = prober
            .probe(target.worker, tunnel, source, target.timeout)
            .await
        {
            return Outcome {
                ok: false,
                detail,
                took: started.elapsed(),
            };
        }
    }
    finish(target, started, None).await
}

/// The check itself, after the tunnel's; `note` goes after its detail.
async fn finish(target: &Target, started: Instant, note: Option<String>) -> Outcome {
    let addr = SocketAddr::new(target.worker, target.port);
    let (ok, detail) = match &target.check {
        Check::None => (true, "not checked".to_owned()),
        Check::Tcp => tcp(addr, target.timeout).await,
        Check::Http { path } => http_check(addr, path, target.timeout).await,
        Check::Udp { payload, expect } => udp(addr, payload, expect.as_ref(), target.timeout).await,
        Check::Dns(query) => dns_check(addr, query, target.timeout).await,
    };
    Outcome {
        ok,
        detail: detail + note.as_deref().unwrap_or_default(),
        took: started.elapsed(),
    }
}

async fn tcp(addr: SocketAddr, timeout: Duration) -> (bool, String) {
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => (true, "connected".into()),
        Ok(Err(error)) => (false, error.kind().to_string()),
        Err(_) => (false, "timed out".into()),
    }
}

async fn http_check(addr: SocketAddr, path: &str, timeout: Duration) -> (bool, String) {
    match http::get(addr, path, timeout).await {
        Ok(page) => (
            (200..300).contains(&page.status),
            format!("HTTP {}", page.status),
        ),
        Err(error) => (false, error.to_string()),
    }
}

/// keepalived's UDP_CHECK: without an expected reply, only an ICMP error
/// fails, since most services ignore a datagram they can't parse.
async fn udp(
    addr: SocketAddr,
    payload: &Datagram,
    expect: Option<&Datagram>,
    timeout: Duration,
) -> (bool, String) {
    let judge = |reply: &[u8]| match expect {
        Some(e) if !reply.starts_with(e.as_bytes()) => Some((
            false,
            format!("unexpected reply {}", datagram::preview(reply)),
        )),
        _ => Some((true, "answered".to_owned())),
    };
    match exchange(addr, payload.as_bytes(), timeout, judge).await {
        Ok(Some(verdict)) => verdict,
        Ok(None) if expect.is_some() => (false, "no reply".into()),
        Ok(None) => (true, "no error".into()),
        Err(error) => (false, socket_error(&error)),
    }
}

async fn dns_check(addr: SocketAddr, query: &dns::Query, timeout: Duration) -> (bool, String) {
    let id = dns::random_id();
    let datagram = match query.encode(id) {
        Ok(datagram) => datagram,
        Err(error) => return (false, error),
    };
    match exchange(addr, &datagram, timeout, |reply| query.judge(id, reply)).await {
        Ok(Some(verdict)) => verdict,
        Ok(None) => (false, "no reply".into()),
        Err(error) => (false, socket_error(&error)),
    }
}

/// Sends `datagram` to `addr` and hands each reply to `judge` until it
/// gives a verdict; `None` when none came within `timeout`. The socket is
/// connected and asks for every error, so the kernel reports ICMP errors
/// about the datagram (and its own failure to resolve the worker's MAC)
/// as errors of `recv`.
async fn exchange(
    addr: SocketAddr,
    datagram: &[u8],
    timeout: Duration,
    mut judge: impl FnMut(&[u8]) -> Option<(bool, String)>,
) -> io::Result<Option<(bool, String)>> {
    let local: SocketAddr = match addr {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let conversation = async {
        let socket = UdpSocket::bind(local).await?;
        receive_errors(&socket, addr.is_ipv6())?;
        socket.connect(addr).await?;
        socket.send(datagram).await?;
        let mut buf = vec![0; datagram::MAX_DATAGRAM];
        loop {
            let len = socket.recv(&mut buf).await?;
            if let Some(verdict) = judge(&buf[..len]) {
                return Ok(Some(verdict));
            }
        }
    };
    tokio::time::timeout(timeout, conversation)
        .await
        .unwrap_or(Ok(None))
}

/// Sets IP_RECVERR (IPV6_RECVERR): without it a UDP socket hears only of
/// the errors the kernel deems fatal, such as port unreachable, and not of
/// host or network unreachable, which is what it reports when ARP or ND
/// for the worker fails.
fn receive_errors(socket: &UdpSocket, ipv6: bool) -> io::Result<()> {
    let (level, option) = if ipv6 {
        (libc::IPPROTO_IPV6, libc::IPV6_RECVERR)
    } else {
        (libc::IPPROTO_IP, libc::IP_RECVERR)
    };
    let on: libc::c_int = 1;
    // SAFETY: the descriptor is the socket's own, open while it lives, and
    // the value is the c_int the option takes, with its size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            option,
            std::ptr::from_ref(&on).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A datagram's failure, in the words of the ICMP error behind it.
fn socket_error(error: &io::Error) -> String {
    match error.raw_os_error() {
        Some(libc::ECONNREFUSED) => "port unreachable".into(),
        Some(libc::EHOSTUNREACH) => "host unreachable".into(),
        Some(libc::ENETUNREACH) => "network unreachable".into(),
        Some(libc::EHOSTDOWN) => "host down".into(),
        _ => error.to_string(),
    }
}

/// Fetches a load figure: the body of `GET path`, a number from 0 to 1.
pub async fn probe_load(addr: SocketAddr, path: &str, timeout: Duration) -> Result<f64, String> {
    let page = http::get(addr, path, timeout)
        .await
        .map_err(|e| e.to_string())?;
    if !(200..300).contains(&page.status) {
        return Err(format!("load probe answered HTTP {}", page.status));
    }
    let text = String::from_utf8_lossy(&page.body);
    let load: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("load probe answered {:?}, not a number", text.trim()))?;
    crate::checks::load::check_value(load).map_err(|e| e.to_string())?;
    Ok(load)
}

async fn run(
    target: Target,
    serves: watch::Receiver<Vec<(Vip, u32)>>,
    reports: Sink,
    prober: Arc<Prober>,
) {
    let mut ticks = tokio::time::interval(target.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let outcome = match target.check {
            Check::None => None,
            _ => Some(check(&target, &prober).await),
        };
        let load = match &target.load_probe {
            Some(path) => {
                let addr = SocketAddr::new(target.worker, target.port);
                Some(probe_load(addr, path, target.timeout).await)
            }
            None => None,
        };
        let report = Report {
            worker: target.worker,
            serves: serves.borrow().clone(),
            outcome,
            load,
        };
        if !reports(report) {
            return;
        }
    }
}

/// What makes two targets one check: everything but whom it is for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    worker: IpAddr,
    port: u16,
    interval: Duration,
    timeout: Duration,
    load_probe: Option<String>,
    tunnel: Option<Tunnel>,
}

impl Key {
    fn of(target: &Target) -> Self {
        Self {
            worker: target.worker,
            port: target.port,
            interval: target.interval,
            timeout: target.timeout,
            load_probe: target.load_probe.clone(),
            tunnel: target.tunnel.clone(),
        }
    }
}

/// A running checker and the worker entries it reports for.
struct Checker {
    check: Check,
    serves: watch::Sender<Vec<(Vip, u32)>>,
    task: JoinHandle<()>,
}

/// Keeps exactly one checker task per distinct check.
pub struct Supervisor {
    /// By key, then by check (checks are few per key, and not hashable).
    checkers: HashMap<Key, Vec<Checker>>,
    reports: Sink,
    prober: Arc<Prober>,
}

impl Supervisor {
    /// A supervisor whose tasks report to `reports`.
    pub fn new(reports: Sink) -> Self {
        Self {
            checkers: HashMap::new(),
            reports,
            prober: Arc::default(),
        }
    }

    /// Starts tasks for new checks, tells running ones whom they serve now,
    /// and stops the rest. Must be called within the tokio runtime.
    pub fn reconcile(&mut self, targets: Vec<Target>) {
        let mut wanted: HashMap<Key, Vec<(Target, Served)>> = HashMap::new();
        for target in targets {
            let group = wanted.entry(Key::of(&target)).or_default();
            match group.iter_mut().find(|(t, _)| t.check == target.check) {
                Some((_, serves)) => serves.push((target.vip, target.id)),
                None => {
                    let serves = vec![(target.vip, target.id)];
                    group.push((target, serves));
                }
            }
        }
        let mut running = std::mem::take(&mut self.checkers);
        for (key, group) in wanted {
            let mut old = running.remove(&key).unwrap_or_default();
            let mut kept = Vec::new();
            for (target, mut serves) in group {
                serves.sort();
                let checker = match old.iter().position(|c| c.check == target.check) {
                    Some(at) => {
                        let checker = old.swap_remove(at);
                        checker.serves.send_if_modified(|now| {
                            let changed = *now != serves;
                            *now = serves;
                            changed
                        });
                        checker
                    }
                    None => self.start(target, serves),
                };
                kept.push(checker);
            }
            old.iter().for_each(|c| c.task.abort());
            self.checkers.insert(key, kept);
        }
        running.values().flatten().for_each(|c| c.task.abort());
    }

    fn start(&self, target: Target, serves: Vec<(Vip, u32)>) -> Checker {
        let (serves, receiver) = watch::channel(serves);
        let check = target.check.clone();
        let task = tokio::spawn(run(
            target,
            receiver,
            self.reports.clone(),
            self.prober.clone(),
        ));
        Checker {
            check,
            serves,
            task,
        }
    }

    /// How many checker tasks run.
    #[cfg(test)]
    fn checkers(&self) -> usize {
        self.checkers.values().map(Vec::len).sum()
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        for checker in self.checkers.values().flatten() {
            checker.task.abort();
        }
    }
}

/// Keeps the health checkers pointed at the workers the controller has.
pub async fn follow(mut targets: watch::Receiver<Vec<Target>>, sink: Sink) {
    let mut supervisor = Supervisor::new(sink);
    loop {
        let now = targets.borrow_and_update().clone();
        supervisor.reconcile(now);
        if targets.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use hickory_proto::op::{Message, OpCode, ResponseCode};

    use super::*;

    fn outcome(ok: bool) -> Outcome {
        Outcome {
            ok,
            detail: String::new(),
            took: Duration::ZERO,
        }
    }

    #[test]
    fn fall_failures_take_a_worker_down_and_rise_successes_bring_it_back() {
        let mut health = Health::default();
        let now = Instant::now();
        assert_eq!(health.record(outcome(false), now, 2, 3), None);
        assert_eq!(health.record(outcome(false), now, 2, 3), None);
        assert_eq!(
            health.record(outcome(true), now, 2, 3),
            None,
            "streak broken"
        );
        assert_eq!(health.record(outcome(false), now, 2, 3), None);
        assert_eq!(health.record(outcome(false), now, 2, 3), None);
        assert_eq!(
            health.record(outcome(false), now, 2, 3),
            Some(HealthState::Down)
        );
        assert_eq!(health.record(outcome(true), now, 2, 3), None);
        assert_eq!(
            health.record(outcome(true), now, 2, 3),
            Some(HealthState::Up)
        );
        assert_eq!(health.state(), HealthState::Up);
    }

    fn target(check: Check, port: u16) -> Target {
        Target {
            vip: "192.0.2.100:80/tcp".parse().unwrap(),
            worker: "127.0.0.1".parse().unwrap(),
            id: 0,
            check,
            port,
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(200),
            load_probe: None,
            tunnel: None,
        }
    }

    async fn verdict(check: Check, port: u16) -> (bool, String) {
        let outcome = super::check(&target(check, port), &Prober::default()).await;
        (outcome.ok, outcome.detail)
    }

    #[tokio::test]
    async fn checks_report_refused_and_accepted_connections() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(verdict(Check::Tcp, port).await.0);
        drop(listener);
        let (ok, detail) = verdict(Check::Tcp, port).await;
        assert!(!ok);
        assert!(detail.contains("refused"), "{detail}");
        assert!(verdict(Check::None, port).await.0);
    }

    #[tokio::test]
    async fn a_tunnel_without_a_source_goes_unchecked_and_says_so() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let target = Target {
            tunnel: Some(Tunnel {
                encapsulation: crate::checks::tunnel::Encapsulation::Ipip,
                vip: "192.0.2.100".parse().unwrap(),
                source: None,
            }),
            ..target(Check::Tcp, port)
        };
        let outcome = check(&target, &Prober::default()).await;
        assert!(outcome.ok, "{outcome:?}");
        assert_eq!(
            outcome.detail,
            "connected (IPIP not checked: the balancer has no IPv4 address to send the echo from)"
        );
    }

    fn udp(payload: &str, expect: Option<&str>) -> Check {
        Check::Udp {
            payload: payload.parse().unwrap(),
            expect: expect.map(|e| e.parse().unwrap()),
        }
    }

    /// A UDP socket on 127.0.0.1 that sends every datagram back.
    async fn echo() -> u16 {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let port = socket.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut buf = [0; 512];
            while let Ok((len, from)) = socket.recv_from(&mut buf).await {
                let _ = socket.send_to(&buf[..len], from).await;
            }
        });
        port
    }

    #[tokio::test]
    async fn udp_checks_pass_on_a_reply_that_starts_as_expected() {
        let port = echo().await;
        assert_eq!(
            verdict(udp("", None), port).await,
            (true, "answered".into())
        );
        assert_eq!(
            verdict(udp("ping", Some("pi")), port).await,
            (true, "answered".into())
        );
        assert_eq!(
            verdict(udp("ping\r\n", Some("pong")), port).await,
            (false, r#"unexpected reply "ping\r\n""#.into())
        );
    }

    #[tokio::test]
    async fn udp_silence_passes_unless_a_reply_is_expected_and_a_closed_port_fails() {
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let port = silent.local_addr().unwrap().port();
        assert_eq!(
            verdict(udp("", None), port).await,
            (true, "no error".into())
        );
        assert_eq!(
            verdict(udp("ping", Some("pong")), port).await,
            (false, "no reply".into())
        );
        drop(silent);
        assert_eq!(
            verdict(udp("", None), port).await,
            (false, "port unreachable".into())
        );
    }

    /// A DNS server on 127.0.0.1 that answers every query with `rcode`,
    /// under the query's id plus `id_offset`.
    async fn dns_server(rcode: ResponseCode, id_offset: u16) -> u16 {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let port = socket.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut buf = [0; 512];
            while let Ok((len, from)) = socket.recv_from(&mut buf).await {
                let query = Message::from_vec(&buf[..len]).unwrap();
                let id = query.metadata.id.wrapping_add(id_offset);
                let mut reply = Message::response(id, OpCode::Query);
                reply.metadata.response_code = rcode;
                reply.add_queries(query.queries);
                let _ = socket.send_to(&reply.to_vec().unwrap(), from).await;
            }
        });
        port
    }

    fn dns(rcode: &str) -> Check {
        Check::Dns(dns::Query {
            name: "health.example.com".parse().unwrap(),
            rtype: "A".parse().unwrap(),
            rcode: rcode.parse().unwrap(),
        })
    }

    #[tokio::test]
    async fn dns_checks_pass_on_the_expected_rcode_of_their_own_query() {
        let noerror = dns_server(ResponseCode::NoError, 0).await;
        assert_eq!(
            verdict(dns("NOERROR"), noerror).await,
            (true, "rcode NOERROR".into())
        );
        let nxdomain = dns_server(ResponseCode::NXDomain, 0).await;
        assert_eq!(
            verdict(dns("NOERROR"), nxdomain).await,
            (false, "rcode NXDOMAIN".into())
        );
        assert_eq!(
            verdict(dns("NXDOMAIN"), nxdomain).await,
            (true, "rcode NXDOMAIN".into())
        );
        let wrong_id = dns_server(ResponseCode::NoError, 1).await;
        assert_eq!(
            verdict(dns("NOERROR"), wrong_id).await,
            (false, "no reply".into())
        );
        let closed = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        assert_eq!(
            verdict(dns("NOERROR"), port).await,
            (false, "port unreachable".into())
        );
    }

    #[tokio::test]
    async fn one_checker_serves_every_vip_that_checks_the_same_worker_alike() {
        let (sender, mut reports) = tokio::sync::mpsc::unbounded_channel();
        let sink: Sink = std::sync::Arc::new(move |report| sender.send(report).is_ok());
        let mut supervisor = Supervisor::new(sink);
        let for_vip = |n: u16, check: Check| Target {
            vip: format!("192.0.2.100:{n}/tcp").parse().unwrap(),
            id: u32::from(n),
            ..target(check, 9)
        };
        let mut targets: Vec<Target> = (1..=500).map(|n| for_vip(n, Check::Tcp)).collect();
        supervisor.reconcile(targets.clone());
        assert_eq!(supervisor.checkers(), 1);
        let report = reports.recv().await.unwrap();
        assert_eq!(report.serves.len(), 500);

        // Another check of the same address is a checker of its own; a
        // VIP gone is no longer reported for.
        targets.pop();
        targets.push(for_vip(501, Check::None));
        supervisor.reconcile(targets);
        assert_eq!(supervisor.checkers(), 2);
        // The two tick on their own clocks, and the check-less one may
        // report twice before the other's next tick: wait for both sizes.
        let mut served = std::collections::BTreeSet::new();
        let both = async {
            while served.len() < 2 {
                let report = reports.recv().await.unwrap();
                assert_ne!(report.serves.len(), 500, "a VIP gone was reported for");
                served.insert(report.serves.len());
            }
        };
        tokio::time::timeout(Duration::from_secs(10), both)
            .await
            .expect("both checkers report within 10 s");
        assert_eq!(served, [1, 499].into());
        supervisor.reconcile(Vec::new());
        assert_eq!(supervisor.checkers(), 0);
    }
}
