//! The collector's rules, one test each, on fake maps.

use petrel_common::{
    AFFINITY_CLIENT_IP, CT_SEEN_ACK, CT_SEEN_PKT, CT_SEEN_RST, CT_SEEN_SYN, IPPROTO_TCP,
    SCOPE_EXTERNAL,
};

use super::*;
use crate::maps::{FakeMaps, FaultyMaps};

const NOW: u32 = 100_000;
const NOW_NS: u64 = NOW as u64 * 1_000_000_000;
const L: CtLifetimes = CtLifetimes::DEFAULT;

fn ip(last: u8) -> u32 {
    u32::from_ne_bytes([10, 0, 0, last])
}

/// A service flow as the datapath stores it: client 10.0.0.<c>:<cport> to frontend
/// 10.96.0.1:80 (reverse-NAT id `rev`), sent to backend `id` at 10.0.0.<b>:8080.
#[derive(Clone, Copy)]
struct Flow {
    proto: u8,
    client: u8,
    cport: u16,
    backend: u8,
    id: u32,
    rev: u32,
    /// Expiry (seconds from NOW) and seen bits of each direction.
    fwd: (i32, u8),
    reply: (i32, u8),
}

const FRONTEND: [u8; 4] = [10, 96, 0, 1];

fn flow(client: u8, cport: u16) -> Flow {
    Flow {
        proto: IPPROTO_TCP,
        client,
        cport,
        backend: 100,
        id: 1,
        rev: 7,
        fwd: (3600, CT_SEEN_PKT | CT_SEEN_SYN | CT_SEEN_ACK),
        reply: (3600, CT_SEEN_PKT | CT_SEEN_SYN | CT_SEEN_ACK),
    }
}

impl Flow {
    fn entries(&self) -> [(CtKey, CtValue); 2] {
        let key = CtKey {
            saddr_be: ip(self.client),
            daddr_be: u32::from_ne_bytes(FRONTEND),
            sport_be: self.cport.to_be(),
            dport_be: 80u16.to_be(),
            proto: self.proto,
            dir: CT_DIR_FORWARD,
            _pad: [0; 2],
        };
        let fwd = CtValue {
            src_addr_be: key.saddr_be,
            src_port_be: key.sport_be,
            dst_addr_be: ip(self.backend),
            dst_port_be: 8080u16.to_be(),
            backend_id: self.id,
            rev_nat_id: self.rev,
            expires_s: NOW.wrapping_add_signed(self.fwd.0),
            seen: self.fwd.1,
            ..Default::default()
        };
        let reply = CtValue {
            src_addr_be: key.daddr_be,
            src_port_be: key.dport_be,
            dst_addr_be: key.saddr_be,
            dst_port_be: key.sport_be,
            expires_s: NOW.wrapping_add_signed(self.reply.0),
            seen: self.reply.1,
            ..fwd
        };
        [(key, fwd), (fwd.partner(&key), reply)]
    }
}

/// Maps with backend 1 at 10.0.0.100:8080 (TCP and UDP both use it here) in the slots of the
/// service with reverse-NAT id 7 (10.96.0.1:80).
fn maps() -> FakeMaps {
    let mut m = FakeMaps::new();
    m.backends.insert(
        1,
        Backend {
            addr_be: ip(100),
            port_be: 8080u16.to_be(),
            proto: IPPROTO_TCP,
            flags: 0,
        },
    );
    m.rev_nat.insert(
        7,
        RevNat {
            addr_be: u32::from_ne_bytes(FRONTEND),
            port_be: 80u16.to_be(),
            _pad: [0; 2],
        },
    );
    set_slots(&mut m, &[1], Some(30));
    m
}

