//! The network configuration on stdin: a conflist plugin entry, with `prevResult` and, for GC,
//! `cni.dev/valid-attachments` filled in by the runtime.

use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::Deserialize;

use crate::{
    contract::{PLUGIN_TYPE, PluginConf},
    env::Verb,
    error::{CniError, Result},
    fsio::{self, ReadError},
};

/// Versions whose configs are accepted and whose result shape is printed.
pub const SUPPORTED_VERSIONS: [&str; 4] = ["0.3.1", "0.4.0", "1.0.0", "1.1.0"];

pub use crate::contract::{DEFAULT_BPFFS_ROOT, DEFAULT_DATA_DIR, DEFAULT_POD_CIDR_FILE};
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
    /// The config's own `podCIDR`; None means "read `pod_cidr_file`" (`require_pod_cidr`).
    pub pod_cidr: Option<Ipv4Net>,
    pub pod_cidr_file: PathBuf,
    pub data_dir: PathBuf,
    pub mtu: u32,
    pub log_file: Option<PathBuf>,
    /// The agent's bpffs root (`bpffsRoot`): the pod programs ADD attaches are pinned there.
    pub bpffs_root: PathBuf,
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

/// The first spec version that defines `verb` (ADD and DEL are in every version).
pub fn verb_since(verb: Verb) -> Option<&'static str> {
    match verb {
        Verb::Check => Some("0.4.0"),
        Verb::Status | Verb::Gc => Some("1.1.0"),
        Verb::Add | Verb::Del | Verb::Version => None,
    }
}

fn version_tuple(v: &str) -> Option<(u32, u32, u32)> {
    let mut it = v.split('.').map(|p| p.parse::<u32>().ok());
    let t = (it.next()??, it.next()??, it.next()??);
    it.next().is_none().then_some(t)
}

/// Refuses a verb the config's version does not define, as the reference skel does (code 1):
/// a runtime speaking 0.3.1 never sends CHECK, so one that does is confused, and acting on it
/// (a GC freeing attachments) would be wrong.
pub fn check_verb_version(verb: Verb, version: &str) -> Result<()> {
    let Some(since) = verb_since(verb) else {
        return Ok(());
    };
    match (version_tuple(version), version_tuple(since)) {
        (Some(v), Some(s)) if v >= s => Ok(()),
        _ => Err(CniError::VerbNotInVersion {
            verb: verb.name(),
            version: version.to_string(),
            since,
        }),
    }
}

/// Special-purpose IPv4 blocks a pod range must not overlap: pods need unicast addresses that
/// the kernel routes like any other (RFC 6890).
const NOT_UNICAST: [(&str, &str); 5] = [
    ("0.0.0.0/8", "\"this network\""),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved, with the broadcast address"),
];

/// A pod range: IPv4, its network address, unicast, /29 or wider (a /29 holds 5 pods after the
/// network, gateway and broadcast addresses) and not every address.
pub fn parse_pod_cidr(s: &str) -> Result<Ipv4Net> {
    let s = s.trim();
    let net: Ipv4Net = s
        .parse()
        .map_err(|e| CniError::config(format!("podCIDR {s:?} is not an IPv4 CIDR: {e}")))?;
    if net.prefix_len() == 0 {
        return Err(CniError::config(format!(
            "podCIDR {net} is every IPv4 address: give the node's own range (/8 to /29)"
        )));
    }
    if net.prefix_len() > 29 {
        return Err(CniError::config(format!(
            "podCIDR {net} is too small: the prefix must be /29 or shorter (a /29 holds 5 pods)"
        )));
    }
    if net.network() != net.addr() {
        return Err(CniError::config(format!(
            "podCIDR {s} has host bits set (did you mean {}?)",
            net.trunc()
        )));
    }
    for (block, what) in NOT_UNICAST {
        let block: Ipv4Net = block.parse().expect("a valid block");
        if block.contains(&net) || net.contains(&block) {
            return Err(CniError::config(format!(
                "podCIDR {net} is not a unicast range: it overlaps {block} ({what})"
            )));
        }
    }
    Ok(net)
}

/// A path the config names must be absolute: a relative one would be taken from the runtime's
/// working directory, wherever that happens to be.
fn absolute(field: &str, p: Option<PathBuf>, default: Option<&str>) -> Result<Option<PathBuf>> {
    let p = p.or_else(|| default.map(PathBuf::from));
    match &p {
        Some(p) if !p.is_absolute() => Err(CniError::config(format!(
            "{field} {:?} must be an absolute path",
            p.display().to_string()
        ))),
        _ => Ok(p),
    }
}

