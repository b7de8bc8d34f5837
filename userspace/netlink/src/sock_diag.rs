//! One blocking NETLINK_SOCK_DIAG socket, for what `ss -K` does: dump the IPv4 UDP sockets of a
//! network namespace (inet_diag, with their cookies) and destroy one (SOCK_DESTROY, Linux 4.5+
//! with CONFIG_INET_DIAG_DESTROY; UDP since 4.7, with CONFIG_INET_UDP_DIAG). A destroyed
//! socket's next send or receive fails with ECONNABORTED.
//!
//! Like [`Socket`](crate::Socket), a `DiagSocket` sees the namespace it was opened in: open it
//! through [`Netns::enter`](crate::Netns::enter) to work on another.

use std::net::{IpAddr, SocketAddrV4};

use netlink_packet_core::{NLM_F_ACK, NLM_F_DUMP};
use netlink_packet_sock_diag::{
    SockDiagDestroy, SockDiagMessage,
    constants::{AF_INET, IPPROTO_UDP},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
};
use netlink_sys::protocols::NETLINK_SOCK_DIAG;

use crate::{NetlinkError, Result, socket::Channel};

/// A connected IPv4 UDP socket as inet_diag shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UdpSock {
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    /// The interface it is bound to (SO_BINDTODEVICE), 0 for none: part of the lookup that
    /// SOCK_DESTROY does.
    pub iface: u32,
    /// The socket cookie (SO_COOKIE, bpf_get_socket_cookie).
    pub cookie: u64,
}

/// inet_diag's cookie is two 32-bit words in host order, the low one first
/// (sock_diag_save_cookie).
pub fn cookie_from_diag(c: [u8; 8]) -> u64 {
    let lo = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
    let hi = u32::from_ne_bytes([c[4], c[5], c[6], c[7]]);
    u64::from(hi) << 32 | u64::from(lo)
}

pub fn cookie_to_diag(cookie: u64) -> [u8; 8] {
    let mut c = [0; 8];
    c[..4].copy_from_slice(&(cookie as u32).to_ne_bytes());
    c[4..].copy_from_slice(&((cookie >> 32) as u32).to_ne_bytes());
    c
}

/// A NETLINK_SOCK_DIAG socket, in the namespace of the thread that opened it.
pub struct DiagSocket {
    chan: Channel,
}

impl DiagSocket {
    /// Opens one in the calling thread's network namespace.
    pub fn new() -> Result<DiagSocket> {
        Ok(DiagSocket {
            chan: Channel::open(NETLINK_SOCK_DIAG, "a sock_diag netlink socket")?,
        })
    }

    /// Every connected IPv4 UDP socket of the namespace (UDP keeps a connected socket in
    /// TCP_ESTABLISHED; unconnected ones are TCP_CLOSE and left out).
    pub fn udp4_connected(&mut self) -> Result<Vec<UdpSock>> {
        let req = udp4_request(StateFlags::ESTABLISHED, SocketId::new_v4());
        let mut out = Vec::new();
        self.chan
            .exchange(SockDiagMessage::InetRequest(req), NLM_F_DUMP, &mut |m| {
                if let SockDiagMessage::InetResponse(r) = m {
                    let id = &r.header.socket_id;
                    if let (IpAddr::V4(src), IpAddr::V4(dst)) =
                        (id.source_address, id.destination_address)
                    {
                        out.push(UdpSock {
                            src: SocketAddrV4::new(src, id.source_port),
                            dst: SocketAddrV4::new(dst, id.destination_port),
                            iface: id.interface_id,
                            cookie: cookie_from_diag(id.cookie),
                        });
                    }
                }
            })
            .map_err(|e| NetlinkError::new("dumping", "UDP sockets", e))?;
        Ok(out)
    }

    /// Destroys `s` (found by its addresses, interface and cookie, so a socket that closed and
    /// whose tuple was reused is not hit). ENOENT: it is already gone.
    pub fn destroy_udp4(&mut self, s: &UdpSock) -> Result<()> {
        self.chan
            .exchange(
                SockDiagDestroy::new(SockDiagMessage::InetRequest(destroy_request(s))),
                NLM_F_ACK,
                &mut |_: SockDiagMessage| {},
            )
            .map_err(|e| {
                NetlinkError::new(
                    "destroying UDP socket",
                    format!("{} -> {}", s.src, s.dst),
                    e,
                )
            })
    }
}

