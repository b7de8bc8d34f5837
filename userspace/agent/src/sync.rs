//! Applying the desired state to the maps: stable ids, a diff against what is applied, ordered
//! writes (backends, then each frontend's slots and master entry, then removals), adoption of
//! what the pinned maps already hold after a restart.
//!
//! Half of this file is its tests on the in-memory map store (dumps after each desired state,
//! a fault at every write): kept beside the code whose order they pin down.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::SocketAddrV4,
};

use petrel_datapath::{
    Proto,
    maps::{MapStore, MapsError, PinnedMaps, ServiceMaps, adopt::Held, codec},
    model::{BackendSpec, Endpoint, Frontend, ServiceEntry},
    sock_term::Departure,
};

use crate::desired::{BackendKey, Desired, FrontendPlan};

/// What one sync did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub upserted: usize,
    pub removed: usize,
    pub unchanged: usize,
    /// Frontends not programmed, with why (capacity, map errors). Retried on the next sync.
    pub refused: Vec<(Frontend, String)>,
    /// Something a conntrack or affinity entry may name went away: a backend, a frontend, or
    /// a backend's place in a frontend (the garbage collector then sweeps at once).
    pub released: bool,
    /// UDP backends that stopped serving a frontend (left its backends, or the frontend went):
    /// connected sockets socket-LB sent there are destroyed (`sock_term`).
    pub udp_departed: BTreeSet<Departure>,
}

/// Why a frontend is refused, as the refusal metric labels it.
pub fn refusal_reason(why: &str) -> &'static str {
    if why.starts_with("SERVICES map full") {
        "map_full"
    } else if why.contains("backends; at most") {
        "too_many_backends"
    } else {
        "map_error"
    }
}

/// Ids handed out next-fit over 32 bits, never 0 (as Cilium allocates its service and backend
/// ids): each one after the last handed out, skipping ids in use. A freed id comes back only
/// when the counter has gone round all 2^32 - 1 of them, so conntrack, affinity and socket-LB
/// state that still names a freed id can never reach whoever gets the id next.
#[derive(Debug, Default)]
struct IdPool {
    used: BTreeSet<u32>,
    /// The last id handed out (or adopted, or seen in the maps): the next one follows it.
    last: u32,
}

impl IdPool {
    fn take(&mut self) -> u32 {
        assert!(
            self.used.len() < u32::MAX as usize,
            "every 32-bit id is in use"
        );
        loop {
            self.last = self.last.wrapping_add(1);
            if self.last != 0 && !self.used.contains(&self.last) {
                break;
            }
        }
        self.used.insert(self.last);
        self.last
    }

    /// An id the maps hold at start: in use, and the counter continues after the highest.
    fn adopt(&mut self, id: u32) {
        self.used.insert(id);
        self.seen(id);
    }

    /// An id some state may still name (conntrack, affinity) without holding it: not in use,
    /// but the counter continues after it.
    fn seen(&mut self, id: u32) {
        self.last = self.last.max(id);
    }

    fn release(&mut self, id: u32) {
        self.used.remove(&id);
    }
}

/// SERVICES entries a frontend needs: a master plus one slot per backend, per scope.
fn entries(e: &ServiceEntry) -> usize {
    let s = e.scopes();
    1 + s.external.len() + s.internal.map_or(0, |i| 1 + i.len())
}

pub struct Syncer<S: MapStore = PinnedMaps> {
    maps: ServiceMaps<S>,
    rev_ids: BTreeMap<Frontend, u32>,
    rev_pool: IdPool,
    backend_ids: BTreeMap<BackendKey, u32>,
    backend_pool: IdPool,
    rings: BTreeMap<Frontend, u32>,
    free_rings: BTreeSet<u32>,
    /// Frontends that want Maglev and got no ring (every ring in use): random selection,
    /// counted (`maglev_fallbacks`) and logged when a frontend falls back.
    fallback: BTreeSet<Frontend>,
    applied: BTreeMap<Frontend, ServiceEntry>,
    applied_backends: BTreeMap<u32, BackendSpec>,
    /// Frontends found in the maps at start that nothing has claimed yet, as the maps hold
    /// them: one the desired state wants as it is is claimed without a write.
    adopted: BTreeMap<Frontend, Held>,
    /// What adoption found: (frontends, backends).
    found: (usize, usize),
    capacity: usize,
    /// SERVICES entries the applied frontends use.
    in_use: usize,
    /// How many applied endpoint slots name each backend id (ids named by none are absent).
    refs: HashMap<u32, usize>,
}

