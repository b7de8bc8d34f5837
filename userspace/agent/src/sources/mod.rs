//! Where the agent's inputs come from: an API server (`kube`) or a folder of manifests
//! (`manifests`). Either publishes whole `Snapshot`s on a watch channel; the channel holds None
//! until every list is done, so nothing is programmed from a partial view (a restart would
//! briefly drop the services not listed yet).

use std::sync::Arc;

use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use tokio::sync::watch;

pub mod kube;
pub mod manifests;
pub mod project;

/// Everything the sources have seen, as shared pointers into their caches: a snapshot copies no
/// object.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub services: Vec<Arc<Service>>,
    pub slices: Vec<Arc<EndpointSlice>>,
    pub nodes: Vec<Arc<Node>>,
    /// Manifests skipped as invalid (standalone mode).
    pub manifest_errors: usize,
    /// Only the Nodes are listed yet (Services and EndpointSlices are still listing, and are
    /// empty here): enough to wire the node (routes, petrel-cni's files), not to program
    /// services.
    pub nodes_only: bool,
}

/// The sending side: None until every source has listed once.
pub type Publisher = watch::Sender<Option<Arc<Snapshot>>>;
pub type Subscriber = watch::Receiver<Option<Arc<Snapshot>>>;

pub fn channel() -> (Publisher, Subscriber) {
    watch::channel(None)
}
