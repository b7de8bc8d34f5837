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
//! Writes `bench/results/bench.md`, `bench.json`, `scaling.png` (connection rate against the
//! number of services) and `sync.png` (full sync time), machine, kernel and versions included. `--only=cni` or `--only=services` runs one part; `--out=DIR` writes elsewhere.

mod cni;
mod report;
mod services;

use petrel_testbed::signal;
use std::{path::PathBuf, process::ExitCode, time::Duration, time::Instant};

/// Removes what an interrupted earlier run left: its namespaces (`pb*`), bpffs folders and
/// cgroups (`petrel-bench-*`). These names are used by the benchmark only.
fn sweep() {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output();
    let list = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let ours = name.len() > 3
            && name.starts_with("pb")
            && matches!(name.as_bytes()[2], b'c' | b'n' | b'p' | b's')
            && name[3..].bytes().all(|b| b.is_ascii_hexdigit());
        if ours {
            eprintln!("==> removing namespace {name} left by an interrupted run");
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", name])
                .status();
        }
    }
    let cgroup = petrel_datapath::sys::cgroup2_root().ok();
    for (dir, pins) in [(Some(PathBuf::from("/sys/fs/bpf")), true), (cgroup, false)] {
        let entries = dir
            .and_then(|d| std::fs::read_dir(d).ok())
            .into_iter()
            .flatten();
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with("petrel-bench-") {
                eprintln!(
                    "==> removing {} left by an interrupted run",
                    e.path().display()
                );
                let _ = if pins {
                    petrel_datapath::Datapath::remove(&e.path())
                        .map(drop)
                        .map_err(drop)
                } else {
                    std::fs::remove_dir(e.path()).map_err(drop)
                };
            }
        }
    }
}

/// The command line, checked.
struct Args {
    quick: bool,
    only: Option<String>,
    out_dir: PathBuf,
    secs: Option<f64>,
    xtables: services::Xtables,
    scales: Option<Vec<usize>>,
}

