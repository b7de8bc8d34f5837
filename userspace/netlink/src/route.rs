//! Routes in the main table: add/replace, delete, dump, and the parsed form petrel compares
//! (`Route4` for IPv4, `Route6` for IPv6: one `Route` over the address family).

use std::{
    fmt,
    net::{Ipv4Addr, Ipv6Addr},
};

use ipnet::{Ipv4Net, Ipv6Net};
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    route::{
        RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol,
        RouteScope, RouteType,
    },
};

use crate::{Result, Socket};

/// What differs between IPv4 and IPv6 routes: the prefix type (`Ipv4Net`, `Ipv6Net`), its
/// address, and how netlink carries them.
pub trait Family: Copy + Eq + fmt::Debug + fmt::Display {
    type Addr: Copy + Eq + fmt::Debug;
    const FAMILY: AddressFamily;
    fn from_parts(addr: Option<Self::Addr>, prefix_len: u8) -> Option<Self>;
    fn network(&self) -> Self::Addr;
    fn prefix(&self) -> u8;
    fn to_route(a: Self::Addr) -> RouteAddress;
    fn from_route(a: &RouteAddress) -> Option<Self::Addr>;
}

impl Family for Ipv4Net {
    type Addr = Ipv4Addr;
    const FAMILY: AddressFamily = AddressFamily::Inet;
    fn from_parts(addr: Option<Ipv4Addr>, prefix_len: u8) -> Option<Ipv4Net> {
        Ipv4Net::new(addr.unwrap_or(Ipv4Addr::UNSPECIFIED), prefix_len).ok()
    }
    fn network(&self) -> Ipv4Addr {
        Ipv4Net::network(self)
    }
    fn prefix(&self) -> u8 {
        self.prefix_len()
    }
    fn to_route(a: Ipv4Addr) -> RouteAddress {
        RouteAddress::Inet(a)
    }
    fn from_route(a: &RouteAddress) -> Option<Ipv4Addr> {
        match a {
            RouteAddress::Inet(a) => Some(*a),
            _ => None,
        }
    }
}

impl Family for Ipv6Net {
    type Addr = Ipv6Addr;
    const FAMILY: AddressFamily = AddressFamily::Inet6;
    fn from_parts(addr: Option<Ipv6Addr>, prefix_len: u8) -> Option<Ipv6Net> {
        Ipv6Net::new(addr.unwrap_or(Ipv6Addr::UNSPECIFIED), prefix_len).ok()
    }
    fn network(&self) -> Ipv6Addr {
        Ipv6Net::network(self)
    }
    fn prefix(&self) -> u8 {
        self.prefix_len()
    }
    fn to_route(a: Ipv6Addr) -> RouteAddress {
        RouteAddress::Inet6(a)
    }
    fn from_route(a: &RouteAddress) -> Option<Ipv6Addr> {
        match a {
            RouteAddress::Inet6(a) => Some(*a),
            _ => None,
        }
    }
}

/// One unicast route of the main table. IPv6 routes carry no meaningful scope (the kernel
/// reports universe).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route<N: Family> {
    pub dst: N,
    pub gateway: Option<N::Addr>,
    pub oif: Option<u32>,
    pub scope: RouteScope,
    pub protocol: RouteProtocol,
    /// The gateway is on the link even though no address says so (VXLAN next hops).
    pub onlink: bool,
}

pub type Route4 = Route<Ipv4Net>;
pub type Route6 = Route<Ipv6Net>;

impl<N: Family> Route<N> {
    /// `dst` with universe scope and the static protocol, as `ip route add` makes it.
    pub fn new(dst: N) -> Route<N> {
        Route {
            dst,
            gateway: None,
            oif: None,
            scope: RouteScope::Universe,
            protocol: RouteProtocol::Static,
            onlink: false,
        }
    }

    pub fn message(&self) -> RouteMessage {
        let mut m = RouteMessage::default();
        m.header.address_family = N::FAMILY;
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.protocol = self.protocol;
        m.header.scope = self.scope;
        m.header.kind = RouteType::Unicast;
        m.header.destination_prefix_length = self.dst.prefix();
        if self.onlink {
            m.header.flags.insert(RouteFlags::Onlink);
        }
        if self.dst.prefix() > 0 {
            m.attributes
                .push(RouteAttribute::Destination(N::to_route(self.dst.network())));
        }
        if let Some(gw) = self.gateway {
            m.attributes.push(RouteAttribute::Gateway(N::to_route(gw)));
        }
        if let Some(oif) = self.oif {
            m.attributes.push(RouteAttribute::Oif(oif));
        }
        m
    }

