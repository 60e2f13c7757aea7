//! Balancers behind a BGP router doing ECMP, each announcing what its lb
//! keeps in a kernel table through BIRD (issue 16's topology).
//!
//! ```text
//!  client 198.51.100.1 ── router (198.51.100.254 | 192.0.2.254, BIRD)
//!                                      │ br0, 192.0.2.0/24
//!        lb1 192.0.2.11, lb2 .12, … (lb run + BIRD)   w1 192.0.2.21, w2 .22, … (nginx)
//! ```
//!
//! The router learns the VIP from every balancer's BIRD (BGP with BFD) and
//! installs one route with a next hop per balancer, hashed on L4 ports.
//! Every balancer runs `lb run --config` with the same file, so all build
//! the same Maglev table. Workers hold the VIP on loopback and answer the
//! client through the router (DSR). BIRD runs the configs in `dist/bird/`
//! with only their `define`s rewritten.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context as _};

use crate::{
    bird::{shipped_config, Bird},
    rig::{v6, KeepAlive, ROUTER4, ROUTER6, TIMEOUT, VIP4},
    testbed::{enter_netns, http_get, Host, LbProcess, Process, Testbed},
    wait::{poll, wait_until},
};

/// The VIP every balancer serves.
pub const VIP: &str = "192.0.2.100:80/tcp";
/// The kernel table lb writes and BIRD learns (`--announce-table`).
pub const ANNOUNCE_TABLE: u32 = 100;
/// The client, on a network of its own behind the router.
pub const CLIENT4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// The router's address on the client's network.
const CLIENT_GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 254);
/// How long BGP sessions may take to come up: BIRD waits about five
/// seconds before it first connects.
pub const SESSION_LIMIT: Duration = Duration::from_secs(20);
/// How long the router may take to follow a change BIRD hears of at once.
pub const ROUTE_LIMIT: Duration = Duration::from_secs(5);

/// Balancer `n`'s address (1 → 192.0.2.11).
pub fn node_address(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, 10 + n)
}

/// Worker `n`'s address (1 → 192.0.2.21).
pub fn worker_address(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, 20 + n)
}

/// The `lb run --config` file every balancer shares: the VIP on every
/// worker, one hash seed, and quick health checks so that workers that
/// stop go down within a second.
fn lb_config(workers: u8) -> String {
    let backends: Vec<String> = (1..=workers)
        .map(|n| format!("{{ address = \"{}\" }}", worker_address(n)))
        .collect();
    format!(
        "hash_seed = 7\n\n[[vip]]\naddress = \"{VIP}\"\n\
         health = {{ check = \"tcp\", interval = \"200ms\", timeout = \"150ms\", rise = 1, fall = 2 }}\n\
         backends = [{}]\n",
        backends.join(", ")
    )
}

/// One balancer: its host, `lb run` and BIRD.
pub struct Node {
    /// Its BIRD; stopped first.
    pub bird: Bird,
    /// `lb run` on its `eth0`.
    pub lb: LbProcess,
    /// The host (`lb1`, `lb2`, …).
    pub host: Host,
}

impl Node {
    /// Its `forwarded` counter (packets XDP sent to a worker).
    pub fn forwarded(&self) -> anyhow::Result<u64> {
        Ok(self.lb.stats()?.forwarded)
    }

    /// The destinations in its kernel table [`ANNOUNCE_TABLE`] with lb's
    /// protocol number.
    pub fn announced(&self) -> anyhow::Result<Vec<String>> {
        let table = ANNOUNCE_TABLE.to_string();
        let text = self.host.run(
            "ip",
            &["-j", "route", "show", "table", &table, "proto", "250"],
        )?;
        let routes: Vec<serde_json::Value> = serde_json::from_str(&text)?;
        Ok(routes
            .iter()
            .filter_map(|r| r["dst"].as_str().map(str::to_owned))
            .collect())
    }

    /// Puts the VIP's host route into [`ANNOUNCE_TABLE`] as lb does
    /// (`dev lo`, protocol 250), or takes it out: the rig by itself, with
    /// no lb announcing.
    pub fn route_by_hand(&self, add: bool) -> anyhow::Result<()> {
        let table = ANNOUNCE_TABLE.to_string();
        let route = format!("{VIP4}/32");
        let verb = if add { "add" } else { "del" };
        self.host
            .run(
                "ip",
                &[
                    "route", verb, &route, "dev", "lo", "table", &table, "proto", "250",
                ],
            )
            .map(drop)
    }

