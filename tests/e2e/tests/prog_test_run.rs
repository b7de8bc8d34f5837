//! Table-driven BPF_PROG_TEST_RUN fixtures for the TC programs, as Katran tests its datapath:
//! map contents + packet in -> verdict + packet out, with every checksum of the output verified.
//! The programs run in the real kernel against real (pinned) maps; nothing is attached.

use std::net::{Ipv4Addr, SocketAddrV4};

use petrel_common::{
    CT_DIR_FORWARD, CT_DIR_REPLY, CT_F_HOST, CT_SEEN_ACK, CT_SEEN_PKT, CT_SEEN_SYN, CtKey, CtValue,
    NAT_PORT_MAX_DEFAULT, NAT_PORT_MIN_DEFAULT, config,
};
use petrel_datapath::{
    BackendSpec, Datapath, DatapathConfig, Endpoint, Frontend, Proto, ServiceEntry, ServiceMaps,
    maglev, maps::MapStore,
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
            // A ClusterIP whose only backend is on another node (off-cluster clients: SNAT).
            ServiceEntry::new(fe([10, 96, 0, 12], 80, Proto::Tcp), 14, vec![remote]),
            // eTP Local with no endpoint anywhere: rejected, not dropped (kube-proxy).
            ServiceEntry {
                external: true,
                external_local: true,
                ..ServiceEntry::new(fe(NODE_IP, 30082, Proto::Tcp), 15, vec![])
            },
            // iTP Local with endpoints on other nodes only: dropped.
            ServiceEntry {
                internal_local: true,
                ..ServiceEntry::new(fe([10, 96, 0, 13], 80, Proto::Tcp), 16, vec![remote])
            },
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

    /// Runs the external interfaces' egress program (host-network answers, host processes).
    fn run_egress(&mut self, input: &[u8]) -> (u32, Vec<u8>) {
        self.dp
            .test_run_tc_program(petrel_datapath::datapath::PROG_TC_EXTERNAL_EGRESS, input)
            .expect("BPF_PROG_TEST_RUN")
    }

    fn run(&mut self, external: bool, input: &[u8]) -> (u32, Vec<u8>) {
        self.dp
            .test_run_tc(external, input)
            .expect("BPF_PROG_TEST_RUN")
    }

    /// The conntrack entry of `src -> dst` in direction `dir`.
    fn ct(&self, proto: u8, src: SocketAddrV4, dst: SocketAddrV4, dir: u8) -> Option<CtValue> {
        let key = CtKey {
            saddr_be: u32::from(*src.ip()).to_be(),
            daddr_be: u32::from(*dst.ip()).to_be(),
            sport_be: src.port().to_be(),
            dport_be: dst.port().to_be(),
            proto,
            dir,
            _pad: [0; 2],
        };
        self.maps.store().ct_get(&key).expect("ct lookup")
    }

    fn ct_len(&self) -> usize {
        self.maps.store().ct_entries(usize::MAX).expect("ct").len()
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
                name: "internalTrafficPolicy Local from off-cluster: the local endpoint only, as for pods",
                external: true,
                input: tcp(sa(EXT_CLIENT, 41004), sa([10, 96, 0, 9], 80), SYN),
                verdict: OK,
                output: out(TCP, sa(EXT_CLIENT, 41004), sa([10, 244, 0, 4], 8080)),
            },
            Case {
                name: "internalTrafficPolicy Local, endpoints on other nodes only: dropped",
                external: false,
                input: tcp(sa(CLIENT, 40014), sa([10, 96, 0, 13], 80), SYN),
                verdict: SHOT,
                output: None,
            },
            Case {
                name: "externalTrafficPolicy Local, no endpoint anywhere: rejected (kube-proxy's REJECT)",
                external: true,
                input: tcp(sa(EXT_CLIENT, 41003), sa(NODE_IP, 30082), SYN),
                verdict: REDIRECT,
                output: Some(Parsed {
                    proto: ICMP,
                    src: sa(NODE_IP, 0),
                    dst: sa(EXT_CLIENT, 0),
                    icmp: Some((3, 3, sa(NODE_IP, 30082))),
                }),
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
        assert!(f.stat("hairpin") >= 1);
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

/// Found by the tc_packets fuzz target: a packet cut short inside the headers its IPv4 header
/// announces was dropped as a rewrite error (17 bytes of TCP: up to the flags, not the
/// checksum). It is malformed: counted, and passed untouched.
#[test]
fn a_packet_shorter_than_its_headers_passes_as_malformed() {
    isolated(|| {
        let mut f = Fixture::new();
        let whole = tcp(sa(CLIENT, 40200), sa([10, 96, 0, 1], 80), SYN);
        let mut cases = Vec::new();
        for l4_len in [2usize, 6, 12, 17] {
            // TCP header cut after `l4_len` bytes, the IPv4 total length saying so.
            let mut p = whole[..34 + l4_len].to_vec();
            p[16..18].copy_from_slice(&((20 + l4_len) as u16).to_be_bytes());
            cases.push(p);
        }
        let mut ihl = whole.clone();
        ihl[14] = 0x4f; // a 60-byte IPv4 header in a 54-byte frame
        cases.push(ihl);
        for p in &cases {
            for external in [false, true] {
                let malformed = f.stat("malformed");
                let (verdict, output) = f.run(external, p);
                assert_eq!((verdict, &output), (OK, p), "passed untouched: {p:02x?}");
                assert_eq!(f.stat("malformed"), malformed + 1, "counted: {p:02x?}");
            }
        }
        assert_eq!(f.stat("drop_rewrite_error"), 0);
    });
}

/// Found by the tc_packets fuzz target: a later fragment too short to quote, of a datagram to a
/// service without endpoints, failed building the ICMP answer (a rewrite error). It is dropped.
#[test]
fn a_tiny_later_fragment_to_a_service_without_endpoints_is_dropped() {
    isolated(|| {
        let mut f = Fixture::new();
        let mut first = tcp(sa(CLIENT, 40300), sa([10, 96, 0, 3], 80), SYN);
        first[20] = 0x20; // more fragments
        let (verdict, _) = f.run(false, &first);
        assert_eq!(
            verdict, REDIRECT,
            "the first fragment is answered port-unreachable"
        );
        let mut later = first[..34 + 5].to_vec();
        later[16..18].copy_from_slice(&25u16.to_be_bytes());
        later[20..22].copy_from_slice(&1u16.to_be_bytes()); // offset 8 bytes, last fragment
        let errors = f.stat("drop_rewrite_error");
        let (verdict, _) = f.run(false, &later);
        assert_eq!(verdict, SHOT);
        assert_eq!(f.stat("drop_rewrite_error"), errors, "not a rewrite error");
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
fn load_balancer_source_ranges_drop_other_clients_at_the_lb_ip_only() {
    isolated(|| {
        let mut f = Fixture::new();
        let lb = fe([203, 0, 113, 10], 80, Proto::Tcp);
        let node_port = fe(NODE_IP, 30090, Proto::Tcp);
        f.maps
            .upsert_service(&ServiceEntry {
                external: true,
                source_ranges: vec!["10.99.0.0/24".parse().unwrap()],
                ..ServiceEntry::new(lb, 20, vec![Endpoint::ready(1)])
            })
            .expect("lb frontend");
        // The same service's NodePort: no ranges (kube-proxy filters the LB IP only).
        f.maps
            .upsert_service(&ServiceEntry {
                external: true,
                ..ServiceEntry::new(node_port, 21, vec![Endpoint::ready(1)])
            })
            .expect("nodeport frontend");
        let backend = sa([10, 244, 0, 3], 8080);
        let lb_addr = sa([203, 0, 113, 10], 80);
        let inside = sa(EXT_CLIENT, 41000);
        let outside = sa([192, 0, 2, 50], 41000);

        let (verdict, output) = f.run(true, &tcp(inside, lb_addr, SYN));
        assert_eq!(verdict, OK, "a client inside the range");
        assert_eq!(packet::parse(&output).dst, backend);
        assert_eq!(f.stat("drop_src_range"), 0);

        let (verdict, _) = f.run(true, &tcp(outside, lb_addr, SYN));
        assert_eq!(verdict, SHOT, "a client outside every range is dropped");
        assert_eq!(f.stat("drop_src_range"), 1);
        assert!(
            f.ct(TCP, outside, lb_addr, CT_DIR_FORWARD).is_none(),
            "a dropped client leaves no conntrack entry"
        );

        // A pod reaching the LB IP is held to the ranges too (kube-proxy's firewall chain sees
        // every source); its address is not in them.
        let pod = sa(CLIENT, 41001);
        let (verdict, _) = f.run(false, &tcp(pod, lb_addr, SYN));
        assert_eq!(verdict, SHOT, "a pod outside the ranges");
        assert_eq!(f.stat("drop_src_range"), 2);

        let (verdict, output) = f.run(true, &tcp(outside, sa(NODE_IP, 30090), SYN));
        assert_eq!(
            verdict, OK,
            "the NodePort of the same service is not filtered"
        );
        assert_eq!(packet::parse(&output).dst, backend);

        // Ranges removed: everyone gets in.
        f.maps
            .upsert_service(&ServiceEntry {
                external: true,
                ..ServiceEntry::new(lb, 20, vec![Endpoint::ready(1)])
            })
            .expect("lb frontend without ranges");
        let (verdict, _) = f.run(true, &tcp(sa([192, 0, 2, 50], 41002), lb_addr, SYN));
        assert_eq!(verdict, OK, "no ranges, no filter");
        assert_eq!(f.stat("drop_src_range"), 2);
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

/// CLOCK_MONOTONIC seconds, the clock of conntrack expiry.
fn now_s() -> u32 {
    (petrel_testbed::monotonic_ns() / 1_000_000_000) as u32
}

fn nat_port(p: u16) -> bool {
    (NAT_PORT_MIN_DEFAULT..=NAT_PORT_MAX_DEFAULT).contains(&p)
}

#[test]
fn nodeport_snat_takes_a_nat_port_and_clients_sharing_a_source_port_stay_apart() {
    isolated(|| {
        let mut f = Fixture::new();
        let nodeport = sa(NODE_IP, 30081);
        let backend = sa([10, 244, 9, 9], 8080);
        // Two external clients, one source port.
        let clients = [sa(EXT_CLIENT, 41002), sa([10, 99, 0, 3], 41002)];
        let mut snat = Vec::new();
        for c in clients {
            let (verdict, output) = f.run(true, &tcp(c, nodeport, SYN));
            assert_eq!(verdict, OK, "SYN from {c}");
            let p = packet::parse(&output);
            assert_eq!((*p.src.ip(), p.dst), (Ipv4Addr::from(NODE_IP), backend));
            assert!(
                nat_port(p.src.port()),
                "SNAT port {} outside the NAT range",
                p.src.port()
            );
            snat.push(p.src);
        }
        assert_ne!(
            snat[0], snat[1],
            "two connections share one translated tuple"
        );
        // Each reply goes to its own client, from the NodePort.
        for (c, s) in clients.iter().zip(&snat) {
            let (verdict, output) = f.run(true, &tcp(backend, *s, SYN | ACK));
            assert_eq!(verdict, REDIRECT);
            assert_eq!(packet::parse(&output), out(TCP, nodeport, *c).unwrap());
        }
        assert_eq!(f.stat("snat"), 2);
        // Two entries per connection.
        assert_eq!(f.ct_len(), 4);
    });
}

/// The backend's own node as the NodePort's client (a process on node A, or a pod there
/// masqueraded to node A's address, reaching node B's NodePort, whose backend is a host-network
/// pod of node A): SNAT to this node, as any external client, not the hairpin address, which
/// node A could not route back here (upstream e2e "Networking Granular Checks: Services should
/// function for service endpoints using hostNetwork").
#[test]
fn a_nodeport_client_on_the_backends_own_node_is_snated_to_this_node_not_hairpinned() {
    isolated(|| {
        let mut f = Fixture::new();
        let nodeport = sa(NODE_IP, 30081);
        let backend = sa([10, 244, 9, 9], 8080);
        let client = sa([10, 244, 9, 9], 41003);
        let (verdict, output) = f.run(true, &tcp(client, nodeport, SYN));
        assert_eq!(verdict, OK);
        let p = packet::parse(&output);
        assert_eq!((*p.src.ip(), p.dst), (Ipv4Addr::from(NODE_IP), backend));
        assert!(nat_port(p.src.port()), "SNAT port {}", p.src.port());
        let (verdict, output) = f.run(true, &tcp(backend, p.src, SYN | ACK));
        assert_eq!(verdict, REDIRECT);
        assert_eq!(packet::parse(&output), out(TCP, nodeport, client).unwrap());
        assert_eq!((f.stat("snat"), f.stat("hairpin")), (1, 0));
    });
}

/// kube-proxy's `! -s clusterCIDR -d clusterIP -j KUBE-MARK-MASQ`: a client outside the cluster
/// routed to a ClusterIP is masqueraded when its backend is on another node, so the answer
/// comes back through this node; a local backend keeps the client's address, and a source
/// inside the cluster CIDR is never masqueraded.
#[test]
fn an_off_cluster_client_of_a_cluster_ip_is_masqueraded_to_a_remote_backend() {
    isolated(|| {
        let mut f = Fixture::new();
        f.maps
            .set_cluster_cidr(Some("10.244.0.0/16".parse().expect("cidr")))
            .expect("cluster cidr");
        let vip = sa([10, 96, 0, 12], 80);
        let remote = sa([10, 244, 9, 9], 8080);
        let client = sa(EXT_CLIENT, 41005);
        let (verdict, output) = f.run(true, &tcp(client, vip, SYN));
        assert_eq!(verdict, OK);
        let p = packet::parse(&output);
        assert_eq!((*p.src.ip(), p.dst), (Ipv4Addr::from(NODE_IP), remote));
        assert!(nat_port(p.src.port()), "SNAT port {}", p.src.port());
        assert_eq!(f.stat("snat"), 1);
        let (verdict, output) = f.run(true, &tcp(remote, p.src, SYN | ACK));
        assert_eq!(verdict, REDIRECT);
        assert_eq!(packet::parse(&output), out(TCP, vip, client).unwrap());

        // A local backend answers through this node anyway: the client is kept.
        let client = sa(EXT_CLIENT, 41006);
        let (verdict, output) = f.run(true, &tcp(client, sa([10, 96, 0, 1], 80), SYN));
        assert_eq!(verdict, OK);
        assert_eq!(
            packet::parse(&output),
            out(TCP, client, sa([10, 244, 0, 3], 8080)).unwrap()
        );
        // From inside the cluster CIDR (another node's pod): not masqueraded.
        let pod = sa([10, 244, 5, 5], 41007);
        let (verdict, output) = f.run(true, &tcp(pod, vip, SYN));
        assert_eq!(verdict, OK);
        assert_eq!(packet::parse(&output), out(TCP, pod, remote).unwrap());
        assert_eq!(f.stat("snat"), 1);
    });
}

#[test]
fn a_taken_backend_tuple_remaps_the_source_port_and_replies_find_their_frontend() {
    isolated(|| {
        let mut f = Fixture::new();
        // A second frontend on the same backend as 10.96.0.1:80.
        let vip2 = sa([10, 96, 0, 12], 80);
        f.maps
            .upsert_service(&ServiceEntry::new(
                fe([10, 96, 0, 12], 80, Proto::Tcp),
                14,
                vec![Endpoint::ready(1)],
            ))
            .expect("service");
        let client = sa(CLIENT, 40500);
        let backend = sa([10, 244, 0, 3], 8080);
        let (_, first) = f.run(false, &tcp(client, sa([10, 96, 0, 1], 80), SYN));
        assert_eq!(packet::parse(&first), out(TCP, client, backend).unwrap());
        // Same client port to the other frontend: the tuple backend -> client:40500 is taken.
        let (verdict, second) = f.run(false, &tcp(client, vip2, SYN));
        assert_eq!(verdict, OK);
        let p = packet::parse(&second);
        assert_eq!((*p.src.ip(), p.dst), (Ipv4Addr::from(CLIENT), backend));
        assert!(nat_port(p.src.port()), "remapped to {}", p.src.port());
        assert_eq!(f.stat("ct_clash_remap"), 1);
        // Replies: each from its own frontend, both to the client's real port.
        let (_, r1) = f.run(false, &tcp(backend, client, SYN | ACK));
        assert_eq!(
            packet::parse(&r1),
            out(TCP, sa([10, 96, 0, 1], 80), client).unwrap()
        );
        let (_, r2) = f.run(false, &tcp(backend, p.src, SYN | ACK));
        assert_eq!(packet::parse(&r2), out(TCP, vip2, client).unwrap());
    });
}

#[test]
fn tcp_states_set_each_directions_lifetime() {
    isolated(|| {
        let mut f = Fixture::new();
        let client = sa(CLIENT, 40600);
        let vip = sa([10, 96, 0, 1], 80);
        let backend = sa([10, 244, 0, 3], 8080);
        let life = |v: CtValue| i64::from(v.expires_s) - i64::from(now_s());
        let near = |got: i64, want: i64| (want - 2..=want + 1).contains(&got);

        f.run(false, &tcp(client, vip, SYN));
        let fwd = f
            .ct(TCP, client, vip, CT_DIR_FORWARD)
            .expect("forward entry");
        assert_eq!(fwd.seen & (CT_SEEN_SYN | CT_SEEN_ACK), CT_SEEN_SYN);
        assert!(near(life(fwd), 60), "SYN: {}s", life(fwd));
        let rev = f
            .ct(TCP, backend, client, CT_DIR_REPLY)
            .expect("reply entry");
        assert_eq!(rev.seen, 0, "nothing answered yet");

        f.run(false, &tcp(backend, client, SYN | ACK));
        let rev = f.ct(TCP, backend, client, CT_DIR_REPLY).unwrap();
        assert!(near(life(rev), 21600), "SYN-ACK: {}s", life(rev));

        f.run(false, &tcp(client, vip, ACK));
        let fwd = f.ct(TCP, client, vip, CT_DIR_FORWARD).unwrap();
        assert!(near(life(fwd), 21600), "established: {}s", life(fwd));

        // A FIN: TIME_WAIT's 60 s, so the translated tuple stays claimed while an end holds it.
        f.run(false, &tcp(client, vip, ACK | 0x01));
        let fwd = f.ct(TCP, client, vip, CT_DIR_FORWARD).unwrap();
        assert!(near(life(fwd), 60), "FIN: {}s", life(fwd));
        // Closing stays closing.
        f.run(false, &tcp(client, vip, ACK));
        let fwd = f.ct(TCP, client, vip, CT_DIR_FORWARD).unwrap();
        assert!(near(life(fwd), 60), "after FIN: {}s", life(fwd));
        // A RST: the short closing lifetime.
        f.run(false, &tcp(backend, client, 0x04));
        let rev = f.ct(TCP, backend, client, CT_DIR_REPLY).unwrap();
        assert!(near(life(rev), 10), "RST: {}s", life(rev));

        // A new SYN on the closed connection's tuple reopens it: tracked from its handshake,
        // to the same backend and port.
        let (verdict, again) = f.run(false, &tcp(client, vip, SYN));
        assert_eq!(verdict, OK);
        assert_eq!(packet::parse(&again), out(TCP, client, backend).unwrap());
        let fwd = f.ct(TCP, client, vip, CT_DIR_FORWARD).unwrap();
        assert_eq!(fwd.seen, CT_SEEN_PKT | CT_SEEN_SYN, "a fresh connection");
        assert!(near(life(fwd), 60), "new SYN: {}s", life(fwd));
        let rev = f.ct(TCP, backend, client, CT_DIR_REPLY).unwrap();
        assert_eq!(rev.seen, 0, "the new connection's reply entry");

        // The agent's lifetimes apply (here: UDP 5 s).
        f.maps
            .store_mut()
            .config_set(config::CT_OTHER_S, 5)
            .expect("config");
        let uclient = sa(CLIENT, 40601);
        f.run(
            false,
            &packet::build(UDP, uclient, sa([10, 96, 0, 2], 53), 0, b"q"),
        );
        let u = f
            .ct(UDP, uclient, sa([10, 96, 0, 2], 53), CT_DIR_FORWARD)
            .unwrap();
        assert!(near(life(u), 5), "UDP: {}s", life(u));
    });
}

#[test]
fn an_expired_connection_is_gone_for_the_datapath() {
    isolated(|| {
        let mut f = Fixture::new();
        f.maps
            .store_mut()
            .config_set(config::CT_OTHER_S, 1)
            .expect("config");
        let client = sa(CLIENT, 40700);
        let backend = sa([10, 244, 0, 3], 8053);
        f.run(
            false,
            &packet::build(UDP, client, sa([10, 96, 0, 2], 53), 0, b"q"),
        );
        let reply = packet::build(UDP, backend, client, 0, b"a");
        let (verdict, _) = f.run(false, &reply);
        assert_eq!(verdict, REDIRECT, "a live reply is reverse-NATed");
        // A second connection whose client direction expires while its server keeps answering.
        let client2 = sa(CLIENT, 40701);
        let query2 = packet::build(UDP, client2, sa([10, 96, 0, 2], 53), 0, b"q");
        f.run(false, &query2);
        f.maps
            .store_mut()
            .config_set(config::CT_OTHER_S, 30)
            .expect("config");
        f.run(false, &packet::build(UDP, backend, client2, 0, b"a"));
        std::thread::sleep(std::time::Duration::from_millis(2100));
        let (verdict, output) = f.run(false, &reply);
        assert_eq!(
            (verdict, output),
            (OK, reply),
            "an expired connection's reply is not translated"
        );
        assert_eq!(f.ct_len(), 2, "found expired, the first pair was removed");
        let (verdict, output) = f.run(false, &query2);
        assert_eq!(verdict, OK);
        assert_eq!(
            packet::parse(&output).dst,
            backend,
            "a connection with one live direction keeps its backend"
        );
        assert_eq!(f.ct_len(), 2, "the half-idle pair stays");
    });
}

#[test]
fn a_reused_backend_id_never_takes_a_flow_to_another_address() {
    isolated(|| {
        let mut f = Fixture::new();
        let flow = (sa(CLIENT, 44100), sa([10, 96, 0, 8], 80));
        let (_, output) = f.run(false, &tcp(flow.0, flow.1, SYN));
        assert_eq!(packet::parse(&output).dst, sa([10, 244, 0, 5], 8080));
        // The service moves to backend 6; id 5 now names another service's pod.
        f.maps
            .upsert_service(&ServiceEntry::new(
                fe([10, 96, 0, 8], 80, Proto::Tcp),
                8,
                vec![Endpoint::ready(6)],
            ))
            .expect("update");
        backend(&mut f.maps, 5, sa([10, 244, 7, 7], 9999), Proto::Tcp, false);
        let (_, output) = f.run(false, &tcp(flow.0, flow.1, ACK));
        assert_eq!(packet::parse(&output).dst, sa([10, 244, 0, 6], 8080));
        assert_eq!(f.stat("rebalanced"), 1);
    });
}

#[test]
fn icmp_errors_about_translated_packets_are_translated_both_ways() {
    isolated(|| {
        let mut f = Fixture::new();
        let nodeport = sa(NODE_IP, 30081);
        let backend = sa([10, 244, 9, 9], 8080);
        let client = sa(EXT_CLIENT, 41500);
        let (_, fwd) = f.run(true, &tcp(client, nodeport, SYN));
        let snat = packet::parse(&fwd).src;
        let router = Ipv4Addr::new(10, 99, 0, 254);

        // A router toward the backend cannot forward the SNATed packet: the error reaches the
        // node, about node:port -> backend; it must reach the client, about client -> NodePort.
        let err = packet::icmp_error(3, 4, router, Ipv4Addr::from(NODE_IP), &fwd);
        let (verdict, output) = f.run(true, &err);
        assert_eq!(verdict, REDIRECT, "to the client's interface");
        let p = packet::parse(&output);
        // From the NodePort: the node relays the error as its own.
        assert_eq!((p.src.ip(), p.dst.ip()), (nodeport.ip(), client.ip()));
        assert_eq!(p.icmp.map(|i| (i.0, i.1)), Some((3, 4)));
        assert_eq!(packet::quoted(&output), (client, nodeport));

        // The other way: a router toward the client refuses the backend's (translated) reply:
        // the error, about NodePort -> client, must reach the backend about backend -> node.
        let (_, reply) = f.run(true, &tcp(backend, snat, SYN | ACK));
        let err = packet::icmp_error(11, 0, router, Ipv4Addr::from(NODE_IP), &reply);
        let (_, output) = f.run(true, &err);
        let p = packet::parse(&output);
        assert_eq!(p.dst.ip(), backend.ip());
        assert_eq!(packet::quoted(&output), (backend, snat));

        // A backend's own port unreachable about a ClusterIP UDP flow: from the frontend.
        let uclient = sa(CLIENT, 41501);
        let vip = sa([10, 96, 0, 2], 53);
        let ubackend = sa([10, 244, 0, 3], 8053);
        let (_, sent) = f.run(false, &packet::build(UDP, uclient, vip, 0, b"q"));
        let err = packet::icmp_error(3, 3, *ubackend.ip(), *uclient.ip(), &sent);
        let (verdict, output) = f.run(false, &err);
        assert_eq!(verdict, REDIRECT);
        let p = packet::parse(&output);
        assert_eq!((p.src.ip(), p.dst.ip()), (vip.ip(), uclient.ip()));
        assert_eq!(packet::quoted(&output), (uclient, vip));
        assert_eq!(f.stat("icmp_error_translated"), 3);

        // About nothing tracked: untouched, counted.
        let other = tcp(sa(CLIENT, 41502), sa([10, 244, 0, 4], 8080), SYN);
        let err = packet::icmp_error(3, 1, router, Ipv4Addr::from(CLIENT), &other);
        let (verdict, output) = f.run(true, &err);
        assert_eq!((verdict, output), (OK, err));
        assert_eq!(f.stat("icmp_error_untracked"), 1);
    });
}

#[test]
fn every_fragment_of_a_udp_answer_is_translated_like_the_first() {
    isolated(|| {
        let mut f = Fixture::new();
        let client = sa(CLIENT, 41600);
        let vip = sa([10, 96, 0, 2], 53);
        let backend = sa([10, 244, 0, 3], 8053);
        f.run(false, &packet::build(UDP, client, vip, 0, b"query"));
        let answer: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        let frags = packet::udp_fragments(backend, client, &answer, 1500);
        assert_eq!(frags.len(), 3);
        let mut outputs = Vec::new();
        for fr in &frags {
            let (verdict, output) = f.run(false, fr);
            assert_eq!(verdict, REDIRECT, "every fragment goes to the client");
            outputs.push(output);
        }
        let whole = packet::reassemble(&outputs);
        // parse verifies the UDP checksum over the reassembled datagram.
        assert_eq!(packet::parse(&whole), out(UDP, vip, client).unwrap());
        assert_eq!(&whole[42..], &answer[..]);
        assert_eq!(f.stat("frag_translated"), 2);

        // A later fragment whose first was never seen: untouched, counted.
        let lost = packet::udp_fragments(sa([10, 244, 0, 4], 8053), client, &answer, 1500);
        let (verdict, output) = f.run(false, &lost[1]);
        assert_eq!((verdict, output), (OK, lost[1].clone()));
        assert_eq!(f.stat("frag_untracked"), 1);
    });
}

#[test]
fn masquerade_never_starts_mid_stream_and_malformed_packets_pass() {
    isolated(|| {
        let mut f = Fixture::new();
        f.maps
            .set_cluster_cidr(Some("10.244.0.0/16".parse().unwrap()))
            .expect("cidr");
        // A pod's segment of a connection nobody saw start (a hostPort DNAT's answer).
        let p = tcp(sa(CLIENT, 8080), sa([192, 0, 2, 7], 50000), SYN | ACK);
        let (verdict, output) = f.run(false, &p);
        assert_eq!((verdict, output), (OK, p));
        assert_eq!(f.stat("tcp_midstream"), 1);
        assert_eq!(f.ct_len(), 0);

        // An IP header claiming options past the end of the packet; a wrong IP version.
        let mut bad = tcp(sa(CLIENT, 40800), sa([10, 96, 0, 1], 80), SYN);
        bad[14] = 0x4f;
        bad.truncate(14 + 40);
        let (verdict, _) = f.run(false, &bad);
        assert!(verdict == OK || verdict == SHOT, "verdict {verdict}");
        let mut v6 = tcp(sa(CLIENT, 40801), sa([10, 96, 0, 1], 80), SYN);
        v6[14] = 0x65;
        let (verdict, output) = f.run(false, &v6);
        assert_eq!((verdict, output), (OK, v6));
        assert!(f.stat("malformed") >= 1);
        assert_eq!(f.ct_len(), 0, "nothing tracked from bad packets");
    });
}

/// Host processes' TC path (`--socket-lb=false`): a packet the node sends to a frontend, seen at
/// an external interface's egress, is DNATed to a backend, tracked as the host's (its answers go
/// to the stack, not redirected) and redirected where the routing table puts the backend; a
/// frontend without endpoints is answered with port unreachable into the node itself; a
/// backend the node has no forwarding route to is a counted drop; other traffic passes.
#[test]
fn host_packets_at_external_egress_are_balanced_and_answers_go_to_the_stack() {
    isolated(|| {
        // A route to this node's pods, as a node has (a veth pair stands in for their veths).
        for args in [
            &["link", "set", "lo", "up"][..],
            &[
                "link", "add", "pods0", "type", "veth", "peer", "name", "pods0p",
            ],
            &["addr", "add", "10.244.0.1/24", "dev", "pods0"],
            &["link", "set", "pods0p", "up"],
            &["link", "set", "pods0", "up"],
        ] {
            petrel_testbed::netns::ip(args);
        }
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").expect("forwarding on");
        let mut f = Fixture::new();
        let host = sa(NODE_IP, 40700);
        let vip = sa([10, 96, 0, 1], 80);
        let backend = sa([10, 244, 0, 3], 8080);
        let (verdict, output) = f.run_egress(&tcp(host, vip, SYN));
        assert_eq!(verdict, REDIRECT, "to the backend's interface");
        assert_eq!(packet::parse(&output), out(TCP, host, backend).unwrap());
        let fwd = f.ct(TCP, host, vip, CT_DIR_FORWARD).expect("forward entry");
        assert!(fwd.flags & CT_F_HOST != 0 && fwd.ifindex == 0, "{fwd:?}");
        // The backend's answer at its veth: from the VIP, to the stack (no redirect).
        let (verdict, output) = f.run(false, &tcp(backend, host, SYN | ACK));
        assert_eq!(verdict, OK);
        assert_eq!(packet::parse(&output), out(TCP, vip, host).unwrap());
        // The flow's next packet: same backend, no new connection.
        let (verdict, output) = f.run_egress(&tcp(host, vip, ACK));
        assert_eq!(verdict, REDIRECT);
        assert_eq!(packet::parse(&output), out(TCP, host, backend).unwrap());
        assert_eq!(f.stat("host_dnat"), 1);

        // No endpoint: port unreachable from the frontend, handed to the node's own ingress.
        let none = sa([10, 96, 0, 3], 80);
        let (verdict, output) = f.run_egress(&tcp(host, none, SYN));
        assert_eq!(verdict, REDIRECT);
        assert_eq!(
            packet::parse(&output),
            Parsed {
                proto: ICMP,
                src: sa([10, 96, 0, 3], 0),
                dst: sa(NODE_IP, 0),
                icmp: Some((3, 3, none)),
            }
        );
        // The only backend is beyond any route here: dropped and counted, never sent astray.
        let (verdict, _) = f.run_egress(&tcp(host, sa([10, 96, 0, 12], 80), SYN));
        assert_eq!(verdict, SHOT);
        assert_eq!(f.stat("drop_host_unroutable"), 1);
        // Not a frontend: untouched.
        let input = tcp(host, sa(EXT_CLIENT, 443), SYN);
        let (verdict, output) = f.run_egress(&input);
        assert_eq!((verdict, output), (OK, input));
    });
}
