//! The desired datapath state as a pure function of the Services, EndpointSlices and node facts
//! (no I/O): which frontends exist, with which policies, and which endpoints in which
//! condition. kube-proxy's rules, as its code and the sig-network e2e suite define them.
//!
//! About half of this file is its unit tests (kube-proxy's rules case by case, and the memo
//! against a full compute): kept beside the code they pin down.

use std::{
    borrow::Borrow,
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{Ipv4Addr, SocketAddrV4},
};

use k8s_openapi::api::{
    core::v1::{Service, ServiceSpec},
    discovery::v1::EndpointSlice,
};

use petrel_datapath::{Frontend, Proto, inspect::names::FrontendName};

pub use crate::memo::Memo;
pub use crate::node::NodeFacts;
use crate::topology::{self, Decision, Hint};

/// Label kube-proxy honours: a service handled by another proxy.
pub const LABEL_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
/// Label marking a headless service (also `clusterIP: None`).
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
/// Label linking an EndpointSlice to its service.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// sessionAffinityConfig.clientIP.timeoutSeconds default (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10800;

/// Agent options that change the desired state.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Use Maglev for external frontends.
    pub maglev: bool,
}

/// A backend address as the datapath knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendKey {
    pub addr: SocketAddrV4,
    pub proto: Proto,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointPlan {
    pub backend: BackendKey,
    pub local: bool,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

/// Which kind of address a frontend is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FrontendKind {
    ClusterIp,
    NodePort,
    ExternalIp,
    LoadBalancer,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendPlan {
    /// "namespace/name" of the service.
    pub service: String,
    /// The service port's name ("" when unnamed).
    pub port_name: String,
    pub kind: FrontendKind,
    /// externalTrafficPolicy Local (the datapath applies it to external frontends only).
    pub external_local: bool,
    /// internalTrafficPolicy Local, as it applies to this frontend: true on ClusterIP frontends
    /// only. A pod or the node reaching a NodePort, externalIP or LoadBalancer IP is subject to
    /// neither policy (kube-proxy's short-circuit: as if it went out to a load balancer and
    /// came back), so it may reach every endpoint.
    pub internal_local: bool,
    pub affinity_timeout_s: Option<u32>,
    pub maglev: bool,
    pub publish_not_ready: bool,
    /// loadBalancerSourceRanges, on LoadBalancer frontends only (kube-proxy applies them to the
    /// LoadBalancer IPs; NodePort, externalIPs and the ClusterIP stay open): the IPv4 prefixes
    /// allowed, plus the LoadBalancer IPs themselves when a prefix holds a node address (the
    /// node reaching an LB IP it has as a local address sends from that IP). Empty: no filter.
    pub source_ranges: Vec<ipnet::Ipv4Net>,
    pub endpoints: Vec<EndpointPlan>,
}

impl FrontendPlan {
    pub fn external(&self) -> bool {
        self.kind != FrontendKind::ClusterIp
    }
}

/// A service by namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceRef {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ServiceRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A service's health check node port and what it reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub port: u16,
    /// Ready endpoints on this node, each address counted once whatever its ports (as
    /// kube-proxy counts them; terminating ones do not count, so a node whose pods are all
    /// going away fails the check while it still drains them).
    pub local_endpoints: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub frontends: BTreeMap<Frontend, FrontendPlan>,
    /// LoadBalancer services with externalTrafficPolicy Local and a healthCheckNodePort.
    pub health_checks: BTreeMap<ServiceRef, HealthCheck>,
    /// Services skipped, with why (for logs and netctl).
    pub skipped: Vec<(String, &'static str)>,
    /// Service ports petrel cannot serve (SCTP), as "namespace/name" and "port/PROTOCOL": each
    /// logged when its service changes and counted; the rest of the service is programmed.
    pub unsupported: Vec<(String, String)>,
    /// Services that ask for topology-aware routing but get every endpoint, with why.
    pub topology_fallbacks: Vec<(String, topology::Fallback)>,
    /// Frontends two services ask for: (frontend, the older service that keeps it, the newer
    /// one that does not get it).
    pub conflicts: Vec<(Frontend, String, String)>,
}

impl Desired {
    /// Every backend some frontend uses, with whether any use marks it terminating / remote.
    pub fn backends(&self) -> BTreeSet<BackendKey> {
        self.frontends
            .values()
            .flat_map(|f| f.endpoints.iter().map(|e| e.backend))
            .collect()
    }

    /// The names behind each frontend, as netctl shows them.
    pub fn frontend_names(&self) -> BTreeMap<String, FrontendName> {
        self.frontends
            .iter()
            .map(|(fe, p)| (fe.to_string(), frontend_name(p)))
            .collect()
    }
}

/// The names behind a frontend, as netctl shows them.
pub fn frontend_name(p: &FrontendPlan) -> FrontendName {
    let policy = |local: bool| if local { "Local" } else { "Cluster" }.to_string();
    let kind = match p.kind {
        FrontendKind::ClusterIp => "ClusterIP",
        FrontendKind::NodePort => "NodePort",
        FrontendKind::ExternalIp => "ExternalIP",
        FrontendKind::LoadBalancer => "LoadBalancer",
    };
    FrontendName {
        service: p.service.clone(),
        port_name: p.port_name.clone(),
        kind: kind.to_string(),
        external_traffic_policy: policy(p.external_local),
        internal_traffic_policy: policy(p.internal_local),
    }
}

pub(crate) fn key(ns: &str, name: &str) -> String {
    format!("{ns}/{name}")
}

fn proto(p: Option<&str>) -> Option<Proto> {
    match p.unwrap_or("TCP") {
        "TCP" => Some(Proto::Tcp),
        "UDP" => Some(Proto::Udp),
        _ => None, // SCTP is not served by petrel (see `add_service`).
    }
}

fn ipv4(s: &str) -> Option<Ipv4Addr> {
    s.parse().ok()
}

/// Why a service is not programmed, or None.
pub fn skip_reason(svc: &Service) -> Option<&'static str> {
    let labels = svc.metadata.labels.as_ref();
    if labels.is_some_and(|l| l.contains_key(LABEL_PROXY_NAME)) {
        return Some("handled by another proxy (service-proxy-name label)");
    }
    if labels.is_some_and(|l| l.contains_key(LABEL_HEADLESS)) {
        return Some("headless (label)");
    }
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return Some("ExternalName");
    }
    if spec.cluster_ip.as_deref() == Some("None") {
        return Some("headless (clusterIP None)");
    }
    None
}

