//! The tunnel half of an IPIP or GUE VIP's health check: an ICMP echo
//! request to the VIP's address, inside the same encapsulation the data
//! plane puts around client packets, sent to the worker. Only a worker that
//! takes the tunnel apart (`lb decap`, or a kernel tunnel on the right
//! port) and holds the VIP answers; the echo reply comes back unwrapped,
//! the way the worker's answers to clients go. A check straight to the
//! worker's address can't see any of that.
//!
//! One raw ICMP socket per family receives every echo reply for the whole
//! controller, and hands each to the probe that waits for its sequence
//! number, so that a thousand workers cost one socket and not a thousand
//! copies of every ICMP packet.

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, SocketAddr},
    os::fd::OwnedFd,
    sync::{
        atomic::{AtomicU16, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use lb_common::encap::{IPPROTO_IPIP, IPPROTO_IPV6};
use rustix::net::{ipproto, AddressFamily, SocketFlags, SocketType};
use tokio::{net::UdpSocket, sync::oneshot, sync::OnceCell};

const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;
/// What the echo requests carry, so that a capture shows whose they are.
const PAYLOAD: &[u8] = b"lb tunnel check";

/// How a VIP's packets reach its workers, as far as a probe must copy it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Encapsulation {
    /// IPIP, IP6IP6, or one family inside the other.
    Ipip,
    /// The inner packet as the payload of UDP to this port.
    Gue(u16),
}

impl std::fmt::Display for Encapsulation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ipip => f.write_str("IPIP"),
            Self::Gue(port) => write!(f, "GUE (port {port})"),
        }
    }
}

/// What a worker's tunnel probe needs.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Tunnel {
    /// The encapsulation.
    pub encapsulation: Encapsulation,
    /// The VIP's address: the inner packet goes to it, as clients' do.
    pub vip: IpAddr,
    /// The balancer's own address of the VIP's family, where the worker
    /// sends the reply; `None` when the balancer has none.
    pub source: Option<IpAddr>,
}

/// Echo probes through tunnels, sharing one receiving socket per family.
#[derive(Default)]
pub struct Prober {
    next: AtomicU16,
    waiting: Arc<Mutex<HashMap<(bool, u16), Waiter>>>,
    v4: OnceCell<()>,
    v6: OnceCell<()>,
}

/// A probe waiting for its reply: the address it must come from.
struct Waiter {
    from: IpAddr,
    done: oneshot::Sender<()>,
}

impl Prober {
    /// Sends one echo request through `tunnel` to `worker` and waits up to
    /// `timeout` for its reply; the error says what failed, for `lb backend
    /// list`.
    pub async fn probe(
        &self,
        worker: IpAddr,
        tunnel: &Tunnel,
        timeout: Duration,
    ) -> Result<(), String> {
        let Some(source) = tunnel.source else {
            return Err(format!(
                "no {} address on the balancer to check the {} tunnel from",
                family(tunnel.vip),
                tunnel.encapsulation
            ));
        };
        let v6 = tunnel.vip.is_ipv6();
        self.listening(v6)
            .await
            .map_err(|e| format!("can't receive tunnel check replies: {}", raw_error(&e)))?;
        let sequence = self.next.fetch_add(1, Ordering::Relaxed);
        let (done, answered) = oneshot::channel();
        let key = (v6, sequence);
        let waiter = Waiter {
            from: tunnel.vip,
            done,
        };
        lock(&self.waiting).insert(key, waiter);
        let packet = echo_request(source, tunnel.vip, identifier(), sequence);
        let outcome = match send(worker, tunnel.encapsulation, &packet).await {
            Err(error) => Err(format!(
                "sending through the {} tunnel: {}",
                tunnel.encapsulation,
                raw_error(&error)
            )),
            Ok(()) => match tokio::time::timeout(timeout, answered).await {
                Ok(Ok(())) => Ok(()),
                _ => Err(format!(
                    "no answer through the {} tunnel: is `lb decap attach` running on the worker{}, and {} on its lo?",
                    tunnel.encapsulation,
                    match tunnel.encapsulation {
                        Encapsulation::Gue(port) => format!(" with --gue-port {port}"),
                        Encapsulation::Ipip => String::new(),
                    },
                    tunnel.vip
                )),
            },
        };
        lock(&self.waiting).remove(&key);
        outcome
    }

