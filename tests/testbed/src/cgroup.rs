//! A cgroup v2 folder for a test, removed on drop.

use std::{fs, path::PathBuf};

pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    /// Creates `<cgroup2 root>/<name>`.
    pub fn new(name: &str) -> Cgroup {
        let root =
            petrel_datapath::sys::cgroup2_root().expect("cgroup v2 is not mounted on this host");
        let path = root.join(name);
        let _ = fs::remove_dir(&path);
        fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        Cgroup { path }
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Processes placed here by tests have exited; an empty cgroup folder is removed with rmdir.
        let _ = fs::remove_dir(&self.path);
    }
}
