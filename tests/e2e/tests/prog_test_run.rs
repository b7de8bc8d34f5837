//! Table-driven BPF_PROG_TEST_RUN fixtures for the TC programs, as Katran tests its datapath:
//! map contents + packet in -> verdict + packet out, with every checksum of the output verified.
//! The programs run in the real kernel against real (pinned) maps; nothing is attached.

use std::net::{Ipv4Addr, SocketAddrV4};

use petrel_datapath::{
    BackendSpec, Datapath, DatapathConfig, Endpoint, Frontend, Proto, ServiceEntry, ServiceMaps,
    maglev,
};
use petrel_testbed::{
    BpffsRoot,
    packet::{self, ACK, ICMP, Parsed, SYN, TCP, UDP},
    require_root, unique,
};

const OK: u32 = 0;
const SHOT: u32 = 2;
const REDIRECT: u32 = 7;
const MAGLEV_SIZE: u32 = 251;

fn sa(ip: [u8; 4], port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(ip), port)
}

const CLIENT: [u8; 4] = [10, 244, 0, 2];
const EXT_CLIENT: [u8; 4] = [10, 99, 0, 2];
const NODE_IP: [u8; 4] = [10, 99, 0, 1];

struct Fixture {
    dp: Datapath,
    maps: ServiceMaps,
    _pins: BpffsRoot,
}

fn backend(maps: &mut ServiceMaps, id: u32, addr: SocketAddrV4, proto: Proto, remote: bool) {
    maps.upsert_backend(&BackendSpec {
        id,
        addr,
        proto,
        terminating: false,
        remote,
    })
    .expect("backend");
}

fn fe(ip: [u8; 4], port: u16, proto: Proto) -> Frontend {
    Frontend {
        addr: Ipv4Addr::from(ip),
        port,
        proto,
    }
}

impl Fixture {
    fn new() -> Fixture {
        require_root();
        let pins = BpffsRoot::new(&unique("petrel-ptr-"));
        let config = DatapathConfig {
            bpffs_root: pins.path().to_path_buf(),
            maglev_size: MAGLEV_SIZE,
            maglev_rings: 4,
            ..Default::default()
        };
        let dp = Datapath::load(&config).expect("load datapath (verifier)");
        let mut maps = dp.service_maps().expect("maps");
        maps.set_node_ip(Ipv4Addr::from(NODE_IP)).expect("node ip");
        backend(&mut maps, 1, sa([10, 244, 0, 3], 8080), Proto::Tcp, false);
        backend(&mut maps, 2, sa([10, 244, 0, 4], 8080), Proto::Tcp, false);
        backend(&mut maps, 3, sa([10, 244, 9, 9], 8080), Proto::Tcp, true);
        backend(&mut maps, 4, sa([10, 244, 0, 3], 8053), Proto::Udp, false);
        backend(&mut maps, 5, sa([10, 244, 0, 5], 8080), Proto::Tcp, false);
        backend(&mut maps, 6, sa([10, 244, 0, 6], 8080), Proto::Tcp, false);
        let mut remote = Endpoint::ready(3);
        remote.local = false;
        let entries = [
            ServiceEntry::new(
                fe([10, 96, 0, 1], 80, Proto::Tcp),
                1,
                vec![Endpoint::ready(1)],
            ),
            ServiceEntry::new(
                fe([10, 96, 0, 2], 53, Proto::Udp),
                2,
                vec![Endpoint::ready(4)],
            ),
            ServiceEntry::new(fe([10, 96, 0, 3], 80, Proto::Tcp), 3, vec![]),
            ServiceEntry {
                external: true,
                external_local: true,
                ..ServiceEntry::new(fe(NODE_IP, 30080, Proto::Tcp), 4, vec![remote])
            },
            ServiceEntry {
                external: true,
                ..ServiceEntry::new(fe(NODE_IP, 30081, Proto::Tcp), 5, vec![remote])
            },
            ServiceEntry {
                maglev_ring: Some(0),
                ..ServiceEntry::new(
                    fe([10, 96, 0, 6], 80, Proto::Tcp),
                    6,
                    vec![Endpoint::ready(1), Endpoint::ready(2)],
                )
            },
            ServiceEntry {
                affinity_timeout_s: Some(60),
                ..ServiceEntry::new(
                    fe([10, 96, 0, 7], 80, Proto::Tcp),
                    7,
                    vec![Endpoint::ready(1), Endpoint::ready(2)],
                )
            },
            // internalTrafficPolicy Local: in-cluster traffic only to the local endpoint.
            ServiceEntry {
                internal_local: true,
                ..ServiceEntry::new(
                    fe([10, 96, 0, 9], 80, Proto::Tcp),
                    9,
                    vec![remote, Endpoint::ready(2)],
                )
            },
            // Several ports, and TCP and UDP on one port, each with its own backends.
            ServiceEntry::new(
                fe([10, 96, 0, 10], 53, Proto::Tcp),
                10,
                vec![Endpoint::ready(2)],
            ),
            ServiceEntry::new(
                fe([10, 96, 0, 10], 53, Proto::Udp),
                11,
                vec![Endpoint::ready(4)],
            ),
            ServiceEntry::new(
                fe([10, 96, 0, 10], 54, Proto::Tcp),
                12,
                vec![Endpoint::ready(1)],
            ),
            // No ready endpoint: the serving-and-terminating one is used, not the unready one.
            ServiceEntry::new(
                fe([10, 96, 0, 11], 80, Proto::Tcp),
                13,
                vec![
                    Endpoint {
                        ready: false,
                        serving: false,
                        ..Endpoint::ready(1)
                    },
                    Endpoint {
                        ready: false,
                        serving: true,
                        terminating: true,
                        ..Endpoint::ready(2)
                    },
                ],
            ),
            ServiceEntry::new(
                fe([10, 96, 0, 8], 80, Proto::Tcp),
                8,
                vec![Endpoint::ready(5)],
            ),
        ];
        for e in &entries {
            maps.upsert_service(e).expect("service");
        }
        Fixture {
            dp,
            maps,
            _pins: pins,
        }
    }

