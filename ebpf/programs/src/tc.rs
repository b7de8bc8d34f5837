//! Per-packet load balancing at TC: DNAT of new flows to a frontend (with SNAT where the reply
//! would otherwise not come back through this node), conntrack so a flow keeps its backend, and
//! reverse NAT of replies.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    programs::TcContext,
};
use petrel_common::{
    AFFINITY_CLIENT_IP, BACKEND_F_REMOTE, Backend, CT_F_INBOUND, CT_F_MASQ, CT_F_NODE_SNAT,
    CT_F_SNAT, CtKey, CtValue, HAIRPIN_ADDR, SVC_F_EXTERNAL, SVC_F_LOCAL_EXTERNAL, config,
    flow_hash, stat,
};

use crate::{
    lb::{self, Client, Frontend, Lookup},
    maps::{CONNTRACK, REV_CT, REV_NAT, count},
    masq,
    nat::{self, End, Flow},
};

/// Handles one packet. `internal`: it comes from a pod on this node (pod veth) rather than from
/// outside the node (external interface).
///
/// One function on purpose: the packet's path (reply, pod-to-pod, conntrack hit, service,
/// masquerade) reads top to bottom in the order the verifier sees it, and the parsed headers
/// stay in registers rather than crossing calls the verifier would have to re-check.
#[inline(always)]
pub fn handle(ctx: &mut TcContext, internal: bool) -> Result<i32, i64> {
    count(stat::TC_SEEN);
    let Some(f) = nat::parse(ctx)? else {
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

    // A reply from a backend of a flow we translated: make it come from the frontend, and send it
    // to the original client if the flow was SNATed.
    // SAFETY: copied out at once.
    if let Some(rev) = unsafe { REV_CT.get(key) }.copied() {
        if rev.flags & CT_F_MASQ != 0 {
            return masq::reply(ctx, &f, &rev);
        }
        // SAFETY: copied out at once.
        if let Some(fe) = unsafe { REV_NAT.get(rev.rev_nat_id) }.copied() {
            nat::rewrite(ctx, &f, End::Src, fe.addr_be, fe.port_be)?;
            if rev.flags & CT_F_SNAT != 0 {
                nat::rewrite(ctx, &f, End::Dst, rev.nat_addr_be, rev.nat_port_be)?;
            }
            count(stat::TC_REVNAT);
            if rev.ifindex != 0 {
                return Ok(nat::redirect_neigh(rev.ifindex));
            }
            return Ok(TC_ACT_OK);
        }
    }

    // Pod to pod on the pod side (socket-LB already translated it, or it never was service
    // traffic): no frontend or masquerading applies inside the cluster CIDR, and such flows
    // have no forward entry, so the two lookups below are skipped for most packets.
    if internal && masq::both_inside_cluster(f.saddr_be, f.daddr_be) {
        // A new connection may reuse the tuple of an earlier flow translated here (same client
        // port to the same backend): that flow's reply entry must go, or this connection's
        // replies would be rewritten to come from the old frontend and never be accepted.
        if nat::is_tcp_syn(ctx, &f) {
            let _ = REV_CT.remove(nat::reversed(&f));
        }
        return Ok(TC_ACT_OK);
    }

    // An established flow keeps its backend while that backend exists; otherwise it is
    // re-balanced (a TCP flow then gets a reset from its new backend, never a black hole).
    // SAFETY: copied out at once.
    if let Some(ct) = unsafe { CONNTRACK.get(key) }.copied() {
        if ct.flags & CT_F_INBOUND != 0 {
            return Ok(TC_ACT_OK);
        }
        if ct.flags & CT_F_MASQ != 0 {
            return masq::forward(ctx, &f, &key, &ct);
        }
        match lb::backend(ct.backend_id) {
            Some(b) => {
                // A new connection on the tuple of an earlier one keeps its backend; its reply
                // entry may have been dropped meanwhile (see the pod-to-pod case above).
                if nat::is_tcp_syn(ctx, &f) {
                    let (rev_key, rev) = reply_entry(&f, &ct, &b);
                    REV_CT.insert(rev_key, rev, 0)?;
                }
                return forward(ctx, &f, &ct, &b);
            }
            None => count(stat::REBALANCED),
        }
    }

    let fe = Frontend {
        addr_be: f.daddr_be,
        port_be: f.dport_be,
        proto: f.proto,
    };
    let client = Client {
        kind: AFFINITY_CLIENT_IP,
        id: u64::from(f.saddr_be),
        hash: flow_hash(f.saddr_be, f.sport_be, f.dport_be, f.proto),
    };
    match lb::select(&fe, internal, &client) {
        Lookup::NotService if internal => masq::egress(ctx, &f, &key),
        Lookup::NotService => {
            masq::note_inbound(&f);
            Ok(TC_ACT_OK)
        }
        Lookup::Drop => Ok(TC_ACT_SHOT),
        Lookup::Reject => nat::reject(ctx, &f),
        Lookup::Selected {
            backend_id,
            backend,
            svc,
        } => {
            let hairpin = backend.addr_be == f.saddr_be;
            // External traffic (policy Cluster) to another node's backend, so the reply comes
            // back through this node; or a pod reaching a backend outside the cluster (the
            // `kubernetes` Service's API server), masqueraded like any pod egress.
            let snat_to_node = if internal {
                masq::applies(f.saddr_be, backend.addr_be)
            } else {
                svc.flags & SVC_F_EXTERNAL != 0
                    && svc.flags & SVC_F_LOCAL_EXTERNAL == 0
                    && backend.flags & BACKEND_F_REMOTE != 0
            };
            let mut ct = CtValue {
                backend_id,
                rev_nat_id: svc.rev_nat_id,
                ..Default::default()
            };
            // SAFETY: the skb pointer is valid for the program's run.
            ct.ifindex = unsafe { (*ctx.skb.skb).ifindex };
            if hairpin {
                // The pod would drop a packet from its own address: make it come from a
                // link-local address that replies route back through the node.
                ct.flags = CT_F_SNAT;
                ct.nat_addr_be = u32::from_ne_bytes(HAIRPIN_ADDR);
                ct.nat_port_be = f.sport_be;
                count(stat::HAIRPIN);
            } else if snat_to_node {
                // The source port is kept: a collision needs the same client port from two
                // clients to the same backend port at once, and only overwrites the older flow.
                ct.flags = CT_F_SNAT | CT_F_NODE_SNAT;
                ct.nat_addr_be = crate::maps::config(config::NODE_IP);
                ct.nat_port_be = f.sport_be;
                count(stat::SNAT);
            }
            CONNTRACK.insert(key, ct, 0)?;
            let (rev_key, rev) = reply_entry(&f, &ct, &backend);
            REV_CT.insert(rev_key, rev, 0)?;
            forward(ctx, &f, &ct, &backend)
        }
    }
}

/// The reply entry of flow `f` translated by `ct` to backend `b`: keyed by the reply as the
/// backend sends it, holding the client to give it back to.
#[inline(always)]
fn reply_entry(f: &Flow, ct: &CtValue, b: &Backend) -> (CtKey, CtValue) {
    let snat = ct.flags & CT_F_SNAT != 0;
    let key = CtKey {
        saddr_be: b.addr_be,
        daddr_be: if snat { ct.nat_addr_be } else { f.saddr_be },
        sport_be: b.port_be,
        dport_be: if snat { ct.nat_port_be } else { f.sport_be },
        proto: f.proto,
        _pad: [0; 3],
    };
    let rev = CtValue {
        nat_addr_be: f.saddr_be,
        nat_port_be: f.sport_be,
        ..*ct
    };
    (key, rev)
}

#[inline(always)]
fn forward(ctx: &mut TcContext, f: &Flow, ct: &CtValue, b: &Backend) -> Result<i32, i64> {
    nat::rewrite(ctx, f, End::Dst, b.addr_be, b.port_be)?;
    count(stat::TC_DNAT);
    if ct.flags & CT_F_SNAT != 0 {
        nat::rewrite(ctx, f, End::Src, ct.nat_addr_be, ct.nat_port_be)?;
        if ct.flags & CT_F_NODE_SNAT != 0 {
            // SNATed to the node address: route it ourselves (see redirect_via_fib).
            return Ok(nat::redirect_via_fib(ctx, f, ct.nat_addr_be, b.addr_be));
        }
    }
    Ok(TC_ACT_OK)
}
