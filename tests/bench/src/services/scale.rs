//! `--only=scale`: petrel-agent at 1,000, 10,000 and 100,000 services x 10 endpoints, all of them
//! created through the real API server once per run (batched, from several clients at once).
//! Per scale: the creation (rate, and the CPU the API server, etcd and the benchmark's client
//! spent: where the fixture's time goes), the API server's list time of what each proxy lists,
//! petrel's full sync split at "lists done" (from the agent's own log line), its peak RSS,
//! endpoint-change latency and the agent's CPU per no-op event (Node status heartbeats).

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant, SystemTime},
};

use k8s_openapi::api::core::v1::Node as KubeNode;
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use petrel_testbed::{
    BpffsRoot,
    agent::Agent,
    apiserver::KubeApiServer,
    cgroup::Cgroup,
    cluster, monotonic_ns,
    netns::NetNs,
    stats::{median, percentile_ms},
    unique,
};
use serde_json::{Value, json};

use super::{
    BACKENDS, CTL_IP, Opts, PETREL_NODE, POD_CIDR, cpu_secs, create_churn,
    measure::{ChurnObject, agent_alive, churn, metric, seen, wait_idle},
    proxies::{Proxies, Xtables, xtables_dir},
    topology::{self, Node, peak_rss_mib},
};
use crate::report::{Section, Target, num};

/// kube-proxy's (and petrel's) selector on Services, EndpointSlices and Endpoints, URL-encoded.
const SELECTOR: &str = "labelSelector=%21service.kubernetes.io%2Fheadless%2C%21service.kubernetes.io%2Fservice-proxy-name&resourceVersion=0";
/// Clients (connection pools) creating the services, and requests in flight over all of them.
const CREATE_CLIENTS: usize = 4;
const CREATE_IN_FLIGHT: usize = 64;

pub struct ScaleOpts {
    pub scales: Vec<usize>,
    /// Endpoint changes measured at each scale (0.2 s apart).
    pub changes: usize,
    /// Node status heartbeats sent at each scale.
    pub heartbeats: usize,
}

/// What one scale measured.
#[derive(Default)]
struct Step {
    services: usize,
    create_secs: f64,
    /// CPU seconds during the creation: kube-apiserver, etcd, this benchmark.
    create_cpu: [f64; 3],
    /// (seconds, bytes) of one list each: Services, EndpointSlices, Endpoints.
    lists: [(f64, usize); 3],
    sync_secs: f64,
    listed_secs: f64,
    own_secs: f64,
    /// The agent's first full sync after the lists: compute_ms and took_ms (map writes) in s.
    compute_secs: f64,
    map_secs: f64,
    rss_sync_mib: f64,
    rss_end_mib: f64,
    changes: Vec<Duration>,
    heartbeats: usize,
    heartbeat_cpu_ms: f64,
    /// The same without the idle CPU subtracted.
    heartbeat_gross_ms: f64,
    idle_cpu_ms_per_s: f64,
    syncs_during_heartbeats: f64,
    updates_during_heartbeats: usize,
}

pub fn run(opts: ScaleOpts) -> Section {
    super::in_control_ns(move |rt, ctl| measure(rt, ctl, &opts))
}

/// The etcd process the API server fixture started (a child of this process).
fn etcd_pid() -> Option<u32> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
        let (head, rest) = stat.rsplit_once(')')?;
        let ppid = rest.split_whitespace().nth(1)?;
        (head.ends_with("(etcd") && ppid == me).then(|| e.file_name().to_str()?.parse().ok())?
    })
}

