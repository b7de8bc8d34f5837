//! What petrel-cni needs from the agent: the node's pod CIDR (from the Node's `spec.podCIDR(s)`)
//! in the file the plugin reads when its config has no `podCIDR`, and the CNI conflist that makes
//! the container runtime call petrel-cni. Both written atomically, only when they change.
//!
//! A runtime reads only the first CNI config of its folder by name (libcni sorts the `.conf`,
//! `.conflist` and `.json` files; containerd's `max_conf_num = 1`, CRI-O, kubelet's dockershim).
//! Another network's config sorting before petrel's would silently give every new pod that
//! network: at every sync the agent looks, and either reports it (error log, gauge
//! `petrel_cni_config_shadowed`, /healthz 503 so its pod is not Ready and a rollout stops there)
//! or, with --cni-exclusive, renames it to `<name>.petrel_bak` (as Cilium's `.cilium_bak`).

use std::{
    io,
    path::{Path, PathBuf},
    sync::Arc,
};

use k8s_openapi::api::core::v1::Node;
use petrel_cni::contract;

use crate::node;

/// The files the agent writes for petrel-cni.
pub struct CniFiles {
    pub pod_cidr_file: PathBuf,
    /// Empty: the CNI configuration is left alone.
    pub conf_file: PathBuf,
    /// The conflist's `cniVersion` (one of `contract::CONFLIST_CNI_VERSIONS`).
    pub cni_version: String,
    /// The agent's bpffs root: petrel-cni attaches the pod programs pinned there at ADD.
    pub bpffs_root: PathBuf,
    /// The pod CIDR problem logged last (logged again only when it changes).
    pub refused: std::sync::Mutex<Option<String>>,
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
    /// Rename other configs that sort before petrel's (--cni-exclusive) instead of reporting.
    pub exclusive: bool,
    /// The other configs reported last (logged again only when they change).
    pub shadowing: std::sync::Mutex<Vec<String>>,
    pub health: Option<Arc<crate::health::ProxierHealth>>,
}

impl CniFiles {
    /// Keeps petrel-cni's pod CIDR file and the conflist in line with Node `name`'s podCIDR.
    /// The conflist waits for the MTU (known once the uplink is found): pods made with a wrong
    /// one would keep it.
    pub fn write(&self, nodes: &[Arc<Node>], name: &str, pod_mtu: Option<u32>) {
        let Some(cidrs) = self.usable_pod_cidrs(nodes, name) else {
            return;
        };
        let file = &self.pod_cidr_file;
        // One range per line, in the Node's order: a single-stack node's file is what it always
        // was ("10.244.1.0/24\n").
        let text: String = cidrs.iter().map(|c| format!("{c}\n")).collect();
        let cidr = cidrs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        match write_if_changed(file, &text) {
            Ok(true) => {
                tracing::info!(%cidr, file = %file.display(), "pod CIDR written for petrel-cni")
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(file = %file.display(), error = %e, "cannot write the pod CIDR")
            }
        }
        let Some(mtu) = pod_mtu else { return };
        if self.conf_file.as_os_str().is_empty() {
            return;
        }
        self.guard_conf_dir();
        let file = &self.conf_file;
        match write_if_changed(
            file,
            &contract::conflist_text_of(
                contract::PluginConf::for_agent(&self.pod_cidr_file, mtu)
                    .with_bpffs_root(&self.bpffs_root),
                &self.cni_version,
            ),
        ) {
            Ok(true) => tracing::info!(file = %file.display(), "CNI conflist written"),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(file = %file.display(), error = %e, "cannot write the CNI conflist")
            }
        }
    }
}

