//! The service datapath end to end: real TCP and UDP traffic between network namespaces. A
//! simulated node routes between a client pod, three backend pods and an external host on its
//! own link (`ext0`); the datapath is loaded into the node with TC on every pod veth and on
//! `ext0`. Each test asserts which backend answered and which source address it saw.
//!
//! Longer than 600 lines on purpose: the 24 tests are one table over one fixture (the node, its
//! pods, the service/backend helpers above). Split by feature, every file would need that
//! fixture, which only this file uses, and the test binary names `cargo test --test datapath`
//! relies on would change.

use std::{
    collections::BTreeSet,
    io::{ErrorKind, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4, TcpStream, UdpSocket},
    path::PathBuf,
    time::Duration,
};

use petrel_datapath::{
    BackendSpec, Datapath, DatapathConfig, Endpoint, Frontend, Proto, ServiceEntry, ServiceMaps,
    datapath::AttachOutcome, maglev, maps::PinnedMaps, sock_term,
};
use petrel_testbed::{BpffsRoot, cgroup::Cgroup, echo, netns::Node, pod, require_root, unique};

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 2);
/// b0 and b1 are on this node; b2 is treated as another node's pod (BACKEND_F_REMOTE).
const BACKENDS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(10, 244, 0, 3),
    Ipv4Addr::new(10, 244, 0, 4),
    Ipv4Addr::new(10, 244, 0, 5),
];
const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
const EXT_CLIENT: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
const MAGLEV_SIZE: u32 = 1021;

struct Fixture {
    _servers: Vec<pod::Server>,
    node: Node,
    pins: BpffsRoot,
}

/// Backend ids: TCP b0..b2 on 8080 are 1..3, on 8081 are 11..13; UDP on 8080 are 21..23.
fn id(backend: usize, port: u16, proto: Proto) -> u32 {
    backend as u32
        + 1
        + if proto == Proto::Udp {
            20
        } else if port == 8081 {
            10
        } else {
            0
        }
}

fn ep(backend: usize, proto: Proto) -> Endpoint {
    Endpoint {
        local: backend != 2,
        ..Endpoint::ready(id(backend, 8080, proto))
    }
}

fn fe(addr: Ipv4Addr, port: u16, proto: Proto) -> Frontend {
    Frontend { addr, port, proto }
}

fn vip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 96, 0, last)
}

impl Fixture {
    fn new() -> Fixture {
        require_root();
        let pins = BpffsRoot::new(&unique("petrel-test-"));
        let mut node = Node::new(&unique("pn"));
        node.add_pod(&unique("pc"), CLIENT);
        let mut servers = Vec::new();
        for (i, ip) in BACKENDS.iter().enumerate() {
            let p = node.add_pod(&unique("pb"), *ip);
            for port in [8080, 8081] {
                let name = if port == 8080 {
                    format!("b{i}")
                } else {
                    format!("b{i}-8081")
                };
                servers.push(pod::Server::start(
                    Some(p.ns.path()),
                    &name,
                    SocketAddrV4::new(*ip, port),
                ));
            }
        }
        node.add_external(&unique("pe"), "ext0", NODE_IP, EXT_CLIENT);
        let fixture = Fixture {
            _servers: servers,
            node,
            pins,
        };
        assert_eq!(fixture.load_and_attach(), AttachOutcome::Attached);
        let mut maps = fixture.maps();
        maps.set_node_ip(NODE_IP).expect("node ip");
        for (i, ip) in BACKENDS.iter().enumerate() {
            for (port, proto) in [(8080, Proto::Tcp), (8081, Proto::Tcp), (8080, Proto::Udp)] {
                let spec = BackendSpec {
                    id: id(i, port, proto),
                    addr: SocketAddrV4::new(*ip, port),
                    proto,
                    terminating: false,
                    remote: i == 2,
                };
                maps.upsert_backend(&spec).expect("backend");
            }
        }
        fixture
    }

    /// Loads the datapath in the node's namespace and attaches TC to every pod veth and to ext0;
    /// the loader (a thread here) lets go at once: pinned links keep everything attached.
    fn load_and_attach(&self) -> AttachOutcome {
        let config = DatapathConfig {
            bpffs_root: self.pins.path().to_path_buf(),
            maglev_size: MAGLEV_SIZE,
            maglev_rings: 2,
            ..Default::default()
        };
        let ifaces: Vec<String> = self.node.pods.iter().map(|p| p.host_if.clone()).collect();
        self.node.ns.run(move || {
            let mut dp = Datapath::load(&config).expect("load datapath");
            let mut outcomes: BTreeSet<_> = ifaces
                .iter()
                .map(|i| format!("{:?}", dp.attach_tc_ingress(i).expect("attach tc")))
                .collect();
            outcomes.insert(format!(
                "{:?}",
                dp.attach_external("ext0").expect("attach external")
            ));
            assert_eq!(outcomes.len(), 1, "mixed outcomes {outcomes:?}");
            if outcomes.contains("Attached") {
                AttachOutcome::Attached
            } else {
                AttachOutcome::Replaced
            }
        })
    }

    /// Attaches socket-LB to the cgroup `cg` (its links are pinned with the rest).
    fn attach_cgroup(&self, cg: &Cgroup) -> AttachOutcome {
        let config = DatapathConfig {
            bpffs_root: self.pins.path().to_path_buf(),
            maglev_size: MAGLEV_SIZE,
            maglev_rings: 2,
            ..Default::default()
        };
        let cg_path = cg.path().to_path_buf();
        self.node.ns.run(move || {
            Datapath::load(&config)
                .expect("load")
                .attach_cgroup(&cg_path)
                .expect("attach cgroup")
        })
    }

    fn maps(&self) -> ServiceMaps {
        ServiceMaps::open(&self.pins.path().join("maps")).expect("open pinned maps")
    }

