//! `MapStore` over the real maps, opened from their pins.

use std::path::Path;

use aya::maps::{Array, HashMap, IterableMap as _, LpmTrie, Map, MapData, MapError, PerCpuArray};
use ipnet::Ipv4Net;
use petrel_common::{
    AffinityKey, AffinityValue, Backend, CtKey, CtValue, RevNat, ServiceKey, ServiceValue, SockKey,
    SockValue, SrcRange,
};

use super::{
    AFFINITY, BACKENDS, CONFIG, CONNTRACK, MAGLEV, MapStore, MapsError, REV_NAT, SERVICES,
    SOCK_REVNAT, SRC_RANGES, STATS, batch, codec,
};

/// The maps userspace reads and writes, opened from a datapath's `maps/` folder.
pub struct PinnedMaps {
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    backends: HashMap<MapData, u32, Backend>,
    rev_nat: HashMap<MapData, u32, RevNat>,
    maglev: Array<MapData, u32>,
    config: Array<MapData, u32>,
    stats: PerCpuArray<MapData, u64>,
    ct: HashMap<MapData, CtKey, CtValue>,
    affinity: HashMap<MapData, AffinityKey, AffinityValue>,
    sock_revnat: HashMap<MapData, SockKey, SockValue>,
    src_ranges: LpmTrie<MapData, SrcRange, u8>,
}

fn open_pin(dir: &Path, name: &'static str) -> Result<Map, MapsError> {
    let path = dir.join(name);
    let data = MapData::from_pin(&path).map_err(|source| MapsError::Open {
        path: path.clone(),
        source,
    })?;
    Map::from_map_data(data).map_err(|source| MapsError::Open { path, source })
}

/// Opens pin `name` in `dir` as the typed map `T`.
/// A pin of the wrong shape (another key or value size, another map type) is said as such: it
/// was pinned under petrel's name by another petrel version (or another tool), and reading it as
/// this version's layout would be wrong.
fn open<T: TryFrom<Map, Error = MapError>>(dir: &Path, name: &'static str) -> Result<T, MapsError> {
    let path = dir.join(name);
    // aya's `size` is this build's type, `expected` the pinned map's.
    T::try_from(open_pin(dir, name)?).map_err(|source| match source {
        MapError::InvalidKeySize { size, expected } => MapsError::Shape {
            map: name,
            path,
            what: "key",
            pinned: expected,
            expected: size,
        },
        MapError::InvalidValueSize { size, expected } => MapsError::Shape {
            map: name,
            path,
            what: "value",
            pinned: expected,
            expected: size,
        },
        MapError::InvalidMapType { map_type } => MapsError::WrongType {
            map: name,
            path,
            map_type,
        },
        source => MapsError::Op {
            op: "open",
            map: name,
            source,
        },
    })
}

fn op<T>(op: &'static str, map: &'static str, r: Result<T, MapError>) -> Result<T, MapsError> {
    r.map_err(|source| MapsError::Op { op, map, source })
}

/// A missing key is `None` for lookups.
fn found<T>(map: &'static str, r: Result<T, MapError>) -> Result<Option<T>, MapsError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(MapError::KeyNotFound) => Ok(None),
        Err(source) => Err(MapsError::Op {
            op: "lookup",
            map,
            source,
        }),
    }
}

/// A missing key is not an error for removals: the goal state is reached.
fn removed(map: &'static str, r: Result<(), MapError>) -> Result<(), MapsError> {
    match r {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(source) => Err(MapsError::Op {
            op: "remove",
            map,
            source,
        }),
    }
}

