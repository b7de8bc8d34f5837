//! petrel-agent: the node agent, in place of kube-proxy. Watches Services, EndpointSlices and its
//! Node (or reads them from a folder of manifests in standalone mode), computes the desired
//! datapath state and applies it to the pinned eBPF maps; serves metrics and health.
//!
//! On SIGTERM it exits and leaves the datapath in place (pinned maps and links keep serving);
//! the next agent adopts what the pins hold. `--cleanup` removes everything petrel installed.

use std::{
    collections::{BTreeSet, HashSet},
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    sync::{Arc, Mutex, atomic::Ordering},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, bail};
use clap::{Parser, ValueEnum};
use futures::StreamExt as _;
use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use kube::runtime::{WatchStreamExt as _, reflector, watcher};
use petrel::{
    Datapath, DatapathConfig,
    agent::{
        desired::{self, NodeFacts, Options},
        manifests,
        metrics::{self, CounterLabel, Health, MapLabel, Metrics},
        route_sync, routing,
        sync::Syncer,
    },
    routes,
};
use tokio::sync::Notify;

#[derive(Parser, Debug)]
#[command(
    name = "petrel-agent",
    version,
    about = "petrel's node agent (replaces kube-proxy)"
)]
struct Cli {
    /// Configuration file (YAML; keys are the long flag names). Flags and environment variables
    /// win over it.
    #[arg(long, env = "PETREL_CONFIG")]
    config: Option<PathBuf>,
    /// Kubeconfig to use; in-cluster configuration when absent.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// This node's name (as in the Node object and EndpointSlice nodeName).
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// Standalone mode: read Services, EndpointSlices and Nodes from the YAML files in this folder
    /// and follow changes to it, instead of watching an API server.
    #[arg(long)]
    manifests: Option<PathBuf>,
    /// Addresses NodePorts are served on (default: the Node's InternalIPs).
    #[arg(long = "node-ip")]
    node_ips: Vec<Ipv4Addr>,
    /// bpffs folder holding the pinned maps and links.
    #[arg(long, default_value = "/sys/fs/bpf/petrel")]
    bpffs_root: PathBuf,
    /// cgroup v2 folder socket-level load balancing is attached to (default: the cgroup2 root).
    #[arg(long)]
    cgroup_root: Option<PathBuf>,
    /// Socket-level load balancing (connect/sendmsg translation); off: the TC path does it all.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    socket_lb: bool,
    /// Interfaces traffic from outside the node arrives on (NodePort, externalIPs, LoadBalancer).
    #[arg(long = "external-interface")]
    external_interfaces: Vec<String>,
    /// Prefix of pod host-side veths to attach the TC program to (petrel-cni names them pet*).
    #[arg(long, default_value = "pet")]
    pod_interface_prefix: String,
    /// Backend selection for external traffic: Maglev (same choice on every node) or random.
    #[arg(long, value_enum, default_value_t = Selection::Maglev)]
    external_selection: Selection,
    /// Maglev table size (a prime).
    #[arg(long, default_value_t = petrel::maglev::DEFAULT_SIZE)]
    maglev_size: u32,
    /// How many services can use Maglev at once.
    #[arg(long, default_value_t = 64)]
    maglev_rings: u32,
    /// Capacity of the services map (entries: one per frontend plus one per backend slot).
    #[arg(long, default_value_t = 2 * 1024 * 1024)]
    services_map_size: u32,
    /// Minimum time between syncs: bursts of changes are coalesced.
    #[arg(long, value_parser = humantime_ms, default_value = "100ms")]
    min_sync_period: Duration,
    /// Maximum time between syncs: a full resync happens at least this often.
    #[arg(long, value_parser = humantime_ms, default_value = "30s")]
    sync_period: Duration,
    /// Prometheus metrics address.
    #[arg(long, default_value = "127.0.0.1:10249")]
    metrics_bind_address: SocketAddr,
    /// Health check address (/healthz).
    #[arg(long, default_value = "0.0.0.0:10256")]
    healthz_bind_address: SocketAddr,
    /// Where the agent publishes what it programmed for netctl (service names per frontend).
    #[arg(long, default_value = "/run/petrel")]
    state_dir: PathBuf,
    /// Where to write the node's pod CIDR for petrel-cni (from the Node's spec.podCIDR).
    #[arg(long, default_value = petrel_cni_defaults::POD_CIDR_FILE)]
    pod_cidr_file: PathBuf,
    /// The CNI conflist to write once the pod CIDR is known ("" to leave CNI config alone).
    #[arg(long, default_value = "/etc/cni/net.d/05-petrel.conflist")]
    cni_conf_file: PathBuf,
    /// MTU petrel-cni gives pod interfaces (in the written conflist); default: the uplink's MTU,
    /// less 50 bytes in VXLAN mode.
    #[arg(long)]
    pod_mtu: Option<u32>,
    /// How pods reach other nodes' pods: routes via each node's InternalIP (`native`, nodes on one
    /// L2 segment), a VXLAN overlay (`vxlan`), or none (another component routes).
    #[arg(long, value_enum, default_value_t = Routing::Native)]
    routing: Routing,
    /// VXLAN network identifier (overlay mode).
    #[arg(long, default_value_t = 1)]
    vxlan_vni: u32,
    /// VXLAN UDP port (overlay mode; 8472 as the Linux kernel, flannel and Cilium use it).
    #[arg(long, default_value_t = 8472)]
    vxlan_port: u16,
    /// The cluster's pod address range: pod egress to addresses outside it is masqueraded to the
    /// node address.
    #[arg(long, default_value = "10.244.0.0/16")]
    cluster_cidr: ipnet::Ipv4Net,
    /// Masquerade pod egress that leaves the cluster CIDR.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    masquerade: bool,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Where the host's /proc/sys/net is (a container sees a read-only /proc/sys; mount the
    /// host's elsewhere and name it here).
    #[arg(long, default_value = "/proc/sys/net")]
    proc_sys_net: PathBuf,
    /// Remove everything petrel installed (pinned maps and links, hence every attached program)
    /// and exit: for uninstalling.
    #[arg(long)]
    cleanup: bool,
    /// Copy the petrel-cni binary next to this one into --cni-bin-dir (atomically: a temporary
    /// file renamed into place) and exit: the DaemonSet's init container.
    #[arg(long)]
    install_cni: bool,
    /// Where container runtimes look for CNI plugins.
    #[arg(long, default_value = "/opt/cni/bin")]
    cni_bin_dir: PathBuf,
}

