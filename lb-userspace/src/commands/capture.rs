//! `lb capture`: asks the data plane for the packets a filter picks, reads
//! them from the capture ring buffer and writes pcapng, or a line per
//! packet. It works from the pinned maps, like `lb stats`: with or without
//! a controller, and with the privileges of `lb run`.
//!
//! One capture per instance at a time (a lock beside the controller's):
//! the ring buffer has one reader. The filter runs in the data plane, so a
//! capture that matches little costs little; a reader that falls behind
//! loses records, counted and reported, never packets or time.

mod output;

use std::{
    fs, io,
    os::fd::{AsFd as _, BorrowedFd},
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::maps::{Array, MapData, PerCpuArray, RingBuf};
use clap::ValueEnum as _;
use lb_common::{
    balancer::mask_prefix,
    capture::{
        CaptureCounters, CaptureFilter, CaptureRecord, ACTION_DROP, ACTION_FORWARD, ACTION_PASS,
        ACTION_REPLY, CAPTURE_ON, FILTER_CLIENT, FILTER_VIP, FILTER_WORKER, MAX_SNAPLEN,
    },
    map_names,
};

use crate::{
    commands::cli::{CaptureAction, CaptureArgs},
    commands::stats,
    dataplane,
    dataplane::counters,
    dataplane::maps,
    kernel::privileges,
    service::{addr_bytes, family_word, ClientPrefix},
};

use output::{Names, Output, Tally};

/// What a capture asks for, resolved against the instance.
#[derive(Debug, Default)]
struct Wanted {
    filter: CaptureFilter,
    count: Option<u64>,
    duration: Option<Duration>,
}

/// Runs a capture until its count or duration is reached, Ctrl-C or
/// SIGTERM, or its output closes; reports what was captured and lost.
pub fn capture(args: &CaptureArgs, pin_dir: &Path) -> anyhow::Result<()> {
    if !privileges::can_manage_xdp() {
        anyhow::bail!(
            "lb capture needs root (CAP_BPF and CAP_NET_ADMIN), like lb run: run it with sudo"
        );
    }
    check_kernel()?;
    let maps = CaptureMaps::open(pin_dir)?;
    let names = Names::read(pin_dir)?;
    let wanted = resolve(args, &names)?;
    // The lock first: a refused capture must not have emptied a file.
    let _lock = lock(pin_dir)?;
    let mut output = Output::open(args.write.as_deref(), names, pin_dir)?;
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))?;
    }
    let report = maps.run(&wanted, &mut output, &stop, pin_dir);
    let finished = output.finish(report.as_ref().map(|r| r.tally).unwrap_or_default());
    let report = report?;
    eprintln!("{}", report.summary());
    finished
}

/// The oldest kernel whose verifier takes the capture program:
/// `bpf_xdp_load_bytes` came in 5.18.
const MIN_KERNEL: (u32, u32) = (5, 18);

fn check_kernel() -> anyhow::Result<()> {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release.trim().split(['.', '-']).map(|p| p.parse::<u32>());
    if let (Some(Ok(major)), Some(Ok(minor))) = (parts.next(), parts.next()) {
        if (major, minor) < MIN_KERNEL {
            anyhow::bail!(
                "lb capture needs Linux {}.{} or newer (bpf_xdp_load_bytes); this kernel is {}",
                MIN_KERNEL.0,
                MIN_KERNEL.1,
                release.trim()
            );
        }
    }
    Ok(())
}

/// Turns the arguments into the data plane's filter: names become ids and
/// addresses; what names nothing here is an error.
fn resolve(args: &CaptureArgs, names: &Names) -> anyhow::Result<Wanted> {
    let mut filter = CaptureFilter {
        enabled: CAPTURE_ON,
        snaplen: match args.snaplen {
            None | Some(0) => MAX_SNAPLEN,
            Some(n) => n.min(MAX_SNAPLEN),
        },
        actions: actions_mask(&args.action),
        ..CaptureFilter::default()
    };
    let vip = match args.vip {
        Some(vip) => {
            let id = names.vip_id(&vip).with_context(|| {
                format!("no VIP {vip} on this instance (`lb vip list` shows them)")
            })?;
            filter.flags |= FILTER_VIP;
            filter.vip_id = id;
            Some(vip)
        }
        None => None,
    };
    if let Some(worker) = args.worker {
        let of_vip = vip.as_ref().map(|_| filter.vip_id);
        if !names.has_worker(worker, of_vip) {
            match &vip {
                Some(vip) => anyhow::bail!("{worker} is not a worker of VIP {vip}"),
                None => anyhow::bail!("{worker} is not a worker of any VIP on this instance"),
            }
        }
        let (addr, family) = addr_bytes(worker);
        (filter.worker, filter.worker_family) = (addr, family);
        filter.flags |= FILTER_WORKER;
    }
    if let Some(ClientPrefix { addr, prefix }) = args.client {
        if let Some(vip) = &vip {
            if addr.is_ipv4() != vip.addr.is_ipv4() {
                anyhow::bail!(
                    "--client {addr} is {} but VIP {vip} is {}: it would match nothing",
                    family_word(addr),
                    family_word(vip.addr)
                );
            }
        }
        let (bytes, family) = addr_bytes(addr);
        filter.client = mask_prefix(&bytes, prefix);
        (filter.client_prefix, filter.client_family) = (prefix, family);
        filter.flags |= FILTER_CLIENT;
    }
    Ok(Wanted {
        filter,
        count: args.count,
        duration: args.duration,
    })
}