    /// Cuts its link as a dead machine would: its port on the switch goes
    /// down, so nothing it sends arrives and BGP gets no word of it; only
    /// BFD notices.
    pub fn cut_link(&self) -> anyhow::Result<()> {
        // The testbed names namespaces PREFIX-ROLE and the switch
        // PREFIX-sw; the host's port there is p-ROLE.
        let prefix = self
            .host
            .netns
            .strip_suffix(&self.host.role)
            .context("a testbed host's namespace ends in its role")?;
        let switch = format!("{prefix}sw");
        let port = format!("p-{}", self.host.role);
        let link: serde_json::Value =
            serde_json::from_str(&self.host.run("ip", &["-j", "link", "show", "eth0"])?)?;
        let mac = link[0]["address"]
            .as_str()
            .context("eth0 has no MAC address")?;
        // A port going down flushes the MAC addresses learnt on it, and
        // the bridge would flood the router's frames for this host to
        // every port, where the other balancers' XDP takes them (a veth
        // has no MAC filter before XDP; a real NIC has). Pinned, the
        // address keeps pointing at the dead port, whose frames are lost
        // until the router stops sending them: what a dead machine gets.
        netns_command(
            &switch,
            "bridge",
            &["fdb", "replace", mac, "dev", &port, "master", "static"],
        )?;
        netns_command(&switch, "ip", &["link", "set", &port, "down"])
    }
}

