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
    os::fd::{AsRawFd as _, OwnedFd, RawFd},
    sync::{
        atomic::{AtomicU16, AtomicU64, Ordering},
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
/// What the echo requests carry before their token, so that a capture
/// shows whose they are.
const PAYLOAD: &[u8] = b"lb tunnel check ";
/// Bytes of the random token after it, which a reply must echo: a reply
/// forged from the VIP can't make a worker that can't decapsulate look
/// healthy without seeing the request.
const TOKEN_LEN: usize = 8;
/// What the receiving socket may hold while its task is busy: bursts of
/// other echo replies for the host must not push ours out.
const RECEIVE_BUFFER: libc::c_int = 1 << 20;

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
    /// sends the reply; `None` when the balancer has none, and then the
    /// tunnel goes unchecked (a VIP whose workers are reached over the
    /// other family may well have none).
    pub source: Option<IpAddr>,
}

/// Echo probes through tunnels, sharing one receiving socket per family.
pub struct Prober {
    /// This prober's echo identifier, random so that it is hard to guess.
    id: u16,
    next: AtomicU16,
    /// Tells apart two probes that came to hold one sequence number.
    probes: AtomicU64,
    waiting: Waiting,
    v4: OnceCell<()>,
    v6: OnceCell<()>,
}

impl Default for Prober {
    fn default() -> Self {
        let random = random_u64();
        Self {
            id: random as u16,
            next: AtomicU16::new((random >> 16) as u16),
            probes: AtomicU64::new(0),
            waiting: Waiting::default(),
            v4: OnceCell::new(),
            v6: OnceCell::new(),
        }
    }
}

/// The probes waiting for a reply, by family and sequence number.
type Waiting = Arc<Mutex<HashMap<(bool, u16), Waiter>>>;

/// A probe waiting for its reply: the address it must come from and the
/// token it must carry.
struct Waiter {
    probe: u64,
    from: IpAddr,
    token: [u8; TOKEN_LEN],
    done: oneshot::Sender<()>,
}

/// Takes a probe's entry out of the waiting map however the probe ends,
/// also when its task is aborted mid-probe; only its own entry, should the
/// sequence number have come round to a newer probe.
struct Entry<'a> {
    waiting: &'a Waiting,
    key: (bool, u16),
    probe: u64,
}

impl Drop for Entry<'_> {
    fn drop(&mut self) {
        let mut waiting = lock(self.waiting);
        if waiting
            .get(&self.key)
            .is_some_and(|w| w.probe == self.probe)
        {
            waiting.remove(&self.key);
        }
    }
}

/// Random bits from std's hasher seeds (as `checks::dns` draws its ids).
fn random_u64() -> u64 {
    use std::hash::BuildHasher as _;
    std::collections::hash_map::RandomState::new().hash_one(std::time::SystemTime::now())
}

impl Prober {
    /// Sends one echo request from `source` through `tunnel` to `worker`
    /// and waits up to `timeout` for its reply; the error says what
    /// failed, for `lb backend list`.
    pub async fn probe(
        &self,
        worker: IpAddr,
        tunnel: &Tunnel,
        source: IpAddr,
        timeout: Duration,
    ) -> Result<(), String> {
        let v6 = tunnel.vip.is_ipv6();
        self.listening(v6)
            .await
            .map_err(|e| format!("can't receive tunnel check replies: {}", raw_error(&e)))?;
        let sequence = self.next.fetch_add(1, Ordering::Relaxed);
        let probe = self.probes.fetch_add(1, Ordering::Relaxed);
        let token = random_u64().to_be_bytes();
        let (done, answered) = oneshot::channel();
        let key = (v6, sequence);
        let waiter = Waiter {
            probe,
            from: tunnel.vip,
            token,
            done,
        };
        lock(&self.waiting).insert(key, waiter);
        let _entry = Entry {
            waiting: &self.waiting,
            key,
            probe,
        };
        let packet = echo_request(source, tunnel.vip, self.id, sequence, &token);
        match send(worker, tunnel.encapsulation, &packet).await {
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
        }
    }

