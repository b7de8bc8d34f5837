//! Socket-level load balancing (cgroup sock_addr hooks): a connect() or an unconnected UDP
//! sendmsg() to a frontend goes to a backend directly, translated once per socket; recvmsg()
//! and getpeername() show the application the frontend, never the backend.
//!
//! The same logic serves AF_INET sockets (the `*4` hooks) and AF_INET6 sockets given an
//! IPv4-mapped address (`::ffff:10.96.0.10`, the `*6` hooks: many JVMs and dual-stack programs
//! open AF_INET6 sockets for everything, and the kernel runs only the `*6` hooks for them; as
//! Cilium's `sock6_xlate_v4_in_v6`). Other IPv6 addresses pass untouched (IPv6 services are not
//! served yet). An unconnected AF_INET6 UDP socket sending to a mapped address runs `sendmsg4`
//! (the kernel hands the datagram to the IPv4 code first); `sendmsg6` handles the mapped case
//! anyway, as Cilium's does, and `recvmsg6` shows the frontend either way. `V6` picks which
//! context fields are read and written: the kernel refuses `user_ip4` in an IPv6 hook and
//! `user_ip6` in an IPv4 one, and the constant removes the other branch at compile time.

use aya_ebpf::{
    helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_set_retval},
    programs::{SockAddrContext, SockContext},
};
use petrel_common::{AFFINITY_NETNS, IPPROTO_UDP, SockKey, SockValue, config, stat};

use crate::{
    lb::{self, Client, Frontend, Lookup},
    maps::{SOCK_CT, SOCK_REVNAT, count},
};

const ALLOW: i32 = 1;
const DENY: i32 = 0;
const ECONNREFUSED: i32 = 111;
const EHOSTUNREACH: i32 = 113;

#[inline(always)]
fn cookies(ctx: &SockAddrContext) -> (u64, u64) {
    // SAFETY: both helpers are allowed for cgroup sock_addr programs (5.7+ for the netns one).
    unsafe {
        (
            bpf_get_socket_cookie(ctx.sock_addr.cast()),
            bpf_get_netns_cookie(ctx.sock_addr.cast()),
        )
    }
}

/// The client address loadBalancerSourceRanges are checked against: in the host's network
/// namespace the node address (the source the host uses toward a load balancer's address, and
/// what kube-proxy tests its ranges against); in a pod, not known at connect() (the socket is not
/// bound yet), so 0: such a frontend is left to the TC path, which sees the packet's source.
#[inline(always)]
fn client_addr(netns: u64) -> u32 {
    // SAFETY: a NULL context asks for the initial network namespace's cookie (Linux 5.7+).
    let host = unsafe { bpf_get_netns_cookie(core::ptr::null_mut()) };
    if netns == host {
        crate::maps::config(config::NODE_IP)
    } else {
        0
    }
}

/// Whether socket-LB translates for a socket in network namespace `netns`: everywhere, or with
/// `--socket-lb-hostns-only` (Cilium's bpf-lb-sock-hostns-only) only in the host's namespace,
/// whose cookie userspace wrote; pods' traffic is then left to the TC path, so a service mesh's
/// sidecar redirect sees the service, not a backend, as the original destination.
#[inline(always)]
fn translates_in(netns: u64) -> bool {
    let lo = crate::maps::config(config::SOCK_LB_NETNS_LO);
    let hi = crate::maps::config(config::SOCK_LB_NETNS_HI);
    (lo == 0 && hi == 0) || netns == ((u64::from(hi) << 32) | u64::from(lo))
}

