//! Each object cut down on arrival to the fields petrel reads, so the watch caches hold what is
//! programmed and little else: no managedFields (often most of an object's size), no
//! annotations but the ones petrel honours, no pod references, no Node status but its
//! addresses. A Node cut down this way is also what decides whether a Node event changes
//! anything (`kube::changes_store`): heartbeats and conditions do not.
//!
//! WARNING: a field read anywhere in the agent (desired, topology, node, routing, health,
//! cni_files) must survive its projection here; the tests below list them.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        core::v1::{Node, NodeSpec, NodeStatus, Service, ServiceStatus},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

use crate::{
    desired::{LABEL_HEADLESS, LABEL_PROXY_NAME, LABEL_SERVICE_NAME},
    metrics::TRIGGER_TIME_ANNOTATION,
    topology::{ANNOTATION_TOPOLOGY_AWARE_HINTS, ANNOTATION_TOPOLOGY_MODE, LABEL_ZONE},
};

/// The entries of `map` under the given keys (None when none is left).
fn keep(map: Option<BTreeMap<String, String>>, keys: &[&str]) -> Option<BTreeMap<String, String>> {
    let kept: BTreeMap<String, String> = map?
        .into_iter()
        .filter(|(k, _)| keys.contains(&k.as_str()))
        .collect();
    (!kept.is_empty()).then_some(kept)
}

/// Identity, age and version of an object; `labels` and `annotations` already cut down.
fn meta(m: &mut ObjectMeta, labels: &[&str], annotations: &[&str]) {
    let old = std::mem::take(m);
    *m = ObjectMeta {
        name: old.name,
        namespace: old.namespace,
        uid: old.uid,
        resource_version: old.resource_version,
        creation_timestamp: old.creation_timestamp,
        deletion_timestamp: old.deletion_timestamp,
        labels: keep(old.labels, labels),
        annotations: keep(old.annotations, annotations),
        ..ObjectMeta::default()
    };
}

/// A Service: its spec whole (every field of it can change a frontend), of its status the
/// load balancer's ingress only.
pub fn service(s: &mut Service) {
    meta(
        &mut s.metadata,
        &[LABEL_PROXY_NAME, LABEL_HEADLESS],
        &[ANNOTATION_TOPOLOGY_MODE, ANNOTATION_TOPOLOGY_AWARE_HINTS],
    );
    s.status = s.status.take().and_then(|st| {
        st.load_balancer.map(|lb| ServiceStatus {
            load_balancer: Some(lb),
            ..ServiceStatus::default()
        })
    });
}

/// An EndpointSlice: its service, the trigger time (programming latency), and per endpoint what
/// the datapath uses (addresses, conditions, node, zone, hints), not the pod reference.
pub fn slice(s: &mut EndpointSlice) {
    meta(
        &mut s.metadata,
        &[LABEL_SERVICE_NAME, LABEL_PROXY_NAME, LABEL_HEADLESS],
        &[TRIGGER_TIME_ANNOTATION],
    );
    for ep in &mut s.endpoints {
        ep.target_ref = None;
        ep.hostname = None;
        ep.deprecated_topology = None;
    }
}

