//! Applying the desired state to the maps: stable ids, a diff against what is applied, ordered
//! writes (backends, then each frontend's slots and master entry, then removals), adoption of
//! what the pinned maps already hold after a restart.

use std::collections::{BTreeMap, BTreeSet};

use super::desired::{BackendKey, Desired};
use crate::{
    maps::{BackendSpec, Frontend, MapsError, ServiceMaps},
    service::{Endpoint, ServiceEntry},
};

/// What one sync did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub upserted: usize,
    pub removed: usize,
    pub unchanged: usize,
    /// Frontends not programmed, with why (capacity, map errors). Retried on the next sync.
    pub refused: Vec<(Frontend, String)>,
}

/// Ids handed out from 1, reusing freed ones first.
#[derive(Debug, Default)]
struct IdPool {
    used: BTreeSet<u32>,
    free: BTreeSet<u32>,
    next: u32,
}

impl IdPool {
    fn take(&mut self) -> u32 {
        let id = match self.free.pop_first() {
            Some(id) => id,
            None => {
                self.next += 1;
                self.next
            }
        };
        self.used.insert(id);
        id
    }

    fn adopt(&mut self, id: u32) {
        self.used.insert(id);
        self.free.remove(&id);
        if id > self.next {
            self.free
                .extend((self.next + 1..id).filter(|i| !self.used.contains(i)));
            self.next = id;
        }
    }

    fn release(&mut self, id: u32) {
        if self.used.remove(&id) {
            self.free.insert(id);
        }
    }
}

/// SERVICES entries a frontend needs: a master plus one slot per backend, per scope.
fn entries(e: &ServiceEntry) -> usize {
    let s = e.scopes();
    1 + s.external.len() + s.internal.map_or(0, |i| 1 + i.len())
}

pub struct Syncer {
    maps: ServiceMaps,
    rev_ids: BTreeMap<Frontend, u32>,
    rev_pool: IdPool,
    backend_ids: BTreeMap<BackendKey, u32>,
    backend_pool: IdPool,
    rings: BTreeMap<Frontend, u32>,
    free_rings: BTreeSet<u32>,
    applied: BTreeMap<Frontend, ServiceEntry>,
    applied_backends: BTreeMap<u32, BackendSpec>,
    /// Frontends found in the maps at start that nothing has claimed yet.
    adopted: BTreeSet<Frontend>,
    capacity: usize,
}

impl Syncer {
    /// Takes over the maps, adopting the ids they already use: conntrack entries name backend
    /// ids and reverse-NAT ids, so keeping them keeps established flows working across a restart.
    pub fn adopt(
        maps: ServiceMaps,
        maglev_rings: u32,
        capacity: usize,
    ) -> Result<Syncer, MapsError> {
        let mut s = Syncer {
            maps,
            rev_ids: BTreeMap::new(),
            rev_pool: IdPool::default(),
            backend_ids: BTreeMap::new(),
            backend_pool: IdPool::default(),
            rings: BTreeMap::new(),
            free_rings: (0..maglev_rings).collect(),
            applied: BTreeMap::new(),
            applied_backends: BTreeMap::new(),
            adopted: BTreeSet::new(),
            capacity,
        };
        for svc in s.maps.dump()? {
            s.rev_ids.insert(svc.frontend, svc.rev_nat_id);
            s.rev_pool.adopt(svc.rev_nat_id);
            if let Some(ring) = svc.maglev_ring {
                s.rings.insert(svc.frontend, ring);
                s.free_rings.remove(&ring);
            }
            s.adopted.insert(svc.frontend);
        }
        for b in s.maps.backends()? {
            if let (Some(addr), Some(proto)) = (b.addr, b.proto) {
                s.backend_ids.insert(BackendKey { addr, proto }, b.id);
                s.backend_pool.adopt(b.id);
            }
        }
        Ok(s)
    }

    pub fn maps(&self) -> &ServiceMaps {
        &self.maps
    }

    pub fn maps_mut(&mut self) -> &mut ServiceMaps {
        &mut self.maps
    }

    /// Number of frontends and backends programmed.
    pub fn counts(&self) -> (usize, usize) {
        (self.applied.len(), self.applied_backends.len())
    }

    /// SERVICES entries in use and the map's capacity.
    pub fn fill(&self) -> (usize, usize) {
        (self.applied.values().map(entries).sum(), self.capacity)
    }

    fn backend_id(&mut self, key: BackendKey) -> u32 {
        if let Some(id) = self.backend_ids.get(&key) {
            return *id;
        }
        let id = self.backend_pool.take();
        self.backend_ids.insert(key, id);
        id
    }

