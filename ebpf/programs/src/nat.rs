//! Packet parsing and rewriting for the TC programs: incremental checksum updates for NAT, and
//! the ICMP "port unreachable" answer for services without a backend.

use aya_ebpf::{
    bindings::{
        BPF_F_INGRESS, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_FIB_LOOKUP_SKIP_NEIGH,
        TC_ACT_OK, TC_ACT_SHOT, bpf_fib_lookup,
    },
    helpers::generated::{bpf_fib_lookup, bpf_redirect, bpf_redirect_neigh, bpf_skb_change_tail},
    programs::TcContext,
};
use petrel_common::{
    CtKey, CtValue, FragKey, FragPorts, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, stat,
};

use crate::maps::{FRAGS, count};

pub const ETH_HLEN: usize = 14;
const ETH_P_IP_BE: u16 = 0x0800u16.to_be();
const IP_CSUM_OFF: usize = ETH_HLEN + 10;
const IP_SRC_OFF: usize = ETH_HLEN + 12;
const IP_DST_OFF: usize = ETH_HLEN + 16;

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;
/// `Flow::sport_off` / `dport_off` of an end that has no port (the reply side of an ICMP echo
/// request, the request side of a reply): read as 0, never written.
const NO_PORT: usize = 0;

/// An IPv4 TCP, UDP or ICMP echo packet's addressing. For ICMP echo the identifier plays the
/// port: the source port of a request, the destination port of a reply (so a request's reply
/// key matches the reply), as conntrack and Cilium's NAT treat it. A fragment after the first
/// has its datagram's ports from FRAGS and no L4 header: only its addresses are rewritten.
pub struct Flow {
    pub proto: u8,
    pub ihl: usize,
    sport_off: usize,
    dport_off: usize,
    /// 0: no L4 checksum to fix (a later fragment).
    csum_off: usize,
    /// UDP checksums of 0 mean "none": keep them 0 (BPF_F_MARK_MANGLED_0).
    csum_flags: u64,
    /// The L4 checksum covers the addresses (TCP, UDP), not ICMP's.
    pseudo_hdr: bool,
    pub saddr_be: u32,
    pub daddr_be: u32,
    pub sport_be: u16,
    pub dport_be: u16,
    /// TCP flags (0 for other protocols and later fragments).
    pub tcp_flags: u8,
}

/// An ICMP error (destination unreachable, time exceeded, parameter problem) and the header of
/// the packet it is about, which the node sent or forwarded (so, translated).
pub struct IcmpError {
    pub saddr_be: u32,
    pub daddr_be: u32,
    icmp_off: usize,
    inner_off: usize,
    inner_sport_off: usize,
    inner_dport_off: usize,
    pub inner_proto: u8,
    pub inner_saddr_be: u32,
    pub inner_daddr_be: u32,
    pub inner_sport_be: u16,
    pub inner_dport_be: u16,
}

pub enum Packet {
    Flow(Flow),
    IcmpError(IcmpError),
    /// Not IPv4, a protocol petrel does not translate, or a later fragment whose first was not
    /// seen: passed untouched.
    Other,
}

const IP_FRAG_OFF: usize = ETH_HLEN + 6;
const IP_ID_OFF: usize = ETH_HLEN + 4;
const IP_MF: u16 = 0x2000;
const IP_OFFSET_MASK: u16 = 0x1fff;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETERPROB: u8 = 12;

/// Where a protocol keeps its checksum and ports, relative to its header at `l4_off`:
/// (checksum offset, checksum flags, pseudo-header, sport offset, dport offset). ICMP echo's
/// identifier is the port of the end that has one; None for what is not translated.
type L4Layout = (usize, u64, bool, usize, usize);

#[inline(always)]
fn l4_layout(ctx: &TcContext, proto: u8, l4_off: usize) -> Result<Option<L4Layout>, i64> {
    Ok(match proto {
        IPPROTO_TCP => Some((l4_off + 16, 0u64, true, l4_off, l4_off + 2)),
        IPPROTO_UDP => Some((
            l4_off + 6,
            u64::from(BPF_F_MARK_MANGLED_0),
            true,
            l4_off,
            l4_off + 2,
        )),
        IPPROTO_ICMP => match ctx.load::<u8>(l4_off)? {
            ICMP_ECHO_REQUEST => Some((l4_off + 2, 0, false, l4_off + 4, NO_PORT)),
            ICMP_ECHO_REPLY => Some((l4_off + 2, 0, false, NO_PORT, l4_off + 4)),
            _ => None,
        },
        _ => None,
    })
}