/// The IPv4 destination of the call (network order) and its port, or None for an IPv6 address
/// that is not IPv4-mapped.
#[inline(always)]
fn read_dst<const V6: bool>(ctx: &SockAddrContext) -> Option<(u32, u16)> {
    let sa = ctx.sock_addr;
    // SAFETY: the kernel hands a valid bpf_sock_addr; 4-byte reads of the fields this hook
    // allows (user_ip6 in the IPv6 hooks, user_ip4 in the IPv4 ones).
    unsafe {
        let port = (*sa).user_port as u16;
        if V6 {
            let a = core::ptr::read_volatile(&raw const (*sa).user_ip6[0]);
            let b = core::ptr::read_volatile(&raw const (*sa).user_ip6[1]);
            let c = core::ptr::read_volatile(&raw const (*sa).user_ip6[2]);
            if a != 0 || b != 0 || c != V4_MAPPED_BE {
                return None;
            }
            Some((core::ptr::read_volatile(&raw const (*sa).user_ip6[3]), port))
        } else {
            Some(((*sa).user_ip4, port))
        }
    }
}

/// `::ffff:0:0/96`'s third word in network order.
const V4_MAPPED_BE: u32 = 0x0000_ffffu32.to_be();

/// Fails the syscall with `errno` (bpf_set_retval: Linux 5.18+).
#[inline(always)]
fn fail(errno: i32) -> i32 {
    // SAFETY: plain helper call.
    unsafe { bpf_set_retval(-errno) };
    DENY
}

/// Rewrites the destination; an IPv4-mapped address keeps its `::ffff:` prefix.
#[inline(always)]
fn write_dst<const V6: bool>(ctx: &SockAddrContext, addr_be: u32, port_be: u16) {
    // Writes to user_ip4/user_ip6/user_port must be full 4-byte stores.
    // SAFETY: valid context pointer; the fields are writable in these hooks.
    unsafe {
        if V6 {
            core::ptr::write_volatile(&raw mut (*ctx.sock_addr).user_ip6[3], addr_be);
        } else {
            core::ptr::write_volatile(&raw mut (*ctx.sock_addr).user_ip4, addr_be);
        }
        core::ptr::write_volatile(&raw mut (*ctx.sock_addr).user_port, u32::from(port_be));
    }
}

/// Translates the destination of a connect() or sendmsg(). `sticky`: unconnected UDP, where every
/// datagram passes here and should keep its socket's backend.
#[inline(always)]
pub fn translate<const V6: bool>(ctx: &SockAddrContext, sticky: bool) -> i32 {
    // SAFETY: the kernel hands a valid bpf_sock_addr.
    let proto = unsafe { (*ctx.sock_addr).protocol };
    if sticky && proto as u8 != IPPROTO_UDP {
        return ALLOW;
    }
    let Some((addr_be, port_be)) = read_dst::<V6>(ctx) else {
        return ALLOW;
    };
    let fe = Frontend {
        addr_be,
        port_be,
        proto: proto as u8,
    };
    let (sock, netns) = cookies(ctx);
    if !translates_in(netns) {
        return ALLOW;
    }
    let ct_key = SockKey {
        cookie: sock,
        addr_be,
        port_be: fe.port_be,
        _pad: [0; 2],
    };
    if sticky {
        // SAFETY: copied out at once.
        if let Some(v) = unsafe { SOCK_CT.get(ct_key) }.copied() {
            // The backend must still exist at the address it had: an id alone could name
            // another service's backend after churn.
            match lb::backend(v.backend_id) {
                Some(b) if b.addr_be == v.addr_be && b.port_be == v.port_be => {
                    write_dst::<V6>(ctx, b.addr_be, b.port_be);
                    count(stat::SOCK_TRANSLATED);
                    return ALLOW;
                }
                _ => count(stat::REBALANCED),
            }
        }
    }
    // A backend at random per connect() (per socket for unconnected UDP, which SOCK_CT keeps),
    // as kube-proxy picks per connection, for every frontend: Maglev over anything socket-LB
    // knows (the netns) would send every connection of a pod or of the host to one backend
    // forever. Maglev stays for the TC path from outside, where every node must agree.
    let client = Client {
        kind: AFFINITY_NETNS,
        id: netns,
        hash: 0,
        maglev: false,
        saddr_be: client_addr(netns),
    };
    match lb::select(&fe, true, &client) {
        Lookup::NotService => ALLOW,
        Lookup::Reject => fail(ECONNREFUSED),
        Lookup::Drop => fail(EHOSTUNREACH),
        Lookup::Selected {
            backend_id,
            backend,
            ..
        } => {
            let rev_key = SockKey {
                cookie: sock,
                addr_be: backend.addr_be,
                port_be: backend.port_be,
                _pad: [0; 2],
            };
            let rev = SockValue {
                addr_be,
                port_be: fe.port_be,
                _pad: [0; 2],
                backend_id,
            };
            let _ = SOCK_REVNAT.insert(rev_key, rev, 0);
            if sticky {
                let chosen = SockValue {
                    addr_be: backend.addr_be,
                    port_be: backend.port_be,
                    ..rev
                };
                let _ = SOCK_CT.insert(ct_key, chosen, 0);
            }
            write_dst::<V6>(ctx, backend.addr_be, backend.port_be);
            count(stat::SOCK_TRANSLATED);
            ALLOW
        }
    }
}

