//! Network namespace rigs for end-to-end tests and the demo.
//!
//! A [`Testbed`] is a switch namespace holding a bridge, plus one namespace
//! per host, each joined to the bridge by a veth pair (`eth0` in the host,
//! `p-<role>` in the switch). Everything it creates carries a name unique to
//! this process and is removed when the testbed is dropped, on panic too;
//! rigs left behind by a killed process are removed by the next one.
//!
//! Addresses must come from the documentation ranges (192.0.2.0/24,
//! 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32): test traffic never goes
//! anywhere else.

use std::{
    ffi::OsString,
    fs,
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use anyhow::{bail, ensure, Context as _};
use aya::{programs::Xdp, Ebpf, EbpfLoader};
use lb_common::program_names;

use lb_userspace::{
    dataplane::object,
    desired::instance::{self, Paths, DEFAULT_NAME},
};

use crate::wait::poll;

const NETNS_DIR: &str = "/run/netns";
const NAME_PREFIX: &str = "lbt";
const BRIDGE: &str = "br0";
/// The host side of every host's veth pair.
pub const HOST_IFACE: &str = "eth0";

static NEXT_RIG: AtomicU32 = AtomicU32::new(0);

/// One host of a testbed.
#[derive(Clone, Debug)]
pub struct Host {
    /// Short role name, such as `client` or `w1`.
    pub role: String,
    /// Name of its network namespace (under /run/netns).
    pub netns: String,
    /// Its IPv4 address on the bridge (/24).
    pub ipv4: Ipv4Addr,
    /// Its IPv6 address on the bridge (/64).
    pub ipv6: Ipv6Addr,
}

impl Host {
    /// Runs `exe run ARGS` here, which is expected to refuse to start
    /// within `limit`; returns whether it exited successfully and what it
    /// printed on stderr.
    pub fn run_lb_expecting_refusal(
        &self,
        exe: &Path,
        args: &[&str],
        limit: Duration,
    ) -> anyhow::Result<(bool, String)> {
        let mut cmd = self.command(exe);
        cmd.arg("run")
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut lb = Process::spawn(&mut cmd, "lb run")?;
        let status = lb.wait_timeout(limit)?;
        let mut stderr = String::new();
        lb.child()
            .stderr
            .take()
            .context("lb run has no stderr")?
            .read_to_string(&mut stderr)?;
        Ok((status.success(), stderr))
    }

    /// Path of the namespace file, for setns and `nsenter --net=`.
    pub fn netns_path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.netns)
    }

    /// A command that runs `program` inside this host's network namespace
    /// only, keeping the machine's mount namespace (and so its bpffs).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.netns_path().display()))
            .arg("--")
            .arg(program);
        cmd
    }

    /// Runs a command in this host's namespace and fails with its stderr if
    /// it fails.
    pub fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        output_of(self.command(program).args(args))
    }

    /// Makes this host a DSR worker for `vips`: the VIPs on loopback, and
    /// ARP settings (arp_ignore=1, arp_announce=2) so that it never answers
    /// ARP for them or uses them as ARP source addresses; replies then go
    /// straight to the client.
    pub fn hold_vips_on_loopback(&self, vips: &[IpAddr]) -> anyhow::Result<()> {
        for vip in vips {
            let prefix = if vip.is_ipv4() { 32 } else { 128 };
            self.run(
                "ip",
                &["addr", "add", &format!("{vip}/{prefix}"), "dev", "lo"],
            )?;
        }
        self.run(
            "sysctl",
            &[
                "-qw",
                "net.ipv4.conf.all.arp_ignore=1",
                "net.ipv4.conf.all.arp_announce=2",
            ],
        )
        .map(drop)
    }

    /// Runs `work` on a thread that has entered this host's network
    /// namespace; sockets it opens live in that namespace.
    pub fn within<T: Send>(&self, work: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
        let path = self.netns_path();
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    enter_netns(&path)?;
                    Ok(work())
                })
                .join()
                .map_err(|_| anyhow::anyhow!("a thread in netns {} panicked", self.netns))?
        })
    }

    /// Reads one of this namespace's /proc/net files (`snmp`, `snmp6`, ...).
    pub fn proc_net(&self, file: &str) -> anyhow::Result<String> {
        let path = format!("/proc/thread-self/net/{file}");
        self.within(move || fs::read_to_string(&path))?
            .with_context(|| format!("reading /proc/net/{file} in {}", self.netns))
    }

    /// A counter of the host's `eth0` as the kernel keeps it: `direction`
    /// is `rx` or `tx`, `field` e.g. `packets` or `bytes`.
    pub fn iface_stat(&self, direction: &str, field: &str) -> anyhow::Result<u64> {
        let text = self.run("ip", &["-s", "-j", "link", "show", HOST_IFACE])?;
        let value: serde_json::Value = serde_json::from_str(&text)?;
        value[0]["stats64"][direction][field]
            .as_u64()
            .with_context(|| format!("no {direction} {field} in `ip -s -j link` output"))
    }
}

