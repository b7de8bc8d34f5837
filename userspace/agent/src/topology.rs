//! Topology-aware routing as kube-proxy decides it (pkg/proxy/topology.go, `canUseTopology` /
//! `topologyModeFromHints`): a service port's cluster-wide endpoints are narrowed to the ones
//! the EndpointSlice controller hinted for this node's zone, but only when the service asks for
//! hints, this node has a zone, every ready endpoint carries a zone hint and at least one is
//! hinted for this zone. Anything else falls back to every endpoint, never to none: a bad hint
//! must not black-hole a service.
//!
//! Pure functions over the k8s-openapi types; `desired` applies the decision per frontend.

use k8s_openapi::api::{core::v1::Service, discovery::v1::Endpoint};

/// The Node label holding its zone.
pub const LABEL_ZONE: &str = "topology.kubernetes.io/zone";
/// The annotation asking for hints (Kubernetes >= 1.27).
pub const ANNOTATION_TOPOLOGY_MODE: &str = "service.kubernetes.io/topology-mode";
/// The annotation it replaced (1.21 - 1.26), read when the new one is absent.
pub const ANNOTATION_TOPOLOGY_AWARE_HINTS: &str = "service.kubernetes.io/topology-aware-hints";

/// Whether a service asks for topology-aware routing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    No,
    Yes,
    /// An annotation value kube-proxy does not know (it ignores hints then, and says so).
    Unexpected(String),
}

/// What the service asks for. kube-proxy's rule: a set `spec.trafficDistribution` (the API
/// server admits only known values: PreferClose, and from 1.33 PreferSameZone and
/// PreferSameNode) asks for hints and the annotations are then ignored; otherwise
/// `topology-mode` (or, when unset, the older `topology-aware-hints`) must be `Auto`/`auto`.
pub fn request(svc: &Service) -> Request {
    let spec = svc.spec.as_ref();
    if spec
        .and_then(|s| s.traffic_distribution.as_deref())
        .is_some()
    {
        return Request::Yes;
    }
    let annotations = svc.metadata.annotations.as_ref();
    let value = annotations
        .and_then(|a| a.get(ANNOTATION_TOPOLOGY_MODE))
        .filter(|v| !v.is_empty())
        .or_else(|| annotations.and_then(|a| a.get(ANNOTATION_TOPOLOGY_AWARE_HINTS)));
    match value.map(String::as_str) {
        Some("Auto" | "auto") => Request::Yes,
        None | Some("" | "Disabled" | "disabled") => Request::No,
        Some(other) => Request::Unexpected(other.to_string()),
    }
}

/// An endpoint's zone hints, relative to this node's zone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hint {
    /// No `hints.forZones` entry at all.
    Unhinted,
    /// Hinted for this node's zone (among others, maybe).
    ThisZone,
    /// Hinted only for other zones (or zones this cluster does not have).
    OtherZones,
}

/// An endpoint's hint for `zone` (`hints.forZones[].name`).
pub fn hint(ep: &Endpoint, zone: Option<&str>) -> Hint {
    let zones = ep
        .hints
        .as_ref()
        .and_then(|h| h.for_zones.as_deref())
        .unwrap_or(&[]);
    if zones.is_empty() {
        Hint::Unhinted
    } else if zone.is_some_and(|z| zones.iter().any(|f| f.name == z)) {
        Hint::ThisZone
    } else {
        Hint::OtherZones
    }
}

/// Why a service that asked for hints gets every endpoint.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fallback {
    UnexpectedAnnotation(String),
    /// This node has no (or an empty) `topology.kubernetes.io/zone` label.
    NodeWithoutZone,
    /// Some ready endpoint has no zone hint (a mix of hinted and unhinted endpoints).
    MissingHints,
    /// No ready endpoint is hinted for this zone (hints naming only other or unknown zones).
    NoHintsForZone(String),
}

impl std::fmt::Display for Fallback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fallback::UnexpectedAnnotation(v) => write!(
                f,
                "unexpected {ANNOTATION_TOPOLOGY_MODE} / {ANNOTATION_TOPOLOGY_AWARE_HINTS} value {v:?}"
            ),
            Fallback::NodeWithoutZone => write!(f, "node is missing the {LABEL_ZONE} label"),
            Fallback::MissingHints => write!(f, "one or more ready endpoints have no zone hint"),
            Fallback::NoHintsForZone(z) => write!(f, "no ready endpoint is hinted for zone {z}"),
        }
    }
}

