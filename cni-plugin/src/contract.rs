//! What petrel-agent and petrel-cni agree on: the interface prefix, the files the agent writes for
//! the plugin, and the plugin's entry in the conflist. Both sides use these items so the agreement
//! is written down once; the agent depends on this crate's library for them.
//!
//! WARNING: changing a value here changes what is on disk on every node (file paths, interface
//! names, conflist fields); a node upgraded on one side only must still work.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Prefix of every host-side interface petrel creates for a pod ("pet" + 12 hex digits). The
/// agent attaches its programs to these, and GC removes the ones no reservation owns.
pub const HOST_IF_PREFIX: &str = "pet";

/// Where the agent writes the node's pod CIDRs (one range per line, at most one per family), and
/// where the plugin reads them when its config has no `podCIDR` or `podCIDRs`.
pub const DEFAULT_POD_CIDR_FILE: &str = "/var/lib/petrel/cni/pod-cidr";

/// Where the IPAM store keeps one file per reserved address, unless the config sets `dataDir`.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/petrel/ipam";

/// The agent's bpffs root unless told otherwise: petrel-cni attaches the pod programs pinned
/// under its `progs/` and pins the links under its `links/`.
pub const DEFAULT_BPFFS_ROOT: &str = "/sys/fs/bpf/petrel";

/// The plugin's `type` in the conflist: the runtime runs the binary of that name.
pub const PLUGIN_TYPE: &str = "petrel-cni";

/// The network name of the conflist the agent writes.
pub const NETWORK_NAME: &str = "petrel";

/// The `cniVersion` of the conflist the agent writes unless told otherwise: the newest that the
/// common runtimes read. containerd 1.6 (libcni 1.1) and CRI-O 1.2x read up to 1.0.0, and so do
/// Debian's reference plugins (portmap is second in the list); a 1.1.0 conflist makes them fail
/// every pod ("incompatible CNI versions").
pub const CONFLIST_CNI_VERSION: &str = "1.0.0";

/// The `cniVersion`s the agent can write a conflist in: those petrel-cni and portmap both
/// answer and that carry what the conflist needs (chained `prevResult`, CHECK from 0.4.0).
pub const CONFLIST_CNI_VERSIONS: &[&str] = &["0.4.0", "1.0.0", "1.1.0"];

/// petrel-cni's entry of a conflist: the fields that are ours. The runtime adds `cniVersion`,
/// `name`, `prevResult` and the GC attachments when it calls the plugin (see `config::NetConf`).
///
/// Values are kept as written (`mtu` signed, `podCIDR` as text) so the plugin, not serde, reports
/// a bad value with its own error code.
///
/// WARNING: the field order is the order the agent has always written them in (`type`,
/// `podCIDRFile`, `mtu`): with serde_json's `preserve_order` it is also the byte order on disk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginConf {
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(
        rename = "podCIDRFile",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub pod_cidr_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<i64>,
    #[serde(rename = "podCIDR", default, skip_serializing_if = "Option::is_none")]
    pub pod_cidr: Option<String>,
    #[serde(rename = "dataDir", default, skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(rename = "logFile", default, skip_serializing_if = "Option::is_none")]
    pub log_file: Option<PathBuf>,
    /// The agent's bpffs root, written only when it is not `DEFAULT_BPFFS_ROOT` (so the
    /// default conflist stays byte for byte what it was).
    #[serde(rename = "bpffsRoot", default, skip_serializing_if = "Option::is_none")]
    pub bpffs_root: Option<PathBuf>,
    /// The pod ranges, one per family (`["10.244.1.0/24", "fd00:10:244:1::/112"]`), instead of or
    /// besides `podCIDR`. Any JSON value: the plugin checks it is a list of CIDR strings.
    #[serde(rename = "podCIDRs", default, skip_serializing_if = "Option::is_none")]
    pub pod_cidrs: Option<serde_json::Value>,
}

impl PluginConf {
    /// The entry the agent writes: the plugin reads the pod CIDR from `pod_cidr_file`.
    pub fn for_agent(pod_cidr_file: &Path, mtu: u32) -> PluginConf {
        PluginConf {
            kind: Some(PLUGIN_TYPE.to_string()),
            pod_cidr_file: Some(pod_cidr_file.to_path_buf()),
            mtu: Some(i64::from(mtu)),
            ..PluginConf::default()
        }
    }

