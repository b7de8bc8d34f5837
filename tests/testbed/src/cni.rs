//! Driving the real `petrel-cni` binary (and Debian's reference plugins) the way a container
//! runtime does: CNI_* in the environment, the config on stdin, run inside a node namespace.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use serde_json::Value;

use crate::netns::NetNs;

/// Where Debian's containernetworking-plugins puts the reference plugins.
pub const REFERENCE_PLUGINS: &str = "/usr/lib/cni";

/// The `petrel-cni` binary: $PETREL_CNI_BIN, else next to the running test in target/release.
pub fn plugin_bin() -> PathBuf {
    crate::workspace_bin("petrel-cni", "PETREL_CNI_BIN")
}

/// What one plugin call returned.
#[derive(Debug)]
pub struct Outcome {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {:?} / stderr {}",
                self.stdout, self.stderr
            )
        })
    }

    /// Panics unless the call succeeded.
    pub fn ok(self) -> Outcome {
        assert_eq!(
            self.code, 0,
            "plugin failed: stdout {} stderr {}",
            self.stdout, self.stderr
        );
        self
    }

    /// Asserts a spec error object with `code`, exit 1; returns its msg.
    pub fn error_code(&self, code: u64) -> String {
        assert_eq!(self.code, 1, "expected failure, got {self:?}");
        let v = self.json();
        assert_eq!(v["code"].as_u64(), Some(code), "error object {v}");
        assert!(
            v["cniVersion"].is_string() && v["msg"].is_string() && v.get("details").is_some(),
            "error object shape {v}"
        );
        v["msg"].as_str().unwrap_or_default().to_string()
    }
}

/// One CNI invocation.
pub struct Call<'a> {
    pub plugin: PathBuf,
    pub command: &'a str,
    pub container_id: &'a str,
    pub ifname: &'a str,
    pub netns: Option<PathBuf>,
    pub extra_env: Vec<(String, String)>,
}

impl Call<'_> {
    /// Starts the call inside `node` (the plugin's "host" namespace).
    pub fn spawn(&self, node: &NetNs, stdin: &str) -> Child {
        let mut child = self.command(node).spawn().expect("spawn plugin");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes())
            .expect("write stdin");
        child
    }

    /// The call as a process not yet started (stdin, stdout and stderr piped), for a test that
    /// sets what `Call` cannot (a variable that is not UTF-8).
    pub fn command(&self, node: &NetNs) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", node.path().display()))
            .arg("--")
            .arg(&self.plugin)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", self.command)
            .env("CNI_CONTAINERID", self.container_id)
            .env("CNI_IFNAME", self.ifname)
            .env("CNI_PATH", REFERENCE_PLUGINS)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(ns) = &self.netns {
            cmd.env("CNI_NETNS", ns);
        }
        for (k, v) in &self.extra_env {
            cmd.env(k, v);
        }
        cmd
    }

    pub fn run(&self, node: &NetNs, stdin: &str) -> Outcome {
        let out = self
            .spawn(node, stdin)
            .wait_with_output()
            .expect("wait plugin");
        Outcome {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).trim().to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).to_string(),
        }
    }
}

/// Host-side links petrel created in `node`.
pub fn petrel_links(node: &NetNs) -> Vec<String> {
    let out = node.exec("ip", &["-o", "link", "show"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .filter(|n| n.starts_with("pet") || n.starts_with("tmp"))
        .collect()
}

/// Reservation files (IPs, IPv4 and IPv6) in an IPAM folder of network `name`.
pub fn reservations(data_dir: &Path, name: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(data_dir.join(name))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// ADD of container `id` with plugin config `conf`, called from `node`, into a new pod
/// namespace: the namespace and the IPv4 address the plugin gave (panics when the call fails).
pub fn add_pod(node: &NetNs, conf: &str, id: &str, ns_prefix: &str) -> (NetNs, std::net::Ipv4Addr) {
    let pod = NetNs::new(&crate::unique(ns_prefix));
    let result = Call {
        plugin: plugin_bin(),
        command: "ADD",
        container_id: id,
        ifname: "eth0",
        netns: Some(pod.path()),
        extra_env: Vec::new(),
    }
    .run(node, conf)
    .ok()
    .json();
    let ip = result["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no IP in the CNI result {result}"));
    (pod, ip)
}
