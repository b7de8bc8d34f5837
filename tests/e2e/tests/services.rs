//! Upstream `[sig-network]` Service tests that need the real agent, the real kube-apiserver and
//! a client outside the node: a simulated node (two backend pods) whose uplink `ext0` holds the
//! node address and leads to an external host, which plays the load balancer and the off-node
//! client. The API server runs in the node's namespace, as the agent reaches it on 127.0.0.1.

use std::{
    collections::BTreeSet,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4, TcpStream},
    sync::Arc,
};

use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::{EndpointConditions, EndpointSlice},
};
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use petrel_testbed::{
    BpffsRoot,
    agent::{Agent, eventually},
    apiserver::KubeApiServer,
    netns::{Node as SimNode, enter},
    objects, pod, require_root, unique,
};

const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
/// The external host on `ext0`: the load balancer probing the node, and the off-node client.
const EXT: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
const B0: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 3);
const B1: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 4);
/// A pod of another node (no such pod here: it only counts, or not, as a local endpoint).
const ELSEWHERE: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);

struct Fixture {
    _servers: Vec<pod::Server>,
    node: SimNode,
    pins: BpffsRoot,
    state: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        require_root();
        let pins = BpffsRoot::new(&unique("petrel-svc-"));
        let mut node = SimNode::new(&unique("sn"));
        node.add_external(&unique("sx"), "ext0", NODE_IP, EXT);
        let mut servers = Vec::new();
        for (name, ip) in [("b0", B0), ("b1", B1)] {
            let p = node.add_pod(&unique("sb"), ip);
            servers.push(pod::Server::start(
                Some(p.ns.path()),
                name,
                SocketAddrV4::new(ip, objects::POD_PORT),
            ));
        }
        Fixture {
            _servers: servers,
            node,
            pins,
            state: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn agent(&self, server: &KubeApiServer, extra: &[&str]) -> Agent {
        let cni = self.state.path().join("cni");
        let mut args: Vec<String> = vec![
            "--kubeconfig".into(),
            server.kubeconfig().display().to_string(),
            "--bpffs-root".into(),
            self.pins.path().display().to_string(),
            "--state-dir".into(),
            self.state.path().display().to_string(),
            // Never the host's real CNI paths.
            "--pod-cidr-file".into(),
            cni.join("pod-cidr").display().to_string(),
            "--cni-conf-file".into(),
            cni.join("05-petrel.conflist").display().to_string(),
        ];
        args.extend(
            [
                "--node-name",
                "n1",
                "--socket-lb",
                "false",
                "--pod-interface-prefix",
                "h-",
                "--min-sync-period",
                "20ms",
            ]
            .map(String::from),
        );
        args.extend(extra.iter().map(|s| s.to_string()));
        Agent::start(&self.node.ns.path(), &args)
    }

    /// GET / on `to` from the external host: the raw answer (status line, headers, body).
    fn ext_http(&self, to: SocketAddrV4) -> std::io::Result<String> {
        http_from(self.node.externals[0].path(), to, "/")
    }

    /// GET `path` on the agent's port `port` (10249, 10256), from inside the node.
    fn agent_http(&self, port: u16, path: &str) -> String {
        http_from(
            self.node.ns.path(),
            SocketAddrV4::new(Ipv4Addr::LOCALHOST, port),
            path,
        )
        .expect("the agent answers")
    }

    /// `n` connections from the external host to `to`: which backends answered.
    fn ext_servers(&self, to: SocketAddrV4, n: usize) -> Vec<pod::Reply> {
        let ns = self.node.externals[0].path();
        std::thread::spawn(move || {
            enter(&ns);
            (0..n)
                .map(|_| pod::tcp_get(to).expect("the service answers"))
                .collect()
        })
        .join()
        .expect("client thread")
    }

    /// The netctl entry of frontend `fe`, if programmed (None while nothing is pinned).
    fn frontend(&self, fe: SocketAddrV4) -> Option<serde_json::Value> {
        let out = std::process::Command::new(petrel_testbed::workspace_bin(
            "netctl",
            "PETREL_NETCTL_BIN",
        ))
        .arg("--bpffs-root")
        .arg(self.pins.path())
        .arg("--state-dir")
        .arg(self.state.path())
        .args(["dump-services", "-o", "json"])
        .output()
        .expect("netctl");
        if !out.status.success() {
            // Not pinned yet (the agent is starting): nothing is programmed.
            eprintln!("netctl: {}", String::from_utf8_lossy(&out.stderr));
            return None;
        }
        let all: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        all.as_array()?
            .iter()
            .find(|s| {
                s["frontend"]["addr"] == fe.ip().to_string() && s["frontend"]["port"] == fe.port()
            })
            .cloned()
    }
}

/// GET `path` on `to` from the namespace at `ns`: the raw answer (status line, headers, body).
fn http_from(ns: std::path::PathBuf, to: SocketAddrV4, path: &str) -> std::io::Result<String> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n");
    std::thread::spawn(move || {
        enter(&ns);
        let mut s = TcpStream::connect_timeout(&to.into(), pod::TIMEOUT)?;
        s.set_read_timeout(Some(pod::TIMEOUT))?;
        s.write_all(request.as_bytes())?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })
    .join()
    .expect("http thread")
}

