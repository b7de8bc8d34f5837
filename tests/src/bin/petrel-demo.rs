//! `cargo xtask demo`: a throw-away simulated node in network namespaces, pods wired by the real
//! `petrel-cni`, petrel's datapath loaded into the node, three backend pods behind a ClusterIP,
//! and a client pod whose requests to the VIP are spread over them. Everything is removed on exit,
//! also on Ctrl-C.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    time::Instant,
};

use anyhow::{Context as _, bail};
use petrel::{
    BackendSpec, Datapath, DatapathConfig, Endpoint, Frontend, Proto, ServiceEntry, ServiceMaps,
};
use petrel_tests::{
    BpffsRoot,
    cni::{Call, Outcome},
    netns::NetNs,
    pod,
};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

fn step(msg: &str) -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted: cleaning up");
    }
    println!("==> {msg}");
    Ok(())
}

fn main() {
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let started = Instant::now();
    let result = demo();
    // Every guard has been dropped by now: namespaces, veths, pins, servers.
    let leftovers = leftovers();
    match (&result, leftovers.is_empty()) {
        (Ok(()), true) => println!(
            "==> cleaned up: no namespace, link or pin left behind ({:.1}s in all)",
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
    if std::path::Path::new("/sys/fs/bpf/petrel-demo").exists() {
        left.push("pins /sys/fs/bpf/petrel-demo".into());
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

fn demo() -> anyhow::Result<()> {
    let vip = Ipv4Addr::new(10, 96, 0, 10);
    let cni_bin = sibling("petrel-cni")?;
    let netctl = sibling("netctl")?;
    let ipam = tempfile::Builder::new()
        .prefix("petrel-demo-ipam-")
        .tempdir()?;

    step("creating a simulated node (network namespace petrel-demo-node)")?;
    let pins = BpffsRoot::new("petrel-demo");
    let node = NetNs::new("petrel-demo-node");
    node.sysctl("net.ipv4.ip_forward", "1");
    // Reverse NAT rewrites replies to come from the VIP, which has no route on the node.
    node.sysctl("net.ipv4.conf.all.rp_filter", "0");
    node.sysctl("net.ipv4.conf.default.rp_filter", "0");
    let conf = serde_json::json!({
        "cniVersion": "1.1.0", "name": "petrel-demo", "type": "petrel-cni",
        "podCIDR": "10.244.1.0/24", "dataDir": ipam.path(),
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

    step("adding a client pod and 3 backend pods with petrel-cni (CNI ADD)")?;
    let names = ["client", "pod-a", "pod-b", "pod-c"];
    let mut pods = Vec::new();
    for name in names {
        let ns = NetNs::new(&format!("petrel-demo-{name}"));
        let result = cni("ADD", name, &ns)?.json();
        let ip: Ipv4Addr = result["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse().ok())
            .context("no IP in the CNI result")?;
        let host_if = result["interfaces"][0]["name"]
            .as_str()
            .context("no host interface")?
            .to_string();
        println!(
            "    {name:<6} {ip:<12} eth0 <-> {host_if} (gateway {})",
            result["ips"][0]["gateway"].as_str().unwrap_or("?")
        );
        pods.push((name, ns, ip, host_if));
    }
    let mut servers = Vec::new();
    for (name, ns, ip, _) in pods.iter().skip(1) {
        servers.push(pod::Server::start(
            Some(ns.path()),
            name,
            SocketAddrV4::new(*ip, 8080),
        ));
    }

    step("loading petrel's eBPF datapath and attaching TC (TCX) to every pod's host-side veth")?;
    let config = DatapathConfig {
        bpffs_root: pins.path().to_path_buf(),
        ..Default::default()
    };
    let ifaces: Vec<String> = pods.iter().map(|p| p.3.clone()).collect();
    let attached = node.run(move || -> anyhow::Result<usize> {
        let mut dp = Datapath::load(&config)?;
        for i in &ifaces {
            dp.attach_tc_ingress(i)?;
        }
        Ok(ifaces.len())
    })?;
    println!(
        "    {attached} links pinned under {} (they outlive the loader)",
        pins.path().display()
    );

    step(&format!(
        "programming ClusterIP {vip}:80/TCP -> the 3 backend pods on :8080"
    ))?;
    let mut maps = ServiceMaps::open(&pins.path().join("maps"))?;
    let mut endpoints = Vec::new();
    for (i, (_, _, ip, _)) in pods.iter().skip(1).enumerate() {
        let id = i as u32 + 1;
        let addr = SocketAddrV4::new(*ip, 8080);
        maps.upsert_backend(&BackendSpec {
            id,
            addr,
            proto: Proto::Tcp,
            terminating: false,
            remote: false,
        })?;
        endpoints.push(Endpoint::ready(id));
    }
    let fe = Frontend {
        addr: vip,
        port: 80,
        proto: Proto::Tcp,
    };
    maps.upsert_service(&ServiceEntry::new(fe, 1, endpoints))?;
    let out = std::process::Command::new(&netctl)
        .arg("--bpffs-root")
        .arg(pins.path())
        .arg("dump-services")
        .output()?;
    println!(
        "    $ netctl --bpffs-root {} dump-services",
        pins.path().display()
    );
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        println!("    {line}");
    }

    let client_ip = pods[0].2;
    step(&format!(
        "sending 30 requests from the client pod ({client_ip}) to {vip}:80"
    ))?;
    let client_ns = pods[0].1.path();
    let replies = std::thread::spawn(move || -> anyhow::Result<Vec<pod::Reply>> {
        petrel_tests::netns::enter(&client_ns);
        (0..30)
            .map(|_| pod::tcp_get(SocketAddrV4::new(vip, 80)).context("request to the VIP"))
            .collect()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("client thread panicked"))??;
    let mut spread: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &replies {
        *spread.entry(r.server.as_str()).or_default() += 1;
    }
    for (server, n) in &spread {
        println!("    {server:<6} answered {n:>2} {}", "#".repeat(*n));
    }
    println!(
        "    backends saw the client as {} (no SNAT)",
        replies[0].client_seen
    );
    if spread.len() < 2 {
        bail!("expected the VIP to spread over several backends, got {spread:?}");
    }

    step("datapath counters (per-CPU, summed)")?;
    for (name, v) in maps.stats()? {
        println!("    {name:<22} {v}");
    }

    step("removing the pods with petrel-cni (CNI DEL), then the node and the pins")?;
    drop(servers);
    for (name, ns, _, _) in &pods {
        cni("DEL", name, ns)?;
    }
    let left = petrel_tests::cni::reservations(ipam.path(), "petrel-demo");
    if !left.is_empty() {
        bail!("IPAM reservations left after DEL: {left:?}");
    }
    println!("    IPAM store empty");
    drop(maps);
    drop(pods);
    drop(node);
    drop(pins);
    Ok(())
}
