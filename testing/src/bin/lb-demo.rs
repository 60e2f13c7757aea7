//! `lb-demo` (`cargo xtask demo`): lb balancing a sandbox of network
//! namespaces, and routing around a worker that dies.
//!
//! A client, the balancer and three nginx workers share a bridge (see
//! [`lb_testing::rig`]). The workers hold the VIP on loopback; the client routes
//! the VIP via the balancer, whose XDP program picks a worker with Maglev,
//! records the flow and sends the frame on to that worker's MAC (L2 direct
//! server return). Then one worker's nginx is killed: health checks take it
//! out, traffic flows around it, and it comes back when restarted.
//!
//! With `--forward ipip` or `--forward gue` the workers sit on a network
//! of their own behind a router, each running `lb decap attach`, and lb
//! sends them each packet inside IPIP or GUE (L3 forwarding).

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use lb_common::encap::DEFAULT_GUE_PORT;
use lb_testing::{
    lb_exe,
    rig::{Rig, VIP4},
    testbed::{http_get, LbProcess},
};

const VIP: &str = "192.0.2.100:80/tcp";
const REQUESTS: usize = 60;
const CHECKS: &[&str] = &["--health-interval", "500ms", "--health-timeout", "200ms"];

fn main() {
    let forward = match std::env::args().skip(1).collect::<Vec<_>>().as_slice() {
        [] => "dsr".to_owned(),
        [flag, method]
            if flag == "--forward" && ["dsr", "ipip", "gue"].contains(&method.as_str()) =>
        {
            method.clone()
        }
        _ => {
            eprintln!("lb-demo: usage: lb-demo [--forward dsr|ipip|gue]");
            std::process::exit(2);
        }
    };
    if let Err(error) = demo(&forward) {
        eprintln!("lb-demo: error: {error:#}");
        std::process::exit(1);
    }
}

/// Builds the sandbox, runs lb in it, sends traffic and prints the result.
fn demo(forward: &str) -> anyhow::Result<()> {
    let exe = lb_exe();
    let mut rig = if forward == "dsr" {
        Rig::new(exe.as_ref(), 3, &["--detach-on-exit"])?
    } else {
        Rig::behind_router(exe.as_ref(), 3, DEFAULT_GUE_PORT, &["--detach-on-exit"])?
    };
    println!(
        "sandbox: client {}, balancer {}, workers {} (nginx, VIP on loopback{})\n",
        rig.client.ipv4,
        rig.balancer.ipv4,
        rig.workers
            .iter()
            .map(|w| format!("{} {}", w.role, w.ipv4))
            .collect::<Vec<_>>()
            .join(", "),
        if forward == "dsr" {
            ""
        } else {
            "; behind the router 192.0.2.254, each running `lb decap attach`"
        }
    );
    print!("{}", rig.lb.attached_line);
    run(
        &rig.lb,
        &format!("vip add {VIP} --forward {forward} {}", CHECKS.join(" ")),
    )?;
    for w in &rig.workers {
        run(&rig.lb, &format!("backend add {VIP} {}", w.ipv4))?;
    }
    show(&rig.lb, "backend list")?;
    spread(&rig)?;

    println!("\nkilling nginx on w2, as a crash would, while the client keeps connecting:");
    rig.stop_worker(1);
    timeline(&rig, Duration::from_secs(3))?;
    show(&rig.lb, "backend list")?;
    spread(&rig)?;

    println!("\nrestarting nginx on w2:");
    rig.start_worker(1)?;
    timeline(&rig, Duration::from_secs(2))?;
    show(&rig.lb, "backend list")?;
    spread(&rig)?;

    show(&rig.lb, "stats")?;
    let flows = rig.lb.cli_ok(&["flows"])?;
    println!(
        "\n$ lb flows   ({} flows; first five)",
        flows.lines().count().saturating_sub(1)
    );
    for line in flows.lines().take(6) {
        println!("{line}");
    }
    print!("\n{}", rig.lb.stop()?);
    println!("removing the sandbox");
    Ok(())
}

/// Prints and runs an `lb` command.
fn run(lb: &LbProcess, command: &str) -> anyhow::Result<()> {
    println!("$ lb {command}");
    let args: Vec<&str> = command.split_whitespace().collect();
    print!("{}", lb.cli_ok(&args)?);
    Ok(())
}

fn show(lb: &LbProcess, command: &str) -> anyhow::Result<()> {
    println!();
    run(lb, command)
}

/// REQUESTS requests over new connections, answers counted per worker.
fn spread(rig: &Rig) -> anyhow::Result<()> {
    let counts = rig.spread(IpAddr::V4(VIP4), REQUESTS)?;
    println!("\n{REQUESTS} HTTP requests to {VIP4}:80 over new connections:");
    for (worker, n) in &counts {
        println!("  {n:>3} answered by {worker}");
    }
    Ok(())
}

/// Requests for `length`, one every 20 ms, summarised per half second.
fn timeline(rig: &Rig, length: Duration) -> anyhow::Result<()> {
    let target = SocketAddr::new(IpAddr::V4(VIP4), 80);
    let results = rig.client.within(move || {
        let started = Instant::now();
        let mut results = Vec::new();
        while started.elapsed() < length {
            let answer = http_get(target, Duration::from_millis(500)).ok();
            results.push((started.elapsed(), answer));
            // Time that must pass: the requests are spread over the timeline.
            std::thread::sleep(Duration::from_millis(20));
        }
        results
    })?;
    let mut buckets: BTreeMap<u128, BTreeMap<String, usize>> = BTreeMap::new();
    for (at, answer) in results {
        let bucket = buckets.entry(at.as_millis() / 500).or_default();
        *bucket
            .entry(answer.unwrap_or_else(|| "failed".into()))
            .or_default() += 1;
    }
    for (half_seconds, counts) in buckets {
        let summary: Vec<String> = counts.iter().map(|(w, n)| format!("{w} {n}")).collect();
        println!(
            "  {:>4.1}s  {}",
            half_seconds as f64 / 2.0,
            summary.join(", ")
        );
    }
    Ok(())
}
