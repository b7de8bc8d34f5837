//! Masquerading of pod egress: a pod's flow to an address outside the cluster CIDR leaves the
//! node from the node's address, as flannel's or ip-masq-agent's MASQUERADE rule or Cilium's BPF
//! masquerading would send it. Pod-to-pod traffic (inside the cluster CIDR) keeps its source.
//!
//! Stateful, as netfilter's MASQUERADE: only connections a pod starts (a TCP SYN, the first
//! packet of anything else) are rewritten; a pod's answers on connections that reached it
//! another way (an inbound entry, a TCP segment of no connection seen starting) pass untouched.
//! The forward entry holds the node address and port the flow goes out with; the reply entry
//! (keyed by the reply as it arrives at the node) the pod to send it back to. The port always
//! comes from the NAT range, which the node's own sockets never use (see `ct::create`).

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    programs::TcContext,
};
use petrel_common::{
    CT_F_INBOUND, CT_F_MASQ, CT_F_SNAT, CtKey, CtValue, IPPROTO_TCP, config, stat,
};

use crate::{
    ct::{self, Port},
    maps::count,
    nat::{self, Flow},
};

/// Whether traffic from `saddr_be` to `daddr_be` leaves the cluster and must be masqueraded: the
/// source is a pod (inside the cluster CIDR) and the destination is not. Off when no cluster CIDR
/// or node address is configured.
#[inline(always)]
pub fn applies(saddr_be: u32, daddr_be: u32) -> bool {
    // Called for every non-service packet on the external side (note_inbound): the address
    // tests come before the node-address lookup, which most such packets never need.
    let mask = crate::maps::config(config::CLUSTER_MASK);
    if mask == 0 {
        return false;
    }
    let cidr = crate::maps::config(config::CLUSTER_CIDR);
    saddr_be & mask == cidr && daddr_be & mask != cidr && crate::maps::config(config::NODE_IP) != 0
}

/// Whether `addr_be` is outside the cluster CIDR (false when none is configured: then, as
/// kube-proxy without a local-traffic detector, nothing is known to be off-cluster).
#[inline(always)]
pub fn outside_cluster(addr_be: u32) -> bool {
    let mask = crate::maps::config(config::CLUSTER_MASK);
    mask != 0
        && addr_be & mask != crate::maps::config(config::CLUSTER_CIDR)
        && crate::maps::config(config::NODE_IP) != 0
}

/// Whether both addresses are inside the cluster CIDR (false when none is configured): pod to
/// pod. The CIDR is read once for the two.
#[inline(always)]
pub fn both_inside_cluster(a_be: u32, b_be: u32) -> bool {
    let mask = crate::maps::config(config::CLUSTER_MASK);
    let cidr = crate::maps::config(config::CLUSTER_CIDR);
    mask != 0 && a_be & mask == cidr && b_be & mask == cidr
}

/// A new pod flow that is not for a service: masquerade it when it leaves the cluster, else let
/// the stack route it untouched.
#[inline(always)]
pub fn egress(ctx: &mut TcContext, f: &Flow, key: &CtKey, now: u32) -> Result<i32, i64> {
    if !applies(f.saddr_be, f.daddr_be) {
        return Ok(TC_ACT_OK);
    }
    if f.proto == IPPROTO_TCP && !nat::is_tcp_syn(f) {
        // Not a connection this pod started here (a hostPort or other DNATed connection's
        // answer, or one that began before petrel ran): netfilter's to handle, untouched.
        count(stat::TCP_MIDSTREAM);
        return Ok(TC_ACT_OK);
    }
    // Only what the node forwards out: a flow to the node itself, or one without a route, is
    // the stack's to answer.
    let Some(oif) = nat::fib_egress(ctx, f.proto, f.saddr_be, f.daddr_be) else {
        return Ok(TC_ACT_OK);
    };
    let mut fwd = CtValue {
        src_addr_be: crate::maps::config(config::NODE_IP),
        src_port_be: f.sport_be,
        dst_addr_be: f.daddr_be,
        dst_port_be: f.dport_be,
        flags: CT_F_SNAT | CT_F_MASQ,
        // SAFETY: the skb pointer is valid for the program's run.
        ifindex: unsafe { (*ctx.skb.skb).ifindex },
        seen: ct::seen_bits(f.tcp_flags),
        ..Default::default()
    };
    if ct::create(key, &mut fwd, Port::Alloc, now).is_err() {
        return Ok(TC_ACT_SHOT);
    }
    count(stat::MASQUERADED);
    nat::apply(ctx, f, &fwd)?;
    Ok(nat::redirect_neigh(oif))
}

/// A packet from outside the cluster CIDR on its way into a pod, of no tracked connection: track
/// the connection as inbound, so that `egress` does not masquerade the pod's answers (as a
/// stateful MASQUERADE rule only rewrites connections pods start).
#[inline(always)]
pub fn note_inbound(f: &Flow, key: &CtKey, now: u32) {
    let mut fwd = CtValue {
        src_addr_be: f.saddr_be,
        src_port_be: f.sport_be,
        dst_addr_be: f.daddr_be,
        dst_port_be: f.dport_be,
        flags: CT_F_INBOUND,
        seen: ct::seen_bits(f.tcp_flags),
        ..Default::default()
    };
    let _ = ct::create(key, &mut fwd, Port::Fixed, now);
}

/// A packet of a masqueraded flow. If the node's address changed meanwhile, the flow is
/// masqueraded anew from the new one.
#[inline(always)]
pub fn forward(
    ctx: &mut TcContext,
    f: &Flow,
    key: &CtKey,
    v: &CtValue,
    now: u32,
) -> Result<i32, i64> {
    if v.src_addr_be != crate::maps::config(config::NODE_IP) {
        ct::remove(key, v);
        return egress(ctx, f, key, now);
    }
    let Some(oif) = nat::fib_egress(ctx, f.proto, f.saddr_be, f.daddr_be) else {
        return Ok(TC_ACT_OK);
    };
    nat::apply(ctx, f, v)?;
    Ok(nat::redirect_neigh(oif))
}
