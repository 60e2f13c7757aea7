//! `lb decap`: the worker side of lb's L3 forwarding. Attaches the
//! `lb_decap` program, which strips lb's IPIP and GUE headers from packets
//! to this host's addresses, and keeps it running through pins (one pin
//! directory per interface), so it outlives the command.

use std::{
    collections::HashSet,
    fs,
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _};
use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::{links::FdLink, Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
use lb_common::decap::{map_names, DecapConfig, DecapCounters, LocalAddrKey, PROGRAM};

use crate::{
    commands::cli::{DecapCommand, OutputFormat},
    dataplane::maps::open_pinned,
    dataplane::{check_pin_dir, prepare_pin_dir, DataplaneError, LINK_PIN},
    kernel::{
        netlink::Netlink,
        private::{canonical, remove_made},
    },
};

/// Where each interface's pins go unless `--pin-dir` says otherwise.
pub const PIN_ROOT: &str = "/sys/fs/bpf/lb-decap";
/// Prefix of the directory in the pin directory that names the interface
/// (bpffs holds pins and directories only), so `stats` can say it.
const IFACE_MARK: &str = "iface-";

/// Runs `lb decap …`; `pin_dir` is the global `--pin-dir`, if given.
pub fn command(
    command: DecapCommand,
    output: OutputFormat,
    pin_dir: Option<&Path>,
) -> anyhow::Result<()> {
    match command {
        DecapCommand::Attach { iface, gue_port } => {
            attach(&iface, &dir_for(pin_dir, &iface), gue_port)
        }
        DecapCommand::Detach { iface } => detach(&dir_for(pin_dir, &iface)),
        DecapCommand::Stats { iface } => {
            let dirs = match (pin_dir, iface) {
                (Some(dir), _) => vec![canonical(dir)],
                (None, Some(iface)) => vec![dir_for(None, &iface)],
                (None, None) => attached_dirs()?,
            };
            for dir in &dirs {
                check_pin_dir(dir)?;
            }
            stats(&dirs, output)
        }
    }
}

/// Refuses the pin directory of an `lb run` instance (the global --pin-dir
/// or LB_PIN_DIR may name one): both pin a `link`, and decap would take
/// the balancer's for its own.
fn check_not_balancer(dir: &Path) -> anyhow::Result<()> {
    if lb_common::map_names::ALL
        .iter()
        .any(|name| dir.join(name).exists())
    {
        bail!(
            "{} holds an lb instance's pins; give lb decap a directory of its own (--pin-dir, or unset LB_PIN_DIR)",
            dir.display()
        );
    }
    Ok(())
}

/// The pin directory of `iface`, in its one spelling, as `lb run`'s are.
fn dir_for(pin_dir: Option<&Path>, iface: &str) -> PathBuf {
    canonical(&pin_dir.map_or_else(|| Path::new(PIN_ROOT).join(iface), Path::to_owned))
}

/// The pin directories under [`PIN_ROOT`] that hold an attachment; none
/// is trusted unless no other user could have put it there.
fn attached_dirs() -> anyhow::Result<Vec<PathBuf>> {
    let root = canonical(Path::new(PIN_ROOT));
    check_pin_dir(&root)?;
    let mut dirs: Vec<PathBuf> = fs::read_dir(&root)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|dir| dir.join(LINK_PIN).exists())
        .collect();
    dirs.sort();
    Ok(dirs)
}

