//! End to end over veth in network namespaces: the same client, balancer
//! host and nginx worker for every mode, interleaved: no balancer (the
//! ceiling), nftables DNAT (jhash map + conntrack + masquerade), HAProxy
//! in TCP mode with one thread, lb in DSR mode, lb in full NAT mode (the
//! same service as nftables': the worker unchanged, its replies back
//! through the balancer), and a minimal stateless XDP forwarder (the floor
//! of any XDP balancer on this rig).
//!
//! Every balancer sends to the same single worker, so the modes differ
//! only in the balancer; lb's program stays attached to the balancer host
//! in every mode (other modes' packets pass through it untouched).

use std::{
    fmt,
    net::Ipv4Addr,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context as _};
use aya::{maps::Array, programs::XdpMode};
use floors_common::{map_names as floor_maps, program_names as floor, ForwardTarget};

use lb_testing::{
    rig::{v6, Rig},
    testbed::{Host, Process},
    testrun::Loaded,
};

use super::{samples::Samples, Plan};
use crate::floors;

/// The balancing modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Client straight to the worker.
    Direct,
    /// nftables DNAT on the balancer host.
    Nftables,
    /// HAProxy on the balancer host.
    Haproxy,
    /// lb, L2 DSR.
    Lb,
    /// lb, full NAT (from a NAT source of its own).
    LbFullnat,
    /// The minimal stateless XDP forwarder, L2 DSR.
    Floor,
    /// lb, IPIP to the worker on the same link (after
    /// [`Setup::add_ipip`]).
    LbIpip,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Direct => "no balancer (client → worker)",
            Self::Nftables => "nftables DNAT + masquerade",
            Self::Haproxy => "HAProxy, TCP mode, 1 thread",
            Self::Lb => "lb, L2 DSR",
            Self::LbFullnat => "lb, full NAT",
            Self::Floor => "stateless XDP forwarder, L2 DSR",
            Self::LbIpip => "lb, IPIP",
        })
    }
}

/// The loads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Load {
    /// wrk over keep-alive connections (requests/s).
    KeepAlive,
    /// wrk with `Connection: close` (new connections/s).
    NewConnections,
    /// iperf3, one TCP stream (bits/s).
    Bulk,
}

impl fmt::Display for Load {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::KeepAlive => "keep-alive requests/s",
            Self::NewConnections => "new connections/s",
            Self::Bulk => "bulk throughput, Gbit/s",
        })
    }
}

/// The modes in the order they are interleaved.
pub const MODES: [Mode; 6] = [
    Mode::Direct,
    Mode::Nftables,
    Mode::Haproxy,
    Mode::Lb,
    Mode::LbFullnat,
    Mode::Floor,
];
/// The loads in the order they are interleaved.
pub const LOADS: [Load; 3] = [Load::KeepAlive, Load::NewConnections, Load::Bulk];

const WORKER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);
const BALANCER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const NFT_VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 200);
const LB_VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
const FLOOR_VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 101);
const FLOOR_HOST: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 3);
const LB_IPIP_VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 102);
const LB_FULLNAT_VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 103);
/// lb's NAT source: an address of the balancer's own, so that its ports
/// never meet masquerade's or HAProxy's (which take the host's address and
/// its whole port range here).
const NAT_SOURCE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 4);
const BULK_PORT: u16 = 5201;

/// One mode under one load, over the rounds.
pub struct Cell {
    /// The mode.
    pub mode: Mode,
    /// The load.
    pub load: Load,
    /// The figure (requests/s or Gbit/s), per round.
    pub rate: Samples,
    /// Balancer CPU per 1,000 requests (ms), per round, where measured.
    pub cpu_per_1000: Samples,
    /// Whole-machine softirq time per 1,000 requests (ms), per round.
    pub softirq_per_1000: Samples,
}

