//! Links: lookup, delete, up, name/MTU/MAC, and the two kinds petrel creates (a pod's veth pair,
//! the VXLAN overlay device).

use std::{fmt, net::Ipv4Addr, os::fd::AsRawFd};

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{
        InfoData, InfoKind, InfoVeth, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
    },
};

use crate::{Result, Socket};

/// A link by name or by index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkId<'a> {
    Name(&'a str),
    Index(u32),
}

impl fmt::Display for LinkId<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkId::Name(n) => f.write_str(n),
            LinkId::Index(i) => write!(f, "#{i}"),
        }
    }
}

fn message_for(id: LinkId) -> LinkMessage {
    let mut m = LinkMessage::default();
    match id {
        LinkId::Name(n) => m.attributes.push(LinkAttribute::IfName(n.to_string())),
        LinkId::Index(i) => m.header.index = i,
    }
    m
}

/// A veth pair whose peer is created directly in another namespace.
pub struct VethSpec<'a, F: AsRawFd> {
    pub name: &'a str,
    pub peer: &'a str,
    pub mtu: u32,
    /// The namespace the peer is created in (None: this socket's).
    pub peer_netns: Option<&'a F>,
}

impl<F: AsRawFd> VethSpec<'_, F> {
    pub fn message(&self) -> LinkMessage {
        let mut peer = LinkMessage::default();
        peer.attributes
            .push(LinkAttribute::IfName(self.peer.to_string()));
        peer.attributes.push(LinkAttribute::Mtu(self.mtu));
        if let Some(ns) = self.peer_netns {
            peer.attributes.push(LinkAttribute::NetNsFd(ns.as_raw_fd()));
        }
        let mut m = LinkMessage::default();
        m.attributes
            .push(LinkAttribute::IfName(self.name.to_string()));
        m.attributes.push(LinkAttribute::Mtu(self.mtu));
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));
        m
    }
}

/// A VXLAN device without learning (entries are written by the agent), bound to an uplink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VxlanSpec<'a> {
    pub name: &'a str,
    pub vni: u32,
    pub uplink: u32,
    pub local: Ipv4Addr,
    pub port: u16,
}

impl VxlanSpec<'_> {
    fn data(&self) -> Vec<InfoVxlan> {
        vec![
            InfoVxlan::Id(self.vni),
            InfoVxlan::Link(self.uplink),
            InfoVxlan::Local(self.local),
            InfoVxlan::Port(self.port),
            InfoVxlan::Learning(false),
        ]
    }

    pub fn message(&self) -> LinkMessage {
        let mut m = LinkMessage::default();
        m.attributes
            .push(LinkAttribute::IfName(self.name.to_string()));
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Vxlan),
            LinkInfo::Data(InfoData::Vxlan(self.data())),
        ]));
        m
    }

    /// Whether an existing link is this device (VNI, port, local address and uplink), so a
    /// restarted agent keeps it rather than disturbing traffic.
    pub fn matches(&self, l: &LinkMessage) -> bool {
        let Some(data) = link_infos(l).find_map(|i| match i {
            LinkInfo::Data(InfoData::Vxlan(v)) => Some(v),
            _ => None,
        }) else {
            return false;
        };
        self.data()
            .iter()
            .filter(|x| !matches!(x, InfoVxlan::Learning(_)))
            .all(|x| data.contains(x))
    }
}

fn link_infos(l: &LinkMessage) -> impl Iterator<Item = &LinkInfo> {
    l.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::LinkInfo(i) => Some(i),
            _ => None,
        })
        .into_iter()
        .flatten()
}

pub fn name_of(l: &LinkMessage) -> Option<&str> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

pub fn mtu_of(l: &LinkMessage) -> Option<u32> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::Mtu(m) => Some(*m),
        _ => None,
    })
}

/// The hardware address, as the kernel reports it (6 bytes for Ethernet-like links).
pub fn mac_of(l: &LinkMessage) -> Option<&[u8]> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(b) => Some(b.as_slice()),
        _ => None,
    })
}

/// "aa:bb:cc:dd:ee:ff", the form CNI results carry.
pub fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub fn is_up(l: &LinkMessage) -> bool {
    l.header.flags.contains(LinkFlags::Up)
}

fn absent(e: &crate::NetlinkError) -> bool {
    matches!(e.errno(), Some(libc::ENODEV))
}