/// Computes the desired state. Takes the objects or shared pointers to them (the agent hands in
/// its watch caches' `Arc`s, so a sync copies no object).
pub fn compute<S: Borrow<Service>, E: Borrow<EndpointSlice>>(
    services: &[S],
    slices: &[E],
    node: &NodeFacts,
    opts: Options,
) -> Desired {
    // Slices by owning service, each service's in name order (as Memo groups them).
    let mut by_service: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
    for s in slices {
        let s: &EndpointSlice = s.borrow();
        if let Some(o) = owner(s) {
            by_service.entry(o).or_default().push(s);
        }
    }
    for v in by_service.values_mut() {
        sort_slices(v);
    }
    let parts: Vec<(Age, Desired)> = services
        .iter()
        .map(|svc| {
            let svc: &Service = svc.borrow();
            let ns = svc.metadata.namespace.as_deref().unwrap_or("default");
            let name = svc.metadata.name.as_deref().unwrap_or_default();
            let own = by_service.get(&(ns, name)).map_or(&[][..], Vec::as_slice);
            (age(svc), service_part(svc, own, node, opts))
        })
        .collect();
    assemble(parts.iter().map(|(a, p)| (a, p)))
}

/// Slices in the order their endpoints are read (of an address in two slices, the first one's
/// conditions are used): by name, whatever order the cache hands them out in.
pub(crate) fn sort_slices<E: Borrow<EndpointSlice>>(slices: &mut [E]) {
    let name = |s: &E| Borrow::<EndpointSlice>::borrow(s).metadata.name.clone();
    slices.sort_by_key(name);
}

/// One service's part of the desired state, from its own slices (any order of addressType).
pub(crate) fn service_part<E: Borrow<EndpointSlice>>(
    svc: &Service,
    own: &[E],
    node: &NodeFacts,
    opts: Options,
) -> Desired {
    let own: Vec<&EndpointSlice> = own
        .iter()
        .map(Borrow::<EndpointSlice>::borrow)
        .filter(|s| s.address_type == "IPv4")
        .collect();
    let ns = svc.metadata.namespace.as_deref().unwrap_or("default");
    let name = svc.metadata.name.as_deref().unwrap_or_default();
    let by_service = HashMap::from([((ns, name), own)]);
    let mut part = Desired::default();
    add_service(svc, &by_service, node, opts, &mut part);
    part
}

/// The age order of services, as the API server's allocators decide who keeps a port: the
/// older creationTimestamp, then namespace/name (the last element: the service's id).
pub(crate) type Age = (bool, Option<String>, String);

pub(crate) fn age(svc: &Service) -> Age {
    let t = svc
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.to_string());
    (t.is_none(), t, service_id(svc))
}

pub(crate) fn service_id(svc: &Service) -> String {
    key(
        svc.metadata.namespace.as_deref().unwrap_or("default"),
        svc.metadata.name.as_deref().unwrap_or_default(),
    )
}

/// The desired state made of every service's part. A frontend two services ask for stays with
/// the older (`age`), and the conflict is recorded, (frontend, keeper, refused) for each service
/// refused; never silently the later one. Every list sorted, so the result does not depend on
/// the order the parts come in (Memo builds the same state change by change).
pub(crate) fn assemble<'a>(parts: impl Iterator<Item = (&'a Age, &'a Desired)>) -> Desired {
    let mut claims: BTreeMap<Frontend, Vec<(&Age, &FrontendPlan)>> = BTreeMap::new();
    let mut desired = Desired::default();
    for (age, part) in parts {
        for (fe, plan) in &part.frontends {
            claims.entry(*fe).or_default().push((age, plan));
        }
        desired.skipped.extend(part.skipped.iter().cloned());
        desired.unsupported.extend(part.unsupported.iter().cloned());
        desired
            .topology_fallbacks
            .extend(part.topology_fallbacks.iter().cloned());
        desired.health_checks.extend(
            part.health_checks
                .iter()
                .map(|(svc, hc)| (svc.clone(), *hc)),
        );
    }
    for (fe, mut claimants) in claims {
        claimants.sort_by(|a, b| a.0.cmp(b.0));
        let (_, keeper) = claimants[0];
        for (_, refused) in &claimants[1..] {
            desired
                .conflicts
                .push((fe, keeper.service.clone(), refused.service.clone()));
        }
        desired.frontends.insert(fe, keeper.clone());
    }
    desired.skipped.sort();
    desired.unsupported.sort();
    desired.topology_fallbacks.sort();
    desired.conflicts.sort();
    desired
}

/// A service's IPv4 addresses, by kind of frontend, and its IPv6 ones (not served: the datapath
/// is IPv4 only so far).
struct Addresses {
    cluster: Vec<Ipv4Addr>,
    external: Vec<Ipv4Addr>,
    load_balancer: Vec<Ipv4Addr>,
    ipv6: Vec<std::net::Ipv6Addr>,
}

impl Addresses {
    fn of(svc: &Service, spec: &ServiceSpec) -> Addresses {
        let cluster: Vec<&str> = match &spec.cluster_ips {
            Some(ips) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
            _ => spec.cluster_ip.as_deref().into_iter().collect(),
        };
        let external = spec.external_ips.iter().flatten().map(String::as_str);
        let load_balancer = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .into_iter()
            .flatten()
            .filter(|i| serves_ingress(i))
            .filter_map(|i| i.ip.as_deref());
        let mut ipv6 = Vec::new();
        let cluster = split_families(cluster.into_iter(), &mut ipv6);
        let external = split_families(external, &mut ipv6);
        let load_balancer = split_families(load_balancer, &mut ipv6);
        ipv6.sort();
        ipv6.dedup();
        Addresses {
            cluster,
            external,
            load_balancer,
            ipv6,
        }
    }
}

/// The IPv4 addresses among `addrs`; the IPv6 ones go to `ipv6`, unparsable ones nowhere.
fn split_families<'a>(
    addrs: impl Iterator<Item = &'a str>,
    ipv6: &mut Vec<std::net::Ipv6Addr>,
) -> Vec<Ipv4Addr> {
    addrs
        .filter_map(|a| match a.parse() {
            Ok(std::net::IpAddr::V4(v4)) => Some(v4),
            Ok(std::net::IpAddr::V6(v6)) => {
                ipv6.push(v6);
                None
            }
            Err(_) => None,
        })
        .collect()
}

/// Whether a LoadBalancer ingress IP is programmed as a frontend: not when its `ipMode` is
/// `Proxy` (KEP-1860, kube-proxy's serviceport.go): the load balancer then proxies, sends from
/// its own address to the node's NodePort, and a pod reaching the LB IP must go out to it rather
/// than be short-circuited to a backend. No ipMode (or `VIP`) is the old behaviour.
pub fn serves_ingress(i: &k8s_openapi::api::core::v1::LoadBalancerIngress) -> bool {
    i.ip_mode.as_deref() != Some("Proxy")
}

