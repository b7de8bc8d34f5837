//! Parts 1 and 2: the service datapath and the control plane, petrel against the real kube-proxy
//! v1.20.2 and the direct pod path, all fed by one real kube-apiserver in the same run.
//!
//! Topology: a control namespace holds the API server on a bridge; three simulated nodes hang off
//! it, each with the same ten backend pods (same addresses, wired by the real petrel-cni) and one
//! client pod:
//! - `direct`: no proxy at all; the client addresses the pods by IP (the physical limit);
//! - `petrel`: petrel-agent, with the client inside its socket-LB cgroup or outside it (TC path);
//! - `iptables`: kube-proxy `--proxy-mode=iptables`.
//!
//! The API server holds each Service with both an EndpointSlice (petrel reads those) and a core
//! v1 Endpoints object (kube-proxy 1.20 with EndpointSliceProxying off reads those; its v1beta1
//! slices are switched off for the v1 CRD). Every Endpoint names the petrel node, so backends are
//! node-local for petrel as they are for kube-proxy.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4, TcpStream},
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

use futures::StreamExt as _;
use k8s_openapi::{
    api::{
        core::v1::{
            EndpointAddress, EndpointPort as CoreEndpointPort, EndpointSubset, Endpoints, Service,
        },
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use petrel_testbed::{
    BpffsRoot,
    agent::Agent,
    apiserver::{KubeApiServer, bin_dir},
    cgroup::Cgroup,
    cluster::{self, POD_PORT},
    cni, monotonic_ns,
    netns::{NetNs, enter, veth},
    pod::join_cgroup_on_exec,
    unique, workspace_bin,
};
use serde_json::{Value, json};

use crate::report::{Section, Target, median, num, percentile_ms};

const CTL_IP: Ipv4Addr = Ipv4Addr::new(10, 98, 0, 1);
const POD_CIDR: &str = "10.244.1.0/24";
const CLUSTER_CIDR: &str = "10.244.0.0/16";
const BACKENDS: usize = 10;
const PETREL_NODE: &str = "node-petrel";
const KUBE_PROXY_NODE: &str = "node-iptables";
/// Concurrent connections of the load generator.
const CONCURRENCY: usize = 8;
/// How many API writes are in flight while services are created.
const CREATE_PARALLELISM: usize = 32;

pub struct Opts {
    /// Service counts the datapath and full syncs are measured at, in increasing order.
    pub scales: Vec<usize>,
    /// Of those, where endpoint-change latency is measured.
    pub churn_scales: Vec<usize>,
    /// petrel alone: full sync and peak RSS at this many services.
    pub big: usize,
    pub secs: f64,
    pub rounds: usize,
    pub changes: usize,
    /// Each endpoint-change series stops after this long, whatever its count.
    pub churn_budget: Duration,
    pub xtables: Xtables,
}

/// A process the benchmark started inside a namespace (through nsenter, which execs it, so the
/// PID is the program's); stopped by that PID on drop.
struct Proc {
    child: Child,
    stdout: Option<BufReader<ChildStdout>>,
    log: PathBuf,
}

impl Proc {
    fn spawn(netns: &Path, cgroup: Option<&Path>, program: &Path, args: &[String]) -> Proc {
        Self::spawn_with_path(netns, cgroup, program, args, None)
    }

    /// As `spawn`, with `bin` first on the program's PATH.
    fn spawn_with_path(
        netns: &Path,
        cgroup: Option<&Path>,
        program: &Path,
        args: &[String],
        bin: Option<&Path>,
    ) -> Proc {
        let log = std::env::temp_dir().join(format!("{}.log", unique("petrel-bench-")));
        let err = std::fs::File::create(&log).expect("log file");
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", netns.display()))
            .arg("--")
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err);
        if let Some(cg) = cgroup {
            join_cgroup_on_exec(&mut cmd, cg);
        }
        if let Some(bin) = bin {
            cmd.env(
                "PATH",
                format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", bin.display()),
            );
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()));
        let stdout = child.stdout.take().map(BufReader::new);
        Proc { child, stdout, log }
    }

    /// The next line the process prints (None at its end).
    fn line(&mut self) -> Option<String> {
        let mut s = String::new();
        match self.stdout.as_mut()?.read_line(&mut s) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(s.trim_end().to_string()),
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Waits for the process to end; its whole stdout.
    fn finish(mut self) -> (bool, String) {
        let mut out = String::new();
        if let Some(s) = self.stdout.as_mut() {
            let _ = s.read_to_string(&mut out);
        }
        let ok = self.child.wait().is_ok_and(|s| s.success());
        (ok, out)
    }

    fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        // SAFETY: kill(2) on the PID of a child we started and have not reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// PETREL_BENCH_DEBUG set: probes log every attempt, shown after each wait.
fn debug() -> bool {
    std::env::var_os("PETREL_BENCH_DEBUG").is_some()
}

/// Peak resident memory (VmHWM) of process `pid`, in MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

struct Backend {
    name: String,
    ip: Ipv4Addr,
    _server: Proc,
    _ns: NetNs,
}

/// A simulated node; fields drop in order, the node namespace last.
struct Node {
    backends: Vec<Backend>,
    client: NetNs,
    _ipam: tempfile::TempDir,
    ns: NetNs,
}

fn load_bin() -> PathBuf {
    workspace_bin("petrel-load", "PETREL_LOAD_BIN")
}

impl Node {
    /// Node `idx` (address 10.98.0.(10+idx)) on the control namespace's bridge, with BACKENDS
    /// backend pods serving on POD_PORT and a client pod, all wired by petrel-cni.
    fn new(ctl: &NetNs, idx: u8) -> Node {
        let ns = NetNs::new(&unique("pbs"));
        let sw = format!("sw{idx}");
        veth(ctl, &sw, &ns, "eth0");
        ctl.exec("ip", &["link", "set", &sw, "master", "br0"]);
        let ip = Ipv4Addr::new(10, 98, 0, 10 + idx);
        ns.exec("ip", &["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        ns.sysctl("net.ipv4.ip_forward", "1");
        for conf in ["all", "default", "eth0"] {
            ns.sysctl(&format!("net.ipv4.conf.{conf}.rp_filter"), "0");
        }
        // A VIP nothing has programmed yet is refused at once: the service range is local to
        // the node, whose stack answers a SYN to it with a reset. (An unreachable or prohibit
        // route would answer with ICMP, which the kernel rate-limits to one a second after a
        // burst of five: probes would see a second's retransmit instead of the moment the VIP
        // starts to answer.) Proxies translate before this routing decision.
        ns.exec(
            "ip",
            &[
                "route",
                "add",
                "local",
                "10.96.0.0/12",
                "dev",
                "lo",
                "table",
                "local",
            ],
        );
        let ipam = tempfile::tempdir().expect("tempdir");
        let conf = json!({
            "cniVersion": "1.1.0", "name": "bench", "type": "petrel-cni",
            "podCIDR": POD_CIDR, "dataDir": ipam.path(),
        })
        .to_string();
        let add = |id: &str| cni::add_pod(&ns, &conf, id, "pbp");
        let backends = (0..BACKENDS)
            .map(|i| {
                let name = format!("b{i}");
                let (pod, ip) = add(&name);
                let listen = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, POD_PORT).to_string();
                let mut server = Proc::spawn(
                    &pod.path(),
                    None,
                    &load_bin(),
                    &["serve".into(), name.clone(), listen],
                );
                assert_eq!(
                    server.line().as_deref(),
                    Some("listening"),
                    "backend {name}: {}",
                    server.log_tail()
                );
                Backend {
                    name,
                    ip,
                    _server: server,
                    _ns: pod,
                }
            })
            .collect();
        let (client, _) = add("client");
        // One client makes tens of thousands of connections a second: the whole port range, and
        // ports in TIME_WAIT reused (the servers close first, so few are).
        client.sysctl("net.ipv4.ip_local_port_range", "1024 65535");
        client.sysctl("net.ipv4.tcp_tw_reuse", "1");
        Node {
            backends,
            client,
            _ipam: ipam,
            ns,
        }
    }

    fn backend_ips(&self) -> Vec<Ipv4Addr> {
        self.backends.iter().map(|b| b.ip).collect()
    }

    /// Runs petrel-load `mode` (conn or rr) from the client pod against `addrs`.
    fn load(&self, cgroup: Option<&Path>, mode: &str, addrs: &str, secs: f64) -> Value {
        let args: Vec<String> = vec![
            mode.into(),
            addrs.into(),
            format!("--secs={secs}"),
            format!("--concurrency={CONCURRENCY}"),
        ];
        let p = Proc::spawn(&self.client.path(), cgroup, &load_bin(), &args);
        let log = p.log_tail();
        let (ok, out) = p.finish();
        assert!(ok, "petrel-load {mode} {addrs} failed: {out} {log}");
        serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("petrel-load output {out:?}: {e}"))
    }

    /// Starts a probe of `vip` from the client pod that ends when `expect` (or any backend)
    /// answers; returns once it has made its first attempt.
    fn probe(
        &self,
        cgroup: Option<&Path>,
        vip: SocketAddrV4,
        expect: Option<&str>,
        timeout: u64,
    ) -> Proc {
        let mut args: Vec<String> = vec![
            "probe".into(),
            vip.to_string(),
            format!("--timeout={timeout}"),
        ];
        if let Some(e) = expect {
            args.push(format!("--expect={e}"));
        }
        if debug() {
            args.push("--verbose".into());
        }
        let mut p = Proc::spawn(&self.client.path(), cgroup, &load_bin(), &args);
        let first = p.line();
        assert_eq!(first.as_deref(), Some("ready"), "probe: {}", p.log_tail());
        p
    }

    /// Scrapes `/metrics` on 127.0.0.1:10249 inside the node (both proxies serve there).
    fn metrics(&self) -> String {
        self.ns
            .run(|| {
                let mut s = TcpStream::connect("127.0.0.1:10249").ok()?;
                s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
                s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
                    .ok()?;
                let mut out = String::new();
                s.read_to_string(&mut out).ok()?;
                Some(out)
            })
            .unwrap_or_default()
    }
}

/// Waits for a probe's `seen <ns>` line; the CLOCK_MONOTONIC time it printed. Gives up early
/// when `alive` (polled every second) says the proxy being waited for has exited.
fn seen(mut probe: Proc, alive: &mut dyn FnMut() -> Result<(), String>) -> Result<u128, String> {
    let mut stdout = probe.stdout.take().expect("probe stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        while stdout.read_line(&mut line).is_ok_and(|n| n > 0) {
            if tx.send(line.trim_end().to_string()).is_err() {
                return;
            }
            line.clear();
        }
    });
    loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(line) => {
                if let Some(t) = line.strip_prefix("seen ") {
                    if debug() {
                        eprintln!("probe:\n{}", probe.log_tail());
                    }
                    return t
                        .parse()
                        .map_err(|e| format!("probe printed {line:?}: {e}"));
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => alive()?,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return Err(probe.log_tail()),
        }
    }
}

