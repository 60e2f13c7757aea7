//! docs/BENCHMARKS.md: environment, method, raw figures and ratios.

use std::fmt::Write as _;

use super::{
    admin::{Latency, Phase, COMMANDS},
    e2e::{Cell, Load, Mode, LOADS, MODES},
    fleet::Fleet,
    latency::{self, CONNECTIONS, PERCENTILES},
    packet::Row as PacketRow,
    samples::Samples,
    Plan, Results,
};

/// The machine the figures come from.
pub fn environment() -> Vec<(&'static str, String)> {
    let read = |path: &str| {
        std::fs::read_to_string(path)
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".into())
    };
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    vec![
        ("CPU", format!("{cpu} ({cpus} CPUs available)")),
        ("kernel", read("/proc/sys/kernel/osrelease")),
        (
            "BPF JIT",
            match read("/proc/sys/net/core/bpf_jit_enable").as_str() {
                "1" => "on".into(),
                "0" => "off".into(),
                other => other.into(),
            },
        ),
        (
            "commit",
            std::env::var("LB_BENCH_COMMIT").unwrap_or_else(|_| "unknown".into()),
        ),
    ]
}

/// The median over rounds of `row / reference`, round by round.
pub fn ratio(row: &Samples, reference: &Samples) -> f64 {
    row.ratios(reference).median()
}

fn find<'a>(rows: &'a [PacketRow], prefix: &str) -> &'a PacketRow {
    rows.iter()
        .find(|r| r.name.starts_with(prefix))
        .expect("every measured case is in the table")
}

fn ns(samples: &Samples) -> String {
    format!(
        "{:.0} | {:.0} | {:.0}",
        samples.median(),
        samples.min(),
        samples.max()
    )
}

/// The report as Markdown.
pub fn render(plan: &Plan, results: &Results) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Benchmarks\n\nWritten by `cargo xtask bench{}`; rerun it to refresh. \
         Figures from one run on one machine: compare ratios, not nanoseconds.\n",
        if plan.quick { " --quick" } else { "" }
    );
    if plan.quick {
        let _ = writeln!(
            out,
            "**This is a `--quick` run (a smoke test with few rounds): its figures are rough.**\n"
        );
    }
    out += "## Environment\n\n| | |\n|---|---|\n";
    for (key, value) in environment() {
        let _ = writeln!(out, "| {key} | {value} |");
    }
    out += &targets(results);
    out += &per_packet(plan, &results.packet);
    out += &cpus(plan, &results.cpus);
    out += &scale(plan, results);
    out += &control(results);
    out += &admin(plan, &results.admin);
    out += &fleet(&results.fleets);
    out += &end_to_end(plan, &results.e2e);
    out += &latency(&results.latency);
    out += &announcements(plan, &results.announce);
    out
}

/// The latency section (its plot is [`latency::svg`], in latency.svg
/// next to the report).
pub fn latency(latency: &latency::Latency) -> String {
    let timing = &latency.timing;
    let mut out = format!(
        "\n## Latency under constant load\n\n\
         The end-to-end rig and modes above, plus lb by IPIP: a second VIP (`--forward ipip`) to \
         the same worker on the same link, which runs `lb decap attach` on its eth0 throughout \
         (so every mode's packets pass that program too). First the no-balancer maximum of the \
         generator below, its connections sending back to back: {} s, {} runs, median {:.0} \
         requests/s (its own, not wrk's: a fraction of a rate the generator cannot offer would \
         measure the generator's queue). Then HTTP GETs offered at a constant rate of 25%, 50% \
         and 75% of it by the bench's own open-loop generator (hyper's HTTP/1 client, one \
         thread in the client's namespace): {CONNECTIONS} \
         keep-alive connections, each on a fixed schedule of rate / {CONNECTIONS} requests/s \
         (staggered evenly, send times from a timerfd), one request in flight per connection. {} A \
         request's latency runs from its *scheduled* send time to the end of its response, so \
         a slow response also counts against the requests queued behind it (no coordinated \
         omission, as wrk2). Each run: {:.1} s of warm-up not recorded, {:.1} s recorded, then \
         up to {:.1} s for the last answers; requests still unanswered then count with their \
         latency so far, so where a mode falls behind (answered < 100%) its percentiles are \
         lower bounds. Exact (nearest-rank) percentiles of every recorded request of a run; \
         {} rounds interleave every mode at every load (round, load, mode); figures are \
         medians over rounds. *Added* is the mode's percentile minus the no-balancer one at the \
         same load in the same round, median over rounds. Goals: lb's added p99 within 10% of \
         the stateless forwarder's, and below nftables' and HAProxy's.\n\n\
         ![p99 and p50 latency against offered load](latency.svg)\n\n\
         | load | mode | p50 µs | p99 µs | p99.9 µs | added p50 µs | added p99 µs | added p99.9 µs | answered | errors |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
        latency.max_seconds,
        latency.max_runs.len(),
        latency.max_rate(),
        if latency.realtime {
            "The generator's thread and every process in the worker's and the balancer's \
             namespaces run SCHED_FIFO (priority 1), so that other work on this shared machine \
             disturbs them less (a woken server need not wait out a build's time slice). When \
             they keep a CPU busy while other work waits, the kernel still gives that work up to \
             50 ms a second (its fair server): stalls that every mode shows alike at high load."
        } else {
            "(SCHED_FIFO was refused: everything runs at normal priority, and other work on the \
             machine shows in the figures.)"
        },
        timing.warmup.as_secs_f64(),
        timing.measured.as_secs_f64(),
        timing.drain.as_secs_f64(),
        latency.rounds,
    );
    for load in latency::LOADS {
        for mode in latency::MODES {
            let cell = latency.cell(mode, load);
            let _ = write!(out, "| {load}% ({:.0}/s) | {mode} |", latency.rate(load));
            for samples in &cell.percentiles {
                let _ = write!(out, " {:.0} |", samples.median());
            }
            for index in 0..PERCENTILES.len() {
                let _ = write!(out, " {:+.0} |", latency.added(mode, load, index));
            }
            let _ = writeln!(
                out,
                " {:.2}% | {:.0} |",
                cell.answered.min() * 100.0,
                cell.errors.max()
            );
        }
    }
    out += "\n*answered*: the worst round's share; *errors*: the worst round's count.\n";
    out
}

