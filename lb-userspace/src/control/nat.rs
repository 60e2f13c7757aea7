//! What NAT forwarding needs from the balancer's side: its NAT source
//! addresses (`lb run --nat-source`) and the port range it allocates from
//! (`--nat-ports`), checked against the host so that lb's allocations
//! never collide with the host's own connections.

use std::net::IpAddr;

use lb_common::nat::NAT_SOURCES_PER_FAMILY;

use crate::{
    dataplane::nat::{NatPorts, NatSettings},
    desired::{options::Forward, state::Desired},
    kernel::netlink::Netlink,
    service::Vip,
};

/// Where the kernel says which ports it takes for the host's own
/// connections (IPv4 and IPv6 alike), in lb's network namespace.
const LOCAL_PORT_RANGE: &str = "/proc/sys/net/ipv4/ip_local_port_range";

/// Why the NAT settings could not be made.
#[derive(Debug, thiserror::Error)]
pub enum NatError {
    /// A NAT source that is no address of this host.
    #[error("--nat-source {0} is not an address of this host: NAT sources must be local unicast addresses, so that workers' replies come back here")]
    NotLocal(IpAddr),
    /// A NAT source that is no single host.
    #[error("--nat-source {0} is not a unicast address")]
    NotUnicast(IpAddr),
    /// The same source twice.
    #[error("--nat-source {0} is given twice")]
    Twice(IpAddr),
    /// More sources of a family than the data plane holds.
    #[error("at most {NAT_SOURCES_PER_FAMILY} --nat-source addresses per family")]
    TooMany,
    /// A `fullnat` VIP (from the state file or `--config`) of a family
    /// without a NAT source.
    #[error("fullnat VIP {0} needs a NAT source of its family: give lb run --nat-source with an address of this host of that family")]
    NoSourceFor(Vip),
    /// A VIP on a NAT source's address.
    #[error("VIP {0} is on a NAT source address: give --nat-source another address")]
    SourceIsVip(Vip),
    /// The range overlaps the host's ephemeral ports.
    #[error("--nat-ports {low}-{high} overlaps the ports this host takes for its own connections ({local_low}-{local_high}, net.ipv4.ip_local_port_range): lb's allocations could collide with them; pick a range outside it")]
    Overlap {
        /// The range asked for.
        low: u16,
        /// Its top.
        high: u16,
        /// The host's ephemeral range.
        local_low: u16,
        /// Its top.
        local_high: u16,
    },
    /// The addresses or the port range could not be read.
    #[error("{what}: {source}")]
    Read {
        /// What was being read.
        what: &'static str,
        /// What went wrong.
        source: std::io::Error,
    },
}

impl NatSettings {
    /// Checks `sources` and `ports` against the host: every source a
    /// unicast address of this host, at most [`NAT_SOURCES_PER_FAMILY`]
    /// per family, and the range clear of the ports the host takes for
    /// its own connections.
    pub fn new(
        netlink: &mut Netlink,
        sources: &[IpAddr],
        ports: NatPorts,
    ) -> Result<Self, NatError> {
        let local = netlink.addresses().map_err(|source| NatError::Read {
            what: "listing this host's addresses",
            source,
        })?;
        let mut seen = Vec::new();
        for &source in sources {
            if crate::service::unicast_problem(source).is_some() {
                return Err(NatError::NotUnicast(source));
            }
            if !local.contains(&source) {
                return Err(NatError::NotLocal(source));
            }
            if seen.contains(&source) {
                return Err(NatError::Twice(source));
            }
            seen.push(source);
        }
        let per_family = |v6: bool| sources.iter().filter(|s| s.is_ipv6() == v6).count();
        if per_family(false).max(per_family(true)) > NAT_SOURCES_PER_FAMILY as usize {
            return Err(NatError::TooMany);
        }
        let (local_low, local_high) = local_port_range()?;
        if ports.overlaps(local_low, local_high) {
            return Err(NatError::Overlap {
                low: ports.low,
                high: ports.high,
                local_low,
                local_high,
            });
        }
        Ok(Self {
            sources: sources.to_vec(),
            ports,
        })
    }

    /// Refuses a desired state these settings can't serve: a `fullnat`
    /// VIP of a family without a NAT source (its connections would all be
    /// dropped), or a VIP on a NAT source's address (its replies and the
    /// VIP's packets could not be told apart).
    pub fn serves(&self, desired: &Desired) -> Result<(), NatError> {
        for (vip, state) in desired.vips() {
            if state.options.forward == Forward::Fullnat && !self.has_family_of(vip.addr) {
                return Err(NatError::NoSourceFor(*vip));
            }
            if self.sources.contains(&vip.addr) {
                return Err(NatError::SourceIsVip(*vip));
            }
        }
        Ok(())
    }

    /// Whether there is a NAT source of `addr`'s family.
    pub fn has_family_of(&self, addr: IpAddr) -> bool {
        self.sources.iter().any(|s| s.is_ipv6() == addr.is_ipv6())
    }
}

/// The host's ephemeral port range in lb's network namespace.
fn local_port_range() -> Result<(u16, u16), NatError> {
    let text = std::fs::read_to_string(LOCAL_PORT_RANGE).map_err(|source| NatError::Read {
        what: "reading net.ipv4.ip_local_port_range",
        source,
    })?;
    parse_port_range(&text).ok_or_else(|| NatError::Read {
        what: "reading net.ipv4.ip_local_port_range",
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{text:?}")),
    })
}

/// `ip_local_port_range`'s two numbers.
fn parse_port_range(text: &str) -> Option<(u16, u16)> {
    let mut numbers = text.split_whitespace().map(str::parse::<u16>);
    Some((numbers.next()?.ok()?, numbers.next()?.ok()?))
}

/// Whether IP forwarding is on for `iface` in `addr`'s family: NAT's
/// reverse path routes replies with `bpf_fib_lookup`, which refuses to
/// while it is off. The sysctl to set when it isn't.
pub fn forwarding_off(iface: &str, addr: IpAddr) -> Option<String> {
    let family = if addr.is_ipv6() { "ipv6" } else { "ipv4" };
    let name = format!("net.{family}.conf.{iface}.forwarding");
    let path = format!("/proc/sys/{}", name.replace('.', "/"));
    let on = std::fs::read_to_string(path).is_ok_and(|v| v.trim() != "0");
    (!on).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernels_range_reads_with_any_whitespace() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(parse_port_range("junk"), None);
    }
}
