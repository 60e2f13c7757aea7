//! A ready-made L2 DSR sandbox on a [`Testbed`]: a client, the balancer
//! running `lb run`, and nginx workers holding the VIPs on loopback (each
//! answers with its role name, `w1`, `w2`, …, and echoes UDP on
//! [`UDP_PORT`] the same way). Used by the end-to-end tests and the demo (`lb-demo`).

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket},
    path::Path,
    time::Duration,
};

use anyhow::{ensure, Context as _};

use crate::testbed::{http_get, Host, LbProcess, Process, Testbed};

/// The IPv4 VIP address workers hold.
pub const VIP4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
/// The IPv6 VIP address workers hold.
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x100);
/// UDP port workers answer on with their name.
pub const UDP_PORT: u16 = 5353;
/// How long one test request may take.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Where the rigs' tests have `lb run` serve metrics (`--metrics`).
pub const METRICS_ADDR: &str = "192.0.2.2:9469";

/// The value of the sample `series` (`name{labels}`) in a metrics scrape.
pub fn metric(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in:\n{scrape}"))
}

/// `2001:db8::<last>`.
pub fn v6(last: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, last)
}

/// The router of [`Rig::behind_router`], on the balancer's network.
pub const ROUTER4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 254);
/// Its IPv6 address there.
pub const ROUTER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0xfe);
/// The switch of [`Rig::behind_router`]'s workers.
const WORKER_SWITCH: &str = "br1";

/// Address `last` of the workers' IPv6 network behind the router.
pub fn far(last: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 9, 0, 0, 0, 0, last)
}

/// The sandbox. Dropping it stops everything and removes the namespaces.
pub struct Rig {
    /// `lb run` on the balancer.
    pub lb: LbProcess,
    /// The client (192.0.2.1, 2001:db8::1).
    pub client: Host,
    /// The balancer (192.0.2.2, 2001:db8::2).
    pub balancer: Host,
    /// The workers (192.0.2.11…, 2001:db8::11…).
    pub workers: Vec<Host>,
    servers: Vec<Option<Process>>,
    /// The namespaces and pins; dropped last.
    pub bed: Testbed,
}

impl Rig {
    /// One scrape of the metrics endpoint of an lb started with
    /// `--metrics` [`METRICS_ADDR`], the HTTP head included.
    pub fn scrape_metrics(&self) -> anyhow::Result<String> {
        self.scrape_metrics_as(None)
    }

    /// [`Rig::scrape_metrics`] with an `Accept` header.
    pub fn scrape_metrics_as(&self, accept: Option<&str>) -> anyhow::Result<String> {
        let accept = accept.map_or_else(String::new, |a| format!("Accept: {a}\r\n"));
        let request = format!("GET /metrics HTTP/1.1\r\nHost: lb\r\n{accept}\r\n");
        self.balancer.within(move || {
            let mut stream = TcpStream::connect(METRICS_ADDR)?;
            stream.write_all(request.as_bytes())?;
            let mut text = String::new();
            stream.read_to_string(&mut text)?;
            anyhow::Ok(text)
        })?
    }

    /// Builds a sandbox with `workers` workers and starts `exe run` with
    /// `lb_args` on the balancer.
    pub fn new(exe: &Path, workers: u8, lb_args: &[&str]) -> anyhow::Result<Self> {
        let mut bed = Testbed::new()?;
        let balancer = bed.add_host("lb", Ipv4Addr::new(192, 0, 2, 2), v6(2))?;
        bed.accept_xdp_tx_from("lb")?;
        let client = add_client(&mut bed, "client", Ipv4Addr::new(192, 0, 2, 1), v6(1))?;
        let workers = (1..=workers)
            .map(|n| {
                let ipv4 = Ipv4Addr::new(192, 0, 2, 10 + n);
                bed.add_host(&format!("w{n}"), ipv4, v6(0x10 + u16::from(n)))
            })
            .collect::<anyhow::Result<Vec<Host>>>()?;
        let mut servers = Vec::new();
        for worker in &workers {
            worker.hold_vips_on_loopback(&[IpAddr::V4(VIP4), IpAddr::V6(VIP6)])?;
            echo_udp(worker)?;
            servers.push(Some(bed.start_nginx(worker, &worker.role)?));
        }
        let lb = LbProcess::start(exe, &mut bed, &balancer, "lb", lb_args)?;
        Ok(Self {
            lb,
            client,
            balancer,
            workers,
            servers,
            bed,
        })
    }

