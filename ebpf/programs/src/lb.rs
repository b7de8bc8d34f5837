//! Service lookup and backend selection, shared by the socket and TC hooks. Every step is a hash
//! lookup: O(1) in the number of services and backends.

use aya_ebpf::helpers::bpf_get_prandom_u32;
use petrel_common::{
    Backend, SCOPE_EXTERNAL, SCOPE_INTERNAL, SVC_F_TWO_SCOPES, ServiceKey, ServiceValue, stat,
};

use crate::maps::{BACKENDS, SERVICES, count};

/// The frontend a flow was sent to.
#[derive(Clone, Copy)]
pub struct Frontend {
    pub addr_be: u32,
    pub port_be: u16,
    pub proto: u8,
}

pub enum Lookup {
    /// Not a service frontend: leave the packet alone.
    NotService,
    /// A service with no usable backend.
    NoBackend,
    Selected {
        backend_id: u32,
        backend: Backend,
        rev_nat_id: u16,
    },
}

#[inline(always)]
fn master(fe: &Frontend, scope: u8) -> Option<ServiceValue> {
    let key = ServiceKey {
        addr_be: fe.addr_be,
        port_be: fe.port_be,
        slot: 0,
        proto: fe.proto,
        scope,
        _pad: [0; 2],
    };
    // SAFETY: the value is copied out at once.
    unsafe { SERVICES.get(key) }.copied()
}

/// Finds the service of `fe` as seen from inside the cluster and picks a backend at random.
#[inline(always)]
pub fn select_internal(fe: &Frontend) -> Lookup {
    let Some(mut svc) = master(fe, SCOPE_EXTERNAL) else {
        return Lookup::NotService;
    };
    let mut scope = SCOPE_EXTERNAL;
    if svc.flags & SVC_F_TWO_SCOPES != 0 {
        match master(fe, SCOPE_INTERNAL) {
            Some(v) => {
                svc = v;
                scope = SCOPE_INTERNAL;
            }
            None => return Lookup::NoBackend,
        }
    }
    if svc.count == 0 {
        count(stat::NO_BACKEND);
        return Lookup::NoBackend;
    }
    // SAFETY: plain helper call.
    let rnd = unsafe { bpf_get_prandom_u32() };
    let slot = (rnd % svc.count as u32) as u16 + 1;
    let key = ServiceKey {
        addr_be: fe.addr_be,
        port_be: fe.port_be,
        slot,
        proto: fe.proto,
        scope,
        _pad: [0; 2],
    };
    // SAFETY: copied out at once.
    let Some(slot_val) = (unsafe { SERVICES.get(key) }).copied() else {
        count(stat::BACKEND_MISSING);
        return Lookup::NoBackend;
    };
    match backend(slot_val.backend_id) {
        Some(backend) => Lookup::Selected {
            backend_id: slot_val.backend_id,
            backend,
            rev_nat_id: svc.rev_nat_id,
        },
        None => {
            count(stat::BACKEND_MISSING);
            Lookup::NoBackend
        }
    }
}

#[inline(always)]
pub fn backend(id: u32) -> Option<Backend> {
    // SAFETY: copied out at once.
    unsafe { BACKENDS.get(id) }.copied()
}
