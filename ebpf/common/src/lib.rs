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

// Every pinned map's name carries the version of its layout (`SERVICES_V1`, `CT_V2`): a layout
// change is a new name (the old pin is removed at load), never a silent reinterpretation of old
// bytes. Maps whose layout did not change keep their name, so an upgrade keeps their contents.

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
/// `ServiceValue::flags`: this scope is filtered by a Local traffic policy and the service has
/// usable endpoints on other nodes; when it has no backend, drop (kube-proxy's "has no local
/// endpoints") instead of rejecting (its "has no endpoints", for a service with none anywhere).
pub const SVC_F_DROP_EMPTY: u16 = 1 << 5;
/// `ServiceValue::flags` (both scopes' masters): a LoadBalancer frontend with
/// loadBalancerSourceRanges: a client whose address is in none of its SRC_RANGES prefixes (keyed
/// by this frontend's `rev_nat_id`) is dropped.
pub const SVC_F_SRC_RANGES: u16 = 1 << 6;

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

/// The data of a SRC_RANGES key (an LPM trie: the kernel's `bpf_lpm_trie_key` prefix length comes
/// first, then this). The prefix length always covers `rev_nat_id` whole (32 + the source
/// prefix), so a lookup only matches its own frontend's ranges; the id's byte order does not
/// matter for that (all 32 bits are compared), the address is in network order as the trie
/// compares it most significant bit first. Value: a `u8`, unused (1).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct SrcRange {
    pub rev_nat_id: u32,
    pub addr_be: u32,
}
const _: () = assert!(size_of::<SrcRange>() == 8);

/// Bits of a SRC_RANGES prefix that hold `SrcRange::rev_nat_id`.
pub const SRC_RANGE_ID_BITS: u32 = 32;

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

/// `CtKey::dir`: the flow as its initiator sends it (client to frontend, pod to the outside).
pub const CT_DIR_FORWARD: u8 = 0;
/// `CtKey::dir`: the answers, as the other end (backend, remote host) sends them.
pub const CT_DIR_REPLY: u8 = 1;

/// Key of the CONNTRACK map: a packet's tuple as it arrives, before any NAT, and which direction
/// of its connection it is. Every tracked connection is two entries, one per direction, created
/// and removed together (see `CtValue::partner`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct CtKey {
    pub saddr_be: u32,
    pub daddr_be: u32,
    pub sport_be: u16,
    pub dport_be: u16,
    pub proto: u8,
    /// `CT_DIR_FORWARD` or `CT_DIR_REPLY`.
    pub dir: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<CtKey>() == 16);

/// `CtValue::flags`: the source is rewritten (NodePort SNAT, hairpin, masquerade, clash remap).
pub const CT_F_SNAT: u16 = 1 << 0;
/// `CtValue::flags`: the source is rewritten to the node's own address (routed by the program,
/// since the stack would drop a packet with a local source arriving from outside).
pub const CT_F_NODE_SNAT: u16 = 1 << 1;
/// `CtValue::flags`: pod egress masqueraded to the node address (no service, no backend).
pub const CT_F_MASQ: u16 = 1 << 2;
/// `CtValue::flags`: a connection that came from outside the cluster CIDR to a pod (another
/// node's SNATed NodePort traffic, a host-network client elsewhere, a hostPort DNAT). Nothing is
/// rewritten: the entries only say that the pod's answers are answers, never masqueraded.
pub const CT_F_INBOUND: u16 = 1 << 3;
/// `CtValue::flags`: hairpin (a pod reaching its own service and landing on itself).
pub const CT_F_HAIRPIN: u16 = 1 << 4;
/// `CtValue::flags`: the client's source port was taken on the backend side (another frontend's
/// flow, or one still closing): the source port was remapped from the NAT port range.
pub const CT_F_REMAPPED: u16 = 1 << 5;
/// `CtValue::flags`: a host process's connection (socket-LB off, or a frontend it left to TC),
/// translated at TCX egress of an external interface; its answers go to the stack.
pub const CT_F_HOST: u16 = 1 << 6;

