//! A real Kubernetes v1.20.2 cluster for the real-cluster tests, through the same script as
//! `cargo xtask cluster` (tests/realnode/cluster.sh) under a name of its own: control plane, and
//! per node a network namespace, a mount namespace (the node's own /etc/cni/net.d, /opt/cni/bin,
//! /var/lib/petrel, bpffs, ...), containerd and kubelet. Dropping it removes everything, also
//! when a test fails half-way.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

/// A running cluster; `cluster.sh down` on drop.
pub struct RealCluster {
    name: String,
    dir: PathBuf,
    kube_bin: PathBuf,
    nodes: u32,
}

/// tests/realnode in this repository.
pub fn realnode_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../realnode")
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl RealCluster {
    /// Builds the images from `release` (petrel-agent, petrel-cni, netctl, petrel-pod), brings up
    /// a cluster of `nodes` nodes and imports the images into every node. Needs the v1.20.2
    /// binaries in `$PETREL_KUBE_BIN` (`cargo xtask setup` builds them; `cargo xtask test` sets it).
    pub fn up(nodes: u32, release: &Path) -> RealCluster {
        crate::require_root();
        let kube_bin = PathBuf::from(std::env::var_os("PETREL_KUBE_BIN").expect(
            "PETREL_KUBE_BIN is not set: run the real-cluster tests with `cargo xtask test`",
        ));
        let name = crate::unique("pt");
        let cluster = RealCluster {
            dir: PathBuf::from(format!("/tmp/{name}-cluster")),
            name,
            kube_bin,
            nodes,
        };
        // The guard exists before anything is made, so a failed `up` is torn down too.
        let images = cluster.dir.with_extension("images");
        run_ok(
            Command::new("bash")
                .arg(realnode_dir().join("image.sh"))
                .arg(&images)
                .arg(release)
                .arg(realnode_dir().join("../..")),
        );
        cluster.script(&["up", &nodes.to_string()]);
        let mut import = vec!["import".to_string()];
        for t in ["pause.tar", "petrel.tar", "pod.tar"] {
            import.push(images.join(t).to_string_lossy().into_owned());
        }
        let import: Vec<&str> = import.iter().map(String::as_str).collect();
        cluster.script(&import);
        let _ = std::fs::remove_dir_all(&images);
        cluster
    }

    fn script_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("bash");
        cmd.arg(realnode_dir().join("cluster.sh"))
            .args(args)
            .env("CLUSTER", &self.name)
            .env("CLUSTER_DIR", &self.dir)
            .env("KUBE_BIN", &self.kube_bin);
        cmd
    }

    fn script(&self, args: &[&str]) -> String {
        run_ok(&mut self.script_cmd(args))
    }

    /// Stops node `i`'s kubelet and starts it again (its pods keep running meanwhile).
    pub fn restart_kubelet(&self, i: u32) {
        self.script(&["restart-kubelet", &i.to_string()]);
    }

    /// Names image `src` also `dst` on every node.
    pub fn tag_image(&self, src: &str, dst: &str) {
        self.script(&["tag", src, dst]);
    }

    /// The name of node `i` (1-based), as in its Node object.
    pub fn node(&self, i: u32) -> String {
        format!("{}-node{i}", self.name)
    }

    /// Node `i`'s address on the underlay.
    pub fn node_ip(&self, i: u32) -> String {
        format!("10.200.0.{i}")
    }

    /// How many nodes.
    pub fn nodes(&self) -> u32 {
        self.nodes
    }

    /// kubectl against the cluster, to be run.
    pub fn kubectl_command(&self, args: &[&str]) -> Command {
        let mut all = vec!["kubectl"];
        all.extend(args);
        self.script_cmd(&all)
    }

    /// kubectl against the cluster.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_command(args)
            .output()
            .expect("running cluster.sh kubectl")
    }

    /// kubectl that must succeed; its stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let mut all = vec!["kubectl"];
        all.extend(args);
        self.script(&all)
    }

    /// `kubectl apply -f -` of `yaml`.
    pub fn apply(&self, yaml: &str) {
        let mut child = self
            .script_cmd(&["kubectl", "apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running kubectl apply");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(yaml.as_bytes())
            .expect("writing the manifest");
        let out = child.wait_with_output().expect("kubectl apply");
        assert!(
            out.status.success(),
            "kubectl apply failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A command in node `i`'s network and mount namespaces (what a shell on the node sees).
    pub fn on_node(&self, i: u32, program: &str, args: &[&str]) -> Output {
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.node(i)))
            .arg(format!("--mount={}/ns/node{i}", self.dir.display()))
            .arg(program)
            .args(args)
            .output()
            .expect("running nsenter")
    }

    /// A command in the hub namespace: outside the cluster, on the nodes' network.
    pub fn outside(&self, program: &Path, args: &[&str]) -> Output {
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}-hub", self.name))
            .arg(program)
            .args(args)
            .output()
            .expect("running nsenter")
    }

    /// The cgroup2 folder of node `i` (socket-LB is attached there).
    pub fn node_cgroup(&self, i: u32) -> PathBuf {
        let mounts = std::fs::read_to_string("/proc/mounts").expect("/proc/mounts");
        let root = mounts
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.get(2) == Some(&"cgroup2")).then(|| f[1].to_string())
            })
            .expect("a cgroup2 mount");
        Path::new(&root).join(self.node(i))
    }

    /// Waits until `check` returns Some, at most `timeout`; panics with `what` and the last
    /// value otherwise.
    pub fn wait<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut() -> Option<T>,
    ) -> T {
        let start = Instant::now();
        loop {
            if let Some(v) = check() {
                return v;
            }
            assert!(
                start.elapsed() < timeout,
                "timed out after {timeout:?} waiting for {what}\n{}",
                self.script_cmd(&["status"])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for RealCluster {
    fn drop(&mut self) {
        match self.script_cmd(&["down"]).output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "cleanup: cluster.sh down failed: {}",
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("cleanup: cluster.sh down: {e}"),
        }
        let _ = std::fs::remove_dir_all(self.dir.with_extension("images"));
    }
}