/// Runs `body` on a tokio runtime whose threads live in the node's namespace (where the API
/// server fixture must run), then the blocking checks `body` hands back run on plain threads.
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

/// Runs a blocking check (the clients enter other namespaces) off the runtime.
async fn check(f: &Arc<Fixture>, what: impl FnOnce(&Fixture) + Send + 'static) {
    let f = f.clone();
    tokio::task::spawn_blocking(move || what(&f))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
}

async fn create_node(client: &kube::Client) {
    let node: Node = objects::node("n1", NODE_IP, "10.244.7.0/24".parse().expect("cidr"));
    Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &node)
        .await
        .expect("node");
}

/// The slice of service `svc`: `(address, node, ready)`.
fn slice(svc: &str, eps: &[(Ipv4Addr, &str, bool)]) -> EndpointSlice {
    let mut s = objects::slice(
        svc,
        &eps.iter()
            .map(|(ip, node, _)| (*ip, node.to_string()))
            .collect::<Vec<_>>(),
    );
    for (e, (_, _, ready)) in s.endpoints.iter_mut().zip(eps) {
        e.conditions = Some(EndpointConditions {
            ready: Some(*ready),
            serving: Some(*ready),
            terminating: Some(false),
        });
    }
    s
}

fn node_port(svc: &Service) -> u16 {
    svc.spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .and_then(|p| p[0].node_port)
        .and_then(|p| u16::try_from(p).ok())
        .expect("the API server allocated a nodePort")
}