/// `CtValue::seen`: a packet went this way.
pub const CT_SEEN_PKT: u8 = 1 << 0;
/// `CtValue::seen`: a TCP SYN went this way.
pub const CT_SEEN_SYN: u8 = 1 << 1;
/// `CtValue::seen`: a TCP segment with ACK went this way (the handshake got an answer).
pub const CT_SEEN_ACK: u8 = 1 << 2;
/// `CtValue::seen`: a TCP FIN went this way.
pub const CT_SEEN_FIN: u8 = 1 << 3;
/// `CtValue::seen`: a TCP RST went this way.
pub const CT_SEEN_RST: u8 = 1 << 4;

/// Value of CONNTRACK: how packets with the key's tuple are rewritten. `src_*`/`dst_*` are the
/// packet's new source and destination (equal to the key's where that end is kept), so one
/// rewrite serves both directions: the forward entry of a service flow sends the client's packets
/// to the backend (and from the SNAT source, if any); the reply entry makes the backend's answers
/// come from the frontend and go to the client.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CtValue {
    pub src_addr_be: u32,
    pub dst_addr_be: u32,
    pub src_port_be: u16,
    pub dst_port_be: u16,
    /// The backend (0: masquerade and inbound entries).
    pub backend_id: u32,
    /// The frontend's reverse-NAT id (0: masquerade and inbound entries).
    pub rev_nat_id: u32,
    /// Forward: the interface the flow came in on. Reply: the interface replies are redirected
    /// out of (0: hand to the stack).
    pub ifindex: u32,
    /// When this direction expires, in CLOCK_MONOTONIC seconds (bpf_ktime_get_ns / 1e9):
    /// refreshed by every packet to now + the lifetime of its state (`ct_lifetime`).
    pub expires_s: u32,
    pub flags: u16,
    /// `CT_SEEN_*` bits of this direction.
    pub seen: u8,
    pub _pad: u8,
}
const _: () = assert!(size_of::<CtValue>() == 32);

impl CtValue {
    /// The key of the other direction's entry: what a packet rewritten by this entry is answered
    /// with. The garbage collector and the datapath remove the two together.
    #[inline(always)]
    pub fn partner(&self, key: &CtKey) -> CtKey {
        CtKey {
            saddr_be: self.dst_addr_be,
            daddr_be: self.src_addr_be,
            sport_be: self.dst_port_be,
            dport_be: self.src_port_be,
            proto: key.proto,
            dir: key.dir ^ 1,
            _pad: [0; 2],
        }
    }

    /// Whether this direction has expired at `now_s`.
    #[inline(always)]
    pub fn expired(&self, now_s: u32) -> bool {
        // Wrapping difference: monotonic seconds wrap after 136 years.
        (now_s.wrapping_sub(self.expires_s) as i32) >= 0
    }
}

/// Lifetimes of conntrack states, in seconds. The defaults are Cilium's, and `tcp_time_wait`
/// is Linux's TIME_WAIT (TCP_TIMEWAIT_LEN).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtLifetimes {
    pub tcp_established: u32,
    pub tcp_syn: u32,
    /// After a RST.
    pub tcp_closing: u32,
    /// After a FIN: the end that closed first holds the tuple in TIME_WAIT this long, and a new
    /// connection translated onto it from another frontend (whose TCP timestamps the kernel
    /// offsets differently) would be refused by PAWS there. Keeping the entry claims the
    /// translated tuple, so such a connection gets another source port instead (netfilter keeps
    /// its TIME_WAIT entries 120 s for the same reason). Under pressure the garbage collector
    /// reclaims these after `tcp_closing`.
    pub tcp_time_wait: u32,
    pub other: u32,
}