impl<S: MapStore> Syncer<S> {
    /// Takes over the maps, adopting the ids they already use: conntrack entries name backend
    /// ids and reverse-NAT ids, so keeping them keeps established flows working across a restart.
    pub fn adopt(
        maps: ServiceMaps<S>,
        maglev_rings: u32,
        capacity: usize,
    ) -> Result<Self, MapsError> {
        let mut s = Syncer {
            maps,
            rev_ids: BTreeMap::new(),
            rev_pool: IdPool::default(),
            backend_ids: BTreeMap::new(),
            backend_pool: IdPool::default(),
            rings: BTreeMap::new(),
            free_rings: (0..maglev_rings).collect(),
            fallback: BTreeSet::new(),
            applied: BTreeMap::new(),
            applied_backends: BTreeMap::new(),
            adopted: BTreeMap::new(),
            found: (0, 0),
            capacity,
            in_use: 0,
            refs: HashMap::new(),
        };
        // Each map read once; the first sync compares with this instead of rewriting.
        let found = s.maps.adopt()?;
        s.found = (found.services.len(), found.backends.len());
        for (fe, held) in &found.services {
            let m = held.master();
            s.rev_ids.insert(*fe, m.rev_nat_id);
            s.rev_pool.adopt(m.rev_nat_id);
            if m.flags & petrel_common::SVC_F_MAGLEV != 0 {
                s.rings.insert(*fe, m.maglev_ring);
                s.free_rings.remove(&m.maglev_ring);
            }
        }
        s.adopted = found.services;
        // Source ranges of rev-NAT ids no frontend holds any more (the service went while no
        // agent ran, or a sync stopped between its writes): removed now, so an id handed out
        // again never inherits another service's allow-list.
        let live: BTreeSet<u32> = s.rev_ids.values().copied().collect();
        let stale = s.maps.remove_ranges_except(&live)?;
        if stale > 0 {
            tracing::info!(
                entries = stale,
                "source ranges of services gone before this start removed"
            );
        }
        for (id, b) in &found.backends {
            let Some(proto) = Proto::from_number(b.proto) else {
                continue;
            };
            let addr = codec::backend_addr(b);
            s.backend_ids.insert(BackendKey { addr, proto }, *id);
            s.backend_pool.adopt(*id);
            let spec = BackendSpec {
                id: *id,
                addr,
                proto,
                terminating: b.flags & petrel_common::BACKEND_F_TERMINATING != 0,
                remote: b.flags & petrel_common::BACKEND_F_REMOTE != 0,
            };
            // Held exactly as the writer writes it: not written again unless it changes.
            if codec::backend(&spec) == *b {
                s.applied_backends.insert(*id, spec);
            }
        }
        // Ids freed before the restart are gone from the service maps but may still be named
        // by conntrack and affinity entries: the counters continue after those too.
        // Bounded: an iteration restarts from the first key when the datapath deletes the
        // current one.
        let store = s.maps.store();
        let ct = store.ct_entries((store.ct_capacity()? as usize).saturating_mul(2))?;
        let affinity = store.affinity_entries(4 << 20)?;
        for (_, v) in &ct {
            s.backend_pool.seen(v.backend_id);
            s.rev_pool.seen(v.rev_nat_id);
        }
        for (k, v) in &affinity {
            s.backend_pool.seen(v.backend_id);
            s.rev_pool.seen(k.rev_nat_id);
        }
        Ok(s)
    }

    pub fn maps(&self) -> &ServiceMaps<S> {
        &self.maps
    }

    pub fn maps_mut(&mut self) -> &mut ServiceMaps<S> {
        &mut self.maps
    }

    /// Frontends and backends the maps held at adoption.
    pub fn found(&self) -> (usize, usize) {
        self.found
    }

    /// Number of frontends and backends programmed.
    pub fn counts(&self) -> (usize, usize) {
        (self.applied.len(), self.applied_backends.len())
    }

    /// Frontends that want Maglev and select backends at random for want of a ring.
    pub fn maglev_fallbacks(&self) -> usize {
        self.fallback.len()
    }

    /// SERVICES entries in use and the map's capacity.
    pub fn fill(&self) -> (usize, usize) {
        (self.in_use, self.capacity)
    }

    fn backend_id(&mut self, key: BackendKey) -> u32 {
        if let Some(id) = self.backend_ids.get(&key) {
            return *id;
        }
        let id = self.backend_pool.take();
        self.backend_ids.insert(key, id);
        id
    }

