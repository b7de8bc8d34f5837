//! The datapath's domain types, as userspace describes them (host byte order; `maps::codec` turns
//! them into the kernel's network-order values): protocols, frontends, backends, and what a service
//! frontend is programmed to, with its backend sets per scope computed from endpoint conditions
//! and traffic policies as kube-proxy defines them. Pure, no I/O.

use std::{
    fmt,
    net::{Ipv4Addr, SocketAddrV4},
    str::FromStr,
};

use petrel_common::{IPPROTO_TCP, IPPROTO_UDP};
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => IPPROTO_TCP,
            Proto::Udp => IPPROTO_UDP,
        }
    }

    pub fn from_number(n: u8) -> Option<Proto> {
        match n {
            IPPROTO_TCP => Some(Proto::Tcp),
            IPPROTO_UDP => Some(Proto::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
        })
    }
}

impl FromStr for Proto {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "TCP" => Ok(Proto::Tcp),
            "UDP" => Ok(Proto::Udp),
            other => Err(format!("unsupported protocol {other:?} (TCP or UDP)")),
        }
    }
}

/// A service frontend: what clients connect to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Frontend {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub proto: Proto,
}

impl fmt::Display for Frontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.addr, self.port, self.proto)
    }
}

/// A backend as userspace describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendSpec {
    pub id: u32,
    pub addr: SocketAddrV4,
    pub proto: Proto,
    pub terminating: bool,
    /// On another node: external traffic to it is SNATed (policy Cluster).
    pub remote: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendState {
    Active,
    Terminating,
    /// A slot names a backend id that is not in the backend map.
    Missing,
}

/// One bit of a service's master entry, named as netctl shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ServiceFlag {
    #[serde(rename = "affinity")]
    Affinity,
    #[serde(rename = "two-scopes")]
    TwoScopes,
    #[serde(rename = "external")]
    External,
    #[serde(rename = "external-local")]
    ExternalLocal,
    #[serde(rename = "maglev")]
    Maglev,
    #[serde(rename = "drop-when-empty")]
    DropWhenEmpty,
    #[serde(rename = "source-ranges")]
    SourceRanges,
}

impl ServiceFlag {
    pub fn name(self) -> &'static str {
        match self {
            ServiceFlag::Affinity => "affinity",
            ServiceFlag::TwoScopes => "two-scopes",
            ServiceFlag::External => "external",
            ServiceFlag::ExternalLocal => "external-local",
            ServiceFlag::Maglev => "maglev",
            ServiceFlag::DropWhenEmpty => "drop-when-empty",
            ServiceFlag::SourceRanges => "source-ranges",
        }
    }
}

impl fmt::Display for ServiceFlag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for BackendState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendState::Active => "active",
            BackendState::Terminating => "terminating",
            BackendState::Missing => "missing",
        })
    }
}

/// One endpoint of a service port, with its EndpointSlice conditions resolved (v1 semantics:
/// `ready` unset means ready, `serving` unset means `ready`, `terminating` unset means false).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Backend id in the BACKENDS map.
    pub id: u32,
    /// On this node.
    pub local: bool,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

/// One frontend of a service, everything the datapath needs to serve it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceEntry {
    pub frontend: Frontend,
    /// Unique per frontend on this node; reverse NAT and affinity key.
    pub rev_nat_id: u32,
    /// NodePort, externalIP or LoadBalancer frontend (reachable from outside the node).
    pub external: bool,
    /// externalTrafficPolicy Local.
    pub external_local: bool,
    /// internalTrafficPolicy Local.
    pub internal_local: bool,
    /// sessionAffinity ClientIP timeout.
    pub affinity_timeout_s: Option<u32>,
    /// Maglev ring for external traffic (None: random).
    pub maglev_ring: Option<u32>,
    pub publish_not_ready: bool,
    /// loadBalancerSourceRanges (LoadBalancer frontends only): when not empty, clients outside
    /// every prefix are dropped. Sorted, without duplicates.
    pub source_ranges: Vec<ipnet::Ipv4Net>,
    pub endpoints: Vec<Endpoint>,
}