impl PinnedMaps {
    /// Opens the maps pinned in `maps_dir` (a datapath's `maps/` folder).
    pub fn open(maps_dir: &Path) -> Result<Self, MapsError> {
        Ok(PinnedMaps {
            services: open(maps_dir, SERVICES)?,
            backends: open(maps_dir, BACKENDS)?,
            rev_nat: open(maps_dir, REV_NAT)?,
            maglev: open(maps_dir, MAGLEV)?,
            config: open(maps_dir, CONFIG)?,
            stats: open(maps_dir, STATS)?,
            ct: open(maps_dir, CONNTRACK)?,
            affinity: open(maps_dir, AFFINITY)?,
            sock_revnat: open(maps_dir, SOCK_REVNAT)?,
            src_ranges: open(maps_dir, SRC_RANGES)?,
        })
    }

    /// How many entries SOCK_REVNAT holds (one per connected socket socket-LB translated and
    /// not yet closed, plus unconnected UDP sockets' until the LRU evicts them).
    pub fn sock_revnat_len(&self) -> Result<usize, MapsError> {
        let mut n = 0;
        for k in self.sock_revnat.keys() {
            op("iterate", SOCK_REVNAT, k)?;
            n += 1;
        }
        Ok(n)
    }
}

impl MapStore for PinnedMaps {
    fn service_get(&self, key: &ServiceKey) -> Result<Option<ServiceValue>, MapsError> {
        found(SERVICES, self.services.get(key, 0))
    }

    fn service_put(&mut self, key: ServiceKey, value: ServiceValue) -> Result<(), MapsError> {
        op("insert", SERVICES, self.services.insert(key, value, 0))
    }

    fn service_del(&mut self, key: &ServiceKey) -> Result<(), MapsError> {
        removed(SERVICES, self.services.remove(key))
    }

    fn services(&self) -> Result<Vec<(ServiceKey, ServiceValue)>, MapsError> {
        if let Some(all) = op(
            "read",
            SERVICES,
            batch::lookup_all(self.services.map(), usize::MAX),
        )? {
            return Ok(all);
        }
        self.services
            .iter()
            .map(|e| op("iterate", SERVICES, e))
            .collect()
    }

    fn backend_get(&self, id: u32) -> Result<Option<Backend>, MapsError> {
        found(BACKENDS, self.backends.get(&id, 0))
    }

    fn backend_put(&mut self, id: u32, value: Backend) -> Result<(), MapsError> {
        op("insert", BACKENDS, self.backends.insert(id, value, 0))
    }

    fn backend_del(&mut self, id: u32) -> Result<(), MapsError> {
        removed(BACKENDS, self.backends.remove(&id))
    }

    fn backends(&self) -> Result<Vec<(u32, Backend)>, MapsError> {
        if let Some(all) = op(
            "read",
            BACKENDS,
            batch::lookup_all(self.backends.map(), usize::MAX),
        )? {
            return Ok(all);
        }
        self.backends
            .iter()
            .map(|e| op("iterate", BACKENDS, e))
            .collect()
    }

    fn rev_nat_put(&mut self, id: u32, value: RevNat) -> Result<(), MapsError> {
        op("insert", REV_NAT, self.rev_nat.insert(id, value, 0))
    }

    fn rev_nat_del(&mut self, id: u32) -> Result<(), MapsError> {
        removed(REV_NAT, self.rev_nat.remove(&id))
    }

    fn rev_nats(&self) -> Result<Vec<(u32, RevNat)>, MapsError> {
        if let Some(all) = op(
            "read",
            REV_NAT,
            batch::lookup_all(self.rev_nat.map(), usize::MAX),
        )? {
            return Ok(all);
        }
        self.rev_nat
            .iter()
            .map(|e| op("iterate", REV_NAT, e))
            .collect()
    }

    fn maglev_get(&self, index: u32) -> Result<u32, MapsError> {
        op("get", MAGLEV, self.maglev.get(&index, 0))
    }

    fn maglev_set(&mut self, index: u32, backend_id: u32) -> Result<(), MapsError> {
        op("set", MAGLEV, self.maglev.set(index, backend_id, 0))
    }

