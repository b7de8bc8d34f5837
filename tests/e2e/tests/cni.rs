//! petrel-cni through the real binary, with real namespaces and veths. Each test runs the plugin
//! inside its own "node" namespace (the plugin's host), so everything it creates goes away with
//! that namespace even if the test fails.

use std::{
    collections::BTreeSet,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use petrel_testbed::{
    cni::{Call, Outcome, petrel_links, plugin_bin, reservations},
    netns::NetNs,
    pod, require_root, unique,
};
use serde_json::{Value, json};

const VERSIONS: [&str; 4] = ["0.3.1", "0.4.0", "1.0.0", "1.1.0"];

struct Env {
    node: NetNs,
    data: tempfile::TempDir,
    name: String,
    cidr: String,
    /// When set, the config carries `podCIDRs` instead of `podCIDR`.
    cidrs: Vec<String>,
}

impl Env {
    fn new(cidr: &str) -> Env {
        require_root();
        let node = NetNs::new(&unique("cn"));
        Env {
            node,
            data: tempfile::tempdir().expect("tempdir"),
            name: "petrel".into(),
            cidr: cidr.into(),
            cidrs: Vec::new(),
        }
    }

    /// A config with `podCIDRs`.
    fn with_ranges(cidrs: &[&str]) -> Env {
        Env {
            cidrs: cidrs.iter().map(ToString::to_string).collect(),
            ..Env::new("")
        }
    }

    fn conf(&self, version: &str) -> Value {
        let mut c = json!({
            "cniVersion": version,
            "name": self.name,
            "type": "petrel-cni",
            "podCIDR": self.cidr,
            "dataDir": self.data.path(),
            "mtu": 1400,
        });
        if !self.cidrs.is_empty() {
            c.as_object_mut().expect("object").remove("podCIDR");
            c["podCIDRs"] = json!(self.cidrs);
        }
        c
    }

    #[expect(
        clippy::unused_self,
        reason = "a method of the fixture, so calls read like the others (f.call, f.add, f.del)"
    )]
    fn call<'a>(
        &self,
        command: &'a str,
        cid: &'a str,
        ifname: &'a str,
        netns: Option<PathBuf>,
    ) -> Call<'a> {
        Call {
            plugin: plugin_bin(),
            command,
            container_id: cid,
            ifname,
            netns,
            extra_env: Vec::new(),
        }
    }

    fn add(&self, version: &str, cid: &str, pod: &NetNs) -> Outcome {
        self.call("ADD", cid, "eth0", Some(pod.path()))
            .run(&self.node, &self.conf(version).to_string())
    }

    fn del(&self, cid: &str, netns: Option<PathBuf>) -> Outcome {
        self.call("DEL", cid, "eth0", netns)
            .run(&self.node, &self.conf("1.1.0").to_string())
    }

    fn gc(&self, valid: &[&str]) -> Outcome {
        let mut conf = self.conf("1.1.0");
        conf["cni.dev/valid-attachments"] = valid
            .iter()
            .map(|c| json!({"containerID": c, "ifname": "eth0"}))
            .collect();
        self.call("GC", "", "", None)
            .run(&self.node, &conf.to_string())
    }

    fn reservations(&self) -> Vec<String> {
        reservations(self.data.path(), &self.name)
    }

    /// Nothing left: no reservation, no host-side link, no IPv6 route to a pod.
    fn assert_clean(&self) {
        assert_eq!(
            self.reservations(),
            Vec::<String>::new(),
            "reservations left"
        );
        assert_eq!(petrel_links(&self.node), Vec::<String>::new(), "links left");
        let routes = text(&self.node.exec("ip", &["-6", "route", "show"]));
        assert!(
            !routes.contains("fd00:250"),
            "IPv6 pod routes left: {routes}"
        );
    }
}

