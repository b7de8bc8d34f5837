//! The read side: what the maps hold, as typed values netctl prints and serialises (the JSON
//! strings are part of netctl's interface: keep them).

use std::{collections::BTreeMap, net::SocketAddrV4};

use petrel_common::{
    BACKEND_F_REMOTE, Backend, CT_F_INBOUND, CT_F_MASQ, CT_F_SNAT, SCOPE_EXTERNAL, SCOPE_INTERNAL,
    SVC_F_AFFINITY, SVC_F_MAGLEV, SVC_F_TWO_SCOPES, stat,
};
use serde::Serialize;

pub use crate::model::{BackendState, ServiceFlag};
use crate::{
    maps::{MapStore, MapsError, ServiceMaps, codec, writer::master},
    model::{Frontend, Proto},
};

/// What a service frontend is programmed to, as read back from the maps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProgrammedService {
    pub frontend: Frontend,
    pub rev_nat_id: u32,
    pub flags: Vec<ServiceFlag>,
    pub affinity_timeout_s: Option<u32>,
    pub maglev_ring: Option<u32>,
    /// Backends for traffic from outside the node (and for all traffic without `internal`).
    pub backends: Vec<ProgrammedBackend>,
    /// Backends for in-cluster traffic when a Local policy splits the scopes.
    pub internal_backends: Option<Vec<ProgrammedBackend>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProgrammedBackend {
    pub id: u32,
    pub proto: Option<Proto>,
    /// None when a slot names a backend id that is not in the backend map.
    pub addr: Option<SocketAddrV4>,
    pub state: BackendState,
    pub remote: bool,
}

fn programmed_backend(id: u32, b: &Backend) -> ProgrammedBackend {
    ProgrammedBackend {
        id,
        proto: Proto::from_number(b.proto),
        addr: Some(codec::backend_addr(b)),
        state: codec::backend_state(b),
        remote: b.flags & BACKEND_F_REMOTE != 0,
    }
}

/// One tracked flow, as the TC path recorded it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TrackedFlow {
    pub proto: Option<Proto>,
    pub client: SocketAddrV4,
    pub frontend: SocketAddrV4,
    pub backend_id: u32,
    pub rev_nat_id: u32,
    /// The source the flow is rewritten to (SNAT to the node, or the hairpin address).
    pub snat: Option<SocketAddrV4>,
    /// Pod egress masqueraded to the node address (no service: `frontend` is the destination).
    pub masquerade: bool,
    /// A flow from outside the cluster to a pod (keyed by the pod's reply): left untranslated.
    pub inbound: bool,
}

/// The backends in the slots of one scope of `fe`.
pub(crate) fn read_scope(
    store: &impl MapStore,
    fe: Frontend,
    scope: u8,
    count: u16,
) -> Result<Vec<ProgrammedBackend>, MapsError> {
    let mut backends = Vec::with_capacity(count as usize);
    for slot in 1..=count {
        let Some(v) = store.service_get(&codec::service_key(fe, slot, scope))? else {
            continue;
        };
        let id = v.backend_id;
        backends.push(match store.backend_get(id)? {
            Some(b) => programmed_backend(id, &b),
            None => ProgrammedBackend {
                id,
                proto: None,
                addr: None,
                state: BackendState::Missing,
                remote: false,
            },
        });
    }
    Ok(backends)
}

impl<S: MapStore> ServiceMaps<S> {
    /// Every programmed frontend with its backends, sorted by frontend.
    pub fn dump(&self) -> Result<Vec<ProgrammedService>, MapsError> {
        let store = self.store();
        let masters: BTreeMap<Frontend, _> = store
            .services()?
            .into_iter()
            .filter(|(k, _)| k.slot == 0 && k.scope == SCOPE_EXTERNAL)
            .filter_map(|(k, v)| Some((codec::frontend(&k)?, v)))
            .collect();
        let mut out = Vec::with_capacity(masters.len());
        for (fe, m) in masters {
            let internal_backends = match master(store, fe, SCOPE_INTERNAL)? {
                Some(im) if m.flags & SVC_F_TWO_SCOPES != 0 => {
                    Some(read_scope(store, fe, SCOPE_INTERNAL, im.count)?)
                }
                _ => None,
            };
            out.push(ProgrammedService {
                frontend: fe,
                rev_nat_id: m.rev_nat_id,
                flags: codec::service_flags(m.flags),
                affinity_timeout_s: (m.flags & SVC_F_AFFINITY != 0).then_some(m.affinity_timeout_s),
                maglev_ring: (m.flags & SVC_F_MAGLEV != 0).then_some(m.maglev_ring),
                backends: read_scope(store, fe, SCOPE_EXTERNAL, m.count)?,
                internal_backends,
            });
        }
        Ok(out)
    }

    /// Every backend in the backend map, by id.
    pub fn backends(&self) -> Result<Vec<ProgrammedBackend>, MapsError> {
        let mut out: Vec<ProgrammedBackend> = self
            .store()
            .backends()?
            .iter()
            .map(|(id, b)| programmed_backend(*id, b))
            .collect();
        out.sort_by_key(|b| b.id);
        Ok(out)
    }

    /// Datapath counters summed over CPUs, by name.
    pub fn stats(&self) -> Result<Vec<(&'static str, u64)>, MapsError> {
        let mut out = Vec::with_capacity(stat::NAMES.len());
        for (i, name) in (0u32..).zip(stat::NAMES) {
            out.push((name, self.store().stat(i)?));
        }
        Ok(out)
    }

    /// The connections in conntrack, by their forward entry (at most `limit` entries read).
    pub fn conntrack(&self, limit: usize) -> Result<Vec<TrackedFlow>, MapsError> {
        Ok(self
            .store()
            .ct_entries(limit)?
            .into_iter()
            .filter(|(k, _)| k.dir == petrel_common::CT_DIR_FORWARD)
            .map(|(k, v)| TrackedFlow {
                proto: Proto::from_number(k.proto),
                client: codec::socket(k.saddr_be, k.sport_be),
                frontend: codec::socket(k.daddr_be, k.dport_be),
                backend_id: v.backend_id,
                rev_nat_id: v.rev_nat_id,
                snat: (v.flags & CT_F_SNAT != 0)
                    .then(|| codec::socket(v.src_addr_be, v.src_port_be)),
                masquerade: v.flags & CT_F_MASQ != 0,
                inbound: v.flags & CT_F_INBOUND != 0,
            })
            .collect())
    }
}