    fn run(&mut self, external: bool, input: &[u8]) -> (u32, Vec<u8>) {
        self.dp
            .test_run_tc(external, input)
            .expect("BPF_PROG_TEST_RUN")
    }

    fn stat(&self, name: &str) -> u64 {
        self.maps
            .stats()
            .expect("stats")
            .into_iter()
            .find(|(n, _)| *n == name)
            .expect("counter")
            .1
    }
}

/// Runs a test body in a fresh, empty network namespace: BPF_PROG_TEST_RUN builds its packets
/// in the caller's namespace, and an empty routing table makes FIB lookups fail the same way on
/// every machine.
fn isolated(f: impl FnOnce() + Send + 'static) {
    require_root();
    let ns = petrel_testbed::netns::NetNs::new(&unique("ptr"));
    ns.run(f);
}

struct Case {
    name: &'static str,
    external: bool,
    input: Vec<u8>,
    verdict: u32,
    /// None: the packet must come out unchanged.
    output: Option<Parsed>,
}

fn tcp(src: SocketAddrV4, dst: SocketAddrV4, flags: u8) -> Vec<u8> {
    packet::build(TCP, src, dst, flags, b"")
}

#[expect(
    clippy::unnecessary_wraps,
    reason = "a Case's expected output, where None stands for a dropped packet"
)]
fn out(proto: u8, src: SocketAddrV4, dst: SocketAddrV4) -> Option<Parsed> {
    Some(Parsed {
        proto,
        src,
        dst,
        icmp: None,
    })
}

