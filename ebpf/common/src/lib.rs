#![no_std]
//! Types shared by petrel's eBPF programs and userspace.
//!
//! Rules (see STYLE.md): `#[repr(C)]`, `Copy`, fixed-width integers only, explicit padding so hash
//! keys never carry uninitialised bytes, sizes locked by `const` assertions and golden-bytes
//! tests. Fields ending in `_be` hold network byte order exactly as on the wire, so the packet
//! path compares header bytes without swapping; userspace converts in one place
//! (`petrel::maps`).
//!
//! The service layout follows Cilium's `lb4_key`/`lb4_service` split: one hash map keyed by
//! (VIP, port, protocol, scope, slot). Slot 0 is the service's master entry (backend count,
//! reverse-NAT id, flags); slots 1..=count name a backend id. Backends live in their own map, so a
//! backend shared by many services is written once.

use core::mem::size_of;

/// Version suffix of every pinned map name. A layout change is a new version plus a migration,
/// never a silent reinterpretation of old bytes.
pub const MAP_VERSION: &str = "v1";

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// `ServiceKey::scope` for lookups made on behalf of traffic from outside the node.
pub const SCOPE_EXTERNAL: u8 = 0;
/// `ServiceKey::scope` for in-cluster traffic when the service has a separate internal view
/// (internalTrafficPolicy / externalTrafficPolicy Local keep two backend sets).
pub const SCOPE_INTERNAL: u8 = 1;

/// Key of the SERVICES map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ServiceKey {
    pub addr_be: u32,
    pub port_be: u16,
    /// 0: master entry; 1..=count: backend slots.
    pub slot: u16,
    pub proto: u8,
    pub scope: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<ServiceKey>() == 12);

/// `ServiceValue::flags`: sessionAffinity ClientIP (`affinity_timeout_s` holds the timeout).
pub const SVC_F_AFFINITY: u16 = 1 << 0;
/// `ServiceValue::flags` (scope 0 master): in-cluster traffic uses the SCOPE_INTERNAL entries.
pub const SVC_F_TWO_SCOPES: u16 = 1 << 1;
/// `ServiceValue::flags`: NodePort / externalIP / LoadBalancer frontend, reachable from outside.
pub const SVC_F_EXTERNAL: u16 = 1 << 2;
/// `ServiceValue::flags`: externalTrafficPolicy Local: external traffic keeps its client address
/// (never SNATed) and only goes to node-local backends.
pub const SVC_F_LOCAL_EXTERNAL: u16 = 1 << 3;
/// `ServiceValue::flags`: pick backends with the Maglev ring `maglev_ring`.
pub const SVC_F_MAGLEV: u16 = 1 << 4;
/// `ServiceValue::flags`: this scope is filtered by a Local traffic policy; when it has no
/// backend, drop (as kube-proxy does) instead of rejecting.
pub const SVC_F_DROP_EMPTY: u16 = 1 << 5;

/// Value of the SERVICES map. In the master entry (slot 0) `backend_id` is unused and `count`
/// is the number of slots; in a slot entry `backend_id` names the backend and the rest is copied
/// from the master for debugging.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServiceValue {
    pub backend_id: u32,
    /// Identifies the frontend: key of REV_NAT, part of the affinity key.
    pub rev_nat_id: u32,
    pub count: u16,
    pub flags: u16,
    pub affinity_timeout_s: u32,
    /// Index of this service's ring in MAGLEV (when SVC_F_MAGLEV).
    pub maglev_ring: u32,
}
const _: () = assert!(size_of::<ServiceValue>() == 20);

/// `Backend::flags`: the endpoint is terminating (serving), used only as a fallback.
pub const BACKEND_F_TERMINATING: u8 = 1 << 0;
/// `Backend::flags`: the endpoint lives on another node: external traffic to it (policy
/// Cluster) is SNATed to the node address so replies come back through this node.
pub const BACKEND_F_REMOTE: u8 = 1 << 1;