#[inline(always)]
fn port(ctx: &TcContext, off: usize) -> Result<u16, i64> {
    if off == NO_PORT { Ok(0) } else { ctx.load(off) }
}

/// The packet's headers. A packet shorter than the headers it announces (a header cut short,
/// an IHL past the end) is malformed: counted and passed untouched like one with a bad IHL,
/// never dropped as a rewrite error.
#[inline(always)]
pub fn parse(ctx: &TcContext) -> Packet {
    match parse_headers(ctx) {
        Ok(p) => p,
        Err(_) => {
            count(stat::MALFORMED);
            Packet::Other
        }
    }
}

#[inline(always)]
fn parse_headers(ctx: &TcContext) -> Result<Packet, i64> {
    // Headers are read a block at a time (the IPv4 header, then the TCP or UDP header up to
    // its checksum): each bpf_skb_load_bytes is a helper call, and one per field made parsing
    // most of a program run's cost on every packet (profiled with kernel.bpf_stats_enabled).
    let eth_proto: u16 = ctx.load(12)?;
    if eth_proto != ETH_P_IP_BE {
        return Ok(Packet::Other);
    }
    let ip: [u8; 20] = ctx.load(ETH_HLEN)?;
    let vihl = ip[0];
    let ihl = ((vihl & 0x0f) as usize) * 4;
    if ihl < 20 || vihl >> 4 != 4 {
        count(stat::MALFORMED);
        return Ok(Packet::Other);
    }
    let at = |o: usize| o - ETH_HLEN;
    let proto = ip[9];
    let ne32 =
        |o: usize| u32::from_ne_bytes([ip[at(o)], ip[at(o) + 1], ip[at(o) + 2], ip[at(o) + 3]]);
    let saddr_be = ne32(IP_SRC_OFF);
    let daddr_be = ne32(IP_DST_OFF);
    let frag = u16::from_be_bytes([ip[at(IP_FRAG_OFF)], ip[at(IP_FRAG_OFF) + 1]]);
    let frag_key = FragKey {
        saddr_be,
        daddr_be,
        id_be: u16::from_ne_bytes([ip[at(IP_ID_OFF)], ip[at(IP_ID_OFF) + 1]]),
        proto,
        _pad: 0,
    };
    if frag & IP_OFFSET_MASK != 0 {
        // A later fragment: no L4 header; the ports are its first fragment's.
        // SAFETY: copied out at once.
        let Some(ports) = (unsafe { FRAGS.get(frag_key) }).copied() else {
            count(stat::FRAG_UNTRACKED);
            return Ok(Packet::Other);
        };
        count(stat::FRAG_TRANSLATED);
        return Ok(Packet::Flow(Flow {
            proto,
            ihl,
            sport_off: NO_PORT,
            dport_off: NO_PORT,
            csum_off: 0,
            csum_flags: 0,
            pseudo_hdr: false,
            saddr_be,
            daddr_be,
            sport_be: ports.sport_be,
            dport_be: ports.dport_be,
            tcp_flags: 0,
        }));
    }
    let l4_off = ETH_HLEN + ihl;
    let ports = |h: &[u8]| {
        (
            u16::from_ne_bytes([h[0], h[1]]),
            u16::from_ne_bytes([h[2], h[3]]),
        )
    };
    // TCP and UDP: one read through the checksum (the last field a rewrite touches: a header
    // cut before its end is malformed), the same bytes the layout below requires.
    let fast = if proto == IPPROTO_TCP {
        let h: [u8; 18] = ctx.load(l4_off)?;
        let (s, d) = ports(&h);
        Some((l4_off + 16, 0u64, s, d, h[13]))
    } else if proto == IPPROTO_UDP {
        let h: [u8; 8] = ctx.load(l4_off)?;
        let (s, d) = ports(&h);
        Some((l4_off + 6, u64::from(BPF_F_MARK_MANGLED_0), s, d, 0))
    } else {
        None
    };
    if let Some((csum_off, csum_flags, sport_be, dport_be, tcp_flags)) = fast {
        if frag & IP_MF != 0 {
            let _ = FRAGS.insert(frag_key, FragPorts { sport_be, dport_be }, 0);
        }
        return Ok(Packet::Flow(Flow {
            proto,
            ihl,
            sport_off: l4_off,
            dport_off: l4_off + 2,
            csum_off,
            csum_flags,
            pseudo_hdr: true,
            saddr_be,
            daddr_be,
            sport_be,
            dport_be,
            tcp_flags,
        }));
    }
    if proto == IPPROTO_ICMP {
        let t: u8 = ctx.load(l4_off)?;
        if t == ICMP_DEST_UNREACH || t == ICMP_TIME_EXCEEDED || t == ICMP_PARAMETERPROB {
            return parse_icmp_error(ctx, saddr_be, daddr_be, l4_off);
        }
    }
    let Some((csum_off, csum_flags, pseudo_hdr, sport_off, dport_off)) =
        l4_layout(ctx, proto, l4_off)?
    else {
        return Ok(Packet::Other);
    };
    // The L4 checksum is the last field a rewrite touches: a header cut before its end is
    // malformed (found by the tc_packets fuzz target: a 17-byte TCP header failed the rewrite).
    let _: u16 = ctx.load(csum_off)?;
    let sport_be = port(ctx, sport_off)?;
    let dport_be = port(ctx, dport_off)?;
    if frag & IP_MF != 0 {
        // The first fragment of a datagram: remember its ports for the others.
        let ports = FragPorts { sport_be, dport_be };
        let _ = FRAGS.insert(frag_key, ports, 0);
    }
    let tcp_flags = if proto == IPPROTO_TCP {
        ctx.load::<u8>(l4_off + 13)?
    } else {
        0
    };
    Ok(Packet::Flow(Flow {
        proto,
        ihl,
        sport_off,
        dport_off,
        csum_off,
        csum_flags,
        pseudo_hdr,
        saddr_be,
        daddr_be,
        sport_be,
        dport_be,
        tcp_flags,
    }))
}

