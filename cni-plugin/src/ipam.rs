//! The IPAM store: one file per reserved IP under `<dataDir>/<network>/`, as host-local keeps it,
//! but crash-safe and with a lock held for the whole command.
//!
//! - A reservation is written to a temporary file, fsynced, then hard-linked to its final name
//!   (the IP). `link(2)` fails if the name exists, so creation is exclusive and a reader never
//!   sees a half-written reservation. A kill -9 leaves at worst a `.tmp-*` file (swept on the
//!   next open) or a complete reservation with no link (freed by GC).
//! - `flock` on `<dir>/lock` serialises every command touching the network, across processes.
//! - Network, gateway (first host) and broadcast addresses are never handed out.
//! - Only what petrel wrote is read or removed: an entry named like an IP that is not a regular
//!   file holding a reservation (a directory, a FIFO, someone's notes) is skipped by every verb
//!   and left where it is; its address is never handed out (the name is taken).
//! - A failed write (a full disk) removes its temporary file before returning.

use std::{
    fs::{self, File, OpenOptions},
    io::Write as _,
    net::Ipv4Addr,
    os::{fd::AsRawFd as _, unix::fs::OpenOptionsExt as _},
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::{
    error::{CniError, Result},
    fsio,
};

const LOCK: &str = "lock";
const LAST: &str = "last_reserved_ip";
const TMP_PREFIX: &str = ".tmp-";
/// A reservation is well under this (a 256-byte container ID makes it about 330 bytes).
const RESERVATION_LIMIT: u64 = 4096;
/// What STATUS writes (and removes) to prove a reservation fits: as large as a big one.
const PROBE_SIZE: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
    /// Seconds since the Unix epoch.
    pub time: u64,
}

/// The store of one network, locked for as long as this value lives.
pub struct Store {
    dir: PathBuf,
    _lock: File,
}

/// The gateway of a pod range: its first host address.
pub fn gateway(range: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(range.network()) + 1)
}

