//! petrel on a real cluster: kubelet and containerd on every node calling petrel-cni through
//! libcni, petrel installed by `kubectl apply -k` of the test-cluster overlay of deploy/, no
//! kube-proxy. One cluster (tests/realnode/cluster.sh, as `cargo xtask cluster up`) for the whole
//! scenario, since bringing one up is most of the cost; each step says what it checks.
//!
//! Needs root and the v1.20.2 binaries (`cargo xtask test` builds and names them).

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::PathBuf,
    process::{Child, Stdio},
    time::Duration,
};

use petrel_testbed::{realnode::RealCluster, workspace_bin};

const OVERLAY: &str = "tests/realnode/overlay";
const LONG: Duration = Duration::from_secs(240);

fn overlay() -> String {
    petrel_testbed::realnode::realnode_dir()
        .join("overlay")
        .to_string_lossy()
        .into_owned()
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `kubectl get` of one jsonpath.
fn get(c: &RealCluster, args: &[&str], jsonpath: &str) -> String {
    let jp = format!("-o=jsonpath={jsonpath}");
    let mut all = vec!["get"];
    all.extend(args);
    all.push(&jp);
    c.kubectl_ok(&all).trim().to_string()
}

/// The answer of `petrel-pod get PROTO ADDR` run in pod `pod`: (server name, client address the
/// server saw, the peer address the client saw).
fn get_in_pod(c: &RealCluster, pod: &str, proto: &str, addr: &str) -> (String, String, String) {
    let out = c.kubectl(&[
        "exec",
        pod,
        "--",
        "/usr/local/bin/petrel-pod",
        "get",
        proto,
        addr,
    ]);
    assert!(
        out.status.success(),
        "{proto} {addr} from pod {pod}: {}",
        text(&out)
    );
    let s = String::from_utf8_lossy(&out.stdout);
    let f: Vec<&str> = s.split_whitespace().collect();
    assert_eq!(f.len(), 3, "unexpected answer {s:?}");
    (f[0].to_string(), f[1].to_string(), f[2].to_string())
}

/// The web pods: name -> (node, IP).
fn web_pods(c: &RealCluster) -> Vec<(String, String, String)> {
    let s = get(
        c,
        &["pods", "-l", "app=web"],
        r#"{range .items[*]}{.metadata.name} {.spec.nodeName} {.status.podIP}{"\n"}{end}"#,
    );
    s.lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                f[0].to_string(),
                f.get(1).unwrap_or(&"").to_string(),
                f.get(2).unwrap_or(&"").to_string(),
            )
        })
        .collect()
}

fn agent_pod_on(c: &RealCluster, node: &str) -> Option<(String, bool)> {
    let s = get(
        c,
        &[
            "pods",
            "-n",
            "petrel-system",
            "--field-selector",
            &format!("spec.nodeName={node}"),
        ],
        r#"{range .items[*]}{.metadata.name} {.metadata.deletionTimestamp} {.status.containerStatuses[0].ready}{"\n"}{end}"#,
    );
    s.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // A pod being deleted has a deletionTimestamp (then three fields).
        (f.len() == 2).then(|| (f[0].to_string(), f[1] == "true"))
    })
}

const WORKLOAD: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      # One per node, so the Service has a backend on each.
      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
            - labelSelector: {matchLabels: {app: web}}
              topologyKey: kubernetes.io/hostname
      terminationGracePeriodSeconds: 1
      containers:
        - name: web
          image: petrel.test/pod:dev
          args: ["serve", "$(POD_NAME)", "0.0.0.0:8080"]
          env:
            - name: POD_NAME
              valueFrom: {fieldRef: {fieldPath: metadata.name}}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: NodePort
  selector: {app: web}
  ports:
    - {name: tcp, port: 80, targetPort: 8080, protocol: TCP}
    - {name: udp, port: 80, targetPort: 8080, protocol: UDP}
"#;

fn client_pod(node: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: client}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  containers:
    - name: client
      image: petrel.test/pod:dev
      command: ["sleep", "100000"]
