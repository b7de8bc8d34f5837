//! `cargo xtask bench [--quick]`: petrel measured against the real alternatives on this machine,
//! in the same run. Results are ratios as much as times: these machines are shared and noisy.
//!
//! 1. Service datapath (`services`): connection rate and latency through a ClusterIP, petrel
//!    (socket-LB and TC) against the direct pod path and the real kube-proxy (iptables), at
//!    1, 1,000 and 10,000 services.
//! 2. Control plane (`services`): full sync and endpoint-change latency against kube-proxy, and
//!    petrel alone at 100,000 services (sync time, peak RSS).
//! 3. CNI (`cni`): petrel-cni against bridge + host-local.
//!
//! Writes `bench/results/bench.md`, `bench.json` and `scaling.png` (machine, kernel and versions
//! included). `--only=cni` or `--only=services` runs one part; `--out=DIR` writes elsewhere.

mod cni;
mod report;
mod services;

use std::{path::PathBuf, process::ExitCode, time::Duration, time::Instant};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let only = args.iter().find_map(|a| a.strip_prefix("--only="));
    let out_dir = args
        .iter()
        .find_map(|a| a.strip_prefix("--out="))
        .map_or_else(|| PathBuf::from("bench/results"), PathBuf::from);
    if let Some(bad) = args
        .iter()
        .find(|a| *a != "--quick" && !a.starts_with("--only=") && !a.starts_with("--out="))
    {
        eprintln!("petrel-bench: unknown argument {bad:?} (known: --quick, --only=cni|services, --out=DIR)");
        return ExitCode::FAILURE;
    }
    if only.is_some_and(|o| o != "cni" && o != "services") {
        eprintln!("petrel-bench: --only takes cni or services");
        return ExitCode::FAILURE;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("petrel-bench needs root (network namespaces, eBPF): run `cargo xtask bench` as root");
        return ExitCode::FAILURE;
    }
    let started = Instant::now();
    let machine = report::machine(quick);
    let mut sections = Vec::new();
    if only != Some("cni") {
        let opts = if quick {
            services::Opts {
                scales: vec![1, 100],
                churn_scales: vec![100],
                big: 2_000,
                secs: 0.7,
                rounds: 1,
                changes: 10,
                churn_budget: Duration::from_secs(15),
            }
        } else {
            services::Opts {
                scales: vec![1, 1_000, 10_000],
                churn_scales: vec![1_000, 10_000],
                big: 100_000,
                secs: 2.0,
                rounds: 3,
                changes: 100,
                churn_budget: Duration::from_secs(100),
            }
        };
        let section = services::run(opts);
        report::plot(
            &out_dir.join("scaling.png"),
            "New connections per second through a ClusterIP (10 endpoints each)",
            "connections/s",
            &services::series(&section),
        );
        sections.push(("services", section));
    }
    if only != Some("services") {
        sections.push(("cni", cni::run(quick)));
    }
    let md = report::write(&out_dir, &machine, &sections);
    println!("{md}");
    eprintln!(
        "==> wrote {}/bench.md, bench.json{} in {:.0} s",
        out_dir.display(),
        if only == Some("cni") { "" } else { " and scaling.png" },
        started.elapsed().as_secs_f64()
    );
    ExitCode::SUCCESS
}
