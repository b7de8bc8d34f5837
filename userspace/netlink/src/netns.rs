//! Network namespaces. A namespace belongs to a thread, and a netlink socket stays in the
//! namespace it was opened in: so a short-lived scoped thread enters the namespace, opens the
//! socket there, and ends; the caller then talks to that namespace from any thread.

use std::{
    fs::File,
    io,
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, RawFd},
        unix::fs::MetadataExt as _,
    },
    path::{Path, PathBuf},
};

use nix::sched::{CloneFlags, setns};

use crate::{NetlinkError, Result, Socket};

/// An open network namespace (a bind-mounted nsfs file such as /var/run/netns/x).
pub struct Netns {
    file: File,
    path: PathBuf,
}

impl Netns {
    pub fn open(path: &Path) -> Result<Netns> {
        let file = File::open(path).map_err(|e| {
            NetlinkError::new("opening network namespace", path.display().to_string(), e)
        })?;
        Ok(Netns {
            file,
            path: path.to_path_buf(),
        })
    }

    /// A namespace file the caller already opened (and checked); `path` is what messages name.
    pub fn from_file(file: File, path: &Path) -> Netns {
        Netns {
            file,
            path: path.to_path_buf(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A netlink socket inside this namespace.
    pub fn socket(&self) -> Result<Socket> {
        self.enter(Socket::new)
    }

    /// Runs `f` on a short-lived thread inside this namespace (the caller's thread never
    /// changes namespace). Sockets `f` opens stay in this namespace for their whole life.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
        std::thread::scope(|s| {
            s.spawn(|| {
                setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| {
                    NetlinkError::new(
                        "entering network namespace",
                        self.path.display().to_string(),
                        io::Error::from(e),
                    )
                })?;
                f()
            })
            .join()
            .unwrap_or_else(|_| {
                Err(NetlinkError::new(
                    "working in",
                    self.path.display().to_string(),
                    io::Error::other("the namespace thread panicked"),
                ))
            })
        })
    }

    /// Every network namespace some process is in, once each (by the nsfs inode of
    /// `<proc>/<pid>/ns/net`), opened through the first process found in it: the host's and
    /// every pod's (a pod's pause process holds its namespace). Only the processes `proc` shows
    /// are seen: the agent needs the host's PID namespace (`hostPID`).
    pub fn of_processes(proc: &Path) -> Result<Vec<Netns>> {
        let entries = std::fs::read_dir(proc).map_err(|e| {
            NetlinkError::new("listing processes in", proc.display().to_string(), e)
        })?;
        let mut seen = std::collections::BTreeSet::new();
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            if !name
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
            {
                continue;
            }
            let path = entry.path().join("ns/net");
            // A process that exited or that we may not look into (kernel threads have no
            // namespace files to open) is skipped: its namespace, if still alive, is held by
            // another process.
            let Ok(file) = File::open(&path) else {
                continue;
            };
            let Ok(meta) = file.metadata() else {
                continue;
            };
            if seen.insert((meta.dev(), meta.ino())) {
                out.push(Netns { file, path });
            }
        }
        Ok(out)
    }

    /// The namespace's identity: the device and inode of its nsfs file.
    pub fn id(&self) -> Result<(u64, u64)> {
        let meta = self.file.metadata().map_err(|e| {
            NetlinkError::new(
                "reading network namespace",
                self.path.display().to_string(),
                e,
            )
        })?;
        Ok((meta.dev(), meta.ino()))
    }
}

impl AsFd for Netns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl AsRawFd for Netns {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}
