//! petrel-agent end to end: standalone manifests, the real kube-apiserver, restarts under load.
//! The agent runs inside a simulated node's namespace; clients in a pod namespace.
//!
//! Longer than 600 lines on purpose: the nine tests share one node fixture and its manifests and
//! object helpers, defined here for this file alone; one feature per file would copy them.

use std::{
    collections::BTreeSet,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4, TcpStream},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use k8s_openapi::{
    api::{
        core::v1::{Node, NodeAddress, NodeStatus, Service, ServicePort, ServiceSpec},
        discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api,
    api::{DeleteParams, PostParams},
};
use petrel_testbed::{
    BpffsRoot,
    agent::{Agent, eventually},
    apiserver::KubeApiServer,
    netns::{Node as SimNode, enter},
    objects::meta,
    pod, require_root, unique,
};

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 2);
const B0: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 3);
const B1: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 4);

struct Fixture {
    _servers: Vec<pod::Server>,
    node: SimNode,
    pins: BpffsRoot,
    /// The agent's --state-dir (service names for netctl).
    state: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        require_root();
        let pins = BpffsRoot::new(&unique("petrel-agent-"));
        let mut node = SimNode::new(&unique("an"));
        node.add_pod(&unique("ac"), CLIENT);
        let mut servers = Vec::new();
        for (name, ip) in [("b0", B0), ("b1", B1)] {
            let p = node.add_pod(&unique("ab"), ip);
            servers.push(pod::Server::start(
                Some(p.ns.path()),
                name,
                SocketAddrV4::new(ip, 8080),
            ));
        }
        Fixture {
            _servers: servers,
            node,
            pins,
            state: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn agent(&self, source: &[String]) -> Agent {
        let mut args: Vec<String> = source.to_vec();
        args.extend(
            [
                "--node-name",
                "n1",
                "--bpffs-root",
                &self.pins.path().display().to_string(),
                "--socket-lb",
                "false",
                "--pod-interface-prefix",
                "h-",
                "--min-sync-period",
                "20ms",
            ]
            .map(String::from),
        );
        args.extend([
            "--state-dir".to_string(),
            self.state.path().display().to_string(),
        ]);
        // Never the host's real CNI paths.
        let cni = self.state.path().join("cni");
        args.extend([
            "--pod-cidr-file".to_string(),
            cni.join("pod-cidr").display().to_string(),
            "--cni-conf-file".to_string(),
            cni.join("05-petrel.conflist").display().to_string(),
        ]);
        Agent::start(&self.node.ns.path(), &args)
    }

    fn get(&self, to: SocketAddrV4) -> std::io::Result<pod::Reply> {
        let ns = self.node.pods[0].ns.path();
        std::thread::spawn(move || {
            enter(&ns);
            pod::tcp_get(to)
        })
        .join()
        .expect("client thread")
    }

    fn servers(&self, to: SocketAddrV4, n: usize) -> BTreeSet<String> {
        (0..n)
            .filter_map(|_| self.get(to).ok())
            .map(|r| r.server)
            .collect()
    }

    /// Waits until `vip` has b1 as its only backend, then checks that only b1 answers.
    fn wait_only_b1(&self, vip: SocketAddrV4, what: &str, secs: u64) {
        eventually(what, secs, || {
            self.frontend(vip)
                .is_some_and(|s| s["backends"].as_array().map(Vec::len) == Some(1))
        });
        assert_eq!(self.servers(vip, 10), BTreeSet::from(["b1".to_string()]));
    }

    /// The netctl entry of frontend `vip`, if programmed.
    fn frontend(&self, vip: SocketAddrV4) -> Option<serde_json::Value> {
        let all = self.netctl();
        all.as_array()?
            .iter()
            .find(|s| {
                s["frontend"]["addr"] == vip.ip().to_string() && s["frontend"]["port"] == vip.port()
            })
            .cloned()
    }

    fn netctl(&self) -> serde_json::Value {
        let out = self.netctl_run("dump-services");
        serde_json::from_slice(&out.stdout).expect("json")
    }

    /// `netctl COMMAND -o json` on this node's pins and state dir; fails the test if netctl does.
    fn netctl_run(&self, command: &str) -> std::process::Output {
        let out = std::process::Command::new(petrel_testbed::workspace_bin(
            "netctl",
            "PETREL_NETCTL_BIN",
        ))
        .arg("--bpffs-root")
        .arg(self.pins.path())
        .arg("--state-dir")
        .arg(self.state.path())
        .args([command, "-o", "json"])
        .output()
        .expect("netctl");
        assert!(
            out.status.success(),
            "netctl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// GET `path` on the agent's metrics port, from inside the node.
    fn http(&self, port: u16, path: &str) -> String {
        let ns = self.node.ns.path();
        let path = path.to_string();
        std::thread::spawn(move || {
            enter(&ns);
            let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(3)))
                .expect("timeout");
            write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            .expect("write");
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            out
        })
        .join()
        .expect("http thread")
    }
}

fn manifest(vip: &str, backends: &[Ipv4Addr]) -> String {
    let eps: Vec<String> = backends
        .iter()
        .map(|b| format!("{{addresses: [{b}], nodeName: n1, conditions: {{ready: true}}}}"))
        .collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: default}}\nspec:\n  clusterIP: {vip}\n  ports: [{{name: http, port: 80, protocol: TCP}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: web-1, namespace: default, labels: {{kubernetes.io/service-name: web}}}}\naddressType: IPv4\nendpoints: [{}]\nports: [{{name: http, port: 8080, protocol: TCP}}]\n",
        eps.join(", ")
    )
}

fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// Also mirrors upstream's [sig-network] "should check kube-proxy urls" (the /healthz, /livez
/// and /proxyMode checks below).
#[test]
fn standalone_manifests_add_edit_delete_and_a_malformed_file() {
    let f = Fixture::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let web = dir.path().join("web.yaml");
    write_atomic(&web, &manifest("10.96.0.50", &[B0, B1]));
    let _agent = f.agent(&["--manifests".into(), dir.path().display().to_string()]);
    let vip = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 50), 80);
    eventually("the VIP answers", 20, || f.get(vip).is_ok());
    assert_eq!(
        f.servers(vip, 16),
        BTreeSet::from(["b0".to_string(), "b1".to_string()])
    );
    let dump = f.netctl();
    assert_eq!(dump[0]["frontend"]["addr"], "10.96.0.50");
    assert_eq!(dump[0]["backends"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        dump[0]["name"]["service"], "default/web",
        "netctl adds the agent's names"
    );
    assert_eq!(dump[0]["name"]["kind"], "ClusterIP");
    assert_eq!(dump[0]["name"]["port_name"], "http");

    // Edit: b0 leaves.
    write_atomic(&web, &manifest("10.96.0.50", &[B1]));
    eventually("only b1 is left", 10, || {
        f.netctl()[0]["backends"].as_array().map(Vec::len) == Some(1)
    });
    assert_eq!(f.servers(vip, 10), BTreeSet::from(["b1".to_string()]));

    // A malformed file is reported and skipped; the rest keeps working.
    std::fs::write(
        dir.path().join("bad.yaml"),
        "apiVersion: v1\nkind: Service\nspec: {ports: [{port: eighty}]}\n",
    )
    .expect("write");
    eventually("the bad file is counted", 10, || {
        f.http(10249, "/metrics")
            .contains("petrel_manifest_errors 1")
    });
    assert!(f.get(vip).is_ok());
    let health = f.http(10256, "/healthz");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    // kube-proxy's URLs ("should check kube-proxy urls"): /livez, and /proxyMode on :10249.
    let live = f.http(10256, "/livez");
    assert!(live.starts_with("HTTP/1.1 200"), "{live}");
    assert!(live.contains("\"currentTime\": \""), "{live}");
    let mode = f.http(10249, "/proxyMode");
    assert!(
        mode.starts_with("HTTP/1.1 200") && mode.ends_with("ebpf"),
        "{mode}"
    );
    let metrics = f.http(10249, "/metrics");
    for name in [
        "kubeproxy_sync_proxy_rules_duration_seconds_count",
        "petrel_services 1",
        "petrel_backends 1",
        "petrel_map_fill_ratio",
        "petrel_datapath_packets",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }

    // A pod interface that appears is attached; when it goes, its link pin is removed.
    let pin = f.pins.path().join("links/tc_pod_ingress@h-extra");
    f.node.ns.exec(
        "ip",
        &[
            "link",
            "add",
            "h-extra",
            "type",
            "veth",
            "peer",
            "name",
            "h-extra-p",
        ],
    );
    eventually("the new interface is attached", 10, || pin.exists());
    f.node.ns.exec("ip", &["link", "del", "h-extra"]);
    eventually("its pin is pruned", 10, || !pin.exists());

    // Delete: the VIP stops being translated.
    std::fs::remove_file(&web).expect("rm");
    eventually("the service is gone", 10, || {
        f.netctl().as_array().is_some_and(Vec::is_empty)
    });
    assert!(f.get(vip).is_err());
}

