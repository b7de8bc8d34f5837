//! This node, as the agent sees it: the only place that finds the agent's own Node object and
//! reads addresses and pod CIDRs out of Node objects.

use std::{borrow::Borrow, net::Ipv4Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use k8s_openapi::api::core::v1::Node;

/// What the agent knows about its node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeFacts {
    pub name: String,
    /// The node's primary addresses: `--node-ip`, else the Node's InternalIPs.
    pub ips: Vec<Ipv4Addr>,
    /// The Node's `topology.kubernetes.io/zone` label (topology-aware routing), if set.
    pub zone: Option<String>,
    /// The addresses NodePorts are served on (`--nodeport-addresses` over the node's local
    /// addresses, see `nodeport`); None: the primary addresses.
    pub node_port_ips: Option<Vec<Ipv4Addr>>,
}

impl NodeFacts {
    /// The facts of node `name`: `ips` when given (the --node-ip flags), else the Node's
    /// InternalIPs.
    pub fn of<N: Borrow<Node>>(nodes: &[N], name: &str, ips: &[Ipv4Addr]) -> NodeFacts {
        let node = find(nodes, name);
        let ips = if ips.is_empty() {
            node.map(internal_ips).unwrap_or_default()
        } else {
            ips.to_vec()
        };
        NodeFacts {
            name: name.to_string(),
            ips,
            zone: node.and_then(zone),
            node_port_ips: None,
        }
    }

    /// The addresses NodePorts are served on.
    pub fn node_port_ips(&self) -> &[Ipv4Addr] {
        self.node_port_ips.as_deref().unwrap_or(&self.ips)
    }
}

/// The Node called `name`.
pub fn find<'a, N: Borrow<Node>>(nodes: &'a [N], name: &str) -> Option<&'a Node> {
    nodes
        .iter()
        .map(Borrow::borrow)
        .find(|n| n.metadata.name.as_deref() == Some(name))
}

/// The node's IPv4 InternalIPs, in the order the Node lists them.
pub fn internal_ips(node: &Node) -> Vec<Ipv4Addr> {
    node.status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .filter(|a| a.type_ == "InternalIP")
        .filter_map(|a| a.address.parse().ok())
        .collect()
}

/// The node's zone (`topology.kubernetes.io/zone`); an empty label is no zone.
pub fn zone(node: &Node) -> Option<String> {
    let labels = node.metadata.labels.as_ref()?;
    let zone = labels.get(crate::topology::LABEL_ZONE)?;
    (!zone.is_empty()).then(|| zone.clone())
}

/// The node's first IPv4 InternalIP.
pub fn internal_ip(node: &Node) -> Option<Ipv4Addr> {
    internal_ips(node).first().copied()
}

/// The node's IPv4 pod CIDR, if the Node has one (`spec.podCIDRs` first, then `spec.podCIDR`).
pub fn pod_cidr(node: &Node) -> Option<Ipv4Net> {
    let spec = node.spec.as_ref()?;
    let all = spec.pod_cidrs.iter().flatten().chain(spec.pod_cidr.iter());
    all.filter_map(|c| c.parse::<Ipv4Net>().ok()).next()
}

/// The node's pod CIDRs for petrel-cni, one per family, in the Node's order (the first is the
/// pods' primary family): `spec.podCIDRs`, then `spec.podCIDR`, keeping the first range of each
/// family that parses. A single-stack Node gives one range: what `pod_cidr` gives for IPv4.
pub fn pod_cidrs(node: &Node) -> Vec<IpNet> {
    let Some(spec) = node.spec.as_ref() else {
        return Vec::new();
    };
    let all = spec.pod_cidrs.iter().flatten().chain(spec.pod_cidr.iter());
    let mut out: Vec<IpNet> = Vec::new();
    for net in all.filter_map(|c| c.parse::<IpNet>().ok()) {
        if !out
            .iter()
            .any(|n| n.addr().is_ipv4() == net.addr().is_ipv4())
        {
            out.push(net);
        }
    }
    out
}

/// Why petrel-cni cannot use the IPv6 `cidr` as a node's pod range, or None: petrel-cni's own
/// check (unicast, its network address, /120 or wider, not ::/0), in its words.
pub fn pod_cidr6_problem(cidr: Ipv6Net) -> Option<String> {
    petrel_cni::config::parse_pod_range("podCIDR", &cidr.to_string())
        .err()
        .map(|e| e.msg())
}

