//! Loading, pinning and attaching petrel's eBPF programs.
//!
//! Everything lives under one bpffs root (default /sys/fs/bpf/petrel):
//! `maps/<NAME>_V1` for the maps (pinned by name, re-used by the next load) and
//! `links/<program>@<target>` for the links, so programs stay attached when the process that
//! loaded them exits, and a new load swaps programs in place (BPF_LINK_UPDATE) without a moment
//! detached. `progs/` holds the two pod-facing TC programs, pinned for petrel-cni: it attaches
//! them to a new pod's veth itself (see `attach_tc_ingress`), so a pod created while the agent
//! is down is wired all the same.

use std::{
    fs, io,
    os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd},
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfError, EbpfLoader,
    programs::{
        CgroupAttachMode, CgroupSock, CgroupSockAddr, Program, ProgramError, SchedClassifier,
        TcAttachType,
        links::{FdLink, LinkError, PinnedLink},
        tc::SchedClassifierLink,
    },
    sys::SyscallError,
};

use crate::{
    maps,
    sys::{self, sys_bpf},
};

/// The eBPF object built by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/petrel-ebpf"));

/// Program names in the object.
pub const PROG_TC_POD_INGRESS: &str = "tc_pod_ingress";
pub const PROG_TC_EXTERNAL_INGRESS: &str = "tc_external_ingress";
pub const PROG_TC_POD_EGRESS: &str = "tc_pod_egress";
pub const PROG_TC_EXTERNAL_EGRESS: &str = "tc_external_egress";
/// The programs pinned under `progs/` for petrel-cni, by name (what it attaches to a pod's
/// host-side veth: ingress, then egress).
pub const POD_PROGRAMS: [&str; 2] = [PROG_TC_POD_INGRESS, PROG_TC_POD_EGRESS];
/// The socket-LB programs, attached together to one cgroup: the IPv4 hooks, and the IPv6 ones
/// (which translate IPv4-mapped addresses on AF_INET6 sockets).
/// The cgroup sock program attached beside them: a closed socket's SOCK_REVNAT entry goes with it.
pub const PROG_SOCK_RELEASE: &str = "sock_release";
pub const SOCK_PROGRAMS: [&str; 8] = [
    "sock_connect4",
    "sock_sendmsg4",
    "sock_recvmsg4",
    "sock_getpeername4",
    "sock_connect6",
    "sock_sendmsg6",
    "sock_recvmsg6",
    "sock_getpeername6",
];

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("loading the eBPF object (maps pinned under {pins}): {source}")]
    Load {
        pins: PathBuf,
        #[source]
        source: Box<EbpfError>,
    },
    #[error("{op} program {program}: {source}")]
    Program {
        op: &'static str,
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("{op} link {path}: {source}")]
    Link {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: LinkError,
    },
    #[error("invalid datapath configuration: {0}")]
    Config(String),
    #[error("program {0} is missing from the eBPF object")]
    MissingProgram(&'static str),
    #[error(transparent)]
    Maps(#[from] maps::MapsError),
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> DatapathError + 'a {
    move |source| DatapathError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Where the datapath lives and how big its maps are.
#[derive(Clone, Debug)]
pub struct DatapathConfig {
    /// bpffs folder holding `maps/` and `links/`.
    pub bpffs_root: PathBuf,
    /// Capacities by map name; maps not named keep the object's default (at least 100k service
    /// ports and 1M backends).
    pub max_entries: Vec<(&'static str, u32)>,
    /// Size of each Maglev ring (a prime).
    pub maglev_size: u32,
    /// How many services can use Maglev at once.
    pub maglev_rings: u32,
}

impl Default for DatapathConfig {
    fn default() -> Self {
        DatapathConfig {
            bpffs_root: PathBuf::from("/sys/fs/bpf/petrel"),
            max_entries: Vec::new(),
            maglev_size: crate::maglev::DEFAULT_SIZE,
            maglev_rings: 64,
        }
    }
}

/// The capacity (max_entries) of map `name` pinned under `bpffs_root`, None when nothing is
/// pinned there. A pinned map keeps the size it was created with: a load re-uses it whatever
/// `DatapathConfig::max_entries` asks.
pub fn pinned_capacity(bpffs_root: &Path, name: &str) -> Result<Option<u32>, DatapathError> {
    let pin = bpffs_root.join("maps").join(name);
    if !pin.exists() {
        return Ok(None);
    }
    let data = aya::maps::MapData::from_pin(&pin).map_err(|e| DatapathError::Io {
        op: "opening pinned map",
        path: pin.clone(),
        source: io::Error::other(e.to_string()),
    })?;
    let info = data.info().map_err(|e| DatapathError::Io {
        op: "reading the size of pinned map",
        path: pin,
        source: io::Error::other(e.to_string()),
    })?;
    Ok(Some(info.max_entries()))
}

/// A loaded datapath: the object's programs, with maps pinned under the bpffs root.
pub struct Datapath {
    ebpf: Ebpf,
    root: PathBuf,
}

impl Datapath {
    /// Loads the object, re-using maps already pinned under the root (so a restart keeps every
    /// service, backend and conntrack entry).
    pub fn load(config: &DatapathConfig) -> Result<Self, DatapathError> {
        sys::ensure_bpffs().map_err(io_err("mounting bpffs at", Path::new("/sys/fs/bpf")))?;
        sys::raise_memlock();
        let root = config.bpffs_root.clone();
        let maps_dir = root.join("maps");
        let links_dir = root.join("links");
        for dir in [&maps_dir, &links_dir] {
            fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
        }
        if !sys::is_bpffs(&maps_dir) {
            return Err(DatapathError::Io {
                op: "pinning maps in",
                path: maps_dir,
                source: io::Error::other("not on a bpffs mount"),
            });
        }
        // Maps of an earlier layout: their contents cannot be read as the new one (an upgrade
        // starts those maps empty, see maps::OBSOLETE).
        for name in maps::OBSOLETE {
            let pin = maps_dir.join(name);
            match fs::remove_file(&pin) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(io_err("removing obsolete pin", &pin)(e));
                }
                _ => {}
            }
        }
        let mut loader = EbpfLoader::new();
        loader.default_map_pin_directory(&maps_dir);
        if !crate::maglev::is_prime(config.maglev_size) {
            return Err(DatapathError::Config(format!(
                "Maglev table size {} is not prime",
                config.maglev_size
            )));
        }
        loader.map_max_entries(
            maps::MAGLEV,
            config
                .maglev_size
                .saturating_mul(config.maglev_rings.max(1)),
        );
        for (name, n) in &config.max_entries {
            loader.map_max_entries(name, *n);
        }
        let ebpf = loader.load(OBJECT).map_err(|source| DatapathError::Load {
            pins: maps_dir,
            source: Box::new(source),
        })?;
        let dp = Datapath { ebpf, root };
        dp.service_maps()?.set_maglev_size(config.maglev_size)?;
        Ok(dp)
    }

    pub fn maps_dir(&self) -> PathBuf {
        self.root.join("maps")
    }

    /// Opens typed accessors on the pinned maps.
    pub fn service_maps(&self) -> Result<maps::ServiceMaps, DatapathError> {
        Ok(maps::ServiceMaps::open(&self.maps_dir())?)
    }

    /// The program `name`, typed as `T` and loaded into the kernel (once per `Datapath`).
    fn program<'a, T>(&'a mut self, name: &'static str) -> Result<&'a mut T, DatapathError>
    where
        T: ProgramLoad,
        &'a mut T: TryFrom<&'a mut Program, Error = ProgramError>,
    {
        let prog: &mut T = self
            .ebpf
            .program_mut(name)
            .ok_or(DatapathError::MissingProgram(name))?
            .try_into()
            .map_err(prog_err("typing", name))?;
        if !prog.is_loaded() {
            prog.load_once().map_err(prog_err("loading", name))?;
        }
        Ok(prog)
    }

    /// Attaches the pod-facing TC program to `iface`'s ingress (TCX on kernels >= 6.6) in the
    /// calling thread's network namespace, or swaps the program inside an existing pinned link.
    /// Its egress gets the program that tracks connections reaching the pod from outside the
    /// cluster (so masquerading leaves their answers alone). `Replaced` when either link was
    /// swapped in place (also when petrel-cni attached them first).
    ///
    /// WARNING: petrel-cni attaches the same programs to a new veth at ADD (`progs/`); both
    /// sides hold an exclusive flock on `links/` from "is a link pinned?" to the pin, or a veth
    /// could end up with the program attached twice (TCX runs every attached program).
    pub fn attach_tc_ingress(&mut self, iface: &str) -> Result<AttachOutcome, DatapathError> {
        let links = self.root.join("links");
        let _lock = lock_dir(&links).map_err(io_err("locking", &links))?;
        let ingress = self.attach_tc(PROG_TC_POD_INGRESS, iface, TcAttachType::Ingress)?;
        let egress = self.attach_tc(PROG_TC_POD_EGRESS, iface, TcAttachType::Egress)?;
        Ok(ingress.or(egress))
    }

    /// Pins the pod-facing programs of this load under `progs/` (replacing an earlier load's,
    /// by an atomic rename), where petrel-cni finds them.
    pub fn pin_pod_programs(&mut self) -> Result<(), DatapathError> {
        let dir = self.root.join("progs");
        fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
        for name in POD_PROGRAMS {
            // bpffs refuses dots in names: the temporary pin is `<name>-new`.
            let (tmp, pin) = (dir.join(format!("{name}-new")), dir.join(name));
            match fs::remove_file(&tmp) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(io_err("removing", &tmp)(e));
                }
                _ => {}
            }
            let prog: &mut SchedClassifier = self.program(name)?;
            prog.pin(&tmp)
                .map_err(|e| io_err("pinning program at", &tmp)(io::Error::other(e.to_string())))?;
            fs::rename(&tmp, &pin).map_err(io_err("renaming into place", &pin))?;
        }
        Ok(())
    }

    /// Removes the pinned pod-interface links whose interface is not in `existing` (the pod and
    /// its veth are gone; the kernel already detached the link, the pin only keeps it around).
    /// Returns the interfaces pruned.
    pub fn prune_pod_links(&self, existing: &std::collections::HashSet<String>) -> Vec<String> {
        let prefixes = POD_PROGRAMS.map(|p| format!("{p}@"));
        let mut pruned = Vec::new();
        let Ok(entries) = fs::read_dir(self.root.join("links")) else {
            return pruned;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(iface) = prefixes
                .iter()
                .find_map(|p| name.strip_prefix(p.as_str()))
                .map(unescape_iface)
            else {
                continue;
            };
            if !existing.contains(&iface)
                && fs::remove_file(e.path()).is_ok()
                && !pruned.contains(&iface)
            {
                pruned.push(iface);
            }
        }
        pruned
    }

    /// Attaches the TC programs of an external interface: at ingress, the one for traffic from
    /// outside the node (NodePort, externalIPs, LoadBalancer) and for replies of SNATed and
    /// masqueraded flows; at egress, the one that reverse-NATs answers of host-network backends
    /// on this node. `Replaced` when either link was swapped in place.
    pub fn attach_external(&mut self, iface: &str) -> Result<AttachOutcome, DatapathError> {
        let ingress = self.attach_tc(PROG_TC_EXTERNAL_INGRESS, iface, TcAttachType::Ingress)?;
        let egress = self.attach_tc(PROG_TC_EXTERNAL_EGRESS, iface, TcAttachType::Egress)?;
        Ok(ingress.or(egress))
    }

    fn attach_tc(
        &mut self,
        name: &'static str,
        iface: &str,
        at: TcAttachType,
    ) -> Result<AttachOutcome, DatapathError> {
        let link_path = self
            .root
            .join("links")
            .join(format!("{name}@{}", escape_iface(iface)));
        let prog: &mut SchedClassifier = self.program(name)?;
        // A pin left by an earlier interface of the same name (a pod's veth deleted and made
        // again): its link went with that device, so swapping a program into it would wire
        // nothing. It is dropped and the new interface gets a link of its own.
        if let (Some(pinned), Some(now)) = (pinned_link_ifindex(&link_path), ifindex(iface))
            && pinned != now
        {
            fs::remove_file(&link_path).map_err(io_err("removing stale link pin", &link_path))?;
        }
        let (id, outcome) = match take_pinned_link(&link_path)? {
            Some(old) => {
                let old =
                    SchedClassifierLink::try_from(old).map_err(link_err("adopting", &link_path))?;
                let id = prog
                    .attach_to_link(old)
                    .map_err(prog_err("replacing in pinned link", name))?;
                (id, AttachOutcome::Replaced)
            }
            None => {
                let id = prog
                    .attach(iface, at)
                    .map_err(prog_err("attaching", name))?;
                (id, AttachOutcome::Attached)
            }
        };
        let link = prog
            .take_link(id)
            .map_err(prog_err("taking link of", name))?;
        pin_link(link, &link_path)?;
        Ok(outcome)
    }

    /// Attaches socket-level load balancing (connect, sendmsg, recvmsg, getpeername, for IPv4
    /// and IPv6 sockets: `SOCK_PROGRAMS`) to the cgroup v2 folder `cgroup`, or swaps the programs
    /// in place when pinned links exist. `Replaced` when any was swapped (an upgrade from a
    /// release without the IPv6 hooks attaches those anew beside the swapped ones).
    pub fn attach_cgroup(&mut self, cgroup: &Path) -> Result<AttachOutcome, DatapathError> {
        let mut outcome = AttachOutcome::Attached;
        for name in SOCK_PROGRAMS {
            if self.attach_sock::<CgroupSockAddr>(name, cgroup)? == AttachOutcome::Replaced {
                outcome = AttachOutcome::Replaced;
            }
        }
        // An upgrade from a release without it attaches it anew beside the swapped ones.
        if self.attach_sock::<CgroupSock>(PROG_SOCK_RELEASE, cgroup)? == AttachOutcome::Replaced {
            outcome = AttachOutcome::Replaced;
        }
        Ok(outcome)
    }

    fn attach_sock<T>(
        &mut self,
        name: &'static str,
        cgroup: &Path,
    ) -> Result<AttachOutcome, DatapathError>
    where
        T: CgroupProgram,
        for<'a> &'a mut T: TryFrom<&'a mut Program, Error = ProgramError>,
    {
        let link_path = self.root.join("links").join(name);
        let prog: &mut T = self.program(name)?;
        if link_path.exists() {
            let link = bpf_obj_get(&link_path)?;
            let prog_fd = prog.raw_fd().map_err(prog_err("getting fd of", name))?;
            bpf_link_update(&link, prog_fd).map_err(io_err("BPF_LINK_UPDATE on", &link_path))?;
            return Ok(AttachOutcome::Replaced);
        }
        let cg = fs::File::open(cgroup).map_err(io_err("opening cgroup", cgroup))?;
        let link = prog.attach_link(cg).map_err(prog_err("attaching", name))?;
        pin_fd_link(link, &link_path)?;
        Ok(AttachOutcome::Attached)
    }

    /// Runs a TC program once on `packet` with BPF_PROG_TEST_RUN, against the live maps, and
    /// returns its verdict and the packet as the program left it. `external`: the program for
    /// external interfaces, else the pod-facing one.
    pub fn test_run_tc(
        &mut self,
        external: bool,
        packet: &[u8],
    ) -> Result<(u32, Vec<u8>), DatapathError> {
        let name = if external {
            PROG_TC_EXTERNAL_INGRESS
        } else {
            PROG_TC_POD_INGRESS
        };
        self.test_run_tc_program(name, packet)
    }

    /// `test_run_tc` for any of the four TC programs by name (`PROG_TC_*`): the fuzz target
    /// runs the egress ones too.
    pub fn test_run_tc_program(
        &mut self,
        name: &'static str,
        packet: &[u8],
    ) -> Result<(u32, Vec<u8>), DatapathError> {
        let prog: &mut SchedClassifier = self.program(name)?;
        let mut out = vec![0u8; packet.len().max(128) + 64];
        let mut opts = aya::TestRunOptions::new();
        opts.data_in = Some(packet);
        opts.data_out = Some(&mut out);
        let r = aya::TestRun::test_run(&*prog, opts).map_err(prog_err("test-running", name))?;
        out.truncate(r.data_size_out as usize);
        Ok((r.return_value, out))
    }

    /// Removes petrel's pins under `root` by name, and the folders once empty; refuses (removing
    /// nothing) a root that is not on bpffs or holds anything else. See `cleanup`.
    pub fn remove(root: &Path) -> Result<crate::cleanup::Removed, crate::cleanup::CleanupError> {
        crate::cleanup::remove(root)
    }
}