    /// Builds a sandbox whose `workers` live on a network of their own
    /// (203.0.113.0/24, 2001:db8:9::/64) that the balancer reaches only
    /// through a router (192.0.2.254, 2001:db8::fe); each worker runs
    /// `exe decap attach` for IPIP and GUE (with `gue_port`), and answers
    /// clients straight through the router. Starts `exe run` with
    /// `lb_args` on the balancer.
    pub fn behind_router(
        exe: &Path,
        workers: u8,
        gue_port: u16,
        lb_args: &[&str],
    ) -> anyhow::Result<Self> {
        let mut bed = Testbed::new()?;
        let balancer = bed.add_host("lb", Ipv4Addr::new(192, 0, 2, 2), v6(2))?;
        bed.accept_xdp_tx_from("lb")?;
        let client = add_client(&mut bed, "client", Ipv4Addr::new(192, 0, 2, 1), v6(1))?;
        let router = bed.add_host("router", ROUTER4, ROUTER6)?;
        bed.add_switch(WORKER_SWITCH)?;
        bed.add_leg(
            &router,
            WORKER_SWITCH,
            Ipv4Addr::new(203, 0, 113, 1),
            far(1),
        )?;
        balancer.run(
            "ip",
            &[
                "route",
                "add",
                "203.0.113.0/24",
                "via",
                &ROUTER4.to_string(),
            ],
        )?;
        balancer.run(
            "ip",
            &[
                "-6",
                "route",
                "add",
                "2001:db8:9::/64",
                "via",
                &ROUTER6.to_string(),
            ],
        )?;
        let mut hosts = Vec::new();
        let mut servers = Vec::new();
        for n in 1..=workers {
            let role = format!("w{n}");
            let worker = bed.add_host_on(
                WORKER_SWITCH,
                &role,
                Ipv4Addr::new(203, 0, 113, 10 + n),
                far(0x10 + u16::from(n)),
            )?;
            worker.run("ip", &["route", "add", "default", "via", "203.0.113.1"])?;
            worker.run(
                "ip",
                &["-6", "route", "add", "default", "via", "2001:db8:9::1"],
            )?;
            worker.hold_vips_on_loopback(&[IpAddr::V4(VIP4), IpAddr::V6(VIP6)])?;
            // The inner packet's source is the client, whose route is not
            // the tunnel's: strict reverse-path filtering would drop it.
            worker.run(
                "sysctl",
                &[
                    "-qw",
                    "net.ipv4.conf.all.rp_filter=0",
                    "net.ipv4.conf.eth0.rp_filter=0",
                ],
            )?;
            let pins = bed.pin_dir(&format!("decap-{role}"));
            let port = gue_port.to_string();
            let output = worker
                .command(exe)
                .args([
                    "decap",
                    "attach",
                    "--iface",
                    "eth0",
                    "--gue-port",
                    &port,
                    "--pin-dir",
                ])
                .arg(&pins)
                .output()?;
            ensure!(
                output.status.success(),
                "lb decap attach in {}: {}",
                worker.netns,
                String::from_utf8_lossy(&output.stderr).trim()
            );
            echo_udp(&worker)?;
            servers.push(Some(bed.start_nginx(&worker, &worker.role)?));
            hosts.push(worker);
        }
        for worker in &hosts {
            routed_both_ways(&balancer, worker)?;
        }
        let lb = LbProcess::start(exe, &mut bed, &balancer, "lb", lb_args)?;
        Ok(Self {
            lb,
            client,
            balancer,
            workers: hosts,
            servers,
            bed,
        })
    }

    /// Adds another client host that routes the VIPs via the balancer.
    pub fn add_client(
        &mut self,
        role: &str,
        ipv4: Ipv4Addr,
        ipv6: Ipv6Addr,
    ) -> anyhow::Result<Host> {
        add_client(&mut self.bed, role, ipv4, ipv6)
    }

    /// Adds another balancer host `role` for an lb of its own: it takes
    /// XDP_TX frames, the client routes `vip` through it, and every worker
    /// holds `vip` on its loopback.
    pub fn add_balancer(
        &mut self,
        role: &str,
        ipv4: Ipv4Addr,
        ipv6: Ipv6Addr,
        vip: Ipv4Addr,
    ) -> anyhow::Result<Host> {
        let host = self.bed.add_host(role, ipv4, ipv6)?;
        self.bed.accept_xdp_tx_from(role)?;
        let route = format!("{vip}/32");
        self.client
            .run("ip", &["route", "add", &route, "via", &ipv4.to_string()])?;
        for worker in &self.workers {
            worker.run("ip", &["addr", "add", &route, "dev", "lo"])?;
        }
        Ok(host)
    }

