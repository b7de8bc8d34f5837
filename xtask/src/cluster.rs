//! `cargo xtask cluster` and `cargo xtask image`: a real Kubernetes v1.20.2 cluster on this
//! machine (tests/realnode/cluster.sh: control plane, and per node a network and mount namespace
//! with its own containerd and kubelet), petrel's image built without a registry
//! (tests/realnode/image.sh) and imported into every node, and petrel installed the way users
//! install it: `kubectl apply -k tests/realnode/overlay`.

use std::{
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::Context as _;

use crate::setup::Env;

/// The cluster `cargo xtask cluster` manages (the tests make their own, with other names).
const NAME: &str = "petrel";

fn script(root: &Path, name: &str) -> String {
    root.join("tests/realnode")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

/// Where `cargo xtask image` writes the image archives.
pub fn images_dir(env: &Env) -> PathBuf {
    env.target_dir.join("realnode-images")
}

fn cluster_sh(env: &Env, root: &Path, args: &[&str]) -> anyhow::Result<()> {
    let kube_bin = env.kube_bin.to_string_lossy().into_owned();
    let mut all = vec![script(root, "cluster.sh")];
    all.extend(args.iter().map(ToString::to_string));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    crate::run_with(
        env,
        &[("CLUSTER", NAME), ("KUBE_BIN", &kube_bin)],
        "bash",
        &all,
    )
}

/// The image archives, in the order they are imported.
fn image_archives(env: &Env) -> Vec<String> {
    ["pause.tar", "petrel.tar", "pod.tar"]
        .iter()
        .map(|t| images_dir(env).join(t).to_string_lossy().into_owned())
        .collect()
}

/// Builds petrel's image, the test workload's and pause (release binaries first), and imports
/// them into every node of the running cluster, if there is one.
pub fn image(env: &Env, root: &Path) -> anyhow::Result<()> {
    crate::build_bins(env, &["petrel-testbed"], &[])?;
    let out = images_dir(env).to_string_lossy().into_owned();
    let release = env.target_dir.join("release");
    let release = release.to_str().context("non-UTF-8 target dir")?;
    let root_s = root.to_str().context("non-UTF-8 repository path")?;
    crate::run(
        env,
        "bash",
        &[&script(root, "image.sh"), &out, release, root_s],
    )?;
    if Path::new(&format!("/tmp/{NAME}-cluster")).exists() {
        let archives = image_archives(env);
        let mut args = vec!["import"];
        args.extend(archives.iter().map(String::as_str));
        cluster_sh(env, root, &args)?;
    }
    Ok(())
}

pub fn up(env: &Env, root: &Path, nodes: u32, petrel: bool) -> anyhow::Result<()> {
    crate::require_root("cargo xtask cluster up")?;
    let started = Instant::now();
    image(env, root)?;
    let nodes = nodes.to_string();
    cluster_sh(env, root, &["up", &nodes])?;
    let archives = image_archives(env);
    let mut args = vec!["import"];
    args.extend(archives.iter().map(String::as_str));
    cluster_sh(env, root, &args)?;
    if petrel {
        let overlay = root.join("tests/realnode/overlay");
        let overlay = overlay.to_str().context("non-UTF-8 repository path")?;
        cluster_sh(env, root, &["kubectl", "apply", "-k", overlay])?;
        cluster_sh(
            env,
            root,
            &[
                "kubectl",
                "-n",
                "petrel-system",
                "rollout",
                "status",
                "ds/petrel-agent",
                "--timeout=300s",
            ],
        )?;
        cluster_sh(
            env,
            root,
            &[
                "kubectl",
                "wait",
                "--for=condition=Ready",
                "node",
                "--all",
                "--timeout=120s",
            ],
        )?;
    }
    cluster_sh(env, root, &["status"])?;
    eprintln!(
        "cluster up in {:.0} s: `cargo xtask cluster kubectl ...`, `cargo xtask cluster down`",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

pub fn down(env: &Env, root: &Path) -> anyhow::Result<()> {
    crate::require_root("cargo xtask cluster down")?;
    cluster_sh(env, root, &["down"])
}

pub fn kubectl(env: &Env, root: &Path, args: &[String]) -> anyhow::Result<()> {
    let mut all = vec!["kubectl"];
    all.extend(args.iter().map(String::as_str));
    cluster_sh(env, root, &all)
}