    fn program(&self, entry: &ServiceEntry) {
        self.maps().upsert_service(entry).expect("program service");
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

    fn client_ns(&self) -> PathBuf {
        self.node.pods[0].ns.path()
    }

    fn ext_ns(&self) -> PathBuf {
        self.node.externals[0].path()
    }

    fn backend_ns(&self, i: usize) -> PathBuf {
        self.node.pods[i + 1].ns.path()
    }
}

/// Runs `f` on a thread inside the namespace at `ns`.
fn from<T: Send + 'static>(ns: PathBuf, f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        petrel_testbed::netns::enter(&ns);
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// `n` requests from the namespace at `ns` (outside any socket-LB cgroup: the TC path).
fn requests(ns: PathBuf, n: usize, proto: Proto, to: SocketAddrV4) -> Vec<pod::Reply> {
    from(ns, move || {
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
}

/// `netctl --bpffs-root PINS ARGS -o json`.
fn netctl_json(pins: &std::path::Path, args: &[&str]) -> serde_json::Value {
    let bin = petrel_testbed::workspace_bin("netctl", "PETREL_NETCTL_BIN");
    let out = std::process::Command::new(bin)
        .arg("--bpffs-root")
        .arg(pins)
        .args(args)
        .args(["-o", "json"])
        .output()
        .expect("run netctl");
    assert!(
        out.status.success(),
        "netctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("netctl JSON")
}

fn servers(replies: &[pod::Reply]) -> BTreeSet<String> {
    replies.iter().map(|r| r.server.clone()).collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[test]
fn clusterip_balances_tcp_and_udp_and_preserves_client_address() {
    let f = Fixture::new();
    f.program(&ServiceEntry::new(
        fe(vip(10), 80, Proto::Tcp),
        1,
        vec![ep(0, Proto::Tcp), ep(1, Proto::Tcp)],
    ));
    f.program(&ServiceEntry::new(
        fe(vip(10), 53, Proto::Udp),
        2,
        vec![ep(0, Proto::Udp), ep(1, Proto::Udp)],
    ));
    let replies = requests(
        f.client_ns(),
        24,
        Proto::Tcp,
        SocketAddrV4::new(vip(10), 80),
    );
    assert_eq!(
        servers(&replies),
        set(&["b0", "b1"]),
        "both backends answer"
    );
    assert!(
        replies.iter().all(|r| r.client_seen == CLIENT.to_string()),
        "no SNAT in-cluster: {replies:?}"
    );
    assert!(
        replies.iter().all(|r| r.peer == "10.96.0.10:80"),
        "the client sees the VIP as its peer"
    );
    // Unconnected UDP: the answer must come back from the VIP (udp_get checks the source).
    let replies = requests(
        f.client_ns(),
        12,
        Proto::Udp,
        SocketAddrV4::new(vip(10), 53),
    );
    assert_eq!(servers(&replies), set(&["b0", "b1"]));
    // Traffic to a pod address is not touched.
    let direct = requests(
        f.client_ns(),
        1,
        Proto::Tcp,
        SocketAddrV4::new(BACKENDS[1], 8080),
    );
    assert_eq!(direct[0].server, "b1");
    assert!(f.stat("tc_dnat") >= 24 && f.stat("tc_revnat") >= 24);
}

#[test]
fn several_ports_and_tcp_and_udp_on_one_port() {
    let f = Fixture::new();
    let v = vip(11);
    f.program(&ServiceEntry::new(
        fe(v, 80, Proto::Tcp),
        1,
        vec![ep(0, Proto::Tcp)],
    ));
    let b0_8081 = Endpoint::ready(id(0, 8081, Proto::Tcp));
    f.program(&ServiceEntry::new(fe(v, 81, Proto::Tcp), 2, vec![b0_8081]));
    f.program(&ServiceEntry::new(
        fe(v, 53, Proto::Tcp),
        3,
        vec![ep(1, Proto::Tcp)],
    ));
    f.program(&ServiceEntry::new(
        fe(v, 53, Proto::Udp),
        4,
        vec![ep(0, Proto::Udp)],
    ));
    let one = |port, proto| {
        requests(f.client_ns(), 1, proto, SocketAddrV4::new(v, port))
            .remove(0)
            .server
    };
    assert_eq!(one(80, Proto::Tcp), "b0");
    assert_eq!(one(81, Proto::Tcp), "b0-8081");
    assert_eq!(one(53, Proto::Tcp), "b1");
    assert_eq!(one(53, Proto::Udp), "b0");
}

#[test]
fn nodeport_from_outside_keeps_the_client_address_or_snats_to_a_remote_backend() {
    let f = Fixture::new();
    let np = |port| SocketAddrV4::new(NODE_IP, port);
    let external = |port, rev, eps: Vec<Endpoint>, local| ServiceEntry {
        external: true,
        external_local: local,
        ..ServiceEntry::new(fe(NODE_IP, port, Proto::Tcp), rev, eps)
    };
    // A local backend: the client's own address reaches it.
    f.program(&external(30080, 1, vec![ep(0, Proto::Tcp)], false));
    let r = requests(f.ext_ns(), 4, Proto::Tcp, np(30080));
    assert!(
        r.iter()
            .all(|r| r.server == "b0" && r.client_seen == EXT_CLIENT.to_string()),
        "{r:?}"
    );
    // Policy Cluster, remote backend: SNAT to the node so the reply comes back through it.
    f.program(&external(30081, 2, vec![ep(2, Proto::Tcp)], false));
    let r = requests(f.ext_ns(), 4, Proto::Tcp, np(30081));
    assert!(
        r.iter()
            .all(|r| r.server == "b2" && r.client_seen == NODE_IP.to_string()),
        "{r:?}"
    );
    assert!(
        r.iter().all(|r| r.peer == "10.99.0.1:30081"),
        "replies come from the NodePort"
    );
    // Policy Local: only the local endpoint, client address preserved; in-cluster clients still
    // reach every endpoint.
    f.program(&external(
        30082,
        3,
        vec![ep(0, Proto::Tcp), ep(2, Proto::Tcp)],
        true,
    ));
    let r = requests(f.ext_ns(), 12, Proto::Tcp, np(30082));
    assert!(
        r.iter()
            .all(|r| r.server == "b0" && r.client_seen == EXT_CLIENT.to_string()),
        "{r:?}"
    );
    let r = requests(f.client_ns(), 16, Proto::Tcp, np(30082));
    assert_eq!(servers(&r), set(&["b0", "b2"]));
    // Policy Local without a local endpoint: external traffic is dropped (not refused).
    f.program(&external(30083, 4, vec![ep(2, Proto::Tcp)], true));
    let err = from(f.ext_ns(), move || pod::tcp_get(np(30083))).expect_err("must not connect");
    assert!(
        matches!(err.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock),
        "dropped, got {err:?}"
    );
    assert!(f.stat("drop_policy_empty") >= 1);
    assert_eq!(
        requests(f.client_ns(), 1, Proto::Tcp, np(30083))[0].server,
        "b2"
    );
}

/// Mirrors upstream's "should only allow access from service loadbalancer source ranges"
/// (test/e2e/network/loadbalancer.go), without a cloud: the LB IP is routed to the node.
#[test]
fn load_balancer_source_ranges_admit_only_clients_inside_them() {
    let f = Fixture::new();
    let lb_ip = Ipv4Addr::new(203, 0, 113, 10);
    let lb = SocketAddrV4::new(lb_ip, 80);
    let entry = |ranges: &[&str]| ServiceEntry {
        external: true,
        source_ranges: ranges.iter().map(|r| r.parse().expect("cidr")).collect(),
        ..ServiceEntry::new(fe(lb_ip, 80, Proto::Tcp), 1, vec![ep(0, Proto::Tcp)])
    };
    f.program(&entry(&["10.99.0.0/24"]));
    f.program(&ServiceEntry {
        external: true,
        ..ServiceEntry::new(fe(NODE_IP, 30090, Proto::Tcp), 2, vec![ep(0, Proto::Tcp)])
    });
    // The external client is inside the range.
    let r = requests(f.ext_ns(), 3, Proto::Tcp, lb);
    assert!(
        r.iter()
            .all(|r| r.server == "b0" && r.client_seen == EXT_CLIENT.to_string()),
        "{r:?}"
    );
    // A pod is not: dropped (no reset, as kube-proxy's DROP), and counted.
    let err = from(f.client_ns(), move || pod::tcp_get(lb)).expect_err("must not connect");
    assert!(
        matches!(err.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock),
        "dropped, got {err:?}"
    );
    let dropped = f.stat("drop_src_range");
    assert!(dropped >= 1);
    // The range changed so the external client is outside it: dropped too.
    f.program(&entry(&["192.0.2.0/24"]));
    let err = from(f.ext_ns(), move || pod::tcp_get(lb)).expect_err("must not connect");
    assert!(
        matches!(err.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock),
        "dropped, got {err:?}"
    );
    assert!(f.stat("drop_src_range") > dropped);
    // The same service's NodePort stays open to it.
    let r = requests(f.ext_ns(), 1, Proto::Tcp, SocketAddrV4::new(NODE_IP, 30090));
    assert_eq!(r[0].server, "b0");
}

#[test]
fn internal_traffic_policy_local_stays_on_the_node() {
    let f = Fixture::new();
    let entry = ServiceEntry {
        internal_local: true,
        ..ServiceEntry::new(
            fe(vip(12), 80, Proto::Tcp),
            1,
            vec![ep(0, Proto::Tcp), ep(2, Proto::Tcp)],
        )
    };
    f.program(&entry);
    let r = requests(
        f.client_ns(),
        12,
        Proto::Tcp,
        SocketAddrV4::new(vip(12), 80),
    );
    assert_eq!(servers(&r), set(&["b0"]));
}

/// Mirrors upstream's [sig-network] terminating-endpoint tests ("should fail health check node
/// port if there are only terminating endpoints" for the traffic side: "should be able to
/// connect to terminating and unready endpoints if PublishNotReadyAddresses is true", and
/// ProxyTerminatingEndpoints' fallback to serving terminating endpoints).
#[test]
fn endpoint_conditions_ready_then_terminating_fallback_then_publish_not_ready() {
    let f = Fixture::new();
    let to = SocketAddrV4::new(vip(13), 80);
    let with = |eps: Vec<Endpoint>, publish| ServiceEntry {
        publish_not_ready: publish,
        ..ServiceEntry::new(fe(vip(13), 80, Proto::Tcp), 1, eps)
    };
    let not_ready = |b| Endpoint {
        ready: false,
        serving: false,
        ..ep(b, Proto::Tcp)
    };
    let terminating = |b| Endpoint {
        ready: false,
        serving: true,
        terminating: true,
        ..ep(b, Proto::Tcp)
    };
    f.program(&with(vec![ep(0, Proto::Tcp), not_ready(1)], false));
    assert_eq!(
        servers(&requests(f.client_ns(), 10, Proto::Tcp, to)),
        set(&["b0"])
    );
    f.program(&with(vec![not_ready(0), terminating(1)], false));
    assert_eq!(
        servers(&requests(f.client_ns(), 10, Proto::Tcp, to)),
        set(&["b1"])
    );
    f.program(&with(vec![not_ready(0), not_ready(1)], true));
    assert_eq!(
        servers(&requests(f.client_ns(), 16, Proto::Tcp, to)),
        set(&["b0", "b1"])
    );
}

#[test]
fn no_endpoint_is_refused_at_once_for_tcp_and_udp() {
    let f = Fixture::new();
    f.program(&ServiceEntry::new(fe(vip(14), 80, Proto::Tcp), 1, vec![]));
    f.program(&ServiceEntry::new(fe(vip(14), 53, Proto::Udp), 2, vec![]));
    let (tcp, udp) = from(f.client_ns(), || {
        let started = std::time::Instant::now();
        let tcp = pod::tcp_get(SocketAddrV4::new(vip(14), 80)).expect_err("refused");
        let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
        s.connect(SocketAddrV4::new(vip(14), 53)).expect("connect");
        let udp = pod::udp_connected_exchange(&s).expect_err("refused");
        (tcp.kind(), udp.kind(), started.elapsed())
    })
    .pipe(|(t, u, elapsed)| {
        assert!(
            elapsed < pod::TIMEOUT,
            "answered at once, not after a timeout ({elapsed:?})"
        );
        (t, u)
    });
    assert_eq!(tcp, ErrorKind::ConnectionRefused);
    assert_eq!(udp, ErrorKind::ConnectionRefused);
    let e = netctl_json(
        f.pins.path(),
        &["explain", "10.244.0.2", "10.96.0.14:80/tcp"],
    );
    assert!(e["backend"].is_null());
    assert!(
        e["steps"][0]
            .as_str()
            .is_some_and(|s| s.contains("refused")),
        "{e}"
    );
    assert!(f.stat("rejected") >= 2);
}

trait Pipe: Sized {
    fn pipe<T>(self, f: impl FnOnce(Self) -> T) -> T {
        f(self)
    }
}
impl<T> Pipe for T {}

#[test]
fn hairpin_a_pod_reaching_itself_through_its_service() {
    let f = Fixture::new();
    f.program(&ServiceEntry::new(
        fe(vip(15), 80, Proto::Tcp),
        1,
        vec![ep(0, Proto::Tcp)],
    ));
    let r = requests(
        f.backend_ns(0),
        3,
        Proto::Tcp,
        SocketAddrV4::new(vip(15), 80),
    );
    assert!(
        r.iter()
            .all(|r| r.server == "b0" && r.client_seen == "169.254.42.1"),
        "{r:?}"
    );
    assert!(f.stat("hairpin") >= 3);
}

#[test]
fn flows_pinned_to_a_removed_backend_are_rebalanced_or_reset() {
    let f = Fixture::new();
    let udp_vip = SocketAddrV4::new(vip(16), 53);
    f.program(&ServiceEntry::new(
        fe(vip(16), 53, Proto::Udp),
        1,
        vec![ep(0, Proto::Udp)],
    ));
    let tcp_vip = SocketAddrV4::new(vip(17), 80);
    f.program(&ServiceEntry::new(
        fe(vip(17), 80, Proto::Tcp),
        2,
        vec![ep(0, Proto::Tcp)],
    ));
    let (udp_sock, tcp_sock) = from(f.client_ns(), move || {
        let u = UdpSocket::bind("0.0.0.0:0").expect("bind");
        u.connect(udp_vip).expect("connect");
        let t = TcpStream::connect_timeout(&tcp_vip.into(), pod::TIMEOUT).expect("tcp connect");
        (u, t)
    });
    assert_eq!(
        pod::udp_connected_exchange(&udp_sock)
            .expect("first datagram")
            .server,
        "b0"
    );

    // b0 goes away: the services now point at b1, and b0's backend entries are removed.
    f.program(&ServiceEntry::new(
        fe(vip(16), 53, Proto::Udp),
        1,
        vec![ep(1, Proto::Udp)],
    ));
    f.program(&ServiceEntry::new(
        fe(vip(17), 80, Proto::Tcp),
        2,
        vec![ep(1, Proto::Tcp)],
    ));
    f.maps()
        .remove_backend(id(0, 8080, Proto::Udp))
        .expect("remove");
    f.maps()
        .remove_backend(id(0, 8080, Proto::Tcp))
        .expect("remove");

    // The same UDP flow (same socket, same ports) is re-balanced to b1.
    let r = pod::udp_connected_exchange(&udp_sock).expect("datagram after the backend left");
    assert_eq!(r.server, "b1");
    // The TCP connection lands on b1, which does not know it: reset at once, not a hang.
    let mut t = tcp_sock;
    t.set_read_timeout(Some(pod::TIMEOUT)).expect("timeout");
    let _ = t.write_all(b"hi\n");
    let mut buf = [0u8; 16];
    let err = t
        .read(&mut buf)
        .map(|n| format!("read {n} bytes"))
        .expect_err("reset");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset);
    assert!(f.stat("rebalanced") >= 2);
}

/// The datapath half of upstream's [sig-network] "should have session affinity work for
/// NodePort service" / "should be able to switch session affinity for NodePort service" (the
/// switch itself is a change of the master entry's flag, rewritten in place by the agent).
#[test]
fn session_affinity_sticks_until_its_timeout() {
    let f = Fixture::new();
    let entry = ServiceEntry {
        affinity_timeout_s: Some(1),
        ..ServiceEntry::new(
            fe(vip(18), 80, Proto::Tcp),
            1,
            vec![ep(0, Proto::Tcp), ep(1, Proto::Tcp)],
        )
    };
    f.program(&entry);
    let to = SocketAddrV4::new(vip(18), 80);
    let first = servers(&requests(f.client_ns(), 12, Proto::Tcp, to));
    assert_eq!(first.len(), 1, "one client, one backend: {first:?}");
    // After the timeout the choice is made again: within a few rounds the other backend shows up.
    let mut seen = first.clone();
    for _ in 0..12 {
        std::thread::sleep(Duration::from_millis(1200));
        seen.extend(servers(&requests(f.client_ns(), 1, Proto::Tcp, to)));
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(seen, set(&["b0", "b1"]), "affinity expired");
}

#[test]
fn maglev_gives_every_flow_the_backend_any_node_would_compute() {
    let f = Fixture::new();
    let entry = ServiceEntry {
        external: true,
        maglev_ring: Some(1),
        ..ServiceEntry::new(
            fe(NODE_IP, 30090, Proto::Udp),
            1,
            vec![ep(0, Proto::Udp), ep(1, Proto::Udp)],
        )
    };
    f.program(&entry);
    let names = vec![
        (id(0, 8080, Proto::Udp), format!("{}:8080", BACKENDS[0])),
        (id(1, 8080, Proto::Udp), format!("{}:8080", BACKENDS[1])),
    ];
    let table = maglev::table(&names, MAGLEV_SIZE);
    let results = from(f.ext_ns(), move || {
        (45000..45012u16)
            .map(|port| {
                let s =
                    UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)).expect("bind");
                (
                    port,
                    pod::udp_exchange(&s, SocketAddrV4::new(NODE_IP, 30090))
                        .expect("udp")
                        .server,
                )
            })
            .collect::<Vec<_>>()
    });
    let mut seen = BTreeSet::new();
    for (port, server) in results {
        let h = maglev::flow_hash(
            u32::from(EXT_CLIENT).to_be(),
            port.to_be(),
            30090u16.to_be(),
            17,
        );
        let want = table[(h % MAGLEV_SIZE) as usize];
        let expected = if want == id(0, 8080, Proto::Udp) {
            "b0"
        } else {
            "b1"
        };
        assert_eq!(server, expected, "flow from port {port}");
        seen.insert(server);
    }
    // netctl explain tells the same story, from the maps alone: a flow seen before is in
    // conntrack; a new one is placed by its Maglev position.
    let e = netctl_json(
        f.pins.path(),
        &[
            "explain",
            "10.99.0.2:45003",
            "10.99.0.1:30090/udp",
            "--from-outside",
        ],
    );
    assert!(
        e["steps"][0]
            .as_str()
            .is_some_and(|s| s.contains("conntrack")),
        "{e}"
    );
    let e = netctl_json(
        f.pins.path(),
        &[
            "explain",
            "10.99.0.2:46000",
            "10.99.0.1:30090/udp",
            "--from-outside",
        ],
    );
    let h = maglev::flow_hash(
        u32::from(EXT_CLIENT).to_be(),
        46000u16.to_be(),
        30090u16.to_be(),
        17,
    );
    let want = table[(h % MAGLEV_SIZE) as usize];
    let idx = if want == id(0, 8080, Proto::Udp) {
        0
    } else {
        1
    };
    assert_eq!(e["backend"], format!("{}:8080", BACKENDS[idx]));
    assert!(
        e["steps"]
            .as_array()
            .expect("steps")
            .iter()
            .any(|s| s.as_str().is_some_and(|s| s.contains("Maglev ring 1"))),
        "{e}"
    );
    assert_eq!(seen.len(), 2);
}

#[test]
fn socket_lb_translates_at_the_socket_and_shows_the_vip() {
    let f = Fixture::new();
    f.program(&ServiceEntry::new(
        fe(vip(19), 80, Proto::Tcp),
        1,
        vec![ep(0, Proto::Tcp), ep(1, Proto::Tcp)],
    ));
    f.program(&ServiceEntry::new(
        fe(vip(19), 53, Proto::Udp),
        2,
        vec![ep(0, Proto::Udp), ep(1, Proto::Udp)],
    ));
    f.program(&ServiceEntry::new(fe(vip(20), 80, Proto::Tcp), 3, vec![]));
    let cg = Cgroup::new(&unique("petrel-test-"));
    assert_eq!(f.attach_cgroup(&cg), AttachOutcome::Attached);

    let dnat_before = f.stat("tc_dnat");
    let bin = petrel_testbed::workspace_bin("petrel-pod", "PETREL_POD_BIN");
    let get = |addr, proto| pod::get_in_cgroup(&bin, &f.client_ns(), cg.path(), addr, proto);
    let mut seen = BTreeSet::new();
    for _ in 0..16 {
        let r = get(SocketAddrV4::new(vip(19), 80), "tcp").expect("tcp through socket-LB");
        assert_eq!(r.client_seen, CLIENT.to_string());
        assert_eq!(r.peer, "10.96.0.19:80", "getpeername shows the VIP");
        seen.insert(r.server);
    }
    assert_eq!(seen, set(&["b0", "b1"]));
    // Unconnected UDP: sendmsg4 translates, recvmsg4 shows the VIP (udp_get checks it).
    let r = get(SocketAddrV4::new(vip(19), 53), "udp").expect("udp through socket-LB");
    assert!(r.server.starts_with('b'));
    assert_eq!(
        f.stat("tc_dnat"),
        dnat_before,
        "translated at the socket: TC had nothing to DNAT"
    );
    assert!(f.stat("sock_translated") >= 17);
    // No endpoint: connect() fails with ECONNREFUSED at once.
    let err = get(SocketAddrV4::new(vip(20), 80), "tcp").expect_err("refused");
    assert!(err.contains("refused"), "{err}");
}

/// Socket-LB leaves a reverse entry (SOCK_REVNAT, an LRU) per translated connect(); the
/// sock_release hook removes it when the socket closes, so connection churn never evicts the
/// entries of sockets still open. Connected TCP on AF_INET and AF_INET6 (IPv4-mapped) sockets,
/// then a connected UDP socket, whose entry lives exactly as long as it is open.
#[test]
fn closed_sockets_leave_no_socket_lb_state_behind() {
    let f = Fixture::new();
    f.program(&ServiceEntry::new(
        fe(vip(45), 80, Proto::Tcp),
        1,
        vec![ep(0, Proto::Tcp), ep(1, Proto::Tcp)],
    ));
    f.program(&ServiceEntry::new(
        fe(vip(45), 53, Proto::Udp),
        2,
        vec![ep(0, Proto::Udp), ep(1, Proto::Udp)],
    ));
    let cg = Cgroup::new(&unique("petrel-test-"));
    assert_eq!(f.attach_cgroup(&cg), AttachOutcome::Attached);
    let bin = petrel_testbed::workspace_bin("petrel-pod", "PETREL_POD_BIN");
    let tcp = SocketAddrV4::new(vip(45), 80);
    let entries = || f.maps().store().sock_revnat_len().expect("SOCK_REVNAT");
    let translated = f.stat("sock_translated");
    for proto in ["tcp", "tcp6"] {
        for _ in 0..10 {
            let r = pod::get_in_cgroup(&bin, &f.client_ns(), cg.path(), tcp, proto)
                .expect("through socket-LB");
            assert_eq!(r.client_seen, CLIENT.to_string());
        }
    }
    assert_eq!(f.stat("sock_translated"), translated + 20);
    assert_eq!(entries(), 0, "every closed socket's entry went with it");

    let udp = SocketAddrV4::new(vip(45), 53);
    let mut session = Session::start(&f, &cg, &[udp]);
    assert_eq!(entries(), 1, "the open socket's entry");
    let answer = session.say("x 0");
    assert!(answer.starts_with("ok b"), "{answer}");
    assert!(
        answer.ends_with("10.96.0.45:53"),
        "recvmsg shows the VIP: {answer}"
    );
    drop(session);
    assert_eq!(entries(), 0, "gone with the socket");
}

/// Host processes with AF_INET6 sockets (many JVMs, dual-stack programs) reach IPv4 services
/// through IPv4-mapped addresses (`::ffff:10.96.0.24`): connect6, sendmsg6/recvmsg6 and
/// getpeername6 translate them as the IPv4 hooks do (Cilium's `sock6_xlate_v4_in_v6`).
#[test]
fn socket_lb_translates_v4_mapped_addresses_on_ipv6_sockets() {
    let f = Fixture::new();
    f.program(&ServiceEntry::new(
        fe(vip(24), 80, Proto::Tcp),
        1,
        vec![ep(0, Proto::Tcp), ep(1, Proto::Tcp)],
    ));
    f.program(&ServiceEntry::new(
        fe(vip(24), 53, Proto::Udp),
        2,
        vec![ep(0, Proto::Udp), ep(1, Proto::Udp)],
    ));
    f.program(&ServiceEntry::new(fe(vip(26), 80, Proto::Tcp), 3, vec![]));
    let cg = Cgroup::new(&unique("petrel-test-"));
    assert_eq!(f.attach_cgroup(&cg), AttachOutcome::Attached);
    let links: BTreeSet<String> = std::fs::read_dir(f.pins.path().join("links"))
        .expect("links")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("sock_"))
        .collect();
    assert_eq!(
        links,
        petrel_datapath::datapath::SOCK_PROGRAMS
            .iter()
            .chain([&petrel_datapath::datapath::PROG_SOCK_RELEASE])
            .map(ToString::to_string)
            .collect(),
        "every socket-LB hook pinned"
    );

    // A host process: the node's own namespace.
    let host = f.node.ns.path();
    let bin = petrel_testbed::workspace_bin("petrel-pod", "PETREL_POD_BIN");
    let get = |addr, proto| pod::get_in_cgroup(&bin, &host, cg.path(), addr, proto);
    let (dnat_before, sock_before) = (f.stat("tc_dnat"), f.stat("sock_translated"));
    let mut seen = BTreeSet::new();
    for _ in 0..16 {
        let r = get(SocketAddrV4::new(vip(24), 80), "tcp6").expect("tcp6 to ::ffff:VIP");
        assert_eq!(
            r.peer, "[::ffff:10.96.0.24]:80",
            "getpeername6 shows the mapped VIP"
        );
        seen.insert(r.server);
    }
    assert_eq!(seen, set(&["b0", "b1"]));
    // Unconnected UDP: translated on the way out, recvmsg6 shows the mapped VIP (udp6_get
    // checks the answer comes from it).
    let r = get(SocketAddrV4::new(vip(24), 53), "udp6").expect("udp6 to ::ffff:VIP");
    assert!(r.server.starts_with('b'), "{r:?}");
    assert_eq!(r.peer, "[::ffff:10.96.0.24]:53");
    assert_eq!(f.stat("tc_dnat"), dnat_before, "translated at the socket");
    assert!(f.stat("sock_translated") >= sock_before + 17);
    let err = get(SocketAddrV4::new(vip(26), 80), "tcp6").expect_err("refused");
    assert!(err.contains("refused"), "{err}");
}

/// The TC path of host processes (`--socket-lb=false`; here the node's threads are in no
/// socket-LB cgroup): a process on the node reaches a ClusterIP through the node's default
/// route, as it would under kube-proxy (whose OUTPUT chain DNATs after that route was chosen),
/// and the external interface's egress program translates it: to local pods (redirected to
/// their veth) and to a backend reached over the uplink itself, each seeing the node's address,
/// the process seeing the VIP; no endpoint is refused at once. Upstream's "should function for
/// node-Service: http/udp" (networking.go) from a node whose proxy has no socket hooks.
#[test]
fn host_processes_reach_services_through_the_tc_path_without_socket_lb() {
    let f = Fixture::new();
    let ext_ip = EXT_CLIENT;
    let _ext_server = pod::Server::start(Some(f.ext_ns()), "ext", SocketAddrV4::new(ext_ip, 8080));
    // The node's default route leaves by the external interface (the uplink).
    f.node.ns.exec(
        "ip",
        &[
            "route",
            "add",
            "default",
            "via",
            &ext_ip.to_string(),
            "dev",
            "ext0",
        ],
    );
    let mut maps = f.maps();
    for (id, proto) in [(30, Proto::Tcp), (31, Proto::Udp)] {
        let spec = BackendSpec {
            id,
            addr: SocketAddrV4::new(ext_ip, 8080),
            proto,
            terminating: false,
            remote: true,
        };
        maps.upsert_backend(&spec).expect("backend");
    }
    let remote = |id| Endpoint {
        local: false,
        ..Endpoint::ready(id)
    };
    f.program(&ServiceEntry::new(
        fe(vip(40), 80, Proto::Tcp),
        1,
        vec![ep(0, Proto::Tcp), ep(1, Proto::Tcp), remote(30)],
    ));
    f.program(&ServiceEntry::new(
        fe(vip(40), 53, Proto::Udp),
        2,
        vec![ep(0, Proto::Udp), remote(31)],
    ));
    f.program(&ServiceEntry::new(fe(vip(41), 80, Proto::Tcp), 3, vec![]));
    let node_ns = f.node.ns.path();
    let replies = requests(
        node_ns.clone(),
        30,
        Proto::Tcp,
        SocketAddrV4::new(vip(40), 80),
    );
    assert_eq!(
        servers(&replies),
        set(&["b0", "b1", "ext"]),
        "local pods and the backend over the uplink answer"
    );
    assert!(
        replies.iter().all(|r| r.client_seen == NODE_IP.to_string()),
        "every backend sees the node's address: {replies:?}"
    );
    assert!(
        replies.iter().all(|r| r.peer == "10.96.0.40:80"),
        "the process sees the VIP as its peer"
    );
    // Unconnected UDP: answers must come back from the VIP (udp_get checks their source).
    let replies = requests(
        node_ns.clone(),
        16,
        Proto::Udp,
        SocketAddrV4::new(vip(40), 53),
    );
    assert_eq!(servers(&replies), set(&["b0", "ext"]));
    assert!(f.stat("host_dnat") >= 46, "{}", f.stat("host_dnat"));

    let flows = netctl_json(f.pins.path(), &["dump-conntrack"]);
    assert!(
        flows.as_array().expect("array").iter().any(|e| {
            e["frontend"] == "10.96.0.40:80"
                && e["nat"].as_str().is_some_and(|n| n.contains("host"))
                && e["client"]
                    .as_str()
                    .is_some_and(|c| c.starts_with("10.99.0.1:"))
        }),
        "host flows are shown as such: {flows}"
    );

    let refused = from(node_ns, || {
        pod::tcp_get(SocketAddrV4::new(vip(41), 80)).expect_err("no endpoint")
    });
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);
}

/// `--socket-lb-hostns-only` (Cilium's bpf-lb-sock-hostns-only, for service meshes): socket-LB
/// translates host processes only. A pod's connection leaves its namespace still addressed to
/// the VIP (what a sidecar's redirect sees as the original destination) and the TC path
/// translates it; the backend still sees the pod.
#[test]
fn socket_lb_hostns_only_leaves_pods_to_the_tc_path() {
    let f = Fixture::new();
    let to = SocketAddrV4::new(vip(27), 80);
    f.program(&ServiceEntry::new(
        fe(vip(27), 80, Proto::Tcp),
        1,
        vec![ep(0, Proto::Tcp), ep(1, Proto::Tcp)],
    ));
    let cg = Cgroup::new(&unique("petrel-test-"));
    assert_eq!(f.attach_cgroup(&cg), AttachOutcome::Attached);
    // The node's namespace plays the host's.
    let cookie = f
        .node
        .ns
        .run(|| petrel_datapath::sys::netns_cookie().expect("netns cookie"));
    f.maps()
        .set_socket_lb_netns(Some(cookie))
        .expect("hostns only");
    let bin = petrel_testbed::workspace_bin("petrel-pod", "PETREL_POD_BIN");
    let get = |ns: &PathBuf| pod::get_in_cgroup(&bin, ns, cg.path(), to, "tcp");

    let (dnat_before, sock_before) = (f.stat("tc_dnat"), f.stat("sock_translated"));
    for _ in 0..4 {
        let r = get(&f.client_ns()).expect("pod to the VIP through TC");
        assert_eq!(r.client_seen, CLIENT.to_string());
        assert_eq!(r.peer, "10.96.0.27:80");
    }
    assert_eq!(
        f.stat("sock_translated"),
        sock_before,
        "nothing translated at the pod's sockets"
    );
    assert!(
        f.stat("tc_dnat") >= dnat_before + 4,
        "the pod's packets were translated by TC"
    );

    let r = get(&f.node.ns.path()).expect("host process to the VIP");
    assert!(r.server.starts_with('b'), "{r:?}");
    assert_eq!(r.peer, "10.96.0.27:80");
    assert_eq!(
        f.stat("sock_translated"),
        sock_before + 1,
        "the host's socket"
    );

    // Off again: pods' sockets are translated once more.
    f.maps().set_socket_lb_netns(None).expect("everywhere");
    get(&f.client_ns()).expect("pod through socket-LB");
    assert_eq!(f.stat("sock_translated"), sock_before + 2);
}

/// A service mesh's sidecar (Istio, Linkerd: an iptables REDIRECT of the pod's outbound TCP to a
/// local proxy, which reads SO_ORIGINAL_DST and connects on from a marked socket the rule skips)
/// with `--socket-lb-hostns-only`: the sidecar sees the service as the original destination,
/// relays to it, the TC path balances its connection, and the application gets the backend's
/// answer from the VIP. With socket-LB translating in pods the application's connect() is
/// rewritten to a backend first, the redirect (written for the service range) no longer
/// matches, and the mesh is bypassed: why the flag exists.
#[test]
fn a_sidecar_sees_the_service_as_original_destination_with_hostns_only() {
    let f = Fixture::new();
    let to = SocketAddrV4::new(vip(44), 80);
    f.program(&ServiceEntry::new(
        fe(vip(44), 80, Proto::Tcp),
        1,
        vec![ep(0, Proto::Tcp), ep(1, Proto::Tcp)],
    ));
    let cg = Cgroup::new(&unique("petrel-test-"));
    assert_eq!(f.attach_cgroup(&cg), AttachOutcome::Attached);
    let cookie = f
        .node
        .ns
        .run(|| petrel_datapath::sys::netns_cookie().expect("netns cookie"));
    f.maps()
        .set_socket_lb_netns(Some(cookie))
        .expect("hostns only");
    f.node.pods[0].ns.exec(
        "iptables",
        &[
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-p",
            "tcp",
            "-d",
            "10.96.0.0/16",
            "-m",
            "mark",
            "!",
            "--mark",
            "0x1",
            "-j",
            "REDIRECT",
            "--to-ports",
            "15001",
        ],
    );
    let args = ["sidecar", "127.0.0.1:15001", "1"].map(String::from);
    let mut sidecar = Session::spawn(&f, &cg, &args, "ready");
    let bin = petrel_testbed::workspace_bin("petrel-pod", "PETREL_POD_BIN");
    let get = || pod::get_in_cgroup(&bin, &f.client_ns(), cg.path(), to, "tcp");

    let dnat_before = f.stat("tc_dnat");
    let r = get().expect("through the sidecar");
    assert_eq!(sidecar.line(), "orig 10.96.0.44:80", "what the sidecar saw");
    assert!(r.server == "b0" || r.server == "b1", "{r:?}");
    assert_eq!(r.client_seen, CLIENT.to_string());
    assert_eq!(r.peer, "10.96.0.44:80");
    assert!(
        f.stat("tc_dnat") > dnat_before,
        "the sidecar's connection took the TC path"
    );

    // Socket-LB in pods too: the application reaches a backend directly, past the sidecar.
    f.maps().set_socket_lb_netns(None).expect("everywhere");
    let r = get().expect("straight to a backend");
    assert_eq!(r.peer, "10.96.0.44:80");
    // Back to hostns-only: the sidecar's next line is this connection's, so it saw none between.
    f.maps()
        .set_socket_lb_netns(Some(cookie))
        .expect("hostns only");
    get().expect("through the sidecar again");
    assert_eq!(
        sidecar.line(),
        "orig 10.96.0.44:80",
        "the connection made with socket-LB in pods bypassed the sidecar"
    );
}

/// kube-proxy masquerades off-cluster clients of a ClusterIP (`! -s clusterCIDR -d clusterIP
/// -j KUBE-MARK-MASQ`: "you can establish a static route for your Service range, routing to any
/// node"). With the backend on another node its answer must come back through this node, so the
/// backend sees the node's address; a backend on this node answers through it anyway and sees
/// the client.
#[test]
fn an_off_cluster_client_routed_to_a_cluster_ip_reaches_a_remote_backend_from_the_node_address() {
    let f = Fixture::new();
    f.maps()
        .set_cluster_cidr(Some("10.244.0.0/16".parse().expect("cidr")))
        .expect("cluster cidr");
    f.program(&ServiceEntry::new(
        fe(vip(28), 80, Proto::Tcp),
        1,
        vec![ep(2, Proto::Tcp)],
    ));
    f.program(&ServiceEntry::new(
        fe(vip(29), 80, Proto::Tcp),
        2,
        vec![ep(0, Proto::Tcp)],
    ));
    let snat_before = f.stat("snat");
    for r in requests(f.ext_ns(), 3, Proto::Tcp, SocketAddrV4::new(vip(28), 80)) {
        assert_eq!(r.server, "b2");
        assert_eq!(r.client_seen, NODE_IP.to_string(), "masqueraded");
        assert_eq!(r.peer, "10.96.0.28:80");
    }
    assert_eq!(f.stat("snat"), snat_before + 3);
    for r in requests(f.ext_ns(), 2, Proto::Tcp, SocketAddrV4::new(vip(29), 80)) {
        assert_eq!(r.server, "b0");
        assert_eq!(r.client_seen, EXT_CLIENT.to_string(), "client kept");
    }
    assert_eq!(f.stat("snat"), snat_before + 3);
}

/// A long-lived `petrel-pod session` (or `sidecar`) in the client pod and a socket-LB cgroup: one
/// line in, one line out. Killed on drop (before the cgroup it is in goes).
struct Session {
    child: std::process::Child,
    /// Its stdout's lines, read on a thread so a line that never comes fails the test (after
    /// `LINE_WAIT`) instead of hanging it.
    lines: std::sync::mpsc::Receiver<String>,
}

/// How long a `Session` line may take: a guard against a hang, far above any answer's time.
const LINE_WAIT: Duration = Duration::from_secs(20);

impl Session {
    fn start(f: &Fixture, cg: &Cgroup, targets: &[SocketAddrV4]) -> Session {
        let mut args = vec!["session".to_string()];
        args.extend(targets.iter().map(ToString::to_string));
        Session::spawn(f, cg, &args, "ok connected")
    }