#[test]
fn table_of_tc_behaviours() {
    isolated(|| {
        let mut f = Fixture::new();
        let client = sa(CLIENT, 40000);
        let cases = vec![
            Case {
                name: "ClusterIP TCP: DNAT to the only backend",
                external: false,
                input: tcp(client, sa([10, 96, 0, 1], 80), SYN),
                verdict: OK,
                output: out(TCP, client, sa([10, 244, 0, 3], 8080)),
            },
            Case {
                name: "reply from the backend: reverse NAT to the VIP, redirected to the client's interface",
                external: false,
                input: tcp(sa([10, 244, 0, 3], 8080), client, SYN | ACK),
                verdict: REDIRECT,
                output: out(TCP, sa([10, 96, 0, 1], 80), client),
            },
            Case {
                name: "UDP with a checksum",
                external: false,
                input: packet::build(UDP, client, sa([10, 96, 0, 2], 53), 0, b"query"),
                verdict: OK,
                output: out(UDP, client, sa([10, 244, 0, 3], 8053)),
            },
            Case {
                name: "no endpoint: ICMP port unreachable back out of the same interface",
                external: false,
                input: tcp(sa(CLIENT, 40001), sa([10, 96, 0, 3], 80), SYN),
                verdict: REDIRECT,
                output: Some(Parsed {
                    proto: ICMP,
                    src: sa([10, 96, 0, 3], 0),
                    dst: sa(CLIENT, 0),
                    icmp: Some((3, 3, sa([10, 96, 0, 3], 80))),
                }),
            },
            Case {
                name: "externalTrafficPolicy Local, no local endpoint: dropped",
                external: true,
                input: tcp(sa(EXT_CLIENT, 41000), sa(NODE_IP, 30080), SYN),
                verdict: SHOT,
                output: None,
            },
            Case {
                name: "externalTrafficPolicy Local, in-cluster client: served by the remote endpoint",
                external: false,
                input: tcp(sa(CLIENT, 41001), sa(NODE_IP, 30080), SYN),
                verdict: OK,
                output: out(TCP, sa(CLIENT, 41001), sa([10, 244, 9, 9], 8080)),
            },
            Case {
                name: "NodePort, policy Cluster, remote backend: SNAT to the node address",
                external: true,
                input: tcp(sa(EXT_CLIENT, 41002), sa(NODE_IP, 30081), SYN),
                verdict: OK,
                output: out(TCP, sa(NODE_IP, 41002), sa([10, 244, 9, 9], 8080)),
            },
            Case {
                name: "reply of the SNATed flow: back to the external client from the NodePort",
                external: true,
                input: tcp(sa([10, 244, 9, 9], 8080), sa(NODE_IP, 41002), SYN | ACK),
                // Redirected out of the interface the flow came in on (bpf_redirect_neigh).
                verdict: REDIRECT,
                output: out(TCP, sa(NODE_IP, 30081), sa(EXT_CLIENT, 41002)),
            },
            Case {
                name: "hairpin: a backend reaching itself through the VIP gets a link-local source",
                external: false,
                input: tcp(sa([10, 244, 0, 3], 40002), sa([10, 96, 0, 1], 80), SYN),
                verdict: OK,
                output: out(TCP, sa([169, 254, 42, 1], 40002), sa([10, 244, 0, 3], 8080)),
            },
            Case {
                name: "hairpin reply: from the VIP back to the backend's own client socket",
                external: false,
                input: tcp(
                    sa([10, 244, 0, 3], 8080),
                    sa([169, 254, 42, 1], 40002),
                    SYN | ACK,
                ),
                verdict: REDIRECT,
                output: out(TCP, sa([10, 96, 0, 1], 80), sa([10, 244, 0, 3], 40002)),
            },
            Case {
                name: "internalTrafficPolicy Local: the local endpoint only",
                external: false,
                input: tcp(sa(CLIENT, 40010), sa([10, 96, 0, 9], 80), SYN),
                verdict: OK,
                output: out(TCP, sa(CLIENT, 40010), sa([10, 244, 0, 4], 8080)),
            },
            Case {
                name: "TCP on port 53",
                external: false,
                input: tcp(sa(CLIENT, 40011), sa([10, 96, 0, 10], 53), SYN),
                verdict: OK,
                output: out(TCP, sa(CLIENT, 40011), sa([10, 244, 0, 4], 8080)),
            },
            Case {
                name: "UDP on the same port 53: its own backend",
                external: false,
                input: packet::build(UDP, sa(CLIENT, 40011), sa([10, 96, 0, 10], 53), 0, b"q"),
                verdict: OK,
                output: out(UDP, sa(CLIENT, 40011), sa([10, 244, 0, 3], 8053)),
            },
            Case {
                name: "second port of the service",
                external: false,
                input: tcp(sa(CLIENT, 40012), sa([10, 96, 0, 10], 54), SYN),
                verdict: OK,
                output: out(TCP, sa(CLIENT, 40012), sa([10, 244, 0, 3], 8080)),
            },
            Case {
                name: "terminating fallback: serving-and-terminating endpoint used",
                external: false,
                input: tcp(sa(CLIENT, 40013), sa([10, 96, 0, 11], 80), SYN),
                verdict: OK,
                output: out(TCP, sa(CLIENT, 40013), sa([10, 244, 0, 4], 8080)),
            },
            Case {
                name: "not a service: untouched",
                external: false,
                input: tcp(client, sa([10, 244, 0, 4], 8080), SYN),
                verdict: OK,
                output: None,
            },
        ];
        for c in cases {
            let (verdict, output) = f.run(c.external, &c.input);
            assert_eq!(verdict, c.verdict, "{}: verdict", c.name);
            match &c.output {
                None if verdict == SHOT => {}
                None => assert_eq!(output, c.input, "{}: packet must be unchanged", c.name),
                Some(expected) => assert_eq!(&packet::parse(&output), expected, "{}", c.name),
            }
        }
        assert!(f.stat("rejected") >= 1 && f.stat("drop_policy_empty") >= 1);
        assert!(f.stat("snat") >= 1 && f.stat("hairpin") >= 1);
    });
}

