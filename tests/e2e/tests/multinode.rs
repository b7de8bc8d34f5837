//! Pod networking across nodes. Three simulated nodes (network namespaces) are joined through a
//! switch namespace that runs the real kube-apiserver; each node runs its own petrel-agent (own
//! bpffs root, cgroup and files) and gets pods from the real petrel-cni, configured by the
//! conflist its agent wrote from the Node's podCIDR.
//!
//! Native routing is tested with the nodes on one L2 segment; VXLAN with every node on its own
//! routed subnet, where native routing could not work. Each run checks, with real TCP traffic:
//! pod to pod across nodes (source kept), a ClusterIP whose backends are all on other nodes (TC
//! path and socket-LB), a NodePort from an outside host on every node (SNAT when the backend is
//! remote), pod egress to the outside host (TCP and ping, masqueraded), an agent restart under load (no failed
//! connection), a deleted Node's routes going away while a route petrel does not own stays, and
//! `petrel-agent --cleanup` leaving nothing behind.

use std::{
    collections::BTreeSet,
    net::SocketAddrV4,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use petrel_testbed::{
    agent::eventually,
    cluster::{Cluster, Fabric},
    netns::{NetNs, enter},
    pod, require_root, unique, workspace_bin,
};

#[test]
fn native_routing_between_nodes_on_one_l2_segment() {
    run(Fabric::L2, "native");
}

#[test]
fn vxlan_overlay_between_nodes_on_routed_subnets() {
    run(Fabric::Routed, "vxlan");
}

fn run(fabric: Fabric, routing: &'static str) {
    require_root();
    let switch = Arc::new(NetNs::new(&unique("ps")));
    let sw = switch.clone();
    switch.run(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(scenario(&sw, fabric, routing));
    });
}