/// Attaches the program to `iface` (native XDP, generic where the driver
/// has none), or, when it is attached already, refreshes its addresses and
/// GUE port.
fn attach(iface: &str, dir: &Path, gue_port: u16) -> anyhow::Result<()> {
    if gue_port == 0 {
        bail!("`--gue-port` must be 1–65535");
    }
    let Some(if_index) = crate::kernel::iface::index_of(iface) else {
        return Err(DataplaneError::NoSuchInterface(iface.to_owned()).into());
    };
    if !crate::kernel::privileges::can_manage_xdp() {
        return Err(DataplaneError::NotPermitted.into());
    }
    check_not_balancer(dir)?;
    // Its parent (PIN_ROOT by default) is checked with it: another user's
    // directory there could be swapped for one they fill.
    let made = prepare_pin_dir(dir)?;
    let mut ebpf = match load(dir) {
        Ok(ebpf) => ebpf,
        Err(error) => {
            // A directory this made held nothing before.
            if !made.is_empty() {
                remove_pins(dir);
            }
            remove_made(&made);
            return Err(error);
        }
    };
    let addresses = Netlink::open()
        .and_then(|mut netlink| netlink.addresses())
        .context("listing this host's addresses")?;
    configure(&mut ebpf, &addresses, gue_port)?;
    let link_path = dir.join(LINK_PIN);
    if link_path.exists() {
        println!(
            "lb: decap on {iface} refreshed: {} local addresses, GUE port {gue_port}",
            addresses.len()
        );
        return Ok(());
    }
    let mode = attach_program(&mut ebpf, if_index, &link_path)
        .and_then(|mode| {
            fs::create_dir(dir.join(format!("{IFACE_MARK}{iface}")))?;
            Ok(mode)
        })
        .map_err(|error| {
            remove_pins(dir);
            remove_made(&made);
            error.context(format!("attaching lb_decap to {iface}"))
        })?;
    println!(
        "lb: decap attached to {iface} ({mode} XDP): {} local addresses, GUE port {gue_port}; pins in {}",
        addresses.len(),
        dir.display()
    );
    Ok(())
}

/// The decap object with its maps pinned under `dir` (pinned maps are
/// reused, so a second attach refreshes the running program's maps).
fn load(dir: &Path) -> anyhow::Result<Ebpf> {
    let mut loader = EbpfLoader::new();
    for &name in map_names::ALL {
        loader.map_pin_path(name, dir.join(name));
    }
    loader
        .load(crate::dataplane::object::LB_DECAP)
        .map_err(|e| DataplaneError::Load(Box::new(e)).into())
}

/// Writes the GUE port and makes the local-address map hold exactly
/// `addresses`.
fn configure(ebpf: &mut Ebpf, addresses: &[IpAddr], gue_port: u16) -> anyhow::Result<()> {
    let mut config: Array<&mut MapData, DecapConfig> = Array::try_from(
        ebpf.map_mut(map_names::CONFIG)
            .context("the decap object has its config map")?,
    )?;
    let value = DecapConfig {
        gue_port: gue_port.to_be(),
        pad: [0; 2],
    };
    config.set(0, value, 0)?;
    let mut local: HashMap<&mut MapData, LocalAddrKey, u8> = HashMap::try_from(
        ebpf.map_mut(map_names::LOCAL_ADDRS)
            .context("the decap object has its address map")?,
    )?;
    let wanted: HashSet<LocalAddrKey> = addresses.iter().map(|&a| LocalAddrKey::new(a)).collect();
    let stale: Vec<LocalAddrKey> = local
        .keys()
        .flatten()
        .filter(|k| !wanted.contains(k))
        .collect();
    for k in stale {
        local.remove(&k)?;
    }
    for k in wanted {
        local.insert(k, 1, 0)?;
    }
    Ok(())
}

/// Attaches in native mode, or generic where the driver has no native
/// XDP, and pins the link; returns the mode's name.
fn attach_program(
    ebpf: &mut Ebpf,
    if_index: u32,
    link_path: &Path,
) -> anyhow::Result<&'static str> {
    let program: &mut Xdp = ebpf
        .program_mut(PROGRAM)
        .context("the decap object has its program")?
        .try_into()?;
    program
        .load()
        .map_err(|e| DataplaneError::Verify(Box::new(e)))?;
    let (id, mode) = match program.attach_to_if_index(if_index, XdpMode::Driver) {
        Ok(id) => (id, "native"),
        Err(_) => (
            program.attach_to_if_index(if_index, XdpMode::Skb).context(
                "the interface may run another XDP program already (`bpftool net` shows it)",
            )?,
            "generic",
        ),
    };
    let link: FdLink = program
        .take_link(id)?
        .try_into()
        .map_err(|_| DataplaneError::NoBpfLink)?;
    link.pin(link_path)
        .with_context(|| format!("pinning the link at {}", link_path.display()))?;
    Ok(mode)
}