fn set_slots(m: &mut FakeMaps, ids: &[u32], affinity_s: Option<u32>) {
    let key = |slot: u16| ServiceKey {
        addr_be: u32::from_ne_bytes(FRONTEND),
        port_be: 80u16.to_be(),
        slot,
        proto: IPPROTO_TCP,
        scope: SCOPE_EXTERNAL,
        _pad: [0; 2],
    };
    m.services.retain(|k, _| k.slot == 0);
    let master = ServiceValue {
        rev_nat_id: 7,
        count: ids.len() as u16,
        flags: if affinity_s.is_some() {
            SVC_F_AFFINITY
        } else {
            0
        },
        affinity_timeout_s: affinity_s.unwrap_or(0),
        ..Default::default()
    };
    m.services.insert(key(0), master);
    for (i, id) in ids.iter().enumerate() {
        let v = ServiceValue {
            backend_id: *id,
            ..master
        };
        m.services.insert(key(i as u16 + 1), v);
    }
}

fn tables(m: &FakeMaps) -> Tables {
    Tables::new(
        m.backends().unwrap(),
        m.rev_nats().unwrap(),
        &m.services().unwrap(),
    )
}

/// (reason, client port) of each deletion, sorted.
fn decided(m: &FakeMaps, flows: &[Flow], capacity: usize) -> Vec<(Reason, u16, usize)> {
    let entries: Vec<(CtKey, CtValue)> = flows.iter().flat_map(Flow::entries).collect();
    let plan = plan_ct(&entries, &tables(m), NOW, capacity, &L);
    let mut out: Vec<(Reason, u16, usize)> = plan
        .deletions
        .iter()
        .map(|d| {
            let (k, v) = d.entries[0];
            let port = if k.dir == CT_DIR_FORWARD {
                k.sport_be
            } else {
                v.dst_port_be
            };
            (d.reason, u16::from_be(port), d.entries.len())
        })
        .collect();
    out.sort();
    out
}

const BIG: usize = 1 << 20;

#[test]
fn a_connection_goes_when_both_directions_expired_or_a_reset_ran_out() {
    let m = maps();
    let flows = [
        flow(1, 1001),
        Flow {
            fwd: (-1, CT_SEEN_ACK),
            reply: (0, CT_SEEN_ACK),
            ..flow(1, 1002)
        },
        // One direction still alive: kept.
        Flow {
            fwd: (-5, CT_SEEN_ACK),
            ..flow(1, 1003)
        },
        Flow {
            fwd: (-1, CT_SEEN_RST | CT_SEEN_ACK),
            ..flow(1, 1004)
        },
    ];
    assert_eq!(
        decided(&m, &flows, BIG),
        [(Reason::Expired, 1002, 2), (Reason::Expired, 1004, 2)]
    );
}

#[test]
fn a_lone_entry_goes_once_it_is_older_than_the_grace_period() {
    let m = maps();
    let [old_fwd, _] = Flow {
        // Its last packet 20 s ago: established lifetime minus 20 s left.
        fwd: (L.tcp_established as i32 - 20, CT_SEEN_ACK),
        ..flow(1, 1001)
    }
    .entries();
    // Just claimed (the datapath inserts the reply entry first): left alone.
    let [_, young_reply] = Flow {
        reply: (L.tcp_syn as i32, 0),
        ..flow(1, 1002)
    }
    .entries();
    let [_, old_reply] = Flow {
        reply: (L.tcp_syn as i32 - 11, 0),
        ..flow(1, 1003)
    }
    .entries();
    let plan = plan_ct(
        &[old_fwd, young_reply, old_reply],
        &tables(&m),
        NOW,
        BIG,
        &L,
    );
    let gone: Vec<(Reason, Vec<CtKey>)> = plan
        .deletions
        .iter()
        .map(|d| (d.reason, d.entries.iter().map(|e| e.0).collect()))
        .collect();
    assert_eq!(
        gone,
        [
            (Reason::Orphan, vec![old_fwd.0]),
            (Reason::Orphan, vec![old_reply.0])
        ]
    );
}

