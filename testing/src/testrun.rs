//! Loading lb's program (or another object's, such as the benchmarks'
//! floors) without attaching it, giving lb a real configuration, and
//! running programs with BPF_PROG_TEST_RUN: the harness of the packet
//! tests, the fuzzer and the benchmarks.

use std::net::IpAddr;

use anyhow::Context as _;
use aya::{
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray},
    programs::{TestRun as _, TestRunOptions, Xdp},
    Ebpf, EbpfLoader,
};
use lb_common::{
    balancer::{FlowKey, FlowValue, LOAD_UNKNOWN},
    counters::GlobalCounters,
    map_names, program_names,
};

use lb_userspace::{
    dataplane::maps::{ControlMaps, WorkerEntry},
    dataplane::{
        nat::{NatPorts, NatSettings, NatWorker},
        object,
    },
    desired::options::{Forward, VipOptions},
    desired::state::{Desired, DEFAULT_WEIGHT},
    service::Vip,
};

/// A loaded object whose programs can be test-run.
pub struct Loaded {
    ebpf: Ebpf,
}

impl Loaded {
    /// lb's object with a flow table of `max_flows`, `lb_xdp` loaded and
    /// its tunnel and capture programs in place.
    pub fn lb(max_flows: u32) -> anyhow::Result<Self> {
        Self::lb_from(object::LB_XDP, max_flows)
    }

    /// As [`Loaded::lb`], from another build of lb's object (the
    /// benchmark's build without the capture hook).
    pub fn lb_from(object: &[u8], max_flows: u32) -> anyhow::Result<Self> {
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(map_names::FLOWS, max_flows)
            .load(object)
            .context("loading lb's object")?;
        lb_userspace::dataplane::load_tail_calls(&mut ebpf)?;
        Self::with_programs(ebpf, &[program_names::BALANCER])
    }

    /// `ebpf` as `EbpfLoader` left it (maps created), with its programs
    /// `names` loaded (verified) for test runs.
    pub fn with_programs(ebpf: Ebpf, names: &[&str]) -> anyhow::Result<Self> {
        let mut loaded = Self { ebpf };
        for name in names {
            loaded.load_program(name)?;
        }
        Ok(loaded)
    }

    fn load_program(&mut self, name: &str) -> anyhow::Result<()> {
        let program: &mut Xdp = self
            .ebpf
            .program_mut(name)
            .with_context(|| format!("no program {name}"))?
            .try_into()?;
        program
            .load()
            .with_context(|| format!("the verifier rejected {name}"))
    }

    /// The object's map `name`, unless taken.
    pub fn map(&self, name: &str) -> Option<&aya::maps::Map> {
        self.ebpf.map(name)
    }

    /// The object's map `name` to write, unless taken.
    pub fn map_mut(&mut self, name: &str) -> Option<&mut aya::maps::Map> {
        self.ebpf.map_mut(name)
    }

    /// The underlying object, for its maps.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// The object's program `name`, for attaching (the floor forwarder).
    pub fn program_mut(&mut self, name: &str) -> anyhow::Result<&mut Xdp> {
        Ok(self
            .ebpf
            .program_mut(name)
            .with_context(|| format!("no program {name}"))?
            .try_into()?)
    }

    /// Runs `program` once on `frame`; returns its verdict and the frame
    /// it left.
    pub fn run_frame(&self, program: &str, frame: &[u8]) -> anyhow::Result<(u32, Vec<u8>)> {
        let (result, mut out) = self.test_run(program, frame, 1)?;
        out.truncate(result.data_size_out as usize);
        Ok((result.return_value, out))
    }

    fn test_run(
        &self,
        program: &str,
        frame: &[u8],
        repeat: u32,
    ) -> anyhow::Result<(aya::programs::TestRunResult, Vec<u8>)> {
        let xdp: &Xdp = self
            .ebpf
            .program(program)
            .with_context(|| format!("no program {program}"))?
            .try_into()?;
        let mut out = vec![0u8; frame.len() + 256];
        let result = xdp
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                repeat,
                ..TestRunOptions::new()
            })
            .with_context(|| format!("test-running {program}"))?;
        Ok((result, out))
    }

    /// lb's global counters, summed over CPUs.
    pub fn counters(&self) -> anyhow::Result<GlobalCounters> {
        let map: PerCpuArray<&MapData, GlobalCounters> = self
            .ebpf
            .map(map_names::COUNTERS)
            .context("no counters map")?
            .try_into()?;
        let mut total = GlobalCounters::default();
        for copy in map.get(&0, 0)?.iter() {
            total.accumulate(copy);
        }
        Ok(total)
    }

    /// Runs `program` on `frame` `repeat` times; returns its verdict and
    /// the kernel's mean run time in nanoseconds.
    pub fn run(&self, program: &str, frame: &[u8], repeat: u32) -> anyhow::Result<(u32, f64)> {
        let (result, _) = self.test_run(program, frame, repeat)?;
        Ok((result.return_value, result.duration.as_nanos() as f64))
    }

    /// A handle on the object's flow-table map `name` (lb's or the floor's).
    pub fn flows(&mut self, name: &str) -> anyhow::Result<BpfHashMap<MapData, FlowKey, FlowValue>> {
        let map = self
            .ebpf
            .take_map(name)
            .with_context(|| format!("no map {name}"))?;
        Ok(map.try_into()?)
    }
}

