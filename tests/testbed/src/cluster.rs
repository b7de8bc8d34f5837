//! Several simulated nodes on one machine. Each node is a network namespace with its own
//! petrel-agent (own bpffs root, cgroup, state and CNI files); the nodes are joined by veths
//! through a "switch" namespace, which also runs the real kube-apiserver (so agents in the node
//! namespaces can reach it). Pods are made by the real petrel-cni from the conflist the node's
//! agent wrote. Everything is removed on drop, agents first.
//!
//! Build a `Cluster` from a thread inside the switch namespace (`NetNs::run`): the API server and
//! the test's kube client then live there.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::PathBuf,
};

use ipnet::Ipv4Net;
use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use kube::{Api, api::PostParams};

use crate::{
    BpffsRoot,
    agent::{Agent, eventually},
    apiserver::KubeApiServer,
    cgroup::Cgroup,
    cni,
    netns::{NetNs, veth},
    objects, pod, unique,
};

pub use crate::objects::POD_PORT;

/// Where the API server listens, in the switch namespace.
pub const API_ADDR: Ipv4Addr = Ipv4Addr::new(10, 98, 0, 1);
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";

/// How the nodes are connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fabric {
    /// One L2 segment (a bridge in the switch): nodes at 10.98.0.1N/24, the outside host at
    /// 10.98.0.200.
    L2,
    /// Every node on its own subnet (10.98.N.2/24), routed by the switch: no two nodes share an
    /// L2 segment. The outside host is at 10.98.200.2.
    Routed,
}

/// A pod made by petrel-cni, serving TCP and UDP on `POD_PORT` under its name.
pub struct SimPod {
    pub name: String,
    pub ip: Ipv4Addr,
    _server: pod::Server,
    pub ns: NetNs,
}

impl SimPod {
    pub fn addr(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.ip, POD_PORT)
    }

    /// One TCP request from this pod (a thread in its namespace, outside any socket-LB cgroup:
    /// the TC path translates service traffic).
    pub fn get(&self, to: SocketAddrV4) -> std::io::Result<pod::Reply> {
        self.ns.run(move || pod::tcp_get(to))
    }
}

pub struct SimNode {
    pub name: String,
    pub ip: Ipv4Addr,
    pub pod_cidr: Ipv4Net,
    agent: Option<Agent>,
    agent_args: Vec<String>,
    pub pods: Vec<SimPod>,
    pub ns: NetNs,
    pub cgroup: Cgroup,
    pub pins: BpffsRoot,
    files: tempfile::TempDir,
}

impl SimNode {
    pub fn conflist_path(&self) -> PathBuf {
        self.files.path().join("05-petrel.conflist")
    }

    pub fn agent(&mut self) -> &mut Agent {
        self.agent.as_mut().expect("agent running")
    }

    /// Starts (again) this node's agent with the arguments it was made with.
    pub fn start_agent(&mut self) {
        self.agent = Some(Agent::start(&self.ns.path(), &self.agent_args));
    }