#[test]
fn a_connection_goes_when_its_backend_is_gone_or_moved() {
    let mut m = maps();
    // Backend 2 was removed; backend 1 now has another address than flow 1003 was sent to.
    let flows = [
        flow(1, 1001),
        Flow {
            id: 2,
            ..flow(1, 1002)
        },
        Flow {
            backend: 101,
            ..flow(1, 1003)
        },
    ];
    assert_eq!(
        decided(&m, &flows, BIG),
        [
            (Reason::BackendGone, 1002, 2),
            (Reason::BackendGone, 1003, 2)
        ]
    );
    m.backends.clear();
    assert_eq!(
        decided(&m, &flows[..1], BIG),
        [(Reason::BackendGone, 1001, 2)]
    );
}

#[test]
fn a_connection_goes_when_its_service_is_gone_or_the_id_names_another_frontend() {
    let mut m = maps();
    let flows = [
        flow(1, 1001),
        Flow {
            rev: 8,
            ..flow(1, 1002)
        },
    ];
    assert_eq!(decided(&m, &flows, BIG), [(Reason::ServiceGone, 1002, 2)]);
    m.rev_nat.get_mut(&7).unwrap().port_be = 81u16.to_be();
    assert_eq!(
        decided(&m, &flows[..1], BIG),
        [(Reason::ServiceGone, 1001, 2)]
    );
}

#[test]
fn a_udp_flow_goes_when_its_backend_left_the_service_and_tcp_stays() {
    let mut m = maps();
    // Backend 1 still exists (another service may use it) but is in no slot of service 7.
    set_slots(&mut m, &[], None);
    let flows = [
        flow(1, 1001),
        Flow {
            proto: IPPROTO_UDP,
            fwd: (30, CT_SEEN_PKT),
            reply: (30, CT_SEEN_PKT),
            ..flow(1, 1002)
        },
    ];
    assert_eq!(decided(&m, &flows, BIG), [(Reason::BackendLeft, 1002, 2)]);
    // A read of the slots from before the sweep that still had it keeps it: a backend that
    // only moved between slots is not taken for one that left.
    let before = {
        let mut b = maps();
        set_slots(&mut b, &[1], None);
        b.services().unwrap()
    };
    let mut t = tables(&m);
    t.add_members(&before);
    let entries: Vec<_> = flows.iter().flat_map(Flow::entries).collect();
    assert!(plan_ct(&entries, &t, NOW, BIG, &L).deletions.is_empty());
}

#[test]
fn under_pressure_unreplied_connections_go_soonest_expiring_first_and_replied_ones_never() {
    let m = maps();
    let unreplied = |port: u16, left: i32| Flow {
        fwd: (left, CT_SEEN_PKT | CT_SEEN_SYN),
        reply: (left, 0),
        ..flow(2, port)
    };
    // 10 connections = 20 entries.
    let mut flows: Vec<Flow> = (0..6).map(|i| flow(1, 1000 + i)).collect();
    flows.extend([
        unreplied(2001, 50),
        unreplied(2002, 10),
        unreplied(2003, 30),
        unreplied(2004, 20),
    ]);
    // 20 of 22 entries (91%): down to at most 80% (17.6 entries): two pairs go.
    assert_eq!(
        decided(&m, &flows, 22),
        [(Reason::Pressure, 2002, 2), (Reason::Pressure, 2004, 2)]
    );
    // 20 of 23 (87%): below the mark, nothing goes.
    assert!(decided(&m, &flows, 23).is_empty());
    // A full map of replied connections: nothing goes, even at 100%.
    assert!(decided(&m, &flows[..6], 12).is_empty());
    // Other removals count first: with an expired pair gone, 18 of 22 (82%) is below the mark.
    flows[0].fwd.0 = -1;
    flows[0].reply.0 = -1;
    assert_eq!(decided(&m, &flows, 22), [(Reason::Expired, 1000, 2)]);
}