impl Cli {
    /// Flags, then environment variables, then the --config file, then the defaults.
    fn load() -> anyhow::Result<Cli> {
        use clap::{ArgAction, CommandFactory as _, FromArgMatches as _, parser::ValueSource};
        use petrel::agent::config_file::{self, Kind};
        let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
        let matches = Cli::command().get_matches_from(&argv);
        let Some(path) = matches.get_one::<PathBuf>("config").cloned() else {
            return Ok(Cli::from_arg_matches(&matches)?);
        };
        let cmd = Cli::command();
        // (long name, kind, clap id) of every flag the file may set.
        let known: Vec<(String, Kind, String)> = cmd
            .get_arguments()
            .filter_map(|a| {
                let long = a
                    .get_long()
                    .filter(|l| !matches!(*l, "config" | "help" | "version"))?;
                let kind = match a.get_action() {
                    ArgAction::SetTrue => Kind::Switch,
                    ArgAction::Append => Kind::List,
                    _ => Kind::Single,
                };
                Some((long.to_string(), kind, a.get_id().to_string()))
            })
            .collect();
        let flags: Vec<(String, Kind)> = known.iter().map(|(l, k, _)| (l.clone(), *k)).collect();
        let given_elsewhere = |long: &str| {
            known
                .iter()
                .find(|(l, _, _)| l == long)
                .and_then(|(_, _, id)| matches.value_source(id))
                .is_some_and(|s| matches!(s, ValueSource::CommandLine | ValueSource::EnvVariable))
        };
        let from_file = config_file::read_args(&path, &flags, given_elsewhere)?;
        let mut all = vec![argv[0].clone()];
        all.extend(from_file.into_iter().map(Into::into));
        all.extend(argv[1..].iter().cloned());
        Cli::try_parse_from(all).with_context(|| format!("in {}", path.display()))
    }
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Selection {
    Maglev,
    Random,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Routing {
    Native,
    Vxlan,
    None,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// "100ms", "2s", "1m" -> Duration.
fn humantime_ms(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, "s"), |i| s.split_at(i));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("bad duration {s:?} (e.g. 100ms, 2s, 1m)"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("bad duration unit in {s:?} (ms, s or m)")),
    }
}

