//! Where captured packets go: pcapng (with lb's metadata in each packet's
//! comment, and the loss in an interface statistics block), or one
//! tcpdump-like line per packet.

use std::{
    borrow::Cow,
    collections::HashMap,
    fs,
    io::{self, BufWriter, Write},
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use lb_common::{
    balancer::{Backend, FAMILY_V4, FAMILY_V6, FORWARD_GUE, FORWARD_IPIP},
    capture::{
        reason, CaptureRecord, ACTION_DROP, ACTION_FORWARD, ACTION_PASS, MAX_SNAPLEN, NO_ID,
    },
    encap::{IPPROTO_IPIP, IPPROTO_IPV6, UDP_HLEN},
    packet::{
        self, IpPacket, IpVersion, Parsed, ETH_HLEN, ETH_P_IP, ETH_P_IPV6, IPPROTO_ICMP,
        IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP,
    },
};
use pcap_file::{
    pcapng::{
        blocks::{
            enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption},
            interface_description::{InterfaceDescriptionBlock, InterfaceDescriptionOption},
            interface_statistics::{InterfaceStatisticsBlock, InterfaceStatisticsOption},
        },
        PcapNgWriter,
    },
    DataLink,
};

use crate::{
    commands::stats,
    kernel::iface,
    service::{addr_from_bytes, Vip},
};

/// What the ids in records stand for: VIPs and workers of the instance.
#[derive(Debug, Default)]
pub struct Names {
    vips: HashMap<u32, Vip>,
    workers: HashMap<u32, Backend>,
    /// The interfaces the program is attached to, as its controller named
    /// them: index (unknown in an older lb's mark) and name.
    ifaces: Vec<(Option<u32>, String)>,
}

impl Names {
    /// Reads the VIPs and workers pinned under `pin_dir`.
    pub fn read(pin_dir: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            vips: stats::vip_ids(pin_dir)?
                .into_iter()
                .map(|(vip, id)| (id, vip))
                .collect(),
            workers: stats::backend_entries(pin_dir)?.into_iter().collect(),
            ifaces: crate::dataplane::pinned_ifaces(pin_dir),
        })
    }

    /// The id of `vip`, if the instance has it.
    pub fn vip_id(&self, vip: &Vip) -> Option<u32> {
        self.vips
            .iter()
            .find_map(|(id, known)| (known == vip).then_some(*id))
    }

    /// Whether `addr` is a worker (of VIP `vip_id`, when given).
    pub fn has_worker(&self, addr: IpAddr, vip_id: Option<u32>) -> bool {
        self.workers.values().any(|backend| {
            addr_from_bytes(backend.addr, backend.family) == Some(addr)
                && vip_id.is_none_or(|id| backend.vip_id == id)
        })
    }

    fn vip(&self, id: u32) -> Option<&Vip> {
        self.vips.get(&id)
    }

    /// Whether a record names a VIP or worker this doesn't know (one
    /// added since the capture started).
    fn lacks(&self, record: &CaptureRecord) -> bool {
        (record.vip_id != NO_ID && !self.vips.contains_key(&record.vip_id))
            || (record.worker_id != NO_ID && !self.workers.contains_key(&record.worker_id))
    }

    fn worker(&self, id: u32) -> Option<&Backend> {
        self.workers.get(&id)
    }

    /// The name of interface `ifindex`, as the controller recorded it (the
    /// only one, from an lb whose mark has no index).
    fn iface(&self, ifindex: u32) -> Option<&str> {
        let found = self
            .ifaces
            .iter()
            .find(|(index, _)| *index == Some(ifindex));
        let only = match self.ifaces.as_slice() {
            [(None, name)] => Some(name.as_str()),
            _ => None,
        };
        found.map(|(_, name)| name.as_str()).or(only)
    }

    /// The interface named in a line: only when there are several.
    fn iface_in_line(&self, ifindex: u32) -> Option<String> {
        if self.ifaces.len() < 2 {
            return None;
        }
        let name = self.iface(ifindex).map(str::to_owned);
        Some(name.unwrap_or_else(|| format!("ifindex {ifindex}")))
    }
}

/// What a capture saw.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tally {
    /// Records written to the output.
    pub written: u64,
    /// Packets that matched in the data plane.
    pub matched: u64,
    /// Matched packets the full ring buffer could not take.
    pub lost: u64,
}

