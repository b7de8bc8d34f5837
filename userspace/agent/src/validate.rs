//! The Kubernetes API server's own rules for the Service and EndpointSlice fields petrel uses
//! (k8s pkg/apis/core/validation ValidateService, pkg/apis/discovery/validation
//! ValidateEndpointSlice), and its allocators' rule for conflicts: a ClusterIP:port/protocol
//! or a nodePort belongs to one service, the one created first. Pure: the manifest source
//! calls it with each object's file; objects from an API server were checked by it already.
//!
//! Messages read as the API server writes them (`spec.ports[0].port: Invalid value: 70000:
//! must be between 1 and 65535, inclusive`), so an operator can compare them with
//! `kubectl apply --dry-run=server`.

use std::{collections::HashMap, net::IpAddr, ops::RangeInclusive};

use k8s_openapi::{
    api::{core::v1::Service, discovery::v1::EndpointSlice},
    apimachinery::pkg::util::intstr::IntOrString,
};

/// What the rules depend on.
#[derive(Clone, Debug)]
pub struct Rules {
    /// kube-apiserver's --service-node-port-range.
    pub node_ports: RangeInclusive<u16>,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            node_ports: 30000..=32767,
        }
    }
}

/// Why an object is refused: the label of `petrel_manifest_refused{reason}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// A field the API server would refuse.
    Invalid,
    /// Another object already has this namespace/name.
    DuplicateName,
    /// Another service already has this ClusterIP (or externalIP) with this port and protocol.
    DuplicatePort,
    /// Another service already has this nodePort.
    DuplicateNodePort,
}

impl Reason {
    pub const ALL: [Reason; 4] = [
        Reason::Invalid,
        Reason::DuplicateName,
        Reason::DuplicatePort,
        Reason::DuplicateNodePort,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Reason::Invalid => "invalid",
            Reason::DuplicateName => "duplicate_name",
            Reason::DuplicatePort => "duplicate_port",
            Reason::DuplicateNodePort => "duplicate_node_port",
        }
    }
}

/// One field error.
fn invalid(field: &str, value: impl std::fmt::Display, why: &str) -> String {
    format!("{field}: Invalid value: {value}: {why}")
}

const PORT_RANGE: &str = "must be between 1 and 65535, inclusive";

/// RFC 1123 label: at most 63 lowercase alphanumerics or '-', starting and ending alphanumeric.
pub fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// RFC 1035 label: an RFC 1123 label that starts with a letter (Service names).
pub fn is_dns1035_label(s: &str) -> bool {
    is_dns1123_label(s) && s.as_bytes()[0].is_ascii_lowercase()
}

/// RFC 1123 subdomain: dot-separated labels, at most 253 characters (EndpointSlice names).
pub fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