    fn entry(&mut self, fe: Frontend, plan: &FrontendPlan) -> ServiceEntry {
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
        if plan.maglev && maglev_ring.is_none() {
            if self.fallback.insert(fe) {
                tracing::warn!(
                    frontend = %fe,
                    service = %plan.service,
                    rings = self.rings.len(),
                    "every Maglev ring is in use (--maglev-rings): random backend selection for this frontend"
                );
            }
        } else {
            self.fallback.remove(&fe);
        }
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
            source_ranges: plan.source_ranges.clone(),
            endpoints,
        }
    }

    /// Makes the maps match `desired`. Errors of one frontend do not stop the others; they are
    /// reported and retried on the next sync.
    ///
    /// WARNING: the order of the steps is what keeps the datapath consistent: every backend a
    /// slot names exists before the slot is written, and a backend goes only once no slot names
    /// it.
    pub fn sync(&mut self, desired: &Desired) -> SyncReport {
        let mut report = SyncReport::default();
        let wanted = self.sync_backends(desired.frontends.values());
        for (fe, plan) in &desired.frontends {
            self.sync_frontend(*fe, plan, &mut report);
        }
        let stale: Vec<Frontend> = self
            .applied
            .keys()
            .chain(self.adopted.keys())
            .filter(|fe| !desired.frontends.contains_key(fe))
            .copied()
            .collect();
        self.remove_frontends(stale, &mut report);
        let unreferenced: Vec<(BackendKey, u32)> = self
            .backend_ids
            .iter()
            .filter(|(_, id)| !self.refs.contains_key(id) && !wanted.contains_key(id))
            .map(|(k, id)| (*k, *id))
            .collect();
        self.remove_backends(unreferenced, &mut report);
        report
    }

    /// `sync` for the frontends in `changed` alone (`Memo::update` says which): writes what
    /// they need and removes what only they used, in the same order, in time proportional to
    /// the change. The other frontends must be applied already (a full `sync` ran, and every
    /// sync since reported nothing refused); a refused frontend is left to the next full sync.
    pub fn sync_changed(&mut self, desired: &Desired, changed: &BTreeSet<Frontend>) -> SyncReport {
        let mut report = SyncReport::default();
        // The backends the changed frontends named: candidates for removal at the end.
        let before: BTreeSet<u32> = changed
            .iter()
            .filter_map(|fe| self.applied.get(fe))
            .flat_map(|e| e.endpoints.iter().map(|ep| ep.id))
            .collect();
        let plans: Vec<(Frontend, &FrontendPlan)> = changed
            .iter()
            .filter_map(|fe| desired.frontends.get(fe).map(|p| (*fe, p)))
            .collect();
        let wanted = self.sync_backends(plans.iter().map(|(_, p)| *p));
        for (fe, plan) in &plans {
            self.sync_frontend(*fe, plan, &mut report);
        }
        let stale: Vec<Frontend> = changed
            .iter()
            .filter(|fe| !desired.frontends.contains_key(fe))
            .filter(|fe| self.applied.contains_key(fe) || self.adopted.contains_key(fe))
            .copied()
            .collect();
        self.remove_frontends(stale, &mut report);
        let unreferenced: Vec<(BackendKey, u32)> = before
            .into_iter()
            .filter(|id| !self.refs.contains_key(id) && !wanted.contains_key(id))
            .filter_map(|id| {
                let b = self.applied_backends.get(&id)?;
                Some((
                    BackendKey {
                        addr: b.addr,
                        proto: b.proto,
                    },
                    id,
                ))
            })
            .collect();
        self.remove_backends(unreferenced, &mut report);
        report
    }

    /// Records `entry` as what the maps hold for `fe` (None: nothing), keeping the SERVICES
    /// entry count and the backends' reference counts.
    fn set_applied(&mut self, fe: Frontend, entry: Option<ServiceEntry>) -> Option<ServiceEntry> {
        if let Some(e) = &entry {
            self.in_use += entries(e);
            for ep in &e.endpoints {
                *self.refs.entry(ep.id).or_default() += 1;
            }
        }
        let old = match entry {
            Some(e) => self.applied.insert(fe, e),
            None => self.applied.remove(&fe),
        };
        if let Some(o) = &old {
            self.in_use -= entries(o);
            for ep in &o.endpoints {
                if let Some(n) = self.refs.get_mut(&ep.id) {
                    *n -= 1;
                    if *n == 0 {
                        self.refs.remove(&ep.id);
                    }
                }
            }
        }
        old
    }

    /// Step 1: backends first, so every slot written below names an existing backend. Returns
    /// every backend the `plans` use.
    fn sync_backends<'a>(
        &mut self,
        plans: impl Iterator<Item = &'a FrontendPlan>,
    ) -> BTreeMap<u32, BackendSpec> {
        let mut wanted_backends: BTreeMap<u32, BackendSpec> = BTreeMap::new();
        for plan in plans {
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
        wanted_backends
    }

    /// Step 2, one frontend: written slots-first, master last (ServiceMaps::upsert_service), and
    /// recorded as applied only once its writes succeeded.
    fn sync_frontend(&mut self, fe: Frontend, plan: &FrontendPlan, report: &mut SyncReport) {
        let entry = self.entry(fe, plan);
        if self.applied.get(&fe) == Some(&entry) {
            report.unchanged += 1;
            return;
        }
        if entry
            .endpoints
            .iter()
            .any(|e| !self.applied_backends.contains_key(&e.id))
        {
            report
                .refused
                .push((fe, "a backend could not be programmed".into()));
            return;
        }
        // Adopted at start and held as wanted (the first sync after a restart): claimed
        // without a write.
        if !self.applied.contains_key(&fe)
            && let Some(held) = self.adopted.get(&fe)
            && self.maps.holds(&entry, held).unwrap_or(false)
        {
            self.adopted.remove(&fe);
            self.set_applied(fe, Some(entry));
            report.unchanged += 1;
            return;
        }
        let before = self.applied.get(&fe).map_or(0, entries);
        let after = entries(&entry);
        if self.in_use - before + after > self.capacity {
            let why = format!(
                "SERVICES map full ({} of {} entries in use, {after} needed)",
                self.in_use, self.capacity
            );
            tracing::warn!(frontend = %fe, service = %plan.service, "{why}: refused");
            report.refused.push((fe, why));
            return;
        }
        match self.maps.upsert_service(&entry) {
            Ok(()) => {
                if let Some(old) = self.applied.get(&fe) {
                    let ids = |e: &ServiceEntry| {
                        e.endpoints
                            .iter()
                            .map(|ep| ep.id)
                            .collect::<BTreeSet<u32>>()
                    };
                    report.released |= !ids(old).is_subset(&ids(&entry));
                    self.departed(old, Some(&entry), &mut report.udp_departed);
                }
                self.set_applied(fe, Some(entry));
                self.adopted.remove(&fe);
                report.upserted += 1;
            }
            Err(e) => {
                tracing::warn!(frontend = %fe, service = %plan.service, error = %e, "programming frontend failed");
                report.refused.push((fe, e.to_string()));
            }
        }
    }

    /// The backends of UDP frontend `old` that `new` (None: the frontend goes) no longer has.
    /// Called before step 4, while every id of `old` is still in `applied_backends`.
    fn departed(
        &self,
        old: &ServiceEntry,
        new: Option<&ServiceEntry>,
        out: &mut BTreeSet<Departure>,
    ) {
        if old.frontend.proto != Proto::Udp {
            return;
        }
        let kept: BTreeSet<u32> = new
            .map(|n| n.endpoints.iter().map(|e| e.id).collect())
            .unwrap_or_default();
        let frontend = SocketAddrV4::new(old.frontend.addr, old.frontend.port);
        for ep in old.endpoints.iter().filter(|e| !kept.contains(&e.id)) {
            if let Some(b) = self.applied_backends.get(&ep.id) {
                out.insert(Departure {
                    frontend,
                    backend: b.addr,
                });
            }
        }
    }

    /// Step 3: frontends no longer wanted (including ones adopted from the maps at start).
    fn remove_frontends(&mut self, stale: Vec<Frontend>, report: &mut SyncReport) {
        for fe in stale {
            match self.maps.remove_service(fe) {
                Ok(()) => {
                    if let Some(old) = self.applied.get(&fe) {
                        self.departed(old, None, &mut report.udp_departed);
                    }
                    self.set_applied(fe, None);
                    self.adopted.remove(&fe);
                    if let Some(id) = self.rev_ids.remove(&fe) {
                        self.rev_pool.release(id);
                    }
                    if let Some(r) = self.rings.remove(&fe) {
                        self.free_rings.insert(r);
                    }
                    self.fallback.remove(&fe);
                    report.removed += 1;
                    report.released = true;
                }
                Err(e) => tracing::warn!(frontend = %fe, error = %e, "removing frontend failed"),
            }
        }
    }

    /// Step 4: backends nothing references any more: flows pinned to them re-balance.
    fn remove_backends(&mut self, unreferenced: Vec<(BackendKey, u32)>, report: &mut SyncReport) {
        for (key, id) in unreferenced {
            match self.maps.remove_backend(id) {
                Ok(()) => {
                    self.backend_ids.remove(&key);
                    self.backend_pool.release(id);
                    self.applied_backends.remove(&id);
                    report.released = true;
                }
                Err(e) => {
                    tracing::warn!(backend = %key.addr, error = %e, "removing backend failed")
                }
            }
        }
    }
}