    /// Starts the family's receiving task once.
    async fn listening(&self, v6: bool) -> io::Result<()> {
        let cell = if v6 { &self.v6 } else { &self.v4 };
        cell.get_or_try_init(|| async {
            let socket = raw_socket(v6, ipproto_icmp(v6))?;
            only_echo_replies(&socket, v6)?;
            let socket = datagram_socket(socket)?;
            tokio::spawn(receive(socket, v6, self.id, self.waiting.clone()));
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

/// Has the kernel give the receiving socket echo replies only (the raw
/// socket of a protocol gets a copy of every packet of it: floods of
/// other ICMP, neighbour discovery) and room for a burst of them.
fn only_echo_replies(socket: &OwnedFd, v6: bool) -> io::Result<()> {
    let fd = socket.as_raw_fd();
    if v6 {
        // ICMP6_FILTER: a set bit blocks that type.
        let mut blocked = [u32::MAX; 8];
        let reply = usize::from(ICMPV6_ECHO_REPLY);
        blocked[reply / 32] &= !(1 << (reply % 32));
        set_option(fd, libc::IPPROTO_ICMPV6, ICMP6_FILTER, &blocked)?;
    } else {
        // ICMP_FILTER: a set bit blocks that type.
        let blocked: u32 = !(1 << ICMP_ECHO_REPLY);
        set_option(fd, libc::SOL_RAW, ICMP_FILTER, &blocked)?;
    }
    set_option(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, &RECEIVE_BUFFER)
}

/// Linux's ICMP_FILTER (linux/icmp.h) and ICMP6_FILTER (linux/icmpv6.h).
const ICMP_FILTER: libc::c_int = 1;
const ICMP6_FILTER: libc::c_int = 1;

fn set_option<T>(fd: RawFd, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: the descriptor is open while the caller holds it, and the
    // value is a plain value of the option's type, passed with its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            std::ptr::from_ref(value).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A raw socket driven by tokio through its datagram interface, which is
/// all a raw socket needs: `send_to` and `recv_from` of whole packets.
fn datagram_socket(fd: OwnedFd) -> io::Result<UdpSocket> {
    UdpSocket::from_std(std::net::UdpSocket::from(fd))
}

/// Hands each echo reply to the probe waiting for it, for as long as the
/// controller runs.
async fn receive(socket: UdpSocket, v6: bool, id: u16, waiting: Waiting) {
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
        let Some((sequence, token)) = echo_reply(&buf[..len], v6, id) else {
            continue;
        };
        let mut waiting = lock(&waiting);
        let ours = waiting
            .get(&(v6, sequence))
            .is_some_and(|w| w.from == from.ip() && w.token[..] == *token);
        if let Some(waiter) = ours.then(|| waiting.remove(&(v6, sequence))).flatten() {
            let _ = waiter.done.send(());
        }
    }
}

/// The sequence number and token of an echo reply to identifier `id`:
/// IPv4 raw sockets deliver the IP header, IPv6 ones only the ICMPv6
/// message.
fn echo_reply(packet: &[u8], v6: bool, id: u16) -> Option<(u16, &[u8])> {
    let (icmp, reply) = if v6 {
        (packet, ICMPV6_ECHO_REPLY)
    } else {
        let header = usize::from(packet.first()? & 0x0f) * 4;
        (packet.get(header..)?, ICMP_ECHO_REPLY)
    };
    let head = icmp.get(..8)?;
    let token = icmp.get(8..)?.strip_prefix(PAYLOAD)?.get(..TOKEN_LEN)?;
    let ours = head[0] == reply && head[1] == 0 && u16::from_be_bytes([head[4], head[5]]) == id;
    ours.then(|| (u16::from_be_bytes([head[6], head[7]]), token))
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

/// A whole IP packet: an echo request from `source` to `vip`, carrying
/// `token`.
fn echo_request(
    source: IpAddr,
    vip: IpAddr,
    id: u16,
    sequence: u16,
    token: &[u8; TOKEN_LEN],
) -> Vec<u8> {
    let mut icmp = Vec::with_capacity(8 + PAYLOAD.len() + TOKEN_LEN);
    let kind = if vip.is_ipv6() {
        ICMPV6_ECHO_REQUEST
    } else {
        ICMP_ECHO_REQUEST
    };
    icmp.extend_from_slice(&[kind, 0, 0, 0]);
    icmp.extend_from_slice(&id.to_be_bytes());
    icmp.extend_from_slice(&sequence.to_be_bytes());
    icmp.extend_from_slice(PAYLOAD);
    icmp.extend_from_slice(token);
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
        let token = [1, 2, 3, 4, 5, 6, 7, 8];
        let v4 = echo_request(
            "192.0.2.2".parse().unwrap(),
            "192.0.2.100".parse().unwrap(),
            7,
            9,
            &token,
        );
        assert_eq!(checksum(&[&v4[..20]]), 0, "the IPv4 header sums to zero");
        assert_eq!(checksum(&[&v4[20..]]), 0, "so does the ICMP message");
        assert_eq!(usize::from(u16::from_be_bytes([v4[2], v4[3]])), v4.len());
        let (source, vip): (std::net::Ipv6Addr, std::net::Ipv6Addr) = (
            "2001:db8::2".parse().unwrap(),
            "2001:db8::100".parse().unwrap(),
        );
        let v6 = echo_request(source.into(), vip.into(), 7, 9, &token);
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
    fn a_probe_takes_out_its_own_waiter_and_no_newer_one() {
        let waiting = Waiting::default();
        let key = (false, 7);
        let wait = |probe| {
            let (done, _) = oneshot::channel();
            let waiter = Waiter {
                probe,
                from: "192.0.2.100".parse().unwrap(),
                token: [0; TOKEN_LEN],
                done,
            };
            lock(&waiting).insert(key, waiter);
        };
        wait(1);
        drop(Entry {
            waiting: &waiting,
            key,
            probe: 1,
        });
        assert!(lock(&waiting).is_empty(), "an ended (or aborted) probe's");
        wait(2);
        drop(Entry {
            waiting: &waiting,
            key,
            probe: 1,
        });
        assert!(
            lock(&waiting).contains_key(&key),
            "a newer probe on the same sequence number keeps its waiter"
        );
    }

    #[test]
    fn only_our_echo_replies_are_taken() {
        let (id, token): (u16, _) = (0x1234, [9; TOKEN_LEN]);
        let mut reply = vec![0x45; 20];
        reply.extend_from_slice(&[ICMP_ECHO_REPLY, 0, 0, 0]);
        reply.extend_from_slice(&id.to_be_bytes());
        reply.extend_from_slice(&42u16.to_be_bytes());
        reply.extend_from_slice(PAYLOAD);
        reply.extend_from_slice(&token);
        assert_eq!(echo_reply(&reply, false, id), Some((42, &token[..])));
        assert_eq!(echo_reply(&reply, false, id + 1), None, "another prober's");
        let mut request = reply.clone();
        request[20] = ICMP_ECHO_REQUEST;
        assert_eq!(echo_reply(&request, false, id), None);
        assert_eq!(echo_reply(&reply[20..], true, id), None, "not ICMPv6");
        assert_eq!(echo_reply(&reply[..40], false, id), None, "cut short");
        let mut other = reply.clone();
        other[28] = b'X';
        assert_eq!(
            echo_reply(&other, false, id),
            None,
            "someone else's payload"
        );
    }
}
