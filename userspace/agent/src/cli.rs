//! The agent's command line: flags, then environment variables, then the --config file, then
//! the defaults; and what the rest of the agent takes from it.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use petrel_datapath::DatapathConfig;

use crate::{
    desired::Options,
    routing::{self, Settings},
};

#[derive(Parser, Debug)]
#[command(
    name = "petrel-agent",
    version,
    about = "petrel's node agent (replaces kube-proxy)"
)]
pub struct Cli {
    /// Configuration file (YAML; keys are the long flag names). Flags and environment variables
    /// win over it.
    #[arg(long, env = "PETREL_CONFIG")]
    pub config: Option<PathBuf>,
    /// Kubeconfig to use; in-cluster configuration when absent.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// This node's name (as in the Node object and EndpointSlice nodeName).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// Standalone mode: read Services, EndpointSlices and Nodes from the YAML files in this folder
    /// and follow changes to it, instead of watching an API server.
    #[arg(long)]
    pub manifests: Option<PathBuf>,
    /// This node's primary addresses (default: the Node's InternalIPs): the source of NodePort
    /// SNAT, what `--nodeport-addresses primary` serves on, and where health check node ports
    /// listen when given (default: 0.0.0.0).
    #[arg(long = "node-ip")]
    pub node_ips: Vec<Ipv4Addr>,
    /// Which local addresses serve NodePorts, as kube-proxy's flag: CIDRs (comma-separated or
    /// repeated; the local IPv4 addresses inside them), or `primary` (the node's primary
    /// addresses). Default: every local IPv4 address but loopback.
    #[arg(long = "nodeport-addresses", value_delimiter = ',')]
    pub nodeport_addresses: Vec<String>,
    /// bpffs folder holding the pinned maps and links.
    #[arg(long, default_value = "/sys/fs/bpf/petrel")]
    pub bpffs_root: PathBuf,
    /// cgroup v2 folder socket-level load balancing is attached to (default: the cgroup2 root).
    #[arg(long)]
    pub cgroup_root: Option<PathBuf>,
    /// Socket-level load balancing (connect/sendmsg translation, IPv4 and IPv4-mapped IPv6
    /// sockets); off: the TC path translates pods' traffic, and host processes' at egress of the
    /// external interfaces (see the README for what they then cannot reach).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub socket_lb: bool,
    /// Socket-LB translates only in the host's network namespace (Cilium's
    /// bpf-lb-sock-hostns-only); pods' connections are translated per packet by the TC path, so
    /// a service mesh's sidecar sees the service address as the original destination.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    pub socket_lb_hostns_only: bool,
    /// Interfaces traffic from outside the node arrives on (NodePort, externalIPs, LoadBalancer).
    #[arg(long = "external-interface")]
    pub external_interfaces: Vec<String>,
    /// Prefix of pod host-side veths to attach the TC program to (petrel-cni names them pet*).
    #[arg(long, default_value = petrel_cni::contract::HOST_IF_PREFIX)]
    pub pod_interface_prefix: String,
    /// How often pod interfaces are scanned for, besides the link notifications that wire a
    /// pod's veth as it appears (the scan is the safety net for lost notifications).
    #[arg(long, value_parser = humantime_ms, default_value = "10s")]
    pub pod_scan_period: Duration,
    /// Backend selection for external traffic: Maglev (same choice on every node) or random.
    #[arg(long, value_enum, default_value_t = Selection::Maglev)]
    pub external_selection: Selection,
    /// Maglev table size (a prime).
    #[arg(long, default_value_t = petrel_datapath::maglev::DEFAULT_SIZE)]
    pub maglev_size: u32,
    /// How many services can use Maglev at once.
    #[arg(long, default_value_t = 64)]
    pub maglev_rings: u32,
    /// Capacity of the SERVICES map (entries: one master per frontend and scope plus one per
    /// backend slot). Default 4Mi for a new map; unset, a pinned map keeps its size; set and
    /// different from the pinned map's, the agent refuses to start (see the README).
    #[arg(long)]
    pub services_map_size: Option<u32>,
    /// Capacity of the BACKENDS map (one entry per backend address, port and protocol).
    /// Default 2Mi for a new map; a pinned map as for --services-map-size.
    #[arg(long)]
    pub backends_map_size: Option<u32>,
    /// Capacity of the REV_NAT map (one entry per frontend). Default 512Ki for a new map; a
    /// pinned map as for --services-map-size.
    #[arg(long)]
    pub rev_nat_map_size: Option<u32>,
    /// Minimum time between syncs: bursts of changes are coalesced.
    #[arg(long, value_parser = humantime_ms, default_value = "100ms")]
    pub min_sync_period: Duration,
    /// Maximum time between syncs: a full resync happens at least this often.
    #[arg(long, value_parser = humantime_ms, default_value = "30s")]
    pub sync_period: Duration,
    /// Prometheus metrics address.
    #[arg(long, default_value = "127.0.0.1:10249")]
    pub metrics_bind_address: SocketAddr,
    /// Health check address (/healthz).
    #[arg(long, default_value = "0.0.0.0:10256")]
    pub healthz_bind_address: SocketAddr,
    /// Where the agent publishes what it programmed for netctl (service names per frontend).
    #[arg(long, default_value = "/run/petrel")]
    pub state_dir: PathBuf,
    /// Where to write the node's pod CIDR for petrel-cni (from the Node's spec.podCIDR).
    #[arg(long, default_value = petrel_cni::contract::DEFAULT_POD_CIDR_FILE)]
    pub pod_cidr_file: PathBuf,
    /// The CNI conflist to write once the pod CIDR is known ("" to leave CNI config alone).
    #[arg(long, default_value = "/etc/cni/net.d/05-petrel.conflist", value_parser = path_or_empty())]
    pub cni_conf_file: PathBuf,
    /// Another CNI config in the conflist's folder that sorts before petrel's (the runtime takes
    /// the first by name): off, petrel reports it (error log, `petrel_cni_config_shadowed`,
    /// /healthz 503 so the agent pod is not Ready) and leaves it; on, petrel renames it to
    /// `<name>.petrel_bak` (never read by runtimes; not restored on uninstall), as Cilium's
    /// --cni-exclusive.
    #[arg(long)]
    pub cni_exclusive: bool,
    /// The `cniVersion` of the written conflist. 1.0.0 is what containerd 1.6, CRI-O and the
    /// reference plugins read; 1.1.0 (STATUS, GC) needs containerd 2.0 or a libcni 1.2 runtime.
    #[arg(long, default_value = petrel_cni::contract::CONFLIST_CNI_VERSION,
          value_parser = clap::builder::PossibleValuesParser::new(petrel_cni::contract::CONFLIST_CNI_VERSIONS))]
    pub cni_version: String,
    /// MTU petrel-cni gives pod interfaces (in the written conflist); default: the uplink's MTU,
    /// less 50 bytes in VXLAN mode.
    #[arg(long)]
    pub pod_mtu: Option<u32>,
    /// How pods reach other nodes' pods: routes via each node's InternalIP (`native`, nodes on one
    /// L2 segment), a VXLAN overlay (`vxlan`), or none (another component routes).
    #[arg(long, value_enum, default_value_t = Routing::Native)]
    pub routing: Routing,
    /// VXLAN network identifier (overlay mode).
    #[arg(long, default_value_t = 1)]
    pub vxlan_vni: u32,
    /// VXLAN UDP port (overlay mode; 8472 as the Linux kernel, flannel and Cilium use it).
    #[arg(long, default_value_t = 8472)]
    pub vxlan_port: u16,
    /// The cluster's pod address range: pod egress to addresses outside it is masqueraded to the
    /// node address.
    #[arg(long, default_value = "10.244.0.0/16")]
    pub cluster_cidr: ipnet::Ipv4Net,
    /// Masquerade pod egress that leaves the cluster CIDR.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub masquerade: bool,
    /// Connections the conntrack map holds (two entries each): default max(32768 x online
    /// CPUs, 131072), kube-proxy's nf_conntrack_max. Preallocated (about 100 bytes per
    /// connection); a full map refuses new connections, never evicts tracked ones. Takes effect
    /// when the map is created: a map adopted from its pin keeps its size.
    #[arg(long)]
    pub ct_max_flows: Option<u32>,
    /// How long an established TCP connection is tracked after its last packet.
    #[arg(long, value_parser = humantime_ms, default_value = "6h")]
    pub ct_tcp_established_timeout: Duration,
    /// How long a TCP connection still in its handshake is tracked after its last packet.
    #[arg(long, value_parser = humantime_ms, default_value = "60s")]
    pub ct_tcp_syn_timeout: Duration,
    /// How long a TCP connection is tracked after a RST (and, when the map is 90% full, after a
    /// FIN: see --ct-tcp-time-wait-timeout).
    #[arg(long, value_parser = humantime_ms, default_value = "10s")]
    pub ct_tcp_closing_timeout: Duration,
    /// How long a TCP connection is tracked after a FIN: as long as the end that closed first
    /// holds the tuple in TIME_WAIT (Linux: 60 s), so a new connection translated onto the same
    /// tuple gets another source port instead of being refused there (PAWS).
    #[arg(long, value_parser = humantime_ms, default_value = "60s")]
    pub ct_tcp_time_wait_timeout: Duration,
    /// How long a UDP or ICMP flow is tracked after its last packet.
    #[arg(long, value_parser = humantime_ms, default_value = "60s")]
    pub ct_other_timeout: Duration,
    /// The longest time between two conntrack garbage collection sweeps (the interval adapts
    /// between 5 s and this: shorter while the map fills, longer while idle).
    #[arg(long, value_parser = humantime_ms, default_value = "5m")]
    pub ct_gc_interval: Duration,
    /// Source ports petrel rewrites to (NodePort SNAT, masquerade, clash remapping), MIN-MAX.
    /// Keep it outside net.ipv4.ip_local_port_range (the agent warns when they overlap): host
    /// sockets would otherwise take ports petrel hands out.
    #[arg(long, value_parser = port_range, default_value = "61000-65535")]
    pub nat_port_range: PortRange,
    /// The node port range of the cluster (kube-apiserver's --service-node-port-range):
    /// nodePorts of manifests outside it are refused (standalone mode; an API server checks its
    /// own).
    #[arg(long, value_parser = node_port_range, default_value = "30000-32767")]
    pub service_node_port_range: PortRange,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Where the host's /proc/sys/net is (a container sees a read-only /proc/sys; mount the
    /// host's elsewhere and name it here).
    #[arg(long, default_value = "/proc/sys/net")]
    pub proc_sys_net: PathBuf,
    /// Remove everything petrel installed (pinned maps and links, hence every attached program)
    /// and exit: for uninstalling.
    #[arg(long)]
    pub cleanup: bool,
    /// Copy the petrel-cni binary next to this one into --cni-bin-dir (atomically: a temporary
    /// file renamed into place) and exit: the DaemonSet's init container.
    #[arg(long)]
    pub install_cni: bool,
    /// The DaemonSet this agent runs in, NAMESPACE/NAME. When it is deleted (uninstall:
    /// `kubectl delete -k deploy/`), the agent that stops removes what petrel put on the node:
    /// the pins (so every program), routes, the overlay device, the CNI conflist and the pod CIDR
    /// file. While it exists (restarts, rolling updates) everything stays. Unset: never.
    #[arg(long, env = "PETREL_OWNER_DAEMONSET")]
    pub owner_daemonset: Option<crate::uninstall::Owner>,
    /// Where container runtimes look for CNI plugins.
    #[arg(long, default_value = "/opt/cni/bin")]
    pub cni_bin_dir: PathBuf,
}