/// The bit of each action asked for; all of them when none is.
fn actions_mask(actions: &[CaptureAction]) -> u8 {
    let chosen = match actions {
        [] => CaptureAction::value_variants(),
        some => some,
    };
    chosen.iter().fold(0, |mask, action| {
        mask | 1
            << match action {
                CaptureAction::Forward => ACTION_FORWARD,
                CaptureAction::Pass => ACTION_PASS,
                CaptureAction::Drop => ACTION_DROP,
                CaptureAction::Reply => ACTION_REPLY,
            }
    })
}

/// Takes the instance's capture lock, beside the controller's lock of its
/// pin directory: the ring buffer has one reader.
fn lock(pin_dir: &Path) -> anyhow::Result<fs::File> {
    dataplane::take_lock(&dataplane::capture_lock_path(pin_dir))?.ok_or_else(|| {
        anyhow::anyhow!("another `lb capture` runs on this instance; one capture at a time")
    })
}

/// The pinned maps a capture uses.
struct CaptureMaps {
    filter: Array<MapData, CaptureFilter>,
    ring: RingBuf<MapData>,
    stats: PerCpuArray<MapData, CaptureCounters>,
}

/// What a capture saw, and why it stopped early if it did.
#[derive(Debug, Default)]
struct Report {
    tally: Tally,
    cut_short: Option<String>,
}

impl Report {
    fn summary(&self) -> String {
        let Tally {
            written,
            matched,
            lost,
        } = self.tally;
        let mut line =
            format!("lb capture: {written} packets captured, {matched} matched the filter");
        if lost > 0 {
            line += &format!(
                ", {lost} lost: the ring buffer was full because the reader fell behind (the packets themselves went on undelayed)"
            );
        }
        if let Some(why) = &self.cut_short {
            line += &format!("; stopped: {why}");
        }
        line
    }
}

impl CaptureMaps {
    fn open(pin_dir: &Path) -> anyhow::Result<Self> {
        let open = |name: &str| {
            maps::open_pinned(pin_dir, name).with_context(|| {
                if pin_dir.join(map_names::VIPS).exists() {
                    format!(
                        "the lb running under {} predates lb capture: run `lb run` of this lb again to upgrade it (established flows stay)",
                        pin_dir.display()
                    )
                } else {
                    stats::no_instance(pin_dir)
                }
            })
        };
        Ok(Self {
            filter: open(map_names::CAPTURE)?.try_into()?,
            ring: RingBuf::try_from(open(map_names::CAPTURE_RING)?)?,
            stats: open(map_names::CAPTURE_STATS)?.try_into()?,
        })
    }

    fn counters(&self) -> anyhow::Result<CaptureCounters> {
        Ok(counters::sum(&self.stats, 0)?)
    }

    /// Discards what an earlier capture left unread.
    fn drain_stale(&mut self) {
        while self.ring.next().is_some() {}
    }

    fn run(
        mut self,
        wanted: &Wanted,
        output: &mut Output,
        stop: &AtomicBool,
        pin_dir: &Path,
    ) -> anyhow::Result<Report> {
        self.drain_stale();
        let before = self.counters()?;
        self.filter.set(0, wanted.filter, 0)?;
        // Like tcpdump's "listening on": the capture runs from here on.
        eprintln!(
            "lb capture: capturing from the data plane pinned under {}, {} bytes per packet; Ctrl-C stops",
            pin_dir.display(),
            wanted.filter.snaplen
        );
        let started = Instant::now();
        let mut report = Report::default();
        let read = self.read(wanted, output, stop, started, &mut report);
        // Off first, whatever happened: the data plane must not go on
        // copying packets for nobody.
        let off = self.filter.set(0, CaptureFilter::default(), 0);
        if read.is_ok() && report.cut_short.is_none() {
            // Records already in the ring buffer are part of the capture.
            self.read_ready(wanted, output, &mut report)?;
        }
        off.with_context(|| format!("turning the capture off under {}", pin_dir.display()))?;
        let moved = self.counters()?.since(&before);
        (report.tally.matched, report.tally.lost) = (moved.matched, moved.lost);
        read?;
        Ok(report)
    }

