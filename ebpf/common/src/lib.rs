#![no_std]
//! Types shared by petrel's eBPF programs and userspace.
//!
//! Rules (see STYLE.md): `#[repr(C)]`, `Copy`, fixed-width integers only, explicit padding so hash
//! keys never carry uninitialised bytes, sizes locked by `const` assertions and golden-bytes
//! tests. Fields ending in `_be` hold network byte order exactly as on the wire, so the packet
//! path compares header bytes without swapping; userspace converts in one place
//! (`petrel::maps`).
//!
//! The service layout follows Cilium's `lb4_key`/`lb4_service` split: one hash map keyed by
//! (VIP, port, protocol, scope, slot). Slot 0 is the service's master entry (backend count,
//! reverse-NAT id, flags); slots 1..=count name a backend id. Backends live in their own map, so a
//! backend shared by many services is written once.

use core::mem::size_of;

/// Version suffix of every pinned map name. A layout change is a new version plus a migration,
/// never a silent reinterpretation of old bytes.
pub const MAP_VERSION: &str = "v1";

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// `ServiceKey::scope` for lookups made on behalf of traffic from outside the node.
pub const SCOPE_EXTERNAL: u8 = 0;
/// `ServiceKey::scope` for in-cluster traffic when the service has a separate internal view
/// (internalTrafficPolicy / externalTrafficPolicy Local keep two backend sets).
pub const SCOPE_INTERNAL: u8 = 1;

/// Key of the SERVICES map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ServiceKey {
    pub addr_be: u32,
    pub port_be: u16,
    /// 0: master entry; 1..=count: backend slots.
    pub slot: u16,
    pub proto: u8,
    pub scope: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<ServiceKey>() == 12);

/// `ServiceValue::flags`: sessionAffinity ClientIP.
pub const SVC_F_AFFINITY: u16 = 1 << 0;
/// `ServiceValue::flags`: the service has a separate SCOPE_INTERNAL entry set.
pub const SVC_F_TWO_SCOPES: u16 = 1 << 1;
/// `ServiceValue::flags`: the frontend is a NodePort / external address (reached from outside).
pub const SVC_F_EXTERNAL: u16 = 1 << 2;

/// Value of the SERVICES map. In the master entry (slot 0) `backend_id` is unused and `count`
/// is the number of slots; in a slot entry `backend_id` names the backend and the rest is copied
/// from the master for debugging.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServiceValue {
    pub backend_id: u32,
    pub count: u16,
    pub rev_nat_id: u16,
    pub flags: u16,
    pub _pad: [u8; 2],
    pub affinity_timeout_s: u32,
}
const _: () = assert!(size_of::<ServiceValue>() == 16);

/// `Backend::state` values, as EndpointSlice conditions reduce to them.
pub const BACKEND_ACTIVE: u8 = 0;
pub const BACKEND_TERMINATING: u8 = 1;

/// Value of the BACKENDS map (key: backend id, u32, never 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Backend {
    pub addr_be: u32,
    pub port_be: u16,
    pub proto: u8,
    pub state: u8,
}
const _: () = assert!(size_of::<Backend>() == 8);

/// Value of the REV_NAT map (key: rev_nat_id as u32): the frontend a reply must appear to come
/// from.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RevNat {
    pub addr_be: u32,
    pub port_be: u16,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<RevNat>() == 8);

/// Key of the CONNTRACK map: the flow as the client sent it (before DNAT).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct CtKey {
    pub saddr_be: u32,
    pub daddr_be: u32,
    pub sport_be: u16,
    pub dport_be: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<CtKey>() == 16);

/// Value of the CONNTRACK map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CtValue {
    pub backend_id: u32,
    pub rev_nat_id: u16,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<CtValue>() == 8);

/// Key of the REV_CT map: a reply as the backend sends it (backend -> client).
pub type RevCtKey = CtKey;

/// Indices into the per-CPU STATS array.
pub mod stat {
    /// Packets seen by the TC program.
    pub const TC_SEEN: u32 = 0;
    /// Packets DNATed to a backend by TC.
    pub const TC_DNAT: u32 = 1;
    /// Replies reverse-NATed by TC.
    pub const TC_REVNAT: u32 = 2;
    /// connect()/sendmsg() translated at the socket.
    pub const SOCK_TRANSLATED: u32 = 3;
    /// Service known but no backend usable: rejected.
    pub const NO_BACKEND: u32 = 4;
    /// A slot pointed at a backend id that is missing (should never happen: write order).
    pub const BACKEND_MISSING: u32 = 5;
    /// A checksum or store helper failed.
    pub const REWRITE_ERROR: u32 = 6;
    pub const COUNT: u32 = 8;

    pub const NAMES: [&str; 7] = [
        "tc_seen",
        "tc_dnat",
        "tc_revnat",
        "sock_translated",
        "no_backend",
        "backend_missing",
        "rewrite_error",
    ];
}

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: all of these are repr(C), Copy, made only of integers and explicit padding.
    unsafe impl aya::Pod for ServiceKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ServiceValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Backend {}
    // SAFETY: as above.
    unsafe impl aya::Pod for RevNat {}
    // SAFETY: as above.
    unsafe impl aya::Pod for CtKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for CtValue {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes<T: Copy>(v: &T) -> &[u8] {
        // SAFETY: T is one of the repr(C) integer-only types above; every byte is initialised
        // because padding is explicit.
        unsafe { core::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }
    }

    #[test]
    fn service_key_golden_bytes() {
        let k = ServiceKey {
            addr_be: u32::from_be_bytes([10, 96, 0, 10]).to_be(),
            port_be: 80u16.to_be(),
            slot: 3,
            proto: IPPROTO_TCP,
            scope: SCOPE_INTERNAL,
            _pad: [0; 2],
        };
        assert_eq!(bytes(&k), &[10, 96, 0, 10, 0, 80, 3, 0, 6, 1, 0, 0]);
    }

    #[test]
    fn ct_key_golden_bytes() {
        let k = CtKey {
            saddr_be: u32::from_be_bytes([10, 0, 0, 1]).to_be(),
            daddr_be: u32::from_be_bytes([10, 96, 0, 1]).to_be(),
            sport_be: 40000u16.to_be(),
            dport_be: 53u16.to_be(),
            proto: IPPROTO_UDP,
            _pad: [0; 3],
        };
        assert_eq!(
            bytes(&k),
            &[10, 0, 0, 1, 10, 96, 0, 1, 0x9c, 0x40, 0, 53, 17, 0, 0, 0]
        );
    }

    #[test]
    fn backend_golden_bytes() {
        let b = Backend {
            addr_be: u32::from_be_bytes([10, 244, 1, 5]).to_be(),
            port_be: 8080u16.to_be(),
            proto: IPPROTO_TCP,
            state: BACKEND_TERMINATING,
        };
        assert_eq!(bytes(&b), &[10, 244, 1, 5, 0x1f, 0x90, 6, 1]);
    }

    #[test]
    fn stat_names_cover_counters() {
        assert!(stat::NAMES.len() as u32 <= stat::COUNT);
        assert_eq!(stat::NAMES[stat::REWRITE_ERROR as usize], "rewrite_error");
    }
}
