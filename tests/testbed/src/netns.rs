//! Network namespaces and veths for tests, removed on drop.

use std::{
    fs::File,
    os::fd::AsFd as _,
    path::PathBuf,
    process::{Command, Output},
    thread,
};

use nix::sched::{CloneFlags, setns};

/// Runs `ip` with `args`, panicking with its stderr when it fails.
pub fn ip(args: &[&str]) {
    sh("ip", args);
}

/// Runs a command, panicking with its output when it fails.
pub fn sh(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {program}: {e} (is it installed? run `cargo xtask setup`)")
        });
    assert!(
        out.status.success(),
        "`{program} {}` failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A named network namespace (`ip netns add`), deleted with everything in it on drop.
pub struct NetNs {
    name: String,
}

impl NetNs {
    pub fn new(name: &str) -> NetNs {
        // A leftover from a crashed run of the same name would make `add` fail: remove it first.
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        ip(&["netns", "add", name]);
        let ns = NetNs {
            name: name.to_string(),
        };
        ns.exec("ip", &["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Runs a command inside the namespace. `nsenter --net` rather than `ip netns exec`: the
    /// latter remounts /sys and hides bpffs and cgroup2.
    pub fn exec(&self, program: &str, args: &[&str]) -> Output {
        let net = format!("--net={}", self.path().display());
        let mut all = vec![net.as_str(), "--", program];
        all.extend_from_slice(args);
        sh("nsenter", &all)
    }

    /// Makes this namespace a host on `dev`: address `ip`/24 and a default route via `gw`.
    pub fn host_on(&self, dev: &str, ip: std::net::Ipv4Addr, gw: std::net::Ipv4Addr) {
        self.exec("ip", &["addr", "add", &format!("{ip}/24"), "dev", dev]);
        self.exec("ip", &["route", "add", "default", "via", &gw.to_string()]);
    }

    pub fn sysctl(&self, key: &str, value: &str) {
        self.exec("sysctl", &["-qw", &format!("{key}={value}")]);
    }

    /// A counter of this namespace's /proc/net/snmp or /proc/net/netstat, by the group and name
    /// `nstat` shows joined (`Tcp` `RetransSegs`, `TcpExt` `TCPSynRetrans`); panics if absent.
    pub fn counter(&self, group: &str, name: &str) -> u64 {
        let out = self.exec("cat", &["/proc/net/snmp", "/proc/net/netstat"]);
        let text = String::from_utf8_lossy(&out.stdout);
        // Each group is two lines: "Group: name name ..." then "Group: value value ...".
        let prefix = format!("{group}:");
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(&prefix)).collect();
        for pair in lines.chunks(2) {
            let [names, values] = pair else { continue };
            let names = names.split_whitespace().skip(1);
            if let Some((_, v)) = names
                .zip(values.split_whitespace().skip(1))
                .find(|(n, _)| *n == name)
            {
                return v
                    .parse()
                    .unwrap_or_else(|e| panic!("{group} {name} = {v:?}: {e}"));
            }
        }
        panic!(
            "no counter {group} {name} in /proc/net/snmp or /proc/net/netstat of {}",
            self.name
        )
    }

    /// Runs `f` on a new thread that has entered this namespace, and returns its result. Network
    /// namespaces belong to a thread, so this never touches the caller's.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = self.path();
        thread::spawn(move || {
            enter(&path);
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }
}

/// Moves the calling thread into the network namespace at `path`.
pub fn enter(path: &std::path::Path) {
    let f = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    setns(f.as_fd(), CloneFlags::CLONE_NEWNET)
        .unwrap_or_else(|e| panic!("setns {}: {e}", path.display()));
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Creates a veth pair with one end `a` in `ns_a` and the other `b` in `ns_b`, both up.
pub fn veth(ns_a: &NetNs, a: &str, ns_b: &NetNs, b: &str) {
    ip(&[
        "link",
        "add",
        a,
        "netns",
        ns_a.name(),
        "type",
        "veth",
        "peer",
        "name",
        b,
        "netns",
        ns_b.name(),
    ]);
    ns_a.exec("ip", &["link", "set", a, "up"]);
    ns_b.exec("ip", &["link", "set", b, "up"]);
}

/// A simulated node: a namespace that routes between "pods", each a namespace joined to the node
/// by a veth (`eth0` in the pod, `h-<pod>` on the node) with a /32 route each way, as a routed
/// CNI wires it.
pub struct Node {
    pub ns: NetNs,
    pub pods: Vec<Pod>,
    /// Hosts outside the node, each on its own link to it.
    pub externals: Vec<NetNs>,
}

pub struct Pod {
    pub ns: NetNs,
    pub ip: std::net::Ipv4Addr,
    /// Host-side interface name in the node namespace.
    pub host_if: String,
}

/// The node-side address every pod uses as its gateway (link-local, as Cilium and Calico do).
pub const GATEWAY: &str = "169.254.1.1";

impl Node {
    pub fn new(name: &str) -> Node {
        let ns = NetNs::new(name);
        ns.sysctl("net.ipv4.ip_forward", "1");
        // Reverse NAT rewrites a reply's source to the service address before routing; strict
        // reverse-path filtering would drop it.
        ns.sysctl("net.ipv4.conf.all.rp_filter", "0");
        ns.sysctl("net.ipv4.conf.default.rp_filter", "0");
        Node {
            ns,
            pods: Vec::new(),
            externals: Vec::new(),
        }
    }

    /// Adds a host outside the node, `name`, linked to the node's interface `node_if` on a /24:
    /// the node has `node_ip`, the host `host_ip` and a default route via the node.
    pub fn add_external(
        &mut self,
        name: &str,
        node_if: &str,
        node_ip: std::net::Ipv4Addr,
        host_ip: std::net::Ipv4Addr,
    ) -> &NetNs {
        let host = NetNs::new(name);
        veth(&self.ns, node_if, &host, "eth0");
        self.ns.exec(
            "ip",
            &["addr", "add", &format!("{node_ip}/24"), "dev", node_if],
        );
        host.host_on("eth0", host_ip, node_ip);
        self.ns
            .sysctl(&format!("net.ipv4.conf.{node_if}.rp_filter"), "0");
        self.externals.push(host);
        self.externals.last().expect("just pushed")
    }

    /// Adds a pod namespace `name` with address `ip`.
    pub fn add_pod(&mut self, name: &str, ip: std::net::Ipv4Addr) -> &Pod {
        let pod_ns = NetNs::new(name);
        let host_if = format!("h-{}", &name[name.len().saturating_sub(13)..]);
        veth(&self.ns, &host_if, &pod_ns, "eth0");
        pod_ns.exec("ip", &["addr", "add", &format!("{ip}/32"), "dev", "eth0"]);
        pod_ns.exec(
            "ip",
            &["route", "add", GATEWAY, "dev", "eth0", "scope", "link"],
        );
        pod_ns.exec(
            "ip",
            &["route", "add", "default", "via", GATEWAY, "dev", "eth0"],
        );
        self.ns.exec(
            "ip",
            &["addr", "add", &format!("{GATEWAY}/32"), "dev", &host_if],
        );
        self.ns.exec(
            "ip",
            &["route", "add", &format!("{ip}/32"), "dev", &host_if],
        );
        self.ns
            .sysctl(&format!("net.ipv4.conf.{host_if}.rp_filter"), "0");
        // The node answers ARP for the gateway on every pod veth.
        self.ns
            .sysctl(&format!("net.ipv4.conf.{host_if}.proxy_arp"), "1");
        self.pods.push(Pod {
            ns: pod_ns,
            ip,
            host_if,
        });
        self.pods.last().expect("just pushed")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Pods and external hosts first (their veths go with them), then the node.
        self.pods.clear();
        self.externals.clear();
    }
}
