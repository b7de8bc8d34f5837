//! `cargo xtask demo`: the main job on one machine. A simulated node in network namespaces, pods
//! wired by the real `petrel-cni`, `petrel-agent` in standalone mode programming a ClusterIP and a
//! NodePort service from manifests, requests from a pod and from a host outside the node, how
//! they spread, `netctl dump-services`, an endpoint leaving, and everything removed at the end,
//! also on Ctrl-C.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use petrel_testbed::{
    agent::Agent,
    cni::{Call, Outcome},
    netns::{NetNs, veth},
    pod, signal,
};

fn step(msg: &str) -> anyhow::Result<()> {
    if signal::interrupted() {
        bail!("interrupted: cleaning up");
    }
    println!("==> {msg}");
    Ok(())
}

const PINS: &str = "/sys/fs/bpf/petrel-demo";
const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
const OUTSIDE_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const NODE_PORT: u16 = 30080;

fn main() {
    // Ctrl-C stops at the next step; the guards then remove everything.
    signal::on_signal(signal::OnSignal::SetFlag);
    let started = Instant::now();
    let result = demo();
    // Every guard has been dropped by now: agent, servers, namespaces, veths; pins removed by
    // `petrel-agent --cleanup`.
    let _ = std::fs::remove_dir_all(PINS);
    let leftovers = leftovers();
    match (&result, leftovers.is_empty()) {
        (Ok(()), true) => println!(
            "==> cleaned up: no namespace, link, pin or process left behind ({:.1}s in all)",
            started.elapsed().as_secs_f64()
        ),
        _ => {
            if let Err(e) = &result {
                eprintln!("demo failed: {e:#}");
            }
            if !leftovers.is_empty() {
                eprintln!("left behind: {}", leftovers.join(", "));
            }
            std::process::exit(1);
        }
    }
}

fn leftovers() -> Vec<String> {
    let mut left = Vec::new();
    if let Ok(out) = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
    {
        left.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| l.starts_with("petrel-demo"))
                .map(|l| format!("netns {l}")),
        );
    }
    if Path::new(PINS).exists() {
        left.push(format!("pins {PINS}"));
    }
    left
}

/// A binary built next to this one (`cargo xtask demo` builds them all in target/release).
fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let p = exe.parent().context("exe has a folder")?.join(name);
    if !p.exists() {
        bail!(
            "{} is missing: run `cargo xtask demo`, which builds it",
            p.display()
        );
    }
    Ok(p)
}

