//! petrel-cni: the CNI plugin of petrel. Routed veth per pod (no bridge), addresses from an
//! on-disk IPAM store, CNI spec 1.1 verbs (ADD, DEL, CHECK, VERSION, STATUS, GC).
//!
//! `run` takes the environment, stdin and stdout as parameters so tests can drive the plugin
//! without a process; `main.rs` only wires the real ones in. `contract` is what the agent shares
//! with the plugin (interface prefix, file paths, the conflist entry).

pub mod config;
pub mod contract;
pub mod env;
pub mod error;
pub mod fsio;
pub mod ipam;
pub mod link;
pub mod netns;
pub mod plugin;
pub mod result;
pub mod tcx;

pub use plugin::{run, run_os};