#[test]
fn past_half_full_closed_connections_lose_their_time_wait_longest_idle_first() {
    let m = maps();
    let all = CT_SEEN_PKT | CT_SEEN_SYN | CT_SEEN_ACK;
    // Closed by a FIN each way; `left` seconds of its 60 s TIME_WAIT to go.
    let closed = |port: u16, left: i32| Flow {
        fwd: (left, all | CT_SEEN_FIN),
        reply: (left, all | CT_SEEN_FIN),
        ..flow(2, port)
    };
    let half_closed = Flow {
        reply: (30, all),
        ..closed(3001, 30)
    };
    let mut flows: Vec<Flow> = (0..2).map(|i| flow(1, 1000 + i)).collect();
    flows.extend([
        closed(2001, 40), // idle 20 s
        closed(2002, 10), // idle 50 s
        closed(2003, 55), // idle 5 s: within the closing lifetime, kept
        closed(2004, 30), // idle 30 s
        half_closed,      // a FIN one way only: open, never taken
    ]);
    // 14 entries in 20 (70%): down to at most 50% (10 entries): the two longest idle go.
    assert_eq!(
        decided(&m, &flows, 20),
        [(Reason::Pressure, 2002, 2), (Reason::Pressure, 2004, 2)]
    );
    // Half full or less: every closed connection keeps its TIME_WAIT.
    assert!(decided(&m, &flows, 28).is_empty());
    // However full: the recently closed one, the half-closed and the open ones stay.
    assert_eq!(
        decided(&m, &flows, 14),
        [
            (Reason::Pressure, 2001, 2),
            (Reason::Pressure, 2002, 2),
            (Reason::Pressure, 2004, 2)
        ]
    );
}

#[test]
fn duplicates_from_a_restarted_iteration_count_once() {
    let m = maps();
    let mut entries: Vec<_> = Flow {
        fwd: (-1, CT_SEEN_ACK),
        reply: (-1, CT_SEEN_ACK),
        ..flow(1, 1001)
    }
    .entries()
    .to_vec();
    entries.extend(entries.clone());
    let plan = plan_ct(&entries, &tables(&m), NOW, BIG, &L);
    assert_eq!((plan.entries, plan.removed()), (2, 2));
}

fn store_with(flows: &[Flow]) -> FakeMaps {
    let mut m = maps();
    for f in flows {
        m.ct.extend(f.entries());
    }
    m
}

#[test]
fn a_sweep_removes_pairs_forward_first_and_counts_by_reason() {
    let flows = [
        flow(1, 1001),
        Flow {
            fwd: (-1, CT_SEEN_ACK),
            reply: (-1, CT_SEEN_ACK),
            ..flow(1, 1002)
        },
        Flow {
            id: 9,
            ..flow(1, 1003)
        },
    ];
    let mut m = store_with(&flows);
    m.ct_capacity = 100;
    let r = sweep(&mut m, NOW_NS).expect("sweep");
    assert_eq!((r.entries, r.remaining, r.capacity), (6, 2, 100));
    assert_eq!(
        r.removed,
        BTreeMap::from([(Reason::Expired, 2), (Reason::BackendGone, 2)])
    );
    assert_eq!(m.ct.len(), 2);
    let dels: Vec<&String> = m.writes.iter().filter(|w| w.starts_with("CT")).collect();
    assert_eq!(dels.len(), 4);
    for pair in dels.chunks(2) {
        assert!(
            pair[0].contains("dir: 0") && pair[1].contains("dir: 1"),
            "{pair:?}"
        );
    }
    assert!((r.fill() - 0.02).abs() < 1e-9);
}

