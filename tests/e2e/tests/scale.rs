//! 100k services in the maps do not make a connection more expensive: every lookup is a hash
//! lookup. Measured as the connection rate through a ClusterIP with 1 service programmed and
//! with 100,000, in the same run. This is a benchmark with a loose sanity bound (an O(number of
//! services) datapath would be orders of magnitude slower at 100k), not a tight timing assertion.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::Instant,
};

use petrel_datapath::{
    BackendSpec, Datapath, DatapathConfig, Endpoint, Frontend, Proto, ServiceEntry, ServiceMaps,
};
use petrel_testbed::{BpffsRoot, netns::Node, pod, require_root, unique};

const CONNECTIONS: usize = 2000;

fn rate(client: std::path::PathBuf, to: SocketAddrV4) -> f64 {
    std::thread::spawn(move || {
        petrel_testbed::netns::enter(&client);
        // Warm up (ARP, caches), then measure.
        for _ in 0..20 {
            pod::tcp_get(to).expect("warm-up request");
        }
        let started = Instant::now();
        for i in 0..CONNECTIONS {
            pod::tcp_get(to).unwrap_or_else(|e| panic!("connection {i}: {e}"));
        }
        CONNECTIONS as f64 / started.elapsed().as_secs_f64()
    })
    .join()
    .expect("client thread")
}

#[test]
fn connection_rate_does_not_grow_with_100k_services() {
    require_root();
    let pins = BpffsRoot::new(&unique("petrel-scale-"));
    let mut node = Node::new(&unique("sn"));
    node.add_pod(&unique("sc"), Ipv4Addr::new(10, 244, 0, 2));
    let backend_ip = Ipv4Addr::new(10, 244, 0, 3);
    let b = node.add_pod(&unique("sb"), backend_ip);
    let _server = pod::Server::start(Some(b.ns.path()), "b0", SocketAddrV4::new(backend_ip, 8080));
    let config = DatapathConfig {
        bpffs_root: pins.path().to_path_buf(),
        ..Default::default()
    };
    let ifaces: Vec<String> = node.pods.iter().map(|p| p.host_if.clone()).collect();
    node.ns.run(move || {
        let mut dp = Datapath::load(&config).expect("load");
        for i in &ifaces {
            dp.attach_tc_ingress(i).expect("attach");
        }
    });
    let mut maps = ServiceMaps::open(&pins.path().join("maps")).expect("maps");
    let spec = BackendSpec {
        id: 1,
        addr: SocketAddrV4::new(backend_ip, 8080),
        proto: Proto::Tcp,
        terminating: false,
        remote: false,
    };
    maps.upsert_backend(&spec).expect("backend");
    let vip = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 1), 80);
    let fe = |addr: Ipv4Addr| Frontend {
        addr,
        port: 80,
        proto: Proto::Tcp,
    };
    maps.upsert_service(&ServiceEntry::new(
        fe(*vip.ip()),
        1,
        vec![Endpoint::ready(1)],
    ))
    .expect("service");

    let client = node.pods[0].ns.path();
    let at_one = rate(client.clone(), vip);

    let started = Instant::now();
    for i in 1..100_000u32 {
        let addr = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 97, 0, 0)) + i);
        maps.upsert_service(&ServiceEntry::new(
            fe(addr),
            i + 1,
            vec![Endpoint::ready(1)],
        ))
        .expect("service");
    }
    let programmed = started.elapsed();
    let at_100k = rate(client, vip);

    let ratio = at_100k / at_one;
    println!(
        "connections/s through a ClusterIP (TC path): {at_one:.0} with 1 service, {at_100k:.0} with 100,000 \
         (ratio {ratio:.2}); programming 99,999 services took {:.1} s",
        programmed.as_secs_f64()
    );
    assert!(
        ratio > 0.5,
        "per-connection cost grew with the number of services: ratio {ratio:.2}"
    );
}
