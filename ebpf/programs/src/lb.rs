//! Service lookup and backend selection, shared by the socket and TC hooks. Every step is a hash
//! or array lookup: O(1) in the number of services and backends.

use aya_ebpf::{
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
    maps::lpm_trie::Key,
};
use petrel_common::{
    AFFINITY_POS_MAGLEV, AffinityKey, AffinityValue, BACKEND_F_TERMINATING, Backend,
    SCOPE_EXTERNAL, SCOPE_INTERNAL, SRC_RANGE_ID_BITS, SVC_F_AFFINITY, SVC_F_DROP_EMPTY,
    SVC_F_MAGLEV, SVC_F_SRC_RANGES, SVC_F_TWO_SCOPES, ServiceKey, ServiceValue, SrcRange, config,
    stat,
};

use crate::maps::{AFFINITY, BACKENDS, MAGLEV, SERVICES, SRC_RANGES, count};

/// The frontend a flow was sent to.
#[derive(Clone, Copy)]
pub struct Frontend {
    pub addr_be: u32,
    pub port_be: u16,
    pub proto: u8,
}

/// Who is asking, for session affinity and Maglev.
pub struct Client {
    /// `AFFINITY_CLIENT_IP` or `AFFINITY_NETNS`.
    pub kind: u8,
    pub id: u64,
    /// Flow hash for Maglev (`petrel_common::flow_hash` of the client tuple).
    pub hash: u32,
    /// Use the service's Maglev ring when it has one (the TC path: flows from outside, where
    /// every node must pick alike). Socket-LB picks at random per connection, as kube-proxy does.
    pub maglev: bool,
    /// The client's address for loadBalancerSourceRanges (network order); 0: not known (a pod's
    /// unbound socket at connect()).
    pub saddr_be: u32,
}

pub enum Lookup {
    /// Not a service frontend: leave the packet alone. Also a frontend with source ranges when
    /// the client's address is not known yet (socket-LB in a pod): the TC path decides.
    NotService,
    /// A service with no usable backend: refuse at once.
    Reject,
    /// Drop silently (Local policy with no local backend, or inconsistent maps).
    Drop,
    Selected {
        backend_id: u32,
        backend: Backend,
        svc: ServiceValue,
    },
}

#[inline(always)]
fn key(fe: &Frontend, slot: u16, scope: u8) -> ServiceKey {
    ServiceKey {
        addr_be: fe.addr_be,
        port_be: fe.port_be,
        slot,
        proto: fe.proto,
        scope,
        _pad: [0; 2],
    }
}

#[inline(always)]
fn get_svc(k: &ServiceKey) -> Option<ServiceValue> {
    // SAFETY: the value is copied out at once.
    unsafe { SERVICES.get(k) }.copied()
}

#[inline(always)]
pub fn backend(id: u32) -> Option<Backend> {
    // SAFETY: copied out at once.
    unsafe { BACKENDS.get(id) }.copied()
}

/// Whether a tracked connection's backend still exists at the address it was given (ids are
/// not reused while conntrack may name them; the address check makes that certain).
#[inline(always)]
pub fn still_serves(v: &petrel_common::CtValue) -> bool {
    backend(v.backend_id).is_some_and(|b| b.addr_be == v.dst_addr_be && b.port_be == v.dst_port_be)
}

/// The master entry that applies: external traffic uses scope 0; in-cluster traffic uses the
/// internal scope when the service has one (a Local traffic policy splits the two).
#[inline(always)]
pub fn service(fe: &Frontend, internal: bool) -> Option<(ServiceValue, u8)> {
    let svc = get_svc(&key(fe, 0, SCOPE_EXTERNAL))?;
    if internal && svc.flags & SVC_F_TWO_SCOPES != 0 {
        return get_svc(&key(fe, 0, SCOPE_INTERNAL)).map(|v| (v, SCOPE_INTERNAL));
    }
    Some((svc, SCOPE_EXTERNAL))
}

/// Whether an affinity entry's backend is still where it was chosen (its Maglev position or its
/// slot): a backend that left the service is gone from there. Slots are rewritten in place, so
/// a change of the backend set may also move a backend that stayed: that client is then
/// balanced anew, once.
#[inline(always)]
fn still_there(fe: &Frontend, a: &AffinityValue) -> bool {
    if a.pos == 0 {
        return true;
    }
    if a.pos & AFFINITY_POS_MAGLEV != 0 {
        return MAGLEV
            .get(a.pos & !AFFINITY_POS_MAGLEV)
            .is_some_and(|id| *id == a.backend_id);
    }
    let (scope, slot) = ((a.pos >> 16) as u8, a.pos as u16);
    get_svc(&key(fe, slot, scope)).is_some_and(|v| v.backend_id == a.backend_id)
}

