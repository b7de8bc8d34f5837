//! `cargo xtask demo`: a throw-away simulated node in network namespaces, petrel's datapath
//! loaded into it, three backend pods behind a ClusterIP, and a client pod whose requests to the
//! VIP are spread over them. Everything is removed on exit, also on Ctrl-C.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
    sync::atomic::{AtomicBool, Ordering},
    time::Instant,
};

use anyhow::{Context as _, bail};
use petrel::{Datapath, DatapathConfig, Frontend, Proto, ServiceMaps};
use petrel_tests::{BpffsRoot, netns::Node, pod};

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

fn demo() -> anyhow::Result<()> {
    let vip = Ipv4Addr::new(10, 96, 0, 10);
    let client_ip = Ipv4Addr::new(10, 244, 0, 2);

    step(
        "creating a simulated node (network namespace petrel-demo-node) with a client pod and 3 backend pods",
    )?;
    let pins = BpffsRoot::new("petrel-demo");
    let mut node = Node::new("petrel-demo-node");
    node.add_pod("petrel-demo-client", client_ip);
    let mut servers = Vec::new();
    for (i, name) in ["pod-a", "pod-b", "pod-c"].iter().enumerate() {
        let ip = Ipv4Addr::new(10, 244, 0, 10 + i as u8);
        let p = node.add_pod(&format!("petrel-demo-{name}"), ip);
        servers.push(pod::Server::start(
            Some(p.ns.path()),
            name,
            SocketAddrV4::new(ip, 8080),
        ));
        println!("    {name}: {ip}:8080 (host side {})", p.host_if);
    }

    step("loading petrel's eBPF datapath and attaching TC (TCX) to every pod veth")?;
    let config = DatapathConfig {
        bpffs_root: pins.path().to_path_buf(),
        ..Default::default()
    };
    let ifaces: Vec<String> = node.pods.iter().map(|p| p.host_if.clone()).collect();
    let attached = node.ns.run(move || -> anyhow::Result<Vec<String>> {
        let mut dp = Datapath::load(&config)?;
        ifaces
            .iter()
            .map(|i| Ok(format!("{i}: {:?}", dp.attach_tc_ingress(i)?)))
            .collect()
    })?;
    println!("    {}", attached.join(", "));
    println!("    maps and links pinned under {}", pins.path().display());

    step(&format!("programming ClusterIP {vip}:80/TCP -> 3 backends"))?;
    let mut maps = ServiceMaps::open(&pins.path().join("maps"))?;
    let mut ids = Vec::new();
    for i in 0..3u32 {
        maps.upsert_backend(
            i + 1,
            SocketAddrV4::new(Ipv4Addr::new(10, 244, 0, 10 + i as u8), 8080),
            Proto::Tcp,
        )?;
        ids.push(i + 1);
    }
    maps.upsert_service(
        Frontend {
            addr: vip,
            port: 80,
            proto: Proto::Tcp,
        },
        1,
        0,
        &ids,
    )?;
    for s in maps.dump()? {
        let list: Vec<String> = s
            .backends
            .iter()
            .filter_map(|b| b.addr.map(|a| a.to_string()))
            .collect();
        println!("    {}  ->  {}", s.frontend, list.join(", "));
    }

    step(&format!(
        "sending 30 requests from the client pod ({client_ip}) to {vip}:80"
    ))?;
    let client_ns = node.pods[0].ns.path();
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
    let seen: Vec<&str> = replies.iter().map(|r| r.client_seen.as_str()).collect();
    println!("    backends saw the client as {} (no SNAT)", seen[0]);
    if spread.len() < 2 {
        bail!("expected the VIP to spread over several backends, got {spread:?}");
    }

    step("datapath counters")?;
    for (name, v) in maps.stats()? {
        println!("    {name:<16} {v}");
    }
    step("tearing down: servers, pods, node namespace, pins")?;
    drop(maps);
    drop(servers);
    drop(node);
    drop(pins);
    Ok(())
}
