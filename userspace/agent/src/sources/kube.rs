//! Services, EndpointSlices and Nodes from an API server: one reflector store each (watchers
//! retry with backoff and re-list after the API server returns; meanwhile the stores, and so the
//! datapath, keep the last state), a snapshot published after every event.

use std::{path::Path, sync::Arc, time::Duration};

use futures::StreamExt as _;
use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use kube::runtime::{WatchStreamExt as _, reflector, watcher};
use tokio::sync::Notify;

use super::{Publisher, Snapshot};

/// Watches the API server named by `kubeconfig` (in-cluster configuration when None) and
/// publishes snapshots of what it holds, the first once every kind has listed.
pub async fn watch(kubeconfig: Option<std::path::PathBuf>, node: String, out: Publisher) {
    let client = connect(kubeconfig.as_deref()).await;
    let (services, svc_writer) = reflector::store::<Service>();
    let (slices, slice_writer) = reflector::store::<EndpointSlice>();
    let (nodes, node_writer) = reflector::store::<Node>();
    let svc_events = reflector(
        svc_writer,
        watcher(kube::Api::all(client.clone()), watcher::Config::default()).default_backoff(),
    );
    let slice_events = reflector(
        slice_writer,
        watcher(kube::Api::all(client.clone()), watcher::Config::default()).default_backoff(),
    );
    // Every Node: the others' podCIDRs and addresses are what routing needs. Only spec and
    // addresses are kept: images and managed fields can be most of a Node's size.
    let node_events = reflector(
        node_writer,
        watcher(kube::Api::<Node>::all(client), watcher::Config::default())
            .default_backoff()
            .modify(|n| {
                n.metadata.managed_fields = None;
                n.metadata.annotations = None;
                if let Some(s) = n.status.as_mut() {
                    s.images = None;
                    s.conditions = None;
                    s.volumes_attached = None;
                    s.volumes_in_use = None;
                }
            }),
    );
    // Every event (already applied to its store when the stream yields it) wakes the loop
    // below, which snapshots the stores: a change reaches the datapath as soon as the sync
    // loop's minimum interval allows.
    let changed = Arc::new(Notify::new());
    tokio::spawn(svc_events.for_each(wake(changed.clone())));
    tokio::spawn(slice_events.for_each(wake(changed.clone())));
    tokio::spawn(node_events.for_each(wake(changed.clone())));
    let _ = services.wait_until_ready().await;
    let _ = slices.wait_until_ready().await;
    let _ = nodes.wait_until_ready().await;
    tracing::info!(%node, "Services, EndpointSlices and Nodes listed: programming");
    loop {
        out.send_replace(Some(Arc::new(Snapshot {
            services: services.state(),
            slices: slices.state(),
            nodes: nodes.state(),
            manifest_errors: 0,
        })));
        changed.notified().await;
    }
}

/// A stream callback that only wakes whoever waits on `notify`.
fn wake<T>(notify: Arc<Notify>) -> impl FnMut(T) -> futures::future::Ready<()> {
    move |_| {
        notify.notify_one();
        futures::future::ready(())
    }
}

/// A client of a reachable API server: an unreachable one at start is retried with backoff, not
/// a crash.
pub(crate) async fn connect(kubeconfig: Option<&Path>) -> kube::Client {
    let mut delay = Duration::from_millis(500);
    loop {
        match client(kubeconfig).await {
            Ok(c) => return c,
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "cannot reach the API server");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}

async fn client(
    kubeconfig: Option<&Path>,
) -> Result<kube::Client, Box<dyn std::error::Error + Send + Sync>> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await?
        }
        None => kube::Config::incluster()?,
    };
    let client = kube::Client::try_from(config)?;
    client.apiserver_version().await?;
    Ok(client)
}