/// Issue 17's latency goals: (goal, measured, met). lb by DSR is judged,
/// next to the forwarder, which also forwards by DSR.
pub fn latency_goals(latency: &latency::Latency) -> Vec<(String, String, bool)> {
    const P99: usize = 1;
    let added = |mode: Mode| latency::LOADS.map(|load| latency.added(mode, load, P99));
    let list = |values: [f64; 3]| {
        values
            .iter()
            .map(|v| format!("{v:.0}"))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    let loads = latency::LOADS.map(|l| format!("{l}%")).join(" / ");
    let lb = added(Mode::Lb);
    let floor = added(Mode::Floor);
    let nft = added(Mode::Nftables);
    let haproxy = added(Mode::Haproxy);
    vec![
        (
            format!("latency at {loads} of max: lb's added p99 ≤ 1.1 × stateless XDP forwarder's"),
            format!("lb {} µs, forwarder {} µs", list(lb), list(floor)),
            lb.iter().zip(&floor).all(|(l, f)| *l <= 1.1 * f),
        ),
        (
            format!("latency at {loads} of max: lb's added p99 < nftables' and HAProxy's"),
            format!(
                "lb {} µs, nftables {} µs, HAProxy {} µs",
                list(lb),
                list(nft),
                list(haproxy)
            ),
            (0..lb.len()).all(|i| lb[i] < nft[i] && lb[i] < haproxy[i]),
        ),
    ]
}

/// The latency goals as a Targets table of their own (for `--only`).
pub fn latency_targets(latency: &latency::Latency) -> String {
    let mut out = String::from("\n## Targets\n\n| target | measured | |\n|---|---|---|\n");
    out += &latency_goal_rows(latency);
    out
}

fn latency_goal_rows(latency: &latency::Latency) -> String {
    latency_goals(latency)
        .into_iter()
        .map(|(name, value, met)| format!("| {name} | {value} | {} |\n", verdict(met)))
        .collect()
}

fn cell(cells: &[Cell], mode: Mode, load: Load) -> &Cell {
    cells
        .iter()
        .find(|c| c.mode == mode && c.load == load)
        .expect("every mode ran every load")
}

/// The end-to-end section.
pub fn end_to_end(plan: &Plan, cells: &[Cell]) -> String {
    let mut out = format!(
        "\n## End to end\n\n\
         The rig of the tests (network namespaces on one bridge, veth links), with one nginx \
         worker (one process) and an iperf3 server behind every mode, so that modes differ only \
         in the balancer. Modes, interleaved in every round: no balancer (the client talks to the \
         worker: the ceiling); nftables DNAT through a jhash map with conntrack and masquerade on \
         the balancer host; HAProxy 2 in TCP mode with one thread on the balancer host (both with \
         the whole port range and `tcp_tw_reuse` there, or they run out of ports); lb in L2 \
         DSR; lb in full NAT (the nftables service done in XDP: the worker unchanged, replies \
         back through the balancer, from a NAT source address of lb's own); and the stateless XDP forwarder (parse + MAC rewrite to the fixed worker + \
         XDP_TX) on a host of its own, the floor for any XDP balancer on this rig. lb stays \
         attached to the balancer host throughout, so nftables' and HAProxy's packets also pass \
         through its program. Loads: `wrk -t1 -c16` for {} s (keep-alive, then with \
         `Connection: close`), `iperf3` one stream for {} s. Medians over rounds; ratios are to \
         the ceiling of the same round. Balancer CPU: lb's and the forwarder's program run time \
         (`kernel.bpf_stats_enabled`), HAProxy's process time; nftables works in softirq, so the \
         machine's whole softirq time is given for every mode (it includes the client's, \
         the worker's and the veths' packet processing).\n",
        plan.e2e_seconds, plan.e2e_seconds
    );
    for load in LOADS {
        let _ = write!(
            out,
            "\n### {load}\n\n| mode | median | min | max | × ceiling | balancer CPU ms / 1000 req | softirq ms / 1000 req |\n|---|---|---|---|---|---|---|\n"
        );
        let ceiling = &cell(cells, Mode::Direct, load).rate;
        for mode in MODES {
            let c = cell(cells, mode, load);
            let figure = |s: &Samples| {
                if s.is_empty() {
                    "–".to_owned()
                } else {
                    format!("{:.3}", s.median())
                }
            };
            let _ = writeln!(
                out,
                "| {mode} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} |",
                c.rate.median(),
                c.rate.min(),
                c.rate.max(),
                ratio(&c.rate, ceiling),
                figure(&c.cpu_per_1000),
                figure(&c.softirq_per_1000)
            );
        }
    }
    out
}

/// The per-packet section.
pub fn per_packet(plan: &Plan, rows: &[PacketRow]) -> String {
    let tx = &find(rows, "floor: parse").single;
    let lru = &find(rows, "floor: + 1 LRU").single;
    let mut out = format!(
        "\n## Per packet (BPF_PROG_TEST_RUN)\n\n\
         lb's real program, loaded with a real configuration (VIPs 192.0.2.100:80/tcp, \
         [2001:db8::100]:80/tcp and 192.0.2.100:53/udp by DSR, 192.0.2.101:80/tcp by IPIP and \
         192.0.2.102:80/tcp by GUE to IPv4 workers, {} workers each, every MAC resolved; IPIP and \
         GUE packets go on by a tail call into the tunnel program, which is part of their figure), \
         next to floor programs built the same way (Rust, aya-ebpf, bpf-linker) and run the same way. \
         Each sample is the mean kernel-reported run time of {} single runs (repeat = 1; a new-flow \
         run gets a new 5-tuple every time); {} rounds interleave all cases (A B C … A B C …). \
         Ratios are medians of per-round ratios. The single-run figures include the test-run \
         harness (about 100 ns on this machine kind) in every case, floors included. The last \
         column is the kernel's mean over one run of repeat = {} where the output is idempotent \
         for the program's decision.\n\n\
         | case | median ns | min | max | × parse+TX floor | × LRU floor | repeat-{} median ns |\n\
         |---|---|---|---|---|---|---|\n",
        super::packet::WORKERS,
        plan.singles,
        plan.rounds,
        plan.repeat,
        plan.repeat
    );
    for row in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {:.2} | {:.2} | {} |",
            row.name,
            ns(&row.single),
            ratio(&row.single, tx),
            ratio(&row.single, lru),
            row.repeated
                .as_ref()
                .map_or_else(|| "–".into(), |r| format!("{:.0}", r.median()))
        );
    }
    out + &capture_hook(plan, rows)
}