/// How often names are read again when records name unknown ids.
const NAMES_REFRESH: Duration = Duration::from_secs(1);

/// The capture's output.
pub struct Output {
    names: Names,
    pin_dir: PathBuf,
    /// When `names` were last read.
    names_read: Instant,
    /// CLOCK_REALTIME − CLOCK_MONOTONIC: records carry monotonic time.
    epoch_offset: Duration,
    sink: Sink,
}

enum Sink {
    Lines(BufWriter<Box<dyn Write>>),
    Pcapng {
        writer: PcapNgWriter<BufWriter<Box<dyn Write>>>,
        /// Interface ids of the file, by ifindex.
        interfaces: HashMap<u32, u32>,
    },
}

impl Output {
    /// pcapng to `path` (`-` for standard output), or lines to standard
    /// output without one. The file is created before the capture starts,
    /// so a path that can't be written costs nothing.
    pub fn open(path: Option<&Path>, names: Names, pin_dir: &Path) -> anyhow::Result<Self> {
        let stdout = || -> Box<dyn Write> { Box::new(io::stdout()) };
        let sink = match path {
            None => Sink::Lines(BufWriter::new(stdout())),
            Some(path) => {
                let out: Box<dyn Write> = if path == Path::new("-") {
                    stdout()
                } else {
                    Box::new(
                        fs::File::create(path)
                            .with_context(|| format!("cannot write {}", path.display()))?,
                    )
                };
                Sink::Pcapng {
                    writer: PcapNgWriter::new(BufWriter::new(out))
                        .context("writing the pcapng header")?,
                    interfaces: HashMap::new(),
                }
            }
        };
        Ok(Self {
            names,
            pin_dir: pin_dir.to_owned(),
            names_read: Instant::now(),
            epoch_offset: epoch_offset(),
            sink,
        })
    }

    /// Writes one captured packet.
    pub fn write(&mut self, record: &CaptureRecord, data: &[u8]) -> anyhow::Result<()> {
        if self.names.lacks(record) && self.names_read.elapsed() >= NAMES_REFRESH {
            // A VIP or worker added meanwhile; if reading fails, ids do.
            if let Ok(names) = Names::read(&self.pin_dir) {
                self.names = names;
            }
            self.names_read = Instant::now();
        }
        let when = self.epoch_offset + Duration::from_nanos(record.ts_ns);
        let meta = metadata(record, &self.names);
        match &mut self.sink {
            Sink::Lines(out) => {
                let line = format!(
                    "{} {} {}",
                    clock(when),
                    meta,
                    summary(data, record, &self.names)
                );
                writeln!(out, "{line}")?;
                // A person watches the lines: don't hold them back.
                out.flush()?;
            }
            Sink::Pcapng { writer, interfaces } => {
                let pinned = self.names.iface(record.ifindex);
                let interface_id = interface(writer, interfaces, record.ifindex, pinned)?;
                let block = EnhancedPacketBlock {
                    interface_id,
                    timestamp: when,
                    original_len: record.frame_len,
                    data: Cow::Borrowed(data),
                    options: vec![EnhancedPacketOption::Comment(Cow::Owned(meta))],
                };
                writer.write_pcapng_block(block).map_err(pcap_error)?;
            }
        }
        Ok(())
    }

    /// Ends the output: for pcapng, what matched, was written and was lost
    /// in an interface statistics block, so that readers of the file see
    /// it too.
    pub fn finish(self, tally: Tally) -> anyhow::Result<()> {
        match self.sink {
            Sink::Lines(mut out) => out.flush().or_else(ignore_closed),
            Sink::Pcapng {
                mut writer,
                mut interfaces,
            } => {
                // Every file gets an interface, so that readers accept it
                // even when nothing was captured.
                let interface_id = match interfaces.values().min() {
                    Some(id) => *id,
                    None => {
                        let first = self.names.ifaces.first().map(|(_, name)| name.as_str());
                        interface(&mut writer, &mut interfaces, 0, first)?
                    }
                };
                let now = SystemTime::now().duration_since(UNIX_EPOCH)?;
                let stats = InterfaceStatisticsBlock {
                    interface_id,
                    timestamp: now.as_nanos() as u64,
                    options: vec![
                        InterfaceStatisticsOption::IsbFilterAccept(tally.matched),
                        InterfaceStatisticsOption::IsbOsDrop(tally.lost),
                        InterfaceStatisticsOption::IsbUsrDeliv(tally.written),
                        InterfaceStatisticsOption::Comment(Cow::Owned(format!(
                            "lb: {} packets matched, {} written, {} lost (ring buffer full)",
                            tally.matched, tally.written, tally.lost
                        ))),
                    ],
                };
                match writer.write_pcapng_block(stats) {
                    Ok(_) => writer.get_mut().flush().or_else(ignore_closed),
                    Err(pcap_file::PcapError::IoError(e)) => ignore_closed(e),
                    Err(e) => Err(pcap_error(e)),
                }
            }
        }
    }
}

