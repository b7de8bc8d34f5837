//! Network namespaces. A namespace belongs to a thread, and a netlink socket stays in the
//! namespace it was opened in: so a short-lived scoped thread enters the namespace, opens the
//! socket there, and ends; the caller then talks to that namespace from any thread.

use std::{
    fs::File,
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd},
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

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A netlink socket inside this namespace.
    pub fn socket(&self) -> Result<Socket> {
        std::thread::scope(|s| {
            s.spawn(|| {
                setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| {
                    NetlinkError::new(
                        "entering network namespace",
                        self.path.display().to_string(),
                        io::Error::from(e),
                    )
                })?;
                Socket::new()
            })
            .join()
            .unwrap_or_else(|_| {
                Err(NetlinkError::new(
                    "opening a socket in",
                    self.path.display().to_string(),
                    io::Error::other("the namespace thread panicked"),
                ))
            })
        })
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
