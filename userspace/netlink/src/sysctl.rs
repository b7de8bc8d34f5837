//! Sysctl writes under a /proc/sys root (the agent may see the host's through another mount).

use std::path::PathBuf;

use crate::{NetlinkError, Result};

pub struct Sysctl {
    root: PathBuf,
}

impl Sysctl {
    /// `root` is where /proc/sys is visible, usually "/proc/sys".
    pub fn new(root: impl Into<PathBuf>) -> Sysctl {
        Sysctl { root: root.into() }
    }

    /// Writes `value` to `key`, a path below the root with `/` separators
    /// ("net/ipv4/conf/pet0/forwarding"): interface names may contain dots.
    pub fn write(&self, key: &str, value: &str) -> Result<()> {
        let path = self.path(key);
        std::fs::write(&path, value)
            .map_err(|e| NetlinkError::new("writing", path.display().to_string(), e))
    }

    pub fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_paths_below_the_root() {
        let s = Sysctl::new("/proc/sys");
        assert_eq!(
            s.path("net/ipv4/conf/petrel.vxlan/rp_filter"),
            PathBuf::from("/proc/sys/net/ipv4/conf/petrel.vxlan/rp_filter")
        );
        let dir = std::env::temp_dir().join(format!("petrel-sysctl-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("net/ipv4")).unwrap();
        Sysctl::new(&dir).write("net/ipv4/ip_forward", "1").unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("net/ipv4/ip_forward")).unwrap(),
            "1"
        );
        let e = Sysctl::new(&dir).write("missing/x", "1").unwrap_err();
        assert_eq!(e.errno(), Some(libc::ENOENT));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
