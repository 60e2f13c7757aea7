//! The controller's clock: once a tick, on a thread of its own, the work
//! that reads whole maps (a flow-table scan, sticky-session expiry, the
//! NAT table's sweep) and
//! the check for a capture nobody reads any more; the results go to the
//! controller as a message.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::sync::watch;

use crate::{
    control::controller::actor::{Handle, Message},
    dataplane::{
        activity, capture,
        nat::{self, NatEntries},
        sessions,
    },
};

/// How often the controller scans flows, expires load reports and
/// re-reads worker MAC addresses.
const TICK: Duration = Duration::from_secs(1);
/// Sticky sessions are expired every this many ticks.
const SESSION_EXPIRY_TICKS: u64 = 10;
/// A flow-table scan may take at most this share of the time (a huge
/// table is scanned less often rather than hogging a core).
const SCAN_DUTY: u32 = 10;
/// Once a tick, on its own thread (a scan of a large flow table takes a
/// while, and must hold up neither the runtime nor the controller): scans
/// the flow table (paced), expires sticky sessions now and then, turns off
/// a capture whose reader died, and hands the results to the controller,
/// which acts on what it learnt.
pub fn spawn(
    controller: Handle,
    ttls: watch::Receiver<HashMap<u32, Duration>>,
    dir: PathBuf,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let work = move || {
        let mut next_scan = Instant::now();
        let mut next_sweep = Instant::now();
        for round in 1u64.. {
            std::thread::sleep(TICK);
            let started = Instant::now();
            let scan = (started >= next_scan)
                .then(|| activity::count(&dir))
                .and_then(|r| {
                    r.inspect_err(|e| tracing::warn!("scanning flows: {e}"))
                        .ok()
                });
            if scan.is_some() {
                next_scan = Instant::now() + started.elapsed() * SCAN_DUTY;
            }
            let sessions = (round % SESSION_EXPIRY_TICKS == 0)
                .then(|| expire_sessions(&dir, &ttls.borrow()))
                .flatten();
            let nat_entries = (Instant::now() >= next_sweep)
                .then(|| {
                    let started = Instant::now();
                    let swept = sweep_nat(&dir);
                    next_sweep = Instant::now() + started.elapsed() * SCAN_DUTY;
                    swept
                })
                .flatten();
            clear_abandoned_capture(&dir);
            let tick = Message::Tick {
                scan,
                sessions,
                nat_entries,
            };
            if controller.send(tick).is_err() {
                return;
            }
        }
    };
    std::thread::Builder::new()
        .name("lb-housekeeping".into())
        .spawn(work)
        .context("starting the housekeeping thread")
}

/// Turns off a capture whose `lb capture` died without doing so (killed),
/// so the data plane stops copying packets for nobody.
fn clear_abandoned_capture(dir: &Path) {
    match capture::clear_abandoned(dir) {
        Ok(true) => tracing::warn!("turned off a capture whose lb capture had died"),
        Ok(false) => {}
        Err(e) => tracing::debug!("checking for an abandoned capture: {e:#}"),
    }
}

/// One pass of the NAT table's sweep (expired `fullnat` connections
/// marked dead, last pass's dead ones deleted); the entries left by NAT
/// source slot.
fn sweep_nat(dir: &Path) -> Option<Box<NatEntries>> {
    match nat::sweep(dir, activity::monotonic_ns()) {
        Ok(swept) => {
            if swept.marked + swept.freed > 0 {
                tracing::debug!(
                    "NAT sweep: {} entries, {} expired, {} ports freed",
                    swept.entries,
                    swept.marked,
                    swept.freed
                );
            }
            Some(Box::new(swept.per_slot))
        }
        Err(e) => {
            tracing::warn!("sweeping the NAT table: {e}");
            None
        }
    }
}

/// Removes expired sticky sessions; how many remain.
fn expire_sessions(dir: &Path, ttls: &HashMap<u32, Duration>) -> Option<u64> {
    match sessions::expire(dir, ttls, activity::monotonic_ns()) {
        Ok((removed, remaining)) => {
            if removed > 0 {
                tracing::debug!("expired {removed} sticky sessions");
            }
            Some(remaining as u64)
        }
        Err(e) => {
            tracing::warn!("expiring sticky sessions: {e}");
            None
        }
    }
}