fn measure(rt: &tokio::runtime::Runtime, ctl: &NetNs, opts: &ScaleOpts) -> Section {
    eprintln!("==> scale: starting kube-apiserver and the petrel node");
    let api = rt.block_on(KubeApiServer::start_on(CTL_IP));
    let clients: Vec<kube::Client> = (0..CREATE_CLIENTS)
        .map(|_| rt.block_on(api.client()))
        .collect();
    let client = clients[0].clone();
    let node = Node::new(ctl, 2, 0);
    rt.block_on(cluster::create_node(
        &client,
        PETREL_NODE,
        Ipv4Addr::new(10, 98, 0, 12),
        POD_CIDR.parse().expect("cidr"),
    ));
    let backends: Vec<(Ipv4Addr, String)> = node
        .backend_ips()
        .iter()
        .map(|ip| (*ip, PETREL_NODE.to_string()))
        .collect();
    let churn_vip = rt.block_on(create_churn(&client, &backends));
    let mut px = Proxies {
        kubeconfig: api.kubeconfig(),
        pins: BpffsRoot::new(&unique("petrel-bench-")),
        cgroup: Cgroup::new(&unique("petrel-bench-")),
        files: tempfile::tempdir().expect("tempdir"),
        petrel: None,
        kube_proxy: None,
        xtables: xtables_dir(Xtables::Legacy),
    };
    let (api_pid, etcd) = (Some(api.pid()), etcd_pid());
    let mut vips: Vec<Ipv4Addr> = Vec::new();
    let mut steps = Vec::new();
    for &n in &opts.scales {
        px.stop_petrel(&node);
        let mut s = Step {
            services: n,
            ..Step::default()
        };
        eprintln!(
            "==> scale: creating services up to {n} (x{BACKENDS} endpoints, an EndpointSlice and an Endpoints each; {CREATE_CLIENTS} clients, {CREATE_IN_FLIGHT} requests in flight)"
        );
        let cpu0 = [
            cpu_secs(api_pid),
            cpu_secs(etcd),
            cpu_secs(Some(std::process::id())),
        ];
        let t = Instant::now();
        let made = rt.block_on(topology::create_services(
            &clients,
            vips.len()..n,
            &backends,
            CREATE_IN_FLIGHT,
        ));
        vips.extend(made);
        s.create_secs = t.elapsed().as_secs_f64();
        let cpu1 = [
            cpu_secs(api_pid),
            cpu_secs(etcd),
            cpu_secs(Some(std::process::id())),
        ];
        s.create_cpu = [cpu1[0] - cpu0[0], cpu1[1] - cpu0[1], cpu1[2] - cpu0[2]];
        eprintln!(
            "    {:.1}s; CPU s: kube-apiserver {:.1}, etcd {:.1}, benchmark {:.1}",
            s.create_secs, s.create_cpu[0], s.create_cpu[1], s.create_cpu[2]
        );
        s.lists = rt.block_on(lists(&client));
        eprintln!("    lists (s, bytes): {:?}", s.lists);
        let last = SocketAddrV4::new(*vips.last().expect("a service"), 80);
        full_sync(&mut px, &node, last, &mut s);
        eprintln!(
            "    petrel full sync {:.2}s: lists done at {:.2}s, then {:.2}s to serve (compute {:.2}s, maps {:.2}s); peak RSS {:.0} MiB",
            s.sync_secs, s.listed_secs, s.own_secs, s.compute_secs, s.map_secs, s.rss_sync_mib
        );
        wait_idle(&px);
        let cg = px.cgroup.path().to_path_buf();
        let churn_opts = Opts {
            scales: Vec::new(),
            churn_scales: Vec::new(),
            big: 0,
            secs: 0.0,
            rounds: 0,
            changes: opts.changes,
            churn_budget: Duration::from_secs(120),
            xtables: Xtables::Legacy,
        };
        s.changes = churn(
            rt,
            &client,
            &node,
            Some(&cg),
            churn_vip,
            ChurnObject::Slice,
            &churn_opts,
            Duration::from_millis(200),
        );
        eprintln!(
            "    endpoint change p50 {:.1} ms p99 {:.1} ms ({} changes)",
            percentile_ms(&s.changes, 50.0),
            percentile_ms(&s.changes, 99.0),
            s.changes.len()
        );
        heartbeats(rt, &client, &node, &px, opts.heartbeats, &mut s);
        eprintln!(
            "    {} heartbeats: agent CPU {:.3} ms each ({:.3} gross, idle {:.2} ms/s subtracted), syncs {}, datapath updates {}",
            s.heartbeats,
            s.heartbeat_cpu_ms,
            s.heartbeat_gross_ms,
            s.idle_cpu_ms_per_s,
            s.syncs_during_heartbeats,
            s.updates_during_heartbeats
        );
        s.rss_end_mib = px
            .petrel
            .as_ref()
            .and_then(Agent::pid)
            .map_or(f64::NAN, peak_rss_mib);
        steps.push(s);
    }
    px.stop_petrel(&node);
    drop(api);
    report(&steps, opts)
}