"#
    )
}

/// A connected UDP socket in pod `pod` to `addr` (`petrel-pod session`), kept across steps.
struct Session {
    child: Child,
    out: BufReader<std::process::ChildStdout>,
}

impl Session {
    fn start(cluster_dir_env: &RealCluster, pod: &str, addr: &str) -> Session {
        let mut cmd = cluster_dir_env.kubectl_command(&[
            "exec",
            "-i",
            pod,
            "--",
            "/usr/local/bin/petrel-pod",
            "session",
            addr,
        ]);
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("kubectl exec");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        out.read_line(&mut line).expect("reading the session");
        assert_eq!(line.trim(), "ok connected", "the session did not start");
        Session { child, out }
    }

    /// One request on the socket: the server's name.
    fn request(&mut self) -> String {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        stdin.write_all(b"x 0\n").expect("writing to the session");
        stdin.flush().expect("flush");
        let mut line = String::new();
        self.out.read_line(&mut line).expect("reading the session");
        assert!(line.starts_with("ok "), "request failed: {line:?}");
        line.split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_string()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        petrel_testbed::stop_child(&mut self.child, libc::SIGTERM, Duration::from_secs(5));
    }
}

#[test]
fn petrel_installed_by_its_daemonset_serves_a_real_cluster() {
    let agent = workspace_bin("petrel-agent", "PETREL_AGENT_BIN");
    let release: PathBuf = agent.parent().expect("release dir").to_path_buf();
    let pod_bin = workspace_bin("petrel-pod", "PETREL_POD_BIN");
    let c = RealCluster::up(2, &release);
    let (n1, n2) = (c.node(1), c.node(2));

    // What an earlier install or another CNI left: a stale petrel-cni on node 1 (replaced by the
    // init container), another network's conflist on node 2 (petrel's 05- sorts first, so the
    // runtime takes petrel's; the other file is not petrel's and stays), and on node 1 one that
    // sorts before petrel's (the runtime would take it: the agent says so and is not Ready).
    let stale = c.on_node(
        1,
        "sh",
        &["-c", "printf '#!/bin/sh\nexit 1\n' >/opt/cni/bin/petrel-cni && chmod +x /opt/cni/bin/petrel-cni"],
    );
    assert!(stale.status.success(), "{}", text(&stale));
    let other =
        r#"{"cniVersion": "0.4.0", "name": "other", "plugins": [{"type": "host-local-net"}]}"#;
    let o = c.on_node(
        2,
        "sh",
        &[
            "-c",
            &format!("echo '{other}' >/etc/cni/net.d/10-other.conflist"),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let first = format!("echo '{}' >/etc/cni/net.d/00-other.conflist", other);
    let o = c.on_node(1, "sh", &["-c", &first]);
    assert!(o.status.success(), "{}", text(&o));

    // Installed as users install it; every node becomes Ready only through petrel's conflist.
    eprintln!("step: kubectl apply -k {OVERLAY}");
    c.kubectl_ok(&["apply", "-k", &overlay()]);

    eprintln!("step: a conflist sorting before petrel's on node 1: the agent there is not Ready");
    let shadowed = "another CNI config sorts before petrel's";
    let agent1 = c.wait("node 1's agent to report the other conflist", LONG, || {
        let (pod, ready) = agent_pod_on(&c, &n1)?;
        let logs = c.kubectl(&["-n", "petrel-system", "logs", &pod, "-c", "agent"]);
        let logs = String::from_utf8_lossy(&logs.stdout).into_owned();
        logs.lines()
            .find(|l| l.contains(shadowed))
            .map(|l| (pod, ready, l.to_string()))
    });
    assert!(
        agent1.2.contains("00-other.conflist"),
        "the log names the file: {}",
        agent1.2
    );
    // Readiness is probed every 5 s: a while after the report, still not Ready.
    std::thread::sleep(Duration::from_secs(12));
    let (pod, ready) = agent_pod_on(&c, &n1).expect("node 1's agent");
    assert_eq!(pod, agent1.0);
    assert!(
        !ready,
        "node 1's agent is Ready while another conflist takes its pods"
    );
    assert!(
        c.on_node(1, "test", &["-e", "/etc/cni/net.d/00-other.conflist"])
            .status
            .success(),
        "without cni-exclusive the other conflist is left in place"
    );
    let o = c.on_node(1, "rm", &["/etc/cni/net.d/00-other.conflist"]);
    assert!(o.status.success(), "{}", text(&o));
    c.kubectl_ok(&[
        "-n",
        "petrel-system",
        "rollout",
        "status",
        "ds/petrel-agent",
        "--timeout=240s",
    ]);
    assert_eq!(
        get(
            &c,
            &["ds", "-n", "petrel-system", "petrel-agent"],
            "{.status.numberReady}"
        ),
        c.nodes().to_string(),
        "the DaemonSet is Ready on every node"
    );
    c.kubectl_ok(&[
        "wait",
        "--for=condition=Ready",
        "node",
        "--all",
        "--timeout=120s",
    ]);
    for i in 1..=c.nodes() {
        let conf = c.on_node(i, "cat", &["/etc/cni/net.d/05-petrel.conflist"]);
        assert!(
            conf.status.success(),
            "conflist on node {i}: {}",
            text(&conf)
        );
        let bin = c.on_node(
            i,
            "cmp",
            &[
                "/opt/cni/bin/petrel-cni",
                &release.join("petrel-cni").to_string_lossy(),
            ],
        );
        assert!(
            bin.status.success(),
            "the image's petrel-cni installed on node {i}: {}",
            text(&bin)
        );
    }

    eprintln!("step: a Deployment, a NodePort Service and a client pod");
    c.apply(WORKLOAD);
    c.apply(&client_pod(&n2));
    c.kubectl_ok(&["rollout", "status", "deploy/web", "--timeout=240s"]);
    c.kubectl_ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/client",
        "--timeout=240s",
    ]);
    let pods = web_pods(&c);
    assert_eq!(pods.len(), 2, "{pods:?}");
    // Each pod's address comes from petrel-cni: inside its node's podCIDR, reserved in the
    // node's IPAM store.
    for (name, node, ip) in &pods {
        let cidr = get(&c, &["node", node], "{.spec.podCIDR}");
        let net: ipnet::Ipv4Net = cidr.parse().expect("podCIDR");
        let addr: std::net::Ipv4Addr = ip.parse().expect("pod IP");
        assert!(
            net.contains(&addr),
            "pod {name} on {node}: {ip} not in {cidr}"
        );
        let i = if *node == n1 { 1 } else { 2 };
        let r = c.on_node(
            i,
            "test",
            &["-f", &format!("/var/lib/petrel/ipam/petrel/{ip}")],
        );
        assert!(r.status.success(), "no IPAM reservation of {ip} on {node}");
    }
    let (web1, _, web1_ip) = pods
        .iter()
        .find(|p| p.1 == n1)
        .expect("a web pod on node 1")
        .clone();
    let (web2, _, _) = pods
        .iter()
        .find(|p| p.1 == n2)
        .expect("a web pod on node 2")
        .clone();
    let client_ip = get(&c, &["pod", "client"], "{.status.podIP}");
    let vip = get(&c, &["svc", "web"], "{.spec.clusterIP}");
    let node_port = get(&c, &["svc", "web"], "{.spec.ports[0].nodePort}");

    eprintln!("step: ClusterIP from a pod on node 2 reaches both backends, one across nodes");
    c.wait("the service programmed on node 2", LONG, || {
        let o = c.kubectl(&[
            "exec",
            "client",
            "--",
            "/usr/local/bin/petrel-pod",
            "get",
            "tcp",
            &format!("{vip}:80"),
        ]);
        o.status.success().then_some(())
    });
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..30 {
        let (server, client_seen, peer) = get_in_pod(&c, "client", "tcp", &format!("{vip}:80"));
        assert!(server == web1 || server == web2, "answer from {server}");
        assert_eq!(
            client_seen, client_ip,
            "the backend sees the client pod's own address"
        );
        assert_eq!(
            peer,
            format!("{vip}:80"),
            "the client sees the VIP as its peer"
        );
        seen.insert(server);
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(
        seen.len(),
        2,
        "both backends answer through the ClusterIP: {seen:?}"
    );
    let (server, _, _) = get_in_pod(&c, "client", "udp", &format!("{vip}:80"));
    assert!(server == web1 || server == web2, "UDP answer from {server}");

    eprintln!("step: the Service by its DNS name (cluster DNS through petrel's kube-dns VIP)");
    for name in ["web.default.svc.cluster.local:80", "web:80"] {
        for proto in ["tcp", "udp"] {
            let (server, client_seen, peer) = get_in_pod(&c, "client", proto, name);
            assert!(
                server == web1 || server == web2,
                "{proto} {name}: answer from {server}"
            );
            assert_eq!(client_seen, client_ip, "{proto} {name}");
            assert_eq!(
                peer,
                format!("{vip}:80"),
                "{name} resolves to the ClusterIP"
            );
        }
    }

    eprintln!("step: pod to pod across nodes");
    let (server, client_seen, _) = get_in_pod(&c, "client", "tcp", &format!("{web1_ip}:8080"));
    assert_eq!(
        (server.as_str(), client_seen.as_str()),
        (web1.as_str(), client_ip.as_str())
    );

    eprintln!("step: NodePort from outside the cluster, on each node");
    for i in 1..=c.nodes() {
        let target = format!("{}:{node_port}", c.node_ip(i));
        let o = c.outside(&pod_bin, &["get", "tcp", &target]);
        assert!(
            o.status.success(),
            "NodePort {target} from outside: {}",
            text(&o)
        );
        let s = String::from_utf8_lossy(&o.stdout);
        let server = s.split_whitespace().next().unwrap_or_default();
        assert!(
            server == web1 || server == web2,
            "NodePort answer from {server}"
        );
    }

    eprintln!("step: the agent pod on node 2 killed: a connected socket keeps its backend");
    let mut session = Session::start(&c, "client", &format!("{vip}:80"));
    let backend = session.request();
    let (old_agent, _) = agent_pod_on(&c, &n2).expect("an agent pod on node 2");
    c.kubectl_ok(&[
        "-n",
        "petrel-system",
        "delete",
        "pod",
        &old_agent,
        "--grace-period=0",
        "--force",
        "--wait=false",
    ]);
    let mut requests = 0;
    let new_agent = c.wait("a new Ready agent pod on node 2", LONG, || {
        assert_eq!(
            session.request(),
            backend,
            "the connected socket changed backend"
        );
        requests += 1;
        let (_, _, _) = get_in_pod(&c, "client", "tcp", &format!("{vip}:80"));
        agent_pod_on(&c, &n2).filter(|(name, ready)| *name != old_agent && *ready)
    });
    assert!(requests > 0);
    let logs = c.kubectl_ok(&["-n", "petrel-system", "logs", &new_agent.0, "-c", "agent"]);
    let adopted = logs
        .lines()
        .find(|l| l.contains("adopting what the pins hold"))
        .unwrap_or_else(|| panic!("the new agent did not adopt the pins:\n{logs}"));
    assert!(
        !adopted.contains("\"adopted_frontends\":0"),
        "the new agent adopted no frontend: {adopted}"
    );
    assert_eq!(session.request(), backend);
    drop(session);

    eprintln!("step: the DaemonSet rolled to a new image under load: no connection fails");
    c.tag_image("petrel.test/petrel:dev", "petrel.test/petrel:dev2");
    // New connections through the VIP from the client pod, one after another, until told to
    // stop; one line each.
    let script = format!(
        "while [ ! -e /tmp/stop ]; do if /usr/local/bin/petrel-pod get tcp {vip}:80 >/dev/null; \
         then echo ok; else echo fail; fi; done"
    );
    let load = c
        .kubectl_command(&["exec", "client", "--", "sh", "-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("kubectl exec");
    let mut session = Session::start(&c, "client", &format!("{vip}:80"));
    let backend = session.request();
    // The new image, and cni-exclusive on (used after the rollout).
    let image = "petrel.test/petrel:dev2";
    let patch = format!(
        r#"[{{"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": "{image}"}},
            {{"op": "replace", "path": "/spec/template/spec/initContainers/0/image", "value": "{image}"}},
            {{"op": "replace", "path": "/spec/template/spec/initContainers/1/image", "value": "{image}"}},
            {{"op": "add", "path": "/spec/template/spec/containers/0/args/-", "value": "--cni-exclusive"}}]"#
    );
    c.kubectl_ok(&[
        "-n",
        "petrel-system",
        "patch",
        "ds/petrel-agent",
        "--type=json",
        "-p",
        &patch,
    ]);
    let mut from_outside = 0;
    c.wait("the DaemonSet rolled out", LONG, || {
        for i in 1..=c.nodes() {
            let target = format!("{}:{node_port}", c.node_ip(i));
            let o = c.outside(&pod_bin, &["get", "tcp", &target]);
            assert!(
                o.status.success(),
                "NodePort {target} during the rollout: {}",
                text(&o)
            );
            from_outside += 1;
        }
        assert_eq!(
            session.request(),
            backend,
            "the connected socket changed backend"
        );
        let status = c.kubectl(&[
            "-n",
            "petrel-system",
            "rollout",
            "status",
            "ds/petrel-agent",
            "--timeout=1s",
        ]);
        status.status.success().then_some(())
    });
    let images = get(
        &c,
        &["pods", "-n", "petrel-system"],
        "{.items[*].spec.containers[0].image}",
    );
    assert_eq!(
        images,
        ["petrel.test/petrel:dev2"; 2].join(" "),
        "every agent runs the new image"
    );
    c.kubectl_ok(&["exec", "client", "--", "sh", "-c", ": >/tmp/stop"]);
    let load = load.wait_with_output().expect("the load loop");
    let lines = String::from_utf8_lossy(&load.stdout);
    let ok = lines.lines().filter(|l| *l == "ok").count();
    let failed = lines.lines().filter(|l| *l != "ok").count();
    eprintln!(
        "  {ok} connections through the VIP, {failed} failed; {from_outside} NodePort connections"
    );
    assert!(ok > 0, "no connection was made during the rollout");
    assert_eq!(failed, 0, "connections failed during the rollout");
    drop(session);

    eprintln!("step: with cni-exclusive, a conflist sorting before petrel's is renamed aside");
    let o = c.on_node(2, "sh", &["-c", &first]);
    assert!(o.status.success(), "{}", text(&o));
    c.wait(
        "node 2's agent to rename 00-other.conflist aside",
        LONG,
        || {
            let gone = !c
                .on_node(2, "test", &["-e", "/etc/cni/net.d/00-other.conflist"])
                .status
                .success();
            let aside = c
                .on_node(
                    2,
                    "test",
                    &["-f", "/etc/cni/net.d/00-other.conflist.petrel_bak"],
                )
                .status
                .success();
            (gone && aside).then_some(())
        },
    );
    let (_, ready) = agent_pod_on(&c, &n2).expect("node 2's agent");
    assert!(ready, "node 2's agent stays Ready");

    eprintln!("step: node 2's kubelet restarted: its pods keep their addresses");
    let before = get(
        &c,
        &["pods", "--field-selector", &format!("spec.nodeName={n2}")],
        r#"{range .items[*]}{.metadata.name} {.status.podIP} {.status.containerStatuses[0].containerID} {.status.containerStatuses[0].restartCount}{"\n"}{end}"#,
    );
    c.restart_kubelet(2);
    // A pod made after the restart proves kubelet (and petrel-cni through it) works again.
    c.apply(&client_pod(&n2).replace("name: client}", "name: client2}"));
    c.kubectl_ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/client2",
        "--timeout=240s",
    ]);
    let after = get(
        &c,
        &["pods", "--field-selector", &format!("spec.nodeName={n2}")],
        r#"{range .items[*]}{.metadata.name} {.status.podIP} {.status.containerStatuses[0].containerID} {.status.containerStatuses[0].restartCount}{"\n"}{end}"#,
    );
    let after_old: Vec<&str> = after
        .lines()
        .filter(|l| !l.starts_with("client2 "))
        .collect();
    assert_eq!(
        after_old,
        before.lines().collect::<Vec<_>>(),
        "pods on node 2 kept addresses and containers"
    );
    let (server, _, _) = get_in_pod(&c, "client2", "tcp", &format!("{vip}:80"));
    assert!(server == web1 || server == web2, "answer from {server}");
    let (_, seen, _) = get_in_pod(&c, "client", "tcp", &format!("{vip}:80"));
    assert_eq!(seen, client_ip);

    eprintln!("step: a deleted pod's address and interface are released");
    let dev = {
        let o = c.on_node(1, "ip", &["-o", "route", "get", &web1_ip]);
        assert!(o.status.success(), "{}", text(&o));
        let s = String::from_utf8_lossy(&o.stdout).into_owned();
        let f: Vec<&str> = s.split_whitespace().collect();
        let at = f
            .iter()
            .position(|w| *w == "dev")
            .expect("dev in route get");
        f[at + 1].to_string()
    };
    assert!(dev.starts_with("pet"), "the pod's host interface: {dev}");
    c.kubectl_ok(&["scale", "deploy/web", "--replicas=1"]);
    c.kubectl_ok(&["delete", "pod", &web1, "--wait=true", "--timeout=120s"]);
    c.wait(
        "the reservation and interface of the deleted pod to go",
        LONG,
        || {
            let reserved = c
                .on_node(
                    1,
                    "test",
                    &["-e", &format!("/var/lib/petrel/ipam/petrel/{web1_ip}")],
                )
                .status
                .success();
            let link = c.on_node(1, "ip", &["link", "show", &dev]).status.success();
            (!reserved && !link).then_some(())
        },
    );

    eprintln!("step: kubectl delete -k: petrel leaves the nodes as it found them");
    c.kubectl_ok(&["delete", "-k", &overlay(), "--wait=true", "--timeout=180s"]);
    for i in 1..=c.nodes() {
        c.wait(
            &format!("petrel's pins, routes and conflist gone from node {i}"),
            LONG,
            || {
                let pins = c
                    .on_node(i, "test", &["-e", "/sys/fs/bpf/petrel"])
                    .status
                    .success();
                let conf = c
                    .on_node(i, "test", &["-e", "/etc/cni/net.d/05-petrel.conflist"])
                    .status
                    .success();
                let routes = c.on_node(i, "ip", &["route", "show", "proto", "112"]);
                let routes = String::from_utf8_lossy(&routes.stdout).trim().to_string();
                (!pins && !conf && routes.is_empty()).then_some(())
            },
        );
        let left = c.on_node(i, "ls", &["/etc/cni/net.d"]);
        // What petrel moved aside stays for the operator (README: cni-exclusive).
        let want = if i == 2 {
            "00-other.conflist.petrel_bak\n10-other.conflist"
        } else {
            ""
        };
        assert_eq!(
            String::from_utf8_lossy(&left.stdout).trim(),
            want,
            "node {i}'s conflists after uninstalling: only what petrel did not write"
        );
        let cg = c.node_cgroup(i);
        let o = std::process::Command::new("bpftool")
            .args(["cgroup", "show"])
            .arg(&cg)
            .output()
            .expect("bpftool");
        assert!(
            String::from_utf8_lossy(&o.stdout).trim().is_empty(),
            "programs still attached to {}: {}",
            cg.display(),
            text(&o)
        );
    }
}