    /// Starts the family's receiving task once.
    async fn listening(&self, v6: bool) -> io::Result<()> {
        let cell = if v6 { &self.v6 } else { &self.v4 };
        cell.get_or_try_init(|| async {
            let socket = datagram_socket(raw_socket(v6, ipproto_icmp(v6))?)?;
            tokio::spawn(receive(socket, v6, self.waiting.clone()));
            Ok(())
        })
        .await
        .map(drop)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// This process's echo identifier.
fn identifier() -> u16 {
    std::process::id() as u16
}

fn family(addr: IpAddr) -> &'static str {
    crate::service::family_word(addr)
}

fn ipproto_icmp(v6: bool) -> rustix::net::Protocol {
    if v6 {
        ipproto::ICMPV6
    } else {
        ipproto::ICMP
    }
}

/// A raw error in an operator's words: the likely cause of EPERM is a
/// missing capability.
fn raw_error(error: &io::Error) -> String {
    match error.raw_os_error() {
        Some(libc::EPERM) => format!("{error} (tunnel checks need CAP_NET_RAW)"),
        _ => error.to_string(),
    }
}

fn raw_socket(v6: bool, protocol: rustix::net::Protocol) -> io::Result<OwnedFd> {
    let family = if v6 {
        AddressFamily::INET6
    } else {
        AddressFamily::INET
    };
    Ok(rustix::net::socket_with(
        family,
        SocketType::RAW,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        Some(protocol),
    )?)
}

/// A raw socket driven by tokio through its datagram interface, which is
/// all a raw socket needs: `send_to` and `recv_from` of whole packets.
fn datagram_socket(fd: OwnedFd) -> io::Result<UdpSocket> {
    UdpSocket::from_std(std::net::UdpSocket::from(fd))
}

/// Hands each echo reply to the probe waiting for it, for as long as the
/// controller runs.
async fn receive(socket: UdpSocket, v6: bool, waiting: Arc<Mutex<HashMap<(bool, u16), Waiter>>>) {
    let mut buf = [0u8; 1500];
    loop {
        let (len, from) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(error) => {
                tracing::warn!("receiving tunnel check replies: {error}");
                // Time must pass: a socket that keeps failing would spin.
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let Some(sequence) = echo_reply(&buf[..len], v6) else {
            continue;
        };
        let mut waiting = lock(&waiting);
        let ours = waiting
            .get(&(v6, sequence))
            .is_some_and(|w| w.from == from.ip());
        if let Some(waiter) = ours.then(|| waiting.remove(&(v6, sequence))).flatten() {
            let _ = waiter.done.send(());
        }
    }
}

/// The sequence number of an echo reply of ours: IPv4 raw sockets deliver
/// the IP header, IPv6 ones only the ICMPv6 message.
fn echo_reply(packet: &[u8], v6: bool) -> Option<u16> {
    let (icmp, reply) = if v6 {
        (packet, ICMPV6_ECHO_REPLY)
    } else {
        let header = usize::from(packet.first()? & 0x0f) * 4;
        (packet.get(header..)?, ICMP_ECHO_REPLY)
    };
    let head = icmp.get(..8)?;
    let id = u16::from_be_bytes([head[4], head[5]]);
    (head[0] == reply && head[1] == 0 && id == identifier())
        .then(|| u16::from_be_bytes([head[6], head[7]]))
}

/// Sends `inner` to `worker` wrapped the way the data plane wraps client
/// packets; the kernel writes the outer header.
async fn send(worker: IpAddr, encapsulation: Encapsulation, inner: &[u8]) -> io::Result<()> {
    match encapsulation {
        Encapsulation::Gue(port) => {
            let local: SocketAddr = match worker {
                IpAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
                IpAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
            };
            let socket = tokio::net::UdpSocket::bind(local).await?;
            socket.send_to(inner, (worker, port)).await.map(drop)
        }
        Encapsulation::Ipip => {
            let inner_v6 = inner.first().is_some_and(|b| b >> 4 == 6);
            let protocol = if inner_v6 { IPPROTO_IPV6 } else { IPPROTO_IPIP };
            let socket = raw_socket(
                worker.is_ipv6(),
                rustix::net::Protocol::from_raw(
                    std::num::NonZeroU32::new(u32::from(protocol)).expect("not zero"),
                ),
            )?;
            // A raw socket's port must be 0 (for IPv6, 0 or its protocol).
            let to = SocketAddr::new(worker, 0);
            datagram_socket(socket)?.send_to(inner, to).await.map(drop)
        }
    }
}

/// A whole IP packet: an echo request from `source` to `vip`.
fn echo_request(source: IpAddr, vip: IpAddr, id: u16, sequence: u16) -> Vec<u8> {
    let mut icmp = Vec::with_capacity(8 + PAYLOAD.len());
    let kind = if vip.is_ipv6() {
        ICMPV6_ECHO_REQUEST
    } else {
        ICMP_ECHO_REQUEST
    };
    icmp.extend_from_slice(&[kind, 0, 0, 0]);
    icmp.extend_from_slice(&id.to_be_bytes());
    icmp.extend_from_slice(&sequence.to_be_bytes());
    icmp.extend_from_slice(PAYLOAD);
    let len = icmp.len() as u16;
    match (source, vip) {
        (IpAddr::V4(source), IpAddr::V4(vip)) => {
            let sum = checksum(&[&icmp]);
            icmp[2..4].copy_from_slice(&sum.to_be_bytes());
            let mut ip = vec![0x45, 0];
            ip.extend_from_slice(&(20 + len).to_be_bytes());
            ip.extend_from_slice(&[0, 0, 0x40, 0, 64, IPPROTO_ICMP, 0, 0]);
            ip.extend_from_slice(&source.octets());
            ip.extend_from_slice(&vip.octets());
            let sum = checksum(&[&ip]);
            ip[10..12].copy_from_slice(&sum.to_be_bytes());
            ip.extend_from_slice(&icmp);
            ip
        }
        (IpAddr::V6(source), IpAddr::V6(vip)) => {
            let pseudo_len = u32::from(len).to_be_bytes();
            let pseudo_next = [0, 0, 0, IPPROTO_ICMPV6];
            let sum = checksum(&[
                &source.octets(),
                &vip.octets(),
                &pseudo_len,
                &pseudo_next,
                &icmp,
            ]);
            icmp[2..4].copy_from_slice(&sum.to_be_bytes());
            let mut ip = vec![0x60, 0, 0, 0];
            ip.extend_from_slice(&len.to_be_bytes());
            ip.extend_from_slice(&[IPPROTO_ICMPV6, 64]);
            ip.extend_from_slice(&source.octets());
            ip.extend_from_slice(&vip.octets());
            ip.extend_from_slice(&icmp);
            ip
        }
        _ => unreachable!("the source is chosen by the VIP's family"),
    }
}

/// The Internet checksum of the concatenated `parts` (each of even length
/// but the last).
fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for part in parts {
        let mut words = part.chunks_exact(2);
        for word in &mut words {
            sum += u32::from(u16::from_be_bytes([word[0], word[1]]));
        }
        if let [last] = words.remainder() {
            sum += u32::from(*last) << 8;
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_requests_carry_valid_checksums() {
        let v4 = echo_request(
            "192.0.2.2".parse().unwrap(),
            "192.0.2.100".parse().unwrap(),
            7,
            9,
        );
        assert_eq!(checksum(&[&v4[..20]]), 0, "the IPv4 header sums to zero");
        assert_eq!(checksum(&[&v4[20..]]), 0, "so does the ICMP message");
        assert_eq!(usize::from(u16::from_be_bytes([v4[2], v4[3]])), v4.len());
        let (source, vip): (std::net::Ipv6Addr, std::net::Ipv6Addr) = (
            "2001:db8::2".parse().unwrap(),
            "2001:db8::100".parse().unwrap(),
        );
        let v6 = echo_request(source.into(), vip.into(), 7, 9);
        let icmp = &v6[40..];
        let len = (icmp.len() as u32).to_be_bytes();
        let sum = checksum(&[
            &source.octets(),
            &vip.octets(),
            &len,
            &[0, 0, 0, IPPROTO_ICMPV6],
            icmp,
        ]);
        assert_eq!(sum, 0, "the ICMPv6 checksum covers the pseudo-header");
    }

    #[test]
    fn only_our_echo_replies_are_taken() {
        let mut reply = vec![0x45; 20];
        reply.extend_from_slice(&[ICMP_ECHO_REPLY, 0, 0, 0]);
        reply.extend_from_slice(&identifier().to_be_bytes());
        reply.extend_from_slice(&42u16.to_be_bytes());
        assert_eq!(echo_reply(&reply, false), Some(42));
        let mut other = reply.clone();
        other[24..26].copy_from_slice(&identifier().wrapping_add(1).to_be_bytes());
        assert_eq!(echo_reply(&other, false), None, "another process's ping");
        let mut request = reply.clone();
        request[20] = ICMP_ECHO_REQUEST;
        assert_eq!(echo_reply(&request, false), None);
        assert_eq!(echo_reply(&reply[20..], true), None, "not ICMPv6");
        assert_eq!(echo_reply(&reply[..22], false), None, "cut short");
    }
}