fn ignore_closed(error: io::Error) -> anyhow::Result<()> {
    if error.kind() == io::ErrorKind::BrokenPipe {
        Ok(())
    } else {
        Err(error.into())
    }
}

/// pcap-file's errors, with a closed pipe kept recognisable.
fn pcap_error(error: pcap_file::PcapError) -> anyhow::Error {
    match error {
        pcap_file::PcapError::IoError(io) => io.into(),
        other => anyhow::anyhow!("writing pcapng: {other}"),
    }
}

/// The file's interface id for `ifindex`, described on first use and
/// named `pinned` (the name its controller recorded), else by its index
/// looked up here, which is right only in the balancer's network namespace.
fn interface(
    writer: &mut PcapNgWriter<BufWriter<Box<dyn Write>>>,
    interfaces: &mut HashMap<u32, u32>,
    ifindex: u32,
    pinned: Option<&str>,
) -> anyhow::Result<u32> {
    if let Some(id) = interfaces.get(&ifindex) {
        return Ok(*id);
    }
    let id = interfaces.len() as u32;
    let name = match pinned {
        Some(name) => name.to_owned(),
        None => iface::name_of(ifindex).unwrap_or_else(|| format!("ifindex {ifindex}")),
    };
    let block = InterfaceDescriptionBlock {
        linktype: DataLink::ETHERNET,
        snaplen: MAX_SNAPLEN,
        options: vec![
            InterfaceDescriptionOption::IfName(Cow::Owned(name)),
            InterfaceDescriptionOption::IfDescription(Cow::Borrowed(
                "packets as lb's XDP program sent them on (or passed or dropped them)",
            )),
            // Nanoseconds: pcap-file writes timestamps in them.
            InterfaceDescriptionOption::IfTsResol(9),
        ],
    };
    writer.write_pcapng_block(block).map_err(pcap_error)?;
    interfaces.insert(ifindex, id);
    Ok(id)
}

/// CLOCK_REALTIME − CLOCK_MONOTONIC now.
fn epoch_offset() -> Duration {
    let realtime = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    realtime.saturating_sub(Duration::from_nanos(
        crate::dataplane::activity::monotonic_ns(),
    ))
}

/// HH:MM:SS.micro (UTC), as tcpdump prints time.
fn clock(since_epoch: Duration) -> String {
    let secs = since_epoch.as_secs();
    format!(
        "{:02}:{:02}:{:02}.{:06}",
        secs / 3600 % 24,
        secs / 60 % 60,
        secs % 60,
        since_epoch.subsec_micros()
    )
}

/// lb's metadata of a record: action, reason (the counter that moved), VIP,
/// worker, CPU.
fn metadata(record: &CaptureRecord, names: &Names) -> String {
    let action = match record.action {
        ACTION_FORWARD => "forward",
        ACTION_PASS => "pass",
        ACTION_DROP => "drop",
        _ => "reply",
    };
    let mut text = format!("lb: {action} {}", reason::name(record.reason));
    if let Some(iface) = names.iface_in_line(record.ifindex) {
        text += &format!(" in {iface}");
    }
    if record.vip_id != NO_ID {
        match names.vip(record.vip_id) {
            Some(vip) => text += &format!(" vip {vip}"),
            None => text += &format!(" vip #{}", record.vip_id),
        }
    }
    if record.worker_id != NO_ID {
        let worker = names
            .worker(record.worker_id)
            .and_then(|b| addr_from_bytes(b.addr, b.family));
        match worker {
            Some(addr) => text += &format!(" worker {addr}"),
            None => text += &format!(" worker #{}", record.worker_id),
        }
    }
    text + &format!(" cpu {}", record.cpu)
}