/// A Node: name, zone, whether it is being deleted; pod CIDRs and taints; addresses. Without
/// a resourceVersion, so that two Nodes that differ in nothing petrel reads compare equal.
pub fn node(n: &mut Node) {
    meta(&mut n.metadata, &[LABEL_ZONE], &[]);
    n.metadata.resource_version = None;
    n.spec = n.spec.take().map(|s| NodeSpec {
        pod_cidr: s.pod_cidr,
        pod_cidrs: s.pod_cidrs,
        taints: s.taints,
        ..NodeSpec::default()
    });
    n.status = n.status.take().map(|s| NodeStatus {
        addresses: s.addresses,
        ..NodeStatus::default()
    });
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::{
            core::v1::{
                LoadBalancerIngress, LoadBalancerStatus, NodeAddress, NodeCondition, ServiceSpec,
                Taint,
            },
            discovery::v1::{Endpoint, EndpointConditions},
        },
        apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, Time},
        jiff::Timestamp,
    };

    use super::*;

    #[expect(
        clippy::unnecessary_wraps,
        reason = "compared with and stored in ObjectMeta's Option fields"
    )]
    fn labels(kv: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
        Some(
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    fn noisy_meta() -> ObjectMeta {
        ObjectMeta {
            name: Some("web".into()),
            namespace: Some("default".into()),
            uid: Some("u1".into()),
            resource_version: Some("42".into()),
            creation_timestamp: Some(Time(Timestamp::UNIX_EPOCH)),
            managed_fields: Some(vec![ManagedFieldsEntry::default(); 3]),
            annotations: labels(&[
                ("kubectl.kubernetes.io/last-applied-configuration", "{...}"),
                (ANNOTATION_TOPOLOGY_MODE, "Auto"),
                (TRIGGER_TIME_ANNOTATION, "2026-01-01T00:00:00Z"),
            ]),
            labels: labels(&[
                ("app", "web"),
                (LABEL_SERVICE_NAME, "web"),
                (LABEL_ZONE, "z1"),
            ]),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn a_service_keeps_its_spec_identity_and_topology_annotation() {
        let spec = ServiceSpec {
            cluster_ip: Some("10.96.0.1".into()),
            ..ServiceSpec::default()
        };
        let lb = LoadBalancerStatus {
            ingress: Some(vec![LoadBalancerIngress {
                ip: Some("203.0.113.1".into()),
                ..LoadBalancerIngress::default()
            }]),
        };
        let mut s = Service {
            metadata: noisy_meta(),
            spec: Some(spec.clone()),
            status: Some(ServiceStatus {
                load_balancer: Some(lb.clone()),
                conditions: Some(Vec::new()),
            }),
        };
        service(&mut s);
        assert_eq!(s.spec, Some(spec));
        assert_eq!(s.status.and_then(|s| s.load_balancer), Some(lb));
        let m = &s.metadata;
        assert_eq!(m.managed_fields, None);
        assert_eq!(m.annotations, labels(&[(ANNOTATION_TOPOLOGY_MODE, "Auto")]));
        assert_eq!(m.labels, None, "no label petrel reads");
        assert_eq!(
            (m.name.as_deref(), m.namespace.as_deref(), m.uid.as_deref()),
            (Some("web"), Some("default"), Some("u1"))
        );
        assert_eq!(m.resource_version.as_deref(), Some("42"));
        assert!(m.creation_timestamp.is_some(), "the age decides conflicts");
    }

    #[test]
    fn a_slice_keeps_its_service_trigger_time_and_what_endpoints_route_by() {
        let ep = Endpoint {
            addresses: vec!["10.244.1.5".into()],
            conditions: Some(EndpointConditions {
                ready: Some(true),
                ..EndpointConditions::default()
            }),
            node_name: Some("n1".into()),
            zone: Some("z1".into()),
            hostname: Some("web-1".into()),
            target_ref: Some(Default::default()),
            ..Endpoint::default()
        };
        let mut s = EndpointSlice {
            metadata: noisy_meta(),
            address_type: "IPv4".into(),
            endpoints: vec![ep.clone()],
            ports: None,
        };
        slice(&mut s);
        assert_eq!(s.metadata.labels, labels(&[(LABEL_SERVICE_NAME, "web")]));
        assert_eq!(
            s.metadata.annotations,
            labels(&[(TRIGGER_TIME_ANNOTATION, "2026-01-01T00:00:00Z")])
        );
        assert_eq!(s.metadata.managed_fields, None);
        assert_eq!(
            s.endpoints,
            [Endpoint {
                hostname: None,
                target_ref: None,
                ..ep
            }]
        );
    }

    fn node_with(heartbeat: i64, rv: &str) -> Node {
        let mut m = noisy_meta();
        m.resource_version = Some(rv.into());
        Node {
            metadata: m,
            spec: Some(NodeSpec {
                pod_cidr: Some("10.244.1.0/24".into()),
                taints: Some(vec![Taint {
                    key: "node.kubernetes.io/unschedulable".into(),
                    effect: "NoSchedule".into(),
                    ..Taint::default()
                }]),
                provider_id: Some("kind://x".into()),
                ..NodeSpec::default()
            }),
            status: Some(NodeStatus {
                addresses: Some(vec![NodeAddress {
                    address: "192.0.2.1".into(),
                    type_: "InternalIP".into(),
                }]),
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    last_heartbeat_time: Some(Time(
                        Timestamp::from_second(heartbeat).expect("time"),
                    )),
                    ..NodeCondition::default()
                }]),
                ..NodeStatus::default()
            }),
        }
    }

    #[test]
    fn a_node_heartbeat_projects_to_the_same_node() {
        let (mut a, mut b) = (node_with(1, "100"), node_with(2, "101"));
        assert_ne!(a, b);
        node(&mut a);
        node(&mut b);
        assert_eq!(a, b, "only the heartbeat and resourceVersion differed");
        // What routing, health and topology read is kept.
        assert_eq!(a.metadata.labels, labels(&[(LABEL_ZONE, "z1")]));
        let spec = a.spec.as_ref().expect("spec");
        assert_eq!(spec.pod_cidr.as_deref(), Some("10.244.1.0/24"));
        assert_eq!(spec.taints.as_ref().map(Vec::len), Some(1));
        assert_eq!(spec.provider_id, None);
        assert_eq!(
            crate::node::internal_ips(&a),
            ["192.0.2.1".parse::<std::net::Ipv4Addr>().unwrap()]
        );
        // A change petrel reads does show.
        let mut c = node_with(3, "102");
        c.status.as_mut().unwrap().addresses.as_mut().unwrap()[0].address = "192.0.2.9".into();
        node(&mut c);
        assert_ne!(a, c);
    }
}
