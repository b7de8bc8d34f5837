//! Link and address notifications: a NETLINK_ROUTE socket subscribed to the kernel's multicast
//! groups RTNLGRP_LINK and RTNLGRP_IPV4_IFADDR, so the agent hears of a pod's veth the moment
//! petrel-cni creates it, and of node addresses as they come and go, without scanning.

use std::io;

use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{SocketAddr, protocols::NETLINK_ROUTE};

use crate::{NetlinkError, Result, link::name_of};

/// RTMGRP_LINK and RTMGRP_IPV4_IFADDR (the group bitmask of `bind`, linux/rtnetlink.h).
const GROUPS: u32 = 0x1 | 0x10;

/// One notification, as far as petrel cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A link appeared or changed (RTM_NEWLINK), by name.
    Link(String),
    /// A link went (RTM_DELLINK), by name.
    LinkGone(String),
    /// An IPv4 address was added or removed somewhere.
    Address,
    /// The socket's buffer overflowed (ENOBUFS): notifications were lost, so the listener must
    /// look at the current state again.
    Lost,
}

/// A socket receiving link and IPv4 address notifications of the calling thread's network
/// namespace (where it was opened, for its whole life).
pub struct Events {
    sock: netlink_sys::Socket,
    buf: Vec<u8>,
}

impl Events {
    /// Subscribes. Notifications sent before this returns are not seen: subscribe first, then
    /// read the current state.
    pub fn subscribe() -> Result<Events> {
        let err = |e| NetlinkError::new("subscribing", "link and address notifications", e);
        let mut sock = netlink_sys::Socket::new(NETLINK_ROUTE).map_err(err)?;
        sock.bind(&SocketAddr::new(0, GROUPS)).map_err(err)?;
        Ok(Events {
            sock,
            buf: vec![0; 64 * 1024],
        })
    }

    /// Blocks for the next datagram and returns the notifications it holds.
    pub fn receive(&mut self) -> Result<Vec<Event>> {
        let n = match self.sock.recv(&mut &mut self.buf[..], 0) {
            Ok(n) => n,
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => return Ok(vec![Event::Lost]),
            Err(e) => return Err(NetlinkError::new("receiving", "notifications", e)),
        };
        parse(&self.buf[..n]).map_err(|e| NetlinkError::new("decoding", "a notification", e))
    }
}

/// The notifications of one datagram.
fn parse(mut buf: &[u8]) -> io::Result<Vec<Event>> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(buf)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let len = m.header.length as usize;
        if len == 0 {
            break;
        }
        let ev = match m.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => {
                name_of(&l).map(|n| Event::Link(n.to_string()))
            }
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(l)) => {
                name_of(&l).map(|n| Event::LinkGone(n.to_string()))
            }
            NetlinkPayload::InnerMessage(
                RouteNetlinkMessage::NewAddress(_) | RouteNetlinkMessage::DelAddress(_),
            ) => Some(Event::Address),
            _ => None,
        };
        out.extend(ev);
        // Messages are 4-byte aligned in a datagram (NLMSG_ALIGN).
        buf = buf
            .get(((len + 3) & !3).min(buf.len())..)
            .unwrap_or_default();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use netlink_packet_route::{
        address::AddressMessage,
        link::{LinkAttribute, LinkMessage},
    };

    use super::*;

    fn bytes(msg: RouteNetlinkMessage) -> Vec<u8> {
        crate::socket::encode(msg, 0, 0)
    }

    #[test]
    fn a_datagram_gives_its_links_and_address_changes() {
        let link = |name: &str| {
            let mut m = LinkMessage::default();
            m.attributes.push(LinkAttribute::IfName(name.into()));
            m
        };
        let mut dgram = bytes(RouteNetlinkMessage::NewLink(link("pet0123456789ab")));
        dgram.extend(bytes(RouteNetlinkMessage::NewAddress(
            AddressMessage::default(),
        )));
        dgram.extend(bytes(RouteNetlinkMessage::DelLink(link("eth1"))));
        assert_eq!(
            parse(&dgram).expect("parse"),
            [
                Event::Link("pet0123456789ab".into()),
                Event::Address,
                Event::LinkGone("eth1".into())
            ]
        );
        assert_eq!(parse(&[]).expect("empty"), []);
    }
}