/// Mirrors upstream's [sig-network] LoadBalancers ESIPP "should work for type=LoadBalancer"
/// (test/e2e/network/loadbalancer.go): the health check node port the API server allocated
/// answers a load balancer's probe with kube-proxy's JSON, 200 while this node has a ready
/// endpoint and 503 once it has none, and closes with the service; the client's address reaches
/// the backend. The agent runs with `--nodeport-addresses 10.99.0.0/24`: the port listens on the
/// node addresses inside it, and follows one that is added.
#[test]
fn esipp_should_work_for_type_loadbalancer_health_check_node_port() {
    let f = Arc::new(Fixture::new());
    in_node(&f, |f| async move {
        let server = KubeApiServer::start().await;
        let client = server.client().await;
        create_node(&client).await;
        let services: Api<Service> = Api::namespaced(client.clone(), "default");
        let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
        let local_lb = |name: &str, hc_port: Option<i32>| {
            let mut svc = objects::service(name, None);
            if let Some(spec) = svc.spec.as_mut() {
                spec.type_ = Some("LoadBalancer".into());
                spec.external_traffic_policy = Some("Local".into());
                spec.health_check_node_port = hc_port;
            }
            svc
        };
        // Bad input: another service's healthCheckNodePort (asked for, before web's are
        // allocated) is held by another process on the node address.
        let squatted_port = 31999;
        services
            .create(
                &PostParams::default(),
                &local_lb("squatted", Some(squatted_port)),
            )
            .await
            .expect("service with a requested healthCheckNodePort");
        let squatted = SocketAddrV4::new(NODE_IP, squatted_port as u16);
        let squatter = std::net::TcpListener::bind(squatted).expect("bind in the node");
        let svc = local_lb("web", None);
        let created = services
            .create(&PostParams::default(), &svc)
            .await
            .expect("service");
        let hc_port = created
            .spec
            .as_ref()
            .and_then(|s| s.health_check_node_port)
            .and_then(|p| u16::try_from(p).ok())
            .expect("the 1.20 server allocates spec.healthCheckNodePort for eTP Local");
        let np = node_port(&created);
        let lb_ip = Ipv4Addr::new(203, 0, 113, 10);
        services
            .patch_status(
                "web",
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({
                    "status": {"loadBalancer": {"ingress": [{"ip": lb_ip.to_string()}]}}
                })),
            )
            .await
            .expect("status.loadBalancer.ingress");
        slices
            .create(
                &PostParams::default(),
                &slice("web", &[(B0, "n1", true), (ELSEWHERE, "n2", true)]),
            )
            .await
            .expect("slice");
        // A short resync: a freed port is bound at the next sync.
        let agent = f.agent(
            &server,
            &[
                "--nodeport-addresses",
                "10.99.0.0/24",
                "--sync-period",
                "2s",
            ],
        );
        let hc = SocketAddrV4::new(NODE_IP, hc_port);

        check(&f, move |f| {
            eventually("the health check node port answers 200", 30, || {
                f.ext_http(hc).is_ok_and(|a| a.starts_with("HTTP/1.1 200"))
            });
            let answer = f.ext_http(hc).expect("answers");
            let body = &answer[answer.find("\r\n\r\n").expect("a body") + 4..];
            let json: serde_json::Value = serde_json::from_str(body).expect("JSON");
            assert_eq!(json["service"]["namespace"], "default", "{answer}");
            assert_eq!(json["service"]["name"], "web", "{answer}");
            assert_eq!(json["localEndpoints"], 1, "{answer}");
            assert_eq!(json["serviceProxyHealthy"], true, "{answer}");
            assert!(
                answer
                    .to_ascii_lowercase()
                    .contains("x-load-balancing-endpoint-weight: 1"),
                "{answer}"
            );
            // Only on the NodePort addresses: the node's pod gateway address is outside them.
            let gw =
                SocketAddrV4::new(petrel_testbed::netns::GATEWAY.parse().expect("ip"), hc_port);
            let refused = f
                .ext_http(gw)
                .expect_err("not served outside --nodeport-addresses");
            assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
            // ESIPP: through the LB IP and the NodePort, the local endpoint sees the client.
            eventually("the LB IP is programmed", 15, || {
                f.frontend(SocketAddrV4::new(lb_ip, 80)).is_some()
            });
            for to in [SocketAddrV4::new(lb_ip, 80), SocketAddrV4::new(NODE_IP, np)] {
                for r in f.ext_servers(to, 4) {
                    assert_eq!(
                        (r.server.as_str(), r.client_seen.as_str()),
                        ("b0", "10.99.0.2"),
                        "to {to}"
                    );
                }
            }
            // An address added inside the CIDR gets the port; removed, it loses it.
            f.node
                .ns
                .exec("ip", &["addr", "add", "10.99.0.9/24", "dev", "ext0"]);
            let added = SocketAddrV4::new(Ipv4Addr::new(10, 99, 0, 9), hc_port);
            eventually("the added address serves the health check", 15, || {
                f.ext_http(added)
                    .is_ok_and(|a| a.starts_with("HTTP/1.1 200"))
            });
            f.node
                .ns
                .exec("ip", &["addr", "del", "10.99.0.9/24", "dev", "ext0"]);
            eventually("the removed address stops serving it", 15, || {
                f.ext_http(added).is_err()
            });
            assert!(
                f.ext_http(hc)
                    .expect("still served")
                    .starts_with("HTTP/1.1 200")
            );
            // The held port: counted, never a 503 on /healthz, the other service served.
            let metrics = f.agent_http(10249, "/metrics");
            assert!(
                metrics.contains("petrel_health_check_node_ports_failed 1"),
                "{metrics}"
            );
            assert!(
                metrics.contains("petrel_health_check_node_ports_open 1"),
                "{metrics}"
            );
            let healthz = f.agent_http(10256, "/healthz");
            assert!(healthz.starts_with("HTTP/1.1 200"), "{healthz}");
        })
        .await;
        let log = agent.log();
        assert!(
            log.lines().any(|l| l.contains("WARN")
                && l.contains("default/squatted")
                && l.contains("31999")),
            "a warning names the service and its port:\n{log}"
        );
        // The other process lets go: the next sync serves it (no local endpoint: 503).
        drop(squatter);
        check(&f, move |f| {
            eventually("the freed port is served", 15, || {
                f.ext_http(squatted).is_ok_and(|a| {
                    a.starts_with("HTTP/1.1 503") && a.contains("\"name\": \"squatted\"")
                })
            });
        })
        .await;

        // The local endpoint turns not ready: no local endpoint, 503 (the remote one is ready).
        let mut current = slices.get("web-1").await.expect("get slice");
        current.endpoints = slice("web", &[(B0, "n1", false), (ELSEWHERE, "n2", true)]).endpoints;
        slices
            .replace("web-1", &PostParams::default(), &current)
            .await
            .expect("replace slice");
        check(&f, move |f| {
            eventually("the health check node port answers 503", 15, || {
                f.ext_http(hc).is_ok_and(|a| a.starts_with("HTTP/1.1 503"))
            });
            let answer = f.ext_http(hc).expect("answers");
            assert!(answer.contains("\"localEndpoints\": 0"), "{answer}");
            assert!(answer.contains("\"name\": \"web\""), "{answer}");
        })
        .await;

        // The service goes: the port refuses connections.
        services
            .delete("web", &DeleteParams::default())
            .await
            .expect("delete");
        check(&f, move |f| {
            eventually("the health check node port is closed", 15, || {
                f.ext_http(hc)
                    .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
            });
        })
        .await;
        drop(agent);
        drop(server);
    });
}

