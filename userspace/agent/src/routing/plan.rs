//! Which other nodes this node routes pod traffic to: a pure function of the Node objects.
//!
//! Every other Node with an IPv4 pod CIDR and an InternalIP gets a route to that CIDR (via its
//! InternalIP in native mode, or through the VXLAN device in overlay mode; see `super::kernel`).
//! Nodes that cannot be routed to are reported, not guessed at.

use std::borrow::Borrow;
use std::{collections::BTreeMap, net::Ipv4Addr};

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;

use crate::node::{internal_ip, pod_cidr, pod_cidr_problem};

/// Another node's pods, reachable through that node.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RemoteNode {
    pub pod_cidr: Ipv4Net,
    pub node_ip: Ipv4Addr,
    pub name: String,
}

/// The routes to program, and why some nodes get none.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Sorted by pod CIDR.
    pub remotes: Vec<RemoteNode>,
    /// One line per node left out or suspicious, for the log.
    pub problems: Vec<String>,
}

/// Routes to every node but `me`. `cluster_cidr`, when known, is only checked: a pod CIDR outside
/// it would have its pods' egress masqueraded.
pub fn plan<N: Borrow<Node>>(nodes: &[N], me: &str, cluster_cidr: Option<Ipv4Net>) -> Plan {
    let mut out = Plan::default();
    let nodes: Vec<&Node> = nodes.iter().map(Borrow::borrow).collect();
    let own = nodes
        .iter()
        .copied()
        .find(|n| n.metadata.name.as_deref() == Some(me))
        .and_then(pod_cidr);
    // Sorted by name so that, of two nodes claiming overlapping ranges, the same one wins on
    // every node.
    let mut sorted = nodes;
    sorted.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let mut taken: BTreeMap<Ipv4Net, String> = BTreeMap::new();
    for node in sorted {
        let name = node.metadata.name.clone().unwrap_or_default();
        if name == me {
            continue;
        }
        let Some(cidr) = pod_cidr(node) else {
            out.problems
                .push(format!("node {name} has no IPv4 podCIDR yet: no route"));
            continue;
        };
        if let Some(why) = pod_cidr_problem(cidr) {
            out.problems
                .push(format!("node {name}'s podCIDR {why}: no route"));
            continue;
        }
        let Some(node_ip) = internal_ip(node) else {
            out.problems.push(format!(
                "node {name} has no IPv4 InternalIP: no route to {cidr}"
            ));
            continue;
        };
        if let Some(mine) = own.filter(|o| overlaps(*o, cidr)) {
            out.problems.push(format!(
                "node {name}'s podCIDR {cidr} overlaps this node's {mine}: no route"
            ));
            continue;
        }
        if let Some((other_cidr, other)) = taken.iter().find(|(c, _)| overlaps(**c, cidr)) {
            out.problems.push(format!(
                "node {name}'s podCIDR {cidr} overlaps node {other}'s {other_cidr}: no route"
            ));
            continue;
        }
        if let Some(cc) = cluster_cidr.filter(|cc| !cc.contains(&cidr)) {
            out.problems.push(format!(
                "node {name}'s podCIDR {cidr} is outside --cluster-cidr {cc}: its pods' traffic is masqueraded"
            ));
        }
        taken.insert(cidr, name.clone());
        out.remotes.push(RemoteNode {
            pod_cidr: cidr,
            node_ip,
            name,
        });
    }
    out.remotes.sort();
    out
}

fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The MAC of a node's VXLAN device, derived from its address so that no node needs to publish
/// it (flannel keeps it in a Node annotation, which would need write access to Nodes).
/// Locally administered unicast: 0e:70 ("p") and the four address bytes.
pub fn vtep_mac(node_ip: Ipv4Addr) -> [u8; 6] {
    let o = node_ip.octets();
    [0x0e, 0x70, o[0], o[1], o[2], o[3]]
}

