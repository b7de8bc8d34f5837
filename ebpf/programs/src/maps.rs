//! Every map of the datapath. Names are versioned (`MAP_VERSION`) because they are pinned by name
//! under the agent's bpffs root and must survive an agent restart or a program upgrade.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray},
};
use petrel_common::{Backend, CtKey, CtValue, RevNat, ServiceKey, ServiceValue, stat};

/// Capacities are defaults; userspace resizes them before load (`EbpfLoader::set_max_entries`).
#[map(name = "SERVICES_V1")]
pub static SERVICES: HashMap<ServiceKey, ServiceValue> = HashMap::pinned(65536, 0);

#[map(name = "BACKENDS_V1")]
pub static BACKENDS: HashMap<u32, Backend> = HashMap::pinned(65536, 0);

#[map(name = "REV_NAT_V1")]
pub static REV_NAT: HashMap<u32, RevNat> = HashMap::pinned(65536, 0);

/// Forward flows: client tuple (to the frontend) -> chosen backend.
#[map(name = "CT_V1")]
pub static CONNTRACK: LruHashMap<CtKey, CtValue> = LruHashMap::pinned(262144, 0);

/// Reply flows: backend tuple (backend -> client) -> reverse-NAT id.
#[map(name = "REV_CT_V1")]
pub static REV_CT: LruHashMap<CtKey, CtValue> = LruHashMap::pinned(262144, 0);

#[map(name = "STATS_V1")]
pub static STATS: PerCpuArray<u64> = PerCpuArray::pinned(stat::COUNT, 0);

#[inline(always)]
pub fn count(idx: u32) {
    if let Some(p) = STATS.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *p += 1 };
    }
}
