//! One agent on one node: the datapath, what has been applied to it, and one sync (`tick`) that
//! brings the datapath, the routes and petrel-cni's files in line with a snapshot of the inputs.

use std::{
    net::Ipv4Addr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use petrel_datapath::{Datapath, inspect::names};

use crate::{
    cli::Cli,
    cni_files::CniFiles,
    conntrack,
    desired::{Memo, Options, frontend_name},
    health::ProxierHealth,
    metrics::{Metrics, ProgrammingLatency},
    node::{self, NodeFacts},
    nodeport::NodePortAddresses,
    pods::PodInterfaces,
    routing::{self, RouteSync, Settings},
    runner::BoundedFrequency,
    service_health::ServiceHealthServer,
    sock_term::{self, Terminator},
    sources::{self, Snapshot},
    sync::Syncer,
};

/// What one agent holds between syncs.
pub struct Agent {
    dp: Datapath,
    /// None only while a sync runs on the blocking pool (`sync::sync_blocking`).
    syncer: Option<Syncer>,
    metrics: Arc<Metrics>,
    health: Arc<ProxierHealth>,
    /// The healthCheckNodePorts of LoadBalancer services with externalTrafficPolicy Local.
    service_health: ServiceHealthServer,
    pods: PodInterfaces,
    node_name: String,
    /// --node-ip: the node's primary addresses (empty: the Node's InternalIPs).
    node_ips: Vec<Ipv4Addr>,
    /// --nodeport-addresses: which local addresses serve NodePorts.
    nodeport: NodePortAddresses,
    cluster_cidr: ipnet::Ipv4Net,
    options: Options,
    route_settings: Settings,
    cni_files: CniFiles,
    /// Where netctl's frontend names are published.
    state_dir: PathBuf,
    routes: RouteSync,
    /// Desired state per service, computed again only for services whose objects changed.
    memo: Memo,
    latency: ProgrammingLatency,
    /// Slices new since the last sync that programmed everything: their trigger times are
    /// observed once it does.
    unobserved: Vec<Arc<k8s_openapi::api::discovery::v1::EndpointSlice>>,
    /// A sync refused something (or none ran yet): the next one is a full sync.
    needs_full: bool,
    /// netctl's names: rewritten at full syncs, appended to for the frontends that change.
    names: names::Journal,
    /// The refused frontends last published for netctl (None: nothing published yet).
    published_refused: Option<Vec<names::Refusal>>,
    /// Asks the conntrack garbage collector for a sweep.
    gc: conntrack::Kick,
    /// Destroys connected UDP sockets on removed backends (with socket-LB only).
    term: Option<Terminator>,
}

impl Agent {
    /// Loads (or adopts) the datapath, attaches what `cli` asks for and takes over the maps,
    /// keeping the ids they already use: conntrack entries name backend and reverse-NAT ids, so
    /// established flows keep working across a restart.
    pub fn start(
        cli: &Cli,
        metrics: Arc<Metrics>,
        health: Arc<ProxierHealth>,
    ) -> anyhow::Result<Agent> {
        // Checked before anything is loaded: a bad value changes nothing.
        let ct = cli.conntrack()?;
        if let Some(w) = conntrack::check_nat_ports(&cli.proc_sys_net, ct.nat_ports) {
            tracing::warn!("{w}");
        }
        let caps = cli.map_capacities()?;
        let mut dp = Datapath::load(&cli.datapath_config(&caps)).context("loading the datapath")?;
        if cli.socket_lb {
            let cg = match &cli.cgroup_root {
                Some(p) => p.clone(),
                None => petrel_datapath::sys::cgroup2_root()
                    .context("finding the cgroup2 root (or pass --cgroup-root)")?,
            };
            let how = dp
                .attach_cgroup(&cg)
                .with_context(|| format!("attaching socket-LB to {}", cg.display()))?;
            tracing::info!(cgroup = %cg.display(), ?how, "socket-level load balancing attached");
        }
        if !cli.socket_lb {
            tracing::warn!(
                "--socket-lb=false: pods' service traffic takes the TC path; host processes (hostNetwork pods, the kubelet) are translated at egress of the external interfaces, so their route to service addresses (the default route) must leave by one; they cannot reach this node's own NodePorts or host-network endpoints on this node"
            );
            if cli.socket_lb_hostns_only {
                tracing::warn!("--socket-lb-hostns-only has no effect with --socket-lb=false");
            }
        }
        for iface in &cli.external_interfaces {
            let how = dp
                .attach_external(iface)
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
        // Written every start, so dropping the flag (or socket-LB) turns it off again.
        let hostns = if cli.socket_lb && cli.socket_lb_hostns_only {
            let cookie = petrel_datapath::sys::netns_cookie()
                .context("reading the host network namespace's cookie (SO_NETNS_COOKIE, Linux 5.14+) for --socket-lb-hostns-only")?;
            tracing::info!(
                netns_cookie = cookie,
                "socket-LB translates in the host network namespace only; pods' service traffic takes the TC path"
            );
            Some(cookie)
        } else {
            None
        };
        maps.set_socket_lb_netns(hostns)?;
        maps.set_cluster_cidr(cli.masquerade.then_some(cli.cluster_cidr))?;
        if cli.masquerade {
            tracing::info!(cluster_cidr = %cli.cluster_cidr, "pod egress leaving the cluster CIDR is masqueraded");
        }
        maps.set_ct_lifetimes(ct.lifetimes)?;
        maps.set_nat_port_range(ct.nat_ports.min, ct.nat_ports.max)?;
        let capacity = petrel_datapath::maps::MapStore::ct_capacity(maps.store())?;
        if u64::from(capacity) != 2 * u64::from(ct.max_flows) {
            tracing::warn!(
                pinned_flows = capacity / 2,
                ct_max_flows = ct.max_flows,
                "the conntrack map adopted from its pin keeps its size; --ct-max-flows applies when the map is created anew (its pin CT_V2 removed while the agent is stopped, which drops every tracked connection)"
            );
        }
        tracing::info!(
            flows = capacity / 2,
            tcp_established_s = ct.lifetimes.tcp_established,
            tcp_syn_s = ct.lifetimes.tcp_syn,
            tcp_closing_s = ct.lifetimes.tcp_closing,
            tcp_time_wait_s = ct.lifetimes.tcp_time_wait,
            other_s = ct.lifetimes.other,
            nat_ports = %ct.nat_ports,
            "connection tracking configured"
        );
        conntrack::register_reasons(&metrics);
        let gc = conntrack::spawn(&dp.maps_dir(), ct.gc_interval, metrics.clone())?;
        // Namespaces are found through every process: the DaemonSet runs with hostPID.
        let term = if cli.socket_lb {
            Some(sock_term::spawn(
                &dp.maps_dir(),
                PathBuf::from("/proc"),
                metrics.clone(),
            )?)
        } else {
            None
        };
        // For petrel-cni, which attaches them to new pods' veths itself (see `pods`). Without
        // them pods are still wired, by this agent only.
        match dp.pin_pod_programs() {
            Ok(()) => tracing::info!("pod programs pinned for petrel-cni"),
            Err(e) => {
                tracing::warn!(error = %e, "cannot pin the pod programs: pods made while the agent is down stay unwired until it is back")
            }
        }
        let syncer = Syncer::adopt(maps, cli.maglev_rings, caps.services as usize)?;
        // Counted by the adoption's one read of each map, not read again.
        let (adopted_frontends, adopted_backends) = syncer.found();
        tracing::info!(
            adopted_frontends,
            adopted_backends,
            "datapath loaded; adopting what the pins hold"
        );
        // Where health check node ports listen (kube-proxy's rule): 0.0.0.0 unless
        // --nodeport-addresses narrows NodePorts; then the NodePort addresses, set at every sync.
        let nodeport = cli.nodeport_addresses()?;
        let hc_addrs = crate::service_health::listen_addrs(&nodeport, &[]);
        let cni_files = CniFiles {
            pod_cidr_file: cli.pod_cidr_file.clone(),
            conf_file: cli.cni_conf_file.clone(),
            cni_version: cli.cni_version.clone(),
            bpffs_root: cli.bpffs_root.clone(),
            refused: std::sync::Mutex::default(),
            metrics: Some(metrics.clone()),
            exclusive: cli.cni_exclusive,
            shadowing: std::sync::Mutex::default(),
            health: Some(health.clone()),
        };
        Ok(Agent {
            dp,
            syncer: Some(syncer),
            metrics,
            service_health: ServiceHealthServer::new(hc_addrs, health.clone()),
            health,
            pods: PodInterfaces::new(cli.pod_interface_prefix.clone()),
            node_name: cli.node_name.clone().unwrap_or_default(),
            node_ips: cli.node_ips.clone(),
            nodeport,
            cluster_cidr: cli.cluster_cidr,
            options: cli.options(),
            route_settings: cli.route_settings(),
            cni_files,
            state_dir: cli.state_dir.clone(),
            routes: RouteSync::default(),
            memo: Memo::default(),
            latency: ProgrammingLatency::default(),
            unobserved: Vec::new(),
            needs_full: true,
            names: names::Journal::new(&cli.state_dir),
            published_refused: None,
            gc,
            term,
        })
    }

    fn syncer_mut(&mut self) -> &mut Syncer {
        self.syncer.as_mut().expect("no sync is running")
    }

    /// When routing failed to be set up: how long until it should be tried again.
    pub fn retry_in(&self) -> Option<Duration> {
        self.routes.retry_in()
    }

    /// Attaches to pod interfaces that appeared since the last call (the scan).
    pub fn attach_pods(&mut self) {
        let n = self.pods.attach_new(&mut self.dp);
        self.count_attached("scan", n);
    }

    /// Acts on a link notification: a new pod veth is attached at once.
    pub fn on_link_event(&mut self, ev: &petrel_netlink::Event) {
        match ev {
            petrel_netlink::Event::Link(name) => {
                let n = usize::from(self.pods.attach(&mut self.dp, name));
                self.count_attached("notification", n);
            }
            petrel_netlink::Event::LinkGone(name) => self.pods.gone(name),
            // Notifications were lost: whatever they announced is found by a scan now.
            petrel_netlink::Event::Lost => self.attach_pods(),
            petrel_netlink::Event::Address => {}
        }
    }

    fn count_attached(&self, kind: &str, n: usize) {
        if n > 0 {
            let label = crate::metrics::KindLabel { kind: kind.into() };
            self.metrics
                .pods_attached
                .get_or_create(&label)
                .inc_by(n as u64);
        }
    }

    /// This node's facts, with the NodePort addresses out of the namespace's current ones.
    fn node_facts(&self, inputs: &Snapshot) -> NodeFacts {
        let mut node = NodeFacts::of(&inputs.nodes, &self.node_name, &self.node_ips);
        let local = match petrel_netlink::Socket::new().and_then(|mut s| s.local_ipv4s()) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the node's addresses: NodePorts on the primary addresses only");
                node.ips.clone()
            }
        };
        node.node_port_ips = Some(self.nodeport.select(&local, &node.ips));
        node
    }

    /// Routes to other nodes, petrel-cni's files and pod interfaces: what the node needs before
    /// any service. Returns the node's address, once known.
    async fn wire_node(&mut self, inputs: &Snapshot, node: &NodeFacts) -> Option<Ipv4Addr> {
        let node_ip = node.ips.first().copied();
        if let Some(ip) = node_ip {
            let plan = routing::plan(&inputs.nodes, &node.name, Some(self.cluster_cidr));
            self.routes
                .sync(&self.route_settings, ip, plan, &mut self.dp, &self.metrics)
                .await;
        }
        // After the routes: setting them up finds the uplink, whose MTU the conflist carries.
        let pod_mtu = self.routes.pod_mtu(&self.route_settings);
        self.cni_files
            .write(&inputs.nodes, &self.node_name, pod_mtu);
        self.attach_pods();
        node_ip
    }

    /// Only the node's wiring (`wire_node`), for a snapshot with the Nodes alone.
    pub async fn tick_node(&mut self, inputs: &Snapshot) {
        let node = self.node_facts(inputs);
        self.wire_node(inputs, &node).await;
    }

    /// One sync: routes, CNI files, pod interfaces, then the service maps. `full`: the maps
    /// are compared whole with the desired state (the periodic resync, a retry); otherwise
    /// only the frontends of services whose objects changed are written (after a sync that
    /// refused something, the next one is full whatever `full` says).
    pub async fn tick(&mut self, inputs: &Arc<Snapshot>, full: bool) {
        let iteration = Instant::now();
        let node = self.node_facts(inputs);
        // The desired state's computation on the blocking pool too (the memo moves there and
        // back; the snapshot is shared, nothing is locked while it runs).
        let (memo, changes) = {
            let (mut memo, inputs, node, options) = (
                std::mem::take(&mut self.memo),
                inputs.clone(),
                node.clone(),
                self.options,
            );
            tokio::task::spawn_blocking(move || {
                let changes = memo.update(&inputs.services, &inputs.slices, &node, options);
                (memo, changes)
            })
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
        };
        self.memo = memo;
        if self.unobserved.len() < 1 << 16 {
            self.unobserved.extend(changes.fresh_slices.iter().cloned());
        }
        let node_ip = self.wire_node(inputs, &node).await;
        if let Some(ip) = node_ip {
            let _ = self.syncer_mut().maps_mut().set_node_ip(ip);
        }
        let full = full || changes.all || self.needs_full;
        let computed = iteration.elapsed();
        let started = Instant::now();
        // The map writes are system calls, many at a full sync: on the blocking pool, with the
        // syncer and the memo (which holds the desired state) moved there and back.
        let syncer = self.syncer.take().expect("no sync is running");
        let memo = std::mem::take(&mut self.memo);
        let changed = (!full).then(|| changes.frontends.clone());
        let (syncer, memo, mut report) =
            crate::sync::sync_blocking(syncer, memo, Memo::desired, changed).await;
        self.syncer = Some(syncer);
        self.memo = memo;
        let desired = self.memo.desired();
        let took = started.elapsed();
        self.needs_full = !report.refused.is_empty();
        let m = &self.metrics;
        m.sync_duration.observe(took.as_secs_f64());
        m.refused.set(report.refused.len() as i64);
        for (_, why) in &report.refused {
            let reason = crate::sync::refusal_reason(why).into();
            m.refused_total
                .get_or_create(&crate::metrics::ReasonLabel { reason })
                .inc();
        }
        m.unsupported_ports.set(desired.unsupported.len() as i64);
        m.manifest_errors.set(inputs.manifest_errors as i64);
        // The sync ran to its end: what was queued is applied. Refused frontends (a full map)
        // are counted and logged, and never make the proxier unhealthy (see `health`).
        self.health.updated();
        if report.refused.is_empty() {
            m.last_sync.set(
                SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs_f64(),
            );
            self.latency.observe(m, &self.unobserved);
            self.unobserved.clear();
        } else {
            m.sync_errors.inc();
        }
        m.update_gauges(self.syncer.as_ref().expect("no sync is running"));
        self.service_health
            .set_addrs(crate::service_health::listen_addrs(
                &self.nodeport,
                node.node_port_ips(),
            ));
        let hc = self.service_health.sync(&desired.health_checks).await;
        m.hc_ports_open.set(hc.open as i64);
        m.hc_ports_failed.set(hc.failed.len() as i64);
        m.hc_bind_errors.inc_by(hc.failed.len() as u64);
        if report.released {
            // Flows and affinity entries naming what went are removed now, not at the next
            // sweep (kube-proxy's UDP conntrack cleanup).
            self.gc.kick();
        }
        if let Some(t) = &self.term {
            // Connected UDP sockets socket-LB sent to a backend that went keep sending there:
            // they are destroyed, so the application reconnects to a current backend.
            t.terminate(std::mem::take(&mut report.udp_departed));
        }
        self.publish_names(full, &changes.frontends);
        self.publish_refused(&report.refused);
        let changed = report.upserted + report.removed > 0;
        tracing::debug!(
            full,
            upserted = report.upserted,
            removed = report.removed,
            unchanged = report.unchanged,
            refused = report.refused.len(),
            took_ms = took.as_millis() as u64,
            "synced"
        );
        if changed {
            tracing::info!(
                full,
                upserted = report.upserted,
                removed = report.removed,
                took_ms = took.as_millis() as u64,
                compute_ms = computed.as_millis() as u64,
                total_ms = iteration.elapsed().as_millis() as u64,
                "datapath updated"
            );
        }
    }

    /// netctl's list of refused frontends, rewritten when it changes. Each sync's report holds
    /// every refused frontend: a sync after one that refused something is a full one.
    fn publish_refused(&mut self, refused: &[(petrel_datapath::Frontend, String)]) {
        let desired = self.memo.desired();
        let list: Vec<names::Refusal> = refused
            .iter()
            .map(|(fe, why)| names::Refusal {
                frontend: fe.to_string(),
                service: desired
                    .frontends
                    .get(fe)
                    .map_or_else(String::new, |p| p.service.clone()),
                why: why.clone(),
            })
            .collect();
        if self.published_refused.as_ref() == Some(&list) {
            return;
        }
        match names::write_refused(&self.state_dir, &list) {
            Ok(()) => self.published_refused = Some(list),
            Err(e) => {
                tracing::warn!(dir = %self.state_dir.display(), error = %e, "cannot publish refused frontends for netctl")
            }
        }
    }

    /// netctl's names: the changed frontends' appended, or every name at a full sync (and
    /// whenever the journal is due for compaction or cannot be appended to).
    fn publish_names(
        &mut self,
        full: bool,
        changed: &std::collections::BTreeSet<petrel_datapath::Frontend>,
    ) {
        let desired = self.memo.desired();
        let appended = !full
            && !self.names.wants_rewrite()
            && (changed.is_empty() || {
                let lines: Vec<(String, Option<names::FrontendName>)> = changed
                    .iter()
                    .map(|fe| (fe.to_string(), desired.frontends.get(fe).map(frontend_name)))
                    .collect();
                self.names.append(&lines, desired.frontends.len()).is_ok()
            });
        if appended {
            return;
        }
        let all: Vec<(String, names::FrontendName)> = desired
            .frontends
            .iter()
            .map(|(fe, p)| (fe.to_string(), frontend_name(p)))
            .collect();
        if let Err(e) = self
            .names
            .rewrite(all.iter().map(|(fe, n)| (fe.clone(), n)))
        {
            tracing::warn!(dir = %self.state_dir.display(), error = %e, "cannot publish service names for netctl");
        }
    }
}