/// A LoadBalancer service's source ranges as kube-proxy reads them (`MapCIDRsByIPFamily`):
/// each entry trimmed, host bits cleared, IPv6 ones left to the IPv6 proxy, unparsable ones left
/// out with a warning naming the service. When a range holds a node address, the LB IPs are
/// allowed as sources too (kube-proxy's `allowFromNode`). Sorted, no duplicates; empty when no
/// IPv4 range is left (then nothing is filtered, as under kube-proxy).
pub fn source_ranges(
    service: &str,
    ranges: &[String],
    lb_ips: &[Ipv4Addr],
    node_ips: &[Ipv4Addr],
) -> Vec<ipnet::Ipv4Net> {
    let mut out = BTreeSet::new();
    for r in ranges {
        let r = r.trim();
        match r.parse::<ipnet::IpNet>() {
            Ok(ipnet::IpNet::V4(n)) => {
                out.insert(n.trunc());
            }
            Ok(ipnet::IpNet::V6(_)) => {}
            // Logged here, once per change of the service (the memo computes a service again
            // only when it changed), rather than on every sync.
            Err(e) => tracing::warn!(
                service,
                range = r,
                error = %e,
                "invalid loadBalancerSourceRanges entry ignored (as kube-proxy ignores it)"
            ),
        }
    }
    if out.iter().any(|n| node_ips.iter().any(|ip| n.contains(ip))) {
        out.extend(
            lb_ips
                .iter()
                .map(|ip| ipnet::Ipv4Net::new(*ip, 32).expect("/32 is valid")),
        );
    }
    out.into_iter().collect()
}

/// The frontends of one service (or why it is skipped), added to `desired`.
fn add_service(
    svc: &Service,
    by_service: &HashMap<(&str, &str), Vec<&EndpointSlice>>,
    node: &NodeFacts,
    opts: Options,
    desired: &mut Desired,
) {
    let ns = svc.metadata.namespace.as_deref().unwrap_or("default");
    let name = svc.metadata.name.as_deref().unwrap_or_default();
    let id = key(ns, name);
    if let Some(why) = skip_reason(svc) {
        desired.skipped.push((id, why));
        return;
    }
    let Some(spec) = svc.spec.as_ref() else {
        return;
    };
    let kind = spec.type_.as_deref().unwrap_or("ClusterIP");
    let external_local = spec.external_traffic_policy.as_deref() == Some("Local");
    let internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");
    let affinity_timeout_s = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .map_or(DEFAULT_AFFINITY_TIMEOUT, |t| t.clamp(1, 86400) as u32)
    });
    let publish_not_ready = spec.publish_not_ready_addresses.unwrap_or(false);
    let addrs = Addresses::of(svc, spec);
    // An IPv6 or dual-stack service's IPv6 addresses (cluster IPs, externalIPs, ingress IPs):
    // petrel's datapath is IPv4 only so far. Each is refused by name, said once per change of
    // the service (the memo computes it again only then) and counted with the unsupported ports;
    // the service's IPv4 addresses are served.
    for a in &addrs.ipv6 {
        tracing::warn!(service = %id, address = %a, "service address not programmed: petrel's datapath serves IPv4 only (IPv6 services are not supported yet)");
        desired.unsupported.push((id.clone(), format!("IPv6 {a}")));
    }
    let lb_source_ranges = if kind == "LoadBalancer" {
        source_ranges(
            &id,
            spec.load_balancer_source_ranges.as_deref().unwrap_or(&[]),
            &addrs.load_balancer,
            &node.ips,
        )
    } else {
        Vec::new()
    };
    // kube-proxy (apiservice.NeedsHealthCheck): LoadBalancer services with eTP Local only.
    let health_check_port = spec
        .health_check_node_port
        .filter(|_| kind == "LoadBalancer" && external_local)
        .and_then(|p| u16::try_from(p).ok().filter(|p| *p != 0));
    let mut local_ready = BTreeSet::new();
    let topology_request = topology::request(svc);
    // kube-proxy's UsesClusterEndpoints: hints narrow the cluster-wide endpoints only; a service
    // whose every frontend has a Local policy never consults them.
    let externally_accessible = matches!(kind, "NodePort" | "LoadBalancer")
        || !addrs.external.is_empty()
        || !addrs.load_balancer.is_empty();
    let uses_cluster = !internal_local || (externally_accessible && !external_local);
    let mut fallbacks = BTreeSet::new();
    for port in spec.ports.iter().flatten() {
        let Some(proto) = proto(port.protocol.as_deref()) else {
            // SCTP: the TC path would have to rewrite ports under SCTP's CRC32c checksum (over
            // the whole packet), which petrel's programs do not do; socket-LB alone would serve
            // the node and pods but not traffic from outside. Refused as a whole, said once per
            // change of the service (the memo computes it again only then), counted; the
            // service's other ports are programmed.
            let what = format!(
                "{}/{}",
                port.port,
                port.protocol.as_deref().unwrap_or_default()
            );
            tracing::warn!(service = %id, port = %what, "service port not programmed: petrel serves TCP and UDP only (SCTP is not supported)");
            desired.unsupported.push((id.clone(), what));
            continue;
        };
        let port_name = port.name.clone().unwrap_or_default();
        let hinted = endpoints_for(
            by_service
                .get(&(ns, name))
                .map(Vec::as_slice)
                .unwrap_or(&[]),
            &port_name,
            proto,
            node,
        );
        let endpoints: Vec<EndpointPlan> = hinted.iter().map(|(e, _)| *e).collect();
        let decision = if uses_cluster {
            // kube-proxy counts every endpoint of a publishNotReadyAddresses service as ready.
            let ready_hints = hinted
                .iter()
                .filter(|(e, _)| e.ready || publish_not_ready)
                .map(|(_, h)| *h);
            topology::decide(&topology_request, node.zone.as_deref(), ready_hints)
        } else {
            Decision::All
        };
        if let Decision::Fallback(why) = &decision {
            fallbacks.insert(why.clone());
        }
        let zone_only = decision == Decision::Zone;
        // The endpoints a frontend's plan carries. Hints narrow the cluster-wide set only:
        // a Local policy's set (a ClusterIP with iTP Local; the outside scope of an eTP Local
        // frontend) keeps every local endpoint, whatever zone it is hinted for, as kube-proxy's
        // localEndpoints do. The datapath derives both scopes of an eTP Local frontend from
        // one list, so its in-cluster scope (pods short-circuiting to every endpoint) also
        // keeps local endpoints hinted for another zone: the one place petrel is wider than
        // kube-proxy, and only by endpoints on this very node.
        let for_frontend = |kind: FrontendKind| -> Vec<EndpointPlan> {
            let keep_local = match kind {
                FrontendKind::ClusterIp if internal_local => return endpoints.clone(),
                FrontendKind::ClusterIp => false,
                _ => external_local,
            };
            if !zone_only {
                return endpoints.clone();
            }
            hinted
                .iter()
                .filter(|(e, h)| *h == Hint::ThisZone || (keep_local && e.local))
                .map(|(e, _)| *e)
                .collect()
        };
        local_ready.extend(
            endpoints
                .iter()
                .filter(|e| e.local && e.ready)
                .map(|e| *e.backend.addr.ip()),
        );
        let plan = |kind| FrontendPlan {
            service: id.clone(),
            port_name: port_name.clone(),
            kind,
            external_local,
            internal_local: internal_local && kind == FrontendKind::ClusterIp,
            affinity_timeout_s,
            maglev: opts.maglev && kind != FrontendKind::ClusterIp,
            publish_not_ready,
            source_ranges: if kind == FrontendKind::LoadBalancer {
                lb_source_ranges.clone()
            } else {
                Vec::new()
            },
            endpoints: for_frontend(kind),
        };
        // Never wrapped to 16 bits: a port out of range is left out, and said (once per change
        // of the service: the memo computes it again only then).
        let Some(svc_port) = u16::try_from(port.port).ok().filter(|p| *p != 0) else {
            tracing::warn!(service = %id, port = port.port, "service port out of range 1-65535: not programmed");
            continue;
        };
        let mut put = |ips: &[Ipv4Addr], port: u16, kind| {
            for ip in ips {
                let fe = Frontend {
                    addr: *ip,
                    port,
                    proto,
                };
                desired.frontends.insert(fe, plan(kind));
            }
        };
        put(&addrs.cluster, svc_port, FrontendKind::ClusterIp);
        if matches!(kind, "NodePort" | "LoadBalancer") {
            match port.node_port.filter(|p| *p != 0).map(u16::try_from) {
                Some(Ok(np)) => put(node.node_port_ips(), np, FrontendKind::NodePort),
                Some(Err(_)) => tracing::warn!(
                    service = %id,
                    node_port = port.node_port,
                    "nodePort out of range 1-65535: not programmed"
                ),
                None => {}
            }
        }
        put(&addrs.external, svc_port, FrontendKind::ExternalIp);
        if kind == "LoadBalancer" {
            put(&addrs.load_balancer, svc_port, FrontendKind::LoadBalancer);
        }
    }
    if !fallbacks.is_empty() {
        let reasons: Vec<String> = fallbacks.iter().map(ToString::to_string).collect();
        // Logged here, once per change of the service or of this node (the memo computes a
        // service again only then), rather than on every sync.
        tracing::warn!(
            service = %id,
            reason = reasons.join("; "),
            "topology-aware routing requested but not applied: using every endpoint"
        );
        desired
            .topology_fallbacks
            .extend(fallbacks.into_iter().map(|f| (id.clone(), f)));
    }
    if let Some(port) = health_check_port {
        let svc = ServiceRef {
            namespace: ns.to_string(),
            name: name.to_string(),
        };
        let hc = HealthCheck {
            port,
            local_endpoints: local_ready.len(),
        };
        desired.health_checks.insert(svc, hc);
    }
}