impl CtLifetimes {
    pub const DEFAULT: CtLifetimes = CtLifetimes {
        tcp_established: 6 * 3600,
        tcp_syn: 60,
        tcp_closing: 10,
        tcp_time_wait: 60,
        other: 60,
    };

    /// How long one direction of a connection lives after its last packet, given what was seen
    /// in that direction: TCP closing once a RST went by, in TIME_WAIT once a FIN did,
    /// established once a segment with ACK did, else still in its handshake; every other
    /// protocol one fixed time.
    #[inline(always)]
    pub fn of(&self, proto: u8, seen: u8) -> u32 {
        if proto != IPPROTO_TCP {
            self.other
        } else if seen & CT_SEEN_RST != 0 {
            self.tcp_closing
        } else if seen & CT_SEEN_FIN != 0 {
            self.tcp_time_wait
        } else if seen & CT_SEEN_ACK != 0 {
            self.tcp_established
        } else {
            self.tcp_syn
        }
    }
}

/// Whether a connection (its two entries; `reply` None when missing) is over at `now_s`: both
/// directions expired, or a RST went either way and its short lifetime ran out. A FIN in one
/// direction only is a half-close: the other direction keeps the connection alive.
#[inline(always)]
pub fn ct_connection_over(forward: &CtValue, reply: Option<&CtValue>, now_s: u32) -> bool {
    let reset = |v: &CtValue| v.seen & CT_SEEN_RST != 0 && v.expired(now_s);
    match reply {
        None => true,
        Some(r) => (forward.expired(now_s) && r.expired(now_s)) || reset(forward) || reset(r),
    }
}

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
    /// Where the backend was chosen, so a hit can check that it is still there (still one of
    /// the service's backends): `AFFINITY_POS_MAGLEV | index` into MAGLEV, or `scope << 16 |
    /// slot` in SERVICES; 0 (entries of older datapaths): not checked.
    pub pos: u32,
}

/// `AffinityValue::pos`: the low 31 bits are an index into MAGLEV.
pub const AFFINITY_POS_MAGLEV: u32 = 1 << 31;
const _: () = assert!(size_of::<AffinityValue>() == 16);

/// Key of the socket-LB maps: a socket and an address. In SOCK_REVNAT the address is the backend
/// the socket was sent to (value: the frontend to show the application); in SOCK_CT it is the
/// frontend (value: the backend chosen for that socket, its id and address).
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
    /// Conntrack lifetimes in seconds (`CtLifetimes`); 0 means the default.
    pub const CT_TCP_ESTABLISHED_S: u32 = 4;
    pub const CT_TCP_SYN_S: u32 = 5;
    pub const CT_TCP_CLOSING_S: u32 = 6;
    pub const CT_OTHER_S: u32 = 7;
    /// The node's NAT port range (host order, inclusive): every source port petrel rewrites
    /// (NodePort SNAT, masquerade, clash remapping) is taken from it. 0: the default range.
    pub const NAT_PORT_MIN: u32 = 8;
    pub const NAT_PORT_MAX: u32 = 9;
    /// `--socket-lb-hostns-only`: the network namespace cookie (low and high 32 bits) socket-LB
    /// translates in, the host's; both 0: every namespace.
    pub const SOCK_LB_NETNS_LO: u32 = 10;
    pub const SOCK_LB_NETNS_HI: u32 = 11;
    /// Conntrack lifetime after a FIN (`CtLifetimes::tcp_time_wait`); 0 means the default.
    pub const CT_TCP_TIME_WAIT_S: u32 = 12;
    pub const COUNT: u32 = 16;
}