/// Runs `program -n NETNS ARGS` (ip or bridge).
fn netns_command(netns: &str, program: &str, args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new(program)
        .args(["-n", netns])
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    ensure!(
        output.status.success(),
        "{program} {args:?} in {netns}: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}

/// The rig. Dropping it stops every daemon and removes the namespaces.
pub struct BgpRig {
    /// The balancers, in the order they were added (lb1, lb2, …).
    pub nodes: Vec<Node>,
    /// BIRD on the router.
    pub router_bird: Bird,
    /// The client (198.51.100.1), routed through the router.
    pub client: Host,
    /// The router (192.0.2.254 on the balancers' network).
    pub router: Host,
    /// The workers (192.0.2.21, …).
    pub workers: Vec<Host>,
    servers: Vec<Option<Process>>,
    exe: PathBuf,
    lb_args: Vec<String>,
    /// The namespaces; dropped last.
    pub bed: Testbed,
}

impl BgpRig {
    /// Builds the rig with `nodes` balancers running `exe run --config
    /// SHARED lb_args…` and `workers` workers, and waits until every
    /// balancer's BGP session with the router is up.
    pub fn new(exe: &Path, nodes: u8, workers: u8, lb_args: &[&str]) -> anyhow::Result<Self> {
        let mut bed = Testbed::new()?;
        let router = bed.add_host("router", ROUTER4, ROUTER6)?;
        // Hash flows on their ports: one client's connections spread.
        router.within(|| std::fs::write("/proc/sys/net/ipv4/fib_multipath_hash_policy", "1"))??;
        let client = bed.add_host_behind("client", &router, CLIENT4, CLIENT_GATEWAY, 1500)?;
        let mut hosts = Vec::new();
        let mut servers = Vec::new();
        for n in 1..=workers {
            let worker =
                bed.add_host(&format!("w{n}"), worker_address(n), v6(0x20 + u16::from(n)))?;
            // DSR: answers to the client go straight to the router.
            worker.run(
                "ip",
                &["route", "add", "default", "via", &ROUTER4.to_string()],
            )?;
            worker.hold_vips_on_loopback(&[IpAddr::V4(VIP4)])?;
            servers.push(Some(bed.start_nginx(&worker, &worker.role)?));
            hosts.push(worker);
        }
        let config = bed.socket("lb-config").with_extension("toml");
        std::fs::write(&config, lb_config(workers))?;
        let mut lb_args_owned = vec!["--config".to_owned(), config.display().to_string()];
        lb_args_owned.extend(lb_args.iter().map(|a| (*a).to_owned()));
        let router_bird = Bird::start(&router, &shipped_config("router.conf", &[])?)?;
        let mut rig = Self {
            nodes: Vec::new(),
            router_bird,
            client,
            router,
            workers: hosts,
            servers,
            exe: exe.to_owned(),
            lb_args: lb_args_owned,
            bed,
        };
        for _ in 0..nodes {
            rig.start_node()?;
        }
        rig.router_bird
            .wait_established(rig.nodes.len(), SESSION_LIMIT)?;
        Ok(rig)
    }

    /// Adds one more balancer (the next address) and starts its lb and
    /// BIRD; does not wait for its session.
    pub fn start_node(&mut self) -> anyhow::Result<()> {
        let n = u8::try_from(self.nodes.len() + 1)?;
        let role = format!("lb{n}");
        let address = node_address(n);
        let address6 = v6(0x10 + u16::from(n));
        let host = self.bed.add_host(&role, address, address6)?;
        self.bed.accept_xdp_tx_from(&role)?;
        let args: Vec<&str> = self.lb_args.iter().map(String::as_str).collect();
        let lb = LbProcess::start(&self.exe, &mut self.bed, &host, &role, &args)?;
        let table = ANNOUNCE_TABLE.to_string();
        let config = shipped_config(
            "balancer.conf",
            &[
                ("LB_ADDRESS", &address.to_string()),
                ("LB_ADDRESS6", &address6.to_string()),
                ("ANNOUNCE_TABLE", &table),
            ],
        )?;
        let bird = Bird::start(&host, &config)?;
        self.nodes.push(Node { bird, lb, host });
        Ok(())
    }

    /// The next hops of the router's kernel route to the VIP (none when it
    /// has no route).
    pub fn next_hops(&self) -> anyhow::Result<Vec<Ipv4Addr>> {
        let text = self
            .router
            .run("ip", &["-j", "route", "show", &format!("{VIP4}/32")])?;
        let routes: Vec<serde_json::Value> = serde_json::from_str(&text)?;
        let mut hops = Vec::new();
        for route in &routes {
            let gateways = match route["nexthops"].as_array() {
                Some(nexthops) => nexthops.iter().map(|h| &h["gateway"]).collect(),
                None => vec![&route["gateway"]],
            };
            for gateway in gateways.into_iter().filter_map(|g| g.as_str()) {
                hops.push(gateway.parse()?);
            }
        }
        hops.sort();
        Ok(hops)
    }

    /// Polls the router's route every few milliseconds until its next
    /// hops are the addresses of `nodes` (numbers, 1 = lb1); returns how
    /// long that took, fails after `limit`.
    pub fn wait_next_hops(&self, nodes: &[u8], limit: Duration) -> anyhow::Result<Duration> {
        let mut want: Vec<Ipv4Addr> = nodes.iter().map(|n| node_address(*n)).collect();
        want.sort();
        let start = Instant::now();
        let what = format!("the router's next hops to {VIP4} {want:?}");
        poll(Duration::from_millis(2), limit, &what, || {
            let hops = self.next_hops()?;
            ensure!(hops == want, "{hops:?}");
            Ok(Some(start.elapsed()))
        })
    }

    /// The VIP's HTTP address.
    pub fn target(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(VIP4), 80)
    }

    /// Kills worker `index`'s nginx.
    pub fn stop_worker(&mut self, index: usize) {
        self.servers[index] = None;
    }

    /// Starts worker `index`'s nginx again.
    pub fn start_worker(&mut self, index: usize) -> anyhow::Result<()> {
        let worker = &self.workers[index];
        self.servers[index] = Some(self.bed.start_nginx(worker, &worker.role)?);
        Ok(())
    }
}

/// What a [`Load`] did.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Requests answered.
    pub ok: usize,
    /// Requests that failed (refused, reset or timed out).
    pub failed: usize,
    /// Answered requests that took over a second: their SYN had to be
    /// sent again.
    pub slow: usize,
    /// The first few failures.
    pub errors: Vec<String>,
}

/// A steady stream of new connections from a client to a VIP, each one
/// HTTP request, on a few threads; bounded in count and time.
pub struct Load {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
    threads: Vec<JoinHandle<anyhow::Result<LoadReport>>>,
}

/// Most requests one load thread makes.
const LOAD_MAX_REQUESTS: usize = 20_000;
/// Longest a load runs.
const LOAD_MAX_TIME: Duration = Duration::from_secs(60);
/// Pause between one thread's requests: a steady rate that leaves CPU for
/// BIRD's BFD on a small machine.
const LOAD_PAUSE: Duration = Duration::from_millis(3);