impl Cli {
    /// Flags, then environment variables, then the --config file, then the defaults.
    pub fn load() -> anyhow::Result<Cli> {
        use crate::config_file::{self, Kind};
        use clap::{ArgAction, CommandFactory as _, FromArgMatches as _, parser::ValueSource};
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
pub enum Selection {
    Maglev,
    Random,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Routing {
    Native,
    Vxlan,
    None,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// "100ms", "2s", "1m", "6h" -> Duration.
fn humantime_ms(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, "s"), |i| s.split_at(i));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("bad duration {s:?} (e.g. 100ms, 2s, 1m, 6h)"))?;
    let secs = |mult: u64| {
        n.checked_mul(mult)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("duration {s:?} is too long"))
    };
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        _ => Err(format!("bad duration unit in {s:?} (ms, s, m or h)")),
    }
}

/// A path where "" is allowed (clap's own path parser refuses an empty value): "" means
/// "leave this alone".
fn path_or_empty() -> impl clap::builder::TypedValueParser<Value = PathBuf> {
    use clap::builder::TypedValueParser as _;
    clap::builder::OsStringValueParser::new().map(PathBuf::from)
}

/// An inclusive port range, MIN-MAX.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub min: u16,
    pub max: u16,
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.min, self.max)
    }
}