/// The ICMP error at `icmp_off`: its quoted header must be IPv4 without options, followed by at
/// least the 8 bytes that hold the ports.
#[inline(always)]
fn parse_icmp_error(
    ctx: &TcContext,
    saddr_be: u32,
    daddr_be: u32,
    icmp_off: usize,
) -> Result<Packet, i64> {
    let inner_off = icmp_off + 8;
    let Ok(vihl) = ctx.load::<u8>(inner_off) else {
        count(stat::MALFORMED);
        return Ok(Packet::Other);
    };
    if vihl != 0x45 {
        count(stat::ICMP_ERROR_UNTRACKED);
        return Ok(Packet::Other);
    }
    let inner_proto: u8 = ctx.load(inner_off + 9)?;
    let inner_l4 = inner_off + 20;
    let Ok(layout) = l4_layout(ctx, inner_proto, inner_l4) else {
        count(stat::MALFORMED);
        return Ok(Packet::Other);
    };
    let Some((_, _, _, sport_off, dport_off)) = layout else {
        count(stat::ICMP_ERROR_UNTRACKED);
        return Ok(Packet::Other);
    };
    Ok(Packet::IcmpError(IcmpError {
        saddr_be,
        daddr_be,
        icmp_off,
        inner_off,
        inner_sport_off: sport_off,
        inner_dport_off: dport_off,
        inner_proto,
        inner_saddr_be: ctx.load(inner_off + 12)?,
        inner_daddr_be: ctx.load(inner_off + 16)?,
        inner_sport_be: port(ctx, sport_off)?,
        inner_dport_be: port(ctx, dport_off)?,
    }))
}

/// The conntrack key (in direction `dir`) of a packet with tuple `f`.
#[inline(always)]
pub fn key(f: &Flow, dir: u8) -> CtKey {
    CtKey {
        saddr_be: f.saddr_be,
        daddr_be: f.daddr_be,
        sport_be: f.sport_be,
        dport_be: f.dport_be,
        proto: f.proto,
        dir,
        _pad: [0; 2],
    }
}

