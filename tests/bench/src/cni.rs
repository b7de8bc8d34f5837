//! Part 3: petrel-cni against Debian's reference `bridge` + `host-local` plugins, both driven
//! the same way (one plugin config each, the same node namespace, a fresh pod namespace per ADD,
//! through `nsenter` as a runtime would call them): ADD and DEL latency one after another, then
//! N ADDs started at once.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use petrel_testbed::{
    cni::{Call, REFERENCE_PLUGINS, plugin_bin},
    netns::NetNs,
    unique,
};
use serde_json::json;

use petrel_testbed::stats::percentile_ms;

use crate::report::Section;

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

pub fn run(quick: bool) -> Section {
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

    let mut md = format!(
        "### CNI: ADD and DEL\n\n{seq_n} ADD then {seq_n} DEL one after another, then {conc_n} ADDs started at once.\n\n\
         | plugin | ADD p50 ms | ADD p99 ms | DEL p50 ms | DEL p99 ms | concurrent ADD p50 ms | concurrent ADD p99 ms | concurrent wall s |\n\
         |---|---|---|---|---|---|---|---|\n"
    );
    let mut rows = Vec::new();
    for (p, f) in plugins.iter().zip(&figures) {
        let cols = [
            ("add_p50_ms", percentile_ms(&f.add, 50.0)),
            ("add_p99_ms", percentile_ms(&f.add, 99.0)),
            ("del_p50_ms", percentile_ms(&f.del, 50.0)),
            ("del_p99_ms", percentile_ms(&f.del, 99.0)),
            (
                "concurrent_add_p50_ms",
                percentile_ms(&f.concurrent_add, 50.0),
            ),
            (
                "concurrent_add_p99_ms",
                percentile_ms(&f.concurrent_add, 99.0),
            ),
        ];
        let mut row =
            json!({"plugin": p.name, "concurrent_wall_s": f.concurrent_wall.as_secs_f64()});
        md.push_str(&format!("| {} |", p.name));
        for (key, v) in cols {
            row[key] = json!(v);
            md.push_str(&format!(" {v:.1} |"));
        }
        md.push_str(&format!(" {:.2} |\n", f.concurrent_wall.as_secs_f64()));
        rows.push(row);
    }
    let ratio = percentile_ms(&figures[0].add, 50.0) / percentile_ms(&figures[1].add, 50.0);
    let target =
        crate::report::Target::at_most("CNI ADD p50, petrel-cni / bridge+host-local", ratio, 0.5);
    Section {
        md,
        json: json!({"plugins": rows, "sequential": seq_n, "concurrent": conc_n}),
        targets: vec![target],
    }
}
