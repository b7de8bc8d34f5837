//! What is measured: full syncs (from the API server and from manifests), endpoint-change
//! latency, and the datapath variants' connection rates and latencies.

use std::{
    collections::BTreeMap,
    io::BufRead as _,
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
    time::{Duration, Instant},
};

use k8s_openapi::api::{core::v1::Endpoints, discovery::v1::EndpointSlice};
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use petrel_testbed::{agent::Agent, cluster::POD_PORT, monotonic_ns, objects};
use serde_json::{Value, json};

use super::{
    BACKENDS, Opts, PETREL_NODE, debug,
    proxies::Proxies,
    topology::{Node, Proc, peak_rss_mib},
};
use petrel_testbed::stats::median;

/// when `alive` (polled every second) says the proxy being waited for has exited.
pub(super) fn seen(
    mut probe: Proc,
    alive: &mut dyn FnMut() -> Result<(), String>,
) -> Result<u128, String> {
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
pub(super) fn metric(text: &str, name: &str) -> f64 {
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

/// One full sync: from starting the proxy until `vip` answers from the node's client.
pub(super) struct Sync {
    pub(super) secs: f64,
    /// The proxy's own kubeproxy_sync_proxy_rules_duration_seconds: sum and count so far.
    pub(super) own_sum: f64,
    pub(super) own_count: f64,
    pub(super) peak_rss_mib: f64,
    /// kube-proxy: iptables rules in the node after the sync.
    pub(super) rules: Option<usize>,
}

impl Sync {
    pub(super) fn new(secs: f64, metrics: &str, pid: Option<u32>, rules: Option<usize>) -> Sync {
        const OWN: &str = "kubeproxy_sync_proxy_rules_duration_seconds";
        Sync {
            secs,
            own_sum: metric(metrics, &format!("{OWN}_sum")),
            own_count: metric(metrics, &format!("{OWN}_count")),
            peak_rss_mib: pid.map_or(f64::NAN, peak_rss_mib),
            rules,
        }
    }

    pub(super) fn json(&self) -> Value {
        json!({"secs": self.secs, "own_sync_sum_s": self.own_sum, "own_sync_count": self.own_count,
               "peak_rss_mib": self.peak_rss_mib, "iptables_rules": self.rules})
    }
}

pub(super) fn full_sync<P>(
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
pub(super) fn run_petrel(
    px: &mut Proxies,
    node: &Node,
    vip: SocketAddrV4,
    args: &[String],
) -> Sync {
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

pub(super) fn sync_petrel(px: &mut Proxies, node: &Node, vip: SocketAddrV4) -> Sync {
    px.stop_petrel(node);
    let args = px.petrel_args();
    run_petrel(px, node, vip, &args)
}

pub(super) fn sync_kube_proxy(px: &mut Proxies, node: &Node, vip: SocketAddrV4) -> Sync {
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
pub(super) fn manifest_vip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 104, 0, 0)) + i as u32)
}

/// Services per manifest file: ~1.2 KB each, well under the agent's per-file limit
/// (`petrel_agent::sources::manifests::MAX_FILE_BYTES`, 4 MiB).
const SERVICES_PER_FILE: usize = 1000;

/// Writes `n` Services x 10 endpoints as manifests (YAML flow style, one document per object),
/// `SERVICES_PER_FILE` to a file.
pub(super) fn write_manifests(dir: &Path, ips: &[Ipv4Addr], n: usize) {
    let eps: Vec<String> = ips
        .iter()
        .map(|ip| {
            format!("{{addresses: [{ip}], nodeName: {PETREL_NODE}, conditions: {{ready: true}}}}")
        })
        .collect();
    let eps = eps.join(", ");
    for (f, start) in (0..n).step_by(SERVICES_PER_FILE).enumerate() {
        let mut out = String::with_capacity(SERVICES_PER_FILE * 1200);
        for i in start..n.min(start + SERVICES_PER_FILE) {
            let vip = manifest_vip(i);
            out.push_str(&format!(
                "---\n{{apiVersion: v1, kind: Service, metadata: {{name: svc-{i}, namespace: default}}, \
                 spec: {{clusterIP: {vip}, ports: [{{name: http, port: 80, targetPort: {POD_PORT}, protocol: TCP}}]}}}}\n\
                 ---\n{{apiVersion: discovery.k8s.io/v1, kind: EndpointSlice, metadata: {{name: svc-{i}-1, namespace: default, \
                 labels: {{kubernetes.io/service-name: svc-{i}}}}}, addressType: IPv4, endpoints: [{eps}], \
                 ports: [{{name: http, port: {POD_PORT}, protocol: TCP}}]}}\n"
            ));
        }
        assert!(
            out.len() < 4 * 1024 * 1024,
            "a manifest file over the agent's limit"
        );
        std::fs::write(dir.join(format!("services-{f:04}.yaml")), out).expect("write manifests");
    }
}

/// petrel-agent in standalone mode on `n` services: from its start until the last answers.
pub(super) fn sync_standalone(px: &mut Proxies, node: &Node, ips: &[Ipv4Addr], n: usize) -> Sync {
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

pub(super) fn agent_alive(a: &mut Agent) -> Result<(), String> {
    if a.exited() {
        Err(format!("petrel-agent exited:\n{}", a.log()))
    } else {
        Ok(())
    }
}

/// Which object an endpoint change is written to: each proxy reads only one of them, so a
/// series for one proxy makes the other do no work.
#[derive(Clone, Copy)]
pub(super) enum ChurnObject {
    Slice,
    Endpoints,
}

/// Endpoint-change latency: the `churn` service's one endpoint moves to the next backend; from
/// the API write until the client's connections are answered by the new backend. Changes are
/// `gap` apart (past the proxy's own minimum sync interval, so each is measured alone).
#[expect(
    clippy::too_many_arguments,
    reason = "one call per proxy, each naming what differs: node, cgroup, object, gap"
)]
pub(super) fn churn(
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
                    let patch = json!({"endpoints": objects::slice_endpoints(&backends)});
                    Api::<EndpointSlice>::namespaced(client.clone(), "default")
                        .patch("churn-1", &pp, &Patch::Merge(patch))
                        .await
                        .map(drop)
                }
                ChurnObject::Endpoints => {
                    let patch = json!({"subsets": [objects::endpoint_subset(&backends)]});
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
pub(super) struct Variant {
    pub(super) name: &'static str,
    pub(super) node: usize,
    pub(super) socket_lb: bool,
    pub(super) direct: bool,
    /// Runs from the node's TC client pod of the scale (`tc_clients`) rather than its `client`.
    pub(super) tc_client: bool,
}

pub(super) const VARIANTS: [Variant; 4] = [
    Variant {
        name: "direct (pod IPs)",
        node: 0,
        socket_lb: false,
        direct: true,
        tc_client: false,
    },
    Variant {
        name: "petrel socket-LB",
        node: 1,
        socket_lb: true,
        direct: false,
        tc_client: false,
    },
    Variant {
        name: "petrel TC",
        node: 1,
        socket_lb: false,
        direct: false,
        tc_client: true,
    },
    Variant {
        name: "kube-proxy iptables",
        node: 2,
        socket_lb: false,
        direct: false,
        tc_client: false,
    },
];

/// Medians over rounds of one variant at one scale.
#[derive(Default, Clone)]
pub(super) struct Figures {
    pub(super) conn_rate: Vec<f64>,
    pub(super) conn_p50: Vec<f64>,
    pub(super) conn_p99: Vec<f64>,
    pub(super) rr_rate: Vec<f64>,
    pub(super) rr_p50: Vec<f64>,
    pub(super) rr_p99: Vec<f64>,
    pub(super) errors: u64,
    pub(super) backends: usize,
    /// New connections counted over every round, and the client stack's TCP counters
    /// (petrel-load's `tcp`) summed over those rounds: what a latency tail is made of.
    pub(super) conn_ops: u64,
    pub(super) conn_tcp: BTreeMap<String, u64>,
}

impl Figures {
    pub(super) fn add(&mut self, conn: &Value, rr: &Value) {
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
        self.conn_ops += conn["ops"].as_u64().unwrap_or(0);
        for (k, v) in conn["tcp"].as_object().into_iter().flatten() {
            *self.conn_tcp.entry(k.clone()).or_default() += v.as_u64().unwrap_or(0);
        }
    }

    /// TCP retransmissions (loss probes included) the client sent per 1000 new connections.
    pub(super) fn conn_retrans_per_1k(&self) -> f64 {
        let retrans = self.conn_tcp.get("Tcp:RetransSegs").copied().unwrap_or(0);
        if self.conn_ops == 0 {
            return f64::NAN;
        }
        retrans as f64 * 1000.0 / self.conn_ops as f64
    }

    pub(super) fn json(&self) -> Value {
        json!({
            "conn_per_sec": median(&self.conn_rate), "conn_p50_ms": median(&self.conn_p50),
            "conn_p99_ms": median(&self.conn_p99), "rr_per_sec": median(&self.rr_rate),
            "rr_p50_ms": median(&self.rr_p50), "rr_p99_ms": median(&self.rr_p99),
            "errors": self.errors, "backends_answered": self.backends,
            "conn_per_sec_rounds": self.conn_rate, "rr_per_sec_rounds": self.rr_rate,
            "conn_ops": self.conn_ops, "conn_tcp": self.conn_tcp,
            "conn_retrans_per_1k": self.conn_retrans_per_1k(),
        })
    }
}

/// CPU ticks (user + system) process `pid` has used, and whether it has a child running (as
/// kube-proxy has while iptables-restore runs).
pub(super) fn busy_ticks(pid: u32) -> (u64, bool) {
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
pub(super) fn wait_idle(px: &Proxies) {
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

/// Every variant at the `scale`-th scale step, `rounds` times in turn (so drift in the
/// machine's load spreads over all), each round starting one variant later than the last: no
/// variant always runs first (on a cold cache) or right after the same neighbour.
pub(super) fn datapath(
    nodes: &[Node],
    px: &Proxies,
    vips: &[Ipv4Addr],
    opts: &Opts,
    scale: usize,
) -> Vec<Figures> {
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
    for round in 0..opts.rounds {
        for i in 0..VARIANTS.len() {
            let k = (i + round) % VARIANTS.len();
            let (v, f) = (&VARIANTS[k], &mut figs[k]);
            let node = &nodes[v.node];
            let cg = v.socket_lb.then(|| px.cgroup.path());
            let to = if v.direct {
                direct.clone()
            } else {
                spread.clone()
            };
            let client = if v.tc_client {
                &node.tc_clients[scale]
            } else {
                &node.client
            };
            let conn = super::topology::load(client, cg, "conn", &to, opts.secs);
            let rr = super::topology::load(client, cg, "rr", &to, opts.secs);
            f.add(&conn, &rr);
        }
    }
    figs
}