/// The backends a scope uses: ready ones; when none is ready, the serving-and-terminating ones
/// (so connections drain instead of failing during a rollout); all of them when the service
/// publishes not-ready addresses. `local_only` applies a Local traffic policy first, so the
/// terminating fallback is per node, as kube-proxy does it.
pub fn usable(endpoints: &[Endpoint], publish_not_ready: bool, local_only: bool) -> Vec<u32> {
    let candidates: Vec<&Endpoint> = endpoints
        .iter()
        .filter(|e| !local_only || e.local)
        .collect();
    if publish_not_ready {
        return candidates.iter().map(|e| e.id).collect();
    }
    let ready: Vec<u32> = candidates
        .iter()
        .filter(|e| e.ready)
        .map(|e| e.id)
        .collect();
    if !ready.is_empty() {
        return ready;
    }
    candidates
        .iter()
        .filter(|e| e.serving && e.terminating)
        .map(|e| e.id)
        .collect()
}

impl Endpoint {
    /// A ready endpoint on this node.
    pub fn ready(id: u32) -> Endpoint {
        Endpoint {
            id,
            local: true,
            ready: true,
            serving: true,
            terminating: false,
        }
    }
}

impl ServiceEntry {
    /// A ClusterIP-style frontend with no policies, affinity or Maglev, and the given endpoints.
    pub fn new(frontend: Frontend, rev_nat_id: u32, endpoints: Vec<Endpoint>) -> ServiceEntry {
        ServiceEntry {
            frontend,
            rev_nat_id,
            external: false,
            external_local: false,
            internal_local: false,
            affinity_timeout_s: None,
            maglev_ring: None,
            publish_not_ready: false,
            source_ranges: Vec::new(),
            endpoints,
        }
    }
}

/// The backend sets of both scopes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scopes {
    /// Traffic from outside the node (and all traffic when `internal` is None).
    pub external: Vec<u32>,
    /// In-cluster traffic, when a Local policy makes it differ from `external`.
    pub internal: Option<Vec<u32>>,
    /// An empty `external` set drops rather than rejects: a Local policy filtered it and the
    /// service has usable endpoints on other nodes (kube-proxy's "has no local endpoints",
    /// DROP). With no usable endpoint anywhere every scope rejects ("has no endpoints", REJECT).
    pub external_filtered: bool,
    /// The same for `internal`.
    pub internal_filtered: bool,
}