/// Loading, for the program types petrel attaches (their `load` takes no arguments).
trait ProgramLoad {
    fn is_loaded(&self) -> bool;
    fn load_once(&mut self) -> Result<(), ProgramError>;
}

macro_rules! program_load {
    ($($t:ty),*) => {$(
        impl ProgramLoad for $t {
            fn is_loaded(&self) -> bool {
                self.fd().is_ok()
            }
            fn load_once(&mut self) -> Result<(), ProgramError> {
                self.load()
            }
        }
    )*};
}
program_load!(SchedClassifier, CgroupSockAddr, CgroupSock);

/// The cgroup program types socket-LB attaches: the same calls, different link types.
trait CgroupProgram: ProgramLoad {
    fn raw_fd(&self) -> Result<std::os::fd::RawFd, ProgramError>;
    /// Attaches to `cgroup` (one program per attach type) and hands over the link to pin.
    fn attach_link(&mut self, cgroup: fs::File) -> Result<FdLink, ProgramError>;
}

macro_rules! cgroup_program {
    ($($t:ty),*) => {$(
        impl CgroupProgram for $t {
            fn raw_fd(&self) -> Result<std::os::fd::RawFd, ProgramError> {
                Ok(self.fd()?.as_fd().as_raw_fd())
            }
            fn attach_link(&mut self, cgroup: fs::File) -> Result<FdLink, ProgramError> {
                let id = self.attach(cgroup, CgroupAttachMode::Single)?;
                let link = self.take_link(id)?;
                FdLink::try_from(link).map_err(|e| ProgramError::IOError(io::Error::other(e.to_string())))
            }
        }
    )*};
}
cgroup_program!(CgroupSockAddr, CgroupSock);

