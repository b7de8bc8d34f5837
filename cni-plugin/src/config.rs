//! The network configuration on stdin: a conflist plugin entry, with `prevResult` and, for GC,
//! `cni.dev/valid-attachments` filled in by the runtime.

use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::Deserialize;

use crate::{
    contract::{PLUGIN_TYPE, PluginConf},
    error::{CniError, Result},
};

/// Versions whose configs are accepted and whose result shape is printed.
pub const SUPPORTED_VERSIONS: [&str; 4] = ["0.3.1", "0.4.0", "1.0.0", "1.1.0"];

pub use crate::contract::{DEFAULT_DATA_DIR, DEFAULT_POD_CIDR_FILE};
pub const DEFAULT_MTU: u32 = 1500;

/// The plugin's own fields come from the contract with the agent; the rest is what the runtime
/// adds to the entry when it calls the plugin.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    cni_version: Option<String>,
    name: Option<String>,
    #[serde(flatten)]
    plugin: PluginConf,
    prev_result: Option<serde_json::Value>,
    #[serde(rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<ValidAttachment>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ValidAttachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

#[derive(Debug, Clone)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    /// None when neither the config nor the agent's file names one yet.
    pub pod_cidr: Option<Ipv4Net>,
    pub pod_cidr_file: PathBuf,
    pub data_dir: PathBuf,
    pub mtu: u32,
    pub log_file: Option<PathBuf>,
    pub prev_result: Option<serde_json::Value>,
    pub valid_attachments: Option<Vec<ValidAttachment>>,
}

/// The version to answer in when the config itself cannot be read.
pub fn version_hint(stdin: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_string))
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| "1.1.0".to_string())
}

pub fn parse_pod_cidr(s: &str) -> Result<Ipv4Net> {
    let net: Ipv4Net = s
        .trim()
        .parse()
        .map_err(|e| CniError::config(format!("podCIDR {s:?} is not an IPv4 CIDR: {e}")))?;
    if net.prefix_len() > 29 {
        return Err(CniError::config(format!(
            "podCIDR {net} is too small: at most /29"
        )));
    }
    if net.network() != net.addr() {
        return Err(CniError::config(format!(
            "podCIDR {s} has host bits set (did you mean {}?)",
            net.trunc()
        )));
    }
    Ok(net)
}

impl NetConf {
    pub fn parse(stdin: &[u8]) -> Result<NetConf> {
        let raw: Raw = serde_json::from_slice(stdin).map_err(CniError::Decode)?;
        let cni_version = raw
            .cni_version
            .ok_or_else(|| CniError::config("cniVersion is required"))?;
        if !SUPPORTED_VERSIONS.contains(&cni_version.as_str()) {
            return Err(CniError::IncompatibleVersion {
                version: cni_version,
                supported: SUPPORTED_VERSIONS.join(", "),
            });
        }
        let name = raw
            .name
            .filter(|n| !n.is_empty())
            .ok_or_else(|| CniError::config("name is required"))?;
        crate::env::validate_container_id(&name).map_err(|_| {
            CniError::config(format!(
                "network name {name:?} must be [A-Za-z0-9][A-Za-z0-9_.-]*"
            ))
        })?;
        let plugin = raw.plugin;
        if let Some(kind) = &plugin.kind {
            if kind != PLUGIN_TYPE {
                return Err(CniError::config(format!(
                    "type is {kind:?}, this plugin is {PLUGIN_TYPE:?}"
                )));
            }
        }
        let mtu = match plugin.mtu {
            None => DEFAULT_MTU,
            Some(m) if (576..=65535).contains(&m) => m as u32,
            Some(m) => {
                return Err(CniError::config(format!(
                    "mtu {m} is out of range 576..=65535"
                )));
            }
        };
        let pod_cidr_file = plugin
            .pod_cidr_file
            .unwrap_or_else(|| PathBuf::from(DEFAULT_POD_CIDR_FILE));
        let pod_cidr = match plugin.pod_cidr {
            Some(s) => Some(parse_pod_cidr(&s)?),
            None => read_pod_cidr_file(&pod_cidr_file)?,
        };
        Ok(NetConf {
            cni_version,
            name,
            pod_cidr,
            pod_cidr_file,
            data_dir: plugin
                .data_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            mtu,
            log_file: plugin.log_file,
            prev_result: raw.prev_result,
            valid_attachments: raw.valid_attachments,
        })
    }