/// Mirrors upstream's [sig-network] Services "should be able to switch session affinity for
/// NodePort service" (test/e2e/network/service.go): with sessionAffinity ClientIP every
/// connection from one client outside the node reaches one backend; switched to None through
/// the API, the connections spread over both backends.
#[test]
fn should_be_able_to_switch_session_affinity_for_nodeport_service() {
    let f = Arc::new(Fixture::new());
    in_node(&f, |f| async move {
        let server = KubeApiServer::start().await;
        let client = server.client().await;
        create_node(&client).await;
        let services: Api<Service> = Api::namespaced(client.clone(), "default");
        let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
        let mut svc = objects::service("affinity", None);
        if let Some(spec) = svc.spec.as_mut() {
            spec.type_ = Some("NodePort".into());
            spec.session_affinity = Some("ClientIP".into());
        }
        let created = services
            .create(&PostParams::default(), &svc)
            .await
            .expect("service");
        slices
            .create(
                &PostParams::default(),
                &slice("affinity", &[(B0, "n1", true), (B1, "n1", true)]),
            )
            .await
            .expect("slice");
        let np = SocketAddrV4::new(NODE_IP, node_port(&created));
        let agent = f.agent(&server, &[]);
        check(&f, move |f| {
            eventually("the NodePort has affinity", 30, || {
                f.frontend(np)
                    .is_some_and(|s| s["affinity_timeout_s"] == 10800)
            });
            // Upstream's checkAffinity(true): every answer from one backend.
            let seen: BTreeSet<String> = f
                .ext_servers(np, 15)
                .into_iter()
                .map(|r| r.server)
                .collect();
            assert_eq!(seen.len(), 1, "one client, one backend: {seen:?}");
        })
        .await;

        let mut current = services.get("affinity").await.expect("get service");
        if let Some(spec) = current.spec.as_mut() {
            spec.session_affinity = Some("None".into());
            spec.session_affinity_config = None;
        }
        services
            .replace("affinity", &PostParams::default(), &current)
            .await
            .expect("replace service");
        check(&f, move |f| {
            eventually("the NodePort has no affinity", 15, || {
                f.frontend(np)
                    .is_some_and(|s| s["affinity_timeout_s"].is_null())
            });
            // checkAffinity(false): not every answer from one backend. 30 connections from new
            // source ports, two backends: all on one would be a 1 in 2^29 chance.
            let seen: BTreeSet<String> = f
                .ext_servers(np, 30)
                .into_iter()
                .map(|r| r.server)
                .collect();
            assert_eq!(
                seen,
                BTreeSet::from(["b0".to_string(), "b1".to_string()]),
                "spread over the backends"
            );
        })
        .await;
        drop(agent);
        drop(server);
    });
}
