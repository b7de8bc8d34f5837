//! Every map of the datapath. Names are versioned (`_V1`) because they are pinned by name under
//! the agent's bpffs root and must survive an agent restart or a program upgrade.
//!
//! Capacities here are the defaults (at least 100k service ports and 1M backends); userspace can
//! change them before load. Big hash maps are not preallocated (BPF_F_NO_PREALLOC): memory follows
//! the number of entries, not the capacity.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
};
use petrel_common::{
    AffinityKey, AffinityValue, Backend, CtKey, CtValue, FragKey, FragPorts, RevNat, ServiceKey,
    ServiceValue, SockKey, SockValue, SrcRange, config, stat,
};

const NO_PREALLOC: u32 = 1;

// The sizes below are the object's defaults; the loader sets SERVICES, BACKENDS and REV_NAT
// from the agent's `--*-map-size` flags (`max_entries`) before the maps are created.

#[map(name = "SERVICES_V1")]
pub static SERVICES: HashMap<ServiceKey, ServiceValue> =
    HashMap::pinned(2 * 1024 * 1024, NO_PREALLOC);

#[map(name = "BACKENDS_V1")]
pub static BACKENDS: HashMap<u32, Backend> = HashMap::pinned(1024 * 1024, NO_PREALLOC);

#[map(name = "REV_NAT_V1")]
pub static REV_NAT: HashMap<u32, RevNat> = HashMap::pinned(256 * 1024, NO_PREALLOC);

/// Connection tracking: two entries per connection, one per direction (`CtKey::dir`), created
/// and removed together; see `ct.rs`. A plain hash map on purpose: an LRU map would let a flood
/// of new flows evict established ones, and evict one direction of a connection without the
/// other. Entries leave when they expire (the agent's garbage collector) or when the datapath
/// replaces a dead connection; a full map refuses new connections (counted), never old ones.
/// Preallocated: no allocation on the packet path. Default 128k connections (kube-proxy's
/// nf_conntrack_max floor); the agent sizes it from --ct-max-flows.
#[map(name = "CT_V2")]
pub static CONNTRACK: HashMap<CtKey, CtValue> = HashMap::pinned(2 * 131_072, 0);

/// Ports of the first fragment of IPv4 datagrams in flight, so their other fragments are
/// translated like the first. LRU: an entry is only needed for the datagram's lifetime.
#[map(name = "FRAGS_V1")]
pub static FRAGS: LruHashMap<FragKey, FragPorts> = LruHashMap::pinned(8192, 0);

/// sessionAffinity ClientIP.
#[map(name = "AFFINITY_V1")]
pub static AFFINITY: LruHashMap<AffinityKey, AffinityValue> = LruHashMap::pinned(64 * 1024, 0);

/// Maglev rings, flat: ring r, position p at `r * MAGLEV_SIZE + p` (as Katran lays them out).
#[map(name = "MAGLEV_V1")]
pub static MAGLEV: Array<u32> = Array::pinned(64 * 16381, 0);

/// Socket-LB: (socket, backend) -> frontend, to show the application the VIP as its peer.
#[map(name = "SOCK_REVNAT_V1")]
pub static SOCK_REVNAT: LruHashMap<SockKey, SockValue> = LruHashMap::pinned(64 * 1024, 0);

/// Socket-LB for unconnected UDP: (socket, frontend) -> backend (its id, address and port), so a
/// socket's datagrams stick to one backend while that backend exists at that address.
#[map(name = "SOCK_CT_V2")]
pub static SOCK_CT: LruHashMap<SockKey, SockValue> = LruHashMap::pinned(64 * 1024, 0);

/// loadBalancerSourceRanges: (frontend's rev-NAT id, client prefix) -> 1, one LPM lookup per new
/// flow to a frontend flagged SVC_F_SRC_RANGES (Cilium's `lb4_src_range`). LPM tries are never
/// preallocated (the kernel requires BPF_F_NO_PREALLOC, which the constructor adds).
#[map(name = "SRC_RANGES_V1")]
pub static SRC_RANGES: LpmTrie<SrcRange, u8> = LpmTrie::pinned(64 * 1024, 0);

/// Node facts written by userspace (see `petrel_common::config`).
#[map(name = "CONFIG_V2")]
pub static CONFIG: Array<u32> = Array::pinned(config::COUNT, 0);

#[map(name = "STATS_V2")]
pub static STATS: PerCpuArray<u64> = PerCpuArray::pinned(stat::COUNT, 0);

#[inline(always)]
pub fn count(idx: u32) {
    if let Some(p) = STATS.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
pub fn config(idx: u32) -> u32 {
    CONFIG.get(idx).copied().unwrap_or(0)
}