    fn read(
        &mut self,
        wanted: &Wanted,
        output: &mut Output,
        stop: &AtomicBool,
        started: Instant,
        report: &mut Report,
    ) -> anyhow::Result<()> {
        loop {
            if stop.load(Ordering::Relaxed) || done(wanted, report) {
                return Ok(());
            }
            let left = wanted.duration.map(|d| d.saturating_sub(started.elapsed()));
            if left == Some(Duration::ZERO) {
                return Ok(());
            }
            let wait = left.map_or(POLL, |left| left.min(POLL));
            wait_readable(self.ring.as_fd(), wait)?;
            self.read_ready(wanted, output, report)?;
        }
    }

    /// Writes every record the ring buffer holds, up to the count.
    fn read_ready(
        &mut self,
        wanted: &Wanted,
        output: &mut Output,
        report: &mut Report,
    ) -> anyhow::Result<()> {
        while !done(wanted, report) {
            let Some(item) = self.ring.next() else {
                return Ok(());
            };
            let Some((record, data)) = split_record(&item) else {
                continue;
            };
            match output.write(&record, data) {
                Ok(()) => report.tally.written += 1,
                Err(error) if is_closed(&error) => {
                    report.cut_short = Some("the output was closed".into());
                    return Ok(());
                }
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }
}

/// How often a capture looks at its stop conditions while no packet comes.
const POLL: Duration = Duration::from_millis(100);

fn done(wanted: &Wanted, report: &Report) -> bool {
    report.cut_short.is_some()
        || wanted
            .count
            .is_some_and(|count| report.tally.written >= count)
}

/// Whether writing failed because the reader went away (`| head`).
fn is_closed(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<io::Error>()
        .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
}

/// Waits until the ring buffer has data or `wait` passes (or a signal).
fn wait_readable(fd: BorrowedFd<'_>, wait: Duration) -> anyhow::Result<()> {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let timeout = Timespec::try_from(wait).unwrap_or(Timespec {
        tv_sec: i64::MAX,
        tv_nsec: 0,
    });
    match poll(
        &mut [PollFd::from_borrowed_fd(fd, PollFlags::IN)],
        Some(&timeout),
    ) {
        Ok(_) | Err(rustix::io::Errno::INTR) => Ok(()),
        Err(error) => Err(io::Error::from(error)).context("waiting for captured packets"),
    }
}

/// A record's header and the frame bytes behind it.
fn split_record(item: &[u8]) -> Option<(CaptureRecord, &[u8])> {
    let size = size_of::<CaptureRecord>();
    let header = item.get(..size)?;
    // SAFETY: CaptureRecord is plain data of `size` bytes; read_unaligned
    // copies them out whatever their alignment.
    let record: CaptureRecord = unsafe { std::ptr::read_unaligned(header.as_ptr().cast()) };
    let data = item.get(size..size + record.cap_len as usize)?;
    Some((record, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_action_means_every_action() {
        let all = actions_mask(&[]);
        for action in [ACTION_FORWARD, ACTION_PASS, ACTION_DROP, ACTION_REPLY] {
            assert_ne!(all & 1 << action, 0);
        }
        let drops = actions_mask(&[CaptureAction::Drop]);
        assert_eq!(drops, 1 << ACTION_DROP);
    }

    #[test]
    fn records_split_into_header_and_bytes() {
        let record = CaptureRecord {
            cap_len: 3,
            ..CaptureRecord::default()
        };
        let mut item = vec![0u8; size_of::<CaptureRecord>()];
        // SAFETY: the vector holds a whole record.
        unsafe { std::ptr::write_unaligned(item.as_mut_ptr().cast(), record) };
        item.extend([1, 2, 3, 4]);
        let (header, data) = split_record(&item).unwrap();
        assert_eq!(header.cap_len, 3);
        assert_eq!(data, &[1, 2, 3]);
        assert!(split_record(&item[..10]).is_none());
    }
}