impl Load {
    /// Starts `threads` threads in `client`'s namespace.
    pub fn start(client: &Host, target: SocketAddr, threads: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicUsize::new(0));
        let threads = (0..threads)
            .map(|_| {
                let (stop, done, netns) = (stop.clone(), done.clone(), client.netns_path());
                std::thread::spawn(move || {
                    enter_netns(&netns)?;
                    Ok(run_load(target, &stop, &done))
                })
            })
            .collect();
        Self {
            stop,
            done,
            threads,
        }
    }

    /// Requests finished so far, answered or not.
    pub fn done(&self) -> usize {
        self.done.load(Ordering::Relaxed)
    }

    /// Waits until `more` further requests have finished.
    pub fn wait_for(&self, more: usize) {
        let until = self.done() + more;
        wait_until(Duration::from_secs(30), "load progressing", || {
            self.done() >= until
        });
    }

    /// Stops the threads and adds up what they did.
    pub fn stop(self) -> anyhow::Result<LoadReport> {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = LoadReport::default();
        for thread in self.threads {
            let report = thread
                .join()
                .map_err(|_| anyhow::anyhow!("a load thread panicked"))??;
            total.ok += report.ok;
            total.failed += report.failed;
            total.slow += report.slow;
            total.errors.extend(report.errors);
        }
        total.errors.truncate(5);
        Ok(total)
    }
}

fn run_load(target: SocketAddr, stop: &AtomicBool, done: &AtomicUsize) -> LoadReport {
    let mut report = LoadReport::default();
    let start = Instant::now();
    for _ in 0..LOAD_MAX_REQUESTS {
        if stop.load(Ordering::Relaxed) || start.elapsed() > LOAD_MAX_TIME {
            break;
        }
        let began = Instant::now();
        match http_get(target, TIMEOUT) {
            Ok(_) if began.elapsed() > Duration::from_secs(1) => {
                report.ok += 1;
                report.slow += 1;
            }
            Ok(_) => report.ok += 1,
            Err(error) => {
                report.failed += 1;
                if report.errors.len() < 5 {
                    report.errors.push(format!("{error:#}"));
                }
            }
        }
        done.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(LOAD_PAUSE);
    }
    report
}

/// What a planned withdrawal did: see [`planned_withdrawal`].
#[derive(Debug)]
pub struct Withdrawal {
    /// From `lb announce withdraw` to the router's route without lb1.
    pub route_gone: Duration,
    /// From the command to the last packet lb1 forwarded.
    pub last_packet: Duration,
    /// From `lb announce restore` to the router's route with lb1 again.
    pub restored: Duration,
    /// The new connections made meanwhile.
    pub load: LoadReport,
}

/// Planned maintenance of lb1 in a rig of two announcing balancers, under
/// a steady stream of new connections and with keep-alive connections
/// (one of them through lb1): withdraw, wait until lb1 forwards nothing,
/// restore, wait until it forwards again. Fails if a keep-alive
/// connection breaks or changes worker, if lb1 still forwards once the
/// router converged, or if `lb announce list` doesn't say why.
pub fn planned_withdrawal(rig: &BgpRig) -> anyhow::Result<Withdrawal> {
    rig.wait_next_hops(&[1, 2], SESSION_LIMIT)?;
    let mut connections = keep_alives_through(rig, 0)?;
    let load = Load::start(&rig.client, rig.target(), 2);
    load.wait_for(50);
    let (lb1, lb2) = (&rig.nodes[0], &rig.nodes[1]);

    let withdrawn = Instant::now();
    lb1.lb.cli_ok(&["announce", "withdraw"])?;
    rig.wait_next_hops(&[2], ROUTE_LIMIT)?;
    let route_gone = withdrawn.elapsed();
    let last_packet = last_forwarded(lb1, withdrawn, Duration::from_secs(1), ROUTE_LIMIT * 2)?;
    ensure!(
        lb1.announced()?.is_empty(),
        "lb1's table still holds the VIP"
    );
    let list: serde_json::Value =
        serde_json::from_str(&lb1.lb.cli_ok(&["announce", "list", "-o", "json"])?)?;
    ensure!(
        list[0]["announced"] == false && list[0]["reason"].is_string(),
        "lb announce list after the withdrawal: {list}"
    );
    all_answer(&mut connections)?;
    // lb1 is out of the path: its counter stands still while the load and
    // the keep-alive connections go on through lb2.
    let (quiet1, busy2) = (lb1.forwarded()?, lb2.forwarded()?);
    load.wait_for(200);
    all_answer(&mut connections)?;
    ensure!(lb1.forwarded()? == quiet1, "lb1 still forwards");
    ensure!(lb2.forwarded()? > busy2, "lb2 forwards nothing");

    let restoring = Instant::now();
    lb1.lb.cli_ok(&["announce", "restore"])?;
    rig.wait_next_hops(&[1, 2], ROUTE_LIMIT)?;
    let restored = restoring.elapsed();
    let again = lb1.forwarded()?;
    let limit = (ROUTE_LIMIT * 2).saturating_sub(restoring.elapsed());
    poll(
        Duration::from_millis(20),
        limit,
        "lb1 forwarding again",
        || anyhow::Ok(lb1.forwarded()? != again),
    )?;
    all_answer(&mut connections)?;
    load.wait_for(100);
    Ok(Withdrawal {
        route_gone,
        last_packet,
        restored,
        load: load.stop()?,
    })
}