/// Manifests for `topology_hints_and_traffic_distribution_keep_traffic_in_the_zone`: node n1 in
/// zone-a, a service asking for hints (`trafficDistribution`, when `distribution` is set), b0 on
/// n1 and b1 on n2, each hinted for the zones given.
fn zoned_manifest(distribution: Option<&str>, hints: [&str; 2]) -> String {
    let spec_extra = distribution
        .map(|d| format!("  trafficDistribution: {d}\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Node\nmetadata: {{name: n1, labels: {{topology.kubernetes.io/zone: zone-a}}}}\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: default}}\nspec:\n  clusterIP: 10.96.0.60\n{spec_extra}  ports: [{{name: http, port: 80, protocol: TCP}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: web-1, namespace: default, labels: {{kubernetes.io/service-name: web}}}}\naddressType: IPv4\nendpoints:\n- {{addresses: [{B0}], nodeName: n1, zone: zone-a, conditions: {{ready: true}}, hints: {{forZones: [{{name: {}}}]}}}}\n- {{addresses: [{B1}], nodeName: n2, zone: zone-b, conditions: {{ready: true}}, hints: {{forZones: [{{name: {}}}]}}}}\nports: [{{name: http, port: 8080, protocol: TCP}}]\n",
        hints[0], hints[1]
    )
}

/// Mirrors upstream's [sig-network] "Traffic Distribution ... should route traffic to an
/// endpoint in the same zone when the service has trafficDistribution=PreferClose"
/// (traffic_distribution.go) and the Topology Hints checks (topology_hints.go), through the real
/// agent from standalone manifests (the v1.20 API server drops both fields): with
/// PreferClose only the endpoint hinted for this node's zone answers; hints naming only zones
/// that do not hold this node fall back to every endpoint (kube-proxy's rule, never none); a
/// service that does not ask ignores the hints.
#[test]
fn topology_hints_and_traffic_distribution_keep_traffic_in_the_zone() {
    let f = Fixture::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let web = dir.path().join("web.yaml");
    write_atomic(
        &web,
        &zoned_manifest(Some("PreferClose"), ["zone-a", "zone-b"]),
    );
    let _agent = f.agent(&["--manifests".into(), dir.path().display().to_string()]);
    let vip = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 60), 80);
    eventually("the VIP answers", 20, || f.get(vip).is_ok());
    let b0 = BTreeSet::from(["b0".to_string()]);
    let both = BTreeSet::from(["b0".to_string(), "b1".to_string()]);
    assert_eq!(f.servers(vip, 16), b0, "only zone-a's endpoint");

    // Hints for zones this node is not in (zone-c is no zone of the cluster): all endpoints.
    write_atomic(
        &web,
        &zoned_manifest(Some("PreferClose"), ["zone-c", "zone-b"]),
    );
    eventually("both endpoints programmed", 10, || {
        f.frontend(vip)
            .is_some_and(|s| s["backends"].as_array().map(Vec::len) == Some(2))
    });
    assert_eq!(f.servers(vip, 24), both, "the fallback: every endpoint");

    // Back to hints for zone-a, then the service stops asking: the hints are ignored.
    write_atomic(
        &web,
        &zoned_manifest(Some("PreferClose"), ["zone-a", "zone-b"]),
    );
    eventually("zone-a only again", 10, || {
        f.frontend(vip)
            .is_some_and(|s| s["backends"].as_array().map(Vec::len) == Some(1))
    });
    write_atomic(&web, &zoned_manifest(None, ["zone-a", "zone-b"]));
    eventually("both endpoints without trafficDistribution", 10, || {
        f.frontend(vip)
            .is_some_and(|s| s["backends"].as_array().map(Vec::len) == Some(2))
    });
    assert_eq!(f.servers(vip, 24), both);
}

