//! Loading lb's program and attaching it, or adopting the one an earlier
//! lb left running: its maps reused from their pins, the new program
//! swapped in on the pinned link.

use std::{
    fs,
    path::{Path, PathBuf},
};

use aya::{
    maps::{MapData, ProgramArray},
    programs::{
        links::{FdLink, LinkError, PinnedLink},
        xdp::XdpLink,
        ProgramError, Xdp,
    },
    Ebpf, EbpfError, EbpfLoader,
};
use lb_common::{
    map_names,
    nat::{NAT_PROG_FORWARD, NAT_PROG_ICMP, NAT_PROG_REPLY},
    program_names,
};

use super::{
    guard::PinGuard,
    object,
    pins::{
        check_layout, check_name, detach_pins, link_pin, lock_pin_dir, mark_ifaces, mark_layout,
        mark_name, other_links, prepare_pin_dir, remove_pins, unpin_all, HeldLock,
    },
    AttachMode, DataplaneError, MAX_FLOWS,
};
use crate::{
    desired::state::Limits,
    kernel::{
        iface,
        netlink::{Netlink, XdpState},
        private, privileges,
    },
};

/// What to attach where.
#[derive(Clone, Debug)]
pub struct AttachOptions {
    /// The instance's name, marked on the pin directory.
    pub name: String,
    /// Interface names in the current network namespace, in `--iface`
    /// order (never empty): the first's link is pinned as `link`, the
    /// others' as `link-NAME`.
    pub ifaces: Vec<String>,
    /// Native or generic XDP.
    pub mode: AttachMode,
    /// Directory on a BPF filesystem for this instance's pins.
    pub pin_dir: PathBuf,
    /// Capacity of the flow table (when it is created).
    pub max_flows: u32,
    /// Capacity of the NAT table (when it is created).
    pub max_nat_flows: u32,
    /// Size of the per-VIP and per-worker maps (when they are created).
    pub limits: Limits,
    /// Replace pinned maps of another layout (losing the flow table).
    pub force: bool,
}

/// The kernel's statistics of lb's program.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgramStats {
    /// Runs of the program.
    pub runs: u64,
    /// Time spent in it.
    pub time: std::time::Duration,
}

/// What `Dataplane::attach` found on the interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Takeover {
    /// Nothing: the program was attached afresh.
    Fresh,
    /// A running lb: its maps were reused and the new program swapped in
    /// atomically on its link.
    Adopted {
        /// The program that was running.
        previous_program: u32,
    },
    /// A running lb with maps of another layout or size (`--force`):
    /// fresh maps, the new program swapped in atomically.
    Replaced {
        /// The program that was running.
        previous_program: u32,
    },
    /// A running lb in another XDP mode (`--force`): its maps kept, the
    /// program attached afresh in the mode asked for (forwarding pauses
    /// between the old link's removal and the new attachment).
    Reattached {
        /// The program that was running.
        previous_program: u32,
    },
}

/// lb's program attached to an interface through a pinned bpf_link, with
/// its maps pinned: it keeps forwarding when this process exits, until
/// [`Dataplane::detach`] (or `lb detach`) removes it.
pub struct Dataplane {
    ebpf: Ebpf,
    options: AttachOptions,
    program_id: u32,
    takeover: Takeover,
    pins: Option<PinGuard>,
    /// Held for as long as this controller manages the pin directory.
    lock: HeldLock,
    /// The directories this start made for its pins, deepest first.
    made: Vec<PathBuf>,
}

/// What [`Dataplane::attach`] will do with what is pinned.
struct Plan {
    /// Each interface's link, in `--iface` order.
    links: Vec<LinkPlan>,
    /// Unpin the maps first (another layout or size, with `--force`).
    replace_maps: bool,
    /// The pins of links on interfaces no longer asked for: removed once
    /// the program runs on those asked for, which takes it off them.
    stale: Vec<PathBuf>,
}

/// What [`Dataplane::attach`] will do on one interface.
struct LinkPlan {
    /// The interface's name.
    iface: String,
    /// Its index.
    if_index: u32,
    /// Where its link is pinned.
    pin: PathBuf,
    /// The program of the pinned link, if there is one.
    previous: Option<u32>,
    /// Attach afresh instead of swapping in (another XDP mode, `--force`).
    reattach: bool,
}

