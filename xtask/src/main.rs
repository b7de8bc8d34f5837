//! `cargo xtask <command>`: the only place that knows how petrel is built and tested.
//! Every command runs `setup` first, so a fresh machine needs nothing but these commands.

mod cluster;
mod conformance;
mod fuzz;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what this machine lacks (Debian packages, bpf-linker, the eBPF toolchain link,
    /// bpffs, the kube-apiserver/kube-proxy fixture). Idempotent; a fast no-op when done.
    Setup {
        /// Skip building the kube-apiserver fixture (only tests and benchmarks need it).
        #[arg(long)]
        no_kube: bool,
    },
    /// Build everything in release mode (the eBPF object is built by userspace/datapath/build.rs).
    Build,
    /// rustfmt and clippy (-D warnings) for the host crates and the eBPF crate.
    Lint,
    /// Every test: lints, unit tests, the privileged tests (root, network namespaces, real
    /// kube-apiserver), then each fuzz target for 20 s.
    Test {
        /// Extra arguments for the privileged test binary (a test name filter, --nocapture, ...).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Fuzzing (tests/fuzz, libFuzzer with AddressSanitizer): builds the targets and runs each
    /// for `--secs` on a copy of its seed corpus; fails on a crash, naming the input. The
    /// tc_packets target needs root.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        secs: u64,
        /// One target (cni_config, manifests, tc_packets); all when left out.
        #[arg(value_parser = clap::builder::PossibleValuesParser::new(fuzz::TARGETS))]
        target: Option<String>,
    },
    /// The main job on one machine: a throw-away simulated node in network namespaces with the
    /// datapath loaded, a service VIP answering, and everything removed at the end.
    Demo,
    /// Benchmarks against the real alternatives, in one run (not a test: no timed assertions):
    /// the service datapath and control plane against kube-proxy (iptables) and the direct pod
    /// path, and petrel-cni against bridge+host-local. Results in bench/results/.
    Bench {
        /// Fewer repetitions (a smoke run of the benchmark).
        #[arg(long)]
        quick: bool,
    },
    /// A real Kubernetes v1.20.2 cluster on this machine: control plane, and nodes in network
    /// namespaces with their own containerd and kubelet; petrel installed by its DaemonSet.
    Cluster {
        #[command(subcommand)]
        command: ClusterCmd,
    },
    /// petrel's image, the test workload's and pause as docker archives in
    /// target/realnode-images (no registry, no container engine); imported into the running
    /// cluster's nodes.
    Image,
    /// The upstream `[sig-network] Services` and `[sig-network] Networking` e2e tests (e2e.test
    /// v1.20.2) on two real 2-node clusters at once, one with petrel, one with kube-proxy and
    /// bridge + host-local; results side by side in results/conformance.md and .json, and the
    /// README's table. About 25 minutes; not part of `cargo xtask test`.
    Conformance,
}

