//! One blocking NETLINK_ROUTE socket and the three exchanges petrel uses: a request answered by
//! one message, a change answered by an ACK, and a dump answered by many messages and DONE.
//! The request/answer loop itself is [`Channel`], which the sock_diag socket shares.

use std::io;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkDeserializable, NetlinkHeader, NetlinkMessage,
    NetlinkPayload, NetlinkSerializable,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{SocketAddr, protocols::NETLINK_ROUTE};

use crate::{NetlinkError, Result};

/// Receive buffer. Dumps may fill a datagram up to 32 KiB (the kernel sizes dump skbs to the
/// reader's buffer, capped at 32 KiB), so 64 KiB never truncates.
const RECV_BUF: usize = 64 * 1024;

/// A NETLINK_ROUTE socket, bound to the network namespace of the thread that opened it for its
/// whole life (see `Netns::socket` to open one in another namespace).
pub struct Socket {
    chan: Channel,
}

impl Socket {
    /// Opens a socket in the calling thread's network namespace.
    pub fn new() -> Result<Socket> {
        Ok(Socket {
            chan: Channel::open(NETLINK_ROUTE, "a netlink socket")?,
        })
    }

    /// Sends a change (`flags` beyond REQUEST|ACK, e.g. CREATE|EXCL) and waits for its ACK.
    pub fn ack(
        &mut self,
        op: &'static str,
        object: &dyn std::fmt::Display,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<()> {
        self.chan
            .exchange::<_, RouteNetlinkMessage>(msg, NLM_F_ACK | flags, &mut |_| {})
            .map_err(|e| NetlinkError::new(op, object.to_string(), e))
    }

    /// Sends a GET for one object and returns the kernel's answer (an error when there is none:
    /// callers turn ENODEV/ENOENT into "absent").
    pub fn request(
        &mut self,
        op: &'static str,
        object: &dyn std::fmt::Display,
        msg: RouteNetlinkMessage,
    ) -> Result<RouteNetlinkMessage> {
        let mut out = None;
        self.chan
            .exchange(msg, 0, &mut |m| {
                out.get_or_insert(m);
            })
            .map_err(|e| NetlinkError::new(op, object.to_string(), e))?;
        out.ok_or_else(|| {
            NetlinkError::new(
                op,
                object.to_string(),
                io::Error::new(io::ErrorKind::UnexpectedEof, "no answer from the kernel"),
            )
        })
    }

    /// Sends a dump request and returns every message of the answer.
    pub fn dump(
        &mut self,
        op: &'static str,
        object: &dyn std::fmt::Display,
        msg: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        let mut out = Vec::new();
        self.chan
            .exchange(msg, NLM_F_DUMP, &mut |m| out.push(m))
            .map_err(|e| NetlinkError::new(op, object.to_string(), e))?;
        Ok(out)
    }
}

/// A netlink socket of any protocol connected to the kernel, and the one loop that sends a
/// request and reads its answer: what [`Socket`] (rtnetlink) and
/// [`DiagSocket`](crate::DiagSocket) (sock_diag) both are underneath.
pub(crate) struct Channel {
    sock: netlink_sys::Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Channel {
    /// Opens a `protocol` socket in the calling thread's network namespace; `what` names it in
    /// the error.
    pub(crate) fn open(protocol: isize, what: &'static str) -> Result<Channel> {
        let err = |e| NetlinkError::new("opening", what, e);
        let mut sock = netlink_sys::Socket::new(protocol).map_err(err)?;
        let kernel = SocketAddr::new(0, 0);
        sock.bind(&kernel).map_err(err)?;
        sock.connect(&kernel).map_err(err)?;
        Ok(Channel {
            sock,
            seq: 0,
            buf: vec![0; RECV_BUF],
        })
    }

    /// One request and its whole answer: messages go to `each` until the answer ends (DONE for a
    /// dump, the ACK or NACK for a change, the single reply for a plain GET).
    pub(crate) fn exchange<M, R>(
        &mut self,
        msg: M,
        flags: u16,
        each: &mut dyn FnMut(R),
    ) -> io::Result<()>
    where
        M: NetlinkSerializable,
        R: NetlinkDeserializable,
    {
        self.seq = self.seq.wrapping_add(1);
        let req = encode(msg, flags, self.seq);
        self.sock.send(&req, 0)?;
        let multi = flags & NLM_F_DUMP == NLM_F_DUMP;
        let acked = flags & NLM_F_ACK != 0;
        loop {
            let n = self.sock.recv(&mut &mut self.buf[..], 0)?;
            let mut at = 0;
            while at < n {
                let m = NetlinkMessage::<R>::deserialize(&self.buf[at..n])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = m.header.length as usize;
                if len == 0 {
                    break;
                }
                // Messages are 4-byte aligned in a datagram (NLMSG_ALIGN).
                at += (len + 3) & !3;
                // A late answer to an earlier request (one that failed half-way): not ours.
                if m.header.sequence_number != self.seq {
                    continue;
                }
                match m.payload {
                    NetlinkPayload::Done(_) => return Ok(()),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(()),
                            Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                        };
                    }
                    NetlinkPayload::InnerMessage(inner) => {
                        each(inner);
                        if !multi && !acked {
                            return Ok(());
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

/// The bytes of one request.
pub(crate) fn encode<M: NetlinkSerializable>(msg: M, flags: u16, seq: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | flags;
    header.sequence_number = seq;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
    packet.finalize();
    let mut bytes = vec![0; packet.buffer_len()];
    packet.serialize(&mut bytes);
    bytes
}

#[cfg(test)]
mod tests {
    use netlink_packet_route::link::{LinkAttribute, LinkMessage};

    use super::*;

    #[test]
    fn a_request_has_its_header() {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName("lo".into()));
        let b = encode(RouteNetlinkMessage::GetLink(m), NLM_F_ACK, 7);
        let len = u32::from_ne_bytes(b[0..4].try_into().unwrap());
        assert_eq!(len as usize, b.len());
        // RTM_GETLINK = 18
        assert_eq!(u16::from_ne_bytes(b[4..6].try_into().unwrap()), 18);
        assert_eq!(
            u16::from_ne_bytes(b[6..8].try_into().unwrap()),
            NLM_F_REQUEST | NLM_F_ACK
        );
        assert_eq!(u32::from_ne_bytes(b[8..12].try_into().unwrap()), 7);
        // ifinfomsg (16 bytes) then IFLA_IFNAME (3) "lo\0", padded to 4.
        assert_eq!(&b[32..36], &[7, 0, 3, 0]);
        assert_eq!(&b[36..39], b"lo\0");
    }
}