#[test]
fn restarts_under_load_lose_no_connection() {
    let f = Fixture::new();
    let dir = tempfile::tempdir().expect("tempdir");
    write_atomic(
        &dir.path().join("web.yaml"),
        &manifest("10.96.0.51", &[B0, B1]),
    );
    let source = ["--manifests".to_string(), dir.path().display().to_string()];
    let mut agent = f.agent(&source);
    let vip = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 51), 80);
    eventually("the VIP answers", 20, || f.get(vip).is_ok());

    // At least 200 connections per second through the ClusterIP while the agent is killed and
    // restarted, then stopped gracefully and restarted.
    let (ok, failed, stop) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let client_ns = f.node.pods[0].ns.path();
    let load = {
        let (ok, failed, stop) = (ok.clone(), failed.clone(), stop.clone());
        std::thread::spawn(move || {
            enter(&client_ns);
            let mut errors = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match pod::tcp_get(vip) {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        errors.push(e.to_string());
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
                std::thread::sleep(Duration::from_millis(4));
            }
            errors
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    agent.stop(libc::SIGKILL);
    std::thread::sleep(Duration::from_millis(500));
    agent = f.agent(&source);
    std::thread::sleep(Duration::from_secs(2));
    agent.stop(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(500));
    let _agent = f.agent(&source);
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let errors = load.join().expect("load thread");
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!("restarts under load: {ok} connections succeeded, {failed} failed");
    assert_eq!(failed, 0, "connections failed during restarts: {errors:?}");
    // The load ran throughout (~200/s here; a loose bound, the machine may be loaded).
    assert!(ok > 300, "only {ok} connections were made");
    drop(agent);
}

fn slice(backends: &[Ipv4Addr]) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            labels: Some([("kubernetes.io/service-name".to_string(), "web".to_string())].into()),
            ..meta("web-1")
        },
        address_type: "IPv4".into(),
        endpoints: backends
            .iter()
            .map(|b| Endpoint {
                addresses: vec![b.to_string()],
                node_name: Some("n1".into()),
                conditions: Some(EndpointConditions {
                    ready: Some(true),
                    ..Default::default()
                }),
                ..Default::default()
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

/// Mirrors upstream's [sig-network] Services "should serve a basic endpoint from pods" (and
/// "should serve multiport endpoints from pods" where the slice changes), through the real
/// agent and kube-apiserver.
#[test]
fn follows_services_and_endpointslices_from_the_api_server() {
    let f = Arc::new(Fixture::new());
    in_node(&f, |f| async move {
        let server = KubeApiServer::start().await;
        let client = server.client().await;
        let vip = create_web(&client, &[B0, B1]).await;
        let services: Api<Service> = Api::namespaced(client.clone(), "default");
        let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
        let kubeconfig = server.kubeconfig().display().to_string();
        let agent = f.agent(&["--kubeconfig".into(), kubeconfig]);
        let fb = f.clone();
        tokio::task::spawn_blocking(move || {
            eventually("the VIP answers", 30, || fb.get(vip).is_ok());
            assert_eq!(
                fb.servers(vip, 16),
                BTreeSet::from(["b0".to_string(), "b1".to_string()])
            );
        })
        .await
        .expect("traffic");

        // The agent hands the Node's podCIDR to petrel-cni and writes the conflist.
        let cni = f.state.path().join("cni");
        let fb = f.clone();
        tokio::task::spawn_blocking(move || {
            eventually("pod CIDR file written", 10, || {
                std::fs::read_to_string(cni.join("pod-cidr"))
                    .is_ok_and(|c| c.trim() == "10.244.7.0/24")
            });
            // The conflist follows once the uplink (and so the pods' MTU) is known.
            eventually("conflist written", 10, || {
                cni.join("05-petrel.conflist").exists()
            });
            let conf: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(cni.join("05-petrel.conflist")).expect("conflist"),
            )
            .expect("json");
            assert_eq!(conf["plugins"][0]["type"], "petrel-cni");
            // The default version: what containerd 1.6 and the reference plugins read.
            assert_eq!(conf["cniVersion"], "1.0.0");
            assert_eq!(
                conf["plugins"][0]["podCIDRFile"],
                cni.join("pod-cidr").display().to_string()
            );
            drop(fb);
        })
        .await
        .expect("cni config");

        // Endpoints change through the API.
        let mut current = slices.get("web-1").await.expect("get slice");
        current.endpoints = slice(&[B1]).endpoints;
        // As the EndpointSlice controller does: the trigger time network programming latency is measured from.
        current.metadata.annotations = Some(
            [(
                "endpoints.kubernetes.io/last-change-trigger-time".to_string(),
                k8s_openapi::jiff::Timestamp::now().to_string(),
            )]
            .into(),
        );
        slices
            .replace("web-1", &PostParams::default(), &current)
            .await
            .expect("replace slice");
        let fb = f.clone();
        tokio::task::spawn_blocking(move || fb.wait_only_b1(vip, "only b1 is left", 15))
            .await
            .expect("update");

        let fb = f.clone();
        tokio::task::spawn_blocking(move || {
            eventually("network programming latency observed", 10, || {
                fb.http(10249, "/metrics").lines().any(|l| {
                    l.starts_with("kubeproxy_network_programming_duration_seconds_count")
                        && !l.ends_with(" 0")
                })
            });
        })
        .await
        .expect("programming latency");

        // The service port changes through the API: 80 -> 81.
        let mut current = services.get("web").await.expect("get service");
        if let Some(p) = current.spec.as_mut().and_then(|s| s.ports.as_mut()) {
            p[0].port = 81;
        }
        services
            .replace("web", &PostParams::default(), &current)
            .await
            .expect("replace service");
        let vip81 = SocketAddrV4::new(*vip.ip(), 81);
        let fb = f.clone();
        tokio::task::spawn_blocking(move || {
            eventually("port 81 answers", 15, || fb.get(vip81).is_ok());
            eventually("port 80 is gone", 15, || fb.frontend(vip).is_none());
        })
        .await
        .expect("port change");
        let vip = vip81;

        // Session affinity is switched on through the API.
        let mut current = services.get("web").await.expect("get service");
        if let Some(spec) = current.spec.as_mut() {
            spec.session_affinity = Some("ClientIP".into());
        }
        services
            .replace("web", &PostParams::default(), &current)
            .await
            .expect("replace service");
        let fb = f.clone();
        tokio::task::spawn_blocking(move || {
            eventually("affinity programmed", 15, || {
                fb.frontend(vip)
                    .is_some_and(|s| s["affinity_timeout_s"] == 10800)
            });
        })
        .await
        .expect("affinity");

        // Deleting the service removes it from the datapath.
        services
            .delete("web", &DeleteParams::default())
            .await
            .expect("delete");
        let fb = f.clone();
        tokio::task::spawn_blocking(move || {
            eventually("the service is gone", 15, || fb.frontend(vip).is_none());
            assert!(fb.get(vip).is_err());
        })
        .await
        .expect("delete");
        drop(agent);
        drop(server);
    });
}

/// Runs `body` on a tokio runtime whose threads live in the node's namespace (where the API
/// server fixture must run: another namespace cannot reach its loopback).
fn in_node<F, Fut>(f: &Arc<Fixture>, body: F)
where
    F: FnOnce(Arc<Fixture>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let node_ns = f.node.ns.path();
    let f = f.clone();
    std::thread::spawn(move || {
        enter(&node_ns);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(body(f));
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e));
}

/// Node n1, a service `web` (port 80 -> 8080) and its slice with `backends`; returns the VIP.
async fn create_web(client: &kube::Client, backends: &[Ipv4Addr]) -> SocketAddrV4 {
    let vip = create_web_service(client).await;
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    slices
        .create(&PostParams::default(), &slice(backends))
        .await
        .expect("slice");
    vip
}

/// Node n1 and the service `web` (port 80 -> 8080), no slice; returns the VIP.
async fn create_web_service(client: &kube::Client) -> SocketAddrV4 {
    let nodes: Api<Node> = Api::all(client.clone());
    let node = Node {
        metadata: ObjectMeta {
            name: Some("n1".into()),
            ..Default::default()
        },
        spec: Some(k8s_openapi::api::core::v1::NodeSpec {
            pod_cidr: Some("10.244.7.0/24".into()),
            ..Default::default()
        }),
        status: Some(NodeStatus {
            addresses: Some(vec![NodeAddress {
                type_: "InternalIP".into(),
                address: "10.99.0.1".into(),
            }]),
            ..Default::default()
        }),
    };
    nodes
        .create(&PostParams::default(), &node)
        .await
        .expect("node");
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let svc = Service {
        metadata: meta("web"),
        spec: Some(ServiceSpec {
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let created = services
        .create(&PostParams::default(), &svc)
        .await
        .expect("service");
    let ip: Ipv4Addr = created
        .spec
        .and_then(|s| s.cluster_ip)
        .expect("clusterIP")
        .parse()
        .expect("v4");
    SocketAddrV4::new(ip, 80)
}

/// The slice of `web` as a 1.20 EndpointSlice controller writes it: discovery.k8s.io/v1beta1,
/// the node in `topology`.
fn slice_v1beta1(backends: &[Ipv4Addr]) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1beta1",
        "kind": "EndpointSlice",
        "metadata": {"name": "web-1", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": backends.iter().map(|b| serde_json::json!({
            "addresses": [b.to_string()],
            "conditions": {"ready": true},
            "topology": {"kubernetes.io/hostname": "n1"},
        })).collect::<Vec<_>>(),
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    })
}

