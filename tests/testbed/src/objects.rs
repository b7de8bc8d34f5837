//! Kubernetes objects as tests, the cluster fixture and the benchmark create them: one builder
//! per kind, so every caller writes the same Service, EndpointSlice, Endpoints and Node.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use k8s_openapi::{
    api::{
        core::v1::{
            EndpointAddress, EndpointPort as CoreEndpointPort, EndpointSubset, Endpoints, Node,
            NodeAddress, NodeSpec, NodeStatus, Service, ServicePort, ServiceSpec,
        },
        discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
    },
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};

/// The port every test pod serves on.
pub const POD_PORT: u16 = 8080;

/// The ClusterIP the API server gave `svc`.
pub fn cluster_ip(svc: &Service) -> Ipv4Addr {
    svc.spec
        .as_ref()
        .and_then(|s| s.cluster_ip.as_ref())
        .and_then(|ip| ip.parse().ok())
        .expect("the API server assigned a ClusterIP")
}

/// Name `name` in namespace `default`.
pub fn meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some("default".into()),
        ..Default::default()
    }
}

/// Service `name` in `default`, port 80 (`http`) -> POD_PORT: a NodePort service on `node_port`
/// when given, else a ClusterIP service.
pub fn service(name: &str, node_port: Option<i32>) -> Service {
    Service {
        metadata: meta(name),
        spec: Some(ServiceSpec {
            type_: Some(
                if node_port.is_some() {
                    "NodePort"
                } else {
                    "ClusterIP"
                }
                .into(),
            ),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                target_port: Some(IntOrString::Int(POD_PORT.into())),
                node_port,
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The endpoint list of an EndpointSlice: `backends` (address, node name), all ready.
pub fn slice_endpoints(backends: &[(Ipv4Addr, String)]) -> Vec<Endpoint> {
    backends
        .iter()
        .map(|(ip, node)| Endpoint {
            addresses: vec![ip.to_string()],
            conditions: Some(EndpointConditions {
                ready: Some(true),
                serving: Some(true),
                terminating: Some(false),
            }),
            node_name: Some(node.clone()),
            ..Default::default()
        })
        .collect()
}

/// EndpointSlice `<service>-1` of Service `service`, port `http` = POD_PORT.
pub fn slice(service: &str, backends: &[(Ipv4Addr, String)]) -> EndpointSlice {
    let mut slice_meta = meta(&format!("{service}-1"));
    slice_meta.labels = Some(
        [(
            "kubernetes.io/service-name".to_string(),
            service.to_string(),
        )]
        .into_iter()
        .collect(),
    );
    EndpointSlice {
        metadata: slice_meta,
        address_type: "IPv4".into(),
        endpoints: slice_endpoints(backends),
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(POD_PORT.into()),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
    }
}

/// Node `name` with `pod_cidr` and the InternalIP `ip` (and its name as Hostname).
pub fn node(name: &str, ip: Ipv4Addr, pod_cidr: Ipv4Net) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            pod_cidr: Some(pod_cidr.to_string()),
            pod_cidrs: Some(vec![pod_cidr.to_string()]),
            ..Default::default()
        }),
        status: Some(NodeStatus {
            addresses: Some(vec![
                NodeAddress {
                    type_: "InternalIP".into(),
                    address: ip.to_string(),
                },
                NodeAddress {
                    type_: "Hostname".into(),
                    address: name.into(),
                },
            ]),
            ..Default::default()
        }),
    }
}

/// Core v1 Endpoints `name` in `default` with `backends` (address, node name) on port `http` =
/// POD_PORT: what kube-proxy 1.20 reads when EndpointSliceProxying is off.
pub fn endpoints(name: &str, backends: &[(Ipv4Addr, String)]) -> Endpoints {
    Endpoints {
        metadata: meta(name),
        subsets: Some(vec![endpoint_subset(backends)]),
    }
}

/// The one subset of `endpoints`: `backends` (address, node name), port `http` = POD_PORT.
pub fn endpoint_subset(backends: &[(Ipv4Addr, String)]) -> EndpointSubset {
    EndpointSubset {
        addresses: Some(
            backends
                .iter()
                .map(|(ip, node)| EndpointAddress {
                    ip: ip.to_string(),
                    node_name: Some(node.clone()),
                    ..Default::default()
                })
                .collect(),
        ),
        ports: Some(vec![CoreEndpointPort {
            name: Some("http".into()),
            port: POD_PORT.into(),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        ..Default::default()
    }
}
