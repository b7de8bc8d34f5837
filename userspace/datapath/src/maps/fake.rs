//! In-memory `MapStore`s for tests of the writer and the reconciler without privilege:
//! `FakeMaps` holds the same kernel values as the real maps and logs every write, `FaultyMaps`
//! fails the Nth write of the store it wraps. Expected results read as sorted map dumps
//! (`dump_lines`), as in Cilium's reconciler tests.

use std::{
    collections::{BTreeMap, HashMap},
    io,
};

use aya::{maps::MapError, sys::SyscallError};
use ipnet::Ipv4Net;
use petrel_common::{
    AffinityKey, AffinityValue, Backend, CtKey, CtValue, RevNat, SCOPE_INTERNAL, ServiceKey,
    ServiceValue, SockKey, SockValue,
};

use super::{
    AFFINITY, BACKENDS, CONFIG, CONNTRACK, MAGLEV, MapStore, MapsError, REV_NAT, SERVICES,
    SOCK_REVNAT, SRC_RANGES, codec,
};

/// The maps as plain collections.
#[derive(Debug, Default)]
pub struct FakeMaps {
    pub services: HashMap<ServiceKey, ServiceValue>,
    pub backends: BTreeMap<u32, Backend>,
    pub rev_nat: BTreeMap<u32, RevNat>,
    pub maglev: BTreeMap<u32, u32>,
    pub config: BTreeMap<u32, u32>,
    pub stats: BTreeMap<u32, u64>,
    pub ct: HashMap<CtKey, CtValue>,
    /// What `ct_capacity` reports (0: the object's default, 2 x 131072).
    pub ct_capacity: u32,
    pub affinity: HashMap<AffinityKey, AffinityValue>,
    pub sock_revnat: HashMap<SockKey, SockValue>,
    /// SRC_RANGES as (rev-NAT id, prefix).
    pub src_ranges: std::collections::BTreeSet<(u32, Ipv4Net)>,
    /// Every write in order, as "MAP op what" lines.
    pub writes: Vec<String>,
}

fn service_line(k: &ServiceKey) -> String {
    let fe = codec::frontend(k).map_or_else(|| format!("proto {}", k.proto), |f| f.to_string());
    let scope = if k.scope == SCOPE_INTERNAL {
        "int"
    } else {
        "ext"
    };
    format!("{fe} {scope} slot={}", k.slot)
}

impl FakeMaps {
    pub fn new() -> FakeMaps {
        FakeMaps::default()
    }

    /// The maps' contents, one sorted line per entry; a Maglev ring is one line of how many
    /// positions each backend holds.
    pub fn dump_lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (k, v) in &self.services {
            let what = service_line(k);
            out.push(if k.slot == 0 {
                format!(
                    "SVC {what} count={} revnat={} flags={}{}{}",
                    v.count,
                    v.rev_nat_id,
                    codec::service_flags(v.flags)
                        .iter()
                        .map(|f| f.name())
                        .collect::<Vec<_>>()
                        .join(","),
                    if v.affinity_timeout_s > 0 {
                        format!(" affinity={}s", v.affinity_timeout_s)
                    } else {
                        String::new()
                    },
                    if v.flags & petrel_common::SVC_F_MAGLEV != 0 {
                        format!(" ring={}", v.maglev_ring)
                    } else {
                        String::new()
                    },
                )
            } else {
                format!("SVC {what} backend={}", v.backend_id)
            });
        }
        for (id, b) in &self.backends {
            let remote = if b.flags & petrel_common::BACKEND_F_REMOTE != 0 {
                " remote"
            } else {
                ""
            };
            out.push(format!(
                "BE {id} {} {}{remote}",
                codec::backend_addr(b),
                codec::backend_state(b)
            ));
        }
        for (id, r) in &self.rev_nat {
            out.push(format!(
                "REVNAT {id} {}",
                codec::socket(r.addr_be, r.port_be)
            ));
        }
        let size = self
            .config
            .get(&petrel_common::config::MAGLEV_SIZE)
            .copied();
        if let Some(size) = size.filter(|s| *s > 0) {
            let mut rings: BTreeMap<u32, BTreeMap<u32, usize>> = BTreeMap::new();
            for (index, id) in &self.maglev {
                *rings
                    .entry(index / size)
                    .or_default()
                    .entry(*id)
                    .or_default() += 1;
            }
            for (ring, counts) in rings {
                let spread: Vec<String> =
                    counts.iter().map(|(id, n)| format!("{id}x{n}")).collect();
                out.push(format!("MAGLEV ring={ring} {}", spread.join(" ")));
            }
        }
        for (id, net) in &self.src_ranges {
            out.push(format!("SRCRANGE revnat={id} {net}"));
        }
        out.sort();
        out
    }

    fn log(&mut self, line: String) {
        self.writes.push(line);
    }
}