/// The key a reply to `f` would have, untranslated (its addresses and ports swapped).
#[inline(always)]
pub fn reversed(f: &Flow, dir: u8) -> CtKey {
    CtKey {
        saddr_be: f.daddr_be,
        daddr_be: f.saddr_be,
        sport_be: f.dport_be,
        dport_be: f.sport_be,
        proto: f.proto,
        dir,
        _pad: [0; 2],
    }
}

impl IcmpError {
    /// The key of an answer to the quoted packet: the conntrack entry that translated it.
    #[inline(always)]
    pub fn answer_key(&self, dir: u8) -> CtKey {
        CtKey {
            saddr_be: self.inner_daddr_be,
            daddr_be: self.inner_saddr_be,
            sport_be: self.inner_dport_be,
            dport_be: self.inner_sport_be,
            proto: self.inner_proto,
            dir,
            _pad: [0; 2],
        }
    }
}

/// Whether the packet opens a TCP connection (SYN without ACK).
#[inline(always)]
pub fn is_tcp_syn(f: &Flow) -> bool {
    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;
    f.proto == IPPROTO_TCP && f.tcp_flags & (SYN | ACK) == SYN
}

/// Which end of the flow to rewrite.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum End {
    Src,
    Dst,
}

/// Rewrites one end's address and port (an ICMP echo's identifier, on the end that has it),
/// fixing the IP and L4 checksums incrementally.
#[inline(always)]
pub fn rewrite(
    ctx: &mut TcContext,
    f: &Flow,
    end: End,
    new_addr_be: u32,
    new_port_be: u16,
) -> Result<(), i64> {
    let (old_addr, old_port, addr_off, port_off) = match end {
        End::Dst => (f.daddr_be, f.dport_be, IP_DST_OFF, f.dport_off),
        End::Src => (f.saddr_be, f.sport_be, IP_SRC_OFF, f.sport_off),
    };
    if old_addr != new_addr_be {
        if f.pseudo_hdr && f.csum_off != 0 {
            ctx.l4_csum_replace(
                f.csum_off,
                u64::from(old_addr),
                u64::from(new_addr_be),
                u64::from(BPF_F_PSEUDO_HDR) | f.csum_flags | 4,
            )?;
        }
        ctx.l3_csum_replace(IP_CSUM_OFF, u64::from(old_addr), u64::from(new_addr_be), 4)?;
        ctx.store(addr_off, &new_addr_be, 0)?;
    }
    if old_port != new_port_be && port_off != NO_PORT && f.csum_off != 0 {
        ctx.l4_csum_replace(
            f.csum_off,
            u64::from(old_port),
            u64::from(new_port_be),
            f.csum_flags | 2,
        )?;
        ctx.store(port_off, &new_port_be, 0)?;
    }
    Ok(())
}

/// Applies a conntrack entry: the packet's source and destination become the entry's.
#[inline(always)]
pub fn apply(ctx: &mut TcContext, f: &Flow, v: &CtValue) -> Result<(), i64> {
    rewrite(ctx, f, End::Src, v.src_addr_be, v.src_port_be)?;
    rewrite(ctx, f, End::Dst, v.dst_addr_be, v.dst_port_be)
}

/// Replaces the 4-byte value at `off` inside an ICMP message, keeping the ICMP checksum (which
/// covers the quoted packet) right; `ip_csum_off`, when not 0, is a quoted IP header checksum
/// that covers the value too.
#[inline(always)]
fn icmp_store_addr(
    ctx: &mut TcContext,
    e: &IcmpError,
    off: usize,
    old: u32,
    new: u32,
) -> Result<(), i64> {
    if old == new {
        return Ok(());
    }
    let icmp_csum = e.icmp_off + 2;
    let inner_csum = e.inner_off + 10;
    let old_c: u16 = ctx.load(inner_csum)?;
    ctx.l3_csum_replace(inner_csum, u64::from(old), u64::from(new), 4)?;
    let new_c: u16 = ctx.load(inner_csum)?;
    ctx.store(off, &new, 0)?;
    ctx.l4_csum_replace(icmp_csum, u64::from(old), u64::from(new), 4)?;
    ctx.l4_csum_replace(icmp_csum, u64::from(old_c), u64::from(new_c), 2)
}