/// One list of each kind a proxy lists at start, as the proxies list them (kube-proxy's
/// selector, resourceVersion=0: from the watch cache): seconds until the whole body arrived,
/// and its size. Services, EndpointSlices (petrel; a JSON CRD in this fixture), Endpoints
/// (kube-proxy 1.20).
async fn lists(client: &kube::Client) -> [(f64, usize); 3] {
    let mut out = [(0.0, 0); 3];
    let paths = [
        "/api/v1/services",
        "/apis/discovery.k8s.io/v1/endpointslices",
        "/api/v1/endpoints",
    ];
    for (o, p) in out.iter_mut().zip(paths) {
        let req = http::Request::get(format!("{p}?{SELECTOR}"))
            .body(Vec::new())
            .expect("request");
        let t = Instant::now();
        let body = client
            .request_text(req)
            .await
            .unwrap_or_else(|e| panic!("list {p}: {e}"));
        *o = (t.elapsed().as_secs_f64(), body.len());
    }
    out
}

fn wall_secs() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// `line` without its ANSI colour sequences (the agent's text log colours fields too).
fn plain(line: &str) -> String {
    let mut plain = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

/// Seconds since the epoch of a log line's leading RFC 3339 UTC timestamp (ANSI colours
/// stripped), e.g. `2026-12-03T16:40:00.123456Z`.
fn log_time(line: &str) -> Option<f64> {
    let plain = plain(line);
    let ts = plain.split_whitespace().next()?.strip_suffix('Z')?;
    let (date, time) = ts.split_once('T')?;
    let d: Vec<i64> = date
        .split('-')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    let t: Vec<f64> = time
        .split(':')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    let (&[y, m, dd], &[hh, mm, ss]) = (d.as_slice(), t.as_slice()) else {
        return None;
    };
    // Days from 1970-01-01 (Howard Hinnant's days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + dd - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days as f64 * 86_400.0 + hh * 3600.0 + mm * 60.0 + ss)
}

/// A `key=value` number of a log line.
fn field(line: &str, key: &str) -> f64 {
    plain(line)
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| {
            v.trim_end_matches(|c: char| !c.is_ascii_digit())
                .parse()
                .ok()
        })
        .unwrap_or(f64::NAN)
}

/// The agent's log, split at its "lists done" line: seconds from `start` (epoch seconds) to
/// it, and the first "datapath updated" after it: (compute, map writes) seconds.
fn phases(log: &str, start: f64) -> (f64, f64, f64) {
    let mut lines = log.lines();
    let Some(listed) = lines
        .by_ref()
        .find(|l| l.contains("Services, EndpointSlices and Nodes listed"))
    else {
        return (f64::NAN, f64::NAN, f64::NAN);
    };
    let at = log_time(listed).map_or(f64::NAN, |t| t - start);
    let update = lines.find(|l| l.contains("datapath updated"));
    let (compute, took) = update.map_or((f64::NAN, f64::NAN), |l| {
        (field(l, "compute_ms") / 1e3, field(l, "took_ms") / 1e3)
    });
    (at, compute, took)
}

/// petrel-agent started (its datapath cleaned first) until `vip`, the newest service, answers.
fn full_sync(px: &mut Proxies, node: &Node, vip: SocketAddrV4, s: &mut Step) {
    px.stop_petrel(node);
    let args = px.petrel_args();
    let cg = px.cgroup.path().to_path_buf();
    let (t0, w0) = (monotonic_ns(), wall_secs());
    let mut agent = Agent::start(&node.ns.path(), &args);
    let probe = node.probe(Some(&cg), vip, None, 1800);
    let t = seen(probe, &mut || agent_alive(&mut agent))
        .unwrap_or_else(|e| panic!("{vip} never answered: {e}"));
    s.sync_secs = (t - t0) as f64 / 1e9;
    s.rss_sync_mib = agent.pid().map_or(f64::NAN, peak_rss_mib);
    std::thread::sleep(Duration::from_millis(500));
    let (listed, compute, took) = phases(&agent.log(), w0);
    s.listed_secs = listed;
    s.own_secs = s.sync_secs - listed;
    s.compute_secs = compute;
    s.map_secs = took;
    px.petrel = Some(agent);
}

