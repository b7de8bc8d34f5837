//! Routes in the main table: add/replace, delete, dump, and the parsed form petrel compares
//! (`Route4`; `Route6` for the pods' IPv6 routes).

use std::net::{Ipv4Addr, Ipv6Addr};

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

/// One IPv4 unicast route of the main table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route4 {
    pub dst: Ipv4Net,
    pub gateway: Option<Ipv4Addr>,
    pub oif: Option<u32>,
    pub scope: RouteScope,
    pub protocol: RouteProtocol,
    /// The gateway is on the link even though no address says so (VXLAN next hops).
    pub onlink: bool,
}

impl Route4 {
    /// `dst` with universe scope and the static protocol, as `ip route add` makes it.
    pub fn new(dst: Ipv4Net) -> Route4 {
        Route4 {
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
        m.header.address_family = AddressFamily::Inet;
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.protocol = self.protocol;
        m.header.scope = self.scope;
        m.header.kind = RouteType::Unicast;
        m.header.destination_prefix_length = self.dst.prefix_len();
        if self.onlink {
            m.header.flags.insert(RouteFlags::Onlink);
        }
        if self.dst.prefix_len() > 0 {
            m.attributes
                .push(RouteAttribute::Destination(RouteAddress::Inet(
                    self.dst.network(),
                )));
        }
        if let Some(gw) = self.gateway {
            m.attributes
                .push(RouteAttribute::Gateway(RouteAddress::Inet(gw)));
        }
        if let Some(oif) = self.oif {
            m.attributes.push(RouteAttribute::Oif(oif));
        }
        m
    }

    /// The route a kernel message describes, if it is an IPv4 route of the main table.
    pub fn from_message(m: &RouteMessage) -> Option<Route4> {
        if m.header.address_family != AddressFamily::Inet
            || m.header.table != RouteHeader::RT_TABLE_MAIN
        {
            return None;
        }
        let mut dst = Ipv4Addr::UNSPECIFIED;
        let (mut gateway, mut oif) = (None, None);
        for a in &m.attributes {
            match a {
                RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = *d,
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => gateway = Some(*g),
                RouteAttribute::Oif(i) => oif = Some(*i),
                _ => {}
            }
        }
        Some(Route4 {
            dst: Ipv4Net::new(dst, m.header.destination_prefix_length).ok()?,
            gateway,
            oif,
            scope: m.header.scope,
            protocol: m.header.protocol,
            onlink: m.header.flags.contains(RouteFlags::Onlink),
        })
    }
}

/// One IPv6 unicast route of the main table (IPv6 routes carry no meaningful scope).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route6 {
    pub dst: Ipv6Net,
    pub gateway: Option<Ipv6Addr>,
    pub oif: Option<u32>,
    pub protocol: RouteProtocol,
}

impl Route6 {
    /// `dst` with the static protocol, as `ip -6 route add` makes it.
    pub fn new(dst: Ipv6Net) -> Route6 {
        Route6 {
            dst,
            gateway: None,
            oif: None,
            protocol: RouteProtocol::Static,
        }
    }

    pub fn message(&self) -> RouteMessage {
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet6;
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.protocol = self.protocol;
        m.header.scope = RouteScope::Universe;
        m.header.kind = RouteType::Unicast;
        m.header.destination_prefix_length = self.dst.prefix_len();
        if self.dst.prefix_len() > 0 {
            m.attributes
                .push(RouteAttribute::Destination(RouteAddress::Inet6(
                    self.dst.network(),
                )));
        }
        if let Some(gw) = self.gateway {
            m.attributes
                .push(RouteAttribute::Gateway(RouteAddress::Inet6(gw)));
        }
        if let Some(oif) = self.oif {
            m.attributes.push(RouteAttribute::Oif(oif));
        }
        m
    }

    /// The route a kernel message describes, if it is an IPv6 route of the main table.
    pub fn from_message(m: &RouteMessage) -> Option<Route6> {
        if m.header.address_family != AddressFamily::Inet6
            || m.header.table != RouteHeader::RT_TABLE_MAIN
        {
            return None;
        }
        let mut dst = Ipv6Addr::UNSPECIFIED;
        let (mut gateway, mut oif) = (None, None);
        for a in &m.attributes {
            match a {
                RouteAttribute::Destination(RouteAddress::Inet6(d)) => dst = *d,
                RouteAttribute::Gateway(RouteAddress::Inet6(g)) => gateway = Some(*g),
                RouteAttribute::Oif(i) => oif = Some(*i),
                _ => {}
            }
        }
        Some(Route6 {
            dst: Ipv6Net::new(dst, m.header.destination_prefix_length).ok()?,
            gateway,
            oif,
            protocol: m.header.protocol,
        })
    }
}

impl Socket {
    /// Adds an IPv6 route; with `replace` one already there for the destination is overwritten.
    pub fn route_add6(&mut self, r: &Route6, replace: bool) -> Result<()> {
        let excl = if replace { NLM_F_REPLACE } else { NLM_F_EXCL };
        self.ack(
            "adding route",
            &r.dst,
            RouteNetlinkMessage::NewRoute(r.message()),
            NLM_F_CREATE | excl,
        )
    }

    /// Every IPv6 route (all tables; `Route6::from_message` keeps the main table's).
    pub fn route_dump_v6(&mut self) -> Result<Vec<RouteMessage>> {
        let mut req = RouteMessage::default();
        req.header.address_family = AddressFamily::Inet6;
        let all = self.dump("listing", &"routes", RouteNetlinkMessage::GetRoute(req))?;
        Ok(all
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => Some(r),
                _ => None,
            })
            .collect())
    }

    /// Adds a route; with `replace` one already there for the destination is overwritten.
    pub fn route_add(&mut self, r: &Route4, replace: bool) -> Result<()> {
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
        let dst =
            Route4::from_message(&m).map_or_else(|| "a route".to_string(), |r| r.dst.to_string());
        match self.ack("deleting route", &dst, RouteNetlinkMessage::DelRoute(m), 0) {
            Ok(()) => Ok(true),
            Err(e) if e.errno() == Some(libc::ESRCH) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Every IPv4 route (all tables; `Route4::from_message` keeps the main table's).
    pub fn route_dump_v4(&mut self) -> Result<Vec<RouteMessage>> {
        let mut req = RouteMessage::default();
        req.header.address_family = AddressFamily::Inet;
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

/// The IPv4 gateway of a route message, whatever its table.
pub fn gateway_of(m: &RouteMessage) -> Option<Ipv4Addr> {
    m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Gateway(RouteAddress::Inet(g)) => Some(*g),
        _ => None,
    })
}

/// The IPv6 gateway of a route message, whatever its table.
pub fn gateway6_of(m: &RouteMessage) -> Option<Ipv6Addr> {
    m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Gateway(RouteAddress::Inet6(g)) => Some(*g),
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