/// A tcpdump-like description of the frame as it left: addresses, ports,
/// TCP flags, and for a tunnel the outer and the inner packet.
fn summary(data: &[u8], record: &CaptureRecord, names: &Names) -> String {
    let length = format!("length {}", record.frame_len);
    let Parsed::Ip(ip) = packet::parse(data) else {
        return format!("non-IP or malformed frame, {length}");
    };
    let outer = describe(&ip);
    let tunnel = names.worker(record.worker_id).filter(|w| w.forward != 0);
    match tunnel.and_then(|worker| inner(data, &ip, worker)) {
        Some((kind, inner)) => format!("{outer} {kind}: {} {length}", describe(&inner)),
        None => format!("{outer}, {length}"),
    }
}

/// The packet inside an IPIP or GUE frame to `worker`.
fn inner(data: &[u8], outer: &IpPacket, worker: &Backend) -> Option<(&'static str, IpPacket)> {
    let start = match worker.forward {
        FORWARD_IPIP if matches!(outer.proto, IPPROTO_IPIP | IPPROTO_IPV6) => outer.l4_offset,
        FORWARD_GUE if outer.proto == IPPROTO_UDP => outer.l4_offset + UDP_HLEN,
        _ => return None,
    };
    let packet = data.get(start..)?;
    let version = packet.first()? >> 4;
    let ethertype = if version == 6 { ETH_P_IPV6 } else { ETH_P_IP };
    let mut frame = vec![0u8; ETH_HLEN - 2];
    frame.extend(ethertype.to_be_bytes());
    frame.extend(packet);
    let kind = if worker.forward == FORWARD_GUE {
        "gue"
    } else {
        "ipip"
    };
    match packet::parse(frame.as_slice()) {
        Parsed::Ip(inner) => Some((kind, inner)),
        _ => None,
    }
}

fn describe(ip: &IpPacket) -> String {
    let (code, family) = match ip.version {
        IpVersion::V4 => (FAMILY_V4, "IP"),
        IpVersion::V6 => (FAMILY_V6, "IP6"),
    };
    let (Some(src), Some(dst)) = (addr_from_bytes(ip.src, code), addr_from_bytes(ip.dst, code))
    else {
        return family.to_owned();
    };
    match ip.proto {
        IPPROTO_TCP => format!(
            "{family} {src}.{} > {dst}.{}: tcp [{}]",
            u16::from_be(ip.sport),
            u16::from_be(ip.dport),
            tcp_flags(ip.tcp_flags)
        ),
        IPPROTO_UDP => format!(
            "{family} {src}.{} > {dst}.{}: udp",
            u16::from_be(ip.sport),
            u16::from_be(ip.dport)
        ),
        proto => format!("{family} {src} > {dst}: {}", proto_name(proto)),
    }
}

fn proto_name(proto: u8) -> String {
    match proto {
        IPPROTO_ICMP => "icmp".into(),
        IPPROTO_ICMPV6 => "icmp6".into(),
        IPPROTO_IPIP => "ipip".into(),
        IPPROTO_IPV6 => "ip6".into(),
        other => format!("proto {other}"),
    }
}

/// TCP flags as tcpdump writes them: S, F, R, P, . for ACK.
fn tcp_flags(flags: u8) -> String {
    let names = [
        (0x02, 'S'),
        (0x01, 'F'),
        (0x04, 'R'),
        (0x08, 'P'),
        (0x10, '.'),
    ];
    let text: String = names
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, c)| *c)
        .collect();
    if text.is_empty() {
        "none".into()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_read_like_tcpdump() {
        assert_eq!(tcp_flags(0x02), "S");
        assert_eq!(tcp_flags(0x12), "S.");
        assert_eq!(tcp_flags(0x18), "P.");
        assert_eq!(tcp_flags(0), "none");
    }

    #[test]
    fn clock_is_time_of_day_in_microseconds() {
        let t = Duration::new(86_400 * 3 + 3600 * 13 + 60 * 5 + 7, 123_456_789);
        assert_eq!(clock(t), "13:05:07.123456");
    }

    #[test]
    fn metadata_names_what_it_knows_and_numbers_the_rest() {
        let record = CaptureRecord {
            action: ACTION_DROP,
            reason: reason::NO_BACKEND,
            vip_id: 7,
            worker_id: NO_ID,
            cpu: 1,
            ..CaptureRecord::default()
        };
        assert_eq!(
            metadata(&record, &Names::default()),
            "lb: drop drop_no_backend vip #7 cpu 1"
        );
    }
}