    /// `ip -4 route show proto petrel` in the node: (destination, rest of the line).
    pub fn petrel_routes(&self) -> Vec<String> {
        let out = self.ns.exec(
            "ip",
            &[
                "-4",
                "route",
                "show",
                "proto",
                &petrel_agent::routing::kernel::ROUTE_PROTOCOL.to_string(),
            ],
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Adds a pod with the real petrel-cni, using the conflist the agent wrote (as a container
    /// runtime would: the first plugin, with the list's name and version). Only `dataDir` is
    /// overridden, since every simulated node shares this machine's disk.
    pub fn add_pod(&mut self, name: &str) -> &SimPod {
        let list: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(self.conflist_path()).expect("the agent wrote the conflist"),
        )
        .expect("conflist is JSON");
        let mut conf = list["plugins"][0].clone();
        conf["name"] = list["name"].clone();
        conf["cniVersion"] = list["cniVersion"].clone();
        conf["dataDir"] = self.files.path().join("ipam").display().to_string().into();
        let (ns, ip) = cni::add_pod(&self.ns, &conf.to_string(), name, "pq");
        assert!(
            self.pod_cidr.contains(&ip),
            "{name} got {ip}, outside {}",
            self.pod_cidr
        );
        let server = pod::Server::start(Some(ns.path()), name, SocketAddrV4::new(ip, POD_PORT));
        self.pods.push(SimPod {
            name: name.to_string(),
            ip,
            _server: server,
            ns,
        });
        self.pods.last().expect("just pushed")
    }
}

impl Drop for SimNode {
    fn drop(&mut self) {
        // The agent first (it would re-attach what the rest of the teardown removes), then the
        // pods; the node namespace, pins, cgroup and files go with the fields.
        self.agent = None;
        self.pods.clear();
    }
}

pub struct Cluster {
    pub fabric: Fabric,
    pub nodes: Vec<SimNode>,
    pub outside: NetNs,
    pub outside_ip: Ipv4Addr,
    pub client: kube::Client,
    pub api: KubeApiServer,
}

/// Node `i`'s (1-based) address, the switch's address on its link, and the prefix length.
fn node_addr(fabric: Fabric, i: u8) -> (Ipv4Addr, Ipv4Addr) {
    match fabric {
        Fabric::L2 => (Ipv4Addr::new(10, 98, 0, 10 + i), API_ADDR),
        Fabric::Routed => (Ipv4Addr::new(10, 98, i, 2), Ipv4Addr::new(10, 98, i, 1)),
    }
}

impl Cluster {
    /// Builds the fabric inside `switch` (the namespace the calling thread is in), starts the
    /// API server there, creates `n` Node objects (node-1.. with podCIDR 10.244.N.0/24) and
    /// starts one agent per node with `agent_args` added.
    pub async fn new(switch: &NetNs, fabric: Fabric, n: u8, agent_args: &[&str]) -> Cluster {
        switch.sysctl("net.ipv4.ip_forward", "1");
        match fabric {
            Fabric::L2 => {
                switch.exec("ip", &["link", "add", "br0", "type", "bridge"]);
                switch.exec("ip", &["link", "set", "br0", "up"]);
                switch.exec(
                    "ip",
                    &["addr", "add", &format!("{API_ADDR}/24"), "dev", "br0"],
                );
            }
            Fabric::Routed => {
                switch.exec(
                    "ip",
                    &["addr", "add", &format!("{API_ADDR}/32"), "dev", "lo"],
                );
            }
        }
        let api = KubeApiServer::start_on(API_ADDR).await;
        let client = api.client().await;

        // The outside host: a client that is not part of the cluster.
        let outside = NetNs::new(&unique("po"));
        veth(switch, "sw-out", &outside, "eth0");
        let outside_ip = match fabric {
            Fabric::L2 => {
                switch.exec("ip", &["link", "set", "sw-out", "master", "br0"]);
                Ipv4Addr::new(10, 98, 0, 200)
            }
            Fabric::Routed => {
                switch.exec("ip", &["addr", "add", "10.98.200.1/24", "dev", "sw-out"]);
                Ipv4Addr::new(10, 98, 200, 2)
            }
        };
        let outside_gw = match fabric {
            Fabric::L2 => API_ADDR,
            Fabric::Routed => Ipv4Addr::new(10, 98, 200, 1),
        };
        outside.host_on("eth0", outside_ip, outside_gw);

        let mut nodes = Vec::new();
        for i in 1..=n {
            let (ip, gw) = node_addr(fabric, i);
            let name = format!("node-{i}");
            let ns = NetNs::new(&unique("pn"));
            let sw_if = format!("sw-n{i}");
            veth(switch, &sw_if, &ns, "eth0");
            match fabric {
                Fabric::L2 => switch.exec("ip", &["link", "set", &sw_if, "master", "br0"]),
                Fabric::Routed => {
                    switch.exec("ip", &["addr", "add", &format!("{gw}/24"), "dev", &sw_if])
                }
            };
            ns.exec("ip", &["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
            ns.exec("ip", &["route", "add", "default", "via", &gw.to_string()]);
            // As the existing single-node fixture: reverse NAT happens before routing, which a
            // strict reverse-path filter would defeat (the agent warns about it).
            ns.sysctl("net.ipv4.conf.all.rp_filter", "0");
            ns.sysctl("net.ipv4.conf.default.rp_filter", "0");
            ns.sysctl("net.ipv4.conf.eth0.rp_filter", "0");
            let pod_cidr: Ipv4Net = format!("10.244.{i}.0/24").parse().expect("cidr");
            create_node(&client, &name, ip, pod_cidr).await;

            let files = tempfile::Builder::new()
                .prefix("petrel-node-")
                .tempdir()
                .expect("tempdir");
            let pins = BpffsRoot::new(&unique("petrel-mn-"));
            let cgroup = Cgroup::new(&unique("petrel-mn-"));
            let f = |s: &str| files.path().join(s).display().to_string();
            let mut args: Vec<String> = vec![
                format!("--kubeconfig={}", api.kubeconfig().display()),
                format!("--node-name={name}"),
                format!("--bpffs-root={}", pins.path().display()),
                format!("--cgroup-root={}", cgroup.path().display()),
                format!("--state-dir={}", f("state")),
                format!("--pod-cidr-file={}", f("pod-cidr")),
                format!("--cni-conf-file={}", f("05-petrel.conflist")),
                format!("--cluster-cidr={CLUSTER_CIDR}"),
            ];
            args.extend(agent_args.iter().map(|a| a.to_string()));
            let mut node = SimNode {
                name,
                ip,
                pod_cidr,
                agent: None,
                agent_args: args,
                pods: Vec::new(),
                ns,
                cgroup,
                pins,
                files,
            };
            node.start_agent();
            nodes.push(node);
        }
        for node in &mut nodes {
            let path = node.conflist_path();
            let what = format!("{}'s agent to write {}", node.name, path.display());
            eventually(&what, 30, || path.exists());
        }
        Cluster {
            fabric,
            nodes,
            outside,
            outside_ip,
            client,
            api,
        }
    }

    /// The pod called `name`, on whichever node.
    pub fn pod(&self, name: &str) -> &SimPod {
        self.nodes
            .iter()
            .flat_map(|n| &n.pods)
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name}"))
    }

    /// The node a pod address belongs to.
    pub fn node_of(&self, ip: Ipv4Addr) -> &SimNode {
        self.nodes
            .iter()
            .find(|n| n.pod_cidr.contains(&ip))
            .unwrap_or_else(|| panic!("no node holds {ip}"))
    }

    /// One TCP request from the outside host.
    pub fn get_from_outside(&self, to: SocketAddrV4) -> std::io::Result<pod::Reply> {
        self.outside.run(move || pod::tcp_get(to))
    }

    /// Creates Service `name` (NodePort `node_port`, port 80 -> POD_PORT) with an EndpointSlice
    /// holding `backends` (each on the node whose pod CIDR holds it); returns the ClusterIP.
    pub async fn create_service(
        &self,
        name: &str,
        node_port: i32,
        backends: &[Ipv4Addr],
    ) -> Ipv4Addr {
        let placed: Vec<(Ipv4Addr, String)> = backends
            .iter()
            .map(|ip| (*ip, self.node_of(*ip).name.clone()))
            .collect();
        create_service(&self.client, name, node_port, &placed).await
    }

    pub async fn delete_node(&self, name: &str) {
        Api::<Node>::all(self.client.clone())
            .delete(name, &Default::default())
            .await
            .expect("delete node");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Agents before the API server, so they do not log its absence; nodes before the switch.
        self.nodes.clear();
    }
}

/// Creates Service `name` in `default` (NodePort `node_port`, port 80 -> POD_PORT) with an
/// EndpointSlice holding `backends` (address, node name), all ready; returns the ClusterIP.
pub async fn create_service(
    client: &kube::Client,
    name: &str,
    node_port: i32,
    backends: &[(Ipv4Addr, String)],
) -> Ipv4Addr {
    let svc = Api::<Service>::namespaced(client.clone(), "default")
        .create(
            &PostParams::default(),
            &objects::service(name, Some(node_port)),
        )
        .await
        .expect("create service");
    Api::<EndpointSlice>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &objects::slice(name, backends))
        .await
        .expect("create endpointslice");
    objects::cluster_ip(&svc)
}

/// Creates Node `name` with `pod_cidr` and the InternalIP `ip`.
pub async fn create_node(client: &kube::Client, name: &str, ip: Ipv4Addr, pod_cidr: Ipv4Net) {
    Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &objects::node(name, ip, pod_cidr))
        .await
        .expect("create node");
}