impl Plan {
    /// What is done on the first interface, which stands for the whole.
    fn takeover(&self) -> Takeover {
        let first = &self.links[0];
        match first.previous {
            None => Takeover::Fresh,
            Some(previous_program) if self.replace_maps => Takeover::Replaced { previous_program },
            Some(previous_program) if first.reattach => Takeover::Reattached { previous_program },
            Some(previous_program) => Takeover::Adopted { previous_program },
        }
    }
}

impl Dataplane {
    /// Loads the embedded object with its maps pinned (reusing maps an
    /// earlier lb pinned) and attaches the balancer, or swaps it in on the
    /// link an earlier lb pinned. What is pinned must be what was asked
    /// (interface, mode, table size), or `--force` must say to apply it.
    pub fn attach(options: AttachOptions) -> Result<Self, DataplaneError> {
        let if_indexes = (options.ifaces.iter())
            .map(|name| {
                iface::index_of(name).ok_or_else(|| DataplaneError::NoSuchInterface(name.clone()))
            })
            .collect::<Result<Vec<u32>, _>>()?;
        if !privileges::can_manage_xdp() {
            return Err(DataplaneError::NotPermitted);
        }
        if options.max_flows > MAX_FLOWS {
            return Err(DataplaneError::TableTooLarge(options.max_flows.into()));
        }
        let dir = options.pin_dir.clone();
        // The lock first: two starts on a new pin directory must not both
        // make it, nor one remove it under the other.
        let lock = lock_pin_dir(&dir)?;
        let made = match prepare_pin_dir(&dir) {
            Ok(made) => made,
            Err(error) => {
                lock.discard();
                return Err(error);
            }
        };
        let had_pins = super::has_pins(&dir);
        let (ebpf, program_id, takeover) = match attach_in(&dir, &options, &if_indexes) {
            Ok(attached) => attached,
            Err(error) => {
                // A refused start leaves nothing behind that it made.
                if !had_pins {
                    unpin_all(&dir);
                }
                private::remove_made(&made);
                lock.discard();
                return Err(error);
            }
        };
        let links: Vec<_> = (options.ifaces.iter().enumerate())
            .zip(&if_indexes)
            .map(|((n, name), &if_index)| (link_pin(n, name), if_index))
            .collect();
        let pins = PinGuard::open(&dir, &options.name, &lock, &links, program_id);
        if let Err(error) = &pins {
            tracing::warn!("holding the pins under {}: {error}", dir.display());
        }
        Ok(Self {
            ebpf,
            options,
            program_id,
            takeover,
            pins: pins.ok(),
            lock,
            made,
        })
    }

    /// What the attach found and did.
    pub fn takeover(&self) -> Takeover {
        self.takeover
    }

    /// Detaches the program and removes every pin: forwarding stops and
    /// the maps (flows, sessions) go. The controller must have let go of
    /// its references ([`Dataplane::take_pins`]) first.
    pub fn detach(&mut self) {
        // Our own reference would keep the program attached.
        self.pins = None;
        detach_pins(&self.options.pin_dir);
    }

    /// Undoes a start that got no further than this: a program attached
    /// afresh is detached and everything this start made is removed (the
    /// pins, the directories, the lock file); a running one that was
    /// adopted keeps forwarding with the program swapped in. The
    /// controller must have let go of its references first.
    pub fn abandon(mut self) {
        self.pins = None;
        if self.takeover == Takeover::Fresh {
            unpin_all(&self.options.pin_dir);
            private::remove_made(&self.made);
        }
        self.lock.discard();
    }

    /// How often the program ran and for how long, as the kernel counts
    /// it while `kernel.bpf_stats_enabled` is on (read through the loaded
    /// program, so CAP_BPF is enough, unlike a lookup by id).
    pub fn program_stats(&self) -> Option<ProgramStats> {
        let info = self.ebpf.program(program_names::BALANCER)?.info().ok()?;
        Some(ProgramStats {
            runs: info.run_count(),
            time: info.run_time(),
        })
    }

    /// The kernel's id of the attached program (as `bpftool prog` shows it).
    pub fn program_id(&self) -> u32 {
        self.program_id
    }

    /// What this data plane was attached with.
    pub fn options(&self) -> &AttachOptions {
        &self.options
    }

    /// The loaded object, for map access.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// The references to the link and the maps, for the controller to
    /// keep its pins whole.
    pub fn take_pins(&mut self) -> Option<PinGuard> {
        self.pins.take()
    }
}

