//! Uninstalling: removes petrel's pins under a bpffs root by name, and nothing else.
//!
//! The root must be a directory on a bpffs mount holding petrel's layout only: `maps/` with the
//! versioned map pins of this release or an earlier one (`maps::ALL`, `maps::OBSOLETE`) and
//! `links/` with the program link pins (`sock_*` for the cgroup, `sock_release` among them,
//! `tc_*@<interface>` for TC) and `progs/` with the pod programs pinned for petrel-cni
//! (`tc_pod_*`, and a `-new` pin an agent stopped half-way through replacing them may leave).
//! Anything else there (another tool's pins, a typo'd root such as `/sys/fs/bpf` itself, an
//! ordinary folder) refuses the whole cleanup before a single pin is removed. The folders are
//! removed only when empty afterwards (`rmdir`), never recursively.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use crate::{datapath, maps, sys};

/// What a cleanup removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Removed {
    /// Pins removed (maps and links), in the order removed.
    pub pins: Vec<PathBuf>,
    /// Folders removed once empty (`links`, `progs`, `maps`, the root).
    pub dirs: Vec<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    #[error(
        "refusing to clean up {root}: it is not on a bpffs mount (filesystem magic {magic:#x}, bpffs is {:#x}); nothing was removed",
        sys::BPF_FS_MAGIC
    )]
    NotBpffs { root: PathBuf, magic: i64 },
    #[error("refusing to clean up {root}: it is not a directory; nothing was removed")]
    NotADirectory { root: PathBuf },
    #[error(
        "refusing to clean up {root}: it holds what petrel did not create ({}); nothing was removed",
        list(.entries)
    )]
    Foreign {
        root: PathBuf,
        entries: Vec<PathBuf>,
    },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn list(entries: &[PathBuf]) -> String {
    const SHOWN: usize = 5;
    let mut s: Vec<String> = entries
        .iter()
        .take(SHOWN)
        .map(|p| p.display().to_string())
        .collect();
    if entries.len() > SHOWN {
        s.push(format!("and {} more", entries.len() - SHOWN));
    }
    s.join(", ")
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CleanupError + 'a {
    move |source| CleanupError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Whether `name` is a map pin petrel creates (this release's or an obsolete layout's).
pub fn is_map_pin(name: &str) -> bool {
    maps::ALL.contains(&name) || maps::OBSOLETE.contains(&name)
}

/// Whether `name` is a link pin petrel creates: a socket-LB program's, or a TC program's
/// `<program>@<interface>`.
pub fn is_link_pin(name: &str) -> bool {
    if datapath::SOCK_PROGRAMS.contains(&name) || name == datapath::PROG_SOCK_RELEASE {
        return true;
    }
    let tc = [
        datapath::PROG_TC_POD_INGRESS,
        datapath::PROG_TC_POD_EGRESS,
        datapath::PROG_TC_EXTERNAL_INGRESS,
        datapath::PROG_TC_EXTERNAL_EGRESS,
    ];
    name.split_once('@').is_some_and(|(prog, iface)| {
        tc.contains(&prog) && !iface.is_empty() && !iface.contains('/')
    })
}

/// Whether `name` is a program pin petrel creates for petrel-cni.
pub fn is_prog_pin(name: &str) -> bool {
    let name = name.strip_suffix("-new").unwrap_or(name);
    datapath::POD_PROGRAMS.contains(&name)
}

/// The pins petrel would remove under `root`, or why it refuses. Reads only.
pub fn plan(root: &Path) -> Result<Vec<PathBuf>, CleanupError> {
    let meta = match fs::symlink_metadata(root) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("reading", root)(e)),
    };
    if !meta.is_dir() {
        return Err(CleanupError::NotADirectory {
            root: root.to_path_buf(),
        });
    }
    let magic = sys::statfs_type(root).map_err(io_err("statfs", root))?;
    if magic != sys::BPF_FS_MAGIC {
        return Err(CleanupError::NotBpffs {
            root: root.to_path_buf(),
            magic,
        });
    }
    let mut pins = Vec::new();
    let mut foreign = Vec::new();
    for entry in read_dir(root)? {
        let (path, is_dir) = entry;
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let accept: fn(&str) -> bool = match name.as_ref() {
            "maps" if is_dir => is_map_pin,
            "links" if is_dir => is_link_pin,
            "progs" if is_dir => is_prog_pin,
            _ => {
                foreign.push(path);
                continue;
            }
        };
        for (pin, pin_is_dir) in read_dir(&path)? {
            let pin_name = pin.file_name().unwrap_or_default().to_string_lossy();
            if pin_is_dir || !accept(&pin_name) {
                foreign.push(pin);
            } else {
                pins.push(pin);
            }
        }
    }
    if !foreign.is_empty() {
        foreign.sort();
        return Err(CleanupError::Foreign {
            root: root.to_path_buf(),
            entries: foreign,
        });
    }
    pins.sort();
    Ok(pins)
}