/// The default NAT port range: above Linux's default ephemeral range (32768-60999), so no host
/// socket the kernel binds by itself can hold a port petrel hands out.
pub const NAT_PORT_MIN_DEFAULT: u16 = 61000;
pub const NAT_PORT_MAX_DEFAULT: u16 = 65535;

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
    /// Dropped: no free port in the NAT range for a new flow's source (masquerade, NodePort
    /// SNAT, clash remap) after every probe.
    pub const DROP_NAT_NO_PORT: u32 = 13;
    /// Dropped: the conntrack map is full (a new connection could not be tracked).
    pub const DROP_CT_FULL: u32 = 14;
    /// New flows whose source port was remapped because the translated tuple was taken.
    pub const CT_CLASH_REMAP: u32 = 15;
    /// ICMP errors about a tracked flow, translated.
    pub const ICMP_ERROR_TRANSLATED: u32 = 16;
    /// ICMP errors about no tracked flow, passed untouched.
    pub const ICMP_ERROR_UNTRACKED: u32 = 17;
    /// Non-first IPv4 fragments translated like their first fragment.
    pub const FRAG_TRANSLATED: u32 = 18;
    /// Non-first IPv4 fragments whose first fragment was not seen (passed untouched).
    pub const FRAG_UNTRACKED: u32 = 19;
    /// Packets too short or malformed for their headers (passed untouched).
    pub const MALFORMED: u32 = 20;
    /// TCP segments other than SYN without a conntrack entry, passed untouched (not a
    /// connection petrel saw start: never masqueraded or balanced mid-stream).
    pub const TCP_MIDSTREAM: u32 = 21;
    /// Dropped: a LoadBalancer frontend's loadBalancerSourceRanges do not hold the client.
    pub const DROP_SRC_RANGE: u32 = 22;
    /// New connections of host processes translated at an external interface's egress (the TC
    /// path for host traffic: socket-LB off, or a frontend socket-LB left to TC).
    pub const HOST_DNAT: u32 = 23;
    /// Dropped: a host process's connection (TC path) whose backend the node does not forward
    /// to: a host-network endpoint on this node (from egress a packet cannot be turned back
    /// into the node itself), or no route.
    pub const DROP_HOST_UNROUTABLE: u32 = 24;
    pub const COUNT: u32 = 32;

    pub const NAMES: [&str; 25] = [
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
        "drop_nat_no_port",
        "drop_ct_full",
        "ct_clash_remap",
        "icmp_error_translated",
        "icmp_error_untracked",
        "frag_translated",
        "frag_untracked",
        "malformed",
        "tcp_midstream",
        "drop_src_range",
        "host_dnat",
        "drop_host_unroutable",
    ];
}

/// Key of the FRAGS map: an IPv4 datagram being fragmented (RFC 791's identification tuple).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FragKey {
    pub saddr_be: u32,
    pub daddr_be: u32,
    pub id_be: u16,
    pub proto: u8,
    pub _pad: u8,
}
const _: () = assert!(size_of::<FragKey>() == 12);

/// Value of FRAGS: the ports of the datagram's first fragment, so later fragments (which carry
/// none) are looked up in conntrack as the first one was.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FragPorts {
    pub sport_be: u16,
    pub dport_be: u16,
}
const _: () = assert!(size_of::<FragPorts>() == 4);

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
    // SAFETY: as above.
    unsafe impl aya::Pod for FragKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FragPorts {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SrcRange {}
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
            dir: CT_DIR_REPLY,
            _pad: [0; 2],
        };
        assert_eq!(
            bytes(&k),
            &[10, 0, 0, 1, 10, 96, 0, 1, 0x9c, 0x40, 0, 53, 17, 1, 0, 0]
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
    fn src_range_golden_bytes() {
        let r = SrcRange {
            rev_nat_id: 7,
            addr_be: u32::from_be_bytes([203, 0, 113, 0]).to_be(),
        };
        assert_eq!(bytes(&r), &[7, 0, 0, 0, 203, 0, 113, 0]);
    }

    #[test]
    fn stat_names_cover_counters() {
        assert!(stat::NAMES.len() as u32 <= stat::COUNT);
        assert_eq!(stat::NAMES[stat::AFFINITY_HIT as usize], "affinity_hit");
        assert_eq!(
            stat::NAMES[stat::DROP_NAT_NO_PORT as usize],
            "drop_nat_no_port"
        );
        assert_eq!(stat::NAMES[stat::TCP_MIDSTREAM as usize], "tcp_midstream");
        assert_eq!(stat::NAMES[stat::DROP_SRC_RANGE as usize], "drop_src_range");
        assert_eq!(
            stat::NAMES[stat::DROP_HOST_UNROUTABLE as usize],
            "drop_host_unroutable"
        );
    }
}