/// A metric's value in Prometheus text output (first sample of that exact name).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            let rest = l.strip_prefix(name)?;
            let rest = rest.strip_prefix(' ').or_else(|| {
                rest.strip_prefix('{')
                    .and_then(|r| r.split_once("} ").map(|(_, v)| v))
            })?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or(f64::NAN)
}

fn endpoints_object(name: &str, backends: &[(Ipv4Addr, String)]) -> Endpoints {
    Endpoints {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            ..Default::default()
        },
        subsets: Some(vec![endpoint_subset(backends)]),
    }
}

fn endpoint_subset(backends: &[(Ipv4Addr, String)]) -> EndpointSubset {
    EndpointSubset {
        addresses: Some(
            backends
                .iter()
                .map(|(ip, node)| EndpointAddress {
                    ip: ip.to_string(),
                    node_name: Some(node.clone()),
                    ..Default::default()
                })
                .collect(),
        ),
        ports: Some(vec![CoreEndpointPort {
            name: Some("http".into()),
            port: POD_PORT.into(),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        ..Default::default()
    }
}

/// Creates services `svc-<from>` .. `svc-<to - 1>` with `backends`, an EndpointSlice and a core
/// Endpoints object each; their ClusterIPs in order.
async fn create_services(
    client: &kube::Client,
    range: std::ops::Range<usize>,
    backends: &[(Ipv4Addr, String)],
) -> Vec<Ipv4Addr> {
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let eps: Api<Endpoints> = Api::namespaced(client.clone(), "default");
    let pp = PostParams::default();
    futures::stream::iter(range)
        .map(|i| {
            let (services, slices, eps, pp) = (&services, &slices, &eps, &pp);
            async move {
                let name = format!("svc-{i}");
                let svc = services
                    .create(pp, &cluster::service_object(&name, None))
                    .await
                    .unwrap_or_else(|e| panic!("create service {name}: {e}"));
                let slice_obj = cluster::slice_object(&name, backends);
                let ep_obj = endpoints_object(&name, backends);
                let (a, b) = futures::join!(slices.create(pp, &slice_obj), eps.create(pp, &ep_obj));
                a.unwrap_or_else(|e| panic!("create slice {name}: {e}"));
                b.unwrap_or_else(|e| panic!("create endpoints {name}: {e}"));
                cluster::cluster_ip(&svc)
            }
        })
        .buffered(CREATE_PARALLELISM)
        .collect()
        .await
}

/// The two proxies under test and what they need to run.
struct Proxies {
    kubeconfig: PathBuf,
    pins: BpffsRoot,
    cgroup: Cgroup,
    files: tempfile::TempDir,
    petrel: Option<Agent>,
    kube_proxy: Option<Proc>,
    xtables: tempfile::TempDir,
}

/// Which iptables kube-proxy runs: `iptables-legacy` (x_tables) or `iptables-nft`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Xtables {
    Legacy,
    Nft,
}

impl Xtables {
    pub fn name(self) -> &'static str {
        match self {
            Xtables::Legacy => "legacy",
            Xtables::Nft => "nft",
        }
    }
}

/// A folder of `iptables*` and `ip6tables*` links to Debian's `mode` variants, put first on
/// kube-proxy's PATH: the machine's own alternatives are left as they are.
fn xtables_dir(mode: Xtables) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for family in ["iptables", "ip6tables"] {
        for tool in ["", "-save", "-restore"] {
            let target = format!("/usr/sbin/{family}-{}{tool}", mode.name());
            std::os::unix::fs::symlink(&target, dir.path().join(format!("{family}{tool}")))
                .expect("link xtables tool");
        }
    }
    dir
}

