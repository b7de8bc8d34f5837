//! The one place where host-order `model` values become the network-byte-order fields of the
//! kernel's `petrel_common` types, and back.

use std::net::{Ipv4Addr, SocketAddrV4};

use petrel_common::{
    AFFINITY_CLIENT_IP, AffinityKey, BACKEND_F_REMOTE, BACKEND_F_TERMINATING, Backend, CtKey,
    RevNat, ServiceKey,
};

use crate::model::{BackendSpec, Frontend, Proto};

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
        _pad: [0; 3],
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