/// IANA service name (a named targetPort): at most 15 of [-a-z0-9], at least one letter, no
/// leading, trailing or doubled '-'.
fn is_iana_svc_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && s.bytes().any(|c| c.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

fn port_ok(p: i32) -> bool {
    (1..=65535).contains(&p)
}

fn meta_errors(
    kind: &str,
    name: Option<&str>,
    namespace: Option<&str>,
    name_ok: fn(&str) -> bool,
    rule: &str,
    errs: &mut Vec<String>,
) {
    match name {
        None | Some("") => errs.push("metadata.name: Required value: name is required".into()),
        Some(n) if !name_ok(n) => errs.push(invalid(
            "metadata.name",
            format!("{n:?}"),
            &format!("a {kind} name must be {rule}"),
        )),
        Some(_) => {}
    }
    if let Some(ns) = namespace.filter(|ns| !is_dns1123_label(ns)) {
        errs.push(invalid(
            "metadata.namespace",
            format!("{ns:?}"),
            "must be a lowercase RFC 1123 label (at most 63 of a-z, 0-9 and '-', starting and ending alphanumeric)",
        ));
    }
}

fn check_ip(field: &str, s: &str, errs: &mut Vec<String>) {
    if s.parse::<IpAddr>().is_err() {
        errs.push(invalid(
            field,
            format!("{s:?}"),
            "must be a valid IP address",
        ));
    }
}

/// Every field error of `svc` the API server would report, in field order. Empty: valid.
pub fn service(svc: &Service, rules: &Rules) -> Vec<String> {
    let mut errs = Vec::new();
    let m = &svc.metadata;
    meta_errors(
        "Service",
        m.name.as_deref(),
        m.namespace.as_deref(),
        is_dns1035_label,
        "a lowercase RFC 1035 label (at most 63 of a-z, 0-9 and '-', starting with a letter and ending alphanumeric)",
        &mut errs,
    );
    let Some(spec) = &svc.spec else {
        errs.push("spec: Required value".into());
        return errs;
    };
    let kind = spec.type_.as_deref().unwrap_or("ClusterIP");
    if !matches!(
        kind,
        "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName"
    ) {
        errs.push(format!(
            "spec.type: Unsupported value: {kind:?}: supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\""
        ));
    }
    let headless = spec.cluster_ip.as_deref() == Some("None");
    if let Some(ip) = spec
        .cluster_ip
        .as_deref()
        .filter(|ip| !ip.is_empty() && *ip != "None")
    {
        check_ip("spec.clusterIP", ip, &mut errs);
    }
    for (i, ip) in spec.cluster_ips.iter().flatten().enumerate() {
        if ip != "None" {
            check_ip(&format!("spec.clusterIPs[{i}]"), ip, &mut errs);
        }
    }
    if let (Some(first), Some(ip)) = (
        spec.cluster_ips.as_ref().and_then(|v| v.first()),
        spec.cluster_ip.as_deref().filter(|ip| !ip.is_empty()),
    ) {
        if first != ip {
            errs.push(invalid(
                "spec.clusterIPs[0]",
                format!("{first:?}"),
                "must match `spec.clusterIP`",
            ));
        }
    }
    for (i, ip) in spec.external_ips.iter().flatten().enumerate() {
        let field = format!("spec.externalIPs[{i}]");
        match ip.parse::<IpAddr>() {
            Err(_) => errs.push(invalid(
                &field,
                format!("{ip:?}"),
                "must be a valid IP address",
            )),
            Ok(a) if a.is_unspecified() || a.is_loopback() || a.is_multicast() || link_local(a) => {
                errs.push(invalid(
                    &field,
                    format!("{ip:?}"),
                    "may not be unspecified, loopback, link-local or multicast",
                ));
            }
            Ok(_) => {}
        }
    }
    let ports = spec.ports.as_deref().unwrap_or(&[]);
    if ports.is_empty() && !headless && kind != "ExternalName" {
        errs.push("spec.ports: Required value".into());
    }
    let mut names = HashMap::new();
    let mut seen = HashMap::new();
    for (i, p) in ports.iter().enumerate() {
        let f = |field: &str| format!("spec.ports[{i}].{field}");
        match p.name.as_deref().unwrap_or("") {
            "" if ports.len() > 1 => errs.push(format!("{}: Required value", f("name"))),
            "" => {}
            n if !is_dns1123_label(n) => errs.push(invalid(
                &f("name"),
                format!("{n:?}"),
                "must be a lowercase RFC 1123 label",
            )),
            n => {
                if let Some(j) = names.insert(n.to_string(), i) {
                    errs.push(format!(
                        "{}: Duplicate value: {n:?} (also spec.ports[{j}])",
                        f("name")
                    ));
                }
            }
        }
        if !port_ok(p.port) {
            errs.push(invalid(&f("port"), p.port, PORT_RANGE));
        }
        let proto = p.protocol.as_deref().unwrap_or("TCP");
        if !matches!(proto, "TCP" | "UDP" | "SCTP") {
            errs.push(format!(
                "{}: Unsupported value: {proto:?}: supported values: \"SCTP\", \"TCP\", \"UDP\"",
                f("protocol")
            ));
        }
        if let Some(j) = seen.insert((p.port, proto), i) {
            errs.push(format!(
                "spec.ports[{i}]: Duplicate value: {}/{proto} (also spec.ports[{j}])",
                p.port
            ));
        }
        match &p.target_port {
            Some(IntOrString::Int(t)) if *t != 0 && !port_ok(*t) => {
                errs.push(invalid(&f("targetPort"), t, PORT_RANGE));
            }
            Some(IntOrString::String(s)) if !is_iana_svc_name(s) => errs.push(invalid(
                &f("targetPort"),
                format!("{s:?}"),
                "must be a port number or an IANA service name (at most 15 of a-z, 0-9 and '-', with a letter)",
            )),
            _ => {}
        }
        match p.node_port {
            None | Some(0) => {}
            Some(np) if !matches!(kind, "NodePort" | "LoadBalancer") => errs.push(invalid(
                &f("nodePort"),
                np,
                &format!("may not be used when `type` is {kind:?}"),
            )),
            Some(np) if !u16::try_from(np).is_ok_and(|np| rules.node_ports.contains(&np)) => {
                errs.push(invalid(
                    &f("nodePort"),
                    np,
                    &format!(
                        "provided port is not in the valid range. The range of valid ports is {}-{}",
                        rules.node_ports.start(),
                        rules.node_ports.end()
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    if let Some(p) = spec
        .health_check_node_port
        .filter(|p| *p != 0 && !port_ok(*p))
    {
        errs.push(invalid("spec.healthCheckNodePort", p, PORT_RANGE));
    }
    for (field, v) in [
        (
            "spec.externalTrafficPolicy",
            spec.external_traffic_policy.as_deref(),
        ),
        (
            "spec.internalTrafficPolicy",
            spec.internal_traffic_policy.as_deref(),
        ),
    ] {
        if let Some(v) = v.filter(|v| !matches!(*v, "Cluster" | "Local")) {
            errs.push(format!(
                "{field}: Unsupported value: {v:?}: supported values: \"Cluster\", \"Local\""
            ));
        }
    }
    if let Some(a) = spec
        .session_affinity
        .as_deref()
        .filter(|a| !matches!(*a, "None" | "ClientIP"))
    {
        errs.push(format!(
            "spec.sessionAffinity: Unsupported value: {a:?}: supported values: \"ClientIP\", \"None\""
        ));
    }
    let timeout = spec
        .session_affinity_config
        .as_ref()
        .and_then(|c| c.client_ip.as_ref())
        .and_then(|c| c.timeout_seconds);
    if let Some(t) = timeout.filter(|t| !(1..=86400).contains(t)) {
        errs.push(invalid(
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
            t,
            "must be greater than 0 and less than 86400",
        ));
    }
    for (i, r) in spec
        .load_balancer_source_ranges
        .iter()
        .flatten()
        .enumerate()
    {
        if r.trim().parse::<ipnet::IpNet>().is_err() {
            errs.push(invalid(
                &format!("spec.loadBalancerSourceRanges[{i}]"),
                format!("{r:?}"),
                "must be a list of IP ranges. For example, 10.240.0.0/24,10.250.0.0/24",
            ));
        }
    }
    errs
}

fn link_local(a: IpAddr) -> bool {
    match a {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// Every field error of `slice` the API server would report (and ports petrel cannot program).
pub fn endpoint_slice(slice: &EndpointSlice) -> Vec<String> {
    let mut errs = Vec::new();
    let m = &slice.metadata;
    meta_errors(
        "EndpointSlice",
        m.name.as_deref(),
        m.namespace.as_deref(),
        is_dns1123_subdomain,
        "a lowercase RFC 1123 subdomain",
        &mut errs,
    );
    let at = slice.address_type.as_str();
    if !matches!(at, "IPv4" | "IPv6" | "FQDN") {
        errs.push(format!(
            "addressType: Unsupported value: {at:?}: supported values: \"FQDN\", \"IPv4\", \"IPv6\""
        ));
    }
    for (i, ep) in slice.endpoints.iter().enumerate() {
        if ep.addresses.is_empty() || ep.addresses.len() > 100 {
            errs.push(invalid(
                &format!("endpoints[{i}].addresses"),
                ep.addresses.len(),
                "must have at least 1 and at most 100 addresses",
            ));
        }
        for (j, a) in ep.addresses.iter().enumerate() {
            let field = format!("endpoints[{i}].addresses[{j}]");
            let ok = match at {
                "IPv4" => a.parse::<std::net::Ipv4Addr>().is_ok(),
                "IPv6" => a.parse::<std::net::Ipv6Addr>().is_ok(),
                _ => true,
            };
            if !ok {
                errs.push(invalid(
                    &field,
                    format!("{a:?}"),
                    &format!("must be a valid {at} address"),
                ));
            }
        }
    }
    let mut names = HashMap::new();
    for (i, p) in slice.ports.iter().flatten().enumerate() {
        let f = |field: &str| format!("ports[{i}].{field}");
        let name = p.name.as_deref().unwrap_or("");
        if !name.is_empty() && !is_dns1123_label(name) {
            errs.push(invalid(
                &f("name"),
                format!("{name:?}"),
                "must be a lowercase RFC 1123 label",
            ));
        }
        if let Some(j) = names.insert(name.to_string(), i) {
            errs.push(format!(
                "{}: Duplicate value: {name:?} (also ports[{j}])",
                f("name")
            ));
        }
        if let Some(port) = p.port.filter(|p| !port_ok(*p)) {
            errs.push(invalid(&f("port"), port, PORT_RANGE));
        }
        let proto = p.protocol.as_deref().unwrap_or("TCP");
        if !matches!(proto, "TCP" | "UDP" | "SCTP") {
            errs.push(format!(
                "{}: Unsupported value: {proto:?}: supported values: \"SCTP\", \"TCP\", \"UDP\"",
                f("protocol")
            ));
        }
    }
    errs
}

/// One object as it entered: its identity and where it came from.
#[derive(Clone, Debug)]
pub struct Origin {
    /// "Service default/web".
    pub object: String,
    /// "web.yaml document 2".
    pub place: String,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.object, self.place)
    }
}

/// An object refused, and why.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Refusal {
    /// Where the refused object came from ("web.yaml document 2").
    pub place: String,
    /// "Service default/web".
    pub object: String,
    pub reason: Reason,
    /// Every field error, or the conflict naming the object that keeps what this one asked for.
    pub message: String,
}

/// The age order of objects: creationTimestamp first (older first), then those without one in
/// the order given (file name, then document), as the API server would have created them.
fn age_order<T>(objects: &[(Origin, T)], stamp: impl Fn(&T) -> Option<String>) -> Vec<usize> {
    let mut order: Vec<usize> = (0..objects.len()).collect();
    // RFC 3339 timestamps in UTC ("2024-01-02T03:04:05Z") sort as strings.
    order.sort_by_key(|&i| (stamp(&objects[i].1).is_none(), stamp(&objects[i].1), i));
    order
}

/// Keeps the services that are valid and conflict with no older one; refuses the others. A
/// conflict refuses the whole newer object (the API server would not have created it): a
/// duplicate namespace/name, a ClusterIP or externalIP with a port and protocol another service
/// has, a nodePort another service has (the node port allocator takes a port for every
/// protocol). Returns what is kept, in the order given.
pub fn admit_services<T: std::borrow::Borrow<Service>>(
    services: Vec<(Origin, T)>,
    rules: &Rules,
    refused: &mut Vec<Refusal>,
) -> Vec<T> {
    let order = age_order(&services, |s| {
        s.borrow()
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.to_string())
    });
    let mut keep = vec![false; services.len()];
    let mut names: HashMap<(String, String), usize> = HashMap::new();
    let mut frontends: HashMap<(IpAddr, i32, String), usize> = HashMap::new();
    let mut node_ports: HashMap<i32, usize> = HashMap::new();
    for i in order {
        let (origin, svc) = &services[i];
        let svc: &Service = svc.borrow();
        let refuse = |reason, message: String, refused: &mut Vec<Refusal>| {
            refused.push(Refusal {
                place: origin.place.clone(),
                object: origin.object.clone(),
                reason,
                message,
            });
        };
        let errs = service(svc, rules);
        if !errs.is_empty() {
            refuse(Reason::Invalid, errs.join("; "), refused);
            continue;
        }
        let ns = svc
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = svc.metadata.name.clone().unwrap_or_default();
        if let Some(&j) = names.get(&(ns.clone(), name.clone())) {
            refuse(
                Reason::DuplicateName,
                format!("{ns}/{name} already exists: {} keeps it", services[j].0),
                refused,
            );
            continue;
        }
        let spec = svc.spec.as_ref().expect("validated: has a spec");
        let mut ips: Vec<IpAddr> = Vec::new();
        match &spec.cluster_ips {
            Some(v) if !v.is_empty() => {
                ips.extend(v.iter().filter_map(|s| s.parse::<IpAddr>().ok()))
            }
            _ => ips.extend(
                spec.cluster_ip
                    .as_deref()
                    .and_then(|s| s.parse::<IpAddr>().ok()),
            ),
        }
        ips.extend(
            spec.external_ips
                .iter()
                .flatten()
                .filter_map(|s| s.parse::<IpAddr>().ok()),
        );
        ips.sort();
        ips.dedup();
        let ports = spec.ports.as_deref().unwrap_or(&[]);
        let mut clash = None;
        'find: for p in ports {
            let proto = p.protocol.clone().unwrap_or_else(|| "TCP".into());
            for ip in &ips {
                if let Some(&j) = frontends.get(&(*ip, p.port, proto.clone())) {
                    clash = Some((
                        Reason::DuplicatePort,
                        format!("{ip}:{}/{proto} belongs to {}", p.port, services[j].0),
                    ));
                    break 'find;
                }
            }
            if let Some(np) = p.node_port.filter(|np| *np != 0) {
                if let Some(&j) = node_ports.get(&np).filter(|&&j| j != i) {
                    clash = Some((
                        Reason::DuplicateNodePort,
                        format!("nodePort {np} belongs to {}", services[j].0),
                    ));
                    break 'find;
                }
            }
        }
        if let Some((reason, why)) = clash {
            refuse(
                reason,
                format!("{why}, created first; it keeps the port"),
                refused,
            );
            continue;
        }
        names.insert((ns, name), i);
        for p in ports {
            let proto = p.protocol.clone().unwrap_or_else(|| "TCP".into());
            for ip in &ips {
                frontends.insert((*ip, p.port, proto.clone()), i);
            }
            if let Some(np) = p.node_port.filter(|np| *np != 0) {
                node_ports.insert(np, i);
            }
        }
        keep[i] = true;
    }
    services
        .into_iter()
        .zip(keep)
        .filter_map(|((_, s), k)| k.then_some(s))
        .collect()
}

/// Keeps the EndpointSlices that are valid and whose namespace/name is not taken by an older
/// one; refuses the others.
pub fn admit_slices<T: std::borrow::Borrow<EndpointSlice>>(
    slices: Vec<(Origin, T)>,
    refused: &mut Vec<Refusal>,
) -> Vec<T> {
    let order = age_order(&slices, |s| {
        s.borrow()
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.to_string())
    });
    let mut keep = vec![false; slices.len()];
    let mut names: HashMap<(String, String), usize> = HashMap::new();
    for i in order {
        let (origin, s) = &slices[i];
        let s: &EndpointSlice = s.borrow();
        let mut refuse = |reason, message: String| {
            refused.push(Refusal {
                place: origin.place.clone(),
                object: origin.object.clone(),
                reason,
                message,
            });
        };
        let errs = endpoint_slice(s);
        if !errs.is_empty() {
            refuse(Reason::Invalid, errs.join("; "));
            continue;
        }
        let ns = s
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = s.metadata.name.clone().unwrap_or_default();
        if let Some(&j) = names.get(&(ns.clone(), name.clone())) {
            refuse(
                Reason::DuplicateName,
                format!("{ns}/{name} already exists: {} keeps it", slices[j].0),
            );
            continue;
        }
        names.insert((ns, name), i);
        keep[i] = true;
    }
    slices
        .into_iter()
        .zip(keep)
        .filter_map(|((_, s), k)| k.then_some(s))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(yaml: &str) -> Service {
        serde_yaml::from_str(yaml).expect("a Service")
    }

    fn origin(name: &str, place: &str) -> Origin {
        Origin {
            object: format!("Service default/{name}"),
            place: place.to_string(),
        }
    }

    const WEB: &str = "metadata: {name: web, namespace: default}\nspec: {clusterIP: 10.96.0.10, ports: [{name: http, port: 80, protocol: TCP}]}";

    #[test]
    fn field_rules_are_the_api_servers() {
        let rules = Rules::default();
        assert_eq!(service(&svc(WEB), &rules), Vec::<String>::new());
        let cases = [
            (
                "metadata: {name: web}\nspec: {ports: [{port: 70000}]}",
                "spec.ports[0].port: Invalid value: 70000: must be between 1 and 65535, inclusive",
            ),
            (
                "metadata: {name: web}\nspec: {ports: [{port: 0}]}",
                "spec.ports[0].port: Invalid value: 0",
            ),
            (
                "metadata: {name: web}\nspec: {ports: [{port: -1}]}",
                "spec.ports[0].port: Invalid value: -1",
            ),
            (
                "metadata: {name: web}\nspec: {type: NodePort, ports: [{port: 80, nodePort: 99999}]}",
                "spec.ports[0].nodePort: Invalid value: 99999: provided port is not in the valid range. The range of valid ports is 30000-32767",
            ),
            (
                "metadata: {name: web}\nspec: {type: NodePort, ports: [{port: 80, nodePort: 8080}]}",
                "nodePort: Invalid value: 8080",
            ),
            (
                "metadata: {name: web}\nspec: {ports: [{port: 80, nodePort: 30080}]}",
                "may not be used when `type` is \"ClusterIP\"",
            ),
            (
                "metadata: {name: web}\nspec: {ports: [{port: 80, protocol: ICMP}]}",
                "spec.ports[0].protocol: Unsupported value: \"ICMP\"",
            ),
            (
                "metadata: {name: web}\nspec: {clusterIP: banana, ports: [{port: 80}]}",
                "spec.clusterIP: Invalid value: \"banana\": must be a valid IP address",
            ),
            (
                "metadata: {name: web}\nspec: {externalIPs: [300.1.1.1], ports: [{port: 80}]}",
                "spec.externalIPs[0]: Invalid value: \"300.1.1.1\"",
            ),
            (
                "metadata: {name: web}\nspec: {externalIPs: [127.0.0.1], ports: [{port: 80}]}",
                "may not be unspecified, loopback",
            ),
            (
                "metadata: {}\nspec: {ports: [{port: 80}]}",
                "metadata.name: Required value",
            ),
            (
                "metadata: {name: Web}\nspec: {ports: [{port: 80}]}",
                "metadata.name: Invalid value: \"Web\"",
            ),
            (
                "metadata: {name: 1web}\nspec: {ports: [{port: 80}]}",
                "RFC 1035",
            ),
            (
                "metadata: {name: web, namespace: My_NS}\nspec: {ports: [{port: 80}]}",
                "metadata.namespace: Invalid value: \"My_NS\"",
            ),
            (
                "metadata: {name: web}\nspec: {ports: [{port: 80}, {port: 81}]}",
                "spec.ports[0].name: Required value",
            ),
            (
                "metadata: {name: web}\nspec: {ports: [{name: a, port: 80}, {name: b, port: 80}]}",
                "spec.ports[1]: Duplicate value: 80/TCP",
            ),
            (
                "metadata: {name: web}\nspec: {ports: [{port: 80, targetPort: 70000}]}",
                "spec.ports[0].targetPort: Invalid value: 70000",
            ),
            (
                "metadata: {name: web}\nspec: {ports: []}",
                "spec.ports: Required value",
            ),
            (
                "metadata: {name: web}\nspec: {type: Magic, ports: [{port: 80}]}",
                "spec.type: Unsupported value: \"Magic\"",
            ),
            (
                "metadata: {name: web}\nspec: {sessionAffinity: ClientIP, sessionAffinityConfig: {clientIP: {timeoutSeconds: 0}}, ports: [{port: 80}]}",
                "timeoutSeconds: Invalid value: 0",
            ),
            (
                "metadata: {name: web}\nspec: {externalTrafficPolicy: Nearby, ports: [{port: 80}]}",
                "spec.externalTrafficPolicy: Unsupported value",
            ),
        ];
        for (yaml, want) in cases {
            let errs = service(&svc(yaml), &rules).join("; ");
            assert!(errs.contains(want), "{yaml}\n  got: {errs}\n want: {want}");
        }
        // Headless and ExternalName services need no ports; the agent's range applies.
        assert!(service(&svc("metadata: {name: h}\nspec: {clusterIP: None}"), &rules).is_empty());
        let wide = Rules {
            node_ports: 8000..=9000,
        };
        let np = svc(
            "metadata: {name: web}\nspec: {type: NodePort, ports: [{port: 80, nodePort: 8080}]}",
        );
        assert!(service(&np, &wide).is_empty());
    }

    #[test]
    fn endpoint_slice_rules() {
        let slice = |yaml: &str| -> EndpointSlice { serde_yaml::from_str(yaml).expect("a slice") };
        let ok = slice(
            "metadata: {name: web-1.x}\naddressType: IPv4\nendpoints: [{addresses: [10.0.0.1]}]\nports: [{name: http, port: 8080}]",
        );
        assert!(endpoint_slice(&ok).is_empty());
        for (yaml, want) in [
            (
                "metadata: {name: w}\naddressType: IPv4\nendpoints: []\nports: [{port: 70000}]",
                "ports[0].port: Invalid value: 70000",
            ),
            (
                "metadata: {name: w}\naddressType: IPv4\nendpoints: [{addresses: [banana]}]",
                "endpoints[0].addresses[0]: Invalid value: \"banana\": must be a valid IPv4 address",
            ),
            (
                "metadata: {name: w}\naddressType: IPv5\nendpoints: []",
                "addressType: Unsupported value",
            ),
            (
                "metadata: {name: W}\naddressType: IPv4\nendpoints: []",
                "metadata.name: Invalid value",
            ),
            (
                "metadata: {name: w}\naddressType: IPv4\nendpoints: []\nports: [{port: 1, protocol: GRE}]",
                "ports[0].protocol: Unsupported value",
            ),
        ] {
            let errs = endpoint_slice(&slice(yaml)).join("; ");
            assert!(errs.contains(want), "{yaml}: {errs}");
        }
    }

    #[test]
    fn conflicts_name_both_objects_and_the_older_keeps_the_port() {
        let rules = Rules::default();
        let web = svc(WEB);
        // Same ClusterIP:port/proto, a later file: refused, naming web.
        let clash =
            svc("metadata: {name: clash}\nspec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}");
        // Same ClusterIP, another port: fine.
        let other_port =
            svc("metadata: {name: other}\nspec: {clusterIP: 10.96.0.10, ports: [{port: 443}]}");
        let dup_name =
            svc("metadata: {name: web}\nspec: {clusterIP: 10.96.0.11, ports: [{port: 80}]}");
        let mut refused = Vec::new();
        let kept = admit_services(
            vec![
                (origin("web", "a.yaml document 1"), web.clone()),
                (origin("clash", "b.yaml document 1"), clash.clone()),
                (origin("other", "b.yaml document 2"), other_port),
                (origin("web", "c.yaml document 1"), dup_name),
            ],
            &rules,
            &mut refused,
        );
        let names: Vec<_> = kept
            .iter()
            .map(|s| s.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["web", "other"]);
        assert_eq!(refused.len(), 2, "{refused:?}");
        assert_eq!(refused[0].reason, Reason::DuplicatePort);
        assert_eq!(refused[0].place, "b.yaml document 1");
        assert!(
            refused[0]
                .message
                .contains("10.96.0.10:80/TCP belongs to Service default/web (a.yaml document 1)"),
            "{}",
            refused[0].message
        );
        assert_eq!(refused[1].reason, Reason::DuplicateName);
        assert!(refused[1].message.contains(
            "default/web already exists: Service default/web (a.yaml document 1) keeps it"
        ));

        // creationTimestamp decides before file order: the older one, in the later file, keeps it.
        let stamped = |yaml: &str, t: &str| {
            let mut s = svc(yaml);
            s.metadata.creation_timestamp = Some(
                k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(t.parse().expect("time")),
            );
            s
        };
        let mut refused = Vec::new();
        let kept = admit_services(
            vec![
                (
                    origin("clash", "a.yaml document 1"),
                    stamped(
                        "metadata: {name: clash}\nspec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}",
                        "2021-01-01T00:00:00Z",
                    ),
                ),
                (
                    origin("web", "b.yaml document 1"),
                    stamped(WEB, "2020-01-01T00:00:00Z"),
                ),
            ],
            &rules,
            &mut refused,
        );
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].metadata.name.as_deref(), Some("web"));
        assert_eq!(refused[0].object, "Service default/clash");

        // nodePorts: one per port number across services, whatever the protocol.
        let np = |name: &str, proto: &str| {
            svc(&format!(
                "metadata: {{name: {name}}}\nspec: {{type: NodePort, ports: [{{port: 80, protocol: {proto}, nodePort: 30080}}]}}"
            ))
        };
        let mut refused = Vec::new();
        let kept = admit_services(
            vec![
                (origin("a", "a.yaml document 1"), np("a", "TCP")),
                (origin("b", "b.yaml document 1"), np("b", "UDP")),
            ],
            &rules,
            &mut refused,
        );
        assert_eq!(kept.len(), 1);
        assert_eq!(refused[0].reason, Reason::DuplicateNodePort);
        assert!(
            refused[0]
                .message
                .contains("nodePort 30080 belongs to Service default/a")
        );
        // One service may use one nodePort for TCP and UDP.
        let both = svc(
            "metadata: {name: dns}\nspec: {type: NodePort, ports: [{name: u, port: 53, protocol: UDP, nodePort: 30053}, {name: t, port: 53, protocol: TCP, nodePort: 30053}]}",
        );
        let mut refused = Vec::new();
        assert_eq!(
            admit_services(vec![(origin("dns", "d"), both)], &rules, &mut refused).len(),
            1
        );
        assert!(refused.is_empty(), "{refused:?}");
    }
}