#[test]
fn an_entry_refreshed_or_replaced_since_the_read_is_kept() {
    let expired = Flow {
        fwd: (-1, CT_SEEN_ACK),
        reply: (-1, CT_SEEN_ACK),
        ..flow(1, 1001)
    };
    let gone = Flow {
        id: 9,
        ..flow(1, 1002)
    };
    let mut m = store_with(&[expired, gone]);
    let entries = m.ct_entries(BIG).unwrap();
    let plan = plan_ct(&entries, &tables(&m), NOW, BIG, &L);
    assert_eq!(plan.deletions.len(), 2);
    // Meanwhile a packet refreshes the expired connection, and the backend-gone one gets one
    // too (that does not save it: its backend stays gone).
    for f in [expired, gone] {
        let [(k, v), _] = f.entries();
        m.ct.insert(
            k,
            CtValue {
                expires_s: NOW + 60,
                ..v
            },
        );
    }
    let mut r = SweepReport::default();
    apply_ct(&mut m, &plan, &mut r).expect("apply");
    assert_eq!(r.skipped, 1);
    assert_eq!(r.removed, BTreeMap::from([(Reason::BackendGone, 2)]));
    assert_eq!(m.ct.len(), 2);
}

#[test]
fn a_replied_connection_is_not_taken_for_room() {
    let unreplied = Flow {
        fwd: (30, CT_SEEN_SYN),
        reply: (30, 0),
        ..flow(1, 1001)
    };
    let mut m = store_with(&[unreplied]);
    let entries = m.ct_entries(BIG).unwrap();
    let plan = plan_ct(&entries, &tables(&m), NOW, 2, &L);
    assert_eq!(plan.deletions[0].reason, Reason::Pressure);
    // The answer arrives between the read and the removal.
    let [_, (rk, rv)] = unreplied.entries();
    m.ct.insert(
        rk,
        CtValue {
            seen: CT_SEEN_PKT | CT_SEEN_SYN | CT_SEEN_ACK,
            ..rv
        },
    );
    let mut r = SweepReport::default();
    apply_ct(&mut m, &plan, &mut r).expect("apply");
    assert_eq!((r.skipped, m.ct.len()), (1, 2));
}

#[test]
fn an_orphan_whose_partner_appeared_meanwhile_is_kept() {
    let f = Flow {
        fwd: (L.tcp_established as i32 - 20, CT_SEEN_ACK),
        ..flow(1, 1001)
    };
    let [fwd, reply] = f.entries();
    let mut m = maps();
    m.ct.insert(fwd.0, fwd.1);
    let plan = plan_ct(&[fwd], &tables(&m), NOW, BIG, &L);
    assert_eq!(plan.deletions[0].reason, Reason::Orphan);
    m.ct.insert(reply.0, reply.1);
    let mut r = SweepReport::default();
    apply_ct(&mut m, &plan, &mut r).expect("apply");
    assert_eq!((r.skipped, m.ct.len()), (1, 2));
}

fn affinity(client: u8, rev: u32, backend_id: u32, idle_s: u64) -> (AffinityKey, AffinityValue) {
    (
        AffinityKey {
            client: u64::from(ip(client)),
            rev_nat_id: rev,
            kind: AFFINITY_CLIENT_IP,
            _pad: [0; 3],
        },
        AffinityValue {
            last_used_ns: NOW_NS - idle_s * 1_000_000_000,
            backend_id,
            pos: 0,
        },
    )
}

#[test]
fn affinity_goes_when_expired_its_backend_left_or_its_service_lost_affinity() {
    let mut m = maps();
    m.backends.insert(
        2,
        Backend {
            addr_be: ip(102),
            ..m.backends[&1]
        },
    );
    // Service 7 (30 s affinity) has backend 1 in its slots; backend 2 exists but is not in
    // them; service 8 is gone.
    let entries = [
        affinity(1, 7, 1, 10),
        affinity(2, 7, 1, 31),
        affinity(3, 7, 2, 1),
        affinity(4, 8, 1, 1),
        affinity(5, 7, 3, 1),
    ];
    let plan = plan_affinity(&entries, &tables(&m), NOW_NS);
    let got: Vec<(u8, Reason)> = plan
        .iter()
        .map(|(k, _, r)| ((k.client as u32).to_ne_bytes()[3], *r))
        .collect();
    assert_eq!(
        got,
        [
            (2, Reason::AffinityExpired),
            (3, Reason::AffinityBackendGone),
            (5, Reason::AffinityBackendGone),
            (4, Reason::AffinityServiceGone),
        ]
    );
    // Affinity turned off for service 7: every entry of it goes.
    set_slots(&mut m, &[1], None);
    let plan = plan_affinity(&entries[..1], &tables(&m), NOW_NS);
    assert_eq!(plan[0].2, Reason::AffinityServiceGone);
    // An entry used after the clock was read is not expired.
    let (k, mut v) = affinity(1, 7, 1, 0);
    v.last_used_ns = NOW_NS + 5;
    set_slots(&mut m, &[1], Some(30));
    assert!(plan_affinity(&[(k, v)], &tables(&m), NOW_NS).is_empty());
}

