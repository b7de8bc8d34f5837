//! The TC programs' packet parsers, in the kernel: each input is one packet run through one of
//! the four real TC programs with BPF_PROG_TEST_RUN, against real maps holding a fixed set of
//! services (as tests/e2e/tests/prog_test_run.rs sets them up). Needs root.
//!
//! Input: a selector byte, then the packet from its Ethernet header on. Selector bits 0-1: the
//! program (pod ingress, external ingress, pod egress, external egress); bit 2: make the IPv4
//! total length and the IPv4, TCP, UDP and ICMP checksums right before the run, so mutations get
//! past the length checks into the deeper paths.
//!
//! Checked: the run never fails; every verdict is one the program can return (ingress: OK, SHOT,
//! REDIRECT; egress: OK); the programs' error path (`drop_rewrite_error`) is never taken; a
//! packet with a valid IPv4 header checksum that passes leaves with a valid one.
//!
//! libFuzzer cannot see coverage inside the kernel: the datapath's own counters (which of
//! `STATS_V2` moved), the verdict and whether the packet was rewritten are fed back to it as
//! extra coverage, so inputs that reach a new datapath path are kept.
//!
//! The process runs in a network and mount namespace of its own with a fresh bpffs mounted over
//! /sys/fs/bpf there: the maps and programs vanish with the process, even when it crashes, and
//! the host's bpffs is never touched.
#![no_main]

use std::{
    cell::RefCell,
    net::{Ipv4Addr, SocketAddrV4},
    sync::atomic::{AtomicU8, Ordering},
};

use libfuzzer_sys::fuzz_target;
use petrel_common::stat;
use petrel_datapath::{
    BackendSpec, Datapath, DatapathConfig, Endpoint, Frontend, Proto, ServiceEntry, ServiceMaps,
    datapath::{
        PROG_TC_EXTERNAL_EGRESS, PROG_TC_EXTERNAL_INGRESS, PROG_TC_POD_EGRESS, PROG_TC_POD_INGRESS,
    },
    maps,
};

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

/// (program, verdicts it can return).
const PROGRAMS: [(&str, &[u32]); 4] = [
    (
        PROG_TC_POD_INGRESS,
        &[TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT],
    ),
    (
        PROG_TC_EXTERNAL_INGRESS,
        &[TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT],
    ),
    (PROG_TC_POD_EGRESS, &[TC_ACT_OK]),
    // Also the TC path of host processes: a drop (no route to the backend, a Local policy or
    // source range, a full conntrack), a redirect (to the backend's interface, or a refusal into
    // the node's own ingress).
    (
        PROG_TC_EXTERNAL_EGRESS,
        &[TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT],
    ),
];

/// Ethernet header; BPF_PROG_TEST_RUN refuses shorter skb inputs.
const ETH_HLEN: usize = 14;
/// A full Ethernet frame: what an interface hands the programs (the kernel's test-run limit is
/// about a page).
const MAX_FRAME: usize = 1514;

const NODE_IP: [u8; 4] = [10, 99, 0, 1];

/// Extra coverage for libFuzzer: (program, verdict, counter) and (program, verdict, rewrite).
const SLOTS_PER_VERDICT: usize = 64;
#[used]
#[unsafe(link_section = "__libfuzzer_extra_counters")]
static EXTRA_COUNTERS: [AtomicU8; 4 * 4 * SLOTS_PER_VERDICT] =
    [const { AtomicU8::new(0) }; 4 * 4 * SLOTS_PER_VERDICT];

struct State {
    dp: Datapath,
    maps: ServiceMaps,
}

thread_local! {
    static STATE: RefCell<Option<State>> = const { RefCell::new(None) };
}

/// A network and mount namespace of this thread's own, with a fresh bpffs on /sys/fs/bpf.
fn private_namespaces() {
    use nix::{
        mount::{MsFlags, mount},
        sched::{CloneFlags, unshare},
    };
    assert!(
        nix::unistd::geteuid().is_root(),
        "tc_packets needs root (BPF_PROG_TEST_RUN, namespaces, bpffs)"
    );
    unshare(CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWNS).expect("unshare net+mnt");
    // WARNING: private first, or the bpffs mount below would propagate to the host.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .expect("make mounts private");
    mount(
        Some("bpf"),
        "/sys/fs/bpf",
        Some("bpf"),
        MsFlags::empty(),
        None::<&str>,
    )
    .expect("mount a private bpffs");
}

