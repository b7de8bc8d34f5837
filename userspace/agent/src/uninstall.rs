//! Uninstalling with the DaemonSet: when the DaemonSet the agent runs in is deleted (`kubectl
//! delete -k deploy/`), the agent that stops removes what petrel put on the node; a restart or a
//! rolling update (the DaemonSet still there) keeps everything, so traffic never stops.
//!
//! The agent watches its DaemonSet while it runs and remembers whether it saw it go: by the time
//! the pods get SIGTERM (the garbage collector deletes them after their DaemonSet), the RBAC
//! objects and the ServiceAccount may be gone too, so a question asked only then could not be
//! answered. It still asks once at SIGTERM, in case the watch had not delivered the deletion yet;
//! an answer it cannot get keeps the node as it is (a datapath left in place is safe, a datapath
//! removed under a running cluster is not).

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::DaemonSet;
use kube::runtime::{WatchStreamExt as _, watcher};
use petrel_datapath::Datapath;

use crate::{cli::Cli, routing::kernel as routes};

/// The DaemonSet to follow, from `--owner-daemonset NAMESPACE/NAME`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub namespace: String,
    pub name: String,
}

impl std::str::FromStr for Owner {
    type Err = String;
    fn from_str(s: &str) -> Result<Owner, String> {
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(Owner {
                    namespace: ns.to_string(),
                    name: name.to_string(),
                })
            }
            _ => Err(format!("expected NAMESPACE/NAME, got {s:?}")),
        }
    }
}

/// Whether the owner DaemonSet was seen deleted (or being deleted).
#[derive(Clone)]
pub struct Watch {
    owner: Owner,
    /// Set once the API server answered.
    client: Arc<std::sync::Mutex<Option<kube::Client>>>,
    deleted: Arc<AtomicBool>,
}

/// What one watch event says about the DaemonSet: Some(true) deleted, Some(false) present.
fn verdict(event: &watcher::Event<DaemonSet>, seen_in_list: &mut bool) -> Option<bool> {
    match event {
        watcher::Event::Apply(ds) | watcher::Event::InitApply(ds) => {
            *seen_in_list = true;
            Some(ds.metadata.deletion_timestamp.is_some())
        }
        watcher::Event::Delete(_) => Some(true),
        watcher::Event::Init => {
            *seen_in_list = false;
            None
        }
        // A re-list without it: deleted while the watch was down.
        watcher::Event::InitDone => (!*seen_in_list).then_some(true),
    }
}

impl Watch {
    /// Starts following `owner` on the API server of `kubeconfig` (in-cluster when None).
    /// Before the first list completes nothing counts as deleted.
    pub fn start(kubeconfig: Option<std::path::PathBuf>, owner: Owner) -> Watch {
        let w = Watch {
            owner,
            client: Arc::default(),
            deleted: Arc::new(AtomicBool::new(false)),
        };
        let config = watcher::Config::default().fields(&format!("metadata.name={}", w.owner.name));
        let deleted = w.deleted.clone();
        let owner = w.owner.clone();
        let slot = w.client.clone();
        tokio::spawn(async move {
            let client = crate::sources::kube::connect(kubeconfig.as_deref()).await;
            *slot
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(client.clone());
            let api = kube::Api::<DaemonSet>::namespaced(client, &owner.namespace);
            let mut seen = false;
            let mut first_list = true;
            let mut events = watcher(api, config).default_backoff().boxed();
            while let Some(event) = events.next().await {
                let Ok(event) = event else { continue };
                let done = matches!(event, watcher::Event::InitDone);
                // The first list finding nothing means the agent does not run in that
                // DaemonSet (or it is already gone): nothing to follow, nothing decided.
                let v = verdict(&event, &mut seen);
                if done && first_list && !seen {
                    tracing::warn!(namespace = %owner.namespace, name = %owner.name,
                        "--owner-daemonset not found: uninstalling with it is off");
                    first_list = false;
                    continue;
                }
                first_list &= !done;
                if let Some(d) = v {
                    if d && !deleted.load(Ordering::Relaxed) {
                        tracing::info!(namespace = %owner.namespace, name = %owner.name,
                            "the DaemonSet was deleted: petrel is removed from this node when this agent stops");
                    }
                    deleted.store(d, Ordering::Relaxed);
                }
            }
        });
        w
    }