    /// With the agent's bpffs root (left out when it is the default).
    pub fn with_bpffs_root(mut self, root: &Path) -> PluginConf {
        self.bpffs_root = (root != Path::new(DEFAULT_BPFFS_ROOT)).then(|| root.to_path_buf());
        self
    }
}

/// The conflist the agent writes: petrel-cni first, then the reference portmap plugin for
/// hostPort.
///
/// Panics if `pod_cidr_file` is not UTF-8 (JSON cannot carry it), as the agent always has.
pub fn conflist(pod_cidr_file: &Path, mtu: u32, cni_version: &str) -> serde_json::Value {
    conflist_of(PluginConf::for_agent(pod_cidr_file, mtu), cni_version)
}

/// The conflist with `plugin` as petrel-cni's entry.
pub fn conflist_of(plugin: PluginConf, cni_version: &str) -> serde_json::Value {
    let plugin = serde_json::to_value(plugin).expect("the paths are UTF-8");
    serde_json::json!({
        "cniVersion": cni_version,
        "name": NETWORK_NAME,
        "plugins": [
            plugin,
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    })
}

/// The conflist file's contents, byte for byte what the agent writes (pretty JSON, final newline).
pub fn conflist_text(pod_cidr_file: &Path, mtu: u32, cni_version: &str) -> String {
    text(&conflist(pod_cidr_file, mtu, cni_version))
}

/// `conflist_of`'s file contents.
pub fn conflist_text_of(plugin: PluginConf, cni_version: &str) -> String {
    text(&conflist_of(plugin, cni_version))
}

fn text(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).expect("serialisable") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What agent/cni_config.rs wrote before the contract had a type: the file must not change.
    fn untyped(pod_cidr_file: &Path, mtu: u32) -> String {
        let v = serde_json::json!({
            "cniVersion": "1.1.0",
            "name": "petrel",
            "plugins": [
                {"type": "petrel-cni", "podCIDRFile": pod_cidr_file, "mtu": mtu},
                {"type": "portmap", "capabilities": {"portMappings": true}}
            ]
        });
        serde_json::to_string_pretty(&v).expect("serialisable") + "\n"
    }

    #[test]
    fn conflist_is_byte_for_byte_what_the_agent_wrote() {
        let f = Path::new("/var/lib/petrel/cni/pod-cidr");
        assert_eq!(conflist_text(f, 1450, "1.1.0"), untyped(f, 1450));
        assert_eq!(conflist_text(f, 65535, "1.1.0"), untyped(f, 65535));
        // Only the version changes with the setting.
        assert_eq!(
            conflist_text(f, 1450, CONFLIST_CNI_VERSION),
            untyped(f, 1450).replace("\"1.1.0\"", "\"1.0.0\"")
        );
    }

    #[test]
    fn the_plugin_entry_round_trips() {
        let c = conflist(Path::new(DEFAULT_POD_CIDR_FILE), 1500, CONFLIST_CNI_VERSION);
        let p: PluginConf = serde_json::from_value(c["plugins"][0].clone()).expect("parse");
        assert_eq!(
            p,
            PluginConf::for_agent(Path::new(DEFAULT_POD_CIDR_FILE), 1500)
        );
        let all = r#"{"type":"petrel-cni","podCIDR":"10.0.0.0/24","podCIDRFile":"/f","dataDir":"/d","mtu":1400,"logFile":"/l","bpffsRoot":"/b"}"#;
        let p: PluginConf = serde_json::from_str(all).expect("parse");
        assert_eq!(p.pod_cidr.as_deref(), Some("10.0.0.0/24"));
        assert_eq!(p.data_dir.as_deref(), Some(Path::new("/d")));
        assert_eq!(p.log_file.as_deref(), Some(Path::new("/l")));
        assert_eq!(p.bpffs_root.as_deref(), Some(Path::new("/b")));
        let f = Path::new(DEFAULT_POD_CIDR_FILE);
        assert_eq!(
            PluginConf::for_agent(f, 1500).with_bpffs_root(Path::new(DEFAULT_BPFFS_ROOT)),
            PluginConf::for_agent(f, 1500),
            "the default root is not written"
        );
        let back: serde_json::Value = serde_json::to_value(&p).expect("value");
        assert_eq!(
            back,
            serde_json::from_str::<serde_json::Value>(all).expect("value")
        );
    }
}
