//! Per-packet load balancing at TC: DNAT of new flows to a frontend (with SNAT where the reply
//! would otherwise not come back through this node), conntrack so a flow keeps its backend,
//! reverse NAT of replies, and ICMP errors about tracked flows translated like the flows.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    programs::TcContext,
};
use petrel_common::{
    AFFINITY_CLIENT_IP, BACKEND_F_REMOTE, CT_DIR_FORWARD, CT_DIR_REPLY, CT_F_HAIRPIN, CT_F_HOST,
    CT_F_INBOUND, CT_F_MASQ, CT_F_NODE_SNAT, CT_F_SNAT, CtValue, HAIRPIN_ADDR, IPPROTO_ICMP,
    SVC_F_EXTERNAL, SVC_F_LOCAL_EXTERNAL, config, flow_hash, stat,
};

use crate::{
    ct::{self, Port},
    lb::{self, Client, Frontend, Lookup},
    maps::{CONNTRACK, count},
    masq,
    nat::{self, Flow, IcmpError, Packet},
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
    let f = match nat::parse(ctx) {
        Packet::Flow(f) => f,
        Packet::IcmpError(e) => return icmp_error(ctx, &e),
        Packet::Other => return Ok(TC_ACT_OK),
    };
    let now = ct::now_s();
    let bits = ct::seen_bits(f.tcp_flags);

    // An answer on a tracked connection (a backend's reply, a masqueraded flow's reply, a pod
    // answering an inbound connection).
    if let Some(v) = ct::hit(&nat::key(&f, CT_DIR_REPLY), bits, now) {
        return reply(ctx, &f, &v);
    }

    // Pod to pod on the pod side (socket-LB already translated it, or it never was service
    // traffic): no frontend or masquerading applies inside the cluster CIDR, and such flows
    // have no forward entry, so the lookups below are skipped for most packets.
    if internal && masq::both_inside_cluster(f.saddr_be, f.daddr_be) {
        // A new connection straight to a pod may reuse the tuple on which a backend answers an
        // earlier flow translated here (same client port to the same backend): that earlier
        // connection must go, or this one's replies would be rewritten to come from its
        // frontend and never be accepted.
        if nat::is_tcp_syn(&f) {
            let k = nat::reversed(&f, CT_DIR_REPLY);
            // SAFETY: copied out at once.
            if let Some(v) = unsafe { CONNTRACK.get(k) }.copied() {
                ct::remove(&k, &v);
            }
        }
        return Ok(TC_ACT_OK);
    }

    // A tracked connection keeps its backend while that backend exists at the address it was
    // given (ids are not reused while conntrack may name them; the address check makes that
    // certain); otherwise it is re-balanced (a TCP flow then gets a reset from its new
    // backend, never a black hole or another service's pod).
    let key = nat::key(&f, CT_DIR_FORWARD);
    if let Some(v) = ct::hit_forward(&key, bits, now) {
        if v.flags & CT_F_INBOUND != 0 {
            return Ok(TC_ACT_OK);
        }
        if v.flags & CT_F_MASQ != 0 {
            return masq::forward(ctx, &f, &key, &v, now);
        }
        if lb::still_serves(&v) {
            return forward(ctx, &f, &v);
        }
        count(stat::REBALANCED);
        ct::remove(&key, &v);
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
        maglev: true,
        saddr_be: f.saddr_be,
    };
    match lb::select(&fe, internal, &client) {
        Lookup::NotService if internal => masq::egress(ctx, &f, &key, now),
        Lookup::NotService => Ok(TC_ACT_OK),
        Lookup::Drop => Ok(TC_ACT_SHOT),
        Lookup::Reject => nat::reject(ctx, &f, false),
        Lookup::Selected {
            backend_id,
            backend,
            svc,
        } => {
            // A pod reaching itself through a frontend. Only pod traffic: from outside, a
            // client with the backend's address is the backend's node (or a pod there,
            // masqueraded to it), whose answer must come back here, so SNAT below.
            let hairpin = internal && backend.addr_be == f.saddr_be;
            // External traffic (policy Cluster) to another node's backend, so the reply comes
            // back through this node; an off-cluster client routed to a ClusterIP (kube-proxy's
            // KUBE-MARK-MASQ for `! -s clusterCIDR -d clusterIP`) whose backend is on another
            // node, for the same reason (a local backend answers through this node anyway, and
            // keeps the client's address); or a pod reaching a backend outside the cluster (the
            // `kubernetes` Service's API server), masqueraded like any pod egress.
            let snat_to_node = if internal {
                masq::applies(f.saddr_be, backend.addr_be)
            } else if svc.flags & SVC_F_EXTERNAL != 0 {
                svc.flags & SVC_F_LOCAL_EXTERNAL == 0 && backend.flags & BACKEND_F_REMOTE != 0
            } else {
                backend.flags & BACKEND_F_REMOTE != 0 && masq::outside_cluster(f.saddr_be)
            };
            let mut fwd = CtValue {
                src_addr_be: f.saddr_be,
                src_port_be: f.sport_be,
                dst_addr_be: backend.addr_be,
                dst_port_be: backend.port_be,
                backend_id,
                rev_nat_id: svc.rev_nat_id,
                // SAFETY: the skb pointer is valid for the program's run.
                ifindex: unsafe { (*ctx.skb.skb).ifindex },
                seen: bits,
                ..Default::default()
            };
            let port = if hairpin {
                // The pod would drop a packet from its own address: make it come from a
                // link-local address that replies route back through the node.
                fwd.flags = CT_F_SNAT | CT_F_HAIRPIN;
                fwd.src_addr_be = u32::from_ne_bytes(HAIRPIN_ADDR);
                Port::Keep
            } else if snat_to_node {
                // From the node's address and a port of the NAT range, which the node's own
                // sockets never hold and other connections' replies cannot share.
                fwd.flags = CT_F_SNAT | CT_F_NODE_SNAT;
                fwd.src_addr_be = crate::maps::config(config::NODE_IP);
                Port::Alloc
            } else {
                // The client's own port, unless the backend already answers another connection
                // on that tuple (another frontend's flow to the same backend, one still
                // closing): then one of the NAT range, as netfilter remaps on a clash.
                Port::Keep
            };
            if ct::create(&key, &mut fwd, port, now).is_err() {
                return Ok(TC_ACT_SHOT);
            }
            if hairpin {
                count(stat::HAIRPIN);
            } else if snat_to_node {
                count(stat::SNAT);
            }
            forward(ctx, &f, &fwd)
        }
    }
}

