//! `cargo xtask setup`: installs everything a fresh Debian 12 machine lacks, then returns the
//! environment the other commands build with. Idempotent: each step checks before it acts.
//!
//! The eBPF toolchain (rustup cannot download toolchains or rust-src here):
//! - Debian's rustc-web (1.96, LLVM 22) ships PREBUILT core/alloc for bpfel-unknown-none in
//!   libstd-rust-web-dev-bpf, so no `-Z build-std` is needed;
//! - bpf-linker is built from the crates registry against the very libLLVM.so that Debian's
//!   rustc links (its bitcode must be readable by the linker), with LLVM_PREFIX pointing at a
//!   folder holding a single symlink (llvm-NN-dev is not needed);
//! - Debian's rustc/cargo/clippy are linked as the rustup toolchain `debian-web`, which
//!   userspace/datapath/build.rs hands to aya-build.
//!
//! cargo-fuzz is installed from the crates registry next to bpf-linker (`cargo xtask fuzz`).

use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

pub const EBPF_TOOLCHAIN: &str = "debian-web";
const BPF_LINKER_VERSION: &str = "0.13.0";
/// `cargo fuzz` (libFuzzer driver) for `cargo xtask fuzz`; runs on the stable toolchain (the
/// fuzz build sets RUSTC_BOOTSTRAP=1 for AddressSanitizer's `-Zsanitizer`).
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Debian packages, each with why it is needed.
const PACKAGES: &[(&str, &str)] = &[
    (
        "rustc-web",
        "Rust 1.96 / LLVM 22 compiler for the eBPF crate",
    ),
    ("cargo-web", "its cargo"),
    (
        "libstd-rust-web-dev-bpf",
        "prebuilt core/alloc for bpfel-unknown-none",
    ),
    ("rust-web-clippy", "clippy for the eBPF crate"),
    ("iproute2", "ip: namespaces and veths in tests and the demo"),
    ("util-linux", "nsenter"),
    (
        "iputils-ping",
        "ping: ICMP through masquerading in the multi-node test",
    ),
    ("bpftool", "inspecting programs and maps when debugging"),
    (
        "containernetworking-plugins",
        "CNI reference plugins: baseline and chaining tests",
    ),
    ("etcd-server", "storage of the kube-apiserver fixture"),
    ("openssl", "PKI of the kube-apiserver fixture"),
    (
        "golang-go",
        "builds kube-apiserver and kube-proxy from Debian's source",
    ),
    (
        "golang-github-modern-go-reflect2-dev",
        "reflect2 1.0.2 swapped into that build",
    ),
    (
        "iptables",
        "kube-proxy's iptables mode (the benchmark's baseline); hostPort DNAT in the conntrack tests",
    ),
    ("conntrack", "kube-proxy clears conntrack entries with it"),
    ("gnuplot-nox", "the benchmark's scaling plot"),
    ("rsync", "used by the kubernetes build"),
    ("make", "the kubernetes build"),
    ("ca-certificates", "TLS roots for apt"),
    (
        "containerd",
        "the real cluster's container runtime (one per node, cargo xtask cluster)",
    ),
    ("runc", "containerd's OCI runtime"),
    ("curl", "the real cluster waits for its API server with it"),
    (
        "busybox-static",
        "sh, wget and nc in the real cluster's test workload image",
    ),
    ("gcc", "the static pause image of the real cluster"),
    ("libc6-dev", "its libc"),
];

/// What the other commands build and run with.
pub struct Env {
    pub tools: PathBuf,
    pub kube_bin: PathBuf,
    pub target_dir: PathBuf,
}

impl Env {
    /// Puts bpf-linker on PATH and tells the tests where the kube fixture binaries are.
    pub fn apply(&self, cmd: &mut Command) {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut parts = vec![self.tools.join("bin")];
        parts.extend(std::env::split_paths(&path));
        cmd.env(
            "PATH",
            std::env::join_paths(parts).expect("PATH entries without ':'"),
        );
        cmd.env("PETREL_TOOLS", &self.tools);
        cmd.env("PETREL_KUBE_BIN", &self.kube_bin);
    }
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

fn cache_dir() -> anyhow::Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    Ok(PathBuf::from(home).join(".cache/petrel"))
}

pub fn run(root: &Path, with_kube: bool) -> anyhow::Result<Env> {
    let cache = cache_dir()?;
    let env = Env {
        tools: cache.join("tools"),
        kube_bin: cache.join("kube/bin"),
        // cargo's own choice, so the binaries the commands run are the ones cargo built.
        target_dir: std::env::var_os("CARGO_TARGET_DIR")
            .map_or_else(|| root.join("target"), PathBuf::from),
    };
    debian_packages()?;
    bpf_linker(&env.tools)?;
    cargo_fuzz(&env.tools)?;
    toolchain_link(&env.tools)?;
    bpffs()?;
    if with_kube {
        kube_fixture(root, &cache)?;
    }
    Ok(env)
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .is_ok_and(|o| o.stdout.ends_with(b"install ok installed"))
}