    /// `petrel-pod ARGS` in the client pod and `cg`, once it printed `first`.
    fn spawn(f: &Fixture, cg: &Cgroup, args: &[String], first: &str) -> Session {
        let bin = petrel_testbed::workspace_bin("petrel-pod", "PETREL_POD_BIN");
        let mut cmd = std::process::Command::new("nsenter");
        cmd.arg(format!("--net={}", f.client_ns().display()))
            .arg("--")
            .arg(&bin)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped());
        pod::join_cgroup_on_exec(&mut cmd, cg.path());
        let mut child = cmd.spawn().expect("spawn petrel-pod");
        let out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in std::io::BufRead::lines(out) {
                let Ok(l) = l else { break };
                if tx.send(l.trim().to_string()).is_err() {
                    break;
                }
            }
        });
        let mut s = Session { child, lines };
        assert_eq!(s.line(), first, "petrel-pod {args:?}");
        s
    }

    fn line(&mut self) -> String {
        self.lines
            .recv_timeout(LINE_WAIT)
            .unwrap_or_else(|e| panic!("no line from petrel-pod within {LINE_WAIT:?}: {e}"))
    }

    fn say(&mut self, cmd: &str) -> String {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{cmd}").expect("write to session");
        self.line()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn connected_udp_sockets_on_a_removed_backend_are_destroyed_and_reconnect_to_a_current_one() {
    let f = Fixture::new();
    let service = fe(vip(21), 53, Proto::Udp);
    f.program(&ServiceEntry::new(service, 4, vec![ep(0, Proto::Udp)]));
    let cg = Cgroup::new(&unique("petrel-test-"));
    assert_eq!(f.attach_cgroup(&cg), AttachOutcome::Attached);
    let a = SocketAddrV4::new(BACKENDS[0], 8080);
    let vip_addr = SocketAddrV4::new(vip(21), 53);
    // Socket 0 connects to the VIP (socket-LB sends it to A), socket 1 to A's pod address.
    let mut client = Session::start(&f, &cg, &[vip_addr, a]);
    let r0 = client.say("x 0");
    assert!(r0.starts_with("ok b0 "), "through the VIP to A: {r0}");
    assert!(
        r0.ends_with(" 10.96.0.21:53"),
        "getpeername shows the VIP: {r0}"
    );
    let r1 = client.say("x 1");
    assert!(r1.starts_with("ok b0 "), "directly to A: {r1}");

    // A leaves the service (B takes its place) and its backend goes.
    f.program(&ServiceEntry::new(service, 4, vec![ep(1, Proto::Udp)]));
    f.maps()
        .remove_backend(id(0, 8080, Proto::Udp))
        .expect("remove backend");
    let started = std::time::Instant::now();
    let gone = BTreeSet::from([sock_term::Departure {
        frontend: vip_addr,
        backend: a,
    }]);
    let mut store = PinnedMaps::open(&f.pins.path().join("maps")).expect("open maps");
    let report = sock_term::terminate(std::path::Path::new("/proc"), &mut store, &gone);
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_eq!(report.destroyed, 1, "only the socket translated to A");
    assert!(report.namespaces >= 2, "host and pods: {report:?}");

    let e = client.say("x 0");
    // Destroyed: no longer connected, so a send fails with EDESTADDRREQ (a receive would see
    // the ECONNABORTED SOCK_DESTROY left).
    assert!(
        e.starts_with("err 89 ") || e.starts_with("err 103 "),
        "the translated socket was destroyed: {e}"
    );
    assert_eq!(client.say("r 0"), "ok connected");
    let r = client.say("x 0");
    assert!(r.starts_with("ok b1 "), "reconnected to B: {r}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "destroyed and reconnected in {:?}",
        started.elapsed()
    );
    let r1 = client.say("x 1");
    assert!(
        r1.starts_with("ok b0 "),
        "the direct socket to A is untouched: {r1}"
    );
    // Its SOCK_REVNAT entry went with it: a second run finds nothing (socket 0 is on B now).
    let again = sock_term::terminate(std::path::Path::new("/proc"), &mut store, &gone);
    assert_eq!((again.destroyed, again.failures.len()), (0, 0));
    drop(client);
}

/// Mirrors the upstream e2e checks that dial a NodePort from a pod or the node many times and
/// expect every endpoint ("should function for node-Service", "session affinity switch for
/// NodePort"): socket-LB picks per connection, not per network namespace.
#[test]
fn socket_lb_picks_a_backend_per_connection_for_a_nodeport() {
    let f = Fixture::new();
    let np = fe(NODE_IP, 30095, Proto::Tcp);
    let eps = vec![ep(0, Proto::Tcp), ep(1, Proto::Tcp)];
    f.program(&ServiceEntry {
        external: true,
        maglev_ring: Some(0),
        ..ServiceEntry::new(np, 1, eps.clone())
    });
    let cg = Cgroup::new(&unique("petrel-test-"));
    let config = DatapathConfig {
        bpffs_root: f.pins.path().to_path_buf(),
        maglev_size: MAGLEV_SIZE,
        maglev_rings: 2,
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
    let bin = petrel_testbed::workspace_bin("petrel-pod", "PETREL_POD_BIN");
    let to = SocketAddrV4::new(NODE_IP, 30095);
    let get = || pod::get_in_cgroup(&bin, &f.client_ns(), cg.path(), to, "tcp");
    let before = f.stat("sock_translated");
    let mut seen = BTreeSet::new();
    for _ in 0..24 {
        let r = get().expect("tcp to the NodePort through socket-LB");
        assert_eq!(r.peer, "10.99.0.1:30095", "getpeername shows the NodePort");
        seen.insert(r.server);
    }
    // 24 connections at random on two backends all landing on one: 2 in 2^23.
    assert_eq!(seen, set(&["b0", "b1"]), "one namespace, every backend");
    assert!(f.stat("sock_translated") >= before + 24);
    // Session affinity still holds one client (the namespace) to one backend.
    f.program(&ServiceEntry {
        external: true,
        maglev_ring: Some(0),
        affinity_timeout_s: Some(60),
        ..ServiceEntry::new(np, 1, eps)
    });
    let seen: BTreeSet<String> = (0..12)
        .map(|_| get().expect("tcp with affinity").server)
        .collect();
    assert_eq!(seen.len(), 1, "affinity: one backend, got {seen:?}");
}

/// One TCP request from CLIENT's own port `port` (bound first, as a reused ephemeral port
/// would be): the server's name and the peer address the socket reports.
fn tcp_get_from_port(port: u16, to: SocketAddrV4) -> std::io::Result<(String, String)> {
    let mut s = echo::tcp_from(SocketAddrV4::new(CLIENT, port), to)?;
    s.write_all(b"hi\n")?;
    let peer = s.peer_addr()?.to_string();
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let server = out
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    Ok((server, peer))
}

#[test]
fn a_new_connection_on_the_tuple_of_a_translated_one_is_not_hijacked() {
    // The same client port to the same backend, first through the VIP (TC path), then straight
    // to the pod (as after socket-LB, or a headless service), then through the VIP again. Each
    // must be answered with its own peer address.
    let f = Fixture::new();
    f.maps()
        .set_cluster_cidr(Some("10.244.0.0/16".parse().expect("cidr")))
        .expect("cluster cidr");
    // No TIME_WAIT on the backend, so the reused tuple meets only what the datapath keeps.
    f.node.pods[1].ns.sysctl("net.ipv4.tcp_max_tw_buckets", "0");
    f.program(&ServiceEntry::new(
        fe(vip(23), 80, Proto::Tcp),
        1,
        vec![ep(0, Proto::Tcp)],
    ));
    let via_vip = SocketAddrV4::new(vip(23), 80);
    let direct = SocketAddrV4::new(BACKENDS[0], 8080);
    let steps = from(f.client_ns(), move || {
        [via_vip, direct, via_vip].map(|to| tcp_get_from_port(40123, to))
    });
    let got: Vec<String> = steps
        .iter()
        .map(|r| match r {
            Ok((server, peer)) => format!("{server} {peer}"),
            Err(e) => format!("error: {e}"),
        })
        .collect();
    assert_eq!(
        got,
        ["b0 10.96.0.23:80", "b0 10.244.0.3:8080", "b0 10.96.0.23:80"],
        "a stale reply entry rewrote a new connection's replies"
    );
}

#[test]
fn reload_swaps_programs_in_place_and_traffic_keeps_flowing() {
    let f = Fixture::new();
    f.program(&ServiceEntry::new(
        fe(vip(21), 80, Proto::Tcp),
        1,
        vec![ep(0, Proto::Tcp), ep(1, Proto::Tcp)],
    ));
    requests(f.client_ns(), 4, Proto::Tcp, SocketAddrV4::new(vip(21), 80));
    assert_eq!(f.load_and_attach(), AttachOutcome::Replaced);
    assert_eq!(
        requests(f.client_ns(), 8, Proto::Tcp, SocketAddrV4::new(vip(21), 80)).len(),
        8
    );
    assert_eq!(
        f.maps().dump().expect("dump").len(),
        1,
        "services survived the reload"
    );
}

#[test]
fn netctl_shows_services_backends_conntrack_and_counters() {
    let f = Fixture::new();
    let entry = ServiceEntry {
        affinity_timeout_s: Some(30),
        ..ServiceEntry::new(
            fe(vip(22), 80, Proto::Tcp),
            5,
            vec![ep(0, Proto::Tcp), ep(1, Proto::Tcp)],
        )
    };
    f.program(&entry);
    requests(f.client_ns(), 3, Proto::Tcp, SocketAddrV4::new(vip(22), 80));
    let netctl = |args: &[&str]| netctl_json(f.pins.path(), args);
    let services = netctl(&["dump-services"]);
    let svc = &services.as_array().expect("array")[0];
    assert_eq!(svc["frontend"]["addr"], "10.96.0.22");
    assert_eq!(svc["frontend"]["proto"], "TCP");
    assert_eq!(svc["affinity_timeout_s"], 30);
    assert_eq!(svc["backends"].as_array().map(Vec::len), Some(2));
    assert_eq!(svc["backends"][0]["addr"], "10.244.0.3:8080");
    let backends = netctl(&["dump-backends"]);
    assert_eq!(
        backends.as_array().map(Vec::len),
        Some(9),
        "3 pods x (TCP 8080, TCP 8081, UDP 8080)"
    );
    let flows = netctl(&["dump-conntrack"]);
    assert!(flows.as_array().expect("array").iter().any(|f| {
        f["frontend"] == "10.96.0.22:80"
            && f["client"]
                .as_str()
                .is_some_and(|c| c.starts_with("10.244.0.2:"))
    }));
    let stats = netctl(&["stats"]);
    assert!(stats["tc_dnat"].as_u64().is_some_and(|n| n >= 3));
    assert!(stats.get("drop_policy_empty").is_some() && stats.get("rejected").is_some());
}

#[test]
fn dump_reads_back_scopes_flags_and_backends() {
    let f = Fixture::new();
    let entry = ServiceEntry {
        external: true,
        external_local: true,
        affinity_timeout_s: Some(30),
        ..ServiceEntry::new(
            fe(NODE_IP, 30100, Proto::Tcp),
            7,
            vec![ep(0, Proto::Tcp), ep(2, Proto::Tcp)],
        )
    };
    f.program(&entry);
    let dump = f.maps().dump().expect("dump");
    assert_eq!(dump.len(), 1);
    let s = &dump[0];
    assert_eq!(s.rev_nat_id, 7);
    assert_eq!(s.affinity_timeout_s, Some(30));
    assert!(
        s.flags
            .contains(&petrel_datapath::inspect::ServiceFlag::ExternalLocal)
            && s.flags
                .contains(&petrel_datapath::inspect::ServiceFlag::TwoScopes)
    );
    let addrs = |v: &[petrel_datapath::inspect::ProgrammedBackend]| {
        v.iter()
            .map(|b| b.addr.expect("present").to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(addrs(&s.backends), ["10.244.0.3:8080"]);
    assert_eq!(
        addrs(s.internal_backends.as_ref().expect("internal scope")),
        ["10.244.0.3:8080", "10.244.0.5:8080"]
    );
    assert!(s.internal_backends.as_ref().expect("internal")[1].remote);
    // Dropping the policy removes the internal scope.
    f.program(&ServiceEntry {
        external_local: false,
        ..entry
    });
    assert_eq!(f.maps().dump().expect("dump")[0].internal_backends, None);
    f.maps()
        .remove_service(fe(NODE_IP, 30100, Proto::Tcp))
        .expect("remove");
    assert!(f.maps().dump().expect("dump").is_empty());
}
