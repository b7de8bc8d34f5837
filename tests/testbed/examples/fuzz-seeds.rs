//! Writes the seed corpus of the fuzz targets (tests/fuzz): real inputs, made the way the tests
//! make them. `cargo run -p petrel-testbed --example fuzz-seeds -- tests/fuzz/corpus` rewrites
//! `<dir>/{cni_config,manifests,tc_packets}/` (each file named by what it is).
//!
//! - cni_config: the configs and environments of tests/e2e/tests/cni.rs (every version and verb,
//!   the bad-input table, GC attachments, a chained prevResult), the README's example and the
//!   entry the agent writes (pod CIDR from its file).
//! - manifests: the objects of petrel-testbed's builders as the agent tests write them, plus one
//!   manifest per Service feature the desired state handles.
//! - tc_packets: packets of packet::build / icmp_error / udp_fragments to the services of the
//!   fuzz target's fixture (the same as tests/e2e/tests/prog_test_run.rs), one selector byte first.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
};

use petrel_testbed::{
    objects,
    packet::{self, ACK, TCP, UDP},
};
use serde_json::{Value, json};

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(dir.join(name), bytes).unwrap_or_else(|e| panic!("writing {name}: {e}"));
}

fn fresh(root: &Path, target: &str) -> PathBuf {
    let dir = root.join(target);
    match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => panic!("clearing {dir:?}: {e}"),
        _ => {}
    }
    std::fs::create_dir_all(&dir).expect("corpus folder");
    dir
}

/// One cni_config input: environment lines, an empty line, stdin.
fn cni_input(env: &[(&str, &str)], stdin: &str) -> Vec<u8> {
    let mut out = String::new();
    for (k, v) in env {
        out.push_str(&format!("{k}={v}\n"));
    }
    out.push('\n');
    out.push_str(stdin);
    out.into_bytes()
}