impl ServiceEntry {
    /// The backend sets as kube-proxy's proxier.go builds its chains: a ClusterIP has one set,
    /// by internalTrafficPolicy, for every client (pods, the node, and off-cluster clients
    /// routed to the ClusterIP: kube-proxy sends all ClusterIP traffic through the internal
    /// policy chain); an external frontend (NodePort, externalIP, LoadBalancer) has the
    /// externalTrafficPolicy set for traffic from outside and, when that is Local, the
    /// cluster-wide set for pods and the node (kube-proxy's short-circuit of in-cluster traffic
    /// to external destinations: as if it went out to a load balancer and came back).
    pub fn scopes(&self) -> Scopes {
        let has_any = !usable(&self.endpoints, self.publish_not_ready, false).is_empty();
        if !self.external {
            return Scopes {
                external: usable(&self.endpoints, self.publish_not_ready, self.internal_local),
                internal: None,
                external_filtered: self.internal_local && has_any,
                internal_filtered: false,
            };
        }
        let external = usable(&self.endpoints, self.publish_not_ready, self.external_local);
        let two = self.external_local || self.internal_local;
        let internal =
            two.then(|| usable(&self.endpoints, self.publish_not_ready, self.internal_local));
        Scopes {
            external,
            internal,
            external_filtered: self.external_local && has_any,
            internal_filtered: self.internal_local && has_any,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn ep(id: u32, local: bool, ready: bool, serving: bool, terminating: bool) -> Endpoint {
        Endpoint {
            id,
            local,
            ready,
            serving,
            terminating,
        }
    }

    #[test]
    fn only_ready_endpoints() {
        let eps = [
            ep(1, true, true, true, false),
            ep(2, true, false, false, false),
            ep(3, false, true, true, false),
        ];
        assert_eq!(usable(&eps, false, false), [1, 3]);
    }

    #[test]
    fn falls_back_to_serving_terminating_when_none_ready() {
        let eps = [
            ep(1, true, false, true, true),
            ep(2, true, false, false, true),
            ep(3, true, false, false, false),
        ];
        assert_eq!(usable(&eps, false, false), [1]);
    }

    #[test]
    fn publish_not_ready_takes_all() {
        let eps = [
            ep(1, true, false, false, false),
            ep(2, true, true, true, false),
        ];
        assert_eq!(usable(&eps, true, false), [1, 2]);
    }

    #[test]
    fn local_policy_falls_back_per_node() {
        // Remote endpoint ready, local one only serving-terminating: eTP Local must use the
        // local terminating one (the case Cilium's CI skips).
        let eps = [
            ep(1, false, true, true, false),
            ep(2, true, false, true, true),
        ];
        assert_eq!(usable(&eps, false, true), [2]);
        assert_eq!(usable(&eps, false, false), [1]);
    }

    fn entry(external: bool, external_local: bool, internal_local: bool) -> ServiceEntry {
        ServiceEntry {
            frontend: Frontend {
                addr: Ipv4Addr::new(10, 96, 0, 1),
                port: 80,
                proto: Proto::Tcp,
            },
            rev_nat_id: 1,
            external,
            external_local,
            internal_local,
            affinity_timeout_s: None,
            maglev_ring: None,
            publish_not_ready: false,
            source_ranges: Vec::new(),
            endpoints: vec![
                ep(1, true, true, true, false),
                ep(2, false, true, true, false),
            ],
        }
    }

    #[test]
    fn scopes_follow_traffic_policies() {
        let s = entry(false, false, false).scopes();
        assert_eq!((s.external, s.internal), (vec![1, 2], None));
        // eTP Local only matters for external frontends.
        assert_eq!(entry(false, true, false).scopes().internal, None);
        let s = entry(true, true, false).scopes();
        assert_eq!((s.external, s.internal), (vec![1], Some(vec![1, 2])));
        assert!(s.external_filtered);
        let s = entry(true, false, true).scopes();
        assert_eq!((s.external, s.internal), (vec![1, 2], Some(vec![1])));
    }

    #[test]
    fn a_cluster_ip_uses_its_internal_policy_for_every_client() {
        // Off-cluster clients routed to a ClusterIP with iTP Local get the local endpoint only,
        // as kube-proxy's ClusterIP rule jumps to the internal policy chain whatever the source.
        let s = entry(false, false, true).scopes();
        assert_eq!((s.external, s.internal), (vec![1], None));
        assert!(
            s.external_filtered,
            "filtered by the Local policy: empty would drop"
        );
    }

    #[test]
    fn no_endpoint_anywhere_rejects_even_under_a_local_policy() {
        // kube-proxy: !hasEndpoints -> REJECT for every destination; a Local policy with
        // endpoints only on other nodes -> DROP.
        let remote_only = |external, external_local, internal_local| ServiceEntry {
            endpoints: vec![ep(2, false, true, true, false)],
            ..entry(external, external_local, internal_local)
        };
        let none = |external, external_local, internal_local| ServiceEntry {
            endpoints: vec![ep(2, false, false, false, false)],
            ..entry(external, external_local, internal_local)
        };
        let s = remote_only(true, true, false).scopes();
        assert!(
            s.external.is_empty() && s.external_filtered,
            "eTP Local: drop"
        );
        let s = remote_only(false, false, true).scopes();
        assert!(
            s.external.is_empty() && s.external_filtered,
            "iTP Local: drop"
        );
        for (x, el, il) in [
            (true, true, false),
            (false, false, true),
            (true, true, true),
        ] {
            let s = none(x, el, il).scopes();
            assert!(s.external.is_empty());
            assert!(
                !s.external_filtered && !s.internal_filtered,
                "no endpoints: reject ({x}, {el}, {il})"
            );
        }
        // A serving-terminating endpoint elsewhere is an endpoint (kube-proxy's hasAnyEndpoints).
        let s = ServiceEntry {
            endpoints: vec![ep(2, false, false, true, true)],
            ..entry(true, true, false)
        }
        .scopes();
        assert!(s.external.is_empty() && s.external_filtered);
    }
}
