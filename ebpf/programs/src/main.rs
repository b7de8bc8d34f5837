#![no_std]
#![no_main]
//! petrel's datapath programs.
//!
//! * `sock_connect4` (cgroup/connect4): socket-level load balancing. A connect() to a service
//!   frontend is rewritten to a backend once per socket; no per-packet NAT is needed.
//! * `tc_pod_ingress` (TCX ingress of each pod's host-side veth): per-packet load balancing for
//!   what socket-LB did not translate. DNAT of packets to a frontend, with a conntrack entry so a
//!   flow keeps its backend, and reverse NAT of the backend's replies.

mod lb;
mod maps;

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_OK, TC_ACT_SHOT},
    macros::{cgroup_sock_addr, classifier},
    programs::{SockAddrContext, TcContext},
};
use lb::{Frontend, Lookup};
use maps::{CONNTRACK, REV_CT, REV_NAT, count};
use petrel_common::{CtKey, CtValue, IPPROTO_TCP, IPPROTO_UDP, stat};

const ETH_HLEN: usize = 14;
const ETH_P_IP_BE: u16 = 0x0800u16.to_be();
const IP_CSUM_OFF: usize = ETH_HLEN + 10;
const IP_SRC_OFF: usize = ETH_HLEN + 12;
const IP_DST_OFF: usize = ETH_HLEN + 16;

/// An IPv4 TCP or UDP packet's addressing.
struct Flow {
    proto: u8,
    l4_off: usize,
    csum_off: usize,
    /// UDP checksums of 0 mean "none": keep them 0 (BPF_F_MARK_MANGLED_0).
    csum_flags: u64,
    saddr_be: u32,
    daddr_be: u32,
    sport_be: u16,
    dport_be: u16,
}

#[inline(always)]
fn parse(ctx: &TcContext) -> Result<Option<Flow>, i64> {
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
    let (csum_off, csum_flags) = match proto {
        IPPROTO_TCP => (l4_off + 16, 0u64),
        IPPROTO_UDP => (l4_off + 6, BPF_F_MARK_MANGLED_0 as u64),
        _ => return Ok(None),
    };
    Ok(Some(Flow {
        proto,
        l4_off,
        csum_off,
        csum_flags,
        saddr_be: ctx.load(IP_SRC_OFF)?,
        daddr_be: ctx.load(IP_DST_OFF)?,
        sport_be: ctx.load(l4_off)?,
        dport_be: ctx.load(l4_off + 2)?,
    }))
}

/// Rewrites the destination (`dst == true`) or source address and port, fixing the IP and L4
/// checksums incrementally.
#[inline(always)]
fn rewrite(
    ctx: &mut TcContext,
    f: &Flow,
    dst: bool,
    new_addr_be: u32,
    new_port_be: u16,
) -> Result<(), i64> {
    let (old_addr, old_port, addr_off, port_off) = if dst {
        (f.daddr_be, f.dport_be, IP_DST_OFF, f.l4_off + 2)
    } else {
        (f.saddr_be, f.sport_be, IP_SRC_OFF, f.l4_off)
    };
    ctx.l4_csum_replace(
        f.csum_off,
        old_addr as u64,
        new_addr_be as u64,
        BPF_F_PSEUDO_HDR as u64 | f.csum_flags | 4,
    )?;
    ctx.l4_csum_replace(
        f.csum_off,
        old_port as u64,
        new_port_be as u64,
        f.csum_flags | 2,
    )?;
    ctx.l3_csum_replace(IP_CSUM_OFF, old_addr as u64, new_addr_be as u64, 4)?;
    ctx.store(addr_off, &new_addr_be, 0)?;
    ctx.store(port_off, &new_port_be, 0)?;
    Ok(())
}

#[classifier]
pub fn tc_pod_ingress(mut ctx: TcContext) -> i32 {
    match try_tc_pod_ingress(&mut ctx) {
        Ok(verdict) => verdict,
        Err(_) => {
            count(stat::REWRITE_ERROR);
            TC_ACT_SHOT
        }
    }
}

fn try_tc_pod_ingress(ctx: &mut TcContext) -> Result<i32, i64> {
    count(stat::TC_SEEN);
    let Some(f) = parse(ctx)? else {
        return Ok(TC_ACT_OK);
    };
    let key = CtKey {
        saddr_be: f.saddr_be,
        daddr_be: f.daddr_be,
        sport_be: f.sport_be,
        dport_be: f.dport_be,
        proto: f.proto,
        _pad: [0; 3],
    };

    // A reply from a backend of a flow we translated: make it come from the frontend.
    // SAFETY: copied out at once.
    if let Some(rev) = unsafe { REV_CT.get(key) }.copied() {
        // SAFETY: copied out at once.
        if let Some(fe) = unsafe { REV_NAT.get(rev.rev_nat_id as u32) }.copied() {
            rewrite(ctx, &f, false, fe.addr_be, fe.port_be)?;
            count(stat::TC_REVNAT);
            return Ok(TC_ACT_OK);
        }
    }

    let fe = Frontend {
        addr_be: f.daddr_be,
        port_be: f.dport_be,
        proto: f.proto,
    };
    // An established flow keeps its backend while that backend exists.
    // SAFETY: copied out at once.
    let pinned = unsafe { CONNTRACK.get(key) }
        .copied()
        .and_then(|ct| lb::backend(ct.backend_id).map(|b| (ct, b)));
    let backend = match pinned {
        Some((_, backend)) => backend,
        None => match lb::select_internal(&fe) {
            Lookup::NotService => return Ok(TC_ACT_OK),
            Lookup::NoBackend => return Ok(TC_ACT_SHOT),
            Lookup::Selected {
                backend_id,
                backend,
                rev_nat_id,
            } => {
                let ct = CtValue {
                    backend_id,
                    rev_nat_id,
                    _pad: [0; 2],
                };
                CONNTRACK.insert(key, ct, 0)?;
                let rev_key = CtKey {
                    saddr_be: backend.addr_be,
                    daddr_be: f.saddr_be,
                    sport_be: backend.port_be,
                    dport_be: f.sport_be,
                    proto: f.proto,
                    _pad: [0; 3],
                };
                REV_CT.insert(rev_key, ct, 0)?;
                backend
            }
        },
    };
    rewrite(ctx, &f, true, backend.addr_be, backend.port_be)?;
    count(stat::TC_DNAT);
    Ok(TC_ACT_OK)
}

#[cgroup_sock_addr(connect4)]
pub fn sock_connect4(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: the kernel hands a valid bpf_sock_addr; narrow reads are allowed.
    let (addr_be, port, proto) = unsafe { ((*sa).user_ip4, (*sa).user_port, (*sa).protocol) };
    let fe = Frontend {
        addr_be,
        port_be: port as u16,
        proto: proto as u8,
    };
    match lb::select_internal(&fe) {
        Lookup::NotService => 1,
        // The connect() fails with EPERM at once rather than timing out.
        Lookup::NoBackend => 0,
        Lookup::Selected { backend, .. } => {
            // Writes to user_ip4/user_port must be full 4-byte stores.
            // SAFETY: valid context pointer, fields writable in connect4.
            unsafe {
                core::ptr::write_volatile(&raw mut (*sa).user_ip4, backend.addr_be);
                core::ptr::write_volatile(&raw mut (*sa).user_port, backend.port_be as u32);
            }
            count(stat::SOCK_TRANSLATED);
            1
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
