#![no_std]
#![no_main]
//! petrel's datapath programs.
//!
//! * `sock_connect4`, `sock_sendmsg4`, `sock_recvmsg4`, `sock_getpeername4` (cgroup sock_addr):
//!   socket-level load balancing, translated once per socket; the application sees the VIP.
//!   `sock_connect6`, `sock_sendmsg6`, `sock_recvmsg6`, `sock_getpeername6`: the same for
//!   AF_INET6 sockets given IPv4-mapped addresses (other IPv6 addresses pass untouched).
//! * `sock_release` (cgroup sock): a closed socket's socket-LB reverse entry goes with it.
//! * `tc_pod_ingress` (TCX ingress of each pod's host-side veth): per-packet load balancing of
//!   in-cluster traffic that socket-LB did not translate, reverse NAT of backend replies, and
//!   masquerading of pod egress that leaves the cluster CIDR.
//! * `tc_pod_egress` (TCX egress of each pod's host-side veth): connections reaching a pod from
//!   outside the cluster CIDR are tracked as inbound, so masquerading never rewrites answers.
//! * `tc_external_ingress` (TCX ingress of the node's external interfaces): NodePort, externalIPs
//!   and LoadBalancer traffic from outside the node, and the replies of SNATed and masqueraded
//!   flows.
//! * `tc_external_egress` (TCX egress of the node's external interfaces): answers of host-network
//!   backends on this node, which leave without passing a pod veth, and host processes'
//!   connections to services when socket-LB does not translate them.

mod ct;
mod lb;
mod maps;
mod masq;
mod nat;
mod sock;
mod tc;

use aya_ebpf::{
    bindings::TC_ACT_SHOT,
    macros::{cgroup_sock, cgroup_sock_addr, classifier},
    programs::{SockAddrContext, SockContext, TcContext},
};
use maps::count;
use petrel_common::stat;

fn verdict(r: Result<i32, i64>) -> i32 {
    match r {
        Ok(v) => v,
        Err(_) => {
            count(stat::DROP_REWRITE_ERROR);
            TC_ACT_SHOT
        }
    }
}

#[classifier]
pub fn tc_pod_ingress(mut ctx: TcContext) -> i32 {
    verdict(tc::handle(&mut ctx, true))
}

#[classifier]
pub fn tc_external_ingress(mut ctx: TcContext) -> i32 {
    verdict(tc::handle(&mut ctx, false))
}

#[classifier]
pub fn tc_pod_egress(mut ctx: TcContext) -> i32 {
    // It rewrites nothing, so it has no error to turn into a verdict.
    tc::handle_pod_egress(&mut ctx)
}

#[classifier]
pub fn tc_external_egress(mut ctx: TcContext) -> i32 {
    verdict(tc::handle_egress(&mut ctx))
}

#[cgroup_sock(sock_release)]
pub fn sock_release(ctx: SockContext) -> i32 {
    sock::release(&ctx)
}

#[cgroup_sock_addr(connect4)]
pub fn sock_connect4(ctx: SockAddrContext) -> i32 {
    sock::translate::<false>(&ctx, false)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock::translate::<false>(&ctx, true)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    sock::reverse::<false>(&ctx)
}

#[cgroup_sock_addr(getpeername4)]
pub fn sock_getpeername4(ctx: SockAddrContext) -> i32 {
    sock::reverse::<false>(&ctx)
}

#[cgroup_sock_addr(connect6)]
pub fn sock_connect6(ctx: SockAddrContext) -> i32 {
    sock::translate::<true>(&ctx, false)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sock_sendmsg6(ctx: SockAddrContext) -> i32 {
    sock::translate::<true>(&ctx, true)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn sock_recvmsg6(ctx: SockAddrContext) -> i32 {
    sock::reverse::<true>(&ctx)
}

#[cgroup_sock_addr(getpeername6)]
pub fn sock_getpeername6(ctx: SockAddrContext) -> i32 {
    sock::reverse::<true>(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