    /// The route a kernel message describes, if it is a route of this family in the main table.
    pub fn from_message(m: &RouteMessage) -> Option<Route<N>> {
        if m.header.address_family != N::FAMILY || m.header.table != RouteHeader::RT_TABLE_MAIN {
            return None;
        }
        let (mut dst, mut gateway, mut oif) = (None, None, None);
        for a in &m.attributes {
            match a {
                RouteAttribute::Destination(d) => dst = N::from_route(d),
                RouteAttribute::Gateway(g) => gateway = N::from_route(g),
                RouteAttribute::Oif(i) => oif = Some(*i),
                _ => {}
            }
        }
        Some(Route {
            dst: N::from_parts(dst, m.header.destination_prefix_length)?,
            gateway,
            oif,
            scope: m.header.scope,
            protocol: m.header.protocol,
            onlink: m.header.flags.contains(RouteFlags::Onlink),
        })
    }
}

impl Socket {
    /// Adds a route; with `replace` one already there for the destination is overwritten.
    pub fn route_add<N: Family>(&mut self, r: &Route<N>, replace: bool) -> Result<()> {
        let excl = if replace { NLM_F_REPLACE } else { NLM_F_EXCL };
        self.ack(
            "adding route",
            &r.dst,
            RouteNetlinkMessage::NewRoute(r.message()),
            NLM_F_CREATE | excl,
        )
    }

    /// Deletes the route a dump returned; returns whether it was still there.
    pub fn route_del(&mut self, m: RouteMessage) -> Result<bool> {
        let dst = Route4::from_message(&m)
            .map(|r| r.dst.to_string())
            .or_else(|| Route6::from_message(&m).map(|r| r.dst.to_string()))
            .unwrap_or_else(|| "a route".to_string());
        match self.ack("deleting route", &dst, RouteNetlinkMessage::DelRoute(m), 0) {
            Ok(()) => Ok(true),
            Err(e) if e.errno() == Some(libc::ESRCH) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Every route of family `N` (all tables; `Route::from_message` keeps the main table's).
    pub fn route_dump<N: Family>(&mut self) -> Result<Vec<RouteMessage>> {
        let mut req = RouteMessage::default();
        req.header.address_family = N::FAMILY;
        let all = self.dump("listing", &"routes", RouteNetlinkMessage::GetRoute(req))?;
        Ok(all
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => Some(r),
                _ => None,
            })
            .collect())
    }
}

/// The gateway of family `N` of a route message, whatever its table.
pub fn gateway_of<N: Family>(m: &RouteMessage) -> Option<N::Addr> {
    m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Gateway(g) => N::from_route(g),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_the_message() {
        let r = Route4 {
            gateway: Some(Ipv4Addr::new(10, 244, 2, 0)),
            oif: Some(9),
            protocol: RouteProtocol::from(112),
            onlink: true,
            ..Route4::new("10.244.2.0/24".parse().unwrap())
        };
        assert_eq!(Route4::from_message(&r.message()), Some(r));
        let default = Route4 {
            gateway: Some(Ipv4Addr::new(169, 254, 1, 1)),
            ..Route4::new(Ipv4Net::default())
        };
        let m = default.message();
        assert!(
            !m.attributes
                .iter()
                .any(|a| matches!(a, RouteAttribute::Destination(_)))
        );
        assert_eq!(Route4::from_message(&m), Some(default));
    }

    #[test]
    fn v6_round_trips_through_the_message() {
        let r = Route6 {
            oif: Some(7),
            ..Route6::new("fd00:10::5/128".parse().unwrap())
        };
        assert_eq!(Route6::from_message(&r.message()), Some(r.clone()));
        assert_eq!(Route4::from_message(&r.message()), None);
        let default = Route6 {
            gateway: Some("fe80::1".parse().unwrap()),
            oif: Some(3),
            ..Route6::new(Ipv6Net::default())
        };
        let m = default.message();
        assert_eq!(m.header.address_family, AddressFamily::Inet6);
        assert!(
            !m.attributes
                .iter()
                .any(|a| matches!(a, RouteAttribute::Destination(_)))
        );
        assert_eq!(Route6::from_message(&m), Some(default));
        assert_eq!(
            Route6::from_message(&r.message().clone())
                .unwrap()
                .dst
                .prefix_len(),
            128
        );
    }
}