impl CniFiles {
    /// Other configs that would win over petrel's: renamed aside (`exclusive`) or reported.
    fn guard_conf_dir(&self) {
        let found = match shadowing_configs(&self.conf_file) {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(file = %self.conf_file.display(), error = %e, "cannot list the CNI config folder");
                return;
            }
        };
        let mut left = vec![];
        for path in found {
            if !self.exclusive {
                left.push(path);
                continue;
            }
            let mut aside = path.clone().into_os_string();
            aside.push(BACKUP_SUFFIX);
            match std::fs::rename(&path, &aside) {
                Ok(()) => tracing::warn!(
                    file = %path.display(),
                    moved_to = %Path::new(&aside).display(),
                    petrel = %self.conf_file.display(),
                    "another CNI config sorted before petrel's: renamed aside (--cni-exclusive)"
                ),
                Err(e) => {
                    tracing::error!(file = %path.display(), error = %e, "cannot rename another CNI config aside");
                    left.push(path);
                }
            }
        }
        let names: Vec<String> = left.iter().map(|p| p.display().to_string()).collect();
        if let Some(m) = &self.metrics {
            m.cni_config_shadowed
                .set(i64::try_from(names.len()).unwrap_or(i64::MAX));
        }
        if let Some(h) = &self.health {
            h.set_cni_shadowed(!names.is_empty());
        }
        let mut last = self
            .shadowing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *last != names {
            if names.is_empty() {
                tracing::info!(file = %self.conf_file.display(), "no other CNI config sorts before petrel's any more");
            } else {
                tracing::error!(
                    files = names.join(" "),
                    petrel = %self.conf_file.display(),
                    "another CNI config sorts before petrel's: the container runtime gives new pods that network, not petrel's. This agent reports not ready (/healthz 503) until it is gone: remove it, or set cni-exclusive to have petrel rename it to <name>.petrel_bak"
                );
            }
        }
        *last = names;
    }

    /// The Node's pod CIDRs (one per family, `node::pod_cidrs`) when petrel-cni can use them.
    /// One it cannot (`node::pod_cidr_problem`, `node::pod_cidr6_problem`) is logged once per
    /// change, raises `petrel_pod_cidr_refused`, and nothing is written: the file keeps what it
    /// had, so petrel-cni never gets a range that fails every ADD.
    fn usable_pod_cidrs(&self, nodes: &[Arc<Node>], name: &str) -> Option<Vec<ipnet::IpNet>> {
        let cidrs = node::find(nodes, name)
            .map(node::pod_cidrs)
            .unwrap_or_default();
        let problem = cidrs.iter().find_map(|c| match c {
            ipnet::IpNet::V4(c) => node::pod_cidr_problem(*c),
            ipnet::IpNet::V6(c) => node::pod_cidr6_problem(*c),
        });
        let mut last = self
            .refused
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(m) = &self.metrics {
            m.pod_cidr_refused.set(i64::from(problem.is_some()));
        }
        if problem.is_some() && *last != problem {
            tracing::error!(
                node = name,
                reason = problem.as_deref().unwrap_or_default(),
                file = %self.pod_cidr_file.display(),
                "the Node's podCIDR is refused: petrel-cni cannot use it, so it is not written for petrel-cni (fix spec.podCIDR; no Event is posted: petrel's ClusterRole is read-only)"
            );
        }
        *last = problem.clone();
        (!cidrs.is_empty() && problem.is_none()).then_some(cidrs)
    }
}

/// What --cni-exclusive appends to the name of a config it moves aside.
pub const BACKUP_SUFFIX: &str = ".petrel_bak";

/// The other CNI configs in `conf_file`'s folder that a runtime takes before it: libcni's
/// (`ConfFiles`) files ending in .conf, .conflist or .json, not folders, sorting by name (bytes)
/// before `conf_file`'s. A folder that does not exist yet holds none.
pub fn shadowing_configs(conf_file: &Path) -> io::Result<Vec<PathBuf>> {
    let (Some(dir), Some(own)) = (conf_file.parent(), conf_file.file_name()) else {
        return Ok(vec![]);
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(e),
    };
    let mut found = vec![];
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        let is_config = path
            .extension()
            .is_some_and(|x| ["conf", "conflist", "json"].iter().any(|e| x == *e));
        if is_config
            && entry.file_name().as_encoded_bytes() < own.as_encoded_bytes()
            && !path.is_dir()
        {
            found.push(path);
        }
    }
    found.sort();
    Ok(found)
}

/// Writes `contents` to `path` through a temporary file and a rename, unless it is already there.
/// Returns whether it wrote.
pub fn write_if_changed(path: &Path, contents: &str) -> io::Result<bool> {
    if std::fs::read_to_string(path).is_ok_and(|c| c == contents) {
        return Ok(false);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, contents)?;
    std::fs::rename(&tmp, path)?;
    Ok(true)
}

