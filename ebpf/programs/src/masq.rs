//! Masquerading of pod egress: a pod's flow to an address outside the cluster CIDR leaves the
//! node from the node's address, as flannel's or ip-masq-agent's MASQUERADE rule or Cilium's BPF
//! masquerading would send it. Pod-to-pod traffic (inside the cluster CIDR) keeps its source.
//!
//! The forward entry (CONNTRACK, keyed by the flow as the pod sent it) holds the node address and
//! port the flow goes out with; the reply entry (REV_CT, keyed by the reply as it arrives at the
//! node) holds the pod to send it back to. The pod's source port is kept when no other flow to
//! the same destination holds it, else a random free port is probed for.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::bpf_get_prandom_u32,
    programs::TcContext,
};
use petrel_common::{CT_F_INBOUND, CT_F_MASQ, CT_F_SNAT, CtKey, CtValue, config, stat};

use crate::{
    maps::{CONNTRACK, REV_CT, count},
    nat::{self, End, Flow},
};

/// Ports tried before a flow is dropped for want of one (the pod's own, then random ones).
const PROBES: u32 = 8;
/// Masquerading ports are taken from 1024..=65535.
const FIRST_PORT: u32 = 1024;

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

/// Whether both addresses are inside the cluster CIDR (false when none is configured): pod to
/// pod. The CIDR is read once for the two.
#[inline(always)]
pub fn both_inside_cluster(a_be: u32, b_be: u32) -> bool {
    let mask = crate::maps::config(config::CLUSTER_MASK);
    let cidr = crate::maps::config(config::CLUSTER_CIDR);
    mask != 0 && a_be & mask == cidr && b_be & mask == cidr
}

/// The reply key of `f` when it leaves as `node:port`.
#[inline(always)]
fn reply_key(f: &Flow, node_be: u32, port_be: u16) -> CtKey {
    CtKey {
        saddr_be: f.daddr_be,
        daddr_be: node_be,
        sport_be: f.dport_be,
        dport_be: port_be,
        proto: f.proto,
        _pad: [0; 3],
    }
}

/// Whether the reply entry for `node:port` is free, or already belongs to this pod's flow.
#[inline(always)]
fn port_is_ours(f: &Flow, node_be: u32, port_be: u16) -> bool {
    // SAFETY: copied out at once.
    match unsafe { REV_CT.get(reply_key(f, node_be, port_be)) }.copied() {
        None => true,
        Some(v) => v.nat_addr_be == f.saddr_be && v.nat_port_be == f.sport_be,
    }
}

#[inline(always)]
fn free_port(f: &Flow, node_be: u32) -> Option<u16> {
    let mut port = f.sport_be;
    for _ in 0..PROBES {
        if port_is_ours(f, node_be, port) {
            return Some(port);
        }
        // SAFETY: plain helper call.
        let r = unsafe { bpf_get_prandom_u32() };
        port = ((FIRST_PORT + r % (65536 - FIRST_PORT)) as u16).to_be();
    }
    None
}

/// A new pod flow that is not for a service: masquerade it when it leaves the cluster, else let
/// the stack route it untouched.
#[inline(always)]
pub fn egress(ctx: &mut TcContext, f: &Flow, key: &CtKey) -> Result<i32, i64> {
    if !applies(f.saddr_be, f.daddr_be) {
        return Ok(TC_ACT_OK);
    }
    // Only what the node forwards out: a flow to the node itself, or one without a route, is
    // the stack's to answer.
    let Some(oif) = nat::fib_egress(ctx, f, f.saddr_be, f.daddr_be) else {
        return Ok(TC_ACT_OK);
    };
    let node = crate::maps::config(config::NODE_IP);
    let Some(port) = free_port(f, node) else {
        count(stat::DROP_MASQ_NO_PORT);
        return Ok(TC_ACT_SHOT);
    };
    let ct = CtValue {
        flags: CT_F_SNAT | CT_F_MASQ,
        nat_addr_be: node,
        nat_port_be: port,
        // SAFETY: the skb pointer is valid for the program's run.
        ifindex: unsafe { (*ctx.skb.skb).ifindex },
        ..Default::default()
    };
    CONNTRACK.insert(key, ct, 0)?;
    let rev = CtValue {
        nat_addr_be: f.saddr_be,
        nat_port_be: f.sport_be,
        ..ct
    };
    REV_CT.insert(reply_key(f, node, port), rev, 0)?;
    count(stat::MASQUERADED);
    nat::rewrite(ctx, f, End::Src, node, port)?;
    Ok(nat::redirect_neigh(oif))
}

/// A packet that is no service's, arriving from outside the node: if it comes from outside the
/// cluster CIDR to a pod, remember its reply as inbound, so that `egress` does not masquerade
/// the pod's answers (as a stateful MASQUERADE rule only rewrites connections pods start).
#[inline(always)]
pub fn note_inbound(f: &Flow) {
    if !applies(f.daddr_be, f.saddr_be) {
        return;
    }
    let reply = nat::reversed(f);
    // SAFETY: only checked for presence.
    if unsafe { CONNTRACK.get(reply) }.is_none() {
        let v = CtValue {
            flags: CT_F_INBOUND,
            ..Default::default()
        };
        let _ = CONNTRACK.insert(reply, v, 0);
    }
}

/// A packet of a masqueraded flow. If its port was taken over meanwhile (the reply entry was
/// evicted and reused), the flow is masqueraded anew rather than sharing the port.
#[inline(always)]
pub fn forward(ctx: &mut TcContext, f: &Flow, key: &CtKey, ct: &CtValue) -> Result<i32, i64> {
    if ct.nat_addr_be != crate::maps::config(config::NODE_IP)
        || !port_is_ours(f, ct.nat_addr_be, ct.nat_port_be)
    {
        return egress(ctx, f, key);
    }
    let Some(oif) = nat::fib_egress(ctx, f, f.saddr_be, f.daddr_be) else {
        return Ok(TC_ACT_OK);
    };
    nat::rewrite(ctx, f, End::Src, ct.nat_addr_be, ct.nat_port_be)?;
    Ok(nat::redirect_neigh(oif))
}

/// A reply to a masqueraded flow: back to the pod, straight out of its veth.
#[inline(always)]
pub fn reply(ctx: &mut TcContext, f: &Flow, rev: &CtValue) -> Result<i32, i64> {
    nat::rewrite(ctx, f, End::Dst, rev.nat_addr_be, rev.nat_port_be)?;
    count(stat::TC_REVNAT);
    Ok(nat::redirect_neigh(rev.ifindex))
}
