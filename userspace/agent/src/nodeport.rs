//! Which local addresses serve NodePorts: `--nodeport-addresses`, with kube-proxy's semantics
//! (pkg/proxy/util/nodeport_addresses.go and cmd/kube-proxy's `primary`).
//!
//! - unset (or no IPv4 entry): every IPv4 address of the node's network namespace;
//! - a list of CIDRs: the local addresses inside any of them (IPv6 entries are the IPv6 proxy's
//!   business and ignored here, as kube-proxy ignores the other family's);
//! - `primary` (alone): the node's primary addresses (`--node-ip`, else the Node's InternalIPs).
//!
//! Loopback addresses serve NodePorts only when a CIDR names them (kube-proxy's nftables mode,
//! and its iptables mode with `--iptables-localhost-nodeports=false`): a NodePort on 127.0.0.1
//! would reach the host network stack's loopback path, which petrel's TC programs never see.

use std::net::Ipv4Addr;

use ipnet::{IpNet, Ipv4Net};

/// The value kube-proxy reads as "the node's primary IPs".
pub const PRIMARY: &str = "primary";

/// The parsed `--nodeport-addresses`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum NodePortAddresses {
    /// Every local (non-loopback) IPv4 address.
    #[default]
    All,
    /// The local addresses inside these prefixes.
    Cidrs(Vec<Ipv4Net>),
    /// The node's primary addresses.
    Primary,
}

impl NodePortAddresses {
    /// Parses the flag's entries, as kube-proxy validates them: each a CIDR, or `primary` as the
    /// only entry.
    pub fn parse(entries: &[String]) -> Result<NodePortAddresses, String> {
        if entries.iter().any(|e| e.trim() == PRIMARY) {
            if entries.len() != 1 {
                return Err(format!(
                    "--nodeport-addresses: {PRIMARY:?} must be the only value (got {entries:?})"
                ));
            }
            return Ok(NodePortAddresses::Primary);
        }
        let mut v4 = Vec::new();
        for e in entries {
            match e.trim().parse::<IpNet>() {
                Ok(IpNet::V4(n)) => v4.push(n.trunc()),
                Ok(IpNet::V6(_)) => {}
                Err(_) => {
                    return Err(format!(
                        "--nodeport-addresses: {e:?} is neither a CIDR nor {PRIMARY:?}"
                    ));
                }
            }
        }
        // kube-proxy: no CIDR of this family, or a zero CIDR, matches every address.
        if v4.is_empty() || v4.iter().any(|n| n.prefix_len() == 0) {
            return Ok(NodePortAddresses::All);
        }
        v4.sort_unstable();
        v4.dedup();
        Ok(NodePortAddresses::Cidrs(v4))
    }

    /// The addresses NodePorts are served on, out of the namespace's `local` addresses and the
    /// node's `primary` ones. Sorted, without duplicates.
    pub fn select(&self, local: &[Ipv4Addr], primary: &[Ipv4Addr]) -> Vec<Ipv4Addr> {
        let mut out: Vec<Ipv4Addr> = match self {
            NodePortAddresses::All => local
                .iter()
                .copied()
                .filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
                .collect(),
            NodePortAddresses::Cidrs(cidrs) => local
                .iter()
                .copied()
                .filter(|ip| cidrs.iter().any(|c| c.contains(ip)))
                .collect(),
            NodePortAddresses::Primary => primary.to_vec(),
        };
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Whether every local address is used (kube-proxy's MatchAll): health-check node ports then
    /// listen on 0.0.0.0.
    pub fn match_all(&self) -> bool {
        *self == NodePortAddresses::All
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(entries: &[&str]) -> Result<NodePortAddresses, String> {
        NodePortAddresses::parse(&entries.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("ip")
    }

    #[test]
    fn parses_as_kube_proxy_does() {
        assert_eq!(parse(&[]), Ok(NodePortAddresses::All));
        // Only the other family: every IPv4 address.
        assert_eq!(parse(&["fd00::/64"]), Ok(NodePortAddresses::All));
        // A zero CIDR wins over the rest.
        assert_eq!(
            parse(&["10.0.0.0/8", "0.0.0.0/0"]),
            Ok(NodePortAddresses::All)
        );
        assert_eq!(
            parse(&[" 10.1.2.3/24", "fd00::/64", "192.168.0.0/16", "10.1.2.0/24"]),
            Ok(NodePortAddresses::Cidrs(vec![
                "10.1.2.0/24".parse().expect("cidr"),
                "192.168.0.0/16".parse().expect("cidr"),
            ]))
        );
        assert_eq!(parse(&["primary"]), Ok(NodePortAddresses::Primary));
        let e = parse(&["primary", "10.0.0.0/8"]).expect_err("primary with others");
        assert!(e.contains("only value"), "{e}");
        let e = parse(&["10.0.0.0/33"]).expect_err("bad cidr");
        assert!(e.contains("neither a CIDR"), "{e}");
        let e = parse(&["10.0.0.1"]).expect_err("an address is not a CIDR");
        assert!(e.contains("\"10.0.0.1\""), "{e}");
    }

    #[test]
    fn selects_the_local_addresses_nodeports_are_served_on() {
        let local = [
            ip("127.0.0.1"),
            ip("10.98.0.11"),
            ip("10.244.1.1"),
            ip("192.168.5.5"),
            ip("10.98.0.11"),
        ];
        let primary = [ip("10.98.0.11")];
        assert_eq!(
            NodePortAddresses::All.select(&local, &primary),
            [ip("10.98.0.11"), ip("10.244.1.1"), ip("192.168.5.5")],
            "every local address but loopback"
        );
        let cidrs = parse(&["10.98.0.0/24", "192.168.0.0/16"]).expect("parse");
        assert_eq!(
            cidrs.select(&local, &primary),
            [ip("10.98.0.11"), ip("192.168.5.5")]
        );
        let lo = parse(&["127.0.0.0/8"]).expect("parse");
        assert_eq!(lo.select(&local, &primary), [ip("127.0.0.1")]);
        let none = parse(&["172.16.0.0/12"]).expect("parse");
        assert!(none.select(&local, &primary).is_empty(), "no match: none");
        assert_eq!(
            NodePortAddresses::Primary.select(&local, &primary),
            primary,
            "primary: the node IPs, whatever else is local"
        );
        assert!(NodePortAddresses::All.match_all());
        assert!(!cidrs.match_all());
    }
}