/// Runs one sync (`changed` None: a full one) on tokio's blocking pool: its system calls, many
/// at a full sync, never hold a runtime worker, so the watches and /healthz keep being served
/// on a current_thread runtime as on a multi_thread one (`block_in_place` only helps on the
/// latter, and not from the thread in `block_on`). The syncer and `holder`, which holds the
/// desired state (`desired` reads it), move to that thread and come back with the report.
pub async fn sync_blocking<S, H>(
    mut syncer: Syncer<S>,
    holder: H,
    desired: fn(&H) -> &Desired,
    changed: Option<BTreeSet<Frontend>>,
) -> (Syncer<S>, H, SyncReport)
where
    S: MapStore + Send + 'static,
    H: Send + 'static,
{
    tokio::task::spawn_blocking(move || {
        let d = desired(&holder);
        let report = match &changed {
            None => syncer.sync(d),
            Some(c) => syncer.sync_changed(d, c),
        };
        (syncer, holder, report)
    })
    .await
    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use petrel_datapath::{
        Proto,
        maps::{FakeMaps, FaultyMaps},
    };

    use super::*;
    use crate::desired::{EndpointPlan, FrontendKind, FrontendPlan};

    const NODE_PORT: [u8; 4] = [192, 168, 1, 10];

    fn fe(ip: [u8; 4], port: u16) -> Frontend {
        Frontend {
            addr: Ipv4Addr::from(ip),
            port,
            proto: Proto::Tcp,
        }
    }

    fn ep(addr: &str, local: bool) -> EndpointPlan {
        EndpointPlan {
            backend: BackendKey {
                addr: addr.parse().expect("socket address"),
                proto: Proto::Tcp,
            },
            local,
            ready: true,
            serving: true,
            terminating: false,
        }
    }

    fn plan(kind: FrontendKind, endpoints: Vec<EndpointPlan>) -> FrontendPlan {
        FrontendPlan {
            service: "default/web".into(),
            port_name: String::new(),
            kind,
            external_local: false,
            internal_local: false,
            affinity_timeout_s: None,
            maglev: false,
            publish_not_ready: false,
            source_ranges: Vec::new(),
            endpoints,
        }
    }

    fn desired(frontends: Vec<(Frontend, FrontendPlan)>) -> Desired {
        Desired {
            frontends: frontends.into_iter().collect(),
            ..Desired::default()
        }
    }

    fn syncer<S: MapStore>(store: S) -> Syncer<S> {
        let mut maps = ServiceMaps::new(store);
        maps.set_maglev_size(7).expect("maglev size");
        Syncer::adopt(maps, 4, 100).expect("adopt")
    }

    fn lines(s: &Syncer<impl MapStore + AsRef<FakeMaps>>) -> Vec<String> {
        s.maps().store().as_ref().dump_lines()
    }

    /// One ClusterIP with a local and a remote endpoint.
    fn one_service() -> Desired {
        desired(vec![(
            fe([10, 96, 0, 1], 80),
            plan(
                FrontendKind::ClusterIp,
                vec![ep("10.244.0.2:8080", true), ep("10.244.1.2:8080", false)],
            ),
        )])
    }

    #[test]
    fn each_desired_state_gives_its_map_dump() {
        let mut s = syncer(FakeMaps::new());
        let r = s.sync(&one_service());
        assert_eq!((r.upserted, r.removed, r.refused.len()), (1, 0, 0));
        assert_eq!(
            lines(&s),
            [
                "BE 1 10.244.0.2:8080 active",
                "BE 2 10.244.1.2:8080 active remote",
                "REVNAT 1 10.96.0.1:80",
                "SVC 10.96.0.1:80/TCP ext slot=0 count=2 revnat=1 flags=",
                "SVC 10.96.0.1:80/TCP ext slot=1 backend=1",
                "SVC 10.96.0.1:80/TCP ext slot=2 backend=2",
            ]
        );

        // The ClusterIP loses its remote endpoint; a NodePort with eTP Local and Maglev uses
        // both: external traffic only the local one, in-cluster traffic both.
        let node_port = FrontendPlan {
            external_local: true,
            maglev: true,
            ..plan(
                FrontendKind::NodePort,
                vec![ep("10.244.0.2:8080", true), ep("10.244.1.2:8080", false)],
            )
        };
        let two = desired(vec![
            (
                fe([10, 96, 0, 1], 80),
                plan(FrontendKind::ClusterIp, vec![ep("10.244.0.2:8080", true)]),
            ),
            (fe(NODE_PORT, 30080), node_port),
        ]);
        let r = s.sync(&two);
        assert_eq!((r.upserted, r.removed, r.refused.len()), (2, 0, 0));
        assert_eq!(
            lines(&s),
            [
                "BE 1 10.244.0.2:8080 active",
                "BE 2 10.244.1.2:8080 active remote",
                "MAGLEV ring=0 1x7",
                "REVNAT 1 10.96.0.1:80",
                "REVNAT 2 192.168.1.10:30080",
                "SVC 10.96.0.1:80/TCP ext slot=0 count=1 revnat=1 flags=",
                "SVC 10.96.0.1:80/TCP ext slot=1 backend=1",
                "SVC 192.168.1.10:30080/TCP ext slot=0 count=1 revnat=2 flags=two-scopes,external,external-local,maglev,drop-when-empty ring=0",
                "SVC 192.168.1.10:30080/TCP ext slot=1 backend=1",
                "SVC 192.168.1.10:30080/TCP int slot=0 count=2 revnat=2 flags=",
                "SVC 192.168.1.10:30080/TCP int slot=1 backend=1",
                "SVC 192.168.1.10:30080/TCP int slot=2 backend=2",
            ]
        );
        // The same state again writes nothing.
        let before = s.maps().store().writes.len();
        let r = s.sync(&two);
        assert_eq!((r.upserted, r.unchanged), (0, 2));
        assert_eq!(s.maps().store().writes.len(), before);

        // Everything gone: services, reverse NAT and backends removed. The Maglev ring keeps
        // its last table (nothing references it; it is rewritten when handed out again).
        let r = s.sync(&desired(vec![]));
        assert_eq!((r.upserted, r.removed), (0, 2));
        assert_eq!(lines(&s), ["MAGLEV ring=0 1x7"]);
        assert_eq!(s.counts(), (0, 0));
    }

    #[test]
    fn backends_first_and_the_master_entry_last() {
        let mut s = syncer(FakeMaps::new());
        s.sync(&one_service());
        let writes = &s.maps().store().writes;
        let first_svc = writes
            .iter()
            .position(|w| w.starts_with("SVC"))
            .expect("svc");
        assert!(
            writes[..first_svc].iter().any(|w| w == "BE put 2"),
            "{writes:?}"
        );
        assert!(
            !writes[first_svc..].iter().any(|w| w.starts_with("BE")),
            "{writes:?}"
        );
        assert_eq!(
            writes.last().map(String::as_str),
            Some("SVC put 10.96.0.1:80/TCP ext slot=0"),
            "{writes:?}"
        );
    }

    #[test]
    fn a_failed_write_leaves_the_old_master_and_is_retried_until_it_converges() {
        // What a fault-free run ends with, and how many writes it takes from an applied
        // one-service state to the changed state.
        let changed = desired(vec![(
            fe([10, 96, 0, 1], 80),
            plan(
                FrontendKind::ClusterIp,
                vec![
                    ep("10.244.0.2:8080", true),
                    ep("10.244.1.2:8080", false),
                    ep("10.244.2.2:8080", false),
                ],
            ),
        )]);
        let mut clean = syncer(FakeMaps::new());
        clean.sync(&one_service());
        let start = clean.maps().store().writes.len();
        clean.sync(&changed);
        let total = clean.maps().store().writes.len() - start;
        let expected = lines(&clean);
        assert!(total >= 4, "backend, slot 3, reverse NAT, master");

        for n in 1..=total {
            let mut s = syncer(FaultyMaps::new(FakeMaps::new(), 0));
            s.sync(&one_service());
            let done = s.maps().store().attempts;
            s.maps_mut().store_mut().fail_at = done + n;
            let r = s.sync(&changed);
            assert_eq!(r.upserted, 0, "write {n} failed: nothing applied");
            assert_eq!(
                r.refused.len(),
                1,
                "write {n} failed: the frontend is refused"
            );
            // The master entry, written last, still describes the old state.
            let master = lines(&s)
                .into_iter()
                .find(|l| l.contains("ext slot=0"))
                .expect("master");
            assert!(master.contains("count=2"), "write {n} failed: {master}");
            // Nothing was recorded as applied: the next sync retries and converges.
            let r = s.sync(&changed);
            assert_eq!(
                (r.upserted, r.refused.len()),
                (1, 0),
                "retry after write {n}"
            );
            assert_eq!(lines(&s), expected, "retry after write {n}");
        }
    }

    #[test]
    fn a_full_map_refuses_the_new_frontend_and_keeps_the_others() {
        let mut maps = ServiceMaps::new(FakeMaps::new());
        maps.set_maglev_size(7).expect("maglev size");
        // Room for the first service (master + 2 slots) and not for a second one.
        let mut s = Syncer::adopt(maps, 4, 4).expect("adopt");
        let mut two = one_service();
        two.frontends.insert(
            fe([10, 96, 0, 2], 80),
            plan(FrontendKind::ClusterIp, vec![ep("10.244.0.3:8080", true)]),
        );
        let r = s.sync(&two);
        assert_eq!(r.upserted, 1);
        assert_eq!(r.refused.len(), 1);
        assert_eq!(r.refused[0].0, fe([10, 96, 0, 2], 80));
        assert!(
            r.refused[0].1.contains("SERVICES map full"),
            "{:?}",
            r.refused
        );
        assert!(!lines(&s).iter().any(|l| l.contains("10.96.0.2")));
    }

    #[test]
    fn a_restart_adopts_the_ids_the_maps_hold() {
        let mut first = syncer(FakeMaps::new());
        first.sync(&one_service());
        let before = lines(&first);
        // A new agent on the same maps: same ids, nothing rewritten, nothing removed.
        let store = std::mem::take(first.maps_mut().store_mut());
        let mut second = syncer(store);
        second.maps_mut().store_mut().writes.clear();
        let r = second.sync(&one_service());
        assert_eq!(r.removed, 0);
        assert_eq!(lines(&second), before);
        // A frontend the maps hold that nothing wants any more is removed.
        let r = second.sync(&desired(vec![]));
        assert_eq!(r.removed, 1);
    }

    /// Three services of every shape the writer lays out (two scopes, Maglev, affinity,
    /// source ranges), each endpoint a backend of its own; `web_backends` endpoints for the
    /// NodePort.
    fn three_services(web_backends: u8) -> Desired {
        let node_port = FrontendPlan {
            external_local: true,
            maglev: true,
            ..plan(
                FrontendKind::NodePort,
                (0..web_backends)
                    .map(|i| ep(&format!("10.244.{i}.2:8080"), i != 1))
                    .collect(),
            )
        };
        let lb = FrontendPlan {
            service: "default/lb".into(),
            affinity_timeout_s: Some(600),
            source_ranges: vec!["203.0.113.0/24".parse().expect("net")],
            ..plan(
                FrontendKind::LoadBalancer,
                vec![ep("10.244.0.7:443", true), ep("10.244.1.7:443", false)],
            )
        };
        desired(vec![
            (
                fe([10, 96, 0, 1], 80),
                plan(FrontendKind::ClusterIp, vec![ep("10.244.0.2:8080", true)]),
            ),
            (fe(NODE_PORT, 30080), node_port),
            (fe([203, 0, 113, 10], 443), lb),
        ])
    }

    fn syncer_251<S: MapStore>(store: S) -> Syncer<S> {
        let mut maps = ServiceMaps::new(store);
        maps.set_maglev_size(251).expect("maglev size");
        Syncer::adopt(maps, 4, 1000).expect("adopt")
    }

    #[test]
    fn the_first_sync_after_a_restart_writes_only_what_differs() {
        let mut first = syncer_251(FakeMaps::new());
        let r = first.sync(&three_services(10));
        assert_eq!((r.upserted, r.refused.len()), (3, 0));
        let before = lines(&first);

        // A new agent over maps that hold the desired state: not one write, every frontend
        // claimed as unchanged, the maps as they were.
        let store = std::mem::take(first.maps_mut().store_mut());
        let mut second = syncer_251(store);
        second.maps_mut().store_mut().writes.clear();
        assert_eq!(second.found(), (3, 12), "three frontends, twelve backends");
        let r = second.sync(&three_services(10));
        assert_eq!((r.upserted, r.unchanged, r.removed), (0, 3, 0));
        assert_eq!(second.maps().store().writes, Vec::<String>::new());
        assert_eq!(lines(&second), before);
        assert_eq!(second.counts(), (3, 12));
        assert_eq!(second.fill(), first_fill(&three_services(10)));

        // Again, with the NodePort's tenth endpoint gone: writes for that frontend only (its
        // slots, master, reverse NAT, the Maglev positions that moved; the backend removed),
        // none for the other two.
        let store = std::mem::take(second.maps_mut().store_mut());
        let mut third = syncer_251(store);
        third.maps_mut().store_mut().writes.clear();
        let r = third.sync(&three_services(9));
        assert_eq!((r.upserted, r.unchanged, r.removed), (1, 2, 0));
        let writes = third.maps().store().writes.clone();
        let maglev = writes.iter().filter(|w| w.starts_with("MAGLEV")).count();
        assert!(
            maglev > 0 && maglev < 251 / 4,
            "the ring is rewritten as a delta from what it held: {maglev} of 251 positions"
        );
        let np = third
            .maps()
            .dump()
            .expect("dump")
            .into_iter()
            .find(|s| s.frontend == fe(NODE_PORT, 30080))
            .expect("node port");
        let gone = writes.iter().filter(|w| w.starts_with("BE del")).count();
        assert_eq!(gone, 1, "{writes:?}");
        for w in &writes {
            let ours = w.contains("192.168.1.10:30080")
                || w.starts_with("MAGLEV set ")
                || *w == format!("REVNAT put {}", np.rev_nat_id)
                || w.starts_with("BE del ");
            assert!(ours, "a write for another frontend: {w} in {writes:?}");
        }
        // What a fresh agent that never restarted would hold.
        let mut fresh = syncer_251(FakeMaps::new());
        fresh.sync(&three_services(10));
        fresh.sync(&three_services(9));
        assert_eq!(lines(&third), lines(&fresh));
    }

    /// SERVICES entries `d` takes, with the test syncer's capacity.
    fn first_fill(d: &Desired) -> (usize, usize) {
        let mut s = syncer_251(FakeMaps::new());
        s.sync(d);
        s.fill()
    }

    /// What a sync reads its desired state from, held at the start of the sync's blocking
    /// section until the test releases it.
    struct Gate {
        desired: Desired,
        entered: std::sync::mpsc::Sender<()>,
        release: std::sync::mpsc::Receiver<()>,
    }

    #[tokio::test(flavor = "current_thread")]
    async fn healthz_answers_while_a_sync_runs_on_a_single_threaded_runtime() {
        let (entered, entered_rx) = std::sync::mpsc::channel();
        let (release_tx, release) = std::sync::mpsc::channel();
        let gate = Gate {
            desired: one_service(),
            entered,
            release,
        };
        fn held(g: &Gate) -> &Desired {
            g.entered.send(()).expect("test waits");
            g.release.recv().expect("test releases");
            &g.desired
        }
        let sync = tokio::spawn(sync_blocking(syncer(FakeMaps::new()), gate, held, None));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let health = std::sync::Arc::new(crate::health::ProxierHealth::new(
            std::time::Duration::from_secs(60),
        ));
        health.updated();
        tokio::spawn(crate::metrics::serve(
            listener,
            std::sync::Arc::new(crate::metrics::Metrics::new()),
            health,
        ));
        // The client on a thread of its own, once the sync is inside its blocking section:
        // the one runtime thread must serve /healthz meanwhile.
        let answer = tokio::task::spawn_blocking(move || {
            use std::io::{Read as _, Write as _};
            entered_rx.recv().expect("the sync started");
            let mut s = std::net::TcpStream::connect(addr).expect("connect");
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                .expect("request");
            let mut out = String::new();
            s.read_to_string(&mut out).expect("answer");
            release_tx.send(()).expect("sync waits");
            out
        })
        .await
        .expect("client");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let (s, _, report) = sync.await.expect("sync");
        assert_eq!((report.upserted, report.refused.len()), (1, 0));
        assert_eq!(s.counts(), (1, 2));
    }

    #[test]
    fn a_restart_removes_the_source_ranges_of_rev_nat_ids_gone() {
        let mut first = syncer(FakeMaps::new());
        first.sync(&one_service());
        let live = first.maps().dump().expect("dump")[0].rev_nat_id;
        let net = |s: &str| s.parse::<ipnet::Ipv4Net>().expect("net");
        let store = first.maps_mut().store_mut();
        store
            .src_range_put(live, net("203.0.113.0/24"))
            .expect("put");
        store
            .src_range_put(live + 7, net("198.51.100.0/24"))
            .expect("put");
        let store = std::mem::take(first.maps_mut().store_mut());
        let second = syncer(store);
        assert_eq!(
            second.maps().store().src_ranges().expect("ranges"),
            [(live, net("203.0.113.0/24"))],
            "the range of an id no frontend holds is gone; the live one stays"
        );
    }

    #[test]
    fn id_pool_hands_out_next_fit_and_reuses_a_freed_id_only_after_wrapping() {
        let mut p = IdPool::default();
        p.adopt(3);
        // Adopted: continue after the highest; the gap below is not filled.
        assert_eq!(p.take(), 4);
        assert_eq!(p.take(), 5);
        p.release(4);
        assert_eq!(p.take(), 6, "a freed id is not handed out again at once");
        // At the top of the space the counter wraps, skips 0 and the ids in use, and only
        // then reaches the freed ones.
        p.adopt(u32::MAX - 1);
        assert_eq!(p.take(), u32::MAX);
        assert_eq!(p.take(), 1);
        assert_eq!(p.take(), 2);
        assert_eq!(p.take(), 4, "3, 5 and 6 are in use; 4 was freed long ago");
        // Ids that only conntrack or affinity still name move the counter without being used.
        let mut q = IdPool::default();
        q.seen(40);
        q.adopt(7);
        assert_eq!(q.take(), 41);
    }

    #[test]
    fn a_removed_backend_s_id_is_not_reused_for_the_next_one() {
        let mut s = syncer(FakeMaps::new());
        s.sync(&one_service());
        // 10.244.1.2 (id 2) goes, 10.244.2.2 comes: it gets 3, not 2.
        let r = s.sync(&desired(vec![(
            fe([10, 96, 0, 1], 80),
            plan(
                FrontendKind::ClusterIp,
                vec![ep("10.244.0.2:8080", true), ep("10.244.2.2:8080", false)],
            ),
        )]));
        assert!(
            r.released,
            "a backend left: the collector is asked to sweep"
        );
        assert!(
            lines(&s).contains(&"BE 3 10.244.2.2:8080 active remote".to_string()),
            "{:?}",
            lines(&s)
        );
        // Adding a backend releases nothing.
        let r = s.sync(&desired(vec![(
            fe([10, 96, 0, 1], 80),
            plan(
                FrontendKind::ClusterIp,
                vec![
                    ep("10.244.0.2:8080", true),
                    ep("10.244.2.2:8080", false),
                    ep("10.244.3.2:8080", false),
                ],
            ),
        )]));
        assert!(!r.released);
    }

    #[test]
    fn udp_backends_that_leave_a_frontend_or_go_with_it_are_reported() {
        let dns = Frontend {
            proto: Proto::Udp,
            ..fe([10, 96, 0, 10], 53)
        };
        let web = fe([10, 96, 0, 1], 80);
        let udp = |addr: &str| EndpointPlan {
            backend: BackendKey {
                addr: addr.parse().expect("socket address"),
                proto: Proto::Udp,
            },
            ..ep(addr, true)
        };
        let gone = |backends: &[&str]| -> BTreeSet<Departure> {
            backends
                .iter()
                .map(|b| Departure {
                    frontend: "10.96.0.10:53".parse().unwrap(),
                    backend: b.parse().unwrap(),
                })
                .collect()
        };
        let mut s = syncer(FakeMaps::new());
        let r = s.sync(&desired(vec![
            (
                dns,
                plan(
                    FrontendKind::ClusterIp,
                    vec![udp("10.244.0.2:53"), udp("10.244.0.3:53")],
                ),
            ),
            (
                web,
                plan(FrontendKind::ClusterIp, vec![ep("10.244.0.2:8080", true)]),
            ),
        ]));
        assert!(r.udp_departed.is_empty());
        // .3 leaves the UDP frontend; the TCP one changes backend too, which is not reported
        // (TCP connections end on their own: a reset, or the application's timeout).
        let r = s.sync(&desired(vec![
            (
                dns,
                plan(FrontendKind::ClusterIp, vec![udp("10.244.0.2:53")]),
            ),
            (
                web,
                plan(FrontendKind::ClusterIp, vec![ep("10.244.0.4:8080", true)]),
            ),
        ]));
        assert_eq!(r.udp_departed, gone(&["10.244.0.3:53"]));
        // The frontend goes: its last backend goes with it.
        let r = s.sync(&desired(vec![(
            web,
            plan(FrontendKind::ClusterIp, vec![ep("10.244.0.4:8080", true)]),
        )]));
        assert_eq!(r.udp_departed, gone(&["10.244.0.2:53"]));
    }

    #[test]
    fn a_restart_continues_after_ids_only_conntrack_still_names() {
        let mut m = FakeMaps::new();
        let key = petrel_common::CtKey::default();
        m.ct.insert(
            key,
            petrel_common::CtValue {
                backend_id: 9,
                rev_nat_id: 5,
                ..Default::default()
            },
        );
        let mut s = syncer(m);
        s.sync(&one_service());
        let l = lines(&s);
        assert!(
            l.contains(&"BE 10 10.244.0.2:8080 active".to_string()),
            "{l:?}"
        );
        assert!(l.contains(&"REVNAT 6 10.96.0.1:80".to_string()), "{l:?}");
    }
}