/// What the sources have seen so far.
#[derive(Default)]
/// What the sources have seen so far, as shared pointers into their caches: a snapshot copies
/// no object.
struct Inputs {
    services: Vec<Arc<Service>>,
    slices: Vec<Arc<EndpointSlice>>,
    nodes: Vec<Arc<Node>>,
    /// Every source has listed once: programming before that would briefly drop services.
    ready: bool,
    manifest_errors: usize,
}

type Shared = Arc<(Mutex<Inputs>, Notify)>;

fn init_logs(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::load()?;
    init_logs(cli.log_format);
    if cli.install_cni {
        let src = std::env::current_exe()
            .context("locating petrel-agent")?
            .with_file_name("petrel-cni");
        let dst = petrel::agent::cni_config::install_binary(&src, &cli.cni_bin_dir).with_context(
            || {
                format!(
                    "installing {} into {}",
                    src.display(),
                    cli.cni_bin_dir.display()
                )
            },
        )?;
        tracing::info!(plugin = %dst.display(), "petrel-cni installed");
        return Ok(());
    }
    if cli.cleanup {
        Datapath::remove(&cli.bpffs_root)?;
        tracing::info!(root = %cli.bpffs_root.display(), "removed every petrel pin: programs detached, maps freed");
        let routes = routes::remove_all()
            .await
            .context("removing petrel's routes")?;
        tracing::info!(
            routes,
            device = routes::VXLAN_IFNAME,
            "removed petrel's routes and overlay device"
        );
        return Ok(());
    }
    if cli.manifests.is_none() && cli.node_name.is_none() {
        bail!("--node-name (or NODE_NAME) is required when watching an API server");
    }
    let config = DatapathConfig {
        bpffs_root: cli.bpffs_root.clone(),
        max_entries: vec![(petrel::maps::SERVICES, cli.services_map_size)],
        maglev_size: cli.maglev_size,
        maglev_rings: cli.maglev_rings,
    };
    let mut dp = Datapath::load(&config).context("loading the datapath")?;
    if cli.socket_lb {
        let cg = match &cli.cgroup_root {
            Some(p) => p.clone(),
            None => petrel::sys::cgroup2_root()
                .context("finding the cgroup2 root (or pass --cgroup-root)")?,
        };
        let how = dp
            .attach_cgroup(&cg)
            .with_context(|| format!("attaching socket-LB to {}", cg.display()))?;
        tracing::info!(cgroup = %cg.display(), ?how, "socket-level load balancing attached");
    }
    for iface in &cli.external_interfaces {
        let how = dp
            .attach_external_ingress(iface)
            .with_context(|| format!("attaching to {iface}"))?;
        tracing::info!(%iface, ?how, "external interface attached");
    }
    // Reverse NAT rewrites replies before routing; the kernel uses max(all, interface) for
    // rp_filter, so a strict `all` defeats petrel-cni's per-veth setting.
    if std::fs::read_to_string(cli.proc_sys_net.join("ipv4/conf/all/rp_filter"))
        .is_ok_and(|v| v.trim() != "0")
    {
        tracing::warn!(
            "net.ipv4.conf.all.rp_filter is not 0: replies of translated flows may be dropped"
        );
    }
    let mut maps = dp.service_maps()?;
    maps.set_cluster_cidr(cli.masquerade.then_some(cli.cluster_cidr))?;
    if cli.masquerade {
        tracing::info!(cluster_cidr = %cli.cluster_cidr, "pod egress leaving the cluster CIDR is masqueraded");
    }
    let mut syncer = Syncer::adopt(maps, cli.maglev_rings, cli.services_map_size as usize)?;
    let (adopted_frontends, adopted_backends) =
        (syncer.maps().dump()?.len(), syncer.maps().backends()?.len());
    tracing::info!(
        adopted_frontends,
        adopted_backends,
        "datapath loaded; adopting what the pins hold"
    );

    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());
    health
        .stale_after_ms
        .store(2 * cli.sync_period.as_millis() as u64, Ordering::Relaxed);
    for addr in [cli.metrics_bind_address, cli.healthz_bind_address] {
        let (m, h) = (metrics.clone(), health.clone());
        tokio::spawn(async move {
            if let Err(e) = metrics::serve(addr, m, h).await {
                tracing::error!(%addr, error = %e, "HTTP endpoint stopped");
            }
        });
    }

    let shared: Shared = Arc::new((Mutex::new(Inputs::default()), Notify::new()));
    match &cli.manifests {
        Some(dir) => {
            tokio::spawn(watch_manifests(dir.clone(), shared.clone()));
        }
        None => {
            let node = cli.node_name.clone().expect("checked above");
            tokio::spawn(watch_api(cli.kubeconfig.clone(), node, shared.clone()));
        }
    }

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let opts = Options {
        maglev: cli.external_selection == Selection::Maglev,
    };
    let mut attached: HashSet<String> = HashSet::new();
    let route_settings = route_sync::Settings {
        mode: match cli.routing {
            Routing::Native => Some(routes::Mode::Native),
            Routing::Vxlan => Some(routes::Mode::Vxlan {
                vni: cli.vxlan_vni,
                port: cli.vxlan_port,
            }),
            Routing::None => None,
        },
        pod_mtu: cli.pod_mtu,
        proc_sys_net: cli.proc_sys_net.clone(),
        sync_period: cli.sync_period,
        external_interfaces: cli.external_interfaces.clone(),
    };
    let mut routing = route_sync::RouteSync::default();
    let mut observed_triggers: BTreeSet<(String, String)> = BTreeSet::new();
    let mut last_sync = Instant::now() - cli.min_sync_period;
    let mut next_full_sync = Instant::now() + cli.sync_period;
    // New pod veths are picked up within a second, between syncs.
    let mut link_scan = tokio::time::interval(Duration::from_secs(1));
    // Desired state per service, computed again only for services whose objects changed.
    let mut memo = desired::Memo::default();
    // netctl's names are written at the first sync and whenever the datapath changed.
    let mut names_published = false;
    loop {
        tokio::select! {
            _ = shared.1.notified() => {}
            _ = tokio::time::sleep_until(next_full_sync.into()) => {}
            _ = link_scan.tick() => {
                attach_pod_interfaces(&mut dp, &cli.pod_interface_prefix, &mut attached);
                // Routing that failed is retried on its own clock, not only when an event
                // comes (the conflist waits for it).
                if !routing.retry_due() {
                    continue;
                }
            }
            _ = sigterm.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
        next_full_sync = Instant::now() + cli.sync_period;
        // Bounded frequency: coalesce bursts.
        let since = last_sync.elapsed();
        if since < cli.min_sync_period {
            tokio::time::sleep(cli.min_sync_period - since).await;
        }
        let iteration = Instant::now();
        write_cni_config(&cli, &shared, routing.pod_mtu(&route_settings));
        let (desired, slices, manifest_errors, node_ip, plan) = {
            let inputs = shared.0.lock().expect("poisoned");
            if !inputs.ready {
                continue;
            }
            let node = node_facts(&cli, &inputs.nodes);
            let d = memo.compute(&inputs.services, &inputs.slices, &node, opts);
            let plan = routing::plan(&inputs.nodes, &node.name, Some(cli.cluster_cidr));
            (
                d,
                inputs.slices.clone(),
                inputs.manifest_errors,
                node.ips.first().copied(),
                plan,
            )
        };
        if let Some(ip) = node_ip {
            routing
                .sync(&route_settings, ip, plan, &mut dp, &metrics)
                .await;
        }
        attach_pod_interfaces(&mut dp, &cli.pod_interface_prefix, &mut attached);
        if let Some(ip) = node_ip {
            let _ = syncer.maps_mut().set_node_ip(ip);
        }
        let computed = iteration.elapsed();
        let started = Instant::now();
        let report = syncer.sync(&desired);
        let took = started.elapsed();
        last_sync = Instant::now();
        metrics.sync_duration.observe(took.as_secs_f64());
        metrics.refused.set(report.refused.len() as i64);
        metrics.manifest_errors.set(manifest_errors as i64);
        if report.refused.is_empty() {
            health.synced();
            metrics.last_sync.set(
                SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs_f64(),
            );
            observe_programming_latency(&metrics, &slices, &mut observed_triggers);
        } else {
            metrics.sync_errors.inc();
        }
        update_gauges(&metrics, &syncer);
        let changed = report.upserted + report.removed > 0;
        if changed || !names_published {
            match petrel::agent::names::write(&cli.state_dir, &desired) {
                Ok(()) => names_published = true,
                Err(e) => {
                    tracing::warn!(dir = %cli.state_dir.display(), error = %e, "cannot publish service names for netctl")
                }
            }
        }
        tracing::debug!(
            upserted = report.upserted,
            removed = report.removed,
            unchanged = report.unchanged,
            refused = report.refused.len(),
            took_ms = took.as_millis() as u64,
            "synced"
        );
        if changed {
            tracing::info!(
                upserted = report.upserted,
                removed = report.removed,
                took_ms = took.as_millis() as u64,
                compute_ms = computed.as_millis() as u64,
                total_ms = iteration.elapsed().as_millis() as u64,
                "datapath updated"
            );
        }
    }
    tracing::info!("exiting; the datapath stays in place (pinned) and keeps serving");
    Ok(())
}