#[test]
fn a_sweep_removes_affinity_unless_used_since() {
    let mut m = maps();
    let stale = affinity(2, 7, 1, 31);
    let left = affinity(3, 7, 2, 1);
    m.affinity.extend([affinity(1, 7, 1, 1), stale, left]);
    let plan = plan_affinity(&m.affinity_entries(BIG).unwrap(), &tables(&m), NOW_NS);
    assert_eq!(plan.len(), 2);
    // The stale client comes back before the removal.
    m.affinity.insert(
        stale.0,
        AffinityValue {
            last_used_ns: NOW_NS,
            ..stale.1
        },
    );
    let mut r = SweepReport::default();
    apply_affinity(&mut m, &plan, &mut r).expect("apply");
    assert_eq!(r.skipped, 1);
    assert_eq!(
        r.removed,
        BTreeMap::from([(Reason::AffinityBackendGone, 1)])
    );
    assert_eq!(m.affinity.len(), 2);
}

#[test]
fn a_failed_removal_is_reported() {
    let expired = Flow {
        fwd: (-1, CT_SEEN_ACK),
        reply: (-1, CT_SEEN_ACK),
        ..flow(1, 1001)
    };
    let mut m = FaultyMaps::new(store_with(&[expired]), 1);
    let e = sweep(&mut m, NOW_NS).expect_err("the first removal fails");
    assert!(e.to_string().contains("CT_V2"), "{e}");
    // The next sweep finishes the job.
    sweep(&mut m, NOW_NS).expect("second sweep");
    assert!(m.inner.ct.is_empty());
}

#[test]
fn the_interval_shrinks_under_load_and_grows_when_idle_within_its_bounds() {
    let b = IntervalBounds::up_to(Duration::from_secs(300));
    assert_eq!(b.initial(), Duration::from_secs(60));
    let report = |entries: usize, removed: usize, capacity: usize| SweepReport {
        entries,
        remaining: entries - removed,
        capacity,
        removed: BTreeMap::from([(Reason::Expired, removed)]),
        ..Default::default()
    };
    let s = |n| Duration::from_secs(n);
    // Half the entries removed: half the interval.
    assert_eq!(next_interval(s(60), &report(1000, 500, 100_000), b), s(30));
    // 90% full before the sweep: a tenth.
    assert_eq!(next_interval(s(60), &report(90_000, 0, 100_000), b), s(6));
    // Idle: 1.5x, up to the maximum.
    assert_eq!(next_interval(s(60), &report(1000, 10, 100_000), b), s(90));
    assert_eq!(next_interval(s(250), &report(0, 0, 100_000), b), s(300));
    // In between: unchanged; never below the minimum.
    assert_eq!(next_interval(s(60), &report(1000, 100, 100_000), b), s(60));
    assert_eq!(
        next_interval(s(6), &report(99_000, 0, 100_000), b),
        MIN_INTERVAL
    );
    // A maximum below the minimum wins.
    let tight = IntervalBounds::up_to(s(2));
    assert_eq!(next_interval(s(2), &report(0, 0, 10), tight), s(2));
}