/// Why petrel-cni cannot use `cidr` as a node's pod range, or None: it must be an IPv4 unicast
/// range (not 0.0.0.0/8, loopback, link-local, multicast, reserved or broadcast), not
/// 0.0.0.0/0, and hold at least 8 addresses (/29: network, gateway, broadcast and pods).
pub fn pod_cidr_problem(cidr: Ipv4Net) -> Option<String> {
    let net = cidr.network();
    if cidr.prefix_len() == 0 {
        return Some(format!("{cidr} is every address"));
    }
    if cidr.prefix_len() > 29 {
        return Some(format!(
            "{cidr} is narrower than /29 (petrel-cni needs the network, gateway and broadcast addresses besides the pods')"
        ));
    }
    let last = cidr.broadcast();
    let bad = |a: std::net::Ipv4Addr| {
        a.octets()[0] == 0
            || a.is_loopback()
            || a.is_link_local()
            || a.is_multicast()
            || a.octets()[0] >= 240
    };
    if bad(net) || bad(last) {
        return Some(format!(
            "{cidr} is not IPv4 unicast (0.0.0.0/8, loopback, link-local, multicast and reserved ranges are not pod ranges)"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{NodeAddress, NodeSpec, NodeStatus};

    use super::*;

    #[test]
    fn pod_cidrs_petrel_cni_cannot_use_are_named() {
        let problem = |c: &str| pod_cidr_problem(c.parse().expect("cidr"));
        for ok in [
            "10.244.3.0/24",
            "10.244.3.0/29",
            "192.168.0.0/16",
            "100.64.0.0/10",
        ] {
            assert_eq!(problem(ok), None, "{ok}");
        }
        for (bad, why) in [
            ("0.0.0.0/0", "every address"),
            ("10.244.3.0/31", "narrower than /29"),
            ("10.244.3.8/30", "narrower than /29"),
            ("224.0.0.0/24", "not IPv4 unicast"),
            ("127.0.0.0/8", "not IPv4 unicast"),
            ("169.254.0.0/16", "not IPv4 unicast"),
            ("240.0.0.0/4", "not IPv4 unicast"),
            ("0.0.0.0/8", "not IPv4 unicast"),
            ("192.0.0.0/2", "not IPv4 unicast"),
        ] {
            let p = problem(bad).unwrap_or_default();
            assert!(p.contains(why), "{bad}: {p:?}");
        }
    }

    #[test]
    fn pod_cidrs_gives_one_range_per_family_in_the_nodes_order() {
        let node = |single: Option<&str>, list: Option<Vec<&str>>| Node {
            spec: Some(NodeSpec {
                pod_cidr: single.map(Into::into),
                pod_cidrs: list.map(|l| l.into_iter().map(Into::into).collect()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let cidrs =
            |n: &Node| -> Vec<String> { pod_cidrs(n).iter().map(ToString::to_string).collect() };
        assert_eq!(cidrs(&node(Some("10.244.3.0/24"), None)), ["10.244.3.0/24"]);
        assert_eq!(
            cidrs(&node(Some("10.244.3.0/24"), Some(vec!["10.244.3.0/24"]))),
            ["10.244.3.0/24"]
        );
        assert_eq!(
            cidrs(&node(
                Some("fd00:10:244:3::/64"),
                Some(vec!["fd00:10:244:3::/64", "10.244.3.0/24"])
            )),
            ["fd00:10:244:3::/64", "10.244.3.0/24"]
        );
        assert_eq!(
            cidrs(&node(
                None,
                Some(vec![
                    "10.244.3.0/24",
                    "banana",
                    "10.9.0.0/16",
                    "fd00::/64",
                    "fd01::/64"
                ])
            )),
            ["10.244.3.0/24", "fd00::/64"]
        );
        assert_eq!(cidrs(&node(Some("fd00::/64"), None)), ["fd00::/64"]);
        assert!(pod_cidrs(&Node::default()).is_empty());
        assert_eq!(pod_cidr6_problem("fd00::/64".parse().expect("cidr")), None);
        let p = pod_cidr6_problem("fd00::/124".parse().expect("cidr")).unwrap_or_default();
        assert!(p.contains("/120 or shorter"), "{p}");
        let p = pod_cidr6_problem("ff02::/16".parse().expect("cidr")).unwrap_or_default();
        assert!(p.contains("multicast"), "{p}");
    }

    #[test]
    fn pod_cidr_prefers_the_first_ipv4_of_pod_cidrs() {
        let node = Node {
            spec: Some(NodeSpec {
                pod_cidr: Some("fd00::/64".into()),
                pod_cidrs: Some(vec!["fd00::/64".into(), "10.244.3.0/24".into()]),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            pod_cidr(&node).map(|c| c.to_string()),
            Some("10.244.3.0/24".into())
        );
        assert_eq!(pod_cidr(&Node::default()), None);
    }

    #[test]
    fn facts_take_the_flags_over_the_internal_ips() {
        let addr = |t: &str, a: &str| NodeAddress {
            type_: t.into(),
            address: a.into(),
        };
        let mut node = Node {
            status: Some(NodeStatus {
                addresses: Some(vec![
                    addr("Hostname", "n1"),
                    addr("InternalIP", "fd00::1"),
                    addr("InternalIP", "192.168.1.10"),
                ]),
                ..Default::default()
            }),
            ..Default::default()
        };
        node.metadata.name = Some("n1".into());
        node.metadata.labels = Some(
            [(
                crate::topology::LABEL_ZONE.to_string(),
                "zone-a".to_string(),
            )]
            .into(),
        );
        let nodes = [node];
        let found = NodeFacts::of(&nodes, "n1", &[]);
        assert_eq!(found.ips, [Ipv4Addr::new(192, 168, 1, 10)]);
        assert_eq!(found.zone.as_deref(), Some("zone-a"));
        let given = NodeFacts::of(&nodes, "n1", &[Ipv4Addr::new(10, 0, 0, 1)]);
        assert_eq!(given.ips, [Ipv4Addr::new(10, 0, 0, 1)]);
        assert!(NodeFacts::of(&nodes, "n2", &[]).ips.is_empty());
        assert_eq!(NodeFacts::of(&nodes, "n2", &[]).zone, None);
        let mut unlabelled = nodes[0].clone();
        unlabelled.metadata.labels =
            Some([(crate::topology::LABEL_ZONE.to_string(), String::new())].into());
        assert_eq!(zone(&unlabelled), None);
    }
}
