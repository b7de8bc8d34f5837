//! `cargo xtask bench [--quick]`: petrel measured against the real alternatives on this machine,
//! in the same run. Results are ratios as much as times: these machines are shared and noisy.
//!
//! Built so far (issue 7, part 3): the CNI benchmark. petrel-cni against Debian's reference
//! `bridge` + `host-local` plugins, both driven the same way (one plugin config each, the same
//! node namespace, a fresh pod namespace per ADD, through `nsenter` as a runtime would call
//! them): ADD and DEL latency one after another, then N ADDs started at once.
//! Writes `bench/results/cni.md` and `cni.json` (machine, kernel and versions included).

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant},
};

use petrel_tests::{
    cni::{Call, REFERENCE_PLUGINS, plugin_bin},
    netns::NetNs,
    unique,
};
use serde_json::json;

struct Plugin {
    name: &'static str,
    bin: PathBuf,
    conf: String,
}

fn plugins(dir: &Path) -> Vec<Plugin> {
    let petrel = json!({
        "cniVersion": "1.1.0", "name": "bench", "type": "petrel-cni",
        "podCIDR": "10.244.1.0/24", "dataDir": dir.join("petrel-ipam"),
    });
    let bridge = json!({
        "cniVersion": "1.0.0", "name": "bench", "type": "bridge",
        "bridge": "cni0", "isGateway": true, "ipMasq": false,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": "10.244.2.0/24"}]],
            "dataDir": dir.join("host-local"),
        },
    });
    vec![
        Plugin {
            name: "petrel-cni",
            bin: plugin_bin(),
            conf: petrel.to_string(),
        },
        Plugin {
            name: "bridge+host-local",
            bin: Path::new(REFERENCE_PLUGINS).join("bridge"),
            conf: bridge.to_string(),
        },
    ]
}

fn call<'a>(p: &Plugin, command: &'a str, id: &'a str, pod: &NetNs) -> Call<'a> {
    Call {
        plugin: p.bin.clone(),
        command,
        container_id: id,
        ifname: "eth0",
        netns: Some(pod.path()),
        extra_env: Vec::new(),
    }
}

/// Times one plugin call; panics with the plugin's answer when it fails.
fn timed(p: &Plugin, command: &str, id: &str, pod: &NetNs, node: &NetNs) -> Duration {
    let t = Instant::now();
    let out = call(p, command, id, pod).run(node, &p.conf);
    let took = t.elapsed();
    assert_eq!(
        out.code, 0,
        "{} {command} {id}: {} {}",
        p.name, out.stdout, out.stderr
    );
    took
}

#[derive(Default)]
struct Figures {
    add: Vec<Duration>,
    del: Vec<Duration>,
    concurrent_add: Vec<Duration>,
    concurrent_wall: Duration,
}

fn percentile(v: &[Duration], p: f64) -> f64 {
    let mut s: Vec<f64> = v.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (s.len() - 1) as f64).round() as usize;
    s[i.min(s.len() - 1)]
}

/// `n` pods one after another: ADD each, then DEL each.
fn sequential(p: &Plugin, node: &NetNs, n: usize, f: &mut Figures) {
    let pods: Vec<(String, NetNs)> = (0..n)
        .map(|i| (format!("seq{i}"), NetNs::new(&unique("pbp"))))
        .collect();
    for (id, pod) in &pods {
        f.add.push(timed(p, "ADD", id, pod, node));
    }
    for (id, pod) in &pods {
        f.del.push(timed(p, "DEL", id, pod, node));
    }
}