fn text(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ips_of(result: &Value) -> Vec<String> {
    result["ips"]
        .as_array()
        .expect("ips")
        .iter()
        .map(|ip| ip["address"].as_str().expect("address").to_string())
        .collect()
}

fn ip6_of(result: &Value) -> Ipv6Addr {
    result["ips"]
        .as_array()
        .expect("ips")
        .iter()
        .filter_map(|ip| ip["address"].as_str()?.split('/').next()?.parse().ok())
        .next()
        .expect("an IPv6 address in the result")
}

/// One TCP exchange over IPv6: a listener on `addr` made in `server`, a connection from
/// `client`; returns the source address the server saw. The listener is bound right after ADD:
/// an address still in duplicate address detection could not be bound.
fn tcp6(server: &NetNs, client: &NetNs, addr: SocketAddrV6) -> Ipv6Addr {
    let listener = server.run(move || {
        std::net::TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"))
    });
    let accepted = std::thread::spawn(move || {
        let (mut s, peer) = listener.accept().expect("accept");
        s.write_all(b"petrel over IPv6").expect("write");
        peer
    });
    let got = client.run(move || {
        let mut s = std::net::TcpStream::connect_timeout(&addr.into(), Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        let mut got = String::new();
        s.read_to_string(&mut got).expect("read");
        got
    });
    assert_eq!(got, "petrel over IPv6");
    match accepted.join().expect("server thread") {
        SocketAddr::V6(peer) => *peer.ip(),
        SocketAddr::V4(peer) => panic!("an IPv4 peer {peer}"),
    }
}

/// The node's own global IPv6 address (on lo), as a real node has one.
const NODE6: &str = "fd00:ff::1";

fn ip_of(result: &Value) -> Ipv4Addr {
    result["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .expect("ip in result")
}

fn request(from: &Path, to: SocketAddrV4) -> pod::Reply {
    let from = from.to_path_buf();
    std::thread::spawn(move || {
        petrel_testbed::netns::enter(&from);
        pod::tcp_get(to)
    })
    .join()
    .expect("client thread")
    .unwrap_or_else(|e| panic!("request to {to}: {e}"))
}

#[test]
fn add_check_del_in_every_version_with_traffic() {
    for version in VERSIONS {
        let env = Env::new("10.250.0.0/24");
        let pods = [NetNs::new(&unique("cp")), NetNs::new(&unique("cp"))];
        let results: Vec<Value> = pods
            .iter()
            .enumerate()
            .map(|(i, p)| env.add(version, &format!("c{i}-{version}"), p).ok().json())
            .collect();

        let r = &results[0];
        assert_eq!(r["cniVersion"], version);
        assert_eq!(r["interfaces"].as_array().map(Vec::len), Some(2));
        assert!(
            r["interfaces"][0]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("pet"))
        );
        assert_eq!(r["interfaces"][1]["name"], "eth0");
        assert_eq!(
            r["interfaces"][1]["sandbox"],
            pods[0].path().display().to_string()
        );
        assert_eq!(r["ips"][0]["gateway"], "10.250.0.1");
        assert_eq!(r["ips"][0]["interface"], 1);
        assert_eq!(r["routes"][0]["dst"], "0.0.0.0/0");
        assert_eq!(
            r["ips"][0].get("version").is_some(),
            version.starts_with("0."),
            "ips[].version only before 1.0"
        );
        let ips: Vec<Ipv4Addr> = results.iter().map(ip_of).collect();
        assert_ne!(ips[0], ips[1]);
        assert_eq!(env.reservations().len(), 2);

        // Pod to pod on the node, host to pod, pod to host (the gateway on the host side).
        let _s1 = pod::Server::start(
            Some(pods[1].path()),
            "pod1",
            SocketAddrV4::new(ips[1], 8080),
        );
        let got = request(&pods[0].path(), SocketAddrV4::new(ips[1], 8080));
        assert_eq!(
            (got.server.as_str(), got.client_seen),
            ("pod1", ips[0].to_string())
        );
        let got = request(&env.node.path(), SocketAddrV4::new(ips[1], 8080));
        assert_eq!(got.server, "pod1");
        let _host = pod::Server::start(
            Some(env.node.path()),
            "host",
            SocketAddrV4::new(Ipv4Addr::new(10, 250, 0, 1), 9090),
        );
        let got = request(
            &pods[0].path(),
            SocketAddrV4::new(Ipv4Addr::new(10, 250, 0, 1), 9090),
        );
        assert_eq!(
            (got.server.as_str(), got.client_seen),
            ("host", ips[0].to_string())
        );
        assert!(
            pods[0]
                .exec("ip", &["link", "show", "eth0"])
                .stdout
                .windows(8)
                .any(|w| w == b"mtu 1400")
        );

        // CHECK against the prevResult, then break the pod and CHECK again.
        if version != "0.3.1" {
            let cid = format!("c0-{version}");
            let mut conf = env.conf(version);
            conf["prevResult"] = results[0].clone();
            env.call("CHECK", &cid, "eth0", Some(pods[0].path()))
                .run(&env.node, &conf.to_string())
                .ok();
            pods[0].exec("ip", &["route", "del", "default"]);
            let msg = env
                .call("CHECK", &cid, "eth0", Some(pods[0].path()))
                .run(&env.node, &conf.to_string())
                .error_code(103);
            assert!(msg.contains("default route"), "{msg}");
        }

        // DEL twice: idempotent; nothing left.
        for (i, p) in pods.iter().enumerate() {
            env.del(&format!("c{i}-{version}"), Some(p.path())).ok();
            env.del(&format!("c{i}-{version}"), Some(p.path())).ok();
        }
        env.assert_clean();
    }
}

#[test]
fn version_and_status() {
    let env = Env::new("10.250.1.0/29");
    let v = env
        .call("VERSION", "", "", None)
        .run(&env.node, r#"{"cniVersion":"1.0.0"}"#)
        .ok()
        .json();
    assert_eq!(v["supportedVersions"], json!(VERSIONS));
    assert_eq!(v["cniVersion"], "1.0.0");

    let status = |conf: &Value| {
        env.call("STATUS", "", "", None)
            .run(&env.node, &conf.to_string())
    };
    for version in VERSIONS {
        let v = env
            .call("VERSION", "", "", None)
            .run(&env.node, &env.conf(version).to_string())
            .ok()
            .json();
        assert_eq!(v["cniVersion"], version);
        let mut gc = env.conf(version);
        gc["cni.dev/valid-attachments"] = json!([]);
        let gc = env.call("GC", "", "", None).run(&env.node, &gc.to_string());
        // STATUS and GC are defined from 1.1.0 on; before, code 1 as the reference skel.
        if version == "1.1.0" {
            assert_eq!(status(&env.conf(version)).ok().stdout, "");
            gc.ok();
        } else {
            assert!(
                status(&env.conf(version))
                    .error_code(1)
                    .contains("does not allow STATUS")
            );
            assert!(gc.error_code(1).contains("does not allow GC"));
        }
    }
    let mut no_cidr = env.conf("1.1.0");
    no_cidr.as_object_mut().expect("object").remove("podCIDR");
    no_cidr["podCIDRFile"] = json!("/nonexistent/pod-cidr");
    assert!(status(&no_cidr).error_code(50).contains("pod CIDR"));

    // A /29 has 5 allocatable addresses: fill it, STATUS says 50, ADD says 100 with the range.
    let pods: Vec<NetNs> = (0..6).map(|_| NetNs::new(&unique("cp"))).collect();
    for (i, p) in pods.iter().take(5).enumerate() {
        env.add("1.1.0", &format!("s{i}"), p).ok();
    }
    assert!(
        status(&env.conf("1.1.0"))
            .error_code(50)
            .contains("exhausted")
    );
    let msg = env.add("1.1.0", "s5", &pods[5]).error_code(100);
    assert!(msg.contains("10.250.1.0/29"), "{msg}");
    assert_eq!(
        env.reservations().len(),
        5,
        "the failed ADD reserved nothing"
    );
    assert_eq!(
        petrel_links(&env.node).len(),
        5,
        "the failed ADD created no link"
    );
    for i in 0..5 {
        env.del(&format!("s{i}"), None).ok();
    }
    env.assert_clean();
}

#[test]
fn del_releases_when_the_namespace_is_gone_and_gc_frees_the_unlisted() {
    let env = Env::new("10.250.2.0/24");
    let mut pods: Vec<NetNs> = (0..3).map(|_| NetNs::new(&unique("cp"))).collect();
    for (i, p) in pods.iter().enumerate() {
        env.add("1.0.0", &format!("g{i}"), p).ok();
    }
    // The runtime removed the namespace before DEL.
    let gone = pods[0].path();
    drop(pods.remove(0));
    env.del("g0", Some(gone)).ok();
    assert_eq!(env.reservations().len(), 2);

    // GC keeps only g1.
    env.gc(&["g1"]).ok();
    assert_eq!(env.reservations().len(), 1);
    assert_eq!(petrel_links(&env.node).len(), 1);
    // GC without the list refuses instead of freeing everything.
    let mut conf = env.conf("1.1.0");
    conf.as_object_mut()
        .expect("object")
        .remove("cni.dev/valid-attachments");
    env.call("GC", "", "", None)
        .run(&env.node, &conf.to_string())
        .error_code(7);
    assert_eq!(env.reservations().len(), 1);
    env.gc(&[]).ok();
    env.assert_clean();
}

#[test]
fn hundred_concurrent_adds_get_distinct_addresses() {
    let env = Env::new("10.250.3.0/24");
    let pods: Vec<NetNs> = (0..100).map(|_| NetNs::new(&unique("cp"))).collect();
    let conf = env.conf("1.1.0").to_string();
    let cids: Vec<String> = (0..100).map(|i| format!("con{i}")).collect();
    let children: Vec<_> = cids
        .iter()
        .zip(&pods)
        .map(|(c, p)| {
            env.call("ADD", c, "eth0", Some(p.path()))
                .spawn(&env.node, &conf)
        })
        .collect();
    let mut ips = BTreeSet::new();
    for child in children {
        let out = child.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "ADD failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let v: Value = serde_json::from_slice(&out.stdout).expect("json");
        ips.insert(ip_of(&v));
    }
    assert_eq!(ips.len(), 100, "100 distinct addresses");
    assert_eq!(env.reservations().len(), 100);
    for (c, p) in cids.iter().zip(&pods) {
        env.del(c, Some(p.path())).ok();
    }
    env.assert_clean();
}

fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigkill_during_add_leaks_nothing_after_gc() {
    let env = Env::new("10.250.4.0/24");
    let conf = env.conf("1.1.0").to_string();
    // At each named step of ADD.
    for step in ["locked", "reserved", "wired"] {
        let p = NetNs::new(&unique("cp"));
        let cid = format!("k-{step}");
        let mut call = env.call("ADD", &cid, "eth0", Some(p.path()));
        call.extra_env
            .push(("PETREL_CNI_TEST_PAUSE_AT".into(), step.into()));
        let mut child = call.spawn(&env.node, &conf);
        match step {
            "locked" => std::thread::sleep(Duration::from_millis(500)),
            "reserved" => wait_for("reservation", || !env.reservations().is_empty()),
            _ => wait_for("link", || !petrel_links(&env.node).is_empty()),
        }
        child.kill().expect("SIGKILL");
        let _ = child.wait();
        env.gc(&[]).ok();
        env.assert_clean();
        // The same container can be added afterwards.
        env.add("1.1.0", &cid, &p).ok();
        env.del(&cid, Some(p.path())).ok();
    }
    // At arbitrary moments.
    let p = NetNs::new(&unique("cp"));
    for i in 0..15u64 {
        let cid = format!("r{i}");
        let mut child = env
            .call("ADD", &cid, "eth0", Some(p.path()))
            .spawn(&env.node, &conf);
        std::thread::sleep(Duration::from_millis(i * 4));
        let _ = child.kill();
        let _ = child.wait();
        // A kill after the pod end was renamed leaves eth0 behind in the pod: GC's link removal
        // takes the pair away.
        env.gc(&[]).ok();
        env.assert_clean();
        assert!(
            p.exec("ip", &["-o", "link"])
                .stdout
                .windows(4)
                .all(|w| w != b"eth0"),
            "pod end removed with the pair"
        );
    }
}

#[test]
fn bad_input_gets_its_error_code_and_leaves_nothing() {
    let env = Env::new("10.250.5.0/24");
    let p = NetNs::new(&unique("cp"));
    let good = env.conf("1.1.0");
    let with = |k: &str, v: Value| {
        let mut c = good.clone();
        c[k] = v;
        c.to_string()
    };
    let add = |cid: &str, ifname: &str, netns: Option<PathBuf>, stdin: &str| {
        env.call("ADD", cid, ifname, netns).run(&env.node, stdin)
    };
    let pp = || Some(p.path());
    add("b", "eth0", pp(), "{not json").error_code(6);
    add("b", "eth0", pp(), &with("cniVersion", json!("0.2.0"))).error_code(1);
    add("b", "eth0", pp(), &with("podCIDR", json!("10.1.2.0/33"))).error_code(7);
    add("b", "eth0", pp(), &with("podCIDR", json!("banana"))).error_code(7);
    add("b", "eth0", pp(), &with("mtu", json!(10))).error_code(7);
    add("b", "eth0", pp(), &with("mtu", json!(100000))).error_code(7);
    add("b", "an-ifname-too-long", pp(), &good.to_string()).error_code(4);
    add("../../etc/passwd", "eth0", pp(), &good.to_string()).error_code(4);
    add(
        "b",
        "eth0",
        Some(PathBuf::from("/run/netns/does-not-exist")),
        &good.to_string(),
    )
    .error_code(4);
    add("b", "eth0", None, &good.to_string()).error_code(4);
    env.call("", "b", "eth0", pp())
        .run(&env.node, &good.to_string())
        .error_code(4);
    // An interface that already exists in the pod.
    p.exec(
        "ip",
        &[
            "link", "add", "eth0", "type", "veth", "peer", "name", "other0",
        ],
    );
    assert!(
        add("b", "eth0", pp(), &good.to_string())
            .error_code(101)
            .contains("eth0")
    );
    env.assert_clean();
    assert!(
        !env.data
            .path()
            .join("petrel")
            .join("..")
            .join("..")
            .join("etc")
            .exists()
    );
}

#[test]
fn chained_with_debian_reference_plugins() {
    let env = Env::new("10.250.6.0/24");
    let p = NetNs::new(&unique("cp"));
    // A conflist as a runtime would hold it; libcni's ADD runs the plugins in order, each given
    // the previous result, and DEL in reverse order.
    let conflist = json!({
        "cniVersion": "1.0.0",
        "name": "petrel",
        "plugins": [
            {"type": "petrel-cni", "podCIDR": "10.250.6.0/24", "dataDir": env.data.path()},
            {"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.accept_redirects": "1"}},
            {"type": "portmap", "capabilities": {"portMappings": true}, "runtimeConfig": {"portMappings": [{"hostPort": 18080, "containerPort": 8080, "protocol": "tcp"}]}}
        ]
    });
    let plugins = conflist["plugins"].as_array().expect("plugins");
    let conf_for = |i: usize, prev: Option<&Value>| {
        let mut c = plugins[i].clone();
        c["cniVersion"] = conflist["cniVersion"].clone();
        c["name"] = conflist["name"].clone();
        if let Some(prev) = prev {
            c["prevResult"] = prev.clone();
        }
        c.to_string()
    };
    let bin = |i: usize| -> PathBuf {
        match plugins[i]["type"].as_str().expect("type") {
            "petrel-cni" => plugin_bin(),
            other => Path::new(petrel_testbed::cni::REFERENCE_PLUGINS).join(other),
        }
    };
    let mut prev: Option<Value> = None;
    for i in 0..plugins.len() {
        let call = Call {
            plugin: bin(i),
            command: "ADD",
            container_id: "chain",
            ifname: "eth0",
            netns: Some(p.path()),
            extra_env: Vec::new(),
        };
        let out = call.run(&env.node, &conf_for(i, prev.as_ref())).ok();
        prev = Some(out.json());
    }
    let result = prev.expect("final result");
    assert_eq!(ip_of(&result).octets()[..3], [10, 250, 6]);
    let sysctl = p.exec("sysctl", &["-n", "net.ipv4.conf.eth0.accept_redirects"]);
    assert_eq!(
        String::from_utf8_lossy(&sysctl.stdout).trim(),
        "1",
        "tuning applied to petrel's interface"
    );
    let nat = env.node.exec("iptables", &["-t", "nat", "-S"]);
    assert!(
        String::from_utf8_lossy(&nat.stdout).contains("18080"),
        "portmap programmed its DNAT"
    );
    // CHECK down the chain, then DEL in reverse.
    let call = Call {
        plugin: bin(0),
        command: "CHECK",
        container_id: "chain",
        ifname: "eth0",
        netns: Some(p.path()),
        extra_env: Vec::new(),
    };
    call.run(&env.node, &conf_for(0, Some(&result))).ok();
    for i in (0..plugins.len()).rev() {
        let call = Call {
            plugin: bin(i),
            command: "DEL",
            container_id: "chain",
            ifname: "eth0",
            netns: Some(p.path()),
            extra_env: Vec::new(),
        };
        call.run(&env.node, &conf_for(i, Some(&result))).ok();
    }
    env.assert_clean();
}

/// Both families: both addresses and default routes in the pod, usable at once (no DAD), the
/// host routes and gateway, traffic over IPv6 pod to pod, host to pod and pod to host, CHECK of
/// both, GC and DEL freeing both.
#[test]
fn dual_stack_add_check_gc_del_with_ipv6_traffic() {
    let env = Env::with_ranges(&["10.250.6.0/24", "fd00:250:6::/120"]);
    env.node.exec(
        "ip",
        &["addr", "add", &format!("{NODE6}/128"), "dev", "lo", "nodad"],
    );
    let pods = [
        NetNs::new(&unique("cp")),
        NetNs::new(&unique("cp")),
        NetNs::new(&unique("cp")),
    ];
    let results: Vec<Value> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| env.add("1.1.0", &format!("d{i}"), p).ok().json())
        .collect();
    let r = &results[0];
    assert_eq!(ips_of(r), ["10.250.6.2/32", "fd00:250:6::2/128"]);
    assert_eq!(r["ips"][0]["gateway"], "10.250.6.1");
    assert_eq!(r["ips"][1]["gateway"], "fe80::1");
    assert_eq!(r["ips"][1]["interface"], 1);
    assert_eq!(
        r["routes"],
        json!([{"dst": "0.0.0.0/0", "gw": "10.250.6.1"}, {"dst": "::/0", "gw": "fe80::1"}])
    );
    assert_eq!(ips_of(&results[1]), ["10.250.6.3/32", "fd00:250:6::3/128"]);
    // Two files per pod in the store.
    assert_eq!(env.reservations().len(), 6);

    // In the pod: both addresses (the IPv6 one not tentative), both default routes.
    let addrs = text(&pods[0].exec("ip", &["-6", "addr", "show", "dev", "eth0"]));
    assert!(addrs.contains("inet6 fd00:250:6::2/128"), "{addrs}");
    let line = addrs
        .lines()
        .find(|l| l.contains("fd00:250:6::2"))
        .unwrap_or_default();
    assert!(!line.contains("tentative"), "{line}");
    assert!(line.contains("nodad"), "{line}");
    let v4 = text(&pods[0].exec("ip", &["-4", "route", "show", "default"]));
    assert!(v4.contains("default via 10.250.6.1 dev eth0"), "{v4}");
    let v6 = text(&pods[0].exec("ip", &["-6", "route", "show", "default"]));
    assert!(v6.contains("default via fe80::1 dev eth0"), "{v6}");
    // On the host: the gateway on the veth, the route to the pod's /128, forwarding.
    let host_if = r["interfaces"][0]["name"].as_str().expect("host if");
    let gw = text(&env.node.exec("ip", &["-6", "addr", "show", "dev", host_if]));
    assert!(gw.contains("inet6 fe80::1/64"), "{gw}");
    let route = text(
        &env.node
            .exec("ip", &["-6", "route", "show", "fd00:250:6::2"]),
    );
    assert!(route.contains(&format!("dev {host_if}")), "{route}");
    let fwd = text(
        &env.node
            .exec("sysctl", &["-n", "net.ipv6.conf.all.forwarding"]),
    );
    assert_eq!(fwd.trim(), "1");

    // Pod to pod, host to pod, pod to host over IPv6; IPv4 still answers.
    let p1 = ip6_of(&results[1]);
    let seen = tcp6(&pods[1], &pods[0], SocketAddrV6::new(p1, 8080, 0, 0));
    assert_eq!(seen, ip6_of(&results[0]));
    let node6: Ipv6Addr = NODE6.parse().expect("node address");
    let seen = tcp6(&pods[1], &env.node, SocketAddrV6::new(p1, 8081, 0, 0));
    assert_eq!(seen, node6);
    let seen = tcp6(&env.node, &pods[0], SocketAddrV6::new(node6, 9090, 0, 0));
    assert_eq!(seen, ip6_of(&results[0]));
    let _s1 = pod::Server::start(
        Some(pods[1].path()),
        "pod1",
        SocketAddrV4::new(ip_of(&results[1]), 8080),
    );
    let got = request(&pods[0].path(), SocketAddrV4::new(ip_of(&results[1]), 8080));
    assert_eq!(got.client_seen, ip_of(&results[0]).to_string());

    // CHECK passes, then fails naming what is missing of either family.
    let mut conf = env.conf("1.1.0");
    conf["prevResult"] = results[0].clone();
    let check = || {
        env.call("CHECK", "d0", "eth0", Some(pods[0].path()))
            .run(&env.node, &conf.to_string())
    };
    check().ok();
    pods[0].exec("ip", &["-6", "route", "del", "default"]);
    let msg = check().error_code(103);
    assert!(
        msg.contains("IPv6 default route via fe80::1 dev eth0 is missing"),
        "{msg}"
    );
    pods[0].exec(
        "ip",
        &["-6", "addr", "del", "fd00:250:6::2/128", "dev", "eth0"],
    );
    let msg = check().error_code(103);
    assert!(msg.contains("address fd00:250:6::2 is missing"), "{msg}");

    // A 0.4.0 result names each address's family.
    let legacy = NetNs::new(&unique("cp"));
    let r = env.add("0.4.0", "d-legacy", &legacy).ok().json();
    assert_eq!(r["ips"][0]["version"], "4");
    assert_eq!(r["ips"][1]["version"], "6");
    env.del("d-legacy", Some(legacy.path())).ok();

    // GC frees both reservations and the link of an unlisted attachment.
    env.gc(&["d0", "d1"]).ok();
    assert_eq!(env.reservations().len(), 4);
    assert_eq!(petrel_links(&env.node).len(), 2);
    for (i, p) in pods.iter().enumerate().take(2) {
        env.del(&format!("d{i}"), Some(p.path())).ok();
        env.del(&format!("d{i}"), Some(p.path())).ok();
    }
    env.assert_clean();
}

/// An IPv6-only node: no IPv4 address anywhere, the IPv6 wiring alone, traffic both ways.
#[test]
fn ipv6_only_add_check_del() {
    let mut env = Env::new("fd00:250:7::/120");
    env.name = "petrel6".into();
    env.node.exec(
        "ip",
        &["addr", "add", &format!("{NODE6}/128"), "dev", "lo", "nodad"],
    );
    let pod = NetNs::new(&unique("cp"));
    let r = env.add("1.0.0", "v6", &pod).ok().json();
    assert_eq!(ips_of(&r), ["fd00:250:7::2/128"]);
    assert_eq!(r["routes"], json!([{"dst": "::/0", "gw": "fe80::1"}]));
    assert_eq!(env.reservations(), ["fd00:250:7::2"]);
    let v4 = text(&pod.exec("ip", &["-4", "addr", "show", "dev", "eth0"]));
    assert_eq!(v4.trim(), "", "no IPv4 address in an IPv6-only pod");
    let v4 = text(&pod.exec("ip", &["-4", "route", "show"]));
    assert_eq!(v4.trim(), "", "no IPv4 route in an IPv6-only pod");
    let host_if = r["interfaces"][0]["name"].as_str().expect("host if");
    let host4 = text(&env.node.exec("ip", &["-4", "addr", "show", "dev", host_if]));
    assert_eq!(host4.trim(), "", "no IPv4 gateway on the host veth");
    let node6: Ipv6Addr = NODE6.parse().expect("node address");
    let p = ip6_of(&r);
    assert_eq!(
        tcp6(&env.node, &pod, SocketAddrV6::new(node6, 9091, 0, 0)),
        p
    );
    assert_eq!(
        tcp6(&pod, &env.node, SocketAddrV6::new(p, 8082, 0, 0)),
        node6
    );
    let mut conf = env.conf("1.0.0");
    conf["prevResult"] = r.clone();
    env.call("CHECK", "v6", "eth0", Some(pod.path()))
        .run(&env.node, &conf.to_string())
        .ok();
    env.del("v6", Some(pod.path())).ok();
    env.assert_clean();
}

/// Each family's pool is exhausted on its own, named in the error (code 100) and in STATUS
/// (code 50), and an ADD failing on one family keeps no address of the other.
#[test]
fn pools_are_exhausted_per_family_and_nothing_half_reserved() {
    // IPv4 first: a /29 holds 5 pods.
    let env = Env::with_ranges(&["10.250.8.0/29", "fd00:250:8::/120"]);
    let pods: Vec<NetNs> = (0..6).map(|_| NetNs::new(&unique("cp"))).collect();
    for (i, p) in pods.iter().take(5).enumerate() {
        env.add("1.1.0", &format!("x{i}"), p).ok();
    }
    let msg = env.add("1.1.0", "x5", &pods[5]).error_code(100);
    assert!(msg.contains("10.250.8.0/29"), "{msg}");
    assert_eq!(env.reservations().len(), 10);
    let status = env
        .call("STATUS", "", "", None)
        .run(&env.node, &env.conf("1.1.0").to_string())
        .error_code(50);
    assert!(
        status.contains("address pool 10.250.8.0/29 is exhausted"),
        "{status}"
    );
    for i in 0..5 {
        env.del(&format!("x{i}"), None).ok();
    }
    env.assert_clean();

    // IPv6: all but one of its 254 names taken by files that are not petrel's (they are left
    // alone and their addresses never handed out).
    let env = Env::with_ranges(&["10.250.9.0/24", "fd00:250:9::/120"]);
    let store = env.data.path().join(&env.name);
    std::fs::create_dir_all(&store).expect("store");
    for n in 3..=0xffu16 {
        std::fs::write(store.join(format!("fd00:250:9::{n:x}")), "not petrel's").expect("stray");
    }
    let ok = env.add("1.1.0", "y0", &pods[0]).ok().json();
    assert_eq!(ips_of(&ok), ["10.250.9.2/32", "fd00:250:9::2/128"]);
    let msg = env.add("1.1.0", "y1", &pods[1]).error_code(100);
    assert!(msg.contains("fd00:250:9::/120"), "{msg}");
    assert_eq!(
        env.reservations()
            .iter()
            .filter(|n| n.starts_with("10."))
            .collect::<Vec<_>>(),
        ["10.250.9.2"],
        "the failed ADD's IPv4 reservation was released"
    );
    assert_eq!(
        petrel_links(&env.node).len(),
        1,
        "the failed ADD made no link"
    );
    let status = env
        .call("STATUS", "", "", None)
        .run(&env.node, &env.conf("1.1.0").to_string())
        .error_code(50);
    assert!(
        status.contains("address pool fd00:250:9::/120 is exhausted"),
        "{status}"
    );
    env.del("y0", Some(pods[0].path())).ok();
    for n in 3..=0xffu16 {
        let stray = store.join(format!("fd00:250:9::{n:x}"));
        assert_eq!(
            std::fs::read_to_string(&stray).expect("left alone"),
            "not petrel's"
        );
        std::fs::remove_file(stray).expect("rm");
    }
    env.assert_clean();
}

/// An IPv6 range where IPv6 is disabled (on the node, or in the pod's namespace): refused before
/// anything is reserved or created, STATUS unavailable.
#[test]
fn ipv6_disabled_is_refused_before_anything_is_done() {
    let env = Env::with_ranges(&["10.250.10.0/24", "fd00:250:10::/120"]);
    let pod = NetNs::new(&unique("cp"));
    pod.sysctl("net.ipv6.conf.default.disable_ipv6", "1");
    let msg = env.add("1.1.0", "z0", &pod).error_code(7);
    assert!(
        msg.contains("the pod range fd00:250:10::/120 is IPv6, but in the pod's namespace")
            && msg.contains("IPv6 is disabled (net.ipv6.conf.default.disable_ipv6 = 1)"),
        "{msg}"
    );
    env.assert_clean();
    pod.sysctl("net.ipv6.conf.default.disable_ipv6", "0");
    env.node.sysctl("net.ipv6.conf.all.disable_ipv6", "1");
    let msg = env.add("1.1.0", "z0", &pod).error_code(7);
    assert_eq!(
        msg,
        "the pod range fd00:250:10::/120 is IPv6, but on the host IPv6 is disabled (net.ipv6.conf.all.disable_ipv6 = 1)"
    );
    let status = env
        .call("STATUS", "", "", None)
        .run(&env.node, &env.conf("1.1.0").to_string())
        .error_code(50);
    assert!(status.contains("on the host IPv6 is disabled"), "{status}");
    env.assert_clean();
    // An IPv4 range alone does not care.
    let v4 = Env::new("10.250.11.0/24");
    v4.node.sysctl("net.ipv6.conf.all.disable_ipv6", "1");
    v4.add("1.1.0", "z1", &pod).ok();
    v4.del("z1", Some(pod.path())).ok();
    v4.assert_clean();
}
