//! petrel-agent: the node agent, in place of kube-proxy. Watches Services, EndpointSlices and its
//! Node (or reads them from a folder of manifests in standalone mode), computes the desired
//! datapath state and applies it to the pinned eBPF maps; serves metrics and health.
//!
//! On SIGTERM it exits and leaves the datapath in place (pinned maps and links keep serving);
//! the next agent adopts what the pins hold. `--cleanup` removes everything petrel installed.

use anyhow::Context as _;
use petrel_agent::{agent, cli::Cli, cni_files, logging, routing::kernel as routes};
use petrel_datapath::Datapath;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::load()?;
    logging::init(cli.log_format);
    if cli.install_cni {
        return install_cni(&cli);
    }
    if cli.cleanup {
        return cleanup(&cli).await;
    }
    agent::run(&cli).await
}

/// The DaemonSet's init container: petrel-cni (next to this binary) into --cni-bin-dir.
fn install_cni(cli: &Cli) -> anyhow::Result<()> {
    let src = std::env::current_exe()
        .context("locating petrel-agent")?
        .with_file_name("petrel-cni");
    let dst = cni_files::install_binary(&src, &cli.cni_bin_dir).with_context(|| {
        let (src, dir) = (src.display(), cli.cni_bin_dir.display());
        format!("installing {src} into {dir}")
    })?;
    tracing::info!(plugin = %dst.display(), "petrel-cni installed");
    Ok(())
}

/// Uninstalling: petrel's pins (so every attached program), the routes and the overlay device.
/// The bpffs root is checked first (bpffs, petrel's layout only: see petrel_datapath::cleanup);
/// a refusal exits non-zero before anything, routes included, is removed.
async fn cleanup(cli: &Cli) -> anyhow::Result<()> {
    let root = &cli.bpffs_root;
    petrel_datapath::cleanup::plan(root)?;
    let removed = Datapath::remove(root)?;
    let pins: Vec<String> = removed
        .pins
        .iter()
        .filter_map(|p| p.strip_prefix(root).ok())
        .map(|p| p.display().to_string())
        .collect();
    let dirs: Vec<String> = removed
        .dirs
        .iter()
        .map(|d| d.display().to_string())
        .collect();
    tracing::info!(
        root = %root.display(),
        pins = pins.len(),
        removed = pins.join(" "),
        dirs_removed = dirs.join(" "),
        "removed petrel's pins by name: programs detached, maps freed"
    );
    let routes = tokio::task::spawn_blocking(routes::remove_all)
        .await
        .context("removing petrel's routes")?
        .context("removing petrel's routes")?;
    tracing::info!(
        routes,
        device = routes::VXLAN_IFNAME,
        "removed petrel's routes (protocol 112) and overlay device"
    );
    Ok(())
}
