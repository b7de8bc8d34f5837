//! Ordered writes of services and backends over any `MapStore`: the one place that decides in
//! which order the datapath sees a service change.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
};

pub use petrel_common::CtLifetimes;
use petrel_common::{
    SCOPE_EXTERNAL, SCOPE_INTERNAL, SVC_F_AFFINITY, SVC_F_DROP_EMPTY, SVC_F_EXTERNAL,
    SVC_F_LOCAL_EXTERNAL, SVC_F_MAGLEV, SVC_F_SRC_RANGES, SVC_F_TWO_SCOPES, ServiceValue, config,
};

use super::{MapStore, MapsError, PinnedMaps, codec, maglev::Rings};
use crate::{
    maglev,
    model::{BackendSpec, Frontend, ServiceEntry},
};

/// The service maps of one datapath, written in an order that never exposes a half-built
/// service to the packet path.
pub struct ServiceMaps<S: MapStore = PinnedMaps> {
    store: S,
    pub(super) rings: Rings,
    /// Backend id -> address, for Maglev names: kept from the writes so a ring update reads
    /// nothing back from the backend map.
    pub(super) names: BTreeMap<u32, SocketAddrV4>,
    /// SRC_RANGES by rev-NAT id, read from the map at the first use (so a restart knows what an
    /// earlier agent wrote) and kept from the writes after.
    pub(super) ranges: Option<BTreeMap<u32, BTreeSet<ipnet::Ipv4Net>>>,
}

impl ServiceMaps<PinnedMaps> {
    /// Opens the maps pinned in `maps_dir` (a datapath's `maps/` folder).
    pub fn open(maps_dir: &Path) -> Result<Self, MapsError> {
        Ok(ServiceMaps::new(PinnedMaps::open(maps_dir)?))
    }
}

/// The master entry (slot 0) of one scope of `fe`.
pub(crate) fn master(
    store: &impl MapStore,
    fe: Frontend,
    scope: u8,
) -> Result<Option<ServiceValue>, MapsError> {
    store.service_get(&codec::service_key(fe, 0, scope))
}

/// One scope as `upsert_service` writes it: its master entry and the backend ids of its slots
/// (slot n holds the master's value with `backend_id` ids[n - 1]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScopeLayout {
    pub master: ServiceValue,
    pub ids: Vec<u32>,
}

/// What `upsert_service` writes for an entry, apart from reverse NAT, source ranges and the
/// Maglev ring: the internal scope (when a Local policy splits them) and the external one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub internal: Option<ScopeLayout>,
    pub external: ScopeLayout,
}

/// The SERVICES entries of `entry`: master values (flags, counts, ring) and slot ids per scope.
pub fn layout(entry: &ServiceEntry) -> Result<Layout, MapsError> {
    let fe = entry.frontend;
    let scopes = entry.scopes();
    for set in std::iter::once(&scopes.external).chain(scopes.internal.as_ref()) {
        if set.len() > u16::MAX as usize {
            return Err(MapsError::TooManyBackends {
                frontend: fe,
                count: set.len(),
                max: u16::MAX as usize,
            });
        }
    }
    let mut common = 0;
    if entry.affinity_timeout_s.is_some() {
        common |= SVC_F_AFFINITY;
    }
    // Both scopes: in-cluster clients (the TC path from pods, socket-LB on the host) are
    // held to the ranges as well, as kube-proxy's firewall chain applies to every source.
    if !entry.source_ranges.is_empty() {
        common |= SVC_F_SRC_RANGES;
    }
    let base = ServiceValue {
        rev_nat_id: entry.rev_nat_id,
        affinity_timeout_s: entry.affinity_timeout_s.unwrap_or(0),
        ..Default::default()
    };
    let mut ext_flags = common;
    if entry.external {
        ext_flags |= SVC_F_EXTERNAL;
        if entry.external_local {
            ext_flags |= SVC_F_LOCAL_EXTERNAL;
        }
    }
    if scopes.external_filtered {
        ext_flags |= SVC_F_DROP_EMPTY;
    }
    let mut maglev_ring = 0;
    if let Some(ring) = entry.maglev_ring {
        ext_flags |= SVC_F_MAGLEV;
        maglev_ring = ring;
    }
    let internal = scopes.internal.map(|ids| {
        ext_flags |= SVC_F_TWO_SCOPES;
        let mut flags = common;
        if scopes.internal_filtered {
            flags |= SVC_F_DROP_EMPTY;
        }
        ScopeLayout {
            master: ServiceValue {
                count: ids.len() as u16,
                flags,
                ..base
            },
            ids,
        }
    });
    let external = ScopeLayout {
        master: ServiceValue {
            count: scopes.external.len() as u16,
            flags: ext_flags,
            maglev_ring,
            ..base
        },
        ids: scopes.external,
    };
    Ok(Layout { internal, external })
}