impl Proxies {
    /// `iptables-save` lines (rules, `-A ...`) in the node, of kube-proxy's variant.
    fn iptables_rules(&self, node: &Node) -> Vec<String> {
        let save = self.xtables.path().join("iptables-save");
        let out = node.ns.exec(&save.display().to_string(), &[]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("-A "))
            .map(str::to_string)
            .collect()
    }

    fn petrel_args(&self) -> Vec<String> {
        let f = |s: &str| self.files.path().join(s).display().to_string();
        vec![
            format!("--kubeconfig={}", self.kubeconfig.display()),
            format!("--node-name={PETREL_NODE}"),
            format!("--bpffs-root={}", self.pins.path().display()),
            format!("--cgroup-root={}", self.cgroup.path().display()),
            format!("--state-dir={}", f("state")),
            format!("--pod-cidr-file={}", f("pod-cidr")),
            format!("--cni-conf-file={}", f("05-petrel.conflist")),
            "--routing=none".into(),
            format!("--cluster-cidr={CLUSTER_CIDR}"),
        ]
    }

    /// Stops the agent and removes its datapath, so the next start syncs from nothing.
    fn stop_petrel(&mut self, node: &Node) {
        if self.petrel.take().is_some() {
            let bin = workspace_bin("petrel-agent", "PETREL_AGENT_BIN");
            let pins = format!("--bpffs-root={}", self.pins.path().display());
            node.ns
                .exec(&bin.display().to_string(), &["--cleanup", &pins]);
        }
    }

    fn kube_proxy_proc(&self, node: &Node) -> Proc {
        let args: Vec<String> = vec![
            format!("--kubeconfig={}", self.kubeconfig.display()),
            format!("--hostname-override={KUBE_PROXY_NODE}"),
            "--proxy-mode=iptables".into(),
            format!("--cluster-cidr={CLUSTER_CIDR}"),
            // Leave the machine's conntrack settings alone.
            "--conntrack-max-per-core=0".into(),
            "--conntrack-tcp-timeout-established=0".into(),
            "--conntrack-tcp-timeout-close-wait=0".into(),
            "--metrics-bind-address=127.0.0.1:10249".into(),
            "--healthz-bind-address=127.0.0.1:10256".into(),
            // 1.20 reads v1beta1 slices, switched off here for the v1 CRD: read Endpoints.
            "--feature-gates=EndpointSliceProxying=false".into(),
            // No periodic full resync while other variants are measured (default 30 s); the
            // minimum interval between syncs keeps its default (1 s).
            "--iptables-sync-period=1h".into(),
        ];
        Proc::spawn_with_path(
            &node.ns.path(),
            None,
            &bin_dir().join("kube-proxy"),
            &args,
            Some(self.xtables.path()),
        )
    }

