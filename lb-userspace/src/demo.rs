//! `lb demo`: lb on a sandbox of network namespaces.
//!
//! A client, the balancer and three nginx workers share a bridge. The
//! client reaches the workers through the balancer host (a router), so every
//! request crosses lb's XDP program, which counts it and passes it on.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use anyhow::Context as _;

use crate::{
    counters,
    testbed::{http_get, LbProcess, Process, Testbed, HOST_IFACE},
};

const REQUESTS_PER_WORKER: usize = 10;

/// Builds the sandbox, runs lb in it, sends traffic and prints the result.
pub fn demo() -> anyhow::Result<()> {
    let mut bed = Testbed::new()?;
    let client = bed.add_host("client", Ipv4Addr::new(192, 0, 2, 1), v6(1))?;
    let balancer = bed.add_host("lb", Ipv4Addr::new(192, 0, 2, 2), v6(2))?;
    let mut workers = Vec::new();
    for n in 1..=3u8 {
        workers.push(bed.add_host(
            &format!("w{n}"),
            Ipv4Addr::new(192, 0, 2, 10 + n),
            v6(0x10 + u16::from(n)),
        )?);
    }
    bed.disable_tx_offload("client")?;
    balancer.run(
        "sysctl",
        &[
            "-qw",
            "net.ipv4.ip_forward=1",
            "net.ipv4.conf.all.send_redirects=0",
            "net.ipv4.conf.eth0.send_redirects=0",
        ],
    )?;
    let _nginx: Vec<Process> = workers
        .iter()
        .map(|w| bed.start_nginx(w, &format!("hello from {}", w.role)))
        .collect::<anyhow::Result<_>>()?;
    for worker in &workers {
        client.run(
            "ip",
            &[
                "route",
                "add",
                &format!("{}/32", worker.ipv4),
                "via",
                &balancer.ipv4.to_string(),
            ],
        )?;
    }
    println!(
        "sandbox: client {}, balancer {}, workers {}",
        client.ipv4,
        balancer.ipv4,
        workers
            .iter()
            .map(|w| w.ipv4.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );

    let pin_dir = bed.pin_dir("demo");
    let exe = std::env::current_exe().context("locating the lb binary")?;
    let lb = LbProcess::start(&exe, &balancer, &pin_dir, &[])?;
    print!("{}", lb.attached_line);

    for worker in &workers {
        let target = SocketAddr::new(IpAddr::V4(worker.ipv4), 80);
        let answers = client.within(move || {
            (0..REQUESTS_PER_WORKER)
                .map(|_| http_get(target, Duration::from_secs(5)))
                .collect::<anyhow::Result<Vec<_>>>()
        })??;
        println!(
            "{REQUESTS_PER_WORKER} requests to {target} through the balancer: all answered \"{}\"",
            answers[0]
        );
    }
    println!("\nwhat lb saw on {} of the balancer:", HOST_IFACE);
    print!("{}", counters::render_table(&lb.stats()?));

    print!("\n{}", lb.stop()?);
    println!("removing the sandbox");
    Ok(())
}

fn v6(last: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, last)
}