/// Value of the BACKENDS map (key: backend id, u32, never 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Backend {
    pub addr_be: u32,
    pub port_be: u16,
    pub proto: u8,
    pub flags: u8,
}
const _: () = assert!(size_of::<Backend>() == 8);

/// Value of the REV_NAT map (key: rev_nat_id): the frontend a reply must appear to come from.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RevNat {
    pub addr_be: u32,
    pub port_be: u16,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<RevNat>() == 8);

/// Key of the CONNTRACK map (the flow as it arrived, before any NAT) and of REV_CT (a reply as
/// the backend sends it).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct CtKey {
    pub saddr_be: u32,
    pub daddr_be: u32,
    pub sport_be: u16,
    pub dport_be: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<CtKey>() == 16);

/// `CtValue::flags`: the source was rewritten to `nat_addr_be:nat_port_be`.
pub const CT_F_SNAT: u16 = 1 << 0;
/// `CtValue::flags`: the source was rewritten to the node's own address (routed by the program,
/// since the stack would drop a packet with a local source arriving from outside).
pub const CT_F_NODE_SNAT: u16 = 1 << 1;
/// `CtValue::flags`: pod egress masqueraded to the node address (no service, no backend): in
/// CONNTRACK `nat_*` is the node address and port it goes out with; in REV_CT the pod it came
/// from.
pub const CT_F_MASQ: u16 = 1 << 2;
/// `CtValue::flags` (CONNTRACK only): a flow that came from outside the cluster CIDR to a pod
/// (another node's SNATed NodePort traffic, a host-network client elsewhere). The key is the
/// pod's reply, which must leave untouched: masquerading only applies to flows pods start.
pub const CT_F_INBOUND: u16 = 1 << 3;

/// Value of CONNTRACK and REV_CT. In CONNTRACK, `nat_*` is the source the packets are rewritten
/// to (SNAT, hairpin); in REV_CT it is the original client, which replies are sent back to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CtValue {
    pub backend_id: u32,
    pub rev_nat_id: u32,
    pub nat_addr_be: u32,
    pub nat_port_be: u16,
    pub flags: u16,
    /// The interface the flow came in on. Replies are redirected out of it (bpf_redirect_neigh)
    /// after reverse NAT: their new source may be the node's own address (NodePort), which the
    /// routing input path would drop as a martian.
    pub ifindex: u32,
}
const _: () = assert!(size_of::<CtValue>() == 20);

/// `AffinityKey::kind`: the client is an IPv4 address (TC path).
pub const AFFINITY_CLIENT_IP: u8 = 0;
/// `AffinityKey::kind`: the client is a network namespace cookie (socket path, where the source
/// address is not known yet at connect()).
pub const AFFINITY_NETNS: u8 = 1;

/// Key of the AFFINITY map (sessionAffinity ClientIP).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct AffinityKey {
    pub client: u64,
    pub rev_nat_id: u32,
    pub kind: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<AffinityKey>() == 16);

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AffinityValue {
    pub last_used_ns: u64,
    pub backend_id: u32,
    pub _pad: [u8; 4],
}
const _: () = assert!(size_of::<AffinityValue>() == 16);

/// Key of the socket-LB maps: a socket and an address. In SOCK_REVNAT the address is the backend
/// the socket was sent to (value: the frontend to show the application); in SOCK_CT it is the
/// frontend (value: the backend chosen for that socket).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SockKey {
    pub cookie: u64,
    pub addr_be: u32,
    pub port_be: u16,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<SockKey>() == 16);

/// Value of SOCK_REVNAT and SOCK_CT.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SockValue {
    pub addr_be: u32,
    pub port_be: u16,
    pub _pad: [u8; 2],
    pub backend_id: u32,
}
const _: () = assert!(size_of::<SockValue>() == 12);