    /// Stops kube-proxy and removes its rules (`kube-proxy --cleanup`), so the next start
    /// syncs from nothing.
    fn stop_kube_proxy(&mut self, node: &Node) {
        if self.kube_proxy.take().is_some() {
            let bin = bin_dir().join("kube-proxy");
            let _ = Command::new("nsenter")
                .arg(format!("--net={}", node.ns.path().display()))
                .arg("--")
                .arg(bin)
                .arg("--cleanup")
                .env(
                    "PATH",
                    format!(
                        "{}:/usr/sbin:/usr/bin:/sbin:/bin",
                        self.xtables.path().display()
                    ),
                )
                .output();
            let left = self.iptables_rules(node);
            assert!(
                left.iter().all(|r| !r.contains("KUBE-SVC")),
                "kube-proxy --cleanup left {} KUBE rules",
                left.len()
            );
        }
    }
}

/// One full sync: from starting the proxy until `vip` answers from the node's client.
struct Sync {
    secs: f64,
    /// The proxy's own kubeproxy_sync_proxy_rules_duration_seconds: sum and count so far.
    own_sum: f64,
    own_count: f64,
    peak_rss_mib: f64,
    /// kube-proxy: iptables rules in the node after the sync.
    rules: Option<usize>,
}

impl Sync {
    fn new(secs: f64, metrics: &str, pid: Option<u32>, rules: Option<usize>) -> Sync {
        const OWN: &str = "kubeproxy_sync_proxy_rules_duration_seconds";
        Sync {
            secs,
            own_sum: metric(metrics, &format!("{OWN}_sum")),
            own_count: metric(metrics, &format!("{OWN}_count")),
            peak_rss_mib: pid.map_or(f64::NAN, peak_rss_mib),
            rules,
        }
    }

    fn json(&self) -> Value {
        json!({"secs": self.secs, "own_sync_sum_s": self.own_sum, "own_sync_count": self.own_count,
               "peak_rss_mib": self.peak_rss_mib, "iptables_rules": self.rules})
    }
}

fn full_sync<P>(
    node: &Node,
    cgroup: Option<&Path>,
    vip: SocketAddrV4,
    start: impl FnOnce() -> P,
    mut alive: impl FnMut(&mut P) -> Result<(), String>,
) -> (f64, String, P) {
    let t0 = monotonic_ns();
    let mut proxy = start();
    // The probe starts after the proxy: a proxy that serves before the probe's first attempt is
    // counted late by that much (a few milliseconds), never early.
    let probe = node.probe(cgroup, vip, None, 1800);
    let t = seen(probe, &mut || alive(&mut proxy))
        .unwrap_or_else(|e| panic!("{vip} never answered: {e}"));
    // Scrape after the sync (the first answer may precede the metric's update by a moment).
    std::thread::sleep(Duration::from_millis(300));
    ((t - t0) as f64 / 1e9, node.metrics(), proxy)
}

/// Starts petrel-agent with `args` in `node` and measures its full sync to `vip`.
fn run_petrel(px: &mut Proxies, node: &Node, vip: SocketAddrV4, args: &[String]) -> Sync {
    let cg = px.cgroup.path().to_path_buf();
    let (secs, metrics, agent) = full_sync(
        node,
        Some(&cg),
        vip,
        || Agent::start(&node.ns.path(), args),
        agent_alive,
    );
    let sync = Sync::new(secs, &metrics, agent.pid(), None);
    px.petrel = Some(agent);
    sync
}

fn sync_petrel(px: &mut Proxies, node: &Node, vip: SocketAddrV4) -> Sync {
    px.stop_petrel(node);
    let args = px.petrel_args();
    run_petrel(px, node, vip, &args)
}

fn sync_kube_proxy(px: &mut Proxies, node: &Node, vip: SocketAddrV4) -> Sync {
    px.stop_kube_proxy(node);
    let (secs, metrics, proc) = full_sync(
        node,
        None,
        vip,
        || px.kube_proxy_proc(node),
        |p: &mut Proc| match p.child.try_wait() {
            Ok(Some(status)) => Err(format!("kube-proxy exited ({status}):\n{}", p.log_tail())),
            _ => Ok(()),
        },
    );
    let rules = px.iptables_rules(node).len();
    let sync = Sync::new(secs, &metrics, Some(proc.child.id()), Some(rules));
    px.kube_proxy = Some(proc);
    sync
}

/// The ClusterIP of manifest service `i` (inside the node's service range).
fn manifest_vip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 104, 0, 0)) + i as u32)
}

/// Writes `n` Services x 10 endpoints as manifests (YAML flow style, one document per object).
fn write_manifests(dir: &Path, ips: &[Ipv4Addr], n: usize) {
    let eps: Vec<String> = ips
        .iter()
        .map(|ip| {
            format!("{{addresses: [{ip}], nodeName: {PETREL_NODE}, conditions: {{ready: true}}}}")
        })
        .collect();
    let eps = eps.join(", ");
    let mut out = String::with_capacity(n * 1200);
    for i in 0..n {
        let vip = manifest_vip(i);
        out.push_str(&format!(
            "---\n{{apiVersion: v1, kind: Service, metadata: {{name: svc-{i}, namespace: default}}, \
             spec: {{clusterIP: {vip}, ports: [{{name: http, port: 80, targetPort: {POD_PORT}, protocol: TCP}}]}}}}\n\
             ---\n{{apiVersion: discovery.k8s.io/v1, kind: EndpointSlice, metadata: {{name: svc-{i}-1, namespace: default, \
             labels: {{kubernetes.io/service-name: svc-{i}}}}}, addressType: IPv4, endpoints: [{eps}], \
             ports: [{{name: http, port: {POD_PORT}, protocol: TCP}}]}}\n"
        ));
    }
    std::fs::write(dir.join("services.yaml"), out).expect("write manifests");
}

