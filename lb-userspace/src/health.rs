//! Health checks: one task per checked worker, each on its own timer so a
//! slow worker never delays the others, reporting to the controller over a
//! channel; and the rise/fall state machine the controller keeps per worker.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use tokio::{sync::mpsc, task::JoinHandle};

use crate::{http, options::CheckKind, service::Vip};

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

/// What one checker task does, and for whom.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The VIP.
    pub vip: Vip,
    /// The worker.
    pub worker: IpAddr,
    /// Its backend id (reports for a replaced worker are ignored).
    pub id: u32,
    /// The check; `None` runs only the load probe.
    pub kind: CheckKind,
    /// Port to check.
    pub port: u16,
    /// Path of the http check.
    pub path: String,
    /// Time between checks.
    pub interval: Duration,
    /// Limit on one check (and one load probe).
    pub timeout: Duration,
    /// Path of the load probe, if any.
    pub load_probe: Option<String>,
}

/// One round of a checker task.
#[derive(Clone, Debug)]
pub struct Report {
    /// Who was checked.
    pub vip: Vip,
    /// The worker.
    pub worker: IpAddr,
    /// Its backend id.
    pub id: u32,
    /// The health check's result (`None` when only load is probed).
    pub outcome: Option<Outcome>,
    /// The load probe's result.
    pub load: Option<Result<f64, String>>,
}

/// Runs one check.
pub async fn check(target: &Target) -> Outcome {
    let started = Instant::now();
    let addr = SocketAddr::new(target.worker, target.port);
    let (ok, detail) = match target.kind {
        CheckKind::None => (true, "not checked".to_owned()),
        CheckKind::Tcp => tcp(addr, target.timeout).await,
        CheckKind::Http => http_check(addr, &target.path, target.timeout).await,
    };
    Outcome {
        ok,
        detail,
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
    match http::get(addr, path, &addr.to_string(), timeout).await {
        Ok(response) => (
            (200..300).contains(&response.status),
            format!("HTTP {}", response.status),
        ),
        Err(error) => (false, error.to_string()),
    }
}

/// Fetches a load figure: the body of `GET path`, a number from 0 to 1.
pub async fn probe_load(addr: SocketAddr, path: &str, timeout: Duration) -> Result<f64, String> {
    let response = http::get(addr, path, &addr.to_string(), timeout)
        .await
        .map_err(|e| e.to_string())?;
    if !(200..300).contains(&response.status) {
        return Err(format!("load probe answered HTTP {}", response.status));
    }
    let text = String::from_utf8_lossy(&response.body);
    let load: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("load probe answered {:?}, not a number", text.trim()))?;
    crate::load::check_value(load).map_err(|e| e.to_string())?;
    Ok(load)
}

async fn run(target: Target, reports: mpsc::UnboundedSender<Report>) {
    let mut ticks = tokio::time::interval(target.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let outcome = match target.kind {
            CheckKind::None => None,
            _ => Some(check(&target).await),
        };
        let load = match &target.load_probe {
            Some(path) => {
                let addr = SocketAddr::new(target.worker, target.port);
                Some(probe_load(addr, path, target.timeout).await)
            }
            None => None,
        };
        let report = Report {
            vip: target.vip,
            worker: target.worker,
            id: target.id,
            outcome,
            load,
        };
        if reports.send(report).is_err() {
            return;
        }
    }
}

/// Keeps exactly one checker task per target.
pub struct Supervisor {
    tasks: HashMap<u32, (Target, JoinHandle<()>)>,
    reports: mpsc::UnboundedSender<Report>,
}

impl Supervisor {
    /// A supervisor whose tasks report on `reports`.
    pub fn new(reports: mpsc::UnboundedSender<Report>) -> Self {
        Self {
            tasks: HashMap::new(),
            reports,
        }
    }

    /// Starts tasks for new or changed targets and stops the rest. Must be
    /// called within the tokio runtime.
    pub fn reconcile(&mut self, targets: Vec<Target>) {
        let mut wanted: HashMap<u32, Target> = targets.into_iter().map(|t| (t.id, t)).collect();
        self.tasks.retain(|id, (target, task)| {
            let keep = wanted.get(id) == Some(target);
            if keep {
                wanted.remove(id);
            } else {
                task.abort();
            }
            keep
        });
        for (id, target) in wanted {
            let task = tokio::spawn(run(target.clone(), self.reports.clone()));
            self.tasks.insert(id, (target, task));
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        for (_, task) in self.tasks.values() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn checks_report_refused_and_accepted_connections() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let mut target = Target {
                vip: "192.0.2.100:80/tcp".parse().unwrap(),
                worker: "127.0.0.1".parse().unwrap(),
                id: 0,
                kind: CheckKind::Tcp,
                port,
                path: "/".into(),
                interval: Duration::from_secs(1),
                timeout: Duration::from_millis(500),
                load_probe: None,
            };
            assert!(check(&target).await.ok);
            drop(listener);
            let refused = check(&target).await;
            assert!(!refused.ok);
            assert!(refused.detail.contains("refused"), "{}", refused.detail);
            target.kind = CheckKind::None;
            assert!(check(&target).await.ok);
        });
    }
}
