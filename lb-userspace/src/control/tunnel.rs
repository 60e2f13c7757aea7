//! What L3 forwarding needs from the balancer's side: the outer source
//! address of each family and the largest packet the way out carries.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::kernel::netlink::Netlink;

/// Why the tunnel settings could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// Two `--tunnel-source` of one family.
    #[error("--tunnel-source {first} and {second} are both IPv{family}: give one per family")]
    TwoOfAFamily {
        /// The first one.
        first: IpAddr,
        /// The second one.
        second: IpAddr,
        /// 4 or 6.
        family: u8,
    },
    /// A source that is no single host.
    #[error("--tunnel-source {0} is not a unicast address")]
    NotUnicast(IpAddr),
    /// The interface could not be asked.
    #[error("reading the addresses and MTU of {iface}: {source}")]
    Netlink {
        /// The interface.
        iface: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// `--tunnel-mtu` larger than the interface's.
    #[error("--tunnel-mtu {asked} is larger than {iface}'s MTU {mtu}: packets that size could not leave")]
    MtuTooLarge {
        /// What was asked.
        asked: u16,
        /// The interface.
        iface: String,
        /// Its MTU.
        mtu: u32,
    },
}

/// Outer source addresses of encapsulated packets, by family, and the
/// largest IP packet the tunnels carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tunnels {
    /// IPv4 source, for IPv4 workers.
    pub v4: Option<Ipv4Addr>,
    /// IPv6 source, for IPv6 workers.
    pub v6: Option<Ipv6Addr>,
    /// The interface's MTU, or the smaller `--tunnel-mtu`.
    pub mtu: u16,
}

impl Tunnels {
    /// The settings for interface `ifindex` (called `iface`): the
    /// `--tunnel-source` given for a family, else the interface's primary
    /// address of that family (none when it has none).
    pub fn new(
        netlink: &mut Netlink,
        iface: &str,
        ifindex: u32,
        sources: &[IpAddr],
        mtu: Option<u16>,
    ) -> Result<Self, TunnelError> {
        let failed = |source| TunnelError::Netlink {
            iface: iface.to_owned(),
            source,
        };
        let own = netlink.interface_addresses(ifindex).map_err(failed)?;
        let link_mtu = netlink.mtu(ifindex).map_err(failed)?;
        let mtu = match mtu {
            Some(asked) if u32::from(asked) > link_mtu => {
                return Err(TunnelError::MtuTooLarge {
                    asked,
                    iface: iface.to_owned(),
                    mtu: link_mtu,
                })
            }
            Some(asked) => asked,
            None => u16::try_from(link_mtu).unwrap_or(u16::MAX),
        };
        let v4 = one_of(sources, own.iter().copied(), |a| match a {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        })?;
        let v6 = one_of(sources, own.iter().copied(), |a| match a {
            IpAddr::V6(v6) => Some(v6),
            IpAddr::V4(_) => None,
        })?;
        Ok(Self { v4, v6, mtu })
    }

    /// The outer source for a worker at `worker`, if its family has one.
    pub fn source_for(&self, worker: IpAddr) -> Option<IpAddr> {
        match worker {
            IpAddr::V4(_) => self.v4.map(IpAddr::V4),
            IpAddr::V6(_) => self.v6.map(IpAddr::V6),
        }
    }
}

/// The one given address of a family (`pick` keeps that family), else the
/// first of the interface's.
fn one_of<T: Copy + Into<IpAddr>>(
    given: &[IpAddr],
    own: impl Iterator<Item = IpAddr>,
    pick: impl Fn(IpAddr) -> Option<T>,
) -> Result<Option<T>, TunnelError> {
    let mut chosen: Option<T> = None;
    for &addr in given {
        let Some(this) = pick(addr) else { continue };
        if crate::service::unicast_problem(addr).is_some() {
            return Err(TunnelError::NotUnicast(addr));
        }
        if let Some(first) = chosen {
            return Err(TunnelError::TwoOfAFamily {
                first: first.into(),
                second: addr,
                family: if addr.is_ipv4() { 4 } else { 6 },
            });
        }
        chosen = Some(this);
    }
    Ok(chosen.or_else(|| own.filter_map(&pick).next()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_source_wins_and_one_per_family_is_allowed() {
        let own = || {
            ["192.0.2.2", "2001:db8::2"]
                .iter()
                .map(|a| a.parse::<IpAddr>().unwrap())
        };
        let v4 = |a: IpAddr| match a {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        };
        let given: Vec<IpAddr> = vec!["198.51.100.9".parse().unwrap()];
        assert_eq!(
            one_of(&given, own(), v4).unwrap(),
            Some("198.51.100.9".parse().unwrap())
        );
        assert_eq!(
            one_of(&[], own(), v4).unwrap(),
            Some("192.0.2.2".parse().unwrap())
        );
        let two: Vec<IpAddr> = vec![
            "198.51.100.9".parse().unwrap(),
            "198.51.100.10".parse().unwrap(),
        ];
        assert!(matches!(
            one_of(&two, own(), v4),
            Err(TunnelError::TwoOfAFamily { family: 4, .. })
        ));
        let multicast: Vec<IpAddr> = vec!["224.0.0.1".parse().unwrap()];
        assert!(matches!(
            one_of(&multicast, own(), v4),
            Err(TunnelError::NotUnicast(_))
        ));
    }
}