/// recvmsg()/getpeername(): show the frontend in place of the backend this socket talks to.
#[inline(always)]
pub fn reverse<const V6: bool>(ctx: &SockAddrContext) -> i32 {
    let Some((addr_be, port_be)) = read_dst::<V6>(ctx) else {
        return ALLOW;
    };
    let (sock, _) = cookies(ctx);
    let key = SockKey {
        cookie: sock,
        addr_be,
        port_be,
        _pad: [0; 2],
    };
    // SAFETY: copied out at once.
    if let Some(v) = unsafe { SOCK_REVNAT.get(key) }.copied() {
        write_dst::<V6>(ctx, v.addr_be, v.port_be);
    }
    ALLOW
}

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

/// A socket's release (cgroup sock_release, on close): the reverse entry connect() left for it
/// goes with it, keyed by the socket's cookie and its destination, which connect() rewrote to
/// the backend. Without this every connection's entry would stay until the LRU evicted it, and
/// under connection churn evict the entries of sockets still open (a long-lived unconnected UDP
/// socket's, whose answers would then show the backend's address). Unconnected sockets have no
/// destination here: their entries are left to the LRU (and the agent's socket destruction).
#[inline(always)]
pub fn release(ctx: &SockContext) -> i32 {
    let sk = ctx.sock;
    // SAFETY: the kernel hands a valid bpf_sock; these fields are readable in sock_release.
    // Each field by its own volatile load: the verifier refuses a context pointer the compiler
    // offset once for two fields.
    let (family, port_be, addr_be) = unsafe {
        let family = core::ptr::read_volatile(&raw const (*sk).family);
        let port = core::ptr::read_volatile(&raw const (*sk).dst_port);
        let addr = if family == AF_INET {
            core::ptr::read_volatile(&raw const (*sk).dst_ip4)
        } else if family == AF_INET6 {
            let a = core::ptr::read_volatile(&raw const (*sk).dst_ip6[0]);
            let b = core::ptr::read_volatile(&raw const (*sk).dst_ip6[1]);
            let c = core::ptr::read_volatile(&raw const (*sk).dst_ip6[2]);
            let d = core::ptr::read_volatile(&raw const (*sk).dst_ip6[3]);
            if a == 0 && b == 0 && c == V4_MAPPED_BE {
                d
            } else {
                0
            }
        } else {
            0
        };
        (family, port, addr)
    };
    if addr_be == 0 || (family != AF_INET && family != AF_INET6) {
        return ALLOW;
    }
    // SAFETY: allowed for cgroup sock programs.
    let cookie = unsafe { bpf_get_socket_cookie(sk.cast()) };
    let key = SockKey {
        cookie,
        addr_be,
        port_be,
        _pad: [0; 2],
    };
    let _ = SOCK_REVNAT.remove(key);
    ALLOW
}