/// (path, is a directory) of every entry of `dir`, symlinks not followed.
fn read_dir(dir: &Path) -> Result<Vec<(PathBuf, bool)>, CleanupError> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).map_err(io_err("listing", dir))? {
        let e = e.map_err(io_err("listing", dir))?;
        let is_dir = e
            .file_type()
            .map_err(io_err("reading", &e.path()))?
            .is_dir();
        out.push((e.path(), is_dir));
    }
    Ok(out)
}

/// Removes petrel's pins under `root` (links detach, maps are freed once nothing holds them),
/// then `links/`, `maps/` and `root` if they are empty. Refuses, removing nothing, when `root`
/// is not on bpffs or holds anything else (see the module comment). A missing root is nothing
/// to remove.
pub fn remove(root: &Path) -> Result<Removed, CleanupError> {
    let mut removed = Removed::default();
    for pin in plan(root)? {
        match fs::remove_file(&pin) {
            Ok(()) => removed.pins.push(pin),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("removing pin", &pin)(e)),
        }
    }
    for dir in [
        root.join("links"),
        root.join("progs"),
        root.join("maps"),
        root.to_path_buf(),
    ] {
        // Missing, or not empty (something was pinned meanwhile): left alone.
        if fs::remove_dir(&dir).is_ok() {
            removed.dirs.push(dir);
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn petrels_pin_names_only() {
        for ok in ["SERVICES_V1", "CT_V2", "CT_V1", "SOCK_CT_V1"] {
            assert!(is_map_pin(ok), "{ok}");
        }
        for bad in ["SERVICES_V9", "services_v1", "", "cilium_lb4_services_v2"] {
            assert!(!is_map_pin(bad), "{bad}");
        }
        for ok in [
            "sock_connect4",
            "sock_connect6",
            "sock_getpeername6",
            "sock_release",
            "tc_pod_ingress@pet1a2b",
            "tc_external_egress@eth0%100",
        ] {
            assert!(is_link_pin(ok), "{ok}");
        }
        for ok in ["tc_pod_ingress", "tc_pod_egress", "tc_pod_egress-new"] {
            assert!(is_prog_pin(ok), "{ok}");
        }
        for bad in [
            "tc_external_ingress",
            "tc_pod_ingress@pet1",
            "sock_connect4",
        ] {
            assert!(!is_prog_pin(bad), "{bad}");
        }
        for bad in [
            "tc_pod_ingress@",
            "tc_other@eth0",
            "sock_connect5",
            "sock_bind6",
            "eth0",
            "x@y",
        ] {
            assert!(!is_link_pin(bad), "{bad}");
        }
    }

    #[test]
    fn an_ordinary_folder_is_refused_and_keeps_every_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("petrel");
        fs::create_dir_all(root.join("maps")).expect("mkdir");
        fs::write(root.join("maps/SERVICES_V1"), b"user data").expect("write");
        fs::write(root.join("notes.txt"), b"keep me").expect("write");
        let e = remove(&root).expect_err("not bpffs");
        assert!(matches!(e, CleanupError::NotBpffs { .. }), "{e}");
        assert!(e.to_string().contains("not on a bpffs mount"), "{e}");
        assert!(e.to_string().contains("nothing was removed"), "{e}");
        assert!(root.join("maps/SERVICES_V1").exists());
        assert!(root.join("notes.txt").exists());
        let file = root.join("notes.txt");
        let e = remove(&file).expect_err("a file");
        assert!(matches!(e, CleanupError::NotADirectory { .. }), "{e}");
        assert!(file.exists());
        assert_eq!(
            remove(&dir.path().join("absent")).expect("absent"),
            Removed::default()
        );
    }
}