/// `n` ADDs started at once (as a node does when many pods land on it), each timed from its
/// start to its exit; then every pod is deleted (not timed).
fn concurrent(p: &Plugin, node: &NetNs, n: usize, f: &mut Figures) {
    let pods: Vec<(String, NetNs)> = (0..n)
        .map(|i| (format!("conc{i}"), NetNs::new(&unique("pbp"))))
        .collect();
    let wall = Instant::now();
    let children: Vec<_> = pods
        .iter()
        .map(|(id, pod)| (Instant::now(), call(p, "ADD", id, pod).spawn(node, &p.conf)))
        .collect();
    for (started, child) in children {
        let out = child.wait_with_output().expect("wait plugin");
        let took = started.elapsed();
        assert!(
            out.status.success(),
            "{} concurrent ADD: {}{}",
            p.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        f.concurrent_add.push(took);
    }
    f.concurrent_wall = wall.elapsed();
    for (id, pod) in &pods {
        timed(p, "DEL", id, pod, node);
    }
}

fn sh_out(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let out_dir = args
        .iter()
        .find_map(|a| a.strip_prefix("--out="))
        .map_or_else(|| PathBuf::from("bench/results"), PathBuf::from);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("petrel-bench needs root (network namespaces): run `cargo xtask bench` as root");
        return ExitCode::FAILURE;
    }
    let (seq_n, conc_n) = if quick { (20, 30) } else { (100, 100) };
    let dir = tempfile::tempdir().expect("tempdir");
    let node = NetNs::new(&unique("pbn"));
    node.sysctl("net.ipv4.ip_forward", "1");
    let plugins = plugins(dir.path());
    let mut figures: Vec<Figures> = plugins.iter().map(|_| Figures::default()).collect();

    eprintln!(
        "==> CNI: {seq_n} sequential ADD+DEL, then {conc_n} concurrent ADDs, per plugin (interleaved)"
    );
    // Interleaved: each phase runs for every plugin before the next phase, so drift in the
    // machine's load spreads over both.
    for (p, f) in plugins.iter().zip(figures.iter_mut()) {
        sequential(p, &node, seq_n, f);
    }
    for (p, f) in plugins.iter().zip(figures.iter_mut()) {
        concurrent(p, &node, conc_n, f);
    }

    let mut md = String::from(
        "| plugin | ADD p50 ms | ADD p99 ms | DEL p50 ms | DEL p99 ms | concurrent ADD p50 ms | concurrent ADD p99 ms | concurrent wall s |\n|---|---|---|---|---|---|---|---|\n",
    );
    let mut rows = Vec::new();
    for (p, f) in plugins.iter().zip(&figures) {
        let row = json!({
            "plugin": p.name,
            "add_p50_ms": percentile(&f.add, 50.0),
            "add_p99_ms": percentile(&f.add, 99.0),
            "del_p50_ms": percentile(&f.del, 50.0),
            "del_p99_ms": percentile(&f.del, 99.0),
            "concurrent_add_p50_ms": percentile(&f.concurrent_add, 50.0),
            "concurrent_add_p99_ms": percentile(&f.concurrent_add, 99.0),
            "concurrent_wall_s": f.concurrent_wall.as_secs_f64(),
        });
        md.push_str(&format!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} |\n",
            p.name,
            row["add_p50_ms"].as_f64().unwrap_or(f64::NAN),
            row["add_p99_ms"].as_f64().unwrap_or(f64::NAN),
            row["del_p50_ms"].as_f64().unwrap_or(f64::NAN),
            row["del_p99_ms"].as_f64().unwrap_or(f64::NAN),
            row["concurrent_add_p50_ms"].as_f64().unwrap_or(f64::NAN),
            row["concurrent_add_p99_ms"].as_f64().unwrap_or(f64::NAN),
            row["concurrent_wall_s"].as_f64().unwrap_or(f64::NAN),
        ));
        rows.push(row);
    }
    let ratio = percentile(&figures[0].add, 50.0) / percentile(&figures[1].add, 50.0);
    let verdict = if ratio <= 0.5 { "met" } else { "missed" };
    md.push_str(&format!(
        "\nADD p50, petrel-cni / bridge+host-local: {ratio:.2} (target <= 0.5: {verdict}).\n"
    ));
    let machine = json!({
        "kernel": sh_out("uname", &["-r"]),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "petrel": env!("CARGO_PKG_VERSION"),
        "containernetworking_plugins": sh_out("dpkg-query", &["-W", "-f=${Version}", "containernetworking-plugins"]),
        "sequential": seq_n,
        "concurrent": conc_n,
        "quick": quick,
    });
    md.push_str(&format!(
        "\nMachine: kernel {}, {} CPUs; petrel {}, containernetworking-plugins {}; {} sequential, {} concurrent.\n",
        machine["kernel"].as_str().unwrap_or("?"),
        machine["cpus"],
        machine["petrel"].as_str().unwrap_or("?"),
        machine["containernetworking_plugins"].as_str().unwrap_or("?"),
        seq_n,
        conc_n
    ));
    std::fs::create_dir_all(&out_dir).expect("results folder");
    std::fs::write(out_dir.join("cni.md"), &md).expect("write cni.md");
    let all = json!({"machine": machine, "cni": rows, "add_p50_ratio": ratio});
    std::fs::write(
        out_dir.join("cni.json"),
        serde_json::to_string_pretty(&all).expect("json") + "\n",
    )
    .expect("write cni.json");
    println!("{md}");
    eprintln!("==> wrote {}/cni.md and cni.json", out_dir.display());
    ExitCode::SUCCESS
}
