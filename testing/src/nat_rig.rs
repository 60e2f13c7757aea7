//! A sandbox for NAT forwarding with workers nobody changed: no VIP on
//! their loopback, no sysctls, no `lb decap`; nginx on [`WORKER_PORT`]
//! behind VIP:80. One arm: the client (198.51.100.1, 2001:db8:5::1) and
//! the workers (192.0.2.11…, 2001:db8::11…) share the balancer's link in
//! different subnets, and the workers' default route is the balancer
//! (192.0.2.2, 2001:db8::2), so `nat`'s replies come back through it;
//! `fullnat` needs no route to the client at all. The balancer forwards
//! (NAT's reverse path routes) and has [`SOURCE4`]/[`SOURCE6`] as NAT
//! sources.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
    time::Duration,
};

use crate::{
    rig::{v6, TIMEOUT, VIP4, VIP6},
    testbed::{http_get_path, Host, LbProcess, Process, Testbed},
};

/// The port the workers' nginx listens on.
pub const WORKER_PORT: u16 = 8080;
/// The client's IPv4 address, off the workers' subnet.
pub const CLIENT4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// The client's IPv6 address, off the workers' subnet.
pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 5, 0, 0, 0, 0, 1);
/// The balancer's IPv4 NAT source (its own address on the workers' side).
pub const SOURCE4: &str = "192.0.2.2";
/// The balancer's IPv6 NAT source.
pub const SOURCE6: &str = "2001:db8::2";
/// The balancer's IPv6 address on the client's side of the two-arm
/// sandbox.
const BALANCER6_FRONT: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 5, 0, 0, 0, 0, 2);

/// The sandbox. Dropping it stops everything and removes the namespaces.
pub struct NatRig {
    /// `lb run` on the balancer.
    pub lb: LbProcess,
    /// The client.
    pub client: Host,
    /// The balancer.
    pub balancer: Host,
    /// The workers, nginx on [`WORKER_PORT`] each.
    pub workers: Vec<Host>,
    _servers: Vec<Process>,
    /// `lb run`'s arguments, for a restart.
    args: Vec<String>,
    /// The namespaces and pins; dropped last.
    pub bed: Testbed,
}

impl NatRig {
    /// Builds the one-arm sandbox with `workers` workers and starts
    /// `exe run` with the NAT sources and `lb_args` on the balancer.
    pub fn new(exe: &Path, workers: u8, lb_args: &[&str]) -> anyhow::Result<Self> {
        let mut args = vec!["--nat-source", SOURCE4, "--nat-source", SOURCE6];
        args.extend_from_slice(lb_args);
        Self::with_args(exe, workers, &args)
    }

    /// As [`NatRig::new`], with no NAT source.
    pub fn without_sources(exe: &Path, workers: u8) -> anyhow::Result<Self> {
        Self::with_args(exe, workers, &[])
    }

    /// The two-arm sandbox: the balancer's `eth0` shares a switch with
    /// the client only (198.51.100.2, 2001:db8:5::2), its `eth1` another
    /// with the workers only (192.0.2.2, 2001:db8::2), and `lb run`
    /// attaches to both (`--iface eth0 --iface eth1`): what lb sends to
    /// a worker or back to a client leaves by the other interface than it
    /// came in on.
    pub fn two_arm(exe: &Path, workers: u8, lb_args: &[&str]) -> anyhow::Result<Self> {
        let mut args = vec![
            "--iface",
            "eth1",
            "--nat-source",
            SOURCE4,
            "--nat-source",
            SOURCE6,
        ];
        args.extend_from_slice(lb_args);
        let mut bed = Testbed::new()?;
        let balancer = bed.add_host("lb", Ipv4Addr::new(198, 51, 100, 2), BALANCER6_FRONT)?;
        bed.add_switch("br1")?;
        bed.add_leg(&balancer, "br1", Ipv4Addr::new(192, 0, 2, 2), v6(2))?;
        bed.accept_xdp_tx_from("lb")?;
        bed.accept_xdp_tx_from_leg("lb")?;
        let client = Self::add_client(&mut bed)?;
        let workers = Self::add_workers(&mut bed, "br1", workers)?;
        Self::start(exe, bed, (balancer, client, workers), &args)
    }

    /// Starts `exe run` with `args` on the balancer of `bed`.
    fn start(
        exe: &Path,
        mut bed: Testbed,
        (balancer, client, (workers, servers)): (Host, Host, (Vec<Host>, Vec<Process>)),
        args: &[&str],
    ) -> anyhow::Result<Self> {
        let lb = LbProcess::start(exe, &mut bed, &balancer, "lb", args)?;
        Ok(Self {
            lb,
            client,
            balancer,
            workers,
            _servers: servers,
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            bed,
        })
    }