/// What a balancer's failure did: see [`link_cut`].
#[derive(Debug)]
pub struct LinkCut {
    /// From the cut to the router's route without lb1 (BFD's verdict).
    pub detected: Duration,
    /// Established keep-alive connections that still answered, from the
    /// same worker, after it.
    pub survived: usize,
    /// The new connections made meanwhile.
    pub load: LoadReport,
}

/// lb1 of two announcing balancers dies as the router sees it (its link
/// is cut) under a steady stream of new connections, with `connections`
/// established keep-alive connections talking throughout.
pub fn link_cut(rig: &BgpRig, connections: usize) -> anyhow::Result<LinkCut> {
    rig.wait_next_hops(&[1, 2], SESSION_LIMIT)?;
    let mut established: Vec<(KeepAlive, String)> = (0..connections)
        .map(|_| {
            let mut connection = KeepAlive::open(&rig.client, rig.target())?;
            let worker = connection.get()?;
            Ok((connection, worker))
        })
        .collect::<anyhow::Result<_>>()?;
    let load = Load::start(&rig.client, rig.target(), 2);
    load.wait_for(50);

    let cut = Instant::now();
    rig.nodes[0].cut_link()?;
    // The connections talk while BFD is still deciding: those through lb1
    // retransmit until the router sends them to lb2.
    let survivors = std::thread::spawn(move || {
        established
            .iter_mut()
            .map(|(connection, worker)| connection.get().is_ok_and(|w| w == *worker))
            .filter(|survived| *survived)
            .count()
    });
    rig.wait_next_hops(&[2], ROUTE_LIMIT)?;
    let detected = cut.elapsed();
    let survived = survivors
        .join()
        .map_err(|_| anyhow::anyhow!("the connections' thread panicked"))?;
    load.wait_for(100);
    Ok(LinkCut {
        detected,
        survived,
        load: load.stop()?,
    })
}

/// Opens keep-alive connections to the VIP until one goes through
/// balancer `index` (told by its forwarded counter, with no other load
/// running), at most 16; returns them all with the worker each reached.
pub fn keep_alives_through(rig: &BgpRig, index: usize) -> anyhow::Result<Vec<(KeepAlive, String)>> {
    let mut connections = Vec::new();
    for _ in 0..16 {
        let before = rig.nodes[index].forwarded()?;
        let mut connection = KeepAlive::open(&rig.client, rig.target())?;
        let worker = connection.get()?;
        let through = rig.nodes[index].forwarded()? > before;
        connections.push((connection, worker));
        if through {
            return Ok(connections);
        }
    }
    anyhow::bail!(
        "16 connections and none through {}",
        rig.nodes[index].host.role
    )
}

/// Every connection answers again, from the same worker.
pub fn all_answer(connections: &mut [(KeepAlive, String)]) -> anyhow::Result<()> {
    for (connection, worker) in connections {
        let now = connection.get()?;
        ensure!(now == *worker, "a connection moved from {worker} to {now}");
    }
    Ok(())
}

/// Polls `node`'s forwarded counter until it has stood still for `quiet`;
/// returns how long after `since` it last moved. Fails after `limit`.
fn last_forwarded(
    node: &Node,
    since: Instant,
    quiet: Duration,
    limit: Duration,
) -> anyhow::Result<Duration> {
    let mut last = node.forwarded()?;
    let mut moved = Instant::now();
    let what = format!("{} quiet for {quiet:?}", node.host.role);
    let limit = limit.saturating_sub(since.elapsed());
    poll(Duration::from_millis(5), limit, &what, || {
        let now = node.forwarded()?;
        if now != last {
            (last, moved) = (now, Instant::now());
        }
        anyhow::Ok(moved.elapsed() >= quiet)
    })?;
    Ok(moved.saturating_duration_since(since))
}