/// A packet on a connection's forward direction: to the backend, from the SNAT source if any.
#[inline(always)]
fn forward(ctx: &mut TcContext, f: &Flow, v: &CtValue) -> Result<i32, i64> {
    nat::apply(ctx, f, v)?;
    count(stat::TC_DNAT);
    if v.flags & CT_F_NODE_SNAT != 0 {
        // SNATed to the node address: route it ourselves (see redirect_via_fib).
        return Ok(nat::redirect_via_fib(
            ctx,
            f.proto,
            v.src_addr_be,
            v.dst_addr_be,
        ));
    }
    Ok(TC_ACT_OK)
}

/// An answer on a tracked connection: from the frontend, to the original client, out of the
/// interface the connection came in on.
#[inline(always)]
fn reply(ctx: &mut TcContext, f: &Flow, v: &CtValue) -> Result<i32, i64> {
    if v.flags & CT_F_INBOUND != 0 {
        return Ok(TC_ACT_OK);
    }
    nat::apply(ctx, f, v)?;
    count(stat::TC_REVNAT);
    if v.ifindex != 0 {
        return Ok(nat::redirect_neigh(v.ifindex));
    }
    Ok(TC_ACT_OK)
}

/// An ICMP error about a packet of a tracked connection (fragmentation needed, unreachable,
/// time exceeded) goes to that packet's original sender, translated as its answers are, so PMTU
/// discovery and fast failures work through NAT. Errors about nothing tracked pass untouched.
#[inline(always)]
fn icmp_error(ctx: &mut TcContext, e: &IcmpError) -> Result<i32, i64> {
    let now = ct::now_s();
    for dir in [CT_DIR_REPLY, CT_DIR_FORWARD] {
        let k = e.answer_key(dir);
        let Some(p) = ct::live(&k, now) else {
            continue;
        };
        // SAFETY: a valid pointer into the map value; copied out at once.
        let v = unsafe { *p };
        if v.flags & CT_F_INBOUND != 0 {
            break;
        }
        let (src, dst) = nat::translate_icmp_error(ctx, e, &v)?;
        count(stat::ICMP_ERROR_TRANSLATED);
        if dir == CT_DIR_REPLY {
            if v.ifindex != 0 {
                return Ok(nat::redirect_neigh(v.ifindex));
            }
        } else if v.flags & CT_F_NODE_SNAT != 0 {
            return Ok(nat::redirect_via_fib(ctx, IPPROTO_ICMP, src, dst));
        }
        return Ok(TC_ACT_OK);
    }
    count(stat::ICMP_ERROR_UNTRACKED);
    Ok(TC_ACT_OK)
}

/// Egress of a pod's host-side veth (toward the pod): a connection from outside the cluster
/// CIDR that reaches the pod however it got here (routed, DNATed by netfilter for a hostPort,
/// SNATed by another node) is tracked as inbound, so the pod's answers are never masqueraded.
#[inline(always)]
pub fn handle_pod_egress(ctx: &mut TcContext) -> i32 {
    let Packet::Flow(f) = nat::parse(ctx) else {
        return TC_ACT_OK;
    };
    if !masq::applies(f.daddr_be, f.saddr_be) {
        return TC_ACT_OK;
    }
    let now = ct::now_s();
    let key = nat::key(&f, CT_DIR_FORWARD);
    if ct::hit(&key, ct::seen_bits(f.tcp_flags), now).is_some() {
        return TC_ACT_OK;
    }
    // Answers on connections petrel translated (a service's replies to its client, a
    // masqueraded flow's replies, NodePort traffic kept from its client) already have entries:
    // the pod's side of them is their forward or their reply key. The forward key first: it
    // is the one every service reply to a pod has.
    // SAFETY: only checked for presence.
    if unsafe { CONNTRACK.get(nat::reversed(&f, CT_DIR_FORWARD)) }.is_some()
        || unsafe { CONNTRACK.get(nat::reversed(&f, CT_DIR_REPLY)) }.is_some()
    {
        return TC_ACT_OK;
    }
    masq::note_inbound(&f, &key, now);
    TC_ACT_OK
}

