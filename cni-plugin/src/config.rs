//! The network configuration on stdin: a conflist plugin entry, with `prevResult` and, for GC,
//! `cni.dev/valid-attachments` filled in by the runtime.

use std::path::{Path, PathBuf};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
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
    /// The config's own `podCIDR`/`podCIDRs`; None means "read `pod_cidr_file`"
    /// (`require_pod_cidr`).
    pub pod_cidr: Option<PodRanges>,
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

/// Special-purpose IPv6 blocks a pod range must not overlap (RFC 6890, RFC 4291): the pods'
/// addresses are global (or unique local) unicast, routed by the host as any other.
/// (A range holding the unspecified address :: holds ::1 too, at /120 or wider: "loopback".)
const NOT_UNICAST6: [(&str, &str); 4] = [
    ("::1/128", "loopback"),
    ("::ffff:0:0/96", "IPv4-mapped"),
    ("fe80::/10", "link-local"),
    ("ff00::/8", "multicast"),
];

/// The longest IPv6 pod prefix: a /120 holds 254 pods (the range's first two addresses are
/// not handed out), as a /24 does in IPv4. There is no shortest one but ::/0: the IPAM counts in
/// 128 bits and hands out /128s, so a /64 (kube-controller-manager's default
/// `--node-cidr-mask-size-ipv6`) or wider costs nothing.
pub const MAX_PREFIX6: u8 = 120;

/// A pod range: IPv4, its network address, unicast, /29 or wider (a /29 holds 5 pods after the
/// network, gateway and broadcast addresses) and not every address; or IPv6, its network address,
/// unicast (`NOT_UNICAST6`), /120 or wider and not ::/0. `field` names it in errors ("podCIDR",
/// "podCIDRs[1]").
pub fn parse_pod_range(field: &str, s: &str) -> Result<IpNet> {
    let s = s.trim();
    if !s.contains(':') {
        return parse_v4(field, s).map(IpNet::V4);
    }
    let net: Ipv6Net = s
        .parse()
        .map_err(|e| CniError::config(format!("{field} {s:?} is not an IPv6 CIDR: {e}")))?;
    if net.prefix_len() == 0 {
        return Err(CniError::config(format!(
            "{field} {net} is every IPv6 address: give the node's own range (/{MAX_PREFIX6} or wider)"
        )));
    }
    if net.prefix_len() > MAX_PREFIX6 {
        return Err(CniError::config(format!(
            "{field} {net} is too small: an IPv6 prefix must be /{MAX_PREFIX6} or shorter (a /{MAX_PREFIX6} holds 254 pods)"
        )));
    }
    if net.network() != net.addr() {
        return Err(CniError::config(format!(
            "{field} {s} has host bits set (did you mean {}?)",
            net.trunc()
        )));
    }
    for (block, what) in NOT_UNICAST6 {
        let block: Ipv6Net = block.parse().expect("a valid block");
        if block.contains(&net) || net.contains(&block) {
            return Err(CniError::config(format!(
                "{field} {net} is not a unicast range: it overlaps {block} ({what})"
            )));
        }
    }
    Ok(IpNet::V6(net))
}

/// An IPv4 pod range as `parse_pod_range` checks it, under the field name "podCIDR".
pub fn parse_pod_cidr(s: &str) -> Result<Ipv4Net> {
    parse_v4("podCIDR", s.trim())
}

fn parse_v4(field: &str, s: &str) -> Result<Ipv4Net> {
    let net: Ipv4Net = s
        .parse()
        .map_err(|e| CniError::config(format!("{field} {s:?} is not an IPv4 CIDR: {e}")))?;
    if net.prefix_len() == 0 {
        return Err(CniError::config(format!(
            "{field} {net} is every IPv4 address: give the node's own range (/8 to /29)"
        )));
    }
    if net.prefix_len() > 29 {
        return Err(CniError::config(format!(
            "{field} {net} is too small: the prefix must be /29 or shorter (a /29 holds 5 pods)"
        )));
    }
    if net.network() != net.addr() {
        return Err(CniError::config(format!(
            "{field} {s} has host bits set (did you mean {}?)",
            net.trunc()
        )));
    }
    for (block, what) in NOT_UNICAST {
        let block: Ipv4Net = block.parse().expect("a valid block");
        if block.contains(&net) || net.contains(&block) {
            return Err(CniError::config(format!(
                "{field} {net} is not a unicast range: it overlaps {block} ({what})"
            )));
        }
    }
    Ok(net)
}