/// Runs the agent until SIGTERM or Ctrl-C: serves metrics and health, starts the source `cli`
/// names, and syncs whenever the bounded-frequency runner says so. On exit the datapath stays in
/// place (pinned) and keeps serving; the next agent adopts it.
pub async fn run(cli: &Cli) -> anyhow::Result<()> {
    // Every range first: a bad value stops the agent before anything is loaded or written.
    cli.check()?;
    if cli.manifests.is_none() && cli.node_name.is_none() {
        anyhow::bail!("--node-name (or NODE_NAME) is required when watching an API server");
    }
    let metrics = Arc::new(Metrics::new());
    // kube-proxy's healthTimeout: twice the sync period.
    let health = Arc::new(ProxierHealth::new(2 * cli.sync_period));
    // As kube-proxy's SyncLoop: healthy from the start, even if no sync ever succeeds.
    health.updated();
    let mut agent = Agent::start(cli, metrics.clone(), health.clone())?;
    for addr in [cli.metrics_bind_address, cli.healthz_bind_address] {
        let (m, h) = (metrics.clone(), health.clone());
        tokio::spawn(async move {
            let served = match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => crate::metrics::serve(l, m, h).await,
                Err(e) => Err(e),
            };
            if let Err(e) = served {
                tracing::error!(%addr, error = %e, "HTTP endpoint stopped");
            }
        });
    }
    let (publisher, mut inputs) = sources::channel();
    // Changes are queued as they arrive, apart from the sync loop: a loop that is stuck must
    // still be seen falling behind (kube-proxy's QueuedUpdate, called from its event handlers).
    let mut queue = inputs.clone();
    let (h, name) = (health.clone(), agent.node_name.clone());
    tokio::spawn(async move {
        while queue.changed().await.is_ok() {
            let Some(snapshot) = queue.borrow_and_update().clone() else {
                continue;
            };
            h.sync_node(node::find(&snapshot.nodes, &name));
            if !snapshot.nodes_only {
                h.queued();
            }
        }
    });
    match &cli.manifests {
        Some(dir) => {
            let rules = crate::validate::Rules {
                node_ports: cli.service_node_port_range.min..=cli.service_node_port_range.max,
            };
            sources::manifests::spawn(dir.clone(), rules, publisher, metrics.clone())
                .context("starting the manifests thread")?;
        }
        None => {
            tokio::spawn(sources::kube::watch(
                cli.kubeconfig.clone(),
                agent.node_name.clone(),
                publisher,
            ));
        }
    }
    let owner = match (&cli.owner_daemonset, &cli.manifests) {
        (Some(owner), None) => Some(crate::uninstall::Watch::start(
            cli.kubeconfig.clone(),
            owner.clone(),
        )),
        _ => None,
    };
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut runner = BoundedFrequency::new(cli.min_sync_period, cli.sync_period);
    // New pod veths are attached as the kernel announces them; the scan is the safety net.
    let mut links = match crate::pods::notifications() {
        Ok(rx) => Some(rx),
        Err(e) => {
            tracing::warn!(error = %e, "cannot subscribe to link notifications: pod interfaces are found by the periodic scan only");
            None
        }
    };
    let mut link_scan = tokio::time::interval(cli.pod_scan_period);
    // An address added or removed may change the NodePort addresses: a sync, through the runner.
    let addresses = Arc::new(tokio::sync::Notify::new());
    loop {
        let changed = async {
            tokio::select! {
                r = inputs.changed() => {
                    // A source that ended (it never does) must not make this loop spin.
                    if r.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
                () = addresses.notified() => {}
            }
        };
        let trigger = tokio::select! {
            t = runner.wait(changed) => t,
            ev = async {
                match links.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                match ev {
                    Some(petrel_netlink::Event::Address) => addresses.notify_one(),
                    Some(ev) => agent.on_link_event(&ev),
                    None => links = None,
                }
                continue;
            }
            _ = link_scan.tick() => {
                agent.attach_pods();
                continue;
            }
            _ = sigterm.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        };
        runner.throttle().await;
        let Some(snapshot) = inputs.borrow_and_update().clone() else {
            // Not every source has listed yet: programming now would briefly drop services.
            continue;
        };
        if snapshot.nodes_only {
            // Services still listing: wire the node now, program services once all is listed.
            agent.tick_node(&snapshot).await;
        } else {
            agent
                .tick(&snapshot, trigger != crate::runner::Trigger::Changed)
                .await;
        }
        runner.ran(agent.retry_in());
    }
    if let Some(owner) = owner
        && owner.deleted().await
    {
        drop(agent);
        return crate::uninstall::remove_from_node(cli).await;
    }
    tracing::info!("exiting; the datapath stays in place (pinned) and keeps serving");
    Ok(())
}