/// `n` Node status heartbeats (each a new lastHeartbeatTime on the Ready condition, as kubelet
/// writes them): the agent's CPU (utime + stime) over them, less its idle CPU over as long, per
/// heartbeat, and the syncs and datapath updates that happened meanwhile (there should be none).
fn heartbeats(
    rt: &tokio::runtime::Runtime,
    client: &kube::Client,
    node: &Node,
    px: &Proxies,
    n: usize,
    s: &mut Step,
) {
    let pid = px.petrel.as_ref().and_then(Agent::pid);
    let updates = || {
        px.petrel
            .as_ref()
            .map_or(0, |a| a.log().matches("datapath updated").count())
    };
    const SYNCS: &str = "kubeproxy_sync_proxy_rules_duration_seconds_count";
    // The idle rate over 3 s.
    let (c0, t0) = (cpu_secs(pid), Instant::now());
    std::thread::sleep(Duration::from_secs(3));
    let idle = (cpu_secs(pid) - c0) / t0.elapsed().as_secs_f64();
    let (syncs0, updates0) = (metric(&node.metrics(), SYNCS), updates());
    let (c0, t0) = (cpu_secs(pid), Instant::now());
    let nodes: Api<KubeNode> = Api::all(client.clone());
    let base = k8s_openapi::jiff::Timestamp::now().as_second();
    rt.block_on(async {
        for i in 0..n {
            let beat = k8s_openapi::jiff::Timestamp::from_second(base + i as i64 + 1)
                .expect("timestamp")
                .to_string();
            let patch = json!({"status": {"conditions": [{
                "type": "Ready", "status": "True", "reason": "KubeletReady",
                "message": "kubelet is posting ready status", "lastHeartbeatTime": beat,
                "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
            nodes
                .patch_status(PETREL_NODE, &PatchParams::default(), &Patch::Merge(patch))
                .await
                .expect("patch the Node's status");
        }
    });
    // Events still queued in the agent are handled within this second.
    std::thread::sleep(Duration::from_secs(1));
    let secs = t0.elapsed().as_secs_f64();
    let used = cpu_secs(pid) - c0;
    s.heartbeats = n;
    s.idle_cpu_ms_per_s = idle * 1e3;
    s.heartbeat_cpu_ms = (used - idle * secs).max(0.0) * 1e3 / n.max(1) as f64;
    s.heartbeat_gross_ms = used * 1e3 / n.max(1) as f64;
    s.syncs_during_heartbeats = metric(&node.metrics(), SYNCS) - syncs0;
    s.updates_during_heartbeats = updates() - updates0;
}

fn at(steps: &[Step], n: usize) -> Option<&Step> {
    steps.iter().find(|s| s.services == n)
}

fn report(steps: &[Step], opts: &ScaleOpts) -> Section {
    let mb = |b: usize| b as f64 / 1e6;
    let mut md = String::from(
        "### Scale: petrel at up to 100,000 services through the real API server\n\n\
         Every service (10 endpoints on the petrel node) is a Service, an EndpointSlice (a v1 JSON CRD in this fixture) and a core Endpoints, \
         created once per run from 4 clients with 64 requests in flight. CPU is utime+stime of each process over the creation.\n\n\
         | services | created in s | objects/s | kube-apiserver CPU s | etcd CPU s | benchmark CPU s | list Services s (MB) | list EndpointSlices s (MB) | list Endpoints s (MB) |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    let mut prev = 0;
    for s in steps {
        let objects = 3 * (s.services - prev);
        prev = s.services;
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} ({}) | {} ({}) | {} ({}) |\n",
            s.services,
            num(s.create_secs),
            num(objects as f64 / s.create_secs),
            num(s.create_cpu[0]),
            num(s.create_cpu[1]),
            num(s.create_cpu[2]),
            num(s.lists[0].0),
            num(mb(s.lists[0].1)),
            num(s.lists[1].0),
            num(mb(s.lists[1].1)),
            num(s.lists[2].0),
            num(mb(s.lists[2].1)),
        ));
    }
    md.push_str(
        "\nList: one GET as the proxies list (kube-proxy's selector, resourceVersion=0, served from the watch cache), until the whole body arrived. \
         petrel waits for Services + EndpointSlices, kube-proxy 1.20 for Services + Endpoints.\n\n\
         Full sync: petrel-agent started (datapath cleaned first) until the newest service answers; `lists done` is the agent's own log line \
         (`Services, EndpointSlices and Nodes listed`) from its start, `agent own` the rest (lists done to the newest service answering), \
         `compute` and `maps` the first full sync's `compute_ms` and `took_ms`. Endpoint change: the `churn` service's one endpoint moved, \
         from the API write until the client's new connections reach the new pod, 0.2 s apart. Heartbeats: Node status patches with a new \
         `lastHeartbeatTime` each; agent CPU over them less its idle CPU over as long, per heartbeat; `syncs`/`updates` during them.\n\n\
         | services | full sync s | lists done s | agent own s | compute s | maps s | peak RSS MiB (sync / end) | change p50 ms | change p99 ms | changes | CPU ms per heartbeat (gross) | idle CPU ms/s | syncs, updates during heartbeats |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for s in steps {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} / {} | {} | {} | {} | {:.3} ({:.3}) | {} | {}, {} |\n",
            s.services,
            num(s.sync_secs),
            num(s.listed_secs),
            num(s.own_secs),
            num(s.compute_secs),
            num(s.map_secs),
            num(s.rss_sync_mib),
            num(s.rss_end_mib),
            num(percentile_ms(&s.changes, 50.0)),
            num(percentile_ms(&s.changes, 99.0)),
            s.changes.len(),
            s.heartbeat_cpu_ms,
            s.heartbeat_gross_ms,
            num(s.idle_cpu_ms_per_s),
            s.syncs_during_heartbeats,
            s.updates_during_heartbeats,
        ));
    }
    md.push_str(
        "\nNot measured in this series: 1,000 endpoint changes a second sustained (no driver yet), and kube-proxy's own sync at these scales \
         (the full benchmark measures it at 1,000 and 10,000; its list time is the Services + Endpoints columns above).\n",
    );
    let p99 = |n: usize| at(steps, n).map_or(f64::NAN, |s| percentile_ms(&s.changes, 99.0));
    // The bounds are for 100,000 services; with a smaller largest scale (`--scales`) they are
    // checked there, and the row says at how many.
    let big = steps.last();
    let top = big.map_or(0, |s| s.services);
    let f = |g: fn(&Step) -> f64| big.map_or(f64::NAN, g);
    let targets = vec![
        Target::at_most(
            &format!(
                "petrel agent own sync s (lists done to the newest service answering), {top} services"
            ),
            f(|s| s.own_secs),
            3.0,
        ),
        Target::at_most(
            &format!("petrel agent peak RSS MiB, {top} services (API server)"),
            f(|s| s.rss_end_mib.max(s.rss_sync_mib)),
            200.0,
        ),
        Target::at_most(
            "petrel endpoint change p99 ms, 10000 services",
            p99(10_000),
            20.0,
        ),
        Target::at_most(
            &format!("petrel endpoint change p99 ms, {top} services"),
            f(|s| percentile_ms(&s.changes, 99.0)),
            50.0,
        ),
        Target::at_most(
            &format!(
                "petrel agent CPU ms per Node heartbeat (gross: idle CPU not subtracted), {top} services"
            ),
            f(|s| s.heartbeat_gross_ms),
            1.0,
        ),
        Target::at_most(
            &format!("petrel syncs during Node heartbeats, {top} services"),
            f(|s| s.syncs_during_heartbeats),
            0.0,
        ),
    ];
    let steps_json: Vec<Value> = steps
        .iter()
        .map(|s| {
            let ms: Vec<f64> = s.changes.iter().map(|d| d.as_secs_f64() * 1e3).collect();
            json!({
                "services": s.services, "create_secs": s.create_secs,
                "create_cpu_secs": {"kube_apiserver": s.create_cpu[0], "etcd": s.create_cpu[1], "benchmark": s.create_cpu[2]},
                "list": {
                    "services": {"secs": s.lists[0].0, "bytes": s.lists[0].1},
                    "endpointslices": {"secs": s.lists[1].0, "bytes": s.lists[1].1},
                    "endpoints": {"secs": s.lists[2].0, "bytes": s.lists[2].1},
                },
                "petrel": {
                    "full_sync_secs": s.sync_secs, "lists_done_secs": s.listed_secs,
                    "own_secs": s.own_secs, "compute_secs": s.compute_secs, "map_secs": s.map_secs,
                    "peak_rss_mib_after_sync": s.rss_sync_mib, "peak_rss_mib_end": s.rss_end_mib,
                    "endpoint_change_ms": ms,
                    "endpoint_change_p50_ms": percentile_ms(&s.changes, 50.0),
                    "endpoint_change_p99_ms": percentile_ms(&s.changes, 99.0),
                    "heartbeats": s.heartbeats, "cpu_ms_per_heartbeat": s.heartbeat_cpu_ms,
                    "cpu_ms_per_heartbeat_gross": s.heartbeat_gross_ms,
                    "idle_cpu_ms_per_s": s.idle_cpu_ms_per_s,
                    "syncs_during_heartbeats": s.syncs_during_heartbeats,
                    "datapath_updates_during_heartbeats": s.updates_during_heartbeats,
                },
            })
        })
        .collect();
    Section {
        md,
        json: json!({"steps": steps_json, "scales": opts.scales, "changes": opts.changes,
                     "heartbeats": opts.heartbeats, "create_clients": CREATE_CLIENTS,
                     "create_in_flight": CREATE_IN_FLIGHT,
                     "median_change_ms": steps.iter().map(|s| median(&s.changes.iter().map(|d| d.as_secs_f64() * 1e3).collect::<Vec<_>>())).collect::<Vec<_>>()}),
        targets,
    }
}

/// The plot's series: peak RSS (MiB) and endpoint-change p99 (ms) against services.
pub fn series(section: &Section) -> Vec<(String, Vec<(f64, f64)>)> {
    let steps = section.json["steps"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let get = |k: &str| -> Vec<(f64, f64)> {
        steps
            .iter()
            .map(|s| {
                let p = &s["petrel"];
                let v = if k == "rss" {
                    p["peak_rss_mib_end"]
                        .as_f64()
                        .unwrap_or(f64::NAN)
                        .max(p["peak_rss_mib_after_sync"].as_f64().unwrap_or(f64::NAN))
                } else {
                    p["endpoint_change_p99_ms"].as_f64().unwrap_or(f64::NAN)
                };
                (s["services"].as_f64().unwrap_or(f64::NAN), v)
            })
            .collect()
    };
    vec![
        ("petrel peak RSS (MiB)".into(), get("rss")),
        ("petrel endpoint change p99 (ms)".into(), get("p99")),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_split_at_lists_done() {
        let log = "\u{1b}[2m2026-12-03T16:40:00.500000Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m x: Nodes listed: wiring the node\n\
                   2026-12-03T16:40:02.000000Z  INFO x: Services, EndpointSlices and Nodes listed: programming node=n\n\
                   2026-12-03T16:40:03.000000Z  INFO x: datapath updated full=true upserted=5 removed=0 took_ms=700 compute_ms=120 total_ms=900\n";
        let start = log_time("2026-12-03T16:40:00.000000Z x").expect("time");
        let (at, compute, took) = phases(log, start);
        assert!((at - 2.0).abs() < 1e-6, "{at}");
        assert!((compute - 0.12).abs() < 1e-9 && (took - 0.7).abs() < 1e-9);
        // 1970-01-02T00:00:01Z
        assert_eq!(log_time("1970-01-02T00:00:01Z"), Some(86_401.0));
    }
}
