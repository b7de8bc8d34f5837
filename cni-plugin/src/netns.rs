//! CNI_NETNS, checked before the plugin enters it: it must be a network namespace (a file on
//! nsfs whose `NS_GET_NSTYPE` is `CLONE_NEWNET`) and not the plugin's own, since configuring the
//! host's namespace as a pod's would give the host the pod's address and default route.

use std::{
    fs::OpenOptions,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _, unix::fs::OpenOptionsExt as _},
    path::Path,
};

use nix::sys::statfs::{NSFS_MAGIC, fstatfs, statfs};
use petrel_netlink::Netns;

use crate::{
    error::{CniError, Result},
    fsio::kind_of,
};

fn ns_type_name(t: libc::c_int) -> &'static str {
    match t {
        libc::CLONE_NEWNS => "a mount",
        libc::CLONE_NEWUTS => "a UTS",
        libc::CLONE_NEWIPC => "an IPC",
        libc::CLONE_NEWUSER => "a user",
        libc::CLONE_NEWPID => "a PID",
        libc::CLONE_NEWCGROUP => "a cgroup",
        0x80 => "a time", // CLONE_NEWTIME, Linux 5.6
        _ => "another kind of",
    }
}

/// Opens CNI_NETNS after checking what it is. Every refusal is code 4 and names CNI_NETNS.
pub fn open(path: &Path) -> Result<Netns> {
    let name = path.display();
    let refuse = |why: String| CniError::env(format!("CNI_NETNS {name} {why}"));
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => refuse("does not exist".into()),
        _ => refuse(format!("cannot be looked up: {e}")),
    })?;
    let not_netns =
        |what: String| refuse(format!("exists but is not a network namespace ({what})"));
    // On the path first, so nothing that is not a namespace file (a FIFO, a device) is opened.
    let on_nsfs = statfs(path)
        .map_err(|e| refuse(format!("cannot be looked up: {e}")))?
        .filesystem_type()
        == NSFS_MAGIC;
    if !on_nsfs {
        return Err(not_netns(format!(
            "{}, not a namespace file",
            kind_of(meta.file_type())
        )));
    }
    // Non-blocking in case it was swapped for a FIFO since; checked again on the descriptor.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| refuse(format!("cannot be opened: {e}")))?;
    let on_nsfs = fstatfs(&file)
        .map_err(|e| refuse(format!("cannot be looked up: {e}")))?
        .filesystem_type()
        == NSFS_MAGIC;
    if !on_nsfs {
        return Err(not_netns("it changed while being opened".into()));
    }
    // SAFETY: NS_GET_NSTYPE (Linux 4.11) takes no argument and only reads the descriptor,
    // which is open for the whole call.
    let kind = unsafe { libc::ioctl(file.as_raw_fd(), libc::NS_GET_NSTYPE) };
    if kind < 0 {
        return Err(not_netns(format!(
            "NS_GET_NSTYPE: {}",
            std::io::Error::last_os_error()
        )));
    }
    if kind != libc::CLONE_NEWNET {
        return Err(not_netns(format!("{} namespace", ns_type_name(kind))));
    }
    let own = std::fs::metadata("/proc/self/ns/net")
        .map_err(|e| CniError::io("reading the plugin's own network namespace", e))?;
    let this = file
        .metadata()
        .map_err(|e| refuse(format!("cannot be looked up: {e}")))?;
    if (this.dev(), this.ino()) == (own.dev(), own.ino()) {
        return Err(refuse(
            "is the plugin's own network namespace (the host's), not a pod's".into(),
        ));
    }
    Ok(Netns::from_file(file, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What needs no privilege: missing paths, files that are not namespaces, namespaces of
    /// another kind, and the plugin's own namespace. (A pod's namespace needs root to make:
    /// tests/e2e/tests/bad_input_cni.rs.)
    #[test]
    fn only_another_network_namespace_is_accepted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("file");
        std::fs::write(&file, b"").expect("write");
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        let cases = [
            (dir.path().join("missing"), "does not exist"),
            (
                file,
                "exists but is not a network namespace (a regular file",
            ),
            (fifo, "exists but is not a network namespace (a FIFO"),
            (
                dir.path().to_path_buf(),
                "(a directory, not a namespace file)",
            ),
            ("/proc/self/ns/mnt".into(), "(a mount namespace)"),
            ("/proc/self/ns/uts".into(), "(a UTS namespace)"),
            (
                "/proc/self/ns/net".into(),
                "is the plugin's own network namespace",
            ),
        ];
        for (path, fragment) in cases {
            let e = open(&path)
                .err()
                .unwrap_or_else(|| panic!("{} accepted", path.display()));
            assert_eq!(e.code(), 4, "{}", e.msg());
            assert!(
                e.msg()
                    .starts_with(&format!("CNI_NETNS {}", path.display())),
                "{}",
                e.msg()
            );
            assert!(e.msg().contains(fragment), "{}", e.msg());
        }
    }
}