/// petrel-agent in standalone mode on `n` services: from its start until the last answers.
fn sync_standalone(px: &mut Proxies, node: &Node, ips: &[Ipv4Addr], n: usize) -> Sync {
    let dir = px.files.path().join("manifests");
    std::fs::create_dir_all(&dir).expect("manifests folder");
    write_manifests(&dir, ips, n);
    let mut args: Vec<String> = px
        .petrel_args()
        .into_iter()
        .filter(|a| !a.starts_with("--kubeconfig"))
        .collect();
    args.push(format!("--manifests={}", dir.display()));
    run_petrel(px, node, SocketAddrV4::new(manifest_vip(n - 1), 80), &args)
}

fn agent_alive(a: &mut Agent) -> Result<(), String> {
    if a.exited() {
        Err(format!("petrel-agent exited:\n{}", a.log()))
    } else {
        Ok(())
    }
}

/// Which object an endpoint change is written to: each proxy reads only one of them, so a
/// series for one proxy makes the other do no work.
#[derive(Clone, Copy)]
enum ChurnObject {
    Slice,
    Endpoints,
}

/// Endpoint-change latency: the `churn` service's one endpoint moves to the next backend; from
/// the API write until the client's connections are answered by the new backend. Changes are
/// `gap` apart (past the proxy's own minimum sync interval, so each is measured alone).
#[allow(clippy::too_many_arguments)]
fn churn(
    rt: &tokio::runtime::Runtime,
    client: &kube::Client,
    node: &Node,
    cgroup: Option<&Path>,
    vip: SocketAddrV4,
    object: ChurnObject,
    opts: &Opts,
    gap: Duration,
) -> Vec<Duration> {
    let started = Instant::now();
    let mut out = Vec::new();
    for i in 0..opts.changes {
        if started.elapsed() > opts.churn_budget {
            break;
        }
        let next = &node.backends[(i + 1) % BACKENDS];
        let probe = node.probe(cgroup, vip, Some(&next.name), 120);
        let backends = [(next.ip, PETREL_NODE.to_string())];
        let t0 = monotonic_ns();
        rt.block_on(async {
            let pp = PatchParams::default();
            match object {
                ChurnObject::Slice => {
                    let patch = json!({"endpoints": cluster::slice_endpoints(&backends)});
                    Api::<EndpointSlice>::namespaced(client.clone(), "default")
                        .patch("churn-1", &pp, &Patch::Merge(patch))
                        .await
                        .map(drop)
                }
                ChurnObject::Endpoints => {
                    let patch = json!({"subsets": [endpoint_subset(&backends)]});
                    Api::<Endpoints>::namespaced(client.clone(), "default")
                        .patch("churn", &pp, &Patch::Merge(patch))
                        .await
                        .map(drop)
                }
            }
        })
        .expect("patch the churn service's endpoints");
        let t = seen(probe, &mut || Ok(()))
            .unwrap_or_else(|e| panic!("endpoint change {i} never seen: {e}"));
        out.push(Duration::from_nanos((t - t0) as u64));
        std::thread::sleep(gap);
    }
    out
}

/// One datapath variant: which node, inside the socket-LB cgroup or not, to the VIP or direct.
struct Variant {
    name: &'static str,
    node: usize,
    socket_lb: bool,
    direct: bool,
}

const VARIANTS: [Variant; 4] = [
    Variant {
        name: "direct (pod IPs)",
        node: 0,
        socket_lb: false,
        direct: true,
    },
    Variant {
        name: "petrel socket-LB",
        node: 1,
        socket_lb: true,
        direct: false,
    },
    Variant {
        name: "petrel TC",
        node: 1,
        socket_lb: false,
        direct: false,
    },
    Variant {
        name: "kube-proxy iptables",
        node: 2,
        socket_lb: false,
        direct: false,
    },
];

/// Medians over rounds of one variant at one scale.
#[derive(Default, Clone)]
struct Figures {
    conn_rate: Vec<f64>,
    conn_p50: Vec<f64>,
    conn_p99: Vec<f64>,
    rr_rate: Vec<f64>,
    rr_p50: Vec<f64>,
    rr_p99: Vec<f64>,
    errors: u64,
    backends: usize,
}

impl Figures {
    fn add(&mut self, conn: &Value, rr: &Value) {
        let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
        self.conn_rate.push(f(conn, "per_sec"));
        self.conn_p50.push(f(conn, "p50_ms"));
        self.conn_p99.push(f(conn, "p99_ms"));
        self.rr_rate.push(f(rr, "per_sec"));
        self.rr_p50.push(f(rr, "p50_ms"));
        self.rr_p99.push(f(rr, "p99_ms"));
        self.errors += conn["errors"].as_u64().unwrap_or(0) + rr["errors"].as_u64().unwrap_or(0);
        let answered = conn["backends"].as_object().map_or(0, |m| m.len());
        self.backends = self.backends.max(answered);
    }

    fn json(&self) -> Value {
        json!({
            "conn_per_sec": median(&self.conn_rate), "conn_p50_ms": median(&self.conn_p50),
            "conn_p99_ms": median(&self.conn_p99), "rr_per_sec": median(&self.rr_rate),
            "rr_p50_ms": median(&self.rr_p50), "rr_p99_ms": median(&self.rr_p99),
            "errors": self.errors, "backends_answered": self.backends,
            "conn_per_sec_rounds": self.conn_rate, "rr_per_sec_rounds": self.rr_rate,
        })
    }
}

/// CPU ticks (user + system) process `pid` has used, and whether it has a child running (as
/// kube-proxy has while iptables-restore runs).
fn busy_ticks(pid: u32) -> (u64, bool) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    let children = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .any(|t| {
            std::fs::read_to_string(t.path().join("children")).is_ok_and(|c| !c.trim().is_empty())
        });
    (ticks, children)
}