fn udp4_request(states: StateFlags, socket_id: SocketId) -> InetRequest {
    InetRequest {
        family: AF_INET,
        protocol: IPPROTO_UDP,
        extensions: ExtensionFlags::empty(),
        states,
        socket_id,
    }
}

fn destroy_request(s: &UdpSock) -> InetRequest {
    udp4_request(
        StateFlags::all(),
        SocketId {
            source_port: s.src.port(),
            destination_port: s.dst.port(),
            source_address: IpAddr::V4(*s.src.ip()),
            destination_address: IpAddr::V4(*s.dst.ip()),
            interface_id: s.iface,
            cookie: cookie_to_diag(s.cookie),
        },
    )
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::NLM_F_REQUEST;

    use super::*;
    use crate::socket::encode;

    #[test]
    fn cookies_round_trip_in_inet_diag_order() {
        let c = 0x0000_0001_0000_0002_u64;
        let b = cookie_to_diag(c);
        assert_eq!(u32::from_ne_bytes(b[..4].try_into().unwrap()), 2);
        assert_eq!(u32::from_ne_bytes(b[4..].try_into().unwrap()), 1);
        assert_eq!(cookie_from_diag(b), c);
    }

    #[test]
    fn a_destroy_request_is_sock_destroy_for_that_socket() {
        let s = UdpSock {
            src: "10.0.0.5:40000".parse().unwrap(),
            dst: "10.0.1.7:53".parse().unwrap(),
            iface: 0,
            cookie: 0x1234,
        };
        let b = encode(
            SockDiagDestroy::new(SockDiagMessage::InetRequest(destroy_request(&s))),
            NLM_F_ACK,
            9,
        );
        // nlmsghdr (16) + inet_diag_req_v2 (56).
        assert_eq!(b.len(), 72);
        assert_eq!(u16::from_ne_bytes(b[4..6].try_into().unwrap()), 21); // SOCK_DESTROY
        assert_eq!(
            u16::from_ne_bytes(b[6..8].try_into().unwrap()),
            NLM_F_REQUEST | NLM_F_ACK
        );
        // family, protocol, ext, pad, states (4), then inet_diag_sockid.
        assert_eq!(&b[16..18], &[libc::AF_INET as u8, libc::IPPROTO_UDP as u8]);
        let id = &b[24..];
        assert_eq!(&id[0..2], &40000u16.to_be_bytes());
        assert_eq!(&id[2..4], &53u16.to_be_bytes());
        assert_eq!(&id[4..8], &[10, 0, 0, 5]);
        assert_eq!(&id[20..24], &[10, 0, 1, 7]);
        assert_eq!(cookie_from_diag(id[40..48].try_into().unwrap()), 0x1234);
    }
}

/// Needs no privilege: any process may dump its namespace's sockets.
#[cfg(test)]
mod kernel_tests {
    use std::{io, os::fd::AsRawFd as _};

    use super::*;

    fn so_cookie(s: &std::net::UdpSocket) -> u64 {
        let mut cookie = 0u64;
        let mut len = size_of::<u64>() as libc::socklen_t;
        // SAFETY: a valid fd and an out-buffer of the size passed.
        let rc = unsafe {
            libc::getsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_COOKIE,
                (&raw mut cookie).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "SO_COOKIE: {}", io::Error::last_os_error());
        cookie
    }

    #[test]
    fn a_connected_udp_socket_is_dumped_with_its_cookie_and_an_unconnected_one_is_not() {
        let connected = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        connected.connect("127.0.0.1:9").expect("connect");
        let unconnected = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let (c, u) = (so_cookie(&connected), so_cookie(&unconnected));
        let dump = DiagSocket::new()
            .expect("sock_diag socket")
            .udp4_connected()
            .expect("dump");
        let found = dump
            .iter()
            .find(|s| s.cookie == c)
            .expect("the connected socket is in the dump");
        assert_eq!(
            found.src,
            connected.local_addr().unwrap().to_string().parse().unwrap()
        );
        assert_eq!(found.dst, "127.0.0.1:9".parse().unwrap());
        assert!(dump.iter().all(|s| s.cookie != u));
    }
}