/// A child process that is killed when dropped.
pub struct Process {
    child: Child,
    what: String,
}

impl Process {
    /// Starts `cmd`, describing it as `what` in errors.
    pub fn spawn(cmd: &mut Command, what: &str) -> anyhow::Result<Self> {
        let child = cmd.spawn().with_context(|| format!("starting {what}"))?;
        Ok(Self {
            child,
            what: what.to_owned(),
        })
    }

    /// Its process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The underlying child, for its pipes.
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: libc::c_int) -> anyhow::Result<()> {
        // SAFETY: plain kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        ensure!(
            rc == 0,
            "signalling {}: {}",
            self.what,
            std::io::Error::last_os_error()
        );
        Ok(())
    }

    /// Waits up to `limit` for the process to exit and returns its status.
    pub fn wait_timeout(&mut self, limit: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let what = format!("{} exited", self.what);
        poll(Duration::from_millis(20), limit, &what, || {
            self.child.try_wait()
        })
    }
}

impl Drop for Process {
    /// Asks the process to stop (SIGTERM), then kills it if it is still
    /// there after a grace period.
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        if self.signal(libc::SIGTERM).is_err() || self.wait_timeout(Duration::from_secs(3)).is_err()
        {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// How to start one `lb run`: its paths, the CLI arguments that select
/// it, the `lb run` arguments that give them, and its log file.
struct Launch {
    paths: Paths,
    select: Vec<OsString>,
    run_args: Vec<OsString>,
    log: PathBuf,
    env: Vec<(String, OsString)>,
}

/// An `lb run` started in a testbed host, with its own pin directory and
/// admin socket.
pub struct LbProcess {
    process: Process,
    output: std::io::BufReader<std::process::ChildStdout>,
    exe: PathBuf,
    paths: Paths,
    /// What tells the CLI which instance: `--name`, or `--socket` and
    /// `--pin-dir`.
    select: Vec<OsString>,
    log: PathBuf,
    /// The line `lb run` printed once it had attached.
    pub attached_line: String,
    /// The line after it: what it found on the interface.
    pub takeover_line: String,
}

/// Debian's libfaketime (package faketime).
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

impl LbProcess {
    /// Starts `exe run --iface eth0` in `host` with the testbed's pin
    /// directory, socket and state file called `name`, plus `extra`
    /// arguments, and waits until it reports that it attached.
    pub fn start(
        exe: &Path,
        bed: &mut Testbed,
        host: &Host,
        name: &str,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        Self::start_limited(exe, bed, host, name, extra, None)
    }

    /// As [`LbProcess::start`], with the open-file limit (soft and hard)
    /// set to `nofile` when given, as a service manager would.
    pub fn start_limited(
        exe: &Path,
        bed: &mut Testbed,
        host: &Host,
        name: &str,
        extra: &[&str],
        nofile: Option<u64>,
    ) -> anyhow::Result<Self> {
        let pin_dir = bed.pin_dir(name);
        Self::start_at(exe, bed, host, name, &pin_dir, extra, nofile)
    }

    /// As [`LbProcess::start`], pinning under `pin_dir` (on a BPF
    /// filesystem of the test's own, say), which is removed with the
    /// testbed.
    pub fn start_pinned(
        exe: &Path,
        bed: &mut Testbed,
        host: &Host,
        name: &str,
        pin_dir: &Path,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        bed.remove_with_testbed(pin_dir);
        Self::start_at(exe, bed, host, name, pin_dir, extra, None)
    }

    fn start_at(
        exe: &Path,
        bed: &mut Testbed,
        host: &Host,
        name: &str,
        pin_dir: &Path,
        extra: &[&str],
        nofile: Option<u64>,
    ) -> anyhow::Result<Self> {
        let socket = bed.socket(name);
        let launch = Self::launch(socket, pin_dir);
        Self::spawn(exe, host, launch, extra, nofile)
    }

    /// The pin directory, socket, state file and log of an instance of
    /// the testbed, and the arguments that select them.
    fn launch(socket: PathBuf, pin_dir: &Path) -> Launch {
        let paths = Paths::new(
            DEFAULT_NAME.parse().expect("the default name is one"),
            Some(pin_dir.to_owned()),
            Some(socket.clone()),
            Some(socket.with_extension("json")),
        );
        let select: Vec<OsString> = vec![
            "--socket".into(),
            paths.socket.clone().into(),
            "--pin-dir".into(),
            paths.pin_dir.clone().into(),
        ];
        let mut run_args = select.clone();
        run_args.extend(["--state-file".into(), paths.state_file.clone().into()]);
        Launch {
            paths,
            select,
            run_args,
            log: socket.with_extension("log"),
            env: Vec::new(),
        }
    }

    /// As [`LbProcess::start`], under libfaketime with its wall clock
    /// read from `clock_file` (libfaketime's `+1h` and the like, read
    /// anew at every call; the monotonic clock stays true): a test steps
    /// lb's wall clock by writing the file.
    pub fn start_with_clock(
        exe: &Path,
        bed: &mut Testbed,
        host: &Host,
        name: &str,
        extra: &[&str],
        clock_file: &Path,
    ) -> anyhow::Result<Self> {
        let socket = bed.socket(name);
        let pin_dir = bed.pin_dir(name);
        let mut launch = Self::launch(socket, &pin_dir);
        launch.env = vec![
            ("LD_PRELOAD".into(), LIBFAKETIME.into()),
            ("FAKETIME_TIMESTAMP_FILE".into(), clock_file.into()),
            ("FAKETIME_NO_CACHE".into(), "1".into()),
            ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
        ];
        Self::spawn(exe, host, launch, extra, None)
    }

    /// Starts `exe run --iface eth0 --name NAME` in `host`, NAME unique to
    /// the testbed and `role`, so that its pin directory, socket and state
    /// file are the ones lb derives from the name (removed with the
    /// testbed); the CLI finds it by `--name` too.
    pub fn start_named(
        exe: &Path,
        bed: &mut Testbed,
        host: &Host,
        role: &str,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let paths = bed.instance(role)?;
        let select: Vec<OsString> = vec!["--name".into(), paths.name.to_string().into()];
        let launch = Launch {
            paths,
            run_args: select.clone(),
            select,
            log: bed.socket(role).with_extension("log"),
            env: Vec::new(),
        };
        Self::spawn(exe, host, launch, extra, None)
    }

    fn spawn(
        exe: &Path,
        host: &Host,
        launch: Launch,
        extra: &[&str],
        nofile: Option<u64>,
    ) -> anyhow::Result<Self> {
        let Launch {
            paths,
            select,
            run_args,
            log,
            env,
        } = launch;
        let log_file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let mut cmd = host.command(exe);
        cmd.args(["run", "--iface", HOST_IFACE])
            .args(&run_args)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file);
        if let Some(nofile) = nofile {
            limit_open_files(&mut cmd, nofile);
        }
        cmd.envs(env);
        let mut process = Process::spawn(&mut cmd, &format!("lb run in {}", host.netns))?;
        let stdout = process
            .child()
            .stdout
            .take()
            .context("lb run has no stdout")?;
        let mut output = std::io::BufReader::new(stdout);
        let mut attached_line = String::new();
        std::io::BufRead::read_line(&mut output, &mut attached_line)?;
        if !attached_line.contains("attached") {
            let _ = process.wait_timeout(Duration::from_secs(5));
            let log = fs::read_to_string(&log).unwrap_or_default();
            let last = log.lines().last().unwrap_or_default();
            bail!(
                "lb run in {} did not attach (it printed {attached_line:?}): {last}",
                host.netns
            );
        }
        let mut takeover_line = String::new();
        std::io::BufRead::read_line(&mut output, &mut takeover_line)?;
        Ok(Self {
            process,
            output,
            exe: exe.to_owned(),
            paths,
            select,
            log,
            attached_line,
            takeover_line,
        })
    }

    /// The process id of `lb run`.
    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    /// The `lb` binary it runs.
    pub fn exe(&self) -> &Path {
        &self.exe
    }

    /// What `lb run` logged (standard error), across restarts.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// This instance's state file.
    pub fn state_file(&self) -> PathBuf {
        self.paths.state_file.clone()
    }

    /// This instance's pin directory.
    pub fn pin_dir(&self) -> &Path {
        &self.paths.pin_dir
    }

    /// This instance's name, pin directory, socket and state file.
    pub fn paths(&self) -> &Paths {
        &self.paths
    }

    /// Runs an `lb` CLI command against this instance (with `--name`, or
    /// `--socket` and `--pin-dir`, appended).
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<std::process::Output> {
        let mut cmd = Command::new(&self.exe);
        cmd.args(args).args(&self.select);
        cmd.output().context("running lb")
    }

    /// Runs an `lb` CLI command that must succeed; returns its stdout.
    pub fn cli_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = self.cli(args)?;
        ensure!(
            output.status.success(),
            "lb {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// `lb status -o json`, whole.
    pub fn status_json(&self) -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::from_str(
            &self.cli_ok(&["status", "-o", "json"])?,
        )?)
    }