#[test]
fn the_node_is_wired_before_services_finish_listing() {
    let f = Arc::new(Fixture::new());
    in_node(&f, |f| async move {
        // No EndpointSlice API: the agent's list of slices never completes, as a very large
        // cluster's takes long. The Node's podCIDR must reach petrel-cni all the same.
        let server = KubeApiServer::start_without_slices().await;
        let client = server.client().await;
        let vip = create_web_service(&client).await;
        let agent = f.agent(&[
            "--kubeconfig".into(),
            server.kubeconfig().display().to_string(),
            "--sync-period=5m".into(),
        ]);
        let cni = f.state.path().join("cni");
        let fb = f.clone();
        tokio::task::spawn_blocking(move || {
            eventually("conflist written", 20, || {
                cni.join("05-petrel.conflist").exists()
            });
            assert_eq!(
                std::fs::read_to_string(cni.join("pod-cidr")).expect("pod CIDR file"),
                "10.244.7.0/24\n"
            );
            // Nothing of the services is programmed from a partial view.
            assert!(fb.frontend(vip).is_none(), "{}", fb.netctl());
        })
        .await
        .expect("wiring");
        assert!(
            agent.log().contains("Nodes listed: wiring the node"),
            "{}",
            agent.log()
        );
        drop(agent);
        drop(server);
    });
}