/// Removes the map pins and the link pin (which detaches the program), the
/// interface's name, then the directory if it is left empty.
fn remove_pins(dir: &Path) {
    for name in map_names::ALL.iter().chain([&LINK_PIN]) {
        let _ = fs::remove_file(dir.join(name));
    }
    if let Some(iface) = iface_of(dir) {
        let _ = fs::remove_dir(dir.join(format!("{IFACE_MARK}{iface}")));
    }
    let _ = fs::remove_dir(dir);
    if dir.parent() == Some(Path::new(PIN_ROOT)) {
        // Fails while another interface's pins are there, as it should.
        let _ = fs::remove_dir(PIN_ROOT);
    }
}

/// The interface the program pinned under `dir` is attached to.
fn iface_of(dir: &Path) -> Option<String> {
    fs::read_dir(dir).ok()?.flatten().find_map(|entry| {
        let name = entry.file_name().to_string_lossy().into_owned();
        name.strip_prefix(IFACE_MARK).map(str::to_owned)
    })
}

fn detach(dir: &Path) -> anyhow::Result<()> {
    check_pin_dir(dir)?;
    check_not_balancer(dir)?;
    let pinned = map_names::ALL
        .iter()
        .chain([&LINK_PIN])
        .any(|name| dir.join(name).exists());
    if !pinned {
        bail!(
            "no lb decap is attached with pins under {}; `lb decap stats` lists the attached ones",
            dir.display()
        );
    }
    if !crate::kernel::privileges::can_manage_xdp() {
        return Err(DataplaneError::NotPermitted.into());
    }
    remove_pins(dir);
    println!(
        "lb: decap detached; removed the pins under {}",
        dir.display()
    );
    Ok(())
}

/// The summed per-CPU counters pinned under `dir`.
pub fn counters(dir: &Path) -> anyhow::Result<DecapCounters> {
    let map = open_pinned(dir, map_names::COUNTERS).map_err(|_| {
        anyhow::anyhow!(
            "no lb decap is attached with pins under {} (or it needs root)",
            dir.display()
        )
    })?;
    let array: PerCpuArray<MapData, DecapCounters> = map.try_into()?;
    let mut total = DecapCounters::default();
    for copy in array.get(&0, 0)?.iter() {
        total.add(copy);
    }
    Ok(total)
}

fn stats(dirs: &[PathBuf], output: OutputFormat) -> anyhow::Result<()> {
    if dirs.is_empty() {
        bail!("no lb decap is attached (nothing pinned under {PIN_ROOT})");
    }
    let rows: Vec<(String, DecapCounters)> = dirs
        .iter()
        .map(|dir| {
            let name = iface_of(dir).unwrap_or_else(|| "?".into());
            counters(dir).map(|c| (name, c))
        })
        .collect::<anyhow::Result<_>>()?;
    match output {
        OutputFormat::Json => {
            let doc: Vec<serde_json::Value> = rows
                .iter()
                .map(|(name, c)| serde_json::json!({ "iface": name, "counters": c }))
                .collect();
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
        OutputFormat::Table => {
            println!(
                "{:<16} {}",
                "IFACE",
                DecapCounters::NAMES
                    .iter()
                    .map(|n| format!("{n:>12}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
            for (name, c) in rows {
                let values: Vec<String> = c.values().iter().map(|v| format!("{v:>12}")).collect();
                println!("{name:<16} {}", values.join(" "));
            }
        }
    }
    Ok(())
}