impl NetConf {
    pub fn parse(stdin: &[u8]) -> Result<NetConf> {
        let what = "invalid network configuration JSON";
        let value: serde_json::Value =
            serde_json::from_slice(stdin).map_err(|e| CniError::decode(what, e))?;
        // serde would take an array for a struct (fields by position): refuse anything but an
        // object, as the spec's configuration is one.
        if !value.is_object() {
            let kind = match &value {
                serde_json::Value::Array(_) => "an array",
                serde_json::Value::String(_) => "a string",
                serde_json::Value::Number(_) => "a number",
                serde_json::Value::Bool(_) => "a boolean",
                _ => "null",
            };
            return Err(CniError::decode(
                what,
                serde::de::Error::custom(format!(
                    "the network configuration is {kind}, not a JSON object"
                )),
            ));
        }
        let raw: Raw = serde_json::from_value(value).map_err(|e| CniError::decode(what, e))?;
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
        let data_dir =
            absolute("dataDir", plugin.data_dir, Some(DEFAULT_DATA_DIR))?.expect("defaulted");
        let pod_cidr_file = absolute(
            "podCIDRFile",
            plugin.pod_cidr_file,
            Some(DEFAULT_POD_CIDR_FILE),
        )?
        .expect("defaulted");
        let log_file = absolute("logFile", plugin.log_file, None)?;
        let bpffs_root =
            absolute("bpffsRoot", plugin.bpffs_root, Some(DEFAULT_BPFFS_ROOT))?.expect("defaulted");
        // The config's own podCIDR is checked now; the agent's file only by the verbs that need
        // a range (ADD, CHECK, STATUS): DEL and GC work whatever that file holds.
        let pod_cidr = plugin.pod_cidr.as_deref().map(parse_pod_cidr).transpose()?;
        Ok(NetConf {
            cni_version,
            name,
            pod_cidr,
            pod_cidr_file,
            data_dir,
            mtu,
            log_file,
            bpffs_root,
            prev_result: raw.prev_result,
            valid_attachments: raw.valid_attachments,
        })
    }

    /// The pod range: the config's `podCIDR`, else what the agent wrote to `podCIDRFile`.
    pub fn require_pod_cidr(&self) -> Result<Ipv4Net> {
        match self.pod_cidr {
            Some(net) => Ok(net),
            None => read_pod_cidr_file(&self.pod_cidr_file),
        }
    }
}

/// The agent writes one line ("10.244.1.0/24\n"); anything much longer is not its file.
const POD_CIDR_FILE_LIMIT: u64 = 64;

