//! The IPAM store: one file per reserved IP under `<dataDir>/<network>/`, as host-local keeps it,
//! but crash-safe and with a lock held for the whole command.
//!
//! - A reservation is written to a temporary file, fsynced, then hard-linked to its final name
//!   (the IP). `link(2)` fails if the name exists, so creation is exclusive and a reader never
//!   sees a half-written reservation. A kill -9 leaves at worst a `.tmp-*` file (swept on the
//!   next open) or a complete reservation with no link (freed by GC).
//! - `flock` on `<dir>/lock` serialises every command touching the network, across processes.
//! - Network, gateway (first host) and broadcast addresses are never handed out.

use std::{
    fs::{self, File, OpenOptions},
    io::Write as _,
    net::Ipv4Addr,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::error::{CniError, Result};

const LOCK: &str = "lock";
const LAST: &str = "last_reserved_ip";
const TMP_PREFIX: &str = ".tmp-";

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
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(format!("opening {}", lock_path.display())))?;
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
                if e.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }

    fn write_atomic_new(&self, name: &str, contents: &[u8]) -> std::io::Result<bool> {
        let tmp = self
            .dir
            .join(format!("{TMP_PREFIX}{name}-{}", std::process::id()));
        let mut f = File::create(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        drop(f);
        let r = fs::hard_link(&tmp, self.dir.join(name));
        let _ = fs::remove_file(&tmp);
        match r {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Every reservation, by IP.
    pub fn reservations(&self) -> Result<Vec<(Ipv4Addr, Reservation)>> {
        let mut out = Vec::new();
        let entries =
            fs::read_dir(&self.dir).map_err(io(format!("reading {}", self.dir.display())))?;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Ok(ip) = name.parse::<Ipv4Addr>() else {
                continue;
            };
            let data = fs::read(e.path()).map_err(io(format!("reading {}", e.path().display())))?;
            // A file we cannot decode still blocks its IP; GC removes it as unowned.
            let r = serde_json::from_slice(&data).unwrap_or(Reservation {
                container_id: String::new(),
                ifname: String::new(),
                time: 0,
            });
            out.push((ip, r));
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
        let start = fs::read_to_string(self.dir.join(LAST))
            .ok()
            .and_then(|s| s.trim().parse::<Ipv4Addr>().ok())
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
                let _ = fs::write(self.dir.join(LAST), ip.to_string());
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

    /// Whether another reservation can be made in `range`.
    pub fn has_free(&self, range: Ipv4Net) -> Result<bool> {
        let (first, last) = allocatable(range);
        let used = self
            .reservations()?
            .iter()
            .filter(|(ip, _)| range.contains(ip))
            .count() as u64;
        Ok(used < u64::from(last - first + 1))
    }

    /// Checks the folder is writable (for STATUS).
    pub fn writable(&self) -> Result<()> {
        let probe = self
            .dir
            .join(format!("{TMP_PREFIX}status-{}", std::process::id()));
        fs::write(&probe, b"").map_err(io(format!(
            "IPAM folder {} is not writable",
            self.dir.display()
        )))?;
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