/// What `lb capture`'s hook costs an established packet: idle, and with a
/// capture running that matches nothing.
fn capture_hook(plan: &Plan, rows: &[PacketRow]) -> String {
    let idle = capture_hook_ratios(rows, "lb: IPv4 TCP, established");
    let running = capture_hook_ratios(rows, "lb, a capture running");
    format!(
        "\nThe capture hook (`lb capture`), from the repeat-{} means (the program's own time, \
         without the test-run harness): an established IPv4 TCP packet of lb as shipped, with no \
         capture running, costs {:.3}× the same packet of lb built without the hook (median of \
         per-round ratios; quartiles {:.3}–{:.3}, the rounds' own spread). With a capture running \
         whose filter matches nothing, it costs {:.2}× (the tail call into the capture program \
         and the filter).\n",
        plan.repeat,
        idle.median(),
        idle.percentile(25.0),
        idle.percentile(75.0),
        running.median(),
    )
}

/// Per-round ratios of the repeat-N means of row `name` to lb built
/// without the capture hook.
pub fn capture_hook_ratios(rows: &[PacketRow], name: &str) -> Samples {
    let repeated = |name| {
        find(rows, name)
            .repeated
            .as_ref()
            .expect("established packets are measured repeated too")
    };
    repeated(name).ratios(repeated("lb built without the capture hook"))
}