fn read_pod_cidr_file(path: &Path) -> Result<Ipv4Net> {
    let p = path.display();
    let data = fsio::read_small(path, POD_CIDR_FILE_LIMIT).map_err(|e| match e {
        ReadError::NotFound => CniError::config(format!(
            "no pod CIDR: set podCIDR in the config, or let petrel-agent write {p}"
        )),
        ReadError::NotRegular(kind) => {
            CniError::config(format!("pod CIDR file {p} is {kind}, not a regular file"))
        }
        ReadError::TooLarge(n) => CniError::config(format!(
            "pod CIDR file {p} is larger than {n} bytes: not a pod CIDR"
        )),
        ReadError::Io(e) => CniError::io(format!("reading pod CIDR file {p}"), e),
    })?;
    let text = String::from_utf8(data)
        .map_err(|_| CniError::config(format!("pod CIDR file {p} is not text")))?;
    if text.trim().is_empty() {
        return Err(CniError::config(format!("pod CIDR file {p} is empty")));
    }
    parse_pod_cidr(&text).map_err(|e| match e {
        CniError::InvalidConfig(msg) => CniError::config(format!("pod CIDR file {p}: {msg}")),
        e => e,
    })
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
        assert_eq!(c.require_pod_cidr().unwrap().to_string(), "10.244.7.0/24");
        let none =
            conf(r#"{"cniVersion":"1.0.0","name":"n","podCIDRFile":"/nonexistent/x"}"#).unwrap();
        let e = none.require_pod_cidr().unwrap_err();
        assert_eq!(e.code(), 7);
        assert!(e.msg().starts_with("no pod CIDR"), "{}", e.msg());
    }

    /// A broken agent file fails only the verbs that need a range; parsing (so DEL and GC)
    /// never reads it, and reading it never blocks.
    #[test]
    fn a_bad_pod_cidr_file_is_refused_when_needed_and_never_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pod-cidr");
        let c = conf(&format!(
            r#"{{"cniVersion":"1.1.0","name":"n","podCIDRFile":"{}"}}"#,
            f.display()
        ))
        .unwrap();
        let err = || {
            let e = c.require_pod_cidr().unwrap_err();
            (e.code(), e.msg())
        };
        for (contents, fragment) in [
            ("", "is empty"),
            ("\n \n", "is empty"),
            ("banana\n", "is not an IPv4 CIDR"),
            ("0.0.0.0/0\n", "every IPv4 address"),
            ("10.1.0.0/31\n", "too small"),
        ] {
            std::fs::write(&f, contents).unwrap();
            let (code, msg) = err();
            assert_eq!(code, 7, "{contents:?}: {msg}");
            assert!(msg.contains(fragment) && msg.contains("pod-cidr"), "{msg}");
        }
        std::fs::write(&f, vec![b'1'; 100]).unwrap();
        assert!(err().1.contains("larger than 64 bytes"), "{}", err().1);
        std::fs::write(&f, [0xff, 0xfe]).unwrap();
        assert!(err().1.contains("is not text"), "{}", err().1);
        std::fs::remove_file(&f).unwrap();
        nix::unistd::mkfifo(&f, nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert_eq!(err().0, 7);
        assert!(
            err().1.contains("is a FIFO, not a regular file"),
            "{}",
            err().1
        );
    }

    #[test]
    fn pod_cidr_must_be_a_unicast_ipv4_range_of_29_or_wider() {
        for (cidr, fragment) in [
            ("0.0.0.0/0", "every IPv4 address"),
            ("10.0.0.0/30", "too small"),
            ("10.0.0.0/32", "too small"),
            ("10.0.0.8/28", "host bits"),
            ("224.0.0.0/24", "multicast"),
            ("239.1.0.0/16", "multicast"),
            ("224.0.0.0/3", "multicast"),
            ("255.255.255.248/29", "broadcast"),
            ("240.0.0.0/8", "reserved"),
            ("127.0.0.0/24", "loopback"),
            ("169.254.0.0/24", "link-local"),
            ("0.0.0.0/8", "this network"),
            ("fd00::/64", "not an IPv4 CIDR"),
            ("10.0.0.0", "not an IPv4 CIDR"),
        ] {
            let e = parse_pod_cidr(cidr).unwrap_err();
            assert_eq!(e.code(), 7, "{cidr}");
            assert!(e.msg().starts_with("podCIDR"), "{}", e.msg());
            assert!(e.msg().contains(fragment), "{cidr}: {}", e.msg());
        }
        for cidr in [
            "10.0.0.0/29",
            "10.244.0.0/16",
            "10.0.0.0/8",
            "192.168.1.0/24",
            "1.0.0.0/8",
        ] {
            parse_pod_cidr(cidr).unwrap_or_else(|e| panic!("{cidr}: {}", e.msg()));
        }
    }

    #[test]
    fn only_an_object_is_a_network_config() {
        for stdin in [
            r#"["1.1.0","n"]"#,
            r#"[{"cniVersion":"1.1.0","name":"n","podCIDR":"10.0.0.0/24"}]"#,
            "null",
            "42",
            r#""x""#,
            "true",
        ] {
            let e = conf(stdin).unwrap_err();
            assert_eq!(e.code(), 6, "{stdin}");
            assert!(e.details().contains("not a JSON object"), "{}", e.full());
        }
    }

    #[test]
    fn paths_must_be_absolute() {
        for (field, value) in [
            ("dataDir", ""),
            ("dataDir", "ipam"),
            ("dataDir", "./x"),
            ("podCIDRFile", "pod-cidr"),
            ("logFile", "log"),
        ] {
            let e = conf(&format!(
                r#"{{"cniVersion":"1.1.0","name":"n","podCIDR":"10.0.0.0/24","{field}":"{value}"}}"#
            ))
            .unwrap_err();
            assert_eq!(e.code(), 7, "{field} {value:?}");
            assert_eq!(
                e.msg(),
                format!("{field} {value:?} must be an absolute path")
            );
        }
    }

    #[test]
    fn verbs_are_gated_by_the_version_that_defines_them() {
        let ok = |verb, v| check_verb_version(verb, v).is_ok();
        for v in SUPPORTED_VERSIONS {
            assert!(ok(Verb::Add, v) && ok(Verb::Del, v), "{v}");
        }
        assert!(!ok(Verb::Check, "0.3.1"));
        assert!(ok(Verb::Check, "0.4.0") && ok(Verb::Check, "1.1.0"));
        for verb in [Verb::Status, Verb::Gc] {
            for v in ["0.3.1", "0.4.0", "1.0.0"] {
                let e = check_verb_version(verb, v).unwrap_err();
                assert_eq!(e.code(), 1);
                assert_eq!(
                    e.msg(),
                    format!(
                        "incompatible CNI version: config version {v} does not allow {}",
                        verb.name()
                    )
                );
                assert_eq!(
                    e.details(),
                    format!("{} needs cniVersion 1.1.0 or later", verb.name())
                );
            }
            assert!(ok(verb, "1.1.0"));
        }
    }
}