    /// At SIGTERM: was the DaemonSet deleted? The watch's answer, else one direct question
    /// (404, or a deletionTimestamp). Anything unknown is "no".
    pub async fn deleted(&self) -> bool {
        if self.deleted.load(Ordering::Relaxed) {
            return true;
        }
        let client = self
            .client
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let Some(client) = client else {
            tracing::warn!("never reached the API server: petrel stays on this node");
            return false;
        };
        let api = kube::Api::<DaemonSet>::namespaced(client, &self.owner.namespace);
        match tokio::time::timeout(Duration::from_secs(3), api.get_opt(&self.owner.name)).await {
            Ok(Ok(None)) => true,
            Ok(Ok(Some(ds))) => ds.metadata.deletion_timestamp.is_some(),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot tell whether the DaemonSet was deleted: petrel stays on this node");
                false
            }
            Err(_) => {
                tracing::warn!("no answer about the DaemonSet in 3 s: petrel stays on this node");
                false
            }
        }
    }
}

/// Removes what petrel put on this node: every pin (so every program is detached once this
/// process exits), petrel's routes and overlay device, the conflist and the pod CIDR file. The
/// petrel-cni binary and the IPAM store stay: pods it wired are still torn down through them.
/// Every step is tried; the errors are logged, the first is returned.
pub async fn remove_from_node(cli: &Cli) -> anyhow::Result<()> {
    let mut first: Option<anyhow::Error> = None;
    let mut note = |what: &str, r: anyhow::Result<()>| {
        if let Err(e) = r {
            tracing::error!(error = format!("{e:#}"), "uninstall: {what}");
            first.get_or_insert(e);
        }
    };
    note(
        "removing the pins",
        Datapath::remove(&cli.bpffs_root)
            .map(drop)
            .map_err(Into::into),
    );
    let routes = tokio::task::spawn_blocking(routes::remove_all).await;
    note(
        "removing the routes",
        match routes {
            Ok(Ok(n)) => {
                tracing::info!(
                    routes = n,
                    "uninstall: removed petrel's routes and overlay device"
                );
                Ok(())
            }
            Ok(Err(e)) => Err(e.into()),
            Err(e) => Err(e.into()),
        },
    );
    for file in [&cli.cni_conf_file, &cli.pod_cidr_file] {
        if !file.as_os_str().is_empty() {
            note("removing a file", remove_file(file));
        }
    }
    tracing::info!(root = %cli.bpffs_root.display(), "uninstall: petrel removed from this node");
    first.map_or(Ok(()), Err)
}

fn remove_file(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {
            tracing::info!(file = %path.display(), "uninstall: removed");
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(anyhow::Error::new(e).context(format!("removing {}", path.display()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ds(deleting: bool) -> DaemonSet {
        let mut d = DaemonSet::default();
        if deleting {
            d.metadata.deletion_timestamp = Some(
                k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Default::default()),
            );
        }
        d
    }

    #[test]
    fn owner_parses_namespace_and_name() {
        assert_eq!(
            "petrel-system/petrel-agent".parse::<Owner>(),
            Ok(Owner {
                namespace: "petrel-system".into(),
                name: "petrel-agent".into()
            })
        );
        for bad in ["petrel-agent", "/x", "x/", "a/b/c", ""] {
            assert!(bad.parse::<Owner>().is_err(), "{bad}");
        }
    }

    #[test]
    fn deletion_is_a_delete_event_a_deletion_timestamp_or_a_relist_without_it() {
        let mut seen = false;
        assert_eq!(verdict(&watcher::Event::Init, &mut seen), None);
        assert_eq!(
            verdict(&watcher::Event::InitApply(ds(false)), &mut seen),
            Some(false)
        );
        assert_eq!(verdict(&watcher::Event::InitDone, &mut seen), None);
        assert_eq!(
            verdict(&watcher::Event::Apply(ds(true)), &mut seen),
            Some(true)
        );
        assert_eq!(
            verdict(&watcher::Event::Delete(ds(false)), &mut seen),
            Some(true)
        );
        // Re-created (same name): present again.
        assert_eq!(
            verdict(&watcher::Event::Apply(ds(false)), &mut seen),
            Some(false)
        );
        // A re-list that no longer has it.
        assert_eq!(verdict(&watcher::Event::Init, &mut seen), None);
        assert_eq!(verdict(&watcher::Event::InitDone, &mut seen), Some(true));
    }
}
