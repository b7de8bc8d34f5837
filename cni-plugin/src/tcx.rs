//! Wiring a pod into the datapath at ADD, without the agent: the agent pins its two pod-facing
//! TC programs under `<bpffsRoot>/progs/`; ADD opens them and attaches them to the new host-side
//! veth as TCX links (kernel >= 6.6), pinned under `<bpffsRoot>/links/` with the names the agent
//! uses, so the agent adopts them (and swaps in a newer program) as its own.
//!
//! A few raw bpf(2) commands rather than a dependency on aya: the plugin stays small and
//! synchronous.
//!
//! WARNING: the agent attaches the same programs when it sees the veth appear. Both sides hold
//! an exclusive flock on `<bpffsRoot>/links` from "is a link pinned?" to the pin (the agent's
//! `Datapath::attach_tc_ingress`): without it a veth could get each program twice.

use std::{
    ffi::CString,
    fs, io,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

/// The pod programs (the agent's `datapath::POD_PROGRAMS`) and their TCX attach types:
/// BPF_TCX_INGRESS (46) and BPF_TCX_EGRESS (47) of enum bpf_attach_type.
const PROGRAMS: [(&str, u32); 2] = [("tc_pod_ingress", 46), ("tc_pod_egress", 47)];

const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_CREATE: libc::c_long = 28;

/// What `attach` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Both programs attached and their links pinned.
    Attached,
    /// The links were pinned already (the agent was quicker).
    AlreadyWired,
    /// No pinned programs: the agent has not run on this node yet (it attaches when it starts).
    NoPrograms,
}

/// Attaches the pinned pod programs to `iface` (in the calling process's namespace, the host's)
/// and pins the links.
pub fn attach(root: &Path, iface: &str, ifindex: u32) -> io::Result<Outcome> {
    let links = root.join("links");
    if !root.join("progs").is_dir() || !links.is_dir() {
        return Ok(Outcome::NoPrograms);
    }
    let _lock = lock_links(&links)?;
    let pins: Vec<_> = PROGRAMS
        .iter()
        .map(|(prog, _)| links.join(format!("{prog}@{iface}")))
        .collect();
    // A pin of this name may be the agent's link on this very veth (it saw it appear), or a
    // stale one of an earlier veth of the same name (an ADD retried after a kill), whose link
    // the kernel detached: that one is replaced.
    let mut current = 0;
    for pin in &pins {
        match pinned_link_ifindex(pin) {
            Ok(Some(i)) if i == ifindex => current += 1,
            Ok(Some(_)) => {
                fs::remove_file(pin).map_err(|e| annotate(e, "removing stale pin", pin))?
            }
            Ok(None) => {}
            Err(e) => return Err(e),
        }
    }
    if current == pins.len() {
        return Ok(Outcome::AlreadyWired);
    }
    let mut progs = Vec::new();
    for (prog, _) in PROGRAMS {
        match obj_get(&root.join("progs").join(prog)) {
            Ok(fd) => progs.push(fd),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Outcome::NoPrograms),
            Err(e) => return Err(e),
        }
    }
    for ((prog_fd, (_, attach_type)), pin) in progs.iter().zip(PROGRAMS).zip(&pins) {
        if pin.exists() {
            continue;
        }
        let link = link_create_tcx(prog_fd, ifindex, attach_type)?;
        obj_pin(&link, pin)?;
    }
    Ok(Outcome::Attached)
}

/// Removes the link pins of `iface` (DEL: the veth is gone, so the kernel detached them
/// already; the pins only keep the link objects around). Absent pins are fine.
pub fn unpin(root: &Path, iface: &str) -> io::Result<()> {
    let links = root.join("links");
    if !links.is_dir() {
        return Ok(());
    }
    let _lock = lock_links(&links)?;
    for (prog, _) in PROGRAMS {
        match fs::remove_file(links.join(format!("{prog}@{iface}"))) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// An exclusive flock on `links`, until the returned file is dropped.
pub fn lock_links(links: &Path) -> io::Result<fs::File> {
    let f = fs::File::open(links)?;
    // SAFETY: flock on an fd we own, for the life of `f`.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(f)
}

fn sys_bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> io::Result<libc::c_long> {
    // SAFETY: attr is a zeroed buffer the size of the kernel's union bpf_attr prefix it reads
    // (128 bytes), alive for the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), size_of_val(attr)) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn owned(fd: libc::c_long) -> OwnedFd {
    // SAFETY: the kernel returned a new fd that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)
}

fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c = c_path(path)?;
    let mut attr = [0u64; 16];
    attr[0] = c.as_ptr() as u64; // pathname
    sys_bpf(BPF_OBJ_GET, &mut attr)
        .map(owned)
        .map_err(|e| annotate(e, "opening pinned program", path))
}

/// The interface a pinned TCX link is attached to (0 once its device is gone); None: no pin.
fn pinned_link_ifindex(pin: &Path) -> io::Result<Option<u32>> {
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    let link = match obj_get(pin) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    // struct bpf_link_info: u32 type, id, prog_id, then the union (8-aligned) whose tcx member
    // starts with u32 ifindex.
    let mut info = [0u64; 16];
    let mut attr = [0u64; 16];
    attr[0] = u64::from(link.as_raw_fd() as u32) | ((size_of_val(&info) as u64) << 32);
    attr[1] = info.as_mut_ptr() as u64;
    sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).map_err(|e| annotate(e, "reading link", pin))?;
    Ok(Some(info[2] as u32))
}

fn obj_pin(fd: &OwnedFd, path: &Path) -> io::Result<()> {
    let c = c_path(path)?;
    let mut attr = [0u64; 16];
    attr[0] = c.as_ptr() as u64; // pathname
    attr[1] = u64::from(fd.as_raw_fd() as u32); // bpf_fd (file_flags 0)
    sys_bpf(BPF_OBJ_PIN, &mut attr)
        .map(drop)
        .map_err(|e| annotate(e, "pinning link at", path))
}

/// BPF_LINK_CREATE for TCX: struct { u32 prog_fd; u32 target_ifindex; u32 attach_type;
/// u32 flags; tcx { u32 relative_fd; u32 pad; u64 expected_revision } }, all else zero (the
/// program goes last, after any other tool's).
fn link_create_tcx(prog: &OwnedFd, ifindex: u32, attach_type: u32) -> io::Result<OwnedFd> {
    let mut attr = [0u64; 16];
    attr[0] = u64::from(prog.as_raw_fd() as u32) | (u64::from(ifindex) << 32);
    attr[1] = u64::from(attach_type);
    sys_bpf(BPF_LINK_CREATE, &mut attr).map(owned).map_err(|e| {
        annotate(
            e,
            "attaching (TCX) to interface",
            Path::new(&ifindex.to_string()),
        )
    })
}

fn annotate(e: io::Error, op: &str, what: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{op} {}: {e}", what.display()))
}