/// Installs the CNI plugin binary `src` as `<dir>/petrel-cni`: copied to a temporary file in
/// `dir`, made executable and synced, then renamed over the old one, so a runtime calling the
/// plugin meanwhile runs either the old binary or the new one, never half a file.
pub fn install_binary(src: &Path, dir: &Path) -> io::Result<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(dir)?;
    let dst = dir.join("petrel-cni");
    let tmp = dir.join(".petrel-cni.tmp");
    std::fs::copy(src, &tmp)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, &dst)?;
    Ok(dst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_binary_replaces_atomically_and_leaves_no_temporary() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("new");
        std::fs::write(&src, b"v2").expect("src");
        let bin = dir.path().join("opt/cni/bin");
        std::fs::create_dir_all(&bin).expect("bin dir");
        std::fs::write(bin.join("petrel-cni"), b"v1").expect("old");
        let dst = install_binary(&src, &bin).expect("install");
        assert_eq!(std::fs::read(&dst).expect("read"), b"v2");
        let mode = std::fs::metadata(&dst).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        let names: Vec<_> = std::fs::read_dir(&bin)
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["petrel-cni"]);
        assert!(install_binary(&dir.path().join("missing"), &bin).is_err());
    }

    #[test]
    fn install_binary_makes_a_missing_bin_dir_and_refuses_one_that_is_a_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("petrel-cni.new");
        std::fs::write(&src, b"v1").expect("src");
        // The agent pod started before anything made /opt/cni/bin.
        let bin = dir.path().join("opt/cni/bin");
        let dst = install_binary(&src, &bin).expect("install into a missing folder");
        assert_eq!(dst, bin.join("petrel-cni"));
        assert_eq!(std::fs::read(&dst).expect("read"), b"v1");
        // A file where the folder should be: refused, the file left as it was.
        let not_dir = dir.path().join("not-a-dir");
        std::fs::write(&not_dir, b"x").expect("file");
        let e = install_binary(&src, &not_dir).expect_err("a file is no bin dir");
        assert!(
            matches!(
                e.kind(),
                io::ErrorKind::AlreadyExists | io::ErrorKind::NotADirectory
            ),
            "{e}"
        );
        assert_eq!(std::fs::read(&not_dir).expect("kept"), b"x");
    }

    fn shadow_fixture(
        exclusive: bool,
    ) -> (
        tempfile::TempDir,
        CniFiles,
        Arc<crate::metrics::Metrics>,
        Arc<crate::health::ProxierHealth>,
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let health = Arc::new(crate::health::ProxierHealth::new(
            std::time::Duration::from_secs(60),
        ));
        health.updated();
        let files = CniFiles {
            pod_cidr_file: dir.path().join("cni/pod-cidr"),
            conf_file: dir.path().join("net.d/05-petrel.conflist"),
            cni_version: contract::CONFLIST_CNI_VERSION.into(),
            bpffs_root: contract::DEFAULT_BPFFS_ROOT.into(),
            refused: std::sync::Mutex::default(),
            metrics: Some(metrics.clone()),
            exclusive,
            shadowing: std::sync::Mutex::default(),
            health: Some(health.clone()),
        };
        std::fs::create_dir_all(dir.path().join("net.d")).expect("net.d");
        (dir, files, metrics, health)
    }

    fn one_node() -> [Arc<Node>; 1] {
        let mut node = Node {
            spec: Some(k8s_openapi::api::core::v1::NodeSpec {
                pod_cidr: Some("10.244.3.0/24".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        node.metadata.name = Some("n1".into());
        [Arc::new(node)]
    }

    #[test]
    fn a_config_sorting_before_petrels_is_reported_and_makes_healthz_fail() {
        let (dir, files, metrics, health) = shadow_fixture(false);
        let net_d = dir.path().join("net.d");
        // Configs the runtime would not take before petrel's: after it, other extensions,
        // a folder, petrel's own temporary file.
        std::fs::write(net_d.join("10-later.conflist"), "{}").expect("later");
        std::fs::write(net_d.join("00-notes.txt"), "x").expect("txt");
        std::fs::create_dir(net_d.join("00-dir.conf")).expect("dir");
        std::fs::write(net_d.join("00-other.conflist.petrel_bak"), "{}").expect("bak");
        files.write(&one_node(), "n1", Some(1450));
        assert_eq!(metrics.cni_config_shadowed.get(), 0);
        assert_eq!(health.healthz().status, hyper::StatusCode::OK);
        for name in ["00-other.conflist", "04-x.conf", "01-y.json"] {
            std::fs::write(net_d.join(name), "{}").expect("other");
        }
        files.write(&one_node(), "n1", Some(1450));
        assert_eq!(metrics.cni_config_shadowed.get(), 3);
        let r = health.healthz();
        assert_eq!(r.status, hyper::StatusCode::SERVICE_UNAVAILABLE);
        assert!(r.body.contains("\"cniConfigShadowed\": true"), "{}", r.body);
        assert_eq!(
            health.livez().status,
            hyper::StatusCode::OK,
            "a restart fixes nothing"
        );
        // Left where they are; petrel's own conflist is written all the same.
        assert!(net_d.join("00-other.conflist").exists());
        assert!(files.conf_file.exists());
        let listed: Vec<String> = shadowing_configs(&files.conf_file)
            .expect("list")
            .iter()
            .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
            .collect();
        assert_eq!(listed, ["00-other.conflist", "01-y.json", "04-x.conf"]);
        // Removed by the operator: ready again at the next sync.
        for name in ["00-other.conflist", "04-x.conf", "01-y.json"] {
            std::fs::remove_file(net_d.join(name)).expect("rm");
        }
        files.write(&one_node(), "n1", Some(1450));
        assert_eq!(metrics.cni_config_shadowed.get(), 0);
        assert_eq!(health.healthz().status, hyper::StatusCode::OK);
    }

    #[test]
    fn cni_exclusive_renames_configs_sorting_before_petrels_aside() {
        let (dir, files, metrics, health) = shadow_fixture(true);
        let net_d = dir.path().join("net.d");
        std::fs::write(net_d.join("00-other.conflist"), "{\"name\": \"other\"}").expect("other");
        std::fs::write(net_d.join("10-later.conflist"), "{}").expect("later");
        files.write(&one_node(), "n1", Some(1450));
        assert!(!net_d.join("00-other.conflist").exists());
        assert_eq!(
            std::fs::read_to_string(net_d.join("00-other.conflist.petrel_bak")).expect("aside"),
            "{\"name\": \"other\"}"
        );
        assert!(
            net_d.join("10-later.conflist").exists(),
            "one sorting after petrel's stays"
        );
        assert!(files.conf_file.exists());
        assert_eq!(metrics.cni_config_shadowed.get(), 0);
        assert_eq!(health.healthz().status, hyper::StatusCode::OK);
    }

    #[test]
    fn writes_only_on_change() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("a/pod-cidr");
        assert!(write_if_changed(&p, "10.244.3.0/24\n").expect("write"));
        assert!(!write_if_changed(&p, "10.244.3.0/24\n").expect("same"));
        assert!(write_if_changed(&p, "10.244.4.0/24\n").expect("changed"));
    }

    #[test]
    fn the_pod_cidr_file_and_then_the_conflist_follow_the_node() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = CniFiles {
            pod_cidr_file: dir.path().join("cni/pod-cidr"),
            conf_file: dir.path().join("net.d/05-petrel.conflist"),
            cni_version: contract::CONFLIST_CNI_VERSION.into(),
            bpffs_root: contract::DEFAULT_BPFFS_ROOT.into(),
            refused: std::sync::Mutex::default(),
            metrics: None,
            exclusive: false,
            shadowing: std::sync::Mutex::default(),
            health: None,
        };
        let mut node = Node {
            spec: Some(k8s_openapi::api::core::v1::NodeSpec {
                pod_cidr: Some("10.244.3.0/24".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        node.metadata.name = Some("n1".into());
        let nodes = [Arc::new(node)];
        // The MTU is not known yet: the pod CIDR is written, the conflist waits.
        files.write(&nodes, "n1", None);
        let cidr = std::fs::read_to_string(&files.pod_cidr_file).expect("pod cidr");
        assert_eq!(cidr, "10.244.3.0/24\n");
        assert!(!files.conf_file.exists());
        files.write(&nodes, "n1", Some(1450));
        let text = std::fs::read_to_string(&files.conf_file).expect("conflist");
        let c: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(c["cniVersion"], "1.0.0");
        let plugin: contract::PluginConf =
            serde_json::from_value(c["plugins"][0].clone()).expect("petrel-cni's entry");
        assert_eq!(
            plugin,
            contract::PluginConf::for_agent(&files.pod_cidr_file, 1450)
        );
        // Another node's name: nothing is found, nothing changes.
        files.write(&nodes, "n2", Some(9000));
        assert_eq!(
            std::fs::read_to_string(&files.conf_file).expect("same"),
            text
        );
    }

    #[test]
    fn a_dual_stack_node_gets_both_ranges_one_per_line_and_single_stack_is_unchanged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let files = CniFiles {
            pod_cidr_file: dir.path().join("cni/pod-cidr"),
            conf_file: dir.path().join("net.d/05-petrel.conflist"),
            cni_version: contract::CONFLIST_CNI_VERSION.into(),
            bpffs_root: contract::DEFAULT_BPFFS_ROOT.into(),
            refused: std::sync::Mutex::default(),
            metrics: Some(metrics.clone()),
            exclusive: false,
            shadowing: std::sync::Mutex::default(),
            health: None,
        };
        let node = |single: &str, list: &[&str]| {
            let mut n = Node {
                spec: Some(k8s_openapi::api::core::v1::NodeSpec {
                    pod_cidr: Some(single.into()),
                    pod_cidrs: (!list.is_empty())
                        .then(|| list.iter().map(ToString::to_string).collect()),
                    ..Default::default()
                }),
                ..Default::default()
            };
            n.metadata.name = Some("n1".into());
            [Arc::new(n)]
        };
        let read = || std::fs::read_to_string(&files.pod_cidr_file).expect("pod cidr");
        // Single stack, with or without podCIDRs: byte for byte the one line it always was.
        files.write(&node("10.244.3.0/24", &[]), "n1", Some(1450));
        assert_eq!(read(), "10.244.3.0/24\n");
        let conflist = std::fs::read_to_string(&files.conf_file).expect("conflist");
        files.write(&node("10.244.3.0/24", &["10.244.3.0/24"]), "n1", Some(1450));
        assert_eq!(read(), "10.244.3.0/24\n");
        // Both families, in the Node's order; the conflist does not change (it names the file).
        files.write(
            &node("10.244.3.0/24", &["10.244.3.0/24", "fd00:10:244:3::/64"]),
            "n1",
            Some(1450),
        );
        assert_eq!(read(), "10.244.3.0/24\nfd00:10:244:3::/64\n");
        assert_eq!(
            std::fs::read_to_string(&files.conf_file).expect("conflist"),
            conflist
        );
        files.write(
            &node(
                "fd00:10:244:3::/64",
                &["fd00:10:244:3::/64", "10.244.3.0/24"],
            ),
            "n1",
            Some(1450),
        );
        assert_eq!(read(), "fd00:10:244:3::/64\n10.244.3.0/24\n");
        // IPv6 only.
        files.write(&node("fd00:10:244:3::/64", &[]), "n1", Some(1450));
        assert_eq!(read(), "fd00:10:244:3::/64\n");
        assert_eq!(metrics.pod_cidr_refused.get(), 0);
        // petrel-cni reads what the agent wrote.
        let conf = petrel_cni::config::NetConf::parse(
            format!(
                r#"{{"cniVersion":"1.0.0","name":"petrel","podCIDRFile":"{}"}}"#,
                files.pod_cidr_file.display()
            )
            .as_bytes(),
        )
        .expect("conf");
        files.write(
            &node("10.244.3.0/24", &["10.244.3.0/24", "fd00:10:244:3::/64"]),
            "n1",
            Some(1450),
        );
        assert_eq!(
            conf.require_pod_cidr().expect("ranges").to_string(),
            "10.244.3.0/24,fd00:10:244:3::/64"
        );
        // An IPv6 range petrel-cni cannot use: refused, nothing written, the file kept.
        files.write(
            &node("10.244.3.0/24", &["10.244.3.0/24", "fd00:10:244:3::/124"]),
            "n1",
            Some(1450),
        );
        assert_eq!(metrics.pod_cidr_refused.get(), 1);
        assert_eq!(read(), "10.244.3.0/24\nfd00:10:244:3::/64\n");
    }

    #[test]
    fn a_pod_cidr_petrel_cni_cannot_use_is_not_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let files = CniFiles {
            pod_cidr_file: dir.path().join("cni/pod-cidr"),
            conf_file: dir.path().join("net.d/05-petrel.conflist"),
            cni_version: contract::CONFLIST_CNI_VERSION.into(),
            bpffs_root: contract::DEFAULT_BPFFS_ROOT.into(),
            refused: std::sync::Mutex::default(),
            metrics: Some(metrics.clone()),
            exclusive: false,
            shadowing: std::sync::Mutex::default(),
            health: None,
        };
        let node = |cidr: &str| {
            let mut n = Node {
                spec: Some(k8s_openapi::api::core::v1::NodeSpec {
                    pod_cidr: Some(cidr.into()),
                    ..Default::default()
                }),
                ..Default::default()
            };
            n.metadata.name = Some("n1".into());
            [Arc::new(n)]
        };
        files.write(&node("10.244.3.0/24"), "n1", Some(1450));
        for bad in ["10.244.3.0/31", "0.0.0.0/0", "224.1.0.0/16"] {
            files.write(&node(bad), "n1", Some(1450));
            assert_eq!(metrics.pod_cidr_refused.get(), 1, "{bad}");
            let kept = std::fs::read_to_string(&files.pod_cidr_file).expect("pod cidr");
            assert_eq!(kept, "10.244.3.0/24\n", "{bad} must not be written");
        }
        files.write(&node("10.244.4.0/24"), "n1", Some(1450));
        assert_eq!(metrics.pod_cidr_refused.get(), 0);
        let now = std::fs::read_to_string(&files.pod_cidr_file).expect("pod cidr");
        assert_eq!(now, "10.244.4.0/24\n");
    }
}