fn cni_seeds(root: &Path) {
    let dir = fresh(root, "cni_config");
    let conf = |version: &str| {
        json!({
            "cniVersion": version,
            "name": "petrel",
            "type": "petrel-cni",
            "podCIDR": "10.250.0.0/24",
            "dataDir": "/var/lib/petrel/ipam",
            "mtu": 1400,
        })
    };
    let attach = |verb: &'static str| {
        vec![
            ("CNI_COMMAND", verb),
            ("CNI_CONTAINERID", "c0-1.1.0"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/run/netns/cp-1"),
            ("CNI_PATH", "/opt/cni/bin"),
        ]
    };
    for version in ["0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        for verb in ["ADD", "DEL", "CHECK"] {
            let name = format!("{}-{version}", verb.to_lowercase());
            write(
                &dir,
                &name,
                &cni_input(&attach(verb), &conf(version).to_string()),
            );
        }
    }
    let status = [("CNI_COMMAND", "STATUS")];
    write(
        &dir,
        "status",
        &cni_input(&status, &conf("1.1.0").to_string()),
    );
    let version = [("CNI_COMMAND", "VERSION")];
    write(
        &dir,
        "version",
        &cni_input(&version, r#"{"cniVersion":"1.0.0"}"#),
    );
    let mut gc = conf("1.1.0");
    gc["cni.dev/valid-attachments"] = json!([
        {"containerID": "g1", "ifname": "eth0"},
        {"containerID": "g2", "ifname": "net1"}
    ]);
    write(
        &dir,
        "gc",
        &cni_input(&[("CNI_COMMAND", "GC")], &gc.to_string()),
    );

    // A CHECK after a chain: prevResult as petrel-cni and portmap leave it.
    let mut check = conf("1.0.0");
    check["prevResult"] = json!({
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": "pet1a2b3c4d5e6f", "mac": "02:00:00:00:00:01", "mtu": 1400},
            {"name": "eth0", "mac": "02:00:00:00:00:02", "mtu": 1400, "sandbox": "/run/netns/cp-1"}
        ],
        "ips": [{"address": "10.250.0.2/32", "gateway": "10.250.0.1", "interface": 1}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.250.0.1"}],
        "dns": {}
    });
    write(
        &dir,
        "check-prev-result",
        &cni_input(&attach("CHECK"), &check.to_string()),
    );

    // The README's conflist entry, and the agent's (pod CIDR from the file it writes).
    let readme = r#"{"cniVersion":"1.1.0","name":"petrel","type":"petrel-cni","podCIDR":"10.244.1.0/24","dataDir":"/var/lib/petrel/ipam","mtu":1500}"#;
    write(&dir, "readme", &cni_input(&attach("ADD"), readme));
    let agent = json!({
        "cniVersion": "1.1.0",
        "name": "petrel",
        "type": "petrel-cni",
        "podCIDRFile": "/var/lib/petrel/cni/pod-cidr",
        "mtu": 1450,
    });
    let mut env = attach("ADD");
    env.push(("@podCIDRFile", "10.244.7.0/24"));
    write(&dir, "agent-conflist", &cni_input(&env, &agent.to_string()));
    let mut env = attach("DEL");
    env.push(("@podCIDRFile", ""));
    write(
        &dir,
        "agent-conflist-empty-file",
        &cni_input(&env, &agent.to_string()),
    );

    // The bad-input table of tests/e2e/tests/cni.rs.
    let good = conf("1.1.0");
    let with = |k: &str, v: Value| {
        let mut c = good.clone();
        c[k] = v;
        c.to_string()
    };
    type Row<'a> = (&'a str, Vec<(&'a str, &'a str)>, String);
    let bad: [Row; 12] = [
        ("bad-json", attach("ADD"), "{not json".into()),
        (
            "bad-version",
            attach("ADD"),
            with("cniVersion", json!("0.2.0")),
        ),
        (
            "bad-cidr-33",
            attach("ADD"),
            with("podCIDR", json!("10.1.2.0/33")),
        ),
        (
            "bad-cidr-banana",
            attach("ADD"),
            with("podCIDR", json!("banana")),
        ),
        ("bad-mtu-small", attach("ADD"), with("mtu", json!(10))),
        ("bad-mtu-big", attach("ADD"), with("mtu", json!(100000))),
        (
            "bad-ifname",
            vec![
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "b"),
                ("CNI_IFNAME", "an-ifname-too-long"),
                ("CNI_NETNS", "/run/netns/cp-1"),
            ],
            good.to_string(),
        ),
        (
            "bad-container-id",
            vec![
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "../../etc/passwd"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_NETNS", "/run/netns/cp-1"),
            ],
            good.to_string(),
        ),
        (
            "no-netns",
            vec![
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "b"),
                ("CNI_IFNAME", "eth0"),
            ],
            good.to_string(),
        ),
        (
            "no-command",
            vec![("CNI_CONTAINERID", "b")],
            good.to_string(),
        ),
        ("bad-name", attach("ADD"), with("name", json!("../x"))),
        (
            "host-bits",
            attach("ADD"),
            with("podCIDR", json!("10.1.0.5/24")),
        ),
    ];
    for (name, env, stdin) in bad {
        write(&dir, name, &cni_input(&env, &stdin));
    }
}