/// The announcements section.
pub fn announcements(plan: &Plan, results: &crate::announce::Announcements) -> String {
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    let mut out = format!(
        "\n## Announcements\n\n\
         The rig of `bgp_e2e`: a client behind a router running BIRD 2 with ECMP (`merge paths \
         on`, L4 hashing) and BFD (100 ms × 5), two balancers on a LAN each running `lb run \
         --announce-table 100` and BIRD with `dist/bird/balancer.conf` as shipped, three nginx \
         workers answering through the router (DSR). A steady stream of new connections (two \
         threads, one request each, 3 ms apart) runs throughout. {} trials of each scenario, each \
         on a fresh rig. **Planned withdrawal**: `lb announce withdraw` on lb1 with keep-alive \
         connections open (one through lb1); the time until the router's kernel route has lb2 \
         alone as next hop, until lb1's forwarded counter last moved, and from `lb announce \
         restore` until the route has both again. **Failure**: lb1's switch port goes down (its \
         BGP session gets no word: only BFD can tell) with {} established keep-alive connections \
         talking; the time until the router's route has lb2 alone. A request is slow when it \
         took over a second (its SYN was lost and resent).\n\n\
         | scenario | measure | median | min | max |\n\
         |---|---|---|---|---|\n",
        plan.announce_trials,
        crate::announce::CONNECTIONS
    );
    let rows: [(&str, &str, Samples); 4] = [
        (
            "planned withdrawal",
            "command → router's route changed, ms",
            results
                .withdrawals
                .iter()
                .map(|w| ms(w.route_gone))
                .collect(),
        ),
        (
            "planned withdrawal",
            "command → last packet at the withdrawn balancer, ms",
            results
                .withdrawals
                .iter()
                .map(|w| ms(w.last_packet))
                .collect(),
        ),
        (
            "planned withdrawal",
            "`lb announce restore` → route back, ms",
            results.withdrawals.iter().map(|w| ms(w.restored)).collect(),
        ),
        (
            "balancer failure",
            "link cut → router's route changed (BFD), ms",
            results.cuts.iter().map(|c| ms(c.detected)).collect(),
        ),
    ];
    for (scenario, measure, samples) in rows {
        let _ = writeln!(
            out,
            "| {scenario} | {measure} | {:.1} | {:.1} | {:.1} |",
            samples.median(),
            samples.min(),
            samples.max()
        );
    }
    let sum = |loads: &mut dyn Iterator<Item = &lb_testing::bgp::LoadReport>| {
        loads.fold((0, 0, 0), |(n, failed, slow), l| {
            (n + l.ok + l.failed, failed + l.failed, slow + l.slow)
        })
    };
    let (n, failed, slow) = sum(&mut results.withdrawals.iter().map(|w| &w.load));
    let _ = writeln!(
        out,
        "\nPlanned withdrawals: {n} requests in all, {failed} failed, {slow} slow."
    );
    let (n, failed, slow) = sum(&mut results.cuts.iter().map(|c| &c.load));
    let survived: usize = results.cuts.iter().map(|c| c.survived).sum();
    let _ = writeln!(
        out,
        "Failures: {survived} of {} established connections survived; {n} new requests, \
         {failed} failed, {slow} slow.",
        results.cuts.len() * crate::announce::CONNECTIONS
    );
    out
}

/// The CPU-scaling section.
pub fn cpus(plan: &Plan, rows: &[crate::cpus::Scaling]) -> String {
    let cpus = crate::cpus::cpus().map_or(0, |c| c.len());
    let mut out = format!(
        "\n## New flows on every CPU at once\n\n\
         Whether recording new flows serialises CPUs. Each case runs {} single test runs of new \
         flows (a new 5-tuple every run) on each CPU alone in turn, then on all {} CPUs at once, \
         one thread pinned to each; {} rounds interleave the cases and the two ways. Throughput is \
         runs per second of kernel-reported run time (the harness in user space runs in \
         parallel anyway); efficiency is the all-CPU throughput over {} × the mean one-CPU \
         throughput, median of per-round ratios.\n\n\
         ![New flows on one CPU and on all](cpus.svg)\n\n\
         | case | one CPU, M flows/s | all CPUs, M flows/s | efficiency | min | max |\n\
         |---|---|---|---|---|---|\n",
        plan.singles, cpus, plan.rounds, cpus
    );
    for row in rows {
        let _ = writeln!(
            out,
            "| {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            row.name,
            row.alone.median(),
            row.together.median(),
            row.efficiency.median(),
            row.efficiency.min(),
            row.efficiency.max()
        );
    }
    out
}