/// Parses `args` (without the program name); the error says what is wrong with which flag.
fn parse_args(args: &[String]) -> Result<Args, String> {
    let quick = args.iter().any(|a| a == "--quick");
    let only = args.iter().find_map(|a| a.strip_prefix("--only="));
    let out_dir = args
        .iter()
        .find_map(|a| a.strip_prefix("--out="))
        .map_or_else(|| PathBuf::from("bench/results"), PathBuf::from);
    let secs: Option<f64> = match args.iter().find_map(|a| a.strip_prefix("--secs=")) {
        None => None,
        Some(s) => match s.parse() {
            Ok(v) if v > 0.0 => Some(v),
            _ => {
                return Err(format!(
                    "--secs takes a positive number of seconds, not {s:?}"
                ));
            }
        },
    };
    let xtables = match args.iter().find_map(|a| a.strip_prefix("--iptables=")) {
        None | Some("legacy") => services::Xtables::Legacy,
        Some("nft") => services::Xtables::Nft,
        Some(other) => {
            return Err(format!("--iptables takes legacy or nft, not {other:?}"));
        }
    };
    let scales: Option<Vec<usize>> = match args.iter().find_map(|a| a.strip_prefix("--scales=")) {
        None => None,
        Some(list) => match list
            .split(',')
            .map(str::parse)
            .collect::<Result<Vec<usize>, _>>()
        {
            Ok(v) if !v.is_empty() && v.iter().all(|n| *n > 0) && v.is_sorted() => Some(v),
            _ => {
                return Err(format!(
                    "--scales takes increasing service counts, e.g. 1,1000,10000, not {list:?}"
                ));
            }
        },
    };
    let known = [
        "--quick",
        "--only=",
        "--out=",
        "--secs=",
        "--iptables=",
        "--scales=",
    ];
    if let Some(bad) = args
        .iter()
        .find(|a| !known.iter().any(|k| a.starts_with(k)))
    {
        return Err(format!(
            "unknown argument {bad:?} (known: --quick, --only=cni|services|scale, --out=DIR, --secs=S, --iptables=legacy|nft, --scales=N,N,..)"
        ));
    }
    if only.is_some_and(|o| !["cni", "services", "scale"].contains(&o)) {
        return Err("--only takes cni, services or scale".into());
    }
    Ok(Args {
        quick,
        only: only.map(str::to_string),
        out_dir,
        secs,
        xtables,
        scales,
    })
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Args {
        quick,
        only,
        out_dir,
        secs,
        xtables,
        scales,
    } = match parse_args(&args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("petrel-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let only = only.as_deref();
    if only == Some("scale") {
        return scale(quick, scales, &out_dir);
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "petrel-bench needs root (network namespaces, eBPF): run `cargo xtask bench` as root"
        );
        return ExitCode::FAILURE;
    }
    // Ctrl-C or SIGTERM: every process of the run (API server, etcd, agents, kube-proxy,
    // servers, load generators) is in this process group; end them all. Namespaces, pins and
    // cgroups left by an interrupted run are removed by the next one (`sweep`).
    signal::on_signal(signal::OnSignal::EndProcessGroup);
    sweep();
    let started = Instant::now();
    let machine = report::machine(quick);
    let mut sections = Vec::new();
    if only != Some("cni") {
        let mut opts = if quick {
            services::Opts {
                scales: vec![1, 100],
                churn_scales: vec![100],
                big: 2_000,
                secs: 0.7,
                rounds: 1,
                changes: 10,
                churn_budget: Duration::from_secs(15),
                xtables,
            }
        } else {
            services::Opts {
                scales: vec![1, 1_000, 10_000],
                churn_scales: vec![1_000, 10_000],
                big: 100_000,
                secs: 2.0,
                rounds: 5,
                changes: 100,
                churn_budget: Duration::from_secs(60),
                xtables,
            }
        };
        if let Some(s) = secs {
            opts.secs = s;
        }
        if let Some(v) = scales {
            // Endpoint changes at every scale past the first (at the only one, if one).
            opts.churn_scales = v.iter().skip(usize::from(v.len() > 1)).copied().collect();
            opts.scales = v;
        }
        let section = services::run(opts);
        report::plot(
            &out_dir.join("scaling.png"),
            "New connections per second through a ClusterIP",
            "connections/s",
            &services::rate_series(&section),
        );
        report::plot(
            &out_dir.join("sync.png"),
            "Full sync: proxy start until the newest service answers",
            "seconds",
            &services::sync_series(&section),
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
        if only == Some("cni") {
            ""
        } else {
            ", scaling.png and sync.png"
        },
        started.elapsed().as_secs_f64()
    );
    ExitCode::SUCCESS
}

/// `--only=scale`: petrel at `scales` services (default 1,000, 10,000, 100,000) through the
/// real API server; writes `scale.md`, `scale.json` and `scale.png` under `out_dir`.
fn scale(quick: bool, scales: Option<Vec<usize>>, out_dir: &std::path::Path) -> ExitCode {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("petrel-bench needs root (network namespaces, eBPF)");
        return ExitCode::FAILURE;
    }
    signal::on_signal(signal::OnSignal::EndProcessGroup);
    sweep();
    let started = Instant::now();
    let machine = report::machine(quick);
    let section = services::scale::run(services::scale::ScaleOpts {
        scales: scales.unwrap_or_else(|| {
            if quick {
                vec![100, 1_000]
            } else {
                vec![1_000, 10_000, 100_000]
            }
        }),
        changes: if quick { 10 } else { 100 },
        heartbeats: if quick { 50 } else { 500 },
    });
    report::plot(
        &out_dir.join("scale.png"),
        "petrel through the API server: peak RSS and endpoint-change p99",
        "MiB (RSS) / ms (p99)",
        &services::scale::series(&section),
    );
    let md = report::write_as(out_dir, "scale", &machine, &[("scale", section)]);
    println!("{md}");
    eprintln!(
        "==> wrote {}/scale.md, scale.json and scale.png in {:.0} s",
        out_dir.display(),
        started.elapsed().as_secs_f64()
    );
    ExitCode::SUCCESS
}