impl PortRange {
    /// The ports both ranges hold, if any.
    pub fn overlap(self, other: PortRange) -> Option<PortRange> {
        let (min, max) = (self.min.max(other.min), self.max.min(other.max));
        (min <= max).then_some(PortRange { min, max })
    }
}

/// "61000-65535" -> PortRange: ports 1024..=65535, MIN <= MAX.
fn port_range(s: &str) -> Result<PortRange, String> {
    let bad = || format!("bad port range {s:?}: want MIN-MAX, e.g. 61000-65535");
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let min: u16 = a.trim().parse().map_err(|_| bad())?;
    let max: u16 = b.trim().parse().map_err(|_| bad())?;
    if min < 1024 {
        return Err(format!(
            "port range {s:?} starts below 1024 (privileged ports belong to host services)"
        ));
    }
    if min > max {
        return Err(format!("port range {s:?}: MIN is above MAX"));
    }
    Ok(PortRange { min, max })
}

/// "30000-32767" -> PortRange: ports 1..=65535, MIN <= MAX (kube-apiserver's
/// --service-node-port-range, which takes any range).
fn node_port_range(s: &str) -> Result<PortRange, String> {
    let bad = || format!("bad port range {s:?}: want MIN-MAX within 1-65535, e.g. 30000-32767");
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let min: u16 = a.trim().parse().map_err(|_| bad())?;
    let max: u16 = b.trim().parse().map_err(|_| bad())?;
    if min == 0 || min > max {
        return Err(bad());
    }
    Ok(PortRange { min, max })
}