    /// Adds `vip` with every worker (IPv4 or IPv6 addresses to match);
    /// `vip_args` go to `lb vip add`.
    pub fn add_vip_with_workers(&self, vip: &str, vip_args: &[&str]) -> anyhow::Result<()> {
        let mut args = vec!["vip", "add", vip];
        args.extend_from_slice(vip_args);
        self.lb.cli_ok(&args)?;
        for worker in &self.workers {
            self.lb
                .cli_ok(&["backend", "add", vip, &self.addr_for(vip, worker)])?;
        }
        Ok(())
    }

    /// Waits until every worker of `vip` is up: a worker takes its share
    /// only once its MAC is known, and ND can lag on a loaded machine.
    pub fn wait_workers_up(&self, vip: &str) -> anyhow::Result<()> {
        let what = format!("every worker of {vip} up");
        crate::wait::poll(Duration::from_millis(50), TIMEOUT, &what, || {
            let listed = self.lb.cli_ok(&["backend", "list", vip, "-o", "json"])?;
            let rows: Vec<serde_json::Value> = serde_json::from_str(&listed)?;
            anyhow::Ok(rows.iter().all(|r| r["state"] == "up"))
        })
    }

    /// `worker`'s address in `vip`'s family, as text.
    pub fn addr_for(&self, vip: &str, worker: &Host) -> String {
        if vip.starts_with('[') {
            worker.ipv6.to_string()
        } else {
            worker.ipv4.to_string()
        }
    }

    /// Starts `lb run` again with `lb_args` on the same pins, socket and
    /// state file, once the previous one was stopped or killed.
    pub fn start_lb(&mut self, lb_args: &[&str]) -> anyhow::Result<()> {
        let exe = self.lb.exe().to_owned();
        self.start_lb_from(&exe, lb_args)
    }

    /// Starts another `lb` binary (`exe`) the same way: an upgrade or a
    /// downgrade.
    pub fn start_lb_from(&mut self, exe: &Path, lb_args: &[&str]) -> anyhow::Result<()> {
        self.lb = LbProcess::start(exe, &mut self.bed, &self.balancer, "lb", lb_args)?;
        Ok(())
    }

    /// As [`Rig::start_lb`], under an open-file limit of `nofile`.
    pub fn start_lb_limited(&mut self, lb_args: &[&str], nofile: u64) -> anyhow::Result<()> {
        let exe = self.lb.exe().to_owned();
        self.lb = LbProcess::start_limited(
            &exe,
            &mut self.bed,
            &self.balancer,
            "lb",
            lb_args,
            Some(nofile),
        )?;
        Ok(())
    }

    /// Kills worker `index`'s nginx, as a crash would.
    pub fn stop_worker(&mut self, index: usize) {
        self.servers[index] = None;
    }

    /// Starts worker `index`'s nginx again.
    pub fn start_worker(&mut self, index: usize) -> anyhow::Result<()> {
        let worker = &self.workers[index];
        self.servers[index] = Some(self.bed.start_nginx(worker, &worker.role)?);
        Ok(())
    }

    /// `n` HTTP requests from the client to `vip`:80, each over a new
    /// connection; answers (worker names) counted per worker.
    pub fn spread(&self, vip: IpAddr, n: usize) -> anyhow::Result<BTreeMap<String, usize>> {
        spread_from(&self.client, vip, n)
    }
}

/// `n` HTTP requests from `client` to `vip`:80 over new connections;
/// answers counted per worker. Fails on the first failed request.
pub fn spread_from(
    client: &Host,
    vip: IpAddr,
    n: usize,
) -> anyhow::Result<BTreeMap<String, usize>> {
    let target = SocketAddr::new(vip, 80);
    let answers = client.within(move || {
        (0..n)
            .map(|_| http_get(target, TIMEOUT))
            .collect::<anyhow::Result<Vec<String>>>()
    })??;
    let mut counts = BTreeMap::new();
    for answer in answers {
        *counts.entry(answer).or_default() += 1;
    }
    Ok(counts)
}

fn add_client(
    bed: &mut Testbed,
    role: &str,
    ipv4: Ipv4Addr,
    ipv6: Ipv6Addr,
) -> anyhow::Result<Host> {
    let client = bed.add_host(role, ipv4, ipv6)?;
    bed.disable_tx_offload(role)?;
    client.run(
        "ip",
        &["route", "add", &format!("{VIP4}/32"), "via", "192.0.2.2"],
    )?;
    client.run(
        "ip",
        &[
            "-6",
            "route",
            "add",
            &format!("{VIP6}/128"),
            "via",
            "2001:db8::2",
        ],
    )?;
    Ok(client)
}