#[derive(Subcommand)]
enum ClusterCmd {
    /// Builds what is missing, brings the cluster up, imports the images and installs petrel
    /// with `kubectl apply -k tests/realnode/overlay`.
    Up {
        /// How many nodes (the first also runs the control plane).
        #[arg(long, default_value_t = 2)]
        nodes: u32,
        /// Leave petrel out (the nodes stay NotReady: no CNI).
        #[arg(long)]
        no_petrel: bool,
    },
    /// Removes everything `up` made.
    Down,
    /// kubectl against the cluster (e.g. `cargo xtask cluster kubectl get pods -A`).
    Kubectl {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    std::env::set_current_dir(&root)?;
    match cli.command {
        Cmd::Setup { no_kube } => setup::run(&root, !no_kube).map(drop),
        Cmd::Build => {
            let env = setup::run(&root, false)?;
            build(&env)
        }
        Cmd::Lint => {
            let env = setup::run(&root, false)?;
            lint(&env)
        }
        Cmd::Test { args } => {
            let env = setup::run(&root, true)?;
            test(&env, &args)
        }
        Cmd::Fuzz { secs, target } => {
            let env = setup::run(&root, false)?;
            let targets: Vec<&str> = match &target {
                Some(t) => vec![t.as_str()],
                None => fuzz::TARGETS.to_vec(),
            };
            fuzz::run(&env, &root, secs, &targets)
        }
        Cmd::Demo => {
            let env = setup::run(&root, false)?;
            demo(&env)
        }
        Cmd::Bench { quick } => {
            // The service benchmark runs the real kube-apiserver and kube-proxy.
            let env = setup::run(&root, true)?;
            bench(&env, quick)
        }
        Cmd::Cluster { command } => {
            let env = setup::run(&root, !matches!(command, ClusterCmd::Down))?;
            match command {
                ClusterCmd::Up { nodes, no_petrel } => cluster::up(&env, &root, nodes, !no_petrel),
                ClusterCmd::Down => cluster::down(&env, &root),
                ClusterCmd::Kubectl { args } => cluster::kubectl(&env, &root, &args),
            }
        }
        Cmd::Image => {
            let env = setup::run(&root, false)?;
            cluster::image(&env, &root)
        }
        Cmd::Conformance => {
            let env = setup::run(&root, true)?;
            conformance::run(&env, &root)
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_path_buf()
}

/// Runs a command with the setup's environment, echoing it, failing on a non-zero exit.
pub fn run(env: &setup::Env, program: &str, args: &[&str]) -> anyhow::Result<()> {
    run_with(env, &[], program, args)
}

/// `run` with extra environment variables.
pub fn run_with(
    env: &setup::Env,
    vars: &[(&str, &str)],
    program: &str,
    args: &[&str],
) -> anyhow::Result<()> {
    let started = Instant::now();
    eprintln!("==> {program} {}", args.join(" "));
    let mut cmd = Command::new(program);
    cmd.args(args);
    env.apply(&mut cmd);
    cmd.envs(vars.iter().copied());
    let status = cmd
        .status()
        .with_context(|| format!("starting {program}"))?;
    if !status.success() {
        bail!("`{program} {}` failed ({status})", args.join(" "));
    }
    eprintln!("    ({:.1}s)", started.elapsed().as_secs_f64());
    Ok(())
}

/// The trimmed standard output of a command that must succeed.
pub fn output_of(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("starting {program}"))?;
    if !out.status.success() {
        bail!("`{program} {}` failed ({})", args.join(" "), out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn build(env: &setup::Env) -> anyhow::Result<()> {
    run(
        env,
        "cargo",
        &[
            "build",
            "--release",
            "--workspace",
            "--exclude",
            "petrel-ebpf",
            "--bins",
        ],
    )
}

fn lint(env: &setup::Env) -> anyhow::Result<()> {
    run(env, "cargo", &["fmt", "--all", "--check"])?;
    run(
        env,
        "cargo",
        &[
            "clippy",
            "--workspace",
            "--exclude",
            "petrel-ebpf",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    // The fuzz targets: a workspace of their own (tests/fuzz), checked as a plain build.
    let fuzz_manifest = "tests/fuzz/Cargo.toml";
    run(
        env,
        "cargo",
        &["fmt", "--manifest-path", fuzz_manifest, "--all", "--check"],
    )?;
    // The main workspace's target folder (its own would be tests/fuzz/target).
    let target_dir =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| env.target_dir.clone(), PathBuf::from);
    let target_dir = target_dir.to_str().context("non-UTF-8 target dir")?;
    run(
        env,
        "cargo",
        &[
            "clippy",
            "--manifest-path",
            fuzz_manifest,
            "--target-dir",
            target_dir,
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    // The eBPF crate with Debian's clippy (same compiler as its build) for the BPF target.
    // RUSTC_BOOTSTRAP names only aya_ebpf, the one crate that needs a feature gate (see
    // userspace/datapath/build.rs).
    let manifest = "ebpf/programs/Cargo.toml";
    run_with(
        env,
        &[("RUSTC_BOOTSTRAP", "aya_ebpf")],
        "rustup",
        &[
            "run",
            setup::EBPF_TOOLCHAIN,
            "cargo",
            "clippy",
            "--manifest-path",
            manifest,
            "--target",
            "bpfel-unknown-none",
            "--release",
            "--target-dir",
            "target/ebpf-clippy",
            "--",
            "-D",
            "warnings",
        ],
    )
}

pub fn require_root(why: &str) -> anyhow::Result<()> {
    if !setup::is_root() {
        bail!("{why} needs root (CAP_BPF, CAP_NET_ADMIN, network namespaces): run as root");
    }
    Ok(())
}

fn test(env: &setup::Env, extra: &[String]) -> anyhow::Result<()> {
    require_root("cargo xtask test")?;
    lint(env)?;
    // Unit tests (no privilege needed; petrel-testbed's included). petrel-tests runs below, in
    // release; petrel-bench is a root-only tool with no tests of its own.
    run(
        env,
        "cargo",
        &[
            "test",
            "--workspace",
            "--exclude",
            "petrel-ebpf",
            "--exclude",
            "petrel-tests",
            "--exclude",
            "petrel-bench",
        ],
    )?;
    // The privileged tests drive the real petrel-cni, petrel-agent, netctl and petrel-pod
    // binaries (other packages' binaries, which `cargo test -p petrel-tests` would not build).
    // petrel-cni with its test hook (a pause inside ADD, for the SIGKILL test); the demo and the
    // benchmark build it without, so they run the shipped binary.
    build_bins(env, &["petrel-testbed"], &["petrel-cni/test-hooks"])?;
    let mut args = vec!["test", "--release", "-p", "petrel-tests", "--"];
    args.extend(extra.iter().map(String::as_str));
    run(env, "cargo", &args)?;
    // Each fuzz target briefly: a regression in a parser's robustness fails the run.
    fuzz::run(env, &workspace_root(), FUZZ_SECS_IN_TEST, &fuzz::TARGETS)
}

/// Seconds each fuzz target runs in `cargo xtask test`.
const FUZZ_SECS_IN_TEST: u64 = 20;

/// The product's binaries (petrel-cni, petrel-agent, netctl) and those of `extra` packages, in
/// release mode, with `features` on.
pub fn build_bins(env: &setup::Env, extra: &[&str], features: &[&str]) -> anyhow::Result<()> {
    let mut args = vec!["build", "--release", "--bins"];
    for p in ["petrel-cni", "petrel-agent", "petrel-netctl"]
        .iter()
        .chain(extra)
    {
        args.extend(["-p", p]);
    }
    let features = features.join(",");
    if !features.is_empty() {
        args.extend(["--features", &features]);
    }
    run(env, "cargo", &args)
}

/// Builds every binary the demo and the benchmarks run (release).
fn build_tools(env: &setup::Env) -> anyhow::Result<()> {
    build_bins(env, &["petrel-testbed", "petrel-bench"], &[])
}

fn demo(env: &setup::Env) -> anyhow::Result<()> {
    require_root("cargo xtask demo")?;
    build_tools(env)?;
    let demo = env.target_dir.join("release/petrel-demo");
    run(env, demo.to_str().context("non-UTF-8 target dir")?, &[])
}

fn bench(env: &setup::Env, quick: bool) -> anyhow::Result<()> {
    require_root("cargo xtask bench")?;
    build_tools(env)?;
    let bench = env.target_dir.join("release/petrel-bench");
    let args: &[&str] = if quick { &["--quick"] } else { &[] };
    run(env, bench.to_str().context("non-UTF-8 target dir")?, args)
}