/// Waits (up to two minutes) until both proxies are idle: a sync still running after the last
/// endpoint change would take CPU from whichever variant is measured first.
fn wait_idle(px: &Proxies) {
    let pids: Vec<u32> = [
        px.petrel.as_ref().and_then(Agent::pid),
        px.kube_proxy.as_ref().map(|p| p.child.id()),
    ]
    .into_iter()
    .flatten()
    .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut before: Vec<(u64, bool)> = pids.iter().map(|p| busy_ticks(*p)).collect();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_secs(1));
        let now: Vec<(u64, bool)> = pids.iter().map(|p| busy_ticks(*p)).collect();
        // At most 5 ticks (50 ms) a second each, and no child process.
        let idle = before
            .iter()
            .zip(&now)
            .all(|((a, _), (b, child))| b - a <= 5 && !child);
        if idle {
            return;
        }
        before = now;
    }
    eprintln!("    (proxies still busy after 2 minutes; measuring anyway)");
}

/// Every variant, `rounds` times in turn (so drift in the machine's load spreads over all).
fn datapath(nodes: &[Node], px: &Proxies, vips: &[Ipv4Addr], opts: &Opts) -> Vec<Figures> {
    let mut figs = vec![Figures::default(); VARIANTS.len()];
    let direct: Vec<String> = nodes[0]
        .backend_ips()
        .iter()
        .map(|ip| SocketAddrV4::new(*ip, POD_PORT).to_string())
        .collect();
    let direct = direct.join(",");
    // Up to 16 services spread over all of them, used in turn: a rule list walked in order
    // (iptables' KUBE-SERVICES) costs what an average service costs, not the newest one's.
    let step = vips.len().div_ceil(16).max(1);
    let spread: Vec<String> = vips
        .iter()
        .rev()
        .step_by(step)
        .map(|ip| SocketAddrV4::new(*ip, 80).to_string())
        .collect();
    let spread = spread.join(",");
    for _ in 0..opts.rounds {
        for (v, f) in VARIANTS.iter().zip(figs.iter_mut()) {
            let node = &nodes[v.node];
            let cg = v.socket_lb.then(|| px.cgroup.path());
            let to = if v.direct {
                direct.clone()
            } else {
                spread.clone()
            };
            let conn = node.load(cg, "conn", &to, opts.secs);
            let rr = node.load(cg, "rr", &to, opts.secs);
            f.add(&conn, &rr);
        }
    }
    figs
}

/// What one scale step measured.
struct Step {
    services: usize,
    create_secs: f64,
    petrel: Sync,
    kube_proxy: Sync,
    churn: Option<(Vec<Duration>, Vec<Duration>)>,
    figures: Vec<Figures>,
}