    /// `lb stats -o json`, whole.
    pub fn stats_json(&self) -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::from_str(
            &self.cli_ok(&["stats", "-o", "json"])?,
        )?)
    }

    /// The global counters, as `lb stats -o json` reports them.
    pub fn stats(&self) -> anyhow::Result<lb_common::counters::GlobalCounters> {
        let json = self.stats_json()?;
        serde_json::from_value(json["global"].clone())
            .with_context(|| format!("unexpected `lb stats` output {json}"))
    }

    /// Sends `signal` to `lb run` (SIGSTOP and SIGCONT, say).
    pub fn signal(&self, signal: libc::c_int) -> anyhow::Result<()> {
        self.process.signal(signal)
    }

    /// Kills `lb run` with SIGKILL, as a crash would.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.process.signal(libc::SIGKILL)?;
        self.process.wait_timeout(Duration::from_secs(10))?;
        Ok(())
    }

    /// Stops `lb run` with SIGINT and returns what it printed after the
    /// attach line; fails unless it exits successfully.
    pub fn stop(&mut self) -> anyhow::Result<String> {
        self.process.signal(libc::SIGINT)?;
        let status = self.process.wait_timeout(Duration::from_secs(10))?;
        let mut rest = String::new();
        self.output.read_to_string(&mut rest)?;
        ensure!(status.success(), "lb run exited with {status}: {rest}");
        Ok(rest)
    }
}