/// Which endpoints a service port's cluster-wide traffic uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Every endpoint: the service did not ask, or has no ready endpoint to judge hints by.
    All,
    /// Only the endpoints hinted for this zone.
    Zone,
    /// Every endpoint, although the service asked for hints.
    Fallback(Fallback),
}

/// kube-proxy's decision for one service port, from the hints of its *ready* endpoints
/// (kube-proxy never looks at the hints of endpoints it would not use first).
pub fn decide(
    request: &Request,
    zone: Option<&str>,
    ready_hints: impl IntoIterator<Item = Hint>,
) -> Decision {
    match request {
        Request::No => return Decision::All,
        Request::Unexpected(v) => {
            return Decision::Fallback(Fallback::UnexpectedAnnotation(v.clone()));
        }
        Request::Yes => {}
    }
    let Some(zone) = zone.filter(|z| !z.is_empty()) else {
        return Decision::Fallback(Fallback::NodeWithoutZone);
    };
    let mut any_ready = false;
    let mut for_zone = false;
    for h in ready_hints {
        any_ready = true;
        match h {
            Hint::Unhinted => return Decision::Fallback(Fallback::MissingHints),
            Hint::ThisZone => for_zone = true,
            Hint::OtherZones => {}
        }
    }
    if !any_ready {
        // Nothing ready: the terminating fallback decides, hints are moot (not worth a log).
        Decision::All
    } else if for_zone {
        Decision::Zone
    } else {
        Decision::Fallback(Fallback::NoHintsForZone(zone.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::{
        core::v1::ServiceSpec,
        discovery::v1::{EndpointHints, ForZone},
    };

    use super::*;

    /// (annotations, trafficDistribution, what it asks for).
    type RequestCase<'a> = (&'a [(&'a str, &'a str)], Option<&'a str>, Request);
    /// (zone hints, node zone, hint).
    type HintCase<'a> = (Option<&'a [&'a str]>, Option<&'a str>, Hint);
    /// (what, request, node zone, ready endpoints' hints, decision).
    type DecisionCase<'a> = (&'a str, Request, Option<&'a str>, &'a [Hint], Decision);

    fn svc(annotations: &[(&str, &str)], distribution: Option<&str>) -> Service {
        let mut s = Service {
            spec: Some(ServiceSpec {
                traffic_distribution: distribution.map(str::to_string),
                ..Default::default()
            }),
            ..Default::default()
        };
        if !annotations.is_empty() {
            s.metadata.annotations = Some(
                annotations
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            );
        }
        s
    }

    #[test]
    fn what_a_service_asks_for() {
        const MODE: &str = ANNOTATION_TOPOLOGY_MODE;
        const OLD: &str = ANNOTATION_TOPOLOGY_AWARE_HINTS;
        let unexpected = |v: &str| Request::Unexpected(v.into());
        let cases: &[RequestCase] = &[
            (&[], None, Request::No),
            (&[(MODE, "Auto")], None, Request::Yes),
            (&[(MODE, "auto")], None, Request::Yes),
            (&[(OLD, "Auto")], None, Request::Yes),
            (&[(MODE, "Disabled")], None, Request::No),
            (&[(MODE, "disabled")], None, Request::No),
            (&[(MODE, "")], None, Request::No),
            (&[(MODE, "AUTO")], None, unexpected("AUTO")),
            (&[(OLD, "on")], None, unexpected("on")),
            // The new annotation wins over the old one; an empty one does not.
            (&[(MODE, "Disabled"), (OLD, "Auto")], None, Request::No),
            (&[(MODE, ""), (OLD, "Auto")], None, Request::Yes),
            (&[], Some("PreferClose"), Request::Yes),
            (&[], Some("PreferSameZone"), Request::Yes),
            // trafficDistribution set: the annotation is ignored, whatever it says.
            (&[(MODE, "Disabled")], Some("PreferClose"), Request::Yes),
            (&[(MODE, "bogus")], Some("PreferClose"), Request::Yes),
        ];
        for (annotations, distribution, want) in cases {
            assert_eq!(
                &request(&svc(annotations, *distribution)),
                want,
                "{annotations:?} {distribution:?}"
            );
        }
    }

    fn ep(zones: Option<&[&str]>) -> Endpoint {
        Endpoint {
            hints: zones.map(|z| EndpointHints {
                for_zones: Some(
                    z.iter()
                        .map(|n| ForZone {
                            name: n.to_string(),
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn hints_relative_to_this_zone() {
        let cases: &[HintCase] = &[
            (None, Some("a"), Hint::Unhinted),
            (Some(&[]), Some("a"), Hint::Unhinted),
            (Some(&["a"]), Some("a"), Hint::ThisZone),
            (Some(&["b", "a"]), Some("a"), Hint::ThisZone),
            (Some(&["b"]), Some("a"), Hint::OtherZones),
            (Some(&["a"]), None, Hint::OtherZones),
        ];
        for (zones, zone, want) in cases {
            assert_eq!(hint(&ep(*zones), *zone), *want, "{zones:?} {zone:?}");
        }
    }

    #[test]
    fn every_rule_and_fallback() {
        use Hint::*;
        let fb = Decision::Fallback;
        let cases: &[DecisionCase] = &[
            (
                "not asked",
                Request::No,
                Some("a"),
                &[ThisZone],
                Decision::All,
            ),
            (
                "unexpected annotation",
                Request::Unexpected("x".into()),
                Some("a"),
                &[ThisZone],
                fb(Fallback::UnexpectedAnnotation("x".into())),
            ),
            (
                "all hinted, some for this zone",
                Request::Yes,
                Some("a"),
                &[ThisZone, OtherZones],
                Decision::Zone,
            ),
            (
                "node without a zone label",
                Request::Yes,
                None,
                &[ThisZone],
                fb(Fallback::NodeWithoutZone),
            ),
            (
                "empty zone label",
                Request::Yes,
                Some(""),
                &[ThisZone],
                fb(Fallback::NodeWithoutZone),
            ),
            (
                "hinted and unhinted mixed",
                Request::Yes,
                Some("a"),
                &[ThisZone, Unhinted],
                fb(Fallback::MissingHints),
            ),
            (
                "none hinted",
                Request::Yes,
                Some("a"),
                &[Unhinted, Unhinted],
                fb(Fallback::MissingHints),
            ),
            (
                "hints name other or unknown zones only",
                Request::Yes,
                Some("a"),
                &[OtherZones, OtherZones],
                fb(Fallback::NoHintsForZone("a".into())),
            ),
            (
                "no ready endpoints",
                Request::Yes,
                Some("a"),
                &[],
                Decision::All,
            ),
        ];
        for (what, req, zone, hints, want) in cases {
            assert_eq!(&decide(req, *zone, hints.iter().copied()), want, "{what}");
        }
    }

    // Through the desired-state computation: what each frontend's plan carries, and the scopes
    // the datapath builds from it.

    use std::net::Ipv4Addr;

    use k8s_openapi::api::{
        core::v1::ServicePort,
        discovery::v1::{EndpointConditions, EndpointPort, EndpointSlice},
    };
    use petrel_datapath::{Frontend, Proto, model};

    use crate::desired::{
        self, FrontendKind, FrontendPlan, LABEL_SERVICE_NAME, NodeFacts, Options,
    };

    /// A service "web" on 10.96.0.40:80 (and NodePort 30040 when `node_port`).
    fn web(spec: ServiceSpec, annotations: &[(&str, &str)], node_port: bool) -> Service {
        let mut s = svc(annotations, None);
        s.metadata.name = Some("web".into());
        s.metadata.namespace = Some("default".into());
        let distribution = spec.traffic_distribution.clone();
        s.spec = Some(ServiceSpec {
            cluster_ip: Some("10.96.0.40".into()),
            type_: node_port.then(|| "NodePort".into()),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                protocol: Some("TCP".into()),
                node_port: node_port.then_some(30040),
                ..Default::default()
            }]),
            traffic_distribution: distribution,
            ..spec
        });
        s
    }

    /// (last octet, node, ready, zone hints): pods at 10.244.0.<last>.
    type Ep<'a> = (u8, &'a str, bool, Option<&'a [&'a str]>);

    fn slice(eps: &[Ep]) -> EndpointSlice {
        EndpointSlice {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some("web-x".into()),
                namespace: Some("default".into()),
                labels: Some([(LABEL_SERVICE_NAME.to_string(), "web".to_string())].into()),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: eps
                .iter()
                .map(|(last, node, ready, zones)| Endpoint {
                    addresses: vec![format!("10.244.0.{last}")],
                    node_name: Some(node.to_string()),
                    conditions: Some(EndpointConditions {
                        ready: Some(*ready),
                        ..Default::default()
                    }),
                    ..ep(*zones)
                })
                .collect(),
            ports: Some(vec![EndpointPort {
                name: Some("http".into()),
                port: Some(8080),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
        }
    }

    fn node(zone: Option<&str>) -> NodeFacts {
        NodeFacts {
            name: "n1".into(),
            ips: vec![Ipv4Addr::new(192, 0, 2, 1)],
            zone: zone.map(str::to_string),
            node_port_ips: None,
        }
    }

    fn last_octets(p: &FrontendPlan, ids: &[u32]) -> Vec<u8> {
        ids.iter()
            .map(|i| p.endpoints[*i as usize].backend.addr.ip().octets()[3])
            .collect()
    }

    /// The datapath's scopes of a plan: (outside traffic, in-cluster traffic when it differs).
    fn scopes(p: &FrontendPlan) -> (Vec<u8>, Option<Vec<u8>>) {
        let endpoints = p
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| model::Endpoint {
                id: i as u32,
                local: e.local,
                ready: e.ready,
                serving: e.serving,
                terminating: e.terminating,
            })
            .collect();
        let fe = Frontend {
            addr: Ipv4Addr::UNSPECIFIED,
            port: 1,
            proto: Proto::Tcp,
        };
        let mut entry = model::ServiceEntry::new(fe, 1, endpoints);
        entry.external = p.external();
        entry.external_local = p.external_local;
        entry.internal_local = p.internal_local;
        entry.publish_not_ready = p.publish_not_ready;
        let s = entry.scopes();
        (
            last_octets(p, &s.external),
            s.internal.map(|i| last_octets(p, &i)),
        )
    }

    const AUTO: &[(&str, &str)] = &[(ANNOTATION_TOPOLOGY_MODE, "Auto")];
    const A: Option<&[&str]> = Some(&["a"]);
    const B: Option<&[&str]> = Some(&["b"]);

    #[test]
    fn a_zone_hinted_slice_programs_only_this_zones_endpoints() {
        let sl = slice(&[
            (1, "n1", true, A),
            (2, "n2", true, B),
            (3, "n3", true, A),
            (4, "n4", false, B),
        ]);
        let d = desired::compute(
            &[web(ServiceSpec::default(), AUTO, false)],
            &[sl],
            &node(Some("a")),
            Options::default(),
        );
        let p = d.frontends.values().next().expect("one frontend");
        let programmed: Vec<u8> = p
            .endpoints
            .iter()
            .map(|e| e.backend.addr.ip().octets()[3])
            .collect();
        assert_eq!(programmed, [1, 3], "zone b's endpoints are not programmed");
        assert_eq!(scopes(p), (vec![1, 3], None));
        assert!(d.topology_fallbacks.is_empty());
        // Zone b's backends are not even in the backend map.
        assert_eq!(d.backends().len(), 2);
    }

    /// (what, service, node zone, endpoints, ClusterIP scopes, fallback).
    type Case<'a> = (
        &'a str,
        Service,
        Option<&'a str>,
        Vec<Ep<'a>>,
        (Vec<u8>, Option<Vec<u8>>),
        Option<Fallback>,
    );

    #[test]
    fn cluster_ip_rules_and_fallbacks() {
        let plain = || web(ServiceSpec::default(), AUTO, false);
        let hinted = || vec![(1, "n1", true, A), (2, "n2", true, B)];
        let close = ServiceSpec {
            traffic_distribution: Some("PreferClose".into()),
            ..Default::default()
        };
        let itp_local = ServiceSpec {
            internal_traffic_policy: Some("Local".into()),
            ..Default::default()
        };
        let all = || (vec![1, 2], None);
        let cases: Vec<Case> = vec![
            (
                "annotation Auto",
                plain(),
                Some("a"),
                hinted(),
                (vec![1], None),
                None,
            ),
            (
                "trafficDistribution PreferClose",
                web(close, &[], false),
                Some("a"),
                hinted(),
                (vec![1], None),
                None,
            ),
            (
                "not asked: hints ignored",
                web(ServiceSpec::default(), &[], false),
                Some("a"),
                hinted(),
                all(),
                None,
            ),
            (
                "node without a zone label",
                plain(),
                None,
                hinted(),
                all(),
                Some(Fallback::NodeWithoutZone),
            ),
            (
                "hinted and unhinted mixed",
                plain(),
                Some("a"),
                vec![(1, "n1", true, A), (2, "n2", true, None)],
                all(),
                Some(Fallback::MissingHints),
            ),
            (
                "hints naming an unknown zone",
                plain(),
                Some("a"),
                vec![(1, "n1", true, Some(&["nowhere"])), (2, "n2", true, B)],
                all(),
                Some(Fallback::NoHintsForZone("a".into())),
            ),
            (
                "no endpoint for this zone",
                plain(),
                Some("c"),
                hinted(),
                all(),
                Some(Fallback::NoHintsForZone("c".into())),
            ),
            (
                "an unready endpoint's hint does not count",
                plain(),
                Some("a"),
                vec![(1, "n1", false, A), (2, "n2", true, B)],
                (vec![2], None),
                Some(Fallback::NoHintsForZone("a".into())),
            ),
            (
                "an unready endpoint without hints does not break them",
                plain(),
                Some("a"),
                vec![
                    (1, "n1", true, A),
                    (2, "n2", true, B),
                    (3, "n3", false, None),
                ],
                (vec![1], None),
                None,
            ),
            (
                "iTP Local takes precedence (hints never consulted)",
                web(itp_local, AUTO, false),
                Some("b"),
                hinted(),
                // The local endpoint although it is hinted for zone a, for every client of
                // the ClusterIP (off-cluster ones too: kube-proxy's ClusterIP rule always
                // jumps to the internal policy chain).
                (vec![1], None),
                None,
            ),
        ];
        for (what, service, zone, eps, want, fallback) in cases {
            let d = desired::compute(&[service], &[slice(&eps)], &node(zone), Options::default());
            let p = d.frontends.values().next().expect("one frontend");
            assert_eq!(scopes(p), want, "{what}");
            let want_fb: Vec<(String, Fallback)> = fallback
                .into_iter()
                .map(|f| ("default/web".into(), f))
                .collect();
            assert_eq!(d.topology_fallbacks, want_fb, "{what}");
        }
    }

    #[test]
    fn external_traffic_policy_local_keeps_local_endpoints_of_any_zone() {
        let sl = slice(&[
            (1, "n1", true, B), // local, hinted for the other zone
            (2, "n2", true, A),
            (3, "n3", true, B),
        ]);
        let etp = |policy: &str| ServiceSpec {
            external_traffic_policy: Some(policy.into()),
            ..Default::default()
        };
        for (policy, want_np) in [
            // eTP Cluster: one set for everyone, this zone's.
            ("Cluster", (vec![2], None)),
            // eTP Local: outside clients get every local endpoint; pods short-circuit to this
            // zone's (plus the local one the shared list keeps).
            ("Local", (vec![1], Some(vec![1, 2]))),
        ] {
            let d = desired::compute(
                &[web(etp(policy), AUTO, true)],
                std::slice::from_ref(&sl),
                &node(Some("a")),
                Options::default(),
            );
            for p in d.frontends.values() {
                let want = if p.kind == FrontendKind::ClusterIp {
                    (vec![2], None)
                } else {
                    want_np.clone()
                };
                assert_eq!(scopes(p), want, "{policy} {:?}", p.kind);
            }
            assert!(d.topology_fallbacks.is_empty());
        }
    }
}