/// Answers every datagram to the VIP's [`UDP_PORT`] with the worker's
/// name, and every datagram to the worker's own address there too: that
/// is where health checks go. Two sockets, not one on the wildcard, which
/// would answer clients from the worker's address instead of the VIP.
/// Waits until `balancer` and `worker` reach each other through the
/// router over both families: the neighbour entries and addresses of a
/// fresh rig take a moment, and a test that starts before would see
/// health checks fail for it.
fn routed_both_ways(balancer: &Host, worker: &Host) -> anyhow::Result<()> {
    let pairs = [
        (balancer, worker.ipv4.to_string()),
        (balancer, worker.ipv6.to_string()),
        (worker, balancer.ipv4.to_string()),
        (worker, balancer.ipv6.to_string()),
    ];
    for (from, to) in pairs {
        let what = format!("{} reaching {to}", from.role);
        crate::wait::poll(Duration::from_millis(50), TIMEOUT, &what, || {
            from.run("ping", &["-c", "1", "-W", "1", &to]).is_ok()
        })?;
    }
    Ok(())
}

fn echo_udp(worker: &Host) -> anyhow::Result<()> {
    for addr in [IpAddr::V4(VIP4), IpAddr::V4(worker.ipv4)] {
        let socket = worker
            .within(move || UdpSocket::bind((addr, UDP_PORT)))?
            .context("binding the UDP echo")?;
        let role = worker.role.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok((_, from)) = socket.recv_from(&mut buf) {
                let _ = socket.send_to(role.as_bytes(), from);
            }
        });
    }
    Ok(())
}

/// A download from `/slow` whose headers have been read.
pub struct Download {
    reader: BufReader<TcpStream>,
    /// The worker that serves it.
    pub worker: String,
}

impl Download {
    /// Starts one from `client` to `vip`:80.
    pub fn start(client: &Host, vip: IpAddr) -> Self {
        let target = SocketAddr::new(vip, 80);
        let mut stream = client
            .within(move || TcpStream::connect_timeout(&target, TIMEOUT).unwrap())
            .unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        stream
            .write_all(b"GET /slow HTTP/1.0\r\nHost: lb-test\r\n\r\n")
            .unwrap();
        let mut reader = BufReader::new(stream);
        let mut worker = String::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if let Some(name) = line.strip_prefix("X-Worker: ") {
                worker = name.trim().to_owned();
            }
            if line == "\r\n" || line.is_empty() {
                break;
            }
        }
        assert!(!worker.is_empty(), "the download names its worker");
        Self { reader, worker }
    }

    /// Reads the rest; returns the body's length.
    pub fn finish(mut self) -> usize {
        let mut body = Vec::new();
        self.reader.read_to_end(&mut body).unwrap();
        body.len()
    }
}

/// An HTTP/1.1 keep-alive connection through a VIP: each `get` is one
/// request on the same connection, answered with the worker's name.
pub struct KeepAlive(BufReader<TcpStream>);

impl KeepAlive {
    /// Connects from the calling thread's network namespace.
    pub fn connect(target: SocketAddr, timeout: Duration) -> std::io::Result<Self> {
        let stream = TcpStream::connect_timeout(&target, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        Ok(Self(BufReader::new(stream)))
    }

    /// Wraps a connected stream (one bound to a chosen source port, say).
    pub fn from_stream(stream: TcpStream) -> Self {
        Self(BufReader::new(stream))
    }

    /// Connects from `client`'s namespace, with the tests' [`TIMEOUT`].
    pub fn open(client: &Host, target: SocketAddr) -> anyhow::Result<Self> {
        Ok(client.within(move || Self::connect(target, TIMEOUT))??)
    }

    /// One `GET /`; the answering worker's name (the response body).
    pub fn get(&mut self) -> std::io::Result<String> {
        self.0
            .get_mut()
            .write_all(b"GET / HTTP/1.1\r\nHost: lb-test\r\n\r\n")?;
        let mut length = 0;
        loop {
            let mut line = String::new();
            if self.0.read_line(&mut line)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
            if line == "\r\n" {
                break;
            }
        }
        let mut body = vec![0u8; length];
        self.0.read_exact(&mut body)?;
        Ok(String::from_utf8_lossy(&body).trim_end().to_owned())
    }
}