fn yaml(docs: &[(&str, &str, serde_yaml::Value)]) -> String {
    docs.iter()
        .map(|(api, kind, obj)| {
            let mut v = obj.clone();
            let m = v.as_mapping_mut().expect("an object is a mapping");
            m.insert("apiVersion".into(), (*api).into());
            m.insert("kind".into(), (*kind).into());
            serde_yaml::to_string(&v).expect("YAML")
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

fn manifest_seeds(root: &Path) {
    let dir = fresh(root, "manifests");
    let backends = |ips: &[[u8; 4]]| -> Vec<(Ipv4Addr, String)> {
        ips.iter()
            .map(|ip| (Ipv4Addr::from(*ip), "node-a".to_string()))
            .collect()
    };
    // As tests/e2e/tests/agent.rs writes them: a Service with a fixed ClusterIP and its slice.
    let mut web = objects::service("web", None);
    web.spec.as_mut().expect("spec").cluster_ip = Some("10.96.0.50".into());
    let svc = serde_yaml::to_value(&web).expect("yaml");
    let slice = serde_yaml::to_value(objects::slice(
        "web",
        &backends(&[[10, 244, 0, 3], [10, 244, 0, 4]]),
    ))
    .expect("yaml");
    let node = serde_yaml::to_value(objects::node(
        "node-a",
        Ipv4Addr::new(10, 99, 0, 1),
        "10.244.0.0/24".parse().expect("cidr"),
    ))
    .expect("yaml");
    let node_b = serde_yaml::to_value(objects::node(
        "node-b",
        Ipv4Addr::new(10, 99, 0, 2),
        "10.244.1.0/24".parse().expect("cidr"),
    ))
    .expect("yaml");
    write(
        &dir,
        "clusterip-and-slice.yaml",
        yaml(&[
            ("v1", "Service", svc.clone()),
            ("discovery.k8s.io/v1", "EndpointSlice", slice.clone()),
        ])
        .as_bytes(),
    );
    let mut np = objects::service("np", Some(30080));
    np.spec.as_mut().expect("spec").cluster_ip = Some("10.96.0.51".into());
    write(
        &dir,
        "nodeport-and-nodes.yaml",
        yaml(&[
            ("v1", "Node", node.clone()),
            ("v1", "Node", node_b),
            ("v1", "Service", serde_yaml::to_value(&np).expect("yaml")),
            (
                "discovery.k8s.io/v1",
                "EndpointSlice",
                serde_yaml::to_value(objects::slice("np", &backends(&[[10, 244, 1, 7]])))
                    .expect("yaml"),
            ),
        ])
        .as_bytes(),
    );

    // One feature of the desired state each (kube-proxy's rules), as an operator writes them.
    let hand: [(&str, &str); 9] = [
        (
            "loadbalancer-source-ranges.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: {name: lb, namespace: default}\nspec:\n  type: LoadBalancer\n  clusterIP: 10.96.0.60\n  externalTrafficPolicy: Local\n  healthCheckNodePort: 32000\n  loadBalancerSourceRanges: [10.99.0.0/24, ' 192.0.2.7/24 ', 'fd00::/64', bogus]\n  ports: [{name: http, port: 80, nodePort: 30090, protocol: TCP}]\nstatus:\n  loadBalancer: {ingress: [{ip: 203.0.113.10}]}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: lb-1, namespace: default, labels: {kubernetes.io/service-name: lb}}\naddressType: IPv4\nendpoints:\n- {addresses: [10.244.0.3], nodeName: node-a, conditions: {ready: true}}\n- {addresses: [10.244.1.3], nodeName: node-b, conditions: {ready: true}}\nports: [{name: http, port: 8080, protocol: TCP}]\n",
        ),
        (
            "external-ips-affinity.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: {name: ext, namespace: shop}\nspec:\n  clusterIP: 10.96.0.61\n  clusterIPs: [10.96.0.61, 'fd00::61']\n  externalIPs: [198.51.100.5]\n  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 600}}\n  ports:\n  - {name: dns, port: 53, protocol: UDP, targetPort: 5353}\n  - {name: dns-tcp, port: 53, protocol: TCP, targetPort: 5353}\n  - {name: sctp, port: 99, protocol: SCTP}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: ext-abc, namespace: shop, labels: {kubernetes.io/service-name: ext}}\naddressType: IPv4\nendpoints: [{addresses: [10.244.0.9, 10.244.0.10]}]\nports: [{name: dns, port: 5353, protocol: UDP}, {name: dns-tcp, port: 5353, protocol: TCP}]\n",
        ),
        (
            "terminating-endpoints.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: {name: drain, namespace: default}\nspec:\n  clusterIP: 10.96.0.62\n  internalTrafficPolicy: Local\n  publishNotReadyAddresses: false\n  ports: [{port: 80}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: drain-1, namespace: default, labels: {kubernetes.io/service-name: drain}}\naddressType: IPv4\nendpoints:\n- {addresses: [10.244.0.3], nodeName: node-a, conditions: {ready: false, serving: true, terminating: true}}\n- {addresses: [10.244.0.4], nodeName: node-a, conditions: {ready: false, serving: false, terminating: true}}\n- {addresses: [10.244.1.4], nodeName: node-b, conditions: {ready: true}}\nports: [{port: 8080}]\n",
        ),
        (
            "topology-hints.yaml",
            "apiVersion: v1\nkind: Node\nmetadata: {name: node-a, labels: {topology.kubernetes.io/zone: zone-a}}\nspec: {podCIDR: 10.244.0.0/24}\nstatus: {addresses: [{type: InternalIP, address: 10.99.0.1}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: zoned, namespace: default, annotations: {service.kubernetes.io/topology-mode: Auto}}\nspec:\n  clusterIP: 10.96.0.63\n  trafficDistribution: PreferClose\n  ports: [{port: 80}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: zoned-1, namespace: default, labels: {kubernetes.io/service-name: zoned}}\naddressType: IPv4\nendpoints:\n- {addresses: [10.244.0.3], zone: zone-a, hints: {forZones: [{name: zone-a}]}}\n- {addresses: [10.244.1.3], zone: zone-b, hints: {forZones: [{name: zone-b}]}}\nports: [{port: 8080}]\n",
        ),
        (
            "skipped-services.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: {name: headless, namespace: default}\nspec: {clusterIP: None, ports: [{port: 80}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: cname, namespace: default}\nspec: {type: ExternalName, externalName: example.org}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: other, namespace: default, labels: {service.kubernetes.io/service-proxy-name: foo}}\nspec: {clusterIP: 10.96.0.64, ports: [{port: 80}]}\n",
        ),
        (
            "readme-good.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\nspec:\n  clusterIP: 10.96.0.10\n  ports: [{name: http, port: 80, protocol: TCP}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-1, namespace: default, labels: {kubernetes.io/service-name: web}}\naddressType: IPv4\nendpoints: [{addresses: [10.244.0.3]}]\nports: [{name: http, port: 8080, protocol: TCP}]\n",
        ),
        (
            "bad-port.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec:\n  ports: [{port: eighty}]\n",
        ),
        (
            "unsupported-kind.yaml",
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n",
        ),
        (
            "anchors-and-empty-docs.yaml",
            "---\n# comment only\n---\napiVersion: v1\nkind: Service\nmetadata: &m {name: a, namespace: default}\nspec: &s {clusterIP: 10.96.0.65, ports: [{port: 80, targetPort: http}]}\n---\n",
        ),
    ];
    for (name, text) in hand {
        write(&dir, name, text.as_bytes());
    }
}

fn sa(ip: [u8; 4], port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(ip), port)
}

fn packet_seeds(root: &Path) {
    let dir = fresh(root, "tc_packets");
    // Selector: program in bits 0-1 (0 pod ingress, 1 external ingress, 2 pod egress,
    // 3 external egress), bit 2 = fix lengths and checksums after mutation.
    let seed = |name: &str, prog: u8, p: &[u8]| {
        let mut v = vec![prog | 4];
        v.extend_from_slice(p);
        write(&dir, name, &v);
    };
    let client = sa([10, 244, 0, 2], 40000);
    let ext_client = sa([10, 99, 0, 2], 41000);
    let node = [10, 99, 0, 1];
    let tcp = |s, d, f| packet::build(TCP, s, d, f, b"");
    let syn_vip = tcp(client, sa([10, 96, 0, 1], 80), packet::SYN);
    seed("pod-syn-clusterip", 0, &syn_vip);
    seed(
        "pod-synack-reply",
        0,
        &tcp(sa([10, 244, 0, 3], 8080), client, packet::SYN | ACK),
    );
    seed(
        "pod-udp-dns",
        0,
        &packet::build(UDP, client, sa([10, 96, 0, 2], 53), 0, b"query"),
    );
    seed(
        "pod-syn-no-endpoint",
        0,
        &tcp(client, sa([10, 96, 0, 3], 80), packet::SYN),
    );
    seed(
        "pod-hairpin",
        0,
        &tcp(
            sa([10, 244, 0, 3], 40002),
            sa([10, 96, 0, 1], 80),
            packet::SYN,
        ),
    );
    seed(
        "pod-masquerade-egress",
        0,
        &tcp(client, sa([192, 0, 2, 80], 443), packet::SYN),
    );
    seed(
        "pod-affinity",
        0,
        &tcp(client, sa([10, 96, 0, 7], 80), packet::SYN),
    );
    seed(
        "pod-lb-ip",
        0,
        &tcp(client, sa([203, 0, 113, 10], 80), packet::SYN),
    );
    seed(
        "ext-nodeport-local",
        1,
        &tcp(ext_client, sa(node, 30080), packet::SYN),
    );
    seed(
        "ext-nodeport-snat",
        1,
        &tcp(ext_client, sa(node, 30081), packet::SYN),
    );
    seed(
        "ext-maglev",
        1,
        &tcp(ext_client, sa([10, 96, 0, 6], 80), packet::SYN),
    );
    seed(
        "ext-lb-outside-range",
        1,
        &tcp(
            sa([192, 0, 2, 50], 41000),
            sa([203, 0, 113, 10], 80),
            packet::SYN,
        ),
    );
    seed(
        "ext-ack-midstream",
        1,
        &tcp(ext_client, sa(node, 30081), ACK),
    );
    let icmp = packet::icmp_error(
        3,
        4,
        Ipv4Addr::new(10, 244, 0, 3),
        Ipv4Addr::new(10, 244, 0, 2),
        &tcp(sa([10, 244, 0, 3], 8080), client, packet::SYN | ACK),
    );
    seed("pod-icmp-frag-needed", 0, &icmp);
    seed(
        "ext-icmp-unreachable",
        1,
        &packet::icmp_error(
            3,
            3,
            Ipv4Addr::new(10, 99, 0, 9),
            Ipv4Addr::from(node),
            &tcp(sa(node, 61000), sa([10, 244, 9, 9], 8080), packet::SYN),
        ),
    );
    for (i, f) in packet::udp_fragments(client, sa([10, 96, 0, 2], 53), &[7u8; 120], 68)
        .iter()
        .enumerate()
    {
        seed(&format!("pod-udp-fragment-{i}"), 0, f);
    }
    seed(
        "pod-egress-inbound",
        2,
        &tcp(
            sa([192, 0, 2, 9], 5000),
            sa([10, 244, 0, 3], 8080),
            packet::SYN,
        ),
    );
    seed(
        "ext-egress-host-backend-reply",
        3,
        &tcp(sa(node, 8080), ext_client, packet::SYN | ACK),
    );
    let mut arp = vec![0xffu8; 42];
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    seed("pod-arp", 0, &arp);
    let mut options = syn_vip.clone();
    // IHL 6: a 4-byte IPv4 option (NOP padding) before TCP.
    options.splice(34..34, [1u8, 1, 1, 0]);
    options[14] = 0x46;
    seed("pod-ip-options", 0, &options);
}

fn main() {
    let root = PathBuf::from(
        std::env::args()
            .nth(1)
            .expect("usage: fuzz-seeds <corpus dir>"),
    );
    cni_seeds(&root);
    manifest_seeds(&root);
    packet_seeds(&root);
}
