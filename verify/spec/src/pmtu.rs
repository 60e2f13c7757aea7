//! "Too big" answers: a packet an IPIP or GUE worker's tunnel can't carry
//! (its length plus the tunnel's headers over the worker's MTU) is not
//! sent; the client is told the size that fits, from the VIP, so that its
//! Path MTU discovery works through the tunnel. Answers are rationed per
//! CPU by a token bucket.

use lb_common::balancer::{Backend, FlowKey, IcmpBudget, FAMILY_V6, ICMP_BURST, ICMP_TOKEN_NS};

use crate::{
    balance::drop,
    checksum,
    headers::ETH_LEN,
    state::{Effect, Maps, Verdict},
    tunnel,
};

/// IPv6's smallest MTU: never advertise less.
const IPV6_MIN_MTU: u16 = 1280;
/// What an answer quotes of the client's packet: its IP header (without
/// options) and eight bytes more, the ports.
const QUOTE_V4: usize = 20 + 8;
const QUOTE_V6: usize = 40 + 8;
/// ICMP's "destination unreachable", code "fragmentation needed".
const UNREACHABLE: [u8; 2] = [3, 4];
/// ICMPv6's "packet too big".
const TOO_BIG_V6: u8 = 2;
const ANSWER_TTL: u8 = 64;
const PROTO_ICMP: u8 = 1;
const PROTO_ICMPV6: u8 = 58;

/// Whether `frame` is too big for `backend`'s tunnel.
pub fn too_big(frame: &[u8], backend: &Backend) -> bool {
    frame.len() - ETH_LEN + tunnel::overhead(backend) > usize::from(backend.mtu)
}

/// The answer to `frame` of flow `key`, too big for `backend`'s tunnel: an
/// IPv4 packet is answered only when it says "don't fragment" and has no
/// options; any answer only while this CPU has a token. Otherwise dropped.
pub fn answer(maps: &mut Maps, frame: &[u8], key: &FlowKey, backend: &Backend, now: u64) -> Effect {
    let v6 = key.family == FAMILY_V6;
    let ip = &frame[ETH_LEN..];
    let answerable = v6 || (ip[0] == 0x45 && ip[6] & 0x40 != 0);
    let quote = if v6 { QUOTE_V6 } else { QUOTE_V4 };
    // A token is spent on every answer tried, even one the frame is too
    // short to quote.
    if !answerable || !take_token(&mut maps.icmp_budget, now) || ip.len() < quote {
        maps.counters.too_big_dropped += 1;
        return drop(frame);
    }
    maps.counters.too_big_answered += 1;
    let fits = backend.mtu.saturating_sub(tunnel::overhead(backend) as u16);
    let mut out = Vec::new();
    out.extend_from_slice(&frame[6..12]);
    out.extend_from_slice(&frame[0..6]);
    if v6 {
        out.extend_from_slice(&[0x86, 0xdd]);
        out.extend_from_slice(&too_big_v6(&ip[..QUOTE_V6], fits.max(IPV6_MIN_MTU)));
    } else {
        out.extend_from_slice(&[0x08, 0x00]);
        out.extend_from_slice(&fragmentation_needed(&ip[..QUOTE_V4], fits));
    }
    Effect {
        verdict: Verdict::Tx,
        frame: out,
    }
}

/// Takes one answer from `budget`, first adding one token for each
/// `ICMP_TOKEN_NS` since its last refill, up to `ICMP_BURST`.
fn take_token(budget: &mut IcmpBudget, now: u64) -> bool {
    let earned = now.wrapping_sub(budget.refilled_ns) / ICMP_TOKEN_NS;
    if earned > 0 {
        budget.tokens = budget.tokens.saturating_add(earned).min(ICMP_BURST);
        budget.refilled_ns = now;
    }
    let Some(left) = budget.tokens.checked_sub(1) else {
        return false;
    };
    budget.tokens = left;
    true
}

/// IPv4 and ICMP "fragmentation needed" to the client of `quote` (its
/// first 28 bytes), from the VIP it was sent to, advertising `mtu`.
fn fragmentation_needed(quote: &[u8], mtu: u16) -> Vec<u8> {
    let mut icmp = vec![UNREACHABLE[0], UNREACHABLE[1], 0, 0, 0, 0];
    icmp.extend_from_slice(&mtu.to_be_bytes());
    icmp.extend_from_slice(quote);
    let check = checksum::checksum(&icmp);
    icmp[2..4].copy_from_slice(&check.to_be_bytes());
    let mut header = [0u8; 20];
    header[0] = 0x45;
    header[2..4].copy_from_slice(&((20 + icmp.len()) as u16).to_be_bytes());
    header[6] = 0x40;
    header[8] = ANSWER_TTL;
    header[9] = PROTO_ICMP;
    header[12..16].copy_from_slice(&quote[16..20]);
    header[16..20].copy_from_slice(&quote[12..16]);
    let check = checksum::checksum(&header);
    header[10..12].copy_from_slice(&check.to_be_bytes());
    [header.as_slice(), &icmp].concat()
}

/// IPv6 and ICMPv6 "packet too big" to the client of `quote` (its first
/// 48 bytes), from the VIP it was sent to, advertising `mtu`.
fn too_big_v6(quote: &[u8], mtu: u16) -> Vec<u8> {
    let (client, vip) = (&quote[8..24], &quote[24..40]);
    let mut icmp = vec![TOO_BIG_V6, 0, 0, 0];
    icmp.extend_from_slice(&u32::from(mtu).to_be_bytes());
    icmp.extend_from_slice(quote);
    let length = icmp.len() as u32;
    let mut pseudo = [vip, client].concat();
    pseudo.extend_from_slice(&length.to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, PROTO_ICMPV6]);
    let check = checksum::checksum(&[pseudo, icmp.clone()].concat());
    icmp[2..4].copy_from_slice(&check.to_be_bytes());
    let mut header = vec![0x60, 0, 0, 0];
    header.extend_from_slice(&(length as u16).to_be_bytes());
    header.extend_from_slice(&[PROTO_ICMPV6, ANSWER_TTL]);
    header.extend_from_slice(vip);
    header.extend_from_slice(client);
    [header, icmp].concat()
}
