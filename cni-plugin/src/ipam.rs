//! The IPAM store: one file per reserved IP under `<dataDir>/<network>/`, as host-local keeps it,
//! but crash-safe and with a lock held for the whole command.
//!
//! - A reservation is written to a temporary file, fsynced, then hard-linked to its final name
//!   (the IP). `link(2)` fails if the name exists, so creation is exclusive and a reader never
//!   sees a half-written reservation. A kill -9 leaves at worst a `.tmp-*` file (swept on the
//!   next open) or a complete reservation with no link (freed by GC).
//! - `flock` on `<dir>/lock` serialises every command touching the network, across processes.
//! - Network, gateway (first host) and broadcast addresses are never handed out. In an IPv6
//!   range the network address (the subnet-router anycast address) and the first one (kept for
//!   the node, as IPv4's gateway; the pods' IPv6 gateway is the link-local `GATEWAY6`) are not.
//! - IPv6 reservations are named by the address in its canonical text (RFC 5952: lowercase,
//!   longest zero run compressed, `fd00::2`), which no IPv4 name can equal; an entry whose name
//!   parses as an IPv6 address but is not canonical (`fd00:0::2`) is not one of ours and takes
//!   no address. Each family has its own round-robin hint (`last_reserved_ip`, as before, and
//!   `last_reserved_ip6`).
//! - A dual-stack pod holds two reservations with the same (container, ifname), made together
//!   (`reserve_all`: the IPv4 one is released when the IPv6 pool is exhausted) and released
//!   together.
//! - Only what petrel wrote is read or removed: an entry named like an IP that is not a regular
//!   file holding a reservation (a directory, a FIFO, someone's notes) is skipped by every verb
//!   and left where it is; its address is never handed out (the name is taken).
//! - A failed write (a full disk) removes its temporary file before returning.

use std::{
    fs::{self, File, OpenOptions},
    io::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::{fd::AsRawFd as _, unix::fs::OpenOptionsExt as _},
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};

use crate::{
    error::{CniError, Result},
    fsio,
};

const LOCK: &str = "lock";
const LAST: &str = "last_reserved_ip";
const LAST6: &str = "last_reserved_ip6";
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

/// The gateway of every pod's IPv6 default route: a link-local address on each host veth
/// (link-local addresses are per link, so all of them can have it), set without duplicate
/// address detection.
pub const GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// Addresses that may be handed out, in order, as numbers: an IPv4 range without network,
/// gateway, broadcast; an IPv6 range without its first two.
fn allocatable(range: IpNet) -> (u128, u128) {
    match range {
        IpNet::V4(r) => (
            u128::from(u32::from(r.network()) + 2),
            u128::from(u32::from(r.broadcast()) - 1),
        ),
        IpNet::V6(r) => (u128::from(r.network()) + 2, u128::from(r.broadcast())),
    }
}

fn number(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(ip) => u128::from(u32::from(ip)),
        IpAddr::V6(ip) => u128::from(ip),
    }
}

/// The address numbered `n` in `range`'s family.
fn address(range: IpNet, n: u128) -> IpAddr {
    match range {
        IpNet::V4(_) => IpAddr::V4(Ipv4Addr::from(u32::try_from(n).expect("an IPv4 number"))),
        IpNet::V6(_) => IpAddr::V6(Ipv6Addr::from(n)),
    }
}

/// The name an address has in the store, and the address a name is (only canonical names).
fn name_of(ip: IpAddr) -> String {
    ip.to_string()
}

fn parse_name(name: &str) -> Option<IpAddr> {
    let ip: IpAddr = name.parse().ok()?;
    (name_of(ip) == name).then_some(ip)
}