fn scale(plan: &Plan, results: &Results) -> String {
    let mut out = format!(
        "\n## Flow-table scale\n\n\
         Established IPv4 TCP packets with the flow table holding N active flows (inserted from \
         user space), each single run a flow drawn at random from all N; table capacity 1.25 × N. \
         Next to it, the LRU floor on the same flows in an LRU hash of the same size: a random \
         lookup in a big table waits for memory, whoever does it. {} single runs per sample, {} \
         interleaved rounds. Memory is the `memlock` the kernel charges for the flow table.\n\n\
         | flows | median ns | min | max | × 1K flows | LRU floor, same flows, ns | × that floor | table memory |\n\
         |---|---|---|---|---|---|---|---|\n",
        plan.singles, plan.rounds
    );
    let base = &results.scale[0].cost;
    for row in &results.scale {
        let _ = writeln!(
            out,
            "| {} | {} | {:.2} | {:.0} | {:.2} | {} |",
            row.flows,
            ns(&row.cost),
            ratio(&row.cost, base),
            row.floor.median(),
            ratio(&row.cost, &row.floor),
            bytes(row.table_bytes)
        );
    }
    out
}

fn bytes(n: u64) -> String {
    if n >= 1 << 20 {
        format!("{:.0} MiB", n as f64 / f64::from(1 << 20))
    } else {
        format!("{:.0} KiB", n as f64 / 1024.0)
    }
}

fn control(results: &Results) -> String {
    let mut out = String::from(
        "\n## Control plane\n\n\
         Maglev table builds (weighted, all weights 100), in the controller's code, single thread:\n\n\
         | workers | table size | median ms | min | max |\n|---|---|---|---|---|\n",
    );
    for row in &results.maglev {
        let _ = writeln!(
            out,
            "| {} | {} | {:.2} | {:.2} | {:.2} |",
            row.workers,
            row.size,
            row.build_ms.median(),
            row.build_ms.min(),
            row.build_ms.max()
        );
    }
    let timing = |name: &str, s: &Samples, how: &str| {
        format!(
            "| {name} | {:.1} | {:.1} | {:.1} | {} | {how} |\n",
            s.median(),
            s.min(),
            s.max(),
            s.len()
        )
    };
    out += "\nOn the network-namespace rig (lb in its own namespace, nginx workers):\n\n\
            | timing | median ms | min | max | trials | how |\n|---|---|---|---|---|---|\n";
    out += &timing(
        "`lb backend add` returns → first packet forwarded to the new worker",
        &results.add_to_first_packet,
        "new UDP flows every 100 µs; the worker's counter polled every 100 µs",
    );
    out += &timing(
        "worker's server killed → worker out of scheduling",
        &results.death_to_removal,
        "default checks (tcp, 1s interval, 500ms timeout, fall 2); the worker's down flag polled",
    );
    out
}

