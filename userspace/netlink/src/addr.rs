//! Addresses: add one to a link, list them, find the link holding an address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    address::{AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage},
};

use crate::{Result, Socket};

/// The message for `addr/prefix_len` on link `index`, as `ip addr add` builds it (local and
/// address both set; a broadcast address below /31).
pub fn v4_message(index: u32, addr: Ipv4Addr, prefix_len: u8) -> AddressMessage {
    let mut m = AddressMessage::default();
    m.header.family = AddressFamily::Inet;
    m.header.index = index;
    m.header.prefix_len = prefix_len;
    m.attributes.push(AddressAttribute::Address(addr.into()));
    m.attributes.push(AddressAttribute::Local(addr.into()));
    if prefix_len < 31 {
        let brd = u32::from(addr) | (u32::MAX >> prefix_len);
        m.attributes
            .push(AddressAttribute::Broadcast(Ipv4Addr::from(brd)));
    }
    m
}

/// The message for the IPv6 `addr/prefix_len` on link `index` (local and address both set, as
/// `ip -6 addr add` does). With `nodad` the address is usable at once (IFA_F_NODAD: no duplicate
/// address detection, which otherwise keeps it tentative for about a second).
pub fn v6_message(index: u32, addr: Ipv6Addr, prefix_len: u8, nodad: bool) -> AddressMessage {
    let mut m = AddressMessage::default();
    m.header.family = AddressFamily::Inet6;
    m.header.index = index;
    m.header.prefix_len = prefix_len;
    m.attributes.push(AddressAttribute::Address(addr.into()));
    m.attributes.push(AddressAttribute::Local(addr.into()));
    if nodad {
        m.header.flags.insert(AddressHeaderFlags::Nodad);
        m.attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    m
}

/// Whether the address is still tentative (duplicate address detection not done, or failed).
pub fn is_tentative(m: &AddressMessage) -> bool {
    let dad = AddressFlags::Tentative | AddressFlags::Dadfailed;
    m.header.flags.bits() & (dad.bits() as u8) != 0
        || m.attributes
            .iter()
            .any(|a| matches!(a, AddressAttribute::Flags(f) if f.intersects(dad)))
}

/// Every address of the message (IFA_ADDRESS and IFA_LOCAL).
pub fn addresses_of(m: &AddressMessage) -> impl Iterator<Item = IpAddr> + '_ {
    m.attributes.iter().filter_map(|a| match a {
        AddressAttribute::Address(ip) | AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    })
}

impl Socket {
    /// Adds `addr/prefix_len` to link `index`; with `replace` an existing one is fine.
    pub fn addr_add(
        &mut self,
        index: u32,
        addr: Ipv4Addr,
        prefix_len: u8,
        replace: bool,
    ) -> Result<()> {
        let excl = if replace { NLM_F_REPLACE } else { NLM_F_EXCL };
        self.ack(
            "adding address",
            &format_args!("{addr}/{prefix_len} to #{index}"),
            RouteNetlinkMessage::NewAddress(v4_message(index, addr, prefix_len)),
            NLM_F_CREATE | excl,
        )
    }

    /// Adds the IPv6 `addr/prefix_len` to link `index` (`v6_message`); with `replace` an
    /// existing one is fine.
    pub fn addr_add6(
        &mut self,
        index: u32,
        addr: Ipv6Addr,
        prefix_len: u8,
        replace: bool,
        nodad: bool,
    ) -> Result<()> {
        let excl = if replace { NLM_F_REPLACE } else { NLM_F_EXCL };
        self.ack(
            "adding address",
            &format_args!("{addr}/{prefix_len} to #{index}"),
            RouteNetlinkMessage::NewAddress(v6_message(index, addr, prefix_len, nodad)),
            NLM_F_CREATE | excl,
        )
    }

    /// Addresses of every link, or of link `index` only.
    pub fn addr_dump(&mut self, index: Option<u32>) -> Result<Vec<AddressMessage>> {
        let all = self.dump(
            "listing",
            &"addresses",
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
        )?;
        Ok(all
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) if index.is_none_or(|i| a.header.index == i) => {
                    Some(a)
                }
                _ => None,
            })
            .collect())
    }

    /// Every IPv4 address of this namespace's links (IFA_LOCAL: the address itself, also on
    /// point-to-point links, whose IFA_ADDRESS is the peer's), sorted, without duplicates.
    pub fn local_ipv4s(&mut self) -> Result<Vec<Ipv4Addr>> {
        let mut out: Vec<Ipv4Addr> = self
            .addr_dump(None)?
            .iter()
            .filter(|m| m.header.family == netlink_packet_route::AddressFamily::Inet)
            .filter_map(|m| {
                let local = m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
                    _ => None,
                });
                local.or_else(|| {
                    m.attributes.iter().find_map(|a| match a {
                        AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
                        _ => None,
                    })
                })
            })
            .collect();
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// The index of the link holding `addr` (the agent's uplink: where the node address lives).
    pub fn addr_link_of(&mut self, addr: Ipv4Addr) -> Result<Option<u32>> {
        Ok(self
            .addr_dump(None)?
            .iter()
            .find(|m| addresses_of(m).any(|a| a == IpAddr::V4(addr)))
            .map(|m| m.header.index))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_only_below_31() {
        let m = v4_message(3, Ipv4Addr::new(10, 0, 0, 1), 24);
        assert!(
            m.attributes
                .contains(&AddressAttribute::Broadcast(Ipv4Addr::new(10, 0, 0, 255)))
        );
        let m = v4_message(3, Ipv4Addr::new(10, 0, 0, 1), 32);
        assert!(
            !m.attributes
                .iter()
                .any(|a| matches!(a, AddressAttribute::Broadcast(_)))
        );
        assert_eq!(addresses_of(&m).count(), 2);
        assert_eq!(m.header.index, 3);
    }

    #[test]
    fn v6_addresses_carry_nodad_when_asked() {
        let ip: Ipv6Addr = "fd00::2".parse().unwrap();
        let m = v6_message(4, ip, 128, true);
        assert_eq!(m.header.family, AddressFamily::Inet6);
        assert!(m.header.flags.contains(AddressHeaderFlags::Nodad));
        assert!(
            m.attributes
                .contains(&AddressAttribute::Flags(AddressFlags::Nodad))
        );
        assert_eq!(addresses_of(&m).collect::<Vec<_>>(), [IpAddr::V6(ip); 2]);
        assert!(!is_tentative(&m));
        let m = v6_message(4, ip, 64, false);
        assert!(!m.header.flags.contains(AddressHeaderFlags::Nodad));
        assert!(
            !m.attributes
                .iter()
                .any(|a| matches!(a, AddressAttribute::Flags(_)))
        );
        let mut t = m.clone();
        t.attributes
            .push(AddressAttribute::Flags(AddressFlags::Tentative));
        assert!(is_tentative(&t));
    }
}
