//! The node agent's logic: desired state from Kubernetes objects (pure), and its application to
//! the datapath maps. The binary (`petrel-agent`) wires in the sources, the runner, metrics.

pub mod cni_config;
pub mod config_file;
pub mod desired;
pub mod manifests;
pub mod metrics;
pub mod names;
pub mod route_sync;
pub mod routing;
pub mod sync;