impl Socket {
    /// The link, or None when there is none by that name/index.
    pub fn link_get(&mut self, id: LinkId) -> Result<Option<LinkMessage>> {
        match self.request(
            "looking up link",
            &id,
            RouteNetlinkMessage::GetLink(message_for(id)),
        ) {
            Ok(RouteNetlinkMessage::NewLink(m)) => Ok(Some(m)),
            Ok(_) => Ok(None),
            Err(e) if absent(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn link_dump(&mut self) -> Result<Vec<LinkMessage>> {
        let all = self.dump(
            "listing",
            &"links",
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
        )?;
        Ok(all
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(l),
                _ => None,
            })
            .collect())
    }

    /// Deletes a link; returns whether there was one (absent is not an error).
    pub fn link_delete(&mut self, id: LinkId) -> Result<bool> {
        match self.ack(
            "deleting link",
            &id,
            RouteNetlinkMessage::DelLink(message_for(id)),
            0,
        ) {
            Ok(()) => Ok(true),
            Err(e) if absent(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub fn link_set_up(&mut self, index: u32) -> Result<()> {
        let mut m = message_for(LinkId::Index(index));
        m.header.flags |= LinkFlags::Up;
        m.header.change_mask |= LinkFlags::Up;
        self.ack(
            "setting link up",
            &LinkId::Index(index),
            RouteNetlinkMessage::SetLink(m),
            0,
        )
    }

    pub fn link_set_name(&mut self, index: u32, name: &str) -> Result<()> {
        let mut m = message_for(LinkId::Index(index));
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.ack(
            "renaming link",
            &format_args!("#{index} to {name}"),
            RouteNetlinkMessage::SetLink(m),
            0,
        )
    }

    /// Sets the MTU and/or the MAC address, and the link up when `up`.
    pub fn link_set_mtu_mac(
        &mut self,
        index: u32,
        mtu: Option<u32>,
        mac: Option<[u8; 6]>,
        up: bool,
    ) -> Result<()> {
        let mut m = message_for(LinkId::Index(index));
        if let Some(mtu) = mtu {
            m.attributes.push(LinkAttribute::Mtu(mtu));
        }
        if let Some(mac) = mac {
            m.attributes.push(LinkAttribute::Address(mac.to_vec()));
        }
        if up {
            m.header.flags |= LinkFlags::Up;
            m.header.change_mask |= LinkFlags::Up;
        }
        self.ack(
            "configuring link",
            &LinkId::Index(index),
            RouteNetlinkMessage::SetLink(m),
            0,
        )
    }

    /// Creates a veth pair. With `peer_netns` the peer is born in that namespace: moving an
    /// existing device between namespaces waits for an RCU grace period (tens of ms).
    pub fn link_create_veth<F: AsRawFd>(&mut self, spec: &VethSpec<F>) -> Result<()> {
        self.ack(
            "creating veth",
            &format_args!("{} (peer {})", spec.name, spec.peer),
            RouteNetlinkMessage::NewLink(spec.message()),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    pub fn link_create_vxlan(&mut self, spec: &VxlanSpec) -> Result<()> {
        self.ack(
            "creating vxlan",
            &spec.name,
            RouteNetlinkMessage::NewLink(spec.message()),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;

    use super::*;

    #[test]
    fn veth_carries_its_peer_and_namespace() {
        let ns = File::open("/dev/null").unwrap();
        let m = VethSpec {
            name: "pet1",
            peer: "tmp1",
            mtu: 1450,
            peer_netns: Some(&ns),
        }
        .message();
        assert_eq!(name_of(&m), Some("pet1"));
        assert_eq!(mtu_of(&m), Some(1450));
        let peer = link_infos(&m)
            .find_map(|i| match i {
                LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(p))) => Some(p),
                _ => None,
            })
            .expect("peer");
        assert_eq!(name_of(peer), Some("tmp1"));
        assert!(
            peer.attributes
                .contains(&LinkAttribute::NetNsFd(ns.as_raw_fd()))
        );
    }

    #[test]
    fn vxlan_matches_itself_not_another_vni() {
        let spec = VxlanSpec {
            name: "petrel.vxlan",
            vni: 1,
            uplink: 2,
            local: Ipv4Addr::new(10, 0, 0, 1),
            port: 8472,
        };
        let m = spec.message();
        assert!(spec.matches(&m));
        assert!(!VxlanSpec { vni: 2, ..spec }.matches(&m));
        assert!(!spec.matches(&LinkMessage::default()));
    }

    #[test]
    fn macs_print_as_cni_results_want() {
        assert_eq!(format_mac(&[0xaa, 0, 1, 2, 3, 0xff]), "aa:00:01:02:03:ff");
    }
}

/// Against the kernel, without privilege: every namespace has `lo`, reading needs no capability.
#[cfg(test)]
mod kernel_tests {
    use super::*;

    #[test]
    fn lo_is_found_by_name_and_index_and_absent_names_are_none() {
        let mut s = Socket::new().expect("netlink socket");
        let lo = s
            .link_get(LinkId::Name("lo"))
            .expect("get lo")
            .expect("lo exists");
        assert_eq!(name_of(&lo), Some("lo"));
        let by_index = s
            .link_get(LinkId::Index(lo.header.index))
            .expect("get by index")
            .expect("lo by index");
        assert_eq!(name_of(&by_index), Some("lo"));
        assert!(
            s.link_get(LinkId::Name("petnosuchlink0"))
                .expect("get")
                .is_none()
        );
        assert!(
            s.link_dump()
                .expect("dump")
                .iter()
                .any(|l| name_of(l) == Some("lo"))
        );
        // Dumps of several datagrams parse (contents differ from machine to machine).
        s.route_dump::<ipnet::Ipv4Net>().expect("routes");
        s.addr_dump(None).expect("addresses");
    }
}