    /// The pod CIDR, or the error ADD reports without one.
    pub fn require_pod_cidr(&self) -> Result<Ipv4Net> {
        self.pod_cidr.ok_or_else(|| {
            CniError::config(format!(
                "no pod CIDR: set podCIDR in the config, or let petrel-agent write {}",
                self.pod_cidr_file.display()
            ))
        })
    }
}

fn read_pod_cidr_file(path: &Path) -> Result<Option<Ipv4Net>> {
    match std::fs::read_to_string(path) {
        Ok(s) => parse_pod_cidr(&s).map(Some).map_err(|e| match e {
            CniError::InvalidConfig(msg) => {
                CniError::InvalidConfig(format!("{}: {msg}", path.display()))
            }
            e => e,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CniError::io(format!("reading {}", path.display()), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(json: &str) -> Result<NetConf> {
        NetConf::parse(json.as_bytes())
    }

    #[test]
    fn parses_the_documented_contract() {
        let c = conf(r#"{"cniVersion":"1.1.0","name":"petrel","type":"petrel-cni","podCIDR":"10.244.1.0/24","dataDir":"/tmp/x","mtu":1450}"#).unwrap();
        assert_eq!(c.pod_cidr.unwrap().to_string(), "10.244.1.0/24");
        assert_eq!(c.mtu, 1450);
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
    }

    #[test]
    fn defaults() {
        let c = conf(r#"{"cniVersion":"0.3.1","name":"n","type":"petrel-cni","podCIDR":"10.0.0.0/16","podCIDRFile":"/nonexistent"}"#).unwrap();
        assert_eq!(c.mtu, DEFAULT_MTU);
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
    }

    #[test]
    fn bad_inputs_have_their_codes() {
        assert_eq!(conf("{").unwrap_err().code(), 6);
        assert_eq!(
            conf(r#"{"cniVersion":"0.2.0","name":"n"}"#)
                .unwrap_err()
                .code(),
            1
        );
        assert_eq!(
            conf(r#"{"cniVersion":"1.0.0","name":"n","podCIDR":"10.1.0.0/33"}"#)
                .unwrap_err()
                .code(),
            7
        );
        assert_eq!(
            conf(r#"{"cniVersion":"1.0.0","name":"n","podCIDR":"10.1.0.5/24"}"#)
                .unwrap_err()
                .code(),
            7
        );
        assert_eq!(
            conf(r#"{"cniVersion":"1.0.0","name":"n","podCIDR":"fd00::/64"}"#)
                .unwrap_err()
                .code(),
            7
        );
        assert_eq!(
            conf(r#"{"cniVersion":"1.0.0","name":"n","podCIDR":"10.1.0.0/24","mtu":70000}"#)
                .unwrap_err()
                .code(),
            7
        );
        assert_eq!(
            conf(r#"{"cniVersion":"1.0.0","name":"../x","podCIDR":"10.1.0.0/24"}"#)
                .unwrap_err()
                .code(),
            7
        );
    }

    #[test]
    fn pod_cidr_from_the_agents_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pod-cidr");
        std::fs::write(&f, "10.244.7.0/24\n").unwrap();
        let c = conf(&format!(
            r#"{{"cniVersion":"1.0.0","name":"n","podCIDRFile":"{}"}}"#,
            f.display()
        ))
        .unwrap();
        assert_eq!(c.pod_cidr.unwrap().to_string(), "10.244.7.0/24");
        let none =
            conf(r#"{"cniVersion":"1.0.0","name":"n","podCIDRFile":"/nonexistent/x"}"#).unwrap();
        assert!(none.pod_cidr.is_none());
        assert_eq!(none.require_pod_cidr().unwrap_err().code(), 7);
    }
}