/// (namespace, service name) an EndpointSlice belongs to.
pub(crate) fn owner(s: &EndpointSlice) -> Option<(&str, &str)> {
    let svc = s.metadata.labels.as_ref()?.get(LABEL_SERVICE_NAME)?;
    Some((s.metadata.namespace.as_deref().unwrap_or("default"), svc))
}

/// The endpoints of one service port: the slice port with the same name and protocol gives the
/// target port (named target ports are resolved there, by the EndpointSlice controller). Each
/// with its zone hint relative to this node's zone.
fn endpoints_for(
    slices: &[&EndpointSlice],
    port_name: &str,
    proto: Proto,
    node: &NodeFacts,
) -> Vec<(EndpointPlan, Hint)> {
    let mut out = BTreeMap::new();
    for slice in slices {
        let target = slice.ports.iter().flatten().find(|p| {
            p.name.as_deref().unwrap_or_default() == port_name
                && self::proto(p.protocol.as_deref()) == Some(proto)
        });
        let Some(target) = target.and_then(|p| p.port) else {
            continue;
        };
        let Some(target) = u16::try_from(target).ok().filter(|p| *p != 0) else {
            tracing::warn!(
                slice = slice.metadata.name.as_deref().unwrap_or_default(),
                port = target,
                "EndpointSlice port out of range 1-65535: its endpoints are not used"
            );
            continue;
        };
        for ep in &slice.endpoints {
            let c = ep.conditions.as_ref();
            // EndpointSlice v1: ready unset means ready; serving unset means ready.
            let ready = c.and_then(|c| c.ready).unwrap_or(true);
            let serving = c.and_then(|c| c.serving).unwrap_or(ready);
            let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
            let local = ep.node_name.as_deref() == Some(node.name.as_str());
            let hint = topology::hint(ep, node.zone.as_deref());
            for addr in ep.addresses.iter().filter_map(|a| ipv4(a)) {
                let backend = BackendKey {
                    addr: SocketAddrV4::new(addr, target),
                    proto,
                };
                // The same address in two slices (during a move): keep the first.
                let plan = EndpointPlan {
                    backend,
                    local,
                    ready,
                    serving,
                    terminating,
                };
                out.entry(backend).or_insert((plan, hint));
            }
        }
    }
    out.into_values().collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use k8s_openapi::{
        api::{
            core::v1::{ServicePort, ServiceSpec},
            discovery::v1::{Endpoint, EndpointConditions, EndpointPort},
        },
        apimachinery::pkg::apis::meta::v1::ObjectMeta,
    };

    use super::*;

    fn svc(name: &str, spec: ServiceSpec) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            spec: Some(spec),
            ..Default::default()
        }
    }

    fn port(name: &str, port: i32, proto: &str) -> ServicePort {
        ServicePort {
            name: Some(name.into()),
            port,
            protocol: Some(proto.into()),
            ..Default::default()
        }
    }

    fn slice(
        svc: &str,
        ports: &[(&str, i32, &str)],
        eps: &[(&str, Option<&str>, Option<bool>)],
    ) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                name: Some(format!("{svc}-x")),
                namespace: Some("default".into()),
                labels: Some([(LABEL_SERVICE_NAME.to_string(), svc.to_string())].into()),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: eps
                .iter()
                .map(|(a, node, ready)| Endpoint {
                    addresses: vec![a.to_string()],
                    node_name: node.map(str::to_string),
                    conditions: Some(EndpointConditions {
                        ready: *ready,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
            ports: Some(
                ports
                    .iter()
                    .map(|(n, p, pr)| EndpointPort {
                        name: Some(n.to_string()),
                        port: Some(*p),
                        protocol: Some(pr.to_string()),
                        ..Default::default()
                    })
                    .collect(),
            ),
        }
    }

    fn node() -> NodeFacts {
        NodeFacts {
            name: "n1".into(),
            ips: vec![Ipv4Addr::new(192, 0, 2, 1)],
            zone: None,
            node_port_ips: None,
        }
    }

    #[test]
    fn memo_gives_what_compute_gives_through_changes() {
        let eps = |last: u8| -> Vec<(String, Option<&'static str>, Option<bool>)> {
            (0..3)
                .map(|i| (format!("10.244.1.{}", last + i), Some("n1"), Some(true)))
                .collect()
        };
        let mk_slice = |name: &str, last: u8| {
            let e = eps(last);
            let e: Vec<(&str, Option<&str>, Option<bool>)> =
                e.iter().map(|(a, n, r)| (a.as_str(), *n, *r)).collect();
            Arc::new(slice(name, &[("http", 8080, "TCP")], &e))
        };
        let mk_svc = |i: u8, port_no: i32| {
            Arc::new(svc(
                &format!("s{i}"),
                ServiceSpec {
                    cluster_ip: Some(format!("10.96.0.{i}")),
                    ports: Some(vec![port("http", port_no, "TCP")]),
                    ..Default::default()
                },
            ))
        };
        let mut services: Vec<Arc<Service>> = (1..=20).map(|i| mk_svc(i, 80)).collect();
        let mut slices: Vec<Arc<EndpointSlice>> =
            (1..=20).map(|i| mk_slice(&format!("s{i}"), 10)).collect();
        let mut memo = Memo::default();
        let mut n = node();
        let check = |memo: &mut Memo,
                     services: &[Arc<Service>],
                     slices: &[Arc<EndpointSlice>],
                     n: &NodeFacts| {
            let full = compute(services, slices, n, Options::default());
            assert_eq!(memo.compute(services, slices, n, Options::default()), full);
        };
        check(&mut memo, &services, &slices, &n);
        // One slice replaced (a new object, as a watch event brings).
        slices[3] = mk_slice("s4", 50);
        check(&mut memo, &services, &slices, &n);
        // One service's port changed, one removed, one slice added for another.
        services[5] = mk_svc(6, 81);
        services.remove(7);
        slices.push(mk_slice("s10", 90));
        check(&mut memo, &services, &slices, &n);
        // The node's name changes which endpoints are local: everything is computed again.
        n.name = "n2".into();
        check(&mut memo, &services, &slices, &n);
        assert_eq!(memo.len(), services.len());
    }

    /// Not a test of correctness: how long one computation over 10,000 services x 10 endpoints
    /// takes (`cargo test --release -p petrel compute_time -- --ignored --nocapture`).
    #[test]
    #[ignore = "a measurement; run by hand"]
    fn compute_time_at_10k_services() {
        let eps: Vec<(String, Option<&str>, Option<bool>)> = (0..10)
            .map(|i| (format!("10.244.1.{}", i + 2), Some("n1"), Some(true)))
            .collect();
        let eps: Vec<(&str, Option<&str>, Option<bool>)> =
            eps.iter().map(|(a, n, r)| (a.as_str(), *n, *r)).collect();
        let mut services = Vec::new();
        let mut slices = Vec::new();
        for i in 0..10_000u32 {
            let name = format!("svc-{i}");
            let vip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 100, 0, 0)) + i);
            services.push(svc(
                &name,
                ServiceSpec {
                    cluster_ip: Some(vip.to_string()),
                    ports: Some(vec![port("http", 80, "TCP")]),
                    ..Default::default()
                },
            ));
            slices.push(slice(&name, &[("http", 8080, "TCP")], &eps));
        }
        for _ in 0..3 {
            let t = std::time::Instant::now();
            let d = compute(&services, &slices, &node(), Options::default());
            println!(
                "compute: {} frontends in {:?}",
                d.frontends.len(),
                t.elapsed()
            );
        }
    }

    #[test]
    fn out_of_range_ports_are_left_out_never_wrapped() {
        let mut np = port("http", 70000, "TCP");
        np.node_port = Some(99999);
        let mut ok = port("ok", 443, "TCP");
        ok.node_port = Some(-1);
        let s = svc(
            "web",
            ServiceSpec {
                type_: Some("NodePort".into()),
                cluster_ip: Some("10.96.0.10".into()),
                ports: Some(vec![np, port("neg", -1, "TCP"), ok]),
                ..Default::default()
            },
        );
        let sl = slice(
            "web",
            &[("ok", 70000, "TCP")],
            &[("10.244.1.5", Some("n1"), Some(true))],
        );
        let d = compute(&[s], &[sl], &node(), Options::default());
        let ports: Vec<u16> = d.frontends.keys().map(|f| f.port).collect();
        // 70000 would wrap to 4464, -1 to 65535, 99999 to 34463: none of them appears.
        assert_eq!(ports, [443], "{:?}", d.frontends.keys());
        let fe = d.frontends.values().next().expect("443");
        assert!(fe.endpoints.is_empty(), "target port 70000 is not used");
    }

    #[test]
    fn a_frontend_two_services_ask_for_stays_with_the_older() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
        let mk = |name: &str, port_no: i32, created: &str| {
            let mut s = svc(
                name,
                ServiceSpec {
                    cluster_ip: Some("10.96.0.10".into()),
                    ports: Some(vec![port("http", port_no, "TCP")]),
                    ..Default::default()
                },
            );
            s.metadata.creation_timestamp = Some(Time(created.parse().expect("time")));
            Arc::new(s)
        };
        let old = mk("old", 80, "2020-01-01T00:00:00Z");
        let new = mk("new", 80, "2021-01-01T00:00:00Z");
        let fe = Frontend {
            addr: Ipv4Addr::new(10, 96, 0, 10),
            port: 80,
            proto: Proto::Tcp,
        };
        for order in [
            vec![old.clone(), new.clone()],
            vec![new.clone(), old.clone()],
        ] {
            let d = compute(&order, &[] as &[EndpointSlice], &node(), Options::default());
            assert_eq!(d.frontends[&fe].service, "default/old");
            assert_eq!(
                d.conflicts,
                [(fe, "default/old".to_string(), "default/new".to_string())]
            );
            let mut memo = Memo::default();
            assert_eq!(memo.compute(&order, &[], &node(), Options::default()), d);
        }
    }

    #[test]
    fn cluster_ip_ports_resolve_target_ports_by_name() {
        let s = svc(
            "web",
            ServiceSpec {
                cluster_ip: Some("10.96.0.10".into()),
                ports: Some(vec![port("http", 80, "TCP"), port("dns", 53, "UDP")]),
                ..Default::default()
            },
        );
        let sl = slice(
            "web",
            &[("http", 8080, "TCP"), ("dns", 5353, "UDP")],
            &[("10.244.1.5", Some("n1"), Some(true))],
        );
        let d = compute(&[s], &[sl], &node(), Options::default());
        assert_eq!(d.frontends.len(), 2);
        let http = &d.frontends[&Frontend {
            addr: Ipv4Addr::new(10, 96, 0, 10),
            port: 80,
            proto: Proto::Tcp,
        }];
        assert_eq!(
            http.endpoints[0].backend.addr.to_string(),
            "10.244.1.5:8080"
        );
        assert!(http.endpoints[0].local);
        let dns = &d.frontends[&Frontend {
            addr: Ipv4Addr::new(10, 96, 0, 10),
            port: 53,
            proto: Proto::Udp,
        }];
        assert_eq!(dns.endpoints[0].backend.addr.to_string(), "10.244.1.5:5353");
    }

    #[test]
    fn nodeport_external_and_lb_frontends() {
        let mut s = svc(
            "web",
            ServiceSpec {
                type_: Some("LoadBalancer".into()),
                cluster_ip: Some("10.96.0.11".into()),
                external_ips: Some(vec!["198.51.100.7".into()]),
                external_traffic_policy: Some("Local".into()),
                ports: Some(vec![ServicePort {
                    node_port: Some(30080),
                    ..port("http", 80, "TCP")
                }]),
                ..Default::default()
            },
        );
        s.status = Some(k8s_openapi::api::core::v1::ServiceStatus {
            load_balancer: Some(k8s_openapi::api::core::v1::LoadBalancerStatus {
                ingress: Some(vec![k8s_openapi::api::core::v1::LoadBalancerIngress {
                    ip: Some("203.0.113.9".into()),
                    ..Default::default()
                }]),
            }),
            ..Default::default()
        });
        let d = compute(
            &[s],
            &[] as &[EndpointSlice],
            &node(),
            Options { maglev: true },
        );
        let kinds: Vec<(String, FrontendKind, bool)> = d
            .frontends
            .iter()
            .map(|(f, p)| (f.to_string(), p.kind, p.maglev))
            .collect();
        assert_eq!(
            kinds,
            [
                (
                    "10.96.0.11:80/TCP".to_string(),
                    FrontendKind::ClusterIp,
                    false
                ),
                (
                    "192.0.2.1:30080/TCP".to_string(),
                    FrontendKind::NodePort,
                    true
                ),
                (
                    "198.51.100.7:80/TCP".to_string(),
                    FrontendKind::ExternalIp,
                    true
                ),
                (
                    "203.0.113.9:80/TCP".to_string(),
                    FrontendKind::LoadBalancer,
                    true
                ),
            ]
        );
        assert!(d.frontends.values().all(|p| p.external_local));
    }

    fn lb_with_ranges(kind: &str, ranges: &[&str]) -> Service {
        let mut s = svc(
            "fw",
            ServiceSpec {
                type_: Some(kind.into()),
                cluster_ip: Some("10.96.0.12".into()),
                external_ips: Some(vec!["198.51.100.8".into()]),
                load_balancer_source_ranges: Some(ranges.iter().map(|r| r.to_string()).collect()),
                ports: Some(vec![ServicePort {
                    node_port: Some(30081),
                    ..port("http", 80, "TCP")
                }]),
                ..Default::default()
            },
        );
        s.status = Some(k8s_openapi::api::core::v1::ServiceStatus {
            load_balancer: Some(k8s_openapi::api::core::v1::LoadBalancerStatus {
                ingress: Some(vec![k8s_openapi::api::core::v1::LoadBalancerIngress {
                    ip: Some("203.0.113.10".into()),
                    ..Default::default()
                }]),
            }),
            ..Default::default()
        });
        s
    }

    fn ranges_by_kind(d: &Desired) -> Vec<(FrontendKind, Vec<String>)> {
        d.frontends
            .values()
            .map(|p| {
                let r = p.source_ranges.iter().map(|n| n.to_string()).collect();
                (p.kind, r)
            })
            .collect()
    }

    #[test]
    fn load_balancer_source_ranges_apply_to_the_lb_ip_only() {
        let s = lb_with_ranges(
            "LoadBalancer",
            &[" 192.168.0.0/16", "10.1.2.3/8", "2001:db8::/32"],
        );
        let d = compute(&[s], &[] as &[EndpointSlice], &node(), Options::default());
        // Trimmed, host bits cleared, the IPv6 range left to IPv6; NodePort, externalIP and
        // ClusterIP unfiltered.
        assert_eq!(
            ranges_by_kind(&d),
            [
                (FrontendKind::ClusterIp, vec![]),
                (FrontendKind::NodePort, vec![]),
                (FrontendKind::ExternalIp, vec![]),
                (
                    FrontendKind::LoadBalancer,
                    vec!["10.0.0.0/8".to_string(), "192.168.0.0/16".to_string()]
                ),
            ]
        );
    }

    #[test]
    fn a_range_holding_the_node_allows_the_lb_ip_as_source() {
        // node() is 192.0.2.1: kube-proxy's allowFromNode adds the LB IP itself.
        let s = lb_with_ranges("LoadBalancer", &["192.0.2.0/24"]);
        let d = compute(&[s], &[] as &[EndpointSlice], &node(), Options::default());
        let lb = d
            .frontends
            .values()
            .find(|p| p.kind == FrontendKind::LoadBalancer);
        let got: Vec<String> = lb
            .unwrap()
            .source_ranges
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(got, ["192.0.2.0/24", "203.0.113.10/32"]);
    }

    #[test]
    fn invalid_or_only_ipv6_source_ranges_filter_nothing() {
        for ranges in [&["not-a-cidr"][..], &["2001:db8::/32"], &[]] {
            let s = lb_with_ranges("LoadBalancer", ranges);
            let d = compute(&[s], &[] as &[EndpointSlice], &node(), Options::default());
            assert!(
                d.frontends.values().all(|p| p.source_ranges.is_empty()),
                "{ranges:?}"
            );
        }
        // An invalid entry beside valid ones is dropped alone.
        let s = lb_with_ranges("LoadBalancer", &["10.0.0.0/33", "10.0.0.0/8"]);
        let d = compute(&[s], &[] as &[EndpointSlice], &node(), Options::default());
        let lb = d
            .frontends
            .values()
            .find(|p| p.kind == FrontendKind::LoadBalancer);
        assert_eq!(lb.unwrap().source_ranges.len(), 1);
    }

    #[test]
    fn source_ranges_of_a_non_load_balancer_service_are_ignored() {
        let s = lb_with_ranges("NodePort", &["10.0.0.0/8"]);
        let d = compute(&[s], &[] as &[EndpointSlice], &node(), Options::default());
        assert!(d.frontends.values().all(|p| p.source_ranges.is_empty()));
    }

    #[test]
    fn health_check_node_ports_for_local_load_balancers_only() {
        let lb = |name: &str, kind: &str, etp: &str| {
            svc(
                name,
                ServiceSpec {
                    type_: Some(kind.into()),
                    cluster_ip: Some("10.96.0.20".into()),
                    external_traffic_policy: Some(etp.into()),
                    health_check_node_port: Some(32000),
                    ports: Some(vec![
                        ServicePort {
                            node_port: Some(30080),
                            ..port("http", 80, "TCP")
                        },
                        ServicePort {
                            node_port: Some(30443),
                            ..port("https", 443, "TCP")
                        },
                    ]),
                    ..Default::default()
                },
            )
        };
        let mut sl = slice(
            "web",
            &[("http", 8080, "TCP"), ("https", 8443, "TCP")],
            &[
                // Counted once for both ports.
                ("10.244.1.5", Some("n1"), Some(true)),
                ("10.244.1.6", Some("n1"), Some(false)),
                ("10.244.2.5", Some("n2"), Some(true)),
                ("10.244.1.7", Some("n1"), Some(false)),
            ],
        );
        // Serving but terminating: used for traffic while nothing is ready, but not healthy.
        sl.endpoints[3].conditions = Some(EndpointConditions {
            ready: Some(false),
            serving: Some(true),
            terminating: Some(true),
        });
        let services = [
            lb("web", "LoadBalancer", "Local"),
            lb("cluster", "LoadBalancer", "Cluster"),
            lb("np", "NodePort", "Local"),
        ];
        let d = compute(&services, &[sl], &node(), Options::default());
        let web = ServiceRef {
            namespace: "default".into(),
            name: "web".into(),
        };
        assert_eq!(
            d.health_checks,
            BTreeMap::from([(
                web,
                HealthCheck {
                    port: 32000,
                    local_endpoints: 1
                }
            )])
        );
        // The memo carries them too.
        let services: Vec<Arc<Service>> = services.into_iter().map(Arc::new).collect();
        let mut memo = Memo::default();
        let again = memo.compute(&services, &[], &node(), Options::default());
        assert_eq!(again.health_checks.len(), 1);
        assert_eq!(
            again
                .health_checks
                .values()
                .next()
                .map(|h| h.local_endpoints),
            Some(0)
        );
    }

    /// The scopes the datapath builds from a frontend plan, as backend addresses.
    fn scopes(p: &FrontendPlan) -> (Vec<String>, Option<Vec<String>>) {
        let endpoints: Vec<petrel_datapath::model::Endpoint> = p
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| petrel_datapath::model::Endpoint {
                id: i as u32,
                local: e.local,
                ready: e.ready,
                serving: e.serving,
                terminating: e.terminating,
            })
            .collect();
        let mut entry = petrel_datapath::model::ServiceEntry::new(
            Frontend {
                addr: Ipv4Addr::UNSPECIFIED,
                port: 1,
                proto: Proto::Tcp,
            },
            1,
            endpoints,
        );
        entry.external = p.external();
        entry.external_local = p.external_local;
        entry.internal_local = p.internal_local;
        let name = |ids: Vec<u32>| -> Vec<String> {
            ids.iter()
                .map(|i| p.endpoints[*i as usize].backend.addr.ip().to_string())
                .collect()
        };
        let s = entry.scopes();
        (name(s.external), s.internal.map(name))
    }

    #[test]
    fn internal_traffic_policy_applies_to_the_cluster_ip_only() {
        let lb = |etp: &str| {
            let mut s = svc(
                "web",
                ServiceSpec {
                    type_: Some("LoadBalancer".into()),
                    cluster_ip: Some("10.96.0.30".into()),
                    external_ips: Some(vec!["198.51.100.30".into()]),
                    internal_traffic_policy: Some("Local".into()),
                    external_traffic_policy: Some(etp.into()),
                    ports: Some(vec![ServicePort {
                        node_port: Some(30030),
                        ..port("http", 80, "TCP")
                    }]),
                    ..Default::default()
                },
            );
            s.status = Some(k8s_openapi::api::core::v1::ServiceStatus {
                load_balancer: Some(k8s_openapi::api::core::v1::LoadBalancerStatus {
                    ingress: Some(vec![k8s_openapi::api::core::v1::LoadBalancerIngress {
                        ip: Some("203.0.113.30".into()),
                        ..Default::default()
                    }]),
                }),
                ..Default::default()
            });
            s
        };
        let sl = slice(
            "web",
            &[("http", 8080, "TCP")],
            &[
                ("10.244.1.5", Some("n1"), Some(true)),
                ("10.244.2.5", Some("n2"), Some(true)),
            ],
        );
        let local = || vec!["10.244.1.5".to_string()];
        let all = || vec!["10.244.1.5".to_string(), "10.244.2.5".to_string()];
        for etp in ["Cluster", "Local"] {
            let d = compute(
                &[lb(etp)],
                std::slice::from_ref(&sl),
                &node(),
                Options::default(),
            );
            assert_eq!(d.frontends.len(), 4, "ClusterIP, NodePort, externalIP, LB");
            for p in d.frontends.values() {
                assert_eq!(
                    p.internal_local,
                    p.kind == FrontendKind::ClusterIp,
                    "{etp} {p:?}"
                );
                let (external, internal) = scopes(p);
                match (p.kind, etp) {
                    // The ClusterIP: local endpoints only, from pods and the node alike.
                    (FrontendKind::ClusterIp, _) => {
                        assert_eq!(internal.unwrap_or_else(|| external.clone()), local())
                    }
                    // eTP Cluster: one set for everyone, every endpoint.
                    (_, "Cluster") => assert_eq!((external, internal), (all(), None)),
                    // eTP Local: outside clients get the local endpoints, pods and the node
                    // every endpoint (short-circuit), not the iTP Local set.
                    _ => assert_eq!((external, internal), (local(), Some(all()))),
                }
            }
        }
        // netctl names say what applies to each frontend.
        let d = compute(&[lb("Cluster")], &[sl], &node(), Options::default());
        let names = d.frontend_names();
        assert_eq!(names["10.96.0.30:80/TCP"].internal_traffic_policy, "Local");
        assert_eq!(
            names["192.0.2.1:30030/TCP"].internal_traffic_policy,
            "Cluster"
        );
    }

    fn load_balancer(name: &str, ingress: &[(&str, Option<&str>)]) -> Service {
        use k8s_openapi::api::core::v1::{LoadBalancerIngress, LoadBalancerStatus, ServiceStatus};
        let mut s = svc(
            name,
            ServiceSpec {
                type_: Some("LoadBalancer".into()),
                cluster_ip: Some("10.96.0.40".into()),
                ports: Some(vec![ServicePort {
                    node_port: Some(30040),
                    ..port("http", 80, "TCP")
                }]),
                ..Default::default()
            },
        );
        s.status = Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(
                    ingress
                        .iter()
                        .map(|(ip, mode)| LoadBalancerIngress {
                            ip: Some(ip.to_string()),
                            ip_mode: mode.map(str::to_string),
                            ..Default::default()
                        })
                        .collect(),
                ),
            }),
            ..Default::default()
        });
        s
    }

    fn frontends_of(d: &Desired, kind: FrontendKind) -> Vec<String> {
        d.frontends
            .iter()
            .filter(|(_, p)| p.kind == kind)
            .map(|(fe, _)| fe.to_string())
            .collect()
    }

    /// kube-proxy (serviceport.go): an ingress IP whose ipMode is Proxy is not a frontend; VIP
    /// and no ipMode are. The v1.20 test API server drops ipMode, hence this unit test.
    #[test]
    fn a_proxy_mode_ingress_ip_is_not_programmed() {
        let s = load_balancer(
            "lb",
            &[
                ("203.0.113.1", None),
                ("203.0.113.2", Some("VIP")),
                ("203.0.113.3", Some("Proxy")),
            ],
        );
        let d = compute(&[s], &[] as &[EndpointSlice], &node(), Options::default());
        assert_eq!(
            frontends_of(&d, FrontendKind::LoadBalancer),
            ["203.0.113.1:80/TCP", "203.0.113.2:80/TCP"]
        );
        // The NodePort the proxying load balancer sends to stays.
        assert_eq!(
            frontends_of(&d, FrontendKind::NodePort),
            ["192.0.2.1:30040/TCP"]
        );
        let all_proxy = load_balancer("lb", &[("203.0.113.3", Some("Proxy"))]);
        let d = compute(
            &[all_proxy],
            &[] as &[EndpointSlice],
            &node(),
            Options::default(),
        );
        assert!(frontends_of(&d, FrontendKind::LoadBalancer).is_empty());
    }

    #[test]
    fn node_ports_are_served_on_the_node_port_addresses() {
        let s = load_balancer("lb", &[]);
        let mut n = node();
        n.node_port_ips = Some(vec![
            Ipv4Addr::new(10, 98, 0, 11),
            Ipv4Addr::new(10, 244, 1, 1),
        ]);
        let d = compute(
            std::slice::from_ref(&s),
            &[] as &[EndpointSlice],
            &n,
            Options::default(),
        );
        assert_eq!(
            frontends_of(&d, FrontendKind::NodePort),
            ["10.98.0.11:30040/TCP", "10.244.1.1:30040/TCP"]
        );
        // No address matches --nodeport-addresses: no NodePort frontend (as kube-proxy).
        n.node_port_ips = Some(Vec::new());
        let d = compute(&[s], &[] as &[EndpointSlice], &n, Options::default());
        assert!(frontends_of(&d, FrontendKind::NodePort).is_empty());
        assert_eq!(frontends_of(&d, FrontendKind::ClusterIp).len(), 1);
    }

    #[test]
    fn ipv6_addresses_are_refused_by_name_and_the_ipv4_ones_served() {
        let dual = svc(
            "dual",
            ServiceSpec {
                cluster_ip: Some("10.96.0.43".into()),
                cluster_ips: Some(vec!["10.96.0.43".into(), "fd00::43".into()]),
                external_ips: Some(vec!["2001:db8::7".into()]),
                ip_families: Some(vec!["IPv4".into(), "IPv6".into()]),
                ports: Some(vec![port("web", 80, "TCP")]),
                ..Default::default()
            },
        );
        let v6 = svc(
            "v6",
            ServiceSpec {
                cluster_ip: Some("fd00::44".into()),
                cluster_ips: Some(vec!["fd00::44".into()]),
                ip_families: Some(vec!["IPv6".into()]),
                ports: Some(vec![port("web", 80, "TCP")]),
                ..Default::default()
            },
        );
        let d = compute(
            &[dual, v6],
            &[] as &[EndpointSlice],
            &node(),
            Options::default(),
        );
        assert_eq!(
            frontends_of(&d, FrontendKind::ClusterIp),
            ["10.96.0.43:80/TCP"]
        );
        assert_eq!(
            d.unsupported,
            [
                ("default/dual".to_string(), "IPv6 2001:db8::7".to_string()),
                ("default/dual".to_string(), "IPv6 fd00::43".to_string()),
                ("default/v6".to_string(), "IPv6 fd00::44".to_string())
            ]
        );
    }

    #[test]
    fn an_sctp_port_is_refused_and_the_others_are_programmed() {
        let s = svc(
            "mixed",
            ServiceSpec {
                cluster_ip: Some("10.96.0.41".into()),
                ports: Some(vec![port("sig", 3868, "SCTP"), port("web", 80, "TCP")]),
                ..Default::default()
            },
        );
        let only = svc(
            "sctp",
            ServiceSpec {
                cluster_ip: Some("10.96.0.42".into()),
                ports: Some(vec![port("sig", 3868, "SCTP")]),
                ..Default::default()
            },
        );
        let d = compute(
            &[s, only],
            &[] as &[EndpointSlice],
            &node(),
            Options::default(),
        );
        assert_eq!(
            frontends_of(&d, FrontendKind::ClusterIp),
            ["10.96.0.41:80/TCP"]
        );
        assert_eq!(
            d.unsupported,
            [
                ("default/mixed".to_string(), "3868/SCTP".to_string()),
                ("default/sctp".to_string(), "3868/SCTP".to_string())
            ]
        );
        assert!(d.skipped.is_empty(), "refused ports, not skipped services");
    }

    #[test]
    fn skips_headless_externalname_and_other_proxies() {
        let headless = svc(
            "h",
            ServiceSpec {
                cluster_ip: Some("None".into()),
                ports: Some(vec![port("a", 80, "TCP")]),
                ..Default::default()
            },
        );
        let ext = svc(
            "e",
            ServiceSpec {
                type_: Some("ExternalName".into()),
                ..Default::default()
            },
        );
        let mut other = svc(
            "o",
            ServiceSpec {
                cluster_ip: Some("10.96.0.12".into()),
                ports: Some(vec![port("a", 80, "TCP")]),
                ..Default::default()
            },
        );
        other.metadata.labels = Some([(LABEL_PROXY_NAME.to_string(), "foo".to_string())].into());
        let d = compute(
            &[headless, ext, other],
            &[] as &[EndpointSlice],
            &node(),
            Options::default(),
        );
        assert!(d.frontends.is_empty());
        assert_eq!(d.skipped.len(), 3);
    }

    #[test]
    fn conditions_and_locality() {
        let s = svc(
            "web",
            ServiceSpec {
                cluster_ip: Some("10.96.0.13".into()),
                ports: Some(vec![port("", 80, "TCP")]),
                session_affinity: Some("ClientIP".into()),
                ..Default::default()
            },
        );
        let sl = slice(
            "web",
            &[("", 8080, "TCP")],
            &[
                ("10.244.1.5", Some("n1"), None),
                ("10.244.2.5", Some("n2"), Some(false)),
            ],
        );
        let d = compute(&[s], &[sl], &node(), Options::default());
        let p = d.frontends.values().next().expect("frontend");
        assert_eq!(p.affinity_timeout_s, Some(DEFAULT_AFFINITY_TIMEOUT));
        assert_eq!(p.endpoints.len(), 2);
        assert!(
            p.endpoints[0].ready && p.endpoints[0].local,
            "ready unset means ready"
        );
        assert!(!p.endpoints[1].ready && !p.endpoints[1].local);
    }

    #[test]
    fn slices_of_other_services_namespaces_or_families_are_ignored() {
        let s = svc(
            "web",
            ServiceSpec {
                cluster_ip: Some("10.96.0.14".into()),
                ports: Some(vec![port("", 80, "TCP")]),
                ..Default::default()
            },
        );
        let mut other_ns = slice("web", &[("", 8080, "TCP")], &[("10.244.1.5", None, None)]);
        other_ns.metadata.namespace = Some("other".into());
        let mut v6 = slice("web", &[("", 8080, "TCP")], &[("fd00::5", None, None)]);
        v6.address_type = "IPv6".into();
        let wrong_port = slice(
            "web",
            &[("metrics", 9090, "TCP")],
            &[("10.244.1.6", None, None)],
        );
        let d = compute(
            &[s],
            &[other_ns, v6, wrong_port],
            &node(),
            Options::default(),
        );
        assert!(
            d.frontends
                .values()
                .next()
                .expect("frontend")
                .endpoints
                .is_empty()
        );
    }
}
