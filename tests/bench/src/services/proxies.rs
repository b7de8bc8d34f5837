//! The two proxies under test, petrel-agent and kube-proxy (iptables), and how each is started,
//! stopped and cleaned so the next start syncs from nothing.

use std::{path::PathBuf, process::Command};

use petrel_testbed::{BpffsRoot, agent::Agent, apiserver::bin_dir, cgroup::Cgroup, workspace_bin};

use super::{
    CLUSTER_CIDR, KUBE_PROXY_NODE, PETREL_NODE,
    topology::{Node, Proc},
};

/// The two proxies under test and what they need to run.
pub(super) struct Proxies {
    pub(super) kubeconfig: PathBuf,
    pub(super) pins: BpffsRoot,
    pub(super) cgroup: Cgroup,
    pub(super) files: tempfile::TempDir,
    pub(super) petrel: Option<Agent>,
    pub(super) kube_proxy: Option<Proc>,
    pub(super) xtables: tempfile::TempDir,
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
pub(super) fn xtables_dir(mode: Xtables) -> tempfile::TempDir {
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
    pub(super) fn iptables_rules(&self, node: &Node) -> Vec<String> {
        let save = self.xtables.path().join("iptables-save");
        let out = node.ns.exec(&save.display().to_string(), &[]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("-A "))
            .map(str::to_string)
            .collect()
    }

    pub(super) fn petrel_args(&self) -> Vec<String> {
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
    pub(super) fn stop_petrel(&mut self, node: &Node) {
        if self.petrel.take().is_some() {
            let bin = workspace_bin("petrel-agent", "PETREL_AGENT_BIN");
            let pins = format!("--bpffs-root={}", self.pins.path().display());
            node.ns
                .exec(&bin.display().to_string(), &["--cleanup", &pins]);
        }
    }

    pub(super) fn kube_proxy_proc(&self, node: &Node) -> Proc {
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
    pub(super) fn stop_kube_proxy(&mut self, node: &Node) {
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
