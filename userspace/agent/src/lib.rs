//! petrel's node agent, in place of kube-proxy: sources (an API server or a folder of manifests)
//! publish snapshots; the desired datapath state is a pure function of a snapshot and this
//! node's facts (`desired`); `sync` applies it to the maps in a safe order; `routing` keeps the
//! routes to other nodes' pods; `agent` ties one sync together and `runner` decides when.

pub mod agent;
pub mod cli;
pub mod cni_files;
pub mod config_file;
pub mod conntrack;
pub mod desired;
pub mod health;
pub mod logging;
pub mod memo;
#[cfg(test)]
mod memo_tests;
pub mod metrics;
pub mod node;
pub mod nodeport;
pub mod pods;
pub mod routing;
pub mod runner;
pub mod service_health;
pub mod sock_term;
pub mod sources;
pub mod sync;
pub mod topology;
pub mod uninstall;
pub mod validate;