    fn with_args(exe: &Path, workers: u8, args: &[&str]) -> anyhow::Result<Self> {
        let mut bed = Testbed::new()?;
        let balancer = bed.add_host("lb", Ipv4Addr::new(192, 0, 2, 2), v6(2))?;
        bed.accept_xdp_tx_from("lb")?;
        balancer.run("ip", &["addr", "add", "198.51.100.2/24", "dev", "eth0"])?;
        balancer.run(
            "ip",
            &["addr", "add", "2001:db8:5::2/64", "dev", "eth0", "nodad"],
        )?;
        // lb routes NAT's replies; the kernel must not also send
        // redirects for what it forwards back out of the same link.
        balancer.run(
            "sysctl",
            &[
                "-qw",
                "net.ipv4.ip_forward=1",
                "net.ipv6.conf.all.forwarding=1",
                "net.ipv4.conf.all.send_redirects=0",
                "net.ipv4.conf.eth0.send_redirects=0",
            ],
        )?;
        let client = Self::add_client(&mut bed)?;
        let workers = Self::add_workers(&mut bed, "br0", workers)?;
        Self::start(exe, bed, (balancer, client, workers), args)
    }

    /// The client, on the first switch, with routes to the VIPs through
    /// the balancer.
    fn add_client(bed: &mut Testbed) -> anyhow::Result<Host> {
        let client = bed.add_host("client", CLIENT4, CLIENT6)?;
        bed.disable_tx_offload("client")?;
        client.run(
            "ip",
            &["route", "add", &format!("{VIP4}/32"), "via", "198.51.100.2"],
        )?;
        client.run(
            "ip",
            &[
                "-6",
                "route",
                "add",
                &format!("{VIP6}/128"),
                "via",
                "2001:db8:5::2",
            ],
        )?;
        Ok(client)
    }

    /// `workers` workers on switch `bridge`, nginx on [`WORKER_PORT`]
    /// each, whose default routes go through the balancer.
    fn add_workers(
        bed: &mut Testbed,
        bridge: &str,
        workers: u8,
    ) -> anyhow::Result<(Vec<Host>, Vec<Process>)> {
        let mut hosts = Vec::new();
        let mut servers = Vec::new();
        for n in 1..=workers {
            let role = format!("w{n}");
            let worker = bed.add_host_on(
                bridge,
                &role,
                Ipv4Addr::new(192, 0, 2, 10 + n),
                v6(0x10 + u16::from(n)),
            )?;
            bed.disable_tx_offload(&role)?;
            worker.run("ip", &["route", "add", "default", "via", "192.0.2.2"])?;
            worker.run(
                "ip",
                &["-6", "route", "add", "default", "via", "2001:db8::2"],
            )?;
            servers.push(bed.start_nginx_on(&worker, &role, WORKER_PORT)?);
            hosts.push(worker);
        }
        Ok((hosts, servers))
    }

    /// Starts `lb run` again with the same arguments, pins, socket and
    /// state file, once the previous one was stopped or killed.
    pub fn start_lb(&mut self) -> anyhow::Result<()> {
        let exe = self.lb.exe().to_owned();
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.lb = LbProcess::start(&exe, &mut self.bed, &self.balancer, "lb", &args)?;
        Ok(())
    }

    /// Starts `exe run` (another lb, say a newer one) with the same
    /// arguments, pins, socket and state file and `extra`, once the
    /// previous one was stopped or killed.
    pub fn start_lb_from(&mut self, exe: &Path, extra: &[&str]) -> anyhow::Result<()> {
        let mut args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        args.extend_from_slice(extra);
        self.lb = LbProcess::start(exe, &mut self.bed, &self.balancer, "lb", &args)?;
        Ok(())
    }

    /// Starts `lb run` again with `args` in place of those it had (on
    /// `eth0`, with the same pins, socket and state file).
    pub fn start_lb_with(&mut self, args: &[&str]) -> anyhow::Result<()> {
        self.args = args.iter().map(|a| (*a).to_owned()).collect();
        self.start_lb()
    }

    /// Adds `vip` (port 80) by `forward` with every worker on
    /// [`WORKER_PORT`], and waits until they are up.
    pub fn add_vip(&self, vip: &str, forward: &str) -> anyhow::Result<()> {
        self.add_vip_on(vip, &["--forward", forward], WORKER_PORT)
    }

    /// Adds `vip` with `vip_args` and every worker on `port`, and waits
    /// until they are up.
    pub fn add_vip_on(&self, vip: &str, vip_args: &[&str], port: u16) -> anyhow::Result<()> {
        let mut args = vec!["vip", "add", vip];
        args.extend_from_slice(vip_args);
        self.lb.cli_ok(&args)?;
        for worker in &self.workers {
            let addr = if vip.starts_with('[') {
                format!("[{}]:{port}", worker.ipv6)
            } else {
                format!("{}:{port}", worker.ipv4)
            };
            self.lb.cli_ok(&["backend", "add", vip, &addr])?;
        }
        let what = format!("every worker of {vip} up");
        crate::wait::poll(Duration::from_millis(50), TIMEOUT, &what, || {
            let listed = self.lb.cli_ok(&["backend", "list", vip, "-o", "json"])?;
            let rows: Vec<serde_json::Value> = serde_json::from_str(&listed)?;
            anyhow::Ok(rows.iter().all(|r| r["state"] == "up"))
        })
    }

    /// One GET of `path` from the client to `vip`:80 over a new
    /// connection: the body.
    pub fn get(&self, vip: IpAddr, path: &str) -> anyhow::Result<String> {
        let path = path.to_owned();
        self.client
            .within(move || http_get_path(SocketAddr::new(vip, 80), &path, TIMEOUT))?
    }
}
