//! Ethernet/IPv4/TCP/UDP packets for BPF_PROG_TEST_RUN fixtures: built with correct checksums,
//! parsed back with every checksum verified; and a bounded SYN flood sent through a raw socket.

use std::net::{Ipv4Addr, SocketAddrV4};

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;
pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;

const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

fn sum(bytes: &[u8], mut acc: u32) -> u32 {
    for c in bytes.chunks(2) {
        acc += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

fn pseudo(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize) -> u32 {
    let mut p = Vec::with_capacity(12);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&[0, proto]);
    p.extend_from_slice(&(len as u16).to_be_bytes());
    sum(&p, 0)
}

/// An IPv4 packet with a TCP (SYN unless `flags` says otherwise) or UDP header and `payload`.
pub fn build(
    proto: u8,
    src: SocketAddrV4,
    dst: SocketAddrV4,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let l4_len = if proto == TCP { 20 } else { 8 } + payload.len();
    let mut p = Vec::new();
    p.extend_from_slice(&NODE_MAC);
    p.extend_from_slice(&CLIENT_MAC);
    p.extend_from_slice(&[0x08, 0x00]);
    let total = 20 + l4_len;
    let mut ip = vec![0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, proto, 0, 0];
    ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    ip.extend_from_slice(&src.ip().octets());
    ip.extend_from_slice(&dst.ip().octets());
    let c = fold(sum(&ip, 0));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    p.extend_from_slice(&ip);
    let mut l4 = Vec::new();
    l4.extend_from_slice(&src.port().to_be_bytes());
    l4.extend_from_slice(&dst.port().to_be_bytes());
    if proto == TCP {
        l4.extend_from_slice(&1000u32.to_be_bytes());
        l4.extend_from_slice(&0u32.to_be_bytes());
        l4.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    } else {
        l4.extend_from_slice(&(l4_len as u16).to_be_bytes());
        l4.extend_from_slice(&[0, 0]);
    }
    l4.extend_from_slice(payload);
    let c = fold(sum(&l4, pseudo(*src.ip(), *dst.ip(), proto, l4_len)));
    let off = if proto == TCP { 16 } else { 6 };
    l4[off..off + 2].copy_from_slice(&c.to_be_bytes());
    p.extend_from_slice(&l4);
    p
}

/// What a packet says, after its checksums were verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub proto: u8,
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    /// ICMP: (type, code, the embedded original packet's destination).
    pub icmp: Option<(u8, u8, SocketAddrV4)>,
}

/// Parses an Ethernet/IPv4 packet, panicking if any checksum is wrong.
pub fn parse(p: &[u8]) -> Parsed {
    assert!(
        p.len() >= 34 && p[12..14] == [0x08, 0x00],
        "not IPv4: {p:02x?}"
    );
    let ip = &p[14..34];
    assert_eq!(fold(sum(ip, 0)), 0, "bad IP checksum");
    let proto = ip[9];
    let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    let src_ip = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst_ip = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let l4 = &p[34..14 + total];
    let port = |o: usize| u16::from_be_bytes([l4[o], l4[o + 1]]);
    match proto {
        TCP | UDP => {
            let zero_udp = proto == UDP && l4[6..8] == [0, 0];
            if !zero_udp {
                assert_eq!(
                    fold(sum(l4, pseudo(src_ip, dst_ip, proto, l4.len()))),
                    0,
                    "bad L4 checksum"
                );
            }
            Parsed {
                proto,
                src: SocketAddrV4::new(src_ip, port(0)),
                dst: SocketAddrV4::new(dst_ip, port(2)),
                icmp: None,
            }
        }
        ICMP => {
            assert_eq!(fold(sum(l4, 0)), 0, "bad ICMP checksum");
            let inner = &l4[8..];
            let inner_dst = Ipv4Addr::new(inner[16], inner[17], inner[18], inner[19]);
            let inner_port = u16::from_be_bytes([inner[22], inner[23]]);
            Parsed {
                proto,
                src: SocketAddrV4::new(src_ip, 0),
                dst: SocketAddrV4::new(dst_ip, 0),
                icmp: Some((l4[0], l4[1], SocketAddrV4::new(inner_dst, inner_port))),
            }
        }
        other => panic!("unexpected protocol {other}"),
    }
}

/// An ICMP error (`kind`, `code`) from `src` to `dst` quoting `about` (an Ethernet frame as
/// `build` makes it): its IP header and the first 8 bytes of its payload, as routers send.
pub fn icmp_error(kind: u8, code: u8, src: Ipv4Addr, dst: Ipv4Addr, about: &[u8]) -> Vec<u8> {
    let quoted = &about[14..14 + 28];
    let mut icmp = vec![kind, code, 0, 0, 0, 0, 0, 0];
    if kind == 3 && code == 4 {
        // Fragmentation needed: the next hop's MTU in the second half of the rest field.
        icmp[6..8].copy_from_slice(&1280u16.to_be_bytes());
    }
    icmp.extend_from_slice(quoted);
    let c = fold(sum(&icmp, 0));
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    ip_frame(1, src, dst, 0x4000, &icmp)
}