impl AsRef<FakeMaps> for FakeMaps {
    fn as_ref(&self) -> &FakeMaps {
        self
    }
}

impl<S: AsRef<FakeMaps>> AsRef<FakeMaps> for FaultyMaps<S> {
    fn as_ref(&self) -> &FakeMaps {
        self.inner.as_ref()
    }
}

impl MapStore for FakeMaps {
    fn service_get(&self, key: &ServiceKey) -> Result<Option<ServiceValue>, MapsError> {
        Ok(self.services.get(key).copied())
    }

    fn service_put(&mut self, key: ServiceKey, value: ServiceValue) -> Result<(), MapsError> {
        self.log(format!("SVC put {}", service_line(&key)));
        self.services.insert(key, value);
        Ok(())
    }

    fn service_del(&mut self, key: &ServiceKey) -> Result<(), MapsError> {
        self.log(format!("SVC del {}", service_line(key)));
        self.services.remove(key);
        Ok(())
    }

    fn services(&self) -> Result<Vec<(ServiceKey, ServiceValue)>, MapsError> {
        Ok(self.services.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn backend_get(&self, id: u32) -> Result<Option<Backend>, MapsError> {
        Ok(self.backends.get(&id).copied())
    }

    fn backend_put(&mut self, id: u32, value: Backend) -> Result<(), MapsError> {
        self.log(format!("BE put {id}"));
        self.backends.insert(id, value);
        Ok(())
    }

    fn backend_del(&mut self, id: u32) -> Result<(), MapsError> {
        self.log(format!("BE del {id}"));
        self.backends.remove(&id);
        Ok(())
    }

    fn backends(&self) -> Result<Vec<(u32, Backend)>, MapsError> {
        Ok(self.backends.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn rev_nat_put(&mut self, id: u32, value: RevNat) -> Result<(), MapsError> {
        self.log(format!("REVNAT put {id}"));
        self.rev_nat.insert(id, value);
        Ok(())
    }

    fn rev_nat_del(&mut self, id: u32) -> Result<(), MapsError> {
        self.log(format!("REVNAT del {id}"));
        self.rev_nat.remove(&id);
        Ok(())
    }

    fn rev_nats(&self) -> Result<Vec<(u32, RevNat)>, MapsError> {
        Ok(self.rev_nat.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn maglev_get(&self, index: u32) -> Result<u32, MapsError> {
        Ok(self.maglev.get(&index).copied().unwrap_or(0))
    }

    fn maglev_set(&mut self, index: u32, backend_id: u32) -> Result<(), MapsError> {
        self.log(format!("MAGLEV set {index}"));
        self.maglev.insert(index, backend_id);
        Ok(())
    }

    fn maglev_all(&self) -> Result<Vec<u32>, MapsError> {
        let mut all = vec![0; self.maglev.keys().last().map_or(0, |i| *i as usize + 1)];
        for (i, id) in &self.maglev {
            all[*i as usize] = *id;
        }
        Ok(all)
    }

    fn config_get(&self, index: u32) -> Result<u32, MapsError> {
        Ok(self.config.get(&index).copied().unwrap_or(0))
    }

    fn config_set(&mut self, index: u32, value: u32) -> Result<(), MapsError> {
        self.log(format!("CONFIG set {index}"));
        self.config.insert(index, value);
        Ok(())
    }

    fn stat(&self, index: u32) -> Result<u64, MapsError> {
        Ok(self.stats.get(&index).copied().unwrap_or(0))
    }

    fn ct_get(&self, key: &CtKey) -> Result<Option<CtValue>, MapsError> {
        Ok(self.ct.get(key).copied())
    }

    fn ct_entries(&self, limit: usize) -> Result<Vec<(CtKey, CtValue)>, MapsError> {
        Ok(self.ct.iter().take(limit).map(|(k, v)| (*k, *v)).collect())
    }

    fn ct_del(&mut self, key: &CtKey) -> Result<(), MapsError> {
        self.log(format!("CT del {key:?}"));
        self.ct.remove(key);
        Ok(())
    }

    fn ct_capacity(&self) -> Result<u32, MapsError> {
        Ok(match self.ct_capacity {
            0 => 2 * 131_072,
            n => n,
        })
    }

    fn affinity_get(&self, key: &AffinityKey) -> Result<Option<AffinityValue>, MapsError> {
        Ok(self.affinity.get(key).copied())
    }

    fn affinity_entries(
        &self,
        limit: usize,
    ) -> Result<Vec<(AffinityKey, AffinityValue)>, MapsError> {
        Ok(self
            .affinity
            .iter()
            .take(limit)
            .map(|(k, v)| (*k, *v))
            .collect())
    }

    fn affinity_del(&mut self, key: &AffinityKey) -> Result<(), MapsError> {
        self.log(format!("AFFINITY del {key:?}"));
        self.affinity.remove(key);
        Ok(())
    }

    fn sock_revnat_get(&self, key: &SockKey) -> Result<Option<SockValue>, MapsError> {
        Ok(self.sock_revnat.get(key).copied())
    }

    fn sock_revnat_del(&mut self, key: &SockKey) -> Result<(), MapsError> {
        self.log(format!("SOCK_REVNAT del {key:?}"));
        self.sock_revnat.remove(key);
        Ok(())
    }
    fn src_range_put(&mut self, rev_nat_id: u32, net: Ipv4Net) -> Result<(), MapsError> {
        self.log(format!("SRCRANGE put {rev_nat_id} {net}"));
        self.src_ranges.insert((rev_nat_id, net));
        Ok(())
    }

    fn src_range_del(&mut self, rev_nat_id: u32, net: Ipv4Net) -> Result<(), MapsError> {
        self.log(format!("SRCRANGE del {rev_nat_id} {net}"));
        self.src_ranges.remove(&(rev_nat_id, net));
        Ok(())
    }

    fn src_ranges(&self) -> Result<Vec<(u32, Ipv4Net)>, MapsError> {
        Ok(self.src_ranges.iter().copied().collect())
    }
}

/// Wraps a store and fails its `fail_at`-th write (1-based; 0 never fails) the way a full map
/// fails an update (E2BIG from bpf_map_update_elem). Writes after it go through again.
#[derive(Debug)]
pub struct FaultyMaps<S> {
    pub inner: S,
    pub fail_at: usize,
    /// Writes attempted so far (the failed one included).
    pub attempts: usize,
}

impl<S> FaultyMaps<S> {
    pub fn new(inner: S, fail_at: usize) -> FaultyMaps<S> {
        FaultyMaps {
            inner,
            fail_at,
            attempts: 0,
        }
    }

    fn write(&mut self, op: &'static str, map: &'static str) -> Result<(), MapsError> {
        self.attempts += 1;
        if self.attempts != self.fail_at {
            return Ok(());
        }
        Err(MapsError::Op {
            op,
            map,
            source: MapError::SyscallError(SyscallError {
                call: "bpf_map_update_elem",
                io_error: io::Error::from_raw_os_error(libc::E2BIG),
            }),
        })
    }
}

// Each method delegates, writes after counting: a repetition of the trait's shape that a macro
// would only hide.
impl<S: MapStore> MapStore for FaultyMaps<S> {
    fn service_get(&self, key: &ServiceKey) -> Result<Option<ServiceValue>, MapsError> {
        self.inner.service_get(key)
    }

    fn service_put(&mut self, key: ServiceKey, value: ServiceValue) -> Result<(), MapsError> {
        self.write("insert", SERVICES)?;
        self.inner.service_put(key, value)
    }

    fn service_del(&mut self, key: &ServiceKey) -> Result<(), MapsError> {
        self.write("remove", SERVICES)?;
        self.inner.service_del(key)
    }

    fn services(&self) -> Result<Vec<(ServiceKey, ServiceValue)>, MapsError> {
        self.inner.services()
    }

    fn backend_get(&self, id: u32) -> Result<Option<Backend>, MapsError> {
        self.inner.backend_get(id)
    }

    fn backend_put(&mut self, id: u32, value: Backend) -> Result<(), MapsError> {
        self.write("insert", BACKENDS)?;
        self.inner.backend_put(id, value)
    }

    fn backend_del(&mut self, id: u32) -> Result<(), MapsError> {
        self.write("remove", BACKENDS)?;
        self.inner.backend_del(id)
    }

    fn backends(&self) -> Result<Vec<(u32, Backend)>, MapsError> {
        self.inner.backends()
    }

    fn rev_nat_put(&mut self, id: u32, value: RevNat) -> Result<(), MapsError> {
        self.write("insert", REV_NAT)?;
        self.inner.rev_nat_put(id, value)
    }

    fn rev_nat_del(&mut self, id: u32) -> Result<(), MapsError> {
        self.write("remove", REV_NAT)?;
        self.inner.rev_nat_del(id)
    }

    fn rev_nats(&self) -> Result<Vec<(u32, RevNat)>, MapsError> {
        self.inner.rev_nats()
    }

    fn maglev_get(&self, index: u32) -> Result<u32, MapsError> {
        self.inner.maglev_get(index)
    }

    fn maglev_set(&mut self, index: u32, backend_id: u32) -> Result<(), MapsError> {
        self.write("set", MAGLEV)?;
        self.inner.maglev_set(index, backend_id)
    }

    fn maglev_all(&self) -> Result<Vec<u32>, MapsError> {
        self.inner.maglev_all()
    }

    fn config_get(&self, index: u32) -> Result<u32, MapsError> {
        self.inner.config_get(index)
    }

    fn config_set(&mut self, index: u32, value: u32) -> Result<(), MapsError> {
        self.write("set", CONFIG)?;
        self.inner.config_set(index, value)
    }

    fn stat(&self, index: u32) -> Result<u64, MapsError> {
        self.inner.stat(index)
    }

    fn ct_get(&self, key: &CtKey) -> Result<Option<CtValue>, MapsError> {
        self.inner.ct_get(key)
    }

    fn ct_entries(&self, limit: usize) -> Result<Vec<(CtKey, CtValue)>, MapsError> {
        self.inner.ct_entries(limit)
    }

    fn ct_del(&mut self, key: &CtKey) -> Result<(), MapsError> {
        self.write("remove", CONNTRACK)?;
        self.inner.ct_del(key)
    }

    fn ct_capacity(&self) -> Result<u32, MapsError> {
        self.inner.ct_capacity()
    }

    fn affinity_get(&self, key: &AffinityKey) -> Result<Option<AffinityValue>, MapsError> {
        self.inner.affinity_get(key)
    }

    fn affinity_entries(
        &self,
        limit: usize,
    ) -> Result<Vec<(AffinityKey, AffinityValue)>, MapsError> {
        self.inner.affinity_entries(limit)
    }

    fn affinity_del(&mut self, key: &AffinityKey) -> Result<(), MapsError> {
        self.write("remove", AFFINITY)?;
        self.inner.affinity_del(key)
    }

    fn sock_revnat_get(&self, key: &SockKey) -> Result<Option<SockValue>, MapsError> {
        self.inner.sock_revnat_get(key)
    }

    fn sock_revnat_del(&mut self, key: &SockKey) -> Result<(), MapsError> {
        self.write("remove", SOCK_REVNAT)?;
        self.inner.sock_revnat_del(key)
    }

    fn src_range_put(&mut self, rev_nat_id: u32, net: Ipv4Net) -> Result<(), MapsError> {
        self.write("insert", SRC_RANGES)?;
        self.inner.src_range_put(rev_nat_id, net)
    }

    fn src_range_del(&mut self, rev_nat_id: u32, net: Ipv4Net) -> Result<(), MapsError> {
        self.write("remove", SRC_RANGES)?;
        self.inner.src_range_del(rev_nat_id, net)
    }

    fn src_ranges(&self) -> Result<Vec<(u32, Ipv4Net)>, MapsError> {
        self.inner.src_ranges()
    }
}
