//! Neighbour and FDB entries: what a VXLAN device without learning needs per remote node (the
//! next hop's MAC, and which node address that MAC lives behind).

use std::net::Ipv4Addr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_REPLACE};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    neighbour::{
        NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
    },
};

use crate::{Result, Socket};

/// A permanent ARP entry: `ip` is at `mac` on link `index`.
pub fn neighbour_message(index: u32, ip: Ipv4Addr, mac: [u8; 6]) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Inet;
    m.header.ifindex = index;
    m.header.state = NeighbourState::Permanent;
    m.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
    m.attributes
        .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    m
}

/// A permanent FDB entry of the device itself (`bridge fdb add ... self`): frames for `mac` go
/// to `remote` through the tunnel on link `index`.
pub fn fdb_message(index: u32, mac: [u8; 6], remote: Ipv4Addr) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Bridge;
    m.header.ifindex = index;
    m.header.state = NeighbourState::Permanent;
    m.header.flags = NeighbourFlags::Own;
    m.attributes
        .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    m.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
            remote,
        )));
    m
}

pub fn destination_of(n: &NeighbourMessage) -> Option<Ipv4Addr> {
    n.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
        _ => None,
    })
}

pub fn mac_of(n: &NeighbourMessage) -> Option<[u8; 6]> {
    n.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(b) => b.as_slice().try_into().ok(),
        _ => None,
    })
}

impl Socket {
    /// Writes (or overwrites) a neighbour or FDB entry.
    pub fn neigh_replace(&mut self, m: NeighbourMessage) -> Result<()> {
        let object = format!("{:?} on #{}", destination_of(&m), m.header.ifindex);
        self.ack(
            "writing neighbour",
            &object,
            RouteNetlinkMessage::NewNeighbour(m),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    /// Deletes an entry a dump returned; returns whether it was still there.
    pub fn neigh_del(&mut self, m: NeighbourMessage) -> Result<bool> {
        let object = format!("{:?} on #{}", destination_of(&m), m.header.ifindex);
        match self.ack(
            "deleting neighbour",
            &object,
            RouteNetlinkMessage::DelNeighbour(m),
            0,
        ) {
            Ok(()) => Ok(true),
            Err(e) if e.errno() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Neighbour and FDB entries (every family) of link `index`.
    pub fn neigh_dump(&mut self, index: u32) -> Result<Vec<NeighbourMessage>> {
        let all = self.dump(
            "listing",
            &"neighbours",
            RouteNetlinkMessage::GetNeighbour(NeighbourMessage::default()),
        )?;
        Ok(all
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewNeighbour(n) if n.header.ifindex == index => Some(n),
                _ => None,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_carry_what_they_map() {
        let mac = [0x0e, 1, 2, 3, 4, 5];
        let n = neighbour_message(4, Ipv4Addr::new(10, 244, 2, 0), mac);
        assert_eq!(destination_of(&n), Some(Ipv4Addr::new(10, 244, 2, 0)));
        assert_eq!(mac_of(&n), Some(mac));
        let f = fdb_message(4, mac, Ipv4Addr::new(192, 168, 0, 2));
        assert_eq!(f.header.family, AddressFamily::Bridge);
        assert_eq!(f.header.flags, NeighbourFlags::Own);
        assert_eq!(destination_of(&f), Some(Ipv4Addr::new(192, 168, 0, 2)));
    }
}
