//! `lb demo`: lb balancing a sandbox of network namespaces.
//!
//! A client, the balancer and three nginx workers share a bridge. The
//! workers hold the VIP on loopback; the client routes the VIP via the
//! balancer, whose XDP program picks a worker with Maglev, records the flow
//! and sends the frame on to that worker's MAC (L2 direct server return).

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use anyhow::Context as _;

use crate::testbed::{http_get, LbProcess, Process, Testbed};

const VIP: &str = "192.0.2.100:80/tcp";
const VIP_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
const REQUESTS: usize = 60;

/// Builds the sandbox, runs lb in it, sends traffic and prints the result.
pub fn demo() -> anyhow::Result<()> {
    let mut bed = Testbed::new()?;
    let client = bed.add_host("client", Ipv4Addr::new(192, 0, 2, 1), v6(1))?;
    let balancer = bed.add_host("lb", Ipv4Addr::new(192, 0, 2, 2), v6(2))?;
    let workers = (1..=3u8)
        .map(|n| {
            bed.add_host(
                &format!("w{n}"),
                Ipv4Addr::new(192, 0, 2, 10 + n),
                v6(0x10 + u16::from(n)),
            )
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    bed.disable_tx_offload("client")?;
    bed.accept_xdp_tx_from("lb")?;
    let _nginx = workers
        .iter()
        .map(|w| {
            w.hold_vips_on_loopback(&[IpAddr::V4(VIP_ADDR)])?;
            bed.start_nginx(w, &format!("hello from {}", w.role))
        })
        .collect::<anyhow::Result<Vec<Process>>>()?;
    client.run(
        "ip",
        &[
            "route",
            "add",
            &format!("{VIP_ADDR}/32"),
            "via",
            &balancer.ipv4.to_string(),
        ],
    )?;
    println!(
        "sandbox: client {}, balancer {}, workers {} (nginx, VIP on loopback)\n",
        client.ipv4,
        balancer.ipv4,
        workers
            .iter()
            .map(|w| w.ipv4.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );

    let exe = std::env::current_exe().context("locating the lb binary")?;
    let lb = LbProcess::start(&exe, &mut bed, &balancer, "demo", &[])?;
    print!("{}", lb.attached_line);
    println!("$ lb vip add {VIP}");
    lb.cli_ok(&["vip", "add", VIP])?;
    for w in &workers {
        println!("$ lb backend add {VIP} {}", w.ipv4);
        lb.cli_ok(&["backend", "add", VIP, &w.ipv4.to_string()])?;
    }
    print!("$ lb backend list\n{}", lb.cli_ok(&["backend", "list"])?);

    let target = SocketAddr::new(IpAddr::V4(VIP_ADDR), 80);
    let answers = client.within(move || {
        (0..REQUESTS)
            .map(|_| http_get(target, Duration::from_secs(5)))
            .collect::<anyhow::Result<Vec<_>>>()
    })??;
    let mut spread = BTreeMap::new();
    for answer in answers {
        *spread.entry(answer).or_insert(0) += 1;
    }
    println!("\n{REQUESTS} HTTP requests to {target} over new connections:");
    for (answer, n) in &spread {
        println!("  {n:>3} × \"{answer}\"");
    }
    print!("\n$ lb stats\n{}", lb.cli_ok(&["stats"])?);
    let flows = lb.cli_ok(&["flows"])?;
    println!(
        "\n$ lb flows   ({} flows; first five)",
        flows.lines().count().saturating_sub(1)
    );
    for line in flows.lines().take(6) {
        println!("{line}");
    }
    print!("\n{}", lb.stop()?);
    println!("removing the sandbox");
    Ok(())
}

fn v6(last: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, last)
}