#[inline(always)]
fn icmp_store_port(
    ctx: &mut TcContext,
    e: &IcmpError,
    off: usize,
    old: u16,
    new: u16,
) -> Result<(), i64> {
    if old == new || off == NO_PORT {
        return Ok(());
    }
    ctx.store(off, &new, 0)?;
    ctx.l4_csum_replace(e.icmp_off + 2, u64::from(old), u64::from(new), 2)
}

/// Translates an ICMP error about a tracked packet, given `v`, the entry that translates answers
/// to that packet: the quoted packet becomes the one its sender originally sent (its source
/// what `v` rewrites to, its destination what `v` rewrites from), and the error goes to that
/// sender, from whom the sender addressed (the frontend, or the SNAT address): the NAT node
/// relays it as its own. Keeping the router's address as the source would send a packet from
/// that router back through it, which drops it as a martian when it is on the return path, and
/// trips reverse-path filters elsewhere; the cost is that traceroute through a NodePort shows
/// the frontend for the hops beyond the node. The quoted packet's own L4 checksum is left
/// alone, as Linux and Cilium do: receivers do not check it. Returns the new outer (source,
/// destination).
#[inline(always)]
pub fn translate_icmp_error(
    ctx: &mut TcContext,
    e: &IcmpError,
    v: &CtValue,
) -> Result<(u32, u32), i64> {
    // The quoted packet, as its sender sent it.
    let (src, sport) = (v.dst_addr_be, v.dst_port_be);
    let (dst, dport) = (v.src_addr_be, v.src_port_be);
    icmp_store_addr(ctx, e, e.inner_off + 12, e.inner_saddr_be, src)?;
    icmp_store_addr(ctx, e, e.inner_off + 16, e.inner_daddr_be, dst)?;
    icmp_store_port(ctx, e, e.inner_sport_off, e.inner_sport_be, sport)?;
    icmp_store_port(ctx, e, e.inner_dport_off, e.inner_dport_be, dport)?;
    let outer_src = dst;
    for (off, old, new) in [
        (IP_SRC_OFF, e.saddr_be, outer_src),
        (IP_DST_OFF, e.daddr_be, src),
    ] {
        if old != new {
            ctx.l3_csum_replace(IP_CSUM_OFF, u64::from(old), u64::from(new), 4)?;
            ctx.store(off, &new, 0)?;
        }
    }
    Ok((outer_src, src))
}

/// One's-complement sum of 16-bit words (in memory order), folded.
#[inline(always)]
fn csum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut i = 0;
    while i + 1 < bytes.len() {
        sum += u32::from(u16::from_ne_bytes([bytes[i], bytes[i + 1]]));
        i += 2;
    }
    // Two folds always suffice for fewer than 65536 words, and keep the verifier from
    // exploring a data-dependent loop.
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

const ICMP_LEN: usize = 8 + 28;
const REPLY_LEN: usize = ETH_HLEN + 20 + ICMP_LEN;