#[cfg(test)]
mod ct_tests {
    use super::*;

    fn entry(expires_s: u32, seen: u8) -> CtValue {
        CtValue {
            expires_s,
            seen,
            ..Default::default()
        }
    }

    #[test]
    fn lifetimes_follow_the_tcp_state() {
        let l = CtLifetimes::DEFAULT;
        assert_eq!(l.of(IPPROTO_TCP, CT_SEEN_PKT | CT_SEEN_SYN), 60);
        assert_eq!(l.of(IPPROTO_TCP, CT_SEEN_SYN | CT_SEEN_ACK), 21600);
        assert_eq!(l.of(IPPROTO_TCP, CT_SEEN_ACK | CT_SEEN_FIN), 60);
        assert_eq!(l.of(IPPROTO_TCP, CT_SEEN_FIN | CT_SEEN_RST), 10);
        assert_eq!(l.of(IPPROTO_TCP, CT_SEEN_RST), 10);
        assert_eq!(l.of(IPPROTO_UDP, CT_SEEN_PKT), 60);
        assert_eq!(l.of(IPPROTO_ICMP, 0), 60);
    }

    #[test]
    fn the_partner_of_each_entry_is_the_other() {
        let fwd_key = CtKey {
            saddr_be: 1,
            daddr_be: 2,
            sport_be: 3,
            dport_be: 4,
            proto: IPPROTO_TCP,
            dir: CT_DIR_FORWARD,
            _pad: [0; 2],
        };
        // client 1:3 -> frontend 2:4, SNATed to 9:7 and sent to backend 5:6
        let fwd = CtValue {
            src_addr_be: 9,
            src_port_be: 7,
            dst_addr_be: 5,
            dst_port_be: 6,
            ..Default::default()
        };
        let rev_key = fwd.partner(&fwd_key);
        assert_eq!(
            (
                rev_key.saddr_be,
                rev_key.sport_be,
                rev_key.daddr_be,
                rev_key.dport_be
            ),
            (5, 6, 9, 7)
        );
        assert_eq!(rev_key.dir, CT_DIR_REPLY);
        let rev = CtValue {
            src_addr_be: 2,
            src_port_be: 4,
            dst_addr_be: 1,
            dst_port_be: 3,
            ..Default::default()
        };
        assert_eq!(rev.partner(&rev_key), fwd_key);
    }

    #[test]
    fn a_connection_is_over_when_both_sides_expired_or_a_reset_ran_out() {
        let now = 1000;
        assert!(!ct_connection_over(
            &entry(1010, CT_SEEN_ACK),
            Some(&entry(990, CT_SEEN_ACK)),
            now
        ));
        assert!(ct_connection_over(
            &entry(999, CT_SEEN_ACK),
            Some(&entry(1000, CT_SEEN_ACK)),
            now
        ));
        // A RST one way ends it even while the other way still has hours.
        assert!(ct_connection_over(
            &entry(900, CT_SEEN_RST),
            Some(&entry(9000, CT_SEEN_ACK)),
            now
        ));
        // A FIN one way is a half-close: the other way keeps it.
        assert!(!ct_connection_over(
            &entry(900, CT_SEEN_FIN),
            Some(&entry(9000, CT_SEEN_ACK)),
            now
        ));
        // A lone entry is an orphan.
        assert!(ct_connection_over(&entry(9000, CT_SEEN_ACK), None, now));
        // Expiry compares across the wrap of the seconds counter.
        assert!(!entry(5, 0).expired(u32::MAX - 5));
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
