//! What petrel's privileged integration tests (tests/e2e), the demo and the benchmark
//! (tests/bench) run on: network namespaces and veths that remove themselves, test pods (a
//! TCP/UDP server answering with its name; an echo server for the connection-tracking tests),
//! cgroups, bpffs roots, a real kube-apiserver on etcd, simulated nodes and clusters, and the
//! Kubernetes objects, statistics and signal handling the tools share.
//!
//! Every fixture is an RAII guard: it removes what it created when dropped, also when a test
//! panics half-way.

pub mod agent;
pub mod apiserver;
pub mod cgroup;
pub mod cluster;
pub mod cni;
pub mod echo;
pub mod netns;
pub mod objects;
pub mod packet;
pub mod pod;
pub mod realnode;
pub mod signal;
pub mod stats;

/// Fails the calling test with a clear message unless it runs as root. Tests never return early
/// as a pass when they cannot run.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "this test needs root (CAP_BPF, CAP_NET_ADMIN, network namespaces): run `cargo xtask test` as root"
    );
}

/// A name unique to this process and call, short enough for an interface name (15 bytes) when
/// prefixed by at most 5 characters.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{:x}{n:x}", std::process::id() % 0x10000)
}

/// A bpffs folder for one datapath instance; every pin under it (and so every link it keeps
/// attached) is removed on drop.
pub struct BpffsRoot {
    path: std::path::PathBuf,
}

impl BpffsRoot {
    pub fn new(name: &str) -> BpffsRoot {
        let path = std::path::Path::new("/sys/fs/bpf").join(name);
        let _ = petrel_datapath::Datapath::remove(&path);
        BpffsRoot { path }
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl Drop for BpffsRoot {
    fn drop(&mut self) {
        if let Err(e) = petrel_datapath::Datapath::remove(&self.path) {
            eprintln!("cleanup: {e}");
        }
    }
}

/// A binary of another workspace package (which `cargo test -p petrel-tests` does not build):
/// `$env_var`, else next to the running test in target/<profile>/. `cargo xtask test` builds them.
pub fn workspace_bin(name: &str, env_var: &str) -> std::path::PathBuf {
    if let Some(p) = std::env::var_os(env_var) {
        return std::path::PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    let dirs = [exe.parent().and_then(std::path::Path::parent), exe.parent()];
    dirs.into_iter()
        .flatten()
        .map(|d| d.join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!("{name} is not built: run `cargo xtask test` (it builds it) or set {env_var}")
        })
}

/// CLOCK_MONOTONIC in nanoseconds: the same clock in every process, so one process can subtract
/// the time it made a change from the time another saw it take effect.
pub fn monotonic_ns() -> u128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec to a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128
}

/// Sends `signal` to `child` (a process we started and have not reaped) and waits up to `grace`
/// for it to end; kills it after that. Returns at once if it has already ended.
pub fn stop_child(
    child: &mut std::process::Child,
    signal: libc::c_int,
    grace: std::time::Duration,
) {
    use std::time::{Duration, Instant};
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    // SAFETY: kill(2) on the PID of a child we started and have not reaped.
    unsafe { libc::kill(child.id() as i32, signal) };
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}