/// The node's pod ranges: one or two, at most one per family, in the order given (the first is
/// the pod's primary address: the runtime reports the result's first IP as the pod's IP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRanges(Vec<IpNet>);

impl PodRanges {
    /// Ranges already checked one by one (`parse_pod_range`); `what` names where they come from
    /// in the error for two of one family.
    pub fn new(what: &str, nets: Vec<IpNet>) -> Result<PodRanges> {
        if nets.is_empty() {
            return Err(CniError::config(format!("{what} is empty")));
        }
        for family in ["IPv4", "IPv6"] {
            let of: Vec<String> = nets
                .iter()
                .filter(|n| family_of(n) == family)
                .map(ToString::to_string)
                .collect();
            if of.len() > 1 {
                return Err(CniError::config(format!(
                    "{what} has two {family} ranges ({}): give at most one per family",
                    of.join(", ")
                )));
            }
        }
        Ok(PodRanges(nets))
    }

    /// The ranges, in the order given.
    pub fn all(&self) -> &[IpNet] {
        &self.0
    }

    pub fn v4(&self) -> Option<Ipv4Net> {
        self.0.iter().find_map(|n| match n {
            IpNet::V4(n) => Some(*n),
            IpNet::V6(_) => None,
        })
    }

    pub fn v6(&self) -> Option<Ipv6Net> {
        self.0.iter().find_map(|n| match n {
            IpNet::V6(n) => Some(*n),
            IpNet::V4(_) => None,
        })
    }
}

impl std::fmt::Display for PodRanges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let all: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&all.join(","))
    }
}

/// "IPv4" or "IPv6".
pub fn family_of(net: &IpNet) -> &'static str {
    match net {
        IpNet::V4(_) => "IPv4",
        IpNet::V6(_) => "IPv6",
    }
}

/// The config's `podCIDR` and `podCIDRs`, checked. `podCIDRs` is a list of one or two CIDR
/// strings; with both, `podCIDR` must be one of `podCIDRs` (as a Node's `spec.podCIDR` is its
/// `spec.podCIDRs[0]`).
fn config_ranges(
    pod_cidr: Option<&str>,
    pod_cidrs: Option<&serde_json::Value>,
) -> Result<Option<PodRanges>> {
    let single = pod_cidr
        .map(|s| parse_pod_range("podCIDR", s))
        .transpose()?;
    let Some(list) = pod_cidrs else {
        return Ok(single.map(|n| PodRanges(vec![n])));
    };
    let items = list
        .as_array()
        .ok_or_else(|| CniError::config("podCIDRs must be a list of CIDR strings"))?;
    if items.len() > 2 {
        return Err(CniError::config(format!(
            "podCIDRs has {} ranges: give at most two, one IPv4 and one IPv6",
            items.len()
        )));
    }
    let mut nets = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let s = item.as_str().ok_or_else(|| {
            CniError::config(format!("podCIDRs[{i}] must be a CIDR string, not {item}"))
        })?;
        nets.push(parse_pod_range(&format!("podCIDRs[{i}]"), s)?);
    }
    let ranges = PodRanges::new("podCIDRs", nets)?;
    if let Some(single) = single {
        if !ranges.all().contains(&single) {
            return Err(CniError::config(format!(
                "podCIDR {single} is not one of podCIDRs ({ranges}): give one of the two, or the same range in both"
            )));
        }
    }
    Ok(Some(ranges))
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
        let pod_cidr = config_ranges(plugin.pod_cidr.as_deref(), plugin.pod_cidrs.as_ref())?;
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

    /// The pod ranges: the config's `podCIDR`/`podCIDRs`, else what the agent wrote to
    /// `podCIDRFile`.
    pub fn require_pod_cidr(&self) -> Result<PodRanges> {
        match &self.pod_cidr {
            Some(ranges) => Ok(ranges.clone()),
            None => read_pod_cidr_file(&self.pod_cidr_file),
        }
    }
}