/// Runs every mode under every load, interleaved.
pub fn run(plan: &Plan) -> anyhow::Result<Vec<Cell>> {
    let rig = Rig::new(&plan.lb, 1, &[])?;
    let mut setup = Setup::new(rig)?;
    let mut cells: Vec<Cell> = MODES
        .iter()
        .flat_map(|&mode| {
            LOADS.iter().map(move |&load| Cell {
                mode,
                load,
                rate: Samples::default(),
                cpu_per_1000: Samples::default(),
                softirq_per_1000: Samples::default(),
            })
        })
        .collect();
    let rounds = if plan.quick { 1 } else { 3 };
    for round in 0..rounds {
        eprintln!("bench: end to end, round {} of {rounds}", round + 1);
        for cell in &mut cells {
            setup.measure(cell, plan.e2e_seconds)?;
        }
    }
    Ok(cells)
}

/// The rig with every mode ready at once.
pub struct Setup {
    rig: Rig,
    _floor: (Loaded, Host),
    haproxy: Process,
    _iperf: Process,
    lb_program: u32,
}

impl Setup {
    /// Readies every mode but [`Mode::LbIpip`] on `rig` (one worker).
    pub fn new(mut rig: Rig) -> anyhow::Result<Self> {
        let worker = rig.workers[0].clone();
        // lb again with a NAT source, before the tuning below widens the
        // host's port range over lb's NAT ports.
        rig.balancer.run(
            "ip",
            &["addr", "add", &format!("{NAT_SOURCE}/24"), "dev", "eth0"],
        )?;
        rig.lb.stop()?;
        rig.start_lb(&["--nat-source", &NAT_SOURCE.to_string()])?;
        // The worker's replies cross lb's program under full NAT: they
        // must carry whole checksums, not the partial ones a veth hands
        // on with TX offload.
        worker.run("ethtool", &["-K", "eth0", "tx", "off"])?;
        for vip in [LB_VIP, FLOOR_VIP] {
            worker.run(
                "ip",
                &["addr", "replace", &format!("{vip}/32"), "dev", "lo"],
            )?;
        }
        let iperf = Process::spawn(
            worker
                .command("iperf3")
                .args(["-s", "-p", &BULK_PORT.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
            "iperf3 server",
        )?;
        for vip in ["192.0.2.100:80/tcp", "192.0.2.100:5201/tcp"] {
            rig.lb.cli_ok(&["vip", "add", vip])?;
            rig.lb
                .cli_ok(&["backend", "add", vip, &WORKER.to_string()])?;
        }
        let status: serde_json::Value =
            serde_json::from_str(&rig.lb.cli_ok(&["status", "-o", "json"])?)?;
        let lb_program = status["program_id"].as_u64().context("no program id")? as u32;
        tune_balancer(&rig.balancer)?;
        for vip in ["192.0.2.103:80/tcp", "192.0.2.103:5201/tcp"] {
            rig.lb
                .cli_ok(&["vip", "add", vip, "--forward", "fullnat"])?;
            rig.lb
                .cli_ok(&["backend", "add", vip, &WORKER.to_string()])?;
        }
        nftables(&rig.balancer)?;
        let haproxy = haproxy(&rig)?;
        let floor = floor_forwarder(&mut rig, &worker)?;
        let routes = [
            (NFT_VIP, BALANCER),
            (FLOOR_VIP, FLOOR_HOST),
            (LB_FULLNAT_VIP, BALANCER),
        ];
        for (vip, via) in routes {
            rig.client.run(
                "ip",
                &[
                    "route",
                    "replace",
                    &format!("{vip}/32"),
                    "via",
                    &via.to_string(),
                ],
            )?;
        }
        worker.within(|| {
            lb_testing::testbed::wait_for_listener(
                (WORKER, BULK_PORT).into(),
                Duration::from_secs(5),
            )
        })??;
        Ok(Self {
            rig,
            _floor: floor,
            haproxy,
            _iperf: iperf,
            lb_program,
        })
    }

    /// Readies [`Mode::LbIpip`]: a VIP forwarded by IPIP, and `lb decap`
    /// (the `lb` binary) on the worker, which is its own next hop on the
    /// link. The decap program then sees every mode's packets there.
    pub fn add_ipip(&mut self, lb: &Path) -> anyhow::Result<()> {
        let worker = self.rig.workers[0].clone();
        worker.run(
            "ip",
            &["addr", "replace", &format!("{LB_IPIP_VIP}/32"), "dev", "lo"],
        )?;
        let pins = self.rig.bed.pin_dir("decap-w1");
        let output = worker
            .command(lb)
            .args(["decap", "attach", "--iface", "eth0", "--pin-dir"])
            .arg(&pins)
            .output()
            .context("running lb decap attach")?;
        if !output.status.success() {
            bail!(
                "lb decap attach: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        let vip = format!("{LB_IPIP_VIP}:80/tcp");
        self.rig
            .lb
            .cli_ok(&["vip", "add", &vip, "--forward", "ipip"])?;
        self.rig
            .lb
            .cli_ok(&["backend", "add", &vip, &WORKER.to_string()])?;
        self.rig.client.run(
            "ip",
            &[
                "route",
                "replace",
                &format!("{LB_IPIP_VIP}/32"),
                "via",
                &BALANCER.to_string(),
            ],
        )?;
        self.rig.client.within(|| {
            lb_testing::testbed::wait_for_listener((LB_IPIP_VIP, 80).into(), Duration::from_secs(5))
        })??;
        Ok(())
    }

    /// The client host.
    pub fn client(&self) -> &Host {
        &self.rig.client
    }

    /// The hosts whose processes serve the requests: the worker and the
    /// balancer.
    pub fn servers(&self) -> [&Host; 2] {
        [&self.rig.workers[0], &self.rig.balancer]
    }

    /// The address the client sends a mode's requests to (port 80).
    pub fn target(mode: Mode) -> Ipv4Addr {
        match mode {
            Mode::Direct => WORKER,
            Mode::Nftables => NFT_VIP,
            Mode::Haproxy => BALANCER,
            Mode::Lb => LB_VIP,
            Mode::LbFullnat => LB_FULLNAT_VIP,
            Mode::Floor => FLOOR_VIP,
            Mode::LbIpip => LB_IPIP_VIP,
        }
    }

    fn measure(&mut self, cell: &mut Cell, seconds: u32) -> anyhow::Result<()> {
        let target = Self::target(cell.mode);
        eprintln!("bench:   {} / {}", cell.mode, cell.load);
        let cpu_before = self.balancer_cpu_ns(cell.mode)?;
        let softirq_before = softirq_ns()?;
        let (rate, requests) = match cell.load {
            Load::KeepAlive => wrk(&self.rig.client, target, seconds, false)?,
            Load::NewConnections => wrk(&self.rig.client, target, seconds, true)?,
            Load::Bulk => (iperf(&self.rig.client, target, seconds)? / 1e9, 0.0),
        };
        let cpu = self
            .balancer_cpu_ns(cell.mode)?
            .zip(cpu_before)
            .map(|(a, b)| a - b);
        let softirq = softirq_ns()? - softirq_before;
        cell.rate.push(rate);
        if requests > 0.0 {
            if let Some(cpu) = cpu {
                cell.cpu_per_1000.push(cpu / 1e6 / requests * 1000.0);
            }
            cell.softirq_per_1000
                .push(softirq / 1e6 / requests * 1000.0);
        }
        Ok(())
    }

    /// CPU the balancer itself used so far (ns): lb's and the forwarder's
    /// program run time (bpf_stats), HAProxy's process time; `None` where
    /// there is no such figure (nftables runs in softirq, counted apart).
    fn balancer_cpu_ns(&self, mode: Mode) -> anyhow::Result<Option<f64>> {
        Ok(match mode {
            Mode::Lb | Mode::LbIpip | Mode::LbFullnat => Some(program_run_ns(self.lb_program)?),
            Mode::Floor => Some(program_run_ns_by_name(floor::FORWARD)?),
            Mode::Haproxy => Some(process_cpu_ns(self.haproxy_pid())?),
            Mode::Direct | Mode::Nftables => None,
        })
    }

    fn haproxy_pid(&self) -> u32 {
        self.haproxy.id()
    }
}

/// What a host that forwards or proxies many short connections is tuned
/// with: forwarding on, the whole port range, reuse of TIME_WAIT ports for
/// new outgoing connections (HAProxy and masquerade run out of ports
/// otherwise within seconds).
fn tune_balancer(balancer: &Host) -> anyhow::Result<()> {
    balancer.within(|| {
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")?;
        std::fs::write("/proc/sys/net/ipv4/ip_local_port_range", "1024 65535")?;
        std::fs::write("/proc/sys/net/ipv4/tcp_tw_reuse", "1")
    })??;
    Ok(())
}

fn nftables(balancer: &Host) -> anyhow::Result<()> {
    let rules = format!(
        "table ip lb_bench {{\n\
           chain pre {{ type nat hook prerouting priority dstnat; policy accept;\n\
             ip daddr {NFT_VIP} tcp dport {{ 80, {BULK_PORT} }} dnat to jhash ip saddr . tcp sport mod 1 map {{ 0 : {WORKER} }}\n\
           }}\n\
           chain post {{ type nat hook postrouting priority srcnat; policy accept;\n\
             ip daddr {WORKER} masquerade\n\
           }}\n\
         }}\n"
    );
    let mut child = balancer
        .command("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .context("running nft; install nftables (`cargo xtask bench` does)")?;
    std::io::Write::write_all(child.stdin.as_mut().context("nft stdin")?, rules.as_bytes())?;
    drop(child.stdin.take());
    if !child.wait()?.success() {
        bail!("nft refused the bench rules");
    }
    Ok(())
}

fn haproxy(rig: &Rig) -> anyhow::Result<Process> {
    let dir = std::env::temp_dir().join(format!("lb-bench-haproxy-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let conf = dir.join("haproxy.cfg");
    std::fs::write(
        &conf,
        format!(
            "global\n  nbthread 1\n  maxconn 4000\n\
             defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
             listen web\n  bind {BALANCER}:80\n  server w1 {WORKER}:80\n\
             listen bulk\n  bind {BALANCER}:{BULK_PORT}\n  server w1 {WORKER}:{BULK_PORT}\n"
        ),
    )?;
    let process = Process::spawn(
        rig.balancer
            .command("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
        "haproxy",
    )?;
    rig.balancer.within(|| {
        lb_testing::testbed::wait_for_listener((BALANCER, 80).into(), Duration::from_secs(5))
    })??;
    Ok(process)
}

/// A host running the floor forwarder: FLOOR_VIP → the worker's MAC.
fn floor_forwarder(rig: &mut Rig, worker: &Host) -> anyhow::Result<(Loaded, Host)> {
    let host = rig.bed.add_host("fwd", FLOOR_HOST, v6(3))?;
    rig.bed.accept_xdp_tx_from("fwd")?;
    // `ip`, not /sys: nsenter --net keeps the root namespace's sysfs.
    let link: serde_json::Value =
        serde_json::from_str(&worker.run("ip", &["-j", "link", "show", "eth0"])?)?;
    let mac = link[0]["address"]
        .as_str()
        .and_then(lb_userspace::kernel::neighbour::parse_mac)
        .context("the worker's MAC")?;
    let mut loaded = floors::load()?;
    let mut target: Array<_, ForwardTarget> = loaded
        .ebpf_mut()
        .map_mut(floor_maps::TARGET)
        .context("no target map")?
        .try_into()?;
    target.set(
        0,
        ForwardTarget {
            vip: FLOOR_VIP.octets(),
            mac,
            pad: [0; 2],
        },
        0,
    )?;
    let program = loaded.program_mut(floor::FORWARD)?;
    host.within(|| program.attach("eth0", XdpMode::Driver).map(drop))??;
    Ok((loaded, host))
}

/// (requests/s, requests) from wrk.
fn wrk(client: &Host, target: Ipv4Addr, seconds: u32, close: bool) -> anyhow::Result<(f64, f64)> {
    // wrk can outlive its -d when its connections stall: bounded here.
    let mut cmd = client.command("timeout");
    cmd.args(["-s", "KILL", &(seconds + 20).to_string(), "wrk"]);
    cmd.args(["-t1", "-c16", &format!("-d{seconds}s"), "--timeout", "2s"]);
    if close {
        cmd.args(["-H", "Connection: close"]);
    }
    cmd.arg(format!("http://{target}/"));
    let output = cmd.stdin(Stdio::null()).output().context("running wrk")?;
    let text = String::from_utf8_lossy(&output.stdout);
    let rate = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| {
            format!(
                "wrk to {target} printed no rate: {text}{}",
                String::from_utf8_lossy(&output.stderr)
            )
        })?;
    let requests = text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .and_then(|(n, _)| n.trim().parse().ok())
        .with_context(|| format!("wrk printed no request count: {text}"))?;
    Ok((rate, requests))
}

/// Bits/s of one iperf3 TCP stream.
fn iperf(client: &Host, target: Ipv4Addr, seconds: u32) -> anyhow::Result<f64> {
    let output = client
        .command("iperf3")
        .args(["-c", &target.to_string(), "-p", &BULK_PORT.to_string()])
        .args([
            "-t",
            &seconds.to_string(),
            "-J",
            "--connect-timeout",
            "3000",
        ])
        .stdin(Stdio::null())
        .output()
        .context("running iperf3")?;
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)
        .with_context(|| format!("iperf3 printed {}", String::from_utf8_lossy(&output.stdout)))?;
    report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .with_context(|| format!("no throughput in iperf3's report: {}", report["error"]))
}

/// Total run time of a program so far (bpf_stats must be on).
fn program_run_ns(id: u32) -> anyhow::Result<f64> {
    let output = Command::new("bpftool")
        .args(["prog", "show", "id", &id.to_string(), "-j"])
        .output()
        .context("running bpftool")?;
    let info: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    Ok(info["run_time_ns"].as_f64().unwrap_or(0.0))
}

fn program_run_ns_by_name(name: &str) -> anyhow::Result<f64> {
    let output = Command::new("bpftool")
        .args(["prog", "show", "name", name, "-j"])
        .output()
        .context("running bpftool")?;
    let text = String::from_utf8_lossy(&output.stdout);
    // One object per program of that name; ours is the one that runs.
    let total = serde_json::Deserializer::from_str(&text)
        .into_iter::<serde_json::Value>()
        .flatten()
        .map(|v| v["run_time_ns"].as_f64().unwrap_or(0.0))
        .sum();
    Ok(total)
}

/// utime + stime of a process (ns).
fn process_cpu_ns(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("odd /proc stat")?
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    Ok(ticks * 1e9 / clock_ticks())
}

/// Softirq time of the whole machine so far (ns).
fn softirq_ns() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let cpu = stat.lines().next().context("empty /proc/stat")?;
    let softirq: f64 = cpu
        .split_whitespace()
        .nth(7)
        .context("no softirq column")?
        .parse()?;
    Ok(softirq * 1e9 / clock_ticks())
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// Turns on the kernel's BPF run-time statistics for the run; restores
/// the old setting on drop.
pub struct BpfStats(String);

impl BpfStats {
    /// Enables `kernel.bpf_stats_enabled`.
    pub fn enable() -> anyhow::Result<Self> {
        let path = "/proc/sys/kernel/bpf_stats_enabled";
        let old = std::fs::read_to_string(path)?.trim().to_owned();
        std::fs::write(path, "1")?;
        Ok(Self(old))
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", &self.0);
    }
}