#[test]
fn udp_without_checksum_keeps_it_zero() {
    isolated(|| {
        let mut f = Fixture::new();
        let mut p = packet::build(UDP, sa(CLIENT, 40100), sa([10, 96, 0, 2], 53), 0, b"q");
        p[40..42].copy_from_slice(&[0, 0]); // UDP checksum "none"
        let (verdict, output) = f.run(false, &p);
        assert_eq!(verdict, OK);
        assert_eq!(&output[40..42], &[0, 0]);
        assert_eq!(packet::parse(&output).dst, sa([10, 244, 0, 3], 8053));
    });
}

#[test]
fn non_ipv4_passes_untouched() {
    isolated(|| {
        let mut f = Fixture::new();
        let mut arp = vec![0xffu8; 42];
        arp[12] = 0x08;
        arp[13] = 0x06;
        let (verdict, output) = f.run(false, &arp);
        assert_eq!((verdict, output), (OK, arp));
    });
}

#[test]
fn maglev_picks_what_userspace_computes_on_every_node() {
    isolated(|| {
        let mut f = Fixture::new();
        let names = vec![
            (1, "10.244.0.3:8080".to_string()),
            (2, "10.244.0.4:8080".to_string()),
        ];
        let table = maglev::table(&names, MAGLEV_SIZE);
        let addr = |id: u32| {
            if id == 1 {
                sa([10, 244, 0, 3], 8080)
            } else {
                sa([10, 244, 0, 4], 8080)
            }
        };
        let mut seen = std::collections::BTreeSet::new();
        for port in 42000..42040u16 {
            let src = sa(EXT_CLIENT, port);
            let (verdict, output) = f.run(true, &tcp(src, sa([10, 96, 0, 6], 80), SYN));
            assert_eq!(verdict, OK);
            let h = maglev::flow_hash(
                u32::from_ne_bytes(EXT_CLIENT),
                port.to_be(),
                80u16.to_be(),
                TCP,
            );
            let expected = addr(table[(h % MAGLEV_SIZE) as usize]);
            assert_eq!(
                packet::parse(&output).dst,
                expected,
                "flow from port {port}"
            );
            seen.insert(expected);
        }
        assert_eq!(seen.len(), 2, "40 flows spread over both backends");
    });
}

#[test]
fn affinity_keeps_a_client_on_one_backend() {
    isolated(|| {
        let mut f = Fixture::new();
        let mut backends = std::collections::BTreeSet::new();
        for port in 43000..43020u16 {
            let (_, output) = f.run(false, &tcp(sa(CLIENT, port), sa([10, 96, 0, 7], 80), SYN));
            backends.insert(packet::parse(&output).dst);
        }
        assert_eq!(
            backends.len(),
            1,
            "20 connections of one client, one backend: {backends:?}"
        );
        assert!(f.stat("affinity_hit") >= 19);
    });
}

#[test]
fn flow_whose_backend_vanished_is_rebalanced() {
    isolated(|| {
        let mut f = Fixture::new();
        let flow = (sa(CLIENT, 44000), sa([10, 96, 0, 8], 80));
        let (_, output) = f.run(false, &tcp(flow.0, flow.1, SYN));
        assert_eq!(packet::parse(&output).dst, sa([10, 244, 0, 5], 8080));
        // The endpoint moves: the service now points at backend 6 and backend 5 is gone.
        let entry = ServiceEntry::new(
            fe([10, 96, 0, 8], 80, Proto::Tcp),
            8,
            vec![Endpoint::ready(6)],
        );
        f.maps.upsert_service(&entry).expect("update");
        f.maps.remove_backend(5).expect("remove");
        let (verdict, output) = f.run(false, &tcp(flow.0, flow.1, ACK));
        assert_eq!(verdict, OK);
        assert_eq!(
            packet::parse(&output).dst,
            sa([10, 244, 0, 6], 8080),
            "re-balanced, not black-holed"
        );
        assert_eq!(f.stat("rebalanced"), 1);
    });
}
