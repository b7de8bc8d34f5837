//! Socket-level load balancing (cgroup sock_addr hooks): a connect() or an unconnected UDP
//! sendmsg() to a frontend goes to a backend directly, translated once per socket; recvmsg()
//! and getpeername() show the application the frontend, never the backend.

use aya_ebpf::{
    helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_set_retval},
    programs::SockAddrContext,
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

/// Fails the syscall with `errno` (bpf_set_retval: Linux 5.18+).
#[inline(always)]
fn fail(errno: i32) -> i32 {
    // SAFETY: plain helper call.
    unsafe { bpf_set_retval(-errno) };
    DENY
}

#[inline(always)]
fn write_dst(ctx: &SockAddrContext, addr_be: u32, port_be: u16) {
    // Writes to user_ip4/user_port must be full 4-byte stores.
    // SAFETY: valid context pointer; the fields are writable in these hooks.
    unsafe {
        core::ptr::write_volatile(&raw mut (*ctx.sock_addr).user_ip4, addr_be);
        core::ptr::write_volatile(&raw mut (*ctx.sock_addr).user_port, u32::from(port_be));
    }
}

/// Translates the destination of a connect() or sendmsg(). `sticky`: unconnected UDP, where every
/// datagram passes here and should keep its socket's backend.
#[inline(always)]
pub fn translate(ctx: &SockAddrContext, sticky: bool) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: the kernel hands a valid bpf_sock_addr; narrow reads are allowed.
    let (addr_be, port, proto) = unsafe { ((*sa).user_ip4, (*sa).user_port, (*sa).protocol) };
    if sticky && proto as u8 != IPPROTO_UDP {
        return ALLOW;
    }
    let fe = Frontend {
        addr_be,
        port_be: port as u16,
        proto: proto as u8,
    };
    let (sock, netns) = cookies(ctx);
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
                    write_dst(ctx, b.addr_be, b.port_be);
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
            write_dst(ctx, backend.addr_be, backend.port_be);
            count(stat::SOCK_TRANSLATED);
            ALLOW
        }
    }
}

/// recvmsg()/getpeername(): show the frontend in place of the backend this socket talks to.
#[inline(always)]
pub fn reverse(ctx: &SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: valid context pointer.
    let (addr_be, port) = unsafe { ((*sa).user_ip4, (*sa).user_port) };
    let (sock, _) = cookies(ctx);
    let key = SockKey {
        cookie: sock,
        addr_be,
        port_be: port as u16,
        _pad: [0; 2],
    };
    // SAFETY: copied out at once.
    if let Some(v) = unsafe { SOCK_REVNAT.get(key) }.copied() {
        write_dst(ctx, v.addr_be, v.port_be);
    }
    ALLOW
}