fn targets(results: &Results) -> String {
    let rows = &results.packet;
    let lru = &find(rows, "floor: + 1 LRU").single;
    let tx = &find(rows, "floor: parse").single;
    let est4 = &find(rows, "lb: IPv4 TCP, established").single;
    let est6 = &find(rows, "lb: IPv6 TCP, established").single;
    let checks = vec![
        (
            "established IPv4 TCP ≤ 1.3 × LRU floor",
            ratio(est4, lru),
            1.3,
        ),
        (
            "new flow (SYN) ≤ 3 × LRU floor",
            ratio(&find(rows, "lb: IPv4 TCP, new").single, lru),
            3.0,
        ),
        (
            "non-VIP ≤ 1.15 × parse+TX floor",
            ratio(&find(rows, "lb: IPv4 TCP, not").single, tx),
            1.15,
        ),
        (
            "IPv6 within 15% of IPv4 (IPv6 / IPv4)",
            ratio(est6, est4),
            1.15,
        ),
        (
            "IPv4 no slower than IPv6 (IPv4 / IPv6, established)",
            ratio(est4, est6),
            1.0,
        ),
        (
            "established IPIP ≤ 1.15 × established DSR (IPv4 TCP)",
            ratio(&find(rows, "lb IPIP: IPv4 TCP, established").single, est4),
            1.15,
        ),
        (
            "established GUE ≤ 1.15 × established DSR (IPv4 TCP)",
            ratio(&find(rows, "lb GUE: IPv4 TCP, established").single, est4),
            1.15,
        ),
        (
            "idle capture hook ≤ 1.02 × lb built without it (established IPv4 TCP, repeat-N means)",
            capture_hook_ratios(rows, "lb: IPv4 TCP, established").median(),
            1.02,
        ),
        (
            "new flow IPIP ≤ 1.15 × new flow DSR (IPv4 TCP SYN)",
            ratio(
                &find(rows, "lb IPIP: IPv4 TCP, new").single,
                &find(rows, "lb: IPv4 TCP, new").single,
            ),
            1.15,
        ),
        (
            "established nat ≤ 1.3 × established DSR (IPv4 TCP, to the worker)",
            ratio(&find(rows, "lb nat: IPv4 TCP, established").single, est4),
            1.3,
        ),
        (
            "established fullnat ≤ 1.3 × established DSR (IPv4 TCP, to the worker)",
            ratio(
                &find(rows, "lb fullnat: IPv4 TCP, established").single,
                est4,
            ),
            1.3,
        ),
        (
            "nat reply ≤ 1.3 × established DSR (IPv4 TCP, back to the client, next hop cached)",
            ratio(
                &find(
                    rows,
                    "lb nat: IPv4 TCP, worker's reply (translated, next hop cached)",
                )
                .single,
                est4,
            ),
            1.3,
        ),
        (
            "fullnat reply ≤ 1.3 × established DSR (IPv4 TCP, back to the client, next hop cached)",
            ratio(
                &find(
                    rows,
                    "lb fullnat: IPv4 TCP, worker's reply (translated, next hop cached)",
                )
                .single,
                est4,
            ),
            1.3,
        ),
    ];
    let mut out = String::from("\n## Targets\n\n| target | measured | |\n|---|---|---|\n");
    for (name, value, limit) in checks {
        let _ = writeln!(out, "| {name} | {value:.2} | {} |", verdict(value <= limit));
    }
    if let (Some(small), Some(big)) = (
        results.scale.first(),
        results.scale.iter().find(|r| r.flows == 1_000_000),
    ) {
        let value = ratio(&big.cost, &small.cost);
        let _ = writeln!(
            out,
            "| 1M flows ≤ 1.5 × 1K flows | {value:.2} | {} |",
            verdict(value <= 1.5)
        );
        let value = ratio(&big.cost, &big.floor);
        let _ = writeln!(
            out,
            "| 1M flows ≤ 1.10 × the LRU floor at the same table size | {value:.2} | {} |",
            verdict(value <= 1.10)
        );
    }
    if let Some(row) = results.cpus.iter().find(|r| r.name.starts_with("lb:")) {
        let value = row.efficiency.median();
        let _ = writeln!(
            out,
            "| new flows on every CPU at once ≥ 0.95 × CPUs × one CPU | {value:.2} | {} |",
            verdict(value >= 0.95)
        );
    }
    if let Some(row) = results
        .maglev
        .iter()
        .find(|r| r.workers == 1000 && r.size == 65_537)
    {
        let ms = row.build_ms.median();
        let _ = writeln!(
            out,
            "| Maglev build, 1,000 workers, M = 65537 < 5 ms | {ms:.2} ms | {} |",
            verdict(ms < 5.0)
        );
    }
    for load in LOADS {
        let value = ratio(
            &cell(&results.e2e, Mode::Lb, load).rate,
            &cell(&results.e2e, Mode::Floor, load).rate,
        );
        let _ = writeln!(
            out,
            "| end to end, {load}: lb ≥ 0.95 × stateless XDP forwarder | {value:.2} | {} |",
            verdict(value >= 0.95)
        );
    }
    for load in [Load::KeepAlive, Load::NewConnections] {
        let value = ratio(
            &cell(&results.e2e, Mode::LbFullnat, load).rate,
            &cell(&results.e2e, Mode::Nftables, load).rate,
        );
        let _ = writeln!(
            out,
            "| end to end, {load}: lb full NAT ≥ 1.2 × nftables DNAT + masquerade | {value:.2} | {} |",
            verdict(value >= 1.2)
        );
    }
    out += &latency_goal_rows(&results.latency);
    out += &announce_goal_rows(&results.announce);
    let ms = results.add_to_first_packet.median();
    let _ = writeln!(
        out,
        "| `lb backend add` → first forwarded packet < 50 ms | {ms:.1} ms | {} |",
        verdict(ms < 50.0)
    );
    let worst = admin_ratios(&results.admin)
        .into_iter()
        .filter(|(row, _)| !matches!(row.phase, Phase::Idle | Phase::IdleFull))
        .map(|(_, ratio)| ratio)
        .fold(f64::NAN, f64::max);
    let _ = writeln!(
        out,
        "| admin p99 under load ≤ {ADMIN_GOAL} × idle p99 (worst phase and command) | {worst:.2} | {} |",
        verdict(worst <= ADMIN_GOAL)
    );
    for fleet in &results.fleets {
        for (name, value, met) in fleet_goals(fleet) {
            let _ = writeln!(
                out,
                "| {}: {name} | {value} | {} |",
                fleet_name(fleet),
                verdict(met)
            );
        }
    }
    out
}