/// The next hop of a remote pod CIDR in overlay mode: its network address (never a pod's, as
/// petrel-cni hands out neither it nor the gateway), resolved on the VXLAN device by a permanent
/// neighbour entry to the node's VTEP MAC.
pub fn vtep_addr(pod_cidr: Ipv4Net) -> Ipv4Addr {
    pod_cidr.network()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::core::v1::{NodeAddress, NodeSpec, NodeStatus},
        apimachinery::pkg::apis::meta::v1::ObjectMeta,
    };

    use super::*;

    fn node(name: &str, cidr: Option<&str>, ip: Option<&str>) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                pod_cidr: cidr.map(Into::into),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                addresses: Some(
                    ip.into_iter()
                        .map(|a| NodeAddress {
                            address: a.into(),
                            type_: "InternalIP".into(),
                        })
                        .chain([NodeAddress {
                            address: "n.example".into(),
                            type_: "Hostname".into(),
                        }])
                        .collect(),
                ),
                ..Default::default()
            }),
        }
    }

    fn net(s: &str) -> Ipv4Net {
        s.parse().expect("cidr")
    }

    #[test]
    fn every_other_node_with_a_cidr_and_an_address_gets_a_route() {
        let nodes = [
            node("n3", Some("10.244.3.0/24"), Some("192.0.2.13")),
            node("n1", Some("10.244.1.0/24"), Some("192.0.2.11")),
            node("n2", Some("10.244.2.0/24"), Some("192.0.2.12")),
        ];
        let p = plan(&nodes, "n1", Some(net("10.244.0.0/16")));
        assert_eq!(p.problems, Vec::<String>::new());
        let got: Vec<(String, String)> = p
            .remotes
            .iter()
            .map(|r| (r.pod_cidr.to_string(), r.node_ip.to_string()))
            .collect();
        assert_eq!(
            got,
            [
                ("10.244.2.0/24".into(), "192.0.2.12".into()),
                ("10.244.3.0/24".into(), "192.0.2.13".into())
            ]
        );
    }

    #[test]
    fn nodes_that_cannot_be_routed_are_reported_not_guessed() {
        let nodes = [
            node("me", Some("10.244.1.0/24"), Some("192.0.2.11")),
            node("no-cidr", None, Some("192.0.2.12")),
            node("no-ip", Some("10.244.3.0/24"), None),
            node("mine-too", Some("10.244.1.128/25"), Some("192.0.2.14")),
            node("a-first", Some("10.244.4.0/24"), Some("192.0.2.15")),
            node("b-dup", Some("10.244.4.0/23"), Some("192.0.2.16")),
            node("outside", Some("10.50.0.0/24"), Some("192.0.2.17")),
        ];
        let p = plan(&nodes, "me", Some(net("10.244.0.0/16")));
        let routed: Vec<&str> = p.remotes.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(routed, ["outside", "a-first"]);
        let all = p.problems.join("\n");
        for expected in [
            "no-cidr has no IPv4 podCIDR",
            "no-ip has no IPv4 InternalIP",
            "mine-too's podCIDR 10.244.1.128/25 overlaps this node's 10.244.1.0/24",
            "b-dup's podCIDR 10.244.4.0/23 overlaps node a-first's 10.244.4.0/24",
            "outside's podCIDR 10.50.0.0/24 is outside --cluster-cidr 10.244.0.0/16",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
        }
    }

    #[test]
    fn vtep_mac_is_unicast_locally_administered_and_per_node() {
        let a = vtep_mac(Ipv4Addr::new(192, 0, 2, 11));
        assert_eq!(a, [0x0e, 0x70, 192, 0, 2, 11]);
        assert_eq!(a[0] & 1, 0, "unicast");
        assert_eq!(a[0] & 2, 2, "locally administered");
        assert_ne!(a, vtep_mac(Ipv4Addr::new(192, 0, 2, 12)));
        assert_eq!(
            vtep_addr(net("10.244.7.0/24")),
            Ipv4Addr::new(10, 244, 7, 0)
        );
    }
}