/// The conntrack settings, range-checked (`Cli::conntrack`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conntrack {
    pub max_flows: u32,
    pub lifetimes: petrel_common::CtLifetimes,
    pub gc_interval: Duration,
    pub nat_ports: PortRange,
}

/// kube-proxy's conntrack default: max(32768 x online CPUs, 131072) connections.
pub fn default_ct_max_flows() -> u32 {
    // SAFETY: sysconf has no preconditions.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1);
    let cpus = u32::try_from(cpus).unwrap_or(u32::MAX);
    cpus.saturating_mul(32_768).max(131_072)
}

/// Bounds of --ct-max-flows: below, a handful of clients fill the map; above, the preallocated
/// map (two entries per connection) takes gigabytes.
const CT_MAX_FLOWS: std::ops::RangeInclusive<u32> = 1024..=8 * 1024 * 1024;

/// Defaults for new maps: 100,000 NodePort services x 10 endpoints on two node addresses fit
/// (the arithmetic is in the README's capacity section).
pub const DEFAULT_SERVICES_MAP_SIZE: u32 = 4 * 1024 * 1024;
pub const DEFAULT_BACKENDS_MAP_SIZE: u32 = 2 * 1024 * 1024;
pub const DEFAULT_REV_NAT_MAP_SIZE: u32 = 512 * 1024;

/// The capacities the service maps have (or get, when created by this load).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapCapacities {
    pub services: u32,
    pub backends: u32,
    pub rev_nat: u32,
}

/// Bounds of --services-map-size, --backends-map-size and --rev-nat-map-size (entries).
const SERVICES_MAP_SIZE: std::ops::RangeInclusive<u32> = 1..=64 * 1024 * 1024;
/// Bounds of --maglev-size (Cilium's smallest and largest table sizes).
const MAGLEV_SIZE: std::ops::RangeInclusive<u32> = 251..=131_071;
const MAGLEV_RINGS: std::ops::RangeInclusive<u32> = 1..=65_536;
/// The Maglev map holds size x rings u32 entries: at most 256 MiB of them.
const MAGLEV_ENTRIES: u64 = 64 * 1024 * 1024;