fn service_manifest(pods: &[(String, Ipv4Addr)]) -> String {
    let eps: Vec<String> = pods
        .iter()
        .map(|(_, ip)| {
            format!("  - {{addresses: [{ip}], nodeName: demo-node, conditions: {{ready: true}}}}")
        })
        .collect();
    format!(
        "# Written by the demo; petrel-agent --manifests follows this folder.
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  type: NodePort
  clusterIP: {VIP}
  ports: [{{name: http, port: 80, targetPort: 8080, nodePort: {NODE_PORT}, protocol: TCP}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-1, namespace: default, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
endpoints:
{}
ports: [{{name: http, port: 8080, protocol: TCP}}]
",
        eps.join("\n")
    )
}

/// `n` requests from the namespace at `ns` to `to`; how many each server answered, and the
/// client addresses they saw.
fn spread(
    ns: &Path,
    to: SocketAddrV4,
    n: usize,
) -> anyhow::Result<(BTreeMap<String, usize>, Vec<String>)> {
    let ns = ns.to_path_buf();
    let replies = std::thread::spawn(move || -> anyhow::Result<Vec<pod::Reply>> {
        petrel_testbed::netns::enter(&ns);
        (0..n)
            .map(|_| pod::tcp_get(to).with_context(|| format!("request to {to}")))
            .collect()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("client thread panicked"))??;
    let mut counts = BTreeMap::new();
    for r in &replies {
        *counts.entry(r.server.clone()).or_default() += 1;
    }
    let mut seen: Vec<String> = replies.into_iter().map(|r| r.client_seen).collect();
    seen.dedup();
    Ok((counts, seen))
}

fn print_spread(counts: &BTreeMap<String, usize>) {
    for (server, n) in counts {
        println!("    {server:<6} answered {n:>2} {}", "#".repeat(*n));
    }
}

/// petrel-agent's arguments: standalone mode on `manifests`, its files under `state`.
fn agent_args(manifests: &Path, state: &Path) -> Vec<String> {
    [
        "--manifests",
        &manifests.display().to_string(),
        "--node-name",
        "demo-node",
        "--node-ip",
        &NODE_IP.to_string(),
        "--external-interface",
        "ext0",
        "--bpffs-root",
        PINS,
        // Clients here are threads of this process, outside any socket-LB cgroup: the TC path
        // serves them. (On a node, socket-LB is attached at the cgroup2 root.)
        "--socket-lb",
        "false",
        "--min-sync-period",
        "20ms",
        "--state-dir",
        &state.display().to_string(),
        // Never the host's real CNI paths (no Node object here, so nothing is written anyway).
        "--pod-cidr-file",
        &state.join("pod-cidr").display().to_string(),
        "--cni-conf-file",
        &state.join("05-petrel.conflist").display().to_string(),
    ]
    .map(String::from)
    .to_vec()
}

/// Waits (up to 10 s) until every service `netctl dump-services` shows has `n` backends.
fn wait_for_backends(netctl: &Path, agent: &Agent, n: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = std::process::Command::new(netctl)
            .args(["--bpffs-root", PINS, "dump-services", "-o", "json"])
            .output()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if v.as_array().is_some_and(|a| {
            a.iter()
                .all(|s| s["backends"].as_array().is_some_and(|b| b.len() == n))
        }) {
            break;
        }
        if Instant::now() > deadline {
            bail!("the agent did not apply the change; log:\n{}", agent.log());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

// One function on purpose: the demo is a script whose steps share the node, the pods and the
// agent, and it reads top to bottom in the order of what it prints.
fn demo() -> anyhow::Result<()> {
    let cni_bin = sibling("petrel-cni")?;
    let netctl = sibling("netctl")?;
    let agent_bin = sibling("petrel-agent")?;
    let work = tempfile::Builder::new().prefix("petrel-demo-").tempdir()?;
    let (ipam, manifests) = (work.path().join("ipam"), work.path().join("manifests"));
    let state = work.path().join("state");
    std::fs::create_dir_all(&manifests)?;

    step("creating a simulated node (network namespace petrel-demo-node) and a host outside it")?;
    let _ = std::fs::remove_dir_all(PINS);
    let node = NetNs::new("petrel-demo-node");
    node.sysctl("net.ipv4.ip_forward", "1");
    // Reverse NAT rewrites replies to come from the VIP, which has no route on the node.
    node.sysctl("net.ipv4.conf.all.rp_filter", "0");
    node.sysctl("net.ipv4.conf.default.rp_filter", "0");
    let outside = NetNs::new("petrel-demo-outside");
    veth(&node, "ext0", &outside, "eth0");
    node.exec(
        "ip",
        &["addr", "add", &format!("{NODE_IP}/24"), "dev", "ext0"],
    );
    outside.host_on("eth0", OUTSIDE_IP, NODE_IP);
    println!("    node address {NODE_IP} on ext0; outside host {OUTSIDE_IP}");

    let conf = serde_json::json!({
        "cniVersion": "1.1.0", "name": "petrel-demo", "type": "petrel-cni",
        "podCIDR": "10.244.1.0/24", "dataDir": ipam,
    })
    .to_string();
    // One CNI call, as a runtime makes it, run in the node's namespace.
    let cni = |command: &str, name: &str, ns: &NetNs| -> anyhow::Result<Outcome> {
        let call = Call {
            plugin: cni_bin.clone(),
            command,
            container_id: name,
            ifname: "eth0",
            netns: Some(ns.path()),
            extra_env: Vec::new(),
        };
        let out = call.run(&node, &conf);
        if out.code != 0 {
            bail!(
                "petrel-cni {command} {name} failed: {} {}",
                out.stdout,
                out.stderr
            );
        }
        Ok(out)
    };

    step(
        "adding a client pod and 3 server pods with petrel-cni (CNI ADD); each server answers with its name",
    )?;
    let mut pods = Vec::new();
    for name in ["client", "pod-a", "pod-b", "pod-c"] {
        let ns = NetNs::new(&format!("petrel-demo-{name}"));
        let result = cni("ADD", name, &ns)?.json();
        let ip: Ipv4Addr = result["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse().ok())
            .context("no IP in the CNI result")?;
        let host_if = result["interfaces"][0]["name"].as_str().unwrap_or("?");
        println!("    {name:<6} {ip:<12} eth0 <-> {host_if}");
        pods.push((name.to_string(), ns, ip));
    }
    let servers: Vec<pod::Server> = pods[1..]
        .iter()
        .map(|(name, ns, ip)| {
            pod::Server::start(Some(ns.path()), name, SocketAddrV4::new(*ip, 8080))
        })
        .collect();
    let backends: Vec<(String, Ipv4Addr)> = pods[1..]
        .iter()
        .map(|(n, _, ip)| (n.clone(), *ip))
        .collect();

    step(&format!(
        "writing a NodePort service (ClusterIP {VIP}:80, NodePort {NODE_PORT}) to {}",
        manifests.display()
    ))?;
    std::fs::write(manifests.join("web.yaml"), service_manifest(&backends))?;

    step("starting petrel-agent in standalone mode (--manifests) inside the node")?;
    let args = agent_args(&manifests, &state);
    let mut agent = Agent::start(&node.path(), &args);
    let client_ns = pods[0].1.path();
    let cluster_ip = SocketAddrV4::new(VIP, 80);
    let deadline = Instant::now() + Duration::from_secs(20);
    let node_port = SocketAddrV4::new(NODE_IP, NODE_PORT);
    // Both frontends answer: the agent's first sync is complete.
    while spread(&client_ns, cluster_ip, 1).is_err()
        || spread(&outside.path(), node_port, 1).is_err()
    {
        if Instant::now() > deadline || agent.exited() || signal::interrupted() {
            bail!("the service did not come up; agent log:\n{}", agent.log());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("    programmed; agent log:");
    for line in agent
        .log()
        .lines()
        .map(strip_ansi)
        .filter(|l| l.contains("INFO"))
    {
        println!("      {}", log_message(&line));
    }

    step("$ netctl dump-services")?;
    let out = std::process::Command::new(&netctl)
        .args(["--bpffs-root", PINS, "--state-dir"])
        .arg(&state)
        .arg("dump-services")
        .output()?;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        println!("    {line}");
    }

    step(&format!(
        "30 requests from the client pod ({}) to the ClusterIP {cluster_ip}",
        pods[0].2
    ))?;
    let (counts, seen) = spread(&client_ns, cluster_ip, 30)?;
    print_spread(&counts);
    println!(
        "    the servers saw the client as {} (no SNAT)",
        seen.join(", ")
    );
    if counts.len() < 2 {
        bail!("expected the VIP to spread over several pods, got {counts:?}");
    }

    step(&format!(
        "30 requests from the host outside the node ({OUTSIDE_IP}) to the NodePort {node_port}"
    ))?;
    let (counts, seen) = match spread(&outside.path(), node_port, 30) {
        Ok(r) => r,
        Err(e) => {
            for cmd in ["stats", "dump-conntrack"] {
                let out = std::process::Command::new(&netctl)
                    .args(["--bpffs-root", PINS, cmd])
                    .output()?;
                eprintln!("{}", String::from_utf8_lossy(&out.stdout));
            }
            eprintln!("{}", agent.log());
            return Err(e);
        }
    };
    print_spread(&counts);
    println!(
        "    the servers saw the client as {} (source address preserved)",
        seen.join(", ")
    );

    step("pod-c leaves the EndpointSlice: the agent reprograms the maps")?;
    std::fs::write(manifests.join("web.yaml"), service_manifest(&backends[..2]))?;
    wait_for_backends(&netctl, &agent, 2)?;
    let (counts, _) = spread(&client_ns, cluster_ip, 20)?;
    print_spread(&counts);
    if counts.contains_key("pod-c") {
        bail!("pod-c still received traffic");
    }

    step("$ netctl stats")?;
    let out = std::process::Command::new(&netctl)
        .args(["--bpffs-root", PINS, "stats"])
        .output()?;
    for line in String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.ends_with(" 0"))
    {
        println!("    {line}");
    }

    step(
        "stopping the agent (SIGTERM: the datapath stays), then `petrel-agent --cleanup`, CNI DEL, namespaces",
    )?;
    agent.stop(libc::SIGTERM);
    let out = std::process::Command::new(&agent_bin)
        .args(["--cleanup", "--bpffs-root", PINS])
        .output()?;
    if !out.status.success() {
        bail!(
            "petrel-agent --cleanup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for line in String::from_utf8_lossy(&out.stderr).lines().map(strip_ansi) {
        println!("    {}", log_message(&line));
    }
    drop(servers);
    for (name, ns, _) in &pods {
        cni("DEL", name, ns)?;
    }
    let left = petrel_testbed::cni::reservations(&ipam, "petrel-demo");
    if !left.is_empty() {
        bail!("IPAM reservations left after DEL: {left:?}");
    }
    println!("    IPAM store empty, pins removed");
    drop(pods);
    drop(outside);
    drop(node);
    Ok(())
}

/// An agent log line without its timestamp, level and target ("petrel_agent: ", "petrel_datapath::...: ").
fn log_message(line: &str) -> &str {
    ["  INFO ", " INFO ", " WARN "]
        .iter()
        .find_map(|level| line.split_once(level))
        .map(|(_, rest)| rest.split_once(": ").map_or(rest, |(_, msg)| msg))
        .unwrap_or(line)
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
