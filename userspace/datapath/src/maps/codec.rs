//! The one place where host-order `model` values become the network-byte-order fields of the
//! kernel's `petrel_common` types, and back.

use std::net::{Ipv4Addr, SocketAddrV4};

use petrel_common::{
    AFFINITY_CLIENT_IP, AffinityKey, BACKEND_F_REMOTE, BACKEND_F_TERMINATING, Backend, CtKey,
    RevNat, SVC_F_AFFINITY, SVC_F_DROP_EMPTY, SVC_F_EXTERNAL, SVC_F_LOCAL_EXTERNAL, SVC_F_MAGLEV,
    SVC_F_TWO_SCOPES, ServiceKey,
};

use crate::model::{BackendSpec, BackendState, Frontend, Proto, ServiceFlag};

/// An address as the kernel stores it (network order in a u32).
pub fn addr_be(a: Ipv4Addr) -> u32 {
    u32::from(a).to_be()
}

/// A socket address from its network-order address and port.
pub fn socket(addr_be: u32, port_be: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(u32::from_be(addr_be)), u16::from_be(port_be))
}

/// The SERVICES key of one slot (0: the master entry) of one scope of `fe`.
pub fn service_key(fe: Frontend, slot: u16, scope: u8) -> ServiceKey {
    ServiceKey {
        addr_be: addr_be(fe.addr),
        port_be: fe.port.to_be(),
        slot,
        proto: fe.proto.number(),
        scope,
        _pad: [0; 2],
    }
}

/// The frontend a SERVICES key belongs to (None for a protocol petrel does not program).
pub fn frontend(k: &ServiceKey) -> Option<Frontend> {
    let s = socket(k.addr_be, k.port_be);
    Some(Frontend {
        addr: *s.ip(),
        port: s.port(),
        proto: Proto::from_number(k.proto)?,
    })
}

pub fn backend(b: &BackendSpec) -> Backend {
    let mut flags = 0;
    if b.terminating {
        flags |= BACKEND_F_TERMINATING;
    }
    if b.remote {
        flags |= BACKEND_F_REMOTE;
    }
    Backend {
        addr_be: addr_be(*b.addr.ip()),
        port_be: b.addr.port().to_be(),
        proto: b.proto.number(),
        flags,
    }
}

pub fn backend_addr(b: &Backend) -> SocketAddrV4 {
    socket(b.addr_be, b.port_be)
}

/// What replies of `fe`'s flows are rewritten back to.
pub fn rev_nat(fe: Frontend) -> RevNat {
    RevNat {
        addr_be: addr_be(fe.addr),
        port_be: fe.port.to_be(),
        _pad: [0; 2],
    }
}

/// The forward conntrack key of a flow from `client` to `fe`.
pub fn ct_key(client: SocketAddrV4, fe: Frontend) -> CtKey {
    CtKey {
        saddr_be: addr_be(*client.ip()),
        daddr_be: addr_be(fe.addr),
        sport_be: client.port().to_be(),
        dport_be: fe.port.to_be(),
        proto: fe.proto.number(),
        dir: petrel_common::CT_DIR_FORWARD,
        _pad: [0; 2],
    }
}

/// The sessionAffinity ClientIP key of `client` for the service with `rev_nat_id`.
pub fn affinity_key(client: Ipv4Addr, rev_nat_id: u32) -> AffinityKey {
    AffinityKey {
        client: u64::from(addr_be(client)),
        rev_nat_id,
        kind: AFFINITY_CLIENT_IP,
        _pad: [0; 3],
    }
}

const FLAGS: [(u16, ServiceFlag); 7] = [
    (SVC_F_AFFINITY, ServiceFlag::Affinity),
    (SVC_F_TWO_SCOPES, ServiceFlag::TwoScopes),
    (SVC_F_EXTERNAL, ServiceFlag::External),
    (SVC_F_LOCAL_EXTERNAL, ServiceFlag::ExternalLocal),
    (SVC_F_MAGLEV, ServiceFlag::Maglev),
    (SVC_F_DROP_EMPTY, ServiceFlag::DropWhenEmpty),
    (petrel_common::SVC_F_SRC_RANGES, ServiceFlag::SourceRanges),
];

/// The SRC_RANGES key of `net` for the frontend with `rev_nat_id`.
pub fn src_range_key(rev_nat_id: u32, net: ipnet::Ipv4Net) -> SrcRangeKey {
    SrcRangeKey::new(
        petrel_common::SRC_RANGE_ID_BITS + u32::from(net.prefix_len()),
        petrel_common::SrcRange {
            rev_nat_id,
            addr_be: addr_be(net.network()),
        },
    )
}

/// The frontend's rev-NAT id and the prefix of a SRC_RANGES key (None: a malformed key).
pub fn src_range(key: &SrcRangeKey) -> Option<(u32, ipnet::Ipv4Net)> {
    let data = key.data();
    let len = key
        .prefix_len()
        .checked_sub(petrel_common::SRC_RANGE_ID_BITS)?;
    let net = ipnet::Ipv4Net::new(Ipv4Addr::from(u32::from_be(data.addr_be)), len as u8).ok()?;
    Some((data.rev_nat_id, net))
}

/// A key of the SRC_RANGES LPM trie.
pub type SrcRangeKey = aya::maps::lpm_trie::Key<petrel_common::SrcRange>;

/// The flags set in a master entry's `flags`.
pub fn service_flags(flags: u16) -> Vec<ServiceFlag> {
    FLAGS
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, f)| *f)
        .collect()
}

/// Active or terminating, from a backend's flags.
pub fn backend_state(b: &Backend) -> BackendState {
    if b.flags & BACKEND_F_TERMINATING != 0 {
        BackendState::Terminating
    } else {
        BackendState::Active
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_keys_round_trip_in_network_order() {
        let fe = Frontend {
            addr: Ipv4Addr::new(10, 96, 0, 1),
            port: 443,
            proto: Proto::Udp,
        };
        let k = service_key(fe, 3, 1);
        assert_eq!(k.addr_be.to_ne_bytes(), [10, 96, 0, 1]);
        assert_eq!(k.port_be.to_ne_bytes(), 443u16.to_be_bytes());
        assert_eq!(frontend(&k), Some(fe));
        let b = BackendSpec {
            id: 7,
            addr: "10.244.1.2:8080".parse().unwrap(),
            proto: Proto::Tcp,
            terminating: true,
            remote: false,
        };
        let v = backend(&b);
        assert_eq!(backend_addr(&v), b.addr);
        assert_eq!(v.flags, BACKEND_F_TERMINATING);
    }
}