/// Issue 16's outcomes: no request lost to a planned withdrawal, and
/// established connections through a failed balancer kept.
fn announce_goal_rows(results: &crate::announce::Announcements) -> String {
    let failed: usize = results.withdrawals.iter().map(|w| w.load.failed).sum();
    let tried: usize = results
        .withdrawals
        .iter()
        .map(|w| w.load.ok + w.load.failed)
        .sum();
    let survived: usize = results.cuts.iter().map(|c| c.survived).sum();
    let open = results.cuts.len() * crate::announce::CONNECTIONS;
    format!(
        "| planned withdrawal through BIRD: no failed request | {failed} of {tried} failed | {} |\n\
         | balancer failure (BFD): ≥ 99% of established connections survive | {survived} of {open} | {} |\n",
        verdict(failed == 0 && tried > 0),
        verdict(open > 0 && survived * 100 >= open * 99)
    )
}

fn fleet_name(fleet: &Fleet) -> String {
    format!(
        "{} VIPs × {} workers",
        thousands(fleet.vips),
        thousands(fleet.entries)
    )
}

/// Issue 14's goals for a fleet: (goal, measured, met).
fn fleet_goals(fleet: &Fleet) -> Vec<(&'static str, String, bool)> {
    let storm_ratio = fleet.admin_storm.percentile(99.0) / fleet.admin_idle.percentile(99.0);
    let recovery = fleet.recovered_ms - fleet.first_down_ms;
    vec![
        (
            "start serves every VIP ≤ 2 s",
            format!("{:.2} s", fleet.start_ms / 1e3),
            fleet.start_ms <= 2000.0,
        ),
        (
            "restart answers ≤ 2 s, no connection failed",
            format!(
                "{:.2} s, {} of {} failed",
                fleet.restart_ms / 1e3,
                fleet.restart_failed,
                fleet.restart_tried
            ),
            fleet.restart_ms <= 2000.0 && fleet.restart_failed == 0,
        ),
        (
            "steady state ≤ 5% of a core",
            format!("{:.1}%", fleet.idle_cpu),
            fleet.idle_cpu <= 5.0,
        ),
        (
            "steady state ≤ 100 MB",
            format!("{:.0} MB", fleet.idle_rss_mb),
            fleet.idle_rss_mb <= 100.0,
        ),
        (
            "new connections succeed ≤ detection + 1 s after a host dies",
            format!("detection + {:.2} s", recovery / 1e3),
            recovery <= 1000.0,
        ),
        (
            "admin p99 during the storm ≤ 3 × idle p99",
            format!("{storm_ratio:.2}"),
            storm_ratio <= ADMIN_GOAL,
        ),
        (
            "memory back to baseline after the storm (≤ 1.1 ×)",
            format!("{:.0} MB", fleet.after_rss_mb),
            fleet.after_rss_mb <= fleet.idle_rss_mb * 1.1,
        ),
    ]
}

/// The fleet section.
pub fn fleet(fleets: &[Fleet]) -> String {
    let mut out = String::from(
        "\n## A fleet at the limits\n\n\
         On the rig, lb started with `--config` holding every VIP (port 80, default checks: tcp, \
         1s interval, 500ms timeout, fall 2) and `--max-vips`/`--max-workers` set to the fleet's \
         size. The workers are addresses on two hosts: host A carries about 85% of all worker \
         entries (each of its addresses serves every VIP), host B the rest, with one address on \
         every VIP. Every VIP uses the same checks, so the controller runs one checker per \
         address. *Start*: `lb run` to a new connection to every VIP answering. *Steady*: CPU \
         and resident memory of `lb run`. *Host A dies*: its link goes down while two threads \
         open new connections to the VIPs in turn (250 ms connect timeout) and another times \
         `lb status -o json`; *detection* is the first of its entries marked down in the pinned \
         worker map (the checks' verdict), *all down* the last; *recovered* is when the run of \
         new connections that all succeeded began. Then the host comes back, and after 10 s \
         memory is measured again. *Restart*: `lb run` stopped and started again under new \
         connections.\n\n\
         | fleet | checkers | start s | CPU % | RSS MB | threads | detection s | all down s | recovered s | failed / tried | all up again s | status p99 idle / storm ms | RSS after MB | restart s |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for f in fleets {
        let _ = writeln!(
            out,
            "| {} ({} on host A) | {} | {:.2} | {:.1} | {:.0} | {} | {:.2} | {:.2} | {:.2} | {} / {} | {:.2} | {:.1} / {:.1} | {:.0} | {:.2} |",
            fleet_name(f),
            thousands(f.dying_entries),
            f.addresses,
            f.start_ms / 1e3,
            f.idle_cpu,
            f.idle_rss_mb,
            f.threads,
            f.first_down_ms / 1e3,
            f.all_down_ms / 1e3,
            f.recovered_ms / 1e3,
            f.failed,
            f.tried,
            f.all_up_ms / 1e3,
            f.admin_idle.percentile(99.0),
            f.admin_storm.percentile(99.0),
            f.after_rss_mb,
            f.restart_ms / 1e3,
        );
    }
    out
}