fn node_facts(cli: &Cli, nodes: &[Arc<Node>]) -> NodeFacts {
    let name = cli.node_name.clone().unwrap_or_default();
    let mut ips = cli.node_ips.clone();
    if ips.is_empty() {
        let me = nodes
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(name.as_str()));
        ips = me
            .and_then(|n| n.status.as_ref())
            .and_then(|s| s.addresses.as_ref())
            .into_iter()
            .flatten()
            .filter(|a| a.type_ == "InternalIP")
            .filter_map(|a| a.address.parse().ok())
            .collect();
    }
    NodeFacts { name, ips }
}

/// Keeps petrel-cni's pod CIDR file and the conflist in line with this Node's podCIDR.
fn write_cni_config(cli: &Cli, shared: &Shared, pod_mtu: Option<u32>) {
    use petrel::agent::cni_config;
    let cidr = {
        let inputs = shared.0.lock().expect("poisoned");
        let name = cli.node_name.as_deref().unwrap_or_default();
        inputs
            .nodes
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(name))
            .and_then(|n| cni_config::pod_cidr(n))
    };
    let Some(cidr) = cidr else { return };
    match cni_config::write_if_changed(&cli.pod_cidr_file, &format!("{cidr}\n")) {
        Ok(true) => {
            tracing::info!(%cidr, file = %cli.pod_cidr_file.display(), "pod CIDR written for petrel-cni")
        }
        Ok(false) => {}
        Err(e) => {
            tracing::warn!(file = %cli.pod_cidr_file.display(), error = %e, "cannot write the pod CIDR")
        }
    }
    // The conflist waits for the MTU (known once the uplink is found): pods made with a wrong
    // one would keep it.
    let Some(mtu) = pod_mtu else { return };
    if cli.cni_conf_file.as_os_str().is_empty() {
        return;
    }
    match cni_config::write_if_changed(
        &cli.cni_conf_file,
        &cni_config::conflist(&cli.pod_cidr_file, mtu),
    ) {
        Ok(true) => tracing::info!(file = %cli.cni_conf_file.display(), "CNI conflist written"),
        Ok(false) => {}
        Err(e) => {
            tracing::warn!(file = %cli.cni_conf_file.display(), error = %e, "cannot write the CNI conflist")
        }
    }
}