fn prog_err(op: &'static str, program: &'static str) -> impl FnOnce(ProgramError) -> DatapathError {
    move |source| DatapathError::Program {
        op,
        program,
        source,
    }
}

fn link_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(LinkError) -> DatapathError + 'a {
    move |source| DatapathError::Link {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// What an attach did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachOutcome {
    /// A new link was created and pinned.
    Attached,
    /// The program inside an existing pinned link was swapped (hitless upgrade).
    Replaced,
}

impl AttachOutcome {
    /// The outcome of two attaches: `Replaced` if either swapped a program in place.
    fn or(self, other: AttachOutcome) -> AttachOutcome {
        if self == AttachOutcome::Replaced || other == AttachOutcome::Replaced {
            AttachOutcome::Replaced
        } else {
            AttachOutcome::Attached
        }
    }
}

/// bpffs refuses names with a dot, which interface names may hold (`eth0.100`, `petrel.vxlan`):
/// a dot becomes `%`, which no interface name can hold (the kernel reads it as a name template).
fn escape_iface(iface: &str) -> String {
    iface.replace('.', "%")
}

fn unescape_iface(pin: &str) -> String {
    pin.replace('%', ".")
}

/// The index of interface `iface` in the calling thread's namespace.
fn ifindex(iface: &str) -> Option<u32> {
    let c = std::ffi::CString::new(iface).ok()?;
    // SAFETY: a NUL-terminated name that outlives the call.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// The interface a pinned TCX link is attached to (0 once its device is gone); None when there
/// is no such pin or it cannot be read.
fn pinned_link_ifindex(pin: &Path) -> Option<u32> {
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    let link = bpf_obj_get(pin).ok()?;
    // struct bpf_link_info: u32 type, id, prog_id, then the union (8-aligned) whose tcx member
    // starts with u32 ifindex.
    let mut info = [0u64; 16];
    let mut attr = [0u64; 16];
    attr[0] = u64::from(link.as_raw_fd() as u32) | ((size_of_val(&info) as u64) << 32);
    attr[1] = info.as_mut_ptr() as u64;
    sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).ok()?;
    Some(info[2] as u32)
}