#[test]
fn a_1_20_server_feeds_the_agent_v1beta1_endpointslices() {
    use kube::{
        api::{ApiResource, DynamicObject, GroupVersionKind},
        core::ObjectList,
    };
    let f = Arc::new(Fixture::new());
    in_node(&f, |f| async move {
        let server = KubeApiServer::start_v1beta1().await;
        let client = server.client().await;
        // The server really is a 1.20 one: no v1 EndpointSlices.
        let v1: Api<EndpointSlice> = Api::all(client.clone());
        assert!(v1.list(&Default::default()).await.is_err());
        let gvk = GroupVersionKind::gvk("discovery.k8s.io", "v1beta1", "EndpointSlice");
        let ar = ApiResource::from_gvk_with_plural(&gvk, "endpointslices");
        let slices: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);
        let vip = create_web_service(&client).await;
        let obj: DynamicObject =
            serde_json::from_value(slice_v1beta1(&[B0, B1])).expect("dynamic object");
        slices
            .create(&PostParams::default(), &obj)
            .await
            .expect("create v1beta1 slice");
        let listed: ObjectList<DynamicObject> =
            slices.list(&Default::default()).await.expect("list");
        assert_eq!(listed.items.len(), 1);

        let agent = f.agent(&[
            "--kubeconfig".into(),
            server.kubeconfig().display().to_string(),
        ]);
        let fb = f.clone();
        tokio::task::spawn_blocking(move || {
            eventually("the VIP answers", 30, || fb.get(vip).is_ok());
            assert_eq!(
                fb.servers(vip, 16),
                BTreeSet::from(["b0".to_string(), "b1".to_string()])
            );
        })
        .await
        .expect("traffic");
        assert!(
            agent.log().contains("V1beta1"),
            "the agent says which version it reads:\n{}",
            agent.log()
        );

        // A change of the v1beta1 slice reaches the datapath.
        let mut current = slices.get("web-1").await.expect("get");
        let mut changed: DynamicObject =
            serde_json::from_value(slice_v1beta1(&[B1])).expect("dynamic object");
        changed.metadata.resource_version = current.metadata.resource_version.take();
        slices
            .replace("web-1", &PostParams::default(), &changed)
            .await
            .expect("replace");
        let fb = f.clone();
        tokio::task::spawn_blocking(move || fb.wait_only_b1(vip, "only b1 is left", 15))
            .await
            .expect("update");
        // And its deletion: no backend, the VIP refuses.
        slices
            .delete("web-1", &DeleteParams::default())
            .await
            .expect("delete");
        let fb = f.clone();
        tokio::task::spawn_blocking(move || {
            eventually("no backend left", 15, || {
                fb.frontend(vip)
                    .is_some_and(|s| s["backends"].as_array().is_some_and(|b| b.is_empty()))
            });
            assert!(fb.get(vip).is_err());
        })
        .await
        .expect("delete");
        drop(agent);
        drop(server);
    });
}

