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
    /// Addresses NodePorts are served on (default: the Node's InternalIPs).
    #[arg(long = "node-ip")]
    pub node_ips: Vec<Ipv4Addr>,
    /// bpffs folder holding the pinned maps and links.
    #[arg(long, default_value = "/sys/fs/bpf/petrel")]
    pub bpffs_root: PathBuf,
    /// cgroup v2 folder socket-level load balancing is attached to (default: the cgroup2 root).
    #[arg(long)]
    pub cgroup_root: Option<PathBuf>,
    /// Socket-level load balancing (connect/sendmsg translation); off: the TC path does it all.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub socket_lb: bool,
    /// Interfaces traffic from outside the node arrives on (NodePort, externalIPs, LoadBalancer).
    #[arg(long = "external-interface")]
    pub external_interfaces: Vec<String>,
    /// Prefix of pod host-side veths to attach the TC program to (petrel-cni names them pet*).
    #[arg(long, default_value = petrel_cni::contract::HOST_IF_PREFIX)]
    pub pod_interface_prefix: String,
    /// Backend selection for external traffic: Maglev (same choice on every node) or random.
    #[arg(long, value_enum, default_value_t = Selection::Maglev)]
    pub external_selection: Selection,
    /// Maglev table size (a prime).
    #[arg(long, default_value_t = petrel_datapath::maglev::DEFAULT_SIZE)]
    pub maglev_size: u32,
    /// How many services can use Maglev at once.
    #[arg(long, default_value_t = 64)]
    pub maglev_rings: u32,
    /// Capacity of the services map (entries: one per frontend plus one per backend slot).
    #[arg(long, default_value_t = 2 * 1024 * 1024)]
    pub services_map_size: u32,
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
    #[arg(long, default_value = "/etc/cni/net.d/05-petrel.conflist")]
    pub cni_conf_file: PathBuf,
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

impl Cli {
    /// What the datapath is loaded with.
    pub fn datapath_config(&self) -> DatapathConfig {
        DatapathConfig {
            bpffs_root: self.bpffs_root.clone(),
            max_entries: vec![(petrel_datapath::maps::SERVICES, self.services_map_size)],
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

    /// The options that change the desired state.
    pub fn options(&self) -> Options {
        Options {
            maglev: self.external_selection == Selection::Maglev,
        }
    }
}