#[inline(always)]
pub fn select(fe: &Frontend, internal: bool, client: &Client) -> Lookup {
    let Some((svc, scope)) = service(fe, internal) else {
        return Lookup::NotService;
    };
    // No usable endpoint anywhere: rejected whoever asks, before the source ranges (kube-proxy
    // builds its firewall chain only for a service with endpoints; without, its filter rule
    // REJECTs every client).
    if svc.count == 0 && svc.flags & SVC_F_DROP_EMPTY == 0 {
        count(stat::REJECTED);
        return Lookup::Reject;
    }
    if svc.flags & SVC_F_SRC_RANGES != 0 {
        if client.saddr_be == 0 {
            return Lookup::NotService;
        }
        let k = Key::new(
            SRC_RANGE_ID_BITS + 32,
            SrcRange {
                rev_nat_id: svc.rev_nat_id,
                addr_be: client.saddr_be,
            },
        );
        if SRC_RANGES.get(&k).is_none() {
            // kube-proxy's firewall chain ends in a DROP (no reject) when no range matched.
            count(stat::DROP_SRC_RANGE);
            return Lookup::Drop;
        }
    }
    if svc.count == 0 {
        // A Local policy's set is empty while other nodes have endpoints: dropped, as
        // kube-proxy's "has no local endpoints" rule.
        count(stat::DROP_POLICY_EMPTY);
        return Lookup::Drop;
    }
    let affinity_key = AffinityKey {
        client: client.id,
        rev_nat_id: svc.rev_nat_id,
        kind: client.kind,
        _pad: [0; 3],
    };
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    if svc.flags & SVC_F_AFFINITY != 0 {
        // SAFETY: copied out at once.
        if let Some(a) = unsafe { AFFINITY.get(affinity_key) }.copied() {
            let timeout_ns = u64::from(svc.affinity_timeout_s) * 1_000_000_000;
            if now.wrapping_sub(a.last_used_ns) <= timeout_ns {
                // Only to an active backend still in the service: a terminating one takes no
                // new connections, even from clients it served, and one that left the service
                // (not ready, removed) is found gone from where it was chosen. (The agent also
                // removes affinity entries whose backend left the service.)
                if let Some(b) = backend(a.backend_id)
                    .filter(|b| b.flags & BACKEND_F_TERMINATING == 0 && still_there(fe, &a))
                {
                    let fresh = AffinityValue {
                        last_used_ns: now,
                        ..a
                    };
                    let _ = AFFINITY.insert(affinity_key, fresh, 0);
                    count(stat::AFFINITY_HIT);
                    return Lookup::Selected {
                        backend_id: a.backend_id,
                        backend: b,
                        svc,
                    };
                }
            }
        }
    }
    let size = crate::maps::config(config::MAGLEV_SIZE);
    let (backend_id, pos) = if client.maglev && svc.flags & SVC_F_MAGLEV != 0 && size != 0 {
        let idx = svc
            .maglev_ring
            .wrapping_mul(size)
            .wrapping_add(client.hash % size);
        let id = match MAGLEV.get(idx) {
            Some(id) => *id,
            None => 0,
        };
        (id, AFFINITY_POS_MAGLEV | (idx & !AFFINITY_POS_MAGLEV))
    } else {
        // SAFETY: plain helper call.
        let rnd = unsafe { bpf_get_prandom_u32() };
        let slot = (rnd % u32::from(svc.count)) as u16 + 1;
        let id = get_svc(&key(fe, slot, scope)).map_or(0, |v| v.backend_id);
        (id, (u32::from(scope) << 16) | u32::from(slot))
    };
    let Some(b) = backend(backend_id) else {
        count(stat::DROP_BACKEND_MISSING);
        return Lookup::Drop;
    };
    if svc.flags & SVC_F_AFFINITY != 0 {
        let v = AffinityValue {
            last_used_ns: now,
            backend_id,
            pos,
        };
        let _ = AFFINITY.insert(affinity_key, v, 0);
    }
    Lookup::Selected {
        backend_id,
        backend: b,
        svc,
    }
}
