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

/// The cluster `cargo xtask cluster` manages (the tests and `cargo xtask conformance` make their
/// own, with other names).
pub const NAME: &str = "petrel";

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

/// `tests/realnode/cluster.sh ARGS` for cluster `name`.
pub fn cluster_sh(env: &Env, root: &Path, name: &str, args: &[&str]) -> anyhow::Result<()> {
    let kube_bin = env.kube_bin.to_string_lossy().into_owned();
    let mut all = vec![script(root, "cluster.sh")];
    all.extend(args.iter().map(ToString::to_string));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    crate::run_with(
        env,
        &[("CLUSTER", name), ("KUBE_BIN", &kube_bin)],
        "bash",
        &all,
    )
}

/// The image archives, in the order they are imported (agnhost's when it was built).
fn image_archives(env: &Env) -> Vec<String> {
    ["pause.tar", "petrel.tar", "pod.tar", "agnhost.tar"]
        .iter()
        .map(|t| images_dir(env).join(t))
        .filter(|t| t.exists())
        .map(|t| t.to_string_lossy().into_owned())
        .collect()
}

/// The static agnhost `cargo xtask conformance` builds, if it was built.
fn agnhost(env: &Env) -> Option<PathBuf> {
    Some(env.kube_bin.join("agnhost")).filter(|p| p.exists())
}

/// Builds petrel's image, the test workload's, pause, and the e2e tests' agnhost once
/// `cargo xtask conformance` built its binary (release binaries first), and imports them into
/// every node of the running cluster, if there is one.
pub fn image(env: &Env, root: &Path) -> anyhow::Result<()> {
    build_images(env, root)?;
    if Path::new(&format!("/tmp/{NAME}-cluster")).exists() {
        import(env, root, NAME)?;
    }
    Ok(())
}

pub fn build_images(env: &Env, root: &Path) -> anyhow::Result<()> {
    crate::build_bins(env, &["petrel-testbed"], &[])?;
    let out = images_dir(env).to_string_lossy().into_owned();
    let release = env.target_dir.join("release");
    let release = release.to_str().context("non-UTF-8 target dir")?;
    let root_s = root.to_str().context("non-UTF-8 repository path")?;
    let agnhost = agnhost(env).map(|p| p.to_string_lossy().into_owned());
    let porter = env
        .kube_bin
        .join("../work/kubernetes-1.20.2/test/images/agnhost/porter")
        .to_string_lossy()
        .into_owned();
    let mut vars = vec![];
    if let Some(a) = &agnhost {
        vars.extend([
            ("AGNHOST", a.as_str()),
            ("AGNHOST_PORTER_DIR", porter.as_str()),
        ]);
    }
    crate::run_with(
        env,
        &vars,
        "bash",
        &[&script(root, "image.sh"), &out, release, root_s],
    )
}

fn import(env: &Env, root: &Path, name: &str) -> anyhow::Result<()> {
    let archives = image_archives(env);
    let mut args = vec!["import"];
    args.extend(archives.iter().map(String::as_str));
    cluster_sh(env, root, name, &args)
}

pub fn up(env: &Env, root: &Path, nodes: u32, petrel: bool) -> anyhow::Result<()> {
    crate::require_root("cargo xtask cluster up")?;
    let started = Instant::now();
    build_images(env, root)?;
    up_named(env, root, NAME, nodes, petrel)?;
    eprintln!(
        "cluster up in {:.0} s: `cargo xtask cluster kubectl ...`, `cargo xtask cluster down`",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Brings cluster `name` up from the images already built, with petrel installed or not.
pub fn up_named(
    env: &Env,
    root: &Path,
    name: &str,
    nodes: u32,
    petrel: bool,
) -> anyhow::Result<()> {
    let nodes = nodes.to_string();
    cluster_sh(env, root, name, &["up", &nodes])?;
    import(env, root, name)?;
    if petrel {
        let overlay = root.join("tests/realnode/overlay");
        let overlay = overlay.to_str().context("non-UTF-8 repository path")?;
        cluster_sh(env, root, name, &["kubectl", "apply", "-k", overlay])?;
        cluster_sh(
            env,
            root,
            name,
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
            name,
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
    cluster_sh(env, root, name, &["status"])
}

pub fn down(env: &Env, root: &Path) -> anyhow::Result<()> {
    crate::require_root("cargo xtask cluster down")?;
    cluster_sh(env, root, NAME, &["down"])
}

pub fn kubectl(env: &Env, root: &Path, args: &[String]) -> anyhow::Result<()> {
    let mut all = vec!["kubectl"];
    all.extend(args.iter().map(String::as_str));
    cluster_sh(env, root, NAME, &all)
}