/// Turns the packet into an ICMP destination-unreachable / port-unreachable answer from the
/// frontend and sends it back out of the interface it came in on (`to_host`: a packet the node
/// itself was sending, seen at egress: the answer goes in through that interface's ingress
/// instead). The sender's kernel fails a TCP connect() or a connected UDP socket with
/// ECONNREFUSED at once, as a closed port would.
#[inline(always)]
pub fn reject(ctx: &mut TcContext, f: &Flow, to_host: bool) -> Result<i32, i64> {
    if f.ihl != 20 {
        return Ok(TC_ACT_SHOT);
    }
    // The offending IP header and the first 8 bytes of its payload go into the ICMP message.
    // Fixed-size loads: `load_bytes` clamps its length to the packet, which the verifier
    // rejects as a possibly zero-sized read.
    // A packet too short to quote (a later fragment of a few bytes: tc_packets fuzz finding)
    // is dropped, as when the answer cannot be built.
    let Ok(orig) = ctx.load::<[u8; 28]>(ETH_HLEN) else {
        return Ok(TC_ACT_SHOT);
    };
    let macs: [u8; 12] = ctx.load(0)?;

    // SAFETY: the context's skb is valid for the program's run.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb.cast(), REPLY_LEN as u32, 0) } != 0 {
        return Ok(TC_ACT_SHOT);
    }
    let mut out = [0u8; REPLY_LEN];
    // Ethernet: back to where it came from.
    out[..6].copy_from_slice(&macs[6..12]);
    out[6..12].copy_from_slice(&macs[..6]);
    out[12] = 0x08;
    // IPv4 header: from the frontend to the client.
    let ip = ETH_HLEN;
    out[ip] = 0x45;
    out[ip + 3] = (20 + ICMP_LEN) as u8;
    out[ip + 8] = 64;
    out[ip + 9] = 1;
    out[ip + 12..ip + 16].copy_from_slice(&f.daddr_be.to_ne_bytes());
    out[ip + 16..ip + 20].copy_from_slice(&f.saddr_be.to_ne_bytes());
    let c = csum(&out[ip..ip + 20]).to_ne_bytes();
    out[ip + 10] = c[0];
    out[ip + 11] = c[1];
    // ICMP type 3 code 3 + the original header.
    let icmp = ip + 20;
    out[icmp] = 3;
    out[icmp + 1] = 3;
    out[icmp + 8..icmp + 36].copy_from_slice(&orig);
    let c = csum(&out[icmp..icmp + ICMP_LEN]).to_ne_bytes();
    out[icmp + 2] = c[0];
    out[icmp + 3] = c[1];
    ctx.store(0, &out, 0)?;
    // SAFETY: the skb pointer is valid; egress of the receiving interface sends it back, its
    // ingress hands it to the node's own stack.
    let flags = if to_host { u64::from(BPF_F_INGRESS) } else { 0 };
    Ok(unsafe { bpf_redirect((*ctx.skb.skb).ifindex, flags) } as i32)
}

/// The interface the routing table sends `src -> dst` out of, as if the packet were forwarded
/// from the interface it arrived on; None when it is not forwarded (a local destination, no
/// route, forwarding off).
#[inline(always)]
pub fn fib_egress(ctx: &TcContext, proto: u8, src_be: u32, dst_be: u32) -> Option<u32> {
    // SAFETY: an all-zero bpf_fib_lookup is a valid starting value.
    let mut p: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    p.family = 2; // AF_INET
    p.l4_protocol = proto;
    // SAFETY: the skb pointer is valid for the program's run.
    p.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    p.__bindgen_anon_3.ipv4_src = src_be;
    p.__bindgen_anon_4.ipv4_dst = dst_be;
    // SAFETY: valid context and parameter pointers; SKIP_NEIGH (5.19+): redirect_neigh resolves it.
    let r = unsafe {
        bpf_fib_lookup(
            ctx.skb.skb.cast(),
            &mut p,
            size_of::<bpf_fib_lookup>() as i32,
            BPF_FIB_LOOKUP_SKIP_NEIGH,
        )
    };
    (r == 0).then_some(p.ifindex)
}

/// Sends the packet out of `ifindex`, resolving the next hop (gateway or on-link neighbour) the
/// way the stack would.
#[inline(always)]
pub fn redirect_neigh(ifindex: u32) -> i32 {
    // SAFETY: plain helper call; NULL params: the kernel resolves the next hop itself.
    unsafe { bpf_redirect_neigh(ifindex, core::ptr::null_mut(), 0, 0) as i32 }
}

/// Sends a packet whose source is now the node's own address straight out of the interface the
/// routing table picks for its destination (bpf_fib_lookup + bpf_redirect_neigh). Handing it to
/// the stack instead would get it dropped as a martian (a local source arriving from outside).
/// Falls back to the stack when the lookup fails.
#[inline(always)]
pub fn redirect_via_fib(ctx: &TcContext, proto: u8, src_be: u32, dst_be: u32) -> i32 {
    match fib_egress(ctx, proto, src_be, dst_be) {
        Some(ifindex) => redirect_neigh(ifindex),
        None => TC_ACT_OK,
    }
}