/// The part of [`Dataplane::attach`] after the pin directory is locked and
/// made: check what is pinned there, then load and attach or swap in.
fn attach_in(
    dir: &Path,
    options: &AttachOptions,
    if_indexes: &[u32],
) -> Result<(Ebpf, u32, Takeover), DataplaneError> {
    check_name(dir, &options.name)?;
    let plan = plan(dir, options, if_indexes)?;
    if plan.replace_maps {
        remove_pins(dir);
    }
    for link in plan.links.iter().filter(|link| link.reattach) {
        // The old link goes with its last reference: the program stops
        // there until the new attachment below.
        let _ = fs::remove_file(&link.pin);
    }
    let had_maps = map_names::ALL.iter().any(|name| dir.join(name).exists());
    let attached = load_and_attach(options, &plan);
    if attached.is_err() && !had_maps {
        // Leave nothing behind that no program uses.
        remove_pins(dir);
    }
    let attached = attached?;
    for stale in &plan.stale {
        // Its last reference: the program leaves that interface.
        let _ = fs::remove_file(stale);
        tracing::info!(
            "{} is no longer asked for: lb's program left its interface",
            stale.display()
        );
    }
    mark_layout(dir)?;
    mark_name(dir, &options.name)?;
    let ifaces: Vec<(u32, String)> = (plan.links.iter())
        .map(|link| (link.if_index, link.iface.clone()))
        .collect();
    mark_ifaces(dir, &ifaces)?;
    Ok(attached)
}