fn debian_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .map(|(p, _)| *p)
        .filter(|p| !installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "Debian packages missing ({}); run `cargo xtask setup` as root",
            missing.join(" ")
        );
    }
    eprintln!("==> setup: apt-get install {}", missing.join(" "));
    let apt = |args: &[&str]| -> anyhow::Result<()> {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("running apt-get")?;
        if !status.success() {
            bail!("apt-get {} failed ({status})", args.join(" "));
        }
        Ok(())
    };
    apt(&["update", "-qq"])?;
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend(&missing);
    apt(&args)
}

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn bpf_linker(tools: &Path) -> anyhow::Result<()> {
    let vv = output(Command::new("/usr/bin/rustc").arg("-vV"))?;
    let llvm = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .context("no LLVM version in `/usr/bin/rustc -vV`")?
        .to_string();
    let major = llvm.split('.').next().unwrap_or_default().to_string();
    let ldd = output(Command::new("ldd").arg("/usr/bin/rustc"))?;
    let libllvm = ldd
        .lines()
        .find(|l| l.contains("libLLVM"))
        .and_then(|l| l.split_whitespace().nth(2))
        .context("cannot find the libLLVM that /usr/bin/rustc links")?
        .to_string();
    let prefix = tools.join(format!("llvm-{major}"));
    fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = fs::remove_file(&link);
    symlink(&libllvm, &link)?;

    // Rebuild when Debian moves rustc to another LLVM.
    let stamp_path = tools.join("bpf-linker.stamp");
    let stamp = format!("bpf-linker {BPF_LINKER_VERSION} llvm {llvm}");
    let linker = tools.join("bin/bpf-linker");
    let works = Command::new(&linker)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if works && fs::read_to_string(&stamp_path).is_ok_and(|s| s.trim() == stamp) {
        return Ok(());
    }
    eprintln!(
        "==> setup: cargo install bpf-linker@{BPF_LINKER_VERSION} against LLVM {llvm} (1-2 minutes)"
    );
    let status = Command::new("cargo")
        .args(["install", "--locked", "--quiet", "--root"])
        .arg(tools)
        .arg(format!("bpf-linker@{BPF_LINKER_VERSION}"))
        .args([
            "--no-default-features",
            "--features",
            &format!("llvm-{major}"),
        ])
        .env("LLVM_PREFIX", &prefix)
        .status()
        .context("running cargo install")?;
    if !status.success() {
        bail!("cargo install bpf-linker failed ({status})");
    }
    fs::write(&stamp_path, stamp)?;
    Ok(())
}

fn cargo_fuzz(tools: &Path) -> anyhow::Result<()> {
    let bin = tools.join("bin/cargo-fuzz");
    let installed = Command::new(&bin)
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(CARGO_FUZZ_VERSION));
    if installed {
        return Ok(());
    }
    eprintln!("==> setup: cargo install cargo-fuzz@{CARGO_FUZZ_VERSION} (about a minute)");
    let status = Command::new("cargo")
        .args(["install", "--locked", "--quiet", "--root"])
        .arg(tools)
        .arg(format!("cargo-fuzz@{CARGO_FUZZ_VERSION}"))
        .status()
        .context("running cargo install")?;
    if !status.success() {
        bail!("cargo install cargo-fuzz failed ({status})");
    }
    Ok(())
}

fn toolchain_link(tools: &Path) -> anyhow::Result<()> {
    let dir = tools.join(format!("toolchain-{EBPF_TOOLCHAIN}"));
    fs::create_dir_all(dir.join("bin"))?;
    fs::create_dir_all(dir.join("lib"))?; // rustup insists on bin/ and lib/
    for b in ["rustc", "cargo", "rustdoc", "cargo-clippy", "clippy-driver"] {
        let link = dir.join("bin").join(b);
        if fs::read_link(&link).ok().as_deref() != Some(Path::new(&format!("/usr/bin/{b}"))) {
            let _ = fs::remove_file(&link);
            symlink(format!("/usr/bin/{b}"), &link)?;
        }
    }
    let list = output(Command::new("rustup").args(["toolchain", "list"]))?;
    if !list
        .lines()
        .any(|l| l.split_whitespace().next() == Some(EBPF_TOOLCHAIN))
    {
        output(
            Command::new("rustup")
                .args(["toolchain", "link", EBPF_TOOLCHAIN])
                .arg(&dir),
        )?;
    }
    let sysroot = output(Command::new("rustup").args([
        "run",
        EBPF_TOOLCHAIN,
        "rustc",
        "--print",
        "sysroot",
    ]))?;
    if sysroot.trim() != "/usr" {
        bail!(
            "toolchain {EBPF_TOOLCHAIN} does not use Debian's sysroot (got {})",
            sysroot.trim()
        );
    }
    if !Path::new("/usr/lib/rustlib/bpfel-unknown-none/lib").is_dir() {
        bail!("libstd-rust-web-dev-bpf did not provide /usr/lib/rustlib/bpfel-unknown-none");
    }
    Ok(())
}

fn bpffs() -> anyhow::Result<()> {
    let mounts = fs::read_to_string("/proc/mounts")?;
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.contains(" bpf "))
    {
        return Ok(());
    }
    if !is_root() {
        eprintln!(
            "==> setup: bpffs is not mounted at /sys/fs/bpf (needs root; the datapath mounts it when it loads)"
        );
        return Ok(());
    }
    eprintln!("==> setup: mount -t bpf bpf /sys/fs/bpf");
    fs::create_dir_all("/sys/fs/bpf")?;
    output(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))?;
    Ok(())
}

/// The Kubernetes v1.20.2 binaries: kube-apiserver and kube-proxy (the fixture and the benchmark's
/// baseline), kubelet, kube-controller-manager, kube-scheduler, kubectl and petrel-kubedns (the
/// real cluster and its DNS, tests/realnode/kubedns),
/// built once from Debian's source into `~/.cache/petrel/kube/bin`. The script is a fast no-op
/// when every binary is there; it keeps the unpacked tree and Go's cache for later builds.
fn kube_fixture(root: &Path, cache: &Path) -> anyhow::Result<()> {
    let status = Command::new("nice")
        .args(["-n", "10", "bash"])
        .arg(root.join("xtask/scripts/build-kube.sh"))
        .arg(cache.join("kube/bin"))
        .arg(cache.join("kube/work"))
        .status()
        .context("running build-kube.sh")?;
    if !status.success() {
        bail!("building the Kubernetes binaries failed ({status})");
    }
    Ok(())
}