/// Retries `f` for up to 15 s (routes, attachments and syncs settle), then returns its answer or
/// panics with the last error.
fn answer(what: &str, mut f: impl FnMut() -> std::io::Result<pod::Reply>) -> pod::Reply {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match f() {
            Ok(r) => return r,
            Err(e) if Instant::now() >= deadline => panic!("{what}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

async fn scenario(switch: &NetNs, fabric: Fabric, routing: &str) {
    let mut c = Cluster::new(switch, fabric, 3, &[&format!("--routing={routing}")]).await;

    // The conflist the agent wrote carries the MTU the fabric allows.
    let want_mtu = if routing == "vxlan" { 1450 } else { 1500 };
    for n in &c.nodes {
        let list: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(n.conflist_path()).expect("conflist"))
                .expect("json");
        assert_eq!(
            list["plugins"][0]["mtu"], want_mtu,
            "{}'s conflist: {list}",
            n.name
        );
    }
    // A route somebody else owns: petrel must leave it alone.
    c.nodes[0].ns.exec(
        "ip",
        &[
            "route",
            "add",
            "10.250.0.0/24",
            "dev",
            "eth0",
            "proto",
            "static",
        ],
    );

    for (i, node) in c.nodes.iter_mut().enumerate() {
        node.add_pod(&format!("client-{}", i + 1));
        node.add_pod(&format!("web-{}", i + 1));
    }

    // Each node routes to the two others' pod CIDRs, natively or through the overlay.
    for (i, node) in c.nodes.iter().enumerate() {
        let expected: Vec<String> = c
            .nodes
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, other)| match routing {
                "vxlan" => format!(
                    "{} via {} dev petrel.vxlan",
                    other.pod_cidr,
                    other.pod_cidr.network()
                ),
                _ => format!("{} via {} dev eth0", other.pod_cidr, other.ip),
            })
            .collect();
        let what = format!("{}'s routes {expected:?}", node.name);
        eventually(&what, 20, || {
            let have = node.petrel_routes();
            have.len() == expected.len()
                && expected
                    .iter()
                    .all(|e| have.iter().any(|h| h.starts_with(e.as_str())))
        });
    }

    // Pod to pod across nodes: every client reaches every other node's web pod, source kept.
    for client in ["client-1", "client-2", "client-3"] {
        for web in ["web-1", "web-2", "web-3"] {
            if client[7..] == web[4..] {
                continue;
            }
            let (from, to) = (c.pod(client), c.pod(web));
            let r = answer(&format!("{client} -> {web}"), || from.get(to.addr()));
            assert_eq!(r.server, web);
            assert_eq!(r.client_seen, from.ip.to_string(), "{client} -> {web}");
        }
    }

    // A ClusterIP (and NodePort 30080) whose backends are all on node-2 and node-3.
    let backends = [c.pod("web-2").ip, c.pod("web-3").ip];
    let vip = c.create_service("web", 30080, &backends).await;
    let vip = SocketAddrV4::new(vip, 80);
    let client1 = c.pod("client-1");
    let mut seen = BTreeSet::new();
    for _ in 0..40 {
        let r = answer("client-1 -> ClusterIP (TC path)", || client1.get(vip));
        assert_eq!(r.client_seen, client1.ip.to_string(), "in-cluster: no SNAT");
        assert_eq!(r.peer, vip.to_string(), "the reply comes from the VIP");
        seen.insert(r.server);
    }
    assert_eq!(
        seen,
        BTreeSet::from(["web-2".to_string(), "web-3".to_string()]),
        "both remote backends answer the ClusterIP"
    );
    // The same through socket-LB: a process in node-1's socket-LB cgroup.
    let pod_bin = workspace_bin("petrel-pod", "PETREL_POD_BIN");
    let r = pod::get_in_cgroup(
        &pod_bin,
        &client1.ns.path(),
        c.nodes[0].cgroup.path(),
        vip,
        "tcp",
    )
    .expect("client-1 -> ClusterIP (socket-LB)");
    assert!(
        r.server == "web-2" || r.server == "web-3",
        "socket-LB answer {r:?}"
    );
    assert_eq!(r.peer, vip.to_string(), "the application sees the VIP");

    // NodePort from outside on every node. A backend on another node sees the node's address
    // (SNAT, so the reply comes back through it); a local one sees the outside client.
    for node in &c.nodes {
        let np = SocketAddrV4::new(node.ip, 30080);
        let mut servers = BTreeSet::new();
        for _ in 0..12 {
            let r = answer(&format!("outside -> {np}"), || c.get_from_outside(np));
            let backend_node = if r.server == "web-2" {
                "node-2"
            } else {
                "node-3"
            };
            assert!(
                r.server == "web-2" || r.server == "web-3",
                "NodePort answer {r:?}"
            );
            let expected_source = if backend_node == node.name {
                c.outside_ip.to_string()
            } else {
                node.ip.to_string()
            };
            assert_eq!(r.client_seen, expected_source, "{np} answered by {r:?}");
            assert_eq!(r.peer, np.to_string());
            servers.insert(r.server);
        }
        if node.name == "node-1" {
            assert_eq!(servers.len(), 2, "node-1 forwards to both remote backends");
        }
    }

    // Pod egress to an address outside the cluster CIDR leaves with the node's address.
    let outside_addr = SocketAddrV4::new(c.outside_ip, 9000);
    let _outside_server = pod::Server::start(Some(c.outside.path()), "outside", outside_addr);
    for (i, node) in c.nodes.iter().enumerate() {
        let client = &node.pods[0];
        let r = answer(&format!("client-{} -> outside", i + 1), || {
            client.get(outside_addr)
        });
        assert_eq!(r.server, "outside");
        assert_eq!(
            r.client_seen,
            node.ip.to_string(),
            "masqueraded to {}'s address",
            node.name
        );
        // ICMP echo too: the outside host has no route to pod addresses, so an answer to the
        // pod's ping means the request left with the node's address and the reply found the pod.
        client
            .ns
            .exec("ping", &["-c", "2", "-W", "2", &c.outside_ip.to_string()]);
    }

    // Restart node-1's agent (SIGKILL, then a new one) while client-1 keeps making connections
    // to a pod on node-2 and to the ClusterIP: none may fail.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        let ns = client1.ns.path();
        let targets = [c.pod("web-2").addr(), vip];
        std::thread::spawn(move || {
            enter(&ns);
            let mut errors = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                match pod::tcp_get(targets[i % 2]) {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        errors.push(format!("{}: {e}", targets[i % 2]));
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
                i += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            errors
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    c.nodes[0].agent().stop(libc::SIGKILL);
    std::thread::sleep(Duration::from_millis(500));
    c.nodes[0].start_agent();
    eventually("node-1's new agent to sync", 30, || {
        c.nodes[0]
            .agent()
            .log()
            .contains("Nodes listed: programming")
    });
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let errors = load.join().expect("load thread");
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("restart under load ({routing}): {ok} connections answered, {failed} failed");
    assert!(ok > 50, "the load ran ({ok} connections)");
    assert_eq!(
        failed, 0,
        "connections failed across the agent restart: {errors:?}"
    );
    assert_eq!(c.nodes[0].petrel_routes().len(), 2);

    // Deleting node-3's Node object removes its routes everywhere; the foreign route stays.
    c.delete_node("node-3").await;
    for node in &c.nodes[..2] {
        let what = format!("{}'s route to 10.244.3.0/24 to go", node.name);
        eventually(&what, 20, || {
            let have = node.petrel_routes();
            have.len() == 1 && !have.iter().any(|r| r.starts_with("10.244.3.0/24"))
        });
    }
    let foreign = c.nodes[0]
        .ns
        .exec("ip", &["-4", "route", "show", "10.250.0.0/24"]);
    assert!(
        String::from_utf8_lossy(&foreign.stdout).contains("proto static"),
        "a route petrel does not own was touched"
    );
    // The rest still works.
    let r = answer("client-1 -> web-2 after node-3 left", || {
        c.pod("client-1").get(c.pod("web-2").addr())
    });
    assert_eq!(r.server, "web-2");

    // Uninstall on node-1: no petrel route, overlay device or pin is left.
    let node1 = &mut c.nodes[0];
    node1.agent().stop(libc::SIGTERM);
    let agent_bin = workspace_bin("petrel-agent", "PETREL_AGENT_BIN");
    let root = format!("--bpffs-root={}", node1.pins.path().display());
    node1.ns.exec(
        agent_bin.to_str().expect("UTF-8 path"),
        &["--cleanup", &root],
    );
    assert_eq!(node1.petrel_routes(), Vec::<String>::new());
    let links = node1.ns.exec("ip", &["-o", "link", "show"]);
    assert!(
        !String::from_utf8_lossy(&links.stdout).contains("petrel.vxlan"),
        "the overlay device is left"
    );
    assert!(!node1.pins.path().exists(), "pins are left");
}
