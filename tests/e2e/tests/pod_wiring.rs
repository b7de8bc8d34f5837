//! Pods wired into the datapath at once, and NodePorts on every local address, on one simulated
//! node (a network namespace running the real agent against the real kube-apiserver, pods from
//! the real petrel-cni). The agent runs with `--pod-scan-period 1h`, so its periodic scan (which
//! also runs once at start) cannot be what wires anything made after the start:
//!
//! - a veth that appears is attached through the kernel's link notification;
//! - a pod added while the agent is stopped is wired by petrel-cni itself (the pinned programs),
//!   so its traffic to a ClusterIP is translated with no agent running, and still after the agent
//!   is back (it adopts the links);
//! - an address added to the node later serves the NodePort too (kube-proxy's default
//!   `--nodeport-addresses`: every local address).
//!
//! Pods send from their own namespace, outside any socket-LB cgroup: only the TC program on their
//! veth translates a ClusterIP, so an unwired pod cannot reach one.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use petrel_testbed::{
    agent::eventually,
    cluster::{Cluster, Fabric},
    netns::NetNs,
    pod, require_root, unique,
};

#[test]
fn pods_are_wired_at_once_and_without_the_agent() {
    require_root();
    let switch = Arc::new(NetNs::new(&unique("ps")));
    let sw = switch.clone();
    switch.run(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(scenario(&sw));
    });
}

/// Retries `f` for up to 20 s, then returns its answer or panics with the last error.
fn answer(what: &str, mut f: impl FnMut() -> std::io::Result<pod::Reply>) -> pod::Reply {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match f() {
            Ok(r) => return r,
            Err(e) if Instant::now() >= deadline => panic!("{what}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// The host-side veth petrel-cni names for container `id`'s eth0 (`petrel_cni::link::host_ifname`).
fn host_ifname(id: &str) -> String {
    let h = petrel_common::fnv1a64(format!("{id}/eth0").as_bytes());
    format!("pet{:012x}", h >> 16)
}

fn pinned(root: &Path, iface: &str) -> bool {
    ["tc_pod_ingress", "tc_pod_egress"]
        .iter()
        .all(|p| root.join("links").join(format!("{p}@{iface}")).exists())
}

async fn scenario(switch: &NetNs) {
    let mut c = Cluster::new(switch, Fabric::L2, 1, &["--pod-scan-period=1h"]).await;
    let root = c.nodes[0].pins.path().to_path_buf();
    eventually(
        "the agent to pin the pod programs for petrel-cni",
        20,
        || root.join("progs/tc_pod_ingress").exists() && root.join("progs/tc_pod_egress").exists(),
    );
    let web = c.nodes[0].add_pod("web").ip;
    let cluster_ip = c.create_service("web", 30091, &[web]).await;
    let vip = SocketAddrV4::new(cluster_ip, 80);

    // A veth with petrel's prefix that no CNI call made: only the link notification can make
    // the agent attach to it (the scan is an hour away).
    let node = &c.nodes[0];
    node.ns.exec(
        "ip",
        &[
            "link",
            "add",
            "petnotify00001",
            "type",
            "veth",
            "peer",
            "name",
            "xq-notify",
        ],
    );
    eventually(
        "the agent to attach to a new veth from its link notification",
        20,
        || pinned(&root, "petnotify00001"),
    );
    node.ns.exec("ip", &["link", "del", "petnotify00001"]);

    // A pod made while the agent runs reaches the ClusterIP.
    c.nodes[0].add_pod("client-up");
    let r = answer("client-up -> ClusterIP", || c.pod("client-up").get(vip));
    assert_eq!(r.server, "web");

    // The agent stopped: petrel-cni wires the new pod itself, and the pinned maps serve it.
    c.nodes[0].agent().stop(libc::SIGTERM);
    c.nodes[0].add_pod("client-down");
    let host_if = host_ifname("client-down");
    assert!(
        pinned(&root, &host_if),
        "petrel-cni pinned {host_if}'s links at ADD, with no agent running"
    );
    let r = answer("client-down -> ClusterIP, agent stopped", || {
        c.pod("client-down").get(vip)
    });
    assert_eq!(r.server, "web", "served with no agent running");
    let r = answer("client-down -> web pod, agent stopped", || {
        c.pod("client-down")
            .get(SocketAddrV4::new(web, petrel_testbed::cluster::POD_PORT))
    });
    assert_eq!(r.client_seen, c.pod("client-down").ip.to_string());

    // The agent back: it adopts the links petrel-cni made; the pod keeps working.
    c.nodes[0].start_agent();
    eventually("the restarted agent to adopt the pod links", 30, || {
        c.nodes[0]
            .agent()
            .log()
            .matches("pod interface attached")
            .count()
            >= 3
    });
    let r = answer("client-down -> ClusterIP, agent back", || {
        c.pod("client-down").get(vip)
    });
    assert_eq!(r.server, "web");

    // NodePorts on every local address: one added after the agent started serves it too.
    let extra = Ipv4Addr::new(10, 98, 0, 111);
    c.nodes[0].ns.exec(
        "ip",
        &["addr", "add", &format!("{extra}/24"), "dev", "eth0"],
    );
    let r = answer("outside -> NodePort on an address added later", || {
        c.get_from_outside(SocketAddrV4::new(extra, 30091))
    });
    assert_eq!(r.server, "web");
    let r = answer("outside -> NodePort on the InternalIP", || {
        c.get_from_outside(SocketAddrV4::new(c.nodes[0].ip, 30091))
    });
    assert_eq!(r.server, "web");
}