#[test]
fn api_server_outage_keeps_traffic_and_changes_after_it_are_applied() {
    let f = Arc::new(Fixture::new());
    in_node(&f, |f| async move {
        let mut server = KubeApiServer::start().await;
        let client = server.client().await;
        let vip = create_web(&client, &[B0, B1]).await;
        let agent = f.agent(&[
            "--kubeconfig".into(),
            server.kubeconfig().display().to_string(),
        ]);
        let fb = f.clone();
        tokio::task::spawn_blocking(move || {
            eventually("the VIP answers", 30, || fb.get(vip).is_ok())
        })
        .await
        .expect("up");

        // 60 s without an API server: the datapath keeps serving the last state.
        server.stop_apiserver();
        let fb = f.clone();
        let (ok, failed) = tokio::task::spawn_blocking(move || {
            let (mut ok, mut failed) = (0, 0);
            let end = std::time::Instant::now() + Duration::from_secs(60);
            while std::time::Instant::now() < end {
                match fb.get(vip) {
                    Ok(_) => ok += 1,
                    Err(_) => failed += 1,
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            (ok, failed)
        })
        .await
        .expect("outage traffic");
        println!("during the 60 s outage: {ok} connections succeeded, {failed} failed");
        assert_eq!(failed, 0);
        assert!(ok > 100);

        // The server returns; a change made now reaches the datapath (watch resumed, relisted).
        server.restart_apiserver().await;
        let client = server.client().await;
        let slices: Api<EndpointSlice> = Api::namespaced(client, "default");
        let mut current = slices.get("web-1").await.expect("get slice");
        current.endpoints = slice(&[B1]).endpoints;
        slices
            .replace("web-1", &PostParams::default(), &current)
            .await
            .expect("replace slice");
        let fb = f.clone();
        tokio::task::spawn_blocking(move || {
            // Not a latency bound: each watch retries with client-go's backoff (up to 30 s,
            // jittered), and a request sent while the server was still starting waits for it;
            // seen here: the first event 92 s after the last failed attempt.
            fb.wait_only_b1(vip, "the change after the outage is applied", 180)
        })
        .await
        .expect("after outage");
        drop(agent);
        drop(server);
    });
}

#[test]
fn a_service_that_would_overflow_is_refused_whole_and_cleanup_removes_everything() {
    let f = Fixture::new();
    let dir = tempfile::tempdir().expect("tempdir");
    write_atomic(
        &dir.path().join("web.yaml"),
        &manifest("10.96.0.52", &[B0, B1]),
    );
    // 12 backends: 13 entries, more than the 8-entry map has left after web's 3.
    let many: Vec<Ipv4Addr> = (10..22).map(|i| Ipv4Addr::new(10, 244, 9, i)).collect();
    write_atomic(
        &dir.path().join("big.yaml"),
        &manifest("10.96.0.53", &many)
            .replace("name: web", "name: big")
            .replace("service-name: web", "service-name: big"),
    );
    let mut args = vec!["--manifests".to_string(), dir.path().display().to_string()];
    args.extend(["--services-map-size", "8"].map(String::from));
    let mut agent = f.agent(&args);
    let web = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 52), 80);
    eventually("web answers", 20, || f.get(web).is_ok());
    eventually("the refusal is counted", 10, || {
        f.http(10249, "/metrics")
            .contains("petrel_frontends_refused 1")
    });
    assert!(
        f.frontend(SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 53), 80))
            .is_none(),
        "never half programmed"
    );
    assert!(
        agent.log().contains("SERVICES map full"),
        "a log line says why"
    );
    assert!(
        agent.log().contains("default/big"),
        "the log line names the service"
    );
    assert!(
        f.http(10249, "/metrics")
            .contains("petrel_frontend_refusals_total{reason=\"map_full\"}"),
        "refusals are counted by reason"
    );
    // netctl lists the refused frontend with its service and why, and dump-services says
    // that something is missing from its table.
    let refused: serde_json::Value =
        serde_json::from_slice(&f.netctl_run("dump-refused").stdout).expect("json");
    let refused = refused.as_array().expect("a list");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["frontend"], "10.96.0.53:80/TCP", "{refused:?}");
    assert_eq!(refused[0]["service"], "default/big", "{refused:?}");
    assert!(
        refused[0]["why"]
            .as_str()
            .is_some_and(|w| w.starts_with("SERVICES map full")),
        "{refused:?}"
    );
    let dump = f.netctl_run("dump-services");
    assert!(
        String::from_utf8_lossy(&dump.stderr).contains("1 frontend(s) refused"),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );

    agent.stop(libc::SIGTERM);
    assert!(f.get(web).is_ok(), "the datapath stays after SIGTERM");
    // The pinned SERVICES map keeps its 8 entries: asking another size is refused at start,
    // naming the flag and the pinned size, and the datapath keeps serving.
    let mut resized = args.clone();
    resized[3] = "16".into();
    let mut refused = f.agent(&resized);
    assert_ne!(refused.wait_exit(20), Some(0), "another size is refused");
    let log = refused.log();
    assert!(
        log.contains("--services-map-size 16") && log.contains("holds 8 entries"),
        "{log}"
    );
    assert!(f.get(web).is_ok(), "the refused start changed nothing");
    drop(refused);
    let out = std::process::Command::new(petrel_testbed::workspace_bin(
        "petrel-agent",
        "PETREL_AGENT_BIN",
    ))
    .args(["--cleanup", "--bpffs-root"])
    .arg(f.pins.path())
    .output()
    .expect("cleanup");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!f.pins.path().exists(), "every pin removed");
    // Links are released asynchronously once their last pin is gone.
    eventually("nothing translates the VIP any more", 5, || {
        f.get(web).is_err()
    });
}