fn ip_frame(proto: u8, src: Ipv4Addr, dst: Ipv4Addr, frag: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&NODE_MAC);
    p.extend_from_slice(&CLIENT_MAC);
    p.extend_from_slice(&[0x08, 0x00]);
    let mut ip = vec![0x45, 0, 0, 0, 0x56, 0x78, 0, 0, 64, proto, 0, 0];
    ip[2..4].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    ip[6..8].copy_from_slice(&frag.to_be_bytes());
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let c = fold(sum(&ip, 0));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    p.extend_from_slice(&ip);
    p.extend_from_slice(payload);
    p
}

/// The quoted packet of an ICMP error (after its checksums were verified by `parse`): its
/// source and destination, with the quoted IP header's checksum verified.
pub fn quoted(p: &[u8]) -> (SocketAddrV4, SocketAddrV4) {
    let inner = &p[14 + 20 + 8..];
    assert_eq!(fold(sum(&inner[..20], 0)), 0, "bad quoted IP checksum");
    let ip = |o: usize| Ipv4Addr::new(inner[o], inner[o + 1], inner[o + 2], inner[o + 3]);
    let port = |o: usize| u16::from_be_bytes([inner[o], inner[o + 1]]);
    (
        SocketAddrV4::new(ip(12), port(20)),
        SocketAddrV4::new(ip(16), port(22)),
    )
}

/// A UDP datagram of `payload` from `src` to `dst`, as IPv4 fragments of at most `mtu` bytes.
pub fn udp_fragments(
    src: SocketAddrV4,
    dst: SocketAddrV4,
    payload: &[u8],
    mtu: usize,
) -> Vec<Vec<u8>> {
    let whole = build(UDP, src, dst, 0, payload);
    let l4 = &whole[34..];
    let step = (mtu - 20) / 8 * 8;
    let mut out = Vec::new();
    let mut off = 0;
    while off < l4.len() {
        let end = (off + step).min(l4.len());
        let more = if end < l4.len() { 0x2000 } else { 0 };
        out.push(ip_frame(
            UDP,
            *src.ip(),
            *dst.ip(),
            more | (off / 8) as u16,
            &l4[off..end],
        ));
        off = end;
    }
    out
}

/// Reassembles IPv4 fragments (in order, as `udp_fragments` made them) into one frame, after
/// checking that they agree on addresses, protocol and identification and each has a valid IP
/// checksum.
pub fn reassemble(frags: &[Vec<u8>]) -> Vec<u8> {
    let first = &frags[0];
    let mut l4 = Vec::new();
    for f in frags {
        assert_eq!(fold(sum(&f[14..34], 0)), 0, "bad IP checksum on a fragment");
        assert_eq!(
            f[14 + 12..14 + 20],
            first[14 + 12..14 + 20],
            "addresses differ"
        );
        assert_eq!(
            f[14 + 4..14 + 6],
            first[14 + 4..14 + 6],
            "identification differs"
        );
        let total = u16::from_be_bytes([f[16], f[17]]) as usize;
        let off = (u16::from_be_bytes([f[20], f[21]]) & 0x1fff) as usize * 8;
        assert_eq!(off, l4.len(), "fragments out of order");
        l4.extend_from_slice(&f[34..14 + total]);
    }
    ip_frame(
        first[14 + 9],
        Ipv4Addr::new(first[26], first[27], first[28], first[29]),
        Ipv4Addr::new(first[30], first[31], first[32], first[33]),
        0,
        &l4,
    )
}

/// Sends `count` TCP SYNs from `src_ip` to `dst`, each from a source port drawn at random from
/// 1024..=65535 (a xorshift generator seeded with `seed`, so a run can be repeated), through a
/// raw IPv4 socket in the calling thread's namespace: a SYN flood that stays inside the test's
/// namespaces. A full socket buffer (ENOBUFS) is waited out, not counted. Returns how many were
/// sent.
pub fn syn_flood(
    src_ip: Ipv4Addr,
    dst: SocketAddrV4,
    count: usize,
    seed: u64,
) -> std::io::Result<usize> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    // SAFETY: socket(2) with constant arguments; the fd is owned below.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `raw` is a new descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(*dst.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let mut state = seed | 1;
    let mut sent = 0;
    while sent < count {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let port = 1024 + (state % (65536 - 1024)) as u16;
        // IPPROTO_RAW implies IP_HDRINCL: the packet starts at the IP header.
        let pkt = build(TCP, SocketAddrV4::new(src_ip, port), dst, SYN, &[]);
        let ip = &pkt[14..];
        // SAFETY: valid buffer and sockaddr_in for the duration of the call.
        let r = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                ip.as_ptr().cast(),
                ip.len(),
                0,
                std::ptr::from_ref(&sin).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOBUFS) {
                std::thread::sleep(std::time::Duration::from_micros(200));
                continue;
            }
            return Err(e);
        }
        sent += 1;
    }
    Ok(sent)
}
