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

mod measure;
mod proxies;
pub mod scale;
mod summary;
mod topology;

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    core::v1::{Endpoints, Service},
    discovery::v1::EndpointSlice,
};
use kube::{Api, api::PostParams};
use petrel_testbed::{
    BpffsRoot,
    agent::Agent,
    apiserver::KubeApiServer,
    cgroup::Cgroup,
    cluster,
    netns::{NetNs, enter},
    objects,
    stats::{median, percentile_ms},
    unique,
};

use crate::report::Section;
use measure::{
    ChurnObject, Figures, Sync, VARIANTS, churn, datapath, sync_kube_proxy, sync_petrel,
    sync_standalone, wait_idle,
};
pub use proxies::Xtables;
use proxies::{Proxies, xtables_dir};
pub use summary::{rate_series, sync_series};
use topology::Node;

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

/// PETREL_BENCH_DEBUG set: probes log every attempt, shown after each wait.
fn debug() -> bool {
    std::env::var_os("PETREL_BENCH_DEBUG").is_some()
}

/// What one scale step measured.
struct Step {
    services: usize,
    create_secs: f64,
    petrel: Sync,
    kube_proxy: Sync,
    churn: Option<(Vec<Duration>, Vec<Duration>)>,
    figures: Vec<Figures>,
    ct: CtCost,
}

/// petrel's conntrack after a scale's datapath run: how full it is, what one garbage-collector
/// sweep over it costs (the agent's own sweep, run here on the same pins), and the agent's CPU
/// time during the run.
#[derive(Clone, Copy, Debug, Default)]
struct CtCost {
    entries: usize,
    capacity: usize,
    sweep_secs: f64,
    agent_cpu_secs: f64,
    run_secs: f64,
}