/// `kubeproxy_sync_proxy_rules_duration_seconds_count`: how many syncs of the maps ran.
fn syncs(f: &Fixture) -> u64 {
    f.http(10249, "/metrics")
        .lines()
        .find_map(|l| l.strip_prefix("kubeproxy_sync_proxy_rules_duration_seconds_count "))
        .and_then(|v| v.trim().parse().ok())
        .expect("sync count in /metrics")
}

#[test]
fn labelled_services_are_never_sent_and_node_heartbeats_do_not_sync() {
    use kube::api::{Patch, PatchParams};
    let f = Arc::new(Fixture::new());
    in_node(&f, |f| async move {
        let server = KubeApiServer::start().await;
        let client = server.client().await;
        let vip = create_web(&client, &[B0]).await;
        // A service another proxy handles, and its slice (the EndpointSlice controller copies
        // the label onto it).
        let proxy_name = || {
            Some(
                [(
                    "service.kubernetes.io/service-proxy-name".to_string(),
                    "other-proxy".to_string(),
                )]
                .into(),
            )
        };
        let services: Api<Service> = Api::namespaced(client.clone(), "default");
        let mut other = services.get("web").await.expect("web");
        other.metadata = ObjectMeta {
            labels: proxy_name(),
            ..meta("other")
        };
        if let Some(spec) = other.spec.as_mut() {
            spec.cluster_ip = None;
            spec.cluster_ips = None;
        }
        let other = services
            .create(&PostParams::default(), &other)
            .await
            .expect("other service");
        let other_vip = SocketAddrV4::new(
            other
                .spec
                .and_then(|s| s.cluster_ip)
                .expect("clusterIP")
                .parse()
                .expect("v4"),
            80,
        );
        let mut other_slice = slice(&[B1]);
        other_slice.metadata = ObjectMeta {
            labels: Some(
                [
                    (
                        "kubernetes.io/service-name".to_string(),
                        "other".to_string(),
                    ),
                    (
                        "service.kubernetes.io/service-proxy-name".to_string(),
                        "other-proxy".to_string(),
                    ),
                ]
                .into(),
            ),
            ..meta("other-1")
        };
        let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
        slices
            .create(&PostParams::default(), &other_slice)
            .await
            .expect("other slice");
        let agent = f.agent(&[
            "--kubeconfig".into(),
            server.kubeconfig().display().to_string(),
            "--sync-period=1h".into(),
        ]);
        let fb = f.clone();
        let quiet = tokio::task::spawn_blocking(move || {
            eventually("the VIP answers", 30, || fb.get(vip).is_ok());
            assert!(fb.frontend(other_vip).is_none(), "{}", fb.netctl());
            // Settled: no sync for two seconds.
            let mut last = syncs(&fb);
            eventually("syncs settle", 20, || {
                std::thread::sleep(Duration::from_secs(2));
                let now = syncs(&fb);
                std::mem::replace(&mut last, now) == now
            });
            last
        })
        .await
        .expect("programmed");

        // Kubelet's heartbeats: status updates that change nothing petrel reads.
        let nodes: Api<Node> = Api::all(client.clone());
        for i in 0..5 {
            let beat = k8s_openapi::jiff::Timestamp::now().to_string();
            let status = serde_json::json!({"status": {"conditions": [{
                "type": "Ready", "status": "True", "reason": "KubeletReady",
                "message": format!("heartbeat {i}"),
                "lastHeartbeatTime": beat, "lastTransitionTime": beat,
            }]}});
            nodes
                .patch_status("n1", &PatchParams::default(), &Patch::Merge(&status))
                .await
                .expect("heartbeat");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // A change to the labelled service's slice is not sent either.
        let mut current = slices.get("other-1").await.expect("other slice");
        current.endpoints = slice(&[B0, B1]).endpoints;
        slices
            .replace("other-1", &PostParams::default(), &current)
            .await
            .expect("replace other slice");
        tokio::time::sleep(Duration::from_secs(1)).await;
        let fb = f.clone();
        tokio::task::spawn_blocking(move || {
            assert_eq!(
                syncs(&fb),
                quiet,
                "a heartbeat or a foreign slice woke the sync"
            );
        })
        .await
        .expect("no sync");

        // The control: a change petrel reads does sync, and the labelled service stays out.
        let mut current = slices.get("web-1").await.expect("web slice");
        current.endpoints = slice(&[B1]).endpoints;
        slices
            .replace("web-1", &PostParams::default(), &current)
            .await
            .expect("replace web slice");
        let fb = f.clone();
        tokio::task::spawn_blocking(move || {
            fb.wait_only_b1(vip, "only b1 is left", 15);
            assert!(syncs(&fb) > quiet);
            assert!(fb.frontend(other_vip).is_none(), "{}", fb.netctl());
        })
        .await
        .expect("control");
        drop(agent);
        drop(server);
    });
}