/// A duration as the flags write it.
fn show(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// `d` in whole seconds within `range` (both in seconds), or why not.
fn seconds(flag: &str, d: Duration, range: std::ops::RangeInclusive<u64>) -> anyhow::Result<u32> {
    if d.subsec_nanos() != 0 {
        anyhow::bail!("--{flag} {d:?}: conntrack works in whole seconds");
    }
    let s = d.as_secs();
    if !range.contains(&s) {
        anyhow::bail!(
            "--{flag} {s}s is out of range: between {}s and {}s",
            range.start(),
            range.end()
        );
    }
    Ok(s as u32)
}

impl Cli {
    /// The conntrack flags, checked: every lifetime and the GC interval within its range, in
    /// whole seconds, the map size within `CT_MAX_FLOWS`. Called before the datapath is loaded,
    /// so a bad value changes nothing.
    pub fn conntrack(&self) -> anyhow::Result<Conntrack> {
        const MINUTE: u64 = 60;
        const DAY: u64 = 24 * 3600;
        let max_flows = self.ct_max_flows.unwrap_or_else(default_ct_max_flows);
        if !CT_MAX_FLOWS.contains(&max_flows) {
            anyhow::bail!(
                "--ct-max-flows {max_flows} is out of range: between {} and {}",
                CT_MAX_FLOWS.start(),
                CT_MAX_FLOWS.end()
            );
        }
        let lifetimes = petrel_common::CtLifetimes {
            tcp_established: seconds(
                "ct-tcp-established-timeout",
                self.ct_tcp_established_timeout,
                MINUTE..=30 * DAY,
            )?,
            tcp_syn: seconds(
                "ct-tcp-syn-timeout",
                self.ct_tcp_syn_timeout,
                1..=10 * MINUTE,
            )?,
            tcp_closing: seconds(
                "ct-tcp-closing-timeout",
                self.ct_tcp_closing_timeout,
                1..=10 * MINUTE,
            )?,
            tcp_time_wait: seconds(
                "ct-tcp-time-wait-timeout",
                self.ct_tcp_time_wait_timeout,
                1..=10 * MINUTE,
            )?,
            other: seconds("ct-other-timeout", self.ct_other_timeout, 1..=DAY)?,
        };
        let gc = seconds("ct-gc-interval", self.ct_gc_interval, 1..=3600)?;
        Ok(Conntrack {
            max_flows,
            lifetimes,
            gc_interval: Duration::from_secs(u64::from(gc)),
            nat_ports: self.nat_port_range,
        })
    }

    /// Every value with a range, checked before anything is loaded or written (a bad value
    /// changes nothing): the sync periods, the conntrack settings (`conntrack`), the map sizes,
    /// the Maglev table, the overlay's VNI and port, the pod MTU. The --config file's values go
    /// through here too (they become arguments).
    pub fn check(&self) -> anyhow::Result<()> {
        const HOUR: Duration = Duration::from_secs(3600);
        let within = |flag: &str, d: Duration, min: Duration, max: Duration| {
            if d < min || d > max {
                anyhow::bail!(
                    "--{flag} {} is out of range: between {} and {}",
                    show(d),
                    show(min),
                    show(max)
                );
            }
            Ok(())
        };
        within(
            "sync-period",
            self.sync_period,
            Duration::from_secs(1),
            HOUR,
        )?;
        within(
            "min-sync-period",
            self.min_sync_period,
            Duration::ZERO,
            self.sync_period.min(HOUR),
        )?;
        self.conntrack()?;
        let count = |flag: &str, n: u32, range: std::ops::RangeInclusive<u32>| {
            if !range.contains(&n) {
                anyhow::bail!(
                    "--{flag} {n} is out of range: between {} and {}",
                    range.start(),
                    range.end()
                );
            }
            Ok(())
        };
        for (flag, n) in [
            ("services-map-size", self.services_map_size),
            ("backends-map-size", self.backends_map_size),
            ("rev-nat-map-size", self.rev_nat_map_size),
        ] {
            if let Some(n) = n {
                count(flag, n, SERVICES_MAP_SIZE)?;
            }
        }
        count("maglev-size", self.maglev_size, MAGLEV_SIZE)?;
        if !petrel_datapath::maglev::is_prime(self.maglev_size) {
            anyhow::bail!(
                "--maglev-size {} is not prime (e.g. 251, 1021, 4093, 16381, 65521, 131071)",
                self.maglev_size
            );
        }
        count("maglev-rings", self.maglev_rings, MAGLEV_RINGS)?;
        let ring_entries = u64::from(self.maglev_size) * u64::from(self.maglev_rings);
        if ring_entries > MAGLEV_ENTRIES {
            anyhow::bail!(
                "--maglev-size {} x --maglev-rings {} = {ring_entries} ring entries: at most {MAGLEV_ENTRIES} (4 bytes each)",
                self.maglev_size,
                self.maglev_rings
            );
        }
        count("vxlan-vni", self.vxlan_vni, 1..=(1 << 24) - 1)?;
        if self.vxlan_port == 0 {
            anyhow::bail!("--vxlan-port 0 is out of range: between 1 and 65535");
        }
        if let Some(mtu) = self.pod_mtu {
            // petrel-cni's own bounds for the conflist's mtu.
            count("pod-mtu", mtu, 576..=65535)?;
        }
        within(
            "pod-scan-period",
            self.pod_scan_period,
            Duration::from_millis(100),
            24 * HOUR,
        )?;
        self.nodeport_addresses()?;
        Ok(())
    }

    /// The service maps' capacities: each flag's value, or the size of the map already pinned
    /// (a pinned map keeps its size), or the default for a new map. A flag that asks another
    /// size than the pinned map's is refused, naming the flag, the pin and both sizes; so is a
    /// Maglev map pinned with another size x rings. Read before anything is loaded.
    pub fn map_capacities(&self) -> anyhow::Result<MapCapacities> {
        use petrel_datapath::maps::{BACKENDS, MAGLEV, REV_NAT, SERVICES};
        let root = &self.bpffs_root;
        let size = |name: &str, flag: &str, asked: Option<u32>, default: u32| {
            let pinned = petrel_datapath::pinned_capacity(root, name)?;
            Ok::<u32, anyhow::Error>(match (pinned, asked) {
                (Some(p), Some(a)) if p != a => anyhow::bail!(
                    "--{flag} {a}: the map {name} pinned at {} holds {p} entries, and a pinned map keeps its size; pass --{flag} {p} (or leave it unset) to keep it, or remove that pin while the agent is stopped to have it created anew with {a} entries (established connections to services then lose their reverse NAT)",
                    root.join("maps").join(name).display()
                ),
                (Some(p), _) => {
                    if p != default && asked.is_none() {
                        tracing::info!(
                            map = name,
                            entries = p,
                            new_map_default = default,
                            "the pinned map keeps its size (--{flag} unset)"
                        );
                    }
                    p
                }
                (None, a) => a.unwrap_or(default),
            })
        };
        let caps = MapCapacities {
            services: size(
                SERVICES,
                "services-map-size",
                self.services_map_size,
                DEFAULT_SERVICES_MAP_SIZE,
            )?,
            backends: size(
                BACKENDS,
                "backends-map-size",
                self.backends_map_size,
                DEFAULT_BACKENDS_MAP_SIZE,
            )?,
            rev_nat: size(
                REV_NAT,
                "rev-nat-map-size",
                self.rev_nat_map_size,
                DEFAULT_REV_NAT_MAP_SIZE,
            )?,
        };
        let want = self.maglev_size.saturating_mul(self.maglev_rings);
        if let Some(p) = petrel_datapath::pinned_capacity(root, MAGLEV)?
            && p != want
        {
            anyhow::bail!(
                "--maglev-size {} x --maglev-rings {} = {want} positions: the map {MAGLEV} pinned at {} holds {p}, and a pinned map keeps its size; pass the values it was created with, or remove that pin while the agent is stopped (it is rebuilt at the first sync)",
                self.maglev_size,
                self.maglev_rings,
                root.join("maps").join(MAGLEV).display()
            );
        }
        Ok(caps)
    }

    /// What the datapath is loaded with (`caps`: from `map_capacities`).
    pub fn datapath_config(&self, caps: &MapCapacities) -> DatapathConfig {
        let flows = self.ct_max_flows.unwrap_or_else(default_ct_max_flows);
        DatapathConfig {
            bpffs_root: self.bpffs_root.clone(),
            max_entries: vec![
                (petrel_datapath::maps::SERVICES, caps.services),
                (petrel_datapath::maps::BACKENDS, caps.backends),
                (petrel_datapath::maps::REV_NAT, caps.rev_nat),
                (petrel_datapath::maps::CONNTRACK, flows.saturating_mul(2)),
            ],
            maglev_size: self.maglev_size,
            maglev_rings: self.maglev_rings,
        }
    }

    /// How this node routes to other nodes' pods.
    pub fn route_settings(&self) -> Settings {
        Settings {
            mode: match self.routing {
                Routing::Native => Some(routing::Mode::Native),
                Routing::Vxlan => Some(routing::Mode::Vxlan {
                    vni: self.vxlan_vni,
                    port: self.vxlan_port,
                }),
                Routing::None => None,
            },
            pod_mtu: self.pod_mtu,
            proc_sys_net: self.proc_sys_net.clone(),
            sync_period: self.sync_period,
            external_interfaces: self.external_interfaces.clone(),
        }
    }

    /// `--nodeport-addresses`, parsed.
    pub fn nodeport_addresses(&self) -> anyhow::Result<crate::nodeport::NodePortAddresses> {
        crate::nodeport::NodePortAddresses::parse(&self.nodeport_addresses)
            .map_err(anyhow::Error::msg)
    }

    /// The options that change the desired state.
    pub fn options(&self) -> Options {
        Options {
            maglev: self.external_selection == Selection::Maglev,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        let mut all = vec!["petrel-agent"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).expect("parses")
    }

    #[test]
    fn conntrack_defaults_are_ciliums_lifetimes_and_kube_proxys_size() {
        let c = cli(&[]).conntrack().expect("defaults are valid");
        assert_eq!(c.lifetimes, petrel_common::CtLifetimes::DEFAULT);
        assert_eq!(c.gc_interval, Duration::from_secs(300));
        assert_eq!(
            c.nat_ports,
            PortRange {
                min: 61000,
                max: 65535
            }
        );
        assert!(c.max_flows >= 131_072 && c.max_flows.is_multiple_of(32_768));
        let caps = MapCapacities {
            services: 1,
            backends: 1,
            rev_nat: 1,
        };
        let dp = cli(&["--ct-max-flows", "200000"]).datapath_config(&caps);
        assert!(
            dp.max_entries
                .contains(&(petrel_datapath::maps::CONNTRACK, 400_000))
        );
    }

    #[test]
    fn conntrack_flags_out_of_range_are_refused_with_the_flag_and_the_range() {
        let c = cli(&[
            "--ct-tcp-established-timeout",
            "2h",
            "--ct-other-timeout",
            "30s",
        ])
        .conntrack()
        .expect("valid");
        assert_eq!((c.lifetimes.tcp_established, c.lifetimes.other), (7200, 30));
        let cases: [(&[&str], &str); 6] = [
            (
                &["--ct-tcp-syn-timeout", "0s"],
                "--ct-tcp-syn-timeout 0s is out of range: between 1s and 600s",
            ),
            (
                &["--ct-tcp-established-timeout", "1000h"],
                "--ct-tcp-established-timeout 3600000s is out of range",
            ),
            (&["--ct-tcp-closing-timeout", "1500ms"], "whole seconds"),
            (&["--ct-gc-interval", "2h"], "--ct-gc-interval 7200s"),
            (&["--ct-other-timeout", "2000m"], "--ct-other-timeout"),
            (
                &["--ct-max-flows", "10"],
                "--ct-max-flows 10 is out of range",
            ),
        ];
        for (args, want) in cases {
            let e = cli(args).conntrack().expect_err(want).to_string();
            assert!(e.contains(want), "{args:?}: {e}");
        }
    }

    #[test]
    fn out_of_range_settings_are_refused_with_the_flag_and_the_range() {
        cli(&[]).check().expect("the defaults are valid");
        let cases: [(&[&str], &str); 13] = [
            (
                &["--sync-period", "0s"],
                "--sync-period 0s is out of range: between 1s and 3600s",
            ),
            (
                &["--sync-period", "2h"],
                "--sync-period 7200s is out of range",
            ),
            (
                &["--sync-period", "18446744073709551615ms"],
                "--sync-period",
            ),
            (
                &["--min-sync-period", "1m", "--sync-period", "30s"],
                "--min-sync-period 60s is out of range: between 0s and 30s",
            ),
            (&["--ct-gc-interval", "0s"], "--ct-gc-interval 0s"),
            (&["--ct-max-flows", "4294967295"], "--ct-max-flows"),
            (
                &["--services-map-size", "0"],
                "--services-map-size 0 is out of range",
            ),
            (
                &["--maglev-size", "16383"],
                "--maglev-size 16383 is not prime",
            ),
            (&["--maglev-size", "7"], "--maglev-size 7 is out of range"),
            (&["--maglev-rings", "0"], "--maglev-rings 0 is out of range"),
            (
                &["--maglev-size", "131071", "--maglev-rings", "65536"],
                "ring entries",
            ),
            (
                &["--vxlan-vni", "16777216"],
                "--vxlan-vni 16777216 is out of range",
            ),
            (
                &["--pod-mtu", "100"],
                "--pod-mtu 100 is out of range: between 576 and 65535",
            ),
        ];
        for (args, want) in cases {
            let e = cli(args).check().expect_err(want).to_string();
            assert!(e.contains(want), "{args:?}: {e}");
        }
        let e = cli(&["--vxlan-port", "0"]).check().expect_err("port 0");
        assert!(
            e.to_string().contains("--vxlan-port 0 is out of range"),
            "{e}"
        );
        for bad in ["0-100", "32767-30000", "30000"] {
            let parsed = Cli::try_parse_from(["petrel-agent", "--service-node-port-range", bad]);
            let e = parsed.expect_err(bad).to_string();
            assert!(e.contains("bad port range"), "{bad}: {e}");
        }
    }

    #[test]
    fn an_empty_cni_conf_file_means_leave_cni_config_alone() {
        let c = cli(&["--cni-conf-file", ""]);
        assert!(c.cni_conf_file.as_os_str().is_empty());
        c.check().expect("valid");
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("config.yaml");
        std::fs::write(&file, "cni-conf-file: \"\"\nsync-period: 0s\n").expect("write");
        let flags = [
            (
                "cni-conf-file".to_string(),
                crate::config_file::Kind::Single,
            ),
            ("sync-period".to_string(), crate::config_file::Kind::Single),
        ];
        let args = crate::config_file::read_args(&file, &flags, |_| false).expect("reads");
        let mut all = vec!["petrel-agent".to_string()];
        all.extend(args);
        let c = Cli::try_parse_from(all).expect("parses");
        assert!(c.cni_conf_file.as_os_str().is_empty());
        let e = c.check().expect_err("0s from the file").to_string();
        assert!(e.contains("--sync-period 0s is out of range"), "{e}");
    }

    #[test]
    fn port_ranges_parse_and_overlap() {
        assert_eq!(
            port_range("40000-40100"),
            Ok(PortRange {
                min: 40000,
                max: 40100
            })
        );
        for bad in ["61000", "a-b", "100-2000", "6000-5000", "61000-70000"] {
            assert!(port_range(bad).is_err(), "{bad}");
        }
        let r = |min, max| PortRange { min, max };
        assert_eq!(r(61000, 65535).overlap(r(32768, 60999)), None);
        assert_eq!(
            r(50000, 65535).overlap(r(32768, 60999)),
            Some(r(50000, 60999))
        );
        assert_eq!(humantime_ms("6h"), Ok(Duration::from_secs(21600)));
    }
}