impl<S: MapStore> ServiceMaps<S> {
    pub fn new(store: S) -> Self {
        ServiceMaps {
            store,
            rings: Rings::default(),
            names: BTreeMap::new(),
            ranges: None,
        }
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    /// The node address external traffic to remote backends is SNATed to.
    pub fn set_node_ip(&mut self, ip: Ipv4Addr) -> Result<(), MapsError> {
        self.store.config_set(config::NODE_IP, codec::addr_be(ip))
    }

    /// The cluster's pod CIDR: pod egress to addresses outside it is masqueraded to the node
    /// address. None turns masquerading off.
    pub fn set_cluster_cidr(&mut self, cidr: Option<ipnet::Ipv4Net>) -> Result<(), MapsError> {
        let (addr, mask) = cidr.map_or((0, 0), |c| {
            (codec::addr_be(c.network()), codec::addr_be(c.netmask()))
        });
        // WARNING: mask first when turning off, address first when turning on: the datapath
        // never sees a mask with a stale address.
        self.store.config_set(config::CLUSTER_MASK, 0)?;
        self.store.config_set(config::CLUSTER_CIDR, addr)?;
        self.store.config_set(config::CLUSTER_MASK, mask)
    }

    /// Conntrack lifetimes per state (the datapath reads them at every packet; 0 would mean its
    /// built-in default, so every value is written as given).
    pub fn set_ct_lifetimes(&mut self, l: CtLifetimes) -> Result<(), MapsError> {
        self.store
            .config_set(config::CT_TCP_ESTABLISHED_S, l.tcp_established)?;
        self.store.config_set(config::CT_TCP_SYN_S, l.tcp_syn)?;
        self.store
            .config_set(config::CT_TCP_CLOSING_S, l.tcp_closing)?;
        self.store
            .config_set(config::CT_TCP_TIME_WAIT_S, l.tcp_time_wait)?;
        self.store.config_set(config::CT_OTHER_S, l.other)
    }

    /// The lifetimes the datapath uses (its defaults where a slot holds 0).
    pub fn ct_lifetimes(&self) -> Result<CtLifetimes, MapsError> {
        crate::conntrack::lifetimes(&self.store)
    }

    /// The NAT port range (inclusive) every rewritten source port comes from.
    ///
    /// WARNING: the datapath reads the two slots separately and falls back to the default range
    /// whenever they do not form a range (min 0 or max < min). Zeroing min first makes every
    /// intermediate state either the old range, the default range or the new one, never a
    /// mixture such as (old min, new max).
    pub fn set_nat_port_range(&mut self, min: u16, max: u16) -> Result<(), MapsError> {
        self.store.config_set(config::NAT_PORT_MIN, 0)?;
        self.store
            .config_set(config::NAT_PORT_MAX, u32::from(max))?;
        self.store.config_set(config::NAT_PORT_MIN, u32::from(min))
    }

    /// `--socket-lb-hostns-only`: socket-LB translates only for sockets in the network namespace
    /// with this cookie (the host's); None: in every namespace.
    ///
    /// WARNING: the datapath reads the two halves separately and treats (0, 0) as "everywhere".
    /// Turning it on writes the high half first, so the only intermediate state is (old low,
    /// new high): with the old value off (0, 0) and a host cookie below 2^32 (the kernel counts
    /// namespaces up from 1) that is still off. Turning it off clears the low half first: for a
    /// moment no namespace matches and new connections go to the TC path, never wrong backends.
    pub fn set_socket_lb_netns(&mut self, cookie: Option<u64>) -> Result<(), MapsError> {
        match cookie {
            Some(c) => {
                self.store
                    .config_set(config::SOCK_LB_NETNS_HI, (c >> 32) as u32)?;
                self.store.config_set(config::SOCK_LB_NETNS_LO, c as u32)
            }
            None => {
                self.store.config_set(config::SOCK_LB_NETNS_LO, 0)?;
                self.store.config_set(config::SOCK_LB_NETNS_HI, 0)
            }
        }
    }

    /// Size of each Maglev ring (must match how the MAGLEV map was sized).
    pub fn set_maglev_size(&mut self, m: u32) -> Result<(), MapsError> {
        self.rings = Rings::default();
        self.store.config_set(config::MAGLEV_SIZE, m)
    }

    pub fn maglev_size(&self) -> Result<u32, MapsError> {
        self.store.config_get(config::MAGLEV_SIZE)
    }

    pub fn upsert_backend(&mut self, b: &BackendSpec) -> Result<(), MapsError> {
        self.store.backend_put(b.id, codec::backend(b))?;
        self.names.insert(b.id, b.addr);
        Ok(())
    }

    /// Removes a backend. Flows pinned to it are re-balanced by the datapath on their next packet.
    pub fn remove_backend(&mut self, id: u32) -> Result<(), MapsError> {
        self.store.backend_del(id)?;
        self.names.remove(&id);
        Ok(())
    }

    /// Writes one scope's slots and then its master entry; removes slots beyond the new count.
    fn write_scope(
        &mut self,
        fe: Frontend,
        scope: u8,
        master_value: ServiceValue,
        ids: &[u32],
    ) -> Result<(), MapsError> {
        let old_count = master(&self.store, fe, scope)?.map_or(0, |m| m.count);
        for (i, id) in ids.iter().enumerate() {
            let slot = ServiceValue {
                backend_id: *id,
                ..master_value
            };
            let n = u16::try_from(i + 1).expect("checked against u16::MAX by upsert_service");
            self.store
                .service_put(codec::service_key(fe, n, scope), slot)?;
        }
        self.store
            .service_put(codec::service_key(fe, 0, scope), master_value)?;
        for slot in master_value.count + 1..=old_count {
            self.store
                .service_del(&codec::service_key(fe, slot, scope))?;
        }
        Ok(())
    }

    fn remove_scope(&mut self, fe: Frontend, scope: u8) -> Result<(), MapsError> {
        let Some(m) = master(&self.store, fe, scope)? else {
            return Ok(());
        };
        self.store.service_del(&codec::service_key(fe, 0, scope))?;
        for slot in 1..=m.count {
            self.store
                .service_del(&codec::service_key(fe, slot, scope))?;
        }
        Ok(())
    }

    /// The source ranges written for each rev-NAT id.
    pub(super) fn ranges(
        &mut self,
    ) -> Result<&mut BTreeMap<u32, BTreeSet<ipnet::Ipv4Net>>, MapsError> {
        if self.ranges.is_none() {
            let mut by_id: BTreeMap<u32, BTreeSet<ipnet::Ipv4Net>> = BTreeMap::new();
            for (id, net) in self.store.src_ranges()? {
                by_id.entry(id).or_default().insert(net);
            }
            self.ranges = Some(by_id);
        }
        Ok(self.ranges.get_or_insert_default())
    }

    /// Writes the prefixes of `rev_nat_id` that are not in the map yet.
    fn add_ranges(&mut self, rev_nat_id: u32, nets: &[ipnet::Ipv4Net]) -> Result<(), MapsError> {
        let have = self.ranges()?.get(&rev_nat_id).cloned().unwrap_or_default();
        for net in nets.iter().filter(|n| !have.contains(n)) {
            self.store.src_range_put(rev_nat_id, *net)?;
            self.ranges()?.entry(rev_nat_id).or_default().insert(*net);
        }
        Ok(())
    }

    /// Removes the prefixes of `rev_nat_id` other than `keep`.
    pub(super) fn prune_ranges(
        &mut self,
        rev_nat_id: u32,
        keep: &[ipnet::Ipv4Net],
    ) -> Result<(), MapsError> {
        let have = self.ranges()?.get(&rev_nat_id).cloned().unwrap_or_default();
        for net in have.iter().filter(|n| !keep.contains(n)) {
            self.store.src_range_del(rev_nat_id, *net)?;
            if let Some(set) = self.ranges()?.get_mut(&rev_nat_id) {
                set.remove(net);
            }
        }
        if self
            .ranges()?
            .get(&rev_nat_id)
            .is_some_and(BTreeSet::is_empty)
        {
            self.ranges()?.remove(&rev_nat_id);
        }
        Ok(())
    }

    /// The prefixes written for `rev_nat_id` (netctl, tests).
    pub fn source_ranges(&mut self, rev_nat_id: u32) -> Result<Vec<ipnet::Ipv4Net>, MapsError> {
        Ok(self
            .ranges()?
            .get(&rev_nat_id)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default())
    }

    /// Programs a frontend. The backends must already be in the backend map.
    ///
    /// WARNING: the order is what keeps lookups from ever seeing a half-built service: reverse
    /// NAT, the source ranges and the Maglev ring, then the internal scope (slots, then master),
    /// then the external scope's slots and finally its master entry, which is what lookups start
    /// from. Stale slots, source ranges no longer listed and a no-longer-needed internal scope
    /// are removed last (so a range change admits the union of both lists for a moment, never
    /// neither).
    pub fn upsert_service(&mut self, entry: &ServiceEntry) -> Result<(), MapsError> {
        let fe = entry.frontend;
        let layout = layout(entry)?;
        self.store
            .rev_nat_put(entry.rev_nat_id, codec::rev_nat(fe))?;

        self.add_ranges(entry.rev_nat_id, &entry.source_ranges)?;

        if let Some(ring) = entry.maglev_ring {
            self.write_maglev(ring, &layout.external.ids)?;
        }
        if let Some(internal) = &layout.internal {
            self.write_scope(fe, SCOPE_INTERNAL, internal.master, &internal.ids)?;
        }
        self.write_scope(
            fe,
            SCOPE_EXTERNAL,
            layout.external.master,
            &layout.external.ids,
        )?;
        if layout.internal.is_none() {
            self.remove_scope(fe, SCOPE_INTERNAL)?;
        }
        self.prune_ranges(entry.rev_nat_id, &entry.source_ranges)
    }

    /// The Maglev table of `ids` (one id per position, 0 where none; empty without a size).
    pub(super) fn maglev_table(&self, ids: &[u32]) -> Result<Vec<u32>, MapsError> {
        let m = self.maglev_size()?;
        if m == 0 {
            return Ok(Vec::new());
        }
        let mut named = Vec::with_capacity(ids.len());
        for id in ids {
            let addr = match self.names.get(id) {
                Some(a) => *a,
                // A backend this process has not written (none in practice: the reconciler
                // writes every backend it references before any service).
                None => match self.store.backend_get(*id)? {
                    Some(b) => codec::backend_addr(&b),
                    None => continue,
                },
            };
            named.push((*id, addr.to_string()));
        }
        let mut table = maglev::table(&named, m);
        table.resize(m as usize, 0);
        Ok(table)
    }

    /// Fills Maglev ring `ring` for `ids`, named by their addresses so every node computes the
    /// same table.
    fn write_maglev(&mut self, ring: u32, ids: &[u32]) -> Result<(), MapsError> {
        let m = self.maglev_size()?;
        if m == 0 {
            return Ok(());
        }
        let table = self.maglev_table(ids)?;
        self.rings.write(&mut self.store, ring, m, table)
    }

    /// Removes a frontend: the external master first (new flows stop matching), then the rest.
    pub fn remove_service(&mut self, frontend: Frontend) -> Result<(), MapsError> {
        let Some(m) = master(&self.store, frontend, SCOPE_EXTERNAL)? else {
            return Ok(());
        };
        self.remove_scope(frontend, SCOPE_EXTERNAL)?;
        self.remove_scope(frontend, SCOPE_INTERNAL)?;
        if m.flags & SVC_F_MAGLEV != 0 {
            self.rings.forget(m.maglev_ring);
        }
        self.prune_ranges(m.rev_nat_id, &[])?;
        self.store.rev_nat_del(m.rev_nat_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        maps::FakeMaps,
        model::{Endpoint, Proto},
    };

    fn maglev_writes(maps: &ServiceMaps<FakeMaps>) -> usize {
        let w = &maps.store().writes;
        w.iter().filter(|l| l.starts_with("MAGLEV")).count()
    }

    #[test]
    fn source_ranges_go_in_before_the_master_and_out_after_it() {
        let mut maps = ServiceMaps::new(FakeMaps::new());
        let b = BackendSpec {
            id: 1,
            addr: SocketAddrV4::new(Ipv4Addr::new(10, 244, 0, 1), 8080),
            proto: Proto::Tcp,
            terminating: false,
            remote: false,
        };
        maps.upsert_backend(&b).expect("backend");
        let fe = Frontend {
            addr: Ipv4Addr::new(203, 0, 113, 10),
            port: 80,
            proto: Proto::Tcp,
        };
        let entry = |ranges: &[&str]| ServiceEntry {
            external: true,
            source_ranges: ranges.iter().map(|r| r.parse().unwrap()).collect(),
            ..ServiceEntry::new(fe, 5, vec![Endpoint::ready(1)])
        };
        maps.upsert_service(&entry(&["192.0.2.0/24", "198.51.100.7/32"]))
            .expect("first");
        let w = &maps.store().writes;
        let master_at = w
            .iter()
            .position(|l| l.contains("slot=0"))
            .expect("master written");
        let ranges_at: Vec<usize> = (0..w.len())
            .filter(|i| w[*i].starts_with("SRCRANGE put 5 "))
            .collect();
        assert_eq!(ranges_at.len(), 2, "{w:?}");
        assert!(ranges_at.iter().all(|i| *i < master_at), "{w:?}");
        let m = master(maps.store(), fe, SCOPE_EXTERNAL).unwrap().unwrap();
        assert_ne!(m.flags & SVC_F_SRC_RANGES, 0);

        // One range replaced: the new one before the master, the old one removed after.
        let before = maps.store().writes.len();
        maps.upsert_service(&entry(&["192.0.2.0/24", "10.0.0.0/8"]))
            .expect("second");
        let w = &maps.store().writes[before..];
        let put = w
            .iter()
            .position(|l| l == "SRCRANGE put 5 10.0.0.0/8")
            .expect("put");
        let del = w
            .iter()
            .position(|l| l == "SRCRANGE del 5 198.51.100.7/32")
            .expect("del");
        let master_at = w.iter().position(|l| l.contains("slot=0")).expect("master");
        assert!(put < master_at && master_at < del, "{w:?}");
        assert_eq!(
            maps.source_ranges(5).unwrap(),
            [
                "10.0.0.0/8".parse::<ipnet::Ipv4Net>().unwrap(),
                "192.0.2.0/24".parse().unwrap()
            ]
        );

        // No ranges: the flag goes with the master, then the entries.
        maps.upsert_service(&entry(&[])).expect("third");
        let m = master(maps.store(), fe, SCOPE_EXTERNAL).unwrap().unwrap();
        assert_eq!(m.flags & SVC_F_SRC_RANGES, 0);
        assert!(maps.store().src_ranges.is_empty());

        // Removing the frontend removes its ranges; a fresh writer over the same maps (an
        // agent restart) finds what is there.
        maps.upsert_service(&entry(&["192.0.2.0/24"]))
            .expect("fourth");
        let mut again = ServiceMaps::new(std::mem::take(maps.store_mut()));
        assert_eq!(again.source_ranges(5).unwrap().len(), 1);
        again.remove_service(fe).expect("remove");
        assert!(again.store().src_ranges.is_empty());
    }

    #[test]
    fn a_backend_change_rewrites_only_the_maglev_positions_that_moved() {
        const SIZE: u32 = 251;
        let mut maps = ServiceMaps::new(FakeMaps::new());
        maps.set_maglev_size(SIZE).expect("size");
        for id in 1..=10u32 {
            let addr = SocketAddrV4::new(Ipv4Addr::new(10, 244, 0, id as u8), 8080);
            let b = BackendSpec {
                id,
                addr,
                proto: Proto::Tcp,
                terminating: false,
                remote: false,
            };
            maps.upsert_backend(&b).expect("backend");
        }
        let fe = Frontend {
            addr: Ipv4Addr::new(192, 168, 1, 10),
            port: 30080,
            proto: Proto::Tcp,
        };
        let entry = |n: u32| ServiceEntry {
            external: true,
            maglev_ring: Some(1),
            ..ServiceEntry::new(fe, 1, (1..=n).map(Endpoint::ready).collect())
        };
        maps.upsert_service(&entry(10)).expect("first");
        assert_eq!(
            maglev_writes(&maps),
            SIZE as usize,
            "the first write is whole"
        );
        maps.upsert_service(&entry(9)).expect("second");
        let moved = maglev_writes(&maps) - SIZE as usize;
        // Backend 10 held about a tenth of the ring; Maglev moves little else.
        assert!(
            (SIZE as usize / 20..SIZE as usize / 5).contains(&moved),
            "{moved} of {SIZE} positions rewritten"
        );
        let ring = maps.store().maglev.range(SIZE..2 * SIZE);
        assert!(ring.clone().all(|(_, id)| (1..=9).contains(id)));
        assert_eq!(ring.count(), SIZE as usize);
        // The same backends again write no position.
        maps.upsert_service(&entry(9)).expect("third");
        assert_eq!(maglev_writes(&maps), SIZE as usize + moved);
    }
}