/// CPU seconds (user + system) the process `pid` has used; 0 when it is gone.
fn cpu_secs(pid: Option<u32>) -> f64 {
    let Some(stat) = pid.and_then(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
    else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| f.get(i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks / hz
}

fn ct_cost(px: &Proxies) -> CtCost {
    use petrel_datapath::{conntrack, maps::PinnedMaps};
    let Ok(mut maps) = PinnedMaps::open(&px.pins.path().join("maps")) else {
        return CtCost::default();
    };
    let t = Instant::now();
    match conntrack::sweep(&mut maps, conntrack::monotonic_ns()) {
        Ok(r) => CtCost {
            entries: r.entries,
            capacity: r.capacity,
            sweep_secs: t.elapsed().as_secs_f64(),
            ..CtCost::default()
        },
        Err(e) => {
            eprintln!("    conntrack sweep failed: {e}");
            CtCost::default()
        }
    }
}

pub fn run(opts: Opts) -> Section {
    in_control_ns(move |rt, ctl| measure(rt, ctl, &opts))
}

/// Runs `f` with the control namespace (a bridge at CTL_IP) and a runtime on a thread that
/// entered it: the API server, etcd and the benchmark's kube client live there.
pub(super) fn in_control_ns<T: Send + 'static>(
    f: impl FnOnce(&tokio::runtime::Runtime, &NetNs) -> T + Send + 'static,
) -> T {
    let ctl = NetNs::new(&unique("pbc"));
    ctl.exec("ip", &["link", "add", "br0", "type", "bridge"]);
    ctl.exec("ip", &["link", "set", "br0", "up"]);
    ctl.exec(
        "ip",
        &["addr", "add", &format!("{CTL_IP}/24"), "dev", "br0"],
    );
    let path = ctl.path();
    std::thread::spawn(move || {
        enter(&path);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        f(&rt, &ctl)
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// What every scale step measures against: the API client, the three nodes, the backends'
/// (address, node) pairs every Service lists, and the endpoint-change service's VIP.
struct Bed {
    client: kube::Client,
    nodes: Vec<Node>,
    backends: Vec<(Ipv4Addr, String)>,
    churn_vip: SocketAddrV4,
}

fn measure(rt: &tokio::runtime::Runtime, ctl: &NetNs, opts: &Opts) -> Section {
    eprintln!("==> services: starting kube-apiserver and three simulated nodes");
    let api = rt.block_on(KubeApiServer::start_on(CTL_IP));
    let bed = bed(rt, &api, ctl, opts.scales.len());
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
    let steps: Vec<Step> = opts
        .scales
        .iter()
        .enumerate()
        .map(|(i, &n)| scale_step(rt, &bed, &mut px, &mut vips, opts, i, n))
        .collect();

    // petrel alone at `big` services, from manifests: this API server creates about 170
    // services a second here, so `big` of them through it would take most of the benchmark's
    // time. The agent reads the same k8s-openapi objects from files (standalone mode) and
    // programs them the same way.
    let nodes = &bed.nodes;
    px.stop_kube_proxy(&nodes[2]);
    px.stop_petrel(&nodes[1]);
    drop(api);
    eprintln!(
        "==> services: petrel alone at {} services (standalone manifests)",
        opts.big
    );
    let ips = nodes[0].backend_ips();
    let big = sync_standalone(&mut px, &nodes[1], &ips, opts.big);
    eprintln!(
        "    petrel full sync {:.2}s, peak RSS {:.0} MiB",
        big.secs, big.peak_rss_mib
    );
    px.stop_petrel(&nodes[1]);
    summary::report(&steps, &big, opts)
}

/// The three nodes (same pod addresses on each), their Node objects, and the endpoint-change
/// service `churn` with one endpoint.
fn bed(rt: &tokio::runtime::Runtime, api: &KubeApiServer, ctl: &NetNs, scales: usize) -> Bed {
    let client = rt.block_on(api.client());
    let nodes: Vec<Node> = (1..=3).map(|i| Node::new(ctl, i, scales)).collect();
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
    let churn_vip = rt.block_on(create_churn(&client, &backends));
    Bed {
        client,
        nodes,
        backends,
        churn_vip,
    }
}

/// One scale, the `index`-th: services created up to `n` (their VIPs appended to `vips`), both
/// full syncs, the endpoint changes if `n` is a churn scale, then every datapath variant.
fn scale_step(
    rt: &tokio::runtime::Runtime,
    bed: &Bed,
    px: &mut Proxies,
    vips: &mut Vec<Ipv4Addr>,
    opts: &Opts,
    index: usize,
    n: usize,
) -> Step {
    let nodes = &bed.nodes;
    px.stop_petrel(&nodes[1]);
    px.stop_kube_proxy(&nodes[2]);
    eprintln!("==> services: creating services up to {n} (x{BACKENDS} endpoints)");
    let t = Instant::now();
    let made = rt.block_on(topology::create_services(
        std::slice::from_ref(&bed.client),
        vips.len()..n,
        &bed.backends,
        CREATE_PARALLELISM,
    ));
    vips.extend(made);
    let create_secs = t.elapsed().as_secs_f64();
    let last = SocketAddrV4::new(*vips.last().expect("at least one service"), 80);
    eprintln!("    {create_secs:.1}s; full syncs to {last} (the newest service)");
    let petrel = sync_petrel(px, &nodes[1], last);
    eprintln!("    petrel: {:.2}s", petrel.secs);
    let kube_proxy = sync_kube_proxy(px, &nodes[2], last);
    eprintln!("    kube-proxy iptables: {:.2}s", kube_proxy.secs);
    let churn = opts
        .churn_scales
        .contains(&n)
        .then(|| endpoint_changes(rt, bed, px, opts, n));
    eprintln!(
        "==> services: datapath at {n} services, {} rounds",
        opts.rounds
    );
    wait_idle(px);
    let agent_pid = px.petrel.as_ref().and_then(Agent::pid);
    let (cpu0, t0) = (cpu_secs(agent_pid), Instant::now());
    let figures = datapath(nodes, px, vips, opts, index);
    let ct = CtCost {
        agent_cpu_secs: cpu_secs(agent_pid) - cpu0,
        run_secs: t0.elapsed().as_secs_f64(),
        ..ct_cost(px)
    };
    eprintln!(
        "    conntrack {} of {} entries, one sweep {:.1} ms; agent CPU {:.2} s in {:.0} s",
        ct.entries,
        ct.capacity,
        ct.sweep_secs * 1e3,
        ct.agent_cpu_secs,
        ct.run_secs
    );
    for (v, f) in VARIANTS.iter().zip(&figures) {
        eprintln!(
            "    {:<20} {:>8.0} conn/s {:>8.0} rr/s",
            v.name,
            median(&f.conn_rate),
            median(&f.rr_rate)
        );
    }
    Step {
        services: n,
        create_secs,
        petrel,
        kube_proxy,
        churn,
        figures,
        ct,
    }
}

/// Endpoint-change latencies at `n` services: petrel's (EndpointSlice writes, 0.2 s apart),
/// then kube-proxy's (Endpoints writes, 1.1 s apart).
fn endpoint_changes(
    rt: &tokio::runtime::Runtime,
    bed: &Bed,
    px: &Proxies,
    opts: &Opts,
    n: usize,
) -> (Vec<Duration>, Vec<Duration>) {
    eprintln!("==> services: endpoint changes at {n} services");
    let cg = px.cgroup.path().to_path_buf();
    let p = churn(
        rt,
        &bed.client,
        &bed.nodes[1],
        Some(&cg),
        bed.churn_vip,
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
        &bed.client,
        &bed.nodes[2],
        None,
        bed.churn_vip,
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
}

/// The endpoint-change service `churn`: one endpoint (the first of `backends`), in both an
/// EndpointSlice and an Endpoints; its VIP.
async fn create_churn(client: &kube::Client, backends: &[(Ipv4Addr, String)]) -> SocketAddrV4 {
    let first = [backends[0].clone()];
    let svc = Api::<Service>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &objects::service("churn", None))
        .await
        .expect("create churn service");
    Api::<EndpointSlice>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &objects::slice("churn", &first))
        .await
        .expect("churn slice");
    Api::<Endpoints>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &objects::endpoints("churn", &first))
        .await
        .expect("churn endpoints");
    SocketAddrV4::new(objects::cluster_ip(&svc), 80)
}