pub fn run(opts: Opts) -> Section {
    let ctl = NetNs::new(&unique("pbc"));
    ctl.exec("ip", &["link", "add", "br0", "type", "bridge"]);
    ctl.exec("ip", &["link", "set", "br0", "up"]);
    ctl.exec(
        "ip",
        &["addr", "add", &format!("{CTL_IP}/24"), "dev", "br0"],
    );
    let path = ctl.path();
    // The API server, etcd and the test's kube client live in the control namespace: all of it
    // runs on a thread (and a runtime) that entered it.
    std::thread::spawn(move || {
        enter(&path);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        measure(&rt, &ctl, &opts)
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

fn measure(rt: &tokio::runtime::Runtime, ctl: &NetNs, opts: &Opts) -> Section {
    eprintln!("==> services: starting kube-apiserver and three simulated nodes");
    let api = rt.block_on(KubeApiServer::start_on(CTL_IP));
    let client = rt.block_on(api.client());
    let nodes: Vec<Node> = (1..=3).map(|i| Node::new(ctl, i)).collect();
    let ips = nodes[0].backend_ips();
    for n in &nodes[1..] {
        assert_eq!(
            n.backend_ips(),
            ips,
            "petrel-cni gave the nodes' pods different addresses"
        );
    }
    rt.block_on(async {
        let cidr = |s: &str| s.parse().expect("cidr");
        cluster::create_node(
            &client,
            PETREL_NODE,
            Ipv4Addr::new(10, 98, 0, 12),
            cidr(POD_CIDR),
        )
        .await;
        cluster::create_node(
            &client,
            KUBE_PROXY_NODE,
            Ipv4Addr::new(10, 98, 0, 13),
            cidr("10.244.2.0/24"),
        )
        .await;
    });
    let backends: Vec<(Ipv4Addr, String)> = ips
        .iter()
        .map(|ip| (*ip, PETREL_NODE.to_string()))
        .collect();
    // The endpoint-change service: one endpoint, moved from backend to backend.
    let churn_vip = rt.block_on(async {
        let first = [backends[0].clone()];
        let svc = Api::<Service>::namespaced(client.clone(), "default")
            .create(
                &PostParams::default(),
                &cluster::service_object("churn", None),
            )
            .await
            .expect("create churn service");
        Api::<EndpointSlice>::namespaced(client.clone(), "default")
            .create(
                &PostParams::default(),
                &cluster::slice_object("churn", &first),
            )
            .await
            .expect("churn slice");
        Api::<Endpoints>::namespaced(client.clone(), "default")
            .create(&PostParams::default(), &endpoints_object("churn", &first))
            .await
            .expect("churn endpoints");
        SocketAddrV4::new(cluster::cluster_ip(&svc), 80)
    });
    let mut px = Proxies {
        kubeconfig: api.kubeconfig(),
        pins: BpffsRoot::new(&unique("petrel-bench-")),
        cgroup: Cgroup::new(&unique("petrel-bench-")),
        files: tempfile::tempdir().expect("tempdir"),
        petrel: None,
        kube_proxy: None,
        xtables: xtables_dir(opts.xtables),
    };
    let mut vips: Vec<Ipv4Addr> = Vec::new();
    let mut steps = Vec::new();
    for &n in &opts.scales {
        px.stop_petrel(&nodes[1]);
        px.stop_kube_proxy(&nodes[2]);
        eprintln!("==> services: creating services up to {n} (x{BACKENDS} endpoints)");
        let t = Instant::now();
        let made = rt.block_on(create_services(&client, vips.len()..n, &backends));
        vips.extend(made);
        let create_secs = t.elapsed().as_secs_f64();
        let last = SocketAddrV4::new(*vips.last().expect("at least one service"), 80);
        eprintln!("    {create_secs:.1}s; full syncs to {last} (the newest service)");
        let petrel = sync_petrel(&mut px, &nodes[1], last);
        eprintln!("    petrel: {:.2}s", petrel.secs);
        let kube_proxy = sync_kube_proxy(&mut px, &nodes[2], last);
        eprintln!("    kube-proxy iptables: {:.2}s", kube_proxy.secs);
        let churn = opts.churn_scales.contains(&n).then(|| {
            eprintln!("==> services: endpoint changes at {n} services");
            let cg = px.cgroup.path().to_path_buf();
            let p = churn(
                rt,
                &client,
                &nodes[1],
                Some(&cg),
                churn_vip,
                ChurnObject::Slice,
                opts,
                Duration::from_millis(200),
            );
            if debug() {
                let log = px.petrel.as_ref().map(Agent::log).unwrap_or_default();
                let updates: Vec<&str> = log
                    .lines()
                    .filter(|l| l.contains("datapath updated"))
                    .collect();
                eprintln!(
                    "agent:\n{}",
                    updates[updates.len().saturating_sub(8)..].join("\n")
                );
            }
            let k = churn(
                rt,
                &client,
                &nodes[2],
                None,
                churn_vip,
                ChurnObject::Endpoints,
                opts,
                Duration::from_millis(1100),
            );
            eprintln!(
                "    p99 petrel {:.1} ms ({} changes), kube-proxy {:.1} ms ({} changes)",
                percentile_ms(&p, 99.0),
                p.len(),
                percentile_ms(&k, 99.0),
                k.len()
            );
            (p, k)
        });
        eprintln!(
            "==> services: datapath at {n} services, {} rounds",
            opts.rounds
        );
        wait_idle(&px);
        let figures = datapath(&nodes, &px, &vips, opts);
        for (v, f) in VARIANTS.iter().zip(&figures) {
            eprintln!(
                "    {:<20} {:>8.0} conn/s {:>8.0} rr/s",
                v.name,
                median(&f.conn_rate),
                median(&f.rr_rate)
            );
        }
        steps.push(Step {
            services: n,
            create_secs,
            petrel,
            kube_proxy,
            churn,
            figures,
        });
    }

    // petrel alone at `big` services, from manifests: this API server creates about 170
    // services a second here, so `big` of them through it would take most of the benchmark's
    // time. The agent reads the same k8s-openapi objects from files (standalone mode) and
    // programs them the same way.
    px.stop_kube_proxy(&nodes[2]);
    px.stop_petrel(&nodes[1]);
    drop(api);
    eprintln!(
        "==> services: petrel alone at {} services (standalone manifests)",
        opts.big
    );
    let big = sync_standalone(&mut px, &nodes[1], &ips, opts.big);
    eprintln!(
        "    petrel full sync {:.2}s, peak RSS {:.0} MiB",
        big.secs, big.peak_rss_mib
    );
    px.stop_petrel(&nodes[1]);
    report(&steps, &big, opts)
}

fn report(steps: &[Step], big: &Sync, opts: &Opts) -> Section {
    let mut md = String::from("### Service datapath\n\n");
    md.push_str(&format!(
        "New connections (connect, one request and answer, close) and round trips on kept \
         connections from a client pod through a ClusterIP to 10 pods on the same node, {CONCURRENCY} \
         at a time, {} s each, median of {} interleaved rounds; p50/p99 per operation. kube-proxy \
         runs iptables-{}.\n\n\
         | services | variant | conn/s | vs direct | conn p50 ms | conn p99 ms | rr/s | rr p50 ms | rr p99 ms | errors | backends |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
        opts.secs,
        opts.rounds,
        opts.xtables.name()
    ));
    for s in steps {
        let direct = median(&s.figures[0].conn_rate);
        for (v, f) in VARIANTS.iter().zip(&s.figures) {
            let rate = median(&f.conn_rate);
            md.push_str(&format!(
                "| {} | {} | {} | {:.2} | {} | {} | {} | {} | {} | {} | {} |\n",
                s.services,
                v.name,
                num(rate),
                rate / direct,
                num(median(&f.conn_p50)),
                num(median(&f.conn_p99)),
                num(median(&f.rr_rate)),
                num(median(&f.rr_p50)),
                num(median(&f.rr_p99)),
                f.errors,
                f.backends
            ));
        }
    }
    md.push_str(
        "\nkube-proxy IPVS mode: not measured. This machine's kernel is built without IP_VS \
         (no /proc/net/ip_vs, no loadable modules), so kube-proxy v1.20.2 cannot run it here.\n",
    );
    md.push_str("\n### Control plane\n\nFull sync: the proxy started (its datapath cleaned first) with N services x 10 endpoints already in the API server, until the newest service answers. `own sync` is the proxy's own `kubeproxy_sync_proxy_rules_duration_seconds` (sum over count syncs).\n\n\
         | services | created in s | petrel sync s | petrel own sync s (n) | petrel peak RSS MiB | kube-proxy sync s | kube-proxy own sync s (n) | kube-proxy peak RSS MiB | iptables rules | ratio |\n\
         |---|---|---|---|---|---|---|---|---|---|\n");
    for s in steps {
        md.push_str(&format!(
            "| {} | {} | {} | {} ({}) | {} | {} | {} ({}) | {} | {} | {:.1}x |\n",
            s.services,
            num(s.create_secs),
            num(s.petrel.secs),
            num(s.petrel.own_sum),
            s.petrel.own_count,
            num(s.petrel.peak_rss_mib),
            num(s.kube_proxy.secs),
            num(s.kube_proxy.own_sum),
            s.kube_proxy.own_count,
            num(s.kube_proxy.peak_rss_mib),
            s.kube_proxy.rules.unwrap_or(0),
            s.kube_proxy.secs / s.petrel.secs
        ));
    }
    md.push_str(&format!(
        "\npetrel alone at {} services x 10 endpoints (standalone mode: read from one manifest file, not from the API server): full sync {} s from the agent's start, own sync {} s ({} syncs), peak RSS {} MiB.\n",
        opts.big,
        num(big.secs),
        num(big.own_sum),
        big.own_count,
        num(big.peak_rss_mib)
    ));
    md.push_str("\nEndpoint change: the one endpoint of a service moves to another pod (petrel: EndpointSlice write; kube-proxy: Endpoints write, each proxy reads only its own), from the API write until the client's new connections reach the new pod; changes spaced past each proxy's minimum sync interval (petrel 0.2 s, kube-proxy 1.1 s).\n\n\
         | services | petrel p50 ms | petrel p99 ms | changes | kube-proxy p50 ms | kube-proxy p99 ms | changes |\n|---|---|---|---|---|---|---|\n");
    for s in steps {
        if let Some((p, k)) = &s.churn {
            md.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} |\n",
                s.services,
                num(percentile_ms(p, 50.0)),
                num(percentile_ms(p, 99.0)),
                p.len(),
                num(percentile_ms(k, 50.0)),
                num(percentile_ms(k, 99.0)),
                k.len()
            ));
        }
    }

    let first = steps.first().expect("a scale");
    let last = steps.last().expect("a scale");
    let rate = |s: &Step, i: usize| median(&s.figures[i].conn_rate);
    let mut targets = Vec::new();
    for s in [first, last] {
        for i in [1, 2] {
            targets.push(Target::at_least(
                &format!(
                    "{} conn/s / direct, {} services",
                    VARIANTS[i].name, s.services
                ),
                rate(s, i) / rate(s, 0),
                0.97,
            ));
        }
    }
    for i in [1, 2] {
        targets.push(Target::at_least(
            &format!(
                "{} conn/s / kube-proxy iptables, {} services",
                VARIANTS[i].name, last.services
            ),
            rate(last, i) / rate(last, 3),
            3.0,
        ));
    }
    targets.push(Target::at_most(
        &format!(
            "petrel full sync / kube-proxy iptables full sync, {} services",
            last.services
        ),
        last.petrel.secs / last.kube_proxy.secs,
        0.05,
    ));
    targets.push(Target::at_most(
        &format!("petrel full sync s, {} services", opts.big),
        big.secs,
        10.0,
    ));
    targets.push(Target::at_most(
        &format!("petrel agent peak RSS MiB, {} services", opts.big),
        big.peak_rss_mib,
        256.0,
    ));
    if let Some(s) = steps.iter().rev().find(|s| s.churn.is_some()) {
        let (p, _) = s.churn.as_ref().expect("found above");
        targets.push(Target::at_most(
            &format!("petrel endpoint change p99 ms, {} services", s.services),
            percentile_ms(p, 99.0),
            50.0,
        ));
    }

    let json_steps: Vec<Value> = steps
        .iter()
        .map(|s| {
            let variants: Vec<Value> = VARIANTS
                .iter()
                .zip(&s.figures)
                .map(|(v, f)| {
                    let mut j = f.json();
                    j["variant"] = json!(v.name);
                    j
                })
                .collect();
            let ms = |v: &[Duration]| v.iter().map(|d| d.as_secs_f64() * 1000.0).collect::<Vec<_>>();
            json!({
                "services": s.services,
                "create_secs": s.create_secs,
                "full_sync": {"petrel": s.petrel.json(), "kube_proxy_iptables": s.kube_proxy.json()},
                "endpoint_change_ms": s.churn.as_ref().map(|(p, k)| json!({"petrel": ms(p), "kube_proxy_iptables": ms(k)})),
                "datapath": variants,
            })
        })
        .collect();
    Section {
        md,
        json: json!({
            "steps": json_steps,
            "big": {"services": opts.big, "petrel": big.json()},
            "concurrency": CONCURRENCY, "secs": opts.secs, "rounds": opts.rounds,
            "kube_proxy_ipvs": "not measured: kernel without IP_VS",
            "kube_proxy_iptables_variant": opts.xtables.name(),
        }),
        targets,
    }
}

/// [(services, f(step))] over the scale steps of a finished section.
fn points(section: &Section, f: impl Fn(&Value) -> Option<f64>) -> Vec<(f64, f64)> {
    section.json["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            let n = s["services"].as_f64().unwrap_or(f64::NAN);
            (n, f(s).unwrap_or(f64::NAN))
        })
        .collect()
}

/// (variant, [(services, new connections per second)]) for the scaling plot.
pub fn rate_series(section: &Section) -> Vec<(String, Vec<(f64, f64)>)> {
    VARIANTS
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let pts = points(section, |s| s["datapath"][i]["conn_per_sec"].as_f64());
            (v.name.to_string(), pts)
        })
        .collect()
}

/// (proxy, [(services, full sync seconds)]) for the sync plot.
pub fn sync_series(section: &Section) -> Vec<(String, Vec<(f64, f64)>)> {
    [
        ("petrel", "petrel"),
        ("kube-proxy iptables", "kube_proxy_iptables"),
    ]
    .into_iter()
    .map(|(name, key)| {
        let pts = points(section, |s| s["full_sync"][key]["secs"].as_f64());
        (name.to_string(), pts)
    })
    .collect()
}