/// Makes `cmd` start with at most `nofile` open files, soft and hard
/// limit alike (nsenter keeps them across its exec of the program).
fn limit_open_files(cmd: &mut Command, nofile: u64) {
    use std::os::unix::process::CommandExt as _;
    let limit = libc::rlimit {
        rlim_cur: nofile,
        rlim_max: nofile,
    };
    // SAFETY: the closure runs in the child between fork and exec, where
    // only async-signal-safe calls are allowed: setrlimit is one, and it
    // allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}

/// A bridge in its own namespace and the hosts plugged into it.
pub struct Testbed {
    prefix: String,
    switch: String,
    hosts: Vec<Host>,
    /// Pin directories and socket directories, removed on drop.
    cleanup_dirs: Vec<PathBuf>,
    /// Sockets and state files of instances with derived paths, removed on
    /// drop.
    cleanup_files: Vec<PathBuf>,
    /// BPF filesystems of the testbed's own, unmounted on drop.
    mounts: Vec<PathBuf>,
    programs: Vec<Ebpf>,
}

impl Testbed {
    /// Creates an empty switch. Needs root.
    pub fn new() -> anyhow::Result<Self> {
        ensure!(
            lb_userspace::kernel::privileges::can_manage_xdp(),
            "network namespace rigs need root (CAP_NET_ADMIN and CAP_BPF); run the tests with sudo"
        );
        remove_stale_rigs();
        let prefix = format!(
            "{NAME_PREFIX}-{}-{}",
            std::process::id(),
            NEXT_RIG.fetch_add(1, Ordering::Relaxed)
        );
        let switch = format!("{prefix}-sw");
        let bed = Self {
            prefix,
            switch: switch.clone(),
            hosts: Vec::new(),
            cleanup_dirs: Vec::new(),
            cleanup_files: Vec::new(),
            mounts: Vec::new(),
            programs: Vec::new(),
        };
        ip(&["netns", "add", &switch])?;
        ip(&["-n", &switch, "link", "add", BRIDGE, "type", "bridge"])?;
        ip(&["-n", &switch, "link", "set", BRIDGE, "up"])?;
        Ok(bed)
    }

    /// Adds a host named `role` (at most 12 characters) with the given
    /// addresses on the bridge.
    pub fn add_host(&mut self, role: &str, ipv4: Ipv4Addr, ipv6: Ipv6Addr) -> anyhow::Result<Host> {
        self.add_host_on(BRIDGE, role, ipv4, ipv6)
    }

    /// Adds another switch, `bridge` (say `br1`): a network of its own,
    /// which a host with legs on both (see [`Testbed::add_leg`]) routes to.
    pub fn add_switch(&mut self, bridge: &str) -> anyhow::Result<()> {
        ip(&["-n", &self.switch, "link", "add", bridge, "type", "bridge"])?;
        ip(&["-n", &self.switch, "link", "set", bridge, "up"]).map(drop)
    }

    /// As [`Testbed::add_host`], on switch `bridge`.
    pub fn add_host_on(
        &mut self,
        bridge: &str,
        role: &str,
        ipv4: Ipv4Addr,
        ipv6: Ipv6Addr,
    ) -> anyhow::Result<Host> {
        let peer = peer_name(role);
        let switch = self.switch.clone();
        let host = self.new_host(role, ipv4, ipv6, &peer, &switch)?;
        ip(&["-n", &switch, "link", "set", &peer, "master", bridge, "up"])?;
        ip(&[
            "-n",
            &host.netns,
            "addr",
            "add",
            &format!("{ipv6}/64"),
            "dev",
            HOST_IFACE,
            "nodad",
        ])?;
        Ok(host)
    }

    /// Gives `host` a second interface, `eth1`, on switch `bridge` with
    /// `ipv4`/24 and `ipv6`/64, and has it forward between its legs: a
    /// router.
    pub fn add_leg(
        &mut self,
        host: &Host,
        bridge: &str,
        ipv4: Ipv4Addr,
        ipv6: Ipv6Addr,
    ) -> anyhow::Result<()> {
        let peer = format!("{}-1", peer_name(&host.role));
        let n = host.netns.as_str();
        ip(&[
            "link",
            "add",
            "eth1",
            "netns",
            n,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
            "netns",
            &self.switch,
        ])?;
        ip(&[
            "-n",
            &self.switch,
            "link",
            "set",
            &peer,
            "master",
            bridge,
            "up",
        ])?;
        ip(&["-n", n, "addr", "add", &format!("{ipv4}/24"), "dev", "eth1"])?;
        ip(&[
            "-n",
            n,
            "addr",
            "add",
            &format!("{ipv6}/64"),
            "dev",
            "eth1",
            "nodad",
        ])?;
        ip(&["-n", n, "link", "set", "eth1", "up"])?;
        host.run(
            "sysctl",
            &[
                "-qw",
                "net.ipv4.ip_forward=1",
                "net.ipv6.conf.all.forwarding=1",
            ],
        )
        .map(drop)
    }

    /// A new namespace for `role` whose `eth0` (up, with `ipv4`/24) is a
    /// veth whose other end, `peer`, lies in namespace `peer_netns`.
    fn new_host(
        &mut self,
        role: &str,
        ipv4: Ipv4Addr,
        ipv6: Ipv6Addr,
        peer: &str,
        peer_netns: &str,
    ) -> anyhow::Result<Host> {
        ensure!(
            role.len() <= 12,
            "host role `{role}` is longer than 12 characters"
        );
        let host = Host {
            role: role.to_owned(),
            netns: format!("{}-{role}", self.prefix),
            ipv4,
            ipv6,
        };
        ip(&["netns", "add", &host.netns])?;
        self.hosts.push(host.clone());
        ip(&[
            "link",
            "add",
            HOST_IFACE,
            "netns",
            &host.netns,
            "type",
            "veth",
            "peer",
            "name",
            peer,
            "netns",
            peer_netns,
        ])?;
        let n = host.netns.as_str();
        ip(&["-n", n, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            n,
            "addr",
            "add",
            &format!("{ipv4}/24"),
            "dev",
            HOST_IFACE,
        ])?;
        ip(&["-n", n, "link", "set", HOST_IFACE, "up"])?;
        Ok(host)
    }

    /// The switch's namespace as a host without addresses: its interfaces
    /// are the bridges and the hosts' peers, none of them `eth0`.
    pub fn switch(&self) -> Host {
        Host {
            role: "switch".into(),
            netns: self.switch.clone(),
            ipv4: Ipv4Addr::UNSPECIFIED,
            ipv6: Ipv6Addr::UNSPECIFIED,
        }
    }

    /// The host called `role`.
    pub fn host(&self, role: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.role == role)
            .unwrap_or_else(|| panic!("no host {role} in this testbed"))
    }

    /// Adds a host that is not on the bridge but behind `router`, on a
    /// link of its own: `ipv4`/24 here, `router_ipv4` on the router's end,
    /// whose MTU is `router_mtu` (the host's end keeps 1500, so the router
    /// must fragment or send "fragmentation needed" on the way in).
    pub fn add_host_behind(
        &mut self,
        role: &str,
        router: &Host,
        ipv4: Ipv4Addr,
        router_ipv4: Ipv4Addr,
        router_mtu: u32,
    ) -> anyhow::Result<Host> {
        let peer = format!("r-{role}");
        let host = self.new_host(role, ipv4, Ipv6Addr::UNSPECIFIED, &peer, &router.netns)?;
        let (n, r) = (host.netns.as_str(), router.netns.as_str());
        ip(&[
            "-n",
            n,
            "route",
            "add",
            "default",
            "via",
            &router_ipv4.to_string(),
        ])?;
        ip(&[
            "-n",
            r,
            "addr",
            "add",
            &format!("{router_ipv4}/24"),
            "dev",
            &peer,
        ])?;
        ip(&[
            "-n",
            r,
            "link",
            "set",
            &peer,
            "mtu",
            &router_mtu.to_string(),
            "up",
        ])?;
        router.within(|| fs::write("/proc/sys/net/ipv4/ip_forward", "1"))??;
        host.run("ethtool", &["-K", HOST_IFACE, "tx", "off"])?;
        Ok(host)
    }

    /// Turns off TX checksum offload on a client's `eth0`: XDP rewrites on
    /// the balancer cannot complete the partial checksums a veth hands out.
    pub fn disable_tx_offload(&self, role: &str) -> anyhow::Result<()> {
        self.host(role)
            .run("ethtool", &["-K", HOST_IFACE, "tx", "off"])
            .map(drop)
    }

    /// Puts a do-nothing XDP program on the switch side of `role`'s veth, so
    /// that frames the host sends with XDP_TX are not dropped by the veth.
    pub fn accept_xdp_tx_from(&mut self, role: &str) -> anyhow::Result<()> {
        self.accept_xdp_on(peer_name(role))
    }

    /// As [`Testbed::accept_xdp_tx_from`], for the second leg (`eth1`,
    /// see [`Testbed::add_leg`]) of `role`: frames lb sends out of it
    /// (`XDP_TX`, or redirected from its other interface).
    pub fn accept_xdp_tx_from_leg(&mut self, role: &str) -> anyhow::Result<()> {
        self.accept_xdp_on(format!("{}-1", peer_name(role)))
    }

    /// Puts the do-nothing XDP program on `peer`, in the switch.
    fn accept_xdp_on(&mut self, peer: String) -> anyhow::Result<()> {
        let switch = self.switch();
        let ebpf = switch.within(move || -> anyhow::Result<Ebpf> {
            let mut ebpf = EbpfLoader::new().load(object::LB_XDP)?;
            let program: &mut Xdp = ebpf
                .program_mut(program_names::PASS)
                .context("the object has no pass program")?
                .try_into()?;
            program.load()?;
            program.attach(&peer, aya::programs::XdpMode::Driver)?;
            Ok(ebpf)
        })??;
        self.programs.push(ebpf);
        Ok(())
    }

    /// A fresh directory name on the machine's bpffs for one lb instance's
    /// pins; it and anything in it are removed with the testbed.
    pub fn pin_dir(&mut self, name: &str) -> PathBuf {
        let dir = Path::new("/sys/fs/bpf").join(format!("{}-{name}", self.prefix));
        self.cleanup_dirs.push(dir.clone());
        dir
    }

    /// Removes pin directory `dir`, and the lock files lb keeps for it,
    /// with the testbed.
    pub fn remove_with_testbed(&mut self, dir: &Path) {
        if !self.cleanup_dirs.iter().any(|d| d == dir) {
            self.cleanup_dirs.push(dir.to_owned());
        }
    }

    /// A BPF filesystem of this testbed's own, mounted with `mode` on a
    /// fresh directory and unmounted with the testbed: for a test that needs
    /// a bpffs mode other than the one the machine's happens to have (lb
    /// mounts /sys/fs/bpf root-only when nobody has; other tools leave it
    /// world-writable).
    pub fn own_bpffs(&mut self, mode: &str) -> anyhow::Result<PathBuf> {
        let dir = std::env::temp_dir().join(format!("{}-bpffs-{}", self.prefix, self.mounts.len()));
        fs::create_dir_all(&dir)?;
        let status = Command::new("mount")
            .args(["-t", "bpf", "-o", &format!("mode={mode}"), "bpf"])
            .arg(&dir)
            .status()
            .context("running mount")?;
        if !status.success() {
            let _ = fs::remove_dir(&dir);
            bail!("mount -t bpf on {} failed with {status}", dir.display());
        }
        self.mounts.push(dir.clone());
        Ok(dir)
    }

    /// Mounts a tmpfs of `bytes` on `dir` (which must exist), unmounted
    /// with the testbed: a file system a test can fill.
    pub fn small_tmpfs(&mut self, dir: &Path, bytes: u64) -> anyhow::Result<()> {
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={bytes},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .context("running mount")?;
        ensure!(
            status.success(),
            "mount -t tmpfs on {} failed with {status}",
            dir.display()
        );
        self.mounts.push(dir.to_owned());
        Ok(())
    }

    /// The paths lb derives for an instance named after this testbed and
    /// `role` (its pin directory is [`Testbed::pin_dir`]`(role)`); they
    /// are removed with the testbed.
    pub fn instance(&mut self, role: &str) -> anyhow::Result<Paths> {
        let pin_dir = self.pin_dir(role);
        let name = pin_dir.file_name().unwrap_or_default().to_string_lossy();
        let paths = Paths::new(name.parse()?, None, None, None);
        ensure!(paths.pin_dir == pin_dir, "{role}: pins elsewhere");
        let lock = PathBuf::from(format!("{}.lock", paths.state_file.display()));
        for file in [paths.socket.clone(), paths.state_file.clone(), lock] {
            if !self.cleanup_files.contains(&file) {
                self.cleanup_files.push(file);
            }
        }
        Ok(paths)
    }

    /// A fresh admin socket path for one lb instance, removed with the
    /// testbed.
    pub fn socket(&mut self, name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("{}-sockets", self.prefix));
        if !self.cleanup_dirs.contains(&dir) {
            let _ = fs::create_dir_all(&dir);
            self.cleanup_dirs.push(dir.clone());
        }
        dir.join(format!("{name}.sock"))
    }

    /// Starts nginx in `host`'s namespace on port 80 of all its addresses:
    /// `body` for every path, except `/slow`, a [`SLOW_BYTES`] download at
    /// [`SLOW_RATE`] bytes a second, and `/load`, the worker's load figure
    /// (see [`Testbed::set_load`]). Every answer names the worker in an
    /// `X-Worker` header.
    pub fn start_nginx(&self, host: &Host, body: &str) -> anyhow::Result<Process> {
        self.start_nginx_on(host, body, 80)
    }

    /// As [`Testbed::start_nginx`], on `port`; `/peer` answers with the
    /// address the connection came from.
    pub fn start_nginx_on(&self, host: &Host, body: &str, port: u16) -> anyhow::Result<Process> {
        let dir = self.nginx_dir(host);
        fs::create_dir_all(&dir)?;
        fs::write(dir.join("slow.bin"), vec![b'x'; SLOW_BYTES])?;
        if !dir.join("load").exists() {
            fs::write(dir.join("load"), "0\n")?;
        }
        let conf = dir.join("nginx.conf");
        fs::write(&conf, nginx_conf(&dir, body, port))?;
        let mut cmd = host.command("nginx");
        cmd.args([
            "-c",
            &conf.to_string_lossy(),
            "-e",
            &dir.join("error.log").to_string_lossy(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        let process = Process::spawn(&mut cmd, &format!("nginx in {}", host.netns))?;
        let probe = SocketAddr::new(IpAddr::V4(host.ipv4), port);
        host.within(move || wait_for_listener(probe, Duration::from_secs(10)))??;
        Ok(process)
    }
}

impl Testbed {
    /// Starts dnsmasq in `host`'s namespace, answering DNS on port 53 of
    /// the VIPs and the host's own addresses (health checks go there):
    /// `who.test` has the A record `answer`, which tells workers apart.
    /// It binds each address, so its replies come from the VIP, as DSR
    /// needs.
    pub fn start_dnsmasq(
        &self,
        host: &Host,
        vips: &[IpAddr],
        answer: Ipv4Addr,
    ) -> anyhow::Result<Process> {
        self.start_dnsmasq_on(host, vips, answer, 53)
    }

    /// As [`Testbed::start_dnsmasq`], on UDP port `port`.
    pub fn start_dnsmasq_on(
        &self,
        host: &Host,
        vips: &[IpAddr],
        answer: Ipv4Addr,
        port: u16,
    ) -> anyhow::Result<Process> {
        let listen: Vec<String> = vips
            .iter()
            .copied()
            .chain([IpAddr::V4(host.ipv4), IpAddr::V6(host.ipv6)])
            .map(|a| a.to_string())
            .collect();
        let mut cmd = host.command("dnsmasq");
        cmd.args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--pid-file=",
            "--user=root",
            "--bind-interfaces",
            &format!("--port={port}"),
            &format!("--listen-address={}", listen.join(",")),
            &format!("--host-record=who.test,{answer}"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        let process = Process::spawn(&mut cmd, &format!("dnsmasq in {}", host.netns))?;
        let what = format!("dnsmasq in {} listening on port {port}", host.netns);
        // dnsmasq listens on every address at once; /proc shows the port
        // in hex.
        let shown = format!(":{port:04X} ");
        poll(
            Duration::from_millis(20),
            Duration::from_secs(10),
            &what,
            || anyhow::Ok(host.proc_net("udp")?.contains(&shown)),
        )?;
        Ok(process)
    }

    /// Starts redis-server in `host`'s namespace on TCP port `port` of the
    /// host's addresses, keeping nothing on disk.
    pub fn start_redis(&self, host: &Host, port: u16) -> anyhow::Result<Process> {
        let mut cmd = host.command("redis-server");
        cmd.args([
            "--port",
            &port.to_string(),
            "--bind",
            &host.ipv4.to_string(),
            &host.ipv6.to_string(),
            "--protected-mode",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            &std::env::temp_dir().to_string_lossy(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        let process = Process::spawn(&mut cmd, &format!("redis in {}", host.netns))?;
        let what = format!("redis in {} listening on port {port}", host.netns);
        let shown = format!(":{port:04X} ");
        poll(
            Duration::from_millis(20),
            Duration::from_secs(10),
            &what,
            || anyhow::Ok(host.proc_net("tcp")?.contains(&shown)),
        )?;
        Ok(process)
    }

    fn nginx_dir(&self, host: &Host) -> PathBuf {
        std::env::temp_dir().join(format!("{}-nginx-{}", self.prefix, host.role))
    }

    /// Sets what `host`'s nginx answers on `/load`.
    pub fn set_load(&self, host: &Host, load: &str) -> anyhow::Result<()> {
        Ok(fs::write(self.nginx_dir(host).join("load"), load)?)
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        self.programs.clear();
        for dir in &self.cleanup_dirs {
            let _ = fs::remove_dir_all(dir);
            let _ = fs::remove_file(lb_userspace::dataplane::lock_path(dir));
            let _ = fs::remove_file(lb_userspace::dataplane::capture_lock_path(dir));
        }
        for file in &self.cleanup_files {
            let _ = fs::remove_file(file);
        }
        for dir in &self.mounts {
            // Pin directories made on it leave their locks in lb's lock
            // directory, like those on the machine's bpffs.
            for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
                let _ = fs::remove_file(lb_userspace::dataplane::lock_path(&entry.path()));
            }
            let _ = Command::new("umount").arg(dir).status();
            let _ = fs::remove_dir(dir);
        }
        for host in &self.hosts {
            let _ = ip(&["netns", "del", &host.netns]);
            let _ = fs::remove_dir_all(self.nginx_dir(host));
        }
        let _ = ip(&["netns", "del", &self.switch]);
    }
}

fn peer_name(role: &str) -> String {
    format!("p-{role}")
}

/// Size of nginx's `/slow` download.
pub const SLOW_BYTES: usize = 1 << 20;
/// Its rate in bytes a second: about four seconds in all.
pub const SLOW_RATE: usize = 256 * 1024;

fn nginx_conf(dir: &Path, body: &str, port: u16) -> String {
    let dir = dir.display();
    format!(
        "daemon off;\nmaster_process off;\nuser root;\nworker_processes 1;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {dir};\n  proxy_temp_path {dir};\n  \
         fastcgi_temp_path {dir};\n  uwsgi_temp_path {dir};\n  scgi_temp_path {dir};\n  \
         keepalive_requests 100000;\n  server {{\n    listen {port} reuseport;\n    listen [::]:{port} reuseport;\n    \
         add_header X-Worker \"{body}\" always;\n    \
         location / {{ default_type text/plain; return 200 \"{body}\\n\"; }}\n    \
         location = /slow {{ alias {dir}/slow.bin; default_type application/octet-stream; limit_rate {SLOW_RATE}; }}\n    \
         location = /load {{ alias {dir}/load; default_type text/plain; }}\n    \
         location = /peer {{ default_type text/plain; return 200 \"$remote_addr\\n\"; }}\n  }}\n}}\n"
    )
}

/// Enters the network namespace at `path` on the calling thread.
pub fn enter_netns(path: &Path) -> anyhow::Result<()> {
    let file = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: setns on a valid namespace fd affects only this thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!(
            "entering {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Polls until something accepts TCP connections at `addr`.
pub fn wait_for_listener(addr: SocketAddr, limit: Duration) -> anyhow::Result<()> {
    let what = format!("accepting connections on {addr}");
    poll(Duration::from_millis(50), limit, &what, || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(200)).map(drop)
    })
}

/// One HTTP/1.0 GET over a new connection; returns the response body.
pub fn http_get(addr: SocketAddr, timeout: Duration) -> anyhow::Result<String> {
    http_get_path(addr, "/", timeout)
}

/// As [`http_get`], of `path`.
pub fn http_get_path(addr: SocketAddr, path: &str, timeout: Duration) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: lb-test\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("incomplete HTTP response from {addr}"))?;
    ensure!(head.starts_with("HTTP/1.1 200"), "{addr} answered {head:?}");
    Ok(body.trim_end().to_owned())
}

fn ip(args: &[&str]) -> anyhow::Result<String> {
    output_of(Command::new("ip").args(args))
}

fn output_of(cmd: &mut Command) -> anyhow::Result<String> {
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}; is it installed (`cargo xtask setup`)?"))?;
    ensure!(
        output.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Deletes namespaces, pin directories, sockets and state files left by
/// testbeds of processes that no longer exist.
fn remove_stale_rigs() {
    let places = [
        (NETNS_DIR, true),
        (instance::PIN_ROOT, false),
        (instance::SOCKET_DIR, false),
        (instance::STATE_DIR, false),
    ];
    for (dir, is_netns) in places {
        let Ok(entries) = fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = name
                .strip_prefix(&format!("{NAME_PREFIX}-"))
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok())
            else {
                continue;
            };
            if Path::new(&format!("/proc/{pid}")).exists() {
                continue;
            }
            if is_netns {
                let _ = ip(&["netns", "del", &name]);
            } else if entry.path().is_dir() {
                let _ = fs::remove_dir_all(entry.path());
            } else {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}