/// The goal of issue 14: admin p99 under load within 3 × the idle p99.
const ADMIN_GOAL: f64 = 3.0;

fn thousands(n: u32) -> String {
    match n {
        1000.. => format!("{},{:03}", n / 1000, n % 1000),
        _ => n.to_string(),
    }
}

fn phase_label(plan: &Plan, phase: Phase) -> String {
    let workers = thousands(plan.admin_workers);
    match phase {
        Phase::Idle => "idle".into(),
        Phase::Adding => format!("adding {workers} unresolvable workers"),
        Phase::TimingOut => format!("{workers} checks timing out"),
        Phase::IdleFull => format!("idle with those {workers} workers, checks off"),
    }
}

/// p99 of each row over the p99 of the same command in its baseline
/// phase.
fn admin_ratios(admin: &Latency) -> Vec<(&super::admin::Row, f64)> {
    let idle = |phase: Phase, command: &str| {
        admin
            .rows
            .iter()
            .find(|r| r.phase == phase && r.command == command)
            .map_or(f64::NAN, |r| r.ms.percentile(99.0))
    };
    admin
        .rows
        .iter()
        .map(|r| {
            (
                r,
                r.ms.percentile(99.0) / idle(r.phase.baseline(), r.command),
            )
        })
        .collect()
}

fn counted(counts: &std::collections::BTreeMap<String, usize>) -> String {
    counts
        .iter()
        .map(|(what, n)| format!("{n} `{what}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The admin-latency section.
pub fn admin(plan: &Plan, admin: &Latency) -> String {
    let mut out = format!(
        "\n## Admin latency under load\n\n\
         On the rig, lb with one TCP VIP ([2001:db8::100]:80, checks tcp, 1s interval, 500ms \
         timeout) and one real worker. Each figure is one whole CLI run ({}), timed as an \
         operator waits for it: process start, the admin socket round trip, output. The commands \
         alternate. Idle: {} calls each. Adding: a thread runs `lb backend add` for {} workers \
         that no host has (2001:db8::1:1 on, on the balancer's /64, so the kernel tries \
         neighbour discovery for each), one after another, while the commands are timed until \
         the adds finish; each add took {:.0} ms at the median, {:.0} ms at p99. \
         Timing out: the next {} s, with every one of those workers checked \
         each second. At the end their last checks said: {}; their states: {}. \
         `lb backend list` prints every worker, 1 in the idle phase and {} later: the timing-out \
         phase is compared with a last idle phase that holds every worker with its checks turned \
         off (`lb vip set --health none`), so that a ratio measures waiting, not output size; the \
         adding phase with the first. The goal: p99 within {ADMIN_GOAL} × the idle p99.\n\n\
         | phase | command | p50 ms | p99 ms | calls | p99 / idle p99 | ≤ {ADMIN_GOAL} × |\n\
         |---|---|---|---|---|---|---|\n",
        COMMANDS.map(|(name, _)| name).join(", "),
        plan.admin_calls,
        thousands(plan.admin_workers),
        admin.adds.median(),
        admin.adds.percentile(99.0),
        plan.admin_timeout_seconds,
        counted(&admin.checks),
        counted(&admin.states),
        thousands(plan.admin_workers + 1),
    );
    for (row, ratio) in admin_ratios(admin) {
        let _ = writeln!(
            out,
            "| {} | {} | {:.1} | {:.1} | {} | {ratio:.2} | {} |",
            phase_label(plan, row.phase),
            row.command,
            row.ms.percentile(50.0),
            row.ms.percentile(99.0),
            row.ms.len(),
            if matches!(row.phase, Phase::Idle | Phase::IdleFull) {
                "–"
            } else {
                verdict(ratio <= ADMIN_GOAL)
            }
        );
    }
    out
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "missed"
    }
}
