//! The eBPF datapath in the real kernel, with real TCP and UDP traffic between network
//! namespaces: a simulated node routes between a client pod and two backend pods.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddrV4},
    path::PathBuf,
};

use petrel::{Datapath, DatapathConfig, Frontend, Proto, ServiceMaps, datapath::AttachOutcome};
use petrel_tests::{BpffsRoot, cgroup::Cgroup, netns::Node, pod, require_root, unique};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 2);
const BACKENDS: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 244, 0, 3), Ipv4Addr::new(10, 244, 0, 4)];

struct Fixture {
    _servers: Vec<pod::Server>,
    node: Node,
    pins: BpffsRoot,
}

impl Fixture {
    /// Node + client pod + two backend pods serving on :8080, datapath loaded with TC on every
    /// pod veth, and service VIP:80/TCP and VIP:53/UDP pointing at both backends.
    fn new() -> Fixture {
        require_root();
        let pins = BpffsRoot::new(&unique("petrel-test-"));
        let mut node = Node::new(&unique("pn"));
        node.add_pod(&unique("pc"), CLIENT);
        let mut servers = Vec::new();
        for (i, ip) in BACKENDS.iter().enumerate() {
            let p = node.add_pod(&unique("pb"), *ip);
            servers.push(pod::Server::start(
                Some(p.ns.path()),
                &format!("backend-{i}"),
                SocketAddrV4::new(*ip, 8080),
            ));
        }
        let fixture = Fixture {
            _servers: servers,
            node,
            pins,
        };
        assert_eq!(fixture.load_and_attach(), AttachOutcome::Attached);
        let mut maps =
            ServiceMaps::open(&fixture.pins.path().join("maps")).expect("open pinned maps");
        for proto in [Proto::Tcp, Proto::Udp] {
            let mut ids = Vec::new();
            for (i, ip) in BACKENDS.iter().enumerate() {
                let id = i as u32 + 1 + if proto == Proto::Udp { 10 } else { 0 };
                maps.upsert_backend(id, SocketAddrV4::new(*ip, 8080), proto)
                    .expect("backend");
                ids.push(id);
            }
            let port = if proto == Proto::Tcp { 80 } else { 53 };
            let rev = if proto == Proto::Tcp { 1 } else { 2 };
            maps.upsert_service(
                Frontend {
                    addr: VIP,
                    port,
                    proto,
                },
                rev,
                0,
                &ids,
            )
            .expect("service");
        }
        fixture
    }

    /// Loads the datapath in the node's namespace and attaches TC to every pod veth; the process
    /// that loads it (here, a thread) lets go at once: pinned links keep it attached.
    fn load_and_attach(&self) -> AttachOutcome {
        let config = DatapathConfig {
            bpffs_root: self.pins.path().to_path_buf(),
            ..Default::default()
        };
        let ifaces: Vec<String> = self.node.pods.iter().map(|p| p.host_if.clone()).collect();
        self.node.ns.run(move || {
            let mut dp = Datapath::load(&config).expect("load datapath");
            let outcomes: BTreeSet<_> = ifaces
                .iter()
                .map(|i| format!("{:?}", dp.attach_tc_ingress(i).expect("attach tc")))
                .collect();
            assert_eq!(outcomes.len(), 1, "mixed outcomes {outcomes:?}");
            if outcomes.contains("Attached") {
                AttachOutcome::Attached
            } else {
                AttachOutcome::Replaced
            }
        })
    }

    fn client_ns(&self) -> PathBuf {
        self.node.pods[0].ns.path()
    }

    fn maps(&self) -> ServiceMaps {
        ServiceMaps::open(&self.pins.path().join("maps")).expect("open pinned maps")
    }

    fn stat(&self, name: &str) -> u64 {
        self.maps()
            .stats()
            .expect("stats")
            .into_iter()
            .find(|(n, _)| *n == name)
            .expect("counter")
            .1
    }