/// Bob Jenkins' lookup3 final mix (jhash_3words, as the kernel and Katran use it): the flow hash
/// behind Maglev. One definition for the datapath and for userspace (netctl explain, tests).
#[inline(always)]
pub fn jhash_3words(a: u32, b: u32, c: u32, initval: u32) -> u32 {
    let iv = initval.wrapping_add(0xdeadbeef).wrapping_add(3 << 2);
    let (mut a, mut b, mut c) = (a.wrapping_add(iv), b.wrapping_add(iv), c.wrapping_add(iv));
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(14));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(11));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(25));
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(16));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(4));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(14));
    c ^= b;
    c.wrapping_sub(b.rotate_left(24))
}

// FNV-1a 64: a hash that is stable across releases and machines (the standard library's hasher
// is not). petrel derives persistent names from it (host interface names of pods, Maglev
// permutations), so its output must never change.
const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a 64 of `bytes`.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    fnv1a64_seeded(bytes, 0)
}

/// FNV-1a 64 with the offset basis perturbed by `seed` (seed 0 is plain FNV-1a), for the
/// independent hash functions Maglev needs.
pub fn fnv1a64_seeded(bytes: &[u8], seed: u64) -> u64 {
    let mut h = FNV_OFFSET_BASIS ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// The Maglev flow hash of a client tuple (network-order values as raw integers).
#[inline(always)]
pub fn flow_hash(saddr_be: u32, sport_be: u16, dport_be: u16, proto: u8) -> u32 {
    jhash_3words(
        saddr_be,
        (u32::from(sport_be) << 16) | u32::from(dport_be),
        u32::from(proto),
        0,
    )
}

/// Indices of the CONFIG array map (u32 values, network order for addresses).
pub mod config {
    /// The node's address: source of SNATed external traffic to remote backends.
    pub const NODE_IP: u32 = 0;
    /// Size of each Maglev ring (a prime); rings are laid out flat in MAGLEV.
    pub const MAGLEV_SIZE: u32 = 1;
    /// The cluster's pod CIDR (network order) and its mask (network order). Pod egress to
    /// addresses outside it is masqueraded to NODE_IP; a mask of 0 turns masquerading off.
    pub const CLUSTER_CIDR: u32 = 2;
    pub const CLUSTER_MASK: u32 = 3;
    pub const COUNT: u32 = 4;
}

/// Source address a hairpinned flow (a pod reaching its own service and landing on itself) is
/// rewritten to, so the pod does not see a packet from its own address. Link-local, never on a
/// wire (Cilium uses the same idea).
pub const HAIRPIN_ADDR: [u8; 4] = [169, 254, 42, 1];

/// Indices into the per-CPU STATS array.
pub mod stat {
    /// Packets seen by the TC programs.
    pub const TC_SEEN: u32 = 0;
    /// Packets DNATed to a backend by TC.
    pub const TC_DNAT: u32 = 1;
    /// Replies reverse-NATed by TC.
    pub const TC_REVNAT: u32 = 2;
    /// connect()/sendmsg() translated at the socket.
    pub const SOCK_TRANSLATED: u32 = 3;
    /// Service without a usable backend: refused (ICMP port unreachable / ECONNREFUSED).
    pub const REJECTED: u32 = 4;
    /// Dropped: a Local traffic policy left no backend for this traffic.
    pub const DROP_POLICY_EMPTY: u32 = 5;
    /// Dropped: a slot named a backend id that is missing (should not happen: write order).
    pub const DROP_BACKEND_MISSING: u32 = 6;
    /// Dropped: a packet rewrite helper failed.
    pub const DROP_REWRITE_ERROR: u32 = 7;
    /// Flows SNATed to the node address (external traffic to a remote backend).
    pub const SNAT: u32 = 8;
    /// Flows hairpinned (a pod landing on itself through its service).
    pub const HAIRPIN: u32 = 9;
    /// Established flows whose backend vanished and were re-balanced.
    pub const REBALANCED: u32 = 10;
    /// Backends chosen by session affinity.
    pub const AFFINITY_HIT: u32 = 11;
    /// Pod egress flows masqueraded to the node address (destination outside the cluster CIDR).
    pub const MASQUERADED: u32 = 12;
    /// Pod egress dropped: no free node port for masquerading after every probe.
    pub const DROP_MASQ_NO_PORT: u32 = 13;
    pub const COUNT: u32 = 16;

    pub const NAMES: [&str; 14] = [
        "tc_seen",
        "tc_dnat",
        "tc_revnat",
        "sock_translated",
        "rejected",
        "drop_policy_empty",
        "drop_backend_missing",
        "drop_rewrite_error",
        "snat",
        "hairpin",
        "rebalanced",
        "affinity_hit",
        "masqueraded",
        "drop_masq_no_port",
    ];
}

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: all of these are repr(C), Copy, made only of integers and explicit padding.
    unsafe impl aya::Pod for ServiceKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ServiceValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Backend {}
    // SAFETY: as above.
    unsafe impl aya::Pod for RevNat {}
    // SAFETY: as above.
    unsafe impl aya::Pod for CtKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for CtValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for AffinityKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for AffinityValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SockKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SockValue {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes<T: Copy>(v: &T) -> &[u8] {
        // SAFETY: T is one of the repr(C) integer-only types above; every byte is initialised
        // because padding is explicit.
        unsafe { core::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }
    }

    #[test]
    fn service_key_golden_bytes() {
        let k = ServiceKey {
            addr_be: u32::from_be_bytes([10, 96, 0, 10]).to_be(),
            port_be: 80u16.to_be(),
            slot: 3,
            proto: IPPROTO_TCP,
            scope: SCOPE_INTERNAL,
            _pad: [0; 2],
        };
        assert_eq!(bytes(&k), &[10, 96, 0, 10, 0, 80, 3, 0, 6, 1, 0, 0]);
    }

    #[test]
    fn ct_key_golden_bytes() {
        let k = CtKey {
            saddr_be: u32::from_be_bytes([10, 0, 0, 1]).to_be(),
            daddr_be: u32::from_be_bytes([10, 96, 0, 1]).to_be(),
            sport_be: 40000u16.to_be(),
            dport_be: 53u16.to_be(),
            proto: IPPROTO_UDP,
            _pad: [0; 3],
        };
        assert_eq!(
            bytes(&k),
            &[10, 0, 0, 1, 10, 96, 0, 1, 0x9c, 0x40, 0, 53, 17, 0, 0, 0]
        );
    }

    #[test]
    fn backend_golden_bytes() {
        let b = Backend {
            addr_be: u32::from_be_bytes([10, 244, 1, 5]).to_be(),
            port_be: 8080u16.to_be(),
            proto: IPPROTO_TCP,
            flags: BACKEND_F_TERMINATING,
        };
        assert_eq!(bytes(&b), &[10, 244, 1, 5, 0x1f, 0x90, 6, 1]);
    }

    #[test]
    fn stat_names_cover_counters() {
        assert!(stat::NAMES.len() as u32 <= stat::COUNT);
        assert_eq!(stat::NAMES[stat::AFFINITY_HIT as usize], "affinity_hit");
        assert_eq!(
            stat::NAMES[stat::DROP_MASQ_NO_PORT as usize],
            "drop_masq_no_port"
        );
    }
}

#[cfg(test)]
mod fnv_tests {
    use super::*;

    #[test]
    fn golden_values() {
        // The published FNV-1a 64 test vectors.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
        // petrel-cni's host interface name of ("abc", "eth0") has always been "pet561a69de51a6":
        // "pet" + the top 48 bits of the hash of "abc/eth0".
        assert_eq!(fnv1a64(b"abc/eth0") >> 16, 0x561a_69de_51a6);
    }
}