/// Addresses that may be handed out, in order: the range without network, gateway, broadcast.
fn allocatable(range: Ipv4Net) -> (u32, u32) {
    (
        u32::from(range.network()) + 2,
        u32::from(range.broadcast()) - 1,
    )
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> CniError {
    move |e| CniError::io(what, e)
}

impl Store {
    /// Opens (creating) `<data_dir>/<network>` and takes its lock, waiting for other commands.
    pub fn open(data_dir: &Path, network: &str) -> Result<Store> {
        let dir = data_dir.join(network);
        fs::create_dir_all(&dir).map_err(io(format!("creating IPAM folder {}", dir.display())))?;
        let lock_path = dir.join(LOCK);
        // Non-blocking: a FIFO put there fails (ENXIO) instead of waiting for a reader.
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&lock_path)
            .map_err(io(format!("opening {}", lock_path.display())))?;
        let is_file = lock
            .metadata()
            .map_err(io(format!("opening {}", lock_path.display())))?
            .is_file();
        if !is_file {
            return Err(CniError::io(
                format!("opening {}", lock_path.display()),
                std::io::Error::other("not a regular file"),
            ));
        }
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(CniError::io(
                format!("locking {}", lock_path.display()),
                std::io::Error::last_os_error(),
            ));
        }
        let store = Store { dir, _lock: lock };
        store.sweep_tmp();
        Ok(store)
    }

    /// Removes temporary files left by a command killed half-way through a write.
    fn sweep_tmp(&self) {
        if let Ok(entries) = fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                let ours = e.file_name().to_string_lossy().starts_with(TMP_PREFIX)
                    && e.file_type().is_ok_and(|t| t.is_file());
                if ours {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }

    fn tmp_path(&self, name: &str) -> PathBuf {
        self.dir
            .join(format!("{TMP_PREFIX}{name}-{}", std::process::id()))
    }

    /// Writes `contents` to a new temporary file, fsynced; the file is removed again if any
    /// step fails (ENOSPC at write or fsync on a full disk).
    fn write_tmp(tmp: &Path, contents: &[u8], sync: bool) -> std::io::Result<()> {
        let r = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(libc::O_CLOEXEC)
                .open(tmp)?;
            f.write_all(contents)?;
            if sync {
                f.sync_all()?;
            }
            Ok(())
        })();
        if r.is_err() {
            let _ = fs::remove_file(tmp);
        }
        r
    }

    fn write_atomic_new(&self, name: &str, contents: &[u8]) -> std::io::Result<bool> {
        let tmp = self.tmp_path(name);
        // A leftover of this PID (a killed command long ago, PIDs are reused) is not a write
        // in progress: the lock is ours.
        let _ = fs::remove_file(&tmp);
        Self::write_tmp(&tmp, contents, true)?;
        let r = fs::hard_link(&tmp, self.dir.join(name));
        let _ = fs::remove_file(&tmp);
        match r {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Replaces `name` (a hint file) through a temporary file and a rename, never writing
    /// through whatever `name` is now.
    fn replace(&self, name: &str, contents: &[u8]) -> std::io::Result<()> {
        let tmp = self.tmp_path(name);
        let _ = fs::remove_file(&tmp);
        Self::write_tmp(&tmp, contents, false)?;
        let r = fs::rename(&tmp, self.dir.join(name));
        if r.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        r
    }

    /// Entries named like an IPv4 address, whatever they are.
    fn ip_named(&self) -> Result<Vec<(Ipv4Addr, fs::DirEntry)>> {
        let entries =
            fs::read_dir(&self.dir).map_err(io(format!("reading {}", self.dir.display())))?;
        Ok(entries
            .flatten()
            .filter_map(|e| {
                let ip = e.file_name().to_str()?.parse::<Ipv4Addr>().ok()?;
                Some((ip, e))
            })
            .collect())
    }

    /// Every reservation, by IP: the regular files named like an IP that decode as one.
    /// Anything else named like an IP (a directory, a FIFO, a symlink, a file petrel did not
    /// write) is skipped, never read past a few KiB and never removed; it still takes its IP.
    pub fn reservations(&self) -> Result<Vec<(Ipv4Addr, Reservation)>> {
        let mut out = Vec::new();
        for (ip, e) in self.ip_named()? {
            // The entry's own type (a symlink is not followed).
            if !e.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            let data = match fsio::read_small(&e.path(), RESERVATION_LIMIT) {
                Ok(data) => data,
                Err(fsio::ReadError::Io(err)) => {
                    return Err(CniError::io(format!("reading {}", e.path().display()), err));
                }
                // Gone since the listing, replaced by something else, or not ours: skipped.
                Err(_) => continue,
            };
            if let Ok(r) = serde_json::from_slice::<Reservation>(&data) {
                out.push((ip, r));
            }
        }
        out.sort_by_key(|(ip, _)| *ip);
        Ok(out)
    }

    /// The IP reserved for (container, ifname), if any.
    pub fn find(&self, container_id: &str, ifname: &str) -> Result<Option<Ipv4Addr>> {
        Ok(self
            .reservations()?
            .into_iter()
            .find(|(_, r)| r.container_id == container_id && r.ifname == ifname)
            .map(|(ip, _)| ip))
    }

    /// Reserves an IP of `range` for (container, ifname). Idempotent: a repeated ADD gets the IP
    /// it already has. Allocation goes round-robin from the last reserved IP so a freed address
    /// is not reused at once.
    pub fn reserve(&self, range: Ipv4Net, container_id: &str, ifname: &str) -> Result<Ipv4Addr> {
        if let Some(ip) = self.find(container_id, ifname)? {
            if range.contains(&ip) {
                return Ok(ip);
            }
        }
        let (first, last) = allocatable(range);
        let start = fsio::read_small(&self.dir.join(LAST), 64)
            .ok()
            .and_then(|s| String::from_utf8(s).ok()?.trim().parse::<Ipv4Addr>().ok())
            .map(u32::from)
            .filter(|ip| (first..=last).contains(ip))
            .map_or(first, |ip| if ip == last { first } else { ip + 1 });
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let record = serde_json::to_vec(&Reservation {
            container_id: container_id.to_string(),
            ifname: ifname.to_string(),
            time: now,
        })
        .expect("serialisable");
        let size = last - first + 1;
        for i in 0..size {
            let ip = Ipv4Addr::from(first + (start - first + i) % size);
            let created = self
                .write_atomic_new(&ip.to_string(), &record)
                .map_err(io(format!("reserving {ip} in {}", self.dir.display())))?;
            if created {
                // Only a hint for the next allocation: losing it in a crash costs nothing.
                let _ = self.replace(LAST, ip.to_string().as_bytes());
                return Ok(ip);
            }
        }
        Err(CniError::PoolExhausted {
            range,
            size: u64::from(size),
        })
    }

    /// Releases what (container, ifname) holds; succeeds when it holds nothing.
    pub fn release(&self, container_id: &str, ifname: &str) -> Result<Option<Ipv4Addr>> {
        let Some(ip) = self.find(container_id, ifname)? else {
            return Ok(None);
        };
        self.release_ip(ip)?;
        Ok(Some(ip))
    }

    pub fn release_ip(&self, ip: Ipv4Addr) -> Result<()> {
        match fs::remove_file(self.dir.join(ip.to_string())) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(CniError::io(format!("releasing {ip}"), e))
            }
            _ => Ok(()),
        }
    }

    /// Whether another reservation can be made in `range`: some allocatable address whose
    /// name is not taken (by a reservation or by anything else).
    pub fn has_free(&self, range: Ipv4Net) -> Result<bool> {
        let (first, last) = allocatable(range);
        let used = self
            .ip_named()?
            .iter()
            .filter(|(ip, _)| (first..=last).contains(&u32::from(*ip)))
            .count() as u64;
        Ok(used < u64::from(last - first + 1))
    }

    /// Checks the store can take one more reservation (for STATUS): free space and inodes on
    /// its filesystem, then a write as large as a reservation, fsynced and removed.
    pub fn can_write_reservation(&self) -> Result<()> {
        let d = self.dir.display();
        let vfs = nix::sys::statvfs::statvfs(&self.dir)
            .map_err(|e| CniError::io(format!("statvfs {d}"), e.into()))?;
        // The plugin runs as root, which may use the blocks reserved for root.
        let free = vfs.blocks_free().saturating_mul(vfs.fragment_size());
        if free < PROBE_SIZE as u64 {
            return Err(CniError::io(
                format!("no space left for a reservation in {d}: {free} bytes free"),
                std::io::Error::from_raw_os_error(libc::ENOSPC),
            ));
        }
        // Filesystems without an inode limit report 0 inodes in all.
        if vfs.files() > 0 && vfs.files_free() == 0 {
            return Err(CniError::io(
                format!("no inode left for a reservation in {d}"),
                std::io::Error::from_raw_os_error(libc::ENOSPC),
            ));
        }
        let probe = self.tmp_path("status");
        let _ = fs::remove_file(&probe);
        Self::write_tmp(&probe, &[b' '; PROBE_SIZE], true).map_err(|e| {
            let what = match e.raw_os_error() {
                Some(libc::ENOSPC | libc::EDQUOT) => "no space left for a reservation in",
                _ => "IPAM folder is not writable:",
            };
            CniError::io(format!("{what} {d}"), e)
        })?;
        let _ = fs::remove_file(probe);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::code;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn never_hands_out_network_gateway_or_broadcast() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), "n").unwrap();
        let range = net("10.0.0.0/29");
        let mut got = Vec::new();
        for i in 0..5 {
            got.push(
                s.reserve(range, &format!("c{i}"), "eth0")
                    .unwrap()
                    .to_string(),
            );
        }
        assert_eq!(
            got,
            ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]
        );
        let e = s.reserve(range, "c9", "eth0").unwrap_err();
        assert_eq!(e.code(), code::POOL_EXHAUSTED);
        assert!(e.msg().contains("10.0.0.0/29"));
        assert!(!s.has_free(range).unwrap());
    }

    #[test]
    fn reserve_is_idempotent_and_release_frees() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), "n").unwrap();
        let range = net("10.0.0.0/24");
        let a = s.reserve(range, "c1", "eth0").unwrap();
        assert_eq!(s.reserve(range, "c1", "eth0").unwrap(), a);
        let b = s.reserve(range, "c1", "eth1").unwrap();
        assert_ne!(a, b);
        assert_eq!(s.release("c1", "eth0").unwrap(), Some(a));
        assert_eq!(s.release("c1", "eth0").unwrap(), None);
        // Round-robin: the freed address is not the next one handed out.
        assert_ne!(s.reserve(range, "c2", "eth0").unwrap(), a);
    }

    /// Entries named like an IP that petrel did not write are skipped by every read and never
    /// removed, and their addresses are not handed out.
    #[test]
    fn strays_named_like_an_ip_are_skipped_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let range = net("10.0.0.0/29");
        let s = Store::open(dir.path(), "n").unwrap();
        let n = dir.path().join("n");
        fs::create_dir(n.join("10.0.0.2")).unwrap();
        fs::write(n.join("10.0.0.3"), b"my notes").unwrap();
        nix::unistd::mkfifo(&n.join("10.0.0.4"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        std::os::unix::fs::symlink("/dev/zero", n.join("10.0.0.5")).unwrap();
        assert_eq!(s.reservations().unwrap(), vec![]);
        assert_eq!(s.find("c1", "eth0").unwrap(), None);
        assert_eq!(s.release("c1", "eth0").unwrap(), None);
        assert!(s.has_free(range).unwrap());
        assert_eq!(
            s.reserve(range, "c1", "eth0").unwrap().to_string(),
            "10.0.0.6"
        );
        assert!(!s.has_free(range).unwrap(), "the strays' names are taken");
        assert_eq!(s.reservations().unwrap().len(), 1);
        for stray in ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5"] {
            assert!(
                fs::symlink_metadata(n.join(stray)).is_ok(),
                "{stray} left alone"
            );
        }
        assert_eq!(fs::read(n.join("10.0.0.3")).unwrap(), b"my notes");
    }

    #[test]
    fn status_probe_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), "n").unwrap();
        s.can_write_reservation().unwrap();
        let names: Vec<_> = fs::read_dir(dir.path().join("n"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["lock"]);
    }

    #[test]
    fn sweeps_torn_temporary_files_and_keeps_undecodable_reservations_blocked() {
        let dir = tempfile::tempdir().unwrap();
        let range = net("10.0.0.0/29");
        fs::create_dir_all(dir.path().join("n")).unwrap();
        fs::write(dir.path().join("n/.tmp-10.0.0.2-99"), b"{\"contai").unwrap();
        fs::write(dir.path().join("n/10.0.0.2"), b"garbage").unwrap();
        let s = Store::open(dir.path(), "n").unwrap();
        assert!(!dir.path().join("n/.tmp-10.0.0.2-99").exists());
        assert_eq!(
            s.reserve(range, "c1", "eth0").unwrap().to_string(),
            "10.0.0.3"
        );
    }
}