    /// `n` requests from the client pod's namespace (outside any socket-LB cgroup: TC path).
    fn requests(&self, n: usize, proto: Proto, to: SocketAddrV4) -> Vec<pod::Reply> {
        let ns = self.client_ns();
        std::thread::spawn(move || {
            petrel_tests::netns::enter(&ns);
            (0..n)
                .map(|i| {
                    let r = match proto {
                        Proto::Tcp => pod::tcp_get(to),
                        Proto::Udp => pod::udp_get(to),
                    };
                    r.unwrap_or_else(|e| panic!("request {i} to {to}/{proto}: {e}"))
                })
                .collect()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }
}

fn servers(replies: &[pod::Reply]) -> BTreeSet<String> {
    replies.iter().map(|r| r.server.clone()).collect()
}

#[test]
fn tc_dnat_balances_tcp_and_udp_and_preserves_client_address() {
    let f = Fixture::new();
    let dnat_before = f.stat("tc_dnat");
    let replies = f.requests(24, Proto::Tcp, SocketAddrV4::new(VIP, 80));
    assert_eq!(
        servers(&replies),
        BTreeSet::from(["backend-0".into(), "backend-1".into()]),
        "both backends answer"
    );
    assert!(
        replies.iter().all(|r| r.client_seen == CLIENT.to_string()),
        "backends see the pod's own address: {replies:?}"
    );
    assert!(
        f.stat("tc_dnat") >= dnat_before + 24,
        "TC counted a DNAT per new connection"
    );
    assert!(f.stat("tc_revnat") >= 24, "replies were reverse-NATed");

    // Unconnected UDP: the answer must come back from the VIP (udp_get checks the source).
    let replies = f.requests(8, Proto::Udp, SocketAddrV4::new(VIP, 53));
    assert!(replies.iter().all(|r| r.server.starts_with("backend-")));

    // Traffic to a pod address is not touched.
    let direct = f.requests(1, Proto::Tcp, SocketAddrV4::new(BACKENDS[1], 8080));
    assert_eq!(direct[0].server, "backend-1");
}

#[test]
fn service_without_backends_does_not_connect_and_removal_stops_translation() {
    let f = Fixture::new();
    let fe = Frontend {
        addr: VIP,
        port: 80,
        proto: Proto::Tcp,
    };
    f.maps()
        .upsert_service(fe, 1, 0, &[])
        .expect("empty service");
    let dump = f.maps().dump().expect("dump");
    let tcp = dump
        .iter()
        .find(|s| s.frontend == fe)
        .expect("frontend programmed");
    assert!(tcp.backends.is_empty());
    let ns = f.client_ns();
    let err = std::thread::spawn(move || {
        petrel_tests::netns::enter(&ns);
        pod::tcp_get(SocketAddrV4::new(VIP, 80))
    })
    .join()
    .expect("client thread");
    assert!(
        err.is_err(),
        "a service with no backend must not connect anywhere: {err:?}"
    );
    assert!(f.stat("no_backend") >= 1);

    f.maps().remove_service(fe).expect("remove");
    assert!(
        f.maps()
            .dump()
            .expect("dump")
            .iter()
            .all(|s| s.frontend != fe)
    );
}

#[test]
fn dump_reads_back_what_was_programmed() {
    let f = Fixture::new();
    let dump = f.maps().dump().expect("dump");
    assert_eq!(dump.len(), 2);
    let tcp = &dump
        .iter()
        .find(|s| s.frontend.proto == Proto::Tcp)
        .expect("tcp frontend");
    assert_eq!(
        tcp.frontend,
        Frontend {
            addr: VIP,
            port: 80,
            proto: Proto::Tcp
        }
    );
    let addrs: Vec<String> = tcp
        .backends
        .iter()
        .map(|b| b.addr.expect("backend present").to_string())
        .collect();
    assert_eq!(addrs, ["10.244.0.3:8080", "10.244.0.4:8080"]);
    assert!(tcp.backends.iter().all(|b| b.state == "active"));

    // Shrinking the service removes the stale slot.
    f.maps()
        .upsert_service(tcp.frontend, 1, 0, &[2])
        .expect("shrink");
    let dump = f.maps().dump().expect("dump");
    let tcp = dump
        .iter()
        .find(|s| s.frontend.proto == Proto::Tcp)
        .expect("tcp frontend");
    assert_eq!(tcp.backends.len(), 1);
    assert_eq!(
        tcp.backends[0].addr,
        Some(SocketAddrV4::new(BACKENDS[1], 8080))
    );
    let replies = f.requests(6, Proto::Tcp, SocketAddrV4::new(VIP, 80));
    assert_eq!(servers(&replies), BTreeSet::from(["backend-1".into()]));
}

#[test]
fn reload_swaps_programs_in_place_and_traffic_keeps_flowing() {
    let f = Fixture::new();
    f.requests(4, Proto::Tcp, SocketAddrV4::new(VIP, 80));
    // A second load adopts the pinned maps and links: nothing is detached in between.
    assert_eq!(f.load_and_attach(), AttachOutcome::Replaced);
    let replies = f.requests(8, Proto::Tcp, SocketAddrV4::new(VIP, 80));
    assert_eq!(replies.len(), 8);
    assert_eq!(
        f.maps().dump().expect("dump").len(),
        2,
        "services survived the reload"
    );
}

#[test]
fn socket_lb_translates_connect_in_the_cgroup() {
    let f = Fixture::new();
    let cg = Cgroup::new(&unique("petrel-test-"));
    let config = DatapathConfig {
        bpffs_root: f.pins.path().to_path_buf(),
        ..Default::default()
    };
    let cg_path = cg.path().to_path_buf();
    let outcome = f.node.ns.run(move || {
        Datapath::load(&config)
            .expect("load")
            .attach_cgroup(&cg_path)
            .expect("attach cgroup")
    });
    assert_eq!(outcome, AttachOutcome::Attached);

    let dnat_before = f.stat("tc_dnat");
    let sock_before = f.stat("sock_translated");
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_petrel-pod"));
    let mut seen = BTreeSet::new();
    for _ in 0..16 {
        let r = pod::get_in_cgroup(
            &bin,
            &f.client_ns(),
            cg.path(),
            SocketAddrV4::new(VIP, 80),
            "tcp",
        )
        .expect("request through socket-LB");
        assert_eq!(r.client_seen, CLIENT.to_string());
        seen.insert(r.server);
    }
    assert_eq!(
        seen.len(),
        2,
        "socket-LB spreads over both backends: {seen:?}"
    );
    assert!(f.stat("sock_translated") >= sock_before + 16);
    assert_eq!(
        f.stat("tc_dnat"),
        dnat_before,
        "translated at connect(): TC had nothing to DNAT"
    );
}