/// Defaults shared with petrel-cni (kept in one place of the agent's CLI).
mod petrel_cni_defaults {
    /// Must match petrel-cni's `config::DEFAULT_POD_CIDR_FILE`.
    pub const POD_CIDR_FILE: &str = "/var/lib/petrel/cni/pod-cidr";
}

/// Attaches the pod-facing TC program to pod veths that appeared since the last sync.
fn attach_pod_interfaces(dp: &mut Datapath, prefix: &str, attached: &mut HashSet<String>) {
    let Ok(ifaces) = nix::net::if_::if_nameindex() else {
        return;
    };
    let names: HashSet<String> = ifaces
        .iter()
        .map(|i| i.name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        // The overlay device shares petrel's prefix but is a node interface (external side).
        .filter(|n| n != routes::VXLAN_IFNAME)
        .collect();
    attached.retain(|n| names.contains(n));
    for gone in dp.prune_pod_links(&names) {
        tracing::info!(iface = %gone, "pod interface gone: its link pin removed");
    }
    for name in names {
        if attached.contains(&name) {
            continue;
        }
        match dp.attach_tc_ingress(&name) {
            Ok(how) => {
                tracing::info!(iface = %name, ?how, "pod interface attached");
                attached.insert(name);
            }
            Err(e) => {
                tracing::warn!(iface = %name, error = %e, "attaching to pod interface failed")
            }
        }
    }
}

fn update_gauges(metrics: &Metrics, syncer: &Syncer) {
    let (services, backends) = syncer.counts();
    metrics.services.set(services as i64);
    metrics.backends.set(backends as i64);
    let (used, cap) = syncer.fill();
    metrics
        .map_fill
        .get_or_create(&MapLabel {
            map: petrel::maps::SERVICES.into(),
        })
        .set(used as f64 / cap.max(1) as f64);
    if let Ok(stats) = syncer.maps().stats() {
        for (name, v) in stats {
            metrics
                .datapath
                .get_or_create(&CounterLabel {
                    counter: name.into(),
                })
                .set(v as i64);
        }
    }
}

/// kubeproxy_network_programming_duration_seconds: from each EndpointSlice change's trigger time
/// (annotation set by the EndpointSlice controller) to the sync that programmed it.
fn observe_programming_latency(
    metrics: &Metrics,
    slices: &[Arc<EndpointSlice>],
    seen: &mut BTreeSet<(String, String)>,
) {
    const TRIGGER: &str = "endpoints.kubernetes.io/last-change-trigger-time";
    for s in slices {
        let Some(t) = s.metadata.annotations.as_ref().and_then(|a| a.get(TRIGGER)) else {
            continue;
        };
        let key = (
            s.metadata.uid.clone().unwrap_or_default(),
            s.metadata.resource_version.clone().unwrap_or_default(),
        );
        if !seen.insert(key) {
            continue;
        }
        if let Ok(ts) = t.parse::<k8s_openapi::jiff::Timestamp>() {
            let ms = k8s_openapi::jiff::Timestamp::now().as_millisecond() - ts.as_millisecond();
            if ms >= 0 {
                metrics.network_programming.observe(ms as f64 / 1000.0);
            }
        }
    }
}

async fn watch_manifests(dir: PathBuf, shared: Shared) {
    let mut last = None;
    loop {
        let fp = manifests::fingerprint(&dir);
        if last.as_ref() != Some(&fp) {
            let (m, errors) = manifests::load_dir(&dir);
            for e in &errors {
                tracing::error!(file = %e.file.display(), line = e.line, reason = %e.reason, "manifest skipped");
            }
            tracing::info!(dir = %dir.display(), services = m.services.len(), endpointslices = m.slices.len(), skipped = errors.len(), "manifests read");
            {
                let mut inputs = shared.0.lock().expect("poisoned");
                inputs.services = m.services.into_iter().map(Arc::new).collect();
                inputs.slices = m.slices.into_iter().map(Arc::new).collect();
                inputs.nodes = m.nodes.into_iter().map(Arc::new).collect();
                inputs.manifest_errors = errors.len();
                inputs.ready = true;
            }
            shared.1.notify_one();
            last = Some(fp);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn watch_api(kubeconfig: Option<PathBuf>, node: String, shared: Shared) {
    // An unreachable API server at start is retried with backoff, not a crash.
    let mut delay = Duration::from_millis(500);
    let client = loop {
        match client(kubeconfig.as_deref()).await {
            Ok(c) => break c,
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "cannot reach the API server");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    };
    let (svc_reader, svc_writer) = reflector::store::<Service>();
    let (slice_reader, slice_writer) = reflector::store::<EndpointSlice>();
    let (node_reader, node_writer) = reflector::store::<Node>();
    // Watchers retry with backoff and re-list (a full resync) after the API server returns;
    // meanwhile the stores, and so the datapath, keep the last state.
    let services = reflector(
        svc_writer,
        watcher(
            kube::Api::<Service>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff(),
    );
    let slices = reflector(
        slice_writer,
        watcher(
            kube::Api::<EndpointSlice>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff(),
    );
    // Every Node: the others' podCIDRs and addresses are what routing needs. Only spec and
    // addresses are kept: images and managed fields can be most of a Node's size.
    let nodes = reflector(
        node_writer,
        watcher(kube::Api::<Node>::all(client), watcher::Config::default())
            .default_backoff()
            .modify(|n| {
                n.metadata.managed_fields = None;
                n.metadata.annotations = None;
                if let Some(s) = n.status.as_mut() {
                    s.images = None;
                    s.conditions = None;
                    s.volumes_attached = None;
                    s.volumes_in_use = None;
                }
            }),
    );
    // Every event (already applied to its store when the stream yields it) wakes the refresher
    // below, which snapshots the stores into the shared inputs and wakes the sync loop: a change
    // reaches the datapath as soon as the sync loop's minimum interval allows.
    let changed = Arc::new(Notify::new());
    tokio::spawn(services.for_each(wake(changed.clone())));
    tokio::spawn(slices.for_each(wake(changed.clone())));
    tokio::spawn(nodes.for_each(wake(changed.clone())));
    let all_ready = async {
        let _ = svc_reader.wait_until_ready().await;
        let _ = slice_reader.wait_until_ready().await;
        let _ = node_reader.wait_until_ready().await;
    };
    all_ready.await;
    tracing::info!(%node, "Services, EndpointSlices and Nodes listed: programming");
    loop {
        {
            let mut inputs = shared.0.lock().expect("poisoned");
            inputs.services = svc_reader.state();
            inputs.slices = slice_reader.state();
            inputs.nodes = node_reader.state();
            inputs.ready = true;
        }
        shared.1.notify_one();
        changed.notified().await;
    }
}

/// A stream callback that only wakes whoever waits on `notify`.
fn wake<T>(notify: Arc<Notify>) -> impl FnMut(T) -> futures::future::Ready<()> {
    move |_| {
        notify.notify_one();
        futures::future::ready(())
    }
}

async fn client(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await?
        }
        None => kube::Config::incluster()?,
    };
    let client = kube::Client::try_from(config)?;
    client.apiserver_version().await?;
    Ok(client)
}