fn last_file(range: IpNet) -> &'static str {
    match range {
        IpNet::V4(_) => LAST,
        IpNet::V6(_) => LAST6,
    }
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

    /// Entries named like an IP address (`parse_name`), whatever they are.
    fn ip_named(&self) -> Result<Vec<(IpAddr, fs::DirEntry)>> {
        let entries =
            fs::read_dir(&self.dir).map_err(io(format!("reading {}", self.dir.display())))?;
        Ok(entries
            .flatten()
            .filter_map(|e| {
                let ip = parse_name(e.file_name().to_str()?)?;
                Some((ip, e))
            })
            .collect())
    }

    /// Every reservation, by IP: the regular files named like an IP that decode as one.
    /// Anything else named like an IP (a directory, a FIFO, a symlink, a file petrel did not
    /// write) is skipped, never read past a few KiB and never removed; it still takes its IP.
    pub fn reservations(&self) -> Result<Vec<(IpAddr, Reservation)>> {
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

    /// The IPs reserved for (container, ifname), IPv4 first: none, one, or one per family.
    pub fn find_all(&self, container_id: &str, ifname: &str) -> Result<Vec<IpAddr>> {
        Ok(self
            .reservations()?
            .into_iter()
            .filter(|(_, r)| r.container_id == container_id && r.ifname == ifname)
            .map(|(ip, _)| ip)
            .collect())
    }

    /// The first IP reserved for (container, ifname), if any.
    pub fn find(&self, container_id: &str, ifname: &str) -> Result<Option<IpAddr>> {
        Ok(self.find_all(container_id, ifname)?.into_iter().next())
    }

    /// Reserves an IP of each range for (container, ifname), in the ranges' order: all or none.
    /// When one fails (its pool is exhausted) the reservations this call made are released;
    /// those an earlier ADD made stay.
    pub fn reserve_all(
        &self,
        ranges: &[IpNet],
        container_id: &str,
        ifname: &str,
    ) -> Result<Vec<IpAddr>> {
        let held = self.find_all(container_id, ifname)?;
        let mut got = Vec::new();
        for range in ranges {
            match self.reserve(*range, container_id, ifname) {
                Ok(ip) => got.push(ip),
                Err(e) => {
                    for ip in got.iter().filter(|ip| !held.contains(ip)) {
                        self.release_ip(*ip)?;
                    }
                    return Err(e);
                }
            }
        }
        Ok(got)
    }

    /// Reserves an IP of `range` for (container, ifname). Idempotent: a repeated ADD gets the IP
    /// it already has. Allocation goes round-robin from the last reserved IP of the family so a
    /// freed address is not reused at once.
    pub fn reserve(&self, range: IpNet, container_id: &str, ifname: &str) -> Result<IpAddr> {
        if let Some(ip) = self
            .find_all(container_id, ifname)?
            .into_iter()
            .find(|ip| range.contains(ip))
        {
            return Ok(ip);
        }
        let (first, last) = allocatable(range);
        let hint = last_file(range);
        let start = fsio::read_small(&self.dir.join(hint), 64)
            .ok()
            .and_then(|s| String::from_utf8(s).ok()?.trim().parse::<IpAddr>().ok())
            .filter(|ip| ip.is_ipv4() == range.addr().is_ipv4())
            .map(number)
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
        // A /120 or narrower range can be walked through; in a wider one (a /64 has 2^64
        // addresses) the walk ends at the first free name long before.
        let size = last - first + 1;
        let mut i = 0;
        while i < size {
            let ip = address(range, first + (start - first + i) % size);
            let created = self
                .write_atomic_new(&name_of(ip), &record)
                .map_err(io(format!("reserving {ip} in {}", self.dir.display())))?;
            if created {
                // Only a hint for the next allocation: losing it in a crash costs nothing.
                let _ = self.replace(hint, ip.to_string().as_bytes());
                return Ok(ip);
            }
            i += 1;
        }
        Err(CniError::PoolExhausted { range, size })
    }

    /// Releases everything (container, ifname) holds (one address per family); succeeds when it
    /// holds nothing.
    pub fn release(&self, container_id: &str, ifname: &str) -> Result<Vec<IpAddr>> {
        let held = self.find_all(container_id, ifname)?;
        for ip in &held {
            self.release_ip(*ip)?;
        }
        Ok(held)
    }

    pub fn release_ip(&self, ip: IpAddr) -> Result<()> {
        match fs::remove_file(self.dir.join(name_of(ip))) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(CniError::io(format!("releasing {ip}"), e))
            }
            _ => Ok(()),
        }
    }

    /// Whether another reservation can be made in `range`: some allocatable address whose
    /// name is not taken (by a reservation or by anything else).
    pub fn has_free(&self, range: IpNet) -> Result<bool> {
        let (first, last) = allocatable(range);
        let used = self
            .ip_named()?
            .iter()
            .filter(|(ip, _)| ip.is_ipv4() == range.addr().is_ipv4())
            .filter(|(ip, _)| (first..=last).contains(&number(*ip)))
            .count() as u128;
        Ok(used < last - first + 1)
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

    fn net(s: &str) -> IpNet {
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
        assert_eq!(s.release("c1", "eth0").unwrap(), vec![a]);
        assert!(s.release("c1", "eth0").unwrap().is_empty());
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
        assert!(s.release("c1", "eth0").unwrap().is_empty());
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

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn ipv6_keeps_its_first_two_addresses_and_is_exhausted_on_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), "n").unwrap();
        let v6 = net("fd00:9::/126");
        let got: Vec<String> = (0..2)
            .map(|i| s.reserve(v6, &format!("c{i}"), "eth0").unwrap().to_string())
            .collect();
        assert_eq!(got, ["fd00:9::2", "fd00:9::3"]);
        let e = s.reserve(v6, "c9", "eth0").unwrap_err();
        assert_eq!(e.code(), code::POOL_EXHAUSTED);
        assert_eq!(e.msg(), "no free address in fd00:9::/126");
        assert_eq!(e.details(), "2 addresses, all reserved");
        assert!(!s.has_free(v6).unwrap());
        // The IPv4 pool is another pool.
        let v4 = net("10.0.0.0/29");
        assert!(s.has_free(v4).unwrap());
        assert_eq!(s.reserve(v4, "c9", "eth0").unwrap().to_string(), "10.0.0.2");
        assert_eq!(
            names(&dir.path().join("n")),
            [
                "10.0.0.2",
                "fd00:9::2",
                "fd00:9::3",
                "last_reserved_ip",
                "last_reserved_ip6",
                "lock"
            ]
        );
        assert_eq!(
            fs::read_to_string(dir.path().join("n/last_reserved_ip6")).unwrap(),
            "fd00:9::3"
        );
    }

    #[test]
    fn a_wide_ipv6_range_is_walked_from_its_start() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), "n").unwrap();
        let v6 = net("fd00:10:244:1::/64");
        assert!(s.has_free(v6).unwrap());
        assert_eq!(
            s.reserve(v6, "c1", "eth0").unwrap().to_string(),
            "fd00:10:244:1::2"
        );
        assert_eq!(
            s.reserve(v6, "c2", "eth0").unwrap().to_string(),
            "fd00:10:244:1::3"
        );
    }

    #[test]
    fn both_families_are_reserved_released_and_round_robin_together() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), "n").unwrap();
        let ranges = [net("10.0.0.0/29"), net("fd00:9::/120")];
        let a = s.reserve_all(&ranges, "c1", "eth0").unwrap();
        assert_eq!(
            a.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["10.0.0.2", "fd00:9::2"]
        );
        // Idempotent, in the ranges' order (IPv6 first when it is the first range).
        assert_eq!(s.reserve_all(&ranges, "c1", "eth0").unwrap(), a);
        let rev = [ranges[1], ranges[0]];
        assert_eq!(s.reserve_all(&rev, "c1", "eth0").unwrap(), vec![a[1], a[0]]);
        assert_eq!(s.find_all("c1", "eth0").unwrap(), a);
        assert_eq!(s.release("c1", "eth0").unwrap(), a);
        assert!(s.find_all("c1", "eth0").unwrap().is_empty());
        // Round-robin in each family: the freed addresses are not the next ones.
        let b = s.reserve_all(&ranges, "c2", "eth0").unwrap();
        assert_eq!(
            b.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["10.0.0.3", "fd00:9::3"]
        );
    }

    #[test]
    fn an_exhausted_ipv6_pool_releases_the_ipv4_reservation_it_made() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), "n").unwrap();
        let ranges = [net("10.0.0.0/29"), net("fd00:9::/126")];
        s.reserve_all(&ranges, "c1", "eth0").unwrap();
        s.reserve_all(&ranges, "c2", "eth0").unwrap();
        let before = names(&dir.path().join("n"));
        let e = s.reserve_all(&ranges, "c3", "eth0").unwrap_err();
        assert_eq!(e.code(), code::POOL_EXHAUSTED);
        assert!(e.msg().contains("fd00:9::/126"), "{}", e.msg());
        assert!(s.find_all("c3", "eth0").unwrap().is_empty());
        let mut after = names(&dir.path().join("n"));
        // Only the IPv4 hint moved on.
        assert_eq!(after.len(), before.len());
        after.retain(|n| !n.starts_with("last"));
        let mut kept = before.clone();
        kept.retain(|n| !n.starts_with("last"));
        assert_eq!(after, kept);
        // An attachment that already had its IPv4 address keeps it.
        s.reserve(ranges[0], "c4", "eth0").unwrap();
        s.reserve_all(&ranges, "c4", "eth0").unwrap_err();
        assert_eq!(s.find_all("c4", "eth0").unwrap().len(), 1);
    }

    #[test]
    fn ipv6_names_are_canonical_and_others_are_not_ours() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), "n").unwrap();
        let n = dir.path().join("n");
        let record = r#"{"containerID":"x","ifname":"eth0","time":0}"#;
        fs::write(n.join("fd00:9:0::2"), record).unwrap();
        fs::write(n.join("FD00:9::3"), record).unwrap();
        assert!(s.reservations().unwrap().is_empty());
        assert_eq!(
            s.reserve(net("fd00:9::/120"), "c1", "eth0")
                .unwrap()
                .to_string(),
            "fd00:9::2"
        );
        assert!(n.join("fd00:9:0::2").exists() && n.join("FD00:9::3").exists());
        assert_eq!(parse_name("fd00:9::2"), Some("fd00:9::2".parse().unwrap()));
        assert_eq!(parse_name("fd00:0009::2"), None);
        assert_eq!(parse_name("10.0.0.2"), Some("10.0.0.2".parse().unwrap()));
        assert_eq!(parse_name("last_reserved_ip6"), None);
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
