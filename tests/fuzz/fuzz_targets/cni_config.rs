//! petrel-cni's parsing: the CNI_* environment and the network configuration on stdin, through
//! the same public functions the plugin's `run` calls before it does any netlink or IPAM work.
//!
//! Input (text, so the seeds are real configurations): `KEY=VALUE` lines (the environment; a
//! value may be any bytes), an empty line, then stdin. The key `@podCIDRFile` is not an
//! environment variable: its value is the content of the agent's pod CIDR file, which the config
//! parser reads when the config has no `podCIDR` (no such key: the file does not exist).
//!
//! Checked: nothing panics; every error has a code of the CNI spec or petrel's own, and its JSON
//! is an object with that code and a message; a config that parses yields a result that
//! serialises (ADD prints one built from it); VERSION answers one JSON object.
#![no_main]

use std::{collections::HashMap, path::PathBuf, sync::OnceLock};

use libfuzzer_sys::fuzz_target;
use petrel_cni::{
    config::{self, NetConf},
    env::Command,
    error::CniError,
    plugin,
};

const POD_CIDR_KEY: &str = "@podCIDRFile";

/// Codes a petrel-cni error may carry (cni-plugin/src/error.rs `code`).
const CODES: [u32; 14] = [1, 2, 3, 4, 5, 6, 7, 11, 50, 51, 100, 101, 102, 103];

struct Input {
    env: HashMap<String, String>,
    pod_cidr_file: Option<Vec<u8>>,
    stdin: Vec<u8>,
}

fn split(data: &[u8]) -> Input {
    let (head, stdin) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (&[][..], data),
    };
    let mut env = HashMap::new();
    let mut pod_cidr_file = None;
    for line in head.split(|&b| b == b'\n') {
        let Some(eq) = line.iter().position(|&b| b == b'=') else {
            continue;
        };
        let (k, v) = (&line[..eq], &line[eq + 1..]);
        if k == POD_CIDR_KEY.as_bytes() {
            pod_cidr_file = Some(v.to_vec());
            continue;
        }
        // WARNING: petrel_cni::run takes UTF-8 strings today; a non-UTF-8 value reaches it the
        // way a lossy conversion would give it (main.rs decides how real bytes are turned away).
        env.insert(
            String::from_utf8_lossy(k).into_owned(),
            String::from_utf8_lossy(v).into_owned(),
        );
    }
    Input {
        env,
        pod_cidr_file,
        stdin: stdin.to_vec(),
    }
}

/// The pod CIDR file every parse is pointed at, in a folder of this process's own.
fn pod_cidr_path() -> &'static PathBuf {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = DIR.get_or_init(|| {
            tempfile::Builder::new()
                .prefix("petrel-fuzz-cni-")
                .tempdir()
                .expect("temporary folder")
        });
        dir.path().join("pod-cidr")
    })
}

/// stdin with `podCIDRFile` pointed at our file whenever the parser could read a file (the
/// config is an object without a string `podCIDR`): it never opens a path the input names
/// (a FIFO or /dev/zero there would hang or exhaust the fuzzer, not find a parser bug).
fn sandboxed(stdin: &[u8]) -> Vec<u8> {
    let Ok(serde_json::Value::Object(mut obj)) = serde_json::from_slice(stdin) else {
        return stdin.to_vec();
    };
    if obj.get("podCIDR").is_some_and(serde_json::Value::is_string) {
        return stdin.to_vec();
    }
    let path = pod_cidr_path()
        .to_str()
        .expect("UTF-8 temp path")
        .to_string();
    obj.insert("podCIDRFile".into(), path.into());
    serde_json::to_vec(&obj).expect("a JSON object serialises")
}

fn check_error(e: &CniError, stdin: &[u8]) {
    let code = e.code();
    assert!(
        CODES.contains(&code),
        "undocumented error code {code}: {e:?}"
    );
    let version = config::version_hint(stdin);
    assert!(
        config::SUPPORTED_VERSIONS.contains(&version.as_str()),
        "version hint {version:?}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&e.to_json(&version)).expect("the error JSON parses");
    assert_eq!(json["code"], code, "{json}");
    assert_eq!(json["cniVersion"], version.as_str(), "{json}");
    assert!(
        json["msg"].as_str().is_some_and(|m| !m.is_empty()),
        "error without a message: {json}"
    );
}

fuzz_target!(|data: &[u8]| {
    let input = split(data);
    match &input.pod_cidr_file {
        Some(content) => std::fs::write(pod_cidr_path(), content).expect("write pod CIDR file"),
        None => match std::fs::remove_file(pod_cidr_path()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => panic!("remove: {e}"),
            _ => {}
        },
    }

    match Command::from_env(&input.env) {
        Ok(cmd) => {
            if let Some(a) = &cmd.attachment {
                // What the verbs build names from: validated, so a file name and an interface
                // name of at most 15 bytes.
                assert!(!a.container_id.is_empty() && !a.container_id.contains('/'));
                assert!(!a.ifname.is_empty() && a.ifname.len() <= 15);
                let host_if = petrel_cni::link::host_ifname(&a.container_id, &a.ifname);
                assert!(host_if.len() <= 15, "host interface name {host_if:?}");
            }
            if cmd.verb == petrel_cni::env::Verb::Version {
                // VERSION does no I/O: the whole plugin can run it.
                let mut out = Vec::new();
                let rc = petrel_cni::run(&input.env, &input.stdin, &mut out);
                assert_eq!(rc, 0);
                let v: serde_json::Value = serde_json::from_slice(&out).expect("VERSION JSON");
                assert!(v["supportedVersions"].is_array(), "{v}");
            }
        }
        Err(e) => check_error(&e, &input.stdin),
    }

    let stdin = sandboxed(&input.stdin);
    match NetConf::parse(&stdin) {
        Ok(conf) => {
            assert!(config::SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()));
            assert!((576..=65535).contains(&conf.mtu));
            match conf.require_pod_cidr() {
                Ok(ranges) => {
                    assert!((1..=2).contains(&ranges.all().len()));
                    for net in ranges.all() {
                        let max = if net.addr().is_ipv4() { 29 } else { 120 };
                        assert!(net.prefix_len() <= max && net.network() == net.addr());
                    }
                }
                Err(e) => check_error(&e, &stdin),
            }
            match plugin::prev_result(&conf) {
                Ok(prev) => {
                    let result = prev.unwrap_or_default().in_version(&conf.cni_version);
                    serde_json::to_string(&result).expect("a result serialises");
                }
                Err(e) => check_error(&e, &stdin),
            }
        }
        Err(e) => check_error(&e, &stdin),
    }
});