/// The agent writes one line per family ("10.244.1.0/24\nfd00:10:244:1::/112\n"); anything
/// much longer is not its file.
const POD_CIDR_FILE_LIMIT: u64 = 128;

fn read_pod_cidr_file(path: &Path) -> Result<PodRanges> {
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
    let in_file = |e| match e {
        CniError::InvalidConfig(msg) => CniError::config(format!("pod CIDR file {p}: {msg}")),
        e => e,
    };
    let nets = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| parse_pod_range("podCIDR", l))
        .collect::<Result<Vec<_>>>()
        .map_err(in_file)?;
    PodRanges::new(&format!("pod CIDR file {p}"), nets)
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
        let dual = conf(r#"{"cniVersion":"1.1.0","name":"petrel","podCIDRs":["fd00:10:244:1::/112","10.244.1.0/24"]}"#).unwrap();
        let r = dual.require_pod_cidr().unwrap();
        assert_eq!(r.to_string(), "fd00:10:244:1::/112,10.244.1.0/24");
        assert_eq!(r.v4().unwrap().to_string(), "10.244.1.0/24");
        assert_eq!(r.v6().unwrap().to_string(), "fd00:10:244:1::/112");
        let v6 = conf(r#"{"cniVersion":"1.1.0","name":"petrel","podCIDR":"fd00::/64"}"#).unwrap();
        assert_eq!(v6.pod_cidr.unwrap().v4(), None);
        let both = conf(r#"{"cniVersion":"1.1.0","name":"petrel","podCIDR":"10.1.0.0/24","podCIDRs":["10.1.0.0/24","fd00::/64"]}"#).unwrap();
        assert_eq!(both.pod_cidr.unwrap().all().len(), 2);
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
            conf(r#"{"cniVersion":"1.0.0","name":"n","podCIDR":"fd00::/121"}"#)
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
        std::fs::write(&f, "10.1.0.0/24\n10.2.0.0/24\n").unwrap();
        assert!(err().1.contains("two IPv4 ranges"), "{}", err().1);
        std::fs::write(&f, "10.1.0.0/24\nfe80::/64\n").unwrap();
        assert!(err().1.contains("link-local"), "{}", err().1);
        std::fs::write(&f, vec![b'1'; 200]).unwrap();
        assert!(err().1.contains("larger than 128 bytes"), "{}", err().1);
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
            ("banana", "\"banana\" is not an IPv4 CIDR"),
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
    fn an_ipv6_pod_range_is_unicast_its_network_and_120_or_wider() {
        for (cidr, fragment) in [
            ("::/0", "is every IPv6 address"),
            (
                "fd00::/121",
                "is too small: an IPv6 prefix must be /120 or shorter",
            ),
            ("fd00::/128", "too small"),
            ("fd00::1/64", "has host bits set (did you mean fd00::/64?)"),
            ("ff02::/16", "overlaps ff00::/8 (multicast)"),
            ("ff00::/8", "multicast"),
            ("fe80::/64", "overlaps fe80::/10 (link-local)"),
            ("fe80::/10", "link-local"),
            ("::1/128", "too small"),
            ("::/120", "overlaps ::1/128 (loopback)"),
            ("::/64", "loopback"),
            ("::ffff:0:0/96", "overlaps ::ffff:0.0.0.0/96 (IPv4-mapped)"),
            ("::ffff:10.0.0.0/104", "IPv4-mapped"),
            ("fd00::", "is not an IPv6 CIDR"),
            ("fd00:::/64", "is not an IPv6 CIDR"),
        ] {
            let e = parse_pod_range("podCIDRs[1]", cidr).unwrap_err();
            assert_eq!(e.code(), 7, "{cidr}");
            assert!(e.msg().starts_with("podCIDRs[1] "), "{}", e.msg());
            assert!(e.msg().contains(fragment), "{cidr}: {}", e.msg());
        }
        for cidr in [
            "fd00::/120",
            "fd00:10:244:1::/64",
            "2001:db8::/48",
            "fd00::/8",
            "2000::/3",
        ] {
            assert!(
                parse_pod_range("podCIDR", cidr).unwrap().addr().is_ipv6(),
                "{cidr}"
            );
        }
    }

    #[test]
    fn pod_cidrs_is_one_range_per_family() {
        let err = |extra: &str| {
            let e = conf(&format!(r#"{{"cniVersion":"1.1.0","name":"n",{extra}}}"#)).unwrap_err();
            assert_eq!(e.code(), 7, "{extra}");
            e.msg()
        };
        for (extra, msg) in [
            (
                r#""podCIDRs":["10.1.0.0/24","10.2.0.0/24"]"#,
                "podCIDRs has two IPv4 ranges (10.1.0.0/24, 10.2.0.0/24): give at most one per family",
            ),
            (
                r#""podCIDRs":["fd00:1::/64","fd00:2::/64"]"#,
                "podCIDRs has two IPv6 ranges (fd00:1::/64, fd00:2::/64): give at most one per family",
            ),
            (
                r#""podCIDRs":["10.1.0.0/24","fd00::/64","fd01::/64"]"#,
                "podCIDRs has 3 ranges: give at most two, one IPv4 and one IPv6",
            ),
            (r#""podCIDRs":[]"#, "podCIDRs is empty"),
            (
                r#""podCIDRs":"10.1.0.0/24""#,
                "podCIDRs must be a list of CIDR strings",
            ),
            (
                r#""podCIDRs":[24]"#,
                "podCIDRs[0] must be a CIDR string, not 24",
            ),
            (
                r#""podCIDRs":["10.1.0.0/24","fd00::/121"]"#,
                "podCIDRs[1] fd00::/121 is too small: an IPv6 prefix must be /120 or shorter (a /120 holds 254 pods)",
            ),
            (
                r#""podCIDR":"10.9.0.0/24","podCIDRs":["10.1.0.0/24","fd00::/64"]"#,
                "podCIDR 10.9.0.0/24 is not one of podCIDRs (10.1.0.0/24,fd00::/64): give one of the two, or the same range in both",
            ),
            (
                r#""podCIDR":"fd00::/121""#,
                "podCIDR fd00::/121 is too small: an IPv6 prefix must be /120 or shorter (a /120 holds 254 pods)",
            ),
        ] {
            assert_eq!(err(extra), msg);
        }
    }

    #[test]
    fn the_agents_file_may_hold_one_range_per_family() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pod-cidr");
        let c = conf(&format!(
            r#"{{"cniVersion":"1.0.0","name":"n","podCIDRFile":"{}"}}"#,
            f.display()
        ))
        .unwrap();
        for (text, want) in [
            ("10.244.7.0/24\n", "10.244.7.0/24"),
            (
                "10.244.7.0/24\nfd00:10:244:7::/112\n",
                "10.244.7.0/24,fd00:10:244:7::/112",
            ),
            (
                "fd00:10:244:7::/112\n10.244.7.0/24\n",
                "fd00:10:244:7::/112,10.244.7.0/24",
            ),
            ("fd00:10:244:7::/64\n", "fd00:10:244:7::/64"),
            (
                "fd00:1234:5678:9abc:def0:1234:5678:0/112\n255.255.255.0/24\n",
                "",
            ),
        ] {
            std::fs::write(&f, text).unwrap();
            match c.require_pod_cidr() {
                Ok(r) => assert_eq!(r.to_string(), want, "{text:?}"),
                // The longest lines the agent can write fit the file's limit: the error is
                // about the range, not the size.
                Err(e) => assert!(
                    want.is_empty() && e.msg().contains("not a unicast range"),
                    "{}",
                    e.msg()
                ),
            }
        }
        std::fs::write(&f, "fd00:1::/64\nfd00:2::/64\n").unwrap();
        let e = c.require_pod_cidr().unwrap_err();
        assert_eq!(e.code(), 7);
        assert_eq!(
            e.msg(),
            format!(
                "pod CIDR file {} has two IPv6 ranges (fd00:1::/64, fd00:2::/64): give at most one per family",
                f.display()
            )
        );
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
