//! Adoption after a restart: what the service maps hold, read once per map (SERVICES, BACKENDS,
//! REV_NAT, SRC_RANGES, and MAGLEV when a frontend uses a ring), kept in a compact form so the
//! first sync can tell, frontend by frontend, whether `upsert_service` would write anything at
//! all (`ServiceMaps::holds`). A frontend the maps already hold as desired is not rewritten, its
//! Maglev ring included (16,381 positions each by default).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use petrel_common::{Backend, RevNat, SCOPE_EXTERNAL, SCOPE_INTERNAL, SVC_F_MAGLEV, ServiceKey};

use super::{
    MapStore, MapsError, ServiceMaps, codec,
    writer::{ScopeLayout, layout},
};
use crate::model::{Frontend, ServiceEntry};

/// One frontend as the maps hold it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    pub external: ScopeLayout,
    pub internal: Option<ScopeLayout>,
    /// The REV_NAT entry of the external master's id.
    pub rev_nat: Option<RevNat>,
    /// Every slot holds its master's value with its backend id, slots 1..=count and no other:
    /// what `upsert_service` leaves. False after an interrupted write (or a foreign writer):
    /// the frontend is rewritten.
    pub exact: bool,
}

impl Held {
    pub fn master(&self) -> &petrel_common::ServiceValue {
        &self.external.master
    }
}

/// What the service maps held at adoption.
#[derive(Debug, Default)]
pub struct Adopted {
    /// Frontends with an external master entry (what is programmed), by frontend.
    pub services: BTreeMap<Frontend, Held>,
    /// The BACKENDS map.
    pub backends: Vec<(u32, Backend)>,
}

/// One scope's entries (sorted by slot) as a layout, and whether they are exactly what the
/// writer leaves.
fn scope(entries: &[(ServiceKey, petrel_common::ServiceValue)]) -> Option<(ScopeLayout, bool)> {
    let (k0, master) = entries.first()?;
    if k0.slot != 0 {
        return None;
    }
    let mut exact = entries.len() == usize::from(master.count) + 1;
    let mut ids = Vec::with_capacity(entries.len().saturating_sub(1));
    for (n, (k, v)) in entries.iter().enumerate().skip(1) {
        exact &= k.scope == k0.scope
            && usize::from(k.slot) == n
            && petrel_common::ServiceValue {
                backend_id: v.backend_id,
                ..*master
            } == *v;
        ids.push(v.backend_id);
    }
    Some((
        ScopeLayout {
            master: *master,
            ids,
        },
        exact,
    ))
}

impl<S: MapStore> ServiceMaps<S> {
    /// Reads what the maps hold, each map once: SERVICES grouped by frontend, BACKENDS (whose
    /// addresses name Maglev positions from then on), REV_NAT, SRC_RANGES (kept for the range
    /// writes), and MAGLEV when a frontend holds a ring (kept, so ring writes after a restart
    /// are deltas too).
    pub fn adopt(&mut self) -> Result<Adopted, MapsError> {
        let mut entries = self.store().services()?;
        // By frontend, scope, slot: each frontend's entries are one run.
        let order = |k: &ServiceKey| {
            (
                u32::from_be(k.addr_be),
                u16::from_be(k.port_be),
                k.proto,
                k.scope,
                k.slot,
            )
        };
        entries.sort_unstable_by_key(|(k, _)| order(k));
        let rev_nats: HashMap<u32, RevNat> = self.store().rev_nats()?.into_iter().collect();
        let mut services = BTreeMap::new();
        for run in entries.chunk_by(|(a, _), (b, _)| {
            (a.addr_be, a.port_be, a.proto) == (b.addr_be, b.port_be, b.proto)
        }) {
            let Some(fe) = codec::frontend(&run[0].0) else {
                continue;
            };
            let split = run.partition_point(|(k, _)| k.scope < SCOPE_INTERNAL);
            let (ext, int) = run.split_at(split);
            let Some((external, ext_exact)) = ext
                .first()
                .filter(|(k, _)| k.scope == SCOPE_EXTERNAL)
                .and_then(|_| scope(ext))
            else {
                // Slots without a master: nothing serves them (left as before).
                continue;
            };
            let (internal, int_exact) = match scope(int) {
                Some((l, exact)) => (Some(l), exact),
                None => (None, int.is_empty()),
            };
            services.insert(
                fe,
                Held {
                    rev_nat: rev_nats.get(&external.master.rev_nat_id).copied(),
                    external,
                    internal,
                    exact: ext_exact && int_exact,
                },
            );
        }
        drop(entries);
        self.ranges()?;
        let backends = self.store().backends()?;
        for (id, b) in &backends {
            self.names.insert(*id, codec::backend_addr(b));
        }
        let rings: BTreeSet<u32> = services
            .values()
            .filter(|h| h.master().flags & SVC_F_MAGLEV != 0)
            .map(|h| h.master().maglev_ring)
            .collect();
        let m = self.maglev_size()?;
        if !rings.is_empty() && m > 0 {
            let all = self.store().maglev_all()?;
            for ring in rings {
                let base = ring as usize * m as usize;
                let mut table: Vec<u32> = all
                    .get(base..)
                    .unwrap_or_default()
                    .iter()
                    .take(m as usize)
                    .copied()
                    .collect();
                table.resize(m as usize, 0);
                self.rings.seed(ring, table);
            }
        }
        Ok(Adopted { services, backends })
    }

    /// Whether the maps hold `entry` exactly as `upsert_service` would write it (as `held`
    /// says they held it at adoption): master and slots of both scopes, reverse NAT, source
    /// ranges and the Maglev ring's every position. Its backends must be in the maps already.
    pub fn holds(&mut self, entry: &ServiceEntry, held: &Held) -> Result<bool, MapsError> {
        let want = layout(entry)?;
        if !held.exact
            || held.external != want.external
            || held.internal != want.internal
            || held.rev_nat != Some(codec::rev_nat(entry.frontend))
        {
            return Ok(false);
        }
        let ranges: BTreeSet<ipnet::Ipv4Net> = entry.source_ranges.iter().copied().collect();
        let have = self.ranges()?.get(&entry.rev_nat_id);
        if have.map_or(!ranges.is_empty(), |h| *h != ranges) {
            return Ok(false);
        }
        if let Some(ring) = entry.maglev_ring {
            let table = self.maglev_table(&want.external.ids)?;
            if !table.is_empty() && self.rings.held(ring) != Some(table.as_slice()) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Removes the source ranges of rev-NAT ids not in `live` (services gone while no agent
    /// ran, or a sync stopped between its writes). Returns how many went.
    pub fn remove_ranges_except(&mut self, live: &BTreeSet<u32>) -> Result<usize, MapsError> {
        let stale: Vec<u32> = self
            .ranges()?
            .keys()
            .filter(|id| !live.contains(id))
            .copied()
            .collect();
        let mut n = 0;
        for id in stale {
            n += self.ranges()?.get(&id).map_or(0, BTreeSet::len);
            self.prune_ranges(id, &[])?;
        }
        Ok(n)
    }
}