fn sa(ip: [u8; 4], port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(ip), port)
}

fn fe(ip: [u8; 4], port: u16, proto: Proto) -> Frontend {
    Frontend {
        addr: Ipv4Addr::from(ip),
        port,
        proto,
    }
}

/// The datapath loaded with the services of prog_test_run.rs's fixture (every kind of frontend
/// and policy), masquerading on for 10.244.0.0/16 and a small conntrack map (so a long run also
/// reaches the full-map paths).
fn load() -> State {
    private_namespaces();
    let config = DatapathConfig {
        bpffs_root: "/sys/fs/bpf/petrel-fuzz".into(),
        maglev_size: 251,
        maglev_rings: 4,
        max_entries: vec![(maps::CONNTRACK, 4096), (maps::FRAGS, 256)],
    };
    let dp = Datapath::load(&config).expect("load the datapath (verifier)");
    let mut maps = dp.service_maps().expect("maps");
    maps.set_node_ip(Ipv4Addr::from(NODE_IP)).expect("node ip");
    maps.set_cluster_cidr(Some("10.244.0.0/16".parse().expect("cidr")))
        .expect("cluster cidr");
    let backends = [
        (1, sa([10, 244, 0, 3], 8080), Proto::Tcp, false),
        (2, sa([10, 244, 0, 4], 8080), Proto::Tcp, false),
        (3, sa([10, 244, 9, 9], 8080), Proto::Tcp, true),
        (4, sa([10, 244, 0, 3], 8053), Proto::Udp, false),
        (5, sa(NODE_IP, 8080), Proto::Tcp, false),
    ];
    for (id, addr, proto, remote) in backends {
        maps.upsert_backend(&BackendSpec {
            id,
            addr,
            proto,
            terminating: false,
            remote,
        })
        .expect("backend");
    }
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
        ServiceEntry {
            internal_local: true,
            ..ServiceEntry::new(
                fe([10, 96, 0, 9], 80, Proto::Tcp),
                9,
                vec![remote, Endpoint::ready(2)],
            )
        },
        ServiceEntry::new(
            fe([10, 96, 0, 10], 53, Proto::Udp),
            11,
            vec![Endpoint::ready(4)],
        ),
        // A host-network backend behind a NodePort (the external egress program's case).
        ServiceEntry {
            external: true,
            ..ServiceEntry::new(fe(NODE_IP, 30082, Proto::Tcp), 12, vec![Endpoint::ready(5)])
        },
        // A LoadBalancer IP with source ranges.
        ServiceEntry {
            external: true,
            source_ranges: vec!["10.99.0.0/24".parse().expect("range")],
            ..ServiceEntry::new(
                fe([203, 0, 113, 10], 80, Proto::Tcp),
                20,
                vec![Endpoint::ready(1)],
            )
        },
    ];
    for e in &entries {
        maps.upsert_service(e).expect("service");
    }
    State { dp, maps }
}

fn sum(bytes: &[u8], mut acc: u32) -> u32 {
    for c in bytes.chunks(2) {
        acc += u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)]));
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// The IPv4 header (offset, length) when the frame carries one that fits.
fn ipv4_header(p: &[u8]) -> Option<(usize, usize)> {
    if p.len() < ETH_HLEN + 20 || p[12..14] != [0x08, 0x00] || p[ETH_HLEN] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(p[ETH_HLEN] & 0x0f) * 4;
    (ihl >= 20 && ETH_HLEN + ihl <= p.len()).then_some((ETH_HLEN, ihl))
}

fn ipv4_checksum_ok(p: &[u8]) -> Option<bool> {
    let (off, ihl) = ipv4_header(p)?;
    Some(fold(sum(&p[off..off + ihl], 0)) == 0)
}