/// Egress of the node's external interfaces: answers of a host-network backend on this node
/// (NodePort, externalIP or LoadBalancer traffic DNATed to the node's own address) leave here
/// without passing any pod veth: they are made to come from the frontend. And the TC path of
/// host processes: a packet still addressed to a frontend here was sent by the node itself
/// (pods' service traffic is translated on their veth, socket-LB's at connect()), following the
/// node's routes toward the service address (its default route, in practice) as kube-proxy's
/// OUTPUT chain sees it; it is balanced like a pod's, tracked with its answers left to the
/// stack, and sent where the routing table puts its backend.
#[inline(always)]
pub fn handle_egress(ctx: &mut TcContext) -> Result<i32, i64> {
    let Packet::Flow(f) = nat::parse(ctx) else {
        return Ok(TC_ACT_OK);
    };
    let now = ct::now_s();
    let bits = ct::seen_bits(f.tcp_flags);
    let key = nat::key(&f, CT_DIR_REPLY);
    // SAFETY: only checked for presence (most packets have no entry).
    if unsafe { CONNTRACK.get(key) }.is_some() {
        if let Some(v) = ct::hit(&key, bits, now) {
            if v.flags & (CT_F_INBOUND | CT_F_MASQ) == 0 && v.backend_id != 0 {
                nat::apply(ctx, &f, &v)?;
                count(stat::TC_REVNAT);
            }
        }
        return Ok(TC_ACT_OK);
    }
    let key = nat::key(&f, CT_DIR_FORWARD);
    // SAFETY: only checked for presence.
    if unsafe { CONNTRACK.get(key) }.is_some() {
        if let Some(v) = ct::hit_forward(&key, bits, now) {
            if v.flags & CT_F_HOST == 0 {
                return Ok(TC_ACT_OK);
            }
            if lb::still_serves(&v) {
                return host_forward(ctx, &f, &v);
            }
            count(stat::REBALANCED);
            ct::remove(&key, &v);
        }
    }
    let fe = Frontend {
        addr_be: f.daddr_be,
        port_be: f.dport_be,
        proto: f.proto,
    };
    // Random per connection, as socket-LB picks for host processes and kube-proxy for anyone.
    let client = Client {
        kind: AFFINITY_CLIENT_IP,
        id: u64::from(f.saddr_be),
        hash: 0,
        maglev: false,
        saddr_be: f.saddr_be,
    };
    match lb::select(&fe, true, &client) {
        Lookup::NotService => Ok(TC_ACT_OK),
        Lookup::Drop => Ok(TC_ACT_SHOT),
        Lookup::Reject => nat::reject(ctx, &f, true),
        Lookup::Selected {
            backend_id,
            backend,
            svc,
        } => {
            // Routed as if forwarded from this interface (an output lookup would be bound to
            // it: `flowi4_oif`); the node's address as source is fine there.
            if nat::fib_egress(ctx, f.proto, f.saddr_be, backend.addr_be).is_none() {
                // A host-network endpoint on this node (or no route to the backend): from
                // egress the packet cannot be turned back into the node.
                count(stat::DROP_HOST_UNROUTABLE);
                return Ok(TC_ACT_SHOT);
            }
            let mut fwd = CtValue {
                src_addr_be: f.saddr_be,
                src_port_be: f.sport_be,
                dst_addr_be: backend.addr_be,
                dst_port_be: backend.port_be,
                backend_id,
                rev_nat_id: svc.rev_nat_id,
                // Answers go to the stack, which delivers them to the host's socket.
                ifindex: 0,
                flags: CT_F_HOST,
                seen: bits,
                ..Default::default()
            };
            if ct::create(&key, &mut fwd, Port::Keep, now).is_err() {
                return Ok(TC_ACT_SHOT);
            }
            count(stat::HOST_DNAT);
            host_forward(ctx, &f, &fwd)
        }
    }
}

/// A host process's packet to its backend, out of the interface the routing table picks for it
/// (a pod's veth, the uplink, the overlay); the stack's choice was made for the frontend.
#[inline(always)]
fn host_forward(ctx: &mut TcContext, f: &Flow, v: &CtValue) -> Result<i32, i64> {
    nat::apply(ctx, f, v)?;
    count(stat::TC_DNAT);
    Ok(
        match nat::fib_egress(ctx, f.proto, v.src_addr_be, v.dst_addr_be) {
            Some(ifindex) => nat::redirect_neigh(ifindex),
            None => TC_ACT_SHOT,
        },
    )
}