    fn entry(&mut self, fe: Frontend, plan: &super::desired::FrontendPlan) -> ServiceEntry {
        let rev_nat_id = match self.rev_ids.get(&fe) {
            Some(id) => *id,
            None => {
                let id = self.rev_pool.take();
                self.rev_ids.insert(fe, id);
                id
            }
        };
        let maglev_ring = if plan.maglev {
            match self.rings.get(&fe) {
                Some(r) => Some(*r),
                None => self.free_rings.pop_first().inspect(|r| {
                    self.rings.insert(fe, *r);
                }),
            }
        } else {
            None
        };
        let endpoints = plan
            .endpoints
            .iter()
            .map(|e| Endpoint {
                id: self.backend_id(e.backend),
                local: e.local,
                ready: e.ready,
                serving: e.serving,
                terminating: e.terminating,
            })
            .collect();
        ServiceEntry {
            frontend: fe,
            rev_nat_id,
            external: plan.external(),
            external_local: plan.external_local,
            internal_local: plan.internal_local,
            affinity_timeout_s: plan.affinity_timeout_s,
            maglev_ring,
            publish_not_ready: plan.publish_not_ready,
            endpoints,
        }
    }

    /// Makes the maps match `desired`. Errors of one frontend do not stop the others; they are
    /// reported and retried on the next sync.
    pub fn sync(&mut self, desired: &Desired) -> SyncReport {
        let mut report = SyncReport::default();

        // 1. Backends first, so every slot written below names an existing backend.
        let mut wanted_backends: BTreeMap<u32, BackendSpec> = BTreeMap::new();
        for plan in desired.frontends.values() {
            for e in &plan.endpoints {
                let id = self.backend_id(e.backend);
                let spec = BackendSpec {
                    id,
                    addr: e.backend.addr,
                    proto: e.backend.proto,
                    terminating: e.terminating,
                    remote: !e.local,
                };
                wanted_backends.insert(id, spec);
            }
        }
        for (id, spec) in &wanted_backends {
            if self.applied_backends.get(id) != Some(spec) {
                match self.maps.upsert_backend(spec) {
                    Ok(()) => {
                        self.applied_backends.insert(*id, *spec);
                    }
                    Err(e) => {
                        tracing::warn!(backend = %spec.addr, error = %e, "programming backend failed")
                    }
                }
            }
        }

        // 2. Frontends: each written slots-first, master last (ServiceMaps::upsert_service).
        let mut in_use: usize = self.applied.values().map(entries).sum();
        for (fe, plan) in &desired.frontends {
            let entry = self.entry(*fe, plan);
            if self.applied.get(fe) == Some(&entry) {
                report.unchanged += 1;
                continue;
            }
            if entry
                .endpoints
                .iter()
                .any(|e| !self.applied_backends.contains_key(&e.id))
            {
                report
                    .refused
                    .push((*fe, "a backend could not be programmed".into()));
                continue;
            }
            let before = self.applied.get(fe).map_or(0, entries);
            let after = entries(&entry);
            if in_use - before + after > self.capacity {
                let why = format!(
                    "SERVICES map full ({in_use} of {} entries in use, {after} needed)",
                    self.capacity
                );
                tracing::warn!(frontend = %fe, service = %plan.service, "{why}: refused");
                report.refused.push((*fe, why));
                continue;
            }
            match self.maps.upsert_service(&entry) {
                Ok(()) => {
                    in_use = in_use - before + after;
                    self.applied.insert(*fe, entry);
                    self.adopted.remove(fe);
                    report.upserted += 1;
                }
                Err(e) => {
                    tracing::warn!(frontend = %fe, service = %plan.service, error = %e, "programming frontend failed");
                    report.refused.push((*fe, e.to_string()));
                }
            }
        }

        // 3. Frontends no longer wanted (including ones adopted from the maps at start).
        let stale: Vec<Frontend> = self
            .applied
            .keys()
            .chain(self.adopted.iter())
            .filter(|fe| !desired.frontends.contains_key(fe))
            .copied()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        for fe in stale {
            match self.maps.remove_service(fe) {
                Ok(()) => {
                    self.applied.remove(&fe);
                    self.adopted.remove(&fe);
                    if let Some(id) = self.rev_ids.remove(&fe) {
                        self.rev_pool.release(id);
                    }
                    if let Some(r) = self.rings.remove(&fe) {
                        self.free_rings.insert(r);
                    }
                    report.removed += 1;
                }
                Err(e) => tracing::warn!(frontend = %fe, error = %e, "removing frontend failed"),
            }
        }

        // 4. Backends nothing references any more: flows pinned to them re-balance.
        let referenced: BTreeSet<u32> = self
            .applied
            .values()
            .flat_map(|e| e.endpoints.iter().map(|ep| ep.id))
            .collect();
        let unreferenced: Vec<(BackendKey, u32)> = self
            .backend_ids
            .iter()
            .filter(|(_, id)| !referenced.contains(id) && !wanted_backends.contains_key(id))
            .map(|(k, id)| (*k, *id))
            .collect();
        for (key, id) in unreferenced {
            match self.maps.remove_backend(id) {
                Ok(()) => {
                    self.backend_ids.remove(&key);
                    self.backend_pool.release(id);
                    self.applied_backends.remove(&id);
                }
                Err(e) => {
                    tracing::warn!(backend = %key.addr, error = %e, "removing backend failed")
                }
            }
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::IdPool;

    #[test]
    fn id_pool_reuses_freed_ids_and_adopts_gaps() {
        let mut p = IdPool::default();
        p.adopt(3);
        assert_eq!(p.take(), 1);
        assert_eq!(p.take(), 2);
        assert_eq!(p.take(), 4);
        p.release(2);
        assert_eq!(p.take(), 2);
    }
}