/// Decides what to do with what is pinned under `dir`, refusing what does
/// not match the options unless `--force` says to apply them.
fn plan(dir: &Path, options: &AttachOptions, if_indexes: &[u32]) -> Result<Plan, DataplaneError> {
    let mut replace_maps = check_layout(dir, options.force)?;
    let mut netlink = Netlink::open().map_err(|source| DataplaneError::PinDir {
        path: dir.to_owned(),
        source,
    })?;
    let links = (options.ifaces.iter().enumerate())
        .zip(if_indexes)
        .map(|((n, iface), &if_index)| {
            let pin = dir.join(link_pin(n, iface));
            plan_link(&mut netlink, dir, options, (iface, if_index), pin)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let wanted: Vec<&Path> = links.iter().map(|link| link.pin.as_path()).collect();
    let stale = (other_links(dir).into_iter())
        .map(|pin| dir.join(pin))
        .filter(|pin| !wanted.contains(&pin.as_path()))
        .collect();
    if links.iter().all(|link| link.previous.is_none()) {
        return Ok(Plan {
            links,
            replace_maps,
            stale,
        });
    }
    let sizes = [
        ("--max-flows", map_names::FLOWS, options.max_flows),
        ("--max-nat-flows", map_names::NAT, options.max_nat_flows),
        ("--max-vips", map_names::VIPS, options.limits.vips),
        ("--max-workers", map_names::BACKENDS, options.limits.workers),
    ];
    for (what, map, asked) in sizes {
        let pinned = pinned_capacity(dir, map);
        if replace_maps || pinned.is_none_or(|c| c == asked) {
            continue;
        }
        if !options.force {
            return Err(DataplaneError::Mismatch {
                dir: dir.to_owned(),
                what,
                pinned: pinned.unwrap_or_default().to_string(),
                asked: asked.to_string(),
                consequence: "new maps: established connections are scheduled afresh",
            });
        }
        replace_maps = true;
    }
    Ok(Plan {
        links,
        replace_maps,
        stale,
    })
}

/// Decides what to do on interface `iface` (index `if_index`), whose link
/// is pinned at `pin` if it is: swap the program in on it, attach afresh,
/// or refuse what does not match.
fn plan_link(
    netlink: &mut Netlink,
    dir: &Path,
    options: &AttachOptions,
    (iface, if_index): (&str, u32),
    pin: PathBuf,
) -> Result<LinkPlan, DataplaneError> {
    let running = netlink
        .xdp(if_index)
        .map_err(|source| DataplaneError::PinDir {
            path: dir.to_owned(),
            source,
        })?;
    let mut plan = LinkPlan {
        iface: iface.to_owned(),
        if_index,
        pin,
        previous: None,
        reattach: false,
    };
    if !plan.pin.exists() {
        if running.program_id != 0 {
            return Err(busy_error(iface, running, dir));
        }
        return Ok(plan);
    }
    let previous = pinned_program(&plan.pin)?;
    if running.program_id != previous {
        return Err(DataplaneError::ForeignLink {
            dir: dir.to_owned(),
            iface: iface.to_owned(),
            program: previous,
        });
    }
    let reattach = running.mode != <&str>::from(options.mode);
    if reattach && !options.force {
        return Err(DataplaneError::Mismatch {
            dir: dir.to_owned(),
            what: "--xdp-mode",
            pinned: running.mode.to_owned(),
            asked: options.mode.to_string(),
            consequence: "forwarding pauses while the program is attached again; flows are kept",
        });
    }
    plan.previous = Some(previous);
    plan.reattach = reattach;
    Ok(plan)
}

/// The program of the link pinned at `path`.
fn pinned_program(path: &Path) -> Result<u32, DataplaneError> {
    let adopt_error = |source: Box<dyn std::error::Error + Send + Sync>| DataplaneError::Adopt {
        path: path.to_owned(),
        source,
    };
    let link: FdLink = PinnedLink::from_pin(path)
        .map_err(|e| adopt_error(Box::new(e)))?
        .into();
    Ok(link
        .info()
        .map_err(|e| adopt_error(Box::new(e)))?
        .program_id())
}

/// The capacity of map `name` pinned under `dir`, if there is one.
fn pinned_capacity(dir: &Path, name: &str) -> Option<u32> {
    let map = MapData::from_pin(dir.join(name)).ok()?;
    Some(map.info().ok()?.max_entries())
}

/// Loads the object and attaches or swaps in its balancer as planned, on
/// every interface.
fn load_and_attach(
    options: &AttachOptions,
    plan: &Plan,
) -> Result<(Ebpf, u32, Takeover), DataplaneError> {
    let mut ebpf = load(options)?;
    load_tail_calls(&mut ebpf)?;
    let program: &mut Xdp = balancer(&mut ebpf)?;
    program.load().map_err(verify_error)?;
    let program_id = program.info().map_err(verify_error)?.id();
    for link in &plan.links {
        if link.previous.is_some() && !link.reattach {
            swap_in(program, &link.pin)?;
        } else {
            attach_fresh(program, link, options)?;
        }
    }
    Ok((ebpf, program_id, plan.takeover()))
}

/// Loads the tunnel program (IPIP and GUE), the NAT programs and the
/// capture program and
/// puts them where the balancer's tail calls find them, in place of an
/// adopted one's. A kernel that refuses the capture program (before 5.18,
/// which brought `bpf_xdp_load_bytes`) runs lb without `lb capture`: the
/// balancer's tail call into the empty slot fails and the packet goes on.
pub fn load_tail_calls(ebpf: &mut Ebpf) -> Result<(), DataplaneError> {
    load_into(ebpf, program_names::TUNNEL, map_names::TUNNEL_PROG, 0)?;
    let nat = [
        (program_names::NAT, NAT_PROG_FORWARD),
        (program_names::NAT_REPLY, NAT_PROG_REPLY),
        (program_names::NAT_ICMP, NAT_PROG_ICMP),
    ];
    for (name, slot) in nat {
        load_into(ebpf, name, map_names::NAT_PROG, slot)?;
    }
    if let Err(error) = load_into(ebpf, program_names::CAPTURE, map_names::CAPTURE_PROG, 0) {
        tracing::warn!("lb capture is unavailable on this kernel: {error}");
    }
    Ok(())
}

/// Loads program `name` and puts it in slot `index` of program array
/// `array`.
fn load_into(ebpf: &mut Ebpf, name: &str, array: &str, index: u32) -> Result<(), DataplaneError> {
    let program: &mut Xdp = ebpf
        .program_mut(name)
        .unwrap_or_else(|| panic!("the embedded object defines program {name}"))
        .try_into()
        .map_err(verify_error)?;
    program.load().map_err(verify_error)?;
    let fd = program
        .fd()
        .and_then(|fd| fd.try_clone().map_err(ProgramError::from))
        .map_err(verify_error)?;
    let map = ebpf
        .map_mut(array)
        .unwrap_or_else(|| panic!("the embedded object defines program array {array}"));
    let mut array: ProgramArray<&mut MapData> = ProgramArray::try_from(map)
        .map_err(|e| DataplaneError::Load(Box::new(EbpfError::MapError(e))))?;
    array
        .set(index, &fd, 0)
        .map_err(|e| DataplaneError::Load(Box::new(EbpfError::MapError(e))))
}

fn balancer(ebpf: &mut Ebpf) -> Result<&mut Xdp, DataplaneError> {
    ebpf.program_mut(program_names::BALANCER)
        .expect("the embedded object defines the balancer program")
        .try_into()
        .map_err(verify_error)
}

fn verify_error(error: ProgramError) -> DataplaneError {
    DataplaneError::Verify(Box::new(error))
}

/// The object, with every map pinned under the pin directory (an existing
/// pin is reused, so an adopting lb shares the running one's maps).
fn load(options: &AttachOptions) -> Result<Ebpf, DataplaneError> {
    let mut loader = EbpfLoader::new();
    loader.map_max_entries(map_names::FLOWS, options.max_flows);
    loader.map_max_entries(map_names::NAT, options.max_nat_flows);
    for &name in map_names::PER_VIP {
        loader.map_max_entries(name, options.limits.vips);
    }
    for &name in map_names::PER_WORKER {
        loader.map_max_entries(name, options.limits.workers);
    }
    for &name in map_names::ALL {
        loader.map_pin_path(name, options.pin_dir.join(name));
    }
    loader
        .load(object::LB_XDP)
        .map_err(|e| DataplaneError::Load(Box::new(e)))
}

/// Swaps `program` in on the pinned link atomically; returns the id of the
/// program it replaced.
fn swap_in(program: &mut Xdp, link_path: &Path) -> Result<u32, DataplaneError> {
    let adopt_error = |source: Box<dyn std::error::Error + Send + Sync>| DataplaneError::Adopt {
        path: link_path.to_owned(),
        source,
    };
    let link: FdLink = PinnedLink::from_pin(link_path)
        .map_err(|e| adopt_error(Box::new(e)))?
        .into();
    let previous = link
        .info()
        .map_err(|e| adopt_error(Box::new(e)))?
        .program_id();
    let link = XdpLink::try_from(link).map_err(|e: LinkError| adopt_error(Box::new(e)))?;
    program
        .attach_to_link(link)
        .map_err(|e| adopt_error(Box::new(e)))?;
    Ok(previous)
}

/// Attaches `program` to the link's interface and pins the bpf_link that
/// holds it.
fn attach_fresh(
    program: &mut Xdp,
    link: &LinkPlan,
    options: &AttachOptions,
) -> Result<(), DataplaneError> {
    let (if_index, link_path) = (link.if_index, &link.pin);
    let attach_error = |source: Box<ProgramError>| DataplaneError::Attach {
        iface: link.iface.clone(),
        mode: options.mode.into(),
        hint: match options.mode {
            AttachMode::Native => " (if the driver has no native XDP, try --xdp-mode generic)",
            AttachMode::Generic => "",
        },
        source,
    };
    let id = program
        .attach_to_if_index(if_index, options.mode.xdp_mode())
        .map_err(|e| busy(link, options).unwrap_or_else(|| attach_error(Box::new(e))))?;
    let link = program
        .take_link(id)
        .map_err(|e| attach_error(Box::new(e)))?;
    let link: FdLink = link.try_into().map_err(|_| DataplaneError::NoBpfLink)?;
    link.pin(link_path).map_err(|source| DataplaneError::Pin {
        map: "link",
        path: options.pin_dir.clone(),
        source,
    })?;
    Ok(())
}

/// The error for the link's interface if it already runs an XDP program.
fn busy(link: &LinkPlan, options: &AttachOptions) -> Option<DataplaneError> {
    let running = Netlink::open().ok()?.xdp(link.if_index).ok()?;
    if running.program_id == 0 {
        return None;
    }
    Some(busy_error(&link.iface, running, &options.pin_dir))
}

/// The error for interface `iface`, which runs XDP program `running`
/// that lb did not pin under `dir`.
fn busy_error(iface: &str, running: XdpState, dir: &Path) -> DataplaneError {
    let name = aya::programs::loaded_programs()
        .flatten()
        .find(|p| p.id() == running.program_id)
        .and_then(|p| p.name_as_str().map(str::to_owned))
        .unwrap_or_else(|| "?".into());
    DataplaneError::Busy {
        iface: iface.to_owned(),
        name,
        id: running.program_id,
        mode: running.mode,
        dir: dir.to_owned(),
    }
}