    fn maglev_all(&self) -> Result<Vec<u32>, MapsError> {
        let size = op("info", MAGLEV, self.maglev.map().info())?.max_entries() as usize;
        let mut all = vec![0; size];
        match op(
            "read",
            MAGLEV,
            batch::lookup_all::<u32, u32>(self.maglev.map(), size),
        )? {
            Some(read) => {
                for (i, id) in read {
                    if let Some(p) = all.get_mut(i as usize) {
                        *p = id;
                    }
                }
            }
            None => {
                for (i, p) in (0u32..).zip(all.iter_mut()) {
                    *p = self.maglev_get(i)?;
                }
            }
        }
        Ok(all)
    }

    fn config_get(&self, index: u32) -> Result<u32, MapsError> {
        op("get", CONFIG, self.config.get(&index, 0))
    }

    fn config_set(&mut self, index: u32, value: u32) -> Result<(), MapsError> {
        op("set", CONFIG, self.config.set(index, value, 0))
    }

    fn stat(&self, index: u32) -> Result<u64, MapsError> {
        let per_cpu = op("lookup", STATS, self.stats.get(&index, 0))?;
        Ok(per_cpu.iter().sum())
    }

    fn ct_get(&self, key: &CtKey) -> Result<Option<CtValue>, MapsError> {
        found(CONNTRACK, self.ct.get(key, 0))
    }

    fn ct_entries(&self, limit: usize) -> Result<Vec<(CtKey, CtValue)>, MapsError> {
        if let Some(all) = op("read", CONNTRACK, batch::lookup_all(self.ct.map(), limit))? {
            return Ok(all);
        }
        self.ct
            .iter()
            .take(limit)
            .map(|e| op("iterate", CONNTRACK, e))
            .collect()
    }

    fn ct_del(&mut self, key: &CtKey) -> Result<(), MapsError> {
        removed(CONNTRACK, self.ct.remove(key))
    }

    fn ct_capacity(&self) -> Result<u32, MapsError> {
        Ok(op("info", CONNTRACK, self.ct.map().info())?.max_entries())
    }

    fn affinity_get(&self, key: &AffinityKey) -> Result<Option<AffinityValue>, MapsError> {
        found(AFFINITY, self.affinity.get(key, 0))
    }

    fn affinity_entries(
        &self,
        limit: usize,
    ) -> Result<Vec<(AffinityKey, AffinityValue)>, MapsError> {
        if let Some(all) = op(
            "read",
            AFFINITY,
            batch::lookup_all(self.affinity.map(), limit),
        )? {
            return Ok(all);
        }
        self.affinity
            .iter()
            .take(limit)
            .map(|e| op("iterate", AFFINITY, e))
            .collect()
    }

    fn affinity_del(&mut self, key: &AffinityKey) -> Result<(), MapsError> {
        removed(AFFINITY, self.affinity.remove(key))
    }

    fn sock_revnat_get(&self, key: &SockKey) -> Result<Option<SockValue>, MapsError> {
        found(SOCK_REVNAT, self.sock_revnat.get(key, 0))
    }

    fn sock_revnat_del(&mut self, key: &SockKey) -> Result<(), MapsError> {
        removed(SOCK_REVNAT, self.sock_revnat.remove(key))
    }

    fn src_range_put(&mut self, rev_nat_id: u32, net: Ipv4Net) -> Result<(), MapsError> {
        let key = codec::src_range_key(rev_nat_id, net);
        op("insert", SRC_RANGES, self.src_ranges.insert(&key, 1, 0))
    }

    fn src_range_del(&mut self, rev_nat_id: u32, net: Ipv4Net) -> Result<(), MapsError> {
        let key = codec::src_range_key(rev_nat_id, net);
        removed(SRC_RANGES, self.src_ranges.remove(&key))
    }

    fn src_ranges(&self) -> Result<Vec<(u32, Ipv4Net)>, MapsError> {
        let mut out = Vec::new();
        for k in self.src_ranges.keys() {
            if let Some(r) = codec::src_range(&op("iterate", SRC_RANGES, k)?) {
                out.push(r);
            }
        }
        Ok(out)
    }
}
