//! Packet parsing and rewriting for the TC programs: incremental checksum updates for NAT, and
//! the ICMP "port unreachable" answer for services without a backend.

use aya_ebpf::{
    bindings::{
        BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_FIB_LOOKUP_SKIP_NEIGH, TC_ACT_OK, TC_ACT_SHOT,
        bpf_fib_lookup,
    },
    helpers::generated::{bpf_fib_lookup, bpf_redirect, bpf_redirect_neigh, bpf_skb_change_tail},
    programs::TcContext,
};
use petrel_common::{CtKey, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP};

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
/// key matches the reply), as conntrack and Cilium's NAT treat it.
pub struct Flow {
    pub proto: u8,
    pub ihl: usize,
    sport_off: usize,
    dport_off: usize,
    csum_off: usize,
    /// UDP checksums of 0 mean "none": keep them 0 (BPF_F_MARK_MANGLED_0).
    csum_flags: u64,
    /// The L4 checksum covers the addresses (TCP, UDP), not ICMP's.
    pseudo_hdr: bool,
    pub saddr_be: u32,
    pub daddr_be: u32,
    pub sport_be: u16,
    pub dport_be: u16,
}

#[inline(always)]
pub fn parse(ctx: &TcContext) -> Result<Option<Flow>, i64> {
    let eth_proto: u16 = ctx.load(12)?;
    if eth_proto != ETH_P_IP_BE {
        return Ok(None);
    }
    let vihl: u8 = ctx.load(ETH_HLEN)?;
    let ihl = ((vihl & 0x0f) as usize) * 4;
    if ihl < 20 {
        return Ok(None);
    }
    // Fragments after the first carry no L4 header.
    let frag: u16 = ctx.load(ETH_HLEN + 6)?;
    if u16::from_be(frag) & 0x1fff != 0 {
        return Ok(None);
    }
    let proto: u8 = ctx.load(ETH_HLEN + 9)?;
    let l4_off = ETH_HLEN + ihl;
    let (csum_off, csum_flags, pseudo_hdr, sport_off, dport_off) = match proto {
        IPPROTO_TCP => (l4_off + 16, 0u64, true, l4_off, l4_off + 2),
        IPPROTO_UDP => (
            l4_off + 6,
            u64::from(BPF_F_MARK_MANGLED_0),
            true,
            l4_off,
            l4_off + 2,
        ),
        IPPROTO_ICMP => match ctx.load::<u8>(l4_off)? {
            ICMP_ECHO_REQUEST => (l4_off + 2, 0, false, l4_off + 4, NO_PORT),
            ICMP_ECHO_REPLY => (l4_off + 2, 0, false, NO_PORT, l4_off + 4),
            _ => return Ok(None),
        },
        _ => return Ok(None),
    };
    let port =
        |off: usize| -> Result<u16, i64> { if off == NO_PORT { Ok(0) } else { ctx.load(off) } };
    Ok(Some(Flow {
        proto,
        ihl,
        sport_off,
        dport_off,
        csum_off,
        csum_flags,
        pseudo_hdr,
        saddr_be: ctx.load(IP_SRC_OFF)?,
        daddr_be: ctx.load(IP_DST_OFF)?,
        sport_be: port(sport_off)?,
        dport_be: port(dport_off)?,
    }))
}

/// The key a reply to `f` would have, untranslated (its addresses and ports swapped).
#[inline(always)]
pub fn reversed(f: &Flow) -> CtKey {
    CtKey {
        saddr_be: f.daddr_be,
        daddr_be: f.saddr_be,
        sport_be: f.dport_be,
        dport_be: f.sport_be,
        proto: f.proto,
        _pad: [0; 3],
    }
}

/// Whether the packet opens a TCP connection (SYN without ACK).
#[inline(always)]
pub fn is_tcp_syn(ctx: &TcContext, f: &Flow) -> bool {
    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;
    f.proto == IPPROTO_TCP
        && ctx
            .load::<u8>(ETH_HLEN + f.ihl + 13)
            .is_ok_and(|flags| flags & (SYN | ACK) == SYN)
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
        if f.pseudo_hdr {
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
    if old_port != new_port_be && port_off != NO_PORT {
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
/// frontend and sends it back out of the interface it came in on. The sender's kernel fails a
/// TCP connect() or a connected UDP socket with ECONNREFUSED at once, as a closed port would.
#[inline(always)]
pub fn reject(ctx: &mut TcContext, f: &Flow) -> Result<i32, i64> {
    if f.ihl != 20 {
        return Ok(TC_ACT_SHOT);
    }
    // The offending IP header and the first 8 bytes of its payload go into the ICMP message.
    // Fixed-size loads: `load_bytes` clamps its length to the packet, which the verifier
    // rejects as a possibly zero-sized read.
    let orig: [u8; 28] = ctx.load(ETH_HLEN)?;
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
    // SAFETY: the skb pointer is valid; egress of the receiving interface sends it back.
    Ok(unsafe { bpf_redirect((*ctx.skb.skb).ifindex, 0) } as i32)
}

/// The interface the routing table sends `src -> dst` out of, as if the packet were forwarded
/// from the interface it arrived on; None when it is not forwarded (a local destination, no
/// route, forwarding off).
#[inline(always)]
pub fn fib_egress(ctx: &TcContext, f: &Flow, src_be: u32, dst_be: u32) -> Option<u32> {
    // SAFETY: an all-zero bpf_fib_lookup is a valid starting value.
    let mut p: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    p.family = 2; // AF_INET
    p.l4_protocol = f.proto;
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
pub fn redirect_via_fib(ctx: &TcContext, f: &Flow, src_be: u32, dst_be: u32) -> i32 {
    match fib_egress(ctx, f, src_be, dst_be) {
        Some(ifindex) => redirect_neigh(ifindex),
        None => TC_ACT_OK,
    }
}