/// Total length, IPv4 header checksum and (unfragmented) TCP/UDP/ICMP checksums made right.
fn fix_up(p: &mut [u8]) {
    let Some((off, ihl)) = ipv4_header(p) else {
        return;
    };
    let total = p.len() - off;
    let Ok(total16) = u16::try_from(total) else {
        return;
    };
    p[off + 2..off + 4].copy_from_slice(&total16.to_be_bytes());
    p[off + 10..off + 12].copy_from_slice(&[0, 0]);
    let c = fold(sum(&p[off..off + ihl], 0));
    p[off + 10..off + 12].copy_from_slice(&c.to_be_bytes());

    let frag = u16::from_be_bytes([p[off + 6], p[off + 7]]);
    if frag & 0x3fff != 0 {
        return; // a fragment: its L4 checksum covers the whole datagram
    }
    let proto = p[off + 9];
    let l4 = off + ihl;
    let l4_len = p.len() - l4;
    let at = match proto {
        6 if l4_len >= 20 => 16,
        17 if l4_len >= 8 => 6,
        1 if l4_len >= 8 => 2,
        _ => return,
    };
    p[l4 + at..l4 + at + 2].copy_from_slice(&[0, 0]);
    let mut acc = 0;
    if proto != 1 {
        acc = sum(&p[off + 12..off + 20], acc);
        acc += u32::from(proto) + l4_len as u32;
    }
    let c = fold(sum(&p[l4..], acc));
    p[l4 + at..l4 + at + 2].copy_from_slice(&c.to_be_bytes());
}

fn bump(slot: usize, delta: u64) {
    let v = u8::try_from(delta).unwrap_or(u8::MAX).max(1);
    EXTRA_COUNTERS[slot].store(v, Ordering::Relaxed);
}

fn run(state: &mut State, data: &[u8]) {
    let Some((&selector, packet)) = data.split_first() else {
        return;
    };
    if !(ETH_HLEN..=MAX_FRAME).contains(&packet.len()) {
        return;
    }
    // BPF_PROG_TEST_RUN refuses (EINVAL) an IPv4 or IPv6 frame too short for its network header
    // (seen on 6.18): the programs' own handling of such runts cannot be run this way.
    let l3_min = match packet[12..14] {
        [0x08, 0x00] => 20,
        [0x86, 0xdd] => 40,
        _ => 0,
    };
    if packet.len() < ETH_HLEN + l3_min {
        return;
    }
    let prog = usize::from(selector & 3);
    let (name, verdicts) = PROGRAMS[prog];
    let mut packet = packet.to_vec();
    if selector & 4 != 0 {
        fix_up(&mut packet);
    }

    let before = state.maps.stats().expect("read STATS_V2");
    let (verdict, output) = state
        .dp
        .test_run_tc_program(name, &packet)
        .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN of {name} failed: {e:?}"));
    let after = state.maps.stats().expect("read STATS_V2");

    let verdict_slot = match verdict {
        TC_ACT_OK => 0,
        TC_ACT_SHOT => 1,
        TC_ACT_REDIRECT => 2,
        _ => 3,
    };
    let base = (prog * 4 + verdict_slot) * SLOTS_PER_VERDICT;
    for (i, ((name, a), (_, b))) in before.iter().zip(&after).enumerate() {
        let delta = b.wrapping_sub(*a);
        if delta != 0 && *name != stat::NAMES[stat::TC_SEEN as usize] {
            bump(base + i.min(SLOTS_PER_VERDICT - 3), delta);
        }
    }
    if output != packet {
        bump(base + SLOTS_PER_VERDICT - 2, 1);
    }
    if output.len() != packet.len() {
        bump(base + SLOTS_PER_VERDICT - 1, 1);
    }

    assert!(
        verdicts.contains(&verdict),
        "{name} returned verdict {verdict}, not one of {verdicts:?}"
    );
    let errors =
        after[stat::DROP_REWRITE_ERROR as usize].1 - before[stat::DROP_REWRITE_ERROR as usize].1;
    assert_eq!(errors, 0, "{name} took its error path (drop_rewrite_error)");
    if verdict != TC_ACT_SHOT && ipv4_checksum_ok(&packet) == Some(true) {
        assert_ne!(
            ipv4_checksum_ok(&output),
            Some(false),
            "{name} left a bad IPv4 header checksum (verdict {verdict})"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        let state = s.get_or_insert_with(load);
        run(state, data);
    });
});