/// The MAC test configurations give worker `id`.
pub fn worker_mac(id: u32) -> [u8; 6] {
    let [_, _, hi, lo] = id.to_be_bytes();
    [0x02, 0xbe, 0, 0, hi, lo]
}

/// The outer sources of IPIP and GUE in test configurations.
pub const TUNNEL_SOURCES: [&str; 2] = ["192.0.2.2", "2001:db8::2"];
/// The MTU of test configurations' tunnels.
pub const TUNNEL_MTU: u16 = 1500;

/// Gives lb's maps `vips`, each with `workers` workers whose addresses
/// `worker_addr(vip index, n)` makes, every MAC resolved; returns the
/// desired state written.
pub fn configure(
    loaded: &mut Loaded,
    vips: &[Vip],
    workers: u32,
    worker_addr: impl Fn(usize, u32) -> IpAddr,
) -> anyhow::Result<(Desired, ControlMaps)> {
    configure_with(loaded, vips, workers, worker_addr, |_| {
        VipOptions::default()
    })
}

/// As [`configure`], with VIP `i`'s settings `options(i)`: its forwarding
/// method, for one; tunnels start at [`TUNNEL_SOURCES`] with an MTU of
/// [`TUNNEL_MTU`].
pub fn configure_with(
    loaded: &mut Loaded,
    vips: &[Vip],
    workers: u32,
    worker_addr: impl Fn(usize, u32) -> IpAddr,
    options: impl Fn(usize) -> VipOptions,
) -> anyhow::Result<(Desired, ControlMaps)> {
    let mut maps = ControlMaps::take(loaded.ebpf_mut())?;
    let mut desired = Desired::new(7);
    maps.write_config(desired.hash_seed)?;
    for (index, vip) in vips.iter().enumerate() {
        let options = options(index);
        desired.add_vip(*vip, options.clone())?;
        for n in 0..workers {
            let addr = worker_addr(index, n);
            let id = desired.add_worker(vip, addr, DEFAULT_WEIGHT)?;
            let source = TUNNEL_SOURCES[usize::from(addr.is_ipv6())];
            let entry = WorkerEntry {
                addr,
                mac: Some(worker_mac(id)),
                vip_id: desired.vip(vip)?.id,
                state_flags: 0,
                generation: 1,
                forward: options.forward.code(),
                gue_port: options.gue_port(),
                port: 0,
                mtu: TUNNEL_MTU,
                tunnel_source: Some(source.parse()?),
                egress: 0,
            };
            maps.write_backend(id, &entry)?;
            maps.write_load(id, LOAD_UNKNOWN)?;
        }
        let state = desired.vip(vip)?;
        maps.install_vip(vip, state, &state.members(|_| true), desired.hash_seed)?;
    }
    maps.commit().map_err(|(_, error)| error)?;
    Ok((desired, maps))
}

/// The counters that moved from `before` to `after`, by name and by how
/// much, sorted by name.
pub fn counter_deltas(before: &GlobalCounters, after: &GlobalCounters) -> Vec<(&'static str, u64)> {
    let mut moved: Vec<(&str, u64)> = GlobalCounters::NAMES
        .iter()
        .zip(before.values().iter().zip(after.values()))
        .filter(|(_, (b, a))| a != *b)
        .map(|(name, (b, a))| (*name, a - b))
        .collect();
    moved.sort();
    moved
}

/// Gives lb's NAT maps what a controller would for the NAT VIPs of
/// `desired` (configured by [`configure_with`]): each worker's port
/// (`worker_port` of its VIP) in its slot, the reply filter, the `nat`
/// workers' reverse entries, `sources` and the port range `low..=high`.
pub fn configure_nat(
    desired: &Desired,
    maps: &mut ControlMaps,
    worker_port: impl Fn(&Vip) -> u16,
    sources: &[IpAddr],
    (low, high): (u16, u16),
) -> anyhow::Result<()> {
    let mut workers = Vec::new();
    for (vip, state) in desired.vips() {
        let forward = state.options.forward;
        if !forward.is_nat() {
            continue;
        }
        let port = worker_port(vip);
        for (addr, worker) in &state.workers {
            let entry = WorkerEntry {
                addr: *addr,
                mac: Some(worker_mac(worker.id)),
                vip_id: state.id,
                state_flags: 0,
                generation: 1,
                forward: forward.code(),
                gue_port: 0,
                port,
                mtu: TUNNEL_MTU,
                tunnel_source: None,
                egress: 0,
            };
            maps.write_backend(worker.id, &entry)?;
            workers.push(NatWorker {
                addr: *addr,
                port,
                vip: (vip.addr, vip.port, vip.key().proto),
                vip_id: state.id,
                backend_id: worker.id,
                stateless: forward == Forward::Nat,
            });
        }
    }
    let settings = NatSettings {
        sources: sources.to_vec(),
        ports: NatPorts { low, high },
    };
    maps.nat().write_settings(&settings, 0x1234_5678)?;
    maps.nat().sync(&workers)?;
    Ok(())
}