/// An exclusive flock on the folder `dir`, held until the returned file is dropped (petrel-cni's
/// `tcx::lock_links` takes the same lock).
fn lock_dir(dir: &Path) -> io::Result<fs::File> {
    let f = fs::File::open(dir)?;
    // SAFETY: flock on an fd we own, for the life of `f`.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(f)
}

/// The link pinned at `path`, unpinned but kept alive by the returned fd; None when absent.
fn take_pinned_link(path: &Path) -> Result<Option<FdLink>, DatapathError> {
    match PinnedLink::from_pin(path) {
        Ok(p) => p
            .unpin()
            .map(Some)
            .map_err(|e| io_err("unpinning", path)(io::Error::other(e.to_string()))),
        Err(LinkError::SyscallError(SyscallError { io_error, .. }))
            if io_error.kind() == io::ErrorKind::NotFound =>
        {
            Ok(None)
        }
        Err(source) => Err(DatapathError::Link {
            op: "opening pinned",
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Pins a program's new link at `path`, where the next agent finds (and adopts) it.
fn pin_link<L>(link: L, path: &Path) -> Result<(), DatapathError>
where
    FdLink: TryFrom<L, Error = LinkError>,
{
    pin_fd_link(
        FdLink::try_from(link).map_err(link_err("converting", path))?,
        path,
    )
}

fn pin_fd_link(link: FdLink, path: &Path) -> Result<(), DatapathError> {
    link.pin(path)
        .map(drop)
        .map_err(|e| io_err("pinning link at", path)(io::Error::other(e.to_string())))
}

// aya 0.14 has no BPF_LINK_UPDATE for cgroup links: the two commands are issued directly
// (`sys::sys_bpf`).
fn bpf_obj_get(path: &Path) -> Result<OwnedFd, DatapathError> {
    const BPF_OBJ_GET: libc::c_long = 7;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io_err("opening pin", path)(io::Error::other(e)))?;
    let mut attr = [0u64; 16];
    attr[0] = c.as_ptr() as u64; // bpf_attr.pathname
    let fd = sys_bpf(BPF_OBJ_GET, &mut attr).map_err(io_err("BPF_OBJ_GET", path))?;
    // SAFETY: the kernel returned a new fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn bpf_link_update(link: &OwnedFd, prog_fd: i32) -> io::Result<()> {
    const BPF_LINK_UPDATE: libc::c_long = 29;
    let mut attr = [0u64; 16];
    // struct { __u32 link_fd; __u32 new_prog_fd; __u32 flags; __u32 old_prog_fd; }
    attr[0] = u64::from(link.as_raw_fd() as u32) | (u64::from(prog_fd as u32) << 32);
    sys_bpf(BPF_LINK_UPDATE, &mut attr).map(drop)
}

#[cfg(test)]
mod tests {
    #[test]
    fn interface_names_with_dots_make_valid_pin_names() {
        let pin = super::escape_iface("eth0.100");
        assert!(!pin.contains('.'));
        assert_eq!(super::unescape_iface(&pin), "eth0.100");
    }
}
